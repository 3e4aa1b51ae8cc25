//! Debian's `docker-registry`, on 127.0.0.1 only, optionally behind htpasswd auth.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// A running registry; killed and its storage removed on drop.
pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// Basic-auth credentials, when the registry requires them.
    pub auth: Option<(String, String)>,
}

impl Registry {
    /// Starts an open registry.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// Starts a registry that requires `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_auth(user: &str, password: &str) -> anyhow::Result<Self> {
        Self::start_with(Some((user.to_string(), password.to_string())))
    }

    fn start_with(auth: Option<(String, String)>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-registry-")
            .tempdir()?;
        let port = crate::free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut auth_yaml = String::new();
        if let Some((u, p)) = &auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .context("run htpasswd (apt-get install apache2-utils)")?;
            if !out.status.success() {
                bail!("htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout)?;
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: berth-e2e\n    path: {}\n",
                file.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_yaml}",
            dir.path().join("data").display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start docker-registry (apt-get install docker-registry)")?;
        let reg = Registry {
            child,
            dir,
            addr,
            auth,
        };
        let url = format!("http://{}/v2/", reg.addr);
        let up = crate::wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect(&reg.addr).is_ok()
                && reqwest_blocking_status(&url).is_some()
        });
        if !up {
            bail!(
                "registry on {} did not come up; log:\n{}",
                reg.addr,
                reg.log()
            );
        }
        Ok(reg)
    }

    /// The registry's log (requests included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many GETs of `digest` as a blob the registry served.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest}")))
            .count()
    }

    /// The registry's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its temp directory (configuration, storage and log).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Where the registry keeps its data (for tests that corrupt it).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

fn reqwest_blocking_status(url: &str) -> Option<u16> {
    // A raw HTTP/1.0 request keeps this free of an async runtime.
    use std::io::{Read, Write};
    let u = url.strip_prefix("http://")?;
    let (host, path) = u.split_once('/')?;
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
