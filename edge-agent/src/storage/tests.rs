//! The storage plan without files, and `qemu-img` on real files.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::Utc;
use roost_common::model::{
    DiskFormat, Resource, Snapshot, SnapshotSpec, SnapshotState, Volume, VolumeSource, VolumeSpec,
    VolumeState,
};

use super::plan::{plan, Files, Op, Source, Subject};
use super::qemu_img::{run, virtual_size, whole_size_gb};

const GIB: u64 = 1 << 30;

fn volume(id: &str, state: VolumeState, source: VolumeSource) -> Volume {
    let spec = VolumeSpec {
        name: id.into(),
        description: None,
        project_id: "p".into(),
        user_id: "u".into(),
        size_gb: 2,
        volume_type: "edge-local".into(),
        source,
        metadata: Default::default(),
    };
    let mut v: Volume = Resource::new(spec, Utc::now());
    v.id = id.into();
    v.status.state = state;
    v.status.file = Some(PathBuf::from(format!("/v/{id}.qcow2")));
    v
}

fn snapshot(id: &str, volume_id: &str, state: SnapshotState) -> Snapshot {
    let spec = SnapshotSpec {
        name: id.into(),
        description: None,
        project_id: "p".into(),
        user_id: "u".into(),
        volume_id: volume_id.into(),
        force: false,
        metadata: Default::default(),
    };
    let mut s: Snapshot = Resource::new(spec, Utc::now());
    s.id = id.into();
    s.status.state = state;
    s.status.size_gb = 2;
    s.status.file = Some(PathBuf::from(format!("/v/snapshots/{id}.qcow2")));
    s
}

#[test]
fn each_working_state_plans_its_operation_and_settled_ones_none() {
    let mut files = Files::default();
    files
        .images
        .insert("img".into(), ("/i/img".into(), DiskFormat::Raw));
    files
        .snapshots
        .insert("s-old".into(), "/v/snapshots/s-old.qcow2".into());
    files.volumes.insert("busy".into(), "/v/busy.qcow2".into());
    let mut reverting = volume("rev", VolumeState::Reverting, VolumeSource::Blank);
    reverting.status.revert_to = Some("s-old".into());
    let volumes = [
        volume("blank", VolumeState::Creating, VolumeSource::Blank),
        volume(
            "from-img",
            VolumeState::Creating,
            VolumeSource::Image("img".into()),
        ),
        volume(
            "from-gone",
            VolumeState::Creating,
            VolumeSource::Image("gone".into()),
        ),
        volume("grow", VolumeState::Extending, VolumeSource::Blank),
        reverting,
        volume("bye", VolumeState::Deleting, VolumeSource::Blank),
        volume("ok", VolumeState::Available, VolumeSource::Blank),
        volume("att", VolumeState::InUse, VolumeSource::Blank),
        // The backup worker brings it from the region, not the storage
        // worker.
        volume(
            "from-backup",
            VolumeState::Creating,
            VolumeSource::Backup("12".into()),
        ),
    ];
    let snapshots = [
        snapshot("s-new", "busy", SnapshotState::Creating),
        snapshot("s-old", "busy", SnapshotState::Available),
    ];
    let work = plan(&volumes, &snapshots, &files);
    let by = |s: Subject| work.iter().find(|w| w.subject == s).map(|w| w.op.clone());
    // Snapshots are taken before any volume work of the same pass.
    assert_eq!(work[0].subject, Subject::Snapshot("s-new".into()));
    assert_eq!(
        by(Subject::Snapshot("s-new".into())),
        Some(Ok(Op::Make {
            file: "/v/snapshots/s-new.qcow2".into(),
            size_gb: 2,
            from: Source::Copy {
                file: "/v/busy.qcow2".into(),
                format: DiskFormat::Qcow2,
            }
        }))
    );
    assert_eq!(
        by(Subject::Volume("blank".into())),
        Some(Ok(Op::Make {
            file: "/v/blank.qcow2".into(),
            size_gb: 2,
            from: Source::Blank
        }))
    );
    assert!(matches!(
        by(Subject::Volume("from-img".into())),
        Some(Ok(Op::Make {
            from: Source::Copy {
                format: DiskFormat::Raw,
                ..
            },
            ..
        }))
    ));
    let gone = by(Subject::Volume("from-gone".into()))
        .unwrap()
        .unwrap_err();
    assert!(gone.contains("image gone"), "{gone}");
    assert_eq!(
        by(Subject::Volume("grow".into())),
        Some(Ok(Op::Resize {
            file: "/v/grow.qcow2".into(),
            size_gb: 2
        }))
    );
    assert_eq!(
        by(Subject::Volume("rev".into())),
        Some(Ok(Op::Replace {
            file: "/v/rev.qcow2".into(),
            from: "/v/snapshots/s-old.qcow2".into(),
            size_gb: 2
        }))
    );
    assert_eq!(
        by(Subject::Volume("bye".into())),
        Some(Ok(Op::Remove {
            file: "/v/bye.qcow2".into()
        }))
    );
    assert_eq!(by(Subject::Volume("ok".into())), None);
    assert_eq!(by(Subject::Volume("att".into())), None);
    assert_eq!(by(Subject::Volume("from-backup".into())), None);
    assert_eq!(by(Subject::Snapshot("s-old".into())), None);
    assert_eq!(work.len(), 7);
}

