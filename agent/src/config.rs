//! berth's configuration file: TOML, every key optional, unknown keys rejected.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

pub use crate::logging::{LogConfig, LogFormat};

/// The default configuration, as shipped in `deploy/config.toml`.
pub const DEFAULT_CONFIG: &str = include_str!("../../deploy/config.toml");

/// Where berth looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub root: PathBuf,
    pub state: PathBuf,
    pub address: PathBuf,
    pub sandbox_image: String,
    pub max_concurrent_downloads: usize,
    pub log: LogConfig,
    pub registry: RegistryConfig,
    pub image_decryption: ImageDecryptionConfig,
    pub image_policy: ImagePolicyConfig,
    pub lazy_pull: LazyPullConfig,
    pub cni: CniConfig,
    pub runtime: RuntimeConfig,
    pub stream: StreamConfig,
    pub cadvisor: CadvisorConfig,
    pub cdi: CdiConfig,
    pub metrics: MetricsConfig,
    pub nri: NriConfig,
}

/// Which images the node trusts (see `berth_image::policy`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ImagePolicyConfig {
    /// A `policy.json` (containers/image's format: CRI-O's `signature_policy`); empty: every
    /// image is accepted.
    pub path: PathBuf,
}

/// The Prometheus endpoint (containerd's `[metrics]`, CRI-O's `enable_metrics`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` to serve `/metrics` on; empty: no endpoint.
    pub address: String,
    /// PEM certificate chain and key to serve TLS; both empty: plain HTTP.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
}

/// NRI (containerd's `[plugins."io.containerd.nri.v1.nri"]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NriConfig {
    /// NRI on (as in containerd 2.0).
    pub enable: bool,
    /// Where external plugins connect.
    pub socket_path: PathBuf,
    /// Plugins started with berth: executables named `NN-name`.
    pub plugin_path: PathBuf,
    /// Their configuration files (`NN-name.conf` or `name.conf`).
    pub plugin_config_path: PathBuf,
    /// How long a plugin has to register once connected (ms).
    pub plugin_registration_timeout_ms: u64,
    /// How long a plugin has to answer a call (ms).
    pub plugin_request_timeout_ms: u64,
    /// No external plugins: only those started from `plugin_path`.
    pub disable_connections: bool,
    /// Plugins (`NN-name` or `name`) whose failure to answer fails the call instead of
    /// being skipped.
    pub required_plugins: Vec<String>,
}

impl Default for NriConfig {
    fn default() -> Self {
        NriConfig {
            enable: true,
            socket_path: "/var/run/nri/nri.sock".into(),
            plugin_path: "/opt/nri/plugins".into(),
            plugin_config_path: "/etc/nri/conf.d".into(),
            plugin_registration_timeout_ms: 5000,
            plugin_request_timeout_ms: 2000,
            disable_connections: false,
            required_plugins: vec![],
        }
    }
}

/// CDI devices (containerd's `enable_cdi`, `cdi_spec_dirs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CdiConfig {
    /// Inject the CDI devices containers ask for (on by default, as in containerd 2.0).
    pub enable: bool,
    /// Where spec files are, later directories winning.
    pub spec_dirs: Vec<PathBuf>,
}

impl Default for CdiConfig {
    fn default() -> Self {
        CdiConfig {
            enable: true,
            spec_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
        }
    }
}

/// What the kubelet's built-in cAdvisor is answered (see `crate::cadvisor`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CadvisorConfig {
    /// Where berth answers the containerd calls cAdvisor makes about containers (empty: not
    /// served); taken only when nothing serves there.
    pub containerd_socket: PathBuf,
}

impl Default for CadvisorConfig {
    fn default() -> Self {
        CadvisorConfig {
            containerd_socket: "/run/containerd/containerd.sock".into(),
        }
    }
}

