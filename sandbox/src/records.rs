//! A table of records (pods, containers) as berth keeps it: in memory for reads, in the
//! metadata store for restarts, with the names the kubelet gave them and a lock per id.
//!
//! Records are shared, not copied: the map holds `Arc`s, so a List takes a pointer per
//! record under a read lock held for microseconds, and what only creation and recovery
//! read (the OCI spec, the CNI result) sits behind its own `Arc` inside the record, so
//! that a change of state copies the small part. A change is copy-on-write: the new
//! record is written to the store and only then swapped in (so memory never says what the
//! disk does not), one writer at a time per table, and readers never wait for the disk.
//! What berth merely observed (an exit, a dead shim) is the exception: memory first, then
//! the store, best effort (see [`Records::observe`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use berth_store::Store;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::registrar::Registrar;

/// A record kept in a [`Records`] table.
pub(crate) trait Record:
    Serialize + DeserializeOwned + Clone + Send + Sync + 'static
{
    /// The store table.
    const TABLE: &'static str;
    /// The record's id.
    fn id(&self) -> &str;
}

/// How soon a change must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Before the call returns (the change is what the caller acts on next).
    Now,
    /// With the next durable write (a restart may lose it: the record says what it said
    /// before, and recovery finds out again).
    Soon,
}

/// One table.
pub(crate) struct Records<R> {
    db: Store,
    items: RwLock<HashMap<String, Arc<R>>>,
    /// One read-modify-write at a time (the disk write included), apart from readers.
    writer: Mutex<()>,
    names: Registrar,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl<R: Record> Records<R> {
    /// An empty table over `db` (see [`load`](Self::load)).
    pub(crate) fn new(db: Store) -> Self {
        Records {
            db,
            items: RwLock::default(),
            writer: Mutex::default(),
            names: Registrar::default(),
            locks: Mutex::default(),
        }
    }

    /// Every record in the store (at start; they are not in memory until
    /// [`keep`](Self::keep)).
    pub(crate) fn load(&self) -> Result<Vec<R>> {
        Ok(self
            .db
            .list::<R>(R::TABLE)
            .map_err(Error::Store)?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// The names registrar (kubelet name → id).
    pub(crate) fn names(&self) -> &Registrar {
        &self.names
    }

    /// The record `id`.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<R>> {
        self.read().get(id).cloned()
    }

    /// Every record, in no order.
    pub(crate) fn all(&self) -> Vec<Arc<R>> {
        self.read().values().cloned().collect()
    }

    /// The records `f` accepts.
    pub(crate) fn filter(&self, f: impl Fn(&R) -> bool) -> Vec<Arc<R>> {
        self.read().values().filter(|r| f(r)).cloned().collect()
    }

    /// Every id.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// The id `id` names: itself, or the one id it is a prefix of (as crictl abbreviates
    /// them). `what` names the kind in errors ("pod sandbox", "container").
    pub(crate) fn resolve(&self, id: &str, what: &str) -> Result<String> {
        if id.is_empty() {
            return Err(Error::Invalid(format!("{what} id is empty")));
        }
        let items = self.read();
        if items.contains_key(id) {
            return Ok(id.to_string());
        }
        let mut m = items.keys().filter(|k| k.starts_with(id));
        match (m.next(), m.next()) {
            (Some(one), None) => Ok(one.clone()),
            (Some(_), Some(_)) => Err(Error::Invalid(format!(
                "{what} id prefix {} is ambiguous",
                crate::shown(id)
            ))),
            _ => Err(Error::NotFound(format!(
                "{what} {} not found",
                crate::shown(id)
            ))),
        }
    }

    /// Stores `rec` (durably) and keeps it.
    pub(crate) fn put(&self, rec: R) -> Result<Arc<R>> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        off_worker(|| self.db.put(R::TABLE, rec.id(), &rec)).map_err(Error::Store)?;
        let rec = Arc::new(rec);
        self.write().insert(rec.id().to_string(), rec.clone());
        Ok(rec)
    }

    /// Writes `rec` to the store only: the intent record of a creation still under way,
    /// which a restart finds and undoes; memory learns of it with [`put`](Self::put).
    pub(crate) fn persist(&self, rec: &R) -> Result<()> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        off_worker(|| self.db.put(R::TABLE, rec.id(), rec)).map_err(Error::Store)
    }

    /// Keeps `rec` in memory only (loaded from the store, or a change a restart learns
    /// again from the shim).
    pub(crate) fn keep(&self, rec: R) {
        self.write().insert(rec.id().to_string(), Arc::new(rec));
    }

