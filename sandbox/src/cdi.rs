//! CDI, the Container Device Interface (KEP-4009: what device plugins and DRA drivers hand the
//! runtime): spec files in the spec directories (`/etc/cdi`, `/var/run/cdi`; YAML or JSON),
//! devices named `vendor.com/class=name`, and the edits a device brings (environment, device
//! nodes, mounts, hooks, additional groups) applied to a container's OCI spec.
//!
//! As the upstream library does: a later directory wins over an earlier one for a device both
//! define; a spec file that cannot be read or is malformed is left out (and named in the error
//! of a device that then cannot be found); spec-wide edits come with any of the spec's devices.
//! Spec files are bounded (1 MiB each, 1024 per directory, 4096 devices in all): a directory
//! is the node's, but what is in it is parsed as hostile input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::spec::oci;

const MAX_SPEC_BYTES: u64 = 1 << 20;
const MAX_SPECS_PER_DIR: usize = 1024;
const MAX_DEVICES: usize = 4096;
/// The spec versions the upstream library accepts.
const VERSIONS: &[&str] = &[
    "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

/// The annotation prefix that names CDI devices (`cdi.k8s.io/<key>: vendor.com/class=a,…`).
pub const ANNOTATION_PREFIX: &str = "cdi.k8s.io/";

/// The edits of a device or a spec.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Edits {
    /// `NAME=value`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Device nodes to create.
    #[serde(default)]
    pub device_nodes: Vec<DeviceNode>,
    /// Mounts to add.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// OCI hooks to add.
    #[serde(default)]
    pub hooks: Vec<Hook>,
    /// Groups the container's process also gets.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// A device node.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    /// Its path in the container.
    pub path: String,
    /// The node on the host (default: `path`).
    #[serde(default)]
    pub host_path: Option<String>,
    /// `c` or `b` (default: the host node's).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// Major number (default: the host node's).
    #[serde(default)]
    pub major: Option<i64>,
    /// Minor number (default: the host node's).
    #[serde(default)]
    pub minor: Option<i64>,
    /// Permission bits.
    #[serde(default)]
    pub file_mode: Option<u32>,
    /// Device cgroup access, `rwm` by default.
    #[serde(default)]
    pub permissions: Option<String>,
    /// Owner.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Group.
    #[serde(default)]
    pub gid: Option<u32>,
}

/// A mount.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    /// The source on the host.
    pub host_path: String,
    /// Where in the container.
    pub container_path: String,
    /// mount(8) options.
    #[serde(default)]
    pub options: Vec<String>,
    /// The filesystem type (default `bind`).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

/// An OCI hook.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// `prestart`, `createRuntime`, `createContainer`, `startContainer`, `poststart` or
    /// `poststop`.
    pub hook_name: String,
    /// The program.
    pub path: String,
    /// Its argv.
    #[serde(default)]
    pub args: Vec<String>,
    /// Its environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds it may take.
    #[serde(default)]
    pub timeout: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecFile {
    cdi_version: String,
    kind: String,
    #[serde(default)]
    devices: Vec<DeviceSpec>,
    #[serde(default)]
    container_edits: Edits,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceSpec {
    name: String,
    #[serde(default)]
    container_edits: Edits,
}

/// A device found: its own edits and its spec's.
#[derive(Debug, Clone)]
struct Found {
    spec_edits: Edits,
    edits: Edits,
    file: PathBuf,
}

/// Checks a fully qualified device name, `vendor.com/class=name`.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "CDI device name {name:?}: {why} (vendor.com/class=name)"
        ))
    };
    let Some((kind, dev)) = name.split_once('=') else {
        return bad("no '='");
    };
    let Some((vendor, class)) = kind.split_once('/') else {
        return bad("no vendor");
    };
    let word = |s: &str, extra: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
    };
    if !word(vendor, "-_.") || !word(class, "-_") || !word(dev, "-_.:") {
        return bad("a part is empty, too long or has characters CDI does not allow");
    }
    Ok(())
}

