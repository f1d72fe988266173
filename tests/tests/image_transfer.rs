//! Images the region holds reach a site over the real QUIC link, chunk by
//! chunk: the real controller and agent, the link emulator between them.
//!
//! - An image made in the site's region of the controller's Glance is
//!   fetched by the site and becomes active there with the same bytes.
//! - A second version that differs in 5% of its bytes moves at most 10% of
//!   its size: the site copies every chunk it already holds.
//! - A transfer cut half way resumes after the heal without resending what
//!   arrived; while it is not cached, a server from it is refused naming
//!   the image.

use std::time::Duration;

use roost_tests::images::{five_percent_changed, random, Harness};
use roost_tests::link::LinkParams;
use roost_tests::wait_for;
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_images_reach_the_site_moving_only_new_chunks_and_resume_after_a_cut() {
    let h = Harness::start(LinkParams::default()).await;

    // v1: all of it crosses.
    let v1 = random(16 << 20, 1);
    let id1 = h.publish("plc-os-v1", v1.clone()).await;
    let got = h.wait_active(&id1, Duration::from_secs(60)).await;
    let fetched1 = got["roost:fetched_bytes"].as_u64().unwrap();
    assert_eq!(got["size"], v1.len() as u64);
    assert_eq!(got["os_hash_value"], format!("{:x}", Sha256::digest(&v1)));
    assert!(fetched1 >= v1.len() as u64, "{fetched1}");
    assert_eq!(h.download(&id1).await, v1, "the site serves the same bytes");

    // v2, 5% changed: at most 10% of it crosses.
    let (v2, changed) = five_percent_changed(&v1, 2);
    let down_before = h.down_bytes();
    let id2 = h.publish("plc-os-v2", v2.clone()).await;
    let got = h.wait_active(&id2, Duration::from_secs(60)).await;
    let fetched2 = got["roost:fetched_bytes"].as_u64().unwrap();
    let wire2 = h.down_bytes() - down_before;
    println!(
        "v2 ({} bytes, {changed} changed): {fetched2} chunk bytes fetched ({:.1}%), {wire2} bytes on the wire ({:.1}%)",
        v2.len(),
        fetched2 as f64 * 100.0 / v2.len() as f64,
        wire2 as f64 * 100.0 / v2.len() as f64
    );
    assert!(fetched2 * 10 <= v2.len() as u64, "{fetched2}");
    assert!(wire2 * 10 <= v2.len() as u64, "{wire2} bytes on the wire");
    assert!(fetched2 >= changed, "the changed bytes did cross");
    assert_eq!(h.download(&id2).await, v2);

    // v3, all new, over a 24 Mbit/s link cut half way.
    h.relay.set(LinkParams {
        rate_bps: Some(24_000_000),
        ..LinkParams::default()
    });
    let v3 = random(24 << 20, 3);
    let down_before = h.down_bytes();
    let id3 = h.publish("plc-os-v3", v3.clone()).await;
    wait_for(
        "half the image on the wire",
        Duration::from_secs(60),
        async || h.down_bytes() - down_before >= v3.len() as u64 / 2,
    )
    .await;
    h.relay.cut(true);
    let at_cut = h.down_bytes() - down_before;
    // Not cached: a server from it is refused, naming the image.
    let (code, body) = h.site.create_server("plc-3", "1", &id3).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.to_string().contains("not cached at this site"),
        "{body}"
    );
    // The site notices the cut (QUIC idle timeout) and keeps what it got.
    wait_for(
        "the site to give up the cut transfer",
        Duration::from_secs(30),
        async || {
            let i = h.site_image(&id3).await;
            i["status"] == "queued" && i["roost:fetched_bytes"].as_u64().unwrap_or(0) > 0
        },
    )
    .await;
    let first = h.site_image(&id3).await["roost:fetched_bytes"]
        .as_u64()
        .unwrap();
    let part = h.site_data().join(format!("images/{id3}.part"));
    assert!(part.is_file(), "the part file is kept for the resume");
    h.relay.cut(false);
    let got = h.wait_active(&id3, Duration::from_secs(90)).await;
    let total = got["roost:fetched_bytes"].as_u64().unwrap();
    let wire3 = h.down_bytes() - down_before;
    println!(
        "v3 ({} bytes) cut at {at_cut} wire bytes: {first} chunk bytes before the cut, {total} in all; {wire3} bytes on the wire",
        v3.len()
    );
    assert!(first < v3.len() as u64, "the cut came before the end");
    assert!(
        total <= v3.len() as u64 + (256 << 10),
        "nothing that arrived was sent again: {total} for {}",
        v3.len()
    );
    assert!(
        wire3 <= v3.len() as u64 * 11 / 10,
        "{wire3} bytes on the wire for {}",
        v3.len()
    );
    assert!(!part.exists());
    assert_eq!(h.download(&id3).await, v3);
    // Cached now: a server from it is accepted.
    let (code, body) = h.site.create_server("plc-3", "1", &id3).await;
    assert_eq!(code, 202, "{body}");

    // The region's images are the region's to take back: refused at the
    // site, withdrawn at the controller (file and manifest removed).
    let (code, body) = h.site.delete(&format!("/image/v2/images/{id1}")).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body.to_string().contains("withdraw it at the region"),
        "{body}"
    );
    let resp = h.glance_delete(&id1).await;
    assert_eq!(resp, 204);
    let file = h.site_data().join(format!("images/{id1}"));
    let manifest = h.site_data().join(format!("images/{id1}.manifest"));
    wait_for(
        "the withdrawn image and its manifest to go from the site",
        Duration::from_secs(30),
        async || h.site_image(&id1).await.is_null() && !file.exists() && !manifest.exists(),
    )
    .await;
    // One in use stays.
    assert_eq!(h.glance_delete(&id3).await, 204);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        h.site_image(&id3).await["status"],
        "active",
        "a server boots from it"
    );
}
