//! The FUSE connection holder: a small process that keeps the `/dev/fuse` file of every
//! lazily mounted layer open, so that the connections outlive berth. A FUSE connection ends
//! when the last file of it closes; while the holder has one, a berth that crashed leaves its
//! mounts waiting (reads block in the kernel) instead of broken, and the berth that starts
//! next takes the files back and answers them again. Overlays stacked on the mounts (running
//! containers) never notice.
//!
//! Protocol: SOCK_SEQPACKET on a unix socket, one message per request and per answer:
//! `PUT <key>` with one fd attached (answer `OK`); `GET` (answer: one `FD <key>` message with
//! its fd per held connection, then `END`); `DROP <key>` (answer `OK`). The holder closes a
//! connection's file once that connection is gone (unmounted and unused, or aborted: its file
//! polls POLLERR), and exits when it holds nothing and nobody is connected.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

const MAX_MESSAGE: usize = 512;

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

fn send(sock: BorrowedFd<'_>, text: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// One message: its text and the fd it carried, if any. `None` at end of stream.
fn recv(sock: BorrowedFd<'_>) -> io::Result<Option<(String, Option<OwnedFd>)>> {
    let mut buf = [0u8; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fd = None;
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    if msg.bytes == 0 && fd.is_none() {
        return Ok(None);
    }
    Ok(Some((
        String::from_utf8_lossy(&buf[..msg.bytes]).into_owned(),
        fd,
    )))
}

fn connect(socket: &Path) -> io::Result<OwnedFd> {
    let s = seqpacket()?;
    rustix::net::connect(&s, &SocketAddrUnix::new(socket)?)?;
    Ok(s)
}

fn expect_ok(s: &OwnedFd) -> io::Result<()> {
    match recv(s.as_fd())? {
        Some((t, _)) if t == "OK" => Ok(()),
        other => Err(io::Error::other(format!(
            "FUSE holder answered {:?}",
            other.map(|o| o.0)
        ))),
    }
}

/// Gives the holder at `socket` a connection's file to keep under `key`.
pub fn put(socket: &Path, key: &str, dev: BorrowedFd<'_>) -> io::Result<()> {
    let s = connect(socket)?;
    send(s.as_fd(), &format!("PUT {key}"), Some(dev))?;
    expect_ok(&s)
}

/// Tells the holder at `socket` to let go of `key`'s connection.
pub fn drop_key(socket: &Path, key: &str) -> io::Result<()> {
    let s = connect(socket)?;
    send(s.as_fd(), &format!("DROP {key}"), None)?;
    expect_ok(&s)
}

/// Every connection the holder at `socket` keeps (it keeps them too). No holder: none.
pub fn get_all(socket: &Path) -> io::Result<HashMap<String, OwnedFd>> {
    let s = match connect(socket) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
            ) =>
        {
            return Ok(HashMap::new());
        }
        Err(e) => return Err(e),
    };
    send(s.as_fd(), "GET", None)?;
    let mut out = HashMap::new();
    loop {
        match recv(s.as_fd())? {
            Some((t, Some(fd))) if t.starts_with("FD ") => {
                out.insert(t[3..].to_string(), fd);
            }
            Some((t, _)) if t == "END" => return Ok(out),
            other => {
                return Err(io::Error::other(format!(
                    "FUSE holder answered {:?}",
                    other.map(|o| o.0)
                )));
            }
        }
    }
}

/// Whether a holder answers at `socket`.
pub fn running(socket: &Path) -> bool {
    connect(socket).is_ok()
}

/// The holder itself: serves `socket` until it holds nothing and has no client. Blocking.
pub fn run(socket: &Path) -> io::Result<()> {
    run_until_idle(socket, Duration::from_secs(5))
}

/// [`run`], exiting once it held nothing for `idle`.
pub fn run_until_idle(socket: &Path, idle: Duration) -> io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = seqpacket()?;
    rustix::net::bind(&listener, &SocketAddrUnix::new(socket)?)?;
    rustix::net::listen(&listener, 16)?;
    let mut held: HashMap<String, OwnedFd> = HashMap::new();
    // Until the first PUT arrives, give berth a while to send it.
    let mut idle_since = std::time::Instant::now();
    loop {
        let keys: Vec<String> = held.keys().cloned().collect();
        let mut fds = vec![PollFd::new(&listener, PollFlags::IN)];
        // No events asked: only POLLERR (the connection is gone) wakes us for them.
        fds.extend(
            keys.iter()
                .map(|k| PollFd::new(&held[k], PollFlags::empty())),
        );
        let timeout = rustix::event::Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let listener_ready = fds[0].revents().contains(PollFlags::IN);
        let gone: Vec<String> = keys
            .iter()
            .zip(&fds[1..])
            .filter(|(_, p)| {
                p.revents()
                    .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL)
            })
            .map(|(k, _)| k.clone())
            .collect();
        drop(fds);
        for k in gone {
            held.remove(&k);
        }
        if listener_ready && let Ok(client) = rustix::net::accept(&listener) {
            idle_since = std::time::Instant::now();
            let _ = serve_client(&client, &mut held);
        }
        if held.is_empty() && idle_since.elapsed() > idle {
            let _ = std::fs::remove_file(socket);
            return Ok(());
        }
    }
}

fn serve_client(client: &OwnedFd, held: &mut HashMap<String, OwnedFd>) -> io::Result<()> {
    // One request per connection: clients connect for each.
    let timeout = rustix::event::Timespec {
        tv_sec: 2,
        tv_nsec: 0,
    };
    let mut p = [PollFd::new(client, PollFlags::IN)];
    if poll(&mut p, Some(&timeout))? == 0 {
        return Ok(());
    }
    let Some((text, fd)) = recv(client.as_fd())? else {
        return Ok(());
    };
    let c = client.as_fd();
    match (text.split_once(' '), fd) {
        (Some(("PUT", key)), Some(fd)) => {
            held.insert(key.to_string(), fd);
            send(c, "OK", None)
        }
        (Some(("DROP", key)), _) => {
            held.remove(key);
            send(c, "OK", None)
        }
        (None, _) if text == "GET" => {
            for (k, fd) in held.iter() {
                send(c, &format!("FD {k}"), Some(fd.as_fd()))?;
            }
            send(c, "END", None)
        }
        _ => send(c, "ERR", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_hands_back_and_lets_go_of_files_then_exits() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("holder.sock");
        let s = sock.clone();
        let holder = std::thread::spawn(move || run_until_idle(&s, Duration::from_millis(300)));
        let up = std::time::Instant::now();
        while !running(&sock) {
            assert!(
                up.elapsed() < Duration::from_secs(5),
                "the holder did not come up"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(get_all(&sock).unwrap().is_empty());
        let f = std::fs::File::open("/dev/null").unwrap();
        put(&sock, "sha256:aa", f.as_fd()).unwrap();
        drop(f);
        let back = get_all(&sock).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), ["sha256:aa"]);
        // The file handed back is the one handed in.
        let link = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&back["sha256:aa"])
        ))
        .unwrap();
        assert_eq!(link, Path::new("/dev/null"));
        // It still holds it after handing it back.
        assert_eq!(get_all(&sock).unwrap().len(), 1);
        drop_key(&sock, "sha256:aa").unwrap();
        assert!(get_all(&sock).unwrap().is_empty());
        holder.join().unwrap().unwrap();
        assert!(!sock.exists(), "its socket is removed when it exits");
    }
}
