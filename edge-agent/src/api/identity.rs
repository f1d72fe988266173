//! Keystone v3: version discovery, password authentication with project
//! scope, token validation and revocation. Projects, users and roles are
//! in `accounts`.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::{json, Value};

use roost_common::api::{AuthBody, ProjectRef, UserRef};

use super::{parse_body, ApiError, AppState, Caller};
use crate::identity::{Claims, Subject};
use crate::store::accounts;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/identity", get(versions))
        .route("/identity/", get(versions))
        .route("/identity/v3", get(version))
        .route("/identity/v3/", get(version))
        .route(
            "/identity/v3/auth/tokens",
            post(issue).get(validate).delete(revoke),
        )
}

fn version_doc(base: &str) -> Value {
    roost_common::api::keystone_version(base)
}

async fn versions(State(s): State<AppState>) -> Response {
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(json!({"versions": {"values": [version_doc(&s.base_url)]}})),
    )
        .into_response()
}

async fn version(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"version": version_doc(&s.base_url)}))
}

/// `POST /identity/v3/auth/tokens`: the password method, for the bootstrap
/// admin or a user of the site's store, scoped to a project.
async fn issue(State(s): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    issue_token(s, body).await.map_err(ApiError::keystone)
}

async fn issue_token(s: AppState, body: Bytes) -> Result<Response, ApiError> {
    let body: AuthBody = parse_body(&body)?;
    let auth = body.auth;
    if !auth.identity.methods.iter().any(|m| m == "password") {
        return Err(ApiError::unauthorized(
            "Only the password authentication method is supported here.",
        ));
    }
    let pw = auth.identity.password.ok_or_else(|| {
        ApiError::bad_request("auth.identity.password: is required for the password method")
    })?;
    let user = pw.user;
    if user.id.is_none() && user.name.is_none() {
        return Err(ApiError::bad_request(
            "auth.identity.password.user: give id or name",
        ));
    }
    let scope = auth.scope.and_then(|sc| sc.project);
    let (token, claims) = if is_bootstrap_admin(&s, &user) {
        bootstrap_admin_token(&s, &user, scope)?
    } else {
        user_token(&s, user, scope).await?
    };
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({"token": token_body(&s, &claims)})),
    )
        .into_response();
    resp.headers_mut().insert(
        "X-Subject-Token",
        token.parse().map_err(|_| ApiError::bad_request("token"))?,
    );
    Ok(resp)
}

const NO_AUTH: &str = "The request you have made requires authentication.";

fn is_bootstrap_admin(s: &AppState, user: &UserRef) -> bool {
    match (&user.id, &user.name) {
        (Some(uid), _) => *uid == s.auth.identity().admin_user_id,
        (None, Some(name)) => {
            name == accounts::ADMIN_NAME && user.domain.as_ref().is_none_or(|d| d.is_default())
        }
        (None, None) => false,
    }
}

/// The bootstrap admin (password from the config), scoped to the admin
/// project (its default when no scope is given).
fn bootstrap_admin_token(
    s: &AppState,
    user: &UserRef,
    scope: Option<ProjectRef>,
) -> Result<(String, Claims), ApiError> {
    if s.auth.check_password(&user.password).is_err() {
        tracing::warn!(user = accounts::ADMIN_NAME, "authentication refused");
        return Err(ApiError::unauthorized(NO_AUTH));
    }
    if let Some(project) = scope {
        let ok = match (&project.id, &project.name) {
            (Some(pid), _) => *pid == s.auth.identity().admin_project_id,
            (None, Some(name)) => {
                name == "admin" && project.domain.as_ref().is_none_or(|d| d.is_default())
            }
            (None, None) => false,
        };
        if !ok {
            return Err(ApiError::unauthorized("The request you have made requires authentication: the user has no role on the requested project."));
        }
    }
    Ok(s.auth.issue_admin(Utc::now()))
}

