//! Images the region holds reach a site over the real QUIC link, chunk by
//! chunk: the real controller and agent, the link emulator between them.
//!
//! - An image made in the site's region of the controller's Glance is
//!   fetched by the site and becomes active there with the same bytes.
//! - A second version that differs in 5% of its bytes moves at most 10% of
//!   its size: the site copies every chunk it already holds.
//! - A transfer cut half way resumes after the heal without resending what
//!   arrived; while it is not cached, a server from it is refused naming
//!   the image.

use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use roost_tests::link::{LinkParams, Relay};
use roost_tests::{site_config, wait_for, AgentProcess, Api, ControllerProcess};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SITE: &str = "vehicle-07";

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// `base` with 5% of its bytes overwritten, in 64 KiB runs.
fn five_percent_changed(base: &[u8], seed: u64) -> Vec<u8> {
    let mut v = base.to_vec();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let run = 64 << 10;
    for _ in 0..(base.len() / 20) / run {
        let at = rng.random_range(0..v.len() - run);
        rng.fill_bytes(&mut v[at..at + run]);
    }
    v
}

struct Region {
    controller: ControllerProcess,
    token: String,
    http: reqwest::Client,
}

impl Region {
    async fn call(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(
                method,
                format!("{}/sites/{SITE}/image/v2{path}", self.controller.api),
            )
            .header("X-Auth-Token", &self.token)
    }

    /// Makes an image for the site at the controller and uploads its bytes.
    async fn publish(&self, name: &str, data: &[u8]) -> String {
        let resp = self
            .call(reqwest::Method::POST, "/images")
            .await
            .json(&json!({"name": name, "disk_format": "raw", "container_format": "bare", "visibility": "public"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], "queued", "{body}");
        let id = body["id"].as_str().unwrap().to_string();
        let resp = self
            .call(reqwest::Method::PUT, &format!("/images/{id}/file"))
            .await
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            204,
            "{}",
            resp.text().await.unwrap_or_default()
        );
        let shown: Value = self
            .call(reqwest::Method::GET, &format!("/images/{id}"))
            .await
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            ["importing", "active"].contains(&shown["status"].as_str().unwrap_or_default()),
            "{shown}"
        );
        id
    }
}

async fn site_image(api: &Api, id: &str) -> Value {
    let (code, body) = api.get(&format!("/image/v2/images/{id}")).await;
    if code == 404 {
        return Value::Null;
    }
    assert_eq!(code, 200, "{body}");
    body
}

