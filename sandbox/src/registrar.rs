//! Name reservation, as containerd's `registrar`: a pod or container name is reserved before any
//! work starts, so two concurrent RunPodSandbox calls with the same metadata cannot both build
//! a pod. The reservation is a guard: dropped without [`Reservation::commit`] (an early `?`, a
//! failed step, a cancelled future) it releases the name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// name → key (the id that holds it).
#[derive(Debug, Clone, Default)]
pub struct Registrar {
    names: Arc<Mutex<HashMap<String, String>>>,
}

/// A held name; released on drop unless committed.
#[derive(Debug)]
#[must_use = "dropping the reservation releases the name"]
pub struct Reservation {
    names: Arc<Mutex<HashMap<String, String>>>,
    name: String,
    committed: bool,
}

impl Registrar {
    /// Reserves `name` for `key`. Reserving the same pair again succeeds (containerd does the
    /// same); a name held by another key is `AlreadyExists`-style refused, naming the holder.
    pub fn reserve(&self, name: &str, key: &str) -> Result<Reservation> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        match names.get(name) {
            Some(holder) if holder != key => {
                return Err(Error::AlreadyExists(format!(
                    "name {name:?} is reserved for {holder:?}"
                )));
            }
            Some(_) => {}
            None => {
                names.insert(name.to_string(), key.to_string());
            }
        }
        Ok(Reservation {
            names: self.names.clone(),
            name: name.to_string(),
            committed: false,
        })
    }

    /// Releases `name` (when the pod or container it named is removed).
    pub fn release(&self, name: &str) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Releases whatever name `key` holds.
    pub fn release_key(&self, key: &str) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, k| k != key);
    }

    /// Every key holding a name: the ids of objects that exist or are being made.
    pub fn keys(&self) -> std::collections::HashSet<String> {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The key holding `name`.
    pub fn holder(&self, name: &str) -> Option<String> {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

impl Reservation {
    /// Keeps the name reserved after the guard is gone.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.committed {
            self.names
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_commit_release() {
        let r = Registrar::default();
        let a = r.reserve("pod_ns_uid_0", "id1").unwrap();
        let e = r.reserve("pod_ns_uid_0", "id2").unwrap_err();
        assert!(e.to_string().contains("id1"), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::AlreadyExists);
        a.commit();
        assert_eq!(r.holder("pod_ns_uid_0").as_deref(), Some("id1"));
        r.reserve("pod_ns_uid_0", "id1").unwrap().commit();
        r.release("pod_ns_uid_0");
        assert!(r.reserve("pod_ns_uid_0", "id2").is_ok());
    }

    #[test]
    fn a_dropped_reservation_frees_the_name() {
        let r = Registrar::default();
        {
            let _held = r.reserve("c", "id1").unwrap();
            assert!(r.reserve("c", "id2").is_err());
        }
        assert!(r.holder("c").is_none());
        // A cancelled future drops its guard the same way.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r2 = r.clone();
        rt.block_on(async move {
            let fut = async {
                let _held = r2.reserve("c", "id3").unwrap();
                std::future::pending::<()>().await;
            };
            let _ = tokio::time::timeout(std::time::Duration::from_millis(10), fut).await;
        });
        assert!(r.holder("c").is_none());
    }
}
