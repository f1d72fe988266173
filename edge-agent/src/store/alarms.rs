//! The site's own alarms, raised and cleared by the alarm monitor
//! (`crate::alarms`): kept in `alarms` and published in the status
//! document as `site/alarms` (every active alarm and the latest cleared
//! ones), so the region shows them with the site's own times, also after a
//! long cut.

use std::collections::HashSet;

use rusqlite::{params, Connection, OptionalExtension};

use roost_common::model::{AlarmStatus, Severity};

use super::rows::{parse_time, time};
use super::{StoreError, WriteError};
use crate::alarms::{AlarmChange, HOST_DOWN};
use crate::scheduler::HostView;

/// The status entry the alarms are published under (kind `site`).
pub const PUBLISHED: &str = "alarms";
/// Cleared alarms published beside the active ones (the newest).
pub const PUBLISHED_CLEARED: usize = 20;

fn severity(s: &str) -> Result<Severity, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| StoreError::Corrupt(format!("bad alarm severity {s:?}")))
}

/// Alarms, newest first: the active ones (`active`), or the cleared ones,
/// at most `limit`.
pub fn list(conn: &Connection, active: bool, limit: usize) -> Result<Vec<AlarmStatus>, StoreError> {
    let sql = if active {
        "SELECT code, entity, severity, reason, raised_at, cleared_at FROM alarms
         WHERE cleared_at IS NULL ORDER BY id DESC LIMIT ?1"
    } else {
        "SELECT code, entity, severity, reason, raised_at, cleared_at FROM alarms
         WHERE cleared_at IS NOT NULL ORDER BY id DESC LIMIT ?1"
    };
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, Option<String>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (code, entity, sev, reason, raised, cleared) = row?;
        out.push(AlarmStatus {
            code,
            entity,
            severity: severity(&sev)?,
            reason,
            raised_at: parse_time(&raised)?,
            cleared_at: cleared.as_deref().map(parse_time).transpose()?,
        });
    }
    Ok(out)
}

/// Names of the hosts with `host.down` active.
pub(super) fn hosts_down(conn: &Connection) -> Result<HashSet<String>, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT entity FROM alarms WHERE code = ?1 AND cleared_at IS NULL")?;
    let entities = stmt.query_map([HOST_DOWN], |r| r.get::<_, String>(0))?;
    let mut down = HashSet::new();
    for e in entities {
        if let Some(name) = e?.strip_prefix("host=") {
            down.insert(name.to_string());
        }
    }
    Ok(down)
}

/// Sets the scheduler's view of which hosts are down from the alarms.
pub(super) fn mark_down(conn: &Connection, hosts: &mut [HostView]) -> Result<(), StoreError> {
    let down = hosts_down(conn)?;
    for h in hosts {
        h.down = down.contains(&h.spec.name);
    }
    Ok(())
}

impl super::WriteCtx<'_> {
    /// Records what the monitor decided and publishes the result.
    pub fn apply_alarms(&mut self, changes: &[AlarmChange]) -> Result<(), WriteError> {
        for c in changes {
            match c {
                AlarmChange::Raise(a) => {
                    let active: Option<i64> = self
                        .tx
                        .query_row(
                            "SELECT id FROM alarms WHERE code = ?1 AND entity = ?2 AND cleared_at IS NULL",
                            params![a.code, a.entity],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if active.is_none() {
                        self.tx.execute(
                            "INSERT INTO alarms (code, entity, severity, reason, raised_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![a.code, a.entity, a.severity.as_str(), a.reason, time(&a.raised_at)],
                        )?;
                        tracing::warn!(code = %a.code, entity = %a.entity, severity = a.severity.as_str(), reason = %a.reason, "alarm raised");
                    }
                }
                AlarmChange::Clear { code, entity, at } => {
                    let n = self.tx.execute(
                        "UPDATE alarms SET cleared_at = ?3 WHERE code = ?1 AND entity = ?2 AND cleared_at IS NULL",
                        params![code, entity, time(at)],
                    )?;
                    if n > 0 {
                        tracing::info!(code = %code, entity = %entity, "alarm cleared");
                    }
                }
            }
        }
        self.publish_alarms()?;
        if changes.iter().any(|c| c.code() == HOST_DOWN) {
            // Like a claim: a rollback reloads it.
            self.touched = true;
            mark_down(self.tx, self.hosts)?;
        }
        Ok(())
    }

    fn publish_alarms(&mut self) -> Result<(), StoreError> {
        let active = list(self.tx, true, 10_000)?;
        let cleared = list(self.tx, false, PUBLISHED_CLEARED)?;
        self.record_status(
            super::writer::SITE,
            PUBLISHED,
            &serde_json::json!({"active": active, "cleared": cleared}),
        );
        Ok(())
    }
}
