//! Glance v2 at `/image/v2/`: images made, uploaded, downloaded, listed,
//! shown and deleted at this site, with or without the region.
//!
//! An upload streams into `<images dir>/<id>.part`, hashing as it goes; the
//! data is checked against the image's `disk_format` (a qcow2 header, and no
//! backing or external data file, which would let a guest read the host's
//! files; raw must not be qcow2 in disguise) and against any sha256 the
//! client declared (`owner_specified.openstack.sha256`, which the
//! `openstack` client sends, or the config's `sha256`), then synced and
//! renamed to `<id>` before the image turns `active`. Any failure removes
//! the partial file and leaves the image `queued`.

use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use roost_common::api::ImageCreateBody;
use roost_common::model::{DiskFormat, Image, ImageState, Visibility};

use super::{parse_body, ApiError, AppState, Caller};
use crate::store::Uploaded;

/// The property the `openstack` client (openstacksdk) sets to the sha256
/// of the file it uploads.
const CLIENT_SHA256: &str = "owner_specified.openstack.sha256";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(versions))
        .route("/v2/images", get(list).post(create))
        .route("/v2/images/{id}", get(show).delete(delete))
        .route("/v2/images/{id}/file", get(download).put(upload))
}

/// `GET /image/`: Glance's version document.
pub(super) async fn versions(State(s): State<AppState>) -> Response {
    let href = format!("{}/image/v2/", s.base_url);
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(roost_common::api::glance_versions(&href)),
    )
        .into_response()
}

fn view(i: &Image) -> Value {
    roost_common::api::glance_image(i, true)
}

/// Whether the caller may see an image: admins all, others public and
/// community images and their project's own.
fn visible(c: &Caller, i: &Image) -> bool {
    c.is_cloud_admin()
        || matches!(
            i.spec.visibility,
            Visibility::Public | Visibility::Community
        )
        || i.spec.owner.as_deref() == Some(c.0.project_id.as_str())
}

/// Refuses a server create or rebuild, or a volume from an image, naming
/// an image the caller may not see (another project's private image), as
/// if it did not exist; or one in the cold tier, which it sets fetching
/// again from the region. The store checks the rest (it exists, it is
/// active) in the write.
pub(super) async fn check_bootable_by(
    s: &AppState,
    c: &Caller,
    image_id: &str,
    field: &str,
) -> Result<(), ApiError> {
    match s.store.image(image_id.to_string()).await? {
        Some(i) if !visible(c, &i) => Err(roost_common::FieldError::new(
            field,
            image_id,
            "must be the id of an existing image",
        )
        .into()),
        Some(i) if i.status.is_cold() => {
            recall(s, &i.id).await?;
            Err(crate::store::cold_image(&i, field).into())
        }
        _ => Ok(()),
    }
}

/// Sets a cold image fetching again from the region.
async fn recall(s: &AppState, id: &str) -> Result<(), ApiError> {
    let image_id = id.to_string();
    if s.store.write(move |w| w.recall_image(&image_id)).await? {
        s.images_wake.notify_one();
    }
    Ok(())
}

/// Whether the caller may change an image: admins, and its owner project
/// unless it is a config seed (no owner).
fn may_modify(c: &Caller, i: &Image) -> bool {
    c.is_cloud_admin() || i.spec.owner.as_deref() == Some(c.0.project_id.as_str())
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("No image found with ID {id}"))
}

async fn find(s: &AppState, c: &Caller, id: &str) -> Result<Image, ApiError> {
    match s.store.image(id.to_string()).await? {
        Some(i) if visible(c, &i) => Ok(i),
        _ => Err(not_found(id)),
    }
}

#[derive(Debug, serde::Deserialize)]
struct ListQuery {
    name: Option<String>,
    status: Option<String>,
    visibility: Option<String>,
    owner: Option<String>,
}

