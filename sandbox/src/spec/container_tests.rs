//! The container spec's rules, one table or case each, against a made-up host.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::*;
use crate::container::{Mount as CriMount, Resources, Seccomp, Security};
use crate::spec::host::MountPropagation;
use crate::spec::oci::Device as OciDevice;
use berth_image::manifest::ContainerConfig as ImageConfig;

/// A host with the mount sources, propagation and devices a test gives it.
#[derive(Default)]
struct FakeHost {
    /// Host path → mount propagation of the mount holding it.
    propagation: HashMap<String, MountPropagation>,
    /// Host path → (kind, major, minor).
    devices: HashMap<String, (&'static str, i64, i64)>,
    /// Host path → the flags of the mount holding it.
    locks: HashMap<String, crate::spec::host::MountLocks>,
}

impl Host for FakeHost {
    fn hugetlb(&self) -> bool {
        true
    }
    fn mount_source(&self, path: &str) -> Result<PathBuf> {
        Ok(PathBuf::from(path))
    }
    fn propagation(&self, path: &Path) -> Option<MountPropagation> {
        self.propagation.get(path.to_str()?).copied()
    }
    fn mount_locks(&self, path: &Path) -> crate::spec::host::MountLocks {
        path.to_str()
            .and_then(|p| self.locks.get(p))
            .copied()
            .unwrap_or_default()
    }
    fn device(&self, path: &str) -> Result<OciDevice> {
        let (kind, major, minor) = self
            .devices
            .get(path)
            .ok_or_else(|| Error::Invalid(format!("device {path}: no such device")))?;
        Ok(OciDevice {
            path: path.into(),
            kind: kind.to_string(),
            major: *major,
            minor: *minor,
            file_mode: Some(0o666),
            uid: Some(0),
            gid: Some(0),
        })
    }
    fn devices(&self) -> Vec<OciDevice> {
        let mut v: Vec<_> = self
            .devices
            .keys()
            .map(|p| self.device(p).unwrap())
            .collect();
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v
    }
}

fn own() -> Vec<String> {
    ["CAP_CHOWN", "CAP_KILL", "CAP_SYS_ADMIN", "CAP_NET_ADMIN"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn pod() -> PodConfig {
    let mut p = PodConfig::default();
    p.meta.name = "web".into();
    p.meta.namespace = "default".into();
    p.meta.uid = "u1".into();
    p.hostname = "web-1".into();
    p.cgroup_parent = "/kubepods/podu1".into();
    p
}

/// Builds the spec of `config` in `pod` from `image`, on `host`.
fn build_on(
    host: &FakeHost,
    config: &ContainerConfig,
    pod: &PodConfig,
    image: &ImageConfig,
    target_pid: Option<u32>,
) -> Result<Spec> {
    let own = own();
    ContainerSpec {
        id: "c1",
        config,
        pod_id: "p1",
        pod,
        pause_pid: 42,
        pod_dir: Path::new("/run/berth/sandboxes/p1"),
        image,
        ids: crate::users::Ids {
            uid: 1000,
            gid: 1000,
            additional: vec![10],
        },
        target_pid,
        own_capabilities: &own,
        daemon_oom_score_adj: -500,
    }
    .build(host)
}

fn build(config: &ContainerConfig) -> Result<Spec> {
    build_on(&FakeHost::default(), config, &pod(), &busybox(), None)
}

fn busybox() -> ImageConfig {
    ImageConfig {
        entrypoint: Some(vec!["/entry".into()]),
        cmd: Some(vec!["serve".into(), "--port=80".into()]),
        env: Some(vec!["PATH=/image/bin".into(), "A=image".into()]),
        working_dir: "/srv".into(),
        ..Default::default()
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn process(s: &Spec) -> &Process {
    s.process.as_ref().unwrap()
}

fn linux(s: &Spec) -> &Linux {
    s.linux.as_ref().unwrap()
}

#[test]
fn command_and_args_over_entrypoint_and_cmd() {
    let image = busybox();
    let no_cmd = ImageConfig {
        cmd: None,
        ..busybox()
    };
    // (config command, config args, image) → argv.
    type Row<'a> = (&'a [&'a str], &'a [&'a str], &'a ImageConfig, &'a [&'a str]);
    let table: &[Row] = &[
        (&[], &[], &image, &["/entry", "serve", "--port=80"]),
        (&[], &["other"], &image, &["/entry", "other"]),
        (&["/bin/sh"], &[], &image, &["/bin/sh"]),
        (&["/bin/sh"], &["-c", "x"], &image, &["/bin/sh", "-c", "x"]),
        (&[], &[], &no_cmd, &["/entry"]),
    ];
    for (command, args, image, want) in table {
        let c = ContainerConfig {
            command: strs(command),
            args: strs(args),
            ..Default::default()
        };
        let s = build_on(&FakeHost::default(), &c, &pod(), image, None).unwrap();
        assert_eq!(process(&s).args, strs(want), "{command:?} {args:?}");
    }
    let empty = ImageConfig::default();
    let e = build_on(
        &FakeHost::default(),
        &ContainerConfig::default(),
        &pod(),
        &empty,
        None,
    )
    .unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
}

#[test]
fn env_precedence_config_over_hostname_over_image_over_default_path() {
    let c = ContainerConfig {
        envs: vec![("A".into(), "config".into()), ("B".into(), "x=y".into())],
        ..Default::default()
    };
    let s = build(&c).unwrap();
    assert_eq!(
        process(&s).env,
        strs(&["PATH=/image/bin", "HOSTNAME=web-1", "A=config", "B=x=y"])
    );
    // No PATH in the image: the default one; host network: no HOSTNAME.
    let image = ImageConfig {
        env: Some(vec!["FLAG".into()]),
        ..busybox()
    };
    let host_net = PodConfig {
        host_network: true,
        ..pod()
    };
    let c = ContainerConfig {
        envs: vec![("HOSTNAME".into(), "mine".into())],
        ..Default::default()
    };
    let s = build_on(&FakeHost::default(), &c, &host_net, &image, None).unwrap();
    assert_eq!(
        process(&s).env,
        vec![
            format!("PATH={DEFAULT_PATH}"),
            "FLAG=".into(),
            "HOSTNAME=mine".into()
        ]
    );
}

#[test]
fn working_directory_config_then_image_then_root_and_absolute() {
    let cwd = |config: &str, image: &str| {
        let c = ContainerConfig {
            working_dir: config.into(),
            ..Default::default()
        };
        let image = ImageConfig {
            working_dir: image.into(),
            ..busybox()
        };
        build_on(&FakeHost::default(), &c, &pod(), &image, None).map(|s| process(&s).cwd.clone())
    };
    assert_eq!(cwd("/work", "/srv").unwrap(), "/work");
    assert_eq!(cwd("", "/srv").unwrap(), "/srv");
    assert_eq!(cwd("", "").unwrap(), "/");
    assert!(cwd("relative", "").is_err());
}

#[test]
fn user_and_groups_come_from_the_resolved_ids() {
    let s = build(&ContainerConfig::default()).unwrap();
    let u = &process(&s).user;
    assert_eq!(
        (u.uid, u.gid, u.additional_gids.clone()),
        (1000, 1000, vec![10])
    );
}

fn mount<'a>(s: &'a Spec, dest: &str) -> Vec<&'a Mount> {
    s.mounts.iter().filter(|m| m.destination == dest).collect()
}

#[test]
fn user_mounts_replace_defaults_at_their_path_and_come_parents_first() {
    let bind = |container: &str, host: &str| CriMount {
        container_path: container.into(),
        host_path: host.into(),
        ..Default::default()
    };
    let c = ContainerConfig {
        mounts: vec![
            bind("/data/sub", "/srv/sub"),
            bind("/etc/hosts", "/kubelet/hosts"),
            CriMount {
                readonly: true,
                ..bind("/data", "/srv/data")
            },
        ],
        ..Default::default()
    };
    let s = build(&c).unwrap();
    let hosts = mount(&s, "/etc/hosts");
    assert_eq!(
        hosts.len(),
        1,
        "the kubelet's /etc/hosts replaces the pod's"
    );
    assert_eq!(hosts[0].source, "/kubelet/hosts");
    let resolv = mount(&s, "/etc/resolv.conf");
    assert_eq!(resolv[0].source, "/run/berth/sandboxes/p1/resolv.conf");
    assert_eq!(resolv[0].options, strs(&["rbind", "rprivate", "rw"]));
    let dests: Vec<&str> = s.mounts.iter().map(|m| m.destination.as_str()).collect();
    let (data, sub) = (
        dests.iter().position(|d| *d == "/data").unwrap(),
        dests.iter().position(|d| *d == "/data/sub").unwrap(),
    );
    assert!(data < sub, "{dests:?}");
    assert_eq!(
        mount(&s, "/data")[0].options,
        strs(&["rbind", "rprivate", "ro"])
    );
    let e = build(&ContainerConfig {
        mounts: vec![bind("relative", "/x")],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
}

#[test]
fn mount_propagation_is_checked_against_the_hosts_mount() {
    let host = FakeHost {
        propagation: HashMap::from([
            (
                "/shared".to_string(),
                MountPropagation {
                    shared: true,
                    slave: false,
                },
            ),
            (
                "/slave".to_string(),
                MountPropagation {
                    shared: false,
                    slave: true,
                },
            ),
            ("/private".to_string(), MountPropagation::default()),
        ]),
        ..Default::default()
    };
    let with = |host_path: &str, propagation| ContainerConfig {
        mounts: vec![CriMount {
            container_path: "/m".into(),
            host_path: host_path.into(),
            readonly: false,
            recursive_read_only: false,
            propagation,
            image: None,
            options: vec![],
            idmap: None,
        }],
        ..Default::default()
    };
    // (host path, asked) → (the mount's propagation, the root's), or refused.
    use Propagation::*;
    type Row<'a> = (&'a str, Propagation, Option<(&'a str, Option<&'a str>)>);
    let table: &[Row] = &[
        ("/private", Private, Some(("rprivate", None))),
        ("/slave", HostToContainer, Some(("rslave", Some("rslave")))),
        ("/shared", HostToContainer, Some(("rslave", Some("rslave")))),
        ("/shared", Bidirectional, Some(("rshared", Some("rshared")))),
        ("/private", HostToContainer, None),
        ("/slave", Bidirectional, None),
    ];
    for (path, asked, want) in table {
        let got = build_on(&host, &with(path, *asked), &pod(), &busybox(), None);
        match want {
            None => assert!(got.is_err(), "{path} {asked:?}"),
            Some((prop, root)) => {
                let s = got.unwrap();
                assert_eq!(mount(&s, "/m")[0].options[1], *prop, "{path} {asked:?}");
                assert_eq!(linux(&s).rootfs_propagation.as_deref(), *root);
            }
        }
    }
}

#[test]
fn a_mount_is_read_write_read_only_or_recursively_read_only() {
    let host = FakeHost::default();
    let with = |readonly, recursive_read_only| ContainerConfig {
        mounts: vec![CriMount {
            container_path: "/m".into(),
            host_path: "/data".into(),
            readonly,
            recursive_read_only,
            propagation: Propagation::Private,
            image: None,
            options: vec![],
            idmap: None,
        }],
        ..Default::default()
    };
    for (ro, rro, mode) in [
        (false, false, "rw"),
        (true, false, "ro"),
        (true, true, "rro"),
    ] {
        let s = build_on(&host, &with(ro, rro), &pod(), &busybox(), None).unwrap();
        assert_eq!(
            mount(&s, "/m")[0].options,
            ["rbind", "rprivate", mode],
            "readonly {ro}, recursive {rro}"
        );
    }
    let mut c = with(true, false);
    c.mounts[0].options = vec!["noexec".into(), "nosuid".into()];
    let s = build_on(&host, &c, &pod(), &busybox(), None).unwrap();
    assert_eq!(
        mount(&s, "/m")[0].options,
        ["rbind", "rprivate", "ro", "noexec", "nosuid"]
    );
}

fn ns(s: &Spec) -> Vec<(NamespaceKind, Option<String>)> {
    linux(s)
        .namespaces
        .iter()
        .map(|n| (n.kind, n.path.as_ref().map(|p| p.display().to_string())))
        .collect()
}

#[test]
fn namespaces_for_each_mode() {
    use NamespaceKind::*;
    let p = |t: &str| Some(format!("/proc/42/ns/{t}"));
    let joined = vec![
        (Mount, None),
        (Network, p("net")),
        (Uts, p("uts")),
        (Ipc, p("ipc")),
    ];
    let with_pid = |mode: PidMode| ContainerConfig {
        security: Security {
            pid: mode,
            ..Default::default()
        },
        ..Default::default()
    };
    let host_pid = PodConfig {
        host_pid: true,
        ..pod()
    };
    let own_pod = pod();
    // (mode, pod, target pid) → the pid namespace.
    type Row<'a> = (
        PidMode,
        &'a PodConfig,
        Option<u32>,
        Option<(NamespaceKind, Option<String>)>,
    );
    let table: Vec<Row> = vec![
        (PidMode::Container, &own_pod, None, Some((Pid, None))),
        (PidMode::Pod, &own_pod, None, Some((Pid, p("pid")))),
        (PidMode::Pod, &host_pid, None, None),
        (PidMode::Node, &own_pod, None, None),
        (
            PidMode::Target("c0".into()),
            &own_pod,
            Some(77),
            Some((Pid, Some("/proc/77/ns/pid".into()))),
        ),
    ];
    for (mode, pod, target, want) in table {
        let s = build_on(
            &FakeHost::default(),
            &with_pid(mode.clone()),
            pod,
            &busybox(),
            target,
        )
        .unwrap();
        let mut expect = joined.clone();
        expect.extend(want);
        assert_eq!(ns(&s), expect, "{mode:?}");
    }
    let e = build_on(
        &FakeHost::default(),
        &with_pid(PidMode::Target("gone".into())),
        &pod(),
        &busybox(),
        None,
    )
    .unwrap_err();
    assert_eq!(e.kind(), crate::ErrorKind::FailedPrecondition);
    // Host network and IPC: those are not joined.
    let host = PodConfig {
        host_network: true,
        host_ipc: true,
        ..pod()
    };
    let s = build_on(
        &FakeHost::default(),
        &ContainerConfig::default(),
        &host,
        &busybox(),
        None,
    )
    .unwrap();
    assert_eq!(ns(&s), vec![(Mount, None), (Pid, None)]);
    assert_eq!(mount(&s, "/dev/shm")[0].source, "/dev/shm");
}

#[test]
fn devices_get_nodes_and_cgroup_rules() {
    let host = FakeHost {
        devices: HashMap::from([
            ("/dev/fuse".to_string(), ("c", 10, 229)),
            ("/dev/loop0".to_string(), ("b", 7, 0)),
        ]),
        ..Default::default()
    };
    let c = ContainerConfig {
        devices: vec![crate::container::Device {
            container_path: "/dev/f".into(),
            host_path: "/dev/fuse".into(),
            permissions: "rw".into(),
        }],
        ..Default::default()
    };
    let s = build_on(&host, &c, &pod(), &busybox(), None).unwrap();
    let l = linux(&s);
    assert_eq!(l.devices.len(), 1);
    assert_eq!(
        (l.devices[0].path.as_str(), l.devices[0].major),
        ("/dev/f", 10)
    );
    let rules = &l.resources.as_ref().unwrap().devices;
    assert_eq!(rules[0], DeviceRule::every(false));
    assert_eq!(
        rules[1],
        DeviceRule {
            allow: true,
            kind: Some("c".into()),
            major: Some(10),
            minor: Some(229),
            access: Some("rw".into()),
        }
    );
    let bad_perms = ContainerConfig {
        devices: vec![crate::container::Device {
            permissions: "rwx".into(),
            ..c.devices[0].clone()
        }],
        ..Default::default()
    };
    assert!(build_on(&host, &bad_perms, &pod(), &busybox(), None).is_err());
    let missing = ContainerConfig {
        devices: vec![crate::container::Device {
            host_path: "/dev/none".into(),
            ..c.devices[0].clone()
        }],
        ..Default::default()
    };
    assert!(build_on(&host, &missing, &pod(), &busybox(), None).is_err());
}

#[test]
fn privileged_gets_every_device_and_capability_and_nothing_masked() {
    let host = FakeHost {
        devices: HashMap::from([("/dev/loop0".to_string(), ("b", 7, 0))]),
        ..Default::default()
    };
    let c = ContainerConfig {
        security: Security {
            privileged: true,
            seccomp: Seccomp::RuntimeDefault,
            drop_capabilities: strs(&["ALL"]),
            ..Default::default()
        },
        ..Default::default()
    };
    let s = build_on(&host, &c, &pod(), &busybox(), None).unwrap();
    let l = linux(&s);
    assert_eq!(l.devices[0].path, "/dev/loop0");
    assert_eq!(
        l.resources.as_ref().unwrap().devices,
        vec![DeviceRule::every(true)]
    );
    assert_eq!(process(&s).capabilities.as_ref().unwrap().bounding, own());
    assert_eq!(
        (l.masked_paths.clone(), l.readonly_paths.clone()),
        (None, None)
    );
    assert_eq!(l.seccomp, None);
    assert_eq!(mount(&s, "/sys")[0].options.last().unwrap(), "rw");
    assert_eq!(mount(&s, "/sys/fs/cgroup")[0].options.last().unwrap(), "rw");

    let plain = build(&ContainerConfig::default()).unwrap();
    assert_eq!(mount(&plain, "/sys")[0].options.last().unwrap(), "ro");
    assert!(linux(&plain).devices.is_empty());
}

#[test]
fn readonly_root_also_makes_the_pod_files_readonly() {
    let c = ContainerConfig {
        security: Security {
            readonly_rootfs: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let s = build(&c).unwrap();
    assert!(s.root.as_ref().unwrap().readonly);
    assert_eq!(mount(&s, "/etc/hostname")[0].options.last().unwrap(), "ro");
    assert_eq!(mount(&s, "/dev/shm")[0].options.last().unwrap(), "rw");
    assert!(
        !build(&ContainerConfig::default())
            .unwrap()
            .root
            .unwrap()
            .readonly
    );
}

#[test]
fn masked_and_readonly_paths_default_unless_given() {
    let s = build(&ContainerConfig::default()).unwrap();
    assert_eq!(linux(&s).masked_paths, Some(strs(MASKED_PATHS)));
    assert_eq!(linux(&s).readonly_paths, Some(strs(READONLY_PATHS)));
    // The kubelet's Unmasked proc mount: empty lists, kept empty.
    let c = ContainerConfig {
        security: Security {
            masked_paths: Some(vec![]),
            readonly_paths: Some(strs(&["/proc/sys"])),
            ..Default::default()
        },
        ..Default::default()
    };
    let s = build(&c).unwrap();
    assert_eq!(linux(&s).masked_paths, Some(vec![]));
    assert_eq!(linux(&s).readonly_paths, Some(strs(&["/proc/sys"])));
}

#[test]
fn capabilities_follow_add_and_drop() {
    let with = |add: &[&str], drop: &[&str]| ContainerConfig {
        security: Security {
            add_capabilities: strs(add),
            drop_capabilities: strs(drop),
            ..Default::default()
        },
        ..Default::default()
    };
    let caps =
        |c: &ContainerConfig| build(c).map(|s| process(&s).capabilities.clone().unwrap().effective);
    assert_eq!(caps(&with(&["ALL"], &[])).unwrap(), own());
    assert_eq!(
        caps(&with(&["NET_ADMIN"], &["ALL"])).unwrap(),
        strs(&["CAP_NET_ADMIN"])
    );
    assert!(caps(&with(&[], &[])).unwrap().contains(&"CAP_CHOWN".into()));
    assert!(caps(&with(&["NOT_A_CAP"], &[])).is_err());
}

#[test]
fn seccomp_none_default_or_profile() {
    let with = |seccomp| ContainerConfig {
        security: Security {
            seccomp,
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        linux(&build(&with(Seccomp::Unconfined)).unwrap()).seccomp,
        None
    );
    let default = build(&with(Seccomp::RuntimeDefault)).unwrap();
    let profile = linux(&default).seccomp.as_ref().unwrap();
    assert_eq!(profile.default_action, "SCMP_ACT_ERRNO");
    let own = crate::spec::oci::Seccomp {
        default_action: "SCMP_ACT_LOG".into(),
        ..Default::default()
    };
    let s = build(&with(Seccomp::Profile(own.clone()))).unwrap();
    assert_eq!(linux(&s).seccomp.as_ref(), Some(&own));
}

#[test]
fn resources_and_oom_score_adj() {
    let c = ContainerConfig {
        resources: Resources {
            memory_limit: 1 << 30,
            cpu_quota: 50_000,
            oom_score_adj: -999,
            ..Default::default()
        },
        ..Default::default()
    };
    let s = build(&c).unwrap();
    let r = linux(&s).resources.as_ref().unwrap();
    assert_eq!(r.memory.as_ref().unwrap().limit, Some(1 << 30));
    assert_eq!(r.cpu.as_ref().unwrap().quota, Some(50_000));
    // Clamped to berth's own -500.
    assert_eq!(process(&s).oom_score_adj, Some(-500));
    assert_eq!(s.cgroups_path(), Some("/kubepods/podu1/c1"));
    // Containers set no sysctls: the pod's are set once, in the pause container.
    assert!(linux(&s).sysctl.is_empty());
}

#[test]
fn cri_annotations_are_added_and_win() {
    let c = ContainerConfig {
        name: "app".into(),
        image: "busybox:1".into(),
        annotations: BTreeMap::from([
            ("mine".to_string(), "1".to_string()),
            (
                "io.kubernetes.cri.sandbox-id".to_string(),
                "forged".to_string(),
            ),
        ]),
        tty: true,
        ..Default::default()
    };
    let s = build(&c).unwrap();
    assert_eq!(s.annotations["mine"], "1");
    assert_eq!(s.annotations["io.kubernetes.cri.sandbox-id"], "p1");
    assert_eq!(s.annotations["io.kubernetes.cri.container-name"], "app");
    assert_eq!(
        s.annotations["io.kubernetes.cri.sandbox-namespace"],
        "default"
    );
    assert!(process(&s).terminal);
}

#[test]
fn every_bind_keeps_the_nosuid_nodev_and_noexec_of_its_source_mount() {
    use crate::spec::host::MountLocks;
    let host = FakeHost {
        locks: HashMap::from([
            // An image volume: berth mounts it ro,nosuid,nodev.
            (
                "/vol".to_string(),
                MountLocks {
                    nosuid: true,
                    nodev: true,
                    noexec: false,
                },
            ),
            ("/run/berth/sandboxes/p1/shm".to_string(), MountLocks::ALL),
            (
                "/run/berth/sandboxes/p1/hosts".to_string(),
                MountLocks {
                    nosuid: true,
                    nodev: true,
                    noexec: false,
                },
            ),
        ]),
        ..Default::default()
    };
    let c = ContainerConfig {
        mounts: vec![
            CriMount {
                container_path: "/v".into(),
                host_path: "/vol".into(),
                readonly: true,
                // Asked for by the CRI's mount options: kept once.
                options: vec!["nosuid".into(), "noexec".into()],
                ..Default::default()
            },
            CriMount {
                container_path: "/plain".into(),
                host_path: "/srv".into(),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let s = build_on(&host, &c, &pod(), &busybox(), None).unwrap();
    assert_eq!(
        mount(&s, "/v")[0].options,
        ["rbind", "rprivate", "ro", "nosuid", "noexec", "nodev"]
    );
    assert_eq!(mount(&s, "/plain")[0].options, ["rbind", "rprivate", "rw"]);
    assert_eq!(
        mount(&s, "/dev/shm")[0].options,
        ["rbind", "rprivate", "rw", "nosuid", "nodev", "noexec"]
    );
    assert_eq!(
        mount(&s, "/etc/hosts")[0].options,
        ["rbind", "rprivate", "rw", "nosuid", "nodev"]
    );
}

#[test]
fn in_a_pods_user_namespace_the_container_joins_it_and_idmaps_what_the_pod_owns() {
    let userns = crate::userns::UserNamespace::from_root(200_000, 300_000, 65_536);
    let mut p = pod();
    p.userns = Some(userns);
    let cri_mount = |at: &str, idmap| CriMount {
        container_path: at.into(),
        host_path: "/data".into(),
        readonly: false,
        recursive_read_only: false,
        propagation: Propagation::Private,
        image: None,
        options: vec![],
        idmap,
    };
    let c = ContainerConfig {
        mounts: vec![
            cri_mount("/mapped", Some(userns)),
            cri_mount("/plain", None),
        ],
        ..Default::default()
    };
    let s = build_on(&FakeHost::default(), &c, &p, &busybox(), None).unwrap();
    let l = linux(&s);
    assert!(
        l.namespaces
            .contains(&Namespace::join(NamespaceKind::User, "/proc/42/ns/user"))
    );
    let m = |h| crate::spec::oci::IdMapping {
        container_id: 0,
        host_id: h,
        size: 65_536,
    };
    assert_eq!(
        (&l.uid_mappings[..], &l.gid_mappings[..]),
        (&[m(200_000)][..], &[m(300_000)][..])
    );
    for at in [
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/dev/shm",
        "/mapped",
    ] {
        let mt = mount(&s, at)[0];
        assert_eq!(mt.uid_mappings, [m(200_000)], "{at}");
        assert_eq!(mt.gid_mappings, [m(300_000)], "{at}");
    }
    assert!(mount(&s, "/plain")[0].uid_mappings.is_empty());
    // The kernel filesystems are the namespace's own, never idmapped.
    assert!(mount(&s, "/proc")[0].uid_mappings.is_empty());

    // In the node's user namespace: none of it.
    let s = build(&ContainerConfig::default()).unwrap();
    let l = linux(&s);
    assert!(!l.namespaces.iter().any(|n| n.kind == NamespaceKind::User));
    assert!(l.uid_mappings.is_empty() && mount(&s, "/etc/hosts")[0].uid_mappings.is_empty());
}
