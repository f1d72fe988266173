//! The store against a real SQLite file: batches, savepoints, claims.

use std::path::Path;

use roost_common::config::{self, SiteConfig};
use roost_common::model::{PowerIntent, ServerSpec};

use super::{NewServer, ServerIntent, ServerQuery, Store, WriteError};

/// A two-host site that stores in tests open (also `crate::ha`'s).
pub(crate) const SITE: &str = "
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
    ServerSpec::new(
        name,
        "p",
        "u",
        flavor,
        "11111111-2222-4333-8444-555555555555",
    )
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
    // The journal's size is published for the region's fleet view.
    let published = d.status.get("site", "conflicts").unwrap().unwrap();
    assert_eq!(published["total"], 1);
    assert_eq!(published["recent"][0]["loser"]["v"], "site-name");
}

/// The site's store and a region, syncing in memory through sessions, with
/// random writes on both sides, random cuts and site restarts.
mod convergence {
    use std::time::Instant;

    use proptest::prelude::*;
    use roost_sync::{
        site_status_actor, Docs, IntentDoc, Persisted, Role, Session, SessionConfig, StatusDoc,
    };

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        SiteCreate { bad_flavor: bool },
        SiteDelete(usize),
        SiteActive(usize),
        SiteStop(usize),
        RegionCreate,
        RegionDelete(usize),
        RegionPower(usize, bool),
        Sync(u8),
        Cut,
        Heal,
        RestartSite,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<bool>().prop_map(|b| Op::SiteCreate { bad_flavor: b }),
            1 => any::<usize>().prop_map(Op::SiteDelete),
            2 => any::<usize>().prop_map(Op::SiteActive),
            1 => any::<usize>().prop_map(Op::SiteStop),
            3 => Just(Op::RegionCreate),
            1 => any::<usize>().prop_map(Op::RegionDelete),
            1 => (any::<usize>(), any::<bool>()).prop_map(|(i, b)| Op::RegionPower(i, b)),
            3 => (1u8..4).prop_map(Op::Sync),
            1 => Just(Op::Cut),
            1 => Just(Op::Heal),
            1 => Just(Op::RestartSite),
        ]
    }

    struct World {
        dir: tempfile::TempDir,
        store: Store,
        region: Docs,
        site_session: Session,
        region_session: Session,
        site_state: Option<Persisted>,
        region_state: Option<Persisted>,
        cut: bool,
        /// Servers each side was told were created (acknowledged writes).
        ids: Vec<String>,
        region_n: usize,
    }

    fn sessions(w: &World) -> (Session, Session) {
        let now = Instant::now();
        let cfg = SessionConfig::default();
        (
            Session::new(Role::Site, cfg.clone(), w.site_state.as_ref(), now).unwrap(),
            Session::new(Role::Region, cfg, w.region_state.as_ref(), now).unwrap(),
        )
    }

    impl World {
        async fn new() -> World {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path());
            let region = Docs {
                intent: IntentDoc::new(b"region-actor-0001", "region:eu"),
                status: StatusDoc::new(b"region-actor-0001"),
                site_status_actor: site_status_actor("store-test"),
            };
            let now = Instant::now();
            let cfg = SessionConfig::default();
            World {
                dir,
                store,
                region,
                site_session: Session::new(Role::Site, cfg.clone(), None, now).unwrap(),
                region_session: Session::new(Role::Region, cfg, None, now).unwrap(),
                site_state: None,
                region_state: None,
                cut: false,
                ids: Vec::new(),
                region_n: 0,
            }
        }

        fn pick(&self, i: usize) -> Option<String> {
            (!self.ids.is_empty()).then(|| self.ids[i % self.ids.len()].clone())
        }

        /// One round each way; returns whether anything moved.
        async fn round(&mut self) -> bool {
            let now = Instant::now() + std::time::Duration::from_secs(1);
            // Both sides may have written since the last round.
            self.site_session
                .local_change(now - std::time::Duration::from_secs(1));
            self.region_session
                .local_change(now - std::time::Duration::from_secs(1));
            let docs = self.store.docs();
            let mut to_region = Vec::new();
            {
                let mut d = docs.lock().unwrap();
                self.site_session.handle_timeout(&mut d, now);
                while let Some(m) = self.site_session.poll_message() {
                    to_region.push(m);
                }
            }
            self.region_session.handle_timeout(&mut self.region, now);
            let mut to_site = Vec::new();
            while let Some(m) = self.region_session.poll_message() {
                to_site.push(m);
            }
            let moved = !to_region.is_empty() || !to_site.is_empty();
            if self.cut {
                return false;
            }
            for m in to_region {
                self.region_session
                    .handle_message(&mut self.region, &m, now)
                    .unwrap();
            }
            let mut intent_changed = false;
            for m in to_site {
                let mut d = docs.lock().unwrap();
                intent_changed |= self
                    .site_session
                    .handle_message(&mut d, &m, now)
                    .unwrap()
                    .intent_changed;
            }
            if intent_changed {
                self.store.apply_intent().await.unwrap();
            }
            moved
        }

        async fn apply(&mut self, op: Op) {
            let ms = chrono::Utc::now().timestamp_millis();
            match op {
                Op::SiteCreate { bad_flavor } => {
                    let flavor = if bad_flavor { "missing" } else { "2" };
                    if let Ok(id) = create(&self.store, "s", flavor).await {
                        self.ids.push(id);
                    }
                }
                Op::SiteDelete(i) | Op::SiteStop(i) | Op::SiteActive(i) => {
                    let Some(id) = self.pick(i) else { return };
                    let _ = self
                        .store
                        .write(move |w| match op {
                            Op::SiteDelete(_) => {
                                w.change_server(&id, None, ServerIntent::Delete).map(|_| ())
                            }
                            Op::SiteStop(_) => {
                                w.change_server(&id, None, ServerIntent::Stop).map(|_| ())
                            }
                            _ => {
                                let Some(s): Option<roost_common::model::Server> =
                                    super::super::rows::get(w.tx, "servers", &id)?
                                else {
                                    return Ok(());
                                };
                                let mut st = s.status;
                                st.vm_state = roost_common::model::VmState::Active;
                                st.task_state = None;
                                w.set_server_status(&id, &st)
                            }
                        })
                        .await;
                }
                Op::RegionCreate => {
                    self.region_n += 1;
                    let id = format!("r-{:04}", self.region_n);
                    let fields = match serde_json::to_value(spec("from-region", "2")).unwrap() {
                        serde_json::Value::Object(m) => m,
                        _ => unreachable!(),
                    };
                    self.region
                        .intent
                        .create("servers", &id, fields, ms)
                        .unwrap();
                    self.ids.push(id);
                }
                Op::RegionDelete(i) => {
                    if let Some(id) = self.pick(i) {
                        self.region.intent.delete("servers", &id, ms).unwrap();
                    }
                }
                Op::RegionPower(i, on) => {
                    if let Some(id) = self.pick(i) {
                        let v = if on { "running" } else { "stopped" };
                        self.region
                            .intent
                            .set("servers", &id, "power", serde_json::json!(v), ms)
                            .unwrap();
                    }
                }
                Op::Sync(n) => {
                    for _ in 0..n {
                        self.round().await;
                    }
                }
                Op::Cut => {
                    if !self.cut {
                        self.cut = true;
                        self.site_state = Some(self.site_session.persist());
                        self.region_state = Some(self.region_session.persist());
                    }
                }
                Op::Heal => {
                    if self.cut {
                        self.cut = false;
                        (self.site_session, self.region_session) = sessions(self);
                    }
                }
                Op::RestartSite => {
                    // What the agent keeps: the store. The session restarts
                    // from the sync state the last connection saved.
                    self.site_state
                        .get_or_insert_with(|| self.site_session.persist());
                    let st = self.site_state.clone();
                    drop(std::mem::replace(&mut self.store, open(self.dir.path())));
                    self.store = open(self.dir.path());
                    self.store.apply_intent().await.unwrap();
                    self.site_session = Session::new(
                        Role::Site,
                        SessionConfig::default(),
                        st.as_ref(),
                        Instant::now(),
                    )
                    .unwrap();
                    self.region_session = Session::new(
                        Role::Region,
                        SessionConfig::default(),
                        self.region_state.as_ref(),
                        Instant::now(),
                    )
                    .unwrap();
                }
            }
        }

        async fn settle(&mut self) {
            self.apply(Op::Heal).await;
            self.store.apply_intent().await.unwrap();
            let mut quiet = 0;
            for _ in 0..60 {
                quiet = if self.round().await { 0 } else { quiet + 1 };
                if quiet == 3 {
                    return;
                }
            }
            panic!("the sessions never went quiet");
        }

        async fn check(&mut self) {
            let docs = self.store.docs();
            {
                let mut d = docs.lock().unwrap();
                assert_eq!(
                    d.intent.heads(),
                    self.region.intent.heads(),
                    "intent documents differ"
                );
                assert_eq!(
                    d.status.heads(),
                    self.region.status.heads(),
                    "status documents differ"
                );
            }
            let d = docs.lock().unwrap().clone();
            let doc_ids = d.intent.ids("servers").unwrap();
            for id in &self.ids {
                assert!(doc_ids.contains(id), "acknowledged server {id} lost");
            }
            let rows = self.store.servers(ServerQuery::default()).await.unwrap();
            for row in &rows {
                let view = d.intent.resource("servers", &row.id).unwrap();
                let view = view.unwrap_or_else(|| panic!("row {} is not in the document", row.id));
                assert_eq!(row.spec.deleted, view.deleted, "{}", row.id);
                assert_eq!(
                    serde_json::to_value(row.spec.power).unwrap(),
                    view.fields["power"],
                    "{}: row and document disagree on power",
                    row.id
                );
                let status = d.status.get("servers", &row.id).unwrap();
                assert_eq!(
                    status.map(|s| s["vm_state"].clone()),
                    Some(serde_json::to_value(row.status.vm_state).unwrap()),
                    "{}: status document and row disagree",
                    row.id
                );
            }
            for id in doc_ids {
                let view = d.intent.resource("servers", &id).unwrap().unwrap();
                if !view.deleted {
                    assert!(rows.iter().any(|r| r.id == id), "intent {id} has no row");
                }
            }
            // Everything is on disk: a restart loads the same documents.
            drop(std::mem::replace(&mut self.store, open(self.dir.path())));
            self.store = open(self.dir.path());
            let again = self.store.docs();
            let mut again = again.lock().unwrap();
            assert_eq!(
                again.intent.heads(),
                self.region.intent.heads(),
                "intent not all on disk"
            );
            assert_eq!(
                again.status.heads(),
                self.region.status.heads(),
                "status not all on disk"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn both_sides_converge_and_the_tables_follow_the_documents(ops in proptest::collection::vec(op(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut w = World::new().await;
                for o in ops {
                    w.apply(o).await;
                }
                w.settle().await;
                w.check().await;
            });
        }
    }
}

