//! The berth daemon: configuration, the CRI server and the command line.
//!
//! ```text
//!  main.rs → cli.rs (flags) → run(): serve, config, doctor, install, fuse-holder
//!  server.rs   builds the image service, the sandbox runtime and the streaming server from
//!              the config, then serves CRI on the socket (h2fix.rs, deadline.rs: transport)
//!  cri/        the CRI adapter: convert, validate, call one domain method, map the error
//!    mod.rs        call(): span, log, the one error → gRPC code mapping (code())
//!    runtime/      RuntimeService: mod.rs delegates each call to pod.rs, containers.rs,
//!                  sessions.rs (Exec, Attach, PortForward, ExecSync) or stats.rs
//!    image.rs      ImageService
//!    sandbox.rs, container_config.rs, container_status.rs, security.rs: conversions
//!    validate.rs   bounds on request strings      stream.rs: the streaming backend
//!  cadvisor.rs the containerd calls the kubelet's cAdvisor makes, answered from the records
//!  metrics.rs  the Prometheus endpoint (metrics.address) and the layer timing CRI calls
//!  config.rs   the TOML config (deploy/config.toml is its default, commented)
//!  doctor/     berth doctor's checks, by what they look at    install.rs: install/uninstall
//! ```
//!
//! Where a change goes: a new CRI field is converted in `cri/` (the request side in
//! `container_config.rs` or `sandbox.rs`, the answer in `container_status.rs`) and carried
//! by the sandbox crate's config types; a new config key in `config.rs` and
//! `deploy/config.toml`; a new error kind in `berth-errdefs` and `cri::code`.

pub mod cadvisor;
pub mod cli;
pub mod config;
pub mod cri;
pub mod deadline;
pub mod doctor;
pub mod h2fix;
pub mod install;
pub mod logging;
pub mod metrics;
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
        cli::Command::Install {
            host_root,
            print_labels,
        } => {
            let exe = std::env::current_exe().context("find berth's own path")?;
            if print_labels {
                let found = install::discover(&exe, &host_root);
                return write_stdout(&(install::labels(&found).join("\n") + "\n"));
            }
            let report = install::install(&exe, &host_root)?;
            let found = install::discover(&exe, &host_root);
            let mut out: Vec<String> = report.iter().map(|a| a.to_string()).collect();
            out.push(format!("handlers: {}", found.handlers.join(", ")));
            out.push(format!(
                "node labels: {}",
                install::labels(&found).join(" ")
            ));
            write_stdout(&(out.join("\n") + "\n"))
        }
        cli::Command::Uninstall { host_root } => {
            let report = install::uninstall(&host_root)?;
            let out: Vec<String> = report.iter().map(|a| a.to_string()).collect();
            if out.is_empty() {
                return write_stdout("nothing installed\n");
            }
            write_stdout(&(out.join("\n") + "\n"))
        }
        cli::Command::FuseHolder { socket } => {
            berth_lazy::holder::run(&socket).context("FUSE holder")
        }
        cli::Command::Doctor { output } => {
            let cfg = cli.effective_config()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("start the async runtime")?;
            let checks = rt.block_on(doctor::run(&cfg));
            match output {
                cli::DoctorOutput::Table => write_stdout(&doctor::render(&checks))?,
                cli::DoctorOutput::Json => write_stdout(
                    &(serde_json::to_string_pretty(&checks).context("render checks")? + "\n"),
                )?,
            }
            anyhow::ensure!(doctor::healthy(&checks), "the node is not ready for berth");
            Ok(())
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
