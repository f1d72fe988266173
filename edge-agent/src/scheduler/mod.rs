//! The local scheduler: Nova's filter scheduler, on the site's own hosts.
//!
//! [`schedule`] is a pure function: hosts and their usage in, a host (or a
//! [`NoValidHost`] that says what each filter removed) out. It does no I/O and
//! keeps no state; the store's writer calls it with the authoritative usage
//! and commits the claim in the same transaction as the server, which is what
//! makes concurrent creates safe (see `store::writer`).
//!
//! Filters run in a fixed order and the first that rejects a host is the one
//! blamed for it. Weighers are normalised to `[0, 1]` across the surviving
//! hosts, multiplied by their configured multiplier and summed, as Nova does.
//! Ties go to the host named first, so a decision is reproducible.

mod filters;
mod weighers;

use std::collections::BTreeMap;
use std::fmt;

use roost_common::config::SchedulerSection;
use roost_common::model::{GroupPolicy, HostSpec, Usage};

pub use filters::Filter;

/// One host as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct HostView {
    pub spec: HostSpec,
    /// Capacity after allocation ratios and reservations (cached).
    pub capacity: Usage,
    pub used: Usage,
    /// Not answering its peers (`host.down` active): nothing new goes
    /// there, as Nova skips a compute service that is down.
    pub down: bool,
}

impl HostView {
    pub fn new(spec: HostSpec, used: Usage) -> Self {
        HostView {
            capacity: spec.capacity(),
            spec,
            used,
            down: false,
        }
    }

    /// Whether new servers may go here at all: a compute host, enabled,
    /// not down (Nova's ComputeFilter). Its room is offered to the region
    /// only then.
    pub fn takes_new(&self) -> bool {
        self.spec.enabled && !self.down && self.spec.is_compute()
    }

    pub fn free(&self) -> Usage {
        let mut f = self.capacity;
        f.sub(&self.used);
        f
    }
}

/// What a new server needs.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub usage: Usage,
    pub availability_zone: Option<String>,
    pub required_traits: Vec<String>,
    pub forbidden_traits: Vec<String>,
    /// The server group's policy and how many members each host holds.
    pub group: Option<GroupPlacement>,
}

#[derive(Debug, Clone)]
pub struct GroupPlacement {
    pub policy: GroupPolicy,
    /// Host name -> members of the group already there.
    pub members_on: BTreeMap<String, u32>,
}

impl GroupPlacement {
    fn members_on(&self, host: &str) -> u32 {
        self.members_on.get(host).copied().unwrap_or(0)
    }
}

/// No host passed every filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoValidHost {
    pub hosts: usize,
    /// Hosts removed by each filter, in filter order (filters that removed
    /// none are left out).
    pub removed: Vec<(Filter, usize)>,
}

impl fmt::Display for NoValidHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "No valid host was found among {} hosts", self.hosts)?;
        for (i, (filter, n)) in self.removed.iter().enumerate() {
            let sep = if i == 0 { ": " } else { ", " };
            write!(f, "{sep}{} removed {n}", filter.name())?;
        }
        Ok(())
    }
}

impl std::error::Error for NoValidHost {}

