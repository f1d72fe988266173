//! Edge high availability across real processes (issue 11, item 5): a site
//! with two controller nodes, each an agent in its own network namespace,
//! joined by a veth pair that carries the peer link. Both hold the site's
//! one region credential. The active is killed with SIGKILL; the standby
//! serves the same site within 5 s, the region sees one site, and the old
//! active comes back as the new active's standby.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde_json::{json, Value};

use roost_tests::netns::{ip, SiteNet};
use roost_tests::{binary, metric, wait_for, AgentProcess, Api, ControllerProcess, ADMIN_PASSWORD};

const SITE: &str = "edge-ha-01";
const IMAGE: &str = "11111111-2222-4333-8444-555555555555";
const API_PORT: u16 = 8781;

/// A node's config: the region reached through its namespace's host side,
/// and with `ha` its end of the peer link.
fn node_config(net: &SiteNet, ctl: &ControllerProcess, join: Option<&str>, ha: &str) -> String {
    let port = |url: &str| {
        url.rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('/')
            .to_string()
    };
    let mut text = format!(
        "site: {{id: {SITE}, name: HA pair}}\n\
         api: {{listen: \"0.0.0.0:{API_PORT}\"}}\n\
         compute: {{driver: record-only}}\n\
         alarms: {{host_down_after_secs: 4}}\n\
         hosts:\n\
         \x20 - {{name: controller-0, roles: [controller, compute], vcpus: 8, ram_mb: 16384, disk_gb: 100}}\n\
         \x20 - {{name: controller-1, roles: [controller, compute], vcpus: 8, ram_mb: 16384, disk_gb: 100}}\n\
         flavors:\n\
         \x20 - {{name: m1.tiny, id: \"1\", vcpus: 1, ram_mb: 512, disk_gb: 1}}\n\
         images:\n\
         \x20 - {{name: cirros, id: {IMAGE}, disk_format: qcow2}}\n\
         region:\n\
         \x20 name: eu-central\n\
         \x20 address: \"{host}:{quic}\"\n\
         \x20 central_api: http://{host}:{api}\n",
        host = net.host_ip,
        quic = port(&ctl.quic),
        api = port(&ctl.api),
    );
    if let Some(token) = join {
        text += &format!("  join_token: {token}\n");
    }
    text + ha
}

fn ha_section(node: &str, peer: &str, me: &str, other: &str) -> String {
    format!(
        "ha: {{node: {node}, peer_name: {peer}, listen: \"{me}:7445\", peer: \"{other}:7445\"}}\n"
    )
}

/// A node started without waiting for its API: a standby serves none.
/// Its API URL arrives on `url` once it is active.
struct Node {
    child: Child,
    url: mpsc::Receiver<String>,
    data: PathBuf,
}

