//! The deploy/ manifests are valid Kubernetes objects: each document deserializes into its
//! k8s-openapi type and serializes back to exactly what the file says (a field the schema
//! does not know would be dropped, and the comparison fails). No cluster needed.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;
use serde_json::Value;

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR")))
        .unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::to_value(serde_yaml::Value::deserialize(d).unwrap()).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Deserializes `doc` as `T` and checks nothing was lost or invented on the way back.
fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{}: {e}", doc["metadata"]["name"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "fields the schema does not know (or of the wrong shape)"
    );
    typed
}

#[test]
fn runtime_classes_route_to_the_configured_handlers() {
    let docs = documents("runtimeclasses.yaml");
    let rcs: Vec<RuntimeClass> = docs.iter().map(strict).collect();
    let handlers: Vec<(&str, &str)> = rcs
        .iter()
        .map(|r| (r.metadata.name.as_deref().unwrap(), r.handler.as_str()))
        .collect();
    assert_eq!(
        handlers,
        vec![
            ("crun", "crun"),
            ("runc", "runc"),
            ("gvisor", "runsc"),
            ("kata", "kata")
        ]
    );
    // Every handler is one the default config defines.
    let cfg = berth::config::Config::parse(berth::config::DEFAULT_CONFIG).unwrap();
    for (_, h) in &handlers {
        assert!(cfg.runtime.handlers.contains_key(*h), "{h}");
    }
    let kata = &rcs[3];
    assert_eq!(
        kata.scheduling
            .as_ref()
            .unwrap()
            .node_selector
            .as_ref()
            .unwrap()["katacontainers.io/kata-runtime"],
        "true"
    );
    assert!(
        kata.overhead
            .as_ref()
            .unwrap()
            .pod_fixed
            .as_ref()
            .unwrap()
            .contains_key("memory")
    );
}

#[test]
fn the_daemonset_installs_with_berth_install_and_restarts_berth() {
    let docs = documents("daemonset.yaml");
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        vec![
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet"
        ]
    );
    let _: ServiceAccount = strict(&docs[0]);
    let _: ClusterRole = strict(&docs[1]);
    let _: ClusterRoleBinding = strict(&docs[2]);
    let ds: DaemonSet = strict(&docs[3]);
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_pid, Some(true));
    let c = &pod.containers[0];
    assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
    // The image's entrypoint does the work (e2e/tests/deploy.rs runs it): the pod runs it
    // as it is.
    assert!(c.command.is_none() && c.args.is_none(), "{:?}", c.command);
    let entrypoint = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/image/entrypoint.sh"),
    )
    .unwrap();
    let lines: Vec<&str> = entrypoint.lines().map(str::trim).collect();
    let at = |want: &str| {
        lines
            .iter()
            .position(|l| l == &want)
            .unwrap_or_else(|| panic!("entrypoint lacks {want:?}"))
    };
    let steps = [
        at(r#"berth install --host-root "$host""#),
        at("nsenter --target 1 --mount -- systemctl daemon-reload"),
        at("nsenter --target 1 --mount -- systemctl enable berth.service"),
        at("nsenter --target 1 --mount -- systemctl restart berth.service"),
    ];
    assert!(steps.is_sorted(), "out of order: {steps:?}");
    let mounts: Vec<&str> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| m.mount_path.as_str())
        .collect();
    for want in [
        "/host/opt/berth",
        "/host/etc/berth",
        "/host/etc/systemd/system",
        "/host/run/berth",
    ] {
        assert!(mounts.contains(&want), "{want} not mounted: {mounts:?}");
    }
}

#[test]
fn the_unit_keeps_pods_alive_across_restarts() {
    let unit = berth::install::UNIT;
    for line in [
        "KillMode=process",
        "Delegate=yes",
        "Restart=always",
        "LimitNOFILE=1048576",
        "OOMScoreAdjust=-999",
        "ExecStart=/opt/berth/bin/berth --config /etc/berth/config.toml",
    ] {
        assert!(unit.lines().any(|l| l == line), "missing {line}");
    }
}
