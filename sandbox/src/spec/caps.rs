//! Capabilities by OCI name (`CAP_SYS_ADMIN`), and a container's set by the CRI's rules:
//! containerd's default set, minus `drop`, plus `add`; `ALL` in `add` starts from every
//! capability berth itself holds, `ALL` in `drop` from none; a privileged container gets
//! every capability berth holds.

use crate::error::{Error, Result};

/// The capabilities a non-privileged container starts with (containerd's default set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability the kernel knows, by OCI name.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// `SYS_ADMIN` / `cap_sys_admin` → `CAP_SYS_ADMIN`; unknown names are refused.
pub fn cap_name(c: &str) -> Result<String> {
    let up = c.to_ascii_uppercase();
    let full = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    if ALL_CAPABILITIES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(Error::Invalid(format!("unknown capability {c:?}")))
    }
}

/// The capabilities berth's own bounding set holds, by OCI name: what "all" can mean, as
/// containerd's privileged containers get the daemon's own set (root here may lack some, such
/// as CAP_SYS_RESOURCE, and runc cannot grant what it does not have).
pub fn own_capabilities() -> Vec<String> {
    let bnd = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(i, _)| bnd & (1u64 << i) != 0)
        .map(|(_, c)| c.to_string())
        .collect()
}

/// The capability set of a container: `privileged`, or the default set with `add` and
/// `drop` applied (names with or without `CAP_`, any case; `ALL` as above). `own` is what
/// berth itself holds ([`own_capabilities`]), the most a container can get.
pub fn effective(
    privileged: bool,
    add: &[String],
    drop: &[String],
    own: &[String],
) -> Result<Vec<String>> {
    if privileged {
        return Ok(own.to_vec());
    }
    let is_all = |v: &[String]| v.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let mut caps: Vec<String> = if is_all(add) {
        own.to_vec()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()
    };
    if is_all(drop) {
        caps.clear();
    } else {
        for d in drop {
            let d = cap_name(d)?;
            caps.retain(|c| *c != d);
        }
    }
    if !is_all(add) {
        for a in add {
            let a = cap_name(a)?;
            if !caps.contains(&a) {
                caps.push(a);
            }
        }
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn add_and_drop_by_the_cri_rules() {
        let own = names(&["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN", "CAP_NET_ADMIN"]);
        let set = |privileged, add: &[&str], drop: &[&str]| {
            effective(privileged, &names(add), &names(drop), &own)
        };
        let default = names(DEFAULT_CAPABILITIES);
        // (privileged, add, drop) → the set.
        type Row<'a> = (bool, &'a [&'a str], &'a [&'a str], Vec<String>);
        let table: &[Row] = &[
            (false, &[], &[], default.clone()),
            (true, &[], &["ALL"], own.clone()),
            (false, &["ALL"], &[], own.clone()),
            (
                false,
                &["ALL"],
                &["sys_admin"],
                names(&["CAP_CHOWN", "CAP_KILL", "CAP_NET_ADMIN"]),
            ),
            (false, &[], &["ALL"], vec![]),
            (false, &["NET_ADMIN"], &["ALL"], names(&["CAP_NET_ADMIN"])),
            (false, &["cap_kill"], &[], default.clone()),
        ];
        for (privileged, add, drop, want) in table {
            assert_eq!(
                &set(*privileged, add, drop).unwrap(),
                want,
                "{add:?} {drop:?}"
            );
        }
        let c = set(false, &["SYS_ADMIN"], &["CHOWN"]).unwrap();
        assert!(c.contains(&"CAP_SYS_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(c.len(), DEFAULT_CAPABILITIES.len());
        let e = set(false, &["BOGUS"], &[]).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(set(false, &[], &["NOPE"]).is_err());
    }

    #[test]
    fn every_default_capability_is_a_known_one() {
        for c in DEFAULT_CAPABILITIES {
            assert_eq!(cap_name(c).unwrap(), *c);
        }
        assert_eq!(cap_name("net_raw").unwrap(), "CAP_NET_RAW");
    }
}
