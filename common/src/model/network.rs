//! Networks, subnets, ports and security groups (Neutron). Realised through
//! rtnetlink by the networking issue; IP allocation (in port status) is the
//! site's alone.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::Resource;
use crate::validate::{self, FieldError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    Flat,
    Vlan,
    Vxlan,
    Local,
}

impl NetworkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkKind::Flat => "flat",
            NetworkKind::Vlan => "vlan",
            NetworkKind::Vxlan => "vxlan",
            NetworkKind::Local => "local",
        }
    }
}

/// Neutron allows empty names; Roost asks only for printable text.
pub fn check_optional_name(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Ok(());
    }
    validate::name(field, value)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub project_id: String,
    pub kind: NetworkKind,
    /// VLAN id (1-4094) or VXLAN VNI (1-16777215); the site picks one when
    /// absent.
    pub segmentation_id: Option<u32>,
    /// The provider network (edge network config) a flat or VLAN network
    /// rides on.
    #[serde(default)]
    pub physical_network: Option<String>,
    pub mtu: u32,
    pub shared: bool,
    #[serde(default = "yes")]
    pub admin_state_up: bool,
    pub deleted: bool,
}

fn yes() -> bool {
    true
}

impl NetworkSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_optional_name("name", &self.name)?;
        match (self.kind, self.segmentation_id) {
            (NetworkKind::Vlan, Some(id)) => {
                validate::range("provider:segmentation_id", id, 1, 4094)?
            }
            (NetworkKind::Vxlan, Some(id)) => {
                validate::range("provider:segmentation_id", id, 1, 16_777_215)?
            }
            (NetworkKind::Vlan | NetworkKind::Vxlan, None) => {}
            (_, Some(id)) => {
                return Err(FieldError::new(
                    "provider:segmentation_id",
                    id,
                    "is only allowed on vlan and vxlan networks",
                ))
            }
            (_, None) => {}
        }
        if self.kind == NetworkKind::Flat && self.physical_network.is_none() {
            return Err(FieldError::new(
                "provider:physical_network",
                "nothing",
                "is required for a flat network: it names the provider network it is",
            ));
        }
        if let Some(p) = &self.physical_network {
            if matches!(self.kind, NetworkKind::Vxlan | NetworkKind::Local) {
                return Err(FieldError::new(
                    "provider:physical_network",
                    p,
                    "is only allowed on flat and vlan networks",
                ));
            }
            crate::ids::check_dns_label("provider:physical_network", p)?;
        }
        validate::range("mtu", self.mtu, 68, 9000)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// Bridge realising the network on the site's hosts.
    pub bridge: Option<String>,
    pub ready: bool,
}

pub type Network = Resource<NetworkSpec, NetworkStatus>;

/// An IPv4 or IPv6 prefix, e.g. `10.10.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(field: &str, s: &str) -> Result<Self, FieldError> {
        let bad = || {
            FieldError::new(
                field,
                s,
                "must be an address prefix such as 10.0.0.0/24 or fd00::/64",
            )
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(FieldError::new(
                field,
                s,
                format!("prefix length must be at most {max}"),
            ));
        }
        Ok(Cidr { addr, prefix })
    }
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl TryFrom<String> for Cidr {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, FieldError> {
        Cidr::parse("cidr", &s)
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        format!("{}/{}", c.addr, c.prefix)
    }
}

impl Cidr {
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }
    pub fn ip_version(&self) -> u8 {
        if self.is_ipv4() {
            4
        } else {
            6
        }
    }
    /// The first and last address of the prefix, as numbers.
    pub fn bounds(&self) -> (u128, u128) {
        let (n, bits) = match self.addr {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        };
        let host_bits = bits - u32::from(self.prefix);
        let size_mask = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        (n & !size_mask, n | size_mask)
    }
    /// Whether the prefix is given by its network address (`10.0.0.0/24`,
    /// not `10.0.0.7/24`).
    pub fn is_network_address(&self) -> bool {
        ip_number(self.addr) == self.bounds().0
    }
    pub fn overlaps(&self, other: &Cidr) -> bool {
        if self.is_ipv4() != other.is_ipv4() {
            return false;
        }
        let (a, b) = (self.bounds(), other.bounds());
        a.0 <= b.1 && b.0 <= a.1
    }
}

