//! containerd-shim-berth-v1 driven directly over ttrpc by berth's own shim client, with the
//! real crun (runc where crun is missing), as berth drives it: output straight into fifos,
//! execs with and without stdin, exits and OOM kills heard as events, a second client after
//! the first went, and Shutdown. Needs root.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_sandbox::logs::mkfifo;
use berth_sandbox::shim::events::{self, EventHub, TaskEvent};
use berth_sandbox::shim::{self, RuncOptions, Shim, ShimEnv};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-berth-v1");

fn runtime() -> &'static str {
    if Path::new("/usr/bin/crun").exists() {
        "crun"
    } else {
        "runc"
    }
}

/// A bundle in `dir/<id>` running `args` (busybox) in cgroup `/<ns>/<id>`, with `memory`
/// bytes of memory (0: unlimited).
fn bundle(dir: &Path, ns: &str, id: &str, args: &[&str], memory: i64) -> PathBuf {
    let bundle = dir.join(id);
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "sys", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let s = berth_sandbox::spec::pause::SandboxSpec {
        id: id.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        user: (0, 0, vec![]),
        hostname: "shim-test".into(),
        cgroup_parent: format!("/{ns}"),
        readonly_rootfs: true,
        daemon_oom_score_adj: berth_sandbox::spec::own_oom_score_adj(),
        ..Default::default()
    };
    let mut spec = serde_json::to_value(s.build(rootfs.to_str().unwrap()).unwrap()).unwrap();
    if memory > 0 {
        spec["linux"]["resources"]["memory"] = serde_json::json!({"limit": memory, "swap": memory});
    }
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    bundle
}

/// Kills what the test started and removes its cgroups and runtime root, whatever state it
/// left them in.
struct Cleanup {
    ns: String,
    shim_pid: Option<u32>,
    ids: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let root = format!("/run/containerd/{}/{}", runtime(), self.ns);
        for id in &self.ids {
            let _ = std::process::Command::new(runtime())
                .args(["--root", &root, "delete", "--force", id])
                .output();
        }
        if let Some(pid) = self.shim_pid {
            // SAFETY: kill(2) of the shim this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir(&root);
        for d in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(d.path().join(&self.ns));
        }
    }
}

async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<TaskEvent>,
    want: impl Fn(&TaskEvent) -> bool,
) -> TaskEvent {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(e) = rx.recv().await
                && want(&e)
            {
                return e;
            }
        }
    })
    .await
    .expect("the event within 20 s")
}

/// Reads what `path` (a fifo) holds until `want` is in it.
fn read_until(f: &mut std::fs::File, want: &str) -> String {
    let mut got = String::new();
    let mut buf = [0u8; 256];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !got.contains(want) && std::time::Instant::now() < deadline {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    got
}

fn fifo_reader(p: &Path) -> std::fs::File {
    use std::os::unix::fs::OpenOptionsExt;
    mkfifo(p).unwrap();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)
        .unwrap()
}

