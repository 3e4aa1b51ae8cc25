//! Exec, Attach and PortForward end to end: the CRI call hands out a URL, and berth's own
//! client (`berth_stream::client`) connects to it over SPDY/3.1 or WebSocket the way
//! client-go does, against real containers under Debian's runc shim.

use std::time::{Duration, Instant};

use berth_cri_api::v1 as cri;
use berth_e2e::apps::{create, ctr, env_with, exec_url, port_forward_url, start, status};
use berth_e2e::pods::pod_config;
use berth_e2e::{PodEnv, processes, wait_until};
use berth_stream::StdioOptions;
use berth_stream::client::{self, RemoteCommand, exit_code, read_all};
use bytes::Bytes;
use sha2::Digest;
use tonic::Code;

async fn attach_url(env: &PodEnv, id: &str, o: StdioOptions) -> String {
    env.cri
        .runtime
        .clone()
        .attach(cri::AttachRequest {
            container_id: id.into(),
            stdin: o.stdin,
            tty: o.tty,
            stdout: o.stdout,
            stderr: o.stderr,
        })
        .await
        .unwrap()
        .into_inner()
        .url
}

const OUT_ERR: StdioOptions = StdioOptions {
    stdin: false,
    stdout: true,
    stderr: true,
    tty: false,
};

const IN_OUT: StdioOptions = StdioOptions {
    stdin: true,
    stdout: true,
    stderr: true,
    tty: false,
};

const TTY: StdioOptions = StdioOptions {
    stdin: true,
    stdout: true,
    stderr: false,
    tty: true,
};

/// Reads stdout until `want` shows up (at most 10 s); returns everything read.
async fn read_until(rc: &mut RemoteCommand, want: &str) -> String {
    let rx = rc.stdout.as_mut().unwrap();
    let mut got = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.contains(want) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(b)) => got.push_str(&String::from_utf8_lossy(&b)),
            _ => panic!("{want:?} never came; got {got:?}"),
        }
    }
    got
}

/// A pod with one long-running container; returns (pod, container).
async fn running(env: &PodEnv, name: &str, c: cri::ContainerConfig) -> (String, String) {
    let pcfg = pod_config(name);
    let pod = env.run(pcfg.clone()).await.unwrap();
    let id = create(env, &pod, &pcfg, c).await.unwrap();
    start(env, &id).await;
    (pod, id)
}

fn idle(name: &str) -> cri::ContainerConfig {
    ctr(
        name,
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do sleep 1; done",
        ],
    )
}

