//! What a container's spec needs to know of the host: its mount sources, how the mounts
//! holding them propagate, and its device nodes. The spec builders ask through [`Host`],
//! so that they are pure functions of their input and tested against a made-up host.

use std::path::{Path, PathBuf};

use super::oci::Device;
use crate::error::{Error, Result};

/// How the mount holding a host path propagates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountPropagation {
    /// A peer group member (`shared:N`).
    pub shared: bool,
    /// Receives from a master (`master:N`).
    pub slave: bool,
}

/// Flags of the mount holding a host path that a bind of it into a container keeps: a bind
/// is remounted with the options its spec names, and an option left out is a flag lost
/// (a set-uid binary that works inside, a device node that opens).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountLocks {
    /// `nosuid` on the host.
    pub nosuid: bool,
    /// `nodev` on the host.
    pub nodev: bool,
    /// `noexec` on the host.
    pub noexec: bool,
}

impl MountLocks {
    /// Every flag.
    pub const ALL: MountLocks = MountLocks {
        nosuid: true,
        nodev: true,
        noexec: true,
    };

    /// The bind options that keep them.
    pub fn options(self) -> impl Iterator<Item = &'static str> {
        [
            (self.nosuid, "nosuid"),
            (self.nodev, "nodev"),
            (self.noexec, "noexec"),
        ]
        .into_iter()
        .filter_map(|(on, o)| on.then_some(o))
    }
}

/// The host, as the spec builders see it.
pub trait Host {
    /// A bind mount's source, canonical. A missing one is made a directory first, as
    /// containerd makes it.
    fn mount_source(&self, path: &str) -> Result<PathBuf>;
    /// The propagation of the mount holding `path`, if `path` is under one.
    fn propagation(&self, path: &Path) -> Option<MountPropagation>;
    /// The flags of the mount holding `path` that a bind of it must keep.
    fn mount_locks(&self, path: &Path) -> MountLocks;
    /// The character or block device at `path`, as a device of the container at `path`.
    fn device(&self, path: &str) -> Result<Device>;
    /// The host's device nodes under `/dev` (what a privileged container gets), but for
    /// the terminal ones (`/dev/console`, `/dev/ptmx`, `/dev/tty`): the container has its own.
    fn devices(&self) -> Vec<Device>;
    /// Whether the hugetlb cgroup controller is there. Where it is not (a cgroup v1 host
    /// that does not mount it), hugepage limits are left out, as containerd leaves them out
    /// (`tolerate_missing_hugetlb_controller`): the kubelet sends a limit of 0 for every page
    /// size, and runc fails a container whose limit it cannot write.
    fn hugetlb(&self) -> bool;
}

/// The machine berth runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

impl Host for RealHost {
    fn hugetlb(&self) -> bool {
        static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *PRESENT.get_or_init(|| {
            let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
            let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
            hugetlb_in(v2.as_deref(), &own)
        })
    }

    fn mount_source(&self, path: &str) -> Result<PathBuf> {
        let src = Path::new(path);
        if !src.exists() {
            std::fs::create_dir_all(src)
                .map_err(|e| Error::Invalid(format!("mount source {path}: {e}")))?;
        }
        std::fs::canonicalize(src).map_err(|e| Error::Invalid(format!("mount source {path}: {e}")))
    }

    fn propagation(&self, path: &Path) -> Option<MountPropagation> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        propagation_in(&info, path)
    }

    fn mount_locks(&self, path: &Path) -> MountLocks {
        use rustix::fs::StatVfsMountFlags as F;
        // Unknown (the path went meanwhile): nothing to keep, runc's own errors follow.
        let Ok(v) = rustix::fs::statvfs(path) else {
            return MountLocks::default();
        };
        MountLocks {
            nosuid: v.f_flag.contains(F::NOSUID),
            nodev: v.f_flag.contains(F::NODEV),
            noexec: v.f_flag.contains(F::NOEXEC),
        }
    }

    fn device(&self, path: &str) -> Result<Device> {
        let m =
            std::fs::metadata(path).map_err(|e| Error::Invalid(format!("device {path}: {e}")))?;
        device_of(path, &m).ok_or_else(|| {
            Error::Invalid(format!("device {path} is not a character or block device"))
        })
    }

    fn devices(&self) -> Vec<Device> {
        let Ok(rd) = std::fs::read_dir("/dev") else {
            return vec![];
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            let Some(path) = p.to_str() else { continue };
            if matches!(path, "/dev/console" | "/dev/ptmx" | "/dev/tty") {
                continue;
            }
            if let Some(d) = std::fs::metadata(&p).ok().and_then(|m| device_of(path, &m)) {
                out.push(d);
            }
        }
        out
    }
}

