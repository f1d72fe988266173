//! Keystone's projects, users and role assignments, and the revocation
//! events that end a subject's tokens. The site's own rows (not in the
//! synced documents): a factory's operators are managed where they work,
//! online or not.
//!
//! - The bootstrap admin project is a row like any other (made at start),
//!   and cannot be disabled or deleted. The bootstrap admin user is not a
//!   row: its password is the config's (see `identity`), so `admin` is a
//!   reserved user name.
//! - Roles are Keystone's three: `admin`, `member`, `reader`.
//! - Passwords arrive here hashed (the API hashes them off the writer).
//! - Tokens are self-contained, so taking something away (a role, a
//!   password, a user, an enabled flag) records a revocation event: every
//!   token of that user or project issued before now is refused. Store
//!   users' issue times and all revocation times come from one clock that
//!   only moves forward, kept in `meta`, so a wall clock stepped back
//!   cannot reorder them (the bootstrap admin's tokens use the wall clock:
//!   nothing revokes them). Expiry follows the wall clock.

use chrono::{DateTime, Duration, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use roost_common::validate;

use super::rows::{parse_time, time};
use super::{StoreError, WriteCtx, WriteError};

/// The roles a user can hold on a project.
pub const ROLES: [&str; 3] = ["admin", "member", "reader"];

/// The bootstrap admin's user name, not available to others.
pub const ADMIN_NAME: &str = "admin";

/// Revocation events outlive the longest token (`api.token_ttl_secs` is at
/// most 7 days).
const KEEP_EVENTS: Duration = Duration::days(8);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub description: String,
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: String,
    pub name: String,
    pub default_project_id: Option<String>,
    pub description: String,
    pub enabled: bool,
    /// PHC string; never rendered.
    #[serde(skip)]
    pub password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Assignment {
    pub user_id: String,
    pub project_id: String,
    pub role: String,
}

/// A change to a project (absent fields stay).
#[derive(Debug, Clone, Default)]
pub struct ProjectChange {
    pub name: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// A new user, or a change to one (absent fields stay).
#[derive(Debug, Clone, Default)]
pub struct UserChange {
    pub name: Option<String>,
    pub password_hash: Option<String>,
    /// `Some(None)` clears it.
    pub default_project_id: Option<Option<String>>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
}

/// Makes the bootstrap admin project's row (once).
pub(super) fn bootstrap_project(
    conn: &Connection,
    id: &str,
    now: &DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO projects (id, name, description, enabled, created_at)
         VALUES (?1, 'admin', 'Bootstrap admin project', 1, ?2) ON CONFLICT (id) DO NOTHING",
        params![id, time(now)],
    )?;
    Ok(())
}

fn project_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Project> {
    Ok(Project {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        enabled: r.get(3)?,
    })
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        default_project_id: r.get(2)?,
        description: r.get(3)?,
        enabled: r.get(4)?,
        password_hash: r.get(5)?,
    })
}

const PROJECT_COLUMNS: &str = "id, name, description, enabled";
const USER_COLUMNS: &str = "id, name, default_project_id, description, enabled, password_hash";

/// Projects, by name; `name` filters to one.
pub fn projects(conn: &Connection, name: Option<&str>) -> Result<Vec<Project>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {PROJECT_COLUMNS} FROM projects WHERE ?1 IS NULL OR name = ?1 ORDER BY name"
    ))?;
    let rows = stmt.query_map([name], project_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn project(conn: &Connection, id: &str) -> Result<Option<Project>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1"),
            [id],
            project_row,
        )
        .optional()?)
}

/// Users (not the bootstrap admin), by name; `name` filters to one.
pub fn users(conn: &Connection, name: Option<&str>) -> Result<Vec<User>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE ?1 IS NULL OR name = ?1 ORDER BY name"
    ))?;
    let rows = stmt.query_map([name], user_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn user(conn: &Connection, id: &str) -> Result<Option<User>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"),
            [id],
            user_row,
        )
        .optional()?)
}

