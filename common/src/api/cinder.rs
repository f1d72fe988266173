//! Cinder v3's bodies and views (volumes, snapshots, volume actions) and
//! Nova's volume attachments, as python-openstackclient sends and reads
//! them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::model::{
    openstack_time, Snapshot, SnapshotSpec, Volume, VolumeSource, VolumeSpec, VolumeState,
    CENTRAL_REPLICATED, VOLUME_TYPES,
};
use crate::validate::FieldError;

/// The highest Cinder microversion served (3.40 brings revert to
/// snapshot); nothing above it changes what this API sends.
pub const MAX_VOLUME_MICROVERSION: &str = "3.40";

/// `POST /volumes`.
#[derive(Debug, Deserialize)]
pub struct VolumeCreateBody {
    pub volume: VolumeCreate,
}

#[derive(Debug, Deserialize)]
pub struct VolumeCreate {
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub volume_type: Option<String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default, rename = "imageRef")]
    pub image_ref: Option<String>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub source_volid: Option<String>,
    #[serde(default)]
    pub backup_id: Option<String>,
    #[serde(default)]
    pub multiattach: Option<bool>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

fn refuse(field: &str, value: impl std::fmt::Display, rule: &str) -> FieldError {
    FieldError::new(field, value, rule)
}

impl VolumeCreate {
    /// The volume spec asked for, validated. `size` 0 means "the size of
    /// its source" (a snapshot or image), which the store fills in.
    pub fn into_spec(self, project_id: &str, user_id: &str) -> Result<VolumeSpec, FieldError> {
        if let Some(v) = self.source_volid {
            return Err(refuse(
                "volume.source_volid",
                v,
                "cloning a volume is not supported here: snapshot it and create a volume from the snapshot",
            ));
        }
        if self.multiattach == Some(true) {
            return Err(refuse(
                "volume.multiattach",
                true,
                "a volume attaches to one server at a time here",
            ));
        }
        if let Some(az) = self.availability_zone.filter(|az| az != "nova") {
            return Err(refuse("volume.availability_zone", az, "must be nova"));
        }
        let source = match (self.image_ref, self.snapshot_id, self.backup_id) {
            (Some(i), None, None) => VolumeSource::Image(i),
            (None, Some(s), None) => VolumeSource::Snapshot(s),
            (None, None, Some(b)) => {
                if b.is_empty() || b.len() > 19 || !b.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(refuse(
                        "volume.backup_id",
                        b,
                        "must be the id of one of this site's backups at the region (a number, from GET /roost/v1/sites/SITE/backups at the controller)",
                    ));
                }
                VolumeSource::Backup(b)
            }
            (None, None, None) => VolumeSource::Blank,
            (i, s, b) => {
                let given = [("imageRef", i), ("snapshot_id", s), ("backup_id", b)]
                    .into_iter()
                    .filter_map(|(f, v)| v.map(|_| f))
                    .collect::<Vec<_>>();
                return Err(refuse(
                    &format!("volume.{}", given[0]),
                    given.join(" and "),
                    "give one source: imageRef, snapshot_id or backup_id",
                ));
            }
        };
        let size_gb = match (self.size, &source) {
            (Some(0), _) => return Err(refuse("volume.size", 0, "must be between 1 and 65536")),
            (Some(s), _) => s,
            // The region knows a backup's size; the site does not until
            // it has brought it.
            (None, VolumeSource::Blank | VolumeSource::Backup(_)) => {
                return Err(FieldError::missing("volume.size"));
            }
            (None, _) => 0,
        };
        let spec = VolumeSpec {
            name: self.name.unwrap_or_default(),
            description: self.description,
            project_id: project_id.into(),
            user_id: user_id.into(),
            size_gb: size_gb.max(1),
            volume_type: self.volume_type.unwrap_or_else(|| VOLUME_TYPES[0].into()),
            source,
            metadata: self.metadata.unwrap_or_default(),
        };
        spec.validate()?;
        Ok(VolumeSpec { size_gb, ..spec })
    }
}

