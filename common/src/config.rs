//! Config files: the site config (`roost-agent`), the region config
//! (`roost-controller`) and the edge network config (`roost-agent install`).
//!
//! Every struct denies unknown fields, and [`load`] runs the same `validate`
//! functions the APIs run, so an error always names the file, the field, the
//! value and the rule (`site-configs/x.yaml: hosts[1].vcpus: must be between 1
//! and 4096 (got 0)`), or the line and column for YAML that does not parse.
//! `site-configs/README.md` explains every field.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{Cidr, FlavorSpec, HostSpec, ImageSpec};
use crate::validate::{self, FieldError};

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {source}")]
    Invalid { file: PathBuf, source: FieldError },
}

/// A config that can check itself.
pub trait Validate {
    fn validate(&self) -> Result<(), FieldError>;
}

/// Reads, parses and validates a YAML config file.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.into(),
        source,
    })?;
    parse(path, &text)
}

/// The API's policy: the defaults, with the rules of `api.policy_file`
/// (relative to the config file at `config_path`) on top.
pub fn load_policy(
    config_path: &Path,
    api: &ApiSection,
) -> Result<crate::policy::Policy, ConfigError> {
    let Some(file) = &api.policy_file else {
        return Ok(crate::policy::Policy::default());
    };
    let file = config_path.parent().unwrap_or(Path::new(".")).join(file);
    let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
        file: file.clone(),
        source,
    })?;
    crate::policy::Policy::from_yaml(&text, "policy")
        .map_err(|source| ConfigError::Invalid { file, source })
}

/// Parses and validates YAML text that came from `path`.
pub fn parse<T: DeserializeOwned + Validate>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let value: T = parse_yaml(path, text)?;
    value.validate().map_err(|source| ConfigError::Invalid {
        file: path.into(),
        source,
    })?;
    Ok(value)
}

/// Parses YAML text that came from `path`, without validating it.
fn parse_yaml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        ConfigError::Parse {
            file: path.into(),
            line,
            column,
            message: e.to_string(),
        }
    })
}

/// Checks each item of a list with its index in the field path, and that
/// `key` is unique across the list.
fn each<T>(
    list: &[T],
    field: &str,
    check: impl Fn(&T) -> Result<(), FieldError>,
    key: impl Fn(&T) -> Option<String>,
) -> Result<(), FieldError> {
    let mut seen = BTreeSet::new();
    for (i, item) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        check(item).map_err(|e| e.at(&at))?;
        if let Some(k) = key(item) {
            if !seen.insert(k.clone()) {
                return Err(FieldError::new(
                    at,
                    k,
                    format!("must be unique within {field}"),
                ));
            }
        }
    }
    Ok(())
}

fn check_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    for (k, v) in labels {
        let ok_key = !k.is_empty()
            && k.len() <= 63
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !ok_key {
            return Err(FieldError::new(
                field,
                k,
                "label keys must be 1 to 63 of letters, digits, '-', '_', '.', '/'",
            ));
        }
        if v.len() > 255 || v.chars().any(char::is_control) {
            return Err(FieldError::new(
                format!("{field}.{k}"),
                v,
                "label values must be at most 255 printable characters",
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- site

/// `roost-agent`'s config: one file describes one site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub site: SiteSection,
    #[serde(default)]
    pub api: ApiSection,
    /// Where the SQLite store lives; `--data-dir` overrides it.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub compute: ComputeSection,
    #[serde(default)]
    pub scheduler: SchedulerSection,
    pub hosts: Vec<HostSpec>,
    #[serde(default)]
    pub flavors: Vec<FlavorSpec>,
    #[serde(default)]
    pub images: Vec<ImageSpec>,
    /// The region this site syncs with; without it the site runs alone.
    #[serde(default)]
    pub region: Option<UplinkSection>,
    /// How this agent's host realises the site's networks; without it the
    /// networks are recorded, not built.
    #[serde(default)]
    pub network: Option<NetworkSection>,
    #[serde(default)]
    pub storage: StorageSection,
    #[serde(default)]
    pub alarms: AlarmsSection,
    /// Two controller nodes for this site: one active, one standby that
    /// holds a copy of the store and takes over when the active goes
    /// silent. Without it the node runs the site alone.
    #[serde(default)]
    pub ha: Option<HaSection>,
}

/// Edge high availability: this node and its one peer (see
/// `docs/edge-ha.md`). Both nodes hold the site's region credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaSection {
    /// This node's name; the two nodes' names differ.
    pub node: String,
    /// The peer node's name.
    pub peer_name: String,
    /// Where this node's end of the peer link listens (UDP, QUIC).
    pub listen: SocketAddr,
    /// The peer's end of the peer link.
    pub peer: SocketAddr,
    /// Milliseconds without word from the active before the standby takes
    /// over (and a lone node waits at start for an active peer).
    #[serde(default = "default_takeover_after_ms")]
    pub takeover_after_ms: u64,
    /// Most milliseconds a write waits for the standby's copy before it is
    /// acknowledged alone (and the standby counted as lagging).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
}

fn default_takeover_after_ms() -> u64 {
    3_000
}

fn default_ack_timeout_ms() -> u64 {
    1_000
}

impl HaSection {
    fn validate(&self, region: bool) -> Result<(), FieldError> {
        crate::ids::check_dns_label("ha.node", &self.node)?;
        crate::ids::check_dns_label("ha.peer_name", &self.peer_name)?;
        if self.node == self.peer_name {
            return Err(FieldError::new(
                "ha.peer_name",
                &self.peer_name,
                "must differ from ha.node",
            ));
        }
        if self.peer.ip().is_unspecified() || self.peer.port() == 0 {
            return Err(FieldError::new(
                "ha.peer",
                self.peer,
                "must be the peer's own address and port",
            ));
        }
        validate::range(
            "ha.takeover_after_ms",
            self.takeover_after_ms,
            1_000,
            60_000,
        )?;
        validate::range("ha.ack_timeout_ms", self.ack_timeout_ms, 50, 10_000)?;
        if self.ack_timeout_ms >= self.takeover_after_ms {
            return Err(FieldError::new(
                "ha.ack_timeout_ms",
                self.ack_timeout_ms,
                "must be below ha.takeover_after_ms",
            ));
        }
        if !region {
            return Err(FieldError::new(
                "ha",
                &self.node,
                "needs a region section: the peer link uses the site's region credential",
            ));
        }
        Ok(())
    }
}

/// When the site raises its own alarms (kept and synced like status, so
/// the region sees them with their times, also after a long cut).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmsSection {
    /// Seconds without a connection to the region before `site.link_down`.
    #[serde(default = "default_link_down_after")]
    pub link_down_after_secs: u64,
    /// Used space of the data directory's filesystem, in percent, at which
    /// `storage.disk_nearly_full` is raised (cleared 2 points below).
    #[serde(default = "default_disk_nearly_full")]
    pub disk_nearly_full_percent: u8,
    /// Seconds a peer host's agent may not answer before `host.down`
    /// (only on a node that knows which host it is: `network.host`).
    #[serde(default = "default_host_down_after")]
    pub host_down_after_secs: u64,
    /// Age a `central-replicated` volume's last backup at the region may
    /// reach, once the volume has changed since, before
    /// `volume.backup_stale`.
    #[serde(default = "default_backup_stale_after")]
    pub backup_stale_after_secs: u64,
}

fn default_host_down_after() -> u64 {
    20
}

fn default_backup_stale_after() -> u64 {
    86_400
}

fn default_link_down_after() -> u64 {
    60
}

fn default_disk_nearly_full() -> u8 {
    90
}

impl Default for AlarmsSection {
    fn default() -> Self {
        AlarmsSection {
            link_down_after_secs: default_link_down_after(),
            disk_nearly_full_percent: default_disk_nearly_full(),
            host_down_after_secs: default_host_down_after(),
            backup_stale_after_secs: default_backup_stale_after(),
        }
    }
}

impl AlarmsSection {
    fn validate(&self) -> Result<(), FieldError> {
        validate::range(
            "alarms.link_down_after_secs",
            self.link_down_after_secs,
            1,
            86_400,
        )?;
        validate::range(
            "alarms.disk_nearly_full_percent",
            self.disk_nearly_full_percent,
            3,
            99,
        )?;
        validate::range(
            "alarms.host_down_after_secs",
            self.host_down_after_secs,
            4,
            3_600,
        )?;
        validate::range(
            "alarms.backup_stale_after_secs",
            self.backup_stale_after_secs,
            60,
            30 * 86_400,
        )
    }
}

/// Where the site keeps its volumes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Volumes' qcow2 files (snapshots in its `snapshots/`); default
    /// `<data dir>/volumes`.
    #[serde(default)]
    pub volumes_dir: Option<PathBuf>,
    /// Most kbit/s of the site's bulk transfer, image fetches and volume
    /// backups together; none: as fast as the link goes (below document
    /// sync, which always comes first).
    #[serde(default)]
    pub fetch_rate_kbit: Option<u64>,
    /// Where image files sit: a hot cache, local disk, the region.
    #[serde(default)]
    pub tiers: TiersSection,
}