#[tokio::test]
async fn the_regions_quota_and_flavors_hold_at_the_site_and_capacity_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    create(&store, "before", "2").await.unwrap();
    let obj = |v: serde_json::Value| v.as_object().unwrap().clone();
    // The region publishes a flavor and grants an allotment of 2 instances
    // and 6 cores; one server is there already.
    region_writes(&store, |r| {
        r.create(
            "flavors",
            "big",
            obj(serde_json::json!({"name": "big", "vcpus": 3, "ram_mb": 512, "disk_gb": 1})),
            1,
        )
        .unwrap();
        r.create(
            "quotas",
            "site",
            obj(serde_json::json!({"instances": 2, "cores": 6})),
            1,
        )
        .unwrap();
    });
    store.apply_intent().await.unwrap();
    assert_eq!(
        store
            .flavor("big".into())
            .await
            .unwrap()
            .unwrap()
            .spec
            .vcpus,
        3
    );
    // 2 cores used + 3 = 5 <= 6, the second instance of 2.
    create(&store, "second", "big").await.unwrap();
    let refused = create(&store, "third", "2").await.unwrap_err();
    let WriteError::Quota(why) = &refused else {
        panic!("{refused:?}")
    };
    assert!(
        why.starts_with(
            "Quota exceeded for instances: Requested 1, but already used 2 of 2 instances"
        ),
        "{why}"
    );
    // The region raises instances; cores are then what is short.
    region_writes(&store, |r| {
        r.set("quotas", "site", "instances", serde_json::json!(10), 2)
            .unwrap()
    });
    store.apply_intent().await.unwrap();
    let refused = create(&store, "third", "big").await.unwrap_err();
    assert!(
        refused
            .to_string()
            .starts_with("Quota exceeded for cores: Requested 3, but already used 5 of 6 cores"),
        "{refused}"
    );
    create(&store, "small", "2").await.unwrap_err(); // 5 + 2 > 6
                                                     // A region server over the allotment is kept in ERROR saying why.
    region_writes(&store, |r| {
        let mut s = obj(serde_json::to_value(spec("from-region", "big")).unwrap());
        s.insert("project_id".into(), "".into());
        s.insert("user_id".into(), "".into());
        r.create("servers", "r1", s, 3).unwrap()
    });
    store.apply_intent().await.unwrap();
    let r1 = store.server("r1".into()).await.unwrap().unwrap();
    assert_eq!(r1.status.vm_state, roost_common::model::VmState::Error);
    assert!(
        r1.status
            .fault
            .as_ref()
            .unwrap()
            .message
            .contains("Quota exceeded for cores"),
        "{:?}",
        r1.status.fault
    );
    assert_ne!(r1.spec.project_id, "", "the site's admin project owns it");
    // Lifting the quota lets creates through again.
    region_writes(&store, |r| r.delete("quotas", "site", 4).unwrap());
    store.apply_intent().await.unwrap();
    create(&store, "after-lift", "2").await.unwrap();
    // The capacity the site publishes follows the claims: 2 + 3 + 2 cores
    // on two 4-core hosts, 3 instances placed (r1 holds nothing).
    let cap = published_capacity(&store);
    assert_eq!(cap.instances, 3);
    assert_eq!(cap.used.vcpus, 7);
    assert_eq!(cap.total.vcpus, 8);
    assert_eq!(cap.host_free.len(), 2);
    let need = |vcpus| roost_common::model::Usage {
        vcpus,
        ram_mb: 512,
        disk_gb: 1,
    };
    assert!(cap.fits(&need(1)));
    assert!(!cap.fits(&need(2)));
    // The region withdraws its flavor.
    region_writes(&store, |r| r.delete("flavors", "big", 5).unwrap());
    store.apply_intent().await.unwrap();
    assert!(store.flavor("big".into()).await.unwrap().is_none());
}

