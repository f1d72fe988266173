//! A site and its region sync over real QUIC with mutual TLS, through the
//! link emulator at 10 Mbit/s, 50 ms each way and 1% loss: both write while
//! the link is cut, the link heals, and both end with the same documents;
//! then the site's address changes and the same connection carries on.
//! A site whose certificate is not from the region's CA is refused.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roost_sync::pki::{region_server_name, Ca, Credential};
use roost_sync::session::SessionConfig;
use roost_sync::transport::{client_config, drive, peer_site_id, server_config};
use roost_sync::{site_author, site_status_actor, Docs, IntentDoc, Role, Session, StatusDoc};
use roost_tests::link::{LinkParams, Relay};
use serde_json::json;
use tokio::sync::Notify;

const SITE: &str = "edge-test-01";

fn docs(role: Role) -> Arc<Mutex<Docs>> {
    let intent = match role {
        Role::Site => IntentDoc::new(b"site-intent-0001", &site_author(SITE)),
        Role::Region => IntentDoc::new(b"region-intent-01", "region:eu"),
    };
    Arc::new(Mutex::new(Docs {
        intent,
        status: StatusDoc::new(&site_status_actor(SITE)),
        site_status_actor: site_status_actor(SITE),
    }))
}

fn client(cred: &Credential) -> quinn::Endpoint {
    let mut c = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    c.set_default_client_config(client_config(cred).unwrap());
    c
}

async fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_and_region_converge_over_quic_through_a_cut() {
    let ca = Ca::new("eu").unwrap();
    let server = quinn::Endpoint::server(
        server_config(&ca.issue_region("eu").unwrap()).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let relay = Relay::start(server.local_addr().unwrap(), LinkParams::field_link(), 7)
        .await
        .unwrap();
    let cfg = SessionConfig::default();

    let region_docs = docs(Role::Region);
    let region_local = Arc::new(Notify::new());
    let (rd, rl, rcfg) = (region_docs.clone(), region_local.clone(), cfg.clone());
    let region = tokio::spawn(async move {
        let conn = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("handshake");
        assert_eq!(
            peer_site_id(&conn).unwrap(),
            SITE,
            "the site id comes from the certificate"
        );
        let (send, recv) = conn.accept_bi().await.expect("stream");
        let mut session = Session::new(Role::Region, rcfg.clone(), None, Instant::now()).unwrap();
        drive(
            &mut session,
            &rd,
            &rl,
            &|_, _| {},
            send,
            recv,
            rcfg.max_frame,
        )
        .await
    });

    let site_docs = docs(Role::Site);
    let site_local = Arc::new(Notify::new());
    {
        let mut d = site_docs.lock().unwrap();
        let mut spec = serde_json::Map::new();
        spec.insert("name".into(), json!("plc-1"));
        spec.insert("flavor".into(), json!("small"));
        spec.insert("power".into(), json!("running"));
        d.intent.create("servers", "s1", spec, 1).unwrap();
        d.status
            .set("servers", "s1", &json!({"vm_state": "active"}))
            .unwrap();
    }
    let endpoint = client(&ca.issue_site(SITE).unwrap());
    let conn = endpoint
        .connect(relay.addr, &region_server_name("eu"))
        .unwrap()
        .await
        .expect("mutual TLS handshake");
    let (send, recv) = conn.open_bi().await.unwrap();
    let (sd, sl, scfg) = (site_docs.clone(), site_local.clone(), cfg.clone());
    let site = tokio::spawn(async move {
        let mut session = Session::new(Role::Site, scfg.clone(), None, Instant::now()).unwrap();
        drive(
            &mut session,
            &sd,
            &sl,
            &|_, _| {},
            send,
            recv,
            scfg.max_frame,
        )
        .await
    });

    let view = |d: &Arc<Mutex<Docs>>| d.lock().unwrap().intent.resource("servers", "s1").unwrap();
    // The two documents sync in their own messages: wait for both.
    let status_seen = |d: &Arc<Mutex<Docs>>| {
        d.lock()
            .unwrap()
            .status
            .get("servers", "s1")
            .unwrap()
            .is_some()
    };
    wait_until(
        "the region sees the site's server and its status",
        Duration::from_secs(10),
        || view(&region_docs).is_some() && status_seen(&region_docs),
    )
    .await;
    assert_eq!(
        region_docs
            .lock()
            .unwrap()
            .status
            .get("servers", "s1")
            .unwrap(),
        Some(json!({"vm_state": "active"}))
    );

    // Cut the link; both sides keep working.
    relay.cut(true);
    {
        let mut d = site_docs.lock().unwrap();
        d.intent
            .set("servers", "s1", "power", json!("stopped"), 10)
            .unwrap();
        d.status
            .set("servers", "s1", &json!({"vm_state": "stopped"}))
            .unwrap();
    }
    site_local.notify_one();
    region_docs
        .lock()
        .unwrap()
        .intent
        .set("servers", "s1", "flavor", json!("large"), 20)
        .unwrap();
    region_local.notify_one();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        view(&region_docs).unwrap().fields["power"],
        json!("running"),
        "nothing crosses a cut link"
    );

    // Heal: QUIC retransmits within its 10 s idle timeout; both converge.
    relay.cut(false);
    let same = || {
        let (mut s, mut r) = (site_docs.lock().unwrap(), region_docs.lock().unwrap());
        s.intent.heads() == r.intent.heads() && s.status.heads() == r.status.heads()
    };
    wait_until(
        "both sides converge after the heal",
        Duration::from_secs(15),
        same,
    )
    .await;
    for d in [&site_docs, &region_docs] {
        let v = view(d).unwrap();
        assert_eq!(
            (v.fields["power"].clone(), v.fields["flavor"].clone()),
            (json!("stopped"), json!("large"))
        );
        assert_eq!(
            d.lock().unwrap().status.get("servers", "s1").unwrap(),
            Some(json!({"vm_state": "stopped"}))
        );
    }
    // The site's address changes (a vehicle changing networks): the same
    // QUIC connection carries on from the new address.
    relay.rebind().await.unwrap();
    site_docs
        .lock()
        .unwrap()
        .intent
        .set("servers", "s1", "name", json!("plc-1b"), 30)
        .unwrap();
    site_local.notify_one();
    wait_until(
        "a write after the address change reaches the region",
        Duration::from_secs(15),
        || view(&region_docs).is_some_and(|v| v.fields["name"] == json!("plc-1b")),
    )
    .await;
    assert!(
        !site.is_finished() && !region.is_finished(),
        "the same connection, not a new one"
    );
    let (up, down) = relay.bytes();
    eprintln!("bytes through the link: {up} up, {down} down");
    site.abort();
    region.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_certificate_from_another_ca_is_refused() {
    let ca = Ca::new("eu").unwrap();
    let server = quinn::Endpoint::server(
        server_config(&ca.issue_region("eu").unwrap()).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let region = tokio::spawn(async move {
        let incoming = server.accept().await.expect("incoming");
        incoming.await.map(|_| ()).map_err(|e| e.to_string())
    });
    // Same region name, different CA: a forged identity.
    let forged = Ca::new("eu").unwrap().issue_site(SITE).unwrap();
    let mut cred = forged.clone();
    cred.ca = ca.cert_der(); // it trusts the real region
    let endpoint = client(&cred);
    // In TLS 1.3 the client may finish before the server checks its
    // certificate, so the refusal shows on the region's side.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        if let Ok(connecting) = endpoint.connect(addr, &region_server_name("eu")) {
            if let Ok(conn) = connecting.await {
                if let Ok((mut send, _recv)) = conn.open_bi().await {
                    let _ = send.write_all(b"hello").await;
                }
                conn.closed().await;
            }
        }
    })
    .await;
    let region_side = tokio::time::timeout(Duration::from_secs(10), region)
        .await
        .expect("the region answered")
        .unwrap();
    let refusal = region_side.expect_err("the region must refuse the handshake");
    assert!(refusal.contains("invalid peer certificate"), "{refusal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_stream_hello_must_match_the_certificate() {
    use roost_sync::transport::{region_accept, site_open, Hello};
    let ca = Ca::new("eu").unwrap();
    let server = quinn::Endpoint::server(
        server_config(&ca.issue_region("eu").unwrap()).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    let hello = |name: &str| Hello {
        name: name.into(),
        version: "t".into(),
        protocol: roost_sync::frame::VERSION,
    };
    let region = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..2 {
            let conn = server.accept().await.unwrap().await.unwrap();
            let site = peer_site_id(&conn).unwrap();
            let r = region_accept(&conn, &site, &hello("eu")).await;
            results.push(r.map(|(h, _, _)| h.name).map_err(|e| e.to_string()));
        }
        results
    });
    let endpoint = client(&ca.issue_site(SITE).unwrap());
    let (mut keep, mut conns) = (Vec::new(), Vec::new());
    for claimed in [SITE, "someone-else"] {
        let conn = endpoint
            .connect(addr, &region_server_name("eu"))
            .unwrap()
            .await
            .unwrap();
        let r =
            tokio::time::timeout(Duration::from_secs(5), site_open(&conn, &hello(claimed))).await;
        if claimed == SITE {
            let (theirs, mut send, _) = r.unwrap().unwrap();
            assert_eq!(theirs.name, "eu");
            // A stream is seen by the peer once something is sent on it.
            send.write_all(&[0, 0, 0, 0]).await.unwrap();
            keep.push(send);
        }
        // Open until the region has answered both.
        conns.push(conn);
    }
    let results = tokio::time::timeout(Duration::from_secs(10), region)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(results[0].as_deref(), Ok(SITE));
    let refused = results[1].as_ref().unwrap_err();
    assert!(refused.contains("certificate says"), "{refused}");
}
