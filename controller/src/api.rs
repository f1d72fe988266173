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
//!   alarms), `POST /sites/{id}/manage`, `POST /sites/{id}/unmanage`,
//!   `POST /sites/{id}/revoke` (ends its enrollment: its certificate is
//!   refused, its connection closed, until a new join token enrolls it)
//! - `GET|POST /sites/{id}/servers`, `DELETE /sites/{id}/servers/{server}`
//! - `POST /flavors` `{"flavor", "sites" | "labels"}`
//! - `PUT /quotas` `{"quota" (null lifts it), "sites" | "labels"}`
//! - `POST /placements` `{"server", "count", "labels"}`
//! - `GET /alarms[?history=true]`
//! - `GET /sites/{id}/backups[?volume=ID]`: the volume backups kept for
//!   the site, newest first; `GET /sites/{id}/backups/{backup}/file`
//!   (admin token only): one backup's qcow2 file, streamed, to restore
//!   from.
//!
//! Errors are `{"error": {"code", "message"}}`; bad input names the field
//! and the rule and changes nothing.
//!
//! The OpenStack face (Keystone, and Nova and Glance per site as a region)
//! is in [`crate::openstack`].

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
    /// The read-only token: GETs only (dashboard viewers).
    pub viewer_token: Arc<String>,
    /// The port sites reach the QUIC endpoint at (told to installers).
    pub quic_port: u16,
    /// The key the region signs Keystone tokens with (see `openstack`).
    pub signer: Arc<roost_sync::token::Signer>,
    /// `api.public_url`: what the catalog and links name (else the
    /// request's Host).
    pub public_url: Option<Arc<str>>,
}

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Viewer,
}

/// How often the event stream sends the overview.
const EVENT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

