//! The controller's HTTP API (JSON).
//!
//! Open to anyone who can reach it:
//! - `POST /v1/enroll` `{"token", "csr"}`: spends a join token and answers
//!   `{"site_id", "certificate", "ca"}` (PEM): the site's key never leaves
//!   the site. A refused enrollment changes nothing.
//! - `GET /healthz`, `GET /metrics` (Prometheus).
//!
//! The fleet operator's API, under `/roost/v1/`, needs the region's admin
//! token (`Authorization: Bearer TOKEN` or `X-Auth-Token: TOKEN`; the token
//! is in `admin.token` in the data dir):
//! - `GET /sites`, `GET /sites/{id}` (with availability history and
//!   alarms), `POST /sites/{id}/manage`, `POST /sites/{id}/unmanage`
//! - `GET|POST /sites/{id}/servers`, `DELETE /sites/{id}/servers/{server}`
//! - `POST /flavors` `{"flavor", "sites" | "labels"}`
//! - `PUT /quotas` `{"quota" (null lifts it), "sites" | "labels"}`
//! - `POST /placements` `{"server", "count", "labels"}`
//! - `GET /alarms[?history=true]`
//!
//! Errors are `{"error": {"code", "message"}}`; bad input names the field
//! and the rule and changes nothing.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use roost_common::api::{FlavorCreate, ServerCreateBody};
use roost_common::model::SiteQuota;
use roost_sync::pki::Ca;

use crate::fleet::FleetError;
use crate::intent::{self, PlacementRequest, Refused, Target};
use crate::link::Region;
use crate::metrics::METRICS;
use crate::view::{self, AlarmCounts};

#[derive(Debug, Clone)]
pub struct ApiState {
    pub region: Arc<Region>,
    pub ca: Arc<Ca>,
    /// The fleet operator's bearer token.
    pub admin_token: Arc<String>,
}

pub fn router(state: ApiState) -> Router {
    let operator = Router::new()
        .route("/sites", get(sites))
        .route("/sites/{id}", get(site))
        .route("/sites/{id}/manage", post(manage))
        .route("/sites/{id}/unmanage", post(unmanage))
        .route("/sites/{id}/servers", get(site_servers).post(create_server))
        .route("/sites/{id}/servers/{server}", delete(delete_server))
        .route("/flavors", post(publish_flavor))
        .route("/quotas", put(set_quota))
        .route("/placements", post(place))
        .route("/alarms", get(alarms))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .route("/v1/enroll", post(enroll))
        .nest("/roost/v1", operator)
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such API path; the fleet API is under /roost/v1/ (e.g. /roost/v1/sites)",
            )
        })
        .with_state(state)
}

/// A refusal: the status and a message naming what was wrong.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.status.as_u16(), "message": self.message}})),
        )
            .into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(
    State(s): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-auth-token").and_then(|v| v.to_str().ok()));
    match given {
        Some(t) if same(t.trim().as_bytes(), s.admin_token.as_bytes()) => next.run(req).await,
        Some(_) => error(
            StatusCode::UNAUTHORIZED,
            "the admin token is wrong; it is in admin.token in the controller's data dir",
        )
        .into_response(),
        None => error(
            StatusCode::UNAUTHORIZED,
            "send the region's admin token as 'Authorization: Bearer TOKEN' (it is in admin.token in the controller's data dir)",
        )
        .into_response(),
    }
}

fn refused(e: Refused) -> ApiError {
    match e {
        Refused::Invalid(f) => error(StatusCode::BAD_REQUEST, f.to_string()),
        Refused::NotFound(m) => error(StatusCode::NOT_FOUND, m),
        Refused::Conflict(m) => error(StatusCode::CONFLICT, m),
        Refused::Store(e) => {
            tracing::error!(error = %e, "the region's intent could not be stored");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// Runs blocking work (the fleet store, the documents) off the async
/// workers, mapping a panic to a 500.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

fn internal(e: FleetError) -> ApiError {
    error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| error(StatusCode::BAD_REQUEST, format!("body: {e}")))
}

fn respond<T: serde::Serialize>(status: StatusCode, r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => (status, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollRequest {
    token: String,
    csr: String,
}

async fn enroll(State(s): State<ApiState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let req: EnrollRequest = parse(&body)?;
    if !req.csr.contains("BEGIN CERTIFICATE REQUEST") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "csr: must be a PEM certificate request (BEGIN CERTIFICATE REQUEST)",
        ));
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
            Ok(Json(json!({"site_id": site, "certificate": cert, "ca": ca})).into_response())
        }
        Ok(Err(FleetError::Token(why))) => {
            tracing::warn!(reason = why, "enrollment refused");
            Err(error(StatusCode::FORBIDDEN, format!("token: {why}")))
        }
        Ok(Err(FleetError::Pki(e))) => Err(error(StatusCode::BAD_REQUEST, format!("csr: {e}"))),
        Ok(Err(e)) => Err(internal(e)),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn metrics(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let region = s.region.clone();
    let views = blocking(move || region.views().map_err(internal)).await?;
    view::export(&views);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        METRICS.render(),
    )
        .into_response())
}

