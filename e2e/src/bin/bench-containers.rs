//! Container benchmark: in one pod per daemon, 20 rounds of CreateContainer + StartContainer
//! (timed), then StopContainer + RemoveContainer (timed), through berth (three pods: under
//! containerd's runc shim with runc, under berth's own shim with crun, and with runc) and
//! through containerd 1.6 (Debian's package, own root/state/socket), alternating; and the
//! floors: `crun create` + `crun start` and `runc create` +
//! `runc start` of the same busybox rootfs from a plain directory, with no daemon at all,
//! then with berth's spec, on a fresh overlay, and through Debian's `containerd-shim-runc-v2`
//! driven directly (the floor of any runtime built on that shim, berth and containerd alike).
//! Every state directory (berth's, containerd's, runc's root) is on a tmpfs, as under `/run`
//! on a node; `BERTH_BENCH_STATE=disk` keeps them on the scratch disk instead.
//!
//! `cargo build --release -p berth -p berth-e2e && BERTH_BIN=target/release/berth target/release/bench-containers`

#![allow(clippy::print_stdout)]

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_cri_api::v1 as cri;
use berth_e2e::pods::{PAUSE_IMAGE, SideBySide, pod_config};
use berth_e2e::{Cri, ImageBuilder, Layer, percentile_ms};

/// Rounds per daemon; `BERTH_BENCH_ROUNDS` overrides (more rounds, steadier medians).
fn rounds() -> usize {
    std::env::var("BERTH_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20)
}
const APP: &str = "pause.invalid/berth-e2e/app:1";

struct Daemon {
    cri: Cri,
    pod: String,
    pod_cfg: cri::PodSandboxConfig,
}

impl Daemon {
    async fn new(cri: Cri, tag: &str, handler: &str) -> anyhow::Result<Self> {
        cri.pull(PAUSE_IMAGE).await?;
        cri.pull(APP).await?;
        let pod_cfg = pod_config(&format!("bench-{tag}"));
        let pod = cri
            .runtime
            .clone()
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod_cfg.clone()),
                runtime_handler: handler.into(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        Ok(Daemon { cri, pod, pod_cfg })
    }

    /// The OCI spec berth writes for the benchmark's container: created (not started) as
    /// `round` creates it, read from its bundle under `state`, removed.
    async fn berth_spec(&self, state: &std::path::Path) -> anyhow::Result<serde_json::Value> {
        let mut rt = self.cri.runtime.clone();
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: self.pod.clone(),
                config: Some(Self::config("spec")),
                sandbox_config: Some(self.pod_cfg.clone()),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        let path = state
            .join("containers")
            .join(&id)
            .join("bundle/config.json");
        let spec = serde_json::from_slice(&std::fs::read(&path).context("read berth's spec")?)?;
        rt.remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .context("RemoveContainer")?;
        Ok(spec)
    }

    fn config(name: &str) -> cri::ContainerConfig {
        berth_e2e::apps::ctr_of(APP, name, &["sleep", "3600"])
    }

    /// (create + start, stop + remove)
    async fn round(&self, i: usize) -> anyhow::Result<(Duration, Duration)> {
        let mut rt = self.cri.runtime.clone();
        let cfg = Self::config(&format!("c{i}"));
        let t = Instant::now();
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: self.pod.clone(),
                config: Some(cfg),
                sandbox_config: Some(self.pod_cfg.clone()),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .context("StartContainer")?;
        let up = t.elapsed();
        let t = Instant::now();
        rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .context("StopContainer")?;
        rt.remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
            .context("RemoveContainer")?;
        Ok((up, t.elapsed()))
    }

    async fn close(self) -> anyhow::Result<()> {
        let mut rt = self.cri.runtime.clone();
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: self.pod.clone(),
        })
        .await?;
        rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: self.pod,
        })
        .await?;
        Ok(())
    }
}

/// runc create + start of `bundle` (timed), then kill and delete (not timed).
fn runc_round(
    root: &std::path::Path,
    bundle: &std::path::Path,
    id: &str,
) -> anyhow::Result<Duration> {
    oci_round("runc", root, bundle, id)
}

