//! The site's documents.
//!
//! Two Automerge documents per site, so the rule "one writer per fact" is
//! structural rather than checked op by op:
//! - [`IntentDoc`]: spec, which the site and the region may both write;
//! - [`StatusDoc`]: status, which only the site writes (the session refuses
//!   status changes from anyone else).
//!
//! Both use flat keys, `"<kind>/<id>/<field>"`, holding scalar strings. Flat
//! keys mean no nested object is ever created twice concurrently (a classic
//! Automerge trap), and concurrent writes of one field surface as one key
//! with several values, which [`IntentDoc::resolve`] settles by the merge
//! rules below.
//!
//! # Merge rules (intent)
//! 1. **Delete beats update.** `deleted` is a field like any other, and once
//!    any writer has set it to `true` the resource is deleted, whatever was
//!    written concurrently.
//! 2. **Last writer wins, deterministically.** Concurrent values of one field
//!    are ordered by (wall-clock time of the write, author, value); the
//!    greatest wins on every replica, because every replica sees the same
//!    set of values.
//! 3. **Nothing is lost silently.** Every losing value becomes a
//!    [`Conflict`] (resource, field, both values, both authors, both times)
//!    for the conflict journal, and the winner is written back so the field
//!    has one value again.

use std::collections::BTreeMap;

use automerge::{
    transaction::Transactable, ActorId, AutoCommit, ReadDoc, ScalarValue, Value, ROOT,
};
use serde::{Deserialize, Serialize};

/// Why a document operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("{what} {value:?} must be non-empty and must not contain '/'")]
    BadKey { what: &'static str, value: String },
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    #[error("document field {key} holds {found}, not a Roost value")]
    Foreign { key: String, found: String },
}

/// The Automerge actor a site writes its status with. Derived from the site
/// id alone, so a region can tell the site's status changes from forgeries.
pub fn site_status_actor(site_id: &str) -> Vec<u8> {
    format!("status:{site_id}").into_bytes()
}

/// The status actor of one term of a site with two controller nodes:
/// each node that becomes active writes with a fresh one, so two nodes
/// never reuse an actor's sequence numbers (see `docs/edge-ha.md`).
pub fn site_status_actor_of_term(site_id: &str, node: &str, term: u64) -> Vec<u8> {
    format!("status:{site_id}#{node}.{term}").into_bytes()
}

/// The plain status actor of a site, from it or one of its terms' actors.
pub fn plain_site_status_actor(actor: &[u8]) -> &[u8] {
    match actor.iter().position(|&b| b == b'#') {
        Some(i) => &actor[..i],
        None => actor,
    }
}

/// Whether `actor` writes status for the site whose plain status actor is
/// `site_actor`: that actor, or one of its terms.
pub fn is_site_status_actor(site_actor: &[u8], actor: &[u8]) -> bool {
    actor == site_actor
        || actor
            .strip_prefix(site_actor)
            .is_some_and(|rest| rest.first() == Some(&b'#'))
}

/// The author name a site writes intent as.
pub fn site_author(site_id: &str) -> String {
    format!("site:{site_id}")
}

/// One written value of an intent field, with who wrote it and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    pub v: serde_json::Value,
    /// Milliseconds since the Unix epoch, by the writer's clock.
    pub at: i64,
    /// The writer: `site:<id>` or `region:<name>`.
    pub by: String,
}

impl Stamped {
    fn order_key(&self) -> (i64, &str, String) {
        (self.at, self.by.as_str(), self.v.to_string())
    }
}

/// A losing value, for the conflict journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub kind: String,
    pub id: String,
    pub field: String,
    pub winner: Stamped,
    pub loser: Stamped,
}

/// A resource's intent as the document holds it after merge rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntentView {
    pub fields: BTreeMap<String, serde_json::Value>,
    pub deleted: bool,
}

fn check(what: &'static str, value: &str) -> Result<(), DocError> {
    if value.is_empty() || value.contains('/') {
        return Err(DocError::BadKey {
            what,
            value: value.into(),
        });
    }
    Ok(())
}

/// The key a resource's creation is written under (no spec field starts
/// with `~`).
const CREATE: &str = "~create";

fn key(kind: &str, id: &str, field: &str) -> Result<String, DocError> {
    check("kind", kind)?;
    check("id", id)?;
    check("field", field)?;
    Ok(format!("{kind}/{id}/{field}"))
}

