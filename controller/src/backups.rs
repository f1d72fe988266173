//! The volume backups sites send the region (`central-replicated`
//! volumes), kept in their own SQLite file, `<data dir>/backups.db`.
//!
//! Content-addressed per site: a chunk (`roost_sync::chunks`) is kept once
//! for a site, however many of its backups and volumes hold it, so a
//! site's next backup of a volume moves only the chunks that changed.
//! Sites share nothing: one cannot learn whether another holds a chunk,
//! nor list in its backup a chunk it never sent. A backup is its chunk list
//! in order (`backup_chunks`), written in the transaction that checks
//! every chunk is here: a backup listed is whole.
//!
//! [`RegionBackups`] is the bulk stream's [`BackupSink`], and serves a
//! site its own backups back (`backup:<id>` on the same streams, chunk by
//! chunk, only chunks of that backup; `latest:<key>` for the newest one
//! offered under a key). A site in the cold tier sends its volume
//! snapshots too, each under the snapshot's id, and brings them back with
//! `latest:`. It keeps the last
//! [`KEEP`] backups of each volume; chunks no backup lists go when a backup
//! is pruned, and chunks of offers never committed (a cut the site never
//! resumed) after [`ORPHAN_AGE_SECS`]. A volume deleted at its site keeps
//! its backups: they are what is left of it.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use roost_sync::bulk::BackupSink;
use roost_sync::chunks::{hex, ChunkRef, Hash, Manifest};

/// Backups kept per volume.
pub const KEEP: i64 = 3;
/// Age after which a chunk no backup lists is removed: a backup cut and
/// not resumed within it starts over.
pub const ORPHAN_AGE_SECS: i64 = 7 * 24 * 3600;
/// Chunk bytes one site may hold here (chunks count against the site
/// that sent them first): a site cannot fill the region's disk.
pub const SITE_QUOTA_BYTES: i64 = 256 << 30;
/// How often the orphan sweep runs (at a commit).
const SWEEP_EVERY_SECS: i64 = 3600;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chunks (
    site TEXT NOT NULL,
    hash BLOB NOT NULL,
    data BLOB NOT NULL,
    stored_at INTEGER NOT NULL,
    len INTEGER NOT NULL,
    PRIMARY KEY (site, hash)
);
CREATE INDEX IF NOT EXISTS chunks_by_site ON chunks(site, len);
CREATE INDEX IF NOT EXISTS chunks_by_age ON chunks(stored_at);
CREATE TABLE IF NOT EXISTS backups (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    volume TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS backups_by_volume ON backups(site, volume, id);
CREATE TABLE IF NOT EXISTS backup_chunks (
    backup INTEGER NOT NULL REFERENCES backups(id) ON DELETE CASCADE,
    ord INTEGER NOT NULL,
    hash BLOB NOT NULL,
    len INTEGER NOT NULL,
    PRIMARY KEY (backup, ord)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS backup_chunks_by_hash ON backup_chunks(hash, backup);
";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Refused(String),
}

/// One kept backup, as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupRow {
    pub id: i64,
    pub site: String,
    pub volume: String,
    pub sha256: String,
    pub size: u64,
    pub chunks: u64,
    pub at: String,
}

#[derive(Debug)]
pub struct RegionBackups {
    conn: Mutex<Connection>,
    last_sweep: Mutex<i64>,
    /// Chunk bytes one site may hold ([`SITE_QUOTA_BYTES`]).
    quota: i64,
}

