//! The task's rootfs mounts (overlay or bind, from the Create request) at `<bundle>/rootfs`,
//! and their removal when the task is deleted.

use std::path::Path;

use rustix::mount::{MountFlags, UnmountFlags};

/// One mount of the Create request.
#[derive(Debug, Clone)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Splits mount options into flags and the filesystem's data string.
fn parse(options: &[String]) -> (MountFlags, bool, String) {
    let mut flags = MountFlags::empty();
    let mut recursive = false;
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MountFlags::RDONLY,
            "rw" => flags -= MountFlags::RDONLY,
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            "dirsync" => flags |= MountFlags::DIRSYNC,
            "noatime" => flags |= MountFlags::NOATIME,
            "nodiratime" => flags |= MountFlags::NODIRATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "strictatime" => flags |= MountFlags::STRICTATIME,
            "bind" => flags |= MountFlags::BIND,
            "rbind" => {
                flags |= MountFlags::BIND;
                recursive = true;
            }
            "defaults" | "suid" | "dev" | "exec" | "async" | "atime" | "diratime" => {}
            other => data.push(other),
        }
    }
    (flags, recursive, data.join(","))
}

/// Mounts `mounts` one over the other at `target` (each on what the one before left there).
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), String> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            // What this call mounted goes again.
            for _ in 0..i {
                let _ = rustix::mount::unmount(target, UnmountFlags::DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> Result<(), String> {
    let (flags, recursive, data) = parse(&m.options);
    let what = || format!("mount {} {} on {}", m.kind, m.source, target.display());
    // The kernel takes at most a page of mount data.
    if data.len() >= 4096 {
        return Err(format!(
            "{}: {} bytes of options, over the kernel's one-page limit",
            what(),
            data.len()
        ));
    }
    let bind = m.kind == "bind" || flags.contains(MountFlags::BIND);
    if bind {
        let mut f = MountFlags::BIND;
        if recursive {
            f |= MountFlags::REC;
        }
        rustix::mount::mount(m.source.as_str(), target, "", f, None)
            .map_err(|e| format!("{}: {e}", what()))?;
        let rest = flags - MountFlags::BIND;
        if !rest.is_empty() {
            // Bind mounts take their flags from a remount.
            rustix::mount::mount_remount(target, rest | MountFlags::BIND, "")
                .map_err(|e| format!("{} (remount {rest:?}): {e}", what()))?;
        }
        return Ok(());
    }
    let data =
        std::ffi::CString::new(data).map_err(|_| format!("{}: NUL in the options", what()))?;
    rustix::mount::mount(
        m.source.as_str(),
        target,
        m.kind.as_str(),
        flags,
        Some(data.as_c_str()),
    )
    .map_err(|e| format!("{}: {e}", what()))
}

/// Unmounts everything at `target` (not mounted: nothing to do). A busy mount is retried,
/// then detached.
pub fn unmount_all(target: &Path) {
    for _ in 0..16 {
        match rustix::mount::unmount(target, UnmountFlags::NOFOLLOW) {
            Ok(()) => continue,
            Err(rustix::io::Errno::BUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                if rustix::mount::unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
                    .is_err()
                {
                    return;
                }
            }
            // EINVAL: not a mount point any more; ENOENT: gone.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let o = |v: &[&str]| parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (f, rec, data) = o(&["ro", "nosuid", "lowerdir=a:b", "upperdir=u", "workdir=w"]);
        assert_eq!(f, MountFlags::RDONLY | MountFlags::NOSUID);
        assert!(!rec);
        assert_eq!(data, "lowerdir=a:b,upperdir=u,workdir=w");
        let (f, rec, data) = o(&["rbind", "ro", "rw"]);
        assert_eq!(f, MountFlags::BIND);
        assert!(rec);
        assert!(data.is_empty());
    }

    #[test]
    fn overlay_mounts_and_unmounts_without_leaving_anything() {
        let d = tempfile::tempdir().unwrap();
        for s in ["l1", "l2", "u", "w", "t"] {
            std::fs::create_dir(d.path().join(s)).unwrap();
        }
        std::fs::write(d.path().join("l1/a"), "1").unwrap();
        std::fs::write(d.path().join("l2/a"), "2").unwrap();
        let p = |s: &str| d.path().join(s).display().to_string();
        let target = d.path().join("t");
        mount_all(
            &[Mount {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!("lowerdir={}:{}", p("l2"), p("l1")),
                    format!("upperdir={}", p("u")),
                    format!("workdir={}", p("w")),
                ],
            }],
            &target,
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(target.join("a")).unwrap(), "2");
        unmount_all(&target);
        assert!(!target.join("a").exists());
        let long = Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("lowerdir={}", "x".repeat(5000))],
        };
        assert!(
            mount_all(&[long], &target)
                .unwrap_err()
                .contains("one-page")
        );
    }
}
