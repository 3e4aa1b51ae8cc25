//! `berth doctor` against a real berth in good and broken states, and `berth install` /
//! `berth uninstall` run as the DaemonSet runs them, into a scratch host root.

use std::path::Path;
use std::process::Command;

use berth_e2e::PodEnv;
use berth_e2e::berth::berth_bin;

/// Runs `berth doctor --output json` with `config` against `env`'s daemon; returns the exit
/// status and the checks.
fn doctor(env: &PodEnv, config: &str) -> (bool, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(berth_bin())
        .arg("doctor")
        .args(["--output", "json", "--config"])
        .arg(&path)
        .arg("--address")
        .arg(&env.berth.socket)
        .arg("--root")
        .arg(&env.berth.root)
        .arg("--state")
        .arg(&env.berth.state)
        .output()
        .unwrap();
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.success(), checks)
}

fn check<'a>(checks: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {checks:#?}"))
}

fn base_config(env: &PodEnv, cni: &str) -> String {
    format!(
        "sandbox_image = \"{}\"\n[registry]\nconfig_path = \"{}\"\n{cni}",
        berth_e2e::pods::PAUSE_IMAGE,
        env.berth.certs_d.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_finds_what_is_broken_and_says_how_to_fix_it() {
    let mut env = PodEnv::start().await.unwrap();
    let good = base_config(&env, &env.net.config_toml());

    let (ok, checks) = doctor(&env, &good);
    assert!(ok, "{checks:#?}");
    for name in [
        "overlayfs",
        "handler runc",
        "network config",
        "plugin bridge",
        "socket",
        "RuntimeReady",
        "NetworkReady",
    ] {
        assert_eq!(check(&checks, name)["ok"], true, "{name}: {checks:#?}");
    }
    // What each handler's runtime can do: crun 1.8.1 (by its version) runs pods in user
    // namespaces, with binds berth idmaps.
    let crun = check(&checks, "handler crun")["detail"].to_string();
    assert!(
        crun.contains("recursive read-only mounts, user namespaces (berth idmaps the binds)"),
        "{crun}"
    );

    // Where the state lives is advice, never a failure (this test's state is wherever the
    // temp dir is).
    assert_eq!(check(&checks, "state on tmpfs")["required"], false);

    // The sandbox image is not pulled yet, but its registry (through certs.d) serves it: a
    // warning only. One that no registry has fails, naming the image.
    let c = check(&checks, "sandbox image");
    assert_eq!(c["required"], false, "{c}");
    assert!(c["detail"].as_str().unwrap().contains("sha256:"), "{c}");
    let (ok, checks) = doctor(
        &env,
        &good.replace(
            berth_e2e::pods::PAUSE_IMAGE,
            "pause.invalid/berth-e2e/no-such-pause:1",
        ),
    );
    assert!(!ok);
    let c = check(&checks, "sandbox image");
    assert_eq!(c["ok"], false);
    assert_eq!(c["required"], true);
    assert!(
        c["detail"].as_str().unwrap().contains("no-such-pause"),
        "{c}"
    );

    // The kubelet's cAdvisor: berth answers it on the socket its config names; a socket
    // nobody serves is a warning, not a failure (pods run, their cAdvisor metrics go
    // unlabelled).
    let with_cadvisor = |path: &std::path::Path| {
        format!(
            "{good}\n[cadvisor]\ncontainerd_socket = \"{}\"\n",
            path.display()
        )
    };
    let (ok, checks) = doctor(&env, &with_cadvisor(&env.berth.cadvisor_socket()));
    assert!(ok, "{checks:#?}");
    assert_eq!(check(&checks, "cadvisor")["ok"], true, "{checks:#?}");
    let nobody = env.berth.dir().join("nobody.sock");
    let (ok, checks) = doctor(&env, &with_cadvisor(&nobody));
    assert!(ok, "a warning only: {checks:#?}");
    let c = check(&checks, "cadvisor");
    assert_eq!(
        (c["ok"].clone(), c["required"].clone()),
        (false.into(), false.into()),
        "{c}"
    );

    // NRI: the plugin socket the running berth serves; a signature policy's scopes, and a
    // policy that cannot be loaded (every pull would fail: a failure).
    let nri = format!(
        "{good}\n[nri]\nsocket_path = \"{}\"\n",
        env.berth.dir().join("nri.sock").display()
    );
    let (ok, checks) = doctor(&env, &nri);
    assert!(ok, "{checks:#?}");
    let c = check(&checks, "plugin socket");
    assert!(c["detail"].as_str().unwrap().ends_with("is served"), "{c}");
    let policy = env.berth.dir().join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default": [{"type": "reject"}], "transports": {"docker": {"pause.invalid": [{"type": "insecureAcceptAnything"}]}}}"#,
    )
    .unwrap();
    let with_policy = format!("{good}\n[image_policy]\npath = \"{}\"\n", policy.display());
    let (ok, checks) = doctor(&env, &with_policy);
    assert!(ok, "{checks:#?}");
    assert_eq!(
        check(&checks, "policy scope \"pause.invalid\"")["detail"],
        "insecureAcceptAnything"
    );
    std::fs::write(
        &policy,
        r#"{"default": [{"type": "sigstoreSigned", "keyPath": "/nonexistent/cosign.pub"}]}"#,
    )
    .unwrap();
    let (ok, checks) = doctor(&env, &with_policy);
    assert!(!ok);
    let c = check(&checks, "signature policy");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/cosign.pub"),
        "{c}"
    );

    // An empty CNI directory.
    let empty = tempfile::tempdir().unwrap();
    let (ok, checks) = doctor(
        &env,
        &base_config(
            &env,
            &format!("[cni]\nconf_dir = \"{}\"\n", empty.path().display()),
        ),
    );
    assert!(!ok);
    let c = check(&checks, "network config");
    assert_eq!(c["ok"], false);
    assert!(c["fix"].as_str().unwrap().contains("conflist"), "{c}");

    // The default handler's shim is missing.
    let (ok, checks) = doctor(
        &env,
        &format!(
            "{}\n[runtime]\ndefault_handler = \"runc\"\n[runtime.handlers.runc]\nruntime_type = \"io.containerd.runc.v2\"\nruntime_path = \"/nonexistent/containerd-shim-runc-v2\"\n",
            good
        ),
    );
    assert!(!ok);
    let c = check(&checks, "handler runc");
    assert_eq!(c["ok"], false);
    assert!(
        c["detail"].as_str().unwrap().contains("/nonexistent"),
        "{c}"
    );
    assert!(c["fix"].as_str().unwrap().contains("containerd"), "{c}");

    // A hosts.toml that does not parse: the file and line are named.
    env.berth
        .hosts_toml(
            "broken.example",
            "server = \"https://broken.example\"\n[host.\"http://x\"\ncapabilities = 3\n",
        )
        .unwrap();
    let (ok, checks) = doctor(&env, &good);
    assert!(!ok);
    let c = check(&checks, "hosts broken.example");
    let detail = c["detail"].as_str().unwrap();
    assert!(detail.contains("broken.example/hosts.toml:2:"), "{c}");
    std::fs::remove_dir_all(env.berth.certs_d.join("broken.example")).unwrap();

    // The daemon is down.
    env.berth.stop().unwrap();
    let (ok, checks) = doctor(&env, &good);
    assert!(!ok);
    let c = check(&checks, "socket");
    assert_eq!(c["ok"], false);
    assert!(
        c["fix"].as_str().unwrap().contains("systemctl start berth"),
        "{c}"
    );
}

fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn install_and_uninstall_through_the_binary() {
    let host = tempfile::tempdir().unwrap();
    let root = host.path();
    // The host has Debian's runc shim and runsc, as this machine does.
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(root.join("usr/bin/containerd-shim-runc-v2"), "shim").unwrap();
    std::fs::write(root.join("usr/bin/runsc"), "runsc").unwrap();
    let before = files(root);
    let run = |args: &[&str]| {
        let out = Command::new(berth_bin()).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let r = root.to_str().unwrap();
    let first = run(&["install", "--host-root", r]);
    assert!(first.contains("wrote      /opt/berth/bin/berth"), "{first}");
    assert!(first.contains("handlers: runc, runsc"), "{first}");
    assert!(
        first.contains("node labels: berth.io/runtime=true"),
        "{first}"
    );
    assert_eq!(
        std::fs::read(root.join("opt/berth/bin/berth")).unwrap(),
        std::fs::read(berth_bin()).unwrap()
    );
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/berth.service")).unwrap();
    assert!(unit.contains("KillMode=process") && unit.contains("Delegate=yes"));
    // The written config is one berth accepts.
    let out = Command::new(berth_bin())
        .args(["config", "show", "--config"])
        .arg(root.join("etc/berth/config.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let second = run(&["install", "--host-root", r]);
    assert!(!second.contains("wrote"), "{second}");
    assert_eq!(
        run(&["install", "--host-root", r, "--print-labels"]),
        "berth.io/runtime=true\n"
    );
    run(&["uninstall", "--host-root", r]);
    assert_eq!(files(root), before);
}
