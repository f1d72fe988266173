//! The region's QUIC endpoint: sites connect with the certificate they got
//! at enrollment, and each connection runs the sync session for that
//! site's documents (and only that site's: the site id comes from the
//! verified certificate, never from anything the site says).
//!
//! - Every change that arrives is appended to the fleet store as it comes.
//! - A connection that fails its handshake, presents no site certificate,
//!   or names a site this region does not know is refused with a logged
//!   reason; a refused frame ends that connection alone.
//! - A site is online while a connection of its is up; QUIC's 10 s idle
//!   timeout ends a silent site's connection, so it goes offline within
//!   10 s of its last packet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use automerge::ChangeHash;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use roost_sync::transport::{drive, peer_site_id, region_accept, Hello};
use roost_sync::{Docs, Role, Session, SessionConfig};

use crate::fleet::{FleetError, FleetStore};

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

/// The region's side of one site.
#[derive(Debug)]
pub struct SiteLink {
    pub docs: Arc<Mutex<Docs>>,
    /// Notify after the region wrote into `docs`.
    pub local: Arc<Notify>,
    persisted: Mutex<[Vec<ChangeHash>; 2]>,
    connections: Mutex<usize>,
    pub availability: Mutex<Availability>,
}

impl SiteLink {
    /// Appends what the documents gained since the last call to the store.
    fn persist(&self, store: &FleetStore, site: &str) -> Result<(), FleetError> {
        let (intent, status, heads) = {
            let mut d = self.docs.lock().unwrap_or_else(|e| e.into_inner());
            let p = self.persisted.lock().unwrap_or_else(|e| e.into_inner());
            let intent = d.intent.changes_since(&p[0]);
            let status = d.status.changes_since(&p[1]);
            (intent, status, [d.intent.heads(), d.status.heads()])
        };
        if intent.is_empty() && status.is_empty() {
            return Ok(());
        }
        store.append_changes(site, &intent, &status)?;
        *self.persisted.lock().unwrap_or_else(|e| e.into_inner()) = heads;
        Ok(())
    }
}

/// Every site's link, loaded on first use.
#[derive(Debug)]
pub struct Region {
    pub store: FleetStore,
    pub session: SessionConfig,
    actor: Vec<u8>,
    sites: Mutex<HashMap<String, Arc<SiteLink>>>,
}

impl Region {
    pub fn new(store: FleetStore) -> Region {
        Region {
            actor: format!("region:{}", store.region()).into_bytes(),
            store,
            session: SessionConfig::default(),
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// The link of `site`, loading its documents the first time.
    pub fn site(&self, site: &str) -> Result<Arc<SiteLink>, FleetError> {
        if let Some(l) = self
            .sites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(site)
        {
            return Ok(l.clone());
        }
        let mut docs = self.store.load_docs(site, &self.actor)?;
        let heads = [docs.intent.heads(), docs.status.heads()];
        let link = Arc::new(SiteLink {
            docs: Arc::new(Mutex::new(docs)),
            local: Arc::new(Notify::new()),
            persisted: Mutex::new(heads),
            connections: Mutex::new(0),
            availability: Mutex::new(Availability::Offline { since: None }),
        });
        Ok(self
            .sites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(site.to_string())
            .or_insert(link)
            .clone())
    }

    /// Availability of `site` (offline if never connected since start).
    pub fn availability(&self, site: &str) -> Availability {
        self.sites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(site)
            .map(|l| {
                l.availability
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            })
            .unwrap_or(Availability::Offline { since: None })
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

    async fn handle(self: Arc<Self>, incoming: quinn::Incoming) -> Result<(), String> {
        let remote = incoming.remote_address();
        let conn = incoming
            .await
            .map_err(|e| format!("handshake failed: {e}"))?;
        let site = match peer_site_id(&conn) {
            Ok(s) => s,
            Err(e) => {
                conn.close(1u32.into(), b"not a site certificate");
                return Err(format!("not a site certificate: {e}"));
            }
        };
        let store = self.store.clone();
        let s = site.clone();
        let known = tokio::task::spawn_blocking(move || store.site(&s))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if known.is_none_or(|r| r.enrolled_at.is_none()) {
            conn.close(2u32.into(), b"unknown site");
            return Err(format!("site {site:?} is not enrolled in this region"));
        }
        let link = self.site(&site).map_err(|e| e.to_string())?;
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
                    format!("site {site}: {e}")
                })?;
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
        self.went_online(&link, &site, remote);

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
                    match tokio::task::spawn_blocking(move || l.persist(&st, &s)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(site = %site, error = %e, "cannot store the site's changes")
                        }
                        Err(_) => return,
                    }
                }
            })
        };
        let on_received = {
            let arrived = arrived.clone();
            move |_| arrived.notify_one()
        };
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
        persister.abort();
        let (store, s, l, state) = (
            self.store.clone(),
            site.clone(),
            link.clone(),
            session.persist(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            l.persist(&store, &s)?;
            store.save_sync_state(&s, &state)?;
            store.mark_seen(&s, Utc::now())
        })
        .await;
        self.went_offline(&link, &site);
        result.map_err(|e| format!("site {site}: {e}"))
    }

    fn went_online(&self, link: &SiteLink, site: &str, remote: SocketAddr) {
        *link.connections.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        *link.availability.lock().unwrap_or_else(|e| e.into_inner()) = Availability::Online {
            since: Utc::now(),
            address: remote.to_string(),
        };
        tracing::info!(site = %site, %remote, "site online");
    }

    fn went_offline(&self, link: &SiteLink, site: &str) {
        let mut n = link.connections.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            *link.availability.lock().unwrap_or_else(|e| e.into_inner()) = Availability::Offline {
                since: Some(Utc::now()),
            };
            tracing::warn!(site = %site, "site offline");
        }
    }
}
