//! What the wire costs: reconverging after a partition, and an idle site.
//! Run: `cargo bench -p roost-tests --bench sync`.
//!
//! A site and its region, over real QUIC with mutual TLS through the link
//! emulator at 10 Mbit/s, 100 ms RTT and 1% loss. Each partition case starts
//! from documents both sides agree on, with the sync state the last
//! connection left; while apart the site records K servers (spec + status,
//! as the agent does for each create) and the region records K servers of
//! its own; then the site reconnects and the clock runs until both sides
//! hold the same heads of both documents. Wire bytes are UDP payloads plus
//! 28 bytes of IPv4/UDP header per datagram, both directions, handshake
//! included.
//!
//! The floor beside each figure: the changed records as JSON (one line per
//! record: kind, id, spec and, for the site's, status), compressed with
//! zstd (level 3) per direction; its time is that size over the link rate
//! plus two round trips (the handshake and one sync exchange).
//!
//! The idle row: a connected site with nothing to say, its wire bytes per
//! second over 30 s, both directions.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roost_sync::pki::{region_server_name, Ca, Credential};
use roost_sync::transport::{client_config, drive, server_config};
use roost_sync::{
    site_author, site_status_actor, Docs, IntentDoc, Persisted, Role, Session, SessionConfig,
    StatusDoc,
};
use roost_tests::link::{LinkParams, Relay};
use serde_json::json;
use tokio::sync::Notify;

const SITE: &str = "edge-bench-01";
const RATE_BPS: u64 = 10_000_000;
const RTT: Duration = Duration::from_millis(100);

struct Peer {
    docs: Arc<Mutex<Docs>>,
    local: Arc<Notify>,
    persisted: Option<Persisted>,
}

fn peer(role: Role) -> Peer {
    let intent = match role {
        Role::Site => IntentDoc::new(b"bench-site-00001", &site_author(SITE)),
        Role::Region => IntentDoc::new(b"bench-region-001", "region:eu"),
    };
    Peer {
        docs: Arc::new(Mutex::new(Docs {
            intent,
            status: StatusDoc::new(&site_status_actor(SITE)),
            site_status_actor: site_status_actor(SITE),
        })),
        local: Arc::new(Notify::new()),
        persisted: None,
    }
}

/// A connected pair; [`Link::close`] ends it and keeps the sync states.
struct Link {
    relay: Relay,
    site_conn: quinn::Connection,
    site_task: tokio::task::JoinHandle<Session>,
    region_task: tokio::task::JoinHandle<Option<Session>>,
}

/// The two endpoints, long-lived as the agent's and the controller's are
/// (so TLS session resumption works across reconnects, as it does there).
struct Endpoints {
    server: quinn::Endpoint,
    client: quinn::Endpoint,
}