/// Files left in a container's exec directory (fifos of finished execs must be gone).
fn exec_leftovers(env: &PodEnv, id: &str) -> Vec<String> {
    let dir = env.berth.state.join("containers").join(id).join("exec");
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_over_spdy_carries_output_exit_codes_terminals_and_100_mb_of_stdin() {
    let env = env_with("").await;
    let (pod, id) = running(&env, "exec", idle("box")).await;

    // Output on both streams, and the exit code in the v4 status.
    let url = exec_url(
        &env,
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        OUT_ERR,
    )
    .await
    .unwrap();
    let mut rc = RemoteCommand::spdy(&url, OUT_ERR).await.unwrap();
    let out = read_all(rc.stdout.as_mut().unwrap()).await;
    let err = read_all(rc.stderr.as_mut().unwrap()).await;
    let st = rc.status().await;
    assert_eq!((&out[..], &err[..]), (&b"out\n"[..], &b"err\n"[..]));
    assert_eq!(exit_code(&st), Some(3), "{st}");
    assert_eq!(st["reason"], "NonZeroExitCode");

    // A terminal: its size follows resize messages; the exit code comes back.
    let url = exec_url(&env, &id, &["sh"], TTY).await.unwrap();
    let mut rc = RemoteCommand::spdy(&url, TTY).await.unwrap();
    rc.resize(100, 30).await.unwrap();
    let stdin = rc.stdin.clone().unwrap();
    stdin
        .send(Bytes::from_static(b"tty; stty size\n"))
        .await
        .unwrap();
    let got = read_until(&mut rc, "30 100").await;
    assert!(got.contains("/dev/pts/"), "{got:?}");
    rc.resize(132, 43).await.unwrap();
    // Resizes and keystrokes travel on different streams: give the resize a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stdin
        .send(Bytes::from_static(b"stty size\n"))
        .await
        .unwrap();
    read_until(&mut rc, "43 132").await;
    stdin.send(Bytes::from_static(b"exit 5\n")).await.unwrap();
    drop(stdin);
    rc.stdin = None;
    read_all(rc.stdout.as_mut().unwrap()).await;
    assert_eq!(exit_code(&rc.status().await), Some(5));

    // 100 MB through stdin, checksummed inside the container.
    let url = exec_url(&env, &id, &["sha256sum"], IN_OUT).await.unwrap();
    let mut rc = RemoteCommand::spdy(&url, IN_OUT).await.unwrap();
    let stdin = rc.stdin.take().unwrap();
    let feeder = tokio::spawn(async move {
        let mut h = sha2::Sha256::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..(100 << 20) / (1 << 20) {
            let mut chunk = vec![0u8; 1 << 20];
            for w in chunk.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                w.copy_from_slice(&seed.to_le_bytes());
            }
            h.update(&chunk);
            stdin.send(Bytes::from(chunk)).await.unwrap();
        }
        hex::encode(h.finalize())
    });
    let out = String::from_utf8(read_all(rc.stdout.as_mut().unwrap()).await).unwrap();
    let want = feeder.await.unwrap();
    assert_eq!(
        out.split_whitespace().next(),
        Some(want.as_str()),
        "{out:?}"
    );
    assert_eq!(exit_code(&rc.status().await), Some(0));

    // Each URL is good once; a made-up one is 404.
    let url = exec_url(&env, &id, &["true"], OUT_ERR).await.unwrap();
    RemoteCommand::spdy(&url, OUT_ERR)
        .await
        .unwrap()
        .status()
        .await;
    for u in [url.clone(), url.replace("/exec/", "/exec/x")] {
        let e = RemoteCommand::spdy(&u, OUT_ERR).await.err().unwrap();
        assert!(e.to_string().contains("HTTP 404"), "{u}: {e}");
    }
    // An exec URL is not an attach URL.
    let url = exec_url(&env, &id, &["true"], OUT_ERR).await.unwrap();
    let e = RemoteCommand::spdy(&url.replace("/exec/", "/attach/"), OUT_ERR)
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("HTTP 404"), "{e}");

    let fds_before = env.berth.fd_count().unwrap();

    // A client that goes away: its process is killed and its fifos removed.
    let url = exec_url(
        &env,
        &id,
        &["sh", "-c", "echo started; exec sleep 4321"],
        OUT_ERR,
    )
    .await
    .unwrap();
    let mut rc = RemoteCommand::spdy(&url, OUT_ERR).await.unwrap();
    read_until(&mut rc, "started").await;
    // (The shell prints, then execs sleep: on a loaded machine the exec may come a moment later.)
    assert!(wait_until(Duration::from_secs(5), || processes(&[
        "sleep", "4321"
    ])
    .len()
        == 1));
    rc.kill().await;
    assert!(
        wait_until(Duration::from_secs(10), || processes(&["sleep", "4321"])
            .is_empty()),
        "the exec outlived its client"
    );
    assert!(
        wait_until(Duration::from_secs(5), || exec_leftovers(&env, &id)
            .is_empty()),
        "{:?}",
        exec_leftovers(&env, &id)
    );

    // 50 sessions at once (URLs first, then every client connects together).
    let mut urls = Vec::new();
    for i in 0..50 {
        urls.push(
            exec_url(&env, &id, &["sh", "-c", &format!("echo n{i}")], OUT_ERR)
                .await
                .unwrap(),
        );
    }
    let mut tasks = Vec::new();
    for url in urls {
        tasks.push(tokio::spawn(async move {
            let mut rc = RemoteCommand::spdy(&url, OUT_ERR).await.unwrap();
            let out = read_all(rc.stdout.as_mut().unwrap()).await;
            (
                String::from_utf8(out).unwrap(),
                exit_code(&rc.status().await),
            )
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), (format!("n{i}\n"), Some(0)));
    }
    assert!(wait_until(Duration::from_secs(5), || exec_leftovers(
        &env, &id
    )
    .is_empty()));
    // Every session's sockets, fifos and pipes are closed again.
    let mut fds = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            fds = env.berth.fd_count().unwrap();
            fds <= fds_before
        }),
        "berth holds {fds} fds after the sessions, {fds_before} before"
    );

    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_over_websocket_v5_v4_and_base64() {
    let env = env_with("").await;
    let (pod, id) = running(&env, "ws", idle("box")).await;

    // v5: stdin is half-closed with the CLOSE signal, so `cat` ends.
    let url = exec_url(&env, &id, &["cat"], IN_OUT).await.unwrap();
    let mut rc = RemoteCommand::websocket(&url, &["v5.channel.k8s.io"], IN_OUT)
        .await
        .unwrap();
    let stdin = rc.stdin.take().unwrap();
    stdin
        .send(Bytes::from_static(b"through v5\n"))
        .await
        .unwrap();
    drop(stdin);
    assert_eq!(read_until(&mut rc, "\n").await, "through v5\n");
    assert_eq!(exit_code(&rc.status().await), Some(0));
    // A short stdin closed at once, again and again: what was written is never lost with
    // the fifo, however late the shim opens its side (containerd's runc shim opens it in the
    // background after Start).
    for i in 0..20 {
        let url = exec_url(&env, &id, &["cat"], IN_OUT).await.unwrap();
        let mut rc = RemoteCommand::websocket(&url, &["v5.channel.k8s.io"], IN_OUT)
            .await
            .unwrap();
        let stdin = rc.stdin.take().unwrap();
        let line = format!("short {i}\n");
        stdin.send(Bytes::from(line.clone())).await.unwrap();
        drop(stdin);
        assert_eq!(read_until(&mut rc, "\n").await, line);
        assert_eq!(exit_code(&rc.status().await), Some(0));
    }

    // v4 and its base64 variant carry the exit code in the JSON status.
    for proto in ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"] {
        let url = exec_url(&env, &id, &["sh", "-c", "echo hi; exit 9"], OUT_ERR)
            .await
            .unwrap();
        let mut rc = RemoteCommand::websocket(&url, &[proto], OUT_ERR)
            .await
            .unwrap();
        assert_eq!(read_until(&mut rc, "hi\n").await, "hi\n", "{proto}");
        assert_eq!(exit_code(&rc.status().await), Some(9), "{proto}");
    }

    // A terminal over WebSocket.
    let url = exec_url(&env, &id, &["sh"], TTY).await.unwrap();
    let mut rc = RemoteCommand::websocket(&url, &["v5.channel.k8s.io"], TTY)
        .await
        .unwrap();
    rc.resize(77, 22).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stdin = rc.stdin.clone().unwrap();
    stdin
        .send(Bytes::from_static(b"stty size; exit 2\n"))
        .await
        .unwrap();
    read_until(&mut rc, "22 77").await;
    assert_eq!(exit_code(&rc.status().await), Some(2));

    // Protocols berth does not speak are refused.
    let url = exec_url(&env, &id, &["true"], OUT_ERR).await.unwrap();
    let e = RemoteCommand::websocket(&url, &["v9.channel.k8s.io"], OUT_ERR)
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("HTTP 400"), "{e}");

    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn attach_follows_the_container_and_stdin_once_closes_its_stdin() {
    let env = env_with("").await;
    let mut c = ctr("shell", &["sh"]);
    c.stdin = true;
    c.stdin_once = true;
    let (pod, id) = running(&env, "attach", c).await;

    // A watcher without stdin sees what the container prints for another client.
    let watch = StdioOptions {
        stdin: false,
        ..OUT_ERR
    };
    let mut watcher = RemoteCommand::spdy(&attach_url(&env, &id, watch).await, watch)
        .await
        .unwrap();
    let mut rc = RemoteCommand::spdy(&attach_url(&env, &id, IN_OUT).await, IN_OUT)
        .await
        .unwrap();
    let stdin = rc.stdin.take().unwrap();
    stdin
        .send(Bytes::from_static(
            b"echo attached-$((6*7)); echo oops >&2\n",
        ))
        .await
        .unwrap();
    read_until(&mut rc, "attached-42\n").await;
    read_until(&mut watcher, "attached-42\n").await;
    let mut err = Vec::new();
    while !err.ends_with(b"oops\n") {
        err.extend_from_slice(&rc.stderr.as_mut().unwrap().recv().await.unwrap());
    }
    // Closing stdin ends the session; with stdin_once the container reads EOF and exits.
    drop(stdin);
    assert_eq!(exit_code(&rc.status().await), Some(0));
    let mut st = cri::ContainerStatus::default();
    let exited = wait_until(Duration::from_secs(10), || {
        st = futures_block(status(&env, &id));
        st.state == cri::ContainerState::ContainerExited as i32
    });
    assert!(exited && st.exit_code == 0, "{st:?}");
    // The watcher's session ends with the container.
    read_all(watcher.stdout.as_mut().unwrap()).await;
    assert_eq!(exit_code(&watcher.status().await), Some(0));

    // Attach needs a running container.
    let e = env
        .cri
        .runtime
        .clone()
        .attach(cri::AttachRequest {
            container_id: id.clone(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

fn futures_block<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

async fn http_get(
    to_pod: &tokio::sync::mpsc::Sender<Bytes>,
    from_pod: &mut tokio::sync::mpsc::Receiver<Bytes>,
) -> String {
    to_pod
        .send(Bytes::from_static(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"))
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Ok(Some(b)) = tokio::time::timeout(Duration::from_secs(10), from_pod.recv()).await {
        got.extend_from_slice(&b);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_over_spdy_and_websocket() {
    let env = env_with("").await;
    let (pod, _web) = running(
        &env,
        "pf",
        ctr("web", &["httpd", "-f", "-p", "8080", "-h", "/www"]),
    )
    .await;
    // SPDY: two connections on one session, then a closed port.
    let url = port_forward_url(&env, &pod, &[]).await.unwrap();
    let (session, proto) = client::spdy_connect(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    assert_eq!(proto, "portforward.k8s.io");
    let mut served = false;
    for _ in 0..50 {
        let mut f = client::spdy_forward(&session, 8080, 0).await.unwrap();
        let page = http_get(&f.to_pod, &mut f.from_pod).await;
        if page.contains("hello over localhost") {
            served = true;
            break;
        }
        // httpd may not listen yet.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served,
        "the pod's httpd never answered through port-forward"
    );
    let (mut a, mut b) = (
        client::spdy_forward(&session, 8080, 1).await.unwrap(),
        client::spdy_forward(&session, 8080, 2).await.unwrap(),
    );
    let (pa, pb) = tokio::join!(
        http_get(&a.to_pod, &mut a.from_pod),
        http_get(&b.to_pod, &mut b.from_pod)
    );
    assert!(pa.contains("hello over localhost") && pb.contains("hello over localhost"));
    let mut closed = client::spdy_forward(&session, 8181, 3).await.unwrap();
    let msg = String::from_utf8(read_all(&mut closed.error).await).unwrap();
    assert!(msg.contains("8181") && msg.contains("refused"), "{msg}");
    session.close().await;

    // A port the request did not name is refused on its error stream.
    let url = port_forward_url(&env, &pod, &[8080]).await.unwrap();
    let (session, _) = client::spdy_connect(&url, &["portforward.k8s.io"])
        .await
        .unwrap();
    let mut other = client::spdy_forward(&session, 9090, 0).await.unwrap();
    let msg = String::from_utf8(read_all(&mut other.error).await).unwrap();
    assert!(msg.contains("not named"), "{msg}");
    session.close().await;

    // WebSocket: the port is in the query; each channel opens with the port number.
    let url = port_forward_url(&env, &pod, &[]).await.unwrap();
    let (proto, ws) = client::ws_connect(&format!("{url}?port=8080"), &["portforward.k8s.io"])
        .await
        .unwrap();
    assert_eq!(proto, "portforward.k8s.io");
    let page = ws_http_get(ws).await;
    assert!(page.contains("hello over localhost"), "{page}");

    // Bad CRI requests.
    let e = port_forward_url(&env, &pod, &[70000]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = port_forward_url(&env, "nope", &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    env.stop(&pod).await.unwrap();
    let e = port_forward_url(&env, &pod, &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

async fn ws_http_get(ws: tokio_tungstenite::WebSocketStream<client::BoxConn>) -> String {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut sink, mut stream) = ws.split();
    // The two opening messages: data and error channel, each holding port 8080.
    for ch in [0u8, 1] {
        let m = stream.next().await.unwrap().unwrap().into_data();
        assert_eq!(&m[..], &[ch, 0x90, 0x1f][..]);
    }
    let mut req = vec![0u8];
    req.extend_from_slice(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n");
    sink.send(Message::Binary(req.into())).await.unwrap();
    let mut got = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
        if m.is_close() {
            break;
        }
        let d = m.into_data();
        if d.first() == Some(&0) {
            got.extend_from_slice(&d[1..]);
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_requests_are_checked_and_tokens_expire() {
    let env = env_with("[stream]\ntoken_ttl_seconds = 1\n").await;
    let (pod, id) = running(&env, "tokens", idle("box")).await;

    let bad = [
        (StdioOptions::default(), "one of stdin"),
        (
            StdioOptions {
                tty: true,
                stderr: true,
                stdout: true,
                stdin: false,
            },
            "tty and stderr",
        ),
    ];
    for (o, want) in bad {
        let e = exec_url(&env, &id, &["true"], o).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(want), "{e:?}");
    }
    let e = exec_url(&env, &id, &[], OUT_ERR).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = exec_url(&env, "missing", &["true"], OUT_ERR)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // A URL unused past its lifetime is gone.
    let url = exec_url(&env, &id, &["true"], OUT_ERR).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = RemoteCommand::spdy(&url, OUT_ERR).await.err().unwrap();
    assert!(e.to_string().contains("HTTP 404"), "{e}");

    // Exec needs a running container.
    let done = create(
        &env,
        &pod,
        &pod_config("tokens"),
        ctr("done", &["sh", "-c", "exit 0"]),
    )
    .await
    .unwrap();
    start(&env, &done).await;
    assert!(wait_until(Duration::from_secs(10), || {
        futures_block(status(&env, &done)).state == cri::ContainerState::ContainerExited as i32
    }));
    let e = exec_url(&env, &done, &["true"], OUT_ERR).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = berth_e2e::tls::ca_and_server_cert(dir.path());
    let env = env_with(&format!(
        "[stream]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ))
    .await;
    client::trust_ca(&std::fs::read(&ca).unwrap()).unwrap();
    let (pod, id) = running(&env, "tls", idle("box")).await;
    let url = exec_url(&env, &id, &["sh", "-c", "echo secret; exit 4"], OUT_ERR)
        .await
        .unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let mut rc = RemoteCommand::spdy(&url, OUT_ERR).await.unwrap();
    assert_eq!(read_until(&mut rc, "\n").await, "secret\n");
    assert_eq!(exit_code(&rc.status().await), Some(4));
    // Plain HTTP to the TLS port gets nowhere.
    let url = exec_url(&env, &id, &["true"], OUT_ERR).await.unwrap();
    assert!(
        RemoteCommand::spdy(&url.replace("https://", "http://"), OUT_ERR)
            .await
            .is_err()
    );
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_session_is_closed_and_its_process_killed() {
    let env = env_with("[stream]\nidle_timeout_seconds = 2\n").await;
    let (pod, id) = running(&env, "idle", idle("box")).await;
    let sleeping = |tag: &str| processes(&["sleep", tag]).len();
    // (Tags of their own: the other tests here run at the same time and count their sleeps.)
    for (proto, tag) in [("spdy", "4331"), ("websocket", "4332")] {
        let cmd = format!("echo ready; exec sleep {tag}");
        let url = exec_url(&env, &id, &["sh", "-c", &cmd], OUT_ERR)
            .await
            .unwrap();
        let mut rc = if proto == "spdy" {
            RemoteCommand::spdy(&url, OUT_ERR).await.unwrap()
        } else {
            RemoteCommand::websocket(&url, &["v5.channel.k8s.io"], OUT_ERR)
                .await
                .unwrap()
        };
        assert_eq!(read_until(&mut rc, "\n").await, "ready\n");
        assert!(wait_until(Duration::from_secs(5), || sleeping(tag) == 1));
        // Nothing moves from here on: two seconds later berth ends the session (the
        // output channel closes) and kills what the session ran.
        let t = Instant::now();
        let rx = rc.stdout.as_mut().unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
        assert!(
            matches!(end, Ok(None)),
            "{proto}: session still open: {end:?}"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(1500),
            "{proto}: {:?}",
            t.elapsed()
        );
        assert!(
            wait_until(Duration::from_secs(5), || sleeping(tag) == 0),
            "{proto}: the exec outlived its session"
        );
    }
    assert!(wait_until(Duration::from_secs(5), || exec_leftovers(
        &env, &id
    )
    .is_empty()));
    env.stop(&pod).await.unwrap();
    env.remove(&pod).await.unwrap();
    env.assert_clean();
}
