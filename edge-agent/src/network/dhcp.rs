//! DHCP for guests: one dnsmasq per network on the gateway host, bound to
//! the network's bridge, handing each port its own address (static
//! leases only: a MAC the site did not make gets nothing).
//!
//! [`desired`] and [`config_text`] are pure; [`Servers`] keeps the
//! processes: it writes each network's files, starts dnsmasq as the
//! agent's child, restarts it when its files change or it died, and stops
//! those no longer wanted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use roost_common::model::{Network, Port, Subnet};

use super::plan::{bridge_name, HostNet, State};

/// One network's DHCP server, as wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcp {
    pub network_id: String,
    pub bridge: String,
    /// (network address, netmask, gateway, DNS servers) per IPv4 subnet.
    pub ranges: Vec<(IpAddr, String, IpAddr, Vec<IpAddr>)>,
    /// (MAC, address) of every port on the network.
    pub hosts: Vec<(String, IpAddr)>,
}

/// The DHCP servers this host should run: on the gateway host, for each
/// network with an IPv4 subnet that has DHCP on and whose gateway the
/// bridge holds (dnsmasq answers from that address).
pub fn desired(
    h: &HostNet,
    want: &State,
    networks: &[Network],
    subnets: &[Subnet],
    ports: &[Port],
) -> Vec<Dhcp> {
    if !h.gateway {
        return Vec::new();
    }
    let mut out = Vec::new();
    for n in networks.iter().filter(|n| !n.spec.deleted) {
        let bridge = bridge_name(&n.id);
        let ranges: Vec<_> = subnets
            .iter()
            .filter(|s| s.spec.network_id == n.id && s.spec.enable_dhcp && s.spec.cidr.is_ipv4())
            .filter_map(|s| {
                let gw = s.spec.gateway_ip?;
                want.addresses
                    .contains(&(bridge.clone(), gw, s.spec.cidr.prefix))
                    .then(|| {
                        let mask = u32::MAX
                            .checked_shl(32 - u32::from(s.spec.cidr.prefix))
                            .unwrap_or(0);
                        (
                            s.spec.cidr.addr,
                            std::net::Ipv4Addr::from(mask).to_string(),
                            gw,
                            s.spec.dns_nameservers.clone(),
                        )
                    })
            })
            .collect();
        if ranges.is_empty() {
            continue;
        }
        let hosts = ports
            .iter()
            .filter(|p| p.spec.network_id == n.id)
            .flat_map(|p| {
                p.status
                    .fixed_ips
                    .iter()
                    .filter(|f| f.ip_address.is_ipv4())
                    .map(|f| (p.status.mac_address.clone(), f.ip_address))
            })
            .collect();
        out.push(Dhcp {
            network_id: n.id.clone(),
            bridge,
            ranges,
            hosts,
        });
    }
    out
}

/// dnsmasq's configuration for one network: DHCP only (no DNS), static
/// leases from the hosts file, on the bridge alone.
pub fn config_text(d: &Dhcp, dir: &Path) -> String {
    let mut c = format!(
        "# Written by roost-agent for network {}; rewritten on every change.\n\
         interface={}\nbind-interfaces\nexcept-interface=lo\nport=0\nno-resolv\nno-hosts\n\
         dhcp-authoritative\ndhcp-hostsfile={}\ndhcp-leasefile={}\npid-file={}\nlog-facility=-\n",
        d.network_id,
        d.bridge,
        dir.join("hosts").display(),
        dir.join("leases").display(),
        dir.join("pid").display(),
    );
    for (i, (net, mask, gw, dns)) in d.ranges.iter().enumerate() {
        c += &format!("dhcp-range=set:s{i},{net},static,{mask},12h\n");
        c += &format!("dhcp-option=tag:s{i},option:router,{gw}\n");
        if !dns.is_empty() {
            let list: Vec<String> = dns.iter().map(ToString::to_string).collect();
            c += &format!(
                "dhcp-option=tag:s{i},option:dns-server,{}\n",
                list.join(",")
            );
        }
    }
    c
}

pub fn hosts_text(d: &Dhcp) -> String {
    d.hosts
        .iter()
        .map(|(mac, ip)| format!("{mac},{ip}\n"))
        .collect()
}

