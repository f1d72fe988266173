//! A simulated network for the sync session: no sockets, a simulated
//! clock, and faults on demand (cuts, loss, reordering, duplication,
//! restarts). Loss or a cut ends the "connection": both sides start a new
//! session from their persisted sync state, as the QUIC transport does.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use automerge::ChangeHash;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::doc::{Conflict, IntentDoc, StatusDoc};
use crate::session::{Docs, Persisted, Role, Session, SessionConfig};

const SITE_INTENT: &[u8] = b"site-intent-0001";
const SITE_STATUS: &[u8] = b"site-status-0001";
const REGION_INTENT: &[u8] = b"region-intent-01";
const REGION_STATUS: &[u8] = b"region-status-01";

struct Peer {
    role: Role,
    docs: Docs,
    session: Session,
    persisted: Persisted,
    /// Changes this peer made and acknowledged (durable): must survive.
    acked: Vec<ChangeHash>,
    journal: Vec<Conflict>,
}

impl Peer {
    fn new(role: Role, now: Instant, cfg: &SessionConfig) -> Peer {
        let (actor, status_actor, author) = match role {
            Role::Site => (SITE_INTENT, SITE_STATUS, "site:f1"),
            Role::Region => (REGION_INTENT, REGION_STATUS, "region:eu"),
        };
        let docs = Docs {
            intent: IntentDoc::new(actor, author),
            status: StatusDoc::new(status_actor),
            site_status_actor: SITE_STATUS.to_vec(),
        };
        Peer {
            role,
            docs,
            session: Session::new(role, cfg.clone(), None, now).unwrap(),
            persisted: Persisted::default(),
            acked: Vec::new(),
            journal: Vec::new(),
        }
    }

    fn reconnect(&mut self, now: Instant, cfg: &SessionConfig) {
        self.persisted = self.session.persist();
        self.session = Session::new(self.role, cfg.clone(), Some(&self.persisted), now).unwrap();
    }

    /// A crash: documents come back from their saved bytes, the session
    /// from its persisted state.
    fn restart(&mut self, now: Instant, cfg: &SessionConfig) {
        let (actor, status_actor, author) = match self.role {
            Role::Site => (SITE_INTENT, SITE_STATUS, "site:f1"),
            Role::Region => (REGION_INTENT, REGION_STATUS, "region:eu"),
        };
        let intent = self.docs.intent.save();
        let status = self.docs.status.save();
        self.docs.intent = IntentDoc::load(&intent, actor, author).unwrap();
        self.docs.status = StatusDoc::load(&status, status_actor).unwrap();
        self.reconnect(now, cfg);
    }

    fn write(&mut self, rng: &mut StdRng, now_ms: i64) {
        let id = format!("s{}", rng.random_range(0..6));
        let hash = if self.role == Role::Site && rng.random_bool(0.3) {
            let vm_state = ["active", "stopped"][rng.random_range(0..2)];
            self.docs
                .status
                .set("servers", &id, &json!({"vm_state": vm_state, "t": now_ms}))
                .unwrap();
            self.docs.status.last_local_change()
        } else if rng.random_bool(0.1) {
            self.docs.intent.delete("servers", &id, now_ms).unwrap();
            self.docs.intent.last_local_change()
        } else {
            let field = ["name", "flavor", "power"][rng.random_range(0..3)];
            self.docs
                .intent
                .set(
                    "servers",
                    &id,
                    field,
                    json!(rng.random_range(0..1000)),
                    now_ms,
                )
                .unwrap();
            self.docs.intent.last_local_change()
        };
        self.acked.extend(hash);
    }
}

struct Sim {
    now: Instant,
    start: Instant,
    cfg: SessionConfig,
    site: Peer,
    region: Peer,
    to_region: VecDeque<Vec<u8>>,
    to_site: VecDeque<Vec<u8>>,
    connected: bool,
    rng: StdRng,
    refusals: usize,
}

/// Faults, as probabilities per step.
#[derive(Clone, Copy, Default)]
struct Faults {
    write: f64,
    loss: f64,
    reorder: f64,
    duplicate: f64,
    cut: f64,
    heal: f64,
    restart: f64,
}