/// An address as a number (IPv4 in the low 32 bits).
pub fn ip_number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address of number `n` in the family of `like`.
pub fn ip_from_number(n: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(n)),
    }
}

/// An inclusive range of addresses a subnet hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationPool {
    pub start: IpAddr,
    pub end: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetSpec {
    pub name: String,
    pub project_id: String,
    pub network_id: String,
    pub cidr: Cidr,
    pub gateway_ip: Option<IpAddr>,
    pub allocation_pools: Vec<AllocationPool>,
    pub dns_nameservers: Vec<IpAddr>,
    pub enable_dhcp: bool,
    /// IPv6 only: who sends router advertisements (the site, in this
    /// mode, or, when absent, a router outside Roost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_ra_mode: Option<Ipv6Mode>,
    /// IPv6 only: how ports get their addresses. `slaac` and
    /// `dhcpv6-stateless`: from the prefix and the port's MAC (EUI-64),
    /// which is also what the site's IPAM records; `dhcpv6-stateful` or
    /// absent: from the pools, handed out by DHCPv6 when the site runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_address_mode: Option<Ipv6Mode>,
    pub deleted: bool,
}

/// Neutron's IPv6 address and router advertisement modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ipv6Mode {
    Slaac,
    #[serde(rename = "dhcpv6-stateful")]
    Dhcpv6Stateful,
    #[serde(rename = "dhcpv6-stateless")]
    Dhcpv6Stateless,
}

impl Ipv6Mode {
    pub const NAMES: &'static str = "slaac, dhcpv6-stateful or dhcpv6-stateless";

    pub fn as_str(self) -> &'static str {
        match self {
            Ipv6Mode::Slaac => "slaac",
            Ipv6Mode::Dhcpv6Stateful => "dhcpv6-stateful",
            Ipv6Mode::Dhcpv6Stateless => "dhcpv6-stateless",
        }
    }

    pub fn parse(field: &str, s: &str) -> Result<Ipv6Mode, FieldError> {
        match s {
            "slaac" => Ok(Ipv6Mode::Slaac),
            "dhcpv6-stateful" => Ok(Ipv6Mode::Dhcpv6Stateful),
            "dhcpv6-stateless" => Ok(Ipv6Mode::Dhcpv6Stateless),
            _ => Err(FieldError::new(
                field,
                s,
                format!("must be {}", Ipv6Mode::NAMES),
            )),
        }
    }
}

/// The EUI-64 address of `mac` in a /64 `prefix` (RFC 4291, appendix A):
/// what a guest's kernel configures from a router advertisement.
pub fn eui64(prefix: IpAddr, mac: &str) -> Option<IpAddr> {
    let IpAddr::V6(p) = prefix else {
        return None;
    };
    let b: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let [a, b1, c, d, e, f] = b[..] else {
        return None;
    };
    let iid = [a ^ 0x02, b1, c, 0xff, 0xfe, d, e, f];
    let mut o = p.octets();
    o[8..].copy_from_slice(&iid);
    Some(IpAddr::V6(o.into()))
}

impl SubnetSpec {
    /// Whether ports' addresses here come from their MACs.
    pub fn autoconfigured(&self) -> bool {
        matches!(
            self.ipv6_address_mode,
            Some(Ipv6Mode::Slaac | Ipv6Mode::Dhcpv6Stateless)
        )
    }
}

