//! Request bodies of the OpenStack-shaped APIs, as clients send them.
//!
//! Bodies are parsed strictly (`deny_unknown_fields`, like Nova's JSON
//! schemas with `additionalProperties: false`) and then turned into specs that
//! go through the same `validate` as config files.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::{FlavorSpec, GroupPolicy, ServerGroupSpec};
use crate::validate::FieldError;

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

impl ServerCreate {
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
        if self.image_ref.as_deref().is_none_or(str::is_empty) {
            return Err(FieldError::missing("server.imageRef"));
        }
        match &self.networks {
            None => {}
            Some(serde_json::Value::String(s)) if s == "auto" || s == "none" => {}
            Some(v) => {
                return Err(FieldError::new(
                    "server.networks",
                    v,
                    "only \"auto\" or \"none\" until site networking lands; leave it out",
                ))
            }
        }
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
