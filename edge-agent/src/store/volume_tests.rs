//! Volumes, snapshots and attachments in a real store (no files: the
//! storage worker's results are recorded by hand).

use std::path::Path;

use roost_common::config::{self, SiteConfig};
use roost_common::model::{
    PowerState, ServerSpec, ServerStatus, SnapshotSpec, VmState, Volume, VolumeSource, VolumeSpec,
    VolumeState,
};

use super::{NewServer, Store, WriteError};
use crate::storage::plan::{Op, Subject};

const SITE: &str = "
site: {id: vol-test, name: Volume test}
hosts:
  - {name: c0, roles: [compute], vcpus: 4, ram_mb: 8192, disk_gb: 100}
flavors:
  - {name: one, id: '1', vcpus: 1, ram_mb: 512, disk_gb: 1}
images:
  - {name: img, id: 11111111-2222-4333-8444-555555555555, disk_format: qcow2}
";

fn open(dir: &Path) -> Store {
    let cfg: SiteConfig = config::parse(Path::new("site.yaml"), SITE).unwrap();
    Store::open(dir, "vol-test", &cfg).unwrap().0
}

fn spec(size_gb: u64, source: VolumeSource) -> VolumeSpec {
    VolumeSpec {
        name: "v".into(),
        description: None,
        project_id: "p".into(),
        user_id: "u".into(),
        size_gb,
        volume_type: "edge-local".into(),
        source,
        metadata: Default::default(),
    }
}

/// Creates a volume and records the worker's success: it is available.
async fn made(store: &Store, s: VolumeSpec) -> Volume {
    let v = store
        .write(move |w| w.create_volume(s, &None, Path::new("/vols")))
        .await
        .unwrap();
    assert_eq!(v.status.state, VolumeState::Creating);
    assert_eq!(
        v.status.file.as_deref(),
        Some(Path::new(&format!("/vols/{}.qcow2", v.id)))
    );
    finish_work(store).await;
    store.volume(v.id.clone(), None).await.unwrap()
}

/// A snapshot of `volume_id` as project `p` asks for one.
fn snapshot_spec(volume_id: &str, force: bool) -> SnapshotSpec {
    SnapshotSpec {
        name: "s".into(),
        description: None,
        project_id: "p".into(),
        user_id: "u".into(),
        volume_id: volume_id.into(),
        force,
        metadata: Default::default(),
    }
}

/// Takes a snapshot of a detached volume and records the worker's copy:
/// it is available.
async fn snapshot_made(store: &Store, volume_id: &str) -> roost_common::model::Snapshot {
    let sp = snapshot_spec(volume_id, false);
    let s = store
        .write(move |w| w.create_snapshot(sp, &None, Path::new("/vols/snapshots")))
        .await
        .unwrap();
    finish_work(store).await;
    s
}

/// A server of project `p` from the seeded image, as the API makes one.
async fn server(store: &Store) -> roost_common::model::Server {
    store
        .write(|w| {
            w.create_server(NewServer {
                spec: ServerSpec::new("s", "p", "u", "1", "11111111-2222-4333-8444-555555555555"),
                id: None,
            })
        })
        .await
        .unwrap()
}

/// Records what the reconciler found the server to be.
async fn set_status(store: &Store, server_id: &str, st: ServerStatus) {
    let sid = server_id.to_string();
    store
        .write(move |w| w.set_server_status(&sid, &st))
        .await
        .unwrap()
}

/// Records success for all the work due; returns what it was.
async fn finish_work(store: &Store) -> Vec<(Subject, Op)> {
    let work = store.storage_work().await.unwrap();
    let mut done = Vec::new();
    for w in work {
        let subject = w.subject.clone();
        store
            .write(move |c| c.storage_done(&subject, Ok(()), None))
            .await
            .unwrap();
        done.push((w.subject, w.op.unwrap()));
    }
    done
}

fn field(e: WriteError) -> String {
    match e {
        WriteError::Invalid(f) => f.field,
        other => panic!("not a field error: {other}"),
    }
}