/// The capacity the site last published in its status document.
fn published_capacity(store: &Store) -> roost_common::model::SiteCapacity {
    let docs = store.docs();
    let value = docs
        .lock()
        .unwrap()
        .status
        .get("site", "capacity")
        .unwrap()
        .unwrap();
    serde_json::from_value(value).unwrap()
}

fn image_spec(name: &str) -> roost_common::model::ImageSpec {
    use roost_common::api::ImageCreateBody;
    let body: ImageCreateBody = serde_json::from_value(
        serde_json::json!({"name": name, "disk_format": "qcow2", "container_format": "bare"}),
    )
    .unwrap();
    body.into_spec("p").unwrap()
}

fn uploaded(dir: &Path) -> super::Uploaded {
    super::Uploaded {
        file: dir.join("data"),
        size: 10,
        sha256: "ab".repeat(32),
        virtual_size: 1 << 20,
    }
}

#[tokio::test]
async fn an_image_is_bootable_only_once_its_upload_committed_and_cannot_go_while_used() {
    use roost_common::model::ImageState;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let img = store
        .write(|w| w.create_image(image_spec("new")))
        .await
        .unwrap();
    assert_eq!(img.status.state, ImageState::Queued);
    let id = img.id.clone();

    // A queued image boots nothing.
    let mut s = spec("early", "2");
    s.image_id = id.clone();
    let refused = store
        .write(move |w| w.create_server(NewServer { spec: s, id: None }))
        .await
        .unwrap_err();
    let WriteError::Invalid(e) = &refused else {
        panic!("{refused}")
    };
    assert_eq!(e.field, "server.imageRef");
    assert!(e.rule.contains("queued"), "{e}");

    // One upload at a time; a failed one leaves the image queued again.
    let i = id.clone();
    store.write(move |w| w.begin_upload(&i)).await.unwrap();
    let i = id.clone();
    let second = store.write(move |w| w.begin_upload(&i)).await.unwrap_err();
    assert!(matches!(second, WriteError::Conflict(_)), "{second}");
    let i = id.clone();
    let busy = store.write(move |w| w.delete_image(&i)).await.unwrap_err();
    assert!(busy.to_string().contains("being uploaded"), "{busy}");
    let i = id.clone();
    store.write(move |w| w.abort_upload(&i)).await.unwrap();
    assert_eq!(
        store.image(id.clone()).await.unwrap().unwrap().status.state,
        ImageState::Queued
    );

    // An upload cut by a stop: queued again after the reopen.
    let i = id.clone();
    store.write(move |w| w.begin_upload(&i)).await.unwrap();
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.image(id.clone()).await.unwrap().unwrap().status.state,
        ImageState::Queued
    );

    // Finished: active, with what was stored, and bootable.
    let i = id.clone();
    store.write(move |w| w.begin_upload(&i)).await.unwrap();
    let (i, up) = (id.clone(), uploaded(dir.path()));
    let active = store.write(move |w| w.finish_upload(&i, up)).await.unwrap();
    assert_eq!(active.status.state, ImageState::Active);
    assert_eq!(active.status.size_bytes, Some(10));
    assert_eq!(
        active.spec.file.as_deref(),
        Some(dir.path().join("data").as_path())
    );
    let mut s = spec("vm", "2");
    s.image_id = id.clone();
    let server = store
        .write(move |w| w.create_server(NewServer { spec: s, id: None }))
        .await
        .unwrap();

    // In use: neither the image nor the flavor can be deleted.
    let i = id.clone();
    let used = store.write(move |w| w.delete_image(&i)).await.unwrap_err();
    assert!(
        matches!(&used, WriteError::Conflict(m) if m.contains(&server.id)),
        "{used}"
    );
    let used = store.write(|w| w.delete_flavor("2")).await.unwrap_err();
    assert!(
        matches!(&used, WriteError::Conflict(m) if m.contains(&server.id)),
        "{used}"
    );
    assert!(store.image(id.clone()).await.unwrap().is_some());
    assert!(store.flavor("2".into()).await.unwrap().is_some());

    // Once the server is asked to go, both may be deleted.
    let sid = server.id.clone();
    store
        .write(move |w| w.change_server(&sid, None, ServerIntent::Delete))
        .await
        .unwrap();
    let i = id.clone();
    let gone = store.write(move |w| w.delete_image(&i)).await.unwrap();
    assert_eq!(gone.id, id);
    store.write(|w| w.delete_flavor("2")).await.unwrap();
    assert!(store.image(id).await.unwrap().is_none());
    assert!(store.flavor("2".into()).await.unwrap().is_none());
    let missing = store.write(|w| w.delete_flavor("2")).await.unwrap_err();
    assert!(matches!(missing, WriteError::NotFound(_)), "{missing}");
}

