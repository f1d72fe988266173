//! 200 concurrent creates against the real agent on the factory site's four
//! compute hosts: no host is ever oversubscribed, exactly the capacity is
//! filled, and every other request gets "No valid host".

use std::collections::BTreeMap;

use roost_common::config::{self, SiteConfig};
use roost_tests::{site_config, AgentProcess, Api};
use serde_json::json;

const IMAGE: &str = "6f0c3b4e-2c4d-4f59-9a7e-3f1e8b2d7c10";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_creates_never_oversubscribe() {
    let cfg_path = site_config("edge-factory-01.yaml");
    let cfg: SiteConfig = config::load(&cfg_path).expect("example config is valid");
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(&cfg_path, dir.path());
    let api = Api::login(&agent.url).await;

    // A flavor whose RAM binds before CPU on these hosts: 16 vCPU, 16 GiB.
    let (code, body) = api
        .post("/compute/v2.1/flavors", json!({"flavor": {"name": "load.test", "id": "load", "vcpus": 16, "ram": 16384, "disk": 40}}))
        .await;
    assert_eq!(code, 200, "{body}");

    // What should fit, computed from the config, not from the agent.
    let expected: BTreeMap<String, u64> = cfg
        .hosts
        .iter()
        .filter(|h| h.is_compute() && h.enabled)
        .map(|h| {
            let cap = h.capacity();
            let fit = (cap.vcpus / 16)
                .min(cap.ram_mb / 16384)
                .min(cap.disk_gb / 40);
            (h.name.clone(), fit)
        })
        .collect();
    let capacity: u64 = expected.values().sum();
    assert_eq!(expected.len(), 4, "the factory site has four compute hosts");
    assert!(
        capacity > 0 && capacity < 200,
        "the test needs more requests than room: {capacity}"
    );

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let api = api.clone();
        tasks.spawn(async move { api.create_server(&format!("load-{i}"), "load", IMAGE).await });
    }
    let (mut accepted, mut no_host) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let (code, body) = r.unwrap();
        match code {
            202 => accepted += 1,
            409 => {
                let msg = body["conflictingRequest"]["message"].as_str().unwrap_or("");
                assert!(
                    msg.starts_with("No valid host was found among 6 hosts"),
                    "{msg}"
                );
                assert!(
                    msg.contains("ComputeFilter removed 2"),
                    "controllers are filtered out: {msg}"
                );
                assert!(
                    msg.contains("RamFilter removed 4"),
                    "RAM is what ran out: {msg}"
                );
                no_host += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(accepted, capacity, "every slot filled, none twice");
    assert_eq!(no_host, 200 - capacity);

    // The agent's own accounting agrees, host by host, with the servers it
    // lists and with the config's capacity.
    let servers = api.servers().await;
    assert_eq!(servers.len() as u64, capacity);
    let mut per_host: BTreeMap<String, u64> = BTreeMap::new();
    for s in &servers {
        *per_host
            .entry(s["OS-EXT-SRV-ATTR:host"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        per_host, expected,
        "each host filled exactly to its capacity"
    );
    for h in api.hypervisors().await {
        let name = h["hypervisor_hostname"].as_str().unwrap();
        let cap = &h["roost:capacity"];
        let used = &h["roost:used"];
        for k in ["vcpus", "memory_mb", "local_gb"] {
            assert!(
                used[k].as_u64().unwrap() <= cap[k].as_u64().unwrap(),
                "{name} oversubscribed on {k}: {h}"
            );
        }
        let n = per_host.get(name).copied().unwrap_or(0);
        assert_eq!(h["running_vms"].as_u64(), Some(n), "{name}");
        assert_eq!(used["memory_mb"].as_u64(), Some(n * 16384), "{name}");
    }
    let db_servers = roost_tests::check_store(&agent.db_path());
    assert_eq!(db_servers as u64, capacity);
}
