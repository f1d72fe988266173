//! Start-up and shutdown: config, store, reconciler, API, and the link to
//! the region when the config names one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use roost_sync::pki::Credential;
use roost_sync::SessionConfig;

use roost_common::config::{self, ComputeDriverKind, ConfigError, SiteConfig};

use crate::api::{self, AppState};
use crate::compute::reconciler::{Reconciler, WorkQueue};
use crate::compute::{ComputeDriver, Libvirt, LibvirtError, RecordOnly};
use crate::identity::Authority;
use crate::store::{Store, StoreError};
use crate::uplink::{self, Uplink};

/// Where the data dir is when neither the config nor `--data-dir` says.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/roost/agent";
/// File in the data dir holding a generated admin password.
pub const PASSWORD_FILE: &str = "admin-password";
/// Environment variable that sets the admin password.
pub const PASSWORD_ENV: &str = "ROOST_ADMIN_PASSWORD";

/// What `roost-agent run` was told.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub data_dir: Option<PathBuf>,
    pub api_listen: Option<SocketAddr>,
}

/// Why the agent could not start. [`StartError::is_config`] errors are the
/// operator's to fix (exit status 64).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error("data dir {dir}: {source}; choose another with --data-dir")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}; choose another address with --api-listen")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("compute: {0}")]
    Compute(#[from] LibvirtError),
    #[error("edge HA: {0}")]
    Ha(#[from] crate::ha::HaError),
}

impl StartError {
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            StartError::Config(_)
                | StartError::Invalid(_)
                | StartError::Store(StoreError::Inventory(_))
        )
    }
}

/// Where the admin password came from, for the start-up banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    Env,
    Config,
    /// Generated on this start and kept in the file; the banner shows it
    /// this once, so the operator can log in.
    Generated(PathBuf),
    /// Read back from the file a first start kept it in; never printed again.
    File(PathBuf),
}

/// An agent that is listening but not yet serving.
#[derive(Debug)]
pub struct Agent {
    pub config: SiteConfig,
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
    pub base_url: String,
    pub password_source: PasswordSource,
    admin_password: String,
    /// Where the site syncs with its region, for the banner.
    pub region: RegionLink,
    listener: TcpListener,
    state: AppState,
    reconciler: Reconciler,
    network: Option<crate::network::Reconciler>,
    uplink: Option<Uplink>,
    alarms: crate::alarms::Monitor,
    link_state: Arc<crate::alarms::LinkState>,
    /// Snapshots the tierer or the backup worker is changing.
    snapshot_busy: crate::storage::Busy,
}

/// The state of the site's link to a region, as configured at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionLink {
    /// No `region` section: the site runs alone.
    None,
    /// Configured, but the site holds no credential and no join token.
    NotEnrolled {
        credentials: PathBuf,
        reason: String,
    },
    /// Enrolling with the join token at this controller API.
    Enrolling { central_api: String },
    /// Syncing with the region at this address.
    Syncing { name: String, address: String },
}

