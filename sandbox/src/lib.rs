//! Pod sandboxes and containers for berth: the containerd shim v2 client and the events
//! service shims publish to. Sandbox and container lifecycles build on these.
#![warn(missing_docs)]

pub mod container;
pub mod error;
pub mod logs;
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
pub mod session;
pub mod shim;
pub mod spec;
pub mod stats;
pub mod users;

pub use error::{Error, ErrorKind, Result};

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
