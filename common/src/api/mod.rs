//! Request bodies of the OpenStack-shaped APIs, as clients send them.
//!
//! Bodies are parsed strictly (`deny_unknown_fields`, like Nova's JSON
//! schemas with `additionalProperties: false`) and then turned into specs that
//! go through the same `validate` as config files.

pub mod cinder;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::{
    AllocationPool, Cidr, Direction, DiskFormat, FixedIpRequest, FlavorSpec, GroupPolicy,
    ImageSpec, NetworkKind, NetworkSpec, NicRequest, PortSpec, SecurityGroupRuleSpec,
    SecurityGroupSpec, ServerGroupSpec, SubnetSpec, Visibility,
};
use crate::validate::FieldError;

// ---------------------------------------------------------------- errors

/// An error body in OpenStack's shapes: Keystone's `{"error": {"code",
/// "title", "message"}}` for a 401 or when `keystone` is set, otherwise
/// Nova's `{"itemNotFound": {"code", "message"}}` and the like. One place,
/// for the site's API and the controller's OpenStack face.
pub fn openstack_error_body(
    code: u16,
    title: &str,
    message: &str,
    keystone: bool,
) -> serde_json::Value {
    if code == 401 || keystone {
        return serde_json::json!({"error": {"code": code, "title": title, "message": message}});
    }
    let key = match code {
        400 => "badRequest",
        403 => "forbidden",
        404 => "itemNotFound",
        406 => "notAcceptable",
        409 => "conflictingRequest",
        413 => "overLimit",
        _ => "computeFault",
    };
    serde_json::json!({key: {"code": code, "message": message}})
}

// ---------------------------------------------------------------- glance

/// An image as Glance shows it; with `properties`, its additional
/// properties at the top level too. The site's image API answers with it,
/// and the site publishes it (without properties, which may be large) for
/// its region, which serves it as it came.
pub fn glance_image(i: &crate::model::Image, properties: bool) -> serde_json::Value {
    let time = |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut v = serde_json::Map::new();
    if properties {
        for (k, val) in &i.spec.properties {
            v.insert(k.clone(), serde_json::Value::String(val.clone()));
        }
    }
    let disk_format = match i.spec.disk_format {
        DiskFormat::Qcow2 => "qcow2",
        DiskFormat::Raw => "raw",
    };
    let fixed = serde_json::json!({
        "id": i.id,
        "name": i.spec.name,
        "status": i.status.state.as_str(),
        "visibility": i.spec.visibility.as_str(),
        "protected": i.spec.protected,
        "os_hidden": false,
        "checksum": null,
        "os_hash_algo": i.status.sha256.as_ref().map(|_| "sha256"),
        "os_hash_value": i.status.sha256,
        "size": i.status.size_bytes,
        "virtual_size": i.status.virtual_size,
        "disk_format": disk_format,
        "container_format": i.spec.container_format,
        "min_disk": i.spec.min_disk_gb,
        "min_ram": i.spec.min_ram_mb,
        "owner": i.spec.owner,
        "tags": i.spec.tags,
        "created_at": time(&i.created_at),
        "updated_at": time(&i.updated_at),
        "self": format!("/v2/images/{}", i.id),
        "file": format!("/v2/images/{}/file", i.id),
        "schema": "/v2/schemas/image",
    });
    if let serde_json::Value::Object(fixed) = fixed {
        v.extend(fixed);
    }
    if let Some(r) = &i.spec.region {
        v.insert("roost:origin".into(), "region".into());
        v.insert("roost:region_sha256".into(), r.sha256.clone().into());
        v.insert(
            "roost:fetched_bytes".into(),
            i.status.fetched_bytes.unwrap_or(0).into(),
        );
    }
    if let Some(f) = &i.status.fault {
        v.insert("roost:fault".into(), f.clone().into());
    }
    if i.status.state == crate::model::ImageState::Active {
        let tier = i.status.tier.unwrap_or(crate::model::Tier::Warm);
        v.insert("roost:tier".into(), tier.as_str().into());
    }
    serde_json::Value::Object(v)
}

/// Bytes of the data's start kept for the format check.
pub const HEADER_BYTES: usize = 104;
pub const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// Checks image data (its first [`HEADER_BYTES`]) is what `disk_format`
/// says and safe to boot: returns the virtual size. One check for the
/// site's uploads, the region's and what a site fetches.
pub fn check_disk_format(format: DiskFormat, head: &[u8], size: u64) -> Result<u64, String> {
    let is_qcow2 = head.starts_with(QCOW2_MAGIC);
    let be64 = |at: usize| -> u64 {
        head.get(at..at + 8)
            .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
    };
    match format {
        DiskFormat::Raw if is_qcow2 => Err(String::from(
            "disk_format: is raw but the data is a qcow2 image; create the image with disk_format qcow2",
        )),
        DiskFormat::Raw => Ok(size),
        DiskFormat::Qcow2 if !is_qcow2 || head.len() < 72 => Err(String::from(
            "disk_format: is qcow2 but the data has no qcow2 header; convert it with qemu-img convert -O qcow2, or use disk_format raw",
        )),
        DiskFormat::Qcow2 => {
            let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            if !(2..=3).contains(&version) {
                return Err(format!(
                    "disk_format: qcow2 version {version} is not supported (2 or 3)"
                ));
            }
            if be64(8) != 0 {
                return Err(String::from(
                    "image data: the qcow2 image names a backing file, which would let the guest read a file on the host; flatten it with qemu-img convert first",
                ));
            }
            // Incompatible feature bit 2: an external data file.
            if version == 3 && be64(72) & 0b100 != 0 {
                return Err(String::from(
                    "image data: the qcow2 image keeps its data in an external file; flatten it with qemu-img convert first",
                ));
            }
            Ok(be64(24))
        }
    }
}