pub fn router(state: ApiState) -> Router {
    let operator = Router::new()
        .route("/whoami", get(whoami))
        .route("/overview", get(overview))
        .route("/events", get(events))
        .route("/sites", get(sites))
        .route("/sites/{id}/tokens", post(create_token))
        .route("/alarms/{id}/acknowledge", post(acknowledge))
        .route("/sites/{id}", get(site))
        .route("/sites/{id}/manage", post(manage))
        .route("/sites/{id}/unmanage", post(unmanage))
        .route("/sites/{id}/revoke", post(revoke))
        .route("/sites/{id}/servers", get(site_servers).post(create_server))
        .route("/sites/{id}/servers/{server}", delete(delete_server))
        .route("/sites/{id}/backups", get(site_backups))
        .route("/sites/{id}/backups/{backup}/file", get(backup_file))
        .route("/flavors", post(publish_flavor))
        .route("/quotas", put(set_quota))
        .route("/placements", post(place))
        .route("/alarms", get(alarms))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .route("/v1/enroll", post(enroll))
        .route("/v1/region", get(region_info))
        .route("/v1/enroll/check", post(check_token))
        .nest("/roost/v1", operator)
        .merge(crate::openstack::routes())
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
    mut req: Request,
    next: Next,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-auth-token").and_then(|v| v.to_str().ok()));
    let role = given.and_then(|t| {
        let t = t.trim().as_bytes();
        if same(t, s.admin_token.as_bytes()) {
            Some(Role::Admin)
        } else if same(t, s.viewer_token.as_bytes()) {
            Some(Role::Viewer)
        } else {
            None
        }
    });
    match role {
        Some(Role::Viewer) if req.method() != axum::http::Method::GET => error(
            StatusCode::FORBIDDEN,
            "this token is read-only (viewer.token); changes need the admin token",
        )
        .into_response(),
        Some(role) => {
            req.extensions_mut().insert(role);
            next.run(req).await
        }
        None if given.is_some() => error(
            StatusCode::UNAUTHORIZED,
            "the token is wrong; the admin token is in admin.token in the controller's data dir (viewer.token for read-only)",
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

/// What an installer needs before it enrolls: the region's name (its
/// certificate says `<name>.region.roost`) and the QUIC port. Public, as
/// the region's certificate already tells anyone who connects.
async fn region_info(State(s): State<ApiState>) -> Json<serde_json::Value> {
    Json(json!({"region": s.region.store.region(), "quic_port": s.quic_port}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenCheck {
    token: String,
}

/// Says whether a join token would enroll its site now, spending nothing:
/// an installer asks before it writes anything to the node.
async fn check_token(
    State(s): State<ApiState>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: TokenCheck = parse(&body)?;
    let store = s.region.store.clone();
    let r = tokio::task::spawn_blocking(move || {
        token_site(&*store, &req.token)?;
        store.check_token(&req.token)
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match r {
        Ok(site) => Ok(Json(json!({"site_id": site, "usable": true})).into_response()),
        Err(e) => Err(token_refusal(e)),
    }
}

/// The site a well-formed token names, if the region knows that site.
fn token_site(store: &dyn crate::fleet::FleetStore, token: &str) -> Result<String, FleetError> {
    let site = roost_sync::pki::join_token::site_of(token)
        .ok_or(FleetError::Token("malformed"))?
        .to_string();
    if store.site(&site)?.is_none() {
        return Err(FleetError::UnknownSite(site));
    }
    Ok(site)
}

/// A token the region will not take, said as the installer shows it.
fn token_refusal(e: FleetError) -> ApiError {
    match e {
        FleetError::Token(why) => error(StatusCode::FORBIDDEN, format!("token: {why}")),
        FleetError::UnknownSite(site) => error(
            StatusCode::FORBIDDEN,
            format!("token: site {site:?} is not a site of this region (add it to the region config's sites and create a new token)"),
        ),
        e => internal(e),
    }
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
        let site = token_site(&*store, &req.token)?;
        let cert = ca.sign_site_request(&site, &req.csr)?;
        let issued = crate::fleet::Issued {
            request_sha256: roost_sync::pki::request_fingerprint(&req.csr),
            cert_sha256: roost_sync::pki::pem_fingerprint(&cert)?,
            cert_pem: cert,
        };
        let redeemed = store.redeem(&req.token, &issued)?;
        Ok::<_, FleetError>((redeemed, ca.cert_pem()))
    })
    .await;
    match result {
        Ok(Ok((redeemed, ca))) => {
            let (site, cert) = (redeemed.site, redeemed.cert_pem);
            if !redeemed.again {
                // The store dropped the old incarnation's status; so does
                // memory.
                s.region.forget(&site);
            }
            tracing::info!(site = %site, again = redeemed.again, "site enrolled");
            Ok(Json(json!({
                "site_id": site,
                "certificate": cert,
                "ca": ca,
                "region": s.region.store.region(),
                "quic_port": s.quic_port,
            }))
            .into_response())
        }
        Ok(Err(e @ (FleetError::UnknownSite(_) | FleetError::Token(_)))) => {
            tracing::warn!(reason = %e, "enrollment refused");
            Err(token_refusal(e))
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

/// `GET /sites[?q&label&availability&sync&sort&order&page&per_page]`:
/// every site without `page`, one page of the filtered table with it.
async fn sites(State(s): State<ApiState>, query: axum::extract::RawQuery) -> Response {
    let q: view::SiteQuery = match query_params(query.0.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let region = s.region.clone();
    let r = blocking(move || {
        let views = region.views().map_err(internal)?;
        view::query(&views, &q).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))
    })
    .await;
    respond(StatusCode::OK, r)
}

/// Parses a query string with the struct's own field names and rules
/// (unknown parameters refused, naming them).
fn query_params<T: serde::de::DeserializeOwned>(q: Option<&str>) -> Result<T, ApiError> {
    let uri = format!("/?{}", q.unwrap_or(""));
    let uri: axum::http::Uri = uri
        .parse()
        .map_err(|_| error(StatusCode::BAD_REQUEST, "query: not a valid query string"))?;
    Query::<T>::try_from_uri(&uri)
        .map(|Query(v)| v)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("query: {}", e.body_text())))
}

async fn whoami(
    State(s): State<ApiState>,
    axum::Extension(role): axum::Extension<Role>,
) -> Response {
    Json(json!({"role": role, "region": s.region.store.region()})).into_response()
}

fn overview_of(region: &Region) -> Result<view::Overview, ApiError> {
    let views = region.views().map_err(internal)?;
    let minute = chrono::Utc::now().timestamp() / 60;
    let bytes = region
        .traffic
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last_hour(minute);
    Ok(view::overview(&views, bytes))
}

async fn overview(State(s): State<ApiState>) -> Response {
    let region = s.region.clone();
    let r = blocking(move || overview_of(&region)).await;
    respond(StatusCode::OK, r.map(|o| json!({ "overview": o })))
}

/// `GET /events`: server-sent events, an `overview` event every 2 s (the
/// dashboard refreshes what it shows on each).
async fn events(State(s): State<ApiState>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let region = s.region.clone();
    let stream = futures_util::stream::unfold((region, true), |(region, first)| async move {
        if !first {
            tokio::time::sleep(EVENT_EVERY).await;
        }
        let r = region.clone();
        let data = match blocking(move || overview_of(&r)).await {
            Ok(o) => json!({ "overview": o }).to_string(),
            Err(e) => json!({ "error": e.message }).to_string(),
        };
        let event = Event::default().event("overview").data(data);
        Some((Ok::<_, std::convert::Infallible>(event), (region, false)))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default = "default_ttl_hours")]
    ttl_hours: i64,
}

fn default_ttl_hours() -> i64 {
    24
}

/// `POST /sites/{id}/tokens {"ttl_hours"}`: a one-time join token, as
/// `roost-controller token create` prints it.
async fn create_token(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        let req: TokenRequest = if body.is_empty() {
            TokenRequest {
                ttl_hours: default_ttl_hours(),
            }
        } else {
            parse(&body)?
        };
        if !(1..=720).contains(&req.ttl_hours) {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!(
                    "ttl_hours: must be between 1 and 720 (got {})",
                    req.ttl_hours
                ),
            ));
        }
        let token = region
            .store
            .create_token(&id, chrono::Duration::hours(req.ttl_hours))
            .map_err(|e| match e {
                FleetError::UnknownSite(_) => error(StatusCode::NOT_FOUND, e.to_string()),
                e => internal(e),
            })?;
        tracing::info!(site = %id, ttl_hours = req.ttl_hours, "join token created through the API");
        Ok(json!({"token": token, "site": id, "ttl_hours": req.ttl_hours}))
    })
    .await;
    respond(StatusCode::CREATED, r)
}

async fn acknowledge(State(s): State<ApiState>, Path(id): Path<i64>) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        if region
            .store
            .acknowledge_alarm(id, chrono::Utc::now())
            .map_err(internal)?
        {
            tracing::info!(alarm = id, "alarm acknowledged");
            Ok(json!({"acknowledged": id}))
        } else {
            Err(error(StatusCode::NOT_FOUND, format!("no alarm {id}")))
        }
    })
    .await;
    respond(StatusCode::OK, r)
}

