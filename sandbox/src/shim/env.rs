//! How berth starts shims, and how long it waits for them.

use std::path::PathBuf;
use std::time::Duration;

/// Deadline of `<shim> start` and `<shim> delete` (each runs the shim binary, which exits).
pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of the task API calls that run the OCI runtime to create or start a process
/// (Create, Start, Exec): runc can be slow on a loaded node.
pub(crate) const RUNTIME_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of every other task API call (State, Kill, Delete, Connect, Update, CloseIO,
/// ResizePty, Shutdown): a shim that cannot answer one of these in this long is broken.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of connecting to a shim's socket: a stopped shim's listen backlog fills up, and
/// connecting then waits for as long as it stays stopped.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How shims are started: what berth tells them about itself.
#[derive(Debug, Clone)]
pub struct ShimEnv {
    /// The containerd namespace (`k8s.io`, as the kubelet's containerd uses).
    pub namespace: String,
    /// berth's gRPC socket: passed as `-address`; shims derive their socket names from it.
    pub grpc_address: PathBuf,
    /// berth's ttrpc socket serving `containerd.services.events.ttrpc.v1.Events`.
    pub ttrpc_address: PathBuf,
    /// The binary shims may call to publish events (berth itself).
    pub publish_binary: PathBuf,
}
