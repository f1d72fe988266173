//! The region's OpenStack face, for the stock `openstack` client: every
//! site is a region of the catalog (`--os-region-name edge-factory-01`).
//!
//! - Keystone v3 at `/identity/v3`: password authentication as `admin`
//!   with the region's admin token as the password (`viewer` with the
//!   viewer token: read only). Tokens are signed with the region's Ed25519
//!   key (`roost_sync::token`) and last [`TOKEN_TTL_HOURS`]; `DELETE
//!   /identity/v3/auth/tokens` revokes one. Sites get the public key and
//!   the revocation list in their intent, so a region token works at a
//!   site while the region is unreachable. The catalog names, per site, its
//!   compute and image endpoints here on the controller.
//! - Nova at `/sites/{site}/compute/v2.1`: servers (list, detail, show,
//!   create, delete, and the actions os-stop, os-start, reboot, rebuild)
//!   and flavors (list, detail, show), over the region's
//!   copy of the site's documents. A create is intent the site takes when
//!   it is next reachable, online or not; a list shows what the site last
//!   reported (`roost:synced` false: the site has not reported it yet).
//! - Glance at `/sites/{site}/image/v2`: the images the site published,
//!   and images made here for the site (create, upload, delete): the
//!   region keeps their bytes (`images`) and the site fetches them, only
//!   the chunks it lacks, over its bulk stream.
//!
//! Errors are OpenStack's shapes: Keystone's `{"error": ...}` for 401,
//! Nova's `{"itemNotFound": ...}` and the like otherwise.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use roost_common::api::{AuthBody, ServerAction, ServerCreateBody};
use roost_common::model::{FlavorSpec, Image, ImageSpec, ImageStatus, Resource, ServerStatus};
use roost_sync::token::{self, TokenClaims, Trust};

use crate::api::{ApiState, Role};
use crate::intent::{self, Refused, ServerChange};

/// How long a token lasts.
pub const TOKEN_TTL_HOURS: i64 = 12;

/// The project the region's operators act in (each site maps it to its own
/// admin project).
pub const REGION_PROJECT: &str = "region";

pub fn routes() -> Router<ApiState> {
    let site = Router::new()
        .route(
            "/compute/v2.1/servers",
            get(list_servers).post(create_server),
        )
        .route("/compute/v2.1/servers/detail", get(list_servers_detail))
        .route(
            "/compute/v2.1/servers/{id}",
            get(show_server).delete(delete_server),
        )
        .route("/compute/v2.1/servers/{id}/action", post(server_action))
        .route("/compute/v2.1/flavors", get(list_flavors))
        .route("/compute/v2.1/flavors/detail", get(list_flavors))
        .route("/compute/v2.1/flavors/{id}", get(show_flavor))
        .route("/image", get(image_versions))
        .route("/image/", get(image_versions))
        .route("/image/v2/images", get(list_images).post(create_image))
        .route(
            "/image/v2/images/{id}",
            get(show_image).delete(delete_image),
        )
        .route(
            "/image/v2/images/{id}/file",
            get(download_image).put(upload_image),
        );
    Router::new()
        .route("/identity", get(identity_versions))
        .route("/identity/", get(identity_versions))
        .route("/identity/v3", get(identity_version))
        .route("/identity/v3/", get(identity_version))
        .route(
            "/identity/v3/auth/tokens",
            post(issue_token).get(validate_token).delete(revoke_token),
        )
        .nest("/sites/{site}", site)
}

// ---------------------------------------------------------------- errors

/// An OpenStack-shaped refusal.
#[derive(Debug)]
pub struct OsError {
    status: StatusCode,
    message: String,
}

fn os_error(status: StatusCode, message: impl Into<String>) -> OsError {
    OsError {
        status,
        message: message.into(),
    }
}

impl IntoResponse for OsError {
    fn into_response(self) -> Response {
        let body = roost_common::api::openstack_error_body(
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or("Error"),
            &self.message,
            false,
        );
        (self.status, Json(body)).into_response()
    }
}

