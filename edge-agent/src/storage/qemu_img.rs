//! Carries out [`Op`]s on qcow2 files with `qemu-img` (Debian's
//! qemu-utils). Blocking: the worker calls it on a blocking thread.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::plan::{Op, Source};
use super::{free_bytes, FREE_SPACE_RESERVE};
use roost_common::model::DiskFormat;

/// A failed operation, in words for the volume's fault.
pub type OpError = String;

fn part_of(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

fn qemu_img(args: &[&std::ffi::OsStr], what: &str) -> Result<(), OpError> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run qemu-img (install qemu-utils): {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let hint = if err.contains("No space left") {
        ": the volumes' disk is full; free space or delete unused volumes and snapshots, then create it again"
    } else {
        ""
    };
    Err(format!("qemu-img could not {what}: {err}{hint}"))
}

fn sync_file(file: &Path) -> Result<(), OpError> {
    std::fs::File::open(file)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", file.display()))
}

fn sync_parent(file: &Path) -> Result<(), OpError> {
    let dir = file.parent().unwrap_or(Path::new("."));
    roost_common::files::sync_dir(dir).map_err(|e| format!("cannot sync {}: {e}", dir.display()))
}

/// Refuses a copy of `from` that would leave the disk under the reserve.
fn check_room(dir: &Path, from: &Path) -> Result<(), OpError> {
    let need = std::fs::metadata(from)
        .map(|m| m.blocks() * 512)
        .map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    let free = free_bytes(dir).map_err(|e| e.to_string())?;
    if free < need.saturating_add(FREE_SPACE_RESERVE) {
        return Err(format!(
            "not enough space in {}: {} MiB free, the copy needs up to {} MiB and 1024 MiB stay free for the site's store; free space or delete unused volumes and snapshots, then try again",
            dir.display(),
            free >> 20,
            need.div_ceil(1 << 20)
        ));
    }
    Ok(())
}

/// Writes a whole new file at `part`: blank, or a copy of a source, grown to
/// `size_gb`.
fn write_part(part: &Path, size_gb: u64, from: &Source) -> Result<(), OpError> {
    let size = format!("{size_gb}G");
    match from {
        Source::Blank => qemu_img(
            &[
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                part.as_os_str(),
                size.as_ref(),
            ],
            "create the volume",
        ),
        Source::Copy { file, format } => {
            check_room(part.parent().unwrap_or(Path::new(".")), file)?;
            let fmt = match format {
                DiskFormat::Qcow2 => "qcow2",
                DiskFormat::Raw => "raw",
            };
            let mut args: Vec<&std::ffi::OsStr> = vec!["convert".as_ref(), "-q".as_ref()];
            args.extend::<[&std::ffi::OsStr; 6]>([
                "-f".as_ref(),
                fmt.as_ref(),
                "-O".as_ref(),
                "qcow2".as_ref(),
                file.as_os_str(),
                part.as_os_str(),
            ]);
            qemu_img(&args, &format!("copy {}", file.display()))?;
            resize(part, size_gb)
        }
    }
}

fn resize(file: &Path, size_gb: u64) -> Result<(), OpError> {
    let size = format!("{size_gb}G");
    qemu_img(
        &[
            "resize".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            file.as_os_str(),
            size.as_ref(),
        ],
        &format!("resize {}", file.display()),
    )
}

/// Writes `part` with `write`, syncs it and renames it over `file`;
/// removes `part` on any failure.
fn replace_with(
    file: &Path,
    write: impl FnOnce(&Path) -> Result<(), OpError>,
) -> Result<(), OpError> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let part = part_of(file);
    let _ = std::fs::remove_file(&part);
    let done = write(&part).and_then(|()| sync_file(&part)).and_then(|()| {
        std::fs::rename(&part, file).map_err(|e| format!("cannot rename {}: {e}", part.display()))
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    done?;
    sync_parent(file)
}

/// Carries out one operation. Repeating one that completed is harmless.
pub fn run(op: &Op) -> Result<(), OpError> {
    match op {
        Op::Make {
            file,
            size_gb,
            from,
        } => {
            if file.is_file() {
                // Renamed into place whole: made before a crash.
                return Ok(());
            }
            replace_with(file, |part| write_part(part, *size_gb, from))
        }
        Op::Resize { file, size_gb } => {
            resize(file, *size_gb)?;
            sync_file(file)
        }
        Op::Replace {
            file,
            from,
            size_gb,
        } => replace_with(file, |part| {
            write_part(
                part,
                *size_gb,
                &Source::Copy {
                    file: from.clone(),
                    format: DiskFormat::Qcow2,
                },
            )
        }),
        Op::Remove { file } => {
            if file.as_os_str().is_empty() {
                return Ok(());
            }
            let mut restore_part = file.clone().into_os_string();
            restore_part.push(".restore.part");
            for f in [part_of(file), PathBuf::from(restore_part), file.clone()] {
                match std::fs::remove_file(&f) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(format!("cannot remove {}: {e}", f.display()))
                    }
                    _ => {}
                }
            }
            sync_parent(file)
        }
    }
}

/// The size in whole GiB of a qcow2 file that `qemu-img check` finds
/// whole (leaked clusters waste space but lose nothing); `None` if it is
/// missing, damaged, or not a whole number of GiB. The worker asks after an
/// extend fails, to learn whether the volume is still as it was.
pub fn whole_size_gb(file: &Path) -> Option<u64> {
    let check = Command::new("qemu-img")
        .args(["check", "-q", "-f", "qcow2"])
        .arg(file)
        .output()
        .ok()?;
    // 0: no errors; 3: leaked clusters only.
    if !matches!(check.status.code(), Some(0 | 3)) {
        return None;
    }
    let bytes = virtual_size(file).ok()?;
    (bytes % (1 << 30) == 0).then_some(bytes >> 30)
}

/// The virtual size of a qcow2 file, in bytes.
pub fn virtual_size(file: &Path) -> Result<u64, OpError> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(file)
        .output()
        .map_err(|e| format!("cannot run qemu-img (install qemu-utils): {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("qemu-img info: {e}"))?;
    v["virtual-size"]
        .as_u64()
        .ok_or_else(|| "qemu-img info gave no virtual-size".to_string())
}
