//! Server writes and queries: create (schedule + claim in one step), intent
//! changes from the API, status changes from the reconciler.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use roost_common::model::{
    Fault, Flavor, Image, PowerIntent, Resource, Server, ServerGroup, ServerSpec, ServerStatus,
    TaskState, Usage, VmState,
};
use roost_common::FieldError;

use super::rows::{self, json, time};
use super::{StoreError, WriteCtx, WriteError};
use crate::metrics::METRICS;
use crate::scheduler::{self, GroupPlacement, Request};

/// A server to create; references are checked against the store.
#[derive(Debug, Clone)]
pub struct NewServer {
    pub spec: ServerSpec,
    /// The id, when the region chose it; a new one otherwise.
    pub id: Option<String>,
}

/// A change of intent on an existing server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerIntent {
    Stop,
    Start,
    Reboot {
        hard: bool,
    },
    /// Rebuild the root disk from this image (Nova's `rebuild`).
    Rebuild {
        image_id: String,
    },
    Delete,
}

impl ServerIntent {
    fn verb(&self) -> &'static str {
        match self {
            ServerIntent::Rebuild { .. } => "rebuild",
            ServerIntent::Stop => "stop",
            ServerIntent::Start => "start",
            ServerIntent::Reboot { hard: false } => "reboot",
            ServerIntent::Reboot { hard: true } => "reboot (hard)",
            ServerIntent::Delete => "delete",
        }
    }
}

/// Which servers a list returns.
#[derive(Debug, Clone, Default)]
pub struct ServerQuery {
    /// Only this project's servers; `None` for all projects.
    pub project_id: Option<String>,
    /// Servers whose name contains this.
    pub name: Option<String>,
    /// Servers whose Nova status is this (e.g. `ACTIVE`).
    pub status: Option<String>,
    /// Servers placed on this host.
    pub host: Option<String>,
    /// Start after the server with this id.
    pub marker: Option<String>,
    pub limit: Option<usize>,
}

