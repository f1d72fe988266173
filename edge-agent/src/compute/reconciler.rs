//! The compute reconciler loop: a thin driver around [`plan`] and [`finish`].
//!
//! Work arrives two ways: the API pushes the id of each server it changed
//! onto a [`WorkQueue`] (so a create costs one server's reconcile, not a scan
//! of the site), and every [`RESYNC_PERIOD`] plus at start a full pass looks
//! at every server and every domain the driver made (so nothing missed,
//! e.g. across a crash or a host reboot, stays missed: stopped domains of
//! running servers are started; domains of servers the store does not have
//! are reported and left alone). Each server is driven step by step until [`plan`] says it
//! is in sync; up to `max_parallel` servers are driven at once, never one
//! server twice at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{info, warn};

use roost_common::model::{PowerState, Server};

use super::{
    finish, plan, ComputeDriver, DriverAction, DriverError, Guest, Observed, Outcome, Seen, Step,
};
use crate::metrics::METRICS;
use crate::store::{ServerQuery, Store, WriteError};

/// How often the reconciler looks at every server even when nothing woke it.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(10);

/// How long a stopping agent waits for compute actions under way.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Most steps taken for one server in a row before moving on (a server that
/// needs more is picked up again by the next pass).
const MAX_STEPS: usize = 8;

/// Ids of servers whose spec changed, deduplicated, with a wake-up.
#[derive(Debug, Default)]
pub struct WorkQueue {
    dirty: Mutex<BTreeSet<String>>,
    notify: Notify,
}

impl WorkQueue {
    /// Asks the reconciler to look at a server soon.
    pub fn push(&self, id: &str) {
        if let Ok(mut d) = self.dirty.lock() {
            d.insert(id.to_string());
        }
        self.notify.notify_one();
    }

    fn take(&self) -> Vec<String> {
        self.dirty
            .lock()
            .map(|mut d| std::mem::take(&mut *d).into_iter().collect())
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct Reconciler {
    pub store: Store,
    pub driver: Arc<dyn ComputeDriver>,
    pub queue: Arc<WorkQueue>,
    /// Servers driven at once.
    pub max_parallel: usize,
}

impl Reconciler {
    /// Runs until `shutdown` turns true, then waits (a bounded time) for
    /// actions under way to finish.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // A fixed schedule, not a sleep restarted after every wake-up: under
        // a steady stream of API writes the full pass must still come round.
        let mut resync = tokio::time::interval(RESYNC_PERIOD);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        let mut full = true;
        let mut pending: BTreeMap<String, Seen> = BTreeMap::new();
        let mut inflight: HashMap<tokio::task::Id, String> = HashMap::new();
        let mut tasks = JoinSet::new();
        let mut warned = HashSet::new();
        loop {
            if std::mem::take(&mut full) {
                let busy: HashSet<String> = inflight.values().cloned().collect();
                match self.survey(&mut warned, &busy).await {
                    // What was seen of a server under way is already stale.
                    Ok(work) => pending.extend(
                        work.into_iter()
                            .filter(|(id, _)| !inflight.values().any(|b| b == id)),
                    ),
                    Err(e) => warn!(error = %e, "compute survey failed; retrying at the next pass"),
                }
            }
            for id in self.queue.take() {
                pending.entry(id).or_insert(Seen::Unknown);
            }
            // One task per server at a time; the rest wait their turn.
            let busy: HashSet<&String> = inflight.values().collect();
            let room = self.max_parallel.saturating_sub(inflight.len());
            let ready: Vec<String> = pending
                .keys()
                .filter(|id| !busy.contains(id))
                .take(room)
                .cloned()
                .collect();
            for id in ready {
                let seen = pending.remove(&id).unwrap_or(Seen::Unknown);
                let me = self.clone();
                let sid = id.clone();
                let handle = tasks.spawn(async move { me.drive(sid, seen).await });
                inflight.insert(handle.id(), id);
            }
            tokio::select! {
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let task = match done {
                        Ok((task, ())) => task,
                        Err(e) => {
                            warn!(error = %e, "a compute task failed");
                            e.id()
                        }
                    };
                    inflight.remove(&task);
                }
                _ = self.queue.notify.notified() => {}
                _ = resync.tick() => full = true,
                _ = shutdown.changed() => break,
            }
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN_LIMIT, drain).await.is_err() {
            warn!(
                servers = inflight.len(),
                "compute actions still under way at shutdown; the next start finishes them"
            );
        }
    }

