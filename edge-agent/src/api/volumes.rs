//! Cinder v3 at `/volume/v3/{project_id}/` (volumes, snapshots, volume
//! types, quotas) and Nova's volume attachments
//! (`/compute/v2.1/servers/{id}/os-volume_attachments`).
//!
//! Writes record a working state and return at once (202, as Cinder);
//! the storage worker makes, grows, reverts and removes the files, and the
//! compute reconciler attaches and detaches, each waking right after the
//! write. Clients wait on `status`, as they do with Cinder.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use roost_common::api::cinder::{
    self, AttachBody, SnapshotCreateBody, VolumeAction, VolumeCreateBody, VolumeUpdateBody,
    MAX_VOLUME_MICROVERSION,
};
use roost_common::model::{Server, Volume, VolumeState};
use roost_common::FieldError;

use super::servers::flag;
use super::{parse_body, ApiError, AppState, Caller};

pub(super) fn routes() -> Router<AppState> {
    let project = Router::new()
        .route("/", get(version))
        .route("/volumes", get(list).post(create))
        .route("/volumes/detail", get(list))
        .route("/volumes/{id}", get(show).put(update).delete(delete))
        .route("/volumes/{id}/action", post(action))
        .route("/snapshots", get(list_snapshots).post(create_snapshot))
        .route("/snapshots/detail", get(list_snapshots))
        .route(
            "/snapshots/{id}",
            get(show_snapshot).delete(delete_snapshot),
        )
        .route("/types", get(types))
        .route("/types/{id}", get(show_type))
        .route("/os-quota-sets/{target}", get(quota))
        .route("/os-quota-sets/{target}/defaults", get(quota_defaults));
    Router::new()
        .route("/", get(versions))
        .route("/v3", get(version))
        .route("/v3/", get(version))
        .nest("/v3/{project}", project)
        .layer(axum::middleware::from_fn(microversion))
}

pub(super) fn attachment_routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v2.1/servers/{id}/os-volume_attachments",
            get(list_attachments).post(attach),
        )
        .route(
            "/v2.1/servers/{id}/os-volume_attachments/{volume}",
            get(show_attachment).delete(detach),
        )
}

/// Answers with the microversion asked for (`OpenStack-API-Version:
/// volume 3.x`), refusing one above [`MAX_VOLUME_MICROVERSION`] as Cinder
/// does.
async fn microversion(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let max = MAX_VOLUME_MICROVERSION;
    let top: u32 = max.trim_start_matches("3.").parse().unwrap_or(0);
    let version = match super::asked_microversion(req.headers(), "volume", None) {
        super::Asked::Default => "3.0".to_string(),
        super::Asked::Latest => max.to_string(),
        super::Asked::Version(3, b) if b <= top => format!("3.{b}"),
        super::Asked::Version(a, b) => {
            return ApiError::not_found(format!(
                "Version {a}.{b} is not supported by the API. Minimum is 3.0 and maximum is {max}."
            ))
            .into_response()
        }
        super::Asked::Invalid(v) => {
            return ApiError::bad_request(format!(
                "API Version String {v} is of invalid format. Must be of format MajorNum.MinorNum."
            ))
            .into_response()
        }
    };
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("volume {version}")) {
        h.insert("OpenStack-API-Version", v);
    }
    h.insert("Vary", HeaderValue::from_static("OpenStack-API-Version"));
    resp
}

/// `GET /volume/`: the versions document.
async fn versions(State(s): State<AppState>) -> Response {
    let href = format!("{}/volume/v3/", s.base_url);
    (
        StatusCode::MULTIPLE_CHOICES,
        Json(cinder::cinder_versions(&href)),
    )
        .into_response()
}

/// `GET /volume/v3/` (and the project root): the v3 version document.
async fn version(State(s): State<AppState>) -> Json<Value> {
    let href = format!("{}/volume/v3/", s.base_url);
    let mut doc = cinder::cinder_versions(&href);
    let v = doc["versions"][0].take();
    Json(json!({ "version": v }))
}

/// Callers act in their own project's path; admins in any.
fn check_project(c: &Caller, project: &str) -> Result<(), ApiError> {
    if c.is_cloud_admin() || c.0.project_id == project {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "Policy doesn't allow a project's volumes to be used by another: the token is scoped to project {}, the path names {project}",
            c.0.project_id
        )))
    }
}

/// The disk `v` is attached to `server` as, if it is (also while it is
/// being detached).
fn device_of(server: Option<&Server>, v: &Volume) -> Option<String> {
    if v.status.device.is_some() {
        return v.status.device.clone();
    }
    let i = server?.spec.volumes.iter().position(|id| *id == v.id)?;
    Some(crate::store::volume_device(Some(v), i))
}

