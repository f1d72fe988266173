//! The region's intent: what a fleet operator asks of sites through the
//! controller's API. Requests are validated here with the same rules the
//! sites use (`roost_common`), then written into each target site's
//! document through [`Region::write_intent`], durable before the API
//! answers, whether the site is online or not; a connected site gets it at
//! once, an offline one when it returns.
//!
//! - Servers: created and deleted per site. The region checks the flavor
//!   against the flavors the site's document holds; the site picks the host.
//! - Flavors and quotas: published to a set of sites, named or chosen by
//!   label. Unmanaged sites chosen by label are skipped (and said so);
//!   naming one is refused.
//! - Placement ("global view, local decision"): `count` sites matching the
//!   labels with room for the flavor, from the capacity each site
//!   publishes; online sites first, then the most free RAM.
//!
//! Every refusal names the field and the rule, and changes nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use roost_common::api::{FlavorCreate, ServerCreate};
use roost_common::model::{
    FlavorSpec, ImageSpec, RegionCopy, ServerSpec, SiteCapacity, SiteQuota, Usage,
};
use roost_common::FieldError;

use crate::fleet::{FleetError, SiteRow};
use crate::link::{IntentError, Region};
use crate::metrics::METRICS;

/// Why the region refused an intent request.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    /// The request is well formed but the fleet's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] IntentError),
}

impl From<FleetError> for Refused {
    fn from(e: FleetError) -> Self {
        Refused::Store(e.into())
    }
}

impl From<roost_sync::DocError> for Refused {
    fn from(e: roost_sync::DocError) -> Self {
        Refused::Store(e.into())
    }
}

/// Which sites a request is for: named, or all those carrying every label.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    #[serde(default)]
    pub sites: Option<Vec<String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// A site a group request left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub site: String,
    pub reason: String,
}

fn matches(row: &SiteRow, labels: &BTreeMap<String, String>) -> bool {
    labels.iter().all(|(k, v)| row.labels.get(k) == Some(v))
}

