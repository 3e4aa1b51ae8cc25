//! Applies a layer tarball to an empty directory in overlayfs form.
//!
//! Layers are hostile input. Every entry name is split into plain components (`..` is
//! rejected, leading `/` and `.` dropped), parent directories are opened with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)` from the snapshot's
//! root, and the last component is created with `*at` calls that never follow a symlink. So no
//! entry, symlink or hard link can make berth write outside the snapshot: an attempt is an
//! error that names the entry, and the caller discards the half-made snapshot.
//!
//! Whiteouts become what overlayfs expects: `.wh.<name>` a 0/0 character device, and
//! `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory. `trusted.overlay.*`
//! xattrs in the layer itself are dropped, so a layer cannot steer the overlay mount.
//!
//! Because each layer is applied to its own directory (never on top of its parents), layers of
//! one image can be applied in parallel.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};
use rustix::io::Errno;

use crate::error::{Error, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// What a layer added up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Bytes of regular-file data.
    pub bytes: u64,
    /// Entries created.
    pub inodes: u64,
}

/// Applies the (uncompressed) tar stream `reader` to the empty directory `dest`.
/// `layer` names the layer in errors.
pub fn apply_layer<R: Read>(reader: R, dest: &Path, layer: &str) -> Result<LayerStats> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("open snapshot {}", dest.display()), e.into()))?;
    let mut applier = Applier {
        root,
        layer,
        stats: LayerStats::default(),
        dir_times: Vec::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| applier.tar_err(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| applier.tar_err(e))?;
        applier.apply(&mut entry)?;
    }
    // Directory times last: creating their children changed them.
    for (path, ts) in std::mem::take(&mut applier.dir_times).into_iter().rev() {
        let r = if path.is_empty() {
            rustix::fs::futimens(&applier.root, &ts)
        } else {
            rustix::fs::utimensat(&applier.root, path.as_str(), &ts, AtFlags::SYMLINK_NOFOLLOW)
        };
        r.map_err(|e| applier.os_err(&path, "set times", e))?;
    }
    Ok(applier.stats)
}

struct Applier<'a> {
    root: OwnedFd,
    layer: &'a str,
    stats: LayerStats,
    dir_times: Vec<(String, Timestamps)>,
}

