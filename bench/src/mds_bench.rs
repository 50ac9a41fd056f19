//! mds-bench: drives a real weft-mds over its gRPC `Meta` API with many
//! concurrent clients (fsync on: every mutation waits for the log) and prints
//! figures: creates/s, stats/s, lookups/s, renames/s, unlinks/s; MDS memory per
//! file at N files with one chunk each; restart time to serving (clean stop,
//! and after kill -9); log and snapshot size after N creates and N deletes.
//!
//! Usage: mds-bench [--files N] [--ops M] [--clients C] [--dir DIR] [--keep] [--packed]
//!   (defaults 1000000, 200000, 128, a temp dir under /var/tmp)
//! With --packed the memory phase builds N packed small files instead (create,
//! CommitPacked of a 4 KiB needle in the client's segment, close): what a tree
//! of small files costs the MDS.
//! Needs the workspace binaries built in the same profile
//! (`cargo build --release --workspace --bins`). A fake chunk daemon is
//! registered over the `Master` API so AllocChunk can place chunks; no data
//! moves (this measures the MDS only).

use futures::future::join_all;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_proto::pb;
use weft_proto::pb::meta_reply::Result as R;
use weft_proto::pb::meta_request::Op;
use weft_testkit::mds::*;

struct Args {
    files: u64,
    ops: u64,
    clients: u64,
    dir: Option<String>,
    keep: bool,
    packed: bool,
}

const USAGE: &str =
    "usage: mds-bench [--files N] [--ops M] [--clients C] [--dir DIR] [--keep] [--packed]
  --files N    files for the memory, restart and log-size phases (default 1000000)
  --ops M      operations per rate phase (default 200000)
  --clients C  concurrent clients (default 128)
  --dir DIR    where the MDS's data directory goes (default: a temp dir under /var/tmp)
  --keep       keep that directory afterwards
  --packed     the memory phase builds packed 4 KiB files (create, CommitPacked, close)";

/// Prints `why` and the usage, then exits 2 (bad input is no panic).
fn usage_exit(why: &str) -> ! {
    eprintln!("mds-bench: {why}\n{USAGE}");
    std::process::exit(2)
}

/// The number after `flag`, or the usage.
fn number(flag: &str, val: Option<&String>) -> u64 {
    match val.map(|v| v.parse::<u64>()) {
        Some(Ok(n)) => n,
        Some(Err(_)) => usage_exit(&format!("{flag} takes a number, not {:?}", val.unwrap())),
        None => usage_exit(&format!("{flag} takes a number")),
    }
}

fn args() -> Args {
    let mut a = Args {
        files: 1_000_000,
        ops: 200_000,
        clients: 128,
        dir: None,
        keep: false,
        packed: false,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1);
        match v[i].as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            "--files" => a.files = number("--files", val),
            "--ops" => a.ops = number("--ops", val),
            "--clients" => a.clients = number("--clients", val).max(1),
            "--dir" => {
                a.dir = Some(
                    val.cloned()
                        .unwrap_or_else(|| usage_exit("--dir takes a directory")),
                )
            }
            "--keep" => {
                a.keep = true;
                i += 1;
                continue;
            }
            "--packed" => {
                a.packed = true;
                i += 1;
                continue;
            }
            other => usage_exit(&format!("unknown argument {other}")),
        }
        i += 2;
    }
    a
}

