//! The store against a real SQLite file: batches, savepoints, claims.

use std::path::Path;

use roost_common::config::{self, SiteConfig};
use roost_common::model::{PowerIntent, ServerSpec};

use super::{NewServer, ServerIntent, ServerQuery, Store, WriteError};

const SITE: &str = "
site: {id: store-test, name: Store test}
hosts:
  - {name: c0, roles: [compute], vcpus: 4, ram_mb: 8192, disk_gb: 100, cpu_allocation_ratio: 1.0}
  - {name: c1, roles: [compute], vcpus: 4, ram_mb: 8192, disk_gb: 100, cpu_allocation_ratio: 1.0}
flavors:
  - {name: two, id: '2', vcpus: 2, ram_mb: 1024, disk_gb: 10}
images:
  - {name: img, id: 11111111-2222-4333-8444-555555555555, disk_format: qcow2}
";

fn open(dir: &Path) -> Store {
    let cfg: SiteConfig = config::parse(Path::new("site.yaml"), SITE).unwrap();
    Store::open(dir, "store-test", &cfg).unwrap().0
}

fn spec(name: &str, flavor: &str) -> ServerSpec {
    ServerSpec {
        name: name.into(),
        project_id: "p".into(),
        user_id: "u".into(),
        flavor_id: flavor.into(),
        image_id: "11111111-2222-4333-8444-555555555555".into(),
        availability_zone: None,
        server_group: None,
        power: PowerIntent::Running,
        reboot_generation: 0,
        reboot_hard: false,
        deleted: false,
        metadata: Default::default(),
    }
}

async fn create(store: &Store, name: &str, flavor: &str) -> Result<String, WriteError> {
    let s = spec(name, flavor);
    store
        .write(move |w| w.create_server(NewServer { spec: s, id: None }))
        .await
        .map(|s| s.id)
}

#[tokio::test]
async fn a_failed_job_rolls_back_alone_within_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = store.clone();
        // Every other create names a flavor that does not exist.
        let flavor = if i % 2 == 0 { "2" } else { "missing" };
        tasks.spawn(async move { create(&store, &format!("s{i}"), flavor).await });
    }
    let (mut ok, mut bad, mut full) = (0, 0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(WriteError::Invalid(e)) => {
                assert_eq!(e.field, "server.flavorRef");
                bad += 1
            }
            Err(WriteError::NoValidHost(_)) => full += 1,
            Err(e) => panic!("{e}"),
        }
    }
    // 2 hosts x 4 vCPUs / 2 per server = 4 servers fit.
    assert_eq!((ok, bad, full), (4, 20, 16));
    let servers = store.servers(ServerQuery::default()).await.unwrap();
    assert_eq!(servers.len(), 4);
    let used: u64 = store
        .hypervisors()
        .await
        .unwrap()
        .iter()
        .map(|h| h.host.used.vcpus)
        .sum();
    assert_eq!(used, 8);
}

#[tokio::test]
async fn usage_survives_reopen_and_removal_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = create(&store, "a", "2").await.unwrap();
    let _b = create(&store, "b", "2").await.unwrap();
    drop(store);

    let store = open(dir.path());
    let used = |h: &[super::HypervisorView]| h.iter().map(|h| h.host.used.vcpus).sum::<u64>();
    assert_eq!(used(&store.hypervisors().await.unwrap()), 4);
    // Two more fit, a fifth does not: the writer rebuilt usage from disk.
    create(&store, "c", "2").await.unwrap();
    create(&store, "d", "2").await.unwrap();
    assert!(matches!(
        create(&store, "e", "2").await,
        Err(WriteError::NoValidHost(_))
    ));

    let id = a.clone();
    store.write(move |w| w.remove_server(&id)).await.unwrap();
    assert_eq!(used(&store.hypervisors().await.unwrap()), 6);
    create(&store, "f", "2").await.unwrap();
    assert!(store.server(a).await.unwrap().is_none());
}

#[tokio::test]
async fn intent_conflicts_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let id = create(&store, "a", "2").await.unwrap();
    // Still building: a stop conflicts.
    let i = id.clone();
    let err = store
        .write(move |w| w.change_server(&i, None, ServerIntent::Stop))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WriteError::Conflict(m) if m.contains("task_state spawning")),
        "{err}"
    );
    // Another project cannot see it.
    let i = id.clone();
    let err = store
        .write(move |w| w.change_server(&i, Some("other"), ServerIntent::Delete))
        .await
        .unwrap_err();
    assert!(matches!(err, WriteError::NotFound(_)));
    let s = store.server(id.clone()).await.unwrap().unwrap();
    assert_eq!(s.spec.power, PowerIntent::Running);
    assert!(!s.spec.deleted);
    // Delete is always accepted, and twice is fine.
    for _ in 0..2 {
        let i = id.clone();
        store
            .write(move |w| w.change_server(&i, Some("p"), ServerIntent::Delete))
            .await
            .unwrap();
    }
    assert!(store.server(id).await.unwrap().unwrap().spec.deleted);
}