/// Picks a host for `req`; returns its index in `hosts`.
pub fn schedule(
    hosts: &[HostView],
    req: &Request,
    weights: &SchedulerSection,
) -> Result<usize, NoValidHost> {
    let mut removed = [0usize; Filter::ALL.len()];
    let mut passed: Vec<usize> = Vec::with_capacity(hosts.len());
    for (i, h) in hosts.iter().enumerate() {
        match Filter::ALL.iter().position(|f| !f.passes(h, req)) {
            Some(k) => removed[k] += 1,
            None => passed.push(i),
        }
    }
    if passed.is_empty() {
        return Err(NoValidHost {
            hosts: hosts.len(),
            removed: Filter::ALL
                .iter()
                .zip(removed)
                .filter(|(_, n)| *n > 0)
                .map(|(f, n)| (*f, n))
                .collect(),
        });
    }
    Ok(weighers::best(hosts, &passed, req, weights))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use roost_common::model::HostRole;

    pub(crate) fn host(name: &str, vcpus: u32, ram_mb: u64) -> HostView {
        HostView::new(
            HostSpec {
                name: name.into(),
                roles: [HostRole::Compute].into(),
                vcpus,
                ram_mb,
                disk_gb: 1000,
                cpu_allocation_ratio: 1.0,
                ram_allocation_ratio: 1.0,
                disk_allocation_ratio: 1.0,
                reserved_ram_mb: 0,
                traits: Default::default(),
                availability_zone: "nova".into(),
                enabled: true,
                address: None,
            },
            Usage::default(),
        )
    }

    pub(crate) fn req(vcpus: u64, ram_mb: u64) -> Request {
        Request {
            usage: Usage {
                vcpus,
                ram_mb,
                disk_gb: 1,
            },
            ..Default::default()
        }
    }

    #[test]
    fn picks_a_host_that_fits() {
        let hosts = [host("a", 2, 1024), host("b", 8, 8192)];
        assert_eq!(
            schedule(&hosts, &req(4, 2048), &SchedulerSection::default()),
            Ok(1)
        );
    }

    #[test]
    fn no_valid_host_says_what_each_filter_removed() {
        let mut hosts = vec![host("a", 2, 8192), host("b", 8, 1024), host("c", 8, 8192)];
        hosts[2].spec.enabled = false;
        let err = schedule(&hosts, &req(4, 2048), &SchedulerSection::default()).unwrap_err();
        assert_eq!(
            err.removed,
            vec![(Filter::Compute, 1), (Filter::Core, 1), (Filter::Ram, 1)]
        );
        assert_eq!(
            err.to_string(),
            "No valid host was found among 3 hosts: ComputeFilter removed 1, CoreFilter removed 1, RamFilter removed 1"
        );
    }

    proptest::proptest! {
        /// Whatever the hosts and the request, a chosen host passes every
        /// filter and has room, and "no valid host" means none did.
        #[test]
        fn choice_is_always_valid(
            hosts in proptest::collection::vec((1u32..64, 256u64..65536, 0u64..512, 0u64..65536, proptest::bool::ANY, 0u8..3), 0..40),
            want in (1u64..32, 1u64..16384),
            az in proptest::option::of(0u8..3),
            ram_multiplier in -2.0f64..2.0,
        ) {
            let views: Vec<HostView> = hosts.iter().enumerate().map(|(i, (vcpus, ram, used_cpu, used_ram, enabled, zone))| {
                let mut h = host(&format!("h{i}"), *vcpus, *ram);
                h.spec.enabled = *enabled;
                h.spec.availability_zone = format!("z{zone}");
                h.used = Usage { vcpus: *used_cpu, ram_mb: *used_ram, disk_gb: 0 };
                h
            }).collect();
            let mut r = req(want.0, want.1);
            r.availability_zone = az.map(|z| format!("z{z}"));
            let w = SchedulerSection { ram_weight_multiplier: ram_multiplier, ..Default::default() };
            match schedule(&views, &r, &w) {
                Ok(i) => {
                    let h = &views[i];
                    proptest::prop_assert!(Filter::ALL.iter().all(|f| f.passes(h, &r)));
                    let free = h.free();
                    proptest::prop_assert!(free.vcpus >= r.usage.vcpus && free.ram_mb >= r.usage.ram_mb);
                }
                Err(e) => {
                    proptest::prop_assert!(views.iter().all(|h| Filter::ALL.iter().any(|f| !f.passes(h, &r))));
                    proptest::prop_assert_eq!(e.removed.iter().map(|(_, n)| n).sum::<usize>(), views.len());
                }
            }
        }
    }

    #[test]
    fn empty_site_has_no_valid_host() {
        let err = schedule(&[], &req(1, 1), &SchedulerSection::default()).unwrap_err();
        assert_eq!(err.hosts, 0);
        assert!(err.removed.is_empty());
    }
}
