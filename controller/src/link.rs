//! The region's QUIC endpoint: sites connect with the certificate they got
//! at enrollment, and each connection runs the sync session for that
//! site's documents (and only that site's: the site id comes from the
//! verified certificate, never from anything the site says).
//!
//! - Every change that arrives is appended to the fleet store as it comes.
//! - A connection that fails its handshake, presents no site certificate,
//!   or names a site this region does not know is refused with a logged
//!   reason; a refused frame ends that connection alone.
//! - A site is online while a connection of its is up. A watchdog per
//!   connection closes it once nothing has arrived for `offline_after`
//!   (sites send a keep-alive every 3 s), so a silent site is offline
//!   within `offline_after` of its last packet; QUIC's idle timeout, set to
//!   the same value, is the backstop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::ChangeHash;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use roost_sync::transport::{drive, peer_fingerprint, peer_site_id, region_accept, Hello};
use roost_sync::{Docs, IntentDoc, Role, Session, SessionConfig};

use crate::metrics::METRICS;
use crate::view::{DocFacts, Traffic};

use crate::fleet::{Admission, FleetError, FleetStore};

/// Whether a site is connected, as the region sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "availability", rename_all = "lowercase")]
pub enum Availability {
    Online {
        since: DateTime<Utc>,
        address: String,
    },
    Offline {
        since: Option<DateTime<Utc>>,
    },
}

/// How far the site and the region are apart, as the region knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Distance {
    /// Changes the region holds that the site has not acknowledged (its
    /// intent waiting for it, online or not).
    pub to_site: usize,
    /// Changes the site announced that the region has not received yet (a
    /// lower bound: one per head the region lacks).
    pub from_site: usize,
}

/// Facts read from the documents, with the (intent, status) heads they were
/// read at.
type FactsAt = ([Vec<ChangeHash>; 2], Arc<DocFacts>);

