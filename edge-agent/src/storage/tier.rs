//! Tiering: which image files sit in the hot cache, which on local disk
//! (warm), and which only at the region (cold), per `storage.tiers`.
//!
//! [`plan`] is pure. Every image file the site wrote (uploads, fetches;
//! not a config seed's, which is the operator's) is an [`Item`]. The
//! unpinned ones, most recently used first, fill the hot tier while they
//! fit, then the warm one; what is left over goes cold if it may (the
//! region holds its bytes and still gives it to the site, `cold` is on,
//! and it has gone unused for `cold_after_idle_secs`) and otherwise stays
//! where it is, over the tier's room. A pinned image (a server's disk is
//! an overlay of its file, or a volume is being made from it) never
//! moves: its bytes count where they are. While the link is up, the
//! region's images on their way count too, at their full size, so room is
//! made for them before the fetcher needs it.
//!
//! [`Tierer`] carries the moves out, one at a time, each crash-safe:
//! - down or up a tier: the file is copied beside its new name, synced and
//!   renamed in; the store then records the new path, in a write that
//!   checks the image is still unpinned and still at the old path; only
//!   after that commit is the old file removed (a crash between leaves a
//!   file no image names, which the start's sweep removes);
//! - to cold: the store records the image cold (no file) with the same
//!   checks, then the file is removed. The image stays `active` in Glance,
//!   with `roost:tier` `cold`; using it (a server, a volume, a download)
//!   is refused with a message naming it, and sets it fetching again
//!   from the region ([`crate::store::WriteCtx::recall_image`]).
//!
//! Volume snapshots (with `cold` on) are tiered the same way, on the
//! volumes' disk, with no hot tier: one whose file the region holds as it
//! is here (the backup worker sent it) may go cold when the snapshots are
//! over `snapshots_capacity_mb` or the disk is short; a volume made from
//! it or a revert to it is refused naming it, and the backup worker
//! brings the file back.
//!
//! An image whose file is gone from under it (a failed cache disk) is
//! marked cold when the region holds it, so its next use brings it back.
//!
//! A tier's room is its configured capacity, but never more than what its
//! items hold plus what its disk has free (less the reserve the site's
//! store keeps on the data disk): a disk short of space moves files down
//! as a full tier does.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::{info, warn};

use roost_common::config::TiersSection;
use roost_common::model::{Image, ImageState, Tier};

use crate::metrics::METRICS;
use crate::store::Store;

/// How often the tierer looks when nobody wakes it.
pub const PERIOD: Duration = Duration::from_secs(10);

/// Free space kept on the hot disk beside the cache's files.
const HOT_RESERVE: u64 = 64 << 20;

/// One image file as tiering sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub bytes: u64,
    /// `Hot` or `Warm`: where its file is now.
    pub at: Tier,
    pub last_used: DateTime<Utc>,
    /// Never moved: a server boots from it, a volume is being made from
    /// it, or it is on its way here (its bytes will take this room).
    pub pinned: bool,
    /// The region holds its bytes (and still gives it to this site), and
    /// it has been idle long enough: it may go cold.
    pub may_go_cold: bool,
}

/// Bytes each tier may hold; `hot: None` when the site has no hot tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub hot: Option<u64>,
    pub warm: u64,
    pub cold: bool,
}

/// One move, for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub id: String,
    pub from: Tier,
    pub to: Tier,
}