/// Stops a dnsmasq an earlier agent left in `dir`, if its pid file still
/// names that dnsmasq (never another process that took the pid since).
fn stop_stale(dir: &Path) {
    let conf = dir.join("dnsmasq.conf").display().to_string();
    let Some(n) = std::fs::read_to_string(dir.join("pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{n}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if cmdline.contains("dnsmasq") && cmdline.contains(&conf) {
        if let Some(pid) = rustix::process::Pid::from_raw(n) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

#[derive(Debug)]
struct Running {
    child: Child,
    /// The files it was started with.
    files: (String, String),
}

/// The dnsmasq processes of this host, keyed by network.
#[derive(Debug)]
pub struct Servers {
    dir: PathBuf,
    running: BTreeMap<String, Running>,
    /// Said once: dnsmasq is not installed.
    missing_said: bool,
}

impl Servers {
    pub fn new(dir: PathBuf) -> Servers {
        Servers {
            dir,
            running: BTreeMap::new(),
            missing_said: false,
        }
    }

    /// Brings the processes in line with `want`; errors are logged and
    /// retried next pass.
    pub fn apply(&mut self, want: &[Dhcp]) {
        let wanted: Vec<&str> = want.iter().map(|d| d.network_id.as_str()).collect();
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|k| !wanted.contains(&k.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.stop(&id);
            let _ = std::fs::remove_dir_all(self.dir.join(&id));
        }
        // Networks deleted while the agent was down: their dnsmasq and files.
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !wanted.contains(&name.as_str()) && !self.running.contains_key(&name) {
                stop_stale(&e.path());
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        for d in want {
            let dir = self.dir.join(&d.network_id);
            let files = (config_text(d, &dir), hosts_text(d));
            let current = match self.running.get_mut(&d.network_id) {
                None => false,
                Some(r) => match r.child.try_wait() {
                    Ok(None) => r.files == files,
                    Ok(Some(status)) => {
                        tracing::warn!(network_id = %d.network_id, %status, "the network's dnsmasq exited; starting it again");
                        false
                    }
                    Err(_) => false,
                },
            };
            if current {
                continue;
            }
            self.stop(&d.network_id);
            if let Err(e) = self.start(d, &dir, files) {
                tracing::warn!(network_id = %d.network_id, error = %e, "cannot run DHCP for the network; retried next pass");
            }
        }
    }

    fn start(&mut self, d: &Dhcp, dir: &Path, files: (String, String)) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        roost_common::files::write_atomic(&dir.join("dnsmasq.conf"), files.0.as_bytes(), 0o600)?;
        roost_common::files::write_atomic(&dir.join("hosts"), files.1.as_bytes(), 0o600)?;
        // A dnsmasq left by an earlier agent (killed with -9) would hold
        // the port.
        stop_stale(dir);
        let child = match Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            // Read as root, run as root: the files sit in the agent's
            // private data dir.
            .arg("--user=root")
            .arg(format!(
                "--conf-file={}",
                dir.join("dnsmasq.conf").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.missing_said {
                    tracing::warn!("dnsmasq is not installed: guests get no address by DHCP (apt-get install dnsmasq-base)");
                    self.missing_said = true;
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        tracing::info!(network_id = %d.network_id, bridge = %d.bridge, leases = d.hosts.len(), "DHCP serving the network");
        self.running
            .insert(d.network_id.clone(), Running { child, files });
        Ok(())
    }

    fn stop(&mut self, id: &str) {
        if let Some(mut r) = self.running.remove(id) {
            let _ = r.child.kill();
            let _ = r.child.wait();
            let _ = std::fs::remove_file(self.dir.join(id).join("pid"));
        }
    }

    /// Stops every process (the agent is stopping).
    pub fn stop_all(&mut self) {
        let ids: Vec<String> = self.running.keys().cloned().collect();
        for id in ids {
            self.stop(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_common::model::{
        Cidr, FixedIp, NetworkKind, NetworkSpec, PortSpec, Resource, SubnetSpec,
    };

    #[test]
    fn one_server_per_network_with_a_held_gateway_and_its_ports_as_leases() {
        let now = chrono::Utc::now();
        let mut n: Network = Resource::new(
            NetworkSpec {
                name: "n".into(),
                project_id: "p".into(),
                kind: NetworkKind::Vxlan,
                segmentation_id: Some(1000),
                physical_network: None,
                mtu: 1450,
                shared: false,
                admin_state_up: true,
                deleted: false,
            },
            now,
        );
        n.id = "11111111-aaaa-4bbb-8ccc-000000000001".into();
        let sub: Subnet = Resource::new(
            SubnetSpec::with_defaults(
                "".into(),
                "p".into(),
                n.id.clone(),
                Cidr::parse("c", "10.8.0.0/24").unwrap(),
                None,
                None,
            ),
            now,
        );
        let spec: PortSpec = serde_json::from_value(serde_json::json!({
            "name": "", "project_id": "p", "network_id": n.id, "fixed_ips": [],
            "device_id": null, "device_owner": null, "security_groups": null, "deleted": false}))
        .unwrap();
        let mut port: Port = Resource::new(spec, now);
        port.status.mac_address = "fa:16:3e:00:00:01".into();
        port.status.fixed_ips = vec![FixedIp {
            subnet_id: sub.id.clone(),
            ip_address: "10.8.0.2".parse().unwrap(),
        }];
        let host = HostNet {
            site_id: "s".into(),
            vtep: None,
            underlay: None,
            peers: vec![],
            physnets: Default::default(),
            gateway: true,
        };
        let (nets, subs) = (vec![n.clone()], vec![sub.clone()]);
        let (want, _) = super::super::plan::desired(&host, &nets, &subs);
        let d = desired(&host, &want, &nets, &subs, &[port]);
        assert_eq!(d.len(), 1);
        let conf = config_text(&d[0], Path::new("/var/lib/roost/agent/network/x"));
        assert!(conf.contains("interface=rbr-11111111aaa\n"), "{conf}");
        assert!(
            conf.contains("dhcp-range=set:s0,10.8.0.0,static,255.255.255.0,12h\n"),
            "{conf}"
        );
        assert!(
            conf.contains("dhcp-option=tag:s0,option:router,10.8.0.1\n"),
            "{conf}"
        );
        assert!(conf.contains("port=0\n"), "no DNS server: {conf}");
        assert_eq!(hosts_text(&d[0]), "fa:16:3e:00:00:01,10.8.0.2\n");
        // Not the gateway host, or DHCP off: no server.
        let other = HostNet {
            gateway: false,
            ..host.clone()
        };
        assert!(desired(&other, &want, &nets, &subs, &[]).is_empty());
        let mut off = sub;
        off.spec.enable_dhcp = false;
        assert!(desired(&host, &want, &[n], &[off], &[]).is_empty());
    }
}
