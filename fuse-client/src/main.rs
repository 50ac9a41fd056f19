//! weftfs: mounts a weft cluster as a POSIX file system through FUSE.
//!
//! `weftfs MDS_ADDR MOUNTPOINT [-o OPTIONS] [-f]` (the argv mount.fuse3 uses).
//! Order of events, each failing with a clear message:
//! 1. parse arguments (bad usage or unknown option: exit 2);
//! 2. check the mount point is an existing directory (exit 1);
//! 3. without -f, fork (before any thread exists); the parent waits for the
//!    child's verdict through a pipe;
//! 4. start tokio, reach the MDS with GetAttr(root) within 15 s (exit 1);
//! 5. mount, finish the FUSE handshake, report ready;
//! 6. serve until unmounted (`umount`, `fusermount3 -u`, SIGTERM/SIGINT),
//!    store all buffered data, exit 0.

mod daemon;
mod fs;
mod mount;
mod options;
mod remount;
mod tuning;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tracing_subscriber::EnvFilter;

use weft_client::{cache, client, metrics};

use crate::daemon::ReadyPipe;
use crate::options::{parse_args, Cli, Parsed, HELP};

/// How long startup waits for the MDS to answer before giving up.
const PROBE_BUDGET: Duration = Duration::from_secs(15);

fn main() {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cli = match parse_args(args) {
        Ok(Parsed::Run(cli)) => *cli,
        Ok(Parsed::Help) => {
            print!("{HELP}");
            return;
        }
        Ok(Parsed::Version) => {
            println!("weftfs {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Err(e) => {
            eprintln!("weftfs: {e}");
            if !matches!(e, options::ArgError::Usage(_)) {
                eprintln!("{}", options::USAGE);
            }
            std::process::exit(2);
        }
    };
    let filter = match log_filter(&cli) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("weftfs: bad value for option 'log_level': {e}");
            std::process::exit(2);
        }
    };
    let (cli, log_file) = match prepare(cli) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("weftfs: {e}");
            std::process::exit(1);
        }
    };
    if cli.opts.remount {
        if let Err(e) = remount::remount(&cli.mountpoint, &cli.opts) {
            eprintln!("weftfs: {e}");
            std::process::exit(1);
        }
        return;
    }
    let ready = if cli.foreground {
        None
    } else {
        match daemon::daemonize(log_file.as_ref()) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("weftfs: cannot go to the background: {e}");
                std::process::exit(1);
            }
        }
    };
    init_logging(filter, log_file, cli.foreground);
    let mut ready = ready;
    match run(&cli, &mut ready) {
        Ok(()) => {
            tracing::info!("unmounted, exiting");
            std::process::exit(0);
        }
        Err(e) => {
            match ready.take() {
                Some(pipe) => {
                    tracing::error!("{e}");
                    pipe.fail(&e)
                }
                // Foreground logging without log= already goes to stderr.
                None if cli.opts.log.is_none() => eprintln!("weftfs: {e}"),
                None => {
                    tracing::error!("{e}");
                    eprintln!("weftfs: {e}")
                }
            }
            std::process::exit(1);
        }
    }
}

fn log_filter(cli: &Cli) -> Result<EnvFilter, String> {
    let spec = match &cli.opts.log_level {
        Some(l) => l.clone(),
        None => std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_string()),
    };
    EnvFilter::try_new(&spec).map_err(|e| format!("'{spec}': {e}"))
}

/// Checks the mount point, makes paths absolute (the daemon moves to /) and
/// opens the log file, so these errors reach the caller directly.
fn prepare(mut cli: Cli) -> Result<(Cli, Option<File>), String> {
    let mp = &cli.mountpoint;
    match std::fs::metadata(mp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("mount point {} is not a directory", mp.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("mount point {} does not exist", mp.display()))
        }
        Err(e) => return Err(format!("mount point {}: {e}", mp.display())),
    }
    cli.mountpoint = absolute(mp)?;
    if let Some(d) = &cli.opts.tls_dir {
        cli.opts.tls_dir = Some(absolute(d)?);
    }
    weft_proto::net::configure_dir(cli.opts.tls_dir.as_deref())?;
    let log = match &cli.opts.log {
        Some(p) => {
            let p = absolute(p)?;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .map_err(|e| format!("cannot open log file {}: {e}", p.display()))?;
            cli.opts.log = Some(p);
            Some(f)
        }
        None => None,
    };
    Ok((cli, log))
}

