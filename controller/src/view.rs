//! What the region shows of a site: dcmanager's separate fields
//! (management, availability, sync status, last seen, alarm counts) plus
//! the capacity and allotment the site's documents hold. Built the same
//! way for the API, the CLI and `/metrics`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use roost_common::model::{SiteCapacity, SiteQuota};

use crate::fleet::{AlarmRow, FleetError, SiteRow};
use crate::link::{Availability, Distance, Region};
use crate::metrics::{METRICS, TOP_LAGGING};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncStatus {
    InSync,
    OutOfSync,
    Unknown,
}

impl SyncStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncStatus::InSync => "in-sync",
            SyncStatus::OutOfSync => "out-of-sync",
            SyncStatus::Unknown => "unknown",
        }
    }

    /// Unknown while the site is not connected (the region cannot know
    /// what it did meanwhile); otherwise whether anything waits either way.
    pub fn of(online: bool, d: &Distance) -> SyncStatus {
        match (online, d.to_site + d.from_site) {
            (false, _) => SyncStatus::Unknown,
            (true, 0) => SyncStatus::InSync,
            (true, _) => SyncStatus::OutOfSync,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncView {
    pub status: SyncStatus,
    /// Changes of the region's the site has not acknowledged (counted
    /// offline too: the intent waiting for it).
    pub to_site: usize,
    /// Changes the site announced that have not arrived (a lower bound).
    pub from_site: usize,
    /// Seconds out of sync while online.
    pub lag_seconds: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmCounts {
    pub critical: usize,
    pub major: usize,
    pub minor: usize,
}

impl AlarmCounts {
    pub fn of<'a>(alarms: impl IntoIterator<Item = &'a AlarmRow>) -> AlarmCounts {
        let mut c = AlarmCounts::default();
        for a in alarms {
            match a.severity.as_str() {
                "critical" => c.critical += 1,
                "major" => c.major += 1,
                _ => c.minor += 1,
            }
        }
        c
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteView {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub management: String,
    pub enrolled: bool,
    pub availability: String,
    /// When the site last went online or offline (since this controller
    /// started), and from where it is connected.
    pub availability_since: Option<String>,
    pub address: Option<String>,
    pub sync: SyncView,
    pub last_seen: Option<String>,
    pub alarms: AlarmCounts,
    /// The site's room as it last published it.
    pub capacity: Option<SiteCapacity>,
    /// The region's allotment for the site.
    pub quota: Option<SiteQuota>,
    /// Concurrent intent edits the site has settled and journaled (its
    /// conflict journal's size, as it last published it).
    pub conflicts: u64,
}

impl Region {
    /// One site's view. Blocks (loads the site's documents the first time).
    pub fn view(&self, row: &SiteRow, alarms: AlarmCounts) -> Result<SiteView, FleetError> {
        let link = self.site(&row.id)?;
        let availability = link
            .availability
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let (online, since, address) = match availability {
            Availability::Online { since, address } => (true, Some(since), Some(address)),
            Availability::Offline { since } => (false, since, None),
        };
        let distance = link.distance();
        let (capacity, quota, conflicts) = {
            let d = link.docs.lock().unwrap_or_else(|e| e.into_inner());
            let conflicts = d
                .status
                .get("site", "conflicts")
                .ok()
                .flatten()
                .and_then(|v| v["total"].as_u64())
                .unwrap_or(0);
            let capacity = d
                .status
                .get("site", "capacity")
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_value(v).ok());
            let quota = d
                .intent
                .resource("quotas", "site")
                .ok()
                .flatten()
                .filter(|q| !q.deleted)
                .and_then(|q| {
                    serde_json::from_value(serde_json::Value::Object(
                        q.fields.into_iter().collect(),
                    ))
                    .ok()
                });
            (capacity, quota, conflicts)
        };
        let last_seen = if online {
            Some(crate::fleet::now_text())
        } else {
            row.last_seen.clone()
        };
        Ok(SiteView {
            id: row.id.clone(),
            labels: row.labels.clone(),
            management: row.management.clone(),
            enrolled: row.enrolled_at.is_some(),
            availability: if online { "online" } else { "offline" }.into(),
            availability_since: since
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            address,
            sync: SyncView {
                status: SyncStatus::of(online, &distance),
                to_site: distance.to_site,
                from_site: distance.from_site,
                lag_seconds: if online { link.lag() } else { 0.0 },
            },
            last_seen,
            alarms,
            capacity,
            quota,
            conflicts,
        })
    }

    /// Every site's view, in id order. Blocks.
    pub fn views(&self) -> Result<Vec<SiteView>, FleetError> {
        let alarms = self.store.alarms(None, false)?;
        let mut by_site: BTreeMap<&str, Vec<&AlarmRow>> = BTreeMap::new();
        for a in &alarms {
            by_site.entry(a.site.as_str()).or_default().push(a);
        }
        self.store
            .sites()?
            .iter()
            .map(|row| {
                let counts =
                    AlarmCounts::of(by_site.get(row.id.as_str()).into_iter().flatten().copied());
                self.view(row, counts)
            })
            .collect()
    }
}

/// Sets the fleet gauges from the sites' views (at each scrape).
pub fn export(views: &[SiteView]) {
    let m = &*METRICS;
    for a in ["online", "offline"] {
        m.sites
            .with_label_values(&[a])
            .set(views.iter().filter(|v| v.availability == a).count() as i64);
    }
    for s in [
        SyncStatus::InSync,
        SyncStatus::OutOfSync,
        SyncStatus::Unknown,
    ] {
        m.sites_sync
            .with_label_values(&[s.as_str()])
            .set(views.iter().filter(|v| v.sync.status == s).count() as i64);
    }
    let sum = |f: fn(&SyncView) -> usize| views.iter().map(|v| f(&v.sync)).sum::<usize>() as i64;
    m.changes_waiting
        .with_label_values(&["to_site"])
        .set(sum(|s| s.to_site));
    m.changes_waiting
        .with_label_values(&["from_site"])
        .set(sum(|s| s.from_site));
    let total = views.iter().fold(AlarmCounts::default(), |mut t, v| {
        t.critical += v.alarms.critical;
        t.major += v.alarms.major;
        t.minor += v.alarms.minor;
        t
    });
    m.alarms
        .with_label_values(&["critical"])
        .set(total.critical as i64);
    m.alarms
        .with_label_values(&["major"])
        .set(total.major as i64);
    m.alarms
        .with_label_values(&["minor"])
        .set(total.minor as i64);
    m.conflicts
        .set(views.iter().map(|v| v.conflicts).sum::<u64>() as i64);
    m.sync_lag.reset();
    let mut lagging: Vec<&SiteView> = views.iter().filter(|v| v.sync.lag_seconds > 0.0).collect();
    lagging.sort_by(|a, b| b.sync.lag_seconds.total_cmp(&a.sync.lag_seconds));
    m.sync_lag
        .with_label_values(&["max"])
        .set(lagging.first().map_or(0.0, |v| v.sync.lag_seconds));
    for v in lagging.iter().take(TOP_LAGGING) {
        m.sync_lag
            .with_label_values(&[v.id.as_str()])
            .set(v.sync.lag_seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_status_is_unknown_offline_and_counts_both_ways_online() {
        let d = |to_site, from_site| Distance { to_site, from_site };
        assert_eq!(SyncStatus::of(false, &d(0, 0)), SyncStatus::Unknown);
        assert_eq!(SyncStatus::of(false, &d(3, 0)), SyncStatus::Unknown);
        assert_eq!(SyncStatus::of(true, &d(0, 0)), SyncStatus::InSync);
        assert_eq!(SyncStatus::of(true, &d(0, 1)), SyncStatus::OutOfSync);
        assert_eq!(SyncStatus::of(true, &d(2, 0)), SyncStatus::OutOfSync);
    }
}
