//! Pod sandboxes end to end: a real berth running the pause container under Debian's
//! containerd-shim-runc-v2 and runc, on a private bridge network with Debian's CNI plugins.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use berth_cri_api::v1 as cri;
use berth_e2e::pods::pod_config;
use berth_e2e::{PodEnv, TestNet, free_port, wait_until};
use tonic::Code;

fn sh(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().expect(cmd[0]);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ns_link(pid: u32, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn info(map: &HashMap<String, String>) -> serde_json::Value {
    serde_json::from_str(map.get("info").expect("verbose info")).expect("info is JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_gets_its_network_namespace_ip_port_mapping_hostname_and_sysctls() {
    let env = PodEnv::start().await.unwrap();
    let host_port = free_port();
    let mut cfg = pod_config("web");
    cfg.hostname = "web-0".into();
    cfg.labels = HashMap::from([("app".into(), "web".into())]);
    cfg.annotations = HashMap::from([("note".into(), "e2e".into())]);
    cfg.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: host_port as i32,
        host_ip: "127.0.0.1".into(),
    }];
    cfg.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["e2e.svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    cfg.linux.as_mut().unwrap().sysctls =
        HashMap::from([("net.ipv4.ip_unprivileged_port_start".into(), "80".into())]);
    let id = env.run(cfg).await.unwrap();
    assert_eq!(id.len(), 64);

    let (st, verbose) = env.status(&id).await.unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata.as_ref().unwrap().name, "web");
    assert_eq!(st.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(st.annotations.get("note").map(String::as_str), Some("e2e"));
    assert_eq!(st.runtime_handler, berth_e2e::berth::default_handler());
    let ip = st.network.as_ref().unwrap().ip.clone();
    assert!(ip.starts_with(&format!("{}.", env.net.prefix)), "{ip}");
    let info = info(&verbose);
    let netns = info["netNamespacePath"].as_str().unwrap().to_string();
    assert!(
        netns.starts_with(env.berth.state.to_str().unwrap()),
        "{netns}"
    );
    let pid = info["pid"].as_u64().unwrap() as u32;

    // The pause process is in the pinned netns, has its own UTS and IPC namespaces with the
    // pod's hostname, and runs as the image's user.
    let pinned = sh(&["stat", "-L", "-c", "%i", &netns]);
    let theirs = sh(&["stat", "-L", "-c", "%i", &format!("/proc/{pid}/ns/net")]);
    assert_eq!(pinned, theirs);
    assert_ne!(ns_link(pid, "uts"), ns_link(std::process::id(), "uts"));
    assert_ne!(ns_link(pid, "ipc"), ns_link(std::process::id(), "ipc"));
    assert_ne!(ns_link(pid, "pid"), ns_link(std::process::id(), "pid"));
    let pid_s = pid.to_string();
    assert_eq!(
        sh(&["nsenter", "-t", &pid_s, "--uts", "hostname"]).trim(),
        "web-0"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Uid:\t65535"), "{status}");
    // The pod's sysctl is set in its netns only.
    let in_pod = sh(&[
        "nsenter",
        &format!("--net={netns}"),
        "cat",
        "/proc/sys/net/ipv4/ip_unprivileged_port_start",
    ]);
    assert_eq!(in_pod.trim(), "80");
    // eth0 carries the IP CNI gave.
    let addrs = sh(&[
        "nsenter",
        &format!("--net={netns}"),
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(addrs.contains(&format!("{ip}/24")), "{addrs}");
    // The pod's resolv.conf and hostname files are written for its containers.
    let dir = env.berth.state.join("sandboxes").join(&id);
    assert_eq!(
        std::fs::read_to_string(dir.join("resolv.conf")).unwrap(),
        "search e2e.svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("hostname")).unwrap(),
        "web-0\n"
    );

    // Traffic reaches a server in the pod, directly and through portmap's DNAT on 127.0.0.1.
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "from the pod\n").unwrap();
    let mut server = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["/bin/busybox", "httpd", "-f", "-p", "8080", "-h"])
        .arg(www.path())
        .spawn()
        .unwrap();
    let get = |url: String| {
        Command::new("curl")
            .args(["-s", "-m", "3", &url])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let direct = wait_until(Duration::from_secs(5), || {
        get(format!("http://{ip}:8080/")) == "from the pod\n"
    });
    let mapped = get(format!("http://127.0.0.1:{host_port}/"));
    let _ = server.kill();
    let _ = server.wait();
    assert!(direct, "pod IP {ip}:8080 unreachable");
    assert_eq!(
        mapped, "from the pod\n",
        "127.0.0.1:{host_port} did not reach the pod"
    );

    // Stop tears the network down (lease, veth, DNAT) and is idempotent; status stays
    // readable; remove deletes everything and is idempotent too.
    env.stop(&id).await.unwrap();
    env.stop(&id).await.unwrap();
    let (st, _) = env.status(&id).await.unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
    // The released IP is no longer reported (containerd reports none once the netns is closed).
    let net = st.network.unwrap_or_default();
    assert!(
        net.ip.is_empty() && net.additional_ips.is_empty(),
        "{net:?}"
    );
    assert!(env.net.leases().is_empty(), "{:?}", env.net.leases());
    assert!(env.net.veths().is_empty(), "{:?}", env.net.veths());
    let nat = sh(&["iptables", "-t", "nat", "-S"]);
    assert!(!nat.contains(&id), "portmap rules left for {id}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    env.remove(&id).await.unwrap();
    env.remove(&id).await.unwrap();
    let e = env.status(&id).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Stop of a pod that is gone is not an error either (CRI: all its resources are
    // reclaimed; critest 1.37 checks it).
    env.stop(&id).await.unwrap();
    assert!(env.list(None).await.is_empty());
    // The network was torn down once: the second Stop and Remove's own Stop ran no plugin.
    let dels = env
        .berth
        .log()
        .lines()
        .filter(|l| l.contains("CNI plugin ran") && l.contains("DEL") && l.contains(&id))
        .count();
    assert_eq!(dels, 3, "one DEL per plugin (bridge, portmap, loopback)");
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn host_network_pods_share_the_hosts_namespaces_and_skip_cni() {
    let env = PodEnv::start().await.unwrap();
    let mut cfg = pod_config("hostnet");
    cfg.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
        namespace_options: Some(cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            ipc: cri::NamespaceMode::Node as i32,
            pid: cri::NamespaceMode::Node as i32,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = env.run(cfg).await.unwrap();
    let (st, verbose) = env.status(&id).await.unwrap();
    let pid = info(&verbose)["pid"].as_u64().unwrap() as u32;
    let me = std::process::id();
    for ns in ["net", "ipc", "pid"] {
        assert_eq!(ns_link(pid, ns), ns_link(me, ns), "{ns}");
    }
    assert_ne!(ns_link(pid, "mnt"), ns_link(me, "mnt"));
    assert_eq!(st.network.unwrap_or_default().ip, "");
    assert!(env.net.leases().is_empty());
    assert!(
        std::fs::read_dir(env.berth.state.join("netns")).map_or(true, |mut d| d.next().is_none())
    );
    let ns = st.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
    env.stop(&id).await.unwrap();
    env.remove(&id).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_the_right_codes_and_leave_nothing_behind() {
    let env = PodEnv::start().await.unwrap();
    let mut c = env.cri.runtime.clone();

    let e = c
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: None,
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut no_name = pod_config("x");
    no_name.metadata.as_mut().unwrap().name.clear();
    let e = env.run(no_name).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("name"), "{e:?}");

    let e = env
        .run_with_handler(pod_config("h"), "no-such-handler")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("no-such-handler"), "{e:?}");

    // A sysctl that is not namespaced is refused while berth writes the pause container's
    // spec, as the pod's network namespace is being made alongside: nothing is left.
    let mut bad = pod_config("sysctl");
    bad.linux.as_mut().unwrap().sysctls = HashMap::from([("vm.swappiness".into(), "10".into())]);
    let e = env.run(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("vm.swappiness"), "{e:?}");
    env.assert_clean();

    // The same sysctl name that is namespaced, with an invalid value, fails in runc: the pod
    // is rolled back completely.
    let mut bad = pod_config("badvalue");
    bad.linux.as_mut().unwrap().sysctls = HashMap::from([(
        "net.ipv4.ip_unprivileged_port_start".into(),
        "not-a-number".into(),
    )]);
    let e = env.run(bad).await.unwrap_err();
    assert!(e.message().contains("ip_unprivileged_port_start"), "{e:?}");
    assert!(env.list(None).await.is_empty());
    env.assert_clean();

    // The same pod metadata twice: the name is taken.
    let id = env.run(pod_config("dup")).await.unwrap();
    let e = env.run(pod_config("dup")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    assert!(e.message().contains(&id), "{e:?}");
    assert_eq!(env.list(None).await.len(), 1);
    // A new attempt is a new pod.
    let mut again = pod_config("dup");
    again.metadata.as_mut().unwrap().attempt = 1;
    let id2 = env.run(again).await.unwrap();
    assert_ne!(id, id2);

    // Stop and Remove of an unknown pod are not errors (CRI: idempotent; containerd 2.x
    // and critest 1.37 agree); Status of one is NotFound.
    env.stop("nonexistent").await.unwrap();
    let e = env.status("nonexistent").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = env.status("").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    env.remove("nonexistent").await.unwrap();

    for i in [&id, &id2] {
        env.stop(i).await.unwrap();
        env.remove(i).await.unwrap();
    }
    // The name is free again.
    let id3 = env.run(pod_config("dup")).await.unwrap();
    env.stop(&id3).await.unwrap();
    env.remove(&id3).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_cni_plugin_rolls_the_pod_back_with_the_plugins_message() {
    let net = TestNet::with_plugins(&[serde_json::json!({"type": "e2e-refuse"})]).unwrap();
    let calls = net.dir().join("calls");
    net.plugin_script(
        "e2e-refuse",
        &format!(
            "#!/bin/sh\necho \"$CNI_COMMAND\" >> {}\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  echo '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"e2e-refuse will not attach\",\"details\":\"by design\"}}'\n  exit 1\nfi\nif [ \"$CNI_COMMAND\" = VERSION ]; then echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"1.0.0\"]}}'; fi\nexit 0\n",
            calls.display()
        ),
    )
    .unwrap();
    let env = PodEnv::start_with(net, "").await.unwrap();
    let e = env.run(pod_config("refused")).await.unwrap_err();
    assert!(e.message().contains("e2e-refuse will not attach"), "{e:?}");
    // The bridge plugin's ADD was undone by DEL (lease and veth released), the netns removed.
    let calls = std::fs::read_to_string(calls).unwrap();
    assert!(calls.contains("ADD") && calls.contains("DEL"), "{calls}");
    assert!(env.list(None).await.is_empty());
    env.assert_clean();
    // The name was released with the rest: a retry fails the same way, not as a duplicate.
    let e = env.run(pod_config("refused")).await.unwrap_err();
    assert!(e.message().contains("e2e-refuse will not attach"), "{e:?}");
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_survive_a_berth_crash_and_exits_are_heard_after_it() {
    let mut env = PodEnv::start().await.unwrap();
    let a = env.run(pod_config("a")).await.unwrap();
    let mut bcfg = pod_config("b");
    bcfg.labels = HashMap::from([("tier".into(), "db".into())]);
    let b = env.run(bcfg).await.unwrap();
    let pid_a = env.pid(&a).await.unwrap();
    let pid_b = env.pid(&b).await.unwrap();
    let ip_a = env.status(&a).await.unwrap().0.network.unwrap().ip;

    env.berth.kill();
    env.berth.restart().unwrap();
    env.reconnect().await.unwrap();

    let pods = env.list(None).await;
    assert_eq!(pods.len(), 2);
    assert!(
        pods.iter()
            .all(|p| p.state == cri::PodSandboxState::SandboxReady as i32)
    );
    assert_eq!(env.pid(&a).await.unwrap(), pid_a);
    assert_eq!(env.status(&a).await.unwrap().0.network.unwrap().ip, ip_a);

    // Filters: label, state, id prefix.
    let by_label = env
        .list(Some(cri::PodSandboxFilter {
            label_selector: HashMap::from([("tier".into(), "db".into())]),
            ..Default::default()
        }))
        .await;
    assert_eq!(
        by_label.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        vec![b.as_str()]
    );
    let by_prefix = env
        .list(Some(cri::PodSandboxFilter {
            id: a[..12].into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(by_prefix.len(), 1);
    assert_eq!(by_prefix[0].id, a);

    // The pause container of b dies: the shim's exit event reaches the restarted berth.
    berth_e2e::signal(pid_b, libc::SIGKILL);
    let heard = wait_until(Duration::from_secs(10), || {
        let env = &env;
        let b = b.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                env.status(&b).await.ok().map(|s| s.0.state)
                    == Some(cri::PodSandboxState::SandboxNotready as i32)
            })
        })
    });
    assert!(heard, "b did not become NotReady after its pause died");
    let not_ready = env
        .list(Some(cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue {
                state: cri::PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }))
        .await;
    assert_eq!(not_ready.len(), 1);
    assert_eq!(not_ready[0].id, b);

    // A restart while a pod is down keeps it NotReady; Stop/Remove after it clean up.
    env.berth.restart().unwrap();
    env.reconnect().await.unwrap();
    assert_eq!(
        env.status(&b).await.unwrap().0.state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(
        env.status(&a).await.unwrap().0.state,
        cri::PodSandboxState::SandboxReady as i32
    );
    for id in [&a, &b] {
        env.stop(id).await.unwrap();
        env.remove(id).await.unwrap();
    }
    env.assert_clean();
}

/// Waits (10 s at most) until berth has exactly one spare shim, other than `replaced`; its pid.
fn one_spare(env: &PodEnv, replaced: Option<u32>) -> u32 {
    let mut pids = Vec::new();
    let ok = berth_e2e::wait_until(Duration::from_secs(10), || {
        pids = env.berth.spare_shim_pids();
        pids.len() == 1 && Some(pids[0]) != replaced
    });
    assert!(ok, "spare shims {pids:?} (replacing {replaced:?})");
    pids[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spare_shim_is_ready_for_the_next_pod() {
    let mut env = PodEnv::start().await.unwrap();
    let first = one_spare(&env, None);
    // A spare waits at the lowest CPU priority, so that starting it never slows pods. Its
    // daemon may be forked from a thread of `shim start` that the renice of that process did
    // not reach; berth sweeps every thread of the daemon once it answers (shim::background).
    berth_e2e::wait_until(Duration::from_secs(10), || {
        berth_e2e::thread_nices(first) == vec![19]
    });
    assert_eq!(berth_e2e::thread_nices(first), vec![19]);
    // (A spare still connecting is not waited for: give it the moment that takes.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The pod takes the spare: its shim is the former spare, and a new spare follows.
    let pod = env.run(pod_config("warm")).await.unwrap();
    // Taken, it and what it starts (the pause process) run at berth's priority (the test's).
    let own = berth_e2e::thread_nices(std::process::id())[0];
    assert_eq!(berth_e2e::thread_nices(first), vec![own]);
    let (_, map) = env.status(&pod).await.unwrap();
    let pause = info(&map)["pid"].as_u64().unwrap() as u32;
    assert_eq!(berth_e2e::thread_nices(pause), vec![own]);
    let stat = std::fs::read_to_string(format!("/proc/{pause}/stat")).unwrap();
    let ppid: u32 = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, first, "the pause process is the former spare's child");
    // A new spare follows, at the lowest priority (on a loaded machine, not at once).
    one_spare(&env, Some(first));
    assert_eq!(
        env.berth.shim_pids().len() + env.berth.spare_shim_pids().len(),
        2
    );
    let shim_cmd = std::fs::read(format!("/proc/{first}/cmdline")).unwrap_or_default();
    assert!(
        !shim_cmd.is_empty(),
        "the spare taken by the pod is its shim now"
    );
    let bundle = env.berth.state.join("sandboxes").join(&pod).join("bundle");
    assert!(bundle.join("config.json").exists() && bundle.join("address").exists());
    // A clean stop shuts the spare down; a crash leaves it, and the next berth replaces it.
    env.berth.stop().unwrap();
    assert!(berth_e2e::wait_until(Duration::from_secs(5), || env
        .berth
        .spare_shim_pids()
        .is_empty()));
    env.berth.restart().unwrap();
    env.reconnect().await.unwrap();
    let second = one_spare(&env, None);
    env.berth.kill();
    env.berth.restart().unwrap();
    env.reconnect().await.unwrap();
    one_spare(&env, Some(second));
    assert!(berth_e2e::wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{second}/stat"))
            .map(|st| st.contains(") Z "))
            .unwrap_or(true)
    }));
    let spare_dirs: Vec<_> = std::fs::read_dir(env.berth.state.join("spare"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(spare_dirs.len(), 1, "{spare_dirs:?}");
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_named_pause_user_is_resolved_through_the_images_passwd() {
    let pause = berth_e2e::ImageBuilder::new(vec![
        berth_e2e::Layer::busybox()
            .unwrap()
            .file(
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\npauser:x:4242:4343::/:/bin/sh\n",
            )
            .file(
                "etc/group",
                "root:x:0:\npausers:x:4343:\nextra:x:4444:pauser\n",
            ),
    ])
    .cmd(&["/bin/sleep", "2147483647"])
    .user("pauser");
    let env = PodEnv::start_with_pause(TestNet::new().unwrap(), "", pause)
        .await
        .unwrap();
    let pod = env.run(pod_config("named")).await.unwrap();
    let pid = env.pid(&pod).await.unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("Uid:\t4242\t"), "{status}");
    assert!(status.contains("Gid:\t4343\t"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Groups:") && l.contains("4444")),
        "{status}"
    );
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_reboot_a_pod_is_stopped_and_its_ip_released() {
    let mut env = PodEnv::start().await.unwrap();
    let pod = env.run(pod_config("rebooted")).await.unwrap();
    assert_eq!(env.net.leases().len(), 1);
    let pause = env.pid(&pod).await.unwrap();
    // What a reboot does to a pod: berth, its shim and the pause process die, and the
    // state directory (a tmpfs: bundles, mounts, the pinned netns) is gone, and so are the
    // shims' sockets (/run). The records under root remain.
    // (The pod took the spare; the next one starts at the lowest priority: wait for it.)
    wait_until(Duration::from_secs(10), || {
        env.berth.shim_sockets().len() == 2
    });
    let sockets = env.berth.shim_sockets();
    assert_eq!(
        sockets.len(),
        2,
        "the pod's shim and the spare: {sockets:?}"
    );
    env.berth.kill();
    for pid in env
        .berth
        .shim_pids()
        .into_iter()
        .chain(env.berth.spare_shim_pids())
    {
        berth_e2e::signal(pid, libc::SIGKILL);
    }
    berth_e2e::signal(pause, libc::SIGKILL);
    berth_e2e::unmount_under(&env.berth.state);
    std::fs::remove_dir_all(&env.berth.state).unwrap();
    for s in &sockets {
        std::fs::remove_file(s).unwrap();
    }
    // cgroups do not outlive a reboot either.
    assert!(wait_until(Duration::from_secs(5), || {
        cgroup_dirs(&pod)
            .iter()
            .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())
    }));
    env.berth.restart().unwrap();
    env.reconnect().await.unwrap();
    env.stop(&pod).await.unwrap();
    assert!(env.net.leases().is_empty(), "{:?}", env.net.leases());
    env.remove(&pod).await.unwrap();
    env.assert_clean();
    let left: Vec<_> = cgroup_dirs(&pod)
        .into_iter()
        .filter(|d| d.exists())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_pin_file_that_was_never_mounted_does_not_keep_a_pod_from_stopping() {
    // berth killed between creating a pod's namespace pin file and mounting the namespace
    // on it leaves a plain file there; CNI plugins refuse such a path ("unknown FS magic").
    // The same file, made here by unmounting a running pod's namespace.
    let env = PodEnv::start().await.unwrap();
    let pod = env.run(pod_config("unpinned")).await.unwrap();
    assert_eq!(env.net.leases().len(), 1);
    let netns = env
        .berth
        .state
        .join("netns")
        .join(format!("cni-{}", &pod[..32]));
    let pinned = |p: &std::path::Path| {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(4) == p.to_str() && l.contains(" - nsfs "))
    };
    assert!(pinned(&netns), "{}", netns.display());
    let status = std::process::Command::new("umount")
        .arg(&netns)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(netns.is_file() && !pinned(&netns));
    env.stop(&pod).await.unwrap();
    assert!(env.net.leases().is_empty(), "{:?}", env.net.leases());
    env.remove(&pod).await.unwrap();
    assert!(!netns.exists());
    env.assert_clean();
}

/// The pod's cgroup directories (cgroupfs driver, parent `k8s.io`), in every hierarchy.
fn cgroup_dirs(pod: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| {
            d.flatten()
                .map(|h| h.path().join("k8s.io").join(pod))
                .collect()
        })
        .unwrap_or_default()
}
