//! Compute: the driver boundary and the reconciler that drives servers from
//! spec to status.
//!
//! - [`ComputeDriver`] is the boundary a hypervisor driver implements. It
//!   is blocking; the reconciler calls it on blocking threads.
//! - [`Libvirt`] is the driver that runs real VMs; [`domain`] renders and
//!   reads its domain XML (pure, unit-tested). [`RecordOnly`] starts nothing
//!   and only tracks intent (API tests, sites that hold intent only).
//! - [`plan`] and [`finish`] are pure: given a server and what the
//!   hypervisor showed, what to do next; given what the driver said, what
//!   status to write. They are tested without any driver or store.
//! - [`reconciler`] is the thin loop around them: level-triggered (each full
//!   pass looks at every server and every domain Roost made), woken by API
//!   writes and by a period, several servers at once, safe to restart at any
//!   point because it derives all it does from the store and the hypervisor.

pub mod domain;
mod libvirt;
mod plan;
pub mod reconciler;
mod record_only;

use roost_common::model::{Flavor, Image, PowerState, Server};

pub use libvirt::{Libvirt, LibvirtError};
pub use plan::{finish, plan, Outcome, Seen, Step};
pub use reconciler::WorkQueue;
pub use record_only::RecordOnly;

/// A server with what a driver needs to build it: its flavor and image as
/// the store has them (either may be gone since the server was created;
/// neither is read for an action that cannot build the domain, see
/// [`DriverAction::may_build`]).
#[derive(Debug, Clone)]
pub struct Guest {
    pub server: Server,
    pub flavor: Option<Flavor>,
    pub image: Option<Image>,
    /// The server's ports, in the order it asked for them (its NICs).
    pub ports: Vec<roost_common::model::Port>,
    /// The volumes the domain should have, each as its disk (`vdb`, ...)
    /// and file: the ones the spec asks for on
    /// [`DriverAction::SyncVolumes`], else the ones it has.
    pub volumes: Vec<(String, std::path::PathBuf)>,
}

/// A domain a driver found that Roost made for this site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub server_id: String,
    pub power: PowerState,
}

/// What the reconciler asks a driver to do to one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverAction {
    Spawn,
    PowerOn,
    PowerOff,
    Reboot {
        hard: bool,
    },
    /// A new root disk from the spec's image, then the spec's power state.
    Rebuild,
    /// Attach and detach volumes until the domain has exactly
    /// [`Guest::volumes`], keeping its power state.
    SyncVolumes,
    Destroy,
}

impl DriverAction {
    /// Whether carrying it out may define the domain from the server (so
    /// the driver needs the flavor and image).
    pub fn may_build(self) -> bool {
        !matches!(self, DriverAction::PowerOff | DriverAction::Destroy)
    }

    pub fn name(self) -> &'static str {
        match self {
            DriverAction::Spawn => "spawn",
            DriverAction::PowerOn => "power_on",
            DriverAction::PowerOff => "power_off",
            DriverAction::Reboot { hard: false } => "reboot",
            DriverAction::Reboot { hard: true } => "reboot_hard",
            DriverAction::Rebuild => "rebuild",
            DriverAction::SyncVolumes => "sync_volumes",
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
    fn apply(&self, guest: &Guest, action: DriverAction) -> Result<PowerState, DriverError>;
    /// Every domain this driver made for this site, with its power state;
    /// `None` when the driver cannot look (then the recorded status is
    /// trusted). Domains Roost did not make are never listed.
    fn observe(&self) -> Result<Option<Vec<Observed>>, DriverError>;
}
