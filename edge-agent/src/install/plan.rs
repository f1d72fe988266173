//! The install's decisions, pure: from the arguments and the [`Facts`],
//! the preflight verdicts, the agent config to write and the steps, each
//! marked create, update, unchanged or skipped. Nothing here touches the
//! machine, so every decision is unit-tested.

use roost_common::config::{
    AccelChoice, ComputeDriverKind, LibvirtSection, NetworkSection, ProviderKind, SiteConfig,
    SiteSection, UplinkSection, Validate,
};
use roost_common::model::HostSpec;

use super::facts::{Controller, Facts};
use super::{Install, Layout, UNIT_NAME};

/// The QUIC port a region listens on unless told otherwise.
pub const DEFAULT_QUIC_PORT: u16 = 7444;
const GIB: u64 = 1 << 30;
/// Below this much free space the install refuses; below `DISK_WARN`, it warns.
pub const DISK_MIN: u64 = 2 * GIB;
pub const DISK_WARN: u64 = 20 * GIB;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Pass,
    Warn,
    Fail,
}

impl Level {
    pub fn word(self) -> &'static str {
        match self {
            Level::Pass => "pass",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One preflight line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub level: Level,
    pub name: &'static str,
    pub message: String,
    /// What to do about a warn or a fail.
    pub fix: Option<String>,
}

fn check(level: Level, name: &'static str, message: impl Into<String>) -> Check {
    Check {
        level,
        name,
        message: message.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

/// How the site will reach its region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrollment {
    /// A credential for this site is already in the data dir.
    Done,
    /// The controller answers: enroll during this install.
    Now,
    /// `--offline` and the controller does not answer: the agent enrolls
    /// with the token when it first can.
    Deferred,
}

/// Everything decided, ready to show or apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub checks: Vec<Check>,
    pub region: Option<(String, u16)>,
    pub enrollment: Enrollment,
    pub config: Option<SiteConfig>,
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.level == Level::Fail)
    }
    /// Whether this run changes anything.
    pub fn changes(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s.change, Change::Create | Change::Update))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Create,
    Update,
    Unchanged,
    /// Not done, and why (with what to do instead).
    Skip(String),
}

