//! Keystone v3: version discovery, password authentication with project
//! scope, token validation.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde_json::{json, Value};

use roost_common::api::AuthBody;

use super::{parse_body, ApiError, AppState, Caller};
use crate::identity::Claims;

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

/// `POST /identity/v3/auth/tokens`: the password method for the bootstrap
/// admin, scoped to the admin project (its default when no scope is given).
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
    let id = s.auth.identity();
    let user = pw.user;
    let user_matches = match (&user.id, &user.name) {
        (Some(uid), _) => *uid == id.admin_user_id,
        (None, Some(name)) => {
            name == "admin" && user.domain.as_ref().is_none_or(|d| d.is_default())
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "auth.identity.password.user: give id or name",
            ))
        }
    };
    // Check the password even for an unknown user, so timing says nothing.
    let password_ok = s.auth.check_password(&user.password).is_ok();
    if !(user_matches && password_ok) {
        tracing::warn!(
            user = user.name.as_deref().or(user.id.as_deref()).unwrap_or(""),
            "authentication refused"
        );
        return Err(ApiError::unauthorized(
            "The request you have made requires authentication.",
        ));
    }
    if let Some(project) = auth.scope.and_then(|sc| sc.project) {
        let ok = match (&project.id, &project.name) {
            (Some(pid), _) => *pid == id.admin_project_id,
            (None, Some(name)) => {
                name == "admin" && project.domain.as_ref().is_none_or(|d| d.is_default())
            }
            (None, None) => false,
        };
        if !ok {
            return Err(ApiError::unauthorized("The request you have made requires authentication: the user has no role on the requested project."));
        }
    }
    let (token, claims) = s.auth.issue_admin(Utc::now());
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

/// `GET /identity/v3/auth/tokens`: validates `X-Subject-Token`.
async fn validate(
    State(s): State<AppState>,
    _caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    validate_token(s, headers).await.map_err(ApiError::keystone)
}

async fn validate_token(s: AppState, headers: HeaderMap) -> Result<Response, ApiError> {
    let subject = headers
        .get("X-Subject-Token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("X-Subject-Token: header is required"))?;
    let claims = super::authenticate(&s, subject)
        .await
        .map_err(|e| ApiError::not_found(e.message))?;
    let mut resp = Json(json!({"token": token_body(&s, &claims)})).into_response();
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
        caller.require_admin("identity:revoke_token")?;
    }
    let (audit, expires) = (claims.audit_id.clone(), claims.expires_at);
    s.store
        .write(move |w| w.revoke_token(&audit, &expires))
        .await?;
    s.auth.revoked([claims.audit_id.clone()]);
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
