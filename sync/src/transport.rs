//! The QUIC transport: mutual TLS on quinn, and the loop that drives a
//! [`Session`] over one stream.
//!
//! - Both ends present certificates from the region's CA
//!   ([`crate::pki`]); the region takes the site id from the site's verified
//!   certificate ([`peer_site_id`]).
//! - The site sends a keep-alive every 3 s and both ends use a 10 s idle
//!   timeout: a silent peer is noticed within 10 s, and an idle link costs
//!   one small packet each way per 3 s.
//! - Frames travel as a 4-byte big-endian length and the frame; a length
//!   over the session's `max_frame` ends the connection.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::sync::{mpsc, Notify};

use crate::pki::{self, Credential};
use crate::session::{Docs, Received, Session, SessionError};

/// ALPN of Roost's sync protocol.
pub const ALPN: &[u8] = b"roost-sync/1";
pub const KEEP_ALIVE: Duration = Duration::from_secs(3);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("tls client verifier: {0}")]
    Verifier(String),
    #[error("quic: {0}")]
    Quic(String),
    #[error("peer: {0}")]
    Peer(#[from] pki::PkiError),
    #[error("frame of {0} bytes is over the limit of {1}")]
    Oversized(usize, usize),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Transport settings. Only the site sends keep-alives (every
/// [`KEEP_ALIVE`]); the region answers them. Both drop a peer silent for
/// [`IDLE_TIMEOUT`]. One ping and its acknowledgement per 3 s is the whole
/// idle cost of a connected site.
fn transport(keep_alive: bool) -> Arc<quinn::TransportConfig> {
    transport_with_idle(keep_alive, IDLE_TIMEOUT)
}

fn transport_with_idle(keep_alive: bool, idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(keep_alive.then_some(KEEP_ALIVE));
    // Anything over QUIC's varint limit (~146 years) is "never", which a
    // caller cannot mean; fall back to the default.
    t.max_idle_timeout(Some(idle.try_into().unwrap_or_else(|_| {
        IDLE_TIMEOUT
            .try_into()
            .expect("10 s fits a QUIC idle timeout")
    })));
    Arc::new(t)
}

/// The region's transport with its own idle timeout (the controller's
/// `offline_after_secs`): QUIC uses the smaller of the two ends' timeouts,
/// so this is when a silent site is dropped. Keep it at least twice
/// [`KEEP_ALIVE`] or idle sites flap.
pub fn region_transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    transport_with_idle(false, idle)
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<rustls::RootCertStore>, TransportError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// Receive (and send) buffer the region asks for on its UDP socket: at a
/// reconnect storm thousands of sites' first packets arrive within a
/// second, and a default-sized buffer (~200 KiB) drops most of them, which
/// turns into handshake timeouts and backoff. The kernel caps it at
/// `net.core.rmem_max`.
pub const REGION_SOCKET_BUFFER: usize = 8 << 20;

/// The region's QUIC endpoint on `addr`, with a large socket buffer.
/// Returns the endpoint and the receive buffer the kernel granted.
pub fn region_endpoint(
    config: quinn::ServerConfig,
    addr: std::net::SocketAddr,
) -> std::io::Result<(quinn::Endpoint, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works, only worse in a storm.
    let _ = socket.set_recv_buffer_size(REGION_SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(REGION_SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket.into(),
        runtime,
    )?;
    Ok((endpoint, granted))
}

/// The region's side: requires a client certificate from the CA.
pub fn server_config(cred: &Credential) -> Result<quinn::ServerConfig, TransportError> {
    server_config_for(cred, ALPN, transport(false))
}

/// The site's side: trusts only the region's CA and presents the site's
/// certificate.
pub fn client_config(cred: &Credential) -> Result<quinn::ClientConfig, TransportError> {
    client_config_for(cred, ALPN, transport(true))
}

/// ALPN of the link between a site's two controller nodes.
pub const PEER_ALPN: &[u8] = b"roost-ha/1";

/// The active node's end of the peer link: both nodes present the site's
/// own credential, and the caller checks that the peer names the same site
/// ([`peer_site_id`]). Keep-alives every `keep_alive`, idle after `idle`.
pub fn peer_server_config(
    cred: &Credential,
    keep_alive: Duration,
    idle: Duration,
) -> Result<quinn::ServerConfig, TransportError> {
    server_config_for(cred, PEER_ALPN, peer_transport(keep_alive, idle))
}

/// The standby's end of the peer link; connect with the server name
/// [`pki::site_server_name`] of the site.
pub fn peer_client_config(
    cred: &Credential,
    keep_alive: Duration,
    idle: Duration,
) -> Result<quinn::ClientConfig, TransportError> {
    client_config_for(cred, PEER_ALPN, peer_transport(keep_alive, idle))
}

fn peer_transport(keep_alive: Duration, idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(keep_alive));
    t.max_idle_timeout(idle.try_into().ok());
    Arc::new(t)
}

fn server_config_for(
    cred: &Credential,
    alpn: &[u8],
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, TransportError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&cred.ca)?, provider())
        .build()
        .map_err(|e| TransportError::Verifier(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            cred.chain.clone(),
            PrivateKeyDer::Pkcs8(cred.key.clone_key()),
        )?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

fn client_config_for(
    cred: &Credential,
    alpn: &[u8],
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TransportError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&cred.ca)?)
        .with_client_auth_cert(
            cred.chain.clone(),
            PrivateKeyDer::Pkcs8(cred.key.clone_key()),
        )?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| TransportError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport);
    Ok(config)
}

