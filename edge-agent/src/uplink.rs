//! The site's link to its region: one QUIC connection (mutual TLS, see
//! `roost_sync::transport`) carrying the sync session for the site's two
//! documents, and the loop that brings the tables in line with the intent
//! the region sends.
//!
//! - Nothing on the API's path waits for the region: writes commit locally
//!   and the session sends their changes when it can.
//! - When the link drops, the site reconnects after a delay drawn with full
//!   jitter from an exponentially growing window ([`Backoff`]), so thousands
//!   of sites coming back after a regional outage do not return in lockstep.
//! - The session's sync state is kept in the store after each connection,
//!   so the next one sends only what the region lacks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use roost_common::config::UplinkSection;
use roost_sync::pki::{region_server_name, Credential};
use roost_sync::transport::{client_config, drive, site_open, Hello, TransportError};
use roost_sync::{Role, Session, SessionConfig, SessionError};

use crate::compute::WorkQueue;
use crate::metrics::METRICS;
use crate::store::{Store, WriteError};

/// The name the region's sync state is kept under.
const PEER: &str = "region";

/// Reconnect delays: full jitter over `min(cap, base * 2^attempt)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub const BASE: Duration = Duration::from_millis(500);
    pub const CAP: Duration = Duration::from_secs(60);

    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay, given `unit` drawn uniformly from [0, 1).
    pub fn next(&mut self, unit: f64) -> Duration {
        let window = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        window.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// After a connection that worked: start from the smallest window again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("store: {0}")]
    Store(#[from] WriteError),
}

/// Why an enrollment attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum Enroll {
    /// The region said no (bad, used or expired token): retrying is futile.
    #[error("the region refused: {0}")]
    Refused(String),
    /// Could not reach the region, or it failed: try again later.
    #[error("cannot reach the region: {0}")]
    Retry(String),
}

/// What enrollment gave the site.
#[derive(Debug)]
pub struct Enrolled {
    pub credential: Credential,
    /// The region's name and QUIC port, as the controller told them.
    pub region: Option<String>,
    pub quic_port: Option<u16>,
}

/// Trades a join token for a certificate at the controller's `url`, once,
/// and writes the credential into `dir`. The site's key never leaves it.
pub async fn enroll_once(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    site_id: &str,
    dir: &std::path::Path,
) -> Result<Enrolled, Enroll> {
    let request = roost_sync::pki::Request::load_or_new(site_id, dir)
        .map_err(|e| Enroll::Refused(e.to_string()))?;
    let resp = http
        .post(format!("{url}/v1/enroll"))
        .json(&serde_json::json!({"token": token, "csr": request.csr_pem}))
        .send()
        .await
        .map_err(|e| Enroll::Retry(error_chain(&e)))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| Enroll::Retry(format!("unreadable answer: {e}")))?;
    if status.is_client_error() {
        return Err(Enroll::Refused(
            body["error"]["message"]
                .as_str()
                .unwrap_or("refused")
                .to_string(),
        ));
    }
    if !status.is_success() {
        return Err(Enroll::Retry(format!("HTTP {status}")));
    }
    if body["site_id"] != site_id {
        return Err(Enroll::Refused(format!(
            "the token is for site {}, but this is {site_id}",
            body["site_id"]
        )));
    }
    let credential = request
        .complete(
            body["certificate"].as_str().unwrap_or_default(),
            body["ca"].as_str().unwrap_or_default(),
        )
        .map_err(|e| Enroll::Refused(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|e| Enroll::Refused(format!("{}: {e}", dir.display())))?;
    credential
        .write_pem(dir)
        .map_err(|e| Enroll::Refused(e.to_string()))?;
    roost_sync::pki::Request::forget(dir);
    Ok(Enrolled {
        credential,
        region: body["region"].as_str().map(str::to_string),
        quic_port: body["quic_port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok()),
    })
}

/// An error with its causes (reqwest's own message hides them:
/// "error sending request" says nothing of "connection refused").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s = format!("{s}: {text}");
        }
        cause = c.source();
    }
    s
}

/// The site's side of the link.
#[derive(Debug)]
pub struct Uplink {
    pub site_id: String,
    pub region: UplinkSection,
    /// The site's credential; `None` until enrollment gives one.
    pub credential: Option<Credential>,
    /// Where an enrolled credential is written.
    pub credentials_dir: std::path::PathBuf,
    pub store: Store,
    pub session: SessionConfig,
    /// Told when the region's intent arrived.
    pub intent_arrived: Arc<Notify>,
    /// Fetches the region's images while connected.
    pub fetcher: crate::storage::fetch::Fetcher,
    /// Backs `central-replicated` volumes up to the region while connected.
    pub backuper: crate::storage::backup::Backuper,
    /// Whether the link is up, and since when not (for `site.link_down`).
    pub link_state: Arc<crate::alarms::LinkState>,
}

