//! The agent and its region over real QUIC with mutual TLS, through the
//! link emulator: the site's API writes reach the region with their status;
//! the region's intent becomes servers the site places and runs; while the
//! link is cut both sides keep writing, and after the heal both have
//! everything; a write acknowledged just before `kill -9` reaches the region
//! after the restart.

use std::time::{Duration, Instant};

use roost_sync::pki::region_server_name;
use roost_tests::link::{LinkParams, Relay};
use roost_tests::region::TestRegion;
use roost_tests::{site_config, AgentProcess, Api};
use serde_json::json;

const SITE: &str = "vehicle-07";
const IMAGE: &str = "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a98";
const WAIT: Duration = Duration::from_secs(20);

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status_of(region: &TestRegion, id: &str) -> Option<serde_json::Value> {
    region
        .docs
        .lock()
        .unwrap()
        .status
        .get("servers", id)
        .unwrap()
}

fn intent_of(region: &TestRegion, id: &str) -> Option<roost_sync::IntentView> {
    region
        .docs
        .lock()
        .unwrap()
        .intent
        .resource("servers", id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_and_region_sync_through_cuts_and_a_crash() {
    let region = TestRegion::start("eu", SITE);
    // 10 Mbit/s, 50 ms each way, 1% loss between site and region.
    let relay = Relay::start(region.addr, LinkParams::field_link(), 11)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("pki")).unwrap();
    region.enroll(SITE).write_pem(&data.join("pki")).unwrap();
    let config = dir.path().join("site.yaml");
    let text = std::fs::read_to_string(site_config("vehicle-07.yaml")).unwrap()
        + &format!("\nregion:\n  name: eu\n  address: {}\n", relay.addr);
    std::fs::write(&config, text).unwrap();
    assert_eq!(region_server_name("eu"), "eu.region.roost");

    let mut agent = AgentProcess::start(&config, &data);
    let api = Api::login(&agent.url).await;

    // 1. A local create reaches the region with where the site placed it.
    let (code, body) = api.create_server("cam-1", "2", IMAGE).await;
    assert_eq!(code, 202, "{body}");
    let cam1 = body["server"]["id"].as_str().unwrap().to_string();
    wait_until("the region sees cam-1 running", || {
        status_of(&region, &cam1).is_some_and(|s| s["vm_state"] == "active")
    })
    .await;
    assert_eq!(intent_of(&region, &cam1).unwrap().fields["name"], "cam-1");

    // 2. The region's intent becomes a server the site places and runs.
    let project = body["server"]["tenant_id"].as_str().map(str::to_string);
    let spec = json!({
        "name": "from-region", "project_id": project.clone().unwrap_or_else(|| "p".into()),
        "user_id": "region-operator", "flavor_id": "2", "image_id": IMAGE,
        "availability_zone": null, "server_group": null, "power": "running",
        "reboot_generation": 0, "reboot_hard": false, "deleted": false, "metadata": {}
    });
    let now = || chrono_ms();
    {
        let mut d = region.docs.lock().unwrap();
        d.intent
            .create(
                "servers",
                "from-region-1",
                spec.as_object().unwrap().clone(),
                now(),
            )
            .unwrap();
    }
    region.local.notify_one();
    wait_until("the site runs the region's server", || {
        status_of(&region, "from-region-1")
            .is_some_and(|s| s["vm_state"] == "active" && s["host"].is_string())
    })
    .await;
    let (code, shown) = api.get("/compute/v2.1/servers/from-region-1").await;
    assert_eq!(code, 200, "{shown}");
    assert_eq!(shown["server"]["name"], "from-region");

    // 3. Cut the link; both sides write; heal; both have everything.
    relay.cut(true);
    let (code, _) = api.delete(&format!("/compute/v2.1/servers/{cam1}")).await;
    assert_eq!(code, 204);
    let (code, body) = api.create_server("cam-2", "2", IMAGE).await;
    assert_eq!(code, 202, "{body}");
    let cam2 = body["server"]["id"].as_str().unwrap().to_string();
    {
        let mut d = region.docs.lock().unwrap();
        d.intent
            .set("servers", "from-region-1", "power", json!("stopped"), now())
            .unwrap();
    }
    region.local.notify_one();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        intent_of(&region, &cam2).is_none(),
        "nothing crosses a cut link"
    );
    relay.cut(false);
    wait_until("the region sees the site's writes from the cut", || {
        intent_of(&region, &cam1).is_some_and(|v| v.deleted)
            && status_of(&region, &cam2).is_some_and(|s| s["vm_state"] == "active")
    })
    .await;
    wait_until("the site stopped the region's server", || {
        status_of(&region, "from-region-1").is_some_and(|s| s["vm_state"] == "stopped")
    })
    .await;
    let s = api
        .wait_status("from-region-1", "SHUTOFF", Duration::from_secs(10))
        .await;
    assert_eq!(s["server"]["OS-EXT-STS:power_state"], 4);

    // 4. A create acknowledged just before kill -9 reaches the region after
    //    the restart (from the store: the change committed with the row).
    relay.cut(true);
    let (code, body) = api.create_server("cam-3", "2", IMAGE).await;
    assert_eq!(code, 202, "{body}");
    let cam3 = body["server"]["id"].as_str().unwrap().to_string();
    agent.kill9();
    relay.cut(false);
    let agent = AgentProcess::start(&config, &data);
    wait_until("cam-3 reaches the region after the crash", || {
        intent_of(&region, &cam3).is_some()
    })
    .await;
    assert!(
        region.connections.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the restarted agent connected again"
    );
    let metrics = reqwest::get(format!("{}/metrics", agent.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("roost_agent_uplink_connected 1"),
        "{metrics}"
    );
    let (up, down) = relay.bytes();
    eprintln!("bytes through the link: {up} up, {down} down");
}

fn chrono_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
