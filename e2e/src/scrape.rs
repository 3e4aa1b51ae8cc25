//! The suite-wide scrape: one real Prometheus watching every berth the e2e tests start.
//!
//! `suite-prometheus -- <command>` (see `bin/suite-prometheus.rs`) starts Prometheus with a
//! file-based service discovery directory and runs the command with
//! `BERTH_E2E_SCRAPE_DIR` pointing at it. Every [`crate::berth::Berth`] started under that
//! variable (unless its test configures `[metrics]` itself) serves metrics on a port of its
//! own and registers it here as a [`Target`]: a `targets/<id>.json` file Prometheus reads,
//! and a `windows/<id>` journal of the moments the test stopped or killed that berth on
//! purpose, and started it again. After the command, [`audit`] reads every `up` sample
//! Prometheus recorded: a failed scrape outside such a window is a defect of berth.
//! Prometheus applies discovered targets every 5 s, so a berth that lives less than that
//! may never be scraped; the summary says how many were.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

/// The variable naming the scrape directory.
pub const DIR_ENV: &str = "BERTH_E2E_SCRAPE_DIR";

/// A scrape started this long before a berth was stopped on purpose may fail with it.
const IN_FLIGHT_MS: i64 = 1000;

#[allow(clippy::print_stderr)]
fn warn(msg: &str) {
    eprintln!("suite scrape: {msg}");
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One berth as a scrape target.
#[derive(Debug)]
pub struct Target {
    /// Unique over the run: the berth's temp dir name.
    id: String,
    /// The port berth's `[metrics]` listens on.
    pub port: u16,
    dir: PathBuf,
}

impl Target {
    /// A target for a berth about to start in `berth_dir`, when the suite is scraped.
    pub fn for_berth(berth_dir: &Path) -> Option<Target> {
        let dir = PathBuf::from(std::env::var_os(DIR_ENV)?);
        let id = berth_dir.file_name()?.to_string_lossy().into_owned();
        Some(Target {
            id,
            port: metrics_port(),
            dir,
        })
    }

    /// The config table that makes berth serve this target.
    pub fn config(&self) -> String {
        format!("\n[metrics]\naddress = \"127.0.0.1:{}\"\n", self.port)
    }

    fn json(&self) -> PathBuf {
        self.dir.join("targets").join(format!("{}.json", self.id))
    }

    fn journal(&self, event: &str) {
        let path = self.dir.join("windows").join(&self.id);
        let line = format!("{event} {}\n", now_ms());
        let res = std::fs::create_dir_all(self.dir.join("windows")).and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?
                .write_all(line.as_bytes())
        });
        if let Err(e) = res {
            warn(&format!("scrape journal {}: {e}", path.display()));
        }
    }

    /// The berth serves: scraped from now on (registered on its first start).
    pub fn up(&self) {
        self.journal("up");
        let json = self.json();
        if json.exists() {
            return;
        }
        // The test's name (libtest names its threads after the test) and binary, to find
        // a failed scrape's test.
        let test = std::thread::current().name().unwrap_or("main").to_string();
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        let body = serde_json::json!([{
            "targets": [format!("127.0.0.1:{}", self.port)],
            "labels": { "berth": self.id, "test": test, "binary": binary },
        }]);
        // Written aside and renamed: Prometheus never reads half a file.
        let tmp = self.dir.join("targets").join(format!(".{}.tmp", self.id));
        let res = std::fs::create_dir_all(self.dir.join("targets"))
            .and_then(|()| std::fs::write(&tmp, body.to_string()))
            .and_then(|()| std::fs::rename(&tmp, &json));
        if let Err(e) = res {
            warn(&format!("register scrape target {}: {e}", json.display()));
        }
    }

    /// The test stops or kills its berth on purpose: scrapes may fail until [`Target::up`].
    pub fn down(&self) {
        self.journal("down");
    }

    /// The berth is gone for good: no longer a target.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(self.json());
    }
}

/// When a berth was meant to be down: `[down − in flight, up]`, `up` open at the end.
fn excused_windows(journal: &str) -> Vec<(i64, i64)> {
    let mut out = vec![];
    let mut open: Option<i64> = None;
    for line in journal.lines() {
        let mut it = line.split_whitespace();
        let (Some(event), Some(Ok(t))) = (it.next(), it.next().map(str::parse::<i64>)) else {
            continue;
        };
        match event {
            "down" if open.is_none() => open = Some(t - IN_FLIGHT_MS),
            "up" => {
                if let Some(d) = open.take() {
                    out.push((d, t));
                }
            }
            _ => {}
        }
    }
    if let Some(d) = open {
        out.push((d, i64::MAX));
    }
    out
}

/// What Prometheus saw of the run.
#[derive(Debug, Default)]
pub struct Audit {
    /// Berths scraped at least once.
    pub targets: usize,
    /// Scrapes in all.
    pub scrapes: usize,
    /// Failed scrapes while a test had its berth down on purpose.
    pub excused: usize,
    /// Failed scrapes of a berth meant to be serving: (berth id, test, unix ms).
    pub failed: Vec<(String, String, i64)>,
}

