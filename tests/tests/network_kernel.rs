//! The network reconciler against the real kernel: two hosts of one site
//! are two network namespaces joined by a veth (the underlay); each runs
//! the reconciler on the same store, which makes the bridges and the VXLAN
//! tunnel between them. Guests are namespaces plugged into the bridges as
//! libvirt plugs a tap (a veth whose host end joins the bridge), with
//! their port's MAC and address. Real UDP between them proves what
//! reaches what.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use roost_common::api::{NetworkCreateBody, PortCreateBody, SubnetCreateBody};
use roost_common::config::{self, SiteConfig};
use roost_common::model::{Network, Port};
use roost_edge_agent::network::plan::{bridge_name, HostNet};
use roost_edge_agent::network::{netlink::Netlink, Reconciler};
use roost_edge_agent::store::Store;
use roost_tests::netns::ip;
use serde_json::json;

const SITE: &str = "site: {id: net-kernel, name: Net kernel}\nhosts:\n  - {name: c0, roles: [compute], vcpus: 4, ram_mb: 8192, disk_gb: 100}\n";

/// Namespaces made by this test, removed when dropped.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: &str) -> String {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        self.0.push(name.to_string());
        name.to_string()
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Runs `f` on a thread inside namespace `ns`.
fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).expect("open the namespace");
        rustix::thread::move_into_link_name_space(
            fd.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// One reconciler pass for `host`, inside namespace `ns`.
fn pass(ns: &str, store: &Store, host: &HostNet) -> roost_edge_agent::network::Pass {
    let r = Reconciler {
        store: store.clone(),
        host: host.clone(),
        changed: Default::default(),
        period: Duration::from_secs(10),
        dhcp_dir: None,
    };
    inside(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let nl = Netlink::open().expect("netlink");
            r.pass(&nl).await.expect("pass")
        })
    })
}

/// Plugs a guest into `bridge` on host `host_ns`, with the port's MAC and
/// address, as libvirt plugs a tap.
fn plug(guests: &mut Namespaces, host_ns: &str, guest: &str, bridge: &str, port: &Port) {
    let addr = format!("{}/24", port.status.fixed_ips[0].ip_address);
    plug_mac(
        guests,
        host_ns,
        guest,
        bridge,
        &port.status.mac_address,
        Some(&addr),
    );
}

/// As [`plug`], with a MAC and, if given, an address set by hand.
fn plug_mac(
    guests: &mut Namespaces,
    host_ns: &str,
    guest: &str,
    bridge: &str,
    mac: &str,
    addr: Option<&str>,
) {
    let g = guests.add(guest);
    let host_end = format!("t{}", &guest[guest.len() - 6..]);
    ip(&[
        "-n", host_ns, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns",
        &g,
    ]);
    ip(&[
        "-n", host_ns, "link", "set", &host_end, "master", bridge, "up",
    ]);
    ip(&["-n", &g, "link", "set", "eth0", "address", mac, "up"]);
    if let Some(addr) = addr {
        ip(&["-n", &g, "addr", "add", addr, "dev", "eth0"]);
    }
}

/// Deletes a port, then its network, at the site.
async fn delete_port_and_network(store: &Store, port: &str, network: &str) {
    let (port, network) = (port.to_string(), network.to_string());
    store
        .write(move |w| w.delete_port(&port, &None))
        .await
        .unwrap();
    store
        .write(move |w| w.delete_network(&network, &None))
        .await
        .unwrap();
}

/// A UDP echo in `ns` on `at`, answering up to `n` datagrams.
fn echo(ns: &str, at: SocketAddr) -> std::thread::JoinHandle<()> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            fd.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        let s = UdpSocket::bind(at).expect("bind the echo");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    })
}

/// Whether `to` answers from inside `ns` (a few tries: ARP and the
/// bridges' learning take a moment).
fn reaches(ns: &str, to: SocketAddr) -> bool {
    inside(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        let mut buf = [0u8; 64];
        (0..4).any(|_| {
            let _ = s.send_to(b"roost", to);
            matches!(s.recv_from(&mut buf), Ok((5, _)))
        })
    })
}

