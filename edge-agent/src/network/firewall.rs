//! Security groups on the host, through nftables.
//!
//! [`ruleset`] (pure) renders one table, `inet roost-<site>` (so two
//! sites' agents on one host keep apart), from the site's ports and groups; [`apply`] loads it with `nft -f` in one transaction
//! (the old table is replaced whole, so there is never a moment without
//! rules), every reconciler pass, so a table flushed by hand comes back.
//!
//! Guests' frames cross Linux bridges; the kernel's bridge netfilter
//! (`net.bridge.bridge-nf-call-iptables`, set here) passes bridged IP
//! traffic through the `inet` hooks, where connection tracking makes the
//! rules stateful: replies to allowed traffic are allowed. Ports are told
//! apart by MAC address. Per port (one in no group gets only DHCP and
//! neighbour discovery), every sender's egress before any receiver's
//! ingress:
//!
//! - egress (frames from its MAC, forwarded or to this host): DHCP and
//!   DHCPv6 answers and router advertisements are dropped (no rogue
//!   servers); a source address that is not the port's is dropped (no
//!   spoofing; a DHCP discover from 0.0.0.0 passes); DHCP and DHCPv6
//!   requests and IPv6 neighbour discovery pass; then the groups' egress
//!   rules; the rest is dropped;
//! - ingress (frames forwarded to its MAC): DHCP replies, DHCPv6 replies
//!   from link-local addresses and neighbour discovery pass; then the
//!   groups' ingress rules (a remote group means the addresses of the
//!   ports in it); the rest is dropped.
//!
//! Not filtered: traffic this host sends to a port (DHCP from the site's
//! dnsmasq, the gateway's replies), broadcast and multicast frames on
//! their way to other ports, and ARP (which bridge netfilter does not
//! pass to these hooks). Flows already open when a rule is deleted live on
//! until they end (their conntrack entries are not flushed).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use roost_common::model::{Cidr, Direction, Port, SecurityGroup, SecurityGroupRule};

/// The nftables table a site's agent owns on its host (family `inet`).
pub fn table(site_id: &str) -> String {
    format!("roost-{site_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run nft ({0}); install Debian's nftables package: security groups are not enforced on this host until then")]
    Missing(String),
    #[error("nft refused the ruleset: {0}")]
    Refused(String),
    #[error(
        "cannot turn on bridge netfilter ({0}): security groups would not see bridged traffic"
    )]
    BridgeNetfilter(String),
}

/// A network address as nftables takes it (host bits cleared).
fn prefix(c: &Cidr) -> String {
    let addr = match c.addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(c.prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(c.prefix))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    };
    format!("{addr}/{}", c.prefix)
}

fn set<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

/// One rule's match, or `None` when it can match nothing (a remote group
/// with no addresses of its version).
fn rule_match(r: &SecurityGroupRule, members: &BTreeMap<&str, BTreeSet<IpAddr>>) -> Option<String> {
    let s = &r.spec;
    let (family, nfproto) = if s.ip_version == 6 {
        ("ip6", "ipv6")
    } else {
        ("ip", "ipv4")
    };
    // The remote end: the source of what comes in, the destination of
    // what goes out.
    let end = match s.direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    let mut m = vec![format!("meta nfproto {nfproto}")];
    if let Some(c) = &s.remote_ip_prefix {
        m.push(format!("{family} {end} {}", prefix(c)));
    }
    if let Some(g) = &s.remote_group_id {
        let ips: Vec<&IpAddr> = members
            .get(g.as_str())
            .into_iter()
            .flatten()
            .filter(|ip| ip.is_ipv6() == (s.ip_version == 6))
            .collect();
        if ips.is_empty() {
            return None;
        }
        m.push(format!("{family} {end} {}", set(ips)));
    }
    let ports = match (s.port_range_min, s.port_range_max) {
        (Some(a), Some(b)) if a != b => Some(format!("{a}-{b}")),
        (Some(a), _) | (None, Some(a)) => Some(a.to_string()),
        (None, None) => None,
    };
    match s.protocol.as_deref() {
        Some(p @ ("tcp" | "udp")) => {
            m.push(format!("meta l4proto {p}"));
            if let Some(ports) = ports {
                m.push(format!("{p} dport {ports}"));
            }
        }
        Some("icmp") => {
            m.push("meta l4proto icmp".into());
            if let Some(t) = s.port_range_min {
                m.push(format!("icmp type {t}"));
            }
            if let Some(c) = s.port_range_max {
                m.push(format!("icmp code {c}"));
            }
        }
        Some("icmpv6") => {
            m.push("meta l4proto ipv6-icmp".into());
            if let Some(t) = s.port_range_min {
                m.push(format!("icmpv6 type {t}"));
            }
        }
        // Validated at the API: nothing else is stored.
        _ => {}
    }
    Some(m.join(" "))
}

