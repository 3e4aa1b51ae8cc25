//! berth's metadata store: typed JSON records in named tables of one redb database, shared
//! by the image service (images, snapshots) and the sandbox runtime (pods, containers).
//!
//! redb rather than sled: sled's own README calls it beta, says its on-disk format will change
//! and advises SQLite where reliability matters, and its last release (2024) is an alpha. redb
//! is ACID and crash-safe (copy-on-write B-tree, fsync on commit, stable file format), the
//! closest match to the bbolt database containerd keeps. Every write is one transaction, so a
//! record is either wholly there or not at all; memory holds only indexes derived from it.

use std::path::Path;
use std::sync::Arc;

use berth_errdefs::{Classify, ErrorKind};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A failure of the metadata store (always [`ErrorKind::Internal`]: the disk, the database
/// file); the message says what berth was doing.
#[derive(Debug, thiserror::Error)]
#[error("metadata store: {0}")]
pub struct Error(String);

impl Error {
    /// The class of this error: always [`ErrorKind::Internal`].
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }

    /// A store failure saying `msg`.
    pub fn new(msg: impl Into<String>) -> Self {
        Error(msg.into())
    }
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        Error::kind(self)
    }
}

macro_rules! redb_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error(e.to_string())
            }
        }
    )*};
}
redb_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The schema this build writes. Opening a store written by a newer schema fails rather than
/// misreading it.
pub const SCHEMA_VERSION: u32 = 1;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A handle to the database, cheap to clone and share between services.
///
/// After an I/O error (a full disk, most often) redb refuses every later operation until the
/// database is opened again. So the store opens it again: an operation that fails with an
/// I/O error replaces the database handle with a fresh one (redb checks and repairs the file
/// as it opens it; a transaction that failed left nothing behind) and is tried once more. While
/// the disk stays full, operations keep failing; once space is back, they work again without
/// a restart.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: std::path::PathBuf,
    /// `None` after an I/O error closed it, until the next operation opens it again.
    db: std::sync::RwLock<Option<Arc<Database>>>,
}

