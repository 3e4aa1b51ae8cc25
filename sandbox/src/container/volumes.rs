//! Image volumes (KEP-4639): an image's files mounted read-only into a container. Each is a
//! read-only view snapshot of the image's layers (which keeps them from garbage collection
//! while the container exists), mounted by berth under the container's directory and bound
//! into the container from there, like any other CRI mount.

use std::path::{Path, PathBuf};

use super::ContainerConfig;
use crate::error::{Error, Result};
use crate::runtime::Runtime;

/// Where a container's image volumes are mounted, under its directory.
pub(crate) const DIR: &str = "image-volumes";

/// The snapshot key of image volume `i` of container `ctr`.
fn view_key(ctr: &str, i: usize) -> String {
    format!("{ctr}.iv{i}")
}

/// The pod or container a snapshot key belongs to (an image volume's key names its
/// container).
pub(crate) fn owner_of(key: &str) -> &str {
    key.split_once('.').map_or(key, |(owner, _)| owner)
}

impl Runtime {
    /// Mounts the image volumes of `config` under `dir` (the container's directory) and fills
    /// in each one's host path and image id. On error, what was mounted stays for
    /// [`Runtime::remove_image_volumes`]. In a pod's user namespace, `userns` says where the
    /// layers are seen idmapped.
    pub(crate) fn mount_image_volumes(
        &self,
        id: &str,
        dir: &Path,
        config: &mut ContainerConfig,
        userns: Option<&crate::userns::Layers>,
    ) -> Result<()> {
        for (i, m) in config.mounts.iter_mut().enumerate() {
            let Some(im) = m.image.as_mut() else {
                continue;
            };
            let image = self.images().resolve(&im.image).map_err(|e| {
                Error::NotFound(format!(
                    "image volume at {}: image {:?} is not present on this node (pull it first): {e}",
                    m.container_path, im.image
                ))
            })?;
            let top = image.top_chain().ok_or_else(|| {
                Error::Invalid(format!(
                    "image volume at {}: image {:?} has no layers",
                    m.container_path, im.image
                ))
            })?;
            let view = self
                .images()
                .snapshots()
                .view(&view_key(id, i), top)
                .map_err(Error::Image)?;
            // In a pod's user namespace the view is made of its idmapped layers: overlayfs
            // cannot be idmapped itself, and the files are then seen as the pod sees them.
            let view = match userns {
                Some(at) => {
                    m.idmap = None;
                    crate::userns::remap_lowers(vec![view], at)?
                        .pop()
                        .ok_or_else(|| Error::Invalid("an image volume without a mount".into()))?
                }
                None => view,
            };
            let target = dir.join(DIR).join(i.to_string());
            std::fs::create_dir_all(&target)
                .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
            mount_view(&view, &target)?;
            let source = if im.sub_path.is_empty() {
                target
            } else {
                resolve_in(&target, &im.sub_path).map_err(|e| match e {
                    rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => {
                        Error::NotFound(format!(
                            "image volume at {}: sub path {:?} does not exist in image {:?}",
                            m.container_path, im.sub_path, im.image
                        ))
                    }
                    e => Error::io(
                        format!(
                            "image volume at {}: sub path {:?}",
                            m.container_path, im.sub_path
                        ),
                        e.into(),
                    ),
                })?
            };
            m.host_path = source.display().to_string();
            im.image_id = image.id.to_string();
        }
        Ok(())
    }

    /// Unmounts the image volumes of container `id` (under `dir`, its directory) and removes
    /// their views; returns the chains they stood on. Idempotent.
    pub(crate) fn remove_image_volumes(
        &self,
        id: &str,
        dir: &Path,
    ) -> Result<Vec<berth_image::Digest>> {
        unmount_image_volumes(dir);
        let views = self.images().snapshots().active().map_err(Error::Image)?;
        let mut stood_on = Vec::new();
        for (key, view) in views {
            if key != id && owner_of(&key) == id {
                self.images()
                    .snapshots()
                    .remove_active(&key)
                    .map_err(Error::Image)?;
                stood_on.extend(view.parent);
            }
        }
        Ok(stood_on)
    }
}

/// Unmounts whatever is mounted under `<dir>/image-volumes`.
pub(crate) fn unmount_image_volumes(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join(DIR)) else {
        return;
    };
    for e in entries.flatten() {
        if let Err(err) = crate::pod::unmount(&e.path()) {
            tracing::warn!(path = %e.path().display(), err = %err, "cannot unmount an image volume");
        }
    }
}

/// Mounts the read-only overlay `view` at `target`: never writable, no set-uid, no device
/// nodes; its binaries run.
fn mount_view(view: &berth_image::snapshot::MountSpec, target: &Path) -> Result<()> {
    use rustix::mount::{MountFlags, mount};
    let data = view
        .options
        .iter()
        .filter(|o| o.as_str() != "ro")
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    let data = std::ffi::CString::new(data)
        .map_err(|e| Error::Invalid(format!("image volume mount options: {e}")))?;
    mount(
        view.source.as_str(),
        target,
        view.kind.as_str(),
        MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
        Some(data.as_c_str()),
    )
    .map_err(|e| {
        Error::io(
            format!("mount an image volume at {}", target.display()),
            e.into(),
        )
    })
}

/// The real path of `sub` inside `root`, its symbolic links followed as inside the image
/// (an absolute link or `..` never leaves `root`).
fn resolve_in(root: &Path, sub: &str) -> std::result::Result<PathBuf, rustix::io::Errno> {
    use rustix::fs::{Mode, OFlags, ResolveFlags, open, openat2};
    let dir = open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let fd = openat2(
        &dir,
        sub,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )?;
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|e| rustix::io::Errno::from_io_error(&e).unwrap_or(rustix::io::Errno::IO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_resolve_inside_the_root_whatever_their_links_say() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc/conf")).unwrap();
        std::fs::create_dir_all(d.path().join("outside")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("etc/up")).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        assert_eq!(
            resolve_in(&root, "etc/conf").unwrap(),
            root.join("etc/conf")
        );
        // An absolute link is taken inside the image, not on the host.
        assert_eq!(
            resolve_in(&root, "abs/conf").unwrap(),
            root.join("etc/conf")
        );
        assert_eq!(resolve_in(&root, "etc/up").unwrap(), root);
        // `..` stops at the root: `../outside` is `<root>/outside`, which is not there.
        assert_eq!(resolve_in(&root, "../etc").unwrap(), root.join("etc"));
        assert_eq!(
            resolve_in(&root, "../outside"),
            Err(rustix::io::Errno::NOENT)
        );
        assert_eq!(resolve_in(&root, "nope"), Err(rustix::io::Errno::NOENT));
    }

    #[test]
    fn an_image_volumes_snapshot_key_names_its_container() {
        assert_eq!(owner_of(&view_key("abc", 2)), "abc");
        assert_eq!(owner_of("abc"), "abc");
    }
}
