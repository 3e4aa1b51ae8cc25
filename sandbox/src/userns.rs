//! Pods in user namespaces of their own (KEP-127, CRI `NamespaceMode::POD` user namespaces):
//! the id mappings the kubelet hands over, and the idmapped mounts that make the image's files
//! (owned by the host's root) belong to the pod's root without a chown of any layer.
//!
//! The pause container makes the user namespace (its runtime writes the mappings); the pod's
//! containers join it. A container's root filesystem is an overlay whose lower layers are seen
//! through one idmapped, read-only mount of the snapshots directory per pod
//! (`<state>/idmap/<pod id prefix>`, made from the pause process's user namespace the first
//! time a container is created, detached when the pod is removed); its empty upper layer is
//! given to the pod's root. Bind mounts carry the mappings in the OCI spec and the runtime
//! idmaps them.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod binds;

/// `size` ids from `container_id` in the pod are `host_id`… on the host.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdMapping {
    /// First id in the pod.
    pub container_id: u32,
    /// First id on the host.
    pub host_id: u32,
    /// How many ids.
    pub size: u32,
}

impl IdMapping {
    /// The host ids it covers, as a half-open range.
    pub fn host_range(&self) -> std::ops::Range<u64> {
        self.host_id as u64..self.host_id as u64 + self.size as u64
    }

    /// The host id of pod id `id`, if mapped.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.container_id)?;
        (off < self.size).then(|| self.host_id + off)
    }

    /// The OCI spec's form.
    pub fn oci(&self) -> crate::spec::oci::IdMapping {
        crate::spec::oci::IdMapping {
            container_id: self.container_id,
            host_id: self.host_id,
            size: self.size,
        }
    }
}

/// A pod's own user namespace: one uid and one gid mapping, each mapping the pod's root.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserNamespace {
    /// uids.
    pub uids: IdMapping,
    /// gids.
    pub gids: IdMapping,
}

impl UserNamespace {
    /// Checks what the CRI asked for: one mapping each, the pod's root mapped, the host's
    /// root not, nothing past the last id. `what` names the field in the message.
    pub fn new(uids: &[IdMapping], gids: &[IdMapping], what: &str) -> Result<Self> {
        let one = |m: &[IdMapping], kind: &str| -> Result<IdMapping> {
            let [m] = m else {
                return Err(Error::Invalid(format!(
                    "{what}.{kind}: exactly one mapping is supported (mode POD), got {}",
                    m.len()
                )));
            };
            if m.container_id != 0 {
                return Err(Error::Invalid(format!(
                    "{what}.{kind}: the mapping must start at id 0 in the pod (the pod's root), not {}",
                    m.container_id
                )));
            }
            if m.size == 0 {
                return Err(Error::Invalid(format!(
                    "{what}.{kind}: the mapping's length is 0"
                )));
            }
            if m.host_id == 0 {
                return Err(Error::Invalid(format!(
                    "{what}.{kind}: host id 0 would make the pod's root the host's root"
                )));
            }
            if m.host_range().end > u32::MAX as u64 {
                return Err(Error::Invalid(format!(
                    "{what}.{kind}: host ids {}+{} run past the last id ({})",
                    m.host_id,
                    m.size,
                    u32::MAX - 1
                )));
            }
            Ok(*m)
        };
        Ok(UserNamespace {
            uids: one(uids, "uids")?,
            gids: one(gids, "gids")?,
        })
    }

    /// One mapping each, from id 0 in the pod to `uid` and `gid` on the host, `size` ids long
    /// (what the kubelet sends), unchecked.
    pub fn from_root(uid: u32, gid: u32, size: u32) -> Self {
        let m = |host_id| IdMapping {
            container_id: 0,
            host_id,
            size,
        };
        UserNamespace {
            uids: m(uid),
            gids: m(gid),
        }
    }

