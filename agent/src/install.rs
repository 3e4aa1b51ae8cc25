//! `berth install` / `berth uninstall`: put berth on a host the way kata-deploy puts kata
//! there, from a DaemonSet pod (`--host-root /host`) or by hand (`--host-root /`).
//!
//! Install copies berth and the shims found beside it to `<root>/opt/berth/bin`, writes
//! `<root>/etc/berth/config.toml` only where none exists (a differing existing one is kept and
//! the new one written beside it as `config.toml.new`), installs the systemd unit, and
//! records every file and directory it created, with the file's digest, in
//! `<root>/opt/berth/install.json`. Uninstall removes exactly those, and only while they
//! still hold what install wrote: a file an operator changed is kept and reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// The systemd unit, as shipped in `deploy/berth.service`.
pub const UNIT: &str = include_str!("../../deploy/berth.service");

/// Shims install copies when they sit beside the berth binary.
pub const SHIMS: [&str; 4] = [
    "containerd-shim-berth-v1",
    "containerd-shim-runc-v2",
    "containerd-shim-runsc-v1",
    "containerd-shim-kata-v2",
];

const MANIFEST: &str = "opt/berth/install.json";

/// What install wrote: paths relative to the host root.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// File → sha256 of the content install wrote.
    pub files: BTreeMap<String, String>,
    /// Directories install created (removed on uninstall when empty), deepest last.
    pub dirs: Vec<String>,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Wrote(String),
    Unchanged(String),
    Kept(String, String),
    Removed(String),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Wrote(p) => write!(f, "wrote      {p}"),
            Action::Unchanged(p) => write!(f, "unchanged  {p}"),
            Action::Kept(p, why) => write!(f, "kept       {p} ({why})"),
            Action::Removed(p) => write!(f, "removed    {p}"),
        }
    }
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn rel(p: &str) -> &str {
    p.trim_start_matches('/')
}

struct Host {
    root: PathBuf,
    manifest: Manifest,
    report: Vec<Action>,
}

impl Host {
    fn open(root: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            root.is_absolute() && root.is_dir(),
            "--host-root {}: not an existing absolute directory",
            root.display()
        );
        let mpath = root.join(MANIFEST);
        let manifest = match std::fs::read(&mpath) {
            Ok(b) => {
                serde_json::from_slice(&b).with_context(|| format!("parse {}", mpath.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => return Err(e).with_context(|| format!("read {}", mpath.display())),
        };
        Ok(Host {
            root: root.to_path_buf(),
            manifest,
            report: Vec::new(),
        })
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(rel(p))
    }

    /// Creates `dir` and its missing parents, recording those it created.
    fn mkdirs(&mut self, dir: &str) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        let mut cur = Some(Path::new(rel(dir)));
        while let Some(d) = cur {
            if d.as_os_str().is_empty() || self.root.join(d).is_dir() {
                break;
            }
            missing.push(d.to_string_lossy().into_owned());
            cur = d.parent();
        }
        for d in missing.into_iter().rev() {
            std::fs::create_dir(self.root.join(&d))
                .with_context(|| format!("create {}", self.root.join(&d).display()))?;
            if !self.manifest.dirs.contains(&d) {
                self.manifest.dirs.push(d);
            }
        }
        Ok(())
    }

    /// Writes `data` to `p` (atomically, mode `mode`) unless it already holds it.
    fn put(&mut self, p: &str, data: &[u8], mode: u32) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(p);
        if std::fs::read(&path).is_ok_and(|cur| cur == data) {
            self.report.push(Action::Unchanged(p.to_string()));
            return Ok(());
        }
        if let Some(parent) = Path::new(rel(p)).parent() {
            self.mkdirs(&parent.to_string_lossy())?;
        }
        let tmp = path.with_extension("berth-tmp");
        std::fs::write(&tmp, data).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("install {}", path.display()))?;
        self.manifest.files.insert(rel(p).to_string(), sha(data));
        self.report.push(Action::Wrote(p.to_string()));
        Ok(())
    }

    fn save(&mut self) -> anyhow::Result<()> {
        let data = serde_json::to_vec_pretty(&self.manifest).unwrap_or_default();
        let path = self.path(MANIFEST);
        if std::fs::read(&path).is_ok_and(|cur| cur == data) {
            return Ok(());
        }
        std::fs::write(&path, data).with_context(|| format!("write {}", path.display()))
    }
}

