//! The site's two Automerge documents (intent and status, see `roost_sync`)
//! kept beside the tables, in the same transactions.
//!
//! - A job records what it changed as [`DocOp`]s; they are applied to the
//!   documents only if the job succeeded, all of a batch together, and every
//!   change the documents gained since the last commit (the batch's own and
//!   any received from the region) is appended to `sync_changes` before the
//!   batch's COMMIT. So no row exists without its change and no change
//!   without its rows, `kill -9` included. If the COMMIT fails the documents
//!   are reloaded from disk.
//! - Every [`COMPACT_AFTER`] changes the documents are saved whole into
//!   `sync_snapshots` and the changes folded into it are deleted, so a start
//!   loads one snapshot and a short tail.
//! - A store made before the documents existed gets them built from its
//!   rows on first open.
//! - Besides each resource's status, the site publishes facts about itself
//!   under `site/...` in the status document: `capacity` (written by the
//!   writer in any batch that changed claims) and `conflicts` (the journal's
//!   size and latest entries, after a pass that journaled one) and `images`
//!   (see `images`).
//! - Intent only the region writes: `quotas/site`, the site's allotment,
//!   enforced by the writer on every create (see `quota`).

use std::sync::{Arc, Mutex};

use automerge::ChangeHash;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use roost_common::model::{Flavor, Server, ServerGroup};
use roost_sync::{site_author, site_status_actor, Docs, IntentDoc, StatusDoc};

use super::{rows, StoreError};

/// Changes appended before the documents are saved whole again.
pub const COMPACT_AFTER: usize = 2000;

/// The kinds of resource the documents hold, by table name.
pub const KINDS: [&str; 4] = ["servers", "flavors", "server_groups", "images"];

/// Latest conflict journal entries published in the status document.
const PUBLISHED_CONFLICTS: i64 = 20;

/// Intent only the region writes: the site's allotment (one resource,
/// id [`QUOTA_ID`]).
pub const QUOTAS: &str = "quotas";
pub const QUOTA_ID: &str = "site";
/// Intent only the region writes: what the site needs to check the
/// region's Keystone tokens offline (kind `identity`, id `region`: the
/// region's public keys and revoked audit ids), kept in `meta`.
pub const IDENTITY: &str = "identity";
pub const IDENTITY_ID: &str = "region";
const TRUST_KEY: &str = "region_trust";

/// One edit of a document, made by a job that may still fail.
#[derive(Debug, Clone)]
pub enum DocOp {
    Create {
        kind: &'static str,
        id: String,
        fields: serde_json::Map<String, serde_json::Value>,
    },
    Set {
        kind: &'static str,
        id: String,
        field: String,
        value: serde_json::Value,
    },
    Delete {
        kind: &'static str,
        id: String,
    },
    Status {
        kind: &'static str,
        id: String,
        value: serde_json::Value,
    },
    Gone {
        kind: &'static str,
        id: String,
    },
}

/// A value as a JSON object's fields (specs are structs, so always one).
pub fn fields_of<T: Serialize>(v: &T) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

/// The documents and what of them is on disk.
#[derive(Debug)]
pub struct Journal {
    pub docs: Arc<Mutex<Docs>>,
    /// Signalled after a commit that changed the documents: the sync
    /// session has something to send.
    pub changed: Arc<tokio::sync::Notify>,
    site_id: String,
    actor: Vec<u8>,
    /// Heads of (intent, status) as of the last commit.
    persisted: [Vec<ChangeHash>; 2],
    /// Changes appended since the last snapshot.
    tail: usize,
    /// Intent heads the tables were last brought in line with; `None` means
    /// a full pass is due.
    pub applied: Option<Vec<ChangeHash>>,
    /// The capacity last written to the status document (`None` after a
    /// start: the first batch writes it).
    pub capacity: Option<roost_common::model::SiteCapacity>,
    /// Whether the site's images were published since the start (the
    /// first batch publishes them; image writes do after that).
    pub images_published: bool,
}

fn doc_name(i: usize) -> &'static str {
    ["intent", "status"][i]
}