#[tokio::test]
async fn a_job_that_claims_then_fails_leaves_no_row_and_no_usage() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let store = store.clone();
        tasks.spawn(async move {
            let s = spec(&format!("s{i}"), "2");
            store
                .write(move |w| {
                    let server = w.create_server(NewServer { spec: s, id: None })?;
                    match i % 3 {
                        // Scheduled and claimed, then refused: ROLLBACK TO
                        // must undo the row and the writer reload the usage.
                        0 => Err(WriteError::Conflict("changed its mind".into())),
                        // A bug in a job costs that job alone.
                        1 if i < 6 => panic!("a job with a bug"),
                        _ => Ok(server.id),
                    }
                })
                .await
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        if r.unwrap().is_ok() {
            ok += 1;
        }
    }
    // 4 slots; the failing and panicking jobs took none of them for good.
    assert_eq!(ok, 4);
    let servers = store.servers(ServerQuery::default()).await.unwrap();
    assert_eq!(servers.len(), 4);
    let used: u64 = store
        .hypervisors()
        .await
        .unwrap()
        .iter()
        .map(|h| h.host.used.vcpus)
        .sum();
    assert_eq!(used, 8);
    assert!(store.writer_alive());
    // The usage on disk agrees with the writer's after a reopen.
    drop(store);
    let store = open(dir.path());
    assert!(matches!(
        create(&store, "one-more", "2").await,
        Err(WriteError::NoValidHost(_))
    ));
}

/// What a region does: start from the site's intent as it is, write as
/// `region:eu`, and hand the changes to the site's document.
fn region_writes(store: &Store, edit: impl FnOnce(&mut roost_sync::IntentDoc)) {
    let mut region = region_fork(store);
    region_send(store, &mut region, edit);
}

/// The region's copy of the site's intent as it is now.
fn region_fork(store: &Store) -> roost_sync::IntentDoc {
    let docs = store.docs();
    let mut d = docs.lock().unwrap();
    roost_sync::IntentDoc::load(&d.intent.save(), b"region-actor-0001", "region:eu").unwrap()
}

fn region_send(
    store: &Store,
    region: &mut roost_sync::IntentDoc,
    edit: impl FnOnce(&mut roost_sync::IntentDoc),
) {
    let before = region.heads();
    edit(region);
    let docs = store.docs();
    let mut d = docs.lock().unwrap();
    d.intent
        .apply_changes(&region.changes_since(&before))
        .unwrap();
}

#[tokio::test]
async fn writes_are_recorded_in_the_documents_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = create(&store, "a", "2").await.unwrap();
    let id = a.clone();
    store
        .write(move |w| w.change_server(&id, None, ServerIntent::Delete))
        .await
        .unwrap();
    // A failed job leaves nothing in the documents.
    assert!(create(&store, "bad", "missing").await.is_err());
    drop(store);

    let store = open(dir.path());
    let docs = store.docs();
    let d = docs.lock().unwrap();
    let view = d.intent.resource("servers", &a).unwrap().unwrap();
    assert!(view.deleted);
    assert_eq!(view.fields["name"], "a");
    assert_eq!(
        d.status.get("servers", &a).unwrap().unwrap()["vm_state"],
        "building"
    );
    assert_eq!(d.intent.ids("servers").unwrap(), std::slice::from_ref(&a));
    assert_eq!(
        d.intent.ids("flavors").unwrap().len(),
        1,
        "the config's flavor"
    );
}

#[tokio::test]
async fn the_regions_intent_becomes_rows_and_conflicts_are_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mine = create(&store, "mine", "2").await.unwrap();
    let fields = |name: &str, flavor: &str| match serde_json::to_value(spec(name, flavor)).unwrap()
    {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    };
    let far_future = chrono::Utc::now().timestamp_millis() + 60_000;
    let mine2 = mine.clone();
    let mut region = region_fork(&store);
    // The site renames a server while apart from the region...
    {
        let docs = store.docs();
        let mut d = docs.lock().unwrap();
        d.intent
            .set("servers", &mine, "name", serde_json::json!("site-name"), 5)
            .unwrap();
    }
    // ...and the region renames it too (a later write), and adds servers.
    region_send(&store, &mut region, move |r| {
        r.create("servers", "from-region-1", fields("cam", "2"), 1)
            .unwrap();
        r.create(
            "servers",
            "from-region-2",
            fields("no-flavor", "missing"),
            1,
        )
        .unwrap();
        r.set(
            "servers",
            &mine2,
            "name",
            serde_json::json!("renamed"),
            far_future,
        )
        .unwrap();
    });
    let applied = store.apply_intent().await.unwrap();
    assert_eq!(applied.conflicts, 1);
    let mut changed = applied.servers.clone();
    changed.sort();
    let mut want = vec![
        "from-region-1".to_string(),
        "from-region-2".into(),
        mine.clone(),
    ];
    want.sort();
    assert_eq!(changed, want);

    let s = store.server("from-region-1".into()).await.unwrap().unwrap();
    assert!(s.status.host.is_some(), "placed by the site's scheduler");
    let s = store.server("from-region-2".into()).await.unwrap().unwrap();
    assert_eq!(s.status.vm_state, roost_common::model::VmState::Error);
    assert!(s.status.fault.unwrap().message.contains("server.flavorRef"));
    let s = store.server(mine.clone()).await.unwrap().unwrap();
    assert_eq!(s.spec.name, "renamed", "the later write wins");
    let journal = store.conflicts().await.unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].loser.v, "site-name");
    assert_eq!(journal[0].winner.by, "region:eu");

    // A second pass with nothing new changes nothing; a delete from the
    // region reaches the row.
    assert_eq!(store.apply_intent().await.unwrap(), Default::default());
    region_writes(&store, |r| r.delete("servers", "from-region-1", 1).unwrap());
    let applied = store.apply_intent().await.unwrap();
    assert_eq!(applied.servers, ["from-region-1"]);
    assert!(
        store
            .server("from-region-1".into())
            .await
            .unwrap()
            .unwrap()
            .spec
            .deleted
    );
    // Placement (status) was recorded for the region's server.
    let docs = store.docs();
    let d = docs.lock().unwrap();
    assert!(d.status.get("servers", "from-region-1").unwrap().unwrap()["host"].is_string());
}
