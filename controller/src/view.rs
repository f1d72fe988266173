//! What the region shows of a site: dcmanager's separate fields
//! (management, availability, sync status, last seen, alarm counts) plus
//! the capacity and allotment the site's documents hold. Built the same
//! way for the API, the CLI and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use roost_common::model::{SiteCapacity, SiteQuota};
use roost_common::FieldError;

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

    /// Unknown unless the site is connected and has said in this
    /// connection which changes it holds (the region cannot know what it
    /// did while apart); otherwise whether anything waits either way.
    pub fn of(heard: bool, d: &Distance) -> SyncStatus {
        match (heard, d.to_site + d.from_site) {
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
    /// The latest entries of that journal (resource, field, winner and
    /// loser with their authors and times).
    #[serde(default)]
    pub recent_conflicts: Vec<serde_json::Value>,
    /// Sync frame bytes from and to the site since the controller started.
    pub bytes_in: u64,
    pub bytes_out: u64,
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
        // Heard first: `observe` stores this connection's peer heads before
        // it sets `heard`, so a true here means the distance below is
        // measured against what the site said in this connection.
        let heard = link.heard();
        let distance = link.distance();
        let facts = link.doc_facts();
        let (bytes_in, bytes_out) = link.bytes();
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
                status: SyncStatus::of(online && heard, &distance),
                to_site: distance.to_site,
                from_site: distance.from_site,
                lag_seconds: if online { link.lag() } else { 0.0 },
            },
            last_seen,
            alarms,
            capacity: facts.capacity.clone(),
            quota: facts.quota,
            conflicts: facts.conflicts,
            recent_conflicts: facts.recent_conflicts.clone(),
            bytes_in,
            bytes_out,
        })
    }

    /// Every site's view, in id order, computed at most once per
    /// [`VIEWS_FRESH`] (the dashboard, `/metrics` and the event stream all
    /// ask). Blocks.
    pub fn views(&self) -> Result<Arc<Vec<SiteView>>, FleetError> {
        let mut cache = self.views_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, views)) = cache.as_ref() {
            if at.elapsed() < VIEWS_FRESH {
                return Ok(views.clone());
            }
        }
        let views = Arc::new(self.compute_views()?);
        *cache = Some((Instant::now(), views.clone()));
        Ok(views)
    }

    /// Drops the cached views (after a change the caller will want to see).
    pub fn invalidate_views(&self) {
        *self.views_cache.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn compute_views(&self) -> Result<Vec<SiteView>, FleetError> {
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

/// How long computed site views are reused.
pub const VIEWS_FRESH: Duration = Duration::from_secs(1);

/// What the region reads out of a site's documents for its view, kept per
/// site until the documents change.
#[derive(Debug, Clone, Default)]
pub struct DocFacts {
    pub capacity: Option<SiteCapacity>,
    pub quota: Option<SiteQuota>,
    pub conflicts: u64,
    pub recent_conflicts: Vec<serde_json::Value>,
}

impl DocFacts {
    pub fn read(d: &roost_sync::Docs) -> DocFacts {
        let (conflicts, recent_conflicts) = d
            .status
            .get("site", "conflicts")
            .ok()
            .flatten()
            .map(|v| {
                (
                    v["total"].as_u64().unwrap_or(0),
                    v["recent"].as_array().cloned().unwrap_or_default(),
                )
            })
            .unwrap_or_default();
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
                serde_json::from_value(serde_json::Value::Object(q.fields.into_iter().collect()))
                    .ok()
            });
        DocFacts {
            capacity,
            quota,
            conflicts,
            recent_conflicts,
        }
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

    fn site(id: &str, availability: &str, sync: SyncStatus, critical: usize) -> SiteView {
        SiteView {
            id: id.into(),
            labels: [(
                "kind".to_string(),
                if id.starts_with('v') {
                    "vehicle"
                } else {
                    "factory"
                }
                .to_string(),
            )]
            .into(),
            management: "managed".into(),
            enrolled: true,
            availability: availability.into(),
            availability_since: None,
            address: None,
            sync: SyncView {
                status: sync,
                to_site: 0,
                from_site: 0,
                lag_seconds: 0.0,
            },
            last_seen: None,
            alarms: AlarmCounts {
                critical,
                major: 0,
                minor: 0,
            },
            capacity: None,
            quota: None,
            conflicts: 1,
            recent_conflicts: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    fn fleet() -> Vec<SiteView> {
        vec![
            site("v-02", "offline", SyncStatus::Unknown, 1),
            site("f-01", "online", SyncStatus::InSync, 0),
            site("v-01", "online", SyncStatus::OutOfSync, 0),
            site("f-02", "online", SyncStatus::InSync, 1),
            site("v-03", "online", SyncStatus::InSync, 0),
        ]
    }

    #[test]
    fn the_site_table_filters_sorts_and_pages_on_the_server() {
        let ids = |p: &SitePage| p.sites.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
        let all = query(&fleet(), &SiteQuery::default()).unwrap();
        assert_eq!(ids(&all), ["f-01", "f-02", "v-01", "v-02", "v-03"]);
        let q = |f: fn(&mut SiteQuery)| {
            let mut q = SiteQuery::default();
            f(&mut q);
            query(&fleet(), &q)
        };
        let p = q(|q| {
            q.label = Some("kind=vehicle".into());
            q.page = Some(2);
            q.per_page = Some(2);
        })
        .unwrap();
        assert_eq!((ids(&p), p.total, p.page), (vec!["v-03".to_string()], 3, 2));
        let p = q(|q| q.availability = Some("offline".into())).unwrap();
        assert_eq!(ids(&p), ["v-02"]);
        let p = q(|q| q.sync = Some("out-of-sync".into())).unwrap();
        assert_eq!(ids(&p), ["v-01"]);
        let p = q(|q| q.q = Some("F-0".into())).unwrap();
        assert_eq!(ids(&p), ["f-01", "f-02"]);
        let p = q(|q| {
            q.sort = Some("alarms".into());
            q.order = Some("desc".into());
            q.page = Some(1);
            q.per_page = Some(2);
        })
        .unwrap();
        assert_eq!(ids(&p), ["v-02", "f-02"]);
        for (bad, field) in [
            (q(|q| q.sort = Some("size".into())), "sort"),
            (q(|q| q.availability = Some("up".into())), "availability"),
            (q(|q| q.label = Some("novalue".into())), "label"),
            (q(|q| q.per_page = Some(5000)), "per_page"),
            (q(|q| q.page = Some(0)), "page"),
        ] {
            assert_eq!(bad.unwrap_err().field, field);
        }
    }

    #[test]
    fn the_overview_counts_degraded_online_sites_and_the_last_hour() {
        let o = overview(&fleet(), (10, 20));
        assert_eq!((o.sites, o.online, o.offline), (5, 4, 1));
        assert_eq!(o.degraded, 1, "f-02: online with a critical alarm");
        assert_eq!(o.out_of_sync, 1);
        assert_eq!(o.alarms.critical, 2);
        assert_eq!(o.conflicts, 5);
        let mut t = Traffic::default();
        t.add(100, 5, 1);
        t.add(100, 5, 1);
        t.add(130, 1, 0);
        assert_eq!(t.last_hour(159), (11, 2));
        t.add(161, 0, 7);
        assert_eq!(t.last_hour(161), (1, 7), "minute 100 is over an hour old");
    }

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

/// What the site table asks for: filters, order and one page.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteQuery {
    /// Part of the site id, any case.
    #[serde(default)]
    pub q: Option<String>,
    /// `key=value`: sites carrying that label.
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub availability: Option<String>,
    #[serde(default)]
    pub sync: Option<String>,
    /// `id` (default), `availability`, `sync`, `last_seen`, `alarms`.
    #[serde(default)]
    pub sort: Option<String>,
    /// `asc` (default) or `desc`.
    #[serde(default)]
    pub order: Option<String>,
    /// From 1. Without it every matching site is returned.
    #[serde(default)]
    pub page: Option<usize>,
    /// 1 to 1000, default 50.
    #[serde(default)]
    pub per_page: Option<usize>,
}

/// One page of the site table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SitePage {
    pub sites: Vec<SiteView>,
    /// Sites matching the filters, on all pages.
    pub total: usize,
    pub page: usize,
    pub per_page: usize,
}

fn one_of(field: &str, v: &Option<String>, allowed: &[&str]) -> Result<(), FieldError> {
    match v {
        Some(x) if !allowed.contains(&x.as_str()) => Err(FieldError::new(
            field,
            x,
            format!("must be one of {}", allowed.join(", ")),
        )),
        _ => Ok(()),
    }
}

/// Filters, sorts and pages `views`. Pure.
pub fn query(views: &[SiteView], q: &SiteQuery) -> Result<SitePage, FieldError> {
    one_of("availability", &q.availability, &["online", "offline"])?;
    one_of("sync", &q.sync, &["in-sync", "out-of-sync", "unknown"])?;
    one_of(
        "sort",
        &q.sort,
        &["id", "availability", "sync", "last_seen", "alarms"],
    )?;
    one_of("order", &q.order, &["asc", "desc"])?;
    let label = match &q.label {
        None => None,
        Some(l) => match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Some((k.to_string(), v.to_string())),
            _ => return Err(FieldError::new("label", l, "must be key=value")),
        },
    };
    let per_page = q.per_page.unwrap_or(50);
    roost_common::validate::range("per_page", per_page, 1, 1000)?;
    if q.page == Some(0) {
        return Err(FieldError::new("page", 0, "must be 1 or more"));
    }
    let needle = q.q.as_deref().map(str::to_lowercase);
    let mut views: Vec<&SiteView> = views.iter().collect();
    views.retain(|v| {
        needle
            .as_deref()
            .is_none_or(|n| v.id.to_lowercase().contains(n))
            && label
                .as_ref()
                .is_none_or(|(k, val)| v.labels.get(k) == Some(val))
            && q.availability
                .as_deref()
                .is_none_or(|a| v.availability == a)
            && q.sync
                .as_deref()
                .is_none_or(|s| v.sync.status.as_str() == s)
    });
    let weight =
        |v: &SiteView| v.alarms.critical * 1_000_000 + v.alarms.major * 1000 + v.alarms.minor;
    match q.sort.as_deref().unwrap_or("id") {
        "availability" => {
            views.sort_by(|a, b| a.availability.cmp(&b.availability).then(a.id.cmp(&b.id)))
        }
        "sync" => views.sort_by(|a, b| {
            a.sync
                .status
                .as_str()
                .cmp(b.sync.status.as_str())
                .then(a.id.cmp(&b.id))
        }),
        "last_seen" => views.sort_by(|a, b| a.last_seen.cmp(&b.last_seen).then(a.id.cmp(&b.id))),
        "alarms" => views.sort_by(|a, b| weight(a).cmp(&weight(b)).then(a.id.cmp(&b.id))),
        _ => views.sort_by(|a, b| a.id.cmp(&b.id)),
    }
    if q.order.as_deref() == Some("desc") {
        views.reverse();
    }
    let total = views.len();
    let (page, per_page) = match q.page {
        None => (1, total.max(1)),
        Some(p) => (p, per_page),
    };
    let sites = views
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    Ok(SitePage {
        sites,
        total,
        page,
        per_page,
    })
}

/// The dashboard's overview.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub sites: usize,
    pub online: usize,
    pub offline: usize,
    /// Online, but with an active major or critical alarm, or out of sync
    /// for more than [`DEGRADED_LAG_SECS`].
    pub degraded: usize,
    pub out_of_sync: usize,
    pub alarms: AlarmCounts,
    pub conflicts: u64,
    /// Sync frame bytes in the last hour (from and to sites).
    pub bytes_in_last_hour: u64,
    pub bytes_out_last_hour: u64,
}

