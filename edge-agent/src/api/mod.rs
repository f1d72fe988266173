//! The site's local API: OpenStack shapes over axum.
//!
//! Handlers are thin: parse and validate the request (through the same
//! `validate` functions the config uses), hand a job to the store, render the
//! result. Every write returns only after the store committed it. Files are
//! one per service: [`identity`] (Keystone tokens), [`accounts`]
//! (Keystone projects, users, roles), [`servers`], [`flavors`],
//! [`server_groups`], [`hypervisors`] (Nova), [`network`] (Neutron),
//! [`images`] (Glance), [`volumes`] (Cinder, and Nova's volume
//! attachments); [`views`] renders resources as Nova does.

mod accounts;
mod error;
mod flavors;
mod hypervisors;
mod identity;
mod images;
mod network;
mod quotas;
mod server_groups;
mod servers;
mod views;
mod volumes;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::de::DeserializeOwned;

pub use error::ApiError;
pub use images::sweep as sweep_images;

use crate::compute::reconciler::WorkQueue;
use crate::identity::{Authority, Claims};
use crate::metrics::METRICS;
use crate::store::Store;
use roost_common::policy::{Creds, Policy, Target};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub auth: Arc<Authority>,
    /// Servers the compute reconciler should look at after a write.
    pub queue: Arc<WorkQueue>,
    /// Public base URL of this API, for links and the catalog.
    pub base_url: String,
    pub compute_driver: &'static str,
    /// Told after a network write, so the host's network reconciler runs now.
    pub net_changed: Arc<tokio::sync::Notify>,
    /// The agent's data dir: uploaded images live in its `images/`.
    pub data_dir: std::path::PathBuf,
    /// Where volumes' files go (snapshots in its `snapshots/`).
    pub volumes_dir: std::path::PathBuf,
    /// Told after a volume or snapshot write, so the storage worker runs now.
    pub storage_wake: Arc<tokio::sync::Notify>,
    /// Told when a cold image is wanted again, so the fetcher brings it.
    pub images_wake: Arc<tokio::sync::Notify>,
    /// Told when a cold snapshot is wanted again, so the backup worker
    /// brings it.
    pub backup_wake: Arc<tokio::sync::Notify>,
    /// The hot tier's directory (`storage.tiers.hot.dir`), if any: image
    /// files this API may remove live there too.
    pub hot_dir: Option<std::path::PathBuf>,
    /// Who may do what (`api.policy_file` over the defaults).
    pub policy: Arc<Policy>,
    /// Whether the site has a region to back `central-replicated`
    /// volumes up to.
    pub has_region: bool,
}

/// Builds the router.
pub fn router(state: AppState) -> Router {
    let compute = Router::new()
        .merge(servers::routes())
        .merge(flavors::routes())
        .merge(server_groups::routes())
        .merge(hypervisors::routes())
        .merge(quotas::compute_routes())
        .merge(volumes::attachment_routes())
        .route("/v2.1", get(nova_version))
        .route("/v2.1/", get(nova_version))
        .layer(axum::middleware::from_fn(nova_microversion));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(|| async { METRICS.render() }))
        .route("/roost/v1/conflicts", get(conflicts))
        .route("/roost/v1/alarms", get(alarms))
        .merge(identity::routes())
        .merge(accounts::routes())
        .nest("/compute", compute)
        .nest(
            "/network",
            network::routes().merge(quotas::network_routes()),
        )
        .nest("/image", images::routes())
        .nest("/volume", volumes::routes())
        .route("/image/", get(images::versions))
        // Version discovery asks with a trailing slash.
        .route("/network/", get(network::versions))
        .fallback(|| async {
            ApiError::not_found(
                "No such API path; see /identity/v3, /compute/v2.1, /image/v2, /network/v2.0 and /volume/v3",
            )
        })
        .layer(axum::middleware::from_fn(record_metrics))
        .with_state(state)
}

/// `GET /roost/v1/conflicts`: the conflict journal, oldest first: every
/// intent value that lost to a concurrent edit, with the winner, both
/// authors and both times.
async fn conflicts(
    State(s): State<AppState>,
    _caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let entries = s.store.conflicts().await?;
    Ok(Json(serde_json::json!({ "conflicts": entries })))
}

/// `GET /roost/v1/alarms`: the site's own alarms, raised and cleared here
/// online or not: every active one and the latest cleared, newest first.
async fn alarms(
    State(s): State<AppState>,
    _caller: Caller,
) -> Result<Json<serde_json::Value>, ApiError> {
    let active = s.store.alarms(true).await?;
    let cleared = s.store.alarms(false).await?;
    Ok(Json(
        serde_json::json!({ "alarms": active, "cleared": cleared }),
    ))
}