/// The moves that bring `items` where they belong in `room`: to cold
/// first, then down, then up, so each makes room for the next.
///
/// Unpinned files, most recently used first, take the hot tier while they
/// fit. Of the rest, those that cannot go cold take warm room first (they
/// stay whatever happens); then the others, most recently used first, stay
/// warm while they fit and go cold when they do not. A file is never moved
/// into a tier without room for it: one that fits nowhere and cannot go
/// cold stays where it is.
pub fn plan(items: &[Item], room: Room) -> Vec<Move> {
    let held = |tier: Tier| -> u64 {
        items
            .iter()
            .filter(|i| i.pinned && i.at == tier)
            .map(|i| i.bytes)
            .sum()
    };
    let mut order: Vec<&Item> = items.iter().filter(|i| !i.pinned).collect();
    order.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.id.cmp(&b.id)));
    let mut hot_left = room.hot.map_or(0, |c| c.saturating_sub(held(Tier::Hot)));
    let mut warm_left = room.warm.saturating_sub(held(Tier::Warm));
    let mut to: Vec<(&Item, Tier)> = Vec::new();
    let mut rest = Vec::new();
    for i in order {
        if room.hot.is_some() && i.bytes <= hot_left {
            hot_left -= i.bytes;
            to.push((i, Tier::Hot));
        } else {
            rest.push(i);
        }
    }
    // Stable: the ones that must stay first, each group by recency.
    rest.sort_by_key(|i| i.may_go_cold && room.cold);
    for i in rest {
        let tier = if i.bytes <= warm_left {
            warm_left -= i.bytes;
            Tier::Warm
        } else if room.cold && i.may_go_cold {
            Tier::Cold
        } else {
            // Fits nowhere and cannot go: it stays, taking what it takes.
            if i.at == Tier::Warm {
                warm_left = warm_left.saturating_sub(i.bytes);
            }
            i.at
        };
        to.push((i, tier));
    }
    let mut moves: Vec<Move> = to
        .into_iter()
        .filter(|(i, tier)| i.at != *tier)
        .map(|(i, tier)| Move {
            id: i.id.clone(),
            from: i.at,
            to: tier,
        })
        .collect();
    moves.sort_by_key(|m| match (m.from, m.to) {
        (_, Tier::Cold) => 0,
        (Tier::Hot, _) => 1,
        _ => 2,
    });
    moves
}

/// The site's tiering loop; cheap to clone.
#[derive(Debug, Clone)]
pub struct Tierer {
    pub store: Store,
    pub tiers: TiersSection,
    /// `<data dir>/images`: the warm tier, where uploads and fetches land.
    pub images_dir: PathBuf,
    /// `storage.volumes_dir`: the disk volume snapshots' files are on.
    pub volumes_dir: PathBuf,
    /// Snapshots the backup worker is bringing back, shared with it.
    pub busy: super::Busy,
    /// The link to the region: room is made for images on their way only
    /// while it is up (offline, nothing is on its way, and what is cached
    /// is what the site has).
    pub link: Arc<crate::alarms::LinkState>,
}

