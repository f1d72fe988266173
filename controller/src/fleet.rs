//! The fleet store: the region's SQLite database (WAL, synchronous FULL).
//!
//! It holds the region's CA key, the sites the region knows (from the
//! config) with their enrollment, the join tokens (as hashes), every site's
//! document changes and the sync state the region keeps per site. All of it
//! sits behind [`FleetStore`], the boundary a PostgreSQL backend for several
//! controller replicas would implement.

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use roost_common::config::RegionSite;
use roost_common::model::AlarmStatus;
use roost_sync::pki::{join_token, Ca};
use roost_sync::{site_status_actor, Docs, IntentDoc, Persisted, StatusDoc};

/// The database file inside the data dir.
pub const DB_FILE: &str = "roost-controller.db";
/// The fleet operator's API token, inside the data dir (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The read-only token (dashboard viewers), inside the data dir (0600).
pub const VIEWER_TOKEN_FILE: &str = "viewer.token";

/// The region's admin token: read from the data dir, or made there (256
/// random bits, hex) if it is not there yet.
pub fn admin_token(data_dir: &Path) -> std::io::Result<String> {
    token_file(&data_dir.join(ADMIN_TOKEN_FILE))
}

/// The region's read-only token, as [`admin_token`].
pub fn viewer_token(data_dir: &Path) -> std::io::Result<String> {
    token_file(&data_dir.join(VIEWER_TOKEN_FILE))
}

fn token_file(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    roost_common::files::write_atomic(path, format!("{token}\n").as_bytes(), 0o600)?;
    Ok(token)
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store holds data it cannot read: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Pki(#[from] roost_sync::pki::PkiError),
    #[error("site {0:?} is not in this region's config; add it under sites: and restart")]
    UnknownSite(String),
    #[error("this data dir belongs to region {stored:?}, not {wanted:?}")]
    WrongRegion { stored: String, wanted: String },
    #[error("the join token is not valid: {0}")]
    Token(&'static str),
}

/// A certificate the region signed for an enrollment request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// [`roost_sync::pki::request_fingerprint`] of the request.
    pub request_sha256: String,
    pub cert_pem: String,
    /// [`roost_sync::pki::fingerprint`] of the certificate.
    pub cert_sha256: String,
}

/// What a redeemed token gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    pub site: String,
    /// The certificate to hand back: the one just issued, or for a
    /// request asked again, the one issued the first time.
    pub cert_pem: String,
    /// A request asked again: nothing changed.
    pub again: bool,
}

/// Whether a site's connection may sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Never enrolled (or listed in the config but without a token spent).
    NotEnrolled,
    /// Its enrollment was revoked; a new join token enrolls it again.
    Revoked,
    /// A certificate of the site's older than its latest enrollment.
    Superseded,
}

/// One site as the fleet store knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SiteRow {
    pub id: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub management: String,
    pub enrolled_at: Option<String>,
    pub last_seen: Option<String>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS sites (
    id TEXT PRIMARY KEY, labels TEXT NOT NULL, management TEXT NOT NULL DEFAULT 'managed',
    enrolled_at TEXT, last_seen TEXT) STRICT;
CREATE TABLE IF NOT EXISTS join_tokens (
    hash TEXT PRIMARY KEY, site_id TEXT NOT NULL REFERENCES sites(id),
    expires_at TEXT NOT NULL, used_at TEXT, created_at TEXT NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS site_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT NOT NULL REFERENCES sites(id),
    doc TEXT NOT NULL CHECK (doc IN ('intent', 'status')), bytes BLOB NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS site_changes_by_site ON site_changes(site, doc, seq);
CREATE TABLE IF NOT EXISTS site_sync (
    site TEXT PRIMARY KEY REFERENCES sites(id), intent BLOB NOT NULL, status BLOB NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT NOT NULL REFERENCES sites(id),
    code TEXT NOT NULL, severity TEXT NOT NULL CHECK (severity IN ('critical', 'major', 'minor')),
    reason TEXT NOT NULL, raised_at TEXT NOT NULL, cleared_at TEXT, acknowledged_at TEXT) STRICT;
CREATE UNIQUE INDEX IF NOT EXISTS alarms_active ON alarms(site, code) WHERE cleared_at IS NULL;
CREATE INDEX IF NOT EXISTS alarms_by_raise ON alarms(site, code, raised_at);
CREATE TABLE IF NOT EXISTS availability_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT NOT NULL REFERENCES sites(id),
    availability TEXT NOT NULL CHECK (availability IN ('online', 'offline')),
    address TEXT, at TEXT NOT NULL) STRICT;
CREATE INDEX IF NOT EXISTS availability_by_site ON availability_log(site, seq);
-- The certificate each site enrolled with last (its SHA-256): an older one
-- of the site's is refused. Sites enrolled before pinning have none.
-- With the join token and certificate request it came from, so that a site
-- that crashed before writing its certificate may ask again.
CREATE TABLE IF NOT EXISTS site_certs (
    site TEXT PRIMARY KEY REFERENCES sites(id), sha256 TEXT NOT NULL,
    token_hash TEXT NOT NULL, request_sha256 TEXT NOT NULL, cert_pem TEXT NOT NULL) STRICT;
-- Enrollments an operator revoked.
CREATE TABLE IF NOT EXISTS site_revocations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, site TEXT NOT NULL REFERENCES sites(id),
    revoked_at TEXT NOT NULL) STRICT;
-- Region tokens revoked before their expiry, by Keystone audit id.
CREATE TABLE IF NOT EXISTS revoked_tokens (
    audit_id TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) STRICT;
"#;

/// An alarm about a site: the region's own (`site.offline`) or one the
/// site raised itself and published (`site.link_down`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AlarmRow {
    pub id: i64,
    pub site: String,
    pub code: String,
    pub severity: String,
    pub reason: String,
    pub raised_at: String,
    pub cleared_at: Option<String>,
    /// When an operator acknowledged it (it stays active until cleared).
    pub acknowledged_at: Option<String>,
}