impl Node {
    fn spawn(net: &SiteNet, config: &Path, data: &Path) -> Node {
        let mut child = net
            .command(&binary("roost-agent"))
            .args(["run", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .env("ROOST_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("RUST_LOG", "roost_edge_agent::ha=info,warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn roost-agent");
        let stdout = child.stdout.take().unwrap();
        let (tx, url) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.trim().strip_prefix("API") {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        Node {
            child,
            url,
            data: data.into(),
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The log's tip and the server names in this node's store.
    fn held(&self) -> (i64, Vec<String>) {
        let db = self.data.join("roost-agent.db");
        let c = Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the node's store");
        let tip = c
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM replication_log",
                [],
                |r| r.get(0),
            )
            .expect("the log's tip");
        let names = c
            .prepare("SELECT json_extract(spec, '$.name') FROM servers ORDER BY 1")
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .expect("the servers");
        (tip, names)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Names in a list body, sorted.
fn names(body: &Value, key: &str) -> Vec<String> {
    let mut v: Vec<String> = body[key]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|x| x["name"].as_str().map(String::from))
        .collect();
    v.sort();
    v
}

/// What the site holds, as its API shows it to `api`.
async fn state(api: &Api) -> Vec<Vec<String>> {
    let servers = api.get("/compute/v2.1/servers").await;
    let networks = api.get("/network/v2.0/networks").await;
    let volumes = api.get(&api.volume_path("/volumes")).await;
    let users = api.get("/identity/v3/users").await;
    for (code, body) in [&servers, &networks, &volumes, &users] {
        assert_eq!(*code, 200, "{body}");
    }
    vec![
        names(&servers.1, "servers"),
        names(&networks.1, "networks"),
        names(&volumes.1, "volumes"),
        names(&users.1, "users"),
    ]
}

/// An agent's banner URL as the test, outside its namespace, reaches it.
fn reachable(url: &str, net: &SiteNet) -> String {
    url.replace("127.0.0.1", &net.site_ip.to_string())
}

/// Whether the node at `api` has an open `ha.standby_missing` alarm.
async fn standby_missing(api: &Api) -> bool {
    api.get("/roost/v1/alarms").await.1["alarms"]
        .as_array()
        .is_some_and(|a| {
            a.iter().any(|a| {
                a["code"] == "ha.standby_missing"
                    && a["entity"] == "node=controller-0"
                    && a["cleared_at"].is_null()
            })
        })
}

/// Waits until the active at `url` says whether a standby is attached.
async fn attached(url: &str, want: &str, what: &str) {
    wait_for(what, Duration::from_secs(30), async || {
        metric(url, "roost_agent_ha_standby_attached")
            .await
            .as_deref()
            == Some(want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standby_serves_the_same_site_within_5_s_of_the_actives_kill() {
    let dir = tempfile::tempdir().unwrap();
    let (net_a, net_b) = (SiteNet::new(), SiteNet::new());
    // The peer link: a veth pair straight between the two namespaces.
    ip(&[
        "-n",
        &net_a.name,
        "link",
        "add",
        "ha0",
        "type",
        "veth",
        "peer",
        "name",
        "ha0",
        "netns",
        &net_b.name,
    ]);
    for (net, addr) in [(&net_a, "192.168.77.1/30"), (&net_b, "192.168.77.2/30")] {
        ip(&["-n", &net.name, "addr", "add", addr, "dev", "ha0"]);
        ip(&["-n", &net.name, "link", "set", "ha0", "up"]);
    }
    let region_cfg = dir.path().join("region.yaml");
    std::fs::write(
        &region_cfg,
        format!("region: {{name: eu-central}}\napi: {{listen: 127.0.0.1:7443}}\nquic: {{listen: 127.0.0.1:7444}}\noffline_after_secs: 8\nsites:\n  - {{id: {SITE}}}\n"),
    )
    .unwrap();
    let ctl = ControllerProcess::start_at(
        &region_cfg,
        &dir.path().join("controller"),
        "warn",
        "0.0.0.0:0",
        "0.0.0.0:0",
    );
    let (data_a, data_b) = (dir.path().join("a"), dir.path().join("b"));

    // Enroll the site once, from node a, as a lone node.
    let out = ControllerProcess::token(&region_cfg, &ctl.data_dir, SITE);
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let lone = dir.path().join("lone.yaml");
    std::fs::write(&lone, node_config(&net_a, &ctl, Some(&token), "")).unwrap();
    let mut first = AgentProcess::start_with(
        net_a.command(&binary("roost-agent")),
        &lone,
        &data_a,
        &format!("0.0.0.0:{API_PORT}"),
    );
    let first_url = reachable(&first.url, &net_a);
    wait_for("the site to enroll", Duration::from_secs(30), async || {
        metric(&first_url, "roost_agent_uplink_connected")
            .await
            .as_deref()
            == Some("1")
    })
    .await;
    assert!(first.terminate().success());
    // The installer copies the credential to the second node.
    std::fs::create_dir_all(data_b.join("pki")).unwrap();
    for f in std::fs::read_dir(data_a.join("pki")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), data_b.join("pki").join(f.file_name())).unwrap();
    }

    let cfg_a = dir.path().join("a.yaml");
    let cfg_b = dir.path().join("b.yaml");
    let ha_a = ha_section(
        "controller-0",
        "controller-1",
        "192.168.77.1",
        "192.168.77.2",
    );
    let ha_b = ha_section(
        "controller-1",
        "controller-0",
        "192.168.77.2",
        "192.168.77.1",
    );
    std::fs::write(&cfg_a, node_config(&net_a, &ctl, None, &ha_a)).unwrap();
    std::fs::write(&cfg_b, node_config(&net_b, &ctl, None, &ha_b)).unwrap();

    // a alone: it waits for an active peer, then takes over.
    let mut a = Node::spawn(&net_a, &cfg_a, &data_a);
    let url_a = a
        .url
        .recv_timeout(Duration::from_secs(30))
        .expect("a serves");
    let url_a = reachable(&url_a, &net_a);
    let b = Node::spawn(&net_b, &cfg_b, &data_b);
    attached(&url_a, "1", "b to hold a's store as its standby").await;
    assert!(b.url.try_recv().is_err(), "a standby does not serve");

    // Writes of every kind on a, each acknowledged.
    let api = Api::login(&url_a).await;
    for i in 0..5 {
        let (code, body) = api.create_server(&format!("plc-{i}"), "1", IMAGE).await;
        assert_eq!(code, 202, "{body}");
    }
    let (code, body) = api
        .post(
            "/network/v2.0/networks",
            json!({"network": {"name": "cell-a"}}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = api
        .post(
            &api.volume_path("/volumes"),
            json!({"volume": {"size": 1, "name": "historian"}}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let (code, body) = api
        .post(
            "/identity/v3/users",
            json!({"user": {"name": "operator", "password": "line-2-secret", "enabled": true}}),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let before = state(&api).await;
    assert_eq!(before[0].len(), 5);
    // Every acknowledged write is already in b's store.
    let (tip_a, servers_a) = a.held();
    let (tip_b, servers_b) = b.held();
    assert_eq!(servers_a.len(), 5, "{servers_a:?}");
    assert_eq!(servers_b, servers_a, "b holds every acknowledged server");
    assert!(
        tip_b >= tip_a - 1,
        "b is at most one background batch behind: {tip_b} vs {tip_a}"
    );

    let sent = metric(&url_a, "roost_agent_ha_sent_bytes_total")
        .await
        .unwrap_or_default();

    // SIGKILL the active; the standby serves the same site within 5 s.
    let killed = Instant::now();
    a.kill9();
    let url_b = b
        .url
        .recv_timeout(Duration::from_secs(20))
        .expect("b takes over");
    let url_b = reachable(&url_b, &net_b);
    let on_b = Api::with_token(&url_b, &api.token, &api.project);
    wait_for(
        "b's API to answer with a's token",
        Duration::from_secs(10),
        async || on_b.get("/compute/v2.1/servers").await.0 == 200,
    )
    .await;
    let took = killed.elapsed();
    let after = state(&on_b).await;
    let lost = before
        .iter()
        .zip(&after)
        .map(|(was, now)| was.iter().filter(|n| !now.contains(n)).count())
        .sum::<usize>();
    println!(
        "edge HA: the standby served {took:.2?} after the active's SIGKILL (goal: 5 s); \
         the active had sent it {sent} bytes; acknowledged writes lost: {lost}"
    );
    assert!(took < Duration::from_secs(5), "took over in {took:?}");
    assert_eq!(lost, 0);
    assert_eq!(after, before, "same servers, networks, volumes, users");

    // The region sees one site, in sync, from the new active.
    wait_for(
        "the region to see the site in sync",
        Duration::from_secs(60),
        async || {
            let v = ctl.site(SITE).await;
            v["availability"] == "online" && v["sync"]["status"] == "in-sync"
        },
    )
    .await;
    let (code, sites) = ctl.call(reqwest::Method::GET, "/sites", None).await;
    assert_eq!(code, 200, "{sites}");
    assert_eq!(sites["sites"].as_array().map(Vec::len), Some(1), "{sites}");

    // b runs without a standby: raised as an alarm after the wait.
    wait_for(
        "b to raise ha.standby_missing",
        Duration::from_secs(30),
        async || standby_missing(&on_b).await,
    )
    .await;

    // b writes on; a comes back as b's standby and catches up.
    let (code, body) = on_b.create_server("plc-after", "1", IMAGE).await;
    assert_eq!(code, 202, "{body}");
    let a = Node::spawn(&net_a, &cfg_a, &data_a);
    attached(&url_b, "1", "a to catch up as b's standby").await;
    wait_for(
        "b to clear ha.standby_missing",
        Duration::from_secs(30),
        async || !standby_missing(&on_b).await,
    )
    .await;
    let (_, servers) = a.held();
    assert!(servers.contains(&"plc-after".to_string()), "{servers:?}");
    assert_eq!(servers, b.held().1);
    assert!(
        a.url.try_recv().is_err(),
        "a serves nothing while b is active"
    );

    // The standby dies and comes back while nothing is written: it holds
    // b's tip already, and counts as attached again without a write.
    let mut a = a;
    a.kill9();
    attached(&url_b, "0", "b to see its standby gone").await;
    let tip = b.held().0;
    let a = Node::spawn(&net_a, &cfg_a, &data_a);
    attached(&url_b, "1", "a to attach again, caught up").await;
    assert_eq!(b.held().0, tip, "attached without a new write");
    assert_eq!(a.held().0, tip);
    assert_eq!(
        on_b.get("/compute/v2.1/servers").await.0,
        200,
        "b serves on"
    );
}
