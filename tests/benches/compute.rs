//! Compute benchmarks with real guests, printed next to the goals in
//! shared/design.md. Run: `scripts/guest-image.sh` once, then
//! `cargo bench -p roost-tests --bench compute`.
//!
//! - create to running for 1, 10 and 50 concurrent servers: from the API
//!   calls to the server showing ACTIVE with power state running, and to
//!   the guest's init printing on its serial console (both polled every
//!   50 ms);
//! - a site reboot with 100 servers: the agent and every QEMU process are
//!   killed with SIGKILL, the agent is started again, and the clock runs
//!   until every domain runs again and every guest has reached its init.
//!
//! Guests run under KVM where this host's KVM boots them, TCG otherwise
//! (scripts/guest-image.sh's probe); the table says which.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use roost_tests::guest::{self, GuestImage, IMAGE_ID, INIT_LINE};
use roost_tests::{percentile, AgentProcess, Api};

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Creates `n` servers at once; per server: (create -> domain running,
/// create -> guest init).
async fn batch(api: &Api, data: &Path, image: &GuestImage, n: usize) -> Vec<(Duration, Duration)> {
    let t0 = Instant::now();
    let ids: Vec<String> = join_all((0..n).map(|i| async move {
        let (code, body) = api.create_server(&format!("b{n}-{i}"), "1", IMAGE_ID).await;
        assert_eq!(code, 202, "{body}");
        body["server"]["id"].as_str().unwrap().to_string()
    }))
    .await;
    let mut booted = vec![None; n];
    let mut running = vec![None; n];
    let deadline = t0 + image.boot_limit() * 4;
    while booted.iter().chain(&running).any(Option::is_none) {
        // One list call per poll: ACTIVE with power_state 1 is "running".
        let active: std::collections::HashSet<String> = api
            .servers()
            .await
            .into_iter()
            .filter(|s| s["status"] == "ACTIVE" && s["OS-EXT-STS:power_state"] == 1)
            .filter_map(|s| s["id"].as_str().map(String::from))
            .collect();
        for (i, id) in ids.iter().enumerate() {
            if running[i].is_none() && active.contains(id) {
                running[i] = Some(t0.elapsed());
            }
            if booted[i].is_none() && guest::console(data, id).contains(INIT_LINE) {
                booted[i] = Some(t0.elapsed());
            }
        }
        assert!(Instant::now() < deadline, "guests did not all boot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = running
        .into_iter()
        .zip(booted)
        .map(|(r, b)| (r.unwrap(), b.unwrap()))
        .collect();
    for id in &ids {
        api.delete(&format!("/compute/v2.1/servers/{id}")).await;
    }
    for id in &ids {
        api.wait_status(id, "GONE", Duration::from_secs(120)).await;
    }
    out
}

fn med_max(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (percentile(&v, 50.0), *v.last().unwrap())
}

#[tokio::main]
async fn main() {
    roost_tests::binary("roost-agent");
    let image = GuestImage::find();
    eprintln!("[bench] accelerator: {}", image.verdict);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("lv");
    let _guests = guest::QemuGuard(root.clone());
    let data = tmp.path().join("data");
    let config = tmp.path().join("site.yaml");
    std::fs::write(&config, image.site_yaml("bench-compute", &root, 65536)).unwrap();
    let mut agent = AgentProcess::start(&config, &data);
    let api = Api::login(&agent.url).await;

    // Warm-up: libvirt probes QEMU's capabilities once per embedded root.
    batch(&api, &data, &image, 1).await;
    let mut rows = Vec::new();
    for n in [1, 10, 50] {
        eprintln!("[bench] {n} concurrent creates");
        let r = batch(&api, &data, &image, n).await;
        let (run_med, run_max) = med_max(r.iter().map(|x| x.0).collect());
        let (boot_med, boot_max) = med_max(r.iter().map(|x| x.1).collect());
        rows.push((
            format!("{n} concurrent: create to domain running, median / max"),
            format!("{} / {}", secs(run_med), secs(run_max)),
            "<= 2 s (KVM)",
        ));
        rows.push((
            format!("{n} concurrent: create to guest init, median / max"),
            format!("{} / {}", secs(boot_med), secs(boot_max)),
            "<= 2 s (KVM)",
        ));
    }

    eprintln!("[bench] site reboot with 100 servers: creating them");
    let ids: Vec<String> = join_all((0..100).map(|i| {
        let api = &api;
        async move {
            let (code, body) = api.create_server(&format!("r-{i}"), "1", IMAGE_ID).await;
            assert_eq!(code, 202, "{body}");
            body["server"]["id"].as_str().unwrap().to_string()
        }
    }))
    .await;
    for id in &ids {
        api.wait_status(id, "ACTIVE", Duration::from_secs(600))
            .await;
    }
    eprintln!("[bench] 100 running; killing the agent and every QEMU process");
    agent.kill9();
    let killed = guest::kill_all_qemu(&root);
    assert_eq!(killed, 100);
    while ids.iter().any(|id| guest::qemu_pid(&root, id).is_some()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in &ids {
        let _ = std::fs::remove_file(data.join("instances").join(id).join("console.log"));
    }
    let t0 = Instant::now();
    let agent = AgentProcess::start(&config, &data);
    let mut all_running = None;
    let mut all_booted = None;
    let deadline = t0 + Duration::from_secs(1200);
    while all_booted.is_none() {
        if all_running.is_none() && ids.iter().all(|id| guest::qemu_pid(&root, id).is_some()) {
            all_running = Some(t0.elapsed());
            eprintln!("[bench] every domain running after {:?}", t0.elapsed());
        }
        if ids
            .iter()
            .all(|id| guest::console(&data, id).contains(INIT_LINE))
        {
            all_booted = Some(t0.elapsed());
        }
        assert!(Instant::now() < deadline, "recovery did not finish");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rows.push((
        "site reboot, 100 servers: agent start to every domain running".into(),
        secs(all_running.unwrap()),
        "<= 10 s",
    ));
    rows.push((
        "site reboot, 100 servers: agent start to every guest at its init".into(),
        secs(all_booted.unwrap()),
        "<= 10 s",
    ));
    let api = Api::login(&agent.url).await;
    for id in &ids {
        api.delete(&format!("/compute/v2.1/servers/{id}")).await;
    }
    for id in &ids {
        api.wait_status(id, "GONE", Duration::from_secs(300)).await;
    }

    println!("\ncompute benchmark ({}; 2-core machine)\n", image.verdict);
    println!("| what | measured | goal |\n| --- | --- | --- |");
    for (what, measured, goal) in rows {
        println!("| {what} | {measured} | {goal} |");
    }
}
