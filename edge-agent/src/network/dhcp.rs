//! DHCP for guests: one dnsmasq per network on the gateway host, bound to
//! the network's bridge, handing each port its own address (static
//! leases only: a MAC the site did not make gets no DHCPv4 or stateful
//! DHCPv6 address; advertisements and stateless DHCPv6 answer anyone on
//! the bridge).
//!
//! IPv6 subnets follow Neutron's modes. With `ipv6_ra_mode` set the site
//! is the router: dnsmasq advertises the prefix, so guests' kernels
//! configure their ports' EUI-64 addresses (`slaac`), also asking DHCPv6
//! for options (`dhcpv6-stateless`), or take their address from DHCPv6
//! (`dhcpv6-stateful`, by MAC from the same hosts file as IPv4). Without
//! it a router outside Roost advertises; the site serves stateful DHCPv6
//! only (the mode Neutron takes when none is given).
//!
//! [`desired`] and [`config_text`] are pure; [`Servers`] keeps the
//! processes: it writes each network's files, starts dnsmasq as the
//! agent's child, restarts it when its files change or it died, and stops
//! those no longer wanted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use roost_common::model::{Ipv6Mode, Network, Port, Subnet};

use super::plan::{bridge_name, HostNet, State};

/// One network's DHCP server, as wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcp {
    pub network_id: String,
    pub bridge: String,
    /// (network address, netmask, gateway, DNS servers) per IPv4 subnet.
    pub ranges: Vec<(IpAddr, String, IpAddr, Vec<IpAddr>)>,
    /// The IPv6 subnets served.
    pub v6: Vec<V6Range>,
    /// (MAC, addresses) of every port on the network: its IPv4 addresses
    /// and those of stateful DHCPv6 subnets.
    pub hosts: Vec<(String, Vec<IpAddr>)>,
}

/// One IPv6 subnet as dnsmasq serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V6Range {
    pub prefix: IpAddr,
    pub len: u8,
    /// Router advertisements from the site, in this mode.
    pub ra: Option<Ipv6Mode>,
    /// DHCPv6: `Some(true)` stateful (addresses), `Some(false)` stateless
    /// (options only), `None` none.
    pub dhcp: Option<bool>,
    pub dns: Vec<IpAddr>,
}

/// How the site serves an IPv6 subnet, if at all.
fn v6_range(s: &Subnet) -> Option<V6Range> {
    let ra = s.spec.ipv6_ra_mode;
    let dhcp = match (s.spec.enable_dhcp, s.spec.ipv6_address_mode) {
        (false, _) | (true, Some(Ipv6Mode::Slaac)) => None,
        (true, Some(Ipv6Mode::Dhcpv6Stateless)) => Some(false),
        (true, Some(Ipv6Mode::Dhcpv6Stateful) | None) => Some(true),
    };
    // Stateless DHCPv6 beside a router outside Roost is not served here
    // (not built): the guest gets its address from that router's
    // advertisements, its options from whatever else that wire offers.
    let dhcp = dhcp.filter(|stateful| *stateful || ra.is_some());
    (ra.is_some() || dhcp.is_some()).then(|| V6Range {
        prefix: s.spec.cidr.addr,
        len: s.spec.cidr.prefix,
        ra,
        dhcp,
        dns: s.spec.dns_nameservers.clone(),
    })
}

