//! weft-chunkd: parses the command line, sets up logging, starts the daemon
//! and runs it until SIGTERM or SIGINT (exit 0). Any startup failure — an
//! unusable data dir, a held lock, a port in use — is one line on stderr and
//! exit status 1, before anything is served.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;
use weft_chunkd::Config;

fn main() -> ExitCode {
    let argv = match weft_config::expand(&Config::command(), std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("weft-chunkd: error: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = Config::parse_from(argv);
    let filter = match EnvFilter::try_new(&cfg.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("weft-chunkd: error: --log-level {:?}: {e}", cfg.log_level);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    if let Err(e) = cfg.validate() {
        eprintln!("weft-chunkd: error: {e:#}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft-chunkd: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-chunkd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    // Handlers go in before the address file appears, so a supervisor that
    // signals as soon as it sees the file still gets a clean exit.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let daemon = weft_chunkd::start(&cfg).await?;
    daemon
        .run_until(async {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
        })
        .await
}
