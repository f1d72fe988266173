//! `roost-agent install` and `uninstall`: one command turns a fresh node
//! into a site joined to its region, stx-edge-install style, and one
//! removes what it made.
//!
//! The flow: the arguments (flags and `--from-file`, checked on the one
//! validation path in `roost_common::config::InstallArgs`) are resolved
//! into an [`Install`]; [`facts`] looks at the host and the controller;
//! [`plan`] (pure) decides the preflight verdicts and the steps, each
//! create, update, unchanged or skipped; [`apply`] carries them out in
//! order and, if one fails, undoes what this run did. What the run made is
//! kept in a manifest beside the config, which `uninstall` reads: it
//! removes those paths and nothing else.

pub mod apply;
pub mod facts;
pub mod plan;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use roost_common::config::{self, ComputeDriverKind, EdgeNetConfig, InstallArgs, Validate};
use serde::{Deserialize, Serialize};

use plan::{Change, Level, Plan};

/// The systemd unit's name.
pub const UNIT_NAME: &str = "roost-agent.service";
const DEFAULT_API_PORT: u16 = 8780;

/// Why the install or uninstall stopped.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Bad arguments or files: nothing was looked at or changed.
    #[error("{0}")]
    Input(String),
    /// A preflight check failed: nothing was changed.
    #[error("preflight failed: {0} (nothing was changed)")]
    Preflight(String),
    /// A step failed; what this run had done was undone.
    #[error("{step}: {error}")]
    Step { step: String, error: String },
    #[error("{0}")]
    Io(String),
}

impl InstallError {
    /// Bad input, as opposed to a machine or a region that said no.
    pub fn is_input(&self) -> bool {
        matches!(self, InstallError::Input(_))
    }
}

/// Where an install puts things. With `--root R`, every default moves
/// under R, and the config names the paths as they are (R included), so
/// the agent runs from there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub root: PathBuf,
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    pub binary: PathBuf,
    pub unit: PathBuf,
    pub log: PathBuf,
}

impl Layout {
    pub fn new(root: Option<&Path>, config_dir: Option<&Path>, data_dir: Option<&Path>) -> Layout {
        let root = root.map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        let under = |p: &str| root.join(p);
        Layout {
            config_dir: config_dir.map_or_else(|| under("etc/roost"), Path::to_path_buf),
            data_dir: data_dir.map_or_else(|| under("var/lib/roost/agent"), Path::to_path_buf),
            binary: under("usr/local/bin/roost-agent"),
            unit: under("etc/systemd/system").join(UNIT_NAME),
            log: under("var/log/roost/agent.log"),
            root,
        }
    }
    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("agent.yaml")
    }
    pub fn network_file(&self) -> PathBuf {
        self.config_dir.join("edge-net.yaml")
    }
    pub fn manifest(&self) -> PathBuf {
        self.config_dir.join("install.json")
    }
    pub fn pki(&self) -> PathBuf {
        self.data_dir.join("pki")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.data_dir.join("agent.pid")
    }
    /// Root of libvirt's embedded QEMU driver, when there is no libvirtd.
    pub fn embed_root(&self) -> PathBuf {
        self.data_dir.join("libvirt")
    }
    /// The link `systemctl enable` makes.
    pub fn unit_wants_link(&self) -> PathBuf {
        self.root
            .join("etc/systemd/system/multi-user.target.wants")
            .join(UNIT_NAME)
    }
}

/// What an install made, for the next install and for `uninstall`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub site_id: String,
    pub installed_at: String,
    pub layout: Layout,
    /// Files and directories the installs created, in creation order.
    /// Uninstall removes these (directories only when empty) and the data
    /// directory's contents, and nothing else.
    pub created: Vec<PathBuf>,
    /// Whether the unit was enabled with systemctl.
    pub enabled: bool,
}

impl Manifest {
    pub fn read(path: &Path) -> Result<Manifest, InstallError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| InstallError::Io(format!("{}: {e}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| {
            InstallError::Input(format!("{}: not an install manifest: {e}", path.display()))
        })
    }
}

/// The arguments, resolved and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Install {
    pub site_id: String,
    pub site_name: String,
    pub central_api: String,
    pub controller_ip: IpAddr,
    pub quic_port: Option<u16>,
    pub region_name: Option<String>,
    pub token: Option<String>,
    pub network_config: PathBuf,
    pub net: EdgeNetConfig,
    /// The network config as given, copied beside the agent config.
    pub net_text: String,
    pub api_port: u16,
    pub compute_driver: ComputeDriverKind,
    pub labels: BTreeMap<String, String>,
    pub layout: Layout,
    pub offline: bool,
    pub start: bool,
}

