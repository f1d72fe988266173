//! Storage: the worker that turns volumes and snapshots into qcow2 files.
//!
//! - [`plan`] is pure: for each volume and snapshot in a working state
//!   (`creating`, `extending`, `reverting`, `deleting`), the file operation
//!   it needs. Tested without files.
//! - [`qemu_img`] carries an operation out with `qemu-img`, writing a new
//!   file beside its final name, syncing it and renaming it into place, so
//!   a crash leaves either the whole file or none (a `.part` at most, which
//!   the next attempt replaces).
//! - [`Worker`] is the loop: woken by the API after each volume write, and
//!   every [`PERIOD`]; it reads the work from the store, runs it one
//!   operation at a time on a blocking thread and records each result.
//!   Everything it does is derived from the store, so an agent stopped
//!   mid-operation finishes (or redoes) it after its next start. After a
//!   failed extend it asks [`qemu_img::whole_size_gb`] whether the file is
//!   still whole, and at what size.
//!
//! [`fetch`] brings the region's images, only the chunks the site lacks,
//! while the link is up; [`backup`] sends `central-replicated` volumes to
//! the region the same way, only the chunks the region lacks; [`tier`]
//! keeps image files in the hot cache, on local disk or (the region's
//! images) only at the region, per `storage.tiers`.
//!
//! Volumes live in `storage.volumes_dir` (default `<data dir>/volumes`),
//! snapshots in its `snapshots/`. Attaching is not here: it is the
//! server's intent, carried out by the compute reconciler.

pub mod backup;
pub mod fetch;
pub mod plan;
pub mod qemu_img;
pub mod tier;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::store::Store;

/// How often the worker looks for work nobody woke it for.
pub const PERIOD: Duration = Duration::from_secs(10);

/// Free space the site keeps on its data and volume disks for its store.
pub const FREE_SPACE_RESERVE: u64 = 1 << 30;

/// Bytes free to unprivileged writers on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Snapshots whose files one worker is changing (the tierer letting one
/// go, the backup worker bringing one back): the other leaves them alone
/// until it is done.
#[derive(Debug, Clone, Default)]
pub struct Busy(Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

/// A snapshot held by [`Busy::hold`], let go when dropped.
#[derive(Debug)]
pub struct Held {
    busy: Busy,
    id: String,
}

impl Busy {
    /// Holds `id`, unless the other worker does.
    pub fn hold(&self, id: &str) -> Option<Held> {
        let fresh = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
        fresh.then(|| Held {
            busy: self.clone(),
            id: id.to_string(),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.busy
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

#[derive(Debug, Clone)]
pub struct Worker {
    pub store: Store,
    pub wake: Arc<Notify>,
    /// Told after operations ran (the backup worker: files changed).
    pub done: Arc<Notify>,
}

impl Worker {
    /// Runs until `shutdown` turns true (an operation under way finishes
    /// first; the store has its result).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            match self.pass().await {
                // Something changed: look again at once.
                Ok(true) => {
                    self.done.notify_one();
                    continue;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "storage pass failed; retrying"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(PERIOD) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// Runs the work due now; says whether there was any.
    async fn pass(&self) -> Result<bool, crate::store::WriteError> {
        let work = self.store.storage_work().await?;
        let any = !work.is_empty();
        for w in work {
            let resized = match &w.op {
                Ok(plan::Op::Resize { file, .. }) => Some(file.clone()),
                _ => None,
            };
            let result = match w.op {
                Err(why) => Err(why),
                Ok(op) => {
                    let started = std::time::Instant::now();
                    let o = op.clone();
                    let r = tokio::task::spawn_blocking(move || qemu_img::run(&o))
                        .await
                        .unwrap_or_else(|e| Err(format!("storage task failed: {e}")));
                    let ms = started.elapsed().as_millis() as u64;
                    match &r {
                        Ok(()) => {
                            info!(subject = ?w.subject, op = ?op, ms, "storage operation done")
                        }
                        Err(e) => {
                            warn!(subject = ?w.subject, op = ?op, error = %e, ms, "storage operation failed")
                        }
                    }
                    r
                }
            };
            // A failed extend may have left the file as it was: look.
            let whole_size_gb = match (resized, &result) {
                (Some(file), Err(_)) => {
                    tokio::task::spawn_blocking(move || qemu_img::whole_size_gb(&file))
                        .await
                        .ok()
                        .flatten()
                }
                _ => None,
            };
            let subject = w.subject.clone();
            self.store
                .write(move |ctx| ctx.storage_done(&subject, result, whole_size_gb))
                .await?;
        }
        Ok(any)
    }
}

#[cfg(test)]
mod tests;
