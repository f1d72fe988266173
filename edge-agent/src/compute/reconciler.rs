//! The compute reconciler loop: a thin driver around [`plan`] and [`finish`].
//!
//! Work arrives two ways: the API pushes the id of each server it changed
//! onto a [`WorkQueue`] (so a create costs one server's reconcile, not a scan
//! of the site), and every [`RESYNC_PERIOD`] plus at start a full pass looks
//! at every server (so nothing missed, e.g. across a crash, stays missed).
//! Each server is driven step by step until [`plan`] says it is in sync.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use roost_common::model::Server;

use super::{finish, plan, ComputeDriver, DriverError, Outcome, Step};
use crate::metrics::METRICS;
use crate::store::{ServerQuery, Store, WriteError};

/// How often the reconciler looks at every server even when nothing woke it.
pub const RESYNC_PERIOD: Duration = Duration::from_secs(10);

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
}

impl Reconciler {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut full = true;
        // A fixed schedule, not a sleep restarted after every wake-up: under
        // a steady stream of API writes the full pass must still come round.
        let mut resync = tokio::time::interval(RESYNC_PERIOD);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await;
        loop {
            let result = if full {
                self.pass().await
            } else {
                self.queued().await
            };
            if let Err(e) = result {
                warn!(error = %e, "compute reconcile pass failed; retrying");
            }
            tokio::select! {
                _ = self.queue.notify.notified() => full = false,
                _ = resync.tick() => full = true,
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// A level-triggered pass over every server.
    pub async fn pass(&self) -> Result<(), WriteError> {
        self.queue.take();
        for server in self.store.servers(ServerQuery::default()).await? {
            self.drive(server).await;
        }
        Ok(())
    }

    /// The servers the API asked about since the last pass.
    async fn queued(&self) -> Result<(), WriteError> {
        for id in self.queue.take() {
            if let Some(server) = self.store.server(id).await? {
                self.drive(server).await;
            }
        }
        Ok(())
    }

    /// Steps one server until it is in sync (or [`MAX_STEPS`]).
    async fn drive(&self, mut server: Server) {
        for _ in 0..MAX_STEPS {
            let id = server.id.clone();
            match self.step(server).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    warn!(server_id = %id, error = %e, "reconciling a server failed");
                    return;
                }
            }
            server = match self.store.server(id).await {
                Ok(Some(s)) => s,
                _ => return,
            };
        }
    }

    /// Takes one step; says whether anything was done.
    async fn step(&self, server: Server) -> Result<bool, WriteError> {
        let id = server.id.clone();
        match plan(&server) {
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
                let driver = self.driver.clone();
                let s = server.clone();
                let result = tokio::task::spawn_blocking(move || driver.apply(&s, action))
                    .await
                    .unwrap_or_else(|e| Err(DriverError(format!("driver task failed: {e}"))));
                let outcome_label = if result.is_ok() { "ok" } else { "error" };
                METRICS
                    .reconcile_actions
                    .with_label_values(&[action.name(), outcome_label])
                    .inc();
                match &result {
                    Ok(_) => info!(server_id = %id, action = action.name(), "compute action done"),
                    Err(e) => {
                        warn!(server_id = %id, action = action.name(), error = %e, "compute action failed")
                    }
                }
                let failed = result.is_err();
                match finish(&server, action, result, Utc::now()) {
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
