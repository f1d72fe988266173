//! Who may do what: oslo.policy-style rules, the defaults, and the YAML
//! file an operator overrides them with (`api.policy_file`).
//!
//! Every API call is an *action* named `service:resource[:sub]:verb`, read
//! off the route it matched ([`action_for`]): `compute:servers:create`,
//! `network:ports:update`, `volume:volumes:action`,
//! `identity:projects:users:roles:update`. The verb is `list` or `get`
//! (GET on a collection or an item), `create` (POST), `action` (POST to
//! `.../action`), `update` (PUT, PATCH) or `delete`. A few checks inside
//! handlers have names of their own ([`SPECIAL`]), among them each server
//! action by its key (`compute:servers:action:os-stop`), checked after
//! `compute:servers:action`.
//!
//! A rule is oslo.policy's language: `role:NAME`, `rule:ALIAS`,
//! `user_id:ID`, `user_name:NAME`, `project_id:ID` (or
//! `project_id:%(project_id)s`, the project the path names, else the
//! caller's own), `project_name:NAME`, `@` (always), `!` (never), an empty
//! rule (always), joined with `and`, `or`, `not` and parentheses. The
//! defaults follow Keystone's admin, member and reader roles: readers read,
//! members change their project, admins do anything, and only admins
//! manage flavors, hypervisors, users, projects and role assignments.
//! `context_is_admin` (default: an admin role) decides who acts across
//! every project, and every admin-only default is `rule:context_is_admin`,
//! so narrowing it narrows them all.
//!
//! Pure: parsing and evaluation take values and return values.

use std::collections::{BTreeMap, HashMap};

use crate::validate::FieldError;

/// The aliases every default builds on; a policy file may redefine them.
pub const BASE: [(&str, &str); 4] = [
    ("admin", "role:admin"),
    // Who acts across every project (lists, uses and changes any
    // project's resources). As in OpenStack, an admin role on any project
    // is by default; narrow it with, e.g., `rule:admin and
    // project_name:admin`.
    ("context_is_admin", "rule:admin"),
    ("member", "role:member or rule:admin"),
    ("reader", "role:reader or rule:member"),
];

/// Actions whose default is not the verb's (`rule:reader` to read,
/// `rule:member` to change), and the checks handlers make by name.
pub const SPECIAL: [(&str, &str); 38] = [
    // A server action, then each action by its body's key: each defaults
    // to whatever `compute:servers:action` allows.
    ("compute:servers:action", "rule:member"),
    (
        "compute:servers:action:os-stop",
        "rule:compute:servers:action",
    ),
    (
        "compute:servers:action:os-start",
        "rule:compute:servers:action",
    ),
    (
        "compute:servers:action:reboot",
        "rule:compute:servers:action",
    ),
    (
        "compute:servers:action:rebuild",
        "rule:compute:servers:action",
    ),
    ("compute:flavors:create", "rule:context_is_admin"),
    ("compute:flavors:update", "rule:context_is_admin"),
    ("compute:flavors:delete", "rule:context_is_admin"),
    ("compute:os-hypervisors:list", "rule:context_is_admin"),
    ("compute:os-quota-sets:update", "rule:context_is_admin"),
    ("compute:os-quota-sets:delete", "rule:context_is_admin"),
    // Listing every project's servers (`--all-projects`).
    ("compute:servers:list-all-projects", "rule:context_is_admin"),
    // Listing every project's volumes (`--all-projects`).
    ("volume:volumes:list-all-projects", "rule:context_is_admin"),
    // Setting a volume's state by hand (`volume set --state`), as
    // Cinder's admin action.
    (
        "volume:volumes:action:os-reset_status",
        "rule:context_is_admin",
    ),
    // Bringing a volume back from a backup at the region: backups are kept
    // per site, not per project, so any project's could be named.
    ("volume:volumes:create-from-backup", "rule:context_is_admin"),
    // Making an image public.
    ("image:images:publicize", "rule:context_is_admin"),
    // Provider attributes of a network (type, physical network, segment).
    ("network:networks:provider", "rule:context_is_admin"),
    // A network every project may use.
    ("network:networks:shared", "rule:context_is_admin"),
    // The site's conflict journal and alarms cover every project.
    ("roost:conflicts:list", "rule:context_is_admin"),
    ("roost:alarms:list", "rule:context_is_admin"),
    // Revoking a token that is not the caller's own.
    ("identity:auth:tokens:revoke-other", "rule:context_is_admin"),
    // Any holder of a valid token may check and end it.
    ("identity:auth:tokens:list", "@"),
    ("identity:auth:tokens:delete", "@"),
    ("identity:projects:list", "rule:context_is_admin"),
    ("identity:projects:get", "rule:context_is_admin"),
    ("identity:projects:create", "rule:context_is_admin"),
    ("identity:projects:update", "rule:context_is_admin"),
    ("identity:projects:delete", "rule:context_is_admin"),
    ("identity:users:list", "rule:context_is_admin"),
    ("identity:users:get", "rule:context_is_admin"),
    ("identity:users:create", "rule:context_is_admin"),
    ("identity:users:update", "rule:context_is_admin"),
    ("identity:users:delete", "rule:context_is_admin"),
    (
        "identity:projects:users:roles:list",
        "rule:context_is_admin",
    ),
    ("identity:projects:users:roles:get", "rule:context_is_admin"),
    (
        "identity:projects:users:roles:update",
        "rule:context_is_admin",
    ),
    (
        "identity:projects:users:roles:delete",
        "rule:context_is_admin",
    ),
    ("identity:role_assignments:list", "rule:context_is_admin"),
];

