//! The writer thread: group commit of queued jobs, one transaction per batch,
//! one savepoint per job.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use tokio::sync::mpsc;

use roost_common::config::SchedulerSection;
use roost_common::model::{SiteCapacity, Usage};

use super::journal::{DocOp, Journal};
use super::{inventory, StoreError};
use crate::metrics::METRICS;
use crate::scheduler::HostView;

/// Called once the batch holding the job committed (or failed to).
pub(super) type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A job: runs in the transaction, says whether it succeeded, and hands back
/// what to call after commit.
pub(super) type Job = Box<dyn FnOnce(&mut WriteCtx<'_>) -> (bool, Reply) + Send>;

/// The active's replication: the term its log entries carry, and what a
/// committed batch waits on (see `crate::ha`).
pub(super) type Ha = Option<(u64, std::sync::Arc<crate::ha::Replication>)>;

/// Most jobs one transaction holds.
const MAX_BATCH: usize = 128;

/// What a job may touch: the open transaction, the hosts with their usage,
/// the scheduler's weights and the site's documents.
#[derive(Debug)]
pub struct WriteCtx<'a> {
    pub tx: &'a rusqlite::Transaction<'a>,
    pub now: DateTime<Utc>,
    pub weights: &'a SchedulerSection,
    pub(super) hosts: &'a mut Vec<HostView>,
    index: &'a HashMap<String, usize>,
    /// Set when the job changed host usage, so a rollback reloads it.
    pub(super) touched: bool,
    /// Document edits, applied only if the job succeeds.
    pub(super) ops: Vec<DocOp>,
    /// False while the region's intent is being applied to the tables.
    pub(super) record_intent: bool,
    /// The documents, locked for the batch (read them; edit them only by
    /// recording ops, except for merge write-backs).
    pub(super) docs: &'a mut roost_sync::Docs,
    /// Intent heads the tables agree with (see `Journal::applied`).
    pub(super) applied: &'a mut Option<Vec<automerge::ChangeHash>>,
}

impl WriteCtx<'_> {
    pub fn hosts(&self) -> &[HostView] {
        self.hosts
    }

    /// Adds a claim to a host's usage. Call only after the claim's row is
    /// written.
    pub fn claim(&mut self, host: &str, usage: &Usage) {
        if let Some(&i) = self.index.get(host) {
            self.touched = true;
            self.hosts[i].used.add(usage);
        }
    }

    /// Removes a claim from a host's usage. Call only after the claim's row
    /// is deleted.
    pub fn release(&mut self, host: &str, usage: &Usage) {
        if let Some(&i) = self.index.get(host) {
            self.touched = true;
            self.hosts[i].used.sub(usage);
        }
    }
}

pub(super) fn spawn(
    conn: Connection,
    hosts: Vec<HostView>,
    weights: SchedulerSection,
    journal: Journal,
    jobs: mpsc::Receiver<Job>,
    ha: Ha,
) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("roost-store-writer".into())
        .spawn(move || run(conn, hosts, weights, journal, jobs, ha))
        .map(|_| ())
        .map_err(|e| StoreError::Sqlite(format!("cannot start the writer thread: {e}")))
}

fn run(
    mut conn: Connection,
    mut hosts: Vec<HostView>,
    weights: SchedulerSection,
    mut journal: Journal,
    mut jobs: mpsc::Receiver<Job>,
    ha: Ha,
) {
    let index: HashMap<String, usize> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.spec.name.clone(), i))
        .collect();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let n = batch.len();
        let (replies, stale) = run_batch(
            &mut conn,
            &mut hosts,
            &index,
            &weights,
            &mut journal,
            &mut batch,
            &ha,
        );
        METRICS
            .store_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        METRICS.store_batch_jobs.observe(n as f64);
        // Every job's outcome is final once the transaction ended, so the
        // replies go out before anything else can fail.
        for (reply, result) in replies {
            reply(result);
        }
        if stale {
            if let Err(e) = reload_usage(&conn, &mut hosts).and_then(|()| journal.reload(&conn)) {
                // Scheduling on usage we cannot trust could oversubscribe a
                // host; stopping makes later writes fail and `/healthz` say so.
                tracing::error!(error = %e, "cannot reload the store's state after a failed commit; stopping the writer");
                return;
            }
        }
    }
    tracing::debug!("store writer stopped");
}

type Replies = Vec<(Reply, Result<(), StoreError>)>;

