//! The two exposition formats Prometheus scrapes: text format 0.0.4 (what every scraper and
//! `promtool check metrics` reads) and OpenMetrics 1.0.0 (asked for with an `Accept` header,
//! as Prometheus does first).
//!
//! They differ in three ways berth meets: a counter's `# TYPE` names it without `_total` in
//! OpenMetrics and with it in text; OpenMetrics escapes `"` in help; and it ends with `# EOF`.

use std::fmt::Write;

use crate::types::{Collect, Type, Value};

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names it, else text.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Every family in `families`, in this format.
pub fn encode(families: &[&dyn Collect], format: Format) -> String {
    let mut out = String::with_capacity(16 << 10);
    for f in families {
        let d = f.desc();
        let mut samples = f.collect();
        samples.sort_by(|a, b| a.0.cmp(&b.0));
        let family = match (d.kind, format) {
            (Type::Counter, Format::Text) => format!("{}_total", d.name),
            _ => d.name.to_string(),
        };
        let help = escape_help(d.help, format);
        let _ = writeln!(out, "# HELP {family} {help}");
        let _ = writeln!(out, "# TYPE {family} {}", d.kind.as_str());
        for (values, value) in samples {
            let labels = |extra: Option<(&str, &str)>| -> String {
                let mut pairs: Vec<String> = d
                    .labels
                    .iter()
                    .zip(&values)
                    .map(|(n, v)| format!("{n}=\"{}\"", escape_value(v)))
                    .collect();
                if let Some((n, v)) = extra {
                    pairs.push(format!("{n}=\"{v}\""));
                }
                if pairs.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", pairs.join(","))
                }
            };
            match value {
                Value::Number(v) => {
                    let name = match d.kind {
                        Type::Counter => format!("{}_total", d.name),
                        _ => d.name.to_string(),
                    };
                    let _ = writeln!(out, "{name}{} {}", labels(None), number(v));
                }
                Value::Histogram {
                    bounds,
                    counts,
                    sum,
                } => {
                    let mut cumulative = 0u64;
                    for (i, c) in counts.iter().enumerate() {
                        cumulative += c;
                        let le = bounds
                            .get(i)
                            .map_or_else(|| "+Inf".to_string(), |b| bound(*b));
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {cumulative}",
                            d.name,
                            labels(Some(("le", &le)))
                        );
                    }
                    let _ = writeln!(out, "{}_sum{} {}", d.name, labels(None), number(sum));
                    let _ = writeln!(out, "{}_count{} {cumulative}", d.name, labels(None));
                }
            }
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

/// A sample value: integers without a fraction, others as Rust prints them (both formats
/// read either), and the special values as Prometheus spells them.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A bucket bound as OpenMetrics wants it: always with a fraction (`1.0`, not `1`), so that
/// the same bucket has the same `le` whichever format was scraped.
fn bound(b: f64) -> String {
    let s = format!("{b}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

fn escape_value(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn escape_help(h: &str, format: Format) -> String {
    let h = h.replace('\\', r"\\").replace('\n', r"\n");
    match format {
        Format::Text => h,
        Format::OpenMetrics => h.replace('"', "\\\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Family, Histogram};

    static CALLS: Family<crate::Counter> =
        Family::counter("t_calls", "Calls \"made\".", &["method"]);
    static LAT: Family<Histogram> =
        Family::histogram("t_seconds", "Latency.", &[], || Histogram::new(&[0.5, 1.0]));

    #[test]
    fn both_formats_as_prometheus_reads_them() {
        CALLS.with(&["Run\"x\\"]).inc_by(3);
        LAT.with(&[]).observe(0.25);
        LAT.with(&[]).observe(2.0);
        let fams: [&dyn Collect; 2] = [&CALLS, &LAT];
        assert_eq!(
            encode(&fams, Format::Text),
            "# HELP t_calls_total Calls \"made\".\n\
             # TYPE t_calls_total counter\n\
             t_calls_total{method=\"Run\\\"x\\\\\"} 3\n\
             # HELP t_seconds Latency.\n\
             # TYPE t_seconds histogram\n\
             t_seconds_bucket{le=\"0.5\"} 1\n\
             t_seconds_bucket{le=\"1.0\"} 1\n\
             t_seconds_bucket{le=\"+Inf\"} 2\n\
             t_seconds_sum 2.25\n\
             t_seconds_count 2\n"
        );
        let om = encode(&fams, Format::OpenMetrics);
        assert!(om.starts_with(
            "# HELP t_calls Calls \\\"made\\\".\n# TYPE t_calls counter\nt_calls_total{"
        ));
        assert!(om.ends_with("t_seconds_count 2\n# EOF\n"));
    }

    #[test]
    fn numbers_and_bounds() {
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.125), "0.125");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(bound(1.0), "1.0");
        assert_eq!(bound(0.005), "0.005");
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
    }
}