    /// The pod's root on the host: (uid, gid).
    pub fn host_root(&self) -> (u32, u32) {
        (self.uids.host_id, self.gids.host_id)
    }

    /// Whether the host ids of the two overlap (uids or gids).
    pub fn overlaps(&self, other: &UserNamespace) -> bool {
        let meet =
            |a: std::ops::Range<u64>, b: std::ops::Range<u64>| a.start < b.end && b.start < a.end;
        meet(self.uids.host_range(), other.uids.host_range())
            || meet(self.gids.host_range(), other.gids.host_range())
    }
}

/// What a container asked of the user namespace.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum UsernsMode {
    /// Nothing: the pod's.
    #[default]
    Unset,
    /// The host's.
    Node,
    /// The pod's own, with these mappings.
    Pod(UserNamespace),
}

impl UsernsMode {
    /// Checks a container's request against its pod's user namespace.
    pub fn check_against(&self, pod: Option<&UserNamespace>) -> Result<()> {
        match (self, pod) {
            (UsernsMode::Unset, _) | (UsernsMode::Node, None) => Ok(()),
            (UsernsMode::Pod(c), Some(p)) if c == p => Ok(()),
            (UsernsMode::Node, Some(_)) => Err(Error::Invalid(
                "linux.security_context.namespace_options.userns_options: the container asks for the node's user namespace in a pod that has its own".into(),
            )),
            (UsernsMode::Pod(_), None) => Err(Error::Invalid(
                "linux.security_context.namespace_options.userns_options: the container asks for a user namespace in a pod that runs in the node's".into(),
            )),
            (UsernsMode::Pod(_), Some(_)) => Err(Error::Invalid(
                "linux.security_context.namespace_options.userns_options: the container's id mappings differ from its pod's".into(),
            )),
        }
    }
}

/// The first directory on the way to `path` (itself included) that ids other than the host's
/// root cannot pass (no search permission for others): a pod's root in a user namespace
/// could not reach its root filesystem under it.
pub fn closed_ancestor(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut cur = PathBuf::new();
    for c in path.components() {
        cur.push(c);
        let meta = std::fs::metadata(&cur).ok()?;
        if meta.is_dir() && meta.permissions().mode() & 0o001 == 0 {
            return Some(cur);
        }
    }
    None
}

/// Where a pod's idmapped view of the snapshots directory is attached. A prefix of the pod id
/// keeps overlay's `lowerdir=` list short (the mount data must fit in one page).
pub fn layers_view(state_dir: &Path, pod_id: &str) -> PathBuf {
    state_dir
        .join("idmap")
        .join(&pod_id[..pod_id.len().min(16)])
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Attaches at `at` a read-only, nosuid, nodev view of `snapshots` in which ids are seen
/// through the user namespace of process `pid` (the pod's pause process). Submounts (lazily
/// pulled layers, FUSE) are not part of it. Blocking.
pub fn attach_layers_view(snapshots: &Path, at: &Path, pid: u32) -> Result<()> {
    let userns = open_userns(pid)?;
    let tree = idmapped_clone(
        snapshots,
        &userns,
        false,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )?;
    std::fs::create_dir_all(at).map_err(|e| Error::io(format!("create {}", at.display()), e))?;
    attach(&tree, at)
}

/// The user namespace of process `pid`.
pub(crate) fn open_userns(pid: u32) -> Result<std::fs::File> {
    std::fs::File::open(format!("/proc/{pid}/ns/user"))
        .map_err(|e| Error::io(format!("open the user namespace of pid {pid}"), e))
}

/// A detached clone of the mount at `source` (with its submounts if `recursive`), its ids
/// seen through `userns`, with the mount attributes `attrs` set too. Blocking.
pub(crate) fn idmapped_clone(
    source: &Path,
    userns: &std::fs::File,
    recursive: bool,
    attrs: u64,
) -> Result<rustix::fd::OwnedFd> {
    use rustix::mount::OpenTreeFlags;
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= OpenTreeFlags::AT_RECURSIVE;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, source, flags)
        .map_err(|e| Error::io(format!("clone the mount of {}", source.display()), e.into()))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP | attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let at_flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr(2) on a file descriptor we own, with an empty path, AT_EMPTY_PATH
    // and a `struct mount_attr` that lives across the call, its size passed with it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_fd().as_raw_fd(),
            c"".as_ptr(),
            at_flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(Error::io(
            format!(
                "idmap the mount of {} (its filesystem{} must support idmapped mounts)",
                source.display(),
                if recursive {
                    ", and every one mounted below it,"
                } else {
                    ""
                }
            ),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(tree)
}

/// Attaches the detached mount `tree` at `at` (an existing directory, or file for a file's
/// mount). Blocking.
pub(crate) fn attach(tree: &rustix::fd::OwnedFd, at: &Path) -> Result<()> {
    use rustix::mount::MoveMountFlags;
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        at,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| {
        Error::io(
            format!("attach the idmapped mount at {}", at.display()),
            e.into(),
        )
    })
}

/// Detaches the view at `at` (if mounted) and removes its directory. Never recurses into it.
pub fn release_layers_view(at: &Path) -> Result<()> {
    crate::pod::unmount(at)?;
    match std::fs::remove_dir(at) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", at.display()), e)),
    }
}