async fn create_network(store: &Store) -> Network {
    let spec = serde_json::from_value::<NetworkCreateBody>(json!({"network": {"name": "n"}}))
        .unwrap()
        .network
        .into_spec("p")
        .unwrap();
    store.write(move |w| w.create_network(spec)).await.unwrap()
}

async fn create_subnet(store: &Store, net: &str, cidr: &str, gateway: bool) {
    let mut body = json!({"network_id": net, "cidr": cidr});
    if !gateway {
        body["gateway_ip"] = serde_json::Value::Null;
    }
    let spec = serde_json::from_value::<SubnetCreateBody>(json!({ "subnet": body }))
        .unwrap()
        .subnet
        .into_spec("p")
        .unwrap();
    store
        .write(move |w| w.create_subnet(spec, &None))
        .await
        .unwrap();
}

async fn create_port(store: &Store, net: &str, ip: &str) -> Port {
    let spec = serde_json::from_value::<PortCreateBody>(
        json!({"port": {"network_id": net, "fixed_ips": [{"ip_address": ip}]}}),
    )
    .unwrap()
    .port
    .into_spec("p")
    .unwrap();
    store
        .write(move |w| w.create_port(spec, &None))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_one_network_across_vxlan_another_network_apart() {
    let tag = std::process::id() % 100_000;
    let mut ns = Namespaces(Vec::new());
    let (h1, h2) = (ns.add(&format!("rk{tag}h1")), ns.add(&format!("rk{tag}h2")));
    // The underlay: a veth between the two hosts.
    ip(&[
        "-n", &h1, "link", "add", "under", "type", "veth", "peer", "name", "under", "netns", &h2,
    ]);
    for (h, a) in [(&h1, "172.31.0.1/24"), (&h2, "172.31.0.2/24")] {
        ip(&["-n", h, "addr", "add", a, "dev", "under"]);
        ip(&["-n", h, "link", "set", "under", "up"]);
    }
    let vtep = |last: u8| Ipv4Addr::new(172, 31, 0, last);
    let host = |me: u8, gateway: bool| HostNet {
        site_id: "net-kernel".into(),
        vtep: Some(vtep(me)),
        underlay: Some("under".into()),
        peers: vec![vtep(1), vtep(2)],
        physnets: Default::default(),
        gateway,
    };
    let (host1, host2) = (host(1, true), host(2, false));

    let dir = tempfile::tempdir().unwrap();
    let cfg: SiteConfig = config::parse(Path::new("site.yaml"), SITE).unwrap();
    let store = Store::open(dir.path(), "net-kernel", &cfg).unwrap().0;
    // Two networks with the same addresses: only L2 keeps them apart (the
    // second has no gateway: one host cannot hold one address twice).
    let a = create_network(&store).await;
    let b = create_network(&store).await;
    create_subnet(&store, &a.id, "10.50.0.0/24", true).await;
    create_subnet(&store, &b.id, "10.50.0.0/24", false).await;
    let a1 = create_port(&store, &a.id, "10.50.0.11").await;
    let a2 = create_port(&store, &a.id, "10.50.0.12").await;
    let b1 = create_port(&store, &b.id, "10.50.0.13").await;

    // A bridge someone made by hand, with our prefix: never touched.
    ip(&["-n", &h1, "link", "add", "rbr-handmade", "type", "bridge"]);

    let p1 = pass(&h1, &store, &host1);
    let p2 = pass(&h2, &store, &host2);
    assert!(
        p1.failed.is_empty() && p2.failed.is_empty(),
        "{p1:?} {p2:?}"
    );
    assert!(p1.applied.len() >= 6, "{p1:?}");
    // A second pass finds nothing to do.
    assert_eq!(pass(&h1, &store, &host1).applied, Vec::<String>::new());
    assert_eq!(pass(&h2, &store, &host2).applied, Vec::<String>::new());

    let (ba, bb) = (bridge_name(&a.id), bridge_name(&b.id));
    let mut guests = Namespaces(Vec::new());
    plug(&mut guests, &h1, &format!("rk{tag}ga1"), &ba, &a1);
    plug(&mut guests, &h2, &format!("rk{tag}ga2"), &ba, &a2);
    plug(&mut guests, &h2, &format!("rk{tag}gb1"), &bb, &b1);
    let port = |p: &Port| SocketAddr::new(p.status.fixed_ips[0].ip_address, 7000);
    let _e1 = echo(&format!("rk{tag}ga2"), port(&a2));
    let _e2 = echo(&format!("rk{tag}gb1"), port(&b1));
    let _e3 = echo(&h1, "10.50.0.1:7001".parse().unwrap());
    std::thread::sleep(Duration::from_millis(200));

    let ga1 = format!("rk{tag}ga1");
    let ga2 = format!("rk{tag}ga2");
    assert!(
        reaches(&ga1, port(&a2)),
        "same network, other host, over VXLAN"
    );
    assert!(
        reaches(&ga2, "10.50.0.1:7001".parse().unwrap()),
        "a guest on host 2 reaches its gateway on host 1"
    );
    assert!(
        !reaches(&ga1, port(&b1)),
        "another network is not reachable"
    );

    // Drift: the bridge deleted by hand comes back on the next pass, and
    // the hand-made bridge is still there, untouched.
    ip(&["-n", &h1, "link", "del", &ba]);
    let repaired = pass(&h1, &store, &host1);
    assert!(repaired.applied.len() >= 3, "{repaired:?}");
    let links = String::from_utf8(
        Command::new("ip")
            .args(["-n", &h1, "-br", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(links.contains(&ba), "{links}");
    assert!(links.contains("rbr-handmade"), "{links}");
    // The guest's veth went with the bridge; plugged again, traffic flows.
    ip(&[
        "-n",
        &h1,
        "link",
        "set",
        &format!("t{}", &ga1[ga1.len() - 6..]),
        "master",
        &ba,
    ]);
    assert!(reaches(&ga1, port(&a2)), "after the repair");

    // A network deleted at the site: its devices go from both hosts.
    delete_port_and_network(&store, &b1.id, &b.id).await;
    pass(&h1, &store, &host1);
    pass(&h2, &store, &host2);
    for h in [&h1, &h2] {
        let links = String::from_utf8(
            Command::new("ip")
                .args(["-n", h, "-br", "link"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(!links.contains(&bb), "{h}: {links}");
        assert!(links.contains(&ba), "{h}: {links}");
    }
}

/// A flat network is the plant floor itself: guests on it reach a device
/// on the provider interface's wire (a PLC, here a namespace), a guest on
/// another network does not, and deleting the network leaves the provider
/// interface as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flat_network_puts_guests_on_the_provider_wire() {
    let tag = std::process::id() % 100_000;
    let mut ns = Namespaces(Vec::new());
    let (h, plc) = (ns.add(&format!("rf{tag}h")), ns.add(&format!("rf{tag}plc")));
    // The provider interface: a veth whose other end is the plant floor.
    ip(&[
        "-n", &h, "link", "add", "plant0", "type", "veth", "peer", "name", "eth0", "netns", &plc,
    ]);
    ip(&["-n", &h, "link", "set", "plant0", "up"]);
    ip(&["-n", &plc, "addr", "add", "10.61.0.9/24", "dev", "eth0"]);
    ip(&["-n", &plc, "link", "set", "eth0", "up"]);
    let host = HostNet {
        site_id: "net-kernel".into(),
        vtep: None,
        underlay: None,
        peers: Vec::new(),
        physnets: [("plant".to_string(), "plant0".to_string())].into(),
        gateway: false,
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg: SiteConfig = config::parse(Path::new("site.yaml"), SITE).unwrap();
    let store = Store::open(dir.path(), "net-kernel", &cfg).unwrap().0;
    let flat = |name: &str| {
        serde_json::from_value::<NetworkCreateBody>(json!({"network": {"name": name,
            "provider:network_type": "flat", "provider:physical_network": "plant"}}))
        .unwrap()
        .network
        .into_spec("p")
        .unwrap()
    };
    let spec = flat("floor");
    let floor = store.write(move |w| w.create_network(spec)).await.unwrap();
    // One flat network per provider network.
    let spec = flat("floor-2");
    let refused = store
        .write(move |w| w.create_network(spec))
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("Physical network plant is in use"),
        "{refused}"
    );
    // Nor a VLAN network beside it (a flat guest could forge its tags).
    let vlan = serde_json::from_value::<NetworkCreateBody>(json!({"network": {"name": "cells",
        "provider:network_type": "vlan", "provider:physical_network": "plant", "provider:segmentation_id": 120}}))
    .unwrap()
    .network
    .into_spec("p")
    .unwrap();
    let refused = store
        .write(move |w| w.create_network(vlan))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("to itself"), "{refused}");
    let other = create_network(&store).await;
    create_subnet(&store, &floor.id, "10.61.0.0/24", false).await;
    create_subnet(&store, &other.id, "10.61.0.0/24", false).await;
    let on_floor = create_port(&store, &floor.id, "10.61.0.21").await;
    let apart = create_port(&store, &other.id, "10.61.0.22").await;

    let p = pass(&h, &store, &host);
    // The other network is VXLAN with no underlay here: a bridge local to
    // this host, said as a problem; the flat one has none.
    assert!(
        p.failed.is_empty() && p.problems.iter().all(|x| !x.contains(&floor.id)),
        "{p:?}"
    );
    assert_eq!(
        pass(&h, &store, &host).applied,
        Vec::<String>::new(),
        "a second pass finds nothing to do"
    );
    let l = links(&h);
    assert!(l.contains("macvlan") || l.contains("rfl-"), "{l}");

    let mut guests = Namespaces(Vec::new());
    plug(
        &mut guests,
        &h,
        &format!("rf{tag}gfl"),
        &bridge_name(&floor.id),
        &on_floor,
    );
    plug(
        &mut guests,
        &h,
        &format!("rf{tag}gap"),
        &bridge_name(&other.id),
        &apart,
    );
    let _echo = echo(&plc, "10.61.0.9:7000".parse().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        reaches(&format!("rf{tag}gfl"), "10.61.0.9:7000".parse().unwrap()),
        "a guest on the flat network reaches the PLC"
    );
    assert!(
        !reaches(&format!("rf{tag}gap"), "10.61.0.9:7000".parse().unwrap()),
        "a guest on another network does not"
    );

    // Deleted: the macvlan goes, the provider interface stays, up, with
    // no master.
    delete_port_and_network(&store, &on_floor.id, &floor.id).await;
    pass(&h, &store, &host);
    let l = links(&h);
    assert!(!l.contains("rfl-"), "{l}");
    let provider = l
        .lines()
        .find(|x| x.starts_with("plant0"))
        .unwrap_or_else(|| panic!("{l}"));
    assert!(provider.contains("UP"), "{provider}");
    let detail = String::from_utf8(
        Command::new("ip")
            .args(["-n", &h, "-d", "link", "show", "plant0"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!detail.contains("master"), "{detail}");
}

fn links(ns: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-d", "-br", "link"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// The agent itself, in a namespace, with a `network` section: what the
/// API records is built on the kernel, repaired when broken by hand and
/// removed when deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_builds_what_its_api_records_and_repairs_it() {
    let net = roost_tests::netns::SiteNet::new();
    let dir = tempfile::tempdir().unwrap();
    // Should the test fail part way, its DHCP servers go with it.
    let _dhcp = roost_tests::netns::DhcpGuard(dir.path());
    let config = dir.path().join("site.yaml");
    let peer = Ipv4Addr::new(
        net.site_ip.octets()[0],
        net.site_ip.octets()[1],
        net.site_ip.octets()[2],
        20,
    );
    std::fs::write(
        &config,
        format!(
            "site: {{id: net-agent, name: Net agent}}\n\
             hosts:\n\
             - {{name: h1, roles: [controller, compute], vcpus: 4, ram_mb: 8192, disk_gb: 100, address: {}}}\n\
             - {{name: h2, roles: [compute], vcpus: 4, ram_mb: 8192, disk_gb: 100, address: {peer}}}\n\
             network: {{host: h1, underlay: {}, period_secs: 1}}\n\
             alarms: {{host_down_after_secs: 4}}\n",
            net.site_ip, net.interface
        ),
    )
    .unwrap();
    ip(&[
        "-n",
        &net.name,
        "link",
        "add",
        "rbr-handmade",
        "type",
        "bridge",
    ]);
    let mut agent = roost_tests::AgentProcess::start_with(
        net.command(&roost_tests::binary("roost-agent")),
        &config,
        &dir.path().join("data"),
        &format!("{}:0", net.site_ip),
    );
    let api = roost_tests::Api::login(&agent.url).await;
    let (code, n) = api
        .post(
            "/network/v2.0/networks",
            json!({"network": {"name": "cells"}}),
        )
        .await;
    assert_eq!(code, 201, "{n}");
    let id = n["network"]["id"].as_str().unwrap().to_string();
    let vni = n["network"]["provider:segmentation_id"].as_u64().unwrap();
    let (code, s) = api
        .post(
            "/network/v2.0/subnets",
            json!({"subnet": {"network_id": id, "cidr": "10.77.0.0/24"}}),
        )
        .await;
    assert_eq!(code, 201, "{s}");
    let bridge = bridge_name(&id);
    let vxlan = format!("rvx-{vni}");
    let within = Duration::from_secs(10);
    // Built in one pass, step by step: wait for the last of them too.
    let gateway = || {
        let out = Command::new("ip")
            .args(["-n", &net.name, "-br", "addr", "show", "dev", &bridge])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("10.77.0.1/24")
    };
    roost_tests::wait_for("the bridge, tunnel and gateway built", within, async || {
        let l = links(&net.name);
        l.contains(&bridge) && l.contains(&vxlan) && gateway()
    })
    .await;
    let fdb = Command::new("bridge")
        .args(["-n", &net.name, "fdb", "show", "dev", &vxlan])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&fdb.stdout).contains(&format!("00:00:00:00:00:00 dst {peer}")),
        "a flood entry to the other host: {}",
        String::from_utf8_lossy(&fdb.stdout)
    );

    // Deleted by hand: back within the period.
    ip(&["-n", &net.name, "link", "del", &bridge]);
    roost_tests::wait_for("the bridge rebuilt", within, async || {
        links(&net.name).contains(&bridge)
    })
    .await;

    // IPv6 with the site as the router: dnsmasq advertises the prefix and
    // the guest's own kernel takes its port's address (the EUI-64 the
    // site's IPAM recorded) and a default route through the bridge.
    let (code, s6) = api
        .post(
            "/network/v2.0/subnets",
            json!({"subnet": {"network_id": id, "cidr": "fd00:77::/64", "ip_version": 6,
                    "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"}}),
        )
        .await;
    assert_eq!(code, 201, "{s6}");
    assert_eq!(s6["subnet"]["ipv6_address_mode"], "slaac");
    let (code, p) = api
        .post("/network/v2.0/ports", json!({"port": {"network_id": id}}))
        .await;
    assert_eq!(code, 201, "{p}");
    let v6: std::net::IpAddr = p["port"]["fixed_ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["ip_address"].as_str()?.parse().ok())
        .find(|ip: &std::net::IpAddr| ip.is_ipv6())
        .expect("a port on the network gets an IPv6 address");
    let mac = p["port"]["mac_address"].as_str().unwrap().to_string();
    let mut guests = Namespaces(Vec::new());
    plug_mac(&mut guests, &net.name, "rk-slaac", &bridge, &mac, None);
    let guest6 = |what: &[&str]| {
        let mut args = vec!["-n", "rk-slaac", "-6"];
        args.extend_from_slice(what);
        let out = Command::new("ip").args(&args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    roost_tests::wait_for(
        "the guest configures its SLAAC address",
        Duration::from_secs(30),
        async || {
            guest6(&["addr", "show", "dev", "eth0"]).contains(&format!("{v6}/64"))
                && guest6(&["route", "show", "default"]).contains("via fe80::")
        },
    )
    .await;
    drop(guests);
    let port_id = p["port"]["id"].as_str().unwrap();
    assert_eq!(
        api.delete(&format!("/network/v2.0/ports/{port_id}"))
            .await
            .0,
        204
    );

    // The other host (nothing answers at its address) is down: alarmed,
    // shown down, and given nothing new.
    roost_tests::wait_for("host.down for h2", Duration::from_secs(30), async || {
        api.get("/roost/v1/alarms").await.1["alarms"]
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|a| a["code"] == "host.down" && a["entity"] == "host=h2")
            })
    })
    .await;
    let (_, hv) = api.get("/compute/v2.1/os-hypervisors/detail").await;
    let state = |name: &str| {
        hv["hypervisors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["hypervisor_hostname"] == name)
            .map(|h| h["state"].clone())
    };
    assert_eq!(state("h2"), Some(json!("down")), "{hv}");
    assert_eq!(state("h1"), Some(json!("up")), "{hv}");

    // Deleted through the API: gone from the kernel; the hand-made bridge stays.
    assert_eq!(
        api.delete(&format!("/network/v2.0/networks/{id}")).await.0,
        204
    );
    roost_tests::wait_for("the devices removed", within, async || {
        let l = links(&net.name);
        !l.contains(&bridge) && !l.contains(&vxlan)
    })
    .await;
    assert!(links(&net.name).contains("rbr-handmade"));
    // A clean stop takes the network's DHCP server with it (kill -9 would
    // leave it to the next start).
    let status = agent.terminate();
    assert!(status.success(), "{status}");
    let left = Command::new("pgrep")
        .args(["-f", &dir.path().display().to_string()])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "left running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_groups_are_enforced_on_the_host() {
    use roost_common::model::{Direction, SecurityGroupRuleSpec, SecurityGroupSpec};
    let tag = std::process::id() % 100_000;
    let mut ns = Namespaces(Vec::new());
    let h = ns.add(&format!("rs{tag}h"));
    // An underlay for the VXLAN device (this kernel has no dummy links).
    ip(&[
        "-n", &h, "link", "add", "under", "type", "veth", "peer", "name", "under-p",
    ]);
    ip(&["-n", &h, "addr", "add", "172.31.9.1/24", "dev", "under"]);
    ip(&["-n", &h, "link", "set", "under", "up"]);
    let vtep = Ipv4Addr::new(172, 31, 9, 1);
    let host = HostNet {
        site_id: "net-kernel".into(),
        vtep: Some(vtep),
        underlay: Some("under".into()),
        peers: vec![vtep],
        physnets: Default::default(),
        gateway: true,
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg: SiteConfig = config::parse(Path::new("site.yaml"), SITE).unwrap();
    let store = Store::open(dir.path(), "net-kernel", &cfg).unwrap().0;
    let net = create_network(&store).await;
    create_subnet(&store, &net.id, "10.60.0.0/24", true).await;
    let rule = |group: &str, remote_group: Option<&str>| SecurityGroupRuleSpec {
        security_group_id: group.into(),
        project_id: "p".into(),
        direction: Direction::Ingress,
        ip_version: 4,
        protocol: Some("udp".into()),
        port_range_min: Some(7000),
        port_range_max: Some(7000),
        remote_ip_prefix: match remote_group {
            None => Some(roost_common::model::Cidr::parse("r", "0.0.0.0/0").unwrap()),
            Some(_) => None,
        },
        remote_group_id: remote_group.map(str::to_string),
    };
    let group = |name: &'static str| {
        let store = store.clone();
        async move {
            store
                .write(move |w| {
                    w.create_security_group(SecurityGroupSpec {
                        name: name.into(),
                        description: String::new(),
                        project_id: "p".into(),
                        deleted: false,
                    })
                })
                .await
                .unwrap()
        }
    };
    let set_groups = |port: String, groups: Vec<String>| {
        let store = store.clone();
        async move {
            store
                .write(move |w| {
                    w.update_port(
                        &port,
                        roost_common::api::PortUpdate {
                            name: None,
                            admin_state_up: None,
                            security_groups: Some(groups),
                            description: None,
                        },
                        &None,
                    )
                })
                .await
                .unwrap();
        }
    };
    let web = group("web").await;
    let (web_id, r) = (web.id.clone(), rule(&web.id, None));
    let web_rule = store
        .write(move |w| w.create_security_group_rule(r, &None))
        .await
        .unwrap();
    // The server's port is in `web` (UDP 7000 from anywhere); the client's
    // in the project's default group (ingress only from its members).
    let spec = serde_json::from_value::<PortCreateBody>(json!({"port": {
        "network_id": net.id, "fixed_ips": [{"ip_address": "10.60.0.11"}],
        "security_groups": [web_id]}}))
    .unwrap()
    .port
    .into_spec("p")
    .unwrap();
    let srv = store
        .write(move |w| w.create_port(spec, &None))
        .await
        .unwrap();
    let cli = create_port(&store, &net.id, "10.60.0.12").await;
    let default_id = cli.status.security_groups[0].clone();

    let p = pass(&h, &store, &host);
    assert!(p.failed.is_empty() && p.firewall.is_none(), "{p:?}");
    let bridge = bridge_name(&net.id);
    let mut guests = Namespaces(Vec::new());
    let (gs, gc) = (format!("rs{tag}gsrv"), format!("rs{tag}gcli"));
    plug(&mut guests, &h, &gs, &bridge, &srv);
    plug(&mut guests, &h, &gc, &bridge, &cli);
    let at = |p: &Port, port: u16| SocketAddr::new(p.status.fixed_ips[0].ip_address, port);
    let _e = [
        echo(&gs, at(&srv, 7000)),
        echo(&gs, at(&srv, 7001)),
        echo(&gc, at(&cli, 7000)),
        echo(&h, "10.60.0.1:7002".parse().unwrap()),
    ];
    std::thread::sleep(Duration::from_millis(200));

    assert!(reaches(&gc, at(&srv, 7000)), "allowed by web's rule");
    assert!(!reaches(&gc, at(&srv, 7001)), "no rule lets UDP 7001 in");
    assert!(
        !reaches(&gs, at(&cli, 7000)),
        "default lets in only its own members"
    );
    assert!(
        reaches(&gc, "10.60.0.1:7002".parse().unwrap()),
        "egress to the gateway is allowed"
    );

    // A rule naming the other group lets its members in.
    let r = rule(&default_id, Some(&web.id));
    store
        .write(move |w| w.create_security_group_rule(r, &None))
        .await
        .unwrap();
    pass(&h, &store, &host);
    assert!(
        reaches(&gs, at(&cli, 7000)),
        "web's members may now reach cli"
    );

    // A rule deleted: what it let in is refused.
    let id = web_rule.id.clone();
    store
        .write(move |w| w.delete_security_group_rule(&id, &None))
        .await
        .unwrap();
    pass(&h, &store, &host);
    assert!(!reaches(&gc, at(&srv, 7000)), "web's rule is gone");

    // Drift: the table deleted by hand is back after the next pass.
    let nft = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &h, "nft"])
            .args(args)
            .output()
            .unwrap()
    };
    assert!(nft(&["delete", "table", "inet", "roost-net-kernel"])
        .status
        .success());
    assert!(
        reaches(&gc, at(&srv, 7001)),
        "without the table all is open"
    );
    pass(&h, &store, &host);
    assert!(nft(&["list", "table", "inet", "roost-net-kernel"])
        .status
        .success());
    assert!(!reaches(&gc, at(&srv, 7001)), "enforced again");

    // The server's port moved into the default group: its members (the
    // client) may now reach it on any port.
    set_groups(srv.id.clone(), vec![default_id.clone()]).await;
    pass(&h, &store, &host);
    assert!(reaches(&gc, at(&srv, 7001)), "same group now");

    // A sender's egress rules hold whatever the receiver lets in: the
    // server opens UDP 7001 to anyone; the client's group has no egress.
    let (open, mute) = (group("open").await, group("mute").await);
    let mut r = rule(&open.id, None);
    (r.port_range_min, r.port_range_max) = (Some(7001), Some(7001));
    store
        .write(move |w| w.create_security_group_rule(r, &None))
        .await
        .unwrap();
    let mute_id = mute.id.clone();
    let egress: Vec<String> = store
        .read(move |c| {
            Ok(roost_edge_agent::store::network::read::security_group(c, &mute_id, &None)?.1)
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    for id in egress {
        store
            .write(move |w| w.delete_security_group_rule(&id, &None))
            .await
            .unwrap();
    }
    set_groups(srv.id.clone(), vec![open.id.clone()]).await;
    set_groups(cli.id.clone(), vec![mute.id.clone()]).await;
    pass(&h, &store, &host);
    assert!(
        !reaches(&gc, at(&srv, 7001)),
        "a port with no egress rule sends nothing, even where it would be let in"
    );
    set_groups(cli.id.clone(), vec![default_id.clone()]).await;
    pass(&h, &store, &host);
    assert!(reaches(&gc, at(&srv, 7001)), "with egress allowed it may");
}
