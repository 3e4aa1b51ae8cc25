//! Against a layer converted by the upstream estargz package (see `testdata/README.md`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::Error;
use crate::fetch::{self, BlobReader};
use crate::toc::{self, NodeKind, OPAQUE_XATTR, Toc};

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
    fetch::open(b, b.len() as u64, TOC_DIGEST).unwrap()
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
    let err = fetch::open(&b, b.len() as u64, &wrong).unwrap_err();
    assert!(
        matches!(err, Error::Format(ref m) if m.contains("TOC digest")),
        "{err}"
    );
    let err = fetch::open(&b[..b.len() - 1].to_vec(), b.len() as u64 - 1, TOC_DIGEST).unwrap_err();
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
