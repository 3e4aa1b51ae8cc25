//! `delete`: after a task's shim died, removes what the runtime kept of the task and
//! unmounts its rootfs, then prints a `DeleteResponse` (killed: 137) for the caller.

use std::io::Write;
use std::path::PathBuf;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::{Message, MessageField};

use crate::args::Args;
use crate::runtime::{Runtime, args};

pub fn run(a: &Args) -> Result<(), String> {
    let bundle = match &a.bundle {
        Some(b) => PathBuf::from(b),
        None => std::env::current_dir().map_err(|e| format!("working directory: {e}"))?,
    };
    // The runtime the task was created with; a task that never got that far has none.
    if let Some(runtime) = Runtime::load(&bundle)
        && let Err(e) = runtime.run(
            None,
            Some(&bundle.join("log.json")),
            &args([&"delete", &"--force", &a.id]),
            None,
        )
        && !e.contains("does not exist")
        && !e.contains("not found")
    {
        return Err(e);
    }
    crate::mount::unmount_all(&bundle.join("rootfs"));
    let resp = api::DeleteResponse {
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: MessageField::some(crate::events::timestamp(std::time::SystemTime::now())),
        ..Default::default()
    };
    let bytes = resp
        .write_to_bytes()
        .map_err(|e| format!("encode the answer: {e}"))?;
    let mut out = std::io::stdout();
    out.write_all(&bytes)
        .and_then(|_| out.flush())
        .map_err(|e| format!("print the answer: {e}"))
}
