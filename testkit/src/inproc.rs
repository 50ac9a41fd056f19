//! A real weft cluster inside the test process — the real MDS
//! (`weft_mds::server::run`) and real chunk daemons (`weft_chunkd::start`) on
//! 127.0.0.1 ports of their own, each with its own temporary data directory —
//! for tests of libraries that talk to them (the client's data paths)
//! without FUSE, with each daemon's store at hand. Faults are real too: a
//! daemon shut down, a byte flipped in a replica file, a daemon with no room.
//! Built with `ClusterBuilder::start_in_process`.
//!
//! The daemons run on a runtime of their own, as they would in their own
//! processes: the MDS blocks its worker threads briefly (group commit), which
//! must not starve the code under test.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use weft_chunkd::Daemon;
use weft_proto::master_client::MasterClient;
use weft_proto::StatusReq;

use crate::{ChunkdSpec, ClusterBuilder};

pub struct InProcCluster {
    pub mds_addr: String,
    /// None once stopped with `stop_chunkd`.
    pub chunkds: Vec<Option<Daemon>>,
    chunkd_dirs: Vec<PathBuf>,
    mds_stop: Option<oneshot::Sender<()>>,
    mds_task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    dir: TempDir,
    rt: Option<tokio::runtime::Runtime>,
}

impl InProcCluster {
    /// The MDS (a silent daemon is dead after `dead_after`, 1 s unless set),
    /// then every chunk daemon of `b`; returns once the MDS counts them all
    /// alive.
    pub(crate) async fn start(b: ClusterBuilder) -> InProcCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mds_data = dir.path().join("mds");
        let addr_file = dir.path().join("mds.addr");
        let replicas = b.replicas.unwrap_or(b.chunkds.len().min(3) as u32);
        let dead_after = b.dead_after.unwrap_or(Duration::from_secs(1));
        let mut args = vec![
            "weft-mds".to_string(),
            "--listen=127.0.0.1:0".into(),
            format!("--data={}", mds_data.display()),
            format!("--addr-file={}", addr_file.display()),
            format!("--replicas={replicas}"),
            format!("--min-replicas={}", replicas.min(2)),
            "--heartbeat-ms=100".into(),
            format!("--dead-after-ms={}", dead_after.as_millis()),
        ];
        if let Some(cs) = b.chunk_size {
            args.push(format!("--chunk-size={cs}"));
        }
        let cfg = weft_mds::config::Config::parse_from(args);
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
        let mut mds_addr = String::new();
        crate::wait_until_async(
            "the MDS's address file",
            Duration::from_secs(10),
            async || {
                mds_addr = std::fs::read_to_string(&addr_file)
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                !mds_addr.is_empty()
            },
        )
        .await;

        let mut cluster = InProcCluster {
            mds_addr,
            chunkds: Vec::new(),
            chunkd_dirs: Vec::new(),
            mds_stop: Some(tx),
            mds_task: Some(mds_task),
            dir,
            rt: Some(rt),
        };
        for spec in &b.chunkds {
            cluster.add_chunkd(spec).await;
        }
        cluster.wait_alive(b.chunkds.len()).await;
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
            let len = std::fs::metadata(&path).expect("replica file").len();
            crate::flip_byte(&path, len - 1);
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
        crate::wait_until_async(
            &format!("the MDS to see {n} chunk daemons alive"),
            Duration::from_secs(5),
            async || {
                let st = m.status(StatusReq {}).await.expect("status").into_inner();
                st.chunkds.iter().filter(|c| c.alive).count() >= n
            },
        )
        .await;
    }
}

impl Drop for InProcCluster {
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
