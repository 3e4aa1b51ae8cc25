//! `berth doctor`: checks a node the way an operator would and says, for each problem, how
//! to fix it. Exit status 1 when something berth needs is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;

mod daemon;
mod images;
mod network;
mod node;
pub(crate) use node::state_dir;
mod runtimes;

/// One check's outcome.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// kernel, runtime, cni, registry, daemon.
    pub area: &'static str,
    pub name: String,
    pub ok: bool,
    /// A failed required check makes the node unfit; an optional one is a warning.
    pub required: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

pub(super) fn pass(
    area: &'static str,
    name: impl Into<String>,
    detail: impl Into<String>,
) -> Check {
    Check {
        area,
        name: name.into(),
        ok: true,
        required: true,
        detail: detail.into(),
        fix: None,
    }
}

pub(super) fn fail(
    area: &'static str,
    name: impl Into<String>,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        area,
        name: name.into(),
        ok: false,
        required: true,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

/// Runs every check.
pub async fn run(cfg: &Config) -> Vec<Check> {
    let mut c = node::kernel();
    c.push(node::state_dir(&cfg.state));
    c.extend(runtimes::handlers(cfg).await);
    c.extend(runtimes::nri(cfg));
    c.extend(network::cni(cfg));
    c.extend(images::registry(cfg));
    c.extend(images::decryption_keys(&cfg.image_decryption.keys_dir));
    c.extend(images::signature_policy(&cfg.image_policy.path));
    c.push(images::fuse(!cfg.lazy_pull.registries.is_empty()));
    c.push(images::quarantined_layers(&cfg.root));
    c.extend(daemon::daemon(cfg).await);
    c
}

/// Whether every required check passed.
pub fn healthy(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.ok || !c.required)
}

/// The table: one line per check, ✔ / ✘ (⚠ for an optional miss), the fix under each miss.
pub fn render(checks: &[Check]) -> String {
    let w = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut s = String::new();
    for c in checks {
        let mark = match (c.ok, c.required) {
            (true, _) => "✔",
            (false, true) => "✘",
            (false, false) => "⚠",
        };
        s.push_str(&format!(
            "{mark} {:<8} {:<w$}  {}\n",
            c.area, c.name, c.detail
        ));
        if let Some(f) = &c.fix {
            s.push_str(&format!("  {:<8} {:<w$}  fix: {f}\n", "", ""));
        }
    }
    let bad = checks.iter().filter(|c| !c.ok && c.required).count();
    let warn = checks.iter().filter(|c| !c.ok && !c.required).count();
    s.push_str(&match (bad, warn) {
        (0, 0) => "node is ready for berth\n".to_string(),
        (0, w) => format!("node is ready for berth ({w} optional item(s) missing)\n"),
        (b, _) => format!("{b} problem(s) keep berth from working here\n"),
    });
    s
}

/// The first line `binary args` prints, within 5 s.
pub(super) async fn version(binary: &Path, args: &[&str]) -> Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::process::Command::new(binary)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "did not answer within 5 s".to_string())?
    .map_err(|e| e.to_string())?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // containerd shims print their name, then `Version: ...`; others put it first.
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Version:"))
        .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("");
    Ok(line.trim().to_string())
}

pub(super) fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub(super) fn on_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| executable(c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_marks_and_fixes() {
        let mut opt = fail("daemon", "sandbox image", "not pulled", "crictl pull x");
        opt.required = false;
        let checks = vec![
            pass("kernel", "overlayfs", "supported"),
            fail(
                "cni",
                "network config",
                "no conflist",
                "put one in /etc/cni/net.d",
            ),
            opt,
        ];
        let t = render(&checks);
        assert!(t.contains("✔ kernel   overlayfs"), "{t}");
        assert!(t.contains("✘ cni      network config"), "{t}");
        assert!(t.contains("fix: put one in /etc/cni/net.d"), "{t}");
        assert!(t.contains("⚠ daemon"), "{t}");
        assert!(
            t.ends_with("1 problem(s) keep berth from working here\n"),
            "{t}"
        );
        assert!(!healthy(&checks));
        assert!(healthy(&checks[..1]));
    }
}
