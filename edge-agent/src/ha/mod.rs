//! Edge high availability: a site run by two controller nodes, one active,
//! one standby holding a copy of the store (see `docs/edge-ha.md`).
//!
//! - [`log`]: the replication log, written in each batch's transaction.
//! - [`role`]: who is active (sans-IO, simulated time in its tests).
//! - [`wire`]: the peer link's messages.
//! - [`Node`]: the driver. It answers the peer on a QUIC port with the
//!   site's own credential, follows an active peer as a standby until it
//!   goes silent ([`Node::until_active`]), then streams the log to the peer
//!   while this node serves ([`Node::activate`]).
//! - [`Replication`]: what the writer waits on, so a write is acknowledged
//!   only once the standby holds it, or after `ack_timeout_ms` alone.

pub mod log;
pub mod role;
pub mod wire;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use roost_common::config::HaSection;
use roost_sync::pki::{self, Credential};
use roost_sync::transport::{self, TransportError};

use crate::metrics::METRICS;
use log::Tip;
use role::{Election, PeerState, Role, Verdict};
use wire::Msg;

/// How often the active speaks when it has nothing to send.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// How often an active looks for another active (after a cut between the
/// two nodes).
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Exit status of a node that steps down: its supervisor restarts it, and
/// it comes back as the winner's standby (sysexits' EX_TEMPFAIL).
pub const EXIT_STEPPED_DOWN: i32 = 75;
/// Where an incoming snapshot is written before it replaces the store.
const INCOMING: &str = "ha-incoming.db";
/// Where the active writes a snapshot before sending it.
const OUTGOING: &str = "ha-outgoing.db";