impl SubnetSpec {
    /// A subnet with Neutron's defaults: the gateway is the first host
    /// address and the pool the rest of the usable range.
    pub fn with_defaults(
        name: String,
        project_id: String,
        network_id: String,
        cidr: Cidr,
        gateway_ip: Option<Option<IpAddr>>,
        allocation_pools: Option<Vec<AllocationPool>>,
    ) -> SubnetSpec {
        let (first, last) = cidr.bounds();
        // IPv4 keeps the network and broadcast addresses out; IPv6 only the
        // subnet-router anycast (the first).
        let (lo, hi) = if cidr.is_ipv4() && cidr.prefix < 31 {
            (first + 1, last - 1)
        } else if cidr.is_ipv4() {
            (first, last)
        } else {
            (first + 1, last)
        };
        let gateway_ip = gateway_ip.unwrap_or((lo <= hi).then(|| ip_from_number(lo, cidr.addr)));
        let allocation_pools = allocation_pools.unwrap_or_else(|| {
            let g = gateway_ip.map(ip_number);
            let mut pools = Vec::new();
            let mut push = |a: u128, b: u128| {
                if a <= b {
                    pools.push(AllocationPool {
                        start: ip_from_number(a, cidr.addr),
                        end: ip_from_number(b, cidr.addr),
                    })
                }
            };
            match g {
                Some(g) if (lo..=hi).contains(&g) => {
                    if g > lo {
                        push(lo, g - 1);
                    }
                    if g < hi {
                        push(g + 1, hi);
                    }
                }
                _ => push(lo, hi),
            }
            pools
        });
        SubnetSpec {
            name,
            project_id,
            network_id,
            cidr,
            gateway_ip,
            allocation_pools,
            dns_nameservers: Vec::new(),
            enable_dhcp: true,
            ipv6_ra_mode: None,
            ipv6_address_mode: None,
            deleted: false,
        }
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        check_optional_name("name", &self.name)?;
        let cidr = String::from(self.cidr);
        if !self.cidr.is_network_address() {
            return Err(FieldError::new(
                "cidr",
                &cidr,
                "must be a network address (the host bits zero)",
            ));
        }
        let min = if self.cidr.is_ipv4() { 8 } else { 64 };
        let max = if self.cidr.is_ipv4() { 30 } else { 126 };
        validate::range("cidr prefix length", self.cidr.prefix, min, max)?;
        if let Some(gw) = self.gateway_ip {
            if !self.cidr.contains(gw) {
                return Err(FieldError::new(
                    "gateway_ip",
                    gw,
                    format!("must be inside {cidr}"),
                ));
            }
        }
        let mut pools: Vec<(u128, u128)> = Vec::new();
        for (i, p) in self.allocation_pools.iter().enumerate() {
            let field = format!("allocation_pools[{i}]");
            for ip in [p.start, p.end] {
                if !self.cidr.contains(ip) {
                    return Err(FieldError::new(
                        &field,
                        ip,
                        format!("must be inside {cidr}"),
                    ));
                }
            }
            let (a, b) = (ip_number(p.start), ip_number(p.end));
            if a > b {
                return Err(FieldError::new(
                    &field,
                    format!("{}-{}", p.start, p.end),
                    "start must not be after end",
                ));
            }
            if let Some(gw) = self.gateway_ip.map(ip_number) {
                if (a..=b).contains(&gw) {
                    return Err(FieldError::new(
                        &field,
                        format!("{}-{}", p.start, p.end),
                        "must not hold the gateway_ip",
                    ));
                }
            }
            if pools.iter().any(|&(c, d)| a <= d && c <= b) {
                return Err(FieldError::new(
                    &field,
                    format!("{}-{}", p.start, p.end),
                    "must not overlap another pool",
                ));
            }
            pools.push((a, b));
        }
        self.validate_ipv6_modes()?;
        for (i, d) in self.dns_nameservers.iter().enumerate() {
            if d.is_ipv4() != self.cidr.is_ipv4() && self.cidr.is_ipv4() {
                return Err(FieldError::new(
                    format!("dns_nameservers[{i}]"),
                    d,
                    "must be an IPv4 address on an IPv4 subnet",
                ));
            }
        }
        Ok(())
    }
}