/// Whether the hugetlb controller is available: listed in the unified hierarchy's
/// `cgroup.controllers` (`v2`, when the host has one at /sys/fs/cgroup), else mounted as a v1
/// hierarchy this process belongs to (a `/proc/self/cgroup` line `N:…hugetlb…:/path`).
fn hugetlb_in(v2: Option<&str>, own: &str) -> bool {
    match v2 {
        Some(controllers) => controllers.split_whitespace().any(|c| c == "hugetlb"),
        None => own.lines().any(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|cs| cs.split(',').any(|c| c == "hugetlb"))
        }),
    }
}

fn device_of(path: &str, m: &std::fs::Metadata) -> Option<Device> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let kind = if m.file_type().is_char_device() {
        "c"
    } else if m.file_type().is_block_device() {
        "b"
    } else {
        return None;
    };
    let rdev = m.rdev();
    Some(Device {
        path: path.into(),
        kind: kind.into(),
        major: i64::from(rustix::fs::major(rdev)),
        minor: i64::from(rustix::fs::minor(rdev)),
        file_mode: Some(m.mode() & 0o777),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
    })
}

/// The propagation of the mount holding `path` in a mountinfo table: the longest mount
/// point containing it, the last one mounted there.
fn propagation_in(mountinfo: &str, path: &Path) -> Option<MountPropagation> {
    let mut best: Option<(usize, MountPropagation)> = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(point) = f.get(4) else { continue };
        let point = point.replace("\\040", " ");
        if !path.starts_with(&point) {
            continue;
        }
        let mut p = MountPropagation::default();
        for o in f.iter().skip(6).take_while(|x| **x != "-") {
            p.shared |= o.starts_with("shared:");
            p.slave |= o.starts_with("master:");
        }
        if best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), p));
        }
    }
    best.map(|(_, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugetlb_is_there_when_the_host_mounts_or_lists_it() {
        // This machine's kind: cgroup v1 without a hugetlb hierarchy.
        let v1_without = "12:pids:/\n11:cpu,cpuacct:/\n10:memory:/x\n1:name=systemd:/\n0::/\n";
        assert!(!hugetlb_in(None, v1_without));
        assert!(hugetlb_in(None, "5:hugetlb:/\n4:memory:/\n"));
        assert!(hugetlb_in(None, "5:perf_event,hugetlb:/\n"));
        assert!(hugetlb_in(Some("cpuset cpu io memory hugetlb pids\n"), ""));
        assert!(!hugetlb_in(
            Some("cpuset cpu io memory pids\n"),
            "5:hugetlb:/\n"
        ));
    }

    #[test]
    fn the_longest_and_latest_mount_point_decides() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:5 / /mnt rw,relatime - tmpfs tmpfs rw
31 30 0:6 / /mnt/sub rw master:7 - tmpfs tmpfs rw
32 22 0:7 / /my\\040dir rw shared:9 - tmpfs tmpfs rw
33 30 0:8 / /mnt rw shared:3 - tmpfs tmpfs rw
";
        let p = |s: &str| propagation_in(info, Path::new(s)).unwrap();
        assert_eq!(
            p("/var/lib"),
            MountPropagation {
                shared: true,
                slave: false
            }
        );
        assert_eq!(
            p("/mnt/x"),
            MountPropagation {
                shared: true,
                slave: false
            }
        );
        assert_eq!(
            p("/mnt/sub/y"),
            MountPropagation {
                shared: false,
                slave: true
            }
        );
        assert!(p("/my dir/a").shared);
        assert_eq!(propagation_in("", Path::new("/")), None);
    }
}