fn text_of(key: &str, v: &Value<'_>) -> Result<String, DocError> {
    match v {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => Ok(s.to_string()),
            other => Err(DocError::Foreign {
                key: key.into(),
                found: format!("{other:?}"),
            }),
        },
        Value::Object(o) => Err(DocError::Foreign {
            key: key.into(),
            found: format!("{o:?}"),
        }),
    }
}

fn stamped(key: &str, v: &Value<'_>) -> Result<Stamped, DocError> {
    let text = text_of(key, v)?;
    serde_json::from_str(&text).map_err(|_| DocError::Foreign {
        key: key.into(),
        found: text,
    })
}

fn load_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    actor: &[u8],
) -> Result<AutoCommit, DocError> {
    // One load of all chunks together: loading them one by one merges once
    // per chunk, which makes a start with a long tail of changes slow.
    let mut all = Vec::new();
    for c in chunks {
        all.extend_from_slice(c);
    }
    let mut doc = AutoCommit::new();
    if !all.is_empty() {
        doc.load_incremental(&all)?;
    }
    // What was loaded is saved already: start the save cursor here.
    doc.save_incremental();
    Ok(doc.with_actor(ActorId::from(actor)))
}

/// Who wins among concurrent values of `field`.
fn winner<'a>(field: &str, values: &'a [Stamped]) -> &'a Stamped {
    let best = |a: &&'a Stamped, b: &&'a Stamped| a.order_key().cmp(&b.order_key());
    if field == "deleted" {
        if let Some(del) = values
            .iter()
            .filter(|s| s.v == serde_json::Value::Bool(true))
            .max_by(best)
        {
            return del;
        }
    }
    values.iter().max_by(best).expect("at least one value")
}

/// What both documents share: an Automerge document of this replica, its
/// persistence and its change bookkeeping. `IntentDoc` and `StatusDoc`
/// dereference to it.
#[derive(Debug, Clone)]
pub struct Replica {
    doc: AutoCommit,
}

impl Replica {
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    pub(crate) fn automerge(&mut self) -> &mut AutoCommit {
        &mut self.doc
    }

    /// The document's current heads.
    pub fn heads(&mut self) -> Vec<automerge::ChangeHash> {
        self.doc.get_heads()
    }

    /// Whether the document holds the change with this hash.
    pub fn has_change(&mut self, hash: &automerge::ChangeHash) -> bool {
        self.doc.get_change_by_hash(hash).is_some()
    }

    /// Hash of the last change this replica made.
    pub fn last_local_change(&mut self) -> Option<automerge::ChangeHash> {
        self.doc.get_last_local_change().map(|c| c.hash())
    }

    /// Closes the pending local edits into one change and returns its bytes,
    /// for appending to durable storage in the same transaction as the rows
    /// it describes. Empty when nothing was edited. Costs the size of the
    /// change, not of the document.
    pub fn take_local_change(&mut self) -> Vec<u8> {
        if self.doc.pending_ops() == 0 {
            return Vec::new();
        }
        match self.doc.commit() {
            Some(hash) => self
                .doc
                .get_change_by_hash(&hash)
                .map(|c| c.raw_bytes().to_vec())
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Every change (local or received) the document holds that `heads` do
    /// not, each as the bytes to append to durable storage. Closes pending
    /// local edits first.
    pub fn changes_since(&mut self, heads: &[automerge::ChangeHash]) -> Vec<Vec<u8>> {
        // Only with edits pending: automerge 0.7.4's commit() with nothing
        // pending leaves the document so that the next received change
        // panics (PatchLogMismatch); `commit_with_nothing_pending` below.
        if self.doc.pending_ops() > 0 {
            self.doc.commit();
        }
        self.doc
            .get_changes(heads)
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }

    /// How far a peer whose heads are `peer_heads` is from this replica:
    /// `(changes of ours the peer lacks, peer heads we lack)`. The second
    /// is a lower bound of the changes waiting on the peer's side (each
    /// unknown head is at least one change).
    pub fn distance(&mut self, peer_heads: &[automerge::ChangeHash]) -> (usize, usize) {
        let known: Vec<_> = peer_heads
            .iter()
            .filter(|h| self.doc.get_change_by_hash(h).is_some())
            .copied()
            .collect();
        let unknown = peer_heads.len() - known.len();
        let mut ours = self.doc.get_heads();
        let mut theirs = known.clone();
        ours.sort();
        theirs.sort();
        let ahead = if ours == theirs {
            0
        } else {
            self.doc.get_changes(&known).len()
        };
        (ahead, unknown)
    }

    /// Applies changes another replica made (as [`Self::changes_since`]
    /// returned them).
    pub fn apply_changes(&mut self, changes: &[Vec<u8>]) -> Result<(), DocError> {
        for c in changes {
            self.doc.load_incremental(c)?;
        }
        Ok(())
    }

    /// Drops local writes not yet closed by [`Self::take_local_change`].
    pub fn discard_pending(&mut self) {
        self.doc.rollback();
    }
}

macro_rules! replica_deref {
    ($t:ty) => {
        impl std::ops::Deref for $t {
            type Target = Replica;
            fn deref(&self) -> &Replica {
                &self.replica
            }
        }
        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut Replica {
                &mut self.replica
            }
        }
    };
}
replica_deref!(IntentDoc);
replica_deref!(StatusDoc);

/// Spec of every resource of a site, written by the site and the region.
#[derive(Debug, Clone)]
pub struct IntentDoc {
    replica: Replica,
    author: String,
}

impl IntentDoc {
    /// An empty document written as `author` (`site:<id>` or
    /// `region:<name>`) under the Automerge actor `actor`.
    pub fn new(actor: &[u8], author: &str) -> Self {
        IntentDoc {
            replica: Replica {
                doc: AutoCommit::new().with_actor(ActorId::from(actor)),
            },
            author: author.into(),
        }
    }

