//! The process metrics every Prometheus client library serves (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, …), read from `/proc/self` when scraped. Blocking: the
//! caller scrapes off the async workers.

use std::sync::LazyLock;

use crate::types::{Computed, Type, Value};

/// `process_*` and `berth_build_info`.
pub fn families() -> &'static [Computed] {
    static F: LazyLock<Vec<Computed>> = LazyLock::new(|| {
        let one = |f: fn(&Stat) -> Option<f64>| {
            move || {
                Stat::read()
                    .and_then(|s| f(&s))
                    .map(|v| vec![(vec![], Value::Number(v))])
                    .unwrap_or_default()
            }
        };
        vec![
            Computed::new(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                &[],
                Type::Counter,
                one(|s| Some((s.utime + s.stime) as f64 / ticks())),
            ),
            Computed::new(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                &[],
                Type::Gauge,
                one(|s| Some(s.rss_pages as f64 * rustix::param::page_size() as f64)),
            ),
            Computed::new(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                &[],
                Type::Gauge,
                one(|s| Some(s.vsize as f64)),
            ),
            Computed::new(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                &[],
                Type::Gauge,
                one(|s| Some(boot_time()? + s.start_ticks as f64 / ticks())),
            ),
            Computed::new(
                "process_open_fds",
                "Number of open file descriptors.",
                &[],
                Type::Gauge,
                || {
                    std::fs::read_dir("/proc/self/fd")
                        .map(|d| vec![(vec![], Value::Number(d.count() as f64))])
                        .unwrap_or_default()
                },
            ),
            Computed::new(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                &[],
                Type::Gauge,
                || {
                    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
                    l.current
                        .map(|c| vec![(vec![], Value::Number(c as f64))])
                        .unwrap_or_default()
                },
            ),
            Computed::new(
                "berth_build_info",
                "berth's version; always 1.",
                &["version"],
                Type::Gauge,
                || vec![(vec![env!("CARGO_PKG_VERSION").into()], Value::Number(1.0))],
            ),
        ]
    });
    &F
}

fn ticks() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

/// The fields of `/proc/self/stat` these metrics use.
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

impl Stat {
    fn read() -> Option<Stat> {
        Stat::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }

    /// Fields after the command, which is in parentheses and may hold spaces and `)`.
    fn parse(s: &str) -> Option<Stat> {
        let rest = &s[s.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state): field n is f[n - 3].
        let n = |i: usize| f.get(i - 3)?.parse::<u64>().ok();
        Some(Stat {
            utime: n(14)?,
            stime: n(15)?,
            start_ticks: n(22)?,
            vsize: n(23)?,
            rss_pages: n(24)?,
        })
    }
}

/// The boot time, in seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_hostile_command_name() {
        let s = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 4 0 1234 5678 90";
        assert_eq!(
            Stat::parse(s),
            Some(Stat {
                utime: 7,
                stime: 3,
                start_ticks: 1234,
                vsize: 5678,
                rss_pages: 90
            })
        );
        assert!(Stat::read().is_some());
        assert!(boot_time().is_some());
    }
}
