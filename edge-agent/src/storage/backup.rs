//! Backing `central-replicated` volumes up to the region while the link is
//! up, moving only the chunks the region lacks.
//!
//! A volume is read when it is at rest (`available`, or `in-use` by a
//! stopped server: no guest writes it) and its file changed since its last
//! backup: its modification time and length, the *stamp*, differ from the
//! one the last backup recorded. The file is chunked (`roost_sync::chunks`)
//! into a manifest; if its stamp moved while it was read, it is read again
//! on the next pass. On a bulk stream of its own, the worker offers the
//! manifest, sends each chunk the region lacks (read again from the file
//! and checked against its name, paced with the image fetches by
//! `storage.fetch_rate_kbit`) and commits. Once the region says it kept the
//! backup, the volume's `status.backup` records it, with its stamp.
//!
//! The same worker brings a volume back: one made with a backup as its
//! source (`backup_id`, one of this site's backups at the region) stays
//! `creating` until the link is up; then the backup's chunks come over a
//! bulk stream into `<id>.qcow2.restore.part` (a cut one resumes, keeping
//! what arrived), the file is checked as an uploaded qcow2 is, renamed
//! into place, grown to the volume's size, and the volume turns
//! `available`. A backup the region does not have, one bigger than the
//! volume, or no room on the disk make the volume `error` with the reason.
//!
//! With `storage.tiers.cold`, the worker also sends each available volume
//! snapshot of at most 8 GiB up (under the snapshot's id; again only if
//! its file changed), one a pass, so tiering
//! ([`super::tier`]) may let its file go; and it brings a cold snapshot
//! someone wanted back from the region's newest copy (`latest:<id>`),
//! checked against the sha256 it sent, into place. A snapshot deleted
//! after it was copied is queued in the store (`region_forget`) and the
//! region told to drop its copy (`forget`) on the next pass.
//!
//! A cut loses nothing: the region keeps every chunk that arrived whole
//! (for a week, if no backup lists it), and the next offer, on the next
//! connection, lacks only the rest. A volume written meanwhile is read
//! again, whole, and only its changed chunks cross; the manifest itself
//! (36 bytes a chunk, about 0.4% of the file) crosses every time. A failed
//! backup is tried again after 10 s, doubling to 10 minutes. Offline,
//! nothing happens; the last backup stays shown.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::{info, warn};

use roost_common::model::{Snapshot, Volume, VolumeBackup, VolumeSource};
use roost_sync::bulk::BulkClient;
use roost_sync::chunks::{hex, Hash, Manifest};

use super::fetch::{pace, SharedPacer};
use crate::metrics::METRICS;
use crate::store::Store;

/// How often volumes are looked at when nobody woke the worker (a server
/// stopping, say, puts its volumes at rest).
pub const PERIOD: Duration = Duration::from_secs(10);

/// Chunk bytes read from the file in one blocking call.
const READ_BATCH: u64 = 1 << 20;

/// After a failed backup, the volume waits this long before the next try,
/// doubling with each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// When a volume whose backup failed `failures` times in a row is tried
/// again, counted from the last failure.
pub fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// Per volume: failures in a row, and when it may be tried again.
#[derive(Debug, Default)]
struct Failures(HashMap<String, (u32, Instant)>);

impl Failures {
    /// Whether the volume waits out a back-off now.
    fn waiting(&self, id: &str) -> bool {
        self.0.get(id).is_some_and(|(_, at)| *at > Instant::now())
    }

    /// Records a try's outcome: a success forgets the failures.
    fn record(&mut self, id: &str, ok: bool) {
        if ok {
            self.0.remove(id);
        } else {
            let n = self.0.get(id).map_or(0, |(n, _)| *n) + 1;
            self.0
                .insert(id.to_string(), (n, Instant::now() + backoff(n)));
        }
    }
}

/// A file's modification time (ns) and length: what changes when anything
/// writes it.
pub fn stamp(file: &Path) -> std::io::Result<String> {
    let m = std::fs::metadata(file)?;
    Ok(format!("{}.{:09}:{}", m.mtime(), m.mtime_nsec(), m.len()))
}

