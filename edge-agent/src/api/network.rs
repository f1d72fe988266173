//! Neutron: networks, subnets, ports, security groups and their rules,
//! under `/network/v2.0/`, in Neutron's JSON shapes (errors as
//! `{"NeutronError": {"type", "message", "detail"}}`).
//!
//! Lists take Neutron's equality filters (`?name=`, `?network_id=`,
//! `?device_id=`, any field of the resource); other query keys (`fields`,
//! `sort_key`, ...) are ignored.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use roost_common::api::{
    NetworkCreateBody, PortCreateBody, SecurityGroupCreateBody, SecurityGroupRuleCreateBody,
    SubnetCreateBody,
};
use roost_common::model::{
    openstack_time, Direction, Network, Port, SecurityGroup, SecurityGroupRule, Subnet,
};

use super::{parse_body, ApiError, AppState, Caller};
use crate::store::network::{read, Scope};
use crate::store::WriteError;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(versions))
        .route("/v2.0", get(extensions_root))
        .route("/v2.0/extensions", get(extensions))
        .route("/v2.0/networks", get(list_networks).post(create_network))
        .route(
            "/v2.0/networks/{id}",
            get(show_network).delete(delete_network),
        )
        .route("/v2.0/subnets", get(list_subnets).post(create_subnet))
        .route("/v2.0/subnets/{id}", get(show_subnet).delete(delete_subnet))
        .route("/v2.0/ports", get(list_ports).post(create_port))
        .route(
            "/v2.0/ports/{id}",
            get(show_port).put(update_port).delete(delete_port),
        )
        .route("/v2.0/security-groups", get(list_groups).post(create_group))
        .route(
            "/v2.0/security-groups/{id}",
            get(show_group).delete(delete_group),
        )
        .route(
            "/v2.0/security-group-rules",
            get(list_rules).post(create_rule),
        )
        .route(
            "/v2.0/security-group-rules/{id}",
            get(show_rule).delete(delete_rule),
        )
}

/// An error in Neutron's shape.
#[derive(Debug)]
pub struct NeutronError(ApiError);

impl From<ApiError> for NeutronError {
    fn from(e: ApiError) -> Self {
        NeutronError(e)
    }
}

impl From<WriteError> for NeutronError {
    fn from(e: WriteError) -> Self {
        NeutronError(e.into())
    }
}

impl From<roost_common::FieldError> for NeutronError {
    fn from(e: roost_common::FieldError) -> Self {
        NeutronError(e.into())
    }
}

impl IntoResponse for NeutronError {
    fn into_response(self) -> Response {
        let e = self.0;
        if e.status == StatusCode::UNAUTHORIZED {
            return e.into_response();
        }
        let kind = match e.status {
            StatusCode::BAD_REQUEST => "BadRequest",
            StatusCode::FORBIDDEN => "PolicyNotAuthorized",
            StatusCode::NOT_FOUND => "NotFound",
            StatusCode::CONFLICT => "Conflict",
            _ => "NeutronError",
        };
        (
            e.status,
            Json(json!({"NeutronError": {"type": kind, "message": e.message, "detail": ""}})),
        )
            .into_response()
    }
}

type Reply = Result<Response, NeutronError>;

fn ok(v: Value) -> Reply {
    Ok(Json(v).into_response())
}

fn created(v: Value) -> Reply {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

fn no_content() -> Reply {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Keeps the items whose fields equal every filter that names one of them.
fn filtered(items: Vec<Value>, q: &HashMap<String, String>) -> Vec<Value> {
    items
        .into_iter()
        .filter(|item| {
            q.iter().all(|(k, want)| match item.get(k) {
                None => true,
                Some(Value::String(s)) => s == want,
                Some(Value::Bool(b)) => want.eq_ignore_ascii_case(&b.to_string()),
                Some(Value::Null) => want.is_empty(),
                Some(Value::Number(n)) => want.parse::<f64>().ok() == n.as_f64(),
                // Lists and objects are not filtered on.
                Some(_) => true,
            })
        })
        .collect()
}

fn scope(c: &Caller) -> Scope {
    c.scope()
}

pub(super) async fn versions(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"versions": [{
        "id": "v2.0", "status": "CURRENT",
        "links": [{"rel": "self", "href": format!("{}/network/v2.0/", s.base_url)}]
    }]}))
}

