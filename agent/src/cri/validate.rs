//! Bounds and shapes for the strings a CRI request carries. A request is hostile until
//! checked: a value that reaches a file berth writes (resolv.conf, hosts), a path berth or
//! runc resolves (cgroups, mounts, logs) or an error message must be bounded and well formed.
//! The limits are Kubernetes' own where it has one.

use std::collections::HashMap;

use tonic::Status;

/// A pod's name and uid, a container's name: a DNS subdomain's length.
pub(crate) const MAX_NAME: usize = 253;
/// A namespace name: a DNS label's length.
pub(crate) const MAX_NAMESPACE: usize = 63;
/// The kernel's `HOST_NAME_MAX`.
pub(crate) const MAX_HOSTNAME: usize = 64;
/// A label or annotation key: a 253-byte prefix, `/`, a 63-byte name.
pub(crate) const MAX_KEY: usize = 253 + 1 + 63;
/// The labels, or the annotations, of one object together (Kubernetes'
/// `TotalAnnotationSizeLimitB`).
pub(crate) const MAX_MAP_TOTAL: usize = 256 * 1024;
/// A path (`PATH_MAX`).
pub(crate) const MAX_PATH: usize = 4096;
/// Entries of resolv.conf's lists: far above glibc's (3 servers, 6 search domains), far below
/// anything that could hurt.
pub(crate) const MAX_DNS_ENTRIES: usize = 64;

pub(crate) use berth_sandbox::shown;

/// An InvalidArgument status saying `msg`.
pub(crate) fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// A name-like value: not empty, at most `max` bytes, no control characters and no `/`.
pub(crate) fn name(what: &str, v: &str, max: usize) -> Result<(), Status> {
    if v.is_empty() {
        return Err(invalid(format!("{what} is empty")));
    }
    if v.len() > max {
        return Err(invalid(format!(
            "{what} {} is longer than {max} bytes",
            shown(v)
        )));
    }
    if v.chars().any(|c| c.is_control() || c == '/') {
        return Err(invalid(format!(
            "{what} {} may not contain '/' or control characters",
            shown(v)
        )));
    }
    Ok(())
}

/// A value that goes into a file or a command line as one word: bounded, no whitespace or
/// control characters (a newline in a DNS server would add a line of its own to resolv.conf).
pub(crate) fn word(what: &str, v: &str, max: usize) -> Result<(), Status> {
    if v.is_empty() {
        return Err(invalid(format!("{what} is empty")));
    }
    if v.len() > max || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(format!(
            "{what} {} must be at most {max} bytes without whitespace or control characters",
            shown(v)
        )));
    }
    Ok(())
}

/// An absolute path of at most [`MAX_PATH`] bytes without NUL (a relative one would resolve
/// against berth's own working directory).
pub(crate) fn absolute_path(what: &str, v: &str) -> Result<(), Status> {
    if !v.starts_with('/') || v.len() > MAX_PATH || v.contains('\0') {
        return Err(invalid(format!(
            "{what} {} must be an absolute path of at most {MAX_PATH} bytes",
            shown(v)
        )));
    }
    Ok(())
}

/// A relative path of at most [`MAX_PATH`] bytes without NUL or `..`: a path inside
/// something (an image volume's sub path).
pub(crate) fn relative_path(what: &str, v: &str) -> Result<(), Status> {
    let bad = v.is_empty()
        || v.starts_with('/')
        || v.len() > MAX_PATH
        || v.contains('\0')
        || v.split('/').any(|c| c == "..");
    if bad {
        return Err(invalid(format!(
            "{what} {} must be a relative path of at most {MAX_PATH} bytes without '..'",
            shown(v)
        )));
    }
    Ok(())
}

/// A cgroup parent for the cgroupfs driver: empty (berth's default), or an absolute path
/// whose every component is a plain name, so that the cgroup stays inside the hierarchy it is
/// created under.
pub(crate) fn cgroup_parent(v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Ok(());
    }
    absolute_path("cgroup_parent", v)?;
    if v.split('/')
        .any(|c| c == "." || c == ".." || c.chars().any(char::is_control))
    {
        return Err(invalid(format!(
            "cgroup_parent {} may not contain '.' or '..' components or control characters",
            shown(v)
        )));
    }
    Ok(())
}

