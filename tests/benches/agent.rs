//! Agent benchmarks, printed side by side with the goals in
//! shared/design.md. Run: `cargo bench -p roost-tests --bench agent`.
//!
//! - host choice among 1,000 hosts (the scheduler alone, in process), and
//!   OpenStack Nova's filter scheduler on the same hosts when Nova is
//!   installed (`scripts/bench-nova.sh`; see `nova_scheduler.py`);
//! - agent start to serving its API (a real process, polled on /healthz),
//!   on a new store and on a store holding 2,000 servers;
//! - create-server over HTTP, API call to scheduled and committed, with one
//!   client and with 16 concurrent clients;
//! - the agent's resident memory, idle.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use roost_common::config::SchedulerSection;
use roost_common::model::{HostRole, HostSpec, Usage};
use roost_edge_agent::scheduler::{schedule, HostView, Request};
use roost_tests::{percentile, AgentProcess, Api};

const BENCH_SITE: &str = "
site: {id: bench-site, name: Benchmark site}
hosts:
  - {name: ctl-0, roles: [controller], vcpus: 16, ram_mb: 65536, disk_gb: 500}
  - {name: cmp-0, roles: [compute], vcpus: 4096, ram_mb: 67108864, disk_gb: 1048576, cpu_allocation_ratio: 16}
  - {name: cmp-1, roles: [compute], vcpus: 4096, ram_mb: 67108864, disk_gb: 1048576, cpu_allocation_ratio: 16}
  - {name: cmp-2, roles: [compute], vcpus: 4096, ram_mb: 67108864, disk_gb: 1048576, cpu_allocation_ratio: 16}
  - {name: cmp-3, roles: [compute], vcpus: 4096, ram_mb: 67108864, disk_gb: 1048576, cpu_allocation_ratio: 16}
flavors:
  - {name: m1.tiny, id: '1', vcpus: 1, ram_mb: 512, disk_gb: 1}
images:
  - {name: tiny, id: 7d8e9f00-1a2b-4c3d-8e4f-5a6b7c8d9e0f, disk_format: qcow2}
";
const IMAGE: &str = "7d8e9f00-1a2b-4c3d-8e4f-5a6b7c8d9e0f";

struct Row {
    what: String,
    measured: String,
    goal: &'static str,
}

fn us(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    }
}

fn main() {
    // Build the release binary before anything is timed.
    roost_tests::binary("roost-agent");
    let mut rows = Vec::new();
    eprintln!("[bench] host choice among 1,000 hosts");
    let (row, roost_p50) = host_choice();
    rows.push(row);
    rows.push(nova_host_choice(roost_p50));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bench-site.yaml");
    std::fs::write(&cfg, BENCH_SITE).unwrap();

    eprintln!("[bench] start to serving, new store (10 runs)");
    rows.push(start_to_serving(
        &runtime,
        &cfg,
        None,
        "start to serving, new store: median / max",
    ));

    let data = dir.path().join("data");
    let agent = AgentProcess::start(&cfg, &data);
    std::thread::sleep(Duration::from_secs(2));
    rows.push(Row {
        what: "agent idle RSS, new store".into(),
        measured: format!("{:.1} MB", agent.rss_kib() as f64 / 1024.0),
        goal: "<= 16 MB",
    });

    eprintln!("[bench] create-server over HTTP: 1,000 from one client, then 1,000 from 16 clients");
    let (seq, conc, rate) = runtime.block_on(create_servers(&agent.url));
    rows.push(Row {
        what: "create-server over HTTP, 1 client: p50 / p99".into(),
        measured: format!(
            "{} / {}",
            us(percentile(&seq, 50.0)),
            us(percentile(&seq, 99.0))
        ),
        goal: "p99 <= 10 ms",
    });
    rows.push(Row {
        what: "create-server over HTTP, 16 clients: p50 / p99".into(),
        measured: format!(
            "{} / {}  ({rate:.0} creates/s)",
            us(percentile(&conc, 50.0)),
            us(percentile(&conc, 99.0))
        ),
        goal: "p99 <= 10 ms",
    });
    eprintln!("[bench] idle for 12 s (one reconcile resync) before reading RSS");
    std::thread::sleep(Duration::from_secs(12));
    rows.push(Row {
        what: "agent idle RSS, 2,000 servers".into(),
        measured: format!("{:.1} MB", agent.rss_kib() as f64 / 1024.0),
        goal: "<= 16 MB",
    });
    drop(agent);

    eprintln!("[bench] start to serving, store with 2,000 servers (10 runs)");
    rows.push(start_to_serving(
        &runtime,
        &cfg,
        Some(&data),
        "start to serving, 2,000 servers: median / max",
    ));

    println!();
    println!(
        "{:<52} {:<34} goal (shared/design.md)",
        "roost-agent benchmark", "measured"
    );
    println!("{}", "-".repeat(110));
    for r in rows {
        println!("{:<52} {:<34} {}", r.what, r.measured, r.goal);
    }
}

