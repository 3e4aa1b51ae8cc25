//! Crash-safety benchmark: how berth comes back from faults, and how containerd 1.6 (Debian's
//! package, private root, state and socket) does in the same run.
//!
//! 1. Restart to serving with 50 pods on the node: SIGKILL, start again, time until the first
//!    ListPodSandbox answers (and, for berth, until its recovery is done), 10 times each.
//! 2. A dead shim: a pod with a running container, its shim SIGKILLed; time until the
//!    container is reported exited (berth).
//! 3. A storm of random faults (`BERTH_FAULTS`, default 200): SIGKILL inside a mutating call
//!    drawn at random, restart, the kubelet's clean-up, and a leak audit after each: records,
//!    leases, veths, namespaces, mounts, shims, runtime state, cgroups, bundles, snapshots.
//!    containerd gets `BERTH_FAULTS / 4` kills inside pod calls, audited for what is visible
//!    from outside it (leases, veths, shims).
//!
//! `cargo build --release -p berth -p berth-e2e && BERTH_E2E_LOG_LEVEL=warn BERTH_BIN=target/release/berth target/release/bench-faults`

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{create, ctr, env_with, start, status};
use berth_e2e::faults::{self, CgroupParent, Rng, Rpc};
use berth_e2e::percentile_ms;

const PODS: usize = 50;
const RESTARTS: usize = 10;
const DEAD_SHIMS: usize = 10;

fn figures(name: &str, v: &[Duration]) {
    if v.is_empty() {
        println!("{name:<44} (none)");
        return;
    }
    let max = v.iter().max().copied().unwrap_or_default();
    println!(
        "{name:<44} median {:>8.1} ms  p90 {:>8.1} ms  max {:>8.1} ms  (n={})",
        percentile_ms(v, 50),
        percentile_ms(v, 90),
        max.as_secs_f64() * 1e3,
        v.len()
    );
}