/// One availability transition of a site.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AvailabilityEntry {
    pub availability: String,
    pub address: Option<String>,
    pub at: String,
}

/// The region's store on SQLite (the default: embedded, nothing to
/// install). Cheap to clone; calls block (run them on blocking threads from
/// async code).
#[derive(Debug, Clone)]
pub struct SqliteFleet {
    conn: Arc<Mutex<Connection>>,
    region: String,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Now, as the store writes times.
pub fn now_text() -> String {
    time(Utc::now())
}

/// The boundary of the region's state: what a PostgreSQL backend (for
/// several controller replicas) would implement. Every call is one
/// transaction and blocks; the region's documents are kept here as the
/// Automerge changes that make them, never as rows of their own.
pub trait FleetStore: std::fmt::Debug + Send + Sync {
    /// The region this store belongs to.
    fn region(&self) -> &str;
    /// Brings the sites in line with the config's `sites:` (new ones
    /// added, labels updated; sites no longer listed are kept, with their
    /// history, and can no longer enroll or connect).
    fn sync_sites(&self, sites: &[RegionSite]) -> Result<(), FleetError>;
    fn sites(&self) -> Result<Vec<SiteRow>, FleetError>;
    fn site(&self, id: &str) -> Result<Option<SiteRow>, FleetError>;
    /// A one-time join token for `site_id`, valid for `ttl`.
    fn create_token(&self, site_id: &str, ttl: chrono::Duration) -> Result<String, FleetError>;
    /// Spends a join token: if the token is known, unused and unexpired,
    /// marks it used and the site enrolled with `issued` pinned,
    /// atomically. The same request again with the spent token (the site
    /// crashed before it kept its certificate), while the token has not
    /// expired and that enrollment is the site's latest, gets the
    /// certificate first issued, unchanged.
    fn redeem(&self, token: &str, issued: &Issued) -> Result<Redeemed, FleetError>;
    /// Whether a connection from `site` with the certificate `cert_sha256`
    /// may sync.
    fn admission(&self, site: &str, cert_sha256: &str) -> Result<Admission, FleetError>;
    /// Ends a site's enrollment: its certificate is refused from now on,
    /// until it enrolls again with a new join token. False if it was not
    /// enrolled.
    fn revoke(&self, site: &str, at: DateTime<Utc>) -> Result<bool, FleetError>;
    /// Whether `redeem` would accept the token now, spending nothing.
    fn check_token(&self, token: &str) -> Result<String, FleetError>;
    /// Every stored change of a site's documents (intent, status), in the
    /// order they were appended.
    fn changes(&self, site: &str) -> Result<[Vec<Vec<u8>>; 2], FleetError>;
    /// Appends a site's new changes (intent, status) atomically.
    fn append_changes(
        &self,
        site: &str,
        intent: &[Vec<u8>],
        status: &[Vec<u8>],
    ) -> Result<(), FleetError>;
    fn sync_state(&self, site: &str) -> Result<Option<Persisted>, FleetError>;
    fn save_sync_state(&self, site: &str, p: &Persisted) -> Result<(), FleetError>;
    fn mark_seen(&self, site: &str, at: DateTime<Utc>) -> Result<(), FleetError>;
    /// Sets a site's management state; false if the site is unknown.
    fn set_management(&self, site: &str, management: &str) -> Result<bool, FleetError>;
    /// The key the region signs Keystone tokens with (PKCS#8), made on
    /// first use.
    fn token_key(&self) -> Result<Vec<u8>, FleetError>;
    /// Records a token revoked until it would have expired (Unix time).
    fn revoke_token(&self, audit_id: &str, expires_at: i64) -> Result<(), FleetError>;
    /// Audit ids of revoked tokens not yet expired at `now`; drops the rest.
    fn revoked_tokens(&self, now: i64) -> Result<std::collections::BTreeSet<String>, FleetError>;
    /// Records an availability transition and raises or clears the site's
    /// `site.offline` alarm with it, atomically.
    fn record_availability(
        &self,
        site: &str,
        online: bool,
        address: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), FleetError>;
    /// Raises `site.offline` for a site whose availability has not been
    /// recorded since `since` (the controller's start), unless it is
    /// active; whether it did. The check and the raise are one transaction,
    /// so a site that connects meanwhile is never marked offline after it.
    fn raise_offline(
        &self,
        site: &str,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, FleetError>;
    /// Alarms, active ones only unless `history`; newest first.
    fn alarms(&self, site: Option<&str>, history: bool) -> Result<Vec<AlarmRow>, FleetError>;
    /// Marks an alarm acknowledged; false if there is no such alarm.
    fn acknowledge_alarm(&self, id: i64, at: DateTime<Utc>) -> Result<bool, FleetError>;
    /// Brings the region's rows of the alarms a site raised itself in line
    /// with what it published (`active`, and the latest `cleared`), with
    /// the site's own times; site alarms it no longer lists are cleared at
    /// `now`. Whether anything changed.
    fn apply_site_alarms(
        &self,
        site: &str,
        active: &[AlarmStatus],
        cleared: &[AlarmStatus],
        now: DateTime<Utc>,
    ) -> Result<bool, FleetError>;
    /// A site's last `limit` availability transitions, newest first.
    fn availability_history(
        &self,
        site: &str,
        limit: usize,
    ) -> Result<Vec<AvailabilityEntry>, FleetError>;

    /// The region's copy of a site's documents, from its changes, writing
    /// as `actor`.
    fn load_docs(&self, site: &str, actor: &[u8]) -> Result<Docs, FleetError> {
        let [intent, status] = self.changes(site)?;
        let bad =
            |e: roost_sync::DocError| FleetError::Corrupt(format!("documents of {site}: {e}"));
        Ok(Docs {
            intent: IntentDoc::from_chunks(
                intent.iter().map(Vec::as_slice),
                actor,
                &format!("region:{}", self.region()),
            )
            .map_err(bad)?,
            status: StatusDoc::from_chunks(status.iter().map(Vec::as_slice), actor).map_err(bad)?,
            site_status_actor: site_status_actor(site),
        })
    }
}

/// Refuses a join token that is unknown, for another site, used or expired.
fn token_usable(
    conn: &rusqlite::Connection,
    site: &str,
    hash: &str,
    now: DateTime<Utc>,
) -> Result<(), FleetError> {
    let row: Option<(String, String, Option<String>)> = conn
        .query_row(
            "SELECT site_id, expires_at, used_at FROM join_tokens WHERE hash = ?1",
            [hash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match row {
        None => Err(FleetError::Token("unknown to this region")),
        Some((s, _, _)) if s != site => Err(FleetError::Token("unknown to this region")),
        Some((_, _, Some(_))) => Err(FleetError::Token("already used")),
        Some((_, exp, None)) if exp <= time(now) => Err(FleetError::Token("expired")),
        Some(_) => Ok(()),
    }
}

impl SqliteFleet {
    /// Opens (creating if needed) the store in `data_dir` for `region`, and
    /// returns it with the region's CA (made on first open).
    pub fn open(data_dir: &Path, region: &str) -> Result<(SqliteFleet, Ca), FleetError> {
        let path = data_dir.join(DB_FILE);
        {
            use std::os::unix::fs::OpenOptionsExt;
            // The CA key lives here: readable by its owner alone.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path);
        }
        let conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // A site_certs of an earlier build (before it kept the request and
        // certificate) is made again; its sites are taken unpinned until
        // they next enroll.
        let has_pem: bool = conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM pragma_table_info('site_certs') WHERE name = 'cert_pem')
                 OR NOT EXISTS(SELECT 1 FROM sqlite_master WHERE name = 'site_certs')",
            [],
            |r| r.get(0),
        )?;
        if !has_pem {
            conn.execute_batch("DROP TABLE site_certs")?;
        }
        conn.execute_batch(SCHEMA)?;
        let stored: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'region'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match stored {
            Some(s) if s != region => {
                return Err(FleetError::WrongRegion {
                    stored: s,
                    wanted: region.into(),
                })
            }
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('region', ?1)",
                    [region],
                )?;
            }
        }
        let key: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'ca_key'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let ca = match key {
            Some(k) => Ca::from_key_pem(region, &k)?,
            None => {
                let ca = Ca::new(region)?;
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('ca_key', ?1)",
                    [ca.key_pem()],
                )?;
                ca
            }
        };
        Ok((
            SqliteFleet {
                conn: Arc::new(Mutex::new(conn)),
                region: region.into(),
            },
            ca,
        ))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn query_sites(&self, id: Option<&str>) -> Result<Vec<SiteRow>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, labels, management, enrolled_at, last_seen FROM sites
             WHERE ?1 IS NULL OR id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
        rows.map(|row| {
            let (id, labels, management, enrolled_at, last_seen) = row?;
            let labels = serde_json::from_str(&labels)
                .map_err(|e| FleetError::Corrupt(format!("labels of {id}: {e}")))?;
            Ok(SiteRow {
                id,
                labels,
                management,
                enrolled_at,
                last_seen,
            })
        })
        .collect()
    }
}

