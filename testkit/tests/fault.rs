//! Chunk fault tolerance with real processes on loopback: a daemon killed
//! mid-write, a flipped byte on disk, a primary paused past its lease, a
//! daemon that comes back stale, and a daemon that fills up.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weft_proto::pb;
use weft_testkit::{
    flip_byte, pattern, poll_until, read_all, sha256_hex, wait_until, weft_cmd, TestCluster,
};

const MIB: u64 = 1 << 20;

fn fsck_exit(addr: &str) -> (i32, String) {
    let out = weft_cmd().args(["fsck", "--mds", addr]).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

/// Every replica file (`.chunk`) under a daemon's data directory.
fn chunk_files(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(data.join("chunks")) else {
        return out;
    };
    for sub in rd.flatten() {
        for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "chunk") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// (chunk id, version) from a replica file's header.
fn header(path: &Path) -> (u64, u64) {
    let f = fs::File::open(path).unwrap();
    let mut b = [0u8; 28];
    f.read_exact_at(&mut b, 0).unwrap();
    (
        u64::from_le_bytes(b[12..20].try_into().unwrap()),
        u64::from_le_bytes(b[20..28].try_into().unwrap()),
    )
}

/// Drops the kernel's page cache so reads go to weft again.
fn drop_caches() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn chunk_client(addr: &str) -> pb::chunk_client::ChunkClient<tonic::transport::Channel> {
    let ch = weft_proto::net::endpoint(addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::chunk_client::ChunkClient::new(ch).max_decoding_message_size(weft_proto::MAX_MESSAGE)
}

#[test]
fn kill9_of_a_daemon_mid_write_loses_nothing_and_heals() {
    let mut tc = TestCluster::start_with(4, |s| {
        s.chunk_size = Some(4 * MIB);
        s.replicas = Some(3);
        s.lease_ms = Some(3000);
    });
    let mnt = tc.mount();
    let data = pattern(300 * MIB as usize, 11);
    let want = sha256_hex(&data);
    let path = mnt.join("big");
    let p2 = path.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut f = fs::File::create(&p2)?;
        for piece in data.chunks(MIB as usize) {
            f.write_all(piece)?;
        }
        f.sync_all()
    });
    wait_until("100 MiB written", Duration::from_secs(120), || {
        fs::metadata(&path).map(|m| m.len()).unwrap_or(0) >= 100 * MIB
    });
    tc.cluster.chunkds[0].crash();
    if let Err(e) = writer.join().unwrap() {
        let log = fs::read_to_string(&tc.cluster.mounts[0].proc.log).unwrap_or_default();
        let mds = fs::read_to_string(&tc.cluster.mds.log).unwrap_or_default();
        let pick = |t: &str| {
            t.lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("lease"))
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "the write failed: {e}\nweftfs:\n{}\nmds:\n{}",
            pick(&log),
            pick(&mds)
        );
    }
    drop_caches();
    assert_eq!(sha256_hex(&read_all(&path)), want, "bytes read back differ");

    let t = Instant::now();
    let f = tc
        .cluster
        .wait_replicated(Duration::from_secs(60))
        .expect("back to full replication within a minute");
    eprintln!("full replication {:?} after the write", t.elapsed());
    assert_eq!(f.chunks, 75);
    let s = tc.cluster.status().unwrap();
    assert_eq!(s.chunkds.iter().filter(|d| d.alive).count(), 3);
    assert_eq!((s.under_replicated, s.missing), (0, 0));
    let (code, out) = fsck_exit(&tc.mds_addr());
    assert_eq!(code, 0, "{out}");
    drop_caches();
    assert_eq!(sha256_hex(&read_all(&path)), want);
}