/// What install will register, given the shims at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Shim binaries beside berth (to copy).
    pub shims: Vec<PathBuf>,
    /// Handler names to register.
    pub handlers: Vec<String>,
}

/// Looks for the shims beside `berth_bin` and on the host (`<root>/usr/bin`, `<root>/usr/local/bin`,
/// `<root>/opt/berth/bin`) and decides which handlers the host can run.
pub fn discover(berth_bin: &Path, root: &Path) -> Found {
    let beside = berth_bin.parent().unwrap_or(Path::new("/"));
    let shims: Vec<PathBuf> = SHIMS
        .iter()
        .map(|s| beside.join(s))
        .filter(|p| p.is_file())
        .collect();
    let on_host = |name: &str| {
        shims.iter().any(|p| p.ends_with(name))
            || ["usr/bin", "usr/local/bin", "opt/berth/bin"]
                .iter()
                .any(|d| root.join(d).join(name).is_file())
    };
    let mut handlers = Vec::new();
    if on_host("containerd-shim-runc-v2") {
        handlers.push("runc".to_string());
        if root.join("usr/bin/runsc").is_file() {
            handlers.push("runsc".to_string());
        }
    }
    // berth's own shim runs the host's crun (a host package, as runc is).
    if on_host("containerd-shim-berth-v1")
        && ["usr/bin/crun", "usr/local/bin/crun"]
            .iter()
            .any(|p| root.join(p).is_file())
    {
        handlers.push("crun".to_string());
    }
    if on_host("containerd-shim-kata-v2") {
        handlers.push("kata".to_string());
    }
    Found { shims, handlers }
}

/// The node labels the DaemonSet applies: `berth.io/runtime=true`, and
/// `katacontainers.io/kata-runtime=true` where the kata handler is registered.
pub fn labels(found: &Found) -> Vec<String> {
    let mut l = vec!["berth.io/runtime=true".to_string()];
    if found.handlers.iter().any(|h| h == "kata") {
        l.push("katacontainers.io/kata-runtime=true".to_string());
    }
    l
}

/// The config install writes: the defaults, with only the handlers this host can run.
pub fn host_config(found: &Found) -> anyhow::Result<String> {
    let mut cfg = Config::default();
    cfg.runtime
        .handlers
        .retain(|name, _| found.handlers.contains(name));
    anyhow::ensure!(
        !cfg.runtime.handlers.is_empty(),
        "no runtime handler can run here: neither containerd-shim-berth-v1 with crun nor containerd-shim-runc-v2 is beside berth or on the host"
    );
    if !cfg
        .runtime
        .handlers
        .contains_key(&cfg.runtime.default_handler)
    {
        cfg.runtime.default_handler = found.handlers[0].clone();
    }
    let body = toml::to_string_pretty(&cfg).context("render config")?;
    Ok(format!(
        "# Written by `berth install` for this host's shims ({}).\n# `berth config default` prints every key with its meaning.\n\n{body}",
        found.handlers.join(", ")
    ))
}

/// Installs onto `root`; returns what it did.
pub fn install(berth_bin: &Path, root: &Path) -> anyhow::Result<Vec<Action>> {
    let mut host = Host::open(root)?;
    let found = discover(berth_bin, root);
    let config = host_config(&found)?;
    let exe = std::fs::read(berth_bin).with_context(|| format!("read {}", berth_bin.display()))?;
    host.put("/opt/berth/bin/berth", &exe, 0o755)?;
    for s in &found.shims {
        let data = std::fs::read(s).with_context(|| format!("read {}", s.display()))?;
        let name = s.file_name().unwrap_or_default().to_string_lossy();
        host.put(&format!("/opt/berth/bin/{name}"), &data, 0o755)?;
    }
    let cfg_path = "/etc/berth/config.toml";
    let existing = std::fs::read(host.path(cfg_path)).ok();
    match existing {
        Some(cur)
            if cur != config.as_bytes() && !host.manifest.files.contains_key(rel(cfg_path)) =>
        {
            host.report.push(Action::Kept(
                cfg_path.into(),
                "an operator's config; the new one is config.toml.new".into(),
            ));
            host.put("/etc/berth/config.toml.new", config.as_bytes(), 0o644)?;
        }
        Some(cur)
            if cur != config.as_bytes()
                && host.manifest.files.get(rel(cfg_path)) != Some(&sha(&cur)) =>
        {
            host.report.push(Action::Kept(
                cfg_path.into(),
                "changed since install; the new one is config.toml.new".into(),
            ));
            host.put("/etc/berth/config.toml.new", config.as_bytes(), 0o644)?;
        }
        _ => host.put(cfg_path, config.as_bytes(), 0o644)?,
    }
    host.put("/etc/systemd/system/berth.service", UNIT.as_bytes(), 0o644)?;
    host.save()?;
    Ok(host.report)
}