/// The DHCP servers this host should run: on the gateway host, for each
/// network with an IPv4 subnet that has DHCP on, or an IPv6 subnet the
/// site serves (see the module's doc), whose gateway the bridge holds
/// (dnsmasq answers from that address).
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
        // dnsmasq answers from the gateway address the bridge holds.
        let held = |s: &&Subnet| {
            s.spec.gateway_ip.is_some_and(|gw| {
                want.addresses
                    .contains(&(bridge.clone(), gw, s.spec.cidr.prefix))
            })
        };
        let v6: Vec<(String, V6Range)> = subnets
            .iter()
            .filter(|s| s.spec.network_id == n.id && !s.spec.cidr.is_ipv4())
            .filter(held)
            .filter_map(|s| Some((s.id.clone(), v6_range(s)?)))
            .collect();
        let stateful: Vec<&str> = v6
            .iter()
            .filter(|(_, r)| r.dhcp == Some(true))
            .map(|(id, _)| id.as_str())
            .collect();
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
        if ranges.is_empty() && v6.is_empty() {
            continue;
        }
        let hosts = ports
            .iter()
            .filter(|p| p.spec.network_id == n.id)
            .map(|p| {
                let ips: Vec<IpAddr> = p
                    .status
                    .fixed_ips
                    .iter()
                    .filter(|f| f.ip_address.is_ipv4() || stateful.contains(&f.subnet_id.as_str()))
                    .map(|f| f.ip_address)
                    .collect();
                (p.status.mac_address.clone(), ips)
            })
            .filter(|(_, ips)| !ips.is_empty())
            .collect();
        out.push(Dhcp {
            network_id: n.id.clone(),
            bridge,
            ranges,
            v6: v6.into_iter().map(|(_, r)| r).collect(),
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
    // `ra-only` and `ra-stateless` advertise their own range; a `static`
    // one is advertised only with `enable-ra`, which covers every range,
    // so it is written when the stateful ones want advertising (the store
    // keeps a network's stateful ranges all advertised or none).
    if d.v6.iter().any(|r| r.ra.is_some() && r.dhcp == Some(true)) {
        c += "enable-ra\n";
    }
    for (i, r) in d.v6.iter().enumerate() {
        let how = match (r.ra, r.dhcp) {
            (_, Some(true)) => "static",
            (Some(_), Some(false)) => "ra-stateless",
            _ => "ra-only",
        };
        c += &format!("dhcp-range=set:v{i},{},{how},{},12h\n", r.prefix, r.len);
        if !r.dns.is_empty() {
            let list: Vec<String> = r.dns.iter().map(|a| format!("[{a}]")).collect();
            c += &format!(
                "dhcp-option=tag:v{i},option6:dns-server,{}\n",
                list.join(",")
            );
        }
    }
    c
}

/// The static leases: `MAC,IPv4,[IPv6]` per port, as dnsmasq's
/// `dhcp-host` reads them.
pub fn hosts_text(d: &Dhcp) -> String {
    d.hosts
        .iter()
        .map(|(mac, ips)| {
            let ips: Vec<String> = ips
                .iter()
                .map(|ip| match ip {
                    IpAddr::V4(a) => a.to_string(),
                    IpAddr::V6(a) => format!("[{a}]"),
                })
                .collect();
            format!("{mac},{}\n", ips.join(","))
        })
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

    fn vxlan_network(now: chrono::DateTime<chrono::Utc>) -> Network {
        Resource::new(
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
        )
    }

    /// A host holding the site's gateways, with nothing else.
    fn gateway_host() -> HostNet {
        HostNet {
            site_id: "s".into(),
            vtep: None,
            underlay: None,
            peers: vec![],
            physnets: Default::default(),
            gateway: true,
        }
    }

    #[test]
    fn one_server_per_network_with_a_held_gateway_and_its_ports_as_leases() {
        let now = chrono::Utc::now();
        let mut n = vxlan_network(now);
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
        let host = gateway_host();
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

    /// Each IPv6 mode becomes its dnsmasq range; stateful addresses join
    /// the port's IPv4 one in its static lease.
    #[test]
    fn ipv6_subnets_are_served_as_their_modes_say() {
        use roost_common::model::{eui64, Ipv6Mode as M};
        let now = chrono::Utc::now();
        let net = vxlan_network(now);
        let subnet = |cidr: &str, ra: Option<M>, addr: Option<M>| {
            let mut spec = SubnetSpec::with_defaults(
                "s".into(),
                "p".into(),
                net.id.clone(),
                Cidr::parse("cidr", cidr).unwrap(),
                None,
                None,
            );
            spec.ipv6_ra_mode = ra;
            spec.ipv6_address_mode = addr;
            spec.validate().unwrap();
            Resource::new(spec, now)
        };
        let host = gateway_host();
        let serve = |subs: Vec<Subnet>, ports: &[Port]| {
            let nets = vec![net.clone()];
            let (want, _) = super::super::plan::desired(&host, &nets, &subs);
            let d = desired(&host, &want, &nets, &subs, ports);
            d.first()
                .map(|d| (config_text(d, Path::new("/d")), hosts_text(d)))
        };
        // Each mode the site advertises: its range, and enable-ra only for
        // the stateful one (ra-only and ra-stateless advertise themselves;
        // enable-ra gives a static range its M flag).
        for (mode, range, enable_ra) in [
            (M::Slaac, "ra-only", false),
            (M::Dhcpv6Stateless, "ra-stateless", false),
            (M::Dhcpv6Stateful, "static", true),
        ] {
            let (conf, _) =
                serve(vec![subnet("fd00:1::/64", Some(mode), Some(mode))], &[]).unwrap();
            assert_eq!(conf.contains("enable-ra\n"), enable_ra, "{conf}");
            assert!(
                conf.contains(&format!("dhcp-range=set:v0,fd00:1::,{range},64,12h\n")),
                "{conf}"
            );
        }
        // Neutron's default (no modes): stateful DHCPv6, advertisements
        // left to the router outside.
        let v4 = subnet("10.8.0.0/24", None, None);
        let v6 = subnet("fd00:2::/64", None, None);
        let mut port: Port = Resource::new(
            serde_json::from_value(serde_json::json!({
                "name": "", "project_id": "p", "network_id": net.id, "fixed_ips": [],
                "device_id": null, "device_owner": null, "security_groups": null, "deleted": false}))
            .unwrap(),
            now,
        );
        port.status.mac_address = "fa:16:3e:00:00:01".into();
        port.status.fixed_ips = vec![
            FixedIp {
                subnet_id: v4.id.clone(),
                ip_address: "10.8.0.2".parse().unwrap(),
            },
            FixedIp {
                subnet_id: v6.id.clone(),
                ip_address: "fd00:2::2".parse().unwrap(),
            },
        ];
        let (conf, hosts) = serve(vec![v4, v6], &[port.clone()]).unwrap();
        assert!(!conf.contains("enable-ra"), "{conf}");
        assert!(
            conf.contains("dhcp-range=set:v0,fd00:2::,static,64,12h\n"),
            "{conf}"
        );
        assert_eq!(hosts, "fa:16:3e:00:00:01,10.8.0.2,[fd00:2::2]\n");
        // A SLAAC address is the guest's own doing: not in the lease.
        let slaac = subnet("fd00:3::/64", Some(M::Slaac), Some(M::Slaac));
        let mine = eui64(slaac.spec.cidr.addr, "fa:16:3e:00:00:01").unwrap();
        assert_eq!(mine.to_string(), "fd00:3::f816:3eff:fe00:1");
        port.status.fixed_ips = vec![FixedIp {
            subnet_id: slaac.id.clone(),
            ip_address: mine,
        }];
        let (_, hosts) = serve(vec![slaac], &[port]).unwrap();
        assert_eq!(hosts, "");
        // Stateless DHCPv6 with a router outside, or DHCP off: nothing.
        assert!(serve(
            vec![subnet("fd00:4::/64", None, Some(M::Dhcpv6Stateless))],
            &[]
        )
        .is_none());
        let mut off = subnet("fd00:5::/64", None, None);
        off.spec.enable_dhcp = false;
        assert!(serve(vec![off], &[]).is_none());
    }
}