    /// Looks at every server and every domain: the servers that need work,
    /// with what the hypervisor showed of each. Domains this site made whose
    /// server the store lacks are reported, never removed (see [`survey`]).
    async fn survey(
        &self,
        warned: &mut HashSet<String>,
        busy: &HashSet<String>,
    ) -> Result<Vec<(String, Seen)>, WriteError> {
        // The hypervisor first, then the store: a domain is made only after
        // its server is committed, so a domain seen here whose server is not
        // in the store read after it (and is not being deleted right now) is
        // truly unclaimed.
        let driver = self.driver.clone();
        let observed = match tokio::task::spawn_blocking(move || driver.observe()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot list domains; trusting recorded status this pass");
                None
            }
            Err(e) => {
                warn!(error = %e, "domain listing task failed");
                None
            }
        };
        let servers = self.store.servers(ServerQuery::default()).await?;
        let (work, unclaimed) = survey(&servers, observed.as_deref());
        // A delete under way removes the domain, then the row: between the
        // two reads above it can look unclaimed.
        let unclaimed: Vec<String> = unclaimed
            .into_iter()
            .filter(|id| !busy.contains(id))
            .collect();
        METRICS.unclaimed_domains.set(unclaimed.len() as i64);
        for id in unclaimed {
            if warned.insert(id.clone()) {
                warn!(server_id = %id, "a domain this site made has no server in the store; left as it is (a store restored from a backup, or a site re-enrolled on the same host: the region's intent may bring the server back and the domain is adopted with its disk). Delete it by hand if it is not wanted");
            }
        }
        Ok(work)
    }

    /// Steps one server until it is in sync (or [`MAX_STEPS`]).
    async fn drive(&self, id: String, mut seen: Seen) {
        for _ in 0..MAX_STEPS {
            let server = match self.store.server(id.clone()).await {
                Ok(Some(s)) => s,
                _ => return,
            };
            match self.step(server, seen).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    warn!(server_id = %id, error = %e, "reconciling a server failed");
                    return;
                }
            }
            // What the hypervisor showed is stale once we have acted.
            seen = Seen::Unknown;
        }
    }

    /// Takes one step; says whether anything was done.
    async fn step(&self, server: Server, seen: Seen) -> Result<bool, WriteError> {
        let id = server.id.clone();
        match plan(&server, seen) {
            Step::Nothing => Ok(false),
            Step::Record(status) => {
                self.store
                    .write(move |ctx| ctx.set_server_status(&id, &status))
                    .await?;
                Ok(true)
            }
            Step::Act { action, during } => {
                if during != server.status {
                    let (sid, st) = (id.clone(), during.clone());
                    self.store
                        .write(move |ctx| ctx.set_server_status(&sid, &st))
                        .await?;
                }
                let server = Server {
                    status: during,
                    ..server
                };
                // Flavor and image are read only for an action that may
                // (re)build the domain: stop and delete never need them.
                let (flavor, image, ports, volumes) = if action.may_build() {
                    let sid = server.id.clone();
                    // The volumes the domain is to have: the spec's when
                    // attaching or detaching, else the ones it has.
                    let volumes = match action {
                        DriverAction::SyncVolumes => server.spec.volumes.clone(),
                        _ => server.status.volumes.clone(),
                    };
                    (
                        self.store.flavor(server.spec.flavor_id.clone()).await?,
                        self.store.image(server.spec.image_id.clone()).await?,
                        self.store
                            .read(move |c| {
                                crate::store::network::read::ports(c, &None, None, Some(&sid))
                            })
                            .await?,
                        self.store.volume_files(volumes).await?,
                    )
                } else {
                    (None, None, Vec::new(), Vec::new())
                };
                let guest = Guest {
                    flavor,
                    image,
                    ports,
                    volumes,
                    server,
                };
                let driver = self.driver.clone();
                let g = guest.clone();
                let started = std::time::Instant::now();
                let result = tokio::task::spawn_blocking(move || driver.apply(&g, action))
                    .await
                    .unwrap_or_else(|e| Err(DriverError(format!("driver task failed: {e}"))));
                let outcome_label = if result.is_ok() { "ok" } else { "error" };
                METRICS
                    .reconcile_actions
                    .with_label_values(&[action.name(), outcome_label])
                    .inc();
                let ms = started.elapsed().as_millis() as u64;
                match &result {
                    Ok(power) => {
                        info!(server_id = %id, action = action.name(), power = ?power, ms, "compute action done")
                    }
                    Err(e) => {
                        warn!(server_id = %id, action = action.name(), error = %e, ms, "compute action failed")
                    }
                }
                let failed = result.is_err();
                match finish(&guest.server, action, result, Utc::now()) {
                    Outcome::Status(st) => {
                        self.store
                            .write(move |ctx| ctx.set_server_status(&id, &st))
                            .await?
                    }
                    Outcome::Fail(st, fault) => {
                        self.store
                            .write(move |ctx| ctx.fail_server(&id, st, fault))
                            .await?
                    }
                    Outcome::Remove => self.store.write(move |ctx| ctx.remove_server(&id)).await?,
                }
                // A failed action is retried by the next full pass, not at once.
                Ok(!failed)
            }
        }
    }
}