fn rss_bytes(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn du(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}

/// One client: its own session and sequence numbers, like one mount.
struct Client {
    c: RawMeta,
    session: u64,
    seq: AtomicU64,
}

impl Client {
    async fn mutate(&self, op: Op) -> Answer {
        self.c
            .call(self.session, self.seq.fetch_add(1, Ordering::Relaxed), op)
            .await
    }
    async fn read(&self, op: Op) -> Answer {
        self.c.call(self.session, 0, op).await
    }
}

/// Runs `per_client(client index, k)` for k in 0..n/clients on every client
/// at once; returns ops/s.
async fn phase<F, Fut>(name: &str, clients: &[Arc<Client>], n: u64, f: F) -> f64
where
    F: Fn(Arc<Client>, u64, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let per = n / clients.len() as u64;
    let t = Instant::now();
    let tasks = clients.iter().enumerate().map(|(i, c)| {
        let (c, f) = (c.clone(), f.clone());
        tokio::spawn(async move {
            for k in 0..per {
                f(c.clone(), i as u64, k).await;
            }
        })
    });
    for r in join_all(tasks).await {
        r.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = (per * clients.len() as u64) as f64 / secs;
    println!(
        "{name:<10} {:>10.0} ops/s   ({} ops in {secs:.2} s)",
        rate,
        per * clients.len() as u64
    );
    rate
}

fn ok(a: &Answer, what: &str) {
    if let Err(e) = a {
        panic!("{what}: errno {e}");
    }
}

/// Bytes one 4 KiB needle takes in a segment (32-byte header, 64-byte alignment).
const NEEDLE: u64 = 4160;

/// A client's open segment: where its next needle goes.
#[derive(Default)]
struct Segment {
    ino: u64,
    chunk_id: u64,
    chunk_size: u64,
    next: u64,
}

impl Segment {
    /// (segment ino, its chunk id, offset) for a needle of `len` bytes,
    /// creating a new segment when this one is full.
    async fn place(&mut self, c: &Client, len: u64) -> (u64, u64, u64) {
        if self.ino == 0 || self.next + len > self.chunk_size {
            self.ino = ino_of(&c.mutate(Op::CreateSegment(pb::CreateSegmentReq {})).await);
            let r = c
                .mutate(Op::AllocChunk(pb::AllocChunkReq {
                    ino: self.ino,
                    index: 0,
                    ..Default::default()
                }))
                .await;
            match r {
                Ok(R::ChunkWrite(w)) => {
                    self.chunk_id = w.chunk.expect("a chunk").chunk_id;
                    self.chunk_size = w.chunk_size.min(64 << 20);
                }
                other => panic!("alloc_chunk of a segment: {other:?}"),
            }
            self.next = 0;
        }
        let at = self.next;
        self.next += len;
        (self.ino, self.chunk_id, at)
    }
}

async fn fake_chunkd(addr: String) {
    let mut m = pb::master_client::MasterClient::connect(format!("http://{addr}"))
        .await
        .expect("connect Master");
    let reg = pb::RegisterReq {
        chunkd_id: 4242,
        addr: "127.0.0.1:1".into(),
        rack: String::new(),
        capacity: 1 << 50,
        used: 0,
        free: None,
        chunks: vec![],
    };
    m.register(reg.clone()).await.expect("register");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = m
                .heartbeat(pb::HeartbeatReq {
                    chunkd_id: 4242,
                    capacity: 1 << 50,
                    used: 0,
                    free: None,
                    added: vec![],
                    removed: vec![],
                    ..Default::default()
                })
                .await;
            if let Ok(r) = r {
                if r.into_inner().reregister {
                    let _ = m.register(reg.clone()).await;
                }
            }
        }
    });
}

async fn connect_clients(addr: &str, n: u64, salt: u64) -> Vec<Arc<Client>> {
    // A few connections, shared by many clients (HTTP/2 multiplexes).
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(RawMeta::connect(addr).await);
    }
    (0..n)
        .map(|i| {
            Arc::new(Client {
                c: conns[i as usize % conns.len()].clone(),
                session: (salt << 32) | (i + 1),
                seq: AtomicU64::new(1),
            })
        })
        .collect()
}

/// The release of one write open of `ino`.
fn release(ino: u64) -> Op {
    Op::Release(pb::ReleaseReq {
        ino,
        write: true,
        more: Vec::new(),
        held: false,
        atimes: Vec::new(),
    })
}

