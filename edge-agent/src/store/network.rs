//! Networks, subnets, ports and security groups, and the site's IPAM.
//!
//! IPAM is the site's alone: an address is a row of `ip_allocations`
//! (primary key: subnet and address) written in the same transaction as
//! its port, by the one writer, so two ports can never hold one address,
//! and deleting a port releases its addresses with it (`ON DELETE
//! CASCADE`). On `slaac` and `dhcpv6-stateless` subnets a port's address
//! is its MAC's EUI-64; creating or deleting such a subnet adds or removes
//! it for the ports already on the network. These resources are the site's own for now: they are not in
//! the documents the site syncs with its region.

use std::collections::BTreeSet;
use std::net::IpAddr;

use rusqlite::{params, Connection, OptionalExtension};

use roost_common::model::{
    ip_from_number, ip_number, Direction, FixedIp, FixedIpRequest, Network, NetworkKind,
    NetworkSpec, NicRequest, Port, PortSpec, Resource, SecurityGroup, SecurityGroupRule,
    SecurityGroupRuleSpec, SecurityGroupSpec, Subnet, SubnetSpec,
};
use roost_common::FieldError;

use super::rows::{self, json, time};
use super::{StoreError, WriteCtx, WriteError};

/// VXLAN VNIs and VLAN ids the site picks from when a network asks for none.
const VNI_FIRST: u32 = 1000;
const VLAN_FIRST: u32 = 100;
/// The OUI Neutron gives ports (`base_mac`).
const MAC_PREFIX: &str = "fa:16:3e";
/// `device_owner` of a server's ports, as Nova sets it.
pub const COMPUTE_OWNER: &str = "compute:nova";

/// Who may see what: `None` is an admin (everything).
pub type Scope = Option<String>;

fn visible(scope: &Scope, project_id: &str, shared: bool) -> bool {
    scope.as_deref().is_none_or(|p| p == project_id) || shared
}