async fn run_pods(
    rt: &mut berth_cri_api::v1::runtime_service_client::RuntimeServiceClient<
        tonic::transport::Channel,
    >,
    tag: &str,
    n: usize,
) -> anyhow::Result<()> {
    for i in 0..n {
        rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(berth_e2e::pods::pod_config(&format!("{tag}-{i}"))),
            runtime_handler: String::new(),
        })
        .await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = std::env::var("BERTH_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut rng = Rng::from_env("bench-faults");

    // --- berth ---
    let mut env = env_with("").await;
    faults::push_big(&env).await?;
    let mut rt = env.cri.runtime.clone();
    run_pods(&mut rt, "many", PODS).await?;
    let (mut serve, mut recover) = (Vec::new(), Vec::new());
    for _ in 0..RESTARTS {
        env.berth.kill();
        let t0 = Instant::now();
        serve.push(env.berth.spawn_only()?);
        env.berth.wait_recovered()?;
        recover.push(t0.elapsed());
    }
    env.reconnect().await?;
    let mut rt = env.cri.runtime.clone();
    berth_e2e::cleanup::remove_all_pods(&mut rt).await;

    let cgroups = CgroupParent::new(0);
    let mut dead = Vec::new();
    for i in 0..DEAD_SHIMS {
        let pcfg = faults::pod(&format!("dead-{i}"), &cgroups.0);
        let pod = env.run(pcfg.clone()).await?;
        let id = create(&env, &pod, &pcfg, ctr("c", &["sleep", "3600"])).await?;
        start(&env, &id).await;
        let shims = env.berth.shim_pids();
        anyhow::ensure!(shims.len() == 1, "shims: {shims:?}");
        berth_e2e::signal(shims[0], libc::SIGKILL);
        let t0 = Instant::now();
        while status(&env, &id).await.state != cri::ContainerState::ContainerExited as i32 {
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(30), "never noticed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        dead.push(t0.elapsed());
        faults::remove_everything(&env).await;
    }

    let t0 = Instant::now();
    let outcomes = faults::storm(&mut env, &Rpc::ALL, count, &mut rng, &cgroups, false).await?;
    let storm_took = t0.elapsed();
    let mut leaked = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for o in &outcomes {
        // Count a leak once, at the fault that made it (later audits see it again).
        let new: Vec<&String> = o
            .leaks
            .iter()
            .filter(|l| seen.insert((*l).clone()))
            .collect();
        if !new.is_empty() {
            leaked.push(format!("{:?} after {:?}: {new:?}", o.rpc, o.after));
        }
    }
    drop(env);

    // --- containerd 1.6 ---
    let side = berth_e2e::pods::SideBySide::start("berth-bench-faults-").await?;
    let mut containerd = side.containerd;
    let c = containerd.cri().await?;
    c.pull(berth_e2e::pods::PAUSE_IMAGE).await?;
    let mut crt = c.runtime.clone();
    run_pods(&mut crt, "many", PODS).await?;
    let mut c_serve = Vec::new();
    for _ in 0..RESTARTS {
        containerd.kill();
        c_serve.push(containerd.restart().await?);
    }
    let mut crt = containerd.cri().await?.runtime.clone();
    berth_e2e::cleanup::remove_all_pods(&mut crt).await;
    let c_count = count / 4;
    let mut c_fault_serve = Vec::new();
    for i in 0..c_count {
        let rpc = [
            Rpc::RunPodSandbox,
            Rpc::StopPodSandbox,
            Rpc::RemovePodSandbox,
        ][rng.below(3) as usize];
        let mut crt = containerd.cri().await?.runtime.clone();
        let cfg = berth_e2e::pods::pod_config(&format!("cf{i}"));
        let pod = if rpc == Rpc::RunPodSandbox {
            String::new()
        } else {
            crt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id
        };
        let mut call_rt = crt.clone();
        let call = tokio::spawn(async move {
            let _ = match rpc {
                Rpc::RunPodSandbox => call_rt
                    .run_pod_sandbox(cri::RunPodSandboxRequest {
                        config: Some(cfg),
                        runtime_handler: String::new(),
                    })
                    .await
                    .map(|_| ()),
                Rpc::StopPodSandbox => call_rt
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: pod,
                    })
                    .await
                    .map(|_| ()),
                _ => call_rt
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: pod,
                    })
                    .await
                    .map(|_| ()),
            };
        });
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        containerd.kill();
        let _ = call.await;
        c_fault_serve.push(containerd.restart().await?);
        let mut crt = containerd.cri().await?.runtime.clone();
        berth_e2e::cleanup::remove_all_pods(&mut crt).await;
    }
    // What containerd's clean-up left after all of them (visible from outside it).
    let (c_leases, c_veths) = (side.net.leases(), side.net.veths());
    drop(containerd);

    println!("== restart to serving, {PODS} pods on the node ({RESTARTS} SIGKILLs each)");
    figures("berth: first answer", &serve);
    figures("berth: recovery done", &recover);
    figures("containerd 1.6: first answer", &c_serve);
    println!(
        "ratio (median first answer)                  {:.2}x",
        percentile_ms(&serve, 50) / percentile_ms(&c_serve, 50)
    );
    println!("== dead shim noticed ({DEAD_SHIMS} SIGKILLed shims)");
    figures("berth: container reported exited", &dead);
    println!(
        "== fault storm: {} faults in {:.0} s",
        outcomes.len(),
        storm_took.as_secs_f64()
    );
    for rpc in Rpc::ALL {
        let n = outcomes.iter().filter(|o| o.rpc == rpc).count();
        println!("  {rpc:?}: {n}");
    }
    let storm_serve: Vec<Duration> = outcomes.iter().map(|o| o.serve).collect();
    figures("berth: first answer after a fault", &storm_serve);
    println!("berth: faults that left something: {}", leaked.len());
    for l in &leaked {
        println!("  {l}");
    }
    println!("== containerd 1.6: {c_count} kills inside pod calls");
    figures("containerd: first answer after a fault", &c_fault_serve);
    println!(
        "containerd: left after all faults and the clean-up: {} IP leases, {} veths",
        c_leases.len(),
        c_veths.len()
    );
    Ok(())
}
