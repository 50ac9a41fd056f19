//! weft-mds: parse arguments, set up logging, then either run the server
//! until a signal or, with `--check` / `--dump`, inspect the data directory
//! offline and exit.

use clap::{CommandFactory, Parser};
use weft_mds::config::Config;

fn main() {
    let argv = weft_config::expand(&Config::command(), std::env::args_os().collect())
        .unwrap_or_else(|e| {
            eprintln!("weft-mds: {e}");
            std::process::exit(2);
        });
    let cfg = Config::parse_from(argv);
    if let Err(e) = cfg.validate() {
        eprintln!("weft-mds: {e}");
        std::process::exit(2);
    }
    if cfg.check {
        match weft_mds::inspect::check(&cfg.data) {
            Ok(summary) => {
                print!("{summary}");
                println!("{}: ok", cfg.data.display());
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("weft-mds: check of {} failed: {e:#}", cfg.data.display());
                std::process::exit(1);
            }
        }
    }
    if cfg.dump {
        let stdout = std::io::stdout();
        if let Err(e) = weft_mds::inspect::dump(&cfg.data, &mut stdout.lock()) {
            eprintln!("weft-mds: dump of {} failed: {e:#}", cfg.data.display());
            std::process::exit(1);
        }
        std::process::exit(0);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Plain text unless a person is watching: logs go to files and journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(async {
        // Handlers go in before anything else: a SIGTERM that arrives during
        // startup must still mean a clean stop (with its checkpoint), not death.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        weft_mds::server::run(cfg, shutdown).await
    });
    if let Err(e) = result {
        eprintln!("weft-mds: {e:#}");
        std::process::exit(1);
    }
}
