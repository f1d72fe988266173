//! What a host's kernel should hold for the site's networks, and the steps
//! from what it holds: pure, so every decision is unit-tested.
//!
//! Per network, on every host: a Linux bridge `rbr-<id>`; for VXLAN, a
//! VXLAN device `rvx-<vni>` on the bridge, over the host's underlay, with
//! one all-zero FDB entry per other host (head-end replication: no
//! multicast needed on the underlay); for VLAN, a sub-interface `rvl-<id>`
//! of the provider interface on the bridge; for flat, a passthru macvlan
//! `rfl-<id>` of the provider interface on the bridge (Roost never
//! configures the provider interface, though the kernel makes it
//! promiscuous; passthru allows one macvlan per interface). On the gateway
//! host, the bridge holds each subnet's gateway address, except on flat
//! networks, whose router is the wire's own.
//!
//! Every device Roost makes carries the alias `roost:<site>:<network>`:
//! that alias, not the name alone, is what makes a device Roost's, so an
//! interface Roost did not create is never changed or removed, whatever
//! its name.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use roost_common::model::{Network, NetworkKind, Subnet};

pub const BRIDGE_PREFIX: &str = "rbr-";
pub const VXLAN_PREFIX: &str = "rvx-";
pub const VLAN_PREFIX: &str = "rvl-";
pub const FLAT_PREFIX: &str = "rfl-";
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;

/// What this host is, for the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNet {
    pub site_id: String,
    /// This host's tunnel endpoint.
    pub vtep: Option<Ipv4Addr>,
    /// The interface VXLAN runs over.
    pub underlay: Option<String>,
    /// The other hosts' tunnel endpoints.
    pub peers: Vec<Ipv4Addr>,
    /// Provider networks: name to interface, for VLAN and flat networks.
    pub physnets: BTreeMap<String, String>,
    /// Whether this host holds the subnets' gateway addresses.
    pub gateway: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Bridge,
    Vxlan {
        vni: u32,
        local: Ipv4Addr,
        underlay: String,
    },
    Vlan {
        id: u16,
        link: String,
    },
    /// A passthru macvlan of the provider interface `link`.
    Flat {
        link: String,
    },
}

/// A device as the plan wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    pub kind: Kind,
    pub mtu: u32,
    /// The bridge it is a port of.
    pub master: Option<String>,
    pub alias: String,
}

/// A device as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    /// `None` for kinds the plan never makes (veth, tap, physical...).
    pub kind: Option<Kind>,
    pub mtu: u32,
    pub master: Option<String>,
    pub up: bool,
    pub alias: Option<String>,
}

/// What one host holds or should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub links: Vec<Link>,
    /// (VXLAN device, remote endpoint) flood entries.
    pub fdb: BTreeSet<(String, Ipv4Addr)>,
    /// (device, address, prefix length).
    pub addresses: BTreeSet<(String, IpAddr, u8)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create(Device),
    Delete(String),
    SetMaster { name: String, master: String },
    SetMtu { name: String, mtu: u32 },
    Up(String),
    AddFdb { dev: String, remote: Ipv4Addr },
    DelFdb { dev: String, remote: Ipv4Addr },
    AddAddress { dev: String, ip: IpAddr, prefix: u8 },
    DelAddress { dev: String, ip: IpAddr, prefix: u8 },
}

pub fn alias(site_id: &str, network_id: &str) -> String {
    format!("roost:{site_id}:{network_id}")
}

/// Whether a device carries this site's alias.
pub fn is_ours(site_id: &str, link: &Link) -> bool {
    let prefix = format!("roost:{site_id}:");
    link.alias
        .as_deref()
        .is_some_and(|a| a.starts_with(&prefix))
}

fn short(id: &str) -> String {
    id.chars().filter(|c| *c != '-').take(11).collect()
}

pub fn bridge_name(network_id: &str) -> String {
    format!("{BRIDGE_PREFIX}{}", short(network_id))
}