impl Change {
    pub fn word(&self) -> &'static str {
        match self {
            Change::Create => "create",
            Change::Update => "update",
            Change::Unchanged => "unchanged",
            Change::Skip(_) => "skip",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Dir {
        path: std::path::PathBuf,
        mode: u32,
    },
    File {
        path: std::path::PathBuf,
        bytes: Vec<u8>,
        mode: u32,
    },
    /// Copy this very executable to the layout's binary path.
    Binary,
    /// Create the SQLite store and the site's token key and admin password.
    Store,
    Enroll,
    EnableUnit,
    /// Start the agent (restart it if it runs).
    Start {
        restart: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub what: String,
    pub action: Action,
    pub change: Change,
}

/// Decides everything from the arguments and the facts.
pub fn plan(i: &Install, f: &Facts) -> Plan {
    let layout = &i.layout;
    let mut checks = host_checks(i, f);
    let existing_cfg = match &f.existing.config {
        Some(Ok(c)) => Some(c),
        _ => None,
    };
    let enrolled = f.existing.enrolled_as.as_deref() == Some(i.site_id.as_str());
    let answered = matches!(f.controller, Controller::Answered { .. });

    // The controller and the enrollment.
    let enrollment = if enrolled {
        Enrollment::Done
    } else if answered {
        Enrollment::Now
    } else {
        Enrollment::Deferred
    };
    match &f.controller {
        Controller::Answered { region, quic_port } => {
            checks.push(check(
                Level::Pass,
                "controller",
                format!(
                    "{} answers: region {region}, QUIC port {quic_port}",
                    i.central_api
                ),
            ));
            if let Some(want) = i.region_name.as_ref().filter(|n| *n != region) {
                checks.push(
                    check(
                        Level::Fail,
                        "controller",
                        format!("{} is region {region}, not {want}", i.central_api),
                    )
                    .fix("check --central-api, or drop --region-name"),
                );
            }
        }
        Controller::Unreachable(why) if enrolled => checks.push(
            check(
                Level::Warn,
                "controller",
                format!("cannot reach {}: {why}", i.central_api),
            )
            .fix("already enrolled: the agent reconnects by itself when the link is back"),
        ),
        Controller::Unreachable(why) if i.offline => checks.push(
            check(
                Level::Warn,
                "controller",
                format!("cannot reach {}: {why}", i.central_api),
            )
            .fix("--offline: installing now; the agent enrolls with the token when the region answers"),
        ),
        Controller::Unreachable(why) => checks.push(
            check(
                Level::Fail,
                "controller",
                format!("cannot reach {}: {why}", i.central_api),
            )
            .fix("check the link and --central-api, or pass --offline to install now and enroll when the region is reachable"),
        ),
    }
    match (&enrollment, &f.existing.enrolled_as, &i.token) {
        (Enrollment::Done, _, _) => checks.push(check(
            Level::Pass,
            "enrollment",
            format!(
                "already enrolled as {} (credential in {}); the token is not used",
                i.site_id,
                layout.pki().display()
            ),
        )),
        (_, Some(other), _) => checks.push(
            check(
                Level::Fail,
                "enrollment",
                format!(
                    "{} holds a credential for site {other}, not {}",
                    layout.pki().display(),
                    i.site_id
                ),
            )
            .fix("a node belongs to one site: run roost-agent uninstall first"),
        ),
        (_, None, None) => checks.push(
            check(
                Level::Fail,
                "enrollment",
                "token: required to enroll (got nothing)",
            )
            .fix(format!(
                "ask the region for one: roost-controller token create --site-id {}",
                i.site_id
            )),
        ),
        (Enrollment::Now, None, Some(_)) => checks.push(match &f.token {
            Some(Err(why)) => check(
                Level::Fail,
                "enrollment",
                format!("the region refuses the join token: {why}"),
            )
            .fix(if why.contains("not a site of this region") {
                format!(
                    "check --site-id, or add the site to the region's config (sites:) and create a token: roost-controller token create --site-id {}",
                    i.site_id
                )
            } else {
                format!(
                    "ask the region for a new one: roost-controller token create --site-id {}",
                    i.site_id
                )
            }),
            _ => check(
                Level::Pass,
                "enrollment",
                format!(
                    "join token for {}: the region accepts it; enrolls now",
                    i.site_id
                ),
            ),
        }),
        (Enrollment::Deferred, None, Some(_)) => checks.push(check(
            Level::Pass,
            "enrollment",
            format!(
                "join token for {}: kept in the config until the agent enrolls",
                i.site_id
            ),
        )),
    }

    // Where the region is.
    let region_name = match &f.controller {
        Controller::Answered { region, .. } => Some(region.clone()),
        Controller::Unreachable(_) => i
            .region_name
            .clone()
            .or_else(|| existing_cfg.and_then(|c| c.region.as_ref().map(|r| r.name.clone()))),
    };
    let quic_port = i.quic_port.unwrap_or(match &f.controller {
        Controller::Answered { quic_port, .. } => *quic_port,
        Controller::Unreachable(_) => existing_cfg
            .and_then(|c| c.region.as_ref())
            .and_then(|r| r.address.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(DEFAULT_QUIC_PORT),
    });
    // Without --offline an unreachable controller has failed already.
    if region_name.is_none() && (i.offline || enrolled) {
        checks.push(
            check(
                Level::Fail,
                "controller",
                "region_name: required while the controller cannot be asked for it (got nothing)",
            )
            .fix("pass --region-name (the name in the region's config)"),
        );
    }
    checks.extend(existing_checks(i, f));

    let region = region_name.map(|n| (n, quic_port));
    let config = region.as_ref().map(|(name, port)| {
        desired_config(
            i,
            f,
            existing_cfg,
            name,
            *port,
            enrollment == Enrollment::Deferred,
        )
    });
    if let Some(Err(e)) = config.as_ref().map(|c| c.validate()) {
        checks.push(
            check(
                Level::Fail,
                "config",
                format!("the config to write is invalid: {e}"),
            )
            .fix(
                "a shorter --data-dir or --root (libvirt's socket paths are short), or other flags",
            ),
        );
    }
    let steps = match &config {
        Some(c) if !checks.iter().any(|c| c.level == Level::Fail) => steps(i, f, c, &enrollment),
        _ => Vec::new(),
    };
    Plan {
        checks,
        region,
        enrollment,
        config,
        steps,
    }
}

fn host_checks(i: &Install, f: &Facts) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(if f.euid == 0 {
        check(Level::Pass, "root", "running as root")
    } else {
        check(
            Level::Fail,
            "root",
            format!("running as uid {}, not root", f.euid),
        )
        .fix("run it as root: sudo roost-agent install ...")
    });
    out.push(match &f.kvm {
        Ok(()) => check(Level::Pass, "kvm", "/dev/kvm opens: guests run under KVM"),
        Err(e) => check(
            Level::Warn,
            "kvm",
            format!("{e}: guests will run under TCG (software emulation, many times slower)"),
        )
        .fix("enable virtualisation in the firmware and load kvm_intel or kvm_amd, then run install again"),
    });
    out.push(match i.compute_driver {
        ComputeDriverKind::RecordOnly => check(
            Level::Warn,
            "libvirt",
            "--compute-driver record-only: servers are scheduled and tracked, no VM runs",
        ),
        ComputeDriverKind::Libvirt => {
            let mut missing = Vec::new();
            if f.qemu.is_none() {
                missing.push("qemu-system-x86_64");
            }
            if !f.qemu_driver {
                missing.push("libvirt's QEMU driver");
            }
            if !f.libvirt_user && !f.libvirtd {
                missing.push("the libvirt-qemu user");
            }
            if missing.is_empty() {
                check(Level::Pass, "libvirt", libvirt_uri(i, f).1)
            } else {
                check(Level::Fail, "libvirt", format!("missing: {}", missing.join(", ")))
                    .fix("apt-get install -y libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils; useradd -r libvirt-qemu; groupadd -r kvm (or --compute-driver record-only for a site without VMs)")
            }
        }
    });
    out.push(match &f.disk {
        None => check(
            Level::Fail,
            "disk",
            format!(
                "cannot measure the space at {}",
                i.layout.data_dir.display()
            ),
        ),
        Some(d) => {
            let msg = format!(
                "{:.1} GiB free of {:.1} GiB at {}",
                d.free_bytes as f64 / GIB as f64,
                d.total_bytes as f64 / GIB as f64,
                d.at.display()
            );
            if d.free_bytes < DISK_MIN {
                check(Level::Fail, "disk", msg)
                    .fix("free space or choose another --data-dir: the site needs at least 2 GiB")
            } else if d.free_bytes < DISK_WARN {
                check(Level::Warn, "disk", msg)
                    .fix("servers' disks live here too: 20 GiB or more is advised")
            } else {
                check(Level::Pass, "disk", msg)
            }
        }
    });
    let m = &i.net.management;
    let addr = String::from(m.address);
    out.push(if !f.interface_up {
        check(
            Level::Fail,
            "network",
            format!(
                "management.interface {}: no such interface on this host",
                m.interface
            ),
        )
        .fix(format!(
            "fix {} (ip -br link lists the interfaces)",
            i.network_config.display()
        ))
    } else if !f.address_local {
        check(
            Level::Fail,
            "network",
            format!("management.address {addr}: not an address of this host"),
        )
        .fix(format!(
            "configure it first: ip addr add {addr} dev {}",
            m.interface
        ))
    } else {
        check(
            Level::Pass,
            "network",
            format!(
                "{}: valid; management {} {addr}, {} provider network(s)",
                i.network_config.display(),
                m.interface,
                i.net.providers.len()
            ),
        )
    });
    let api = std::net::SocketAddr::new(m.address.addr, i.api_port);
    out.push(match (f.api_port_free, f.existing.agent_pid) {
        (true, _) => check(
            Level::Pass,
            "api",
            format!("{api} is free for the local API"),
        ),
        (false, Some(pid)) => check(
            Level::Pass,
            "api",
            format!("{api} is served by the installed agent (pid {pid})"),
        ),
        (false, None) if f.unit_active => check(
            Level::Pass,
            "api",
            format!("{api} is served by the installed agent ({UNIT_NAME})"),
        ),
        (false, None) => check(Level::Fail, "api", format!("{api} is in use"))
            .fix("stop what listens there, or choose another --api-port"),
    });
    out
}

/// Refusals that protect what an earlier install made.
fn existing_checks(i: &Install, f: &Facts) -> Vec<Check> {
    let e = &f.existing;
    let mut out = Vec::new();
    let uninstall = "a node belongs to one site: run roost-agent uninstall first";
    match &e.config {
        Some(Err(why)) => out.push(
            check(Level::Fail, "existing", format!("the installed config is invalid: {why}"))
                .fix("fix it by hand, or run roost-agent uninstall and install again"),
        ),
        Some(Ok(c)) if c.site.id != i.site_id => out.push(
            check(
                Level::Fail,
                "existing",
                format!(
                    "site_id: this node is installed as site {}; a site's id cannot change (got {})",
                    c.site.id, i.site_id
                ),
            )
            .fix(uninstall),
        ),
        _ => {}
    }
    if let Some(m) = &e.manifest {
        if m.layout.data_dir != i.layout.data_dir {
            out.push(
                check(
                    Level::Fail,
                    "existing",
                    format!(
                        "data_dir: the installed site keeps its store in {}; moving it is not supported (got {})",
                        m.layout.data_dir.display(),
                        i.layout.data_dir.display()
                    ),
                )
                .fix(format!("pass --data-dir {}, or uninstall first", m.layout.data_dir.display())),
            );
        }
    }
    if e.data_dir_foreign {
        out.push(
            check(
                Level::Fail,
                "existing",
                format!(
                    "data_dir {}: exists, is not empty and holds no Roost store",
                    i.layout.data_dir.display()
                ),
            )
            .fix("choose an empty or new --data-dir: uninstall removes it whole"),
        );
    }
    if out.is_empty() {
        out.push(match &e.manifest {
            None => check(Level::Pass, "existing", "no earlier install"),
            Some(m) => check(
                Level::Pass,
                "existing",
                format!(
                    "installed before ({}): only what differs changes",
                    m.installed_at
                ),
            ),
        });
    }
    out
}

/// The libvirt URI the agent will use, and a line saying why.
pub fn libvirt_uri(i: &Install, f: &Facts) -> (String, String) {
    if f.libvirtd {
        (
            "qemu:///system".into(),
            "libvirtd answers at /run/libvirt: the agent uses qemu:///system".into(),
        )
    } else {
        let root = i.layout.embed_root();
        (
            format!("qemu:///embed?root={}", root.display()),
            format!(
                "QEMU and libvirt's QEMU driver found, no libvirtd: the agent runs the driver itself (qemu:///embed, root {})",
                root.display()
            ),
        )
    }
}

/// The agent config: what the install owns (site, API, region, compute,
/// network, this host) over what an earlier config has (flavors, images, other
/// hosts, scheduler weights and anything an operator added stay).
pub fn desired_config(
    i: &Install,
    f: &Facts,
    existing: Option<&SiteConfig>,
    region: &str,
    quic_port: u16,
    deferred: bool,
) -> SiteConfig {
    let mgmt = &i.net.management;
    // Measured: size and address. Kept from an earlier config: ratios,
    // reserved RAM, traits, zone (an operator's tuning).
    let (vcpus, ram_mb, disk_gb) = (
        f.cpus.max(1),
        f.ram_mb,
        f.disk.as_ref().map_or(0, |d| d.total_bytes / GIB),
    );
    let this_host = HostSpec {
        vcpus,
        ram_mb,
        disk_gb,
        address: Some(mgmt.address.addr.to_string()),
        ..existing
            .and_then(|c| c.hosts.iter().find(|h| h.name == f.hostname).cloned())
            .unwrap_or_else(|| HostSpec::new(&f.hostname, vcpus, ram_mb, disk_gb))
    };
    let mut c = existing.cloned().unwrap_or_else(|| SiteConfig {
        site: SiteSection {
            id: i.site_id.clone(),
            name: String::new(),
            labels: Default::default(),
        },
        api: Default::default(),
        data_dir: None,
        compute: Default::default(),
        scheduler: Default::default(),
        hosts: Vec::new(),
        flavors: Vec::new(),
        images: Vec::new(),
        region: None,
        network: None,
        storage: Default::default(),
        alarms: Default::default(),
        ha: None,
    });
    c.site.id = i.site_id.clone();
    c.site.name = i.site_name.clone();
    c.site.labels.extend(i.labels.clone());
    let listen = std::net::SocketAddr::new(mgmt.address.addr, i.api_port);
    c.api.listen = listen;
    c.api.public_url = Some(format!("http://{listen}"));
    c.data_dir = Some(i.layout.data_dir.clone());
    c.compute.driver = i.compute_driver;
    if i.compute_driver == ComputeDriverKind::Libvirt {
        c.compute.libvirt = LibvirtSection {
            uri: libvirt_uri(i, f).0,
            accel: if f.kvm.is_ok() {
                AccelChoice::Auto
            } else {
                AccelChoice::Tcg
            },
            ..c.compute.libvirt
        };
    }
    match c.hosts.iter_mut().find(|h| h.name == this_host.name) {
        Some(h) => *h = this_host,
        None => c.hosts.push(this_host),
    }
    // Tenant networks: VXLAN over the overlay provider's interface (or the
    // management one), VLAN networks on their provider's interface; an
    // operator's period is kept.
    let underlay = i
        .net
        .providers
        .iter()
        .find(|p| p.kind == ProviderKind::Vxlan)
        .map_or(mgmt.interface.clone(), |p| p.interface.clone());
    let physnets = i
        .net
        .providers
        .iter()
        .filter(|p| p.kind != ProviderKind::Vxlan)
        .map(|p| (p.name.clone(), p.interface.clone()))
        .collect();
    let period_secs = c.network.as_ref().map_or(10, |n| n.period_secs);
    c.network = Some(NetworkSection {
        host: f.hostname.clone(),
        underlay: mgmt.address.is_ipv4().then_some(underlay),
        physnets,
        period_secs,
    });
    let controller = std::net::SocketAddr::new(i.controller_ip, quic_port);
    c.region = Some(UplinkSection {
        name: region.to_string(),
        address: controller.to_string(),
        credentials: None,
        central_api: Some(i.central_api.clone()),
        join_token: if deferred { i.token.clone() } else { None },
    });
    c
}

/// The systemd unit. `KillMode=process`: stopping the agent must not stop
/// the site's guests (QEMU runs as the agent's child under the embedded
/// driver); a restarted agent adopts them.
pub fn unit_text(layout: &Layout, site_id: &str) -> String {
    format!(
        "# Written by roost-agent install; roost-agent uninstall removes it.\n\
         [Unit]\n\
         Description=Roost edge agent (site {site_id})\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         ExecStart={bin} run --config {config}\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         KillMode=process\n\
         TimeoutStopSec=40\n\
         LimitNOFILE=65536\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        bin = layout.binary.display(),
        config = layout.config_file().display(),
    )
}

fn file_change(existing: Option<&[u8]>, bytes: &[u8]) -> Change {
    match existing {
        None => Change::Create,
        Some(old) if old == bytes => Change::Unchanged,
        Some(_) => Change::Update,
    }
}

fn dir_change(exists: bool) -> Change {
    if exists {
        Change::Unchanged
    } else {
        Change::Create
    }
}

fn steps(i: &Install, f: &Facts, config: &SiteConfig, enrollment: &Enrollment) -> Vec<Step> {
    let l = &i.layout;
    let e = &f.existing;
    let yaml = config_yaml(config);
    let unit = unit_text(l, &i.site_id);
    let mut steps = vec![
        Step {
            what: format!("{}  config directory", l.config_dir.display()),
            action: Action::Dir {
                path: l.config_dir.clone(),
                mode: 0o755,
            },
            change: dir_change(e.config_dir),
        },
        Step {
            what: format!("{}  data directory (mode 0700)", l.data_dir.display()),
            action: Action::Dir {
                path: l.data_dir.clone(),
                mode: 0o700,
            },
            change: dir_change(e.data_dir),
        },
        Step {
            what: format!("{}  the agent binary", l.binary.display()),
            action: Action::Binary,
            change: match e.binary_same {
                None => Change::Create,
                Some(true) => Change::Unchanged,
                Some(false) => Change::Update,
            },
        },
        Step {
            what: format!(
                "{}  network config (copy of {})",
                l.network_file().display(),
                i.network_config.display()
            ),
            action: Action::File {
                path: l.network_file(),
                bytes: i.net_text.clone().into_bytes(),
                mode: 0o644,
            },
            change: file_change(e.network_config.as_deref(), i.net_text.as_bytes()),
        },
        Step {
            what: format!(
                "{}  agent config (site {}, host {}, {}, mode 0600)",
                l.config_file().display(),
                i.site_id,
                f.hostname,
                match config.compute.driver {
                    ComputeDriverKind::Libvirt => "libvirt",
                    ComputeDriverKind::RecordOnly => "record-only",
                }
            ),
            action: Action::File {
                path: l.config_file(),
                bytes: yaml.into_bytes(),
                mode: 0o600,
            },
            change: match &e.config {
                None => Change::Create,
                Some(Ok(old)) if old == config => Change::Unchanged,
                Some(_) => Change::Update,
            },
        },
        Step {
            what: format!(
                "{}  SQLite store, site token key, admin password",
                l.data_dir.join(crate::store::DB_FILE).display()
            ),
            action: Action::Store,
            change: if e.store {
                Change::Unchanged
            } else {
                Change::Create
            },
        },
        Step {
            what: format!("{}  systemd unit", l.unit.display()),
            action: Action::File {
                path: l.unit.clone(),
                bytes: unit.clone().into_bytes(),
                mode: 0o644,
            },
            change: file_change(e.unit.as_deref(), unit.as_bytes()),
        },
        Step {
            what: format!(
                "{}  site key and certificate from the region's CA",
                l.pki().display()
            ),
            action: Action::Enroll,
            change: match enrollment {
                Enrollment::Done => Change::Unchanged,
                Enrollment::Now => Change::Create,
                Enrollment::Deferred => Change::Skip(
                    "deferred: the agent enrolls with the token when the region answers".into(),
                ),
            },
        },
    ];
    steps.push(Step {
        what: format!("systemctl enable {UNIT_NAME}"),
        action: Action::EnableUnit,
        change: if !f.systemd {
            Change::Skip(format!(
                "no systemd here: start the agent with `{} run --config {}` (or --start)",
                l.binary.display(),
                l.config_file().display()
            ))
        } else if e.unit_enabled {
            Change::Unchanged
        } else {
            Change::Create
        },
    });
    if i.start {
        let changed = steps
            .iter()
            .any(|s| matches!(s.change, Change::Create | Change::Update));
        let running = e.agent_pid.is_some() || f.unit_active;
        steps.push(Step {
            what: if f.systemd {
                format!("systemctl start {UNIT_NAME}")
            } else {
                format!(
                    "start the agent (pid in {}, log in {})",
                    l.pid_file().display(),
                    l.log.display()
                )
            },
            action: Action::Start {
                restart: running && changed,
            },
            change: match (running, changed) {
                (false, _) => Change::Create,
                (true, true) => Change::Update,
                (true, false) => Change::Unchanged,
            },
        });
    }
    steps
}

/// The agent config as written.
pub fn config_yaml(c: &SiteConfig) -> String {
    format!(
        "# Written by roost-agent install. A later install rewrites site, api,\n\
         # region, compute, network and this host's entry and keeps the rest\n\
         # (flavors, images, other hosts). Fields: site-configs/README.md.\n{}",
        serde_yaml::to_string(c).expect("a config serializes")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::facts::{Disk, Existing};
    use crate::install::Manifest;
    use roost_common::config::EdgeNetConfig;
    use roost_common::model::FlavorSpec;

    const NET: &str = "management: {interface: eno1, address: 10.20.0.10/24, gateway: 10.20.0.1}\n";

    fn install() -> Install {
        let net: EdgeNetConfig = serde_yaml::from_str(NET).unwrap();
        Install {
            site_id: "edge-factory-01".into(),
            site_name: "Factory 01".into(),
            central_api: "http://192.168.1.100:7443".into(),
            controller_ip: "192.168.1.100".parse().unwrap(),
            quic_port: None,
            region_name: None,
            token: Some("rjt1.edge-factory-01.secret".into()),
            network_config: "/media/usb/edge-net.yaml".into(),
            net,
            net_text: NET.into(),
            api_port: 8780,
            compute_driver: ComputeDriverKind::Libvirt,
            labels: [("kind".to_string(), "factory".to_string())].into(),
            layout: Layout::new(None, None, None),
            offline: false,
            start: false,
        }
    }

    /// A fresh, capable node whose controller answers.
    fn facts() -> Facts {
        Facts {
            euid: 0,
            hostname: "node-1".into(),
            cpus: 16,
            ram_mb: 65536,
            disk: Some(Disk {
                at: "/var".into(),
                total_bytes: 500 * GIB,
                free_bytes: 400 * GIB,
            }),
            kvm: Ok(()),
            qemu: Some("/usr/bin/qemu-system-x86_64".into()),
            qemu_driver: true,
            libvirtd: false,
            libvirt_user: true,
            systemd: true,
            unit_active: false,
            interface_up: true,
            address_local: true,
            api_port_free: true,
            controller: Controller::Answered {
                region: "eu-central".into(),
                quic_port: 7444,
            },
            token: Some(Ok(())),
            existing: Existing::default(),
        }
    }

    fn verdict(p: &Plan, name: &str) -> Vec<(Level, String)> {
        p.checks
            .iter()
            .filter(|c| c.name == name)
            .map(|c| (c.level, c.message.clone()))
            .collect()
    }

    /// What the machine looks like after `p` was applied.
    fn installed(i: &Install, f: &Facts, p: &Plan) -> Facts {
        let config = p.config.clone().unwrap();
        let mut f = f.clone();
        f.existing = Existing {
            manifest: Some(Manifest {
                site_id: i.site_id.clone(),
                installed_at: "2026-11-27T10:00:00Z".into(),
                layout: i.layout.clone(),
                created: vec![],
                enabled: true,
            }),
            config: Some(Ok(config)),
            network_config: Some(i.net_text.clone().into_bytes()),
            unit: Some(unit_text(&i.layout, &i.site_id).into_bytes()),
            binary_same: Some(true),
            store: true,
            enrolled_as: Some(i.site_id.clone()),
            data_dir_foreign: false,
            agent_pid: None,
            config_dir: true,
            data_dir: true,
            unit_enabled: true,
        };
        f.unit_active = i.start;
        f.api_port_free = !i.start;
        f.token = None;
        f
    }

    #[test]
    fn a_fresh_node_with_its_controller_enrolls_now() {
        let (i, f) = (install(), facts());
        let p = plan(&i, &f);
        assert!(!p.failed(), "{:?}", p.checks);
        assert_eq!(p.enrollment, Enrollment::Now);
        assert_eq!(p.region, Some(("eu-central".into(), 7444)));
        assert!(
            p.steps.iter().all(|s| s.change == Change::Create),
            "{:?}",
            p.steps
        );
        let c = p.config.unwrap();
        c.validate().unwrap();
        assert_eq!(c.site.id, "edge-factory-01");
        assert_eq!(c.site.labels["kind"], "factory");
        assert_eq!(c.api.listen.to_string(), "10.20.0.10:8780");
        let r = c.region.unwrap();
        assert_eq!(r.address, "192.168.1.100:7444");
        assert_eq!(r.join_token, None, "enrolled now: no token kept");
        assert_eq!(c.hosts.len(), 1);
        assert_eq!((c.hosts[0].vcpus, c.hosts[0].disk_gb), (16, 500));
        assert_eq!(c.hosts[0].address.as_deref(), Some("10.20.0.10"));
        assert_eq!(
            c.compute.libvirt.uri,
            "qemu:///embed?root=/var/lib/roost/agent/libvirt"
        );
        assert_eq!(c.compute.libvirt.accel, AccelChoice::Auto);
        let n = c.network.unwrap();
        assert_eq!(
            (n.host.as_str(), n.underlay.as_deref()),
            ("node-1", Some("eno1"))
        );
    }

    #[test]
    fn a_second_run_with_the_same_arguments_changes_nothing() {
        let (mut i, f) = (install(), facts());
        i.start = true;
        let first = plan(&i, &f);
        let f2 = installed(&i, &f, &first);
        let second = plan(&i, &f2);
        assert!(!second.failed(), "{:?}", second.checks);
        assert!(!second.changes(), "{:?}", second.steps);
        assert_eq!(second.enrollment, Enrollment::Done);
        assert_eq!(
            verdict(&second, "api")[0].0,
            Level::Pass,
            "its own agent holds the port"
        );
    }

    #[test]
    fn a_changed_port_is_applied_and_the_agent_restarted_and_operator_edits_kept() {
        let (mut i, f) = (install(), facts());
        i.start = true;
        let first = plan(&i, &f);
        let mut f2 = installed(&i, &f, &first);
        // The operator added a flavor and tuned the host since.
        if let Some(Ok(c)) = &mut f2.existing.config {
            let flavor: FlavorSpec =
                serde_yaml::from_str("{name: m1.plc, id: '42', vcpus: 1, ram_mb: 512, disk_gb: 1}")
                    .unwrap();
            c.flavors.push(flavor);
            c.hosts[0].reserved_ram_mb = 4096;
        }
        i.api_port = 9780;
        let second = plan(&i, &f2);
        let changed: Vec<&str> = second
            .steps
            .iter()
            .filter(|s| s.change != Change::Unchanged && !matches!(s.change, Change::Skip(_)))
            .map(|s| s.what.as_str())
            .collect();
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert!(changed[0].contains("agent config"));
        assert_eq!(
            second.steps.last().unwrap().action,
            Action::Start { restart: true }
        );
        let c = second.config.unwrap();
        assert_eq!(c.api.listen.port(), 9780);
        assert_eq!(c.flavors[0].name, "m1.plc");
        assert_eq!(c.hosts[0].reserved_ram_mb, 4096);
    }

    #[test]
    fn another_site_id_or_data_dir_or_a_foreign_directory_is_refused() {
        let (i, f) = (install(), facts());
        let first = plan(&i, &f);
        let f2 = installed(&i, &f, &first);
        let mut other = install();
        other.site_id = "edge-factory-02".into();
        other.token = Some("rjt1.edge-factory-02.secret".into());
        let p = plan(&other, &f2);
        assert!(p.failed());
        assert!(p.steps.is_empty(), "nothing planned after a failure");
        let msgs: Vec<String> = p.checks.iter().map(|c| c.message.clone()).collect();
        assert!(
            msgs.iter().any(|m| m.contains("a site's id cannot change")),
            "{msgs:?}"
        );
        assert!(msgs
            .iter()
            .any(|m| m.contains("credential for site edge-factory-01")));

        let mut moved = install();
        moved.layout = Layout::new(None, None, Some(std::path::Path::new("/srv/roost")));
        let p = plan(&moved, &f2);
        assert!(verdict(&p, "existing")
            .iter()
            .any(|(l, m)| *l == Level::Fail
                && m.starts_with(
                    "data_dir: the installed site keeps its store in /var/lib/roost/agent"
                )));

        let mut foreign = facts();
        foreign.existing.data_dir_foreign = true;
        assert!(plan(&i, &foreign).failed());
    }

    #[test]
    fn an_unreachable_controller_fails_unless_offline_and_offline_keeps_the_token() {
        let i = install();
        let mut f = facts();
        f.controller = Controller::Unreachable("connection refused".into());
        f.token = None;
        let p = plan(&i, &f);
        assert!(p.failed());
        let c = verdict(&p, "controller");
        assert_eq!(c.len(), 1, "one failure, not two: {c:?}");
        assert!(c[0].1.contains("connection refused"));

        let mut off = install();
        off.offline = true;
        let p = plan(&off, &f);
        assert!(p.failed(), "the region's name is unknown");
        assert!(verdict(&p, "controller")
            .iter()
            .any(|(_, m)| m.starts_with("region_name: required")));

        off.region_name = Some("eu-central".into());
        let p = plan(&off, &f);
        assert!(!p.failed(), "{:?}", p.checks);
        assert_eq!(p.enrollment, Enrollment::Deferred);
        assert_eq!(verdict(&p, "controller")[0].0, Level::Warn);
        let r = p.config.as_ref().unwrap().region.clone().unwrap();
        assert_eq!(r.join_token, off.token);
        assert_eq!(r.address, "192.168.1.100:7444", "the default QUIC port");
        let enroll = p.steps.iter().find(|s| s.action == Action::Enroll).unwrap();
        assert!(matches!(enroll.change, Change::Skip(_)));
    }

    #[test]
    fn a_token_the_region_refuses_fails_before_anything_is_written() {
        let i = install();
        let mut f = facts();
        f.token = Some(Err("token: already used".into()));
        let p = plan(&i, &f);
        assert!(p.failed());
        assert!(p.steps.is_empty());
        let e = &p.checks.iter().find(|c| c.name == "enrollment").unwrap();
        assert!(e.message.contains("already used"));
        assert!(e
            .fix
            .as_ref()
            .unwrap()
            .contains("token create --site-id edge-factory-01"));

        let mut none = install();
        none.token = None;
        assert!(
            plan(&none, &facts()).failed(),
            "a site that must enroll needs a token"
        );
    }

    #[test]
    fn the_host_is_checked() {
        let i = install();
        let fails = |f: Facts, name: &str| {
            let p = plan(&i, &f);
            verdict(&p, name)
                .iter()
                .find(|(l, _)| *l == Level::Fail)
                .map(|(_, m)| m.clone())
        };
        let mut f = facts();
        f.euid = 1000;
        assert_eq!(
            fails(f, "root").as_deref(),
            Some("running as uid 1000, not root")
        );
        let mut f = facts();
        f.qemu = None;
        f.qemu_driver = false;
        assert_eq!(
            fails(f, "libvirt").as_deref(),
            Some("missing: qemu-system-x86_64, libvirt's QEMU driver")
        );
        let mut f = facts();
        f.disk.as_mut().unwrap().free_bytes = GIB;
        assert!(fails(f, "disk").is_some());
        let mut f = facts();
        f.interface_up = false;
        assert!(fails(f, "network")
            .unwrap()
            .contains("eno1: no such interface"));
        let mut f = facts();
        f.address_local = false;
        assert!(fails(f, "network")
            .unwrap()
            .contains("10.20.0.10/24: not an address"));
        let mut f = facts();
        f.api_port_free = false;
        assert!(fails(f, "api").unwrap().contains("in use"));

        // No KVM: a warning, and the config asks for TCG.
        let mut f = facts();
        f.kvm = Err("/dev/kvm: No such file or directory".into());
        let p = plan(&i, &f);
        assert!(!p.failed());
        assert_eq!(verdict(&p, "kvm")[0].0, Level::Warn);
        assert_eq!(p.config.unwrap().compute.libvirt.accel, AccelChoice::Tcg);

        // A libvirtd: the system URI.
        let mut f = facts();
        f.libvirtd = true;
        assert_eq!(
            plan(&i, &f).config.unwrap().compute.libvirt.uri,
            "qemu:///system"
        );

        // No systemd: the unit is written, not enabled, and it says how to run.
        let mut f = facts();
        f.systemd = false;
        let p = plan(&i, &f);
        let enable = p
            .steps
            .iter()
            .find(|s| s.action == Action::EnableUnit)
            .unwrap();
        assert!(
            matches!(&enable.change, Change::Skip(why) if why.contains("/usr/local/bin/roost-agent run --config /etc/roost/agent.yaml"))
        );
    }

    #[test]
    fn the_unit_keeps_guests_running_when_the_agent_stops() {
        let u = unit_text(&Layout::new(None, None, None), "edge-factory-01");
        assert!(
            u.contains("ExecStart=/usr/local/bin/roost-agent run --config /etc/roost/agent.yaml\n")
        );
        assert!(u.contains("KillMode=process\n"));
        assert!(u.contains("WantedBy=multi-user.target\n"));
    }

    #[test]
    fn a_root_moves_every_default_under_it() {
        let l = Layout::new(Some(std::path::Path::new("/mnt/img")), None, None);
        assert_eq!(
            l.config_file(),
            std::path::Path::new("/mnt/img/etc/roost/agent.yaml")
        );
        assert_eq!(
            l.data_dir,
            std::path::Path::new("/mnt/img/var/lib/roost/agent")
        );
        assert_eq!(
            l.unit,
            std::path::Path::new("/mnt/img/etc/systemd/system/roost-agent.service")
        );
    }
}
