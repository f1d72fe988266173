//! Hosts, flavors, servers and server groups.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Fault, Resource};
use crate::validate::{self, FieldError};

/// What a host of the site is for. Only `compute` hosts run servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostRole {
    Controller,
    Compute,
}

/// A host of the site, as its operator declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Host name, unique within the site (a DNS label).
    pub name: String,
    pub roles: BTreeSet<HostRole>,
    pub vcpus: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
    #[serde(default = "default_cpu_ratio")]
    pub cpu_allocation_ratio: f64,
    #[serde(default = "one")]
    pub ram_allocation_ratio: f64,
    #[serde(default = "one")]
    pub disk_allocation_ratio: f64,
    /// RAM kept back for the host itself, never offered to servers.
    #[serde(default)]
    pub reserved_ram_mb: u64,
    /// Traits (Placement style, e.g. `CUSTOM_GPU`, `HW_CPU_X86_AVX2`).
    #[serde(default)]
    pub traits: BTreeSet<String>,
    #[serde(default = "default_az")]
    pub availability_zone: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Management address of the host: shown, and on a node that knows
    /// its own host (`network.host`) its VXLAN endpoint and where other
    /// nodes look for its agent.
    #[serde(default)]
    pub address: Option<String>,
}

fn default_cpu_ratio() -> f64 {
    4.0
}
fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
/// Nova's default availability zone.
pub fn default_az() -> String {
    "nova".into()
}

impl HostSpec {
    /// A host with the given size, in both roles, and every other field at
    /// the default a config file would give it.
    pub fn new(name: &str, vcpus: u32, ram_mb: u64, disk_gb: u64) -> HostSpec {
        HostSpec {
            name: name.to_string(),
            roles: BTreeSet::from([HostRole::Controller, HostRole::Compute]),
            vcpus,
            ram_mb,
            disk_gb,
            cpu_allocation_ratio: default_cpu_ratio(),
            ram_allocation_ratio: one(),
            disk_allocation_ratio: one(),
            reserved_ram_mb: 0,
            traits: BTreeSet::new(),
            availability_zone: default_az(),
            enabled: yes(),
            address: None,
        }
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        crate::ids::check_dns_label("name", &self.name)?;
        if self.roles.is_empty() {
            return Err(FieldError::new(
                "roles",
                "[]",
                "must list at least one of controller, compute",
            ));
        }
        validate::range("vcpus", self.vcpus, 1, 4096)?;
        validate::range("ram_mb", self.ram_mb, 256, 64 * 1024 * 1024)?;
        validate::range("disk_gb", self.disk_gb, 1, 1024 * 1024)?;
        validate::ratio("cpu_allocation_ratio", self.cpu_allocation_ratio)?;
        validate::ratio("ram_allocation_ratio", self.ram_allocation_ratio)?;
        validate::ratio("disk_allocation_ratio", self.disk_allocation_ratio)?;
        if self.reserved_ram_mb >= self.ram_mb {
            return Err(FieldError::new(
                "reserved_ram_mb",
                self.reserved_ram_mb,
                format!("must be less than ram_mb ({})", self.ram_mb),
            ));
        }
        for t in &self.traits {
            check_trait("traits", t)?;
        }
        check_az("availability_zone", &self.availability_zone)?;
        Ok(())
    }

    pub fn is_compute(&self) -> bool {
        self.roles.contains(&HostRole::Compute)
    }

    /// Capacity offered to servers, after allocation ratios and reservations.
    pub fn capacity(&self) -> Usage {
        Usage {
            vcpus: (f64::from(self.vcpus) * self.cpu_allocation_ratio).floor() as u64,
            ram_mb: ((self.ram_mb - self.reserved_ram_mb) as f64 * self.ram_allocation_ratio)
                .floor() as u64,
            disk_gb: (self.disk_gb as f64 * self.disk_allocation_ratio).floor() as u64,
        }
    }
}

