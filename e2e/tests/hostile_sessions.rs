//! Hostile clients of the streaming server and of the pod calls, second round: a port-forward
//! client that opens streams without end, an exec client that opens more streams than its
//! session takes and then hangs up, execs whose berth died, an exec whose shim dies under it,
//! too many sessions from one client, and a pod stopped and removed by twenty callers at
//! once. Nothing may grow berth without bound, outlive its client, or answer differently
//! depending on who won a race.

use std::time::Duration;

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{create, ctr, env_with, exec_url, port_forward_url, start};
use berth_e2e::pods::pod_config;
use berth_e2e::{PodEnv, processes, wait_until};
use berth_stream::StdioOptions;
use berth_stream::client::{self, RemoteCommand};
use tonic::Code;

const IN_OUT: StdioOptions = StdioOptions {
    stdin: true,
    stdout: true,
    stderr: false,
    tty: false,
};

/// A pod with one running container (`sleep 3600`): (pod, container).
async fn running(env: &PodEnv, name: &str) -> (String, String) {
    let pcfg = pod_config(name);
    let pod = env.run(pcfg.clone()).await.unwrap();
    let id = create(env, &pod, &pcfg, ctr("c", &["sleep", "3600"]))
        .await
        .unwrap();
    start(env, &id).await;
    (pod, id)
}

