//! Simulated sites, light but real, for fleet-scale tests and the fleet
//! benchmark: each has its own certificate from the region's CA (enrolled
//! through the fleet store, as a join token would do it), a real QUIC
//! connection with mutual TLS, the control-stream hello, and a real sync
//! session over real site documents (3 servers with spec and status, and
//! the site's capacity, as the agent records them). Many share a few UDP
//! sockets. A site reconnects as the agent does (0.5 s doubling to 60 s,
//! full jitter) while it is held; [`SimSite::let_go`] ends it.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use roost_controller::fleet::{FleetStore, SqliteFleet};
use roost_sync::pki::region_server_name;
use roost_sync::transport::{client_config, drive, site_open, Hello};
use roost_sync::{
    site_author, site_status_actor, Docs, IntentDoc, Persisted, Role, Session, SessionConfig,
    StatusDoc,
};
use serde_json::json;
use tokio::sync::{Notify, OwnedSemaphorePermit};

/// Connection attempts that failed (and were retried), across all sites.
pub static RETRIES: AtomicU64 = AtomicU64::new(0);
/// Sessions that ended by themselves while their site was held.
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
pub struct SimSite {
    pub id: String,
    region: String,
    config: quinn::ClientConfig,
    pub docs: Arc<Mutex<Docs>>,
    local: Arc<Notify>,
    persisted: Mutex<Option<Persisted>>,
    conn: Mutex<Option<quinn::Connection>>,
    /// Wire bytes of connections already closed.
    closed_bytes: Mutex<u64>,
    /// While true, the site reconnects whenever its connection ends.
    hold: AtomicBool,
}

/// A client endpoint for many simulated sites. Real sites have a socket
/// each; these share one, so it gets a large buffer (as much as the kernel
/// allows) to not drop what a socket per site would have received.
pub fn client_endpoint() -> quinn::Endpoint {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("UDP socket");
    let _ = socket.set_recv_buffer_size(8 << 20);
    let _ = socket.set_send_buffer_size(8 << 20);
    socket.bind(&addr.into()).expect("bind");
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        quinn::default_runtime().expect("tokio runtime"),
    )
    .expect("client endpoint")
}

/// Enrolls every site of the region config at `config_path` in the fleet
/// store in `data_dir` (before the controller starts), each with its own
/// certificate. `progress` is called every 1,000 sites.
pub fn enroll(data_dir: &Path, config_path: &Path, progress: impl Fn(usize)) -> Vec<Arc<SimSite>> {
    let config: roost_common::config::RegionConfig =
        roost_common::config::load(config_path).expect("region config");
    let region = config.region.name.clone();
    let (store, ca) = SqliteFleet::open(data_dir, &region).expect("fleet store");
    store.sync_sites(&config.sites).expect("sites");
    config
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let token = store
                .create_token(&s.id, chrono::Duration::hours(1))
                .expect("token");
            let cred = ca.issue_site(&s.id).expect("site certificate");
            let issued = roost_controller::fleet::Issued {
                request_sha256: s.id.clone(),
                cert_pem: cred.cert_pem(),
                cert_sha256: cred.fingerprint(),
            };
            store.redeem(&token, &issued).expect("redeem");
            if (i + 1) % 1000 == 0 {
                progress(i + 1);
            }
            Arc::new(SimSite {
                id: s.id.clone(),
                region: region.clone(),
                config: client_config(&cred).expect("client config"),
                docs: Arc::new(Mutex::new(sim_docs(&s.id))),
                local: Arc::new(Notify::new()),
                persisted: Mutex::new(None),
                conn: Mutex::new(None),
                closed_bytes: Mutex::new(0),
                hold: AtomicBool::new(true),
            })
        })
        .collect()
}

/// Records a server (spec and status) as the agent does for a create.
pub fn record_server(docs: &mut Docs, n: usize, now_ms: i64) {
    let id = format!("srv-{n:04}");
    let spec = json!({"name": format!("cam-{n}"), "project_id": "p", "user_id": "u",
        "flavor_id": "2", "image_id": "img", "availability_zone": null, "server_group": null,
        "power": "running", "reboot_generation": 0, "reboot_hard": false, "deleted": false,
        "metadata": {}});
    let status = json!({"host": "node-0", "availability_zone": "nova", "vm_state": "active",
        "task_state": null, "power_state": "running", "reboot_generation": 0, "fault": null});
    docs.intent
        .create(
            "servers",
            &id,
            spec.as_object().expect("object").clone(),
            now_ms,
        )
        .expect("record spec");
    docs.status
        .set("servers", &id, &status)
        .expect("record status");
}