async fn list(
    State(s): State<AppState>,
    c: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let images: Vec<Value> = s
        .store
        .images()
        .await?
        .iter()
        .filter(|i| visible(&c, i))
        // Glance lists community images only when asked for them.
        .filter(|i| match q.visibility.as_deref() {
            None => i.spec.visibility != Visibility::Community,
            Some("all") => true,
            Some(v) => i.spec.visibility.as_str() == v,
        })
        .filter(|i| q.name.as_ref().is_none_or(|n| *n == i.spec.name))
        .filter(|i| {
            q.status
                .as_ref()
                .is_none_or(|st| st == i.status.state.as_str())
        })
        .filter(|i| q.owner.is_none() || q.owner == i.spec.owner)
        .map(view)
        .collect();
    Ok(Json(
        json!({"images": images, "first": "/v2/images", "schema": "/v2/schemas/images"}),
    ))
}

async fn show(
    State(s): State<AppState>,
    c: Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(view(&find(&s, &c, &id).await?)))
}

async fn create(State(s): State<AppState>, c: Caller, body: Bytes) -> Result<Response, ApiError> {
    let spec = parse_body::<ImageCreateBody>(&body)?.into_spec(&c.0.project_id)?;
    if spec.visibility == Visibility::Public {
        c.allow("image:images:publicize")?;
    }
    let i = s.store.write(move |w| w.create_image(spec)).await?;
    tracing::info!(image_id = %i.id, name = %i.spec.name, "image created");
    Ok((StatusCode::CREATED, Json(view(&i))).into_response())
}

async fn delete(
    State(s): State<AppState>,
    c: Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let i = find(&s, &c, &id).await?;
    if !may_modify(&c, &i) {
        return Err(ApiError::forbidden(format!(
            "You are not permitted to delete image {id}: it belongs to another project"
        )));
    }
    if s.store.region_gave("images", &id) {
        return Err(ApiError::conflict(format!(
            "Image {id} is the region's: withdraw it at the region (deleted here, the region's intent would bring it back)"
        )));
    }
    let gone = s.store.write(move |w| w.delete_image(&id)).await?;
    // Only files this API wrote are removed; a config seed's file is the
    // operator's.
    if let Some(file) = gone.spec.file.as_deref() {
        let in_hot = s.hot_dir.as_ref().is_some_and(|h| file == h.join(&gone.id));
        if file.parent() == Some(images_dir(&s).as_path()) || in_hot {
            if let Err(e) = tokio::fs::remove_file(file).await {
                tracing::warn!(image_id = %gone.id, file = %file.display(), error = %e, "deleted image's file not removed");
            }
        }
    }
    tracing::info!(image_id = %gone.id, "image deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn images_dir(s: &AppState) -> PathBuf {
    s.data_dir.join("images")
}

async fn upload(
    State(s): State<AppState>,
    c: Caller,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/octet-stream") {
        return Err(ApiError::unsupported_media(format!(
            "Content-Type: must be application/octet-stream for image data (got {ctype:?})"
        )));
    }
    let i = find(&s, &c, &id).await?;
    if !may_modify(&c, &i) {
        return Err(ApiError::forbidden(format!(
            "You are not permitted to upload data to image {id}: it belongs to another project"
        )));
    }
    if i.spec.region.is_some() {
        return Err(ApiError::conflict(format!(
            "Image {id} is the region's: its data is fetched from the region, not uploaded here"
        )));
    }
    let image_id = id.clone();
    let i = s.store.write(move |w| w.begin_upload(&image_id)).await?;
    // The rest runs as a task of its own: a client that goes away during
    // the upload drops this handler, but the task still ends the upload
    // one way or the other, so the image is never left `saving`.
    tokio::spawn(store_upload(s, i, body))
        .await
        .map_err(|e| ApiError::internal(format!("the image upload task failed: {e}")))?
}