fn qemu_img_info(file: &Path) -> serde_json::Value {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(file)
        .output()
        .expect("qemu-img (qemu-utils) is installed");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes `text` into a raw image at offset 1 MiB.
fn raw_image(path: &Path, text: &[u8]) {
    let mut bytes = vec![0u8; 4 << 20];
    bytes[1 << 20..(1 << 20) + text.len()].copy_from_slice(text);
    std::fs::write(path, bytes).unwrap();
}

/// The bytes at offset 1 MiB of a qcow2 file, read back through qemu-img.
fn read_back(file: &Path, len: usize, dir: &Path) -> Vec<u8> {
    let raw = dir.join("readback.raw");
    let ok = Command::new("qemu-img")
        .args(["convert", "-U", "-f", "qcow2", "-O", "raw"])
        .arg(file)
        .arg(&raw)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let bytes = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    bytes[1 << 20..(1 << 20) + len].to_vec()
}

#[test]
fn qemu_img_makes_grows_copies_reverts_and_removes_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("volumes");
    let image = tmp.path().join("image.raw");
    raw_image(&image, b"factory-v1");

    // A blank volume: a qcow2 of the size asked for, no partial file left.
    let blank = dir.join("blank.qcow2");
    let make = Op::Make {
        file: blank.clone(),
        size_gb: 1,
        from: Source::Blank,
    };
    run(&make).unwrap();
    let info = qemu_img_info(&blank);
    assert_eq!(
        (info["format"].as_str(), info["virtual-size"].as_u64()),
        (Some("qcow2"), Some(GIB))
    );
    assert!(!dir.join("blank.qcow2.part").exists());
    // Repeating it (a crash before the record) keeps the file it made.
    std::fs::write(dir.join("marker"), b"").unwrap();
    let before = std::fs::metadata(&blank).unwrap().modified().unwrap();
    run(&make).unwrap();
    assert_eq!(
        std::fs::metadata(&blank).unwrap().modified().unwrap(),
        before
    );

    // From an image: its bytes, in qcow2, grown to the size asked for.
    let vol = dir.join("vol.qcow2");
    run(&Op::Make {
        file: vol.clone(),
        size_gb: 2,
        from: Source::Copy {
            file: image.clone(),
            format: DiskFormat::Raw,
        },
    })
    .unwrap();
    assert_eq!(virtual_size(&vol).unwrap(), 2 * GIB);
    assert_eq!(read_back(&vol, 10, tmp.path()), b"factory-v1");

    // A snapshot is a copy; the volume changes; revert brings the copy back.
    let snap = dir.join("snapshots").join("s.qcow2");
    run(&Op::Make {
        file: snap.clone(),
        size_gb: 2,
        from: Source::Copy {
            file: vol.clone(),
            format: DiskFormat::Qcow2,
        },
    })
    .unwrap();
    let changed = tmp.path().join("changed.raw");
    raw_image(&changed, b"factory-v2");
    std::fs::remove_file(&vol).unwrap();
    run(&Op::Make {
        file: vol.clone(),
        size_gb: 2,
        from: Source::Copy {
            file: changed,
            format: DiskFormat::Raw,
        },
    })
    .unwrap();
    assert_eq!(read_back(&vol, 10, tmp.path()), b"factory-v2");
    run(&Op::Replace {
        file: vol.clone(),
        from: snap.clone(),
        size_gb: 2,
    })
    .unwrap();
    assert_eq!(read_back(&vol, 10, tmp.path()), b"factory-v1");

    // Extend.
    run(&Op::Resize {
        file: vol.clone(),
        size_gb: 3,
    })
    .unwrap();
    assert_eq!(virtual_size(&vol).unwrap(), 3 * GIB);

    // Remove, twice (a crash before the record): the second is a no-op.
    for _ in 0..2 {
        run(&Op::Remove { file: vol.clone() }).unwrap();
    }
    assert!(!vol.exists());
    run(&Op::Remove {
        file: PathBuf::new(),
    })
    .unwrap();
}

