//! The berth daemon: configuration, the CRI server and the command line.

pub mod cli;
pub mod config;
pub mod cri;
pub mod h2fix;
pub mod logging;
pub mod server;

use anyhow::Context;

/// Runs the command the command line asks for.
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command.clone().unwrap_or(cli::Command::Serve) {
        cli::Command::Serve => {
            let cfg = cli.effective_config()?;
            logging::init(&cfg.log, cli.log_level.as_deref())?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("berth")
                .build()
                .context("start the async runtime")?;
            rt.block_on(server::serve(cfg))
        }
        cli::Command::Config {
            what: cli::ConfigCommand::Default,
        } => write_stdout(config::DEFAULT_CONFIG),
        cli::Command::Config {
            what: cli::ConfigCommand::Show,
        } => {
            let cfg = cli.effective_config()?;
            write_stdout(&toml::to_string_pretty(&cfg).context("render config")?)
        }
    }
}

fn write_stdout(s: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .context("write to stdout")
}