/// Receives, checks and commits an upload taken with `begin_upload`; on
/// any failure removes what it wrote and leaves the image `queued`.
async fn store_upload(s: AppState, i: Image, body: Body) -> Result<Response, ApiError> {
    let dir = images_dir(&s);
    let id = i.id.clone();
    let part = dir.join(format!("{id}.part"));
    let done = dir.join(&id);
    let stored = async {
        let up = receive(&i, body, &dir, &part, &done).await?;
        let (image_id, size) = (id.clone(), up.size);
        s.store
            .write(move |w| w.finish_upload(&image_id, up))
            .await?;
        Ok::<_, ApiError>(size)
    }
    .await;
    match stored {
        Ok(size) => {
            tracing::info!(image_id = %id, bytes = size, "image data stored");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            let _ = tokio::fs::remove_file(&done).await;
            let image_id = id.clone();
            if let Err(abort) = s.store.write(move |w| w.abort_upload(&image_id)).await {
                tracing::error!(image_id = %id, error = %abort, "a failed upload could not put the image back to queued; it is reset at the next start");
            }
            tracing::warn!(image_id = %id, error = %e.message, "image upload refused");
            Err(e)
        }
    }
}

/// Removes what interrupted uploads left in `<data dir>/images`: partial
/// files, and data of images that are not active (an upload cut between
/// its rename and its commit) or no longer exist. Run at start, after the
/// store put interrupted uploads back to `queued`.
pub async fn sweep(
    data_dir: &Path,
    hot_dir: Option<&Path>,
    store: &crate::store::Store,
) -> Result<usize, ApiError> {
    let dir = data_dir.join("images");
    // Kept: active images' files (in either tier) and their chunk
    // manifests, and the part files of the region's images still being
    // fetched (resumed later).
    let mut keep: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    for i in store.images().await? {
        match (i.status.state, &i.spec.file, &i.spec.region) {
            (ImageState::Active, Some(f), _) => {
                keep.insert(f.clone());
                keep.insert(dir.join(format!("{}.manifest", i.id)));
            }
            (ImageState::Queued | ImageState::Saving, _, Some(_)) => {
                keep.insert(dir.join(format!("{}.part", i.id)));
            }
            _ => {}
        }
    }
    let mut removed = 0;
    for d in std::iter::once(dir.as_path()).chain(hot_dir) {
        let mut entries = match tokio::fs::read_dir(d).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(e)),
        };
        while let Some(entry) = entries.next_entry().await.map_err(io_error)? {
            let path = entry.path();
            // In the hot directory, only names the tierer writes.
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = d == dir.as_path()
                || roost_common::ids::check_uuid("", name.trim_end_matches(".part")).is_ok();
            if ours && !keep.contains(&path) && entry.file_type().await.map_err(io_error)?.is_file()
            {
                tracing::warn!(file = %path.display(), "removing what an interrupted image upload or tier move left");
                tokio::fs::remove_file(&path).await.map_err(io_error)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

use crate::storage::FREE_SPACE_RESERVE;

/// Refuses to go on when the data disk has less than
/// [`FREE_SPACE_RESERVE`] free.
fn check_room(free: u64) -> Result<(), ApiError> {
    if free < FREE_SPACE_RESERVE {
        Err(ApiError::storage_full(format!(
            "Image storage media is full: {} MiB free on the site's data disk, and uploads keep 1024 MiB for the site's store; free space or delete unused images",
            free >> 20
        )))
    } else {
        Ok(())
    }
}

fn free_bytes(dir: &Path) -> Result<u64, ApiError> {
    crate::storage::free_bytes(dir).map_err(|e| {
        ApiError::internal(format!("cannot read free space of {}: {e}", dir.display()))
    })
}

/// Streams the body to `part`, checks it, syncs it and renames it to `done`.
async fn receive(
    i: &Image,
    body: Body,
    dir: &Path,
    part: &Path,
    done: &Path,
) -> Result<Uploaded, ApiError> {
    tokio::fs::create_dir_all(dir).await.map_err(io_error)?;
    check_room(free_bytes(dir)?)?;
    let mut file = tokio::fs::File::create(part).await.map_err(io_error)?;
    let mut hash = Sha256::new();
    let mut next_check: u64 = ROOM_CHECK_EVERY;
    let mut head: Vec<u8> = Vec::with_capacity(HEADER_BYTES);
    let mut size: u64 = 0;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!("the upload was cut before its end: {e}"))
        })?;
        if head.len() < HEADER_BYTES {
            let take = (HEADER_BYTES - head.len()).min(chunk.len());
            head.extend_from_slice(&chunk[..take]);
        }
        hash.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(io_error)?;
        if size >= next_check {
            check_room(free_bytes(dir)?)?;
            next_check = size + ROOM_CHECK_EVERY;
        }
    }
    if size == 0 {
        return Err(ApiError::bad_request(
            "image data: is empty; upload the image's bytes",
        ));
    }
    let virtual_size = check_format(i.spec.disk_format, &head, size)?;
    let sha256 = hex(&hash.finalize());
    for (field, want) in [
        (CLIENT_SHA256, i.spec.properties.get(CLIENT_SHA256)),
        ("sha256", i.spec.sha256.as_ref()),
    ] {
        // The client sends an empty value when it computed none.
        if let Some(want) = want.filter(|w| !w.is_empty()) {
            if !want.eq_ignore_ascii_case(&sha256) {
                return Err(ApiError::bad_request(format!(
                    "image data: its sha256 is {sha256} but the image's {field} is {want}: the data was damaged or is another file"
                )));
            }
        }
    }
    file.sync_all().await.map_err(io_error)?;
    drop(file);
    tokio::fs::rename(part, done).await.map_err(io_error)?;
    roost_common::files::sync_dir(dir).map_err(io_error)?;
    Ok(Uploaded {
        file: done.to_path_buf(),
        size,
        sha256,
        virtual_size,
    })
}