/// An entry's path as plain components.
fn components(raw: &[u8]) -> std::result::Result<Vec<&str>, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "name is not UTF-8".to_string())?;
    let mut out = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("path contains '..'".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

impl Applier<'_> {
    fn unsafe_entry(&self, path: &str, reason: impl Into<String>) -> Error {
        Error::UnsafeLayer {
            layer: self.layer.to_string(),
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    fn tar_err(&self, e: io::Error) -> Error {
        Error::bad(
            format!("layer {}", self.layer),
            format!("malformed tar stream: {e}"),
        )
    }

    fn os_err(&self, path: &str, what: &str, e: Errno) -> Error {
        if e == Errno::XDEV || e == Errno::LOOP {
            return self.unsafe_entry(path, format!("{what}: resolves outside the snapshot"));
        }
        Error::io(format!("layer {}: {what} {path:?}", self.layer), e.into())
    }

    /// Opens (creating as 0755 where missing) the directory `comps` beneath the root.
    fn open_dir(&self, comps: &[&str], shown: &str) -> Result<OwnedFd> {
        if comps.is_empty() {
            return rustix::io::dup(&self.root).map_err(|e| self.os_err(shown, "open root", e));
        }
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match rustix::fs::openat2(&self.root, comps.join("/"), flags, Mode::empty(), how) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(Errno::NOTDIR) => {
                return Err(self.unsafe_entry(shown, "a parent is not a directory"));
            }
            Err(e) => return Err(self.os_err(shown, "open parent", e)),
        }
        // Create the missing tail one level at a time, re-resolving from the root each time.
        for i in 1..=comps.len() {
            let prefix = comps[..i].join("/");
            match rustix::fs::openat2(&self.root, prefix.as_str(), flags, Mode::empty(), how) {
                Ok(_) => continue,
                Err(Errno::NOENT) => {
                    let parent = self.open_dir(&comps[..i - 1], shown)?;
                    match rustix::fs::mkdirat(&parent, comps[i - 1], Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(self.os_err(shown, "create parent", e)),
                    }
                }
                Err(Errno::NOTDIR) => {
                    return Err(self.unsafe_entry(shown, "a parent is not a directory"));
                }
                Err(e) => return Err(self.os_err(shown, "open parent", e)),
            }
        }
        rustix::fs::openat2(&self.root, comps.join("/"), flags, Mode::empty(), how)
            .map_err(|e| self.os_err(shown, "open parent", e))
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let comps = components(&raw_path).map_err(|r| self.unsafe_entry(&shown, r))?;
        let kind = entry.header().entry_type();
        let header = entry.header();
        let mode = header.mode().map_err(|e| self.tar_err(e))? & 0o7777;
        let uid = header.uid().map_err(|e| self.tar_err(e))?;
        let gid = header.gid().map_err(|e| self.tar_err(e))?;
        let mtime = mtime_of(entry);
        let (uid, gid) = (
            u32::try_from(uid).map_err(|_| self.unsafe_entry(&shown, "uid out of range"))?,
            u32::try_from(gid).map_err(|_| self.unsafe_entry(&shown, "gid out of range"))?,
        );

        let Some((name, parents)) = comps.split_last() else {
            // The layer's root itself ("./"): take its metadata.
            if kind.is_dir() {
                self.set_owner_mode(&self.root, uid, gid, mode, &shown)?;
                self.dir_times.push((String::new(), mtime));
            }
            return Ok(());
        };
        let parent = self.open_dir(parents, &shown)?;
        let rel = comps.join("/");

        if *name == OPAQUE_WHITEOUT {
            return rustix::fs::fsetxattr(
                &parent,
                OPAQUE_XATTR,
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| self.os_err(&shown, "mark opaque", e));
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(self.unsafe_entry(&shown, "whiteout names nothing"));
            }
            self.remove_existing(&parent, hidden, &shown)?;
            rustix::fs::mknodat(&parent, hidden, FileType::CharacterDevice, Mode::empty(), 0)
                .map_err(|e| self.os_err(&shown, "create whiteout", e))?;
            self.stats.inodes += 1;
            return Ok(());
        }

        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match rustix::fs::statat(&parent, *name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
                    Ok(_) => {
                        self.remove_existing(&parent, name, &shown)?;
                        self.mkdir(&parent, name, &shown)?;
                    }
                    Err(Errno::NOENT) => self.mkdir(&parent, name, &shown)?,
                    Err(e) => return Err(self.os_err(&shown, "stat", e)),
                }
                let fd = rustix::fs::openat(
                    &parent,
                    *name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.os_err(&shown, "open directory", e))?;
                self.set_owner_mode(&fd, uid, gid, mode, &shown)?;
                self.set_xattrs(&fd, entry, &shown)?;
                self.dir_times.push((rel, mtime));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.remove_existing(&parent, name, &shown)?;
                let fd = rustix::fs::openat(
                    &parent,
                    *name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.os_err(&shown, "create file", e))?;
                let mut file = std::fs::File::from(fd);
                let n = io::copy(entry, &mut file)
                    .map_err(|e| Error::io(format!("layer {}: write {shown:?}", self.layer), e))?;
                self.stats.bytes += n;
                self.set_owner_mode(&file, uid, gid, mode, &shown)?;
                self.set_xattrs(&file, entry, &shown)?;
                rustix::fs::futimens(&file, &mtime)
                    .map_err(|e| self.os_err(&shown, "set times", e))?;
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&shown, "symlink without a target"))?
                    .into_owned();
                self.remove_existing(&parent, name, &shown)?;
                rustix::fs::symlinkat(target.as_slice(), &parent, *name)
                    .map_err(|e| self.os_err(&shown, "create symlink", e))?;
                rustix::fs::chownat(
                    &parent,
                    *name,
                    Some(uid_of(uid)),
                    Some(gid_of(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| self.os_err(&shown, "chown", e))?;
                rustix::fs::utimensat(&parent, *name, &mtime, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.os_err(&shown, "set times", e))?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.unsafe_entry(&shown, "hard link without a target"))?
                    .into_owned();
                let tcomps = components(&target)
                    .map_err(|r| self.unsafe_entry(&shown, format!("hard link target: {r}")))?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(self.unsafe_entry(&shown, "hard link to the layer root"));
                };
                let tparent = self.open_dir(tparents, &shown)?;
                match rustix::fs::statat(&tparent, *tname, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(self.unsafe_entry(&shown, "hard link to a directory"));
                    }
                    Ok(_) => {}
                    Err(Errno::NOENT) => {
                        return Err(
                            self.unsafe_entry(&shown, "hard link target is not in this layer")
                        );
                    }
                    Err(e) => return Err(self.os_err(&shown, "stat link target", e)),
                }
                if tcomps == comps {
                    return Ok(());
                }
                self.remove_existing(&parent, name, &shown)?;
                rustix::fs::linkat(&tparent, *tname, &parent, *name, AtFlags::empty())
                    .map_err(|e| self.os_err(&shown, "create hard link", e))?;
            }
            T::Char | T::Block | T::Fifo => {
                let ft = match kind {
                    T::Char => FileType::CharacterDevice,
                    T::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let dev = match (entry.header().device_major(), entry.header().device_minor()) {
                    (Ok(Some(ma)), Ok(Some(mi))) => rustix::fs::makedev(ma, mi),
                    _ => 0,
                };
                self.remove_existing(&parent, name, &shown)?;
                rustix::fs::mknodat(&parent, *name, ft, Mode::from_raw_mode(mode), dev)
                    .map_err(|e| self.os_err(&shown, "create device node", e))?;
                rustix::fs::chownat(
                    &parent,
                    *name,
                    Some(uid_of(uid)),
                    Some(gid_of(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| self.os_err(&shown, "chown", e))?;
                rustix::fs::chmodat(&parent, *name, Mode::from_raw_mode(mode), AtFlags::empty())
                    .map_err(|e| self.os_err(&shown, "chmod", e))?;
                rustix::fs::utimensat(&parent, *name, &mtime, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.os_err(&shown, "set times", e))?;
            }
            other => {
                tracing::debug!(layer = self.layer, path = %shown, kind = ?other, "skipping tar entry of unsupported type");
                return Ok(());
            }
        }
        self.stats.inodes += 1;
        Ok(())
    }

    fn mkdir(&self, parent: &OwnedFd, name: &str, shown: &str) -> Result<()> {
        rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))
            .map_err(|e| self.os_err(shown, "create directory", e))
    }

    /// chown first: it clears set-id bits, which chmod then restores.
    fn set_owner_mode(
        &self,
        fd: &impl AsFd,
        uid: u32,
        gid: u32,
        mode: u32,
        shown: &str,
    ) -> Result<()> {
        rustix::fs::fchown(fd, Some(uid_of(uid)), Some(gid_of(gid)))
            .map_err(|e| self.os_err(shown, "chown", e))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))
            .map_err(|e| self.os_err(shown, "chmod", e))
    }

    fn set_xattrs<R: Read>(
        &self,
        fd: &impl AsFd,
        entry: &mut tar::Entry<'_, R>,
        shown: &str,
    ) -> Result<()> {
        let Ok(Some(exts)) = entry.pax_extensions() else {
            return Ok(());
        };
        for ext in exts {
            let Ok(ext) = ext else { continue };
            let Ok(key) = ext.key() else { continue };
            let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
                continue;
            };
            if name.starts_with("trusted.overlay.") {
                tracing::debug!(
                    layer = self.layer,
                    path = shown,
                    xattr = name,
                    "dropping overlay xattr from layer"
                );
                continue;
            }
            match rustix::fs::fsetxattr(
                fd,
                name,
                ext.value_bytes(),
                rustix::fs::XattrFlags::empty(),
            ) {
                Ok(()) => {}
                Err(e) if e == Errno::NOTSUP || e == Errno::PERM => {
                    tracing::debug!(layer = self.layer, path = shown, xattr = name, err = %e, "xattr not supported here; skipped");
                }
                Err(e) => return Err(self.os_err(shown, "set xattr", e)),
            }
        }
        Ok(())
    }

    /// Removes whatever is at `parent/name` (a directory with its contents), never following
    /// a symlink.
    fn remove_existing(&self, parent: &OwnedFd, name: &str, shown: &str) -> Result<()> {
        match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.os_err(shown, "stat", e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                remove_tree_at(parent, name).map_err(|e| self.os_err(shown, "remove directory", e))
            }
            Ok(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty())
                .map_err(|e| self.os_err(shown, "remove", e)),
        }
    }
}

