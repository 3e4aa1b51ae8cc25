//! Container logs in the CRI format the kubelet and `crictl logs` read:
//!
//! ```text
//! 2026-11-26T02:36:22.924544123Z stdout F a whole line
//! 2026-11-26T02:36:22.924544999Z stderr P the first 16 KiB of a longer line…
//! ```
//!
//! The shim writes the container's stdout and stderr to two fifos; berth reads them, splits
//! lines (a line longer than [`MAX_LINE`] is cut into `P`artial records), stamps them and
//! appends them to the log file, rotating it by size. A rotated file is named as the kubelet
//! names the ones it rotates, `<path>.<YYYYMMDD-hhmmss>` in local time, so that the two
//! rotations agree on which file is oldest: the kubelet compresses and prunes berth's rotated
//! files with its own, and berth keeps at most `max_files - 1` of either kind.
//! [`ContainerLog::reopen`] opens the path anew after the kubelet moved the file away.
//!
//! The same copier fans the raw output out to attached clients ([`Fanout`]), and the
//! container's stdin fifo, when it has one, stays open here for `Attach` to write into.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Longest line written as one record; longer lines become partial records.
pub const MAX_LINE: usize = 16 * 1024;

/// Size-based rotation.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Rotate once the file is this large (0: never).
    pub max_size: u64,
    /// Files kept, the live one included (at least 1).
    pub max_files: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

struct LogFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    rotation: Rotation,
}

impl LogFile {
    fn open(path: &Path, rotation: Rotation) -> Result<Self> {
        let mut f = LogFile {
            path: path.to_path_buf(),
            file: None,
            size: 0,
            rotation,
        };
        f.reopen()?;
        Ok(f)
    }

    fn reopen(&mut self) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(format!("open log {}", self.path.display()), e))?;
        self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.file = Some(file);
        Ok(())
    }

    fn rotate(&mut self) {
        let keep = self.rotation.max_files.max(1) as usize;
        if keep == 1 {
            let _ = std::fs::remove_file(&self.path);
        } else {
            let base = format!("{}.{}", self.path.display(), rotation_stamp(now()));
            // Two rotations in one second: the second gets a suffix that sorts after the first.
            let mut target = PathBuf::from(&base);
            let mut n = 1;
            while target.exists() {
                target = PathBuf::from(format!("{base}.{n:03}"));
                n += 1;
            }
            let _ = std::fs::rename(&self.path, &target);
            let rotated = rotated_logs(&self.path);
            for old in &rotated[..rotated.len().saturating_sub(keep - 1)] {
                let _ = std::fs::remove_file(old);
            }
        }
        if let Err(e) = self.reopen() {
            tracing::warn!(path = %self.path.display(), err = %e, "container log rotation failed");
            self.file = None;
        }
    }

    fn write(&mut self, stream: &str, partial: bool, line: &[u8]) {
        let mut rec = Vec::with_capacity(line.len() + 48);
        rec.extend_from_slice(rfc3339_nano(now()).as_bytes());
        rec.push(b' ');
        rec.extend_from_slice(stream.as_bytes());
        rec.extend_from_slice(if partial { b" P " } else { b" F " });
        rec.extend_from_slice(line);
        rec.push(b'\n');
        if self.rotation.max_size > 0
            && self.size > 0
            && self.size + rec.len() as u64 > self.rotation.max_size
        {
            self.rotate();
        }
        if let Some(f) = self.file.as_mut() {
            match f.write_all(&rec) {
                Ok(()) => self.size += rec.len() as u64,
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), err = %e, "container log write failed")
                }
            }
        }
    }
}

