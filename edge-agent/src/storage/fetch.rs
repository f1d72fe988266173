//! Fetching the region's images while the link is up, moving only the
//! chunks this site has nowhere on disk.
//!
//! For each image the region gave the site (`spec.region` set, `queued`),
//! the fetcher asks the region for its manifest on a bulk stream of its own
//! (`roost_sync::bulk`, below sync's priority), then fills
//! `<images>/<id>.part` chunk by chunk:
//! - a chunk already in the part file (an earlier attempt, cut) stays;
//! - a chunk some other image here holds (by name, through the manifests
//!   kept beside image files, `<id>.manifest`) is copied from it;
//! - the rest is asked for, in batches spaced by the site's rate
//!   (`storage.fetch_rate_kbit`), each chunk checked against its name.
//!
//! Then the file is synced, checked as an upload is (disk format), renamed
//! into place and the image turns `active`. A cut leaves the image `queued`
//! with its part file, and the next connection resumes it.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tracing::{info, warn};

use roost_common::model::{Image, ImageState};
use roost_sync::bulk::{BulkClient, Pacer, MAX_BATCH};
use roost_sync::chunks::{hex, Hash, Manifest};

use crate::metrics::METRICS;
use crate::store::{Store, Uploaded};

/// Most bytes asked for in one request.
const BATCH_BYTES: u64 = 1 << 20;

/// Why a fetch stopped: to be tried again on the next connection, or for
/// good (the region's data can never make this image: a manifest that
/// disagrees with the record, a disk format refused; the image is
/// `killed`, with the reason).
#[derive(Debug)]
enum Stop {
    Retry(String),
    GiveUp(String),
}

impl From<String> for Stop {
    fn from(why: String) -> Stop {
        Stop::Retry(why)
    }
}

/// The site's one pacer for bulk bytes (fetches and backups together
/// stay under `storage.fetch_rate_kbit`). Asked under the lock, slept
/// outside it.
pub type SharedPacer = Arc<std::sync::Mutex<Pacer>>;

/// How long to wait before moving `bytes` more.
pub fn pace(pacer: &SharedPacer, bytes: u64) -> Duration {
    pacer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .delay(bytes, Instant::now())
}

/// What the fetcher needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub store: Store,
    pub images_dir: PathBuf,
    /// The site's cap on bulk bytes, shared with the backup worker.
    pub pacer: SharedPacer,
    /// Told when the region gave or changed an image.
    pub wake: Arc<Notify>,
}

/// Where each chunk this site holds can be read: file, offset, length.
pub(super) type LocalChunks = HashMap<Hash, (PathBuf, u64, u32)>;

fn manifest_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.manifest"))
}

/// The manifest of an image file here, read from beside it or made (and
/// kept) now.
fn manifest_of(dir: &Path, id: &str, file: &Path) -> std::io::Result<Manifest> {
    let path = manifest_path(dir, id);
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(m) = Manifest::decode(&bytes) {
            return Ok(m);
        }
    }
    let m = Manifest::of_reader(std::io::BufReader::new(std::fs::File::open(file)?))?;
    roost_common::files::write_atomic(&path, &m.encode(), 0o644)?;
    Ok(m)
}

/// Every chunk of every active image file here.
fn local_chunks(dir: &Path, images: &[Image]) -> LocalChunks {
    let mut out = HashMap::new();
    for i in images
        .iter()
        .filter(|i| i.status.state == ImageState::Active)
    {
        let Some(file) = &i.spec.file else { continue };
        match manifest_of(dir, &i.id, file) {
            Ok(m) => {
                for (at, c) in m.offsets() {
                    out.entry(c.hash).or_insert((file.clone(), at, c.len));
                }
            }
            Err(e) => {
                warn!(image = %i.id, error = %e, "cannot index an image's chunks; it is not used to save transfer")
            }
        }
    }
    out
}

