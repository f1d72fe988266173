//! A region's sync endpoint for tests of the agent's link, built from the
//! real parts (`roost_sync`'s QUIC transport, mutual TLS and session): it
//! accepts site connections, checks the site id from the certificate, and
//! syncs one site's documents, reconnection after reconnection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use roost_sync::pki::{Ca, Credential};
use roost_sync::session::SessionConfig;
use roost_sync::transport::{drive, peer_site_id, region_accept, server_config, Hello};
use roost_sync::{site_status_actor, Docs, IntentDoc, Role, Session, StatusDoc};
use tokio::sync::Notify;

/// The region's side of one site.
#[derive(Debug)]
pub struct TestRegion {
    pub ca: Ca,
    pub addr: std::net::SocketAddr,
    pub docs: Arc<Mutex<Docs>>,
    /// Notify after writing into `docs`.
    pub local: Arc<Notify>,
    /// Connections accepted from the site so far.
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestRegion {
    /// A region named `name` serving `site_id`'s documents on loopback.
    pub fn start(name: &str, site_id: &str) -> TestRegion {
        let ca = Ca::new(name).expect("CA");
        let server = quinn::Endpoint::server(
            server_config(&ca.issue_region(name).expect("region cert")).expect("server config"),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("region endpoint");
        let addr = server.local_addr().expect("addr");
        let docs = Arc::new(Mutex::new(Docs {
            intent: IntentDoc::new(b"test-region-0001", &format!("region:{name}")),
            status: StatusDoc::new(b"test-region-0001"),
            site_status_actor: site_status_actor(site_id),
        }));
        let local = Arc::new(Notify::new());
        let connections = Arc::new(AtomicUsize::new(0));
        let (d, l, c, site) = (
            docs.clone(),
            local.clone(),
            connections.clone(),
            site_id.to_string(),
        );
        let task = tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                let (d, l, c, site) = (d.clone(), l.clone(), c.clone(), site.clone());
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    assert_eq!(peer_site_id(&conn).expect("site id"), site);
                    let hello = Hello {
                        name: "test-region".into(),
                        version: "test".into(),
                        protocol: roost_sync::frame::VERSION,
                    };
                    let Ok((_, send, recv)) = region_accept(&conn, &site, &hello).await else {
                        return;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    let cfg = SessionConfig::default();
                    let mut session = Session::new(Role::Region, cfg.clone(), None, Instant::now())
                        .expect("session");
                    let _ =
                        drive(&mut session, &d, &l, &|_, _| {}, send, recv, cfg.max_frame).await;
                });
            }
        });
        TestRegion {
            ca,
            addr,
            docs,
            local,
            connections,
            task,
        }
    }

    /// A credential for `site_id`, as enrollment would give it.
    pub fn enroll(&self, site_id: &str) -> Credential {
        self.ca.issue_site(site_id).expect("site cert")
    }
}

impl Drop for TestRegion {
    fn drop(&mut self) {
        self.task.abort();
    }
}
