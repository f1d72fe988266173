//! Keystone v3's projects, users, roles and role assignments at a site
//! (`openstack project|user|role ...`), kept in the site's store (see
//! `store::accounts`). Who may call what is the policy's (identity actions
//! are admin-only by default). Errors are in Keystone's shape.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Value};

use roost_common::api::{ProjectBody, UserBody};

use super::{parse_body, ApiError, AppState, Caller};
use crate::store::accounts::{self, Assignment, Project, ProjectChange, User, UserChange, ROLES};
use crate::store::{WriteCtx, WriteError};
use chrono::{DateTime, Utc};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/identity/v3/projects",
            get(list_projects).post(create_project),
        )
        .route(
            "/identity/v3/projects/{project}",
            get(show_project)
                .patch(update_project)
                .delete(delete_project),
        )
        .route("/identity/v3/users", get(list_users).post(create_user))
        .route(
            "/identity/v3/users/{user}",
            get(show_user).patch(update_user).delete(delete_user),
        )
        .route("/identity/v3/roles", get(list_roles).post(create_role))
        .route("/identity/v3/roles/{role}", get(show_role))
        .route(
            "/identity/v3/projects/{project}/users/{user}/roles",
            get(roles_of),
        )
        .route(
            "/identity/v3/projects/{project}/users/{user}/roles/{role}",
            put(grant).get(check_grant).delete(ungrant),
        )
        .route("/identity/v3/role_assignments", get(role_assignments))
        .route("/identity/v3/domains", get(list_domains))
        .route("/identity/v3/domains/{domain}", get(show_domain))
}

/// An error in Keystone's shape.
pub(super) struct KsError(ApiError);

impl<E: Into<ApiError>> From<E> for KsError {
    fn from(e: E) -> Self {
        KsError(e.into())
    }
}

impl IntoResponse for KsError {
    fn into_response(self) -> Response {
        self.0.keystone().into_response()
    }
}

type Reply = Result<Response, KsError>;

/// Runs a write that may end a subject's tokens (`user:<id>`,
/// `project:<id>`) and tells the authority, in a task of its own: a client
/// gone mid-request cannot leave a stored revocation unknown to the
/// running authority.
async fn write_revoking<T: Send + 'static>(
    s: &AppState,
    subject: String,
    job: impl FnOnce(&mut WriteCtx<'_>) -> Result<(T, Option<DateTime<Utc>>), WriteError>
        + Send
        + 'static,
) -> Result<T, ApiError> {
    let (store, auth) = (s.store.clone(), s.auth.clone());
    tokio::spawn(async move {
        let (value, ended) = store.write(job).await?;
        if let Some(t) = ended {
            auth.revoke_subject(subject.clone(), t);
            tracing::info!(%subject, "tokens issued before now are refused");
        }
        Ok::<_, ApiError>(value)
    })
    .await
    .map_err(|e| ApiError::internal(format!("identity write task failed: {e}")))?
}

fn ok(v: Value) -> Reply {
    Ok(Json(v).into_response())
}

fn link(s: &AppState, path: &str) -> Value {
    json!({"self": format!("{}/identity/v3/{path}", s.base_url), "previous": null, "next": null})
}

const DEFAULT_DOMAIN: &str = "default";

fn project_view(s: &AppState, p: &Project) -> Value {
    json!({
        "id": p.id, "name": p.name, "description": p.description, "enabled": p.enabled,
        "domain_id": DEFAULT_DOMAIN, "parent_id": DEFAULT_DOMAIN, "is_domain": false,
        "tags": [], "options": {},
        "links": {"self": format!("{}/identity/v3/projects/{}", s.base_url, p.id)},
    })
}

fn user_view(s: &AppState, u: &User) -> Value {
    json!({
        "id": u.id, "name": u.name, "description": u.description, "enabled": u.enabled,
        "default_project_id": u.default_project_id, "domain_id": DEFAULT_DOMAIN,
        "password_expires_at": null, "options": {},
        "links": {"self": format!("{}/identity/v3/users/{}", s.base_url, u.id)},
    })
}

fn role_view(s: &AppState, r: &str) -> Value {
    json!({
        "id": r, "name": r, "domain_id": null, "description": role_description(r), "options": {},
        "links": {"self": format!("{}/identity/v3/roles/{r}", s.base_url)},
    })
}

fn role_description(r: &str) -> &'static str {
    match r {
        "admin" => "Does anything, in every project",
        "member" => "Reads and changes the project's resources",
        _ => "Reads the project's resources",
    }
}