/// `<binary> create` + `<binary> start` of `bundle` (timed), then kill and delete (not timed).
fn oci_round(
    binary: &str,
    root: &std::path::Path,
    bundle: &std::path::Path,
    id: &str,
) -> anyhow::Result<Duration> {
    // The container inherits runc's stdio: pipes would never reach end-of-file while it
    // runs, so its output goes to /dev/null and runc's errors to a file.
    let errs = root.with_extension("stderr");
    let run = |args: &[&str]| -> anyhow::Result<()> {
        std::fs::create_dir_all(root)?;
        let status = Command::new(binary)
            .arg("--root")
            .arg(root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&errs)?)
            .status()?;
        if !status.success() {
            bail!(
                "{binary} {args:?}: {}",
                std::fs::read_to_string(&errs).unwrap_or_default()
            );
        }
        Ok(())
    };
    let t = Instant::now();
    run(&[
        "create",
        "--bundle",
        bundle.to_str().unwrap_or_default(),
        id,
    ])?;
    run(&["start", id])?;
    let took = t.elapsed();
    run(&["kill", id, "KILL"])?;
    for _ in 0..100 {
        if run(&["delete", id]).is_ok() {
            return Ok(took);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    run(&["delete", "--force", id])?;
    Ok(took)
}

/// A bundle: the busybox layer unpacked into `rootfs`, and `spec` with its root there and
/// its cgroup under `/berth-bench-runc/<cgroup>`.
fn runc_bundle_with(
    dir: &std::path::Path,
    layer: &Layer,
    spec: serde_json::Value,
    cgroup: &str,
) -> anyhow::Result<()> {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    tar::Archive::new(layer.tar().as_slice()).unpack(&rootfs)?;
    for d in ["proc", "dev", "sys"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    write_spec(dir, spec, cgroup)
}

/// Writes `spec` as `dir`'s `config.json`, its root `rootfs` and its cgroup
/// `/berth-bench-runc/<cgroup>`.
fn write_spec(
    dir: &std::path::Path,
    mut spec: serde_json::Value,
    cgroup: &str,
) -> anyhow::Result<()> {
    spec["root"]["path"] = "rootfs".into();
    spec["linux"]["cgroupsPath"] = format!("/berth-bench-runc/{cgroup}").into();
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec)?)?;
    Ok(())
}

/// A fresh bundle directory for an overlay rootfs: `dir` emptied, with `rootfs`, `upper`,
/// `work` and `spec` written (see [`write_spec`]). Returns (rootfs, upper, work).
fn overlay_bundle(
    dir: &std::path::Path,
    spec: &serde_json::Value,
    cgroup: &str,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let _ = std::fs::remove_dir_all(dir);
    let (rootfs, upper, work) = (dir.join("rootfs"), dir.join("upper"), dir.join("work"));
    for d in [&rootfs, &upper, &work] {
        std::fs::create_dir_all(d)?;
    }
    write_spec(dir, spec.clone(), cgroup)?;
    Ok((rootfs, upper, work))
}

/// runc create + start of `spec` (timed) on a fresh overlay whose only lower layer is
/// `lower`, as a shim mounts a container's rootfs: the image's directories and files that
/// runc must create (mount points, /etc/hostname…) are created in a new upper layer each
/// round instead of once. The mount and its removal are not timed.
fn runc_overlay_round(
    root: &std::path::Path,
    lower: &std::path::Path,
    spec: &serde_json::Value,
    dir: &std::path::Path,
    id: &str,
) -> anyhow::Result<Duration> {
    let (rootfs, upper, work) = overlay_bundle(dir, spec, "o")?;
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&rootfs)
        .status()?;
    if !status.success() {
        bail!("mount overlay on {}", rootfs.display());
    }
    let took = runc_round(root, dir, id);
    let _ = Command::new("umount").arg(&rootfs).status();
    std::fs::remove_dir_all(dir)?;
    took
}

/// The shim floor: Debian's `containerd-shim-runc-v2`, started and driven over ttrpc with
/// berth's own client and event server but no daemon, holding a placeholder task as a pod's
/// shim holds the pause container. Each round asks it what berth's CreateContainer and
/// StartContainer ask: a task from berth's spec, its rootfs a fresh overlay the shim mounts,
/// stdout and stderr to fifos berth-style readers hold open.
struct ShimFloor {
    shim: berth_sandbox::shim::Shim,
    dir: std::path::PathBuf,
    id: String,
    daemon: u32,
    _events: ttrpc::asynchronous::Server,
    _log: berth_sandbox::shim::ShimLog,
}

const SHIM_NS: &str = "berth-bench";

