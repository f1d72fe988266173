//! `central-replicated` volumes are backed up to the region over the real
//! QUIC link, chunk by chunk: the real controller and agent, the link
//! emulator between them, real qcow2 files.
//!
//! - A volume made from an image is backed up once it is available; the
//!   region's copy is the site's file, byte for byte, and only the admin
//!   token may download it.
//! - The backup comes back to the site as a new volume (`backup_id`) with
//!   the same data; a backup the region lacks makes the volume `error`.
//! - After an extend, the next backup moves only the chunks that changed.
//! - A backup cut half way resumes after the heal without resending what
//!   arrived.

use std::time::Duration;

use roost_tests::images::{random, Harness, SITE};
use roost_tests::link::LinkParams;
use roost_tests::wait_for;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Makes a `central-replicated` volume from an image; its id once it is
/// available.
async fn replicated_volume(h: &Harness, name: &str, image: &str) -> String {
    let (code, body) = h
        .site
        .post(
            &h.site.volume_path("/volumes"),
            json!({"volume": {"name": name, "size": 1, "volume_type": "central-replicated", "imageRef": image}}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["volume"]["replication_status"], "enabled", "{body}");
    let id = body["volume"]["id"].as_str().unwrap().to_string();
    h.site
        .wait_volume(&id, "available", Duration::from_secs(60))
        .await;
    id
}

/// The volume as the site shows it.
async fn volume(h: &Harness, id: &str) -> Value {
    let (code, body) = h
        .site
        .get(&h.site.volume_path(&format!("/volumes/{id}")))
        .await;
    assert_eq!(code, 200, "{body}");
    body["volume"].clone()
}

/// Waits until the site records a backup of the volume's file as it is
/// now; returns the volume.
async fn wait_backed_up(h: &Harness, id: &str, within: Duration) -> Value {
    let file = h.site_data().join(format!("volumes/{id}.qcow2"));
    let deadline = std::time::Instant::now() + within;
    loop {
        let v = volume(h, id).await;
        let now = format!("{:x}", Sha256::digest(std::fs::read(&file).unwrap()));
        if v["roost:backup_sha256"] == now.as_str() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no backup of the volume as it is ({now}) after {within:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The region's backups of a volume, newest first.
async fn region_backups(h: &Harness, id: &str) -> Vec<Value> {
    let (code, body) = h
        .controller
        .call(
            reqwest::Method::GET,
            &format!("/sites/{SITE}/backups?volume={id}"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    body["backups"].as_array().unwrap().clone()
}

/// `roost_agent_volume_backups_total{outcome="failed"}` at the site.
async fn failed_backups(h: &Harness) -> u64 {
    roost_tests::metric(
        &h.agent.url,
        r#"roost_agent_volume_backups_total{outcome="failed"}"#,
    )
    .await
    .map_or(0, |n| n.trim().parse().unwrap())
}

fn up_bytes(h: &Harness) -> u64 {
    h.relay.bytes().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_volumes_reach_the_region_moving_only_new_chunks_and_resume_after_a_cut() {
    let h = Harness::start(LinkParams::default()).await;
    let image = h.publish("plc-data", random(16 << 20, 21)).await;
    h.wait_active(&image, Duration::from_secs(60)).await;

    // The first backup: all of the file crosses.
    let up_before = up_bytes(&h);
    let id = replicated_volume(&h, "plc-data", &image).await;
    let available = std::time::Instant::now();
    let v = wait_backed_up(&h, &id, Duration::from_secs(60)).await;
    println!("backed up {:?} after it was available", available.elapsed());
    let file = h.site_data().join(format!("volumes/{id}.qcow2"));
    let bytes = std::fs::read(&file).unwrap();
    let sent1 = v["roost:backup_sent_bytes"].as_u64().unwrap();
    println!(
        "first backup: a {} byte qcow2 file, {sent1} chunk bytes sent, {} bytes up the link",
        bytes.len(),
        up_bytes(&h) - up_before
    );
    assert!(sent1 >= 16 << 20, "the image's data crossed: {sent1}");
    let backups = region_backups(&h, &id).await;
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(backups[0]["sha256"], v["roost:backup_sha256"]);
    assert_eq!(backups[0]["size"], bytes.len() as u64);

    // The region's copy is the file; only the admin token reads it.
    let path = format!(
        "{}/roost/v1/sites/{SITE}/backups/{}/file",
        h.controller.api, backups[0]["id"]
    );
    let viewer = std::fs::read_to_string(h.dir.path().join("controller/viewer.token")).unwrap();
    let resp = h
        .http
        .get(&path)
        .bearer_auth(viewer.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let resp = h
        .http
        .get(&path)
        .bearer_auth(h.controller.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        resp.bytes().await.unwrap().to_vec(),
        bytes,
        "restored whole"
    );

    // Brought back to the site as a new volume, bigger than the original.
    let (code, body) = h
        .site
        .post(
            &h.site.volume_path("/volumes"),
            json!({"volume": {"name": "plc-data-restored", "size": 2, "backup_id": backups[0]["id"].to_string()}}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let restored = body["volume"]["id"].as_str().unwrap().to_string();
    h.site
        .wait_volume(&restored, "available", Duration::from_secs(60))
        .await;
    let restored_file = h.site_data().join(format!("volumes/{restored}.qcow2"));
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&restored_file)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 2u64 << 30, "{info}");
    let same = std::process::Command::new("qemu-img")
        .args(["compare", "-U"])
        .arg(&file)
        .arg(&restored_file)
        .output()
        .unwrap();
    assert!(
        same.status.success(),
        "the restored volume holds the backed-up data: {}",
        String::from_utf8_lossy(&same.stdout)
    );
    // A backup the region does not have: the volume is error, saying so.
    let (code, body) = h
        .site
        .post(
            &h.site.volume_path("/volumes"),
            json!({"volume": {"size": 1, "backup_id": "999999"}}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let missing = body["volume"]["id"].as_str().unwrap().to_string();
    let v = h
        .site
        .wait_volume(&missing, "error", Duration::from_secs(60))
        .await;
    assert!(
        v["volume"]["roost:fault"]
            .as_str()
            .is_some_and(|f| f.contains("has no backup 999999")),
        "{v}"
    );

    // Extended: a new file, mostly the same chunks.
    let (code, body) = h
        .site
        .post(
            &h.site.volume_path(&format!("/volumes/{id}/action")),
            json!({"os-extend": {"new_size": 2}}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    h.site
        .wait_volume(&id, "available", Duration::from_secs(60))
        .await;
    let v = wait_backed_up(&h, &id, Duration::from_secs(60)).await;
    let sent2 = v["roost:backup_sent_bytes"].as_u64().unwrap();
    let size2 = std::fs::metadata(&file).unwrap().len();
    println!("after an extend: {sent2} chunk bytes sent for a {size2} byte file");
    assert!(sent2 * 10 <= size2, "only the changed chunks: {sent2}");
    assert_eq!(region_backups(&h, &id).await.len(), 2);

    // A new volume over a 24 Mbit/s link, cut half way.
    h.relay.set(LinkParams {
        rate_bps: Some(24_000_000),
        ..LinkParams::default()
    });
    let image2 = h.publish("plc-logs", random(24 << 20, 22)).await;
    h.wait_active(&image2, Duration::from_secs(90)).await;
    let up_before = up_bytes(&h);
    let failed_before = failed_backups(&h).await;
    let id2 = replicated_volume(&h, "plc-logs", &image2).await;
    wait_for(
        "half the volume up the link",
        Duration::from_secs(60),
        async || up_bytes(&h) - up_before >= 12 << 20,
    )
    .await;
    h.relay.cut(true);
    let at_cut = up_bytes(&h) - up_before;
    // The site notices the cut (QUIC idle timeout) and gives the backup
    // up; the region keeps what arrived.
    wait_for(
        "the site to give up the cut backup",
        Duration::from_secs(30),
        async || failed_backups(&h).await > failed_before,
    )
    .await;
    assert!(volume(&h, &id2).await["roost:backup_sha256"].is_null());
    h.relay.cut(false);
    let v = wait_backed_up(&h, &id2, Duration::from_secs(120)).await;
    let size3 = std::fs::metadata(h.site_data().join(format!("volumes/{id2}.qcow2")))
        .unwrap()
        .len();
    let sent_after = v["roost:backup_sent_bytes"].as_u64().unwrap();
    let up3 = up_bytes(&h) - up_before;
    println!(
        "a {size3} byte volume cut at {at_cut} bytes up: {sent_after} chunk bytes sent after the heal, {up3} bytes up in all"
    );
    assert!(
        sent_after < size3 * 3 / 4,
        "what arrived before the cut was not sent again: {sent_after} of {size3}"
    );
    assert!(
        up3 <= size3 * 11 / 10,
        "{up3} bytes up the link for a {size3} byte volume"
    );
}
