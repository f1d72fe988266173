//! Tiering: which image files sit in the hot cache, which on local disk
//! (warm), and which only at the region (cold), per `storage.tiers`.
//!
//! [`plan`] is pure. Every image file the site wrote (uploads, fetches;
//! not a config seed's, which is the operator's) is an [`Item`]. The
//! unpinned ones, most recently used first, fill the hot tier while they
//! fit, then the warm one; what is left over goes cold if it may (the
//! region holds its bytes and `cold` is on) and otherwise stays warm, over
//! the tier's room. A pinned image (a server's disk is an overlay of its
//! file, or a volume is being made from it) never moves: its bytes count
//! where they are.
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
//! A tier's room is its configured capacity, but never more than what its
//! items hold plus what its disk has free (less the reserve the site's
//! store keeps on the data disk): a disk short of space moves files down
//! as a full tier does.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
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
    pub pinned: bool,
    /// The region holds its bytes, so it may go cold.
    pub region_copy: bool,
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
    let mut moves = Vec::new();
    for i in order {
        let to = if room.hot.is_some() && i.bytes <= hot_left {
            hot_left -= i.bytes;
            Tier::Hot
        } else if i.bytes <= warm_left || !(room.cold && i.region_copy) {
            // Kept here when it cannot go: its bytes still take the room.
            warm_left = warm_left.saturating_sub(i.bytes);
            Tier::Warm
        } else {
            Tier::Cold
        };
        if to != i.at {
            moves.push(Move {
                id: i.id.clone(),
                from: i.at,
                to,
            });
        }
    }
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
}

/// Whether `file` is one the site wrote into `dir` (not an operator's).
fn in_dir(file: &Path, dir: &Path) -> bool {
    file.parent() == Some(dir)
}

impl Tierer {
    /// Runs until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.pass().await {
                warn!(error = %e, "tiering pass failed; retrying");
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

    /// The site's tierable image files, and their paths by id.
    fn items(&self, images: &[Image], pinned: &HashSet<String>) -> Vec<(Item, PathBuf)> {
        images
            .iter()
            .filter(|i| i.status.state == ImageState::Active)
            .filter_map(|i| {
                let file = i.spec.file.clone()?;
                let at = if in_dir(&file, &self.images_dir) {
                    Tier::Warm
                } else if self.hot_dir().is_some_and(|d| in_dir(&file, d)) {
                    Tier::Hot
                } else {
                    return None;
                };
                let item = Item {
                    id: i.id.clone(),
                    bytes: i.status.size_bytes.unwrap_or(0),
                    at,
                    last_used: i.status.last_used.unwrap_or(i.updated_at),
                    pinned: pinned.contains(&i.id),
                    region_copy: i.spec.region.is_some(),
                };
                Some((item, file))
            })
            .collect()
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
                std::fs::create_dir_all(&h.dir)?;
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
        let (items, room) = tokio::task::spawn_blocking(move || {
            let items = t.items(&images, &pinned);
            t.room(&items).map(|r| (items, r))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot measure the tiers' room: {e}"))?;
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
        let moves = plan(
            &items.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(),
            room,
        );
        let mut made = 0;
        for m in moves {
            let Some((item, file)) = items.iter().find(|(i, _)| i.id == m.id) else {
                continue;
            };
            match self.carry_out(&m, file).await {
                Ok(true) => {
                    made += 1;
                    METRICS
                        .image_tier_moves
                        .with_label_values(&[m.to.as_str()])
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
        let dir = match m.to {
            Tier::Hot => self.hot_dir().ok_or("the site has no hot tier")?,
            _ => &self.images_dir,
        }
        .to_path_buf();
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
        let gone = match &moved {
            Ok(true) => file.to_path_buf(),
            _ => dst,
        };
        if let Err(e) = tokio::fs::remove_file(&gone).await {
            warn!(file = %gone.display(), error = %e, "an image file no image names was not removed; the next start's sweep does it");
        }
        moved.map_err(|e| e.to_string())
    }
}

/// Copies `src` to `<dir>/<name>`: written as `.part`, synced, renamed in.
fn copy_in(src: &Path, dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
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
            region_copy: true,
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
    fn without_cold_or_a_region_copy_a_file_stays_over_the_room() {
        let items = [item("a", 16, Warm, 30), item("b", 16, Warm, 20)];
        assert!(plan(&items, room(None, 20, false)).is_empty());
        // An upload (no region copy) never goes cold. Newer than b, it
        // fits and b goes; older, it stays over the room beside b.
        let mut uploaded = item("a", 16, Warm, 30);
        uploaded.region_copy = false;
        assert_eq!(
            plan(
                &[uploaded.clone(), item("b", 16, Warm, 40)],
                room(None, 20, true)
            ),
            [mv("b", Warm, Cold)]
        );
        assert!(plan(&[uploaded, item("b", 16, Warm, 20)], room(None, 20, true)).is_empty());
        // Region copies go cold, least recently used first.
        assert_eq!(plan(&items, room(None, 20, true)), [mv("a", Warm, Cold)]);
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
    fn a_hot_tier_taken_away_sends_its_files_down() {
        let items = [item("a", 16, Hot, 10), item("b", 16, Hot, 20)];
        assert_eq!(
            plan(&items, room(None, 20, true)),
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
