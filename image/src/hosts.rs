//! Registry host resolution with containerd's `certs.d` semantics (`docs/hosts.md`).
//!
//! For an upstream host `H` (with optional port `P`), the first of these directories that exists
//! under the configured `config_path` decides: `H_P_`, `H:P`, `_default`. In it, `hosts.toml`
//! lists mirrors as `[host."<url>"]` tables, tried in file order, and then `server` (which
//! defaults to the upstream host itself). A directory without `hosts.toml` may still hold
//! Docker-style certificates (`*.crt` CAs, `*.cert`/`*.key` client pairs) for the upstream host.
//!
//! The file is read on every resolution, so edits apply to the next pull without a restart. It
//! is untrusted input: its size is capped, every value is type-checked, and an error names the
//! file and the line.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;
use url::Url;

use crate::error::{Error, Result};
use crate::reference::DEFAULT_DOMAIN;

const HOSTS_FILE: &str = "hosts.toml";
const MAX_HOSTS_FILE: u64 = 1 << 20;

/// What a host may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Fetch manifests and blobs by digest.
    pub pull: bool,
    /// Turn a tag into a digest.
    pub resolve: bool,
    /// Upload (berth never pushes; kept so a file that says it parses).
    pub push: bool,
}

impl Capabilities {
    const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One place to send registry requests to, in the order they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// Base URL of the API, ending in `/v2` unless `override_path` was set.
    pub url: Url,
    /// What this host may be asked for.
    pub capabilities: Capabilities,
    /// Accept any TLS certificate.
    pub skip_verify: bool,
    /// Extra CA certificates (PEM files).
    pub ca: Vec<PathBuf>,
    /// Client certificate and key files; a `None` key means the key is in the cert file.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// The upstream host this entry serves (`ns=` is sent to mirrors).
    pub upstream: String,
}

impl RegistryHost {
    /// `host[:port]` of the URL.
    pub fn authority(&self) -> String {
        match self.url.port() {
            Some(p) => format!("{}:{p}", self.url.host_str().unwrap_or_default()),
            None => self.url.host_str().unwrap_or_default().to_string(),
        }
    }

    /// True when this host is not the upstream registry itself: requests carry `?ns=`.
    pub fn is_mirror(&self) -> bool {
        self.authority() != self.upstream
    }
}

/// Resolves the hosts to try for `domain` (e.g. `docker.io`, `127.0.0.1:5000`), in order.
/// `config_dir` is the certs.d directory, or `None` to use the upstream host alone.
pub fn resolve(config_dir: Option<&Path>, domain: &str) -> Result<Vec<RegistryHost>> {
    let Some(root) = config_dir else {
        return Ok(vec![default_host(domain)?]);
    };
    for dir in host_dirs(root, domain) {
        let file = dir.join(HOSTS_FILE);
        match std::fs::symlink_metadata(&file) {
            Ok(_) => return parse_hosts_file(&file, domain),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("stat {}", file.display()), e)),
        }
        if dir.is_dir() {
            let mut host = default_host(domain)?;
            load_legacy_certs(&dir, &mut host)?;
            return Ok(vec![host]);
        }
    }
    Ok(vec![default_host(domain)?])
}

/// The directories consulted for `domain`, most specific first.
fn host_dirs(root: &Path, domain: &str) -> Vec<PathBuf> {
    let mut dirs = Vec::with_capacity(3);
    if let Some(i) = domain
        .rfind(':')
        .filter(|&i| i > 0 && !domain[i..].contains(']'))
    {
        dirs.push(root.join(format!("{}_{}_", &domain[..i], &domain[i + 1..])));
    }
    dirs.push(root.join(domain));
    dirs.push(root.join("_default"));
    dirs
}