/// Nova's filter scheduler on the same hosts, through
/// `tests/benches/nova_scheduler.py`, when Nova is installed
/// (`scripts/bench-nova.sh`).
fn nova_host_choice(roost_p50: Duration) -> Row {
    let what = "Nova filter scheduler, same 1,000 hosts: p50 / p99".to_string();
    let goal = "Roost >= 10x faster";
    let root = roost_tests::repo_root();
    let python = std::env::var("ROOST_NOVA_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join(".roost/novaenv/bin/python"));
    if !python.exists() {
        return Row {
            what,
            measured: "not run: scripts/bench-nova.sh installs Nova".into(),
            goal,
        };
    }
    eprintln!("[bench] Nova's filter scheduler on the same hosts (100 decisions)");
    let out = std::process::Command::new(&python)
        .args(["-W", "ignore"])
        .arg(root.join("tests/benches/nova_scheduler.py"))
        .arg("100")
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let field = |k: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (field("p50_us="), field("p99_us=")) {
        (Some(p50), Some(p99)) => {
            let nova = Duration::from_micros(p50);
            let ratio = nova.as_secs_f64() / roost_p50.as_secs_f64().max(1e-9);
            Row {
                what,
                measured: format!(
                    "{} / {}  (Roost {ratio:.0}x faster)",
                    us(nova),
                    us(Duration::from_micros(p99))
                ),
                goal,
            }
        }
        _ => Row {
            what,
            measured: format!("failed: {}", text.trim()),
            goal,
        },
    }
}

fn host_choice() -> (Row, Duration) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let hosts: Vec<HostView> = (0..1000)
        .map(|i| {
            let spec = HostSpec {
                name: format!("compute-{i:04}"),
                roles: [HostRole::Compute].into(),
                vcpus: 64,
                ram_mb: 262_144,
                disk_gb: 4000,
                cpu_allocation_ratio: 4.0,
                ram_allocation_ratio: 1.0,
                disk_allocation_ratio: 1.0,
                reserved_ram_mb: 4096,
                traits: if i % 10 == 0 {
                    ["CUSTOM_GPU".to_string()].into()
                } else {
                    Default::default()
                },
                availability_zone: format!("zone-{}", i % 4),
                enabled: i % 50 != 0,
                address: None,
            };
            let used = Usage {
                vcpus: rng.random_range(0..256),
                ram_mb: rng.random_range(0..258_048),
                disk_gb: rng.random_range(0..4000),
            };
            HostView::new(spec, used)
        })
        .collect();
    let req = Request {
        usage: Usage {
            vcpus: 4,
            ram_mb: 8192,
            disk_gb: 80,
        },
        ..Default::default()
    };
    let weights = SchedulerSection {
        cpu_weight_multiplier: 1.0,
        ..Default::default()
    };
    let mut samples = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        black_box(schedule(black_box(&hosts), black_box(&req), &weights)).ok();
        samples.push(t.elapsed());
    }
    samples.sort();
    let p50 = percentile(&samples, 50.0);
    let row = Row {
        what: "host choice among 1,000 hosts: p50 / p99".into(),
        measured: format!("{} / {}", us(p50), us(percentile(&samples, 99.0))),
        goal: "<= 1 ms",
    };
    (row, p50)
}

fn start_to_serving(
    rt: &tokio::runtime::Runtime,
    cfg: &Path,
    data: Option<&Path>,
    what: &str,
) -> Row {
    let client = reqwest::Client::new();
    let mut samples = Vec::new();
    for _ in 0..10 {
        let fresh = tempfile::tempdir().unwrap();
        let dir = data.unwrap_or(fresh.path());
        let t = Instant::now();
        let agent = AgentProcess::start(cfg, dir);
        rt.block_on(async {
            loop {
                if let Ok(r) = client.get(format!("{}/healthz", agent.url)).send().await {
                    if r.status().is_success() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        });
        samples.push(t.elapsed());
        drop(agent);
    }
    samples.sort();
    Row {
        what: what.into(),
        measured: format!(
            "{} / {}",
            us(percentile(&samples, 50.0)),
            us(samples[samples.len() - 1])
        ),
        goal: "<= 200 ms",
    }
}

async fn create_servers(url: &str) -> (Vec<Duration>, Vec<Duration>, f64) {
    let api = Api::login(url).await;
    let mut seq = Vec::new();
    for i in 0..1000 {
        let t = Instant::now();
        let (code, body) = api.create_server(&format!("seq-{i}"), "1", IMAGE).await;
        seq.push(t.elapsed());
        assert_eq!(code, 202, "{body}");
    }
    seq.sort();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..16 {
        let api = api.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            for i in 0..1000 / 16 + 1 {
                let t = Instant::now();
                let (code, body) = api
                    .create_server(&format!("conc-{c}-{i}"), "1", IMAGE)
                    .await;
                out.push(t.elapsed());
                assert_eq!(code, 202, "{body}");
            }
            out
        });
    }
    let mut conc = Vec::new();
    while let Some(r) = tasks.join_next().await {
        conc.extend(r.unwrap());
    }
    let rate = conc.len() as f64 / started.elapsed().as_secs_f64();
    conc.sort();
    (seq, conc, rate)
}