/// Up to 5 servers, not being deleted, whose spec's `field` (`image_id`,
/// `flavor_id`) is `id`: what refuses deleting a resource in use.
pub(super) fn live_users(
    conn: &Connection,
    field: &'static str,
    id: &str,
) -> Result<Vec<String>, StoreError> {
    let sql = format!(
        "SELECT id FROM servers WHERE json_extract(spec, '$.{field}') = ?1
         AND json_extract(spec, '$.deleted') = 0 ORDER BY created_at LIMIT 5"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let ids = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

impl WriteCtx<'_> {
    /// Schedules the server and commits it with its claim.
    pub fn create_server(&mut self, new: NewServer) -> Result<Server, WriteError> {
        let spec = new.spec;
        let flavor: Flavor = rows::get(self.tx, "flavors", &spec.flavor_id)?.ok_or_else(|| {
            FieldError::new(
                "server.flavorRef",
                &spec.flavor_id,
                "must be the id of an existing flavor",
            )
        })?;
        let image: Image = rows::get(self.tx, "images", &spec.image_id)?.ok_or_else(|| {
            FieldError::new(
                "server.imageRef",
                &spec.image_id,
                "must be the id of an existing image",
            )
        })?;
        super::images::check_bootable(&image, "server.imageRef")?;
        super::images::touch(self.tx, &image.id, &self.now)?;
        image_fits(&flavor, &image, "server.flavorRef", &flavor.id)?;
        if let Some(az) = &spec.availability_zone {
            if !self.hosts().iter().any(|h| &h.spec.availability_zone == az) {
                let mut zones: Vec<&str> = self
                    .hosts()
                    .iter()
                    .map(|h| h.spec.availability_zone.as_str())
                    .collect();
                zones.sort_unstable();
                zones.dedup();
                return Err(FieldError::new(
                    "server.availability_zone",
                    az,
                    format!(
                        "must be an availability zone of this site: {}",
                        zones.join(", ")
                    ),
                )
                .into());
            }
        }
        let group = match &spec.server_group {
            None => None,
            Some(gid) => {
                let g: ServerGroup =
                    rows::get(self.tx, "server_groups", gid)?.ok_or_else(|| {
                        FieldError::new(
                            "os:scheduler_hints.group",
                            gid,
                            "must be the id of an existing server group",
                        )
                    })?;
                Some(GroupPlacement {
                    policy: g.spec.policy,
                    members_on: members_by_host(self.tx, gid)?,
                })
            }
        };
        self.check_quota(&flavor.spec.usage())?;
        let req = Request {
            usage: flavor.spec.usage(),
            availability_zone: spec.availability_zone.clone(),
            required_traits: flavor.spec.required_traits().map(String::from).collect(),
            forbidden_traits: flavor.spec.forbidden_traits().map(String::from).collect(),
            group,
        };
        let timer = std::time::Instant::now();
        let chosen = scheduler::schedule(self.hosts(), &req, self.weights);
        METRICS
            .scheduler_decision_seconds
            .observe(timer.elapsed().as_secs_f64());
        let chosen = &self.hosts()[chosen?].spec;
        let (host, zone) = (chosen.name.clone(), chosen.availability_zone.clone());

        let status = ServerStatus {
            host: Some(host.clone()),
            availability_zone: Some(zone),
            vm_state: VmState::Building,
            task_state: Some(TaskState::Spawning),
            ..Default::default()
        };
        let server = Resource {
            id: new.id.unwrap_or_else(roost_common::ids::new_id),
            spec,
            status,
            created_at: self.now,
            updated_at: self.now,
        };
        self.tx.execute(
            "INSERT INTO servers (id, project_id, group_id, host, spec, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
            params![
                server.id,
                server.spec.project_id,
                server.spec.server_group,
                host,
                json(&server.spec)?,
                json(&server.status)?,
                time(&self.now)
            ],
        )?;
        self.tx.execute(
            "INSERT INTO allocations (consumer_id, host, vcpus, ram_mb, disk_gb) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![server.id, host, req.usage.vcpus, req.usage.ram_mb, req.usage.disk_gb],
        )?;
        self.claim(&host, &req.usage);
        self.attach_nics(&server.id, &server.spec.project_id, &server.spec.networks)?;
        self.record_create("servers", &server.id, &server.spec);
        self.record_status("servers", &server.id, &server.status);
        Ok(server)
    }

    /// Keeps a server the site could not place (intent from the region that
    /// names a missing flavor, or finds no room): in ERROR with the reason,
    /// without a claim, as Nova shows a server that found no valid host.
    pub fn insert_failed_server(
        &mut self,
        id: &str,
        spec: ServerSpec,
        message: String,
    ) -> Result<(), WriteError> {
        let status = ServerStatus {
            vm_state: VmState::Error,
            fault: Some(Fault {
                code: 500,
                message,
                at: self.now,
            }),
            ..Default::default()
        };
        self.tx.execute(
            "INSERT INTO servers (id, project_id, group_id, host, spec, status, created_at, updated_at)
             VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, ?6)",
            params![id, spec.project_id, spec.server_group, json(&spec)?, json(&status)?, time(&self.now)],
        )?;
        self.record_status("servers", id, &status);
        Ok(())
    }

    /// Replaces a server's spec with the one the region's intent gives.
    pub fn replace_server_spec(&mut self, id: &str, spec: &ServerSpec) -> Result<(), WriteError> {
        self.tx.execute(
            "UPDATE servers SET spec = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, json(spec)?, time(&self.now)],
        )?;
        Ok(())
    }

    /// Records a change of intent, refusing one that conflicts with what the
    /// server is doing (as Nova answers 409).
    pub fn change_server(
        &mut self,
        id: &str,
        project_id: Option<&str>,
        intent: ServerIntent,
    ) -> Result<Server, WriteError> {
        let mut server: Server = rows::get(self.tx, "servers", id)?
            .filter(|s: &Server| project_id.is_none_or(|p| p == s.spec.project_id))
            .ok_or_else(|| WriteError::NotFound(format!("Instance {id} could not be found.")))?;
        let conflict = |why: String| {
            Err(WriteError::Conflict(format!(
                "Cannot '{}' instance {id} {why}",
                intent.verb()
            )))
        };
        if server.spec.deleted {
            return if intent == ServerIntent::Delete {
                Ok(server)
            } else {
                conflict("while it is being deleted".into())
            };
        }
        let before = server.spec.clone();
        // A volume change not under way yet does not hold up a stop: that
        // is how a disk the guest holds on to is freed.
        let busy = server.status.task_state.or_else(|| {
            pending_task(&server.spec, &server.status)
                .filter(|t| !(*t == TaskState::UpdatingVolumes && intent == ServerIntent::Stop))
        });
        // Nothing starts a guest on a volume being copied.
        let starts = matches!(
            intent,
            ServerIntent::Start
                | ServerIntent::Reboot { hard: true }
                | ServerIntent::Rebuild { .. }
        );
        if starts && super::volumes::snapshot_under_way(self.tx, &server.spec.volumes)? {
            return conflict("while a snapshot of one of its volumes is being made".into());
        }
        let vm = server.status.vm_state;
        match &intent {
            ServerIntent::Delete => server.spec.deleted = true,
            _ if busy.is_some() => {
                return conflict(format!("while it is in task_state {}", task_name(busy)))
            }
            ServerIntent::Stop if vm == VmState::Active => server.spec.power = PowerIntent::Stopped,
            ServerIntent::Start if vm == VmState::Stopped => {
                server.spec.power = PowerIntent::Running
            }
            ServerIntent::Reboot { hard: false } if vm == VmState::Active => {
                server.spec.reboot_generation += 1
            }
            ServerIntent::Reboot { hard: true }
                if matches!(vm, VmState::Active | VmState::Stopped) =>
            {
                server.spec.reboot_generation += 1;
                server.spec.reboot_hard = true;
                server.spec.power = PowerIntent::Running;
            }
            ServerIntent::Rebuild { image_id }
                if matches!(vm, VmState::Active | VmState::Stopped) =>
            {
                let image: Image = rows::get(self.tx, "images", image_id)?.ok_or_else(|| {
                    FieldError::new(
                        "rebuild.imageRef",
                        image_id,
                        "must be the id of an image at this site",
                    )
                })?;
                super::images::check_bootable(&image, "rebuild.imageRef")?;
                super::images::touch(self.tx, &image.id, &self.now)?;
                let flavor: Option<Flavor> = rows::get(self.tx, "flavors", &server.spec.flavor_id)?;
                if let Some(flavor) = flavor {
                    image_fits(&flavor, &image, "rebuild.imageRef", &image.id)?;
                }
                server.spec.image_id = image_id.clone();
                server.spec.rebuild_generation += 1;
            }
            _ => return conflict(format!("while it is in vm_state {}", vm_name(vm))),
        }
        if let ServerIntent::Reboot { hard: false } = intent {
            server.spec.reboot_hard = false;
        }
        self.save_spec(&mut server, &before)?;
        Ok(server)
    }

    /// Writes a server's changed spec and records the change for the
    /// region.
    fn save_spec(&mut self, server: &mut Server, before: &ServerSpec) -> Result<(), WriteError> {
        server.updated_at = self.now;
        self.tx.execute(
            "UPDATE servers SET spec = ?2, updated_at = ?3 WHERE id = ?1",
            params![server.id, json(&server.spec)?, time(&self.now)],
        )?;
        self.record_changes("servers", &server.id, before, &server.spec);
        Ok(())
    }

    /// Renames a server (its intent: the region sees the new name).
    pub fn rename_server(
        &mut self,
        id: &str,
        project_id: Option<&str>,
        name: &str,
    ) -> Result<Server, WriteError> {
        roost_common::validate::name("server.name", name)?;
        let mut server: Server = rows::get(self.tx, "servers", id)?
            .filter(|s: &Server| project_id.is_none_or(|p| p == s.spec.project_id))
            .filter(|s: &Server| !s.spec.deleted)
            .ok_or_else(|| WriteError::NotFound(format!("Instance {id} could not be found.")))?;
        let before = server.spec.clone();
        server.spec.name = name.to_string();
        self.save_spec(&mut server, &before)?;
        Ok(server)
    }

    /// Writes a server's status (the reconciler's output).
    pub fn set_server_status(&mut self, id: &str, status: &ServerStatus) -> Result<(), WriteError> {
        let before = super::volumes::status_volumes(self.tx, id)?;
        let n = self.tx.execute(
            "UPDATE servers SET status = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, json(status)?, time(&self.now)],
        )?;
        if n == 0 {
            return Err(WriteError::NotFound(format!("server {id} is gone")));
        }
        if before != status.volumes {
            self.settle_attachments(id, &before, &status.volumes)?;
        }
        self.record_status("servers", id, status);
        Ok(())
    }

    /// Marks a server failed with `fault` and gives its claim back.
    pub fn fail_server(
        &mut self,
        id: &str,
        mut status: ServerStatus,
        fault: Fault,
    ) -> Result<(), WriteError> {
        self.release_claim(id)?;
        status.vm_state = VmState::Error;
        status.task_state = None;
        status.fault = Some(fault);
        self.set_server_status(id, &status)
    }

    /// Removes a deleted server and its claim.
    pub fn remove_server(&mut self, id: &str) -> Result<(), WriteError> {
        self.release_claim(id)?;
        self.detach_nics(id)?;
        self.free_volumes_of(id)?;
        self.tx.execute("DELETE FROM servers WHERE id = ?1", [id])?;
        self.record_gone("servers", id);
        Ok(())
    }

    fn release_claim(&mut self, id: &str) -> Result<(), WriteError> {
        let claim = self
            .tx
            .query_row(
                "DELETE FROM allocations WHERE consumer_id = ?1 RETURNING host, vcpus, ram_mb, disk_gb",
                [id],
                |r| Ok((r.get::<_, String>(0)?, Usage { vcpus: r.get(1)?, ram_mb: r.get(2)?, disk_gb: r.get(3)? })),
            )
            .optional()?;
        if let Some((host, usage)) = claim {
            self.release(&host, &usage);
        }
        Ok(())
    }
}

