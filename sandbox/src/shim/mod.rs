//! containerd shim v2: launching a shim binary, talking `containerd.task.v2.Task` to it over
//! ttrpc, and cleaning up after one that died.
//!
//! Launch follows containerd: `<shim> -namespace <ns> -address <berth grpc socket>
//! -publish-binary <berth> -id <id> start`, run in the bundle directory with `TTRPC_ADDRESS`,
//! `GRPC_ADDRESS` and `NAMESPACE` set; the shim daemonizes and prints its own address. A plain
//! `unix://…` means task API v2 (Debian's 1.6 runc shim, the Kata and runsc shims); JSON with
//! `"version":3` is containerd 2.x's task v3, which berth reports as unsupported for now.
//! The address is written to `<bundle>/address` so a restarted berth can reconnect.

mod binary;
mod client;
mod env;
pub mod events;
pub(crate) mod registry;
pub(crate) mod spare;
pub mod watch;

pub use binary::*;
pub use client::*;
pub use env::ShimEnv;

/// SIGKILL, as the task API's Kill takes it.
pub(crate) const SIGKILL: u32 = 9;