#[test]
fn a_flipped_byte_is_never_served_and_the_replica_is_replaced() {
    let mut tc = TestCluster::start_with(4, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(3);
        s.lease_ms = Some(2000);
        s.scrub_interval = Some(2);
    });
    let mnt = tc.mount();
    let data = pattern(8 * MIB as usize, 3);
    fs::write(mnt.join("f"), &data).unwrap();
    tc.cluster
        .wait_replicated(Duration::from_secs(30))
        .expect("replicated");
    // Flip one byte in the data region of one replica (header is 4 KiB for 1 MiB chunks).
    // Any daemon holding a replica: placement follows free space, which on
    // one shared disk need not spread 8 chunks over all four daemons.
    let victim = tc
        .cluster
        .chunkds
        .iter()
        .find_map(|c| chunk_files(&c.data).into_iter().next())
        .expect("some daemon holds a replica");
    let (chunk_id, _) = header(&victim);
    flip_byte(&victim, 4096 + 1000);
    for _ in 0..5 {
        drop_caches();
        assert_eq!(
            sha256_hex(&read_all(&mnt.join("f"))),
            sha256_hex(&data),
            "bad bytes served"
        );
    }
    // The scrubber (or a read) finds it; the MDS drops it and copies a good one.
    wait_until(
        "a good copy to replace the corrupt replica",
        Duration::from_secs(60),
        || {
            tc.cluster.status().is_ok_and(|s| s.copies_done >= 1)
                && tc.cluster.fsck().is_ok_and(|f| f.problems.is_empty())
        },
    );
    // Wherever the chunk's replicas are now, each one reads back whole.
    let rt = runtime();
    for c in &tc.cluster.chunkds {
        for p in chunk_files(&c.data) {
            let (id, version) = header(&p);
            if id != chunk_id {
                continue;
            }
            let got = rt.block_on(async {
                chunk_client(&c.addr)
                    .await
                    .read(pb::ReadReq {
                        chunk_id: id,
                        version,
                        offset: 0,
                        length: MIB as u32,
                        cap: tc.cap(id, version, false),
                    })
                    .await
            });
            assert!(got.is_ok(), "{}: {:?}", p.display(), got.err());
        }
    }
    let (code, out) = fsck_exit(&tc.mds_addr());
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_stale_daemon_is_never_served_and_its_replicas_go() {
    let mut tc = TestCluster::start_with(3, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(3);
        s.lease_ms = Some(1500);
    });
    let mnt = tc.mount();
    let old = pattern(4 * MIB as usize, 5);
    fs::write(mnt.join("f"), &old).unwrap();
    tc.cluster
        .wait_replicated(Duration::from_secs(30))
        .expect("replicated");
    assert_eq!(chunk_files(&tc.cluster.chunkds[0].data).len(), 4);

    tc.cluster.chunkds[0].stop(Duration::from_secs(5));
    wait_until("daemon 1 declared dead", Duration::from_secs(10), || {
        tc.cluster
            .status()
            .is_ok_and(|s| s.chunkds.iter().filter(|d| d.alive).count() == 2)
    });
    // A duration: the first write's leases end (leases run out by the clock, lease_ms).
    std::thread::sleep(Duration::from_millis(1600));
    // Rewrite in place (same chunks): the two live replicas take a new version.
    let new = pattern(4 * MIB as usize, 6);
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("f"))
            .unwrap();
        f.write_all_at(&new, 0).unwrap();
        f.sync_all().unwrap();
    }
    tc.cluster.start_chunkd(0).unwrap();
    tc.cluster.wait_alive(3, Duration::from_secs(20)).unwrap();
    for _ in 0..5 {
        drop_caches();
        assert_eq!(
            sha256_hex(&read_all(&mnt.join("f"))),
            sha256_hex(&new),
            "stale bytes served"
        );
    }
    // Its old replicas are deleted (and fresh copies made at the new version).
    wait_until(
        "no stale replica left on the returning daemon",
        Duration::from_secs(60),
        || {
            tc.cluster.fsck().is_ok_and(|f| f.problems.is_empty())
                && chunk_files(&tc.cluster.chunkds[0].data)
                    .iter()
                    .all(|p| header(p).1 >= 2)
        },
    );
    let stale: Vec<_> = chunk_files(&tc.cluster.chunkds[0].data)
        .iter()
        .map(|p| header(p))
        .filter(|(_, v)| *v < 2)
        .collect();
    assert!(stale.is_empty(), "{stale:?}");
    drop_caches();
    assert_eq!(sha256_hex(&read_all(&mnt.join("f"))), sha256_hex(&new));
}

