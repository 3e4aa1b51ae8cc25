//! A registry that misbehaves: a TCP relay in front of the real test registry that breaks
//! or corrupts chosen responses. It reads each request head (the registry API is plain
//! GETs, one at a time per connection), so it knows which response the bytes coming back
//! belong to.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// What to do to a response.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Reset the connection (RST) once this many bytes of the response went through.
    ResetAfter(u64),
    /// Invert the byte at this offset of the response (headers included).
    FlipAt(u64),
    /// Never pass the request on: the client waits for an answer that never comes.
    Hang,
}

/// Which responses to harm and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Responses to requests whose path contains this are harmed.
    pub path_contains: String,
    pub fault: Fault,
    /// How many responses to harm; later ones pass untouched.
    pub times: usize,
    /// Hide `Range` headers from the registry, as a host without range support would.
    pub strip_range: bool,
}

/// The relay; stops and cuts its connections on drop.
pub struct FaultyProxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Both ends of every relayed connection; the relay threads own them.
    conns: Arc<Mutex<Vec<Weak<TcpStream>>>>,
    counts: Arc<Counts>,
    remaining: Arc<AtomicUsize>,
}

/// What the relay saw.
#[derive(Debug, Default)]
pub struct Counts {
    /// Responses harmed.
    pub harmed: AtomicUsize,
    /// Requests for a harmed path that carried a `Range` header.
    pub ranged: AtomicUsize,
    /// Requests for a harmed path.
    pub requests: AtomicUsize,
}

/// The response now going back on one connection.
#[derive(Default)]
struct Current {
    harm: bool,
    sent: u64,
}

impl FaultyProxy {
    /// Relays 127.0.0.1:<free port> to `upstream`, harming responses as `plan` says.
    pub fn start(upstream: &str, plan: Plan) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(Counts::default());
        let remaining = Arc::new(AtomicUsize::new(plan.times));
        let upstream = upstream.to_string();
        let (stop2, conns2, counts2, remaining2) = (
            stop.clone(),
            conns.clone(),
            counts.clone(),
            remaining.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (client, server) = (Arc::new(client), Arc::new(server));
                conns2
                    .lock()
                    .unwrap()
                    .extend([Arc::downgrade(&client), Arc::downgrade(&server)]);
                let current = Arc::new(Mutex::new(Current::default()));
                let fault = plan.fault;
                let (plan, counts, remaining) = (plan.clone(), counts2.clone(), remaining2.clone());
                let (c2, s2, cur2) = (client.clone(), server.clone(), current.clone());
                std::thread::spawn(move || requests(&c2, &s2, &plan, &counts, &remaining, &cur2));
                let counts = counts2.clone();
                std::thread::spawn(move || responses(&server, &client, fault, &counts, &current));
            }
        });
        Ok(FaultyProxy {
            addr,
            stop,
            conns,
            counts,
            remaining,
        })
    }

    /// Harms the next `n` matching responses (on top of what the plan had left).
    pub fn harm(&self, n: usize) {
        self.remaining.fetch_add(n, Ordering::Relaxed);
    }

    /// What the relay saw so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        for s in self.conns.lock().unwrap().drain(..) {
            if let Some(s) = s.upgrade() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Client → registry: forwards request heads, deciding for each whether its response is
/// harmed.
fn requests(
    mut client: &TcpStream,
    mut server: &TcpStream,
    plan: &Plan,
    counts: &Counts,
    remaining: &AtomicUsize,
    current: &Mutex<Current>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        let n = match client.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let mut head: Vec<u8> = buf.drain(..end + 4).collect();
            let text = String::from_utf8_lossy(&head).to_string();
            let path = text.split(' ').nth(1).unwrap_or_default();
            let target = path.contains(&plan.path_contains);
            if target {
                counts.requests.fetch_add(1, Ordering::Relaxed);
                if text.to_ascii_lowercase().contains("\r\nrange:") {
                    counts.ranged.fetch_add(1, Ordering::Relaxed);
                }
                if plan.strip_range {
                    hide_range(&mut head);
                }
            }
            let harm = target
                && remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| r.checked_sub(1))
                    .is_ok();
            *current.lock().unwrap() = Current { harm, sent: 0 };
            if harm && matches!(plan.fault, Fault::Hang) {
                counts.harmed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if server.write_all(&head).is_err() {
                return;
            }
        }
    }
    let _ = server.shutdown(Shutdown::Write);
}

/// Renames the `Range` header (same length, so nothing else moves).
fn hide_range(head: &mut [u8]) {
    let lower = head.to_ascii_lowercase();
    if let Some(i) = lower.windows(8).position(|w| w == b"\r\nrange:") {
        head[i + 2] = b'X';
    }
}

/// Registry → client: relays responses, harming those chosen.
fn responses(
    mut server: &TcpStream,
    mut client: &TcpStream,
    fault: Fault,
    counts: &Counts,
    current: &Mutex<Current>,
) {
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = match server.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let data = &mut chunk[..n];
        let mut cur = current.lock().unwrap();
        let (start, end) = (cur.sent, cur.sent + n as u64);
        cur.sent = end;
        if cur.harm {
            match fault {
                Fault::ResetAfter(limit) if end >= limit => {
                    let keep = (limit.saturating_sub(start)) as usize;
                    let _ = client.write_all(&data[..keep]);
                    counts.harmed.fetch_add(1, Ordering::Relaxed);
                    // A reset discards what the socket has not sent yet: the client gets
                    // exactly `limit` bytes only once they have left (and been acknowledged).
                    drained(client, Duration::from_secs(10));
                    reset(client);
                    let _ = server.shutdown(Shutdown::Both);
                    return;
                }
                Fault::FlipAt(at) if (start..end).contains(&at) => {
                    data[(at - start) as usize] ^= 0xff;
                    counts.harmed.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        drop(cur);
        if client.write_all(data).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Write);
}

/// Waits (at most `limit`) until everything written to `s` was sent and acknowledged.
fn drained(s: &TcpStream, limit: Duration) {
    let end = std::time::Instant::now() + limit;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) on a valid socket writes one int.
        let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if r != 0 || queued == 0 || std::time::Instant::now() >= end {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Makes the close of `s` a reset rather than a FIN (SO_LINGER with a zero timeout) and
/// wakes its reader, so that the last of the two relay threads to let go of it sends the
/// RST.
fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Read);
}