fn read_at(file: &Path, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(file)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// What preparing the part file found.
#[derive(Debug, Default)]
pub(super) struct Prepared {
    /// Chunks still to fetch, by name, with every offset they go to, in
    /// the order of the file.
    pub missing: Vec<(Hash, u32, Vec<u64>)>,
    pub resumed_bytes: u64,
    pub local_bytes: u64,
}

/// Opens (or makes) the part file at the image's size and fills what it
/// can without the link.
pub(super) fn prepare(
    part: &Path,
    manifest: &Manifest,
    local: &LocalChunks,
) -> std::io::Result<Prepared> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(part)?;
    f.set_len(manifest.size())?;
    let mut p = Prepared::default();
    let mut index: HashMap<Hash, usize> = HashMap::new();
    let mut buf = Vec::new();
    for (at, c) in manifest.offsets() {
        buf.resize(c.len as usize, 0);
        f.read_exact_at(&mut buf, at)?;
        if <[u8; 32]>::from(Sha256::digest(&buf)) == c.hash {
            p.resumed_bytes += u64::from(c.len);
            continue;
        }
        if let Some((file, off, len)) = local.get(&c.hash) {
            if let Ok(data) = read_at(file, *off, *len) {
                if <[u8; 32]>::from(Sha256::digest(&data)) == c.hash {
                    f.write_all_at(&data, at)?;
                    p.local_bytes += u64::from(c.len);
                    continue;
                }
            }
        }
        match index.get(&c.hash) {
            Some(&i) => p.missing[i].2.push(at),
            None => {
                index.insert(c.hash, p.missing.len());
                p.missing.push((c.hash, c.len, vec![at]));
            }
        }
    }
    Ok(p)
}

impl Fetcher {
    /// Fetches every image that needs it while `conn` lasts; then waits to
    /// be woken. Ends when the connection does (the caller aborts it).
    pub async fn run(self, conn: quinn::Connection) {
        // One fetcher runs at a time: a region image left `saving` is from
        // a run that was stopped, and is queued again.
        if let Ok(all) = self.store.images().await {
            for i in all
                .into_iter()
                .filter(|i| i.spec.region.is_some() && i.status.state == ImageState::Saving)
            {
                let id = i.id.clone();
                let _ = self.store.write(move |w| w.abort_upload(&id)).await;
            }
        }
        loop {
            let due: Vec<Image> = match self.store.images().await {
                Ok(all) => all
                    .into_iter()
                    .filter(|i| i.spec.region.is_some() && i.status.state == ImageState::Queued)
                    .collect(),
                Err(e) => {
                    warn!(error = %e, "cannot list images to fetch");
                    Vec::new()
                }
            };
            for image in due {
                if conn.close_reason().is_some() {
                    return;
                }
                self.fetch_one(&conn, &image).await;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                _ = conn.closed() => return,
            }
        }
    }