/// Where a container of a pod in a user namespace finds the layers of its images, idmapped.
#[derive(Debug, Clone, Copy)]
pub struct Layers<'a> {
    /// The directory of every snapshot (`<root>/snapshots`).
    pub snapshots: &'a Path,
    /// The pod's idmapped view of it ([`layers_view`]).
    pub view: &'a Path,
    /// The container's staging directory ([`binds::dir`]), for its lazily pulled layers.
    pub staging: &'a Path,
    /// The pod's pause process, whose user namespace maps the ids.
    pub pid: u32,
}

/// The rootfs mounts of a container in a user namespace: each `lowerdir` under `snapshots`
/// seen through the pod's view of them instead. A lower layer that is a mount of its own (a
/// lazily pulled layer, a FUSE filesystem) shows as an empty directory in the view: it is
/// given as an idmapped clone of its mount staged for the container (`layer-<n>` in
/// `staging`), which the overlay holds its own copy of once mounted, so the staged clone is
/// released with the container's staged binds after its creation. Blocking.
pub fn remap_lowers(
    mounts: Vec<berth_image::snapshot::MountSpec>,
    at: &Layers,
) -> Result<Vec<berth_image::snapshot::MountSpec>> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(at.snapshots)
        .map_err(|e| Error::io(format!("stat {}", at.snapshots.display()), e))?
        .dev();
    let remap = |l: &str| -> Result<String> {
        let p = Path::new(l);
        let rel = p.strip_prefix(at.snapshots).map_err(|_| {
            Error::Invalid(format!(
                "layer {l} is not under {}: it cannot be idmapped",
                at.snapshots.display()
            ))
        })?;
        let on = std::fs::metadata(p).map_err(|e| Error::io(format!("stat {l}"), e))?;
        if on.dev() == dev {
            return Ok(at.view.join(rel).display().to_string());
        }
        let name = format!("layer-{}", rel.display()).replace('/', "-");
        let staged = at.staging.join(name);
        stage_mounted_layer(p, &staged, at.pid)?;
        Ok(staged.display().to_string())
    };
    mounts
        .into_iter()
        .map(|mut m| {
            for o in &mut m.options {
                if let Some(list) = o.strip_prefix("lowerdir=") {
                    let lowers = list.split(':').map(remap).collect::<Result<Vec<_>>>()?;
                    *o = format!("lowerdir={}", lowers.join(":"));
                }
            }
            Ok(m)
        })
        .collect()
}