#[tokio::test]
async fn only_unpinned_images_change_tiers_and_a_cold_one_is_refused_then_fetched_again() {
    use roost_common::model::{ImageState, RegionCopy, Tier};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let img = store
        .write(|w| w.create_image(image_spec("tiered")))
        .await
        .unwrap();
    let id = img.id.clone();
    let i = id.clone();
    store
        .write(move |w| {
            w.set_region_copy(
                &i,
                Some(RegionCopy {
                    size: 10,
                    sha256: "ab".repeat(32),
                }),
            )?;
            w.begin_upload(&i)?;
            w.finish_upload(&i, uploaded(Path::new("/images")))
        })
        .await
        .unwrap();
    let warm = Path::new("/images/data").to_path_buf();
    let fetched = store.image(id.clone()).await.unwrap().unwrap();
    let arrived = fetched.status.last_used.expect("arrival counts as a use");

    // Up to the hot tier; a move planned from the old path is refused.
    let hot = dir.path().join("hot").join(&id);
    let (i, from, to) = (id.clone(), warm.clone(), hot.clone());
    assert!(store
        .write(move |w| w.move_image(&i, &from, to, Tier::Hot))
        .await
        .unwrap());
    let (i, from) = (id.clone(), warm.clone());
    assert!(!store
        .write(move |w| w.move_image(&i, &from, "/elsewhere".into(), Tier::Warm))
        .await
        .unwrap());
    let moved = store.image(id.clone()).await.unwrap().unwrap();
    assert_eq!(moved.spec.file.as_deref(), Some(hot.as_path()));
    assert_eq!(moved.status.tier, Some(Tier::Hot));

    // A server's disk is an overlay of it: pinned, it goes nowhere.
    let mut s = spec("vm", "2");
    s.image_id = id.clone();
    let server = store
        .write(move |w| w.create_server(NewServer { spec: s, id: None }))
        .await
        .unwrap();
    assert!(store.pinned_images().await.unwrap().contains(&id));
    let used = store.image(id.clone()).await.unwrap().unwrap();
    assert!(used.status.last_used.unwrap() >= arrived);
    let (i, from) = (id.clone(), hot.clone());
    assert!(!store
        .write(move |w| w.evict_image(&i, &from))
        .await
        .unwrap());
    let (i, from) = (id.clone(), hot.clone());
    assert!(!store
        .write(move |w| w.move_image(&i, &from, warm, Tier::Warm))
        .await
        .unwrap());

    // The server goes: the image may go cold, staying active with no file.
    let sid = server.id.clone();
    store
        .write(move |w| w.change_server(&sid, None, ServerIntent::Delete))
        .await
        .unwrap();
    assert!(store.pinned_images().await.unwrap().is_empty());
    let (i, from) = (id.clone(), hot.clone());
    assert!(store
        .write(move |w| w.evict_image(&i, &from))
        .await
        .unwrap());
    let cold = store.image(id.clone()).await.unwrap().unwrap();
    assert_eq!(cold.status.state, ImageState::Active);
    assert_eq!(cold.spec.file, None);
    assert_eq!(
        roost_common::api::glance_image(&cold, false)["roost:tier"],
        "cold"
    );

    // Cold boots nothing; the refusal names the image and the tier.
    let mut s = spec("late", "2");
    s.image_id = id.clone();
    let refused = store
        .write(move |w| w.create_server(NewServer { spec: s, id: None }))
        .await
        .unwrap_err();
    let WriteError::Invalid(e) = &refused else {
        panic!("{refused}")
    };
    assert_eq!(
        (e.field.as_str(), e.value.as_str()),
        ("server.imageRef", id.as_str())
    );
    assert!(e.rule.contains("image tiered is in the cold tier"), "{e}");

    // Wanted again: queued for the fetcher, once.
    let i = id.clone();
    assert!(store.write(move |w| w.recall_image(&i)).await.unwrap());
    let i = id.clone();
    assert!(!store.write(move |w| w.recall_image(&i)).await.unwrap());
    let back = store.image(id.clone()).await.unwrap().unwrap();
    assert_eq!(back.status.state, ImageState::Queued);
    assert_eq!(back.status.tier, None);

    // An image only this site holds never goes cold.
    let mine = store
        .write(|w| w.create_image(image_spec("mine")))
        .await
        .unwrap();
    let i = mine.id.clone();
    store
        .write(move |w| {
            w.begin_upload(&i)?;
            w.finish_upload(&i, uploaded(Path::new("/images")))
        })
        .await
        .unwrap();
    let i = mine.id.clone();
    assert!(!store
        .write(move |w| w.evict_image(&i, Path::new("/images/data")))
        .await
        .unwrap());
}