#[test]
fn a_copy_that_cannot_be_made_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("v.qcow2");
    // The source is not a qcow2 file.
    let bogus = tmp.path().join("bogus");
    std::fs::write(&bogus, b"not a disk image").unwrap();
    let e = run(&Op::Make {
        file: file.clone(),
        size_gb: 1,
        from: Source::Copy {
            file: bogus,
            format: DiskFormat::Qcow2,
        },
    })
    .unwrap_err();
    assert!(e.contains("qemu-img could not copy"), "{e}");
    assert!(!file.exists() && !tmp.path().join("v.qcow2.part").exists());
}

/// After a failed extend the worker asks what the file is: its whole size
/// if qemu-img finds it sound, nothing if it is damaged or gone.
#[test]
fn a_volume_file_is_found_whole_at_its_size_or_not_at_all() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("v.qcow2");
    run(&Op::Make {
        file: file.clone(),
        size_gb: 2,
        from: Source::Blank,
    })
    .unwrap();
    assert_eq!(whole_size_gb(&file), Some(2));
    assert_eq!(whole_size_gb(&tmp.path().join("gone.qcow2")), None);
    // Its header overwritten: not a qcow2 file any more.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[..4].copy_from_slice(b"XXXX");
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(whole_size_gb(&file), None);
}

/// A full disk: a tmpfs of 1 MiB, filled. qemu-img fails with ENOSPC; the
/// error says what to do, and no file (whole or partial) is left.
#[test]
fn a_full_disk_gives_a_clear_error_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .status()
        .expect("mount runs");
    assert!(
        mounted.success(),
        "mounting a tmpfs needs root, as the test suite does"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    // Fill it.
    let _ = std::fs::write(mnt.join("fill"), vec![1u8; 2 << 20]);
    let file = mnt.join("v.qcow2");
    let e = run(&Op::Make {
        file: file.clone(),
        size_gb: 1,
        from: Source::Blank,
    })
    .unwrap_err();
    assert!(e.contains("disk is full") || e.contains("No space"), "{e}");
    assert!(
        !file.exists() && !mnt.join("v.qcow2.part").exists(),
        "nothing left"
    );
    // A copy is refused before it starts: the reserve is not there.
    let src = tmp.path().join("src.raw");
    raw_image(&src, b"x");
    let e = run(&Op::Make {
        file: file.clone(),
        size_gb: 1,
        from: Source::Copy {
            file: src,
            format: DiskFormat::Raw,
        },
    })
    .unwrap_err();
    assert!(e.contains("not enough space"), "{e}");
    assert!(!file.exists() && !mnt.join("v.qcow2.part").exists());
}
