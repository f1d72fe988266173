//! Quotas as Nova (`os-quota-sets`) and Neutron (`quotas`) show them.
//!
//! A site has one allotment, set by its region for the whole site (see
//! `store::quota`), not one per project: every project is shown the site's
//! limits and the site's usage. What no allotment limits is `-1`
//! (unlimited), as in OpenStack. Quotas are set at the region, so these
//! routes only read.

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::{ApiError, AppState, Caller};

pub(super) fn compute_routes() -> Router<AppState> {
    Router::new()
        .route("/v2.1/os-quota-sets/{project}", get(compute))
        .route("/v2.1/os-quota-sets/{project}/detail", get(compute_detail))
        .route(
            "/v2.1/os-quota-sets/{project}/defaults",
            get(compute_defaults),
        )
}

pub(super) fn network_routes() -> Router<AppState> {
    Router::new()
        .route("/v2.0/quotas/{project}", get(network))
        .route("/v2.0/quotas/{project}/details.json", get(network_detail))
        .route("/v2.0/quotas/{project}/details", get(network_detail))
}

#[derive(Debug, serde::Deserialize)]
struct UsageQuery {
    usage: Option<String>,
}

/// Callers see their own project's quota; admins any project's.
fn check_project(c: &Caller, project: &str) -> Result<(), ApiError> {
    if c.is_cloud_admin() || c.0.project_id == project {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "Policy doesn't allow os_compute_api:os-quota-sets:show to be performed.",
        ))
    }
}

/// Nova's limits with usage: `(name, limit or -1, in use)`.
async fn compute_rows(s: &AppState) -> Result<Vec<(&'static str, i64, u64)>, ApiError> {
    let (quota, instances, used) = s.store.quota_usage().await?;
    let limit = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
    let q = quota.unwrap_or_default();
    let mut rows = vec![
        ("instances", limit(q.instances), instances),
        ("cores", limit(q.cores), used.vcpus),
        ("ram", limit(q.ram_mb), used.ram_mb),
    ];
    // Nova's other limits: nothing here caps them.
    for name in [
        "key_pairs",
        "metadata_items",
        "server_groups",
        "server_group_members",
    ] {
        rows.push((name, -1, 0));
    }
    Ok(rows)
}

async fn compute_set(
    s: &AppState,
    c: &Caller,
    project: &str,
    detail: bool,
) -> Result<Json<Value>, ApiError> {
    check_project(c, project)?;
    let mut set = Map::new();
    set.insert("id".into(), json!(project));
    for (name, limit, in_use) in compute_rows(s).await? {
        let v = if detail {
            json!({"limit": limit, "in_use": in_use, "reserved": 0})
        } else {
            json!(limit)
        };
        set.insert(name.into(), v);
    }
    Ok(Json(json!({ "quota_set": set })))
}

async fn compute(
    State(s): State<AppState>,
    c: Caller,
    Path(project): Path<String>,
    Query(q): Query<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    let detail = q.usage.is_some_and(|u| u.eq_ignore_ascii_case("true"));
    compute_set(&s, &c, &project, detail).await
}

async fn compute_detail(
    State(s): State<AppState>,
    c: Caller,
    Path(project): Path<String>,
) -> Result<Json<Value>, ApiError> {
    compute_set(&s, &c, &project, true).await
}

async fn compute_defaults(
    State(s): State<AppState>,
    c: Caller,
    Path(project): Path<String>,
) -> Result<Json<Value>, ApiError> {
    compute_set(&s, &c, &project, false).await
}

/// Neutron's quotas: nothing limits networking at a site (`-1`); the
/// details show what the project holds.
async fn network_quota(
    s: &AppState,
    c: &Caller,
    project: String,
    detail: bool,
) -> Result<Json<Value>, ApiError> {
    check_project(c, &project)?;
    let quota: Map<String, Value> = s
        .store
        .network_usage(project)
        .await?
        .into_iter()
        .map(|(name, used)| {
            let v = if detail {
                json!({"limit": -1, "used": used, "reserved": 0})
            } else {
                json!(-1)
            };
            (name.to_string(), v)
        })
        .collect();
    Ok(Json(json!({ "quota": quota })))
}

async fn network(
    State(s): State<AppState>,
    c: Caller,
    Path(project): Path<String>,
) -> Result<Json<Value>, ApiError> {
    network_quota(&s, &c, project, false).await
}

async fn network_detail(
    State(s): State<AppState>,
    c: Caller,
    Path(project): Path<String>,
) -> Result<Json<Value>, ApiError> {
    network_quota(&s, &c, project, true).await
}
