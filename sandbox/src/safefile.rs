//! Reading files berth does not control (an image's `/etc/passwd`, a seccomp profile named by
//! a request) so that their content can neither block berth nor make it allocate without
//! bound: the file is looked at before it is opened and must be a regular file (a FIFO, a
//! device, a socket or a directory is refused without being opened), is then opened
//! non-blocking, and is read up to a limit.
//!
//! These are still blocking system calls on a regular file (a slow disk): callers on async
//! workers run them through `spawn_blocking`.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It does not exist (or a path component is missing).
    #[error("does not exist")]
    Missing,
    /// It exists but is not a regular file.
    #[error("is a {0}, not a regular file")]
    NotRegular(&'static str),
    /// It is larger than allowed.
    #[error("is {size} bytes, more than the {limit} allowed")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Opening or reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Fifo => "FIFO",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Socket => "socket",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        _ => "special file",
    }
}

/// The flags every open here uses: no blocking on a FIFO's writer, no controlling terminal
/// from a tty, no inheritance by children.
fn flags() -> OFlags {
    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC
}

fn map_open(e: rustix::io::Errno) -> ReadError {
    match e {
        rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => ReadError::Missing,
        e => ReadError::Io(e.into()),
    }
}

/// Reads the file `path_fd` (an `O_PATH` descriptor, which opened nothing) names: only once
/// it is known to be a regular file of at most `limit` bytes is it opened for reading
/// (through `/proc/self/fd`, the same inode). A device node is never opened: an image can
/// hold one of any number, and opening some devices does things.
fn read_checked(path_fd: OwnedFd, limit: u64) -> Result<Vec<u8>, ReadError> {
    use std::os::fd::AsRawFd;
    let st = rustix::fs::fstat(&path_fd).map_err(|e| ReadError::Io(e.into()))?;
    let ft = FileType::from_raw_mode(st.st_mode);
    if ft != FileType::RegularFile {
        return Err(ReadError::NotRegular(kind_name(ft)));
    }
    let size = st.st_size.max(0) as u64;
    if size > limit {
        return Err(ReadError::TooLarge { size, limit });
    }
    let fd = rustix::fs::open(
        format!("/proc/self/fd/{}", path_fd.as_raw_fd()),
        flags(),
        Mode::empty(),
    )
    .map_err(|e| ReadError::Io(e.into()))?;
    let mut buf = Vec::with_capacity(size as usize);
    // The file can grow between the check and the read: the limit holds while reading too.
    std::fs::File::from(fd)
        .take(limit + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            size: buf.len() as u64,
            limit,
        });
    }
    Ok(buf)
}

/// Reads the regular file at `path` on the host (symbolic links followed: a host path is the
/// operator's), at most `limit` bytes.
pub fn read_host_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let fd =
        rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).map_err(map_open)?;
    read_checked(fd, limit)
}

/// Reads `rel` inside the directory tree `root` (an image layer), resolved as if `root` were
/// `/`: no symbolic link, `..` or magic link leads out of it. At most `limit` bytes.
/// [`ReadError::Missing`] when it is not there.
pub fn read_in_root(root: &Path, rel: &str, limit: u64) -> Result<Vec<u8>, ReadError> {
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(map_open)?;
    let fd = rustix::fs::openat2(
        &dir,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(map_open)?;
    read_checked(fd, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_files_and_large_files_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Without O_NONBLOCK this open would wait for a writer forever.
        let e = read_host_file(&fifo, 1024).unwrap_err();
        assert!(matches!(e, ReadError::NotRegular("FIFO")), "{e}");
        let e = read_in_root(d.path(), "fifo", 1024).unwrap_err();
        assert!(matches!(e, ReadError::NotRegular("FIFO")), "{e}");

        let e = read_host_file(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(
            matches!(e, ReadError::NotRegular("character device")),
            "{e}"
        );
        let e = read_host_file(d.path(), 1024).unwrap_err();
        assert!(matches!(e, ReadError::NotRegular("directory")), "{e}");

        std::fs::write(d.path().join("big"), vec![b'x'; 2048]).unwrap();
        let e = read_host_file(&d.path().join("big"), 1024).unwrap_err();
        assert!(
            matches!(
                e,
                ReadError::TooLarge {
                    size: 2048,
                    limit: 1024
                }
            ),
            "{e}"
        );
        assert_eq!(
            read_host_file(&d.path().join("big"), 2048).unwrap().len(),
            2048
        );
        assert!(matches!(
            read_host_file(&d.path().join("nope"), 10),
            Err(ReadError::Missing)
        ));
    }

    #[test]
    fn files_in_a_root_stay_in_it() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(d.path().join("secret"), "outside").unwrap();
        std::fs::write(root.join("secret"), "inside").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("etc/passwd")).unwrap();
        // The link is resolved as if the root were `/`: it names the root's own file.
        assert_eq!(
            read_in_root(&root, "etc/passwd", 100).unwrap(),
            b"inside".to_vec()
        );
        assert_eq!(
            read_in_root(&root, "../secret", 100).unwrap(),
            b"inside".to_vec()
        );
        assert!(matches!(
            read_in_root(&root, "etc/group", 100),
            Err(ReadError::Missing)
        ));
    }
}
