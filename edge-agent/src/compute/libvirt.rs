//! The libvirt driver: each server is a persistent libvirt domain named
//! `roost-<server id>`, booting from a qcow2 overlay of its image, with its
//! serial console written to a file.
//!
//! The URI comes from the site config: `qemu:///system` (libvirtd),
//! `qemu:///embed?root=DIR` (libvirt's QEMU driver inside this process, no
//! daemon: the agent writes the driver's `qemu.conf` under DIR and runs
//! libvirt's event loop on a thread), or `test:///default` (unit tests).
//!
//! Files per server live in `<instances>/<server id>/`: `disk.qcow2` (the
//! root disk) and `console.log`. Every call is idempotent, so the
//! reconciler may repeat one after a crash. A domain whose metadata does not
//! name this site is never changed, whatever its name.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::sys;

use roost_common::config::{AccelChoice, LibvirtSection};
use roost_common::model::{DiskFormat, PowerIntent, PowerState};

use super::domain::{self, Accel, CpuMode, DirectBoot, DomainSpec, Nic};
use super::{ComputeDriver, DriverAction, DriverError, Guest, Observed};
use crate::network::plan::tap_name;

/// Why the driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    #[error("cannot open libvirt at {uri}: {message}. {hint}")]
    Open {
        uri: String,
        message: String,
        hint: &'static str,
    },
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The embedded driver's settings: run guests as root, write the console
/// and QEMU's own log to files (there is no virtlogd without libvirtd).
const EMBED_QEMU_CONF: &str = "# Written by roost-agent for libvirt's embedded QEMU driver.\n\
user = \"root\"\n\
group = \"root\"\n\
stdio_handler = \"file\"\n";

