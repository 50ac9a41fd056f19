//! weft-s3: `weft-s3 --mds ADDRS --listen ADDR [--credentials FILE]
//! [--region R] [--domain D] [--tls-dir DIR] [--insecure]`.
//!
//! Order of events, each failing with a clear message: parse arguments
//! (exit 2); load the access keys and TLS identity, refuse plaintext on a
//! non-loopback address without --insecure (exit 1); reach the MDS within
//! 15 s (exit 1); make the hidden directory; listen; serve until SIGTERM or
//! SIGINT; store buffered data; exit 0.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use weft_client::{ClientOpts, Weft};
use weft_s3::config::{Args, Keys};
use weft_s3::service::Gateway;
use weft_s3::store::Store;

const PROBE_BUDGET: Duration = Duration::from_secs(15);

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(e) = run(args) {
        eprintln!("weft-s3: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let keys = Keys::load(args.credentials.as_deref())?;
    weft_proto::net::configure_dir(args.tls_dir.as_deref())?;
    if !args.listen.ip().is_loopback() && !args.insecure {
        return Err(format!(
            "refusing to serve S3 over plain HTTP on {}: listen on 127.0.0.1 behind a TLS proxy, or pass --insecure",
            args.listen
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("weft-s3")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        // No kernel caches to keep coherent and no push stream: every name
        // and attribute is asked of the MDS, so an object is exactly what the
        // mounts last closed.
        let opts = ClientOpts {
            mds_timeout: Duration::from_secs(args.mds_timeout_secs),
            attr_timeout: Duration::ZERO,
            entry_timeout: Duration::ZERO,
            cache_timeout: Duration::ZERO,
            // Memory per PUT stays a few MiB however large the object.
            file_dirty_limit: Some(args.write_buffer_mib.max(1) << 20),
            data_cache_mib: args.data_cache_mib,
            // A PUT's 200 means the object's name and size are on the MDS's
            // disk, as before close stopped waiting for it in weftfs.
            close_sync: true,
            ..Default::default()
        };
        let w = Weft::connect(&args.mds, &opts, PROBE_BUDGET).await?;
        w.start_periodic_flusher();
        w.start_keepalive();
        let store = Store::open(w.clone())
            .await
            .map_err(|e| format!("cannot make the gateway's directory /.weft-s3: {e}"))?;
        let gateway = Gateway::new(Arc::new(store), args.region.clone());
        let nkeys = keys.len();
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        // Clients send Host with the port unless it is the scheme's default.
        let mut domains = args.domain.clone();
        for d in &args.domain {
            if !d.contains(':') {
                domains.push(format!("{d}:{}", bound.port()));
            }
        }
        let service = weft_s3::server::service(gateway, keys, &domains)?;
        if let Some(p) = &args.addr_file {
            std::fs::write(p, bound.to_string())
                .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        }
        tracing::info!(%bound, mds = %args.mds, region = %args.region, keys = nkeys, "serving S3");
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
        };
        weft_s3::server::serve(listener, service, shutdown).await;
        w.flush_all()
            .await
            .map_err(|e| format!("some written data could not be stored: {e}"))?;
        let _ = w.release_all_locks().await;
        Ok(())
    })
}