impl FleetStore for SqliteFleet {
    fn region(&self) -> &str {
        &self.region
    }

    /// Brings the sites table in line with the config's `sites:` (new ones
    /// added, labels updated; sites no longer listed are kept, with their
    /// history, and can no longer enroll or connect).
    fn sync_sites(&self, sites: &[RegionSite]) -> Result<(), FleetError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for s in sites {
            let labels = serde_json::to_string(&s.labels).unwrap_or_else(|_| "{}".into());
            tx.execute(
                "INSERT INTO sites (id, labels) VALUES (?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET labels = excluded.labels",
                params![s.id, labels],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn sites(&self) -> Result<Vec<SiteRow>, FleetError> {
        self.query_sites(None)
    }

    fn site(&self, id: &str) -> Result<Option<SiteRow>, FleetError> {
        Ok(self.query_sites(Some(id))?.into_iter().next())
    }

    /// A one-time join token for `site_id`, valid for `ttl`.
    fn create_token(&self, site_id: &str, ttl: chrono::Duration) -> Result<String, FleetError> {
        if self.site(site_id)?.is_none() {
            return Err(FleetError::UnknownSite(site_id.into()));
        }
        let (token, hash) = join_token::new(site_id);
        let now = Utc::now();
        self.conn().execute(
            "INSERT INTO join_tokens (hash, site_id, expires_at, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash, site_id, time(now + ttl), time(now)],
        )?;
        Ok(token)
    }

    /// Whether a join token would enroll its site now; its site id if so.
    /// Spends nothing (an installer asks before it writes anything).
    fn check_token(&self, token: &str) -> Result<String, FleetError> {
        let site = join_token::site_of(token).ok_or(FleetError::Token("malformed"))?;
        token_usable(&self.conn(), site, &join_token::hash(token), Utc::now())?;
        Ok(site.to_string())
    }

    fn admission(&self, site: &str, cert_sha256: &str) -> Result<Admission, FleetError> {
        let conn = self.conn();
        let row: Option<(Option<String>, Option<String>, bool)> = conn
            .query_row(
                "SELECT s.enrolled_at, c.sha256,
                        EXISTS(SELECT 1 FROM site_revocations r WHERE r.site = s.id)
                 FROM sites s LEFT JOIN site_certs c ON c.site = s.id WHERE s.id = ?1",
                [site],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        Ok(match row {
            None | Some((None, _, false)) => Admission::NotEnrolled,
            Some((None, _, true)) => Admission::Revoked,
            Some((Some(_), Some(pinned), _)) if pinned != cert_sha256 => Admission::Superseded,
            Some((Some(_), _, _)) => Admission::Admitted,
        })
    }

    fn revoke(&self, site: &str, at: DateTime<Utc>) -> Result<bool, FleetError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE sites SET enrolled_at = NULL WHERE id = ?1 AND enrolled_at IS NOT NULL",
            [site],
        )?;
        if n == 1 {
            tx.execute("DELETE FROM site_certs WHERE site = ?1", [site])?;
            // Tokens made before the revocation enroll nobody.
            tx.execute(
                "UPDATE join_tokens SET expires_at = ?2 WHERE site_id = ?1 AND used_at IS NULL",
                params![site, time(at)],
            )?;
            tx.execute(
                "INSERT INTO site_revocations (site, revoked_at) VALUES (?1, ?2)",
                params![site, time(at)],
            )?;
            // Not connected by choice: no offline alarm stays raised for it.
            clear_alarm(&tx, site, OFFLINE_ALARM, at)?;
        }
        tx.commit()?;
        Ok(n == 1)
    }

    fn redeem(&self, token: &str, issued: &Issued) -> Result<Redeemed, FleetError> {
        let site = join_token::site_of(token).ok_or(FleetError::Token("malformed"))?;
        let hash = join_token::hash(token);
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let now = Utc::now();
        let first: Option<String> = tx
            .query_row(
                "SELECT c.cert_pem FROM site_certs c
                   JOIN sites s ON s.id = c.site
                   JOIN join_tokens t ON t.hash = c.token_hash
                  WHERE c.site = ?1 AND c.token_hash = ?2 AND c.request_sha256 = ?3
                    AND s.enrolled_at IS NOT NULL AND t.expires_at > ?4",
                params![site, hash, issued.request_sha256, time(now)],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(cert_pem) = first {
            tracing::info!(site = %site, "enrollment asked again with its spent token and request; the same certificate answered");
            return Ok(Redeemed {
                site: site.to_string(),
                cert_pem,
                again: true,
            });
        }
        token_usable(&tx, site, &hash, now)?;
        tx.execute(
            "UPDATE join_tokens SET used_at = ?2 WHERE hash = ?1",
            params![hash, time(now)],
        )?;
        tx.execute(
            "UPDATE sites SET enrolled_at = ?2 WHERE id = ?1",
            params![site, time(now)],
        )?;
        tx.execute(
            "INSERT INTO site_certs (site, sha256, token_hash, request_sha256, cert_pem)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (site) DO UPDATE SET sha256 = excluded.sha256, token_hash = excluded.token_hash,
                 request_sha256 = excluded.request_sha256, cert_pem = excluded.cert_pem",
            params![site, issued.cert_sha256, hash, issued.request_sha256, issued.cert_pem],
        )?;
        // An enrollment is a new incarnation of the site (a replaced disk, a
        // reinstall): its status document starts again from what it now
        // reports. The region's copy of the old one would clash with the new
        // site's (same status actor, same sequence numbers, other contents),
        // and Automerge sync between the two never settles. Status is the
        // site's alone, so nothing is lost; intent is kept whole, and the
        // sync state is dropped so the next session starts from scratch.
        tx.execute(
            "DELETE FROM site_changes WHERE site = ?1 AND doc = 'status'",
            [site],
        )?;
        tx.execute("DELETE FROM site_sync WHERE site = ?1", [site])?;
        tx.commit()?;
        Ok(Redeemed {
            site: site.to_string(),
            cert_pem: issued.cert_pem.clone(),
            again: false,
        })
    }

    /// Appends a site's new changes (intent, status) in one transaction.
    fn append_changes(
        &self,
        site: &str,
        intent: &[Vec<u8>],
        status: &[Vec<u8>],
    ) -> Result<(), FleetError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (doc, changes) in [("intent", intent), ("status", status)] {
            for c in changes {
                tx.prepare_cached(
                    "INSERT INTO site_changes (site, doc, bytes) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![site, doc, c])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn sync_state(&self, site: &str) -> Result<Option<Persisted>, FleetError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT intent, status FROM site_sync WHERE site = ?1",
                [site],
                |r| {
                    Ok(Persisted {
                        intent: r.get(0)?,
                        status: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    fn save_sync_state(&self, site: &str, p: &Persisted) -> Result<(), FleetError> {
        self.conn().execute(
            "INSERT INTO site_sync (site, intent, status) VALUES (?1, ?2, ?3)
             ON CONFLICT (site) DO UPDATE SET intent = excluded.intent, status = excluded.status",
            params![site, p.intent, p.status],
        )?;
        Ok(())
    }

    fn token_key(&self) -> Result<Vec<u8>, FleetError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let conn = self.conn();
        let stored: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'token_key'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(k) = stored {
            return b64
                .decode(k)
                .map_err(|e| FleetError::Corrupt(format!("token_key: {e}")));
        }
        let signer = roost_sync::token::Signer::generate()
            .map_err(|e| FleetError::Corrupt(format!("token_key: {e}")))?;
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('token_key', ?1)",
            [b64.encode(signer.pkcs8())],
        )?;
        Ok(signer.pkcs8().to_vec())
    }

    fn revoke_token(&self, audit_id: &str, expires_at: i64) -> Result<(), FleetError> {
        self.conn().execute(
            "INSERT INTO revoked_tokens (audit_id, expires_at) VALUES (?1, ?2)
             ON CONFLICT (audit_id) DO NOTHING",
            params![audit_id, expires_at],
        )?;
        Ok(())
    }

    fn revoked_tokens(&self, now: i64) -> Result<std::collections::BTreeSet<String>, FleetError> {
        let conn = self.conn();
        conn.execute("DELETE FROM revoked_tokens WHERE expires_at <= ?1", [now])?;
        let mut stmt = conn.prepare_cached("SELECT audit_id FROM revoked_tokens")?;
        let ids = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(ids)
    }

    /// Sets a site's management state; returns false if the site is unknown.
    fn set_management(&self, site: &str, management: &str) -> Result<bool, FleetError> {
        Ok(self.conn().execute(
            "UPDATE sites SET management = ?2 WHERE id = ?1",
            params![site, management],
        )? == 1)
    }

    /// Records an availability transition, and raises or clears the site's
    /// `site.offline` alarm with it, in one transaction.
    fn record_availability(
        &self,
        site: &str,
        online: bool,
        address: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), FleetError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO availability_log (site, availability, address, at) VALUES (?1, ?2, ?3, ?4)",
            params![site, if online { "online" } else { "offline" }, address, time(at)],
        )?;
        if online {
            tx.execute(
                "UPDATE sites SET last_seen = ?2 WHERE id = ?1",
                params![site, time(at)],
            )?;
            clear_alarm(&tx, site, OFFLINE_ALARM, at)?;
        } else {
            raise_alarm(
                &tx,
                site,
                OFFLINE_ALARM,
                "critical",
                "the site is not connected to the region; its intent waits for it",
                at,
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Raises `site.offline` for an enrolled site that has not connected
    /// since the controller started (its last state is unknown).
    fn raise_offline(
        &self,
        site: &str,
        since: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, FleetError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let heard: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM availability_log WHERE site = ?1 AND at >= ?2)",
            params![site, time(since)],
            |r| r.get(0),
        )?;
        if heard {
            return Ok(false);
        }
        let raised = raise_alarm(
            &tx,
            site,
            OFFLINE_ALARM,
            "critical",
            "the site has not connected since the controller started",
            at,
        )?;
        tx.commit()?;
        Ok(raised)
    }

    /// Alarms, active ones only unless `history`; newest first.
    fn alarms(&self, site: Option<&str>, history: bool) -> Result<Vec<AlarmRow>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, site, code, severity, reason, raised_at, cleared_at, acknowledged_at FROM alarms
             WHERE (?1 IS NULL OR site = ?1) AND (?2 OR cleared_at IS NULL)
             ORDER BY id DESC LIMIT 1000",
        )?;
        let rows = stmt.query_map(params![site, history], |r| {
            Ok(AlarmRow {
                id: r.get(0)?,
                site: r.get(1)?,
                code: r.get(2)?,
                severity: r.get(3)?,
                reason: r.get(4)?,
                raised_at: r.get(5)?,
                cleared_at: r.get(6)?,
                acknowledged_at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A site's last `limit` availability transitions, newest first.
    fn acknowledge_alarm(&self, id: i64, at: DateTime<Utc>) -> Result<bool, FleetError> {
        Ok(self.conn().execute(
            "UPDATE alarms SET acknowledged_at = COALESCE(acknowledged_at, ?2) WHERE id = ?1",
            params![id, time(at)],
        )? == 1)
    }

    fn apply_site_alarms(
        &self,
        site: &str,
        active: &[AlarmStatus],
        cleared: &[AlarmStatus],
        now: DateTime<Utc>,
    ) -> Result<bool, FleetError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut changed = 0;
        let known = |code: &str, raised: &str| -> Result<bool, rusqlite::Error> {
            tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM alarms WHERE site = ?1 AND code = ?2 AND raised_at = ?3)",
                params![site, code, raised],
                |r| r.get(0),
            )
        };
        // The region's own alarm about the site is not the site's to set.
        let theirs = |a: &&AlarmStatus| a.code != OFFLINE_ALARM;
        for a in cleared.iter().filter(theirs) {
            let (raised, at) = (time(a.raised_at), time(a.cleared_at.unwrap_or(now)));
            if known(&a.code, &raised)? {
                changed += tx.execute(
                    "UPDATE alarms SET cleared_at = ?4
                     WHERE site = ?1 AND code = ?2 AND raised_at = ?3 AND cleared_at IS NULL",
                    params![site, a.code, raised, at],
                )?;
            } else {
                // Raised and cleared while apart: it belongs in the history.
                changed += tx.execute(
                    "INSERT INTO alarms (site, code, severity, reason, raised_at, cleared_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![site, a.code, a.severity.as_str(), a.reason, raised, at],
                )?;
            }
        }
        for a in active.iter().filter(theirs) {
            let raised = time(a.raised_at);
            if known(&a.code, &raised)? {
                // Active as the site says, even if the region closed it
                // (a publication it could not read at the time).
                let closed: bool = tx.query_row(
                    "SELECT EXISTS(SELECT 1 FROM alarms WHERE site = ?1 AND code = ?2
                                   AND raised_at = ?3 AND cleared_at IS NOT NULL)
                     AND NOT EXISTS(SELECT 1 FROM alarms WHERE site = ?1 AND code = ?2
                                    AND raised_at = ?3 AND cleared_at IS NULL)",
                    params![site, a.code, raised],
                    |r| r.get(0),
                )?;
                if closed {
                    tx.execute(
                        "UPDATE alarms SET cleared_at = ?3 WHERE site = ?1 AND code = ?2 AND cleared_at IS NULL",
                        params![site, a.code, time(now)],
                    )?;
                    changed += tx.execute(
                        "UPDATE alarms SET cleared_at = NULL WHERE id =
                           (SELECT MAX(id) FROM alarms WHERE site = ?1 AND code = ?2 AND raised_at = ?3)",
                        params![site, a.code, raised],
                    )?;
                }
                continue;
            }
            // A raise the region missed the clearing of is over.
            changed += tx.execute(
                "UPDATE alarms SET cleared_at = ?3 WHERE site = ?1 AND code = ?2 AND cleared_at IS NULL",
                params![site, a.code, raised],
            )?;
            changed += tx.execute(
                "INSERT INTO alarms (site, code, severity, reason, raised_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![site, a.code, a.severity.as_str(), a.reason, raised],
            )?;
            tracing::warn!(site = %site, code = %a.code, severity = a.severity.as_str(), reason = %a.reason, raised_at = %raised, "alarm raised at the site");
        }
        // Site alarms the site no longer lists as active.
        let stale: Vec<(i64, String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT id, code, raised_at FROM alarms WHERE site = ?1 AND code <> ?2 AND cleared_at IS NULL",
            )?;
            let rows = stmt.query_map(params![site, OFFLINE_ALARM], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for (id, code, raised) in stale {
            if !active
                .iter()
                .any(|a| a.code == code && time(a.raised_at) == raised)
            {
                changed += tx.execute(
                    "UPDATE alarms SET cleared_at = ?2 WHERE id = ?1",
                    params![id, time(now)],
                )?;
            }
        }
        tx.commit()?;
        Ok(changed > 0)
    }

    fn availability_history(
        &self,
        site: &str,
        limit: usize,
    ) -> Result<Vec<AvailabilityEntry>, FleetError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT availability, address, at FROM availability_log WHERE site = ?1
             ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![site, limit as i64], |r| {
            Ok(AvailabilityEntry {
                availability: r.get(0)?,
                address: r.get(1)?,
                at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn mark_seen(&self, site: &str, at: DateTime<Utc>) -> Result<(), FleetError> {
        self.conn().execute(
            "UPDATE sites SET last_seen = ?2 WHERE id = ?1",
            params![site, time(at)],
        )?;
        Ok(())
    }

    fn changes(&self, site: &str) -> Result<[Vec<Vec<u8>>; 2], FleetError> {
        let conn = self.conn();
        let mut chunks: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        for (i, doc) in ["intent", "status"].iter().enumerate() {
            let mut stmt = conn.prepare_cached(
                "SELECT bytes FROM site_changes WHERE site = ?1 AND doc = ?2 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![site, doc], |r| r.get::<_, Vec<u8>>(0))?;
            for r in rows {
                chunks[i].push(r?);
            }
        }
        Ok(chunks)
    }
}

/// The alarm a site raises by going offline.
pub const OFFLINE_ALARM: &str = "site.offline";

/// Raises an alarm unless the same one is active; returns whether it did.
fn raise_alarm(
    conn: &Connection,
    site: &str,
    code: &str,
    severity: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<bool, FleetError> {
    let n = conn.execute(
        "INSERT INTO alarms (site, code, severity, reason, raised_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (site, code) WHERE cleared_at IS NULL DO NOTHING",
        params![site, code, severity, reason, time(at)],
    )?;
    if n == 1 {
        tracing::warn!(site = %site, code, severity, reason, "alarm raised");
    }
    Ok(n == 1)
}

fn clear_alarm(
    conn: &Connection,
    site: &str,
    code: &str,
    at: DateTime<Utc>,
) -> Result<(), FleetError> {
    let n = conn.execute(
        "UPDATE alarms SET cleared_at = ?3 WHERE site = ?1 AND code = ?2 AND cleared_at IS NULL",
        params![site, code, time(at)],
    )?;
    if n > 0 {
        tracing::info!(site = %site, code, "alarm cleared");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_common::model::Severity;

    fn issued(request: &str, cert: &str) -> Issued {
        Issued {
            request_sha256: request.into(),
            cert_pem: format!("PEM {cert}"),
            cert_sha256: cert.into(),
        }
    }

    fn store(dir: &Path) -> (SqliteFleet, Ca) {
        let (s, ca) = SqliteFleet::open(dir, "eu").unwrap();
        s.sync_sites(&[RegionSite {
            id: "vehicle-07".into(),
            labels: [("kind".to_string(), "vehicle".to_string())].into(),
        }])
        .unwrap();
        (s, ca)
    }

    #[test]
    fn a_join_token_enrolls_its_site_once() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = store(dir.path());
        assert!(matches!(
            s.create_token("nowhere", chrono::Duration::hours(1)),
            Err(FleetError::UnknownSite(_))
        ));
        let t = s
            .create_token("vehicle-07", chrono::Duration::hours(1))
            .unwrap();
        // Asking spends nothing, however often.
        assert_eq!(s.check_token(&t).unwrap(), "vehicle-07");
        assert_eq!(s.check_token(&t).unwrap(), "vehicle-07");
        assert!(s.site("vehicle-07").unwrap().unwrap().enrolled_at.is_none());
        let first = s.redeem(&t, &issued("req-1", "cert-1")).unwrap();
        assert_eq!((first.site.as_str(), first.again), ("vehicle-07", false));
        assert!(matches!(
            s.redeem(&t, &issued("req-other", "cert-9")),
            Err(FleetError::Token("already used"))
        ));
        // The same request again (the site crashed before it wrote its
        // certificate): the certificate first issued, nothing re-pinned.
        let again = s.redeem(&t, &issued("req-1", "cert-1b")).unwrap();
        assert!(again.again);
        assert_eq!(again.cert_pem, "PEM cert-1");
        assert_eq!(
            s.admission("vehicle-07", "cert-1").unwrap(),
            Admission::Admitted
        );
        assert_eq!(
            s.admission("vehicle-07", "cert-1b").unwrap(),
            Admission::Superseded
        );
        assert!(matches!(
            s.check_token(&t),
            Err(FleetError::Token("already used"))
        ));
        assert!(s.site("vehicle-07").unwrap().unwrap().enrolled_at.is_some());
        let old = s
            .create_token("vehicle-07", chrono::Duration::seconds(-1))
            .unwrap();
        assert!(matches!(
            s.redeem(&old, &issued("req-1", "cert-1")),
            Err(FleetError::Token("expired"))
        ));
        assert!(matches!(
            s.check_token(&old),
            Err(FleetError::Token("expired"))
        ));
        // A token for one site with another site's name pasted in.
        let t = s
            .create_token("vehicle-07", chrono::Duration::hours(1))
            .unwrap();
        let forged = t.replacen("vehicle-07", "vehicle-08", 1);
        assert!(matches!(
            s.redeem(&forged, &issued("req-1", "cert-1")),
            Err(FleetError::Token(_))
        ));
        assert!(matches!(
            s.redeem("rjt1.x", &issued("req-1", "cert-1")),
            Err(FleetError::Token("malformed"))
        ));
    }

    #[test]
    fn only_the_latest_enrollments_certificate_is_admitted_and_revocation_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = store(dir.path());
        let t0 = Utc::now();
        let of = |cert: &str| s.admission("vehicle-07", cert).unwrap();
        assert_eq!(of("a"), Admission::NotEnrolled);
        assert_eq!(s.admission("nowhere", "a").unwrap(), Admission::NotEnrolled);
        let token = |s: &SqliteFleet| {
            s.create_token("vehicle-07", chrono::Duration::hours(1))
                .unwrap()
        };
        s.redeem(&token(&s), &issued("req-1", "cert-1")).unwrap();
        assert_eq!(of("cert-1"), Admission::Admitted);
        assert_eq!(of("cert-0"), Admission::Superseded);
        // A new enrollment (a replaced disk) retires the old certificate,
        // and the old enrollment's token cannot be asked again.
        let first = token(&s);
        s.redeem(&first, &issued("req-a", "cert-a")).unwrap();
        s.redeem(&token(&s), &issued("req-2", "cert-2")).unwrap();
        assert!(matches!(
            s.redeem(&first, &issued("req-a", "cert-a2")),
            Err(FleetError::Token("already used"))
        ));
        assert_eq!(of("cert-1"), Admission::Superseded);
        assert_eq!(of("cert-2"), Admission::Admitted);
        // Revoked: every certificate of the site is refused, once.
        s.record_availability("vehicle-07", false, None, t0)
            .unwrap();
        let unspent = token(&s);
        assert!(s.revoke("vehicle-07", t0).unwrap());
        assert!(!s.revoke("vehicle-07", t0).unwrap());
        // A token made before the revocation enrolls nobody.
        assert!(matches!(
            s.redeem(&unspent, &issued("req-u", "cert-u")),
            Err(FleetError::Token("expired"))
        ));
        // Asking again with the revoked enrollment's request is refused.
        let last = token(&s);
        assert!(s.redeem(&last, &issued("req-x", "cert-x")).is_ok());
        assert!(s.revoke("vehicle-07", t0).unwrap());
        assert!(matches!(
            s.redeem(&last, &issued("req-x", "cert-x2")),
            Err(FleetError::Token("already used"))
        ));
        assert_eq!(of("cert-2"), Admission::Revoked);
        assert!(s.site("vehicle-07").unwrap().unwrap().enrolled_at.is_none());
        assert!(
            s.alarms(Some("vehicle-07"), false).unwrap().is_empty(),
            "no offline alarm for a revoked site"
        );
        // A new token enrolls it again.
        s.redeem(&token(&s), &issued("req-3", "cert-3")).unwrap();
        assert_eq!(of("cert-3"), Admission::Admitted);
        assert_eq!(of("cert-2"), Admission::Superseded);
    }

    #[test]
    fn site_alarms_arrive_with_the_sites_times_and_clear_as_the_site_says() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = store(dir.path());
        let t = |secs: i64| DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap();
        let alarm = |code: &str, raised: i64, cleared: Option<i64>| AlarmStatus {
            code: code.into(),
            entity: "region=eu".into(),
            severity: Severity::Major,
            reason: format!("{code} reason"),
            raised_at: t(raised),
            cleared_at: cleared.map(t),
        };
        // While apart the site raised and cleared one, and raised another.
        let link = alarm("site.link_down", 10, Some(20));
        let disk = alarm("storage.disk_nearly_full", 15, None);
        assert!(s
            .apply_site_alarms(
                "vehicle-07",
                std::slice::from_ref(&disk),
                std::slice::from_ref(&link),
                t(100)
            )
            .unwrap());
        let all = s.alarms(Some("vehicle-07"), true).unwrap();
        let row = |code: &str| all.iter().find(|a| a.code == code).unwrap().clone();
        assert_eq!(row("site.link_down").raised_at, time(t(10)));
        assert_eq!(row("site.link_down").cleared_at, Some(time(t(20))));
        assert_eq!(row("storage.disk_nearly_full").raised_at, time(t(15)));
        assert_eq!(row("storage.disk_nearly_full").severity, "major");
        assert!(row("storage.disk_nearly_full").cleared_at.is_none());
        // The same publication again changes nothing.
        assert!(!s
            .apply_site_alarms(
                "vehicle-07",
                std::slice::from_ref(&disk),
                std::slice::from_ref(&link),
                t(101)
            )
            .unwrap());
        assert_eq!(s.alarms(Some("vehicle-07"), true).unwrap().len(), 2);
        // The site clears the disk alarm; it clears at the site's time.
        let disk_cleared = AlarmStatus {
            cleared_at: Some(t(50)),
            ..disk.clone()
        };
        s.apply_site_alarms("vehicle-07", &[], &[disk_cleared, link.clone()], t(102))
            .unwrap();
        assert!(s.alarms(Some("vehicle-07"), false).unwrap().is_empty());
        let all = s.alarms(Some("vehicle-07"), true).unwrap();
        let disk_row = all
            .iter()
            .find(|a| a.code == "storage.disk_nearly_full")
            .unwrap();
        assert_eq!(disk_row.cleared_at, Some(time(t(50))));
        // An active alarm the site stops listing (its history rolled over)
        // is cleared now; the region's own site.offline is left alone.
        let again = alarm("storage.disk_nearly_full", 60, None);
        s.apply_site_alarms("vehicle-07", &[again], &[], t(103))
            .unwrap();
        s.record_availability("vehicle-07", false, None, t(104))
            .unwrap();
        s.apply_site_alarms("vehicle-07", &[], &[], t(105)).unwrap();
        let active = s.alarms(Some("vehicle-07"), false).unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].code, OFFLINE_ALARM);
        let all = s.alarms(Some("vehicle-07"), true).unwrap();
        let last = all
            .iter()
            .find(|a| a.code == "storage.disk_nearly_full" && a.raised_at == time(t(60)))
            .unwrap();
        assert_eq!(last.cleared_at, Some(time(t(105))));
        // The site says it is active after all: it opens again.
        let again = alarm("storage.disk_nearly_full", 60, None);
        assert!(s
            .apply_site_alarms("vehicle-07", std::slice::from_ref(&again), &[], t(106))
            .unwrap());
        let active = s.alarms(Some("vehicle-07"), false).unwrap();
        assert!(active
            .iter()
            .any(|a| a.code == "storage.disk_nearly_full" && a.raised_at == time(t(60))));
        // A site cannot set or clear the region's own alarm about it.
        let forged = alarm(OFFLINE_ALARM, 200, Some(201));
        s.apply_site_alarms("vehicle-07", &[again], &[forged], t(107))
            .unwrap();
        let offline: Vec<_> = s
            .alarms(Some("vehicle-07"), true)
            .unwrap()
            .into_iter()
            .filter(|a| a.code == OFFLINE_ALARM)
            .collect();
        assert_eq!(offline.len(), 1);
        assert!(offline[0].cleared_at.is_none());
    }

    #[test]
    fn the_start_audit_marks_only_sites_not_heard_since_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = store(dir.path());
        let t = |secs: i64| DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap();
        let started = t(0);
        // Heard before the start only: its state is unknown, so raise.
        s.record_availability("vehicle-07", true, Some("10.0.0.7:4433"), t(-60))
            .unwrap();
        assert!(s.raise_offline("vehicle-07", started, t(10)).unwrap());
        // It connects (clearing the alarm) just before the audit's raise
        // lands: the audit must not raise a new one behind it.
        s.record_availability("vehicle-07", true, Some("10.0.0.7:4433"), t(10))
            .unwrap();
        assert!(!s.raise_offline("vehicle-07", started, t(10)).unwrap());
        let all = s.alarms(Some("vehicle-07"), true).unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert!(all[0].cleared_at.is_some());
    }

    #[test]
    fn going_offline_raises_one_critical_alarm_and_returning_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = store(dir.path());
        let t0 = Utc::now();
        s.record_availability("vehicle-07", true, Some("10.0.0.7:4433"), t0)
            .unwrap();
        assert!(s.alarms(None, false).unwrap().is_empty());
        s.record_availability("vehicle-07", false, None, t0)
            .unwrap();
        // Noticing it again does not raise a second alarm.
        assert!(!s
            .raise_offline("vehicle-07", t0 - chrono::Duration::hours(1), t0)
            .unwrap());
        s.record_availability("vehicle-07", false, None, t0)
            .unwrap();
        let active = s.alarms(Some("vehicle-07"), false).unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(
            (active[0].code.as_str(), active[0].severity.as_str()),
            (OFFLINE_ALARM, "critical")
        );
        s.record_availability("vehicle-07", true, Some("10.0.0.8:4433"), t0)
            .unwrap();
        assert!(s.alarms(None, false).unwrap().is_empty());
        let all = s.alarms(None, true).unwrap();
        assert_eq!(all.len(), 1);
        assert!(all[0].cleared_at.is_some());
        assert!(s.acknowledge_alarm(all[0].id, t0).unwrap());
        assert!(!s.acknowledge_alarm(all[0].id + 100, t0).unwrap());
        assert!(s.alarms(None, true).unwrap()[0].acknowledged_at.is_some());
        let history = s.availability_history("vehicle-07", 10).unwrap();
        assert_eq!(
            history
                .iter()
                .map(|h| h.availability.as_str())
                .collect::<Vec<_>>(),
            ["online", "offline", "offline", "online"]
        );
        assert_eq!(history[0].address.as_deref(), Some("10.0.0.8:4433"));
        assert!(s.site("vehicle-07").unwrap().unwrap().last_seen.is_some());
        assert!(s.set_management("vehicle-07", "unmanaged").unwrap());
        assert!(!s.set_management("nowhere", "unmanaged").unwrap());
        assert_eq!(
            s.site("vehicle-07").unwrap().unwrap().management,
            "unmanaged"
        );
    }

    #[test]
    fn the_ca_and_the_documents_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (s, ca) = store(dir.path());
        let mut docs = s.load_docs("vehicle-07", b"region-actor-0001").unwrap();
        let before = docs.intent.heads();
        let fields = serde_json::json!({"name": "x"})
            .as_object()
            .unwrap()
            .clone();
        docs.intent.create("servers", "s1", fields, 1).unwrap();
        let changes = docs.intent.changes_since(&before);
        s.append_changes("vehicle-07", &changes, &[]).unwrap();
        drop(s);
        let (s, again) = SqliteFleet::open(dir.path(), "eu").unwrap();
        assert_eq!(again.key_pem(), ca.key_pem());
        let docs = s.load_docs("vehicle-07", b"region-actor-0002").unwrap();
        assert!(docs.intent.resource("servers", "s1").unwrap().is_some());
        assert!(matches!(
            SqliteFleet::open(dir.path(), "us"),
            Err(FleetError::WrongRegion { .. })
        ));
    }
}