/// Checks a Placement trait name: `[A-Z0-9_]`, 1 to 255 characters.
pub fn check_trait(field: &str, t: &str) -> Result<(), FieldError> {
    if t.is_empty()
        || t.len() > 255
        || !t
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(FieldError::new(
            field,
            t,
            "traits must be 1 to 255 of A-Z, 0-9 and '_' (e.g. CUSTOM_GPU)",
        ));
    }
    Ok(())
}

fn check_az(field: &str, az: &str) -> Result<(), FieldError> {
    if az.is_empty() || az.len() > 255 || az.contains(':') || az.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            az,
            "must be 1 to 255 characters without ':'",
        ));
    }
    Ok(())
}

/// Resources consumed or offered: the three Placement classes Roost tracks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub vcpus: u64,
    pub ram_mb: u64,
    pub disk_gb: u64,
}

impl Usage {
    pub fn add(&mut self, other: &Usage) {
        self.vcpus += other.vcpus;
        self.ram_mb += other.ram_mb;
        self.disk_gb += other.disk_gb;
    }
    pub fn sub(&mut self, other: &Usage) {
        self.vcpus = self.vcpus.saturating_sub(other.vcpus);
        self.ram_mb = self.ram_mb.saturating_sub(other.ram_mb);
        self.disk_gb = self.disk_gb.saturating_sub(other.disk_gb);
    }
}

/// Flavor extra spec pinning a server's vCPUs to host CPUs.
pub const CPUSET_SPEC: &str = "roost:cpuset";

/// Parses a CPU set (`0-3,6`) into its CPUs, or says the rule it breaks.
pub fn parse_cpuset(s: &str) -> Result<BTreeSet<u32>, &'static str> {
    const RULE: &str =
        "must be CPU numbers and ranges, e.g. 0-3,6 (each below 4096, ranges ascending)";
    let mut cpus = BTreeSet::new();
    for part in s.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi): (u32, u32) = match (lo.parse(), hi.parse()) {
            (Ok(lo), Ok(hi)) if lo <= hi && hi < 4096 => (lo, hi),
            _ => return Err(RULE),
        };
        cpus.extend(lo..=hi);
    }
    Ok(cpus)
}

/// Host status: what is allocated on it and how many servers it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub used: Usage,
    pub servers: u32,
}

pub type Host = Resource<HostSpec, HostStatus>;

/// A flavor: the size of a server. Flavors are pure intent; their status is
/// empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlavorSpec {
    pub name: String,
    /// The id clients use in `flavorRef`; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    pub vcpus: u32,
    pub ram_mb: u64,
    pub disk_gb: u64,
    #[serde(default)]
    pub ephemeral_gb: u64,
    #[serde(default)]
    pub swap_mb: u64,
    #[serde(default = "yes")]
    pub is_public: bool,
    /// Nova extra specs; `trait:NAME: required` asks for a host trait.
    #[serde(default)]
    pub extra_specs: BTreeMap<String, String>,
}