impl Install {
    /// Checks the arguments (each error names the field and the rule) and
    /// reads the network config (errors with line and column).
    pub fn resolve(args: InstallArgs) -> Result<Install, InstallError> {
        args.validate()
            .map_err(|e| InstallError::Input(format!("invalid argument: {e}")))?;
        let missing = |f: &str| InstallError::Input(format!("invalid argument: {f}: is required"));
        let network_config = args
            .network_config
            .ok_or_else(|| missing("network_config"))?;
        let net_text = std::fs::read_to_string(&network_config).map_err(|e| {
            InstallError::Input(format!("network_config: {}: {e}", network_config.display()))
        })?;
        let net: EdgeNetConfig = config::parse(&network_config, &net_text)
            .map_err(|e| InstallError::Input(format!("invalid network config: {e}")))?;
        let site_id = args.site_id.ok_or_else(|| missing("site_id"))?;
        Ok(Install {
            site_name: args.site_name.unwrap_or_else(|| site_id.clone()),
            layout: Layout::new(
                args.root.as_deref(),
                args.config_dir.as_deref(),
                args.data_dir.as_deref(),
            ),
            site_id,
            central_api: args.central_api.ok_or_else(|| missing("central_api"))?,
            controller_ip: args.controller_ip.ok_or_else(|| missing("controller_ip"))?,
            quic_port: args.quic_port,
            region_name: args.region_name,
            token: args.token,
            network_config,
            net,
            net_text,
            api_port: args.api_port.unwrap_or(DEFAULT_API_PORT),
            compute_driver: args.compute_driver.unwrap_or(ComputeDriverKind::Libvirt),
            labels: args.labels,
            offline: args.offline,
            start: args.start,
        })
    }
}

/// Runs the install: preflight, plan, and (unless `dry_run`) apply, with
/// progress on `out`.
pub async fn install(
    i: &Install,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<Plan, InstallError> {
    let io = |e: std::io::Error| InstallError::Io(e.to_string());
    writeln!(
        out,
        "roost-agent install: site {} joining the region at {}",
        i.site_id, i.central_api
    )
    .map_err(io)?;
    let facts = facts::gather(i).await;
    let plan = plan::plan(i, &facts);
    writeln!(out, "\nPreflight").map_err(io)?;
    for c in &plan.checks {
        writeln!(out, "  {}  {:<10}  {}", c.level.word(), c.name, c.message).map_err(io)?;
        if let (Some(fix), true) = (&c.fix, c.level != Level::Pass) {
            writeln!(out, "{:20}-> {fix}", "").map_err(io)?;
        }
    }
    if plan.failed() {
        let mut failed: Vec<&str> = plan
            .checks
            .iter()
            .filter(|c| c.level == Level::Fail)
            .map(|c| c.name)
            .collect();
        failed.dedup();
        return Err(InstallError::Preflight(failed.join(", ")));
    }
    let n = plan.steps.len();
    let to_change = plan
        .steps
        .iter()
        .filter(|s| matches!(s.change, Change::Create | Change::Update))
        .count();
    writeln!(out, "\nPlan: {to_change} of {n} steps change something").map_err(io)?;
    for (k, s) in plan.steps.iter().enumerate() {
        writeln!(out, "  [{}/{n}] {:<9}  {}", k + 1, s.change.word(), s.what).map_err(io)?;
        if let Change::Skip(why) = &s.change {
            writeln!(out, "{:20}{why}", "").map_err(io)?;
        }
    }
    if dry_run {
        writeln!(out, "\nDry run: nothing was changed.").map_err(io)?;
        return Ok(plan);
    }
    if !plan.changes() {
        writeln!(
            out,
            "\nNothing to change: this node is installed as asked (site {}).",
            i.site_id
        )
        .map_err(io)?;
        return Ok(plan);
    }
    writeln!(out, "\nApplying").map_err(io)?;
    apply::apply(i, &facts, &plan, out).await?;
    summary(i, &facts, &plan, out).map_err(io)?;
    Ok(plan)
}

fn summary(i: &Install, f: &facts::Facts, plan: &Plan, out: &mut dyn Write) -> std::io::Result<()> {
    let l = &i.layout;
    let region = plan.region.as_ref().map_or("?", |(n, _)| n.as_str());
    writeln!(out, "\nInstalled: site {} of region {region}", i.site_id)?;
    match plan.enrollment {
        plan::Enrollment::Deferred => writeln!(
            out,
            "  region     not enrolled yet: the agent enrolls at {} when it answers",
            i.central_api
        )?,
        _ => writeln!(
            out,
            "  region     enrolled; credential in {}",
            l.pki().display()
        )?,
    }
    writeln!(out, "  config     {}", l.config_file().display())?;
    writeln!(out, "  data       {}", l.data_dir.display())?;
    if let Some(c) = &plan.config {
        writeln!(
            out,
            "  API        {} (user admin; password in {})",
            c.api.public_url.as_deref().unwrap_or_default(),
            l.data_dir.join(crate::agent::PASSWORD_FILE).display()
        )?;
    }
    let running = f.existing.agent_pid.is_some() || f.unit_active;
    if i.start {
        writeln!(out, "  agent      running")?;
    } else if running {
        writeln!(
            out,
            "  next       the agent runs the old config: restart it to apply (systemctl restart {UNIT_NAME}, or install again with --start)"
        )?;
    } else if f.systemd {
        writeln!(out, "  next       systemctl start {UNIT_NAME}")?;
    } else {
        writeln!(
            out,
            "  next       {} run --config {}   (no systemd here; or install again with --start)",
            l.binary.display(),
            l.config_file().display()
        )?;
    }
    writeln!(
        out,
        "  undo       roost-agent uninstall{}",
        uninstall_flags(l)
    )?;
    Ok(())
}

/// The flags `uninstall` needs to find this layout.
fn uninstall_flags(l: &Layout) -> String {
    let defaults = Layout::new(Some(&l.root), None, None);
    let mut s = String::new();
    if l.root != Path::new("/") {
        s += &format!(" --root {}", l.root.display());
    }
    if l.config_dir != defaults.config_dir {
        s += &format!(" --config-dir {}", l.config_dir.display());
    }
    s
}

pub use apply::uninstall;
