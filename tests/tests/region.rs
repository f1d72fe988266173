//! The real controller and the real agent: a site enrolls with a one-time
//! join token, syncs over QUIC, and is marked offline within the QUIC idle
//! timeout of going silent. Bad tokens and garbage on the QUIC port are
//! refused without harm.

use std::time::Duration;

use roost_tests::{changed_after, site_config, wait_for, AgentProcess, Api, ControllerProcess};
use serde_json::json;

const IMAGE: &str = "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a98";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_enrolls_syncs_and_goes_offline_when_silent() {
    let dir = tempfile::tempdir().unwrap();
    let region_cfg = site_config("region.yaml");
    let cdata = dir.path().join("controller");

    // Tokens only for the config's sites.
    let out = ControllerProcess::token(&region_cfg, &cdata, "nowhere-01");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--site-id") && err.contains("vehicle-07"),
        "{err}"
    );
    let out = ControllerProcess::token(&region_cfg, &cdata, "vehicle-07");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(token.starts_with("rjt1.vehicle-07."), "{token}");

    let controller = ControllerProcess::start(&region_cfg, &cdata);
    let http = reqwest::Client::new();
    // A malformed request spends nothing.
    let resp = http
        .post(format!("{}/v1/enroll", controller.api))
        .json(&json!({"token": token, "csr": "not a request"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("csr:"),
        "{body}"
    );

    // Garbage on the QUIC port harms nothing.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for n in [1usize, 20, 1200, 1500] {
        udp.send_to(&vec![0xAB; n], &controller.quic).unwrap();
    }

    // An agent that sent its request and was killed before it wrote the
    // certificate: the token is spent, but the same request (kept in its
    // pki dir) is answered again; another request with that token is not.
    let site_dir = dir.path().join("site");
    let pki = site_dir.join("pki");
    let asked = roost_sync::pki::Request::load_or_new("vehicle-07", &pki).unwrap();
    let enroll = async |csr: &str| {
        let resp = http
            .post(format!("{}/v1/enroll", controller.api))
            .json(&json!({"token": token, "csr": csr}))
            .send()
            .await
            .unwrap();
        let code = resp.status().as_u16();
        (code, resp.json::<serde_json::Value>().await.unwrap())
    };
    let (code, body) = enroll(&asked.csr_pem).await;
    assert_eq!(code, 200, "{body}");
    let other = roost_sync::pki::Request::new("vehicle-07").unwrap();
    let (code, body) = enroll(&other.csr_pem).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.to_string().contains("already used"), "{body}");
    assert!(pki.join(roost_sync::pki::PENDING_KEY_FILE).exists());

    let cfg = dir.path().join("vehicle-07.yaml");
    let text = std::fs::read_to_string(site_config("vehicle-07.yaml")).unwrap()
        + &format!(
            "\nregion:\n  name: eu-central\n  address: {}\n  central_api: {}\n  join_token: {token}\n",
            controller.quic, controller.api
        );
    std::fs::write(&cfg, text).unwrap();
    let mut agent = AgentProcess::start(&cfg, &site_dir);
    wait_for(
        "the site enrolls and comes online",
        Duration::from_secs(20),
        async || controller.site("vehicle-07").await["availability"] == "online",
    )
    .await;
    assert!(
        !pki.join(roost_sync::pki::PENDING_KEY_FILE).exists(),
        "the kept request is removed once the credential is written"
    );
    let site = controller.site("vehicle-07").await;
    assert_eq!(site["enrolled"], true, "{site}");
    assert_eq!(site["management"], "managed");
    assert!(site_dir.join("pki/identity.key").exists());

    // The token is spent.
    let resp = http
        .post(format!("{}/v1/enroll", controller.api))
        .json(&json!({"token": token, "csr": roost_sync::pki::Request::new("vehicle-07").unwrap().csr_pem}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], "token: already used");

    // A site write reaches the fleet store.
    let db = cdata.join("roost-controller.db");
    let before = roost_tests::changes_stored(&db, "vehicle-07");
    let api = Api::login(&agent.url).await;
    let (code, body) = api.create_server("cam-1", "2", IMAGE).await;
    assert_eq!(code, 202, "{body}");
    wait_for(
        "the site's change is stored in the region",
        Duration::from_secs(10),
        async || roost_tests::changes_stored(&db, "vehicle-07") > before,
    )
    .await;

    // Silent (kill -9): offline within the 10 s idle timeout.
    let killed = chrono::Utc::now();
    agent.kill9();
    wait_for(
        "the region marks the site offline",
        Duration::from_secs(30),
        async || controller.site("vehicle-07").await["availability"] == "offline",
    )
    .await;
    // The region's timestamp of the transition, against the kill: a slow
    // poll on a busy machine changes nothing here.
    let noticed = changed_after(&controller.site("vehicle-07").await, killed);
    eprintln!("offline noticed after {noticed:?}");
    assert!(noticed <= Duration::from_secs(10), "{noticed:?}");
    assert!(controller.site("vehicle-07").await["last_seen"].is_string());

    // The restarted site syncs again with the credential it kept.
    let _agent = AgentProcess::start(&cfg, &site_dir);
    wait_for(
        "the site comes back online",
        Duration::from_secs(20),
        async || controller.site("vehicle-07").await["availability"] == "online",
    )
    .await;
    let (_, alarms) = controller
        .call(reqwest::Method::GET, "/alarms?history=true", None)
        .await;
    // The region's own alarm about the site (the site's own, such as a disk
    // this machine filled, are another matter).
    let offline: Vec<&serde_json::Value> = alarms["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["code"] == "site.offline")
        .collect();
    assert_eq!(offline.len(), 1, "{alarms}");
    assert!(offline[0]["cleared_at"].is_string(), "{alarms}");

    // Stopping the controller is not the site going offline: no new alarm,
    // no offline mark in its history.
    let mut controller = controller;
    assert!(controller.terminate().success());
    let (store, _) = roost_controller::fleet::SqliteFleet::open(&cdata, "eu-central").unwrap();
    use roost_controller::fleet::FleetStore;
    let offline = store.alarms(None, true).unwrap();
    assert_eq!(
        offline.iter().filter(|a| a.code == "site.offline").count(),
        1
    );
    assert_eq!(
        store.availability_history("vehicle-07", 1).unwrap()[0].availability,
        "online"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_is_not_enrolled_is_refused_and_harms_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let region_cfg = site_config("region.yaml");
    let cdata = dir.path().join("controller");
    let controller = ControllerProcess::start(&region_cfg, &cdata);
    // A certificate from the region's own CA for a site that never spent a
    // join token (as a stolen CA key or a bug would make one).
    let key: String = rusqlite::Connection::open(cdata.join("roost-controller.db"))
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'ca_key'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let ca = roost_sync::pki::Ca::from_key_pem("eu-central", &key).unwrap();
    let cred = ca.issue_site("edge-factory-01").unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(roost_sync::transport::client_config(&cred).unwrap());
    let conn = client
        .connect(
            controller.quic.parse().unwrap(),
            &roost_sync::pki::region_server_name("eu-central"),
        )
        .unwrap()
        .await
        .expect("the TLS handshake itself succeeds");
    let hello = roost_sync::transport::Hello {
        name: "edge-factory-01".into(),
        version: "test".into(),
        protocol: roost_sync::frame::VERSION,
    };
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        roost_sync::transport::site_open(&conn, &hello),
    )
    .await
    .expect("the region answers");
    assert!(
        refused.is_err(),
        "an unenrolled site must not get a session"
    );
    let reason = conn
        .close_reason()
        .map(|r| r.to_string())
        .unwrap_or_default();
    assert!(reason.contains("unknown site"), "{reason}");
    let site = controller.site("edge-factory-01").await;
    assert_eq!(site["enrolled"], false);
    assert_eq!(site["availability"], "offline");
}