/// The region's side of one site.
#[derive(Debug)]
pub struct SiteLink {
    pub docs: Arc<Mutex<Docs>>,
    /// Notify after the region wrote into `docs`.
    pub local: Arc<Notify>,
    /// Held for the whole of [`SiteLink::persist`], so two callers never
    /// append the same changes.
    persisting: Mutex<[Vec<ChangeHash>; 2]>,
    connections: Mutex<usize>,
    pub availability: Mutex<Availability>,
    /// The heads the site last said it has (intent, status).
    peer_heads: Mutex<[Vec<ChangeHash>; 2]>,
    /// Whether the site has said what it has in the current session: until
    /// then `peer_heads` are the last session's, and the site may have
    /// written since (while the link was down), so the region cannot say
    /// the two are in sync.
    heard: AtomicBool,
    /// Since when the site has been out of sync while online.
    out_of_sync_since: Mutex<Option<Instant>>,
    /// The site's alarm publication last folded into the alarm table.
    alarms_applied: Mutex<Option<String>>,
    /// Sync frame bytes (in, out) since the controller started.
    bytes: Mutex<(u64, u64)>,
    /// What the view reads from the documents, with the heads it was read at.
    facts: Mutex<Option<FactsAt>>,
    /// Set when the site enrolled anew and this link was dropped: a session
    /// of the old incarnation still running writes nothing back (no
    /// changes, no sync state, no availability).
    retired: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SiteLink {
    /// Appends what the documents gained since the last call to the store.
    fn persist(&self, store: &dyn FleetStore, site: &str) -> Result<(), FleetError> {
        let mut persisted = lock(&self.persisting);
        if self.retired.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (intent, status, heads) = {
            let mut d = lock(&self.docs);
            let intent = d.intent.changes_since(&persisted[0]);
            let status = d.status.changes_since(&persisted[1]);
            (intent, status, [d.intent.heads(), d.status.heads()])
        };
        if intent.is_empty() && status.is_empty() {
            return Ok(());
        }
        store.append_changes(site, &intent, &status)?;
        *persisted = heads;
        if !status.is_empty() {
            // The changes are stored; a failure here must not look like
            // theirs (the next publication tries again).
            if let Err(e) = self.apply_site_alarms(store, site) {
                tracing::error!(site = %site, error = %e, "cannot record the site's alarms");
                *lock(&self.alarms_applied) = None;
            }
        }
        Ok(())
    }

    /// The alarms the site raised itself, as it published them, into the
    /// region's alarm table (with the site's times).
    fn apply_site_alarms(&self, store: &dyn FleetStore, site: &str) -> Result<(), FleetError> {
        let published = lock(&self.docs).status.get("site", "alarms").ok().flatten();
        let Some(published) = published else {
            return Ok(());
        };
        let text = published.to_string();
        if lock(&self.alarms_applied).as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        let list = |k: &str| -> Option<Vec<roost_common::model::AlarmStatus>> {
            serde_json::from_value(published[k].clone())
                .inspect_err(|e| {
                    tracing::warn!(site = %site, error = %e, "the site's published alarms are unreadable; the region's copy is left as it was");
                })
                .ok()
        };
        let (Some(active), Some(cleared)) = (list("active"), list("cleared")) else {
            return Ok(());
        };
        store.apply_site_alarms(site, &active, &cleared, Utc::now())?;
        *lock(&self.alarms_applied) = Some(text);
        Ok(())
    }

    /// How far apart the site and the region are now.
    pub fn distance(&self) -> Distance {
        let peer = lock(&self.peer_heads).clone();
        let mut d = lock(&self.docs);
        let (ai, ui) = d.intent.distance(&peer[0]);
        let (as_, us) = d.status.distance(&peer[1]);
        Distance {
            to_site: ai + as_,
            from_site: ui + us,
        }
    }

    /// Seconds the site has been out of sync while online (0 if in sync).
    pub fn lag(&self) -> f64 {
        lock(&self.out_of_sync_since).map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// What the region's view needs from the documents, read again only
    /// when they changed.
    pub fn doc_facts(&self) -> Arc<DocFacts> {
        let mut d = lock(&self.docs);
        let heads = [d.intent.heads(), d.status.heads()];
        let mut cached = lock(&self.facts);
        if let Some((at, facts)) = cached.as_ref() {
            if *at == heads {
                return facts.clone();
            }
        }
        let facts = Arc::new(DocFacts::read(&d));
        *cached = Some((heads, facts.clone()));
        facts
    }

    /// Sync frame bytes (from, to) the site since the controller started.
    pub fn bytes(&self) -> (u64, u64) {
        *lock(&self.bytes)
    }

    pub fn is_online(&self) -> bool {
        matches!(*lock(&self.availability), Availability::Online { .. })
    }

    /// Whether the site has said, since it last connected, which changes
    /// it holds (before that, in sync or not is unknown).
    pub fn heard(&self) -> bool {
        self.heard.load(Ordering::SeqCst)
    }

    /// After each frame from the site: its heads, and whether the two
    /// sides now agree.
    fn observe(&self, session: &Session) {
        let peer = session.peer_heads();
        let same = {
            let mut d = lock(&self.docs);
            let mut ours = [d.intent.heads(), d.status.heads()];
            let mut theirs = peer.clone();
            ours.iter_mut().for_each(|h| h.sort());
            theirs.iter_mut().for_each(|h| h.sort());
            ours == theirs
        };
        *lock(&self.peer_heads) = peer;
        self.heard.store(session.heard_peer(), Ordering::SeqCst);
        let mut since = lock(&self.out_of_sync_since);
        match (same, *since) {
            (true, _) => *since = None,
            (false, None) => *since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }
}

/// Every site's link, loaded on first use.
#[derive(Debug)]
pub struct Region {
    pub store: Arc<dyn FleetStore>,
    pub session: SessionConfig,
    /// Silence after which a site is offline (the QUIC idle timeout the
    /// endpoint is built with) and, after a start, how long a site has to
    /// connect before its `site.offline` alarm is raised.
    pub offline_after: Duration,
    started: Instant,
    /// The same start, on the wall clock the store's times use.
    started_at: DateTime<Utc>,
    actor: Vec<u8>,
    sites: Mutex<HashMap<String, Arc<SiteLink>>>,
    /// Sync bytes per minute, for the last hour's total.
    pub traffic: Mutex<Traffic>,
    /// The last computed site views (see `Region::views`).
    pub(crate) views_cache: Mutex<Option<(Instant, Arc<Vec<crate::view::SiteView>>)>>,
    /// Set when the controller stops: connections then end because of us,
    /// not the sites, so no site is marked offline or alarmed for it.
    stopping: AtomicBool,
    /// Site connections being handled (their end saves sync state).
    active: AtomicUsize,
    /// What sites need to check the region's Keystone tokens offline; each
    /// site gets it into its intent when it connects (see
    /// `intent::publish_trust`), and every site when it changes.
    pub trust: Mutex<Option<roost_sync::token::Trust>>,
    /// Held while a site's copy of the trust is compared and written, so
    /// an older copy never overwrites a newer one.
    pub(crate) trust_publish: Mutex<()>,
    /// The images the region holds for its sites, served on each site's
    /// bulk streams (none until the controller sets them).
    pub images: std::sync::OnceLock<Arc<crate::images::RegionImages>>,
    /// Where the sites' volume backups are kept, received on the same
    /// bulk streams (none until the controller sets it).
    pub backups: std::sync::OnceLock<Arc<crate::backups::RegionBackups>>,
}

/// Why a write of the region's intent failed.
#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Doc(#[from] roost_sync::DocError),
}

/// What one site may fetch: the region's images its intent names, and
/// its own volume backups (`backup:<id>`).
struct SiteImages {
    images: Arc<crate::images::RegionImages>,
    backups: Arc<crate::backups::RegionBackups>,
    link: Arc<SiteLink>,
}

/// The backup a bulk key names, if it names one: `backup:<id>`, or
/// `latest:<key>`, the site's newest backup offered under `key` (how a
/// site brings back a snapshot it sent before it let its file go).
fn backup_of(
    backups: &crate::backups::RegionBackups,
    site: &str,
    key: &str,
) -> Option<Result<i64, String>> {
    if let Some(of) = key.strip_prefix(crate::backups::RegionBackups::LATEST_PREFIX) {
        return Some(backups.newest(site, of).map_err(|e| e.to_string()));
    }
    let id = key.strip_prefix(crate::backups::RegionBackups::KEY_PREFIX)?;
    Some(
        id.parse()
            .map_err(|_| format!("{key:?} does not name a backup (backup:<number>)")),
    )
}

impl SiteImages {
    fn given(&self, image: &str) -> Result<(), String> {
        let d = lock(&self.link.docs);
        match d.intent.resource("images", image) {
            Ok(Some(v)) if !v.deleted => Ok(()),
            _ => Err(format!(
                "image {image} is not one the region gave this site"
            )),
        }
    }
}

impl roost_sync::bulk::ChunkSource for SiteImages {
    fn manifest(&self, site: &str, image: &str) -> Result<roost_sync::chunks::Manifest, String> {
        if let Some(id) = backup_of(&self.backups, site, image) {
            return self
                .backups
                .site_manifest(site, id?)
                .map_err(|e| e.to_string());
        }
        self.given(image)?;
        self.images.manifest(site, image)
    }

    fn chunk(
        &self,
        site: &str,
        image: &str,
        hash: &roost_sync::chunks::Hash,
    ) -> Result<Vec<u8>, String> {
        if let Some(id) = backup_of(&self.backups, site, image) {
            return self
                .backups
                .site_chunk(site, id?, hash)
                .map_err(|e| e.to_string());
        }
        self.given(image)?;
        self.images.chunk(site, image, hash)
    }
}

impl Region {
    pub fn new(store: Arc<dyn FleetStore>, offline_after: Duration) -> Region {
        Region {
            actor: format!("region:{}", store.region()).into_bytes(),
            store,
            session: SessionConfig::default(),
            offline_after,
            started: Instant::now(),
            started_at: Utc::now(),
            sites: Mutex::new(HashMap::new()),
            traffic: Mutex::new(Traffic::default()),
            views_cache: Mutex::new(None),
            stopping: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            trust: Mutex::new(None),
            trust_publish: Mutex::new(()),
            images: std::sync::OnceLock::new(),
            backups: std::sync::OnceLock::new(),
        }
    }

    /// The link of `site`, loading its documents the first time.
    pub fn site(&self, site: &str) -> Result<Arc<SiteLink>, FleetError> {
        if let Some(l) = lock(&self.sites).get(site) {
            return Ok(l.clone());
        }
        let mut docs = self.store.load_docs(site, &self.actor)?;
        let heads = [docs.intent.heads(), docs.status.heads()];
        let peer_heads = self
            .store
            .sync_state(site)?
            .map(|p| p.peer_heads())
            .unwrap_or_default();
        let link = Arc::new(SiteLink {
            docs: Arc::new(Mutex::new(docs)),
            local: Arc::new(Notify::new()),
            persisting: Mutex::new(heads),
            connections: Mutex::new(0),
            availability: Mutex::new(Availability::Offline { since: None }),
            peer_heads: Mutex::new(peer_heads),
            heard: AtomicBool::new(false),
            out_of_sync_since: Mutex::new(None),
            alarms_applied: Mutex::new(None),
            bytes: Mutex::new((0, 0)),
            facts: Mutex::new(None),
            retired: AtomicBool::new(false),
        });
        Ok(lock(&self.sites)
            .entry(site.to_string())
            .or_insert(link)
            .clone())
    }

    /// Drops what memory holds of `site` (after a new enrollment reset its
    /// stored documents); the next use loads them again from the store.
    pub fn forget(&self, site: &str) {
        if let Some(old) = lock(&self.sites).remove(site) {
            old.retired.store(true, Ordering::SeqCst);
        }
        *lock(&self.views_cache) = None;
    }

    /// Availability of `site` (offline if never connected since start).
    pub fn availability(&self, site: &str) -> Availability {
        lock(&self.sites)
            .get(site)
            .map(|l| lock(&l.availability).clone())
            .unwrap_or(Availability::Offline { since: None })
    }

    /// Writes the region's intent into `site`'s document and makes it
    /// durable before returning; the site gets it now if connected, or
    /// when it returns. If the write cannot be stored the documents are
    /// reloaded from the store, so a failed call changes nothing. Blocks:
    /// call from a blocking thread.
    pub fn write_intent<T>(
        &self,
        site: &str,
        edit: impl FnOnce(&mut IntentDoc) -> Result<T, roost_sync::DocError>,
    ) -> Result<T, IntentError> {
        let link = self.site(site)?;
        let out = {
            let mut d = lock(&link.docs);
            match edit(&mut d.intent) {
                Ok(v) => v,
                Err(e) => {
                    d.intent.discard_pending();
                    return Err(e.into());
                }
            }
        };
        if let Err(e) = link.persist(self.store.as_ref(), site) {
            tracing::error!(site = %site, error = %e, "cannot store the region's intent; reloading the site's documents");
            if let Ok(fresh) = self.store.load_docs(site, &self.actor) {
                let mut d = lock(&link.docs);
                *d = fresh;
                *lock(&link.persisting) = [d.intent.heads(), d.status.heads()];
            }
            return Err(e.into());
        }
        link.local.notify_one();
        self.invalidate_views();
        Ok(out)
    }

    /// Stops: closes every site connection, waits (up to `within`) until
    /// each has saved its sync state, without marking anyone offline.
    pub async fn stop(&self, endpoint: &quinn::Endpoint, within: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        endpoint.close(0u32.into(), b"controller stopping");
        let deadline = Instant::now() + within;
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Accepts connections until the endpoint closes.
    pub async fn serve(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let region = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                if let Err(reason) = region.handle(incoming).await {
                    tracing::warn!(%remote, %reason, "site connection refused or ended");
                }
            });
        }
    }

