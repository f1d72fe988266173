//! The replication log against real SQLite stores, and the writer's wait.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use roost_common::config::{self, SiteConfig};
use roost_common::model::ServerSpec;
use rusqlite::Connection;

use super::log::{self, LogError, Tip};
use super::Replication;
use crate::store::{open_reader, NewServer, Store, StoreHa, WriteError, DB_FILE};

use crate::store::tests::SITE;

fn open_active(dir: &Path, term: u64) -> Store {
    let cfg: SiteConfig = config::parse(Path::new("site.yaml"), SITE).unwrap();
    let ha = StoreHa {
        node: "c0".into(),
        term,
        replication: Arc::new(Replication::new(Duration::from_secs(1))),
    };
    Store::open_ha(dir, "store-test", &cfg, Some(ha)).unwrap().0
}

async fn create(store: &Store, name: &str, flavor: &str) -> Result<String, WriteError> {
    let spec = ServerSpec::new(
        name,
        "p",
        "u",
        flavor,
        "11111111-2222-4333-8444-555555555555",
    );
    store
        .write(move |w| w.create_server(NewServer { spec, id: None }))
        .await
        .map(|s| s.id)
}

async fn set_meta(store: &Store, value: &str) {
    let value = value.to_string();
    store
        .write(move |w| {
            w.tx.execute(
                "INSERT INTO meta (key, value) VALUES ('k', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [&value],
            )?;
            Ok(())
        })
        .await
        .unwrap();
}

/// Every row of every table, in a stable order.
fn dump(conn: &Connection) -> Vec<String> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let cols: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect();
                Ok(format!("{t}: {}", cols.join(" | ")))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows.sort();
        out.extend(rows);
    }
    out
}

/// The standby's copy: a snapshot of `active_db` installed at `dir`.
fn copy_to(active_db: &Path, dir: &Path) -> (Connection, Tip) {
    let incoming = dir.join("incoming.db");
    let tip = log::snapshot(&open_reader(active_db).unwrap(), &incoming).unwrap();
    log::install_snapshot(&dir.join(DB_FILE), &incoming).unwrap();
    (Connection::open(dir.join(DB_FILE)).unwrap(), tip)
}

fn catch_up(active_db: &Path, standby: &mut Connection) -> usize {
    let from = log::tip(standby).unwrap().seq;
    let entries = log::entries_after(&open_reader(active_db).unwrap(), from, 10_000).unwrap();
    for e in &entries {
        log::apply(standby, e).unwrap();
    }
    entries.len()
}

#[tokio::test]
async fn a_standby_applying_the_log_holds_the_actives_rows_and_nothing_rolled_back() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let active = open_active(a.path(), 1);
    let db = a.path().join(DB_FILE);
    let (mut standby, tip) = copy_to(&db, b.path());
    assert_eq!(tip, Tip { seq: 1, term: 1 }, "the start is the first entry");

    // Batches in which every other job fails and rolls back alone.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = active.clone();
        let flavor = if i % 2 == 0 { "2" } else { "missing" };
        tasks.spawn(async move { create(&store, &format!("s{i}"), flavor).await });
    }
    let mut made = 0;
    while let Some(r) = tasks.join_next().await {
        made += r.unwrap().is_ok() as usize;
    }
    assert_eq!(made, 4, "two hosts of 4 vCPUs hold four 2-vCPU servers");
    assert!(catch_up(&db, &mut standby) >= 1);

    let want = dump(&open_reader(&db).unwrap());
    assert_eq!(dump(&standby), want);
    let servers = want.iter().filter(|r| r.starts_with("servers: ")).count();
    assert_eq!(servers, 4, "no rolled-back server reached the log");
    assert_eq!(
        log::tip(&standby).unwrap(),
        log::tip(&open_reader(&db).unwrap()).unwrap()
    );
}

