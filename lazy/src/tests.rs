//! Against a layer converted by the upstream estargz package (see `testdata/README.md`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::Error;
use crate::fetch::{self, BlobReader};
use crate::toc::{self, Limits, NodeKind, OPAQUE_XATTR, Toc};

const TOC_DIGEST: &str = "sha256:f969d34440e1ec37ac87cf5366d78215323ebfa91cd455df479187a1db465400";

fn blob() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/layer.esgz")).unwrap()
}

impl BlobReader for Vec<u8> {
    fn read_range(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        self.get(offset as usize..(offset + len) as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| std::io::Error::other("range past the end"))
    }
}

fn open(b: &Vec<u8>) -> Toc {
    fetch::open(b, b.len() as u64, TOC_DIGEST, &Limits::default()).unwrap()
}

/// Every regular file of the blob, read the normal way (gunzip, untar).
fn files_the_normal_way(b: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(flate2::read::MultiGzDecoder::new(b));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() == tar::EntryType::Regular {
            let name = e.path().unwrap().display().to_string();
            let mut data = vec![];
            e.read_to_end(&mut data).unwrap();
            out.insert(name, data);
        }
    }
    out
}

fn read_file(b: &Vec<u8>, t: &Toc, path: &str) -> Vec<u8> {
    let n = &t.nodes[t.lookup(path).unwrap()];
    n.chunks
        .iter()
        .flat_map(|c| fetch::read_chunk(b, path, c).unwrap())
        .collect()
}

#[test]
fn chunks_read_lazily_are_the_files_a_normal_pull_unpacks() {
    let b = blob();
    let t = open(&b);
    let normal = files_the_normal_way(&b);
    let mut compared = 0;
    for (path, data) in &normal {
        if path == "stargz.index.json" || path.contains(".wh.") {
            continue;
        }
        assert_eq!(&read_file(&b, &t, path), data, "{path}");
        compared += 1;
    }
    assert_eq!(compared, 5, "{:?}", normal.keys());
    let big = &t.nodes[t.lookup("usr/share/big").unwrap()];
    assert_eq!(big.chunks.len(), 7);
    assert_eq!(
        (big.mode, big.uid, big.gid, big.size),
        (0o640, 1000, 1000, 104_000)
    );
    assert_eq!(big.mtime, 1_700_000_000);
}

#[test]
fn the_tree_has_overlay_whiteouts_links_and_the_prefetch_landmark() {
    let b = blob();
    let t = open(&b);
    let gone = t.lookup("usr/share/gone").expect("whiteout");
    assert_eq!(t.nodes[gone].kind, NodeKind::Char(0, 0));
    assert!(t.lookup("usr/share/.wh.gone").is_none());
    let opaque = t.lookup("opaque").unwrap();
    assert_eq!(t.nodes[opaque].xattrs[OPAQUE_XATTR], b"y");
    assert_eq!(t.nodes[opaque].mode, 0o700);
    assert_eq!(
        t.nodes[opaque].children.keys().collect::<Vec<_>>(),
        ["kept"]
    );
    let big = t.lookup("usr/share/big").unwrap();
    assert_eq!(t.lookup("usr/share/big-link"), Some(big));
    assert_eq!(t.nodes[big].nlink, 2);
    let sym = t.lookup("usr/share/sym").unwrap();
    assert_eq!(t.nodes[sym].kind, NodeKind::Symlink("big".into()));
    assert_eq!(t.nodes[t.lookup("bin/fifo").unwrap()].kind, NodeKind::Fifo);
    // etc/hello was prioritized: it lies before the landmark, the rest after.
    let hello = &t.nodes[t.lookup("etc/hello").unwrap()];
    assert!(hello.chunks[0].blob_end <= t.prefetch_end, "{t:?}");
    assert!(t.nodes[big].chunks[0].blob_offset >= t.prefetch_end);
}

#[test]
fn a_toc_that_does_not_match_its_digest_is_refused() {
    let b = blob();
    let wrong = TOC_DIGEST.replace("f969", "0000");
    let err = fetch::open(&b, b.len() as u64, &wrong, &Limits::default()).unwrap_err();
    assert!(
        matches!(err, Error::Format(ref m) if m.contains("TOC digest")),
        "{err}"
    );
    let err = fetch::open(
        &b[..b.len() - 1].to_vec(),
        b.len() as u64 - 1,
        TOC_DIGEST,
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Format(_)), "{err}");
}

