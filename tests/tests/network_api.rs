//! The Neutron-shaped API as a client sees it, against the real agent:
//! networks, subnets, ports with the site's IPAM, security groups, and
//! bad requests refused in Neutron's error shape with nothing changed.

use roost_tests::{site_config, AgentProcess, Api};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_subnets_ports_and_groups_through_the_neutron_api() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(&site_config("vehicle-07.yaml"), dir.path());
    let api = Api::login(&agent.url).await;

    // The catalog names the network service.
    let (code, v) = api.get("/network/").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["versions"][0]["id"], "v2.0");

    let (code, net) = api
        .post(
            "/network/v2.0/networks",
            json!({"network": {"name": "plant-floor"}}),
        )
        .await;
    assert_eq!(code, 201, "{net}");
    let net = &net["network"];
    assert_eq!(net["provider:network_type"], "vxlan");
    assert_eq!(net["mtu"], 1450);
    assert_eq!(net["status"], "ACTIVE");
    let net_id = net["id"].as_str().unwrap().to_string();

    let (code, sub) = api
        .post(
            "/network/v2.0/subnets",
            json!({"subnet": {"network_id": net_id, "cidr": "192.168.40.0/24", "ip_version": 4,
                              "dns_nameservers": ["192.168.40.1"]}}),
        )
        .await;
    assert_eq!(code, 201, "{sub}");
    assert_eq!(sub["subnet"]["gateway_ip"], "192.168.40.1");
    assert_eq!(
        sub["subnet"]["allocation_pools"],
        json!([{"start": "192.168.40.2", "end": "192.168.40.254"}])
    );
    let sub_id = sub["subnet"]["id"].as_str().unwrap().to_string();

    let (code, port) = api
        .post(
            "/network/v2.0/ports",
            json!({"port": {"network_id": net_id, "name": "plc-1", "device_owner": "compute:nova"}}),
        )
        .await;
    assert_eq!(code, 201, "{port}");
    let port = &port["port"];
    assert_eq!(
        port["fixed_ips"],
        json!([{"subnet_id": sub_id, "ip_address": "192.168.40.2"}])
    );
    let port_id = port["id"].as_str().unwrap().to_string();

    // Filters, as `openstack port list --network` and `network show NAME` use.
    let (_, list) = api
        .get(&format!("/network/v2.0/ports?network_id={net_id}"))
        .await;
    assert_eq!(list["ports"].as_array().unwrap().len(), 1);
    let (_, list) = api.get("/network/v2.0/networks?name=plant-floor").await;
    assert_eq!(list["networks"][0]["subnets"], json!([sub_id]));
    let (_, list) = api.get("/network/v2.0/networks?name=elsewhere").await;
    assert_eq!(list["networks"], json!([]));

    // The project's default group, with the port in it.
    let (code, groups) = api.get("/network/v2.0/security-groups").await;
    assert_eq!(code, 200);
    let default = &groups["security_groups"][0];
    assert_eq!(default["name"], "default");
    assert_eq!(port["security_groups"], json!([default["id"]]));
    let (code, rule) = api
        .post(
            "/network/v2.0/security-group-rules",
            json!({"security_group_rule": {"security_group_id": default["id"], "direction": "ingress",
                   "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 502, "port_range_max": 502,
                   "remote_ip_prefix": "10.20.0.0/16"}}),
        )
        .await;
    assert_eq!(code, 201, "{rule}");
    assert_eq!(rule["security_group_rule"]["port_range_min"], 502);

    // A port's name and groups change (`openstack port set`); its
    // addresses do not, and a group of nobody's is refused by name.
    let (code, g) = api
        .post(
            "/network/v2.0/security-groups",
            json!({"security_group": {"name": "modbus"}}),
        )
        .await;
    assert_eq!(code, 201, "{g}");
    let modbus = g["security_group"]["id"].clone();
    let port_path = format!("/network/v2.0/ports/{port_id}");
    let put = |body: serde_json::Value| api.call(reqwest::Method::PUT, &port_path, Some(body));
    let (code, changed) =
        put(json!({"port": {"name": "plc-1a", "security_groups": [modbus, modbus]}})).await;
    assert_eq!(code, 200, "{changed}");
    assert_eq!(changed["port"]["name"], "plc-1a");
    assert_eq!(changed["port"]["security_groups"], json!([modbus]));
    let (code, body) = put(json!({"port": {"security_groups": ["nope"]}})).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.to_string().contains("port.security_groups[0]"),
        "{body}"
    );
    let (code, body) = put(json!({"port": {"fixed_ips": []}})).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("fixed_ips"), "{body}");
    let (_, shown) = api.get(&format!("/network/v2.0/ports/{port_id}")).await;
    assert_eq!(
        shown["port"]["security_groups"],
        json!([modbus]),
        "refusals changed nothing"
    );
    let (code, _) = put(json!({"port": {"security_groups": [default["id"]]}})).await;
    assert_eq!(code, 200);

    // Bad input: Neutron's error shape, nothing changed.
    let refusals = [
        (
            json!({"network": {"provider:network_type": "vlan", "provider:segmentation_id": 5000}}),
            "/network/v2.0/networks",
            400,
            "network.provider:segmentation_id: must be between 1 and 4094 (got 5000)",
        ),
        (
            json!({"subnet": {"network_id": net_id, "cidr": "192.168.40.128/25"}}),
            "/network/v2.0/subnets",
            400,
            "subnet.cidr: must not overlap another subnet",
        ),
        (
            json!({"port": {"network_id": net_id, "fixed_ips": [{"ip_address": "10.0.0.9"}]}}),
            "/network/v2.0/ports",
            400,
            "port.fixed_ips[0].ip_address: must be inside a subnet of network",
        ),
        (
            json!({"port": {"network_id": net_id, "fixed_ips": [{"ip_address": "192.168.40.2"}]}}),
            "/network/v2.0/ports",
            409,
            "The IP address 192.168.40.2 is in use.",
        ),
        (
            json!({"port": {"network_id": net_id, "colour": "blue"}}),
            "/network/v2.0/ports",
            400,
            "port.colour: unknown field `colour`",
        ),
    ];
    for (body, path, want, message) in refusals {
        let (code, e) = api.post(path, body.clone()).await;
        assert_eq!(code, want, "{body} -> {e}");
        let m = e["NeutronError"]["message"].as_str().unwrap_or_default();
        assert!(m.contains(message), "{body}: {m}");
        assert!(e["NeutronError"]["type"].is_string());
    }
    let (code, e) = api
        .delete(&format!("/network/v2.0/networks/{net_id}"))
        .await;
    assert_eq!(code, 409, "{e}");
    assert_eq!(e["NeutronError"]["type"], "Conflict");
    let (_, ports) = api.get("/network/v2.0/ports").await;
    assert_eq!(
        ports["ports"].as_array().unwrap().len(),
        1,
        "refusals made no port"
    );

    // A server on the network: its port is made in its create, shows in
    // its addresses, and goes with it.
    let image = "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a98";
    let (code, srv) = api
        .post(
            "/compute/v2.1/servers",
            json!({"server": {"name": "cam-1", "flavorRef": "1", "imageRef": image,
                              "networks": [{"uuid": net_id, "fixed_ip": "192.168.40.77"}]}}),
        )
        .await;
    assert_eq!(code, 202, "{srv}");
    let sid = srv["server"]["id"].as_str().unwrap().to_string();
    let (_, shown) = api.get(&format!("/compute/v2.1/servers/{sid}")).await;
    let addr = &shown["server"]["addresses"]["plant-floor"][0];
    assert_eq!(addr["addr"], "192.168.40.77", "{shown}");
    assert_eq!(addr["version"], 4);
    let (_, nics) = api
        .get(&format!("/network/v2.0/ports?device_id={sid}"))
        .await;
    assert_eq!(nics["ports"][0]["device_owner"], "compute:nova");
    assert_eq!(
        nics["ports"][0]["mac_address"],
        addr["OS-EXT-IPS-MAC:mac_addr"]
    );
    // A NIC that cannot be had refuses the whole create.
    let (code, e) = api
        .post(
            "/compute/v2.1/servers",
            json!({"server": {"name": "cam-2", "flavorRef": "1", "imageRef": image,
                              "networks": [{"uuid": net_id, "fixed_ip": "192.168.40.77"}]}}),
        )
        .await;
    assert_eq!(code, 409, "{e}");
    // Two networks: Nova's "auto" cannot choose.
    let (_, other) = api
        .post(
            "/network/v2.0/networks",
            json!({"network": {"name": "other"}}),
        )
        .await;
    let (code, e) = api
        .post(
            "/compute/v2.1/servers",
            json!({"server": {"name": "cam-3", "flavorRef": "1", "imageRef": image}}),
        )
        .await;
    assert_eq!(code, 409, "{e}");
    assert!(
        e.to_string().contains("Multiple possible networks found"),
        "{e}"
    );
    let other_id = other["network"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        api.delete(&format!("/network/v2.0/networks/{other_id}"))
            .await
            .0,
        204
    );
    assert_eq!(
        api.delete(&format!("/compute/v2.1/servers/{sid}")).await.0,
        204
    );
    api.wait_status(&sid, "GONE", std::time::Duration::from_secs(20))
        .await;
    let (_, nics) = api
        .get(&format!("/network/v2.0/ports?device_id={sid}"))
        .await;
    assert_eq!(nics["ports"], json!([]), "the server's port went with it");

    // Clean up in order; addresses and ids are gone with them.
    assert_eq!(
        api.delete(&format!("/network/v2.0/ports/{port_id}"))
            .await
            .0,
        204
    );
    assert_eq!(
        api.delete(&format!("/network/v2.0/networks/{net_id}"))
            .await
            .0,
        204
    );
    let (code, e) = api.get(&format!("/network/v2.0/subnets/{sub_id}")).await;
    assert_eq!(code, 404, "{e}");
    assert_eq!(e["NeutronError"]["type"], "NotFound");
}
