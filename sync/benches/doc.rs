//! What the site documents cost as a site grows, to size how the agent may
//! use them on its write path. Run: `cargo bench -p roost-sync --bench doc`.
//!
//! For sites of 100, 1,000 and 2,000 servers (each created with its spec in
//! one key and its status in another, as the agent would): the time to
//! record one more server (create + status + close the change), one field
//! update, a snapshot save, and a load from that snapshot.

use std::time::{Duration, Instant};

use roost_sync::{IntentDoc, StatusDoc};
use serde_json::json;

fn spec(i: usize) -> serde_json::Map<String, serde_json::Value> {
    let v = json!({
        "name": format!("server-{i}"), "project_id": "0123456789abcdef", "user_id": "fedcba9876543210",
        "flavor_id": "2", "image_id": "6f0c3b4e-2c4d-4f59-9a7e-3f1e8b2d7c10", "availability_zone": null,
        "server_group": null, "power": "running", "reboot_generation": 0, "reboot_hard": false,
        "deleted": false, "metadata": {}
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    }
}

fn status() -> serde_json::Value {
    json!({"host": "compute-1", "availability_zone": "hall-b", "vm_state": "active", "task_state": null,
           "power_state": "running", "reboot_generation": 0, "launched_at": "2026-11-22T11:00:00Z", "fault": null})
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    println!(
        "{:<10} {:>16} {:>16} {:>12} {:>12} {:>12}",
        "servers", "record create", "field update", "save", "load", "snapshot"
    );
    for n in [100usize, 1000, 2000] {
        let mut intent = IntentDoc::new(b"bench-intent-001", "site:bench");
        let mut status_doc = StatusDoc::new(b"status:bench");
        for i in 0..n {
            intent
                .create("servers", &format!("{i:08}"), spec(i), 1)
                .expect("create");
            status_doc
                .set("servers", &format!("{i:08}"), &status())
                .expect("status");
            intent.take_local_change();
            status_doc.take_local_change();
        }
        let mut create = Vec::new();
        let mut update = Vec::new();
        for k in 0..50 {
            let id = format!("x{k:07}");
            let t = Instant::now();
            intent.create("servers", &id, spec(k), 2).expect("create");
            status_doc.set("servers", &id, &status()).expect("status");
            intent.take_local_change();
            status_doc.take_local_change();
            create.push(t.elapsed());
            let t = Instant::now();
            intent
                .set("servers", &format!("{k:08}"), "power", json!("stopped"), 3)
                .expect("set");
            intent.take_local_change();
            update.push(t.elapsed());
        }
        let t = Instant::now();
        let snap = intent.save();
        let save = t.elapsed();
        let t = Instant::now();
        let mut loaded =
            IntentDoc::from_chunks([snap.as_slice()], b"bench-intent-002", "site:bench")
                .expect("load");
        let load = t.elapsed();
        // The agent records into a document it loaded at start: that must
        // cost what recording into a document built in memory costs.
        let mut after_load = Vec::new();
        for k in 0..50 {
            let t = Instant::now();
            loaded
                .create("servers", &format!("y{k:07}"), spec(k), 4)
                .expect("create");
            loaded.take_local_change();
            after_load.push(t.elapsed());
        }
        println!(
            "{:<10} {:>16} {:>16} {:>12} {:>12} {:>9} KiB",
            n,
            us(median(create)),
            us(median(update)),
            us(save),
            us(load),
            snap.len() / 1024
        );
        println!(
            "{:<10} {:>16} (spec only, into the document loaded from the snapshot)",
            "",
            us(median(after_load))
        );
    }
}
