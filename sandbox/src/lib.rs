//! Pod sandboxes and containers for berth: the containerd shim v2 client and the events
//! service shims publish to. Sandbox and container lifecycles build on these.
#![warn(missing_docs)]

pub mod container;
pub mod error;
pub mod logs;
pub mod pod;
pub mod registrar;
pub mod runsc;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod stats;
pub mod users;

pub use error::{Error, ErrorKind, Result};

/// Now, in nanoseconds since the Unix epoch (the unit of every CRI timestamp).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