#[tokio::test]
async fn volumes_move_through_their_states_and_refuse_what_cinder_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let v = made(&store, spec(2, VolumeSource::Blank)).await;
    assert_eq!(v.status.state, VolumeState::Available);
    assert!(
        store.storage_work().await.unwrap().is_empty(),
        "nothing left to do"
    );

    // A snapshot; then its volume cannot go while the snapshot is there.
    let snap = snapshot_spec;
    let s1 = snap(&v.id, false);
    let s1 = store
        .write(move |w| w.create_snapshot(s1, &None, Path::new("/vols/snapshots")))
        .await
        .unwrap();
    let done = finish_work(&store).await;
    assert!(matches!(&done[0].1, Op::Make { .. }), "{done:?}");
    let id = v.id.clone();
    let e = store
        .write(move |w| w.delete_volume(&id, &None))
        .await
        .unwrap_err();
    assert_eq!(field(e), "snapshots");

    // Smaller than its snapshot: refused naming the size.
    let e = store
        .write(move |w| {
            w.create_volume(
                spec(1, VolumeSource::Snapshot(s1.id.clone())),
                &None,
                Path::new("/vols"),
            )
        })
        .await
        .unwrap_err();
    assert_eq!(field(e), "volume.size");

    // Extend, then revert to the (older, smaller) snapshot is refused;
    // another project sees none of it.
    let id = v.id.clone();
    let e = store
        .write(move |w| w.extend_volume(&id, &None, 2))
        .await
        .unwrap_err();
    assert_eq!(field(e), "os-extend.new_size");
    let id = v.id.clone();
    store
        .write(move |w| w.extend_volume(&id, &None, 3))
        .await
        .unwrap();
    assert!(matches!(
        finish_work(&store).await[0].1,
        Op::Resize { size_gb: 3, .. }
    ));
    // An extend that fails with the file found whole at its old size (no
    // room for the new tables, say) leaves the volume usable at that
    // size, with the reason.
    let failed_extend = |to: u64, whole: Option<u64>| {
        let (store, id) = (store.clone(), v.id.clone());
        async move {
            let i = id.clone();
            store
                .write(move |w| w.extend_volume(&i, &None, to))
                .await
                .unwrap();
            let subject = Subject::Volume(id.clone());
            store
                .write(move |c| {
                    c.storage_done(&subject, Err("No space left on device".into()), whole)
                })
                .await
                .unwrap();
            store.volume(id, None).await.unwrap()
        }
    };
    let kept = failed_extend(5, Some(3)).await;
    assert_eq!(kept.status.state, VolumeState::Available);
    assert_eq!(kept.spec.size_gb, 3);
    assert_eq!(kept.status.extending_from, None);
    let why = kept.status.fault.unwrap().message;
    assert!(
        why.contains("extending to 5 GiB failed: No space left on device"),
        "{why}"
    );
    assert!(why.contains("keeps its 3 GiB"), "{why}");
    let (id, sid) = (v.id.clone(), s1_id(&store).await);
    let e = store
        .write(move |w| w.revert_volume(&id, &None, &sid))
        .await
        .unwrap_err();
    assert_eq!(field(e), "revert.snapshot_id");
    let id = v.id.clone();
    let other = Some("q".to_string());
    let e = store
        .write(move |w| w.delete_volume(&id, &other))
        .await
        .unwrap_err();
    assert!(matches!(e, WriteError::NotFound(_)), "{e}");

    // A newer snapshot of the current size: revert to it works, and only
    // to the latest.
    let s2 = snap(&v.id, false);
    let s2 = store
        .write(move |w| w.create_snapshot(s2, &None, Path::new("/vols/snapshots")))
        .await
        .unwrap();
    finish_work(&store).await;
    let (id, sid) = (v.id.clone(), s2.id.clone());
    let r = store
        .write(move |w| w.revert_volume(&id, &None, &sid))
        .await
        .unwrap();
    assert_eq!(r.status.state, VolumeState::Reverting);
    let done = finish_work(&store).await;
    assert!(
        matches!(&done[0].1, Op::Replace { from, .. } if from.ends_with(format!("{}.qcow2", s2.id)))
    );
    let after = store.volume(v.id.clone(), None).await.unwrap();
    assert_eq!(
        (after.status.state, after.status.revert_to),
        (VolumeState::Available, None)
    );

    // Delete the snapshots, then the volume: the rows go once the files are.
    for sid in [s1_id(&store).await, s2.id.clone()] {
        store
            .write(move |w| w.delete_snapshot(&sid, &None))
            .await
            .unwrap();
    }
    finish_work(&store).await;
    let id = v.id.clone();
    store
        .write(move |w| w.delete_volume(&id, &None))
        .await
        .unwrap();
    let done = finish_work(&store).await;
    assert!(matches!(&done[0].1, Op::Remove { .. }));
    assert!(store.volume(v.id.clone(), None).await.is_err(), "row gone");
    assert!(store.snapshots(None).await.unwrap().is_empty());

    // A failure is the volume's error, with the reason.
    let v = store
        .write(|w| w.create_volume(spec(1, VolumeSource::Blank), &None, Path::new("/vols")))
        .await
        .unwrap();
    store
        .write(move |w| {
            w.storage_done(
                &Subject::Volume(v.id.clone()),
                Err("disk full".into()),
                None,
            )
        })
        .await
        .unwrap();
    let vs = store.volumes(None).await.unwrap();
    assert_eq!(vs[0].status.state, VolumeState::Error);
    assert_eq!(vs[0].status.fault.as_ref().unwrap().message, "disk full");
}

