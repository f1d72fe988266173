//! A region and one site joined by the link emulator, for moving images:
//! the real controller and agent, the controller's Glance to make images
//! for the site, the site's Glance to watch them arrive. Used by
//! `tests/image_transfer.rs` and `benches/image_transfer.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};

use crate::link::{LinkParams, Relay};
use crate::{site_config, wait_for, AgentProcess, Api, ControllerProcess};

/// The site of `site-configs/vehicle-07.yaml`.
pub const SITE: &str = "vehicle-07";

/// `n` seeded random bytes.
pub fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// `base` with about 5% of its bytes overwritten, in 64 KiB runs at random
/// places; also the number of bytes the runs cover (overlaps counted once).
pub fn five_percent_changed(base: &[u8], seed: u64) -> (Vec<u8>, u64) {
    let mut v = base.to_vec();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let run = 64 << 10;
    let mut runs = Vec::new();
    for _ in 0..(base.len() / 20) / run {
        let at = rng.random_range(0..v.len() - run);
        rng.fill_bytes(&mut v[at..at + run]);
        runs.push(at);
    }
    runs.sort_unstable();
    let mut covered = 0u64;
    let mut end = 0usize;
    for at in runs {
        let start = at.max(end);
        if at + run > start {
            covered += (at + run - start) as u64;
        }
        end = end.max(at + run);
    }
    (v, covered)
}

/// A controller, a relay and an agent whose region link runs through it.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub controller: ControllerProcess,
    pub relay: Relay,
    pub agent: AgentProcess,
    /// The site's API as its admin.
    pub site: Api,
    /// A region token for the controller's OpenStack face.
    pub token: String,
    pub http: reqwest::Client,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("controller", &self.controller.api)
            .field("relay", &self.relay.addr)
            .field("site", &self.agent.url)
            .finish()
    }
}

impl Harness {
    /// Starts everything with the link as `params`; returns once the site
    /// is online.
    pub async fn start(params: LinkParams) -> Harness {
        Harness::start_with(params, |_| String::new()).await
    }

    /// As [`Harness::start`], with `extra(dir)` (YAML; `dir` is the
    /// harness's temporary directory) added to the site's config.
    pub async fn start_with(params: LinkParams, extra: impl FnOnce(&Path) -> String) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let region_cfg = site_config("region.yaml");
        let cdata = dir.path().join("controller");
        let out = ControllerProcess::token(&region_cfg, &cdata, SITE);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let join = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let controller = ControllerProcess::start(&region_cfg, &cdata);
        let relay = Relay::start(controller.quic.parse().unwrap(), params, 7)
            .await
            .unwrap();
        let cfg = dir.path().join("site.yaml");
        let text = std::fs::read_to_string(site_config("vehicle-07.yaml")).unwrap()
            + &format!(
                "\nregion:\n  name: eu-central\n  address: {}\n  central_api: {}\n  join_token: {join}\n",
                relay.addr, controller.api
            )
            + &extra(dir.path());
        std::fs::write(&cfg, text).unwrap();
        let agent = AgentProcess::start(&cfg, &dir.path().join("site"));
        wait_for(
            "the site comes online",
            Duration::from_secs(30),
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
        assert_eq!(auth.status().as_u16(), 201);
        let token = auth.headers()["X-Subject-Token"]
            .to_str()
            .unwrap()
            .to_string();
        let site = Api::login(&agent.url).await;
        Harness {
            dir,
            controller,
            relay,
            agent,
            site,
            token,
            http,
        }
    }

    fn glance(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(
                method,
                format!("{}/sites/{SITE}/image/v2{path}", self.controller.api),
            )
            .header("X-Auth-Token", &self.token)
    }

    /// Makes a raw image for the site at the controller and uploads its
    /// bytes there; returns its id once the region holds them.
    pub async fn publish(&self, name: &str, data: Vec<u8>) -> String {
        let resp = self
            .glance(reqwest::Method::POST, "/images")
            .json(&json!({"name": name, "disk_format": "raw", "container_format": "bare", "visibility": "public"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], "queued", "{body}");
        let id = body["id"].as_str().unwrap().to_string();
        let resp = self
            .glance(reqwest::Method::PUT, &format!("/images/{id}/file"))
            .header("Content-Type", "application/octet-stream")
            .body(data)
            .send()
            .await
            .unwrap();
        let code = resp.status().as_u16();
        assert_eq!(code, 204, "{}", resp.text().await.unwrap_or_default());
        let shown: Value = self
            .glance(reqwest::Method::GET, &format!("/images/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            ["importing", "active"].contains(&shown["status"].as_str().unwrap_or_default()),
            "the region shows the image on its way: {shown}"
        );
        id
    }

    /// Withdraws an image at the controller; the status code.
    pub async fn glance_delete(&self, id: &str) -> u16 {
        self.glance(reqwest::Method::DELETE, &format!("/images/{id}"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The image as the site's Glance shows it (`null` when absent).
    pub async fn site_image(&self, id: &str) -> Value {
        let (code, body) = self.site.get(&format!("/image/v2/images/{id}")).await;
        if code == 404 {
            return Value::Null;
        }
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Waits for the image to be active at the site; returns it.
    pub async fn wait_active(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let i = self.site_image(id).await;
            if i["status"] == "active" {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "image {id} not active at the site after {within:?}: {i}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The image's bytes as the site serves them.
    pub async fn download(&self, id: &str) -> Vec<u8> {
        let resp = self
            .site
            .http
            .get(format!("{}/image/v2/images/{id}/file", self.site.url))
            .header("X-Auth-Token", &self.site.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.bytes().await.unwrap().to_vec()
    }

    /// Bytes the link delivered from the region to the site.
    pub fn down_bytes(&self) -> u64 {
        self.relay.bytes().1
    }

    /// The site's data dir.
    pub fn site_data(&self) -> PathBuf {
        self.dir.path().join("site")
    }
}
