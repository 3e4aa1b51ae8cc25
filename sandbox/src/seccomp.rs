//! The `RuntimeDefault` seccomp profile: an allowlist in the spirit of Docker's and containerd's
//! default, refusing (EPERM) the syscalls that reach beyond a container — kernel modules,
//! clock and swap changes, keyrings, `kexec`, new namespaces — unless the container holds the
//! capability that would make them meaningful.

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

/// Allowed for every container.
const ALWAYS: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    "arch_prctl",
    "modify_ldt",
    "sethostname",
    "setdomainname",
    "socket",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
];

/// Allowed only with a capability.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setns",
            "swapon",
            "swapoff",
            "umount",
            "umount2",
            "unshare",
            "vm86",
            "vm86old",
            "pivot_root",
            "syslog",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &["kcmp", "pidfd_getfd", "process_madvise"],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
];

/// Namespace flags `clone` may not carry without CAP_SYS_ADMIN.
const CLONE_NS_FLAGS: u64 = 0x7E02_0000;

/// The default profile for a container holding `caps` (OCI capability names).
pub fn default_profile(caps: &[String]) -> Seccomp {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut syscalls = vec![Syscall::new(ALWAYS, ALLOW)];
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
        let mut names: Vec<&str> = ALWAYS.to_vec();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "duplicate syscall names");
    }
}
