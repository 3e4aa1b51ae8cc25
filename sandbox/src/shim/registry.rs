//! The shims berth holds a connection to: one per pod, with the shim's log pipe and, once
//! its watch learned it, its pid.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use super::{Shim, ShimLog};

/// Pod id → its shim.
#[derive(Default)]
pub(crate) struct Shims {
    shims: RwLock<HashMap<String, Shim>>,
    logs: Mutex<HashMap<String, ShimLog>>,
    /// Pod id → (shim address, pid), as the shim's watch learned it.
    pids: Mutex<HashMap<String, (String, u32)>>,
}

impl Shims {
    /// The shim of pod `pod_id`.
    pub(crate) fn get(&self, pod_id: &str) -> Option<Shim> {
        self.shims
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(pod_id)
            .cloned()
    }

    /// The pods that have a shim.
    pub(crate) fn pods(&self) -> Vec<String> {
        self.shims
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Makes `s` the shim of pod `pod_id`.
    pub(crate) fn insert(&self, pod_id: &str, s: Shim) {
        self.shims
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pod_id.to_string(), s);
    }

    /// Keeps the read end of the shim's log pipe (the shim blocks if nobody reads it).
    pub(crate) fn keep_log(&self, pod_id: &str, log: ShimLog) {
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pod_id.to_string(), log);
    }

    /// Notes the pid of pod `pod_id`'s shim at `address`.
    pub(crate) fn note_pid(&self, pod_id: &str, address: &str, pid: u32) {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pod_id.to_string(), (address.to_string(), pid));
    }

    /// The pid of pod `pod_id`'s shim at `address`, if its watch learned it.
    pub(crate) fn pid(&self, pod_id: &str, address: &str) -> Option<u32> {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(pod_id)
            .filter(|(a, _)| a == address)
            .map(|(_, p)| *p)
    }

    /// Forgets pod `pod_id`'s shim (shut down, or dead).
    pub(crate) fn forget(&self, pod_id: &str) {
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod_id);
        self.shims
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod_id);
        self.logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(pod_id);
    }
}
