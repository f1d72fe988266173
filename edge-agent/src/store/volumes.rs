//! Volumes and snapshots: the records, their state changes, and the
//! attachments that follow servers' status.
//!
//! An API write records what is wanted as a working state (`creating`,
//! `extending`, `reverting`, `deleting`) and returns; the storage worker
//! reads the work ([`super::Store::storage_work`]), does it, and records the
//! result ([`super::WriteCtx::storage_done`]). Attaching adds the volume to
//! the server's `spec.volumes` and marks it `attaching`; when the compute
//! reconciler writes a server status whose `volumes` gained or lost one,
//! the volume turns `in-use` or `available` in the same transaction.
//!
//! A failed extend leaves the volume `available` at its old size (with the
//! reason as its fault) when the worker finds its file whole at that size,
//! otherwise `error`. [`super::WriteCtx::reset_volume`] is an admin's
//! `os-reset_status`, the way out of `error`.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection};

use roost_common::model::{
    Fault, Image, ImageState, Resource, Server, ServerStatus, Snapshot, SnapshotSpec,
    SnapshotState, VmState, Volume, VolumeBackup, VolumeSource, VolumeSpec, VolumeState,
    CENTRAL_REPLICATED,
};
use roost_common::FieldError;

use super::network::Scope;
use super::rows::{self, json, time};
use super::{StoreError, WriteCtx, WriteError};
use crate::storage::plan::{self, Files, Subject, Work};

const GIB: u64 = 1 << 30;

fn visible(scope: &Scope, project_id: &str) -> bool {
    scope.as_deref().is_none_or(|p| p == project_id)
}

pub(super) fn volume_in(conn: &Connection, id: &str, scope: &Scope) -> Result<Volume, WriteError> {
    rows::get(conn, "volumes", id)?
        .filter(|v: &Volume| visible(scope, &v.spec.project_id))
        .ok_or_else(|| WriteError::NotFound(format!("Volume {id} could not be found.")))
}

fn server_in(conn: &Connection, id: &str, scope: &Scope) -> Result<Server, WriteError> {
    rows::get(conn, "servers", id)?
        .filter(|s: &Server| visible(scope, &s.spec.project_id))
        .ok_or_else(|| WriteError::NotFound(format!("Instance {id} could not be found.")))
}

pub(super) fn snapshot_in(
    conn: &Connection,
    id: &str,
    scope: &Scope,
) -> Result<Snapshot, WriteError> {
    rows::get(conn, "volume_snapshots", id)?
        .filter(|s: &Snapshot| visible(scope, &s.spec.project_id))
        .ok_or_else(|| WriteError::NotFound(format!("Snapshot {id} could not be found.")))
}

/// Volumes (or snapshots, `table`) in `scope`, oldest first.
pub(super) fn list<S: serde::de::DeserializeOwned, T: serde::de::DeserializeOwned>(
    conn: &Connection,
    table: &str,
    scope: &Scope,
) -> Result<Vec<Resource<S, T>>, StoreError> {
    match scope {
        None => rows::list(conn, table, "1", []),
        Some(p) => rows::list(conn, table, "project_id = ?1", [p]),
    }
}

/// The files of these volumes, in order (ids without a file are left out).
pub(super) fn files(
    conn: &Connection,
    ids: &[String],
) -> Result<Vec<(String, std::path::PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let v: Option<Volume> = rows::get(conn, "volumes", id)?;
        let device = device(v.as_ref(), i);
        match v.and_then(|v| v.status.file) {
            Some(f) => out.push((device, f)),
            None => {
                tracing::warn!(volume = %id, "an attached volume has no file; left out of the domain")
            }
        }
    }
    Ok(out)
}

/// The disk of the volume at `position` in its server's `spec.volumes`:
/// the one kept at attach, or (for an attachment older than kept devices)
/// the one its position gave.
pub fn device(v: Option<&Volume>, position: usize) -> String {
    v.and_then(|v| v.status.device.clone())
        .unwrap_or_else(|| roost_common::model::disk_target(position + 1))
}

/// The lowest disk after `vda` that no volume attached (or attaching, or
/// detaching) to `server` holds.
fn free_device(conn: &Connection, server: &Server) -> Result<String, StoreError> {
    let held: Vec<Volume> = rows::list(
        conn,
        "volumes",
        "json_extract(status, '$.attached_to') = ?1",
        [&server.id],
    )?;
    let used: Vec<String> = held
        .iter()
        .filter_map(|v| {
            let at = server.spec.volumes.iter().position(|id| *id == v.id);
            v.status
                .device
                .clone()
                .or_else(|| at.map(|i| device(None, i)))
        })
        .collect();
    Ok((1..)
        .map(roost_common::model::disk_target)
        .find(|t| !used.contains(t))
        .unwrap_or_default())
}