/// The whole table for this host's view of the site: every live port with
/// a MAC (one in no group lets only DHCP and neighbour discovery through;
/// ports the site's own network services use, `network:*`, are left open).
pub fn ruleset(
    site_id: &str,
    ports: &[Port],
    groups: &[(SecurityGroup, Vec<SecurityGroupRule>)],
) -> String {
    let table = table(site_id);
    let guarded: Vec<&Port> = ports
        .iter()
        .filter(|p| !p.spec.deleted)
        .filter(|p| !p.status.mac_address.is_empty())
        .filter(|p| {
            !p.spec
                .device_owner
                .as_deref()
                .is_some_and(|o| o.starts_with("network:"))
        })
        .collect();
    let mut members: BTreeMap<&str, BTreeSet<IpAddr>> = BTreeMap::new();
    for p in &guarded {
        for g in &p.status.security_groups {
            members
                .entry(g.as_str())
                .or_default()
                .extend(p.status.fixed_ips.iter().map(|f| f.ip_address));
        }
    }
    let rules: BTreeMap<&str, &[SecurityGroupRule]> = groups
        .iter()
        .map(|(g, r)| (g.id.as_str(), r.as_slice()))
        .collect();

    let mut chains = String::new();
    let (mut forward, mut input) = (String::new(), String::new());
    // Every sender's egress chain runs before any receiver's ingress chain
    // (an ingress accept is final: were it first, the sender's own rules
    // and its spoofing check would be skipped).
    for (n, p) in guarded.iter().enumerate() {
        let mac = p.status.mac_address.to_lowercase();
        forward += &format!("    ether saddr {mac} jump out-{n}\n");
        input += &format!("    ether saddr {mac} jump out-{n}\n");
    }
    for (n, p) in guarded.iter().enumerate() {
        let mac = p.status.mac_address.to_lowercase();
        forward += &format!("    ether daddr {mac} jump in-{n}\n");
    }
    for (n, p) in guarded.iter().enumerate() {
        let own = |v6: bool| -> Vec<IpAddr> {
            p.status
                .fixed_ips
                .iter()
                .map(|f| f.ip_address)
                .filter(|a| a.is_ipv6() == v6)
                .collect()
        };
        let (v4, v6) = (own(false), own(true));
        // No guest serves DHCP or DHCPv6 or advertises routes; a DHCP
        // discover comes from 0.0.0.0; anything else must come from the
        // port's own addresses (or, for IPv6, a link-local one) before any
        // rule.
        let mut out = format!(
            "  chain out-{n} {{\n    # port {}\n    meta l4proto udp udp sport {{ 67, 547 }} drop\n    icmpv6 type nd-router-advert drop\n    ip saddr 0.0.0.0 udp sport 68 udp dport 67 return\n",
            p.id
        );
        out += &if v4.is_empty() {
            "    meta nfproto ipv4 drop\n".to_string()
        } else {
            format!("    ip saddr != {} drop\n", set(&v4))
        };
        let mut v6_own: Vec<String> = v6.iter().map(|a| a.to_string()).collect();
        v6_own.push("fe80::/10".into());
        out += &format!("    ip6 saddr != {} drop\n", set(&v6_own));
        out += "    meta nfproto ipv4 udp sport 68 udp dport 67 return\n    meta nfproto ipv6 udp sport 546 udp dport 547 return\n    icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } return\n";
        let mut inn = format!(
            "  chain in-{n} {{\n    meta nfproto ipv4 udp sport 67 udp dport 68 accept\n    ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept\n    icmpv6 type {{ nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept\n"
        );
        for g in &p.status.security_groups {
            for r in rules.get(g.as_str()).copied().unwrap_or_default() {
                let Some(m) = rule_match(r, &members) else {
                    continue;
                };
                match r.spec.direction {
                    Direction::Egress => out += &format!("    {m} return\n"),
                    Direction::Ingress => inn += &format!("    {m} accept\n"),
                }
            }
        }
        chains += &format!("{out}    drop\n  }}\n{inn}    drop\n  }}\n");
    }
    format!(
        "table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    ct state established,related accept\n{forward}  }}\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    ct state established,related accept\n{input}  }}\n{chains}}}\n"
    )
}

