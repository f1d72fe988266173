//! The compute reconciler loop: a thin driver around [`plan`] and [`finish`].

use std::sync::Arc;
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

#[derive(Debug, Clone)]
pub struct Reconciler {
    pub store: Store,
    pub driver: Arc<dyn ComputeDriver>,
    /// Notified by every API write that may need reconciling.
    pub wake: Arc<Notify>,
}

impl Reconciler {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.pass().await {
                warn!(error = %e, "compute reconcile pass failed; retrying");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RESYNC_PERIOD) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// One level-triggered pass over every server.
    pub async fn pass(&self) -> Result<(), WriteError> {
        for server in self.store.servers(ServerQuery::default()).await? {
            if let Err(e) = self.reconcile(server).await {
                warn!(error = %e, "reconciling a server failed");
            }
        }
        Ok(())
    }

    async fn reconcile(&self, server: Server) -> Result<(), WriteError> {
        let id = server.id.clone();
        match plan(&server) {
            Step::Nothing => Ok(()),
            Step::Record(status) => self.store.write(move |ctx| ctx.set_server_status(&id, &status)).await,
            Step::Act { action, during } => {
                if during != server.status {
                    let (sid, st) = (id.clone(), during.clone());
                    self.store.write(move |ctx| ctx.set_server_status(&sid, &st)).await?;
                }
                let server = Server { status: during, ..server };
                let driver = self.driver.clone();
                let s = server.clone();
                let result = tokio::task::spawn_blocking(move || driver.apply(&s, action))
                    .await
                    .unwrap_or_else(|e| Err(DriverError(format!("driver task failed: {e}"))));
                let outcome_label = if result.is_ok() { "ok" } else { "error" };
                METRICS.reconcile_actions.with_label_values(&[action.name(), outcome_label]).inc();
                match &result {
                    Ok(_) => info!(server_id = %id, action = action.name(), "compute action done"),
                    Err(e) => warn!(server_id = %id, action = action.name(), error = %e, "compute action failed"),
                }
                match finish(&server, action, result, Utc::now()) {
                    Outcome::Status(st) => self.store.write(move |ctx| ctx.set_server_status(&id, &st)).await,
                    Outcome::Fail(st, fault) => self.store.write(move |ctx| ctx.fail_server(&id, st, fault)).await,
                    Outcome::Remove => self.store.write(move |ctx| ctx.remove_server(&id)).await,
                }
            }
        }
    }
}
