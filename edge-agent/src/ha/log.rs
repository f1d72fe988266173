//! The replication log: every committed batch's row changes, recorded by
//! SQLite's session extension in the batch's own transaction, so the log
//! and the tables never disagree.
//!
//! The active appends ([`record`], [`append`]); the standby applies each
//! entry and appends the same entry to its own log in one transaction
//! ([`apply`]), so its log's tip is exactly what it holds. A standby whose
//! tip the active's log no longer has, or has with another term, gets a
//! whole copy instead ([`snapshot`], [`install_snapshot`]).

use std::path::{Path, PathBuf};

use rusqlite::session::{ConflictAction, ConflictType, Session};
use rusqlite::{Connection, OptionalExtension};

/// The log's table; never itself recorded.
pub const TABLE: &str = "replication_log";
/// Entries kept for a standby to catch up from; one further behind gets a
/// snapshot.
pub const KEEP: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("entry {seq} does not follow this store's tip {tip}")]
    OutOfOrder { seq: u64, tip: u64 },
    #[error("entry {seq} does not apply to this store ({what}); it needs a snapshot")]
    Diverged { seq: u64, what: String },
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// One batch's row changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// The term of the active that wrote it.
    pub term: u64,
    pub changeset: Vec<u8>,
}

/// Where a store's log ends: the last entry's sequence number and term,
/// `(0, 0)` for an empty log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tip {
    pub seq: u64,
    pub term: u64,
}

/// Starts recording every table's row changes but the log's own, on
/// `conn` (the writer's connection, inside its transaction).
pub fn record(conn: &Connection) -> Result<Session<'_>, LogError> {
    let mut session = Session::new(conn)?;
    session.table_filter(Some(|t: &str| t != TABLE));
    session.attach(None::<&str>)?;
    Ok(session)
}

/// Appends what `session` recorded as the next entry of `term` and trims
/// the log to [`KEEP`] entries. Returns the entry's sequence number, or
/// `None` when the rows did not change.
pub fn append(
    conn: &Connection,
    session: &mut Session<'_>,
    term: u64,
) -> Result<Option<u64>, LogError> {
    if session.is_empty() {
        return Ok(None);
    }
    let mut changeset = Vec::new();
    session.changeset_strm(&mut changeset)?;
    if changeset.is_empty() {
        return Ok(None);
    }
    let seq = tip(conn)?.seq + 1;
    insert(
        conn,
        &Entry {
            seq,
            term,
            changeset,
        },
    )?;
    Ok(Some(seq))
}

fn insert(conn: &Connection, e: &Entry) -> Result<(), LogError> {
    conn.execute(
        "INSERT INTO replication_log (seq, term, changeset) VALUES (?1, ?2, ?3)",
        rusqlite::params![e.seq as i64, e.term as i64, e.changeset],
    )?;
    conn.execute(
        "DELETE FROM replication_log WHERE seq <= ?1",
        [e.seq.saturating_sub(KEEP) as i64],
    )?;
    Ok(())
}

/// The log's tip.
pub fn tip(conn: &Connection) -> Result<Tip, LogError> {
    Ok(conn
        .query_row(
            "SELECT seq, term FROM replication_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| {
                Ok(Tip {
                    seq: r.get::<_, i64>(0)? as u64,
                    term: r.get::<_, i64>(1)? as u64,
                })
            },
        )
        .optional()?
        .unwrap_or_default())
}

/// Whether this log holds `tip` itself: then the store that reports it
/// holds what this one held at that entry, and can go on from there.
pub fn holds(conn: &Connection, tip: Tip) -> Result<bool, LogError> {
    if tip.seq == 0 {
        return Ok(false);
    }
    let term: Option<i64> = conn
        .query_row(
            "SELECT term FROM replication_log WHERE seq = ?1",
            [tip.seq as i64],
            |r| r.get(0),
        )
        .optional()?;
    Ok(term == Some(tip.term as i64))
}

/// Up to `limit` entries after `seq`, in order.
pub fn entries_after(conn: &Connection, seq: u64, limit: usize) -> Result<Vec<Entry>, LogError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, term, changeset FROM replication_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(rusqlite::params![seq as i64, limit as i64], |r| {
        Ok(Entry {
            seq: r.get::<_, i64>(0)? as u64,
            term: r.get::<_, i64>(1)? as u64,
            changeset: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Applies the active's entry on the standby, with the entry itself, in one
/// transaction. Any conflict means the stores differ, so nothing is applied.
pub fn apply(conn: &mut Connection, e: &Entry) -> Result<(), LogError> {
    let tx = conn.transaction()?;
    let tip = tip(&tx)?;
    if e.seq != tip.seq + 1 {
        return Err(LogError::OutOfOrder {
            seq: e.seq,
            tip: tip.seq,
        });
    }
    let conflict = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let seen = conflict.clone();
    let applied = tx.apply_strm(
        &mut e.changeset.as_slice(),
        None::<fn(&str) -> bool>,
        move |kind: ConflictType, _item| {
            if let Ok(mut c) = seen.lock() {
                c.get_or_insert_with(|| format!("{kind:?}"));
            }
            ConflictAction::SQLITE_CHANGESET_ABORT
        },
    );
    let what = conflict.lock().ok().and_then(|mut c| c.take());
    match (applied, what) {
        (Ok(()), None) => {}
        (Ok(()), Some(what)) | (Err(_), Some(what)) => {
            return Err(LogError::Diverged { seq: e.seq, what })
        }
        (Err(err), None) => {
            return Err(LogError::Diverged {
                seq: e.seq,
                what: err.to_string(),
            })
        }
    }
    insert(&tx, e)?;
    tx.commit()?;
    Ok(())
}

/// A consistent copy of the store at `path`, written to `to` (which must
/// not exist), with the tip it holds.
pub fn snapshot(conn: &Connection, to: &Path) -> Result<Tip, LogError> {
    let _ = std::fs::remove_file(to);
    let to_str = to
        .to_str()
        .ok_or_else(|| LogError::Snapshot(format!("{} is not UTF-8", to.display())))?;
    conn.execute("VACUUM INTO ?1", [to_str])?;
    let copy = Connection::open_with_flags(to, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    tip(&copy)
}

/// Replaces the store at `db` by the snapshot at `incoming`: the old store
/// is kept beside it as `<db>.replaced` (the last one only), for an
/// operator to look into if it held writes the active never had.
pub fn install_snapshot(db: &Path, incoming: &Path) -> Result<(), LogError> {
    let io = |what: &str, e: std::io::Error| LogError::Snapshot(format!("{what}: {e}"));
    // Checked first: a copy that does not open must not replace anything.
    {
        let copy =
            Connection::open_with_flags(incoming, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let ok: String = copy.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(LogError::Snapshot(format!(
                "the copy fails its check: {ok}"
            )));
        }
    }
    let side = |suffix: &str| PathBuf::from(format!("{}{suffix}", db.display()));
    if db.exists() {
        // A clean copy of the old store, WAL included.
        let old = Connection::open(db)?;
        let _ = std::fs::remove_file(side(".replaced"));
        old.execute("VACUUM INTO ?1", [side(".replaced").display().to_string()])?;
        drop(old);
    }
    for suffix in ["-wal", "-shm"] {
        match std::fs::remove_file(side(suffix)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove the old store's WAL", e)),
        }
    }
    std::fs::rename(incoming, db).map_err(|e| io("cannot move the copy in place", e))?;
    if let Some(dir) = db.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot sync the data dir", e))?;
    }
    Ok(())
}