#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("peer link: {0}")]
    Transport(#[from] TransportError),
    #[error("peer link: {0}")]
    Link(String),
    #[error("peer message: {0}")]
    Wire(#[from] wire::WireError),
    #[error(transparent)]
    Log(#[from] log::LogError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen for the peer on {addr}: {source}; choose another ha.listen")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

fn link<E: std::fmt::Display>(e: E) -> HaError {
    HaError::Link(e.to_string())
}

/// What the writer and the link share on the active: the log's tip, what
/// the standby confirmed, and whether to wait for it.
#[derive(Debug)]
pub struct Replication {
    state: Mutex<Shared>,
    confirmed: Condvar,
    tip: watch::Sender<u64>,
    ack_timeout: Duration,
}

#[derive(Debug)]
struct Shared {
    acked: u64,
    /// A standby is connected and has confirmed the tip once.
    attached: bool,
    /// It missed an ack deadline; writes go on alone until it catches up.
    lagging: bool,
    /// Since when no standby holds every write (`None` while one does).
    unprotected_since: Option<chrono::DateTime<chrono::Utc>>,
    /// Which standby link the state belongs to: an old link that ends or
    /// acks late must not touch a newer one's.
    link: u64,
}

impl Replication {
    pub fn new(ack_timeout: Duration) -> Replication {
        Replication {
            state: Mutex::new(Shared::unprotected(None)),
            confirmed: Condvar::new(),
            tip: watch::Sender::new(0),
            ack_timeout,
        }
    }

    /// The log's tip when the store opens, so a standby counts as caught
    /// up only once it holds that.
    pub fn seed(&self, tip: u64) {
        self.tip.send_replace(tip);
    }

    /// Called by the writer after entry `seq` committed, before anyone
    /// hears of it: wakes the link and waits until the standby holds the
    /// entry, or the deadline passes (the standby is then lagging).
    pub fn committed(&self, seq: u64) {
        self.tip.send_replace(seq);
        let Ok(mut s) = self.state.lock() else { return };
        if !s.attached || s.lagging {
            return;
        }
        let deadline = Instant::now() + self.ack_timeout;
        while s.attached && s.acked < seq {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.lagging = true;
                s.unprotected_since = Some(chrono::Utc::now());
                METRICS.ha_ack_timeouts.inc();
                tracing::warn!(seq, acked = s.acked, timeout_ms = self.ack_timeout.as_millis() as u64,
                    "the standby did not confirm a write in time; writes are acknowledged alone until it catches up");
                return;
            }
            s = match self.confirmed.wait_timeout(s, left) {
                Ok((s, _)) => s,
                Err(_) => return,
            };
        }
    }

    /// The standby on link `link` holds everything up to `seq`.
    pub fn ack(&self, link: u64, seq: u64) {
        let tip = *self.tip.borrow();
        if let Ok(mut s) = self.state.lock() {
            if s.link != link {
                return;
            }
            s.acked = s.acked.max(seq);
            if s.acked >= tip && (!s.attached || s.lagging) {
                tracing::info!(seq, "the standby holds every write");
                s.attached = true;
                s.lagging = false;
                s.unprotected_since = None;
                METRICS.ha_standby_attached.set(1);
            }
        }
        self.confirmed.notify_all();
    }

    /// A new standby link replaces any other; returns its number.
    pub fn begin_link(&self) -> u64 {
        self.reset(None)
    }

    /// Standby link `link` ended: if it is the current one, writes stop
    /// waiting for it.
    pub fn end_link(&self, link: u64) {
        self.reset(Some(link));
    }

    /// Starts a new link (`only: None`) or ends link `only`, under the
    /// lock; returns the current link's number.
    fn reset(&self, only: Option<u64>) -> u64 {
        let Ok(mut s) = self.state.lock() else {
            return 0;
        };
        if only.is_some_and(|l| l != s.link) {
            return s.link;
        }
        let link = s.link + u64::from(only.is_none());
        *s = Shared::unprotected(s.unprotected_since);
        s.link = link;
        drop(s);
        METRICS.ha_standby_attached.set(0);
        self.confirmed.notify_all();
        link
    }

    /// This node just became active: it has had no standby since now.
    fn unprotected_from_now(&self) {
        if let Ok(mut s) = self.state.lock() {
            let link = s.link;
            *s = Shared::unprotected(None);
            s.link = link;
        }
    }

    /// Since when no standby holds every write; `None` while one does.
    pub fn unprotected_since(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.state
            .lock()
            .map(|s| s.unprotected_since)
            .unwrap_or_else(|_| Some(chrono::Utc::now()))
    }

    /// Whether a caught-up standby confirms each write.
    pub fn attached(&self) -> bool {
        self.state.lock().is_ok_and(|s| s.attached && !s.lagging)
    }
}

impl Shared {
    /// No standby attached, unprotected since `since` (or now).
    fn unprotected(since: Option<chrono::DateTime<chrono::Utc>>) -> Shared {
        Shared {
            acked: 0,
            attached: false,
            lagging: false,
            unprotected_since: since.or_else(|| Some(chrono::Utc::now())),
            link: 0,
        }
    }
}

/// This node's side of the pair.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: HaSection,
    site_id: String,
    data_dir: PathBuf,
    db: PathBuf,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    election: Mutex<Election>,
    replication: Arc<Replication>,
    /// Set once the store is open as active: only then is the log
    /// streamed (the store's first batch of the term is in it).
    serving: watch::Sender<bool>,
}

impl Node {
    /// Binds the peer port and starts answering the peer. Reads the term
    /// the local store last knew.
    pub fn start(
        cfg: &HaSection,
        site_id: &str,
        cred: &Credential,
        data_dir: &Path,
    ) -> Result<Node, HaError> {
        let db = data_dir.join(crate::store::DB_FILE);
        let term = read_term(&db)?;
        // Copies a stop cut short.
        for e in std::fs::read_dir(data_dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(OUTGOING) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let server = transport::peer_server_config(cred, HEARTBEAT, idle(cfg))?;
        let client = transport::peer_client_config(cred, HEARTBEAT, idle(cfg))?;
        let endpoint =
            quinn::Endpoint::server(server, cfg.listen).map_err(|source| HaError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let election = Election::new(&cfg.node, term, Instant::now(), takeover_after(cfg));
        let node = Node {
            inner: Arc::new(Inner {
                cfg: cfg.clone(),
                site_id: site_id.to_string(),
                data_dir: data_dir.to_path_buf(),
                db,
                endpoint,
                client,
                election: Mutex::new(election),
                replication: Arc::new(Replication::new(Duration::from_millis(cfg.ack_timeout_ms))),
                serving: watch::Sender::new(false),
            }),
        };
        tokio::spawn(node.clone().answer());
        tracing::info!(node = %cfg.node, peer = %cfg.peer_name, listen = %cfg.listen, term,
            "edge HA: looking for an active peer");
        Ok(node)
    }

    pub fn replication(&self) -> Arc<Replication> {
        self.inner.replication.clone()
    }

    pub fn name(&self) -> &str {
        &self.inner.cfg.node
    }

    /// The election; never hold it across an `.await`.
    fn election(&self) -> std::sync::MutexGuard<'_, Election> {
        self.inner
            .election
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> PeerState {
        self.election().state()
    }

    /// What to do now that the peer said what it is (the lock is let go
    /// before the caller acts).
    fn verdict_on(&self, peer: &PeerState) -> Verdict {
        self.election().on_peer(Instant::now(), peer)
    }

    /// Follows an active peer as its standby, applying its log to the
    /// local store, until no active is heard for `takeover_after`. Returns
    /// the term this node is to be active in; the store is whole as of the
    /// last entry applied.
    pub async fn until_active(&self) -> Result<u64, HaError> {
        let mut store = open_store(&self.inner.db)?;
        // Set when an entry did not apply: the next hello claims nothing,
        // so the active sends a whole copy instead of the same entry again.
        let mut need_copy = false;
        loop {
            if self.election().on_tick(Instant::now()) == Verdict::TakeOver {
                break;
            }
            let held = log::tip(&store)?;
            self.election().set_tip(held.term, held.seq);
            let tip = if need_copy { Tip::default() } else { held };
            match self.dial(tip).await {
                Ok((send, recv, peer)) => match self.verdict_on(&peer) {
                    Verdict::Follow => {
                        tracing::info!(active = %peer.node, term = peer.term, "edge HA: standby of the active peer");
                        match self.follow(&mut store, send, recv, &mut need_copy).await {
                            Err(HaError::Log(e)) => {
                                tracing::warn!(error = %e, "edge HA: this copy differs from the active's; asking for a whole copy");
                                need_copy = true;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "edge HA: the link to the active ended")
                            }
                            Ok(()) => {}
                        }
                    }
                    Verdict::TakeOver => break,
                    Verdict::Stay | Verdict::StepDown => {}
                },
                Err(e) => tracing::debug!(error = %e, "edge HA: peer not reached"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        drop(store);
        let term = self.election().take_over();
        self.inner.replication.unprotected_from_now();
        tracing::info!(node = %self.inner.cfg.node, term, "edge HA: this node is now active");
        Ok(term)
    }

    /// Once the store is open as active: look out for another active.
    pub fn activate(&self) {
        self.inner.serving.send_replace(true);
        tokio::spawn(self.clone().probe());
    }

    /// Every [`PROBE_EVERY`]: if the peer says it is active and wins,
    /// this node stops at once (see [`Node::step_down`]).
    async fn probe(self) {
        loop {
            tokio::time::sleep(PROBE_EVERY).await;
            if let Ok((_, _, peer)) = self.dial(Tip::default()).await {
                if peer.role == Role::Active {
                    self.settle(&peer);
                }
            }
        }
    }

    /// Two actives met: the loser exits at once. Nothing more is
    /// acknowledged from its store, which it keeps aside when it comes
    /// back as the winner's standby and takes a copy.
    fn settle(&self, peer: &PeerState) {
        if self.verdict_on(peer) == Verdict::StepDown {
            tracing::error!(peer = %peer.node, peer_term = peer.term, term = self.state().term,
                "edge HA: another active node wins (higher term, or same term and lower name); stepping down, to come back as its standby");
            std::process::exit(EXIT_STEPPED_DOWN);
        }
    }

    /// Connects to the peer and trades hellos.
    async fn dial(
        &self,
        tip: Tip,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, PeerState), HaError> {
        let inner = &self.inner;
        let connecting = inner
            .endpoint
            .connect_with(
                inner.client.clone(),
                inner.cfg.peer,
                &pki::site_server_name(&inner.site_id),
            )
            .map_err(link)?;
        let within = Duration::from_millis(inner.cfg.takeover_after_ms / 2);
        let conn = tokio::time::timeout(within, connecting)
            .await
            .map_err(|_| HaError::Link("no answer".into()))?
            .map_err(link)?;
        self.check_site(&conn)?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(link)?;
        send_msg(&mut send, &self.hello(tip)).await?;
        let peer = tokio::time::timeout(within, read(&mut recv))
            .await
            .map_err(|_| HaError::Link("no hello".into()))??;
        Ok((send, recv, peer_state(peer)?))
    }

    fn hello(&self, tip: Tip) -> Msg {
        let s = self.state();
        Msg::Hello {
            node: s.node,
            role: s.role,
            term: s.term,
            tip,
        }
    }

    fn check_site(&self, conn: &quinn::Connection) -> Result<(), HaError> {
        let site = transport::peer_site_id(conn)?;
        if site != self.inner.site_id {
            conn.close(1u32.into(), b"another site");
            return Err(HaError::Link(format!(
                "the peer holds site {site}'s certificate, not {}'s",
                self.inner.site_id
            )));
        }
        Ok(())
    }

    /// The standby's side: applies entries and snapshots, confirming each.
    async fn follow(
        &self,
        store: &mut Connection,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        need_copy: &mut bool,
    ) -> Result<(), HaError> {
        let silence = takeover_after(&self.inner.cfg);
        let incoming = self.inner.data_dir.join(INCOMING);
        let mut snapshot: Option<(tokio::fs::File, sha2::Sha256, u64)> = None;
        loop {
            let msg = match tokio::time::timeout(silence, read(&mut recv)).await {
                Ok(m) => m?,
                Err(_) => return Err(HaError::Link("the active went silent".into())),
            };
            let now = Instant::now();
            match msg {
                Msg::Heartbeat { term } => self.election().on_heard(now, term),
                Msg::Entry(entry) => {
                    self.election().on_heard(now, entry.term);
                    log::apply(store, &entry)?;
                    send_msg(&mut send, &Msg::Ack { seq: entry.seq }).await?;
                }
                Msg::SnapshotPart(bytes) => {
                    self.election().on_heard(now, 0);
                    if snapshot.is_none() {
                        let f = tokio::fs::File::create(&incoming).await.map_err(link)?;
                        snapshot = Some((f, sha2::Sha256::new(), 0));
                    }
                    if let Some((f, h, n)) = snapshot.as_mut() {
                        f.write_all(&bytes).await.map_err(link)?;
                        h.update(&bytes);
                        *n += bytes.len() as u64;
                    }
                }
                Msg::SnapshotEnd { tip, len, sha256 } => {
                    let Some((f, h, n)) = snapshot.take() else {
                        return Err(HaError::Link("a snapshot end with no snapshot".into()));
                    };
                    f.sync_all().await.map_err(link)?;
                    drop(f);
                    if n != len || h.finalize().as_slice() != sha256 {
                        return Err(HaError::Link(format!(
                            "the snapshot arrived damaged ({n} of {len} bytes, or another hash)"
                        )));
                    }
                    let placeholder = Connection::open_in_memory().map_err(log::LogError::from)?;
                    drop(std::mem::replace(store, placeholder));
                    let installed = log::install_snapshot(&self.inner.db, &incoming);
                    // The store file is whole either way: the old one, or
                    // the copy.
                    *store = open_store(&self.inner.db)?;
                    installed?;
                    *need_copy = false;
                    tracing::info!(
                        bytes = len,
                        seq = tip.seq,
                        term = tip.term,
                        "edge HA: took a whole copy of the active's store"
                    );
                    send_msg(&mut send, &Msg::Ack { seq: tip.seq }).await?;
                }
                Msg::Hello { .. } | Msg::Ack { .. } => {
                    return Err(HaError::Link("unexpected message from the active".into()))
                }
            }
        }
    }

    /// Answers every connection from the peer.
    async fn answer(self) {
        while let Some(incoming) = self.inner.endpoint.accept().await {
            let node = self.clone();
            tokio::spawn(async move {
                if let Err(e) = node.answer_one(incoming).await {
                    tracing::debug!(error = %e, "edge HA: peer connection ended");
                }
            });
        }
    }

    async fn answer_one(&self, incoming: quinn::Incoming) -> Result<(), HaError> {
        let conn = incoming.await.map_err(link)?;
        self.check_site(&conn)?;
        let (mut send, mut recv) = conn.accept_bi().await.map_err(link)?;
        let hello = read(&mut recv).await?;
        let Msg::Hello { tip: from, .. } = &hello else {
            return Err(HaError::Link("the peer did not start with a hello".into()));
        };
        let from = *from;
        let peer = peer_state(hello)?;
        let me = self.state();
        let tip = if self.inner.db.exists() {
            read_tip(&self.inner.db)?
        } else {
            Tip::default()
        };
        send_msg(&mut send, &self.hello(tip)).await?;
        match (me.role, peer.role) {
            (Role::Active, Role::Active) => {
                self.settle(&peer);
                Ok(())
            }
            (Role::Active, _) => self.stream(send, recv, from).await,
            _ => {
                let _ = send.finish();
                Ok(())
            }
        }
    }

    /// The active's side: a snapshot if the standby's tip is not in the
    /// log, then every entry after it as it commits, heartbeats between.
    async fn stream(
        &self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        from: Tip,
    ) -> Result<(), HaError> {
        let term = self.state().term;
        let mut beat = tokio::time::interval(HEARTBEAT);
        // Taking over: stream once the store is open as active (its first
        // batch of the term is then in the log), speaking meanwhile so the
        // standby does not take the wait for silence.
        let mut serving = self.inner.serving.subscribe();
        while !*serving.borrow_and_update() {
            tokio::select! {
                _ = serving.changed() => {}
                _ = beat.tick() => send_msg(&mut send, &Msg::Heartbeat { term }).await?,
            }
        }
        let repl = self.inner.replication.clone();
        // One standby at a time: a new link replaces the old.
        let link = repl.begin_link();
        let _link = Link(repl.clone(), link);
        let reader = crate::store::open_reader(&self.inner.db)?;
        let mut pos = if log::holds(&reader, from)? {
            // It holds that entry already: caught up to there.
            repl.ack(link, from.seq);
            from.seq
        } else {
            self.send_snapshot(&mut send, term).await?
        };
        let acks = Abort(tokio::spawn({
            let repl = repl.clone();
            async move {
                while let Ok(Msg::Ack { seq }) = read(&mut recv).await {
                    repl.ack(link, seq);
                }
            }
        }));
        let mut tip = repl.tip.subscribe();
        loop {
            if acks.0.is_finished() {
                return Err(HaError::Link("the standby left".into()));
            }
            let entries = log::entries_after(&reader, pos, 64)?;
            if entries.is_empty() {
                tokio::select! {
                    _ = tip.changed() => {}
                    _ = beat.tick() => {
                        send_msg(&mut send, &Msg::Heartbeat { term }).await?;
                    }
                }
                continue;
            }
            for e in entries {
                if e.changeset.len() + 17 > wire::MAX_FRAME {
                    // Too big for a frame: a whole copy carries it instead.
                    tracing::warn!(
                        seq = e.seq,
                        bytes = e.changeset.len(),
                        "edge HA: a batch too big for one frame; sending the standby a whole copy"
                    );
                    pos = self.send_snapshot(&mut send, term).await?;
                    break;
                }
                pos = e.seq;
                send_msg(&mut send, &Msg::Entry(e)).await?;
            }
        }
    }

    /// Sends a whole copy of the store, with heartbeats while it is made
    /// so the standby does not take the wait for silence; returns the tip
    /// the copy holds.
    async fn send_snapshot(&self, send: &mut quinn::SendStream, term: u64) -> Result<u64, HaError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.inner.data_dir.join(format!("{OUTGOING}.{n}"));
        let _gone = Remove(out.clone());
        let (db, path) = (self.inner.db.clone(), out.clone());
        let mut making = tokio::task::spawn_blocking(move || {
            let reader = crate::store::open_reader(&db)?;
            Ok::<_, HaError>(log::snapshot(&reader, &path)?)
        });
        let mut beat = tokio::time::interval(HEARTBEAT);
        let tip = loop {
            tokio::select! {
                made = &mut making => break made.map_err(link)??,
                _ = beat.tick() => {
                    if let Err(e) = send_msg(send, &Msg::Heartbeat { term }).await {
                        // The copy is still being written: let it finish,
                        // so the file is removed after it, not before.
                        let _ = making.await;
                        return Err(e);
                    }
                }
            }
        };
        let mut file = tokio::fs::File::open(&out).await.map_err(link)?;
        let (mut hash, mut len) = (sha2::Sha256::new(), 0u64);
        let mut part = vec![0u8; wire::SNAPSHOT_PART];
        loop {
            let n = read_full(&mut file, &mut part).await.map_err(link)?;
            if n == 0 {
                break;
            }
            hash.update(&part[..n]);
            len += n as u64;
            send_msg(send, &Msg::SnapshotPart(part[..n].to_vec())).await?;
        }
        let sha256: [u8; 32] = hash.finalize().into();
        send_msg(send, &Msg::SnapshotEnd { tip, len, sha256 }).await?;
        tracing::info!(
            bytes = len,
            seq = tip.seq,
            "edge HA: sent the standby a whole copy of the store"
        );
        Ok(tip.seq)
    }
}

/// Fills `buf` from `file` as far as it goes; 0 at the end.
async fn read_full(file: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut n = 0;
    while n < buf.len() {
        let got = file.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

/// Removes a temporary file when dropped.
struct Remove(PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Aborts a task when dropped.
struct Abort(tokio::task::JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One standby link; ends it when dropped.
struct Link(Arc<Replication>, u64);

impl Drop for Link {
    fn drop(&mut self) {
        self.0.end_link(self.1);
    }
}

fn takeover_after(cfg: &HaSection) -> Duration {
    Duration::from_millis(cfg.takeover_after_ms)
}

/// The link's idle timeout: a peer silent this long is gone.
fn idle(cfg: &HaSection) -> Duration {
    takeover_after(cfg)
}

fn peer_state(hello: Msg) -> Result<PeerState, HaError> {
    match hello {
        Msg::Hello {
            node,
            role,
            term,
            tip,
        } => Ok(PeerState {
            node,
            role,
            term,
            tip: (tip.term, tip.seq),
        }),
        _ => Err(HaError::Link("the peer did not start with a hello".into())),
    }
}

/// Writes one message as a frame, counting its bytes.
async fn send_msg(send: &mut quinn::SendStream, msg: &Msg) -> Result<(), HaError> {
    let frame = msg.frame();
    send.write_all(&frame).await.map_err(link)?;
    METRICS.ha_sent_bytes.inc_by(frame.len() as u64);
    Ok(())
}

async fn read(recv: &mut quinn::RecvStream) -> Result<Msg, HaError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(link)?;
    let n = u32::from_be_bytes(len) as usize;
    if n > wire::MAX_FRAME {
        return Err(HaError::Link(format!(
            "a frame of {n} bytes is over the limit of {}",
            wire::MAX_FRAME
        )));
    }
    let mut buf = vec![0u8; n];
    recv.read_exact(&mut buf).await.map_err(link)?;
    Ok(Msg::decode(&buf)?)
}

/// The standby's connection to its copy: the schema made if the store is
/// new, so an empty copy has a log to report.
fn open_store(db: &Path) -> Result<Connection, HaError> {
    Ok(crate::store::open_migrated(db)?)
}

fn read_tip(db: &Path) -> Result<Tip, HaError> {
    Ok(log::tip(&crate::store::open_reader(db)?)?)
}

/// The term the store at `db` last knew (0 for none, or no store yet).
fn read_term(db: &Path) -> Result<u64, HaError> {
    if !db.exists() {
        return Ok(0);
    }
    let conn = open_store(db)?;
    Ok(crate::store::inventory::meta(&conn, "ha_term")?
        .and_then(|t| t.parse().ok())
        .unwrap_or(0))
}

#[cfg(test)]
mod tests;