/// A site whose disk was replaced enrolls again with a new token and an
/// empty data dir, while the region still holds its old documents. It
/// must sync as the new site it is (its status from scratch, the region's
/// intent kept), not fight the old incarnation's history: before the fix
/// the two status histories (same actor, same sequence numbers) never
/// settled and the agent grew until the kernel killed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_lost_its_disk_enrolls_again_and_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let region_cfg = site_config("region.yaml");
    let cdata = dir.path().join("controller");
    let controller = ControllerProcess::start(&region_cfg, &cdata);
    let enroll = |n: u32| {
        let out = ControllerProcess::token(&region_cfg, &cdata, "vehicle-07");
        assert!(out.status.success());
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let cfg = dir.path().join(format!("vehicle-07-{n}.yaml"));
        let text = std::fs::read_to_string(site_config("vehicle-07.yaml")).unwrap()
            + &format!(
                "\nregion:\n  name: eu-central\n  address: {}\n  central_api: {}\n  join_token: {token}\n",
                controller.quic, controller.api
            );
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let in_sync = async || {
        let s = controller.site("vehicle-07").await;
        s["availability"] == "online" && s["sync"]["status"] == "in-sync"
    };

    // The first incarnation writes status (two servers) and syncs it.
    let first = dir.path().join("site-1");
    let mut agent = AgentProcess::start(&enroll(1), &first);
    let api = Api::login(&agent.url).await;
    for name in ["cam-1", "cam-2"] {
        let (code, body) = api.create_server(name, "2", IMAGE).await;
        assert_eq!(code, 202, "{body}");
    }
    wait_for(
        "the first site in sync with 2 servers",
        Duration::from_secs(30),
        async || {
            in_sync().await && controller.site("vehicle-07").await["capacity"]["instances"] == 2
        },
    )
    .await;
    // Intent the region queues for the site while it is away.
    agent.kill9();
    std::fs::remove_dir_all(&first).unwrap();

    // The new incarnation: an empty disk, a new token.
    let second = dir.path().join("site-2");
    let agent = AgentProcess::start(&enroll(2), &second);
    // Healthy throughout: alive and small (checked at every poll, so a
    // runaway fails here long before it hurts the machine).
    let healthy = || {
        let rss = agent.rss_kib();
        assert!(rss > 0 && rss < 300 * 1024, "agent RSS {rss} KiB");
    };
    wait_for(
        "the new site in sync",
        Duration::from_secs(30),
        async || {
            healthy();
            in_sync().await
        },
    )
    .await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        healthy();
    }
    let api = Api::login(&agent.url).await;
    let (code, body) = api.create_server("cam-3", "2", IMAGE).await;
    assert_eq!(code, 202, "{body}");
    let servers = api.servers().await.len();
    wait_for(
        "the region shows the new site's servers",
        Duration::from_secs(30),
        async || {
            in_sync().await
                && controller.site("vehicle-07").await["capacity"]["instances"] == servers as u64
        },
    )
    .await;
}