impl Tierer {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.pass().await {
                warn!(error = %e, "tiering pass failed; retrying");
            }
            if self.tiers.cold {
                if let Err(e) = self.snapshots_pass().await {
                    warn!(error = %e, "snapshot tiering pass failed; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PERIOD) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    fn hot_dir(&self) -> Option<&Path> {
        self.tiers.hot.as_ref().map(|h| h.dir.as_path())
    }

    /// The site's tierable image files, with their paths: each file the
    /// site wrote (`<dir>/<id>` of an image it uploaded or fetched; never
    /// a config seed's) in either tier's directory.
    fn items(&self, images: &[Image], pinned: &HashSet<String>) -> Vec<(Item, PathBuf)> {
        let now = Utc::now();
        let idle = chrono::Duration::seconds(self.tiers.cold_after_idle_secs as i64);
        images
            .iter()
            .filter(|i| i.status.state == ImageState::Active && i.status.sha256.is_some())
            .filter_map(|i| {
                let file = i.spec.file.clone()?;
                let at = if file == self.images_dir.join(&i.id) {
                    Tier::Warm
                } else if self.hot_dir().is_some_and(|d| file == d.join(&i.id)) {
                    Tier::Hot
                } else {
                    return None;
                };
                let last_used = i.status.last_used.unwrap_or(i.updated_at);
                let item = Item {
                    id: i.id.clone(),
                    bytes: i.status.size_bytes.unwrap_or(0),
                    at,
                    last_used,
                    pinned: pinned.contains(&i.id),
                    may_go_cold: i.spec.region.is_some()
                        && self.store.region_gave("images", &i.id)
                        && now - last_used >= idle,
                };
                Some((item, file))
            })
            .collect()
    }

    /// The region's images on their way here (queued or being fetched):
    /// pinned on local disk at their full size, so room is made for them.
    fn incoming(images: &[Image]) -> impl Iterator<Item = Item> + '_ {
        images
            .iter()
            .filter(|i| matches!(i.status.state, ImageState::Queued | ImageState::Saving))
            .filter_map(|i| {
                Some(Item {
                    id: i.id.clone(),
                    bytes: i.spec.region.as_ref()?.size,
                    at: Tier::Warm,
                    last_used: i.updated_at,
                    pinned: true,
                    may_go_cold: false,
                })
            })
    }

    /// What each tier may hold now: its capacity, cut to what its items
    /// hold plus what its disk has free.
    fn room(&self, items: &[(Item, PathBuf)]) -> std::io::Result<Room> {
        let held = |t: Tier| -> u64 {
            items
                .iter()
                .filter(|(i, _)| i.at == t)
                .map(|(i, _)| i.bytes)
                .sum()
        };
        std::fs::create_dir_all(&self.images_dir)?;
        let free = super::free_bytes(&self.images_dir)?;
        let disk = (held(Tier::Warm) + free).saturating_sub(super::FREE_SPACE_RESERVE);
        let warm = self
            .tiers
            .warm_capacity_mb
            .map_or(disk, |mb| (mb << 20).min(disk));
        let hot = match &self.tiers.hot {
            None => None,
            Some(h) => {
                make_private_dir(&h.dir)?;
                let free = super::free_bytes(&h.dir)?;
                let disk = (held(Tier::Hot) + free).saturating_sub(HOT_RESERVE);
                Some((h.capacity_mb << 20).min(disk))
            }
        };
        Ok(Room {
            hot,
            warm,
            cold: self.tiers.cold,
        })
    }

    /// Plans and carries out the moves due now; says how many were made.
    pub async fn pass(&self) -> Result<usize, String> {
        let images = self.store.images().await.map_err(|e| e.to_string())?;
        let pinned = self
            .store
            .pinned_images()
            .await
            .map_err(|e| e.to_string())?;
        let t = self.clone();
        let images_seen = images.clone();
        let (items, lost, room) = tokio::task::spawn_blocking(move || {
            // A file gone from under its image (a failed cache disk, say).
            let (items, lost): (Vec<_>, Vec<_>) = t
                .items(&images, &pinned)
                .into_iter()
                .partition(|(_, f)| f.exists());
            t.room(&items).map(|r| (items, lost, r))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot measure the tiers' room: {e}"))?;
        // The region's unpinned ones are marked cold, so their next use
        // brings them back; others are left for the operator.
        for (item, file) in lost.iter().filter(|(i, _)| !i.pinned) {
            let (id, from) = (item.id.clone(), file.clone());
            if let Ok(true) = self.store.write(move |w| w.evict_image(&id, &from)).await {
                warn!(image = %item.id, file = %file.display(), "an image's file is gone; it is marked cold and comes back from the region when next used");
            }
        }
        for tier in [Tier::Hot, Tier::Warm] {
            let bytes: u64 = items
                .iter()
                .filter(|(i, _)| i.at == tier)
                .map(|(i, _)| i.bytes)
                .sum();
            METRICS
                .image_tier_bytes
                .with_label_values(&[tier.as_str()])
                .set(bytes as i64);
        }
        let all: Vec<Item> = items
            .iter()
            .map(|(i, _)| i.clone())
            .chain(Self::incoming(&images_seen).filter(|_| self.link.down_since().is_none()))
            .collect();
        let moves = plan(&all, room);
        let mut made = 0;
        for m in moves {
            let Some((item, file)) = items.iter().find(|(i, _)| i.id == m.id) else {
                continue;
            };
            match self.carry_out(&m, file).await {
                Ok(true) => {
                    made += 1;
                    METRICS
                        .tier_moves
                        .with_label_values(&["image", m.to.as_str()])
                        .inc();
                    info!(image = %m.id, from = m.from.as_str(), to = m.to.as_str(), bytes = item.bytes, "image moved between tiers");
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(image = %m.id, from = m.from.as_str(), to = m.to.as_str(), error = %e, "an image could not change tiers; tried again on the next pass")
                }
            }
        }
        Ok(made)
    }

    /// Volume snapshots: each one whose file the region holds as it is
    /// here (the backup worker sent it), unused for
    /// `cold_after_idle_secs`, may leave the site when the volumes' disk
    /// is short (its free space below the store's reserve, or the
    /// snapshots over `snapshots_capacity_mb`), least recently used first.
    /// Says how many left.
    pub async fn snapshots_pass(&self) -> Result<usize, String> {
        let snaps = self
            .store
            .local_snapshots()
            .await
            .map_err(|e| e.to_string())?;
        let cold = self
            .store
            .cold_snapshots()
            .await
            .map_err(|e| e.to_string())?;
        self.sweep_cold_files(&cold).await;
        // Those on their way back take their room first, while the link
        // is up (offline nothing comes).
        let coming: Vec<Item> = cold
            .iter()
            .filter(|s| s.status.recalled && self.link.down_since().is_none())
            .filter_map(|s| {
                Some(Item {
                    id: s.id.clone(),
                    bytes: s.status.backup.as_ref()?.size,
                    at: Tier::Warm,
                    last_used: s.updated_at,
                    pinned: true,
                    may_go_cold: false,
                })
            })
            .collect();
        let pinned = self
            .store
            .pinned_snapshots()
            .await
            .map_err(|e| e.to_string())?;
        let (dir, cap, idle) = (
            self.volumes_dir.clone(),
            self.tiers.snapshots_capacity_mb,
            chrono::Duration::seconds(self.tiers.cold_after_idle_secs as i64),
        );
        let (items, room) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let now = Utc::now();
            let items: Vec<(Item, PathBuf, String)> = snaps
                .iter()
                .filter_map(|s| {
                    let file = s.status.file.clone()?;
                    let meta = std::fs::metadata(&file).ok()?;
                    let stamp = super::backup::stamp(&file).ok()?;
                    let last_used = s.status.last_used.unwrap_or(s.created_at);
                    let item = Item {
                        id: s.id.clone(),
                        bytes: meta.len(),
                        at: Tier::Warm,
                        last_used,
                        pinned: pinned.contains(&s.id),
                        may_go_cold: s.status.backup.as_ref().is_some_and(|b| b.stamp == stamp)
                            && now - last_used >= idle,
                    };
                    Some((item, file, stamp))
                })
                .collect();
            let held: u64 = items.iter().map(|(i, _, _)| i.bytes).sum();
            std::fs::create_dir_all(&dir)?;
            let disk = (held + super::free_bytes(&dir)?).saturating_sub(super::FREE_SPACE_RESERVE);
            let warm = cap.map_or(disk, |mb| (mb << 20).min(disk));
            Ok((
                items,
                Room {
                    hot: None,
                    warm,
                    cold: true,
                },
            ))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot measure the snapshots' room: {e}"))?;
        let moves = plan(
            &items
                .iter()
                .map(|(i, _, _)| i.clone())
                .chain(coming)
                .collect::<Vec<_>>(),
            room,
        );
        let mut made = 0;
        for m in moves.into_iter().filter(|m| m.to == Tier::Cold) {
            let Some((item, file, stamp)) = items.iter().find(|(i, _, _)| i.id == m.id) else {
                continue;
            };
            // Held across the write and the unlink, so a recall in between
            // does not find the file still here and keep it.
            let Some(_held) = self.busy.hold(&m.id) else {
                continue;
            };
            let (id, from, st) = (m.id.clone(), file.clone(), stamp.clone());
            match self
                .store
                .write(move |w| w.evict_snapshot(&id, &from, &st))
                .await
            {
                Ok(true) => {
                    made += 1;
                    METRICS
                        .tier_moves
                        .with_label_values(&["snapshot", "cold"])
                        .inc();
                    info!(snapshot = %m.id, bytes = item.bytes, "snapshot moved to the cold tier");
                    if let Err(e) = tokio::fs::remove_file(file).await {
                        warn!(file = %file.display(), error = %e, "a cold snapshot's file was not removed");
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(snapshot = %m.id, error = %e, "a snapshot could not go cold; tried again on the next pass")
                }
            }
        }
        Ok(made)
    }

    /// Removes files of cold snapshots nobody wants back that are still
    /// here (the agent stopped between the eviction's commit and its
    /// unlink), each read again while held.
    async fn sweep_cold_files(&self, cold: &[roost_common::model::Snapshot]) {
        for s in cold.iter().filter(|s| !s.status.recalled) {
            let Some(file) = s.status.file.clone().filter(|f| f.is_file()) else {
                continue;
            };
            let Some(_held) = self.busy.hold(&s.id) else {
                continue;
            };
            let now = self.store.snapshot(s.id.clone(), None).await;
            if now.is_ok_and(|n| n.status.is_cold() && !n.status.recalled) {
                warn!(snapshot = %s.id, file = %file.display(), "removing a cold snapshot's file left behind");
                let _ = tokio::fs::remove_file(&file).await;
            }
        }
    }

    /// One move; `Ok(false)` when the image changed meanwhile (used,
    /// deleted), so the move no longer applies.
    async fn carry_out(&self, m: &Move, file: &Path) -> Result<bool, String> {
        let (id, from) = (m.id.clone(), file.to_path_buf());
        if m.to == Tier::Cold {
            let moved = self
                .store
                .write(move |w| w.evict_image(&id, &from))
                .await
                .map_err(|e| e.to_string())?;
            if moved {
                let manifest = self.images_dir.join(format!("{}.manifest", m.id));
                for f in [file.to_path_buf(), manifest] {
                    if let Err(e) = tokio::fs::remove_file(&f).await {
                        warn!(file = %f.display(), error = %e, "a cold image's file was not removed; the next start's sweep does it");
                    }
                }
            }
            return Ok(moved);
        }
        let (dir, reserve) = match m.to {
            Tier::Hot => (
                self.hot_dir().ok_or("the site has no hot tier")?,
                HOT_RESERVE,
            ),
            _ => (self.images_dir.as_path(), super::FREE_SPACE_RESERVE),
        };
        let dir = dir.to_path_buf();
        // The planner counted the tiers' files; this is the disk itself
        // (both tiers may share one), with its reserve kept.
        let need = std::fs::metadata(file).map_err(|e| e.to_string())?.len();
        let free = super::free_bytes(&dir).map_err(|e| e.to_string())?;
        if free < need.saturating_add(reserve) {
            return Err(format!(
                "{} has {} MiB free; the copy needs {} MiB and {} MiB stay free",
                dir.display(),
                free >> 20,
                need.div_ceil(1 << 20),
                reserve >> 20
            ));
        }
        let (src, dst_dir, name) = (file.to_path_buf(), dir, m.id.clone());
        let dst = tokio::task::spawn_blocking(move || copy_in(&src, &dst_dir, &name))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| {
                format!(
                    "cannot copy {} into the {} tier: {e}",
                    file.display(),
                    m.to.as_str()
                )
            })?;
        let (d, tier) = (dst.clone(), m.to);
        let moved = self
            .store
            .write(move |w| w.move_image(&id, &from, d, tier))
            .await;
        // Which file no image names now. When the write's outcome is not
        // known, neither is removed: the next start's sweep keeps the one
        // the store names.
        let gone = match &moved {
            Ok(true) => Some(file.to_path_buf()),
            Ok(false) => Some(dst),
            Err(_) => None,
        };
        if let Some(gone) = gone {
            if let Err(e) = tokio::fs::remove_file(&gone).await {
                warn!(file = %gone.display(), error = %e, "an image file no image names was not removed; the next start's sweep does it");
            }
        }
        moved.map_err(|e| e.to_string())
    }
}

/// Refuses a hot directory that is, holds or sits in one of the site's
/// own directories: the tierer and the start's sweep manage every image
/// file in it, so it must be the cache's alone. Makes it if missing.
pub fn check_hot_dir(hot: &Path, data_dir: &Path, volumes_dir: &Path) -> Result<(), String> {
    make_private_dir(hot).map_err(|e| {
        format!(
            "storage.tiers.hot.dir: cannot make {}: {e}; give a directory the agent may write",
            hot.display()
        )
    })?;
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let h = real(hot);
    let images = data_dir.join("images");
    for (what, dir, inside_ok) in [
        ("the data directory", data_dir, true),
        ("the images directory", images.as_path(), false),
        ("storage.volumes_dir", volumes_dir, false),
    ] {
        let d = real(dir);
        if d.starts_with(&h) || (!inside_ok && h.starts_with(&d)) {
            return Err(format!(
                "storage.tiers.hot.dir: {} must be a directory of its own, not {} or {} it ({})",
                hot.display(),
                what,
                if inside_ok {
                    "holding"
                } else {
                    "in or holding"
                },
                dir.display()
            ));
        }
    }
    Ok(())
}

/// Makes `dir` (and its parents) if missing; a directory made here is
/// the agent's alone (0700), as the data dir is: it holds every project's
/// images.
pub fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Copies `src` to `<dir>/<name>`: written as `.part`, synced, renamed in.
fn copy_in(src: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    make_private_dir(dir)?;
    let part = dir.join(format!("{name}.part"));
    let done = dir.join(name);
    let copied = std::fs::copy(src, &part)
        .and_then(|_| std::fs::File::open(&part)?.sync_all())
        .and_then(|()| std::fs::rename(&part, &done))
        .and_then(|()| roost_common::files::sync_dir(dir));
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn item(id: &str, mb: u64, at: Tier, age_secs: i64) -> Item {
        Item {
            id: id.into(),
            bytes: mb * MB,
            at,
            last_used: DateTime::from_timestamp(1_000_000 - age_secs, 0).unwrap(),
            pinned: false,
            may_go_cold: true,
        }
    }

    fn mv(id: &str, from: Tier, to: Tier) -> Move {
        Move {
            id: id.into(),
            from,
            to,
        }
    }

    fn room(hot: Option<u64>, warm: u64, cold: bool) -> Room {
        Room {
            hot: hot.map(|h| h * MB),
            warm: warm * MB,
            cold,
        }
    }

    use Tier::{Cold, Hot, Warm};

    #[test]
    fn the_most_recently_used_fill_hot_then_warm_and_the_rest_go_cold() {
        let items = [
            item("a", 16, Warm, 30),
            item("b", 16, Warm, 20),
            item("c", 24, Warm, 10),
            item("d", 8, Hot, 40),
        ];
        // Hot 20 MiB: c (24) does not fit, b does; then c and a fill warm
        // (40 MiB), and d, the least recently used, goes cold.
        assert_eq!(
            plan(&items, room(Some(20), 40, true)),
            [mv("d", Hot, Cold), mv("b", Warm, Hot)]
        );
        // All where they belong: nothing to do.
        let settled = [
            item("a", 16, Warm, 30),
            item("b", 16, Hot, 20),
            item("c", 24, Warm, 10),
        ];
        assert!(plan(&settled, room(Some(20), 40, true)).is_empty());
    }

    #[test]
    fn what_cannot_go_cold_keeps_its_room_first_and_stays_over_it() {
        let items = [item("a", 16, Warm, 30), item("b", 16, Warm, 20)];
        assert!(plan(&items, room(None, 20, false)).is_empty());
        // An upload (no region copy), or an image used a moment ago, never
        // goes cold: it takes its room before newer ones that may go.
        let mut kept = item("a", 16, Warm, 30);
        kept.may_go_cold = false;
        for newer in [20, 40] {
            assert_eq!(
                plan(
                    &[kept.clone(), item("b", 16, Warm, newer)],
                    room(None, 20, true)
                ),
                [mv("b", Warm, Cold)]
            );
        }
        // Two that cannot go: both stay, over the room.
        let mut also = item("b", 16, Warm, 20);
        also.may_go_cold = false;
        assert!(plan(&[kept, also], room(None, 20, true)).is_empty());
        // Otherwise the least recently used goes first.
        assert_eq!(plan(&items, room(None, 20, true)), [mv("a", Warm, Cold)]);
    }

    #[test]
    fn nothing_moves_into_a_tier_without_room_for_it() {
        // The cache shrank: a cannot stay hot, warm has no room and it may
        // not go cold: it stays in the cache.
        let mut a = item("a", 16, Hot, 10);
        a.may_go_cold = false;
        let mut z = item("z", 16, Warm, 90);
        z.pinned = true;
        assert!(plan(&[a.clone(), z.clone()], room(Some(8), 20, true)).is_empty());
        // With room on local disk it moves down.
        assert_eq!(plan(&[a, z], room(Some(8), 40, true)), [mv("a", Hot, Warm)]);
    }

    #[test]
    fn an_image_on_its_way_makes_room_for_itself() {
        // 24 MiB coming (pinned, as the tierer counts it): a, the older,
        // leaves local disk for it.
        let mut incoming = item("new", 24, Warm, 0);
        incoming.pinned = true;
        let items = [incoming, item("a", 16, Warm, 30), item("b", 8, Warm, 20)];
        assert_eq!(plan(&items, room(None, 40, true)), [mv("a", Warm, Cold)]);
    }

    #[test]
    fn pinned_files_never_move_and_their_bytes_count_where_they_are() {
        let mut a = item("a", 16, Hot, 90);
        a.pinned = true;
        let mut z = item("z", 16, Warm, 95);
        z.pinned = true;
        // Hot has 4 MiB left beside the pinned a: b cannot come up; warm
        // has 8 left beside the pinned z: b stays, c goes cold though z,
        // older, stays.
        let items = [a, z, item("b", 8, Warm, 10), item("c", 16, Warm, 20)];
        assert_eq!(
            plan(&items, room(Some(20), 24, true)),
            [mv("c", Warm, Cold)]
        );
    }

    #[test]
    fn a_cache_with_no_room_left_sends_its_files_down() {
        // Its disk filled with something else: the cache's room is none.
        let items = [item("a", 16, Hot, 10), item("b", 16, Hot, 20)];
        assert_eq!(
            plan(&items, room(Some(0), 20, true)),
            [mv("b", Hot, Cold), mv("a", Hot, Warm)]
        );
    }

    #[test]
    fn a_newly_used_file_comes_up_and_pushes_the_oldest_down() {
        // b was just used: it takes a's place in hot, a goes to warm.
        let items = [item("a", 16, Hot, 20), item("b", 16, Warm, 1)];
        assert_eq!(
            plan(&items, room(Some(20), 100, true)),
            [mv("a", Hot, Warm), mv("b", Warm, Hot)]
        );
    }

    #[test]
    fn the_hot_directory_must_be_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let vols = tmp.path().join("vols");
        std::fs::create_dir_all(data.join("images")).unwrap();
        for bad in [
            data.clone(),
            tmp.path().to_path_buf(),
            data.join("images"),
            data.join("images/hot"),
            vols.clone(),
            vols.join("hot"),
        ] {
            let e = check_hot_dir(&bad, &data, &vols).unwrap_err();
            assert!(e.starts_with("storage.tiers.hot.dir: "), "{e}");
            assert!(e.contains("must be a directory of its own"), "{e}");
        }
        // Beside them, or in the data dir beside the images: fine, and
        // made private.
        for good in [tmp.path().join("nvme/cache"), data.join("hot")] {
            check_hot_dir(&good, &data, &vols).unwrap();
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&good).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", good.display());
        }
    }

    #[test]
    fn copy_in_leaves_the_whole_file_or_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::write(&src, b"image bytes").unwrap();
        let dir = tmp.path().join("hot");
        let done = copy_in(&src, &dir, "img").unwrap();
        assert_eq!(std::fs::read(&done).unwrap(), b"image bytes");
        assert!(!dir.join("img.part").exists());
        // A source gone: an error, and no part file left behind.
        let err = copy_in(&tmp.path().join("gone"), &dir, "other").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert!(!dir.join("other.part").exists());
        assert!(!dir.join("other").exists());
    }
}
