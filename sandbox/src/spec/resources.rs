//! cgroup limits from the CRI's `LinuxContainerResources`. A value the kubelet left at
//! zero (or empty) is not set: the runtime keeps its default, and an update leaves it as
//! it was.

use super::oci::{Cpu, HugepageLimit, Memory};
use crate::container::Resources as Asked;

/// The OCI resources for `r`, without device rules (those come from the container's
/// devices and privilege, and an update keeps them), and without hugepage limits unless
/// `hugetlb` (the controller is there: [`super::host::Host::hugetlb`]).
pub fn linux_resources(r: &Asked, hugetlb: bool) -> super::oci::Resources {
    let positive = |v: i64| (v > 0).then_some(v);
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let cpu = Cpu {
        shares: positive(r.cpu_shares).map(|v| v as u64),
        quota: (r.cpu_quota != 0).then_some(r.cpu_quota),
        period: positive(r.cpu_period).map(|v| v as u64),
        cpus: text(&r.cpuset_cpus),
        mems: text(&r.cpuset_mems),
    };
    let memory = Memory {
        limit: positive(r.memory_limit),
        swap: positive(r.memory_swap_limit),
    };
    super::oci::Resources {
        devices: vec![],
        cpu: (cpu != Cpu::default()).then_some(cpu),
        memory: (memory != Memory::default()).then_some(memory),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .filter(|_| hugetlb)
            .map(|(size, limit)| HugepageLimit {
                page_size: size.clone(),
                limit: *limit,
            })
            .collect(),
        unified: r.unified.clone(),
        pids: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_kubelet_left_at_zero_is_not_set() {
        let none = linux_resources(&Asked::default(), true);
        assert_eq!(none, super::super::oci::Resources::default());
        let asked = Asked {
            cpu_shares: 512,
            cpu_quota: -1,
            cpu_period: 100_000,
            memory_limit: 64 << 20,
            cpuset_cpus: "0-1".into(),
            hugepage_limits: vec![("2MB".into(), 0)],
            unified: [("memory.high".to_string(), "max".to_string())].into(),
            ..Default::default()
        };
        let r = linux_resources(&asked, true);
        let cpu = r.cpu.unwrap();
        assert_eq!(
            (
                cpu.shares,
                cpu.quota,
                cpu.period,
                cpu.cpus.as_deref(),
                cpu.mems
            ),
            (Some(512), Some(-1), Some(100_000), Some("0-1"), None)
        );
        assert_eq!(r.memory.unwrap().limit, Some(64 << 20));
        assert_eq!(r.hugepage_limits[0].page_size, "2MB");
        assert_eq!(r.unified["memory.high"], "max");
        // Without the controller, no hugepage limit (runc could not write it).
        assert!(linux_resources(&asked, false).hugepage_limits.is_empty());
    }
}