/// The site id in the peer's verified certificate.
pub fn peer_site_id(conn: &quinn::Connection) -> Result<String, TransportError> {
    Ok(pki::site_id_of(&peer_leaf(conn)?)?)
}

/// The [`pki::fingerprint`] of the peer's certificate.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Result<String, TransportError> {
    Ok(pki::fingerprint(&peer_leaf(conn)?))
}

fn peer_leaf(conn: &quinn::Connection) -> Result<CertificateDer<'static>, TransportError> {
    let identity = conn
        .peer_identity()
        .ok_or_else(|| TransportError::Quic("the peer sent no certificate".into()))?;
    let certs = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TransportError::Quic("unexpected peer identity type".into()))?;
    certs
        .first()
        .cloned()
        .ok_or_else(|| TransportError::Quic("empty certificate chain".into()))
}

/// Stream priorities on a connection (quinn sends higher first): control
/// messages never wait behind a catch-up, and a catch-up never waits behind
/// bulk data (images, backups) on a later stream of its own.
pub const PRIORITY_CONTROL: i32 = 2;
pub const PRIORITY_SYNC: i32 = 1;
pub const PRIORITY_BULK: i32 = 0;

/// Largest control message.
const MAX_CONTROL: usize = 64 << 10;

/// The first words on a connection, on the control stream: who speaks, and
/// which protocol. The region checks `site` against the certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The site id (site side) or region name (region side).
    pub name: String,
    /// The speaker's software version.
    pub version: String,
    /// The frame version spoken on the sync stream.
    pub protocol: u8,
}

async fn write_json(send: &mut quinn::SendStream, v: &Hello) -> Result<(), TransportError> {
    let body = serde_json::to_vec(v).map_err(|e| TransportError::Quic(e.to_string()))?;
    send.write_all(&(body.len() as u32).to_be_bytes()).await?;
    send.write_all(&body).await?;
    Ok(())
}

async fn read_json(recv: &mut quinn::RecvStream) -> Result<Hello, TransportError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_CONTROL {
        return Err(TransportError::Oversized(n, MAX_CONTROL));
    }
    let mut buf = vec![0u8; n];
    recv.read_exact(&mut buf).await?;
    serde_json::from_slice(&buf)
        .map_err(|e| TransportError::Quic(format!("bad control message: {e}")))
}

