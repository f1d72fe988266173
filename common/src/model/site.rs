//! Sites and alarms.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Resource;

/// dcmanager's management state: whether the region manages the site.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Management {
    #[default]
    Managed,
    Unmanaged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteSpec {
    pub site_id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub management: Management,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Online,
    #[default]
    Offline,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteStatus {
    pub availability: Availability,
    pub last_seen: Option<DateTime<Utc>>,
}

pub type Site = Resource<SiteSpec, SiteStatus>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Minor,
    Major,
    Critical,
}

impl Severity {
    /// The name stores and APIs use (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Minor => "minor",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
}

/// Alarms are raised and cleared by the site; the only intent on one is an
/// operator's acknowledgement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmSpec {
    pub acknowledged: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmStatus {
    /// Stable code, e.g. `host.down`.
    pub code: String,
    /// What it is about, e.g. `host=compute-2`.
    pub entity: String,
    pub severity: Severity,
    pub reason: String,
    pub raised_at: DateTime<Utc>,
    pub cleared_at: Option<DateTime<Utc>>,
}

pub type Alarm = Resource<AlarmSpec, AlarmStatus>;

/// The region's allotment for a site: what the site may hold in total, which
/// it enforces itself, online or not. `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteQuota {
    #[serde(default)]
    pub instances: Option<u64>,
    #[serde(default)]
    pub cores: Option<u64>,
    #[serde(default)]
    pub ram_mb: Option<u64>,
    #[serde(default)]
    pub disk_gb: Option<u64>,
}

impl SiteQuota {
    /// The limits in Nova's order, by Nova's names.
    pub fn limits(&self) -> [(&'static str, Option<u64>); 4] {
        [
            ("instances", self.instances),
            ("cores", self.cores),
            ("ram", self.ram_mb),
            ("disk", self.disk_gb),
        ]
    }

    pub fn validate(&self) -> Result<(), crate::FieldError> {
        const MAX: u64 = 1 << 40;
        for (field, v) in [
            ("quota.instances", self.instances),
            ("quota.cores", self.cores),
            ("quota.ram_mb", self.ram_mb),
            ("quota.disk_gb", self.disk_gb),
        ] {
            if let Some(v) = v {
                crate::validate::range(field, v, 0, MAX)?;
            }
        }
        if self.limits().iter().all(|(_, v)| v.is_none()) {
            return Err(crate::FieldError::new(
                "quota",
                "{}",
                "must set at least one of instances, cores, ram_mb, disk_gb",
            ));
        }
        Ok(())
    }
}

/// A site's room as it publishes it in its status document, for the
/// region's placement and fleet view. Usage is of claims (placed servers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteCapacity {
    pub total: super::Usage,
    pub used: super::Usage,
    /// Free room on each host: a server fits the site if it fits one host.
    pub host_free: Vec<super::Usage>,
    pub instances: u64,
}

impl SiteCapacity {
    /// Whether a server needing `need` fits on one of the site's hosts.
    pub fn fits(&self, need: &super::Usage) -> bool {
        self.host_free
            .iter()
            .any(|f| f.vcpus >= need.vcpus && f.ram_mb >= need.ram_mb && f.disk_gb >= need.disk_gb)
    }
}