/// Password hashing is meant to be slow and take memory (Argon2id, 19
/// MiB): at most two run at once, so a flood of logins queues instead of
/// exhausting the host.
static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Runs `f` (a password hash or check) on a blocking thread once one of
/// the [`HASHING`] slots is free; a 503 if none frees within 10 s.
pub(super) async fn hashing<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let slot = tokio::time::timeout(std::time::Duration::from_secs(10), HASHING.acquire())
        .await
        .map_err(|_| {
            ApiError::unavailable("too many password checks at once; retry in a few seconds")
        })?
        .map_err(|_| ApiError::internal("the password check pool is closed"))?;
    // The slot goes with the hash, not with the request: a client that
    // hangs up does not free it while the hash still runs.
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        f()
    })
    .await
    .map_err(|e| ApiError::internal(format!("password check failed: {e}")))
}

/// A user of the site's store, scoped to the project asked for (else its
/// default project), with its roles there. The password is checked off
/// the writer; what the token holds is decided in the writer
/// (`WriteCtx::login`), in order with every revocation. Every refusal
/// reads the same to the client; the log says which it was.
async fn user_token(
    s: &AppState,
    user: UserRef,
    scope: Option<ProjectRef>,
) -> Result<(String, Claims), ApiError> {
    let who = user.name.clone().or(user.id.clone()).unwrap_or_default();
    let refused = |why: &str| {
        tracing::warn!(user = %who, why, "authentication refused");
        ApiError::unauthorized(NO_AUTH)
    };
    let scope = match scope {
        Some(p) if p.domain.as_ref().is_some_and(|d| !d.is_default()) => {
            return Err(refused("a project outside the Default domain"))
        }
        Some(ProjectRef { id: Some(id), .. }) => accounts::ProjectLookup::Id(id),
        Some(ProjectRef {
            name: Some(name), ..
        }) => accounts::ProjectLookup::Name(name),
        Some(_) => return Err(ApiError::bad_request("auth.scope.project: give id or name")),
        None => accounts::ProjectLookup::Default,
    };
    let foreign_domain = user.domain.as_ref().is_some_and(|d| !d.is_default());
    let (uid, uname) = (user.id.clone(), user.name.clone());
    let found = s
        .store
        .read(move |c| {
            Ok(match (uid, uname) {
                (Some(id), _) => accounts::user(c, &id)?,
                (None, Some(name)) => accounts::users(c, Some(&name))?.pop(),
                (None, None) => None,
            })
        })
        .await?
        .filter(|_| !foreign_domain);
    // Hash even for an unknown user, so the time says nothing.
    let hash = found.as_ref().map(|u| u.password_hash.clone());
    let password = user.password.clone();
    let checked =
        hashing(move || crate::identity::check_user_password(hash.as_deref(), &password)).await?;
    let u = match (found, checked) {
        (Some(u), Ok(())) => u,
        _ => return Err(refused("unknown user or wrong password")),
    };
    let (id, hash) = (u.id.clone(), u.password_hash.clone());
    match s.store.write(move |w| w.login(&id, &hash, scope)).await? {
        Ok(login) => Ok(s.auth.issue_ordered(
            Subject {
                user_id: login.user.id,
                user_name: login.user.name,
                project_id: login.project.id,
                project_name: login.project.name,
                roles: login.roles,
            },
            login.at,
            chrono::Utc::now(),
        )),
        Err(accounts::Refusal::NoRole) => Err(ApiError::unauthorized(
            "The request you have made requires authentication: the user has no role on the requested project.",
        )),
        Err(accounts::Refusal::NoDefaultProject) => Err(ApiError::unauthorized(
            "The request you have made requires authentication: the user has no default project; ask for a project scope (--os-project-name).",
        )),
        Err(why) => Err(refused(&format!("{why:?}"))),
    }
}

/// `GET /identity/v3/auth/tokens`: validates `X-Subject-Token`.
/// `?nocatalog` leaves the catalog out, as Keystone does (token checks by
/// services need only the roles).
async fn validate(
    State(s): State<AppState>,
    _caller: Caller,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    validate_token(s, headers, q.contains_key("nocatalog"))
        .await
        .map_err(ApiError::keystone)
}

