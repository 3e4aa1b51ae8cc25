//! Pod sandboxes and containers for berth, behind the CRI calls the agent converts.
//!
//! ```text
//!  runtime::Runtime ─── the CRI lifecycle, one verb per file:
//!   │   pod/        run.rs stop.rs remove.rs status.rs port_forward.rs
//!   │               record.rs (PodRecord, PodState) state.rs (record changes) files.rs config.rs
//!   │   container/  create.rs start.rs stop.rs remove.rs status.rs exec.rs attach.rs
//!   │               update.rs exit.rs stats.rs record.rs state.rs config.rs
//!   │   runtime/spare.rs  the spare shim      runtime/node.rs  network and handler status
//!   │   recover.rs  restart (recover/dead_shim.rs: after a shim died)   reaper.rs  orphans
//!   │
//!   ├─ records   tables of records (map, names, per-id locks) over the metadata store
//!   ├─ shim/     the shim v2 binary (binary.rs), the task API client (client.rs), events,
//!   │            the registry of pods' shims, the spare shim, watches of shim processes
//!   ├─ spec/     OCI specs: typed model (oci.rs), pure builders (pause.rs, container.rs)
//!   │            over caps.rs, resources.rs and what they need of the host (host.rs)
//!   ├─ logs      CRI log files from container output      ├─ users   image accounts
//!   ├─ userns    pods in user namespaces: id mappings, the idmapped view of the layers
//!   ├─ cdi       CDI devices: spec files, names, their edits applied to a spec
//!   ├─ nri       NRI: pods and containers as NRI's messages, plugins' adjustments applied
//!   │            to a spec, their updates, the events (`berth-nri` holds the plugins)
//!   ├─ seccomp   profiles: the default one, Localhost files ├─ stats   usage (cgroups:
//!   ├─ metrics   cAdvisor-style pod metrics                 │          berth-cgroups)
//!   └─ safefile, process, registrar, runsc, error
//! ```
//!
//! Images and snapshots come from `berth-image`, records from `berth-store`, network
//! namespaces and CNI from `berth-network`, and the stdio of an exec or attach session (as
//! channels, [`berth_stream::Io`]) from `berth-stream`; nothing here speaks gRPC or HTTP.
//!
//! Where a change goes: a new CRI field lands in the config types (`container/config.rs`,
//! `pod/config.rs`) and is used where the spec is built (`spec/`) or where its verb is
//! (`container/<verb>.rs`); a new error in `error.rs`, with its kind from `berth-errdefs`.
#![warn(missing_docs)]

pub mod cdi;
pub mod container;
pub mod error;
pub mod logs;
pub mod metrics;
pub mod nri;
pub mod pod;
pub mod process;
mod reaper;
mod records;
mod recover;
pub mod registrar;
pub mod runsc;
pub mod runtime;
pub mod safefile;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod stats;
pub mod userns;
pub mod users;

pub use error::{Classify, Error, ErrorKind, Result};

#[cfg(test)]
mod records_v1_tests;

/// Now, in nanoseconds since the Unix epoch (the unit of every CRI timestamp).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// How much of a caller's value an error message quotes.
const SHOWN: usize = 64;

/// `s` quoted for an error message, cut to a readable length with its full length said: an
/// error must stay small whatever the caller sent (gRPC carries it in a trailer).
pub fn shown(s: &str) -> String {
    if s.len() <= SHOWN {
        return format!("{s:?}");
    }
    let mut end = SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..end], s.len())
}
