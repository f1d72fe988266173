//! The controller's HTTP API (JSON).
//!
//! - `POST /v1/enroll` `{"token", "csr"}`: spends a join token and answers
//!   `{"site_id", "certificate", "ca"}` (PEM): the site's key never leaves
//!   the site. Errors name the field and the rule; a refused enrollment
//!   changes nothing.
//! - `GET /v1/sites`: every site with its management, availability and
//!   last-seen time (dcmanager's separate fields).
//! - `GET /healthz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use roost_sync::pki::Ca;

use crate::fleet::FleetError;
use crate::link::Region;

#[derive(Debug, Clone)]
pub struct ApiState {
    pub region: Arc<Region>,
    pub ca: Arc<Ca>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/v1/enroll", post(enroll))
        .route("/v1/sites", get(sites))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such API path; see /v1/sites") })
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": status.as_u16(), "message": message.into()}})),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    token: String,
    csr: String,
}

async fn enroll(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    let req: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    if !req.csr.contains("BEGIN CERTIFICATE REQUEST") {
        return error(
            StatusCode::BAD_REQUEST,
            "csr: must be a PEM certificate request (BEGIN CERTIFICATE REQUEST)",
        );
    }
    let store = s.region.store.clone();
    let ca = s.ca.clone();
    let result = tokio::task::spawn_blocking(move || {
        // Sign first so a bad request does not spend the token.
        let site = roost_sync::pki::join_token::site_of(&req.token)
            .ok_or(FleetError::Token("malformed"))?
            .to_string();
        let cert = ca.sign_site_request(&site, &req.csr)?;
        let redeemed = store.redeem(&req.token)?;
        Ok::<_, FleetError>((redeemed, cert, ca.cert_pem()))
    })
    .await;
    match result {
        Ok(Ok((site, cert, ca))) => {
            tracing::info!(site = %site, "site enrolled");
            Json(json!({"site_id": site, "certificate": cert, "ca": ca})).into_response()
        }
        Ok(Err(FleetError::Token(why))) => {
            tracing::warn!(reason = why, "enrollment refused");
            error(StatusCode::FORBIDDEN, format!("token: {why}"))
        }
        Ok(Err(FleetError::Pki(e))) => error(StatusCode::BAD_REQUEST, format!("csr: {e}")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn sites(State(s): State<ApiState>) -> Response {
    let store = s.region.store.clone();
    let rows = match tokio::task::spawn_blocking(move || store.sites()).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let sites: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|r| {
            let availability = s.region.availability(&r.id);
            json!({
                "id": r.id, "labels": r.labels, "management": r.management,
                "enrolled": r.enrolled_at.is_some(), "enrolled_at": r.enrolled_at,
                "last_seen": r.last_seen, "availability": availability,
            })
        })
        .collect();
    Json(json!({ "sites": sites })).into_response()
}