/// The tap libvirt makes for a port, as Nova names it (`tap` + the port
/// id's start). Taps are libvirt's: the network reconciler never touches
/// them.
pub fn tap_name(port_id: &str) -> String {
    format!("tap{}", short(port_id))
}

/// What the host should hold, and why a network cannot be realised here.
pub fn desired(h: &HostNet, networks: &[Network], subnets: &[Subnet]) -> (State, Vec<String>) {
    let mut s = State::default();
    let mut problems = Vec::new();
    // Provider interfaces a flat network took (passthru allows one
    // macvlan per interface; the store allows one flat network per
    // provider network, and two provider networks may name one interface).
    let mut flat: BTreeMap<String, String> = BTreeMap::new();
    for n in networks.iter().filter(|n| !n.spec.deleted) {
        let bridge = bridge_name(&n.id);
        let alias = alias(&h.site_id, &n.id);
        let port = match (n.spec.kind, n.spec.segmentation_id) {
            (NetworkKind::Vxlan, Some(vni)) => match (h.vtep, &h.underlay) {
                (Some(local), Some(underlay)) => {
                    let name = format!("{VXLAN_PREFIX}{vni}");
                    for peer in h.peers.iter().filter(|p| **p != local) {
                        s.fdb.insert((name.clone(), *peer));
                    }
                    Some(Device {
                        name,
                        kind: Kind::Vxlan {
                            vni,
                            local,
                            underlay: underlay.clone(),
                        },
                        mtu: n.spec.mtu,
                        master: Some(bridge.clone()),
                        alias: alias.clone(),
                    })
                }
                _ => {
                    problems.push(format!(
                        "network {}: VXLAN needs this host's tunnel address and underlay interface (network.underlay in the site config, and the host's address)",
                        n.id
                    ));
                    None
                }
            },
            (NetworkKind::Vlan, Some(id)) => {
                let physnet = n.spec.physical_network.clone().unwrap_or_default();
                match h.physnets.get(&physnet) {
                    Some(link) => Some(Device {
                        name: format!("{VLAN_PREFIX}{}", short(&n.id)),
                        kind: Kind::Vlan {
                            id: id as u16,
                            link: link.clone(),
                        },
                        mtu: n.spec.mtu,
                        master: Some(bridge.clone()),
                        alias: alias.clone(),
                    }),
                    None => {
                        problems.push(format!(
                            "network {}: no interface for provider network {physnet:?} on this host (network.physnets in the site config)",
                            n.id
                        ));
                        None
                    }
                }
            }
            (NetworkKind::Flat, _) => {
                let physnet = n.spec.physical_network.clone().unwrap_or_default();
                let link = h.physnets.get(&physnet);
                match (link, link.and_then(|l| flat.get(l))) {
                    (Some(link), Some(first)) => {
                        problems.push(format!(
                            "network {}: provider interface {link} (network {physnet:?}) already carries flat network {first}; its bridge stays local to this host",
                            n.id
                        ));
                        None
                    }
                    (Some(link), None) => {
                        flat.insert(link.clone(), n.id.clone());
                        Some(Device {
                            name: format!("{FLAT_PREFIX}{}", short(&n.id)),
                            kind: Kind::Flat { link: link.clone() },
                            mtu: n.spec.mtu,
                            master: Some(bridge.clone()),
                            alias: alias.clone(),
                        })
                    }
                    (None, _) => {
                        problems.push(format!(
                            "network {}: no interface for provider network {physnet:?} on this host (network.physnets in the site config)",
                            n.id
                        ));
                        None
                    }
                }
            }
            _ => None,
        };
        s.links.push(Link {
            name: bridge.clone(),
            kind: Some(Kind::Bridge),
            mtu: n.spec.mtu,
            master: None,
            up: true,
            alias: Some(alias.clone()),
        });
        if let Some(d) = port {
            s.links.push(Link {
                name: d.name,
                kind: Some(d.kind),
                mtu: d.mtu,
                master: d.master,
                up: true,
                alias: Some(d.alias),
            });
        }
        // A flat network is a wire that already has its router (and its
        // DHCP): the bridge holds no gateway address there, so Roost never
        // answers for the plant's router and runs no DHCP server on it.
        if h.gateway && n.spec.kind != NetworkKind::Flat {
            for sub in subnets.iter().filter(|x| x.spec.network_id == n.id) {
                let Some(gw) = sub.spec.gateway_ip else {
                    continue;
                };
                // One host cannot route one prefix out of two bridges: a
                // gateway whose prefix another network also has (and gives
                // a gateway) is held by neither, and said.
                let clash = subnets.iter().find(|o| {
                    o.spec.network_id != n.id
                        && o.spec.gateway_ip.is_some()
                        && o.spec.cidr.overlaps(&sub.spec.cidr)
                        && networks
                            .iter()
                            .any(|m| m.id == o.spec.network_id && !m.spec.deleted)
                });
                match clash {
                    None => {
                        s.addresses.insert((bridge.clone(), gw, sub.spec.cidr.prefix));
                    }
                    Some(o) => problems.push(format!(
                        "subnet {}: its gateway {gw} is not held on this host: network {} also routes {} (give one of them no gateway, or other addresses)",
                        sub.id,
                        o.spec.network_id,
                        String::from(o.spec.cidr)
                    )),
                }
            }
        }
    }
    (s, problems)
}