/// The streaming server behind Exec, Attach and PortForward.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// The IP to listen on.
    pub address: String,
    /// The TCP port (0: a free one, chosen at start-up).
    pub port: u16,
    /// How long an Exec/Attach/PortForward URL stays valid, in seconds.
    pub token_ttl_seconds: u64,
    /// A session in which nothing moved for this long is closed, in seconds (0: never).
    pub idle_timeout_seconds: u64,
    /// TLS certificate chain and key (PEM); both empty: plain HTTP.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Sessions one client (by IP address) may hold open at once.
    pub max_sessions_per_client: usize,
    /// Streams one session may hold open at once.
    pub max_streams_per_session: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            address: "127.0.0.1".into(),
            port: 0,
            token_ttl_seconds: 60,
            idle_timeout_seconds: 4 * 3600,
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            max_sessions_per_client: 128,
            max_streams_per_session: 256,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub config_path: PathBuf,
    /// How long connecting to a registry host may take (TCP and TLS), in seconds.
    pub dial_timeout_seconds: u64,
    /// How long a host may take to answer a request with its response headers, in seconds;
    /// a host that does not is skipped for the rest of the pull.
    pub response_header_timeout_seconds: u64,
    /// How long a download may go without receiving a byte, in seconds (containerd's
    /// `image_pull_progress_timeout`).
    pub progress_timeout_seconds: u64,
}

/// Encrypted images (ocicrypt), with keys held by the node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImageDecryptionConfig {
    /// The node's private keys (PEM, DER or JWK, not password-protected), read anew on every
    /// pull of an encrypted image.
    pub keys_dir: PathBuf,
}

/// Lazy pulling of eStargz images.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LazyPullConfig {
    /// Registries (`host` or `host:port`, as image references name them) whose eStargz
    /// layers are mounted lazily; `"*"`: every registry. Empty: none.
    pub registries: Vec<String>,
    /// Fetch every chunk in the background after the prefetch (else only what is read).
    pub background_fetch: bool,
    /// How long a read of a file not on disk yet may wait for its registry, in seconds.
    pub read_timeout_seconds: u64,
    /// A layer's uncompressed table of contents, at most (bytes).
    pub max_toc_size: u64,
    /// Memory one layer's tree may take, at most (bytes).
    pub max_tree_memory: u64,
    /// One chunk's uncompressed size, at most (bytes).
    pub max_chunk_size: u64,
}

impl Default for LazyPullConfig {
    fn default() -> Self {
        let limits = berth_lazy::toc::Limits::default();
        LazyPullConfig {
            registries: vec![],
            background_fetch: true,
            read_timeout_seconds: 30,
            max_toc_size: limits.max_toc,
            max_tree_memory: limits.max_tree,
            max_chunk_size: limits.max_chunk,
        }
    }
}

impl Default for ImageDecryptionConfig {
    fn default() -> Self {
        ImageDecryptionConfig {
            keys_dir: "/etc/berth/ocicrypt/keys".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    /// How long one plugin run (ADD, CHECK or DEL) may take, in seconds; a plugin still
    /// running then is killed and the operation fails.
    pub plugin_timeout_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    pub default_handler: String,
    pub container_log_max_size: u64,
    pub container_log_max_files: u32,
    /// Keep one shim started ahead of time for the default handler's shim binary.
    pub warm_shim: bool,
    pub handlers: BTreeMap<String, Handler>,
}

/// A RuntimeClass handler: which shim v2 runs its pods, and with what options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Handler {
    pub runtime_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_annotations: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_annotations: Vec<String>,
    /// Global flags for the engine, for a runsc `BinaryName` only (berth runs runsc through
    /// its own adapter, which adds them: see `berth_sandbox::runsc`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_args: Vec<String>,
    #[serde(default)]
    pub options: HandlerOptions,
}

/// berth's own shim (`containerd-shim-berth-v1`, the `shim/` crate): runc's options, runc or
/// crun as its runtime.
pub const BERTH_SHIM: &str = "io.containerd.berth.v1";
/// containerd's runc shim.
pub const RUNC_SHIM: &str = "io.containerd.runc.v2";

impl Handler {
    /// Whether this handler's shim takes runc's options (`BinaryName`, `Root`,
    /// `SystemdCgroup`) and runs an OCI runtime binary: containerd's runc shim and berth's.
    pub fn runs_oci_runtime(&self) -> bool {
        self.runtime_type == RUNC_SHIM || self.runtime_type == BERTH_SHIM
    }

