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
//! - dashboard first load: the page, `/whoami`, `/overview` and the first
//!   page of the site table in a row, as the page asks for them, each time
//!   past the controller's 1 s view cache (median of 5, with every site
//!   connected and nothing else asking).
//!
//! The controller's counts come from its `/metrics` (polled once a second
//! outside the idle window, so scraping costs nothing there).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use roost_tests::sim::{self, SimSite};
use roost_tests::{cpu_ticks, rss_kib, ControllerProcess};
use tokio::sync::Semaphore;

const REGION: &str = "eu-bench";
const ENDPOINTS: usize = 4;
const IDLE: Duration = Duration::from_secs(30);

fn wire_bytes(sites: &[Arc<SimSite>]) -> u64 {
    sites.iter().map(|s| s.wire_bytes()).sum()
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
    first_load: Duration,
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
    let sites = sim::enroll(&data, &config_path, |i| {
        eprintln!("  enrolled {i} of {n} sites ({:.0?})", t.elapsed())
    });
    eprintln!("  {n} sites enrolled in {:.1?}", t.elapsed());

    let controller = ControllerProcess::start_logging(&config_path, &data, "error");
    let quic: std::net::SocketAddr = controller.quic.parse().expect("quic addr");
    let http = reqwest::Client::new();
    let endpoints: Vec<quinn::Endpoint> = (0..ENDPOINTS).map(|_| sim::client_endpoint()).collect();

    // 1. Everyone connects (200 handshakes at a time).
    let gate = Arc::new(Semaphore::new(200));
    let mut tasks = Vec::with_capacity(n);
    for (i, s) in sites.iter().enumerate() {
        let (s, ep, gate) = (s.clone(), endpoints[i % ENDPOINTS].clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("semaphore");
            s.run(ep, quic, Some(permit)).await
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
        sim::RETRIES.swap(0, Ordering::Relaxed)
    );

    // The dashboard's first load: the page, who am I, the overview and the
    // first page of the site table, one after the other as the page does.
    let token = controller.admin_token();
    let mut loads = Vec::new();
    for _ in 0..5 {
        // Past the controller's view cache (1 s), so each load computes
        // every site's view as a first visitor's would.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let t = Instant::now();
        let page = http
            .get(format!("{}/", controller.api))
            .send()
            .await
            .expect("page");
        assert!(page.status().is_success());
        let _ = page.bytes().await;
        for path in [
            "/whoami",
            "/overview",
            "/sites?page=1&per_page=50&sort=id&order=asc",
        ] {
            let r = http
                .get(format!("{}/roost/v1{path}", controller.api))
                .bearer_auth(&token)
                .send()
                .await
                .expect("dashboard call");
            assert!(r.status().is_success(), "{path}: {}", r.status());
            let _ = r.bytes().await;
        }
        loads.push(t.elapsed());
    }
    loads.sort();
    let first_load = loads[loads.len() / 2];
    eprintln!("  dashboard first load (median of 5): {first_load:.1?}");

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
    for s in &sites {
        s.let_go();
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
        sim::record_server(&mut s.docs.lock().expect("lock"), 100, 1_700_000_100_000);
    }
    eprintln!("  all {n} sites offline; each recorded a server; returning at once");
    let mut tasks = Vec::with_capacity(n);
    for (i, s) in sites.iter().enumerate() {
        let (s, ep) = (s.clone(), endpoints[i % ENDPOINTS].clone());
        let jitter = Duration::from_millis(rand::rng().random_range(0..500));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(jitter).await;
            s.run(ep, quic, None).await
        }));
    }
    let storm = wait_in_sync(&http, &controller.api, n, "storm", Duration::from_secs(600)).await;
    eprintln!(
        "  storm: all {n} sites back in sync after {storm:.1?} ({} attempts retried)",
        sim::RETRIES.swap(0, Ordering::Relaxed)
    );
    for s in &sites {
        s.let_go();
    }
    for t in tasks {
        let _ = t.await;
    }
    drop(controller);
    let dropped = sim::DROPPED.swap(0, Ordering::Relaxed);
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
        first_load,
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
    println!("| sites | all online and in sync | controller CPU idle | controller RSS | idle wire bytes/s per site (goal <= 60) | reconnect storm, all in sync (goal <= 60 s at 10,000) | dashboard first load (goal < 1 s) |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for f in rows {
        println!(
            "| {} | {:.1} s | {:.1}% of a core | {:.0} MB | {:.1} | {:.1} s | {:.0} ms |",
            f.n,
            f.connect.as_secs_f64(),
            f.cpu_pct,
            f.rss_mb,
            f.idle_bytes_per_site_s,
            f.storm.as_secs_f64(),
            f.first_load.as_secs_f64() * 1000.0
        );
    }
}