impl From<Refused> for OsError {
    fn from(e: Refused) -> Self {
        match e {
            Refused::Invalid(f) => os_error(StatusCode::BAD_REQUEST, f.to_string()),
            Refused::NotFound(m) => os_error(StatusCode::NOT_FOUND, m),
            Refused::Conflict(m) => os_error(StatusCode::CONFLICT, m),
            Refused::Store(e) => {
                tracing::error!(error = %e, "the region's store failed under the OpenStack API");
                os_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

/// Runs blocking work (the fleet store, the documents) off the async
/// workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, OsError> + Send + 'static,
) -> Result<T, OsError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| os_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
}

// ---------------------------------------------------------------- tokens

fn roles_of(r: Role) -> Vec<String> {
    match r {
        Role::Admin => vec!["admin".into(), "member".into(), "reader".into()],
        Role::Viewer => vec!["reader".into()],
    }
}

/// The region's trust read from the store: its own public key and the
/// revoked tokens (expired ones dropped). What `Region::trust` holds.
fn trust(s: &ApiState) -> Result<Trust, OsError> {
    let revoked = s
        .region
        .store
        .revoked_tokens(Utc::now().timestamp())
        .map_err(|e| os_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Trust {
        keys: vec![s.signer.public_key()],
        revoked,
    })
}

/// Checks a token this region signed, against `Region::trust` (set at start
/// and by each revocation): no store read per request.
fn check(s: &ApiState, token: &str) -> Result<TokenClaims, OsError> {
    let trust = s
        .region
        .trust
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let trust = trust.ok_or_else(|| {
        os_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the region's token keys are not loaded yet",
        )
    })?;
    token::verify(&trust, token.trim(), Utc::now().timestamp()).map_err(|e| {
        os_error(
            StatusCode::UNAUTHORIZED,
            format!("The request you have made requires authentication: {e}."),
        )
    })
}

/// The caller of an OpenStack route, from `X-Auth-Token`.
#[derive(Debug, Clone, Copy)]
pub struct OsCaller(pub Role);

impl OsCaller {
    fn require_admin(self, what: &str) -> Result<(), OsError> {
        match self.0 {
            Role::Admin => Ok(()),
            Role::Viewer => Err(os_error(
                StatusCode::FORBIDDEN,
                format!("Policy doesn't allow {what} to be performed: the reader (viewer) role cannot change the region"),
            )),
        }
    }
}

impl FromRequestParts<ApiState> for OsCaller {
    type Rejection = OsError;

    async fn from_request_parts(parts: &mut Parts, s: &ApiState) -> Result<Self, OsError> {
        let token = parts
            .headers
            .get("X-Auth-Token")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| os_error(StatusCode::UNAUTHORIZED, "The request you have made requires authentication: send an X-Auth-Token header (get one from POST /identity/v3/auth/tokens)."))?;
        let claims = check(s, token)?;
        let role = if claims.roles.iter().any(|r| r == "admin") {
            Role::Admin
        } else {
            Role::Viewer
        };
        Ok(OsCaller(role))
    }
}

// ---------------------------------------------------------------- keystone