impl Sim {
    fn new(seed: u64, cfg: SessionConfig) -> Sim {
        let now = Instant::now();
        Sim {
            now,
            start: now,
            site: Peer::new(Role::Site, now, &cfg),
            region: Peer::new(Role::Region, now, &cfg),
            cfg,
            to_region: VecDeque::new(),
            to_site: VecDeque::new(),
            connected: true,
            rng: StdRng::seed_from_u64(seed),
            refusals: 0,
        }
    }

    fn now_ms(&self) -> i64 {
        (self.now - self.start).as_millis() as i64
    }

    fn reconnect(&mut self) {
        self.to_region.clear();
        self.to_site.clear();
        self.site.reconnect(self.now, &self.cfg);
        self.region.reconnect(self.now, &self.cfg);
    }

    fn step(&mut self, f: Faults) {
        self.now += Duration::from_millis(5);
        let ms = self.now_ms();
        if self.rng.random_bool(f.write) {
            let now = self.now;
            if self.rng.random_bool(0.5) {
                self.site.write(&mut self.rng, ms);
                self.site.session.local_change(now);
            } else {
                self.region.write(&mut self.rng, ms);
                self.region.session.local_change(now);
            }
        }
        if self.connected && self.rng.random_bool(f.cut) {
            self.connected = false;
        } else if !self.connected && self.rng.random_bool(f.heal) {
            self.connected = true;
            self.reconnect();
        }
        if self.rng.random_bool(f.restart) {
            let now = self.now;
            if self.rng.random_bool(0.5) {
                self.site.restart(now, &self.cfg)
            } else {
                self.region.restart(now, &self.cfg)
            }
            self.reconnect();
        }
        for (peer, queue) in [
            (&mut self.site, &mut self.to_region),
            (&mut self.region, &mut self.to_site),
        ] {
            peer.session.handle_timeout(&mut peer.docs, self.now);
            while let Some(frame) = peer.session.poll_message() {
                if self.connected {
                    queue.push_back(frame);
                }
            }
        }
        if !self.connected {
            self.to_region.clear();
            self.to_site.clear();
            return;
        }
        for to_site in [false, true] {
            let queue = if to_site {
                &mut self.to_site
            } else {
                &mut self.to_region
            };
            if queue.is_empty() {
                continue;
            }
            let i = if self.rng.random_bool(f.reorder) {
                self.rng.random_range(0..queue.len())
            } else {
                0
            };
            let frame = if self.rng.random_bool(f.duplicate) {
                queue[i].clone()
            } else {
                queue.remove(i).expect("index in range")
            };
            if self.rng.random_bool(f.loss) {
                // A lost frame on a reliable stream means the connection died.
                self.reconnect();
                return;
            }
            let peer = if to_site {
                &mut self.site
            } else {
                &mut self.region
            };
            match peer
                .session
                .handle_message(&mut peer.docs, &frame, self.now)
            {
                Ok(_) => {}
                Err(e) => {
                    // Out-of-order fragments are refused, never applied;
                    // the transport would reset the connection.
                    self.refusals += 1;
                    tracing::debug!(error = %e, "frame refused");
                    self.reconnect();
                    return;
                }
            }
        }
        // The transport's idle timeout: a connection that carries nothing
        // while the sides disagree is replaced.
        if self.to_region.is_empty()
            && self.to_site.is_empty()
            && self.site.session.poll_timeout().is_none()
            && self.region.session.poll_timeout().is_none()
            && !self.in_sync()
            && self.rng.random_bool(0.05)
        {
            self.reconnect();
        }
    }

    fn in_sync(&mut self) -> bool {
        self.site.session.in_sync(&mut self.site.docs)
            && self.region.session.in_sync(&mut self.region.docs)
    }

    /// Heals and runs until both sides agree; returns the steps it took.
    fn converge(&mut self) -> usize {
        self.connected = true;
        self.reconnect();
        for step in 0..20_000 {
            self.step(Faults::default());
            if self.in_sync() && self.to_region.is_empty() && self.to_site.is_empty() {
                let (s, r) = (&mut self.site, &mut self.region);
                if s.docs.intent.heads() == r.docs.intent.heads()
                    && s.docs.status.heads() == r.docs.status.heads()
                {
                    return step;
                }
            }
        }
        panic!("no convergence in 20,000 steps");
    }

