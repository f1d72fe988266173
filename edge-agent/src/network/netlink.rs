//! The thin driver: reads a host's links, flood entries and addresses over
//! rtnetlink, and carries out one [`Action`] at a time. No decisions here.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoVlan, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage, MacVlanMode,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkMacVlan, LinkUnspec, LinkVlan, LinkVxlan};

use super::plan::{Action, Kind, Link, State, VXLAN_PORT};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("{what}: {error}")]
    Kernel { what: String, error: String },
    #[error("no interface named {0}")]
    NoSuchLink(String),
}

fn kernel(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |e| NetError::Kernel {
        what,
        error: e.to_string(),
    }
}

/// A netlink connection in the network namespace of the thread that opened it.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket and runs its connection on the current runtime.
    pub fn open() -> Result<Netlink, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    async fn links(&self) -> Result<Vec<LinkMessage>, NetError> {
        let h = self.handle.clone();
        h.link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(kernel("list links"))
    }

    async fn index(&self, name: &str) -> Result<u32, NetError> {
        let h = self.handle.clone();
        let found: Vec<LinkMessage> = h
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_collect()
            .await
            .map_err(|_| NetError::NoSuchLink(name.to_string()))?;
        found
            .first()
            .map(|m| m.header.index)
            .ok_or_else(|| NetError::NoSuchLink(name.to_string()))
    }

    /// Everything on this host the plan compares against.
    pub async fn observe(&self) -> Result<State, NetError> {
        let msgs = self.links().await?;
        let names: BTreeMap<u32, String> = msgs
            .iter()
            .filter_map(|m| name_of(m).map(|n| (m.header.index, n)))
            .collect();
        let mut state = State::default();
        for m in &msgs {
            let Some(name) = name_of(m) else { continue };
            let mut link = Link {
                name,
                kind: None,
                mtu: 0,
                master: None,
                up: m.header.flags.contains(LinkFlags::Up),
                alias: None,
            };
            for a in &m.attributes {
                match a {
                    LinkAttribute::Mtu(v) => link.mtu = *v,
                    LinkAttribute::Controller(i) => link.master = names.get(i).cloned(),
                    LinkAttribute::IfAlias(s) => link.alias = Some(s.clone()),
                    LinkAttribute::LinkInfo(info) => link.kind = kind_of(info, &names),
                    _ => {}
                }
            }
            if let Some(Kind::Vlan { link: base, .. } | Kind::Flat { link: base }) = &mut link.kind
            {
                *base = base_link(m, &names).unwrap_or_default();
            }
            state.links.push(link);
        }
        let h = self.handle.clone();
        let mut req = h.neighbours().get();
        req.message_mut().header.family = AddressFamily::Bridge;
        let neighbours: Vec<NeighbourMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(kernel("list forwarding entries"))?;
        for n in neighbours {
            let Some(dev) = names.get(&n.header.ifindex) else {
                continue;
            };
            let mut zero = false;
            let mut dst = None;
            for a in &n.attributes {
                match a {
                    NeighbourAttribute::LinkLocalAddress(l) => zero = l.iter().all(|b| *b == 0),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
                    // In a bridge-family message the kernel's NDA_DST comes
                    // back as raw bytes.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                        dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                    }
                    _ => {}
                }
            }
            if let (true, Some(ip)) = (zero, dst) {
                state.fdb.insert((dev.clone(), ip));
            }
        }
        let addrs: Vec<_> = h
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(kernel("list addresses"))?;
        for a in addrs {
            let Some(dev) = names.get(&a.header.index) else {
                continue;
            };
            for attr in &a.attributes {
                if let AddressAttribute::Address(ip) = attr {
                    state
                        .addresses
                        .insert((dev.clone(), *ip, a.header.prefix_len));
                }
            }
        }
        Ok(state)
    }

    /// Carries out one step.
    pub async fn apply(&self, action: &Action) -> Result<(), NetError> {
        let h = self.handle.clone();
        match action {
            Action::Create(d) => {
                let msg = match &d.kind {
                    Kind::Bridge => LinkBridge::new(&d.name).mtu(d.mtu).build(),
                    Kind::Vxlan {
                        vni,
                        local,
                        underlay,
                    } => {
                        let dev = self.index(underlay).await?;
                        let master = self.index(d.master.as_deref().unwrap_or_default()).await?;
                        LinkVxlan::new(&d.name, *vni)
                            .dev(dev)
                            .local(*local)
                            .port(VXLAN_PORT)
                            .learning(true)
                            .mtu(d.mtu)
                            .controller(master)
                            .build()
                    }
                    Kind::Vlan { id, link } => {
                        let base = self.index(link).await?;
                        let master = self.index(d.master.as_deref().unwrap_or_default()).await?;
                        LinkVlan::new(&d.name, base, *id)
                            .mtu(d.mtu)
                            .controller(master)
                            .build()
                    }
                    Kind::Flat { link } => {
                        let base = self.index(link).await?;
                        let master = self.index(d.master.as_deref().unwrap_or_default()).await?;
                        LinkMacVlan::new(&d.name, base, MacVlanMode::Passthrough)
                            .mtu(d.mtu)
                            .controller(master)
                            .build()
                    }
                };
                h.link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(kernel(format!("create {}", d.name)))?;
                // The kernel takes an alias only on an existing link. Without
                // it the device would not be ours: undo the create.
                let marked = h
                    .link()
                    .set(
                        LinkUnspec::new_with_name(&d.name)
                            .append_extra_attribute(LinkAttribute::IfAlias(d.alias.clone()))
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(kernel(format!("mark {} as Roost's", d.name)));
                if marked.is_err() {
                    if let Ok(i) = self.index(&d.name).await {
                        let _ = h.link().del(i).execute().await;
                    }
                }
                marked
            }
            Action::Delete(name) => {
                let i = self.index(name).await?;
                h.link()
                    .del(i)
                    .execute()
                    .await
                    .map_err(kernel(format!("delete {name}")))
            }
            Action::SetMaster { name, master } => {
                let m = self.index(master).await?;
                h.link()
                    .set(LinkUnspec::new_with_name(name).controller(m).build())
                    .execute()
                    .await
                    .map_err(kernel(format!("attach {name} to {master}")))
            }
            Action::SetMtu { name, mtu } => h
                .link()
                .set(LinkUnspec::new_with_name(name).mtu(*mtu).build())
                .execute()
                .await
                .map_err(kernel(format!("set the MTU of {name}"))),
            Action::Up(name) => h
                .link()
                .set(LinkUnspec::new_with_name(name).up().build())
                .execute()
                .await
                .map_err(kernel(format!("bring {name} up"))),
            Action::AddFdb { dev, remote } => self.fdb(dev, *remote, true).await,
            Action::DelFdb { dev, remote } => self.fdb(dev, *remote, false).await,
            Action::AddAddress { dev, ip, prefix } => {
                let i = self.index(dev).await?;
                h.address()
                    .add(i, *ip, *prefix)
                    .execute()
                    .await
                    .map_err(kernel(format!("add {ip}/{prefix} to {dev}")))
            }
            Action::DelAddress { dev, ip, prefix } => {
                let i = self.index(dev).await?;
                let found: Vec<_> = h
                    .address()
                    .get()
                    .set_link_index_filter(i)
                    .execute()
                    .try_collect()
                    .await
                    .map_err(kernel(format!("list addresses of {dev}")))?;
                for a in found {
                    let this = a
                        .attributes
                        .iter()
                        .any(|x| matches!(x, AddressAttribute::Address(v) if v == ip));
                    if this && a.header.prefix_len == *prefix {
                        h.address()
                            .del(a)
                            .execute()
                            .await
                            .map_err(kernel(format!("remove {ip}/{prefix} from {dev}")))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Adds (`bridge fdb append 00:00:00:00:00:00 dev DEV dst REMOTE`) or
    /// removes a flood entry: one per remote, so the append flag.
    async fn fdb(&self, dev: &str, remote: Ipv4Addr, add: bool) -> Result<(), NetError> {
        let i = self.index(dev).await?;
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = i;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.header.kind = RouteType::Unspec;
        msg.attributes
            .push(NeighbourAttribute::LinkLocalAddress(vec![0; 6]));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                remote,
            )));
        let what = format!("flood entry {dev} -> {remote}");
        if !add {
            return self
                .handle
                .neighbours()
                .del(msg)
                .execute()
                .await
                .map_err(kernel(what));
        }
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let mut h = self.handle.clone();
        let mut resp = h.request(req).map_err(kernel(what.clone()))?;
        use futures_util::StreamExt;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                if e.code.is_some() {
                    return Err(NetError::Kernel {
                        what,
                        error: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn name_of(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn kind_of(info: &[LinkInfo], names: &BTreeMap<u32, String>) -> Option<Kind> {
    let kind = info.iter().find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k),
        _ => None,
    })?;
    let data = info.iter().find_map(|i| match i {
        LinkInfo::Data(d) => Some(d),
        _ => None,
    });
    match (kind, data) {
        (InfoKind::Bridge, _) => Some(Kind::Bridge),
        (InfoKind::Vxlan, Some(InfoData::Vxlan(v))) => {
            let mut vni = None;
            let mut local = None;
            let mut underlay = None;
            for x in v {
                match x {
                    InfoVxlan::Id(i) => vni = Some(*i),
                    InfoVxlan::Local(ip) => local = Some(*ip),
                    InfoVxlan::Link(i) => underlay = names.get(i).cloned(),
                    _ => {}
                }
            }
            Some(Kind::Vxlan {
                vni: vni?,
                local: local?,
                underlay: underlay?,
            })
        }
        (InfoKind::MacVlan, Some(InfoData::MacVlan(v)))
            if v.contains(&InfoMacVlan::Mode(MacVlanMode::Passthrough)) =>
        {
            // The provider interface is IFLA_LINK, as for a VLAN.
            Some(Kind::Flat {
                link: String::new(),
            })
        }
        (InfoKind::Vlan, Some(InfoData::Vlan(v))) => {
            let id = v.iter().find_map(|x| match x {
                InfoVlan::Id(i) => Some(*i),
                _ => None,
            })?;
            // The base interface is IFLA_LINK, outside link info.
            Some(Kind::Vlan {
                id,
                link: String::new(),
            })
        }
        _ => None,
    }
}

/// A VLAN's or macvlan's base interface is `IFLA_LINK` on the message, not in its info.
fn base_link(m: &LinkMessage, names: &BTreeMap<u32, String>) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => names.get(i).cloned(),
        _ => None,
    })
}