    /// Changes record `id` with `f`: written to the store as `durability` says, then
    /// swapped in. `None` if there is no such record.
    pub(crate) fn update(
        &self,
        id: &str,
        durability: Durability,
        f: impl FnOnce(&mut R),
    ) -> Result<Option<Arc<R>>> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cur) = self.get(id) else {
            return Ok(None);
        };
        let mut next = R::clone(&cur);
        f(&mut next);
        match durability {
            Durability::Now => off_worker(|| self.db.put(R::TABLE, id, &next)),
            // Not synced: no wait worth handing the worker off for.
            Durability::Soon => self.db.put_deferred(R::TABLE, id, &next),
        }
        .map_err(Error::Store)?;
        let next = Arc::new(next);
        self.write().insert(id.to_string(), next.clone());
        Ok(Some(next))
    }

    /// Records what berth observed of `id` (an exit, a dead shim): memory is changed
    /// whether or not the store takes the write, which the record's next change retries;
    /// a restart learns it again from the shim. The store's error is returned.
    pub(crate) fn observe(&self, id: &str, f: impl FnOnce(&mut R)) -> Result<Option<Arc<R>>> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(cur) = self.get(id) else {
            return Ok(None);
        };
        let mut next = R::clone(&cur);
        f(&mut next);
        let next = Arc::new(next);
        self.write().insert(id.to_string(), next.clone());
        off_worker(|| self.db.put(R::TABLE, id, next.as_ref())).map_err(Error::Store)?;
        Ok(Some(next))
    }

    /// Deletes record `id` from the store, then from memory, with its lock and its name.
    pub(crate) fn remove(&self, id: &str) -> Result<()> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        off_worker(|| self.db.delete(R::TABLE, id)).map_err(Error::Store)?;
        self.forget(id);
        Ok(())
    }

    /// Deletes record `id` from the store and memory, keeping its name reserved (a
    /// creation rolled back: the call that reserved the name releases it).
    pub(crate) fn remove_record(&self, id: &str) -> Result<()> {
        let _w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.write().remove(id);
        off_worker(|| self.db.delete(R::TABLE, id)).map_err(Error::Store)
    }

    /// Drops record `id` from memory only, with its lock and its name (a creation rolled
    /// back before its record was stored, or whose removal from the store failed and is
    /// left to the orphan sweep).
    pub(crate) fn forget(&self, id: &str) {
        self.write().remove(id);
        self.names.release_key(id);
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The lock serialising the lifecycle calls of `id`.
    pub(crate) fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// How many ids have a lock (for tests: locks go with their records).
    #[cfg(test)]
    pub(crate) fn locks_held(&self) -> usize {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<R>>> {
        self.items.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<R>>> {
        self.items.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs a store write (a synced commit, ~0.5 ms) so that it does not stall the async worker
/// it is called on: on berth's multi-thread runtime, through `block_in_place`, which hands
/// the worker's other tasks to another thread for the time the disk takes. Elsewhere (a
/// blocking thread, a single-threaded test runtime, no runtime) it just runs.
fn off_worker<T>(write: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(write)
        }
        _ => write(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    struct Thing {
        id: String,
        n: u32,
    }

    impl Record for Thing {
        const TABLE: &'static str = "things";
        fn id(&self) -> &str {
            &self.id
        }
    }

    fn table(dir: &std::path::Path) -> Records<Thing> {
        Records::new(Store::open(&dir.join("meta.db")).unwrap())
    }

    fn thing(id: &str, n: u32) -> Thing {
        Thing { id: id.into(), n }
    }

    #[test]
    fn changes_reach_the_store_and_locks_go_with_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        t.put(thing("a1", 1)).unwrap();
        t.put(thing("b2", 2)).unwrap();
        let before = t.get("a1").unwrap();
        t.update("a1", Durability::Now, |r| r.n = 10).unwrap();
        // A reader's copy is its own: the change made a new record.
        assert_eq!(before.n, 1);
        assert_eq!(t.get("a1").unwrap().n, 10);
        assert!(
            t.update("zz", Durability::Now, |r| r.n = 0)
                .unwrap()
                .is_none()
        );
        let _ = t.lock("a1");
        let _ = t.lock("b2");
        t.names().reserve("name-a", "a1").unwrap().commit();
        t.remove("a1").unwrap();
        assert!(t.get("a1").is_none());
        assert_eq!(t.locks_held(), 1);
        assert!(t.names().holder("name-a").is_none());
        drop(t);
        // What a restart finds.
        let again = table(dir.path());
        assert_eq!(again.load().unwrap(), vec![thing("b2", 2)]);
    }

    #[test]
    fn ids_resolve_from_unique_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(dir.path());
        for id in ["abc1", "abc2", "xyz"] {
            t.keep(thing(id, 0));
        }
        assert_eq!(t.resolve("x", "pod sandbox").unwrap(), "xyz");
        assert_eq!(t.resolve("abc1", "pod sandbox").unwrap(), "abc1");
        let e = t.resolve("q", "pod sandbox").unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::NotFound);
        let e = t.resolve("abc", "container").unwrap_err();
        assert_eq!(e.to_string(), "container id prefix \"abc\" is ambiguous");
        assert!(t.resolve("", "container").is_err());
    }
}