impl Agent {
    /// Reads and checks everything, opens the store and binds the API port.
    pub async fn start(opts: Options) -> Result<Agent, StartError> {
        let config: SiteConfig = config::load(&opts.config)?;
        let policy = Arc::new(config::load_policy(&opts.config, &config.api)?);
        // Bind first: a busy port must fail before anything is written.
        let listen = opts.api_listen.unwrap_or(config.api.listen);
        let bind = || async move {
            TcpListener::bind(listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: listen,
                    source,
                })
        };
        let listener = bind().await?;
        let data_dir = opts
            .data_dir
            .clone()
            .or_else(|| config.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        private_dir(&data_dir).map_err(|source| StartError::DataDir {
            dir: data_dir.clone(),
            source,
        })?;
        let (admin_password, password_source) = admin_password(&config, &data_dir)?;

        // A node of a two-node site serves only once it is active: until
        // then it is its peer's standby, and the API port stays free.
        let (listener, ha) = match &config.ha {
            None => (listener, None),
            Some(h) => {
                drop(listener);
                let dir = credentials_dir(config.region.as_ref(), &data_dir);
                let cred = Credential::read_pem(&dir).map_err(|e| {
                    StartError::Invalid(format!(
                        "ha: the site's region credential is not in {} ({e}); enroll the site on one node first, then copy that directory to the other",
                        dir.display()
                    ))
                })?;
                let node = crate::ha::Node::start(h, &config.site.id, &cred, &data_dir)?;
                let term = node.until_active().await?;
                (bind().await?, Some((node, term)))
            }
        };
        let store_ha = ha.as_ref().map(|(node, term)| crate::store::StoreHa {
            node: node.name().to_string(),
            term: *term,
            replication: node.replication(),
        });
        let (store, identity) = {
            let (dir, cfg) = (data_dir.clone(), config.clone());
            tokio::task::spawn_blocking(move || Store::open_ha(&dir, &cfg.site.id, &cfg, store_ha))
                .await
                .map_err(|e| StoreError::Sqlite(format!("store open task failed: {e}")))??
        };
        if let Some((node, _)) = &ha {
            node.activate();
        }
        // What image uploads cut by the last stop left on disk.
        let hot_dir = config.storage.tiers.hot.as_ref().map(|h| h.dir.as_path());
        if let Some(hot) = hot_dir {
            crate::storage::tier::check_hot_dir(
                hot,
                &data_dir,
                &config.storage.volumes_dir(&data_dir),
            )
            .map_err(StartError::Invalid)?;
        }
        if let Err(e) = crate::api::sweep_images(&data_dir, hot_dir, &store).await {
            tracing::warn!(error = %e.message, "could not clean up after interrupted image uploads");
        }
        let driver: Arc<dyn ComputeDriver> = match config.compute.driver {
            ComputeDriverKind::RecordOnly => Arc::new(RecordOnly),
            ComputeDriverKind::Libvirt => {
                let (cfg, site, dir) = (
                    config.compute.libvirt.clone(),
                    config.site.id.clone(),
                    data_dir.clone(),
                );
                let lv = tokio::task::spawn_blocking(move || Libvirt::open(&cfg, &site, &dir))
                    .await
                    .map_err(|e| StartError::Invalid(format!("libvirt open task failed: {e}")))??;
                Arc::new(lv)
            }
        };

        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: listen,
            source,
        })?;
        let base_url = config.api.public_url.clone().unwrap_or_else(|| {
            let host = if addr.ip().is_unspecified() {
                "127.0.0.1".to_string()
            } else {
                addr.ip().to_string()
            };
            format!(
                "http://{}",
                SocketAddr::new(host.parse().unwrap_or(addr.ip()), addr.port())
            )
        });
        let auth = Arc::new(Authority::new(
            identity,
            admin_password.clone(),
            config.api.token_ttl_secs,
        ));
        auth.revoked(
            store
                .revoked_tokens(chrono::Utc::now())
                .await
                .map_err(|e| StoreError::Sqlite(format!("cannot read revoked tokens: {e}")))?,
        );
        let events = store
            .read(|c| Ok(crate::store::accounts::revocation_events(c)?))
            .await
            .map_err(|e| StoreError::Sqlite(format!("cannot read revocation events: {e}")))?;
        for (subject, before) in events {
            auth.revoke_subject(subject, before);
        }
        let queue = Arc::new(WorkQueue::default());
        let images_changed = Arc::new(Notify::new());
        let volumes_changed = Arc::new(Notify::new());
        let state = AppState {
            store: store.clone(),
            auth,
            queue: queue.clone(),
            base_url: base_url.clone(),
            compute_driver: driver.name(),
            net_changed: Arc::new(Notify::new()),
            data_dir: data_dir.clone(),
            volumes_dir: config.storage.volumes_dir(&data_dir),
            storage_wake: Arc::new(Notify::new()),
            images_wake: images_changed.clone(),
            backup_wake: volumes_changed.clone(),
            hot_dir: config.storage.tiers.hot.as_ref().map(|h| h.dir.clone()),
            policy,
            has_region: config.region.is_some(),
        };
        let network = crate::network::Reconciler::for_config(
            &config,
            store.clone(),
            state.net_changed.clone(),
            &data_dir,
        );
        // One pacer for the site's bulk bytes, both ways.
        let pacer: crate::storage::fetch::SharedPacer = Arc::new(std::sync::Mutex::new(
            roost_sync::bulk::Pacer::new(config.storage.fetch_rate_kbit.map(|k| k * 1000)),
        ));
        let link_state = crate::alarms::LinkState::new();
        let snapshot_busy = crate::storage::Busy::default();
        let (region, uplink) = match &config.region {
            None => (RegionLink::None, None),
            Some(r) => {
                let dir = credentials_dir(Some(r), &data_dir);
                let credential = Credential::read_pem(&dir);
                let link = match (&credential, &r.join_token) {
                    (Ok(_), _) => RegionLink::Syncing {
                        name: r.name.clone(),
                        address: r.address.clone(),
                    },
                    (Err(_), Some(_)) => RegionLink::Enrolling {
                        central_api: r.central_api.clone().unwrap_or_default(),
                    },
                    (Err(e), None) => {
                        tracing::warn!(dir = %dir.display(), error = %e,
                            "the site has no credential for its region and no join token; it runs alone");
                        RegionLink::NotEnrolled {
                            credentials: dir.clone(),
                            reason: e.to_string(),
                        }
                    }
                };
                let uplink = (!matches!(link, RegionLink::NotEnrolled { .. })).then(|| Uplink {
                    site_id: config.site.id.clone(),
                    region: r.clone(),
                    credential: credential.ok(),
                    credentials_dir: dir,
                    store: store.clone(),
                    session: SessionConfig::default(),
                    intent_arrived: Arc::new(Notify::new()),
                    fetcher: crate::storage::fetch::Fetcher {
                        store: store.clone(),
                        images_dir: data_dir.join("images"),
                        pacer: pacer.clone(),
                        wake: images_changed.clone(),
                    },
                    backuper: crate::storage::backup::Backuper {
                        store: store.clone(),
                        pacer: pacer.clone(),
                        wake: volumes_changed.clone(),
                        snapshots: config.storage.tiers.cold,
                        busy: snapshot_busy.clone(),
                    },
                    link_state: link_state.clone(),
                });
                (link, uplink)
            }
        };
        let alarms = crate::alarms::Monitor {
            store: store.clone(),
            config: config.alarms.clone(),
            data_dir: data_dir.clone(),
            // A site that cannot sync (no region, or no way to enroll) has
            // no link to miss.
            link: uplink
                .as_ref()
                .map(|u| (u.region.name.clone(), link_state.clone())),
            peers: crate::alarms::peers(&config, addr),
            silent: Default::default(),
            standby: ha
                .as_ref()
                .zip(config.ha.as_ref())
                .map(|((node, _), h)| (h.peer_name.clone(), node.replication())),
        };
        let reconciler = Reconciler {
            store,
            driver,
            queue,
            max_parallel: config.compute.max_parallel,
        };
        Ok(Agent {
            config,
            data_dir,
            addr,
            base_url,
            password_source,
            admin_password,
            listener,
            region,
            state,
            reconciler,
            network,
            uplink,
            alarms,
            link_state,
            snapshot_busy,
        })
    }

    /// The password the bootstrap admin logs in with.
    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// Serves until `shutdown` completes, then drains: in-flight requests
    /// finish, the reconciler stops between actions.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        if self.reconciler.driver.name() == "record-only" {
            tracing::warn!(
                "compute driver is record-only: servers are scheduled, claimed and tracked, but no VM is started"
            );
        }
        let arrived = self
            .uplink
            .as_ref()
            .map(|u| u.intent_arrived.clone())
            .unwrap_or_default();
        let images_dir = self.data_dir.join("images");
        let tierer = crate::storage::tier::Tierer {
            store: self.reconciler.store.clone(),
            tiers: self.config.storage.tiers.clone(),
            images_dir: images_dir.clone(),
            volumes_dir: self.config.storage.volumes_dir(&self.data_dir),
            busy: self.snapshot_busy.clone(),
            link: self.link_state.clone(),
        };
        let applier = tokio::spawn(uplink::apply_loop(
            self.reconciler.store.clone(),
            self.reconciler.queue.clone(),
            arrived,
            self.state.images_wake.clone(),
            std::iter::once(images_dir)
                .chain(self.state.hot_dir.clone())
                .collect(),
            stop_rx.clone(),
        ));
        tokio::spawn(tierer.run(stop_rx.clone()));
        let volumes_changed = self
            .uplink
            .as_ref()
            .map(|u| u.backuper.wake.clone())
            .unwrap_or_default();
        let link = self.uplink.map(|u| tokio::spawn(u.run(stop_rx.clone())));
        // Awaited at the stop: it stops the DHCP servers it started.
        let network = self
            .network
            .map(|net| tokio::spawn(net.run(stop_rx.clone())));
        if network.is_none() {
            tracing::info!(
                "no network section in the config: networks are recorded, not built on this host"
            );
        }
        let storage = crate::storage::Worker {
            store: self.reconciler.store.clone(),
            wake: self.state.storage_wake.clone(),
            done: volumes_changed,
        };
        tokio::spawn(storage.run(stop_rx.clone()));
        tokio::spawn(self.alarms.run(stop_rx.clone()));
        let reconciler = tokio::spawn(self.reconciler.run(stop_rx));
        let app = api::router(self.state);
        tracing::info!(addr = %self.addr, site_id = %self.config.site.id, "serving the site API");
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        let _ = stop_tx.send(true);
        if tokio::time::timeout(Duration::from_secs(10), reconciler)
            .await
            .is_err()
        {
            tracing::warn!("the reconciler did not stop within 10 s; exiting anyway");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), applier).await;
        if let Some(network) = network {
            if tokio::time::timeout(Duration::from_secs(10), network)
                .await
                .is_err()
            {
                tracing::warn!("the network reconciler did not stop within 10 s; its DHCP servers may outlive the agent (the next start stops them)");
            }
        }
        if let Some(link) = link {
            let _ = tokio::time::timeout(Duration::from_secs(2), link).await;
        }
        tracing::info!("stopped");
        served
    }
}