    /// Converges, settles conflicts on both sides, converges again, and
    /// checks every property.
    fn check(&mut self) {
        self.converge();
        self.site
            .journal
            .extend(self.site.docs.intent.resolve().unwrap());
        self.region
            .journal
            .extend(self.region.docs.intent.resolve().unwrap());
        let now = self.now;
        self.site.session.local_change(now);
        self.region.session.local_change(now);
        self.converge();
        let (s, r) = (&mut self.site, &mut self.region);
        assert_eq!(s.docs.intent.heads(), r.docs.intent.heads());
        assert_eq!(s.docs.status.heads(), r.docs.status.heads());
        for id in s.docs.intent.ids("servers").unwrap() {
            assert_eq!(
                s.docs.intent.resource("servers", &id).unwrap(),
                r.docs.intent.resource("servers", &id).unwrap(),
                "{id}"
            );
            assert_eq!(
                s.docs.status.get("servers", &id).unwrap(),
                r.docs.status.get("servers", &id).unwrap()
            );
        }
        assert!(
            s.docs.intent.resolve().unwrap().is_empty(),
            "settled after one round"
        );
        let acked: Vec<ChangeHash> = self
            .site
            .acked
            .iter()
            .chain(&self.region.acked)
            .copied()
            .collect();
        for h in acked {
            assert!(
                self_has(&mut self.site, &h) && self_has(&mut self.region, &h),
                "acknowledged change {h} lost"
            );
        }
    }
}

fn self_has(p: &mut Peer, h: &ChangeHash) -> bool {
    p.docs.intent.has_change(h) || p.docs.status.has_change(h)
}

#[test]
fn converges_after_a_long_partition_with_writes_on_both_sides() {
    let mut sim = Sim::new(1, SessionConfig::default());
    let writes = Faults {
        write: 0.5,
        ..Default::default()
    };
    for _ in 0..200 {
        sim.step(writes);
    }
    sim.converge();
    sim.connected = false;
    for _ in 0..2_000 {
        sim.step(Faults {
            write: 0.5,
            heal: 0.0,
            ..Default::default()
        });
    }
    sim.check();
    assert!(sim.site.acked.len() > 100 && sim.region.acked.len() > 100);
}

#[test]
fn after_a_reconnect_the_peer_is_unheard_until_it_speaks() {
    let mut sim = Sim::new(4, SessionConfig::default());
    for _ in 0..100 {
        sim.step(Faults {
            write: 0.5,
            ..Default::default()
        });
    }
    sim.converge();
    assert!(sim.region.session.heard_peer());
    // Apart, the site writes; the region's new session starts from the
    // heads both shared, which look like its own: it has not heard yet.
    sim.connected = false;
    let ms = sim.now_ms();
    sim.site.write(&mut StdRng::seed_from_u64(5), ms);
    sim.connected = true;
    sim.reconnect();
    let region_heads = [
        sim.region.docs.intent.heads(),
        sim.region.docs.status.heads(),
    ];
    let mut stale = sim.region.session.peer_heads();
    stale.iter_mut().for_each(|h| h.sort());
    let mut ours = region_heads.clone();
    ours.iter_mut().for_each(|h| h.sort());
    assert_eq!(
        stale, ours,
        "before the site speaks its heads look like ours"
    );
    assert!(!sim.region.session.heard_peer());
    // The site's first words carry its heads: now the region knows.
    let now = sim.now;
    sim.site.session.handle_timeout(&mut sim.site.docs, now);
    while let Some(f) = sim.site.session.poll_message() {
        sim.region
            .session
            .handle_message(&mut sim.region.docs, &f, now)
            .unwrap();
    }
    assert!(sim.region.session.heard_peer());
    let mut heard = sim.region.session.peer_heads();
    heard.iter_mut().for_each(|h| h.sort());
    assert_ne!(heard, ours, "the site's write from the cut is announced");
}

#[test]
fn only_the_missing_changes_travel_after_a_reconnect() {
    let mut sim = Sim::new(2, SessionConfig::default());
    for _ in 0..400 {
        sim.step(Faults {
            write: 0.8,
            ..Default::default()
        });
    }
    sim.check();
    // One more write each side after a reconnect: a handful of small frames.
    sim.reconnect();
    let ms = sim.now_ms();
    sim.site.write(&mut StdRng::seed_from_u64(9), ms);
    let now = sim.now;
    sim.site.session.local_change(now);
    sim.converge();
    // converge() reconnects, so these are the catch-up session's bytes.
    let after = sim.site.session.stats().bytes_out + sim.region.session.stats().bytes_out;
    assert!(after < 4_000, "a one-change catch-up moved {after} bytes");
}

