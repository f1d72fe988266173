//! Images made through the image API: the record and its upload states.
//!
//! The bytes live in a file beside the store (see `api::images`); the row
//! says which file and what it holds. An upload is `queued -> saving ->
//! active`: `saving` is taken in one write (so two uploads of one image
//! cannot both run), the file is written and synced outside the store, and
//! `active` with the file's path, size and sha256 is committed only once the
//! bytes are durable. A failed upload, or an agent that stopped during one,
//! leaves the image `queued` again.
//!
//! The site publishes its images (what each is, not its bytes) under
//! `site/images` in the status document after every image write and once
//! after each start, so the region can show them and check a server
//! request's image while the site is offline.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::params;

use roost_common::model::{Image, ImageSpec, ImageState, ImageStatus, Resource, Tier};
use roost_common::FieldError;

use super::rows::{self, json, time};
use super::{StoreError, WriteError};

/// What an upload stored, committed by [`super::WriteCtx::finish_upload`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub file: std::path::PathBuf,
    pub size: u64,
    pub sha256: String,
    pub virtual_size: u64,
}

/// The status document's key (under `site/`) for the site's images.
pub const IMAGES: &str = "images";

/// The site's images as the region sees them: Glance's view of each,
/// without their additional properties.
pub(super) fn summary(conn: &rusqlite::Connection) -> Result<serde_json::Value, StoreError> {
    let all: Vec<Image> = rows::list(conn, "images", "1", [])?;
    Ok(serde_json::Value::Array(
        all.iter()
            .map(|i| roost_common::api::glance_image(i, false))
            .collect(),
    ))
}

fn save(tx: &rusqlite::Transaction<'_>, i: &Image) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE images SET name = ?2, spec = ?3, status = ?4, updated_at = ?5 WHERE id = ?1",
        params![
            i.id,
            i.spec.name,
            json(&i.spec)?,
            json(&i.status)?,
            time(&i.updated_at)
        ],
    )?;
    Ok(())
}

/// The images whose files may not move: a live server's disk is an
/// overlay of one, or a volume is being made from it.
pub(super) fn pinned(conn: &rusqlite::Connection) -> Result<HashSet<String>, StoreError> {
    rows::id_set(
        conn,
        "SELECT json_extract(spec, '$.image_id') FROM servers
           WHERE json_extract(spec, '$.deleted') = 0
         UNION
         SELECT json_extract(spec, '$.source.image') FROM volumes
           WHERE json_extract(status, '$.state') = 'creating'",
    )
}

/// Records that `id` was used now (a server, a volume, a download), for
/// tiering's least-recently-used order. Not published: the region does
/// not show it.
pub(super) fn touch(
    tx: &rusqlite::Connection,
    id: &str,
    now: &chrono::DateTime<chrono::Utc>,
) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE images SET status = json_set(status, '$.last_used', ?2) WHERE id = ?1",
        params![id, time(now)],
    )?;
    Ok(())
}

/// Images left `saving` by an agent that stopped during their upload go
/// back to `queued` (the agent then removes their files:
/// `api::sweep_images`).
pub(super) fn reset_interrupted_uploads(tx: &rusqlite::Connection) -> Result<usize, StoreError> {
    Ok(tx.execute(
        "UPDATE images SET status = json_set(status, '$.state', 'queued')
         WHERE json_extract(status, '$.state') = 'saving'",
        [],
    )?)
}

