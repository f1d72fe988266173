//! `roost-controller`: the regional controller.
//!
//! - [`fleet`]: the fleet store (SQLite): the region's CA key, its sites,
//!   join tokens, the certificate each enrollment issued (pinned) and
//!   revocations, every site's document changes and sync state,
//!   availability history and alarms (the region's `site.offline` and the
//!   ones sites raise themselves, with their times). The boundary a
//!   PostgreSQL backend would implement.
//! - [`link`]: the QUIC endpoint sites sync with (mutual TLS; the site id
//!   comes from the certificate, only the latest enrollment's is admitted),
//!   each site's availability and address, and the one way the region
//!   writes into a site's documents.
//! - [`intent`]: the fleet operator's requests (servers, flavors, quotas,
//!   placement across sites), validated and written as the region's intent.
//! - [`view`]: a site as the region shows it (dcmanager's separate fields).
//! - [`api`]: the HTTP API: enrollment, the fleet operator's API under
//!   `/roost/v1/` (admin and read-only viewer tokens), `/metrics`, and the
//!   dashboard page at `/` (`dashboard.html`, compiled into the binary).
//! - [`openstack`]: the OpenStack face for the stock client: Keystone
//!   (Ed25519 tokens sites check offline, revocation), and per site, as a
//!   region of the catalog, Nova servers, actions and flavors and Glance
//!   images (made here for a site, or published by it), over the region's
//!   copy of the site's documents.
//! - [`images`]: the images the region holds for its sites (files and
//!   chunk manifests), served on each site's bulk streams.
//! - [`backups`]: the volume backups sites send (`central-replicated`
//!   volumes), content-addressed chunks in `backups.db`, received on the
//!   same bulk streams.
//! - [`metrics`]: every Prometheus metric, declared in one place.
//!
//! Not here yet: PostgreSQL, several controller replicas, users, projects
//! and roles beyond the two tokens (admin, viewer).

pub mod api;
pub mod backups;
pub mod fleet;
pub mod images;
pub mod intent;
pub mod link;
pub mod metrics;
pub mod openstack;
pub mod view;
