//! `roost-controller`: the regional controller. Thin: parse flags, open the
//! fleet store, serve the API and the QUIC endpoint until SIGTERM/SIGINT.

mod client;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use roost_common::config::{self, RegionConfig};
use roost_controller::api::{self, ApiState};
use roost_controller::fleet::{self, FleetStore, SqliteFleet};
use roost_controller::link::Region;

/// Exit status for bad input (flags or config), as sysexits' EX_USAGE.
const EXIT_USAGE: u8 = 64;
const DEFAULT_DATA_DIR: &str = "/var/lib/roost/controller";

#[derive(Debug, Parser)]
#[command(
    name = "roost-controller",
    version,
    about = "Roost regional controller: looks after many edge sites"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the region: the API (enrollment, sites) and the QUIC endpoint
    /// sites sync with.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Where the fleet store lives (overrides data_dir in the config).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Address of the HTTP API (overrides api.listen).
        #[arg(long, value_name = "ADDR")]
        api_listen: Option<SocketAddr>,
        /// Address of the QUIC endpoint (overrides quic.listen).
        #[arg(long, value_name = "ADDR")]
        quic_listen: Option<SocketAddr>,
    },
    /// Join tokens for enrolling sites.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The region's sites, from a running controller (dcmanager's
    /// `subcloud` commands).
    Site {
        #[command(subcommand)]
        command: client::SiteCommand,
    },
    /// Check a region config file and say what is wrong, without starting.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a one-time join token for a site listed in the config.
    Create {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, value_name = "ID")]
        site_id: String,
        /// How long the token is valid: e.g. 30m, 24h, 7d (at most 30d).
        #[arg(long, default_value = "24h", value_parser = parse_ttl)]
        ttl: chrono::Duration,
    },
}