/// The pure half of a full pass: which servers need work (with what the
/// hypervisor showed of each) and which observed domains belong to no
/// server. `observed` is `None` when the driver cannot look.
///
/// A domain without a server is never removed: deletes go through the
/// server's `deleted` spec and keep its row until the domain is gone, so
/// such a domain means the store lost the server (a restore, a wiped disk
/// with the instances kept), and removing it would destroy a workload and
/// its disk that the region's intent may bring back.
pub fn survey(
    servers: &[Server],
    observed: Option<&[Observed]>,
) -> (Vec<(String, Seen)>, Vec<String>) {
    let power: HashMap<&str, PowerState> = observed
        .unwrap_or_default()
        .iter()
        .map(|o| (o.server_id.as_str(), o.power))
        .collect();
    let work = servers
        .iter()
        .filter_map(|s| {
            let seen = match (observed, power.get(s.id.as_str())) {
                (None, _) => Seen::Unknown,
                (Some(_), Some(p)) => Seen::Power(*p),
                (Some(_), None) => Seen::Absent,
            };
            (plan(s, seen) != Step::Nothing).then(|| (s.id.clone(), seen))
        })
        .collect();
    let known: HashSet<&str> = servers.iter().map(|s| s.id.as_str()).collect();
    let orphans = observed
        .unwrap_or_default()
        .iter()
        .filter(|o| !known.contains(o.server_id.as_str()))
        .map(|o| o.server_id.clone())
        .collect();
    (work, orphans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_common::model::{Resource, ServerSpec, VmState};

    fn server(id: &str, vm: VmState) -> Server {
        let mut s: Server = Resource::new(ServerSpec::new(id, "p", "u", "f", "i"), Utc::now());
        s.id = id.into();
        s.status.vm_state = vm;
        s.status.power_state = PowerState::Running;
        s
    }

    fn seen(id: &str, power: PowerState) -> Observed {
        Observed {
            server_id: id.into(),
            power,
        }
    }

    #[test]
    fn survey_after_a_host_reboot() {
        let servers = [
            server("a", VmState::Active),
            server("b", VmState::Active),
            server("c", VmState::Active),
            server("new", VmState::Building),
        ];
        let observed = [
            seen("a", PowerState::Running),
            seen("b", PowerState::Shutdown),
            seen("gone", PowerState::Running),
        ];
        let (work, orphans) = survey(&servers, Some(&observed));
        assert_eq!(
            work,
            vec![
                ("b".to_string(), Seen::Power(PowerState::Shutdown)),
                ("c".to_string(), Seen::Absent),
                ("new".to_string(), Seen::Absent),
            ]
        );
        assert_eq!(orphans, vec!["gone".to_string()]);
    }

    #[test]
    fn survey_without_a_look_trusts_the_record_and_removes_nothing() {
        let servers = [
            server("a", VmState::Active),
            server("new", VmState::Building),
        ];
        let (work, orphans) = survey(&servers, None);
        assert_eq!(work, vec![("new".to_string(), Seen::Unknown)]);
        assert!(orphans.is_empty());
    }
}
