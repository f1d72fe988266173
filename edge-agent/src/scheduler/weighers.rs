//! Weighers: rank the hosts that passed every filter.
//!
//! Each weigher gives a raw value per host; values are normalised to `[0, 1]`
//! across the candidates (all equal -> 0) and multiplied by the configured
//! multiplier, as Nova's `normalize` does. Positive multipliers prefer more
//! free resource (spread), negative prefer less (pack).

use roost_common::config::SchedulerSection;
use roost_common::model::GroupPolicy;

use super::{HostView, Request};

/// A multiplier and the raw value it multiplies.
type Weigher<'a> = (f64, &'a dyn Fn(&HostView) -> f64);

/// Index (into `hosts`) of the best candidate. `candidates` is not empty.
pub(super) fn best(
    hosts: &[HostView],
    candidates: &[usize],
    req: &Request,
    w: &SchedulerSection,
) -> usize {
    let soft = match &req.group {
        Some(g) if g.policy == GroupPolicy::SoftAffinity => Some((g, 1.0)),
        Some(g) if g.policy == GroupPolicy::SoftAntiAffinity => Some((g, -1.0)),
        _ => None,
    };
    let weighers: [Weigher<'_>; 4] = [
        (w.ram_weight_multiplier, &|h| h.free().ram_mb as f64),
        (w.cpu_weight_multiplier, &|h| h.free().vcpus as f64),
        (w.disk_weight_multiplier, &|h| h.free().disk_gb as f64),
        (
            soft.map_or(0.0, |(_, sign)| sign * w.soft_affinity_weight_multiplier),
            &|h| soft.map_or(0.0, |(g, _)| f64::from(g.members_on(&h.spec.name))),
        ),
    ];
    let mut total = vec![0.0f64; candidates.len()];
    let mut raw = vec![0.0f64; candidates.len()];
    for (multiplier, weigh) in weighers {
        if multiplier == 0.0 {
            continue;
        }
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for (slot, &i) in raw.iter_mut().zip(candidates) {
            *slot = weigh(&hosts[i]);
            lo = lo.min(*slot);
            hi = hi.max(*slot);
        }
        let span = hi - lo;
        if span > 0.0 {
            for (t, r) in total.iter_mut().zip(&raw) {
                *t += multiplier * (r - lo) / span;
            }
        }
    }
    let mut best = 0;
    for k in 1..candidates.len() {
        if total[k] > total[best] {
            best = k;
        }
    }
    candidates[best]
}

#[cfg(test)]
mod tests {
    use super::super::tests::{host, req};
    use super::super::{schedule, GroupPlacement, HostView};
    use super::*;
    use roost_common::model::Usage;

    fn used(mut h: HostView, vcpus: u64, ram_mb: u64) -> HostView {
        h.used = Usage {
            vcpus,
            ram_mb,
            disk_gb: 0,
        };
        h
    }

    #[test]
    fn ram_weigher_spreads_by_default_and_packs_when_negative() {
        let hosts = [
            used(host("a", 16, 8192), 0, 4096),
            used(host("b", 16, 8192), 0, 1024),
        ];
        let mut w = SchedulerSection::default();
        assert_eq!(
            schedule(&hosts, &req(1, 512), &w),
            Ok(1),
            "spread: most free RAM"
        );
        w.ram_weight_multiplier = -1.0;
        assert_eq!(
            schedule(&hosts, &req(1, 512), &w),
            Ok(0),
            "pack: least free RAM"
        );
    }

    #[test]
    fn cpu_weigher() {
        let hosts = [
            used(host("a", 16, 8192), 2, 0),
            used(host("b", 16, 8192), 8, 0),
        ];
        let w = SchedulerSection {
            ram_weight_multiplier: 0.0,
            cpu_weight_multiplier: 1.0,
            ..Default::default()
        };
        assert_eq!(schedule(&hosts, &req(1, 1), &w), Ok(0));
        let w = SchedulerSection {
            ram_weight_multiplier: 0.0,
            cpu_weight_multiplier: -1.0,
            ..Default::default()
        };
        assert_eq!(schedule(&hosts, &req(1, 1), &w), Ok(1));
    }

    #[test]
    fn disk_weigher() {
        let mut a = host("a", 16, 8192);
        a.used.disk_gb = 900;
        let b = host("b", 16, 8192);
        let w = SchedulerSection {
            ram_weight_multiplier: 0.0,
            disk_weight_multiplier: 1.0,
            ..Default::default()
        };
        assert_eq!(schedule(&[a.clone(), b.clone()], &req(1, 1), &w), Ok(1));
        let w = SchedulerSection {
            ram_weight_multiplier: 0.0,
            disk_weight_multiplier: -1.0,
            ..Default::default()
        };
        assert_eq!(schedule(&[a, b], &req(1, 1), &w), Ok(0));
    }

    #[test]
    fn weights_are_normalised_so_multipliers_compare() {
        // a: much more free RAM; b: slightly more free CPU. With CPU weighted
        // 2x, normalisation makes b win even though RAM differs by MiBs.
        let hosts = [
            used(host("a", 16, 65536), 4, 0),
            used(host("b", 16, 65536), 0, 60000),
        ];
        let w = SchedulerSection {
            ram_weight_multiplier: 1.0,
            cpu_weight_multiplier: 2.0,
            ..Default::default()
        };
        assert_eq!(schedule(&hosts, &req(1, 1), &w), Ok(1));
    }

    #[test]
    fn ties_go_to_the_first_host() {
        let hosts = [host("a", 4, 4096), host("b", 4, 4096), host("c", 4, 4096)];
        assert_eq!(
            schedule(&hosts, &req(1, 1), &SchedulerSection::default()),
            Ok(0)
        );
    }

    #[test]
    fn soft_affinity_weighs_members() {
        let hosts = [host("a", 4, 4096), host("b", 4, 4096)];
        let mut r = req(1, 1);
        r.group = Some(GroupPlacement {
            policy: GroupPolicy::SoftAffinity,
            members_on: [("b".into(), 2)].into(),
        });
        assert_eq!(schedule(&hosts, &r, &SchedulerSection::default()), Ok(1));
        r.group = Some(GroupPlacement {
            policy: GroupPolicy::SoftAntiAffinity,
            members_on: [("a".into(), 2)].into(),
        });
        assert_eq!(schedule(&hosts, &r, &SchedulerSection::default()), Ok(1));
    }
}
