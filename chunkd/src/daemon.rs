//! Starting and stopping a whole chunk daemon: the data directory's lock and
//! identity, the store, the gRPC server, and the background tasks (heartbeat,
//! corruption reports, scrubber). `main.rs` and the in-process tests both use
//! `start`.
//!
//! Invariants: while a `Daemon` lives it holds an exclusive flock on
//! `DIR/LOCK`, so no second daemon shares the directory; `DIR/chunkd.id` is
//! written once, durably (temp, fsync, rename, fsync dir), and read on every
//! later start so a restarted daemon is the same daemon even on a new port;
//! the `--addr-file` appears (atomically, by rename) only once the listener is
//! bound, holding the real bound address.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::heartbeat::{self, CorruptReporter, Identity};
use crate::pipeline::Peers;
use crate::scrub;
use crate::service::ChunkService;
use crate::store::{chunkfile::fsync_dir, Store};

const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running chunk daemon.
pub struct Daemon {
    /// The address the server is bound to.
    pub addr: SocketAddr,
    pub chunkd_id: u64,
    pub store: Arc<Store>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<JoinHandle<()>>,
    _lock: File,
}

/// Takes the exclusive lock on `dir/LOCK` (held as long as the File lives).
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("LOCK");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("data dir {}: cannot open {}", dir.display(), path.display()))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "data dir {} is in use by another weft-chunkd (lock {} is held)",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| {
                format!("data dir {}: cannot lock {}", dir.display(), path.display())
            })
        }
    }
    // The pid is only a hint for whoever finds the directory busy.
    let _ = f
        .set_len(0)
        .and_then(|_| writeln!(f, "{}", std::process::id()));
    Ok(f)
}

/// Writes `contents` to `path` atomically: a temp file beside it, fsync,
/// rename, fsync of the directory.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        std::fs::create_dir_all(dir)?;
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads `dir/chunkd.id`, creating it with a fresh random nonzero id if absent.
pub fn load_or_create_id(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("chunkd.id");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let id = u64::from_str_radix(s.trim(), 16)
                .ok()
                .filter(|&id| id != 0)
                .with_context(|| format!("{}: not a chunkd id: {:?}", path.display(), s.trim()))?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = loop {
                let id: u64 = rand::random();
                if id != 0 {
                    break id;
                }
            };
            write_atomic(&path, format!("{id:016x}\n").as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(chunkd_id = format_args!("{id:016x}"), "new chunkd identity");
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Size in bytes of the file system holding `dir` (the default capacity).
pub fn filesystem_size(dir: &Path) -> anyhow::Result<u64> {
    let st =
        nix::sys::statvfs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    Ok((st.blocks() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Starts a daemon from `cfg`: validates, locks the data dir, opens the store,
/// binds and serves, starts the background tasks, writes the address file.
pub async fn start(cfg: &Config) -> anyhow::Result<Daemon> {
    cfg.validate()?;
    weft_proto::net::configure_dir(cfg.tls_dir.as_deref()).map_err(anyhow::Error::msg)?;
    weft_proto::net::check_listen(cfg.listen, cfg.insecure).map_err(anyhow::Error::msg)?;
    let lock = lock_data_dir(&cfg.data)?;
    let chunkd_id = load_or_create_id(&cfg.data)?;
    let capacity = match cfg.capacity {
        Some(c) => c,
        None => filesystem_size(&cfg.data)?,
    };
    let store = {
        let dir = cfg.data.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir, capacity))
            .await?
            .with_context(|| format!("data dir {}: cannot open chunk store", cfg.data.display()))?
    };
    let store = Arc::new(store);

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let advertised = cfg.advertise.clone().unwrap_or_else(|| addr.to_string());

    let term = Arc::new(crate::term::TermGuard::load(&cfg.data)?);
    let masters = heartbeat::Masters::new(&cfg.mds, term.clone())?;
    let (reporter, report_task) = CorruptReporter::spawn(masters.clone(), chunkd_id);
    let peers = Arc::new(Peers::new());
    let order = Arc::new(crate::ordering::Sequencer::default());
    let caps = match &cfg.cap_key {
        Some(f) => {
            let k = weft_proto::caps::KeyFile::load(f).map_err(anyhow::Error::msg)?;
            k.spawn_watcher(Duration::from_millis(500));
            Some(k)
        }
        None => None,
    };
    let service = ChunkService::new(
        store.clone(),
        peers.clone(),
        reporter.clone(),
        order.clone(),
        term.clone(),
    )
    .with_caps(caps);
    let admin = crate::admin::AdminService::new(store.clone(), peers, order, term);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(
        weft_proto::net::server()
            .map_err(anyhow::Error::msg)?
            .add_service(service.space_server())
            .add_service(service.into_server())
            .add_service(admin.into_server())
            .serve_with_incoming_shutdown(weft_proto::net::incoming(listener), async {
                let _ = stop_rx.await;
            }),
    );

    let mut tasks = vec![report_task];
    tasks.push(tokio::spawn(heartbeat::run(
        store.clone(),
        masters,
        Identity {
            chunkd_id,
            addr: advertised.clone(),
            rack: cfg.rack.clone(),
            heartbeat_override: cfg.heartbeat_ms.map(Duration::from_millis),
        },
    )));
    if let Some(interval) = cfg.scrub_interval() {
        tasks.push(tokio::spawn(scrub::run(
            store.clone(),
            reporter,
            interval,
            cfg.scrub_bytes_per_sec(),
        )));
    }

    if let Some(http) = cfg.http {
        let registry = std::sync::Arc::new(crate::metrics::registry(store.clone()));
        let bound = weft_metrics::serve(http, registry, None, Default::default()).await?;
        if let Some(path) = &cfg.http_addr_file {
            write_atomic(path, bound.to_string().as_bytes())
                .with_context(|| format!("cannot write --http-addr-file {}", path.display()))?;
        }
    }
    if let Some(path) = &cfg.addr_file {
        write_atomic(path, addr.to_string().as_bytes())
            .with_context(|| format!("cannot write --addr-file {}", path.display()))?;
    }
    tracing::info!(
        %addr,
        advertised,
        chunkd_id = format_args!("{chunkd_id:016x}"),
        data = %cfg.data.display(),
        capacity,
        chunks = store.len(),
        mds = cfg.mds,
        "weft-chunkd serving"
    );
    Ok(Daemon {
        addr,
        chunkd_id,
        store,
        server,
        stop: Some(stop_tx),
        tasks,
        _lock: lock,
    })
}

impl Daemon {
    /// Serves until `stop` completes (then shuts down cleanly) or the server
    /// fails (an error).
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            r = &mut self.server => {
                self.abort_tasks();
                match r {
                    Ok(Ok(())) => bail!("gRPC server stopped unexpectedly"),
                    Ok(Err(e)) => Err(anyhow::Error::new(e).context("gRPC server failed")),
                    Err(e) => Err(anyhow::Error::new(e).context("gRPC server task failed")),
                }
            }
            () = stop => {
                self.shutdown().await;
                Ok(())
            }
        }
    }

    /// Stops serving (in-flight calls get a grace period) and ends the tasks.
    pub async fn shutdown(mut self) {
        self.abort_tasks();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!("connections still open after the grace period; closing");
                self.server.abort();
            }
        }
        tracing::info!("weft-chunkd stopped");
    }

    fn abort_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.abort_tasks();
        self.server.abort();
    }
}