#[test]
fn a_primary_paused_past_its_lease_gets_no_late_write_accepted() {
    let mut tc = TestCluster::start_with(3, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(3);
        s.lease_ms = Some(1500);
    });
    let mnt = tc.mount();
    let first = pattern(MIB as usize, 8);
    fs::write(mnt.join("f"), &first).unwrap();
    tc.cluster
        .wait_replicated(Duration::from_secs(30))
        .expect("replicated");
    let files = chunk_files(&tc.cluster.chunkds[0].data);
    assert_eq!(files.len(), 1);
    let (chunk_id, version) = header(&files[0]);
    let addrs: Vec<String> = tc.cluster.chunkds.iter().map(|c| c.addr.clone()).collect();
    // The lease's term is current: only the version can refuse the write.
    let term = tc.cluster.status().unwrap().mds[0].term;

    let rt = runtime();
    // The zombie: daemon 1 as primary of a write at the old version, down the
    // old pipeline. The connection is up before it is paused; the request then
    // sits in its socket until it wakes.
    let mut zombie = rt.block_on(chunk_client(&addrs[0]));
    tc.cluster.chunkds[0].signal(nix::sys::signal::Signal::SIGSTOP);
    // kill(2) returns before every thread of the daemon has stopped: wait for
    // the stop, or the "late" write may be served before it.
    let pid = tc.cluster.chunkds[0].pid().expect("chunkd pid");
    wait_until("the daemon stopped", Duration::from_secs(10), || {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
            st.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    });
    // The zombie held a write capability for its old lease.
    let zombie_cap = tc.cap(chunk_id, version, true);
    let late = rt.spawn(async move {
        zombie
            .write(pb::WriteReq {
                chunk_id,
                version,
                lease_epoch: version,
                offset: 0,
                data: vec![0xEE; 16 << 10].into(),
                chain: vec![addrs[1].clone(), addrs[2].clone()],
                sync: false,
                punch: false,
                serial: 0,
                punch_length: 0,
                term,
                cap: zombie_cap,
                source: None,
            })
            .await
    });
    wait_until(
        "the paused daemon declared dead",
        Duration::from_secs(10),
        || {
            tc.cluster
                .status()
                .is_ok_and(|s| s.chunkds.iter().filter(|d| d.alive).count() == 2)
        },
    );
    // A duration: past any lease it held (leases run out by the clock, lease_ms).
    std::thread::sleep(Duration::from_millis(1600));
    // Another client writes through a new primary.
    let second = pattern(MIB as usize, 9);
    {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("f"))
            .unwrap();
        f.write_all_at(&second, 0).unwrap();
        f.sync_all().unwrap();
    }
    tc.cluster.chunkds[0].signal(nix::sys::signal::Signal::SIGCONT);
    let r = rt.block_on(late).unwrap();
    let status = r.expect_err("the old primary's late write must be refused");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");

    drop_caches();
    assert_eq!(sha256_hex(&read_all(&mnt.join("f"))), sha256_hex(&second));
    // All replicas end up at the current version with identical bytes.
    tc.cluster
        .wait_replicated(Duration::from_secs(60))
        .expect("replicated again");
    wait_until(
        "the zombie's stale replica replaced",
        Duration::from_secs(30),
        || {
            tc.cluster
                .chunkds
                .iter()
                .all(|c| chunk_files(&c.data).iter().all(|p| header(p).1 > version))
        },
    );
    let mut hashes = Vec::new();
    for c in &tc.cluster.chunkds {
        for p in chunk_files(&c.data) {
            let (id, v) = header(&p);
            let got = rt
                .block_on(async {
                    chunk_client(&c.addr)
                        .await
                        .read(pb::ReadReq {
                            chunk_id: id,
                            version: v,
                            offset: 0,
                            length: MIB as u32,
                            cap: tc.cap(id, v, false),
                        })
                        .await
                })
                .unwrap()
                .into_inner()
                .data;
            hashes.push(sha256_hex(&got));
        }
    }
    assert_eq!(hashes.len(), 3);
    assert!(
        hashes.iter().all(|h| *h == sha256_hex(&second)),
        "replicas differ"
    );
}

