//! What the node's Status call reports of the runtime: whether the pod network is configured
//! and whether each handler's shim is installed. Read anew on every call, so that a conflist
//! or a shim dropped in later is seen without a restart.

use std::path::PathBuf;

use super::Runtime;

/// Whether pods can get a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStatus {
    /// A usable network config is there.
    pub ready: bool,
    /// Why not, as a CamelCase word (`NetworkPluginNotReady`); empty when ready.
    pub reason: String,
    /// Which network, or what is wrong with the config.
    pub message: String,
}

/// One handler and its shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerStatus {
    /// The handler's name.
    pub name: String,
    /// Its runtime type (`io.containerd.runc.v2`, …).
    pub runtime_type: String,
    /// The shim binary: its path when found, else its name.
    pub shim: PathBuf,
    /// Why the shim cannot run, if it cannot.
    pub missing: Option<String>,
}

impl Runtime {
    /// The pod network's state.
    pub fn network_status(&self) -> NetworkStatus {
        match self.cni.network() {
            Ok(net) => NetworkStatus {
                ready: true,
                reason: String::new(),
                message: format!("network {:?} from {}", net.name, net.source.display()),
            },
            Err(e) => NetworkStatus {
                ready: false,
                reason: "NetworkPluginNotReady".into(),
                message: e.to_string(),
            },
        }
    }

    /// Every configured handler and whether its shim is installed.
    pub fn handler_status(&self) -> Vec<HandlerStatus> {
        self.cfg
            .handlers
            .iter()
            .map(|(name, h)| {
                let found = crate::shim::find_shim(&h.shim, h.runtime_path.as_deref());
                HandlerStatus {
                    name: name.clone(),
                    runtime_type: h.runtime_type.clone(),
                    shim: found
                        .as_ref()
                        .map_or_else(|_| PathBuf::from(&h.shim), Clone::clone),
                    missing: found.err().map(|e| e.to_string()),
                }
            })
            .collect()
    }
}
