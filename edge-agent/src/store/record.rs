//! Writing spec and status into the site's documents, beside the rows.
//!
//! Only fields that changed are written to intent: writing an unchanged
//! field would make a needless conflict with a region that changed it.

use serde::Serialize;

use super::{StoreError, WriteCtx, WriteError};

fn doc_err(e: roost_sync::DocError) -> WriteError {
    WriteError::Store(StoreError::Corrupt(format!("site document: {e}")))
}

fn fields<T: Serialize>(v: &T) -> Result<serde_json::Map<String, serde_json::Value>, WriteError> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(WriteError::Store(StoreError::Corrupt(
            "a spec is not a JSON object".into(),
        ))),
    }
}

impl WriteCtx<'_> {
    /// Writes each field of `new` that differs from `old` into intent.
    pub fn record_intent<T: Serialize>(
        &mut self,
        kind: &str,
        id: &str,
        old: Option<&T>,
        new: &T,
    ) -> Result<(), WriteError> {
        let old = old.map(fields).transpose()?.unwrap_or_default();
        let now = self.now_ms();
        for (field, value) in fields(new)? {
            if old.get(&field) != Some(&value) {
                self.docs
                    .intent
                    .set(kind, id, &field, value, now)
                    .map_err(doc_err)?;
            }
        }
        Ok(())
    }

    /// Marks a resource deleted in intent.
    pub fn record_deleted(&mut self, kind: &str, id: &str) -> Result<(), WriteError> {
        let now = self.now_ms();
        self.docs.intent.delete(kind, id, now).map_err(doc_err)
    }

    /// Writes a resource's status.
    pub fn record_status<T: Serialize>(
        &mut self,
        kind: &str,
        id: &str,
        status: &T,
    ) -> Result<(), WriteError> {
        let v = serde_json::to_value(status)
            .map_err(|e| WriteError::Store(StoreError::Corrupt(e.to_string())))?;
        self.docs.status.set(kind, id, &v).map_err(doc_err)
    }

    /// Removes a resource's status (it is gone).
    pub fn forget_status(&mut self, kind: &str, id: &str) -> Result<(), WriteError> {
        if self.docs.status.get(kind, id).map_err(doc_err)?.is_some() {
            self.docs.status.remove(kind, id).map_err(doc_err)?;
        }
        Ok(())
    }
}