#[test]
fn large_catch_ups_are_fragmented_within_the_frame_limit() {
    let cfg = SessionConfig {
        max_frame: 1024,
        ..Default::default()
    };
    let mut sim = Sim::new(3, cfg);
    sim.connected = false;
    for _ in 0..3_000 {
        sim.step(Faults {
            write: 1.0,
            ..Default::default()
        });
    }
    let mut largest = 0;
    sim.connected = true;
    sim.reconnect();
    for _ in 0..50_000 {
        sim.now += Duration::from_millis(5);
        for (peer, queue) in [
            (&mut sim.site, &mut sim.to_region),
            (&mut sim.region, &mut sim.to_site),
        ] {
            peer.session.handle_timeout(&mut peer.docs, sim.now);
            while let Some(f) = peer.session.poll_message() {
                largest = largest.max(f.len());
                queue.push_back(f);
            }
        }
        if let Some(f) = sim.to_region.pop_front() {
            sim.region
                .session
                .handle_message(&mut sim.region.docs, &f, sim.now)
                .unwrap();
        }
        if let Some(f) = sim.to_site.pop_front() {
            sim.site
                .session
                .handle_message(&mut sim.site.docs, &f, sim.now)
                .unwrap();
        }
        if sim.to_site.is_empty() && sim.to_region.is_empty() && sim.in_sync() {
            break;
        }
    }
    assert!(largest <= 1024, "frame of {largest} bytes");
    sim.check();
}

#[test]
fn a_region_cannot_write_site_status() {
    let now = Instant::now();
    let cfg = SessionConfig::default();
    let mut site = Peer::new(Role::Site, now, &cfg);
    let mut region = Peer::new(Role::Region, now, &cfg);
    // The region forges a status change under its own actor.
    region
        .docs
        .status
        .set("servers", "s1", &json!({"vm_state": "forged"}))
        .unwrap();
    region.session.local_change(now);
    let later = now + Duration::from_secs(1);
    let mut refused = 0;
    for _ in 0..20 {
        site.session.handle_timeout(&mut site.docs, later);
        region.session.handle_timeout(&mut region.docs, later);
        while let Some(f) = region.session.poll_message() {
            if site
                .session
                .handle_message(&mut site.docs, &f, later)
                .is_err()
            {
                refused += 1;
            }
        }
        while let Some(f) = site.session.poll_message() {
            let _ = region.session.handle_message(&mut region.docs, &f, later);
        }
    }
    assert!(refused > 0, "the forged status change was refused");
    assert_eq!(site.docs.status.get("servers", "s1").unwrap(), None);

    // And a region refuses status from anyone but the site's status actor.
    let mut impostor = Peer::new(Role::Site, now, &cfg);
    impostor.docs.status = StatusDoc::new(b"not-the-site-000");
    impostor
        .docs
        .status
        .set("servers", "s1", &json!({"vm_state": "forged"}))
        .unwrap();
    let mut region = Peer::new(Role::Region, now, &cfg);
    let mut refused = 0;
    for _ in 0..20 {
        impostor.session.handle_timeout(&mut impostor.docs, later);
        while let Some(f) = impostor.session.poll_message() {
            if region
                .session
                .handle_message(&mut region.docs, &f, later)
                .is_err()
            {
                refused += 1;
            }
        }
        while let Some(f) = region.session.poll_message() {
            let _ = impostor
                .session
                .handle_message(&mut impostor.docs, &f, later);
        }
    }
    assert!(refused > 0);
    assert_eq!(region.docs.status.get("servers", "s1").unwrap(), None);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 24, ..Default::default() })]
    /// Random writes on both sides through random cuts, loss, reordering,
    /// duplication and restarts always end with identical documents, the
    /// same merged view on both sides, and every acknowledged change kept.
    #[test]
    fn random_faults_always_converge_and_lose_nothing(seed in 0u64..u64::MAX, max_frame in proptest::sample::select(vec![1024usize, 4096, 1 << 20])) {
        let mut sim = Sim::new(seed, SessionConfig { max_frame, ..Default::default() });
        let f = Faults { write: 0.3, loss: 0.02, reorder: 0.05, duplicate: 0.05, cut: 0.01, heal: 0.05, restart: 0.005 };
        for _ in 0..600 {
            sim.step(f);
        }
        sim.check();
    }
}
