//! A process's stdio, from the paths its caller gave (fifos it made, as berth and containerd
//! do; a regular file or `file://` path is appended to).
//!
//! Without a terminal nothing is copied: the runtime hands its own stdio to the container, so
//! the container gets the fifos themselves. Its stdout and stderr are opened read-write, so
//! a write never fails while the caller is away (berth restarting): the data waits in the
//! pipe. Its stdin is the fifo's read side, and the shim holds a write side (the "closer")
//! so that the container sees end-of-file only after `CloseIO` and its caller's writer
//! closed, never while the caller restarts.
//!
//! With a terminal the runtime sends the pty's master over a console socket; a thread
//! copies the master into the stdout fifo and another the stdin fifo into the master.

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

/// The stdio paths of a process.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// What the shim keeps of a process's stdio.
#[derive(Default)]
pub struct Kept {
    /// The write side of the stdin fifo the shim holds until `CloseIO`.
    closer: Mutex<Option<File>>,
    /// The pty master, with a terminal.
    master: Mutex<Option<File>>,
    /// The thread copying the master to stdout; joined (bounded) before the exit is told.
    output: Mutex<Option<JoinHandle<()>>>,
}

fn open(path: &Path, flags: OFlags) -> Result<File, String> {
    rustix::fs::open(path, flags | OFlags::CLOEXEC, Mode::from_raw_mode(0o600))
        .map(File::from)
        .map_err(|e| format!("open {}: {e}", path.display()))
}

fn path_of(p: &str) -> Result<PathBuf, String> {
    if let Some(rest) = p.strip_prefix("file://") {
        return Ok(PathBuf::from(rest));
    }
    if p.contains("://") {
        return Err(format!(
            "stdio {p:?}: only fifos and files are supported, not logging binaries"
        ));
    }
    Ok(PathBuf::from(p))
}

fn is_fifo(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_fifo())
}

/// Opens an output path for writing: a fifo read-write (never blocks, never EPIPE), a file
/// for appending.
fn open_output(p: &str) -> Result<File, String> {
    let path = path_of(p)?;
    if is_fifo(&path) {
        open(&path, OFlags::RDWR)
    } else {
        open(&path, OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE)
    }
}

/// Opens the stdin fifo's read side and the shim's write side of it.
fn open_stdin(p: &str) -> Result<(File, File), String> {
    let path = path_of(p)?;
    // Non-blocking, so that opening the read side does not wait for a writer; the file
    // status flags are then made blocking again for the container.
    let reader = open(&path, OFlags::RDONLY | OFlags::NONBLOCK)?;
    let closer = open(&path, OFlags::WRONLY | OFlags::NONBLOCK)?;
    rustix::fs::fcntl_setfl(&reader, OFlags::empty())
        .map_err(|e| format!("make {} blocking: {e}", path.display()))?;
    Ok((reader, closer))
}

/// A console socket the runtime sends a terminal's master to.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    fn new() -> Result<Self, String> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("berth-shim-pty-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| format!("console socket {}: {e}", path.display()))?;
        Ok(ConsoleSocket { listener, path })
    }

    /// The path to give the runtime (`--console-socket`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Receives the master the runtime sent (it did, once its command succeeded).
    fn receive(&self) -> Result<File, String> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let conn = loop {
            match self.listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return Err("the runtime sent no terminal".into());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(format!("console socket: {e}")),
            }
        };
        conn.set_nonblocking(false).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let mut name = [0u8; 4096];
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = rustix::net::RecvAncillaryBuffer::new(&mut space);
        rustix::net::recvmsg(
            conn.as_fd(),
            &mut [IoSliceMut::new(&mut name)],
            &mut cmsg,
            rustix::net::RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| format!("receive the terminal: {e}"))?;
        for msg in cmsg.drain() {
            if let rustix::net::RecvAncillaryMessage::ScmRights(mut fds) = msg
                && let Some(fd) = fds.next()
            {
                return Ok(File::from(fd));
            }
        }
        Err("the runtime's console message held no file descriptor".into())
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The stdio the runtime command gets, and what the shim keeps until the process is set up.
pub struct Prepared {
    pub stdio: Option<[Stdio; 3]>,
    pub console: Option<ConsoleSocket>,
    kept: Kept,
    stdin: Option<File>,
    stdout: Option<File>,
}