/// `PUT /volumes/{id}`: name, description, metadata.
#[derive(Debug, Deserialize)]
pub struct VolumeUpdateBody {
    pub volume: VolumeUpdate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `POST /volumes/{id}/action`.
#[derive(Debug, Deserialize)]
pub enum VolumeAction {
    #[serde(rename = "os-extend")]
    Extend { new_size: u64 },
    #[serde(rename = "revert")]
    Revert { snapshot_id: String },
    /// An admin's recovery: `openstack volume set --state`.
    #[serde(rename = "os-reset_status")]
    ResetStatus {
        status: String,
        #[serde(default)]
        attach_status: Option<String>,
        #[serde(default)]
        migration_status: Option<serde_json::Value>,
    },
}

/// A boolean Cinder also takes as text (`"true"`, `"False"`).
fn loose_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        B(bool),
        S(String),
    }
    match B::deserialize(d)? {
        B::B(b) => Ok(b),
        B::S(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        B::S(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        B::S(s) => Err(serde::de::Error::custom(format!(
            "must be true or false (got {s:?})"
        ))),
    }
}

/// `POST /snapshots`.
#[derive(Debug, Deserialize)]
pub struct SnapshotCreateBody {
    pub snapshot: SnapshotCreate,
}

#[derive(Debug, Deserialize)]
pub struct SnapshotCreate {
    pub volume_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "loose_bool")]
    pub force: bool,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl SnapshotCreate {
    pub fn into_spec(self, project_id: &str, user_id: &str) -> Result<SnapshotSpec, FieldError> {
        let spec = SnapshotSpec {
            name: self.name.unwrap_or_default(),
            description: self.description,
            project_id: project_id.into(),
            user_id: user_id.into(),
            volume_id: self.volume_id,
            force: self.force,
            metadata: self.metadata.unwrap_or_default(),
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// `POST /servers/{id}/os-volume_attachments` (Nova).
#[derive(Debug, Deserialize)]
pub struct AttachBody {
    #[serde(rename = "volumeAttachment")]
    pub volume_attachment: Attach,
}

#[derive(Debug, Deserialize)]
pub struct Attach {
    #[serde(rename = "volumeId")]
    pub volume_id: String,
    /// Nova ignores it under KVM (the guest names its disks); so does
    /// this site.
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub delete_on_termination: Option<bool>,
}

/// Nova's attachment view. `device` is the disk's name in the domain.
pub fn nova_attachment(volume_id: &str, server_id: &str, device: &str) -> Value {
    json!({
        "id": volume_id,
        "volumeId": volume_id,
        "serverId": server_id,
        "device": format!("/dev/{device}"),
    })
}

/// Cinder's volume view. `device` is the attached disk's name, when the
/// volume is attached.
pub fn cinder_volume(v: &Volume, device: Option<&str>) -> Value {
    let attachments: Vec<Value> = match (&v.status.attached_to, v.status.state, device) {
        (Some(server), VolumeState::InUse | VolumeState::Detaching, Some(dev)) => vec![json!({
            "id": v.id,
            "attachment_id": v.id,
            "volume_id": v.id,
            "server_id": server,
            "host_name": null,
            "device": format!("/dev/{dev}"),
            "attached_at": openstack_time(&v.updated_at),
        })],
        _ => Vec::new(),
    };
    let (image, snapshot) = match &v.spec.source {
        VolumeSource::Image(i) => (Some(i.as_str()), None),
        VolumeSource::Snapshot(s) => (None, Some(s.as_str())),
        VolumeSource::Blank | VolumeSource::Backup(_) => (None, None),
    };
    let mut body = json!({
        "id": v.id,
        "name": v.spec.name,
        "description": v.spec.description,
        "status": v.status.state.as_str(),
        "size": v.spec.size_gb,
        "volume_type": v.spec.volume_type,
        "availability_zone": "nova",
        "bootable": if image.is_some() { "true" } else { "false" },
        "encrypted": false,
        "multiattach": false,
        "created_at": openstack_time(&v.created_at),
        "updated_at": openstack_time(&v.updated_at),
        "attachments": attachments,
        "metadata": v.spec.metadata,
        "user_id": v.spec.user_id,
        "os-vol-tenant-attr:tenant_id": v.spec.project_id,
        "snapshot_id": snapshot,
        "source_volid": null,
        "consistencygroup_id": null,
        "group_id": null,
        "replication_status": if v.spec.volume_type == CENTRAL_REPLICATED { "enabled" } else { "disabled" },
        "migration_status": null,
        "links": [],
    });
    if let Some(i) = image {
        body["volume_image_metadata"] = json!({"image_id": i});
    }
    if let Some(f) = &v.status.fault {
        body["roost:fault"] = json!(f.message);
    }
    if let Some(b) = &v.status.backup {
        body["roost:backup_at"] = json!(b.at);
        body["roost:backup_sha256"] = json!(b.sha256);
        body["roost:backup_sent_bytes"] = json!(b.sent_bytes);
    }
    body
}

/// Cinder's snapshot view.
pub fn cinder_snapshot(s: &Snapshot) -> Value {
    let mut body = json!({
        "id": s.id,
        "name": s.spec.name,
        "description": s.spec.description,
        "volume_id": s.spec.volume_id,
        "status": s.status.state.as_str(),
        "size": s.status.size_gb,
        "created_at": openstack_time(&s.created_at),
        "updated_at": openstack_time(&s.updated_at),
        "metadata": s.spec.metadata,
        "progress": if s.status.state == crate::model::SnapshotState::Available { "100%" } else { "0%" },
        "os-extended-snapshot-attributes:project_id": s.spec.project_id,
        "os-extended-snapshot-attributes:progress": if s.status.state == crate::model::SnapshotState::Available { "100%" } else { "0%" },
    });
    if let Some(f) = &s.status.fault {
        body["roost:fault"] = json!(f.message);
    }
    if s.status.state == crate::model::SnapshotState::Available {
        let tier = match (s.status.is_cold(), s.status.recalled) {
            (false, _) => "warm",
            (true, false) => "cold",
            (true, true) => "cold, coming back",
        };
        body["roost:tier"] = json!(tier);
    }
    if let Some(b) = &s.status.backup {
        body["roost:region_copy_at"] = json!(b.at);
    }
    body
}

/// The volume types a site offers, as Cinder lists them.
pub fn cinder_types() -> Vec<Value> {
    VOLUME_TYPES
        .iter()
        .map(|t| {
            let description = if *t == CENTRAL_REPLICATED {
                "qcow2 files on the site's own disk, backed up to the region"
            } else {
                "qcow2 files on the site's own disk"
            };
            json!({"id": t, "name": t, "description": description, "is_public": true, "extra_specs": {}, "qos_specs_id": null, "os-volume-type-access:is_public": true})
        })
        .collect()
}

/// Cinder's version document for the volume endpoint at `href`
/// (`.../volume/v3/`).
pub fn cinder_versions(href: &str) -> Value {
    json!({"versions": [{
        "id": "v3.0",
        "status": "CURRENT",
        "version": MAX_VOLUME_MICROVERSION,
        "min_version": "3.0",
        "updated": "2026-11-01T00:00:00Z",
        "links": [{"rel": "self", "href": href}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}],
    }]})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(v: Value) -> Result<VolumeSpec, FieldError> {
        let body: VolumeCreateBody = serde_json::from_value(v).unwrap();
        body.volume.into_spec("p", "u")
    }

    #[test]
    fn volume_bodies_become_specs_or_name_the_field() {
        let s = create(json!({"volume": {"size": 2, "name": "data"}})).unwrap();
        assert_eq!(
            (s.size_gb, s.volume_type.as_str(), s.source),
            (2, "edge-local", VolumeSource::Blank)
        );
        let s = create(json!({"volume": {"size": 2, "backup_id": "12"}})).unwrap();
        assert_eq!(s.source, VolumeSource::Backup("12".into()));
        let s = create(json!({"volume": {"snapshot_id": "s1"}})).unwrap();
        assert_eq!(
            (s.size_gb, s.source),
            (0, VolumeSource::Snapshot("s1".into()))
        );
        for (body, field) in [
            (json!({"volume": {"name": "x"}}), "volume.size"),
            (json!({"volume": {"size": 0}}), "volume.size"),
            (json!({"volume": {"size": 70000}}), "volume.size"),
            (
                json!({"volume": {"size": 1, "volume_type": "gold"}}),
                "volume.volume_type",
            ),
            (
                json!({"volume": {"size": 1, "source_volid": "v"}}),
                "volume.source_volid",
            ),
            (
                json!({"volume": {"size": 1, "availability_zone": "az2"}}),
                "volume.availability_zone",
            ),
            (
                json!({"volume": {"size": 1, "imageRef": "i", "snapshot_id": "s"}}),
                "volume.imageRef",
            ),
            (
                json!({"volume": {"size": 1, "multiattach": true}}),
                "volume.multiattach",
            ),
            (
                json!({"volume": {"size": 1, "backup_id": "../x"}}),
                "volume.backup_id",
            ),
            (json!({"volume": {"backup_id": "12"}}), "volume.size"),
            (
                json!({"volume": {"size": 1, "backup_id": "12", "snapshot_id": "s"}}),
                "volume.snapshot_id",
            ),
        ] {
            assert_eq!(create(body.clone()).unwrap_err().field, field, "{body}");
        }
    }

    #[test]
    fn actions_and_loose_booleans_parse() {
        let a: VolumeAction =
            serde_json::from_value(json!({"os-extend": {"new_size": 3}})).unwrap();
        assert!(matches!(a, VolumeAction::Extend { new_size: 3 }));
        assert!(serde_json::from_value::<VolumeAction>(json!({"os-retype": {}})).is_err());
        for (force, want) in [
            (json!(true), true),
            (json!("True"), true),
            (json!("false"), false),
        ] {
            let b: SnapshotCreateBody =
                serde_json::from_value(json!({"snapshot": {"volume_id": "v", "force": force}}))
                    .unwrap();
            assert_eq!(b.snapshot.force, want);
        }
        assert!(serde_json::from_value::<SnapshotCreateBody>(
            json!({"snapshot": {"volume_id": "v", "force": "maybe"}})
        )
        .is_err());
    }
}
