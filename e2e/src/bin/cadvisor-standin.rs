//! The part of cAdvisor's REST API that the node e2e suite's resource collector reads
//! (`GET /api/v2.{0,1}/stats/<cgroup>?type=name&count=1`: CPU and memory of a cgroup by name),
//! served from `/sys/fs/cgroup` as cAdvisor serves it. The density specs run it as their
//! `gcr.io/cadvisor/cadvisor` pod (host network, the host's `/sys`); see
//! `berth_e2e::node_images`.
//!
//! `cadvisor-standin [--port=N] [other cAdvisor flags, ignored]`

#![allow(clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Decodes `%XX` escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The stats answer for cgroup `name`, or None when there is no such cgroup.
fn stats(name: &str) -> Option<serde_json::Value> {
    let c = berth_cgroups::read_cgroup(Path::new("/sys/fs/cgroup"), name)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let working_set = c.memory.saturating_sub(c.inactive_file);
    let mut m = serde_json::Map::new();
    m.insert(
        name.to_string(),
        serde_json::json!({
            "spec": {"has_cpu": true, "has_memory": true},
            "stats": [{
                "timestamp": berth_sandbox::logs::rfc3339_nano(now),
                "cpu": {"usage": {
                    "total": c.cpu_ns, "user": c.cpu_user_ns, "system": c.cpu_system_ns,
                    "per_cpu_usage": [],
                }},
                "memory": {
                    "usage": c.memory, "working_set": working_set, "rss": c.rss,
                    "cache": c.cache, "max_usage": c.memory_max,
                },
            }],
        }),
    );
    Some(serde_json::Value::Object(m))
}

fn answer(mut s: TcpStream) -> std::io::Result<()> {
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone()?);
    r.read_line(&mut line)?;
    // The rest of the request head.
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    let (code, body) = if path == "/healthz" {
        ("200 OK", "ok".to_string())
    } else if let Some(name) = path
        .strip_prefix("/api/v2.1/stats")
        .or_else(|| path.strip_prefix("/api/v2.0/stats"))
    {
        let name = unescape(name);
        let name = if name.is_empty() {
            "/".to_string()
        } else {
            name
        };
        match stats(&name) {
            Some(v) => ("200 OK", v.to_string()),
            None => ("404 Not Found", format!("unknown container {name:?}")),
        }
    } else {
        ("404 Not Found", "not served by this stand-in".to_string())
    };
    write!(
        s,
        "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn main() {
    let port = std::env::args()
        .find_map(|a| a.strip_prefix("--port=").map(str::to_string))
        .unwrap_or_else(|| "8080".into());
    let l = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cadvisor-standin: listen on port {port}: {e}");
            std::process::exit(1);
        }
    };
    for s in l.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = answer(s);
        });
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_as_rfc3339() {
        let t = std::time::Duration::new(1_796_549_400, 5);
        // `date -u -d @1796549400`
        assert_eq!(
            berth_sandbox::logs::rfc3339_nano(t),
            "2026-12-06T09:30:00.000000005Z"
        );
        let leap = std::time::Duration::from_secs(951_782_400);
        assert_eq!(
            berth_sandbox::logs::rfc3339_nano(leap),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(
            berth_sandbox::logs::rfc3339_nano(std::time::Duration::ZERO),
            "1970-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn escapes_are_decoded() {
        assert_eq!(super::unescape("/a%2Fb%20c"), "/a/b c");
        assert_eq!(super::unescape("/bad%2"), "/bad%2");
    }
}