async fn wait_active(api: &Api, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let i = site_image(api, id).await;
        if i["status"] == "active" {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "image {id} not active at the site: {i}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn download(api: &Api, id: &str) -> Vec<u8> {
    let resp = api
        .http
        .get(format!("{}/image/v2/images/{id}/file", api.url))
        .header("X-Auth-Token", &api.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    resp.bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_images_reach_the_site_moving_only_new_chunks_and_resume_after_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let region_cfg = site_config("region.yaml");
    let cdata = dir.path().join("controller");
    let out = ControllerProcess::token(&region_cfg, &cdata, SITE);
    assert!(out.status.success());
    let join = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let controller = ControllerProcess::start(&region_cfg, &cdata);
    let relay = Relay::start(controller.quic.parse().unwrap(), LinkParams::default(), 7)
        .await
        .unwrap();
    let cfg = dir.path().join("site.yaml");
    let text = std::fs::read_to_string(site_config("vehicle-07.yaml")).unwrap()
        + &format!(
            "\nregion:\n  name: eu-central\n  address: {}\n  central_api: {}\n  join_token: {join}\n",
            relay.addr, controller.api
        );
    std::fs::write(&cfg, text).unwrap();
    let _agent = AgentProcess::start(&cfg, &dir.path().join("site"));
    wait_for(
        "the site comes online",
        Duration::from_secs(20),
        async || controller.site(SITE).await["availability"] == "online",
    )
    .await;
    let http = reqwest::Client::new();
    let auth = http
        .post(format!("{}/identity/v3/auth/tokens", controller.api))
        .json(&json!({"auth": {"identity": {"methods": ["password"],
            "password": {"user": {"name": "admin", "domain": {"id": "default"}, "password": controller.admin_token()}}}}}))
        .send()
        .await
        .unwrap();
    let token = auth.headers()["X-Subject-Token"]
        .to_str()
        .unwrap()
        .to_string();
    let region = Region {
        controller,
        token,
        http,
    };
    let api = Api::login(&_agent.url).await;

    // v1: all of it crosses.
    let v1 = random(16 << 20, 1);
    let id1 = region.publish("plc-os-v1", &v1).await;
    let got = wait_active(&api, &id1, Duration::from_secs(60)).await;
    let fetched1 = got["roost:fetched_bytes"].as_u64().unwrap();
    assert_eq!(got["size"], v1.len() as u64);
    assert_eq!(got["os_hash_value"], format!("{:x}", Sha256::digest(&v1)));
    assert!(fetched1 >= v1.len() as u64, "{fetched1}");
    assert_eq!(
        download(&api, &id1).await,
        v1,
        "the site serves the same bytes"
    );

    // v2, 5% changed: at most 10% of it crosses.
    let v2 = five_percent_changed(&v1, 2);
    let (down_before, _) = (region_down(&relay), ());
    let id2 = region.publish("plc-os-v2", &v2).await;
    let got = wait_active(&api, &id2, Duration::from_secs(60)).await;
    let fetched2 = got["roost:fetched_bytes"].as_u64().unwrap();
    let wire2 = region_down(&relay) - down_before;
    println!(
        "v2 ({} bytes, 5% changed): {fetched2} chunk bytes fetched ({:.1}%), {wire2} bytes on the wire ({:.1}%)",
        v2.len(),
        fetched2 as f64 * 100.0 / v2.len() as f64,
        wire2 as f64 * 100.0 / v2.len() as f64
    );
    assert!(fetched2 * 10 <= v2.len() as u64, "{fetched2}");
    assert!(wire2 * 10 <= v2.len() as u64, "{wire2} bytes on the wire");
    assert_eq!(download(&api, &id2).await, v2);

    // v3, all new, over a 24 Mbit/s link cut half way.
    relay.set(LinkParams {
        rate_bps: Some(24_000_000),
        ..LinkParams::default()
    });
    let v3 = random(24 << 20, 3);
    let down_before = region_down(&relay);
    let id3 = region.publish("plc-os-v3", &v3).await;
    wait_for(
        "half the image on the wire",
        Duration::from_secs(60),
        async || region_down(&relay) - down_before >= v3.len() as u64 / 2,
    )
    .await;
    relay.cut(true);
    let at_cut = region_down(&relay) - down_before;
    // Not cached: a server from it is refused, naming the image.
    let (code, body) = api.create_server("plc-3", "1", &id3).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.to_string().contains("not cached at this site"),
        "{body}"
    );
    // The site notices the cut (QUIC idle timeout) and keeps what it got.
    wait_for(
        "the site to give up the cut transfer",
        Duration::from_secs(30),
        async || {
            let i = site_image(&api, &id3).await;
            i["status"] == "queued" && i["roost:fetched_bytes"].as_u64().unwrap_or(0) > 0
        },
    )
    .await;
    let first = site_image(&api, &id3).await["roost:fetched_bytes"]
        .as_u64()
        .unwrap();
    relay.cut(false);
    let got = wait_active(&api, &id3, Duration::from_secs(90)).await;
    let total = got["roost:fetched_bytes"].as_u64().unwrap();
    let wire3 = region_down(&relay) - down_before;
    println!(
        "v3 ({} bytes) cut at {at_cut} wire bytes: {first} chunk bytes before the cut, {total} in all; {wire3} bytes on the wire",
        v3.len()
    );
    assert!(first < v3.len() as u64, "the cut came before the end");
    assert!(
        total <= v3.len() as u64 + (256 << 10),
        "nothing that arrived was sent again: {total} for {}",
        v3.len()
    );
    assert!(
        wire3 <= v3.len() as u64 * 11 / 10,
        "{wire3} bytes on the wire for {}",
        v3.len()
    );
    assert_eq!(download(&api, &id3).await, v3);
    // Cached now: a server from it is accepted.
    let (code, body) = api.create_server("plc-3", "1", &id3).await;
    assert_eq!(code, 202, "{body}");
}

/// Bytes the relay delivered from the controller to the site.
fn region_down(relay: &Relay) -> u64 {
    relay.bytes().1
}