#[tokio::test]
async fn a_protected_image_is_not_deleted_and_a_taken_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut spec = image_spec("keep");
    spec.protected = true;
    let img = store.write(move |w| w.create_image(spec)).await.unwrap();
    let i = img.id.clone();
    let refused = store.write(move |w| w.delete_image(&i)).await.unwrap_err();
    assert!(matches!(refused, WriteError::Forbidden(_)), "{refused}");
    let mut again = image_spec("other");
    again.id = Some(img.id.clone());
    let taken = store
        .write(move |w| w.create_image(again))
        .await
        .unwrap_err();
    assert!(matches!(taken, WriteError::Conflict(_)), "{taken}");
    assert_eq!(
        store.images().await.unwrap().len(),
        2,
        "the seed and the protected one"
    );
}

#[tokio::test]
async fn the_regions_token_keys_and_revocations_are_kept_and_published_images_follow_writes() {
    use roost_sync::token::{Signer, Trust};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(store.region_trust().await.unwrap(), Trust::default());
    let key = Signer::generate().unwrap().public_key();
    let k = key.clone();
    region_writes(&store, move |r| {
        let mut fields = serde_json::Map::new();
        fields.insert("keys".into(), serde_json::json!([k]));
        fields.insert("revoked".into(), serde_json::json!(["a1"]));
        r.create("identity", "region", fields, 1).unwrap()
    });
    store.apply_intent().await.unwrap();
    let trust = store.region_trust().await.unwrap();
    assert_eq!(trust.keys, vec![key.clone()]);
    assert!(trust.revoked.contains("a1"));
    // A later revocation adds to it; it survives a reopen.
    region_writes(&store, |r| {
        r.set(
            "identity",
            "region",
            "revoked",
            serde_json::json!(["a1", "b2"]),
            2,
        )
        .unwrap()
    });
    store.apply_intent().await.unwrap();
    drop(store);
    let store = open(dir.path());
    let trust = store.region_trust().await.unwrap();
    assert_eq!(trust.revoked.len(), 2);
    assert_eq!(trust.keys, vec![key]);

    // The site's images are in its status document for the region, the
    // seed from the first batch and a new one from its create.
    store
        .write(|w| w.create_image(image_spec("fresh")))
        .await
        .unwrap();
    let docs = store.docs();
    let images = docs
        .lock()
        .unwrap()
        .status
        .get("site", "images")
        .unwrap()
        .unwrap();
    let names: Vec<&str> = images
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(names, ["img", "fresh"], "{images}");
    assert_eq!(images[1]["status"], "queued");
}

