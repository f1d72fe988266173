//! Helpers for Roost's cross-process tests and benchmarks: build and start
//! the real binaries, talk to them over real HTTP, look at their real SQLite
//! files.
//!
//! Tests live in `tests/tests/` (run by `cargo test`), benchmarks in
//! `tests/benches/` (run by `cargo bench -p roost-tests`). Nothing here fakes
//! a part of Roost.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod browser;
pub mod guest;
pub mod images;
pub mod link;
pub mod netns;
pub mod region;
pub mod sim;

/// The admin password tests give agents through `ROOST_ADMIN_PASSWORD`.
pub const ADMIN_PASSWORD: &str = "test-password-1";

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A file under `site-configs/`.
pub fn site_config(name: &str) -> PathBuf {
    repo_root().join("site-configs").join(name)
}

/// Path of a workspace binary built with the same profile as this test,
/// building it first (once per process) so it is never stale.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let release = !cfg!(debug_assertions);
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(repo_root())
            .args(["build", "--quiet", "--bins"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("cargo build --bins failed: {status}"))
        }
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    warn_if_disk_nearly_full();
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Says so, once per test process, when the disk under the temporary
/// directory (where tests keep their sites' data) is past the sites'
/// default disk alarm line: every agent there raises
/// `storage.disk_nearly_full`, and tests that count alarms or fill disks
/// then fail for a reason of the machine's, not of Roost's.
fn warn_if_disk_nearly_full() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let tmp = std::env::temp_dir();
        let Ok(st) = rustix::fs::statvfs(&tmp) else {
            return;
        };
        // As `df` and the agent's alarm count it.
        let taken = st.f_blocks.saturating_sub(st.f_bfree);
        let Some(used) = (taken.saturating_mul(100)).checked_div(taken + st.f_bavail) else {
            return;
        };
        if used >= 90 {
            eprintln!(
                "WARNING: the disk holding {} is {used}% full; sites under test will raise \
                 storage.disk_nearly_full and tests may fail for want of space. Free space \
                 (old target/ directories are the usual culprit) and run again.",
                tmp.display()
            );
        }
    });
}

/// A running `roost-agent` process.
#[derive(Debug)]
pub struct AgentProcess {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    /// Time from spawn to the banner naming the API URL.
    pub started_in: Duration,
}

impl AgentProcess {
    /// Starts `roost-agent run` on an ephemeral port and waits until it
    /// prints its API URL.
    pub fn start(config: &Path, data_dir: &Path) -> AgentProcess {
        Self::start_with(
            Command::new(binary("roost-agent")),
            config,
            data_dir,
            "127.0.0.1:0",
        )
    }

    /// As [`Self::start`], run by `cmd` (e.g. inside a network namespace)
    /// with the API on `listen`.
    pub fn start_with(
        mut cmd: Command,
        config: &Path,
        data_dir: &Path,
        listen: &str,
    ) -> AgentProcess {
        let t = Instant::now();
        let mut child = cmd
            .args(["run", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api-listen", listen])
            .env("ROOST_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn roost-agent");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.trim().strip_prefix("API") {
                        break rest.trim().to_string();
                    }
                }
                _ => {
                    let status = child.wait().expect("wait");
                    panic!("roost-agent exited before serving: {status}");
                }
            }
        };
        // Keep draining stdout so the agent never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        AgentProcess {
            child,
            url,
            data_dir: data_dir.into(),
            config: config.into(),
            started_in: t.elapsed(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait")
    }

