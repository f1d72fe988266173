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

/// The volume types a site offers: `edge-local` (a qcow2 file on the
/// site's disk) and `central-replicated` (the same, also backed up to the
/// region whenever it changed and no running guest holds it).
pub const VOLUME_TYPES: [&str; 2] = ["edge-local", CENTRAL_REPLICATED];

/// The volume type whose volumes are backed up to the region.
pub const CENTRAL_REPLICATED: &str = "central-replicated";

/// Largest volume, in GiB.
pub const MAX_VOLUME_GB: u64 = 64 * 1024;

/// Largest `central-replicated` volume, in GiB: its file's chunk list
/// must fit one backup offer (`roost_sync::bulk::MAX_OFFER_CHUNKS`).
pub const MAX_REPLICATED_GB: u64 = 8;

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
    /// A backup the region keeps of one of this site's volumes (its id in
    /// the region's backup list), brought over the link.
    Backup(String),
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
        if !VOLUME_TYPES.contains(&self.volume_type.as_str()) {
            return Err(FieldError::new(
                "volume.volume_type",
                &self.volume_type,
                "must be edge-local or central-replicated",
            ));
        }
        if self.volume_type == CENTRAL_REPLICATED && self.size_gb > MAX_REPLICATED_GB {
            return Err(FieldError::new(
                "volume.size",
                self.size_gb,
                format!("central-replicated volumes are at most {MAX_REPLICATED_GB} GiB (backups of larger ones are not built): use edge-local"),
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
    /// The last backup the region confirmed keeping
    /// (`central-replicated` volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<VolumeBackup>,
}

/// A backup of a volume's file the region keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeBackup {
    /// When the region confirmed it (RFC 3339).
    pub at: String,
    /// The sha256 of the file backed up, lower-case hex.
    pub sha256: String,
    /// The file's bytes.
    pub size: u64,
    /// Chunk bytes that crossed the link for it (what the region lacked).
    pub sent_bytes: u64,
    /// The file's modification time (ns) and length when it was read: a
    /// file still so is not read again.
    pub stamp: String,
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
    /// Its copy at the region, taken while `storage.tiers.cold` is on so
    /// the snapshot may leave the site when the volumes' disk is short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<VolumeBackup>,
    /// `Some(Cold)`: its file is only at the region (tiering); the file
    /// path is where it comes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<super::Tier>,
    /// Its file was offered to the region at least once: a copy may be
    /// kept there even if the site never heard back, so deleting the
    /// snapshot tells the region to drop it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub copy_offered: bool,
    /// Cold and wanted (a volume from it, a revert to it was refused):
    /// the backup worker brings it back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recalled: bool,
    /// When it was taken or last read (a volume made from it, a revert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<chrono::DateTime<chrono::Utc>>,
}

impl SnapshotStatus {
    /// Whether the snapshot's file is only at the region.
    pub fn is_cold(&self) -> bool {
        self.tier == Some(super::Tier::Cold)
    }
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
        assert!(VolumeSpec {
            volume_type: "central-replicated".into(),
            ..spec()
        }
        .validate()
        .is_ok());
        let e = VolumeSpec {
            volume_type: "central-replicated".into(),
            size_gb: MAX_REPLICATED_GB + 1,
            ..spec()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "volume.size");
        assert!(e.rule.contains("at most 8 GiB"), "{e}");
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
