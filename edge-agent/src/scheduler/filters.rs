//! Filters: each says whether a host can take the request.

use roost_common::model::GroupPolicy;

use super::{HostView, Request};

/// The filters, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// The host is enabled and has the compute role.
    Compute,
    /// The host is in the requested availability zone.
    AvailabilityZone,
    /// The host has every required trait and no forbidden one.
    Traits,
    /// Free vCPUs (after the allocation ratio) cover the request.
    Core,
    /// Free RAM (after ratio and reservation) covers the request.
    Ram,
    /// Free disk (after ratio) covers the request.
    Disk,
    /// Affinity group: the host already holds the group's members (or the
    /// group has none yet).
    ServerGroupAffinity,
    /// Anti-affinity group: the host holds none of the group's members.
    ServerGroupAntiAffinity,
}

impl Filter {
    pub const ALL: [Filter; 8] = [
        Filter::Compute,
        Filter::AvailabilityZone,
        Filter::Traits,
        Filter::Core,
        Filter::Ram,
        Filter::Disk,
        Filter::ServerGroupAffinity,
        Filter::ServerGroupAntiAffinity,
    ];

    /// The name Nova uses for the filter, shown to operators.
    pub fn name(self) -> &'static str {
        match self {
            Filter::Compute => "ComputeFilter",
            Filter::AvailabilityZone => "AvailabilityZoneFilter",
            Filter::Traits => "TraitsFilter",
            Filter::Core => "CoreFilter",
            Filter::Ram => "RamFilter",
            Filter::Disk => "DiskFilter",
            Filter::ServerGroupAffinity => "ServerGroupAffinityFilter",
            Filter::ServerGroupAntiAffinity => "ServerGroupAntiAffinityFilter",
        }
    }

    pub fn passes(self, h: &HostView, req: &Request) -> bool {
        let free = || h.free();
        match self {
            Filter::Compute => h.takes_new(),
            Filter::AvailabilityZone => req
                .availability_zone
                .as_deref()
                .is_none_or(|az| az == h.spec.availability_zone),
            Filter::Traits => {
                req.required_traits
                    .iter()
                    .all(|t| h.spec.traits.contains(t))
                    && !req
                        .forbidden_traits
                        .iter()
                        .any(|t| h.spec.traits.contains(t))
            }
            Filter::Core => free().vcpus >= req.usage.vcpus,
            Filter::Ram => free().ram_mb >= req.usage.ram_mb,
            Filter::Disk => free().disk_gb >= req.usage.disk_gb,
            Filter::ServerGroupAffinity => match &req.group {
                Some(g) if g.policy == GroupPolicy::Affinity => {
                    g.members_on.values().all(|n| *n == 0) || g.members_on(&h.spec.name) > 0
                }
                _ => true,
            },
            Filter::ServerGroupAntiAffinity => match &req.group {
                Some(g) if g.policy == GroupPolicy::AntiAffinity => g.members_on(&h.spec.name) == 0,
                _ => true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{host, req};
    use super::super::GroupPlacement;
    use super::*;
    use roost_common::model::{HostRole, Usage};

    #[test]
    fn compute_filter() {
        let mut h = host("a", 4, 4096);
        assert!(Filter::Compute.passes(&h, &req(1, 1)));
        h.spec.enabled = false;
        assert!(!Filter::Compute.passes(&h, &req(1, 1)));
        let mut h = host("a", 4, 4096);
        h.down = true;
        assert!(!Filter::Compute.passes(&h, &req(1, 1)));
        let mut h = host("a", 4, 4096);
        h.spec.roles = [HostRole::Controller].into();
        assert!(!Filter::Compute.passes(&h, &req(1, 1)));
    }

    #[test]
    fn availability_zone_filter() {
        let h = host("a", 4, 4096);
        let mut r = req(1, 1);
        assert!(Filter::AvailabilityZone.passes(&h, &r));
        r.availability_zone = Some("nova".into());
        assert!(Filter::AvailabilityZone.passes(&h, &r));
        r.availability_zone = Some("line-2".into());
        assert!(!Filter::AvailabilityZone.passes(&h, &r));
    }

    #[test]
    fn traits_filter() {
        let mut h = host("a", 4, 4096);
        h.spec.traits.insert("CUSTOM_GPU".into());
        let mut r = req(1, 1);
        r.required_traits = vec!["CUSTOM_GPU".into()];
        assert!(Filter::Traits.passes(&h, &r));
        r.required_traits = vec!["CUSTOM_FPGA".into()];
        assert!(!Filter::Traits.passes(&h, &r));
        r.required_traits.clear();
        r.forbidden_traits = vec!["CUSTOM_GPU".into()];
        assert!(!Filter::Traits.passes(&h, &r));
    }

    #[test]
    fn resource_filters_use_ratios_and_usage() {
        let mut h = host("a", 4, 4096);
        h.spec.cpu_allocation_ratio = 2.0;
        h = super::super::HostView::new(
            h.spec,
            Usage {
                vcpus: 6,
                ram_mb: 3072,
                disk_gb: 990,
            },
        );
        assert!(Filter::Core.passes(&h, &req(2, 1)));
        assert!(!Filter::Core.passes(&h, &req(3, 1)));
        assert!(Filter::Ram.passes(&h, &req(1, 1024)));
        assert!(!Filter::Ram.passes(&h, &req(1, 1025)));
        let mut r = req(1, 1);
        r.usage.disk_gb = 11;
        assert!(!Filter::Disk.passes(&h, &r));
        r.usage.disk_gb = 10;
        assert!(Filter::Disk.passes(&h, &r));
    }

    fn group(policy: GroupPolicy, on: &[(&str, u32)]) -> Request {
        let mut r = req(1, 1);
        r.group = Some(GroupPlacement {
            policy,
            members_on: on.iter().map(|(h, n)| (h.to_string(), *n)).collect(),
        });
        r
    }

    #[test]
    fn affinity_filter() {
        let (a, b) = (host("a", 4, 4096), host("b", 4, 4096));
        let empty = group(GroupPolicy::Affinity, &[]);
        assert!(Filter::ServerGroupAffinity.passes(&a, &empty));
        let on_a = group(GroupPolicy::Affinity, &[("a", 1)]);
        assert!(Filter::ServerGroupAffinity.passes(&a, &on_a));
        assert!(!Filter::ServerGroupAffinity.passes(&b, &on_a));
        assert!(
            Filter::ServerGroupAntiAffinity.passes(&b, &on_a),
            "affinity is not anti-affinity"
        );
    }

    #[test]
    fn anti_affinity_filter() {
        let (a, b) = (host("a", 4, 4096), host("b", 4, 4096));
        let on_a = group(GroupPolicy::AntiAffinity, &[("a", 1)]);
        assert!(!Filter::ServerGroupAntiAffinity.passes(&a, &on_a));
        assert!(Filter::ServerGroupAntiAffinity.passes(&b, &on_a));
        let soft = group(GroupPolicy::SoftAntiAffinity, &[("a", 3)]);
        assert!(
            Filter::ServerGroupAntiAffinity.passes(&a, &soft),
            "soft policies only weigh"
        );
    }
}
