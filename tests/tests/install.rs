//! `roost-agent install` and `uninstall` as an installer runs them: the
//! real binary, inside a network namespace whose management interface is a
//! veth to a real controller, into a temporary root; the agent it starts
//! is real (libvirt's embedded driver, SQLite, QUIC) and must join the
//! region.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use roost_common::config::{self, SiteConfig};
use roost_tests::netns::SiteNet;
use roost_tests::{auth, binary, wait_for, ControllerProcess};

const REGION: &str = "region: {name: eu-test}\napi: {listen: 127.0.0.1:7443}\nquic: {listen: 127.0.0.1:7444}\nsites:\n  - id: edge-inst-01\n  - id: edge-inst-02\n";

/// One test's world: a namespace, a temporary root, the region's files.
struct World {
    net: SiteNet,
    dir: tempfile::TempDir,
    root: PathBuf,
    region: PathBuf,
    ctl_data: PathBuf,
}

impl World {
    fn new() -> World {
        let net = SiteNet::new();
        // Short: libvirt's embedded driver keeps sockets under the root.
        let dir = tempfile::Builder::new()
            .prefix("ri")
            .tempdir_in("/tmp")
            .unwrap();
        let region = dir.path().join("region.yaml");
        std::fs::write(&region, REGION).unwrap();
        std::fs::write(
            dir.path().join("net.yaml"),
            format!(
                "management: {{interface: {}, address: {}/24, gateway: {}}}\n",
                net.interface, net.site_ip, net.host_ip
            ),
        )
        .unwrap();
        World {
            root: dir.path().join("r"),
            ctl_data: dir.path().join("ctl"),
            region,
            net,
            dir,
        }
    }

    fn controller_at(&self, api: &str, quic: &str) -> ControllerProcess {
        ControllerProcess::start_at(&self.region, &self.ctl_data, "warn", api, quic)
    }

