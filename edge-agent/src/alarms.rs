//! The site's own alarms: what the site sees about itself that an operator
//! must know, raised and cleared here whether the region is reachable or
//! not, and synced with their original times when it is.
//!
//! - `site.link_down` (major): no connection to the region for
//!   `alarms.link_down_after_secs`; cleared when the link is back.
//! - `storage.disk_nearly_full` (major; from 98% a critical one replaces
//!   it): the data directory's filesystem is used at or above
//!   `alarms.disk_nearly_full_percent`; cleared 2 points below.
//! - `host.down` (critical): another host of the site, one with an IP
//!   `address`, has not answered on the agents' API port for
//!   `alarms.host_down_after_secs`; cleared when it answers. Only a node
//!   that knows which host it is (`network.host`) watches the others, and
//!   not while its own API listens on loopback. The
//!   scheduler places nothing new on a host that is down, and
//!   `os-hypervisors` shows it `down`.
//!
//! [`evaluate`] is pure (facts in, changes out, tested with made-up
//! facts); [`Monitor`] gathers the facts every [`PERIOD`] and hands the
//! changes to the store (`store/alarms.rs`), which publishes them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use roost_common::config::AlarmsSection;
use roost_common::model::{AlarmStatus, Severity};

use crate::store::Store;

/// How often the monitor looks.
pub const PERIOD: Duration = Duration::from_secs(2);
pub const LINK_DOWN: &str = "site.link_down";
pub const DISK_NEARLY_FULL: &str = "storage.disk_nearly_full";
pub const HOST_DOWN: &str = "host.down";
pub const STANDBY_MISSING: &str = "ha.standby_missing";
pub const BACKUP_STALE: &str = "volume.backup_stale";
/// How long a peer has to accept a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Points below the threshold at which a disk alarm clears (so a disk
/// hovering at the line does not raise and clear it over and over).
const DISK_HYSTERESIS: f64 = 2.0;
const DISK_CRITICAL: f64 = 98.0;

/// A change the monitor decided.
#[derive(Debug, Clone, PartialEq)]
pub enum AlarmChange {
    Raise(AlarmStatus),
    Clear {
        code: String,
        entity: String,
        at: DateTime<Utc>,
    },
}

impl AlarmChange {
    pub fn code(&self) -> &str {
        match self {
            AlarmChange::Raise(a) => &a.code,
            AlarmChange::Clear { code, .. } => code,
        }
    }
}

/// What the monitor saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub now: DateTime<Utc>,
    /// The region's name and, while there is no connection to it, since
    /// when; `None` for a site without a region.
    pub link: Option<(String, Option<DateTime<Utc>>)>,
    /// The data directory and its filesystem's used share in percent
    /// (`None` if it could not be read).
    pub disk: (String, Option<f64>),
    /// The peer hosts watched and, while one does not answer, since when.
    pub hosts: Vec<(String, Option<DateTime<Utc>>)>,
    /// On the active node of a two-node site: the standby's name and,
    /// while it does not hold every write, since when.
    pub standby: Option<(String, Option<DateTime<Utc>>)>,
    /// The `central-replicated` volumes and, while one has changed since
    /// its last backup, that backup's time (or its making, if none).
    pub volumes: Vec<(String, Option<DateTime<Utc>>)>,
}

