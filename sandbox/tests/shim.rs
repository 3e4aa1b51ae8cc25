//! The shim client against Debian's real containerd-shim-runc-v2 and runc (root needed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_sandbox::shim::events::{self, EventHub, TaskEvent};
use berth_sandbox::shim::{self, Shim, ShimEnv};

const SHIM: &str = "containerd-shim-runc-v2";
const NS_RUN: &str = "berth-test-run";
const NS_UNREACHABLE: &str = "berth-test-unreachable";

/// The sandbox spec berth generates, with busybox standing in for /pause: run by real runc,
/// this also proves the oom_score_adj clamp (this machine's root cannot go below 0).
fn spec(rootfs: &Path, id: &str, ns: &str, args: &[&str]) -> berth_sandbox::spec::oci::Spec {
    let s = berth_sandbox::spec::pause::SandboxSpec {
        id: id.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        user: (0, 0, vec![]),
        hostname: "berth-test".into(),
        cgroup_parent: format!("/{ns}"),
        readonly_rootfs: true,
        daemon_oom_score_adj: berth_sandbox::spec::own_oom_score_adj(),
        ..Default::default()
    };
    s.build(rootfs.to_str().unwrap()).unwrap()
}

/// A shim environment whose sockets live in `dir`, in namespace `ns`. Each test has its own
/// namespace (so its own runc root) and cgroup parent of that name: one test's clean-up
/// removing them must never pull them from under another test's runc.
fn test_env(dir: &Path, ns: &str) -> ShimEnv {
    ShimEnv {
        namespace: ns.into(),
        grpc_address: dir.join("berth.sock"),
        ttrpc_address: dir.join("berth.sock.ttrpc"),
        publish_binary: "/bin/true".into(),
    }
}

