//! The site's store: SQLite on disk, durable before acknowledged.
//!
//! - One writer thread owns the only write connection. Every change is a job
//!   sent to it; the writer runs a batch of queued jobs in one transaction,
//!   each inside its own savepoint (a job that fails is rolled back alone),
//!   commits with `synchronous = FULL` in WAL mode, and only then answers
//!   each caller. So an API call that returned success is on disk, and a
//!   `kill -9` at any point leaves either all of a job or none of it.
//! - The writer also holds the authoritative host usage the scheduler works
//!   from, so scheduling and claiming happen in one serial step: concurrent
//!   creates can never oversubscribe a host.
//! - Reads use a small pool of read-only connections on blocking threads;
//!   WAL lets them run while the writer commits.

pub mod accounts;
pub mod alarms;
mod images;
pub(crate) mod inventory;
mod journal;
pub mod network;
mod quota;
mod rows;
mod schema;
mod servers;
mod volumes;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use roost_common::model::{Flavor, Image, Server, ServerGroup, Snapshot, Usage, Volume};
use roost_common::FieldError;

use crate::scheduler::NoValidHost;

pub use images::{cold as cold_image, Uploaded};
pub use inventory::{HypervisorView, Identity};
pub use journal::Applied;
pub use quota::Quota;
pub use servers::{shown_status, NewServer, ServerIntent, ServerQuery};
pub use volumes::device as volume_device;
pub use writer::WriteCtx;

/// The file name of the SQLite database inside the data dir.
pub const DB_FILE: &str = "roost-agent.db";

/// A failure of the store itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(String),
    #[error("store holds data it cannot read: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Schema(String),
    /// The config disagrees with what the store holds (e.g. a host with
    /// servers on it was removed from the config).
    #[error("{0}")]
    Inventory(String),
    #[error("the store is shutting down")]
    Closed,
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e.to_string())
    }
}

impl From<crate::ha::log::LogError> for StoreError {
    fn from(e: crate::ha::log::LogError) -> Self {
        StoreError::Sqlite(format!("replication log: {e}"))
    }
}

/// How a store opens on the active node of a site with two controller
/// nodes (`crate::ha`).
#[derive(Debug, Clone)]
pub struct StoreHa {
    /// This node's name.
    pub node: String,
    /// The term it is active in: the store takes fresh actors for it.
    pub term: u64,
    /// What each committed batch waits on before it is acknowledged.
    pub replication: Arc<crate::ha::Replication>,
}

/// Why a write was refused. Every variant but `Store` means nothing changed
/// because the request itself was wrong or could not be met.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    NoValidHost(#[from] NoValidHost),
    /// The region's allotment for this site is used up (see `quota`).
    #[error("{0}")]
    Quota(String),
    /// The resource refuses this change whoever asks (a protected image).
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for WriteError {
    fn from(e: rusqlite::Error) -> Self {
        WriteError::Store(e.into())
    }
}

/// One entry of the conflict journal: a losing intent value and the winner.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConflictEntry {
    pub seq: i64,
    pub kind: String,
    pub resource_id: String,
    pub field: String,
    pub winner: roost_sync::Stamped,
    pub loser: roost_sync::Stamped,
    pub recorded_at: String,
}

