//! tracing setup: structured logs on stderr, text or JSON.

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// The `[log]` table of the config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Parses a log filter: a default level and `target=level` pairs, comma-separated
/// (`info`, `info,berth_image=debug`, `warn,berth::shim=trace`). berth uses
/// `tracing_subscriber`'s `Targets` rather than `EnvFilter`: span-field directives are not
/// needed here, and `EnvFilter` brings in a regex engine, a quarter MiB of resident code.
pub fn parse_filter(level: &str) -> anyhow::Result<Targets> {
    level.parse::<Targets>().map_err(|e| {
        anyhow::anyhow!("log level {level:?}: {e} (want e.g. info or info,berth_image=debug)")
    })
}

/// Installs the global subscriber. `override_level` (the `--log-level` flag) wins over the
/// config's level. Colours only on a terminal: journald and log files get plain text.
pub fn init(cfg: &LogConfig, override_level: Option<&str>) -> anyhow::Result<()> {
    let filter = parse_filter(override_level.unwrap_or(&cfg.level))?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let res = match cfg.format {
        LogFormat::Text => tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .try_init(),
        LogFormat::Json => tracing_subscriber::registry()
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_filter(filter),
            )
            .try_init(),
    };
    res.map_err(|e| anyhow::anyhow!("install logger: {e}"))
}