impl Journal {
    /// Loads the documents (snapshot plus tail), or builds them from the
    /// rows when the store has none yet.
    pub fn open(conn: &Connection, site_id: &str, actor: Vec<u8>) -> Result<Journal, StoreError> {
        let (docs, tail) = load(conn, site_id, &actor)?;
        let mut j = Journal {
            docs: Arc::new(Mutex::new(docs)),
            changed: Arc::new(tokio::sync::Notify::new()),
            site_id: site_id.into(),
            actor,
            persisted: [Vec::new(), Vec::new()],
            tail,
            applied: None,
            capacity: None,
            images_published: false,
        };
        let empty: i64 = conn.query_row(
            "SELECT (SELECT COUNT(*) FROM sync_snapshots) + (SELECT COUNT(*) FROM sync_changes)",
            [],
            |r| r.get(0),
        )?;
        {
            let mut d = j.docs.lock().expect("docs lock");
            if empty == 0 {
                build_from_rows(conn, &mut d)?;
                write_snapshot(conn, &mut d)?;
            }
            j.persisted = [d.intent.heads(), d.status.heads()];
        }
        Ok(j)
    }

    /// Applies a batch's edits to the documents (locked by the caller).
    pub fn apply(docs: &mut Docs, ops: Vec<DocOp>, now_ms: i64) -> Result<(), StoreError> {
        let bad = |e: roost_sync::DocError| StoreError::Corrupt(format!("document edit: {e}"));
        for op in ops {
            match op {
                DocOp::Create { kind, id, fields } => {
                    docs.intent.create(kind, &id, fields, now_ms).map_err(bad)?
                }
                DocOp::Set {
                    kind,
                    id,
                    field,
                    value,
                } => docs
                    .intent
                    .set(kind, &id, &field, value, now_ms)
                    .map_err(bad)?,
                DocOp::Delete { kind, id } => docs.intent.delete(kind, &id, now_ms).map_err(bad)?,
                DocOp::Status { kind, id, value } => {
                    docs.status.set(kind, &id, &value).map_err(bad)?
                }
                DocOp::Gone { kind, id } => {
                    if docs.status.get(kind, &id).map_err(bad)?.is_some() {
                        docs.status.remove(kind, &id).map_err(bad)?
                    }
                }
            }
        }
        Ok(())
    }

    /// Appends every change since the last commit to `sync_changes` (or
    /// saves the documents whole when the tail is long). Returns the heads
    /// to hand to [`Self::committed`] once the transaction commits.
    pub fn persist(
        &mut self,
        tx: &Connection,
        docs: &mut Docs,
    ) -> Result<[Vec<ChangeHash>; 2], StoreError> {
        let mut appended = 0;
        for (i, replica) in [&mut *docs.intent, &mut *docs.status]
            .into_iter()
            .enumerate()
        {
            for bytes in replica.changes_since(&self.persisted[i]) {
                tx.prepare_cached("INSERT INTO sync_changes (doc, bytes) VALUES (?1, ?2)")?
                    .execute(params![doc_name(i), bytes])?;
                appended += 1;
            }
        }
        self.tail += appended;
        if self.tail >= COMPACT_AFTER {
            write_snapshot(tx, docs)?;
            self.tail = 0;
        }
        Ok([docs.intent.heads(), docs.status.heads()])
    }

    pub fn committed(&mut self, heads: [Vec<ChangeHash>; 2]) {
        if heads != self.persisted {
            self.persisted = heads;
            self.changed.notify_one();
        }
    }

    /// After a failed COMMIT: the documents go back to what is on disk.
    pub fn reload(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let (mut fresh, tail) = load(conn, &self.site_id, &self.actor)?;
        self.persisted = [fresh.intent.heads(), fresh.status.heads()];
        self.tail = tail;
        self.applied = None;
        self.capacity = None;
        self.images_published = false;
        *self.docs.lock().expect("docs lock") = fresh;
        Ok(())
    }
}

