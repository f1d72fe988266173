//! Nova `os-hypervisors`: each host's capacity and what is claimed on it.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{views, ApiError, AppState, Caller};

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/v2.1/os-hypervisors/detail", get(detail))
}

async fn detail(
    State(s): State<AppState>,
    _caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let hosts = s.store.hypervisors().await?;
    Ok(Json(
        json!({"hypervisors": hosts.iter().map(views::hypervisor).collect::<Vec<_>>()}),
    ))
}
