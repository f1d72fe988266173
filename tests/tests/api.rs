//! The local API as a client sees it, against the real agent: tokens,
//! servers through their life, flavors, server groups, hypervisors, errors in
//! OpenStack's shapes that change nothing, and state kept across a restart.

use std::time::Duration;

use reqwest::Method;
use roost_tests::{auth, site_config, AgentProcess, Api};
use serde_json::json;

const IMAGE: &str = "6f0c3b4e-2c4d-4f59-9a7e-3f1e8b2d7c10";
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_refuses_bad_credentials_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(&site_config("vehicle-07.yaml"), dir.path());
    let http = reqwest::Client::new();

    let (code, body, token) = auth(&http, &agent.url, "wrong-password").await;
    assert_eq!(code, 401);
    assert_eq!(body["error"]["code"], 401);
    assert_eq!(body["error"]["title"], "Unauthorized");
    assert!(token.is_none());

    let (code, body, token) = auth(&http, &agent.url, roost_tests::ADMIN_PASSWORD).await;
    assert_eq!(code, 201, "{body}");
    let token = token.unwrap();
    let catalog = body["token"]["catalog"].as_array().unwrap();
    let compute = catalog
        .iter()
        .find(|s| s["type"] == "compute")
        .expect("compute in catalog");
    assert_eq!(compute["endpoints"][0]["region"], "vehicle-07");
    assert_eq!(
        compute["endpoints"][0]["url"],
        format!("{}/compute/v2.1", agent.url)
    );
    assert!(body["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == "admin"));

    // No token, a garbage token, a tampered token.
    for t in [
        None,
        Some("nonsense".to_string()),
        // One character of the signed claims changed: still valid base64,
        // so only the signature check can refuse it.
        Some(tamper(&token)),
    ] {
        let mut req = http.get(format!("{}/compute/v2.1/servers", agent.url));
        if let Some(t) = &t {
            req = req.header("X-Auth-Token", t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{t:?}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], 401);
    }

    // Token validation.
    let resp = http
        .get(format!("{}/identity/v3/auth/tokens", agent.url))
        .header("X-Auth-Token", &token)
        .header("X-Subject-Token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    // A malformed auth body names the field.
    let resp = http
        .post(format!("{}/identity/v3/auth/tokens", agent.url))
        .json(&json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "admin"}}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], 400, "{body}");
    assert_eq!(body["error"]["title"], "Bad Request", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("auth.identity.password.user"),
        "{body}"
    );

    // Health and metrics need no token.
    let health: serde_json::Value = http
        .get(format!("{}/healthz", agent.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["site_id"], "vehicle-07");
    let metrics = http
        .get(format!("{}/metrics", agent.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "roost_agent_http_requests_total",
        "roost_agent_http_request_seconds",
        "roost_agent_store_commit_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(
        metrics.contains(r#"route="/identity/v3/auth/tokens""#),
        "route label is the template"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifecycle_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = site_config("edge-factory-01.yaml");
    let mut agent = AgentProcess::start(&cfg, dir.path());
    let api = Api::login(&agent.url).await;

    let (code, body) = api.create_server("plc-1", "3", IMAGE).await;
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_str().unwrap().to_string();
    let s = api.wait_status(&id, "ACTIVE", WAIT).await;
    assert_eq!(s["server"]["OS-EXT-STS:power_state"], 1);
    // The store holds the token signing key: only its owner may read it.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path()), 0o700);
    let db = agent.db_path();
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&db.with_extension("db-wal")), 0o600);
    assert_eq!(s["server"]["OS-EXT-AZ:availability_zone"], "hall-b");
    assert!(s["server"]["OS-EXT-SRV-ATTR:host"]
        .as_str()
        .unwrap()
        .starts_with("compute-"));

    // A new name (`openstack server set --name`); a bad one or another
    // field is refused by name and changes nothing.
    let path = format!("/compute/v2.1/servers/{id}");
    let (code, body) = api
        .call(
            Method::PUT,
            &path,
            Some(json!({"server": {"name": "plc-1-line-b"}})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["server"]["name"], "plc-1-line-b");
    let (code, body) = api
        .call(Method::PUT, &path, Some(json!({"server": {"name": ""}})))
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("server.name"), "{body}");
    let (code, body) = api
        .call(
            Method::PUT,
            &path,
            Some(json!({"server": {"flavorRef": "1"}})),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("flavorRef"), "{body}");
    assert_eq!(api.get(&path).await.1["server"]["name"], "plc-1-line-b");

    // Starting an active server conflicts, and changes nothing.
    let (code, body) = api
        .post(
            &format!("/compute/v2.1/servers/{id}/action"),
            json!({"os-start": null}),
        )
        .await;
    assert_eq!(code, 409, "{body}");
    assert!(body["conflictingRequest"]["message"]
        .as_str()
        .unwrap()
        .contains("vm_state active"));

    let (code, _) = api
        .post(
            &format!("/compute/v2.1/servers/{id}/action"),
            json!({"os-stop": null}),
        )
        .await;
    assert_eq!(code, 202);
    let s = api.wait_status(&id, "SHUTOFF", WAIT).await;
    assert_eq!(s["server"]["OS-EXT-STS:power_state"], 4);
    let (code, _) = api
        .post(
            &format!("/compute/v2.1/servers/{id}/action"),
            json!({"os-start": null}),
        )
        .await;
    assert_eq!(code, 202);
    api.wait_status(&id, "ACTIVE", WAIT).await;
    let (code, _) = api
        .post(
            &format!("/compute/v2.1/servers/{id}/action"),
            json!({"reboot": {"type": "HARD"}}),
        )
        .await;
    assert_eq!(code, 202);
    api.wait_status(&id, "ACTIVE", WAIT).await;
    let (code, body) = api
        .post(
            &format!("/compute/v2.1/servers/{id}/action"),
            json!({"reboot": {"type": "GENTLE"}}),
        )
        .await;
    assert_eq!(code, 400);
    assert!(
        body["badRequest"]["message"]
            .as_str()
            .unwrap()
            .starts_with("reboot.type"),
        "{body}"
    );

    // Restart: the server is still there, still active, on the same host.
    let before = api.get(&format!("/compute/v2.1/servers/{id}")).await.1;
    assert!(
        agent.terminate().success(),
        "SIGTERM ends the agent cleanly"
    );
    let agent = AgentProcess::start(&cfg, dir.path());
    let api = Api::login(&agent.url).await;
    let after = api.wait_status(&id, "ACTIVE", WAIT).await;
    assert_eq!(
        after["server"]["OS-EXT-SRV-ATTR:host"],
        before["server"]["OS-EXT-SRV-ATTR:host"]
    );

    let (code, _) = api.delete(&format!("/compute/v2.1/servers/{id}")).await;
    assert_eq!(code, 204);
    api.wait_status(&id, "GONE", WAIT).await;
    let (code, body) = api.get(&format!("/compute/v2.1/servers/{id}")).await;
    assert_eq!(code, 404);
    assert_eq!(body["itemNotFound"]["code"], 404);
    for h in api.hypervisors().await {
        assert_eq!(h["vcpus_used"], 0, "claim released: {h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(&site_config("edge-factory-01.yaml"), dir.path());
    let api = Api::login(&agent.url).await;
    let cases = [
        (
            json!({"server": {"name": "x", "flavorRef": "404", "imageRef": IMAGE}}),
            "server.flavorRef: must be the id of an existing flavor",
        ),
        (
            json!({"server": {"name": "x", "flavorRef": "2", "imageRef": "nope"}}),
            "server.imageRef: must be the id of an existing image",
        ),
        (
            json!({"server": {"name": "x", "flavorRef": "1", "imageRef": IMAGE}}),
            "smaller than the image's min_disk",
        ),
        (
            json!({"server": {"name": "", "flavorRef": "2", "imageRef": IMAGE}}),
            "server.name: must not be empty",
        ),
        (
            json!({"server": {"name": "x", "flavorRef": "2"}}),
            "server.imageRef: is required",
        ),
        (
            json!({"server": {"name": "x", "flavorRef": "2", "imageRef": IMAGE, "color": "red"}}),
            "server.color: unknown field",
        ),
        (
            json!({"server": {"name": "x", "flavorRef": "2", "imageRef": IMAGE, "availability_zone": "hall-z"}}),
            "server.availability_zone: must be an availability zone of this site: hall-b",
        ),
        (
            json!({"server": {"name": "x", "flavorRef": "2", "imageRef": IMAGE}, "os:scheduler_hints": {"group": "g"}}),
            "os:scheduler_hints.group",
        ),
        (
            json!({"server": {"name": "x", "flavorRef": "2", "imageRef": IMAGE, "min_count": 3}}),
            "server.min_count: must be 1",
        ),
        (
            json!({"server": {"name": 7, "flavorRef": "2", "imageRef": IMAGE}}),
            "server.name: invalid type",
        ),
        (json!([1, 2]), "invalid JSON body"),
        (
            json!({"server": {"name": "x", "flavorRef": "2", "imageRef": IMAGE, "networks": [{"uuid": "n"}]}}),
            "server.networks",
        ),
        (
            json!({"server": {"name": "x", "flavorRef": "2", "imageRef": IMAGE, "security_groups": [{"name": "web"}]}}),
            "server.security_groups",
        ),
        (
            json!({"server": {"name": "x", "flavorRef": "2", "imageRef": IMAGE, "user_data": "IyEvYmluL3NoCg=="}}),
            "server.user_data: is not supported yet; leave it out (got 16 bytes)",
        ),
    ];
    for (body, want) in cases {
        let (code, reply) = api.post("/compute/v2.1/servers", body.clone()).await;
        assert_eq!(code, 400, "{body} -> {reply}");
        let msg = reply["badRequest"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "{body}: {msg:?} lacks {want:?}");
    }
    let (code, reply) = api
        .post(
            "/compute/v2.1/flavors",
            json!({"flavor": {"name": "f", "vcpus": 0, "ram": 512, "disk": 1}}),
        )
        .await;
    assert_eq!(code, 400);
    assert_eq!(
        reply["badRequest"]["message"],
        "flavor.vcpus: must be between 1 and 1024 (got 0)"
    );
    let (code, reply) = api
        .post(
            "/compute/v2.1/flavors",
            json!({"flavor": {"name": "m1.tiny", "vcpus": 1, "ram": 512, "disk": 1}}),
        )
        .await;
    assert_eq!(code, 409, "{reply}");
    let (code, reply) = api
        .post(
            "/compute/v2.1/servers/does-not-exist/action",
            json!({"os-stop": null}),
        )
        .await;
    assert_eq!(code, 404, "{reply}");
    let (code, reply) = api
        .post(
            "/compute/v2.1/os-server-groups",
            json!({"server_group": {"name": "g", "policy": "spread"}}),
        )
        .await;
    assert_eq!(code, 400);
    assert!(
        reply["badRequest"]["message"]
            .as_str()
            .unwrap()
            .starts_with("server_group.policy"),
        "{reply}"
    );
    let (code, _) = api.get("/compute/v2.1/servers?limit=0").await;
    assert_eq!(code, 400);

    // Nothing was created by any of it.
    assert!(api.servers().await.is_empty());
    let (_, flavors) = api.get("/compute/v2.1/flavors").await;
    assert_eq!(
        flavors["flavors"].as_array().unwrap().len(),
        5,
        "only the config's flavors"
    );
    let (_, groups) = api.get("/compute/v2.1/os-server-groups").await;
    assert_eq!(groups["server_groups"].as_array().unwrap().len(), 0);
    for h in api.hypervisors().await {
        assert_eq!(h["vcpus_used"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_groups_and_traits_steer_placement() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(&site_config("edge-factory-01.yaml"), dir.path());
    let api = Api::login(&agent.url).await;

    let (code, g) = api
        .post(
            "/compute/v2.1/os-server-groups",
            json!({"server_group": {"name": "ha", "policies": ["anti-affinity"]}}),
        )
        .await;
    assert_eq!(code, 200, "{g}");
    let gid = g["server_group"]["id"].as_str().unwrap().to_string();
    let mut hosts = std::collections::BTreeSet::new();
    for i in 0..4 {
        let body = json!({"server": {"name": format!("ha-{i}"), "flavorRef": "2", "imageRef": IMAGE}, "os:scheduler_hints": {"group": gid}});
        let (code, s) = api.post("/compute/v2.1/servers", body).await;
        assert_eq!(code, 202, "{s}");
        let id = s["server"]["id"].as_str().unwrap();
        let s = api.get(&format!("/compute/v2.1/servers/{id}")).await.1;
        hosts.insert(
            s["server"]["OS-EXT-SRV-ATTR:host"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        hosts.len(),
        4,
        "anti-affinity spreads over all four compute hosts"
    );
    let body = json!({"server": {"name": "ha-4", "flavorRef": "2", "imageRef": IMAGE}, "os:scheduler_hints": {"group": gid}});
    let (code, s) = api.post("/compute/v2.1/servers", body).await;
    assert_eq!(code, 409);
    assert!(
        s["conflictingRequest"]["message"]
            .as_str()
            .unwrap()
            .contains("ServerGroupAntiAffinityFilter removed 4"),
        "{s}"
    );
    let (_, g) = api
        .get(&format!("/compute/v2.1/os-server-groups/{gid}"))
        .await;
    assert_eq!(g["server_group"]["members"].as_array().unwrap().len(), 4);

    // vision.gpu requires CUSTOM_GPU: only compute-2 and compute-3 have it.
    for i in 0..6 {
        let (code, s) = api.create_server(&format!("cam-{i}"), "10", IMAGE).await;
        assert_eq!(code, 202, "{s}");
        let id = s["server"]["id"].as_str().unwrap();
        let s = api.get(&format!("/compute/v2.1/servers/{id}")).await.1;
        let host = s["server"]["OS-EXT-SRV-ATTR:host"].as_str().unwrap();
        assert!(
            host == "compute-2" || host == "compute-3",
            "GPU server on {host}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_list_takes_client_default_filters() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(&site_config("vehicle-07.yaml"), dir.path());
    let api = Api::login(&agent.url).await;
    let (code, _) = api
        .create_server("a", "2", "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a98")
        .await;
    assert_eq!(code, 202);
    // What python-openstackclient sends for `server list`: unknown filters
    // are ignored as Nova does, booleans in Python's spelling are read.
    let (code, body) = api.get("/compute/v2.1/servers/detail?deleted=False&all_projects=False&changes-since=2020-01-01").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["servers"].as_array().unwrap().len(), 1);
    let (code, body) = api
        .get("/compute/v2.1/servers/detail?all_projects=maybe")
        .await;
    assert_eq!(code, 400);
    assert_eq!(
        body["badRequest"]["message"],
        "all_projects: must be true or false (got maybe)"
    );
    let (code, _) = api.get("/compute/v2.1/servers/detail?deleted=True").await;
    assert_eq!(code, 400);
}

/// Nova's microversion handshake: 2.1 is what this site speaks; a higher
/// one is refused with 406, a malformed one with 400, and every answer
/// says which version it is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_microversions_are_negotiated_as_nova_does() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(&site_config("vehicle-07.yaml"), dir.path());
    let api = Api::login(&agent.url).await;
    let call = |header: &'static str, value: &'static str| {
        let api = api.clone();
        async move {
            let mut req = api
                .http
                .get(format!("{}/compute/v2.1/servers", api.url))
                .header("X-Auth-Token", &api.token);
            if !header.is_empty() {
                req = req.header(header, value);
            }
            let resp = req.send().await.unwrap();
            let code = resp.status().as_u16();
            let answered = resp
                .headers()
                .get("OpenStack-API-Version")
                .map(|v| v.to_str().unwrap().to_string());
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            (code, answered, body)
        }
    };
    for (header, value) in [
        ("", ""),
        ("OpenStack-API-Version", "compute 2.1"),
        ("OpenStack-API-Version", "compute latest"),
        ("X-OpenStack-Nova-API-Version", "2.1"),
        // Another service's version is not compute's.
        ("OpenStack-API-Version", "volume 3.40"),
    ] {
        let (code, answered, body) = call(header, value).await;
        assert_eq!(code, 200, "{header}: {value}: {body}");
        assert_eq!(
            answered.as_deref(),
            Some("compute 2.1"),
            "{header}: {value}"
        );
    }
    let (code, _, body) = call("OpenStack-API-Version", "compute 2.60").await;
    assert_eq!(code, 406, "{body}");
    assert_eq!(
        body["notAcceptable"]["message"],
        "Version 2.60 is not supported by the API. Minimum is 2.1 and maximum is 2.1."
    );
    let (code, _, body) = call("X-OpenStack-Nova-API-Version", "2.x").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["badRequest"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid format"),
        "{body}"
    );
    // The version document says the same.
    let (code, doc) = api.get("/compute/v2.1").await;
    assert_eq!(code, 200);
    assert_eq!(doc["version"]["version"], "2.1");
    assert_eq!(doc["version"]["min_version"], "2.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_list_pages_keep_path_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(&site_config("vehicle-07.yaml"), dir.path());
    let api = Api::login(&agent.url).await;
    for name in ["cam-1", "cam-2", "cam-3", "other"] {
        let (code, body) = api
            .create_server(name, "2", "3c2b1a09-8f7e-4d6c-9b5a-4e3d2c1b0a98")
            .await;
        assert_eq!(code, 202, "{body}");
    }
    // Follow the next links as a client does: each must keep the detail
    // path and the name filter, so the pages hold exactly the cameras.
    let mut seen = Vec::new();
    let mut next = Some(format!(
        "{}/compute/v2.1/servers/detail?name=cam&limit=2",
        agent.url
    ));
    while let Some(url) = next.take() {
        let path = url.strip_prefix(&agent.url).unwrap().to_string();
        assert!(path.starts_with("/compute/v2.1/servers/detail?"), "{path}");
        let (code, body) = api.get(&path).await;
        assert_eq!(code, 200, "{body}");
        for s in body["servers"].as_array().unwrap() {
            assert!(s["flavor"].is_object(), "a detail view: {s}");
            seen.push(s["name"].as_str().unwrap().to_string());
        }
        next = body["servers_links"][0]["href"]
            .as_str()
            .map(str::to_string);
        assert!(seen.len() <= 4, "the pages never end: {seen:?}");
    }
    seen.sort();
    assert_eq!(seen, ["cam-1", "cam-2", "cam-3"]);
}

/// The token with one character in the middle of its claims changed.
fn tamper(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let mid = token.find('.').unwrap() + (token.rfind('.').unwrap() - token.find('.').unwrap()) / 2;
    chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}