fn absolute(p: &Path) -> Result<PathBuf, String> {
    std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))
}

fn init_logging(filter: EnvFilter, log: Option<File>, foreground: bool) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let r = match log {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        None if foreground => builder.with_writer(std::io::stderr).try_init(),
        // A daemon without log=: stderr is /dev/null; log nothing.
        None => return,
    };
    if let Err(e) = r {
        eprintln!("weftfs: logging: {e}");
    }
}

/// Stop requests (signals) and the means to act on them once mounted.
#[derive(Default)]
struct Stopper {
    requested: bool,
    unmounter: Option<mount::Unmounter>,
}

impl Stopper {
    fn stop(this: &Mutex<Stopper>) {
        let mut s = this.lock();
        s.requested = true;
        if let Some(u) = s.unmounter.as_mut() {
            if let Err(e) = u.unmount() {
                tracing::error!(error = %e, "unmount failed");
            }
        }
    }
}

fn run(cli: &Cli, ready: &mut Option<ReadyPipe>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weftfs")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let stopper = Arc::new(Mutex::new(Stopper::default()));
    // Signals first, so a SIGTERM during startup is not the default (kill)
    // that would leave a dead mount behind.
    {
        let stopper = stopper.clone();
        let _guard = rt.enter();
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        rt.spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: unmounting"),
                    _ = int.recv() => tracing::info!("SIGINT: unmounting"),
                }
                let s = stopper.clone();
                let _ = tokio::task::spawn_blocking(move || Stopper::stop(&s)).await;
            }
        });
    }
    let w = rt.block_on(async {
        let w = client::Weft::connect(&cli.mds_addr, &cli.opts.client_opts(), PROBE_BUDGET).await?;
        w.start_periodic_flusher();
        w.start_keepalive();
        if let Some(addr) = cli.opts.http {
            let registry = Arc::new(metrics::registry(w.clone()));
            let bound = weft_metrics::serve(addr, registry, None, Default::default())
                .await
                .map_err(|e| format!("{e:#}"))?;
            if let Some(path) = &cli.opts.http_addr_file {
                std::fs::write(path, bound.to_string())
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
        }
        Ok::<_, String>(w)
    })?;
    if stopper.lock().requested {
        return Ok(());
    }
    let spec = mount::MountSpec::new(&cli.mountpoint, &cli.source, &cli.opts);
    let notifier = Arc::new(std::sync::OnceLock::new());
    let fs = fs::WeftFs::new(w.clone(), rt.handle().clone(), notifier.clone());
    let (session, unmounter) = mount::mount(fs, &spec)
        .map_err(|e| format!("cannot mount at {}: {e}", cli.mountpoint.display()))?;
    let _ = notifier.set(session.notifier());
    if let Err(e) = tuning::set_readahead(&cli.mountpoint, cli.opts.readahead_kb) {
        tracing::warn!(error = %e, "cannot set the mount's readahead window");
    }
    // Other mounts' changes, pushed by the MDS, invalidate our caches.
    cache::coherence::start(w.clone(), session.notifier(), rt.handle());
    tracing::info!(
        source = %spec.source,
        mountpoint = %cli.mountpoint.display(),
        fstype = %spec.fstype(),
        "mounted"
    );
    {
        let mut s = stopper.lock();
        s.unmounter = Some(unmounter);
        if s.requested {
            drop(s);
            Stopper::stop(&stopper);
        }
    }
    if let Some(p) = ready.take() {
        p.ready();
    }
    let r = session.run();
    // The session has ended: the mount is gone (or, after an error, going).
    if let Err(e) = &r {
        tracing::error!(error = %e, "FUSE session ended with an error");
        let _ = nix::mount::umount2(&cli.mountpoint, nix::mount::MntFlags::MNT_DETACH);
    }
    let flushed = rt.block_on(w.flush_all());
    if let Err(e) = rt.block_on(w.release_all_locks()) {
        tracing::warn!(error = %e, "could not release this mount's locks (they expire at the MDS)");
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    r.map_err(|e| format!("FUSE session failed: {e}"))?;
    flushed.map_err(|e| format!("some written data could not be stored: {e}"))
}
