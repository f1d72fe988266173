//! Nova servers: create, list, show, delete, actions.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use roost_common::api::{Nics, ServerAction, ServerCreateBody};
use roost_common::model::{NicRequest, ServerSpec};
use roost_common::FieldError;

use super::{accepted, parse_body, views, ApiError, AppState, Caller};
use crate::store::{NewServer, ServerIntent, ServerQuery};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v2.1/servers", get(list).post(create))
        .route("/v2.1/servers/detail", get(list_detail))
        .route("/v2.1/servers/{id}", get(show).put(update).delete(delete))
        .route("/v2.1/servers/{id}/action", post(action))
}

/// Query parameters of the server lists. As in Nova, filters Roost does not
/// know are ignored rather than refused (clients send several by default);
/// the ones it knows are checked.
#[derive(Debug, Default, Deserialize)]
struct ListParams {
    name: Option<String>,
    status: Option<String>,
    host: Option<String>,
    marker: Option<String>,
    limit: Option<usize>,
    all_tenants: Option<String>,
    all_projects: Option<String>,
    project_id: Option<String>,
    tenant_id: Option<String>,
    deleted: Option<String>,
}

/// A query-string boolean as OpenStack clients write them.
pub(super) fn flag(field: &str, v: Option<&str>) -> Result<bool, ApiError> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None | Some("0" | "false" | "no" | "off") => Ok(false),
        Some("" | "1" | "true" | "yes" | "on") => Ok(true),
        Some(other) => Err(FieldError::new(field, other, "must be true or false").into()),
    }
}

/// Most servers one page returns.
const MAX_LIMIT: usize = 1000;

impl ListParams {
    fn query(self, caller: &Caller) -> Result<ServerQuery, ApiError> {
        let all = flag("all_tenants", self.all_tenants.as_deref())?
            || flag("all_projects", self.all_projects.as_deref())?;
        if all {
            caller.allow("compute:servers:list-all-projects")?;
        }
        let project = self.project_id.or(self.tenant_id);
        let project_id = match (all, project) {
            (_, Some(p)) => {
                if p != caller.0.project_id {
                    caller.allow("compute:servers:list-all-projects")?;
                }
                Some(p)
            }
            (true, None) => None,
            (false, None) => Some(caller.0.project_id.clone()),
        };
        if flag("deleted", self.deleted.as_deref())? {
            return Err(FieldError::new(
                "deleted",
                "true",
                "deleted servers are removed, not kept; leave it out",
            )
            .into());
        }
        let limit = match self.limit {
            Some(0) => {
                return Err(FieldError::new(
                    "limit",
                    0,
                    format!("must be between 1 and {MAX_LIMIT}"),
                )
                .into())
            }
            Some(n) => Some(n.min(MAX_LIMIT)),
            None => Some(MAX_LIMIT),
        };
        Ok(ServerQuery {
            project_id,
            name: self.name,
            status: self.status,
            host: self.host,
            marker: self.marker,
            limit,
        })
    }
}

fn list_params(
    q: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<ListParams, ApiError> {
    q.map(|Query(p)| p)
        .map_err(|e| ApiError::bad_request(format!("query string: {}", e.body_text())))
}

async fn list_servers(
    s: &AppState,
    caller: &Caller,
    uri: &axum::http::Uri,
    params: ListParams,
    render: fn(&str, &roost_common::model::Server) -> serde_json::Value,
) -> Result<Json<serde_json::Value>, ApiError> {
    let q = params.query(caller)?;
    let limit = q.limit;
    let servers = s.store.servers(q).await?;
    let mut items: Vec<serde_json::Value> =
        servers.iter().map(|v| render(&s.base_url, v)).collect();
    fill_addresses(s, &mut items).await?;
    let mut body = json!({ "servers": items });
    if let (Some(limit), Some(last)) = (limit, servers.last()) {
        if servers.len() == limit {
            body["servers_links"] =
                json!([{"rel": "next", "href": next_link(&s.base_url, uri, &last.id.to_string())}]);
        }
    }
    Ok(Json(body))
}

/// The same request (path and every filter, as the client wrote them) with
/// the marker moved on to the last server of this page. `uri` is the path
/// inside the `/compute` router.
fn next_link(base_url: &str, uri: &axum::http::Uri, marker: &str) -> String {
    let mut query: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("marker="))
        .collect();
    let marker = format!("marker={marker}");
    query.push(&marker);
    format!("{base_url}/compute{}?{}", uri.path(), query.join("&"))
}