/// The alarms to raise and clear, given the active ones.
pub fn evaluate(f: &Facts, cfg: &AlarmsSection, active: &[AlarmStatus]) -> Vec<AlarmChange> {
    let mut out = Vec::new();
    let find = |code: &str, entity: &str| {
        active
            .iter()
            .find(|a| a.code == code && a.entity == entity && a.cleared_at.is_none())
    };
    let is_active = |code: &str, entity: &str| find(code, entity).is_some();
    // This monitor's alarms about what is no longer there (a region renamed
    // or removed, a data directory moved) end now.
    let link_entity = f.link.as_ref().map(|(r, _)| format!("region={r}"));
    let disk_entity = format!("path={}", f.disk.0);
    let standby_entity = f.standby.as_ref().map(|(n, _)| format!("node={n}"));
    for a in active.iter().filter(|a| a.cleared_at.is_none()) {
        let current = match a.code.as_str() {
            LINK_DOWN => link_entity.as_deref(),
            DISK_NEARLY_FULL => Some(disk_entity.as_str()),
            HOST_DOWN => f
                .hosts
                .iter()
                .any(|(h, _)| a.entity == host_entity(h))
                .then_some(a.entity.as_str()),
            STANDBY_MISSING => standby_entity.as_deref(),
            BACKUP_STALE => f
                .volumes
                .iter()
                .any(|(v, _)| a.entity == format!("volume={v}"))
                .then_some(a.entity.as_str()),
            _ => continue,
        };
        if current != Some(a.entity.as_str()) {
            out.push(AlarmChange::Clear {
                code: a.code.clone(),
                entity: a.entity.clone(),
                at: f.now,
            });
        }
    }
    if let Some((region, down_since)) = &f.link {
        let entity = format!("region={region}");
        let after = chrono::Duration::seconds(cfg.link_down_after_secs as i64);
        let active = is_active(LINK_DOWN, &entity);
        timed(
            &mut out,
            f.now,
            (LINK_DOWN, entity, Severity::Major),
            *down_since,
            after,
            active,
            |since| {
                format!(
                "no connection to region {region} since {since}; the site keeps working and its changes wait for the link"
            )
            },
        );
    }
    let after = chrono::Duration::seconds(cfg.host_down_after_secs as i64);
    for (host, silent_since) in &f.hosts {
        let entity = host_entity(host);
        let active = is_active(HOST_DOWN, &entity);
        timed(
            &mut out,
            f.now,
            (HOST_DOWN, entity, Severity::Critical),
            *silent_since,
            after,
            active,
            |since| {
                format!(
                "host {host} has not answered since {since}; nothing new is placed there; check its power, its network and its agent"
            )
            },
        );
    }
    if let Some((node, since)) = &f.standby {
        let entity = format!("node={node}");
        let active = is_active(STANDBY_MISSING, &entity);
        timed(
            &mut out,
            f.now,
            (STANDBY_MISSING, entity, Severity::Major),
            *since,
            after,
            active,
            |since| {
                format!(
                "standby node {node} has not held this site's writes since {since}; if this node fails now, the site's API is gone until one is back; check node {node} and the peer link"
            )
            },
        );
    }
    let after = chrono::Duration::seconds(cfg.backup_stale_after_secs as i64);
    for (volume, since) in &f.volumes {
        let entity = format!("volume={volume}");
        let active = is_active(BACKUP_STALE, &entity);
        timed(
            &mut out,
            f.now,
            (BACKUP_STALE, entity, Severity::Minor),
            *since,
            after,
            active,
            |since| {
                format!(
                "volume {volume} has changed since its last backup at the region ({since}); it is backed up when no running guest holds it and the link is up: stop its server for a moment, or check the link"
            )
            },
        );
    }
    let (dir, used) = &f.disk;
    if let Some(used) = *used {
        let entity = format!("path={dir}");
        let line = f64::from(cfg.disk_nearly_full_percent);
        let current = find(DISK_NEARLY_FULL, &entity);
        let on = current.is_some();
        // Past the critical line a major alarm is replaced by a critical one.
        let escalate = used >= DISK_CRITICAL
            && used >= line
            && current.is_some_and(|a| a.severity != Severity::Critical);
        if escalate {
            out.push(AlarmChange::Clear {
                code: DISK_NEARLY_FULL.into(),
                entity: entity.clone(),
                at: f.now,
            });
        }
        if used >= line && (!on || escalate) {
            out.push(AlarmChange::Raise(AlarmStatus {
                code: DISK_NEARLY_FULL.into(),
                entity,
                severity: if used >= DISK_CRITICAL {
                    Severity::Critical
                } else {
                    Severity::Major
                },
                reason: format!(
                    "the filesystem of {dir} is {used:.0}% used (alarm at {line:.0}%); free space or move volumes and images off this site"
                ),
                raised_at: f.now,
                cleared_at: None,
            }));
        } else if used < line - DISK_HYSTERESIS && on {
            out.push(AlarmChange::Clear {
                code: DISK_NEARLY_FULL.into(),
                entity,
                at: f.now,
            });
        }
    }
    out
}