    /// Resident memory of the process, from /proc, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("roost-agent.db")
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` (every 100 ms) until it is true; fails the test naming `what`
/// if that takes longer than `within`.
pub async fn wait_for(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One sample of a Prometheus metric at `url` (`name` with its labels as
/// rendered, e.g. `m{outcome="failed"}`); `None` if unreachable or absent.
pub async fn metric(url: &str, name: &str) -> Option<String> {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")).map(str::to_string))
}

/// How long after `from` the region marked a site's availability as it is
/// now: its own `availability_since`, read from the site's view (so a slow
/// poll on a busy machine does not count).
pub fn changed_after(site: &Value, from: chrono::DateTime<chrono::Utc>) -> Duration {
    let since = site["availability_since"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("no availability_since in {site}"));
    (since.with_timezone(&chrono::Utc) - from)
        .to_std()
        .unwrap_or_default()
}

/// Resident memory of a process, in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time a process has used (user + system), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13
    // after the state field that follows ')'.
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// A running `roost-controller serve` on ephemeral ports.
#[derive(Debug)]
pub struct ControllerProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub api: String,
    /// The QUIC endpoint sites connect to.
    pub quic: String,
    pub data_dir: PathBuf,
}

impl ControllerProcess {
    /// Starts the controller with `config` and waits for its banner.
    pub fn start(config: &Path, data_dir: &Path) -> ControllerProcess {
        Self::start_logging(config, data_dir, "warn")
    }

    /// As [`Self::start`], logging at `level` (benchmarks use `error`).
    pub fn start_logging(config: &Path, data_dir: &Path, level: &str) -> ControllerProcess {
        Self::start_at(config, data_dir, level, "127.0.0.1:0", "127.0.0.1:0")
    }

    /// As [`Self::start`], with the API and QUIC on the addresses given.
    pub fn start_at(
        config: &Path,
        data_dir: &Path,
        level: &str,
        api: &str,
        quic: &str,
    ) -> ControllerProcess {
        let mut child = Command::new(binary("roost-controller"))
            .args(["serve", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--api-listen", api, "--quic-listen", quic])
            .env("RUST_LOG", level)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn roost-controller");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut api, mut quic) = (None, None);
        while api.is_none() || quic.is_none() {
            match lines.next() {
                Some(Ok(line)) => {
                    let line = line.trim().to_string();
                    if let Some(rest) = line.strip_prefix("API") {
                        api = Some(rest.trim().to_string());
                    } else if let Some(rest) = line.strip_prefix("QUIC") {
                        quic = rest.split_whitespace().next().map(str::to_string);
                    }
                }
                _ => {
                    let status = child.wait().expect("wait");
                    panic!("roost-controller exited before serving: {status}");
                }
            }
        }
        std::thread::spawn(move || for _ in lines {});
        ControllerProcess {
            child,
            api: api.expect("api"),
            quic: quic.expect("quic"),
            data_dir: data_dir.into(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The controller's SQLite store.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("roost-controller.db")
    }

    /// A Keystone token signed by the region (`rgt1`) for its admin, as
    /// `openstack token issue` against the controller gets it: sites check
    /// it with the region's public key, offline too.
    pub async fn region_token(&self) -> (String, Value) {
        let (code, body, token) =
            auth(&reqwest::Client::new(), &self.api, &self.admin_token()).await;
        assert_eq!(code, 201, "region login: {body}");
        (token.expect("X-Subject-Token"), body)
    }

    /// `GET /roost/v1/sites/{site}/servers`: the region's copy of the
    /// site's servers (intent and the status the site last reported).
    pub async fn servers(&self, site: &str) -> Vec<Value> {
        let (code, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/sites/{site}/servers"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{body}");
        body["servers"].as_array().cloned().unwrap_or_default()
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait")
    }

    /// `roost-controller token create` against this controller's store.
    pub fn token(config: &Path, data_dir: &Path, site: &str) -> std::process::Output {
        Command::new(binary("roost-controller"))
            .args(["token", "create", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--site-id", site])
            .output()
            .expect("run roost-controller token create")
    }

    /// The region's admin token (made by `serve` in the data dir).
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin.token in the controller's data dir")
            .trim()
            .to_string()
    }

    /// A call to the fleet operator's API (`/roost/v1/...`) with the admin
    /// token: the status code and the JSON body (`null` if none).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}/roost/v1{path}", self.api))
            .bearer_auth(self.admin_token());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("controller API call");
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `GET /roost/v1/sites/{site}`: the site as the region shows it.
    pub async fn site(&self, site: &str) -> Value {
        let (code, body) = self
            .call(reqwest::Method::GET, &format!("/sites/{site}"), None)
            .await;
        assert_eq!(code, 200, "GET /roost/v1/sites/{site}: {body}");
        body["site"].clone()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A site in a region: its agent, enrolled with a join token and linked to
/// the controller's QUIC port through its own link emulator, and the site
/// admin's API client.
#[derive(Debug)]
pub struct SiteProcess {
    pub agent: AgentProcess,
    pub relay: link::Relay,
    pub api: Api,
}

/// Starts site `id` from `site-configs/<template>` (the template's own id
/// replaced by `id`), enrolled with `controller` over a link with `params`
/// (`seed` drives its losses), its data under `dir/<id>`.
pub async fn start_site(
    dir: &Path,
    region_cfg: &Path,
    controller: &ControllerProcess,
    id: &str,
    template: &str,
    seed: u64,
    params: link::LinkParams,
) -> SiteProcess {
    let quic: std::net::SocketAddr = controller.quic.parse().expect("QUIC address");
    let relay = link::Relay::start(quic, params, seed)
        .await
        .expect("link emulator");
    let out = ControllerProcess::token(region_cfg, &controller.data_dir, id);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout)
        .expect("token")
        .trim()
        .to_string();
    let text = std::fs::read_to_string(site_config(template))
        .expect("site config template")
        .replace(template.trim_end_matches(".yaml"), id)
        + &format!(
            "\nregion:\n  name: eu-central\n  address: {}\n  central_api: {}\n  join_token: {token}\n",
            relay.addr, controller.api
        );
    let cfg = dir.join(format!("{id}.yaml"));
    std::fs::write(&cfg, text).expect("write site config");
    let agent = AgentProcess::start(&cfg, &dir.join(id));
    let api = Api::login(&agent.url).await;
    SiteProcess { agent, relay, api }
}

/// A small API client: a token and the OpenStack shapes tests need.
#[derive(Debug, Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
    /// The token's project (the admin project).
    pub project: String,
}

/// A status code and JSON body.
pub type Reply = (u16, Value);

impl Api {
    /// Logs in as the bootstrap admin.
    pub async fn login(url: &str) -> Api {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("client");
        let (code, body, token) = auth(&http, url, ADMIN_PASSWORD).await;
        assert_eq!(code, 201, "login failed");
        Api {
            http,
            url: url.into(),
            token: token.expect("X-Subject-Token"),
            project: body["token"]["project"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// A client for `url` that sends `token` (e.g. a region token at a
    /// site), scoped to `project`.
    pub fn with_token(url: &str, token: &str, project: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            url: url.into(),
            token: token.into(),
            project: project.into(),
        }
    }

    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header("X-Auth-Token", &self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    /// `POST /servers`; the reply as is.
    pub async fn create_server(&self, name: &str, flavor: &str, image: &str) -> Reply {
        self.post(
            "/compute/v2.1/servers",
            json!({"server": {"name": name, "flavorRef": flavor, "imageRef": image}}),
        )
        .await
    }

    /// Every server of every project, with detail.
    pub async fn servers(&self) -> Vec<Value> {
        let (code, body) = self.get("/compute/v2.1/servers/detail?all_tenants=1").await;
        assert_eq!(code, 200, "{body}");
        body["servers"].as_array().cloned().unwrap_or_default()
    }

    pub async fn hypervisors(&self) -> Vec<Value> {
        let (code, body) = self.get("/compute/v2.1/os-hypervisors/detail").await;
        assert_eq!(code, 200, "{body}");
        body["hypervisors"].as_array().cloned().unwrap_or_default()
    }

    /// Cinder's path for the token's project: `/volume/v3/{project}{rest}`.
    pub fn volume_path(&self, rest: &str) -> String {
        format!("/volume/v3/{}{rest}", self.project)
    }

    /// Polls a volume until its status is `want` (or it is gone, for
    /// `want == "GONE"`), for up to `within`.
    pub async fn wait_volume(&self, id: &str, want: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (code, body) = self.get(&self.volume_path(&format!("/volumes/{id}"))).await;
            let status = if code == 404 {
                "GONE".to_string()
            } else {
                body["volume"]["status"].as_str().unwrap_or("").to_string()
            };
            if status == want {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "volume {id} is {status} ({code}), not {want}, after {within:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls a server until its Nova status is `want` (or it is gone, for
    /// `want == "GONE"`), for up to `within`.
    pub async fn wait_status(&self, id: &str, want: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (code, body) = self.get(&format!("/compute/v2.1/servers/{id}")).await;
            let status = if code == 404 {
                "GONE".to_string()
            } else {
                body["server"]["status"].as_str().unwrap_or("").to_string()
            };
            if status == want {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "server {id} is {status} ({code}), not {want}, after {within:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `POST /identity/v3/auth/tokens` for the admin: status, body, token.
pub async fn auth(
    http: &reqwest::Client,
    url: &str,
    password: &str,
) -> (u16, Value, Option<String>) {
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}});
    auth_with(http, url, &body).await
}

/// `POST /identity/v3/auth/tokens` with `body`: status, body, token.
pub async fn auth_with(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> (u16, Value, Option<String>) {
    let resp = http
        .post(format!("{url}/identity/v3/auth/tokens"))
        .json(&body)
        .send()
        .await
        .expect("auth request");
    let code = resp.status().as_u16();
    let token = resp
        .headers()
        .get("X-Subject-Token")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = resp.json().await.unwrap_or(Value::Null);
    (code, body, token)
}

/// Checks a store file after a crash: SQLite's integrity check, that every
/// server has exactly one claim and every claim a server, and that the
/// site's documents (snapshot and changes, as the agent loads them) hold
/// every server row with its status, and no server the rows lack. Returns
/// the number of servers.
pub fn check_store(db: &Path) -> usize {
    let conn = rusqlite::Connection::open(db).expect("open store");
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(integrity, "ok", "PRAGMA integrity_check");
    let orphans: i64 = conn
        .query_row(
            "SELECT (SELECT COUNT(*) FROM servers s WHERE s.host IS NOT NULL
                        AND json_extract(s.status, '$.vm_state') <> 'error'
                        AND NOT EXISTS (SELECT 1 FROM allocations a WHERE a.consumer_id = s.id))
                  + (SELECT COUNT(*) FROM allocations a WHERE NOT EXISTS (SELECT 1 FROM servers s WHERE s.id = a.consumer_id))",
            [],
            |r| r.get(0),
        )
        .expect("orphan query");
    assert_eq!(
        orphans, 0,
        "servers without claims or claims without servers"
    );
    let fk: i64 = conn
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .expect("fk check");
    assert_eq!(fk, 0, "foreign key violations");
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM servers ORDER BY id")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("server ids");
    let chunks = |doc: &str| -> Vec<Vec<u8>> {
        conn.prepare(
            "SELECT bytes FROM (SELECT 0 AS seq, bytes FROM sync_snapshots WHERE doc = ?1
                                UNION ALL SELECT seq, bytes FROM sync_changes WHERE doc = ?1) ORDER BY seq",
        )
        .and_then(|mut s| s.query_map([doc], |r| r.get(0))?.collect())
        .expect("document chunks")
    };
    let intent = chunks("intent");
    let intent =
        roost_sync::IntentDoc::from_chunks(intent.iter().map(Vec::as_slice), b"check", "check")
            .expect("intent document loads");
    let status = chunks("status");
    let status = roost_sync::StatusDoc::from_chunks(status.iter().map(Vec::as_slice), b"check")
        .expect("status document loads");
    let mut in_doc = intent.ids("servers").expect("ids");
    // Deleted servers stay in intent as tombstones; their rows are gone.
    in_doc.retain(|id| {
        !intent
            .resource("servers", id)
            .expect("resource")
            .expect("listed")
            .deleted
            || ids.contains(id)
    });
    in_doc.sort();
    assert_eq!(in_doc, ids, "intent document and server rows disagree");
    for id in &ids {
        assert!(
            status.get("servers", id).expect("status").is_some(),
            "server {id} has no status in the document"
        );
    }
    ids.len()
}

/// Document changes the controller's store holds for `site`.
pub fn changes_stored(db: &Path, site: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).expect("open the controller's store");
    conn.query_row(
        "SELECT COUNT(*) FROM site_changes WHERE site = ?1",
        [site],
        |r| r.get(0),
    )
    .expect("count site_changes")
}

/// The `p`th percentile (0-100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}
