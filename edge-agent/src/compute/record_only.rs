//! The record-only driver: servers are scheduled, claimed and tracked with
//! their power state, but no VM is started. It is what the agent runs until
//! the libvirt driver lands (the compute issue), and the agent says so at
//! start-up.

use roost_common::model::{PowerState, Server};

use super::{ComputeDriver, DriverAction, DriverError};

#[derive(Debug, Default)]
pub struct RecordOnly;

impl ComputeDriver for RecordOnly {
    fn name(&self) -> &'static str {
        "record-only"
    }

    fn apply(&self, _server: &Server, action: DriverAction) -> Result<PowerState, DriverError> {
        Ok(match action {
            DriverAction::Spawn | DriverAction::PowerOn | DriverAction::Reboot { .. } => {
                PowerState::Running
            }
            DriverAction::PowerOff => PowerState::Shutdown,
            DriverAction::Destroy => PowerState::NoState,
        })
    }
}