impl Uplink {
    /// Enrolls if it must, then connects, syncs, and reconnects until
    /// `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let credential = match self.credential.take() {
            Some(c) => c,
            None => match self.enroll(&mut shutdown).await {
                Some(c) => c,
                None => return,
            },
        };
        let endpoint = match Self::endpoint(&credential) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot set up the QUIC endpoint; the site stays offline");
                return;
            }
        };
        let mut backoff = Backoff::new(Backoff::BASE, Backoff::CAP);
        loop {
            let mut greeted = false;
            let outcome = tokio::select! {
                r = self.connect_and_sync(&endpoint, &mut greeted) => r,
                _ = shutdown.changed() => break,
            };
            METRICS.uplink_connected.set(0);
            self.link_state.disconnected();
            match outcome {
                Ok(()) => {
                    tracing::info!(region = %self.region.name, "the region closed the connection")
                }
                Err(e) => {
                    tracing::warn!(region = %self.region.name, address = %self.region.address, error = %e,
                    "the link to the region is down; the site keeps working and will retry")
                }
            }
            // A session that worked (the region answered and synced, for a
            // couple of seconds at least) was a success: retry soon.
            // Waiting for one to live 30 s let repeated controller restarts
            // push a site toward the cap; one failing right after the hello
            // still backs off. The jitter spreads a fleet's retries.
            if greeted {
                backoff.reset();
            }
            let delay = backoff.next(rand::random::<f64>());
            tracing::debug!(delay_ms = delay.as_millis() as u64, "reconnecting after");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => break,
            }
        }
        endpoint.close(0u32.into(), b"site shutting down");
    }

    fn endpoint(credential: &Credential) -> Result<quinn::Endpoint, UplinkError> {
        let mut e = quinn::Endpoint::client((std::net::Ipv6Addr::UNSPECIFIED, 0).into())
            .or_else(|_| quinn::Endpoint::client((std::net::Ipv4Addr::UNSPECIFIED, 0).into()))
            .map_err(|e| UplinkError::Connect(e.to_string()))?;
        e.set_default_client_config(client_config(credential)?);
        Ok(e)
    }

    /// Trades the join token for a certificate, retrying with backoff while
    /// the controller cannot be reached; `None` if the region refused the
    /// token (it says why in the log) or the agent is stopping.
    async fn enroll(&self, shutdown: &mut watch::Receiver<bool>) -> Option<Credential> {
        let (Some(url), Some(token)) = (&self.region.central_api, &self.region.join_token) else {
            return None;
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .ok()?;
        let mut backoff = Backoff::new(Backoff::BASE, Backoff::CAP);
        loop {
            match enroll_once(&http, url, token, &self.site_id, &self.credentials_dir).await {
                Ok(enrolled) => {
                    tracing::info!(site = %self.site_id, dir = %self.credentials_dir.display(), "enrolled with the region");
                    return Some(enrolled.credential);
                }
                Err(Enroll::Refused(why)) => {
                    tracing::error!(site = %self.site_id, reason = %why,
                        "the region refused the join token; ask for a new one (roost-controller token create) and put it in region.join_token");
                    return None;
                }
                Err(Enroll::Retry(why)) => {
                    tracing::warn!(site = %self.site_id, url = %url, reason = %why, "cannot enroll yet; the site keeps working and will retry");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next(rand::random::<f64>())) => {}
                _ = shutdown.changed() => return None,
            }
        }
    }

    /// One connection, until it ends; `greeted` turns true when the region
    /// answered the site's hello and the session then lasted 2 s with a
    /// sync message from the region (the clock starts at the hello, so a
    /// slow handshake does not count).
    async fn connect_and_sync(
        &self,
        endpoint: &quinn::Endpoint,
        greeted: &mut bool,
    ) -> Result<(), UplinkError> {
        let addr = tokio::net::lookup_host(&self.region.address)
            .await
            .map_err(|e| UplinkError::Resolve(self.region.address.clone(), e.to_string()))?
            .next()
            .ok_or_else(|| {
                UplinkError::Resolve(self.region.address.clone(), "no addresses".into())
            })?;
        let connecting = endpoint
            .connect(addr, &region_server_name(&self.region.name))
            .map_err(|e| UplinkError::Connect(e.to_string()));
        let conn = match connecting {
            Ok(c) => c.await.map_err(|e| UplinkError::Connect(e.to_string())),
            Err(e) => Err(e),
        };
        let conn = match conn {
            Ok(c) => {
                METRICS.uplink_connects.with_label_values(&["ok"]).inc();
                c
            }
            Err(e) => {
                METRICS.uplink_connects.with_label_values(&["failed"]).inc();
                return Err(e);
            }
        };
        METRICS.uplink_connected.set(1);
        tracing::info!(region = %self.region.name, %addr, "connected to the region");
        let hello = Hello {
            name: self.site_id.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: roost_sync::frame::VERSION,
        };
        let (region_hello, send, recv) = site_open(&conn, &hello).await?;
        // Linked once the region said hello back (a region refusing the
        // site does not reset the link-down clock).
        self.link_state.connected();
        let session_started = Instant::now();
        tracing::info!(region = %region_hello.name, version = %region_hello.version, "region answered");
        let persisted = self.store.sync_state(PEER.into()).await?;
        let mut session = Session::new(
            Role::Site,
            self.session.clone(),
            persisted.as_ref(),
            Instant::now(),
        )?;
        // Image fetches and volume backups run on bulk streams of their
        // own beside the sync.
        let mut fetching = tokio::spawn(self.fetcher.clone().run(conn.clone()));
        let mut backing_up = tokio::spawn(self.backuper.clone().run(conn.clone()));
        let docs = self.store.docs();
        let local = self.store.doc_changes();
        let arrived = self.intent_arrived.clone();
        let on_received = move |_: &roost_sync::Session, r: roost_sync::Received| {
            if r.intent_changed {
                arrived.notify_one();
            }
        };
        let result = drive(
            &mut session,
            &docs,
            &local,
            &on_received,
            send,
            recv,
            self.session.max_frame,
        )
        .await;
        // Fetches end on their own once the connection is gone (recording
        // what they fetched and putting the image back to queued); one
        // that does not within 5 s is stopped, and the next run resets it.
        conn.close(0u32.into(), b"done");
        // A cut backup ends on its own too (counted as failed; the next
        // connection resumes it).
        for task in [&mut fetching, &mut backing_up] {
            if tokio::time::timeout(Duration::from_secs(5), &mut *task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        let stats = session.stats();
        *greeted = stats.frames_in > 0 && session_started.elapsed() >= Duration::from_secs(2);
        METRICS
            .uplink_bytes
            .with_label_values(&["out"])
            .inc_by(stats.bytes_out);
        METRICS
            .uplink_bytes
            .with_label_values(&["in"])
            .inc_by(stats.bytes_in);
        if let Err(e) = self
            .store
            .save_sync_state(PEER.into(), session.persist())
            .await
        {
            tracing::warn!(error = %e, "cannot keep the sync state; the next connection resends more");
        }
        conn.close(0u32.into(), b"done");
        Ok(result?)
    }
}

/// Brings the tables in line with the intent document whenever the region's
/// intent arrived, and once at start (changes received before a crash are
/// on disk but may not have reached the tables).
pub async fn apply_loop(
    store: Store,
    queue: Arc<WorkQueue>,
    arrived: Arc<Notify>,
    images_changed: Arc<Notify>,
    image_dirs: Vec<std::path::PathBuf>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match store.apply_intent().await {
            Ok(applied) => {
                if !applied.servers.is_empty() || applied.conflicts > 0 {
                    tracing::info!(
                        servers = applied.servers.len(),
                        conflicts = applied.conflicts,
                        "applied the region's intent"
                    );
                }
                METRICS.conflicts.inc_by(applied.conflicts as u64);
                for id in &applied.servers {
                    queue.push(id);
                }
                if applied.images > 0 {
                    images_changed.notify_one();
                }
                // Wherever tiering put them.
                let mut files = Vec::new();
                for id in &applied.withdrawn_images {
                    for d in &image_dirs {
                        files.extend(
                            ["", ".part", ".manifest"].map(|ext| d.join(format!("{id}{ext}"))),
                        );
                    }
                }
                for f in files {
                    match tokio::fs::remove_file(&f).await {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            tracing::warn!(file = %f.display(), error = %e, "cannot remove a withdrawn image's file")
                        }
                        _ => {}
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot apply the region's intent; retrying on the next change")
            }
        }
        tokio::select! {
            _ = arrived.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        // The top of each window: 0.5, 1, 2, 4 s ... capped at 60 s.
        let tops: Vec<Duration> = (0..10).map(|_| b.next(1.0)).collect();
        assert_eq!(tops[0], Duration::from_millis(500));
        assert_eq!(tops[3], Duration::from_secs(4));
        assert_eq!(tops[9], Duration::from_secs(60));
        // Full jitter: anything from zero to the top.
        assert_eq!(b.next(0.0), Duration::ZERO);
        assert_eq!(b.next(0.5), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.next(1.0), Duration::from_millis(500));
        // Thousands of attempts never overflow.
        for _ in 0..10_000 {
            assert!(b.next(1.0) <= Duration::from_secs(60));
        }
    }

    #[test]
    fn jittered_delays_of_many_sites_spread_out() {
        // 1,000 sites failing at once, third attempt (window 2 s): their
        // retries spread over the window instead of landing together.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut buckets = [0u32; 10];
        for _ in 0..1000 {
            let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
            b.next(rng.random());
            b.next(rng.random());
            let d = b.next(rng.random());
            buckets[(d.as_secs_f64() / 0.2).min(9.0) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (50..=150).contains(&n)),
            "{buckets:?}"
        );
    }
}
