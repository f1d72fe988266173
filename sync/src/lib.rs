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
//!
//! Not here yet (the rest of the sync issue): the QUIC transport with mutual
//! TLS and enrollment, the agent's recording of each API write's change in
//! the same SQLite transaction, the link emulator and the benchmark.

pub mod doc;
pub mod frame;
pub mod session;
#[cfg(test)]
mod sim;

pub use doc::{
    site_author, site_status_actor, Conflict, DocError, IntentDoc, IntentView, Stamped, StatusDoc,
};
pub use session::{Docs, Role, Session, SessionConfig, SessionError};