#[test]
fn a_full_daemon_is_avoided_and_writes_carry_on() {
    // Three daemons, three replicas: every chunk wants the small one too,
    // until it is full; then writes carry on with the two others.
    let cap = 4 * MIB;
    let mut tc = TestCluster::start_with(3, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(3);
        s.lease_ms = Some(1500);
        s.capacities = vec![None, None, Some(cap)];
    });
    let mnt = tc.mount();
    let data = pattern(16 * MIB as usize, 12);
    fs::write(mnt.join("f"), &data).expect("writes carry on elsewhere");
    drop_caches();
    assert_eq!(sha256_hex(&read_all(&mnt.join("f"))), sha256_hex(&data));
    let small_id = tc
        .cluster
        .status()
        .unwrap()
        .chunkds
        .iter()
        .find(|d| d.capacity == cap)
        .unwrap()
        .id;
    // Once the heartbeats are in: the small daemon is full and within its
    // capacity, every chunk has its two other copies, none is missing.
    wait_until("the counts to settle", Duration::from_secs(20), || {
        tc.cluster.status().is_ok_and(|s| {
            let small = s.chunkds.iter().find(|d| d.id == small_id).unwrap();
            s.chunks == 16 && s.missing == 0 && s.under_replicated == 16 - small.chunks
        })
    });
    let s = tc.cluster.status().unwrap();
    let small = s.chunkds.iter().find(|d| d.id == small_id).unwrap();
    assert!(small.used <= cap, "{small:?}");
    assert!(
        (1..=4).contains(&small.chunks),
        "the small daemon filled up: {small:?}"
    );
    for d in s.chunkds.iter().filter(|d| d.id != small_id) {
        assert_eq!(d.chunks, 16, "{d:?}");
    }
    let (code, out) = fsck_exit(&tc.mds_addr());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("2 of 3") && !out.contains("MISSING"), "{out}");
}

#[test]
fn drain_moves_every_replica_off_a_daemon() {
    let mut tc = TestCluster::start_with(4, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(3);
        s.lease_ms = Some(1500);
    });
    let mnt = tc.mount();
    let data = pattern(12 * MIB as usize, 21);
    fs::write(mnt.join("f"), &data).unwrap();
    tc.cluster
        .wait_replicated(Duration::from_secs(30))
        .expect("replicated");
    let victim = tc.cluster.chunkds[0].addr.clone();
    let out = weft_cmd()
        .args(["drain", "--mds", &tc.mds_addr(), &victim, "--wait"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("empty, safe to retire"), "{text}");
    let s = tc.cluster.status().unwrap();
    let d = s.chunkds.iter().find(|d| d.addr == victim).unwrap();
    assert!(d.draining && d.chunks == 0, "{d:?}");
    wait_until(
        "the drained daemon's files deleted",
        Duration::from_secs(10),
        || chunk_files(&tc.cluster.chunkds[0].data).is_empty(),
    );
    // Everything is still at three copies on the other three daemons.
    let f = tc.cluster.fsck().unwrap();
    assert!(f.problems.is_empty(), "{:?}", f.problems);
    drop_caches();
    assert_eq!(sha256_hex(&read_all(&mnt.join("f"))), sha256_hex(&data));
}

#[test]
fn drain_on_a_terminal_shows_a_progress_bar_with_time_left() {
    let mut tc = TestCluster::start_with(4, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(3);
        s.lease_ms = Some(1500);
    });
    let mnt = tc.mount();
    fs::write(mnt.join("f"), pattern(8 * MIB as usize, 22)).unwrap();
    tc.cluster
        .wait_replicated(Duration::from_secs(30))
        .expect("replicated");
    let victim = tc.cluster.chunkds[0].addr.clone();
    // script(1) gives weft a pseudo-terminal as stdout.
    let weft = weft_cmd();
    let mut cmd = weft.get_program().to_string_lossy().to_string();
    for a in weft.get_args() {
        cmd.push(' ');
        cmd.push_str(&a.to_string_lossy());
    }
    let cmd = format!("{cmd} drain --mds {} {victim} --wait", tc.mds_addr());
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ETA") && text.contains("moved"), "{text}");
    assert!(!text.contains("replicas left"), "{text}");
    assert!(text.contains("empty, safe to retire"), "{text}");
    let s = tc.cluster.status().unwrap();
    let d = s.chunkds.iter().find(|d| d.addr == victim).unwrap();
    assert_eq!(d.chunks, 0);
}

