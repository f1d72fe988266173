//! Keystone's users, projects and roles at a site, and the policy that
//! decides what each token may do, against the real agent: what a member,
//! a reader and an admin may do, what taking a role away does to tokens
//! already out (across a restart too), and an operator's policy file, good
//! and bad.

use std::process::Command;

use reqwest::Method;
use roost_tests::{binary, site_config, AgentProcess, Api};
use serde_json::{json, Value};

/// Logs a store user in: status, body, token.
async fn login(
    url: &str,
    user: &str,
    password: &str,
    project: Option<&str>,
) -> (u16, Value, Option<String>) {
    let mut auth = json!({"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": password}}}});
    if let Some(p) = project {
        auth["scope"] = json!({"project": {"name": p, "domain": {"id": "default"}}});
    }
    roost_tests::auth_with(&reqwest::Client::new(), url, &json!({ "auth": auth })).await
}

/// A client logged in as a store user; panics if the login fails.
async fn as_user(url: &str, user: &str, password: &str) -> Api {
    let (code, body, token) = login(url, user, password, None).await;
    assert_eq!(code, 201, "{user}: {body}");
    Api::with_token(
        url,
        &token.unwrap(),
        body["token"]["project"]["id"].as_str().unwrap(),
    )
}

fn message(body: &Value) -> String {
    body.as_object()
        .and_then(|o| o.values().next())
        .and_then(|v| v["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_projects_and_roles_decide_what_each_token_may_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = AgentProcess::start(&site_config("vehicle-07.yaml"), dir.path());
    let admin = Api::login(&agent.url).await;

    // A project, then refusals that change nothing.
    let (code, body) = admin
        .post("/identity/v3/projects", json!({"project": {"name": "line-2", "description": "Assembly line 2", "domain_id": "default", "enabled": true}}))
        .await;
    assert_eq!(code, 201, "{body}");
    let line2 = body["project"]["id"].as_str().unwrap().to_string();
    assert_eq!(body["project"]["domain_id"], "default");
    for (bad, says) in [
        (json!({"project": {"name": "line-2"}}), "already exists"),
        (json!({"project": {"name": ""}}), "project.name"),
        (
            json!({"project": {"name": "x", "tags": ["a"]}}),
            "project.tags",
        ),
        (
            json!({"project": {"name": "x", "domain_id": "other"}}),
            "project.domain_id",
        ),
        (json!({"project": {"name": "x", "colour": "red"}}), "colour"),
    ] {
        let (code, body) = admin.post("/identity/v3/projects", bad.clone()).await;
        assert!(code == 400 || code == 409, "{bad}: {code} {body}");
        assert!(message(&body).contains(says), "{bad}: {body}");
    }
    let (_, listed) = admin.get("/identity/v3/projects").await;
    let names: Vec<&str> = listed["projects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "line-2"]);

    // Users: alice a member of line-2, bob a reader there.
    for (user, pw) in [("alice", "alice-secret-1"), ("bob", "bob-secret-22")] {
        let (code, body) = admin
            .post("/identity/v3/users", json!({"user": {"name": user, "password": pw, "default_project_id": line2, "enabled": true}}))
            .await;
        assert_eq!(code, 201, "{body}");
        assert!(body["user"].get("password").is_none(), "{body}");
    }
    for (bad, says) in [
        (
            json!({"user": {"name": "admin", "password": "long-enough-1"}}),
            "already exists",
        ),
        (
            json!({"user": {"name": "carol", "password": "short"}}),
            "user.password: must be 8 to 128 characters",
        ),
        (json!({"user": {"name": "carol"}}), "user.password"),
        (
            json!({"user": {"name": "carol", "password": "long-enough-1", "default_project_id": "nope"}}),
            "user.default_project_id",
        ),
    ] {
        let (code, body) = admin.post("/identity/v3/users", bad.clone()).await;
        assert!(code == 400 || code == 409, "{bad}: {code} {body}");
        assert!(message(&body).contains(says), "{bad}: {body}");
    }
    let (_, carol) = admin.get("/identity/v3/users?name=carol").await;
    assert_eq!(carol["users"], json!([]), "a refused user was not made");
    let id_of = |list: &Value, name: &str| {
        list["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (_, users) = admin.get("/identity/v3/users").await;
    let (alice_id, bob_id) = (id_of(&users, "alice"), id_of(&users, "bob"));
    assert!(users["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "admin"));

    // No role yet: no token.
    let (code, body, _) = login(&agent.url, "alice", "alice-secret-1", None).await;
    assert_eq!(code, 401, "{body}");
    assert!(message(&body).contains("no role"), "{body}");
    for (user, role) in [(&alice_id, "member"), (&bob_id, "reader")] {
        let (code, body) = admin
            .call(
                Method::PUT,
                &format!("/identity/v3/projects/{line2}/users/{user}/roles/{role}"),
                None,
            )
            .await;
        assert_eq!(code, 204, "{body}");
    }
    let (code, body) = admin
        .call(
            Method::PUT,
            &format!("/identity/v3/projects/{line2}/users/{alice_id}/roles/operator"),
            None,
        )
        .await;
    assert_eq!(code, 404);
    assert!(
        message(&body).contains("admin, member and reader"),
        "{body}"
    );
    let (_, assigned) = admin
        .get(&format!(
            "/identity/v3/role_assignments?scope.project.id={line2}&include_names=1"
        ))
        .await;
    let mut pairs: Vec<(String, String)> = assigned["role_assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["user"]["name"].as_str().unwrap().into(),
                a["role"]["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            ("alice".into(), "member".into()),
            ("bob".into(), "reader".into())
        ]
    );

    // Wrong password, a project without a role: refused alike.
    assert_eq!(
        login(&agent.url, "alice", "alice-secret-2", None).await.0,
        401
    );
    assert_eq!(
        login(&agent.url, "alice", "alice-secret-1", Some("admin"))
            .await
            .0,
        401
    );
    assert_eq!(
        login(&agent.url, "nobody", "alice-secret-1", None).await.0,
        401
    );

    // alice changes her project; bob reads it; neither does admin's work.
    let alice = as_user(&agent.url, "alice", "alice-secret-1").await;
    assert_eq!(alice.project, line2);
    let (code, net) = alice
        .post(
            "/network/v2.0/networks",
            json!({"network": {"name": "line-2-cells"}}),
        )
        .await;
    assert_eq!(code, 201, "{net}");
    assert_eq!(net["network"]["project_id"], line2.as_str());
    let net_id = net["network"]["id"].as_str().unwrap().to_string();
    let (code, body) = alice
        .post(
            "/compute/v2.1/flavors",
            json!({"flavor": {"name": "f", "vcpus": 1, "ram": 64, "disk": 1}}),
        )
        .await;
    assert_eq!(code, 403);
    assert!(message(&body).contains("compute:flavors:create"), "{body}");
    assert_eq!(alice.get("/identity/v3/users").await.0, 403);
    let bob = as_user(&agent.url, "bob", "bob-secret-22").await;
    let (code, nets) = bob.get("/network/v2.0/networks").await;
    assert_eq!(code, 200);
    assert!(
        nets["networks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == net_id.as_str()),
        "{nets}"
    );
    let (code, body) = bob
        .post(
            "/network/v2.0/networks",
            json!({"network": {"name": "sneaky"}}),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert!(message(&body).contains("network:networks:create"), "{body}");
    // The admin's list of networks does not show alice's in the admin
    // project's scope, and alice does not see admin's servers.
    let (_, mine) = alice.get("/compute/v2.1/servers?all_tenants=1").await;
    assert!(
        message(&mine).contains("compute:servers:list-all-projects"),
        "{mine}"
    );

    // Taking a role away ends tokens already out.
    let (code, _) = admin
        .call(
            Method::DELETE,
            &format!("/identity/v3/projects/{line2}/users/{alice_id}/roles/member"),
            None,
        )
        .await;
    assert_eq!(code, 204);
    let (code, body) = alice.get("/network/v2.0/networks").await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(
        login(&agent.url, "alice", "alice-secret-1", None).await.0,
        401
    );
    // Disabling a user does too, and a disabled user cannot log in.
    let (code, body) = admin
        .call(
            Method::PATCH,
            &format!("/identity/v3/users/{bob_id}"),
            Some(json!({"user": {"enabled": false}})),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(bob.get("/network/v2.0/networks").await.0, 401);
    assert_eq!(login(&agent.url, "bob", "bob-secret-22", None).await.0, 401);
    // The bootstrap admin is the config's, not changed here.
    let (code, _) = admin
        .call(
            Method::DELETE,
            &format!(
                "/identity/v3/users/{}",
                users["users"][0]["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(code, 403);

    // A project that owns something is not deleted.
    let (code, body) = admin
        .delete(&format!("/identity/v3/projects/{line2}"))
        .await;
    assert_eq!(code, 409, "{body}");
    assert!(message(&body).contains("1 networks"), "{body}");

    // Revocations outlive a restart.
    agent.terminate();
    let mut agent = AgentProcess::start(&agent.config.clone(), &agent.data_dir.clone());
    let bob = Api::with_token(&agent.url, &bob.token, &bob.project);
    assert_eq!(
        bob.get("/network/v2.0/networks").await.0,
        401,
        "bob's old token after a restart"
    );
    let admin = Api::login(&agent.url).await;
    let (code, _) = admin
        .call(
            Method::PATCH,
            &format!("/identity/v3/users/{bob_id}"),
            Some(json!({"user": {"enabled": true}})),
        )
        .await;
    assert_eq!(code, 200);
    let bob = as_user(&agent.url, "bob", "bob-secret-22").await;
    assert_eq!(
        bob.get("/network/v2.0/networks").await.0,
        200,
        "enabled again, a new token works"
    );
    assert_eq!(
        admin
            .delete(&format!("/network/v2.0/networks/{net_id}"))
            .await
            .0,
        204
    );
    assert_eq!(
        admin
            .delete(&format!("/identity/v3/projects/{line2}"))
            .await
            .0,
        204
    );
    assert_eq!(
        bob.get("/network/v2.0/networks").await.0,
        401,
        "the project's tokens end with it"
    );
    let (_, bob_now) = admin.get(&format!("/identity/v3/users/{bob_id}")).await;
    assert_eq!(bob_now["user"]["default_project_id"], Value::Null);
    agent.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_file_overrides_the_defaults_and_a_bad_one_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(site_config("vehicle-07.yaml")).unwrap();
    let config = dir.path().join("site.yaml");
    std::fs::write(
        &config,
        text.replace("api:\n", "api:\n  policy_file: policy.yaml\n"),
    )
    .unwrap();
    // Readers of this site may start and stop servers, nobody creates
    // networks but admins, and members may make flavors.
    std::fs::write(
        dir.path().join("policy.yaml"),
        "# vehicle-07: the driver's crew\n\
         compute:servers:action: \"rule:member or role:reader\"\n\
         compute:servers:action:rebuild: \"rule:member\"\n\
         network:networks:create: \"rule:admin\"\n\
         compute:flavors:create: \"rule:member\"\n\
         identity:projects:users:roles:update: \"rule:admin or (role:member and project_id:%(project_id)s)\"\n",
    )
    .unwrap();
    let agent = AgentProcess::start(&config, &dir.path().join("data"));
    let admin = Api::login(&agent.url).await;
    let (_, p) = admin
        .post(
            "/identity/v3/projects",
            json!({"project": {"name": "crew"}}),
        )
        .await;
    let crew = p["project"]["id"].as_str().unwrap().to_string();
    for (user, role) in [("driver", "reader"), ("mechanic", "member")] {
        let (code, u) = admin
            .post("/identity/v3/users", json!({"user": {"name": user, "password": "crew-secret-1", "default_project_id": crew}}))
            .await;
        assert_eq!(code, 201, "{u}");
        let uid = u["user"]["id"].as_str().unwrap();
        let (code, _) = admin
            .call(
                Method::PUT,
                &format!("/identity/v3/projects/{crew}/users/{uid}/roles/{role}"),
                None,
            )
            .await;
        assert_eq!(code, 204);
    }
    let (_, apprentice) = admin
        .post(
            "/identity/v3/users",
            json!({"user": {"name": "apprentice", "password": "crew-secret-1"}}),
        )
        .await;
    let apprentice = apprentice["user"]["id"].as_str().unwrap().to_string();
    let mechanic = as_user(&agent.url, "mechanic", "crew-secret-1").await;
    // The file lets members grant roles in their own project: only roles
    // they hold, only there.
    let grant = |project: &str, role: &str| {
        format!("/identity/v3/projects/{project}/users/{apprentice}/roles/{role}")
    };
    assert_eq!(
        mechanic
            .call(Method::PUT, &grant(&crew, "member"), None)
            .await
            .0,
        204
    );
    let (code, body) = mechanic
        .call(Method::PUT, &grant(&crew, "admin"), None)
        .await;
    assert_eq!(code, 403, "{body}");
    assert!(message(&body).contains("not yours to give"), "{body}");
    let (code, body) = mechanic
        .call(Method::PUT, &grant(&admin.project, "member"), None)
        .await;
    assert_eq!(code, 403, "another project's roles: {body}");
    assert!(
        message(&body).contains("identity:projects:users:roles:update"),
        "{body}"
    );
    let driver = as_user(&agent.url, "driver", "crew-secret-1").await;
    let (code, body) = mechanic
        .post("/network/v2.0/networks", json!({"network": {"name": "n"}}))
        .await;
    assert_eq!(
        code, 403,
        "the file made network creation admin-only: {body}"
    );
    let (code, body) = mechanic
        .post(
            "/compute/v2.1/flavors",
            json!({"flavor": {"name": "crew.small", "vcpus": 1, "ram": 256, "disk": 1}}),
        )
        .await;
    assert_eq!(code, 200, "the file let members make flavors: {body}");
    // The driver reaches the action handler (a stop of an unknown server
    // is a 404, not the policy's 403); creating is still refused.
    let (code, body) = driver
        .post(
            "/compute/v2.1/servers/00000000-0000-0000-0000-000000000000/action",
            json!({"os-stop": null}),
        )
        .await;
    assert_eq!(code, 404, "{body}");
    let (code, _) = driver.create_server("s", "crew.small", "cirros").await;
    assert_eq!(code, 403);
    // Rebuild, named apart, stays the members'.
    let (code, body) = driver
        .post(
            "/compute/v2.1/servers/00000000-0000-0000-0000-000000000000/action",
            json!({"rebuild": {"imageRef": "cirros"}}),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        message(&body).contains("compute:servers:action:rebuild"),
        "{body}"
    );
    drop(agent);

    // A bad file: the agent does not start, and says which rule and why.
    std::fs::write(
        dir.path().join("policy.yaml"),
        "compute:servers:explode: \"@\"\n",
    )
    .unwrap();
    let out = Command::new(binary("roost-agent"))
        .args(["run", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data2"))
        .args(["--api-listen", "127.0.0.1:0"])
        .env("ROOST_ADMIN_PASSWORD", roost_tests::ADMIN_PASSWORD)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("policy.yaml"), "{err}");
    assert!(err.contains("policy.compute:servers:explode"), "{err}");
    assert!(err.contains("not an action Roost checks"), "{err}");
    assert!(
        !dir.path().join("data2").join("roost.db").exists(),
        "nothing was made"
    );
}

/// What services and proxies need of Keystone: `?nocatalog` at a site, and
/// a controller behind a proxy naming the URL clients reach it at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_checks_skip_the_catalog_and_the_controller_names_its_public_url() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProcess::start(&site_config("vehicle-07.yaml"), &dir.path().join("site"));
    let admin = Api::login(&agent.url).await;
    let check = |query: &'static str| {
        let admin = admin.clone();
        async move {
            let resp = admin
                .http
                .get(format!("{}/identity/v3/auth/tokens{query}", admin.url))
                .header("X-Auth-Token", &admin.token)
                .header("X-Subject-Token", &admin.token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    assert!(check("").await["token"]["catalog"].is_array());
    let slim = check("?nocatalog").await;
    assert!(slim["token"].get("catalog").is_none(), "{slim}");
    assert_eq!(slim["token"]["roles"][0]["name"], "admin");

    let text = std::fs::read_to_string(site_config("region.yaml")).unwrap();
    let config = dir.path().join("region.yaml");
    std::fs::write(
        &config,
        text.replace(
            "api:\n  listen: 127.0.0.1:7443\n",
            "api:\n  listen: 127.0.0.1:7443\n  public_url: https://region.example:7443\n",
        ),
    )
    .unwrap();
    let controller = roost_tests::ControllerProcess::start(&config, &dir.path().join("controller"));
    let resp = reqwest::Client::new()
        .post(format!("{}/identity/v3/auth/tokens", controller.api))
        .json(&json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": controller.admin_token()}}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let body: Value = resp.json().await.unwrap();
    let urls: Vec<&str> = body["token"]["catalog"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["endpoints"].as_array().unwrap().iter())
        .map(|e| e["url"].as_str().unwrap())
        .collect();
    assert!(!urls.is_empty());
    assert!(
        urls.iter()
            .all(|u| u.starts_with("https://region.example:7443/")),
        "{urls:?}"
    );
    // A URL that is not one is refused at start, naming the field.
    std::fs::write(
        &config,
        text.replace(
            "api:\n  listen: 127.0.0.1:7443\n",
            "api:\n  listen: 127.0.0.1:7443\n  public_url: region.example\n",
        ),
    )
    .unwrap();
    let out = Command::new(binary("roost-controller"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("controller2"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("api.public_url"), "{err}");
}
