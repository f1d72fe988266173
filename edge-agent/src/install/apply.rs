//! Carrying out a [`Plan`], and undoing it: every step that changes the
//! machine pushes its undo first, so a failure anywhere rolls back exactly
//! what this run did (a file it replaced gets its old bytes back); and
//! `uninstall`, which removes what the manifest says installs made.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roost_common::files::write_atomic;

use super::facts::{alive, running_agent, Facts};
use super::plan::{Action, Change, Plan};
use super::{Install, InstallError, Layout, Manifest, UNIT_NAME};
use crate::store::DB_FILE;

/// How long a started agent has to answer on its API.
const START_WITHIN: Duration = Duration::from_secs(30);
/// How long a stopping agent has to exit before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(40);

#[derive(Debug)]
enum Undo {
    /// Remove a file or a whole directory this run created.
    Remove(PathBuf),
    /// Put back a file this run replaced.
    Restore {
        path: PathBuf,
        bytes: Vec<u8>,
        mode: u32,
    },
    Disable,
    /// Stop the unit this run started.
    StopUnit,
    /// Stop an agent this run started.
    Stop(u32),
}

#[derive(Debug, Default)]
struct Run {
    undo: Vec<Undo>,
    created: Vec<PathBuf>,
    enabled: bool,
    /// This run spent the join token.
    enrolled: bool,
    /// This run stopped a running agent to restart it: after a rollback,
    /// start it again on the restored files (under systemd or not).
    restart_after: Option<(Layout, bool)>,
}

impl Run {
    /// Creates `dir` and its missing parents, recording each.
    fn make_dirs(&mut self, dir: &Path, mode: u32) -> std::io::Result<()> {
        let missing: Vec<&Path> = dir.ancestors().take_while(|p| !p.exists()).collect();
        for d in missing.into_iter().rev() {
            std::fs::DirBuilder::new().mode(mode).create(d)?;
            self.undo.push(Undo::Remove(d.to_path_buf()));
            self.created.push(d.to_path_buf());
        }
        Ok(())
    }

    /// Writes `path` atomically, remembering the old contents or that it is new.
    fn write(&mut self, path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            self.make_dirs(parent, 0o755)?;
        }
        if path.exists() && !path.is_file() {
            return Err(std::io::Error::other(
                "exists and is not a file: move it away, then run install again",
            ));
        }
        match std::fs::read(path) {
            Ok(old) => {
                let old_mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
                self.undo.push(Undo::Restore {
                    path: path.into(),
                    bytes: old,
                    mode: old_mode,
                });
            }
            Err(_) => {
                self.undo.push(Undo::Remove(path.into()));
                self.created.push(path.into());
            }
        }
        write_atomic(path, bytes, mode)?;
        // write_atomic's mode applies when it creates; make it exact.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }

    /// Undoes, newest first; says what it did.
    fn roll_back(mut self, out: &mut dyn Write) {
        let _ = writeln!(out, "\nRolling back what this run did");
        for u in std::mem::take(&mut self.undo).into_iter().rev() {
            let said = match &u {
                Undo::Remove(p) => {
                    let r = if p.is_dir() {
                        std::fs::remove_dir_all(p)
                    } else {
                        std::fs::remove_file(p)
                    };
                    match r {
                        Ok(()) => format!("removed {}", p.display()),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => format!("could not remove {}: {e}", p.display()),
                    }
                }
                Undo::Restore { path, bytes, mode } => match write_atomic(path, bytes, *mode) {
                    Ok(()) => format!("restored {}", path.display()),
                    Err(e) => format!("could not restore {}: {e}", path.display()),
                },
                Undo::Disable => {
                    let _ = systemctl(&["disable", "--now", UNIT_NAME]);
                    format!("disabled {UNIT_NAME}")
                }
                Undo::StopUnit => {
                    let _ = systemctl(&["stop", UNIT_NAME]);
                    format!("stopped {UNIT_NAME}")
                }
                Undo::Stop(pid) => {
                    stop_pid(*pid);
                    format!("stopped the agent (pid {pid})")
                }
            };
            let _ = writeln!(out, "  {said}");
        }
        if let Some((layout, systemd)) = &self.restart_after {
            let again = if *systemd {
                systemctl(&["restart", UNIT_NAME]).map(|_| "restarted".to_string())
            } else {
                spawn_agent(layout, &mut Run::default()).map(|pid| format!("started (pid {pid})"))
            };
            let _ = match again {
                Ok(how) => writeln!(
                    out,
                    "  the agent that ran before: {how} on the restored files"
                ),
                Err(e) => writeln!(out, "  could not start the agent that ran before: {e}"),
            };
        }
    }
}