/// The disk volume `volume_id` is attached to `server` as, if it is.
async fn device_in(
    s: &AppState,
    server: &Server,
    volume_id: &str,
) -> Result<Option<String>, ApiError> {
    let Some(i) = server.spec.volumes.iter().position(|v| v == volume_id) else {
        return Ok(None);
    };
    let v = s.store.volume(volume_id.to_string(), None).await.ok();
    Ok(Some(crate::store::volume_device(v.as_ref(), i)))
}

async fn view(s: &AppState, v: &Volume) -> Result<Value, ApiError> {
    let server = match &v.status.attached_to {
        Some(id) => s.store.server(id.clone()).await?,
        None => None,
    };
    Ok(cinder::cinder_volume(
        v,
        device_of(server.as_ref(), v).as_deref(),
    ))
}

#[derive(Debug, Default, serde::Deserialize)]
struct ListParams {
    all_tenants: Option<String>,
    name: Option<String>,
    status: Option<String>,
}

impl ListParams {
    /// Own project's, unless an admin asks for all (as Cinder).
    fn scope(&self, c: &Caller) -> Result<Option<String>, ApiError> {
        let all = flag("all_tenants", self.all_tenants.as_deref())?;
        if all {
            c.allow("volume:volumes:list-all-projects")?;
        }
        Ok((!all).then(|| c.0.project_id.clone()))
    }
}

async fn list(
    State(s): State<AppState>,
    c: Caller,
    Path(project): Path<String>,
    Query(q): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    check_project(&c, &project)?;
    let mut out = Vec::new();
    for v in s.store.volumes(q.scope(&c)?).await? {
        if q.name.as_ref().is_some_and(|n| *n != v.spec.name)
            || q.status
                .as_ref()
                .is_some_and(|st| st != v.status.state.as_str())
        {
            continue;
        }
        out.push(view(&s, &v).await?);
    }
    Ok(Json(json!({ "volumes": out })))
}

async fn show(
    State(s): State<AppState>,
    c: Caller,
    Path((project, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_project(&c, &project)?;
    let v = s.store.volume(id, c.scope()).await?;
    Ok(Json(json!({ "volume": view(&s, &v).await? })))
}

async fn create(
    State(s): State<AppState>,
    c: Caller,
    Path(project): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_project(&c, &project)?;
    let body: VolumeCreateBody = parse_body(&body)?;
    let spec = body.volume.into_spec(&c.0.project_id, &c.0.user_id)?;
    if let roost_common::model::VolumeSource::Backup(b) = &spec.source {
        c.allow("volume:volumes:create-from-backup")?;
        if !s.has_region {
            return Err(roost_common::FieldError::new(
                "volume.backup_id",
                b,
                "this site has no region to bring a backup from (no region section in its config)",
            )
            .into());
        }
    }
    if spec.volume_type == roost_common::model::CENTRAL_REPLICATED && !s.has_region {
        return Err(roost_common::FieldError::new(
            "volume.volume_type",
            &spec.volume_type,
            "this site has no region to back the volume up to (no region section in its config): use edge-local",
        )
        .into());
    }
    if let roost_common::model::VolumeSource::Image(id) = &spec.source {
        super::images::check_bootable_by(&s, &c, id, "volume.imageRef").await?;
    }
    let (scope, dir) = (c.scope(), s.volumes_dir.clone());
    let from_snapshot = match &spec.source {
        roost_common::model::VolumeSource::Snapshot(id) => Some(id.clone()),
        _ => None,
    };
    let made = s
        .store
        .write(move |w| w.create_volume(spec, &scope, &dir))
        .await;
    let v = recall_if_cold(&s, from_snapshot.as_deref(), made).await?;
    s.storage_wake.notify_one();
    tracing::info!(volume = %v.id, size_gb = v.spec.size_gb, "volume recorded");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "volume": view(&s, &v).await? })),
    )
        .into_response())
}