    /// Raises `site.offline` for every enrolled site that has not connected
    /// within `offline_after` of the controller's start (its state while
    /// the controller was down is unknown). Runs once.
    pub async fn audit_after_start(self: Arc<Self>) {
        tokio::time::sleep_until((self.started + self.offline_after).into()).await;
        let region = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let now = Utc::now();
            let mut raised = 0;
            for s in region.store.sites()? {
                let online = lock(&region.sites)
                    .get(&s.id)
                    .is_some_and(|l| l.is_online());
                if s.enrolled_at.is_some()
                    && !online
                    && region.store.raise_offline(&s.id, region.started_at, now)?
                {
                    raised += 1;
                }
            }
            Ok::<_, FleetError>(raised)
        })
        .await;
        match result {
            Ok(Ok(n)) => tracing::info!(raised = n, "availability audit after start"),
            Ok(Err(e)) => tracing::error!(error = %e, "availability audit failed"),
            Err(e) => tracing::error!(error = %e, "availability audit failed"),
        }
    }

    async fn handle(self: Arc<Self>, incoming: quinn::Incoming) -> Result<(), String> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let r = self.clone().handle_inner(incoming).await;
        self.active.fetch_sub(1, Ordering::SeqCst);
        r
    }

    async fn handle_inner(self: Arc<Self>, incoming: quinn::Incoming) -> Result<(), String> {
        let remote = incoming.remote_address();
        let conn = incoming
            .await
            .map_err(|e| format!("handshake failed: {e}"))?;
        let site = match peer_site_id(&conn) {
            Ok(s) => s,
            Err(e) => {
                conn.close(1u32.into(), b"not a site certificate");
                METRICS.connections.with_label_values(&["refused"]).inc();
                return Err(format!("not a site certificate: {e}"));
            }
        };
        // The link first, then the check: a revocation commits before it
        // retires the site's link, so either the check sees it or the link
        // held here is retired (and the watchdog closes the connection).
        let link = self.site(&site);
        let store = self.store.clone();
        let s = site.clone();
        let cert = peer_fingerprint(&conn).map_err(|e| e.to_string())?;
        let admission = tokio::task::spawn_blocking(move || store.admission(&s, &cert))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let refusal: Option<(u32, &[u8], &str)> = match admission {
            Admission::Admitted => None,
            Admission::NotEnrolled => Some((2, b"unknown site", "is not enrolled in this region")),
            Admission::Revoked => Some((
                5,
                b"revoked site",
                "had its enrollment revoked; a new join token enrolls it again",
            )),
            Admission::Superseded => Some((
                6,
                b"certificate superseded",
                "enrolled again since this certificate was issued; only the latest is taken",
            )),
        };
        if let Some((code, reason, why)) = refusal {
            conn.close(code.into(), reason);
            METRICS.connections.with_label_values(&["refused"]).inc();
            return Err(format!("site {site:?} {why}"));
        }
        let link = link.map_err(|e| e.to_string())?;
        let (region, s) = (self.clone(), site.clone());
        let published =
            tokio::task::spawn_blocking(move || crate::intent::publish_trust(&region, &s))
                .await
                .map_err(|e| e.to_string())?;
        if let Err(e) = published {
            tracing::error!(site = %site, error = %e, "cannot give the site the region's token keys");
        }
        let hello = Hello {
            name: self.store.region().to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: roost_sync::frame::VERSION,
        };
        let (site_hello, send, recv) =
            tokio::time::timeout(Duration::from_secs(10), region_accept(&conn, &site, &hello))
                .await
                .map_err(|_| format!("site {site} said no hello within 10 s"))?
                .map_err(|e| {
                    conn.close(3u32.into(), b"bad hello");
                    METRICS.connections.with_label_values(&["refused"]).inc();
                    format!("site {site}: {e}")
                })?;
        METRICS.connections.with_label_values(&["accepted"]).inc();
        tracing::debug!(site = %site, version = %site_hello.version, "site said hello");
        let store = self.store.clone();
        let s = site.clone();
        let persisted = tokio::task::spawn_blocking(move || store.sync_state(&s))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut session = Session::new(
            Role::Region,
            self.session.clone(),
            persisted.as_ref(),
            Instant::now(),
        )
        .map_err(|e| e.to_string())?;
        self.went_online(&link, &site, remote).await;

        // Received changes go to the store as they come, off the session's loop.
        let arrived = Arc::new(Notify::new());
        let persister = {
            let (link, store, site, arrived) = (
                link.clone(),
                self.store.clone(),
                site.clone(),
                arrived.clone(),
            );
            tokio::spawn(async move {
                loop {
                    arrived.notified().await;
                    let (l, st, s) = (link.clone(), store.clone(), site.clone());
                    match tokio::task::spawn_blocking(move || l.persist(st.as_ref(), &s)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(site = %site, error = %e, "cannot store the site's changes")
                        }
                        Err(_) => return,
                    }
                }
            })
        };
        let counted = Mutex::new(roost_sync::session::Stats::default());
        let on_received = {
            let (arrived, link, counted) = (arrived.clone(), link.clone(), &counted);
            let traffic = &self.traffic;
            move |session: &Session, r: roost_sync::Received| {
                if r.intent_changed || r.status_changed {
                    arrived.notify_one();
                }
                link.observe(session);
                count_bytes(counted, session.stats(), &link, traffic);
            }
        };
        let watchdog = tokio::spawn(watch_silence(
            conn.clone(),
            remote.to_string(),
            link.clone(),
            site.clone(),
            self.offline_after,
        ));
        // Streams the site opens after the sync stream carry image chunks
        // and volume backups.
        let stores = self.images.get().cloned().zip(self.backups.get().cloned());
        let bulk = stores.map(|(images, backups)| {
            let (conn, site) = (conn.clone(), site.clone());
            let source: Arc<dyn roost_sync::bulk::ChunkSource> = Arc::new(SiteImages {
                images,
                backups: backups.clone(),
                link: link.clone(),
            });
            let sink: Arc<dyn roost_sync::bulk::BackupSink> = backups;
            // A site's bulk streams are served a few at a time: what one
            // stream may hold in memory is bounded, so is a site's share.
            let streams = Arc::new(tokio::sync::Semaphore::new(BULK_STREAMS_PER_SITE));
            tokio::spawn(async move {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let Ok(slot) = streams.clone().acquire_owned().await else {
                        return;
                    };
                    let (source, sink, site) = (source.clone(), sink.clone(), site.clone());
                    tokio::spawn(async move {
                        let (served, ended) =
                            roost_sync::bulk::serve(site.clone(), send, recv, source, sink).await;
                        drop(slot);
                        METRICS.bulk_bytes.inc_by(served.sent);
                        METRICS.backup_bytes.inc_by(served.received);
                        match ended {
                            Ok(()) => tracing::info!(site = %site, sent = served.sent,
                                received = served.received, "bulk stream ended"),
                            Err(e) => tracing::info!(site = %site, sent = served.sent,
                                received = served.received, error = %e, "bulk stream cut"),
                        }
                    });
                }
            })
        });
        let result = drive(
            &mut session,
            &link.docs,
            &link.local,
            &on_received,
            send,
            recv,
            self.session.max_frame,
        )
        .await;
        let ended = Utc::now();
        if let Some(b) = bulk {
            b.abort();
        }
        watchdog.abort();
        persister.abort();
        count_bytes(&counted, session.stats(), &link, &self.traffic);
        let (store, s, l, state) = (
            self.store.clone(),
            site.clone(),
            link.clone(),
            session.persist(),
        );
        if link.retired.load(Ordering::SeqCst) {
            tracing::info!(site = %site, "a session of the site's previous enrollment ended");
            return result.map_err(|e| format!("site {site}: {e}"));
        }
        let _ = tokio::task::spawn_blocking(move || {
            l.persist(store.as_ref(), &s)?;
            store.save_sync_state(&s, &state)?;
            store.mark_seen(&s, Utc::now())
        })
        .await;
        self.went_offline(&link, &site, ended).await;
        result.map_err(|e| format!("site {site}: {e}"))
    }

    async fn went_online(&self, link: &SiteLink, site: &str, remote: SocketAddr) {
        *lock(&link.connections) += 1;
        link.heard.store(false, Ordering::SeqCst);
        let now = Utc::now();
        *lock(&link.availability) = Availability::Online {
            since: now,
            address: remote.to_string(),
        };
        tracing::info!(site = %site, %remote, "site online");
        self.record(site, true, Some(remote.to_string()), now).await;
    }

    async fn went_offline(&self, link: &SiteLink, site: &str, now: DateTime<Utc>) {
        {
            let mut n = lock(&link.connections);
            *n = n.saturating_sub(1);
            if *n > 0 {
                return;
            }
            *lock(&link.availability) = Availability::Offline { since: Some(now) };
            *lock(&link.out_of_sync_since) = None;
        }
        if self.stopping.load(Ordering::SeqCst) {
            tracing::info!(site = %site, "site disconnected: the controller is stopping");
            return;
        }
        tracing::warn!(site = %site, "site offline");
        self.record(site, false, None, now).await;
    }

    async fn record(&self, site: &str, online: bool, address: Option<String>, at: DateTime<Utc>) {
        let (store, s) = (self.store.clone(), site.to_string());
        let r = tokio::task::spawn_blocking(move || {
            store.record_availability(&s, online, address.as_deref(), at)
        })
        .await;
        if let Ok(Err(e)) = r {
            tracing::error!(site = %site, error = %e, "cannot record the site's availability");
        }
    }
}

