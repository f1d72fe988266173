//! Nova server groups: affinity and anti-affinity policies.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use roost_common::api::ServerGroupCreateBody;

use super::{parse_body, views, ApiError, AppState, Caller};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.1/os-server-groups", get(list).post(create))
        .route("/v2.1/os-server-groups/{id}", get(show).delete(delete))
}

async fn list(
    State(s): State<AppState>,
    caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let groups = s
        .store
        .server_groups(Some(caller.0.project_id.clone()))
        .await?;
    Ok(Json(
        json!({"server_groups": groups.iter().map(views::server_group).collect::<Vec<_>>()}),
    ))
}

async fn show(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let g = s
        .store
        .server_groups(caller.scope())
        .await?
        .into_iter()
        .find(|g| g.id == id)
        .ok_or_else(|| ApiError::not_found(format!("Instance group {id} could not be found.")))?;
    Ok(Json(json!({"server_group": views::server_group(&g)})))
}

async fn create(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let spec = parse_body::<ServerGroupCreateBody>(&body)?
        .server_group
        .into_spec(&caller.0.project_id)?;
    let g = s.store.write(move |w| w.create_server_group(spec)).await?;
    Ok(Json(json!({"server_group": views::server_group(&g)})))
}

async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let scope = caller.scope();
    s.store
        .write(move |w| w.delete_server_group(&id, scope.as_deref()))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