async fn list(
    State(s): State<AppState>,
    caller: Caller,
    uri: axum::http::Uri,
    q: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    list_servers(&s, &caller, &uri, list_params(q)?, views::server_ref).await
}

async fn list_detail(
    State(s): State<AppState>,
    caller: Caller,
    uri: axum::http::Uri,
    q: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    list_servers(&s, &caller, &uri, list_params(q)?, views::server).await
}

async fn show(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let server = s
        .store
        .server(id.clone())
        .await?
        .filter(|v| caller.scope().is_none_or(|p| p == v.spec.project_id))
        .ok_or_else(|| ApiError::not_found(format!("Instance {id} could not be found.")))?;
    let mut items = vec![views::server(&s.base_url, &server)];
    fill_addresses(&s, &mut items).await?;
    Ok(Json(json!({"server": items.remove(0)})))
}

/// `PUT /servers/{id}`: a new name.
async fn update(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let change = parse_body::<roost_common::api::ServerUpdateBody>(&body)?.server;
    let project = caller.scope();
    let server = match change.name {
        Some(name) => {
            s.store
                .write(move |w| w.rename_server(&id, project.as_deref(), &name))
                .await?
        }
        None => s
            .store
            .server(id.clone())
            .await?
            .filter(|v| project.as_deref().is_none_or(|p| p == v.spec.project_id))
            .ok_or_else(|| ApiError::not_found(format!("Instance {id} could not be found.")))?,
    };
    let mut items = vec![views::server(&s.base_url, &server)];
    fill_addresses(&s, &mut items).await?;
    Ok(Json(json!({"server": items.remove(0)})))
}

/// Nova's `addresses` of rendered servers that have that field: per
/// network name, each port's addresses with version and MAC.
async fn fill_addresses(s: &AppState, items: &mut [serde_json::Value]) -> Result<(), ApiError> {
    if !items.iter().any(|i| i.get("addresses").is_some()) {
        return Ok(());
    }
    let (ports, networks) = s
        .store
        .read(|c| {
            use crate::store::network::read;
            Ok((
                read::ports(c, &None, None, None)?,
                read::networks(c, &None)?,
            ))
        })
        .await?;
    let name = |id: &str| {
        networks
            .iter()
            .find(|n| n.id == id)
            .map_or(id.to_string(), |n| {
                if n.spec.name.is_empty() {
                    n.id.clone()
                } else {
                    n.spec.name.clone()
                }
            })
    };
    for item in items.iter_mut() {
        let Some(id) = item["id"].as_str().map(str::to_string) else {
            continue;
        };
        let mut addresses = serde_json::Map::new();
        for p in ports
            .iter()
            .filter(|p| p.spec.device_id.as_deref() == Some(id.as_str()))
        {
            let list = addresses
                .entry(name(&p.spec.network_id))
                .or_insert_with(|| json!([]));
            for f in &p.status.fixed_ips {
                if let Some(l) = list.as_array_mut() {
                    l.push(json!({
                        "addr": f.ip_address,
                        "version": if f.ip_address.is_ipv4() { 4 } else { 6 },
                        "OS-EXT-IPS:type": "fixed",
                        "OS-EXT-IPS-MAC:mac_addr": p.status.mac_address,
                    }));
                }
            }
        }
        if item.get("addresses").is_some() {
            item["addresses"] = serde_json::Value::Object(addresses);
        }
    }
    Ok(())
}

