//! Reading what ginkgo reported, and the table of results.

use std::collections::BTreeMap;

use super::{Outcome, Report};

/// Parses the JUnit report ginkgo writes: every `<testcase>` by name, with its status.
pub fn parse_junit(xml: &str) -> BTreeMap<String, Outcome> {
    let mut out = BTreeMap::new();
    for tc in xml.split("<testcase ").skip(1) {
        let head = tc.split('>').next().unwrap_or("");
        let attr = |k: &str| {
            let key = format!("{k}=\"");
            head.find(&key).map(|i| {
                let rest = &head[i + key.len()..];
                unescape(&rest[..rest.find('"').unwrap_or(rest.len())])
            })
        };
        let Some(name) = attr("name") else { continue };
        let outcome = match attr("status").as_deref() {
            Some("passed") => Outcome::Passed,
            Some("skipped") | Some("pending") => Outcome::Skipped,
            _ => Outcome::Failed,
        };
        // Ginkgo's suite-level nodes (BeforeSuite and the like) are reported too: keep them,
        // a failure there is a failure of the run.
        out.insert(name, outcome);
    }
    out
}

/// XML's character references: the five named ones and numeric ones (`&#34;`, `&#x22;`),
/// which Go's encoder writes; anything else is kept as it is.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let decoded = rest.find(';').and_then(|end| {
            let c = match &rest[1..end] {
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                "amp" => '&',
                r => {
                    let n = match r.strip_prefix("#x").or_else(|| r.strip_prefix("#X")) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => r.strip_prefix('#')?.parse().ok()?,
                    };
                    char::from_u32(n)?
                }
            };
            Some((c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The results as a Markdown table, one row per runtime.
pub fn table(reports: &[Report]) -> String {
    let mut s = String::from(
        "| runtime | specs run | passed | failed | skipped | time |\n|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let (p, f, sk) = (
            r.count(Outcome::Passed),
            r.count(Outcome::Failed),
            r.count(Outcome::Skipped),
        );
        s.push_str(&format!(
            "| {} | {} | {p} | {f} | {sk} | {}m{:02}s |\n",
            r.runtime.name(),
            p + f,
            r.took.as_secs() / 60,
            r.took.as_secs() % 60
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_testcases_are_read_with_their_status() {
        let xml = r#"<testsuites><testsuite name="E2eNode Suite">
<testcase name="[It] a &amp; b &#34;c&#x22; &amp;lt; &bogus; & [NodeConformance]" classname="E2eNode Suite" status="passed" time="1.2"></testcase>
<testcase name="[It] fails" classname="E2eNode Suite" status="failed" time="3"><failure message="x">boom</failure></testcase>
<testcase name="[It] not run" classname="E2eNode Suite" status="skipped" time="0"><skipped message="skipped"></skipped></testcase>
<testcase name="[SynchronizedBeforeSuite]" classname="E2eNode Suite" status="timedout" time="9"></testcase>
</testsuite></testsuites>"#;
        let m = parse_junit(xml);
        assert_eq!(m.len(), 4);
        assert_eq!(
            m["[It] a & b \"c\" &lt; &bogus; & [NodeConformance]"],
            Outcome::Passed
        );
        assert_eq!(m["[It] fails"], Outcome::Failed);
        assert_eq!(m["[It] not run"], Outcome::Skipped);
        assert_eq!(m["[SynchronizedBeforeSuite]"], Outcome::Failed);
    }
}