async fn extensions_root(State(s): State<AppState>) -> Json<Value> {
    let link = |name: &str| {
        json!({"name": name, "collection": name,
               "links": [{"rel": "self", "href": format!("{}/network/v2.0/{name}", s.base_url)}]})
    };
    Json(json!({"resources": [
        link("networks"), link("subnets"), link("ports"),
        link("security-groups"), link("security-group-rules")
    ]}))
}

/// `GET /v2.0/extensions`: the Neutron API extensions this site implements
/// (clients ask before using one).
async fn extensions(_c: Caller) -> Json<Value> {
    let ext = |alias: &str, name: &str, description: &str| {
        json!({"alias": alias, "name": name, "description": description,
               "updated": "2013-01-01T10:00:00-00:00", "links": []})
    };
    Json(json!({"extensions": [
        ext("security-group", "security-group", "The security groups extension."),
        ext("provider", "Provider Network", "Expose mapping of virtual networks to physical networks"),
        ext("quotas", "Quota management support", "Expose functions for quotas management per project"),
    ]}))
}

fn common(
    id: &str,
    project: &str,
    created: &chrono::DateTime<chrono::Utc>,
    updated: &chrono::DateTime<chrono::Utc>,
) -> Value {
    json!({
        "id": id,
        "tenant_id": project,
        "project_id": project,
        "description": "",
        "tags": [],
        "revision_number": 0,
        "created_at": openstack_time(created),
        "updated_at": openstack_time(updated),
    })
}

fn merge(mut base: Value, more: Value) -> Value {
    if let (Some(b), Value::Object(m)) = (base.as_object_mut(), more) {
        b.extend(m);
    }
    base
}

pub fn network_view(n: &Network, subnets: &[Subnet]) -> Value {
    merge(
        common(&n.id, &n.spec.project_id, &n.created_at, &n.updated_at),
        json!({
            "name": n.spec.name,
            "status": "ACTIVE",
            "admin_state_up": n.spec.admin_state_up,
            "shared": n.spec.shared,
            "subnets": subnets.iter().filter(|s| s.spec.network_id == n.id).map(|s| &s.id).collect::<Vec<_>>(),
            "mtu": n.spec.mtu,
            "provider:network_type": n.spec.kind.as_str(),
            "provider:segmentation_id": n.spec.segmentation_id,
            "provider:physical_network": n.spec.physical_network,
            "router:external": false,
            "port_security_enabled": true,
            "availability_zones": [],
            "availability_zone_hints": [],
            "ipv4_address_scope": null,
            "ipv6_address_scope": null,
        }),
    )
}

pub fn subnet_view(s: &Subnet) -> Value {
    merge(
        common(&s.id, &s.spec.project_id, &s.created_at, &s.updated_at),
        json!({
            "name": s.spec.name,
            "network_id": s.spec.network_id,
            "ip_version": s.spec.cidr.ip_version(),
            "cidr": String::from(s.spec.cidr),
            "gateway_ip": s.spec.gateway_ip,
            "allocation_pools": s.spec.allocation_pools,
            "dns_nameservers": s.spec.dns_nameservers,
            "host_routes": [],
            "enable_dhcp": s.spec.enable_dhcp,
            "ipv6_ra_mode": s.spec.ipv6_ra_mode.map(|m| m.as_str()),
            "ipv6_address_mode": s.spec.ipv6_address_mode.map(|m| m.as_str()),
            "subnetpool_id": null,
            "service_types": [],
        }),
    )
}

pub fn port_view(p: &Port) -> Value {
    merge(
        common(&p.id, &p.spec.project_id, &p.created_at, &p.updated_at),
        json!({
            "name": p.spec.name,
            "network_id": p.spec.network_id,
            "mac_address": p.status.mac_address,
            "admin_state_up": p.spec.admin_state_up,
            "status": if p.status.up { "ACTIVE" } else { "DOWN" },
            "device_id": p.spec.device_id.clone().unwrap_or_default(),
            "device_owner": p.spec.device_owner.clone().unwrap_or_default(),
            "fixed_ips": p.status.fixed_ips,
            "security_groups": p.status.security_groups,
            "allowed_address_pairs": [],
            "extra_dhcp_opts": [],
            "binding:vnic_type": "normal",
            "binding:host_id": "",
            "port_security_enabled": true,
        }),
    )
}