/// Role assignments matching every filter given.
pub fn assignments(
    conn: &Connection,
    user_id: Option<&str>,
    project_id: Option<&str>,
    role: Option<&str>,
) -> Result<Vec<Assignment>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT user_id, project_id, role FROM role_assignments
         WHERE (?1 IS NULL OR user_id = ?1) AND (?2 IS NULL OR project_id = ?2)
           AND (?3 IS NULL OR role = ?3)
         ORDER BY user_id, project_id, role",
    )?;
    let rows = stmt.query_map(params![user_id, project_id, role], |r| {
        Ok(Assignment {
            user_id: r.get(0)?,
            project_id: r.get(1)?,
            role: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every revocation event still in force: subject and the time tokens
/// issued before it are refused.
pub fn revocation_events(conn: &Connection) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT subject, issued_before FROM revocation_events")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (subject, t) = row?;
        out.push((subject, parse_time(&t)?));
    }
    Ok(out)
}

fn check_role(role: &str) -> Result<(), WriteError> {
    if ROLES.contains(&role) {
        Ok(())
    } else {
        Err(WriteError::NotFound(format!(
            "Could not find role: {role}. The roles are admin, member and reader."
        )))
    }
}

/// The `meta` key of the token clock's last reading.
const TOKEN_CLOCK: &str = "token_clock";

impl WriteCtx<'_> {
    /// The time of a token issue or a revocation: the writer's clock, but
    /// always after the last such time, kept across restarts. Tokens are
    /// ended by events at or after their issue, so the order of logins and
    /// revocations must hold even if the wall clock steps back (an NTP
    /// correction, a dead RTC battery at boot); otherwise a token issued
    /// before the step could outlive a revocation after it.
    fn token_clock(&mut self) -> Result<DateTime<Utc>, WriteError> {
        let last = super::inventory::meta(self.tx, TOKEN_CLOCK)?;
        let now = chrono::SubsecRound::trunc_subsecs(self.now, 6);
        let at = match last {
            Some(last) => now.max(parse_time(&last)? + Duration::microseconds(1)),
            None => now,
        };
        if at - now > Duration::minutes(1) {
            tracing::warn!(ahead_secs = (at - now).num_seconds(), "the token clock is ahead of the wall clock (it once ran ahead and never goes back); token issue and revocation stay ordered by it, expiry follows the wall clock");
        }
        super::inventory::set_meta(self.tx, TOKEN_CLOCK, &time(&at))?;
        Ok(at)
    }

    /// Ends every token of `subject` (`user:<id>`, `project:<id>`) issued
    /// before now. Returns the time, for the authority's memory.
    fn revoke_subject(&mut self, subject: &str) -> Result<DateTime<Utc>, WriteError> {
        let at = self.token_clock()?;
        self.tx.execute(
            "DELETE FROM revocation_events WHERE issued_before < ?1",
            [time(&(at - KEEP_EVENTS))],
        )?;
        self.tx.execute(
            "INSERT INTO revocation_events (subject, issued_before) VALUES (?1, ?2)
             ON CONFLICT (subject) DO UPDATE SET issued_before = excluded.issued_before",
            params![subject, time(&at)],
        )?;
        Ok(at)
    }

    fn project_or_404(&self, id: &str) -> Result<Project, WriteError> {
        project(self.tx, id)?
            .ok_or_else(|| WriteError::NotFound(format!("Could not find project: {id}.")))
    }

    fn user_or_404(&self, id: &str) -> Result<User, WriteError> {
        user(self.tx, id)?
            .ok_or_else(|| WriteError::NotFound(format!("Could not find user: {id}.")))
    }

    fn name_free(&self, table: &str, name: &str, id: &str) -> Result<(), WriteError> {
        let taken: bool = self.tx.query_row(
            &format!("SELECT EXISTS(SELECT 1 FROM {table} WHERE name = ?1 AND id != ?2)"),
            params![name, id],
            |r| r.get(0),
        )?;
        if taken || (table == "users" && name == ADMIN_NAME) {
            let kind = &table[..table.len() - 1];
            return Err(WriteError::Conflict(format!(
                "Conflict occurred attempting to store {kind} - a {kind} named {name:?} already exists."
            )));
        }
        Ok(())
    }

    pub fn create_project(
        &mut self,
        name: &str,
        description: &str,
        enabled: bool,
    ) -> Result<Project, WriteError> {
        validate::name("project.name", name)?;
        validate::text("project.description", description)?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.name_free("projects", name, &id)?;
        self.tx.execute(
            "INSERT INTO projects (id, name, description, enabled, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, name, description, enabled, time(&self.now)],
        )?;
        self.project_or_404(&id)
    }

    /// Returns the project and, when the change disabled or renamed it,
    /// the time its tokens stop working.
    pub fn update_project(
        &mut self,
        id: &str,
        admin_project: &str,
        change: ProjectChange,
    ) -> Result<(Project, Option<DateTime<Utc>>), WriteError> {
        let mut p = self.project_or_404(id)?;
        let mut takes_away = false;
        if let Some(name) = change.name.filter(|n| *n != p.name) {
            if id == admin_project {
                return Err(WriteError::Forbidden(
                    "the bootstrap admin project keeps its name (admin)".into(),
                ));
            }
            validate::name("project.name", &name)?;
            self.name_free("projects", &name, id)?;
            p.name = name;
            // Tokens carry the name, and rules may match it.
            takes_away = true;
        }
        if let Some(d) = change.description {
            validate::text("project.description", &d)?;
            p.description = d;
        }
        if let Some(enabled) = change.enabled {
            if !enabled && id == admin_project {
                return Err(WriteError::Forbidden(
                    "the bootstrap admin project cannot be disabled".into(),
                ));
            }
            takes_away |= p.enabled && !enabled;
            p.enabled = enabled;
        }
        self.tx.execute(
            "UPDATE projects SET name = ?2, description = ?3, enabled = ?4 WHERE id = ?1",
            params![id, p.name, p.description, p.enabled],
        )?;
        let revoked = if takes_away {
            Some(self.revoke_subject(&format!("project:{id}"))?)
        } else {
            None
        };
        Ok((p, revoked))
    }

    /// Deletes a project that owns nothing; its role assignments go with
    /// it and its tokens stop working (the time is returned).
    pub fn delete_project(
        &mut self,
        id: &str,
        admin_project: &str,
    ) -> Result<DateTime<Utc>, WriteError> {
        let p = self.project_or_404(id)?;
        if id == admin_project {
            return Err(WriteError::Forbidden(
                "the bootstrap admin project cannot be deleted".into(),
            ));
        }
        let mut owned = Vec::new();
        for (what, sql) in [
            (
                "servers",
                "SELECT COUNT(*) FROM servers WHERE project_id = ?1",
            ),
            (
                "volumes",
                "SELECT COUNT(*) FROM volumes WHERE project_id = ?1",
            ),
            (
                "snapshots",
                "SELECT COUNT(*) FROM volume_snapshots WHERE project_id = ?1",
            ),
            (
                "networks",
                "SELECT COUNT(*) FROM networks WHERE project_id = ?1",
            ),
            ("ports", "SELECT COUNT(*) FROM ports WHERE project_id = ?1"),
            (
                "server groups",
                "SELECT COUNT(*) FROM server_groups WHERE project_id = ?1",
            ),
            (
                "images",
                "SELECT COUNT(*) FROM images WHERE json_extract(spec, '$.owner') = ?1",
            ),
            (
                "security groups other projects' ports use",
                "SELECT COUNT(DISTINCT g.id) FROM security_groups g
                 JOIN port_security_groups pg ON pg.group_id = g.id
                 JOIN ports p ON p.id = pg.port_id
                 WHERE g.project_id = ?1 AND p.project_id != ?1",
            ),
        ] {
            let n: i64 = self.tx.query_row(sql, [id], |r| r.get(0))?;
            if n > 0 {
                owned.push(format!("{n} {what}"));
            }
        }
        if !owned.is_empty() {
            return Err(WriteError::Conflict(format!(
                "project {} still owns {}; delete them first",
                p.name,
                owned.join(", ")
            )));
        }
        // Its default security group (made on first use) goes with it.
        self.tx.execute(
            "DELETE FROM security_group_rules WHERE group_id IN (SELECT id FROM security_groups WHERE project_id = ?1)",
            [id],
        )?;
        self.tx
            .execute("DELETE FROM security_groups WHERE project_id = ?1", [id])?;
        self.tx
            .execute("DELETE FROM projects WHERE id = ?1", [id])?;
        self.tx.execute(
            "UPDATE users SET default_project_id = NULL WHERE default_project_id = ?1",
            [id],
        )?;
        self.revoke_subject(&format!("project:{id}"))
    }

    pub fn create_user(&mut self, change: UserChange) -> Result<User, WriteError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = change.name.clone().unwrap_or_default();
        validate::name("user.name", &name)?;
        self.name_free("users", &name, &id)?;
        let Some(hash) = change.password_hash.clone() else {
            return Err(WriteError::Invalid(roost_common::FieldError::missing(
                "user.password",
            )));
        };
        self.tx.execute(
            "INSERT INTO users (id, name, password_hash, default_project_id, description, enabled, created_at)
             VALUES (?1, ?2, ?3, NULL, '', 1, ?4)",
            params![id, name, hash, time(&self.now)],
        )?;
        let (user, _) = self.update_user(
            &id,
            UserChange {
                name: None,
                password_hash: None,
                ..change
            },
        )?;
        Ok(user)
    }

    /// Returns the user and, when the change took something away (a
    /// password, the enabled flag, the name its tokens carry), the time its
    /// tokens stop working.
    pub fn update_user(
        &mut self,
        id: &str,
        change: UserChange,
    ) -> Result<(User, Option<DateTime<Utc>>), WriteError> {
        let mut u = self.user_or_404(id)?;
        let mut takes_away = false;
        if let Some(name) = change.name.filter(|n| *n != u.name) {
            validate::name("user.name", &name)?;
            self.name_free("users", &name, id)?;
            u.name = name;
            takes_away = true;
        }
        if let Some(hash) = change.password_hash {
            u.password_hash = hash;
            takes_away = true;
        }
        if let Some(project) = change.default_project_id {
            if let Some(p) = &project {
                if self.project(p)?.is_none() {
                    return Err(WriteError::Invalid(roost_common::FieldError::new(
                        "user.default_project_id",
                        p,
                        "must name an existing project",
                    )));
                }
            }
            u.default_project_id = project;
        }
        if let Some(d) = change.description {
            validate::text("user.description", &d)?;
            u.description = d;
        }
        if let Some(enabled) = change.enabled {
            takes_away |= u.enabled && !enabled;
            u.enabled = enabled;
        }
        self.tx.execute(
            "UPDATE users SET name = ?2, password_hash = ?3, default_project_id = ?4,
             description = ?5, enabled = ?6 WHERE id = ?1",
            params![
                id,
                u.name,
                u.password_hash,
                u.default_project_id,
                u.description,
                u.enabled
            ],
        )?;
        let revoked = if takes_away {
            Some(self.revoke_subject(&format!("user:{id}"))?)
        } else {
            None
        };
        Ok((u, revoked))
    }

    fn project(&self, id: &str) -> Result<Option<Project>, WriteError> {
        Ok(project(self.tx, id)?)
    }

    /// Deletes a user with its role assignments; its tokens stop working.
    pub fn delete_user(&mut self, id: &str) -> Result<DateTime<Utc>, WriteError> {
        self.user_or_404(id)?;
        self.tx.execute("DELETE FROM users WHERE id = ?1", [id])?;
        self.revoke_subject(&format!("user:{id}"))
    }

    /// Gives `user` `role` on `project` (again is no change).
    pub fn grant(&mut self, project: &str, user: &str, role: &str) -> Result<(), WriteError> {
        check_role(role)?;
        self.project_or_404(project)?;
        self.user_or_404(user)?;
        self.tx.execute(
            "INSERT INTO role_assignments (user_id, project_id, role) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![user, project, role],
        )?;
        Ok(())
    }

    /// Takes `role` on `project` from `user`; the user's tokens stop
    /// working (the time is returned).
    pub fn ungrant(
        &mut self,
        project: &str,
        user: &str,
        role: &str,
    ) -> Result<DateTime<Utc>, WriteError> {
        check_role(role)?;
        let n = self.tx.execute(
            "DELETE FROM role_assignments WHERE user_id = ?1 AND project_id = ?2 AND role = ?3",
            params![user, project, role],
        )?;
        if n == 0 {
            return Err(WriteError::NotFound(format!(
                "Could not find role assignment with role: {role}, user: {user}, project: {project}."
            )));
        }
        self.revoke_subject(&format!("user:{user}"))
    }
}