/// `storage.tiers`: the site's image files, most recently used first, fill
/// the hot cache, then local disk (warm); with `cold`, the least recently
/// used of the region's images leave the site when local disk is short
/// and are fetched again when next used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TiersSection {
    #[serde(default)]
    pub hot: Option<HotTier>,
    /// Most MiB of image files on local disk (`<data dir>/images`); none:
    /// bounded only by the disk (less the 1 GiB the site's store keeps).
    #[serde(default)]
    pub warm_capacity_mb: Option<u64>,
    /// Let the region's images leave the site (cold) when local disk is
    /// short; needs a `region` section.
    #[serde(default)]
    pub cold: bool,
    /// With `cold`: most MiB of volume snapshots' files on the volumes'
    /// disk before the least recently used (each already copied to the
    /// region) leave the site; none: only when that disk is short.
    #[serde(default)]
    pub snapshots_capacity_mb: Option<u64>,
    /// Seconds an image must go unused before it may go cold: one just
    /// fetched back is not sent away again before anyone could use it.
    #[serde(default = "default_cold_after_idle")]
    pub cold_after_idle_secs: u64,
}

fn default_cold_after_idle() -> u64 {
    600
}

impl Default for TiersSection {
    fn default() -> Self {
        TiersSection {
            hot: None,
            warm_capacity_mb: None,
            snapshots_capacity_mb: None,
            cold: false,
            cold_after_idle_secs: default_cold_after_idle(),
        }
    }
}

/// `storage.tiers.hot`: a fast cache directory (an NVMe disk, say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotTier {
    pub dir: PathBuf,
    /// Most MiB of image files in `dir`.
    pub capacity_mb: u64,
}

/// The least a tier's capacity may be, and the most (1 PiB), in MiB.
const TIER_MB: (u64, u64) = (16, 1 << 30);

impl TiersSection {
    fn validate(&self, has_region: bool) -> Result<(), FieldError> {
        if let Some(h) = &self.hot {
            if !h.dir.is_absolute() {
                return Err(FieldError::new(
                    "storage.tiers.hot.dir",
                    h.dir.display(),
                    "must be an absolute path",
                ));
            }
            validate::range(
                "storage.tiers.hot.capacity_mb",
                h.capacity_mb,
                TIER_MB.0,
                TIER_MB.1,
            )?;
        }
        if let Some(w) = self.warm_capacity_mb {
            validate::range("storage.tiers.warm_capacity_mb", w, TIER_MB.0, TIER_MB.1)?;
        }
        if let Some(w) = self.snapshots_capacity_mb {
            validate::range(
                "storage.tiers.snapshots_capacity_mb",
                w,
                TIER_MB.0,
                TIER_MB.1,
            )?;
            if !self.cold {
                return Err(FieldError::new(
                    "storage.tiers.snapshots_capacity_mb",
                    w,
                    "needs cold: true (snapshots over it go to the region)",
                ));
            }
        }
        validate::range(
            "storage.tiers.cold_after_idle_secs",
            self.cold_after_idle_secs,
            0,
            30 * 24 * 3600,
        )?;
        if self.cold && !has_region {
            return Err(FieldError::new(
                "storage.tiers.cold",
                "true",
                "needs a region section: cold images are kept by the region",
            ));
        }
        Ok(())
    }
}

impl StorageSection {
    /// The volumes directory for a site whose data dir is `data_dir`.
    pub fn volumes_dir(&self, data_dir: &std::path::Path) -> PathBuf {
        self.volumes_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("volumes"))
    }

    fn validate(&self, has_region: bool) -> Result<(), FieldError> {
        self.tiers.validate(has_region)?;
        if let Some(r) = self.fetch_rate_kbit {
            validate::range("storage.fetch_rate_kbit", r, 8, 100_000_000)?;
        }
        match &self.volumes_dir {
            Some(d) if !d.is_absolute() => Err(FieldError::new(
                "storage.volumes_dir",
                d.display(),
                "must be an absolute path",
            )),
            _ => Ok(()),
        }
    }
}

