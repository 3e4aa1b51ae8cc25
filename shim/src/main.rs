//! `containerd-shim-berth-v1`: berth's own containerd shim v2.
//!
//! It speaks the task API (`containerd.task.v2.Task` over ttrpc) that containerd and berth
//! speak to shims, and drives an OCI runtime binary, runc or crun (`BinaryName` in the
//! runc options), one shim per pod. It is built to cost little on a node: no async runtime,
//! a thread per request only while the request runs, and no copying of a container's output
//! when it has no terminal: the container writes into berth's fifos itself.
//!
//! The contract with its caller is containerd's:
//! - `<shim> -namespace <ns> -address <caller socket> -publish-binary <bin> -id <id> start`,
//!   run in the bundle directory, starts the daemon (or finds the one already serving the
//!   pod named by the `io.kubernetes.cri.sandbox-id` annotation) and prints its address;
//! - `<shim> … -id <id> -bundle <dir> delete` cleans up after a task whose shim died and
//!   prints a `DeleteResponse`;
//! - the daemon publishes task events to `$TTRPC_ADDRESS`, logs to the bundle's `log` fifo,
//!   reaps every child as a subreaper and exits on `Shutdown` once it has no tasks.
//!
//! ```text
//!  main.rs → args.rs → start.rs (start the daemon) | delete.rs | server.rs (the daemon)
//!  server.rs  accepts ttrpc connections (frame.rs: ttrpc's framing), a thread per request
//!  task/      the task service: mod.rs dispatches each call to a verb file (create.rs,
//!             start.rs: Start and Delete, signal.rs: Pause/Resume/Kill, exec.rs,
//!             query.rs: State and Pids, resources.rs: Update/Wait/Stats/Connect, exit.rs)
//!  container.rs  a task    process.rs  its processes and the states they pass through
//!  runtime.rs  running runc or crun    stdio.rs  a process's stdio and terminal
//!  reaper.rs, oom.rs, stats.rs (cgroup metrics, read by berth-cgroups), mount.rs, events.rs
//! ```
//!
//! Where a change goes: a new task verb is a method in `task/` named in `task/mod.rs`'s
//! dispatch; a verb that acts on a process checks `Process::check` with a `Verb`, whose
//! table in `process.rs` says in which states it may.

mod args;
mod container;
mod delete;
mod events;
mod frame;
mod log;
mod mount;
mod oom;
mod process;
mod reaper;
mod runtime;
mod server;
mod start;
mod stats;
mod status;
mod stdio;
mod task;

use std::io::Write;

fn main() {
    let args = match args::Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => fail(&e),
    };
    let res = match args.action {
        args::Action::Version => {
            let mut out = std::io::stdout();
            let _ = writeln!(
                out,
                "containerd-shim-berth-v1:\n  Version: {}\n  Task API: v2",
                env!("CARGO_PKG_VERSION")
            );
            Ok(())
        }
        args::Action::Start => start::run(&args),
        args::Action::Delete => delete::run(&args),
        args::Action::Serve => server::run(&args),
    };
    if let Err(e) = res {
        fail(&e);
    }
}

/// Reports `msg` on stderr (its caller shows it) and exits 1.
fn fail(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "containerd-shim-berth-v1: {msg}");
    std::process::exit(1);
}