/// Refuses an image whose min_disk or min_ram the flavor does not offer.
/// The error names `field` with `value` (the flavor on create, the image on
/// rebuild).
fn image_fits(flavor: &Flavor, image: &Image, field: &str, value: &str) -> Result<(), WriteError> {
    if flavor.spec.disk_gb > 0 && image.spec.min_disk_gb > flavor.spec.disk_gb {
        return Err(FieldError::new(
            field,
            value,
            format!(
                "the flavor's disk ({} GB) is smaller than the image's min_disk ({} GB)",
                flavor.spec.disk_gb, image.spec.min_disk_gb
            ),
        )
        .into());
    }
    if image.spec.min_ram_mb > flavor.spec.ram_mb {
        return Err(FieldError::new(
            field,
            value,
            format!(
                "the flavor's RAM ({} MB) is less than the image's min_ram ({} MB)",
                flavor.spec.ram_mb, image.spec.min_ram_mb
            ),
        )
        .into());
    }
    Ok(())
}

/// A task the spec asks for that status has not caught up with.
fn pending_task(spec: &ServerSpec, status: &ServerStatus) -> Option<TaskState> {
    match (spec.power, status.vm_state) {
        _ if spec.deleted => Some(TaskState::Deleting),
        (PowerIntent::Stopped, VmState::Active) => Some(TaskState::PoweringOff),
        (PowerIntent::Running, VmState::Stopped) => Some(TaskState::PoweringOn),
        _ if spec.rebuild_generation > status.rebuild_generation => Some(TaskState::Rebuilding),
        _ if spec.reboot_generation > status.reboot_generation && spec.reboot_hard => {
            Some(TaskState::RebootingHard)
        }
        _ if spec.reboot_generation > status.reboot_generation => Some(TaskState::Rebooting),
        (_, VmState::Active | VmState::Stopped) if spec.volumes != status.volumes => {
            Some(TaskState::UpdatingVolumes)
        }
        _ => None,
    }
}