fn parse_ttl(s: &str) -> Result<chrono::Duration, String> {
    let rule = "must be a number followed by m, h or d (e.g. 24h), at most 30d";
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| format!("{s:?}: {rule}"))?;
    let d = match unit {
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => return Err(format!("{s:?}: {rule}")),
    };
    if n <= 0 || d > chrono::Duration::days(30) {
        return Err(format!("{s:?}: {rule}"));
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let (config_path, result) = match cli.command {
        Command::CheckConfig { config } => {
            let r = load(&config).map(|c| {
                println!(
                    "{}: valid: region {}, {} sites",
                    config.display(),
                    c.region.name,
                    c.sites.len()
                );
            });
            (config, r.map_err(Failure::Usage))
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    config,
                    data_dir,
                    site_id,
                    ttl,
                },
        } => {
            let r = token_create(&config, data_dir, &site_id, ttl);
            (config, r)
        }
        Command::Site { command } => {
            return match client::run(command, Path::new(DEFAULT_DATA_DIR)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("roost-controller: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Serve {
            config,
            data_dir,
            api_listen,
            quic_listen,
        } => {
            let r = serve(&config, data_dir, api_listen, quic_listen);
            (config, r)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("Invalid configuration: {}: {e}", config_path.display());
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Other(e)) => {
            eprintln!("roost-controller: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

fn load(path: &Path) -> Result<RegionConfig, String> {
    config::load::<RegionConfig>(path).map_err(|e| e.to_string())
}

fn open_store(
    config: &RegionConfig,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<(SqliteFleet, roost_sync::pki::Ca, PathBuf)> {
    let dir = data_dir
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    let (store, ca) = SqliteFleet::open(&dir, &config.region.name)
        .with_context(|| format!("cannot open the fleet store in {}", dir.display()))?;
    store
        .sync_sites(&config.sites)
        .context("cannot record the config's sites")?;
    Ok((store, ca, dir))
}

fn token_create(
    config_path: &Path,
    data_dir: Option<PathBuf>,
    site_id: &str,
    ttl: chrono::Duration,
) -> Result<(), Failure> {
    let config = load(config_path).map_err(Failure::Usage)?;
    if !config.sites.iter().any(|s| s.id == site_id) {
        return Err(Failure::Usage(format!(
            "--site-id: {site_id:?} is not among the config's sites ({}); add it under sites: first",
            config
                .sites
                .iter()
                .map(|s| s.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let (store, _, _) = open_store(&config, data_dir)?;
    let token = store
        .create_token(site_id, ttl)
        .context("cannot create the token")?;
    println!("{token}");
    eprintln!(
        "roost-controller: one-time join token for {site_id}, valid for {} h; give it to the site's installer",
        ttl.num_hours()
    );
    Ok(())
}

fn serve(
    config_path: &Path,
    data_dir: Option<PathBuf>,
    api_listen: Option<SocketAddr>,
    quic_listen: Option<SocketAddr>,
) -> Result<(), Failure> {
    let config = load(config_path).map_err(Failure::Usage)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let api_addr = api_listen.unwrap_or(config.api.listen);
        let quic_addr = quic_listen.unwrap_or(config.quic.listen);
        // Bind first: a busy port fails before anything is written.
        let listener = tokio::net::TcpListener::bind(api_addr)
            .await
            .with_context(|| format!("cannot listen on {api_addr} (api.listen)"))?;
        let (store, ca, dir) = open_store(&config, data_dir)?;
        let region_cred = ca
            .issue_region(&config.region.name)
            .context("cannot issue the region's certificate")?;
        let offline_after = std::time::Duration::from_secs(config.offline_after_secs);
        let mut quic_config = roost_sync::transport::server_config(&region_cred)
            .context("cannot set up TLS for QUIC")?;
        quic_config.transport_config(roost_sync::transport::region_transport(offline_after));
        let (endpoint, buffer) = roost_sync::transport::region_endpoint(quic_config, quic_addr)
            .with_context(|| format!("cannot listen on {quic_addr} (quic.listen)"))?;
        if buffer < roost_sync::transport::REGION_SOCKET_BUFFER {
            tracing::warn!(
                granted = buffer,
                wanted = roost_sync::transport::REGION_SOCKET_BUFFER,
                "the kernel gave the QUIC socket a smaller receive buffer; raise net.core.rmem_max for reconnect storms"
            );
        }
        let admin_token = fleet::admin_token(&dir).with_context(|| {
            format!(
                "cannot read or make {}",
                dir.join(fleet::ADMIN_TOKEN_FILE).display()
            )
        })?;
        let viewer_token = fleet::viewer_token(&dir).with_context(|| {
            format!(
                "cannot read or make {}",
                dir.join(fleet::VIEWER_TOKEN_FILE).display()
            )
        })?;
        let signer = roost_sync::token::Signer::from_pkcs8(
            &store.token_key().context("cannot read or make the region's token key")?,
        )
        .context("the region's token key in the store is unusable")?;
        let revoked = store
            .revoked_tokens(chrono::Utc::now().timestamp())
            .context("cannot read the revoked tokens")?;
        let region = Arc::new(Region::new(Arc::new(store), offline_after));
        let _ = region
            .images
            .set(Arc::new(roost_controller::images::RegionImages::new(
                dir.join("images"),
            )));
        let backups = roost_controller::backups::RegionBackups::open(&dir).with_context(|| {
            format!(
                "cannot open the backup store {}",
                dir.join("backups.db").display()
            )
        })?;
        let _ = region.backups.set(Arc::new(backups));
        *region.trust.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(roost_sync::token::Trust {
                keys: vec![signer.public_key()],
                revoked,
            });
        let quic = tokio::spawn(region.clone().serve(endpoint.clone()));
        let stopping = region.clone();
        let audit = tokio::spawn(region.clone().audit_after_start());
        let api_addr = listener.local_addr().context("api address")?;
        let quic_addr = endpoint.local_addr().context("quic address")?;
        let state = ApiState {
            region,
            ca: Arc::new(ca),
            admin_token: Arc::new(admin_token),
            viewer_token: Arc::new(viewer_token),
            quic_port: quic_addr.port(),
            signer: Arc::new(signer),
            public_url: config.api.public_url.as_deref().map(Arc::from),
        };
        println!("roost-controller: region {} is serving", config.region.name);
        println!("  API        http://{api_addr}");
        println!("  dashboard  http://{api_addr}/ (sign in with admin.token, or viewer.token to look only)");
        println!("  QUIC       {quic_addr} (sites sync here, mutual TLS)");
        println!("  sites      {} in the config", config.sites.len());
        println!("  data dir   {}", dir.display());
        println!(
            "  admin      token in {} (roost-controller site list --config {} --data-dir {})",
            dir.join(fleet::ADMIN_TOKEN_FILE).display(),
            config_path.display(),
            dir.display()
        );
        tracing::info!(%api_addr, %quic_addr, "serving");
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the API server failed")?;
        // Sites see a clean close and reconnect with backoff; their sync
        // state is saved and nobody is marked offline for our restart.
        stopping
            .stop(&endpoint, std::time::Duration::from_secs(5))
            .await;
        quic.abort();
        audit.abort();
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}