async fn teardown(env: &PodEnv, pod: &str) {
    env.stop(pod).await.unwrap();
    env.remove(pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn one_port_forward_client_cannot_grow_berth_without_bound() {
    let env = env_with("").await;
    let (pod, _) = running(&env, "pf-flood").await;
    let url = port_forward_url(&env, &pod, &[]).await.unwrap();
    let (session, _) = client::spdy_connect(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    let before = env.berth.reset_peak_rss();
    // Issue 24: 100,000 error streams, each of its own request, never paired with data.
    let mut refused = 0usize;
    for batch in 0..500u32 {
        let opens = (0..200u32).map(|i| {
            let session = session.clone();
            async move {
                let h = vec![
                    ("streamtype".to_string(), "error".to_string()),
                    ("port".to_string(), "80".to_string()),
                    ("requestid".to_string(), (batch * 200 + i).to_string()),
                ];
                session.open(h, Duration::from_secs(10)).await
            }
        });
        for r in futures::future::join_all(opens).await {
            match r {
                Ok(s) => drop(s),
                Err(e) => {
                    assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
                    refused += 1;
                }
            }
        }
    }
    env.berth
        .assert_rss_bounded(before, "100,000 port-forward streams");
    assert!(refused > 90_000, "{refused} of 100,000 refused");
    session.close().await;
    // The next client is served.
    let url = port_forward_url(&env, &pod, &[]).await.unwrap();
    assert!(
        client::spdy_connect(&url, &["portforward.k8s.io"])
            .await
            .is_ok()
    );
    teardown(&env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_whose_client_opens_too_many_streams_dies_when_the_client_hangs_up() {
    let env = env_with("").await;
    let (pod, id) = running(&env, "exec-flood").await;
    let argv = ["sleep", "3601"];
    let url = exec_url(&env, &id, &argv, IN_OUT).await.unwrap();
    let (session, _) = client::spdy_connect(&url, &["v4.channel.k8s.io"])
        .await
        .unwrap();
    let before = env.berth.reset_peak_rss();
    let mut kept = Vec::new();
    for kind in ["error", "stdin", "stdout"] {
        kept.push(
            session
                .open(
                    vec![("streamtype".into(), kind.into())],
                    Duration::from_secs(5),
                )
                .await
                .unwrap(),
        );
    }
    assert!(wait_until(Duration::from_secs(10), || !processes(&argv).is_empty()));
    // More streams than the session takes: issue 24 wedged the session's reader here, so
    // that the hang-up below went unseen and the process ran on.
    for _ in 0..40 {
        let _ = session
            .open(
                vec![("streamtype".into(), "junk".into())],
                Duration::from_secs(1),
            )
            .await;
    }
    session.close().await;
    drop(kept);
    assert!(
        wait_until(Duration::from_secs(10), || processes(&argv).is_empty()),
        "the exec'd process outlived its client\n{}",
        env.berth.log()
    );
    env.berth.assert_rss_bounded(before, "an exec stream flood");
    teardown(&env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn execs_whose_berth_died_are_killed_when_berth_comes_back() {
    let mut env = env_with("").await;
    let (pod, id) = running(&env, "exec-restart").await;
    let argv = ["sleep", "3602"];
    let url = exec_url(&env, &id, &argv, IN_OUT).await.unwrap();
    let session = RemoteCommand::spdy(&url, IN_OUT).await.unwrap();
    assert!(wait_until(Duration::from_secs(10), || !processes(&argv).is_empty()));
    // Its client was a connection of the berth that dies here.
    env.berth.kill();
    drop(session);
    env.berth.restart().unwrap();
    env.reconnect().await.unwrap();
    env.berth.wait_recovered().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || processes(&argv).is_empty()),
        "an exec of the dead berth still runs\n{}",
        env.berth.log()
    );
    // Nothing of it is left in the container's directory.
    let left: Vec<_> = std::fs::read_dir(env.berth.state.join("containers").join(&id).join("exec"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    teardown(&env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exec_sync_whose_shim_dies_says_so() {
    let env = env_with("").await;
    let (pod, id) = running(&env, "exec-shim").await;
    let shims = env.berth.shim_pids();
    assert!(!shims.is_empty());
    let call = {
        let mut rt = env.cri.runtime.clone();
        let id = id.clone();
        tokio::spawn(async move {
            rt.exec_sync(cri::ExecSyncRequest {
                container_id: id,
                cmd: vec!["sleep".into(), "30".into()],
                timeout: 60,
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    for p in shims {
        berth_e2e::signal(p, libc::SIGKILL);
    }
    let e = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .expect("ExecSync did not answer")
        .unwrap()
        .unwrap_err();
    // Issue 24: UNKNOWN "socket err: early eof".
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("shim died"), "{e:?}");
    teardown(&env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_past_its_share_of_sessions_is_refused_and_the_others_go_on() {
    let env = env_with("[stream]\nmax_sessions_per_client = 2\n").await;
    let (pod, id) = running(&env, "sessions").await;
    let argv = ["sleep", "3603"];
    let mut open = Vec::new();
    for _ in 0..2 {
        let url = exec_url(&env, &id, &argv, IN_OUT).await.unwrap();
        open.push(RemoteCommand::spdy(&url, IN_OUT).await.unwrap());
    }
    let url = exec_url(&env, &id, &argv, IN_OUT).await.unwrap();
    let e = RemoteCommand::spdy(&url, IN_OUT).await.unwrap_err();
    assert!(e.to_string().contains("429"), "{e}");
    assert!(e.to_string().contains("max_sessions_per_client"), "{e}");
    // One ends: a new one is served.
    for s in open.drain(..1) {
        s.kill().await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let url = exec_url(&env, &id, &["true"], IN_OUT).await.unwrap();
        match RemoteCommand::spdy(&url, IN_OUT).await {
            Ok(_) => break,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(open);
    teardown(&env, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_callers_stopping_and_removing_one_pod_are_all_told_it_went() {
    let env = env_with("").await;
    let (pod, _) = running(&env, "race-remove").await;
    let calls = (0..20).map(|i| {
        let mut rt = env.cri.runtime.clone();
        let pod = pod.clone();
        async move {
            if i % 2 == 0 {
                rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: pod.clone(),
                })
                .await
                .map(|_| ())?;
            }
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await
            .map(|_| ())
        }
    });
    let answers = futures::future::join_all(calls).await;
    let codes: Vec<Code> = answers
        .iter()
        .map(|r| r.as_ref().map_or_else(|e| e.code(), |_| Code::Ok))
        .collect();
    // Issue 24: one OK and nineteen NOT_FOUND, where a later call on the gone pod is OK.
    assert!(codes.iter().all(|c| *c == Code::Ok), "{codes:?}");
    env.assert_clean();
}
