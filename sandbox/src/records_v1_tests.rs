//! Records written before the OCI spec was typed (`testdata/records-v1`, made by that
//! version's own builders and serialisation) still load, and what they hold is what the
//! typed builders make of the same input today.

use std::path::Path;

use serde_json::Value;

use crate::container::ContainerRecord;
use crate::pod::PodRecord;
use crate::spec::container::ContainerSpec;
use crate::spec::host::{Host, MountPropagation, RealHost};
use crate::spec::pause::SandboxSpec;

/// This machine, but with the hugetlb controller the records' host had (the old spec holds
/// the kubelet's hugepage limit).
struct RecordsHost;

impl Host for RecordsHost {
    fn mount_source(&self, path: &str) -> crate::error::Result<std::path::PathBuf> {
        RealHost.mount_source(path)
    }
    fn propagation(&self, path: &Path) -> Option<MountPropagation> {
        RealHost.propagation(path)
    }
    fn mount_locks(&self, _: &Path) -> crate::spec::host::MountLocks {
        // The records' host bound its sources without keeping flags.
        Default::default()
    }
    fn device(&self, path: &str) -> crate::error::Result<crate::spec::oci::Device> {
        RealHost.device(path)
    }
    fn devices(&self) -> Vec<crate::spec::oci::Device> {
        RealHost.devices()
    }
    fn hugetlb(&self) -> bool {
        true
    }
}

const POD: &str = include_str!("../testdata/records-v1/pod.json");
const CONTAINER: &str = include_str!("../testdata/records-v1/container.json");
const INTENT: &str = include_str!("../testdata/records-v1/container-intent.json");

/// `v` without empty objects and lists, which the old builders wrote and the typed model
/// leaves out (`"cpu": {}`, `"additionalGids": []`): the runtimes read both the same. The
/// masked and read-only path lists keep an empty value (it means "nothing masked").
fn pruned(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter_map(|(k, v)| {
                    let keep_empty = k == "maskedPaths" || k == "readonlyPaths";
                    let v = pruned(v);
                    let empty = matches!(&v, Value::Object(o) if o.is_empty())
                        || matches!(&v, Value::Array(a) if a.is_empty());
                    (!empty || keep_empty).then(|| (k.clone(), v))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(pruned).collect()),
        v => v.clone(),
    }
}

#[test]
fn old_records_load_and_write_back_what_they_held() {
    for (name, text) in [("pod", POD), ("container", CONTAINER)] {
        let old: Value = serde_json::from_str(text).unwrap();
        let new = if name == "pod" {
            serde_json::to_value(serde_json::from_str::<PodRecord>(text).unwrap()).unwrap()
        } else {
            serde_json::to_value(serde_json::from_str::<ContainerRecord>(text).unwrap()).unwrap()
        };
        assert_eq!(pruned(&new), pruned(&old), "{name}");
    }
    // A record written as intent, before its spec: no spec.
    let intent: ContainerRecord = serde_json::from_str(INTENT).unwrap();
    assert!(intent.spec.is_none());
}

#[test]
fn the_typed_builders_make_the_old_specs() {
    let pod: PodRecord = serde_json::from_str(POD).unwrap();
    let spec = SandboxSpec {
        id: pod.id.clone(),
        args: vec!["/pause".into()],
        user: (65535, 65535, vec![]),
        hostname: pod.config.hostname.clone(),
        netns: pod.netns.clone(),
        shm: Some("/run/berth/sandboxes/p1/shm".into()),
        cgroup_parent: pod.config.cgroup_parent.clone(),
        sysctls: pod.config.sysctls.clone(),
        seccomp: crate::seccomp::filter(&pod.config.seccomp, &[]).unwrap(),
        daemon_oom_score_adj: 0,
        ..Default::default()
    }
    .build("/run/berth/sandboxes/p1/bundle/rootfs")
    .unwrap();
    let mut old: Value = serde_json::from_str(POD).unwrap();
    // Since then the pod's /dev/shm bind keeps the flags of the tmpfs it binds.
    for m in old["spec"]["mounts"].as_array_mut().unwrap() {
        if m["destination"] == "/dev/shm" {
            for o in ["nosuid", "nodev", "noexec"] {
                m["options"].as_array_mut().unwrap().push(o.into());
            }
        }
    }
    assert!(
        pruned(&serde_json::to_value(&spec).unwrap()) == pruned(&old["spec"]),
        "the pod spec differs from the old record's"
    );

    let rec: ContainerRecord = serde_json::from_str(CONTAINER).unwrap();
    let image = berth_image::manifest::ContainerConfig {
        env: Some(vec!["PATH=/bin".into()]),
        ..Default::default()
    };
    let own = crate::spec::caps::own_capabilities();
    let spec = ContainerSpec {
        id: &rec.id,
        config: &rec.config,
        pod_id: &pod.id,
        pod: &pod.config,
        pause_pid: pod.pid,
        pod_dir: Path::new("/run/berth/sandboxes/p1"),
        image: &image,
        ids: crate::users::Ids {
            uid: 1000,
            gid: 1000,
            additional: vec![10],
        },
        target_pid: None,
        own_capabilities: &own,
        daemon_oom_score_adj: 0,
    }
    .build(&RecordsHost)
    .unwrap();
    let old: Value = serde_json::from_str(CONTAINER).unwrap();
    assert_eq!(
        pruned(&serde_json::to_value(&spec).unwrap()),
        pruned(&old["spec"])
    );
}