async fn update(
    State(s): State<AppState>,
    c: Caller,
    Path((project, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    check_project(&c, &project)?;
    let body: VolumeUpdateBody = parse_body(&body)?;
    let scope = c.scope();
    let v = s
        .store
        .write(move |w| {
            w.update_volume(&id, &scope, |spec| {
                let u = body.volume;
                if let Some(n) = u.name {
                    spec.name = n;
                }
                if let Some(d) = u.description {
                    spec.description = Some(d);
                }
                if let Some(m) = u.metadata {
                    spec.metadata = m;
                }
            })
        })
        .await?;
    Ok(Json(json!({ "volume": view(&s, &v).await? })))
}

async fn delete(
    State(s): State<AppState>,
    c: Caller,
    Path((project, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_project(&c, &project)?;
    let scope = c.scope();
    s.store.write(move |w| w.delete_volume(&id, &scope)).await?;
    s.storage_wake.notify_one();
    Ok(StatusCode::ACCEPTED)
}

/// A write refused because the snapshot it reads is in the cold tier:
/// the snapshot is set coming back, for the next try.
async fn recall_if_cold<T>(
    s: &AppState,
    snapshot: Option<&str>,
    r: Result<T, crate::store::WriteError>,
) -> Result<T, ApiError> {
    if let (Err(crate::store::WriteError::Invalid(e)), Some(id)) = (&r, snapshot) {
        if e.value == id && e.rule.starts_with("snapshot is in the cold tier") {
            let id = id.to_string();
            if s.store.write(move |w| w.recall_snapshot(&id)).await? {
                s.backup_wake.notify_one();
            }
        }
    }
    Ok(r?)
}

async fn action(
    State(s): State<AppState>,
    c: Caller,
    Path((project, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    check_project(&c, &project)?;
    let act: VolumeAction = parse_body(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "{}; the actions this site takes are os-extend, revert and os-reset_status",
            e.message
        ))
    })?;
    let scope = c.scope();
    match act {
        VolumeAction::Extend { new_size } => {
            s.store
                .write(move |w| w.extend_volume(&id, &scope, new_size))
                .await?
        }
        VolumeAction::Revert { snapshot_id } => {
            let snap = snapshot_id.clone();
            let r = s
                .store
                .write(move |w| w.revert_volume(&id, &scope, &snapshot_id))
                .await;
            recall_if_cold(&s, Some(&snap), r).await?
        }
        VolumeAction::ResetStatus {
            status,
            attach_status,
            migration_status: _,
        } => {
            c.allow("volume:volumes:action:os-reset_status")?;
            let want = match status.as_str() {
                "available" => VolumeState::Available,
                "error" => VolumeState::Error,
                _ => {
                    return Err(FieldError::new(
                        "os-reset_status.status",
                        &status,
                        "must be available or error (the states this site lets an admin set)",
                    )
                    .into())
                }
            };
            if let Some(a) = attach_status.filter(|a| a != "detached") {
                return Err(FieldError::new(
                    "os-reset_status.attach_status",
                    a,
                    "must be detached: attachments follow their servers here",
                )
                .into());
            }
            // What the file is, so "available" is never a size it lacks.
            let file = s.store.volume(id.clone(), scope.clone()).await?.status.file;
            let whole_size_gb = match (want, file) {
                (VolumeState::Available, Some(f)) => {
                    tokio::task::spawn_blocking(move || crate::storage::qemu_img::whole_size_gb(&f))
                        .await
                        .ok()
                        .flatten()
                }
                _ => None,
            };
            s.store
                .write(move |w| w.reset_volume(&id, &scope, want, whole_size_gb))
                .await?
        }
    };
    s.storage_wake.notify_one();
    Ok(StatusCode::ACCEPTED)
}

async fn list_snapshots(
    State(s): State<AppState>,
    c: Caller,
    Path(project): Path<String>,
    Query(q): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    check_project(&c, &project)?;
    let out: Vec<Value> = s
        .store
        .snapshots(q.scope(&c)?)
        .await?
        .iter()
        .filter(|x| q.name.as_ref().is_none_or(|n| *n == x.spec.name))
        .filter(|x| {
            q.status
                .as_ref()
                .is_none_or(|st| st == x.status.state.as_str())
        })
        .map(cinder::cinder_snapshot)
        .collect();
    Ok(Json(json!({ "snapshots": out })))
}

async fn show_snapshot(
    State(s): State<AppState>,
    c: Caller,
    Path((project, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_project(&c, &project)?;
    let snap = s.store.snapshot(id, c.scope()).await?;
    Ok(Json(json!({ "snapshot": cinder::cinder_snapshot(&snap) })))
}

async fn create_snapshot(
    State(s): State<AppState>,
    c: Caller,
    Path(project): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    check_project(&c, &project)?;
    let body: SnapshotCreateBody = parse_body(&body)?;
    let spec = body.snapshot.into_spec(&c.0.project_id, &c.0.user_id)?;
    let (scope, dir) = (c.scope(), s.volumes_dir.join("snapshots"));
    let snap = s
        .store
        .write(move |w| w.create_snapshot(spec, &scope, &dir))
        .await?;
    s.storage_wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "snapshot": cinder::cinder_snapshot(&snap) })),
    )
        .into_response())
}

