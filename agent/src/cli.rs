//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH};

/// berth: a Kubernetes CRI runtime (RuntimeService + ImageService on a unix socket).
#[derive(Debug, Clone, Parser)]
#[command(name = "berth", version, about)]
pub struct Cli {
    /// Config file (TOML). A missing file at the default path means the built-in defaults.
    #[arg(long, global = true, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// The CRI socket path [config: address].
    #[arg(long, global = true)]
    pub address: Option<PathBuf>,
    /// Persistent state directory [config: root].
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// Runtime state directory [config: state].
    #[arg(long, global = true)]
    pub state: Option<PathBuf>,
    /// Log filter, e.g. info or debug,berth_image=trace [config: log.level].
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Serve,
    /// Print configuration.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Install berth on a host: binaries and shims to <host-root>/opt/berth/bin, the config
    /// (kept if one exists), the systemd unit. What the DaemonSet runs.
    Install {
        /// The host's root: /host in the DaemonSet pod, / by hand.
        #[arg(long)]
        host_root: PathBuf,
        /// Only print the node labels this host should carry (key=value, one per line).
        #[arg(long)]
        print_labels: bool,
    },
    /// Remove exactly what `berth install` wrote (files changed since are kept).
    Uninstall {
        #[arg(long)]
        host_root: PathBuf,
    },
    /// Keep the FUSE connections of lazily pulled layers open across daemon restarts
    /// (started by the daemon itself; not for use by hand).
    #[command(hide = true)]
    FuseHolder {
        #[arg(long)]
        socket: PathBuf,
    },
    /// Check this node: kernel, runtime handlers, CNI, certs.d, the daemon.
    Doctor {
        /// table | json
        #[arg(long, default_value = "table")]
        output: DoctorOutput,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DoctorOutput {
    Table,
    Json,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCommand {
    /// Print the full default configuration, with comments.
    Default,
    /// Print the configuration berth would run with (file + flags).
    Show,
}

impl Cli {
    /// The config file merged with the command-line overrides.
    pub fn effective_config(&self) -> anyhow::Result<Config> {
        let (path, explicit) = match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut cfg = Config::load(&path, explicit)?;
        if let Some(a) = &self.address {
            cfg.address = a.clone();
        }
        if let Some(r) = &self.root {
            cfg.root = r.clone();
        }
        if let Some(s) = &self.state {
            cfg.state = s.clone();
        }
        for (flag, p) in [
            ("--address", &cfg.address),
            ("--root", &cfg.root),
            ("--state", &cfg.state),
        ] {
            anyhow::ensure!(
                p.is_absolute(),
                "{flag}: {} is not an absolute path",
                p.display()
            );
        }
        Ok(cfg)
    }
}