pub fn rule_view(r: &SecurityGroupRule) -> Value {
    merge(
        common(&r.id, &r.spec.project_id, &r.created_at, &r.updated_at),
        json!({
            "security_group_id": r.spec.security_group_id,
            "direction": match r.spec.direction { Direction::Ingress => "ingress", Direction::Egress => "egress" },
            "ethertype": if r.spec.ip_version == 6 { "IPv6" } else { "IPv4" },
            "protocol": r.spec.protocol,
            "port_range_min": r.spec.port_range_min,
            "port_range_max": r.spec.port_range_max,
            "remote_ip_prefix": r.spec.remote_ip_prefix.map(String::from),
            "remote_group_id": r.spec.remote_group_id,
        }),
    )
}

pub fn group_view(g: &SecurityGroup, rules: &[SecurityGroupRule]) -> Value {
    merge(
        common(&g.id, &g.spec.project_id, &g.created_at, &g.updated_at),
        json!({
            "name": g.spec.name,
            "description": g.spec.description,
            "stateful": true,
            "security_group_rules": rules.iter().map(rule_view).collect::<Vec<_>>(),
        }),
    )
}

// ---------------------------------------------------------------- networks

async fn list_networks(
    State(s): State<AppState>,
    c: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let sc = scope(&c);
    let (nets, subnets) = s
        .store
        .read(move |conn| Ok((read::networks(conn, &sc)?, read::subnets(conn, &sc, None)?)))
        .await?;
    let items = nets.iter().map(|n| network_view(n, &subnets)).collect();
    ok(json!({"networks": filtered(items, &q)}))
}

