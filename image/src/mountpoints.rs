//! The mount-point layer: what runc would otherwise create in every container's fresh upper
//! layer, made once per image.
//!
//! Every CRI container mounts `/proc`, `/sys`, `/dev`, `/etc/hosts`, `/etc/hostname` and
//! `/etc/resolv.conf`. When the image lacks one of them, runc creates the mount point inside
//! the root filesystem before mounting over it, and on an overlay that means new entries in
//! the container's upper layer, a copy-up of `/etc` included, on every start. Docker keeps an
//! "init" layer per container for the same files; berth keeps one per image chain, read-only,
//! between the chain and each container's upper layer, holding only the mount points the
//! image lacks (none at all for an image that has them). The merged view is the one runc would
//! have produced: empty directories and files under the same names, hidden by the mounts.
//!
//! The image is read as the overlay will show it: a whiteout or a non-directory hides
//! everything below it, an opaque directory hides the layers under it. Nothing is created
//! beneath a symlink or any other non-directory (runc resolves those inside the root
//! filesystem itself), and a directory berth must add to hold a file (`/etc`) carries the
//! mode, owner and times of the image's own, as an overlay copy-up would.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Directories every container mounts over.
const DIRS: &[&str] = &["proc", "sys", "dev"];
/// Files under `/etc` every container bind-mounts over.
const ETC_FILES: &[&str] = &["hosts", "hostname", "resolv.conf"];

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a path is in the merged view of a chain of layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Nothing there (never created, or whited out).
    Missing,
    /// A directory, with the metadata of the topmost layer holding it.
    Dir(Meta),
    /// A file, symlink, device…: nothing may be created beneath it.
    Other,
}

/// Looks `rel` (relative, `/`-separated, no `.` or `..`) up in `lowers`, topmost first, with
/// overlay semantics.
pub fn lookup(lowers: &[PathBuf], rel: &str) -> Result<Found> {
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    if comps.is_empty() || comps.iter().any(|c| *c == "." || *c == "..") {
        return Err(Error::Snapshot(format!("invalid mount point path {rel:?}")));
    }
    // Layers that can still contribute entries under the current prefix: [0, end).
    let mut end = lowers.len();
    let mut found = Found::Missing;
    for i in 0..comps.len() {
        let prefix = comps[..=i].join("/");
        found = Found::Missing;
        let mut next_end = end;
        for (j, layer) in lowers[..end].iter().enumerate() {
            let path = layer.join(&prefix);
            let m = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    continue;
                }
                Err(e) => return Err(Error::io(format!("inspect {}", path.display()), e)),
            };
            let whiteout = m.file_type().is_char_device() && m.rdev() == 0;
            if whiteout || !m.is_dir() {
                if found == Found::Missing && !whiteout {
                    found = Found::Other;
                }
                // It hides the name in every layer below (and under a directory from a
                // higher layer, ends the merge there).
                next_end = j;
                break;
            }
            if found == Found::Missing {
                found = Found::Dir(Meta::of(&m));
            }
            if opaque(&path) {
                next_end = j + 1;
                break;
            }
        }
        end = next_end;
        if !matches!(found, Found::Dir(_)) && i + 1 < comps.len() {
            // A missing or non-directory prefix: the path beneath it cannot be a directory
            // entry of the image.
            return Ok(match found {
                Found::Missing => Found::Missing,
                _ => Found::Other,
            });
        }
    }
    Ok(found)
}

fn opaque(dir: &Path) -> bool {
    let mut buf = [0u8; 8];
    matches!(rustix::fs::lgetxattr(dir, OPAQUE_XATTR, &mut buf), Ok(n) if &buf[..n] == b"y")
}

/// One entry of the mount-point layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An empty directory, `0755 root:root`.
    Dir(String),
    /// A directory that must exist to hold files: the image's own mode, owner and times
    /// (`None`: the image has none, so `0755 root:root`).
    Parent(String, Option<Meta>),
    /// An empty file, `0644 root:root`.
    File(String),
}