async fn delete_snapshot(
    State(s): State<AppState>,
    c: Caller,
    Path((project, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_project(&c, &project)?;
    let scope = c.scope();
    s.store
        .write(move |w| w.delete_snapshot(&id, &scope))
        .await?;
    s.storage_wake.notify_one();
    Ok(StatusCode::ACCEPTED)
}

async fn types(c: Caller, Path(project): Path<String>) -> Result<Json<Value>, ApiError> {
    check_project(&c, &project)?;
    Ok(Json(json!({ "volume_types": cinder::cinder_types() })))
}

async fn show_type(
    c: Caller,
    Path((project, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_project(&c, &project)?;
    let id = if id == "default" {
        "edge-local".to_string()
    } else {
        id
    };
    cinder::cinder_types()
        .into_iter()
        .find(|t| t["id"] == id.as_str() || t["name"] == id.as_str())
        .map(|t| Json(json!({ "volume_type": t })))
        .ok_or_else(|| ApiError::not_found(format!("Volume type {id} could not be found.")))
}

#[derive(Debug, serde::Deserialize)]
struct QuotaParams {
    usage: Option<String>,
}

/// Cinder's quotas: nothing limits volumes at a site yet, so every limit
/// is -1; usage is counted.
async fn quota(
    State(s): State<AppState>,
    c: Caller,
    Path((project, target)): Path<(String, String)>,
    Query(q): Query<QuotaParams>,
) -> Result<Json<Value>, ApiError> {
    check_project(&c, &project)?;
    check_project(&c, &target)?;
    let usage = flag("usage", q.usage.as_deref())?;
    let (volumes, gigabytes, snapshots) = s.store.volume_usage(Some(target.clone())).await?;
    let mut set = serde_json::Map::new();
    set.insert("id".into(), json!(target));
    for (name, used) in [
        ("volumes", volumes),
        ("gigabytes", gigabytes),
        ("snapshots", snapshots),
        ("backups", 0),
        ("backup_gigabytes", 0),
        ("groups", 0),
        ("per_volume_gigabytes", 0),
    ] {
        let value = if usage {
            json!({"limit": -1, "in_use": used, "reserved": 0, "allocated": 0})
        } else {
            json!(-1)
        };
        set.insert(name.into(), value);
    }
    Ok(Json(json!({ "quota_set": set })))
}

async fn quota_defaults(
    c: Caller,
    Path((project, target)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_project(&c, &project)?;
    let mut set = serde_json::Map::new();
    set.insert("id".into(), json!(target));
    for name in [
        "volumes",
        "gigabytes",
        "snapshots",
        "backups",
        "backup_gigabytes",
        "groups",
        "per_volume_gigabytes",
    ] {
        set.insert(name.into(), json!(-1));
    }
    Ok(Json(json!({ "quota_set": set })))
}

// ------------------------------------------------------- Nova attachments

async fn server_in(s: &AppState, c: &Caller, id: &str) -> Result<Server, ApiError> {
    s.store
        .server(id.to_string())
        .await?
        .filter(|x| c.scope().is_none_or(|p| p == x.spec.project_id))
        .ok_or_else(|| ApiError::not_found(format!("Instance {id} could not be found.")))
}

async fn list_attachments(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let server = server_in(&s, &c, &id).await?;
    let mut out = Vec::with_capacity(server.spec.volumes.len());
    for v in &server.spec.volumes {
        let dev = device_in(&s, &server, v).await?.unwrap_or_default();
        out.push(cinder::nova_attachment(v, &id, &dev));
    }
    Ok(Json(json!({ "volumeAttachments": out })))
}

async fn show_attachment(
    State(s): State<AppState>,
    c: Caller,
    Path((id, volume)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let server = server_in(&s, &c, &id).await?;
    let dev = device_in(&s, &server, &volume).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "volume_id {volume} not found as an attachment of instance {id}"
        ))
    })?;
    Ok(Json(
        json!({ "volumeAttachment": cinder::nova_attachment(&volume, &id, &dev) }),
    ))
}

async fn attach(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let body: AttachBody = parse_body(&body)?;
    let volume = body.volume_attachment.volume_id;
    let (sid, vid, scope) = (id.clone(), volume.clone(), c.scope());
    s.store
        .write(move |w| w.attach_volume(&sid, &vid, &scope))
        .await?;
    s.queue.push(&id);
    let server = server_in(&s, &c, &id).await?;
    let dev = device_in(&s, &server, &volume).await?.unwrap_or_default();
    tracing::info!(server_id = %id, volume = %volume, device = %dev, "volume attach asked");
    Ok(Json(
        json!({ "volumeAttachment": cinder::nova_attachment(&volume, &id, &dev) }),
    ))
}

async fn detach(
    State(s): State<AppState>,
    c: Caller,
    Path((id, volume)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let (sid, vid, scope) = (id.clone(), volume.clone(), c.scope());
    s.store
        .write(move |w| w.detach_volume(&sid, &vid, &scope))
        .await?;
    s.queue.push(&id);
    Ok(StatusCode::ACCEPTED)
}