/// The host this agent runs on, for tenant networking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Which of `hosts` this agent runs on; its `address` is its VXLAN
    /// tunnel endpoint, and the other hosts' addresses are its peers.
    pub host: String,
    /// The interface VXLAN runs over.
    #[serde(default)]
    pub underlay: Option<String>,
    /// Provider networks (a VLAN network's `provider:physical_network`) and
    /// the interface each is on.
    #[serde(default)]
    pub physnets: BTreeMap<String, String>,
    /// Seconds between the network reconciler's passes.
    #[serde(default = "default_network_period")]
    pub period_secs: u64,
}

fn default_network_period() -> u64 {
    10
}

impl NetworkSection {
    fn validate(&self, hosts: &[HostSpec]) -> Result<(), FieldError> {
        let host = hosts.iter().find(|h| h.name == self.host).ok_or_else(|| {
            FieldError::new(
                "network.host",
                &self.host,
                "must be the name of one of hosts[]",
            )
        })?;
        if let Some(u) = &self.underlay {
            check_ifname("network.underlay", u)?;
            let v4 = host
                .address
                .as_deref()
                .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok());
            if v4.is_none() {
                return Err(FieldError::new(
                    "network.underlay",
                    u,
                    format!(
                        "needs an IPv4 address on host {} (hosts[].address): it is the tunnel endpoint",
                        host.name
                    ),
                ));
            }
        }
        for (name, iface) in &self.physnets {
            crate::ids::check_dns_label("network.physnets", name)?;
            check_ifname(&format!("network.physnets.{name}"), iface)?;
        }
        validate::range("network.period_secs", self.period_secs, 1, 3600)
    }
}

/// An http:// or https:// URL with a host and no trailing '/'.
fn check_url(field: &str, u: &str) -> Result<(), FieldError> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace) || r.ends_with('/')) {
        return Err(FieldError::new(
            field,
            u,
            "must be an http:// or https:// URL with a host and no trailing '/'",
        ));
    }
    Ok(())
}

/// How a site reaches its regional controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkSection {
    /// The region's name; its certificate must say `<name>.region.roost`.
    pub name: String,
    /// The controller's QUIC address, `host:port` (resolved at each
    /// connection attempt, so a moved controller is found again).
    pub address: String,
    /// Directory with the site's credential (`identity.crt`,
    /// `identity.key`, `ca.crt`); defaults to `<data dir>/pki`.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// The controller's API, e.g. `http://192.168.1.100:7443`, where a site
    /// without a credential enrolls with `join_token`.
    #[serde(default)]
    pub central_api: Option<String>,
    /// A one-time join token from `roost-controller token create`.
    #[serde(default)]
    pub join_token: Option<String>,
}

impl UplinkSection {
    fn validate(&self) -> Result<(), FieldError> {
        crate::ids::check_dns_label("region.name", &self.name)?;
        let port = self
            .address
            .rsplit_once(':')
            .filter(|(host, _)| !host.is_empty() && !host.contains(char::is_whitespace))
            .and_then(|(_, port)| port.parse::<u16>().ok())
            .filter(|p| *p != 0);
        if port.is_none() {
            return Err(FieldError::new(
                "region.address",
                &self.address,
                "must be host:port with a port from 1 to 65535",
            ));
        }
        if let Some(u) = &self.central_api {
            check_url("region.central_api", u)?;
        }
        if let Some(t) = &self.join_token {
            if !t.starts_with("rjt1.") || t.split('.').count() != 3 {
                return Err(FieldError::new(
                    "region.join_token",
                    "<hidden>",
                    "must be a token from `roost-controller token create` (rjt1.<site>.<secret>)",
                ));
            }
        }
        if self.join_token.is_some() && self.central_api.is_none() {
            return Err(FieldError::new(
                "region.join_token",
                "<hidden>",
                "needs region.central_api: enrollment goes there",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Address the local API listens on; `--api-listen` overrides it.
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// Bootstrap admin password. `ROOST_ADMIN_PASSWORD` overrides it; when
    /// neither is set the agent generates one and keeps it in the data dir.
    #[serde(default)]
    pub admin_password: Option<String>,
    /// How long an issued token is valid, in seconds.
    #[serde(default = "default_token_ttl")]
    pub token_ttl_secs: u64,
    /// URL clients reach this API at, used in links and the service catalog
    /// (e.g. `http://10.20.0.5:8780`). Defaults to `http://` + the listen
    /// address (with 127.0.0.1 for an unspecified address).
    #[serde(default)]
    pub public_url: Option<String>,
    /// A YAML file of oslo.policy rules over the defaults (see
    /// [`crate::policy`]); relative to the config file.
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
}

fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8780))
}
fn default_token_ttl() -> u64 {
    12 * 3600
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: default_api_listen(),
            admin_password: None,
            token_ttl_secs: default_token_ttl(),
            public_url: None,
            policy_file: None,
        }
    }
}

/// Checks a password given by an operator: 8 to 128 characters.
pub fn check_password(field: &str, p: &str) -> Result<(), FieldError> {
    let n = p.chars().count();
    if !(8..=128).contains(&n) {
        return Err(FieldError::new(
            field,
            format!("<{n} characters>"),
            "must be 8 to 128 characters",
        ));
    }
    Ok(())
}

/// Which compute driver realises servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComputeDriverKind {
    /// Schedules and tracks servers and their power state without starting
    /// any VM: for sites that only hold intent (and the API tests).
    #[default]
    RecordOnly,
    /// Real VMs through libvirt (`compute.libvirt`).
    Libvirt,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeSection {
    #[serde(default)]
    pub driver: ComputeDriverKind,
    /// Settings of the libvirt driver; defaults apply when absent.
    #[serde(default)]
    pub libvirt: LibvirtSection,
    /// Servers the reconciler works on at once (spawns, stops, reboots).
    #[serde(default = "default_parallel")]
    pub max_parallel: usize,
}

fn default_parallel() -> usize {
    8
}

impl Default for ComputeSection {
    fn default() -> Self {
        ComputeSection {
            driver: ComputeDriverKind::default(),
            libvirt: LibvirtSection::default(),
            max_parallel: default_parallel(),
        }
    }
}