    /// Whether this handler runs runsc (through containerd's runc shim or berth's, and
    /// berth's runsc adapter either way).
    pub fn is_runsc(&self) -> bool {
        self.runs_oci_runtime()
            && self
                .options
                .binary_name
                .as_deref()
                .is_some_and(|b| Path::new(b).file_name().is_some_and(|n| n == "runsc"))
    }
}

/// Options handed to the shim, named as containerd names them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct HandlerOptions {
    #[serde(
        rename = "BinaryName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub binary_name: Option<String>,
    #[serde(rename = "SystemdCgroup", default)]
    pub systemd_cgroup: bool,
    #[serde(
        rename = "ConfigPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub config_path: Option<PathBuf>,
    #[serde(rename = "Root", default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        let mut handlers = BTreeMap::new();
        handlers.insert(
            "runc".into(),
            Handler {
                runtime_type: "io.containerd.runc.v2".into(),
                ..Default::default()
            },
        );
        handlers.insert(
            "crun".into(),
            Handler {
                runtime_type: BERTH_SHIM.into(),
                options: HandlerOptions {
                    binary_name: Some("crun".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        handlers.insert(
            "runsc".into(),
            Handler {
                runtime_type: "io.containerd.runc.v2".into(),
                options: HandlerOptions {
                    binary_name: Some("/usr/bin/runsc".into()),
                    ..Default::default()
                },
                engine_args: vec!["--network=host".into()],
                ..Default::default()
            },
        );
        handlers.insert(
            "kata".into(),
            Handler {
                runtime_type: "io.containerd.kata.v2".into(),
                options: HandlerOptions {
                    config_path: Some(
                        "/opt/kata/share/defaults/kata-containers/configuration.toml".into(),
                    ),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        Config {
            root: "/var/lib/berth".into(),
            state: "/run/berth".into(),
            address: "/run/berth/berth.sock".into(),
            sandbox_image: "registry.k8s.io/pause:3.9".into(),
            max_concurrent_downloads: 3,
            log: LogConfig::default(),
            registry: RegistryConfig::default(),
            image_decryption: ImageDecryptionConfig::default(),
            image_policy: ImagePolicyConfig::default(),
            lazy_pull: LazyPullConfig::default(),
            cni: CniConfig::default(),
            runtime: RuntimeConfig {
                default_handler: "crun".into(),
                container_log_max_size: 10 * 1024 * 1024,
                container_log_max_files: 5,
                warm_shim: true,
                handlers,
            },
            stream: StreamConfig::default(),
            cadvisor: CadvisorConfig::default(),
            cdi: CdiConfig::default(),
            metrics: MetricsConfig::default(),
            nri: NriConfig::default(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            config_path: "/etc/berth/certs.d".into(),
            dial_timeout_seconds: 10,
            response_header_timeout_seconds: 30,
            progress_timeout_seconds: 300,
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            plugin_timeout_seconds: 120,
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Config::default().runtime
    }
}

impl Config {
    /// Reads `path`. A missing file at the default location means the defaults; a missing
    /// file that was asked for by name is an error.
    pub fn load(path: &Path, explicit: bool) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default());
            }
            Err(e) => return Err(e).with_context(|| format!("read config {}", path.display())),
        };
        Self::parse(&text).with_context(|| format!("config {}", path.display()))
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> anyhow::Result<()> {
        for (key, p) in [
            ("root", &self.root),
            ("state", &self.state),
            ("address", &self.address),
            ("cni.conf_dir", &self.cni.conf_dir),
            ("image_decryption.keys_dir", &self.image_decryption.keys_dir),
        ] {
            if !p.is_absolute() {
                bail!("{key}: {} is not an absolute path", p.display());
            }
        }
        if !self.registry.config_path.as_os_str().is_empty()
            && !self.registry.config_path.is_absolute()
        {
            bail!(
                "registry.config_path: {} is not an absolute path",
                self.registry.config_path.display()
            );
        }
        for (key, v) in [
            (
                "registry.dial_timeout_seconds",
                self.registry.dial_timeout_seconds,
            ),
            (
                "registry.response_header_timeout_seconds",
                self.registry.response_header_timeout_seconds,
            ),
            (
                "registry.progress_timeout_seconds",
                self.registry.progress_timeout_seconds,
            ),
            (
                "cni.plugin_timeout_seconds",
                self.cni.plugin_timeout_seconds,
            ),
        ] {
            if v == 0 || v > 24 * 3600 {
                bail!("{key}: {v} is out of range (1 to 86400)");
            }
        }
        berth_image::Reference::parse(&self.sandbox_image)
            .map_err(|e| anyhow::anyhow!("sandbox_image: {e}"))?;
        if self.max_concurrent_downloads == 0 || self.max_concurrent_downloads > 64 {
            bail!(
                "max_concurrent_downloads: {} is out of range (1 to 64)",
                self.max_concurrent_downloads
            );
        }
        if self.stream.address.parse::<std::net::IpAddr>().is_err() {
            bail!(
                "stream.address: {:?} is not an IP address",
                self.stream.address
            );
        }
        if self.stream.token_ttl_seconds == 0 || self.stream.token_ttl_seconds > 3600 {
            bail!(
                "stream.token_ttl_seconds: {} is out of range (1 to 3600)",
                self.stream.token_ttl_seconds
            );
        }
        if self.stream.tls_cert.as_os_str().is_empty() != self.stream.tls_key.as_os_str().is_empty()
        {
            bail!("stream.tls_cert and stream.tls_key: set both, or neither");
        }
        if !self.metrics.address.is_empty()
            && self
                .metrics
                .address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            bail!(
                "metrics.address: {:?} is not an IP address and port (e.g. \"127.0.0.1:1338\")",
                self.metrics.address
            );
        }
        for (key, ms) in [
            (
                "nri.plugin_registration_timeout_ms",
                self.nri.plugin_registration_timeout_ms,
            ),
            (
                "nri.plugin_request_timeout_ms",
                self.nri.plugin_request_timeout_ms,
            ),
        ] {
            if !(10..=600_000).contains(&ms) {
                bail!("{key}: {ms} is out of range (10 to 600000)");
            }
        }
        if self.metrics.tls_cert.as_os_str().is_empty()
            != self.metrics.tls_key.as_os_str().is_empty()
        {
            bail!("metrics.tls_cert and metrics.tls_key: set both, or neither");
        }
        if self.runtime.container_log_max_files == 0 {
            bail!("runtime.container_log_max_files: must be at least 1");
        }
        crate::logging::parse_filter(&self.log.level)
            .map_err(|e| anyhow::anyhow!("log.level: {e:#}"))?;
        if !self
            .runtime
            .handlers
            .contains_key(&self.runtime.default_handler)
        {
            bail!(
                "runtime.default_handler: {:?} is not one of runtime.handlers ({})",
                self.runtime.default_handler,
                self.runtime
                    .handlers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for (name, h) in &self.runtime.handlers {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                bail!(
                    "runtime.handlers.{name:?}: handler names are letters, digits, '-', '_' and '.'"
                );
            }
            shim_binary_name(&h.runtime_type)
                .map_err(|e| anyhow::anyhow!("runtime.handlers.{name}.runtime_type: {e}"))?;
            if !h.engine_args.is_empty() && !h.is_runsc() {
                bail!(
                    "runtime.handlers.{name}.engine_args: only for a handler whose BinaryName is runsc"
                );
            }
            if let Some(a) = h.engine_args.iter().find(|a| !a.starts_with("--")) {
                bail!("runtime.handlers.{name}.engine_args: {a:?} is not a --flag");
            }
        }
        Ok(())
    }

    /// The registry certs.d directory, unless disabled.
    /// The registry client's timeouts.
    pub fn registry_timeouts(&self) -> berth_image::registry::Timeouts {
        use std::time::Duration;
        berth_image::registry::Timeouts {
            dial: Duration::from_secs(self.registry.dial_timeout_seconds),
            response_header: Duration::from_secs(self.registry.response_header_timeout_seconds),
            progress: Duration::from_secs(self.registry.progress_timeout_seconds),
        }
    }

    pub fn registry_config_path(&self) -> Option<PathBuf> {
        Some(self.registry.config_path.clone()).filter(|p| !p.as_os_str().is_empty())
    }
}

/// The shim binary a runtime type implies: `io.containerd.runc.v2` → `containerd-shim-runc-v2`.
pub fn shim_binary_name(runtime_type: &str) -> Result<String, String> {
    let parts: Vec<&str> = runtime_type.split('.').collect();
    match parts.as_slice() {
        ["io", "containerd", name, version]
            if !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && version.starts_with('v')
                && version.len() > 1 =>
        {
            Ok(format!("containerd-shim-{name}-{version}"))
        }
        _ => Err(format!(
            "{runtime_type:?} is not of the form io.containerd.<runtime>.<version>, e.g. io.containerd.runc.v2"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_the_default() {
        assert_eq!(Config::parse(DEFAULT_CONFIG).unwrap(), Config::default());
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values_naming_them() {
        let cases = [
            ("rooot = \"/x\"", "rooot"),
            ("root = \"relative\"", "root"),
            ("sandbox_image = \"Bad Image\"", "sandbox_image"),
            ("max_concurrent_downloads = 0", "max_concurrent_downloads"),
            (
                "max_concurrent_downloads = \"3\"",
                "max_concurrent_downloads",
            ),
            ("[log]\nformat = \"xml\"", "format"),
            ("[log]\nlevel = \"loud=[\"", "log.level"),
            ("[registry]\nconfigpath = \"/x\"", "configpath"),
            ("[runtime]\ndefault_handler = \"nope\"", "default_handler"),
            (
                "[runtime]\ndefault_handler = \"x\"\n[runtime.handlers.x]\nruntime_type = \"runc\"",
                "runtime.handlers.x.runtime_type",
            ),
            (
                "[runtime.handlers.x]\nruntime_type = \"io.containerd.runc.v2\"\noptions = { Binary = \"x\" }",
                "Binary",
            ),
        ];
        for (text, key) in cases {
            let e = format!("{:#}", Config::parse(text).expect_err(text));
            assert!(e.contains(key), "{text}: {e}");
        }
        // TOML errors carry the line.
        let e = format!("{:#}", Config::parse("\n\nrooot = 1").unwrap_err());
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn missing_default_file_means_defaults_but_named_file_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("none.toml");
        assert_eq!(Config::load(&p, false).unwrap(), Config::default());
        assert!(Config::load(&p, true).is_err());
        std::fs::write(&p, "state = \"/run/x\"\n[registry]\nconfig_path = \"\"\n").unwrap();
        let c = Config::load(&p, true).unwrap();
        assert_eq!(c.state, PathBuf::from("/run/x"));
        assert_eq!(c.registry_config_path(), None);
    }

    #[test]
    fn shim_names() {
        assert_eq!(
            shim_binary_name("io.containerd.runc.v2").unwrap(),
            "containerd-shim-runc-v2"
        );
        assert_eq!(
            shim_binary_name("io.containerd.kata.v2").unwrap(),
            "containerd-shim-kata-v2"
        );
        assert_eq!(
            shim_binary_name("io.containerd.runsc.v1").unwrap(),
            "containerd-shim-runsc-v1"
        );
        for bad in [
            "runc",
            "io.containerd.runc",
            "io.containerd..v2",
            "io.containerd.runc.2",
            "io.containerd.a/b.v2",
        ] {
            assert!(shim_binary_name(bad).is_err(), "{bad}");
        }
    }
}
