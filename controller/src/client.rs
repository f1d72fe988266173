//! `roost-controller site ...`: dcmanager's `subcloud` commands against a
//! running controller's API. The address and the admin token come from the
//! region config and data dir (as `serve` uses them), or from `--url` and
//! `ROOST_ADMIN_TOKEN`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use roost_common::config::{self, RegionConfig};
use roost_controller::fleet::ADMIN_TOKEN_FILE;
use roost_controller::view::SiteView;

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Every site: management, availability, sync, last seen, alarms, capacity.
    List {
        #[command(flatten)]
        remote: Remote,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// One site in full, with its availability history and alarms.
    Show {
        /// The site's id.
        site: String,
        #[command(flatten)]
        remote: Remote,
        #[arg(long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Let the region change the site again (intent, quotas, placement).
    Manage {
        site: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop the region changing the site; it keeps syncing and reporting.
    Unmanage {
        site: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// End the site's enrollment (a stolen or retired node): its
    /// certificate is refused and its connection closed; a new join token
    /// enrolls it again.
    Revoke {
        site: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Where the controller is and how to prove we are its operator.
#[derive(Debug, Args)]
pub struct Remote {
    /// The region config `serve` runs with (gives the API address and,
    /// with the data dir, the admin token).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The controller's data dir (holds admin.token).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The controller's API, e.g. http://10.0.0.1:7443 (overrides --config).
    #[arg(long, value_name = "URL", env = "ROOST_CONTROLLER_URL")]
    url: Option<String>,
    /// The admin token (overrides the data dir's admin.token).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ROOST_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Remote {
    fn client(&self, default_data_dir: &Path) -> anyhow::Result<Client> {
        let config: Option<RegionConfig> = match &self.config {
            Some(path) => Some(config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?),
            None => None,
        };
        let url = match (&self.url, &config) {
            (Some(u), _) => u.trim_end_matches('/').to_string(),
            (None, Some(c)) => format!("http://{}", c.api.listen),
            (None, None) => "http://127.0.0.1:7443".to_string(),
        };
        let token = match &self.token {
            Some(t) => t.clone(),
            None => {
                let dir = self
                    .data_dir
                    .clone()
                    .or_else(|| config.as_ref().and_then(|c| c.data_dir.clone()))
                    .unwrap_or_else(|| default_data_dir.to_path_buf());
                let path = dir.join(ADMIN_TOKEN_FILE);
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "cannot read the admin token from {}; give --data-dir (the controller's), or set ROOST_ADMIN_TOKEN",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_string()
            }
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("cannot make an HTTP client")?;
        Ok(Client { http, url, token })
    }
}

impl Client {
    async fn call(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}/roost/v1{path}", self.url);
        let resp = self
            .http
            .request(method, &url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the controller at {}: is `roost-controller serve` running there? (--url or --config)",
                    self.url
                )
            })?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            bail!("{status}: {message}");
        }
        Ok(body)
    }
}

pub fn run(command: SiteCommand, default_data_dir: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match command {
            SiteCommand::List { remote, output } => {
                let c = remote.client(default_data_dir)?;
                let body = c.call(reqwest::Method::GET, "/sites").await?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&body["sites"])?),
                    Output::Table => {
                        let sites: Vec<SiteView> = serde_json::from_value(body["sites"].clone())
                            .context("the controller answered something that is not a site list")?;
                        print!("{}", table(&sites));
                    }
                }
            }
            SiteCommand::Show {
                site,
                remote,
                output,
            } => {
                let c = remote.client(default_data_dir)?;
                let body = c
                    .call(reqwest::Method::GET, &format!("/sites/{site}"))
                    .await?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&body["site"])?),
                    Output::Table => print!("{}", show(&body["site"])?),
                }
            }
            SiteCommand::Manage { site, remote } => {
                management(&site, &remote, true, default_data_dir).await?
            }
            SiteCommand::Unmanage { site, remote } => {
                management(&site, &remote, false, default_data_dir).await?
            }
            SiteCommand::Revoke { site, remote } => {
                let c = remote.client(default_data_dir)?;
                c.call(reqwest::Method::POST, &format!("/sites/{site}/revoke"))
                    .await?;
                println!("{site}: enrollment revoked; `roost-controller token create --site-id {site}` enrolls it again");
            }
        }
        Ok(())
    })
}

/// `site manage` / `site unmanage`.
async fn management(
    site: &str,
    remote: &Remote,
    manage: bool,
    default_data_dir: &Path,
) -> anyhow::Result<()> {
    let c = remote.client(default_data_dir)?;
    let verb = if manage { "manage" } else { "unmanage" };
    let body = c
        .call(reqwest::Method::POST, &format!("/sites/{site}/{verb}"))
        .await?;
    println!(
        "{site}: {}",
        body["site"]["management"].as_str().unwrap_or("?")
    );
    Ok(())
}

