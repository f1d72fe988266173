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

/// What the hypervisor showed of a server at the last look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not looked at (a wake-up from the API): trust the recorded status.
    Unknown,
    /// The hypervisor has no domain for the server.
    Absent,
    /// The domain exists in this power state.
    Power(PowerState),
}

fn act(server: &Server, action: DriverAction, task: TaskState) -> Step {
    let during = ServerStatus {
        task_state: Some(task),
        ..server.status.clone()
    };
    Step::Act { action, during }
}

/// Compares spec with status (and with what the hypervisor showed) and says
/// what to do next.
pub fn plan(server: &Server, seen: Seen) -> Step {
    let (spec, st) = (&server.spec, &server.status);
    if spec.deleted {
        return act(server, DriverAction::Destroy, TaskState::Deleting);
    }
    let reboot_due = spec.reboot_generation > st.reboot_generation;
    let rebuild_due = spec.rebuild_generation > st.rebuild_generation;
    match (st.vm_state, spec.power) {
        (VmState::Error | VmState::Deleted, _) => Step::Nothing,
        (VmState::Building, _) => act(server, DriverAction::Spawn, TaskState::Spawning),
        (VmState::Active | VmState::Stopped, _) if rebuild_due => {
            act(server, DriverAction::Rebuild, TaskState::Rebuilding)
        }
        (VmState::Active, PowerIntent::Stopped) => {
            act(server, DriverAction::PowerOff, TaskState::PoweringOff)
        }
        // After a stop, before a start: a guest that will not let go of a
        // disk must not keep its server from being stopped (the disk then
        // goes at once), and a start boots with the disks asked for.
        (VmState::Active | VmState::Stopped, _) if spec.volumes != st.volumes => act(
            server,
            DriverAction::SyncVolumes,
            TaskState::UpdatingVolumes,
        ),
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
        // In sync on paper: repair what the hypervisor shows otherwise (a
        // host reboot, a guest that powered itself off, a domain removed by
        // hand).
        (VmState::Active, PowerIntent::Running) => match seen {
            Seen::Unknown => Step::Nothing,
            Seen::Absent => act(server, DriverAction::Spawn, TaskState::Spawning),
            Seen::Power(PowerState::Running) if st.power_state == PowerState::Running => {
                Step::Nothing
            }
            Seen::Power(PowerState::Running) => Step::Record(ServerStatus {
                power_state: PowerState::Running,
                ..st.clone()
            }),
            Seen::Power(_) => act(server, DriverAction::PowerOn, TaskState::PoweringOn),
        },
        (VmState::Stopped, PowerIntent::Stopped) => match seen {
            Seen::Power(PowerState::Running | PowerState::Paused) => {
                act(server, DriverAction::PowerOff, TaskState::PoweringOff)
            }
            _ => Step::Nothing,
        },
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
    let fault = |e: DriverError| Fault {
        code: 500,
        message: e.0,
        at: now,
    };
    match (action, result) {
        (DriverAction::Destroy, Ok(_)) => return Outcome::Remove,
        (_, Ok(power)) => {
            st.power_state = power;
            st.fault = None;
            st.vm_state = if power == PowerState::Running {
                VmState::Active
            } else {
                VmState::Stopped
            };
            if action == DriverAction::SyncVolumes {
                st.volumes = server.spec.volumes.clone();
            } else if action != DriverAction::PowerOff {
                st.reboot_generation = server.spec.reboot_generation;
            }
            if matches!(action, DriverAction::Spawn | DriverAction::Rebuild) {
                st.launched_at = Some(now);
                st.rebuild_generation = server.spec.rebuild_generation;
            }
        }
        (DriverAction::Spawn, Err(e)) if before.vm_state == VmState::Building => {
            st.power_state = PowerState::NoState;
            return Outcome::Fail(st, fault(e));
        }
        (DriverAction::Rebuild, Err(e)) => {
            // As Nova: a failed rebuild leaves the server in ERROR (it keeps
            // its claim; deleting it gives the claim back).
            st.vm_state = VmState::Error;
            st.power_state = PowerState::NoState;
            st.rebuild_generation = server.spec.rebuild_generation;
            st.fault = Some(fault(e));
        }
        (_, Err(e)) => {
            // Keep the state it was in; the next pass tries again.
            st.fault = Some(fault(e));
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
            power,
            ..ServerSpec::new("s", "p", "u", "f", "i")
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
        let Step::Act { action, during } = plan(&s, Seen::Unknown) else {
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
        assert_eq!(plan(&s, Seen::Unknown), Step::Nothing);
    }

    #[test]
    fn stop_and_start() {
        let s = server(VmState::Active, PowerIntent::Stopped);
        assert_eq!(
            action(plan(&s, Seen::Unknown)),
            Some(DriverAction::PowerOff)
        );
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
        assert_eq!(action(plan(&s, Seen::Unknown)), Some(DriverAction::PowerOn));
    }

    #[test]
    fn reboot_until_generation_caught_up() {
        let mut s = server(VmState::Active, PowerIntent::Running);
        s.spec.reboot_generation = 2;
        s.spec.reboot_hard = true;
        assert_eq!(
            action(plan(&s, Seen::Unknown)),
            Some(DriverAction::Reboot { hard: true })
        );
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
        assert_eq!(plan(&s, Seen::Unknown), Step::Nothing);
    }

    #[test]
    fn delete_wins_over_everything() {
        let mut s = server(VmState::Error, PowerIntent::Stopped);
        s.spec.deleted = true;
        assert_eq!(action(plan(&s, Seen::Unknown)), Some(DriverAction::Destroy));
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
            plan(&server(VmState::Error, PowerIntent::Running), Seen::Unknown),
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
        assert_eq!(
            action(plan(&s, Seen::Unknown)),
            Some(DriverAction::PowerOff)
        );
    }

    #[test]
    fn what_the_hypervisor_shows_is_repaired() {
        let mut s = server(VmState::Active, PowerIntent::Running);
        s.status.power_state = PowerState::Running;
        // A host reboot left the domain shut off: start it.
        assert_eq!(
            action(plan(&s, Seen::Power(PowerState::Shutdown))),
            Some(DriverAction::PowerOn)
        );
        assert_eq!(
            action(plan(&s, Seen::Power(PowerState::Crashed))),
            Some(DriverAction::PowerOn)
        );
        // The domain is gone (removed by hand): build it again.
        assert_eq!(action(plan(&s, Seen::Absent)), Some(DriverAction::Spawn));
        assert_eq!(plan(&s, Seen::Power(PowerState::Running)), Step::Nothing);
        // Not looked at: trust the record.
        assert_eq!(plan(&s, Seen::Unknown), Step::Nothing);
        // Running but recorded otherwise: record what is true, no action.
        s.status.power_state = PowerState::Shutdown;
        let Step::Record(st) = plan(&s, Seen::Power(PowerState::Running)) else {
            panic!()
        };
        assert_eq!(st.power_state, PowerState::Running);
        // A stopped server whose guest was started behind Roost's back.
        let s = server(VmState::Stopped, PowerIntent::Stopped);
        assert_eq!(
            action(plan(&s, Seen::Power(PowerState::Running))),
            Some(DriverAction::PowerOff)
        );
        assert_eq!(plan(&s, Seen::Absent), Step::Nothing);
        // An ERROR server is left for the operator to delete.
        let s = server(VmState::Error, PowerIntent::Running);
        assert_eq!(plan(&s, Seen::Absent), Step::Nothing);
    }

    #[test]
    fn respawn_failure_keeps_the_server_and_its_claim() {
        let s = server(VmState::Active, PowerIntent::Running);
        let out = finish(
            &s,
            DriverAction::Spawn,
            Err(DriverError("no memory".into())),
            Utc::now(),
        );
        let Outcome::Status(st) = out else {
            panic!("{out:?}")
        };
        assert_eq!(st.vm_state, VmState::Active);
        assert_eq!(st.fault.map(|f| f.message).as_deref(), Some("no memory"));
    }

    #[test]
    fn rebuild_follows_generation_and_power() {
        let mut s = server(VmState::Stopped, PowerIntent::Stopped);
        s.spec.rebuild_generation = 1;
        let Step::Act { action, during } = plan(&s, Seen::Unknown) else {
            panic!()
        };
        assert_eq!(action, DriverAction::Rebuild);
        assert_eq!(during.nova_status(), "REBUILD");
        let now = Utc::now();
        let Outcome::Status(st) = finish(&s, action, Ok(PowerState::Shutdown), now) else {
            panic!()
        };
        assert_eq!((st.vm_state, st.rebuild_generation), (VmState::Stopped, 1));
        assert_eq!(st.launched_at, Some(now));
        s.status = st;
        assert_eq!(plan(&s, Seen::Unknown), Step::Nothing);
        // A failed rebuild is ERROR, as in Nova, and is not retried.
        s.spec.rebuild_generation = 2;
        let Outcome::Status(st) = finish(
            &s,
            DriverAction::Rebuild,
            Err(DriverError("bad image".into())),
            now,
        ) else {
            panic!()
        };
        assert_eq!(st.vm_state, VmState::Error);
        s.status = st;
        assert_eq!(plan(&s, Seen::Unknown), Step::Nothing);
    }

    #[test]
    fn volume_changes_sync_the_domain_and_keep_power_and_reboots() {
        let mut s = server(VmState::Stopped, PowerIntent::Stopped);
        s.status.power_state = PowerState::Shutdown;
        s.spec.volumes = vec!["v1".into()];
        // A reboot asked for meanwhile is not marked done by the attach.
        s.spec.reboot_generation = 1;
        s.status.reboot_generation = 1;
        let Step::Act {
            action: sync,
            during,
        } = plan(&s, Seen::Unknown)
        else {
            panic!("should act")
        };
        assert_eq!(sync, DriverAction::SyncVolumes);
        assert_eq!(during.task_state, Some(TaskState::UpdatingVolumes));
        assert_eq!(during.nova_status(), "SHUTOFF", "Nova shows no task for it");
        let now = Utc::now();
        // A failure keeps what the domain had and is retried.
        let Outcome::Status(st) = finish(
            &s,
            sync,
            Err(DriverError("guest did not let go".into())),
            now,
        ) else {
            panic!()
        };
        assert!(st.volumes.is_empty() && st.fault.is_some());
        let Outcome::Status(st) = finish(&s, sync, Ok(PowerState::Shutdown), now) else {
            panic!()
        };
        assert_eq!(st.volumes, vec!["v1".to_string()]);
        assert_eq!((st.vm_state, st.task_state), (VmState::Stopped, None));
        s.status = st;
        assert_eq!(plan(&s, Seen::Unknown), Step::Nothing);
        // Detaching is the same step the other way.
        s.spec.volumes.clear();
        assert_eq!(
            action(plan(&s, Seen::Unknown)),
            Some(DriverAction::SyncVolumes)
        );
    }
}