impl FlavorSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        validate::name("name", &self.name)?;
        if let Some(id) = &self.id {
            if id.is_empty()
                || id.len() > 255
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(FieldError::new(
                    "id",
                    id,
                    "must be 1 to 255 of letters, digits, '-', '_' or '.'",
                ));
            }
        }
        validate::range("vcpus", self.vcpus, 1, 1024)?;
        validate::range("ram_mb", self.ram_mb, 1, 16 * 1024 * 1024)?;
        validate::range("disk_gb", self.disk_gb, 0, 1024 * 1024)?;
        validate::range("ephemeral_gb", self.ephemeral_gb, 0, 1024 * 1024)?;
        validate::range("swap_mb", self.swap_mb, 0, 1024 * 1024)?;
        for (k, v) in &self.extra_specs {
            let field = format!("extra_specs.{k}");
            if k.is_empty() || k.len() > 255 {
                return Err(FieldError::new(
                    "extra_specs",
                    k,
                    "keys must be 1 to 255 characters",
                ));
            }
            if k == CPUSET_SPEC {
                parse_cpuset(v).map_err(|rule| FieldError::new(&field, v, rule))?;
            }
            if let Some(t) = k.strip_prefix("trait:") {
                check_trait(&field, t)?;
                if v != "required" && v != "forbidden" {
                    return Err(FieldError::new(
                        field,
                        v,
                        "must be 'required' or 'forbidden'",
                    ));
                }
            }
        }
        Ok(())
    }

    /// What one server of this flavor claims on its host.
    pub fn usage(&self) -> Usage {
        Usage {
            vcpus: u64::from(self.vcpus),
            ram_mb: self.ram_mb + self.swap_mb,
            disk_gb: self.disk_gb + self.ephemeral_gb,
        }
    }

    /// Host CPUs the server's vCPUs are pinned to (`roost:cpuset`), as
    /// libvirt's `cpuset` syntax, e.g. `2-3,6`.
    pub fn cpuset(&self) -> Option<&str> {
        self.extra_specs.get(CPUSET_SPEC).map(String::as_str)
    }

    /// Traits the flavor requires (`trait:X: required`).
    pub fn required_traits(&self) -> impl Iterator<Item = &str> {
        self.traits_with("required")
    }

    /// Traits the flavor forbids (`trait:X: forbidden`).
    pub fn forbidden_traits(&self) -> impl Iterator<Item = &str> {
        self.traits_with("forbidden")
    }

    fn traits_with<'a>(&'a self, want: &'a str) -> impl Iterator<Item = &'a str> {
        self.extra_specs
            .iter()
            .filter(move |(_, v)| *v == want)
            .filter_map(|(k, _)| k.strip_prefix("trait:"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlavorStatus {}

pub type Flavor = Resource<FlavorSpec, FlavorStatus>;

/// Whether a server should be running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerIntent {
    #[default]
    Running,
    Stopped,
}

/// What an operator wants of a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    pub name: String,
    pub project_id: String,
    pub user_id: String,
    pub flavor_id: String,
    pub image_id: String,
    /// Availability zone asked for, if any.
    pub availability_zone: Option<String>,
    /// Server group (affinity policy) the server belongs to, if any.
    pub server_group: Option<String>,
    pub power: PowerIntent,
    /// Bumped by every reboot request; the reconciler reboots until
    /// `status.reboot_generation` catches up.
    pub reboot_generation: u64,
    pub reboot_hard: bool,
    /// Bumped by every rebuild request (with `image_id` set to the image to
    /// rebuild from); the reconciler rebuilds until
    /// `status.rebuild_generation` catches up.
    #[serde(default)]
    pub rebuild_generation: u64,
    /// Set by a delete request; the reconciler removes the server.
    pub deleted: bool,
    pub metadata: BTreeMap<String, String>,
    /// The NICs asked for at create (Nova's `networks`), in order; the site
    /// makes or binds a port for each, in the create's transaction.
    #[serde(default)]
    pub networks: Vec<NicRequest>,
    /// Volumes attached to the server (Nova's volume attachments), in the
    /// order they were attached; each keeps the disk it got at attach
    /// (`VolumeStatus::device`).
    #[serde(default)]
    pub volumes: Vec<String>,
}

/// One NIC asked for at server create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NicRequest {
    /// A new port on this network (with this address, if given).
    Network {
        id: String,
        #[serde(default)]
        fixed_ip: Option<std::net::IpAddr>,
    },
    /// An existing, unbound port.
    Port { id: String },
}

