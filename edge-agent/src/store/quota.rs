//! The region's allotment for this site ([`SiteQuota`]): kept in `meta`
//! under `quota`, set only from the region's intent, and checked by every
//! server create (local API or region) in the writer, so it holds while the
//! site is offline and concurrent creates cannot overrun it.
//!
//! Usage counts claims: servers placed on a host (a server in ERROR that
//! never found a host holds nothing), as the scheduler's usage does.

use rusqlite::OptionalExtension;

pub use roost_common::model::SiteQuota as Quota;
use roost_common::model::Usage;

use super::{StoreError, WriteCtx, WriteError};

const KEY: &str = "quota";

/// The allotment in force, if the region set one.
pub(super) fn read(conn: &rusqlite::Connection) -> Result<Option<Quota>, WriteError> {
    let text: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [KEY], |r| r.get(0))
        .optional()?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("quota: {e}")).into())
    })
    .transpose()
}

/// Servers placed and resources claimed at this site, from the claims.
pub(super) fn claimed(conn: &rusqlite::Connection) -> Result<(u64, Usage), WriteError> {
    Ok(conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(vcpus), 0), COALESCE(SUM(ram_mb), 0), COALESCE(SUM(disk_gb), 0)
         FROM allocations",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)?.max(0) as u64,
                Usage {
                    vcpus: r.get(1)?,
                    ram_mb: r.get(2)?,
                    disk_gb: r.get(3)?,
                },
            ))
        },
    )?)
}

impl WriteCtx<'_> {
    /// The allotment in force, if the region set one.
    pub fn quota(&self) -> Result<Option<Quota>, WriteError> {
        read(self.tx)
    }

    /// Sets (or with `None` lifts) the allotment.
    pub fn set_quota(&mut self, quota: Option<&Quota>) -> Result<(), WriteError> {
        match quota {
            Some(q) => {
                let text = serde_json::to_string(q)
                    .map_err(|e| StoreError::Corrupt(format!("quota: {e}")))?;
                super::inventory::set_meta(self.tx, KEY, &text)?;
            }
            None => {
                self.tx.execute("DELETE FROM meta WHERE key = ?1", [KEY])?;
            }
        }
        Ok(())
    }

    /// Instances placed and resources claimed at this site now.
    pub fn usage_total(&self) -> Result<(u64, Usage), WriteError> {
        let instances: i64 = self
            .tx
            .query_row("SELECT COUNT(*) FROM allocations", [], |r| r.get(0))?;
        let mut used = Usage::default();
        for h in self.hosts() {
            used.add(&h.used);
        }
        Ok((instances.max(0) as u64, used))
    }

    /// Refuses a server needing `need` if it would take the site past its
    /// allotment, with Nova's message.
    pub(super) fn check_quota(&self, need: &Usage) -> Result<(), WriteError> {
        let Some(quota) = self.quota()? else {
            return Ok(());
        };
        let (instances, used) = self.usage_total()?;
        let wanted = [
            (1, instances),
            (need.vcpus, used.vcpus),
            (need.ram_mb, used.ram_mb),
            (need.disk_gb, used.disk_gb),
        ];
        for ((name, limit), (req, used)) in quota.limits().into_iter().zip(wanted) {
            if let Some(limit) = limit {
                if used + req > limit {
                    return Err(WriteError::Quota(format!(
                        "Quota exceeded for {name}: Requested {req}, but already used {used} of {limit} {name} \
                         (this site's allotment from its region; the fleet operator can raise it)"
                    )));
                }
            }
        }
        Ok(())
    }
}
