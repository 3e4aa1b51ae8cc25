//! The shim's log: one `level=… msg=…` line per event, written to the bundle's `log` fifo,
//! which its caller reads into its own log (berth at debug level, as it does the Go shim's).
//! Writes never block: when nobody reads the fifo (berth restarting) a line is dropped
//! rather than the shim stalling.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static SINK: OnceLock<std::fs::File> = OnceLock::new();
static DEBUG: AtomicBool = AtomicBool::new(false);

/// Opens `path` (the bundle's `log` fifo) for the log; without a reader the log is off.
pub fn init(path: &std::path::Path, debug: bool) {
    DEBUG.store(debug, Ordering::Relaxed);
    let fd: Result<OwnedFd, _> = rustix::fs::open(
        path,
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    );
    if let Ok(fd) = fd {
        let _ = SINK.set(std::fs::File::from(fd));
    }
}

/// Whether debug lines are written.
pub fn debug_enabled() -> bool {
    DEBUG.load(Ordering::Relaxed)
}

/// Writes one line.
pub fn write(level: &str, msg: std::fmt::Arguments<'_>) {
    let Some(mut f) = SINK.get() else {
        return;
    };
    let line = format!("level={level} msg=\"{}\"\n", msg.to_string().escape_debug());
    // One write call per line: the fifo keeps lines up to PIPE_BUF whole.
    let _ = f.write(line.as_bytes());
}

macro_rules! info {
    ($($t:tt)*) => { $crate::log::write("info", format_args!($($t)*)) };
}
macro_rules! warning {
    ($($t:tt)*) => { $crate::log::write("warning", format_args!($($t)*)) };
}
macro_rules! debug {
    ($($t:tt)*) => {
        if $crate::log::debug_enabled() {
            $crate::log::write("debug", format_args!($($t)*))
        }
    };
}
pub(crate) use {debug, info, warning};
