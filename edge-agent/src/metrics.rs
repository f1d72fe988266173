//! Every Prometheus metric the agent exports, declared in one place.
//!
//! Labels are bounded: `route` is the matched route template (never a raw
//! path), `method` and `status` are small sets.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_request_seconds: HistogramVec,
    pub scheduler_decision_seconds: Histogram,
    pub store_commit_seconds: Histogram,
    pub store_batch_jobs: Histogram,
    pub reconcile_actions: IntCounterVec,
    pub unclaimed_domains: IntGauge,
    pub network_steps_failed: IntGauge,
    pub uplink_connected: IntGauge,
    pub uplink_connects: IntCounterVec,
    pub uplink_bytes: IntCounterVec,
    pub conflicts: IntCounter,
    /// Image bytes brought from the region, by how (fetched over the link,
    /// copied from chunks the site held, kept from a cut attempt).
    pub image_bytes: IntCounterVec,
    /// Volume backups sent to the region, by outcome (kept, failed).
    pub backups: IntCounterVec,
    /// Chunk bytes of volume backups sent to the region.
    pub backup_bytes: IntCounter,
    /// Files moved between tiers, by kind (image, snapshot) and the tier
    /// moved to (hot, warm, cold).
    pub tier_moves: IntCounterVec,
    /// Bytes of image files in each tier on the site (hot, warm).
    pub image_tier_bytes: IntGaugeVec,
    /// Edge HA: 1 while a caught-up standby holds every write before it is
    /// acknowledged.
    pub ha_standby_attached: IntGauge,
    /// Edge HA: writes acknowledged alone because the standby did not
    /// confirm them in time.
    pub ha_ack_timeouts: IntCounter,
    /// Edge HA: bytes this node sent over the peer link (entries, copies
    /// and heartbeats from an active; acks from a standby).
    pub ha_sent_bytes: IntCounter,
}

/// Latency buckets from 50 µs to 2.5 s.
const LATENCY: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let m = Metrics {
        http_requests: IntCounterVec::new(
            Opts::new(
                "roost_agent_http_requests_total",
                "API requests by route, method and status code",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric"),
        http_request_seconds: HistogramVec::new(
            HistogramOpts::new(
                "roost_agent_http_request_seconds",
                "API request latency by route",
            )
            .buckets(LATENCY.to_vec()),
            &["route"],
        )
        .expect("valid metric"),
        scheduler_decision_seconds: Histogram::with_opts(
            HistogramOpts::new(
                "roost_agent_scheduler_decision_seconds",
                "Time to filter and weigh hosts for one server",
            )
            .buckets(LATENCY.to_vec()),
        )
        .expect("valid metric"),
        store_commit_seconds: Histogram::with_opts(
            HistogramOpts::new(
                "roost_agent_store_commit_seconds",
                "Time to run and durably commit one batch of writes",
            )
            .buckets(LATENCY.to_vec()),
        )
        .expect("valid metric"),
        store_batch_jobs: Histogram::with_opts(
            HistogramOpts::new(
                "roost_agent_store_batch_jobs",
                "Writes committed together in one transaction",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )
        .expect("valid metric"),
        reconcile_actions: IntCounterVec::new(
            Opts::new(
                "roost_agent_reconcile_actions_total",
                "Compute driver actions by kind and outcome",
            ),
            &["action", "outcome"],
        )
        .expect("valid metric"),
        unclaimed_domains: IntGauge::new(
            "roost_agent_unclaimed_domains",
            "Domains this site made whose server the store does not have (left running; see the log)",
        )
        .expect("valid metric"),
        network_steps_failed: IntGauge::new(
            "roost_agent_network_steps_failed",
            "Steps the last network pass could not apply on this host (see the log)",
        )
        .expect("valid metric"),
        uplink_connected: IntGauge::new(
            "roost_agent_uplink_connected",
            "1 while a sync session with the region is up",
        )
        .expect("valid metric"),
        uplink_connects: IntCounterVec::new(
            Opts::new(
                "roost_agent_uplink_connects_total",
                "Connection attempts to the region by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric"),
        uplink_bytes: IntCounterVec::new(
            Opts::new(
                "roost_agent_uplink_frame_bytes_total",
                "Sync frame bytes exchanged with the region, by direction",
            ),
            &["direction"],
        )
        .expect("valid metric"),
        conflicts: IntCounter::new(
            "roost_agent_intent_conflicts_total",
            "Concurrent intent edits settled, each loser journaled",
        )
        .expect("valid metric"),
        image_bytes: IntCounterVec::new(
            Opts::new(
                "roost_agent_region_image_bytes_total",
                "Bytes of the region's images made whole here, by source (fetched, local, resumed)",
            ),
            &["source"],
        )
        .expect("valid metric"),
        backups: IntCounterVec::new(
            Opts::new(
                "roost_agent_volume_backups_total",
                "Volume backups sent to the region, by outcome (kept, failed)",
            ),
            &["outcome"],
        )
        .expect("valid metric"),
        backup_bytes: IntCounter::new(
            "roost_agent_volume_backup_bytes_total",
            "Chunk bytes of volume backups sent to the region (only what it lacked)",
        )
        .expect("valid metric"),
        tier_moves: IntCounterVec::new(
            Opts::new(
                "roost_agent_tier_moves_total",
                "Files moved between storage tiers, by kind (image, snapshot) and the tier moved to (hot, warm, cold)",
            ),
            &["kind", "to"],
        )
        .expect("valid metric"),
        image_tier_bytes: IntGaugeVec::new(
            Opts::new(
                "roost_agent_image_tier_bytes",
                "Bytes of the site's image files in each tier it holds (hot, warm), at the last tiering pass",
            ),
            &["tier"],
        )
        .expect("valid metric"),
        ha_standby_attached: IntGauge::new(
            "roost_agent_ha_standby_attached",
            "1 while a caught-up standby confirms every write before it is acknowledged",
        )
        .expect("valid metric"),
        ha_ack_timeouts: IntCounter::new(
            "roost_agent_ha_ack_timeouts_total",
            "Writes acknowledged without the standby's copy because it did not confirm in time",
        )
        .expect("valid metric"),
        ha_sent_bytes: IntCounter::new(
            "roost_agent_ha_sent_bytes_total",
            "Bytes this node sent over the peer link: entries, whole copies and heartbeats as active, acks as standby",
        )
        .expect("valid metric"),
        registry,
    };
    for c in [
        Box::new(m.http_requests.clone()) as Box<dyn prometheus::core::Collector>,
        Box::new(m.http_request_seconds.clone()),
        Box::new(m.scheduler_decision_seconds.clone()),
        Box::new(m.store_commit_seconds.clone()),
        Box::new(m.store_batch_jobs.clone()),
        Box::new(m.reconcile_actions.clone()),
        Box::new(m.unclaimed_domains.clone()),
        Box::new(m.network_steps_failed.clone()),
        Box::new(m.uplink_connected.clone()),
        Box::new(m.uplink_connects.clone()),
        Box::new(m.uplink_bytes.clone()),
        Box::new(m.conflicts.clone()),
        Box::new(m.image_bytes.clone()),
        Box::new(m.backups.clone()),
        Box::new(m.backup_bytes.clone()),
        Box::new(m.tier_moves.clone()),
        Box::new(m.image_tier_bytes.clone()),
        Box::new(m.ha_standby_attached.clone()),
        Box::new(m.ha_ack_timeouts.clone()),
        Box::new(m.ha_sent_bytes.clone()),
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
