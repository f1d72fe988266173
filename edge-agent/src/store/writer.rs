//! The writer thread: group commit of queued jobs, one transaction per batch,
//! one savepoint per job.
//!
//! Besides SQLite, the writer owns two pieces of memory that must match it:
//! each host's usage (for the scheduler) and the site's Automerge documents
//! (for sync). A job changes them only through [`WriteCtx`]; after a job
//! succeeds, the documents' new chunks are appended to `sync_changes` inside
//! the job's savepoint, so a row and the change that describes it commit
//! together or not at all. A failed job's pending document edits are
//! discarded; if anything may have diverged (a rolled-back job that touched
//! usage, a failed commit), both are reloaded from the database.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use tokio::sync::mpsc;

use roost_common::config::SchedulerSection;
use roost_common::model::Usage;
use roost_sync::Docs;

use super::{inventory, Identity, StoreError};
use crate::metrics::METRICS;
use crate::scheduler::HostView;

/// Called once the batch holding the job committed (or failed to).
pub(super) type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// A job: runs in the transaction, says whether it succeeded, and hands back
/// what to call after commit.
pub(super) type Job = Box<dyn FnOnce(&mut WriteCtx<'_>) -> (bool, Reply) + Send>;

/// Most jobs one transaction holds.
const MAX_BATCH: usize = 128;

/// What a job may touch: the open transaction, the hosts with their usage,
/// the site's documents and the scheduler's weights.
#[derive(Debug)]
pub struct WriteCtx<'a> {
    pub tx: &'a rusqlite::Transaction<'a>,
    pub now: DateTime<Utc>,
    pub weights: &'a SchedulerSection,
    /// The site's intent and status documents. Write spec and status here
    /// as well as in the tables; the writer persists them with the job.
    pub docs: &'a mut Docs,
    hosts: &'a mut Vec<HostView>,
    index: &'a HashMap<String, usize>,
    /// Set when the job changed host usage, so a rollback reloads it.
    touched: bool,
}

impl WriteCtx<'_> {
    pub fn hosts(&self) -> &[HostView] {
        self.hosts
    }

    /// Milliseconds since the Unix epoch, for document stamps.
    pub fn now_ms(&self) -> i64 {
        self.now.timestamp_millis()
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

/// What the writer owns besides the connection.
struct Memory {
    hosts: Vec<HostView>,
    index: HashMap<String, usize>,
    docs: Docs,
    identity: Identity,
    weights: SchedulerSection,
}

pub(super) fn spawn(
    conn: Connection,
    hosts: Vec<HostView>,
    docs: Docs,
    identity: Identity,
    weights: SchedulerSection,
    jobs: mpsc::Receiver<Job>,
) -> Result<(), StoreError> {
    let index = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| (h.spec.name.clone(), i))
        .collect();
    let memory = Memory {
        hosts,
        index,
        docs,
        identity,
        weights,
    };
    std::thread::Builder::new()
        .name("roost-store-writer".into())
        .spawn(move || run(conn, memory, jobs))
        .map(|_| ())
        .map_err(|e| StoreError::Sqlite(format!("cannot start the writer thread: {e}")))
}

fn run(mut conn: Connection, mut mem: Memory, mut jobs: mpsc::Receiver<Job>) {
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
        let (replies, stale) = run_batch(&mut conn, &mut mem, &mut batch);
        METRICS
            .store_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        METRICS.store_batch_jobs.observe(n as f64);
        if stale {
            if let Err(e) = reload(&conn, &mut mem) {
                tracing::error!(error = %e, "cannot reload the writer's memory after a rollback; stopping the writer");
                for (reply, _) in replies {
                    reply(Err(e.clone()));
                }
                return;
            }
        }
        for (reply, result) in replies {
            reply(result);
        }
    }
    tracing::debug!("store writer stopped");
}

type Replies = Vec<(Reply, Result<(), StoreError>)>;

/// Appends the documents' unsaved chunks to `sync_changes`.
fn persist_docs(tx: &rusqlite::Transaction<'_>, docs: &mut Docs) -> Result<(), StoreError> {
    for (name, bytes) in [
        ("intent", docs.intent.take_unsaved()),
        ("status", docs.status.take_unsaved()),
    ] {
        if !bytes.is_empty() {
            tx.prepare_cached("INSERT INTO sync_changes (doc, bytes) VALUES (?1, ?2)")?
                .execute(rusqlite::params![name, bytes])?;
        }
    }
    Ok(())
}

/// Runs a batch. Returns each job's reply with the commit result, and
/// whether memory may now disagree with the database.
fn run_batch(conn: &mut Connection, mem: &mut Memory, batch: &mut Vec<Job>) -> (Replies, bool) {
    let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
    let mut stale = false;
    let result = (|| -> Result<(), StoreError> {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for job in batch.drain(..) {
            tx.execute_batch("SAVEPOINT job")?;
            let mut ctx = WriteCtx {
                tx: &tx,
                now: Utc::now(),
                weights: &mem.weights,
                docs: &mut mem.docs,
                hosts: &mut mem.hosts,
                index: &mem.index,
                touched: false,
            };
            let (ok, reply) = job(&mut ctx);
            let touched = ctx.touched;
            replies.push(reply);
            if ok {
                if let Err(e) = persist_docs(&tx, &mut mem.docs) {
                    // The job's rows roll back with its savepoint; its reply
                    // still says success, so fail the whole batch instead.
                    tracing::error!(error = %e, "cannot append document changes");
                    stale = true;
                    tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
                    return Err(e);
                }
                tx.execute_batch("RELEASE job")?;
            } else {
                mem.docs.intent.discard_pending();
                mem.docs.status.discard_pending();
                tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
                stale |= touched;
            }
        }
        tx.commit()?;
        Ok(())
    })();
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

/// Rebuilds host usage and the documents from what is committed.
fn reload(conn: &Connection, mem: &mut Memory) -> Result<(), StoreError> {
    let used = inventory::usage_by_host(conn)?;
    for h in mem.hosts.iter_mut() {
        h.used = used.get(&h.spec.name).copied().unwrap_or_default();
    }
    mem.docs = inventory::load_docs(conn, &mem.identity)?;
    Ok(())
}