pub const DEGRADED_LAG_SECS: f64 = 60.0;

/// The overview of `views`. Pure.
pub fn overview(views: &[SiteView], bytes_last_hour: (u64, u64)) -> Overview {
    let mut o = Overview {
        sites: views.len(),
        bytes_in_last_hour: bytes_last_hour.0,
        bytes_out_last_hour: bytes_last_hour.1,
        ..Default::default()
    };
    for v in views {
        let online = v.availability == "online";
        if online {
            o.online += 1;
        } else {
            o.offline += 1;
        }
        if online
            && (v.alarms.critical + v.alarms.major > 0 || v.sync.lag_seconds > DEGRADED_LAG_SECS)
        {
            o.degraded += 1;
        }
        if v.sync.status == SyncStatus::OutOfSync {
            o.out_of_sync += 1;
        }
        o.alarms.critical += v.alarms.critical;
        o.alarms.major += v.alarms.major;
        o.alarms.minor += v.alarms.minor;
        o.conflicts += v.conflicts;
    }
    o
}

/// Sync bytes per minute over the last hour, for the overview.
#[derive(Debug, Default)]
pub struct Traffic {
    /// (minute since the epoch, bytes in, bytes out), oldest first.
    minutes: std::collections::VecDeque<(i64, u64, u64)>,
}

impl Traffic {
    pub fn add(&mut self, minute: i64, bytes_in: u64, bytes_out: u64) {
        match self.minutes.back_mut() {
            Some(last) if last.0 == minute => {
                last.1 += bytes_in;
                last.2 += bytes_out;
            }
            _ => self.minutes.push_back((minute, bytes_in, bytes_out)),
        }
        while self.minutes.front().is_some_and(|f| f.0 <= minute - 60) {
            self.minutes.pop_front();
        }
    }

    /// Bytes (in, out) in the 60 minutes up to and including `minute`.
    pub fn last_hour(&self, minute: i64) -> (u64, u64) {
        self.minutes
            .iter()
            .filter(|m| m.0 > minute - 60 && m.0 <= minute)
            .fold((0, 0), |acc, m| (acc.0 + m.1, acc.1 + m.2))
    }
}
