//! berth's own metrics, served on `metrics.address` for Prometheus.
//!
//! ```text
//!  lib.rs      the catalogue: every metric berth serves, as a static the crate that measures
//!              it updates (README's metrics table lists the same names)
//!  types.rs    Counter, Gauge, Histogram, their labelled families, computed families
//!  encode.rs   text format 0.0.4 and OpenMetrics 1.0.0
//!  process.rs  the standard process_* metrics, read from /proc/self when scraped
//! ```
//!
//! Why not a general metrics crate: berth needs both exposition formats (scrapers that know
//! only text, Prometheus asking for OpenMetrics), a catalogue a test can hold README to, and
//! no global recorder to install; a family here is a plain `static`, its update one atomic
//! add after a read-locked lookup. The server and the families counted at scrape time (pods
//! by state) are the agent's (`agent/src/metrics.rs`).

mod encode;
pub mod process;
mod types;

pub use encode::{Format, encode};
pub use types::{
    Buckets, Collect, Computed, Counter, Desc, Family, Gauge, Histogram, LATENCY, PULL, Sample,
    Type, Value,
};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// CRI calls answered, by service, method and gRPC code (berth's server layer counts them).
pub static CRI_REQUESTS: Family<Counter> = Family::counter(
    "berth_cri_requests",
    "CRI calls answered, by service, method and gRPC code.",
    &["service", "method", "code"],
);

/// How long CRI calls took, to the end of the answer.
pub static CRI_REQUEST_DURATION: Family<Histogram> = Family::histogram(
    "berth_cri_request_duration_seconds",
    "How long CRI calls took, from the request to the end of the answer.",
    &["service", "method", "code"],
    || Histogram::new(LATENCY),
);

/// The steps of RunPodSandbox, CreateContainer and StartContainer, each on its own.
pub static OPERATION_STEPS: Family<Histogram> = Family::histogram(
    "berth_operation_step_duration_seconds",
    "How long each of berth's own steps of RunPodSandbox, CreateContainer and StartContainer took.",
    &["operation", "step"],
    || Histogram::new(LATENCY),
);

/// Image pulls finished, by how (whole or lazy) and their result.
pub static IMAGE_PULLS: Family<Counter> = Family::counter(
    "berth_image_pulls",
    "Image pulls finished, by mode (whole, lazy) and result (ok, or the error's kind).",
    &["mode", "result"],
);

/// Bytes of image content fetched from registries.
pub static IMAGE_PULL_BYTES: Family<Counter> = Family::counter(
    "berth_image_pull_bytes",
    "Bytes of manifests, configs and layers fetched from registries by pulls.",
    &["mode"],
);

/// How long successful and failed pulls took.
pub static IMAGE_PULL_DURATION: Family<Histogram> = Family::histogram(
    "berth_image_pull_duration_seconds",
    "How long image pulls took, by mode.",
    &["mode"],
    || Histogram::new(PULL),
);

/// Garbage collections of the content store.
pub static IMAGE_GC_RUNS: Family<Counter> = Family::counter(
    "berth_image_gc_runs",
    "Garbage collections of unreferenced blobs and snapshots.",
    &[],
);

/// Bytes the collections freed.
pub static IMAGE_GC_FREED_BYTES: Family<Counter> = Family::counter(
    "berth_image_gc_freed_bytes",
    "Bytes of blobs and snapshots garbage collection removed.",
    &[],
);

/// Shims berth started.
pub static SHIM_STARTS: Family<Counter> = Family::counter(
    "berth_shim_starts",
    "Shims started, by runtime handler.",
    &["handler"],
);

/// Shims found dead without berth stopping them.
pub static SHIM_DEATHS: Family<Counter> = Family::counter(
    "berth_shim_deaths",
    "Shims that died without berth stopping them (their pod's containers are reported exited).",
    &["handler"],
);

/// How long the last start took to recover pods, containers and shims from disk.
pub static RECOVERY_DURATION: Family<Gauge> = Family::gauge(
    "berth_recovery_duration_seconds",
    "How long berth's last start took to recover its pods, containers and shims.",
    &[],
);

/// CNI plugin invocations.
pub static CNI_CALLS: Family<Counter> = Family::counter(
    "berth_cni_calls",
    "CNI plugin chain invocations, by verb (ADD, CHECK, DEL, GC, STATUS) and result.",
    &["verb", "result"],
);

/// How long CNI invocations took.
pub static CNI_CALL_DURATION: Family<Histogram> = Family::histogram(
    "berth_cni_call_duration_seconds",
    "How long CNI plugin chain invocations took, by verb.",
    &["verb"],
    || Histogram::new(LATENCY),
);

