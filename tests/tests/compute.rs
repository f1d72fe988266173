//! Real guests through libvirt: a server created through the API becomes a
//! QEMU process whose kernel reaches its init (seen on the serial console
//! log); stop, start, reboots and rebuild move it through Nova's states; an
//! agent restart adopts the running guest without touching it; a host
//! "reboot" (agent and every QEMU process killed) brings it back; delete
//! removes it. Runs libvirt's embedded QEMU driver (no daemon), with KVM
//! where this host's KVM boots guests and TCG otherwise, and says which.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use roost_tests::guest::{self, GuestImage, IMAGE_ID, INIT_LINE};
use roost_tests::{wait_for, AgentProcess, Api};

fn write_config(dir: &Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("site.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn wait_booted(data: &Path, id: &str, image: &GuestImage, after: &str) -> Duration {
    let t = Instant::now();
    wait_for(
        &format!(
            "server {id}'s guest reaching its init ({after}, {})",
            image.accel
        ),
        image.boot_limit(),
        async || guest::console(data, id).contains(INIT_LINE),
    )
    .await;
    t.elapsed()
}

/// A new 1 GiB volume, once available.
async fn new_volume(api: &Api, name: &str) -> String {
    let (code, body) = api
        .post(
            &api.volume_path("/volumes"),
            json!({"volume": {"size": 1, "name": name}}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["volume"]["id"].as_str().unwrap().to_string();
    api.wait_volume(&id, "available", Duration::from_secs(30))
        .await;
    id
}

/// Attaches `volume` to server `id`; the device the API names.
async fn attach(api: &Api, id: &str, volume: &str) -> String {
    let (code, body) = api
        .post(
            &format!("/compute/v2.1/servers/{id}/os-volume_attachments"),
            json!({"volumeAttachment": {"volumeId": volume}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    body["volumeAttachment"]["device"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The target disk of `file` in a domain's XML.
fn target_of(xml: &str, file: &Path) -> Option<String> {
    let at = xml.find(&format!("<source file='{}'", file.display()))?;
    let rest = &xml[at..];
    let t = rest.find("<target dev='")? + "<target dev='".len();
    Some(rest[t..].split('\'').next()?.to_string())
}

/// Asks for `action` and returns every (status, task_state, power_state)
/// seen until the server settles in `want`.
async fn act(api: &Api, id: &str, action: Value, want: &str) -> Vec<(String, String, u64)> {
    let (code, body) = api
        .post(
            &format!("/compute/v2.1/servers/{id}/action"),
            action.clone(),
        )
        .await;
    assert_eq!(code, 202, "{action}: {body}");
    let mut seen: Vec<(String, String, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = api.get(&format!("/compute/v2.1/servers/{id}")).await;
        let s = &body["server"];
        let now = (
            s["status"].as_str().unwrap_or("").to_string(),
            s["OS-EXT-STS:task_state"]
                .as_str()
                .unwrap_or("-")
                .to_string(),
            s["OS-EXT-STS:power_state"].as_u64().unwrap_or(99),
        );
        if seen.last() != Some(&now) {
            seen.push(now.clone());
        }
        if now.0 == want && now.1 == "-" {
            return seen;
        }
        assert!(Instant::now() < deadline, "{action}: stuck at {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_real_guest_through_its_whole_life() {
    let image = GuestImage::find();
    println!("accelerator: {}", image.verdict);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("lv");
    let _guests = guest::QemuGuard(root.clone());
    let data = tmp.path().join("data");
    let config = write_config(tmp.path(), &image.site_yaml("lab-01", &root, 8192));
    let mut agent = AgentProcess::start(&config, &data);
    let api = Api::login(&agent.url).await;

    let t = Instant::now();
    let (code, body) = api.create_server("plc-1", "1", IMAGE_ID).await;
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_str().unwrap().to_string();
    let active = api.wait_status(&id, "ACTIVE", image.boot_limit()).await;
    assert_eq!(active["server"]["OS-EXT-STS:power_state"], 1);
    let to_active = t.elapsed();
    let booted = wait_booted(&data, &id, &image, "create").await + to_active;
    println!(
        "create to ACTIVE {to_active:?}, to the guest's init {booted:?} ({})",
        image.accel
    );
    let console = guest::console(&data, &id);
    assert!(console.contains("1 vcpu"), "the flavor's vCPUs: {console}");
    let pid = guest::qemu_pid(&root, &id).expect("a QEMU process runs the server");
    // The domain XML libvirt keeps: overlay disk, console file, Roost's marks.
    let xml = std::fs::read_to_string(root.join(format!("etc/qemu/roost-{id}.xml"))).unwrap();
    for want in [
        format!("<roost:server>{id}</roost:server>"),
        "<roost:site>lab-01</roost:site>".to_string(),
        format!("{}/instances/{id}/disk.qcow2", data.display()),
        format!("{}/instances/{id}/console.log", data.display()),
    ] {
        assert!(xml.contains(&want), "{want} missing from\n{xml}");
    }

    // A volume attached to the running guest is hot-plugged: it is in
    // the live domain and in its config, as vdb.
    let (code, body) = api
        .post(
            &api.volume_path("/volumes"),
            json!({"volume": {"size": 1, "name": "plc-data"}}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let vol = body["volume"]["id"].as_str().unwrap().to_string();
    api.wait_volume(&vol, "available", Duration::from_secs(30))
        .await;
    let vol_file = data.join("volumes").join(format!("{vol}.qcow2"));
    assert!(vol_file.is_file(), "qcow2 made by qemu-img");
    let (code, body) = api
        .post(
            &format!("/compute/v2.1/servers/{id}/os-volume_attachments"),
            json!({"volumeAttachment": {"volumeId": vol}}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["volumeAttachment"]["device"], "/dev/vdb");
    let v = api
        .wait_volume(&vol, "in-use", Duration::from_secs(30))
        .await;
    assert_eq!(v["volume"]["attachments"][0]["server_id"], id.as_str());
    let disk = format!("<source file='{}'", vol_file.display());
    let config_xml =
        std::fs::read_to_string(root.join(format!("etc/qemu/roost-{id}.xml"))).unwrap();
    assert!(
        config_xml.contains(&disk),
        "volume in the domain's config:\n{config_xml}"
    );
    let live_xml = std::fs::read_to_string(root.join(format!("run/qemu/roost-{id}.xml"))).unwrap();
    assert!(
        live_xml.contains(&disk),
        "volume in the running domain:\n{live_xml}"
    );
    assert_eq!(
        guest::qemu_pid(&root, &id),
        Some(pid),
        "hot-plugged, not restarted"
    );
    let (code, body) = api
        .delete(&api.volume_path(&format!("/volumes/{vol}")))
        .await;
    assert_eq!(code, 400, "an attached volume is not deleted: {body}");

    // Stop and start: SHUTOFF with no QEMU process, then a fresh boot.
    let seen = act(&api, &id, json!({"os-stop": null}), "SHUTOFF").await;
    assert_eq!(seen.last().unwrap().2, 4, "power_state SHUTDOWN: {seen:?}");
    assert!(
        seen.iter().all(|s| s.0 != "SHUTOFF" || s.1 == "-"),
        "{seen:?}"
    );
    assert_eq!(guest::qemu_pid(&root, &id), None, "QEMU gone when stopped");
    // A second volume, attached while stopped, is vdc.
    let second = new_volume(&api, "plc-log").await;
    assert_eq!(attach(&api, &id, &second).await, "/dev/vdc");
    api.wait_volume(&second, "in-use", Duration::from_secs(30))
        .await;
    // Detached while stopped: out of the domain's config, free again.
    let (code, body) = api
        .delete(&format!(
            "/compute/v2.1/servers/{id}/os-volume_attachments/{vol}"
        ))
        .await;
    assert_eq!(code, 202, "{body}");
    api.wait_volume(&vol, "available", Duration::from_secs(30))
        .await;
    let config_xml =
        std::fs::read_to_string(root.join(format!("etc/qemu/roost-{id}.xml"))).unwrap();
    assert!(
        !config_xml.contains(&disk),
        "volume still in:\n{config_xml}"
    );
    // Each attachment keeps its disk: the second stays vdc, and a third
    // takes the freed vdb, in the API and in the domain alike.
    let third = new_volume(&api, "plc-spare").await;
    assert_eq!(attach(&api, &id, &third).await, "/dev/vdb");
    api.wait_volume(&third, "in-use", Duration::from_secs(30))
        .await;
    let (_, listed) = api
        .get(&format!("/compute/v2.1/servers/{id}/os-volume_attachments"))
        .await;
    let devices: Vec<(String, String)> = listed["volumeAttachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["volumeId"].as_str().unwrap().into(),
                a["device"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        devices,
        vec![
            (second.clone(), "/dev/vdc".into()),
            (third.clone(), "/dev/vdb".into())
        ]
    );
    let config_xml =
        std::fs::read_to_string(root.join(format!("etc/qemu/roost-{id}.xml"))).unwrap();
    for (v, dev) in [(&second, "vdc"), (&third, "vdb")] {
        let file = data.join("volumes").join(format!("{v}.qcow2"));
        assert_eq!(
            target_of(&config_xml, &file).as_deref(),
            Some(dev),
            "{v} in:\n{config_xml}"
        );
    }
    for v in [&second, &third] {
        let (code, body) = api
            .delete(&format!(
                "/compute/v2.1/servers/{id}/os-volume_attachments/{v}"
            ))
            .await;
        assert_eq!(code, 202, "{body}");
        api.wait_volume(v, "available", Duration::from_secs(30))
            .await;
    }
    let (code, body) = api
        .delete(&api.volume_path(&format!("/volumes/{vol}")))
        .await;
    assert_eq!(code, 202, "{body}");
    api.wait_volume(&vol, "GONE", Duration::from_secs(30)).await;
    assert!(!vol_file.exists(), "the volume's file removed");
    act(&api, &id, json!({"os-start": null}), "ACTIVE").await;
    wait_booted(&data, &id, &image, "start").await;

    // Reboots go through REBOOT / HARD_REBOOT and boot the guest again.
    let seen = act(&api, &id, json!({"reboot": {"type": "SOFT"}}), "ACTIVE").await;
    assert_eq!(
        seen.first().map(|s| s.0.as_str()),
        Some("REBOOT"),
        "{seen:?}"
    );
    wait_booted(&data, &id, &image, "soft reboot").await;
    let seen = act(&api, &id, json!({"reboot": {"type": "HARD"}}), "ACTIVE").await;
    assert_eq!(
        seen.first().map(|s| s.0.as_str()),
        Some("HARD_REBOOT"),
        "{seen:?}"
    );
    wait_booted(&data, &id, &image, "hard reboot").await;
    let seen = act(
        &api,
        &id,
        json!({"rebuild": {"imageRef": IMAGE_ID}}),
        "ACTIVE",
    )
    .await;
    assert_eq!(
        seen.first().map(|s| s.0.as_str()),
        Some("REBUILD"),
        "{seen:?}"
    );
    wait_booted(&data, &id, &image, "rebuild").await;
    let (code, body) = api
        .post(
            &format!("/compute/v2.1/servers/{id}/action"),
            json!({"rebuild": {"imageRef": "8a1c2d3e-0000-4000-8000-000000000000"}}),
        )
        .await;
    assert_eq!(code, 400, "rebuild from an unknown image: {body}");
    assert!(body.to_string().contains("rebuild.imageRef"), "{body}");

    // The agent restarts: the guest keeps running, untouched, and is adopted.
    let pid = guest::qemu_pid(&root, &id).unwrap_or(pid);
    assert!(agent.terminate().success());
    assert_eq!(
        guest::qemu_pid(&root, &id),
        Some(pid),
        "guest outlives the agent"
    );
    let mut agent = AgentProcess::start(&config, &data);
    let api = Api::login(&agent.url).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = api
        .wait_status(&id, "ACTIVE", Duration::from_secs(10))
        .await;
    assert_eq!(s["server"]["OS-EXT-STS:power_state"], 1);
    assert_eq!(
        guest::qemu_pid(&root, &id),
        Some(pid),
        "same QEMU process: adopted, not restarted"
    );
    assert_eq!(guest::console(&data, &id).matches(INIT_LINE).count(), 1);

    // The host loses power: the agent and every guest die at once. On the
    // next start the reconciler sees the domain shut off and starts it.
    agent.kill9();
    assert_eq!(guest::kill_all_qemu(&root), 1);
    wait_for("QEMU to die", Duration::from_secs(10), async || {
        guest::qemu_pid(&root, &id).is_none()
    })
    .await;
    // So the init line awaited below can only come from a new boot.
    std::fs::remove_file(data.join("instances").join(&id).join("console.log")).unwrap();
    let t = Instant::now();
    let agent = AgentProcess::start(&config, &data);
    let api = Api::login(&agent.url).await;
    wait_for("a new QEMU process", image.boot_limit(), async || {
        guest::qemu_pid(&root, &id).is_some_and(|p| p != pid)
    })
    .await;
    let back = wait_booted(&data, &id, &image, "host reboot").await + t.elapsed();
    println!("after a host reboot the guest reached its init again in {back:?}");
    api.wait_status(&id, "ACTIVE", Duration::from_secs(10))
        .await;

    // Delete: the domain, its QEMU and its files go; the claim is released.
    let (code, _) = api.delete(&format!("/compute/v2.1/servers/{id}")).await;
    assert_eq!(code, 204);
    api.wait_status(&id, "GONE", Duration::from_secs(30)).await;
    assert_eq!(guest::qemu_pid(&root, &id), None);
    assert!(
        !data.join("instances").join(&id).exists(),
        "instance files removed"
    );
    assert!(
        !root.join(format!("etc/qemu/roost-{id}.xml")).exists(),
        "domain undefined"
    );
    let used = api.hypervisors().await[0]["memory_mb_used"].clone();
    assert_eq!(used, 0, "claim released");
}

#[tokio::test]
async fn a_guest_that_cannot_start_is_error_with_libvirts_reason_and_no_claim() {
    let image = GuestImage::find();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("lv");
    let _guests = guest::QemuGuard(root.clone());
    let data = tmp.path().join("data");
    let config = write_config(tmp.path(), &image.site_yaml("lab-02", &root, 8192));
    let agent = AgentProcess::start(&config, &data);
    let api = Api::login(&agent.url).await;
    // The "broken" image boots a kernel file that is not there.
    let (code, body) = api
        .create_server("doomed", "1", "00000000-0000-4000-8000-00000000bad1")
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_str().unwrap().to_string();
    let s = api.wait_status(&id, "ERROR", Duration::from_secs(60)).await;
    let fault = s["server"]["fault"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        fault.contains("no-such-kernel") && fault.contains("does not exist"),
        "{s}"
    );
    assert_eq!(
        api.hypervisors().await[0]["memory_mb_used"],
        0,
        "claim released"
    );
    assert_eq!(guest::qemu_pid(&root, &id), None);
    // libvirt refuses to start a guest pinned to a CPU the host lacks: its
    // reason is the fault.
    let (code, body) = api.create_server("pinned", "9", IMAGE_ID).await;
    assert_eq!(code, 202, "{body}");
    let pinned = body["server"]["id"].as_str().unwrap().to_string();
    let s = api
        .wait_status(&pinned, "ERROR", Duration::from_secs(60))
        .await;
    let fault = s["server"]["fault"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(fault.starts_with("libvirt: "), "{s}");
    println!("libvirt's reason: {fault}");
    assert_eq!(
        api.hypervisors().await[0]["memory_mb_used"],
        0,
        "claim released"
    );
    // Deleting them cleans up what was made for them.
    for id in [&id, &pinned] {
        let (code, _) = api.delete(&format!("/compute/v2.1/servers/{id}")).await;
        assert_eq!(code, 204);
        api.wait_status(id, "GONE", Duration::from_secs(30)).await;
        assert!(!data.join("instances").join(id).exists());
        assert!(!root.join(format!("etc/qemu/roost-{id}.xml")).exists());
    }
}