fn main() {
    let a = args();
    let tmp = tempfile::Builder::new()
        .prefix("weft-mds-bench-")
        .tempdir_in(a.dir.clone().unwrap_or_else(|| "/var/tmp".into()))
        .expect("temp dir");
    let data = tmp.path().join("mds");
    let mut mds = MdsProc::start(&data, &["--log-level", "info"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "weft-mds benchmark: {} clients, fsync on, {} cores; data in {}",
        a.clients,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        data.display()
    );
    let base_rss = rss_bytes(mds.pid().unwrap());
    rt.block_on(async {
        fake_chunkd(mds.addr.clone()).await;
        let clients = connect_clients(&mds.addr, a.clients, 1).await;
        // One directory per client, like many users each in their own tree.
        let dirs: Arc<Vec<u64>> =
            Arc::new(
                join_all(clients.iter().enumerate().map(|(i, c)| async move {
                    ino_of(&c.mutate(mkdir(1, &format!("d{i}"))).await)
                }))
                .await,
            );
        let n = a.ops;
        let d = dirs.clone();
        let inos = Arc::new(std::sync::Mutex::new(Vec::new()));
        let got = inos.clone();
        phase("creates", &clients, n, move |c, i, k| {
            let (d, got) = (d.clone(), got.clone());
            async move {
                let r = c
                    .mutate(create(d[i as usize], &format!("f{k}"), libc::O_EXCL))
                    .await;
                got.lock().unwrap().push(ino_of(&r));
            }
        })
        .await;
        // Close them (create opens), so unlinks below really free the inodes.
        let inos = Arc::new(std::mem::take(&mut *inos.lock().unwrap()));
        let per = inos.len() as u64 / a.clients;
        phase("closes", &clients, per * a.clients, move |c, i, k| {
            let inos = inos.clone();
            async move {
                let ino = inos[(i * per + k) as usize];
                ok(&c.mutate(release(ino)).await, "release");
            }
        })
        .await;
        let d = dirs.clone();
        phase("stats", &clients, n * 5, move |c, i, k| {
            let d = d.clone();
            async move {
                // Alternate between a directory and the root: always present.
                let ino = if k % 2 == 0 { d[i as usize] } else { 1 };
                ok(&c.read(getattr(ino)).await, "getattr");
            }
        })
        .await;
        let d = dirs.clone();
        let per = n / a.clients;
        phase("lookups", &clients, n * 5, move |c, i, k| {
            let d = d.clone();
            async move {
                ok(
                    &c.read(lookup(d[i as usize], &format!("f{}", k % per)))
                        .await,
                    "lookup",
                );
            }
        })
        .await;
        let d = dirs.clone();
        phase("renames", &clients, n, move |c, i, k| {
            let d = d.clone();
            async move {
                let dir = d[i as usize];
                ok(
                    &c.mutate(rename(dir, &format!("f{k}"), dir, &format!("r{k}")))
                        .await,
                    "rename",
                );
            }
        })
        .await;
        let d = dirs.clone();
        phase("unlinks", &clients, n, move |c, i, k| {
            let d = d.clone();
            async move {
                ok(
                    &c.mutate(unlink(d[i as usize], &format!("r{k}"))).await,
                    "unlink",
                );
            }
        })
        .await;
    });

    // Memory: N files with one chunk each (create, allocate its chunk, close),
    // or with --packed N packed small files (create, CommitPacked, close).
    let pid = mds.pid().unwrap();
    let before = rss_bytes(pid);
    let files = a.files;
    let t = Instant::now();
    let shape = if a.packed {
        "packed 4 KiB file"
    } else {
        "file with one chunk"
    };
    let packed = a.packed;
    rt.block_on(async {
        let clients = connect_clients(&mds.addr, a.clients, 2).await;
        let dirs: Arc<Vec<u64>> =
            Arc::new(
                join_all(clients.iter().enumerate().map(|(i, c)| async move {
                    ino_of(&c.mutate(mkdir(1, &format!("m{i}"))).await)
                }))
                .await,
            );
        let segments: Arc<Vec<tokio::sync::Mutex<Segment>>> = Arc::new(
            clients
                .iter()
                .map(|_| tokio::sync::Mutex::new(Segment::default()))
                .collect(),
        );
        let d = dirs.clone();
        phase(
            if packed {
                "create+commit-packed+close"
            } else {
                "create+alloc-chunk+close"
            },
            &clients,
            files,
            move |c, i, k| {
                let (d, segments) = (d.clone(), segments.clone());
                async move {
                    let ino = ino_of(
                        &c.mutate(create(d[i as usize], &format!("{k:08}"), libc::O_EXCL))
                            .await,
                    );
                    if packed {
                        // Each client appends to its own segment, as a mount does.
                        let mut seg = segments[i as usize].lock().await;
                        let (segment, chunk_id, offset) = seg.place(&c, NEEDLE).await;
                        let r = c
                            .mutate(Op::CommitPacked(pb::CommitPackedReq {
                                ino,
                                segment,
                                chunk_id,
                                offset,
                                len: 4096,
                                end: 4096,
                                then_setattr: Vec::new(),
                            }))
                            .await;
                        ok(&r, "commit_packed");
                    } else {
                        let r = c
                            .mutate(Op::AllocChunk(pb::AllocChunkReq {
                                ino,
                                index: 0,
                                ..Default::default()
                            }))
                            .await;
                        ok(&r, "alloc_chunk");
                    }
                    ok(&c.mutate(release(ino)).await, "release");
                }
            },
        )
        .await;
    });
    let after = rss_bytes(pid);
    println!(
        "memory     {} x {shape}: MDS RSS {} at start, {} before, {} after: {:.0} bytes/file (built in {:.0} s)",
        files,
        mib(base_rss),
        mib(before),
        mib(after),
        after.saturating_sub(before) as f64 / files as f64,
        t.elapsed().as_secs_f64()
    );

    // Restart to serving: after kill -9 (snapshot + log tail) and after a clean stop.
    let wal = data.join("wal");
    let snap = data.join("snapshot");
    println!(
        "on disk    log {}, snapshot {} (before restarts)",
        mib(du(&wal)),
        mib(du(&snap))
    );
    mds.kill9();
    let t = Instant::now();
    mds.restart().expect("restart after kill -9");
    println!(
        "restart    after kill -9: serving in {:.2} s ({} files)",
        t.elapsed().as_secs_f64(),
        files
    );
    let t = Instant::now();
    mds.stop();
    let stop_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    mds.restart().expect("restart after a clean stop");
    println!(
        "restart    after a clean stop (checkpoint took {stop_s:.2} s): serving in {:.2} s; RSS {}",
        t.elapsed().as_secs_f64(),
        mib(rss_bytes(mds.pid().unwrap()))
    );

    // N deletes: the log and snapshot must shrink back to the live namespace.
    rt.block_on(async {
        let clients = connect_clients(&mds.addr, a.clients, 3).await;
        let dirs: Arc<Vec<u64>> =
            Arc::new(
                join_all(clients.iter().enumerate().map(|(i, c)| async move {
                    ino_of(&c.read(lookup(1, &format!("m{i}"))).await)
                }))
                .await,
            );
        phase("unlinks(N)", &clients, files, move |c, i, k| {
            let d = dirs.clone();
            async move {
                ok(
                    &c.mutate(unlink(d[i as usize], &format!("{k:08}"))).await,
                    "unlink",
                );
            }
        })
        .await;
    });
    println!(
        "on disk    after {files} creates + {files} deletes, running: log {}, snapshot {}",
        mib(du(&wal)),
        mib(du(&snap))
    );
    mds.stop();
    println!(
        "on disk    after a clean stop: log {}, snapshot {}",
        mib(du(&wal)),
        mib(du(&snap))
    );
    if a.keep {
        println!(
            "kept {} (MDS log: {})",
            tmp.path().display(),
            mds.log.display()
        );
        std::mem::forget(tmp);
    }
}
