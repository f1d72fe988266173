//! What the install looks at before it decides anything: the host (CPUs,
//! memory, disk, KVM, libvirt, systemd, the management interface), the
//! controller (does it answer, and what is the region called), and what a
//! previous install left. Only reads; [`super::plan`] decides from it.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use roost_common::config::{self, SiteConfig};
use roost_sync::pki::Credential;

use super::{Install, Layout, Manifest};
use crate::store::DB_FILE;

/// The host as the install found it.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub euid: u32,
    pub hostname: String,
    pub cpus: u32,
    pub ram_mb: u64,
    pub disk: Option<Disk>,
    /// `Ok` if /dev/kvm opens for reading and writing, else why not.
    pub kvm: Result<(), String>,
    /// `qemu-system-x86_64` on the PATH.
    pub qemu: Option<PathBuf>,
    /// libvirt's QEMU driver module is installed.
    pub qemu_driver: bool,
    /// A libvirtd answers on its system socket.
    pub libvirtd: bool,
    /// The `libvirt-qemu` user libvirt's QEMU driver insists on exists.
    pub libvirt_user: bool,
    /// `systemctl is-active roost-agent` (only asked where systemd runs).
    pub unit_active: bool,
    /// systemd runs this machine and the install targets it (root is `/`).
    pub systemd: bool,
    pub interface_up: bool,
    /// The management address is one of this host's.
    pub address_local: bool,
    /// The API port on the management address can be bound now.
    pub api_port_free: bool,
    pub controller: Controller,
    /// The controller's verdict on the join token (asked only when the
    /// controller answers and the site must enroll): `Err` says why not.
    pub token: Option<Result<(), String>>,
    pub existing: Existing,
}

/// Space where the data dir will be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The nearest existing directory of the data dir.
    pub at: PathBuf,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// What the controller said when asked `GET /v1/region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Controller {
    Answered { region: String, quic_port: u16 },
    Unreachable(String),
}

/// What an earlier install (or someone else) left where this one writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Existing {
    pub manifest: Option<Manifest>,
    /// The agent config, if it is there and valid; `Err` says why not.
    pub config: Option<Result<SiteConfig, String>>,
    pub network_config: Option<Vec<u8>>,
    pub unit: Option<Vec<u8>>,
    /// Whether the installed binary is byte for byte this one.
    pub binary_same: Option<bool>,
    pub store: bool,
    /// The site id of the credential in the data dir's `pki/`.
    pub enrolled_as: Option<String>,
    /// The data dir exists, is not empty, and holds no Roost store.
    pub data_dir_foreign: bool,
    /// The pid of an agent started by an earlier install, if it runs.
    pub agent_pid: Option<u32>,
    pub config_dir: bool,
    pub data_dir: bool,
    /// `systemctl enable` has linked the unit.
    pub unit_enabled: bool,
}

/// Looks at the host and the controller for `install`.
pub async fn gather(install: &Install) -> Facts {
    let layout = &install.layout;
    let mgmt = install.net.management.address.addr;
    let controller = probe_controller(&install.central_api).await;
    let existing = existing(layout);
    let must_enroll = existing.enrolled_as.as_deref() != Some(install.site_id.as_str());
    let token = match (&controller, &install.token) {
        (Controller::Answered { .. }, Some(t)) if must_enroll => {
            Some(check_token(&install.central_api, t).await)
        }
        _ => None,
    };
    let disk = disk(&layout.data_dir);
    let systemd = layout.root == Path::new("/") && Path::new("/run/systemd/system").is_dir();
    Facts {
        euid: rustix::process::geteuid().as_raw(),
        hostname: hostname(),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        ram_mb: mem_total_kib().unwrap_or(0) / 1024,
        disk,
        kvm: kvm(),
        qemu: on_path("qemu-system-x86_64"),
        qemu_driver: qemu_driver(),
        libvirtd: Path::new("/run/libvirt/libvirt-sock").exists(),
        libvirt_user: std::fs::read_to_string("/etc/passwd")
            .is_ok_and(|p| p.lines().any(|l| l.starts_with("libvirt-qemu:"))),
        systemd,
        unit_active: systemd
            && std::process::Command::new("systemctl")
                .args(["is-active", "--quiet", super::UNIT_NAME])
                .status()
                .is_ok_and(|s| s.success()),
        interface_up: Path::new("/sys/class/net")
            .join(&install.net.management.interface)
            .exists(),
        address_local: std::net::UdpSocket::bind(SocketAddr::new(mgmt, 0)).is_ok(),
        api_port_free: TcpListener::bind(SocketAddr::new(mgmt, install.api_port)).is_ok(),
        controller,
        token,
        existing,
    }
}

