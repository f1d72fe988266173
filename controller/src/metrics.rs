//! Every Prometheus metric the controller exports, declared in one place.
//!
//! Labels are bounded: no per-site label except on the lag of the
//! [`TOP_LAGGING`] sites furthest behind (the set is rebuilt at each scrape).
//! Gauges about the fleet are computed when `/metrics` is scraped.

use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Sites named in `roost_region_sync_lag_seconds`.
pub const TOP_LAGGING: usize = 5;

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub sites: IntGaugeVec,
    pub sites_sync: IntGaugeVec,
    pub changes_waiting: IntGaugeVec,
    pub alarms: IntGaugeVec,
    pub conflicts: IntGauge,
    pub sync_bytes: IntCounterVec,
    pub sync_lag: GaugeVec,
    pub intent_writes: IntCounterVec,
    pub connections: IntCounterVec,
    pub bulk_bytes: prometheus::IntCounter,
    pub backup_bytes: prometheus::IntCounter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let gauge = |name: &str, help: &str, label: &str| {
        IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric")
    };
    let counter = |name: &str, help: &str, label: &str| {
        IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric")
    };
    let m = Metrics {
        registry: Registry::new(),
        sites: gauge(
            "roost_region_sites",
            "Sites by availability (online, offline)",
            "availability",
        ),
        sites_sync: gauge(
            "roost_region_sites_sync",
            "Sites by sync status (in-sync, out-of-sync, unknown)",
            "sync",
        ),
        changes_waiting: gauge(
            "roost_region_changes_waiting",
            "Document changes not yet on the other side, summed over sites (to_site, from_site)",
            "direction",
        ),
        alarms: gauge(
            "roost_region_alarms_active",
            "Active site alarms by severity",
            "severity",
        ),
        conflicts: IntGauge::new(
            "roost_region_conflicts",
            "Concurrent intent edits the sites settled and journaled, summed as they last published",
        )
        .expect("valid metric"),
        sync_bytes: counter(
            "roost_region_sync_frame_bytes_total",
            "Sync frame bytes exchanged with sites, by direction (in, out)",
            "direction",
        ),
        sync_lag: GaugeVec::new(
            Opts::new(
                "roost_region_sync_lag_seconds",
                "How long online sites have been out of sync: the largest (site=\"max\") and the few furthest behind",
            ),
            &["site"],
        )
        .expect("valid metric"),
        intent_writes: counter(
            "roost_region_intent_writes_total",
            "Writes of the region's intent into site documents, by kind",
            "kind",
        ),
        connections: counter(
            "roost_region_site_connections_total",
            "Site connections by outcome (accepted, refused)",
            "outcome",
        ),
        bulk_bytes: prometheus::IntCounter::new(
            "roost_region_bulk_chunk_bytes_total",
            "Image chunk bytes sent to sites on their bulk streams",
        )
        .expect("valid metric"),
        backup_bytes: prometheus::IntCounter::new(
            "roost_region_backup_chunk_bytes_total",
            "Volume backup chunk bytes received from sites on their bulk streams",
        )
        .expect("valid metric"),
    };
    for c in [
        Box::new(m.sites.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(m.sites_sync.clone()),
        Box::new(m.changes_waiting.clone()),
        Box::new(m.alarms.clone()),
        Box::new(m.conflicts.clone()),
        Box::new(m.sync_bytes.clone()),
        Box::new(m.sync_lag.clone()),
        Box::new(m.intent_writes.clone()),
        Box::new(m.connections.clone()),
        Box::new(m.bulk_bytes.clone()),
        Box::new(m.backup_bytes.clone()),
    ] {
        m.registry.register(c).expect("metric registered once");
    }
    m
});

impl Metrics {
    /// The text exposition format, for `GET /metrics`.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