/// A failed extend whose file is found at the new size (the resize took,
/// its sync did not), or not whole, or not at all, is the volume's error:
/// the volume is never shown at a size its file may not have.
#[tokio::test]
async fn a_failed_extend_keeps_the_volume_only_if_its_file_is_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for (whole, want) in [
        (Some(1), VolumeState::Available),
        (Some(4), VolumeState::Error),
        (Some(2), VolumeState::Error),
        (None, VolumeState::Error),
    ] {
        let id = extending_to_4(&store).await;
        let subject = Subject::Volume(id.clone());
        store
            .write(move |c| c.storage_done(&subject, Err("cannot sync".into()), whole))
            .await
            .unwrap();
        let after = store.volume(id, None).await.unwrap();
        assert_eq!(after.status.state, want, "file found at {whole:?} GiB");
        let size = if want == VolumeState::Available { 1 } else { 4 };
        assert_eq!(after.spec.size_gb, size, "file found at {whole:?} GiB");
        assert!(after.status.fault.unwrap().message.contains("cannot sync"));
    }
}

/// A blank 1 GiB volume, made, then asked to grow to 4 GiB (the worker
/// has not run the resize yet).
async fn extending_to_4(store: &Store) -> String {
    let v = store
        .write(|w| w.create_volume(spec(1, VolumeSource::Blank), &None, Path::new("/vols")))
        .await
        .unwrap();
    finish_work(store).await;
    let id = v.id.clone();
    store
        .write(move |w| w.extend_volume(&id, &None, 4))
        .await
        .unwrap();
    v.id
}

async fn s1_id(store: &Store) -> String {
    store.snapshots(None).await.unwrap()[0].id.clone()
}

