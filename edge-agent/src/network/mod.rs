//! Tenant networks on the host's kernel, through rtnetlink.
//!
//! [`plan`] (pure) says what the host should hold for the site's networks
//! and the steps from what it holds; [`netlink`] reads the kernel and
//! carries out steps; [`Reconciler`] runs the two every period, so a
//! bridge deleted by hand comes back, and what Roost made and no longer
//! needs goes. Devices Roost made carry the alias `roost:<site>:<network>`;
//! nothing without it is touched. Security groups are enforced by
//! [`firewall`] (nftables), loaded again every pass.

pub mod dhcp;
pub mod firewall;
pub mod netlink;
pub mod plan;

use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::metrics::METRICS;
use crate::store::network::read;
use crate::store::Store;
use netlink::{NetError, Netlink};
use plan::HostNet;

/// Brings this host's kernel in line with the site's networks.
#[derive(Debug)]
pub struct Reconciler {
    pub store: Store,
    pub host: HostNet,
    /// Told after a network write, for a pass now rather than at the period.
    pub changed: std::sync::Arc<Notify>,
    /// Time between passes (`network.period_secs`).
    pub period: Duration,
    /// Where each network's DHCP server keeps its files; `None`: no DHCP.
    pub dhcp_dir: Option<std::path::PathBuf>,
}

impl Reconciler {
    /// The reconciler for this agent's host, from the site config; `None`
    /// when the config has no `network` section.
    pub fn for_config(
        config: &roost_common::config::SiteConfig,
        store: Store,
        changed: std::sync::Arc<Notify>,
        data_dir: &std::path::Path,
    ) -> Option<Reconciler> {
        let net = config.network.as_ref()?;
        let v4 = |a: &Option<String>| a.as_deref().and_then(|a| a.parse().ok());
        let me = config.hosts.iter().find(|h| h.name == net.host)?;
        Some(Reconciler {
            store,
            host: HostNet {
                site_id: config.site.id.clone(),
                vtep: v4(&me.address),
                underlay: net.underlay.clone(),
                peers: config.hosts.iter().filter_map(|h| v4(&h.address)).collect(),
                physnets: net.physnets.clone(),
                // The agent's own host routes for the site's subnets.
                gateway: true,
            },
            changed,
            period: Duration::from_secs(net.period_secs),
            dhcp_dir: Some(data_dir.join("network")),
        })
    }
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// The steps applied, as `Debug` prints them.
    pub applied: Vec<String>,
    pub failed: Vec<String>,
    pub problems: Vec<String>,
    /// The DHCP servers this host should run.
    pub dhcp: Vec<dhcp::Dhcp>,
    /// Why the security groups could not be loaded, if they could not.
    pub firewall: Option<String>,
}

impl Reconciler {
    /// One pass: read the store and the kernel, apply the difference. A step
    /// that fails is logged and the rest still run.
    pub async fn pass(&self, nl: &Netlink) -> Result<Pass, NetError> {
        let (networks, subnets, ports, groups) = self
            .store
            .read(|c| {
                Ok((
                    read::networks(c, &None)?,
                    read::subnets(c, &None, None)?,
                    read::ports(c, &None, None, None)?,
                    read::security_groups(c, &None)?,
                ))
            })
            .await
            .map_err(|e| NetError::Kernel {
                what: "read the site's networks".into(),
                error: e.to_string(),
            })?;
        let (want, problems) = plan::desired(&self.host, &networks, &subnets);
        let have = nl.observe().await?;
        let mut out = Pass {
            problems,
            dhcp: dhcp::desired(&self.host, &want, &networks, &subnets, &ports),
            ..Pass::default()
        };
        // Loaded whole every pass: a table flushed by hand comes back.
        let rules = firewall::ruleset(&self.host.site_id, &ports, &groups);
        // nft is a process: waited for off the async threads.
        match tokio::task::spawn_blocking(move || firewall::apply(&rules)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => out.firewall = Some(e.to_string()),
            Err(e) => out.firewall = Some(e.to_string()),
        }
        for step in plan::diff(&self.host.site_id, &want, &have) {
            match nl.apply(&step).await {
                Ok(()) => {
                    tracing::info!(step = ?step, "network step applied");
                    out.applied.push(format!("{step:?}"));
                }
                Err(e) => {
                    tracing::warn!(step = ?step, error = %e, "network step failed; retried next pass");
                    out.failed.push(e.to_string());
                }
            }
        }
        Ok(out)
    }

    /// Runs passes until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let nl = match Netlink::open() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "networking is not realised on this host");
                return;
            }
        };
        let mut said = Vec::new();
        let mut firewall_said = None;
        let mut servers = self.dhcp_dir.clone().map(dhcp::Servers::new);
        loop {
            match self.pass(&nl).await {
                Ok(p) => {
                    METRICS.network_steps_failed.set(p.failed.len() as i64);
                    if let Some(s) = &mut servers {
                        s.apply(&p.dhcp);
                    }
                    if p.firewall != firewall_said {
                        match &p.firewall {
                            Some(why) => {
                                tracing::error!(error = %why, "security groups are not enforced on this host")
                            }
                            None => {
                                tracing::info!(table = %firewall::table(&self.host.site_id), "security groups enforced on this host (nftables, family inet)")
                            }
                        }
                        firewall_said = p.firewall.clone();
                    }
                    if p.problems != said {
                        for why in &p.problems {
                            tracing::warn!(problem = %why, "a network is not realised on this host");
                        }
                        said = p.problems;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "network pass failed; retried next period"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.period) => {}
                _ = self.changed.notified() => {}
                _ = stop.changed() => {
                    if let Some(s) = &mut servers {
                        s.stop_all();
                    }
                    return;
                }
            }
        }
    }
}