/// The CDI devices a container asks for: its `cdi_devices`, then those its annotations name.
pub fn requested(cdi_devices: &[String], annotations: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = cdi_devices.to_vec();
    for (k, v) in annotations {
        if k.starts_with(ANNOTATION_PREFIX) {
            out.extend(
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty()),
            );
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|n| seen.insert(n.clone()));
    out
}

/// Resolves `names` against the spec files in `dirs` (later ones win): the edits to apply,
/// spec-wide edits once per spec. Blocking.
pub fn resolve(dirs: &[PathBuf], names: &[String]) -> Result<Vec<Edits>> {
    for n in names {
        check_name(n).map_err(Error::Invalid)?;
    }
    let (devices, broken) = load(dirs);
    let mut out = Vec::new();
    let mut missing = Vec::new();
    let mut specs_used: Vec<PathBuf> = Vec::new();
    for n in names {
        match devices.get(n) {
            Some(f) => {
                if !specs_used.contains(&f.file) {
                    specs_used.push(f.file.clone());
                    out.push(f.spec_edits.clone());
                }
                out.push(f.edits.clone());
            }
            None => missing.push(n.clone()),
        }
    }
    if !missing.is_empty() {
        let mut msg = format!(
            "unresolvable CDI devices {}: no spec in {} defines them",
            missing.join(", "),
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !broken.is_empty() {
            msg.push_str(&format!(
                "; spec files left out: {}",
                broken
                    .iter()
                    .map(|(p, why)| format!("{}: {why}", p.display()))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        return Err(Error::NotFound(msg));
    }
    Ok(out)
}

/// Every device in the spec files of `dirs`, and the files left out with why.
fn load(dirs: &[PathBuf]) -> (BTreeMap<String, Found>, Vec<(PathBuf, String)>) {
    let mut devices = BTreeMap::new();
    let mut broken = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            })
            .collect();
        files.sort();
        if files.len() > MAX_SPECS_PER_DIR {
            broken.push((
                dir.clone(),
                format!("more than {MAX_SPECS_PER_DIR} spec files; the rest are left out"),
            ));
            files.truncate(MAX_SPECS_PER_DIR);
        }
        // Within a directory two specs must not define one device; across directories the
        // later one wins.
        let mut here: BTreeMap<String, Found> = BTreeMap::new();
        for file in files {
            match read_spec(&file) {
                Ok(spec) => {
                    let mut clash = None;
                    for d in &spec.devices {
                        let name = format!("{}={}", spec.kind, d.name);
                        if here.contains_key(&name) {
                            clash = Some(name);
                            break;
                        }
                    }
                    if let Some(name) = clash {
                        broken.push((file, format!("{name} is defined by another spec here too")));
                        continue;
                    }
                    for d in spec.devices {
                        if devices.len() + here.len() >= MAX_DEVICES {
                            break;
                        }
                        here.insert(
                            format!("{}={}", spec.kind, d.name),
                            Found {
                                spec_edits: spec.container_edits.clone(),
                                edits: d.container_edits,
                                file: file.clone(),
                            },
                        );
                    }
                }
                Err(why) => {
                    tracing::warn!(spec = %file.display(), err = %why, "CDI spec left out");
                    broken.push((file, why));
                }
            }
        }
        devices.extend(here);
    }
    (devices, broken)
}

fn read_spec(file: &Path) -> std::result::Result<SpecFile, String> {
    use std::io::Read as _;
    let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    if !f.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    f.take(MAX_SPEC_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_SPEC_BYTES {
        return Err(format!("larger than {MAX_SPEC_BYTES} bytes"));
    }
    let spec: SpecFile = if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| e.to_string())?
    } else {
        serde_yaml::from_str(&text).map_err(|e| e.to_string())?
    };
    if !VERSIONS.contains(&spec.cdi_version.as_str()) {
        return Err(format!(
            "cdiVersion {:?} is not one of {}",
            spec.cdi_version,
            VERSIONS.join(", ")
        ));
    }
    check_name(&format!("{}=x", spec.kind))
        .map_err(|_| format!("kind {:?} is not vendor.com/class", spec.kind))?;
    if spec.devices.is_empty() {
        return Err("no devices".into());
    }
    for d in &spec.devices {
        check_name(&format!("{}={}", spec.kind, d.name))?;
    }
    for e in std::iter::once(&spec.container_edits)
        .chain(spec.devices.iter().map(|d| &d.container_edits))
    {
        check_edits(e)?;
    }
    Ok(spec)
}

