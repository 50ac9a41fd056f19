//! mds-group-bench: what the MDS group costs and how fast it fails over.
//!
//! 1. Throughput, one run, same machine: a single weft-mds and a group of
//!    three (on one machine: every node shares the two cores and the disk),
//!    each driven over `Meta` by C concurrent clients: creates/s (O_EXCL,
//!    each answered as a mount's create is: by the group once a majority
//!    has it written, by the single MDS once it is in its log, each
//!    fdatasyncing right behind) and stats/s, printed as group / single
//!    ratios (goals: creates >= 0.8x, stats >= 1x).
//! 2. Failover: a three-node group under a real mount; K times kill -9 the
//!    leader and time, from the kill, until a mkdir on the mount succeeds
//!    (the first metadata operation) and, at the same time in another
//!    thread, until a file is written and fsync'd (it needs a write lease
//!    from the new leader and the chunk daemon registered with it); p50,
//!    p99, max of each (goal: p99 <= 3 s for the metadata operation).
//!
//! Usage: mds-group-bench [--ops N] [--clients C] [--kills K]
//!   (defaults 20000, 64, 20). Needs the workspace binaries built in the
//!   same profile (`cargo build --release --workspace --bins`) and, for the
//!   failover part, root and /dev/fuse.

use futures::future::join_all;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_proto::pb;
use weft_testkit::mds::*;

struct Args {
    ops: u64,
    clients: u64,
    kills: usize,
}

