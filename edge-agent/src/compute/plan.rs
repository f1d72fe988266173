//! The pure half of the compute reconciler.

use chrono::{DateTime, Utc};

use roost_common::model::{
    Fault, PowerIntent, PowerState, Server, ServerStatus, TaskState, VmState,
};

use super::{DriverAction, DriverError};

/// What to do next for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// In sync: nothing to do.
    Nothing,
    /// Write this status; no driver action is needed.
    Record(ServerStatus),
    /// Write `during` (the task under way), then ask the driver.
    Act {
        action: DriverAction,
        during: ServerStatus,
    },
}

/// What to write once the driver has answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Status(ServerStatus),
    /// The server could not be built: write this status and fault, give the
    /// claim back.
    Fail(ServerStatus, Fault),
    /// The server is gone from the hypervisor: remove it and its claim.
    Remove,
}

fn act(server: &Server, action: DriverAction, task: TaskState) -> Step {
    let during = ServerStatus {
        task_state: Some(task),
        ..server.status.clone()
    };
    Step::Act { action, during }
}

/// Compares spec with status and says what to do next.
pub fn plan(server: &Server) -> Step {
    let (spec, st) = (&server.spec, &server.status);
    if spec.deleted {
        return act(server, DriverAction::Destroy, TaskState::Deleting);
    }
    let reboot_due = spec.reboot_generation > st.reboot_generation;
    match (st.vm_state, spec.power) {
        (VmState::Error | VmState::Deleted, _) => Step::Nothing,
        (VmState::Building, _) => act(server, DriverAction::Spawn, TaskState::Spawning),
        (VmState::Active, PowerIntent::Stopped) => {
            act(server, DriverAction::PowerOff, TaskState::PoweringOff)
        }
        (VmState::Stopped, PowerIntent::Running) => {
            act(server, DriverAction::PowerOn, TaskState::PoweringOn)
        }
        (VmState::Active, PowerIntent::Running) if reboot_due => {
            let (hard, task) = if spec.reboot_hard {
                (true, TaskState::RebootingHard)
            } else {
                (false, TaskState::Rebooting)
            };
            act(server, DriverAction::Reboot { hard }, task)
        }
        (VmState::Stopped, PowerIntent::Stopped) if reboot_due => {
            // A reboot asked for while stopping is moot once stopped.
            Step::Record(ServerStatus {
                reboot_generation: spec.reboot_generation,
                ..st.clone()
            })
        }
        _ => Step::Nothing,
    }
}