    /// A document saved by [`IntentDoc::save`].
    pub fn load(bytes: &[u8], actor: &[u8], author: &str) -> Result<Self, DocError> {
        Ok(IntentDoc {
            replica: Replica {
                doc: AutoCommit::load(bytes)?.with_actor(ActorId::from(actor)),
            },
            author: author.into(),
        })
    }

    /// A document rebuilt from saved chunks (a [`Self::save`] snapshot and
    /// the changes [`Self::take_local_change`] returned), in order.
    pub fn from_chunks<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
        actor: &[u8],
        author: &str,
    ) -> Result<Self, DocError> {
        Ok(IntentDoc {
            replica: Replica {
                doc: load_chunks(chunks, actor)?,
            },
            author: author.into(),
        })
    }

    /// Records a new resource with all its fields in one write (one key,
    /// so creating costs one operation however many fields it has). Later
    /// writes of single fields win over these values.
    pub fn create(
        &mut self,
        kind: &str,
        id: &str,
        fields: serde_json::Map<String, serde_json::Value>,
        now_ms: i64,
    ) -> Result<(), DocError> {
        self.put_stamped(
            key(kind, id, CREATE)?,
            serde_json::Value::Object(fields),
            now_ms,
        )
    }

    fn put_stamped(
        &mut self,
        k: String,
        v: serde_json::Value,
        now_ms: i64,
    ) -> Result<(), DocError> {
        let s = Stamped {
            v,
            at: now_ms,
            by: self.author.clone(),
        };
        self.replica.doc.put(
            ROOT,
            k,
            serde_json::to_string(&s).expect("json values serialize"),
        )?;
        Ok(())
    }

    /// Writes one field of a resource's intent.
    pub fn set(
        &mut self,
        kind: &str,
        id: &str,
        field: &str,
        v: serde_json::Value,
        now_ms: i64,
    ) -> Result<(), DocError> {
        if field.starts_with('~') {
            return Err(DocError::BadKey {
                what: "field",
                value: field.into(),
            });
        }
        self.put_stamped(key(kind, id, field)?, v, now_ms)
    }

    /// Marks a resource deleted (rule 1: this beats any concurrent update).
    pub fn delete(&mut self, kind: &str, id: &str, now_ms: i64) -> Result<(), DocError> {
        self.set(kind, id, "deleted", serde_json::Value::Bool(true), now_ms)
    }