fn args() -> Args {
    let mut a = Args {
        ops: 20_000,
        clients: 64,
        kills: 20,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).and_then(|s| s.parse::<u64>().ok());
        match (v[i].as_str(), val) {
            ("--ops", Some(n)) => a.ops = n,
            ("--clients", Some(n)) => a.clients = n.max(1),
            ("--kills", Some(n)) => a.kills = n as usize,
            _ => {
                eprintln!("usage: mds-group-bench [--ops N] [--clients C] [--kills K]");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

struct Client {
    c: RawMeta,
    session: u64,
    seq: AtomicU64,
}

impl Client {
    async fn call(&self, op: pb::meta_request::Op) -> Answer {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.c.call(self.session, seq, op).await
    }
}

/// Creates/s and stats/s against the MDS (or group leader) at `addr`.
async fn throughput(addr: &str, a: &Args, salt: u64) -> (f64, f64) {
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(RawMeta::connect(addr).await);
    }
    let clients: Vec<Arc<Client>> = (0..a.clients)
        .map(|i| {
            Arc::new(Client {
                c: conns[i as usize % conns.len()].clone(),
                session: (salt << 32) | (i + 1),
                seq: AtomicU64::new(1),
            })
        })
        .collect();
    let dirs: Vec<u64> = join_all(
        clients
            .iter()
            .enumerate()
            .map(|(i, c)| async move { ino_of(&c.call(mkdir(1, &format!("d{i}"))).await) }),
    )
    .await;
    let per = a.ops / a.clients;
    let run = |stat: bool| {
        let clients = clients.clone();
        let dirs = dirs.clone();
        async move {
            let t = Instant::now();
            let tasks = clients.iter().enumerate().map(|(i, c)| {
                let (c, d) = (c.clone(), dirs[i]);
                tokio::spawn(async move {
                    for k in 0..per {
                        let op = if stat {
                            lookup(d, &format!("f{k}"))
                        } else {
                            create(d, &format!("f{k}"), libc::O_EXCL)
                        };
                        if let Err(e) = c.call(op).await {
                            panic!("errno {e}");
                        }
                    }
                })
            });
            for r in join_all(tasks).await {
                r.unwrap();
            }
            (per * clients.len() as u64) as f64 / t.elapsed().as_secs_f64()
        }
    };
    let creates = run(false).await;
    let stats = run(true).await;
    (creates, stats)
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("weft-group-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    println!(
        "MDS group benchmark: {} ops per phase, {} clients, {} cores",
        a.ops,
        a.clients,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // 1. A single MDS.
    let mut single = MdsProc::start(&tmp.path().join("single"), &["--log-level", "warn"]);
    let (c1, s1) = rt.block_on(throughput(&single.addr, &a, 1));
    single.stop();
    println!("single MDS      creates {c1:>9.0}/s   stats {s1:>9.0}/s");

    // A group of three, node 1 leading (it starts the group).
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut nodes: Vec<std::process::Child> = (0..3)
        .map(|i| {
            std::process::Command::new(weft_testkit::bin("weft-mds"))
                .args([
                    "--listen",
                    &addrs[i],
                    "--data",
                    &tmp.path().join(format!("g{i}")).display().to_string(),
                    "--node-id",
                    &(i + 1).to_string(),
                    "--peers",
                    &peers,
                    "--log-level",
                    "warn",
                ])
                .spawn()
                .unwrap()
        })
        .collect();
    // Wait until node 1 answers as leader.
    let t = Instant::now();
    loop {
        if leader_answers(&rt, &addrs[0]) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no group leader");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (c3, s3) = rt.block_on(throughput(&addrs[0], &a, 2));
    for n in &mut nodes {
        let _ = n.kill();
        let _ = n.wait();
    }
    println!("group of three  creates {c3:>9.0}/s   stats {s3:>9.0}/s");
    println!(
        "group / single  creates {:.2}x (goal >= 0.8x)   stats {:.2}x (goal >= 1x)",
        c3 / c1,
        s3 / s1
    );

    // 2. Failover under a mount.
    if a.kills == 0 {
        return;
    }
    let mut c = weft_testkit::TestCluster::start_with(1, |s| {
        s.mds_nodes = 3;
        s.replicas = Some(1);
        s.log_level = "warn".into();
    });
    let mnt = c.mount();
    let (mut meta, mut file) = (Vec::new(), Vec::new());
    let data = weft_testkit::pattern(256 << 10, 3);
    for k in 0..a.kills {
        let leader = wait_leader(&c);
        c.cluster.mds_node(leader).crash();
        let t = Instant::now();
        let (m, f) = std::thread::scope(|s| {
            let m = s.spawn(|| {
                let p = mnt.join(format!("dir-{k}"));
                // EEXIST: an attempt the mount gave up on was applied.
                while std::fs::create_dir(&p).is_err() && !p.is_dir() {
                    assert!(t.elapsed() < Duration::from_secs(60), "no mkdir in 60 s");
                }
                t.elapsed().as_secs_f64()
            });
            let f = s.spawn(|| {
                let p = mnt.join(format!("file-{k}"));
                while write_synced(&p, &data).is_err() {
                    assert!(t.elapsed() < Duration::from_secs(60), "no write in 60 s");
                }
                t.elapsed().as_secs_f64()
            });
            (m.join().unwrap(), f.join().unwrap())
        });
        meta.push(m);
        file.push(f);
        c.cluster.start_mds_node(leader).unwrap();
        println!(
            "kill {k:>2}: leader {leader} -> first mkdir after {m:.2} s, first file written after {f:.2} s"
        );
    }
    for (what, times, goal) in [
        ("mkdir", &mut meta, " (goal: p99 <= 3 s)"),
        ("file written", &mut file, ""),
    ] {
        times.sort_by(|x, y| x.partial_cmp(y).unwrap());
        println!(
            "failover over {} kills, first {what}: p50 {:.2} s   p99 {:.2} s   max {:.2} s{goal}",
            times.len(),
            percentile(times, 0.5),
            percentile(times, 0.99),
            times[times.len() - 1]
        );
    }
}

/// Creates `p` with `data` and fsyncs it.
fn write_synced(p: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(p)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Whether the node at `addr` answers a read (it is the ready leader).
fn leader_answers(rt: &tokio::runtime::Runtime, addr: &str) -> bool {
    rt.block_on(async {
        let ep = weft_proto::net::endpoint(addr).unwrap();
        let Ok(ch) = ep.connect().await else {
            return false;
        };
        let req = pb::MetaRequest {
            session: 0,
            seq: 0,
            caller: Some(pb::Caller::default()),
            op: Some(getattr(1)),
            wait_durable: false,
        };
        pb::meta_client::MetaClient::new(ch).call(req).await.is_ok()
    })
}

fn wait_leader(c: &weft_testkit::TestCluster) -> u64 {
    let t = Instant::now();
    loop {
        // Each kill starts from a whole group: the restarted node follows
        // again (else the kill would leave no majority to elect in time).
        let whole = || {
            c.cluster.status().is_ok_and(|s| {
                s.mds.len() == 3
                    && s.mds
                        .iter()
                        .all(|n| n.role == "leader" || n.role == "follower")
            })
        };
        if let Some(l) = c.cluster.leader_id().filter(|_| whole()) {
            return l;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no leader");
        std::thread::sleep(Duration::from_millis(50));
    }
}
