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