/// The rotated files of the log at `path` (`<path>.<anything>`: berth's and the kubelet's,
/// compressed or not), oldest first.
pub fn rotated_logs(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let prefix = format!("{name}.");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.len() > prefix.len() && n.starts_with(&prefix))
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `YYYYMMDD-hhmmss` in local time: the kubelet's suffix for a rotated log.
fn rotation_stamp(t: std::time::Duration) -> String {
    let secs = t.as_secs() as libc::time_t;
    // SAFETY: localtime_r reads `secs` and writes only into `tm`, which it fully initialises
    // on success; a zeroed `tm` is a valid value for the failure case.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            return rfc3339_nano(t)[..19]
                .replace(['-', ':'], "")
                .replace('T', "-");
        }
        tm
    };
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// `2026-11-26T02:36:22.924544123Z` for a time since the Unix epoch (UTC).
pub fn rfc3339_nano(t: std::time::Duration) -> String {
    let secs = t.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        t.subsec_nanos()
    )
}

/// Creates the fifo at `path` (mode 0600) unless it exists.
pub fn mkfifo(path: &Path) -> Result<()> {
    match rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    ) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(Error::io(
            format!("create fifo {}", path.display()),
            e.into(),
        )),
    }
}

/// Opens the read side of a fifo without waiting for a writer. Read from it only once the
/// writer (the shim) has opened it: before that a read sees end-of-file.
pub fn open_fifo_reader(path: &Path) -> Result<pipe::Receiver> {
    pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| Error::io(format!("open fifo {}", path.display()), e))
}

/// Opens the write side of a fifo without waiting for a reader (read-write, which Linux
/// allows on a fifo).
pub fn open_fifo_writer(path: &Path) -> Result<pipe::Sender> {
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|e| Error::io(format!("open fifo {} for writing", path.display()), e))
}

/// A container's log: the file and the tasks copying the container's output into it.
pub struct ContainerLog {
    file: Option<Arc<Mutex<LogFile>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Where attached clients connect.
    pub stdio: Arc<AttachPoints>,
}

/// A container's live stdio for `Attach`.
#[derive(Debug, Default)]
pub struct AttachPoints {
    /// The container's stdout (its terminal, with a tty).
    pub stdout: Fanout,
    /// The container's stderr (never, with a tty).
    pub stderr: Fanout,
    /// The write side of the container's stdin fifo (`None`: no stdin, or closed).
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
}

impl AttachPoints {
    /// Writes to the container's stdin; false when it has none (or it was closed).
    pub async fn write_stdin(&self, data: &[u8]) -> bool {
        let mut g = self.stdin.lock().await;
        match g.as_mut() {
            Some(w) => {
                if w.write_all(data).await.is_err() {
                    *g = None;
                    return false;
                }
                true
            }
            None => false,
        }
    }

    /// Closes the container's stdin: it reads end-of-file.
    pub async fn close_stdin(&self) {
        self.stdin.lock().await.take();
    }
}

/// Copies one output stream to every attached client. A slow client slows the container's
/// output (as with containerd); one that went away is dropped.
#[derive(Debug, Default)]
pub struct Fanout {
    subs: Mutex<(bool, Vec<mpsc::Sender<Bytes>>)>,
}

impl Fanout {
    /// A new subscriber; it ends (`None`) when the stream does. A stream that already
    /// ended gives a receiver that ends at once.
    pub fn subscribe(&self) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(64);
        let mut g = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        if !g.0 {
            g.1.push(tx);
        }
        rx
    }

    async fn send(&self, data: &[u8]) {
        let subs: Vec<_> = {
            let g = self.subs.lock().unwrap_or_else(|p| p.into_inner());
            if g.1.is_empty() {
                return;
            }
            g.1.clone()
        };
        let b = Bytes::copy_from_slice(data);
        for s in subs {
            let _ = s.send(b.clone()).await;
        }
        let mut g = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        g.1.retain(|s| !s.is_closed());
    }

    fn close(&self) {
        let mut g = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        g.0 = true;
        g.1.clear();
    }
}

impl std::fmt::Debug for ContainerLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerLog").finish_non_exhaustive()
    }
}

