//! An image update over a thin link, next to the floor.
//! Run: `cargo bench -p roost-tests --bench image_transfer [-- MiB]`
//! (default 1024).
//!
//! The real controller and agent, the link emulator between them. v1 (N
//! MiB of random bytes) reaches the site over an unlimited link; then the
//! link becomes the reference field link (10 Mbit/s, 100 ms round trip, 1%
//! loss) and v2, v1 with 5% of its bytes overwritten in 64 KiB runs, is
//! made at the region; then another such update over the same link without
//! loss. Measured: from the region holding v2 to the site showing it active
//! (the site's own work included: hashing what it has, copying the chunks
//! it holds, syncing the file); the chunk bytes it fetched and every byte
//! on the link (both directions, with UDP/IP headers, as the emulator
//! counts them). The floor is the changed bytes over the link rate; a
//! whole-image transfer is shown for scale.

use std::time::{Duration, Instant};

use roost_tests::images::{five_percent_changed, random, Harness};
use roost_tests::link::LinkParams;

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let size_mib: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1024);
    let size = size_mib << 20;
    println!("image update over a 10 Mbit/s, 100 ms, 1% loss link: {size_mib} MiB, 5% changed");
    let h = Harness::start(LinkParams::default()).await;

    let t = Instant::now();
    let v1 = random(size, 1);
    println!("  images made in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let id1 = h.publish("bench-v1", v1.clone()).await;
    h.wait_active(&id1, Duration::from_secs(1800)).await;
    println!(
        "  v1 at the site over an unlimited link in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The same kind of update twice: over the reference link, and over
    // one as fast and as far but losing nothing, which shows how much of
    // the time is the congestion controller's answer to loss.
    let lossless = LinkParams {
        loss: 0.0,
        ..LinkParams::field_link()
    };
    let mut rows = Vec::new();
    for (name, link, seed) in [
        ("10 Mbit/s, 100 ms, 1% loss", LinkParams::field_link(), 2),
        ("10 Mbit/s, 100 ms, no loss", lossless, 3),
    ] {
        let (v2, changed) = five_percent_changed(&v1, seed);
        h.relay.set(link);
        let (up0, down0) = h.relay.wire_bytes();
        let t = Instant::now();
        let id2 = h.publish(&format!("bench-v2-{seed}"), v2).await;
        let uploaded = t.elapsed();
        let t = Instant::now();
        let got = h.wait_active(&id2, Duration::from_secs(3600)).await;
        let took = t.elapsed();
        let (up1, down1) = h.relay.wire_bytes();
        let fetched = got["roost:fetched_bytes"].as_u64().unwrap_or(0);
        let wire = (up1 - up0) + (down1 - down0);
        println!(
            "  {name}: done in {:.1} s (upload of v2 to the region, not counted: {:.1} s)",
            took.as_secs_f64(),
            uploaded.as_secs_f64()
        );
        rows.push((name, changed, fetched, wire, took));
    }
    let rate = 10_000_000f64;
    println!();
    println!("| link | changed (floor) | chunk bytes fetched | all bytes on the link | time | floor time | x floor |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (name, changed, fetched, wire, took) in rows {
        let floor = changed as f64 * 8.0 / rate;
        println!(
            "| {name} | {} ({:.1}%) | {} ({:.1}%) | {} ({:.1}%) | {:.1} s | {floor:.1} s | {:.2} |",
            mib(changed),
            changed as f64 * 100.0 / size as f64,
            mib(fetched),
            fetched as f64 * 100.0 / size as f64,
            mib(wire),
            wire as f64 * 100.0 / size as f64,
            took.as_secs_f64(),
            took.as_secs_f64() / floor
        );
    }
    println!(
        "\nfor scale, the whole image over the link: {} in {:.0} s",
        mib(size as u64),
        size as f64 * 8.0 / rate
    );
}