/// How the libvirt driver reaches the hypervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LibvirtSection {
    /// `qemu:///system` (libvirtd), `qemu:///embed?root=DIR` (QEMU driver
    /// inside the agent, no daemon), or `test:///default` (libvirt's test
    /// driver, for tests only).
    #[serde(default = "default_libvirt_uri")]
    pub uri: String,
    /// Where each server's disks and console log live; defaults to
    /// `<data dir>/instances`.
    #[serde(default)]
    pub instances_dir: Option<PathBuf>,
    /// Seconds a guest gets to shut down on stop or soft reboot before it is
    /// powered off.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    /// The guest CPU model under KVM, as Nova's `cpu_mode`.
    #[serde(default)]
    pub cpu_mode: CpuMode,
    /// KVM or QEMU's software emulation; `auto` uses KVM when /dev/kvm
    /// can be opened.
    #[serde(default)]
    pub accel: AccelChoice,
}

/// How guests are run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    /// QEMU's software emulation: slow, for hosts whose KVM is missing or
    /// cannot boot guests (some nested hosts).
    Tcg,
}

/// The CPU a KVM guest sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuMode {
    /// The host CPU's model and features, as far as they can be migrated.
    #[default]
    HostModel,
    /// The host CPU exactly: fastest, but fails on some nested hosts.
    HostPassthrough,
    /// QEMU's default model: works everywhere, fewest features.
    QemuDefault,
}

fn default_libvirt_uri() -> String {
    "qemu:///system".into()
}
fn default_shutdown_timeout() -> u64 {
    30
}

impl Default for LibvirtSection {
    fn default() -> Self {
        LibvirtSection {
            uri: default_libvirt_uri(),
            instances_dir: None,
            shutdown_timeout_secs: default_shutdown_timeout(),
            cpu_mode: CpuMode::default(),
            accel: AccelChoice::default(),
        }
    }
}

/// Longest embedded-driver root: libvirt puts each guest's monitor socket at
/// `<root>/lib/qemu/domain-<n>-<20 chars of name>/monitor.sock` and a
/// socket path may not exceed 107 bytes.
pub const MAX_EMBED_ROOT: usize = 48;

impl LibvirtSection {
    /// The embedded driver's root directory, when the URI names one.
    pub fn embed_root(&self) -> Option<PathBuf> {
        self.uri
            .strip_prefix("qemu:///embed?root=")
            .map(PathBuf::from)
    }

    fn validate(&self) -> Result<(), FieldError> {
        let u = &self.uri;
        let ok = match self.embed_root() {
            Some(root) => {
                let text = root.to_string_lossy();
                if !root.is_absolute()
                    || text.len() > MAX_EMBED_ROOT
                    || text.contains(['&', '#', '?', '%'])
                {
                    return Err(FieldError::new(
                        "uri",
                        u,
                        format!("the embedded driver's root must be an absolute path of at most {MAX_EMBED_ROOT} bytes without '&', '#', '?' or '%' (libvirt's sockets live under it)"),
                    ));
                }
                true
            }
            None => {
                // Remote URIs (qemu+ssh://) are refused: the driver makes
                // disks and checks files on the agent's own host.
                u == "qemu:///system" || u == "qemu:///session" || u == "test:///default"
            }
        };
        if !ok || u.chars().any(char::is_whitespace) {
            return Err(FieldError::new(
                "uri",
                u,
                "must be qemu:///system, qemu:///session, qemu:///embed?root=/DIR or test:///default (the driver makes disks on this host, so remote URIs are not supported)",
            ));
        }
        if let Some(d) = &self.instances_dir {
            if !d.is_absolute() {
                return Err(FieldError::new(
                    "instances_dir",
                    d.display(),
                    "must be an absolute path",
                ));
            }
        }
        validate::range("shutdown_timeout_secs", self.shutdown_timeout_secs, 0, 3600)?;
        Ok(())
    }
}

impl ComputeSection {
    fn validate(&self) -> Result<(), FieldError> {
        validate::range("max_parallel", self.max_parallel, 1, 256)?;
        self.libvirt.validate().map_err(|e| e.at("libvirt"))
    }
}

/// Weigher multipliers, as Nova's: a positive RAM multiplier spreads servers
/// across hosts, a negative one packs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    #[serde(default = "one")]
    pub ram_weight_multiplier: f64,
    #[serde(default)]
    pub cpu_weight_multiplier: f64,
    #[serde(default)]
    pub disk_weight_multiplier: f64,
    /// Weight of a soft (anti-)affinity match.
    #[serde(default = "one")]
    pub soft_affinity_weight_multiplier: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for SchedulerSection {
    fn default() -> Self {
        SchedulerSection {
            ram_weight_multiplier: 1.0,
            cpu_weight_multiplier: 0.0,
            disk_weight_multiplier: 0.0,
            soft_affinity_weight_multiplier: 1.0,
        }
    }
}

impl SchedulerSection {
    pub fn validate(&self) -> Result<(), FieldError> {
        for (f, v) in [
            ("ram_weight_multiplier", self.ram_weight_multiplier),
            ("cpu_weight_multiplier", self.cpu_weight_multiplier),
            ("disk_weight_multiplier", self.disk_weight_multiplier),
            (
                "soft_affinity_weight_multiplier",
                self.soft_affinity_weight_multiplier,
            ),
        ] {
            if !v.is_finite() || v.abs() > 1000.0 {
                return Err(FieldError::new(
                    f,
                    v,
                    "must be a number between -1000 and 1000",
                ));
            }
        }
        Ok(())
    }
}

