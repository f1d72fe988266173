//! The stock `openstack` client (python-openstackclient 10.5.0, installed
//! by `scripts/openstack-client.sh`) against a real site whose region is
//! unreachable: an operator's whole day through the tool they know, and
//! the refusals they would meet, read from the client's own output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use roost_tests::region::TestRegion;
use roost_tests::{repo_root, site_config, AgentProcess, ControllerProcess, ADMIN_PASSWORD};
use serde_json::Value;

const SITE: &str = "edge-factory-01";

fn client() -> PathBuf {
    let path = std::env::var_os("ROOST_OPENSTACK_CLIENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/openstack-client/bin/openstack"));
    assert!(
        path.exists(),
        "{} is missing: run ./scripts/openstack-client.sh (./scripts/test.sh does) to install python-openstackclient",
        path.display()
    );
    path
}

/// The `openstack` command as an operator runs it: at a site, or at the
/// controller with a site as the region.
#[derive(Clone)]
struct Cli {
    exe: PathBuf,
    auth_url: String,
    user: String,
    password: String,
    project: String,
    region: Option<String>,
}

/// What one run printed.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Cli {
    fn run(&self, args: &[&str]) -> Out {
        let out = Command::new(&self.exe)
            .args(args)
            .env("OS_AUTH_URL", &self.auth_url)
            .env("OS_USERNAME", &self.user)
            .env("OS_PASSWORD", &self.password)
            .env("OS_PROJECT_NAME", &self.project)
            .env("OS_USER_DOMAIN_NAME", "Default")
            .env("OS_PROJECT_DOMAIN_NAME", "Default")
            .env("OS_IDENTITY_API_VERSION", "3")
            .env("OS_REGION_NAME", self.region.as_deref().unwrap_or(""))
            .env_remove("OS_CLOUD")
            .output()
            .expect("run openstack");
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed and prints JSON (`-f json`).
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-f", "json"]);
        let out = self.run(&all);
        assert!(out.ok, "openstack {}: {}", args.join(" "), out.stderr);
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("openstack {}: {e}: {}", args.join(" "), out.stdout))
    }

    /// Runs a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.ok, "openstack {}: {}", args.join(" "), out.stderr);
        out.stdout
    }

    /// `image save` of `name` to `to`, which must hold what `original` does.
    fn save_image(&self, name: &str, to: &Path, original: &Path) {
        self.ok(&["image", "save", "--file", to.to_str().unwrap(), name]);
        assert_eq!(
            std::fs::read(to).unwrap(),
            std::fs::read(original).unwrap(),
            "image {name} saved whole"
        );
    }

    /// Runs a command that must fail; returns what it said.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.ok,
            "openstack {} succeeded: {}",
            args.join(" "),
            out.stdout
        );
        out.stderr
    }

    fn server_status(&self, name: &str) -> String {
        self.ok(&["server", "show", name, "-f", "value", "-c", "status"])
            .trim()
            .to_string()
    }

    fn wait_status(&self, name: &str, want: &str) {
        self.wait_status_within(name, want, Duration::from_secs(30))
    }

    /// Waits for a volume (`["volume"]`) or snapshot (`["volume",
    /// "snapshot"]`) to reach `want`.
    fn wait_volume(&self, kind: &[&str], name: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let args: Vec<&str> = kind
                .iter()
                .copied()
                .chain(["show", name, "-f", "value", "-c", "status"])
                .collect();
            let now = self.ok(&args).trim().to_string();
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{kind:?} {name} is {now}, not {want}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn wait_status_within(&self, name: &str, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.server_status(name);
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server {name} is {now}, not {want}, after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|v| v["Name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A site enrolled in region `eu` whose region has gone: the agent keeps
/// trying to reach it while the operator works.
fn offline_site(dir: &Path) -> AgentProcess {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let region = TestRegion::start("eu", SITE);
    let data = dir.join("data");
    std::fs::create_dir_all(data.join("pki")).unwrap();
    region.enroll(SITE).write_pem(&data.join("pki")).unwrap();
    let config = dir.join("site.yaml");
    let text = std::fs::read_to_string(site_config("edge-factory-01.yaml")).unwrap()
        + &format!("\nregion:\n  name: eu\n  address: {}\n", region.addr);
    std::fs::write(&config, text).unwrap();
    drop(region);
    AgentProcess::start(&config, &data)
}

#[test]
fn the_openstack_client_runs_a_site_whose_region_is_unreachable() {
    let exe = client();
    let dir = tempfile::tempdir().unwrap();
    let agent = offline_site(dir.path());
    let cli = Cli {
        exe,
        auth_url: format!("{}/identity/v3", agent.url),
        user: "admin".into(),
        password: ADMIN_PASSWORD.into(),
        project: "admin".into(),
        region: None,
    };

    // A token from the site's own Keystone.
    let token = cli.json(&["token", "issue"]);
    assert!(
        token["id"].as_str().unwrap().starts_with("rst1."),
        "{token}"
    );
    assert_eq!(token["project_id"].as_str().unwrap().len(), 32);

    // A wrong password: Keystone's 401, and nothing else happens.
    let wrong = Cli {
        password: "not-the-password".into(),
        ..cli.clone()
    };
    let said = wrong.fails(&["server", "list"]);
    assert!(
        said.contains("401") && said.contains("requires authentication"),
        "{said}"
    );

    // A token revoked at the site is refused from then on, restart or not.
    let second = cli
        .ok(&["token", "issue", "-f", "value", "-c", "id"])
        .trim()
        .to_string();
    let servers_with = |agent: &AgentProcess, token: &str| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let resp = reqwest::Client::new()
                .get(format!("{}/compute/v2.1/servers", agent.url))
                .header("X-Auth-Token", token)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        })
    };
    assert_eq!(servers_with(&agent, &second).0, 200);
    cli.ok(&["token", "revoke", &second]);
    let (code, body) = servers_with(&agent, &second);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    let (config, data) = (agent.config.clone(), agent.data_dir.clone());
    drop(agent);
    let agent = AgentProcess::start(&config, &data);
    let cli = Cli {
        auth_url: format!("{}/identity/v3", agent.url),
        ..cli
    };
    assert_eq!(
        servers_with(&agent, &second).0,
        401,
        "still revoked after a restart"
    );

    // Flavor.
    let flavor = cli.json(&[
        "flavor",
        "create",
        "--vcpus",
        "1",
        "--ram",
        "256",
        "--disk",
        "1",
        "cli.small",
    ]);
    assert_eq!(flavor["ram"], 256);
    assert_eq!(flavor["vcpus"], 1);
    assert!(names(&cli.json(&["flavor", "list"])).contains(&"cli.small".to_string()));

    // Image: made with qemu-img, uploaded, listed, and read back whole.
    let qcow2 = dir.path().join("plc.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("64M")
        .status()
        .expect("qemu-img (Debian's qemu-utils; ./scripts/setup.sh installs it)");
    assert!(made.success());
    let qcow2_arg = qcow2.to_str().unwrap();
    let image = cli.json(&[
        "image",
        "create",
        "--file",
        qcow2_arg,
        "--disk-format",
        "qcow2",
        "--container-format",
        "bare",
        "plc-image",
    ]);
    assert_eq!(image["status"], "active", "{image}");
    let size = std::fs::metadata(&qcow2).unwrap().len();
    assert_eq!(image["size"], size);
    assert_eq!(image["virtual_size"], 64 << 20);
    let image_id = image["id"].as_str().unwrap().to_string();
    let stored = agent.data_dir.join("images").join(&image_id);
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        std::fs::read(&qcow2).unwrap()
    );
    cli.save_image("plc-image", &dir.path().join("back.qcow2"), &qcow2);
    // A qcow2 file called raw is refused, and the client removes the
    // record it made: the image list is as before.
    let said = cli.fails(&[
        "image",
        "create",
        "--file",
        qcow2_arg,
        "--disk-format",
        "raw",
        "disguised",
    ]);
    assert!(
        said.contains("400") && said.contains("is a qcow2 image"),
        "{said}"
    );
    let images = names(&cli.json(&["image", "list"]));
    assert!(images.contains(&"plc-image".to_string()), "{images:?}");
    assert!(!images.contains(&"disguised".to_string()), "{images:?}");

    // Network, subnet, security group and rule.
    let net = cli.json(&["network", "create", "plant-floor"]);
    assert_eq!(net["status"], "ACTIVE", "{net}");
    let subnet = cli.json(&[
        "subnet",
        "create",
        "--network",
        "plant-floor",
        "--subnet-range",
        "10.77.0.0/24",
        "plant-v4",
    ]);
    assert_eq!(subnet["gateway_ip"], "10.77.0.1", "{subnet}");
    let port = cli.json(&["port", "create", "--network", "plant-floor", "plc-port"]);
    assert!(
        port["fixed_ips"].to_string().contains("10.77.0.2"),
        "{port}"
    );
    // IPv6 with the site as the router: the client's mode flags are kept,
    // a port's address is its MAC's EUI-64, and a bad mode is named.
    cli.json(&["network", "create", "cells-v6"]);
    let v6 = cli.json(&[
        "subnet",
        "create",
        "--network",
        "cells-v6",
        "--ip-version",
        "6",
        "--subnet-range",
        "fd00:77::/64",
        "--ipv6-ra-mode",
        "slaac",
        "--ipv6-address-mode",
        "slaac",
        "cells-v6",
    ]);
    assert_eq!(v6["ipv6_address_mode"], "slaac", "{v6}");
    assert_eq!(v6["ipv6_ra_mode"], "slaac", "{v6}");
    let p6 = cli.json(&["port", "create", "--network", "cells-v6", "cam-6"]);
    let mac = p6["mac_address"].as_str().unwrap();
    let eui = roost_common::model::eui64("fd00:77::".parse().unwrap(), mac).unwrap();
    assert!(
        p6["fixed_ips"].to_string().contains(&eui.to_string()),
        "{p6}"
    );
    let said = cli.fails(&[
        "subnet",
        "create",
        "--network",
        "cells-v6",
        "--ip-version",
        "6",
        "--subnet-range",
        "fd00:78::/80",
        "--ipv6-ra-mode",
        "slaac",
        "--ipv6-address-mode",
        "slaac",
        "too-long",
    ]);
    assert!(said.contains("must be a /64"), "{said}");
    cli.ok(&["port", "delete", "cam-6"]);
    cli.ok(&["network", "delete", "cells-v6"]);
    cli.json(&["security", "group", "create", "ssh-in"]);
    let rule = cli.json(&[
        "security",
        "group",
        "rule",
        "create",
        "--protocol",
        "tcp",
        "--dst-port",
        "22",
        "ssh-in",
    ]);
    assert_eq!(rule["port_range_min"], 22, "{rule}");
    // A port's groups and name change in place.
    cli.ok(&[
        "port",
        "set",
        "--security-group",
        "ssh-in",
        "--name",
        "plc-port-a",
        port["id"].as_str().unwrap(),
    ]);
    let changed = cli.json(&["port", "show", "plc-port-a"]);
    let ssh_in = cli.json(&["security", "group", "show", "ssh-in"]);
    assert!(
        changed["security_group_ids"]
            .to_string()
            .contains(ssh_in["id"].as_str().unwrap()),
        "{changed}"
    );
    cli.ok(&["port", "set", "--name", "plc-port", "plc-port-a"]);
    // Overlapping subnet: Neutron's 400, nothing made.
    let said = cli.fails(&[
        "subnet",
        "create",
        "--network",
        "plant-floor",
        "--subnet-range",
        "10.77.0.128/25",
        "overlap",
    ]);
    assert!(said.contains("400") && said.contains("overlap"), "{said}");

    // A server on that network from that image and flavor.
    let server = cli.json(&[
        "server",
        "create",
        "--flavor",
        "cli.small",
        "--image",
        "plc-image",
        "--network",
        "plant-floor",
        "--wait",
        "plc-1",
    ]);
    assert_eq!(server["status"], "ACTIVE", "{server}");
    // Renamed and back, as an operator fixes a typo.
    cli.ok(&["server", "set", "--name", "plc-one", "plc-1"]);
    assert_eq!(cli.server_status("plc-one"), "ACTIVE");
    cli.ok(&["server", "set", "--name", "plc-1", "plc-one"]);
    let list = cli.json(&["server", "list"]);
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Name"] == "plc-1")
        .unwrap_or_else(|| panic!("plc-1 not listed: {list}"))
        .clone();
    assert_eq!(row["Status"], "ACTIVE");
    assert!(row["Networks"].to_string().contains("10.77.0."), "{row}");
    assert_eq!(row["Image"], "plc-image");
    assert_eq!(row["Flavor"], "cli.small");

    cli.ok(&["server", "stop", "plc-1"]);
    cli.wait_status("plc-1", "SHUTOFF");
    cli.ok(&["server", "start", "plc-1"]);
    cli.wait_status("plc-1", "ACTIVE");
    cli.ok(&["server", "reboot", "--wait", "plc-1"]);
    cli.wait_status("plc-1", "ACTIVE");

    // Volumes: qcow2 files made by qemu-img, attached to the server,
    // snapshotted, detached, restored from the snapshot, extended.
    let vol = cli.json(&["volume", "create", "--size", "1", "plc-data"]);
    assert_eq!(vol["size"], 1, "{vol}");
    cli.wait_volume(&["volume"], "plc-data", "available");
    let vol_id = vol["id"].as_str().unwrap().to_string();
    let vol_file = dir.path().join(format!("data/volumes/{vol_id}.qcow2"));
    assert!(vol_file.is_file(), "{}", vol_file.display());
    let said = cli.fails(&["volume", "create", "--size", "1", "--type", "gold", "bad"]);
    assert!(said.contains("volume.volume_type"), "{said}");
    let attached = cli.json(&["server", "add", "volume", "plc-1", "plc-data"]);
    assert_eq!(attached["Device"], "/dev/vdb", "{attached}");
    cli.wait_volume(&["volume"], "plc-data", "in-use");
    let listed = cli.ok(&["volume", "list"]);
    assert!(listed.contains("Attached to plc-1 on /dev/vdb"), "{listed}");
    let server = cli.json(&["server", "show", "plc-1"]);
    assert!(
        server["volumes_attached"].to_string().contains(&vol_id),
        "{server}"
    );
    let said = cli.fails(&["volume", "delete", "plc-data"]);
    assert!(
        said.contains("400") && said.contains("detach it first"),
        "{said}"
    );
    let said = cli.fails(&[
        "volume", "snapshot", "create", "--volume", "plc-data", "plc-snap",
    ]);
    assert!(said.contains("snapshot.force"), "{said}");
    // In use by a running server: a copy would be torn, so not even forced.
    let said = cli.fails(&[
        "volume", "snapshot", "create", "--volume", "plc-data", "--force", "plc-snap",
    ]);
    assert!(said.contains("server is running"), "{said}");
    cli.ok(&["server", "remove", "volume", "plc-1", "plc-data"]);
    cli.wait_volume(&["volume"], "plc-data", "available");
    cli.json(&[
        "volume", "snapshot", "create", "--volume", "plc-data", "plc-snap",
    ]);
    cli.wait_volume(&["volume", "snapshot"], "plc-snap", "available");
    cli.json(&["volume", "create", "--snapshot", "plc-snap", "plc-restore"]);
    cli.wait_volume(&["volume"], "plc-restore", "available");
    cli.ok(&["volume", "set", "--size", "2", "plc-data"]);
    cli.wait_volume(&["volume"], "plc-data", "available");
    let shown = cli.json(&["volume", "show", "plc-data"]);
    assert_eq!(shown["size"], 2, "{shown}");
    // An extend that fails (the file gone from under it) leaves the volume
    // in error; an admin's `volume set --state available` is refused while
    // the file is missing and, once it is back, makes the volume available
    // at the file's own size.
    let restore = cli.json(&["volume", "show", "plc-restore"]);
    let restore_file = dir.path().join(format!(
        "data/volumes/{}.qcow2",
        restore["id"].as_str().unwrap()
    ));
    let aside = restore_file.with_extension("aside");
    std::fs::rename(&restore_file, &aside).unwrap();
    cli.ok(&["volume", "set", "--size", "3", "plc-restore"]);
    cli.wait_volume(&["volume"], "plc-restore", "error");
    let said = cli.fails(&["volume", "set", "--state", "available", "plc-restore"]);
    assert!(said.contains("missing or damaged"), "{said}");
    let said = cli.fails(&["volume", "set", "--state", "creating", "plc-restore"]);
    assert!(said.contains("os-reset_status.status"), "{said}");
    std::fs::rename(&aside, &restore_file).unwrap();
    cli.ok(&["volume", "set", "--state", "available", "plc-restore"]);
    cli.wait_volume(&["volume"], "plc-restore", "available");
    let shown = cli.json(&["volume", "show", "plc-restore"]);
    assert_eq!(
        shown["size"], 1,
        "the file's size, not the failed extend's: {shown}"
    );

    // Quotas: the region set none, so nothing limits this site; the usage
    // counts the server and the volumes.
    let quota = cli.json(&["quota", "show", "--usage"]);
    let row = |name: &str| {
        quota
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["Resource"] == name)
            .unwrap_or_else(|| panic!("no {name} in {quota}"))
            .clone()
    };
    for (name, in_use) in [
        ("instances", 1),
        ("cores", 1),
        ("ram", 256),
        ("networks", 1),
        ("ports", 2),
        ("volumes", 2),
        ("snapshots", 1),
        ("gigabytes", 4),
    ] {
        let r = row(name);
        assert_eq!(
            (r["Limit"].as_i64(), r["In Use"].as_i64()),
            (Some(-1), Some(in_use)),
            "{name}: {r}"
        );
    }

    // In use: neither the image nor the flavor can go, and both say why.
    let said = cli.fails(&["image", "delete", "plc-image"]);
    assert!(
        said.contains("409") && said.contains("in use by server"),
        "{said}"
    );
    let said = cli.fails(&["flavor", "delete", "cli.small"]);
    assert!(
        said.contains("409") && said.contains("in use by server"),
        "{said}"
    );
    // Booting from a volume is not built: refused by name.
    let said = cli.fails(&[
        "server",
        "create",
        "--flavor",
        "cli.small",
        "--image",
        "plc-image",
        "--boot-from-volume",
        "1",
        "--network",
        "plant-floor",
        "vol-1",
    ]);
    assert!(said.contains("block_device_mapping_v2[0]"), "{said}");

    // Tear down in order; each goes.
    cli.ok(&["volume", "snapshot", "delete", "plc-snap"]);
    cli.ok(&["volume", "delete", "plc-data", "plc-restore"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !names(&cli.json(&["volume", "list"])).is_empty() {
        assert!(Instant::now() < deadline, "volumes not deleted");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(!vol_file.exists(), "the volume's file is removed with it");
    cli.ok(&["server", "delete", "--wait", "plc-1"]);
    assert!(!names(&cli.json(&["server", "list"])).contains(&"plc-1".to_string()));
    cli.ok(&["image", "delete", "plc-image"]);
    assert!(!stored.exists(), "the image's file is removed with it");
    cli.ok(&["flavor", "delete", "cli.small"]);
    cli.ok(&["port", "delete", "plc-port"]);
    cli.ok(&["subnet", "delete", "plant-v4"]);
    cli.ok(&["network", "delete", "plant-floor"]);
    cli.ok(&["security", "group", "delete", "ssh-in"]);
    assert!(!names(&cli.json(&["image", "list"])).contains(&"plc-image".to_string()));
    assert!(!names(&cli.json(&["flavor", "list"])).contains(&"cli.small".to_string()));
    assert!(!names(&cli.json(&["network", "list"])).contains(&"plant-floor".to_string()));
}

/// An operator gives the line's crew their own accounts at a site whose
/// region is unreachable: a project, users, roles; each then works with
/// the client as themselves, and the policy decides what each may do.
#[test]
fn the_openstack_client_manages_users_projects_and_roles_at_a_site() {
    let dir = tempfile::tempdir().unwrap();
    let agent = offline_site(dir.path());
    let admin = Cli {
        exe: client(),
        auth_url: format!("{}/identity/v3", agent.url),
        user: "admin".into(),
        password: ADMIN_PASSWORD.into(),
        project: "admin".into(),
        region: None,
    };
    let project = admin.json(&[
        "project",
        "create",
        "line-2",
        "--description",
        "Assembly line 2",
    ]);
    let line2 = project["id"].as_str().unwrap().to_string();
    assert_eq!(project["name"], "line-2");
    for (user, pw) in [("alice", "alice-secret-1"), ("bob", "bob-secret-22")] {
        let u = admin.json(&[
            "user",
            "create",
            user,
            "--password",
            pw,
            "--project",
            "line-2",
        ]);
        assert_eq!(u["default_project_id"], line2.as_str(), "{u}");
    }
    admin.ok(&[
        "role",
        "add",
        "--user",
        "alice",
        "--project",
        "line-2",
        "member",
    ]);
    admin.ok(&[
        "role",
        "add",
        "--user",
        "bob",
        "--project",
        "line-2",
        "reader",
    ]);
    let roles = admin.json(&["role", "list"]);
    assert_eq!(names(&roles), ["admin", "member", "reader"]);
    let said = admin.fails(&["role", "create", "operator"]);
    assert!(said.contains("fixed"), "{said}");
    let assigned = admin.json(&[
        "role",
        "assignment",
        "list",
        "--project",
        "line-2",
        "--names",
    ]);
    let mut pairs: Vec<(String, String)> = assigned
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["User"].as_str().unwrap().into(),
                a["Role"].as_str().unwrap().into(),
            )
        })
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            ("alice@Default".to_string(), "member".to_string()),
            ("bob@Default".to_string(), "reader".to_string())
        ]
    );

    let as_user = |user: &str, pw: &str| Cli {
        user: user.into(),
        password: pw.into(),
        project: "line-2".into(),
        ..admin.clone()
    };
    let alice = as_user("alice", "alice-secret-1");
    let bob = as_user("bob", "bob-secret-22");
    let net = alice.json(&["network", "create", "line-2-cells"]);
    assert_eq!(net["project_id"], line2.as_str(), "{net}");
    let said = alice.fails(&[
        "flavor",
        "create",
        "--vcpus",
        "1",
        "--ram",
        "64",
        "--disk",
        "1",
        "crew.small",
    ]);
    assert!(said.contains("compute:flavors:create"), "{said}");
    assert!(names(&bob.json(&["network", "list"])).contains(&"line-2-cells".to_string()));
    let said = bob.fails(&["network", "create", "sneaky"]);
    assert!(said.contains("network:networks:create"), "{said}");
    let said = bob.fails(&["user", "list"]);
    assert!(
        said.contains("403") || said.contains("identity:users:list"),
        "{said}"
    );
    assert!(!names(&admin.json(&["network", "list"])).contains(&"sneaky".to_string()));

    // A role taken away, a user disabled: they are out at once.
    admin.ok(&[
        "role",
        "remove",
        "--user",
        "alice",
        "--project",
        "line-2",
        "member",
    ]);
    let said = alice.fails(&["network", "list"]);
    assert!(said.contains("401"), "{said}");
    admin.ok(&["user", "set", "--disable", "bob"]);
    let said = bob.fails(&["network", "list"]);
    assert!(said.contains("401"), "{said}");

    // A project that still owns a network stays; emptied, it goes.
    let said = admin.fails(&["project", "delete", "line-2"]);
    assert!(said.contains("1 networks"), "{said}");
    admin.ok(&["network", "delete", "line-2-cells"]);
    admin.ok(&["project", "delete", "line-2"]);
    admin.ok(&["user", "delete", "alice", "bob"]);
    assert_eq!(names(&admin.json(&["user", "list"])), ["admin"]);

    // Compute speaks microversion 2.1 and refuses what it does not serve.
    let said = admin.fails(&["--os-compute-api-version", "2.60", "server", "list"]);
    assert!(said.contains("maximum of 2.1"), "{said}");
}

