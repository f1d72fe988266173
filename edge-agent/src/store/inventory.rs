//! The site's inventory and identity, bootstrapped from the config at start.
//!
//! Hosts come from the config alone: the config is their spec. Flavors and
//! images in the config are seeds: added when absent by name, never
//! overwriting what the API created or changed.

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};

use roost_common::config::SiteConfig;
use roost_common::model::{
    Flavor, Host, HostSpec, HostStatus, Image, ImageState, ImageStatus, Resource, Usage,
};

use super::rows::{self, json, time};
use super::{StoreError, WriteError};
use crate::scheduler::HostView;

/// The site's own identity, made once when the store is created.
#[derive(Clone)]
pub struct Identity {
    pub site_id: String,
    /// The bootstrap `admin` user's id.
    pub admin_user_id: String,
    /// The bootstrap `admin` project's id.
    pub admin_project_id: String,
    /// Secret key that signs this site's tokens.
    pub token_key: Vec<u8>,
    /// The Automerge actor this site writes intent with (its status actor
    /// is derived from the site id).
    pub intent_actor: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("site_id", &self.site_id)
            .field("admin_user_id", &self.admin_user_id)
            .field("admin_project_id", &self.admin_project_id)
            .finish_non_exhaustive()
    }
}

pub(crate) fn meta(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

/// Sets a `meta` value, made or replaced.
pub(super) fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

fn meta_or_init(
    conn: &Connection,
    key: &str,
    init: impl FnOnce() -> String,
) -> Result<String, StoreError> {
    if let Some(v) = meta(conn, key)? {
        return Ok(v);
    }
    let v = init();
    conn.execute("INSERT INTO meta (key, value) VALUES (?1, ?2)", [key, &v])?;
    Ok(v)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Starts term `term` of an edge HA site on this node: new actors for both
/// documents, so nothing this node writes can reuse a sequence number
/// another node of the site already wrote with (see `docs/edge-ha.md`).
/// Runs before [`bootstrap`], which then reads them back.
pub(super) fn take_term(
    tx: &Connection,
    site_id: &str,
    node: &str,
    term: u64,
) -> Result<(), StoreError> {
    set_meta(tx, "ha_term", &term.to_string())?;
    set_meta(
        tx,
        "intent_actor",
        &format!("site:{site_id}:{}", uuid::Uuid::new_v4().simple()),
    )?;
    // With a nonce: two nodes that each took the same term while cut from
    // each other still write with different actors.
    let status = roost_sync::site_status_actor_of_term(site_id, node, term);
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    set_meta(
        tx,
        "status_actor",
        &format!("{}.{}", String::from_utf8_lossy(&status), &nonce[..12]),
    )?;
    Ok(())
}

/// Checks the store belongs to `site_id`, makes the identity on first start
/// and brings hosts, flavors and images in line with the config, all in one
/// transaction.
pub(super) fn bootstrap(
    tx: &Connection,
    site_id: &str,
    config: &SiteConfig,
) -> Result<Identity, StoreError> {
    let stored_site = meta_or_init(tx, "site_id", || site_id.to_string())?;
    if stored_site != site_id {
        return Err(StoreError::Inventory(format!(
            "this data dir holds site {stored_site:?}, not {site_id:?}; point --data-dir at the right site's directory"
        )));
    }
    let new_hex_id = || uuid::Uuid::new_v4().simple().to_string();
    let identity = Identity {
        site_id: site_id.to_string(),
        admin_user_id: meta_or_init(tx, "admin_user_id", new_hex_id)?,
        admin_project_id: meta_or_init(tx, "admin_project_id", new_hex_id)?,
        token_key: {
            let key = meta_or_init(tx, "token_key", || {
                let mut k = [0u8; 32];
                rand::rng().fill_bytes(&mut k);
                hex(&k)
            })?;
            key.into_bytes()
        },
        intent_actor: meta_or_init(tx, "intent_actor", || {
            format!("site:{site_id}:{}", uuid::Uuid::new_v4().simple())
        })?
        .into_bytes(),
    };
    sync_hosts(tx, &config.hosts)?;
    let now = Utc::now();
    super::accounts::bootstrap_project(tx, &identity.admin_project_id, &now)?;
    for spec in &config.flavors {
        let exists: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM flavors WHERE name = ?1)",
            [&spec.name],
            |r| r.get(0),
        )?;
        if !exists {
            let mut f: Flavor = Resource::new(spec.clone(), now);
            if let Some(id) = &spec.id {
                f.id = id.clone();
            }
            rows::insert(tx, "flavors", &f, Some(&spec.name))?;
        }
    }
    for spec in &config.images {
        let exists: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM images WHERE name = ?1)",
            [&spec.name],
            |r| r.get(0),
        )?;
        if !exists {
            let mut i: Image = Resource::new(spec.clone(), now);
            i.status = ImageStatus {
                state: ImageState::Active,
                ..Default::default()
            };
            if let Some(id) = &spec.id {
                i.id = id.clone();
            }
            rows::insert(tx, "images", &i, Some(&spec.name))?;
        }
    }
    let interrupted = super::images::reset_interrupted_uploads(tx)?;
    if interrupted > 0 {
        tracing::warn!(
            images = interrupted,
            "image uploads were cut by a stop; those images are queued again: upload their data again"
        );
    }
    Ok(identity)
}