/// The bootstrap admin, as Keystone would list it (not a row).
fn bootstrap_admin(s: &AppState) -> User {
    let id = s.auth.identity();
    User {
        id: id.admin_user_id.clone(),
        name: accounts::ADMIN_NAME.into(),
        default_project_id: Some(id.admin_project_id.clone()),
        description: "Bootstrap admin (password from the site's config)".into(),
        enabled: true,
        password_hash: String::new(),
    }
}

/// Every role assignment, the bootstrap admin's included.
async fn all_assignments(
    s: &AppState,
    user: Option<String>,
    project: Option<String>,
    role: Option<String>,
) -> Result<Vec<Assignment>, ApiError> {
    let id = s.auth.identity();
    let mut out: Vec<Assignment> = crate::identity::ADMIN_ROLES
        .iter()
        .map(|r| Assignment {
            user_id: id.admin_user_id.clone(),
            project_id: id.admin_project_id.clone(),
            role: r.to_string(),
        })
        .filter(|a| {
            user.as_ref().is_none_or(|u| *u == a.user_id)
                && project.as_ref().is_none_or(|p| *p == a.project_id)
                && role.as_ref().is_none_or(|r| *r == a.role)
        })
        .collect();
    let rows = s
        .store
        .read(move |c| {
            Ok(accounts::assignments(
                c,
                user.as_deref(),
                project.as_deref(),
                role.as_deref(),
            )?)
        })
        .await?;
    out.extend(rows);
    Ok(out)
}

async fn project_by_id(s: &AppState, id: String) -> Result<Project, ApiError> {
    let missing = format!("Could not find project: {id}.");
    s.store
        .read(move |c| Ok(accounts::project(c, &id)?))
        .await?
        .ok_or_else(|| ApiError::not_found(missing))
}

async fn user_by_id(s: &AppState, id: String) -> Result<User, ApiError> {
    if id == s.auth.identity().admin_user_id {
        return Ok(bootstrap_admin(s));
    }
    let missing = format!("Could not find user: {id}.");
    s.store
        .read(move |c| Ok(accounts::user(c, &id)?))
        .await?
        .ok_or_else(|| ApiError::not_found(missing))
}

async fn list_projects(
    State(s): State<AppState>,
    _c: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let name = q.get("name").cloned();
    let list = s
        .store
        .read(move |c| Ok(accounts::projects(c, name.as_deref())?))
        .await?;
    ok(json!({
        "projects": list.iter().map(|p| project_view(&s, p)).collect::<Vec<_>>(),
        "links": link(&s, "projects"),
    }))
}

async fn show_project(State(s): State<AppState>, _c: Caller, Path(id): Path<String>) -> Reply {
    let p = project_by_id(&s, id).await?;
    ok(json!({"project": project_view(&s, &p)}))
}

async fn create_project(State(s): State<AppState>, _c: Caller, body: Bytes) -> Reply {
    let f = parse_body::<ProjectBody>(&body)?.project;
    f.check()?;
    let name = f.name.clone().unwrap_or_default();
    let description = f.description.clone().unwrap_or_default();
    let enabled = f.enabled.unwrap_or(true);
    let p = s
        .store
        .write(move |w| w.create_project(&name, &description, enabled))
        .await?;
    tracing::info!(project_id = %p.id, name = %p.name, "project created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"project": project_view(&s, &p)})),
    )
        .into_response())
}

async fn update_project(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let f = parse_body::<ProjectBody>(&body)?.project;
    f.check()?;
    let change = ProjectChange {
        name: f.name,
        description: f.description,
        enabled: f.enabled,
    };
    let admin = s.auth.identity().admin_project_id.clone();
    let pid = id.clone();
    let p = write_revoking(&s, format!("project:{id}"), move |w| {
        w.update_project(&pid, &admin, change)
    })
    .await?;
    ok(json!({"project": project_view(&s, &p)}))
}