fn check_edits(e: &Edits) -> std::result::Result<(), String> {
    for v in &e.env {
        if !v.contains('=') || v.starts_with('=') {
            return Err(format!("env {v:?} is not NAME=value"));
        }
    }
    for d in &e.device_nodes {
        if !d.path.starts_with('/') {
            return Err(format!("device node path {:?} is not absolute", d.path));
        }
        if let Some(k) = &d.kind
            && !matches!(k.as_str(), "c" | "b" | "u" | "p")
        {
            return Err(format!("device node {}: type {k:?}", d.path));
        }
        if let Some(p) = &d.permissions
            && (p.is_empty() || !p.chars().all(|c| "rwm".contains(c)))
        {
            return Err(format!("device node {}: permissions {p:?}", d.path));
        }
    }
    for m in &e.mounts {
        if !m.container_path.starts_with('/') {
            return Err(format!(
                "mount containerPath {:?} is not absolute",
                m.container_path
            ));
        }
    }
    for h in &e.hooks {
        if !matches!(
            h.hook_name.as_str(),
            "prestart"
                | "createRuntime"
                | "createContainer"
                | "startContainer"
                | "poststart"
                | "poststop"
        ) {
            return Err(format!("hook name {:?}", h.hook_name));
        }
        if !h.path.starts_with('/') {
            return Err(format!("hook path {:?} is not absolute", h.path));
        }
    }
    Ok(())
}