/// The candidates whose file changed since their last backup, each with
/// its stamp now. Pure: `stamp_of` is how a file is looked at (`None`: not
/// there, nothing to back up yet).
pub fn due(
    candidates: Vec<Volume>,
    stamp_of: impl Fn(&Path) -> Option<String>,
) -> Vec<(Volume, String)> {
    candidates
        .into_iter()
        .filter_map(|v| {
            let now = stamp_of(v.status.file.as_deref()?)?;
            let last = v.status.backup.as_ref().map(|b| b.stamp.as_str());
            (last != Some(now.as_str())).then_some((v, now))
        })
        .collect()
}

/// The snapshots to send up: those small enough to copy (as a
/// `central-replicated` volume is), never copied, or whose file is no
/// longer as copied (moving nothing the region holds).
fn snapshots_due(local: Vec<Snapshot>) -> Vec<Snapshot> {
    local
        .into_iter()
        .filter(|s| s.status.size_gb <= roost_common::model::MAX_REPLICATED_GB)
        .filter(|s| {
            let now = s.status.file.as_deref().and_then(|f| stamp(f).ok());
            now.is_some() && s.status.backup.as_ref().map(|b| &b.stamp) != now.as_ref()
        })
        .collect()
}

/// Why one backup did not finish; it is tried again on the next pass.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("the volume's file changed while it was read; it is read again")]
    Changed,
    #[error("{0}")]
    Failed(String),
    /// It can never succeed as asked (a restore: the volume turns `error`).
    #[error("{0}")]
    GiveUp(String),
}

impl From<roost_sync::bulk::FetchError> for Stop {
    fn from(e: roost_sync::bulk::FetchError) -> Stop {
        Stop::Failed(e.to_string())
    }
}

/// What one try to send a file up came to.
#[derive(Debug)]
enum Copied {
    Kept(VolumeBackup),
    /// As the region last kept it (or changed while read: read again).
    Unchanged,
    Failed,
}

/// What the backup worker needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Backuper {
    pub store: Store,
    /// The site's cap on bulk bytes, shared with the image fetcher.
    pub pacer: SharedPacer,
    /// Told when a volume's file may have changed.
    pub wake: Arc<Notify>,
    /// Send snapshots up too (`storage.tiers.cold`: the tierer may then
    /// let their files go).
    pub snapshots: bool,
    /// Snapshots the tierer is letting go, shared with it.
    pub busy: super::Busy,
}

