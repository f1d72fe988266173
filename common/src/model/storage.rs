//! Volumes and snapshots (Cinder), realised as qcow2 files by the site's
//! storage worker.
//!
//! Both are the site's own (like its networks): made, changed and removed
//! through the site's API, never merged. Their work is a state: a volume
//! `creating`, `extending`, `reverting` or `deleting` (a snapshot
//! `creating` or `deleting`) has a file operation due, which the storage
//! worker carries out and then records the resulting state. Attaching is
//! the server's intent (`ServerSpec::volumes`); a volume is `attaching` or
//! `detaching` until the compute reconciler has changed the domain.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Fault, Resource};
use crate::validate::{self, FieldError};

/// The volume types a site offers. (`central-replicated`, backed up to
/// the region asynchronously, is planned; until its backup exists it is
/// refused by name rather than taken and not replicated.)
pub const VOLUME_TYPES: [&str; 1] = ["edge-local"];

/// Largest volume, in GiB.
pub const MAX_VOLUME_GB: u64 = 64 * 1024;

/// A virtio disk's name by position: `vda`, `vdb`, ... `vdz`, `vdaa`, ...
/// (the root disk is 0, a server's attached volumes 1, 2, ... in order).
pub fn disk_target(i: usize) -> String {
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    let mut name = String::new();
    let mut n = i;
    loop {
        name.insert(0, letters[n % 26] as char);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    format!("vd{name}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeSource {
    Blank,
    Image(String),
    Snapshot(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// May be empty, as in Cinder.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub project_id: String,
    #[serde(default)]
    pub user_id: String,
    pub size_gb: u64,
    /// One of [`VOLUME_TYPES`].
    pub volume_type: String,
    pub source: VolumeSource,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn metadata(field: &str, m: &BTreeMap<String, String>) -> Result<(), FieldError> {
    for (k, v) in m {
        if k.is_empty() || k.chars().count() > 255 {
            return Err(FieldError::new(
                format!("{field}.{k}"),
                k,
                "keys must be 1 to 255 characters",
            ));
        }
        if v.chars().count() > 255 {
            return Err(FieldError::new(
                format!("{field}.{k}"),
                v,
                "values must be at most 255 characters",
            ));
        }
    }
    Ok(())
}

impl VolumeSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        validate::text("volume.name", &self.name)?;
        if let Some(d) = &self.description {
            validate::text("volume.description", d)?;
        }
        validate::range("volume.size", self.size_gb, 1, MAX_VOLUME_GB)?;
        if self.volume_type == "central-replicated" {
            return Err(FieldError::new(
                "volume.volume_type",
                &self.volume_type,
                "backing volumes up to the region is not built yet: use edge-local",
            ));
        }
        if !VOLUME_TYPES.contains(&self.volume_type.as_str()) {
            return Err(FieldError::new(
                "volume.volume_type",
                &self.volume_type,
                "must be edge-local",
            ));
        }
        metadata("volume.metadata", &self.metadata)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VolumeState {
    #[default]
    Creating,
    Available,
    Attaching,
    InUse,
    Detaching,
    Extending,
    Reverting,
    Deleting,
    Error,
}

impl VolumeState {
    /// Cinder's `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Creating => "creating",
            VolumeState::Available => "available",
            VolumeState::Attaching => "attaching",
            VolumeState::InUse => "in-use",
            VolumeState::Detaching => "detaching",
            VolumeState::Extending => "extending",
            VolumeState::Reverting => "reverting",
            VolumeState::Deleting => "deleting",
            VolumeState::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    pub state: VolumeState,
    /// The qcow2 file, chosen when the volume is recorded.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// The server it is attached (or attaching, or detaching) to.
    pub attached_to: Option<String>,
    /// The disk it is (or is being) attached as, e.g. `vdb`: chosen at
    /// attach and kept for the attachment's life, so detaching another
    /// volume renames nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The snapshot a `reverting` volume is being reverted to.
    #[serde(default)]
    pub revert_to: Option<String>,
    /// The size an `extending` volume had: what it keeps if the extend
    /// fails and its file is found whole at that size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extending_from: Option<u64>,
    pub fault: Option<Fault>,
}

pub type Volume = Resource<VolumeSpec, VolumeStatus>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub project_id: String,
    #[serde(default)]
    pub user_id: String,
    pub volume_id: String,
    /// Taken of an attached volume (a crash-consistent copy).
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl SnapshotSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        validate::text("snapshot.name", &self.name)?;
        if let Some(d) = &self.description {
            validate::text("snapshot.description", d)?;
        }
        metadata("snapshot.metadata", &self.metadata)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotState {
    #[default]
    Creating,
    Available,
    Deleting,
    Error,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Creating => "creating",
            SnapshotState::Available => "available",
            SnapshotState::Deleting => "deleting",
            SnapshotState::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStatus {
    pub state: SnapshotState,
    /// The volume's size when it was taken.
    pub size_gb: u64,
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub fault: Option<Fault>,
}

pub type Snapshot = Resource<SnapshotSpec, SnapshotStatus>;

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VolumeSpec {
        VolumeSpec {
            name: String::new(),
            description: None,
            project_id: "p".into(),
            user_id: "u".into(),
            size_gb: 1,
            volume_type: "edge-local".into(),
            source: VolumeSource::Blank,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn volume_rules_name_the_field() {
        assert!(spec().validate().is_ok(), "an unnamed volume is fine");
        let e = VolumeSpec {
            size_gb: 0,
            ..spec()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "volume.size");
        let e = VolumeSpec {
            volume_type: "gold".into(),
            ..spec()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "volume.volume_type");
        let e = VolumeSpec {
            volume_type: "central-replicated".into(),
            ..spec()
        }
        .validate()
        .unwrap_err();
        assert!(e.rule.contains("not built yet"), "{e}");
        let e = VolumeSpec {
            name: "a\nb".into(),
            ..spec()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "volume.name");
        let e = VolumeSpec {
            metadata: [(String::new(), "x".into())].into(),
            ..spec()
        }
        .validate()
        .unwrap_err();
        assert!(e.field.starts_with("volume.metadata"), "{e}");
    }

    #[test]
    fn states_read_as_cinder_writes_them() {
        assert_eq!(VolumeState::InUse.as_str(), "in-use");
        assert_eq!(
            serde_json::to_value(VolumeState::InUse).unwrap(),
            serde_json::json!("in-use")
        );
        assert_eq!(SnapshotState::Available.as_str(), "available");
    }
}