/// Attaches at `staged` an idmapped, read-only clone of the layer mounted at `layer`, unless
/// it is there already (the container's rootfs and an image volume may share a layer; the
/// staging directory is the container's own and goes after its create). Blocking.
fn stage_mounted_layer(layer: &Path, staged: &Path, pid: u32) -> Result<()> {
    if !is_mount_root(layer) {
        return Err(Error::Invalid(format!(
            "layer {} is on another filesystem than the other layers but not a mount of its own: it cannot be idmapped",
            layer.display()
        )));
    }
    if is_mount_root(staged) {
        return Ok(());
    }
    std::fs::create_dir_all(staged)
        .map_err(|e| Error::io(format!("create {}", staged.display()), e))?;
    let userns = open_userns(pid)?;
    let tree = idmapped_clone(
        layer,
        &userns,
        false,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
    )
    .map_err(|e| {
        Error::Invalid(format!(
            "the image has a lazily pulled layer, which a pod in a user namespace sees through an idmapped mount of it, and its FUSE mount cannot be idmapped ({e}): that needs Linux 6.12 and a layer mounted by a berth that allows it (this one does; pull the image again after removing it), else pull the image whole (lazy_pull off) or run the pod in the node's user namespace"
        ))
    })?;
    attach(&tree, staged)
}

/// The rootfs `mounts` of a container of a pod in a user namespace: the pod's view of the
/// layers attached if it is not yet, the upper layer given to the pod's root (`root` on the
/// host), the lower ones seen through the view (or staged: [`remap_lowers`]). Blocking.
pub fn rootfs(
    mounts: Vec<berth_image::snapshot::MountSpec>,
    at: &Layers,
    root: (u32, u32),
) -> Result<Vec<berth_image::snapshot::MountSpec>> {
    if !is_mount_root(at.view) {
        attach_layers_view(at.snapshots, at.view, at.pid)?;
    }
    own_upper(&mounts, root)?;
    remap_lowers(mounts, at)
}

