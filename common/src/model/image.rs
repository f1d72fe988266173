//! Images (Glance): the record servers boot from. An image is seeded by
//! the site config (its bytes already on disk) or made through the image
//! API and uploaded into the agent's data dir, or given by the region and
//! fetched chunk by chunk. Where its bytes sit at the site (hot cache,
//! local disk, only at the region) is its [`Tier`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Resource;
use crate::validate::{self, FieldError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

/// Who sees an image, as Glance's `visibility`. `shared` and `community`
/// are Glance's too; here `shared` behaves as `private` (image members are
/// not kept) and `community` as `public` without being listed by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Config seeds are public: every project of the site boots them.
    #[default]
    Public,
    Community,
    Shared,
    Private,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Community => "community",
            Visibility::Shared => "shared",
            Visibility::Private => "private",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    pub name: String,
    /// The id clients use in `imageRef`; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    pub disk_format: DiskFormat,
    #[serde(default = "bare")]
    pub container_format: String,
    #[serde(default)]
    pub min_disk_gb: u64,
    #[serde(default)]
    pub min_ram_mb: u64,
    /// Expected sha256 of the image bytes, hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The image's bytes on this site's disk: the base a server's root disk
    /// is a qcow2 overlay of. Without it a server gets a blank root disk of
    /// its flavor's size. (The storage issue replaces this with the image
    /// cache.)
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Direct kernel boot, as Glance's `kernel_id`: the kernel file.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Direct kernel boot: the initramfs, as Glance's `ramdisk_id`.
    #[serde(default)]
    pub ramdisk: Option<PathBuf>,
    /// Direct kernel boot: the kernel command line, as Glance's
    /// `os_command_line`.
    #[serde(default)]
    pub command_line: Option<String>,
    #[serde(default)]
    pub visibility: Visibility,
    /// The project that owns it (`None` for config seeds).
    #[serde(default)]
    pub owner: Option<String>,
    /// Glance's `protected`: it cannot be deleted while set.
    #[serde(default)]
    pub protected: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Glance's additional properties: free-form text keys and values.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Set when the region holds the bytes: the site fetches them chunk by
    /// chunk over its link (see `roost_sync::bulk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<RegionCopy>,
}

/// What the region says an image it holds is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionCopy {
    pub size: u64,
    /// Hex sha256 of the whole file.
    pub sha256: String,
}

/// Image properties Glance itself sets or reserves: a client may not give
/// them as additional properties.
pub const RESERVED_IMAGE_PROPERTIES: [&str; 21] = [
    "id",
    "name",
    "status",
    "visibility",
    "protected",
    "owner",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "size",
    "virtual_size",
    "disk_format",
    "container_format",
    "min_disk",
    "min_ram",
    "tags",
    "created_at",
    "updated_at",
    "file",
    "self",
    "schema",
];

fn bare() -> String {
    "bare".into()
}

impl ImageSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        validate::name("name", &self.name)?;
        if let Some(id) = &self.id {
            crate::ids::check_uuid("id", id)?;
        }
        if self.container_format != "bare" {
            return Err(FieldError::new(
                "container_format",
                &self.container_format,
                "must be 'bare'",
            ));
        }
        for (field, path) in [
            ("file", &self.file),
            ("kernel", &self.kernel),
            ("ramdisk", &self.ramdisk),
        ] {
            if let Some(p) = path {
                if !p.is_absolute() {
                    return Err(FieldError::new(
                        field,
                        p.display(),
                        "must be an absolute path",
                    ));
                }
            }
        }
        if self.kernel.is_none() && (self.ramdisk.is_some() || self.command_line.is_some()) {
            return Err(FieldError::new(
                "kernel",
                "null",
                "ramdisk and command_line need a kernel (direct kernel boot)",
            ));
        }
        if let Some(c) = &self.command_line {
            if c.len() > 2048 || c.chars().any(char::is_control) {
                return Err(FieldError::new(
                    "command_line",
                    c,
                    "must be at most 2048 printable characters",
                ));
            }
        }
        validate::range("min_disk_gb", self.min_disk_gb, 0, 1024 * 1024)?;
        validate::range("min_ram_mb", self.min_ram_mb, 0, 16 * 1024 * 1024)?;
        if self.tags.len() > 128 {
            return Err(FieldError::new(
                "tags",
                self.tags.len(),
                "must be at most 128 tags",
            ));
        }
        for t in &self.tags {
            if t.is_empty() || t.len() > 255 || t.chars().any(char::is_control) {
                return Err(FieldError::new(
                    "tags",
                    t,
                    "each tag must be 1-255 printable characters",
                ));
            }
        }
        if self.properties.len() > 128 {
            return Err(FieldError::new(
                "properties",
                self.properties.len(),
                "must be at most 128 additional properties",
            ));
        }
        for (k, v) in &self.properties {
            if k.is_empty() || k.len() > 255 || k.chars().any(char::is_control) {
                return Err(FieldError::new(
                    k.as_str(),
                    k,
                    "a property name must be 1-255 printable characters",
                ));
            }
            if RESERVED_IMAGE_PROPERTIES.contains(&k.as_str()) {
                return Err(FieldError::new(
                    k.as_str(),
                    v,
                    "is a reserved attribute and cannot be set as a property",
                ));
            }
            if v.len() > 65535 {
                return Err(FieldError::new(
                    k.as_str(),
                    v.len(),
                    "a property value must be at most 65535 bytes",
                ));
            }
        }
        if let Some(s) = &self.sha256 {
            if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(FieldError::new(
                    "sha256",
                    s,
                    "must be 64 hexadecimal digits",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageState {
    /// Made, no data yet.
    #[default]
    Queued,
    /// Data being uploaded; back to `queued` if the upload fails or the
    /// agent restarts during it.
    Saving,
    Active,
    Killed,
}

impl ImageState {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageState::Queued => "queued",
            ImageState::Saving => "saving",
            ImageState::Active => "active",
            ImageState::Killed => "killed",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStatus {
    pub state: ImageState,
    pub size_bytes: Option<u64>,
    /// sha256 of the stored bytes, hex (Glance's `os_hash_value` with
    /// `os_hash_algo` sha256).
    #[serde(default)]
    pub sha256: Option<String>,
    /// The disk's size as the guest sees it (qcow2 header; file size for raw).
    #[serde(default)]
    pub virtual_size: Option<u64>,
    /// Bytes fetched from the region for it, over every attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_bytes: Option<u64>,
    /// Why a `killed` image is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<String>,
    /// Where an `active` image's bytes are: set by the site's tiering
    /// (none: on local disk, where uploads and fetches land).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    /// When a server, a volume or a download last used it (or its bytes
    /// last arrived): tiering moves the least recently used down first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where an active image's bytes sit at a site (`storage.tiers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The site's fast cache directory.
    Hot,
    /// The site's data disk.
    Warm,
    /// Only at the region: no file here; brought back when used.
    Cold,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }
}

impl ImageStatus {
    /// Whether the image's bytes are on this site's disk.
    pub fn is_cold(&self) -> bool {
        self.tier == Some(Tier::Cold)
    }
}

pub type Image = Resource<ImageSpec, ImageStatus>;