/// The dashboard: one page, everything inline, nothing fetched from
/// anywhere but this controller.
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
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
        region.invalidate_views();
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

async fn revoke(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        if region.store.site(&id).map_err(internal)?.is_none() {
            return Err(error(
                StatusCode::NOT_FOUND,
                format!("no site {id:?} in this region"),
            ));
        }
        if !region
            .store
            .revoke(&id, chrono::Utc::now())
            .map_err(internal)?
        {
            return Err(error(
                StatusCode::CONFLICT,
                format!("site {id:?} is not enrolled: there is nothing to revoke"),
            ));
        }
        // Its link retires: the live connection, if any, is closed.
        region.forget(&id);
        region.invalidate_views();
        tracing::warn!(site = %id, "site enrollment revoked");
        Ok(json!({"site": {"id": id, "enrolled": false}}))
    })
    .await;
    respond(StatusCode::OK, r)
}

fn backups_of(region: &Region) -> Result<std::sync::Arc<crate::backups::RegionBackups>, ApiError> {
    region.backups.get().cloned().ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this controller keeps no backups",
        )
    })
}

fn known_site(region: &Region, id: &str) -> Result<(), ApiError> {
    region
        .store
        .site(id)
        .map_err(internal)?
        .map(|_| ())
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("no site {id:?} in this region"),
            )
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupQuery {
    volume: Option<String>,
}