/// A token from the region's Keystone for `user`, over plain HTTP.
async fn region_token(api: &str, user: &str, password: &str) -> String {
    let auth = reqwest::Client::new()
        .post(format!("{api}/identity/v3/auth/tokens"))
        .json(&serde_json::json!({"auth": {"identity": {"methods": ["password"],
            "password": {"user": {"name": user, "domain": {"id": "default"}, "password": password}}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(auth.status().as_u16(), 201, "{user}");
    auth.headers()["X-Subject-Token"]
        .to_str()
        .unwrap()
        .to_string()
}

/// Waits until `f` holds, polling every 300 ms.
fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_openstack_client_at_the_controller_sees_each_site_as_a_region() {
    let exe = client();
    let dir = tempfile::tempdir().unwrap();
    let region_cfg = site_config("region.yaml");
    let cdata = dir.path().join("controller");
    let out = ControllerProcess::token(&region_cfg, &cdata, SITE);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut controller = ControllerProcess::start(&region_cfg, &cdata);
    let site_cfg = dir.path().join("site.yaml");
    let text = std::fs::read_to_string(site_config("edge-factory-01.yaml")).unwrap()
        + &format!(
            "\nregion:\n  name: eu-central\n  address: {}\n  central_api: {}\n  join_token: {token}\n",
            controller.quic, controller.api
        );
    std::fs::write(&site_cfg, text).unwrap();
    let site_data = dir.path().join("site");
    let mut agent = AgentProcess::start(&site_cfg, &site_data);

    let cli = Cli {
        exe,
        auth_url: format!("{}/identity/v3", controller.api),
        user: "admin".into(),
        password: controller.admin_token(),
        project: "admin".into(),
        region: Some(SITE.into()),
    };
    // The region's Keystone: the admin token is admin's password.
    let token = cli.json(&["token", "issue"]);
    assert!(
        token["id"].as_str().unwrap().starts_with("rgt1."),
        "{token}"
    );
    let said = Cli {
        password: "wrong".into(),
        ..cli.clone()
    }
    .fails(&["server", "list"]);
    assert!(said.contains("401"), "{said}");
    // A region the catalog does not have.
    let said = Cli {
        region: Some("nowhere-01".into()),
        ..cli.clone()
    }
    .fails(&["server", "list"]);
    assert!(said.to_lowercase().contains("endpoint"), "{said}");

    // Once the site synced, its flavors and images are the region's to use.
    wait_until(
        "the site's images reach the region",
        Duration::from_secs(30),
        || {
            let out = cli.run(&["image", "list", "-f", "json"]);
            out.ok && out.stdout.contains("debian-12-generic")
        },
    );
    assert!(names(&cli.json(&["flavor", "list"])).contains(&"m1.small".to_string()));

    // An image made at the region for the site: the region keeps it, the
    // site fetches it and publishes it active; the region then serves it
    // as the site reports it.
    let qcow = dir.path().join("line-os.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow)
        .arg("64M")
        .status()
        .unwrap();
    assert!(made.success());
    let img = cli.json(&[
        "image",
        "create",
        "--disk-format",
        "qcow2",
        "--file",
        qcow.to_str().unwrap(),
        "line-os",
    ]);
    assert!(
        ["importing", "active"].contains(&img["status"].as_str().unwrap_or_default()),
        "{img}"
    );
    wait_until(
        "the region's image to be active at the site",
        Duration::from_secs(60),
        || cli.json(&["image", "show", "line-os"])["status"] == "active",
    );
    let shown = cli.json(&["image", "show", "line-os"]);
    assert_eq!(
        shown["size"],
        std::fs::metadata(&qcow).unwrap().len(),
        "{shown}"
    );
    let stored = site_data.join(format!("images/{}", img["id"].as_str().unwrap()));
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        std::fs::read(&qcow).unwrap()
    );
    // The region's copy comes back whole through the client.
    cli.save_image("line-os", &dir.path().join("line-os.saved"), &qcow);

    // Online: the request becomes a server the site runs, and the region
    // shows what the site reported.
    cli.json(&[
        "server",
        "create",
        "--flavor",
        "m1.small",
        "--image",
        "debian-12-generic",
        "line-1",
    ]);
    cli.wait_status("line-1", "ACTIVE");
    // Actions from the region are intent too; the site acts and reports.
    cli.ok(&["server", "stop", "line-1"]);
    cli.wait_status("line-1", "SHUTOFF");
    cli.ok(&["server", "start", "line-1"]);
    cli.wait_status("line-1", "ACTIVE");
    let shown = cli.json(&["server", "show", "line-1"]);
    assert!(
        shown["OS-EXT-SRV-ATTR:host"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{shown}"
    );

    // Offline: the request is kept as intent and shown as not yet synced.
    agent.terminate();
    let queued = cli.json(&[
        "server",
        "create",
        "--flavor",
        "m1.small",
        "--image",
        "debian-12-generic",
        "line-2",
    ]);
    assert_eq!(queued["status"], "BUILD", "{queued}");
    assert_eq!(queued["OS-EXT-STS:task_state"], "scheduling", "{queued}");
    assert!(queued["OS-EXT-SRV-ATTR:host"].is_null(), "{queued}");
    cli.ok(&["server", "delete", "line-1"]);
    let list = cli.json(&["server", "list"]);
    assert_eq!(
        names(&list).len(),
        2,
        "line-1 stays listed until the site removes it: {list}"
    );

    // The region checks what it can before the site is reachable: an
    // image the site does not hold is refused by name, in Nova's shape.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (code, body, detail) = rt.block_on(async {
        let http = reqwest::Client::new();
        let token = region_token(&controller.api, "admin", &cli.password).await;
        let resp = http
            .post(format!(
                "{}/sites/{SITE}/compute/v2.1/servers",
                controller.api
            ))
            .header("X-Auth-Token", &token)
            .json(
                &serde_json::json!({"server": {"name": "x", "flavorRef": "m1.small",
                "imageRef": "99999999-2222-4333-8444-555555555555", "networks": "none"}}),
            )
            .send()
            .await
            .unwrap();
        let refused = (resp.status().as_u16(), resp.json::<Value>().await.unwrap());
        let detail: Value = http
            .get(format!(
                "{}/sites/{SITE}/compute/v2.1/servers/detail",
                controller.api
            ))
            .header("X-Auth-Token", &token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (refused.0, refused.1, detail)
    });
    // What the site last reported, and what it has not seen yet.
    let synced = |name: &str| {
        detail["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .map(|v| v["roost:synced"].clone())
    };
    assert_eq!(synced("line-1"), Some(Value::Bool(true)), "{detail}");
    assert_eq!(synced("line-2"), Some(Value::Bool(false)), "{detail}");
    assert_eq!(code, 400, "{body}");
    let message = body["badRequest"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("server.imageRef") && message.contains("debian-12-generic"),
        "{message}"
    );
    assert!(!names(&cli.json(&["server", "list"])).contains(&"x".to_string()));

    // Back online: the site runs line-2 and removes line-1.
    let mut agent = AgentProcess::start(&site_cfg, &site_data);
    cli.wait_status_within("line-2", "ACTIVE", Duration::from_secs(60));
    wait_until("line-1 is gone", Duration::from_secs(60), || {
        !names(&cli.json(&["server", "list"])).contains(&"line-1".to_string())
    });
    // The site's own API agrees.
    let site_cli = Cli {
        exe: cli.exe.clone(),
        auth_url: format!("{}/identity/v3", agent.url),
        user: "admin".into(),
        password: ADMIN_PASSWORD.into(),
        project: "admin".into(),
        region: None,
    };
    assert_eq!(
        names(&site_cli.json(&["server", "list"])),
        vec!["line-2".to_string()]
    );

    // Region tokens work at the site, checked there with the region's keys
    // and revocations as they synced; a revoked one stops working there
    // too, and the checks go on while the region is down.
    let issue = || {
        cli.ok(&["token", "issue", "-f", "value", "-c", "id"])
            .trim()
            .to_string()
    };
    let (kept, revoked) = (issue(), issue());
    assert!(
        kept.starts_with("rgt1.") && revoked.starts_with("rgt1."),
        "{kept}"
    );
    let site_servers = |token: &str| {
        rt.block_on(async {
            let resp = reqwest::Client::new()
                .get(format!("{}/compute/v2.1/servers", agent.url))
                .header("X-Auth-Token", token)
                .send()
                .await
                .unwrap();
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap_or_default(),
            )
        })
    };
    let (code, body) = site_servers(&kept);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["servers"][0]["name"], "line-2", "{body}");
    cli.ok(&["token", "revoke", &revoked]);
    assert!(cli
        .fails(&["token", "revoke", "rgt1.not.a-token"])
        .contains("404"));
    wait_until(
        "the site refuses the revoked token",
        Duration::from_secs(30),
        || site_servers(&revoked).0 == 401,
    );
    let controller_api = controller.api.clone();
    let viewer_password = std::fs::read_to_string(cdata.join("viewer.token")).unwrap();
    let viewer = rt.block_on(region_token(
        &controller_api,
        "viewer",
        viewer_password.trim(),
    ));
    controller.terminate();
    let (code, body) = site_servers(&kept);
    assert_eq!(
        code, 200,
        "region down, token still checked at the site: {body}"
    );
    let (code, body) = site_servers(&revoked);
    assert_eq!(code, 401, "{body}");
    assert!(body.to_string().contains("revoked"), "{body}");
    // The region's viewer (reader role) looks at the site and changes
    // nothing there.
    let (listed, refused) = rt.block_on(async {
        let http = reqwest::Client::new();
        let listed = http
            .get(format!("{}/compute/v2.1/servers", agent.url))
            .header("X-Auth-Token", &viewer)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        let resp = http
            .post(format!("{}/compute/v2.1/flavors", agent.url))
            .header("X-Auth-Token", &viewer)
            .json(&serde_json::json!({"flavor": {"name": "sneaky", "vcpus": 1, "ram": 64, "disk": 1}}))
            .send()
            .await
            .unwrap();
        (listed, (resp.status().as_u16(), resp.text().await.unwrap()))
    });
    assert_eq!(listed, 200);
    assert_eq!(refused.0, 403, "{}", refused.1);
    assert!(
        refused.1.contains("the region's viewer only looks"),
        "{}",
        refused.1
    );
    // A token whose claims were changed under the region's signature.
    let (head, sig) = kept.rsplit_once('.').unwrap();
    let forged = format!("{head}x.{sig}");
    assert_eq!(site_servers(&forged).0, 401);
    agent.terminate();
}