#[tokio::test]
async fn attachments_follow_the_servers_domain() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let v = made(&store, spec(1, VolumeSource::Blank)).await;
    let server = server(&store).await;
    let sid = server.id.clone();
    let active = ServerStatus {
        vm_state: VmState::Active,
        power_state: PowerState::Running,
        task_state: None,
        ..server.status.clone()
    };
    let set = |volumes: Vec<String>| {
        let st = ServerStatus {
            volumes,
            ..active.clone()
        };
        set_status(&store, &sid, st)
    };
    let attach = |vid: String| {
        let (sid, store) = (sid.clone(), store.clone());
        async move {
            store
                .write(move |w| w.attach_volume(&sid, &vid, &None))
                .await
        }
    };
    let detach = |vid: String| {
        let (sid, store) = (sid.clone(), store.clone());
        async move {
            store
                .write(move |w| w.detach_volume(&sid, &vid, &None))
                .await
        }
    };
    let state = |vid: String| {
        let store = store.clone();
        async move { store.volume(vid, None).await.unwrap().status }
    };

    // Building: not yet.
    assert!(matches!(
        attach(v.id.clone()).await,
        Err(WriteError::Conflict(_))
    ));
    set(vec![]).await;
    let a = attach(v.id.clone()).await.unwrap();
    assert_eq!(
        (a.status.state, a.status.attached_to.as_deref()),
        (VolumeState::Attaching, Some(sid.as_str()))
    );
    let s = store.server(sid.clone()).await.unwrap().unwrap();
    assert_eq!(s.spec.volumes, vec![v.id.clone()]);
    // Once the domain has it: in-use; then it cannot be deleted.
    set(vec![v.id.clone()]).await;
    assert_eq!(state(v.id.clone()).await.state, VolumeState::InUse);
    let vid = v.id.clone();
    let e = store
        .write(move |w| w.delete_volume(&vid, &None))
        .await
        .unwrap_err();
    assert_eq!(field(e), "status");
    // A second volume can not go to a server of another project, nor can
    // an in-use one be attached twice.
    let mut other = spec(1, VolumeSource::Blank);
    other.project_id = "q".into();
    let w2 = made(&store, other).await;
    assert_eq!(
        field(attach(w2.id.clone()).await.unwrap_err()),
        "volumeAttachment.volumeId"
    );
    assert_eq!(
        field(attach(v.id.clone()).await.unwrap_err()),
        "volumeAttachment.volumeId",
        "as Nova: 400 for a volume that is not available"
    );

    // While the reconciler is changing the domain, a detach waits.
    let busy = ServerStatus {
        volumes: vec![v.id.clone()],
        task_state: Some(roost_common::model::TaskState::UpdatingVolumes),
        ..active.clone()
    };
    set_status(&store, &sid, busy).await;
    assert!(matches!(
        detach(v.id.clone()).await,
        Err(WriteError::Conflict(_))
    ));
    set(vec![v.id.clone()]).await;

    // Detach: detaching until the domain lets go, then available.
    let d = detach(v.id.clone()).await.unwrap();
    assert_eq!(d.status.state, VolumeState::Detaching);
    set(vec![]).await;
    let st = state(v.id.clone()).await;
    assert_eq!((st.state, st.attached_to), (VolumeState::Available, None));

    // An attach never carried out can be taken back at once.
    attach(v.id.clone()).await.unwrap();
    let d = detach(v.id.clone()).await.unwrap();
    assert_eq!(d.status.state, VolumeState::Available);
    assert!(store
        .server(sid.clone())
        .await
        .unwrap()
        .unwrap()
        .spec
        .volumes
        .is_empty());

    // Each attachment keeps its disk: with the first of two detached, the
    // second stays vdc and a new one takes the freed vdb (as libvirt's
    // hot-plug does), not a name by position.
    let (b, c) = (
        made(&store, spec(1, VolumeSource::Blank)).await,
        made(&store, spec(1, VolumeSource::Blank)).await,
    );
    let dev = |vid: String| {
        let store = store.clone();
        async move { store.volume(vid, None).await.unwrap().status.device }
    };
    attach(v.id.clone()).await.unwrap();
    set(vec![v.id.clone()]).await;
    attach(b.id.clone()).await.unwrap();
    set(vec![v.id.clone(), b.id.clone()]).await;
    assert_eq!(dev(v.id.clone()).await.as_deref(), Some("vdb"));
    assert_eq!(dev(b.id.clone()).await.as_deref(), Some("vdc"));
    detach(v.id.clone()).await.unwrap();
    set(vec![b.id.clone()]).await;
    assert_eq!(
        dev(v.id.clone()).await,
        None,
        "a detached volume has no disk"
    );
    attach(c.id.clone()).await.unwrap();
    set(vec![b.id.clone(), c.id.clone()]).await;
    assert_eq!(dev(b.id.clone()).await.as_deref(), Some("vdc"));
    assert_eq!(dev(c.id.clone()).await.as_deref(), Some("vdb"));
    let sv = store.server(sid.clone()).await.unwrap().unwrap();
    let files = store.volume_files(sv.spec.volumes.clone()).await.unwrap();
    let disks: Vec<&str> = files.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(disks, vec!["vdc", "vdb"], "the domain gets the kept disks");
    for id in [b.id.clone(), c.id.clone()] {
        detach(id).await.unwrap();
    }
    set(vec![]).await;

    // A server removed frees what it held.
    attach(v.id.clone()).await.unwrap();
    set(vec![v.id.clone()]).await;
    let s = sid.clone();
    store.write(move |w| w.remove_server(&s)).await.unwrap();
    let st = state(v.id.clone()).await;
    assert_eq!((st.state, st.attached_to), (VolumeState::Available, None));
}