/// Glance's version document, `href` the v2 root.
pub fn glance_versions(href: &str) -> serde_json::Value {
    serde_json::json!({"versions": [
        {"id": "v2.16", "status": "CURRENT", "links": [{"rel": "self", "href": href}]},
    ]})
}

/// Keystone's v3 version entry, `base` the API's root URL.
pub fn keystone_version(base: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": format!("{base}/identity/v3/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    })
}

// ---------------------------------------------------------------- keystone

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthBody {
    pub auth: Auth,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub identity: Identity,
    #[serde(default)]
    pub scope: Option<Scope>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub methods: Vec<String>,
    #[serde(default)]
    pub password: Option<PasswordMethod>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordMethod {
    pub user: UserRef,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub domain: Option<DomainRef>,
    pub password: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

impl DomainRef {
    /// Whether this names the `Default` domain (by id `default` or name).
    pub fn is_default(&self) -> bool {
        self.id.as_deref().is_none_or(|i| i == "default")
            // Keystone's SQL backend compares names without case.
            && self.name.as_deref().is_none_or(|n| n.eq_ignore_ascii_case("Default"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    #[serde(default)]
    pub project: Option<ProjectRef>,
}

/// `POST /identity/v3/projects`, `PATCH /identity/v3/projects/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectBody {
    pub project: ProjectFields,
}

/// A project's fields as Keystone takes them. Only the Default domain
/// exists and projects do not nest; tags and options are not kept, so a
/// body that sets them is refused rather than half taken.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectFields {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub domain_id: Option<String>,
    #[serde(default)]
    pub parent_id: Option<String>,
    #[serde(default)]
    pub is_domain: Option<bool>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub options: Option<BTreeMap<String, serde_json::Value>>,
}

impl ProjectFields {
    /// Checks what this site cannot keep; names and descriptions are
    /// checked where they are stored.
    pub fn check(&self) -> Result<(), FieldError> {
        check_default_domain("project.domain_id", self.domain_id.as_deref())?;
        check_default_domain("project.parent_id", self.parent_id.as_deref())?;
        if self.is_domain == Some(true) {
            return Err(FieldError::new(
                "project.is_domain",
                "true",
                "must be false: only the Default domain exists here",
            ));
        }
        if self.tags.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(FieldError::new(
                "project.tags",
                "[...]",
                "are not kept here; leave them out",
            ));
        }
        check_no_options("project.options", self.options.as_ref())
    }
}

/// `POST /identity/v3/users`, `PATCH /identity/v3/users/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    pub user: UserFields,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFields {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Absent: unchanged; `null`: cleared.
    #[serde(default, deserialize_with = "some_nullable")]
    pub default_project_id: Option<Option<String>>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub domain_id: Option<String>,
    #[serde(default)]
    pub options: Option<BTreeMap<String, serde_json::Value>>,
}

fn some_nullable<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl UserFields {
    pub fn check(&self) -> Result<(), FieldError> {
        check_default_domain("user.domain_id", self.domain_id.as_deref())?;
        if let Some(p) = &self.password {
            crate::config::check_password("user.password", p)?;
        }
        check_no_options("user.options", self.options.as_ref())
    }
}

fn check_default_domain(field: &str, v: Option<&str>) -> Result<(), FieldError> {
    match v {
        None | Some("default") => Ok(()),
        Some(other) => Err(FieldError::new(
            field,
            other,
            "must be default: only the Default domain exists here",
        )),
    }
}

fn check_no_options(
    field: &str,
    v: Option<&BTreeMap<String, serde_json::Value>>,
) -> Result<(), FieldError> {
    match v.and_then(|o| o.keys().next()) {
        None => Ok(()),
        Some(k) => Err(FieldError::new(
            format!("{field}.{k}"),
            k,
            "is not kept here; leave it out",
        )),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectRef {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub domain: Option<DomainRef>,
}

// ---------------------------------------------------------------- nova

/// `PUT /servers/{id}` (`openstack server set --name`): a server's name is
/// all it changes here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerUpdateBody {
    pub server: ServerUpdate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerUpdate {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerCreateBody {
    pub server: ServerCreate,
    #[serde(default, rename = "os:scheduler_hints")]
    pub scheduler_hints: Option<SchedulerHints>,
    #[serde(default, rename = "OS-SCH-HNT:scheduler_hints")]
    pub scheduler_hints_legacy: Option<SchedulerHints>,
}

/// A server create request. Fields the python-openstackclient sends by
/// default are accepted; those Roost cannot honour yet are refused by
/// [`ServerCreate::check_supported`] with a message naming them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerCreate {
    pub name: String,
    #[serde(rename = "imageRef", default)]
    pub image_ref: Option<String>,
    #[serde(rename = "flavorRef")]
    pub flavor_ref: FlavorRef,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub min_count: Option<u32>,
    #[serde(default)]
    pub max_count: Option<u32>,
    /// `"auto"`, `"none"` or a list; networking lands with the network issue.
    #[serde(default)]
    pub networks: Option<serde_json::Value>,
    #[serde(default)]
    pub security_groups: Option<serde_json::Value>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub key_name: Option<String>,
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub config_drive: Option<bool>,
    #[serde(default, rename = "OS-DCF:diskConfig")]
    pub disk_config: Option<String>,
    /// Nova's block device mappings. The `openstack` client sends one for
    /// the image even without volumes; only that (an image to a local root
    /// disk) is taken until volumes land.
    #[serde(default)]
    pub block_device_mapping_v2: Option<Vec<BlockDeviceMapping>>,
}

/// One entry of `block_device_mapping_v2`.
#[derive(Debug, Deserialize)]
pub struct BlockDeviceMapping {
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub boot_index: Option<serde_json::Value>,
    #[serde(default)]
    pub source_type: Option<String>,
    #[serde(default)]
    pub destination_type: Option<String>,
    #[serde(default)]
    pub delete_on_termination: Option<bool>,
    #[serde(default)]
    pub volume_size: Option<u64>,
}

/// `flavorRef` is a string in the API, but some clients send a number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FlavorRef {
    Text(String),
    Number(u64),
}

impl FlavorRef {
    pub fn as_id(&self) -> String {
        match self {
            FlavorRef::Text(s) => s.rsplit('/').next().unwrap_or(s).to_string(),
            FlavorRef::Number(n) => n.to_string(),
        }
    }
}

/// The NICs a server create asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nics {
    /// `networks` absent or `"auto"`: the project's one network, if it has
    /// exactly one.
    Auto,
    /// `"none"`.
    None,
    List(Vec<NicRequest>),
}

impl ServerCreate {
    /// The image the server boots from: `imageRef`, or the image of a
    /// block device mapping that puts an image on a local root disk (what
    /// the `openstack` client sends). A mapping to or from a volume is
    /// refused, naming the entry, until the site has volumes.
    pub fn image_id(&self) -> Result<String, FieldError> {
        let from_ref = self
            .image_ref
            .as_deref()
            .filter(|r| !r.is_empty())
            .map(|r| {
                let r = r.trim_end_matches('/');
                r.rsplit('/').next().unwrap_or(r).to_string()
            });
        let mut from_bdm = None;
        for (i, m) in self.block_device_mapping_v2.iter().flatten().enumerate() {
            let field = format!("server.block_device_mapping_v2[{i}]");
            let boot0 = match &m.boot_index {
                Some(serde_json::Value::Number(n)) => n.as_i64() == Some(0),
                Some(serde_json::Value::String(s)) => s == "0",
                _ => false,
            };
            let kind = (m.source_type.as_deref(), m.destination_type.as_deref());
            match (kind, m.uuid.as_deref()) {
                ((Some("image"), Some("local") | None), Some(uuid)) if boot0 => {
                    crate::ids::check_uuid(&format!("{field}.uuid"), uuid)?;
                    from_bdm = Some(uuid.to_string());
                }
                _ => {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "source_type {}, destination_type {}",
                            kind.0.unwrap_or("null"),
                            kind.1.unwrap_or("null")
                        ),
                        "only an image on the local root disk (boot_index 0) is supported: booting from a volume and swap or ephemeral disks are not built at this site; boot from the image and attach volumes after",
                    ))
                }
            }
        }
        match (from_ref, from_bdm) {
            (Some(r), Some(b)) if r != b => Err(FieldError::new(
                "server.block_device_mapping_v2[0].uuid",
                b,
                format!("must be the imageRef ({r}) when both are given"),
            )),
            (Some(r), _) => Ok(r),
            (None, Some(b)) => Ok(b),
            (None, None) => Err(FieldError::missing("server.imageRef")),
        }
    }

    /// Reads `networks`: `"auto"`, `"none"`, or a list of `{"uuid"[,
    /// "fixed_ip"]}` and `{"port"}`.
    pub fn nics(&self) -> Result<Nics, FieldError> {
        let v = match &self.networks {
            None => return Ok(Nics::Auto),
            Some(serde_json::Value::String(s)) if s == "auto" => return Ok(Nics::Auto),
            Some(serde_json::Value::String(s)) if s == "none" => return Ok(Nics::None),
            Some(v) => v,
        };
        let items = v.as_array().ok_or_else(|| {
            FieldError::new(
                "server.networks",
                v,
                "must be \"auto\", \"none\" or a list of {\"uuid\"} or {\"port\"}",
            )
        })?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let field = format!("server.networks[{i}]");
            let text = |k: &str| {
                item.get(k)
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty())
            };
            let known = item.as_object().is_some_and(|o| {
                o.keys()
                    .all(|k| ["uuid", "port", "fixed_ip", "tag"].contains(&k.as_str()))
            });
            if !known {
                return Err(FieldError::new(
                    field,
                    item,
                    "must be an object with uuid (and fixed_ip) or port",
                ));
            }
            out.push(match (text("uuid"), text("port"), text("fixed_ip")) {
                (Some(net), None, ip) => {
                    crate::ids::check_uuid(&format!("{field}.uuid"), net)?;
                    let fixed_ip = ip
                        .map(|ip| {
                            ip.parse().map_err(|_| {
                                FieldError::new(
                                    format!("{field}.fixed_ip"),
                                    ip,
                                    "must be an IP address",
                                )
                            })
                        })
                        .transpose()?;
                    NicRequest::Network {
                        id: net.to_string(),
                        fixed_ip,
                    }
                }
                (None, Some(port), None) => {
                    crate::ids::check_uuid(&format!("{field}.port"), port)?;
                    NicRequest::Port {
                        id: port.to_string(),
                    }
                }
                _ => {
                    return Err(FieldError::new(
                        field,
                        item,
                        "must name a network (uuid, with fixed_ip if wanted) or a port, not both",
                    ))
                }
            });
        }
        Ok(Nics::List(out))
    }

    /// Refuses what the request asks for that Roost does not do yet, so it
    /// is never silently ignored.
    pub fn check_supported(&self) -> Result<(), FieldError> {
        crate::validate::name("server.name", &self.name)?;
        for (f, v) in [
            ("server.min_count", self.min_count),
            ("server.max_count", self.max_count),
        ] {
            if let Some(n) = v {
                if n != 1 {
                    return Err(FieldError::new(
                        f,
                        n,
                        "must be 1: create servers one at a time",
                    ));
                }
            }
        }
        if let Some(k) = &self.key_name {
            return Err(FieldError::new(
                "server.key_name",
                k,
                "key pairs are not supported yet; leave it out",
            ));
        }
        self.image_id()?;
        self.nics()?;
        if let Some(v) = &self.security_groups {
            let only_default = v.as_array().is_some_and(|groups| {
                groups
                    .iter()
                    .all(|g| g.get("name").and_then(|n| n.as_str()) == Some("default"))
            });
            if !only_default {
                return Err(FieldError::new(
                    "server.security_groups",
                    v,
                    "only [{\"name\": \"default\"}] until security groups land; leave it out",
                ));
            }
        }
        let unsupported = [
            (
                "server.user_data",
                self.user_data
                    .as_ref()
                    .map(|u| format!("{} bytes", u.len())),
            ),
            (
                "server.config_drive",
                (self.config_drive == Some(true)).then(|| "true".to_string()),
            ),
            (
                "server.description",
                self.description.clone().filter(|d| !d.is_empty()),
            ),
        ];
        for (f, given) in unsupported {
            if let Some(v) = given {
                return Err(FieldError::new(f, v, "is not supported yet; leave it out"));
            }
        }
        for (k, v) in &self.metadata {
            if k.is_empty() || k.len() > 255 || v.len() > 255 {
                return Err(FieldError::new(
                    "server.metadata",
                    k,
                    "keys must be 1 to 255 characters, values at most 255",
                ));
            }
        }
        if self.metadata.len() > 128 {
            return Err(FieldError::new(
                "server.metadata",
                self.metadata.len(),
                "must have at most 128 items",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct SchedulerHints {
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlavorCreateBody {
    pub flavor: FlavorCreate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlavorCreate {
    pub name: String,
    #[serde(default)]
    pub id: Option<String>,
    pub vcpus: u32,
    pub ram: u64,
    pub disk: u64,
    #[serde(default, rename = "OS-FLV-EXT-DATA:ephemeral")]
    pub ephemeral: Option<u64>,
    /// Nova accepts `""` for no swap.
    #[serde(default)]
    pub swap: Option<serde_json::Value>,
    #[serde(default)]
    pub rxtx_factor: Option<f64>,
    #[serde(default, rename = "os-flavor-access:is_public")]
    pub is_public: Option<bool>,
    #[serde(default)]
    pub description: Option<String>,
}

impl FlavorCreate {
    /// The flavor spec this request asks for, validated.
    pub fn into_spec(self) -> Result<FlavorSpec, FieldError> {
        let swap_mb = match &self.swap {
            None | Some(serde_json::Value::Null) => 0,
            Some(serde_json::Value::String(s)) if s.is_empty() => 0,
            Some(serde_json::Value::Number(n)) => n.as_u64().ok_or_else(|| {
                FieldError::new("flavor.swap", n, "must be a whole number of MiB")
            })?,
            Some(other) => {
                return Err(FieldError::new(
                    "flavor.swap",
                    other,
                    "must be a whole number of MiB or \"\"",
                ))
            }
        };
        let id = self.id.filter(|i| !i.is_empty() && i != "auto");
        let spec = FlavorSpec {
            name: self.name,
            id,
            vcpus: self.vcpus,
            ram_mb: self.ram,
            disk_gb: self.disk,
            ephemeral_gb: self.ephemeral.unwrap_or(0),
            swap_mb,
            is_public: self.is_public.unwrap_or(true),
            extra_specs: BTreeMap::new(),
        };
        spec.validate().map_err(|e| {
            let api_name = match e.field.as_str() {
                "ram_mb" => "ram",
                "disk_gb" => "disk",
                "ephemeral_gb" => "OS-FLV-EXT-DATA:ephemeral",
                "swap_mb" => "swap",
                other => other,
            };
            FieldError {
                field: api_name.to_string(),
                ..e
            }
            .at("flavor")
        })?;
        Ok(spec)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerGroupCreateBody {
    pub server_group: ServerGroupCreate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerGroupCreate {
    pub name: String,
    /// Before microversion 2.64: a list of exactly one policy.
    #[serde(default)]
    pub policies: Option<Vec<String>>,
    /// Microversion 2.64 and later.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub rules: Option<serde_json::Value>,
}

impl ServerGroupCreate {
    pub fn into_spec(self, project_id: &str) -> Result<ServerGroupSpec, FieldError> {
        let policy = match (&self.policy, &self.policies) {
            (Some(p), None) => GroupPolicy::parse("server_group.policy", p)?,
            (None, Some(list)) if list.len() == 1 => {
                GroupPolicy::parse("server_group.policies[0]", &list[0])?
            }
            (None, Some(list)) => {
                return Err(FieldError::new(
                    "server_group.policies",
                    list.len(),
                    "must hold exactly one policy",
                ))
            }
            (None, None) => return Err(FieldError::missing("server_group.policy")),
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "server_group.policies",
                    "both",
                    "give either policy or policies, not both",
                ))
            }
        };
        if let Some(r) = &self.rules {
            if r.as_object().is_some_and(|o| !o.is_empty()) {
                return Err(FieldError::new(
                    "server_group.rules",
                    r,
                    "rules are not supported yet; leave them out",
                ));
            }
        }
        let spec = ServerGroupSpec {
            name: self.name,
            project_id: project_id.into(),
            policy,
        };
        spec.validate().map_err(|e| e.at("server_group"))?;
        Ok(spec)
    }
}

/// `POST /servers/{id}/action` bodies Roost handles.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum ServerAction {
    #[serde(rename = "os-stop")]
    Stop(serde_json::Value),
    #[serde(rename = "os-start")]
    Start(serde_json::Value),
    #[serde(rename = "reboot")]
    Reboot(RebootArgs),
    #[serde(rename = "rebuild")]
    Rebuild(RebuildArgs),
}

/// Nova's `rebuild` action: the image to rebuild the root disk from.
/// Nova's other rebuild fields (name, metadata, adminPass, ...) are refused
/// rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildArgs {
    #[serde(rename = "imageRef")]
    pub image_ref: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootArgs {
    #[serde(rename = "type")]
    pub kind: String,
}

impl RebootArgs {
    /// Whether the reboot is HARD (else SOFT).
    pub fn hard(&self) -> Result<bool, FieldError> {
        match self.kind.as_str() {
            "HARD" => Ok(true),
            "SOFT" => Ok(false),
            other => Err(FieldError::new(
                "reboot.type",
                other,
                "must be SOFT or HARD",
            )),
        }
    }
}

// ---------------------------------------------------------------- neutron
//
// Fields python-openstackclient sends that Roost does not act on
// (`description`, `port_security_enabled`, ...) are accepted and ignored;
// anything else unknown is refused.

/// Deserializes a field that may be absent (`None`), `null` (`Some(None)`)
/// or a value.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreateBody {
    pub network: NetworkCreate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    #[serde(default)]
    pub name: String,
    #[serde(default = "yes")]
    pub admin_state_up: bool,
    #[serde(default)]
    pub shared: bool,
    #[serde(default, rename = "provider:network_type")]
    pub network_type: Option<NetworkKind>,
    #[serde(default, rename = "provider:segmentation_id")]
    pub segmentation_id: Option<u32>,
    #[serde(default, rename = "provider:physical_network")]
    pub physical_network: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub port_security_enabled: Option<bool>,
    #[serde(default)]
    pub availability_zone_hints: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}

impl NetworkCreate {
    /// Tenant networks are VXLAN unless the caller says otherwise.
    pub fn into_spec(self, project_id: &str) -> Result<NetworkSpec, FieldError> {
        let kind = self.network_type.unwrap_or(NetworkKind::Vxlan);
        let spec = NetworkSpec {
            name: self.name,
            project_id: project_id.to_string(),
            kind,
            segmentation_id: self.segmentation_id,
            physical_network: self.physical_network,
            mtu: self.mtu.unwrap_or(match kind {
                NetworkKind::Vxlan => 1450,
                _ => 1500,
            }),
            shared: self.shared,
            admin_state_up: self.admin_state_up,
            deleted: false,
        };
        spec.validate().map_err(|e| e.at("network"))?;
        Ok(spec)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetCreateBody {
    pub subnet: SubnetCreate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetCreate {
    pub network_id: String,
    pub cidr: String,
    #[serde(default)]
    pub ip_version: Option<u8>,
    #[serde(default)]
    pub name: String,
    /// Absent: the first host address; `null`: no gateway.
    #[serde(default, deserialize_with = "present")]
    pub gateway_ip: Option<Option<std::net::IpAddr>>,
    #[serde(default)]
    pub allocation_pools: Option<Vec<AllocationPool>>,
    #[serde(default)]
    pub dns_nameservers: Vec<std::net::IpAddr>,
    #[serde(default = "yes")]
    pub enable_dhcp: bool,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub ipv6_ra_mode: Option<String>,
    #[serde(default)]
    pub ipv6_address_mode: Option<String>,
}

impl SubnetCreate {
    pub fn into_spec(self, project_id: &str) -> Result<SubnetSpec, FieldError> {
        let at = |e: FieldError| e.at("subnet");
        let cidr = Cidr::parse("cidr", &self.cidr).map_err(at)?;
        if let Some(v) = self.ip_version {
            if v != cidr.ip_version() {
                return Err(FieldError::new(
                    "subnet.ip_version",
                    v,
                    format!("must be the cidr's version ({})", cidr.ip_version()),
                ));
            }
        }
        let mut spec = SubnetSpec::with_defaults(
            self.name,
            project_id.to_string(),
            self.network_id,
            cidr,
            self.gateway_ip,
            self.allocation_pools,
        );
        spec.dns_nameservers = self.dns_nameservers;
        spec.enable_dhcp = self.enable_dhcp;
        let mode = |field: &str, m: Option<String>| {
            m.map(|m| crate::model::Ipv6Mode::parse(field, &m))
                .transpose()
                .map_err(at)
        };
        spec.ipv6_ra_mode = mode("ipv6_ra_mode", self.ipv6_ra_mode)?;
        spec.ipv6_address_mode = mode("ipv6_address_mode", self.ipv6_address_mode)?;
        spec.validate().map_err(at)?;
        Ok(spec)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortCreateBody {
    pub port: PortCreate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortCreate {
    pub network_id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default = "yes")]
    pub admin_state_up: bool,
    #[serde(default)]
    pub fixed_ips: Vec<FixedIpRequest>,
    #[serde(default)]
    pub mac_address: Option<String>,
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub device_owner: Option<String>,
    #[serde(default)]
    pub security_groups: Option<Vec<String>>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub port_security_enabled: Option<bool>,
    #[serde(default, rename = "binding:host_id")]
    pub host_id: Option<String>,
}

impl PortCreate {
    pub fn into_spec(self, project_id: &str) -> Result<PortSpec, FieldError> {
        let spec = PortSpec {
            name: self.name,
            project_id: project_id.to_string(),
            network_id: self.network_id,
            fixed_ips: self.fixed_ips,
            mac_address: self.mac_address.map(|m| m.to_ascii_lowercase()),
            device_id: self.device_id.filter(|d| !d.is_empty()),
            device_owner: self.device_owner.filter(|d| !d.is_empty()),
            security_groups: self.security_groups,
            admin_state_up: self.admin_state_up,
            deleted: false,
            created_for_device: false,
        };
        spec.validate().map_err(|e| e.at("port"))?;
        Ok(spec)
    }
}

/// `PUT /v2.0/ports/{id}`: what a port may change here. Its network,
/// addresses and MAC are fixed once made (anything else is refused by name).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortUpdateBody {
    pub port: PortUpdate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortUpdate {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub admin_state_up: Option<bool>,
    #[serde(default)]
    pub security_groups: Option<Vec<String>>,
    /// Taken and not kept, as on create.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupCreateBody {
    pub security_group: SecurityGroupCreate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupCreate {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub stateful: Option<bool>,
}

impl SecurityGroupCreate {
    pub fn into_spec(self, project_id: &str) -> Result<SecurityGroupSpec, FieldError> {
        let spec = SecurityGroupSpec {
            name: self.name,
            description: self.description,
            project_id: project_id.to_string(),
            deleted: false,
        };
        spec.validate().map_err(|e| e.at("security_group"))?;
        Ok(spec)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupRuleCreateBody {
    pub security_group_rule: SecurityGroupRuleCreate,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroupRuleCreate {
    pub security_group_id: String,
    pub direction: Direction,
    #[serde(default)]
    pub ethertype: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port_range_min: Option<u16>,
    #[serde(default)]
    pub port_range_max: Option<u16>,
    #[serde(default)]
    pub remote_ip_prefix: Option<String>,
    #[serde(default)]
    pub remote_group_id: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

impl SecurityGroupRuleCreate {
    pub fn into_spec(self, project_id: &str) -> Result<SecurityGroupRuleSpec, FieldError> {
        let at = |e: FieldError| e.at("security_group_rule");
        let ip_version = match self.ethertype.as_deref() {
            None | Some("IPv4") => 4,
            Some("IPv6") => 6,
            Some(other) => {
                return Err(at(FieldError::new(
                    "ethertype",
                    other,
                    "must be IPv4 or IPv6",
                )))
            }
        };
        let remote_ip_prefix = self
            .remote_ip_prefix
            .map(|p| Cidr::parse("remote_ip_prefix", &p))
            .transpose()
            .map_err(at)?;
        let protocol = self
            .protocol
            .map(|p| p.to_ascii_lowercase())
            .filter(|p| p != "any");
        let spec = SecurityGroupRuleSpec {
            security_group_id: self.security_group_id,
            project_id: project_id.to_string(),
            direction: self.direction,
            ip_version,
            protocol,
            port_range_min: self.port_range_min,
            port_range_max: self.port_range_max,
            remote_ip_prefix,
            remote_group_id: self.remote_group_id,
        };
        spec.validate().map_err(at)?;
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavor_create_maps_api_names_in_errors() {
        let body: FlavorCreateBody =
            serde_json::from_str(r#"{"flavor":{"name":"x","vcpus":1,"ram":0,"disk":1,"swap":""}}"#)
                .unwrap();
        let err = body.flavor.into_spec().unwrap_err();
        assert_eq!(err.field, "flavor.ram");
    }

    #[test]
    fn server_group_policy_forms() {
        let g: ServerGroupCreateBody =
            serde_json::from_str(r#"{"server_group":{"name":"g","policies":["anti-affinity"]}}"#)
                .unwrap();
        assert_eq!(
            g.server_group.into_spec("p").unwrap().policy,
            GroupPolicy::AntiAffinity
        );
        let g: ServerGroupCreateBody =
            serde_json::from_str(r#"{"server_group":{"name":"g","policy":"spread"}}"#).unwrap();
        assert_eq!(
            g.server_group.into_spec("p").unwrap_err().field,
            "server_group.policy"
        );
    }

    #[test]
    fn actions_parse() {
        let a: ServerAction = serde_json::from_str(r#"{"os-stop": null}"#).unwrap();
        assert!(matches!(a, ServerAction::Stop(_)));
        let a: ServerAction = serde_json::from_str(r#"{"reboot": {"type": "HARD"}}"#).unwrap();
        assert!(matches!(a, ServerAction::Reboot(r) if r.hard().unwrap()));
        assert!(serde_json::from_str::<ServerAction>(r#"{"os-migrate": null}"#).is_err());
    }

    #[test]
    fn server_create_refuses_what_it_cannot_do() {
        let s: ServerCreateBody = serde_json::from_str(
            r#"{"server":{"name":"a","imageRef":"i","flavorRef":"1","min_count":2,"max_count":2}}"#,
        )
        .unwrap();
        assert_eq!(
            s.server.check_supported().unwrap_err().field,
            "server.min_count"
        );
        let s: ServerCreateBody =
            serde_json::from_str(r#"{"server":{"name":"a","flavorRef":"1"}}"#).unwrap();
        assert_eq!(
            s.server.check_supported().unwrap_err().field,
            "server.imageRef"
        );
    }
}

/// `POST /v2/images` (Glance): a flat object; keys Glance does not define
/// are the image's additional properties and must have text values.
#[derive(Debug, Deserialize)]
pub struct ImageCreateBody {
    pub name: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub visibility: Option<Visibility>,
    #[serde(default)]
    pub protected: Option<bool>,
    #[serde(default)]
    pub disk_format: Option<String>,
    #[serde(default)]
    pub container_format: Option<String>,
    #[serde(default)]
    pub min_disk: Option<u64>,
    #[serde(default)]
    pub min_ram: Option<u64>,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(flatten)]
    pub properties: BTreeMap<String, serde_json::Value>,
}

impl ImageCreateBody {
    /// The image spec this request asks for, validated, owned by `owner`.
    pub fn into_spec(self, owner: &str) -> Result<ImageSpec, FieldError> {
        let name = self
            .name
            .ok_or_else(|| FieldError::new("name", "null", "is required here"))?;
        let disk_format = match self.disk_format.as_deref() {
            Some("qcow2") => DiskFormat::Qcow2,
            Some("raw") => DiskFormat::Raw,
            Some(other) => {
                return Err(FieldError::new(
                    "disk_format",
                    other,
                    "must be qcow2 or raw (the formats this site's hypervisor boots)",
                ))
            }
            None => {
                return Err(FieldError::new(
                    "disk_format",
                    "null",
                    "is required: qcow2 or raw",
                ))
            }
        };
        let mut properties = BTreeMap::new();
        for (k, v) in self.properties {
            match v {
                serde_json::Value::String(s) => {
                    properties.insert(k, s);
                }
                other => {
                    return Err(FieldError::new(
                        k.as_str(),
                        other,
                        "an additional property's value must be a string",
                    ))
                }
            }
        }
        let spec = ImageSpec {
            name,
            id: self.id,
            disk_format,
            container_format: self.container_format.unwrap_or_else(|| "bare".into()),
            min_disk_gb: self.min_disk.unwrap_or(0),
            min_ram_mb: self.min_ram.unwrap_or(0),
            sha256: None,
            file: None,
            kernel: None,
            ramdisk: None,
            command_line: None,
            visibility: self.visibility.unwrap_or(Visibility::Shared),
            owner: Some(owner.to_string()),
            protected: self.protected.unwrap_or(false),
            tags: self.tags.unwrap_or_default(),
            properties,
            region: None,
        };
        spec.validate().map_err(|e| {
            let api_name = match e.field.as_str() {
                "min_disk_gb" => "min_disk",
                "min_ram_mb" => "min_ram",
                _ => return e,
            };
            FieldError {
                field: api_name.into(),
                ..e
            }
        })?;
        Ok(spec)
    }
}

#[cfg(test)]
mod image_and_bdm_tests {
    use super::*;

    fn server(v: serde_json::Value) -> ServerCreate {
        serde_json::from_value::<ServerCreateBody>(json!({ "server": v }))
            .unwrap()
            .server
    }

    use serde_json::json;

    const IMG: &str = "11111111-2222-4333-8444-555555555555";

    #[test]
    fn the_boot_image_comes_from_image_ref_or_the_clients_mapping() {
        let by_ref = server(
            json!({"name": "a", "flavorRef": "1", "imageRef": format!("http://x/images/{IMG}/")}),
        );
        assert_eq!(by_ref.image_id().unwrap(), IMG);
        // What `openstack server create --image` sends.
        let by_bdm = server(
            json!({"name": "a", "flavorRef": "1", "block_device_mapping_v2": [
                {"uuid": IMG, "boot_index": 0, "source_type": "image", "destination_type": "local", "delete_on_termination": true}
            ]}),
        );
        assert_eq!(by_bdm.image_id().unwrap(), IMG);
        let both = server(
            json!({"name": "a", "flavorRef": "1", "imageRef": IMG, "block_device_mapping_v2": [
                {"uuid": IMG, "boot_index": "0", "source_type": "image", "destination_type": "local"}
            ]}),
        );
        assert_eq!(both.image_id().unwrap(), IMG);
    }

    #[test]
    fn volume_mappings_and_a_missing_image_are_refused_by_field() {
        let cases = [
            (json!({"name": "a", "flavorRef": "1"}), "server.imageRef"),
            (
                json!({"name": "a", "flavorRef": "1", "block_device_mapping_v2": [
                    {"uuid": IMG, "boot_index": 0, "source_type": "image", "destination_type": "volume", "volume_size": 1}
                ]}),
                "server.block_device_mapping_v2[0]",
            ),
            (
                json!({"name": "a", "flavorRef": "1", "imageRef": IMG, "block_device_mapping_v2": [
                    {"boot_index": -1, "source_type": "blank", "destination_type": "local"}
                ]}),
                "server.block_device_mapping_v2[0]",
            ),
            (
                json!({"name": "a", "flavorRef": "1", "imageRef": IMG, "block_device_mapping_v2": [
                    {"uuid": "22222222-2222-4333-8444-555555555555", "boot_index": 0, "source_type": "image", "destination_type": "local"}
                ]}),
                "server.block_device_mapping_v2[0].uuid",
            ),
        ];
        for (body, field) in cases {
            let e = server(body.clone()).image_id().unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
        }
    }

    #[test]
    fn an_image_request_keeps_its_properties_and_refuses_bad_ones_by_name() {
        let body: ImageCreateBody = serde_json::from_value(json!({
            "name": "plc", "disk_format": "qcow2", "container_format": "bare",
            "visibility": "private", "min_disk": 2, "hw_disk_bus": "virtio",
        }))
        .unwrap();
        let spec = body.into_spec("proj").unwrap();
        assert_eq!(spec.owner.as_deref(), Some("proj"));
        assert_eq!(spec.visibility, Visibility::Private);
        assert_eq!(spec.min_disk_gb, 2);
        assert_eq!(
            spec.properties.get("hw_disk_bus").map(String::as_str),
            Some("virtio")
        );

        let bad = [
            (json!({"name": "x", "disk_format": "vmdk"}), "disk_format"),
            (json!({"name": "x"}), "disk_format"),
            (json!({"disk_format": "raw"}), "name"),
            (
                json!({"name": "x", "disk_format": "raw", "container_format": "ovf"}),
                "container_format",
            ),
            (
                json!({"name": "x", "disk_format": "raw", "hw_qemu_guest_agent": true}),
                "hw_qemu_guest_agent",
            ),
            (
                json!({"name": "x", "disk_format": "raw", "checksum": "abc"}),
                "checksum",
            ),
            (
                json!({"name": "x", "disk_format": "raw", "min_ram": 99999999999u64}),
                "min_ram",
            ),
        ];
        for (body, field) in bad {
            let e = serde_json::from_value::<ImageCreateBody>(body.clone())
                .unwrap()
                .into_spec("p")
                .unwrap_err();
            assert_eq!(e.field, field, "{body}: {e}");
        }
    }
}
