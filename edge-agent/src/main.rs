//! `roost-agent`: the edge site's agent. Thin: parse flags, start, serve
//! until SIGTERM or SIGINT, drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use roost_common::config::{self, SiteConfig};
use roost_edge_agent::agent::{Agent, Options, PasswordSource, RegionLink};

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
    match cli.command {
        Command::CheckConfig { config } => match config::load::<SiteConfig>(&config) {
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

fn run(opts: Options) -> ExitCode {
    let started = std::time::Instant::now();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("roost-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
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