const SERVICES: [&str; 6] = ["compute", "network", "image", "volume", "identity", "roost"];
const VERBS: [&str; 6] = ["list", "get", "create", "update", "delete", "action"];

/// Route prefixes and the service they belong to.
const PREFIXES: [(&str, &str); 6] = [
    ("/compute/v2.1/", "compute"),
    ("/network/v2.0/", "network"),
    ("/image/v2/", "image"),
    ("/volume/v3/{project}/", "volume"),
    ("/identity/v3/", "identity"),
    ("/roost/v1/", "roost"),
];

/// The action a request is, from its method and the route it matched
/// (`/compute/v2.1/servers/{id}/action`, placeholders as written).
pub fn action_for(method: &str, route: &str) -> String {
    let (service, rest) = PREFIXES
        .iter()
        .find_map(|(p, s)| route.strip_prefix(p).map(|r| (*s, r)))
        .unwrap_or(("roost", route.trim_start_matches('/')));
    let segments: Vec<&str> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| s.strip_suffix(".json").unwrap_or(s))
        .collect();
    // `servers/detail` lists; `quotas/{project}/details` gets one.
    let last = segments
        .iter()
        .rev()
        .find(|s| !matches!(**s, "detail" | "details"))
        .copied()
        .unwrap_or("");
    let verb = match method {
        "GET" | "HEAD" if last.starts_with('{') => "get",
        "GET" | "HEAD" => "list",
        "POST" if last == "action" => "action",
        "POST" => "create",
        "PUT" | "PATCH" => "update",
        "DELETE" => "delete",
        _ => "call",
    };
    let mut name = vec![service];
    name.extend(
        segments
            .iter()
            .filter(|s| !s.starts_with('{') && !matches!(**s, "detail" | "details" | "action")),
    );
    name.push(verb);
    name.join(":")
}

/// Who is asking.
#[derive(Debug, Clone, Default)]
pub struct Creds<'a> {
    pub roles: &'a [String],
    pub user_id: &'a str,
    pub user_name: &'a str,
    pub project_id: &'a str,
    pub project_name: &'a str,
}

/// What is asked about: the project the request is for (the one the path
/// names, else the caller's own).
#[derive(Debug, Clone, Default)]
pub struct Target<'a> {
    pub project_id: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    UserId,
    UserName,
    ProjectId,
    ProjectName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Literal(String),
    /// `%(project_id)s`: the target's project.
    TargetProject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    Always,
    Never,
    Role(String),
    Alias(String),
    Field(Field, Value),
    Not(Box<Rule>),
    And(Vec<Rule>),
    Or(Vec<Rule>),
}