/// What the storage worker has to do now.
pub(super) fn work(conn: &Connection) -> Result<Vec<Work>, StoreError> {
    let volumes: Vec<Volume> = rows::list(
        conn,
        "volumes",
        "json_extract(status, '$.state') IN ('creating', 'extending', 'reverting', 'deleting')",
        [],
    )?;
    let snapshots: Vec<Snapshot> = rows::list(
        conn,
        "volume_snapshots",
        "json_extract(status, '$.state') IN ('creating', 'deleting')",
        [],
    )?;
    if volumes.is_empty() && snapshots.is_empty() {
        return Ok(Vec::new());
    }
    let mut files = Files::default();
    let images: Vec<Image> = rows::list(conn, "images", "1", [])?;
    for i in images {
        if let (ImageState::Active, Some(f)) = (i.status.state, i.spec.file) {
            files.images.insert(i.id, (f, i.spec.disk_format));
        }
    }
    let all_snaps: Vec<Snapshot> = rows::list(conn, "volume_snapshots", "1", [])?;
    files.snapshots = all_snaps
        .into_iter()
        .filter(|s| s.status.state == SnapshotState::Available && !s.status.is_cold())
        .filter_map(|s| Some((s.id, s.status.file?)))
        .collect();
    let all_vols: Vec<Volume> = rows::list(conn, "volumes", "1", [])?;
    files.volumes = all_vols
        .into_iter()
        .filter_map(|v| Some((v.id, v.status.file?)))
        .collect::<HashMap<_, _>>();
    Ok(plan::plan(&volumes, &snapshots, &files))
}

/// Volume usage of a project (all projects for `None`): (volumes,
/// gigabytes, snapshots).
pub(super) fn usage(conn: &Connection, scope: &Scope) -> Result<(u64, u64, u64), StoreError> {
    let vols: Vec<Volume> = list(conn, "volumes", scope)?;
    let snaps: Vec<Snapshot> = list(conn, "volume_snapshots", scope)?;
    let gb = vols.iter().map(|v| v.spec.size_gb).sum::<u64>()
        + snaps.iter().map(|s| s.status.size_gb).sum::<u64>();
    Ok((vols.len() as u64, gb, snaps.len() as u64))
}

/// Whether a guest that runs (or is about to) holds the volume. Its disk
/// changes under a copy (and QEMU caches its metadata): only a stopped
/// server's volume is read whole.
fn held_by_running_guest(conn: &Connection, v: &Volume) -> Result<bool, StoreError> {
    let Some(sid) = &v.status.attached_to else {
        return Ok(false);
    };
    let server: Option<Server> = rows::get(conn, "servers", sid)?;
    Ok(server.is_some_and(|s| {
        s.status.vm_state != VmState::Stopped
            || s.status.task_state.is_some()
            || s.spec.power == roost_common::model::PowerIntent::Running
    }))
}

/// The refusal for a snapshot whose file is only at the region; the API
/// recalls it (`recall_snapshot`) after refusing.
fn cold_snapshot(s: &Snapshot, field: &str) -> FieldError {
    FieldError::new(
        field,
        &s.id,
        "snapshot is in the cold tier: its file is at the region, not at this site; it is fetched again now (while the link is up) and can be used once its roost:tier is warm",
    )
}

/// Available snapshots, those whose file is here (`cold: false`: what the
/// backup worker copies to the region with `storage.tiers.cold`, and the
/// tierer may send there) or those whose file is only at the region
/// (`cold: true`; the `recalled` ones are the backup worker's to bring
/// back).
pub(super) fn available_snapshots(
    conn: &Connection,
    cold: bool,
) -> Result<Vec<Snapshot>, StoreError> {
    Ok(
        rows::list::<SnapshotSpec, roost_common::model::SnapshotStatus>(
            conn,
            "volume_snapshots",
            "json_extract(status, '$.state') = 'available'",
            [],
        )?
        .into_iter()
        .filter(|s| s.status.is_cold() == cold)
        .collect(),
    )
}

/// Snapshots being read (a volume made from one, or reverted to it):
/// their files may not go.
pub(super) fn pinned_snapshots(
    conn: &Connection,
) -> Result<std::collections::HashSet<String>, StoreError> {
    rows::id_set(
        conn,
        "SELECT json_extract(spec, '$.source.snapshot') FROM volumes
           WHERE json_extract(status, '$.state') = 'creating'
         UNION
         SELECT json_extract(status, '$.revert_to') FROM volumes
           WHERE json_extract(status, '$.state') = 'reverting'",
    )
}

/// Volumes being made from a backup at the region (`creating`, source
/// `Backup`): the backup worker's to bring.
pub(super) fn restores(conn: &Connection) -> Result<Vec<Volume>, StoreError> {
    Ok(
        list::<VolumeSpec, roost_common::model::VolumeStatus>(conn, "volumes", &None)?
            .into_iter()
            .filter(|v| {
                v.status.state == VolumeState::Creating
                    && matches!(v.spec.source, VolumeSource::Backup(_))
            })
            .collect(),
    )
}

/// Every `central-replicated` volume with a file that is neither being
/// made nor deleted: what ought to have a current backup.
pub(super) fn replicated(conn: &Connection) -> Result<Vec<Volume>, StoreError> {
    Ok(
        list::<VolumeSpec, roost_common::model::VolumeStatus>(conn, "volumes", &None)?
            .into_iter()
            .filter(|v| {
                v.spec.volume_type == CENTRAL_REPLICATED
                    && v.status.file.is_some()
                    && !matches!(
                        v.status.state,
                        VolumeState::Creating | VolumeState::Deleting
                    )
            })
            .collect(),
    )
}

/// The `central-replicated` volumes the backup worker may read now: at
/// rest (`available`, or `in-use` by a stopped server), with a file.
pub(super) fn backup_candidates(conn: &Connection) -> Result<Vec<Volume>, StoreError> {
    let mut out = Vec::new();
    for v in list::<VolumeSpec, roost_common::model::VolumeStatus>(conn, "volumes", &None)? {
        let at_rest = match v.status.state {
            VolumeState::Available => true,
            VolumeState::InUse => !held_by_running_guest(conn, &v)?,
            _ => false,
        };
        if v.spec.volume_type == CENTRAL_REPLICATED && at_rest && v.status.file.is_some() {
            out.push(v);
        }
    }
    Ok(out)
}

