//! `roost-controller`: the regional controller.
//!
//! - [`fleet`]: the fleet store (SQLite): the region's CA key, its sites,
//!   join tokens, every site's document changes and sync state.
//! - [`link`]: the QUIC endpoint sites sync with (mutual TLS; the site id
//!   comes from the certificate), and each site's availability.
//! - [`api`]: the HTTP API: enrollment by join token, the site list.
//!
//! Not here yet (the controller issue): central intent through the API,
//! site alarms and sync-status counts, groups by label, the dashboard.

pub mod api;
pub mod fleet;
pub mod link;
