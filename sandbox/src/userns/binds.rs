//! Idmapped bind mounts berth makes itself, for handlers whose runtime runs containers in a
//! user namespace but cannot idmap a mount there (crun 1.8: its `idmap` option fails with
//! EPERM in a container that joins the pod's user and PID namespaces, CRI's default).
//!
//! Each bind of the container's spec that carries id mappings (the pod's files, its
//! `/dev/shm`, the volumes the kubelet sends mappings for) becomes a plain bind of a staged
//! mount: a clone of its source, idmapped from the host through the pause process's user
//! namespace, attached at `<state>/idmap-binds/<container id>/<n>`. The runtime binds those
//! into the container when it creates it; from then on the container's mount namespace holds
//! copies of its own, so the staged mounts are detached as soon as the create returns,
//! whatever it answered. The container's lazily pulled layers are staged in the same
//! directory, under any handler (`layer-<n>`, [`super::remap_lowers`]): an overlay holds
//! its own copies of its layers once mounted. A berth that dies in between leaves them to the container's removal
//! or, for a container berth never recorded, to the orphan sweep.
//!
//! Nothing here is removed recursively: a staged mount of a writable volume is the user's
//! data. Each entry is detached, then removed with `rmdir`/`unlink`, which fail on anything
//! still mounted.

use std::path::{Path, PathBuf};

use super::UserNamespace;
use crate::error::{Error, Result};
use crate::spec::oci::Mount;

/// How many mounts may be stacked on one entry before berth stops detaching them (there is
/// one unless something else mounted there).
const MAX_STACKED: usize = 8;

/// The directory of every container's staged mounts.
pub fn parent(state_dir: &Path) -> PathBuf {
    state_dir.join("idmap-binds")
}

/// Where container `id`'s staged mounts are attached.
pub fn dir(state_dir: &Path, id: &str) -> PathBuf {
    parent(state_dir).join(id)
}

/// Whether any of `mounts` is a bind that asks to be idmapped.
pub fn wanted(mounts: &[Mount]) -> bool {
    mounts.iter().any(asks_idmap)
}

fn asks_idmap(m: &Mount) -> bool {
    !(m.uid_mappings.is_empty() && m.gid_mappings.is_empty())
}

/// Replaces every bind of `mounts` that carries id mappings with a plain bind of its source
/// idmapped through the user namespace of process `pid` (the pod's pause process), staged in
/// `dir`. The mappings must be the pod's (`userns`): the kernel takes them from the
/// namespace, not from the spec. On failure nothing staged stays. Blocking.
pub fn stage(mounts: &mut [Mount], dir: &Path, pid: u32, userns: &UserNamespace) -> Result<()> {
    let r = stage_all(mounts, dir, pid, userns);
    if r.is_err()
        && let Err(e) = release(dir)
    {
        tracing::warn!(dir = %dir.display(), err = %e, "cannot release the idmapped mounts of a failed staging");
    }
    r
}

fn stage_all(mounts: &mut [Mount], dir: &Path, pid: u32, userns: &UserNamespace) -> Result<()> {
    let ns = super::open_userns(pid)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    for (n, m) in mounts.iter_mut().filter(|m| asks_idmap(m)).enumerate() {
        if m.kind != "bind" && !m.options.iter().any(|o| o == "bind" || o == "rbind") {
            return Err(Error::Invalid(format!(
                "mount at {}: only bind mounts can be idmapped (type {:?})",
                m.destination, m.kind
            )));
        }
        if m.uid_mappings != [userns.uids.oci()] || m.gid_mappings != [userns.gids.oci()] {
            return Err(Error::Invalid(format!(
                "mount at {}: its id mappings must be those of the pod's user namespace",
                m.destination
            )));
        }
        let source = Path::new(&m.source);
        let meta = std::fs::metadata(source)
            .map_err(|e| Error::io(format!("mount at {}: stat {}", m.destination, m.source), e))?;
        let at = dir.join(n.to_string());
        if meta.is_dir() {
            std::fs::create_dir(&at)
        } else {
            std::fs::File::create_new(&at).map(drop)
        }
        .map_err(|e| Error::io(format!("create {}", at.display()), e))?;
        let recursive = m.options.iter().any(|o| o == "rbind");
        let tree = super::idmapped_clone(source, &ns, recursive, 0)
            .map_err(|e| Error::Invalid(format!("mount at {}: {e}", m.destination)))?;
        super::attach(&tree, &at)?;
        m.source = at.display().to_string();
        m.uid_mappings.clear();
        m.gid_mappings.clear();
    }
    Ok(())
}

/// Detaches and removes the staged mounts in `dir`, then `dir`; an absent `dir` is success.
/// Never recurses into what it cannot unmount. Blocking.
pub fn release(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
        let at = entry.path();
        for _ in 0..MAX_STACKED {
            if !super::is_mount_root(&at) {
                break;
            }
            crate::pod::unmount(&at)?;
        }
        let is_dir = std::fs::symlink_metadata(&at).is_ok_and(|m| m.is_dir());
        let removed = if is_dir {
            std::fs::remove_dir(&at)
        } else {
            std::fs::remove_file(&at)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", at.display()), e)),
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", dir.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::userns::IdMapping;

    fn pod() -> UserNamespace {
        UserNamespace::from_root(200_000, 200_000, 65_536)
    }

    fn idmapped(dest: &str, source: &Path, u: &UserNamespace) -> Mount {
        let mut m = Mount::bind(dest, source.display().to_string(), &["rbind", "rw"]);
        m.uid_mappings = vec![u.uids.oci()];
        m.gid_mappings = vec![u.gids.oci()];
        m
    }

    #[test]
    fn only_binds_with_mappings_are_wanted() {
        let d = tempfile::tempdir().unwrap();
        let plain = Mount::bind("/a", d.path().display().to_string(), &["rbind"]);
        assert!(!wanted(std::slice::from_ref(&plain)));
        assert!(wanted(&[plain, idmapped("/b", d.path(), &pod())]));
    }

    #[test]
    fn mappings_other_than_the_pods_are_refused_and_nothing_stays() {
        let src = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let at = dir(state.path(), "c1");
        let other = UserNamespace {
            uids: IdMapping {
                container_id: 0,
                host_id: 300_000,
                size: 10,
            },
            ..pod()
        };
        let mut mounts = vec![idmapped("/data", src.path(), &other)];
        // Our own user namespace stands in for the pod's: the refusal comes first.
        let e = stage(&mut mounts, &at, std::process::id(), &pod())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/data") && e.contains("pod's user namespace"),
            "{e}"
        );
        assert!(!at.exists());
        assert!(!mounts[0].uid_mappings.is_empty());
    }

    #[test]
    fn release_removes_plain_entries_and_keeps_what_is_not_its_own() {
        let state = tempfile::tempdir().unwrap();
        let at = dir(state.path(), "c2");
        std::fs::create_dir_all(at.join("0")).unwrap();
        std::fs::write(at.join("1"), b"").unwrap();
        release(&at).unwrap();
        assert!(!at.exists());
        release(&at).unwrap();
        // A directory with content is never removed recursively.
        std::fs::create_dir_all(at.join("0")).unwrap();
        std::fs::write(at.join("0").join("data"), b"keep").unwrap();
        assert!(release(&at).is_err());
        assert_eq!(std::fs::read(at.join("0").join("data")).unwrap(), b"keep");
    }
}
