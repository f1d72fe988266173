//! The tiny bootable guest the compute tests run (built by
//! `scripts/guest-image.sh`), and helpers to look at a running agent's
//! guests from outside: the console log and the QEMU process.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The guest's files and how this host runs it.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub dir: PathBuf,
    /// `kvm` or `tcg`, as the build script's probe found.
    pub accel: String,
    /// The probe's words, printed by tests so a reader knows which ran.
    pub verdict: String,
}

/// The line the guest's /init prints on its serial console.
pub const INIT_LINE: &str = "roost-guest: init reached";

/// The image id the guest is registered under in test configs.
pub const IMAGE_ID: &str = "4d0e8a4c-3b55-4a8e-9f61-0c7b2a5e9d11";

impl GuestImage {
    /// Finds the guest (`ROOST_GUEST_DIR`, else `target/roost-guest`); fails
    /// the test, saying how to build it, when it is missing.
    pub fn find() -> GuestImage {
        let dir = std::env::var_os("ROOST_GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::repo_root().join("target/roost-guest"));
        let verdict = std::fs::read_to_string(dir.join("accel")).unwrap_or_default();
        for f in ["vmlinuz", "initrd.img", "base.qcow2"] {
            assert!(
                dir.join(f).is_file() && !verdict.is_empty(),
                "the test guest is missing from {}: run scripts/guest-image.sh (scripts/test.sh does)",
                dir.display()
            );
        }
        let verdict = verdict.trim().to_string();
        let accel = if verdict == "kvm" { "kvm" } else { "tcg" }.to_string();
        GuestImage {
            dir: std::fs::canonicalize(&dir).unwrap_or(dir),
            accel,
            verdict,
        }
    }

    /// How long a guest may take from start to its init line here.
    pub fn boot_limit(&self) -> Duration {
        if self.accel == "kvm" {
            Duration::from_secs(30)
        } else {
            // Software emulation on two shared cores, several guests at once.
            Duration::from_secs(180)
        }
    }

    /// A site config running servers through libvirt's embedded QEMU driver
    /// rooted at `embed_root`, with the guest as image [`IMAGE_ID`], a
    /// `tiny` flavor (id `1`, 1 vCPU, 128 MB, 1 GB), and two things that
    /// cannot start: flavor `9` pins to a host CPU that does not exist,
    /// image `broken` boots a kernel file that is not there.
    pub fn site_yaml(&self, site_id: &str, embed_root: &Path, ram_mb: u64) -> String {
        let d = self.dir.display();
        format!(
            "site: {{id: {site_id}, name: Compute test}}\n\
             compute:\n  driver: libvirt\n  libvirt:\n    uri: \"qemu:///embed?root={root}\"\n    \
             accel: {accel}\n    cpu_mode: qemu-default\n    shutdown_timeout_secs: 2\n\
             hosts:\n  - {{name: node-0, roles: [controller, compute], vcpus: 64, ram_mb: {ram_mb}, disk_gb: 500}}\n\
             flavors:\n  - {{name: tiny, id: \"1\", vcpus: 1, ram_mb: 128, disk_gb: 1}}\n  \
             - {{name: pinned-away, id: \"9\", vcpus: 1, ram_mb: 128, disk_gb: 1, extra_specs: {{\"roost:cpuset\": \"4000\"}}}}\n\
             images:\n  - name: busybox\n    id: {IMAGE_ID}\n    disk_format: qcow2\n    \
             file: {d}/base.qcow2\n    kernel: {d}/vmlinuz\n    ramdisk: {d}/initrd.img\n    \
             command_line: \"console=ttyS0 rdinit=/init quiet panic=-1\"\n  \
             - name: broken\n    id: 00000000-0000-4000-8000-00000000bad1\n    disk_format: qcow2\n    \
             kernel: {d}/no-such-kernel\n",
            root = embed_root.display(),
            accel = self.accel,
        )
    }
}

/// A server's serial console log, as far as it is written.
pub fn console(data_dir: &Path, server_id: &str) -> String {
    std::fs::read(
        data_dir
            .join("instances")
            .join(server_id)
            .join("console.log"),
    )
    .map(|b| String::from_utf8_lossy(&b).into_owned())
    .unwrap_or_default()
}

/// The QEMU process running a server's domain, if one runs.
pub fn qemu_pid(embed_root: &Path, server_id: &str) -> Option<u32> {
    let file = embed_root.join(format!("run/qemu/roost-{server_id}.pid"));
    let pid: u32 = std::fs::read_to_string(file).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// `kill -9` of every QEMU process under `embed_root`: a host losing power.
pub fn kill_all_qemu(embed_root: &Path) -> usize {
    let Ok(dir) = std::fs::read_dir(embed_root.join("run/qemu")) else {
        return 0;
    };
    let mut n = 0;
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_prefix("roost-")
            .and_then(|r| r.strip_suffix(".pid"))
        else {
            continue;
        };
        if let Some(pid) = qemu_pid(embed_root, id) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            n += 1;
        }
    }
    n
}

/// Kills every QEMU process under an embedded root when dropped, so a test
/// that fails (or a bench that stops) leaves no guest running. Declare it
/// after the temporary directory it guards, so it drops first.
#[derive(Debug)]
pub struct QemuGuard(pub PathBuf);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        kill_all_qemu(&self.0);
    }
}
