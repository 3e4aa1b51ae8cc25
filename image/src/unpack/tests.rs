use std::os::unix::fs::{MetadataExt, PermissionsExt};

use super::*;

/// Builds a tar stream from raw entries, without the tar crate's own path checks, so hostile
/// names can be written.
struct Tar(Vec<u8>);

impl Tar {
    fn new() -> Self {
        Tar(Vec::new())
    }

    fn entry(
        mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: &str,
        data: &[u8],
        pax: &[(&str, &[u8])],
    ) -> Self {
        if !pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in pax {
                let rec_len = |n: usize| format!("{n} {k}=").len() + v.len() + 1;
                let mut n = rec_len(0);
                while rec_len(n) != n {
                    n = rec_len(n);
                }
                body.extend_from_slice(format!("{n} {k}=").as_bytes());
                body.extend_from_slice(v);
                body.push(b'\n');
            }
            self = self.raw("pax", tar::EntryType::XHeader, 0o644, "", &body, 0, 0);
        }
        self.raw(name, kind, mode, link, data, 1000, 1001)
    }

    fn raw(
        mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: &str,
        data: &[u8],
        uid: u64,
        gid: u64,
    ) -> Self {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, tar::EntryType::Regular, 0o644, "", data, &[])
    }

    fn dir(self, name: &str) -> Self {
        self.entry(name, tar::EntryType::Directory, 0o755, "", b"", &[])
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Symlink, 0o777, target, b"", &[])
    }

    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(name, tar::EntryType::Link, 0o644, target, b"", &[])
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        self.0
    }
}

/// A sandbox with a snapshot dir and a sibling "outside" dir a layer must never touch.
struct Fixture {
    _tmp: tempfile::TempDir,
    snap: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let snap = tmp.path().join("snap");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&snap).unwrap();
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "untouched").unwrap();
    Fixture {
        _tmp: tmp,
        snap,
        outside,
    }
}

fn apply(f: &Fixture, tar: Vec<u8>) -> Result<LayerStats> {
    apply_layer(tar.as_slice(), &f.snap, "sha256:test")
}

fn assert_outside_untouched(f: &Fixture) {
    let names: Vec<_> = std::fs::read_dir(&f.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("secret")]);
    assert_eq!(
        std::fs::read_to_string(f.outside.join("secret")).unwrap(),
        "untouched"
    );
}

#[test]
fn applies_files_dirs_links_and_metadata() {
    let f = fixture();
    let tar = Tar::new()
        .dir("./")
        .dir("bin/")
        .file("bin/busybox", b"#!binary")
        .hardlink("bin/sh", "bin/busybox")
        .symlink("bin/ls", "busybox")
        .entry("bin/su", tar::EntryType::Regular, 0o4755, "", b"suid", &[])
        .file("deep/implicit/parent.txt", b"x")
        .entry("dev/null", tar::EntryType::Char, 0o666, "", b"", &[])
        .entry("fifo", tar::EntryType::Fifo, 0o600, "", b"", &[])
        .entry(
            "xattr",
            tar::EntryType::Regular,
            0o644,
            "",
            b"",
            &[
                ("SCHILY.xattr.user.k", b"v"),
                ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ],
        )
        .finish();
    let stats = apply(&f, tar).unwrap();
    assert_eq!(stats.bytes, 8 + 4 + 1);
    let bb = std::fs::metadata(f.snap.join("bin/busybox")).unwrap();
    assert_eq!((bb.uid(), bb.gid(), bb.nlink()), (1000, 1001, 2));
    assert_eq!(bb.mtime(), 1_600_000_000);
    assert_eq!(std::fs::read(f.snap.join("bin/sh")).unwrap(), b"#!binary");
    assert_eq!(
        std::fs::read_link(f.snap.join("bin/ls")).unwrap().to_str(),
        Some("busybox")
    );
    assert_eq!(
        std::fs::metadata(f.snap.join("bin/su"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o4755
    );
    assert_eq!(
        std::fs::metadata(f.snap.join("bin")).unwrap().mtime(),
        1_600_000_000,
        "dir mtime restored last"
    );
    assert!(f.snap.join("deep/implicit/parent.txt").is_file());
    let dev = std::fs::symlink_metadata(f.snap.join("dev/null")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &dev.file_type()
    ));
    let xf = f.snap.join("xattr");
    let val = rustix::fs::getxattr(&xf, "user.k", &mut [0u8; 16]);
    // tmpfs without user xattrs is fine; where supported the value must be there.
    if let Ok(n) = val {
        assert_eq!(n, 1);
    }
    assert!(rustix::fs::getxattr(&xf, "trusted.overlay.redirect", &mut [0u8; 16]).is_err());
}

#[test]
fn whiteouts_become_overlay_whiteouts() {
    let f = fixture();
    let tar = Tar::new()
        .dir("etc/")
        .file("etc/.wh.removed", b"")
        .dir("opaque/")
        .file("opaque/.wh..wh..opq", b"")
        .finish();
    apply(&f, tar).unwrap();
    let wh = std::fs::symlink_metadata(f.snap.join("etc/removed")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &wh.file_type()
    ));
    assert_eq!(wh.rdev(), 0);
    assert!(!f.snap.join("etc/.wh.removed").exists());
    let mut buf = [0u8; 4];
    let n = rustix::fs::getxattr(
        f.snap.join("opaque").as_path(),
        "trusted.overlay.opaque",
        &mut buf,
    )
    .unwrap();
    assert_eq!(&buf[..n], b"y");
}