impl WriteCtx<'_> {
    /// Creates a network, picking a free segment when none was asked for.
    pub fn create_network(&mut self, mut spec: NetworkSpec) -> Result<Network, WriteError> {
        let physnet = spec.physical_network.clone().unwrap_or_default();
        let (first, last) = match spec.kind {
            NetworkKind::Vxlan => (VNI_FIRST, 16_777_215),
            NetworkKind::Vlan => (VLAN_FIRST, 4094),
            _ => (0, 0),
        };
        let used: BTreeSet<u32> = {
            let mut stmt = self.tx.prepare_cached(
                "SELECT segmentation_id FROM networks WHERE kind = ?1 AND physnet = ?2 AND segmentation_id IS NOT NULL",
            )?;
            let ids = stmt.query_map(params![spec.kind.as_str(), physnet], |r| r.get(0))?;
            ids.collect::<Result<_, _>>()?
        };
        if matches!(spec.kind, NetworkKind::Flat | NetworkKind::Vlan) {
            // A flat network is the provider interface's untagged traffic:
            // one per physnet, and none beside VLAN networks there (a
            // guest on it could send tagged frames into their VLANs, which
            // the security groups do not see).
            let clash: Option<(String, String)> = self
                .tx
                .query_row(
                    "SELECT id, kind FROM networks WHERE physnet = ?1
                     AND (kind = 'flat' OR ?2 = 'flat') AND kind IN ('flat', 'vlan') LIMIT 1",
                    params![physnet, spec.kind.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((other, kind)) = clash {
                return Err(WriteError::Conflict(format!(
                    "Unable to create the {} network. Physical network {physnet} is in use (by {kind} network {other}); a flat network has its physical network to itself.",
                    spec.kind.as_str()
                )));
            }
        }
        match spec.segmentation_id {
            Some(id) if used.contains(&id) => {
                return Err(WriteError::Conflict(format!(
                    "Unable to create the network. The {} segment {id}{} is in use.",
                    spec.kind.as_str(),
                    if physnet.is_empty() {
                        String::new()
                    } else {
                        format!(" on physical network {physnet}")
                    }
                )))
            }
            None if last > 0 => {
                let free = (first..=last).find(|i| !used.contains(i)).ok_or_else(|| {
                    WriteError::Conflict(format!(
                        "Unable to create the network. No {} segment is free.",
                        spec.kind.as_str()
                    ))
                })?;
                spec.segmentation_id = Some(free);
            }
            _ => {}
        }
        let n: Network = Resource::new(spec, self.now);
        self.tx.execute(
            "INSERT INTO networks (id, project_id, kind, physnet, segmentation_id, shared, spec, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
            params![
                n.id,
                n.spec.project_id,
                n.spec.kind.as_str(),
                physnet,
                n.spec.segmentation_id,
                n.spec.shared,
                json(&n.spec)?,
                json(&n.status)?,
                time(&self.now)
            ],
        )?;
        Ok(n)
    }

    /// Deletes a network and its subnets; refused while it has ports.
    pub fn delete_network(&mut self, id: &str, scope: &Scope) -> Result<(), WriteError> {
        let n = network_in(self.tx, id, scope)?;
        let ports: i64 = self.tx.query_row(
            "SELECT COUNT(*) FROM ports WHERE network_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        if ports > 0 {
            return Err(WriteError::Conflict(format!(
                "Unable to complete operation on network {}. There are one or more ports still in use on the network ({ports}).",
                n.id
            )));
        }
        self.tx
            .execute("DELETE FROM subnets WHERE network_id = ?1", [id])?;
        self.tx
            .execute("DELETE FROM networks WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Creates a subnet on a network the caller may use; refused if it
    /// overlaps another subnet of that network.
    pub fn create_subnet(&mut self, spec: SubnetSpec, scope: &Scope) -> Result<Subnet, WriteError> {
        let n = network_in(self.tx, &spec.network_id, scope).map_err(|_| {
            FieldError::new(
                "subnet.network_id",
                &spec.network_id,
                "must be the id of a network you can use",
            )
        })?;
        if scope.as_deref().is_some_and(|p| p != n.spec.project_id) {
            return Err(WriteError::Conflict(format!(
                "Network {} is shared, but only its owner may add subnets to it.",
                n.id
            )));
        }
        // dnsmasq advertises all of a network's stateful DHCPv6 ranges or
        // none of them (`enable-ra` is per server).
        let stateful_v6 = |s: &SubnetSpec| {
            !s.cidr.is_ipv4()
                && s.enable_dhcp
                && matches!(
                    s.ipv6_address_mode,
                    None | Some(roost_common::model::Ipv6Mode::Dhcpv6Stateful)
                )
        };
        for other in subnets_of(self.tx, &n.id)? {
            if stateful_v6(&spec)
                && stateful_v6(&other.spec)
                && spec.ipv6_ra_mode.is_some() != other.spec.ipv6_ra_mode.is_some()
            {
                return Err(FieldError::new(
                    "subnet.ipv6_ra_mode",
                    spec.ipv6_ra_mode.map(|m| m.as_str()).unwrap_or("null"),
                    format!(
                        "must be set or not as on subnet {}: a network's stateful DHCPv6 subnets are all advertised by the site or none",
                        other.id
                    ),
                )
                .into());
            }
            if other.spec.cidr.overlaps(&spec.cidr) {
                return Err(FieldError::new(
                    "subnet.cidr",
                    String::from(spec.cidr),
                    format!(
                        "must not overlap another subnet of network {} ({} is {})",
                        n.id,
                        other.id,
                        String::from(other.spec.cidr)
                    ),
                )
                .into());
            }
        }
        let s: Subnet = Resource::new(spec, self.now);
        self.tx.execute(
            "INSERT INTO subnets (id, network_id, project_id, spec, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                s.id,
                s.spec.network_id,
                s.spec.project_id,
                json(&s.spec)?,
                json(&s.status)?,
                time(&self.now)
            ],
        )?;
        if s.spec.autoconfigured() {
            // As Neutron: the ports already on the network get their
            // address here too (their guests take it from the prefix).
            for mut p in self.live_ports(&n.id)? {
                let ip = address_for(
                    self.tx,
                    &s,
                    &n.id,
                    &p.status.fixed_ips,
                    &p.status.mac_address,
                )?;
                self.tx.execute(
                    "INSERT INTO ip_allocations (subnet_id, ip, port_id) VALUES (?1, ?2, ?3)",
                    params![s.id, ip.to_string(), p.id],
                )?;
                p.status.fixed_ips.push(FixedIp {
                    subnet_id: s.id.clone(),
                    ip_address: ip,
                });
                self.save_port_status(&p)?;
            }
        }
        Ok(s)
    }

    /// The network's ports, but those being deleted.
    fn live_ports(&self, network_id: &str) -> Result<Vec<Port>, StoreError> {
        let ports: Vec<Port> = rows::list(self.tx, "ports", "network_id = ?1", [network_id])?;
        Ok(ports.into_iter().filter(|p| !p.spec.deleted).collect())
    }

    fn save_port_status(&self, p: &Port) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE ports SET status = ?2, updated_at = ?3 WHERE id = ?1",
            params![p.id, json(&p.status)?, time(&self.now)],
        )?;
        Ok(())
    }

    /// Deletes a subnet; refused while a port holds an address from it
    /// (but on a SLAAC subnet, whose addresses are the ports' own, they
    /// go with it, as in Neutron).
    pub fn delete_subnet(&mut self, id: &str, scope: &Scope) -> Result<(), WriteError> {
        let s: Subnet = rows::get(self.tx, "subnets", id)?
            .filter(|s: &Subnet| visible(scope, &s.spec.project_id, false))
            .ok_or_else(|| WriteError::NotFound(format!("Subnet {id} could not be found.")))?;
        if s.spec.autoconfigured() {
            for mut p in self.live_ports(&s.spec.network_id)? {
                let before = p.status.fixed_ips.len();
                p.status.fixed_ips.retain(|f| f.subnet_id != s.id);
                if p.status.fixed_ips.len() != before {
                    self.save_port_status(&p)?;
                }
            }
            self.tx
                .execute("DELETE FROM ip_allocations WHERE subnet_id = ?1", [id])?;
        }
        let held: i64 = self.tx.query_row(
            "SELECT COUNT(*) FROM ip_allocations WHERE subnet_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        if held > 0 {
            return Err(WriteError::Conflict(format!(
                "Unable to complete operation on subnet {}: One or more ports have an IP allocation from this subnet ({held}).",
                s.id
            )));
        }
        self.tx.execute("DELETE FROM subnets WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Creates a port with its MAC and addresses, in one step: the
    /// addresses are allocated in this transaction.
    pub fn create_port(&mut self, spec: PortSpec, scope: &Scope) -> Result<Port, WriteError> {
        let n = network_in(self.tx, &spec.network_id, scope).map_err(|_| {
            FieldError::new(
                "port.network_id",
                &spec.network_id,
                "must be the id of a network you can use",
            )
        })?;
        let mac = match &spec.mac_address {
            Some(m) => {
                if mac_taken(self.tx, m)? {
                    return Err(WriteError::Conflict(format!(
                        "Unable to complete operation for network {}. The mac address {m} is in use.",
                        n.id
                    )));
                }
                m.clone()
            }
            None => loop {
                let b: [u8; 3] = rand::random();
                let m = format!("{MAC_PREFIX}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2]);
                if !mac_taken(self.tx, &m)? {
                    break m;
                }
            },
        };
        let groups = match &spec.security_groups {
            Some(ids) => groups_of(self.tx, ids, &spec.project_id)?,
            None => vec![self.ensure_default_group(&spec.project_id)?],
        };
        let mut groups = groups;
        groups.sort();
        groups.dedup();
        let subnets = subnets_of(self.tx, &n.id)?;
        let mut fixed: Vec<FixedIp> = Vec::new();
        if spec.fixed_ips.is_empty() {
            // One address per IP version, from the first subnet of each
            // that hands addresses out (SLAAC ones come below).
            let mut seen = BTreeSet::new();
            for s in subnets.iter().filter(|s| !s.spec.autoconfigured()) {
                if seen.insert(s.spec.cidr.ip_version()) {
                    fixed.push(FixedIp {
                        subnet_id: s.id.clone(),
                        ip_address: address_for(self.tx, s, &n.id, &fixed, &mac)?,
                    });
                }
            }
        } else {
            for (i, want) in spec.fixed_ips.iter().enumerate() {
                let field = format!("port.fixed_ips[{i}]");
                let subnet = match (&want.subnet_id, want.ip_address) {
                    (Some(sid), ip) => {
                        let s = subnets.iter().find(|s| &s.id == sid).ok_or_else(|| {
                            FieldError::new(
                                format!("{field}.subnet_id"),
                                sid,
                                format!("must be a subnet of network {}", n.id),
                            )
                        })?;
                        if let Some(ip) = ip.filter(|ip| !s.spec.cidr.contains(*ip)) {
                            return Err(FieldError::new(
                                format!("{field}.ip_address"),
                                ip,
                                format!(
                                    "must be inside the subnet's cidr {}",
                                    String::from(s.spec.cidr)
                                ),
                            )
                            .into());
                        }
                        s
                    }
                    (None, Some(ip)) => subnets
                        .iter()
                        .find(|s| s.spec.cidr.contains(ip))
                        .ok_or_else(|| {
                            FieldError::new(
                                format!("{field}.ip_address"),
                                ip,
                                format!("must be inside a subnet of network {}", n.id),
                            )
                        })?,
                    (None, None) => {
                        unreachable!("PortSpec::validate refuses an empty fixed_ips entry")
                    }
                };
                let ip = match want.ip_address {
                    Some(ip) if subnet.spec.autoconfigured() => {
                        return Err(FieldError::new(
                            format!("{field}.ip_address"),
                            ip,
                            format!(
                                "must be absent on subnet {}: its addresses come from the port's MAC (ipv6_address_mode {})",
                                subnet.id,
                                subnet.spec.ipv6_address_mode.map(|m| m.as_str()).unwrap_or_default()
                            ),
                        )
                        .into());
                    }
                    Some(ip) => {
                        let (first, last) = subnet.spec.cidr.bounds();
                        if subnet.spec.cidr.is_ipv4()
                            && subnet.spec.cidr.prefix < 31
                            && [first, last].contains(&ip_number(ip))
                        {
                            return Err(FieldError::new(
                                format!("{field}.ip_address"),
                                ip,
                                "must not be the subnet's network or broadcast address",
                            )
                            .into());
                        }
                        let again = fixed
                            .iter()
                            .any(|f| f.subnet_id == subnet.id && f.ip_address == ip);
                        if again
                            || subnet.spec.gateway_ip == Some(ip)
                            || address_taken(self.tx, &subnet.id, ip)?
                        {
                            return Err(WriteError::Conflict(format!(
                                "Unable to complete operation for network {}. The IP address {ip} is in use.",
                                n.id
                            )));
                        }
                        ip
                    }
                    None => address_for(self.tx, subnet, &n.id, &fixed, &mac)?,
                };
                fixed.push(FixedIp {
                    subnet_id: subnet.id.clone(),
                    ip_address: ip,
                });
            }
        }
        // As Neutron: a port holds its EUI-64 on every SLAAC subnet of its
        // network, asked for or not (its guest configures it anyway).
        for s in subnets.iter().filter(|s| s.spec.autoconfigured()) {
            if !fixed.iter().any(|f| f.subnet_id == s.id) {
                fixed.push(FixedIp {
                    subnet_id: s.id.clone(),
                    ip_address: address_for(self.tx, s, &n.id, &fixed, &mac)?,
                });
            }
        }
        let mut p: Port = Resource::new(spec, self.now);
        p.status.mac_address = mac;
        p.status.fixed_ips = fixed;
        p.status.security_groups = groups;
        self.tx.execute(
            "INSERT INTO ports (id, network_id, project_id, device_id, mac, spec, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                p.id,
                p.spec.network_id,
                p.spec.project_id,
                p.spec.device_id,
                p.status.mac_address,
                json(&p.spec)?,
                json(&p.status)?,
                time(&self.now)
            ],
        )?;
        for f in &p.status.fixed_ips {
            self.tx.execute(
                "INSERT INTO ip_allocations (subnet_id, ip, port_id) VALUES (?1, ?2, ?3)",
                params![f.subnet_id, f.ip_address.to_string(), p.id],
            )?;
        }
        for g in &p.status.security_groups {
            self.tx.execute(
                "INSERT INTO port_security_groups (port_id, group_id) VALUES (?1, ?2)",
                params![p.id, g],
            )?;
        }
        Ok(p)
    }

    /// Changes what Neutron lets a port change here: its name, whether it
    /// is up, its security groups (an empty list leaves it in none: only
    /// DHCP and neighbour discovery pass).
    pub fn update_port(
        &mut self,
        id: &str,
        change: roost_common::api::PortUpdate,
        scope: &Scope,
    ) -> Result<Port, WriteError> {
        let mut p: Port =
            rows::get::<PortSpec, roost_common::model::PortStatus>(self.tx, "ports", id)?
                .filter(|p: &Port| !p.spec.deleted && visible(scope, &p.spec.project_id, false))
                .ok_or_else(|| WriteError::NotFound(format!("Port {id} could not be found.")))?;
        if let Some(name) = change.name {
            p.spec.name = name;
        }
        if let Some(up) = change.admin_state_up {
            p.spec.admin_state_up = up;
        }
        if let Some(ids) = change.security_groups {
            let groups = groups_of(self.tx, &ids, &p.spec.project_id)?;
            self.tx
                .execute("DELETE FROM port_security_groups WHERE port_id = ?1", [id])?;
            for g in &groups {
                self.tx.execute(
                    "INSERT INTO port_security_groups (port_id, group_id) VALUES (?1, ?2)",
                    params![id, g],
                )?;
            }
            p.spec.security_groups = Some(ids);
            p.status.security_groups = groups;
        }
        p.spec.validate().map_err(|e| e.at("port"))?;
        p.updated_at = self.now;
        self.tx.execute(
            "UPDATE ports SET spec = ?2, status = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, json(&p.spec)?, json(&p.status)?, time(&self.now)],
        )?;
        Ok(p)
    }

    /// Makes or binds a port for each NIC a new server asked for, in the
    /// server's transaction: a NIC that cannot be had fails the create.
    pub fn attach_nics(
        &mut self,
        server_id: &str,
        project_id: &str,
        nics: &[NicRequest],
    ) -> Result<(), WriteError> {
        let scope: Scope = Some(project_id.to_string());
        for (i, nic) in nics.iter().enumerate() {
            let at = |e: WriteError| match e {
                WriteError::Invalid(mut f) => {
                    let field = f.field.trim_start_matches("port.");
                    let field = match field {
                        "network_id" => "uuid".to_string(),
                        f if f.starts_with("fixed_ips") => "fixed_ip".to_string(),
                        f => f.to_string(),
                    };
                    f.field = format!("server.networks[{i}].{field}");
                    WriteError::Invalid(f)
                }
                e => e,
            };
            match nic {
                NicRequest::Network { id, fixed_ip } => {
                    let spec = PortSpec {
                        name: String::new(),
                        project_id: project_id.to_string(),
                        network_id: id.clone(),
                        fixed_ips: fixed_ip
                            .iter()
                            .map(|ip| FixedIpRequest {
                                subnet_id: None,
                                ip_address: Some(*ip),
                            })
                            .collect(),
                        mac_address: None,
                        device_id: Some(server_id.to_string()),
                        device_owner: Some(COMPUTE_OWNER.to_string()),
                        security_groups: None,
                        admin_state_up: true,
                        deleted: false,
                        created_for_device: true,
                    };
                    self.create_port(spec, &scope).map_err(at)?;
                }
                NicRequest::Port { id } => {
                    let mut p = read::port(self.tx, id, &scope).map_err(|_| {
                        FieldError::new(
                            format!("server.networks[{i}].port"),
                            id,
                            "must be the id of a port of your project",
                        )
                    })?;
                    if let Some(d) = &p.spec.device_id {
                        return Err(WriteError::Conflict(format!(
                            "Port {id} is still in use (bound to {d})."
                        )));
                    }
                    p.spec.device_id = Some(server_id.to_string());
                    p.spec.device_owner = Some(COMPUTE_OWNER.to_string());
                    self.tx.execute(
                        "UPDATE ports SET device_id = ?2, spec = ?3, updated_at = ?4 WHERE id = ?1",
                        params![id, server_id, json(&p.spec)?, time(&self.now)],
                    )?;
                }
            }
        }
        Ok(())
    }

    /// When a server goes: the ports made for it go (their addresses
    /// free), ports it was given are unbound.
    pub fn detach_nics(&mut self, server_id: &str) -> Result<(), WriteError> {
        let ports = read::ports(self.tx, &None, None, Some(server_id))?;
        for mut p in ports {
            if p.spec.created_for_device {
                self.tx
                    .execute("DELETE FROM ports WHERE id = ?1", [&p.id])?;
            } else {
                p.spec.device_id = None;
                p.spec.device_owner = None;
                self.tx.execute(
                    "UPDATE ports SET device_id = NULL, spec = ?2, updated_at = ?3 WHERE id = ?1",
                    params![p.id, json(&p.spec)?, time(&self.now)],
                )?;
            }
        }
        Ok(())
    }

    /// Deletes a port; its addresses are free again in the same commit.
    pub fn delete_port(&mut self, id: &str, scope: &Scope) -> Result<(), WriteError> {
        let n = match scope {
            Some(p) => self.tx.execute(
                "DELETE FROM ports WHERE id = ?1 AND project_id = ?2",
                [id, p],
            )?,
            None => self.tx.execute("DELETE FROM ports WHERE id = ?1", [id])?,
        };
        if n == 0 {
            return Err(WriteError::NotFound(format!(
                "Port {id} could not be found."
            )));
        }
        Ok(())
    }

    /// The project's `default` security group, made on first use as
    /// Neutron makes it: egress to anywhere, ingress only from members.
    pub fn ensure_default_group(&mut self, project_id: &str) -> Result<String, WriteError> {
        let found: Option<String> = self
            .tx
            .query_row(
                "SELECT id FROM security_groups WHERE project_id = ?1 AND name = 'default'",
                [project_id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = found {
            return Ok(id);
        }
        let g = self.insert_group(SecurityGroupSpec {
            name: "default".into(),
            description: "Default security group".into(),
            project_id: project_id.into(),
            deleted: false,
        })?;
        for (direction, ip_version, remote) in [
            (Direction::Egress, 4, None),
            (Direction::Egress, 6, None),
            (Direction::Ingress, 4, Some(g.id.clone())),
            (Direction::Ingress, 6, Some(g.id.clone())),
        ] {
            self.insert_rule(SecurityGroupRuleSpec {
                security_group_id: g.id.clone(),
                project_id: project_id.into(),
                direction,
                ip_version,
                protocol: None,
                port_range_min: None,
                port_range_max: None,
                remote_ip_prefix: None,
                remote_group_id: remote,
            })?;
        }
        Ok(g.id)
    }

    pub fn create_security_group(
        &mut self,
        spec: SecurityGroupSpec,
    ) -> Result<SecurityGroup, WriteError> {
        if spec.name == "default" {
            self.ensure_default_group(&spec.project_id)?;
            return Err(WriteError::Conflict(
                "Default security group already exists.".into(),
            ));
        }
        let g = self.insert_group(spec)?;
        // Neutron's new groups allow all egress.
        for ip_version in [4, 6] {
            self.insert_rule(SecurityGroupRuleSpec {
                security_group_id: g.id.clone(),
                project_id: g.spec.project_id.clone(),
                direction: Direction::Egress,
                ip_version,
                protocol: None,
                port_range_min: None,
                port_range_max: None,
                remote_ip_prefix: None,
                remote_group_id: None,
            })?;
        }
        Ok(g)
    }

    fn insert_group(&mut self, spec: SecurityGroupSpec) -> Result<SecurityGroup, WriteError> {
        let g: SecurityGroup = Resource::new(spec, self.now);
        self.tx.execute(
            "INSERT INTO security_groups (id, project_id, name, spec, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
            params![
                g.id,
                g.spec.project_id,
                g.spec.name,
                json(&g.spec)?,
                json(&g.status)?,
                time(&self.now)
            ],
        )?;
        Ok(g)
    }

    /// Deletes a group; refused for `default` and while a port is in it.
    pub fn delete_security_group(&mut self, id: &str, scope: &Scope) -> Result<(), WriteError> {
        let g = group_in(self.tx, id, scope)?;
        if g.spec.name == "default" {
            return Err(WriteError::Conflict(
                "Removing default security group not allowed.".into(),
            ));
        }
        let members: i64 = self.tx.query_row(
            "SELECT COUNT(*) FROM port_security_groups WHERE group_id = ?1",
            [id],
            |r| r.get(0),
        )?;
        if members > 0 {
            return Err(WriteError::Conflict(format!(
                "Security Group {id} in use ({members} ports)."
            )));
        }
        self.tx
            .execute("DELETE FROM security_groups WHERE id = ?1", [id])?;
        Ok(())
    }

    pub fn create_security_group_rule(
        &mut self,
        spec: SecurityGroupRuleSpec,
        scope: &Scope,
    ) -> Result<SecurityGroupRule, WriteError> {
        let g = group_in(self.tx, &spec.security_group_id, scope).map_err(|_| {
            FieldError::new(
                "security_group_rule.security_group_id",
                &spec.security_group_id,
                "must be the id of a security group of yours",
            )
        })?;
        if let Some(r) = &spec.remote_group_id {
            group_in(self.tx, r, scope).map_err(|_| {
                FieldError::new(
                    "security_group_rule.remote_group_id",
                    r,
                    "must be the id of a security group of yours",
                )
            })?;
        }
        let same = rules_of(self.tx, &g.id)?
            .into_iter()
            .find(|r| r.spec == spec);
        if let Some(r) = same {
            return Err(WriteError::Conflict(format!(
                "Security group rule already exists. Rule id is {}.",
                r.id
            )));
        }
        self.insert_rule(spec)
    }

    fn insert_rule(
        &mut self,
        spec: SecurityGroupRuleSpec,
    ) -> Result<SecurityGroupRule, WriteError> {
        let r: SecurityGroupRule = Resource::new(spec, self.now);
        self.tx.execute(
            "INSERT INTO security_group_rules (id, group_id, spec, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![
                r.id,
                r.spec.security_group_id,
                json(&r.spec)?,
                json(&r.status)?,
                time(&self.now)
            ],
        )?;
        Ok(r)
    }

    pub fn delete_security_group_rule(
        &mut self,
        id: &str,
        scope: &Scope,
    ) -> Result<(), WriteError> {
        let r: Option<SecurityGroupRule> = rows::get(self.tx, "security_group_rules", id)?;
        match r {
            Some(r) if visible(scope, &r.spec.project_id, false) => {
                self.tx
                    .execute("DELETE FROM security_group_rules WHERE id = ?1", [id])?;
                Ok(())
            }
            _ => Err(WriteError::NotFound(format!(
                "Security group rule {id} does not exist"
            ))),
        }
    }
}

fn network_in(c: &Connection, id: &str, scope: &Scope) -> Result<Network, WriteError> {
    rows::get::<NetworkSpec, _>(c, "networks", id)?
        .filter(|n: &Network| visible(scope, &n.spec.project_id, n.spec.shared))
        .ok_or_else(|| WriteError::NotFound(format!("Network {id} could not be found.")))
}

/// A port's security groups as asked (each once, in order), each checked
/// to be a group of the port's project.
fn groups_of(c: &Connection, ids: &[String], project: &str) -> Result<Vec<String>, WriteError> {
    let mut out: Vec<String> = Vec::new();
    for (i, g) in ids.iter().enumerate() {
        let ok = rows::get::<SecurityGroupSpec, roost_common::model::SecurityGroupStatus>(
            c,
            "security_groups",
            g,
        )?
        .is_some_and(|sg| sg.spec.project_id == project);
        if !ok {
            return Err(FieldError::new(
                format!("port.security_groups[{i}]"),
                g,
                "must be the id of a security group of the port's project",
            )
            .into());
        }
        if !out.contains(g) {
            out.push(g.clone());
        }
    }
    Ok(out)
}

fn group_in(c: &Connection, id: &str, scope: &Scope) -> Result<SecurityGroup, WriteError> {
    rows::get::<SecurityGroupSpec, _>(c, "security_groups", id)?
        .filter(|g: &SecurityGroup| visible(scope, &g.spec.project_id, false))
        .ok_or_else(|| WriteError::NotFound(format!("Security group {id} does not exist")))
}

fn subnets_of(c: &Connection, network_id: &str) -> Result<Vec<Subnet>, StoreError> {
    rows::list(c, "subnets", "network_id = ?1", [network_id])
}

fn rules_of(c: &Connection, group_id: &str) -> Result<Vec<SecurityGroupRule>, StoreError> {
    rows::list(c, "security_group_rules", "group_id = ?1", [group_id])
}

fn mac_taken(c: &Connection, mac: &str) -> Result<bool, StoreError> {
    Ok(
        c.query_row("SELECT 1 FROM ports WHERE mac = ?1", [mac], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

fn address_taken(c: &Connection, subnet_id: &str, ip: IpAddr) -> Result<bool, StoreError> {
    Ok(c.query_row(
        "SELECT 1 FROM ip_allocations WHERE subnet_id = ?1 AND ip = ?2",
        params![subnet_id, ip.to_string()],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// A new port's address on `s`: its MAC's EUI-64 on a subnet whose
/// guests configure themselves (SLAAC), else the lowest free one.
fn address_for(
    c: &Connection,
    s: &Subnet,
    network_id: &str,
    chosen: &[FixedIp],
    mac: &str,
) -> Result<IpAddr, WriteError> {
    if !s.spec.autoconfigured() {
        return allocate(c, s, network_id, chosen);
    }
    let ip = roost_common::model::eui64(s.spec.cidr.addr, mac)
        .ok_or_else(|| StoreError::Corrupt(format!("port MAC {mac:?} is not a MAC")))?;
    if chosen.iter().any(|f| f.subnet_id == s.id) {
        return Err(FieldError::new(
            "port.fixed_ips",
            &s.id,
            "must name a SLAAC subnet once: a port has one address there, its MAC's",
        )
        .into());
    }
    if address_taken(c, &s.id, ip)? {
        return Err(WriteError::Conflict(format!(
            "Unable to complete operation for network {network_id}. The IP address {ip} is in use."
        )));
    }
    Ok(ip)
}

/// The lowest free address of the subnet's pools (never the gateway, nor
/// one `chosen` already for the same port).
fn allocate(
    c: &Connection,
    s: &Subnet,
    network_id: &str,
    chosen: &[FixedIp],
) -> Result<IpAddr, WriteError> {
    let taken: BTreeSet<u128> = {
        let mut stmt = c.prepare_cached("SELECT ip FROM ip_allocations WHERE subnet_id = ?1")?;
        let ips = stmt.query_map([&s.id], |r| r.get::<_, String>(0))?;
        let mut set = BTreeSet::new();
        for ip in ips {
            let ip = ip?;
            let ip: IpAddr = ip
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("allocation {ip:?}: {e}")))?;
            set.insert(ip_number(ip));
        }
        set.extend(
            chosen
                .iter()
                .filter(|f| f.subnet_id == s.id)
                .map(|f| ip_number(f.ip_address)),
        );
        set
    };
    let gateway = s.spec.gateway_ip.map(ip_number);
    for pool in &s.spec.allocation_pools {
        let (lo, hi) = (ip_number(pool.start), ip_number(pool.end));
        // Walk only past taken addresses: O(allocations), whatever the pool.
        let mut n = lo;
        while n <= hi {
            if !taken.contains(&n) && Some(n) != gateway {
                return Ok(ip_from_number(n, s.spec.cidr.addr));
            }
            n += 1;
        }
    }
    Err(WriteError::Conflict(format!(
        "No more IP addresses available on network {network_id} (subnet {} is full).",
        s.id
    )))
}

/// Reads for the API.
pub mod read {
    use super::*;

    fn scoped(scope: &Scope, extra: &str) -> String {
        let own = if scope.is_some() {
            "(project_id = ?1 OR shared = 1)"
        } else {
            "(?1 IS NULL)"
        };
        format!("{own}{extra}")
    }

    pub fn networks(c: &Connection, scope: &Scope) -> Result<Vec<Network>, WriteError> {
        Ok(rows::list(c, "networks", &scoped(scope, ""), [scope])?)
    }

    pub fn network(c: &Connection, id: &str, scope: &Scope) -> Result<Network, WriteError> {
        network_in(c, id, scope)
    }

    pub fn subnets(
        c: &Connection,
        scope: &Scope,
        network_id: Option<&str>,
    ) -> Result<Vec<Subnet>, WriteError> {
        let visible_nets = "network_id IN (SELECT id FROM networks WHERE project_id = ?1 OR shared = 1 OR ?1 IS NULL)";
        let sql = match network_id {
            Some(_) => format!("{visible_nets} AND network_id = ?2"),
            None => format!("{visible_nets} AND ?2 IS NULL"),
        };
        Ok(rows::list(c, "subnets", &sql, params![scope, network_id])?)
    }

    pub fn subnet(c: &Connection, id: &str, scope: &Scope) -> Result<Subnet, WriteError> {
        subnets(c, scope, None)?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| WriteError::NotFound(format!("Subnet {id} could not be found.")))
    }

    pub fn ports(
        c: &Connection,
        scope: &Scope,
        network_id: Option<&str>,
        device_id: Option<&str>,
    ) -> Result<Vec<Port>, WriteError> {
        Ok(rows::list(
            c,
            "ports",
            "(project_id = ?1 OR ?1 IS NULL) AND (network_id = ?2 OR ?2 IS NULL) AND (device_id = ?3 OR ?3 IS NULL)",
            params![scope, network_id, device_id],
        )?)
    }

    pub fn port(c: &Connection, id: &str, scope: &Scope) -> Result<Port, WriteError> {
        let p: Option<Port> = rows::get(c, "ports", id)?;
        p.filter(|p| visible(scope, &p.spec.project_id, false))
            .ok_or_else(|| WriteError::NotFound(format!("Port {id} could not be found.")))
    }

    pub fn security_groups(
        c: &Connection,
        scope: &Scope,
    ) -> Result<Vec<(SecurityGroup, Vec<SecurityGroupRule>)>, WriteError> {
        let groups: Vec<SecurityGroup> = rows::list(
            c,
            "security_groups",
            "project_id = ?1 OR ?1 IS NULL",
            [scope],
        )?;
        groups
            .into_iter()
            .map(|g| {
                let rules = rules_of(c, &g.id)?;
                Ok((g, rules))
            })
            .collect()
    }

    pub fn security_group(
        c: &Connection,
        id: &str,
        scope: &Scope,
    ) -> Result<(SecurityGroup, Vec<SecurityGroupRule>), WriteError> {
        let g = group_in(c, id, scope)?;
        let rules = rules_of(c, &g.id)?;
        Ok((g, rules))
    }

    pub fn security_group_rules(
        c: &Connection,
        scope: &Scope,
    ) -> Result<Vec<SecurityGroupRule>, WriteError> {
        Ok(rows::list(
            c,
            "security_group_rules",
            "group_id IN (SELECT id FROM security_groups WHERE project_id = ?1 OR ?1 IS NULL)",
            [scope],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use roost_common::api::{NetworkCreateBody, PortCreateBody, SubnetCreateBody};
    use roost_common::config::{self, SiteConfig};

    use super::*;
    use crate::store::Store;

    const SITE: &str = "site: {id: net-test, name: Net test}\nhosts:\n  - {name: c0, roles: [compute], vcpus: 4, ram_mb: 8192, disk_gb: 100}\n";
    const ADMIN: Scope = None;

    fn open(dir: &Path) -> Store {
        let cfg: SiteConfig = config::parse(Path::new("site.yaml"), SITE).unwrap();
        Store::open(dir, "net-test", &cfg).unwrap().0
    }

    fn body<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    async fn network(store: &Store, v: serde_json::Value) -> Result<Network, WriteError> {
        let spec = body::<NetworkCreateBody>(serde_json::json!({ "network": v }))
            .network
            .into_spec("p")?;
        store.write(move |w| w.create_network(spec)).await
    }

    async fn subnet(
        store: &Store,
        net: &str,
        cidr: &str,
        extra: serde_json::Value,
    ) -> Result<Subnet, WriteError> {
        let mut v = serde_json::json!({"network_id": net, "cidr": cidr});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let spec = body::<SubnetCreateBody>(serde_json::json!({ "subnet": v }))
            .subnet
            .into_spec("p")?;
        store.write(move |w| w.create_subnet(spec, &ADMIN)).await
    }

    async fn port(store: &Store, net: &str, extra: serde_json::Value) -> Result<Port, WriteError> {
        let mut v = serde_json::json!({"network_id": net});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let spec = body::<PortCreateBody>(serde_json::json!({ "port": v }))
            .port
            .into_spec("p")?;
        store.write(move |w| w.create_port(spec, &ADMIN)).await
    }

    #[tokio::test]
    async fn concurrent_ports_never_share_an_address_and_a_full_pool_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let n = network(&store, serde_json::json!({"name": "plant"}))
            .await
            .unwrap();
        assert_eq!(n.spec.segmentation_id, Some(VNI_FIRST), "a VNI was picked");
        // A /28: .1 is the gateway, .2-.14 the pool: 13 addresses.
        subnet(&store, &n.id, "10.1.0.0/28", serde_json::json!({}))
            .await
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (store, id) = (store.clone(), n.id.clone());
            tasks.spawn(async move { port(&store, &id, serde_json::json!({})).await });
        }
        let (mut ips, mut full) = (BTreeSet::new(), 0);
        while let Some(r) = tasks.join_next().await {
            match r.unwrap() {
                Ok(p) => {
                    assert_eq!(p.status.fixed_ips.len(), 1);
                    assert!(
                        ips.insert(p.status.fixed_ips[0].ip_address),
                        "allocated twice"
                    );
                    assert!(p.status.mac_address.starts_with("fa:16:3e:"));
                }
                Err(WriteError::Conflict(m)) => {
                    assert!(
                        m.starts_with("No more IP addresses available on network"),
                        "{m}"
                    );
                    full += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((ips.len(), full), (13, 7));
        assert!(
            !ips.contains(&"10.1.0.1".parse().unwrap()),
            "never the gateway"
        );

        // A delete frees its address in the same commit; the next port gets it.
        let c = store
            .read(|c| read::ports(c, &ADMIN, None, None))
            .await
            .unwrap();
        let freed = c[0].status.fixed_ips[0].ip_address;
        let id = c[0].id.clone();
        store
            .write(move |w| w.delete_port(&id, &ADMIN))
            .await
            .unwrap();
        let p = port(&store, &n.id, serde_json::json!({})).await.unwrap();
        assert_eq!(p.status.fixed_ips[0].ip_address, freed);
    }

    /// IPv6 modes: Neutron's rules on the way in; on a SLAAC subnet a
    /// port's address is its MAC's EUI-64, recorded like any other, and
    /// never one asked for.
    #[tokio::test]
    async fn slaac_ports_get_their_eui64_and_bad_modes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let n = network(&store, serde_json::json!({"name": "cells"}))
            .await
            .unwrap();
        let slaac = serde_json::json!({"ip_version": 6, "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"});
        for (cidr, extra, want) in [
            ("fd00:7::/64", serde_json::json!({"ipv6_ra_mode": "slaac", "ipv6_address_mode": "dhcpv6-stateful"}),
             "subnet.ipv6_ra_mode: must be the same as ipv6_address_mode (dhcpv6-stateful) when both are set (got slaac)"),
            ("fd00:7::/64", serde_json::json!({"ipv6_ra_mode": "slaac"}),
             "subnet.ipv6_address_mode: must be set when ipv6_ra_mode is (to the same mode) (got null)"),
            ("fd00:7::/64", serde_json::json!({"ipv6_address_mode": "eui64"}),
             "subnet.ipv6_address_mode: must be slaac, dhcpv6-stateful or dhcpv6-stateless (got eui64)"),
            ("fd00:7::/80", slaac.clone(),
             "subnet.cidr: must be a /64: SLAAC addresses are a /64 prefix and the port's EUI-64 (got fd00:7::/80)"),
            ("10.7.0.0/24", serde_json::json!({"ipv6_address_mode": "slaac"}),
             "subnet.ipv6_address_mode: is for IPv6 subnets only (got slaac)"),
            ("fd00:7::/64", serde_json::json!({"ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac", "gateway_ip": null}),
             "subnet.gateway_ip: must be set when ipv6_ra_mode is: the site advertises itself as the router (got null)"),
        ] {
            let e = subnet(&store, &n.id, cidr, extra).await.unwrap_err();
            assert_eq!(e.to_string(), want);
        }
        assert!(store
            .read(|c| read::subnets(c, &ADMIN, None))
            .await
            .unwrap()
            .is_empty());
        let s = subnet(&store, &n.id, "fd00:7::/64", slaac).await.unwrap();
        // Stateful DHCPv6 subnets of one network: all advertised or none.
        let k = network(&store, serde_json::json!({"name": "stateful"}))
            .await
            .unwrap();
        subnet(
            &store,
            &k.id,
            "fd00:9::/64",
            serde_json::json!({"ip_version": 6}),
        )
        .await
        .unwrap();
        let mixed = serde_json::json!({"ipv6_ra_mode": "dhcpv6-stateful", "ipv6_address_mode": "dhcpv6-stateful"});
        let e = subnet(&store, &k.id, "fd00:a::/64", mixed)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("subnet.ipv6_ra_mode: must be set or not as on subnet"),
            "{e}"
        );
        let p = port(&store, &n.id, serde_json::json!({})).await.unwrap();
        let want = roost_common::model::eui64(s.spec.cidr.addr, &p.status.mac_address).unwrap();
        assert_eq!(p.status.fixed_ips[0].ip_address, want);
        let p2 = port(
            &store,
            &n.id,
            serde_json::json!({"fixed_ips": [{"subnet_id": s.id}]}),
        )
        .await
        .unwrap();
        assert_eq!(
            p2.status.fixed_ips[0].ip_address,
            roost_common::model::eui64(s.spec.cidr.addr, &p2.status.mac_address).unwrap(),
            "its own MAC's"
        );
        let twice = serde_json::json!({"fixed_ips": [{"subnet_id": s.id}, {"subnet_id": s.id}]});
        let e = port(&store, &n.id, twice).await.unwrap_err();
        assert!(
            e.to_string().contains("must name a SLAAC subnet once"),
            "{e}"
        );
        let e = port(
            &store,
            &n.id,
            serde_json::json!({"fixed_ips": [{"ip_address": "fd00:7::9"}]}),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("must be absent on subnet")
                && e.to_string().contains("ipv6_address_mode slaac"),
            "{e}"
        );
        // A MAC in use is refused before any address is derived from it.
        let e = port(
            &store,
            &n.id,
            serde_json::json!({"mac_address": p.status.mac_address}),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, WriteError::Conflict(_)), "{e}");

        // Ports made before a SLAAC subnet get their address when it comes,
        // and lose it when it goes (as in Neutron).
        let m = network(&store, serde_json::json!({"name": "later"}))
            .await
            .unwrap();
        subnet(&store, &m.id, "10.8.0.0/24", serde_json::json!({}))
            .await
            .unwrap();
        let early = port(&store, &m.id, serde_json::json!({})).await.unwrap();
        let s2 = subnet(
            &store,
            &m.id,
            "fd00:8::/64",
            serde_json::json!({"ip_version": 6, "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"}),
        )
        .await
        .unwrap();
        let ips = |id: String| {
            let store = store.clone();
            async move {
                let p = store
                    .read(move |c| read::port(c, &id, &ADMIN))
                    .await
                    .unwrap();
                p.status
                    .fixed_ips
                    .iter()
                    .map(|f| f.ip_address)
                    .collect::<Vec<_>>()
            }
        };
        let eui = roost_common::model::eui64(s2.spec.cidr.addr, &early.status.mac_address).unwrap();
        assert_eq!(
            ips(early.id.clone()).await,
            vec![early.status.fixed_ips[0].ip_address, eui]
        );
        // A new port there gets both, asked for by address or not: its
        // IPv4 one and, always, its EUI-64.
        let late = port(
            &store,
            &m.id,
            serde_json::json!({"fixed_ips": [{"ip_address": "10.8.0.9"}]}),
        )
        .await
        .unwrap();
        let late_eui =
            roost_common::model::eui64(s2.spec.cidr.addr, &late.status.mac_address).unwrap();
        assert_eq!(
            ips(late.id.clone()).await,
            vec!["10.8.0.9".parse().unwrap(), late_eui]
        );
        let sid = s2.id.clone();
        store
            .write(move |w| w.delete_subnet(&sid, &ADMIN))
            .await
            .unwrap();
        assert_eq!(
            ips(early.id.clone()).await,
            vec![early.status.fixed_ips[0].ip_address]
        );
        let held: i64 = store
            .read(move |c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM ip_allocations WHERE subnet_id = ?1",
                    [&s2.id],
                    |r| r.get(0),
                )?)
            })
            .await
            .unwrap();
        assert_eq!(held, 0);
    }

    #[tokio::test]
    async fn bad_requests_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let err = network(
            &store,
            serde_json::json!({"provider:network_type": "vlan", "provider:segmentation_id": 4095}),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "network.provider:segmentation_id: must be between 1 and 4094 (got 4095)"
        );
        let n = network(&store, serde_json::json!({"provider:network_type": "vlan", "provider:segmentation_id": 100, "provider:physical_network": "plant"}))
            .await
            .unwrap();
        let dup = network(&store, serde_json::json!({"provider:network_type": "vlan", "provider:segmentation_id": 100, "provider:physical_network": "plant"}))
            .await
            .unwrap_err();
        assert!(
            matches!(&dup, WriteError::Conflict(m) if m.contains("vlan segment 100 on physical network plant is in use")),
            "{dup}"
        );

        subnet(&store, &n.id, "10.2.0.0/24", serde_json::json!({}))
            .await
            .unwrap();
        let overlap = subnet(&store, &n.id, "10.2.0.128/25", serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(
            overlap
                .to_string()
                .starts_with("subnet.cidr: must not overlap another subnet"),
            "{overlap}"
        );
        let v6 = subnet(
            &store,
            &n.id,
            "fd00:2::/64",
            serde_json::json!({"ip_version": 6}),
        )
        .await
        .unwrap();

        let outside = port(
            &store,
            &n.id,
            serde_json::json!({"fixed_ips": [{"ip_address": "10.9.0.5"}]}),
        )
        .await
        .unwrap_err();
        assert_eq!(outside.to_string(), format!("port.fixed_ips[0].ip_address: must be inside a subnet of network {} (got 10.9.0.5)", n.id));
        let wrong_subnet = port(
            &store,
            &n.id,
            serde_json::json!({"fixed_ips": [{"subnet_id": v6.id, "ip_address": "10.2.0.5"}]}),
        )
        .await
        .unwrap_err();
        assert!(
            wrong_subnet
                .to_string()
                .contains("must be inside the subnet's cidr fd00:2::/64"),
            "{wrong_subnet}"
        );

        // Dual stack: one address of each version by default.
        let p = port(&store, &n.id, serde_json::json!({})).await.unwrap();
        let got: Vec<String> = p
            .status
            .fixed_ips
            .iter()
            .map(|f| f.ip_address.to_string())
            .collect();
        assert_eq!(got, ["10.2.0.2", "fd00:2::2"]);
        let taken = port(
            &store,
            &n.id,
            serde_json::json!({"fixed_ips": [{"ip_address": "10.2.0.2"}]}),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&taken, WriteError::Conflict(m) if m.contains("10.2.0.2 is in use")),
            "{taken}"
        );
        let gw = port(
            &store,
            &n.id,
            serde_json::json!({"fixed_ips": [{"ip_address": "10.2.0.1"}]}),
        )
        .await
        .unwrap_err();
        assert!(matches!(gw, WriteError::Conflict(_)));
        let bcast = port(
            &store,
            &n.id,
            serde_json::json!({"fixed_ips": [{"ip_address": "10.2.0.255"}]}),
        )
        .await
        .unwrap_err();
        assert!(
            bcast.to_string().contains("network or broadcast"),
            "{bcast}"
        );
        let twice = port(
            &store,
            &n.id,
            serde_json::json!({"fixed_ips": [{"ip_address": "10.2.0.9"}, {"ip_address": "10.2.0.9"}]}),
        )
        .await
        .unwrap_err();
        assert!(matches!(twice, WriteError::Conflict(_)), "{twice}");
        let two = port(&store, &n.id, serde_json::json!({"fixed_ips": [{"subnet_id": p.status.fixed_ips[0].subnet_id}, {"subnet_id": p.status.fixed_ips[0].subnet_id}]}))
            .await
            .unwrap();
        assert_ne!(
            two.status.fixed_ips[0].ip_address,
            two.status.fixed_ips[1].ip_address
        );
        let tid = two.id.clone();
        store
            .write(move |w| w.delete_port(&tid, &ADMIN))
            .await
            .unwrap();
        let mac = port(
            &store,
            &n.id,
            serde_json::json!({"mac_address": p.status.mac_address}),
        )
        .await
        .unwrap_err();
        assert!(mac.to_string().contains("is in use"));

        // Refusals left nothing behind: one port with its two addresses.
        let (ports, allocs): (i64, i64) = store
            .read(|c| {
                Ok((
                    c.query_row("SELECT COUNT(*) FROM ports", [], |r| r.get(0))?,
                    c.query_row("SELECT COUNT(*) FROM ip_allocations", [], |r| r.get(0))?,
                ))
            })
            .await
            .unwrap();
        assert_eq!((ports, allocs), (1, 2));

        // A network or subnet with a port on it stays.
        let (nid, sid) = (n.id.clone(), p.status.fixed_ips[0].subnet_id.clone());
        let busy = store
            .write(move |w| w.delete_network(&nid, &ADMIN))
            .await
            .unwrap_err();
        assert!(
            matches!(&busy, WriteError::Conflict(m) if m.contains("ports still in use")),
            "{busy}"
        );
        let busy = store
            .write(move |w| w.delete_subnet(&sid, &ADMIN))
            .await
            .unwrap_err();
        assert!(matches!(busy, WriteError::Conflict(_)));
        let pid = p.id.clone();
        store
            .write(move |w| w.delete_port(&pid, &ADMIN))
            .await
            .unwrap();
        let nid = n.id.clone();
        store
            .write(move |w| w.delete_network(&nid, &ADMIN))
            .await
            .unwrap();
        let left: i64 = store
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM subnets", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(left, 0, "a network's subnets go with it");
    }

    #[tokio::test]
    async fn a_server_gets_its_nics_in_its_create_and_gives_them_back() {
        use roost_common::model::{NicRequest, ServerSpec};
        let cfg: SiteConfig = config::parse(
            Path::new("site.yaml"),
            &format!("{SITE}flavors:\n  - {{name: one, id: '1', vcpus: 1, ram_mb: 256, disk_gb: 1}}\nimages:\n  - {{name: img, id: 11111111-2222-4333-8444-555555555555, disk_format: qcow2}}\n"),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "net-test", &cfg).unwrap().0;
        let n = network(&store, serde_json::json!({})).await.unwrap();
        // Two addresses in all.
        subnet(
            &store,
            &n.id,
            "10.3.0.0/29",
            serde_json::json!({"allocation_pools": [{"start": "10.3.0.2", "end": "10.3.0.3"}]}),
        )
        .await
        .unwrap();
        let given = port(&store, &n.id, serde_json::json!({})).await.unwrap();
        let server = |nics: Vec<NicRequest>| ServerSpec {
            networks: nics,
            ..ServerSpec::new("s", "p", "u", "1", "11111111-2222-4333-8444-555555555555")
        };
        let servers = |s: &Store| {
            let s = s.clone();
            async move {
                s.read(|c| {
                    Ok(c.query_row("SELECT COUNT(*) FROM servers", [], |r| r.get::<_, i64>(0))?)
                })
                .await
                .unwrap()
            }
        };
        // One address is left after the given port's: the second
        // NIC cannot be had, and the whole create is refused.
        let spec = server(vec![
            NicRequest::Network {
                id: n.id.clone(),
                fixed_ip: None,
            },
            NicRequest::Network {
                id: n.id.clone(),
                fixed_ip: None,
            },
        ]);
        let e = store
            .write(move |w| w.create_server(crate::store::NewServer { spec, id: None }))
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("No more IP addresses"), "{e}");
        assert_eq!(servers(&store).await, 0);
        let left = store
            .read(|c| read::ports(c, &ADMIN, None, None))
            .await
            .unwrap();
        assert_eq!(left.len(), 1, "no port left from the refused create");

        let spec = server(vec![
            NicRequest::Port {
                id: given.id.clone(),
            },
            NicRequest::Network {
                id: n.id.clone(),
                fixed_ip: None,
            },
        ]);
        let s = store
            .write(move |w| w.create_server(crate::store::NewServer { spec, id: None }))
            .await
            .unwrap();
        let nics = {
            let sid = s.id.clone();
            store
                .read(move |c| read::ports(c, &ADMIN, None, Some(&sid)))
                .await
                .unwrap()
        };
        assert_eq!(nics.len(), 2);
        assert!(nics
            .iter()
            .all(|p| p.spec.device_owner.as_deref() == Some(COMPUTE_OWNER)));
        // The given port cannot be bound twice.
        let spec = server(vec![NicRequest::Port {
            id: given.id.clone(),
        }]);
        let e = store
            .write(move |w| w.create_server(crate::store::NewServer { spec, id: None }))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, WriteError::Conflict(m) if m.contains("still in use")),
            "{e}"
        );

        // The server goes: its own port with it, the given one unbound.
        let sid = s.id.clone();
        store.write(move |w| w.remove_server(&sid)).await.unwrap();
        let left = store
            .read(|c| read::ports(c, &ADMIN, None, None))
            .await
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, given.id);
        assert_eq!(left[0].spec.device_id, None);
        let held: i64 = store
            .read(|c| Ok(c.query_row("SELECT COUNT(*) FROM ip_allocations", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(held, 1, "the made port's address is free again");
    }

    #[tokio::test]
    async fn a_project_gets_one_default_group_that_cannot_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let n = network(&store, serde_json::json!({})).await.unwrap();
        let p = port(&store, &n.id, serde_json::json!({})).await.unwrap();
        assert_eq!(p.status.fixed_ips, vec![], "no subnet, no address");
        let groups = store
            .read(|c| read::security_groups(c, &Some("p".into())))
            .await
            .unwrap();
        assert_eq!(groups.len(), 1);
        let (g, rules) = &groups[0];
        assert_eq!(g.spec.name, "default");
        assert_eq!(p.status.security_groups, vec![g.id.clone()]);
        assert_eq!(rules.len(), 4);
        assert_eq!(
            rules
                .iter()
                .filter(|r| r.spec.direction == Direction::Ingress
                    && r.spec.remote_group_id.as_deref() == Some(g.id.as_str()))
                .count(),
            2,
            "ingress only from the group's own members"
        );
        let gid = g.id.clone();
        let e = store
            .write(move |w| w.delete_security_group(&gid, &ADMIN))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("default security group"));
        // Another project sees none of it.
        let other = store
            .read(|c| read::security_groups(c, &Some("q".into())))
            .await
            .unwrap();
        assert!(other.is_empty());
    }
}
