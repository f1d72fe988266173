//! Images the region holds for its sites.
//!
//! An operator makes an image in a site's region of the controller's
//! Glance (`openstack --os-region-name SITE image create --file ...`): the
//! record goes into that site's intent as `images/<id>` (so the site learns
//! of it whenever it is next reachable), the bytes into
//! `<data dir>/images/<id>` here, with their chunk manifest beside them
//! (`<id>.manifest`, see `roost_sync::chunks`). Once the bytes are whole,
//! the intent says how big they are and their sha256, and the site fetches
//! them over its bulk stream, asking only for chunks it has nowhere on
//! disk ([`RegionImages`] is the [`ChunkSource`] that answers it).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use roost_common::model::{DiskFormat, RegionCopy};
use roost_sync::bulk::ChunkSource;
use roost_sync::chunks::{hex, Hash, Manifest};

/// An image's manifest, with each chunk's place in the file.
#[derive(Debug)]
struct Indexed {
    file: PathBuf,
    manifest: Manifest,
    at: HashMap<Hash, (u64, u32)>,
}

/// The region's image files and their manifests.
#[derive(Debug)]
pub struct RegionImages {
    dir: PathBuf,
    index: Mutex<HashMap<String, Arc<Indexed>>>,
    /// Images whose bytes are being received: one upload per image.
    uploading: Mutex<std::collections::HashSet<String>>,
}

/// Takes an image's upload slot; gives it back when dropped.
struct UploadSlot<'a>(&'a RegionImages, String);

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        // An upload cut by its client is dropped, not failed: its part
        // file goes here (after a success it was renamed away).
        let _ = std::fs::remove_file(self.0.dir.join(format!("{}.part", self.1)));
        self.0
            .uploading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// Why an upload was refused: a message for the client (400 unless
/// `server` says the fault is here).
#[derive(Debug)]
pub struct UploadError {
    pub message: String,
    pub server: bool,
}

fn refused(message: impl Into<String>) -> UploadError {
    UploadError {
        message: message.into(),
        server: false,
    }
}

fn failed(message: impl Into<String>) -> UploadError {
    UploadError {
        message: message.into(),
        server: true,
    }
}

/// Image ids become file names: only UUIDs are taken.
fn check_id(id: &str) -> Result<(), String> {
    roost_common::ids::check_uuid("image", id).map_err(|e| e.to_string())
}

impl RegionImages {
    pub fn new(dir: PathBuf) -> RegionImages {
        RegionImages {
            dir,
            index: Mutex::new(HashMap::new()),
            uploading: Mutex::new(std::collections::HashSet::new()),
        }
    }

    pub fn file(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn manifest_file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.manifest"))
    }

    /// Whether the region holds an image's bytes.
    pub fn holds(&self, id: &str) -> bool {
        check_id(id).is_ok() && self.manifest_file(id).is_file()
    }