impl super::WriteCtx<'_> {
    /// Publishes the site's images in the status document.
    pub(super) fn publish_images(&mut self) -> Result<(), StoreError> {
        let all = summary(self.tx)?;
        self.record_status(super::writer::SITE, IMAGES, &all);
        Ok(())
    }

    /// Records a new image, `queued` until its data is uploaded.
    pub fn create_image(&mut self, spec: ImageSpec) -> Result<Image, WriteError> {
        spec.validate()?;
        let mut i: Image = Resource::new(spec, self.now);
        if let Some(id) = &i.spec.id {
            i.id = id.clone();
            let taken: bool = self.tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM images WHERE id = ?1)",
                [id],
                |r| r.get(0),
            )?;
            if taken {
                return Err(WriteError::Conflict(format!(
                    "An image with identifier {id} already exists"
                )));
            }
        }
        i.spec.id = Some(i.id.clone());
        rows::insert(self.tx, "images", &i, Some(&i.spec.name))?;
        self.publish_images()?;
        Ok(i)
    }

    fn image_for_write(&self, id: &str) -> Result<Image, WriteError> {
        rows::get(self.tx, "images", id)?
            .ok_or_else(|| WriteError::NotFound(format!("No image found with ID {id}")))
    }

    /// Marks an image's bytes as the region's (or, with `None`, its
    /// own): the fetcher brings them.
    pub(super) fn set_region_copy(
        &mut self,
        id: &str,
        copy: Option<roost_common::model::RegionCopy>,
    ) -> Result<(), WriteError> {
        let mut i = self.image_for_write(id)?;
        i.spec.region = copy;
        i.status.fetched_bytes = i
            .spec
            .region
            .as_ref()
            .map(|_| i.status.fetched_bytes.unwrap_or(0));
        i.updated_at = self.now;
        save(self.tx, &i)?;
        self.publish_images().map_err(WriteError::from)
    }

    /// Gives up on a region image whose data cannot make it.
    pub fn kill_image(&mut self, id: &str, why: String) -> Result<(), WriteError> {
        let mut i = self.image_for_write(id)?;
        i.status.state = ImageState::Killed;
        i.status.fault = Some(why);
        i.updated_at = self.now;
        save(self.tx, &i)?;
        self.publish_images()?;
        Ok(())
    }

    /// Counts bytes fetched from the region for an image.
    pub fn add_fetched(&mut self, id: &str, bytes: u64) -> Result<(), WriteError> {
        let mut i = self.image_for_write(id)?;
        i.status.fetched_bytes = Some(i.status.fetched_bytes.unwrap_or(0) + bytes);
        i.updated_at = self.now;
        save(self.tx, &i)?;
        Ok(())
    }

    /// Takes `queued -> saving`: only one upload of an image runs.
    pub fn begin_upload(&mut self, id: &str) -> Result<Image, WriteError> {
        let mut i = self.image_for_write(id)?;
        if i.status.state != ImageState::Queued {
            return Err(WriteError::Conflict(format!(
                "Image status transition from {} to saving is not allowed: data can be uploaded only to a queued image",
                i.status.state.as_str()
            )));
        }
        i.status.state = ImageState::Saving;
        i.updated_at = self.now;
        save(self.tx, &i)?;
        self.publish_images()?;
        Ok(i)
    }

    /// Commits an upload whose bytes are durable: the image is `active`.
    pub fn finish_upload(&mut self, id: &str, up: Uploaded) -> Result<Image, WriteError> {
        let mut i = self.image_for_write(id)?;
        if i.status.state != ImageState::Saving {
            return Err(WriteError::Conflict(format!(
                "Image {id} is {} and no longer taking this upload",
                i.status.state.as_str()
            )));
        }
        i.spec.file = Some(up.file);
        i.status = ImageStatus {
            state: ImageState::Active,
            size_bytes: Some(up.size),
            sha256: Some(up.sha256),
            virtual_size: Some(up.virtual_size),
            fetched_bytes: i.status.fetched_bytes,
            fault: None,
            tier: None,
            last_used: Some(self.now),
        };
        i.updated_at = self.now;
        save(self.tx, &i)?;
        self.publish_images()?;
        Ok(i)
    }

    /// Tiering: `id`'s file, copied to `to`, is there from now on, in
    /// `tier`. Refused (`false`) when the image was used meanwhile (it is
    /// pinned) or is no longer at `from`: the copy is then the caller's
    /// to remove, and otherwise the file at `from`.
    pub fn move_image(
        &mut self,
        id: &str,
        from: &Path,
        to: PathBuf,
        tier: Tier,
    ) -> Result<bool, WriteError> {
        let Some(mut i) = self.movable(id, from)? else {
            return Ok(false);
        };
        i.spec.file = Some(to);
        i.status.tier = Some(tier);
        save(self.tx, &i)?;
        self.publish_images()?;
        Ok(true)
    }

    /// Tiering: `id` leaves the site; the region keeps its bytes. The
    /// image stays `active`, with no file, until it is used again
    /// ([`Self::recall_image`]). Refused (`false`) as [`Self::move_image`]
    /// is, and for an image the region does not hold.
    pub fn evict_image(&mut self, id: &str, from: &Path) -> Result<bool, WriteError> {
        let Some(mut i) = self.movable(id, from)? else {
            return Ok(false);
        };
        if i.spec.region.is_none() {
            return Ok(false);
        }
        i.spec.file = None;
        i.status.tier = Some(Tier::Cold);
        save(self.tx, &i)?;
        self.publish_images()?;
        Ok(true)
    }

    /// The image, if it is active at `from` and nothing pins it.
    fn movable(&self, id: &str, from: &Path) -> Result<Option<Image>, WriteError> {
        let found: Option<Image> = rows::get(self.tx, "images", id)?;
        let Some(i) = found else {
            return Ok(None);
        };
        let here = i.status.state == ImageState::Active && i.spec.file.as_deref() == Some(from);
        Ok((here && !pinned(self.tx)?.contains(id)).then_some(i))
    }

    /// A download used the image.
    pub fn touch_image(&mut self, id: &str) -> Result<(), WriteError> {
        touch(self.tx, id, &self.now).map_err(WriteError::from)
    }

    /// A cold image is wanted again: it is `queued` for the fetcher to
    /// bring back from the region. Says whether it was cold.
    pub fn recall_image(&mut self, id: &str) -> Result<bool, WriteError> {
        let found: Option<Image> = rows::get(self.tx, "images", id)?;
        let Some(mut i) = found else {
            return Ok(false);
        };
        if !(i.status.state == ImageState::Active && i.status.is_cold()) {
            return Ok(false);
        }
        i.status.state = ImageState::Queued;
        i.status.tier = None;
        i.updated_at = self.now;
        save(self.tx, &i)?;
        self.publish_images()?;
        tracing::info!(image = %id, "a cold image is wanted again; fetching it from the region");
        Ok(true)
    }

    /// An upload failed: the image is `queued` again and may be retried.
    pub fn abort_upload(&mut self, id: &str) -> Result<(), WriteError> {
        let mut i = self.image_for_write(id)?;
        if i.status.state == ImageState::Saving {
            i.status.state = ImageState::Queued;
            i.updated_at = self.now;
            save(self.tx, &i)?;
            self.publish_images()?;
        }
        Ok(())
    }

    /// Deletes an image that no server boots from; returns it, so the caller
    /// removes its file after the commit. Config seeds may be deleted too
    /// (their files are the operator's and are left alone).
    pub fn delete_image(&mut self, id: &str) -> Result<Image, WriteError> {
        let i = self.image_for_write(id)?;
        if i.spec.protected {
            return Err(WriteError::Forbidden(format!(
                "Image {id} is protected and cannot be deleted; unset protected first"
            )));
        }
        // A region image being fetched may go: the fetcher finds it gone
        // when it commits, and removes what it wrote.
        if i.status.state == ImageState::Saving && i.spec.region.is_none() {
            return Err(WriteError::Conflict(format!(
                "Image {id} is being uploaded; delete it when the upload ends"
            )));
        }
        let making: i64 = self.tx.query_row(
            "SELECT COUNT(*) FROM volumes WHERE json_extract(status, '$.state') = 'creating'
             AND json_extract(spec, '$.source.image') = ?1",
            [id],
            |r| r.get(0),
        )?;
        if making > 0 {
            return Err(WriteError::Conflict(format!(
                "Image {id} is being copied into {making} new volume(s); delete it when they are made"
            )));
        }
        let servers = super::servers::live_users(self.tx, "image_id", id)?;
        if !servers.is_empty() {
            return Err(WriteError::Conflict(format!(
                "Image {id} is in use by server(s) {}: their disks are built on it; delete them first",
                servers.join(", ")
            )));
        }
        self.tx.execute("DELETE FROM images WHERE id = ?1", [id])?;
        self.publish_images()?;
        Ok(i)
    }
}