#[test]
fn a_damaged_chunk_is_an_error_never_data() {
    let b = blob();
    let t = open(&b);
    let big = &t.nodes[t.lookup("usr/share/big").unwrap()];
    let mut failed = 0;
    for c in &big.chunks {
        let good = fetch::read_chunk(&b, "usr/share/big", c).unwrap();
        // Every byte of a chunk's compressed range, flipped in turn: the read fails (gzip's
        // own CRC, or the chunk digest) or, where the byte was gzip header metadata (MTIME,
        // flags), gives the right data. Never other data.
        for i in c.blob_offset..c.blob_end {
            let mut bad = b.clone();
            bad[i as usize] ^= 0x01;
            match fetch::read_chunk(&bad, "usr/share/big", c) {
                Ok(data) => assert_eq!(data, good, "byte {i} flipped gave other data"),
                Err(_) => failed += 1,
            }
        }
    }
    assert!(failed > 5000, "{failed}");
}

#[test]
fn footers_of_both_kinds() {
    let b = blob();
    let (off, len) = toc::parse_footer(&b[b.len() - 51..]).unwrap();
    assert_eq!(len, 51);
    assert!(off > 0 && off < b.len() as u64);
    assert!(toc::parse_footer(&[0u8; 51]).is_err());
}

mod mounted {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::{TOC_DIGEST, blob, files_the_normal_way};
    use crate::fetch::{self, BlobReader};
    use crate::fuse::Mount;
    use crate::layer::LazyLayer;

    /// The fixture's bytes; optionally damaged (every byte of the blob's data flipped).
    struct Source {
        bytes: Vec<u8>,
        damaged: Arc<AtomicBool>,
    }