fn load(conn: &Connection, site_id: &str, actor: &[u8]) -> Result<(Docs, usize), StoreError> {
    let mut chunks: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    let mut tail = 0;
    for (i, chunk) in chunks.iter_mut().enumerate() {
        let snap: Option<Vec<u8>> = conn
            .query_row(
                "SELECT bytes FROM sync_snapshots WHERE doc = ?1",
                [doc_name(i)],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        chunk.extend(snap);
        let mut stmt =
            conn.prepare("SELECT bytes FROM sync_changes WHERE doc = ?1 ORDER BY seq")?;
        let rows = stmt.query_map([doc_name(i)], |r| r.get::<_, Vec<u8>>(0))?;
        for r in rows {
            chunk.push(r?);
            tail += 1;
        }
    }
    let corrupt = |e: roost_sync::DocError| StoreError::Corrupt(format!("site document: {e}"));
    // A node of an edge HA site writes status with its term's own actor.
    let status_actor = super::inventory::meta(conn, "status_actor")?
        .map(String::into_bytes)
        .unwrap_or_else(|| site_status_actor(site_id));
    let intent = IntentDoc::from_chunks(
        chunks[0].iter().map(Vec::as_slice),
        actor,
        &site_author(site_id),
    )
    .map_err(corrupt)?;
    let status = StatusDoc::from_chunks(chunks[1].iter().map(Vec::as_slice), &status_actor)
        .map_err(corrupt)?;
    Ok((
        Docs {
            intent,
            status,
            site_status_actor: status_actor,
        },
        tail,
    ))
}

fn write_snapshot(conn: &Connection, docs: &mut Docs) -> Result<(), StoreError> {
    for (i, bytes) in [docs.intent.save(), docs.status.save()]
        .into_iter()
        .enumerate()
    {
        conn.execute(
            "INSERT INTO sync_snapshots (doc, bytes) VALUES (?1, ?2)
             ON CONFLICT (doc) DO UPDATE SET bytes = excluded.bytes",
            params![doc_name(i), bytes],
        )?;
        conn.execute("DELETE FROM sync_changes WHERE doc = ?1", [doc_name(i)])?;
    }
    Ok(())
}

/// The documents of a store that had rows before it had documents.
fn build_from_rows(conn: &Connection, docs: &mut Docs) -> Result<(), StoreError> {
    let mut ops = Vec::new();
    let servers: Vec<Server> = rows::list(conn, "servers", "1", [])?;
    for s in servers {
        ops.push(DocOp::Create {
            kind: "servers",
            id: s.id.clone(),
            fields: fields_of(&s.spec),
        });
        ops.push(DocOp::Status {
            kind: "servers",
            id: s.id,
            value: serde_json::to_value(&s.status).unwrap_or_default(),
        });
    }
    let flavors: Vec<Flavor> = rows::list(conn, "flavors", "1", [])?;
    for f in flavors {
        ops.push(DocOp::Create {
            kind: "flavors",
            id: f.id,
            fields: fields_of(&f.spec),
        });
    }
    let groups: Vec<ServerGroup> = rows::list(conn, "server_groups", "1", [])?;
    for g in groups {
        ops.push(DocOp::Create {
            kind: "server_groups",
            id: g.id,
            fields: fields_of(&g.spec),
        });
    }
    Journal::apply(docs, ops, chrono::Utc::now().timestamp_millis())
}

impl super::WriteCtx<'_> {
    /// Records a new resource's intent (skipped while applying the
    /// region's intent, which the document holds already).
    pub fn record_create<T: Serialize>(&mut self, kind: &'static str, id: &str, spec: &T) {
        if self.record_intent {
            self.ops.push(DocOp::Create {
                kind,
                id: id.into(),
                fields: fields_of(spec),
            });
        }
    }

    /// Records the fields of intent that differ between `old` and `new`.
    pub fn record_changes<T: Serialize>(&mut self, kind: &'static str, id: &str, old: &T, new: &T) {
        if !self.record_intent {
            return;
        }
        let (old, new) = (fields_of(old), fields_of(new));
        for (field, value) in new {
            if old.get(&field) == Some(&value) {
                continue;
            }
            if field == "deleted" && value == serde_json::Value::Bool(true) {
                self.ops.push(DocOp::Delete {
                    kind,
                    id: id.into(),
                });
            } else {
                self.ops.push(DocOp::Set {
                    kind,
                    id: id.into(),
                    field,
                    value,
                });
            }
        }
    }

    /// Records a resource's removal from intent.
    pub fn record_delete(&mut self, kind: &'static str, id: &str) {
        if self.record_intent {
            self.ops.push(DocOp::Delete {
                kind,
                id: id.into(),
            });
        }
    }

    /// Records a resource's status (the site alone writes it).
    pub fn record_status<T: Serialize>(&mut self, kind: &'static str, id: &str, status: &T) {
        self.ops.push(DocOp::Status {
            kind,
            id: id.into(),
            value: serde_json::to_value(status).unwrap_or_default(),
        });
    }

    /// Records that a resource is gone from the site.
    pub fn record_gone(&mut self, kind: &'static str, id: &str) {
        self.ops.push(DocOp::Gone {
            kind,
            id: id.into(),
        });
    }
}

