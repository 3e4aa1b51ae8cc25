//! Pod sandboxes: the pause container under a shim v2, its network namespace and CNI
//! attachment, its files (`hostname`, `resolv.conf`, `hosts`, `/dev/shm`), its snapshot.
//!
//! State machine (persisted in the `sandboxes` table; CRI state in brackets):
//!
//! ```text
//!   RunPodSandbox ──► NotReady (recorded first, so a crash leaves a record to clean up)
//!        │  netns, CNI ADD, files, shm, snapshot, shim, task start
//!        ▼
//!      Ready [SANDBOX_READY] ──pause exits (event) / StopPodSandbox──► NotReady [SANDBOX_NOTREADY]
//!                                                                        │ RemovePodSandbox
//!                                                                        ▼
//!                                                                     (gone)
//! ```
//!
//! Every step of RunPodSandbox registers its undo; a failure runs them in reverse and, if an
//! undo itself fails, keeps the pod as NotReady so a later Stop/Remove finishes the job.

mod config;
mod files;
mod metrics;
mod port_forward;
mod record;
mod remove;
mod run;
mod state;
mod status;
mod stop;

pub use config::*;
pub(crate) use files::unmount;
pub use metrics::{ContainerMetrics, PodMetrics};
pub use record::*;