/// A handle on the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    jobs: mpsc::Sender<writer::Job>,
    readers: Arc<ReaderPool>,
    /// The site's documents; the writer holds the lock while a batch runs.
    docs: Arc<Mutex<roost_sync::Docs>>,
    /// Signalled after each commit that changed the documents.
    doc_changes: Arc<tokio::sync::Notify>,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir`, migrates it and
    /// starts the writer thread. `site_id` must match the site the store was
    /// created for.
    pub fn open(
        data_dir: &Path,
        site_id: &str,
        config: &roost_common::config::SiteConfig,
    ) -> Result<(Store, Identity), StoreError> {
        Self::open_ha(data_dir, site_id, config, None)
    }

    /// As [`Store::open`]; with `ha`, every batch (the start's own changes
    /// included) goes to the replication log and waits for the standby,
    /// and the store writes with fresh actors for `ha.term`.
    pub fn open_ha(
        data_dir: &Path,
        site_id: &str,
        config: &roost_common::config::SiteConfig,
        ha: Option<StoreHa>,
    ) -> Result<(Store, Identity), StoreError> {
        let path = data_dir.join(DB_FILE);
        let mut conn = open_migrated(&path)?;
        let (identity, journal, seq) = {
            let tx = conn.transaction()?;
            let mut recording = match &ha {
                Some(h) => {
                    let session = crate::ha::log::record(&tx)?;
                    inventory::take_term(&tx, site_id, &h.node, h.term)?;
                    Some(session)
                }
                None => None,
            };
            let identity = inventory::bootstrap(&tx, site_id, config)?;
            // In the transaction: a new store's documents, built from its
            // rows, are logged with the rest.
            let journal = journal::Journal::open(&tx, site_id, identity.intent_actor.clone())?;
            let seq = match (recording.as_mut(), &ha) {
                (Some(r), Some(h)) => crate::ha::log::append(&tx, r, h.term)?,
                _ => None,
            };
            drop(recording);
            if let Some(h) = &ha {
                h.replication.seed(crate::ha::log::tip(&tx)?.seq);
            }
            tx.commit()?;
            (identity, journal, seq)
        };
        if let (Some(seq), Some(h)) = (seq, &ha) {
            h.replication.committed(seq);
        }
        let hosts = inventory::load_host_views(&conn)?;
        let docs = journal.docs.clone();
        let doc_changes = journal.changed.clone();
        let (tx, rx) = mpsc::channel(1024);
        writer::spawn(
            conn,
            hosts,
            config.scheduler.clone(),
            journal,
            rx,
            ha.map(|h| (h.term, h.replication)),
        )?;
        let readers = Arc::new(ReaderPool {
            path,
            idle: Mutex::new(Vec::new()),
        });
        Ok((
            Store {
                jobs: tx,
                readers,
                docs,
                doc_changes,
            },
            identity,
        ))
    }

    /// Runs `f` inside the writer's transaction and answers once it is
    /// committed. An `Err` from `f` rolls back what `f` did and nothing else.
    pub async fn write<R, F>(&self, f: F) -> Result<R, WriteError>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<R, WriteError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: writer::Job = Box::new(move |ctx| {
            let result = f(ctx);
            let ok = result.is_ok();
            let reply: writer::Reply = Box::new(move |committed: Result<(), StoreError>| {
                let _ = tx.send(committed.map_err(WriteError::from).and(result));
            });
            (ok, reply)
        });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Whether the region's intent holds a live `kind/id` (a resource the
    /// region gave this site, which only the region takes back).
    pub fn region_gave(&self, kind: &str, id: &str) -> bool {
        let d = self.docs.lock().unwrap_or_else(|e| e.into_inner());
        matches!(d.intent.resource(kind, id), Ok(Some(v)) if !v.deleted)
    }

    /// The site's documents, for the sync session.
    pub fn docs(&self) -> Arc<Mutex<roost_sync::Docs>> {
        self.docs.clone()
    }

    /// Brings the tables in line with the intent document (after changes
    /// from the region arrived).
    pub async fn apply_intent(&self) -> Result<Applied, WriteError> {
        self.write(|w| w.apply_intent()).await
    }

    /// The site's alarms, newest first: the active ones, or the latest
    /// cleared ones (`active == false`, at most the published number).
    pub async fn alarms(
        &self,
        active: bool,
    ) -> Result<Vec<roost_common::model::AlarmStatus>, WriteError> {
        self.read(move |c| {
            Ok(alarms::list(
                c,
                active,
                if active {
                    10_000
                } else {
                    alarms::PUBLISHED_CLEARED
                },
            )?)
        })
        .await
    }

    /// The conflict journal, oldest first.
    pub async fn conflicts(&self) -> Result<Vec<ConflictEntry>, WriteError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT seq, kind, resource_id, field, winner, loser, recorded_at FROM conflicts ORDER BY seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, String>(6)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (seq, kind, resource_id, field, winner, loser, recorded_at) = row?;
                let parse = |t: &str| {
                    serde_json::from_str(t)
                        .map_err(|e| StoreError::Corrupt(format!("conflict {seq}: {e}")))
                };
                out.push(ConflictEntry {
                    seq,
                    kind,
                    resource_id,
                    field,
                    winner: parse(&winner)?,
                    loser: parse(&loser)?,
                    recorded_at,
                });
            }
            Ok(out)
        })
        .await
    }

    /// The sync state kept for `peer`, if any.
    pub async fn sync_state(
        &self,
        peer: String,
    ) -> Result<Option<roost_sync::Persisted>, WriteError> {
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT intent, status FROM sync_peers WHERE peer = ?1",
                [&peer],
                |r| {
                    Ok(roost_sync::Persisted {
                        intent: r.get(0)?,
                        status: r.get(1)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Keeps `peer`'s sync state, so the next connection sends only what is new.
    pub async fn save_sync_state(
        &self,
        peer: String,
        state: roost_sync::Persisted,
    ) -> Result<(), WriteError> {
        self.write(move |w| {
            w.tx.execute(
                "INSERT INTO sync_peers (peer, intent, status, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (peer) DO UPDATE SET intent = excluded.intent, status = excluded.status, updated_at = excluded.updated_at",
                rusqlite::params![peer, state.intent, state.status, rows::time(&w.now)],
            )?;
            Ok(())
        })
        .await
    }

    /// Signalled after each commit that changed the documents.
    pub fn doc_changes(&self) -> Arc<tokio::sync::Notify> {
        self.doc_changes.clone()
    }

    /// Whether the writer thread still takes jobs. It stops only on a fault
    /// it cannot repair (see `writer`), and `/healthz` reports that.
    pub fn writer_alive(&self) -> bool {
        !self.jobs.is_closed()
    }

    /// Runs `f` on a read connection, on a blocking thread.
    pub async fn read<R, F>(&self, f: F) -> Result<R, WriteError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, WriteError> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let r = f(&conn);
            pool.give_back(conn);
            r
        })
        .await
        .map_err(|e| StoreError::Sqlite(format!("read task failed: {e}")))?
    }

    // Convenience reads used by the API and reconcilers.

    pub async fn server(&self, id: String) -> Result<Option<Server>, WriteError> {
        self.read(move |c| Ok(rows::get(c, "servers", &id)?)).await
    }

    pub async fn servers(&self, q: ServerQuery) -> Result<Vec<Server>, WriteError> {
        self.read(move |c| servers::list(c, &q)).await
    }

    pub async fn flavors(&self) -> Result<Vec<Flavor>, WriteError> {
        self.read(|c| Ok(rows::list(c, "flavors", "1", [])?)).await
    }

    pub async fn flavor(&self, id: String) -> Result<Option<Flavor>, WriteError> {
        self.read(move |c| Ok(rows::get(c, "flavors", &id)?)).await
    }

    pub async fn image(&self, id: String) -> Result<Option<Image>, WriteError> {
        self.read(move |c| Ok(rows::get(c, "images", &id)?)).await
    }

    pub async fn images(&self) -> Result<Vec<Image>, WriteError> {
        self.read(|c| Ok(rows::list(c, "images", "1", [])?)).await
    }

    /// Available snapshots whose file is here.
    pub async fn local_snapshots(&self) -> Result<Vec<Snapshot>, WriteError> {
        self.read(|c| Ok(volumes::available_snapshots(c, false)?))
            .await
    }

    /// Keys of copies at the region the site no longer needs (deleted
    /// snapshots'), oldest first: the backup worker tells the region.
    pub async fn region_forgets(&self) -> Result<Vec<String>, WriteError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT key FROM region_forget ORDER BY since, key")?;
            let keys = stmt
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(keys)
        })
        .await
    }

    /// Cold snapshots (`recalled`: someone wants them back).
    pub async fn cold_snapshots(&self) -> Result<Vec<Snapshot>, WriteError> {
        self.read(|c| Ok(volumes::available_snapshots(c, true)?))
            .await
    }

    /// Snapshots being read, whose files may not go.
    pub async fn pinned_snapshots(&self) -> Result<std::collections::HashSet<String>, WriteError> {
        self.read(|c| Ok(volumes::pinned_snapshots(c)?)).await
    }

    /// Images whose files may not move (see `storage::tier`).
    pub async fn pinned_images(&self) -> Result<std::collections::HashSet<String>, WriteError> {
        self.read(|c| Ok(images::pinned(c)?)).await
    }

    pub async fn server_groups(
        &self,
        project_id: Option<String>,
    ) -> Result<Vec<ServerGroup>, WriteError> {
        self.read(move |c| servers::groups(c, project_id.as_deref()))
            .await
    }

    /// Audit ids of this site's tokens revoked and not yet expired at `now`.
    pub async fn revoked_tokens(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<std::collections::HashSet<String>, WriteError> {
        self.read(move |c| {
            let mut stmt =
                c.prepare_cached("SELECT audit_id FROM revoked_tokens WHERE expires_at > ?1")?;
            let ids = stmt
                .query_map([rows::time(&now)], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(ids)
        })
        .await
    }

    /// What the site knows to check the region's tokens with.
    pub async fn region_trust(&self) -> Result<roost_sync::token::Trust, WriteError> {
        self.read(|c| Ok(journal::read_trust(c)?)).await
    }

    /// The region's allotment for this site (if any) and what is claimed.
    pub async fn quota_usage(&self) -> Result<(Option<Quota>, u64, Usage), WriteError> {
        self.read(|c| {
            let (instances, used) = quota::claimed(c)?;
            Ok((quota::read(c)?, instances, used))
        })
        .await
    }

    /// Networking resources a project holds: `(Neutron's quota name, count)`.
    pub async fn network_usage(
        &self,
        project: String,
    ) -> Result<Vec<(&'static str, u64)>, WriteError> {
        self.read(move |c| {
            let count = |sql: &str| -> Result<u64, WriteError> {
                Ok(c.query_row(sql, [&project], |r| r.get::<_, i64>(0))?.max(0) as u64)
            };
            Ok(vec![
                (
                    "network",
                    count("SELECT COUNT(*) FROM networks WHERE project_id = ?1")?,
                ),
                (
                    "subnet",
                    count("SELECT COUNT(*) FROM subnets WHERE project_id = ?1")?,
                ),
                (
                    "port",
                    count("SELECT COUNT(*) FROM ports WHERE project_id = ?1")?,
                ),
                ("router", 0),
                ("floatingip", 0),
                (
                    "security_group",
                    count("SELECT COUNT(*) FROM security_groups WHERE project_id = ?1")?,
                ),
                (
                    "security_group_rule",
                    count(
                        "SELECT COUNT(*) FROM security_group_rules r JOIN security_groups g
                         ON g.id = r.group_id WHERE g.project_id = ?1",
                    )?,
                ),
            ])
        })
        .await
    }

    /// Volumes in scope (`None`: every project's), oldest first.
    pub async fn volumes(&self, scope: network::Scope) -> Result<Vec<Volume>, WriteError> {
        self.read(move |c| Ok(volumes::list(c, "volumes", &scope)?))
            .await
    }

    pub async fn volume(&self, id: String, scope: network::Scope) -> Result<Volume, WriteError> {
        self.read(move |c| volumes::volume_in(c, &id, &scope)).await
    }

    /// Snapshots in scope, oldest first.
    pub async fn snapshots(&self, scope: network::Scope) -> Result<Vec<Snapshot>, WriteError> {
        self.read(move |c| Ok(volumes::list(c, "volume_snapshots", &scope)?))
            .await
    }

    pub async fn snapshot(
        &self,
        id: String,
        scope: network::Scope,
    ) -> Result<Snapshot, WriteError> {
        self.read(move |c| volumes::snapshot_in(c, &id, &scope))
            .await
    }

    /// The files of these volumes, in order, for a server's domain.
    pub async fn volume_files(
        &self,
        ids: Vec<String>,
    ) -> Result<Vec<(String, std::path::PathBuf)>, WriteError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.read(move |c| Ok(volumes::files(c, &ids)?)).await
    }

    /// Volumes to bring from a backup at the region.
    pub async fn restores(&self) -> Result<Vec<Volume>, WriteError> {
        self.read(|c| Ok(volumes::restores(c)?)).await
    }

    /// Every `central-replicated` volume that ought to have a current
    /// backup, for the stale-backup alarm.
    pub async fn replicated_volumes(&self) -> Result<Vec<Volume>, WriteError> {
        self.read(|c| Ok(volumes::replicated(c)?)).await
    }

    /// The `central-replicated` volumes at rest, for the backup worker.
    pub async fn backup_candidates(&self) -> Result<Vec<Volume>, WriteError> {
        self.read(|c| Ok(volumes::backup_candidates(c)?)).await
    }

    /// The storage worker's work now (see `crate::storage`).
    pub async fn storage_work(&self) -> Result<Vec<crate::storage::plan::Work>, WriteError> {
        self.read(|c| Ok(volumes::work(c)?)).await
    }

    /// (volumes, gigabytes, snapshots) held by a project, or by all.
    pub async fn volume_usage(&self, scope: network::Scope) -> Result<(u64, u64, u64), WriteError> {
        self.read(move |c| Ok(volumes::usage(c, &scope)?)).await
    }

    pub async fn hypervisors(&self) -> Result<Vec<HypervisorView>, WriteError> {
        self.read(inventory::hypervisors).await
    }
}

/// Opens a connection with Roost's pragmas: WAL, full sync on commit,
/// foreign keys on, a busy timeout for readers.
/// Creates the database file, if it is not there, readable by its owner
/// alone; SQLite gives the WAL and shared-memory files the same mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Sqlite(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

/// The store at `path` for writing, created and migrated as needed.
pub(crate) fn open_migrated(path: &Path) -> Result<Connection, StoreError> {
    create_private(path)?;
    let mut conn = open_conn(path, false)?;
    schema::migrate(&mut conn)?;
    Ok(conn)
}

/// A read-only connection to the store at `path`.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    open_conn(path, true)
}

fn open_conn(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Sqlite(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "cache_size", -1024)?;
    Ok(conn)
}

#[derive(Debug)]
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    const MAX_IDLE: usize = 2;

    fn take(&self) -> Result<Connection, StoreError> {
        let idle = self.idle.lock().map_err(|_| StoreError::Closed)?.pop();
        match idle {
            Some(c) => Ok(c),
            None => open_conn(&self.path, true),
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < Self::MAX_IDLE {
                idle.push(conn);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod volume_tests;
