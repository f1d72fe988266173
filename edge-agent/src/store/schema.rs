//! Versioned migrations. Each entry runs once, in order, in its own
//! transaction; `PRAGMA user_version` records how many have run. Never edit a
//! migration that has shipped: append a new one.

use rusqlite::Connection;

use super::StoreError;

pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the foundation's tables.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
    CREATE TABLE hosts (
        id TEXT PRIMARY KEY, spec TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
    CREATE TABLE flavors (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, spec TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
    CREATE TABLE images (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
    CREATE TABLE server_groups (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
    CREATE TABLE servers (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, group_id TEXT, host TEXT,
        spec TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
    CREATE INDEX servers_by_project ON servers(project_id, created_at, id);
    CREATE INDEX servers_by_group ON servers(group_id);
    -- Placement-style claims: one row per server, written in the same
    -- transaction as the server row.
    CREATE TABLE allocations (
        consumer_id TEXT PRIMARY KEY REFERENCES servers(id),
        host TEXT NOT NULL REFERENCES hosts(id),
        vcpus INTEGER NOT NULL, ram_mb INTEGER NOT NULL, disk_gb INTEGER NOT NULL) STRICT;
    CREATE INDEX allocations_by_host ON allocations(host);
    "#,
    // 2: the site's documents (see `journal`), the sync state per peer, and
    // the conflict journal.
    r#"
    CREATE TABLE sync_changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        doc TEXT NOT NULL CHECK (doc IN ('intent', 'status')),
        bytes BLOB NOT NULL) STRICT;
    CREATE TABLE sync_snapshots (
        doc TEXT PRIMARY KEY CHECK (doc IN ('intent', 'status')),
        bytes BLOB NOT NULL) STRICT;
    CREATE TABLE sync_peers (
        peer TEXT PRIMARY KEY, intent BLOB NOT NULL, status BLOB NOT NULL,
        updated_at TEXT NOT NULL) STRICT;
    CREATE TABLE conflicts (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL, resource_id TEXT NOT NULL, field TEXT NOT NULL,
        winner TEXT NOT NULL, loser TEXT NOT NULL, recorded_at TEXT NOT NULL) STRICT;
    "#,
    // 3: networking (site-local for now) and IPAM.
    r#"
    CREATE TABLE networks (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, kind TEXT NOT NULL,
        physnet TEXT NOT NULL, segmentation_id INTEGER, shared INTEGER NOT NULL,
        spec TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
    CREATE UNIQUE INDEX networks_by_segment ON networks(kind, physnet, segmentation_id)
        WHERE segmentation_id IS NOT NULL;
    CREATE TABLE subnets (
        id TEXT PRIMARY KEY, network_id TEXT NOT NULL REFERENCES networks(id),
        project_id TEXT NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
    CREATE INDEX subnets_by_network ON subnets(network_id);
    CREATE TABLE ports (
        id TEXT PRIMARY KEY, network_id TEXT NOT NULL REFERENCES networks(id),
        project_id TEXT NOT NULL, device_id TEXT, mac TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
    CREATE INDEX ports_by_network ON ports(network_id);
    CREATE INDEX ports_by_device ON ports(device_id);
    -- IPAM: one row per address held, in the port's transaction; the key
    -- makes a double allocation impossible.
    CREATE TABLE ip_allocations (
        subnet_id TEXT NOT NULL REFERENCES subnets(id),
        ip TEXT NOT NULL,
        port_id TEXT NOT NULL REFERENCES ports(id) ON DELETE CASCADE,
        PRIMARY KEY (subnet_id, ip)) STRICT;
    CREATE INDEX ip_allocations_by_port ON ip_allocations(port_id);
    CREATE TABLE security_groups (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL,
        spec TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
    CREATE INDEX security_groups_by_project ON security_groups(project_id);
    CREATE UNIQUE INDEX one_default_group ON security_groups(project_id) WHERE name = 'default';
    CREATE TABLE security_group_rules (
        id TEXT PRIMARY KEY,
        group_id TEXT NOT NULL REFERENCES security_groups(id) ON DELETE CASCADE,
        spec TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
    CREATE INDEX security_group_rules_by_group ON security_group_rules(group_id);
    CREATE TABLE port_security_groups (
        port_id TEXT NOT NULL REFERENCES ports(id) ON DELETE CASCADE,
        group_id TEXT NOT NULL REFERENCES security_groups(id),
        PRIMARY KEY (port_id, group_id)) STRICT;
    CREATE INDEX port_security_groups_by_group ON port_security_groups(group_id);
    "#,
    // 4: this site's tokens revoked before their expiry (Keystone audit ids).
    r#"
    CREATE TABLE revoked_tokens (
        audit_id TEXT PRIMARY KEY, expires_at TEXT NOT NULL) STRICT;
    "#,
    // 5: volumes and their snapshots (site-local, like networks).
    r#"
    CREATE TABLE volumes (
        id TEXT PRIMARY KEY, project_id TEXT NOT NULL, name TEXT NOT NULL,
        spec TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
    CREATE INDEX volumes_by_project ON volumes(project_id, created_at, id);
    CREATE TABLE volume_snapshots (
        id TEXT PRIMARY KEY, volume_id TEXT NOT NULL REFERENCES volumes(id),
        project_id TEXT NOT NULL, spec TEXT NOT NULL, status TEXT NOT NULL,
        created_at TEXT NOT NULL, updated_at TEXT NOT NULL) STRICT;
    CREATE INDEX volume_snapshots_by_volume ON volume_snapshots(volume_id);
    CREATE INDEX volume_snapshots_by_project ON volume_snapshots(project_id, created_at, id);
    "#,
    // 6: the site's own alarms, active and cleared.
    r#"
    CREATE TABLE alarms (
        id INTEGER PRIMARY KEY, code TEXT NOT NULL, entity TEXT NOT NULL,
        severity TEXT NOT NULL, reason TEXT NOT NULL,
        raised_at TEXT NOT NULL, cleared_at TEXT) STRICT;
    CREATE UNIQUE INDEX alarms_active ON alarms(code, entity) WHERE cleared_at IS NULL;
    "#,
    // 7: Keystone's projects, users and role assignments (site-local), and
    // revocation events: every token of a subject (`user:<id>`,
    // `project:<id>`) issued before a time.
    r#"
    CREATE TABLE projects (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, description TEXT NOT NULL,
        enabled INTEGER NOT NULL, created_at TEXT NOT NULL) STRICT;
    CREATE TABLE users (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, password_hash TEXT NOT NULL,
        default_project_id TEXT, description TEXT NOT NULL, enabled INTEGER NOT NULL,
        created_at TEXT NOT NULL) STRICT;
    CREATE TABLE role_assignments (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        PRIMARY KEY (user_id, project_id, role)) STRICT;
    CREATE INDEX role_assignments_by_project ON role_assignments(project_id);
    CREATE TABLE revocation_events (
        subject TEXT PRIMARY KEY, issued_before TEXT NOT NULL) STRICT;
    "#,
    // Edge HA: each committed batch's row changes (an SQLite session
    // changeset), in order, for the standby node to apply.
    r#"
    CREATE TABLE replication_log (
        seq INTEGER PRIMARY KEY, term INTEGER NOT NULL, changeset BLOB NOT NULL) STRICT;
    "#,
    // Each attached volume keeps its disk (`status.device`). Attachments
    // made before get the disk their position gave (vdb for the first),
    // which is what the API said and a redefined domain used.
    r#"
    UPDATE volumes SET status = json_set(status, '$.device', (
        SELECT 'vd' || char(98 + j.key)
        FROM servers s, json_each(s.spec, '$.volumes') j
        WHERE s.id = json_extract(volumes.status, '$.attached_to')
          AND j.value = volumes.id AND j.key < 25))
    WHERE json_extract(status, '$.attached_to') IS NOT NULL
      AND json_extract(status, '$.device') IS NULL;
    "#,
    // 10: copies the region keeps that the site no longer needs (snapshots
    // deleted after they were copied), told to the region while the link
    // is up, then removed.
    r#"
    CREATE TABLE region_forget (key TEXT PRIMARY KEY, since TEXT NOT NULL) STRICT;
    "#,
];

/// Brings the schema up to date. Returns the version reached.
pub fn migrate(conn: &mut Connection) -> Result<usize, StoreError> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Schema(format!(
            "the store is at schema version {current}, newer than this roost-agent knows ({}); run a newer roost-agent",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "store migrated");
    }
    Ok(MIGRATIONS.len())
}