/// Applies the plan's steps in order; on a failure, rolls back and says
/// which step failed and why.
pub async fn apply(
    i: &Install,
    f: &Facts,
    plan: &Plan,
    out: &mut dyn Write,
) -> Result<(), InstallError> {
    let mut run = Run::default();
    let n = plan.steps.len();
    for (k, step) in plan.steps.iter().enumerate() {
        let _ = write!(
            out,
            "  [{}/{n}] {:<9}  {}",
            k + 1,
            step.change.word(),
            step.what
        );
        let _ = out.flush();
        if !matches!(step.change, Change::Create | Change::Update) {
            let _ = writeln!(out);
            continue;
        }
        let t = Instant::now();
        match do_step(i, f, plan, &step.action, &mut run).await {
            Ok(()) => {
                let _ = writeln!(out, "  ok ({} ms)", t.elapsed().as_millis());
            }
            Err(mut error) => {
                let _ = writeln!(out, "  FAILED\n      {error}");
                if run.enrolled {
                    error += &format!(
                        "\n      (the join token was spent by this run: ask the region for a new one, roost-controller token create --site-id {})",
                        i.site_id
                    );
                }
                run.roll_back(out);
                return Err(InstallError::Step {
                    step: step.what.clone(),
                    error,
                });
            }
        }
    }
    // Keep what this and earlier runs made, for uninstall.
    let l = &i.layout;
    let mut created = f
        .existing
        .manifest
        .as_ref()
        .map(|m| m.created.clone())
        .unwrap_or_default();
    for p in run
        .created
        .iter()
        .filter(|p| !p.starts_with(&l.data_dir) || **p == l.data_dir)
    {
        if !created.contains(p) {
            created.push(p.clone());
        }
    }
    let manifest = Manifest {
        site_id: i.site_id.clone(),
        installed_at: f
            .existing
            .manifest
            .as_ref()
            .map(|m| m.installed_at.clone())
            .unwrap_or_else(|| roost_common::model::openstack_time(&chrono::Utc::now())),
        layout: l.clone(),
        created,
        enabled: run.enabled || f.existing.manifest.as_ref().is_some_and(|m| m.enabled),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    if let Err(e) = write_atomic(&l.manifest(), &json, 0o600) {
        let error = format!("cannot write {}: {e}", l.manifest().display());
        run.roll_back(out);
        return Err(InstallError::Step {
            step: "install manifest".into(),
            error,
        });
    }
    Ok(())
}

async fn do_step(
    i: &Install,
    f: &Facts,
    plan: &Plan,
    action: &Action,
    run: &mut Run,
) -> Result<(), String> {
    let l = &i.layout;
    let shown = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    match action {
        Action::Dir { path, mode } => {
            run.make_dirs(path, 0o755).map_err(|e| shown(path, e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
                .map_err(|e| shown(path, e))
        }
        Action::File { path, bytes, mode } => {
            run.write(path, bytes, *mode).map_err(|e| shown(path, e))
        }
        Action::Binary => {
            let me =
                std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
            let bytes = std::fs::read(&me).map_err(|e| shown(&me, e))?;
            // Renamed into place, so a running agent's binary is replaced, not
            // overwritten under it.
            run.write(&l.binary, &bytes, 0o755)
                .map_err(|e| shown(&l.binary, e))
        }
        Action::Store => {
            let config = plan
                .config
                .clone()
                .ok_or("no config to open the store with")?;
            for name in [
                DB_FILE.to_string(),
                format!("{DB_FILE}-wal"),
                format!("{DB_FILE}-shm"),
                crate::agent::PASSWORD_FILE.to_string(),
            ] {
                let p = l.data_dir.join(name);
                if !p.exists() {
                    run.undo.push(Undo::Remove(p));
                }
            }
            let dir = l.data_dir.clone();
            tokio::task::spawn_blocking(move || {
                let (store, _identity) = crate::store::Store::open(&dir, &config.site.id, &config)
                    .map_err(|e| e.to_string())?;
                drop(store);
                crate::agent::admin_password(&config, &dir).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
            .map(|_| ())
        }
        Action::Enroll => {
            let token = i.token.as_deref().ok_or("token: required to enroll")?;
            let pki = l.pki();
            if !pki.exists() {
                run.undo.push(Undo::Remove(pki.clone()));
            }
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .map_err(|e| e.to_string())?;
            crate::uplink::enroll_once(&http, &i.central_api, token, &i.site_id, &pki)
                .await
                .map(|_| run.enrolled = true)
                .map_err(|e| match e {
                    crate::uplink::Enroll::Refused(why) => format!(
                        "the region refused the join token: {why}\n      -> ask the region for a new one: roost-controller token create --site-id {}",
                        i.site_id
                    ),
                    e => e.to_string(),
                })
        }
        Action::EnableUnit => {
            systemctl(&["daemon-reload"])?;
            systemctl(&["enable", UNIT_NAME])?;
            run.undo.push(Undo::Disable);
            run.enabled = true;
            Ok(())
        }
        Action::Start { restart } => {
            let url = plan
                .config
                .as_ref()
                .and_then(|c| c.api.public_url.clone())
                .ok_or("no API URL to wait for")?;
            if f.systemd {
                if *restart {
                    run.restart_after = Some((l.clone(), true));
                } else {
                    run.undo.push(Undo::StopUnit);
                }
                systemctl(&[if *restart { "restart" } else { "start" }, UNIT_NAME])?;
                return wait_serving(&url, None, &l.log).await;
            }
            if let (true, Some(pid)) = (*restart, f.existing.agent_pid) {
                stop_pid(pid);
                run.restart_after = Some((l.clone(), false));
            }
            let pid = spawn_agent(l, run)?;
            run.undo.push(Undo::Stop(pid));
            wait_serving(&url, Some(pid), &l.log).await
        }
    }
}

fn systemctl(args: &[&str]) -> Result<(), String> {
    let o = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// Starts `roost-agent run` in its own process group, detached from this
/// terminal, logging to the layout's log file; writes its pid file.
fn spawn_agent(l: &Layout, run: &mut Run) -> Result<u32, String> {
    use std::os::unix::process::CommandExt;
    if let Some(dir) = l.log.parent() {
        run.make_dirs(dir, 0o755)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    if !l.log.exists() {
        run.undo.push(Undo::Remove(l.log.clone()));
        run.created.push(l.log.clone());
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&l.log)
        .map_err(|e| format!("{}: {e}", l.log.display()))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new(&l.binary)
        .arg("run")
        .arg("--config")
        .arg(l.config_file())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", l.binary.display()))?;
    let pid = child.id();
    // Not waited for: the agent outlives this command.
    drop(child);
    let pid_file = l.pid_file();
    if !pid_file.exists() {
        run.undo.push(Undo::Remove(pid_file.clone()));
    }
    write_atomic(&pid_file, format!("{pid}\n").as_bytes(), 0o644)
        .map_err(|e| format!("{}: {e}", pid_file.display()))?;
    Ok(pid)
}

/// Waits until the agent's API answers; fails early, with the log's last
/// lines, if the agent exits.
async fn wait_serving(url: &str, pid: Option<u32>, log: &Path) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    loop {
        if http.get(format!("{url}/")).send().await.is_ok() {
            return Ok(());
        }
        let gone = pid.is_some_and(|p| !alive(p));
        if gone || started.elapsed() > START_WITHIN {
            let tail = std::fs::read_to_string(log)
                .map(|t| {
                    let lines: Vec<&str> = t.lines().collect();
                    lines[lines.len().saturating_sub(5)..].join("\n        ")
                })
                .unwrap_or_default();
            let what = if gone {
                "exited"
            } else {
                "did not answer within 30 s"
            };
            return Err(format!(
                "the agent {what} (API {url}); last lines of {}:\n        {tail}",
                log.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// SIGTERM, then SIGKILL if it has not exited within [`STOP_WITHIN`].
fn stop_pid(pid: u32) {
    signal(pid, rustix::process::Signal::TERM);
    let t = Instant::now();
    while alive(pid) && t.elapsed() < STOP_WITHIN {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive(pid) {
        signal(pid, rustix::process::Signal::KILL);
    }
}

/// Guests the embedded QEMU driver started under `embed_root`.
fn guests_under(embed_root: &Path) -> Vec<u32> {
    let needle = embed_root.to_string_lossy().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&needle)
            })
        })
        .collect()
}

/// Removes the network devices the site's agent made on this host (those
/// with its alias), ports before bridges; their names.
fn remove_site_links(site_id: &str) -> Result<Vec<String>, String> {
    use crate::network::plan::{is_ours, Action, Kind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let nl = crate::network::netlink::Netlink::open().map_err(|e| e.to_string())?;
        let have = nl.observe().await.map_err(|e| e.to_string())?;
        let mut mine: Vec<_> = have.links.iter().filter(|l| is_ours(site_id, l)).collect();
        mine.sort_by_key(|l| l.kind == Some(Kind::Bridge));
        let mut removed = Vec::new();
        for l in mine {
            nl.apply(&Action::Delete(l.name.clone()))
                .await
                .map_err(|e| e.to_string())?;
            removed.push(l.name.clone());
        }
        Ok(removed)
    })
}

/// Removes what installs made, as the manifest under `layout` lists it,
/// and nothing else. `keep_data` keeps the data directory (store,
/// credential) for a later install.
pub fn uninstall(
    layout: &Layout,
    keep_data: bool,
    dry_run: bool,
    out: &mut dyn Write,
) -> Result<(), InstallError> {
    let io = |e: std::io::Error| InstallError::Io(e.to_string());
    let path = layout.manifest();
    if !path.exists() {
        writeln!(
            out,
            "roost-agent uninstall: nothing installed here ({} does not exist; pass the --root or --config-dir the install had)",
            path.display()
        )
        .map_err(io)?;
        return Ok(());
    }
    let m = Manifest::read(&path)?;
    let l = &m.layout;
    writeln!(out, "roost-agent uninstall: site {}", m.site_id).map_err(io)?;
    let mut plan: Vec<String> = Vec::new();
    let agent = running_agent(&l.pid_file());
    if m.enabled {
        plan.push(format!("systemctl disable --now {UNIT_NAME}"));
    }
    if let Some(pid) = agent {
        plan.push(format!("stop the agent (pid {pid})"));
    }
    let guests = guests_under(&l.embed_root());
    if !guests.is_empty() {
        plan.push(format!(
            "stop {} guest(s) the site's embedded libvirt runs",
            guests.len()
        ));
    }
    plan.push(format!(
        "remove the network devices with the alias roost:{}:",
        m.site_id
    ));
    if keep_data {
        plan.push(format!("keep {} (--keep-data)", l.data_dir.display()));
    } else {
        plan.push(format!("remove {} and all in it", l.data_dir.display()));
    }
    for p in m.created.iter().rev().filter(|p| **p != l.data_dir) {
        plan.push(format!("remove {}", p.display()));
    }
    plan.push(format!("remove {}", path.display()));
    if dry_run {
        for p in &plan {
            writeln!(out, "  would {p}").map_err(io)?;
        }
        writeln!(out, "Dry run: nothing was changed.").map_err(io)?;
        return Ok(());
    }
    let mut said = |s: String| writeln!(out, "  {s}").map_err(io);
    if m.enabled {
        match systemctl(&["disable", "--now", UNIT_NAME]) {
            Ok(()) => said(format!("disabled and stopped {UNIT_NAME}"))?,
            Err(e) => said(format!("warning: {e}"))?,
        }
    }
    if let Some(pid) = agent {
        stop_pid(pid);
        said(format!("stopped the agent (pid {pid})"))?;
    }
    for pid in guests_under(&l.embed_root()) {
        stop_pid(pid);
        said(format!("stopped guest QEMU pid {pid}"))?;
    }
    match remove_site_links(&m.site_id) {
        Ok(names) if names.is_empty() => {}
        Ok(names) => said(format!(
            "removed the site's network devices: {}",
            names.join(", ")
        ))?,
        Err(e) => said(format!(
            "warning: cannot remove the site's network devices: {e}"
        ))?,
    }
    let remove = |p: &Path| -> std::io::Result<bool> {
        let r = if p.is_dir() {
            // Only when empty: another program may have put files there since.
            std::fs::remove_dir(p)
        } else {
            std::fs::remove_file(p)
        };
        match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) if e.raw_os_error() == Some(39) => Ok(false), // ENOTEMPTY
            Err(e) => Err(e),
        }
    };
    if !keep_data && l.data_dir.exists() {
        let data_made = m.created.contains(&l.data_dir);
        if data_made {
            std::fs::remove_dir_all(&l.data_dir)
                .map_err(|e| InstallError::Io(format!("{}: {e}", l.data_dir.display())))?;
        } else {
            for e in std::fs::read_dir(&l.data_dir).map_err(io)?.flatten() {
                let p = e.path();
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(|e| InstallError::Io(format!("{}: {e}", p.display())))?;
            }
        }
        said(format!("removed {}", l.data_dir.display()))?;
    }
    // Files first, then the manifest, then directories (deepest first),
    // each only if empty: another program may have put files there since.
    let ours = |p: &&PathBuf| !p.starts_with(&l.data_dir);
    for p in m.created.iter().rev().filter(ours).filter(|p| !p.is_dir()) {
        match remove(p) {
            Ok(true) => said(format!("removed {}", p.display()))?,
            Ok(false) => {}
            Err(e) => return Err(InstallError::Io(format!("{}: {e}", p.display()))),
        }
    }
    std::fs::remove_file(&path)
        .map_err(|e| InstallError::Io(format!("{}: {e}", path.display())))?;
    said(format!("removed {}", path.display()))?;
    for p in m.created.iter().rev().filter(ours).filter(|p| p.is_dir()) {
        match remove(p) {
            Ok(true) => said(format!("removed {}", p.display()))?,
            Ok(false) => said(format!("kept {}: others' files are in it", p.display()))?,
            Err(e) => return Err(InstallError::Io(format!("{}: {e}", p.display()))),
        }
    }
    if m.enabled {
        let _ = systemctl(&["daemon-reload"]);
    }
    writeln!(out, "Uninstalled site {}.", m.site_id).map_err(io)?;
    Ok(())
}
