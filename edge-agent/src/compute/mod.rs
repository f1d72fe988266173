//! Compute: the driver boundary and the reconciler that drives servers from
//! spec to status.
//!
//! - [`ComputeDriver`] is the boundary a hypervisor driver implements
//!   (libvirt lands with the compute issue). It is blocking; the reconciler
//!   calls it on a blocking thread.
//! - [`plan`] and [`finish`] are pure: given a server, what to do next; given
//!   what the driver said, what status to write. They are tested without
//!   any driver or store.
//! - [`reconciler`] is the thin loop around them: level-triggered (each
//!   pass looks at every server), woken by API writes and by a period, safe to
//!   restart at any point because it derives all it does from the store.

mod plan;
pub mod reconciler;
mod record_only;

use roost_common::model::{PowerState, Server};

pub use plan::{finish, plan, Outcome, Step};
pub use reconciler::WorkQueue;
pub use record_only::RecordOnly;

/// What the reconciler asks a driver to do to one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverAction {
    Spawn,
    PowerOn,
    PowerOff,
    Reboot { hard: bool },
    Destroy,
}

impl DriverAction {
    pub fn name(self) -> &'static str {
        match self {
            DriverAction::Spawn => "spawn",
            DriverAction::PowerOn => "power_on",
            DriverAction::PowerOff => "power_off",
            DriverAction::Reboot { hard: false } => "reboot",
            DriverAction::Reboot { hard: true } => "reboot_hard",
            DriverAction::Destroy => "destroy",
        }
    }
}

/// A driver's refusal or failure, with the hypervisor's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(pub String);

/// Makes the hypervisor match one step of a server's spec.
pub trait ComputeDriver: Send + Sync + std::fmt::Debug + 'static {
    /// Short name for logs and `/healthz`.
    fn name(&self) -> &'static str;
    /// Carries out `action` and returns the power state it left the server
    /// in. Must be idempotent: the reconciler may repeat an action after a
    /// crash.
    fn apply(&self, server: &Server, action: DriverAction) -> Result<PowerState, DriverError>;
}