impl Validate for SiteConfig {
    fn validate(&self) -> Result<(), FieldError> {
        crate::ids::check_site_id("site.id", &self.site.id)?;
        validate::name("site.name", &self.site.name)?;
        check_labels("site.labels", &self.site.labels)?;
        if let Some(p) = &self.api.admin_password {
            check_password("api.admin_password", p)?;
        }
        validate::range(
            "api.token_ttl_secs",
            self.api.token_ttl_secs,
            60,
            7 * 24 * 3600,
        )?;
        if let Some(u) = &self.api.public_url {
            check_url("api.public_url", u)?;
        }
        self.scheduler.validate().map_err(|e| e.at("scheduler"))?;
        self.compute.validate().map_err(|e| e.at("compute"))?;
        if let Some(r) = &self.region {
            r.validate()?;
        }
        if let Some(n) = &self.network {
            n.validate(&self.hosts)?;
        }
        self.storage.validate(self.region.is_some())?;
        self.alarms.validate()?;
        if let Some(ha) = &self.ha {
            ha.validate(self.region.is_some())?;
        }
        if self.hosts.is_empty() {
            return Err(FieldError::new(
                "hosts",
                "[]",
                "must list at least one host",
            ));
        }
        each(&self.hosts, "hosts", HostSpec::validate, |h| {
            Some(h.name.clone())
        })?;
        if !self.hosts.iter().any(HostSpec::is_compute) {
            return Err(FieldError::new(
                "hosts",
                self.hosts.len(),
                "must include at least one host with role compute",
            ));
        }
        each(&self.flavors, "flavors", FlavorSpec::validate, |f| {
            Some(f.name.clone())
        })?;
        each(&self.flavors, "flavors", |_| Ok(()), |f| f.id.clone())?;
        each(&self.images, "images", ImageSpec::validate, |i| {
            Some(i.name.clone())
        })?;
        each(&self.images, "images", |_| Ok(()), |i| i.id.clone())?;
        Ok(())
    }
}

// ---------------------------------------------------------------- region

/// `roost-controller`'s config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub region: RegionSection,
    pub api: RegionApiSection,
    pub quic: QuicSection,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Seconds of silence after which a site is marked offline.
    #[serde(default = "default_offline_after")]
    pub offline_after_secs: u64,
    /// Sites expected in this region, with their labels for placement.
    #[serde(default)]
    pub sites: Vec<RegionSite>,
}

fn default_offline_after() -> u64 {
    10
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSection {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionApiSection {
    pub listen: SocketAddr,
    /// URL clients reach the controller's API at, used in the Keystone
    /// catalog and links (e.g. `https://region.example:7443` behind a
    /// proxy). Defaults to `http://` + the request's Host header.
    #[serde(default)]
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicSection {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSite {
    pub id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Validate for RegionConfig {
    fn validate(&self) -> Result<(), FieldError> {
        crate::ids::check_dns_label("region.name", &self.region.name)?;
        if let Some(u) = &self.api.public_url {
            check_url("api.public_url", u)?;
        }
        if self.api.listen == self.quic.listen {
            return Err(FieldError::new(
                "quic.listen",
                self.quic.listen,
                "must differ from api.listen",
            ));
        }
        // Sites send a keep-alive every 3 s: at least 8 s, so one lost
        // keep-alive (a 6 s gap) never makes a live site look silent.
        validate::range("offline_after_secs", self.offline_after_secs, 8, 300)?;
        each(
            &self.sites,
            "sites",
            |s| {
                crate::ids::check_site_id("id", &s.id)?;
                check_labels("labels", &s.labels)
            },
            |s| Some(s.id.clone()),
        )
    }
}

// ---------------------------------------------------------------- edge network

/// The site's physical networking, given to `roost-agent install
/// --network-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeNetConfig {
    pub management: ManagementNet,
    #[serde(default)]
    pub providers: Vec<ProviderNet>,
    #[serde(default)]
    pub dns_servers: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagementNet {
    pub interface: String,
    pub address: Cidr,
    pub gateway: Option<IpAddr>,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
}

fn default_mtu() -> u32 {
    1500
}

/// A provider network tenants' networks are built on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderNet {
    pub name: String,
    pub kind: ProviderKind,
    /// Physical interface (flat, vlan) or the interface VXLAN runs over.
    pub interface: String,
    /// Inclusive range of VLAN ids or VXLAN VNIs tenants may use.
    #[serde(default)]
    pub segmentation_range: Option<[u32; 2]>,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Flat,
    Vlan,
    Vxlan,
}

/// Checks a Linux interface name: 1 to 15 characters, no '/', ':' or space.
pub fn check_ifname(field: &str, name: &str) -> Result<(), FieldError> {
    if name.is_empty()
        || name.len() > 15
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(FieldError::new(
            field,
            name,
            "must be a Linux interface name: 1 to 15 characters, no '/', ':' or spaces",
        ));
    }
    Ok(())
}

impl Validate for EdgeNetConfig {
    fn validate(&self) -> Result<(), FieldError> {
        let m = &self.management;
        check_ifname("management.interface", &m.interface)?;
        if let Some(gw) = m.gateway {
            if !m.address.contains(gw) {
                return Err(FieldError::new(
                    "management.gateway",
                    gw,
                    format!("must be inside {}", String::from(m.address)),
                ));
            }
        }
        validate::range("management.mtu", m.mtu, 576, 9216)?;
        each(
            &self.providers,
            "providers",
            |p| {
                crate::ids::check_dns_label("name", &p.name)?;
                check_ifname("interface", &p.interface)?;
                validate::range("mtu", p.mtu, 576, 9216)?;
                let max = match p.kind {
                    ProviderKind::Flat => {
                        if let Some(r) = p.segmentation_range {
                            return Err(FieldError::new(
                                "segmentation_range",
                                format!("{r:?}"),
                                "is not allowed on a flat network",
                            ));
                        }
                        return Ok(());
                    }
                    ProviderKind::Vlan => 4094,
                    ProviderKind::Vxlan => 16_777_215,
                };
                let [lo, hi] = p
                    .segmentation_range
                    .ok_or_else(|| FieldError::missing("segmentation_range"))?;
                validate::range("segmentation_range[0]", lo, 1, max)?;
                validate::range("segmentation_range[1]", hi, lo, max)
            },
            |p| Some(p.name.clone()),
        )
    }
}

// ---------------------------------------------------------------- install

/// `roost-agent install`'s arguments. The flags and a `--from-file` file
/// (zero-touch: a USB stick, a config drive) fill the same struct: the
/// file's keys are the flags' names with `_` for `-`, and a flag given on
/// the command line wins over the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallArgs {
    /// The site's id, as the region's config lists it.
    #[serde(default)]
    pub site_id: Option<String>,
    /// A display name; defaults to the site id.
    #[serde(default)]
    pub site_name: Option<String>,
    /// The controller's API, where the site enrolls.
    #[serde(default)]
    pub central_api: Option<String>,
    /// The controller's address as this site reaches it (QUIC).
    #[serde(default)]
    pub controller_ip: Option<IpAddr>,
    /// The controller's QUIC port; asked of the controller when omitted.
    #[serde(default)]
    pub quic_port: Option<u16>,
    /// The region's name; asked of the controller when omitted (so needed
    /// only with `offline` when the controller cannot be reached).
    #[serde(default)]
    pub region_name: Option<String>,
    /// A one-time join token from `roost-controller token create`.
    #[serde(default)]
    pub token: Option<String>,
    /// The site's physical networking ([`EdgeNetConfig`]); relative to the
    /// file it is named in.
    #[serde(default)]
    pub network_config: Option<PathBuf>,
    /// Port of the local API, on the management address.
    #[serde(default)]
    pub api_port: Option<u16>,
    /// `libvirt` (default) or `record-only` (no VMs: intent only).
    #[serde(default)]
    pub compute_driver: Option<ComputeDriverKind>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Where the config goes (default `/etc/roost`).
    #[serde(default)]
    pub config_dir: Option<PathBuf>,
    /// Where the store goes (default `/var/lib/roost/agent`).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Install under this directory as if it were `/` (image builds, tests).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Install even if the controller cannot be reached; the agent enrolls
    /// when it first can.
    #[serde(default)]
    pub offline: bool,
    /// Start the agent once installed.
    #[serde(default)]
    pub start: bool,
}

impl InstallArgs {
    /// Fills what `self` lacks from `file` (flags win over the file).
    pub fn or_from(self, file: InstallArgs) -> InstallArgs {
        let mut labels = file.labels;
        labels.extend(self.labels);
        InstallArgs {
            site_id: self.site_id.or(file.site_id),
            site_name: self.site_name.or(file.site_name),
            central_api: self.central_api.or(file.central_api),
            controller_ip: self.controller_ip.or(file.controller_ip),
            quic_port: self.quic_port.or(file.quic_port),
            region_name: self.region_name.or(file.region_name),
            token: self.token.or(file.token),
            network_config: self.network_config.or(file.network_config),
            api_port: self.api_port.or(file.api_port),
            compute_driver: self.compute_driver.or(file.compute_driver),
            labels,
            config_dir: self.config_dir.or(file.config_dir),
            data_dir: self.data_dir.or(file.data_dir),
            root: self.root.or(file.root),
            offline: self.offline || file.offline,
            start: self.start || file.start,
        }
    }

    /// Reads an install file (checked whole once the flags are merged in,
    /// by [`Validate`]): paths in it are relative to its directory.
    pub fn load(path: &Path) -> Result<InstallArgs, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.into(),
            source,
        })?;
        let mut args: InstallArgs = parse_yaml(path, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut args.network_config,
            &mut args.config_dir,
            &mut args.data_dir,
            &mut args.root,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(args)
    }
}