pub fn sim_docs(site: &str) -> Docs {
    let mut docs = Docs {
        intent: IntentDoc::new(format!("sim:{site}").as_bytes(), &site_author(site)),
        status: StatusDoc::new(&site_status_actor(site)),
        site_status_actor: site_status_actor(site),
    };
    let now = 1_700_000_000_000;
    for n in 0..3 {
        record_server(&mut docs, n, now);
    }
    let capacity = json!({"total": {"vcpus": 16, "ram_mb": 14336, "disk_gb": 256},
        "used": {"vcpus": 3, "ram_mb": 1536, "disk_gb": 3},
        "host_free": [{"vcpus": 13, "ram_mb": 12800, "disk_gb": 253}], "instances": 3});
    docs.status
        .set("site", "capacity", &capacity)
        .expect("record capacity");
    docs
}

impl SimSite {
    /// Connects and runs the site's session, reconnecting while the site is
    /// held; `permit` is let go once the first hellos are exchanged.
    pub async fn run(
        self: Arc<Self>,
        endpoint: quinn::Endpoint,
        addr: std::net::SocketAddr,
        mut permit: Option<OwnedSemaphorePermit>,
    ) {
        self.hold.store(true, Ordering::SeqCst);
        let mut cap = Duration::from_millis(500);
        while self.hold.load(Ordering::SeqCst) {
            let (conn, send, recv) = match self.open(&endpoint, addr).await {
                Ok(open) => open,
                Err(_) => {
                    RETRIES.fetch_add(1, Ordering::Relaxed);
                    let wait = rand::rng().random_range(Duration::ZERO..=cap);
                    tokio::time::sleep(wait).await;
                    cap = (cap * 2).min(Duration::from_secs(60));
                    continue;
                }
            };
            cap = Duration::from_millis(500);
            permit.take();
            *self.conn.lock().expect("lock") = Some(conn);
            let cfg = SessionConfig::default();
            let persisted = self.persisted.lock().expect("lock").clone();
            let mut session =
                Session::new(Role::Site, cfg.clone(), persisted.as_ref(), Instant::now())
                    .expect("session");
            let _ = drive(
                &mut session,
                &self.docs,
                &self.local,
                &|_, _| {},
                send,
                recv,
                cfg.max_frame,
            )
            .await;
            *self.persisted.lock().expect("lock") = Some(session.persist());
            if self.hold.load(Ordering::SeqCst) {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                self.forget_connection();
            }
        }
    }

    async fn open(
        &self,
        endpoint: &quinn::Endpoint,
        addr: std::net::SocketAddr,
    ) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), String> {
        let conn = endpoint
            .connect_with(self.config.clone(), addr, &region_server_name(&self.region))
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let hello = Hello {
            name: self.id.clone(),
            version: "sim".into(),
            protocol: roost_sync::frame::VERSION,
        };
        let (_, send, recv) = site_open(&conn, &hello).await.map_err(|e| e.to_string())?;
        Ok((conn, send, recv))
    }

    fn forget_connection(&self) -> Option<quinn::Connection> {
        let c = self.conn.lock().expect("lock").take()?;
        let st = c.stats();
        *self.closed_bytes.lock().expect("lock") +=
            st.udp_tx.bytes + st.udp_rx.bytes + 28 * (st.udp_tx.datagrams + st.udp_rx.datagrams);
        Some(c)
    }

    /// Changes the site's documents as the agent would, and tells the
    /// session.
    pub fn record(&self, edit: impl FnOnce(&mut Docs)) {
        edit(&mut self.docs.lock().expect("lock"));
        self.local.notify_one();
    }

    /// Ends the site's connection and its reconnecting (`run` returns).
    pub fn let_go(&self) {
        self.hold.store(false, Ordering::SeqCst);
        if let Some(c) = self.forget_connection() {
            c.close(0u32.into(), b"let go");
        }
    }

    /// Wire bytes both ways over all its connections so far (UDP payload
    /// plus 28 bytes of IPv4/UDP header per datagram).
    pub fn wire_bytes(&self) -> u64 {
        let closed = *self.closed_bytes.lock().expect("lock");
        let open = self.conn.lock().expect("lock").as_ref().map_or(0, |c| {
            let st = c.stats();
            st.udp_tx.bytes + st.udp_rx.bytes + 28 * (st.udp_tx.datagrams + st.udp_rx.datagrams)
        });
        closed + open
    }
}