/// The status after the driver answered `result` for `action`.
pub fn finish(
    server: &Server,
    action: DriverAction,
    result: Result<PowerState, DriverError>,
    now: DateTime<Utc>,
) -> Outcome {
    let before = &server.status;
    let mut st = ServerStatus {
        task_state: None,
        ..before.clone()
    };
    match (action, result) {
        (DriverAction::Destroy, Ok(_)) => return Outcome::Remove,
        (_, Ok(power)) => {
            st.power_state = power;
            st.fault = None;
            match action {
                DriverAction::PowerOff => st.vm_state = VmState::Stopped,
                _ => {
                    st.vm_state = VmState::Active;
                    st.reboot_generation = server.spec.reboot_generation;
                }
            }
            if action == DriverAction::Spawn {
                st.launched_at = Some(now);
            }
        }
        (DriverAction::Spawn, Err(e)) => {
            st.power_state = PowerState::NoState;
            return Outcome::Fail(
                st,
                Fault {
                    code: 500,
                    message: e.0,
                    at: now,
                },
            );
        }
        (_, Err(e)) => {
            // Keep the state it was in; the next pass tries again.
            st.fault = Some(Fault {
                code: 500,
                message: e.0,
                at: now,
            });
        }
    }
    Outcome::Status(st)
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_common::model::{Resource, ServerSpec};

    fn server(vm: VmState, power: PowerIntent) -> Server {
        let spec = ServerSpec {
            name: "s".into(),
            project_id: "p".into(),
            user_id: "u".into(),
            flavor_id: "f".into(),
            image_id: "i".into(),
            availability_zone: None,
            server_group: None,
            power,
            reboot_generation: 0,
            reboot_hard: false,
            deleted: false,
            metadata: Default::default(),
        };
        let mut s: Server = Resource::new(spec, Utc::now());
        s.status.vm_state = vm;
        s
    }

    fn action(step: Step) -> Option<DriverAction> {
        match step {
            Step::Act { action, .. } => Some(action),
            _ => None,
        }
    }

    #[test]
    fn new_server_spawns_then_is_in_sync() {
        let mut s = server(VmState::Building, PowerIntent::Running);
        let Step::Act { action, during } = plan(&s) else {
            panic!("should act")
        };
        assert_eq!(
            (action, during.task_state),
            (DriverAction::Spawn, Some(TaskState::Spawning))
        );
        let now = Utc::now();
        let Outcome::Status(st) = finish(&s, action, Ok(PowerState::Running), now) else {
            panic!()
        };
        assert_eq!(
            (st.vm_state, st.power_state, st.task_state),
            (VmState::Active, PowerState::Running, None)
        );
        assert_eq!(st.launched_at, Some(now));
        s.status = st;
        assert_eq!(plan(&s), Step::Nothing);
    }

    #[test]
    fn stop_and_start() {
        let s = server(VmState::Active, PowerIntent::Stopped);
        assert_eq!(action(plan(&s)), Some(DriverAction::PowerOff));
        let Outcome::Status(st) = finish(
            &s,
            DriverAction::PowerOff,
            Ok(PowerState::Shutdown),
            Utc::now(),
        ) else {
            panic!()
        };
        assert_eq!(st.vm_state, VmState::Stopped);
        let s = server(VmState::Stopped, PowerIntent::Running);
        assert_eq!(action(plan(&s)), Some(DriverAction::PowerOn));
    }

    #[test]
    fn reboot_until_generation_caught_up() {
        let mut s = server(VmState::Active, PowerIntent::Running);
        s.spec.reboot_generation = 2;
        s.spec.reboot_hard = true;
        assert_eq!(action(plan(&s)), Some(DriverAction::Reboot { hard: true }));
        let Outcome::Status(st) = finish(
            &s,
            DriverAction::Reboot { hard: true },
            Ok(PowerState::Running),
            Utc::now(),
        ) else {
            panic!()
        };
        assert_eq!(st.reboot_generation, 2);
        s.status = st;
        assert_eq!(plan(&s), Step::Nothing);
    }

    #[test]
    fn delete_wins_over_everything() {
        let mut s = server(VmState::Error, PowerIntent::Stopped);
        s.spec.deleted = true;
        assert_eq!(action(plan(&s)), Some(DriverAction::Destroy));
        assert_eq!(
            finish(
                &s,
                DriverAction::Destroy,
                Ok(PowerState::NoState),
                Utc::now()
            ),
            Outcome::Remove
        );
    }

    #[test]
    fn spawn_failure_fails_the_server_with_the_reason() {
        let s = server(VmState::Building, PowerIntent::Running);
        let out = finish(
            &s,
            DriverAction::Spawn,
            Err(DriverError("no memory".into())),
            Utc::now(),
        );
        let Outcome::Fail(_, fault) = out else {
            panic!("{out:?}")
        };
        assert_eq!(fault.message, "no memory");
        assert_eq!(
            plan(&server(VmState::Error, PowerIntent::Running)),
            Step::Nothing
        );
    }

    #[test]
    fn failed_power_off_keeps_state_and_retries() {
        let s = server(VmState::Active, PowerIntent::Stopped);
        let Outcome::Status(st) = finish(
            &s,
            DriverAction::PowerOff,
            Err(DriverError("busy".into())),
            Utc::now(),
        ) else {
            panic!()
        };
        assert_eq!(st.vm_state, VmState::Active);
        assert!(st.fault.is_some());
        let s = Server { status: st, ..s };
        assert_eq!(action(plan(&s)), Some(DriverAction::PowerOff));
    }
}