/// Runs a batch. Returns each job's reply with the commit result, and
/// whether in-memory usage may now disagree with the database.
fn run_batch(
    conn: &mut Connection,
    hosts: &mut Vec<HostView>,
    index: &HashMap<String, usize>,
    weights: &SchedulerSection,
    journal: &mut Journal,
    batch: &mut Vec<Job>,
    ha: &Ha,
) -> (Replies, bool) {
    let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
    let mut stale = false;
    let docs = journal.docs.clone();
    let mut docs = docs.lock().expect("docs lock");
    let mut new_capacity = None;
    let result = (|| {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Row changes of the whole batch, net of rolled-back jobs (the
        // changeset is read from the tables as they are at the end).
        let mut recording = match ha {
            Some(_) => Some(crate::ha::log::record(&tx)?),
            None => None,
        };
        let mut ops = Vec::new();
        let mut usage_changed = false;
        for job in batch.drain(..) {
            tx.execute_batch("SAVEPOINT job")?;
            let mut ctx = WriteCtx {
                tx: &tx,
                now: Utc::now(),
                weights,
                hosts,
                index,
                touched: false,
                ops: Vec::new(),
                record_intent: true,
                docs: &mut docs,
                applied: &mut journal.applied,
            };
            // A panicking job is a bug, but it must cost only its own
            // write: its reply sender is dropped (the caller sees `Closed`)
            // and its savepoint is rolled back like any failed job's.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut ctx)));
            let touched = ctx.touched;
            usage_changed |= touched;
            let job_ops = std::mem::take(&mut ctx.ops);
            let ok = match outcome {
                Ok((ok, reply)) => {
                    replies.push(reply);
                    ok
                }
                Err(_) => {
                    tracing::error!("a store job panicked; its write is rolled back");
                    false
                }
            };
            if ok {
                tx.execute_batch("RELEASE job")?;
                ops.extend(job_ops);
            } else {
                tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
                if touched {
                    // The next job in this batch schedules against this
                    // usage, so it must lose the rolled-back claims now.
                    reload_usage(&tx, hosts)?;
                }
            }
        }
        if usage_changed || journal.capacity.is_none() {
            let capacity = capacity(&tx, hosts)?;
            if journal.capacity.as_ref() != Some(&capacity) {
                ops.push(DocOp::Status {
                    kind: SITE,
                    id: CAPACITY.into(),
                    value: serde_json::to_value(&capacity).unwrap_or_default(),
                });
                new_capacity = Some(capacity);
            }
        }
        let publish_images = !journal.images_published;
        if publish_images {
            ops.push(DocOp::Status {
                kind: SITE,
                id: super::images::IMAGES.into(),
                value: super::images::summary(&tx)?,
            });
        }
        Journal::apply(&mut docs, ops, Utc::now().timestamp_millis())?;
        let heads = journal.persist(&tx, &mut docs)?;
        let seq = match (recording.as_mut(), ha) {
            (Some(r), Some((term, _))) => crate::ha::log::append(&tx, r, *term)?,
            _ => None,
        };
        drop(recording);
        tx.commit()?;
        Ok::<_, StoreError>((seq, heads))
    })();
    // The documents are free before the wait below: the region's link
    // locks them from async tasks, which must not stall on the standby.
    drop(docs);
    let result = result.map(|(seq, heads)| {
        // Before the callers and the region's link hear of the batch: the
        // standby holds it, or the wait timed out.
        if let (Some(seq), Some((_, replication))) = (seq, ha) {
            replication.committed(seq);
        }
        journal.committed(heads);
        if new_capacity.is_some() {
            journal.capacity = new_capacity;
        }
        journal.images_published = true;
    });
    if let Err(e) = &result {
        tracing::error!(error = %e, jobs = replies.len(), "store commit failed; every job in the batch is refused");
        stale = true;
    }
    // Jobs never reached because the transaction failed early are dropped,
    // which closes their reply channels: their callers see `Closed`.
    batch.clear();
    (
        replies.into_iter().map(|r| (r, result.clone())).collect(),
        stale,
    )
}

/// The site's room, as published in the status document under
/// `site/capacity` for the region's placement and fleet view.
pub const SITE: &str = "site";
pub const CAPACITY: &str = "capacity";

fn capacity(conn: &Connection, hosts: &[HostView]) -> Result<SiteCapacity, StoreError> {
    let mut c = SiteCapacity::default();
    for h in hosts {
        c.total.add(&h.capacity);
        c.used.add(&h.used);
        // Room where nothing new may go is not offered.
        if h.takes_new() {
            c.host_free.push(h.free());
        }
    }
    let instances: i64 = conn.query_row("SELECT COUNT(*) FROM allocations", [], |r| r.get(0))?;
    c.instances = instances.max(0) as u64;
    Ok(c)
}

fn reload_usage(conn: &Connection, hosts: &mut [HostView]) -> Result<(), StoreError> {
    let used = inventory::usage_by_host(conn)?;
    for h in hosts.iter_mut() {
        h.used = used.get(&h.spec.name).copied().unwrap_or_default();
    }
    super::alarms::mark_down(conn, hosts)
}