/// The mode, owner and times of an image directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: (i64, i64),
    mtime: (i64, i64),
}

impl Meta {
    fn of(m: &std::fs::Metadata) -> Self {
        Meta {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            atime: (m.atime(), m.atime_nsec()),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

/// The entries the mount-point layer over `lowers` needs (empty: the image has them all).
pub fn plan(lowers: &[PathBuf]) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for d in DIRS {
        if lookup(lowers, d)? == Found::Missing {
            out.push(Entry::Dir((*d).to_string()));
        }
    }
    let etc = lookup(lowers, "etc")?;
    let etc_meta = match &etc {
        Found::Other => return Ok(out),
        Found::Dir(m) => Some(m.clone()),
        Found::Missing => None,
    };
    let mut files = Vec::new();
    for f in ETC_FILES {
        let rel = format!("etc/{f}");
        if etc == Found::Missing || lookup(lowers, &rel)? == Found::Missing {
            files.push(Entry::File(rel));
        }
    }
    if !files.is_empty() {
        out.push(Entry::Parent("etc".into(), etc_meta));
        out.extend(files);
    }
    Ok(out)
}

/// Creates `entries` under `fs` (an empty directory).
pub fn build(fs: &Path, entries: &[Entry]) -> Result<()> {
    let err = |p: &Path, what: &str, e: std::io::Error| {
        Error::io(
            format!("{what} {} in the mount-point layer", p.display()),
            e,
        )
    };
    for e in entries {
        match e {
            Entry::Dir(rel) | Entry::Parent(rel, None) => {
                let p = fs.join(rel);
                std::fs::create_dir(&p).map_err(|e| err(&p, "create", e))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| err(&p, "chmod", e))?;
            }
            Entry::Parent(rel, Some(m)) => {
                let p = fs.join(rel);
                std::fs::create_dir(&p).map_err(|e| err(&p, "create", e))?;
                std::os::unix::fs::lchown(&p, Some(m.uid), Some(m.gid))
                    .map_err(|e| err(&p, "chown", e))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m.mode))
                    .map_err(|e| err(&p, "chmod", e))?;
            }
            Entry::File(rel) => {
                let p = fs.join(rel);
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(|e| err(&p, "create", e))?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))
                    .map_err(|e| err(&p, "chmod", e))?;
            }
        }
    }
    // Times last: creating the files changed the directories'.
    for e in entries {
        if let Entry::Parent(rel, Some(m)) = e {
            let p = fs.join(rel);
            let ts = |(s, ns): (i64, i64)| rustix::fs::Timespec {
                tv_sec: s,
                tv_nsec: ns as _,
            };
            rustix::fs::utimensat(
                rustix::fs::CWD,
                &p,
                &rustix::fs::Timestamps {
                    last_access: ts(m.atime),
                    last_modification: ts(m.mtime),
                },
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| err(&p, "set the times of", e.into()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Layers `n` (topmost first) under a temp directory.
    fn layers(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let ls: Vec<PathBuf> = (0..n).map(|i| dir.path().join(i.to_string())).collect();
        for l in &ls {
            std::fs::create_dir(l).unwrap();
        }
        (dir, ls)
    }

    fn whiteout(p: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
    }

    fn kind(f: Found) -> &'static str {
        match f {
            Found::Missing => "missing",
            Found::Dir(_) => "dir",
            Found::Other => "other",
        }
    }

    #[test]
    fn lookup_follows_overlay_rules() {
        let (_d, ls) = layers(3);
        // Bottom layer: etc/ with hosts, hostname, resolv.conf; proc/ and sys/.
        std::fs::create_dir_all(ls[2].join("etc")).unwrap();
        for f in ["hosts", "hostname", "resolv.conf"] {
            std::fs::write(ls[2].join("etc").join(f), "x").unwrap();
        }
        std::fs::create_dir(ls[2].join("proc")).unwrap();
        std::fs::create_dir(ls[2].join("sys")).unwrap();
        // Middle: hostname whited out, sys replaced by a file.
        std::fs::create_dir(ls[1].join("etc")).unwrap();
        whiteout(&ls[1].join("etc/hostname"));
        std::fs::write(ls[1].join("sys"), "").unwrap();
        // Top: proc whited out, then nothing else.
        whiteout(&ls[0].join("proc"));

        let k = |p: &str| kind(lookup(&ls, p).unwrap());
        assert_eq!(k("etc"), "dir");
        assert_eq!(k("etc/hosts"), "other");
        assert_eq!(k("etc/hostname"), "missing", "whited out above");
        assert_eq!(k("proc"), "missing", "whited out at the top");
        assert_eq!(k("sys"), "other", "a file above hides the directory");
        assert_eq!(k("sys/fs"), "other", "nothing beneath a file");
        assert_eq!(k("dev"), "missing");
        assert_eq!(k("dev/pts"), "missing");
        assert!(lookup(&ls, "etc/../x").is_err());

        // An opaque etc in the middle hides the bottom layer's files.
        rustix::fs::setxattr(
            ls[1].join("etc"),
            OPAQUE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        assert_eq!(k("etc/hosts"), "missing");
        assert_eq!(k("etc"), "dir");
    }

    #[test]
    fn a_bare_image_gets_every_mount_point_and_a_full_one_none() {
        let (_d, ls) = layers(1);
        let entries = plan(&ls).unwrap();
        assert_eq!(
            entries,
            vec![
                Entry::Dir("proc".into()),
                Entry::Dir("sys".into()),
                Entry::Dir("dev".into()),
                Entry::Parent("etc".into(), None),
                Entry::File("etc/hosts".into()),
                Entry::File("etc/hostname".into()),
                Entry::File("etc/resolv.conf".into()),
            ]
        );
        let out = tempfile::tempdir().unwrap();
        build(out.path(), &entries).unwrap();
        let m = std::fs::metadata(out.path().join("etc/hostname")).unwrap();
        assert!(m.is_file() && m.len() == 0);
        assert_eq!(m.mode() & 0o7777, 0o644);
        assert_eq!(
            std::fs::metadata(out.path().join("proc")).unwrap().mode() & 0o7777,
            0o755
        );

        // The image's own mount points, as build made them, leave nothing to add.
        assert_eq!(plan(&[out.path().to_path_buf()]).unwrap(), vec![]);
    }

    #[test]
    fn the_image_etc_keeps_its_metadata_and_symlinks_are_left_alone() {
        let (_d, ls) = layers(1);
        let etc = ls[0].join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        std::os::unix::fs::symlink("../run/resolv.conf", etc.join("resolv.conf")).unwrap();
        std::os::unix::fs::lchown(&etc, Some(7), Some(8)).unwrap();
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o750)).unwrap();
        rustix::fs::utimensat(
            rustix::fs::CWD,
            &etc,
            &rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: 1_000_000,
                    tv_nsec: 0,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: 1_700_000_000,
                    tv_nsec: 5,
                },
            },
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
        for d in DIRS {
            std::fs::create_dir(ls[0].join(d)).unwrap();
        }
        let entries = plan(&ls).unwrap();
        // hosts exists, resolv.conf is a symlink (runc follows it inside the rootfs):
        // only hostname is missing.
        assert!(
            matches!(&entries[..], [Entry::Parent(p, Some(_)), Entry::File(f)]
            if p == "etc" && f == "etc/hostname"),
            "{entries:?}"
        );
        let out = tempfile::tempdir().unwrap();
        build(out.path(), &entries).unwrap();
        let m = std::fs::symlink_metadata(out.path().join("etc")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o750, 7, 8));
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 5));

        // An etc that is a symlink gets nothing beneath it.
        let (_d2, ls2) = layers(1);
        std::os::unix::fs::symlink("usr/etc", ls2[0].join("etc")).unwrap();
        assert_eq!(plan(&ls2).unwrap().len(), 3, "only proc, sys and dev");
    }
}
