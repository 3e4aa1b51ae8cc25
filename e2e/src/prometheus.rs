//! A real Prometheus (Debian's `prometheus`), started for one test on 127.0.0.1 with its own
//! data directory, scraping the targets it is given every second; and its query API.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// One series of a range query: its labels and its (unix ms, value) samples.
pub type Series = (BTreeMap<String, String>, Vec<(i64, f64)>);

/// A running Prometheus, killed (by its pid) and its data removed when dropped.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts Prometheus scraping each of `targets` (`host:port`, `/metrics`) every second as
    /// job `berth`; returns once it answers on its API.
    pub async fn start(targets: &[String]) -> anyhow::Result<Prometheus> {
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        Self::start_with_config(&format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: berth\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ))
        .await
    }

    /// Starts Prometheus with the configuration `yaml`; returns once it answers on its API.
    pub async fn start_with_config(yaml: &str) -> anyhow::Result<Prometheus> {
        let bin = which("prometheus")
            .context("prometheus is not installed (scripts/install-deps.sh installs it)")?;
        let dir = tempfile::Builder::new().prefix("berth-prom-").tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, yaml)?;
        let port = crate::free_port();
        // Plain HTTP, but the client needs a provider installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start prometheus")?;
        let mut p = Prometheus {
            child,
            port,
            dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
        };
        for _ in 0..200 {
            if let Some(status) = p.child.try_wait()? {
                bail!("prometheus exited ({status}):\n{}", p.log());
            }
            let ready = p
                .http
                .get(format!("http://127.0.0.1:{port}/-/ready"))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("prometheus did not become ready:\n{}", p.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The query API's answer to `q`, evaluated now.
    async fn api_query(&self, q: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .http
            .get(url::Url::parse_with_params(
                &format!("http://127.0.0.1:{}/api/v1/query", self.port),
                [("query", q)],
            )?)
            .send()
            .await?
            .json()
            .await?)
    }

    /// An instant query: each result's labels and value.
    pub async fn query(
        &self,
        q: &str,
    ) -> anyhow::Result<Vec<(serde_json::Map<String, serde_json::Value>, f64)>> {
        let v = self.api_query(q).await?;
        if v["status"] != "success" {
            bail!("query {q}: {v}");
        }
        let mut out = vec![];
        for r in v["data"]["result"].as_array().cloned().unwrap_or_default() {
            let value = r["value"][1]
                .as_str()
                .context("a sample value")?
                .parse::<f64>()?;
            out.push((r["metric"].as_object().cloned().unwrap_or_default(), value));
        }
        Ok(out)
    }

    /// Every raw sample of the range selector `q` (e.g. `up[2h]`), evaluated now: each
    /// series' labels and its (unix ms, value) samples.
    pub async fn samples(&self, q: &str) -> anyhow::Result<Vec<Series>> {
        let v = self.api_query(q).await?;
        if v["status"] != "success" || v["data"]["resultType"] != "matrix" {
            bail!("query {q}: {v}");
        }
        let mut out = vec![];
        for r in v["data"]["result"].as_array().cloned().unwrap_or_default() {
            let labels = r["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let mut samples = vec![];
            for s in r["values"].as_array().into_iter().flatten() {
                let t = s[0].as_f64().context("a sample time")?;
                let value = s[1].as_str().context("a sample value")?.parse::<f64>()?;
                samples.push(((t * 1000.0).round() as i64, value));
            }
            out.push((labels, samples));
        }
        Ok(out)
    }

    /// The single value of an instant query (`None`: no result).
    pub async fn value(&self, q: &str) -> anyhow::Result<Option<f64>> {
        let r = self.query(q).await?;
        if r.len() > 1 {
            bail!("query {q}: {} results, not one", r.len());
        }
        Ok(r.first().map(|(_, v)| *v))
    }

    /// Waits (scrape by scrape, at most `within`) until query `q` has the value `want`.
    pub async fn wait_for(&self, q: &str, want: f64, within: Duration) -> anyhow::Result<()> {
        let end = std::time::Instant::now() + within;
        let mut last = None;
        while std::time::Instant::now() < end {
            last = self.value(q).await?;
            if last == Some(want) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("{q} is {last:?}, not {want}, after {within:?}")
    }

    /// The targets' scrape health, from the targets API: (health, last error) of each.
    pub async fn targets(&self) -> anyhow::Result<Vec<(String, String)>> {
        let v: serde_json::Value = self
            .http
            .get(format!("http://127.0.0.1:{}/api/v1/targets", self.port))
            .send()
            .await?
            .json()
            .await?;
        Ok(v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["health"].as_str().unwrap_or_default().to_string(),
                    t["lastError"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.exists())
}