fn device(l: &Link) -> Option<Device> {
    Some(Device {
        name: l.name.clone(),
        kind: l.kind.clone()?,
        mtu: l.mtu,
        master: l.master.clone(),
        alias: l.alias.clone()?,
    })
}

/// The steps from `have` to `want`, in an order the kernel accepts:
/// removals of ports before bridges, bridges before their ports.
pub fn diff(site_id: &str, want: &State, have: &State) -> Vec<Action> {
    let mut out = Vec::new();
    let had: BTreeMap<&str, &Link> = have.links.iter().map(|l| (l.name.as_str(), l)).collect();
    let wanted: BTreeSet<&str> = want.links.iter().map(|l| l.name.as_str()).collect();
    // Ours and no longer wanted, or wanted differently: removed. Ports first.
    let mut remove: Vec<&Link> = have
        .links
        .iter()
        .filter(|l| is_ours(site_id, l))
        .filter(|l| {
            !wanted.contains(l.name.as_str())
                || want
                    .links
                    .iter()
                    .any(|w| w.name == l.name && w.kind != l.kind)
        })
        .collect();
    remove.sort_by_key(|l| l.kind == Some(Kind::Bridge));
    let removed: BTreeSet<&str> = remove.iter().map(|l| l.name.as_str()).collect();
    out.extend(remove.iter().map(|l| Action::Delete(l.name.clone())));

    // Bridges, then their ports.
    let mut wants: Vec<&Link> = want.links.iter().collect();
    wants.sort_by_key(|l| l.kind != Some(Kind::Bridge));
    for w in wants {
        match had.get(w.name.as_str()) {
            // Someone else's device under our name: never touched.
            Some(h) if !is_ours(site_id, h) => continue,
            Some(h) if !removed.contains(h.name.as_str()) => {
                if let (Some(m), true) = (&w.master, w.master != h.master) {
                    out.push(Action::SetMaster {
                        name: w.name.clone(),
                        master: m.clone(),
                    });
                }
                if w.mtu != h.mtu {
                    out.push(Action::SetMtu {
                        name: w.name.clone(),
                        mtu: w.mtu,
                    });
                }
                if !h.up {
                    out.push(Action::Up(w.name.clone()));
                }
            }
            _ => {
                if let Some(d) = device(w) {
                    out.push(Action::Create(d));
                    out.push(Action::Up(w.name.clone()));
                }
            }
        }
    }
    let foreign: BTreeSet<&str> = have
        .links
        .iter()
        .filter(|l| !is_ours(site_id, l))
        .map(|l| l.name.as_str())
        .collect();
    // Ours: marked as ours, or wanted and not held by someone else.
    let ours: BTreeSet<&str> = have
        .links
        .iter()
        .filter(|l| is_ours(site_id, l))
        .map(|l| l.name.as_str())
        .chain(wanted.iter().copied().filter(|n| !foreign.contains(n)))
        .collect();
    for (dev, remote) in want.fdb.difference(&have.fdb) {
        if !foreign.contains(dev.as_str()) {
            out.push(Action::AddFdb {
                dev: dev.clone(),
                remote: *remote,
            });
        }
    }
    for (dev, remote) in have.fdb.difference(&want.fdb) {
        if ours.contains(dev.as_str()) && !removed.contains(dev.as_str()) {
            out.push(Action::DelFdb {
                dev: dev.clone(),
                remote: *remote,
            });
        }
    }
    for (dev, ip, prefix) in want.addresses.difference(&have.addresses) {
        if !foreign.contains(dev.as_str()) {
            out.push(Action::AddAddress {
                dev: dev.clone(),
                ip: *ip,
                prefix: *prefix,
            });
        }
    }
    for (dev, ip, prefix) in have.addresses.difference(&want.addresses) {
        let link_local = matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if ours.contains(dev.as_str()) && !removed.contains(dev.as_str()) && !link_local {
            out.push(Action::DelAddress {
                dev: dev.clone(),
                ip: *ip,
                prefix: *prefix,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_common::model::{Cidr, NetworkSpec, Resource, SubnetSpec};

    fn net(id: &str, kind: NetworkKind, seg: Option<u32>, physnet: Option<&str>) -> Network {
        let mut n = Resource::new(
            NetworkSpec {
                name: "n".into(),
                project_id: "p".into(),
                kind,
                segmentation_id: seg,
                physical_network: physnet.map(str::to_string),
                mtu: 1450,
                shared: false,
                admin_state_up: true,
                deleted: false,
            },
            chrono::Utc::now(),
        );
        n.id = id.into();
        n
    }

    fn host(vtep: &str, gateway: bool) -> HostNet {
        HostNet {
            site_id: "s1".into(),
            vtep: Some(vtep.parse().unwrap()),
            underlay: Some("eth0".into()),
            peers: vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            physnets: [("plant".to_string(), "eno2".to_string())].into(),
            gateway,
        }
    }

    const N1: &str = "11111111-aaaa-4bbb-8ccc-000000000001";
    const N2: &str = "22222222-aaaa-4bbb-8ccc-000000000002";
    const N3: &str = "33333333-aaaa-4bbb-8ccc-000000000003";

    fn subnet(network: &str, cidr: &str) -> Subnet {
        Resource::new(
            SubnetSpec::with_defaults(
                "".into(),
                "p".into(),
                network.into(),
                Cidr::parse("c", cidr).unwrap(),
                None,
                None,
            ),
            chrono::Utc::now(),
        )
    }

    #[test]
    fn a_vxlan_network_is_a_bridge_and_a_tunnel_to_every_other_host() {
        let nets = [net(N1, NetworkKind::Vxlan, Some(1000), None)];
        let subs = [subnet(N1, "192.168.1.0/24")];
        let (want, problems) = desired(&host("10.0.0.1", true), &nets, &subs);
        assert!(problems.is_empty());
        assert_eq!(want.links.len(), 2);
        assert_eq!(want.links[0].name, "rbr-11111111aaa");
        assert!(want.links[0].name.len() <= 15);
        assert_eq!(want.links[1].name, "rvx-1000");
        assert_eq!(want.links[1].master.as_deref(), Some("rbr-11111111aaa"));
        assert_eq!(
            want.fdb,
            BTreeSet::from([("rvx-1000".to_string(), "10.0.0.2".parse().unwrap())]),
            "to the other host, not to itself"
        );
        assert_eq!(
            want.addresses,
            BTreeSet::from([(
                "rbr-11111111aaa".to_string(),
                "192.168.1.1".parse().unwrap(),
                24
            )])
        );
        // From nothing: the bridge first, then its port, each brought up.
        let steps = diff("s1", &want, &State::default());
        let names: Vec<String> = steps
            .iter()
            .map(|a| match a {
                Action::Create(d) => format!("create {}", d.name),
                Action::Up(n) => format!("up {n}"),
                Action::AddFdb { dev, remote } => format!("fdb {dev} {remote}"),
                Action::AddAddress { dev, ip, .. } => format!("addr {dev} {ip}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            names,
            [
                "create rbr-11111111aaa",
                "up rbr-11111111aaa",
                "create rvx-1000",
                "up rvx-1000",
                "fdb rvx-1000 10.0.0.2",
                "addr rbr-11111111aaa 192.168.1.1"
            ]
        );
        // A host that is not the gateway holds no address.
        let (other, _) = desired(&host("10.0.0.2", false), &nets, &subs);
        assert!(other.addresses.is_empty());
    }

    #[test]
    fn two_networks_with_one_prefix_do_not_both_get_a_gateway_here() {
        let nets = [
            net(N1, NetworkKind::Vxlan, Some(1000), None),
            net(N2, NetworkKind::Vxlan, Some(1001), None),
        ];
        let subs = [subnet(N1, "192.168.1.0/24"), subnet(N2, "192.168.1.0/24")];
        let (want, problems) = desired(&host("10.0.0.1", true), &nets, &subs);
        assert!(want.addresses.is_empty());
        assert_eq!(problems.len(), 2, "{problems:?}");
        // Without a gateway on the second, the first holds its own.
        let mut quiet = subnet(N2, "192.168.1.0/24");
        quiet.spec.gateway_ip = None;
        let (want, problems) = desired(
            &host("10.0.0.1", true),
            &nets,
            &[subnet(N1, "192.168.1.0/24"), quiet],
        );
        assert_eq!(want.addresses.len(), 1);
        assert!(problems.is_empty());
    }

    #[test]
    fn when_the_kernel_matches_nothing_is_done_and_drift_is_repaired() {
        let nets = [net(N1, NetworkKind::Vxlan, Some(1000), None)];
        let (want, _) = desired(&host("10.0.0.1", true), &nets, &[]);
        assert!(diff("s1", &want, &want).is_empty());
        // A bridge deleted by hand (its port went with its master: detached).
        let mut have = want.clone();
        have.links.remove(0);
        have.links[0].master = None;
        let steps = diff("s1", &want, &have);
        assert!(matches!(&steps[0], Action::Create(d) if d.name == "rbr-11111111aaa"));
        assert!(steps.contains(&Action::SetMaster {
            name: "rvx-1000".into(),
            master: "rbr-11111111aaa".into()
        }));
        // Down by hand: up again. A lost flood entry: back.
        let mut have = want.clone();
        have.links[1].up = false;
        have.fdb.clear();
        let steps = diff("s1", &want, &have);
        assert_eq!(steps.len(), 2, "{steps:?}");
    }

    #[test]
    fn what_is_not_ours_is_never_touched_and_what_is_ours_and_unwanted_goes() {
        let nets = [net(N1, NetworkKind::Vxlan, Some(1000), None)];
        let (want, _) = desired(&host("10.0.0.1", true), &nets, &[]);
        let mut have = want.clone();
        // A stale network of ours (deleted meanwhile), an interface with our
        // prefix but no alias of ours, and another site's bridge.
        have.links.push(Link {
            name: "rbr-99999999zzz".into(),
            kind: Some(Kind::Bridge),
            mtu: 1450,
            master: None,
            up: true,
            alias: Some(alias("s1", "gone")),
        });
        have.links.push(Link {
            name: "rvx-2000".into(),
            kind: Some(Kind::Vxlan {
                vni: 2000,
                local: "10.0.0.1".parse().unwrap(),
                underlay: "eth0".into(),
            }),
            mtu: 1450,
            master: Some("rbr-99999999zzz".into()),
            up: true,
            alias: Some(alias("s1", "gone")),
        });
        have.links.push(Link {
            name: "rbr-handmade".into(),
            kind: Some(Kind::Bridge),
            mtu: 1500,
            master: None,
            up: true,
            alias: None,
        });
        have.links.push(Link {
            name: "rbr-othersite".into(),
            kind: Some(Kind::Bridge),
            mtu: 1500,
            master: None,
            up: true,
            alias: Some(alias("s2", "x")),
        });
        have.addresses
            .insert(("rbr-handmade".into(), "10.9.9.9".parse().unwrap(), 24));
        let steps = diff("s1", &want, &have);
        assert_eq!(
            steps,
            vec![
                Action::Delete("rvx-2000".into()),
                Action::Delete("rbr-99999999zzz".into())
            ],
            "the port before its bridge; nothing of others"
        );
        // Someone else's device under a name we want is left alone.
        let mut squatted = State::default();
        squatted.links.push(Link {
            alias: None,
            ..want.links[0].clone()
        });
        let steps = diff("s1", &want, &squatted);
        assert!(!steps
            .iter()
            .any(|a| matches!(a, Action::Delete(n) | Action::Up(n) if n == "rbr-11111111aaa")));
    }

    #[test]
    fn a_flat_network_is_a_macvlan_of_its_provider_interface_one_per_physnet() {
        let nets = [
            net(N1, NetworkKind::Flat, None, Some("plant")),
            net(N2, NetworkKind::Flat, None, Some("plant")),
            net(N3, NetworkKind::Flat, None, Some("nowhere")),
        ];
        let (want, problems) = desired(&host("10.0.0.1", false), &nets, &[]);
        let flats: Vec<&Link> = want
            .links
            .iter()
            .filter(|l| l.name.starts_with(FLAT_PREFIX))
            .collect();
        assert_eq!(flats.len(), 1, "{flats:?}");
        assert_eq!(
            flats[0].kind,
            Some(Kind::Flat {
                link: "eno2".into()
            })
        );
        assert_eq!(flats[0].master.as_deref(), Some(bridge_name(N1).as_str()));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("already carries flat network"));
        // On the gateway host, a flat network's subnet gets no address: the
        // plant's router is on the wire.
        let (on_gateway, _) = desired(
            &host("10.0.0.1", true),
            &nets[..1],
            &[subnet(N1, "10.61.0.0/24")],
        );
        assert!(
            on_gateway.addresses.is_empty(),
            "{:?}",
            on_gateway.addresses
        );
        assert!(problems[1].contains("\"nowhere\""));
        // Every network still has its bridge, and the provider interface
        // itself is not in the plan (it is not Roost's).
        assert_eq!(
            want.links
                .iter()
                .filter(|l| l.kind == Some(Kind::Bridge))
                .count(),
            3
        );
        assert!(!want.links.iter().any(|l| l.name == "eno2"));
    }

    #[test]
    fn vlan_needs_its_provider_interface_and_a_changed_segment_is_rebuilt() {
        let nets = [
            net(N1, NetworkKind::Vlan, Some(100), Some("plant")),
            net(N2, NetworkKind::Vlan, Some(101), Some("nowhere")),
        ];
        let (want, problems) = desired(&host("10.0.0.1", false), &nets, &[]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("\"nowhere\""));
        let vlan = want
            .links
            .iter()
            .find(|l| l.name.starts_with(VLAN_PREFIX))
            .unwrap();
        assert_eq!(
            vlan.kind,
            Some(Kind::Vlan {
                id: 100,
                link: "eno2".into()
            })
        );
        let mut have = want.clone();
        for l in &mut have.links {
            if l.name == vlan.name {
                l.kind = Some(Kind::Vlan {
                    id: 99,
                    link: "eno2".into(),
                });
            }
        }
        let steps = diff("s1", &want, &have);
        assert_eq!(steps[0], Action::Delete(vlan.name.clone()));
        assert!(matches!(&steps[1], Action::Create(d) if d.name == vlan.name));
    }
}
