//! `roost-agent`: the edge site's agent. Thin: parse flags, start, serve
//! until SIGTERM or SIGINT, drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use roost_common::config::{self, SiteConfig};
use roost_edge_agent::agent::{Agent, Options, PasswordSource, RegionLink};
use roost_edge_agent::install;

/// Exit status for bad input (flags or config), as sysexits' EX_USAGE.
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "roost-agent",
    version,
    about = "Roost edge agent: runs one edge site, online or not"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the site: store, scheduler, reconcilers and the local API.
    Run {
        /// The site config file (see site-configs/README.md).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Where the SQLite store lives (overrides data_dir in the config).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Address the API listens on (overrides api.listen in the config).
        #[arg(long, value_name = "ADDR")]
        api_listen: Option<SocketAddr>,
    },
    /// Check a site config file and say what is wrong, without starting.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Turn this node into a site of its region: preflight checks, the
    /// agent config, the store, enrollment, a systemd unit. Idempotent.
    Install(Box<InstallFlags>),
    /// Remove what `install` made, and only that.
    Uninstall {
        /// The --root the install had.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// The --config-dir the install had.
        #[arg(long, value_name = "DIR")]
        config_dir: Option<PathBuf>,
        /// Keep the data directory (store and credential) for a later install.
        #[arg(long)]
        keep_data: bool,
        /// Print what would be removed and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `roost-agent install`'s flags; `--from-file` gives the same as YAML
/// (keys with `_` for `-`), and flags win over the file.
#[derive(Debug, clap::Args)]
struct InstallFlags {
    /// Read the arguments from this YAML file (zero-touch: a USB stick, a
    /// config drive).
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// The site's id, as the region's config lists it.
    #[arg(long, value_name = "ID")]
    site_id: Option<String>,
    /// A display name (default: the site id).
    #[arg(long, value_name = "NAME")]
    site_name: Option<String>,
    /// The controller's API, e.g. http://192.168.1.100:7443.
    #[arg(long, value_name = "URL")]
    central_api: Option<String>,
    /// The controller's address as this site reaches it (QUIC sync).
    #[arg(long, value_name = "IP")]
    controller_ip: Option<std::net::IpAddr>,
    /// The controller's QUIC port (default: asked of the controller; 7444 offline).
    #[arg(long, value_name = "PORT")]
    quic_port: Option<u16>,
    /// The region's name (default: asked of the controller; needed with
    /// --offline when the controller cannot be reached).
    #[arg(long, value_name = "NAME")]
    region_name: Option<String>,
    /// The one-time join token from `roost-controller token create`.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ROOST_JOIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// The site's physical networking (see site-configs/edge-net.yaml).
    #[arg(long, value_name = "FILE")]
    network_config: Option<PathBuf>,
    /// Port of the local API on the management address (default 8780).
    #[arg(long, value_name = "PORT")]
    api_port: Option<u16>,
    /// libvirt (default) or record-only (no VMs).
    #[arg(long, value_name = "DRIVER", value_parser = parse_driver)]
    compute_driver: Option<config::ComputeDriverKind>,
    /// A site label, KEY=VALUE (repeat for more).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Where the config goes (default /etc/roost).
    #[arg(long, value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// Where the store goes (default /var/lib/roost/agent).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Install under DIR as if it were / (image builds, tests).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Install even if the controller cannot be reached; the agent enrolls
    /// when the region first answers.
    #[arg(long)]
    offline: bool,
    /// Start the agent once installed.
    #[arg(long)]
    start: bool,
    /// Print the preflight and the plan; change nothing.
    #[arg(long)]
    dry_run: bool,
}

fn parse_driver(s: &str) -> Result<config::ComputeDriverKind, String> {
    match s {
        "libvirt" => Ok(config::ComputeDriverKind::Libvirt),
        "record-only" => Ok(config::ComputeDriverKind::RecordOnly),
        _ => Err("must be libvirt or record-only".into()),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| "must be KEY=VALUE".into())
}

impl InstallFlags {
    fn args(&self) -> config::InstallArgs {
        config::InstallArgs {
            site_id: self.site_id.clone(),
            site_name: self.site_name.clone(),
            central_api: self.central_api.clone(),
            controller_ip: self.controller_ip,
            quic_port: self.quic_port,
            region_name: self.region_name.clone(),
            token: self.token.clone(),
            network_config: self.network_config.clone(),
            api_port: self.api_port,
            compute_driver: self.compute_driver,
            labels: self.labels.iter().cloned().collect(),
            config_dir: self.config_dir.clone(),
            data_dir: self.data_dir.clone(),
            root: self.root.clone(),
            offline: self.offline,
            start: self.start,
        }
    }
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
    // install and uninstall talk to the operator on stdout; their logs are
    // only for what goes wrong.
    let default_level = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::CheckConfig { config } => match config::load::<SiteConfig>(&config)
            .and_then(|c| config::load_policy(&config, &c.api).map(|_| c))
        {
            Ok(c) => {
                println!(
                    "{}: valid: site {}, {} hosts, {} flavors, {} images",
                    config.display(),
                    c.site.id,
                    c.hosts.len(),
                    c.flavors.len(),
                    c.images.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("Invalid configuration: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Install(flags) => install(&flags),
        Command::Uninstall {
            root,
            config_dir,
            keep_data,
            dry_run,
        } => {
            let layout = install::Layout::new(root.as_deref(), config_dir.as_deref(), None);
            match install::uninstall(&layout, keep_data, dry_run, &mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("roost-agent uninstall: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config,
            data_dir,
            api_listen,
        } => run(Options {
            config,
            data_dir,
            api_listen,
        }),
    }
}

fn install(flags: &InstallFlags) -> ExitCode {
    let args = match &flags.from_file {
        None => Ok(flags.args()),
        Some(f) => config::InstallArgs::load(f).map(|file| flags.args().or_from(file)),
    };
    let resolved = args
        .map_err(|e| install::InstallError::Input(e.to_string()))
        .and_then(install::Install::resolve);
    let spec = match resolved {
        Ok(s) => s,
        Err(e) => {
            eprintln!("roost-agent install: {e}");
            eprintln!("Nothing was changed. See roost-agent install --help.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let Some(runtime) = runtime(&mut tokio::runtime::Builder::new_current_thread()) else {
        return ExitCode::FAILURE;
    };
    let mut out = std::io::stdout();
    match runtime.block_on(install::install(&spec, flags.dry_run, &mut out)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nroost-agent install: {e}");
            if matches!(e, install::InstallError::Step { .. }) {
                eprintln!(
                    "What this run made was removed; fix the cause and run the same command again."
                );
            }
            if e.is_input() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Builds the async runtime, or says why it cannot.
fn runtime(builder: &mut tokio::runtime::Builder) -> Option<tokio::runtime::Runtime> {
    builder
        .enable_all()
        .build()
        .map_err(|e| eprintln!("roost-agent: cannot start the async runtime: {e}"))
        .ok()
}

fn run(opts: Options) -> ExitCode {
    let started = std::time::Instant::now();
    let Some(runtime) = runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(2))
    else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let agent = match Agent::start(opts).await {
            Ok(a) => a,
            Err(e) if e.is_config() => {
                eprintln!("Invalid configuration: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            Err(e) => {
                eprintln!("roost-agent: cannot start: {e}");
                return ExitCode::FAILURE;
            }
        };
        print_banner(&agent);
        tracing::info!(ms = started.elapsed().as_millis() as u64, "ready");
        match agent.serve(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("roost-agent: the API server failed: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn print_banner(agent: &Agent) {
    let password = match &agent.password_source {
        PasswordSource::Env => "(from ROOST_ADMIN_PASSWORD)".to_string(),
        PasswordSource::Config => "(from api.admin_password in the config)".to_string(),
        PasswordSource::Generated(f) => format!(
            "{}   (generated now; kept in {}, readable only by this user)",
            agent.admin_password(),
            f.display()
        ),
        PasswordSource::File(f) => format!("(kept in {})", f.display()),
    };
    println!(
        "roost-agent: site {} ({}) is serving",
        agent.config.site.id, agent.config.site.name
    );
    println!("  API        {}", agent.base_url);
    println!(
        "  identity   {}/identity/v3   user admin, project admin, domain Default",
        agent.base_url
    );
    println!("  password   {password}");
    match &agent.region {
        RegionLink::None => println!("  region     none: this site runs alone"),
        RegionLink::NotEnrolled { credentials, .. } => println!(
            "  region     not enrolled: no credential in {} (the site runs alone until it has one)",
            credentials.display()
        ),
        RegionLink::Enrolling { central_api } => println!(
            "  region     enrolling at {central_api} with the join token (in the background)"
        ),
        RegionLink::Syncing { name, address } => {
            println!("  region     {name} at {address} (QUIC, mutual TLS)")
        }
    }
    println!("  data dir   {}", agent.data_dir.display());
    println!("  metrics    {}/metrics", agent.base_url);
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
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}