fn sync_cell(v: &SiteView) -> String {
    let s = v.sync.status.as_str();
    match (v.sync.status, v.sync.to_site, v.sync.from_site) {
        (roost_controller::view::SyncStatus::Unknown, 0, _) => s.to_string(),
        (roost_controller::view::SyncStatus::Unknown, n, _) => format!("{s} ({n} queued)"),
        (roost_controller::view::SyncStatus::InSync, _, _) => s.to_string(),
        (_, to, from) => format!("{s} ({to} to site, {from} from)"),
    }
}

/// The site list as a table, dcmanager's columns plus capacity.
pub fn table(sites: &[SiteView]) -> String {
    let header = [
        "SITE",
        "MANAGEMENT",
        "AVAILABILITY",
        "SYNC",
        "LAST SEEN",
        "ALARMS C/M/m",
        "VCPUS USED/TOTAL",
        "RAM MB USED/TOTAL",
        "INSTANCES",
    ];
    let rows: Vec<[String; 9]> = sites
        .iter()
        .map(|v| {
            let (vcpus, ram, instances) = match &v.capacity {
                Some(c) => (
                    format!("{}/{}", c.used.vcpus, c.total.vcpus),
                    format!("{}/{}", c.used.ram_mb, c.total.ram_mb),
                    c.instances.to_string(),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            [
                v.id.clone(),
                v.management.clone(),
                v.availability.clone(),
                sync_cell(v),
                if v.availability == "online" {
                    "now".into()
                } else {
                    v.last_seen.clone().unwrap_or_else(|| "never".into())
                },
                format!(
                    "{}/{}/{}",
                    v.alarms.critical, v.alarms.major, v.alarms.minor
                ),
                vcpus,
                ram,
                instances,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(String::from));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

fn show(site: &Value) -> anyhow::Result<String> {
    let v: SiteView = serde_json::from_value(site.clone())
        .context("the controller answered something that is not a site")?;
    let mut out = String::new();
    let mut kv = |k: &str, val: String| out.push_str(&format!("{k:<20} {val}\n"));
    kv("site", v.id.clone());
    kv(
        "labels",
        v.labels
            .iter()
            .map(|(k, val)| format!("{k}={val}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    kv("management", v.management.clone());
    kv(
        "enrolled",
        site["enrolled_at"].as_str().unwrap_or("no").to_string(),
    );
    kv(
        "availability",
        match (&v.availability_since, &v.address) {
            (Some(t), Some(a)) => format!("{} since {t} from {a}", v.availability),
            (Some(t), None) => format!("{} since {t}", v.availability),
            _ => v.availability.clone(),
        },
    );
    kv("sync", sync_cell(&v));
    kv(
        "last seen",
        v.last_seen.clone().unwrap_or_else(|| "never".into()),
    );
    kv(
        "alarms",
        format!(
            "{} critical, {} major, {} minor",
            v.alarms.critical, v.alarms.major, v.alarms.minor
        ),
    );
    kv(
        "conflicts",
        format!("{} journaled at the site", v.conflicts),
    );
    if let Some(c) = &v.capacity {
        kv(
            "capacity",
            format!(
                "{}/{} vCPUs, {}/{} MB RAM, {}/{} GB disk used; instances {}, hosts {}",
                c.used.vcpus,
                c.total.vcpus,
                c.used.ram_mb,
                c.total.ram_mb,
                c.used.disk_gb,
                c.total.disk_gb,
                c.instances,
                c.host_free.len()
            ),
        );
    }
    if let Some(q) = &v.quota {
        let limit = |x: Option<u64>| x.map_or("-".to_string(), |n| n.to_string());
        kv(
            "quota",
            format!(
                "instances {}, cores {}, ram_mb {}, disk_gb {}",
                limit(q.instances),
                limit(q.cores),
                limit(q.ram_mb),
                limit(q.disk_gb)
            ),
        );
    }
    if let Some(h) = site["availability_history"].as_array() {
        out.push_str("availability history (newest first):\n");
        for e in h.iter().take(10) {
            out.push_str(&format!(
                "  {}  {}{}\n",
                e["at"].as_str().unwrap_or(""),
                e["availability"].as_str().unwrap_or(""),
                e["address"]
                    .as_str()
                    .map(|a| format!(" from {a}"))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(a) = site["alarm_list"].as_array() {
        out.push_str("alarms (newest first):\n");
        if a.is_empty() {
            out.push_str("  none\n");
        }
        for e in a.iter().take(10) {
            out.push_str(&format!(
                "  {}  {} {}: {}{}\n",
                e["raised_at"].as_str().unwrap_or(""),
                e["severity"].as_str().unwrap_or(""),
                e["code"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or(""),
                e["cleared_at"]
                    .as_str()
                    .map(|c| format!(" (cleared {c})"))
                    .unwrap_or_default()
            ));
        }
    }
    Ok(out)
}