impl ShimFloor {
    /// Starts the shim for a placeholder task in `placeholder` (a bundle) and starts it.
    async fn start(dir: &std::path::Path, placeholder: &std::path::Path) -> anyhow::Result<Self> {
        use berth_sandbox::shim;
        std::fs::create_dir_all(dir)?;
        let env = shim::ShimEnv {
            namespace: SHIM_NS.into(),
            grpc_address: dir.join("floor.sock"),
            ttrpc_address: dir.join("floor.sock.ttrpc"),
            publish_binary: "/bin/true".into(),
        };
        let events =
            shim::events::serve(&env.ttrpc_address, shim::events::EventHub::default()).await?;
        let bin = shim::find_shim("containerd-shim-runc-v2", None)?;
        let id = format!("floor{}", std::process::id());
        let log = shim::open_log(placeholder, &id)?;
        // A shim that started but cannot be reached is killed by start_and_connect.
        let s = shim::start_and_connect(&bin, &env, &id, placeholder, &[], false).await?;
        let (daemon, _) = s.connect_info(&id).await.unwrap_or((0, 0));
        let floor = ShimFloor {
            shim: s,
            dir: dir.to_path_buf(),
            id: id.clone(),
            daemon,
            _events: events,
            _log: log,
        };
        floor
            .shim
            .create(&id, placeholder, vec![], ["", "", ""], false, None)
            .await?;
        floor.shim.start(&id).await?;
        Ok(floor)
    }

    /// Create + start of a task from `spec` on a fresh overlay over `lower` (an overlay
    /// `lowerdir` list) (timed), then kill, wait and delete (not timed).
    async fn round(
        &self,
        lower: &str,
        spec: &serde_json::Value,
        i: usize,
    ) -> anyhow::Result<Duration> {
        use berth_sandbox::logs::{mkfifo, open_fifo_reader};
        let id = format!("{}-{i}", self.id);
        let bundle = self.dir.join(&id);
        let (_, upper, work) = overlay_bundle(&bundle, spec, "f")?;
        let (out, err) = (bundle.join("stdout"), bundle.join("stderr"));
        mkfifo(&out)?;
        mkfifo(&err)?;
        let _readers = (open_fifo_reader(&out)?, open_fifo_reader(&err)?);
        let rootfs = berth_sandbox::shim::rootfs_mounts(vec![berth_image::snapshot::MountSpec {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", lower),
                format!("upperdir={}", upper.display()),
                format!("workdir={}", work.display()),
            ],
        }]);
        let stdio = [
            String::new(),
            out.display().to_string(),
            err.display().to_string(),
        ];
        let t = Instant::now();
        self.shim
            .create(
                &id,
                &bundle,
                rootfs,
                [&stdio[0], &stdio[1], &stdio[2]],
                false,
                None,
            )
            .await?;
        self.shim.start(&id).await?;
        let took = t.elapsed();
        self.shim.kill(&id, 9, false).await?;
        self.shim.wait(&id).await?;
        self.shim.delete(&id).await?;
        std::fs::remove_dir_all(&bundle)?;
        Ok(took)
    }

    async fn close(&self) -> anyhow::Result<()> {
        self.shim.kill(&self.id, 9, false).await?;
        self.shim.wait(&self.id).await?;
        self.shim.delete(&self.id).await?;
        self.shim.shutdown(&self.id).await?;
        Ok(())
    }
}

impl Drop for ShimFloor {
    /// After a failure: the tasks go with runc, the shim with SIGKILL, the mounts with the
    /// scratch directory's.
    fn drop(&mut self) {
        let root = format!("/run/containerd/runc/{SHIM_NS}");
        let ids = Command::new("runc")
            .args(["--root", &root, "list", "-q"])
            .output();
        for id in ids
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            let _ = Command::new("runc")
                .args(["--root", &root, "delete", "--force", id])
                .status();
        }
        if self.daemon > 0 && std::path::Path::new(&format!("/proc/{}", self.daemon)).exists() {
            berth_e2e::signal(self.daemon, libc::SIGKILL);
        }
        berth_sandbox::shim::remove_dead_socket(&self.shim.address);
        berth_e2e::unmount_under(&self.dir);
        let _ = std::fs::remove_dir(&root);
    }
}