/// Asks the controller whether the token would enroll, spending nothing.
async fn check_token(url: &str, token: &str) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let resp = http
        .post(format!("{url}/v1/enroll/check"))
        .json(&serde_json::json!({ "token": token }))
        .send()
        .await
        .map_err(|e| crate::uplink::error_chain(&e))?;
    if resp.status().is_success() {
        return Ok(());
    }
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    Err(body["error"]["message"]
        .as_str()
        .map_or_else(|| format!("HTTP {status}"), str::to_string))
}

async fn probe_controller(url: &str) -> Controller {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(h) => h,
        Err(e) => return Controller::Unreachable(e.to_string()),
    };
    let resp = match http.get(format!("{url}/v1/region")).send().await {
        Ok(r) => r,
        Err(e) => return Controller::Unreachable(crate::uplink::error_chain(&e)),
    };
    if !resp.status().is_success() {
        return Controller::Unreachable(format!(
            "{url}/v1/region answered HTTP {} (is this a Roost controller?)",
            resp.status()
        ));
    }
    match resp.json::<serde_json::Value>().await {
        Ok(v) => match (
            v["region"].as_str(),
            v["quic_port"].as_u64().and_then(|p| u16::try_from(p).ok()),
        ) {
            (Some(region), Some(quic_port)) => Controller::Answered {
                region: region.to_string(),
                quic_port,
            },
            _ => Controller::Unreachable(format!("{url}/v1/region: unexpected answer {v}")),
        },
        Err(e) => Controller::Unreachable(format!("{url}/v1/region: unreadable answer: {e}")),
    }
}

fn existing(layout: &Layout) -> Existing {
    let read = |p: &Path| std::fs::read(p).ok();
    let config = layout
        .config_file()
        .exists()
        .then(|| config::load::<SiteConfig>(&layout.config_file()).map_err(|e| e.to_string()));
    let binary_same = read(&layout.binary).map(|installed| {
        std::env::current_exe()
            .ok()
            .and_then(|me| std::fs::read(me).ok())
            .is_some_and(|me| me == installed)
    });
    let store = layout.data_dir.join(DB_FILE).exists();
    let manifest = Manifest::read(&layout.manifest()).ok();
    let data_dir_foreign = !store
        && manifest.is_none()
        && std::fs::read_dir(&layout.data_dir).is_ok_and(|mut d| d.next().is_some());
    let enrolled_as = Credential::read_pem(&layout.pki())
        .ok()
        .and_then(|c| roost_sync::pki::site_id_of(c.chain.first()?.as_ref()).ok());
    Existing {
        manifest,
        config,
        network_config: read(&layout.network_file()),
        unit: read(&layout.unit),
        binary_same,
        store,
        enrolled_as,
        data_dir_foreign,
        agent_pid: running_agent(&layout.pid_file()),
        config_dir: layout.config_dir.is_dir(),
        data_dir: layout.data_dir.is_dir(),
        unit_enabled: layout.unit_wants_link().exists(),
    }
}

/// The pid in `pid_file` if that process is a running `roost-agent`.
pub fn running_agent(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    (alive(pid) && String::from_utf8_lossy(&cmdline).contains("roost-agent")).then_some(pid)
}

/// A process that exists and has not exited (a zombie has: only its
/// parent has not reaped it yet).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()))
        .is_some_and(|r| !r.starts_with('Z'))
}

fn hostname() -> String {
    let uname = rustix::system::uname();
    let raw = uname.nodename().to_string_lossy().to_lowercase();
    // The host's name in the config is a DNS label: keep the first label.
    let label: String = raw
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() || !label.starts_with(|c: char| c.is_ascii_lowercase()) {
        format!("host-{label}").trim_end_matches('-').to_string()
    } else {
        label.chars().take(63).collect()
    }
}

fn mem_total_kib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn disk(data_dir: &Path) -> Option<Disk> {
    let at = data_dir.ancestors().find(|p| p.exists())?.to_path_buf();
    let st = rustix::fs::statvfs(&at).ok()?;
    Some(Disk {
        total_bytes: st.f_blocks.saturating_mul(st.f_frsize),
        free_bytes: st.f_bavail.saturating_mul(st.f_frsize),
        at,
    })
}

fn kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn qemu_driver() -> bool {
    ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"]
        .iter()
        .any(|d| {
            Path::new(d)
                .join("libvirt/connection-driver/libvirt_driver_qemu.so")
                .exists()
        })
}
