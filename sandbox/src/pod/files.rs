//! The pod's own files: `hostname`, `hosts`, `resolv.conf` for its containers to bind, and
//! its `/dev/shm` mount.

use std::path::Path;

use super::PodConfig;
use crate::error::{Error, Result};

/// Writes `hostname`, `resolv.conf` and `hosts` for the pod's containers.
pub(super) fn write_pod_files(dir: &Path, cfg: &PodConfig) -> Result<()> {
    let w = |name: &str, data: &str| {
        std::fs::write(dir.join(name), data).map_err(|e| Error::io(format!("write {name}"), e))
    };
    let hostname = if cfg.host_network {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_string()
    } else {
        cfg.hostname.clone()
    };
    w("hostname", &format!("{hostname}\n"))?;
    let resolv = match &cfg.dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut s = String::new();
            if !d.searches.is_empty() {
                s.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for n in &d.servers {
                s.push_str(&format!("nameserver {n}\n"));
            }
            if !d.options.is_empty() {
                s.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            s
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    w("resolv.conf", &resolv)?;
    let hosts = if cfg.host_network {
        std::fs::read_to_string("/etc/hosts").unwrap_or_default()
    } else {
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n".to_string()
    };
    w("hosts", &hosts)
}

pub(super) fn mount_shm(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path)
        .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    use rustix::mount::{MountFlags, mount};
    mount(
        "shm",
        path,
        "tmpfs",
        MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::NOSUID,
        c"mode=1777,size=65536k",
    )
    .map_err(|e| Error::io(format!("mount shm at {}", path.display()), e.into()))
}

/// Unmounts `path` if it is a mount point; anything else is success.
pub(crate) fn unmount(path: &Path) -> Result<()> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(Error::io(format!("unmount {}", path.display()), e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::Dns;

    #[test]
    fn resolv_conf_and_hosts() {
        let d = tempfile::tempdir().unwrap();
        let cfg = PodConfig {
            hostname: "web-0".into(),
            dns: Some(Dns {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            ..Default::default()
        };
        write_pod_files(d.path(), &cfg).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.path().join("hostname")).unwrap(),
            "web-0\n"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("resolv.conf")).unwrap(),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert!(
            std::fs::read_to_string(d.path().join("hosts"))
                .unwrap()
                .starts_with("127.0.0.1\tlocalhost\n")
        );
    }
}