fn endpoints(ca: &Ca) -> Endpoints {
    let server = quinn::Endpoint::server(
        server_config(&ca.issue_region("eu").expect("cert")).expect("config"),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server");
    let cred: Credential = ca.issue_site(SITE).expect("site cert");
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client");
    client.set_default_client_config(client_config(&cred).expect("client config"));
    Endpoints { server, client }
}

async fn connect(net: &Endpoints, site: &Peer, region: &Peer, seed: u64) -> Link {
    let server = &net.server;
    let relay = Relay::start(server.local_addr().expect("addr"), field_link(), seed)
        .await
        .expect("relay");
    let cfg = SessionConfig::default();
    let (rd, rl, rp, rcfg, srv) = (
        region.docs.clone(),
        region.local.clone(),
        region.persisted.clone(),
        cfg.clone(),
        server.clone(),
    );
    let region_task = tokio::spawn(async move {
        let conn = srv.accept().await?.await.ok()?;
        let (send, recv) = conn.accept_bi().await.ok()?;
        let mut s = Session::new(Role::Region, rcfg.clone(), rp.as_ref(), Instant::now()).ok()?;
        let _ = drive(&mut s, &rd, &rl, &|_, _| {}, send, recv, rcfg.max_frame).await;
        Some(s)
    });
    let site_conn = net
        .client
        .connect(relay.addr, &region_server_name("eu"))
        .expect("connect")
        .await
        .expect("handshake");
    let (send, recv) = site_conn.open_bi().await.expect("stream");
    let (sd, sl, sp) = (
        site.docs.clone(),
        site.local.clone(),
        site.persisted.clone(),
    );
    let site_task = tokio::spawn(async move {
        let mut s =
            Session::new(Role::Site, cfg.clone(), sp.as_ref(), Instant::now()).expect("session");
        let _ = drive(&mut s, &sd, &sl, &|_, _| {}, send, recv, cfg.max_frame).await;
        s
    });
    Link {
        relay,
        site_conn,
        site_task,
        region_task,
    }
}

impl Link {
    async fn close(self, site: &mut Peer, region: &mut Peer) {
        self.site_conn.close(0u32.into(), b"bench done");
        site.persisted = Some(self.site_task.await.expect("site task").persist());
        if let Ok(Ok(Some(s))) =
            tokio::time::timeout(Duration::from_secs(15), self.region_task).await
        {
            region.persisted = Some(s.persist());
        }
    }
}

fn field_link() -> LinkParams {
    let mut p = LinkParams::field_link();
    p.latency = RTT / 2;
    p.rate_bps = Some(RATE_BPS);
    p
}

fn converged(site: &Peer, region: &Peer) -> bool {
    let (mut s, mut r) = (
        site.docs.lock().expect("lock"),
        region.docs.lock().expect("lock"),
    );
    s.intent.heads() == r.intent.heads() && s.status.heads() == r.status.heads()
}

async fn wait_converged(site: &Peer, region: &Peer) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !converged(site, region) {
        assert!(Instant::now() < deadline, "no convergence within 300 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn spec(name: &str) -> serde_json::Value {
    json!({"name": name, "project_id": "0f3c9a7e5b2d4e6f8a1b3c5d7e9f0a2b", "user_id": "8e1d4c7b0a3f6e9d2c5b8a1f4e7d0c3b",
           "flavor_id": "2", "image_id": "6f0c3b4e-2c4d-4f59-9a7e-3f1e8b2d7c10", "availability_zone": null,
           "server_group": null, "power": "running", "reboot_generation": 0, "reboot_hard": false,
           "deleted": false, "metadata": {}})
}

fn status(i: usize) -> serde_json::Value {
    json!({"host": format!("compute-{}", i % 4), "availability_zone": "hall-b", "vm_state": "active",
           "task_state": null, "power_state": "running", "reboot_generation": 0,
           "launched_at": "2026-11-22T11:00:00Z", "fault": null})
}

/// K writes on each side while apart; returns the JSON records for the
/// floor, (site's, region's).
fn write_apart(site: &Peer, region: &Peer, k: usize, round: usize) -> (Vec<u8>, Vec<u8>) {
    let up = record_servers(site, k, &format!("{round:02}-site"), true);
    let down = record_servers(region, k, &format!("{round:02}-region"), false);
    (up, down)
}

/// Records `k` servers on `peer`, one change each (and their status, on the
/// site), as the agent does; returns the records as JSON lines.
fn record_servers(peer: &Peer, k: usize, prefix: &str, with_status: bool) -> Vec<u8> {
    let mut json_lines = Vec::new();
    let now = 1_800_000_000_000;
    let mut d = peer.docs.lock().expect("lock");
    for i in 0..k {
        let id = format!("{prefix}-{i:08}");
        let spec = spec(&format!("{prefix}-{i}"));
        let fields = spec.as_object().expect("object").clone();
        d.intent
            .create("servers", &id, fields, now)
            .expect("create");
        d.intent.take_local_change();
        let mut rec = json!({"kind": "servers", "id": id, "spec": spec});
        if with_status {
            d.status.set("servers", &id, &status(i)).expect("status");
            d.status.take_local_change();
            rec["status"] = status(i);
        }
        json_lines.extend(serde_json::to_vec(&rec).expect("json"));
        json_lines.push(b'\n');
    }
    json_lines
}

fn zstd_len(b: &[u8]) -> u64 {
    if b.is_empty() {
        return 0;
    }
    zstd::encode_all(b, 3).expect("zstd").len() as u64
}

fn kib(b: u64) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let ca = Ca::new("eu").expect("ca");
    let net = endpoints(&ca);
    let (mut site, mut region) = (peer(Role::Site), peer(Role::Region));
    // The first meeting: both empty, sync state made.
    let link = connect(&net, &site, &region, 1).await;
    wait_converged(&site, &region).await;
    link.close(&mut site, &mut region).await;

    let mut rows = Vec::new();
    for (round, k) in [(1usize, 0usize), (2, 100), (3, 10_000)] {
        eprintln!("[bench] partition with {k} changes on each side, then reconnect");
        let (up, down) = write_apart(&site, &region, k, round);
        let floor = zstd_len(&up) + zstd_len(&down);
        let floor_time = Duration::from_secs_f64(floor as f64 * 8.0 / RATE_BPS as f64) + 2 * RTT;
        let t = Instant::now();
        let link = connect(&net, &site, &region, round as u64 + 10).await;
        wait_converged(&site, &region).await;
        let took = t.elapsed();
        let (w_up, w_down) = link.relay.wire_bytes();
        link.close(&mut site, &mut region).await;
        rows.push((k, w_up + w_down, took, floor, floor_time));
    }

    eprintln!("[bench] idle connected site for 30 s");
    let link = connect(&net, &site, &region, 99).await;
    wait_converged(&site, &region).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (u0, d0) = link.relay.wire_bytes();
    let window = Duration::from_secs(30);
    tokio::time::sleep(window).await;
    let (u1, d1) = link.relay.wire_bytes();
    link.close(&mut site, &mut region).await;
    let idle = (u1 - u0 + d1 - d0) as f64 / window.as_secs_f64();

    println!();
    println!(
        "roost sync over QUIC, 10 Mbit/s, 100 ms RTT, 1% loss (both directions, headers included)"
    );
    println!(
        "{:<34} {:>12} {:>10} {:>14} {:>12} {:>8}",
        "case", "wire bytes", "time", "floor (zstd)", "floor time", "x floor"
    );
    println!("{}", "-".repeat(96));
    for (k, bytes, took, floor, floor_time) in rows {
        let label = if k == 0 {
            "reconnect, nothing changed".to_string()
        } else {
            format!("partition, {k} changes each side")
        };
        let ratio = if floor == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", bytes as f64 / floor as f64)
        };
        println!(
            "{:<34} {:>12} {:>8.0}ms {:>14} {:>10.0}ms {:>8}",
            label,
            kib(bytes),
            took.as_secs_f64() * 1e3,
            kib(floor),
            floor_time.as_secs_f64() * 1e3,
            ratio
        );
    }
    println!(
        "{:<34} {:>12}   goal <= 60 bytes/s",
        "idle connected site",
        format!("{idle:.1} B/s")
    );
    println!("goal (shared/design.md): wire bytes to reconverge <= 2x the zstd floor");
}