/// How often (in bytes received) an upload looks at the free space again.
const ROOM_CHECK_EVERY: u64 = 64 << 20;

use roost_common::api::HEADER_BYTES;

/// Checks the data is what `disk_format` says; returns the virtual size.
pub fn check_format(format: DiskFormat, head: &[u8], size: u64) -> Result<u64, ApiError> {
    roost_common::api::check_disk_format(format, head, size).map_err(ApiError::bad_request)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_error(e: std::io::Error) -> ApiError {
    if e.raw_os_error() == Some(28) {
        ApiError::storage_full(
            "Image storage media is full: the site's data disk has no room for this image; free space or delete unused images",
        )
    } else {
        tracing::error!(error = %e, "image store I/O failed");
        ApiError::internal(format!("image store I/O failed: {e}"))
    }
}

async fn download(
    State(s): State<AppState>,
    c: Caller,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    find(&s, &c, &id).await?;
    // Used now: tiering leaves it alone for a while.
    let image_id = id.clone();
    s.store.write(move |w| w.touch_image(&image_id)).await?;
    let mut moved = false;
    let f = loop {
        let i = find(&s, &c, &id).await?;
        if i.status.is_cold() {
            recall(&s, &id).await?;
            return Err(ApiError::conflict(format!(
                "Image {id} is in the cold tier: its data is at the region, not at this site. It is being fetched again (while the link is up); download it once it is active"
            )));
        }
        let file = match (&i.status.state, &i.spec.file) {
            (ImageState::Active, Some(f)) => f.clone(),
            _ => return Ok(StatusCode::NO_CONTENT.into_response()),
        };
        match tokio::fs::File::open(&file).await {
            Ok(f) => break f,
            // Moved to another tier since it was read: read it again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !moved => moved = true,
            Err(e) => {
                return Err(ApiError::unavailable(format!(
                    "image {id}: its data file {} cannot be read: {e}",
                    file.display()
                )))
            }
        }
    };
    let len = f.metadata().await.map_err(io_error)?.len();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A qcow2 header as qemu-img writes it: magic, version, backing file
    /// offset, ..., size at 24, incompatible features at 72 (v3).
    fn qcow2(version: u32, backing: u64, size: u64, incompatible: u64) -> Vec<u8> {
        let mut h = vec![0u8; HEADER_BYTES];
        h[..4].copy_from_slice(roost_common::api::QCOW2_MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[8..16].copy_from_slice(&backing.to_be_bytes());
        h[24..32].copy_from_slice(&size.to_be_bytes());
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        h
    }

    #[test]
    fn qcow2_data_is_checked_and_its_virtual_size_read() {
        let head = qcow2(3, 0, 64 << 20, 0);
        assert_eq!(
            check_format(DiskFormat::Qcow2, &head, 196_616).unwrap(),
            64 << 20
        );
        assert_eq!(
            check_format(DiskFormat::Qcow2, &qcow2(2, 0, 1 << 30, 0), 1).unwrap(),
            1 << 30
        );
        let refused = [
            (qcow2(3, 4096, 1, 0), "backing file"),
            (qcow2(3, 0, 1, 0b100), "external file"),
            (qcow2(4, 0, 1, 0), "version 4"),
            (b"\x7fELF not a disk".to_vec(), "no qcow2 header"),
            (roost_common::api::QCOW2_MAGIC.to_vec(), "no qcow2 header"),
        ];
        for (head, why) in refused {
            let e = check_format(DiskFormat::Qcow2, &head, 100).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains(why), "{why}: {}", e.message);
        }
    }

    #[tokio::test]
    async fn the_start_sweep_removes_what_cut_uploads_left_and_keeps_active_data() {
        use roost_common::api::ImageCreateBody;
        let dir = tempfile::tempdir().unwrap();
        let cfg: roost_common::config::SiteConfig = roost_common::config::parse(
            Path::new("site.yaml"),
            "site: {id: sweep-test, name: Sweep}\nhosts:\n  - {name: c0, roles: [compute], vcpus: 2, ram_mb: 1024, disk_gb: 10}\n",
        )
        .unwrap();
        let store = crate::store::Store::open(dir.path(), "sweep-test", &cfg)
            .unwrap()
            .0;
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let spec = serde_json::from_value::<ImageCreateBody>(
            serde_json::json!({"name": "kept", "disk_format": "raw"}),
        )
        .unwrap()
        .into_spec("p")
        .unwrap();
        let img = store.write(move |w| w.create_image(spec)).await.unwrap();
        let kept = images.join(&img.id);
        std::fs::write(&kept, b"data").unwrap();
        let (id, file) = (img.id.clone(), kept.clone());
        store.write(move |w| w.begin_upload(&id)).await.unwrap();
        let id = img.id.clone();
        store
            .write(move |w| {
                w.finish_upload(
                    &id,
                    crate::store::Uploaded {
                        file,
                        size: 4,
                        sha256: "00".repeat(32),
                        virtual_size: 4,
                    },
                )
            })
            .await
            .unwrap();
        // A partial upload, and data renamed into place but never committed.
        std::fs::write(images.join("x.part"), b"half").unwrap();
        std::fs::write(
            images.join("11111111-2222-4333-8444-555555555555"),
            b"orphan",
        )
        .unwrap();
        // A tier move cut before its commit, in the hot tier's directory.
        let hot = dir.path().join("hot");
        std::fs::create_dir_all(&hot).unwrap();
        std::fs::write(hot.join(format!("{}.part", img.id)), b"da").unwrap();
        std::fs::write(hot.join(&img.id), b"data").unwrap();
        // Not a name the tierer writes: not the sweep's.
        std::fs::write(hot.join("lost+found.txt"), b"mine").unwrap();
        assert_eq!(sweep(dir.path(), Some(&hot), &store).await.unwrap(), 4);
        let left: Vec<_> = std::fs::read_dir(&images)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left, vec![kept]);
        let left: Vec<_> = std::fs::read_dir(&hot)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["lost+found.txt"]);
        assert_eq!(sweep(dir.path(), Some(&hot), &store).await.unwrap(), 0);
    }

    #[test]
    fn an_upload_stops_before_the_store_runs_out_of_room() {
        assert!(check_room(FREE_SPACE_RESERVE).is_ok());
        let e = check_room(FREE_SPACE_RESERVE - 1).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message.contains("1023 MiB free"), "{}", e.message);
    }

    #[test]
    fn raw_data_is_its_own_size_and_may_not_be_qcow2() {
        assert_eq!(
            check_format(DiskFormat::Raw, b"\0\0\0\0", 4096).unwrap(),
            4096
        );
        let e = check_format(DiskFormat::Raw, &qcow2(3, 0, 1, 0), 4096).unwrap_err();
        assert!(e.message.contains("is a qcow2 image"), "{}", e.message);
    }
}
