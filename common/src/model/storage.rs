//! Volumes and snapshots (Cinder). Realised as qcow2 files by the storage
//! issue; the shapes are fixed here so every crate speaks the same model.

use serde::{Deserialize, Serialize};

use super::{Fault, Resource};
use crate::validate::{self, FieldError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeSource {
    Blank,
    Image(String),
    Snapshot(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    pub name: String,
    pub project_id: String,
    pub size_gb: u64,
    /// `edge-local` or `central-replicated`.
    pub volume_type: String,
    pub source: VolumeSource,
    /// Server the volume should be attached to.
    pub attach_to: Option<String>,
    pub deleted: bool,
}

impl VolumeSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        validate::name("name", &self.name)?;
        validate::range("size", self.size_gb, 1, 64 * 1024)?;
        if !matches!(
            self.volume_type.as_str(),
            "edge-local" | "central-replicated"
        ) {
            return Err(FieldError::new(
                "volume_type",
                &self.volume_type,
                "must be edge-local or central-replicated",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    #[default]
    Creating,
    Available,
    InUse,
    Deleting,
    Error,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub state: VolumeState,
    pub attached_to: Option<String>,
    pub fault: Option<Fault>,
}

pub type Volume = Resource<VolumeSpec, VolumeStatus>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    pub name: String,
    pub project_id: String,
    pub volume_id: String,
    pub deleted: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    pub state: VolumeState,
    pub size_gb: u64,
}

pub type Snapshot = Resource<SnapshotSpec, SnapshotStatus>;