fn required<'a, T>(v: &'a Option<T>, field: &str) -> Result<&'a T, FieldError> {
    v.as_ref().ok_or_else(|| FieldError::missing(field))
}

impl Validate for InstallArgs {
    /// Field names are the file's keys; the flags are the same with `-`.
    fn validate(&self) -> Result<(), FieldError> {
        crate::ids::check_site_id("site_id", required(&self.site_id, "site_id")?)?;
        if let Some(n) = &self.site_name {
            validate::name("site_name", n)?;
        }
        check_url("central_api", required(&self.central_api, "central_api")?)?;
        let ip = required(&self.controller_ip, "controller_ip")?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(FieldError::new(
                "controller_ip",
                ip,
                "must be the controller's unicast address",
            ));
        }
        if self.quic_port == Some(0) {
            return Err(FieldError::new("quic_port", 0, "must be from 1 to 65535"));
        }
        if self.api_port == Some(0) {
            return Err(FieldError::new("api_port", 0, "must be from 1 to 65535"));
        }
        if let Some(n) = &self.region_name {
            crate::ids::check_dns_label("region_name", n)?;
        }
        if let Some(t) = &self.token {
            let parts: Vec<&str> = t.split('.').collect();
            if parts.len() != 3 || parts[0] != "rjt1" || parts[2].is_empty() {
                return Err(FieldError::new(
                    "token",
                    "<hidden>",
                    "must be a token from `roost-controller token create` (rjt1.<site>.<secret>)",
                ));
            }
            if Some(parts[1]) != self.site_id.as_deref() {
                return Err(FieldError::new(
                    "token",
                    format!("<a token for site {}>", parts[1]),
                    format!(
                        "must be a token for this site, {}",
                        self.site_id.as_deref().unwrap_or_default()
                    ),
                ));
            }
        }
        required(&self.network_config, "network_config")?;
        check_labels("labels", &self.labels)?;
        for (field, p) in [
            ("config_dir", &self.config_dir),
            ("data_dir", &self.data_dir),
            ("root", &self.root),
        ] {
            if let Some(p) = p {
                if p.is_relative() {
                    return Err(FieldError::new(
                        field,
                        p.display(),
                        "must be an absolute path",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site_yaml(hosts: &str) -> String {
        format!("site: {{id: edge-test-01, name: Test}}\nhosts:\n{hosts}")
    }

    const HOST: &str =
        "  - {name: compute-0, roles: [compute], vcpus: 8, ram_mb: 16384, disk_gb: 100}\n";

    #[test]
    fn valid_minimal_site() {
        let c: SiteConfig = parse(Path::new("t.yaml"), &site_yaml(HOST)).unwrap();
        assert_eq!(c.hosts[0].cpu_allocation_ratio, 4.0);
        assert_eq!(c.api.listen.port(), 8780);
    }

    #[test]
    fn unknown_field_is_refused_with_position() {
        let text = site_yaml(HOST) + "colour: blue\n";
        let err = parse::<SiteConfig>(Path::new("t.yaml"), &text).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ConfigError::Parse { line: 4, .. }), "{msg}");
        assert!(msg.contains("unknown field `colour`"), "{msg}");
    }

    #[test]
    fn invalid_field_names_file_field_value_and_rule() {
        let text = site_yaml(&HOST.replace("vcpus: 8", "vcpus: 0"));
        let msg = parse::<SiteConfig>(Path::new("f.yaml"), &text)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "f.yaml: hosts[0].vcpus: must be between 1 and 4096 (got 0)"
        );
    }

    #[test]
    fn ha_section_is_checked_field_by_field() {
        let region = "region: {name: eu, address: \"10.0.0.1:7444\"}\n";
        let ha = |body: &str, region: &str| {
            parse::<SiteConfig>(
                Path::new("f"),
                &format!("{}{region}ha: {{{body}}}\n", site_yaml(HOST)),
            )
            .map_err(|e| e.to_string())
        };
        let good = "node: c0, peer_name: c1, listen: \"0.0.0.0:7445\", peer: \"10.0.0.2:7445\"";
        let c = ha(good, region).unwrap();
        let h = c.ha.unwrap();
        assert_eq!((h.takeover_after_ms, h.ack_timeout_ms), (3000, 1000));
        for (body, region, want) in [
            (good, "", "f: ha: needs a region section"),
            (
                &good.replace("peer_name: c1", "peer_name: c0") as &str,
                region,
                "f: ha.peer_name: must differ from ha.node (got c0)",
            ),
            (
                &good.replace("node: c0", "node: C0"),
                region,
                "f: ha.node: must be 1 to 63 lowercase",
            ),
            (
                &good.replace("10.0.0.2:7445", "0.0.0.0:7445"),
                region,
                "f: ha.peer: must be the peer's own address and port",
            ),
            (
                &format!("{good}, takeover_after_ms: 500"),
                region,
                "f: ha.takeover_after_ms: must be between 1000 and 60000 (got 500)",
            ),
            (
                &format!("{good}, takeover_after_ms: 2000, ack_timeout_ms: 2000"),
                region,
                "f: ha.ack_timeout_ms: must be below ha.takeover_after_ms (got 2000)",
            ),
        ] {
            let err = ha(body, region).unwrap_err();
            assert!(err.starts_with(want), "{body}: {err}");
        }
    }

    #[test]
    fn libvirt_settings_are_checked() {
        let with = |compute: &str| {
            parse::<SiteConfig>(
                Path::new("f"),
                &format!("{}compute:\n{compute}", site_yaml(HOST)),
            )
        };
        let ok = with("  driver: libvirt\n  libvirt: {uri: \"qemu:///embed?root=/var/lib/roost/lv\", accel: tcg}\n").unwrap();
        assert_eq!(
            ok.compute.libvirt.embed_root(),
            Some(PathBuf::from("/var/lib/roost/lv"))
        );
        assert_eq!(ok.compute.max_parallel, 8);
        for (compute, want) in [
            (
                "  libvirt: {uri: \"xen:///system\"}\n",
                "compute.libvirt.uri: must be qemu:///system",
            ),
            (
                "  libvirt: {uri: \"qemu:///embed?root=lv\"}\n",
                "compute.libvirt.uri: the embedded driver's root must be an absolute path",
            ),
            (
                &format!(
                    "  libvirt: {{uri: \"qemu:///embed?root=/{}\"}}\n",
                    "d".repeat(70)
                ),
                "at most 48 bytes",
            ),
            (
                "  libvirt: {uri: \"qemu:///embed?root=/var/lv&x=1\"}\n",
                "without '&'",
            ),
            (
                "  libvirt: {uri: \"qemu+ssh://cmp-1/system\"}\n",
                "remote URIs are not supported",
            ),
            (
                "  libvirt: {instances_dir: rel/dir}\n",
                "compute.libvirt.instances_dir: must be an absolute path",
            ),
            (
                "  max_parallel: 1\nstorage: {volumes_dir: vols}\n",
                "storage.volumes_dir: must be an absolute path",
            ),
            (
                "  max_parallel: 1\nstorage: {volume_dir: /v}\n",
                "unknown field `volume_dir`",
            ),
            (
                "  max_parallel: 1\nstorage: {fetch_rate_kbit: 2}\n",
                "storage.fetch_rate_kbit: must be between 8 and 100000000 (got 2)",
            ),
            (
                "  max_parallel: 1\nstorage: {tiers: {hot: {dir: cache, capacity_mb: 64}}}\n",
                "storage.tiers.hot.dir: must be an absolute path",
            ),
            (
                "  max_parallel: 1\nstorage: {tiers: {hot: {dir: /nvme, capacity_mb: 1}}}\n",
                "storage.tiers.hot.capacity_mb: must be between 16 and 1073741824 (got 1)",
            ),
            (
                "  max_parallel: 1\nstorage: {tiers: {warm_capacity_mb: 0}}\n",
                "storage.tiers.warm_capacity_mb: must be between 16 and 1073741824 (got 0)",
            ),
            (
                "  max_parallel: 1\nstorage: {tiers: {cold: true}}\n",
                "storage.tiers.cold: needs a region section",
            ),
            (
                "  max_parallel: 1\nstorage: {tiers: {hot: {dir: /nvme}}}\n",
                "missing field `capacity_mb`",
            ),
            (
                "  max_parallel: 1\nstorage: {tiers: {snapshots_capacity_mb: 64}}\n",
                "storage.tiers.snapshots_capacity_mb: needs cold: true",
            ),
            (
                "  max_parallel: 1\nstorage: {tiers: {cold_after_idle_secs: 2592001}}\n",
                "storage.tiers.cold_after_idle_secs: must be between 0 and 2592000 (got 2592001)",
            ),
            (
                "  max_parallel: 1\nalarms: {disk_nearly_full_percent: 100}\n",
                "alarms.disk_nearly_full_percent: must be between 3 and 99 (got 100)",
            ),
            (
                "  max_parallel: 1\nalarms: {host_down_after_secs: 1}\n",
                "alarms.host_down_after_secs: must be between 4 and 3600 (got 1)",
            ),
            (
                "  max_parallel: 1\nalarms: {backup_stale_after_secs: 5}\n",
                "alarms.backup_stale_after_secs: must be between 60 and 2592000 (got 5)",
            ),
            (
                "  max_parallel: 1\nalarms: {link_down_after_secs: 0}\n",
                "alarms.link_down_after_secs: must be between 1 and 86400 (got 0)",
            ),
            ("  libvirt: {accel: fast}\n", "unknown variant `fast`"),
            (
                "  max_parallel: 0\n",
                "compute.max_parallel: must be between 1 and 256 (got 0)",
            ),
        ] {
            let msg = with(compute).unwrap_err().to_string();
            assert!(msg.contains(want), "{compute}: {msg}");
        }
    }

    #[test]
    fn duplicate_hosts_and_no_compute_are_refused() {
        let msg = parse::<SiteConfig>(Path::new("f"), &site_yaml(&HOST.repeat(2)))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("hosts[1]: must be unique within hosts"),
            "{msg}"
        );
        let ctl = HOST.replace("[compute]", "[controller]");
        let msg = parse::<SiteConfig>(Path::new("f"), &site_yaml(&ctl))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("role compute"), "{msg}");
    }