/// Logins and revocations keep their order when the wall clock steps
/// back, in one run and across a restart: a token issued before a
/// revocation is ended by it, one issued after it is not.
#[tokio::test]
async fn token_times_keep_their_order_when_the_clock_steps_back() {
    use super::accounts::{ProjectLookup, UserChange};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let user = store
        .write(|w| {
            let p = w.create_project("line-1", "", true)?;
            let u = w.create_user(UserChange {
                name: Some("alice".into()),
                password_hash: Some("h".into()),
                default_project_id: Some(Some(p.id.clone())),
                ..Default::default()
            })?;
            w.grant(&p.id, &u.id, "member")?;
            Ok(u.id)
        })
        .await
        .unwrap();
    // The clock as the writer reads it, stepped by `back`.
    let login = |store: Store, user: String, back: chrono::Duration| async move {
        store
            .write(move |w| {
                w.now -= back;
                Ok(w.login(&user, "h", ProjectLookup::Default)?.unwrap().at)
            })
            .await
            .unwrap()
    };
    let hour = chrono::Duration::hours(1);
    let issued = login(store.clone(), user.clone(), chrono::Duration::zero()).await;
    let u = user.clone();
    let revoked = store
        .write(move |w| {
            w.now -= hour;
            let project = w
                .login(&u, "h", ProjectLookup::Default)?
                .unwrap()
                .project
                .id;
            w.ungrant(&project, &u, "member")?;
            w.grant(&project, &u, "member")?;
            w.ungrant(&project, &u, "member")
        })
        .await
        .unwrap();
    assert!(issued < revoked, "{issued} then {revoked}");
    let u = user.clone();
    store
        .write(move |w| {
            let project = w.login(&u, "h", ProjectLookup::Default)?.unwrap_err();
            assert!(matches!(project, super::accounts::Refusal::NoRole));
            let p = super::accounts::projects(w.tx, Some("line-1"))?
                .pop()
                .unwrap();
            w.grant(&p.id, &u, "member")
        })
        .await
        .unwrap();
    let after = login(store.clone(), user.clone(), hour).await;
    assert!(revoked < after, "{revoked} then {after}");
    drop(store);
    let store = open(dir.path());
    let restarted = login(store.clone(), user.clone(), hour * 2).await;
    assert!(
        after < restarted,
        "{after} then, after a restart, {restarted}"
    );
}

