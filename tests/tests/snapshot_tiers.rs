//! Volume snapshots in the cold tier (`storage.tiers.cold` with
//! `snapshots_capacity_mb`): the real controller and agent, the link
//! emulator between them, real qcow2 files.
//!
//! - A snapshot is copied to the region, and once it has gone unused for
//!   `cold_after_idle_secs` with the snapshots over their room, its file
//!   leaves the site: the snapshot stays `available`, `roost:tier` `cold`.
//! - A revert to it is refused naming it, and brings the file back from
//!   the region, the same bytes; the revert then runs, and the volume is
//!   the snapshot's data again.
//! - Deleted at the site, its copy at the region goes too.

use std::time::Duration;

use roost_tests::images::{random, Harness, SITE};
use roost_tests::link::LinkParams;
use roost_tests::wait_for;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_leaves_for_the_region_when_short_of_room_and_comes_back_for_a_revert() {
    let h = Harness::start_with(LinkParams::default(), |_| {
        "storage:\n  tiers:\n    cold: true\n    snapshots_capacity_mb: 16\n    cold_after_idle_secs: 15\n"
            .to_string()
    })
    .await;
    let image = h.publish("plc-data", random(16 << 20, 31)).await;
    h.wait_active(&image, Duration::from_secs(60)).await;
    let (code, body) = h
        .site
        .post(
            &h.site.volume_path("/volumes"),
            json!({"volume": {"name": "plc-data", "size": 1, "imageRef": image}}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let vol = body["volume"]["id"].as_str().unwrap().to_string();
    h.site
        .wait_volume(&vol, "available", Duration::from_secs(60))
        .await;
    let taken = std::time::Instant::now();
    let (code, body) = h
        .site
        .post(
            &h.site.volume_path("/snapshots"),
            json!({"snapshot": {"volume_id": vol, "name": "before-upgrade"}}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let snap = body["snapshot"]["id"].as_str().unwrap().to_string();
    let show = async || -> Value {
        let (code, body) = h
            .site
            .get(&h.site.volume_path(&format!("/snapshots/{snap}")))
            .await;
        assert_eq!(code, 200, "{body}");
        body["snapshot"].clone()
    };
    let file = h
        .site_data()
        .join(format!("volumes/snapshots/{snap}.qcow2"));
    wait_for("the snapshot made", Duration::from_secs(60), async || {
        show().await["status"] == "available"
    })
    .await;
    let sha = format!("{:x}", Sha256::digest(std::fs::read(&file).unwrap()));
    // The volume changes after the snapshot (no guest holds it): a revert
    // has something to undo.
    let vol_file = h.site_data().join(format!("volumes/{vol}.qcow2"));
    let wrote = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xab 0 1M"])
        .arg(&vol_file)
        .output()
        .unwrap();
    assert!(wrote.status.success(), "{wrote:?}");
    let compare = || {
        std::process::Command::new("qemu-img")
            .args(["compare", "-q"])
            .arg(&vol_file)
            .arg(&file)
            .status()
            .unwrap()
            .success()
    };

    // Over its room (a 16 MiB image in a 16 MiB room): copied to the
    // region, then gone from the site once idle.
    wait_for(
        "the snapshot in the cold tier",
        Duration::from_secs(90),
        async || show().await["roost:tier"] == "cold",
    )
    .await;
    println!("snapshot cold {:?} after it was taken", taken.elapsed());
    assert!(
        taken.elapsed() >= Duration::from_secs(15),
        "not before it was idle"
    );
    wait_for("its file gone", Duration::from_secs(10), async || {
        !file.exists()
    })
    .await;
    let region_copies = async || -> Vec<Value> {
        let (code, body) = h
            .controller
            .call(
                reqwest::Method::GET,
                &format!("/sites/{SITE}/backups?volume={snap}"),
                None,
            )
            .await;
        assert_eq!(code, 200, "{body}");
        body["backups"].as_array().unwrap().clone()
    };
    let copies = region_copies().await;
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0]["sha256"], sha.as_str(), "{copies:?}");
    let shown = show().await;
    assert_eq!(shown["status"], "available", "{shown}");

    // A revert to it is refused, naming it, and brings it back.
    let revert = async || {
        h.site
            .post(
                &h.site.volume_path(&format!("/volumes/{vol}/action")),
                json!({"revert": {"snapshot_id": snap}}),
            )
            .await
    };
    let (code, body) = revert().await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.to_string().contains("snapshot is in the cold tier"),
        "{body}"
    );
    wait_for(
        "the snapshot back at the site",
        Duration::from_secs(60),
        async || show().await["roost:tier"] == "warm",
    )
    .await;
    assert_eq!(
        format!("{:x}", Sha256::digest(std::fs::read(&file).unwrap())),
        sha,
        "the same bytes came back"
    );
    assert!(
        !compare(),
        "the volume differs from its snapshot before the revert"
    );
    let (code, body) = revert().await;
    assert_eq!(code, 202, "{body}");
    h.site
        .wait_volume(&vol, "available", Duration::from_secs(60))
        .await;
    assert!(compare(), "the volume holds the snapshot's data again");

    // Deleted at the site: the region drops its copy.
    let (code, body) = h
        .site
        .delete(&h.site.volume_path(&format!("/snapshots/{snap}")))
        .await;
    assert_eq!(code, 202, "{body}");
    wait_for(
        "the region to drop the deleted snapshot's copy",
        Duration::from_secs(60),
        async || region_copies().await.is_empty(),
    )
    .await;
    assert!(!file.exists());
}
