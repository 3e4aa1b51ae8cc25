//! berth's Prometheus endpoint, scraped every second by a real Prometheus: the target stays up,
//! both exposition formats parse, `promtool` finds nothing to lint, and PromQL over what it
//! scraped gives the counts of a known sequence of CRI calls.

use std::time::Duration;

use berth_cri_api::v1 as cri;
use berth_e2e::PodEnv;
use berth_e2e::net::TestNet;
use berth_e2e::pods::pod_config;
use berth_e2e::prometheus::Prometheus;

/// A berth serving metrics on a free port, with `extra` in its `[metrics]` table.
async fn metrics_env(extra: &str) -> PodEnv {
    PodEnv::start_with(
        TestNet::new().unwrap(),
        &format!("[metrics]\naddress = \"127.0.0.1:0\"\n{extra}"),
    )
    .await
    .unwrap()
}

/// The address berth says it serves its metrics on (it was given port 0).
fn metrics_address(env: &PodEnv) -> String {
    let log = env.berth.log();
    let line = log
        .lines()
        .find(|l| l.contains("serving metrics on /metrics"))
        .unwrap_or_else(|| panic!("no metrics endpoint in the log:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("address="))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string()
}

async fn scrape(address: &str, accept: &str) -> (String, String) {
    let r = reqwest::Client::new()
        .get(format!("http://{address}/metrics"))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let ctype = r.headers()["content-type"].to_str().unwrap().to_string();
    (ctype, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_berth_and_promql_counts_the_calls_made() {
    let env = metrics_env("").await;
    let address = metrics_address(&env);

    // Both formats; the text one passes promtool's lint (names, units, help, types).
    let (ctype, text) = scrape(&address, "text/plain").await;
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        lint.stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (ctype, om) = scrape(&address, "application/openmetrics-text;version=1.0.0").await;
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(om.ends_with("# EOF\n"));

    let prom = Prometheus::start(std::slice::from_ref(&address))
        .await
        .unwrap();
    let within = Duration::from_secs(30);
    let mut images = env.cri.image.clone();
    let mut rt = env.cri.runtime.clone();
    let list = cri::ListImagesRequest::default();
    // The first call makes the series; Prometheus sees it before the rest, so that their
    // rate is over a counter it already knew.
    images.list_images(list.clone()).await.unwrap();
    let listed =
        "sum(berth_cri_requests_total{service=\"ImageService\",method=\"ListImages\",code=\"OK\"})";
    prom.wait_for(listed, 1.0, within).await.unwrap();

    for _ in 0..4 {
        images.list_images(list.clone()).await.unwrap();
    }
    for _ in 0..2 {
        let e = rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: "0123456789abcdef-not-a-pod".into(),
                verbose: false,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
    let id = env.run(pod_config("metrics")).await.unwrap();
    prom.wait_for("sum(berth_pods{state=\"ready\"})", 1.0, within)
        .await
        .unwrap();
    prom.wait_for("sum(berth_shims)", 1.0, within)
        .await
        .unwrap();
    env.stop(&id).await.unwrap();
    env.remove(&id).await.unwrap();
    prom.wait_for(listed, 5.0, within).await.unwrap();
    prom.wait_for("sum(berth_pods)", 0.0, within).await.unwrap();

    let v = |q: &'static str| {
        let prom = &prom;
        async move { prom.value(q).await.unwrap() }
    };
    assert_eq!(
        v("sum(berth_cri_requests_total{method=\"PodSandboxStatus\",code=\"NotFound\"})").await,
        Some(2.0)
    );
    for m in ["RunPodSandbox", "StopPodSandbox", "RemovePodSandbox"] {
        let q = format!("sum(berth_cri_requests_total{{method=\"{m}\",code=\"OK\"}})");
        assert_eq!(prom.value(&q).await.unwrap(), Some(1.0), "{q}");
    }
    let rate = v("sum(rate(berth_cri_requests_total{method=\"ListImages\"}[1m]))")
        .await
        .unwrap();
    assert!(rate > 0.0, "rate {rate}");
    let q = v("histogram_quantile(0.9, sum by (le) (rate(berth_cri_request_duration_seconds_bucket{method=\"ListImages\"}[1m])))")
        .await
        .unwrap();
    assert!(q.is_finite() && q > 0.0, "ListImages p90 {q}");
    let q = v("histogram_quantile(0.5, sum by (le) (berth_cri_request_duration_seconds_bucket{method=\"RunPodSandbox\"}))")
        .await
        .unwrap();
    assert!(q.is_finite() && q > 0.0, "RunPodSandbox p50 {q}");
    // berth's own steps, the network, the pull of the pause image, the shim.
    for (q, want) in [
        (
            "sum(berth_operation_step_duration_seconds_count{operation=\"run_pod_sandbox\",step=\"cni_add\"})",
            1.0,
        ),
        (
            "sum(berth_operation_step_duration_seconds_count{operation=\"run_pod_sandbox\",step=\"task_start\"})",
            1.0,
        ),
        (
            "sum(berth_cni_calls_total{verb=\"ADD\",result=\"ok\"})",
            1.0,
        ),
        (
            "sum(berth_image_pulls_total{mode=\"whole\",result=\"ok\"})",
            1.0,
        ),
        ("sum(berth_shim_starts_total)", 1.0),
        ("sum(berth_shim_deaths_total)", 0.0),
    ] {
        let got = prom.value(q).await.unwrap().unwrap_or(0.0);
        assert_eq!(got, want, "{q}");
    }
    assert!(v("sum(berth_cni_calls_total{verb=\"DEL\",result=\"ok\"})").await >= Some(1.0));
    assert!(v("sum(berth_image_pull_bytes_total)").await > Some(0.0));
    assert!(v("process_resident_memory_bytes").await > Some(1e6));

    // Every scrape of the run succeeded.
    let scrapes = v("count_over_time(up{job=\"berth\"}[10m])").await.unwrap();
    let up = v("min_over_time(up{job=\"berth\"}[10m])").await;
    assert!(scrapes >= 2.0, "{scrapes} scrapes");
    assert_eq!(up, Some(1.0), "a failed scrape: {:?}", prom.targets().await);
    for (health, err) in prom.targets().await.unwrap() {
        assert_eq!((health.as_str(), err.as_str()), ("up", ""));
    }
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_endpoint_refuses_what_it_does_not_serve() {
    let env = metrics_env("").await;
    let address = metrics_address(&env);
    let http = reqwest::Client::new();
    let r = http.get(format!("http://{address}/")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .post(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // A method no CRI has is counted under `other`, never under its own name.
    let mut rt = env.cri.runtime.clone();
    rt.version(cri::VersionRequest::default()).await.unwrap();
    let (_, text) = scrape(&address, "text/plain").await;
    assert!(
        text.contains(
            "berth_cri_requests_total{service=\"RuntimeService\",method=\"Version\",code=\"OK\"}"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = berth_e2e::tls::ca_and_server_cert(dir.path());
    let env = metrics_env(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ))
    .await;
    let address = metrics_address(&env);
    let curl = |url: String| {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .arg(url)
            .output()
            .unwrap()
    };
    let out = curl(format!("https://{address}/metrics"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("# TYPE berth_cri_requests_total counter"),
        "{}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain HTTP to the TLS port gets no metrics.
    let out = curl(format!("http://{address}/metrics"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("berth_"));
}