/// Removes what install wrote, where it is still what install wrote.
pub fn uninstall(root: &Path) -> anyhow::Result<Vec<Action>> {
    let mut host = Host::open(root)?;
    if host.manifest == Manifest::default() {
        anyhow::ensure!(
            !host.path(MANIFEST).exists(),
            "{} is empty",
            host.path(MANIFEST).display()
        );
        return Ok(vec![]);
    }
    let files = std::mem::take(&mut host.manifest.files);
    for (p, digest) in &files {
        let path = host.root.join(p);
        match std::fs::read(&path) {
            Ok(cur) if &sha(&cur) == digest => {
                std::fs::remove_file(&path)
                    .with_context(|| format!("remove {}", path.display()))?;
                host.report.push(Action::Removed(format!("/{p}")));
            }
            Ok(_) => host.report.push(Action::Kept(
                format!("/{p}"),
                "changed since install".into(),
            )),
            Err(_) => {}
        }
    }
    let _ = std::fs::remove_file(host.path(MANIFEST));
    for d in host.manifest.dirs.iter().rev() {
        // Only empty ones: anything else in them is not install's.
        if std::fs::remove_dir(host.root.join(d)).is_ok() {
            host.report.push(Action::Removed(format!("/{d}/")));
        }
    }
    Ok(host.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host tree as (path, content) pairs, directories with a trailing slash.
    fn tree(root: &Path) -> Vec<(String, Vec<u8>)> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
            let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let p = e.path();
                let r = p.strip_prefix(root).unwrap().display().to_string();
                if p.is_dir() {
                    out.push((format!("{r}/"), vec![]));
                    walk(root, &p, out);
                } else {
                    out.push((r, std::fs::read(&p).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(root, root, &mut out);
        out
    }

    fn fake_bin(dir: &Path, shims: &[&str]) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let b = dir.join("berth");
        std::fs::write(&b, b"berth binary").unwrap();
        for s in shims {
            std::fs::write(dir.join(s), format!("{s} binary")).unwrap();
        }
        b
    }

    #[test]
    fn install_then_uninstall_leaves_the_tree_as_it_was() {
        let src = tempfile::tempdir().unwrap();
        let bin = fake_bin(src.path(), &["containerd-shim-runc-v2"]);
        let host = tempfile::tempdir().unwrap();
        let root = host.path();
        // Things that were there before and must survive.
        std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        std::fs::write(root.join("etc/systemd/system/other.service"), "x").unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/runsc"), "runsc").unwrap();
        let before = tree(root);

        let report = install(&bin, root).unwrap();
        assert!(
            report.iter().all(|a| matches!(a, Action::Wrote(_))),
            "{report:?}"
        );
        for (p, want) in [
            ("opt/berth/bin/berth", &b"berth binary"[..]),
            (
                "opt/berth/bin/containerd-shim-runc-v2",
                &b"containerd-shim-runc-v2 binary"[..],
            ),
            ("etc/systemd/system/berth.service", UNIT.as_bytes()),
        ] {
            assert_eq!(std::fs::read(root.join(p)).unwrap(), want, "{p}");
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("opt/berth/bin/berth"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        // The config registers runc and runsc (runc shim + /usr/bin/runsc), not kata.
        let cfg =
            Config::parse(&std::fs::read_to_string(root.join("etc/berth/config.toml")).unwrap())
                .unwrap();
        assert_eq!(
            cfg.runtime.handlers.keys().collect::<Vec<_>>(),
            vec!["runc", "runsc"]
        );
        assert_eq!(labels(&discover(&bin, root)), vec!["berth.io/runtime=true"]);

        // A second install changes nothing.
        let after_first = tree(root);
        let again = install(&bin, root).unwrap();
        assert!(
            again.iter().all(|a| matches!(a, Action::Unchanged(_))),
            "{again:?}"
        );
        assert_eq!(tree(root), after_first);

        let gone = uninstall(root).unwrap();
        assert!(
            gone.iter().all(|a| matches!(a, Action::Removed(_))),
            "{gone:?}"
        );
        assert_eq!(tree(root), before);
        // And again: nothing to do.
        assert_eq!(uninstall(root).unwrap(), vec![]);
    }

    #[test]
    fn an_operators_config_is_kept_and_a_changed_file_survives_uninstall() {
        let src = tempfile::tempdir().unwrap();
        let bin = fake_bin(
            src.path(),
            &["containerd-shim-runc-v2", "containerd-shim-kata-v2"],
        );
        let host = tempfile::tempdir().unwrap();
        let root = host.path();
        std::fs::create_dir_all(root.join("etc/berth")).unwrap();
        std::fs::write(root.join("etc/berth/config.toml"), "# mine\n").unwrap();

        let report = install(&bin, root).unwrap();
        assert!(report.contains(&Action::Kept(
            "/etc/berth/config.toml".into(),
            "an operator's config; the new one is config.toml.new".into()
        )));
        assert_eq!(
            std::fs::read_to_string(root.join("etc/berth/config.toml")).unwrap(),
            "# mine\n"
        );
        let new = std::fs::read_to_string(root.join("etc/berth/config.toml.new")).unwrap();
        assert!(new.contains("[runtime.handlers.kata]"), "{new}");
        assert_eq!(
            labels(&discover(&bin, root)),
            vec![
                "berth.io/runtime=true",
                "katacontainers.io/kata-runtime=true"
            ]
        );

        // The operator edits the unit; uninstall keeps it and their config.
        std::fs::write(root.join("etc/systemd/system/berth.service"), "edited").unwrap();
        let gone = uninstall(root).unwrap();
        assert!(gone.contains(&Action::Kept(
            "/etc/systemd/system/berth.service".into(),
            "changed since install".into()
        )));
        assert_eq!(
            std::fs::read_to_string(root.join("etc/berth/config.toml")).unwrap(),
            "# mine\n"
        );
        assert!(!root.join("etc/berth/config.toml.new").exists());
        assert!(!root.join("opt/berth").exists());
    }

    #[test]
    fn berths_shim_with_the_hosts_crun_is_the_default_else_runc() {
        let src = tempfile::tempdir().unwrap();
        let bin = fake_bin(
            src.path(),
            &["containerd-shim-runc-v2", "containerd-shim-berth-v1"],
        );
        let host = tempfile::tempdir().unwrap();
        let found = discover(&bin, host.path());
        assert_eq!(found.handlers, ["runc"], "no crun on the host");
        let cfg = Config::parse(&host_config(&found).unwrap()).unwrap();
        assert_eq!(cfg.runtime.default_handler, "runc");
        std::fs::create_dir_all(host.path().join("usr/bin")).unwrap();
        std::fs::write(host.path().join("usr/bin/crun"), "crun").unwrap();
        let found = discover(&bin, host.path());
        assert_eq!(found.handlers, ["runc", "crun"]);
        let cfg = Config::parse(&host_config(&found).unwrap()).unwrap();
        assert_eq!(cfg.runtime.default_handler, "crun");
        assert_eq!(
            cfg.runtime.handlers["crun"].runtime_type,
            crate::config::BERTH_SHIM
        );
    }

    #[test]
    fn no_runc_shim_anywhere_is_an_error() {
        let src = tempfile::tempdir().unwrap();
        let bin = fake_bin(src.path(), &[]);
        let host = tempfile::tempdir().unwrap();
        let e = install(&bin, host.path()).unwrap_err();
        assert!(e.to_string().contains("containerd-shim-runc-v2"), "{e}");
        assert!(!host.path().join("opt").exists());
    }
}