fn state_rule(field: &str, state: &str, rule: &str) -> WriteError {
    FieldError::new(field, state, rule).into()
}

impl WriteCtx<'_> {
    fn save_volume(&mut self, v: &Volume) -> Result<(), WriteError> {
        self.tx.execute(
            "UPDATE volumes SET name = ?2, spec = ?3, status = ?4, updated_at = ?5 WHERE id = ?1",
            params![
                v.id,
                v.spec.name,
                json(&v.spec)?,
                json(&v.status)?,
                time(&self.now)
            ],
        )?;
        Ok(())
    }

    fn save_snapshot(&mut self, s: &Snapshot) -> Result<(), WriteError> {
        self.tx.execute(
            "UPDATE volume_snapshots SET spec = ?2, status = ?3, updated_at = ?4 WHERE id = ?1",
            params![s.id, json(&s.spec)?, json(&s.status)?, time(&self.now)],
        )?;
        Ok(())
    }

    /// Records a new volume, `creating`, its file to be `<dir>/<id>.qcow2`.
    /// Its source must be an active image, or an available snapshot in
    /// scope, that fits in its size.
    pub fn create_volume(
        &mut self,
        spec: VolumeSpec,
        scope: &Scope,
        dir: &Path,
    ) -> Result<Volume, WriteError> {
        let mut spec = spec;
        let need_gb = match &spec.source {
            VolumeSource::Blank => 0,
            VolumeSource::Image(id) => {
                let image: Image = rows::get(self.tx, "images", id)?.ok_or_else(|| {
                    FieldError::new(
                        "volume.imageRef",
                        id,
                        "must be the id of an image at this site",
                    )
                })?;
                if image.status.is_cold() {
                    return Err(super::images::cold(&image, "volume.imageRef").into());
                }
                if image.status.state != ImageState::Active {
                    return Err(state_rule(
                        "volume.imageRef",
                        id,
                        &format!(
                            "image is {}, not active: upload its data first",
                            image.status.state.as_str()
                        ),
                    ));
                }
                super::images::touch(self.tx, &image.id, &self.now)?;
                image.status.virtual_size.unwrap_or(0).div_ceil(GIB)
            }
            VolumeSource::Snapshot(id) => {
                let snap = snapshot_in(self.tx, id, scope).map_err(|_| {
                    FieldError::new(
                        "volume.snapshot_id",
                        id,
                        "must be the id of a snapshot of yours",
                    )
                })?;
                if snap.status.state != SnapshotState::Available {
                    return Err(state_rule(
                        "volume.snapshot_id",
                        id,
                        &format!("snapshot is {}, not available", snap.status.state.as_str()),
                    ));
                }
                if snap.status.is_cold() {
                    return Err(cold_snapshot(&snap, "volume.snapshot_id").into());
                }
                self.touch_snapshot(&snap)?;
                snap.status.size_gb
            }
            // Checked against the backup's size once it is here.
            VolumeSource::Backup(_) => 0,
        };
        if spec.size_gb == 0 {
            // No size asked for: the source's.
            spec.size_gb = need_gb.max(1);
        }
        spec.validate()?;
        if spec.size_gb < need_gb {
            return Err(FieldError::new(
                "volume.size",
                spec.size_gb,
                format!("must be at least {need_gb} GiB, the size of its source"),
            )
            .into());
        }
        let mut v: Volume = Resource::new(spec, self.now);
        v.status.file = Some(dir.join(format!("{}.qcow2", v.id)));
        self.tx.execute(
            "INSERT INTO volumes (id, project_id, name, spec, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                v.id,
                v.spec.project_id,
                v.spec.name,
                json(&v.spec)?,
                json(&v.status)?,
                time(&self.now)
            ],
        )?;
        Ok(v)
    }

    /// Changes a volume's name, description or metadata.
    pub fn update_volume(
        &mut self,
        id: &str,
        scope: &Scope,
        change: impl FnOnce(&mut VolumeSpec),
    ) -> Result<Volume, WriteError> {
        let mut v = volume_in(self.tx, id, scope)?;
        change(&mut v.spec);
        v.spec.validate()?;
        v.updated_at = self.now;
        self.save_volume(&v)?;
        Ok(v)
    }

    /// Marks a volume for deletion: it must be available or in error, and
    /// have no snapshots (as Cinder).
    pub fn delete_volume(&mut self, id: &str, scope: &Scope) -> Result<Volume, WriteError> {
        let mut v = volume_in(self.tx, id, scope)?;
        if v.status.state == VolumeState::Deleting {
            return Ok(v);
        }
        // One waiting for its backup to come from the region may go: the
        // link may never return.
        let restoring = v.status.state == VolumeState::Creating
            && matches!(v.spec.source, VolumeSource::Backup(_));
        if !(restoring || matches!(v.status.state, VolumeState::Available | VolumeState::Error))
            || v.status.attached_to.is_some()
        {
            return Err(state_rule(
                "status",
                v.status.state.as_str(),
                &format!("volume {id} must be available or error to be deleted, and not attached: detach it first"),
            ));
        }
        let snaps: i64 = self.tx.query_row(
            "SELECT COUNT(*) FROM volume_snapshots WHERE volume_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        if snaps > 0 {
            return Err(state_rule(
                "snapshots",
                &snaps.to_string(),
                &format!("volume {id} still has dependent snapshots: delete them first"),
            ));
        }
        v.status.state = VolumeState::Deleting;
        v.updated_at = self.now;
        self.save_volume(&v)?;
        Ok(v)
    }

    /// Grows an available volume to `new_size` GiB.
    pub fn extend_volume(
        &mut self,
        id: &str,
        scope: &Scope,
        new_size: u64,
    ) -> Result<Volume, WriteError> {
        let mut v = volume_in(self.tx, id, scope)?;
        if v.status.state != VolumeState::Available {
            return Err(state_rule(
                "status",
                v.status.state.as_str(),
                "the volume must be available to be extended: detach it first",
            ));
        }
        if new_size <= v.spec.size_gb {
            return Err(FieldError::new(
                "os-extend.new_size",
                new_size,
                format!(
                    "must be more than the volume's size, {} GiB",
                    v.spec.size_gb
                ),
            )
            .into());
        }
        let from = v.spec.size_gb;
        v.spec.size_gb = new_size;
        v.spec.validate().map_err(|e| FieldError {
            field: "os-extend.new_size".into(),
            ..e
        })?;
        v.status.state = VolumeState::Extending;
        v.status.extending_from = Some(from);
        v.updated_at = self.now;
        self.save_volume(&v)?;
        Ok(v)
    }

    /// An admin sets a volume's state by hand (Cinder's `os-reset_status`),
    /// to recover one left in `error`. Only for a detached volume the
    /// storage worker is not on; `available` only if the API found its file
    /// whole (`whole_size_gb`), which also becomes its size.
    pub fn reset_volume(
        &mut self,
        id: &str,
        scope: &Scope,
        want: VolumeState,
        whole_size_gb: Option<u64>,
    ) -> Result<Volume, WriteError> {
        let mut v = volume_in(self.tx, id, scope)?;
        // The storage worker owns a volume in these states until it
        // records the outcome (it never leaves one there: it finishes or
        // fails); a state set under it would be overwritten, or leave a
        // file behind.
        if matches!(
            v.status.state,
            VolumeState::Creating
                | VolumeState::Extending
                | VolumeState::Reverting
                | VolumeState::Deleting
        ) {
            return Err(state_rule(
                "status",
                v.status.state.as_str(),
                "the storage worker is still on the volume: wait for it to finish or fail",
            ));
        }
        if let Some(server) = &v.status.attached_to {
            return Err(state_rule(
                "os-reset_status.status",
                want.as_str(),
                &format!(
                    "the volume is attached to server {server}, which holds its state: detach it first"
                ),
            ));
        }
        match want {
            VolumeState::Available => {
                let Some(size) = whole_size_gb else {
                    return Err(WriteError::Conflict(format!(
                        "Volume {id}'s file {} is missing or damaged (qemu-img check): it cannot be made available; delete the volume",
                        v.status.file.as_deref().map(|f| f.display().to_string()).unwrap_or_else(|| "(none)".into())
                    )));
                };
                v.spec.size_gb = size;
                v.status.fault = None;
            }
            _ => {
                v.status.fault = Some(Fault {
                    code: 500,
                    message: "set to error by an admin".into(),
                    at: self.now,
                });
            }
        }
        v.status.state = want;
        v.status.revert_to = None;
        v.status.extending_from = None;
        v.updated_at = self.now;
        self.save_volume(&v)?;
        Ok(v)
    }

    /// Reverts an available volume to its latest snapshot (Cinder's rule:
    /// only the latest).
    pub fn revert_volume(
        &mut self,
        id: &str,
        scope: &Scope,
        snapshot_id: &str,
    ) -> Result<Volume, WriteError> {
        let mut v = volume_in(self.tx, id, scope)?;
        if v.status.state != VolumeState::Available {
            return Err(state_rule(
                "status",
                v.status.state.as_str(),
                "the volume must be available to be reverted: detach it first",
            ));
        }
        let latest: Option<String> = self
            .tx
            .query_row(
                "SELECT id FROM volume_snapshots WHERE volume_id = ?1 ORDER BY created_at DESC, id DESC LIMIT 1",
                [id],
                |r| r.get(0),
            )
            .ok();
        let snap = snapshot_in(self.tx, snapshot_id, scope).ok();
        match snap {
            Some(s) if s.spec.volume_id == id && latest.as_deref() == Some(snapshot_id) => {
                if s.status.state != SnapshotState::Available {
                    return Err(state_rule(
                        "revert.snapshot_id",
                        snapshot_id,
                        &format!("snapshot is {}, not available", s.status.state.as_str()),
                    ));
                }
                if s.status.size_gb != v.spec.size_gb {
                    return Err(state_rule(
                        "revert.snapshot_id",
                        snapshot_id,
                        "the volume was extended after the snapshot; a volume reverts only to a snapshot of its current size",
                    ));
                }
                if s.status.is_cold() {
                    return Err(cold_snapshot(&s, "revert.snapshot_id").into());
                }
                self.touch_snapshot(&s)?;
            }
            _ => {
                return Err(FieldError::new(
                    "revert.snapshot_id",
                    snapshot_id,
                    "must be the volume's latest snapshot",
                )
                .into())
            }
        }
        v.status.state = VolumeState::Reverting;
        v.status.revert_to = Some(snapshot_id.to_string());
        v.updated_at = self.now;
        self.save_volume(&v)?;
        Ok(v)
    }

    /// Records a new snapshot of a volume, `creating`. An attached volume
    /// needs `force` and a stopped server.
    pub fn create_snapshot(
        &mut self,
        spec: SnapshotSpec,
        scope: &Scope,
        dir: &Path,
    ) -> Result<Snapshot, WriteError> {
        spec.validate()?;
        let v = volume_in(self.tx, &spec.volume_id, scope).map_err(|_| {
            FieldError::new(
                "snapshot.volume_id",
                &spec.volume_id,
                "must be the id of a volume of yours",
            )
        })?;
        let server_running = held_by_running_guest(self.tx, &v)?;
        match v.status.state {
            VolumeState::Available => {}
            VolumeState::InUse if spec.force && server_running => {
                return Err(state_rule(
                    "snapshot.force",
                    "true",
                    "the volume's server is running: stop the server or detach the volume first (live snapshots are not built)",
                ))
            }
            VolumeState::InUse if spec.force => {}
            VolumeState::InUse => {
                return Err(state_rule(
                    "snapshot.force",
                    "false",
                    "the volume is attached: detach it, or set force to take a crash-consistent snapshot",
                ))
            }
            other => {
                return Err(state_rule(
                    "status",
                    other.as_str(),
                    "the volume must be available or in-use to be snapshotted",
                ))
            }
        }
        let mut s: Snapshot = Resource::new(spec, self.now);
        s.status.size_gb = v.spec.size_gb;
        s.status.file = Some(dir.join(format!("{}.qcow2", s.id)));
        self.tx.execute(
            "INSERT INTO volume_snapshots (id, volume_id, project_id, spec, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![s.id, s.spec.volume_id, s.spec.project_id, json(&s.spec)?, json(&s.status)?, time(&self.now)],
        )?;
        Ok(s)
    }

    /// Marks a snapshot for deletion (available or in error, and no volume
    /// being made from or reverted to it).
    pub fn delete_snapshot(&mut self, id: &str, scope: &Scope) -> Result<Snapshot, WriteError> {
        let mut s = snapshot_in(self.tx, id, scope)?;
        if s.status.state == SnapshotState::Deleting {
            return Ok(s);
        }
        if !matches!(
            s.status.state,
            SnapshotState::Available | SnapshotState::Error
        ) {
            return Err(state_rule(
                "status",
                s.status.state.as_str(),
                &format!("snapshot {id} must be available or error to be deleted"),
            ));
        }
        let users: i64 = self.tx.query_row(
            "SELECT COUNT(*) FROM volumes WHERE
               (json_extract(status, '$.state') = 'creating' AND json_extract(spec, '$.source.snapshot') = ?1)
               OR (json_extract(status, '$.state') = 'reverting' AND json_extract(status, '$.revert_to') = ?1)",
            [id],
            |r| r.get(0),
        )?;
        if users > 0 {
            return Err(WriteError::Conflict(format!(
                "Snapshot {id} is being read to make or revert a volume; delete it when that is done"
            )));
        }
        s.status.state = SnapshotState::Deleting;
        s.updated_at = self.now;
        self.save_snapshot(&s)?;
        Ok(s)
    }

    /// Changes a server's volume intent (recorded in the site's intent
    /// document, like any change of the server's spec).
    fn change_server_volumes(
        &mut self,
        server: &Server,
        change: impl FnOnce(&mut Vec<String>),
    ) -> Result<(), WriteError> {
        let mut spec = server.spec.clone();
        change(&mut spec.volumes);
        self.tx.execute(
            "UPDATE servers SET spec = ?2, updated_at = ?3 WHERE id = ?1",
            params![server.id, json(&spec)?, time(&self.now)],
        )?;
        self.record_changes("servers", &server.id, &server.spec, &spec);
        Ok(())
    }

    /// Asks for a volume to be attached to a server. Both must be in
    /// scope and in the same project; the server active or stopped with
    /// nothing else under way; the volume available.
    pub fn attach_volume(
        &mut self,
        server_id: &str,
        volume_id: &str,
        scope: &Scope,
    ) -> Result<Volume, WriteError> {
        let server = server_in(self.tx, server_id, scope).and_then(|s| {
            if s.spec.deleted {
                Err(WriteError::NotFound(format!(
                    "Instance {server_id} could not be found."
                )))
            } else {
                Ok(s)
            }
        })?;
        let mut v = volume_in(self.tx, volume_id, scope).map_err(|_| {
            FieldError::new(
                "volumeAttachment.volumeId",
                volume_id,
                "must be the id of a volume of yours",
            )
        })?;
        if v.spec.project_id != server.spec.project_id {
            return Err(FieldError::new(
                "volumeAttachment.volumeId",
                volume_id,
                "must be a volume of the server's project",
            )
            .into());
        }
        if v.status.state != VolumeState::Available {
            // Nova answers 400 for a volume that is not available.
            return Err(FieldError::new(
                "volumeAttachment.volumeId",
                volume_id,
                format!(
                    "volume is {}: only an available volume can be attached",
                    v.status.state.as_str()
                ),
            )
            .into());
        }
        let copying: i64 = self.tx.query_row(
            "SELECT COUNT(*) FROM volume_snapshots WHERE volume_id = ?1
             AND json_extract(status, '$.state') = 'creating'",
            [volume_id],
            |r| r.get(0),
        )?;
        if copying > 0 {
            return Err(WriteError::Conflict(format!(
                "Volume {volume_id} is being snapshotted; attach it when the snapshot is available"
            )));
        }
        let shown = super::shown_status(&server);
        if !matches!(shown.vm_state, VmState::Active | VmState::Stopped)
            || shown.task_state.is_some()
        {
            return Err(WriteError::Conflict(format!(
                "Cannot 'attach_volume' instance {server_id} while it is {}",
                shown.nova_status()
            )));
        }
        let device = free_device(self.tx, &server)?;
        self.change_server_volumes(&server, |vols| vols.push(volume_id.to_string()))?;
        v.status.state = VolumeState::Attaching;
        v.status.attached_to = Some(server_id.to_string());
        v.status.device = Some(device);
        v.updated_at = self.now;
        self.save_volume(&v)?;
        Ok(v)
    }

    /// Asks for a volume to be detached from a server.
    pub fn detach_volume(
        &mut self,
        server_id: &str,
        volume_id: &str,
        scope: &Scope,
    ) -> Result<Volume, WriteError> {
        let server = server_in(self.tx, server_id, scope)?;
        if !server.spec.volumes.iter().any(|v| v == volume_id) {
            return Err(WriteError::NotFound(format!(
                "volume_id {volume_id} not found as an attachment of instance {server_id}"
            )));
        }
        let mut v = volume_in(self.tx, volume_id, scope)?;
        // The reconciler is changing the domain right now, or cannot (an
        // ERROR server): its disks are not the API's to change.
        if server.status.task_state.is_some() || server.status.vm_state == VmState::Error {
            return Err(WriteError::Conflict(format!(
                "Cannot 'detach_volume' instance {server_id} while it is {}{}",
                server.status.nova_status(),
                if server.status.vm_state == VmState::Error {
                    ": delete the server to free its volumes"
                } else {
                    "; try again when the task ends"
                }
            )));
        }
        let pending = v.status.state == VolumeState::Attaching
            && !server.status.volumes.iter().any(|x| x == volume_id);
        if v.status.state != VolumeState::InUse && !pending {
            return Err(WriteError::Conflict(format!(
                "Volume {volume_id} is {}: only an in-use or attaching volume can be detached",
                v.status.state.as_str()
            )));
        }
        let shown = super::shown_status(&server);
        let busy = shown
            .task_state
            .filter(|t| *t != roost_common::model::TaskState::UpdatingVolumes);
        if busy.is_some() {
            return Err(WriteError::Conflict(format!(
                "Cannot 'detach_volume' instance {server_id} while it is {}",
                shown.nova_status()
            )));
        }
        self.change_server_volumes(&server, |vols| vols.retain(|x| x != volume_id))?;
        if pending {
            // Never reached the domain: it is free at once.
            v.status.state = VolumeState::Available;
            v.status.attached_to = None;
            v.status.device = None;
            v.updated_at = self.now;
            self.save_volume(&v)?;
            return Ok(v);
        }
        v.status.state = VolumeState::Detaching;
        v.updated_at = self.now;
        self.save_volume(&v)?;
        Ok(v)
    }

    /// Follows a server's status: volumes its domain gained are `in-use`,
    /// volumes it lost (or all, when it is gone) `available`.
    pub(super) fn settle_attachments(
        &mut self,
        server_id: &str,
        before: &[String],
        after: &[String],
    ) -> Result<(), WriteError> {
        let gained = after.iter().filter(|id| !before.contains(id));
        let lost = before.iter().filter(|id| !after.contains(id));
        let changes = gained
            .map(|id| (id, VolumeState::InUse))
            .chain(lost.map(|id| (id, VolumeState::Available)));
        for (id, state) in changes.collect::<Vec<_>>() {
            let v: Option<Volume> = rows::get(self.tx, "volumes", id)?;
            let Some(mut v) = v.filter(|v| v.status.attached_to.as_deref() == Some(server_id))
            else {
                continue;
            };
            v.status.state = state;
            if state == VolumeState::Available {
                v.status.attached_to = None;
                v.status.device = None;
            }
            v.updated_at = self.now;
            self.save_volume(&v)?;
        }
        Ok(())
    }

    /// Frees the volumes of a server that is gone.
    pub(super) fn free_volumes_of(&mut self, server_id: &str) -> Result<(), WriteError> {
        let held: Vec<Volume> = rows::list(
            self.tx,
            "volumes",
            "json_extract(status, '$.attached_to') = ?1",
            [server_id],
        )?;
        for mut v in held {
            v.status.state = VolumeState::Available;
            v.status.attached_to = None;
            v.status.device = None;
            v.updated_at = self.now;
            self.save_volume(&v)?;
        }
        Ok(())
    }

    /// Records a restore's end: `available`, or `error` with the reason.
    /// Only a volume still waiting for it is changed; false if it was not
    /// (deleted meanwhile: its file is then the caller's to remove).
    pub fn restore_done(
        &mut self,
        id: &str,
        result: Result<(), String>,
    ) -> Result<bool, WriteError> {
        let v: Option<Volume> = rows::get(self.tx, "volumes", id)?;
        let Some(mut v) = v.filter(|v| {
            v.status.state == VolumeState::Creating
                && matches!(v.spec.source, VolumeSource::Backup(_))
        }) else {
            return Ok(false);
        };
        match result {
            Ok(()) => {
                v.status.state = VolumeState::Available;
                v.status.fault = None;
            }
            Err(message) => {
                v.status.state = VolumeState::Error;
                v.status.fault = Some(Fault {
                    code: 500,
                    message,
                    at: self.now,
                });
            }
        }
        v.updated_at = self.now;
        self.save_volume(&v)?;
        Ok(true)
    }

    /// Records the backup the region confirmed keeping. The volume's
    /// `updated_at` stays: nothing about the volume itself changed.
    pub fn backup_done(&mut self, id: &str, backup: VolumeBackup) -> Result<(), WriteError> {
        let v: Option<Volume> = rows::get(self.tx, "volumes", id)?;
        let Some(mut v) = v else {
            return Ok(());
        };
        v.status.backup = Some(backup);
        self.tx.execute(
            "UPDATE volumes SET status = ?2 WHERE id = ?1",
            params![v.id, json(&v.status)?],
        )?;
        Ok(())
    }

    fn touch_snapshot(&mut self, s: &Snapshot) -> Result<(), WriteError> {
        let now = self.now;
        self.set_snapshot_status(&s.id, |st| st.last_used = Some(now))
    }

    /// The available snapshot `id`, if its status is as `check` wants.
    fn snapshot_where(
        &self,
        id: &str,
        check: impl FnOnce(&Snapshot) -> bool,
    ) -> Result<Option<Snapshot>, WriteError> {
        let s: Option<Snapshot> = rows::get(self.tx, "volume_snapshots", id)?;
        Ok(s.filter(|s| s.status.state == SnapshotState::Available && check(s)))
    }

    /// Records that a snapshot's file is about to be offered to the
    /// region (before any copy can be kept there).
    pub fn snapshot_offering(&mut self, id: &str) -> Result<(), WriteError> {
        self.set_snapshot_status(id, |st| st.copy_offered = true)
    }

    /// Records the copy of a snapshot's file the region confirmed keeping,
    /// whatever the snapshot's state (one being deleted queues the copy's
    /// forget when it goes). A snapshot already gone has its copy
    /// forgotten at the region instead.
    pub fn snapshot_backup_done(
        &mut self,
        id: &str,
        backup: VolumeBackup,
    ) -> Result<(), WriteError> {
        let s: Option<Snapshot> = rows::get(self.tx, "volume_snapshots", id)?;
        match s {
            None => self.forget_at_region(id),
            Some(s) if s.status.is_cold() => Ok(()),
            Some(_) => self.set_snapshot_status(id, |st| st.backup = Some(backup)),
        }
    }

    /// Changes a snapshot's status in place (its `updated_at` stays:
    /// nothing about the snapshot itself changed).
    fn set_snapshot_status(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut roost_common::model::SnapshotStatus),
    ) -> Result<(), WriteError> {
        let s: Option<Snapshot> = rows::get(self.tx, "volume_snapshots", id)?;
        if let Some(mut s) = s {
            change(&mut s.status);
            self.tx.execute(
                "UPDATE volume_snapshots SET status = ?2 WHERE id = ?1",
                params![s.id, json(&s.status)?],
            )?;
        }
        Ok(())
    }

    /// Queues `key` for the region to forget (see [`super::Store::region_forgets`]).
    fn forget_at_region(&mut self, key: &str) -> Result<(), WriteError> {
        self.tx.execute(
            "INSERT OR IGNORE INTO region_forget (key, since) VALUES (?1, ?2)",
            params![key, time(&self.now)],
        )?;
        Ok(())
    }

    /// The region forgot `key`.
    pub fn region_forgot(&mut self, key: &str) -> Result<(), WriteError> {
        self.tx
            .execute("DELETE FROM region_forget WHERE key = ?1", [key])?;
        Ok(())
    }

    /// Tiering: the snapshot's file, at `from` and still as the region's
    /// copy of it was read (`stamp`), leaves the site. Refused (`false`)
    /// when it changed meanwhile or a volume is being made from or
    /// reverted to it.
    pub fn evict_snapshot(
        &mut self,
        id: &str,
        from: &Path,
        stamp: &str,
    ) -> Result<bool, WriteError> {
        let pinned = pinned_snapshots(self.tx)?.contains(id);
        let Some(mut s) = self.snapshot_where(id, |s| {
            !s.status.is_cold()
                && s.status.file.as_deref() == Some(from)
                && s.status.backup.as_ref().is_some_and(|b| b.stamp == stamp)
        })?
        else {
            return Ok(false);
        };
        if pinned {
            return Ok(false);
        }
        s.status.tier = Some(roost_common::model::Tier::Cold);
        s.status.recalled = false;
        self.save_snapshot(&s)?;
        Ok(true)
    }

    /// A cold snapshot is wanted: the backup worker brings it back. Says
    /// whether it was cold and not yet wanted.
    pub fn recall_snapshot(&mut self, id: &str) -> Result<bool, WriteError> {
        let Some(mut s) = self.snapshot_where(id, |s| s.status.is_cold() && !s.status.recalled)?
        else {
            return Ok(false);
        };
        s.status.recalled = true;
        self.save_snapshot(&s)?;
        tracing::info!(snapshot = %id, "a cold snapshot is wanted again; fetching it from the region");
        Ok(true)
    }

    /// A cold snapshot could not come back (the region lacks its copy, or
    /// the copy is not what the site sent): it stays cold, not wanted,
    /// with the reason; using it again tries again.
    pub fn snapshot_not_back(&mut self, id: &str, why: String) -> Result<(), WriteError> {
        if let Some(mut s) = self.snapshot_where(id, |s| s.status.is_cold())? {
            s.status.recalled = false;
            s.status.fault = Some(Fault {
                code: 500,
                message: format!("could not come back from the region: {why}"),
                at: self.now,
            });
            self.save_snapshot(&s)?;
        }
        Ok(())
    }

    /// A cold snapshot's file is back in place (renamed in, synced), the
    /// same bytes as the region's copy: `stamp` is the new file's, so it
    /// may go cold again without being sent again.
    pub fn snapshot_back(&mut self, id: &str, stamp: String) -> Result<bool, WriteError> {
        let Some(mut s) = self.snapshot_where(id, |s| s.status.is_cold())? else {
            return Ok(false);
        };
        if let Some(b) = &mut s.status.backup {
            b.stamp = stamp;
        }
        s.status.tier = None;
        s.status.recalled = false;
        s.status.fault = None;
        s.status.last_used = Some(self.now);
        self.save_snapshot(&s)?;
        Ok(true)
    }

    /// Records what the storage worker did for `subject`. After a failed
    /// extend, `whole_size_gb` is the size the worker found the volume's
    /// file at, if `qemu-img check` found it whole.
    pub fn storage_done(
        &mut self,
        subject: &Subject,
        result: Result<(), String>,
        whole_size_gb: Option<u64>,
    ) -> Result<(), WriteError> {
        let fault = |message: String| Fault {
            code: 500,
            message,
            at: self.now,
        };
        match subject {
            Subject::Volume(id) => {
                let v: Option<Volume> = rows::get(self.tx, "volumes", id)?;
                let Some(mut v) = v else {
                    return Ok(());
                };
                match (v.status.state, result) {
                    (VolumeState::Deleting, Ok(())) => {
                        self.tx.execute("DELETE FROM volumes WHERE id = ?1", [id])?;
                        return Ok(());
                    }
                    (
                        VolumeState::Creating | VolumeState::Extending | VolumeState::Reverting,
                        Ok(()),
                    ) => {
                        v.status.state = VolumeState::Available;
                        v.status.fault = None;
                    }
                    (_, Ok(())) => return Ok(()),
                    // A resize that failed with the file still whole at its
                    // old size (qemu-img found no room for the new tables,
                    // say): the volume keeps its size and data and stays
                    // usable, with the reason shown, rather than needing an
                    // admin's reset. Found at any other size, or not whole,
                    // or not found, it is the volume's error.
                    (VolumeState::Extending, Err(e))
                        if v.status.extending_from.is_some()
                            && v.status.extending_from == whole_size_gb =>
                    {
                        let from = v.status.extending_from.unwrap_or(v.spec.size_gb);
                        v.status.fault = Some(fault(format!(
                            "extending to {} GiB failed: {e}; the volume keeps its {from} GiB and its data",
                            v.spec.size_gb
                        )));
                        v.spec.size_gb = from;
                        v.status.state = VolumeState::Available;
                    }
                    (_, Err(e)) => {
                        v.status.state = VolumeState::Error;
                        v.status.fault = Some(fault(e));
                    }
                }
                v.status.revert_to = None;
                v.status.extending_from = None;
                v.updated_at = self.now;
                self.save_volume(&v)
            }
            Subject::Snapshot(id) => {
                let s: Option<Snapshot> = rows::get(self.tx, "volume_snapshots", id)?;
                let Some(mut s) = s else {
                    return Ok(());
                };
                match (s.status.state, result) {
                    (SnapshotState::Deleting, Ok(())) => {
                        self.tx
                            .execute("DELETE FROM volume_snapshots WHERE id = ?1", [id])?;
                        if s.status.backup.is_some() || s.status.copy_offered {
                            self.forget_at_region(id)?;
                        }
                        return Ok(());
                    }
                    (SnapshotState::Creating, Ok(())) => {
                        s.status.state = SnapshotState::Available;
                        s.status.fault = None;
                    }
                    (_, Ok(())) => return Ok(()),
                    (_, Err(e)) => {
                        s.status.state = SnapshotState::Error;
                        s.status.fault = Some(fault(e));
                    }
                }
                s.updated_at = self.now;
                self.save_snapshot(&s)
            }
        }
    }
}

/// Whether a snapshot of any of these volumes is being made.
pub(super) fn snapshot_under_way(
    conn: &Connection,
    volumes: &[String],
) -> Result<bool, StoreError> {
    for v in volumes {
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM volume_snapshots WHERE volume_id = ?1
             AND json_extract(status, '$.state') = 'creating'",
            [v],
            |r| r.get(0),
        )?;
        if n > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The volumes a server's status names before this write (for
/// [`WriteCtx::settle_attachments`]).
pub(super) fn status_volumes(
    conn: &Connection,
    server_id: &str,
) -> Result<Vec<String>, StoreError> {
    let text: Option<String> = conn
        .query_row(
            "SELECT status FROM servers WHERE id = ?1",
            [server_id],
            |r| r.get(0),
        )
        .ok();
    Ok(text
        .and_then(|t| serde_json::from_str::<ServerStatus>(&t).ok())
        .map(|s| s.volumes)
        .unwrap_or_default())
}