    fn token(&self, site: &str) -> String {
        let out = ControllerProcess::token(&self.region, &self.ctl_data, site);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// `roost-agent ARGS` inside the namespace, from the world's directory.
    fn agent(&self, args: &[&str]) -> Output {
        let out = self
            .net
            .command(&binary("roost-agent"))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run roost-agent");
        eprintln!(
            "$ roost-agent {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn install(&self, site: &str, ctl: &str, token: &str, extra: &[&str]) -> Output {
        let root = self.root.display().to_string();
        let controller_ip = self.net.host_ip.to_string();
        let mut args = vec![
            "install",
            "--root",
            &root,
            "--site-id",
            site,
            "--central-api",
            ctl,
            "--controller-ip",
            &controller_ip,
            "--network-config",
            "net.yaml",
            "--token",
            token,
        ];
        args.extend_from_slice(extra);
        self.agent(&args)
    }

    fn data(&self) -> PathBuf {
        self.root.join("var/lib/roost/agent")
    }

    fn config(&self) -> SiteConfig {
        config::load(&self.root.join("etc/roost/agent.yaml")).expect("the installed config")
    }

    fn agent_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.data().join("agent.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    fn api(&self, port: u16) -> String {
        format!("http://{}:{port}", self.net.site_ip)
    }
}

impl Drop for World {
    /// A failed test must not leave an agent running.
    fn drop(&mut self) {
        if let Some(pid) = self.agent_pid() {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn answers(url: &str) -> bool {
    reqwest::Client::new()
        .get(format!("{url}/"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .is_ok()
}

async fn wait_online(ctl: &ControllerProcess, site: &str, within: Duration) {
    wait_for(
        &format!("{site} online at the controller"),
        within,
        async || ctl.site(site).await["availability"] == "online",
    )
    .await;
}

/// Every path under `root`, for "nothing was left" and "nothing changed".
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    todo.push(p.clone());
                }
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_joins_its_region_a_rerun_changes_nothing_and_uninstall_leaves_no_trace() {
    let w = World::new();
    let host = w.net.host_ip;
    let ctl = w.controller_at(&format!("{host}:0"), &format!("{host}:0"));
    let token = w.token("edge-inst-01");

    // --dry-run: the checks and the plan, nothing on disk.
    let dry = w.install("edge-inst-01", &ctl.api, &token, &["--dry-run"]);
    assert!(dry.status.success());
    let text = stdout(&dry);
    assert!(text.contains("pass  controller  "), "{text}");
    assert!(text.contains("answers: region eu-test"), "{text}");
    assert!(text.contains("pass  network"), "{text}");
    assert!(text.contains("Dry run: nothing was changed."), "{text}");
    assert!(!w.root.exists(), "a dry run wrote {:?}", tree(&w.root));

    // A step that fails half way (the unit's path is taken by a directory
    // someone made): what the run made is rolled back, what was there
    // stays, and the token is not spent.
    let blocker = w.root.join("etc/systemd/system/roost-agent.service");
    std::fs::create_dir_all(&blocker).unwrap();
    let before = tree(&w.root);
    let failed = w.install("edge-inst-01", &ctl.api, &token, &["--start"]);
    assert_eq!(failed.status.code(), Some(1));
    let text = stdout(&failed);
    assert!(text.contains("FAILED"), "{text}");
    assert!(text.contains("Rolling back what this run did"), "{text}");
    assert!(stderr(&failed).contains("What this run made was removed"));
    assert_eq!(
        tree(&w.root),
        before,
        "the rollback left the root as it was"
    );
    assert!(w.agent_pid().is_none());
    std::fs::remove_dir_all(&w.root).unwrap();

    // The install: enrolled, started, online at the region.
    let out = w.install("edge-inst-01", &ctl.api, &token, &["--start"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("Installed: site edge-inst-01 of region eu-test"),
        "{text}"
    );
    let cfg_path = w.root.join("etc/roost/agent.yaml");
    let mode = std::fs::metadata(&cfg_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config holds secrets");
    let cfg = w.config();
    assert_eq!(cfg.site.id, "edge-inst-01");
    let region = cfg.region.clone().unwrap();
    assert_eq!(region.name, "eu-test");
    assert_eq!(
        region.address, ctl.quic,
        "the QUIC port the controller told"
    );
    assert_eq!(region.join_token, None, "the spent token is not kept");
    assert_eq!(
        cfg.api.listen.to_string(),
        format!("{}:8780", w.net.site_ip)
    );
    assert!(w.data().join("pki/identity.crt").exists());
    let unit =
        std::fs::read_to_string(w.root.join("etc/systemd/system/roost-agent.service")).unwrap();
    assert!(
        unit.contains(&format!(
            "ExecStart={} run --config {}",
            w.root.join("usr/local/bin/roost-agent").display(),
            cfg_path.display()
        )),
        "{unit}"
    );
    let pid = w.agent_pid().expect("the agent runs");
    wait_online(&ctl, "edge-inst-01", Duration::from_secs(30)).await;
    let password = std::fs::read_to_string(w.data().join("admin-password")).unwrap();
    let (code, _, _) = auth(&reqwest::Client::new(), &w.api(8780), password.trim()).await;
    assert_eq!(code, 201, "the site's API takes the generated password");

    // The same command again: nothing changes, the agent keeps running.
    let before = tree(&w.root);
    let cfg_bytes = std::fs::read(&cfg_path).unwrap();
    let again = w.install("edge-inst-01", &ctl.api, &token, &["--start"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let text = stdout(&again);
    assert!(
        text.contains("Plan: 0 of 10 steps change something"),
        "{text}"
    );
    assert!(text.contains("Nothing to change"), "{text}");
    assert!(text.contains("already enrolled as edge-inst-01"), "{text}");
    assert_eq!(std::fs::read(&cfg_path).unwrap(), cfg_bytes);
    assert_eq!(tree(&w.root), before);
    assert_eq!(w.agent_pid(), Some(pid), "the agent was not restarted");

    // A changed port is applied: config rewritten, agent restarted on it.
    let moved = w.install(
        "edge-inst-01",
        &ctl.api,
        &token,
        &["--start", "--api-port", "8790"],
    );
    assert!(moved.status.success(), "{}", stderr(&moved));
    let text = stdout(&moved);
    assert!(
        text.contains("Plan: 2 of 10 steps change something"),
        "{text}"
    );
    assert_eq!(w.config().api.listen.port(), 8790);
    let new_pid = w.agent_pid().expect("the agent runs");
    assert_ne!(new_pid, pid, "restarted to take the new port");
    assert!(!alive(pid));
    assert!(answers(&w.api(8790)).await);

    // Another site on the same node is refused, and changes nothing.
    let other = w.token("edge-inst-02");
    let cfg_bytes = std::fs::read(&cfg_path).unwrap();
    let refused = w.install("edge-inst-02", &ctl.api, &other, &["--api-port", "8790"]);
    assert_eq!(refused.status.code(), Some(1));
    let text = stdout(&refused);
    assert!(text.contains("FAIL  existing"), "{text}");
    assert!(text.contains("a site's id cannot change"), "{text}");
    assert!(stderr(&refused).contains("nothing was changed"));
    assert_eq!(std::fs::read(&cfg_path).unwrap(), cfg_bytes);
    assert_eq!(w.agent_pid(), Some(new_pid));

    // A network made through the site's API is built in the namespace...
    let http = reqwest::Client::new();
    let (_, _, site_token) = auth(&http, &w.api(8790), password.trim()).await;
    let made = http
        .post(format!("{}/network/v2.0/networks", w.api(8790)))
        .header("X-Auth-Token", site_token.unwrap())
        .json(&serde_json::json!({"network": {"name": "cells"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status().as_u16(), 201);
    let bridges = || {
        let out = std::process::Command::new("ip")
            .args(["-n", &w.net.name, "-br", "link"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).matches("rbr-").count()
    };
    wait_for("the site's bridge", Duration::from_secs(15), async || {
        bridges() == 1
    })
    .await;

    // Uninstall: the agent stops and the root is gone, every file of it;
    // the site's network devices go too.
    let out = w.agent(&["uninstall", "--root", &w.root.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!alive(new_pid), "the agent was stopped");
    assert!(!w.root.exists(), "left behind: {:?}", tree(&w.root));
    assert_eq!(bridges(), 0, "the site's bridge was removed");
    // A second uninstall has nothing to do and says so.
    let out = w.agent(&["uninstall", "--root", &w.root.display().to_string()]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("nothing installed here"));

    // The spent token cannot install again, and nothing is written.
    let spent = w.install("edge-inst-01", &ctl.api, &token, &[]);
    assert_eq!(spent.status.code(), Some(1));
    assert!(stdout(&spent).contains("the region refuses the join token: token: already used"));
    assert!(stdout(&spent).contains("roost-controller token create --site-id edge-inst-01"));
    assert!(!w.root.exists());

    // A site id that is not the token's: refused before anything is asked.
    let typo = w.install("edge-inst-10", &ctl.api, &other, &[]);
    assert_eq!(typo.status.code(), Some(64));
    assert!(stderr(&typo).contains("token: must be a token for this site, edge-inst-10"));
    // A site the region does not know (a well-formed token naming it).
    let forged = other.replacen("edge-inst-02", "edge-nope", 1);
    let unknown = w.install("edge-nope", &ctl.api, &forged, &[]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stdout(&unknown).contains(r#"site "edge-nope" is not a site of this region"#),
        "{}",
        stdout(&unknown)
    );
    assert!(stdout(&unknown).contains("add the site to the region's config"));
    assert!(!w.root.exists());

    // Malformed YAML: the file, line and column; exit 64; nothing written.
    std::fs::write(
        w.dir.path().join("net.yaml"),
        "management:\n  interface: eno1\n  address: [10.0.0.1/24\n",
    )
    .unwrap();
    let bad = w.install("edge-inst-02", &ctl.api, &other, &[]);
    assert_eq!(bad.status.code(), Some(64));
    let err = stderr(&bad);
    assert!(
        err.contains("invalid network config: net.yaml:3:12: management.address"),
        "{err}"
    );
    assert!(err.contains("Nothing was changed"), "{err}");
    assert!(!w.root.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_controller_down_install_fails_unless_offline_and_then_enrolls_when_it_is_back() {
    let w = World::new();
    let host = w.net.host_ip;
    let (api, quic) = (format!("{host}:7443"), format!("{host}:7444"));
    let url = format!("http://{api}");
    let token = w.token("edge-inst-01");

    // No controller and no --offline: refused, nothing written.
    let down = w.install("edge-inst-01", &url, &token, &[]);
    assert_eq!(down.status.code(), Some(1));
    let text = stdout(&down);
    assert!(text.contains("FAIL  controller  cannot reach"), "{text}");
    assert!(text.contains("or pass --offline"), "{text}");
    assert!(!w.root.exists());

    // Zero-touch, offline: the arguments from a file (paths relative to it).
    std::fs::write(
        w.dir.path().join("install.yaml"),
        format!(
            "site_id: edge-inst-01\ncentral_api: {url}\ncontroller_ip: {host}\ntoken: {token}\n\
             network_config: net.yaml\noffline: true\nregion_name: eu-test\nlabels: {{kind: vehicle}}\n"
        ),
    )
    .unwrap();
    let root = w.root.display().to_string();
    let from_file = [
        "install",
        "--from-file",
        "install.yaml",
        "--root",
        &root,
        "--start",
    ];
    let out = w.agent(&from_file);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("warn  controller  cannot reach"), "{text}");
    assert!(text.contains("not enrolled yet"), "{text}");
    let cfg = w.config();
    assert_eq!(cfg.site.labels["kind"], "vehicle");
    let region = cfg.region.unwrap();
    assert_eq!(region.join_token.as_deref(), Some(token.as_str()));
    assert_eq!(region.address, quic);
    // Not enrolled: no certificate (the request it will send is kept).
    assert!(!w.data().join("pki/identity.crt").exists());
    let pid = w.agent_pid().expect("the agent runs");
    assert!(answers(&w.api(8780)).await, "the site serves while offline");

    // The region comes up: the agent enrolls by itself and syncs.
    let ctl = w.controller_at(&api, &quic);
    wait_online(&ctl, "edge-inst-01", Duration::from_secs(60)).await;
    assert!(w.data().join("pki/identity.crt").exists());

    // The same file again: enrolled now, so the token leaves the config.
    let out = w.agent(&from_file);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("already enrolled as edge-inst-01"), "{text}");
    assert!(w.config().region.unwrap().join_token.is_none());
    let new_pid = w.agent_pid().expect("the agent runs");
    assert_ne!(new_pid, pid, "restarted with the new config");
    wait_online(&ctl, "edge-inst-01", Duration::from_secs(30)).await;

    let out = w.agent(&["uninstall", "--root", &root]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!alive(new_pid));
    assert!(!w.root.exists(), "left behind: {:?}", tree(&w.root));
}