#[tokio::test]
async fn a_stopped_servers_volume_is_snapshotted_and_the_server_waits_for_the_copy() {
    use super::ServerIntent;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let v = made(&store, spec(1, VolumeSource::Blank)).await;
    let server = server(&store).await;
    let sid = server.id.clone();
    let status = |vm: VmState, power: PowerState, volumes: Vec<String>| ServerStatus {
        vm_state: vm,
        power_state: power,
        task_state: None,
        volumes,
        ..server.status.clone()
    };
    let set = |st: ServerStatus| set_status(&store, &sid, st);
    let change = |intent: ServerIntent| {
        let (store, sid) = (store.clone(), sid.clone());
        async move {
            store
                .write(move |w| w.change_server(&sid, None, intent))
                .await
        }
    };
    set(status(VmState::Active, PowerState::Running, vec![])).await;
    let (s, vid) = (sid.clone(), v.id.clone());
    store
        .write(move |w| w.attach_volume(&s, &vid, &None))
        .await
        .unwrap();
    set(status(
        VmState::Active,
        PowerState::Running,
        vec![v.id.clone()],
    ))
    .await;
    let snap = || SnapshotSpec {
        name: "s".into(),
        description: None,
        project_id: "p".into(),
        user_id: "u".into(),
        volume_id: v.id.clone(),
        force: true,
        metadata: Default::default(),
    };
    // Running: even forced, refused.
    let sp = snap();
    let e = store
        .write(move |w| w.create_snapshot(sp, &None, Path::new("/vols/snapshots")))
        .await
        .unwrap_err();
    assert_eq!(field(e), "snapshot.force");
    // Stopped: taken; the server cannot start until the copy is made.
    change(ServerIntent::Stop).await.unwrap();
    set(status(
        VmState::Stopped,
        PowerState::Shutdown,
        vec![v.id.clone()],
    ))
    .await;
    let sp = snap();
    store
        .write(move |w| w.create_snapshot(sp, &None, Path::new("/vols/snapshots")))
        .await
        .unwrap();
    assert!(matches!(
        change(ServerIntent::Start).await,
        Err(WriteError::Conflict(_))
    ));
    finish_work(&store).await;
    change(ServerIntent::Start).await.unwrap();
}

/// An admin's reset: `available` only for a detached volume whose file is
/// whole, at the file's size; `error` always; never while it is deleted.
#[tokio::test]
async fn an_admin_resets_a_volume_to_what_its_file_allows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let vid = extending_to_4(&store).await;
    let reset = |want: VolumeState, whole: Option<u64>| {
        let (store, id) = (store.clone(), vid.clone());
        async move {
            store
                .write(move |w| w.reset_volume(&id, &None, want, whole))
                .await
        }
    };
    // Not while the storage worker is on it.
    let e = reset(VolumeState::Error, None).await.unwrap_err();
    assert!(e.to_string().contains("storage worker is still on"), "{e}");
    let subject = Subject::Volume(vid.clone());
    store
        .write(move |c| c.storage_done(&subject, Err("cannot open".into()), None))
        .await
        .unwrap();
    let e = reset(VolumeState::Available, None).await.unwrap_err();
    assert!(
        matches!(&e, WriteError::Conflict(m) if m.contains("missing or damaged")),
        "{e}"
    );
    let still = store.volume(vid.clone(), None).await.unwrap();
    assert_eq!(
        (still.status.state, still.spec.size_gb),
        (VolumeState::Error, 4)
    );
    let back = reset(VolumeState::Available, Some(1)).await.unwrap();
    assert_eq!(
        (back.status.state, back.spec.size_gb),
        (VolumeState::Available, 1)
    );
    assert!(back.status.fault.is_none());
    let broken = reset(VolumeState::Error, None).await.unwrap();
    assert_eq!(broken.status.state, VolumeState::Error);
    assert_eq!(broken.spec.size_gb, 1);
    let id = vid.clone();
    store
        .write(move |w| w.delete_volume(&id, &None))
        .await
        .unwrap();
    let e = reset(VolumeState::Available, Some(1)).await.unwrap_err();
    assert!(e.to_string().contains("storage worker is still on"), "{e}");
}

#[tokio::test]
async fn attachments_made_before_kept_disks_get_the_disk_their_position_gave() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let sv = server(&store).await;
    let (a, b) = (
        made(&store, spec(1, VolumeSource::Blank)).await,
        made(&store, spec(1, VolumeSource::Blank)).await,
    );
    let sid = sv.id.clone();
    let active = |volumes: Vec<String>| ServerStatus {
        vm_state: VmState::Active,
        power_state: PowerState::Running,
        task_state: None,
        volumes,
        ..sv.status.clone()
    };
    let set = |st: ServerStatus| set_status(&store, &sid, st);
    set(active(vec![])).await;
    for (v, now) in [
        (&a, vec![a.id.clone()]),
        (&b, vec![a.id.clone(), b.id.clone()]),
    ] {
        let (sid, vid) = (sid.clone(), v.id.clone());
        store
            .write(move |w| w.attach_volume(&sid, &vid, &None))
            .await
            .unwrap();
        set(active(now)).await;
    }
    drop(store);
    // As an older agent left them: attached, with no disk kept.
    let conn = rusqlite::Connection::open(dir.path().join(super::DB_FILE)).unwrap();
    conn.execute(
        "UPDATE volumes SET status = json_remove(status, '$.device')",
        [],
    )
    .unwrap();
    let kept_disks = super::schema::MIGRATIONS
        .iter()
        .find(|m| m.contains("'$.device'"))
        .unwrap();
    conn.execute_batch(kept_disks).unwrap();
    drop(conn);
    let store = open(dir.path());
    let dev = |id: String| {
        let store = store.clone();
        async move { store.volume(id, None).await.unwrap().status.device }
    };
    assert_eq!(dev(a.id.clone()).await.as_deref(), Some("vdb"));
    assert_eq!(dev(b.id.clone()).await.as_deref(), Some("vdc"));
    let unattached = made(&store, spec(1, VolumeSource::Blank)).await;
    assert_eq!(dev(unattached.id.clone()).await, None);
}