/// A host with `host.down` active takes nothing new, across a restart,
/// and takes servers again once the alarm clears.
#[tokio::test]
async fn nothing_new_is_placed_on_a_host_that_is_down() {
    use crate::alarms::{AlarmChange, HOST_DOWN};
    use roost_common::model::{AlarmStatus, Severity};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let down = AlarmChange::Raise(AlarmStatus {
        code: HOST_DOWN.into(),
        entity: "host=c0".into(),
        severity: Severity::Critical,
        reason: "host c0 has not answered".into(),
        raised_at: chrono::Utc::now(),
        cleared_at: None,
    });
    store.write(move |w| w.apply_alarms(&[down])).await.unwrap();
    let placed_on = |store: Store, name: &'static str| async move {
        let id = create(&store, name, "2").await.unwrap();
        store
            .server(id)
            .await
            .unwrap()
            .unwrap()
            .status
            .host
            .unwrap()
    };
    let states = |store: Store| async move {
        store
            .hypervisors()
            .await
            .unwrap()
            .into_iter()
            .map(|h| (h.host.spec.name, h.host.down))
            .collect::<Vec<_>>()
    };
    assert_eq!(placed_on(store.clone(), "a").await, "c1");
    assert_eq!(
        states(store.clone()).await,
        [("c0".to_string(), true), ("c1".to_string(), false)]
    );
    // Only c1's room is offered to the region.
    assert_eq!(published_capacity(&store).host_free.len(), 1);
    drop(store);
    let store = open(dir.path());
    assert_eq!(placed_on(store.clone(), "b").await, "c1", "after a restart");
    let e = create(&store, "c", "2").await.unwrap_err().to_string();
    assert!(e.contains("ComputeFilter"), "c0 is down, c1 full: {e}");
    let up = AlarmChange::Clear {
        code: HOST_DOWN.into(),
        entity: "host=c0".into(),
        at: chrono::Utc::now(),
    };
    store.write(move |w| w.apply_alarms(&[up])).await.unwrap();
    assert_eq!(placed_on(store.clone(), "c").await, "c0");
    assert!(states(store).await.iter().all(|(_, down)| !down));
}
