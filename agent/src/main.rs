//! `berth`: a Kubernetes CRI node agent.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Invoked by a runc shim as its runsc engine (see berth_sandbox::runsc).
    if let Some(argv0) = std::env::args_os().next().map(std::path::PathBuf::from)
        && berth_sandbox::runsc::invoked_as_wrapper(&argv0)
    {
        berth_sandbox::runsc::main(&argv0, std::env::args().skip(1).collect());
    }
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