async fn show_network(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Reply {
    let sc = scope(&c);
    let (n, subnets) = s
        .store
        .read(move |conn| {
            Ok((
                read::network(conn, &id, &sc)?,
                read::subnets(conn, &sc, None)?,
            ))
        })
        .await?;
    ok(json!({"network": network_view(&n, &subnets)}))
}

async fn create_network(State(s): State<AppState>, c: Caller, body: Bytes) -> Reply {
    let spec = parse_body::<NetworkCreateBody>(&body)?
        .network
        .into_spec(&c.0.project_id)?;
    if spec.segmentation_id.is_some() || spec.physical_network.is_some() {
        c.allow("network:networks:provider")?;
    }
    if spec.shared {
        c.allow("network:networks:shared")?;
    }
    let n = s.store.write(move |w| w.create_network(spec)).await?;
    s.net_changed.notify_one();
    tracing::info!(network_id = %n.id, kind = n.spec.kind.as_str(), segment = ?n.spec.segmentation_id, "network created");
    created(json!({"network": network_view(&n, &[])}))
}

async fn delete_network(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Reply {
    let sc = scope(&c);
    let gone = id.clone();
    s.store.write(move |w| w.delete_network(&id, &sc)).await?;
    s.net_changed.notify_one();
    tracing::info!(network_id = %gone, "network deleted");
    no_content()
}

// ---------------------------------------------------------------- subnets

async fn list_subnets(
    State(s): State<AppState>,
    c: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let sc = scope(&c);
    let subnets = s
        .store
        .read(move |conn| read::subnets(conn, &sc, None))
        .await?;
    ok(json!({"subnets": filtered(subnets.iter().map(subnet_view).collect(), &q)}))
}

async fn show_subnet(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Reply {
    let sc = scope(&c);
    let sub = s
        .store
        .read(move |conn| read::subnet(conn, &id, &sc))
        .await?;
    ok(json!({"subnet": subnet_view(&sub)}))
}

async fn create_subnet(State(s): State<AppState>, c: Caller, body: Bytes) -> Reply {
    let spec = parse_body::<SubnetCreateBody>(&body)?
        .subnet
        .into_spec(&c.0.project_id)?;
    let sc = scope(&c);
    let sub = s.store.write(move |w| w.create_subnet(spec, &sc)).await?;
    s.net_changed.notify_one();
    tracing::info!(subnet_id = %sub.id, cidr = %String::from(sub.spec.cidr), network_id = %sub.spec.network_id, "subnet created");
    created(json!({"subnet": subnet_view(&sub)}))
}

async fn delete_subnet(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Reply {
    let sc = scope(&c);
    s.store.write(move |w| w.delete_subnet(&id, &sc)).await?;
    s.net_changed.notify_one();
    no_content()
}

// ---------------------------------------------------------------- ports

async fn list_ports(
    State(s): State<AppState>,
    c: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let sc = scope(&c);
    let (net, dev) = (q.get("network_id").cloned(), q.get("device_id").cloned());
    let ports = s
        .store
        .read(move |conn| read::ports(conn, &sc, net.as_deref(), dev.as_deref()))
        .await?;
    ok(json!({"ports": filtered(ports.iter().map(port_view).collect(), &q)}))
}

async fn show_port(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Reply {
    let sc = scope(&c);
    let p = s.store.read(move |conn| read::port(conn, &id, &sc)).await?;
    ok(json!({"port": port_view(&p)}))
}

async fn create_port(State(s): State<AppState>, c: Caller, body: Bytes) -> Reply {
    let spec = parse_body::<PortCreateBody>(&body)?
        .port
        .into_spec(&c.0.project_id)?;
    let sc = scope(&c);
    let p = s.store.write(move |w| w.create_port(spec, &sc)).await?;
    s.net_changed.notify_one();
    tracing::info!(port_id = %p.id, network_id = %p.spec.network_id, mac = %p.status.mac_address, "port created");
    created(json!({"port": port_view(&p)}))
}

async fn update_port(
    State(s): State<AppState>,
    c: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let change = parse_body::<roost_common::api::PortUpdateBody>(&body)?.port;
    let sc = scope(&c);
    let p = s
        .store
        .write(move |w| w.update_port(&id, change, &sc))
        .await?;
    s.net_changed.notify_one();
    tracing::info!(port_id = %p.id, security_groups = ?p.status.security_groups, "port updated");
    ok(json!({"port": port_view(&p)}))
}

async fn delete_port(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Reply {
    let sc = scope(&c);
    s.store.write(move |w| w.delete_port(&id, &sc)).await?;
    s.net_changed.notify_one();
    no_content()
}

// ---------------------------------------------------------------- security groups

async fn list_groups(
    State(s): State<AppState>,
    c: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    // As Neutron: a project's default group exists once it looks.
    let project = c.0.project_id.clone();
    s.store
        .write(move |w| w.ensure_default_group(&project))
        .await?;
    let sc = scope(&c);
    let groups = s
        .store
        .read(move |conn| read::security_groups(conn, &sc))
        .await?;
    let items = groups.iter().map(|(g, r)| group_view(g, r)).collect();
    ok(json!({"security_groups": filtered(items, &q)}))
}

async fn show_group(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Reply {
    let sc = scope(&c);
    let (g, rules) = s
        .store
        .read(move |conn| read::security_group(conn, &id, &sc))
        .await?;
    ok(json!({"security_group": group_view(&g, &rules)}))
}

async fn create_group(State(s): State<AppState>, c: Caller, body: Bytes) -> Reply {
    let spec = parse_body::<SecurityGroupCreateBody>(&body)?
        .security_group
        .into_spec(&c.0.project_id)?;
    let g = s
        .store
        .write(move |w| w.create_security_group(spec))
        .await?;
    let id = g.id.clone();
    let sc = scope(&c);
    let (g, rules) = s
        .store
        .read(move |conn| read::security_group(conn, &id, &sc))
        .await
        .unwrap_or((g, Vec::new()));
    created(json!({"security_group": group_view(&g, &rules)}))
}

async fn delete_group(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Reply {
    let sc = scope(&c);
    s.store
        .write(move |w| w.delete_security_group(&id, &sc))
        .await?;
    no_content()
}

async fn list_rules(
    State(s): State<AppState>,
    c: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let sc = scope(&c);
    let rules = s
        .store
        .read(move |conn| read::security_group_rules(conn, &sc))
        .await?;
    ok(json!({"security_group_rules": filtered(rules.iter().map(rule_view).collect(), &q)}))
}

async fn show_rule(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Reply {
    let sc = scope(&c);
    let rules = s
        .store
        .read(move |conn| read::security_group_rules(conn, &sc))
        .await?;
    let r = rules
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| WriteError::NotFound(format!("Security group rule {id} does not exist")))?;
    ok(json!({"security_group_rule": rule_view(r)}))
}

async fn create_rule(State(s): State<AppState>, c: Caller, body: Bytes) -> Reply {
    let spec = parse_body::<SecurityGroupRuleCreateBody>(&body)?
        .security_group_rule
        .into_spec(&c.0.project_id)?;
    let sc = scope(&c);
    let r = s
        .store
        .write(move |w| w.create_security_group_rule(spec, &sc))
        .await?;
    created(json!({"security_group_rule": rule_view(&r)}))
}

async fn delete_rule(State(s): State<AppState>, c: Caller, Path(id): Path<String>) -> Reply {
    let sc = scope(&c);
    s.store
        .write(move |w| w.delete_security_group_rule(&id, &sc))
        .await?;
    no_content()
}