#[tokio::test]
async fn only_central_replicated_volumes_at_rest_are_backed_up_and_a_kept_backup_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let local = made(&store, spec(1, VolumeSource::Blank)).await;
    let replicated = made(
        &store,
        VolumeSpec {
            volume_type: "central-replicated".into(),
            ..spec(1, VolumeSource::Blank)
        },
    )
    .await;
    let ids = |vs: Vec<Volume>| vs.into_iter().map(|v| v.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.backup_candidates().await.unwrap()),
        vec![replicated.id.clone()],
        "edge-local volumes are not backed up"
    );
    // Attached to a running server: its guest writes it, so not now.
    let server = server(&store).await;
    let sid = server.id.clone();
    let running = ServerStatus {
        vm_state: VmState::Active,
        power_state: PowerState::Running,
        task_state: None,
        volumes: vec![replicated.id.clone()],
        ..server.status.clone()
    };
    set_status(
        &store,
        &sid,
        ServerStatus {
            volumes: vec![],
            ..running.clone()
        },
    )
    .await;
    let (s, vid) = (sid.clone(), replicated.id.clone());
    store
        .write(move |w| w.attach_volume(&s, &vid, &None))
        .await
        .unwrap();
    assert!(
        store.backup_candidates().await.unwrap().is_empty(),
        "attaching"
    );
    set_status(&store, &sid, running.clone()).await;
    assert!(
        store.backup_candidates().await.unwrap().is_empty(),
        "in use by a running guest"
    );
    // Stopped: at rest again.
    let s = sid.clone();
    store
        .write(move |w| w.change_server(&s, None, super::ServerIntent::Stop))
        .await
        .unwrap();
    set_status(
        &store,
        &sid,
        ServerStatus {
            vm_state: VmState::Stopped,
            power_state: PowerState::Shutdown,
            ..running
        },
    )
    .await;
    assert_eq!(
        ids(store.backup_candidates().await.unwrap()),
        vec![replicated.id.clone()]
    );
    // A kept backup is recorded and survives a reopen; the volume's
    // update time stays.
    let backup = roost_common::model::VolumeBackup {
        at: "2026-11-28T10:00:00.000Z".into(),
        sha256: "ab".repeat(32),
        size: 196_616,
        sent_bytes: 196_616,
        stamp: "1.000000001:196616".into(),
    };
    let (vid, b) = (replicated.id.clone(), backup.clone());
    let before = store.volume(vid.clone(), None).await.unwrap().updated_at;
    store.write(move |w| w.backup_done(&vid, b)).await.unwrap();
    let got = store.volume(replicated.id.clone(), None).await.unwrap();
    assert_eq!(got.status.backup, Some(backup.clone()));
    assert_eq!(got.updated_at, before);
    drop(store);
    let store = open(dir.path());
    let got = store.volume(replicated.id.clone(), None).await.unwrap();
    assert_eq!(got.status.backup, Some(backup));
    assert!(store
        .volume(local.id.clone(), None)
        .await
        .unwrap()
        .status
        .backup
        .is_none());
}

