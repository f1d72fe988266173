//! The record-only driver: servers are scheduled, claimed and tracked with
//! their power state, but no VM is started. For sites that only hold intent
//! and for API tests; the agent warns at start-up when it runs it.

use roost_common::model::PowerState;

use super::{ComputeDriver, DriverAction, DriverError, Guest, Observed};

#[derive(Debug, Default)]
pub struct RecordOnly;

impl ComputeDriver for RecordOnly {
    fn name(&self) -> &'static str {
        "record-only"
    }

    fn apply(&self, guest: &Guest, action: DriverAction) -> Result<PowerState, DriverError> {
        Ok(match action {
            DriverAction::Spawn | DriverAction::PowerOn | DriverAction::Reboot { .. } => {
                PowerState::Running
            }
            DriverAction::Rebuild => match guest.server.spec.power {
                roost_common::model::PowerIntent::Running => PowerState::Running,
                roost_common::model::PowerIntent::Stopped => PowerState::Shutdown,
            },
            DriverAction::PowerOff => PowerState::Shutdown,
            DriverAction::SyncVolumes => guest.server.status.power_state,
            DriverAction::Destroy => PowerState::NoState,
        })
    }

    fn observe(&self) -> Result<Option<Vec<Observed>>, DriverError> {
        Ok(None)
    }
}