#[derive(Debug)]
pub struct Libvirt {
    conn: Connect,
    site_id: String,
    instances: PathBuf,
    accel: Accel,
    cpu_mode: CpuMode,
    shutdown_timeout: Duration,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LibvirtError + '_ {
    move |source| LibvirtError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs libvirt's default event loop on its own thread, once per process
/// (the embedded driver needs it to watch its QEMU processes).
fn start_event_loop() -> Result<(), String> {
    static STARTED: OnceLock<Result<(), String>> = OnceLock::new();
    STARTED
        .get_or_init(|| {
            virt::event::event_register_default_impl().map_err(|e| e.message().to_string())?;
            std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| loop {
                    if let Err(e) = virt::event::event_run_default_impl() {
                        warn!(error = %e.message(), "libvirt event loop iteration failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .clone()
}

/// Whether this process can use KVM.
fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn lv(e: virt::error::Error) -> DriverError {
    let m = e.message();
    let hint = if m.contains("failed to set MSR") {
        " (this host's KVM refuses the host CPU model, as nested hosts often do: set compute.libvirt.cpu_mode: qemu-default)"
    } else {
        ""
    };
    DriverError(format!("libvirt: {m}{hint}"))
}

fn power_of(state: sys::virDomainState) -> PowerState {
    match state {
        sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED | sys::VIR_DOMAIN_SHUTDOWN => {
            PowerState::Running
        }
        sys::VIR_DOMAIN_PAUSED => PowerState::Paused,
        sys::VIR_DOMAIN_SHUTOFF => PowerState::Shutdown,
        sys::VIR_DOMAIN_CRASHED => PowerState::Crashed,
        sys::VIR_DOMAIN_PMSUSPENDED => PowerState::Suspended,
        _ => PowerState::NoState,
    }
}

impl Libvirt {
    /// Opens the connection named in the config. `data_dir` is the agent's,
    /// the default home of the instances directory.
    pub fn open(
        cfg: &LibvirtSection,
        site_id: &str,
        data_dir: &Path,
    ) -> Result<Self, LibvirtError> {
        let uri = cfg.uri.clone();
        let open_err = |message: String, hint: &'static str| LibvirtError::Open {
            uri: uri.clone(),
            message,
            hint,
        };
        if let Some(root) = cfg.embed_root() {
            let etc = root.join("etc");
            std::fs::create_dir_all(&etc).map_err(io(&etc))?;
            let conf = etc.join("qemu.conf");
            if !conf.exists() {
                std::fs::write(&conf, EMBED_QEMU_CONF).map_err(io(&conf))?;
            }
        }
        // libvirt prints every error to stderr by default; the driver reports
        // them itself, with context.
        virt::error::clear_error_callback();
        if !uri.starts_with("test:") {
            start_event_loop().map_err(|m| open_err(m, "libvirt's event loop could not start"))?;
        }
        let conn = Connect::open(Some(&uri)).map_err(|e| {
            let m = e.message().to_string();
            let hint = if m.contains("libvirt-qemu") || m.contains("kvm") && m.contains("group") {
                "libvirt's QEMU driver needs a libvirt-qemu user and a kvm group: run scripts/setup.sh, or `useradd -r libvirt-qemu; groupadd -r kvm`"
            } else if m.contains("Failed to connect socket") || m.contains("No such file") {
                "is libvirtd running? Start it, or use compute.libvirt.uri: qemu:///embed?root=/var/lib/roost/libvirt to run without a daemon"
            } else {
                "check compute.libvirt.uri and that libvirt's QEMU driver is installed (libvirt-daemon-driver-qemu, qemu-system-x86)"
            };
            open_err(m, hint)
        })?;
        let accel = match cfg.accel {
            _ if uri.starts_with("test:") => Accel::Test,
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Auto if kvm_usable() => Accel::Kvm,
            AccelChoice::Auto => {
                warn!("/dev/kvm is not usable: guests run under QEMU's software emulation (TCG), many times slower");
                Accel::Tcg
            }
        };
        let instances = cfg
            .instances_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("instances"));
        std::fs::create_dir_all(&instances).map_err(io(&instances))?;
        // QEMU runs elsewhere than the agent's working directory: every
        // path in the domain XML must be absolute.
        let instances = std::fs::canonicalize(&instances).map_err(io(&instances))?;
        info!(%uri, accel = ?accel, instances = %instances.display(), "libvirt driver ready");
        Ok(Libvirt {
            conn,
            site_id: site_id.to_string(),
            instances,
            accel,
            cpu_mode: cfg.cpu_mode,
            shutdown_timeout: Duration::from_secs(cfg.shutdown_timeout_secs),
        })
    }

    /// KVM or software emulation, as chosen at open.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    fn instance_dir(&self, server_id: &str) -> PathBuf {
        self.instances.join(server_id)
    }

    /// The domain Roost made for this server, if there is one. A domain of
    /// that name that this site did not make is an error, never touched.
    fn lookup(&self, server_id: &str) -> Result<Option<Domain>, DriverError> {
        let name = domain::domain_name(server_id);
        let dom = match Domain::lookup_by_name(&self.conn, &name) {
            Ok(d) => d,
            Err(e) if matches!(e.code(), ErrorNumber::NoDomain) => return Ok(None),
            Err(e) => return Err(lv(e)),
        };
        match self.owner(&dom) {
            Some((server, site)) if server == server_id && site == self.site_id => Ok(Some(dom)),
            _ => Err(DriverError(format!(
                "a domain named {name} exists that this site did not make; Roost leaves it alone: rename or remove it"
            ))),
        }
    }

    /// The (server, site) a domain's Roost metadata names.
    fn owner(&self, dom: &Domain) -> Option<(String, String)> {
        dom.get_metadata(
            sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(domain::NAMESPACE),
            0,
        )
        .ok()
        .and_then(|m| domain::roost_ids(&m))
    }

    fn power(dom: &Domain) -> Result<PowerState, DriverError> {
        dom.get_state().map(|(s, _)| power_of(s)).map_err(lv)
    }

    /// The root disk, made once: a qcow2 overlay on the image's file, or a
    /// blank disk of the flavor's size when the image has none.
    fn ensure_disk(&self, guest: &Guest, fresh: bool) -> Result<PathBuf, DriverError> {
        let dir = self.instance_dir(&guest.server.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| DriverError(format!("cannot create {}: {e}", dir.display())))?;
        let disk = dir.join("disk.qcow2");
        let (flavor, image) = parts(guest)?;
        if let Some(base) = image.spec.file.as_ref().filter(|b| !b.is_file()) {
            // Checked before a rebuild removes the old disk.
            return Err(DriverError(format!(
                "image {} ({}) has no file at {}: put the image there",
                image.spec.name,
                image.id,
                base.display()
            )));
        }
        // A region image with no file here (cold, or not yet fetched) has
        // bytes somewhere else: never a blank disk in their place.
        let elsewhere = image.spec.file.is_none() && image.spec.region.is_some();
        if elsewhere && (fresh || !disk.exists()) {
            return Err(DriverError(format!(
                "image {} ({}) is not at this site ({}{}): it is fetched from the region while the link is up; try again once it is active there",
                image.spec.name,
                image.id,
                image.status.state.as_str(),
                if image.status.is_cold() { ", cold tier" } else { "" }
            )));
        }
        if fresh {
            match std::fs::remove_file(&disk) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DriverError(format!(
                        "cannot remove {}: {e}",
                        disk.display()
                    )))
                }
                _ => {}
            }
        }
        if disk.exists() {
            return Ok(disk);
        }
        let tmp = dir.join("disk.qcow2.part");
        let mut cmd = Command::new("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2"]);
        if let Some(base) = &image.spec.file {
            let fmt = match image.spec.disk_format {
                DiskFormat::Qcow2 => "qcow2",
                DiskFormat::Raw => "raw",
            };
            cmd.arg("-F").arg(fmt).arg("-b").arg(base);
        }
        cmd.arg(&tmp);
        if flavor.spec.disk_gb > 0 {
            cmd.arg(format!("{}G", flavor.spec.disk_gb));
        } else if image.spec.file.is_none() {
            cmd.arg("1G");
        }
        let out = cmd
            .output()
            .map_err(|e| DriverError(format!("cannot run qemu-img (install qemu-utils): {e}")))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(DriverError(format!(
                "qemu-img could not make the root disk: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        std::fs::rename(&tmp, &disk)
            .map_err(|e| DriverError(format!("cannot rename {}: {e}", tmp.display())))?;
        Ok(disk)
    }

    fn spec(&self, guest: &Guest, root_disk: PathBuf) -> Result<DomainSpec, DriverError> {
        let (flavor, image) = parts(guest)?;
        let s = &image.spec;
        let direct_boot = match &s.kernel {
            None => None,
            Some(kernel) => {
                for f in std::iter::once(kernel).chain(&s.ramdisk) {
                    if !f.is_file() {
                        return Err(DriverError(format!(
                            "image {} ({}) boots a kernel from {}, which does not exist",
                            s.name,
                            image.id,
                            f.display()
                        )));
                    }
                }
                Some(DirectBoot {
                    kernel: kernel.clone(),
                    initrd: s.ramdisk.clone(),
                    cmdline: s.command_line.clone(),
                })
            }
        };
        Ok(DomainSpec {
            server_id: guest.server.id.clone(),
            site_id: self.site_id.clone(),
            server_name: guest.server.spec.name.clone(),
            accel: self.accel,
            cpu_mode: self.cpu_mode,
            vcpus: flavor.spec.vcpus,
            cpuset: flavor.spec.cpuset().map(String::from),
            memory_mib: flavor.spec.ram_mb,
            root_disk,
            volumes: guest.volumes.clone(),
            nics: guest
                .ports
                .iter()
                .map(|p| Nic {
                    bridge: crate::network::plan::bridge_name(&p.spec.network_id),
                    tap: tap_name(&p.id),
                    mac: p.status.mac_address.clone(),
                })
                .collect(),
            console_log: self.instance_dir(&guest.server.id).join("console.log"),
            direct_boot,
        })
    }

    /// Defines (or redefines) the domain from the server as it is now.
    fn define(&self, guest: &Guest, fresh_disk: bool) -> Result<Domain, DriverError> {
        if let Some(d) = self.lookup(&guest.server.id)? {
            if !fresh_disk && guest.flavor.is_none() {
                // Nothing to redefine from: keep what libvirt has.
                return Ok(d);
            }
        }
        let disk = self.ensure_disk(guest, fresh_disk)?;
        let xml = domain::render(&self.spec(guest, disk)?);
        Domain::define_xml(&self.conn, &xml).map_err(lv)
    }

    /// Gives the domain exactly the guest's volumes: a running domain by
    /// hot-plugging (live and in its config), a stopped one by redefining
    /// it. A running guest must let go of a disk being detached (ACPI
    /// hot-unplug); until it has, this fails and is retried.
    fn sync_volumes(&self, guest: &Guest) -> Result<PowerState, DriverError> {
        let dom = match self.lookup(&guest.server.id)? {
            Some(d) if d.is_active().map_err(lv)? => d,
            _ => {
                let dom = self.define(guest, false)?;
                return Self::power(&dom);
            }
        };
        let root = self.instance_dir(&guest.server.id).join("disk.qcow2");
        let live = |dom: &Domain| -> Result<Vec<(String, PathBuf)>, DriverError> {
            Ok(domain::disks(&dom.get_xml_desc(0).map_err(lv)?)
                .into_iter()
                .filter(|(_, f)| *f != root)
                .collect())
        };
        let flags = sys::VIR_DOMAIN_AFFECT_LIVE | sys::VIR_DOMAIN_AFFECT_CONFIG;
        let had = live(&dom)?;
        let wanted = |f: &PathBuf| guest.volumes.iter().any(|(_, w)| w == f);
        for (target, file) in had.iter().filter(|(_, f)| !wanted(f)) {
            dom.detach_device_flags(&domain::disk_xml(file, target), flags)
                .map_err(lv)?;
        }
        let mut used: Vec<String> = std::iter::once("vda".to_string())
            .chain(live(&dom)?.into_iter().map(|(t, _)| t))
            .collect();
        for (device, file) in &guest.volumes {
            if had.iter().any(|(_, f)| f == file) {
                continue;
            }
            // The attachment's own disk; should it be taken (a domain
            // older than kept devices), the lowest free one.
            let target = if used.contains(device) {
                let free = (1..)
                    .map(domain::disk_target)
                    .find(|t| !used.contains(t))
                    .unwrap_or_default();
                tracing::warn!(server_id = %guest.server.id, file = %file.display(), kept = %device, used = %free,
                    "the volume's disk is taken in the domain; attached at the lowest free one, so the API names another disk until the next redefine");
                free
            } else {
                device.clone()
            };
            dom.attach_device_flags(&domain::disk_xml(file, &target), flags)
                .map_err(lv)?;
            used.push(target);
        }
        let stuck: Vec<String> = live(&dom)?
            .into_iter()
            .filter(|(_, f)| !wanted(f))
            .map(|(_, f)| f.display().to_string())
            .collect();
        if !stuck.is_empty() {
            return Err(DriverError(format!(
                "the guest has not released {} yet (detaching needs the guest to accept ACPI hot-unplug); retrying, or stop the server to detach at once",
                stuck.join(", ")
            )));
        }
        Self::power(&dom)
    }

    fn start(dom: &Domain) -> Result<PowerState, DriverError> {
        match Self::power(dom)? {
            PowerState::Running => {}
            PowerState::Paused => {
                dom.resume().map_err(lv)?;
            }
            _ => {
                dom.create().map_err(lv)?;
            }
        }
        Self::power(dom)
    }

    /// Asks the guest to shut down, waits up to the timeout, then pulls the
    /// plug.
    fn stop(&self, dom: &Domain, graceful: bool) -> Result<(), DriverError> {
        if !dom.is_active().map_err(lv)? {
            return Ok(());
        }
        if graceful && !self.shutdown_timeout.is_zero() && dom.shutdown().is_ok() {
            let deadline = Instant::now() + self.shutdown_timeout;
            while Instant::now() < deadline {
                if !dom.is_active().map_err(lv)? {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        match dom.destroy() {
            Ok(()) => Ok(()),
            // It went away by itself meanwhile.
            Err(_) if !dom.is_active().map_err(lv)? => Ok(()),
            Err(e) => Err(lv(e)),
        }
    }

    fn remove(&self, server_id: &str) -> Result<(), DriverError> {
        if let Some(dom) = self.lookup(server_id)? {
            self.stop(&dom, false)?;
            if let Err(e) = dom.undefine() {
                if !matches!(e.code(), ErrorNumber::NoDomain) {
                    return Err(lv(e));
                }
            }
        }
        let dir = self.instance_dir(server_id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(DriverError(format!("cannot remove {}: {e}", dir.display())))
            }
            _ => Ok(()),
        }
    }
}

fn parts(
    guest: &Guest,
) -> Result<(&roost_common::model::Flavor, &roost_common::model::Image), DriverError> {
    let flavor = guest.flavor.as_ref().ok_or_else(|| {
        DriverError(format!(
            "flavor {} is gone; the server cannot be built",
            guest.server.spec.flavor_id
        ))
    })?;
    let image = guest.image.as_ref().ok_or_else(|| {
        DriverError(format!(
            "image {} is not at this site; the server cannot be built",
            guest.server.spec.image_id
        ))
    })?;
    Ok((flavor, image))
}

impl ComputeDriver for Libvirt {
    fn name(&self) -> &'static str {
        "libvirt"
    }

    fn apply(&self, guest: &Guest, action: DriverAction) -> Result<PowerState, DriverError> {
        let id = &guest.server.id;
        match action {
            DriverAction::Spawn => {
                let dom = self.define(guest, false)?;
                Self::start(&dom)
            }
            DriverAction::PowerOn => {
                let dom = match self.lookup(id)? {
                    Some(d) => d,
                    None => self.define(guest, false)?,
                };
                Self::start(&dom)
            }
            DriverAction::PowerOff => match self.lookup(id)? {
                None => Ok(PowerState::Shutdown),
                Some(dom) => {
                    self.stop(&dom, true)?;
                    Self::power(&dom)
                }
            },
            DriverAction::Reboot { hard } => {
                if let Some(dom) = self.lookup(id)? {
                    self.stop(&dom, !hard)?;
                }
                // A hard reboot also rewrites the domain from the server,
                // as Nova's does: it repairs a domain changed by hand.
                let dom = match (hard, self.lookup(id)?) {
                    (false, Some(d)) => d,
                    _ => self.define(guest, false)?,
                };
                Self::start(&dom)
            }
            DriverAction::Rebuild => {
                if let Some(dom) = self.lookup(id)? {
                    self.stop(&dom, false)?;
                }
                let dom = self.define(guest, true)?;
                match guest.server.spec.power {
                    PowerIntent::Running => Self::start(&dom),
                    PowerIntent::Stopped => Ok(PowerState::Shutdown),
                }
            }
            DriverAction::SyncVolumes => self.sync_volumes(guest),
            DriverAction::Destroy => {
                self.remove(id)?;
                Ok(PowerState::NoState)
            }
        }
    }

    fn observe(&self) -> Result<Option<Vec<Observed>>, DriverError> {
        let mut seen = Vec::new();
        for dom in self.conn.list_all_domains(0).map_err(lv)? {
            let named_ours = dom
                .get_name()
                .is_ok_and(|n| n.starts_with(domain::NAME_PREFIX));
            if !named_ours {
                continue;
            }
            let Some((server_id, site)) = self.owner(&dom) else {
                continue;
            };
            if site != self.site_id {
                continue;
            }
            if let Ok(power) = Self::power(&dom) {
                seen.push(Observed { server_id, power });
            }
        }
        Ok(Some(seen))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use roost_common::model::{Flavor, FlavorSpec, Image, ImageSpec, Resource, Server, ServerSpec};

    fn driver(dir: &Path, site: &str) -> Libvirt {
        let cfg = LibvirtSection {
            uri: "test:///default".into(),
            instances_dir: Some(dir.join("instances")),
            shutdown_timeout_secs: 0,
            cpu_mode: CpuMode::default(),
            accel: AccelChoice::Auto,
        };
        Libvirt::open(&cfg, site, dir).expect("libvirt's test driver opens")
    }

    fn guest(image_file: Option<PathBuf>) -> Guest {
        let now = Utc::now();
        let flavor: Flavor = Resource::new(
            FlavorSpec {
                name: "tiny".into(),
                id: Some("1".into()),
                vcpus: 1,
                ram_mb: 64,
                disk_gb: 1,
                ephemeral_gb: 0,
                swap_mb: 0,
                is_public: true,
                extra_specs: [("roost:cpuset".to_string(), "0".to_string())].into(),
            },
            now,
        );
        let image: Image = Resource::new(
            ImageSpec {
                name: "base".into(),
                id: None,
                disk_format: DiskFormat::Qcow2,
                container_format: "bare".into(),
                min_disk_gb: 0,
                min_ram_mb: 0,
                sha256: None,
                file: image_file,
                kernel: None,
                ramdisk: None,
                command_line: None,
                visibility: Default::default(),
                owner: None,
                protected: false,
                tags: Vec::new(),
                properties: Default::default(),
                region: None,
            },
            now,
        );
        let server: Server =
            Resource::new(ServerSpec::new("plc", "p", "u", "1", image.id.clone()), now);
        Guest {
            ports: Vec::new(),
            volumes: Vec::new(),
            server,
            flavor: Some(flavor),
            image: Some(image),
        }
    }

    fn listed(d: &Libvirt, id: &str) -> Option<PowerState> {
        d.observe()
            .unwrap()
            .unwrap()
            .into_iter()
            .find(|o| o.server_id == id)
            .map(|o| o.power)
    }

    #[test]
    fn lifecycle_on_libvirts_test_driver() {
        let tmp = tempfile::tempdir().unwrap();
        let d = driver(tmp.path(), "site-a");
        let g = guest(None);
        let id = g.server.id.clone();
        assert_eq!(d.apply(&g, DriverAction::Spawn), Ok(PowerState::Running));
        let disk = tmp.path().join("instances").join(&id).join("disk.qcow2");
        let made = std::fs::metadata(&disk).unwrap().modified().unwrap();
        // Idempotent: a repeated spawn (after a crash, or a server brought
        // back by the region's intent) adopts the domain and keeps its disk.
        assert_eq!(d.apply(&g, DriverAction::Spawn), Ok(PowerState::Running));
        assert_eq!(std::fs::metadata(&disk).unwrap().modified().unwrap(), made);
        assert_eq!(listed(&d, &id), Some(PowerState::Running));
        assert!(disk.is_file(), "root disk made with qemu-img");
        let dom = d.lookup(&id).unwrap().unwrap();
        let xml = dom.get_xml_desc(0).unwrap();
        assert!(xml.contains("cpuset='0'"), "{xml}");
        assert!(xml.contains(&disk.display().to_string()), "{xml}");

        assert_eq!(
            d.apply(&g, DriverAction::PowerOff),
            Ok(PowerState::Shutdown)
        );
        assert_eq!(listed(&d, &id), Some(PowerState::Shutdown));
        assert_eq!(
            d.apply(&g, DriverAction::PowerOff),
            Ok(PowerState::Shutdown)
        );
        assert_eq!(d.apply(&g, DriverAction::PowerOn), Ok(PowerState::Running));
        assert_eq!(
            d.apply(&g, DriverAction::Reboot { hard: true }),
            Ok(PowerState::Running)
        );
        assert_eq!(
            d.apply(&g, DriverAction::Reboot { hard: false }),
            Ok(PowerState::Running)
        );

        // Rebuild makes a new root disk.
        std::fs::write(disk.with_file_name("marker"), b"x").unwrap();
        let before = std::fs::metadata(&disk).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(d.apply(&g, DriverAction::Rebuild), Ok(PowerState::Running));
        let after = std::fs::metadata(&disk).unwrap().modified().unwrap();
        assert!(after > before, "rebuild replaced the root disk");

        assert_eq!(d.apply(&g, DriverAction::Destroy), Ok(PowerState::NoState));
        assert_eq!(listed(&d, &id), None);
        assert!(!disk.parent().unwrap().exists(), "instance dir removed");
        assert_eq!(d.apply(&g, DriverAction::Destroy), Ok(PowerState::NoState));
    }

    #[test]
    fn a_servers_ports_are_its_nics_on_their_networks_bridges() {
        let tmp = tempfile::tempdir().unwrap();
        let d = driver(tmp.path(), "site-n");
        let mut g = guest(None);
        let spec: roost_common::model::PortSpec = serde_json::from_value(serde_json::json!({
            "name": "", "project_id": "p", "network_id": "3f0c3b4e-2c4d-4f59-9a7e-3f1e8b2d7c10",
            "fixed_ips": [], "device_id": g.server.id, "device_owner": "compute:nova",
            "security_groups": null, "deleted": false}))
        .unwrap();
        let mut port: roost_common::model::Port = Resource::new(spec, chrono::Utc::now());
        port.status.mac_address = "fa:16:3e:00:00:2a".into();
        g.ports = vec![port.clone()];
        assert_eq!(d.apply(&g, DriverAction::Spawn), Ok(PowerState::Running));
        let xml = d
            .lookup(&g.server.id)
            .unwrap()
            .unwrap()
            .get_xml_desc(0)
            .unwrap();
        assert!(xml.contains("<source bridge='rbr-3f0c3b4e2c4'/>"), "{xml}");
        assert!(
            xml.contains(&format!("<target dev='{}'/>", tap_name(&port.id))),
            "{xml}"
        );
        assert!(xml.contains("<mac address='fa:16:3e:00:00:2a'/>"), "{xml}");
        assert_eq!(d.apply(&g, DriverAction::Destroy), Ok(PowerState::NoState));
    }

    #[test]
    fn domains_roost_did_not_make_are_never_touched() {
        let tmp = tempfile::tempdir().unwrap();
        let d = driver(tmp.path(), "site-b");
        let other_site = driver(tmp.path(), "site-c");
        // libvirt's test driver starts with a running domain named "test".
        let stranger = Domain::lookup_by_name(&d.conn, "test").unwrap();
        // A domain named like one of Roost's, without Roost's metadata.
        let id = uuid::Uuid::new_v4().to_string();
        let xml = format!(
            "<domain type='test'><name>roost-{id}</name><memory>65536</memory><os><type>hvm</type></os></domain>"
        );
        let impostor = Domain::define_xml(&d.conn, &xml).unwrap();
        // Another site's server on the same host.
        let g = guest(None);
        other_site.apply(&g, DriverAction::Spawn).unwrap();

        let seen = d.observe().unwrap().unwrap();
        assert!(
            seen.iter()
                .all(|o| o.server_id != id && o.server_id != g.server.id),
            "{seen:?}"
        );
        let mut g2 = guest(None);
        g2.server.id = id.clone();
        let err = d.apply(&g2, DriverAction::Destroy).unwrap_err();
        assert!(err.0.contains("did not make"), "{err}");
        assert!(
            d.apply(&g, DriverAction::Destroy).is_err(),
            "another site's"
        );
        assert!(impostor.get_name().is_ok(), "still defined");
        assert!(stranger.is_active().unwrap(), "still running");
        assert_eq!(listed(&other_site, &g.server.id), Some(PowerState::Running));
        impostor.undefine().unwrap();
        other_site.apply(&g, DriverAction::Destroy).unwrap();
    }

    #[test]
    fn instance_paths_are_absolute_even_for_a_relative_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let cwd = std::env::current_dir().unwrap();
        let rel = pathdiff(tmp.path(), &cwd);
        let cfg = LibvirtSection {
            uri: "test:///default".into(),
            ..LibvirtSection::default()
        };
        let d = Libvirt::open(&cfg, "site-f", &rel).unwrap();
        assert!(d.instances.is_absolute(), "{}", d.instances.display());
        assert_eq!(
            d.instances,
            tmp.path().canonicalize().unwrap().join("instances")
        );
    }

    /// `to` written relative to `from` (both absolute).
    fn pathdiff(to: &Path, from: &Path) -> PathBuf {
        let ups = from.components().count() - 1;
        let mut p = PathBuf::new();
        for _ in 0..ups {
            p.push("..");
        }
        p.join(to.strip_prefix("/").unwrap())
    }

    #[test]
    fn a_missing_image_file_fails_with_the_image_named() {
        let tmp = tempfile::tempdir().unwrap();
        let d = driver(tmp.path(), "site-d");
        let g = guest(Some(tmp.path().join("nope.qcow2")));
        let err = d.apply(&g, DriverAction::Spawn).unwrap_err();
        assert!(
            err.0.contains("image base") && err.0.contains("nope.qcow2"),
            "{err}"
        );
        assert_eq!(listed(&d, &g.server.id), None, "nothing defined");
        let mut g = guest(None);
        g.flavor = None;
        let err = d.apply(&g, DriverAction::Spawn).unwrap_err();
        assert!(err.0.contains("flavor 1 is gone"), "{err}");
    }

    #[test]
    fn overlay_on_the_image_file() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base.qcow2");
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("16M")
            .status()
            .unwrap();
        assert!(ok.success());
        let d = driver(tmp.path(), "site-e");
        let g = guest(Some(base.clone()));
        d.apply(&g, DriverAction::Spawn).unwrap();
        let disk = tmp
            .path()
            .join("instances")
            .join(&g.server.id)
            .join("disk.qcow2");
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&disk)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["backing-filename"], base.display().to_string());
        assert_eq!(
            info["virtual-size"],
            1u64 << 30,
            "grown to the flavor's 1 GB"
        );
        d.apply(&g, DriverAction::Destroy).unwrap();
    }

    #[test]
    fn a_region_image_not_here_never_becomes_a_blank_disk() {
        let tmp = tempfile::tempdir().unwrap();
        let d = driver(tmp.path(), "site-f");
        // Cold (or not fetched yet): the region holds the bytes, the site
        // has no file.
        let mut g = guest(None);
        let image = g.image.as_mut().unwrap();
        image.spec.region = Some(roost_common::model::RegionCopy {
            size: 1 << 20,
            sha256: "ab".repeat(32),
        });
        image.status.tier = Some(roost_common::model::Tier::Cold);
        let e = d.apply(&g, DriverAction::Spawn).unwrap_err();
        assert!(
            e.0.contains("is not at this site (queued, cold tier)"),
            "{e:?}"
        );
        let disk = tmp
            .path()
            .join("instances")
            .join(&g.server.id)
            .join("disk.qcow2");
        assert!(!disk.exists(), "no disk made");
    }
}
