//! Network namespaces for tests: each made here is removed when dropped.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace joined to the test's own by a veth pair, on a /24
/// of its own: the test's side is `.1`, the namespace's side `.10`.
#[derive(Debug)]
pub struct SiteNet {
    pub name: String,
    /// The interface inside the namespace.
    pub interface: String,
    pub host_ip: Ipv4Addr,
    pub site_ip: Ipv4Addr,
    host_if: String,
}

/// Runs `ip ARGS`, failing the test with ip's own words if it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl SiteNet {
    /// Needs root (CAP_NET_ADMIN), as every namespace test does.
    pub fn new() -> SiteNet {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{}{k}", pid % 100_000);
        // A /24 per process and namespace: 10.(100..199).(0..249).0.
        let n = pid.wrapping_add(k.wrapping_mul(7919));
        let (a, b) = (100 + (n / 250) % 100, n % 250);
        let net = SiteNet {
            name: format!("roost-t{tag}"),
            interface: format!("rs{tag}"),
            host_if: format!("rh{tag}"),
            host_ip: Ipv4Addr::new(10, a as u8, b as u8, 1),
            site_ip: Ipv4Addr::new(10, a as u8, b as u8, 10),
        };
        ip(&["netns", "add", &net.name]);
        ip(&[
            "link",
            "add",
            &net.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &net.interface,
            "netns",
            &net.name,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host_ip),
            "dev",
            &net.host_if,
        ]);
        ip(&["link", "set", &net.host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["-n", net.name.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&[
            "addr",
            "add",
            &format!("{}/24", net.site_ip),
            "dev",
            &net.interface,
        ]);
        inside(&["link", "set", &net.interface, "up"]);
        inside(&["link", "set", "lo", "up"]);
        net
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Default for SiteNet {
    fn default() -> Self {
        SiteNet::new()
    }
}

impl Drop for SiteNet {
    fn drop(&mut self) {
        // Removing the namespace removes its veth end, and with it the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// Kills, when dropped, every dnsmasq whose command line names a path
/// under this directory: an agent killed part way through a test leaves
/// its DHCP servers running in a namespace that is then removed.
#[derive(Debug)]
pub struct DhcpGuard<'a>(pub &'a std::path::Path);

impl Drop for DhcpGuard<'_> {
    fn drop(&mut self) {
        let needle = self.0.to_string_lossy().to_string();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("dnsmasq") && cmd.contains(&needle) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}