impl ServerSpec {
    /// A server asked to run, of `flavor_id` from `image_id`, with nothing
    /// else asked (no zone, group, metadata, reboot, rebuild or delete).
    pub fn new(
        name: impl Into<String>,
        project_id: impl Into<String>,
        user_id: impl Into<String>,
        flavor_id: impl Into<String>,
        image_id: impl Into<String>,
    ) -> Self {
        ServerSpec {
            name: name.into(),
            project_id: project_id.into(),
            user_id: user_id.into(),
            flavor_id: flavor_id.into(),
            image_id: image_id.into(),
            availability_zone: None,
            server_group: None,
            power: PowerIntent::Running,
            reboot_generation: 0,
            reboot_hard: false,
            rebuild_generation: 0,
            deleted: false,
            metadata: BTreeMap::new(),
            networks: Vec::new(),
            volumes: Vec::new(),
        }
    }
}

/// Nova's vm_state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    #[default]
    Building,
    Active,
    Stopped,
    Error,
    Deleted,
}

/// Nova's task_state: what is under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    #[serde(rename = "spawning")]
    Spawning,
    #[serde(rename = "powering-off")]
    PoweringOff,
    #[serde(rename = "powering-on")]
    PoweringOn,
    #[serde(rename = "rebooting")]
    Rebooting,
    #[serde(rename = "rebooting_hard")]
    RebootingHard,
    #[serde(rename = "deleting")]
    Deleting,
    #[serde(rename = "rebuilding")]
    Rebuilding,
    /// Adding or removing the disks of attached volumes (Nova shows no
    /// task for it; the server stays ACTIVE or SHUTOFF).
    #[serde(rename = "updating_volumes")]
    UpdatingVolumes,
}

/// Nova's power_state numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    #[default]
    NoState,
    Running,
    Paused,
    Shutdown,
    Crashed,
    Suspended,
}

impl PowerState {
    /// The number Nova reports in `OS-EXT-STS:power_state`.
    pub fn code(self) -> u8 {
        match self {
            PowerState::NoState => 0,
            PowerState::Running => 1,
            PowerState::Paused => 3,
            PowerState::Shutdown => 4,
            PowerState::Crashed => 6,
            PowerState::Suspended => 7,
        }
    }
}

/// What is true of a server; written by the site alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Host the scheduler placed the server on.
    pub host: Option<String>,
    /// Availability zone of that host.
    #[serde(default)]
    pub availability_zone: Option<String>,
    pub vm_state: VmState,
    pub task_state: Option<TaskState>,
    pub power_state: PowerState,
    pub reboot_generation: u64,
    #[serde(default)]
    pub rebuild_generation: u64,
    pub launched_at: Option<DateTime<Utc>>,
    pub fault: Option<Fault>,
    /// The volumes the domain has, as the last compute action left it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
}

impl ServerStatus {
    /// Nova's `status` field, derived from vm_state and task_state.
    pub fn nova_status(&self) -> &'static str {
        match (self.vm_state, self.task_state) {
            (VmState::Deleted, _) => "DELETED",
            (VmState::Active, Some(TaskState::Rebooting)) => "REBOOT",
            (VmState::Active, Some(TaskState::RebootingHard)) => "HARD_REBOOT",
            (VmState::Active | VmState::Stopped, Some(TaskState::Rebuilding)) => "REBUILD",
            (VmState::Building, _) => "BUILD",
            (VmState::Active, _) => "ACTIVE",
            (VmState::Stopped, _) => "SHUTOFF",
            (VmState::Error, _) => "ERROR",
        }
    }
}

pub type Server = Resource<ServerSpec, ServerStatus>;

/// A server group's placement policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GroupPolicy {
    Affinity,
    AntiAffinity,
    SoftAffinity,
    SoftAntiAffinity,
}