#[tokio::test]
async fn a_volume_waiting_for_its_backup_may_be_deleted_and_its_late_restore_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let s = spec(2, VolumeSource::Backup("12".into()));
    let v = store
        .write(move |w| w.create_volume(s, &None, Path::new("/vols")))
        .await
        .unwrap();
    assert_eq!(v.status.state, VolumeState::Creating);
    assert!(
        finish_work(&store).await.is_empty(),
        "the storage worker leaves it to the backup worker"
    );
    assert_eq!(store.restores().await.unwrap().len(), 1);
    // The link never came back: the operator gives up on it.
    let id = v.id.clone();
    store
        .write(move |w| w.delete_volume(&id, &None))
        .await
        .unwrap();
    assert!(store.restores().await.unwrap().is_empty());
    // The restore ends anyway: the volume is not brought back to life.
    let id = v.id.clone();
    let applied = store
        .write(move |w| w.restore_done(&id, Ok(())))
        .await
        .unwrap();
    assert!(!applied);
    assert_eq!(
        store.volume(v.id.clone(), None).await.unwrap().status.state,
        VolumeState::Deleting
    );
    // Another, whose backup the region lacks: error, with the reason.
    let s = spec(2, VolumeSource::Backup("13".into()));
    let w2 = store
        .write(move |w| w.create_volume(s, &None, Path::new("/vols")))
        .await
        .unwrap();
    let id = w2.id.clone();
    assert!(store
        .write(move |w| w.restore_done(&id, Err("site s has no backup 13 at the region".into())))
        .await
        .unwrap());
    let got = store.volume(w2.id.clone(), None).await.unwrap();
    assert_eq!(got.status.state, VolumeState::Error);
    assert!(got.status.fault.unwrap().message.contains("no backup 13"));
}

#[tokio::test]
async fn a_snapshot_copied_to_the_region_may_go_cold_and_comes_back_when_wanted() {
    use roost_common::model::{SnapshotState, Tier, VolumeBackup};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let v = made(&store, spec(1, VolumeSource::Blank)).await;
    let snap = snapshot_made(&store, &v.id).await;
    let file = snap.status.file.clone().unwrap();
    let sid = snap.id.clone();
    let get = || {
        let (store, sid) = (store.clone(), sid.clone());
        async move { store.snapshot(sid, None).await.unwrap() }
    };
    assert_eq!(store.local_snapshots().await.unwrap().len(), 1);

    // Not copied to the region yet: it cannot go.
    let (id, f) = (sid.clone(), file.clone());
    assert!(!store
        .write(move |w| w.evict_snapshot(&id, &f, "1.0:10"))
        .await
        .unwrap());
    let id = sid.clone();
    store
        .write(move |w| {
            w.snapshot_backup_done(
                &id,
                VolumeBackup {
                    stamp: "1.0:10".into(),
                    sha256: "ab".repeat(32),
                    ..VolumeBackup::default()
                },
            )
        })
        .await
        .unwrap();
    // Read by a volume being made from it: pinned.
    let from = store
        .write({
            let s = spec(1, VolumeSource::Snapshot(sid.clone()));
            move |w| w.create_volume(s, &None, Path::new("/vols"))
        })
        .await
        .unwrap();
    assert!(store.pinned_snapshots().await.unwrap().contains(&sid));
    let (id, f) = (sid.clone(), file.clone());
    assert!(!store
        .write(move |w| w.evict_snapshot(&id, &f, "1.0:10"))
        .await
        .unwrap());
    finish_work(&store).await;
    assert!(store.volume(from.id.clone(), None).await.is_ok());
    // A file changed since its copy: it cannot go either.
    let (id, f) = (sid.clone(), file.clone());
    assert!(!store
        .write(move |w| w.evict_snapshot(&id, &f, "2.0:10"))
        .await
        .unwrap());
    // As copied, and read by nothing: cold.
    let (id, f) = (sid.clone(), file.clone());
    assert!(store
        .write(move |w| w.evict_snapshot(&id, &f, "1.0:10"))
        .await
        .unwrap());
    let cold = get().await;
    assert_eq!(cold.status.state, SnapshotState::Available);
    assert_eq!(cold.status.tier, Some(Tier::Cold));
    assert_eq!(
        roost_common::api::cinder::cinder_snapshot(&cold)["roost:tier"],
        "cold"
    );
    assert!(store.local_snapshots().await.unwrap().is_empty());

    // Using it is refused, naming it; the API then recalls it, once.
    let e = store
        .write({
            let s = spec(1, VolumeSource::Snapshot(sid.clone()));
            move |w| w.create_volume(s, &None, Path::new("/vols"))
        })
        .await
        .unwrap_err();
    let WriteError::Invalid(fe) = &e else {
        panic!("{e}")
    };
    assert_eq!(fe.field, "volume.snapshot_id");
    assert!(fe.rule.starts_with("snapshot is in the cold tier"), "{fe}");
    let (id, vid) = (sid.clone(), v.id.clone());
    let e = store
        .write(move |w| w.revert_volume(&vid, &None, &id))
        .await
        .unwrap_err();
    assert_eq!(field(e), "revert.snapshot_id");
    let wanted = || async {
        store
            .cold_snapshots()
            .await
            .unwrap()
            .iter()
            .filter(|s| s.status.recalled)
            .count()
    };
    assert_eq!(wanted().await, 0);
    let id = sid.clone();
    assert!(store.write(move |w| w.recall_snapshot(&id)).await.unwrap());
    let id = sid.clone();
    assert!(!store.write(move |w| w.recall_snapshot(&id)).await.unwrap());
    assert_eq!(wanted().await, 1);
    // It could not come back: cold, not wanted, with the reason; wanted
    // again on the next use.
    let id = sid.clone();
    store
        .write(move |w| w.snapshot_not_back(&id, "no copy".into()))
        .await
        .unwrap();
    let failed = get().await;
    assert!(failed.status.is_cold() && !failed.status.recalled);
    assert!(failed.status.fault.unwrap().message.ends_with("no copy"));
    let id = sid.clone();
    assert!(store.write(move |w| w.recall_snapshot(&id)).await.unwrap());

    // Back: warm, usable, and a revert to it is taken.
    let id = sid.clone();
    assert!(store
        .write(move |w| w.snapshot_back(&id, "3.0:10".into()))
        .await
        .unwrap());
    let back = get().await;
    assert_eq!((back.status.tier, back.status.recalled), (None, false));
    assert_eq!(back.status.fault, None);
    assert_eq!(
        back.status.backup.unwrap().stamp,
        "3.0:10",
        "the new file's"
    );
    assert!(back.status.last_used.is_some());
    let (id, vid) = (sid.clone(), v.id.clone());
    store
        .write(move |w| w.revert_volume(&vid, &None, &id))
        .await
        .unwrap();
    finish_work(&store).await;

    // Deleted: the region is told to drop its copy, until it says so.
    assert!(store.region_forgets().await.unwrap().is_empty());
    let id = sid.clone();
    store
        .write(move |w| w.delete_snapshot(&id, &None))
        .await
        .unwrap();
    finish_work(&store).await;
    assert_eq!(
        store.region_forgets().await.unwrap(),
        std::slice::from_ref(&sid)
    );
    let id = sid.clone();
    store.write(move |w| w.region_forgot(&id)).await.unwrap();
    assert!(store.region_forgets().await.unwrap().is_empty());
    // A copy that arrives for a snapshot already deleted is dropped too.
    let id = sid.clone();
    store
        .write(move |w| w.snapshot_backup_done(&id, VolumeBackup::default()))
        .await
        .unwrap();
    assert_eq!(store.region_forgets().await.unwrap(), [sid]);
}

