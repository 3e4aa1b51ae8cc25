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

/// The host, as the spec builders see it.
pub trait Host {
    /// A bind mount's source, canonical. A missing one is made a directory first, as
    /// containerd makes it.
    fn mount_source(&self, path: &str) -> Result<PathBuf>;
    /// The propagation of the mount holding `path`, if `path` is under one.
    fn propagation(&self, path: &Path) -> Option<MountPropagation>;
    /// The character or block device at `path`, as a device of the container at `path`.
    fn device(&self, path: &str) -> Result<Device>;
    /// The host's device nodes under `/dev` (what a privileged container gets), but for
    /// the terminal ones (`/dev/console`, `/dev/ptmx`, `/dev/tty`): the container has its own.
    fn devices(&self) -> Vec<Device>;
}

/// The machine berth runs on.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealHost;

impl Host for RealHost {
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