async fn healthz(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    // A read proves the store answers; the writer thread is checked apart,
    // as it stops on faults it cannot repair.
    if !s.store.writer_alive() {
        return Err(ApiError::unavailable(
            "the store's writer has stopped; see the agent's log and restart it",
        ));
    }
    s.store
        .read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await?;
    Ok(Json(serde_json::json!({
        "status": "ok",
        "site_id": s.auth.identity().site_id,
        "compute_driver": s.compute_driver,
    })))
}

async fn record_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status();
    METRICS
        .http_request_seconds
        .with_label_values(&[&route])
        .observe(start.elapsed().as_secs_f64());
    METRICS
        .http_requests
        .with_label_values(&[&route, method.as_str(), status.as_str()])
        .inc();
    resp
}

/// The highest compute microversion served: 2.1, Nova's base. Shapes of
/// later microversions are not built, so asking for one is refused.
pub const MAX_COMPUTE_MICROVERSION: (u32, u32) = (2, 1);

/// What microversion a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// No header: the minimum.
    Default,
    Latest,
    Version(u32, u32),
    /// Not `major.minor`; the text as sent.
    Invalid(String),
}

/// Reads `OpenStack-API-Version: <service> X.Y` (else the legacy header
/// given, as Nova's `X-OpenStack-Nova-API-Version: X.Y`).
pub fn asked_microversion(
    headers: &axum::http::HeaderMap,
    service: &str,
    legacy: Option<&str>,
) -> Asked {
    let modern = headers
        .get_all("OpenStack-API-Version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|v| {
            let mut parts = v.split_whitespace();
            (parts.next()? == service).then(|| parts.next().unwrap_or("").to_string())
        });
    let asked = modern.or_else(|| {
        legacy
            .and_then(|h| headers.get(h))
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    });
    match asked.as_deref() {
        None => Asked::Default,
        Some(v) if v.eq_ignore_ascii_case("latest") => Asked::Latest,
        Some(v) => v
            .split_once('.')
            .and_then(|(a, b)| Some(Asked::Version(a.parse().ok()?, b.parse().ok()?)))
            .unwrap_or_else(|| Asked::Invalid(v.to_string())),
    }
}

/// Nova's microversion handling: a version outside 2.1..=max is refused
/// with 406, a malformed one with 400, and the answer says which version
/// it is in.
async fn nova_microversion(req: Request, next: Next) -> Response {
    let (min, max) = ((2, 1), MAX_COMPUTE_MICROVERSION);
    let version = match asked_microversion(req.headers(), "compute", Some("X-OpenStack-Nova-API-Version")) {
        Asked::Default => min,
        Asked::Latest => max,
        Asked::Version(a, b) if (min..=max).contains(&(a, b)) => (a, b),
        Asked::Version(a, b) => {
            return ApiError::new_status(
                StatusCode::NOT_ACCEPTABLE,
                format!(
                    "Version {a}.{b} is not supported by the API. Minimum is {}.{} and maximum is {}.{}.",
                    min.0, min.1, max.0, max.1
                ),
            )
            .into_response()
        }
        Asked::Invalid(v) => {
            return ApiError::bad_request(format!(
                "API Version String {v} is of invalid format. Must be of format MajorNum.MinorNum."
            ))
            .into_response()
        }
    };
    let mut resp = next.run(req).await;
    let v = format!("{}.{}", version.0, version.1);
    let h = resp.headers_mut();
    if let Ok(modern) = HeaderValue::from_str(&format!("compute {v}")) {
        h.insert("OpenStack-API-Version", modern);
    }
    if let Ok(legacy) = HeaderValue::from_str(&v) {
        h.insert("X-OpenStack-Nova-API-Version", legacy);
    }
    h.insert(
        "Vary",
        HeaderValue::from_static("OpenStack-API-Version, X-OpenStack-Nova-API-Version"),
    );
    resp
}

/// `GET /compute/v2.1`: Nova's version document.
async fn nova_version(State(s): State<AppState>) -> Json<serde_json::Value> {
    let (max, href) = (
        MAX_COMPUTE_MICROVERSION,
        format!("{}/compute/v2.1/", s.base_url),
    );
    Json(serde_json::json!({"version": {
        "id": "v2.1", "status": "CURRENT",
        "version": format!("{}.{}", max.0, max.1), "min_version": "2.1",
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": href}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}],
    }}))
}

/// The caller, from a valid `X-Auth-Token` that the policy lets make
/// this call.
#[derive(Debug, Clone)]
pub struct Caller(pub Claims, Arc<Policy>);

impl Caller {
    /// The project a list or lookup is limited to: none for those the
    /// policy lets act across projects (`context_is_admin`).
    pub fn scope(&self) -> Option<String> {
        if self.is_cloud_admin() {
            None
        } else {
            Some(self.0.project_id.clone())
        }
    }

    /// Whether the policy lets the caller act across every project.
    pub fn is_cloud_admin(&self) -> bool {
        self.allow("context_is_admin").is_ok()
    }