async fn sites(State(s): State<ApiState>) -> Response {
    let region = s.region.clone();
    let r = blocking(move || region.views().map_err(internal)).await;
    respond(StatusCode::OK, r.map(|v| json!({ "sites": v })))
}

async fn site(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        let row = region.store.site(&id).map_err(internal)?.ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("no site {id:?} in this region"),
            )
        })?;
        let alarms = region.store.alarms(Some(&id), true).map_err(internal)?;
        let active = AlarmCounts::of(alarms.iter().filter(|a| a.cleared_at.is_none()));
        let view = region.view(&row, active).map_err(internal)?;
        let history = region
            .store
            .availability_history(&id, 20)
            .map_err(internal)?;
        let mut v = serde_json::to_value(view).unwrap_or_default();
        v["availability_history"] = json!(history);
        v["alarm_list"] = json!(alarms.iter().take(20).collect::<Vec<_>>());
        v["enrolled_at"] = json!(row.enrolled_at);
        Ok(json!({ "site": v }))
    })
    .await;
    respond(StatusCode::OK, r)
}

async fn set_management(s: ApiState, id: String, management: &'static str) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        if !region
            .store
            .set_management(&id, management)
            .map_err(internal)?
        {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!("no site {id:?} in this region"),
            ));
        }
        tracing::info!(site = %id, management, "site management changed");
        let row = region
            .store
            .site(&id)
            .map_err(internal)?
            .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no site {id:?}")))?;
        let alarms = region.store.alarms(Some(&id), false).map_err(internal)?;
        let view = region
            .view(&row, AlarmCounts::of(&alarms))
            .map_err(internal)?;
        Ok(json!({ "site": view }))
    })
    .await;
    respond(StatusCode::OK, r)
}

async fn manage(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    set_management(s, id, "managed").await
}

async fn unmanage(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    set_management(s, id, "unmanaged").await
}

async fn site_servers(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let region = s.region.clone();
    let r = blocking(move || intent::servers(&region, &id).map_err(refused)).await;
    respond(StatusCode::OK, r.map(|v| json!({ "servers": v })))
}

async fn create_server(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        let req: ServerCreateBody = parse(&body)?;
        if req.scheduler_hints.is_some() || req.scheduler_hints_legacy.is_some() {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "os:scheduler_hints: server groups are local to a site; leave them out of region requests",
            ));
        }
        intent::create_server(&region, &id, &req.server).map_err(refused)
    })
    .await;
    respond(StatusCode::ACCEPTED, r.map(|p| json!({ "server": p })))
}

async fn delete_server(
    State(s): State<ApiState>,
    Path((id, server)): Path<(String, String)>,
) -> Response {
    let region = s.region.clone();
    let r = blocking(move || intent::delete_server(&region, &id, &server).map_err(refused)).await;
    match r {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlavorRequest {
    flavor: FlavorCreate,
    #[serde(default)]
    sites: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

async fn publish_flavor(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        let req: FlavorRequest = parse(&body)?;
        let target = Target {
            sites: req.sites,
            labels: req.labels,
        };
        intent::publish_flavor(&region, &target, req.flavor).map_err(refused)
    })
    .await;
    respond(StatusCode::CREATED, r.map(|p| json!({ "flavor": p })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaRequest {
    quota: Option<SiteQuota>,
    #[serde(default)]
    sites: Option<Vec<String>>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

async fn set_quota(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        let req: QuotaRequest = parse(&body)?;
        let target = Target {
            sites: req.sites,
            labels: req.labels,
        };
        intent::set_quota(&region, &target, req.quota).map_err(refused)
    })
    .await;
    respond(StatusCode::OK, r.map(|p| json!({ "quota": p })))
}

async fn place(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        let req: PlacementRequest = parse(&body)?;
        intent::place(&region, &req).map_err(refused)
    })
    .await;
    respond(StatusCode::ACCEPTED, r.map(|p| json!({ "servers": p })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlarmQuery {
    #[serde(default)]
    history: bool,
    #[serde(default)]
    site: Option<String>,
}

async fn alarms(State(s): State<ApiState>, Query(q): Query<AlarmQuery>) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        region
            .store
            .alarms(q.site.as_deref(), q.history)
            .map_err(internal)
    })
    .await;
    respond(StatusCode::OK, r.map(|a| json!({ "alarms": a })))
}
