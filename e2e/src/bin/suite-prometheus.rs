//! Runs a command (the e2e suite) under one real Prometheus that scrapes every berth the
//! command starts, every second; then judges every scrape (see `berth_e2e::scrape`).
//!
//! `suite-prometheus [--keep DIR] -- <command> [args…]`
//!
//! Prints `suite-prometheus: N berths, M scrapes, F failed, E more while stopped on purpose`
//! and each failed scrape of a berth that was meant to serve, with its test. Exits with the
//! command's status, or 1 when the command passed but a scrape failed. `--keep DIR` keeps
//! the targets and journals there (they go with a temp dir otherwise).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_e2e::prometheus::Prometheus;
use berth_e2e::scrape;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut keep = None;
    let mut command = vec![];
    while let Some(a) = args.next() {
        match a.as_str() {
            "--keep" => keep = Some(args.next().context("--keep needs a directory")?),
            "--" => {
                command.extend(args.by_ref());
            }
            other => {
                bail!("unknown option {other:?} (usage: suite-prometheus [--keep DIR] -- CMD…)")
            }
        }
    }
    let Some((program, rest)) = command.split_first() else {
        bail!("no command (usage: suite-prometheus [--keep DIR] -- CMD…)");
    };
    let temp = tempfile::Builder::new().prefix("berth-scrape-").tempdir()?;
    let dir = match &keep {
        Some(k) => {
            let _ = std::fs::remove_dir_all(k);
            std::fs::create_dir_all(k)?;
            // Absolute: the tests run in their crate's directory, not in this one's.
            std::fs::canonicalize(k)?
        }
        None => temp.path().to_path_buf(),
    };
    let prom = Prometheus::start_with_config(&scrape::prometheus_config(&dir)?).await?;
    let t0 = Instant::now();
    let status = tokio::process::Command::new(program)
        .args(rest)
        .env(scrape::DIR_ENV, &dir)
        .status()
        .await
        .with_context(|| format!("run {program}"))?;
    // The last registered targets' final scrapes land within a scrape interval.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let range = t0.elapsed().as_secs() + 60;
    let series = prom
        .samples(&format!("up{{job=\"berth-e2e\"}}[{range}s]"))
        .await
        .context("read the scrapes")?;
    let audit = scrape::audit(&dir, &series);
    // A berth that lives less than Prometheus's discovery interval (5 s) is never scraped.
    let started = std::fs::read_dir(dir.join("windows")).map_or(0, |d| d.count());
    println!(
        "suite-prometheus: {} berths, {} scrapes, {} failed, {} more while stopped on purpose ({started} berths started; those that lived under 5 s were not scraped)",
        audit.targets,
        audit.scrapes,
        audit.failed.len(),
        audit.excused
    );
    for (id, test, t) in &audit.failed {
        println!("suite-prometheus: failed scrape of {id} ({test}) at unix ms {t}");
    }
    // Prometheus is killed, and the temp dir removed, before the exit.
    drop(prom);
    drop(temp);
    let mut code = status.code().unwrap_or(1);
    if audit.scrapes == 0 {
        println!("suite-prometheus: no berth was scraped");
    }
    if code == 0 && (!audit.failed.is_empty() || audit.scrapes == 0) {
        code = 1;
    }
    std::process::exit(code)
}