/// Streaming sessions open now.
pub static STREAM_SESSIONS: Family<Gauge> = Family::gauge(
    "berth_stream_sessions",
    "Streaming sessions (exec, attach, portforward) open now.",
    &["kind"],
);

/// Streaming sessions opened.
pub static STREAM_SESSIONS_OPENED: Family<Counter> = Family::counter(
    "berth_stream_sessions_opened",
    "Streaming sessions opened, by kind.",
    &["kind"],
);

/// NRI plugins connected now.
pub static NRI_PLUGINS: Family<Gauge> =
    Family::gauge("berth_nri_plugins", "NRI plugins connected now.", &[]);

/// Calls to NRI plugins.
pub static NRI_CALLS: Family<Counter> = Family::counter(
    "berth_nri_plugin_calls",
    "Calls to NRI plugins, by event and result (ok, error, timeout, closed).",
    &["event", "result"],
);

/// How long NRI plugins took to answer.
pub static NRI_CALL_DURATION: Family<Histogram> = Family::histogram(
    "berth_nri_plugin_call_duration_seconds",
    "How long NRI plugins took to answer, by event.",
    &["event"],
    || Histogram::new(LATENCY),
);

/// Every family above, in the order they are served.
pub fn catalogue() -> Vec<&'static dyn Collect> {
    vec![
        &CRI_REQUESTS,
        &CRI_REQUEST_DURATION,
        &OPERATION_STEPS,
        &IMAGE_PULLS,
        &IMAGE_PULL_BYTES,
        &IMAGE_PULL_DURATION,
        &IMAGE_GC_RUNS,
        &IMAGE_GC_FREED_BYTES,
        &SHIM_STARTS,
        &SHIM_DEATHS,
        &RECOVERY_DURATION,
        &CNI_CALLS,
        &CNI_CALL_DURATION,
        &STREAM_SESSIONS,
        &STREAM_SESSIONS_OPENED,
        &NRI_PLUGINS,
        &NRI_CALLS,
        &NRI_CALL_DURATION,
    ]
}

/// Times the steps of one operation: each [`Steps::lap`] records the time since the previous
/// lap (or the start) as that step. Steps that run side by side each take a
/// [`branch`](Steps::branch), which times its steps from the moment it was taken.
#[derive(Debug)]
pub struct Steps {
    operation: &'static str,
    start: Instant,
    /// The previous lap, in nanoseconds after `start`.
    last: AtomicU64,
}

impl Steps {
    pub fn start(operation: &'static str) -> Steps {
        Steps {
            operation,
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// A timer of the same operation whose first step starts now.
    pub fn branch(&self) -> Steps {
        Steps {
            operation: self.operation,
            start: self.start,
            last: AtomicU64::new(self.total().as_nanos() as u64),
        }
    }

    /// Ends `step` (one of the operation's fixed step names) now; returns the time since the
    /// operation started.
    pub fn lap(&self, step: &'static str) -> Duration {
        let now = self.total();
        let prev = self.last.swap(now.as_nanos() as u64, Ordering::Relaxed);
        OPERATION_STEPS
            .with(&[self.operation, step])
            .observe_duration(now.saturating_sub(Duration::from_nanos(prev)));
        now
    }

    /// Time since the operation started.
    pub fn total(&self) -> Duration {
        self.start.elapsed()
    }
}

/// The result label of an outcome: `ok`, or the error's kind in snake case.
pub fn result_label(kind: Option<&str>) -> String {
    match kind {
        None => "ok".into(),
        Some(k) => {
            let mut out = String::with_capacity(k.len() + 4);
            for (i, c) in k.chars().enumerate() {
                if c.is_ascii_uppercase() {
                    if i > 0 {
                        out.push('_');
                    }
                    out.push(c.to_ascii_lowercase());
                } else {
                    out.push(c);
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for f in catalogue()
            .into_iter()
            .chain(process::families().iter().map(|c| c as &dyn Collect))
        {
            let d = f.desc();
            assert!(seen.insert(d.name), "{} twice", d.name);
            assert!(
                d.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                d.name
            );
            assert!(
                !d.name.ends_with("_total"),
                "{}: counters get _total when encoded",
                d.name
            );
            if d.kind == Type::Histogram {
                assert!(
                    d.name.ends_with("_seconds"),
                    "{}: a unit in the name",
                    d.name
                );
            }
            assert!(d.help.ends_with('.'), "{}", d.name);
            for l in d.labels {
                assert!(
                    !["pod", "container", "id", "image", "name"].contains(l),
                    "{}: unbounded label {l}",
                    d.name
                );
            }
        }
    }

    #[test]
    fn result_labels() {
        assert_eq!(result_label(None), "ok");
        assert_eq!(result_label(Some("NotFound")), "not_found");
        assert_eq!(result_label(Some("Unavailable")), "unavailable");
    }
}