/// The socket inodes of the connections process `pid`'s network namespace has on local TCP
/// `port` other than its listener: the suite's Prometheus scraping a berth (they come and go
/// as Prometheus pleases, so a count of berth's file descriptors leaves them out).
pub fn connections_on(pid: u32, port: u16) -> std::collections::HashSet<u64> {
    const LISTEN: &str = "0A";
    let mut out = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let on_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port);
            if on_port
                && *state != LISTEN
                && let Ok(i) = inode.parse()
            {
                out.insert(i);
            }
        }
    }
    out
}

/// Judges every `up` sample (`series`: each target's labels and its (unix ms, value)
/// samples) against the journals in `dir`.
pub fn audit(dir: &Path, series: &[crate::prometheus::Series]) -> Audit {
    let mut a = Audit::default();
    let mut windows: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for (labels, samples) in series {
        let id = labels.get("berth").cloned().unwrap_or_default();
        let w = windows.entry(id.clone()).or_insert_with(|| {
            std::fs::read_to_string(dir.join("windows").join(&id))
                .map(|j| excused_windows(&j))
                .unwrap_or_default()
        });
        a.targets += 1;
        for &(t, v) in samples {
            a.scrapes += 1;
            if v == 1.0 {
                continue;
            }
            if w.iter().any(|&(d, u)| d <= t && t <= u) {
                a.excused += 1;
            } else {
                let test = labels.get("test").cloned().unwrap_or_default();
                a.failed.push((id.clone(), test, t));
            }
        }
    }
    a
}

/// The Prometheus config scraping every target registered under `dir` each second.
pub fn prometheus_config(dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir.join("targets")).context("create the targets directory")?;
    std::fs::create_dir_all(dir.join("windows")).context("create the windows directory")?;
    Ok(format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n  - job_name: berth-e2e\n    file_sd_configs:\n      \
         - files: ['{}/*.json']\n",
        dir.join("targets").display()
    ))
}

/// A port for a berth's metrics below the kernel's ephemeral range. A port `free_port`
/// finds comes from that range, where any outgoing connection of any test may be given it
/// between the check and berth's bind (CI run 4 of 2026-12-07: "Address already in use"),
/// or while a berth is down between a kill and its restart on the same port. Ports are
/// handed out in turn from a per-process start, each checked free when handed out.
fn metrics_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12_000, 65_535);
    let (base, span) = (low - 10_000, 10_000);
    let start = std::process::id() * 97;
    loop {
        let port = (base + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn metrics_ports_are_below_the_ephemeral_range_and_distinct() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let (a, b) = (super::metrics_port(), super::metrics_port());
        assert!(
            a < low && b < low && a != b,
            "{a} {b} (ephemeral from {low})"
        );
    }

    use super::*;

    #[test]
    fn the_connections_on_a_port_are_those_accepted_there_not_the_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = std::process::id();
        assert!(connections_on(me, port).is_empty());
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_accepted, _) = l.accept().unwrap();
        assert_eq!(connections_on(me, port).len(), 1);
        let _second = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_accepted2, _) = l.accept().unwrap();
        assert_eq!(connections_on(me, port).len(), 2);
    }

    fn labels(id: &str) -> BTreeMap<String, String> {
        [("berth".to_string(), id.to_string())].into()
    }

    #[test]
    fn windows_from_a_journal() {
        let w = excused_windows("up 100\ndown 5000\nup 7000\ndown 9000\n");
        assert_eq!(w, vec![(4000, 7000), (8000, i64::MAX)]);
        // A second down before the up (stop that failed, then kill) keeps the first.
        let w = excused_windows("up 1\ndown 5000\ndown 6000\nup 8000\ngarbage\n");
        assert_eq!(w, vec![(4000, 8000)]);
    }

    #[test]
    fn failed_scrapes_are_judged_against_the_windows() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("windows")).unwrap();
        std::fs::write(
            dir.path().join("windows/b1"),
            "up 1000\ndown 10000\nup 12000\ndown 20000\n",
        )
        .unwrap();
        let series = vec![
            (
                labels("b1"),
                vec![
                    (2000, 1.0),
                    (9500, 0.0),  // in flight at the stop: excused
                    (11000, 0.0), // down on purpose
                    (15000, 0.0), // serving: a defect
                    (21000, 0.0), // after the final stop
                ],
            ),
            // No journal at all: every failure counts.
            (labels("b2"), vec![(5000, 0.0), (6000, 1.0)]),
        ];
        let a = audit(dir.path(), &series);
        assert_eq!((a.targets, a.scrapes, a.excused), (2, 7, 3));
        assert_eq!(
            a.failed
                .iter()
                .map(|(id, _, t)| (id.as_str(), *t))
                .collect::<Vec<_>>(),
            vec![("b1", 15000), ("b2", 5000)]
        );
    }
}
