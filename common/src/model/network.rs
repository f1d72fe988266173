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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    pub project_id: String,
    pub kind: NetworkKind,
    /// VLAN id (1-4094) or VXLAN VNI (1-16777215).
    pub segmentation_id: Option<u32>,
    pub mtu: u32,
    pub shared: bool,
    pub deleted: bool,
}

impl NetworkSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        validate::name("name", &self.name)?;
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetSpec {
    pub name: String,
    pub project_id: String,
    pub network_id: String,
    pub cidr: Cidr,
    pub gateway_ip: Option<IpAddr>,
    pub dns_nameservers: Vec<IpAddr>,
    pub enable_dhcp: bool,
    pub deleted: bool,
}

impl SubnetSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(gw) = self.gateway_ip {
            if !self.cidr.contains(gw) {
                return Err(FieldError::new(
                    "gateway_ip",
                    gw,
                    format!("must be inside {}", String::from(self.cidr)),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetStatus {}

pub type Subnet = Resource<SubnetSpec, SubnetStatus>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub name: String,
    pub project_id: String,
    pub network_id: String,
    /// Addresses asked for; the site allocates when empty.
    pub fixed_ips: Vec<IpAddr>,
    pub device_id: Option<String>,
    pub device_owner: Option<String>,
    pub security_groups: Vec<String>,
    pub deleted: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatus {
    pub mac_address: Option<String>,
    /// Addresses the site allocated (site-only fact).
    pub fixed_ips: Vec<IpAddr>,
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
pub struct SecurityGroupRule {
    pub id: String,
    pub direction: Direction,
    /// `tcp`, `udp`, `icmp` or none for any.
    pub protocol: Option<String>,
    pub port_range_min: Option<u16>,
    pub port_range_max: Option<u16>,
    pub remote_ip_prefix: Option<Cidr>,
    pub remote_group_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityGroupSpec {
    pub name: String,
    pub project_id: String,
    pub rules: Vec<SecurityGroupRule>,
    pub deleted: bool,
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
            mtu: 1500,
            shared: false,
            deleted: false,
        };
        assert_eq!(n.validate().unwrap_err().field, "provider:segmentation_id");
        n.segmentation_id = Some(100);
        assert!(n.validate().is_ok());
    }
}
