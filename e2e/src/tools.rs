//! The Go-built tools the project's scripts install into a cache (`scripts/install-*.sh`):
//! where the tests find them. Each has an environment variable that overrides its path.

use std::path::PathBuf;

/// The kubelet version `scripts/install-kubelet.sh` builds.
pub const KUBELET_VERSION: &str = "v1.34.4";
/// The cri-tools version `scripts/install-cri-tools.sh` builds.
pub const CRI_TOOLS_VERSION: &str = "v1.37.0";

/// `$BERTH_TOOLS_CACHE`, else `/var/cache/berth-tools`.
pub fn cache() -> PathBuf {
    std::env::var_os("BERTH_TOOLS_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/berth-tools"), PathBuf::from)
}

fn tool(var: &str, rel: String) -> PathBuf {
    std::env::var_os(var).map_or_else(|| cache().join(rel), PathBuf::from)
}

/// The kubelet: `$BERTH_KUBELET`, else the install script's cache.
pub fn kubelet() -> PathBuf {
    tool(
        "BERTH_KUBELET",
        format!("kubelet-{KUBELET_VERSION}/kubelet"),
    )
}

/// crictl: `$BERTH_CRICTL`, else the install script's cache.
pub fn crictl() -> PathBuf {
    tool(
        "BERTH_CRICTL",
        format!("cri-tools-{CRI_TOOLS_VERSION}/crictl"),
    )
}

/// Fails with the script to run when `path` is missing.
pub fn require(path: &std::path::Path, script: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        path.exists(),
        "{} does not exist: run scripts/{script} (the test command does)",
        path.display()
    );
    Ok(())
}