    /// A resource's intent after the merge rules, or `None` if never written.
    pub fn resource(&self, kind: &str, id: &str) -> Result<Option<IntentView>, DocError> {
        let prefix = key(kind, id, "x")?;
        let prefix = &prefix[..prefix.len() - 1];
        let mut view = IntentView::default();
        let mut initial = serde_json::Map::new();
        let mut deleted = None;
        let mut any = false;
        for k in self.replica.doc.map_range(ROOT, prefix.to_string()..) {
            if !k.key.starts_with(prefix) {
                break;
            }
            any = true;
            let field = &k.key[prefix.len()..];
            let values = self.values(&k.key)?;
            let w = winner(field, &values);
            match field {
                CREATE => {
                    if let serde_json::Value::Object(m) = &w.v {
                        initial = m.clone();
                    }
                }
                "deleted" => deleted = Some(w.v == serde_json::Value::Bool(true)),
                _ => {
                    view.fields.insert(field.to_string(), w.v.clone());
                }
            }
        }
        // Fields written after creation win over the values it was made with.
        for (f, v) in initial {
            if f == "deleted" {
                deleted = deleted.or(Some(v == serde_json::Value::Bool(true)));
            } else {
                view.fields.entry(f).or_insert(v);
            }
        }
        view.deleted = deleted.unwrap_or(false);
        Ok(any.then_some(view))
    }

    /// Ids of every resource of `kind` the document mentions.
    pub fn ids(&self, kind: &str) -> Result<Vec<String>, DocError> {
        check("kind", kind)?;
        let prefix = format!("{kind}/");
        let mut ids: Vec<String> = Vec::new();
        for k in self.replica.doc.map_range(ROOT, prefix.clone()..) {
            let Some(rest) = k.key.strip_prefix(&prefix) else {
                break;
            };
            let id = rest.split('/').next().unwrap_or_default();
            if ids.last().map(String::as_str) != Some(id) {
                ids.push(id.to_string());
            }
        }
        Ok(ids)
    }

    /// The resources (kind, id) whose keys changed between `before` and the
    /// current heads, by any writer: what a site must bring its tables in
    /// line with after receiving changes.
    pub fn touched_since(
        &mut self,
        before: &[automerge::ChangeHash],
    ) -> std::collections::BTreeSet<(String, String)> {
        let after = self.replica.doc.get_heads();
        let mut touched = std::collections::BTreeSet::new();
        for patch in self.replica.doc.diff(before, &after) {
            let key = match &patch.action {
                automerge::PatchAction::PutMap { key, .. }
                | automerge::PatchAction::DeleteMap { key } => key,
                _ => continue,
            };
            let mut parts = key.splitn(3, '/');
            if let (Some(kind), Some(id), Some(_)) = (parts.next(), parts.next(), parts.next()) {
                touched.insert((kind.to_string(), id.to_string()));
            }
        }
        touched
    }

    fn values(&self, key: &str) -> Result<Vec<Stamped>, DocError> {
        self.replica
            .doc
            .get_all(ROOT, key)?
            .iter()
            .map(|(v, _)| stamped(key, v))
            .collect()
    }

    /// Settles every field that holds concurrent values: writes the winner
    /// back and returns one [`Conflict`] per losing value.
    pub fn resolve(&mut self) -> Result<Vec<Conflict>, DocError> {
        let keys: Vec<String> = self.replica.doc.keys(ROOT).collect();
        let mut journal = Vec::new();
        for k in keys {
            if self.replica.doc.get_all(ROOT, k.as_str())?.len() < 2 {
                continue;
            }
            let values = self.values(&k)?;
            if values.windows(2).all(|w| w[0] == w[1]) {
                // Both sides settled it the same way at once: nothing lost,
                // and writing again would only start another round.
                continue;
            }
            let mut parts = k.splitn(3, '/');
            let (kind, id, field) = (
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            );
            let w = winner(&field, &values).clone();
            for loser in values.iter().filter(|s| **s != w) {
                journal.push(Conflict {
                    kind: kind.clone(),
                    id: id.clone(),
                    field: field.clone(),
                    winner: w.clone(),
                    loser: loser.clone(),
                });
            }
            // Write the winner back unchanged, so the field has one value.
            self.replica.doc.put(
                ROOT,
                k.as_str(),
                serde_json::to_string(&w).expect("serializes"),
            )?;
        }
        Ok(journal)
    }
}

/// Status of every resource of a site: written by the site alone.
#[derive(Debug, Clone)]
pub struct StatusDoc {
    replica: Replica,
}

impl StatusDoc {
    pub fn new(actor: &[u8]) -> Self {
        StatusDoc {
            replica: Replica {
                doc: AutoCommit::new().with_actor(ActorId::from(actor)),
            },
        }
    }

