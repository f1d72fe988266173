//! A real guest on a real tenant network: the agent runs in a network
//! namespace with libvirt's embedded QEMU driver and a `network` section;
//! a server created on a network boots, gets its port's address by DHCP
//! from the agent's dnsmasq, and reaches its gateway on the network's
//! bridge. Its tap is on that bridge; deleting it frees its port.

use std::time::Duration;

use serde_json::json;

use roost_tests::guest::{self, GuestImage, IMAGE_ID};
use roost_tests::netns::SiteNet;
use roost_tests::{binary, wait_for, AgentProcess, Api};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_gets_its_ports_address_by_dhcp_and_reaches_its_gateway() {
    let image = GuestImage::find();
    println!("accelerator: {}", image.verdict);
    let net = SiteNet::new();
    // Short: libvirt's embedded driver keeps sockets under its root.
    let tmp = tempfile::Builder::new()
        .prefix("gn")
        .tempdir_in("/tmp")
        .unwrap();
    let root = tmp.path().join("lv");
    let _guests = guest::QemuGuard(root.clone());
    let _dhcp = roost_tests::netns::DhcpGuard(tmp.path());
    let data = tmp.path().join("data");
    let config = tmp.path().join("site.yaml");
    std::fs::write(
        &config,
        image.site_yaml("net-guest", &root, 8192) + "network: {host: node-0, period_secs: 2}\n",
    )
    .unwrap();
    let mut agent = AgentProcess::start_with(
        net.command(&binary("roost-agent")),
        &config,
        &data,
        &format!("{}:0", net.site_ip),
    );
    let api = Api::login(&agent.url).await;

    let (code, n) = api
        .post(
            "/network/v2.0/networks",
            json!({"network": {"name": "line-3"}}),
        )
        .await;
    assert_eq!(code, 201, "{n}");
    let net_id = n["network"]["id"].as_str().unwrap().to_string();
    let (code, s) = api
        .post(
            "/network/v2.0/subnets",
            json!({"subnet": {"network_id": net_id, "cidr": "10.88.0.0/24"}}),
        )
        .await;
    assert_eq!(code, 201, "{s}");
    let (code, srv) = api
        .post(
            "/compute/v2.1/servers",
            json!({"server": {"name": "plc-7", "flavorRef": "1", "imageRef": IMAGE_ID,
                              "networks": [{"uuid": net_id}]}}),
        )
        .await;
    assert_eq!(code, 202, "{srv}");
    let id = srv["server"]["id"].as_str().unwrap().to_string();
    let shown = api
        .wait_status(&id, "ACTIVE", Duration::from_secs(60))
        .await;
    let addr = shown["server"]["addresses"]["line-3"][0]["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let mac = shown["server"]["addresses"]["line-3"][0]["OS-EXT-IPS-MAC:mac_addr"]
        .as_str()
        .unwrap()
        .to_string();

    let within = image.boot_limit() + Duration::from_secs(30);
    wait_for(
        "the guest's DHCP lease and its gateway",
        within,
        async || guest::console(&data, &id).contains("roost-guest: gateway"),
    )
    .await;
    let console = guest::console(&data, &id);
    println!("{console}");
    assert!(
        console.contains(&format!("roost-guest: eth0 {mac}")),
        "{console}"
    );
    assert!(
        console.contains(&format!(
            "roost-guest: dhcp {addr}/24 on eth0, gateway 10.88.0.1"
        )),
        "{console}"
    );
    assert!(
        console.contains("roost-guest: gateway 10.88.0.1 reachable"),
        "{console}"
    );

    // The tap is on the network's bridge.
    let links = std::process::Command::new("ip")
        .args(["-n", &net.name, "-br", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    let tap = links
        .lines()
        .find(|l| l.starts_with("tap"))
        .unwrap_or_else(|| panic!("no tap: {links}"));
    let master = std::process::Command::new("ip")
        .args([
            "-n",
            &net.name,
            "-d",
            "link",
            "show",
            tap.split_whitespace().next().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&master.stdout).contains(&format!(
            "master {}",
            roost_edge_agent::network::plan::bridge_name(&net_id)
        )),
        "{}",
        String::from_utf8_lossy(&master.stdout)
    );

    assert_eq!(
        api.delete(&format!("/compute/v2.1/servers/{id}")).await.0,
        204
    );
    api.wait_status(&id, "GONE", Duration::from_secs(60)).await;
    let (_, ports) = api
        .get(&format!("/network/v2.0/ports?device_id={id}"))
        .await;
    assert_eq!(ports["ports"], json!([]));
    let status = agent.terminate();
    assert!(status.success(), "{status}");
}
