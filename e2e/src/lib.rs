//! Fixtures for berth's end-to-end tests: a real `docker-registry` on 127.0.0.1, OCI images
//! built here and pushed to it, and a real `berth` process with its own root, state and socket,
//! driven over its CRI socket as the kubelet and crictl drive it.
//!
//! Every fixture owns what it started (by PID, never by name) and tears it down in `Drop`,
//! also when the test panics.

pub mod apps;
pub mod berth;
pub mod cleanup;
pub mod containerd;
pub mod cosign;
pub mod crypt;
pub mod device_plugin;
pub mod faults;
pub mod image;
pub mod kubelet;
pub mod net;
pub mod node_e2e;
pub mod node_images;
pub mod pods;
pub mod prometheus;
pub mod proxy;
pub mod registry;
pub mod scrape;
pub mod stargz;
pub mod tls;
pub mod tools;

pub use berth::{Berth, Cri};
pub use image::{Compression, ImageBuilder, Layer};
pub use net::TestNet;
pub use pods::PodEnv;
pub use registry::Registry;

/// A free TCP port on 127.0.0.1 (the small race before the user binds it is accepted).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    f()
}

/// The distinct niceness values of the threads of process `pid` (field 19 of
/// `/proc/<pid>/task/<tid>/stat`), sorted.
pub fn thread_nices(pid: u32) -> Vec<i64> {
    let mut v: Vec<i64> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| rd.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|st| {
            // After the ")" that closes the command name, the state is field 3; nice is 19.
            let rest = &st[st.rfind(')')? + 2..];
            rest.split(' ').nth(16)?.parse().ok()
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The `p`th percentile of `v`, in milliseconds (benchmarks).
pub fn percentile_ms(v: &[std::time::Duration], p: usize) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)].as_secs_f64() * 1e3
}

/// Processes on this machine whose command line is exactly `argv`.
pub fn processes(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether process `pid` is gone or a zombie (this machine's init may reap orphans late).
pub fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(st) => st
            .rfind(')')
            .and_then(|i| st[i + 2..].split(' ').next())
            .is_none_or(|state| state == "Z" || state == "X"),
    }
}

/// Sends `sig` to `pid` (a process this fixture started).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a PID we own and a valid signal number has no memory effects.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Proportional set size of `pid` in KiB (its share of the pages it shares).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident set size of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `kB` figure of `/proc/<pid>/status` (`field` with its colon, as `VmHWM:`).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The CPU time (user and system) `pid` has used.
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces), from its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(std::time::Duration::from_millis(ticks * 1000 / hz))
}

/// Whether benchmarks keep the daemons' state (and runc's) on a tmpfs, as a node does
/// (`/run` is a tmpfs on systemd hosts): yes unless `BERTH_BENCH_STATE=disk`.
pub fn bench_state_on_tmpfs() -> bool {
    std::env::var("BERTH_BENCH_STATE").map_or(true, |v| v != "disk")
}

/// Mounts a fresh tmpfs on `dir` (created if missing). [`unmount_under`] removes it.
pub fn mount_tmpfs(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "mode=0711", "tmpfs"])
        .arg(dir)
        .status()?;
    anyhow::ensure!(status.success(), "mount tmpfs on {}", dir.display());
    Ok(())
}

/// A tmpfs on a directory for as long as this lives.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts it ([`mount_tmpfs`]).
    pub fn mount(dir: &std::path::Path) -> anyhow::Result<Self> {
        mount_tmpfs(dir)?;
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount_under(&self.0);
    }
}

/// Lazily unmounts every mount point at or below `dir`, deepest first.
pub fn unmount_under(dir: &std::path::Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|p| std::path::Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let c = std::ffi::CString::new(p).expect("mount point without NUL");
        // SAFETY: umount2 on a NUL-terminated path; MNT_DETACH has no memory effects.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}