/// The site's side of a new connection: opens the control stream, says
/// hello and reads the region's, then opens the sync stream. Returns the
/// region's hello and the sync stream.
pub async fn site_open(
    conn: &quinn::Connection,
    hello: &Hello,
) -> Result<(Hello, quinn::SendStream, quinn::RecvStream), TransportError> {
    let (mut csend, mut crecv) = conn.open_bi().await?;
    csend.set_priority(PRIORITY_CONTROL).ok();
    write_json(&mut csend, hello).await?;
    let theirs = read_json(&mut crecv).await?;
    let (send, recv) = conn.open_bi().await?;
    send.set_priority(PRIORITY_SYNC).ok();
    Ok((theirs, send, recv))
}

/// The region's side: accepts the control stream, reads the site's hello
/// (refused unless it names the site of the certificate and speaks this
/// protocol), answers, and accepts the sync stream.
pub async fn region_accept(
    conn: &quinn::Connection,
    site_id: &str,
    hello: &Hello,
) -> Result<(Hello, quinn::SendStream, quinn::RecvStream), TransportError> {
    let (mut csend, mut crecv) = conn.accept_bi().await?;
    csend.set_priority(PRIORITY_CONTROL).ok();
    let theirs = read_json(&mut crecv).await?;
    if theirs.name != site_id {
        return Err(TransportError::Quic(format!(
            "the site says it is {:?} but its certificate says {site_id:?}",
            theirs.name
        )));
    }
    if theirs.protocol != hello.protocol {
        return Err(TransportError::Quic(format!(
            "the site speaks protocol {}, this region {}; upgrade the older side",
            theirs.protocol, hello.protocol
        )));
    }
    write_json(&mut csend, hello).await?;
    let (send, recv) = conn.accept_bi().await?;
    send.set_priority(PRIORITY_SYNC).ok();
    Ok((theirs, send, recv))
}

/// Reads length-prefixed frames into a channel (a task of its own, so the
/// driving loop never cancels a half-read frame).
async fn read_frames(
    mut recv: quinn::RecvStream,
    max: usize,
    out: mpsc::Sender<Result<Vec<u8>, TransportError>>,
) {
    loop {
        let mut len = [0u8; 4];
        let frame = match recv.read_exact(&mut len).await {
            Err(e) => Err(e.into()),
            Ok(()) => {
                let n = u32::from_be_bytes(len) as usize;
                if n > max {
                    Err(TransportError::Oversized(n, max))
                } else {
                    let mut buf = vec![0u8; n];
                    recv.read_exact(&mut buf)
                        .await
                        .map(|()| buf)
                        .map_err(TransportError::from)
                }
            }
        };
        let end = frame.is_err();
        if out.send(frame).await.is_err() || end {
            return;
        }
    }
}

/// Drives `session` over one bidirectional stream until the connection ends
/// or a frame is refused. `local` is notified after each local write;
/// `received` is called after each frame from the peer, with the session
/// (for its view of the peer's heads) and what the frame changed (with the
/// documents unlocked).
pub async fn drive(
    session: &mut Session,
    docs: &Mutex<Docs>,
    local: &Notify,
    received: &(dyn Fn(&Session, Received) + Sync),
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    max_frame: usize,
) -> Result<(), TransportError> {
    let (tx, mut rx) = mpsc::channel(64);
    let reader = tokio::spawn(read_frames(recv, max_frame, tx));
    let result = async {
        loop {
            let out: Vec<Vec<u8>> = {
                let mut d = docs.lock().expect("docs lock");
                session.handle_timeout(&mut d, Instant::now());
                std::iter::from_fn(|| session.poll_message()).collect()
            };
            for f in out {
                send.write_all(&(f.len() as u32).to_be_bytes()).await?;
                send.write_all(&f).await?;
            }
            let deadline = session.poll_timeout();
            tokio::select! {
                frame = rx.recv() => {
                    let Some(frame) = frame else { return Ok(()) };
                    let frame = frame?;
                    let r = {
                        let mut d = docs.lock().expect("docs lock");
                        session.handle_message(&mut d, &frame, Instant::now())?
                    };
                    received(session, r);
                }
                _ = async { match deadline { Some(t) => tokio::time::sleep_until(t.into()).await, None => std::future::pending().await } } => {}
                _ = local.notified() => session.local_change(Instant::now()),
            }
        }
    }
    .await;
    reader.abort();
    result
}