    async fn fetch_one(&self, conn: &quinn::Connection, image: &Image) {
        let id = image.id.clone();
        let i = id.clone();
        if let Err(e) = self.store.write(move |w| w.begin_upload(&i)).await {
            warn!(image = %id, error = %e, "cannot start fetching an image");
            return;
        }
        let started = Instant::now();
        let mut received = 0u64;
        let result = self.transfer(conn, image, &mut received).await;
        let (i, r) = (id.clone(), received);
        if let Err(e) = self.store.write(move |w| w.add_fetched(&i, r)).await {
            warn!(image = %id, error = %e, "cannot count the bytes fetched");
        }
        let ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(up) => {
                let size = up.size;
                let i = id.clone();
                let file = up.file.clone();
                match self.store.write(move |w| w.finish_upload(&i, up)).await {
                    Ok(_) => {
                        info!(image = %id, bytes = size, fetched = received, ms, "image fetched from the region")
                    }
                    Err(e) => {
                        // Withdrawn meanwhile (or the store failed: then
                        // it is fetched again, from the local chunks).
                        warn!(image = %id, error = %e, "a fetched image could not be recorded; its files are removed");
                        for f in [file, manifest_path(&self.images_dir, &id)] {
                            let _ = tokio::fs::remove_file(f).await;
                        }
                        let i = id.clone();
                        let _ = self.store.write(move |w| w.abort_upload(&i)).await;
                    }
                }
            }
            Err(Stop::Retry(e)) => {
                warn!(image = %id, error = %e, fetched = received, ms, "fetching an image stopped; it resumes on the next connection");
                let i = id.clone();
                let _ = self.store.write(move |w| w.abort_upload(&i)).await;
            }
            Err(Stop::GiveUp(e)) => {
                warn!(image = %id, error = %e, "the region's data cannot make this image; it is killed");
                let _ = tokio::fs::remove_file(self.images_dir.join(format!("{id}.part"))).await;
                let i = id.clone();
                let _ = self.store.write(move |w| w.kill_image(&i, e)).await;
            }
        }
    }

    async fn transfer(
        &self,
        conn: &quinn::Connection,
        image: &Image,
        received: &mut u64,
    ) -> Result<Uploaded, Stop> {
        let id = &image.id;
        let copy = image
            .spec
            .region
            .clone()
            .ok_or_else(|| Stop::GiveUp("the image has no region copy".into()))?;
        let mut client = BulkClient::open(conn).await.map_err(|e| e.to_string())?;
        // A refusal may pass (the region's disk, an intent not yet synced
        // there): tried again. Only data that cannot make the image kills it.
        let manifest = client.manifest(id).await.map_err(|e| e.to_string())?;
        if hex(&manifest.sha256) != copy.sha256 || manifest.size() != copy.size {
            return Err(Stop::GiveUp(format!(
                "the region's data for image {id} is not what its record says (sha256 {}, {} bytes)",
                hex(&manifest.sha256),
                manifest.size()
            )));
        }
        let dir = self.images_dir.clone();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| e.to_string())?;
        let part = dir.join(format!("{id}.part"));
        // Room for the whole image (less what a cut attempt already holds),
        // and the reserve the site's store keeps.
        let held = std::fs::metadata(&part).map_or(0, |m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        });
        let free = super::free_bytes(&dir).map_err(|e| e.to_string())?;
        let need = manifest.size().saturating_sub(held);
        if free < need.saturating_add(super::FREE_SPACE_RESERVE) {
            return Err(Stop::Retry(format!(
                "not enough space for image {id}: {} MiB free in {}, it needs {} MiB more and 1024 MiB stay free for the site's store; free space or delete unused images and volumes",
                free >> 20,
                dir.display(),
                need.div_ceil(1 << 20)
            )));
        }
        let images = self.store.images().await.map_err(|e| e.to_string())?;
        let (d, p, m) = (dir.clone(), part.clone(), manifest.clone());
        let prepared = tokio::task::spawn_blocking(move || {
            let local = local_chunks(&d, &images);
            prepare(&p, &m, &local)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot prepare {}: {e}", part.display()))?;
        for (source, bytes) in [
            ("local", prepared.local_bytes),
            ("resumed", prepared.resumed_bytes),
        ] {
            METRICS
                .image_bytes
                .with_label_values(&[source])
                .inc_by(bytes);
        }
        let need: u64 = prepared
            .missing
            .iter()
            .map(|(_, len, _)| u64::from(*len))
            .sum();
        info!(image = %id, size = manifest.size(), resumed = prepared.resumed_bytes,
            local = prepared.local_bytes, to_fetch = need, chunks = prepared.missing.len(),
            "fetching an image from the region");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&part)
            .map_err(|e| e.to_string())?;
        fetch_chunks(
            &mut client,
            id,
            &prepared.missing,
            &file,
            &self.pacer,
            |n| {
                *received += n;
                METRICS
                    .image_bytes
                    .with_label_values(&["fetched"])
                    .inc_by(n);
            },
        )
        .await?;
        client.finish();
        let (p, dir2, id2, format) = (
            part.clone(),
            dir.clone(),
            id.clone(),
            image.spec.disk_format,
        );
        let m = manifest.clone();
        tokio::task::spawn_blocking(move || -> Result<Uploaded, Stop> {
            file.sync_all().map_err(|e| e.to_string())?;
            drop(file);
            let head = read_at(
                &p,
                0,
                (roost_common::api::HEADER_BYTES as u64).min(m.size()) as u32,
            )
            .map_err(|e| e.to_string())?;
            let virtual_size = roost_common::api::check_disk_format(format, &head, m.size())
                .map_err(Stop::GiveUp)?;
            let done = dir2.join(&id2);
            roost_common::files::write_atomic(&manifest_path(&dir2, &id2), &m.encode(), 0o644)
                .map_err(|e| e.to_string())?;
            std::fs::rename(&p, &done).map_err(|e| e.to_string())?;
            roost_common::files::sync_dir(&dir2).map_err(|e| e.to_string())?;
            Ok(Uploaded {
                file: done,
                size: m.size(),
                sha256: hex(&m.sha256),
                virtual_size,
            })
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// Asks for `missing` chunks (name, length, the offsets it goes to) in
/// batches of up to 1 MiB, two in flight so the link does not idle for a
/// round trip between them, each spaced by the site's pacer; writes each
/// chunk, checked against its name, at its offsets in `file`. `progress`
/// is told the chunk bytes of each batch as it lands.
pub(super) async fn fetch_chunks(
    client: &mut BulkClient,
    key: &str,
    missing: &[(Hash, u32, Vec<u64>)],
    file: &std::fs::File,
    pacer: &SharedPacer,
    mut progress: impl FnMut(u64),
) -> Result<(), String> {
    let mut batches: Vec<Vec<&(Hash, u32, Vec<u64>)>> = Vec::new();
    let mut bytes = u64::MAX;
    for m in missing {
        if bytes >= BATCH_BYTES || batches.last().is_some_and(|b| b.len() == MAX_BATCH) {
            batches.push(Vec::new());
            bytes = 0;
        }
        if let Some(b) = batches.last_mut() {
            b.push(m);
        }
        bytes += u64::from(m.1);
    }
    let hashes: Vec<Vec<Hash>> = batches
        .iter()
        .map(|b| b.iter().map(|m| m.0).collect())
        .collect();
    let offsets: HashMap<Hash, &Vec<u64>> = missing.iter().map(|m| (m.0, &m.2)).collect();
    let size_of = |b: &Vec<&(Hash, u32, Vec<u64>)>| b.iter().map(|m| u64::from(m.1)).sum::<u64>();
    let mut asked = 0;
    for i in 0..batches.len() {
        while asked < batches.len() && asked <= i + 1 {
            tokio::time::sleep(pace(pacer, size_of(&batches[asked]))).await;
            client
                .ask(key, &hashes[asked])
                .await
                .map_err(|e| e.to_string())?;
            asked += 1;
        }
        let before = client.received;
        let r = client
            .take(&hashes[i], |h, data| {
                for at in offsets.get(h).copied().into_iter().flatten() {
                    file.write_all_at(data, *at).map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await;
        progress(client.received - before);
        r.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    #[test]
    fn prepare_keeps_what_the_part_file_has_copies_what_other_images_have_and_lists_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let mut v1 = vec![0u8; 2 << 20];
        rand::rngs::StdRng::seed_from_u64(9).fill_bytes(&mut v1);
        let mut v2 = v1.clone();
        // The second half changes.
        rand::rngs::StdRng::seed_from_u64(10).fill_bytes(&mut v2[1 << 20..]);
        let old = tmp.path().join("old");
        std::fs::write(&old, &v1).unwrap();
        let m1 = Manifest::of_reader(&v1[..]).unwrap();
        let m2 = Manifest::of_reader(&v2[..]).unwrap();
        let local: LocalChunks = m1
            .offsets()
            .map(|(at, c)| (c.hash, (old.clone(), at, c.len)))
            .collect();
        let part = tmp.path().join("new.part");
        let p = prepare(&part, &m2, &local).unwrap();
        let missing: u64 = p.missing.iter().map(|m| u64::from(m.1)).sum();
        assert_eq!(p.resumed_bytes, 0);
        assert_eq!(p.local_bytes + missing, v2.len() as u64);
        assert!(
            p.local_bytes > 900 << 10,
            "most of the first half is local: {}",
            p.local_bytes
        );
        assert!(missing < 1100 << 10, "{missing}");
        // Fill the missing chunks as a fetch would; a second prepare finds
        // everything already there and asks for nothing.
        let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
        let at: HashMap<Hash, u64> = m2.offsets().map(|(o, c)| (c.hash, o)).collect();
        for (h, len, offsets) in &p.missing {
            let o = at[h] as usize;
            for off in offsets {
                f.write_all_at(&v2[o..o + *len as usize], *off).unwrap();
            }
        }
        let again = prepare(&part, &m2, &HashMap::new()).unwrap();
        assert!(again.missing.is_empty());
        assert_eq!(again.resumed_bytes, v2.len() as u64);
        assert_eq!(std::fs::read(&part).unwrap(), v2);
    }
}