#[test]
fn later_entries_replace_earlier_ones_without_following_links() {
    let f = fixture();
    let target = f.outside.join("secret");
    let tar = Tar::new()
        .symlink("a", target.to_str().unwrap())
        .file("a", b"new")
        .dir("d/")
        .file("d/x", b"")
        .file("d", b"now a file")
        .finish();
    apply(&f, tar).unwrap();
    assert_eq!(std::fs::read(f.snap.join("a")).unwrap(), b"new");
    assert!(
        std::fs::symlink_metadata(f.snap.join("a"))
            .unwrap()
            .is_file()
    );
    assert!(f.snap.join("d").is_file());
    assert_outside_untouched(&f);
}

#[test]
fn absolute_names_stay_inside() {
    let f = fixture();
    apply(&f, Tar::new().file("/etc/abs", b"x").finish()).unwrap();
    assert!(f.snap.join("etc/abs").is_file());
}

#[test]
fn rejects_escapes() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", Tar::new().file("../outside/evil", b"x").finish()),
        (
            "dotdot in middle",
            Tar::new().file("a/../../outside/evil", b"x").finish(),
        ),
        (
            "absolute symlink parent",
            Tar::new()
                .symlink("l", "/")
                .file("l/tmp/evil", b"x")
                .finish(),
        ),
        (
            "relative symlink parent",
            Tar::new()
                .symlink("l", "../outside")
                .file("l/evil", b"x")
                .finish(),
        ),
        (
            "hard link out",
            Tar::new().hardlink("h", "../outside/secret").finish(),
        ),
        (
            "hard link through symlink",
            Tar::new()
                .symlink("l", "../outside")
                .hardlink("h", "l/secret")
                .finish(),
        ),
        (
            "whiteout through symlink",
            Tar::new()
                .symlink("l", "../outside")
                .file("l/.wh.secret", b"")
                .finish(),
        ),
        (
            "opaque through symlink",
            Tar::new()
                .symlink("l", "../outside")
                .file("l/.wh..wh..opq", b"")
                .finish(),
        ),
        (
            "hard link missing",
            Tar::new().hardlink("h", "nothing").finish(),
        ),
    ];
    for (what, tar) in cases {
        let f = fixture();
        let e = apply(&f, tar).expect_err(what);
        assert!(matches!(e, Error::UnsafeLayer { .. }), "{what}: {e}");
        assert_eq!(e.kind(), crate::ErrorKind::FailedPrecondition, "{what}");
        assert_outside_untouched(&f);
    }
}

#[test]
fn symlinks_inside_the_layer_still_work_for_parents() {
    let f = fixture();
    let tar = Tar::new()
        .dir("usr/lib/")
        .symlink("lib", "usr/lib")
        .file("lib/libc.so", b"c")
        .finish();
    apply(&f, tar).unwrap();
    assert!(f.snap.join("usr/lib/libc.so").is_file());
}

#[test]
fn truncated_stream_is_an_error() {
    let f = fixture();
    let mut tar = Tar::new().file("big", &[7u8; 4096]).finish();
    tar.truncate(1000);
    assert!(apply(&f, tar).is_err());
}

#[test]
fn pax_time() {
    assert_eq!(
        parse_pax_time("1600000000.5"),
        Some((1_600_000_000, 500_000_000))
    );
    assert_eq!(parse_pax_time("12"), Some((12, 0)));
    assert_eq!(parse_pax_time("x"), None);
}