/// The controller's URL as clients reach it: `api.public_url`, else
/// `http://` + the request's Host.
fn base_url(s: &ApiState, headers: &HeaderMap) -> String {
    if let Some(u) = &s.public_url {
        return u.to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn identity_doc(s: &ApiState, headers: &HeaderMap) -> Value {
    roost_common::api::keystone_version(&base_url(s, headers))
}

async fn identity_versions(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(json!({"versions": {"values": [identity_doc(&s, &headers)]}})),
    )
        .into_response()
}

async fn identity_version(State(s): State<ApiState>, headers: HeaderMap) -> Json<Value> {
    Json(json!({ "version": identity_doc(&s, &headers) }))
}

/// `POST /identity/v3/auth/tokens`: `admin` with the admin token, or
/// `viewer` with the viewer token, as the password.
async fn issue_token(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OsError> {
    let bad = |m: String| os_error(StatusCode::BAD_REQUEST, m);
    let body: AuthBody = serde_json::from_slice(&body).map_err(|e| bad(format!("body: {e}")))?;
    let pw =
        body.auth.identity.password.ok_or_else(|| {
            bad("auth.identity.password: is required (the password method)".into())
        })?;
    let given = pw.user.password.trim().as_bytes();
    let same = |a: &[u8], b: &[u8]| {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    };
    let role = match pw.user.name.as_deref() {
        Some("admin") if same(given, s.admin_token.as_bytes()) => Role::Admin,
        Some("viewer") if same(given, s.viewer_token.as_bytes()) => Role::Viewer,
        _ => {
            tracing::warn!(
                user = pw.user.name.as_deref().unwrap_or(""),
                "region authentication refused"
            );
            return Err(os_error(
                StatusCode::UNAUTHORIZED,
                "The request you have made requires authentication: user admin's password is the region's admin.token (viewer's is viewer.token).",
            ));
        }
    };
    let now = Utc::now();
    let expires = now + chrono::Duration::hours(TOKEN_TTL_HOURS);
    let region = s.region.store.region().to_string();
    let user = match role {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    };
    let claims = TokenClaims {
        user_id: user.into(),
        user_name: user.into(),
        project_id: REGION_PROJECT.into(),
        project_name: "admin".into(),
        roles: roles_of(role),
        issued_at: now.timestamp(),
        expires_at: expires.timestamp(),
        audit_id: uuid::Uuid::new_v4().simple().to_string(),
        region: region.clone(),
    };
    let token = s.signer.sign(&claims);
    let sites = blocking({
        let region = s.region.clone();
        move || {
            region
                .store
                .sites()
                .map_err(|e| os_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
    })
    .await?;
    let base = base_url(&s, &headers);
    let endpoint = |service: &str, site: &str, url: String| json!({"id": format!("{service}-{site}"), "interface": "public", "region": site, "region_id": site, "url": url});
    let compute: Vec<Value> = sites
        .iter()
        .map(|r| {
            endpoint(
                "compute",
                &r.id,
                format!("{base}/sites/{}/compute/v2.1", r.id),
            )
        })
        .collect();
    // Identity answers in every region, so a client scoped to a site finds
    // it there too.
    let identity: Vec<Value> = std::iter::once(region.as_str())
        .chain(sites.iter().map(|r| r.id.as_str()))
        .map(|at| endpoint("identity", at, format!("{base}/identity")))
        .collect();
    let image: Vec<Value> = sites
        .iter()
        .map(|r| endpoint("image", &r.id, format!("{base}/sites/{}/image", r.id)))
        .collect();
    let mut body = token_body(&claims);
    body["token"]["catalog"] = json!([
            {"type": "identity", "name": "keystone", "id": "identity", "endpoints": identity},
            {"type": "compute", "name": "nova", "id": "compute", "endpoints": compute},
            {"type": "image", "name": "glance", "id": "image", "endpoints": image},
    ]);
    let mut resp = (StatusCode::CREATED, Json(body)).into_response();
    resp.headers_mut().insert(
        "X-Subject-Token",
        token
            .parse()
            .map_err(|_| os_error(StatusCode::INTERNAL_SERVER_ERROR, "token"))?,
    );
    Ok(resp)
}

/// Keystone's token body for `c` (without the catalog).
fn token_body(c: &TokenClaims) -> Value {
    let domain = json!({"id": "default", "name": "Default"});
    let time = |t: i64| {
        DateTime::from_timestamp(t, 0)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    };
    json!({"token": {
        "methods": ["password"],
        "user": {"id": c.user_id, "name": c.user_name, "domain": domain, "password_expires_at": null},
        "project": {"id": c.project_id, "name": c.project_name, "domain": domain},
        "roles": c.roles.iter().map(|r| json!({"id": r, "name": r})).collect::<Vec<_>>(),
        "is_domain": false,
        "issued_at": time(c.issued_at),
        "expires_at": time(c.expires_at),
        "audit_ids": [c.audit_id],
    }})
}

/// `GET /identity/v3/auth/tokens`: validates `X-Subject-Token`.
async fn validate_token(
    State(s): State<ApiState>,
    _c: OsCaller,
    headers: HeaderMap,
) -> Result<Json<Value>, OsError> {
    let subject = subject(&headers)?;
    let claims = check(&s, &subject).map_err(|e| os_error(StatusCode::NOT_FOUND, e.message))?;
    Ok(Json(token_body(&claims)))
}

fn subject(headers: &HeaderMap) -> Result<String, OsError> {
    headers
        .get("X-Subject-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| {
            os_error(
                StatusCode::BAD_REQUEST,
                "X-Subject-Token: header is required",
            )
        })
}

/// `DELETE /identity/v3/auth/tokens`: revokes `X-Subject-Token` (the
/// caller's own, or any token for an admin) here and, as their intent
/// syncs, at every site.
async fn revoke_token(
    State(s): State<ApiState>,
    c: OsCaller,
    headers: HeaderMap,
) -> Result<StatusCode, OsError> {
    let subject = subject(&headers)?;
    let claims = check(&s, &subject).map_err(|e| os_error(StatusCode::NOT_FOUND, e.message))?;
    let own = headers
        .get("X-Auth-Token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.trim() == subject.trim());
    if !own {
        c.require_admin("identity:revoke_token")?;
    }
    let state = s.clone();
    blocking(move || {
        let fail = |e: String| os_error(StatusCode::INTERNAL_SERVER_ERROR, e);
        {
            // Recorded and read back under the lock, so concurrent
            // revocations can only grow the list the sites are given.
            let mut current = state.region.trust.lock().unwrap_or_else(|e| e.into_inner());
            state
                .region
                .store
                .revoke_token(&claims.audit_id, claims.expires_at)
                .map_err(|e| fail(e.to_string()))?;
            *current = Some(trust(&state)?);
        }
        let mut written = 0;
        for site in state.region.store.sites().map_err(|e| fail(e.to_string()))? {
            match intent::publish_trust(&state.region, &site.id) {
                Ok(true) => written += 1,
                Ok(false) => {}
                // The others still get it; this one gets it when it next
                // connects.
                Err(e) => tracing::error!(site = %site.id, error = %e, "cannot give the site the revocation now"),
            }
        }
        tracing::info!(audit_id = %claims.audit_id, sites = written, "region token revoked");
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------- nova

fn link(base: &str, site: &str, kind: &str, id: &str) -> Value {
    json!([{"rel": "self", "href": format!("{base}/sites/{site}/compute/v2.1/{kind}/{id}")}])
}

/// A server as Nova shows it, from the region's view (`intent::servers`).
fn server_view(base: &str, site: &str, v: &Value) -> Value {
    let id = v["id"].as_str().unwrap_or_default();
    let status: Option<ServerStatus> = serde_json::from_value(v["status"].clone()).ok();
    let deleting = v["deleted"] == true;
    let (shown, vm, task, power, host) = match &status {
        Some(st) => (
            st.nova_status(),
            serde_json::to_value(st.vm_state).unwrap_or_default(),
            if deleting {
                json!("deleting")
            } else {
                serde_json::to_value(st.task_state).unwrap_or_default()
            },
            json!(st.power_state.code()),
            json!(st.host),
        ),
        None => (
            "BUILD",
            json!("building"),
            json!(if deleting { "deleting" } else { "scheduling" }),
            json!(0),
            Value::Null,
        ),
    };
    let flavor = v["flavor_id"].as_str().unwrap_or_default();
    let image = v["image_id"].as_str().unwrap_or_default();
    json!({
        "id": id,
        "name": v["name"],
        "status": shown,
        "tenant_id": "",
        "user_id": "",
        "metadata": {},
        "addresses": {},
        "flavor": {"id": flavor, "links": link(base, site, "flavors", flavor)},
        "image": {"id": image},
        "links": link(base, site, "servers", id),
        "OS-EXT-STS:vm_state": vm,
        "OS-EXT-STS:task_state": task,
        "OS-EXT-STS:power_state": power,
        "OS-EXT-SRV-ATTR:host": host,
        "OS-EXT-AZ:availability_zone": status.as_ref().and_then(|s| s.availability_zone.clone()),
        "fault": status.as_ref().and_then(|s| s.fault.clone()),
        "roost:site": site,
        "roost:synced": status.is_some(),
    })
}

async fn servers_of(s: &ApiState, site: String) -> Result<Vec<Value>, OsError> {
    let region = s.region.clone();
    blocking(move || Ok(intent::servers(&region, &site)?)).await
}

#[derive(Debug, serde::Deserialize)]
struct ServerFilter {
    name: Option<String>,
    status: Option<String>,
}

async fn list_servers(
    State(s): State<ApiState>,
    _c: OsCaller,
    headers: HeaderMap,
    Path(site): Path<String>,
    Query(f): Query<ServerFilter>,
) -> Result<Json<Value>, OsError> {
    let base = base_url(&s, &headers);
    let all = filtered(&s, &base, site, &f).await?;
    let brief: Vec<Value> = all
        .iter()
        .map(|v| json!({"id": v["id"], "name": v["name"], "links": v["links"]}))
        .collect();
    Ok(Json(json!({ "servers": brief })))
}

async fn filtered(
    s: &ApiState,
    base: &str,
    site: String,
    f: &ServerFilter,
) -> Result<Vec<Value>, OsError> {
    let servers = servers_of(s, site.clone()).await?;
    Ok(servers
        .iter()
        .map(|v| server_view(base, &site, v))
        // A server the site removed after the region withdrew it is gone.
        .filter(|v| v["status"] != "DELETED")
        .filter(|v| f.name.as_ref().is_none_or(|n| v["name"] == n.as_str()))
        .filter(|v| {
            f.status.as_ref().is_none_or(|st| {
                v["status"]
                    .as_str()
                    .is_some_and(|x| x.eq_ignore_ascii_case(st))
            })
        })
        .collect())
}

async fn list_servers_detail(
    State(s): State<ApiState>,
    _c: OsCaller,
    headers: HeaderMap,
    Path(site): Path<String>,
    Query(f): Query<ServerFilter>,
) -> Result<Json<Value>, OsError> {
    let base = base_url(&s, &headers);
    Ok(Json(
        json!({ "servers": filtered(&s, &base, site, &f).await? }),
    ))
}

async fn show_server(
    State(s): State<ApiState>,
    _c: OsCaller,
    headers: HeaderMap,
    Path((site, id)): Path<(String, String)>,
) -> Result<Json<Value>, OsError> {
    let base = base_url(&s, &headers);
    let servers = servers_of(&s, site.clone()).await?;
    servers
        .iter()
        .find(|v| v["id"] == id.as_str())
        .map(|v| Json(json!({"server": server_view(&base, &site, v)})))
        .ok_or_else(|| {
            os_error(
                StatusCode::NOT_FOUND,
                format!("Instance {id} could not be found."),
            )
        })
}

async fn create_server(
    State(s): State<ApiState>,
    c: OsCaller,
    headers: HeaderMap,
    Path(site): Path<String>,
    body: Bytes,
) -> Result<Response, OsError> {
    c.require_admin("os_compute_api:servers:create")?;
    let base = base_url(&s, &headers);
    let req: ServerCreateBody = serde_json::from_slice(&body)
        .map_err(|e| os_error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    if req.scheduler_hints.is_some() || req.scheduler_hints_legacy.is_some() {
        return Err(os_error(
            StatusCode::BAD_REQUEST,
            "os:scheduler_hints: server groups are local to a site; leave them out of region requests",
        ));
    }
    let region = s.region.clone();
    let at = site.clone();
    let placed = blocking(move || Ok(intent::create_server(&region, &at, &req.server)?)).await?;
    let body = json!({"server": {
        "id": placed.id,
        "links": link(&base, &site, "servers", &placed.id),
        "OS-DCF:diskConfig": "MANUAL",
        "security_groups": [{"name": "default"}],
    }});
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn delete_server(
    State(s): State<ApiState>,
    c: OsCaller,
    Path((site, id)): Path<(String, String)>,
) -> Result<StatusCode, OsError> {
    c.require_admin("os_compute_api:servers:delete")?;
    let region = s.region.clone();
    blocking(move || Ok(intent::delete_server(&region, &site, &id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /servers/{id}/action`: os-stop, os-start, reboot, rebuild, as
/// intent for the site.
async fn server_action(
    State(s): State<ApiState>,
    c: OsCaller,
    Path((site, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, OsError> {
    c.require_admin("os_compute_api:servers:action")?;
    let action: ServerAction = serde_json::from_slice(&body)
        .map_err(|e| os_error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let change = match action {
        ServerAction::Stop(_) => ServerChange::Stop,
        ServerAction::Start(_) => ServerChange::Start,
        ServerAction::Reboot(r) => ServerChange::Reboot {
            hard: r
                .hard()
                .map_err(|e| os_error(StatusCode::BAD_REQUEST, e.to_string()))?,
        },
        ServerAction::Rebuild(r) => {
            let image = r.image_ref.trim_end_matches('/');
            ServerChange::Rebuild {
                image_id: image.rsplit('/').next().unwrap_or(image).to_string(),
            }
        }
    };
    let region = s.region.clone();
    blocking(move || Ok(intent::change_server(&region, &site, &id, &change)?)).await?;
    Ok(StatusCode::ACCEPTED)
}

fn flavor_view(base: &str, site: &str, id: &str, f: &FlavorSpec) -> Value {
    json!({
        "id": id,
        "name": f.name,
        "vcpus": f.vcpus,
        "ram": f.ram_mb,
        "disk": f.disk_gb,
        "OS-FLV-EXT-DATA:ephemeral": f.ephemeral_gb,
        "swap": if f.swap_mb == 0 { json!("") } else { json!(f.swap_mb) },
        "rxtx_factor": 1.0,
        "os-flavor-access:is_public": f.is_public,
        "OS-FLV-DISABLED:disabled": false,
        "links": link(base, site, "flavors", id),
    })
}

async fn flavors_of(s: &ApiState, site: String) -> Result<Vec<(String, FlavorSpec)>, OsError> {
    let region = s.region.clone();
    blocking(move || Ok(intent::site_flavors(&region, &site)?)).await
}

async fn list_flavors(
    State(s): State<ApiState>,
    _c: OsCaller,
    headers: HeaderMap,
    Path(site): Path<String>,
) -> Result<Json<Value>, OsError> {
    let base = base_url(&s, &headers);
    let all: Vec<Value> = flavors_of(&s, site.clone())
        .await?
        .iter()
        .map(|(id, f)| flavor_view(&base, &site, id, f))
        .collect();
    Ok(Json(json!({ "flavors": all })))
}

async fn show_flavor(
    State(s): State<ApiState>,
    _c: OsCaller,
    headers: HeaderMap,
    Path((site, id)): Path<(String, String)>,
) -> Result<Json<Value>, OsError> {
    let base = base_url(&s, &headers);
    flavors_of(&s, site.clone())
        .await?
        .iter()
        .find(|(fid, _)| *fid == id)
        .map(|(fid, f)| Json(json!({"flavor": flavor_view(&base, &site, fid, f)})))
        .ok_or_else(|| {
            os_error(
                StatusCode::NOT_FOUND,
                format!("Flavor {id} could not be found."),
            )
        })
}

// ---------------------------------------------------------------- glance

/// Glance's version document, which clients read before anything else.
async fn image_versions(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Path(site): Path<String>,
) -> Response {
    let href = format!("{}/sites/{site}/image/v2/", base_url(&s, &headers));
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(roost_common::api::glance_versions(&href)),
    )
        .into_response()
}

/// The site's images as it last published them (Glance's view of each,
/// served as it came), then the region's images for it that the site has
/// not reported yet: `queued` until the region holds their bytes, then
/// `importing` until the site has fetched them.
async fn images_of(s: &ApiState, site: String) -> Result<Vec<Value>, OsError> {
    let region = s.region.clone();
    let (mut all, given) = blocking(move || {
        Ok((
            intent::site_images(&region, &site)?.unwrap_or_default(),
            intent::region_images(&region, &site)?,
        ))
    })
    .await?;
    for (id, spec) in given {
        match all.iter_mut().find(|v| v["id"] == id.as_str()) {
            // The site has it but not its bytes yet: they are on their way.
            Some(v)
                if spec.region.is_some()
                    && ["queued", "saving"].contains(&v["status"].as_str().unwrap_or_default()) =>
            {
                *v = pending_image(&id, spec);
            }
            Some(_) => {}
            None => all.push(pending_image(&id, spec)),
        }
    }
    Ok(all)
}

fn pending_image(id: &str, spec: ImageSpec) -> Value {
    let now = Utc::now();
    let mut image: Image = Resource {
        id: id.to_string(),
        spec,
        status: ImageStatus::default(),
        created_at: now,
        updated_at: now,
    };
    if let Some(r) = &image.spec.region {
        image.status.size_bytes = Some(r.size);
        image.status.sha256 = Some(r.sha256.clone());
    }
    let mut v = roost_common::api::glance_image(&image, true);
    if image.spec.region.is_some() {
        v["status"] = json!("importing");
    }
    v
}

/// `POST /image/v2/images` in a site's region: an image the region will
/// hold for the site.
async fn create_image(
    State(s): State<ApiState>,
    c: OsCaller,
    Path(site): Path<String>,
    body: Bytes,
) -> Result<Response, OsError> {
    c.require_admin("add_image")?;
    let req: roost_common::api::ImageCreateBody = serde_json::from_slice(&body)
        .map_err(|e| os_error(StatusCode::BAD_REQUEST, format!("body: {e}")))?;
    let spec = req
        .into_spec(REGION_PROJECT)
        .map_err(|e| os_error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let region = s.region.clone();
    let (at, sp) = (site.clone(), spec.clone());
    let id = blocking(move || Ok(intent::create_region_image(&region, &at, &sp)?)).await?;
    tracing::info!(site = %site, image_id = %id, "the region recorded an image for a site");
    Ok((StatusCode::CREATED, Json(pending_image(&id, spec))).into_response())
}

/// `PUT /image/v2/images/{id}/file`: the region takes the bytes, then
/// tells the site it may fetch them.
async fn upload_image(
    State(s): State<ApiState>,
    c: OsCaller,
    Path((site, id)): Path<(String, String)>,
    body: axum::body::Body,
) -> Result<StatusCode, OsError> {
    c.require_admin("upload_image")?;
    let images = held_images(&s)?;
    let spec = region_image(&s, &site, &id).await?;
    if spec.region.is_some() {
        return Err(os_error(
            StatusCode::CONFLICT,
            format!("Image {id} already has data; make a new image for new data"),
        ));
    }
    let declared = spec
        .properties
        .get("owner_specified.openstack.sha256")
        .cloned();
    let (copy, _virtual) = images
        .receive(&id, spec.disk_format, declared, body)
        .await
        .map_err(|e| {
            let status = if e.server {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::BAD_REQUEST
            };
            os_error(status, e.message)
        })?;
    let region = s.region.clone();
    let (at, iid) = (site.clone(), id.clone());
    let told = blocking(move || Ok(intent::set_region_copy(&region, &at, &iid, &copy)?)).await;
    if told.is_err() {
        // The site was never told: the bytes go, so the upload can be retried.
        images.remove(&id);
    }
    told?;
    Ok(StatusCode::NO_CONTENT)
}

/// Where this controller keeps the images it holds for sites.
fn held_images(s: &ApiState) -> Result<std::sync::Arc<crate::images::RegionImages>, OsError> {
    s.region.images.get().cloned().ok_or_else(|| {
        os_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this controller keeps no images",
        )
    })
}

/// The spec of an image the region made for `site`.
async fn region_image(s: &ApiState, site: &str, id: &str) -> Result<ImageSpec, OsError> {
    let region = s.region.clone();
    let (at, iid) = (site.to_string(), id.to_string());
    blocking(move || Ok(intent::region_images(&region, &at)?))
        .await?
        .into_iter()
        .find(|(i, _)| *i == iid)
        .map(|(_, spec)| spec)
        .ok_or_else(|| {
            os_error(
                StatusCode::NOT_FOUND,
                format!("No image found with ID {id} among the images the region made for {site}"),
            )
        })
}

/// `GET /image/v2/images/{id}/file` (`openstack image save`): the bytes
/// the region holds for an image it made for this site, streamed; 204
/// while it has none yet, as Glance answers for an image without data.
async fn download_image(
    State(s): State<ApiState>,
    _c: OsCaller,
    Path((site, id)): Path<(String, String)>,
) -> Result<Response, OsError> {
    let images = held_images(&s)?;
    let spec = region_image(&s, &site, &id).await?;
    if spec.region.is_none() || !images.holds(&id) {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let path = images.file(&id);
    let f = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(image_id = %id, file = %path.display(), error = %e, "the region's copy of an image cannot be read");
        os_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("image {id}: the region's copy cannot be read: {e}"),
        )
    })?;
    let len = f
        .metadata()
        .await
        .map_err(|e| os_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .len();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024);
    let mut resp = Response::new(axum::body::Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, axum::http::HeaderValue::from(len));
    Ok(resp)
}

/// `DELETE /image/v2/images/{id}`: withdraws an image the region gave the
/// site (the site removes it unless a server boots from it). The region's
/// copy of the bytes stays for other sites.
async fn delete_image(
    State(s): State<ApiState>,
    c: OsCaller,
    Path((site, id)): Path<(String, String)>,
) -> Result<StatusCode, OsError> {
    c.require_admin("delete_image")?;
    let region = s.region.clone();
    blocking(move || Ok(intent::withdraw_image(&region, &site, &id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, serde::Deserialize)]
struct ImageFilter {
    name: Option<String>,
    status: Option<String>,
}

async fn list_images(
    State(s): State<ApiState>,
    _c: OsCaller,
    Path(site): Path<String>,
    Query(f): Query<ImageFilter>,
) -> Result<Json<Value>, OsError> {
    let all: Vec<Value> = images_of(&s, site)
        .await?
        .into_iter()
        .filter(|v| f.name.as_ref().is_none_or(|n| v["name"] == n.as_str()))
        .filter(|v| {
            f.status
                .as_ref()
                .is_none_or(|st| v["status"] == st.as_str())
        })
        .collect();
    Ok(Json(
        json!({"images": all, "first": "/v2/images", "schema": "/v2/schemas/images"}),
    ))
}

async fn show_image(
    State(s): State<ApiState>,
    _c: OsCaller,
    Path((site, id)): Path<(String, String)>,
) -> Result<Json<Value>, OsError> {
    images_of(&s, site)
        .await?
        .into_iter()
        .find(|v| v["id"] == id.as_str())
        .map(Json)
        .ok_or_else(|| {
            os_error(
                StatusCode::NOT_FOUND,
                format!("No image found with ID {id}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_the_site_has_not_reported_shows_as_building_and_unsynced() {
        let v = json!({"id": "s1", "name": "cam", "flavor_id": "1", "image_id": "i", "deleted": false, "status": null});
        let shown = server_view("http://r", "edge-1", &v);
        assert_eq!(shown["status"], "BUILD");
        assert_eq!(shown["roost:synced"], false);
        assert_eq!(shown["OS-EXT-STS:task_state"], "scheduling");
        let reported = json!({"id": "s1", "name": "cam", "flavor_id": "1", "image_id": "i", "deleted": true,
            "status": {"host": "c0", "vm_state": "active", "task_state": null, "power_state": "running",
                       "reboot_generation": 0, "launched_at": null, "fault": null}});
        let shown = server_view("http://r", "edge-1", &reported);
        assert_eq!(shown["status"], "ACTIVE");
        assert_eq!(shown["roost:synced"], true);
        assert_eq!(shown["OS-EXT-STS:task_state"], "deleting");
        assert_eq!(shown["OS-EXT-SRV-ATTR:host"], "c0");
    }
}
