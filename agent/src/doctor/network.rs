//! The pod network: the CNI config and its plugins.

use crate::config::Config;

use super::executable;
use super::{Check, fail, pass};

pub(super) fn cni(cfg: &Config) -> Vec<Check> {
    let dir = &cfg.cni.conf_dir;
    let net = match berth_network::cni::NetworkList::load_first(dir) {
        Ok(n) => n,
        Err(e) => {
            return vec![fail(
                "cni",
                "network config",
                e.to_string(),
                format!(
                    "put a CNI conflist in {} (e.g. bridge + host-local + portmap)",
                    dir.display()
                ),
            )];
        }
    };
    let mut out = vec![pass(
        "cni",
        "network config",
        format!("{:?} from {}", net.name, net.source.display()),
    )];
    for p in &net.plugins {
        let ty = p.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let found = cfg
            .cni
            .bin_dirs
            .iter()
            .map(|d| d.join(ty))
            .find(|c| executable(c));
        out.push(match found {
            Some(f) => pass("cni", format!("plugin {ty}"), f.display().to_string()),
            None => fail(
                "cni",
                format!("plugin {ty}"),
                format!("not in {:?}", cfg.cni.bin_dirs),
                "apt-get install containernetworking-plugins, or add its directory to cni.bin_dirs",
            ),
        });
    }
    out
}