impl Backuper {
    /// Backs up every volume that needs it while `conn` lasts; then waits
    /// to be woken. Ends when the connection does.
    pub async fn run(self, conn: quinn::Connection) {
        let mut failed = Failures::default();
        loop {
            match self.store.restores().await {
                Ok(restores) => {
                    for v in restores {
                        if conn.close_reason().is_some() {
                            return;
                        }
                        if failed.waiting(&v.id) {
                            continue;
                        }
                        let ok = self.restore_one(&conn, &v).await;
                        failed.record(&v.id, ok);
                    }
                }
                Err(e) => warn!(error = %e, "cannot list the volumes to restore"),
            }
            self.forget_at_region(&conn).await;
            match self.store.cold_snapshots().await {
                Ok(cold) => {
                    for snap in cold.into_iter().filter(|s| s.status.recalled) {
                        if conn.close_reason().is_some() {
                            return;
                        }
                        if failed.waiting(&snap.id) {
                            continue;
                        }
                        let ok = self.snapshot_down(&conn, &snap).await;
                        failed.record(&snap.id, ok);
                    }
                }
                Err(e) => warn!(error = %e, "cannot list the snapshots to bring back"),
            }
            let candidates = match self.store.backup_candidates().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "cannot list the volumes to back up");
                    Vec::new()
                }
            };
            let work = tokio::task::spawn_blocking(move || due(candidates, |f| stamp(f).ok()))
                .await
                .unwrap_or_default();
            for (volume, _) in work {
                if conn.close_reason().is_some() {
                    return;
                }
                if failed.waiting(&volume.id) {
                    continue;
                }
                let ok = self.backup_one(&conn, &volume).await;
                failed.record(&volume.id, ok);
            }
            // One snapshot a pass, so a long backlog (cold just turned
            // on) lets restores, recalls and volume backups in between.
            if self.snapshots {
                let local = self.store.local_snapshots().await.unwrap_or_default();
                let due = tokio::task::spawn_blocking(move || snapshots_due(local))
                    .await
                    .unwrap_or_default();
                if let Some(snap) = due.iter().find(|s| !failed.waiting(&s.id)) {
                    if conn.close_reason().is_some() {
                        return;
                    }
                    let kept = self.snapshot_up(&conn, snap).await;
                    // Anything but a copy kept and recorded waits out a
                    // back-off: no pass reads one file again and again.
                    failed.record(&snap.id, kept);
                    if kept {
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(PERIOD) => {}
                _ = conn.closed() => return,
            }
        }
    }

    /// Brings a volume made from a backup; records it `available`, or
    /// `error` when the backup cannot make it. A failed try leaves it
    /// `creating`, tried again after a back-off (false then).
    async fn restore_one(&self, conn: &quinn::Connection, v: &Volume) -> bool {
        let started = Instant::now();
        let result = match self.bring(conn, v).await {
            Ok(bytes) => {
                info!(volume = %v.id, fetched = bytes, ms = started.elapsed().as_millis() as u64,
                    "volume brought from its backup at the region");
                Ok(())
            }
            Err(Stop::Failed(e)) => {
                warn!(volume = %v.id, error = %e, "bringing a volume from its backup stopped; what arrived is kept and it is tried again");
                return false;
            }
            Err(Stop::Changed) => return false,
            Err(Stop::GiveUp(e)) => {
                warn!(volume = %v.id, error = %e, "the volume cannot be made from its backup");
                Err(e)
            }
        };
        let id = v.id.clone();
        match self.store.write(move |w| w.restore_done(&id, result)).await {
            Ok(true) => {}
            // Deleted while it came: its files go with it.
            Ok(false) => {
                if let Some(file) = v.status.file.clone() {
                    let _ = tokio::task::spawn_blocking(move || {
                        super::qemu_img::run(&super::plan::Op::Remove { file })
                    })
                    .await;
                }
            }
            Err(e) => warn!(volume = %v.id, error = %e, "cannot record a restored volume"),
        }
        true
    }

    /// Fetches the backup into the volume's file and grows it to the
    /// volume's size; the chunk bytes that crossed.
    async fn bring(&self, conn: &quinn::Connection, v: &Volume) -> Result<u64, Stop> {
        let VolumeSource::Backup(backup) = &v.spec.source else {
            return Err(Stop::GiveUp("the volume is not made from a backup".into()));
        };
        let file = v
            .status
            .file
            .clone()
            .ok_or_else(|| Stop::GiveUp("the volume has no file recorded".into()))?;
        let mut fetched = 0;
        // Renamed into place before a crash: only the size is left to do.
        if !file.is_file() {
            let b = backup.clone();
            let size_gb = v.spec.size_gb;
            fetched = self
                .fetch_into(
                    conn,
                    &format!("backup:{backup}"),
                    &file,
                    Some("create the volume again"),
                    move |part, size| {
                        let mut head =
                            vec![0u8; (roost_common::api::HEADER_BYTES as u64).min(size) as usize];
                        std::fs::File::open(part)
                            .and_then(|h| h.read_exact_at(&mut head, 0))
                            .map_err(|e| Stop::Failed(e.to_string()))?;
                        let virtual_size = roost_common::api::check_disk_format(
                            roost_common::model::DiskFormat::Qcow2,
                            &head,
                            size,
                        )
                        .map_err(|e| Stop::GiveUp(format!("backup {b}: {e}")))?;
                        let gb = virtual_size.div_ceil(1 << 30);
                        if gb > size_gb {
                            return Err(Stop::GiveUp(format!(
                            "backup {b} holds a {gb} GiB volume; create one of at least {gb} GiB"
                        )));
                        }
                        Ok(())
                    },
                )
                .await?;
        }
        let (f, size_gb) = (file.clone(), v.spec.size_gb);
        tokio::task::spawn_blocking(move || -> Result<(), Stop> {
            let bytes = super::qemu_img::virtual_size(&f).map_err(Stop::Failed)?;
            let gb = bytes.div_ceil(1 << 30);
            if gb > size_gb {
                let _ = std::fs::remove_file(&f);
                return Err(Stop::GiveUp(format!(
                    "the backup holds a {gb} GiB volume; create one of at least {gb} GiB"
                )));
            }
            if bytes < size_gb << 30 {
                // A failure here is tried again (the file is whole).
                super::qemu_img::run(&super::plan::Op::Resize { file: f, size_gb })
                    .map_err(Stop::Failed)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Stop::Failed(e.to_string()))??;
        Ok(fetched)
    }

    /// Brings the region's copy named `key` into `file`: its chunks come
    /// into `<file>.restore.part` (what an earlier, cut try left stays),
    /// which is synced, passed to `check` (with its size), and renamed
    /// into place. A refusal by the region is for good (the part file
    /// goes). So is no room for it when `then` says what to do once there
    /// is room; without it, it is tried again (tiering may make room).
    /// The chunk bytes that crossed.
    async fn fetch_into(
        &self,
        conn: &quinn::Connection,
        key: &str,
        file: &Path,
        then: Option<&str>,
        check: impl FnOnce(&Path, u64) -> Result<(), Stop> + Send + 'static,
    ) -> Result<u64, Stop> {
        let mut part = file.to_path_buf().into_os_string();
        part.push(".restore.part");
        let part = std::path::PathBuf::from(part);
        let mut client = BulkClient::open(conn).await?;
        let manifest = match client.manifest(key).await {
            Ok(m) => m,
            Err(roost_sync::bulk::FetchError::Refused(e)) => {
                let _ = std::fs::remove_file(&part);
                return Err(Stop::GiveUp(e));
            }
            Err(e) => return Err(e.into()),
        };
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let held = std::fs::metadata(&part).map_or(0, |m| m.blocks() * 512);
        let free = super::free_bytes(&dir).map_err(|e| Stop::Failed(e.to_string()))?;
        let need = manifest.size().saturating_sub(held);
        if free < need.saturating_add(super::FREE_SPACE_RESERVE) {
            let why = format!(
                "not enough space in {}: {} MiB free, {key} needs {} MiB and 1024 MiB stay free for the site's store",
                dir.display(),
                free >> 20,
                need.div_ceil(1 << 20)
            );
            return Err(match then {
                Some(then) => {
                    let _ = std::fs::remove_file(&part);
                    Stop::GiveUp(format!("{why}; free space, then {then}"))
                }
                None => Stop::Failed(why),
            });
        }
        let (p, m) = (part.clone(), manifest.clone());
        let prepared =
            tokio::task::spawn_blocking(move || super::fetch::prepare(&p, &m, &Default::default()))
                .await
                .map_err(|e| Stop::Failed(e.to_string()))?
                .map_err(|e| Stop::Failed(format!("cannot prepare {}: {e}", part.display())))?;
        let out = std::fs::OpenOptions::new()
            .write(true)
            .open(&part)
            .map_err(|e| Stop::Failed(e.to_string()))?;
        let mut fetched = 0;
        super::fetch::fetch_chunks(
            &mut client,
            key,
            &prepared.missing,
            &out,
            &self.pacer,
            |n| fetched += n,
        )
        .await
        .map_err(Stop::Failed)?;
        client.finish();
        let (p, f, size) = (part.clone(), file.to_path_buf(), manifest.size());
        tokio::task::spawn_blocking(move || -> Result<(), Stop> {
            out.sync_all().map_err(|e| Stop::Failed(e.to_string()))?;
            drop(out);
            if let Err(e) = check(&p, size) {
                if matches!(e, Stop::GiveUp(_)) {
                    let _ = std::fs::remove_file(&p);
                }
                return Err(e);
            }
            std::fs::rename(&p, &f).map_err(|e| Stop::Failed(e.to_string()))?;
            roost_common::files::sync_dir(f.parent().unwrap_or(Path::new(".")))
                .map_err(|e| Stop::Failed(e.to_string()))
        })
        .await
        .map_err(|e| Stop::Failed(e.to_string()))??;
        Ok(fetched)
    }

    /// Backs one volume up, if its file still differs from its last
    /// backup; false if that failed (the caller backs off).
    async fn backup_one(&self, conn: &quinn::Connection, v: &Volume) -> bool {
        let Some(file) = v.status.file.clone() else {
            return true;
        };
        match self
            .copy_up(conn, "volume", &v.id, &file, v.status.backup.as_ref())
            .await
        {
            Copied::Kept(backup) => {
                let id = v.id.clone();
                if let Err(e) = self.store.write(move |w| w.backup_done(&id, backup)).await {
                    // The region keeps it; the next pass finds the stamp
                    // unrecorded and offers it again, which moves nothing.
                    warn!(volume = %v.id, error = %e, "a kept backup could not be recorded")
                }
                true
            }
            Copied::Unchanged => true,
            Copied::Failed => false,
        }
    }

    /// Sends a snapshot's file to the region, so tiering may let the file
    /// go; whether a copy was kept and recorded.
    async fn snapshot_up(&self, conn: &quinn::Connection, s: &Snapshot) -> bool {
        let Some(file) = s.status.file.clone() else {
            return false;
        };
        if !s.status.copy_offered {
            let id = s.id.clone();
            if let Err(e) = self.store.write(move |w| w.snapshot_offering(&id)).await {
                warn!(snapshot = %s.id, error = %e, "cannot record a snapshot's offer; it is not sent");
                return false;
            }
        }
        match self
            .copy_up(conn, "snapshot", &s.id, &file, s.status.backup.as_ref())
            .await
        {
            Copied::Kept(backup) => {
                let id = s.id.clone();
                if let Err(e) = self
                    .store
                    .write(move |w| w.snapshot_backup_done(&id, backup))
                    .await
                {
                    warn!(snapshot = %s.id, error = %e, "a snapshot's copy at the region could not be recorded");
                    return false;
                }
                true
            }
            Copied::Unchanged | Copied::Failed => false,
        }
    }

    /// Brings a cold snapshot's file back from the region, where it sent
    /// it before tiering let it go; false if that failed (tried again
    /// after a back-off).
    async fn snapshot_down(&self, conn: &quinn::Connection, s: &Snapshot) -> bool {
        let (Some(file), Some(sent)) = (s.status.file.clone(), s.status.backup.clone()) else {
            warn!(snapshot = %s.id, "a cold snapshot has no file or copy recorded; it cannot come back");
            return false;
        };
        // The tierer may be letting this file go: its turn first.
        let Some(_held) = self.busy.hold(&s.id) else {
            return true;
        };
        let started = Instant::now();
        if !file.is_file() {
            let want = sent.sha256.clone();
            let r = self
                .fetch_into(conn, &format!("latest:{}", s.id), &file, None, move |part, _| {
                    let mut h = Sha256::new();
                    std::io::copy(
                        &mut std::fs::File::open(part).map_err(|e| Stop::Failed(e.to_string()))?,
                        &mut h,
                    )
                    .map_err(|e| Stop::Failed(e.to_string()))?;
                    let got = hex(&h.finalize().into());
                    if got == want {
                        Ok(())
                    } else {
                        Err(Stop::GiveUp(format!(
                            "the region's newest copy (sha256 {got}) is not the one this site sent ({want})"
                        )))
                    }
                })
                .await;
            match r {
                Ok(bytes) => {
                    info!(snapshot = %s.id, fetched = bytes, ms = started.elapsed().as_millis() as u64,
                        "snapshot brought back from the region")
                }
                Err(Stop::GiveUp(e)) => {
                    warn!(snapshot = %s.id, error = %e, "the snapshot cannot come back from the region");
                    let id = s.id.clone();
                    if let Err(e) = self.store.write(move |w| w.snapshot_not_back(&id, e)).await {
                        warn!(snapshot = %s.id, error = %e, "cannot record why a snapshot did not come back");
                    }
                    return true;
                }
                Err(e) => {
                    warn!(snapshot = %s.id, error = %e, "bringing a snapshot back stopped; what arrived is kept and it is tried again");
                    return false;
                }
            }
        }
        let f = file.clone();
        let Ok(Ok(now)) = tokio::task::spawn_blocking(move || stamp(&f)).await else {
            return false;
        };
        let id = s.id.clone();
        match self.store.write(move |w| w.snapshot_back(&id, now)).await {
            Ok(true) => {}
            // Deleted while it came: its file goes with it.
            Ok(false) => {
                let _ = tokio::task::spawn_blocking(move || {
                    super::qemu_img::run(&super::plan::Op::Remove { file })
                })
                .await;
            }
            Err(e) => warn!(snapshot = %s.id, error = %e, "cannot record a snapshot brought back"),
        }
        true
    }

    /// Tells the region which copies the site no longer needs (snapshots
    /// deleted after they were copied); each is kept in the store until
    /// the region says it is gone.
    async fn forget_at_region(&self, conn: &quinn::Connection) {
        let keys = match self.store.region_forgets().await {
            Ok(k) if !k.is_empty() => k,
            Ok(_) => return,
            Err(e) => {
                warn!(error = %e, "cannot list the copies the region may drop");
                return;
            }
        };
        let mut client = match BulkClient::open(conn).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot tell the region which copies it may drop");
                return;
            }
        };
        for key in keys {
            match client.forget(&key).await {
                Ok(n) => {
                    info!(key = %key, backups = n, "the region dropped a copy the site no longer needs");
                    let k = key.clone();
                    if let Err(e) = self.store.write(move |w| w.region_forgot(&k)).await {
                        warn!(key = %key, error = %e, "cannot record a copy the region dropped");
                    }
                }
                // Refused (the region said why): the others still go.
                Err(roost_sync::bulk::FetchError::Refused(e)) => {
                    warn!(key = %key, error = %e, "the region refused to drop a copy; asked again on the next pass");
                }
                Err(e) => {
                    warn!(key = %key, error = %e, "the region did not drop a copy; told again on the next pass");
                    break;
                }
            }
        }
        client.finish();
    }

    /// Sends `file` to the region under `key` if it changed since `last`.
    async fn copy_up(
        &self,
        conn: &quinn::Connection,
        what: &'static str,
        key: &str,
        file: &Path,
        last: Option<&VolumeBackup>,
    ) -> Copied {
        let started = Instant::now();
        let mut sent = 0u64;
        // Looked at again now: the list was made before the files ahead
        // of this one were read.
        let f = file.to_path_buf();
        let stamp = match tokio::task::spawn_blocking(move || stamp(&f)).await {
            Ok(Ok(s)) => s,
            _ => return Copied::Unchanged,
        };
        if last.is_some_and(|b| b.stamp == stamp) {
            return Copied::Unchanged;
        }
        let out = match self.send(conn, key, file, &stamp, &mut sent).await {
            Ok(backup) => {
                METRICS.backups.with_label_values(&["kept"]).inc();
                info!(kind = what, id = %key, size = backup.size, sent, ms = started.elapsed().as_millis() as u64,
                    "backed up to the region");
                Copied::Kept(backup)
            }
            Err(Stop::Changed) => {
                info!(kind = what, id = %key, sent, "the file changed while it was backed up; it is read again");
                Copied::Unchanged
            }
            Err(Stop::Failed(e) | Stop::GiveUp(e)) => {
                METRICS.backups.with_label_values(&["failed"]).inc();
                warn!(kind = what, id = %key, error = %e, sent,
                    "backing up stopped; what arrived is kept and the rest is sent on the next try");
                Copied::Failed
            }
        };
        METRICS.backup_bytes.inc_by(sent);
        out
    }

    async fn send(
        &self,
        conn: &quinn::Connection,
        key: &str,
        file: &Path,
        stamp_before: &str,
        sent: &mut u64,
    ) -> Result<VolumeBackup, Stop> {
        let (f, before) = (file.to_path_buf(), stamp_before.to_string());
        let manifest = tokio::task::spawn_blocking(move || -> Result<Manifest, Stop> {
            let read = || -> std::io::Result<(Manifest, String)> {
                let r = std::io::BufReader::new(std::fs::File::open(&f)?);
                Ok((Manifest::of_reader(r)?, stamp(&f)?))
            };
            match read() {
                Ok((m, after)) if after == before => Ok(m),
                Ok(_) => Err(Stop::Changed),
                Err(e) => Err(Stop::Failed(format!("cannot read {}: {e}", f.display()))),
            }
        })
        .await
        .map_err(|e| Stop::Failed(e.to_string()))??;
        if manifest.chunks.len() > roost_sync::bulk::MAX_OFFER_CHUNKS {
            return Err(Stop::Failed(format!(
                "the volume's file is {} chunks, more than a backup may list ({})",
                manifest.chunks.len(),
                roost_sync::bulk::MAX_OFFER_CHUNKS
            )));
        }
        let mut client = BulkClient::open(conn).await?;
        // The offer crosses too: paced like the chunks.
        tokio::time::sleep(pace(&self.pacer, 40 + 36 * manifest.chunks.len() as u64)).await;
        let missing = client.offer(key, &manifest).await?;
        let at: HashMap<Hash, (u64, u32)> = manifest
            .offsets()
            .map(|(o, c)| (c.hash, (o, c.len)))
            .collect();
        let handle = Arc::new(
            std::fs::File::open(file)
                .map_err(|e| Stop::Failed(format!("cannot open {}: {e}", file.display())))?,
        );
        // Read a batch on a blocking thread, check it, then send it.
        let mut batches: Vec<Vec<Hash>> = vec![Vec::new()];
        let mut bytes = 0;
        for h in missing {
            let len = u64::from(at.get(&h).map_or(0, |a| a.1));
            if bytes + len > READ_BATCH && !batches.last().is_some_and(Vec::is_empty) {
                batches.push(Vec::new());
                bytes = 0;
            }
            bytes += len;
            if let Some(b) = batches.last_mut() {
                b.push(h);
            }
        }
        for batch in batches.into_iter().filter(|b| !b.is_empty()) {
            let places: Vec<(Hash, u64, u32)> = batch
                .iter()
                .map(|h| {
                    at.get(h).map(|(o, l)| (*h, *o, *l)).ok_or_else(|| {
                        Stop::Failed("the region asked for a chunk the volume does not have".into())
                    })
                })
                .collect::<Result<_, _>>()?;
            let f = handle.clone();
            let chunks =
                tokio::task::spawn_blocking(move || -> Result<Vec<(Hash, Vec<u8>)>, Stop> {
                    places
                        .into_iter()
                        .map(|(h, o, l)| {
                            let mut buf = vec![0u8; l as usize];
                            f.read_exact_at(&mut buf, o).map_err(|e| {
                                Stop::Failed(format!("cannot read the volume: {e}"))
                            })?;
                            if <[u8; 32]>::from(Sha256::digest(&buf)) != h {
                                return Err(Stop::Changed);
                            }
                            Ok((h, buf))
                        })
                        .collect()
                })
                .await
                .map_err(|e| Stop::Failed(e.to_string()))??;
            for (h, data) in chunks {
                tokio::time::sleep(pace(&self.pacer, data.len() as u64)).await;
                let n = data.len() as u64;
                client.put(h, data).await?;
                *sent += n;
            }
        }
        client.commit(key).await?;
        client.finish();
        Ok(VolumeBackup {
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            sha256: hex(&manifest.sha256),
            size: manifest.size(),
            sent_bytes: *sent,
            stamp: stamp_before.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_common::model::{Resource, VolumeSource, VolumeSpec};

    fn volume(file: Option<&str>, last: Option<&str>) -> Volume {
        let mut v: Volume = Resource::new(
            VolumeSpec {
                name: "v".into(),
                description: None,
                project_id: "p".into(),
                user_id: "u".into(),
                size_gb: 1,
                volume_type: "central-replicated".into(),
                source: VolumeSource::Blank,
                metadata: Default::default(),
            },
            chrono::Utc::now(),
        );
        v.status.file = file.map(Into::into);
        v.status.backup = last.map(|s| VolumeBackup {
            stamp: s.into(),
            ..VolumeBackup::default()
        });
        v
    }

    #[test]
    fn a_volume_is_due_when_its_file_changed_since_its_last_backup() {
        let stamps = |f: &Path| match f.to_str() {
            Some("/v/a") => Some("1.0:10".to_string()),
            Some("/v/b") => Some("2.0:10".to_string()),
            _ => None,
        };
        let work = due(
            vec![
                volume(Some("/v/a"), None),           // never backed up
                volume(Some("/v/a"), Some("1.0:10")), // unchanged
                volume(Some("/v/b"), Some("1.0:10")), // written since
                volume(Some("/v/gone"), None),        // no file yet
                volume(None, None),
            ],
            stamps,
        );
        let got: Vec<(Option<&str>, &str)> = work
            .iter()
            .map(|(v, s)| (v.status.file.as_deref().and_then(Path::to_str), s.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![(Some("/v/a"), "1.0:10"), (Some("/v/b"), "2.0:10")]
        );
    }

    #[test]
    fn a_failing_volume_waits_longer_each_time_up_to_ten_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(4), Duration::from_secs(80));
        assert_eq!(backoff(7), Duration::from_secs(600));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(600));
    }

    #[test]
    fn a_files_stamp_moves_when_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v.qcow2");
        std::fs::write(&f, b"one").unwrap();
        let s1 = stamp(&f).unwrap();
        assert_eq!(stamp(&f).unwrap(), s1, "reading changes nothing");
        std::fs::write(&f, b"two!").unwrap();
        assert_ne!(stamp(&f).unwrap(), s1);
    }
}