/// Whether `path` is the root of a mount.
pub fn is_mount_root(path: &Path) -> bool {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    rustix::fs::statx(
        rustix::fs::CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .is_ok_and(|s| s.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

/// Gives the empty upper layer of an overlay rootfs to the pod's root, so that the pod's root
/// owns `/` as the image's root would.
pub fn own_upper(mounts: &[berth_image::snapshot::MountSpec], root: (u32, u32)) -> Result<()> {
    for m in mounts {
        for o in &m.options {
            if let Some(u) = o.strip_prefix("upperdir=") {
                std::os::unix::fs::lchown(u, Some(root.0), Some(root.1))
                    .map_err(|e| Error::io(format!("chown {u}"), e))?;
            }
        }
        // A one-layer-less image: its rootfs is the bind of a plain directory.
        if m.kind == "bind" {
            std::os::unix::fs::lchown(&m.source, Some(root.0), Some(root.1))
                .map_err(|e| Error::io(format!("chown {}", m.source), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(c: u32, h: u32, s: u32) -> IdMapping {
        IdMapping {
            container_id: c,
            host_id: h,
            size: s,
        }
    }

    #[test]
    fn what_the_kubelet_sends_is_accepted() {
        let u = UserNamespace::new(&[m(0, 65536, 65536)], &[m(0, 65536, 65536)], "x").unwrap();
        assert_eq!(u.host_root(), (65536, 65536));
        assert_eq!(u.uids.to_host(0), Some(65536));
        assert_eq!(u.uids.to_host(65535), Some(131071));
        assert_eq!(u.uids.to_host(65536), None);
    }

    #[test]
    fn bad_mappings_are_refused_naming_the_field() {
        let bad = [
            (vec![], "exactly one"),
            (vec![m(0, 1000, 10), m(10, 5000, 10)], "exactly one"),
            (vec![m(1, 1000, 10)], "start at id 0"),
            (vec![m(0, 1000, 0)], "length is 0"),
            (vec![m(0, 0, 65536)], "host's root"),
            (vec![m(0, u32::MAX - 10, 65536)], "past the last id"),
        ];
        for (uids, want) in bad {
            let e = UserNamespace::new(&uids, &[m(0, 1000, 10)], "userns_options")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("userns_options.uids"), "{e}");
        }
        let e = UserNamespace::new(&[m(0, 1000, 10)], &[], "userns_options")
            .unwrap_err()
            .to_string();
        assert!(e.contains("userns_options.gids"), "{e}");
    }

    #[test]
    fn overlap_is_per_host_id() {
        let a = UserNamespace::new(&[m(0, 65536, 65536)], &[m(0, 65536, 65536)], "x").unwrap();
        let b = UserNamespace::new(&[m(0, 131072, 65536)], &[m(0, 131072, 65536)], "x").unwrap();
        let c = UserNamespace::new(&[m(0, 131071, 10)], &[m(0, 900000, 10)], "x").unwrap();
        assert!(!a.overlaps(&b) && !b.overlaps(&a));
        assert!(a.overlaps(&c) && c.overlaps(&a));
        assert!(a.overlaps(&a));
    }

    #[test]
    fn containers_must_ask_for_their_pods_namespace() {
        let p = UserNamespace::new(&[m(0, 65536, 65536)], &[m(0, 65536, 65536)], "x").unwrap();
        let other = UserNamespace::new(&[m(0, 1000, 10)], &[m(0, 1000, 10)], "x").unwrap();
        assert!(UsernsMode::Unset.check_against(Some(&p)).is_ok());
        assert!(UsernsMode::Unset.check_against(None).is_ok());
        assert!(UsernsMode::Node.check_against(None).is_ok());
        assert!(UsernsMode::Pod(p).check_against(Some(&p)).is_ok());
        assert!(UsernsMode::Node.check_against(Some(&p)).is_err());
        assert!(UsernsMode::Pod(p).check_against(None).is_err());
        assert!(UsernsMode::Pod(other).check_against(Some(&p)).is_err());
    }

    #[test]
    fn lowers_are_seen_through_the_view() {
        let d = tempfile::tempdir().unwrap();
        let snaps = d.path().join("snapshots");
        for n in ["1/fs", "2/fs", "3/fs"] {
            std::fs::create_dir_all(snaps.join(n)).unwrap();
        }
        let mounts = vec![berth_image::snapshot::MountSpec {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("workdir={}", snaps.join("3/work").display()),
                format!("upperdir={}", snaps.join("3/fs").display()),
                format!(
                    "lowerdir={}:{}",
                    snaps.join("2/fs").display(),
                    snaps.join("1/fs").display()
                ),
            ],
        }];
        let at = |view: &'static str| Layers {
            snapshots: &snaps,
            view: Path::new(view),
            staging: Path::new("/run/b/idmap-binds/c"),
            pid: 1,
        };
        let out = remap_lowers(mounts.clone(), &at("/run/b/idmap/abc")).unwrap();
        assert_eq!(out[0].options[0], mounts[0].options[0]);
        assert_eq!(out[0].options[1], mounts[0].options[1]);
        assert_eq!(
            out[0].options[2],
            "lowerdir=/run/b/idmap/abc/2/fs:/run/b/idmap/abc/1/fs"
        );
        // A layer elsewhere is refused rather than shown unmapped.
        let mut elsewhere = mounts.clone();
        elsewhere[0].options[2] = "lowerdir=/etc".into();
        assert!(remap_lowers(elsewhere, &at("/v")).is_err());
    }

    #[test]
    fn a_closed_directory_on_the_way_is_found() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        for p in [d.path(), &d.path().join("a"), &d.path().join("a/b"), &deep] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711)).unwrap();
        }
        assert_eq!(closed_ancestor(&deep), None);
        std::fs::set_permissions(d.path().join("a"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        assert_eq!(closed_ancestor(&deep), Some(d.path().join("a")));
    }
}