fn remove_tree_at(parent: &OwnedFd, name: &str) -> rustix::io::Result<()> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut dir = rustix::fs::Dir::read_from(&fd)?;
    let mut children = Vec::new();
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let n = ent.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." {
            children.push((n, ent.file_type()));
        }
    }
    for (n, ft) in children {
        if ft == FileType::Directory {
            remove_tree_at(&fd, &n)?;
        } else {
            rustix::fs::unlinkat(&fd, n.as_str(), AtFlags::empty())?;
        }
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)
}

fn uid_of(u: u32) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw_unchecked(u)
}

fn gid_of(g: u32) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw_unchecked(g)
}

fn mtime_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Timestamps {
    let secs = entry.header().mtime().unwrap_or(0) as i64;
    // A PAX mtime carries sub-second precision.
    let pax = entry.pax_extensions().ok().flatten().and_then(|exts| {
        exts.filter_map(|e| e.ok())
            .find(|e| e.key() == Ok("mtime"))
            .and_then(|e| e.value().ok().map(str::to_string))
    });
    let (s, ns) = match pax.as_deref().map(parse_pax_time) {
        Some(Some(t)) => t,
        _ => (secs, 0),
    };
    let t = Timespec {
        tv_sec: s,
        tv_nsec: ns,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn parse_pax_time(s: &str) -> Option<(i64, i64)> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = whole.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let ns: i64 = digits.parse().ok()?;
    Some((secs, if secs < 0 { -ns } else { ns }))
}

#[cfg(test)]
#[allow(clippy::too_many_arguments)]
mod tests;