fn sync_hosts(conn: &Connection, hosts: &[HostSpec]) -> Result<(), StoreError> {
    let now = time(&Utc::now());
    let wanted: BTreeSet<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let stored: Vec<String> = conn
        .prepare("SELECT id FROM hosts")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for name in stored.iter().filter(|n| !wanted.contains(n.as_str())) {
        let placed: u32 = conn.query_row(
            "SELECT COUNT(*) FROM allocations WHERE host = ?1",
            [name],
            |r| r.get(0),
        )?;
        if placed > 0 {
            return Err(StoreError::Inventory(format!(
                "host {name:?} is no longer in the config but {placed} servers are placed on it; \
                 put it back (with enabled: false to drain it) or delete its servers first"
            )));
        }
        conn.execute("DELETE FROM hosts WHERE id = ?1", [name])?;
        tracing::info!(host = %name, "host removed from the site");
    }
    for h in hosts {
        let spec = json(h)?;
        let status = json(&HostStatus::default())?;
        conn.execute(
            "INSERT INTO hosts (id, spec, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (id) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at
             WHERE spec <> excluded.spec",
            params![h.name, spec, status, now],
        )?;
    }
    Ok(())
}

/// Resources claimed on each host.
pub(super) fn usage_by_host(conn: &Connection) -> Result<HashMap<String, Usage>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT host, SUM(vcpus), SUM(ram_mb), SUM(disk_gb), COUNT(*) FROM allocations GROUP BY host",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Usage {
                vcpus: r.get(1)?,
                ram_mb: r.get(2)?,
                disk_gb: r.get(3)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Hosts with their usage, ordered by name: what the scheduler starts from.
pub(super) fn load_host_views(conn: &Connection) -> Result<Vec<HostView>, StoreError> {
    let used = usage_by_host(conn)?;
    let hosts: Vec<Host> = rows::list(conn, "hosts", "1", [])?;
    let mut views: Vec<HostView> = hosts
        .into_iter()
        .map(|h| {
            let u = used.get(&h.id).copied().unwrap_or_default();
            HostView::new(h.spec, u)
        })
        .collect();
    super::alarms::mark_down(conn, &mut views)?;
    views.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    Ok(views)
}

/// A host as `os-hypervisors` shows it.
#[derive(Debug, Clone)]
pub struct HypervisorView {
    /// 1-based position by name; stable while the host list is.
    pub id: usize,
    pub host: HostView,
    pub running: u32,
}

pub(super) fn hypervisors(conn: &Connection) -> Result<Vec<HypervisorView>, WriteError> {
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut stmt = conn.prepare_cached("SELECT host, COUNT(*) FROM allocations GROUP BY host")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))? {
        let (h, n) = row?;
        counts.insert(h, n);
    }
    Ok(load_host_views(conn)?
        .into_iter()
        .enumerate()
        .map(|(i, h)| HypervisorView {
            id: i + 1,
            running: counts.get(&h.spec.name).copied().unwrap_or(0),
            host: h,
        })
        .collect())
}

impl super::WriteCtx<'_> {
    /// Adds a flavor; its name and id must be new.
    pub fn create_flavor(
        &mut self,
        spec: roost_common::model::FlavorSpec,
    ) -> Result<Flavor, WriteError> {
        let mut f: Flavor = Resource::new(spec, self.now);
        if let Some(id) = &f.spec.id {
            f.id = id.clone();
        }
        let taken: Option<String> = self
            .tx
            .query_row(
                "SELECT id FROM flavors WHERE id = ?1 OR name = ?2",
                [&f.id, &f.spec.name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = taken {
            let what = if other == f.id {
                format!("ID {}", f.id)
            } else {
                format!("name {}", f.spec.name)
            };
            return Err(WriteError::Conflict(format!(
                "Flavor with {what} already exists."
            )));
        }
        rows::insert(self.tx, "flavors", &f, Some(&f.spec.name))?;
        self.record_create("flavors", &f.id, &f.spec);
        Ok(f)
    }

    /// Deletes a flavor no server uses (a server's flavor is what its
    /// claim and its domain are made from).
    pub fn delete_flavor(&mut self, id: &str) -> Result<(), WriteError> {
        let exists: bool = self.tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM flavors WHERE id = ?1)",
            [id],
            |r| r.get(0),
        )?;
        if !exists {
            return Err(WriteError::NotFound(format!(
                "Flavor {id} could not be found."
            )));
        }
        let users = super::servers::live_users(self.tx, "flavor_id", id)?;
        if !users.is_empty() {
            return Err(WriteError::Conflict(format!(
                "Flavor {id} is in use by server(s) {}; delete them first",
                users.join(", ")
            )));
        }
        self.tx.execute("DELETE FROM flavors WHERE id = ?1", [id])?;
        self.record_delete("flavors", id);
        Ok(())
    }

    /// Revokes one of this site's tokens until it would have expired;
    /// expired revocations are dropped on the way.
    pub fn revoke_token(
        &mut self,
        audit_id: &str,
        expires_at: &chrono::DateTime<Utc>,
    ) -> Result<(), WriteError> {
        let now = time(&self.now);
        self.tx
            .execute("DELETE FROM revoked_tokens WHERE expires_at <= ?1", [&now])?;
        self.tx.execute(
            "INSERT INTO revoked_tokens (audit_id, expires_at) VALUES (?1, ?2)
             ON CONFLICT (audit_id) DO NOTHING",
            params![audit_id, time(expires_at)],
        )?;
        Ok(())
    }
}