/// Labels or annotations: keys not empty and at most [`MAX_KEY`] bytes, no NUL anywhere, and
/// all of them together at most [`MAX_MAP_TOTAL`] bytes.
pub(crate) fn map(what: &str, m: &HashMap<String, String>) -> Result<(), Status> {
    let mut total = 0usize;
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_KEY || k.contains('\0') {
            return Err(invalid(format!(
                "{what} key {} must be 1 to {MAX_KEY} bytes without NUL",
                shown(k)
            )));
        }
        if v.contains('\0') {
            return Err(invalid(format!(
                "{what} value of {} contains NUL",
                shown(k)
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_MAP_TOTAL {
        return Err(invalid(format!(
            "{what} total {total} bytes, more than the {MAX_MAP_TOTAL} allowed"
        )));
    }
    Ok(())
}

/// A sysctl: a dotted or slashed name and a value, neither with control characters.
pub(crate) fn sysctl(k: &str, v: &str) -> Result<(), Status> {
    word("sysctl name", k, 256)?;
    if v.len() > 4096 || v.chars().any(char::is_control) {
        return Err(invalid(format!(
            "sysctl {} value {} must be at most 4096 bytes without control characters",
            shown(k),
            shown(v)
        )));
    }
    Ok(())
}

/// The DNS config: servers are IP addresses, search domains and options single words, each
/// list bounded.
pub(crate) fn dns(
    servers: &[String],
    searches: &[String],
    options: &[String],
) -> Result<(), Status> {
    for (what, list) in [
        ("dns_config.servers", servers),
        ("dns_config.searches", searches),
        ("dns_config.options", options),
    ] {
        if list.len() > MAX_DNS_ENTRIES {
            return Err(invalid(format!(
                "{what} has {} entries, more than {MAX_DNS_ENTRIES}",
                list.len()
            )));
        }
    }
    for s in servers {
        if s.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!(
                "dns_config.servers entry {} is not an IP address",
                shown(s)
            )));
        }
    }
    for s in searches {
        word("dns_config.searches entry", s, 253)?;
    }
    for o in options {
        word("dns_config.options entry", o, 256)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "x".repeat(10_000);
        let e = name("container name", &long, MAX_NAME).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().len() < 200, "{}", e.message());
        assert!(e.message().contains("(10000 bytes)"), "{}", e.message());
        // Cut on a character boundary.
        assert!(shown(&"é".repeat(100)).ends_with("(200 bytes)"));
        assert_eq!(shown("ok"), "\"ok\"");
    }

    #[test]
    fn cgroup_parents_stay_in_their_hierarchy() {
        for ok in ["", "/kubepods", "/kubepods/burstable/pod1234", "/k8s.io/"] {
            assert!(cgroup_parent(ok).is_ok(), "{ok}");
        }
        for bad in [
            "../../../../evil",
            "/kubepods/../../evil",
            "/kubepods/./x",
            "kubepods",
            "/a\nb",
        ] {
            let e = cgroup_parent(bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn dns_entries_are_one_word_each() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(
            dns(
                &s(&["10.96.0.10", "fd00::a"]),
                &s(&["svc.cluster.local"]),
                &s(&["ndots:5"])
            )
            .is_ok()
        );
        assert!(dns(&s(&["10.0.0.1\nnameserver 6.6.6.6"]), &[], &[]).is_err());
        assert!(dns(&[], &s(&["a b"]), &[]).is_err());
        assert!(dns(&[], &[], &s(&["ndots:5\noptions x"])).is_err());
        assert!(dns(&s(&["not-an-ip"]), &[], &[]).is_err());
        let many = vec!["1.1.1.1".to_string(); MAX_DNS_ENTRIES + 1];
        assert!(dns(&many, &[], &[]).is_err());
    }

    #[test]
    fn paths_ids_maps_and_sysctls() {
        assert!(absolute_path("host_path", "/var/log").is_ok());
        assert!(absolute_path("host_path", "var/log").is_err());
        assert!(absolute_path("host_path", "").is_err());
        let mut m = HashMap::new();
        m.insert("app".to_string(), "web".to_string());
        assert!(map("labels", &m).is_ok());
        m.insert("big".to_string(), "v".repeat(MAX_MAP_TOTAL));
        assert!(map("labels", &m).is_err());
        assert!(sysctl("net.ipv4.ip_forward", "1").is_ok());
        assert!(sysctl("kernel.shm\nmax", "1").is_err());
        assert!(sysctl("kernel.shmmax", "1\n2").is_err());
    }
}
