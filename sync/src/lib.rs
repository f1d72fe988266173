//! `roost-sync`: how a site and its region agree.
//!
//! - [`doc`]: the site's two Automerge documents, intent (spec; site and
//!   region write) and status (site writes alone), with the merge rules and
//!   the conflict journal entries they produce.
//! - [`session`]: the sans-IO sync session, quinn-proto style: bytes in with
//!   `handle_message`, bytes out with `poll_message`, time passed in with
//!   `handle_timeout(now)`, the next deadline from `poll_timeout`. No sockets,
//!   no clock, no runtime; a transport drives it.
//! - [`frame`]: the wire frames the session speaks, and their strict decoder.
//! - [`pki`]: the region's CA, site and region certificates, site
//!   certificate requests and one-time join tokens, and reading the site id
//!   from a verified certificate.
//! - [`token`]: Keystone tokens the region signs (Ed25519) and sites check
//!   offline with the region's public keys and revocation list.
//! - [`chunks`]: content-defined chunking and chunk manifests (what an
//!   image is made of, by sha256), so a site fetches only chunks it lacks.
//! - [`bulk`]: image chunks from region to site, and volume backups from
//!   site to region, on QUIC streams of their own below sync's priority,
//!   and the [`bulk::Pacer`] that caps a site's rate.
//! - [`transport`]: quinn with mutual TLS (keep-alive 3 s, idle timeout
//!   10 s) and [`transport::drive`], the loop that runs a session over one
//!   QUIC stream.
//!
//! Used by `roost-agent` (the site's side, `edge-agent/src/uplink.rs`)
//! and `roost-controller` (the region's, `controller/src/link.rs`). A
//! connection has a control stream (hellos, checked against the
//! certificate) and the sync stream, with priorities that leave room for a
//! lower-priority bulk stream.

pub mod bulk;
pub mod chunks;
pub mod doc;
pub mod frame;
pub mod pki;
pub mod session;
#[cfg(test)]
mod sim;
pub mod token;
pub mod transport;

pub use doc::{
    is_site_status_actor, site_author, site_status_actor, site_status_actor_of_term, Conflict,
    DocError, IntentDoc, IntentView, Stamped, StatusDoc,
};
pub use session::{Docs, Persisted, Received, Role, Session, SessionConfig, SessionError};