impl SubnetSpec {
    /// Neutron's rules for the IPv6 modes.
    fn validate_ipv6_modes(&self) -> Result<(), FieldError> {
        let (ra, addr) = (self.ipv6_ra_mode, self.ipv6_address_mode);
        if self.cidr.is_ipv4() {
            for (field, m) in [("ipv6_ra_mode", ra), ("ipv6_address_mode", addr)] {
                if let Some(m) = m {
                    return Err(FieldError::new(
                        field,
                        m.as_str(),
                        "is for IPv6 subnets only",
                    ));
                }
            }
            return Ok(());
        }
        if let (Some(r), Some(a)) = (ra, addr) {
            if r != a {
                return Err(FieldError::new(
                    "ipv6_ra_mode",
                    r.as_str(),
                    format!(
                        "must be the same as ipv6_address_mode ({}) when both are set",
                        a.as_str()
                    ),
                ));
            }
        }
        if ra.is_some() && addr.is_none() {
            return Err(FieldError::new(
                "ipv6_address_mode",
                "null",
                "must be set when ipv6_ra_mode is (to the same mode)",
            ));
        }
        if self.autoconfigured() && self.cidr.prefix != 64 {
            return Err(FieldError::new(
                "cidr",
                String::from(self.cidr),
                "must be a /64: SLAAC addresses are a /64 prefix and the port's EUI-64",
            ));
        }
        if ra.is_some() && self.gateway_ip.is_none() {
            return Err(FieldError::new(
                "gateway_ip",
                "null",
                "must be set when ipv6_ra_mode is: the site advertises itself as the router",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetStatus {}

pub type Subnet = Resource<SubnetSpec, SubnetStatus>;

/// An address asked for on a port: a subnet, an address, or both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIpRequest {
    #[serde(default)]
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub ip_address: Option<IpAddr>,
}

/// An address a port holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixedIp {
    pub subnet_id: String,
    pub ip_address: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub name: String,
    pub project_id: String,
    pub network_id: String,
    /// Addresses asked for; the site allocates one per IP version when
    /// empty.
    pub fixed_ips: Vec<FixedIpRequest>,
    /// A MAC asked for; the site makes one when absent.
    #[serde(default)]
    pub mac_address: Option<String>,
    pub device_id: Option<String>,
    pub device_owner: Option<String>,
    /// Security groups; the project's `default` when absent.
    pub security_groups: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub admin_state_up: bool,
    pub deleted: bool,
    /// Made by a server create for that server (deleted with it), rather
    /// than made on its own and bound (unbound when the server goes).
    #[serde(default)]
    pub created_for_device: bool,
}

/// Checks a MAC address: six hex pairs, unicast.
pub fn check_mac(field: &str, mac: &str) -> Result<(), FieldError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(FieldError::new(
            field,
            mac,
            "must be a MAC address such as fa:16:3e:12:34:56",
        ));
    }
    let first = u8::from_str_radix(parts[0], 16).unwrap_or(1);
    if first & 1 == 1 {
        return Err(FieldError::new(field, mac, "must be a unicast address"));
    }
    Ok(())
}

impl PortSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        check_optional_name("name", &self.name)?;
        if let Some(m) = &self.mac_address {
            check_mac("mac_address", m)?;
        }
        for (i, f) in self.fixed_ips.iter().enumerate() {
            if f.subnet_id.is_none() && f.ip_address.is_none() {
                return Err(FieldError::new(
                    format!("fixed_ips[{i}]"),
                    "{}",
                    "must name a subnet_id, an ip_address or both",
                ));
            }
        }
        for (field, v) in [
            ("device_id", &self.device_id),
            ("device_owner", &self.device_owner),
        ] {
            if let Some(v) = v {
                if v.chars().count() > 255 || v.chars().any(char::is_control) {
                    return Err(FieldError::new(
                        field,
                        v,
                        "must be at most 255 printable characters",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    pub mac_address: String,
    /// Addresses the site allocated (site-only fact).
    pub fixed_ips: Vec<FixedIp>,
    /// Security groups the port is in (the project's default when none
    /// were asked for).
    pub security_groups: Vec<String>,
    pub tap: Option<String>,
    pub up: bool,
}

pub type Port = Resource<PortSpec, PortStatus>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupRuleSpec {
    pub security_group_id: String,
    pub project_id: String,
    pub direction: Direction,
    /// 4 or 6.
    pub ip_version: u8,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or none for any.
    pub protocol: Option<String>,
    pub port_range_min: Option<u16>,
    pub port_range_max: Option<u16>,
    pub remote_ip_prefix: Option<Cidr>,
    pub remote_group_id: Option<String>,
}

impl SecurityGroupRuleSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(p) = &self.protocol {
            if !["tcp", "udp", "icmp", "icmpv6"].contains(&p.as_str()) {
                return Err(FieldError::new(
                    "protocol",
                    p,
                    "must be tcp, udp, icmp, icmpv6 or absent (any)",
                ));
            }
        }
        let ports = self.port_range_min.is_some() || self.port_range_max.is_some();
        let tcp_udp = matches!(self.protocol.as_deref(), Some("tcp" | "udp"));
        if ports && !tcp_udp {
            return Err(FieldError::new(
                "port_range_min",
                self.port_range_min.or(self.port_range_max).unwrap_or(0),
                "port ranges need protocol tcp or udp",
            ));
        }
        if let (Some(lo), Some(hi)) = (self.port_range_min, self.port_range_max) {
            validate::range("port_range_min", lo, 1, 65535)?;
            validate::range("port_range_max", hi, lo, 65535)?;
        } else if ports {
            return Err(FieldError::new(
                "port_range_max",
                "one end only",
                "give both port_range_min and port_range_max",
            ));
        }
        if self.ip_version != 4 && self.ip_version != 6 {
            return Err(FieldError::new(
                "ethertype",
                self.ip_version,
                "must be IPv4 or IPv6",
            ));
        }
        if let Some(c) = &self.remote_ip_prefix {
            if c.ip_version() != self.ip_version {
                return Err(FieldError::new(
                    "remote_ip_prefix",
                    String::from(*c),
                    format!(
                        "must be an IPv{} prefix (the rule's ethertype)",
                        self.ip_version
                    ),
                ));
            }
            if self.remote_group_id.is_some() {
                return Err(FieldError::new(
                    "remote_group_id",
                    "both",
                    "give remote_ip_prefix or remote_group_id, not both",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupRuleStatus {}

pub type SecurityGroupRule = Resource<SecurityGroupRuleSpec, SecurityGroupRuleStatus>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupSpec {
    pub name: String,
    pub description: String,
    pub project_id: String,
    pub deleted: bool,
}

impl SecurityGroupSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        validate::name("name", &self.name)?;
        if self.description.chars().count() > 255 {
            return Err(FieldError::new(
                "description",
                &self.description,
                "must be at most 255 characters",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupStatus {
    pub enforced: bool,
}

pub type SecurityGroup = Resource<SecurityGroupSpec, SecurityGroupStatus>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("cidr", "10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("cidr", "10.1.0.0/33").is_err());
        assert!(Cidr::parse("cidr", "nonsense").is_err());
        let v6 = Cidr::parse("cidr", "fd00::/64").unwrap();
        assert!(v6.contains("fd00::1".parse().unwrap()));
    }

    #[test]
    fn vlan_range() {
        let mut n = NetworkSpec {
            name: "plant".into(),
            project_id: "p".into(),
            kind: NetworkKind::Vlan,
            segmentation_id: Some(4095),
            physical_network: None,
            admin_state_up: true,
            mtu: 1500,
            shared: false,
            deleted: false,
        };
        assert_eq!(n.validate().unwrap_err().field, "provider:segmentation_id");
        n.segmentation_id = Some(100);
        assert!(n.validate().is_ok());
    }

    fn cidr(s: &str) -> Cidr {
        Cidr::parse("cidr", s).unwrap()
    }

    /// A subnet of `c` with Neutron's defaults.
    fn subnet(c: &str) -> SubnetSpec {
        SubnetSpec::with_defaults("".into(), "p".into(), "n".into(), cidr(c), None, None)
    }

    #[test]
    fn subnet_defaults_follow_neutron() {
        let s = subnet("10.0.0.0/24");
        assert_eq!(s.gateway_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            s.allocation_pools,
            vec![AllocationPool {
                start: "10.0.0.2".parse().unwrap(),
                end: "10.0.0.254".parse().unwrap()
            }]
        );
        s.validate().unwrap();
        // A gateway in the middle splits the pool; none leaves it whole.
        let mid = SubnetSpec::with_defaults(
            "".into(),
            "p".into(),
            "n".into(),
            cidr("10.0.0.0/29"),
            Some(Some("10.0.0.4".parse().unwrap())),
            None,
        );
        assert_eq!(mid.allocation_pools.len(), 2);
        let none = SubnetSpec::with_defaults(
            "".into(),
            "p".into(),
            "n".into(),
            cidr("10.0.0.0/29"),
            Some(None),
            None,
        );
        assert_eq!(
            none.allocation_pools[0].start,
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        let v6 = subnet("fd00:1::/64");
        assert_eq!(v6.gateway_ip, Some("fd00:1::1".parse().unwrap()));
        v6.validate().unwrap();
    }

    #[test]
    fn subnet_rules_name_the_field() {
        let mut s = subnet("10.0.0.0/24");
        s.cidr = cidr("10.0.0.7/24");
        assert_eq!(s.validate().unwrap_err().field, "cidr");
        let mut s = subnet("10.0.0.0/24");
        s.allocation_pools[0].end = "10.0.1.9".parse().unwrap();
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "allocation_pools[0]: must be inside 10.0.0.0/24 (got 10.0.1.9)"
        );
        s.allocation_pools[0] = AllocationPool {
            start: "10.0.0.1".parse().unwrap(),
            end: "10.0.0.9".parse().unwrap(),
        };
        assert!(s.validate().unwrap_err().rule.contains("gateway"));
        s.gateway_ip = Some("192.168.0.1".parse().unwrap());
        assert_eq!(s.validate().unwrap_err().field, "gateway_ip");
    }

    #[test]
    fn overlap_and_bounds() {
        assert!(cidr("10.0.0.0/16").overlaps(&cidr("10.0.5.0/24")));
        assert!(!cidr("10.0.0.0/24").overlaps(&cidr("10.0.1.0/24")));
        assert!(!cidr("10.0.0.0/24").overlaps(&cidr("fd00::/64")));
        assert_eq!(cidr("10.0.0.0/30").bounds(), (0x0a00_0000, 0x0a00_0003));
    }

    #[test]
    fn rules_and_macs() {
        let mut r = SecurityGroupRuleSpec {
            security_group_id: "g".into(),
            project_id: "p".into(),
            direction: Direction::Ingress,
            ip_version: 4,
            protocol: Some("tcp".into()),
            port_range_min: Some(22),
            port_range_max: Some(22),
            remote_ip_prefix: Some(cidr("10.0.0.0/8")),
            remote_group_id: None,
        };
        r.validate().unwrap();
        r.port_range_max = Some(21);
        assert_eq!(r.validate().unwrap_err().field, "port_range_max");
        r.port_range_max = Some(22);
        r.protocol = Some("icmp".into());
        assert!(r.validate().unwrap_err().rule.contains("tcp or udp"));
        r.protocol = Some("gre".into());
        assert_eq!(r.validate().unwrap_err().field, "protocol");
        r.protocol = None;
        r.port_range_min = None;
        r.port_range_max = None;
        r.remote_ip_prefix = Some(cidr("fd00::/64"));
        assert_eq!(r.validate().unwrap_err().field, "remote_ip_prefix");
        check_mac("m", "fa:16:3e:00:00:01").unwrap();
        assert!(check_mac("m", "01:16:3e:00:00:01").is_err(), "multicast");
        assert!(check_mac("m", "fa:16:3e:00:00").is_err());
    }
}
