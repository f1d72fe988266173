//! Nova flavors: list, show, create and delete (admin).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use roost_common::api::FlavorCreateBody;

use super::{parse_body, views, ApiError, AppState, Caller};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.1/flavors", get(list).post(create))
        .route("/v2.1/flavors/detail", get(list_detail))
        .route("/v2.1/flavors/{id}", get(show).delete(delete))
}

async fn list(State(s): State<AppState>, _c: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let flavors = s.store.flavors().await?;
    Ok(Json(
        json!({"flavors": flavors.iter().map(|f| views::flavor_ref(&s.base_url, f)).collect::<Vec<_>>()}),
    ))
}

async fn list_detail(
    State(s): State<AppState>,
    _c: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let flavors = s.store.flavors().await?;
    Ok(Json(
        json!({"flavors": flavors.iter().map(|f| views::flavor(&s.base_url, f)).collect::<Vec<_>>()}),
    ))
}

async fn show(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let f = s
        .store
        .flavor(id.clone())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Flavor {id} could not be found.")))?;
    Ok(Json(json!({"flavor": views::flavor(&s.base_url, &f)})))
}

async fn create(
    State(s): State<AppState>,
    _caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let spec = parse_body::<FlavorCreateBody>(&body)?.flavor.into_spec()?;
    let f = s.store.write(move |w| w.create_flavor(spec)).await?;
    tracing::info!(flavor_id = %f.id, name = %f.spec.name, "flavor created");
    Ok((
        StatusCode::OK,
        Json(json!({"flavor": views::flavor(&s.base_url, &f)})),
    )
        .into_response())
}

async fn delete(
    State(s): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let flavor_id = id.clone();
    s.store.write(move |w| w.delete_flavor(&flavor_id)).await?;
    tracing::info!(flavor_id = %id, "flavor deleted");
    Ok(StatusCode::ACCEPTED)
}
