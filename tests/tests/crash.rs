//! `kill -9` during a stream of creates and deletes: after a restart every
//! acknowledged change is there, nothing unacknowledged half-exists, and
//! SQLite's integrity check passes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use roost_tests::{check_store, site_config, AgentProcess, Api};

const IMAGE: &str = "6f0c3b4e-2c4d-4f59-9a7e-3f1e8b2d7c10";

/// What clients were told, and what they asked without an answer.
#[derive(Debug, Default, Clone)]
struct Ledger {
    /// name -> id, for acknowledged creates.
    created: BTreeMap<String, String>,
    /// ids whose delete was acknowledged.
    deleted: BTreeSet<String>,
    /// names of creates sent but not answered.
    creating: BTreeSet<String>,
    /// ids whose delete was sent but not answered.
    deleting: BTreeSet<String>,
}

async fn client(api: Api, worker: usize, round: usize, ledger: Arc<Mutex<Ledger>>) {
    for n in 0.. {
        let delete_one = n % 2 == 1;
        if delete_one {
            let victim = {
                let l = ledger.lock().unwrap();
                l.created
                    .values()
                    .find(|id| !l.deleted.contains(*id) && !l.deleting.contains(*id))
                    .cloned()
            };
            if let Some(id) = victim {
                ledger.lock().unwrap().deleting.insert(id.clone());
                match api
                    .http
                    .delete(format!("{}/compute/v2.1/servers/{id}", api.url))
                    .header("X-Auth-Token", &api.token)
                    .send()
                    .await
                {
                    Ok(r) if r.status().as_u16() == 204 => {
                        let mut l = ledger.lock().unwrap();
                        l.deleting.remove(&id);
                        l.deleted.insert(id);
                    }
                    Ok(r) => panic!("delete answered {}", r.status()),
                    Err(_) => return, // the agent died mid-request
                }
                continue;
            }
        }
        let name = format!("r{round}-w{worker}-{n}");
        ledger.lock().unwrap().creating.insert(name.clone());
        let body =
            serde_json::json!({"server": {"name": name, "flavorRef": "2", "imageRef": IMAGE}});
        let resp = api
            .http
            .post(format!("{}/compute/v2.1/servers", api.url))
            .header("X-Auth-Token", &api.token)
            .json(&body)
            .send()
            .await;
        let Ok(resp) = resp else { return };
        let code = resp.status().as_u16();
        let Ok(v) = resp.json::<serde_json::Value>().await else {
            return;
        };
        let mut l = ledger.lock().unwrap();
        l.creating.remove(&name);
        match code {
            202 => {
                l.created
                    .insert(name, v["server"]["id"].as_str().unwrap().to_string());
            }
            // The site is full: an answer that changed nothing.
            409 => assert!(v.to_string().contains("No valid host"), "{v}"),
            other => panic!("create answered {other}: {v}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site_config("edge-factory-01.yaml");
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = rand::rng();
    for round in 0..4 {
        let mut agent = AgentProcess::start(&cfg, dir.path());
        let api = Api::login(&agent.url).await;
        let snapshot = ledger.lock().unwrap().clone();
        check_round(&api, &snapshot).await;

        let mut workers = tokio::task::JoinSet::new();
        for w in 0..6 {
            workers.spawn(client(api.clone(), w, round, ledger.clone()));
        }
        // Let each round do real work whatever the machine's speed, then
        // kill at a random moment.
        let start = snapshot.created.len();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while ledger.lock().unwrap().created.len() < start + 15 {
            assert!(
                std::time::Instant::now() < deadline,
                "the agent made no progress"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..600))).await;
        agent.kill9();
        while let Some(r) = workers.join_next().await {
            r.expect("a client saw something wrong");
        }
        let servers_on_disk = check_store(&agent.db_path());
        let l = ledger.lock().unwrap();
        assert!(servers_on_disk >= l.created.len() - l.deleted.len() - l.deleting.len());
        eprintln!(
            "round {round}: {} creates and {} deletes acknowledged so far; {} creates and {} deletes were in flight at a kill so far",
            l.created.len(),
            l.deleted.len(),
            l.creating.len(),
            l.deleting.len()
        );
    }
    let agent = AgentProcess::start(&cfg, dir.path());
    let api = Api::login(&agent.url).await;
    let l = ledger.lock().unwrap().clone();
    assert!(
        l.created.len() >= 60,
        "each of the 4 rounds makes at least 15 creates: {}",
        l.created.len()
    );
    check_round(&api, &l).await;
}

/// Checks the agent holds what the ledger says was acknowledged.
async fn check_round(api: &Api, l: &Ledger) {
    // Acknowledged deletes finish (the reconciler removes them after restart).
    for id in &l.deleted {
        api.wait_status(id, "GONE", Duration::from_secs(10)).await;
    }
    let servers = api.servers().await;
    let by_name: BTreeMap<&str, &serde_json::Value> = servers
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s))
        .collect();
    for (name, id) in &l.created {
        if l.deleted.contains(id) {
            continue;
        }
        match by_name.get(name.as_str()) {
            Some(s) => {
                assert_eq!(s["id"].as_str(), Some(id.as_str()), "{name}");
                assert!(
                    s["OS-EXT-SRV-ATTR:host"].as_str().is_some(),
                    "{name} has no host"
                );
            }
            // A delete was in flight at the kill: it may have landed.
            None if l.deleting.contains(id) => {}
            None => panic!("acknowledged server {name} ({id}) is missing after restart"),
        }
    }
    for s in &servers {
        let name = s["name"].as_str().unwrap();
        let known = l.created.contains_key(name) || l.creating.contains(name);
        assert!(known, "server {name} exists but was never asked for");
    }
}