/// The region's token keys and revocations as last synced (empty before
/// the first sync).
pub fn read_trust(conn: &Connection) -> Result<roost_sync::token::Trust, StoreError> {
    let text: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [TRUST_KEY], |r| {
            r.get(0)
        })
        .optional()?;
    match text {
        None => Ok(Default::default()),
        Some(t) => {
            serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{TRUST_KEY}: {e}")))
        }
    }
}

/// What bringing the tables in line with the intent document did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Servers whose rows changed: the compute reconciler has work.
    pub servers: Vec<String>,
    /// Conflicts journaled by this pass.
    pub conflicts: usize,
    /// Images the region gave or changed, or cold ones its servers want:
    /// the fetcher has work.
    pub images: usize,
    /// Images the region withdrew: their files (`<images>/<id>`, `.part`,
    /// `.manifest`) go after the commit.
    pub withdrawn_images: Vec<String>,
}

impl super::WriteCtx<'_> {
    /// Brings the tables in line with the intent document after the region's
    /// changes arrived: settles concurrent edits (journaling the losers),
    /// then creates, updates or deletes the rows of every resource touched
    /// since the last pass (all of them on the first pass after a start).
    pub fn apply_intent(&mut self) -> Result<Applied, super::WriteError> {
        let bad = |e: roost_sync::DocError| StoreError::Corrupt(format!("site document: {e}"));
        let mut applied = Applied::default();
        for c in self.docs.intent.resolve().map_err(bad)? {
            tracing::warn!(kind = %c.kind, id = %c.id, field = %c.field,
                winner = %c.winner.by, loser = %c.loser.by, "concurrent intent edits; the loser is journaled");
            self.tx.execute(
                "INSERT INTO conflicts (kind, resource_id, field, winner, loser, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![c.kind, c.id, c.field, rows::json(&c.winner)?, rows::json(&c.loser)?, rows::time(&self.now)],
            )?;
            applied.conflicts += 1;
        }
        if applied.conflicts > 0 {
            // The region shows each site's journal (its size and the latest
            // entries) beside its sync state.
            let total: i64 = self
                .tx
                .query_row("SELECT COUNT(*) FROM conflicts", [], |r| r.get(0))?;
            let mut recent = Vec::new();
            let mut stmt = self.tx.prepare_cached(
                "SELECT seq, kind, resource_id, field, winner, loser, recorded_at FROM conflicts
                 ORDER BY seq DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([PUBLISHED_CONFLICTS], |r| {
                Ok(serde_json::json!({
                    "seq": r.get::<_, i64>(0)?, "kind": r.get::<_, String>(1)?,
                    "resource_id": r.get::<_, String>(2)?, "field": r.get::<_, String>(3)?,
                    "winner": serde_json::from_str::<serde_json::Value>(&r.get::<_, String>(4)?).unwrap_or_default(),
                    "loser": serde_json::from_str::<serde_json::Value>(&r.get::<_, String>(5)?).unwrap_or_default(),
                    "recorded_at": r.get::<_, String>(6)?,
                }))
            })?;
            for row in rows {
                recent.push(row?);
            }
            drop(stmt);
            self.record_status(
                "site",
                "conflicts",
                &serde_json::json!({ "total": total, "recent": recent }),
            );
        }
        let heads = self.docs.intent.heads();
        let touched: Vec<(String, String)> = match self.applied.as_deref() {
            Some(before) => self.docs.intent.touched_since(before).into_iter().collect(),
            None => {
                let mut all = Vec::new();
                for kind in KINDS.into_iter().chain([QUOTAS, IDENTITY]) {
                    for id in self.docs.intent.ids(kind).map_err(bad)? {
                        all.push((kind.to_string(), id));
                    }
                }
                all
            }
        };
        self.record_intent = false;
        let result = (|| {
            for (kind, id) in touched {
                let Some(view) = self.docs.intent.resource(&kind, &id).map_err(bad)? else {
                    continue;
                };
                match kind.as_str() {
                    "servers" => {
                        let changed = self.apply_server(&id, view, &mut applied)?;
                        if changed {
                            applied.servers.push(id);
                        }
                    }
                    "flavors" => self.apply_flavor(&id, view)?,
                    "images" => self.apply_image(&id, view, &mut applied)?,
                    QUOTAS if id == QUOTA_ID => self.apply_quota(view)?,
                    IDENTITY if id == IDENTITY_ID => self.apply_trust(view)?,
                    _ => {}
                }
            }
            Ok::<_, super::WriteError>(())
        })();
        self.record_intent = true;
        result?;
        *self.applied = Some(heads);
        Ok(applied)
    }

    /// A flavor the region published: added if new, removed when the
    /// region deletes it. A local flavor of the same name is left alone and
    /// the region's is skipped with a warning (flavor names are unique).
    fn apply_flavor(
        &mut self,
        id: &str,
        view: roost_sync::IntentView,
    ) -> Result<(), super::WriteError> {
        use roost_common::model::FlavorSpec;
        let exists: Option<Flavor> = rows::get(self.tx, "flavors", id)?;
        if view.deleted {
            if exists.is_some() {
                self.tx.execute("DELETE FROM flavors WHERE id = ?1", [id])?;
                tracing::info!(flavor = %id, "the region withdrew a flavor");
            }
            return Ok(());
        }
        if exists.is_some() {
            return Ok(());
        }
        let fields: serde_json::Map<String, serde_json::Value> = view.fields.into_iter().collect();
        let spec = serde_json::from_value::<FlavorSpec>(serde_json::Value::Object(fields))
            .map_err(|e| e.to_string())
            .and_then(|mut spec| {
                spec.id = Some(id.to_string());
                spec.validate().map_err(|e| e.to_string())?;
                Ok(spec)
            });
        match spec {
            Ok(spec) => match self.create_flavor(spec) {
                Ok(_) => tracing::info!(flavor = %id, "the region published a flavor"),
                Err(super::WriteError::Conflict(why)) => {
                    tracing::warn!(flavor = %id, %why, "the region's flavor clashes with a local one; skipped")
                }
                Err(e) => return Err(e),
            },
            Err(why) => {
                tracing::warn!(flavor = %id, %why, "the region's intent for a flavor is not a flavor; ignored")
            }
        }
        Ok(())
    }

    /// An image the region gave this site: recorded `queued` (its bytes
    /// come from the region: see `storage::fetch`), told when the region
    /// holds its bytes, removed when the region withdraws it (unless a
    /// server boots from it: then it stays, with a warning).
    fn apply_image(
        &mut self,
        id: &str,
        view: roost_sync::IntentView,
        applied: &mut Applied,
    ) -> Result<(), super::WriteError> {
        use roost_common::model::{Image, ImageSpec, ImageState};
        let exists: Option<Image> = rows::get(self.tx, "images", id)?;
        if view.deleted {
            // The site never writes images into intent: one there is the
            // region's.
            if let Some(i) = exists {
                match self.delete_image(&i.id) {
                    Ok(_) => {
                        tracing::info!(image = %id, "the region withdrew an image");
                        applied.withdrawn_images.push(id.to_string());
                    }
                    Err(e) => {
                        tracing::warn!(image = %id, error = %e, "the region withdrew an image this site still uses; kept")
                    }
                }
            }
            return Ok(());
        }
        let fields: serde_json::Map<String, serde_json::Value> = view.fields.into_iter().collect();
        let mut spec: ImageSpec = match serde_json::from_value(serde_json::Value::Object(fields)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(image = %id, error = %e, "the region's intent for an image is not an image; ignored");
                return Ok(());
            }
        };
        spec.id = Some(id.to_string());
        // Bytes come only from the region, never from a path it names.
        (spec.file, spec.kernel, spec.ramdisk) = (None, None, None);
        if spec.owner.as_deref() == Some(crate::api::REGION_ADMIN_PROJECT) {
            spec.owner = Some(self.tx.query_row(
                "SELECT value FROM meta WHERE key = 'admin_project_id'",
                [],
                |r| r.get(0),
            )?);
        }
        match exists {
            None => {
                let region = spec.region.clone();
                match self.create_image(ImageSpec {
                    region: None,
                    ..spec
                }) {
                    Ok(_) => {}
                    Err(e @ (super::WriteError::Invalid(_) | super::WriteError::Conflict(_))) => {
                        tracing::warn!(image = %id, error = %e, "the region's image cannot be recorded here; ignored");
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
                // `create_image` takes a client's spec; the region's copy is
                // set apart.
                self.set_region_copy(id, region)?;
                tracing::info!(image = %id, "the region gave this site an image");
                applied.images += 1;
            }
            Some(i) if i.spec.region.is_some() || i.status.state == ImageState::Queued => {
                if i.spec.region != spec.region && i.status.state == ImageState::Queued {
                    self.set_region_copy(id, spec.region)?;
                    applied.images += 1;
                }
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The region's allotment for this site.
    fn apply_quota(&mut self, view: roost_sync::IntentView) -> Result<(), super::WriteError> {
        if view.deleted {
            tracing::info!("the region lifted this site's quota");
            return self.set_quota(None);
        }
        let fields: serde_json::Map<String, serde_json::Value> = view.fields.into_iter().collect();
        match serde_json::from_value::<super::Quota>(serde_json::Value::Object(fields))
            .map_err(|e| e.to_string())
            .and_then(|q| q.validate().map(|()| q).map_err(|e| e.to_string()))
        {
            Ok(q) => {
                if self.quota()?.as_ref() != Some(&q) {
                    tracing::info!(quota = ?q, "the region set this site's quota");
                    self.set_quota(Some(&q))?;
                }
            }
            Err(why) => {
                tracing::warn!(%why, "the region's quota for this site is not a quota; ignored")
            }
        }
        Ok(())
    }

    /// The region's token keys and revocations, kept for [`read_trust`].
    fn apply_trust(&mut self, view: roost_sync::IntentView) -> Result<(), super::WriteError> {
        let fields: serde_json::Map<String, serde_json::Value> = view.fields.into_iter().collect();
        let trust = if view.deleted {
            roost_sync::token::Trust::default()
        } else {
            match serde_json::from_value::<roost_sync::token::Trust>(serde_json::Value::Object(
                fields,
            )) {
                Ok(t) => t,
                Err(why) => {
                    tracing::warn!(%why, "the region's token keys are not readable; ignored");
                    return Ok(());
                }
            }
        };
        super::inventory::set_meta(self.tx, TRUST_KEY, &rows::json(&trust)?)?;
        tracing::info!(
            keys = trust.keys.len(),
            revoked = trust.revoked.len(),
            "the region's token keys updated"
        );
        Ok(())
    }

    /// One server's intent onto its row. Returns whether the row changed.
    fn apply_server(
        &mut self,
        id: &str,
        view: roost_sync::IntentView,
        applied: &mut Applied,
    ) -> Result<bool, super::WriteError> {
        use super::{NewServer, WriteError};
        use roost_common::model::ServerSpec;
        let row: Option<Server> = rows::get(self.tx, "servers", id)?;
        let mut fields: serde_json::Map<String, serde_json::Value> =
            view.fields.into_iter().collect();
        fields.insert("deleted".into(), serde_json::Value::Bool(view.deleted));
        let mut spec: ServerSpec = match serde_json::from_value(serde_json::Value::Object(fields)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(server = %id, error = %e, "the region's intent for a server is not a server spec; ignored");
                return Ok(false);
            }
        };
        // The region does not know the site's local project and user: its
        // servers leave them empty and belong to the site's admin project.
        for (value, key) in [
            (&mut spec.project_id, "admin_project_id"),
            (&mut spec.user_id, "admin_user_id"),
        ] {
            if value.is_empty() {
                *value =
                    self.tx
                        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))?;
            }
        }
        match row {
            None if spec.deleted => Ok(false),
            None => match self.create_server(NewServer {
                spec: spec.clone(),
                id: Some(id.into()),
            }) {
                Ok(_) => Ok(true),
                Err(
                    e
                    @ (WriteError::Invalid(_) | WriteError::NoValidHost(_) | WriteError::Quota(_)),
                ) => {
                    tracing::warn!(server = %id, error = %e, "the region's server cannot be placed here");
                    // A cold image is fetched again, for the next try.
                    if self.recall_image(&spec.image_id)? {
                        applied.images += 1;
                    }
                    self.insert_failed_server(id, spec, e.to_string())?;
                    Ok(true)
                }
                Err(e) => Err(e),
            },
            Some(row) if row.spec == spec => Ok(false),
            Some(_) => {
                // A rebuild onto a cold image: the compute driver refuses
                // it (no blank disk in its place), and the image comes
                // back for the next try.
                if self.recall_image(&spec.image_id)? {
                    applied.images += 1;
                }
                self.replace_server_spec(id, &spec)?;
                Ok(true)
            }
        }
    }
}