/// The last path segment of a reference that may be a URL.
fn ref_id(r: &str) -> String {
    r.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(r)
        .to_string()
}

async fn create(
    State(s): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: ServerCreateBody = parse_body(&body)?;
    let req = body.server;
    req.check_supported()?;
    let image_id = req.image_id()?;
    super::images::check_bootable_by(&s, &caller, &image_id, "server.imageRef").await?;
    let hints = body
        .scheduler_hints
        .or(body.scheduler_hints_legacy)
        .unwrap_or_default();
    let availability_zone = match req.availability_zone.as_deref() {
        None | Some("") => None,
        Some(az) if az.contains(':') => {
            return Err(FieldError::new(
                "server.availability_zone",
                az,
                "forcing a host with 'zone:host' is not supported",
            )
            .into())
        }
        Some(az) => Some(az.to_string()),
    };
    let networks =
        match req.nics()? {
            Nics::None => Vec::new(),
            Nics::List(l) => l,
            // Nova's rule: the project's network if it has exactly one.
            Nics::Auto => {
                let project = Some(caller.0.project_id.clone());
                let nets = s
                    .store
                    .read(move |c| crate::store::network::read::networks(c, &project))
                    .await?;
                match nets.as_slice() {
                    [] => Vec::new(),
                    [one] => vec![NicRequest::Network {
                        id: one.id.clone(),
                        fixed_ip: None,
                    }],
                    _ => return Err(ApiError::conflict(
                        "Multiple possible networks found, use a Network ID to be more specific.",
                    )),
                }
            }
        };
    let spec = ServerSpec {
        availability_zone,
        server_group: hints.group,
        metadata: req.metadata,
        networks,
        ..ServerSpec::new(
            req.name,
            caller.0.project_id.clone(),
            caller.0.user_id.clone(),
            req.flavor_ref.as_id(),
            image_id,
        )
    };
    let server = s
        .store
        .write(move |w| w.create_server(NewServer { spec, id: None }))
        .await?;
    s.queue.push(&server.id);
    // Its ports' addresses go to the network's DHCP server now.
    s.net_changed.notify_one();
    tracing::info!(server_id = %server.id, host = server.status.host.as_deref().unwrap_or(""), "server created");
    let location = format!("{}/compute/v2.1/servers/{}", s.base_url, server.id);
    let body = json!({"server": {
        "id": server.id,
        "links": views::server_ref(&s.base_url, &server)["links"],
        "OS-DCF:diskConfig": "MANUAL",
        "security_groups": [{"name": "default"}],
    }});
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

async fn change(
    s: &AppState,
    caller: &Caller,
    id: String,
    intent: ServerIntent,
) -> Result<(), ApiError> {
    let scope = caller.scope();
    let server = s
        .store
        .write(move |w| w.change_server(&id, scope.as_deref(), intent))
        .await?;
    s.queue.push(&server.id);
    Ok(())
}

async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    change(&s, &caller, id, ServerIntent::Delete).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn action(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let asked = parse_body::<ServerAction>(&body)?;
    caller.allow(&format!(
        "compute:servers:action:{}",
        match asked {
            ServerAction::Stop(_) => "os-stop",
            ServerAction::Start(_) => "os-start",
            ServerAction::Reboot(_) => "reboot",
            ServerAction::Rebuild(_) => "rebuild",
        }
    ))?;
    let intent = match asked {
        ServerAction::Stop(_) => ServerIntent::Stop,
        ServerAction::Start(_) => ServerIntent::Start,
        ServerAction::Reboot(r) => ServerIntent::Reboot { hard: r.hard()? },
        ServerAction::Rebuild(r) => {
            let image_id = ref_id(&r.image_ref);
            super::images::check_bootable_by(&s, &caller, &image_id, "rebuild.imageRef").await?;
            ServerIntent::Rebuild { image_id }
        }
    };
    change(&s, &caller, id, intent).await?;
    Ok(accepted())
}