/// The server-create check: an image must be active to boot from.
pub(super) fn check_bootable(image: &Image, field: &str) -> Result<(), FieldError> {
    if image.status.is_cold() {
        Err(cold(image, field))
    } else if image.status.state == ImageState::Active {
        Ok(())
    } else if let (Some(why), ImageState::Killed) = (&image.status.fault, image.status.state) {
        Err(FieldError::new(
            field,
            &image.id,
            format!(
                "image {} could not be made from the region's data ({why}); make it again at the region",
                image.spec.name
            ),
        ))
    } else if image.spec.region.is_some() {
        Err(FieldError::new(
            field,
            &image.id,
            format!(
                "image {} is not cached at this site yet: its data comes from the region, fetched while the link is up ({} of {} bytes so far); it can boot once it is active",
                image.spec.name,
                image.status.fetched_bytes.unwrap_or(0),
                image.spec.region.as_ref().map_or(0, |r| r.size),
            ),
        ))
    } else {
        Err(FieldError::new(
            field,
            &image.id,
            format!(
                "image is {}, not active: upload its data first",
                image.status.state.as_str()
            ),
        ))
    }
}

/// The refusal for an image whose bytes are only at the region; the API
/// recalls it (`recall_image`) after refusing.
pub fn cold(image: &Image, field: &str) -> FieldError {
    FieldError::new(
        field,
        &image.id,
        format!(
            "image {} is in the cold tier: its bytes are at the region, not at this site; it is fetched again now (while the link is up) and can be used once it is active",
            image.spec.name
        ),
    )
}
