//! The resource model: every resource is a [`Resource`] with a *spec* (what
//! someone wants) and a *status* (what is true).
//!
//! Who writes what (the rule that keeps sync conflict-free later):
//! - spec is intent; the site and, once the controller lands, the region may
//!   write it;
//! - status (placement, power state, addresses, capacity used, alarms) is
//!   written by the site alone, by its reconcilers.
//!
//! Ids are stable UUIDs (see [`crate::ids`]); hosts and sites are keyed by
//! their configured names, which are stable by construction.

mod compute;
mod image;
mod network;
mod site;
mod storage;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use compute::*;
pub use image::*;
pub use network::*;
pub use site::*;
pub use storage::*;

/// A resource: identity, intent and observed truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource<S, T> {
    pub id: String,
    pub spec: S,
    pub status: T,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<S, T: Default> Resource<S, T> {
    /// A new resource with a fresh id and default (not yet observed) status.
    pub fn new(spec: S, now: DateTime<Utc>) -> Self {
        Resource {
            id: crate::ids::new_id(),
            spec,
            status: T::default(),
            created_at: now,
            updated_at: now,
        }
    }
}

/// An error recorded on a resource whose last action failed (Nova's `fault`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub code: u16,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// Formats a time the way OpenStack APIs do: `2026-11-22T11:04:05Z`.
pub fn openstack_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}