/// Which project a login asks for.
#[derive(Debug, Clone)]
pub enum ProjectLookup {
    Id(String),
    Name(String),
    /// The user's default project.
    Default,
}

/// Why a login was refused (the client hears only "requires
/// authentication"; the log says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The user is gone or its password changed since it was checked.
    Changed,
    UserDisabled,
    NoDefaultProject,
    ProjectDisabled,
    NoRole,
}

/// What a login is given: decided in the writer, in order with every
/// revocation, so no token outlives a change that ends it.
#[derive(Debug, Clone)]
pub struct Login {
    pub user: User,
    pub project: Project,
    pub roles: Vec<String>,
    /// The token's issue time, from the writer's token clock: any later
    /// revocation is after it, whatever the wall clock did.
    pub at: DateTime<Utc>,
}

impl WriteCtx<'_> {
    /// Decides a login for `user_id`, whose password was checked against
    /// `checked_hash` outside the writer.
    pub fn login(
        &mut self,
        user_id: &str,
        checked_hash: &str,
        scope: ProjectLookup,
    ) -> Result<Result<Login, Refusal>, WriteError> {
        let Some(user) = user(self.tx, user_id)?.filter(|u| u.password_hash == checked_hash) else {
            return Ok(Err(Refusal::Changed));
        };
        if !user.enabled {
            return Ok(Err(Refusal::UserDisabled));
        }
        let project = match scope {
            ProjectLookup::Id(id) => project(self.tx, &id)?,
            ProjectLookup::Name(name) => projects(self.tx, Some(&name))?.pop(),
            ProjectLookup::Default => match &user.default_project_id {
                Some(id) => project(self.tx, id)?,
                None => return Ok(Err(Refusal::NoDefaultProject)),
            },
        };
        let Some(project) = project else {
            return Ok(Err(Refusal::NoRole));
        };
        if !project.enabled {
            return Ok(Err(Refusal::ProjectDisabled));
        }
        let roles: Vec<String> = assignments(self.tx, Some(&user.id), Some(&project.id), None)?
            .into_iter()
            .map(|a| a.role)
            .collect();
        if roles.is_empty() {
            return Ok(Err(Refusal::NoRole));
        }
        let at = self.token_clock()?;
        Ok(Ok(Login {
            user,
            project,
            roles,
            at,
        }))
    }
}
