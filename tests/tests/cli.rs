//! The binaries' command lines and config files: the examples are valid, bad
//! input exits 64 with a message naming the file, field, value and rule, and
//! nothing is created.

use std::process::Command;

use roost_common::config::{self, EdgeNetConfig, RegionConfig, SiteConfig};
use roost_tests::{binary, site_config};

#[test]
fn every_example_config_is_valid() {
    for f in ["edge-factory-01.yaml", "vehicle-07.yaml"] {
        let c: SiteConfig = config::load(&site_config(f)).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.hosts.iter().any(|h| h.is_compute()));
    }
    let factory: SiteConfig = config::load(&site_config("edge-factory-01.yaml")).unwrap();
    let roles: Vec<_> = factory.hosts.iter().map(|h| h.is_compute()).collect();
    assert_eq!(
        roles.iter().filter(|c| !**c).count(),
        2,
        "two controller nodes"
    );
    assert_eq!(
        roles.iter().filter(|c| **c).count(),
        4,
        "four compute nodes"
    );
    let region: RegionConfig =
        config::load(&site_config("region.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(region.offline_after_secs, 10);
    let net: EdgeNetConfig =
        config::load(&site_config("edge-net.yaml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(!net.providers.is_empty());
    // The example install file, with the token a flag would add.
    let file = config::InstallArgs::load(&site_config("install-edge-factory-01.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.network_config, Some(site_config("edge-net.yaml")));
    let args = config::InstallArgs {
        token: Some(format!("rjt1.edge-factory-01.{}", "x".repeat(43))),
        ..Default::default()
    }
    .or_from(file);
    config::Validate::validate(&args).unwrap_or_else(|e| panic!("{e}"));
}

fn run_agent(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary("roost-agent"))
        .args(args)
        .output()
        .expect("run roost-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_exits_64_naming_file_field_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(site_config("vehicle-07.yaml")).unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, text.replace("vcpus: 8", "vcpus: 0")).unwrap();
    let data = dir.path().join("data");
    let (code, err) = run_agent(&[
        "run",
        "--config",
        bad.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("Invalid configuration:"), "{err}");
    assert!(
        err.contains(&format!(
            "{}: hosts[0].vcpus: must be between 1 and 4096 (got 0)",
            bad.display()
        )),
        "{err}"
    );
    assert!(!data.exists(), "a bad config creates nothing");

    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, text.replace("  listen:", "  lisen:")).unwrap();
    let (code, err) = run_agent(&["check-config", "--config", typo.to_str().unwrap()]);
    assert_eq!(code, 64);
    assert!(
        err.contains("typo.yaml:") && err.contains("unknown field `lisen`"),
        "{err}"
    );

    let (code, err) = run_agent(&["check-config", "--config", "/nonexistent/site.yaml"]);
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent/site.yaml: cannot read"), "{err}");

    let (code, err) = run_agent(&[
        "run",
        "--config",
        "x.yaml",
        "--api-listen",
        "not-an-address",
    ]);
    assert_eq!(code, 64);
    assert!(err.contains("--api-listen"), "{err}");

    let (code, _) = run_agent(&[
        "check-config",
        "--config",
        site_config("edge-factory-01.yaml").to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
}

#[test]
fn weak_admin_password_from_env_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("roost-agent"))
        .args(["run", "--config"])
        .arg(site_config("vehicle-07.yaml"))
        .arg("--data-dir")
        .arg(dir.path())
        .env("ROOST_ADMIN_PASSWORD", "short")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ROOST_ADMIN_PASSWORD: must be 8 to 128 characters"),
        "{err}"
    );
    assert!(
        !err.contains("short"),
        "the password is never echoed: {err}"
    );
}

#[test]
fn a_data_dir_belongs_to_one_site() {
    let dir = tempfile::tempdir().unwrap();
    drop(roost_tests::AgentProcess::start(
        &site_config("vehicle-07.yaml"),
        dir.path(),
    ));
    let out = Command::new(binary("roost-agent"))
        .args(["run", "--config"])
        .arg(site_config("edge-factory-01.yaml"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--api-listen", "127.0.0.1:0"])
        .env("ROOST_ADMIN_PASSWORD", roost_tests::ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(r#"this data dir holds site "vehicle-07", not "edge-factory-01""#),
        "{err}"
    );
}

#[test]
fn controller_refuses_bad_flags_and_configs_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let bad = dir.path().join("region.yaml");
    std::fs::write(
        &bad,
        "region: {name: eu}\napi: {listen: '127.0.0.1:7443'}\nquic: {listen: '127.0.0.1:7443'}\n",
    )
    .unwrap();
    let region = site_config("region.yaml");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["serve"], "--config"),
        (
            vec![
                "serve",
                "--config",
                bad.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
            ],
            "quic.listen: must differ from api.listen",
        ),
        (
            vec![
                "token",
                "create",
                "--config",
                region.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--site-id",
                "vehicle-07",
                "--ttl",
                "90d",
            ],
            "at most 30d",
        ),
        (
            vec!["check-config", "--config", bad.to_str().unwrap()],
            "quic.listen",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(binary("roost-controller"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert!(!data.exists(), "bad input wrote nothing");
}

#[test]
fn a_busy_port_fails_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("data");
    let (code, err) = run_agent(&[
        "run",
        "--config",
        site_config("vehicle-07.yaml").to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--api-listen",
        &addr,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on {addr}")) && err.contains("--api-listen"),
        "{err}"
    );
    assert!(!data.exists(), "nothing written when the port is busy");
}
