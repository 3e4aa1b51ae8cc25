//! The content-addressed blob store: `<root>/content/blobs/sha256/<hex>`.
//!
//! Blobs are written under `<root>/content/ingest/` and renamed into place only after their
//! size and digest were verified and the data synced, so a blob that is visible is whole. A pull
//! that is interrupted (the client cancels, berth is killed) leaves at most an ingest file,
//! which is removed on drop or, after a crash, when the store is opened again.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::reference::Digest;

/// The blob store rooted at `<root>/content`.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating as needed) the store and discards leftovers of interrupted writes.
    pub fn open(root: &Path) -> Result<Self> {
        let blobs = root.join("content/blobs/sha256");
        let ingest = root.join("content/ingest");
        if ingest.exists() {
            fs::remove_dir_all(&ingest)
                .map_err(|e| Error::io(format!("clean {}", ingest.display()), e))?;
        }
        for d in [&blobs, &ingest] {
            fs::create_dir_all(d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        Ok(ContentStore { blobs, ingest })
    }

    /// Where the blob lives (whether or not it exists).
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.blobs.join(d.hex())
    }

    /// The size of the blob if it is present.
    pub fn size(&self, d: &Digest) -> Option<u64> {
        fs::metadata(self.path(d)).ok().map(|m| m.len())
    }

    /// Reads a whole blob of at most `max` bytes (manifests, configs).
    pub fn read(&self, d: &Digest, max: u64) -> Result<Vec<u8>> {
        let path = self.path(d);
        let f = File::open(&path).map_err(|e| Error::io(format!("open blob {d}"), e))?;
        let mut buf = Vec::new();
        f.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("read blob {d}"), e))?;
        if buf.len() as u64 > max {
            return Err(Error::bad(
                d.to_string(),
                format!("blob larger than {max} bytes"),
            ));
        }
        Ok(buf)
    }

    /// Stores `data` as blob `d` after checking it hashes to `d`.
    pub fn write_all(&self, d: &Digest, data: &[u8]) -> Result<()> {
        if self.size(d) == Some(data.len() as u64) {
            return Ok(());
        }
        let mut w = self.writer()?;
        w.write_all(data)
            .map_err(|e| Error::io("write ingest file", e))?;
        w.commit(d, Some(data.len() as u64))
    }

    /// A writer for a new blob; nothing is visible until [`Ingest::commit`].
    pub fn writer(&self) -> Result<Ingest> {
        let name: u64 = rand::random();
        let path = self.ingest.join(format!("{name:016x}"));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
        Ok(Ingest {
            file,
            path,
            hasher: Sha256::new(),
            size: 0,
            target: self.blobs.clone(),
            done: false,
        })
    }

    /// Removes a blob; a missing blob is not an error.
    pub fn delete(&self, d: &Digest, trash: &crate::trash::Trash) -> Result<()> {
        trash.take(&self.path(d))
    }

    /// Every blob with its size.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.blobs).map_err(|e| Error::io("list blobs", e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("list blobs", e))?;
            let name = entry.file_name();
            let Some(d) = name
                .to_str()
                .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
            else {
                continue;
            };
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((d, size));
        }
        Ok(out)
    }
}

/// A blob being written. Dropped without [`commit`](Ingest::commit), it leaves nothing behind.
#[derive(Debug)]
pub struct Ingest {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
    target: PathBuf,
    done: bool,
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Ingest {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.size
    }

    /// Whether what was written so far has the size and digest expected.
    pub fn verify(&self, expected: &Digest, expected_size: Option<u64>) -> Result<()> {
        if let Some(s) = expected_size.filter(|&s| s != self.size) {
            return Err(Error::DigestMismatch {
                what: format!("size of blob {expected}"),
                expected: s.to_string(),
                actual: self.size.to_string(),
            });
        }
        let actual = Digest::from_sha256(self.hasher.clone().finalize().into());
        if &actual != expected {
            return Err(Error::DigestMismatch {
                what: format!("digest of blob {expected}"),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(())
    }

    /// Verifies size and digest, syncs, and moves the blob into place.
    pub fn commit(mut self, expected: &Digest, expected_size: Option<u64>) -> Result<()> {
        self.verify(expected, expected_size)?;
        self.file
            .sync_data()
            .map_err(|e| Error::io("sync blob", e))?;
        let dest = self.target.join(expected.hex());
        fs::rename(&self.path, &dest)
            .map_err(|e| Error::io(format!("commit blob {expected}"), e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_blobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello");
        cs.write_all(&d, b"hello").unwrap();
        assert_eq!(cs.read(&d, 100).unwrap(), b"hello");
        assert!(cs.read(&d, 2).is_err());

        let wrong = Digest::of(b"other");
        let e = cs.write_all(&wrong, b"hello").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::DataLoss);
        assert!(cs.size(&wrong).is_none());
        // A failed or abandoned write leaves no ingest file.
        let mut w = cs.writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(
            fs::read_dir(dir.path().join("content/ingest"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(cs.list().unwrap(), vec![(d.clone(), 5)]);
        let trash = crate::trash::Trash::open(dir.path()).unwrap();
        cs.delete(&d, &trash).unwrap();
        cs.delete(&d, &trash).unwrap();
        assert!(cs.list().unwrap().is_empty());
    }

    #[test]
    fn open_discards_stale_ingest() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let w = cs.writer().unwrap();
        std::mem::forget(w); // as if berth was killed mid-write
        assert_eq!(
            fs::read_dir(dir.path().join("content/ingest"))
                .unwrap()
                .count(),
            1
        );
        ContentStore::open(dir.path()).unwrap();
        assert_eq!(
            fs::read_dir(dir.path().join("content/ingest"))
                .unwrap()
                .count(),
            0
        );
    }
}