impl GroupPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupPolicy::Affinity => "affinity",
            GroupPolicy::AntiAffinity => "anti-affinity",
            GroupPolicy::SoftAffinity => "soft-affinity",
            GroupPolicy::SoftAntiAffinity => "soft-anti-affinity",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        Ok(match s {
            "affinity" => GroupPolicy::Affinity,
            "anti-affinity" => GroupPolicy::AntiAffinity,
            "soft-affinity" => GroupPolicy::SoftAffinity,
            "soft-anti-affinity" => GroupPolicy::SoftAntiAffinity,
            _ => {
                return Err(FieldError::new(
                    field,
                    s,
                    "must be one of affinity, anti-affinity, soft-affinity, soft-anti-affinity",
                ))
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerGroupSpec {
    pub name: String,
    pub project_id: String,
    pub policy: GroupPolicy,
}

impl ServerGroupSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        validate::name("name", &self.name)
    }
}

/// Members are the servers placed with the group, derived by the site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerGroupStatus {
    pub members: Vec<String>,
}

pub type ServerGroup = Resource<ServerGroupSpec, ServerGroupStatus>;

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn host(name: &str) -> HostSpec {
        HostSpec {
            name: name.into(),
            roles: [HostRole::Compute].into(),
            vcpus: 16,
            ram_mb: 65536,
            disk_gb: 500,
            cpu_allocation_ratio: 4.0,
            ram_allocation_ratio: 1.0,
            disk_allocation_ratio: 1.0,
            reserved_ram_mb: 1024,
            traits: BTreeSet::new(),
            availability_zone: "nova".into(),
            enabled: true,
            address: None,
        }
    }

    #[test]
    fn host_capacity_applies_ratios_and_reservation() {
        let c = host("compute-0").capacity();
        assert_eq!(
            c,
            Usage {
                vcpus: 64,
                ram_mb: 64512,
                disk_gb: 500
            }
        );
    }

    #[test]
    fn host_validation_names_the_field() {
        let mut h = host("compute-0");
        h.vcpus = 0;
        assert_eq!(h.validate().unwrap_err().field, "vcpus");
        let mut h = host("compute-0");
        h.reserved_ram_mb = h.ram_mb;
        assert_eq!(h.validate().unwrap_err().field, "reserved_ram_mb");
        let mut h = host("compute-0");
        h.traits.insert("gpu".into());
        assert_eq!(h.validate().unwrap_err().field, "traits");
        let mut h = host("compute-0");
        h.cpu_allocation_ratio = 0.0;
        assert_eq!(h.validate().unwrap_err().field, "cpu_allocation_ratio");
        assert!(host("compute-0").validate().is_ok());
    }

    #[test]
    fn flavor_traits_and_usage() {
        let f = FlavorSpec {
            name: "gpu.large".into(),
            id: None,
            vcpus: 8,
            ram_mb: 16384,
            disk_gb: 40,
            ephemeral_gb: 10,
            swap_mb: 512,
            is_public: true,
            extra_specs: [("trait:CUSTOM_GPU".to_string(), "required".to_string())].into(),
        };
        assert!(f.validate().is_ok());
        assert_eq!(f.required_traits().collect::<Vec<_>>(), vec!["CUSTOM_GPU"]);
        assert_eq!(
            f.usage(),
            Usage {
                vcpus: 8,
                ram_mb: 16896,
                disk_gb: 50
            }
        );
        let mut bad = f.clone();
        bad.extra_specs
            .insert("trait:CUSTOM_X".into(), "maybe".into());
        assert_eq!(
            bad.validate().unwrap_err().field,
            "extra_specs.trait:CUSTOM_X"
        );
    }

    #[test]
    fn nova_status_mapping() {
        let mut s = ServerStatus::default();
        assert_eq!(s.nova_status(), "BUILD");
        s.vm_state = VmState::Active;
        assert_eq!(s.nova_status(), "ACTIVE");
        s.task_state = Some(TaskState::RebootingHard);
        assert_eq!(s.nova_status(), "HARD_REBOOT");
        s.task_state = None;
        s.vm_state = VmState::Stopped;
        assert_eq!(s.nova_status(), "SHUTOFF");
        // As in Nova, deleting shows in the task state, not the status.
        s.task_state = Some(TaskState::Deleting);
        assert_eq!(s.nova_status(), "SHUTOFF");
    }
}