/// Turns bridge netfilter on in this network namespace, then loads
/// `ruleset` with `nft -f -` (one transaction).
pub fn apply(ruleset: &str) -> Result<(), FirewallError> {
    for v in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
        let path = format!("/proc/sys/net/bridge/{v}");
        if !std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == "1") {
            std::fs::write(&path, "1").map_err(|e| {
                FirewallError::BridgeNetfilter(format!(
                    "{path}: {e}; load the kernel's br_netfilter module (modprobe br_netfilter, and list it in /etc/modules-load.d/)"
                ))
            })?;
        }
    }
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| FirewallError::Missing(e.to_string()))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(ruleset.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| FirewallError::Refused(e.to_string()))?;
    if let Some(Err(e)) = written {
        return Err(FirewallError::Refused(format!(
            "writing the ruleset to nft: {e}"
        )));
    }
    if !out.status.success() {
        return Err(FirewallError::Refused(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_common::model::{
        FixedIp, PortSpec, PortStatus, Resource, SecurityGroupRuleSpec, SecurityGroupSpec,
    };

    fn port(id: &str, mac: &str, ips: &[&str], groups: &[&str]) -> Port {
        let mut p: Port = Resource::new(
            PortSpec {
                name: id.into(),
                project_id: "p".into(),
                network_id: "n".into(),
                fixed_ips: vec![],
                mac_address: None,
                device_id: None,
                device_owner: None,
                security_groups: None,
                admin_state_up: true,
                deleted: false,
                created_for_device: false,
            },
            chrono::Utc::now(),
        );
        p.id = id.into();
        p.status = PortStatus {
            mac_address: mac.into(),
            fixed_ips: ips
                .iter()
                .map(|ip| FixedIp {
                    subnet_id: "s".into(),
                    ip_address: ip.parse().unwrap(),
                })
                .collect(),
            security_groups: groups.iter().map(|g| g.to_string()).collect(),
            tap: None,
            up: true,
        };
        p
    }

    fn group(
        id: &str,
        rules: Vec<SecurityGroupRuleSpec>,
    ) -> (SecurityGroup, Vec<SecurityGroupRule>) {
        let mut g: SecurityGroup = Resource::new(
            SecurityGroupSpec {
                name: id.into(),
                description: String::new(),
                project_id: "p".into(),
                deleted: false,
            },
            chrono::Utc::now(),
        );
        g.id = id.into();
        let rules = rules
            .into_iter()
            .map(|s| Resource::new(s, chrono::Utc::now()))
            .collect();
        (g, rules)
    }

    fn rule(
        direction: Direction,
        ip_version: u8,
        protocol: Option<&str>,
        ports: (Option<u16>, Option<u16>),
        prefix: Option<&str>,
        remote_group: Option<&str>,
    ) -> SecurityGroupRuleSpec {
        SecurityGroupRuleSpec {
            security_group_id: "g".into(),
            project_id: "p".into(),
            direction,
            ip_version,
            protocol: protocol.map(str::to_string),
            port_range_min: ports.0,
            port_range_max: ports.1,
            remote_ip_prefix: prefix.map(|p| Cidr::parse("remote_ip_prefix", p).unwrap()),
            remote_group_id: remote_group.map(str::to_string),
        }
    }

    #[test]
    fn each_port_gets_its_groups_rules_with_remote_groups_as_address_sets() {
        let web = group(
            "web",
            vec![
                rule(
                    Direction::Ingress,
                    4,
                    Some("tcp"),
                    (Some(80), Some(443)),
                    Some("10.9.8.7/16"),
                    None,
                ),
                rule(
                    Direction::Ingress,
                    4,
                    Some("udp"),
                    (Some(7000), Some(7000)),
                    None,
                    Some("default"),
                ),
                rule(Direction::Egress, 4, None, (None, None), None, None),
                // No v6 member of `default`: this rule can match nothing.
                rule(
                    Direction::Ingress,
                    6,
                    None,
                    (None, None),
                    None,
                    Some("default"),
                ),
            ],
        );
        let default = group(
            "default",
            vec![rule(
                Direction::Egress,
                4,
                Some("icmp"),
                (Some(8), None),
                None,
                None,
            )],
        );
        let ports = vec![
            port("srv", "02:AA:00:00:00:01", &["10.50.0.11"], &["web"]),
            port("cli", "02:aa:00:00:00:02", &["10.50.0.12"], &["default"]),
            port("open", "02:aa:00:00:00:03", &["10.50.0.13"], &[]),
        ];
        let text = ruleset("f-01", &ports, &[web, default]);
        // Replaced whole, in one transaction.
        assert!(text.starts_with(
            "table inet roost-f-01\ndelete table inet roost-f-01\ntable inet roost-f-01 {"
        ));
        assert!(
            text.contains("ether saddr 02:aa:00:00:00:01 jump out-0"),
            "{text}"
        );
        assert!(
            text.contains("ether daddr 02:aa:00:00:00:02 jump in-1"),
            "{text}"
        );
        let forward = &text[text.find("chain forward").unwrap()..text.find("chain input").unwrap()];
        let last_out = forward.rfind("jump out-").unwrap();
        let first_in = forward.find("jump in-").unwrap();
        assert!(
            last_out < first_in,
            "senders' egress before receivers' ingress: {forward}"
        );
        assert!(
            text.contains("udp sport { 67, 547 } drop") && text.contains("nd-router-advert drop"),
            "no guest serves DHCP or DHCPv6 or advertises routes: {text}"
        );
        assert!(text.contains("meta nfproto ipv6 udp sport 546 udp dport 547 return"));
        assert!(text.contains("ip6 saddr fe80::/10 udp sport 547 udp dport 546 accept"));
        let out0 = &text[text.find("chain out-0").unwrap()..];
        assert!(
            out0.find("ip saddr != { 10.50.0.11 } drop").unwrap()
                < out0
                    .find("udp sport 68 udp dport 67 return\n    meta nfproto ipv6")
                    .unwrap(),
            "the spoofing check comes before what passes: {out0}"
        );
        assert!(
            text.contains("ether daddr 02:aa:00:00:00:03 jump in-2"),
            "a port in no group is closed, not open: {text}"
        );
        assert!(
            text.contains(
                "meta nfproto ipv4 ip saddr 10.9.0.0/16 meta l4proto tcp tcp dport 80-443 accept"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "meta nfproto ipv4 ip saddr { 10.50.0.12 } meta l4proto udp udp dport 7000 accept"
            ),
            "{text}"
        );
        assert!(text.contains("meta nfproto ipv4 return"), "{text}");
        assert!(
            text.contains("meta nfproto ipv4 meta l4proto icmp icmp type 8 return"),
            "{text}"
        );
        assert!(
            !text.contains("meta nfproto ipv6 ip6 saddr"),
            "an empty remote group is left out: {text}"
        );
        assert!(
            text.contains("ip saddr != { 10.50.0.11 } drop"),
            "no spoofing: {text}"
        );
        assert_eq!(
            text.matches("    drop\n  }").count(),
            6,
            "each chain ends in a drop: {text}"
        );
    }
}