fn is_loopback(domain: &str) -> bool {
    let host = match domain.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => domain.split(':').next().unwrap_or(""),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The upstream registry with no configuration: `https://<domain>/v2`, except Docker Hub
/// (`registry-1.docker.io`) and loopback registries (plain HTTP), as containerd does.
fn default_host(domain: &str) -> Result<RegistryHost> {
    let (scheme, authority) = if domain == DEFAULT_DOMAIN {
        ("https", "registry-1.docker.io")
    } else if is_loopback(domain) {
        ("http", domain)
    } else {
        ("https", domain)
    };
    let url =
        Url::parse(&format!("{scheme}://{authority}/v2")).map_err(|e| Error::InvalidReference {
            reference: domain.to_string(),
            reason: format!("registry host does not form a URL: {e}"),
        })?;
    Ok(RegistryHost {
        url,
        capabilities: Capabilities::ALL,
        skip_verify: false,
        ca: vec![],
        client: vec![],
        headers: vec![],
        upstream: domain.to_string(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ClientItem {
    Cert(String),
    Pair(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ClientSpec {
    One(String),
    Many(Vec<ClientItem>),
}

#[derive(Debug, Default, Deserialize)]
struct RawHost {
    server: Option<Spanned<String>>,
    capabilities: Option<Vec<Spanned<String>>>,
    ca: Option<OneOrMany>,
    client: Option<Spanned<ClientSpec>>,
    skip_verify: Option<bool>,
    override_path: Option<bool>,
    header: Option<IndexMap<String, OneOrMany>>,
    host: Option<IndexMap<String, Spanned<RawHost>>>,
}

struct FileCtx<'a> {
    file: &'a Path,
    text: &'a str,
}

impl FileCtx<'_> {
    fn err(&self, span: Option<std::ops::Range<usize>>, reason: impl Into<String>) -> Error {
        let line = span.map(|s| {
            self.text[..s.start.min(self.text.len())]
                .matches('\n')
                .count()
                + 1
        });
        Error::HostsConfig {
            file: self.file.to_path_buf(),
            line,
            reason: reason.into(),
        }
    }

    fn relative(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new("/")).join(p)
        }
    }
}

fn parse_hosts_file(file: &Path, domain: &str) -> Result<Vec<RegistryHost>> {
    let meta =
        std::fs::metadata(file).map_err(|e| Error::io(format!("stat {}", file.display()), e))?;
    if !meta.is_file() {
        return Err(Error::HostsConfig {
            file: file.into(),
            line: None,
            reason: "not a regular file".into(),
        });
    }
    if meta.len() > MAX_HOSTS_FILE {
        return Err(Error::HostsConfig {
            file: file.into(),
            line: None,
            reason: format!(
                "{} bytes is larger than the {MAX_HOSTS_FILE}-byte limit",
                meta.len()
            ),
        });
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| Error::io(format!("read {}", file.display()), e))?;
    parse_hosts(file, &text, domain)
}

/// Parses the text of a hosts.toml for upstream `domain`. Public for fuzzing and `berth doctor`.
pub fn parse_hosts(file: &Path, text: &str, domain: &str) -> Result<Vec<RegistryHost>> {
    let ctx = FileCtx { file, text };
    let raw: RawHost =
        toml::from_str(text).map_err(|e| ctx.err(e.span(), e.message().to_string()))?;
    warn_unknown_keys(&ctx);

    let mut hosts = Vec::new();
    for (key, entry) in raw.host.iter().flatten() {
        let span = entry.span();
        let entry = entry.get_ref();
        if entry.host.is_some() || entry.server.is_some() {
            return Err(ctx.err(
                Some(span),
                format!("[host.{key:?}] may not contain 'server' or nested host tables"),
            ));
        }
        hosts.push(build_host(&ctx, key, Some(span), entry, domain)?);
    }
    let server = match &raw.server {
        Some(s) => build_host(&ctx, s.get_ref(), Some(s.span()), &raw, domain)?,
        None => {
            let mut h = default_host(domain)?;
            apply_options(&ctx, &mut h, &raw, None)?;
            h
        }
    };
    hosts.push(server);
    Ok(hosts)
}

fn build_host(
    ctx: &FileCtx<'_>,
    url: &str,
    span: Option<std::ops::Range<usize>>,
    raw: &RawHost,
    domain: &str,
) -> Result<RegistryHost> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let mut parsed = Url::parse(&with_scheme)
        .map_err(|e| ctx.err(span.clone(), format!("invalid host URL {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ctx.err(
            span,
            format!("host URL {url:?}: scheme must be http or https"),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ctx.err(span, format!("host URL {url:?} has no host")));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
        return Err(ctx.err(
            span,
            format!("host URL {url:?} may not carry a query, fragment or credentials"),
        ));
    }
    let path = parsed.path().trim_end_matches('/').to_string();
    let path = if raw.override_path.unwrap_or(false) || path.ends_with("/v2") {
        path
    } else {
        format!("{path}/v2")
    };
    parsed.set_path(&path);
    let mut host = RegistryHost {
        url: parsed,
        capabilities: Capabilities::ALL,
        skip_verify: false,
        ca: vec![],
        client: vec![],
        headers: vec![],
        upstream: domain.to_string(),
    };
    apply_options(ctx, &mut host, raw, span)?;
    Ok(host)
}

fn apply_options(
    ctx: &FileCtx<'_>,
    host: &mut RegistryHost,
    raw: &RawHost,
    span: Option<std::ops::Range<usize>>,
) -> Result<()> {
    if let Some(caps) = &raw.capabilities {
        let mut c = Capabilities::default();
        for cap in caps {
            match cap.get_ref().as_str() {
                "pull" => c.pull = true,
                "resolve" => c.resolve = true,
                "push" => c.push = true,
                other => {
                    return Err(ctx.err(
                        Some(cap.span()),
                        format!("unknown capability {other:?} (expected pull, resolve or push)"),
                    ));
                }
            }
        }
        if caps.is_empty() {
            c = Capabilities::ALL;
        }
        host.capabilities = c;
    }
    host.skip_verify = raw.skip_verify.unwrap_or(false);
    if let Some(ca) = &raw.ca {
        host.ca = ca.to_vec().iter().map(|p| ctx.relative(p)).collect();
    }
    if let Some(client) = &raw.client {
        let one;
        let items = match client.get_ref() {
            ClientSpec::One(s) => {
                one = [ClientItem::Cert(s.clone())];
                &one[..]
            }
            ClientSpec::Many(v) => &v[..],
        };
        for item in items {
            match item {
                ClientItem::Cert(c) => host.client.push((ctx.relative(c), None)),
                ClientItem::Pair(p) if p.len() == 2 => host
                    .client
                    .push((ctx.relative(&p[0]), Some(ctx.relative(&p[1])))),
                ClientItem::Pair(p) => {
                    return Err(ctx.err(
                        Some(client.span()),
                        format!("client pair must be [cert, key], got {} entries", p.len()),
                    ));
                }
            }
        }
    }
    for (name, values) in raw.header.iter().flatten() {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ctx.err(span.clone(), format!("invalid header name {name:?}")));
        }
        for v in values.to_vec() {
            if http::HeaderValue::from_str(&v).is_err() {
                return Err(ctx.err(span.clone(), format!("invalid value for header {name:?}")));
            }
            host.headers.push((name.clone(), v));
        }
    }
    Ok(())
}

const KNOWN_KEYS: &[&str] = &[
    "server",
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "override_path",
    "header",
    "host",
    "dial_timeout",
];

fn warn_unknown_keys(ctx: &FileCtx<'_>) {
    let Ok(table) = ctx.text.parse::<toml::Table>() else {
        return;
    };
    let check = |t: &toml::Table, at: &str| {
        for k in t.keys().filter(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            tracing::warn!(file = %ctx.file.display(), key = %k, table = at, "unknown key in hosts.toml ignored");
        }
    };
    check(&table, "top level");
    if let Some(toml::Value::Table(hosts)) = table.get("host") {
        for (name, v) in hosts {
            if let toml::Value::Table(t) = v {
                check(t, name);
            }
        }
    }
}

/// Docker-style `certs.d/<host>/` without hosts.toml: `*.crt` are CAs, `X.cert` + `X.key` are
/// client pairs.
fn load_legacy_certs(dir: &Path, host: &mut RegistryHost) -> Result<()> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for p in names {
        match p.extension().and_then(|e| e.to_str()) {
            Some("crt") => host.ca.push(p),
            Some("cert") => {
                let key = p.with_extension("key");
                if !key.exists() {
                    return Err(Error::HostsConfig {
                        file: p,
                        line: None,
                        reason: "client certificate without a matching .key file".into(),
                    });
                }
                host.client.push((p, Some(key)));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, domain: &str) -> Result<Vec<RegistryHost>> {
        parse_hosts(Path::new("/etc/berth/certs.d/x/hosts.toml"), text, domain)
    }

    #[test]
    fn mirrors_in_file_order_then_server() {
        let hosts = parse(
            r#"
server = "https://registry-1.docker.io"

[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve"]

[host."https://mirror.example:8443/base"]
  capabilities = ["pull"]
  skip_verify = true
  ca = "ca.pem"
  client = [["c.pem", "/abs/k.pem"]]
  [host."https://mirror.example:8443/base".header]
    x-token = ["a", "b"]
"#,
            "docker.io",
        )
        .unwrap();
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[0].url.as_str(), "http://127.0.0.1:5000/v2");
        assert!(hosts[0].capabilities.resolve && !hosts[0].capabilities.push);
        assert!(hosts[0].is_mirror());
        assert_eq!(hosts[1].url.as_str(), "https://mirror.example:8443/base/v2");
        assert!(hosts[1].skip_verify && !hosts[1].capabilities.resolve);
        assert_eq!(
            hosts[1].ca,
            vec![PathBuf::from("/etc/berth/certs.d/x/ca.pem")]
        );
        assert_eq!(
            hosts[1].client,
            vec![(
                PathBuf::from("/etc/berth/certs.d/x/c.pem"),
                Some(PathBuf::from("/abs/k.pem"))
            )]
        );
        assert_eq!(hosts[1].headers.len(), 2);
        assert_eq!(hosts[2].url.as_str(), "https://registry-1.docker.io/v2");
        assert_eq!(hosts[2].capabilities, Capabilities::ALL);
    }

    #[test]
    fn override_path_and_v2_suffix() {
        let hosts = parse(
            r#"
[host."http://127.0.0.1:5000/v2/registry.k8s.io"]
  override_path = true
[host."http://m2/v2"]
[host."m3"]
"#,
            "registry.k8s.io",
        )
        .unwrap();
        assert_eq!(
            hosts[0].url.as_str(),
            "http://127.0.0.1:5000/v2/registry.k8s.io"
        );
        assert_eq!(hosts[1].url.as_str(), "http://m2/v2");
        assert_eq!(hosts[2].url.as_str(), "https://m3/v2");
        // No server: the upstream host itself.
        assert_eq!(hosts[3].url.as_str(), "https://registry.k8s.io/v2");
        assert!(!hosts[3].is_mirror());
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("server = \"https://x\"\n\n[host.\"http://m\"]\n  capabilities = [\"pull\", \"fetch\"]\n", "x").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("hosts.toml:4:") && msg.contains("fetch"),
            "{msg}"
        );
        let e = parse("server = \n", "x").unwrap_err();
        assert!(e.to_string().contains("hosts.toml:1"), "{e}");
        let e = parse("[host.\"ftp://m\"]\n", "x").unwrap_err();
        assert!(e.to_string().contains("scheme"), "{e}");
        let e = parse("skip_verify = \"yes\"\n", "x").unwrap_err();
        assert!(e.to_string().contains(":1:"), "{e}");
        let e = parse("[host.\"http://m\"]\nclient = [[\"a\"]]\n", "x").unwrap_err();
        assert!(e.to_string().contains("cert, key"), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::FailedPrecondition);
    }

    #[test]
    fn directory_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // No config at all: upstream, loopback is plain HTTP, Docker Hub is registry-1.
        assert_eq!(
            resolve(Some(root), "127.0.0.1:5000").unwrap()[0]
                .url
                .as_str(),
            "http://127.0.0.1:5000/v2"
        );
        assert_eq!(
            resolve(None, "docker.io").unwrap()[0].url.as_str(),
            "https://registry-1.docker.io/v2"
        );

        std::fs::create_dir_all(root.join("_default")).unwrap();
        std::fs::write(
            root.join("_default/hosts.toml"),
            "[host.\"http://default-mirror\"]\n",
        )
        .unwrap();
        let h = resolve(Some(root), "quay.io").unwrap();
        assert_eq!(h[0].url.as_str(), "http://default-mirror/v2");
        assert_eq!(h[1].url.as_str(), "https://quay.io/v2");

        std::fs::create_dir_all(root.join("reg:5000")).unwrap();
        std::fs::write(
            root.join("reg:5000/hosts.toml"),
            "server = \"http://colon\"\n",
        )
        .unwrap();
        assert_eq!(
            resolve(Some(root), "reg:5000").unwrap()[0].url.as_str(),
            "http://colon/v2"
        );
        std::fs::create_dir_all(root.join("reg_5000_")).unwrap();
        std::fs::write(
            root.join("reg_5000_/hosts.toml"),
            "server = \"http://underscore\"\n",
        )
        .unwrap();
        assert_eq!(
            resolve(Some(root), "reg:5000").unwrap()[0].url.as_str(),
            "http://underscore/v2"
        );
    }

    #[test]
    fn legacy_cert_directory() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("secure.example");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("ca.crt"), "x").unwrap();
        std::fs::write(d.join("me.cert"), "x").unwrap();
        std::fs::write(d.join("me.key"), "x").unwrap();
        let h = resolve(Some(dir.path()), "secure.example").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].ca, vec![d.join("ca.crt")]);
        assert_eq!(
            h[0].client,
            vec![(d.join("me.cert"), Some(d.join("me.key")))]
        );
    }

    #[test]
    fn hostile_files_are_errors_not_panics() {
        for text in [
            "[[host]]\n",
            "host = 3\n",
            "[host.\"\"]\n",
            "[host.\"http://\"]\n",
            "header = 1\n",
            "[header]\n\"bad name\" = \"v\"\n",
            "\u{0}",
        ] {
            assert!(parse(text, "x").is_err(), "{text:?}");
        }
    }
}