/// The admin password: `ROOST_ADMIN_PASSWORD`, else the config's, else the
/// one kept in the data dir, else a new one written there (mode 0600).
pub(crate) fn admin_password(
    config: &SiteConfig,
    data_dir: &Path,
) -> Result<(String, PasswordSource), StartError> {
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        config::check_password(PASSWORD_ENV, &p).map_err(|e| StartError::Invalid(e.to_string()))?;
        return Ok((p, PasswordSource::Env));
    }
    if let Some(p) = &config.api.admin_password {
        return Ok((p.clone(), PasswordSource::Config));
    }
    let file = data_dir.join(PASSWORD_FILE);
    let io = |source| StartError::DataDir {
        dir: data_dir.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(&file) {
        Ok(p) => {
            let p = p.trim().to_string();
            config::check_password(&file.display().to_string(), &p)
                .map_err(|e| StartError::Invalid(e.to_string()))?;
            Ok((p, PasswordSource::File(file)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let p = Alphanumeric.sample_string(&mut rand::rng(), 24);
            write_secret(&file, &p).map_err(io)?;
            Ok((p, PasswordSource::Generated(file)))
        }
        Err(e) => Err(io(e)),
    }
}

/// Where the site's region credential is kept.
fn credentials_dir(region: Option<&config::UplinkSection>, data_dir: &Path) -> PathBuf {
    region
        .and_then(|r| r.credentials.clone())
        .unwrap_or_else(|| data_dir.join("pki"))
}

/// Creates the data dir if needed and makes it the agent user's alone: it
/// holds the token signing key and the admin password.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes a file only its owner can read, durably.
fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    roost_common::files::write_atomic(path, contents.as_bytes(), 0o600)
}