/// Bulk streams of one site served at once (its image fetcher and its
/// backup worker each keep one open).
const BULK_STREAMS_PER_SITE: usize = 4;

/// How often a connection's silence is checked.
const SILENCE_CHECK: Duration = Duration::from_millis(500);

/// Ends a connection once nothing at all has arrived from the site for
/// `limit` (sites send a keep-alive every 3 s, so a live site is never that
/// quiet). QUIC's idle timeout alone is not a bound: it restarts whenever
/// the region sends after the site's last packet (RFC 9000, 10.1), so a
/// dead site could stay "online" for longer than `limit`. This measures
/// silence from the packets received, checked every [`SILENCE_CHECK`], and
/// closes within `limit` of the last one. It also follows the site to a
/// new address (a vehicle changing networks: QUIC moves the connection),
/// so the view shows where the site is now.
async fn watch_silence(
    conn: quinn::Connection,
    // The address went_online recorded for this connection.
    mut mine: String,
    link: Arc<SiteLink>,
    site: String,
    limit: Duration,
) {
    let mut seen = conn.stats().udp_rx.datagrams;
    // The last packet arrived after `heard` (the check before the one that
    // saw it), so `heard` errs early: silence is never under-counted.
    let mut heard = Instant::now();
    let mut checked = heard;
    let mut tick = tokio::time::interval(SILENCE_CHECK);
    loop {
        tick.tick().await;
        let now = conn.stats().udp_rx.datagrams;
        if now != seen {
            seen = now;
            heard = checked;
        }
        checked = Instant::now();
        // The site's enrollment ended (revoked, or enrolled again): its
        // connection goes with it.
        if link.retired.load(Ordering::SeqCst) {
            tracing::info!(site = %site, "enrollment ended; closing its connection");
            conn.close(5u32.into(), b"enrollment ended");
            return;
        }
        let remote = conn.remote_address().to_string();
        if remote != mine {
            // Only while the address shown is this connection's (a newer
            // connection of the site's owns it otherwise).
            if let Availability::Online { address, .. } = &mut *lock(&link.availability) {
                if *address == mine {
                    tracing::info!(site = %site, from = %mine, to = %remote, "site moved to a new address; its connection followed");
                    *address = remote.clone();
                }
            }
            mine = remote;
        }
        if checked.duration_since(heard) + SILENCE_CHECK >= limit {
            tracing::warn!(site = %site, silent_secs = heard.elapsed().as_secs_f64(), "site silent; closing its connection");
            conn.close(4u32.into(), b"silent");
            return;
        }
    }
}

/// Adds a session's new bytes to the region's, the site's and the last
/// hour's counters.
fn count_bytes(
    counted: &Mutex<roost_sync::session::Stats>,
    now: roost_sync::session::Stats,
    link: &SiteLink,
    traffic: &Mutex<Traffic>,
) {
    let mut c = lock(counted);
    let (bytes_in, bytes_out) = (
        now.bytes_in.saturating_sub(c.bytes_in),
        now.bytes_out.saturating_sub(c.bytes_out),
    );
    *c = now;
    if bytes_in + bytes_out == 0 {
        return;
    }
    METRICS
        .sync_bytes
        .with_label_values(&["in"])
        .inc_by(bytes_in);
    METRICS
        .sync_bytes
        .with_label_values(&["out"])
        .inc_by(bytes_out);
    {
        let mut b = lock(&link.bytes);
        b.0 += bytes_in;
        b.1 += bytes_out;
    }
    lock(traffic).add(Utc::now().timestamp() / 60, bytes_in, bytes_out);
}
