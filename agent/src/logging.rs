//! tracing setup: structured logs on stderr, text or JSON.

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `override_level` (the `--log-level` flag) wins over the
/// config's level.
pub fn init(cfg: &LogConfig, override_level: Option<&str>) -> anyhow::Result<()> {
    let level = override_level.unwrap_or(&cfg.level);
    let filter = EnvFilter::try_new(level).with_context(|| format!("log level {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let res = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    res.map_err(|e| anyhow::anyhow!("install logger: {e}"))
}
