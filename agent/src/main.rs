//! `berth`: a Kubernetes CRI node agent.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = berth::cli::Cli::parse();
    match berth::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Logging may not be up (a config error), so the reason goes to stderr directly.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("berth: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