/// The status as the API shows it: a task asked for and not yet picked up
/// by the reconciler already shows, as Nova sets task_state when it accepts
/// an action.
pub fn shown_status(server: &Server) -> ServerStatus {
    let st = &server.status;
    if st.task_state.is_some() || st.vm_state == VmState::Deleted {
        return st.clone();
    }
    ServerStatus {
        task_state: pending_task(&server.spec, st),
        ..st.clone()
    }
}

fn task_name(t: Option<TaskState>) -> String {
    t.map(|t| {
        serde_json::to_value(t)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    })
    .unwrap_or_else(|| "none".into())
}

fn vm_name(v: VmState) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

fn members_by_host(conn: &Connection, group_id: &str) -> Result<BTreeMap<String, u32>, WriteError> {
    let mut stmt = conn.prepare_cached(
        "SELECT host, COUNT(*) FROM servers WHERE group_id = ?1 AND host IS NOT NULL GROUP BY host",
    )?;
    let rows = stmt.query_map([group_id], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn list(conn: &Connection, q: &ServerQuery) -> Result<Vec<Server>, WriteError> {
    let mut all: Vec<Server> = match &q.project_id {
        Some(p) => rows::list(conn, "servers", "project_id = ?1", [p])?,
        None => rows::list(conn, "servers", "1", [])?,
    };
    if let Some(m) = &q.marker {
        let at = all.iter().position(|s| &s.id == m).ok_or_else(|| {
            FieldError::new("marker", m, "must be the id of a server in the list")
        })?;
        all.drain(..=at);
    }
    all.retain(|s| {
        q.name.as_deref().is_none_or(|n| s.spec.name.contains(n))
            && q.status
                .as_deref()
                .is_none_or(|st| st.eq_ignore_ascii_case(shown_status(s).nova_status()))
            && q.host
                .as_deref()
                .is_none_or(|h| s.status.host.as_deref() == Some(h))
    });
    if let Some(limit) = q.limit {
        all.truncate(limit);
    }
    Ok(all)
}

pub(super) fn groups(
    conn: &Connection,
    project_id: Option<&str>,
) -> Result<Vec<ServerGroup>, WriteError> {
    let mut groups: Vec<ServerGroup> = match project_id {
        Some(p) => rows::list(conn, "server_groups", "project_id = ?1", [p])?,
        None => rows::list(conn, "server_groups", "1", [])?,
    };
    let mut stmt =
        conn.prepare_cached("SELECT id FROM servers WHERE group_id = ?1 ORDER BY created_at, id")?;
    for g in &mut groups {
        g.status.members = stmt
            .query_map([&g.id], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
    }
    Ok(groups)
}

impl WriteCtx<'_> {
    pub fn create_server_group(
        &mut self,
        spec: roost_common::model::ServerGroupSpec,
    ) -> Result<ServerGroup, WriteError> {
        let g: ServerGroup = Resource::new(spec, self.now);
        self.tx.execute(
            "INSERT INTO server_groups (id, project_id, spec, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            params![g.id, g.spec.project_id, json(&g.spec)?, json(&g.status)?, time(&self.now)],
        )?;
        self.record_create("server_groups", &g.id, &g.spec);
        Ok(g)
    }

    /// Deletes a server group. Its servers stay where they are, as in Nova.
    pub fn delete_server_group(
        &mut self,
        id: &str,
        project_id: Option<&str>,
    ) -> Result<(), WriteError> {
        let n = match project_id {
            Some(p) => self.tx.execute(
                "DELETE FROM server_groups WHERE id = ?1 AND project_id = ?2",
                [id, p],
            )?,
            None => self
                .tx
                .execute("DELETE FROM server_groups WHERE id = ?1", [id])?,
        };
        if n == 0 {
            return Err(WriteError::NotFound(format!(
                "Instance group {id} could not be found."
            )));
        }
        self.record_delete("server_groups", id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_tasks_follow_spec_against_status() {
        let spec = ServerSpec {
            power: PowerIntent::Stopped,
            ..ServerSpec::new("a", "p", "u", "f", "i")
        };
        let status = ServerStatus {
            vm_state: VmState::Active,
            ..Default::default()
        };
        assert_eq!(pending_task(&spec, &status), Some(TaskState::PoweringOff));
        let running = ServerSpec {
            power: PowerIntent::Running,
            reboot_generation: 1,
            ..spec
        };
        assert_eq!(pending_task(&running, &status), Some(TaskState::Rebooting));
        assert_eq!(task_name(Some(TaskState::PoweringOff)), "powering-off");
        let hard = ServerSpec {
            reboot_hard: true,
            ..running.clone()
        };
        assert_eq!(pending_task(&hard, &status), Some(TaskState::RebootingHard));
        let rebuild = ServerSpec {
            rebuild_generation: 1,
            ..running.clone()
        };
        assert_eq!(pending_task(&rebuild, &status), Some(TaskState::Rebuilding));
        // What the API shows: the accepted task at once, as Nova.
        let mut server: Server = Resource::new(rebuild, chrono::Utc::now());
        server.status = status.clone();
        assert_eq!(shown_status(&server).nova_status(), "REBUILD");
        server.spec.deleted = true;
        assert_eq!(shown_status(&server).task_state, Some(TaskState::Deleting));
        // A task under way is shown as the reconciler wrote it.
        server.status.task_state = Some(TaskState::Spawning);
        assert_eq!(shown_status(&server).task_state, Some(TaskState::Spawning));
    }
}
