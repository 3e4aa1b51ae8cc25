//! The node itself: its kernel (namespaces, overlayfs, cgroups, seccomp) and berth's state
//! directory.

use std::path::Path;

use super::{Check, fail, pass};

pub(super) fn kernel() -> Vec<Check> {
    let mut out = Vec::new();
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    out.push(
        if fs
            .lines()
            .any(|l| l.trim_end().ends_with("\toverlay") || l.trim() == "nodev\toverlay")
        {
            pass("kernel", "overlayfs", "supported")
        } else {
            fail(
                "kernel",
                "overlayfs",
                "not in /proc/filesystems",
                "modprobe overlay (and add it to /etc/modules-load.d)",
            )
        },
    );
    let missing: Vec<&str> = ["mnt", "uts", "ipc", "net", "pid", "user", "cgroup"]
        .into_iter()
        .filter(|n| !Path::new("/proc/self/ns").join(n).exists())
        .collect();
    out.push(if missing.is_empty() {
        pass("kernel", "namespaces", "mnt uts ipc net pid user cgroup")
    } else {
        fail(
            "kernel",
            "namespaces",
            format!("missing: {}", missing.join(" ")),
            "use a kernel built with CONFIG_NAMESPACES and the missing namespace options",
        )
    });
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let have = |c: &str| {
        if v2 {
            std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                .unwrap_or_default()
                .split_whitespace()
                .any(|x| x == c)
        } else {
            Path::new("/sys/fs/cgroup").join(c).is_dir()
        }
    };
    let lacking: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !have(c))
        .collect();
    out.push(if lacking.is_empty() {
        pass("kernel", "cgroups", format!("{} (cpu memory pids)", if v2 { "v2" } else { "v1" }))
    } else {
        fail("kernel", "cgroups", format!("{}: no {}", if v2 { "v2" } else { "v1" }, lacking.join(" ")), "enable the missing controllers (kernel command line cgroup_enable=..., or delegate them on v2)")
    });
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    out.push(if status.lines().any(|l| l.starts_with("Seccomp:")) {
        pass(
            "kernel",
            "seccomp",
            "available (RuntimeDefault profiles apply)",
        )
    } else {
        fail(
            "kernel",
            "seccomp",
            "not available",
            "use a kernel with CONFIG_SECCOMP_FILTER",
        )
    });
    let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false);
    let selinux = std::fs::read_to_string("/sys/fs/selinux/enforce").ok();
    out.push(pass(
        "kernel",
        "lsm",
        format!(
            "AppArmor {}, SELinux {}",
            if apparmor { "enabled" } else { "off" },
            match selinux.as_deref().map(str::trim) {
                Some("1") => "enforcing",
                Some(_) => "permissive",
                None => "off",
            }
        ),
    ));
    out
}

/// tmpfs and ramfs, as `statfs(2)` names them.
const MEMORY_FS: [rustix::fs::FsWord; 2] = [0x0102_1994, 0x8584_58f6];

/// The state directory (bundles, fifos, pid files, netns and shm mounts) belongs on a
/// tmpfs, as `/run` is on a systemd host: runc writes each container's pid file with
/// `O_SYNC` there, and the shims write their bundle files, so on a disk every container
/// start waits for the device. Optional: berth works either way.
pub(crate) fn state_dir(state: &Path) -> Check {
    let name = "state on tmpfs";
    // The directory may not exist before berth's first start: its nearest ancestor decides.
    let Some(probe) = state.ancestors().find(|p| p.exists()) else {
        return pass(
            "state",
            name,
            format!("{} (not created yet)", state.display()),
        );
    };
    match rustix::fs::statfs(probe) {
        Ok(fs) if MEMORY_FS.contains(&fs.f_type) => {
            pass("state", name, format!("{} is on tmpfs", state.display()))
        }
        Ok(fs) => Check {
            required: false,
            ..fail(
                "state",
                name,
                format!(
                    "{} is on a disk filesystem (magic {:#x}): each container start waits for \
                     synchronous writes there (runc's pid file)",
                    state.display(),
                    fs.f_type
                ),
                format!(
                    "with berth stopped and no pods on the node, mount a tmpfs there \
                     (mount -t tmpfs -o mode=0711 tmpfs {}, and in /etc/fstab); \
                     a systemd host's /run is one already",
                    state.display()
                ),
            )
        },
        Err(e) => Check {
            required: false,
            ..fail(
                "state",
                name,
                format!("statfs {}: {e}", probe.display()),
                "check that the state directory is readable",
            )
        },
    }
}

/// On a hybrid host (v1 controllers under a tmpfs at `root`, cgroup2 at `root/unified`),
/// the controllers left on the cgroup2 side.
pub(super) fn controllers_left_on_cgroup2(root: &Path) -> Vec<String> {
    if !root.join("unified/cgroup.procs").exists() {
        return Vec::new();
    }
    std::fs::read_to_string(root.join("unified/cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controllers_stranded_on_a_hybrid_hosts_cgroup2_are_found() {
        let d = tempfile::tempdir().unwrap();
        assert!(
            controllers_left_on_cgroup2(d.path()).is_empty(),
            "no cgroup2 there"
        );
        std::fs::create_dir(d.path().join("unified")).unwrap();
        std::fs::write(d.path().join("unified/cgroup.procs"), "1\n").unwrap();
        std::fs::write(d.path().join("unified/cgroup.controllers"), "\n").unwrap();
        assert!(controllers_left_on_cgroup2(d.path()).is_empty());
        std::fs::write(
            d.path().join("unified/cgroup.controllers"),
            "hugetlb misc\n",
        )
        .unwrap();
        assert_eq!(controllers_left_on_cgroup2(d.path()), ["hugetlb", "misc"]);
    }

    #[test]
    fn state_on_tmpfs_or_a_warning() {
        // /dev/shm is a tmpfs on every Linux host this runs on; the crate directory is not.
        let shm = state_dir(Path::new("/dev/shm/berth-doctor-test/state"));
        assert!(shm.ok, "{shm:?}");
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let on_disk = rustix::fs::statfs(crate_dir).is_ok_and(|fs| !MEMORY_FS.contains(&fs.f_type));
        if on_disk {
            let disk = state_dir(crate_dir);
            assert!(!disk.ok && !disk.required, "{disk:?}");
            assert!(
                disk.fix
                    .as_deref()
                    .is_some_and(|f| f.contains("mount -t tmpfs"))
            );
        }
    }
}