    /// Stores an upload: streamed to `<id>.part`, checked against its disk
    /// format and the sha256 the client declared (if any), chunked, synced
    /// and renamed; then its manifest is written. Returns what the sites
    /// are told, and the virtual size.
    pub async fn receive(
        &self,
        id: &str,
        format: DiskFormat,
        declared_sha256: Option<String>,
        body: axum::body::Body,
    ) -> Result<(RegionCopy, u64), UploadError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        check_id(id).map_err(refused)?;
        let taken = !self
            .uploading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
        if taken || self.holds(id) {
            if !taken {
                self.uploading
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
            }
            return Err(UploadError {
                message: format!("Image {id} already has data, or is being uploaded; make a new image for new data"),
                server: false,
            });
        }
        let _slot = UploadSlot(self, id.to_string());
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| failed(format!("cannot create {}: {e}", self.dir.display())))?;
        let part = self.dir.join(format!("{id}.part"));
        let result = async {
            let mut file = tokio::fs::File::create(&part)
                .await
                .map_err(|e| failed(format!("cannot create {}: {e}", part.display())))?;
            let mut head = Vec::with_capacity(roost_common::api::HEADER_BYTES);
            let mut size = 0u64;
            let mut stream = body.into_data_stream();
            while let Some(piece) = stream.next().await {
                let piece = piece.map_err(|e| refused(format!("the upload was cut before its end: {e}")))?;
                if head.len() < roost_common::api::HEADER_BYTES {
                    let take = (roost_common::api::HEADER_BYTES - head.len()).min(piece.len());
                    head.extend_from_slice(&piece[..take]);
                }
                size += piece.len() as u64;
                file.write_all(&piece)
                    .await
                    .map_err(|e| failed(format!("cannot write {}: {e}", part.display())))?;
            }
            file.sync_all()
                .await
                .map_err(|e| failed(format!("cannot sync {}: {e}", part.display())))?;
            drop(file);
            let virtual_size = roost_common::api::check_disk_format(format, &head, size).map_err(refused)?;
            let p = part.clone();
            let manifest = tokio::task::spawn_blocking(move || {
                std::fs::File::open(&p).and_then(|f| Manifest::of_reader(std::io::BufReader::new(f)))
            })
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(format!("cannot chunk the upload: {e}")))?;
            if manifest.chunks.len() > roost_sync::chunks::MAX_CHUNKS {
                return Err(refused(format!(
                    "the image is too large to send to sites: {} chunks, at most {}",
                    manifest.chunks.len(),
                    roost_sync::chunks::MAX_CHUNKS
                )));
            }
            let sha256 = hex(&manifest.sha256);
            if let Some(want) = declared_sha256.filter(|w| !w.is_empty()) {
                if !want.eq_ignore_ascii_case(&sha256) {
                    return Err(refused(format!(
                        "owner_specified.openstack.sha256: the data's sha256 is {sha256}, not the declared {want}"
                    )));
                }
            }
            roost_common::files::write_atomic(&self.manifest_file(id), &manifest.encode(), 0o644)
                .map_err(|e| failed(format!("cannot write the manifest: {e}")))?;
            std::fs::rename(&part, self.file(id))
                .map_err(|e| failed(format!("cannot rename {}: {e}", part.display())))?;
            roost_common::files::sync_dir(&self.dir).map_err(|e| failed(e.to_string()))?;
            self.index.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
            tracing::info!(image_id = %id, bytes = size, chunks = manifest.chunks.len(), "the region holds an image");
            Ok((RegionCopy { size, sha256 }, virtual_size))
        }
        .await;
        if result.is_err() {
            // Only this upload's files: the slot kept any other away, and
            // an image with data was refused above.
            let _ = tokio::fs::remove_file(&part).await;
            if !self.file(id).is_file() {
                let _ = tokio::fs::remove_file(self.manifest_file(id)).await;
            }
        }
        result
    }

    /// Forgets an image's bytes.
    pub fn remove(&self, id: &str) {
        if check_id(id).is_err() {
            return;
        }
        self.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        for f in [self.file(id), self.manifest_file(id)] {
            let _ = std::fs::remove_file(f);
        }
    }

    fn indexed(&self, id: &str) -> Result<Arc<Indexed>, String> {
        check_id(id)?;
        if let Some(i) = self.index.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(i.clone());
        }
        let bytes = std::fs::read(self.manifest_file(id))
            .map_err(|_| format!("the region holds no data for image {id}"))?;
        let manifest = Manifest::decode(&bytes).map_err(|e| e.to_string())?;
        let at = manifest
            .offsets()
            .map(|(o, c)| (c.hash, (o, c.len)))
            .collect();
        let i = Arc::new(Indexed {
            file: self.file(id),
            manifest,
            at,
        });
        let mut index = self.index.lock().unwrap_or_else(|e| e.into_inner());
        // A few images at a time are being fetched; keep the cache small.
        if index.len() >= 16 {
            index.clear();
        }
        index.insert(id.to_string(), i.clone());
        Ok(i)
    }
}

fn read_at(file: &Path, offset: u64, len: u32) -> Result<Vec<u8>, String> {
    let mut f = std::fs::File::open(file).map_err(|e| format!("cannot read the image: {e}"))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| format!("cannot read the image: {e}"))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf)
        .map_err(|e| format!("cannot read the image: {e}"))?;
    Ok(buf)
}

/// Any image the region holds, whichever site asks; `link::SiteImages`
/// limits each site to the images its intent names.
impl ChunkSource for RegionImages {
    fn manifest(&self, _site: &str, image: &str) -> Result<Manifest, String> {
        Ok(self.indexed(image)?.manifest.clone())
    }

    fn chunk(&self, _site: &str, image: &str, hash: &Hash) -> Result<Vec<u8>, String> {
        let i = self.indexed(image)?;
        let (offset, len) =
            i.at.get(hash)
                .ok_or_else(|| format!("image {image} has no chunk {}", hex(hash)))?;
        read_at(&i.file, *offset, *len)
    }
}