async fn site_backups(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<BackupQuery>,
) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        known_site(&region, &id)?;
        let rows = backups_of(&region)?
            .list(&id, q.volume.as_deref())
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(json!({ "backups": rows }))
    })
    .await;
    respond(StatusCode::OK, r)
}

/// Streams a backup's file chunk by chunk (each checked against its name
/// as it is read): a restore holds one chunk in memory, not the volume.
async fn backup_file(
    State(s): State<ApiState>,
    axum::Extension(role): axum::Extension<Role>,
    Path((id, backup)): Path<(String, String)>,
) -> Response {
    if role != Role::Admin {
        return error(
            StatusCode::FORBIDDEN,
            "a backup's data needs the admin token, not the viewer's",
        )
        .into_response();
    }
    let Ok(number) = backup.parse::<i64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("backup: {backup:?} is not a backup id (a number from the site's backup list)"),
        )
        .into_response();
    };
    let region = s.region.clone();
    let found = blocking(move || {
        known_site(&region, &id)?;
        let store = backups_of(&region)?;
        let row = store
            .list(&id, None)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .into_iter()
            .find(|b| b.id == number)
            .ok_or_else(|| {
                error(
                    StatusCode::NOT_FOUND,
                    format!("site {id} has no backup {number}"),
                )
            })?;
        let chunks = store
            .manifest(row.id)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok((store, row, chunks))
    })
    .await;
    let (store, row, chunks) = match found {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        for c in chunks {
            let item = store
                .chunk(&row.site, &c.hash)
                .map(axum::body::Bytes::from)
                .map_err(std::io::Error::other);
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    let body = axum::body::Body::from_stream(stream_of(rx));
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, row.size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.qcow2\"", row.volume),
            ),
            (
                header::HeaderName::from_static("x-roost-sha256"),
                row.sha256,
            ),
        ],
        body,
    )
        .into_response()
}

/// A receiver as a stream (without another dependency).
fn stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
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

/// Requests for a group of sites: the payload beside `sites` or `labels`
/// ([`Target`], whose own rules refuse any other field).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlavorRequest {
    flavor: FlavorCreate,
    #[serde(flatten)]
    target: Target,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaRequest {
    quota: Option<SiteQuota>,
    #[serde(flatten)]
    target: Target,
}

async fn publish_flavor(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        let req: FlavorRequest = parse(&body)?;
        intent::publish_flavor(&region, &req.target, req.flavor).map_err(refused)
    })
    .await;
    respond(StatusCode::CREATED, r.map(|p| json!({ "flavor": p })))
}

async fn set_quota(State(s): State<ApiState>, body: axum::body::Bytes) -> Response {
    let region = s.region.clone();
    let r = blocking(move || {
        let req: QuotaRequest = parse(&body)?;
        intent::set_quota(&region, &req.target, req.quota).map_err(refused)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_requests_take_sites_or_labels_and_refuse_anything_else() {
        let q: QuotaRequest =
            serde_json::from_str(r#"{"quota": {"instances": 3}, "labels": {"kind": "vehicle"}}"#)
                .unwrap();
        assert_eq!(q.target.labels.unwrap()["kind"], "vehicle");
        let f: FlavorRequest = serde_json::from_str(
            r#"{"flavor": {"name": "x", "vcpus": 1, "ram": 1, "disk": 1}, "sites": ["a"]}"#,
        )
        .unwrap();
        assert_eq!(f.target.sites.unwrap(), ["a"]);
        let bad = serde_json::from_str::<QuotaRequest>(r#"{"quota": null, "site": ["a"]}"#)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("unknown field `site`"), "{bad}");
        assert!(serde_json::from_str::<FlavorRequest>(r#"{"sites": ["a"]}"#).is_err());
    }
}
