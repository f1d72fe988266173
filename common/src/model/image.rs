//! Images (Glance). Upload, caching and chunked transfer come with the
//! storage issue; here is the record servers boot from.

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
