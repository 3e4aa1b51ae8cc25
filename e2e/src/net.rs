//! A private CNI network per test: its own conflist (`bridge` with a unique bridge name and
//! /24, `host-local` keeping leases in a temp dir, `portmap`, `loopback`) from Debian's
//! containernetworking-plugins, and a bin dir for test plugins. The bridge is deleted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where Debian installs the CNI plugins.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// A test network.
pub struct TestNet {
    dir: tempfile::TempDir,
    /// The CNI conf dir berth reads.
    pub conf_dir: PathBuf,
    /// A bin dir searched before Debian's, for test plugins.
    pub bin_dir: PathBuf,
    /// host-local's lease directory.
    pub leases_dir: PathBuf,
    /// The Linux bridge (15 characters at most).
    pub bridge: String,
    /// The first three octets of the /24, e.g. `10.213.7`.
    pub prefix: String,
}

impl TestNet {
    /// bridge + host-local + portmap + loopback.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_plugins(&[])
    }

    /// The standard chain with `extra` plugin configs inserted after `bridge`.
    pub fn with_plugins(extra: &[serde_json::Value]) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("berth-e2e-net-")
            .tempdir()?;
        let conf_dir = dir.path().join("net.d");
        let bin_dir = dir.path().join("bin");
        let leases_dir = dir.path().join("leases");
        std::fs::create_dir_all(&conf_dir)?;
        std::fs::create_dir_all(&bin_dir)?;
        let (bridge, prefix) = free_subnet()?;
        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": leases_dir,
                "ranges": [[{"subnet": format!("{prefix}.0/24")}]],
            },
        })];
        plugins.extend(extra.iter().cloned());
        plugins
            .push(serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}));
        plugins.push(serde_json::json!({"type": "loopback"}));
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": format!("e2e-{bridge}"),
            "plugins": plugins,
        });
        std::fs::write(
            conf_dir.join("10-e2e.conflist"),
            serde_json::to_vec_pretty(&conf)?,
        )?;
        Ok(TestNet {
            dir,
            conf_dir,
            bin_dir,
            leases_dir,
            bridge,
            prefix,
        })
    }

    /// The `[cni]` table for berth's config.
    pub fn config_toml(&self) -> String {
        format!(
            "[cni]\nconf_dir = \"{}\"\nbin_dirs = [\"{}\", \"{DEBIAN_CNI_DIR}\"]\n",
            self.conf_dir.display(),
            self.bin_dir.display()
        )
    }

    /// Installs an executable script as plugin `name` in [`Self::bin_dir`].
    pub fn plugin_script(&self, name: &str, script: &str) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let p = self.bin_dir.join(name);
        std::fs::write(&p, script)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        Ok(p)
    }

    /// The IPs host-local has leased right now.
    pub fn leases(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.leases_dir) {
            for net in rd.flatten() {
                if let Ok(files) = std::fs::read_dir(net.path()) {
                    out.extend(
                        files
                            .flatten()
                            .filter_map(|f| f.file_name().into_string().ok())
                            .filter(|n| n.parse::<std::net::IpAddr>().is_ok()),
                    );
                }
            }
        }
        out
    }

    /// Host-side veths attached to this network's bridge.
    pub fn veths(&self) -> Vec<String> {
        let dir = Path::new("/sys/class/net").join(&self.bridge).join("brif");
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The temp directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A bridge name and a 10.x.y.0/24 that no interface or route on this host uses.
fn free_subnet() -> anyhow::Result<(String, String)> {
    let routes = Command::new("ip").args(["-4", "route", "show"]).output()?;
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    for _ in 0..100 {
        let r: [u8; 4] = rand_bytes();
        let prefix = format!("10.{}.{}", 200 + r[0] % 50, r[1]);
        let bridge = format!("bte{}", hex::encode(&r[1..4]));
        if !routes.contains(&format!("{prefix}."))
            && !Path::new("/sys/class/net").join(&bridge).exists()
        {
            return Ok((bridge, prefix));
        }
    }
    anyhow::bail!("no free 10.x.y.0/24 for a test network")
}

fn rand_bytes() -> [u8; 4] {
    let mut b = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b
}