/// Parses one rule; the error says what is wrong with it.
fn parse(text: &str) -> Result<Rule, String> {
    // As oslo.policy: parentheses are peeled off the ends of each word, so
    // `%(project_id)s` inside a check stays whole.
    let mut tokens: Vec<&str> = Vec::new();
    for word in text.split_whitespace() {
        let inner = word.trim_start_matches('(');
        tokens.extend(std::iter::repeat_n("(", word.len() - inner.len()));
        let core = inner.trim_end_matches(')');
        if !core.is_empty() {
            tokens.push(core);
        }
        tokens.extend(std::iter::repeat_n(")", inner.len() - core.len()));
    }
    if tokens.is_empty() {
        return Ok(Rule::Always);
    }
    let mut p = Parser { tokens, at: 0 };
    let rule = p.or()?;
    match p.tokens.get(p.at) {
        None => Ok(rule),
        Some(t) => Err(format!("unexpected `{t}`")),
    }
}

struct Parser<'a> {
    tokens: Vec<&'a str>,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.tokens.get(self.at).copied()
    }

    fn or(&mut self) -> Result<Rule, String> {
        let mut all = vec![self.and()?];
        while self.peek() == Some("or") {
            self.at += 1;
            all.push(self.and()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Rule::Or(all)
        })
    }

    fn and(&mut self) -> Result<Rule, String> {
        let mut all = vec![self.not()?];
        while self.peek() == Some("and") {
            self.at += 1;
            all.push(self.not()?);
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Rule::And(all)
        })
    }

    fn not(&mut self) -> Result<Rule, String> {
        if self.peek() == Some("not") {
            self.at += 1;
            return Ok(Rule::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Rule, String> {
        let t = self
            .peek()
            .ok_or("the rule ends where a check was expected")?;
        self.at += 1;
        match t {
            "(" => {
                let inner = self.or()?;
                if self.peek() != Some(")") {
                    return Err("a `(` is not closed".into());
                }
                self.at += 1;
                Ok(inner)
            }
            ")" | "and" | "or" => Err(format!("unexpected `{t}`")),
            "@" => Ok(Rule::Always),
            "!" => Ok(Rule::Never),
            check => {
                let (kind, value) = check
                    .split_once(':')
                    .ok_or_else(|| format!("`{check}` is not a check (kind:value, @ or !)"))?;
                if value.is_empty() {
                    return Err(format!("`{check}` names nothing after the colon"));
                }
                let field = match kind {
                    "role" => return Ok(Rule::Role(value.to_ascii_lowercase())),
                    "rule" => return Ok(Rule::Alias(value.to_string())),
                    "user_id" => Field::UserId,
                    "user_name" => Field::UserName,
                    "project_id" => Field::ProjectId,
                    "project_name" => Field::ProjectName,
                    _ => return Err(format!(
                        "`{kind}:` is not a check Roost knows (role, rule, user_id, user_name, project_id, project_name)"
                    )),
                };
                let value = if value == "%(project_id)s" {
                    Value::TargetProject
                } else if value.starts_with("%(") {
                    return Err(format!(
                        "`{value}`: the only target field is %(project_id)s"
                    ));
                } else {
                    Value::Literal(value.to_string())
                };
                Ok(Rule::Field(field, value))
            }
        }
    }
}

/// The rules in force: the defaults with the policy file's overrides.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: HashMap<String, Rule>,
}

/// Whether `name` is an action Roost checks (by its shape or by name).
fn is_action(name: &str) -> bool {
    if SPECIAL.iter().any(|(n, _)| *n == name) {
        return true;
    }
    let parts: Vec<&str> = name.split(':').collect();
    parts.len() >= 3
        && SERVICES.contains(&parts[0])
        && VERBS.contains(parts.last().unwrap_or(&""))
        && parts[1..parts.len() - 1].iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

impl Default for Policy {
    fn default() -> Self {
        Policy::with_overrides(&BTreeMap::new(), "policy").expect("the defaults parse")
    }
}

impl Policy {
    /// The defaults with `overrides` (action or alias -> rule) on top;
    /// errors name `field.<key>`. A key with a colon must be an action
    /// Roost checks; one without is an alias for `rule:` to use. Every
    /// `rule:` must name an alias that exists, and none may refer back to
    /// itself.
    pub fn with_overrides(
        overrides: &BTreeMap<String, String>,
        field: &str,
    ) -> Result<Policy, FieldError> {
        let mut texts: BTreeMap<String, String> = BASE
            .iter()
            .chain(SPECIAL.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for (k, v) in overrides {
            if k.contains(':') && !is_action(k) {
                return Err(FieldError::new(
                    format!("{field}.{k}"),
                    v,
                    "is not an action Roost checks: actions are service:resource:verb \
                     (services compute, network, image, volume, identity, roost; verbs list, get, \
                     create, update, delete, action), see site-configs/README.md",
                ));
            }
            if k.is_empty() {
                return Err(FieldError::new(field, v, "a rule's name must not be empty"));
            }
            texts.insert(k.clone(), v.clone());
        }
        let mut rules = HashMap::new();
        for (k, v) in &texts {
            let rule = parse(v).map_err(|why| {
                FieldError::new(format!("{field}.{k}"), v, format!("is not a rule: {why}"))
            })?;
            rules.insert(k.clone(), rule);
        }
        let policy = Policy { rules };
        for (k, v) in &texts {
            policy
                .check_aliases(&policy.rules[k], &mut vec![k.clone()])
                .map_err(|why| FieldError::new(format!("{field}.{k}"), v, why))?;
        }
        Ok(policy)
    }

    /// Parses a policy file's text (a YAML mapping of name to rule).
    pub fn from_yaml(text: &str, field: &str) -> Result<Policy, FieldError> {
        let map: BTreeMap<String, String> = if text.trim().is_empty() {
            BTreeMap::new()
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                FieldError::new(
                    field,
                    e.to_string(),
                    "must be a YAML mapping of action or alias to rule text",
                )
            })?
        };
        Policy::with_overrides(&map, field)
    }

    fn check_aliases(&self, rule: &Rule, path: &mut Vec<String>) -> Result<(), String> {
        match rule {
            Rule::Alias(name) => {
                if path.contains(name) {
                    return Err(format!(
                        "must not refer back to itself ({} -> {name})",
                        path.join(" -> ")
                    ));
                }
                let target = self
                    .rules
                    .get(name)
                    .ok_or_else(|| format!("refers to rule:{name}, which is not defined"))?;
                path.push(name.clone());
                let r = self.check_aliases(target, path);
                path.pop();
                r
            }
            Rule::Not(r) => self.check_aliases(r, path),
            Rule::And(all) | Rule::Or(all) => {
                all.iter().try_for_each(|r| self.check_aliases(r, path))
            }
            _ => Ok(()),
        }
    }

    /// The rule `action` is checked against: its own, else its verb's
    /// default.
    fn rule_of(&self, action: &str) -> Rule {
        if let Some(r) = self.rules.get(action) {
            return r.clone();
        }
        let reads = action.ends_with(":list") || action.ends_with(":get");
        Rule::Alias(if reads { "reader" } else { "member" }.into())
    }

    /// Whether `creds` may do `action` to `target`.
    pub fn allows(&self, action: &str, creds: &Creds, target: &Target) -> bool {
        self.eval(&self.rule_of(action), creds, target)
    }

    fn eval(&self, rule: &Rule, creds: &Creds, target: &Target) -> bool {
        match rule {
            Rule::Always => true,
            Rule::Never => false,
            Rule::Role(r) => creds.roles.iter().any(|have| have.eq_ignore_ascii_case(r)),
            // Aliases were checked to exist and not loop at load.
            Rule::Alias(name) => self
                .rules
                .get(name)
                .is_some_and(|r| self.eval(r, creds, target)),
            Rule::Field(field, value) => {
                let have = match field {
                    Field::UserId => creds.user_id,
                    Field::UserName => creds.user_name,
                    Field::ProjectId => creds.project_id,
                    Field::ProjectName => creds.project_name,
                };
                match value {
                    Value::Literal(v) => have == v,
                    Value::TargetProject => !have.is_empty() && have == target.project_id,
                }
            }
            Rule::Not(r) => !self.eval(r, creds, target),
            Rule::And(all) => all.iter().all(|r| self.eval(r, creds, target)),
            Rule::Or(all) => all.iter().any(|r| self.eval(r, creds, target)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds<'a>(roles: &'a [String], project: &'a str) -> Creds<'a> {
        Creds {
            roles,
            user_id: "u1",
            user_name: "alice",
            project_id: project,
            project_name: "dev",
        }
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn actions_are_read_off_routes() {
        for (m, route, want) in [
            ("GET", "/compute/v2.1/servers", "compute:servers:list"),
            (
                "GET",
                "/compute/v2.1/servers/detail",
                "compute:servers:list",
            ),
            ("GET", "/compute/v2.1/servers/{id}", "compute:servers:get"),
            ("POST", "/compute/v2.1/servers", "compute:servers:create"),
            (
                "POST",
                "/compute/v2.1/servers/{id}/action",
                "compute:servers:action",
            ),
            ("PUT", "/network/v2.0/ports/{id}", "network:ports:update"),
            ("DELETE", "/image/v2/images/{id}", "image:images:delete"),
            (
                "PUT",
                "/image/v2/images/{id}/file",
                "image:images:file:update",
            ),
            (
                "POST",
                "/volume/v3/{project}/volumes/{id}/action",
                "volume:volumes:action",
            ),
            (
                "GET",
                "/network/v2.0/quotas/{project}/details.json",
                "network:quotas:get",
            ),
            (
                "PUT",
                "/identity/v3/projects/{project}/users/{user}/roles/{role}",
                "identity:projects:users:roles:update",
            ),
            ("GET", "/roost/v1/alarms", "roost:alarms:list"),
        ] {
            assert_eq!(action_for(m, route), want, "{m} {route}");
            assert!(is_action(want), "{want}");
        }
    }

    #[test]
    fn defaults_follow_keystones_three_roles() {
        let p = Policy::default();
        let t = Target { project_id: "p1" };
        let reader = roles(&["reader"]);
        let member = roles(&["member", "reader"]);
        let admin = roles(&["admin"]);
        let nobody = roles(&[]);
        for (action, r, m, a) in [
            ("compute:servers:list", true, true, true),
            ("compute:servers:create", false, true, true),
            ("network:ports:update", false, true, true),
            ("compute:flavors:create", false, false, true),
            ("compute:flavors:list", true, true, true),
            ("identity:users:create", false, false, true),
            ("identity:roles:list", true, true, true),
            ("compute:servers:list-all-projects", false, false, true),
            // Backups are the site's, not a project's.
            ("volume:volumes:create-from-backup", false, false, true),
        ] {
            assert_eq!(
                p.allows(action, &creds(&reader, "p1"), &t),
                r,
                "{action} reader"
            );
            assert_eq!(
                p.allows(action, &creds(&member, "p1"), &t),
                m,
                "{action} member"
            );
            assert_eq!(
                p.allows(action, &creds(&admin, "p1"), &t),
                a,
                "{action} admin"
            );
        }
        assert!(!p.allows("compute:servers:list", &creds(&nobody, "p1"), &t));
        // Any valid token may be checked by its holder.
        assert!(p.allows("identity:auth:tokens:list", &creds(&nobody, "p1"), &t));
    }

    #[test]
    fn overrides_change_what_they_name_and_nothing_else() {
        let p = Policy::from_yaml(
            "# operators of the line may stop and start, not create\n\
             line_operator: \"role:operator and project_id:%(project_id)s\"\n\
             compute:servers:action: \"rule:member or rule:line_operator\"\n\
             compute:servers:create: \"rule:admin\"\n\
             network:networks:create: \"!\"\n",
            "api.policy_file",
        )
        .unwrap();
        let op = roles(&["operator"]);
        let member = roles(&["member"]);
        let own = Target { project_id: "p1" };
        let other = Target { project_id: "p2" };
        assert!(p.allows("compute:servers:action", &creds(&op, "p1"), &own));
        assert!(!p.allows("compute:servers:action", &creds(&op, "p1"), &other));
        assert!(!p.allows("compute:servers:create", &creds(&member, "p1"), &own));
        assert!(!p.allows(
            "network:networks:create",
            &creds(&roles(&["admin"]), "p1"),
            &own
        ));
        // Untouched actions keep their defaults.
        assert!(p.allows("network:ports:create", &creds(&member, "p1"), &own));
        assert!(!p.allows("network:ports:create", &creds(&op, "p1"), &own));
    }

    #[test]
    fn each_server_action_follows_the_action_rule_unless_named() {
        let p = Policy::from_yaml(
            "compute:servers:action: \"rule:member or role:driver\"\n\
             compute:servers:action:rebuild: \"rule:member\"\n",
            "f",
        )
        .unwrap();
        let driver = roles(&["driver"]);
        let t = Target::default();
        assert!(p.allows("compute:servers:action:os-stop", &creds(&driver, "p"), &t));
        assert!(p.allows("compute:servers:action:os-start", &creds(&driver, "p"), &t));
        assert!(!p.allows("compute:servers:action:rebuild", &creds(&driver, "p"), &t));
        // By default an admin anywhere acts everywhere; a file narrows it.
        let admin = roles(&["admin"]);
        let d = Policy::default();
        assert!(d.allows("context_is_admin", &creds(&admin, "p"), &t));
        let narrow = Policy::from_yaml(
            "context_is_admin: \"rule:admin and project_name:admin\"\n",
            "f",
        )
        .unwrap();
        assert!(!narrow.allows("context_is_admin", &creds(&admin, "p"), &t));
    }

    #[test]
    fn the_language_has_oslo_precedence() {
        let p = Policy::from_yaml(
            "x:y:z:list: \"role:a or role:b and not role:c\"\n\
             x2: \"(role:a or role:b) and not role:c\"\n\
             compute:things:list: \"rule:x2\"\n",
            "f",
        );
        // `x` is not a service: refused by name.
        let e = p.unwrap_err();
        assert_eq!(e.field, "f.x:y:z:list");
        assert!(e.rule.contains("not an action Roost checks"), "{e}");
        let p = Policy::from_yaml(
            "compute:a:list: \"role:a or role:b and not role:c\"\n\
             x2: \"(role:a or role:b) and not role:c\"\n\
             compute:b:list: \"rule:x2\"\n",
            "f",
        )
        .unwrap();
        let t = Target::default();
        let ac = roles(&["a", "c"]);
        // and binds tighter than or: a or (b and not c).
        assert!(p.allows("compute:a:list", &creds(&ac, "p"), &t));
        assert!(!p.allows("compute:b:list", &creds(&ac, "p"), &t));
        let empty = Policy::from_yaml("compute:a:list: \"\"\n", "f").unwrap();
        assert!(empty.allows("compute:a:list", &creds(&[], "p"), &t));
    }

    #[test]
    fn bad_files_are_refused_naming_the_key_and_the_rule() {
        for (yaml, key, says) in [
            (
                "compute:servers:create: \"role:\"\n",
                "f.compute:servers:create",
                "names nothing",
            ),
            (
                "compute:servers:create: \"role:a or\"\n",
                "f.compute:servers:create",
                "ends where",
            ),
            (
                "compute:servers:create: \"(role:a\"\n",
                "f.compute:servers:create",
                "not closed",
            ),
            (
                "compute:servers:create: \"rule:nope\"\n",
                "f.compute:servers:create",
                "rule:nope, which is not defined",
            ),
            (
                "compute:servers:create: \"domain_id:x\"\n",
                "f.compute:servers:create",
                "not a check Roost knows",
            ),
            (
                "a: \"rule:b\"\nb: \"rule:a\"\n",
                "f.a",
                "refer back to itself",
            ),
            (
                "compute:servers:explode: \"@\"\n",
                "f.compute:servers:explode",
                "not an action",
            ),
            (
                "compute:servers:create: \"project_id:%(user_id)s\"\n",
                "f.compute:servers:create",
                "only target field",
            ),
        ] {
            let e = Policy::from_yaml(yaml, "f").unwrap_err();
            assert_eq!(e.field, key, "{yaml}");
            assert!(e.rule.contains(says), "{yaml}: {e}");
        }
        let e = Policy::from_yaml("- just\n- a list\n", "f").unwrap_err();
        assert_eq!(e.field, "f");
        assert!(e.rule.contains("YAML mapping"), "{e}");
    }
}
