//! Image tiering at a site (`storage.tiers`), with the real controller and
//! agent and the link emulator between them.
//!
//! The site has a 20 MiB hot cache, 32 MiB of warm room and the region as
//! its cold tier. Three images from the region arrive one after another:
//! - the most recently used one sits in the hot directory, the one before
//!   it is moved down to local disk;
//! - when local disk is short, the least recently used leaves the site: it
//!   stays `active` in Glance with `roost:tier` `cold`, with no file here;
//! - using it (a download, a server) is refused naming it, and brings it
//!   back from the region, byte for byte; a server then boots from it, and
//!   pinned, it stays in the cache though a newer image would take it.
//! - An image whose file is lost is marked cold, to come back when used.

use std::time::Duration;

use roost_tests::images::{random, Harness};
use roost_tests::link::LinkParams;
use roost_tests::wait_for;

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_fill_hot_then_warm_and_the_least_recently_used_go_cold_and_come_back() {
    let h = Harness::start_with(LinkParams::default(), |dir| {
        format!(
            "storage:\n  tiers:\n    hot: {{dir: {}, capacity_mb: 20}}\n    warm_capacity_mb: 32\n    cold: true\n    cold_after_idle_secs: 0\n",
            dir.join("hot").display()
        )
    })
    .await;
    let hot = h.dir.path().join("hot");
    let warm = h.site_data().join("images");
    let tier = async |id: &str| {
        let i = h.site_image(id).await;
        format!(
            "{}/{}",
            i["status"].as_str().unwrap_or("absent"),
            i["roost:tier"].as_str().unwrap_or("-")
        )
    };
    let settle = async |id: &str, want: &str, what: &str| {
        wait_for(what, Duration::from_secs(60), async || {
            tier(id).await == want
        })
        .await;
    };

    // A lands on local disk and comes up to the hot cache.
    let a = random(16 * MIB, 11);
    let id_a = h.publish("plc-a", a.clone()).await;
    // The old file goes just after the move commits.
    let only = async |keep: &std::path::Path, gone: &[std::path::PathBuf], what: &str| {
        wait_for(what, Duration::from_secs(10), async || {
            keep.is_file() && gone.iter().all(|g| !g.exists())
        })
        .await;
    };
    settle(&id_a, "active/hot", "image a in the hot tier").await;
    only(
        &hot.join(&id_a),
        &[warm.join(&id_a)],
        "a's file only in hot",
    )
    .await;

    // B, newer, takes its place; A moves down to local disk.
    let id_b = h.publish("plc-b", random(16 * MIB, 12)).await;
    settle(&id_b, "active/hot", "image b in the hot tier").await;
    settle(&id_a, "active/warm", "image a moved down to warm").await;
    only(
        &warm.join(&id_a),
        &[hot.join(&id_a)],
        "a's file only in warm",
    )
    .await;

    // C (24 MiB) is too big for the cache: it stays warm, and A, the least
    // recently used, no longer fits beside it and leaves the site.
    let id_c = h.publish("plc-c", random(24 * MIB, 13)).await;
    settle(&id_c, "active/warm", "image c on local disk").await;
    settle(&id_a, "active/cold", "image a in the cold tier").await;
    wait_for(
        "a's files gone from the site",
        Duration::from_secs(10),
        async || {
            [
                warm.join(&id_a),
                hot.join(&id_a),
                warm.join(format!("{id_a}.manifest")),
            ]
            .iter()
            .all(|f| !f.exists())
        },
    )
    .await;
    assert_eq!(tier(&id_b).await, "active/hot");
    let fetched_before = h.site_image(&id_a).await["roost:fetched_bytes"]
        .as_u64()
        .unwrap();

    // Using it is refused, naming it, and brings it back.
    let (code, body) = h.site.create_server("late", "1", &id_a).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body.to_string()
            .contains("image plc-a is in the cold tier: its bytes are at the region"),
        "{body}"
    );
    wait_for(
        "image a fetched again from the region",
        Duration::from_secs(60),
        async || {
            let i = h.site_image(&id_a).await;
            i["status"] == "active" && i["roost:tier"] != "cold"
        },
    )
    .await;
    let back = h.site_image(&id_a).await;
    let refetched = back["roost:fetched_bytes"].as_u64().unwrap() - fetched_before;
    println!(
        "image a ({} bytes) came back from the cold tier: {refetched} chunk bytes fetched",
        a.len()
    );
    assert!(refetched >= a.len() as u64, "{refetched}");

    // Back and the most recently used, it takes the cache again, and B,
    // now the least recently used, leaves the site in its turn.
    settle(&id_a, "active/hot", "image a back in the hot tier").await;
    settle(&id_b, "active/cold", "image b in the cold tier").await;
    assert_eq!(h.download(&id_a).await, a, "the same bytes came back");

    // A server boots from A: pinned, it stays in the cache even when D,
    // newer, would take its place; C, which no longer fits beside D on
    // local disk, goes cold instead.
    let (code, body) = h.site.create_server("plc", "1", &id_a).await;
    assert_eq!(code, 202, "{body}");
    let id_d = h.publish("plc-d", random(16 * MIB, 14)).await;
    settle(&id_c, "active/cold", "image c in the cold tier").await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(tier(&id_a).await, "active/hot");
    assert!(hot.join(&id_a).is_file());
    assert_eq!(tier(&id_d).await, "active/warm");
    let cold_moves = roost_tests::metric(
        &h.agent.url,
        "roost_agent_tier_moves_total{kind=\"image\",to=\"cold\"}",
    )
    .await;
    assert_eq!(cold_moves.as_deref(), Some("3"), "a, b and c went cold");

    // D's file lost (a failed disk): marked cold, to come back when used.
    std::fs::remove_file(warm.join(&id_d)).unwrap();
    settle(
        &id_d,
        "active/cold",
        "image d, its file lost, in the cold tier",
    )
    .await;

    // A download of a cold image is refused too, naming it, and brings
    // it back.
    let (code, body) = h.site.get(&format!("/image/v2/images/{id_b}/file")).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.to_string().contains("is in the cold tier"), "{body}");
    wait_for(
        "image b fetched again after the refused download",
        Duration::from_secs(60),
        async || {
            h.site_image(&id_b).await["status"] != "active" || tier(&id_b).await != "active/cold"
        },
    )
    .await;
}
