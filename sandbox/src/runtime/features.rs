//! What a handler's OCI runtime can do here: its `features` command (the runtime-spec's
//! `features.json`, which containerd reads too) and the kernel it runs on. crun before the
//! `features` command (Debian 12's 1.8.1) is known by its version instead: since 1.8 it makes
//! `rro` mounts, and on Linux 6.3 pods in user namespaces of their own: it makes the user
//! namespace, and berth idmaps the container's binds itself (crun's own `idmap` mount option
//! fails, `mount_setattr`: EPERM, in a container that joins the pod's user and PID
//! namespaces, CRI's default: see [`crate::userns::binds`]). Any other runtime without the
//! command (Debian 12's runc 1.1.5), or one that does not answer within 2 s, supports none of
//! the optional features.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The optional features berth offers per handler.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OciFeatures {
    /// The runtime answered `features` with JSON.
    pub answered: bool,
    /// The features are known from this version (`crun 1.8.1`) instead.
    pub by_version: Option<(u32, u32, u32)>,
    /// Read-only mounts made so recursively (`rro`: the runtime lists it, Linux 5.12 has
    /// `mount_setattr`).
    pub recursive_read_only: bool,
    /// Pods in a user namespace of their own: the runtime makes user namespaces and idmapped
    /// mounts, and the kernel can idmap overlayfs layers and tmpfs (Linux 6.3), which the
    /// rootfs and the pod's own files need.
    pub user_namespaces: bool,
    /// The runtime idmaps bind mounts itself (`mountExtensions.idmap`); without it, berth
    /// does (see [`crate::userns::binds`]).
    pub idmap_mounts: bool,
}

/// The oldest crun whose `rro` mount option berth relies on (its `features` command came
/// later).
const CRUN_BY_VERSION: (u32, u32) = (1, 8);

impl OciFeatures {
    /// Asks `runtime` (a name on `$PATH` or a path). Blocks up to 2 s.
    pub fn probe(runtime: &str) -> Self {
        if let Some(json) = output_of(runtime, "features") {
            return Self::from_json(&json, kernel_version());
        }
        match output_of(runtime, "--version") {
            Some(v) => Self::from_version(&v, kernel_version()),
            None => Self::default(),
        }
    }

    /// The features a runtime without a `features` command has, by its `--version` answer
    /// (`crun version 1.8.1` first): crun 1.8 and later only.
    pub fn from_version(version: &str, kernel: (u32, u32)) -> Self {
        let Some(v) = version
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("crun version "))
            .and_then(parse_version)
        else {
            return Self::default();
        };
        if (v.0, v.1) < CRUN_BY_VERSION {
            return Self::default();
        }
        OciFeatures {
            answered: false,
            by_version: Some(v),
            recursive_read_only: kernel >= (5, 12),
            user_namespaces: kernel >= (6, 3),
            idmap_mounts: false,
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
        let idmap = linux["mountExtensions"]["idmap"]["enabled"].as_bool() == Some(true);
        OciFeatures {
            answered: true,
            by_version: None,
            recursive_read_only: kernel >= (5, 12) && lists(&f["mountOptions"], "rro"),
            user_namespaces: kernel >= (6, 3) && lists(&linux["namespaces"], "user") && idmap,
            idmap_mounts: idmap,
        }
    }

    /// For `berth doctor` and the logs: what this runtime does and does not do.
    pub fn summary(&self) -> String {
        if !self.answered && self.by_version.is_none() {
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
        let known = match self.by_version {
            Some((a, b, c)) => {
                format!(" (crun {a}.{b}.{c}, by its version: no `features` command)")
            }
            None => String::new(),
        };
        let idmap_by = if self.user_namespaces && !self.idmap_mounts {
            " (berth idmaps the binds)"
        } else {
            ""
        };
        format!(
            "{}, {}{idmap_by}{known}",
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

/// `1.8.1` (a suffix after the numbers, `1.8.1-dirty`, is ignored; a missing patch is 0).
fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.trim().split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
    });
    let major = it.next()?.ok()?;
    let minor = it.next()?.ok()?;
    let patch = it.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

/// What `runtime arg` prints, when it succeeds within 2 s.
fn output_of(runtime: &str, arg: &str) -> Option<String> {
    let mut child = Command::new(runtime)
        .arg(arg)
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
        assert!(f.answered && f.recursive_read_only && f.user_namespaces && f.idmap_mounts);
        assert!(!f.summary().contains("berth idmaps"), "{}", f.summary());
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
    fn crun_without_the_command_is_known_by_its_version() {
        let v = "crun version 1.8.1\ncommit: 0\nrundir: /run/crun\nspec: 1.0.0\n+SECCOMP";
        let f = OciFeatures::from_version(v, (6, 18));
        assert_eq!(f.by_version, Some((1, 8, 1)));
        // User namespaces with binds berth idmaps, on a kernel that idmaps overlayfs layers.
        assert!(f.recursive_read_only && f.user_namespaces && !f.idmap_mounts);
        assert!(f.summary().contains("crun 1.8.1"), "{}", f.summary());
        assert!(f.summary().contains("berth idmaps"), "{}", f.summary());
        assert!(!OciFeatures::from_version(v, (6, 1)).user_namespaces);
        assert!(!OciFeatures::from_version(v, (5, 10)).recursive_read_only);
        // Older crun, other runtimes, garbage: nothing.
        for other in [
            "crun version 1.7.2",
            "runc version 1.1.5",
            "crun version x",
            "",
        ] {
            assert_eq!(
                OciFeatures::from_version(other, (6, 18)),
                OciFeatures::default(),
                "{other:?}"
            );
        }
        assert_eq!(parse_version("1.10-dirty"), Some((1, 10, 0)));
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
