//! Offline autonomy, proven across real processes: the real controller and
//! real agents, each site's QUIC link through its own link emulator, which
//! the scenarios cut, flap, re-address and heal, and both sides killed with
//! `-9` at random moments. Every scenario keeps a ledger of the writes each
//! side acknowledged and prints its figures: time to converge, bytes on the
//! link, acknowledged writes lost (which must be 0).
//!
//! What is guaranteed, and which scenario proves it: `docs/guarantees.md`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::Method;
use roost_tests::link::LinkParams;
use roost_tests::{check_store, start_site, wait_for, Api, ControllerProcess, SiteProcess};
use serde_json::{json, Value};

/// The factory's `debian-12-generic` image (2 GB minimum disk) and
/// `m1.small` flavor.
const IMAGE: &str = "6f0c3b4e-2c4d-4f59-9a7e-3f1e8b2d7c10";
const FLAVOR: &str = "2";

fn region_config(dir: &Path, sites: &[&str]) -> std::path::PathBuf {
    let mut text = String::from(
        "region: {name: eu-central}\napi: {listen: 127.0.0.1:7443}\nquic: {listen: 127.0.0.1:7444}\noffline_after_secs: 8\nsites:\n",
    );
    for s in sites {
        text += &format!("  - {{id: {s}}}\n");
    }
    let path = dir.join("region.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A region of one site: the controller and the site's agent, linked
/// through an emulator with `link`; `dir` holds both (dropped last).
struct OneSite {
    dir: tempfile::TempDir,
    region_cfg: std::path::PathBuf,
    controller: ControllerProcess,
    site: SiteProcess,
}

async fn one_site(id: &str, template: &str, seed: u64, link: LinkParams) -> OneSite {
    let dir = tempfile::tempdir().unwrap();
    let region_cfg = region_config(dir.path(), &[id]);
    let controller = ControllerProcess::start(&region_cfg, &dir.path().join("controller"));
    let site = start_site(
        dir.path(),
        &region_cfg,
        &controller,
        id,
        template,
        seed,
        link,
    )
    .await;
    OneSite {
        dir,
        region_cfg,
        controller,
        site,
    }
}

/// The site's Api with a region token: checked at the site against the
/// region's key, with no round trip (the link may be down).
async fn with_region_token(controller: &ControllerProcess, site: &SiteProcess) -> Api {
    let (token, body) = controller.region_token().await;
    assert!(token.starts_with("rgt1."), "a region-signed token");
    let project = body["token"]["project"]["id"].as_str().unwrap_or_default();
    Api::with_token(&site.agent.url, &token, project)
}

async fn in_sync(controller: &ControllerProcess, site: &str) -> bool {
    let v = controller.site(site).await;
    v["availability"] == "online" && v["sync"]["status"] == "in-sync"
}

/// Whether the agent says it is connected to the region (its metric).
async fn uplink_connected(site: &SiteProcess) -> Option<bool> {
    let value = roost_tests::metric(&site.agent.url, "roost_agent_uplink_connected").await?;
    Some(value.trim() == "1")
}

/// A server the site acknowledged, and when the test heard so.
type Acked = (String, chrono::DateTime<chrono::Utc>);

/// The region's copy of a site's servers, by id.
async fn region_servers(controller: &ControllerProcess, site: &str) -> BTreeMap<String, Value> {
    controller
        .servers(site)
        .await
        .into_iter()
        .filter_map(|s| Some((s["id"].as_str()?.to_string(), s)))
        .collect()
}

async fn server_action(api: &Api, id: &str, action: Value) {
    let (code, body) = api
        .post(&format!("/compute/v2.1/servers/{id}/action"), action)
        .await;
    assert_eq!(code, 202, "{body}");
}

/// Creates a server at the site; its id once acknowledged.
async fn site_create(api: &Api, name: &str, (flavor, image): (&str, &str)) -> String {
    let (code, body) = api.create_server(name, flavor, image).await;
    assert_eq!(code, 202, "{name}: {body}");
    body["server"]["id"].as_str().unwrap().to_string()
}

/// Records intent for a site at the controller; its id once acknowledged.
async fn region_create(controller: &ControllerProcess, site: &str, name: &str) -> Option<String> {
    let body = json!({"server": {"name": name, "flavorRef": FLAVOR, "imageRef": IMAGE}});
    let (code, body) = controller
        .call(Method::POST, &format!("/sites/{site}/servers"), Some(body))
        .await;
    (code == 202).then(|| {
        body["server"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    })
}

/// The controller's Nova face for one site, as `openstack --os-region-name`.
fn region_nova(controller: &ControllerProcess, site: &str, token: &str) -> Api {
    Api::with_token(&format!("{}/sites/{site}", controller.api), token, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_factory_and_its_region_converge_and_lose_nothing() {
    const SITE: &str = "edge-factory-01";
    let OneSite {
        dir: _dir,
        controller,
        site,
        ..
    } = one_site(SITE, "edge-factory-01.yaml", 21, LinkParams::field_link()).await;
    let (region_token, _) = controller.region_token().await;
    let nova = region_nova(&controller, SITE, &region_token);
    let within = Duration::from_secs(60);

    // Online: two servers the scenario later changes from both sides.
    let base1 = site_create(&site.api, "line-1", (FLAVOR, IMAGE)).await;
    let base2 = site_create(&site.api, "line-2", (FLAVOR, IMAGE)).await;
    wait_for("the site in sync with its servers", within, async || {
        let r = region_servers(&controller, SITE).await;
        in_sync(&controller, SITE).await
            && [&base1, &base2]
                .iter()
                .all(|id| r.get(*id).is_some_and(|s| s["status"]["host"].is_string()))
    })
    .await;
    // The site learns the region's token key while connected.
    let api = with_region_token(&controller, &site).await;
    wait_for("the site takes the region's tokens", within, async || {
        api.get("/compute/v2.1/servers").await.0 == 200
    })
    .await;

    // The cut, long enough that both sides see the link gone.
    let cut_at = Instant::now();
    site.relay.cut(true);
    wait_for("both sides see the link gone", within, async || {
        controller.site(SITE).await["availability"] == "offline"
            && uplink_connected(&site).await == Some(false)
    })
    .await;

    // The factory works on, with the region's token checked locally.
    let mut site_made = Vec::new();
    for n in 0..8 {
        site_made.push(site_create(&api, &format!("cell-{n}"), (FLAVOR, IMAGE)).await);
    }
    for id in &site_made {
        api.wait_status(id, "ACTIVE", within).await;
    }
    server_action(&api, &site_made[0], json!({"os-stop": null})).await;
    let (code, _) = api
        .delete(&format!("/compute/v2.1/servers/{}", site_made[1]))
        .await;
    assert_eq!(code, 204);
    // The operator at the site stops line-1; the region (below) stops and
    // starts it again: a concurrent edit of one field, to be journaled.
    server_action(&api, &base1, json!({"os-stop": null})).await;
    let (code, net) = api
        .post(
            "/network/v2.0/networks",
            json!({"network": {"name": "cell-net"}}),
        )
        .await;
    assert_eq!(code, 201, "{net}");
    let net = net["network"]["id"].as_str().unwrap().to_string();
    let (code, sub) = api
        .post(
            "/network/v2.0/subnets",
            json!({"subnet": {"network_id": net, "cidr": "10.60.0.0/24", "ip_version": 4}}),
        )
        .await;
    assert_eq!(code, 201, "{sub}");
    let (code, vol) = api
        .post(
            &api.volume_path("/volumes"),
            json!({"volume": {"size": 1, "name": "cell-data"}}),
        )
        .await;
    assert_eq!(code, 202, "{vol}");
    let vol = vol["volume"]["id"].as_str().unwrap().to_string();
    api.wait_volume(&vol, "available", within).await;

    // The region queues intent for the site meanwhile.
    let mut region_made = Vec::new();
    for n in 0..3 {
        let id = region_create(&controller, SITE, &format!("from-region-{n}"))
            .await
            .expect("the region takes intent for an offline site");
        region_made.push(id);
    }
    server_action(&nova, &base1, json!({"os-stop": null})).await;
    server_action(&nova, &base1, json!({"os-start": null})).await;
    let (code, body) = controller
        .call(
            Method::DELETE,
            &format!("/sites/{SITE}/servers/{base2}"),
            None,
        )
        .await;
    assert!(code == 202 || code == 204, "{code} {body}");
    assert_eq!(controller.site(SITE).await["sync"]["status"], "unknown");
    let cut_for = cut_at.elapsed();
    let (up0, down0) = site.relay.bytes();

    // The heal.
    let healed = Instant::now();
    site.relay.cut(false);
    let site_acked = site_made.len() + 3 + 3; // servers; 2 stops, a delete; net, subnet, volume
    let region_acked = region_made.len() + 3; // creates; stop, start, delete
    let mut lost = usize::MAX;
    let deadline = healed + Duration::from_secs(90);
    while Instant::now() < deadline {
        lost = missing(
            &controller,
            &site.api,
            SITE,
            &site_made,
            &region_made,
            &base2,
        )
        .await;
        if lost == 0 && in_sync(&controller, SITE).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let converged = healed.elapsed();
    let (up, down) = site.relay.bytes();
    println!(
        "disconnected factory: cut {:.1} s; {site_acked} writes acknowledged at the site, {region_acked} at the region; converged {:.2} s after the heal; {} bytes up, {} bytes down to converge; acknowledged writes lost: {lost}",
        cut_for.as_secs_f64(),
        converged.as_secs_f64(),
        up - up0,
        down - down0,
    );
    assert_eq!(lost, 0, "acknowledged writes missing after the heal");
    assert!(in_sync(&controller, SITE).await);

    // Site-only resources came through the cut untouched.
    let (code, _) = site.api.get(&format!("/network/v2.0/networks/{net}")).await;
    assert_eq!(code, 200);
    site.api.wait_volume(&vol, "available", within).await;

    // line-1's power was edited on both sides: one value won everywhere and
    // the loser is in the site's journal, which the region shows.
    let (code, journal) = site.api.get("/roost/v1/conflicts").await;
    assert_eq!(code, 200, "{journal}");
    let entry = journal["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c.to_string().contains(&base1))
        .unwrap_or_else(|| panic!("no journal entry for line-1: {journal}"))
        .clone();
    assert!(entry.to_string().contains("power"), "{entry}");
    let won = site
        .api
        .get(&format!("/compute/v2.1/servers/{base1}"))
        .await
        .1;
    let want = match won["server"]["status"].as_str() {
        Some("SHUTOFF") => "stopped",
        _ => "active",
    };
    wait_for(
        "the region shows line-1 as the site runs it",
        within,
        async || {
            let r = region_servers(&controller, SITE).await;
            r.get(&base1)
                .is_some_and(|s| s["status"]["vm_state"] == want)
        },
    )
    .await;
    let view = controller.site(SITE).await;
    assert!(view["conflicts"].as_u64() >= Some(1), "{view}");
    assert!(
        view["recent_conflicts"].to_string().contains(&base1),
        "{view}"
    );
    check_store(&site.agent.db_path());
}

/// How many acknowledged writes of the disconnected factory are not (yet)
/// on both sides.
async fn missing(
    controller: &ControllerProcess,
    site_api: &Api,
    site: &str,
    site_made: &[String],
    region_made: &[String],
    region_deleted: &str,
) -> usize {
    let region = region_servers(controller, site).await;
    let at_site: BTreeMap<String, Value> = site_api
        .servers()
        .await
        .into_iter()
        .filter_map(|s| Some((s["id"].as_str()?.to_string(), s)))
        .collect();
    let mut lost = 0;
    // The site's: placed and reported to the region; one stopped, one gone.
    for (n, id) in site_made.iter().enumerate() {
        let r = region.get(id);
        let ok = match n {
            0 => r.is_some_and(|s| s["status"]["vm_state"] == "stopped"),
            1 => r.is_none() && !at_site.contains_key(id),
            _ => r.is_some_and(|s| s["status"]["vm_state"] == "active"),
        };
        lost += usize::from(!ok);
    }
    // The region's: created and running at the site, reported back.
    for id in region_made {
        let ok = at_site.get(id).is_some_and(|s| s["status"] == "ACTIVE")
            && region
                .get(id)
                .is_some_and(|s| s["status"]["host"].is_string());
        lost += usize::from(!ok);
    }
    // The region's delete of a server the site made.
    lost +=
        usize::from(at_site.contains_key(region_deleted) || region.contains_key(region_deleted));
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_keeps_its_session_across_new_addresses_and_a_flapping_link() {
    const SITE: &str = "vehicle-07";
    let link = LinkParams {
        latency: Duration::from_millis(30),
        ..LinkParams::default()
    };
    // The factory's hosts, so that a minute of writes has room.
    let OneSite {
        dir: _dir,
        controller,
        site,
        ..
    } = one_site(SITE, "edge-factory-01.yaml", 31, link).await;
    let within = Duration::from_secs(60);
    let arrived = async |id: &str| region_servers(&controller, SITE).await.contains_key(id);
    wait_for("the vehicle in sync", within, async || {
        in_sync(&controller, SITE).await
    })
    .await;
    let first = controller.site(SITE).await;

    // A new address while connected: QUIC moves the connection over.
    site.relay.rebind().await.unwrap();
    let id = site_create(&site.api, "after-move", (FLAVOR, IMAGE)).await;
    wait_for("a write after the move arrives", within, async || {
        arrived(&id).await
    })
    .await;
    wait_for("the region shows the new address", within, async || {
        controller.site(SITE).await["address"] != first["address"]
    })
    .await;
    let moved = controller.site(SITE).await;
    assert_eq!(
        moved["availability_since"], first["availability_since"],
        "the session survived the new address"
    );

    // A new address while the link is down (shorter than offline_after).
    site.relay.cut(true);
    site.relay.rebind().await.unwrap();
    let id = site_create(&site.api, "moved-while-down", (FLAVOR, IMAGE)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    site.relay.cut(false);
    wait_for("a write from the gap arrives", within, async || {
        arrived(&id).await
    })
    .await;
    assert_eq!(
        controller.site(SITE).await["availability_since"],
        first["availability_since"],
        "the session survived a new address behind a short gap"
    );

    // A minute of flapping, with two cuts long enough to end the session.
    // The site writes on; the test reads the region's view all along.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let writer = {
        let (api, acked) = (site.api.clone(), acked.clone());
        tokio::spawn(async move {
            for n in 0.. {
                let id = site_create(&api, &format!("flap-{n}"), (FLAVOR, IMAGE)).await;
                acked.lock().unwrap().push((id, chrono::Utc::now()));
                tokio::time::sleep(Duration::from_millis(2_000)).await;
            }
        })
    };
    let done = AtomicBool::new(false);
    let flapping = async {
        let mut rng = rand::rng();
        let start = Instant::now();
        let mut flaps = 0;
        while start.elapsed() < Duration::from_secs(60) {
            let down = if flaps == 2 || flaps == 6 {
                Duration::from_secs(12)
            } else {
                Duration::from_millis(rng.random_range(1_000..4_000))
            };
            site.relay.cut(true);
            tokio::time::sleep(down).await;
            site.relay.cut(false);
            tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..4_000))).await;
            flaps += 1;
        }
        done.store(true, Ordering::SeqCst);
        flaps
    };
    // Whenever the region says in sync, it holds every write the site
    // acknowledged before the site's current connection began: the region
    // does not claim what it has not heard.
    let watching = async {
        let (mut claims, mut false_claims) = (0, 0);
        while !done.load(Ordering::SeqCst) {
            let view = controller.site(SITE).await;
            if view["sync"]["status"] == "in-sync" {
                let since: chrono::DateTime<chrono::Utc> = view["availability_since"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("an online site has availability_since");
                let servers = region_servers(&controller, SITE).await;
                let writes = acked.lock().unwrap().clone();
                claims += 1;
                let mut before = writes.iter().filter(|(_, at)| *at < since);
                if let Some((id, _)) = before.find(|(id, _)| !servers.contains_key(id)) {
                    eprintln!("in sync since {since} without {id}");
                    false_claims += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (claims, false_claims)
    };
    let (flaps, (claims, false_claims)) = tokio::join!(flapping, watching);
    assert_eq!(
        false_claims, 0,
        "the region said in sync while lacking the site's writes ({claims} claims checked)"
    );
    assert!(claims > 0, "the site was never in sync while flapping");
    let healed = Instant::now();
    assert!(
        !writer.is_finished(),
        "the writer stopped: {:?}",
        writer.await
    );
    writer.abort();
    let acked = acked.lock().unwrap().clone();
    let mut lost = acked.len();
    while healed.elapsed() < Duration::from_secs(90) {
        let r = region_servers(&controller, SITE).await;
        lost = acked.iter().filter(|(id, _)| !r.contains_key(id)).count();
        if lost == 0 && in_sync(&controller, SITE).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (up, down) = site.relay.bytes();
    println!(
        "vehicle: {flaps} flaps in a minute ({claims} in-sync claims checked, 0 false); {} writes acknowledged at the site; converged {:.2} s after the last heal; {up} bytes up, {down} down in all; acknowledged writes lost: {lost}",
        acked.len(),
        healed.elapsed().as_secs_f64(),
    );
    assert_eq!(lost, 0);
}

/// What each side acknowledged in the crash scenario.
#[derive(Debug, Default)]
struct Ledger {
    site: Vec<String>,
    region: Vec<String>,
}

/// A create that may meet a dead process: the id if it was acknowledged.
async fn try_create(http: &reqwest::Client, url: &str, token: &str, name: &str) -> Option<String> {
    let body = json!({"server": {"name": name, "flavorRef": FLAVOR, "imageRef": IMAGE}});
    let resp = http
        .post(url)
        .header("X-Auth-Token", token)
        .bearer_auth(token)
        .json(&body)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    if resp.status().as_u16() != 202 {
        return None;
    }
    let body: Value = resp.json().await.ok()?;
    body["server"]["id"].as_str().map(str::to_string)
}

/// Writes on one side until aborted, recording what was acknowledged.
fn writer(
    url: String,
    token: String,
    side: &'static str,
    ledger: Arc<Mutex<Ledger>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        for n in 0.. {
            if let Some(id) = try_create(&http, &url, &token, &format!("{side}-{n}")).await {
                let mut l = ledger.lock().unwrap();
                match side {
                    "site" => l.site.push(id),
                    _ => l.region.push(id),
                }
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_on_either_side_during_sync_loses_no_acknowledged_write() {
    const SITE: &str = "edge-factory-01";
    const ROUNDS: usize = 8;
    let link = LinkParams {
        latency: Duration::from_millis(20),
        ..LinkParams::default()
    };
    let OneSite {
        dir: _dir,
        region_cfg,
        mut controller,
        mut site,
    } = one_site(SITE, "edge-factory-01.yaml", 41, link).await;
    let controller_dir = controller.data_dir.clone();
    // Both come back where they were: the site's link and the test's
    // clients keep their addresses.
    let api_addr = controller.api.trim_start_matches("http://").to_string();
    let quic_addr = controller.quic.clone();
    let agent_addr = site.agent.url.trim_start_matches("http://").to_string();
    let within = Duration::from_secs(60);
    wait_for("the site in sync", within, async || {
        in_sync(&controller, SITE).await
    })
    .await;
    let api = with_region_token(&controller, &site).await;
    wait_for("the site takes the region's tokens", within, async || {
        api.get("/compute/v2.1/servers").await.0 == 200
    })
    .await;

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let writers = [
        writer(
            format!("{}/compute/v2.1/servers", site.agent.url),
            api.token.clone(),
            "site",
            ledger.clone(),
        ),
        writer(
            format!("{}/roost/v1/sites/{SITE}/servers", controller.api),
            controller.admin_token(),
            "region",
            ledger.clone(),
        ),
    ];
    let mut rng = rand::rng();
    let (mut agent_kills, mut controller_kills) = (0, 0);
    for _ in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2_500))).await;
        if rng.random_bool(0.5) {
            site.agent.kill9();
            agent_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
            let (config, data) = (site.agent.config.clone(), site.agent.data_dir.clone());
            site.agent = roost_tests::AgentProcess::start_with(
                std::process::Command::new(roost_tests::binary("roost-agent")),
                &config,
                &data,
                &agent_addr,
            );
        } else {
            controller.kill9();
            controller_kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
            controller = ControllerProcess::start_at(
                &region_cfg,
                &controller_dir,
                "warn",
                &api_addr,
                &quic_addr,
            );
        }
    }
    let restarted = Instant::now();
    for w in &writers {
        w.abort();
    }
    let (site_made, region_made) = {
        let l = ledger.lock().unwrap();
        (l.site.clone(), l.region.clone())
    };
    assert!(
        site_made.len() >= 10 && region_made.len() >= 10,
        "both sides wrote through the kills: {} at the site, {} at the region",
        site_made.len(),
        region_made.len()
    );
    let mut lost = usize::MAX;
    // Reconnection waits out the site's backoff, which kills of the
    // controller grow toward its 60 s cap (a connection shorter than 30 s
    // does not reset it): two full windows and then some on a busy machine.
    while restarted.elapsed() < Duration::from_secs(240) {
        let region = region_servers(&controller, SITE).await;
        let at_site: BTreeMap<String, Value> = site
            .api
            .servers()
            .await
            .into_iter()
            .filter_map(|s| Some((s["id"].as_str()?.to_string(), s)))
            .collect();
        lost = site_made
            .iter()
            .chain(&region_made)
            .filter(|id| {
                !(at_site.contains_key(*id)
                    && region
                        .get(*id)
                        .is_some_and(|s| s["status"]["host"].is_string()))
            })
            .count();
        if lost == 0 && in_sync(&controller, SITE).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "crashes: {agent_kills} agent and {controller_kills} controller kill -9s in {ROUNDS} rounds; {} writes acknowledged at the site, {} at the region; converged {:.2} s after the last restart; acknowledged writes lost: {lost}",
        site_made.len(),
        region_made.len(),
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(lost, 0, "acknowledged writes missing after the crashes");

    // Both stores are whole.
    site.agent.kill9();
    controller.kill9();
    check_store(&site.agent.db_path());
    let conn = rusqlite::Connection::open(controller.db_path()).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "the controller's store");
}

/// A QUIC client holding a site's credential, as a thief of it would.
fn client_as(cred: &roost_sync::pki::Credential) -> quinn::Endpoint {
    let mut c = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    c.set_default_client_config(roost_sync::transport::client_config(cred).unwrap());
    c
}

fn hello(name: &str) -> roost_sync::transport::Hello {
    roost_sync::transport::Hello {
        name: name.into(),
        version: "hostile".into(),
        protocol: roost_sync::frame::VERSION,
    }
}

/// Length-prefixed, as the sync stream carries frames.
fn prefixed(frame: &[u8]) -> Vec<u8> {
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(frame);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_on_the_quic_port_are_refused_and_harm_nothing() {
    use roost_sync::frame::{encode_fragment, encode_sync, DocId};
    const VICTIM: &str = "edge-factory-01";
    const THIEF: &str = "vehicle-07";
    let dir = tempfile::tempdir().unwrap();
    let region_cfg = region_config(dir.path(), &[VICTIM, THIEF]);
    let mut controller = ControllerProcess::start(&region_cfg, &dir.path().join("controller"));
    let link = LinkParams::default();
    let victim = start_site(
        dir.path(),
        &region_cfg,
        &controller,
        VICTIM,
        "edge-factory-01.yaml",
        51,
        link,
    )
    .await;
    let mut thief = start_site(
        dir.path(),
        &region_cfg,
        &controller,
        THIEF,
        "vehicle-07.yaml",
        52,
        link,
    )
    .await;
    let within = Duration::from_secs(60);
    wait_for("both sites in sync", within, async || {
        in_sync(&controller, VICTIM).await && in_sync(&controller, THIEF).await
    })
    .await;
    // The thief's agent stops; its credential is used by hand from here.
    thief.agent.kill9();
    let cred = roost_sync::pki::Credential::read_pem(&thief.agent.data_dir.join("pki")).unwrap();
    let endpoint = client_as(&cred);
    let quic: std::net::SocketAddr = controller.quic.parse().unwrap();
    let server_name = roost_sync::pki::region_server_name("eu-central");
    let connect = async || {
        endpoint
            .connect(quic, &server_name)
            .unwrap()
            .await
            .expect("TLS with a certificate the region issued")
    };
    let victim_before = region_servers(&controller, VICTIM).await.len();
    let thief_before = roost_tests::changes_stored(&controller.db_path(), THIEF);

    // One site's certificate cannot speak for another site.
    let conn = connect().await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        roost_sync::transport::site_open(&conn, &hello(VICTIM)),
    )
    .await
    .expect("the region answers");
    assert!(r.is_err(), "a hello naming another site must be refused");
    conn.close(0u32.into(), b"");

    // Malformed, truncated and oversized frames on a proper session: each
    // ends that connection and nothing else.
    let mut fragment = encode_fragment(DocId::Intent, 1, 0, 2, b"half");
    fragment[9 + 4..9 + 8].copy_from_slice(&[0, 7, 0, 2]); // index 7 of 2
    let mut version = encode_sync(DocId::Intent, b"x");
    version[2] = 9;
    let mut doc = encode_sync(DocId::Status, b"x");
    doc[4] = 7;
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("oversized length", u32::MAX.to_be_bytes().to_vec()),
        ("bad magic", prefixed(b"GET / HTTP/1.1\r\n\r\n")),
        ("truncated", {
            let mut v = 100u32.to_be_bytes().to_vec();
            v.extend_from_slice(b"RS\x02\x00\x00");
            v
        }),
        ("unknown version", prefixed(&version)),
        ("unknown document", prefixed(&doc)),
        ("fragment out of range", prefixed(&fragment)),
        (
            "garbage message",
            prefixed(&encode_sync(DocId::Intent, b"\x00not automerge at all")),
        ),
        (
            "garbage status message",
            prefixed(&encode_sync(DocId::Status, &[0u8; 64])),
        ),
    ];
    let mut refused = 0;
    for (what, bytes) in &hostile {
        let conn = connect().await;
        let (_, mut send, _recv) = tokio::time::timeout(
            Duration::from_secs(10),
            roost_sync::transport::site_open(&conn, &hello(THIEF)),
        )
        .await
        .expect("the region answers")
        .expect("the thief's own hello is accepted");
        send.write_all(bytes).await.unwrap();
        let _ = send.finish();
        let closed = tokio::time::timeout(Duration::from_secs(15), conn.closed()).await;
        assert!(
            closed.is_ok(),
            "{what}: the region kept the connection open"
        );
        refused += 1;
        assert!(
            controller.child.try_wait().unwrap().is_none(),
            "{what}: the controller died"
        );
    }

    // Datagrams that are not QUIC at all.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = rand::rng();
    for _ in 0..2_000 {
        let n = rng.random_range(1..1_400);
        let junk: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        udp.send_to(&junk, quic).await.unwrap();
    }

    // The victim syncs on, untouched; the thief's documents gained nothing.
    let id = site_create(&victim.api, "after-the-attack", (FLAVOR, IMAGE)).await;
    wait_for(
        "the victim's write reaches the region",
        within,
        async || region_servers(&controller, VICTIM).await.contains_key(&id),
    )
    .await;
    assert_eq!(
        region_servers(&controller, VICTIM).await.len(),
        victim_before + 1
    );
    assert!(in_sync(&controller, VICTIM).await);
    assert!(controller.child.try_wait().unwrap().is_none());
    assert!(region_servers(&controller, THIEF).await.is_empty());

    // The operator revokes the thief's site (the real CLI): a live
    // connection of its is closed, and its certificate is refused after.
    let live = connect().await;
    let (_, mut send, _recv) = roost_sync::transport::site_open(&live, &hello(THIEF))
        .await
        .expect("still enrolled");
    // A real session's first words (heads only), so the region runs it.
    let now = Instant::now();
    let mut docs = roost_sync::Docs {
        intent: roost_sync::IntentDoc::new(b"thief-intent-001", "site:thief"),
        status: roost_sync::StatusDoc::new(&roost_sync::site_status_actor(THIEF)),
        site_status_actor: roost_sync::site_status_actor(THIEF),
    };
    let mut session = roost_sync::Session::new(
        roost_sync::Role::Site,
        roost_sync::session::SessionConfig::default(),
        None,
        now,
    )
    .unwrap();
    session.handle_timeout(&mut docs, now);
    while let Some(f) = session.poll_message() {
        send.write_all(&prefixed(&f)).await.unwrap();
    }
    wait_for("the thief's session runs", within, async || {
        controller.site(THIEF).await["availability"] == "online"
    })
    .await;
    let out = std::process::Command::new(roost_tests::binary("roost-controller"))
        .args(["site", "revoke", THIEF, "--url", &controller.api])
        .args(["--data-dir"])
        .arg(&controller.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("enrollment revoked"));
    let closed = tokio::time::timeout(Duration::from_secs(10), live.closed())
        .await
        .expect("the revoked site's connection is closed");
    assert!(closed.to_string().contains("enrollment ended"), "{closed}");
    let conn = connect().await;
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        roost_sync::transport::site_open(&conn, &hello(THIEF)),
    )
    .await
    .expect("the region answers");
    assert!(r.is_err(), "a revoked site must not get a session");
    let reason = conn
        .close_reason()
        .map(|r| r.to_string())
        .unwrap_or_default();
    assert!(reason.contains("revoked site"), "{reason}");
    assert_eq!(controller.site(THIEF).await["enrolled"], false);
    let (code, body) = controller
        .call(Method::POST, &format!("/sites/{THIEF}/revoke"), None)
        .await;
    assert_eq!(code, 409, "revoking twice: {body}");
    assert!(
        in_sync(&controller, VICTIM).await,
        "the victim is untouched"
    );

    let thief_after = roost_tests::changes_stored(&controller.db_path(), THIEF);
    println!(
        "hostile input: {refused} malformed sessions and 2000 junk datagrams refused, a revoked site's connection closed and its certificate refused; the controller stayed up; the thief's stored changes {thief_before} before, {thief_after} after"
    );
    assert_eq!(thief_after, thief_before, "a refused frame stored nothing");
    controller.terminate();
}

/// Parses an RFC 3339 time, to the millisecond (the region keeps ms).
fn ms(v: &Value) -> Option<i64> {
    let t: chrono::DateTime<chrono::Utc> = v.as_str()?.parse().ok()?;
    Some(t.timestamp_millis())
}

/// `(code, raised_at ms, cleared_at ms)` of a list of alarms.
fn alarm_times(list: &Value) -> Vec<(String, Option<i64>, Option<i64>)> {
    let mut out: Vec<_> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["code"].as_str().unwrap_or_default().to_string(),
                ms(&a["raised_at"]),
                ms(&a["cleared_at"]),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_raised_apart_reach_the_region_with_their_own_times() {
    const SITE: &str = "vehicle-07";
    let OneSite {
        dir: _dir,
        controller,
        mut site,
        ..
    } = one_site(SITE, "vehicle-07.yaml", 61, LinkParams::default()).await;
    let within = Duration::from_secs(60);
    let config = site.agent.config.clone();
    let data = site.agent.data_dir.clone();
    // The disk alarm's line is moved by restarting the agent with another
    // config: 99% (this disk is below it) or 3% (this disk is above it).
    // The link alarm's wait is 3 s only while the link is cut (a restart
    // while connected may take longer than that to connect).
    let with_disk_line = |percent: u8, link_down_after: u32| {
        let text = std::fs::read_to_string(&config).unwrap();
        let base = text.split("\nalarms:").next().unwrap().to_string();
        std::fs::write(
            &config,
            format!("{base}\nalarms:\n  link_down_after_secs: {link_down_after}\n  disk_nearly_full_percent: {percent}\n"),
        )
        .unwrap();
    };
    // Enrolled first (a restart during enrollment would find its token
    // spent), then restarted with its alarm settings.
    wait_for("the vehicle in sync", within, async || {
        in_sync(&controller, SITE).await
    })
    .await;
    with_disk_line(99, 60);
    site.agent.kill9();
    site.agent = roost_tests::AgentProcess::start(&config, &data);
    site.api = Api::login(&site.agent.url).await;
    wait_for("the vehicle in sync again", within, async || {
        in_sync(&controller, SITE).await
    })
    .await;
    let (_, alarms) = site.api.get("/roost/v1/alarms").await;
    assert_eq!(alarms["alarms"], json!([]), "{alarms}");

    // Apart: the link alarm after 3 s; a disk alarm raised and cleared;
    // another raised and still active at the heal.
    site.relay.cut(true);
    with_disk_line(99, 3);
    site.agent.kill9();
    site.agent = roost_tests::AgentProcess::start(&config, &data);
    site.api = Api::login(&site.agent.url).await;
    wait_for("the site raises site.link_down", within, async || {
        site.api.get("/roost/v1/alarms").await.1["alarms"]
            .to_string()
            .contains("site.link_down")
    })
    .await;
    for percent in [3, 99, 3] {
        with_disk_line(percent, 3);
        site.agent.kill9();
        site.agent = roost_tests::AgentProcess::start(&config, &data);
        site.api = Api::login(&site.agent.url).await;
        let want_active = percent == 3;
        wait_for("the disk alarm follows its line", within, async || {
            let a = site.api.get("/roost/v1/alarms").await.1;
            a["alarms"].to_string().contains("storage.disk_nearly_full") == want_active
        })
        .await;
    }
    let raised_apart = site.api.get("/roost/v1/alarms").await.1;
    assert!(
        alarm_times(&raised_apart["alarms"])
            .iter()
            .any(|(code, _, _)| code == "site.link_down"),
        "the link alarm survives the agent's restarts: {raised_apart}"
    );

    // The heal: the site clears the link alarm; the region then holds
    // exactly the site's alarms, with the site's times.
    let healed = Instant::now();
    site.relay.cut(false);
    let site_alarms = async || {
        let a = site.api.get("/roost/v1/alarms").await.1;
        let mut all = alarm_times(&a["alarms"]);
        all.extend(alarm_times(&a["cleared"]));
        all.sort();
        (a, all)
    };
    let region_alarms = async || {
        let (code, body) = controller
            .call(
                Method::GET,
                &format!("/alarms?site={SITE}&history=true"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{body}");
        let mut list = alarm_times(&body["alarms"]);
        list.retain(|(code, _, _)| code != "site.offline");
        list
    };
    wait_for("the region holds the site's alarms", within, async || {
        let (_, at_site) = site_alarms().await;
        in_sync(&controller, SITE).await
            && !at_site
                .iter()
                .any(|(c, _, cleared)| c == "site.link_down" && cleared.is_none())
            && region_alarms().await == at_site
    })
    .await;
    let converged = healed.elapsed();
    let (site_view, at_site) = site_alarms().await;
    let codes: Vec<&str> = at_site.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(
        codes,
        [
            "site.link_down",
            "storage.disk_nearly_full",
            "storage.disk_nearly_full"
        ],
        "{site_view}"
    );
    // The summary per site matches: one major alarm active, at both.
    let active_at_site = site_view["alarms"].as_array().unwrap();
    assert_eq!(active_at_site.len(), 1, "{site_view}");
    assert_eq!(active_at_site[0]["severity"], "major");
    let view = controller.site(SITE).await;
    assert_eq!(
        view["alarms"],
        json!({"critical": 0, "major": 1, "minor": 0}),
        "{view}"
    );
    println!(
        "alarms: {} raised at the site while apart ({} cleared there) reached the region {:.2} s after the heal with the site's own times",
        at_site.len(),
        at_site.iter().filter(|(_, _, c)| c.is_some()).count(),
        converged.as_secs_f64()
    );
}