impl Drop for ContainerLog {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl ContainerLog {
    /// Starts copying `stdout` and `stderr` (fifo read sides whose writer is open) into the
    /// log at `path` (`None`: the output is read and discarded, so the container never blocks
    /// on a full pipe).
    ///
    /// `stdin`, the write side of the container's stdin fifo, is kept for `Attach`.
    pub fn start(
        path: Option<&Path>,
        rotation: Rotation,
        stdout: Option<pipe::Receiver>,
        stderr: Option<pipe::Receiver>,
        stdin: Option<pipe::Sender>,
    ) -> Result<Self> {
        let file = match path {
            Some(p) => Some(Arc::new(Mutex::new(LogFile::open(p, rotation)?))),
            None => None,
        };
        let stdio = Arc::new(AttachPoints {
            stdin: tokio::sync::Mutex::new(stdin),
            ..Default::default()
        });
        let mut tasks = Vec::new();
        for (name, rx) in [("stdout", stdout), ("stderr", stderr)] {
            let stdio = stdio.clone();
            let file = file.clone();
            match rx {
                Some(rx) => tasks.push(tokio::spawn(async move {
                    let fan = if name == "stdout" {
                        &stdio.stdout
                    } else {
                        &stdio.stderr
                    };
                    copy_lines(rx, name, file, fan).await;
                    fan.close();
                })),
                None if name == "stdout" => stdio.stdout.close(),
                None => stdio.stderr.close(),
            }
        }
        Ok(ContainerLog { file, tasks, stdio })
    }

    /// Reopens the log path (after the kubelet rotated the file away).
    pub fn reopen(&self) -> Result<()> {
        match &self.file {
            Some(f) => f.lock().unwrap_or_else(|p| p.into_inner()).reopen(),
            None => Ok(()),
        }
    }

    /// Waits until both streams reached end-of-file (the writer closed), at most `timeout`.
    pub async fn drained(&mut self, timeout: std::time::Duration) {
        let tasks = std::mem::take(&mut self.tasks);
        let _ = tokio::time::timeout(timeout, futures_join_all(tasks)).await;
    }
}

async fn futures_join_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Cuts a container's output into CRI log records: each line without its newline (a full
/// record), a line longer than [`MAX_LINE`] in pieces of that size (partial records but the
/// last), and what follows the last newline at end-of-file (a partial record). Whatever the
/// container writes, no record is longer than [`MAX_LINE`] and no byte is lost or invented.
#[derive(Debug, Default)]
pub struct LineSplitter {
    line: Vec<u8>,
}

impl LineSplitter {
    /// Takes the next chunk of output; `emit(record, partial)` gets each record it completes.
    pub fn push(&mut self, chunk: &[u8], mut emit: impl FnMut(&[u8], bool)) {
        let mut rest = chunk;
        while !rest.is_empty() {
            match rest.iter().position(|b| *b == b'\n') {
                Some(i) if self.line.len() + i <= MAX_LINE => {
                    self.line.extend_from_slice(&rest[..i]);
                    emit(&self.line, false);
                    self.line.clear();
                    rest = &rest[i + 1..];
                }
                _ => {
                    let take = rest.len().min(MAX_LINE - self.line.len());
                    self.line.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if self.line.len() >= MAX_LINE {
                        emit(&self.line, true);
                        self.line.clear();
                    }
                }
            }
        }
    }

    /// The output ended: what is left is a partial record.
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8], bool)) {
        if !self.line.is_empty() {
            emit(&self.line, true);
            self.line.clear();
        }
    }
}

