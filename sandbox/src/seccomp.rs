//! The `RuntimeDefault` seccomp profile: an allowlist in the spirit of Docker's and containerd's
//! default, refusing (EPERM) the syscalls that reach beyond a container — kernel modules,
//! clock and swap changes, keyrings, `kexec`, new namespaces — unless the container holds the
//! capability that would make them meaningful.

mod syscalls;
use syscalls::{ALWAYS, BY_CAPABILITY};

use crate::error::{Error, Result};
use crate::spec::oci::{Seccomp, Syscall, SyscallArg};

/// Seccomp profiles larger than this are refused (Docker's default profile is ~20 KiB).
const PROFILE_LIMIT: u64 = 4 << 20;

/// `s` with a Localhost profile read from its file, off the async workers: a regular file
/// of bounded size (a FIFO or a device named there is refused without blocking), holding an
/// OCI seccomp object with a `defaultAction`.
pub(crate) async fn resolve(s: crate::container::Seccomp) -> Result<crate::container::Seccomp> {
    let crate::container::Seccomp::Localhost(path) = s else {
        return Ok(s);
    };
    tokio::task::spawn_blocking(move || load_profile(&path).map(crate::container::Seccomp::Profile))
        .await
        .map_err(|e| Error::io("read a seccomp profile", std::io::Error::other(e)))?
}

fn load_profile(path: &str) -> Result<Seccomp> {
    let bad = |e: String| Error::Invalid(format!("seccomp profile {}: {e}", crate::shown(path)));
    let text = crate::safefile::read_host_file(std::path::Path::new(path), PROFILE_LIMIT)
        .map_err(|e| bad(e.to_string()))?;
    let profile: Seccomp = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if profile.default_action.is_empty() {
        return Err(bad("no defaultAction".into()));
    }
    Ok(profile)
}

/// The filter `s` stands for, with `caps` the capabilities its process holds (the default
/// profile allows what they make meaningful); `None` for no filter.
pub(crate) fn filter(s: &crate::container::Seccomp, caps: &[String]) -> Result<Option<Seccomp>> {
    use crate::container::Seccomp as S;
    match s {
        S::Unconfined => Ok(None),
        S::RuntimeDefault => Ok(Some(default_profile(caps))),
        S::Profile(p) => Ok(Some(p.clone())),
        S::Localhost(path) => Err(Error::Invalid(format!(
            "seccomp profile {} was not read before the spec was built",
            crate::shown(path)
        ))),
    }
}

/// Namespace flags `clone` may not carry without CAP_SYS_ADMIN.
const CLONE_NS_FLAGS: u64 = 0x7E02_0000;

/// The default profile for a container holding `caps` (OCI capability names).
pub fn default_profile(caps: &[String]) -> Seccomp {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let always: Vec<&str> = ALWAYS.split_whitespace().collect();
    let mut syscalls = vec![Syscall::new(&always, ALLOW)];
    // personality: only the harmless domains.
    for p in [0u64, 8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(Syscall {
            args: vec![SyscallArg {
                index: 0,
                value: p,
                value_two: None,
                op: "SCMP_CMP_EQ".into(),
            }],
            ..Syscall::new(&["personality"], ALLOW)
        });
    }
    for (cap, names) in BY_CAPABILITY {
        if has(cap) {
            syscalls.push(Syscall::new(names, ALLOW));
        }
    }
    if !has("CAP_SYS_ADMIN") {
        // Threads and processes, never new namespaces; clone3's flags live in memory that
        // seccomp cannot read, so it answers ENOSYS and libc falls back to clone.
        syscalls.push(Syscall {
            args: vec![SyscallArg {
                index: 0,
                value: CLONE_NS_FLAGS,
                value_two: Some(0),
                op: "SCMP_CMP_MASKED_EQ".into(),
            }],
            ..Syscall::new(&["clone"], ALLOW)
        });
        syscalls.push(Syscall {
            errno_ret: Some(38),
            ..Syscall::new(&["clone3"], "SCMP_ACT_ERRNO")
        });
    }
    Seccomp {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno_ret: Some(1),
        architectures: ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
            .map(String::from)
            .to_vec(),
        flags: vec![],
        syscalls,
    }
}

const ALLOW: &str = "SCMP_ACT_ALLOW";

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(p: &Seccomp, name: &str) -> bool {
        p.syscalls
            .iter()
            .any(|r| r.action == ALLOW && r.names.iter().any(|n| n == name) && r.args.is_empty())
    }

    #[test]
    fn capabilities_open_their_syscalls() {
        let plain = default_profile(&["CAP_CHOWN".into()]);
        assert!(allowed(&plain, "read"));
        assert!(!allowed(&plain, "mount"));
        assert!(!allowed(&plain, "unshare"));
        assert!(!allowed(&plain, "init_module"));
        assert!(
            !allowed(&plain, "clone"),
            "clone is allowed only without namespace flags"
        );
        let admin = default_profile(&["CAP_SYS_ADMIN".into()]);
        assert!(allowed(&admin, "mount"));
        assert!(allowed(&admin, "clone"));
        assert!(!allowed(&admin, "reboot"));
        let mut names: Vec<&str> = ALWAYS.split_whitespace().collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate syscall names");
    }
}
