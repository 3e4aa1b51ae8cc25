//! What a handler's OCI runtime can do here: its `features` command (the runtime-spec's
//! `features.json`, which containerd reads too) and the kernel it runs on. A runtime that has
//! no `features` command (Debian 12's runc 1.1.5 and crun 1.8.1) or does not answer within
//! 2 s supports none of the optional features.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The optional features berth offers per handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OciFeatures {
    /// The runtime answered `features` with JSON.
    pub answered: bool,
    /// Read-only mounts made so recursively (`rro`: the runtime lists it, Linux 5.12 has
    /// `mount_setattr`).
    pub recursive_read_only: bool,
    /// Pods in a user namespace of their own: the runtime makes user namespaces and idmapped
    /// mounts, and the kernel can idmap overlayfs layers and tmpfs (Linux 6.3), which the
    /// rootfs and the pod's own files need.
    pub user_namespaces: bool,
}

impl OciFeatures {
    /// Asks `runtime` (a name on `$PATH` or a path). Blocks up to 2 s.
    pub fn probe(runtime: &str) -> Self {
        match features_json(runtime) {
            Some(json) => Self::from_json(&json, kernel_version()),
            None => Self::default(),
        }
    }

    /// The features a runtime's `features` answer and the kernel (`major.minor`) give.
    pub fn from_json(json: &str, kernel: (u32, u32)) -> Self {
        let Ok(f) = serde_json::from_str::<serde_json::Value>(json) else {
            return Self::default();
        };
        let lists = |v: &serde_json::Value, what: &str| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(what)))
        };
        let linux = &f["linux"];
        OciFeatures {
            answered: true,
            recursive_read_only: kernel >= (5, 12) && lists(&f["mountOptions"], "rro"),
            user_namespaces: kernel >= (6, 3)
                && lists(&linux["namespaces"], "user")
                && linux["mountExtensions"]["idmap"]["enabled"].as_bool() == Some(true),
        }
    }

    /// For `berth doctor` and the logs: what this runtime does and does not do.
    pub fn summary(&self) -> String {
        if !self.answered {
            return "no `features` command: no recursive read-only mounts, no user namespaces"
                .into();
        }
        let yes_no = |b: bool, what: &str| {
            if b {
                what.to_string()
            } else {
                format!("no {what}")
            }
        };
        format!(
            "{}, {}",
            yes_no(self.recursive_read_only, "recursive read-only mounts"),
            yes_no(self.user_namespaces, "user namespaces")
        )
    }
}

/// The running kernel's `major.minor`.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release.split(|c: char| !c.is_ascii_digit());
    (
        v.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        v.next().and_then(|s| s.parse().ok()).unwrap_or(0),
    )
}

fn features_json(runtime: &str) -> Option<String> {
    let mut child = Command::new(runtime)
        .arg("features")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let end = Instant::now() + Duration::from_secs(2);
    // The answer is a few KiB: read it as it comes, so a full pipe never stalls the runtime.
    let mut out = Vec::new();
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let _ = (&mut stdout).take(1 << 20).read_to_end(&mut out);
        out
    });
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => break,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    String::from_utf8(reader.join().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNC_1_5: &str = r#"{"ociVersionMin":"1.0.0","mountOptions":["ro","rro","rw"],
        "linux":{"namespaces":["cgroup","ipc","mount","network","pid","time","user","uts"],
        "mountExtensions":{"idmap":{"enabled":true}}}}"#;

    #[test]
    fn a_current_runc_on_a_current_kernel_does_both() {
        let f = OciFeatures::from_json(RUNC_1_5, (6, 18));
        assert!(f.answered && f.recursive_read_only && f.user_namespaces);
    }

    #[test]
    fn old_kernels_and_missing_extensions_turn_features_off() {
        let f = OciFeatures::from_json(RUNC_1_5, (5, 15));
        assert!(f.recursive_read_only && !f.user_namespaces);
        assert!(!OciFeatures::from_json(RUNC_1_5, (5, 10)).recursive_read_only);
        let no_idmap = RUNC_1_5.replace("\"enabled\":true", "\"enabled\":false");
        assert!(!OciFeatures::from_json(&no_idmap, (6, 18)).user_namespaces);
        let no_userns = RUNC_1_5.replace("\"time\",\"user\",", "");
        assert!(!OciFeatures::from_json(&no_userns, (6, 18)).user_namespaces);
    }

    #[test]
    fn garbage_is_no_features() {
        assert_eq!(
            OciFeatures::from_json("nope", (6, 18)),
            OciFeatures::default()
        );
        assert!(OciFeatures::from_json("{}", (6, 18)).answered);
    }

    #[test]
    fn a_runtime_without_the_command_supports_nothing() {
        assert_eq!(
            OciFeatures::probe("/nonexistent/runc"),
            OciFeatures::default()
        );
        // `false features` exits 1.
        assert_eq!(OciFeatures::probe("false"), OciFeatures::default());
    }
}
