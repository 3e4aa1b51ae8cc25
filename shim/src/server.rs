//! The daemon: its set-up, and the ttrpc server of the task API.
//!
//! ttrpc frames are a 10-byte header (length and stream id, big-endian u32s; type; flags)
//! and a protobuf body. A thread reads each connection; each request runs on a thread of its
//! own (a `Wait` blocks for as long as the process runs, and a runtime command must not hold
//! up a `State`), and answers under the connection's write lock.

use std::os::fd::FromRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use containerd_shim_protos::protobuf::Message;

use crate::args::Args;
use crate::frame::{read_frame, write_frame};
use crate::log::{info, warning};
use crate::status::{Reply, Status};
use crate::task::Service;

/// Stack of a request thread: requests run runtime commands and parse small messages.
const REQUEST_STACK: usize = 256 * 1024;

/// Runs the daemon: listens on fd 3 (from `start`), serves until `Shutdown`.
pub fn run(args: &Args) -> Result<(), String> {
    // SAFETY: ignoring SIGPIPE; a write to a closed socket or fifo then fails with EPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // SAFETY: `start` hands the listening socket over as fd 3, and nothing else owns it.
    let listener = unsafe { UnixListener::from_raw_fd(3) };
    let _ = rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::CLOEXEC);
    let socket = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()));
    crate::log::init(std::path::Path::new("log"), args.debug);
    // SAFETY: prctl with plain integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "become a subreaper: {}",
            std::io::Error::last_os_error()
        ));
    }
    let events = crate::events::Publisher::start(
        std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        args.namespace.clone(),
    );
    let service = Service::new(args.namespace.clone(), events, socket.clone());
    info!(
        "serving task {} on {}",
        args.id,
        socket
            .as_deref()
            .unwrap_or(std::path::Path::new("?"))
            .display()
    );
    for conn in listener.incoming() {
        match conn {
            Ok(c) => {
                let svc = service.clone();
                let _ = std::thread::Builder::new()
                    .name("conn".into())
                    .stack_size(REQUEST_STACK)
                    .spawn(move || serve_connection(c, svc));
            }
            Err(e) => {
                warning!("accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

fn serve_connection(conn: UnixStream, service: Arc<Service>) {
    let Ok(writer) = conn.try_clone() else {
        return;
    };
    let writer = Arc::new(Mutex::new(writer));
    let mut reader = conn;
    loop {
        let (stream_id, kind, body) = match read_frame(&mut reader) {
            Ok(f) => f,
            Err(_) => return,
        };
        if kind != ttrpc::proto::MESSAGE_TYPE_REQUEST {
            continue;
        }
        let svc = service.clone();
        let writer = writer.clone();
        let spawned = std::thread::Builder::new()
            .name("request".into())
            .stack_size(REQUEST_STACK)
            .spawn(move || {
                let (resp, after) = match ttrpc::proto::Request::parse_from_bytes(&body) {
                    Ok(req) => svc.dispatch(&req.service, &req.method, &req.payload),
                    Err(e) => (
                        Err(Status::invalid(format!("bad request: {e}"))),
                        Reply::Continue,
                    ),
                };
                let resp = match resp {
                    Ok(payload) => ttrpc::proto::Response {
                        payload,
                        ..Default::default()
                    },
                    Err(s) => ttrpc::proto::Response {
                        status: protobuf::MessageField::some(s.into_proto()),
                        ..Default::default()
                    },
                };
                let bytes = resp.write_to_bytes().unwrap_or_default();
                {
                    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = write_frame(
                        &mut *w,
                        stream_id,
                        ttrpc::proto::MESSAGE_TYPE_RESPONSE,
                        &bytes,
                    );
                }
                if after == Reply::Exit {
                    svc.exit();
                }
            });
        if let Err(e) = spawned {
            warning!("no thread for a request: {e}");
        }
    }
}
