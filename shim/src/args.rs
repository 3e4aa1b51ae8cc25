//! The command line containerd gives a shim: Go-style flags (`-flag value`, `-flag=value`,
//! `--flag`), then an action.

/// What the shim was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `start`: start (or find) the daemon and print its address.
    Start,
    /// `delete`: clean up after a task whose shim is gone.
    Delete,
    /// No action: be the daemon.
    Serve,
    /// `-v`: print the version.
    Version,
}

/// The parsed command line.
#[derive(Debug, Clone)]
pub struct Args {
    pub namespace: String,
    pub id: String,
    /// The caller's gRPC socket; shims name their own socket after it.
    pub address: String,
    pub publish_binary: String,
    /// The bundle (`delete` only; otherwise the working directory is the bundle).
    pub bundle: Option<String>,
    pub debug: bool,
    pub action: Action,
    /// The arguments as given, for the daemon's own command line.
    pub raw: Vec<String>,
}

impl Args {
    /// Parses the arguments after the program name.
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Args, String> {
        let raw: Vec<String> = args.collect();
        let mut a = Args {
            namespace: String::new(),
            id: String::new(),
            address: String::new(),
            publish_binary: String::new(),
            bundle: None,
            debug: false,
            action: Action::Serve,
            raw: raw.clone(),
        };
        let mut it = raw.into_iter();
        let mut positional = Vec::new();
        while let Some(arg) = it.next() {
            let Some(flag) = arg
                .strip_prefix("--")
                .or_else(|| arg.strip_prefix('-'))
                .filter(|f| !f.is_empty())
            else {
                positional.push(arg);
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (flag.to_string(), None),
            };
            match name.as_str() {
                "debug" => a.debug = inline.as_deref() != Some("false"),
                "v" | "version" => a.action = Action::Version,
                "namespace" | "id" | "address" | "publish-binary" | "bundle" | "socket" => {
                    let value = match inline {
                        Some(v) => v,
                        None => it
                            .next()
                            .ok_or_else(|| format!("flag -{name} needs a value"))?,
                    };
                    match name.as_str() {
                        "namespace" => a.namespace = value,
                        "id" => a.id = value,
                        "address" => a.address = value,
                        "publish-binary" => a.publish_binary = value,
                        "bundle" => a.bundle = Some(value),
                        // containerd 2.x passes the socket it chose; this shim names its own.
                        _ => {}
                    }
                }
                other => return Err(format!("unknown flag -{other}")),
            }
        }
        if a.action == Action::Version {
            return Ok(a);
        }
        a.action = match positional.as_slice() {
            [] => Action::Serve,
            [x] if x == "start" => Action::Start,
            [x] if x == "delete" => Action::Delete,
            other => return Err(format!("unknown action {other:?} (want start or delete)")),
        };
        if a.namespace.is_empty() {
            return Err("-namespace is required".into());
        }
        if a.id.is_empty() {
            return Err("-id is required".into());
        }
        // The id names files and runtime state: nothing that walks out of a directory.
        if a.id.contains('/') || a.id == "." || a.id == ".." || a.id.len() > 256 {
            return Err(format!("invalid -id {:?}", a.id));
        }
        Ok(a)
    }

    /// The daemon's arguments: the same flags, without the action.
    pub fn daemon_args(&self) -> Vec<String> {
        self.raw
            .iter()
            .filter(|a| a.as_str() != "start")
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Args, String> {
        Args::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn containerd_command_lines() {
        let a = parse("-namespace k8s.io -address /run/b.sock -publish-binary /b -id abc start")
            .unwrap();
        assert_eq!(a.action, Action::Start);
        assert_eq!((a.namespace.as_str(), a.id.as_str()), ("k8s.io", "abc"));
        assert_eq!(a.address, "/run/b.sock");
        assert_eq!(
            a.daemon_args().join(" "),
            "-namespace k8s.io -address /run/b.sock -publish-binary /b -id abc"
        );
        let a = parse("--namespace=n -id x -bundle /b/x -debug delete").unwrap();
        assert_eq!(a.action, Action::Delete);
        assert_eq!(a.bundle.as_deref(), Some("/b/x"));
        assert!(a.debug);
        assert_eq!(parse("-namespace n -id x").unwrap().action, Action::Serve);
        assert_eq!(parse("-v").unwrap().action, Action::Version);
    }

    #[test]
    fn bad_command_lines() {
        for bad in [
            "-namespace n start",
            "-id x start",
            "-namespace n -id x frobnicate",
            "-namespace n -id ../x start",
            "-namespace n -id x -bogus 1 start",
            "-namespace n -id",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