#[test]
fn rebalance_evens_out_a_new_empty_daemon() {
    let mut tc = TestCluster::start_with(3, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(2);
        s.lease_ms = Some(1500);
    });
    // Daemon 3 is away while the data is written: it ends up empty.
    tc.cluster.chunkds[2].stop(Duration::from_secs(5));
    wait_until("daemon 3 declared dead", Duration::from_secs(10), || {
        tc.cluster
            .status()
            .is_ok_and(|s| s.chunkds.iter().filter(|d| d.alive).count() == 2)
    });
    let mnt = tc.mount();
    let data = pattern(24 * MIB as usize, 31);
    fs::write(mnt.join("f"), &data).unwrap();
    tc.cluster
        .wait_replicated(Duration::from_secs(30))
        .expect("replicated");
    tc.cluster.start_chunkd(2).unwrap();
    tc.cluster.wait_alive(3, Duration::from_secs(20)).unwrap();
    // A duration: leases end (leases run out by the clock, lease_ms).
    std::thread::sleep(Duration::from_millis(1600));
    let out = weft_cmd()
        .args(["rebalance", "--mds", &tc.mds_addr(), "--wait"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("balanced"), "{text}");
    // Off a terminal, a plain line a second with what is left (the bar's ETA).
    assert!(text.contains("MiB left"), "{text}");
    // Generous: under load (other clusters on the machine) beats lag.
    let mut counts = Vec::new();
    let settled = poll_until(Duration::from_secs(60), || {
        tc.cluster.status().is_ok_and(|s| {
            counts = s.chunkds.iter().map(|d| (d.alive, d.chunks)).collect();
            s.chunkds.iter().map(|d| d.chunks).sum::<u64>() == 48
                && s.chunkds.iter().all(|d| (13..=19).contains(&d.chunks))
        })
    });
    // What each daemon (alive, replicas) last reported, to tell a slow
    // clean-up of moved replicas (sum over 48) from an uneven spread.
    assert!(
        settled,
        "counts did not settle within 60 s: {counts:?}\n{text}"
    );
    let f = tc.cluster.fsck().unwrap();
    assert!(f.problems.is_empty(), "{:?}", f.problems);
    drop_caches();
    assert_eq!(sha256_hex(&read_all(&mnt.join("f"))), sha256_hex(&data));
}

/// A copy made by re-replication keeps the source's holes: a 4 MiB chunk
/// with 128 KiB of data (a never-written middle, a hole at the end) takes
/// about that much disk on the daemon that received it, not 4 MiB, and
/// still reads back the same bytes.
#[test]
fn a_drained_replica_copy_stays_sparse() {
    let mut tc = TestCluster::start_with(3, |s| {
        s.chunk_size = Some(4 * MIB);
        s.replicas = Some(2);
        s.lease_ms = Some(1500);
    });
    let mnt = tc.mount();
    let p = mnt.join("sparse");
    let mut want = vec![0u8; 4 * MIB as usize];
    want[..65536].copy_from_slice(&pattern(65536, 41));
    want[3 * MIB as usize..3 * MIB as usize + 65536].copy_from_slice(&pattern(65536, 42));
    {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&p)
            .unwrap();
        f.write_all_at(&want[..65536], 0).unwrap();
        f.write_all_at(&want[3 * MIB as usize..3 * MIB as usize + 65536], 3 * MIB)
            .unwrap();
        f.set_len(4 * MIB).unwrap();
        f.sync_all().unwrap();
    }
    tc.cluster
        .wait_replicated(Duration::from_secs(30))
        .expect("replicated");
    // Drain a daemon holding a replica: the one without gets a copy.
    let holders: Vec<usize> = (0..3)
        .filter(|&i| !chunk_files(&tc.cluster.chunkds[i].data).is_empty())
        .collect();
    assert_eq!(holders.len(), 2, "one chunk, two replicas");
    let fresh = (0..3).find(|i| !holders.contains(i)).unwrap();
    let victim = tc.cluster.chunkds[holders[0]].addr.clone();
    // A duration: the write lease ends (leases run out by the clock, lease_ms).
    std::thread::sleep(Duration::from_millis(1600));
    let out = weft_cmd()
        .args(["drain", "--mds", &tc.mds_addr(), &victim, "--wait"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let copies = chunk_files(&tc.cluster.chunkds[fresh].data);
    assert_eq!(copies.len(), 1, "the copy arrived");
    let allocated = fs::metadata(&copies[0]).unwrap().blocks() * 512;
    // 3 blocks of 64 KiB (two data, the tail) and the header.
    assert!(
        allocated < 512 * 1024,
        "the copy takes {allocated} bytes on disk for 128 KiB of data"
    );
    drop_caches();
    assert_eq!(sha256_hex(&read_all(&p)), sha256_hex(&want));
}