    /// Checks a named action (one of `policy::SPECIAL`) against the
    /// policy, for the caller's own project.
    pub fn allow(&self, action: &str) -> Result<(), ApiError> {
        allow(&self.1, action, &self.0, &self.0.project_id)
    }
}

/// The policy's verdict as Nova words a refusal.
fn allow(policy: &Policy, action: &str, claims: &Claims, target: &str) -> Result<(), ApiError> {
    let creds = Creds {
        roles: &claims.roles,
        user_id: &claims.user_id,
        user_name: &claims.user_name,
        project_id: &claims.project_id,
        project_name: &claims.project_name,
    };
    if policy.allows(action, &creds, &Target { project_id: target }) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "Policy doesn't allow {action} to be performed (the token's roles: {}).",
            claims.roles.join(", ")
        )))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get("X-Auth-Token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::unauthorized("The request you have made requires authentication: send an X-Auth-Token header (get one from POST /identity/v3/auth/tokens)."))?;
        let claims = authenticate(state, token).await?;
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or("", |m| m.as_str())
            .to_string();
        let keystone = |e: ApiError| {
            if route.starts_with("/identity") {
                e.keystone()
            } else {
                e
            }
        };
        let reads = matches!(
            parts.method,
            axum::http::Method::GET | axum::http::Method::HEAD
        );
        if !reads && claims.region_viewer() {
            return Err(keystone(ApiError::forbidden(format!(
                "Policy doesn't allow {} {} to be performed: the region's viewer only looks",
                parts.method,
                parts.uri.path()
            ))));
        }
        let action = roost_common::policy::action_for(parts.method.as_str(), &route);
        // The project the path names (`{project}`), else the caller's own.
        let params = RawPathParams::from_request_parts(parts, state).await.ok();
        let target = params
            .as_ref()
            .and_then(|p| {
                p.iter()
                    .find(|(k, _)| *k == "project")
                    .map(|(_, v)| v.to_string())
            })
            .unwrap_or_else(|| claims.project_id.clone());
        allow(&state.policy, &action, &claims, &target)
            .inspect_err(|_| {
                tracing::info!(%action, user = %claims.user_name, project = %claims.project_name, "refused by policy");
            })
            .map_err(keystone)?;
        Ok(Caller(claims, state.policy.clone()))
    }
}

/// The project region tokens of the fleet's operators name.
pub const REGION_ADMIN_PROJECT: &str = "region";

/// Checks a token: this site's own (`rst1.`), or one its region signed
/// (`rgt1.`), against the region's keys and revocations as last synced.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Claims, ApiError> {
    let token = token.trim();
    if roost_sync::token::is_region_token(token) {
        let trust = state.store.region_trust().await?;
        return roost_sync::token::verify(&trust, token, Utc::now().timestamp())
            .map(|c| {
                let mut claims = Claims::from_region(c);
                // The region's admin project is, at each site, the site's
                // admin project (which owns what the region asked for).
                if claims.project_id == REGION_ADMIN_PROJECT {
                    claims.project_id = state.auth.identity().admin_project_id.clone();
                }
                claims
            })
            .map_err(|e| {
                ApiError::unauthorized(format!(
                    "The request you have made requires authentication: {e}."
                ))
            });
    }
    state
        .auth
        .verify(token, Utc::now())
        .map_err(|e| ApiError::unauthorized(e.to_string()))
}

/// Parses a JSON body; errors name the field path (`server.flavorRef`).
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::bad_request(
            "invalid JSON body: the request body must be a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::bad_request(format!("{path}: {inner}"))
        }
    })
}

/// 202 Accepted with no body, as Nova answers actions.
pub fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use roost_common::api::{AuthBody, FlavorCreateBody, ServerAction, ServerCreateBody};

    proptest::proptest! {
        /// Untrusted bytes never panic the body parser; they parse or get a
        /// 400 that says what is wrong.
        #[test]
        fn any_bytes_parse_or_get_a_400(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            for r in [
                parse_body::<ServerCreateBody>(&body).err(),
                parse_body::<FlavorCreateBody>(&body).err(),
                parse_body::<AuthBody>(&body).err(),
                parse_body::<ServerAction>(&body).err(),
            ].into_iter().flatten() {
                proptest::prop_assert_eq!(r.status, StatusCode::BAD_REQUEST);
                proptest::prop_assert!(!r.message.is_empty());
            }
        }

        /// JSON-shaped garbage too.
        #[test]
        fn json_like_bodies_parse_or_get_a_400(s in r#"\{"server": \{"(name|flavorRef|imageRef|metadata)": ("x"|1|null|\[\]|\{\})(, "[a-z]{1,8}": "y")?\}\}"#) {
            if let Err(e) = parse_body::<ServerCreateBody>(s.as_bytes()) {
                proptest::prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
                proptest::prop_assert!(e.message.starts_with("server"), "{}", e.message);
            }
        }
    }
}