/// Deletes the task and stops its shim, whatever state the test left them in.
struct Cleanup {
    env: ShimEnv,
    id: String,
    bundle: PathBuf,
    shim_pid: Option<u32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // Drop may run inside the test's runtime: clean up from a thread of its own.
        let (env, id, bundle) = (self.env.clone(), self.id.clone(), self.bundle.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let bin = shim::find_shim(SHIM, None).unwrap();
            let _ = rt.block_on(shim::delete_dead(&bin, &env, &id, &bundle));
        })
        .join();
        // runc removes the task's cgroup; the test's parent cgroups and runc root are ours.
        for d in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(d.path().join(&self.env.namespace));
        }
        let _ = std::fs::remove_dir(format!("/run/containerd/runc/{}", self.env.namespace));
        if let Some(pid) = self.shim_pid {
            // SAFETY: kill(2) on the shim this test started.
            unsafe {
                libc_kill(pid as i32, 9);
            }
            // A killed shim leaves its socket: remove it once nothing listens there.
            for _ in 0..100 {
                let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                if st.is_empty() || st.contains(") Z ") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Ok(address) = std::fs::read_to_string(self.bundle.join("address")) {
                shim::remove_dead_socket(address.trim());
            }
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_a_task_under_the_runc_shim_and_hears_its_exit() {
    let bin = match shim::find_shim(SHIM, None) {
        Ok(b) => b,
        Err(e) => panic!("{e}: install Debian's containerd package (scripts/install-deps.sh)"),
    };
    let dir = tempfile::tempdir().unwrap();
    let id = format!("shimtest{}", std::process::id());
    let bundle = dir.path().join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&spec(
            &rootfs,
            &id,
            NS_RUN,
            &["/bin/busybox", "sleep", "600"],
        ))
        .unwrap(),
    )
    .unwrap();

    let env = test_env(dir.path(), NS_RUN);
    let hub = EventHub::default();
    let mut exits = hub.subscribe();
    let _server = events::serve(&env.ttrpc_address, hub.clone())
        .await
        .unwrap();
    let mut cleanup = Cleanup {
        env: env.clone(),
        id: id.clone(),
        bundle: bundle.clone(),
        shim_pid: None,
    };

    let _log = shim::open_log(&bundle, &id).unwrap();
    // Started as a spare is: in the background, then given normal priority before use.
    let address = shim::start(&bin, &env, &id, &bundle, &[], true)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(bundle.join("address")).unwrap(),
        address
    );
    let s = Shim::connect(&address).await.unwrap();
    let (daemon, _) = s.connect_info(&id).await.unwrap();
    cleanup.shim_pid = Some(daemon);
    // As the spare path does: a thread the Go runtime started before `start` reniced the
    // process would still be at 0.
    shim::background(daemon).unwrap();
    assert_eq!(thread_nices(daemon), vec![19], "the shim daemon runs niced");
    shim::foreground(daemon).unwrap();
    let own = rustix::process::getpriority_process(None).unwrap();
    assert_eq!(
        thread_nices(daemon),
        vec![own],
        "every shim thread at berth's priority"
    );
    let pid = s
        .create(&id, &bundle, vec![], ["", "", ""], false, None)
        .await
        .unwrap();
    assert!(pid > 0);
    let (shim_pid, task_pid) = s.connect_info(&id).await.unwrap();
    cleanup.shim_pid = Some(shim_pid);
    assert_eq!(task_pid, pid);
    assert_eq!(s.start(&id).await.unwrap(), pid);
    let st = s.state(&id).await.unwrap();
    assert_eq!(st.status.value(), 2, "RUNNING: {st:?}");
    // The task really runs our command. Start returns once runc has released the init
    // process, which may still be inside execve: /proc/<pid>/cmdline reads empty (or
    // "runc init") for that instant, so wait for the exec to land.
    let mut cmdline = String::new();
    for _ in 0..100 {
        cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.contains("sleep") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cmdline.contains("sleep"), "{cmdline:?}");

    // A second client (as after a berth restart) sees the same task.
    let again = Shim::connect(&std::fs::read_to_string(bundle.join("address")).unwrap())
        .await
        .unwrap();
    assert_eq!(again.state(&id).await.unwrap().pid, pid);

    let waiter = {
        let s = s.clone();
        let id = id.clone();
        tokio::spawn(async move { s.wait(&id).await })
    };
    s.kill(&id, 9, false).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(TaskEvent::Exit {
                container_id,
                exit_status,
                pid: p,
                ..
            }) = exits.recv().await
                && container_id == id
            {
                return (exit_status, p);
            }
        }
    })
    .await
    .expect("a /tasks/exit event from the shim");
    assert_eq!(exit, (137, pid));
    assert_eq!(waiter.await.unwrap().unwrap(), 137);
    assert_eq!(s.delete(&id).await.unwrap(), 137);
    let e = s.state(&id).await.unwrap_err();
    assert_eq!(e.kind(), berth_sandbox::ErrorKind::NotFound, "{e}");
    s.shutdown(&id).await.unwrap();
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        !Path::new(&format!("/proc/{shim_pid}")).exists()
    });
    assert!(gone, "the shim exited after Shutdown");
    cleanup.shim_pid = None;
    // Its socket is gone too: the shim's own removal can lose the race with its exit, and
    // berth's watch (started by Shutdown) removes it then.
    shim::remove_socket_when_closed(s.address.clone(), shim::SOCKET_LINGER).await;
    let socket = s.address.trim_start_matches("unix://").to_string();
    assert!(!Path::new(&socket).exists(), "{socket} is left");
}

/// The distinct niceness values of the threads of `pid`.
fn thread_nices(pid: u32) -> Vec<i32> {
    let mut v: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|tid| {
            rustix::process::getpriority_process(rustix::process::Pid::from_raw(tid)).ok()
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_shim_is_killed_and_its_socket_removed() {
    let bin = shim::find_shim(SHIM, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = format!("berth-unreachable-{}", std::process::id());
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&spec(
            &bundle.join("rootfs"),
            &id,
            NS_UNREACHABLE,
            &["/bin/true"],
        ))
        .unwrap(),
    )
    .unwrap();
    let env = test_env(dir.path(), NS_UNREACHABLE);
    let _log = shim::open_log(&bundle, &id).unwrap();
    let s = shim::start_and_connect(&bin, &env, &id, &bundle, &[], false)
        .await
        .unwrap();
    let (pid, _) = s.connect_info(&id).await.unwrap();
    let mut cleanup = Cleanup {
        env: env.clone(),
        id: id.clone(),
        bundle: bundle.clone(),
        shim_pid: Some(pid),
    };
    drop(s);
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    let socket = PathBuf::from(address.strip_prefix("unix://").unwrap());
    assert!(socket.exists());
    // A live socket is never removed.
    shim::remove_dead_socket(&address);
    assert!(socket.exists(), "a listening shim's socket must stay");

    shim::kill_unreachable(&env, &id, &address).await;
    let gone = (0..200).any(|_| {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if st.is_empty() || st.contains(") Z ") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
        false
    });
    assert!(gone, "shim {pid} still runs");
    assert!(!socket.exists(), "{} left behind", socket.display());
    cleanup.shim_pid = None;
}