/// The task API client itself, for the calls berth's client does not make (Stats).
async fn task_client(address: &str) -> containerd_shim_protos::shim_async::TaskClient {
    let c = ttrpc::asynchronous::Client::connect(address.trim())
        .await
        .unwrap();
    containerd_shim_protos::shim_async::TaskClient::new(c)
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_execs_exits_and_oom_kills_under_berths_shim() {
    let ns = format!("berth-shim-test-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let mut cleanup = Cleanup {
        ns: ns.clone(),
        shim_pid: None,
        ids: vec![],
    };
    let env = ShimEnv {
        namespace: ns.clone(),
        grpc_address: dir.path().join("berth.sock"),
        ttrpc_address: dir.path().join("berth.sock.ttrpc"),
        publish_binary: "/bin/true".into(),
    };
    let hub = EventHub::default();
    let mut rx = hub.subscribe();
    let _server = events::serve(&env.ttrpc_address, hub.clone())
        .await
        .unwrap();
    let options = Some(RuncOptions {
        binary_name: Some(runtime().into()),
        ..Default::default()
    });

    // The app: output on both streams, then sleep.
    let app = "app".to_string();
    cleanup.ids.push(app.clone());
    let b = bundle(
        dir.path(),
        &ns,
        &app,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo out; echo err >&2; exec sleep 600",
        ],
        0,
    );
    let _log = shim::open_log(&b, &app).unwrap();
    let s = shim::start_and_connect(Path::new(SHIM), &env, &app, &b, &[], false)
        .await
        .unwrap();
    let (shim_pid, _) = s.connect_info(&app).await.unwrap();
    cleanup.shim_pid = Some(shim_pid);
    let (out, err) = (b.join("stdout"), b.join("stderr"));
    let (mut out_r, mut err_r) = (fifo_reader(&out), fifo_reader(&err));
    let pid = s
        .create(
            &app,
            &b,
            vec![],
            ["", out.to_str().unwrap(), err.to_str().unwrap()],
            false,
            options.clone(),
        )
        .await
        .unwrap();
    assert_eq!(s.start(&app).await.unwrap(), pid);
    assert!(read_until(&mut out_r, "out").contains("out"));
    assert!(read_until(&mut err_r, "err").contains("err"));
    let st = s.state(&app).await.unwrap();
    assert_eq!((st.status.value(), st.pid), (2, pid), "RUNNING: {st:?}");
    // Nothing copies: the shim holds none of the container's output fifos.
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{shim_pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        !fds.iter()
            .any(|f| f.ends_with("/stdout") || f.ends_with("/stderr")),
        "{fds:?}"
    );

    // Stats: the cgroup's metrics as containerd reports them.
    let any = task_client(&std::fs::read_to_string(b.join("address")).unwrap())
        .await
        .stats(
            ttrpc::context::with_timeout(5_000_000_000),
            &containerd_shim_protos::api::StatsRequest {
                id: app.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .stats
        .unwrap();
    use containerd_shim_protos::protobuf::Message;
    if any.type_url == "io.containerd.cgroups.v1.Metrics" {
        let m = containerd_shim_protos::cgroups::metrics::Metrics::parse_from_bytes(&any.value)
            .unwrap();
        assert!(m.memory.usage.usage > 0, "{m:?}");
        assert!(m.pids.current >= 1, "{m:?}");
        assert!(m.cpu.usage.total > 0, "{m:?}");
    } else {
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = containerd_shim_protos::cgroups_v2::metrics::Metrics::parse_from_bytes(&any.value)
            .unwrap();
        assert!(m.memory.usage > 0 && m.pids.current >= 1, "{m:?}");
    }

    // An exec's output, and its exit status through Wait.
    let e1 = b.join("exec1-out");
    let mut e1_r = fifo_reader(&e1);
    let process = |args: &[&str]| -> berth_sandbox::spec::oci::Process {
        serde_json::from_value(serde_json::json!({"args": args, "env": ["PATH=/bin"],
                                                  "cwd": "/", "user": {"uid": 0, "gid": 0}}))
        .unwrap()
    };
    s.exec(
        &app,
        "exec1",
        &process(&["/bin/busybox", "sh", "-c", "echo hi; exit 3"]),
        ["", e1.to_str().unwrap(), ""],
        false,
    )
    .await
    .unwrap();
    s.start_process(&app, "exec1").await.unwrap();
    assert_eq!(s.wait_process(&app, "exec1").await.unwrap(), 3);
    assert!(read_until(&mut e1_r, "hi").contains("hi"));
    s.delete_process(&app, "exec1").await.unwrap();

    // stdin: end-of-file only once the caller closed its writer and CloseIO came.
    let (e2_in, e2_out) = (b.join("exec2-in"), b.join("exec2-out"));
    let mut e2_r = fifo_reader(&e2_out);
    mkfifo(&e2_in).unwrap();
    let mut writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&e2_in)
        .unwrap();
    s.exec(
        &app,
        "exec2",
        &process(&["/bin/busybox", "cat"]),
        [e2_in.to_str().unwrap(), e2_out.to_str().unwrap(), ""],
        false,
    )
    .await
    .unwrap();
    s.start_process(&app, "exec2").await.unwrap();
    writer.write_all(b"ping\n").unwrap();
    assert!(read_until(&mut e2_r, "ping").contains("ping"));
    drop(writer);
    // The caller's writer is closed, the shim's is not: cat still reads.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), s.wait_process(&app, "exec2"))
            .await
            .is_err(),
        "stdin ended before CloseIO"
    );
    s.close_stdin(&app, "exec2").await.unwrap();
    assert_eq!(s.wait_process(&app, "exec2").await.unwrap(), 0);

    // A second client, as after a berth restart, sees the same task.
    let again = Shim::connect(&std::fs::read_to_string(b.join("address")).unwrap())
        .await
        .unwrap();
    assert_eq!(again.state(&app).await.unwrap().pid, pid);

    // Kill: the exit is published and Wait returns it.
    s.kill(&app, 9, false).await.unwrap();
    let exit = next_event(&mut rx, |e| {
        matches!(e, TaskEvent::Exit { container_id, id, .. } if *container_id == app && *id == app)
    })
    .await;
    assert!(
        matches!(exit, TaskEvent::Exit { exit_status: 137, pid: p, .. } if p == pid),
        "{exit:?}"
    );
    assert_eq!(s.wait(&app).await.unwrap(), 137);
    let e = s.kill(&app, 9, false).await.unwrap_err();
    assert!(e.to_string().contains("already finished"), "{e}");
    s.delete(&app).await.unwrap();
    assert!(
        s.state(&app)
            .await
            .unwrap_err()
            .to_string()
            .contains("not found")
    );

    // A memory hog in 16 MiB: the OOM event comes from the shim, then the exit.
    let hog = "hog".to_string();
    cleanup.ids.push(hog.clone());
    let hb = bundle(
        dir.path(),
        &ns,
        &hog,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "x=aaaaaaaa; while true; do x=$x$x; done",
        ],
        16 << 20,
    );
    s.create(&hog, &hb, vec![], ["", "", ""], false, options.clone())
        .await
        .unwrap();
    s.start(&hog).await.unwrap();
    let oom = next_event(
        &mut rx,
        |e| matches!(e, TaskEvent::Oom { container_id } if *container_id == hog),
    )
    .await;
    assert!(matches!(oom, TaskEvent::Oom { .. }));
    assert_eq!(s.wait(&hog).await.unwrap(), 137);
    s.delete(&hog).await.unwrap();

    // Shutdown with no task left: the shim exits and its socket goes.
    let address = std::fs::read_to_string(b.join("address")).unwrap();
    s.shutdown(&app).await.unwrap();
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        !Path::new(&format!("/proc/{shim_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{shim_pid}/stat"))
                .unwrap_or_default()
                .contains(") Z ")
    });
    assert!(gone, "the shim exited");
    assert!(!Path::new(address.trim().trim_start_matches("unix://")).exists());
    cleanup.shim_pid = None;
}
