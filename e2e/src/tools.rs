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

/// The runc version `scripts/install-runc.sh` builds (Debian 12's 1.1.5 has no idmapped
/// mounts, which user namespaces need).
pub const RUNC_VERSION: &str = "v1.5.3";

/// The current runc: `$BERTH_RUNC`, else the install script's cache.
pub fn runc() -> PathBuf {
    tool("BERTH_RUNC", format!("runc-{RUNC_VERSION}/runc"))
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

/// The node e2e suite's version (`scripts/install-e2e-node.sh`): the kubelet's.
pub const NODE_E2E_VERSION: &str = KUBELET_VERSION;

/// What `scripts/install-e2e-node.sh` builds: `e2e_node.test`, `ginkgo` and `agnhost`, in
/// `$BERTH_NODE_E2E_DIR`, else the install script's cache.
pub fn node_e2e_dir() -> PathBuf {
    tool("BERTH_NODE_E2E_DIR", format!("e2e-node-{NODE_E2E_VERSION}"))
}

/// A static binary from C source `src`, built with the machine's gcc (scripts/install-deps.sh
/// installs it); `name` names it in messages.
pub fn static_c_binary(name: &str, src: &str) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let c = dir.path().join(format!("{name}.c"));
    std::fs::write(&c, src)?;
    let out = dir.path().join(name);
    let status = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&c)
        .status()
        .map_err(|e| anyhow::anyhow!("run gcc (scripts/install-deps.sh installs it): {e}"))?;
    anyhow::ensure!(status.success(), "gcc -static {name}.c failed");
    Ok(std::fs::read(out)?)
}

/// NRI's sample ulimit-adjuster (`scripts/install-nri-plugins.sh`): `$BERTH_ULIMIT_ADJUSTER`,
/// else the install script's cache.
pub fn ulimit_adjuster() -> PathBuf {
    tool(
        "BERTH_ULIMIT_ADJUSTER",
        "nri-plugins-v0.4.0/ulimit-adjuster".into(),
    )
}

/// berth's NRI test plugin (`e2e/nri-plugin`, built by `scripts/install-nri-plugins.sh`):
/// `$BERTH_NRI_TEST_PLUGIN`, else `target/nri-test-plugin`.
pub fn nri_test_plugin() -> PathBuf {
    std::env::var_os("BERTH_NRI_TEST_PLUGIN").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/nri-test-plugin"
            ))
        },
        PathBuf::from,
    )
}

/// The cosign version `scripts/install-cosign.sh` builds.
pub const COSIGN_VERSION: &str = "v2.6.5";

/// cosign: `$BERTH_COSIGN`, else the install script's cache.
pub fn cosign() -> PathBuf {
    tool("BERTH_COSIGN", format!("cosign-{COSIGN_VERSION}/cosign"))
}
