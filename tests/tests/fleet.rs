//! A whole region on one machine: the real controller and three real agent
//! processes, each site's QUIC link through its own link emulator. The
//! fleet operator's view (`roost-controller site list`, the real CLI) is
//! checked at each step: all online and in sync; one link cut while both
//! sides change things (the region's intent queued for the site, a local
//! server at the site); the heal, after which both sides hold everything;
//! a site stopped dead is offline, with a critical alarm, within the
//! configured 8 s. Central intent goes out by label (a flavor, a quota) and
//! per site (servers), and the region's placement picks sites with room.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use roost_tests::link::LinkParams;
use roost_tests::{binary, changed_after, start_site, wait_for, ControllerProcess};
use serde_json::{json, Value};

const IMAGE: &str = "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a98";
const OFFLINE_AFTER: u64 = 8;

const REGION: &str = "
region: {name: eu-central}
api: {listen: 127.0.0.1:7443}
quic: {listen: 127.0.0.1:7444}
offline_after_secs: 8
sites:
  - {id: edge-factory-01, labels: {kind: factory}}
  - {id: vehicle-07, labels: {kind: vehicle}}
  - {id: vehicle-08, labels: {kind: vehicle}}
";

/// `roost-controller site list --output json`, the operator's real CLI.
fn site_list(config: &Path, controller: &ControllerProcess) -> Vec<Value> {
    let out = Command::new(binary("roost-controller"))
        .args(["site", "list", "--output", "json", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(&controller.data_dir)
        .args(["--url", &controller.api])
        .output()
        .expect("run roost-controller site list");
    assert!(
        out.status.success(),
        "site list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("site list --output json is JSON")
}

fn entry<'a>(list: &'a [Value], site: &str) -> &'a Value {
    list.iter()
        .find(|s| s["id"] == site)
        .unwrap_or_else(|| panic!("{site} not in the site list"))
}

/// Whether the region holds `site`'s offline alarm active, once the site
/// list's per-site summary agrees with the region's alarm list (read a
/// moment apart: a site's own alarm, such as a nearly full disk on a
/// crowded test machine, may come or go between them). Only the region's
/// own alarm is asserted on: this test does not control the others.
async fn offline_alarm(config: &Path, controller: &ControllerProcess, site: &str) -> bool {
    for _ in 0..10 {
        let list = site_list(config, controller);
        let (code, body) = controller
            .call(Method::GET, &format!("/alarms?site={site}"), None)
            .await;
        assert_eq!(code, 200, "{body}");
        let active = body["alarms"].as_array().unwrap();
        let critical = active
            .iter()
            .filter(|a| a["severity"] == "critical")
            .count();
        if entry(&list, site)["alarms"]["critical"].as_u64() == Some(critical as u64) {
            return active
                .iter()
                .any(|a| a["code"] == "site.offline" && a["severity"] == "critical");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("the site list's alarm summary of {site} never matched the region's alarm list");
}

/// `(availability, sync status)` of every site, in id order.
fn states(list: &[Value]) -> Vec<(String, String, String)> {
    list.iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or("").to_string(),
                s["availability"].as_str().unwrap_or("").to_string(),
                s["sync"]["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn want(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_of_three_sites_through_a_cut_a_heal_and_a_dead_site() {
    let dir = tempfile::tempdir().unwrap();
    let region_cfg: PathBuf = dir.path().join("region.yaml");
    std::fs::write(&region_cfg, REGION).unwrap();
    let controller = ControllerProcess::start(&region_cfg, &dir.path().join("controller"));
    let d = dir.path();
    let mut factory = start_site(
        d,
        &region_cfg,
        &controller,
        "edge-factory-01",
        "edge-factory-01.yaml",
        1,
        LinkParams::field_link(),
    )
    .await;
    let v7 = start_site(
        d,
        &region_cfg,
        &controller,
        "vehicle-07",
        "vehicle-07.yaml",
        2,
        LinkParams::field_link(),
    )
    .await;
    let v8 = start_site(
        d,
        &region_cfg,
        &controller,
        "vehicle-08",
        "vehicle-07.yaml",
        3,
        LinkParams::field_link(),
    )
    .await;

    // 1. All three enroll, connect and agree.
    let all_in_sync = want(&[
        ("edge-factory-01", "online", "in-sync"),
        ("vehicle-07", "online", "in-sync"),
        ("vehicle-08", "online", "in-sync"),
    ]);
    wait_for(
        "three sites online and in sync",
        Duration::from_secs(30),
        async || states(&site_list(&region_cfg, &controller)) == all_in_sync,
    )
    .await;
    let list = site_list(&region_cfg, &controller);
    let cap = &entry(&list, "edge-factory-01")["capacity"];
    assert!(cap["total"]["vcpus"].as_u64().unwrap() > 0, "{cap}");
    assert!(!offline_alarm(&region_cfg, &controller, "vehicle-07").await);

    // Bad input at the fleet API names the field and changes nothing.
    let (code, body) = controller
        .call(Method::POST, "/flavors", Some(json!({"flavor": {"name": "x", "vcpus": 0, "ram": 1, "disk": 1}, "labels": {"kind": "vehicle"}})))
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("vcpus"),
        "{body}"
    );
    let (code, body) = controller
        .call(
            Method::POST,
            "/sites/vehicle-07/servers",
            Some(json!({"server": {"name": "x", "flavorRef": "no-such", "imageRef": IMAGE}})),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("server.flavorRef"),
        "{body}"
    );
    let unauthorized = reqwest::Client::new()
        .get(format!("{}/roost/v1/sites", controller.api))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);

    // 2. A flavor and a quota for every vehicle, by label.
    let (code, body) = controller
        .call(Method::POST, "/flavors", Some(json!({"flavor": {"name": "r1.cam", "id": "cam", "vcpus": 1, "ram": 512, "disk": 1}, "labels": {"kind": "vehicle"}})))
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["flavor"]["sites"], json!(["vehicle-07", "vehicle-08"]));
    let (code, body) = controller
        .call(
            Method::PUT,
            "/quotas",
            Some(json!({"quota": {"instances": 3}, "labels": {"kind": "vehicle"}})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    for s in [&v7, &v8] {
        wait_for(
            "the region's flavor reaches the vehicle",
            Duration::from_secs(20),
            async || s.api.get("/compute/v2.1/flavors/cam").await.0 == 200,
        )
        .await;
    }

    // 3. vehicle-07's link is cut; both sides keep changing things.
    v7.relay.cut(true);
    let (code, body) = controller
        .call(Method::POST, "/sites/vehicle-07/servers", Some(json!({"server": {"name": "from-region", "flavorRef": "r1.cam", "imageRef": IMAGE}})))
        .await;
    assert_eq!(code, 202, "{body}");
    let from_region = body["server"]["id"].as_str().unwrap().to_string();
    let (code, body) = v7.api.create_server("local-cam", "cam", IMAGE).await;
    assert_eq!(code, 202, "the site keeps working while cut off: {body}");
    let local = body["server"]["id"].as_str().unwrap().to_string();
    wait_for(
        "the cut site is offline, its intent queued",
        Duration::from_secs(20),
        async || {
            let list = site_list(&region_cfg, &controller);
            states(&list)
                == want(&[
                    ("edge-factory-01", "online", "in-sync"),
                    ("vehicle-07", "offline", "unknown"),
                    ("vehicle-08", "online", "in-sync"),
                ])
                && entry(&list, "vehicle-07")["sync"]["to_site"].as_u64() >= Some(1)
        },
    )
    .await;
    let list = site_list(&region_cfg, &controller);
    assert!(
        offline_alarm(&region_cfg, &controller, "vehicle-07").await,
        "{list:?}"
    );

    // 4. The heal: both sides end up with everything.
    v7.relay.cut(false);
    wait_for(
        "vehicle-07 back online and in sync",
        Duration::from_secs(60),
        async || states(&site_list(&region_cfg, &controller)) == all_in_sync,
    )
    .await;
    v7.api
        .wait_status(&from_region, "ACTIVE", Duration::from_secs(20))
        .await;
    let (code, body) = controller
        .call(Method::GET, "/sites/vehicle-07/servers", None)
        .await;
    assert_eq!(code, 200);
    let servers = body["servers"].as_array().unwrap();
    let local_seen = servers.iter().find(|s| s["id"] == local.as_str());
    assert!(
        local_seen.is_some_and(|s| s["name"] == "local-cam" && s["status"]["host"].is_string()),
        "the region has the site's local server with its placement: {body}"
    );
    let list = site_list(&region_cfg, &controller);
    assert!(
        !offline_alarm(&region_cfg, &controller, "vehicle-07").await,
        "returning clears the alarm"
    );
    assert_eq!(entry(&list, "vehicle-07")["quota"]["instances"], 3);

    // 5. The quota holds at the site: two servers there, one more allowed.
    let (code, _) = v7.api.create_server("third", "cam", IMAGE).await;
    assert_eq!(code, 202);
    let (code, body) = v7.api.create_server("fourth", "cam", IMAGE).await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body.to_string().contains("Quota exceeded for instances"),
        "{body}"
    );

    // 6. Placement: one camera on each of 2 vehicles with room; vehicle-07
    //    is at its allotment, so only vehicle-08 qualifies and the request
    //    is refused whole.
    wait_for(
        "vehicle-07's capacity shows 3 instances",
        Duration::from_secs(20),
        async || {
            entry(&site_list(&region_cfg, &controller), "vehicle-07")["capacity"]["instances"] == 3
        },
    )
    .await;
    let (code, body) = controller
        .call(Method::POST, "/placements", Some(json!({"server": {"name": "cam-fleet", "flavorRef": "cam", "imageRef": IMAGE}, "count": 2, "labels": {"kind": "vehicle"}})))
        .await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("vehicle-07 would exceed its instances quota"),
        "{body}"
    );
    let (code, body) = controller
        .call(Method::POST, "/placements", Some(json!({"server": {"name": "cam-fleet", "flavorRef": "cam", "imageRef": IMAGE}, "count": 1, "labels": {"kind": "vehicle"}})))
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["servers"][0]["site"], "vehicle-08");
    let placed = body["servers"][0]["id"].as_str().unwrap().to_string();
    v8.api
        .wait_status(&placed, "ACTIVE", Duration::from_secs(20))
        .await;

    // 7. A site stopped dead is offline, with a critical alarm, within the
    //    configured silence.
    // The region's own timestamp of the transition is compared with the
    // kill, so a slow poll on a busy machine cannot make this fail or pass.
    let killed = chrono::Utc::now();
    factory.agent.kill9();
    wait_for(
        "the dead site is offline",
        Duration::from_secs(30),
        async || {
            entry(&site_list(&region_cfg, &controller), "edge-factory-01")["availability"]
                == "offline"
        },
    )
    .await;
    let list = site_list(&region_cfg, &controller);
    let noticed = changed_after(entry(&list, "edge-factory-01"), killed);
    println!("a site killed with -9 was offline at the region after {noticed:?}");
    assert!(
        noticed <= Duration::from_secs(OFFLINE_AFTER),
        "offline after {noticed:?}, more than offline_after_secs"
    );
    let list = site_list(&region_cfg, &controller);
    assert!(offline_alarm(&region_cfg, &controller, "edge-factory-01").await);
    assert_eq!(entry(&list, "edge-factory-01")["sync"]["status"], "unknown");

    // The metrics agree with the alarm list (read a moment apart, as above).
    let mut agreed = String::new();
    for _ in 0..10 {
        let metrics = reqwest::get(format!("{}/metrics", controller.api))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let (_, all) = controller.call(Method::GET, "/alarms", None).await;
        let critical = all["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["severity"] == "critical")
            .count();
        if metrics.contains(&format!(
            "roost_region_alarms_active{{severity=\"critical\"}} {critical}"
        )) {
            agreed = metrics;
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        agreed.contains("roost_region_sites{availability=\"offline\"} 1"),
        "the metrics never agreed with the alarm list, or the dead site is not counted offline: {agreed}"
    );
}