#[tokio::test]
async fn a_diverged_standby_refuses_an_entry_whole_and_a_snapshot_keeps_its_store_aside() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let active = open_active(a.path(), 3);
    let db = a.path().join(DB_FILE);
    let (mut standby, _) = copy_to(&db, b.path());
    set_meta(&active, "1").await;
    assert_eq!(catch_up(&db, &mut standby), 1);

    // The standby's copy changes behind the log's back.
    standby
        .execute("UPDATE meta SET value = '2' WHERE key = 'k'", [])
        .unwrap();
    set_meta(&active, "3").await;
    let before = log::tip(&standby).unwrap();
    let next = log::entries_after(&open_reader(&db).unwrap(), before.seq, 10).unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].term, 3);
    let err = log::apply(&mut standby, &next[0]).unwrap_err();
    assert!(matches!(err, LogError::Diverged { .. }), "{err}");
    assert_eq!(log::tip(&standby).unwrap(), before, "nothing applied");
    let k: String = standby
        .query_row("SELECT value FROM meta WHERE key = 'k'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(k, "2");

    // Out of order is refused by number.
    let mut skipped = next[0].clone();
    skipped.seq += 5;
    assert!(matches!(
        log::apply(&mut standby, &skipped),
        Err(LogError::OutOfOrder { .. })
    ));

    // The active holds the standby's tip, but not a tip it never wrote.
    let reader = open_reader(&db).unwrap();
    assert!(log::holds(&reader, before).unwrap());
    assert!(!log::holds(
        &reader,
        Tip {
            seq: before.seq,
            term: 2
        }
    )
    .unwrap());
    assert!(!log::holds(&reader, Tip::default()).unwrap());

    drop(standby);
    let (standby, _) = copy_to(&db, b.path());
    assert_eq!(dump(&standby), dump(&reader));
    let aside = Connection::open(b.path().join(format!("{DB_FILE}.replaced"))).unwrap();
    let k: String = aside
        .query_row("SELECT value FROM meta WHERE key = 'k'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(k, "2", "the diverged store is kept for the operator");
}

#[tokio::test]
async fn each_term_writes_with_fresh_actors() {
    let dir = tempfile::tempdir().unwrap();
    let actors = |dir: &Path| {
        let c = open_reader(&dir.join(DB_FILE)).unwrap();
        let get = |k: &str| -> String {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [k], |r| r.get(0))
                .unwrap()
        };
        (get("intent_actor"), get("status_actor"), get("ha_term"))
    };
    drop(open_active(dir.path(), 1));
    let first = actors(dir.path());
    assert!(
        first.1.starts_with("status:store-test#c0.1."),
        "{}",
        first.1
    );
    assert_eq!(first.2, "1");
    drop(open_active(dir.path(), 2));
    let second = actors(dir.path());
    assert_ne!(first.0, second.0, "a new intent actor");
    assert!(
        second.1.starts_with("status:store-test#c0.2."),
        "{}",
        second.1
    );
}

#[test]
fn a_write_waits_for_the_standby_then_goes_on_alone_when_it_lags() {
    let repl = Arc::new(Replication::new(Duration::from_millis(300)));
    // No standby: nothing waits.
    let t = Instant::now();
    repl.committed(1);
    assert!(t.elapsed() < Duration::from_millis(300));
    assert!(!repl.attached());
    assert!(repl.unprotected_since().is_some());
    // The standby confirms the tip: attached.
    let link = repl.begin_link();
    repl.ack(link, 1);
    assert!(repl.attached());
    assert!(repl.unprotected_since().is_none());
    // Entry 2 waits for its ack.
    let acker = {
        let repl = repl.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            repl.ack(link, 2);
        })
    };
    let t = Instant::now();
    repl.committed(2);
    assert!(
        t.elapsed() >= Duration::from_millis(100),
        "waited for the ack"
    );
    acker.join().unwrap();
    assert!(repl.attached());
    // Entry 3 is never confirmed: the wait ends at the deadline and the
    // standby counts as lagging, so entry 4 does not wait.
    let t = Instant::now();
    repl.committed(3);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(!repl.attached());
    assert!(repl.unprotected_since().is_some());
    let t = Instant::now();
    repl.committed(4);
    assert!(t.elapsed() < Duration::from_millis(300));
    // Caught up again: attached.
    repl.ack(link, 4);
    assert!(repl.attached());
    // A new link replaces it; the old one's late acks and end change
    // nothing of the new one's.
    let newer = repl.begin_link();
    assert!(!repl.attached());
    repl.ack(link, 4);
    assert!(!repl.attached(), "an old link's ack");
    repl.ack(newer, 4);
    assert!(repl.attached());
    repl.end_link(link);
    assert!(repl.attached(), "an old link's end");
    repl.end_link(newer);
    assert!(!repl.attached());
}