async fn validate_token(
    s: AppState,
    headers: HeaderMap,
    nocatalog: bool,
) -> Result<Response, ApiError> {
    let subject = headers
        .get("X-Subject-Token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("X-Subject-Token: header is required"))?;
    let claims = super::authenticate(&s, subject)
        .await
        .map_err(|e| ApiError::not_found(e.message))?;
    let mut body = token_body(&s, &claims);
    if nocatalog {
        if let Some(t) = body.as_object_mut() {
            t.remove("catalog");
        }
    }
    let mut resp = Json(json!({ "token": body })).into_response();
    resp.headers_mut().insert(
        "X-Subject-Token",
        subject
            .parse()
            .map_err(|_| ApiError::bad_request("token"))?,
    );
    Ok(resp)
}

/// `DELETE /identity/v3/auth/tokens`: revokes `X-Subject-Token`, the
/// caller's own or (for an admin) any of this site's tokens. The region's
/// tokens are revoked at the region, which tells its sites.
async fn revoke(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    revoke_token(s, caller, headers)
        .await
        .map_err(ApiError::keystone)
}

async fn revoke_token(
    s: AppState,
    caller: Caller,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let subject = headers
        .get("X-Subject-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .ok_or_else(|| ApiError::bad_request("X-Subject-Token: header is required"))?
        .to_string();
    if roost_sync::token::is_region_token(&subject) {
        return Err(ApiError::forbidden(
            "this is the region's token: revoke it at the region (openstack token revoke against the controller)",
        ));
    }
    let claims = s
        .auth
        .verify(&subject, Utc::now())
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    if claims.audit_id != caller.0.audit_id {
        caller.allow("identity:auth:tokens:revoke-other")?;
    }
    let (audit, expires) = (claims.audit_id.clone(), claims.expires_at);
    // In a task of its own: a client gone mid-request must not leave a
    // stored revocation unknown to the running authority.
    let (store, auth) = (s.store.clone(), s.auth.clone());
    tokio::spawn(async move {
        let id = audit.clone();
        store.write(move |w| w.revoke_token(&id, &expires)).await?;
        auth.revoked([audit]);
        Ok::<_, crate::store::WriteError>(())
    })
    .await
    .map_err(|e| ApiError::internal(format!("revocation task failed: {e}")))??;
    tracing::info!(audit_id = %claims.audit_id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

fn token_body(s: &AppState, c: &Claims) -> Value {
    let domain = json!({"id": "default", "name": "Default"});
    let site = &s.auth.identity().site_id;
    let endpoints = |path: &str| {
        let url = format!("{}{path}", s.base_url);
        ["public", "internal", "admin"]
            .iter()
            .map(|i| json!({"id": format!("{path}-{i}"), "interface": i, "region": site, "region_id": site, "url": url}))
            .collect::<Vec<_>>()
    };
    json!({
        "methods": ["password"],
        "user": {"id": c.user_id, "name": c.user_name, "domain": domain, "password_expires_at": null},
        "project": {"id": c.project_id, "name": c.project_name, "domain": domain},
        "roles": c.roles.iter().map(|r| json!({"id": r, "name": r})).collect::<Vec<_>>(),
        "is_domain": false,
        "issued_at": c.issued_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "expires_at": c.expires_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "audit_ids": [c.audit_id],
        "catalog": [
            {"type": "identity", "name": "keystone", "id": "identity", "endpoints": endpoints("/identity")},
            {"type": "compute", "name": "nova", "id": "compute", "endpoints": endpoints("/compute/v2.1")},
            {"type": "network", "name": "neutron", "id": "network", "endpoints": endpoints("/network")},
            {"type": "image", "name": "glance", "id": "image", "endpoints": endpoints("/image")},
            {"type": "block-storage", "name": "cinder", "id": "block-storage", "endpoints": endpoints(&format!("/volume/v3/{}", c.project_id))},
            {"type": "volumev3", "name": "cinderv3", "id": "volumev3", "endpoints": endpoints(&format!("/volume/v3/{}", c.project_id))},
        ],
    })
}