/// Applies `edits` to `spec`: environment (a later value replaces an earlier one), device nodes
/// with their cgroup rules (type and numbers from the host node where the spec leaves them out),
/// mounts, hooks and groups.
pub fn apply(
    spec: &mut oci::Spec,
    edits: &[Edits],
    host: &dyn crate::spec::host::Host,
) -> Result<()> {
    for e in edits {
        if let Some(p) = spec.process.as_mut() {
            for v in &e.env {
                let key = v.split('=').next().unwrap_or_default();
                p.env.retain(|x| x.split('=').next() != Some(key));
                p.env.push(v.clone());
            }
            for g in &e.additional_gids {
                if !p.user.additional_gids.contains(g) {
                    p.user.additional_gids.push(*g);
                }
            }
        }
        let linux = spec.linux.get_or_insert_default();
        for d in &e.device_nodes {
            let host_path = d.host_path.as_deref().unwrap_or(&d.path);
            let known = match (&d.kind, d.major, d.minor) {
                (Some(k), Some(major), Some(minor)) => oci::Device {
                    path: d.path.clone(),
                    kind: k.clone(),
                    major,
                    minor,
                    ..Default::default()
                },
                _ => host
                    .device(host_path)
                    .map_err(|e| Error::Invalid(format!("CDI device node {}: {e}", d.path)))?,
            };
            let dev = oci::Device {
                path: d.path.clone(),
                file_mode: d.file_mode.or(known.file_mode),
                uid: d.uid.or(known.uid),
                gid: d.gid.or(known.gid),
                ..known
            };
            linux
                .resources
                .get_or_insert_default()
                .devices
                .push(oci::DeviceRule {
                    allow: true,
                    kind: Some(dev.kind.clone()),
                    major: Some(dev.major),
                    minor: Some(dev.minor),
                    access: Some(d.permissions.clone().unwrap_or_else(|| "rwm".into())),
                });
            linux.devices.retain(|x| x.path != dev.path);
            linux.devices.push(dev);
        }
        for m in &e.mounts {
            spec.mounts.retain(|x| x.destination != m.container_path);
            let mut options = m.options.clone();
            let kind = m.kind.clone().unwrap_or_else(|| "bind".into());
            if kind == "bind" && !options.iter().any(|o| o == "bind" || o == "rbind") {
                options.insert(0, "rbind".into());
            }
            spec.mounts.push(oci::Mount {
                destination: m.container_path.clone(),
                kind,
                source: m.host_path.clone(),
                options,
                ..Default::default()
            });
        }
        for h in &e.hooks {
            let hook = oci::Hook {
                path: h.path.clone(),
                args: h.args.clone(),
                env: h.env.clone(),
                timeout: h.timeout,
            };
            let hooks = spec.hooks.get_or_insert_default();
            match h.hook_name.as_str() {
                "prestart" => hooks.prestart.push(hook),
                "createRuntime" => hooks.create_runtime.push(hook),
                "createContainer" => hooks.create_container.push(hook),
                "startContainer" => hooks.start_container.push(hook),
                "poststart" => hooks.poststart.push(hook),
                _ => hooks.poststop.push(hook),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_vendor_class_and_device() {
        for ok in [
            "example.com/fuse=fuse",
            "nvidia.com/gpu=0",
            "a.b/c-d=e_f.g:1",
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "fuse",
            "example.com/fuse",
            "/fuse=a",
            "example.com/=a",
            "example.com/x=",
            "e/x=a b",
            "e/x/y=a",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_come_from_the_field_and_the_annotations_once_each() {
        let ann = BTreeMap::from([
            (
                "cdi.k8s.io/plugin".to_string(),
                "e.com/a=1, e.com/a=2".to_string(),
            ),
            ("other".to_string(), "e.com/a=9".to_string()),
        ]);
        assert_eq!(
            requested(&["e.com/a=1".into()], &ann),
            ["e.com/a=1", "e.com/a=2"]
        );
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn specs_resolve_later_directories_win_and_broken_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let (etc, run) = (d.path().join("etc"), d.path().join("run"));
        write(
            &etc,
            "fuse.yaml",
            "cdiVersion: 0.6.0\nkind: example.com/dev\ncontainerEdits:\n  env: [SPEC=1]\ndevices:\n- name: fuse\n  containerEdits:\n    env: [WHO=etc]\n    deviceNodes: [{path: /dev/fuse}]\n- name: kvm\n  containerEdits:\n    env: [WHO=etc-kvm]\n",
        );
        write(
            &run,
            "kvm.json",
            r#"{"cdiVersion":"0.5.0","kind":"example.com/dev","devices":[{"name":"kvm","containerEdits":{"env":["WHO=run"]}}]}"#,
        );
        write(&run, "broken.yaml", "cdiVersion: 0.6.0\nkind: [nope\n");
        write(
            &run,
            "old.yaml",
            "cdiVersion: 0.1.0\nkind: a.com/b\ndevices: [{name: x}]\n",
        );
        let dirs = vec![etc, run];
        let e = resolve(
            &dirs,
            &["example.com/dev=fuse".into(), "example.com/dev=kvm".into()],
        )
        .unwrap();
        // fuse's spec edits once, fuse's own, then kvm's from the later directory.
        let envs: Vec<_> = e.iter().flat_map(|e| e.env.clone()).collect();
        assert_eq!(envs, ["SPEC=1", "WHO=etc", "WHO=run"]);
        let err = resolve(&dirs, &["example.com/dev=gpu".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("example.com/dev=gpu"), "{err}");
        assert!(
            err.contains("broken.yaml: ") && err.contains("old.yaml: cdiVersion"),
            "{err}"
        );
        assert!(resolve(&dirs, &["nonsense".into()]).is_err());
    }

    #[test]
    fn oversized_and_hostile_specs_are_left_out() {
        let d = tempfile::tempdir().unwrap();
        let big = format!(
            "cdiVersion: 0.6.0\nkind: e.com/x\ndevices: [{{name: a}}]\n#{}\n",
            "x".repeat(MAX_SPEC_BYTES as usize)
        );
        write(d.path(), "big.yaml", &big);
        write(
            d.path(),
            "rel.yaml",
            "cdiVersion: 0.6.0\nkind: e.com/y\ndevices: [{name: a, containerEdits: {mounts: [{hostPath: /x, containerPath: rel}]}}]\n",
        );
        let err = resolve(&[d.path().to_path_buf()], &["e.com/x=a".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("larger than"), "{err}");
        assert!(err.contains("not absolute"), "{err}");
    }
}