/// Reads `rx` up to end-of-file, handing each chunk to `fan` and writing each line (or
/// [`MAX_LINE`] piece of one) as a record.
async fn copy_lines(
    mut rx: pipe::Receiver,
    stream: &'static str,
    out: Option<Arc<Mutex<LogFile>>>,
    fan: &Fanout,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut lines = LineSplitter::default();
    let write = |line: &[u8], partial: bool| {
        if let Some(f) = &out {
            f.lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(stream, partial, line);
        }
    };
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(stream, err = %e, "container output read failed");
                0
            }
        };
        if n == 0 {
            lines.finish(write);
            return;
        }
        fan.send(&buf[..n]).await;
        lines.push(&buf[..n], write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(
            rfc3339_nano(std::time::Duration::new(0, 5)),
            "1970-01-01T00:00:00.000000005Z"
        );
        assert_eq!(
            rfc3339_nano(std::time::Duration::new(1_795_659_667, 540_066_722)),
            "2026-11-26T02:21:07.540066722Z"
        );
        assert_eq!(
            rfc3339_nano(std::time::Duration::new(951_782_400, 0)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    fn records(path: &Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut it = l.splitn(4, ' ');
                let _ts = it.next().unwrap();
                (
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                    it.next().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    // Multi-threaded: the test writes to the fifos with blocking calls while the copier tasks
    // drain them on the runtime's workers (a single thread would deadlock on a full pipe).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_partials_and_rotation() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("out");
        mkfifo(&fifo).unwrap();
        let rx = open_fifo_reader(&fifo).unwrap();
        let mut tx = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let log = d.path().join("logs/c.log");
        let mut cl = ContainerLog::start(
            Some(&log),
            Rotation {
                max_size: 40 * 1024,
                max_files: 3,
            },
            Some(rx),
            None,
            None,
        )
        .unwrap();
        tx.write_all(b"hello\n\nworld").unwrap();
        tx.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        tx.write_all(b"\n").unwrap();
        drop(tx);
        cl.drained(std::time::Duration::from_secs(5)).await;
        let r = records(&log);
        assert_eq!(r[0], ("stdout".into(), "F".into(), "hello".into()));
        assert_eq!(r[1], ("stdout".into(), "F".into(), "".into()));
        assert_eq!(r[2].1, "P");
        assert_eq!(r[2].2.len(), MAX_LINE);
        assert!(r[2].2.starts_with("worldxxx"));
        assert_eq!(r[3], ("stdout".into(), "F".into(), "x".repeat(15)));
        assert_eq!(r.len(), 4);

        // Rotation: past 40 KiB the file moves to .1, then .2; never more than 3 files.
        let fifo2 = d.path().join("out2");
        mkfifo(&fifo2).unwrap();
        let rx = open_fifo_reader(&fifo2).unwrap();
        let mut tx = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo2)
            .unwrap();
        let mut cl = ContainerLog::start(
            Some(&log),
            Rotation {
                max_size: 40 * 1024,
                max_files: 3,
            },
            Some(rx),
            None,
            None,
        )
        .unwrap();
        let line = format!("{}\n", "y".repeat(1000));
        for _ in 0..200 {
            tx.write_all(line.as_bytes()).unwrap();
        }
        drop(tx);
        cl.drained(std::time::Duration::from_secs(5)).await;
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&log) <= 40 * 1024, "{}", size(&log));
        // Two rotated files kept (max_files 3), named as the kubelet names its own, the
        // newest full.
        let rotated = rotated_logs(&log);
        assert_eq!(rotated.len(), 2, "{rotated:?}");
        assert!(size(&rotated[1]) > 30 * 1024);
        let stamp = rotated[1].file_name().unwrap().to_str().unwrap();
        let stamp = stamp.trim_start_matches("c.log.");
        assert!(
            stamp.len() >= 15 && stamp.as_bytes()[8] == b'-',
            "{stamp}: not YYYYMMDD-hhmmss"
        );

        // Reopen: after the file is moved away, new lines go to a new file at the path.
        let fifo3 = d.path().join("out3");
        mkfifo(&fifo3).unwrap();
        let rx = open_fifo_reader(&fifo3).unwrap();
        let mut tx = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo3)
            .unwrap();
        let mut cl =
            ContainerLog::start(Some(&log), Rotation::default(), Some(rx), None, None).unwrap();
        tx.write_all(b"before\n").unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        std::fs::rename(&log, d.path().join("moved.log")).unwrap();
        cl.reopen().unwrap();
        tx.write_all(b"after\n").unwrap();
        drop(tx);
        cl.drained(std::time::Duration::from_secs(5)).await;
        assert_eq!(
            records(&log),
            vec![("stdout".into(), "F".into(), "after".into())]
        );
        assert!(
            std::fs::read_to_string(d.path().join("moved.log"))
                .unwrap()
                .contains("stdout F before")
        );
    }
}
