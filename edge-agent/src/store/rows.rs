//! Resources as rows: `id`, `spec` and `status` as JSON, times as RFC 3339.
//! Tables may add indexed columns of their own (see `schema`).

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::de::DeserializeOwned;
use serde::Serialize;

use roost_common::model::Resource;

use super::StoreError;

pub fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub fn parse_time(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("bad time {s:?}: {e}")))
}

pub fn json<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{e}: {s}")))
}

/// The columns [`from_row`] reads, in order.
pub const COLUMNS: &str = "id, spec, status, created_at, updated_at";

pub fn from_row<S: DeserializeOwned, T: DeserializeOwned>(
    row: &Row<'_>,
) -> Result<Resource<S, T>, StoreError> {
    let (id, spec, status, created, updated): (String, String, String, String, String) = (
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    );
    Ok(Resource {
        id,
        spec: from_json(&spec)?,
        status: from_json(&status)?,
        created_at: parse_time(&created)?,
        updated_at: parse_time(&updated)?,
    })
}

/// One resource by id.
pub fn get<S: DeserializeOwned, T: DeserializeOwned>(
    conn: &Connection,
    table: &str,
    id: &str,
) -> Result<Option<Resource<S, T>>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM {table} WHERE id = ?1"))?;
    let row = stmt.query_row([id], |r| Ok(from_row(r))).optional()?;
    row.transpose()
}

/// Resources matching `filter` (an SQL condition on `params`), oldest first.
pub fn list<S: DeserializeOwned, T: DeserializeOwned>(
    conn: &Connection,
    table: &str,
    filter: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Resource<S, T>>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM {table} WHERE {filter} ORDER BY created_at, id");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params, |r| Ok(from_row(r)))?;
    rows.map(|r| r?).collect()
}

/// Inserts a resource into a table that has only the common columns (and
/// `name` where `name` is given).
/// The ids a query of one text column yields, nulls left out.
pub fn id_set(
    conn: &rusqlite::Connection,
    sql: &str,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let ids = stmt
        .query_map([], |r| r.get::<_, Option<String>>(0))?
        .filter_map(|r| r.transpose())
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

pub fn insert<S: Serialize, T: Serialize>(
    conn: &Connection,
    table: &str,
    r: &Resource<S, T>,
    name: Option<&str>,
) -> Result<(), StoreError> {
    let (spec, status, c, u) = (
        json(&r.spec)?,
        json(&r.status)?,
        time(&r.created_at),
        time(&r.updated_at),
    );
    match name {
        Some(n) => conn.execute(
            &format!("INSERT INTO {table} (id, name, spec, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![r.id, n, spec, status, c, u],
        )?,
        None => conn.execute(
            &format!("INSERT INTO {table} (id, spec, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)"),
            params![r.id, spec, status, c, u],
        )?,
    };
    Ok(())
}
