//! Test-only: a real weft cluster inside the test process — the real MDS
//! (`weft_mds::server::run`) and real chunk daemons (`weft_chunkd::start`) on
//! 127.0.0.1 ports of their own, each with its own temporary data directory —
//! so the client's data paths (`Weft`) are tested against the components they
//! talk to in production, without FUSE. Faults are real too: a daemon shut
//! down, a byte flipped in a replica file, a daemon with no room.
//!
//! The daemons run on a runtime of their own, as they would in their own
//! processes: the MDS blocks its worker threads briefly (group commit), which
//! must not starve the client under test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use weft_chunkd::Daemon;
use weft_proto::master_client::MasterClient;
use weft_proto::StatusReq;

pub struct ChunkdSpec {
    pub rack: &'static str,
    /// `--capacity` in bytes; None is the whole disk.
    pub capacity: Option<u64>,
}

impl Default for ChunkdSpec {
    fn default() -> Self {
        ChunkdSpec {
            rack: "default",
            capacity: None,
        }
    }
}

pub struct RealCluster {
    pub mds_addr: String,
    /// None once stopped with `stop_chunkd`.
    pub chunkds: Vec<Option<Daemon>>,
    chunkd_dirs: Vec<PathBuf>,
    mds_stop: Option<oneshot::Sender<()>>,
    mds_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: TempDir,
    rt: Option<tokio::runtime::Runtime>,
}

impl RealCluster {
    /// An MDS keeping `replicas` copies of `chunk_size`-byte chunks, and one
    /// chunk daemon per spec; returns once the MDS counts them all alive.
    pub async fn start(replicas: u32, chunk_size: u64, specs: &[ChunkdSpec]) -> RealCluster {
        Self::start_with(replicas, chunk_size, specs, Duration::from_secs(1)).await
    }

    /// As `start`, with the MDS declaring a silent daemon dead after
    /// `dead_after` (which is also how long after its start the MDS waits for
    /// daemons to report before placing new chunks).
    pub async fn start_with(
        replicas: u32,
        chunk_size: u64,
        specs: &[ChunkdSpec],
        dead_after: Duration,
    ) -> RealCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mds_data = dir.path().join("mds");
        let addr_file = dir.path().join("mds.addr");
        let cfg = weft_mds::config::Config::parse_from([
            "weft-mds",
            "--listen=127.0.0.1:0",
            &format!("--data={}", mds_data.display()),
            &format!("--addr-file={}", addr_file.display()),
            &format!("--chunk-size={chunk_size}"),
            &format!("--replicas={replicas}"),
            &format!("--min-replicas={}", replicas.min(2)),
            "--heartbeat-ms=100",
            &format!("--dead-after-ms={}", dead_after.as_millis()),
        ]);
        cfg.validate().expect("mds config");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("daemons' runtime");
        let (tx, rx) = oneshot::channel::<()>();
        let mds_task = rt.spawn(weft_mds::server::run(cfg, async {
            let _ = rx.await;
        }));
        let mds_addr = wait_for_file(&addr_file).await;

        let mut cluster = RealCluster {
            mds_addr,
            chunkds: Vec::new(),
            chunkd_dirs: Vec::new(),
            mds_stop: Some(tx),
            mds_task: Some(mds_task),
            dir,
            rt: Some(rt),
        };
        for spec in specs {
            cluster.add_chunkd(spec).await;
        }
        cluster.wait_alive(specs.len()).await;
        cluster
    }

    /// Starts one more chunk daemon (it registers with the MDS on its own).
    pub async fn add_chunkd(&mut self, spec: &ChunkdSpec) -> usize {
        let i = self.chunkd_dirs.len();
        let data = self.dir.path().join(format!("chunkd{i}"));
        let mut cfg =
            weft_chunkd::Config::new("127.0.0.1:0".parse().unwrap(), &data, self.mds_addr.clone());
        cfg.rack = spec.rack.to_string();
        cfg.capacity = spec.capacity;
        cfg.heartbeat_ms = Some(100);
        cfg.scrub_interval = 0;
        let d = self
            .rt()
            .spawn(async move { weft_chunkd::start(&cfg).await })
            .await
            .expect("chunkd start task")
            .expect("chunkd starts");
        self.chunkds.push(Some(d));
        self.chunkd_dirs.push(data);
        i
    }

    pub fn chunkd(&self, i: usize) -> &Daemon {
        self.chunkds[i].as_ref().expect("chunkd is running")
    }

    /// Stops daemon `i` as a crash would look to its peers: it stops answering.
    pub async fn stop_chunkd(&mut self, i: usize) {
        if let Some(d) = self.chunkds[i].take() {
            self.rt()
                .spawn(d.shutdown())
                .await
                .expect("chunkd shutdown");
        }
    }

    /// Flips one byte of every replica file daemon `i` holds, inside the
    /// data (past the checksum header), as a failing disk would.
    pub fn corrupt_replicas(&self, i: usize) {
        let d = self.chunkd(i);
        for id in d.store.ids() {
            let path = d.store.chunk_path(id);
            let mut bytes = std::fs::read(&path).expect("read replica file");
            let at = bytes.len() - 1;
            bytes[at] ^= 0xff;
            std::fs::write(&path, bytes).expect("write replica file");
        }
    }

    /// Every replica's bytes, per daemon: (chunk id → bytes), read through
    /// the daemon's own store, which checks the checksums.
    pub fn replicas(&self, i: usize) -> std::collections::BTreeMap<u64, Vec<u8>> {
        let d = self.chunkd(i);
        d.store
            .summaries()
            .into_iter()
            .map(|s| {
                let bytes = d
                    .store
                    .read(s.id, s.version, 0, s.size as usize)
                    .expect("replica reads back");
                (s.id, bytes)
            })
            .collect()
    }

    fn rt(&self) -> &tokio::runtime::Handle {
        self.rt.as_ref().expect("runtime").handle()
    }

    async fn master(&self) -> MasterClient<Channel> {
        MasterClient::connect(format!("http://{}", self.mds_addr))
            .await
            .expect("connect to the MDS")
    }

    /// Waits until the MDS counts `n` chunk daemons alive.
    pub async fn wait_alive(&self, n: usize) {
        let mut m = self.master().await;
        for _ in 0..200 {
            let st = m.status(StatusReq {}).await.expect("status").into_inner();
            if st.chunkds.iter().filter(|c| c.alive).count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the MDS did not see {n} chunk daemons alive in 5 s");
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        let Some(rt) = self.rt.take() else { return };
        let guard = rt.enter();
        for d in self.chunkds.drain(..).flatten() {
            drop(d); // aborts its server and tasks
        }
        if let Some(tx) = self.mds_stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.mds_task.take() {
            t.abort();
        }
        drop(guard);
        // Dropping a runtime may not block inside the test's async context.
        rt.shutdown_background();
    }
}

async fn wait_for_file(path: &Path) -> String {
    for _ in 0..400 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return s.trim().to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} did not appear in 10 s", path.display());
}
