//! Fixtures for berth's end-to-end tests: a real `docker-registry` on 127.0.0.1, OCI images
//! built here and pushed to it, and a real `berth` process with its own root, state and socket,
//! driven over its CRI socket as the kubelet and crictl drive it.
//!
//! Every fixture owns what it started (by PID, never by name) and tears it down in `Drop`,
//! also when the test panics.

pub mod berth;
pub mod image;
pub mod registry;

pub use berth::{Berth, Cri};
pub use image::{Compression, ImageBuilder, Layer};
pub use registry::Registry;

/// A free TCP port on 127.0.0.1 (the small race before the user binds it is accepted).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    f()
}

/// Sends `sig` to `pid` (a process this fixture started).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a PID we own and a valid signal number has no memory effects.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}