    impl BlobReader for Source {
        fn read_range(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
            let mut v = self.bytes.read_range(offset, len)?;
            if self.damaged.load(Ordering::Relaxed) {
                v.iter_mut().for_each(|b| *b ^= 0x55);
            }
            Ok(v)
        }
    }

    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        use std::os::unix::ffi::OsStrExt;
        let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        let mut buf = vec![0u8; 64];
        // SAFETY: valid strings and a buffer of the given length.
        let r =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        (r >= 0).then(|| buf[..r as usize].to_vec())
    }

    fn mounted_in(path: &Path) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some(path.to_str().unwrap()))
    }

    /// The fixture layer mounted at `<dir>/mnt`, from a source that damages every range
    /// when `damaged`.
    fn mounted(damaged: bool) -> (tempfile::TempDir, std::path::PathBuf, Mount, Arc<LazyLayer>) {
        let b = blob();
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let toc = fetch::open(&b, b.len() as u64, TOC_DIGEST, &Default::default()).unwrap();
        let src = Source {
            bytes: b,
            damaged: Arc::new(AtomicBool::new(damaged)),
        };
        let layer = Arc::new(
            LazyLayer::new(
                "sha256:fixture",
                toc,
                Box::new(src),
                &dir.path().join("chunks"),
            )
            .unwrap(),
        );
        let m = Mount::new(&mnt, layer.clone(), 2).unwrap();
        (dir, mnt, m, layer)
    }

    #[test]
    fn a_mounted_layer_reads_as_its_normal_unpack_and_stacks_under_overlayfs() {
        let b = blob();
        let (dir, mnt, m, layer) = mounted(false);
        assert!(mounted_in(&mnt));

        // Only what is read is fetched.
        assert_eq!(
            std::fs::read(mnt.join("etc/hello")).unwrap(),
            b"hello from a lazy layer\n"
        );
        let small = layer.fetched();
        assert!(small > 0 && small < 200, "{small}");

        for (path, data) in files_the_normal_way(&b) {
            if path == "stargz.index.json" || path.contains(".wh.") {
                continue;
            }
            assert_eq!(std::fs::read(mnt.join(&path)).unwrap(), data, "{path}");
        }
        let big = std::fs::metadata(mnt.join("usr/share/big")).unwrap();
        assert_eq!(
            (big.mode() & 0o7777, big.uid(), big.gid(), big.nlink()),
            (0o640, 1000, 1000, 2)
        );
        assert_eq!(
            std::fs::metadata(mnt.join("usr/share/big-link"))
                .unwrap()
                .ino(),
            big.ino()
        );
        assert_eq!(
            std::fs::read_link(mnt.join("usr/share/sym")).unwrap(),
            Path::new("big")
        );
        let gone = std::fs::symlink_metadata(mnt.join("usr/share/gone")).unwrap();
        assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
        assert!(
            std::fs::symlink_metadata(mnt.join("bin/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(
            xattr(&mnt.join("opaque"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        let mut names: Vec<String> = std::fs::read_dir(mnt.join("usr/share"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["big", "big-link", "empty", "gone", "sym"]);
        let err = std::fs::write(mnt.join("etc/new"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");

        // Under overlayfs, on top of a lower layer: the whiteout hides, the opaque dir hides.
        let base = dir.path().join("base");
        std::fs::create_dir_all(base.join("usr/share")).unwrap();
        std::fs::create_dir_all(base.join("opaque")).unwrap();
        std::fs::write(base.join("usr/share/gone"), "from below").unwrap();
        std::fs::write(base.join("opaque/old"), "from below").unwrap();
        std::fs::write(base.join("kept-below"), "yes").unwrap();
        let (upper, work, merged) = (
            dir.path().join("u"),
            dir.path().join("w"),
            dir.path().join("m"),
        );
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        let opts = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            mnt.display(),
            base.display(),
            upper.display(),
            work.display()
        );
        let ok = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .unwrap()
            .success();
        assert!(ok, "overlay mount");
        let seen = (
            merged.join("usr/share/gone").exists(),
            merged.join("opaque/old").exists(),
            std::fs::read(merged.join("opaque/kept")).ok(),
            std::fs::read(merged.join("kept-below")).ok(),
            std::fs::read(merged.join("usr/share/big"))
                .map(|d| d.len())
                .ok(),
        );
        let _ = std::process::Command::new("umount").arg(&merged).status();
        assert_eq!(
            seen,
            (
                false,
                false,
                Some(b"kept\n".to_vec()),
                Some(b"yes".to_vec()),
                Some(104_000)
            )
        );

        m.unmount().unwrap();
        assert!(!mounted_in(&mnt));
    }

    #[test]
    fn a_read_the_dead_server_left_unanswered_is_answered_by_the_next_one() {
        let (dir, mnt, m, layer) = mounted(false);
        m.unmount().unwrap();
        // A server that dies after reading the first READ (berth SIGKILLed mid-request);
        // its connection is kept, as the holder keeps it.
        let dev = crate::fuse::mount_and_die_at(&mnt, layer.clone(), 15).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let file = mnt.join("etc/hello");
        std::thread::spawn(move || {
            let _ = tx.send(std::fs::read(file).map_err(|e| e.to_string()));
        });
        // The reader waits: its request was taken and never answered.
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(500))
                .is_err()
        );
        let m = Mount::adopt(&mnt, dev, layer, 2);
        let got = rx.recv_timeout(std::time::Duration::from_secs(10));
        // Ends the connection whatever happened, so that a reader left waiting is released.
        m.unmount().unwrap();
        assert_eq!(
            got.expect("the read is still waiting after the new server took over"),
            Ok(b"hello from a lazy layer\n".to_vec())
        );
        drop(dir);
    }

    /// A process in a user namespace of its own mapping 0..65536 to `base`..; killed and
    /// reaped when dropped.
    struct UserNs(std::process::Child);

    impl UserNs {
        fn new(base: u32) -> UserNs {
            let child = std::process::Command::new("unshare")
                .args(["--user", "sleep", "30"])
                .spawn()
                .unwrap();
            let ns = UserNs(child);
            let pid = ns.0.id();
            let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::read_link(format!("/proc/{pid}/ns/user")).ok() == Some(ours.clone()) {
                assert!(std::time::Instant::now() < deadline, "unshare never ran");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            for map in ["uid_map", "gid_map"] {
                std::fs::write(format!("/proc/{pid}/{map}"), format!("0 {base} 65536\n")).unwrap();
            }
            ns
        }
    }

    impl Drop for UserNs {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The mount at `source` cloned, its ids seen through the user namespace of `pid`, and
    /// attached at `at`.
    fn idmapped_clone(source: &Path, pid: u32, at: &Path) -> std::io::Result<()> {
        use rustix::mount::{MoveMountFlags, OpenTreeFlags};
        use std::os::fd::{AsFd, AsRawFd};
        #[repr(C)]
        struct MountAttr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
        let tree = rustix::mount::open_tree(
            rustix::fs::CWD,
            source,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )?;
        let attr = MountAttr {
            attr_set: 0x0010_0000, // MOUNT_ATTR_IDMAP
            attr_clr: 0,
            propagation: 0,
            userns_fd: ns.as_raw_fd() as u64,
        };
        // SAFETY: mount_setattr(2) on a descriptor we own, an empty path with AT_EMPTY_PATH,
        // and a `struct mount_attr` that outlives the call, its size passed with it.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_fd().as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        rustix::mount::move_mount(
            tree.as_fd(),
            "",
            rustix::fs::CWD,
            at,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )?;
        Ok(())
    }

    #[test]
    fn a_mounted_layer_can_be_idmapped_for_a_pod_in_a_user_namespace() {
        let (dir, mnt, m, _) = mounted(false);
        let ns = UserNs::new(200_000);
        let view = dir.path().join("view");
        std::fs::create_dir(&view).unwrap();
        let r = idmapped_clone(&mnt, ns.0.id(), &view);
        if let Err(e) = &r {
            m.unmount().unwrap();
            panic!("idmapping the layer's mount (Linux 6.12+ with FUSE_ALLOW_IDMAP): {e}");
        }
        // Owners are seen through the namespace's mapping; contents are the layer's.
        let big = std::fs::metadata(view.join("usr/share/big")).unwrap();
        let root = std::fs::metadata(view.join("etc/hello")).unwrap();
        let read = std::fs::read(view.join("etc/hello"));
        rustix::mount::unmount(&view, rustix::mount::UnmountFlags::DETACH).unwrap();
        m.unmount().unwrap();
        assert_eq!((big.uid(), big.gid()), (201_000, 201_000));
        assert_eq!((root.uid(), root.gid()), (200_000, 200_000));
        assert_eq!(read.unwrap(), b"hello from a lazy layer\n");
        drop(ns);
    }

    #[test]
    fn a_chunk_that_fails_verification_is_eio_never_data() {
        let (dir, mnt, m, _) = mounted(true);
        let err = std::fs::read(mnt.join("usr/share/big")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        // Nothing unverified was cached.
        assert_eq!(
            std::fs::read_dir(dir.path().join("chunks"))
                .unwrap()
                .count(),
            0
        );
        m.unmount().unwrap();
    }
}

#[test]
fn the_background_fill_fetches_every_chunk_once_in_few_ranges() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    struct Counting(Vec<u8>, AtomicUsize);
    impl BlobReader for Counting {
        fn read_range(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.read_range(offset, len)
        }
    }
    let b = blob();
    let toc = open(&b);
    let dir = tempfile::tempdir().unwrap();
    let src = std::sync::Arc::new(Counting(b.clone(), AtomicUsize::new(0)));
    struct Shared(std::sync::Arc<Counting>);
    impl BlobReader for Shared {
        fn read_range(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
            self.0.read_range(offset, len)
        }
    }
    let layer =
        crate::layer::LazyLayer::new("l", toc, Box::new(Shared(src.clone())), dir.path()).unwrap();
    let (total, cached) = layer.progress();
    assert_eq!((total, cached), (104_000 + 24 + 1 + 5, 0));
    layer.fill(&AtomicBool::new(false), &mut || {}).unwrap();
    assert_eq!(layer.progress(), (total, total));
    // The whole data section is one range here (it is far below FILL_RANGE).
    assert_eq!(src.1.load(Ordering::Relaxed), 1);
    // Reads are served from the cache now.
    use crate::fuse::Tree;
    assert_eq!(
        layer
            .read(layer.toc().lookup("opaque/kept").unwrap(), 0, 100)
            .unwrap(),
        b"kept\n"
    );
    assert_eq!(src.1.load(Ordering::Relaxed), 1);
}

/// Bytes allocated by the calling thread: a global allocator that counts per thread, so that
/// a test can bound what one call allocates while other tests run beside it.
mod meter {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Meter;

    thread_local! {
        static NOW: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
    }

    fn add(n: isize) {
        // Never allocates: const-initialised cells (gone during thread teardown: ignored).
        let _ = NOW.try_with(|now| {
            let v = now.get() + n;
            now.set(v);
            let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
        });
    }

    // SAFETY: every call is passed on to the system allocator unchanged; only counted.
    unsafe impl GlobalAlloc for Meter {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            add(l.size() as isize);
            // SAFETY: the caller's contract, passed on.
            unsafe { System.alloc(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            add(-(l.size() as isize));
            // SAFETY: the caller's contract, passed on.
            unsafe { System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            add(new as isize - l.size() as isize);
            // SAFETY: the caller's contract, passed on.
            unsafe { System.realloc(p, l, new) }
        }
    }

    #[global_allocator]
    static GLOBAL: Meter = Meter;

    /// What `f` returns, and the most its thread held at once meanwhile beyond what it held
    /// before.
    pub fn peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
        let base = NOW.with(Cell::get);
        PEAK.with(|p| p.set(base));
        let out = f();
        let top = PEAK.with(Cell::get);
        (out, (top - base).max(0) as usize)
    }
}

mod hostile {
    use super::meter::peak;
    use std::sync::atomic::AtomicBool;

    use crate::toc::{Limits, Toc};

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const MB: usize = 1 << 20;

    fn toc(entries: &[String]) -> Vec<u8> {
        format!(r#"{{"version":1,"entries":[{}]}}"#, entries.join(",")).into_bytes()
    }

    fn parse(json: &[u8], toc_offset: u64, blob: u64) -> (crate::Result<Toc>, usize) {
        peak(|| Toc::parse(json, toc_offset, blob, &Limits::default()))
    }

    fn refused(r: crate::Result<Toc>, words: &str) {
        match r {
            Err(crate::Error::Format(m)) => assert!(m.contains(words), "{m}"),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(t) => panic!("accepted a TOC of {} nodes", t.nodes.len()),
        }
    }

    #[test]
    fn a_file_larger_than_its_chunk_limit_or_its_blob_is_refused_before_any_allocation() {
        // A petabyte file whose one chunk points at a real member (the crash of issue 24).
        let big = toc(&[format!(
            r#"{{"name":"big","type":"reg","size":1125899906842624,"offset":0,"digest":"{D}"}}"#
        )]);
        let (r, used) = parse(&big, 100, 3000);
        refused(r, "max_chunk_size");
        assert!(used < MB, "{used}");
        // Chunks each within the limit, adding up to more than the blob can inflate to.
        let mut e = vec![format!(
            r#"{{"name":"f","type":"reg","size":{},"offset":0,"chunkSize":1048576,"chunkDigest":"{D}"}}"#,
            64u64 << 20
        )];
        for i in 1..64u64 {
            e.push(format!(
                r#"{{"type":"chunk","offset":{i},"chunkOffset":{},"chunkSize":1048576,"chunkDigest":"{D}"}}"#,
                i << 20
            ));
        }
        refused(parse(&toc(&e), 64, 3000).0, "compressed data");
        // One chunk claiming more than its own compressed bytes can hold.
        let one = toc(&[
            format!(r#"{{"name":"f","type":"reg","size":8388608,"offset":0,"digest":"{D}"}}"#),
            format!(r#"{{"name":"g","type":"reg","size":1,"offset":10,"digest":"{D}"}}"#),
        ]);
        refused(parse(&one, 1 << 20, 1 << 30).0, "claims");
    }

    #[test]
    fn deep_paths_cost_their_nodes_and_no_more() {
        // 300 entries, each 1,000 directories deep of their own, in a layer of a few KB.
        let deep = vec!["d"; 999].join("/");
        let e: Vec<String> = (0..300)
            .map(|i| format!(r#"{{"name":"e{i}/{deep}/f","type":"dir"}}"#))
            .collect();
        let (r, used) = parse(&toc(&e), 0, 3000);
        refused(r, "tree of more than");
        assert!(used < 4 * MB, "{used}");
        // Where the blob is large enough to pay for them, the tree takes what its nodes take:
        // a path's depth costs nothing beyond its directories.
        let e: Vec<String> = (0..300)
            .map(|i| {
                format!(
                    r#"{{"name":"{}/f{i}","type":"dir"}}"#,
                    vec!["d"; 1000].join("/")
                )
            })
            .collect();
        let json = toc(&e);
        let (r, used) = parse(&json, 0, 1 << 30);
        let t = r.unwrap();
        assert_eq!(t.nodes.len(), 1 + 1000 + 300);
        assert!(used < 4 * MB, "{used}");
        assert_eq!(
            t.path_of(
                t.lookup(&format!("{}/f7", vec!["d"; 1000].join("/")))
                    .unwrap()
            )
            .len(),
            2002
        );
    }

    #[test]
    fn a_toc_of_empty_objects_is_refused_by_its_size_and_never_held() {
        let mut json = br#"{"version":1,"entries":["#.to_vec();
        json.extend(std::iter::repeat_n(&b"{},"[..], 16 * MB / 3).flatten());
        json.extend_from_slice(b"{}]}");
        // A 17 KB layer may not carry 16 MiB of TOC.
        let (r, used) = parse(&json, 0, 17_000);
        refused(r, "over this layer's limit");
        assert!(used < MB, "{used}");
        // Where it may, it streams through in constant memory.
        let (r, used) = parse(&json, 0, 1 << 30);
        assert_eq!(r.unwrap().nodes.len(), 1);
        assert!(used < MB, "{used}");
    }

    #[test]
    fn entries_with_too_many_attributes_or_names_too_long_are_refused() {
        let attrs: Vec<String> = (0..200).map(|i| format!(r#""user.a{i}":"""#)).collect();
        let e = toc(&[format!(
            r#"{{"name":"x","type":"dir","xattrs":{{{}}}}}"#,
            attrs.join(",")
        )]);
        refused(parse(&e, 0, 1 << 30).0, "extended attributes");
        let long = toc(&[format!(r#"{{"name":"{}","type":"dir"}}"#, "n".repeat(300))]);
        refused(parse(&long, 0, 1 << 30).0, "a name of 300 bytes");
        let deep = toc(&[format!(
            r#"{{"name":"{}","type":"dir"}}"#,
            vec!["d"; 3000].join("/")
        )]);
        refused(parse(&deep, 0, 1 << 30).0, "bytes (the limit is 4096)");
        let digest = toc(&[
            r#"{"name":"f","type":"reg","size":4,"offset":0,"digest":"sha256:00"}"#.to_string(),
        ]);
        refused(parse(&digest, 100, 1 << 30).0, "not sha256");
    }

    #[test]
    fn a_refused_toc_leaves_nothing_where_it_was_to_be_kept() {
        let b = super::blob();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("toc.json");
        let tight = Limits {
            max_tree: 1000,
            ..Limits::default()
        };
        let go = AtomicBool::new(false);
        let r = crate::fetch::open_to(&b, b.len() as u64, super::TOC_DIGEST, &tight, &path, &go);
        assert!(r.is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let t = crate::fetch::open_to(
            &b,
            b.len() as u64,
            super::TOC_DIGEST,
            &Limits::default(),
            &path,
            &go,
        )
        .unwrap();
        let again = Toc::parse_reader(
            std::fs::File::open(&path).unwrap(),
            t.toc_offset,
            b.len() as u64,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(again.nodes.len(), t.nodes.len());
    }

    #[test]
    fn a_cancelled_pull_stops_reading_its_toc_and_keeps_nothing() {
        let b = super::blob();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("toc.json");
        let cancelled = AtomicBool::new(true);
        let r = crate::fetch::open_to(
            &b,
            b.len() as u64,
            super::TOC_DIGEST,
            &Limits::default(),
            &path,
            &cancelled,
        );
        let Err(e) = r else {
            panic!("a cancelled pull opened its layer");
        };
        let e = e.to_string();
        assert!(e.contains("cancelled"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