/// Opens a process's stdio before its runtime command runs.
pub fn prepare(p: &Paths) -> Result<Prepared, String> {
    let kept = Kept::default();
    if p.terminal {
        // The terminal replaces the runtime's stdio in the container.
        let (stdin, closer) = if p.stdin.is_empty() {
            (None, None)
        } else {
            let (r, c) = open_stdin(&p.stdin)?;
            (Some(r), Some(c))
        };
        *kept.closer.lock().unwrap_or_else(|e| e.into_inner()) = closer;
        let stdout = if p.stdout.is_empty() {
            None
        } else {
            Some(open_output(&p.stdout)?)
        };
        return Ok(Prepared {
            stdio: Some([Stdio::null(), Stdio::null(), Stdio::null()]),
            console: Some(ConsoleSocket::new()?),
            kept,
            stdin,
            stdout,
        });
    }
    let stdin = if p.stdin.is_empty() {
        Stdio::null()
    } else {
        let (r, c) = open_stdin(&p.stdin)?;
        *kept.closer.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        Stdio::from(r)
    };
    let stdout = if p.stdout.is_empty() {
        None
    } else {
        Some(open_output(&p.stdout)?)
    };
    let stderr = if p.stderr.is_empty() {
        Stdio::null()
    } else if p.stderr == p.stdout {
        match &stdout {
            Some(f) => Stdio::from(f.try_clone().map_err(|e| e.to_string())?),
            None => Stdio::null(),
        }
    } else {
        Stdio::from(open_output(&p.stderr)?)
    };
    let stdout = stdout.map_or(Stdio::null(), Stdio::from);
    Ok(Prepared {
        stdio: Some([stdin, stdout, stderr]),
        console: None,
        kept,
        stdin: None,
        stdout: None,
    })
}

/// A thread copying `from` into `to` until either ends.
fn copier(name: &str, mut from: File, mut to: File) -> Result<JoinHandle<()>, String> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| e.to_string())
}

impl Prepared {
    /// Once the runtime command succeeded: takes the terminal and starts its copiers.
    pub fn finish(self) -> Result<Kept, String> {
        let Some(console) = self.console else {
            return Ok(self.kept);
        };
        let master = console.receive()?;
        if let Some(input) = self.stdin {
            let to = master.try_clone().map_err(|e| e.to_string())?;
            copier("pty-in", input, to)?;
        }
        if let Some(out) = self.stdout {
            // The master reads EIO once the last process holding the terminal is gone.
            let from = master.try_clone().map_err(|e| e.to_string())?;
            let h = copier("pty-out", from, out)?;
            *self.kept.output.lock().unwrap_or_else(|e| e.into_inner()) = Some(h);
        }
        *self.kept.master.lock().unwrap_or_else(|e| e.into_inner()) = Some(master);
        Ok(self.kept)
    }
}

impl Kept {
    /// `CloseIO`: drops the shim's writer of stdin.
    pub fn close_stdin(&self) {
        self.closer.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// `ResizePty`.
    pub fn resize(&self, width: u32, height: u32) -> Result<(), String> {
        let g = self.master.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = g.as_ref() else {
            return Err("the process has no terminal".into());
        };
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX.into()) as u16,
            ws_col: width.min(u16::MAX.into()) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        use std::os::fd::AsRawFd;
        // SAFETY: TIOCSWINSZ on an open pty master with a valid winsize.
        if unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(format!("resize: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// After the process exited: waits (at most `within`) for its terminal output to be
    /// copied, then lets go of the terminal and stdin.
    pub fn finish_after_exit(&self, within: Duration) {
        let h = self.output.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = h {
            let deadline = std::time::Instant::now() + within;
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        self.master.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.closer.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(p: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    #[test]
    fn stdin_reaches_end_of_file_only_after_close_io_and_the_callers_close() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("stdin");
        mkfifo(&p);
        let prep = prepare(&Paths {
            stdin: p.display().to_string(),
            ..Default::default()
        })
        .unwrap();
        let kept = prep.finish().unwrap();
        // The container's side is what the runtime got; here, a reader of our own.
        let mut reader = File::open(&p).unwrap();
        let mut caller = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        caller.write_all(b"hi").unwrap();
        drop(caller);
        let mut buf = [0u8; 2];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        // The caller closed, but the shim's writer is open: no end-of-file yet.
        rustix::fs::fcntl_setfl(&reader, OFlags::NONBLOCK).unwrap();
        assert_eq!(
            reader.read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        kept.close_stdin();
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn outputs_are_fifos_opened_read_write_or_files_appended() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("out");
        mkfifo(&fifo);
        // No reader: opening read-write neither blocks nor fails.
        let mut f = open_output(&fifo.display().to_string()).unwrap();
        f.write_all(b"x").unwrap();
        let file = d.path().join("log");
        std::fs::write(&file, "a").unwrap();
        open_output(&format!("file://{}", file.display()))
            .unwrap()
            .write_all(b"b")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "ab");
        assert!(open_output("binary:///usr/bin/logger").is_err());
    }
}