/// Backup keys become nothing on disk, but are shown: ids as sites make
/// them (UUIDs).
fn check_key(key: &str) -> Result<(), String> {
    roost_common::ids::check_uuid("volume", key).map_err(|e| e.to_string())
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

impl RegionBackups {
    pub fn open(data_dir: &Path) -> Result<RegionBackups, BackupError> {
        let conn = Connection::open(data_dir.join("backups.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(RegionBackups {
            conn: Mutex::new(conn),
            last_sweep: Mutex::new(0),
            quota: SITE_QUOTA_BYTES,
        })
    }

    /// The same store with another per-site quota, in bytes.
    pub fn with_quota(mut self, bytes: i64) -> RegionBackups {
        self.quota = bytes;
        self
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A site's kept backups (one volume's, if given), newest first.
    pub fn list(&self, site: &str, volume: Option<&str>) -> Result<Vec<BackupRow>, BackupError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, site, volume, sha256, size, chunks, at FROM backups
             WHERE site = ?1 AND (?2 IS NULL OR volume = ?2) ORDER BY id DESC",
        )?;
        let rows = stmt.query_map(params![site, volume], |r| {
            Ok(BackupRow {
                id: r.get(0)?,
                site: r.get(1)?,
                volume: r.get(2)?,
                sha256: r.get(3)?,
                size: r.get::<_, i64>(4)? as u64,
                chunks: r.get::<_, i64>(5)? as u64,
                at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A kept backup's chunk list, in order.
    pub fn manifest(&self, id: i64) -> Result<Vec<ChunkRef>, BackupError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT hash, len FROM backup_chunks WHERE backup = ?1 ORDER BY ord")?;
        let rows = stmt.query_map([id], |r| {
            let hash: Vec<u8> = r.get(0)?;
            Ok((hash, r.get::<_, i64>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (hash, len) = row?;
            out.push(ChunkRef {
                hash: hash.try_into().map_err(|_| {
                    BackupError::Refused("a stored chunk name is not 32 bytes".into())
                })?,
                len: len as u32,
            });
        }
        Ok(out)
    }

    /// Prefix of the bulk-stream key a site fetches one of its backups by
    /// (`backup:<id>`), beside the region's images.
    pub const KEY_PREFIX: &'static str = "backup:";

    /// Prefix of the bulk-stream key that names a site's newest backup
    /// offered under a key (`latest:<key>`).
    pub const LATEST_PREFIX: &'static str = "latest:";

    /// The id of `site`'s newest backup offered under `key`.
    pub fn newest(&self, site: &str, key: &str) -> Result<i64, BackupError> {
        self.conn()
            .query_row(
                "SELECT id FROM backups WHERE site = ?1 AND volume = ?2 ORDER BY id DESC LIMIT 1",
                params![site, key],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| {
                BackupError::Refused(format!("site {site} has no backup of {key} at the region"))
            })
    }

    /// One of `site`'s backups as a manifest, to bring it back.
    pub fn site_manifest(&self, site: &str, id: i64) -> Result<Manifest, BackupError> {
        let row = self
            .list(site, None)?
            .into_iter()
            .find(|b| b.id == id)
            .ok_or_else(|| {
                BackupError::Refused(format!("site {site} has no backup {id} at the region"))
            })?;
        let mut sha256 = [0u8; 32];
        for (i, b) in sha256.iter_mut().enumerate() {
            *b = row
                .sha256
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| BackupError::Refused(format!("backup {id} has a damaged sha256")))?;
        }
        Ok(Manifest {
            sha256,
            chunks: self.manifest(id)?,
        })
    }

    /// A chunk of one of `site`'s backups (no other chunk: a site reads
    /// only what it backed up).
    pub fn site_chunk(&self, site: &str, id: i64, hash: &Hash) -> Result<Vec<u8>, BackupError> {
        let listed: bool = self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM backup_chunks c JOIN backups b ON b.id = c.backup
             WHERE b.site = ?1 AND b.id = ?2 AND c.hash = ?3)",
            params![site, id, &hash[..]],
            |r| r.get(0),
        )?;
        if !listed {
            return Err(BackupError::Refused(format!(
                "chunk {} is not in backup {id} of site {site}",
                hex(hash)
            )));
        }
        self.chunk(site, hash)
    }

    /// One of a site's chunks, checked against its name.
    pub fn chunk(&self, site: &str, hash: &Hash) -> Result<Vec<u8>, BackupError> {
        let data: Option<Vec<u8>> = self
            .conn()
            .query_row(
                "SELECT data FROM chunks WHERE site = ?1 AND hash = ?2",
                params![site, &hash[..]],
                |r| r.get(0),
            )
            .optional()?;
        let data = data.ok_or_else(|| {
            BackupError::Refused(format!("chunk {} is not in the backup store", hex(hash)))
        })?;
        if <[u8; 32]>::from(Sha256::digest(&data)) != *hash {
            return Err(BackupError::Refused(format!(
                "chunk {} in the backup store is damaged",
                hex(hash)
            )));
        }
        Ok(data)
    }

    /// Removes chunks no backup lists that arrived before `before` (unix
    /// seconds); how many went.
    pub fn sweep(&self, before: i64) -> Result<usize, BackupError> {
        Ok(self.conn().execute(
            "DELETE FROM chunks WHERE stored_at < ?1
             AND NOT EXISTS (SELECT 1 FROM backup_chunks c JOIN backups b ON b.id = c.backup
                             WHERE c.hash = chunks.hash AND b.site = chunks.site)",
            [before],
        )?)
    }

    fn commit_backup(&self, site: &str, key: &str, m: &Manifest) -> Result<i64, BackupError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        // The same file again (its first commit's answer was lost, say):
        // the kept backup stands, and pushes no older one out.
        let newest: Option<(i64, String, i64)> = tx
            .query_row(
                "SELECT id, sha256, size FROM backups WHERE site = ?1 AND volume = ?2 ORDER BY id DESC LIMIT 1",
                params![site, key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((id, sha, size)) = newest {
            if sha == hex(&m.sha256) && size == m.size() as i64 {
                return Ok(id);
            }
        }
        {
            let mut held =
                tx.prepare_cached("SELECT 1 FROM chunks WHERE site = ?1 AND hash = ?2")?;
            let mut lacking = 0usize;
            let mut seen = std::collections::HashSet::new();
            for c in &m.chunks {
                if seen.insert(c.hash) && !held.exists(params![site, &c.hash[..]])? {
                    lacking += 1;
                }
            }
            if lacking > 0 {
                return Err(BackupError::Refused(format!(
                    "backup {key} lacks {lacking} chunks; offer it again"
                )));
            }
        }
        tx.execute(
            "INSERT INTO backups (site, volume, sha256, size, chunks, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                site,
                key,
                hex(&m.sha256),
                m.size() as i64,
                m.chunks.len() as i64,
                crate::fleet::now_text()
            ],
        )?;
        let id = tx.last_insert_rowid();
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO backup_chunks (backup, ord, hash, len) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (i, c) in m.chunks.iter().enumerate() {
                put.execute(params![id, i as i64, &c.hash[..], c.len])?;
            }
        }
        // Older backups of the volume beyond KEEP go, with the chunks only
        // they listed.
        let pruned: Vec<i64> = {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM backups WHERE site = ?1 AND volume = ?2 ORDER BY id DESC LIMIT -1 OFFSET ?3",
            )?;
            let rows = stmt.query_map(params![site, key, KEEP], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for old in pruned {
            drop_backup(&tx, site, old)?;
        }
        tx.commit()?;
        Ok(id)
    }

    /// Drops every backup `site` kept under `key`, with the chunks only
    /// they listed; how many went.
    fn forget_key(&self, site: &str, key: &str) -> Result<u64, BackupError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let ids: Vec<i64> = {
            let mut stmt =
                tx.prepare_cached("SELECT id FROM backups WHERE site = ?1 AND volume = ?2")?;
            let rows = stmt.query_map(params![site, key], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for id in &ids {
            drop_backup(&tx, site, *id)?;
        }
        tx.commit()?;
        Ok(ids.len() as u64)
    }
}

/// Removes one of `site`'s backups, and the chunks no other backup of the
/// site lists. A chunk only an offer not yet committed also lacks goes
/// too: that commit is then refused ("lacks N chunks") and the site
/// offers again.
fn drop_backup(tx: &rusqlite::Transaction<'_>, site: &str, id: i64) -> Result<(), BackupError> {
    let hashes: Vec<Vec<u8>> = {
        let mut stmt =
            tx.prepare_cached("SELECT DISTINCT hash FROM backup_chunks WHERE backup = ?1")?;
        let rows = stmt.query_map([id], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    tx.execute("DELETE FROM backups WHERE id = ?1", [id])?;
    let mut gone = tx.prepare_cached(
        "DELETE FROM chunks WHERE site = ?1 AND hash = ?2
         AND NOT EXISTS (SELECT 1 FROM backup_chunks c JOIN backups b ON b.id = c.backup
                         WHERE c.hash = ?2 AND b.site = ?1)",
    )?;
    for h in hashes {
        gone.execute(params![site, h])?;
    }
    Ok(())
}

impl BackupSink for RegionBackups {
    fn missing(&self, site: &str, key: &str, manifest: &Manifest) -> Result<Vec<Hash>, String> {
        check_key(key)?;
        let conn = self.conn();
        let mut held = conn
            .prepare_cached("SELECT 1 FROM chunks WHERE site = ?1 AND hash = ?2")
            .map_err(|e| e.to_string())?;
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        let mut bytes = 0i64;
        for c in &manifest.chunks {
            if seen.insert(c.hash)
                && !held
                    .exists(params![site, &c.hash[..]])
                    .map_err(|e| e.to_string())?
            {
                out.push(c.hash);
                bytes += i64::from(c.len);
            }
        }
        let used: i64 = conn
            .query_row(
                "SELECT COALESCE(SUM(len), 0) FROM chunks WHERE site = ?1",
                [site],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        if used + bytes > self.quota {
            return Err(format!(
                "backup {key} needs {} MiB more, and site {site} already holds {} MiB of the {} MiB the region keeps for it",
                bytes >> 20,
                used >> 20,
                self.quota >> 20
            ));
        }
        Ok(out)
    }

    fn put(&self, site: &str, chunks: &[(Hash, Vec<u8>)]) -> Result<(), String> {
        let at = now_secs();
        let mut conn = self.conn();
        let r = (|| -> Result<(), rusqlite::Error> {
            let tx = conn.transaction()?;
            {
                let mut put = tx.prepare_cached(
                    "INSERT OR IGNORE INTO chunks (site, hash, data, stored_at, len) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (h, d) in chunks {
                    put.execute(params![site, &h[..], d, at, d.len() as i64])?;
                }
            }
            tx.commit()
        })();
        r.map_err(|e| e.to_string())
    }

    fn forget(&self, site: &str, key: &str) -> Result<u64, String> {
        check_key(key)?;
        let n = self.forget_key(site, key).map_err(|e| e.to_string())?;
        tracing::info!(
            site,
            key,
            backups = n,
            "backups the site no longer needs dropped"
        );
        Ok(n)
    }

    fn commit(&self, site: &str, key: &str, manifest: &Manifest) -> Result<(), String> {
        check_key(key)?;
        let id = self
            .commit_backup(site, key, manifest)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            site,
            volume = key,
            backup = id,
            size = manifest.size(),
            "volume backup kept"
        );
        let now = now_secs();
        let due = {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            let due = now - *last >= SWEEP_EVERY_SECS;
            if due {
                *last = now;
            }
            due
        };
        if due {
            match self.sweep(now - ORPHAN_AGE_SECS) {
                Ok(n) if n > 0 => {
                    tracing::info!(chunks = n, "backup chunks no backup lists removed")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "backup sweep failed"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    const VOL: &str = "0b0f6f8e-3f43-4a8e-9d59-1f3c2a7d5e11";

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; n];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    /// Sends what the region lacks, as a site does; the chunk bytes sent.
    fn send(b: &RegionBackups, data: &[u8]) -> (Manifest, u64) {
        let m = Manifest::of_reader(data).unwrap();
        let missing = b.missing("f1", VOL, &m).unwrap();
        let at: std::collections::HashMap<Hash, (u64, u32)> =
            m.offsets().map(|(o, c)| (c.hash, (o, c.len))).collect();
        let chunks: Vec<(Hash, Vec<u8>)> = missing
            .iter()
            .map(|h| {
                let (o, l) = at[h];
                (*h, data[o as usize..o as usize + l as usize].to_vec())
            })
            .collect();
        let sent = chunks.iter().map(|(_, d)| d.len() as u64).sum();
        b.put("f1", &chunks).unwrap();
        (m, sent)
    }

    fn restore(b: &RegionBackups, id: i64) -> Vec<u8> {
        let mut out = Vec::new();
        for c in b.manifest(id).unwrap() {
            out.extend(b.chunk("f1", &c.hash).unwrap());
        }
        out
    }

    #[test]
    fn a_backup_is_kept_whole_and_the_next_moves_only_new_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let b = RegionBackups::open(dir.path()).unwrap();
        let v1 = random(4 << 20, 1);
        let (m1, sent1) = send(&b, &v1);
        assert!(sent1 >= v1.len() as u64);
        b.commit("f1", VOL, &m1).unwrap();
        let mut v2 = v1.clone();
        v2[1 << 20..(1 << 20) + 4096].copy_from_slice(&random(4096, 2));
        let (m2, sent2) = send(&b, &v2);
        assert!(sent2 < 100 << 10, "only chunks near the edit: {sent2}");
        b.commit("f1", VOL, &m2).unwrap();
        // The same file committed again (an answer lost) adds nothing.
        b.commit("f1", VOL, &m2).unwrap();
        let list = b.list("f1", Some(VOL)).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].sha256, hex(&m2.sha256));
        assert_eq!(restore(&b, list[0].id), v2);
        assert_eq!(restore(&b, list[1].id), v1);
        assert!(b.list("f2", None).unwrap().is_empty(), "per site");
        // The newest under a key, for the site that sent it only.
        assert_eq!(b.newest("f1", VOL).unwrap(), list[0].id);
        // Another site forgetting the key drops nothing of f1's.
        assert_eq!(b.forget("f2", VOL).unwrap(), 0);
        assert_eq!(b.list("f1", Some(VOL)).unwrap().len(), 2);
        let e = b.newest("f2", VOL).unwrap_err().to_string();
        assert!(e.contains("site f2 has no backup of"), "{e}");
        // Reopened: still there.
        drop(b);
        let b = RegionBackups::open(dir.path()).unwrap();
        assert_eq!(restore(&b, list[0].id), v2);
    }

    #[test]
    fn a_forgotten_key_gives_its_chunks_and_quota_back() {
        let dir = tempfile::tempdir().unwrap();
        let b = RegionBackups::open(dir.path()).unwrap();
        let held = |b: &RegionBackups| -> i64 {
            b.conn()
                .query_row("SELECT COUNT(*) FROM chunks WHERE site = 'f1'", [], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        const SNAP: &str = "0b3c5d7e-1111-4222-8333-944445555666";
        let v = random(1 << 20, 40);
        let (m, _) = send(&b, &v);
        b.commit("f1", VOL, &m).unwrap();
        // A snapshot of the same data, and a little more.
        let mut s = v.clone();
        s.extend(random(256 << 10, 41));
        let (ms, _) = send(&b, &s);
        b.commit("f1", SNAP, &ms).unwrap();
        let with_snapshot = held(&b);
        assert_eq!(b.forget("f1", SNAP).unwrap(), 1);
        assert!(b.list("f1", Some(SNAP)).unwrap().is_empty());
        // Only the chunks the snapshot alone held went; the volume's
        // backup is whole.
        assert!(held(&b) < with_snapshot);
        assert_eq!(restore(&b, b.newest("f1", VOL).unwrap()), v);
        assert!(b.newest("f1", SNAP).is_err());
        let e = b.forget("f1", "../x").unwrap_err();
        assert!(e.contains("volume"), "{e}");
    }

    #[test]
    fn a_site_over_its_quota_is_refused_before_it_sends() {
        let dir = tempfile::tempdir().unwrap();
        let b = RegionBackups::open(dir.path()).unwrap().with_quota(3 << 20);
        let (m, _) = send(&b, &random(2 << 20, 5));
        b.commit("f1", VOL, &m).unwrap();
        let more = Manifest::of_reader(&random(2 << 20, 6)[..]).unwrap();
        let e = b.missing("f1", VOL, &more).unwrap_err();
        assert!(
            e.contains("site f1 already holds 2 MiB of the 3 MiB"),
            "{e}"
        );
        // Another site has its own share, and none of f1's chunks; what a
        // site already holds costs none.
        assert!(b.missing("f2", VOL, &more).is_ok());
        assert!(b.missing("f1", VOL, &m).unwrap().is_empty());
        assert_eq!(b.missing("f2", VOL, &m).unwrap().len(), m.chunks.len());
        // Nor can it list them in a backup of its own, or read them.
        let e = b.commit("f2", VOL, &m).unwrap_err();
        assert!(e.contains("lacks"), "{e}");
        let id = b.list("f1", None).unwrap()[0].id;
        assert!(b.site_chunk("f2", id, &m.chunks[0].hash).is_err());
        assert!(b.site_chunk("f1", id, &m.chunks[0].hash).is_ok());
    }

    #[test]
    fn a_commit_without_every_chunk_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = RegionBackups::open(dir.path()).unwrap();
        let v = random(1 << 20, 3);
        let m = Manifest::of_reader(&v[..]).unwrap();
        let e = b.commit("f1", VOL, &m).unwrap_err();
        assert!(e.contains("lacks") && e.contains("offer it again"), "{e}");
        assert!(b.list("f1", None).unwrap().is_empty());
        let e = b.commit("f1", "../etc", &m).unwrap_err();
        assert!(e.contains("volume"), "{e}");
    }

    #[test]
    fn old_backups_are_pruned_with_the_chunks_only_they_held() {
        let dir = tempfile::tempdir().unwrap();
        let b = RegionBackups::open(dir.path()).unwrap();
        let count = |b: &RegionBackups| -> i64 {
            b.conn()
                .query_row("SELECT COUNT(*) FROM chunks", [], |r| r.get(0))
                .unwrap()
        };
        for seed in 0..(KEEP as u64 + 2) {
            let (m, _) = send(&b, &random(256 << 10, 10 + seed));
            b.commit("f1", VOL, &m).unwrap();
        }
        let list = b.list("f1", Some(VOL)).unwrap();
        assert_eq!(list.len(), KEEP as usize);
        let listed: i64 = b
            .conn()
            .query_row("SELECT COUNT(DISTINCT hash) FROM backup_chunks", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(count(&b), listed, "no chunk of a pruned backup is left");
        // Chunks of an offer never committed go after the orphan age.
        send(&b, &random(64 << 10, 99));
        assert!(count(&b) > listed);
        assert_eq!(
            b.sweep(now_secs() - ORPHAN_AGE_SECS).unwrap(),
            0,
            "too young"
        );
        assert!(b.sweep(now_secs() + 1).unwrap() > 0);
        assert_eq!(count(&b), listed);
    }
}
