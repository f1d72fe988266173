//! `roost-agent`: one Roost edge site, on its own.
//!
//! The agent keeps the site's state in SQLite ([`store`]), places servers on
//! the site's hosts ([`scheduler`]), drives the hypervisor toward what was
//! asked ([`compute`]) and serves the site's OpenStack-shaped API ([`api`]),
//! authenticated locally ([`identity`]: its own tokens, and the region's
//! checked with the keys the region synced), and syncs its documents with its
//! region when it has one ([`uplink`]). Nothing here waits for the region.
//!
//! Where to work:
//! - a new API call: a handler in `api/`, a write as a `WriteCtx` method in
//!   `store/`, validation in `roost_common`;
//! - a new hypervisor: implement [`compute::ComputeDriver`]; libvirt calls
//!   stay in `compute/libvirt.rs`, domain XML in `compute/domain.rs`;
//! - scheduling policy: `scheduler/` (pure; no I/O allowed there);
//! - a metric: declare it in [`metrics`];
//! - what syncs with the region: `store/journal.rs`;
//! - turning a node into a site (`roost-agent install`/`uninstall`):
//!   [`install`], decisions in `install/plan.rs` (pure), effects in
//!   `install/apply.rs`.
//!
//! - tenant networking on the host's kernel: [`network`] (plan pure, netlink
//!   driver thin; security groups as nftables rules in `network/firewall.rs`,
//!   ruleset pure, `nft` driver thin; DHCP and IPv6 router advertisements
//!   by dnsmasq in `network/dhcp.rs`, following Neutron's IPv6 modes);
//!   networks, subnets, ports and IPAM (SLAAC ports' EUI-64 included) in
//!   `store/network.rs`, Neutron's API in `api/network.rs`.
//!
//! - the site's own alarms (link down, disk nearly full, a peer host down,
//!   which the scheduler then skips, an HA active without its standby):
//!   [`alarms`]
//!   (evaluation pure, a monitor around it), kept and published in
//!   `store/alarms.rs`.
//!
//! - images (Glance): records and upload states in `store/images.rs`, the
//!   API and the bytes on disk in `api/images.rs`.
//!
//! - two controller nodes for one site (edge HA): [`ha`]; the writer's
//!   side (log append, waiting for the standby) in `store/writer.rs`.
//!
//! - volumes and snapshots (Cinder): records, states and attachments in
//!   `store/volumes.rs`, the qcow2 files in [`storage`] (plan pure,
//!   `qemu-img` driver thin), the API in `api/volumes.rs`; attaching is a
//!   compute action (`SyncVolumes`).
//!
//! - the region's images, brought chunk by chunk: `storage/fetch.rs`;
//!   where image files sit (hot cache, local disk, only at the region):
//!   `storage/tier.rs` (planner pure, mover thin).
//!
//! - Keystone's users, projects and roles: `store/accounts.rs` and
//!   `api/accounts.rs`; who may do what is `roost_common::policy`, checked
//!   once in the `api::Caller` extractor.
//!
//! Not here yet: booting a server from a volume; see `docs/edge-ha.md`
//! for what edge HA does not do.

pub mod agent;
pub mod alarms;
pub mod api;
pub mod compute;
pub mod ha;
pub mod identity;
pub mod install;
pub mod metrics;
pub mod network;
pub mod scheduler;
pub mod storage;
pub mod store;
pub mod uplink;