async fn delete_project(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, KsError> {
    let admin = s.auth.identity().admin_project_id.clone();
    let pid = id.clone();
    write_revoking(&s, format!("project:{id}"), move |w| {
        w.delete_project(&pid, &admin).map(|t| ((), Some(t)))
    })
    .await?;
    tracing::info!(project_id = %id, "project deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn list_users(
    State(s): State<AppState>,
    _c: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let name = q.get("name").cloned();
    let mut list: Vec<User> = Vec::new();
    let admin = bootstrap_admin(&s);
    if name.as_deref().is_none_or(|n| n == admin.name) {
        list.push(admin);
    }
    let rows = s
        .store
        .read(move |c| Ok(accounts::users(c, name.as_deref())?))
        .await?;
    list.extend(rows);
    ok(json!({
        "users": list.iter().map(|u| user_view(&s, u)).collect::<Vec<_>>(),
        "links": link(&s, "users"),
    }))
}

async fn show_user(State(s): State<AppState>, _c: Caller, Path(id): Path<String>) -> Reply {
    let u = user_by_id(&s, id).await?;
    ok(json!({"user": user_view(&s, &u)}))
}

/// The change a user body asks for, with the password hashed (off the
/// async threads: hashing is meant to be slow).
async fn user_change(body: &[u8]) -> Result<UserChange, ApiError> {
    let f = parse_body::<UserBody>(body)?.user;
    f.check()?;
    let password_hash = match f.password {
        Some(pw) => Some(
            super::identity::hashing(move || crate::identity::hash_password(&pw))
                .await?
                .map_err(|e| ApiError::internal(format!("password hashing failed: {e}")))?,
        ),
        None => None,
    };
    Ok(UserChange {
        name: f.name,
        password_hash,
        default_project_id: f.default_project_id,
        description: f.description,
        enabled: f.enabled,
    })
}

async fn create_user(State(s): State<AppState>, _c: Caller, body: Bytes) -> Reply {
    let change = user_change(&body).await?;
    let u = s.store.write(move |w| w.create_user(change)).await?;
    tracing::info!(user_id = %u.id, name = %u.name, "user created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"user": user_view(&s, &u)})),
    )
        .into_response())
}

fn not_the_bootstrap_admin(s: &AppState, id: &str) -> Result<(), ApiError> {
    if id == s.auth.identity().admin_user_id {
        return Err(ApiError::forbidden(
            "the bootstrap admin is the site's config (api.admin_password or ROOST_ADMIN_PASSWORD), not changed here",
        ));
    }
    Ok(())
}

async fn update_user(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    not_the_bootstrap_admin(&s, &id)?;
    let change = user_change(&body).await?;
    let uid = id.clone();
    let u = write_revoking(&s, format!("user:{id}"), move |w| {
        w.update_user(&uid, change)
    })
    .await?;
    ok(json!({"user": user_view(&s, &u)}))
}

async fn delete_user(
    State(s): State<AppState>,
    _c: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, KsError> {
    not_the_bootstrap_admin(&s, &id)?;
    let uid = id.clone();
    write_revoking(&s, format!("user:{id}"), move |w| {
        w.delete_user(&uid).map(|t| ((), Some(t)))
    })
    .await?;
    tracing::info!(user_id = %id, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}

async fn list_roles(
    State(s): State<AppState>,
    _c: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let roles: Vec<Value> = ROLES
        .iter()
        .filter(|r| q.get("name").is_none_or(|n| n == *r))
        .map(|r| role_view(&s, r))
        .collect();
    ok(json!({"roles": roles, "links": link(&s, "roles")}))
}

async fn show_role(State(s): State<AppState>, _c: Caller, Path(id): Path<String>) -> Reply {
    if !ROLES.contains(&id.as_str()) {
        return Err(ApiError::not_found(format!("Could not find role: {id}.")).into());
    }
    ok(json!({"role": role_view(&s, &id)}))
}

async fn create_role(_c: Caller) -> Reply {
    Err(ApiError::forbidden(
        "the roles here are fixed: admin, member and reader; what each may do is the policy's (api.policy_file)",
    )
    .into())
}

/// `GET /projects/{p}/users/{u}/roles`: the user's roles there.
async fn roles_of(
    State(s): State<AppState>,
    _c: Caller,
    Path((project, user)): Path<(String, String)>,
) -> Reply {
    let list = all_assignments(&s, Some(user), Some(project), None).await?;
    ok(json!({
        "roles": list.iter().map(|a| role_view(&s, &a.role)).collect::<Vec<_>>(),
        "links": link(&s, "roles"),
    }))
}

async fn grant(
    State(s): State<AppState>,
    c: Caller,
    Path((project, user, role)): Path<(String, String, String)>,
) -> Result<StatusCode, KsError> {
    not_the_bootstrap_admin(&s, &user)?;
    // Whoever a policy lets grant roles without being a cloud admin gives
    // only roles they hold, only in their own project, and never admin.
    if !c.is_cloud_admin()
        && (!c.0.roles.contains(&role) || role == "admin" || project != c.0.project_id)
    {
        return Err(ApiError::forbidden(format!(
            "a role you do not hold ({role}), admin, or one in another project is not yours to give"
        ))
        .into());
    }
    let (p, u, r) = (project.clone(), user.clone(), role.clone());
    s.store.write(move |w| w.grant(&p, &u, &r)).await?;
    tracing::info!(project_id = %project, user_id = %user, %role, "role granted");
    Ok(StatusCode::NO_CONTENT)
}

async fn check_grant(
    State(s): State<AppState>,
    _c: Caller,
    Path((project, user, role)): Path<(String, String, String)>,
) -> Result<StatusCode, KsError> {
    let found = all_assignments(
        &s,
        Some(user.clone()),
        Some(project.clone()),
        Some(role.clone()),
    )
    .await?;
    if found.is_empty() {
        return Err(ApiError::not_found(format!(
            "Could not find role assignment with role: {role}, user: {user}, project: {project}."
        ))
        .into());
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn ungrant(
    State(s): State<AppState>,
    _c: Caller,
    Path((project, user, role)): Path<(String, String, String)>,
) -> Result<StatusCode, KsError> {
    not_the_bootstrap_admin(&s, &user)?;
    let (p, u, r) = (project.clone(), user.clone(), role.clone());
    write_revoking(&s, format!("user:{user}"), move |w| {
        w.ungrant(&p, &u, &r).map(|t| ((), Some(t)))
    })
    .await?;
    tracing::info!(project_id = %project, user_id = %user, %role, "role taken away; the user's older tokens are refused");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /role_assignments` with Keystone's filters (`user.id`,
/// `scope.project.id`, `role.id`) and `include_names`.
async fn role_assignments(
    State(s): State<AppState>,
    _c: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let list = all_assignments(
        &s,
        q.get("user.id").cloned(),
        q.get("scope.project.id").cloned(),
        q.get("role.id").cloned(),
    )
    .await?;
    let names = q
        .get("include_names")
        .is_some_and(|v| !matches!(v.to_ascii_lowercase().as_str(), "0" | "false" | "no"));
    let (users, projects) = if names {
        let mut users = HashMap::new();
        let mut projects = HashMap::new();
        for a in &list {
            if !users.contains_key(&a.user_id) {
                let name = user_by_id(&s, a.user_id.clone())
                    .await
                    .map(|u| u.name)
                    .unwrap_or_default();
                users.insert(a.user_id.clone(), name);
            }
            if !projects.contains_key(&a.project_id) {
                let name = project_by_id(&s, a.project_id.clone())
                    .await
                    .map(|p| p.name)
                    .unwrap_or_default();
                projects.insert(a.project_id.clone(), name);
            }
        }
        (users, projects)
    } else {
        Default::default()
    };
    let domain = json!({"id": DEFAULT_DOMAIN, "name": "Default"});
    let view = |a: &Assignment| {
        let mut role = json!({"id": a.role});
        let mut user = json!({"id": a.user_id});
        let mut project = json!({"id": a.project_id});
        if names {
            role["name"] = json!(a.role);
            user["name"] = json!(users.get(&a.user_id));
            user["domain"] = domain.clone();
            project["name"] = json!(projects.get(&a.project_id));
            project["domain"] = domain.clone();
        }
        json!({
            "role": role, "user": user, "scope": {"project": project},
            "links": {"assignment": format!("{}/identity/v3/projects/{}/users/{}/roles/{}", s.base_url, a.project_id, a.user_id, a.role)},
        })
    };
    ok(json!({
        "role_assignments": list.iter().map(view).collect::<Vec<_>>(),
        "links": link(&s, "role_assignments"),
    }))
}

fn domain_view(s: &AppState) -> Value {
    json!({
        "id": DEFAULT_DOMAIN, "name": "Default", "description": "The only domain", "enabled": true,
        "tags": [], "options": {},
        "links": {"self": format!("{}/identity/v3/domains/{DEFAULT_DOMAIN}", s.base_url)},
    })
}

async fn list_domains(State(s): State<AppState>, _c: Caller) -> Reply {
    ok(json!({"domains": [domain_view(&s)], "links": link(&s, "domains")}))
}

async fn show_domain(State(s): State<AppState>, _c: Caller, Path(id): Path<String>) -> Reply {
    if id != DEFAULT_DOMAIN && !id.eq_ignore_ascii_case("Default") {
        return Err(ApiError::not_found(format!("Could not find domain: {id}.")).into());
    }
    ok(json!({"domain": domain_view(&s)}))
}