/// The managed sites `target` names. Pure: `rows` are the region's sites.
pub fn select(target: &Target, rows: &[SiteRow]) -> Result<(Vec<String>, Vec<Skipped>), Refused> {
    match (&target.sites, &target.labels) {
        (Some(_), Some(_)) | (None, None) => Err(FieldError::new(
            "sites",
            "",
            "give exactly one of sites (a list of site ids) or labels (an object)",
        )
        .into()),
        (Some(ids), None) => {
            if ids.is_empty() {
                return Err(FieldError::new("sites", "[]", "must name at least one site").into());
            }
            let mut out = Vec::new();
            for id in ids {
                let Some(row) = rows.iter().find(|r| &r.id == id) else {
                    return Err(FieldError::new(
                        "sites",
                        id,
                        "must be a site of this region (roost-controller site list)",
                    )
                    .into());
                };
                if row.management != "managed" {
                    return Err(Refused::Conflict(format!(
                        "site {id} is unmanaged: the region does not change it; run `roost-controller site manage {id}` first"
                    )));
                }
                if !out.contains(id) {
                    out.push(id.clone());
                }
            }
            Ok((out, Vec::new()))
        }
        (None, Some(labels)) => {
            let mut out = Vec::new();
            let mut skipped = Vec::new();
            for row in rows.iter().filter(|r| matches(r, labels)) {
                if row.management == "managed" {
                    out.push(row.id.clone());
                } else {
                    skipped.push(Skipped {
                        site: row.id.clone(),
                        reason: "unmanaged".into(),
                    });
                }
            }
            if out.is_empty() {
                return Err(Refused::Conflict(format!(
                    "no managed site carries the labels {}",
                    serde_json::to_string(labels).unwrap_or_default()
                )));
            }
            Ok((out, skipped))
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn fields_of<T: Serialize>(v: &T) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

/// The live resources of `kind` in `site`'s intent that read as `T`.
fn intent_of<T: serde::de::DeserializeOwned>(
    region: &Region,
    site: &str,
    kind: &str,
) -> Result<Vec<(String, T)>, Refused> {
    let link = region.site(site)?;
    let d = link.docs.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    for id in d.intent.ids(kind)? {
        let Some(view) = d.intent.resource(kind, &id)? else {
            continue;
        };
        if view.deleted {
            continue;
        }
        let fields: serde_json::Map<_, _> = view.fields.into_iter().collect();
        if let Ok(spec) = serde_json::from_value::<T>(serde_json::Value::Object(fields)) {
            out.push((id, spec));
        }
    }
    Ok(out)
}

/// The flavors `site` has, as its intent document holds them.
pub fn site_flavors(region: &Region, site: &str) -> Result<Vec<(String, FlavorSpec)>, Refused> {
    intent_of(region, site, "flavors")
}

/// The images the region gave `site` (`images/<id>` in its intent).
pub fn region_images(region: &Region, site: &str) -> Result<Vec<(String, ImageSpec)>, Refused> {
    site_row(region, site)?;
    intent_of(region, site, "images")
}

/// Records an image for `site` in its intent: the site learns of it when
/// next reachable and fetches its bytes once the region holds them.
pub fn create_region_image(
    region: &Region,
    site: &str,
    spec: &ImageSpec,
) -> Result<String, Refused> {
    site_row(region, site)?;
    // The region's image ids name its files, so the region picks them:
    // one id is one image everywhere.
    if let Some(asked) = &spec.id {
        return Err(FieldError::new(
            "id",
            asked,
            "the region chooses the ids of the images it holds; leave id out",
        )
        .into());
    }
    let id = uuid::Uuid::new_v4().to_string();
    let mut s = spec.clone();
    s.id = Some(id.clone());
    region.write_intent(site, |doc| {
        doc.create("images", &id, fields_of(&s), now_ms())
    })?;
    METRICS.intent_writes.with_label_values(&["images"]).inc();
    Ok(id)
}

/// Tells `site` the region now holds an image's bytes.
pub fn set_region_copy(
    region: &Region,
    site: &str,
    id: &str,
    copy: &RegionCopy,
) -> Result<(), Refused> {
    let value = serde_json::to_value(copy).map_err(|e| Refused::Conflict(e.to_string()))?;
    region.write_intent(site, |doc| doc.set("images", id, "region", value, now_ms()))?;
    METRICS.intent_writes.with_label_values(&["images"]).inc();
    Ok(())
}

/// Withdraws an image the region gave `site`; the site removes it unless a
/// server boots from it.
pub fn withdraw_image(region: &Region, site: &str, id: &str) -> Result<(), Refused> {
    if !region_images(region, site)?.iter().any(|(i, _)| i == id) {
        return Err(Refused::NotFound(format!(
            "No image found with ID {id} among the images the region gave {site} (images made at the site are deleted there)"
        )));
    }
    region.write_intent(site, |doc| doc.delete("images", id, now_ms()))?;
    METRICS.intent_writes.with_label_values(&["images"]).inc();
    Ok(())
}

fn site_row(region: &Region, site: &str) -> Result<SiteRow, Refused> {
    let row = region
        .store
        .site(site)?
        .ok_or_else(|| Refused::NotFound(format!("no site {site:?} in this region")))?;
    Ok(row)
}

fn managed(row: &SiteRow) -> Result<(), Refused> {
    if row.management != "managed" {
        return Err(Refused::Conflict(format!(
            "site {} is unmanaged: the region does not change it; run `roost-controller site manage {}` first",
            row.id, row.id
        )));
    }
    Ok(())
}

/// A server request the region accepted for one site.
#[derive(Debug, Clone, Serialize)]
pub struct Placed {
    pub site: String,
    pub id: String,
    pub name: String,
    pub flavor_id: String,
}

/// The spec and flavor a server request asks for at `site`.
fn server_spec(
    region: &Region,
    site: &str,
    req: &ServerCreate,
) -> Result<(ServerSpec, FlavorSpec), Refused> {
    req.check_supported()?;
    // The `openstack` client sends an empty list for "no --network".
    if matches!(req.nics()?, roost_common::api::Nics::List(l) if !l.is_empty()) {
        return Err(FieldError::new(
            "server.networks",
            "a list",
            "names a site's own networks or ports, which the region does not know yet: leave it out or say \"none\"",
        )
        .into());
    }
    if let Some(az) = req.availability_zone.as_deref().filter(|a| !a.is_empty()) {
        return Err(FieldError::new(
            "server.availability_zone",
            az,
            "is chosen by the site; leave it out of region requests",
        )
        .into());
    }
    let wanted = req.flavor_ref.as_id();
    let flavors = site_flavors(region, site)?;
    let Some((flavor_id, flavor)) = flavors
        .iter()
        .find(|(id, f)| *id == wanted || f.name == wanted)
        .cloned()
    else {
        let names: Vec<&str> = flavors.iter().map(|(_, f)| f.name.as_str()).collect();
        return Err(FieldError::new(
            "server.flavorRef",
            &wanted,
            format!(
                "must be a flavor id or name of site {site}: {}",
                if names.is_empty() {
                    "it has none yet".to_string()
                } else {
                    names.join(", ")
                }
            ),
        )
        .into());
    };
    let image = req.image_id()?;
    let spec = ServerSpec {
        metadata: req.metadata.clone(),
        // The site's admin project and user own the region's servers.
        ..ServerSpec::new(req.name.clone(), "", "", flavor_id, image)
    };
    Ok((spec, flavor))
}

fn write_server(region: &Region, site: &str, spec: ServerSpec) -> Result<Placed, Refused> {
    let id = uuid::Uuid::new_v4().to_string();
    let placed = Placed {
        site: site.to_string(),
        id: id.clone(),
        name: spec.name.clone(),
        flavor_id: spec.flavor_id.clone(),
    };
    region.write_intent(site, |doc| {
        doc.create("servers", &id, fields_of(&spec), now_ms())
    })?;
    METRICS.intent_writes.with_label_values(&["servers"]).inc();
    tracing::info!(site = %site, server = %id, name = %placed.name, "the region asked for a server");
    Ok(placed)
}

/// The images `site` last published (`site/images` in its status
/// document), or `None` if it never has (an agent from before images were
/// published). Each is `{id, name, status, disk_format, size, ...}`.
pub fn site_images(region: &Region, site: &str) -> Result<Option<Vec<serde_json::Value>>, Refused> {
    site_row(region, site)?;
    let link = region.site(site)?;
    let d = link.docs.lock().unwrap_or_else(|e| e.into_inner());
    Ok(match d.status.get("site", "images")? {
        Some(serde_json::Value::Array(all)) => Some(all),
        _ => None,
    })
}

/// Asks `site` for a server. Blocks. When the site has published its
/// images, the server's image must be one of them and active: a site can
/// only boot what it holds, and the region says so before the site is
/// even reachable.
pub fn create_server(region: &Region, site: &str, req: &ServerCreate) -> Result<Placed, Refused> {
    managed(&site_row(region, site)?)?;
    let (spec, _) = server_spec(region, site, req)?;
    if let Some(images) = site_images(region, site)? {
        let active =
            |i: &&serde_json::Value| i["id"] == spec.image_id.as_str() && i["status"] == "active";
        if !images.iter().any(|i| active(&i)) {
            let mut names: Vec<&str> = images
                .iter()
                .filter(|i| i["status"] == "active")
                .filter_map(|i| i["name"].as_str())
                .collect();
            names.sort_unstable();
            return Err(FieldError::new(
                "server.imageRef",
                &spec.image_id,
                format!(
                    "must be an active image of site {site} (as it last reported): {}",
                    if names.is_empty() {
                        "it has none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            )
            .into());
        }
    }
    write_server(region, site, spec)
}

/// Withdraws a server from `site` (the site removes it). Blocks.
pub fn delete_server(region: &Region, site: &str, id: &str) -> Result<(), Refused> {
    managed(&site_row(region, site)?)?;
    let link = region.site(site)?;
    let exists = {
        let d = link.docs.lock().unwrap_or_else(|e| e.into_inner());
        d.intent
            .resource("servers", id)
            .ok()
            .flatten()
            .is_some_and(|v| !v.deleted)
    };
    if !exists {
        return Err(Refused::NotFound(format!("site {site} has no server {id}")));
    }
    region.write_intent(site, |doc| doc.delete("servers", id, now_ms()))?;
    METRICS.intent_writes.with_label_values(&["servers"]).inc();
    tracing::info!(site = %site, server = %id, "the region withdrew a server");
    Ok(())
}

/// What the region may ask of one of a site's servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerChange {
    Stop,
    Start,
    Reboot { hard: bool },
    Rebuild { image_id: String },
}

/// Asks `site` to stop, start, reboot or rebuild a server: intent fields
/// the site acts on when it has them (as its own API's actions set them).
/// A rebuild's image must be one the site last reported active. Blocks.
pub fn change_server(
    region: &Region,
    site: &str,
    id: &str,
    change: &ServerChange,
) -> Result<(), Refused> {
    managed(&site_row(region, site)?)?;
    let link = region.site(site)?;
    let view = {
        let d = link.docs.lock().unwrap_or_else(|e| e.into_inner());
        d.intent.resource("servers", id)?
    };
    let Some(view) = view.filter(|v| !v.deleted) else {
        return Err(Refused::NotFound(format!("site {site} has no server {id}")));
    };
    let counter = |field: &str| view.fields.get(field).and_then(|v| v.as_u64()).unwrap_or(0);
    let fields: Vec<(&str, serde_json::Value)> = match change {
        ServerChange::Stop => vec![("power", "stopped".into())],
        ServerChange::Start => vec![("power", "running".into())],
        ServerChange::Reboot { hard } => vec![
            (
                "reboot_generation",
                (counter("reboot_generation") + 1).into(),
            ),
            ("reboot_hard", (*hard).into()),
            ("power", "running".into()),
        ],
        ServerChange::Rebuild { image_id } => {
            if let Some(images) = site_images(region, site)? {
                if !images
                    .iter()
                    .any(|i| i["id"] == image_id.as_str() && i["status"] == "active")
                {
                    return Err(FieldError::new(
                        "rebuild.imageRef",
                        image_id,
                        format!("must be an active image of site {site} (as it last reported)"),
                    )
                    .into());
                }
            }
            vec![
                ("image_id", image_id.as_str().into()),
                (
                    "rebuild_generation",
                    (counter("rebuild_generation") + 1).into(),
                ),
            ]
        }
    };
    region.write_intent(site, |doc| {
        let now = now_ms();
        for (field, value) in fields {
            doc.set("servers", id, field, value, now)?;
        }
        Ok(())
    })?;
    METRICS.intent_writes.with_label_values(&["servers"]).inc();
    tracing::info!(site = %site, server = %id, change = ?change, "the region changed a server");
    Ok(())
}

/// The servers of `site` as the region knows them: intent with the status
/// the site last reported.
pub fn servers(region: &Region, site: &str) -> Result<Vec<serde_json::Value>, Refused> {
    site_row(region, site)?;
    let link = region.site(site)?;
    let d = link.docs.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    for id in d.intent.ids("servers")? {
        let Some(view) = d.intent.resource("servers", &id)? else {
            continue;
        };
        let status = d.status.get("servers", &id)?;
        if view.deleted && status.is_none() {
            continue;
        }
        out.push(serde_json::json!({
            "id": id,
            "name": view.fields.get("name"),
            "flavor_id": view.fields.get("flavor_id"),
            "image_id": view.fields.get("image_id"),
            "deleted": view.deleted,
            "status": status,
        }));
    }
    Ok(out)
}

/// Result of a request to a group of sites.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub id: String,
    pub sites: Vec<String>,
    pub skipped: Vec<Skipped>,
}

/// Publishes a flavor to the target sites, with one id everywhere. A site
/// that already has a different flavor of that name is skipped. Blocks.
pub fn publish_flavor(
    region: &Region,
    target: &Target,
    req: FlavorCreate,
) -> Result<Published, Refused> {
    let spec = req.into_spec()?;
    let (sites, mut skipped) = select(target, &region.store.sites()?)?;
    let id = spec
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut done = Vec::new();
    for site in sites {
        let flavors = site_flavors(region, &site)?;
        if flavors.iter().any(|(fid, _)| *fid == id) {
            skipped.push(Skipped {
                site,
                reason: format!("has a flavor with id {id} already"),
            });
            continue;
        }
        if let Some((other, _)) = flavors.iter().find(|(_, f)| f.name == spec.name) {
            skipped.push(Skipped {
                site,
                reason: format!("has a flavor named {} already (id {other})", spec.name),
            });
            continue;
        }
        let mut s = spec.clone();
        s.id = Some(id.clone());
        region.write_intent(&site, |doc| {
            doc.create("flavors", &id, fields_of(&s), now_ms())
        })?;
        METRICS.intent_writes.with_label_values(&["flavors"]).inc();
        done.push(site);
    }
    tracing::info!(flavor = %id, sites = done.len(), skipped = skipped.len(), "the region published a flavor");
    Ok(Published {
        id,
        sites: done,
        skipped,
    })
}

/// Sets (or with `None` lifts) the allotment of the target sites. Blocks.
pub fn set_quota(
    region: &Region,
    target: &Target,
    quota: Option<SiteQuota>,
) -> Result<Published, Refused> {
    if let Some(q) = &quota {
        q.validate()?;
    }
    let (sites, skipped) = select(target, &region.store.sites()?)?;
    for site in &sites {
        let link = region.site(site)?;
        let existing = {
            let d = link.docs.lock().unwrap_or_else(|e| e.into_inner());
            d.intent.resource("quotas", "site")?
        };
        region.write_intent(site, |doc| match &quota {
            None => match existing {
                Some(v) if !v.deleted => doc.delete("quotas", "site", now_ms()),
                _ => Ok(()),
            },
            Some(q) => upsert(doc, "quotas", "site", fields_of(q), existing),
        })?;
        METRICS.intent_writes.with_label_values(&["quotas"]).inc();
    }
    tracing::info!(sites = sites.len(), quota = ?quota, "the region set site quotas");
    Ok(Published {
        id: "site".into(),
        sites,
        skipped,
    })
}

/// Makes `kind/id` hold `fields` (creating it, or bringing it back from
/// deleted), writing only the fields that differ.
fn upsert(
    doc: &mut roost_sync::IntentDoc,
    kind: &str,
    id: &str,
    fields: serde_json::Map<String, serde_json::Value>,
    existing: Option<roost_sync::IntentView>,
) -> Result<(), roost_sync::DocError> {
    let now = now_ms();
    let Some(v) = existing else {
        return doc.create(kind, id, fields, now);
    };
    if v.deleted {
        doc.set(kind, id, "deleted", false.into(), now)?;
    }
    for (field, value) in fields {
        if v.fields.get(&field) != Some(&value) {
            doc.set(kind, id, &field, value, now)?;
        }
    }
    Ok(())
}

/// Writes what sites need to check region tokens on their own (the public
/// keys and the revoked tokens' audit ids, under `identity/region`, as
/// `Region::trust` holds them now) into `site`'s intent, if it differs.
/// Returns whether it wrote. Blocks.
pub fn publish_trust(region: &Region, site: &str) -> Result<bool, Refused> {
    let _one_at_a_time = region
        .trust_publish
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let Some(trust) = region
        .trust
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
    else {
        return Ok(false);
    };
    let fields = fields_of(&trust);
    let link = region.site(site)?;
    let existing = {
        let d = link.docs.lock().unwrap_or_else(|e| e.into_inner());
        d.intent.resource("identity", "region")?
    };
    let current = existing
        .as_ref()
        .is_some_and(|v| !v.deleted && fields.iter().all(|(k, val)| v.fields.get(k) == Some(val)));
    if current {
        return Ok(false);
    }
    region.write_intent(site, |doc| {
        upsert(doc, "identity", "region", fields, existing)
    })?;
    METRICS.intent_writes.with_label_values(&["identity"]).inc();
    Ok(true)
}

/// A candidate for placement, as the region sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub site: String,
    pub online: bool,
    pub capacity: Option<SiteCapacity>,
    pub quota: Option<SiteQuota>,
    /// The flavor's needs at this site, if the site has the flavor.
    pub need: Option<Usage>,
}

/// Picks `count` sites from `candidates` for one server each: sites with
/// the flavor, published capacity with a host it fits on, and room in their
/// allotment; online ones first, then the most free RAM, then by id. Pure.
pub fn choose(candidates: &[Candidate], count: usize) -> Result<Vec<String>, Refused> {
    let mut fit = Vec::new();
    let mut why: Vec<String> = Vec::new();
    for c in candidates {
        let reason = match (&c.need, &c.capacity) {
            (None, _) => Some("does not have the flavor".to_string()),
            (_, None) => Some("has not published its capacity yet".to_string()),
            (Some(need), Some(cap)) if !cap.fits(need) => {
                Some("has no host with room for the flavor".to_string())
            }
            (Some(need), Some(cap)) => c.quota.and_then(|q| {
                let over = [
                    (q.instances, cap.instances + 1, "instances"),
                    (q.cores, cap.used.vcpus + need.vcpus, "cores"),
                    (q.ram_mb, cap.used.ram_mb + need.ram_mb, "ram_mb"),
                    (q.disk_gb, cap.used.disk_gb + need.disk_gb, "disk_gb"),
                ]
                .into_iter()
                .find(|(limit, wanted, _)| limit.is_some_and(|l| *wanted > l));
                over.map(|(_, _, what)| format!("would exceed its {what} quota"))
            }),
        };
        match reason {
            Some(r) => why.push(format!("{} {r}", c.site)),
            None => fit.push(c),
        }
    }
    if fit.len() < count {
        return Err(Refused::Conflict(format!(
            "only {} of {} matching sites have room for it, {count} wanted{}{}",
            fit.len(),
            candidates.len(),
            if why.is_empty() { "" } else { ": " },
            why.join("; ")
        )));
    }
    let free_ram = |c: &Candidate| {
        c.capacity
            .as_ref()
            .map_or(0, |cap| cap.total.ram_mb.saturating_sub(cap.used.ram_mb))
    };
    fit.sort_by(|a, b| {
        b.online
            .cmp(&a.online)
            .then(free_ram(b).cmp(&free_ram(a)))
            .then(a.site.cmp(&b.site))
    });
    Ok(fit
        .into_iter()
        .take(count)
        .map(|c| c.site.clone())
        .collect())
}

/// A request to run one server at each of `count` sites.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    pub server: ServerCreate,
    pub count: usize,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Runs the request's server at `count` sites picked by [`choose`]. When
/// fewer sites have room than asked for, nothing is written. Blocks.
pub fn place(region: &Region, req: &PlacementRequest) -> Result<Vec<Placed>, Refused> {
    if req.count == 0 || req.count > 1000 {
        return Err(FieldError::new("count", req.count, "must be between 1 and 1000").into());
    }
    req.server.check_supported()?;
    let target = Target {
        sites: None,
        labels: Some(req.labels.clone()),
    };
    let (sites, _) = select(&target, &region.store.sites()?)?;
    let mut candidates = Vec::new();
    let mut specs = BTreeMap::new();
    for site in &sites {
        // Only what the choice needs: no site row, sync distance or alarms.
        let link = region.site(site)?;
        let facts = link.doc_facts();
        let need = match server_spec(region, site, &req.server) {
            Ok((spec, flavor)) => {
                specs.insert(site.clone(), spec);
                Some(flavor.usage())
            }
            Err(Refused::Invalid(e)) if e.field == "server.flavorRef" => None,
            Err(e) => return Err(e),
        };
        candidates.push(Candidate {
            site: site.clone(),
            online: link.is_online(),
            capacity: facts.capacity.clone(),
            quota: facts.quota,
            need,
        });
    }
    let chosen = choose(&candidates, req.count)?;
    chosen
        .into_iter()
        .map(|site| {
            let spec = specs.remove(&site).expect("chosen sites have a spec");
            write_server(region, &site, spec)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, labels: &[(&str, &str)], management: &str) -> SiteRow {
        SiteRow {
            id: id.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            management: management.into(),
            enrolled_at: None,
            last_seen: None,
        }
    }

    #[test]
    fn targets_name_sites_or_labels_and_unmanaged_sites_are_left_alone() {
        let rows = [
            row("f1", &[("kind", "factory")], "managed"),
            row("f2", &[("kind", "factory")], "unmanaged"),
            row("v1", &[("kind", "vehicle")], "managed"),
        ];
        let labels = |k: &str, v: &str| Target {
            sites: None,
            labels: Some([(k.to_string(), v.to_string())].into()),
        };
        let (sites, skipped) = select(&labels("kind", "factory"), &rows).unwrap();
        assert_eq!(sites, ["f1"]);
        assert_eq!(skipped[0].site, "f2");
        assert!(matches!(
            select(&labels("kind", "ship"), &rows),
            Err(Refused::Conflict(_))
        ));
        let named = |ids: &[&str]| Target {
            sites: Some(ids.iter().map(|s| s.to_string()).collect()),
            labels: None,
        };
        assert_eq!(select(&named(&["v1", "v1"]), &rows).unwrap().0, ["v1"]);
        let Err(Refused::Invalid(e)) = select(&named(&["nope"]), &rows) else {
            panic!()
        };
        assert_eq!(e.field, "sites");
        assert!(matches!(
            select(&named(&["f2"]), &rows),
            Err(Refused::Conflict(m)) if m.contains("unmanaged")
        ));
        assert!(matches!(
            select(&named(&[]), &rows),
            Err(Refused::Invalid(_))
        ));
        assert!(matches!(
            select(&Target::default(), &rows),
            Err(Refused::Invalid(_))
        ));
    }

    fn cap(free: &[(u64, u64)], used_ram: u64, instances: u64) -> SiteCapacity {
        SiteCapacity {
            total: Usage {
                vcpus: 64,
                ram_mb: 65536,
                disk_gb: 1000,
            },
            used: Usage {
                vcpus: 0,
                ram_mb: used_ram,
                disk_gb: 0,
            },
            host_free: free
                .iter()
                .map(|&(vcpus, ram_mb)| Usage {
                    vcpus,
                    ram_mb,
                    disk_gb: 100,
                })
                .collect(),
            instances,
        }
    }

    #[test]
    fn placement_picks_sites_with_room_online_first_then_most_free_ram() {
        let need = Usage {
            vcpus: 2,
            ram_mb: 2048,
            disk_gb: 10,
        };
        let c = |site: &str, online, capacity: Option<SiteCapacity>, has: bool| Candidate {
            site: site.into(),
            online,
            capacity,
            quota: None,
            need: has.then_some(need),
        };
        let mut candidates = vec![
            c("a-busy", true, Some(cap(&[(4, 4096)], 60000, 3)), true),
            c("b-roomy", true, Some(cap(&[(8, 16384)], 1000, 1)), true),
            c("c-offline", false, Some(cap(&[(8, 16384)], 0, 0)), true),
            c(
                "d-full",
                true,
                Some(cap(&[(1, 512), (2, 1024)], 0, 0)),
                true,
            ),
            c("e-silent", true, None, true),
            c("f-noflavor", true, Some(cap(&[(8, 16384)], 0, 0)), false),
        ];
        assert_eq!(choose(&candidates, 2).unwrap(), ["b-roomy", "a-busy"]);
        assert_eq!(
            choose(&candidates, 3).unwrap(),
            ["b-roomy", "a-busy", "c-offline"]
        );
        let Err(Refused::Conflict(why)) = choose(&candidates, 4) else {
            panic!()
        };
        assert!(
            why.starts_with("only 3 of 6 matching sites have room"),
            "{why}"
        );
        for s in ["d-full", "e-silent", "f-noflavor"] {
            assert!(why.contains(s), "{why}");
        }
        // An allotment used up rules a site out.
        candidates[1].quota = Some(SiteQuota {
            instances: Some(1),
            ..Default::default()
        });
        assert_eq!(choose(&candidates, 1).unwrap(), ["a-busy"]);
        let Err(Refused::Conflict(why)) = choose(&candidates, 3) else {
            panic!()
        };
        assert!(
            why.contains("b-roomy would exceed its instances quota"),
            "{why}"
        );
    }
}