    pub fn load(bytes: &[u8], actor: &[u8]) -> Result<Self, DocError> {
        Ok(StatusDoc {
            replica: Replica {
                doc: AutoCommit::load(bytes)?.with_actor(ActorId::from(actor)),
            },
        })
    }

    /// See [`IntentDoc::from_chunks`].
    pub fn from_chunks<'a>(
        chunks: impl IntoIterator<Item = &'a [u8]>,
        actor: &[u8],
    ) -> Result<Self, DocError> {
        Ok(StatusDoc {
            replica: Replica {
                doc: load_chunks(chunks, actor)?,
            },
        })
    }

    /// Writes a resource's status (the site's reconcilers call this).
    pub fn set(
        &mut self,
        kind: &str,
        id: &str,
        status: &serde_json::Value,
    ) -> Result<(), DocError> {
        self.replica
            .doc
            .put(ROOT, key(kind, id, "status")?, status.to_string())?;
        Ok(())
    }

    /// Removes a resource's status (the resource is gone).
    pub fn remove(&mut self, kind: &str, id: &str) -> Result<(), DocError> {
        self.replica.doc.delete(ROOT, key(kind, id, "status")?)?;
        Ok(())
    }

    pub fn get(&self, kind: &str, id: &str) -> Result<Option<serde_json::Value>, DocError> {
        let k = key(kind, id, "status")?;
        match self.replica.doc.get(ROOT, k.as_str())? {
            None => Ok(None),
            Some((v, _)) => {
                let text = text_of(&k, &v)?;
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|_| DocError::Foreign {
                        key: k,
                        found: text,
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_status_actor_is_the_site_or_one_of_its_terms() {
        let site = site_status_actor("f-01");
        assert!(is_site_status_actor(&site, &site));
        let term = site_status_actor_of_term("f-01", "c1", 4);
        assert_eq!(term, b"status:f-01#c1.4");
        assert!(is_site_status_actor(&site, &term));
        // Another site whose id starts the same, and a bare suffix, are not.
        assert!(!is_site_status_actor(&site, b"status:f-011"));
        assert!(!is_site_status_actor(&site, b"status:f-01x#c1.4"));
        assert!(!is_site_status_actor(&site, b"status:f-0"));
        assert_eq!(plain_site_status_actor(&term), site.as_slice());
        assert_eq!(plain_site_status_actor(&site), site.as_slice());
    }
    use serde_json::json;

    fn pair() -> (IntentDoc, IntentDoc) {
        let mut site = IntentDoc::new(b"site-actor-00001", "site:f1");
        site.set("servers", "s1", "name", json!("web"), 1).unwrap();
        site.set("servers", "s1", "flavor", json!("small"), 1)
            .unwrap();
        let bytes = site.save();
        let region = IntentDoc::load(&bytes, b"region-actor-001", "region:eu").unwrap();
        (site, region)
    }

    fn merge(a: &mut IntentDoc, b: &mut IntentDoc) {
        a.doc.merge(&mut b.doc).unwrap();
        b.doc.merge(&mut a.doc).unwrap();
    }

    #[test]
    fn changes_since_and_touched_since_name_what_a_peer_added() {
        let (mut site, mut region) = pair();
        let before_site = site.heads();
        let before_region = region.heads();
        region
            .create(
                "servers",
                "s2",
                json!({"name": "cam"}).as_object().unwrap().clone(),
                5,
            )
            .unwrap();
        region.delete("servers", "s1", 6).unwrap();
        let changes = region.changes_since(&before_region);
        assert_eq!(changes.len(), 1, "one closed change for both edits");
        for c in &changes {
            site.doc.load_incremental(c).unwrap();
        }
        let touched: Vec<_> = site.touched_since(&before_site).into_iter().collect();
        assert_eq!(
            touched,
            [
                ("servers".to_string(), "s1".to_string()),
                ("servers".to_string(), "s2".to_string())
            ]
        );
        let now = site.heads();
        assert!(site.touched_since(&now).is_empty());
        assert!(site.resource("servers", "s1").unwrap().unwrap().deleted);
        let now = region.heads();
        assert!(region.changes_since(&now).is_empty());
    }

    #[test]
    fn keys_are_checked() {
        let mut d = IntentDoc::new(b"a", "site:x");
        assert!(matches!(
            d.set("servers", "a/b", "name", json!(1), 0),
            Err(DocError::BadKey { what: "id", .. })
        ));
        assert!(matches!(
            d.set("", "a", "name", json!(1), 0),
            Err(DocError::BadKey { what: "kind", .. })
        ));
    }

    #[test]
    fn concurrent_edits_of_one_field_last_writer_wins_and_loser_is_journaled() {
        let (mut site, mut region) = pair();
        site.set("servers", "s1", "flavor", json!("medium"), 100)
            .unwrap();
        region
            .set("servers", "s1", "flavor", json!("large"), 200)
            .unwrap();
        merge(&mut site, &mut region);
        let j_site = site.resolve().unwrap();
        let j_region = region.resolve().unwrap();
        assert_eq!(j_site, j_region, "both sides journal the same conflict");
        assert_eq!(j_site.len(), 1);
        assert_eq!(j_site[0].winner.v, json!("large"));
        assert_eq!(j_site[0].loser.v, json!("medium"));
        assert_eq!(j_site[0].loser.by, "site:f1");
        merge(&mut site, &mut region);
        for d in [&site, &region] {
            assert_eq!(
                d.resource("servers", "s1").unwrap().unwrap().fields["flavor"],
                json!("large")
            );
        }
        assert!(
            site.resolve().unwrap().is_empty(),
            "settled: no conflict left"
        );
    }

    #[test]
    fn concurrent_edits_of_different_fields_both_survive() {
        let (mut site, mut region) = pair();
        site.set("servers", "s1", "name", json!("web-2"), 5)
            .unwrap();
        region
            .set("servers", "s1", "flavor", json!("large"), 5)
            .unwrap();
        merge(&mut site, &mut region);
        assert!(site.resolve().unwrap().is_empty());
        let v = region.resource("servers", "s1").unwrap().unwrap();
        assert_eq!(
            (v.fields["name"].clone(), v.fields["flavor"].clone()),
            (json!("web-2"), json!("large"))
        );
    }

    #[test]
    fn delete_beats_a_concurrent_update_even_a_later_one() {
        let (mut site, mut region) = pair();
        site.delete("servers", "s1", 10).unwrap();
        region
            .set("servers", "s1", "flavor", json!("large"), 50)
            .unwrap();
        region
            .set("servers", "s1", "deleted", json!(false), 60)
            .unwrap();
        merge(&mut site, &mut region);
        site.resolve().unwrap();
        region.resolve().unwrap();
        for d in [&site, &region] {
            assert!(d.resource("servers", "s1").unwrap().unwrap().deleted);
        }
    }

    #[test]
    fn created_fields_are_overridden_by_later_field_writes() {
        let (mut site, mut region) = pair();
        let mut fields = serde_json::Map::new();
        fields.insert("name".into(), json!("cam"));
        fields.insert("power".into(), json!("running"));
        fields.insert("deleted".into(), json!(false));
        site.create("servers", "s9", fields, 10).unwrap();
        merge(&mut site, &mut region);
        region
            .set("servers", "s9", "power", json!("stopped"), 20)
            .unwrap();
        merge(&mut site, &mut region);
        let v = site.resource("servers", "s9").unwrap().unwrap();
        assert_eq!(
            (
                v.fields["name"].clone(),
                v.fields["power"].clone(),
                v.deleted
            ),
            (json!("cam"), json!("stopped"), false)
        );
        site.delete("servers", "s9", 30).unwrap();
        assert!(site.resource("servers", "s9").unwrap().unwrap().deleted);
        assert!(matches!(
            site.set("servers", "s9", "~create", json!(1), 40),
            Err(DocError::BadKey { .. })
        ));
    }

    #[test]
    fn ids_and_absent_resources() {
        let (mut site, _) = pair();
        site.set("servers", "s2", "name", json!("db"), 1).unwrap();
        site.set("volumes", "v1", "size", json!(10), 1).unwrap();
        assert_eq!(site.ids("servers").unwrap(), vec!["s1", "s2"]);
        assert_eq!(site.resource("servers", "nope").unwrap(), None);
    }

    #[test]
    fn chunks_round_trip_and_rollback_drops_pending() {
        let mut d = IntentDoc::new(b"a1", "site:x");
        d.set("servers", "s1", "name", json!("a"), 1).unwrap();
        let c1 = d.take_local_change();
        assert!(!c1.is_empty());
        assert!(d.take_local_change().is_empty(), "nothing new");
        d.set("servers", "s1", "name", json!("b"), 2).unwrap();
        d.discard_pending();
        assert!(
            d.take_local_change().is_empty(),
            "a discarded write is not saved"
        );
        d.set("servers", "s2", "name", json!("c"), 3).unwrap();
        let c2 = d.take_local_change();
        let back = IntentDoc::from_chunks([c1.as_slice(), c2.as_slice()], b"a1", "site:x").unwrap();
        let snapshot = d.save();
        let compacted = IntentDoc::from_chunks([snapshot.as_slice()], b"a1", "site:x").unwrap();
        assert_eq!(
            compacted.resource("servers", "s2").unwrap(),
            back.resource("servers", "s2").unwrap()
        );
        assert_eq!(
            back.resource("servers", "s1").unwrap().unwrap().fields["name"],
            json!("a")
        );
        assert_eq!(
            back.resource("servers", "s2").unwrap().unwrap().fields["name"],
            json!("c")
        );
    }

    #[test]
    fn status_round_trip() {
        let mut s = StatusDoc::new(b"site-status-0001");
        s.set("servers", "s1", &json!({"vm_state": "active"}))
            .unwrap();
        let mut back = StatusDoc::load(&s.save(), b"region-reader-01").unwrap();
        assert_eq!(
            back.get("servers", "s1").unwrap(),
            Some(json!({"vm_state": "active"}))
        );
        back.remove("servers", "s1").unwrap();
        assert_eq!(back.get("servers", "s1").unwrap(), None);
    }
}
/// What the controller does: a region document loaded empty, and after
/// every received message the new changes taken for the store.
#[cfg(test)]
mod commit_with_nothing_pending {
    use super::*;
    use crate::session::{Docs, Role, Session, SessionConfig};
    use serde_json::json;
    use std::time::Instant;
    #[test]
    fn taking_changes_between_received_messages_is_safe() {
        let mut site = IntentDoc::new(b"site-actor-00001", "site:f1");
        site.create(
            "flavors",
            "f1",
            json!({"name": "a"}).as_object().unwrap().clone(),
            1,
        )
        .unwrap();
        let snap = site.save();
        let mut site =
            IntentDoc::from_chunks([snap.as_slice()], b"site-actor-00001", "site:f1").unwrap();
        let h = site.heads();
        site.create(
            "servers",
            "s1",
            json!({"name": "b"}).as_object().unwrap().clone(),
            2,
        )
        .unwrap();
        let c = site.changes_since(&h);
        let mut chunks = vec![snap.clone()];
        chunks.extend(c);
        let site = IntentDoc::from_chunks(
            chunks.iter().map(Vec::as_slice),
            b"site-actor-00001",
            "site:f1",
        )
        .unwrap();
        let mut sd = Docs {
            intent: site,
            status: StatusDoc::new(b"status:x"),
            site_status_actor: b"status:x".to_vec(),
        };
        let region =
            IntentDoc::from_chunks(std::iter::empty::<&[u8]>(), b"region:eu", "region:eu").unwrap();
        let mut rd = Docs {
            intent: region,
            status: StatusDoc::from_chunks(std::iter::empty::<&[u8]>(), b"region:eu").unwrap(),
            site_status_actor: b"status:x".to_vec(),
        };
        let now = Instant::now();
        let mut ss = Session::new(Role::Site, SessionConfig::default(), None, now).unwrap();
        let mut rs = Session::new(Role::Region, SessionConfig::default(), None, now).unwrap();
        let mut persisted = [rd.intent.heads(), rd.status.heads()];
        for _ in 0..10 {
            ss.handle_timeout(&mut sd, now);
            rs.handle_timeout(&mut rd, now);
            while let Some(m) = ss.poll_message() {
                rs.handle_message(&mut rd, &m, now).unwrap();
                let _ = rd.intent.changes_since(&persisted[0]);
                let _ = rd.status.changes_since(&persisted[1]);
                persisted = [rd.intent.heads(), rd.status.heads()];
            }
            while let Some(m) = rs.poll_message() {
                ss.handle_message(&mut sd, &m, now).unwrap();
            }
        }
        assert!(rd.intent.resource("servers", "s1").unwrap().is_some());
    }
}
