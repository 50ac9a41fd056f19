//! Startup and serving: lock the data directory, read the format file,
//! load the newest snapshot and replay the log after it (`datadir.rs`),
//! take the next term, schedule the purge
//! of inodes left unlinked-but-open by the previous run (after a session
//! timeout, so clients riding through the restart keep them), then serve
//! until SIGTERM/SIGINT, and checkpoint on the way out.

use crate::chunkds::Registry;
use crate::committer::{self, Proposal};
use crate::config::Config;
use crate::datadir::{lock_data_dir, read_or_create_format, recover, Format, FORMAT_FILE};
use crate::durable_file::write_durably;
use crate::service::{Committer, Mds};
use crate::snapshot::Checkpointer;
use crate::state::State;
use crate::wal::LogWriter;
use anyhow::Context;
use parking_lot::Mutex;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::RwLock;

/// Writes an address file (--addr-file, --http-addr-file) whole or not at all.
fn write_addr_file(path: &Path, addr: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .context("an address file needs a file name")?;
    Ok(write_durably(
        dir,
        &name.to_string_lossy(),
        addr.as_bytes(),
    )?)
}

pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    weft_proto::net::configure_dir(cfg.tls_dir.as_deref()).map_err(anyhow::Error::msg)?;
    weft_proto::net::check_listen(cfg.listen, cfg.insecure).map_err(anyhow::Error::msg)?;
    let exports = Arc::new(match &cfg.exports {
        Some(f) => crate::exports::Exports::load(f).map_err(anyhow::Error::msg)?,
        None => crate::exports::Exports::open_to_all(),
    });
    let caps = match &cfg.cap_key {
        Some(f) => Some(Arc::new(crate::service::Caps {
            keys: weft_proto::caps::KeyFile::load(f).map_err(anyhow::Error::msg)?,
            ttl: std::time::Duration::from_millis(cfg.cap_ttl_ms),
        })),
        None => None,
    };
    let _lock = lock_data_dir(&cfg.data)?;
    // The MDS always keeps its metrics (`weft stats` reads them through
    // Status); --http only serves them. A request costs a clock read more.
    weft_metrics::enable();
    let format = read_or_create_format(&cfg)?;
    if let Some(c) = &caps {
        c.keys.spawn_watcher(std::time::Duration::from_millis(500));
    }
    exports.spawn_watcher(std::time::Duration::from_millis(500));
    let guards = Guards { exports, caps };
    if cfg.node_id.is_some() {
        run_group(cfg, format, guards, shutdown).await
    } else {
        run_single(cfg, format, guards, shutdown).await
    }
}

/// Who may do what: export rules and the chunk capability key.
struct Guards {
    exports: Arc<crate::exports::Exports>,
    caps: Option<Arc<crate::service::Caps>>,
}

impl Guards {
    fn install(self, mds: &mut Mds) {
        mds.exports = self.exports;
        mds.caps = self.caps;
    }
}

/// The parts of an `Mds` both modes build alike.
fn mds_parts(
    cfg: &Config,
    state: Arc<RwLock<State>>,
    registry: Arc<Mutex<Registry>>,
    committer: Committer,
    log: crate::service::LogPosition,
    term: Arc<crate::term::Term>,
    (addr, group): (String, Option<Arc<crate::group::Group>>),
) -> Mds {
    Mds {
        state,
        registry,
        committer,
        replicas: cfg.replicas,
        heartbeat_ms: cfg.heartbeat_ms,
        leases: Arc::new(crate::leases::Leases::new(
            std::time::Duration::from_millis(cfg.lease_ms),
            cfg.min_replicas,
        )),
        repair: Default::default(),
        locks: Arc::new(Mutex::new(crate::locks::LockTable::new(
            std::time::Duration::from_secs(cfg.lock_expiry_secs.max(1)),
        ))),
        contacts: Default::default(),
        orphan_grace: std::time::Duration::from_secs(cfg.orphan_grace_secs),
        log,
        term,
        node_id: group.as_ref().map(|g| g.id).unwrap_or(1),
        addr,
        group,
        exports: Arc::new(crate::exports::Exports::open_to_all()),
        caps: None,
        unpacks: Default::default(),
        compactor: Arc::new(crate::service::compact::Compactor::new(
            crate::service::compact::CompactConfig {
                below: cfg.compact_below,
                bytes_per_sec: cfg.compact_mib_per_sec << 20,
                interval: std::time::Duration::from_secs(cfg.compact_interval_secs),
                idle: std::time::Duration::from_secs(cfg.compact_idle_secs),
                fault: cfg.test_compact_fault.clone(),
            },
        )),
    }
}