/// An alarm raised once a condition has held for `after` (`since` says
/// since when, `None` while it does not hold) and cleared when it ends;
/// `reason` gets the start as RFC 3339.
fn timed(
    out: &mut Vec<AlarmChange>,
    now: DateTime<Utc>,
    (code, entity, severity): (&str, String, Severity),
    since: Option<DateTime<Utc>>,
    after: chrono::Duration,
    active: bool,
    reason: impl FnOnce(String) -> String,
) {
    match since {
        Some(since) if now - since >= after && !active => {
            out.push(AlarmChange::Raise(AlarmStatus {
                code: code.into(),
                entity,
                severity,
                reason: reason(since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                raised_at: now,
                cleared_at: None,
            }))
        }
        None if active => out.push(AlarmChange::Clear {
            code: code.into(),
            entity,
            at: now,
        }),
        _ => {}
    }
}

/// The hosts a node watches: the site's other hosts with an IP address,
/// at this agent's API port (every node of a site serves its API on the
/// same port). None unless `network.host` says which host this node is,
/// and none while this agent's API is on a loopback address (then so are
/// its peers', out of each other's reach: watching would call them all
/// down).
pub fn peers(
    config: &roost_common::config::SiteConfig,
    api: SocketAddr,
) -> Vec<(String, SocketAddr)> {
    let Some(me) = config.network.as_ref().map(|n| n.host.as_str()) else {
        return Vec::new();
    };
    if api.ip().is_loopback() {
        if config.hosts.len() > 1 {
            tracing::info!(%api, "the API listens on a loopback address, so the site's other hosts are not watched (no host.down); set api.listen to the management address to watch them");
        }
        return Vec::new();
    }
    let port = api.port();
    config
        .hosts
        .iter()
        .filter(|h| h.name != me)
        .filter_map(|h| {
            let ip: std::net::IpAddr = h.address.as_deref()?.parse().ok()?;
            Some((h.name.clone(), SocketAddr::new(ip, port)))
        })
        .collect()
}

fn host_entity(host: &str) -> String {
    format!("host={host}")
}

/// The link's state as the uplink reports it: since when it is down
/// (`None` while connected).
#[derive(Debug)]
pub struct LinkState {
    down_since: Mutex<Option<DateTime<Utc>>>,
}

impl LinkState {
    /// Down since now: a starting site has no connection yet.
    pub fn new() -> Arc<LinkState> {
        Arc::new(LinkState {
            down_since: Mutex::new(Some(Utc::now())),
        })
    }

    pub fn connected(&self) {
        *self.down_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn disconnected(&self) {
        let mut d = self.down_since.lock().unwrap_or_else(|e| e.into_inner());
        if d.is_none() {
            *d = Some(Utc::now());
        }
    }

    pub fn down_since(&self) -> Option<DateTime<Utc>> {
        *self.down_since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Used share of the filesystem holding `dir`, in percent.
fn used_percent(dir: &std::path::Path) -> Option<f64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    let total = st.f_blocks as f64;
    if total == 0.0 {
        return None;
    }
    // As df counts: blocks in use over those in use plus those an
    // unprivileged writer may still take.
    let used = st.f_blocks.saturating_sub(st.f_bfree) as f64;
    Some(100.0 * used / (used + st.f_bavail as f64))
}

/// Gathers the facts every [`PERIOD`] and records what [`evaluate`] says.
#[derive(Debug)]
pub struct Monitor {
    pub store: Store,
    pub config: AlarmsSection,
    pub data_dir: PathBuf,
    /// The region's name and its link, for a site with a region.
    pub link: Option<(String, Arc<LinkState>)>,
    /// The peer hosts to watch: name and the address of their agent's API.
    pub peers: Vec<(String, SocketAddr)>,
    /// Since when each peer has not answered (absent while it answers).
    pub silent: Mutex<HashMap<String, DateTime<Utc>>>,
    /// On an active node of a two-node site: the standby's name and what
    /// says whether it holds every write.
    pub standby: Option<(String, Arc<crate::ha::Replication>)>,
}

impl Monitor {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(PERIOD);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "cannot check the site's alarms; trying again");
            }
        }
    }

    /// Tries every peer at once; records since when each is silent.
    async fn probe_peers(&self) -> Vec<(String, Option<DateTime<Utc>>)> {
        let mut probes = tokio::task::JoinSet::new();
        for (name, addr) in self.peers.clone() {
            probes.spawn(async move {
                let answered =
                    tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
                        .await
                        .is_ok_and(|c| c.is_ok());
                (name, answered)
            });
        }
        let mut results = Vec::with_capacity(self.peers.len());
        while let Some(Ok(r)) = probes.join_next().await {
            results.push(r);
        }
        let now = Utc::now();
        let mut silent = self.silent.lock().unwrap_or_else(|e| e.into_inner());
        for (name, answered) in results {
            if answered {
                silent.remove(&name);
            } else {
                silent.entry(name).or_insert(now);
            }
        }
        self.peers
            .iter()
            .map(|(name, _)| (name.clone(), silent.get(name).copied()))
            .collect()
    }

    /// Since when each `central-replicated` volume's backup has been
    /// behind (`None`: its file is as its last backup read it): the time
    /// of that backup, or the volume's making if it was never backed up.
    async fn unbacked_volumes(
        &self,
    ) -> Result<Vec<(String, Option<DateTime<Utc>>)>, crate::store::WriteError> {
        let volumes = self.store.replicated_volumes().await?;
        Ok(tokio::task::spawn_blocking(move || {
            volumes
                .into_iter()
                .filter_map(|v| {
                    let now = crate::storage::backup::stamp(v.status.file.as_deref()?).ok()?;
                    let since = match &v.status.backup {
                        Some(b) if b.stamp == now => None,
                        Some(b) => Some(
                            DateTime::parse_from_rfc3339(&b.at)
                                .map_or(v.created_at, |t| t.with_timezone(&Utc)),
                        ),
                        None => Some(v.created_at),
                    };
                    Some((v.id, since))
                })
                .collect()
        })
        .await
        .unwrap_or_default())
    }

    async fn pass(&self) -> Result<(), crate::store::WriteError> {
        let hosts = self.probe_peers().await;
        let volumes = self.unbacked_volumes().await?;
        let facts = Facts {
            now: Utc::now(),
            link: self
                .link
                .as_ref()
                .map(|(name, l)| (name.clone(), l.down_since())),
            disk: (
                self.data_dir.display().to_string(),
                used_percent(&self.data_dir),
            ),
            hosts,
            standby: self
                .standby
                .as_ref()
                .map(|(node, r)| (node.clone(), r.unprotected_since())),
            volumes,
        };
        let active = self.store.alarms(true).await?;
        let changes = evaluate(&facts, &self.config, &active);
        if !changes.is_empty() {
            self.store.write(move |w| w.apply_alarms(&changes)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn facts(now: i64, down_since: Option<i64>, used: Option<f64>) -> Facts {
        Facts {
            now: at(now),
            link: Some(("eu".into(), down_since.map(at))),
            disk: ("/var/lib/roost".into(), used),
            hosts: Vec::new(),
            standby: None,
            volumes: Vec::new(),
        }
    }

    #[test]
    fn a_missing_standby_is_raised_after_the_wait_and_cleared_when_it_holds_every_write() {
        let cfg = AlarmsSection::default();
        let mut active = Vec::new();
        let with = |now: i64, since: Option<i64>| Facts {
            standby: Some(("controller-1".into(), since.map(at))),
            ..facts(now, None, None)
        };
        assert!(evaluate(&with(19, Some(0)), &cfg, &active).is_empty());
        let raised = evaluate(&with(20, Some(0)), &cfg, &active);
        assert!(matches!(&raised[..], [AlarmChange::Raise(a)]
            if a.code == STANDBY_MISSING && a.entity == "node=controller-1" && a.severity == Severity::Major));
        applied(&mut active, raised);
        assert!(
            evaluate(&with(30, Some(0)), &cfg, &active).is_empty(),
            "raised once"
        );
        let cleared = evaluate(&with(31, None), &cfg, &active);
        assert!(
            matches!(&cleared[..], [AlarmChange::Clear { code, .. }] if code == STANDBY_MISSING)
        );
        // A node no longer configured for HA clears it too.
        assert_eq!(evaluate(&facts(32, None, None), &cfg, &active).len(), 1);
    }

    #[test]
    fn a_volume_unbacked_past_the_wait_is_raised_and_cleared_by_a_backup_or_its_deletion() {
        let cfg = AlarmsSection {
            backup_stale_after_secs: 3600,
            ..AlarmsSection::default()
        };
        let with = |now: i64, volumes: Vec<(&str, Option<i64>)>| Facts {
            volumes: volumes
                .into_iter()
                .map(|(v, s)| (v.to_string(), s.map(at)))
                .collect(),
            ..facts(now, None, None)
        };
        let mut active = Vec::new();
        // Changed 59 minutes ago: not yet.
        assert!(evaluate(&with(3540, vec![("v1", Some(0))]), &cfg, &active).is_empty());
        let raised = evaluate(
            &with(3600, vec![("v1", Some(0)), ("v2", None)]),
            &cfg,
            &active,
        );
        assert_eq!(raised.len(), 1, "{raised:?}");
        let AlarmChange::Raise(a) = &raised[0] else {
            panic!("{raised:?}")
        };
        assert_eq!(
            (a.code.as_str(), a.entity.as_str(), a.severity),
            (BACKUP_STALE, "volume=v1", Severity::Minor)
        );
        assert!(
            a.reason
                .contains("volume v1 has changed since its last backup"),
            "{}",
            a.reason
        );
        applied(&mut active, raised);
        // Still stale: nothing new.
        assert!(evaluate(&with(7200, vec![("v1", Some(0))]), &cfg, &active).is_empty());
        // Backed up: cleared.
        let cleared = evaluate(&with(7300, vec![("v1", None)]), &cfg, &active);
        assert!(matches!(&cleared[..], [AlarmChange::Clear { code, .. }] if code == BACKUP_STALE));
        applied(&mut active, cleared);
        // Raised again, then the volume is deleted: cleared.
        let again = evaluate(&with(20_000, vec![("v1", Some(7400))]), &cfg, &active);
        applied(&mut active, again);
        assert_eq!(active.iter().filter(|a| a.cleared_at.is_none()).count(), 1);
        let gone = evaluate(&with(20_100, vec![]), &cfg, &active);
        assert!(matches!(&gone[..], [AlarmChange::Clear { code, .. }] if code == BACKUP_STALE));
    }

    fn applied(active: &mut Vec<AlarmStatus>, changes: Vec<AlarmChange>) {
        for c in changes {
            match c {
                AlarmChange::Raise(a) => active.push(a),
                AlarmChange::Clear { code, entity, at } => {
                    for a in active.iter_mut() {
                        if a.code == code && a.entity == entity && a.cleared_at.is_none() {
                            a.cleared_at = Some(at);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_link_alarm_waits_for_the_threshold_then_clears_on_reconnection() {
        let cfg = AlarmsSection {
            link_down_after_secs: 60,
            ..Default::default()
        };
        let mut active = Vec::new();
        assert!(evaluate(&facts(59, Some(0), None), &cfg, &active).is_empty());
        let raised = evaluate(&facts(60, Some(0), None), &cfg, &active);
        assert_eq!(raised.len(), 1);
        let AlarmChange::Raise(a) = &raised[0] else {
            panic!("{raised:?}")
        };
        assert_eq!(
            (a.code.as_str(), a.entity.as_str()),
            (LINK_DOWN, "region=eu")
        );
        assert_eq!(a.severity, Severity::Major);
        assert_eq!(a.raised_at, at(60));
        assert!(
            a.reason.contains("since 2027-01-15T08:00:00Z"),
            "{}",
            a.reason
        );
        applied(&mut active, raised);
        // Raised once, however long the cut.
        assert!(evaluate(&facts(3_600, Some(0), None), &cfg, &active).is_empty());
        let cleared = evaluate(&facts(3_601, None, None), &cfg, &active);
        assert_eq!(
            cleared,
            vec![AlarmChange::Clear {
                code: LINK_DOWN.into(),
                entity: "region=eu".into(),
                at: at(3_601)
            }]
        );
        applied(&mut active, cleared);
        assert!(evaluate(&facts(3_602, None, None), &cfg, &active).is_empty());
        // A site without a region never has a link alarm; one left from
        // when it had one (or from another region's name) ends.
        let alone = Facts {
            link: None,
            ..facts(9_999, None, None)
        };
        assert!(evaluate(&alone, &cfg, &[]).is_empty());
        let mut left = Vec::new();
        applied(&mut left, evaluate(&facts(100, Some(0), None), &cfg, &[]));
        let ended = evaluate(&alone, &cfg, &left);
        assert!(
            matches!(&ended[..], [AlarmChange::Clear { code, entity, .. }] if code == LINK_DOWN && entity == "region=eu"),
            "{ended:?}"
        );
    }

    #[test]
    fn a_silent_host_is_down_after_its_wait_and_clears_when_it_answers() {
        let cfg = AlarmsSection {
            host_down_after_secs: 20,
            ..Default::default()
        };
        let with_hosts = |now: i64, hosts: &[(&str, Option<i64>)]| Facts {
            hosts: hosts
                .iter()
                .map(|(h, since)| (h.to_string(), since.map(at)))
                .collect(),
            ..facts(now, None, None)
        };
        let mut active = Vec::new();
        let quiet = [("c1", Some(0)), ("c2", None)];
        assert!(evaluate(&with_hosts(19, &quiet), &cfg, &active).is_empty());
        let raised = evaluate(&with_hosts(20, &quiet), &cfg, &active);
        let [AlarmChange::Raise(a)] = &raised[..] else {
            panic!("{raised:?}")
        };
        assert_eq!((a.code.as_str(), a.entity.as_str()), (HOST_DOWN, "host=c1"));
        assert_eq!(a.severity, Severity::Critical);
        assert!(
            a.reason.contains("host c1 has not answered since"),
            "{}",
            a.reason
        );
        applied(&mut active, raised);
        assert!(evaluate(&with_hosts(500, &quiet), &cfg, &active).is_empty());
        let back = evaluate(
            &with_hosts(501, &[("c1", None), ("c2", None)]),
            &cfg,
            &active,
        );
        assert_eq!(
            back,
            vec![AlarmChange::Clear {
                code: HOST_DOWN.into(),
                entity: "host=c1".into(),
                at: at(501)
            }]
        );
        // A host no longer watched (taken out of the config) clears.
        let mut left = Vec::new();
        applied(&mut left, evaluate(&with_hosts(30, &quiet), &cfg, &[]));
        let gone = evaluate(&with_hosts(31, &[("c2", None)]), &cfg, &left);
        assert!(
            matches!(&gone[..], [AlarmChange::Clear { code, entity, .. }] if code == HOST_DOWN && entity == "host=c1"),
            "{gone:?}"
        );
    }

    #[test]
    fn a_node_watches_the_sites_other_hosts_at_its_own_api_port() {
        let yaml = "site: {id: s1, name: S}\nhosts:\n  - {name: c0, roles: [compute], vcpus: 1, ram_mb: 1024, disk_gb: 1, address: 10.0.0.1}\n  - {name: c1, roles: [compute], vcpus: 1, ram_mb: 1024, disk_gb: 1, address: 10.0.0.2}\n  - {name: c2, roles: [compute], vcpus: 1, ram_mb: 1024, disk_gb: 1}\n";
        let alone = roost_common::config::parse(std::path::Path::new("s.yaml"), yaml).unwrap();
        let api: SocketAddr = "10.0.0.1:8774".parse().unwrap();
        assert!(peers(&alone, api).is_empty(), "which host am I? unknown");
        let node = roost_common::config::parse(
            std::path::Path::new("s.yaml"),
            &format!("{yaml}network: {{host: c0}}\n"),
        )
        .unwrap();
        assert_eq!(
            peers(&node, api),
            vec![("c1".to_string(), "10.0.0.2:8774".parse().unwrap())]
        );
        let local: SocketAddr = "127.0.0.1:8774".parse().unwrap();
        assert!(
            peers(&node, local).is_empty(),
            "peers out of reach: none watched"
        );
    }

    /// The probe against real sockets: a listener answers, a closed port
    /// does not; silence is dated from the first failed probe.
    #[tokio::test]
    async fn the_monitor_dates_a_peers_silence_from_its_first_failed_probe() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "site: {id: s1, name: S}\nhosts:\n  - {name: c0, roles: [compute], vcpus: 1, ram_mb: 1024, disk_gb: 1}\n";
        let cfg = roost_common::config::parse(std::path::Path::new("s.yaml"), yaml).unwrap();
        let store = Store::open(dir.path(), "s1", &cfg).unwrap().0;
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let m = Monitor {
            store,
            config: AlarmsSection::default(),
            data_dir: dir.path().to_path_buf(),
            link: None,
            peers: vec![
                ("up".into(), up.local_addr().unwrap()),
                ("closed".into(), closed),
            ],
            silent: Default::default(),
            standby: None,
        };
        let first = m.probe_peers().await;
        assert_eq!(first[0], ("up".to_string(), None));
        let since = first[1].1.expect("the closed port is silent");
        let again = m.probe_peers().await;
        assert_eq!(again[1], ("closed".to_string(), Some(since)));
    }

    #[test]
    fn the_disk_alarm_has_a_critical_band_and_clears_below_its_hysteresis() {
        let cfg = AlarmsSection {
            disk_nearly_full_percent: 90,
            ..Default::default()
        };
        let mut active = Vec::new();
        assert!(evaluate(&facts(0, None, Some(89.9)), &cfg, &active).is_empty());
        let raised = evaluate(&facts(1, None, Some(90.0)), &cfg, &active);
        let AlarmChange::Raise(a) = &raised[0] else {
            panic!("{raised:?}")
        };
        assert_eq!(a.severity, Severity::Major);
        assert!(a.reason.contains("90% used (alarm at 90%)"), "{}", a.reason);
        applied(&mut active, raised);
        // Still above the clearing line: nothing.
        assert!(evaluate(&facts(2, None, Some(88.5)), &cfg, &active).is_empty());
        let cleared = evaluate(&facts(3, None, Some(87.9)), &cfg, &active);
        assert!(
            matches!(&cleared[..], [AlarmChange::Clear { code, .. }] if code == DISK_NEARLY_FULL)
        );
        let critical = evaluate(&facts(4, None, Some(99.0)), &cfg, &[]);
        let AlarmChange::Raise(a) = &critical[0] else {
            panic!("{critical:?}")
        };
        assert_eq!(a.severity, Severity::Critical);
        // A major one already raised is replaced by a critical one, once.
        let mut major = Vec::new();
        applied(&mut major, evaluate(&facts(5, None, Some(91.0)), &cfg, &[]));
        let up = evaluate(&facts(6, None, Some(98.5)), &cfg, &major);
        assert!(
            matches!(&up[..], [AlarmChange::Clear { .. }, AlarmChange::Raise(a)] if a.severity == Severity::Critical),
            "{up:?}"
        );
        applied(&mut major, up);
        assert!(evaluate(&facts(7, None, Some(99.0)), &cfg, &major).is_empty());
        // An unreadable filesystem changes nothing.
        assert!(evaluate(&facts(5, None, None), &cfg, &active).is_empty());
    }

    #[tokio::test]
    async fn a_volumes_backup_is_behind_since_it_was_taken_once_the_file_changed() {
        use roost_common::model::{VolumeBackup, VolumeSource, VolumeSpec};
        let dir = tempfile::tempdir().unwrap();
        let yaml = "site: {id: s1, name: S}\nhosts:\n  - {name: c0, roles: [compute], vcpus: 1, ram_mb: 1024, disk_gb: 1}\n";
        let cfg = roost_common::config::parse(std::path::Path::new("s.yaml"), yaml).unwrap();
        let store = Store::open(dir.path(), "s1", &cfg).unwrap().0;
        let vols = dir.path().join("volumes");
        std::fs::create_dir_all(&vols).unwrap();
        let spec = |t: &str| VolumeSpec {
            name: "v".into(),
            description: None,
            project_id: "p".into(),
            user_id: "u".into(),
            size_gb: 1,
            volume_type: t.into(),
            source: VolumeSource::Blank,
            metadata: Default::default(),
        };
        let mut made = Vec::new();
        for t in ["central-replicated", "edge-local"] {
            let (s, d) = (spec(t), vols.clone());
            let v = store
                .write(move |w| w.create_volume(s, &None, &d))
                .await
                .unwrap();
            let file = v.status.file.clone().unwrap();
            std::fs::write(&file, b"qcow2").unwrap();
            let subject = crate::storage::plan::Subject::Volume(v.id.clone());
            store
                .write(move |w| w.storage_done(&subject, Ok(()), None))
                .await
                .unwrap();
            made.push((v.id, file));
        }
        let (id, file) = made[0].clone();
        // As the store keeps it.
        let created = store.volume(id.clone(), None).await.unwrap().created_at;
        let m = Monitor {
            store: store.clone(),
            config: AlarmsSection::default(),
            data_dir: dir.path().to_path_buf(),
            link: None,
            peers: Vec::new(),
            silent: Default::default(),
            standby: None,
        };
        // Never backed up: since it was made; the edge-local one is not
        // watched.
        assert_eq!(
            m.unbacked_volumes().await.unwrap(),
            vec![(id.clone(), Some(created))]
        );
        // Backed up as it is: nothing unbacked.
        let backup = VolumeBackup {
            at: "2026-11-28T10:00:00.000Z".into(),
            stamp: crate::storage::backup::stamp(&file).unwrap(),
            ..VolumeBackup::default()
        };
        let (i, b) = (id.clone(), backup);
        store.write(move |w| w.backup_done(&i, b)).await.unwrap();
        assert_eq!(
            m.unbacked_volumes().await.unwrap(),
            vec![(id.clone(), None)]
        );
        // Written since: behind since that backup, across restarts.
        std::fs::write(&file, b"qcow2, changed").unwrap();
        assert_eq!(
            m.unbacked_volumes().await.unwrap(),
            vec![(id, Some("2026-11-28T10:00:00Z".parse().unwrap()))]
        );
    }
}
