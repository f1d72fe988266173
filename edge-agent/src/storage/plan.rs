//! The pure half of the storage worker: which file operation each volume
//! and snapshot in a working state needs.

use std::collections::HashMap;
use std::path::PathBuf;

use roost_common::model::{DiskFormat, Snapshot, SnapshotState, Volume, VolumeSource, VolumeState};

/// Where a new file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Blank,
    /// A copy of this file (nothing writes it meanwhile: the store takes
    /// snapshots only of volumes no running guest holds).
    Copy {
        file: PathBuf,
        format: DiskFormat,
    },
}

/// One file operation. Each may be repeated after a crash: a new file is
/// written beside its final name and renamed into place only once whole,
/// so a final name that exists holds a whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Make `file` of `size_gb` from `from`.
    Make {
        file: PathBuf,
        size_gb: u64,
        from: Source,
    },
    /// Grow `file` to `size_gb`.
    Resize {
        file: PathBuf,
        size_gb: u64,
    },
    /// Replace `file` with a copy of `from`, of `size_gb`.
    Replace {
        file: PathBuf,
        from: PathBuf,
        size_gb: u64,
    },
    Remove {
        file: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    Volume(String),
    Snapshot(String),
}

/// What to do for one subject; `Err` when it cannot be done at all (its
/// source is gone), which the worker records as the subject's fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Work {
    pub subject: Subject,
    pub op: Result<Op, String>,
}

/// The files the plan may need, by id.
#[derive(Debug, Clone, Default)]
pub struct Files {
    /// Active images' files and formats.
    pub images: HashMap<String, (PathBuf, DiskFormat)>,
    /// Available snapshots' files.
    pub snapshots: HashMap<String, PathBuf>,
    /// Volumes' files.
    pub volumes: HashMap<String, PathBuf>,
}

fn file_of(v: &Volume) -> Result<PathBuf, String> {
    v.status
        .file
        .clone()
        .ok_or_else(|| format!("volume {} has no file recorded", v.id))
}

fn volume_op(v: &Volume, files: &Files) -> Option<Result<Op, String>> {
    let op = match v.status.state {
        // Brought from the region by the backup worker while the link is
        // up (`storage::backup`), not made here.
        VolumeState::Creating if matches!(v.spec.source, VolumeSource::Backup(_)) => return None,
        VolumeState::Creating => file_of(v).and_then(|file| {
            let from = match &v.spec.source {
                VolumeSource::Blank => Source::Blank,
                VolumeSource::Image(id) => {
                    let (file, format) = files.images.get(id).cloned().ok_or_else(|| {
                        format!("image {id} is gone or not active; the volume cannot be made from it")
                    })?;
                    Source::Copy { file, format }
                }
                VolumeSource::Snapshot(id) => Source::Copy {
                    file: files.snapshots.get(id).cloned().ok_or_else(|| {
                        format!("snapshot {id} is gone or not available; the volume cannot be made from it")
                    })?,
                    format: DiskFormat::Qcow2,
                },
                VolumeSource::Backup(id) => {
                    return Err(format!("backup {id} is brought from the region, not made here"))
                }
            };
            Ok(Op::Make {
                file,
                size_gb: v.spec.size_gb,
                from,
            })
        }),
        VolumeState::Extending => file_of(v).map(|file| Op::Resize {
            file,
            size_gb: v.spec.size_gb,
        }),
        VolumeState::Reverting => file_of(v).and_then(|file| {
            let id = v.status.revert_to.as_deref().unwrap_or_default();
            let from = files.snapshots.get(id).cloned().ok_or_else(|| {
                format!("snapshot {id} is gone; the volume cannot be reverted to it")
            })?;
            Ok(Op::Replace {
                file,
                from,
                size_gb: v.spec.size_gb,
            })
        }),
        // A volume with no file (it failed before one was made) has
        // nothing to remove: an empty path.
        VolumeState::Deleting => Ok(Op::Remove {
            file: v.status.file.clone().unwrap_or_default(),
        }),
        _ => return None,
    };
    Some(op)
}

fn snapshot_op(s: &Snapshot, files: &Files) -> Option<Result<Op, String>> {
    let file = s.status.file.clone().unwrap_or_default();
    Some(match s.status.state {
        SnapshotState::Creating => files
            .volumes
            .get(&s.spec.volume_id)
            .cloned()
            .map(|from| Op::Make {
                file,
                size_gb: s.status.size_gb,
                from: Source::Copy {
                    file: from,
                    format: DiskFormat::Qcow2,
                },
            })
            .ok_or_else(|| format!("volume {} is gone", s.spec.volume_id)),
        SnapshotState::Deleting => Ok(Op::Remove { file }),
        _ => return None,
    })
}

/// The work due for every volume and snapshot given.
pub fn plan(volumes: &[Volume], snapshots: &[Snapshot], files: &Files) -> Vec<Work> {
    let vols = volumes.iter().filter_map(|v| {
        volume_op(v, files).map(|op| Work {
            subject: Subject::Volume(v.id.clone()),
            op,
        })
    });
    let snaps = snapshots.iter().filter_map(|s| {
        snapshot_op(s, files).map(|op| Work {
            subject: Subject::Snapshot(s.id.clone()),
            op,
        })
    });
    // Snapshots first: a volume made from or reverted to a snapshot waits
    // for it, and a snapshot being taken reads its volume before a later
    // change to the volume.
    snaps.chain(vols).collect()
}
