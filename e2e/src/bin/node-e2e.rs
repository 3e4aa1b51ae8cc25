//! Kubernetes' node e2e suite against berth (both handlers) and containerd 2.x on this
//! machine, one after the other, with one table of specs run, passed, failed and skipped per
//! runtime, and the specs that fail on berth but pass on containerd.
//!
//! `cargo build --release -p berth -p berth-e2e && BERTH_BIN=target/release/berth target/release/node-e2e [options]`
//!
//! Options: `--runtime berth|berth-runc|containerd` (repeatable; default all three),
//! `--focus RE`, `--skip RE` (ginkgo's; replaces the default), `--skip-file FILE` (one regular
//! expression per line before a tab and the reason; `#` comments; added to the skips, in any
//! order), `--feature-gates GATES` (the suite's API server's and kubelet's, `A=true,B=true`),
//! `--procs N` (3), `--timeout-minutes N` (120), `--report-dir DIR` (`target/node-e2e`),
//! `--kubelet-flag FLAG` (repeatable), `--require-pass` (exit 1 if any spec fails on any
//! runtime).

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_e2e::node_e2e::{self, Journal, Options, Outcome, Runtime, Suite, World};

/// The NodeConformance selection of the suite's own CI.
const CONFORMANCE: &str = r"\[NodeConformance\]";
const NOT_CI: &str = r"\[Flaky\]|\[Serial\]|\[Slow\]";

fn skips_from(file: &str) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {file}"))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split('\t').next().unwrap_or(l).trim().to_string())
        .collect())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut runtimes = Vec::new();
    let mut opts = Options {
        focus: CONFORMANCE.into(),
        skip: NOT_CI.into(),
        procs: 3,
        timeout: Duration::from_secs(120 * 60),
        report_dir: PathBuf::from("target/node-e2e"),
        kubelet_flags: Vec::new(),
        feature_gates: String::new(),
    };
    // `--skip` replaces the default; `--skip-file` adds to whichever it is, in any order.
    let mut skip_files: Vec<String> = Vec::new();
    let mut require_pass = false;
    // `--opt value` or `--opt=value` (a value may itself look like `--flag=x`).
    const OPTS: [&str; 9] = [
        "--runtime",
        "--focus",
        "--skip",
        "--skip-file",
        "--procs",
        "--timeout-minutes",
        "--report-dir",
        "--kubelet-flag",
        "--feature-gates",
    ];
    let mut args = std::env::args()
        .skip(1)
        .flat_map(|a| match a.split_once('=') {
            Some((k, v)) if OPTS.contains(&k) => vec![k.to_string(), v.to_string()],
            _ => vec![a],
        })
        .collect::<Vec<_>>()
        .into_iter();
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--runtime" => runtimes.push(Runtime::parse(&val()?)?),
            "--focus" => opts.focus = val()?,
            "--skip" => opts.skip = val()?,
            "--skip-file" => skip_files.extend(skips_from(&val()?)?),
            "--procs" => opts.procs = val()?.parse()?,
            "--timeout-minutes" => opts.timeout = Duration::from_secs(val()?.parse::<u64>()? * 60),
            "--report-dir" => opts.report_dir = val()?.into(),
            "--kubelet-flag" => opts.kubelet_flags.push(val()?),
            "--feature-gates" => opts.feature_gates = val()?,
            "--require-pass" => require_pass = true,
            _ => anyhow::bail!("unknown argument {a:?} (see the top of e2e/src/bin/node-e2e.rs)"),
        }
    }
    opts.skip = std::iter::once(opts.skip.clone())
        .chain(skip_files)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("|");
    if runtimes.is_empty() {
        runtimes = vec![Runtime::Berth, Runtime::BerthRunc, Runtime::Containerd];
    }
    let suite = Suite::find()?;
    node_e2e::check_disk()?;
    node_e2e::catch_interrupts();
    let mut journal = Journal::open()?;
    let reports = run_all(&suite, &runtimes, &opts, &mut journal).await;
    journal.close();
    let reports = reports?;
    if node_e2e::interrupted() {
        println!("node-e2e: interrupted");
    }
    println!("\n{}", node_e2e::table(&reports));
    let baseline = reports.iter().find(|r| r.runtime == Runtime::Containerd);
    for r in &reports {
        let failed = r.failed();
        if failed.is_empty() {
            continue;
        }
        println!("\nFailed on {} ({}):", r.runtime.name(), failed.len());
        for name in failed {
            let theirs = baseline
                .filter(|b| b.runtime != r.runtime)
                .and_then(|b| b.specs.get(name));
            let note = match theirs {
                Some(Outcome::Passed) => "  <- passes on containerd",
                Some(Outcome::Failed) => "  (fails on containerd too)",
                _ => "",
            };
            println!("- {name}{note}");
        }
    }
    let any_failed = reports.iter().any(|r| !r.failed().is_empty());
    if require_pass && any_failed {
        anyhow::bail!("specs failed");
    }
    if node_e2e::interrupted() {
        std::process::exit(130);
    }
    Ok(())
}

/// Runs the suite against each runtime in turn (none after an interrupt); the world goes
/// before this returns, so that the journal can close.
async fn run_all(
    suite: &Suite,
    runtimes: &[Runtime],
    opts: &Options,
    journal: &mut Journal,
) -> anyhow::Result<Vec<node_e2e::Report>> {
    let world = World::start(suite, journal).await?;
    let mut reports = Vec::new();
    for &rt in runtimes {
        if node_e2e::interrupted() {
            break;
        }
        println!("node-e2e: {} …", rt.name());
        let r = node_e2e::run(suite, &world, rt, opts, journal)
            .with_context(|| format!("the suite against {}", rt.name()))?;
        println!(
            "node-e2e: {}: {} passed, {} failed, {} skipped ({})",
            rt.name(),
            r.count(Outcome::Passed),
            r.count(Outcome::Failed),
            r.count(Outcome::Skipped),
            r.dir.display()
        );
        reports.push(r);
    }
    Ok(reports)
}