    #[test]
    fn short_password_is_refused_without_echo() {
        let text = site_yaml(HOST) + "api: {admin_password: abc}\n";
        let msg = parse::<SiteConfig>(Path::new("f"), &text)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("api.admin_password: must be 8 to 128 characters"),
            "{msg}"
        );
        assert!(!msg.contains("abc"), "{msg}");
    }

    #[test]
    fn region_section_is_checked() {
        let ok = site_yaml(HOST) + "region: {name: eu-west, address: 'controller.example:7444'}\n";
        let c: SiteConfig = parse(Path::new("f"), &ok).unwrap();
        assert_eq!(c.region.unwrap().address, "controller.example:7444");
        for (bad, want) in [
            (
                "{name: eu-west, address: 'controller'}",
                "region.address: must be host:port",
            ),
            ("{name: eu-west, address: ':7444'}", "region.address"),
            ("{name: eu-west, address: 'c:0'}", "region.address"),
            ("{name: EU_West, address: 'c:1'}", "region.name"),
        ] {
            let msg =
                parse::<SiteConfig>(Path::new("f"), &(site_yaml(HOST) + "region: " + bad + "\n"))
                    .unwrap_err()
                    .to_string();
            assert!(msg.contains(want), "{bad}: {msg}");
        }
    }

    proptest::proptest! {
        /// Any text is either a valid config or a refusal with a position or
        /// a field: never a panic.
        #[test]
        fn any_text_loads_or_is_refused(text in "[ -~\n]{0,300}") {
            match parse::<SiteConfig>(Path::new("f.yaml"), &text) {
                Ok(c) => proptest::prop_assert!(c.validate().is_ok()),
                Err(e) => proptest::prop_assert!(e.to_string().starts_with("f.yaml")),
            }
        }
    }

    #[test]
    fn edge_net_rules() {
        let ok = "management: {interface: eth0, address: 192.168.1.10/24, gateway: 192.168.1.1}\n\
                  providers:\n  - {name: physnet0, kind: vlan, interface: eth1, segmentation_range: [100, 199]}\n";
        assert!(parse::<EdgeNetConfig>(Path::new("n"), ok).is_ok());
        let bad = ok.replace("[100, 199]", "[100, 5000]");
        let msg = parse::<EdgeNetConfig>(Path::new("n"), &bad)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "n: providers[0].segmentation_range[1]: must be between 100 and 4094 (got 5000)"
        );
        let bad = ok.replace("gateway: 192.168.1.1", "gateway: 10.0.0.1");
        assert!(parse::<EdgeNetConfig>(Path::new("n"), &bad)
            .unwrap_err()
            .to_string()
            .contains("management.gateway"));
    }

    #[test]
    fn network_section_names_a_host_with_an_address() {
        let hosts = "  - {name: compute-0, roles: [compute], vcpus: 8, ram_mb: 16384, disk_gb: 100, address: 10.0.0.5}\n";
        let with = |net: &str| {
            parse::<SiteConfig>(
                Path::new("f"),
                &format!("{}network: {net}\n", site_yaml(hosts)),
            )
        };
        let ok = with("{host: compute-0, underlay: eth0, physnets: {plant: eno2}}").unwrap();
        assert_eq!(ok.network.unwrap().period_secs, 10);
        let e = with("{host: compute-9}").unwrap_err().to_string();
        assert!(
            e.contains("network.host: must be the name of one of hosts[]"),
            "{e}"
        );
        let e = with("{host: compute-0, physnets: {plant: 'eth0:1'}}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("network.physnets.plant"), "{e}");
        let no_addr = parse::<SiteConfig>(
            Path::new("f"),
            &format!(
                "{}network: {{host: compute-0, underlay: eth0}}\n",
                site_yaml(HOST)
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(
            no_addr.contains("needs an IPv4 address on host compute-0"),
            "{no_addr}"
        );
    }

    #[test]
    fn install_args_from_a_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("install.yaml");
        std::fs::write(
            &f,
            "site_id: edge-factory-01\ncentral_api: https://region.example:7443\ncontroller_ip: 192.168.1.100\ntoken: rjt1.edge-factory-01.abc\nnetwork_config: edge-net.yaml\nlabels: {kind: factory}\n",
        )
        .unwrap();
        let file = InstallArgs::load(&f).unwrap();
        assert_eq!(file.network_config, Some(dir.path().join("edge-net.yaml")));
        let flags = InstallArgs {
            controller_ip: Some("10.0.0.1".parse().unwrap()),
            start: true,
            ..Default::default()
        };
        let args = flags.or_from(file);
        assert_eq!(args.controller_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(args.site_id.as_deref(), Some("edge-factory-01"));
        assert!(args.start);
        args.validate().unwrap();
    }

    #[test]
    fn install_args_name_the_field_and_rule() {
        let ok = InstallArgs {
            site_id: Some("edge-a".into()),
            central_api: Some("http://10.0.0.1:7443".into()),
            controller_ip: Some("10.0.0.1".parse().unwrap()),
            token: Some("rjt1.edge-a.secret".into()),
            network_config: Some("/n.yaml".into()),
            ..Default::default()
        };
        ok.validate().unwrap();
        let err = |a: InstallArgs| a.validate().unwrap_err().to_string();
        assert_eq!(
            err(InstallArgs {
                site_id: None,
                ..ok.clone()
            }),
            "site_id: is required (got nothing)"
        );
        assert!(err(InstallArgs {
            token: Some("rjt1.edge-b.secret".into()),
            ..ok.clone()
        })
        .starts_with("token: must be a token for this site, edge-a"));
        assert!(err(InstallArgs {
            token: Some("hunter2".into()),
            ..ok.clone()
        })
        .contains("(got <hidden>)"));
        assert!(err(InstallArgs {
            central_api: Some("region:7443".into()),
            ..ok.clone()
        })
        .starts_with("central_api: must be an http"));
        assert!(err(InstallArgs {
            controller_ip: Some("0.0.0.0".parse().unwrap()),
            ..ok.clone()
        })
        .starts_with("controller_ip: "));
        assert!(err(InstallArgs {
            data_dir: Some("var/lib".into()),
            ..ok.clone()
        })
        .starts_with("data_dir: must be an absolute path"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("i.yaml");
        std::fs::write(&f, "site_id: edge-a\n  central_api: x\n").unwrap();
        let e = InstallArgs::load(&f).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { line: 2, .. }), "{e}");
    }
}
