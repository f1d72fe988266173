//! One controller under a fleet: N simulated sites against the real
//! `roost-controller` process on this machine.
//! Run: `cargo bench -p roost-tests --bench fleet [-- N ...]` (default 1000
//! 10000).
//!
//! Each simulated site is light but real: its own certificate from the
//! region's CA (issued and enrolled through the fleet store, as a join
//! token would), a real QUIC connection with mutual TLS, the control-stream
//! hello, and a real sync session over real site documents (3 servers with
//! spec and status, and the site's capacity, as the agent records them).
//! All sites live in this one process on a few UDP sockets, sharing the
//! machine's 2 cores with the controller.
//!
//! Figures, per N:
//! - connect: from the first connection attempt until the controller counts
//!   every site online and in sync (sites start 200 at a time);
//! - idle: 30 s with every site connected and nothing to say: the
//!   controller's CPU (% of one core) and RSS, and wire bytes per site per
//!   second (UDP payload + 28 bytes IPv4/UDP header per datagram, both
//!   directions, from quinn's counters at the sites);
//! - storm: every connection closed at once, each site records one more
//!   server while apart, then all return together (each after a random
//!   0-500 ms, the agent's first backoff step with full jitter): time until
//!   the controller counts every site in sync again.
//!
//! The controller's counts come from its `/metrics` (polled once a second
//! outside the idle window, so scraping costs nothing there).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use roost_controller::fleet::{FleetStore, SqliteFleet};
use roost_sync::pki::region_server_name;
use roost_sync::transport::{client_config, drive, site_open, Hello};
use roost_sync::{
    site_author, site_status_actor, Docs, IntentDoc, Persisted, Role, Session, SessionConfig,
    StatusDoc,
};
use roost_tests::{cpu_ticks, rss_kib, ControllerProcess};
use serde_json::json;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

const REGION: &str = "eu-bench";
const ENDPOINTS: usize = 4;
const IDLE: Duration = Duration::from_secs(30);

struct SimSite {
    id: String,
    config: quinn::ClientConfig,
    docs: Arc<Mutex<Docs>>,
    local: Arc<Notify>,
    persisted: Mutex<Option<Persisted>>,
    conn: Mutex<Option<quinn::Connection>>,
    /// Wire bytes of connections already closed.
    closed_bytes: Mutex<u64>,
}

fn record_server(docs: &mut Docs, n: usize, now_ms: i64) {
    let id = format!("srv-{n:04}");
    let spec = json!({"name": format!("cam-{n}"), "project_id": "p", "user_id": "u",
        "flavor_id": "2", "image_id": "img", "availability_zone": null, "server_group": null,
        "power": "running", "reboot_generation": 0, "reboot_hard": false, "deleted": false,
        "metadata": {}});
    let status = json!({"host": "node-0", "availability_zone": "nova", "vm_state": "active",
        "task_state": null, "power_state": "running", "reboot_generation": 0, "fault": null});
    docs.intent
        .create(
            "servers",
            &id,
            spec.as_object().expect("object").clone(),
            now_ms,
        )
        .expect("record spec");
    docs.status
        .set("servers", &id, &status)
        .expect("record status");
}

fn sim_docs(site: &str) -> Docs {
    let mut docs = Docs {
        intent: IntentDoc::new(format!("sim:{site}").as_bytes(), &site_author(site)),
        status: StatusDoc::new(&site_status_actor(site)),
        site_status_actor: site_status_actor(site),
    };
    let now = 1_700_000_000_000;
    for n in 0..3 {
        record_server(&mut docs, n, now);
    }
    let capacity = json!({"total": {"vcpus": 16, "ram_mb": 14336, "disk_gb": 256},
        "used": {"vcpus": 3, "ram_mb": 1536, "disk_gb": 3},
        "host_free": [{"vcpus": 13, "ram_mb": 12800, "disk_gb": 253}], "instances": 3});
    docs.status
        .set("site", "capacity", &capacity)
        .expect("record capacity");
    docs
}

