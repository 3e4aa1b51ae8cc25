//! The three kinds of metric and their labelled families.
//!
//! A family has fixed label names; its children are made on first use and live as long as
//! berth. Every label value a caller passes comes from a bounded set (a CRI method, a gRPC
//! code, a handler named in the config, a step berth names): never a pod name, an id or an
//! image reference, so a family's size does not grow with the workload.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What a family reports, for the `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Counter,
    Gauge,
    Histogram,
}

impl Type {
    pub fn as_str(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
    }
}

/// A family's name, help and label names. A counter's name is given without `_total`: the
/// encoders add it where each format wants it.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub name: &'static str,
    pub help: &'static str,
    pub labels: &'static [&'static str],
    pub kind: Type,
}

/// One value of a family at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A counter or a gauge.
    Number(f64),
    Histogram {
        /// Upper bounds, ascending, without `+Inf`.
        bounds: &'static [f64],
        /// Observations at or below each bound (not cumulative), then above the last.
        counts: Vec<u64>,
        sum: f64,
    },
}

/// The label values and value of one series.
pub type Sample = (Vec<String>, Value);

/// Something the registry can ask for its samples.
pub trait Collect: Send + Sync {
    fn desc(&self) -> &Desc;
    fn collect(&self) -> Vec<Sample>;
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.inc_by(1);
    }
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug)]
pub struct Gauge(AtomicU64);

impl Default for Gauge {
    fn default() -> Self {
        Gauge(AtomicU64::new(0f64.to_bits()))
    }
}

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn inc(&self) {
        add(&self.0, 1.0);
    }
    pub fn dec(&self) {
        add(&self.0, -1.0);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Adds to an f64 kept as its bits.
fn add(bits: &AtomicU64, v: f64) {
    let mut cur = bits.load(Ordering::Relaxed);
    loop {
        let next = (f64::from_bits(cur) + v).to_bits();
        match bits.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(now) => cur = now,
        }
    }
}

/// Observations counted into fixed buckets, with their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One more than `bounds`: the last counts what is above every bound.
    counts: Box<[AtomicU64]>,
    /// The sum's bits (an f64 has no atomic type).
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds ascend");
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        add(&self.sum, v);
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn value(&self) -> Value {
        Value::Histogram {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: f64::from_bits(self.sum.load(Ordering::Relaxed)),
        }
    }
}

/// Latency buckets, in seconds, for calls that take from a millisecond to a couple of minutes
/// (CRI calls, pod starts, CNI plugins).
pub const LATENCY: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Buckets, in seconds, for image pulls: a fraction of a second (a lazy pull) to ten minutes.
pub const PULL: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A family of one metric type keyed by its label values.
pub struct Family<M> {
    desc: Desc,
    make: fn() -> M,
    children: RwLock<BTreeMap<Vec<String>, Arc<M>>>,
    value: fn(&M) -> Value,
}

impl<M> std::fmt::Debug for Family<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Family")
            .field("name", &self.desc.name)
            .finish()
    }
}

impl<M> Family<M> {
    /// The child with these label values (in the order of the family's label names), made on
    /// first use.
    pub fn with(&self, values: &[&str]) -> Arc<M> {
        debug_assert_eq!(values.len(), self.desc.labels.len(), "{}", self.desc.name);
        {
            let children = self.children.read().unwrap_or_else(|p| p.into_inner());
            // Found without building an owned key: the common case costs no allocation.
            if let Some((_, m)) = children.iter().find(|(k, _)| k.iter().eq(values.iter())) {
                return m.clone();
            }
        }
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        self.children
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }
}

impl<M> Family<M> {
    const fn new(desc: Desc, make: fn() -> M, value: fn(&M) -> Value) -> Self {
        Family {
            desc,
            make,
            children: RwLock::new(BTreeMap::new()),
            value,
        }
    }
}

impl Family<Counter> {
    pub const fn counter(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        let kind = Type::Counter;
        Family::new(
            Desc {
                name,
                help,
                labels,
                kind,
            },
            Counter::default,
            |c| Value::Number(c.get() as f64),
        )
    }
}

impl Family<Gauge> {
    pub const fn gauge(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        let kind = Type::Gauge;
        Family::new(
            Desc {
                name,
                help,
                labels,
                kind,
            },
            Gauge::default,
            |g| Value::Number(g.get()),
        )
    }
}

/// A histogram family's buckets: each family names its own, as a function a `const` can hold.
pub type Buckets = fn() -> Histogram;

impl Family<Histogram> {
    pub const fn histogram(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: Buckets,
    ) -> Self {
        let kind = Type::Histogram;
        Family::new(
            Desc {
                name,
                help,
                labels,
                kind,
            },
            buckets,
            Histogram::value,
        )
    }
}

impl<M: Send + Sync> Collect for Family<M> {
    fn desc(&self) -> &Desc {
        &self.desc
    }
    fn collect(&self) -> Vec<Sample> {
        self.children
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, m)| (k.clone(), (self.value)(m)))
            .collect()
    }
}

/// A family whose samples are computed when it is scraped: counts of what berth holds
/// (pods by state), or what the kernel says (the process's memory).
pub struct Computed {
    desc: Desc,
    f: Box<dyn Fn() -> Vec<Sample> + Send + Sync>,
}

impl Computed {
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        kind: Type,
        f: impl Fn() -> Vec<Sample> + Send + Sync + 'static,
    ) -> Computed {
        Computed {
            desc: Desc {
                name,
                help,
                labels,
                kind,
            },
            f: Box::new(f),
        }
    }
}

impl Collect for Computed {
    fn desc(&self) -> &Desc {
        &self.desc
    }
    fn collect(&self) -> Vec<Sample> {
        (self.f)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_each_observation_once_at_its_bound() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0, 3.0] {
            h.observe(v);
        }
        let Value::Histogram { counts, sum, .. } = h.value() else {
            unreachable!()
        };
        // `le` is inclusive: 1.0 lands in the first bucket.
        assert_eq!(counts, vec![2, 1, 2]);
        assert_eq!(sum, 9.0);
        assert_eq!(h.count(), 5);
    }

    #[test]
    fn family_children_are_shared_by_label_values() {
        let f = Family::counter("t", "t", &["a", "b"]);
        f.with(&["x", "y"]).inc();
        f.with(&["x", "y"]).inc_by(2);
        f.with(&["x", "z"]).inc();
        let mut s = f.collect();
        s.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            s,
            vec![
                (vec!["x".into(), "y".into()], Value::Number(3.0)),
                (vec!["x".into(), "z".into()], Value::Number(1.0)),
            ]
        );
    }
}