#[tokio::test]
async fn a_deleted_snapshot_that_was_offered_has_its_copy_forgotten() {
    use roost_common::model::VolumeBackup;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let v = made(&store, spec(1, VolumeSource::Blank)).await;
    let take = || async { snapshot_made(&store, &v.id).await.id };
    let delete = |id: String| {
        let store = store.clone();
        async move {
            store
                .write(move |w| w.delete_snapshot(&id, &None))
                .await
                .unwrap();
        }
    };
    // Never offered: nothing to forget.
    let quiet = take().await;
    delete(quiet).await;
    finish_work(&store).await;
    assert!(store.region_forgets().await.unwrap().is_empty());
    // Offered, its answer never heard: forgotten on delete all the same.
    let lost = take().await;
    let id = lost.clone();
    store
        .write(move |w| w.snapshot_offering(&id))
        .await
        .unwrap();
    delete(lost.clone()).await;
    finish_work(&store).await;
    assert_eq!(
        store.region_forgets().await.unwrap(),
        std::slice::from_ref(&lost)
    );
    let id = lost.clone();
    store.write(move |w| w.region_forgot(&id)).await.unwrap();
    // The copy lands while the snapshot is being deleted: recorded, and
    // forgotten when the delete is done.
    let late = take().await;
    delete(late.clone()).await;
    let id = late.clone();
    store
        .write(move |w| w.snapshot_backup_done(&id, VolumeBackup::default()))
        .await
        .unwrap();
    assert!(store.region_forgets().await.unwrap().is_empty());
    finish_work(&store).await;
    assert_eq!(store.region_forgets().await.unwrap(), [late]);
}