/// Background work every MDS runs, then the status page.
async fn start_background(mds: &Mds, cfg: &Config, sessions: Vec<u64>) -> anyhow::Result<()> {
    // Sessions known from the log get a full timeout from now to come back.
    crate::service::start_expiry(mds, sessions, cfg.session_timeout());
    crate::service::spawn_repair(
        mds.clone(),
        crate::repair::RepairConfig {
            interval: std::time::Duration::from_millis(cfg.heartbeat_ms),
            bytes_per_sec: cfg.repair_mib_per_sec << 20,
            parallel: cfg.repair_parallel,
        },
    );
    crate::service::compact::spawn(mds.clone());
    if let Some(http) = cfg.http {
        let bound = crate::status_page::serve(mds.clone(), http).await?;
        if let Some(path) = &cfg.http_addr_file {
            write_addr_file(path, &bound.to_string())?;
        }
    }
    Ok(())
}

async fn bind(cfg: &Config) -> anyhow::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves the MDS's gRPC services (and, in a group, `weft.Raft`) until `shutdown`.
async fn serve(
    mds: Mds,
    hub: Arc<crate::watch::Hub>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let max = weft_proto::MAX_MESSAGE;
    // The graceful shutdown waits for every open stream: mounts' pushes end
    // first, or a stop with a mount attached would never finish.
    let shutdown = {
        let hub = hub.clone();
        async move {
            shutdown.await;
            hub.close();
        }
    };
    let raft = mds.group.as_ref().map(|g| {
        weft_proto::pb::raft_server::RaftServer::new(crate::group::network::Service(
            g.raft.clone(),
            g.log_store(),
        ))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
    });
    weft_proto::net::server()
        .map_err(anyhow::Error::msg)?
        .add_service(
            weft_proto::pb::meta_server::MetaServer::new(mds.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(weft_proto::pb::coherence_server::CoherenceServer::new(
            crate::service::Watch {
                hub,
                mds: mds.clone(),
            },
        ))
        .add_service(weft_proto::pb::admin_server::AdminServer::new(mds.clone()))
        .add_optional_service(raft)
        .add_service(
            weft_proto::pb::master_server::MasterServer::new(mds)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .serve_with_incoming_shutdown(weft_proto::net::incoming(listener), shutdown)
        .await?;
    Ok(())
}

/// One node of an MDS group (`--node-id`, `--peers`).
async fn run_group(
    cfg: Config,
    format: Format,
    guards: Guards,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (listener, addr) = bind(&cfg).await?;
    // The address the group knows this node by: its --peers entry if any.
    let me = cfg.node_id.unwrap_or(1);
    let advertised = cfg
        .peers
        .as_deref()
        .and_then(|p| crate::config::parse_peers(p).ok())
        .and_then(|p| p.into_iter().find(|(i, _)| *i == me).map(|(_, a)| a))
        .unwrap_or_else(|| addr.to_string());
    let registry = Arc::new(Mutex::new(Registry::new(cfg.dead_after())));
    // Mounts of an earlier leader may hold strict-mode trust leases.
    let hub = Arc::new(crate::watch::Hub::new(true));
    let started = crate::group::start(
        &cfg,
        format.chunk_size,
        &advertised,
        hub.clone(),
        registry.clone(),
    )
    .await?;
    let group = started.group.clone();
    let marker = cfg.data.join(FORMAT_FILE);
    let durability = crate::wal::Durability::new(Arc::new(fs::File::open(&marker)?), 0);
    let log = crate::service::LogPosition {
        durability,
        epoch: 0,
        recovered: 0,
        replicated: true,
    };
    let term = Arc::new(crate::term::Term::new(0));
    let mut mds = mds_parts(
        &cfg,
        started.state.clone(),
        registry,
        Committer::Group(group.clone()),
        log,
        term,
        (advertised.clone(), Some(group.clone())),
    );
    guards.install(&mut mds);
    if let Some(path) = &cfg.addr_file {
        write_addr_file(path, &addr.to_string())?;
    }
    start_background(&mds, &cfg, Vec::new()).await?;
    crate::service::watch_leadership(mds.clone(), cfg.dead_after());
    tracing::info!(%addr, node = me, data = %cfg.data.display(), chunk_size = format.chunk_size, replicas = cfg.replicas, "weft-mds serving as a member of an MDS group");
    serve(mds, hub, listener, shutdown).await?;
    // The log holds everything on disk already; openraft stops its tasks.
    let _ = group.raft.shutdown().await;
    tracing::info!("weft-mds stopped");
    Ok(())
}

/// A single MDS: its own write-ahead log and checkpoints, as before groups.
async fn run_single(
    cfg: Config,
    format: Format,
    guards: Guards,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let term = Arc::new(crate::term::Term::next_start(&cfg.data, cfg.min_term)?);
    let wal_dir = cfg.data.join("wal");
    fs::create_dir_all(&wal_dir)?;
    let state = recover(&cfg.data, format.chunk_size, true)?;
    let writer = LogWriter::open(&wal_dir, state.applied_index + 1)?;
    let durability = writer.durability();
    durability.start_sync_thread(std::time::Duration::from_millis(cfg.test_sync_delay_ms));
    let log = crate::service::LogPosition {
        durability: durability.clone(),
        // Top bit clear: a group's epochs set it (`group::GROUP_EPOCH`).
        epoch: (rand::random::<u64>() >> 1) | 1,
        recovered: state.applied_index,
        replicated: false,
    };
    let orphans = state.ns.orphans();
    let sessions: Vec<u64> = state.sessions.ids().collect();
    let first_new_chunk = state.ns.next_chunk_id();
    // Mounts of a previous run may hold strict-mode trust leases.
    let restarted = state.applied_index > 0;
    let state = Arc::new(RwLock::new(state));
    let registry = Arc::new(Mutex::new(Registry::new(cfg.dead_after())));
    registry.lock().set_fresh_from(first_new_chunk);
    let hub = Arc::new(crate::watch::Hub::new(restarted));
    let checkpointer = Checkpointer::new(&cfg.data);
    let committer = Committer::Local(committer::Local::start(
        state.clone(),
        writer,
        registry.clone(),
        hub.clone(),
        Some((checkpointer.clone(), cfg.checkpoint_bytes)),
    ));

    // Inodes unlinked while open are kept for a session timeout: a client that
    // rode through the restart may still read or write them through its open
    // handle (its Release purges them, as before the restart). Whatever is
    // left by then belongs to clients that are gone.
    if !orphans.is_empty() {
        let (state, committer) = (state.clone(), committer.clone());
        let wait = cfg.session_timeout();
        tracing::info!(
            inodes = orphans.len(),
            secs = wait.as_secs(),
            "unlinked-but-open inodes from before the restart are kept for a session timeout"
        );
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            for ino in orphans {
                let record = state.read().await.ns.purge_record(ino);
                if let Some(record) = record {
                    let _ = committer
                        .propose(|done| Proposal::Internal { record, done })
                        .await;
                }
            }
        });
    }

    let (listener, addr) = bind(&cfg).await?;
    if let Some(path) = &cfg.addr_file {
        write_addr_file(path, &addr.to_string())?;
    }
    let mut mds = mds_parts(
        &cfg,
        state.clone(),
        registry,
        committer,
        log,
        term.clone(),
        (addr.to_string(), None),
    );
    guards.install(&mut mds);
    start_background(&mds, &cfg, sessions).await?;
    tracing::info!(%addr, term = term.get(), data = %cfg.data.display(), chunk_size = format.chunk_size, replicas = cfg.replicas, "weft-mds serving");
    serve(mds, hub, listener, shutdown).await?;
    // A clean stop leaves a snapshot, so the next start replays (almost) nothing.
    let st = state.read().await;
    // Never let a snapshot cover entries the log does not hold on disk: a
    // power loss could then cut the log short of it, leaving a gap after it.
    durability.wait(st.applied_index).await;
    let t = Instant::now();
    match tokio::task::block_in_place(|| checkpointer.checkpoint(&st)) {
        Ok(d) => tracing::info!(
            index = d.index,
            bytes = d.bytes,
            ms = t.elapsed().as_millis() as u64,
            "checkpoint at shutdown"
        ),
        Err(e) => tracing::error!("checkpoint at shutdown failed (the log is kept): {e:#}"),
    }
    tracing::info!("weft-mds stopped");
    Ok(())
}