/// Connects one site and runs its session, reconnecting as the agent does
/// (0.5 s doubling to 60 s, full jitter) whenever a connection fails or
/// ends, until the bench lets go of the fleet ([`HOLD`] false); `permit` is
/// let go once the first hellos are exchanged.
async fn run_site(
    site: Arc<SimSite>,
    endpoint: quinn::Endpoint,
    addr: std::net::SocketAddr,
    mut permit: Option<OwnedSemaphorePermit>,
) {
    let mut cap = Duration::from_millis(500);
    while HOLD.load(Ordering::SeqCst) {
        let (conn, send, recv) = match open(&site, &endpoint, addr).await {
            Ok(open) => open,
            Err(_) => {
                RETRIES.fetch_add(1, Ordering::Relaxed);
                let wait = rand::rng().random_range(Duration::ZERO..=cap);
                tokio::time::sleep(wait).await;
                cap = (cap * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        cap = Duration::from_millis(500);
        permit.take();
        *site.conn.lock().expect("lock") = Some(conn);
        let cfg = SessionConfig::default();
        let persisted = site.persisted.lock().expect("lock").clone();
        let mut session = Session::new(Role::Site, cfg.clone(), persisted.as_ref(), Instant::now())
            .expect("session");
        let ended = drive(
            &mut session,
            &site.docs,
            &site.local,
            &|_, _| {},
            send,
            recv,
            cfg.max_frame,
        )
        .await;
        *site.persisted.lock().expect("lock") = Some(session.persist());
        if HOLD.load(Ordering::SeqCst) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            eprintln!("  {}: session ended ({ended:?}); reconnecting", site.id);
            if let Some(c) = site.conn.lock().expect("lock").take() {
                let st = c.stats();
                *site.closed_bytes.lock().expect("lock") += st.udp_tx.bytes
                    + st.udp_rx.bytes
                    + 28 * (st.udp_tx.datagrams + st.udp_rx.datagrams);
            }
        }
    }
}

/// While true, sites whose connection ends reconnect.
static HOLD: AtomicBool = AtomicBool::new(true);
/// Sessions that ended while the bench held the fleet.
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Connection attempts that failed (and were retried), across all sites.
static RETRIES: AtomicU64 = AtomicU64::new(0);

async fn open(
    site: &SimSite,
    endpoint: &quinn::Endpoint,
    addr: std::net::SocketAddr,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), String> {
    let conn = endpoint
        .connect_with(site.config.clone(), addr, &region_server_name(REGION))
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let hello = Hello {
        name: site.id.clone(),
        version: "fleet-bench".into(),
        protocol: roost_sync::frame::VERSION,
    };
    let (_, send, recv) = site_open(&conn, &hello).await.map_err(|e| e.to_string())?;
    Ok((conn, send, recv))
}

fn wire_bytes(sites: &[Arc<SimSite>]) -> u64 {
    sites
        .iter()
        .map(|s| {
            let closed = *s.closed_bytes.lock().expect("lock");
            let open = s.conn.lock().expect("lock").as_ref().map_or(0, |c| {
                let st = c.stats();
                st.udp_tx.bytes + st.udp_rx.bytes + 28 * (st.udp_tx.datagrams + st.udp_rx.datagrams)
            });
            closed + open
        })
        .sum()
}

/// A gauge's value from the controller's `/metrics`.
async fn gauge(http: &reqwest::Client, api: &str, series: &str) -> u64 {
    let Ok(resp) = http.get(format!("{api}/metrics")).send().await else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

async fn wait_in_sync(
    http: &reqwest::Client,
    api: &str,
    n: usize,
    what: &str,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let in_sync = gauge(http, api, "roost_region_sites_sync{sync=\"in-sync\"}").await as usize;
        if in_sync >= n {
            return started.elapsed();
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "  {what}: {in_sync} of {n} in sync after {:.0?}",
                started.elapsed()
            );
            last_print = Instant::now();
        }
        assert!(
            started.elapsed() < limit,
            "{what}: only {in_sync} of {n} sites in sync after {limit:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

struct Figures {
    n: usize,
    connect: Duration,
    cpu_pct: f64,
    rss_mb: f64,
    idle_bytes_per_site_s: f64,
    storm: Duration,
}

async fn run(n: usize) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("controller");
    std::fs::create_dir_all(&data).expect("data dir");
    let ids: Vec<String> = (0..n).map(|i| format!("sim-{i:05}")).collect();
    let mut config = format!(
        "region: {{name: {REGION}}}\napi: {{listen: 127.0.0.1:0}}\nquic: {{listen: 127.0.0.1:1}}\noffline_after_secs: 10\nsites:\n"
    );
    for id in &ids {
        config.push_str(&format!("  - {{id: {id}, labels: {{kind: sim}}}}\n"));
    }
    let config_path = dir.path().join("region.yaml");
    std::fs::write(&config_path, config).expect("write config");

    // Enrollment as a join token does it, straight through the fleet store.
    let t = Instant::now();
    let sites: Vec<Arc<SimSite>> = {
        let parsed: roost_common::config::RegionConfig =
            roost_common::config::load(&config_path).expect("config");
        let (store, ca) = SqliteFleet::open(&data, REGION).expect("fleet store");
        store.sync_sites(&parsed.sites).expect("sites");
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                let token = store
                    .create_token(id, chrono::Duration::hours(1))
                    .expect("token");
                store.redeem(&token).expect("redeem");
                let cred = ca.issue_site(id).expect("site certificate");
                if (i + 1) % 1000 == 0 {
                    eprintln!("  enrolled {} of {n} sites ({:.0?})", i + 1, t.elapsed());
                }
                Arc::new(SimSite {
                    id: id.clone(),
                    config: client_config(&cred).expect("client config"),
                    docs: Arc::new(Mutex::new(sim_docs(id))),
                    local: Arc::new(Notify::new()),
                    persisted: Mutex::new(None),
                    conn: Mutex::new(None),
                    closed_bytes: Mutex::new(0),
                })
            })
            .collect()
    };
    eprintln!("  {n} sites enrolled in {:.1?}", t.elapsed());

    let controller = ControllerProcess::start_logging(&config_path, &data, "error");
    let quic: std::net::SocketAddr = controller.quic.parse().expect("quic addr");
    let http = reqwest::Client::new();
    let endpoints: Vec<quinn::Endpoint> = (0..ENDPOINTS)
        .map(|_| quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint"))
        .collect();

    // 1. Everyone connects (200 handshakes at a time).
    let gate = Arc::new(Semaphore::new(200));
    let mut tasks = Vec::with_capacity(n);
    for (i, s) in sites.iter().enumerate() {
        let (s, ep, gate) = (s.clone(), endpoints[i % ENDPOINTS].clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore");
            run_site(s, ep, quic, Some(permit)).await
        }));
    }
    let connect = wait_in_sync(
        &http,
        &controller.api,
        n,
        "connect",
        Duration::from_secs(600),
    )
    .await;
    eprintln!(
        "  all {n} sites online and in sync after {connect:.1?} ({} attempts retried)",
        RETRIES.swap(0, Ordering::Relaxed)
    );

    // 2. Idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ticks0, bytes0, t0) = (
        cpu_ticks(controller.pid()),
        wire_bytes(&sites),
        Instant::now(),
    );
    tokio::time::sleep(IDLE).await;
    let (ticks1, bytes1, elapsed) = (
        cpu_ticks(controller.pid()),
        wire_bytes(&sites),
        t0.elapsed(),
    );
    let secs = elapsed.as_secs_f64();
    let cpu_pct = (ticks1 - ticks0) as f64 / 100.0 / secs * 100.0;
    let rss_mb = rss_kib(controller.pid()) as f64 / 1024.0;
    let idle_bytes_per_site_s = (bytes1 - bytes0) as f64 / secs / n as f64;
    eprintln!(
        "  idle: controller {cpu_pct:.1}% of a core, RSS {rss_mb:.0} MB; {idle_bytes_per_site_s:.1} bytes/s per site"
    );

    // 3. The storm: all drop, each writes while apart, all return at once.
    HOLD.store(false, Ordering::SeqCst);
    for s in &sites {
        if let Some(c) = s.conn.lock().expect("lock").take() {
            let st = c.stats();
            *s.closed_bytes.lock().expect("lock") += st.udp_tx.bytes
                + st.udp_rx.bytes
                + 28 * (st.udp_tx.datagrams + st.udp_rx.datagrams);
            c.close(0u32.into(), b"storm");
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let apart = Instant::now();
    while gauge(
        &http,
        &controller.api,
        "roost_region_sites{availability=\"online\"}",
    )
    .await
        > 0
    {
        assert!(
            apart.elapsed() < Duration::from_secs(60),
            "sites still online 60 s after closing"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for s in &sites {
        record_server(&mut s.docs.lock().expect("lock"), 100, 1_700_000_100_000);
    }
    eprintln!("  all {n} sites offline; each recorded a server; returning at once");
    HOLD.store(true, Ordering::SeqCst);
    let mut tasks = Vec::with_capacity(n);
    for (i, s) in sites.iter().enumerate() {
        let (s, ep) = (s.clone(), endpoints[i % ENDPOINTS].clone());
        let jitter = Duration::from_millis(rand::rng().random_range(0..500));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(jitter).await;
            run_site(s, ep, quic, None).await
        }));
    }
    let storm = wait_in_sync(&http, &controller.api, n, "storm", Duration::from_secs(600)).await;
    HOLD.store(false, Ordering::SeqCst);
    eprintln!(
        "  storm: all {n} sites back in sync after {storm:.1?} ({} attempts retried)",
        RETRIES.swap(0, Ordering::Relaxed)
    );
    for s in &sites {
        if let Some(c) = s.conn.lock().expect("lock").take() {
            c.close(0u32.into(), b"done");
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    drop(controller);
    HOLD.store(true, Ordering::SeqCst);
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        eprintln!("  {dropped} sessions ended by themselves and were reopened");
    }
    Figures {
        n,
        connect,
        cpu_pct,
        rss_mb,
        idle_bytes_per_site_s,
        storm,
    }
}

fn main() {
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ns = if ns.is_empty() {
        vec![1000, 10_000]
    } else {
        ns
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut rows = Vec::new();
    for n in ns {
        eprintln!("fleet of {n} simulated sites:");
        rows.push(runtime.block_on(run(n)));
    }
    println!();
    println!("| sites | all online and in sync | controller CPU idle | controller RSS | idle wire bytes/s per site (goal <= 60) | reconnect storm, all in sync (goal <= 60 s at 10,000) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for f in rows {
        println!(
            "| {} | {:.1} s | {:.1}% of a core | {:.0} MB | {:.1} | {:.1} s |",
            f.n,
            f.connect.as_secs_f64(),
            f.cpu_pct,
            f.rss_mb,
            f.idle_bytes_per_site_s,
            f.storm.as_secs_f64()
        );
    }
}
