//! `Stats`: a task's cgroup metrics as containerd reports them (`io.containerd.cgroups.v1.Metrics`
//! or `io.containerd.cgroups.v2.Metrics`), read from the cgroup its init process was put in.

use std::collections::HashMap;

use berth_cgroups::read_kv;
use std::path::{Path, PathBuf};

use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};

/// A task's memory cgroup directory, by hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Memory {
    V1(PathBuf),
    V2(PathBuf),
}

/// Where a process's cgroups are, from its `/proc/<pid>/cgroup` text (read once, when the
/// task is created: Stats and the OOM watch both use it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cgroups {
    /// v1 controller → path.
    v1: HashMap<String, String>,
    /// The unified hierarchy's path.
    unified: Option<String>,
}

impl Cgroups {
    pub fn parse(text: &str) -> Cgroups {
        let mut c = Cgroups::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if ctrls.is_empty() {
                c.unified = Some(path.to_string());
            } else {
                for ctrl in ctrls.split(',') {
                    c.v1.insert(ctrl.to_string(), path.to_string());
                }
            }
        }
        c
    }

    fn v1_dir(&self, ctrl: &str) -> Option<PathBuf> {
        let path = self.v1.get(ctrl)?;
        Some(
            Path::new("/sys/fs/cgroup")
                .join(ctrl)
                .join(path.trim_start_matches('/')),
        )
    }

    /// The memory cgroup: the v1 controller's, else the unified hierarchy's on a v2 host.
    pub fn memory(&self) -> Option<Memory> {
        if let Some(d) = self.v1_dir("memory") {
            return Some(Memory::V1(d));
        }
        let path = self.unified.as_deref()?;
        Path::new("/sys/fs/cgroup/cgroup.controllers")
            .exists()
            .then(|| Memory::V2(Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'))))
    }

    /// The task's metrics.
    pub fn metrics(&self) -> Result<Any, String> {
        let (type_url, value, dir) = match self.memory() {
            Some(Memory::V1(dir)) => (
                "io.containerd.cgroups.v1.Metrics",
                self.v1().write_to_bytes(),
                dir,
            ),
            Some(Memory::V2(dir)) => (
                "io.containerd.cgroups.v2.Metrics",
                v2_metrics(&dir).write_to_bytes(),
                dir,
            ),
            None => return Err("the task is in no memory cgroup".into()),
        };
        if !dir.exists() {
            return Err(format!("cgroup {} is gone", dir.display()));
        }
        Ok(Any {
            type_url: type_url.into(),
            value: value.map_err(|e| e.to_string())?,
            ..Default::default()
        })
    }

    fn v1(&self) -> v1::Metrics {
        let mut m = v1::Metrics::new();
        if let Some(d) = self.v1_dir("pids") {
            m.pids = MessageField::some(v1::PidsStat {
                current: read_u64(&d.join("pids.current")),
                limit: read_u64(&d.join("pids.max")),
                ..Default::default()
            });
        }
        let cpuacct = self.v1_dir("cpuacct");
        let cpu = self.v1_dir("cpu");
        if cpuacct.is_some() || cpu.is_some() {
            let mut c = v1::CPUStat::new();
            if let Some(d) = &cpuacct {
                // cpuacct.stat counts USER_HZ ticks (100 a second on Linux).
                let stat = read_kv(&d.join("cpuacct.stat"));
                c.usage = MessageField::some(v1::CPUUsage {
                    total: read_u64(&d.join("cpuacct.usage")),
                    user: stat.get("user").copied().unwrap_or(0) * 10_000_000,
                    kernel: stat.get("system").copied().unwrap_or(0) * 10_000_000,
                    per_cpu: berth_cgroups::read_text(&d.join("cpuacct.usage_percpu"))
                        .split_whitespace()
                        .filter_map(|v| v.parse().ok())
                        .collect(),
                    ..Default::default()
                });
            }
            if let Some(d) = &cpu {
                let stat = read_kv(&d.join("cpu.stat"));
                let get = |k: &str| stat.get(k).copied().unwrap_or(0);
                c.throttling = MessageField::some(v1::Throttle {
                    periods: get("nr_periods"),
                    throttled_periods: get("nr_throttled"),
                    throttled_time: get("throttled_time"),
                    ..Default::default()
                });
            }
            m.cpu = MessageField::some(c);
        }
        if let Some(d) = self.v1_dir("memory") {
            let stat = read_kv(&d.join("memory.stat"));
            let get = |k: &str| stat.get(k).copied().unwrap_or(0);
            let entry = |prefix: &str| {
                MessageField::some(v1::MemoryEntry {
                    usage: read_u64(&d.join(format!("{prefix}.usage_in_bytes"))),
                    limit: read_u64(&d.join(format!("{prefix}.limit_in_bytes"))),
                    max: read_u64(&d.join(format!("{prefix}.max_usage_in_bytes"))),
                    failcnt: read_u64(&d.join(format!("{prefix}.failcnt"))),
                    ..Default::default()
                })
            };
            m.memory = MessageField::some(v1::MemoryStat {
                cache: get("cache"),
                rss: get("rss"),
                rss_huge: get("rss_huge"),
                mapped_file: get("mapped_file"),
                dirty: get("dirty"),
                writeback: get("writeback"),
                pg_pg_in: get("pgpgin"),
                pg_pg_out: get("pgpgout"),
                pg_fault: get("pgfault"),
                pg_maj_fault: get("pgmajfault"),
                inactive_anon: get("inactive_anon"),
                active_anon: get("active_anon"),
                inactive_file: get("inactive_file"),
                active_file: get("active_file"),
                unevictable: get("unevictable"),
                hierarchical_memory_limit: get("hierarchical_memory_limit"),
                hierarchical_swap_limit: get("hierarchical_memsw_limit"),
                total_cache: get("total_cache"),
                total_rss: get("total_rss"),
                total_rss_huge: get("total_rss_huge"),
                total_mapped_file: get("total_mapped_file"),
                total_dirty: get("total_dirty"),
                total_writeback: get("total_writeback"),
                total_pg_pg_in: get("total_pgpgin"),
                total_pg_pg_out: get("total_pgpgout"),
                total_pg_fault: get("total_pgfault"),
                total_pg_maj_fault: get("total_pgmajfault"),
                total_inactive_anon: get("total_inactive_anon"),
                total_active_anon: get("total_active_anon"),
                total_inactive_file: get("total_inactive_file"),
                total_active_file: get("total_active_file"),
                total_unevictable: get("total_unevictable"),
                usage: entry("memory"),
                swap: entry("memory.memsw"),
                kernel: entry("memory.kmem"),
                kernel_tcp: entry("memory.kmem.tcp"),
                ..Default::default()
            });
        }
        m
    }
}

fn v2_metrics(dir: &Path) -> v2::Metrics {
    let cpu = read_kv(&dir.join("cpu.stat"));
    let mem = read_kv(&dir.join("memory.stat"));
    let c = |k: &str| cpu.get(k).copied().unwrap_or(0);
    let g = |k: &str| mem.get(k).copied().unwrap_or(0);
    v2::Metrics {
        pids: MessageField::some(v2::PidsStat {
            current: read_u64(&dir.join("pids.current")),
            limit: read_u64(&dir.join("pids.max")),
            ..Default::default()
        }),
        cpu: MessageField::some(v2::CPUStat {
            usage_usec: c("usage_usec"),
            user_usec: c("user_usec"),
            system_usec: c("system_usec"),
            nr_periods: c("nr_periods"),
            nr_throttled: c("nr_throttled"),
            throttled_usec: c("throttled_usec"),
            ..Default::default()
        }),
        memory: MessageField::some(v2::MemoryStat {
            anon: g("anon"),
            file: g("file"),
            kernel_stack: g("kernel_stack"),
            slab: g("slab"),
            sock: g("sock"),
            shmem: g("shmem"),
            file_mapped: g("file_mapped"),
            file_dirty: g("file_dirty"),
            file_writeback: g("file_writeback"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            pgfault: g("pgfault"),
            pgmajfault: g("pgmajfault"),
            usage: read_u64(&dir.join("memory.current")),
            usage_limit: read_u64(&dir.join("memory.max")),
            swap_usage: read_u64(&dir.join("memory.swap.current")),
            swap_limit: read_u64(&dir.join("memory.swap.max")),
            max_usage: read_u64(&dir.join("memory.peak")),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A number from a cgroup file; `max` and what cannot be read are 0 (no limit, no value).
fn read_u64(p: &Path) -> u64 {
    berth_cgroups::read_u64(p).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_of_v1_hybrid_and_v2() {
        let c = Cgroups::parse("12:cpu,cpuacct:/a/b\n11:memory:/a/b\n1:name=systemd:/x\n0::/u\n");
        assert_eq!(
            c.v1_dir("cpuacct"),
            Some(PathBuf::from("/sys/fs/cgroup/cpuacct/a/b"))
        );
        assert_eq!(
            c.v1_dir("memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/a/b"))
        );
        assert_eq!(c.unified.as_deref(), Some("/u"));
        assert_eq!(
            c.memory(),
            Some(Memory::V1(PathBuf::from("/sys/fs/cgroup/memory/a/b")))
        );
        let v2 = Cgroups::parse("0::/kubepods/pod1/c1\n");
        assert!(v2.v1.is_empty());
        assert_eq!(v2.unified.as_deref(), Some("/kubepods/pod1/c1"));
    }

    #[test]
    fn files_of_numbers_and_key_values() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("n"), "42\n").unwrap();
        std::fs::write(d.path().join("max"), "max\n").unwrap();
        std::fs::write(d.path().join("kv"), "user 5\nsystem 7\nbad x\n").unwrap();
        assert_eq!(read_u64(&d.path().join("n")), 42);
        assert_eq!(read_u64(&d.path().join("max")), 0);
        assert_eq!(read_u64(&d.path().join("none")), 0);
        let kv = read_kv(&d.path().join("kv"));
        assert_eq!((kv["user"], kv["system"], kv.len()), (5, 7, 2));
    }
}