/// A bundle: the busybox layer unpacked into `rootfs`, a minimal spec running `sleep 3600`.
fn runc_bundle(dir: &std::path::Path, layer: &Layer) -> anyhow::Result<()> {
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["sleep", "3600"],
                    "env": ["PATH=/bin"], "cwd": "/",
                    "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]},
                    "noNewPrivileges": true},
        "root": {"path": "rootfs", "readonly": false},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]}
    });
    runc_bundle_with(dir, layer, spec, "c")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let side = SideBySide::start_with_containerd2("berth-bench-containers-").await?;
    let busybox = Layer::busybox()?;
    ImageBuilder::new(vec![Layer::busybox()?])
        .push(&side.registry, "berth-e2e/app", Some("1"))
        .await?;
    let (berth, containerd, work) = (&side.berth, &side.containerd, &side.work);
    // berth three ways: containerd's runc shim with runc, its own shim with crun, its own
    // shim with runc.
    let b = Daemon::new(berth.cri().await?, "b", "runc").await?;
    let bc = Daemon::new(berth.cri().await?, "bc", "crun").await?;
    let br = Daemon::new(berth.cri().await?, "br", "berth-runc").await?;
    let c = Daemon::new(containerd.cri().await?, "c", "").await?;
    let c2 = match &side.containerd2 {
        Some(d) => Some(Daemon::new(d.cri().await?, "d", "").await?),
        None => None,
    };
    let bundle = work.path().join("bundle");
    runc_bundle(&bundle, &busybox)?;
    let runc_root = work.path().join("runc");
    // runc's own state where the daemons' is (`/run/runc` on a node).
    let _runc_root = if berth_e2e::bench_state_on_tmpfs() {
        Some(berth_e2e::Tmpfs::mount(&runc_root)?)
    } else {
        None
    };
    // The same runc, given the very spec berth writes (the pod's namespaces, /sys/fs/cgroup,
    // the pod's hosts and resolv.conf, masked paths…): what is left is the daemon's own cost.
    let same = work.path().join("bundle-berth-spec");
    let spec = b.berth_spec(&berth.state).await?;
    runc_bundle_with(&same, &busybox, spec.clone(), "s")?;
    // The image's layer as berth's snapshot holds it: nothing added.
    let lower = work.path().join("layer");
    std::fs::create_dir_all(&lower)?;
    tar::Archive::new(busybox.tar().as_slice()).unpack(&lower)?;
    let over = work.path().join("bundle-overlay");
    // The shim floor's placeholder task: the minimal bundle's spec in its own cgroup.
    let placeholder = work.path().join("shim-floor-placeholder");
    runc_bundle_with(
        &placeholder,
        &busybox,
        serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?,
        "p",
    )?;
    let floor = ShimFloor::start(&work.path().join("shim-floor"), &placeholder).await?;

    let crun_root = work.path().join("crun");
    let _crun_root = if berth_e2e::bench_state_on_tmpfs() {
        Some(berth_e2e::Tmpfs::mount(&crun_root)?)
    } else {
        None
    };
    // Warm-up, then alternate.
    b.round(1000).await?;
    bc.round(1000).await?;
    br.round(1000).await?;
    oci_round("crun", &crun_root, &bundle, "warm")?;
    c.round(1000).await?;
    if let Some(c2) = &c2 {
        c2.round(1000).await?;
    }
    runc_round(&runc_root, &bundle, "warm")?;
    runc_round(&runc_root, &same, "warm-s")?;
    runc_overlay_round(&runc_root, &lower, &spec, &over, "warm-o")?;
    // The shim floor's rootfs is layered as berth layers a container's: the image's layer
    // under the mount-point layer berth makes for it (the mount points busybox lacks), so
    // that runc creates nothing in the upper layer there either.
    let points = work.path().join("mount-points");
    for d in ["proc", "dev", "sys", "etc"] {
        std::fs::create_dir_all(points.join(d))?;
    }
    for f in ["hosts", "hostname", "resolv.conf"] {
        std::fs::write(points.join("etc").join(f), "")?;
    }
    let layered = format!("{}:{}", points.display(), lower.display());
    floor.round(&layered, &spec, 1000).await?;
    let (mut bu, mut bd, mut cu, mut cd, mut ru) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut rs, mut ro, mut rf) = (vec![], vec![], vec![]);
    let (mut du, mut dd) = (vec![], vec![]);
    let (mut bcu, mut bcd, mut bru, mut brd, mut cru) = (vec![], vec![], vec![], vec![], vec![]);
    // Each round runs the rows in a rotated order, so that every row follows every other
    // row's teardown equally often: what one leaves running (unmounts, RCU callbacks, a
    // daemon's own clean-up) must not weigh on the same row every time. The last row is
    // containerd 2.x, when installed.
    let rows = if c2.is_some() { 10 } else { 9 };
    for i in 0..rounds() {
        for k in 0..rows {
            match (i + k) % rows {
                0 => {
                    let (u, d) = b.round(i).await?;
                    bu.push(u);
                    bd.push(d);
                }
                1 => {
                    let (u, d) = c.round(i).await?;
                    cu.push(u);
                    cd.push(d);
                }
                2 => ru.push(runc_round(&runc_root, &bundle, &format!("r{i}"))?),
                3 => rs.push(runc_round(&runc_root, &same, &format!("s{i}"))?),
                4 => ro.push(runc_overlay_round(
                    &runc_root,
                    &lower,
                    &spec,
                    &over,
                    &format!("o{i}"),
                )?),
                5 => rf.push(floor.round(&layered, &spec, i).await?),
                6 => {
                    let (u, d) = bc.round(i).await?;
                    bcu.push(u);
                    bcd.push(d);
                }
                7 => {
                    let (u, d) = br.round(i).await?;
                    bru.push(u);
                    brd.push(d);
                }
                8 => cru.push(oci_round("crun", &crun_root, &bundle, &format!("c{i}"))?),
                _ => {
                    if let Some(c2) = &c2 {
                        let (u, d) = c2.round(i).await?;
                        du.push(u);
                        dd.push(d);
                    }
                }
            }
        }
    }
    floor.close().await?;
    b.close().await?;
    bc.close().await?;
    br.close().await?;
    c.close().await?;
    if let Some(c2) = c2 {
        c2.close().await?;
    }
    // runc removed each container's cgroup; the parent it made is ours to remove, in every
    // hierarchy (v1) or the unified one (v2).
    for h in std::fs::read_dir("/sys/fs/cgroup")?.flatten() {
        let _ = std::fs::remove_dir(h.path().join("berth-bench-runc"));
    }
    let _ = std::fs::remove_dir("/sys/fs/cgroup/berth-bench-runc");

    println!(
        "{} rounds each, interleaved in rotating order; one pod per daemon; busybox `sleep 3600`; state on {}",
        rounds(),
        if berth_e2e::bench_state_on_tmpfs() {
            "tmpfs"
        } else {
            "disk"
        }
    );
    let mut table = vec![
        ("berth, runc shim", &bu, Some(&bd)),
        ("berth, own+crun", &bcu, Some(&bcd)),
        ("berth, own+runc", &bru, Some(&brd)),
        ("containerd 1.6", &cu, Some(&cd)),
        ("runc alone", &ru, None),
        ("crun alone", &cru, None),
        ("runc, berth's spec", &rs, None),
        ("  + fresh overlay", &ro, None),
        ("  + runc shim", &rf, None),
    ];
    if !du.is_empty() {
        table.insert(4, ("containerd 2.4", &du, Some(&dd)));
    }
    for (name, up, down) in table {
        print!(
            "{name:<18} create+start median {:>6.1} ms  p90 {:>6.1} ms",
            percentile_ms(up, 50),
            percentile_ms(up, 90)
        );
        match down {
            Some(d) => println!(" | stop+remove median {:>6.1} ms", percentile_ms(d, 50)),
            None => println!(),
        }
    }
    let m = |v: &Vec<Duration>| percentile_ms(v, 50);
    println!(
        "ratio create+start: berth own shim+crun / crun alone {:.2}x (goal <= 1.5x); berth own shim+runc / runc alone {:.2}x (goal <= 1.0x); berth runc shim / runc alone {:.2}x",
        m(&bcu) / m(&cru),
        m(&bru) / m(&ru),
        m(&bu) / m(&ru)
    );
    println!(
        "ratio create+start vs containerd 1.6: own+crun {:.2}x, own+runc {:.2}x, runc shim {:.2}x; stop+remove own+crun {:.2}x, runc shim {:.2}x",
        m(&bcu) / m(&cu),
        m(&bru) / m(&cu),
        m(&bu) / m(&cu),
        m(&bcd) / m(&cd),
        m(&bd) / m(&cd)
    );
    if !du.is_empty() {
        println!(
            "ratio create+start vs containerd 2.4: own+crun {:.2}x, runc shim {:.2}x; stop+remove own+crun {:.2}x",
            m(&bcu) / m(&du),
            m(&bu) / m(&du),
            m(&bcd) / m(&dd)
        );
    }
    for (floor, v) in [
        ("runc with berth's spec", &rs),
        ("that on a fresh overlay", &ro),
        ("the runc shim driven directly", &rf),
    ] {
        println!(
            "{floor} / runc alone {:.2}x; berth (runc shim) / that {:.2}x",
            percentile_ms(v, 50) / percentile_ms(&ru, 50),
            percentile_ms(&bu, 50) / percentile_ms(v, 50)
        );
    }
    Ok(())
}
