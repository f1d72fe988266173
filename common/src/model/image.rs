//! Images (Glance). Upload, caching and chunked transfer come with the
//! storage issue; here is the record servers boot from.

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
}

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
    #[default]
    Queued,
    Active,
    Killed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStatus {
    pub state: ImageState,
    pub size_bytes: Option<u64>,
}

pub type Image = Resource<ImageSpec, ImageStatus>;
