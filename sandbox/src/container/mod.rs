//! Containers inside pods: a second (third, …) task in the pod's shim, joining the pause
//! container's namespaces, on its own writable snapshot over the image's layers.
//!
//! ```text
//!   CreateContainer ──► Created ──StartContainer──► Running ──exit (event)──► Exited
//!                          │                                                   │
//!                          └──────────────── RemoveContainer ◄─────────────────┘
//! ```
//!
//! The shim writes the container's stdout/stderr to fifos in the container's directory;
//! berth copies them into the CRI log ([`crate::logs`]). When the init process exits the
//! shim's exit event records exit code, time and reason (`OOMKilled` after an OOM event), and
//! the task is deleted from the shim so the shim unmounts the rootfs.

mod attach;
mod config;
mod create;
mod exec;
mod exit;
mod record;
mod remove;
mod start;
mod state;
mod stats;
mod status;
mod stop;
mod update;
pub(crate) mod volumes;

pub use config::*;
pub use exec::{EXEC_OUTPUT_LIMIT, ExecOutput};
pub use record::*;
pub use stats::{ContainerUsage, LAYER_USAGE_TTL};
pub use stop::signal_number;