/// Whether redb failed for an I/O reason (and wants the database opened again).
fn is_io(e: &redb::Error) -> bool {
    matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo)
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn table(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

impl Store {
    /// Opens or creates the database file and checks its schema version.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::new(format!("create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| Error::new(format!("open {}: {e}", path.display())))?;
        let tx = db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value().to_vec());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION.to_string().as_bytes())?;
                }
                Some(v) => {
                    let v: u32 = String::from_utf8_lossy(&v).parse().unwrap_or(u32::MAX);
                    if v > SCHEMA_VERSION {
                        return Err(Error::new(format!(
                            "{} has schema version {v}; this berth understands up to {SCHEMA_VERSION}",
                            path.display()
                        )));
                    }
                }
            }
        }
        tx.commit()?;
        Ok(Store {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                db: std::sync::RwLock::new(Some(Arc::new(db))),
            }),
        })
    }

    /// The open database, opening it again if an I/O error closed it.
    fn db(&self) -> Result<Arc<Database>> {
        let open = self
            .inner
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match open {
            Some(db) => Ok(db),
            None => self.open_again(),
        }
    }

    /// Runs `op` on the database; after an I/O error, closes the database, opens it again
    /// and runs `op` once more.
    fn run<T>(&self, op: impl Fn(&Database) -> std::result::Result<T, redb::Error>) -> Result<T> {
        let db = self.db()?;
        match op(&db) {
            Err(e) if is_io(&e) => {
                tracing::warn!(path = %self.inner.path.display(), err = %e, "metadata store I/O error; opening the database again");
                self.close(&db);
                drop(db);
                op(&*self.db()?).map_err(Error::from)
            }
            other => other.map_err(Error::from),
        }
    }

    /// Forgets `failed`, unless another caller replaced it already.
    fn close(&self, failed: &Arc<Database>) {
        let mut slot = self.inner.db.write().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|d| Arc::ptr_eq(d, failed)) {
            *slot = None;
        }
    }

    /// Opens the database file again. redb keeps the file locked while any handle of the
    /// failed database is alive, so this waits briefly for transactions still using one.
    fn open_again(&self) -> Result<Arc<Database>> {
        let mut slot = self.inner.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let path = &self.inner.path;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match Database::create(path) {
                Ok(db) => {
                    let db = Arc::new(db);
                    *slot = Some(db.clone());
                    tracing::info!(path = %path.display(), "metadata store opened again");
                    return Ok(db);
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(Error::new(format!("open {} again: {e}", path.display())));
                }
            }
        }
    }

    /// Writes `value` under `key` in `table_name`, replacing what was there.
    pub fn put<T: Serialize>(&self, table_name: &str, key: &str, value: &T) -> Result<()> {
        self.write(table_name, key, value, redb::Durability::Immediate)
    }

    /// Writes `value` under `key` without waiting for the disk: the record is visible at once
    /// and is made durable by the next [`put`](Self::put) (or other durable commit) of this
    /// process; a crash before then loses it. For records written just before a durable one
    /// that covers them, whose loss in a crash leaves nothing a restart cannot clean.
    pub fn put_deferred<T: Serialize>(&self, table_name: &str, key: &str, value: &T) -> Result<()> {
        self.write(table_name, key, value, redb::Durability::None)
    }

    fn write<T: Serialize>(
        &self,
        table_name: &str,
        key: &str,
        value: &T,
        durability: redb::Durability,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::new(format!("encode {table_name}/{key}: {e}")))?;
        self.run(|db| {
            let mut tx = db.begin_write()?;
            tx.set_durability(durability)?;
            tx.open_table(table(table_name))?
                .insert(key, bytes.as_slice())?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Makes every deferred write durable (an empty durable commit). For shutdown.
    pub fn flush(&self) -> Result<()> {
        self.run(|db| Ok(db.begin_write()?.commit()?))
    }

    /// Applies several puts and deletes in one transaction.
    pub fn batch(
        &self,
        table_name: &str,
        puts: &[(String, Vec<u8>)],
        deletes: &[String],
    ) -> Result<()> {
        self.run(|db| {
            let tx = db.begin_write()?;
            {
                let mut t = tx.open_table(table(table_name))?;
                for (k, v) in puts {
                    t.insert(k.as_str(), v.as_slice())?;
                }
                for k in deletes {
                    t.remove(k.as_str())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Reads the record under `key`.
    pub fn get<T: DeserializeOwned>(&self, table_name: &str, key: &str) -> Result<Option<T>> {
        let bytes = self.run(|db| {
            let tx = db.begin_read()?;
            let t = match tx.open_table(table(table_name)) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })?;
        bytes.map(|b| decode(table_name, key, &b)).transpose()
    }

    /// Removes `key`; a missing key is not an error.
    pub fn delete(&self, table_name: &str, key: &str) -> Result<()> {
        self.batch(table_name, &[], &[key.to_string()])
    }

    /// Every record of a table, in key order.
    pub fn list<T: DeserializeOwned>(&self, table_name: &str) -> Result<Vec<(String, T)>> {
        let raw = self.run(|db| {
            let tx = db.begin_read()?;
            let t = match tx.open_table(table(table_name)) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
                Err(e) => return Err(e.into()),
            };
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        })?;
        raw.into_iter()
            .map(|(k, v)| decode(table_name, &k, &v).map(|t| (k, t)))
            .collect()
    }
}

fn decode<T: DeserializeOwned>(table: &str, key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::new(format!("decode {table}/{key}: {e}")))
}

/// Encodes a record for [`Store::batch`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::new(format!("encode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.redb");
        {
            let s = Store::open(&path).unwrap();
            s.put("t", "a", &vec![1, 2]).unwrap();
            s.put("t", "b", &vec![3]).unwrap();
            s.batch(
                "t",
                &[("c".into(), encode(&vec![4]).unwrap())],
                &["a".into()],
            )
            .unwrap();
            // A deferred write is visible at once, and durable after the next durable one.
            s.put_deferred("t", "d", &vec![5]).unwrap();
            assert_eq!(s.get::<Vec<i32>>("t", "d").unwrap(), Some(vec![5]));
            s.put("t", "e", &vec![6]).unwrap();
            s.put_deferred("t", "f", &vec![7]).unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(&path).unwrap();
        let all: Vec<(String, Vec<i32>)> = s.list("t").unwrap();
        assert_eq!(
            all,
            vec![
                ("b".into(), vec![3]),
                ("c".into(), vec![4]),
                ("d".into(), vec![5]),
                ("e".into(), vec![6]),
                ("f".into(), vec![7])
            ]
        );
        assert_eq!(s.get::<Vec<i32>>("t", "a").unwrap(), None);
        assert_eq!(s.get::<Vec<i32>>("missing", "a").unwrap(), None);
        assert!(s.list::<i32>("missing").unwrap().is_empty());

        let tx = s.db().unwrap().begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("schema_version", b"99".as_slice())
            .unwrap();
        tx.commit().unwrap();
        drop(s);
        let e = Store::open(&path).unwrap_err();
        assert!(e.to_string().contains("schema version 99"), "{e}");
    }

    /// A full disk fails a write; the store opens the database again and, once there is
    /// space, works as before, with every record written before the failure and none of the
    /// failed one.
    #[test]
    fn a_full_disk_is_survived_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("small");
        std::fs::create_dir_all(&mnt).unwrap();
        rustix::mount::mount(
            "berth-store-test",
            &mnt,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            c"size=4m",
        )
        .expect("mount a tmpfs (the tests run as root)");
        struct Unmount(std::path::PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
            }
        }
        let _unmount = Unmount(mnt.clone());
        let s = Store::open(&mnt.join("meta.redb")).unwrap();
        s.put("t", "before", &"kept".to_string()).unwrap();
        // Fill the filesystem.
        let filler = mnt.join("filler");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&filler).unwrap();
            let block = vec![0u8; 64 << 10];
            while f.write_all(&block).is_ok() {}
            let _ = f.sync_all();
        }
        let big = "x".repeat(512 << 10);
        let mut failed = false;
        for i in 0..64 {
            if s.put("t", &format!("k{i}"), &big).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "no write failed on a full filesystem");
        std::fs::remove_file(&filler).unwrap();
        s.put("t", "after", &"written".to_string())
            .expect("the store works again once there is space");
        assert_eq!(
            s.get::<String>("t", "before").unwrap().as_deref(),
            Some("kept")
        );
        assert_eq!(
            s.get::<String>("t", "after").unwrap().as_deref(),
            Some("written")
        );
    }
}
