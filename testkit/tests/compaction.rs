//! Compaction of packed small files' segments, with real daemons and mounts:
//! many small files of random sizes written through one mount and read back
//! through it and a second one; half of them deleted; compaction passes
//! (`Admin.Compact`, as `weft compact` asks) rewrite the sparse segments;
//! every remaining file still reads back with its SHA-256 on every mount,
//! no deleted file comes back, and the daemons' disk use drops by what the
//! removed segments held. Then kill -9 of a chunk daemon during the copy,
//! and of the MDS just before and just after the switch record.
//!
//! File count: `WEFT_COMPACT_FILES` (default 3,000 as CI runs it; 100,000
//! by hand).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_proto::pb;
use weft_testkit::{read_all, sha256_hex, wait_until, TestCluster};

const KIB: usize = 1 << 10;
const MIB: u64 = 1 << 20;
const PACK_MAX: usize = 64 * KIB;
const PACK: &[&str] = &["pack_max_kib=64"];
/// The largest file: some pass the packing threshold and take chunks.
const MAX_SIZE: usize = 70 * KIB;
const WRITERS: usize = 4;

fn file_count() -> usize {
    std::env::var("WEFT_COMPACT_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

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
    out
}

fn chunk_id(path: &Path) -> Option<u64> {
    let f = fs::File::open(path).ok()?;
    let mut b = [0u8; 20];
    f.read_exact_at(&mut b, 0).ok()?;
    Some(u64::from_le_bytes(b[12..20].try_into().unwrap()))
}

/// (replica files, bytes they take on disk) over every daemon.
fn disk_use(tc: &TestCluster) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for c in &tc.cluster.chunkds {
        for p in chunk_files(&c.data) {
            if let Ok(m) = fs::metadata(&p) {
                n += 1;
                bytes += m.blocks() * 512;
            }
        }
    }
    (n, bytes)
}

fn chunk_ids(tc: &TestCluster) -> BTreeSet<u64> {
    tc.cluster
        .chunkds
        .iter()
        .flat_map(|c| chunk_files(&c.data))
        .filter_map(|p| chunk_id(&p))
        .collect()
}

fn drop_caches() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

fn workload(n: usize, seed: u64, max: usize) -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|i| {
            let size = (rng.next() % (max as u64 + 1)) as usize;
            (format!("d{}/f{i}", i % 16), rng.bytes(size))
        })
        .collect()
}

fn write_all(root: &Path, files: &Arc<Vec<(String, Vec<u8>)>>) {
    for d in 0..16 {
        fs::create_dir_all(root.join(format!("d{d}"))).unwrap();
    }
    let threads: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (root, files) = (root.to_path_buf(), files.clone());
            std::thread::spawn(move || {
                for (name, data) in files.iter().skip(t).step_by(WRITERS) {
                    let p = root.join(name);
                    let mut f = fs::File::create(&p)
                        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
                    f.write_all(data)
                        .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
                    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
                    assert_eq!(unsafe { libc::close(fd) }, 0, "close {}", p.display());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a writer failed");
    }
}

fn check_all<'a>(root: &Path, files: impl Iterator<Item = &'a (String, Vec<u8>)>, what: &str) {
    let mut n = 0;
    for (name, data) in files {
        let got = read_all(&root.join(name));
        assert_eq!(got.len(), data.len(), "{what}: size of {name}");
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(data),
            "{what}: bytes of {name}"
        );
        n += 1;
    }
    eprintln!("{what}: {n} files match");
}

fn check_gone<'a>(root: &Path, files: impl Iterator<Item = &'a (String, Vec<u8>)>, what: &str) {
    for (name, _) in files {
        assert!(!root.join(name).exists(), "{what}: deleted {name} is back");
    }
}

/// Bytes the packed files' needles take (files up to the threshold; an
/// empty file is no needle).
fn needle_bytes<'a>(files: impl Iterator<Item = &'a (String, Vec<u8>)>) -> u64 {
    files
        .filter(|(_, d)| !d.is_empty() && d.len() <= PACK_MAX)
        .map(|(_, d)| (32 + d.len() as u64).div_ceil(64) * 64)
        .sum()
}

fn compact(tc: &TestCluster) -> Result<pb::CompactReply, String> {
    weft_cli::admin::block_on(weft_cli::admin::compact(&tc.mds_addr(), 0.0))
        .map_err(|e| format!("{e:#}"))
}

/// Compaction passes until one does nothing; their sum. A failed pass
/// (a daemon just killed) switches nothing: the next one does it again.
fn compact_fully(tc: &TestCluster) -> pb::CompactReply {
    let mut sum = pb::CompactReply::default();
    let mut failures = 0;
    for _ in 0..1000 {
        let r = match compact(tc) {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                assert!(failures < 20, "compaction keeps failing: {e}");
                eprintln!("compaction pass failed: {e}");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        eprintln!("compaction pass: {r:?}");
        let idle = r.needles_moved == 0 && r.segments_removed == 0;
        sum.segments_compacted += r.segments_compacted;
        sum.segments_removed += r.segments_removed;
        sum.needles_moved += r.needles_moved;
        sum.bytes_copied += r.bytes_copied;
        sum.bytes_freed += r.bytes_freed;
        sum.new_segments += r.new_segments;
        (sum.segments, sum.segment_bytes, sum.segment_live_bytes) =
            (r.segments, r.segment_bytes, r.segment_live_bytes);
        if idle {
            return sum;
        }
    }
    panic!("compaction never settled");
}

/// Until the daemons hold exactly the replicas the MDS wants (deletes of
/// removed chunks done, copies made).
fn wait_settled(tc: &TestCluster, replicas: usize) {
    wait_until(
        "the daemons to hold exactly the replicas of live chunks",
        Duration::from_secs(120),
        || {
            let Ok(s) = tc.cluster.status() else {
                return false;
            };
            s.under_replicated == 0
                && s.missing == 0
                && disk_use(tc).0 == s.chunks as usize * replicas
        },
    );
}

fn cluster(chunkds: usize, extra: &[&str]) -> TestCluster {
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    TestCluster::start_with(chunkds, |s| {
        s.chunk_size = Some(4 * MIB);
        s.replicas = Some(3);
        s.lease_ms = Some(3000);
        s.mds_args = [
            "--compact-interval-secs",
            "0",
            "--compact-idle-secs",
            "1",
            "--compact-below",
            "0.8",
            "--orphan-grace-secs",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(extra)
        .collect();
    })
}

#[test]
fn compaction_frees_the_dead_needles_and_keeps_every_live_one() {
    let n = file_count();
    let mut tc = cluster(3, &[]);
    let a = tc.mount_with(PACK);
    let b = tc.mount_with(PACK);
    let files = Arc::new(workload(n, 0xc0c0, MAX_SIZE));
    let t = Instant::now();
    write_all(&a, &files);
    eprintln!("{n} files written in {:?}", t.elapsed());
    drop_caches();
    check_all(&a, files.iter(), "mount A");
    // B caches the needles' locations (and A keeps its own).
    check_all(&b, files.iter(), "mount B");

    for (name, _) in files.iter().step_by(2) {
        fs::remove_file(a.join(name)).unwrap();
    }
    let live = || files.iter().skip(1).step_by(2);
    let dead = || files.iter().step_by(2);
    wait_settled(&tc, 3);
    let before = tc.cluster.status().unwrap();
    let (replicas_before, disk_before) = disk_use(&tc);
    eprintln!(
        "before: {} segments, {} written, {} live; {replicas_before} replica files, {disk_before} bytes on disk",
        before.segments, before.segment_bytes, before.segment_live_bytes
    );
    assert!(before.segments > 3, "{before:?}");
    assert!(before.segment_live_bytes * 10 < before.segment_bytes * 7);

    // A live mount's older segments are sealed once idle (1 s here).
    std::thread::sleep(Duration::from_millis(1100));
    let t = Instant::now();
    let r = compact_fully(&tc);
    eprintln!("compacted in {:?}: {r:?}", t.elapsed());
    assert!(r.segments_compacted >= 2, "{r:?}");
    assert!(r.needles_moved > 0 && r.bytes_copied > 0);
    assert!(r.segments_removed >= 2, "{r:?}");
    wait_settled(&tc, 3);
    let after = tc.cluster.status().unwrap();
    let (replicas_after, disk_after) = disk_use(&tc);
    let freed = before.segment_bytes - after.segment_bytes;
    eprintln!(
        "after: {} segments, {} written, {} live; {replicas_after} replica files, {disk_after} bytes on disk (freed {freed} per replica)",
        after.segments, after.segment_bytes, after.segment_live_bytes
    );
    assert!(after.segments < before.segments, "{after:?}");
    // Nothing live was lost from the MDS's count...
    assert_eq!(after.segment_live_bytes, before.segment_live_bytes);
    // ...most of the dead needles went (all but those in A's open segment,
    // at most one segment's worth)...
    let dead_needles = needle_bytes(dead());
    assert!(
        freed + 4 * MIB >= dead_needles,
        "freed {freed} of {dead_needles} dead needle bytes"
    );
    // ...and the daemons' disks dropped by that much on every replica.
    assert!(
        disk_before - disk_after >= 3 * freed * 9 / 10,
        "disk use {disk_before} -> {disk_after}, {freed} freed per replica"
    );

    drop_caches();
    check_all(&b, live(), "mount B after compaction");
    check_all(&a, live(), "mount A after compaction");
    let c = tc.mount_with(PACK);
    check_all(&c, live(), "a new mount after compaction");
    check_gone(&a, dead(), "mount A");
    check_gone(&b, dead(), "mount B");
    check_gone(&c, dead(), "a new mount");

    // The mounts go on packing: A into its open segment, B and C into new ones.
    let more = Arc::new(workload(200, 0xbeef, 8 * KIB));
    for (m, name) in [(&a, "A"), (&b, "B")] {
        let dir = format!("more-{name}");
        fs::create_dir(m.join(&dir)).unwrap();
        write_all(&m.join(&dir), &more);
        check_all(&c.join(&dir), more.iter(), "files written after compaction");
    }
    // Nothing is left to compact, and nothing is wrong.
    let r = compact(&tc).unwrap();
    assert_eq!((r.needles_moved, r.segments_removed), (0, 0), "{r:?}");
    wait_until("fsck clean", Duration::from_secs(60), || {
        tc.cluster
            .fsck()
            .is_ok_and(|f| f.problems.is_empty() && f.orphan_replicas == 0)
    });
}

/// Files of up to 48 KiB (all packed), half of them deleted: (files,
/// the mount they were written through).
/// A workload: (name, content) of each file.
type Files = Arc<Vec<(String, Vec<u8>)>>;

fn sparse_segments(tc: &mut TestCluster, n: usize, seed: u64) -> (Files, PathBuf) {
    let a = tc.mount_with(PACK);
    let files = Arc::new(workload(n, seed, 48 * KIB));
    write_all(&a, &files);
    for (name, _) in files.iter().step_by(2) {
        fs::remove_file(a.join(name)).unwrap();
    }
    // A live mount's older segments are sealed once idle (1 s here).
    std::thread::sleep(Duration::from_millis(1100));
    (files, a)
}

/// Every live file reads back on `m` and on a new mount; no deleted one.
fn check_files(tc: &mut TestCluster, m: &Path, files: &[(String, Vec<u8>)], what: &str) {
    drop_caches();
    check_all(m, files.iter().skip(1).step_by(2), what);
    check_gone(m, files.iter().step_by(2), what);
    let fresh = tc.mount_with(PACK);
    check_all(
        &fresh,
        files.iter().skip(1).step_by(2),
        &format!("{what}, a new mount"),
    );
    check_gone(
        &fresh,
        files.iter().step_by(2),
        &format!("{what}, a new mount"),
    );
}

#[test]
fn a_chunk_daemon_killed_during_the_copy_loses_no_needle() {
    // A slow copy (2 MiB/s), so the kill lands in the middle of it.
    let mut tc = cluster(4, &["--compact-mib-per-sec", "2"]);
    let (files, a) = sparse_segments(&mut tc, 800, 0xd1e);
    let before = tc.cluster.status().unwrap();
    let known = chunk_ids(&tc);
    let addr = tc.mds_addr();
    let pass = std::thread::spawn(move || {
        weft_cli::admin::block_on(weft_cli::admin::compact(&addr, 0.0))
            .map_err(|e| format!("{e:#}"))
    });
    // The copy has begun once the new segment's chunk is on a daemon.
    let mut victim = None;
    wait_until(
        "the new segment on a daemon",
        Duration::from_secs(60),
        || {
            victim = tc.cluster.chunkds.iter().position(|c| {
                chunk_files(&c.data)
                    .iter()
                    .any(|p| chunk_id(p).is_some_and(|id| !known.contains(&id)))
            });
            victim.is_some()
        },
    );
    tc.cluster.chunkds[victim.unwrap()].crash();
    eprintln!("chunk daemon {} killed during the copy", victim.unwrap());
    let first = pass.join().unwrap();
    eprintln!("the pass during the kill: {first:?}");
    // Whatever it did, the passes after it finish over the survivors.
    let r = compact_fully(&tc);
    let after = tc.cluster.status().unwrap();
    assert_eq!(after.segment_live_bytes, before.segment_live_bytes);
    assert!(
        after.segment_bytes < before.segment_bytes * 3 / 4,
        "{before:?} -> {after:?} ({r:?})"
    );
    check_files(
        &mut tc,
        &a,
        &files,
        "after a daemon's kill during compaction",
    );
}

#[test]
fn the_mds_killed_before_and_after_the_switch_loses_nothing() {
    let mut tc = cluster(3, &["--test-compact-fault", "before-switch"]);
    let (files, a) = sparse_segments(&mut tc, 600, 0x5a1);
    wait_settled(&tc, 3);
    let before = tc.cluster.status().unwrap();
    let restart = |tc: &mut TestCluster, fault: Option<&str>| {
        wait_until("the MDS to die", Duration::from_secs(60), || {
            !tc.cluster.mds.running()
        });
        tc.cluster.mds.crash();
        let addr = tc.mds_addr();
        let args = &mut tc.cluster.spec.mds_args;
        let at = args
            .iter()
            .position(|a| a == "--test-compact-fault")
            .unwrap();
        args.remove(at + 1);
        args.remove(at);
        if let Some(f) = fault {
            args.extend(["--test-compact-fault".to_string(), f.to_string()]);
        }
        tc.cluster.start_mds(Some(&addr)).expect("restart the MDS");
    };

    // Killed with the needles copied and nothing switched.
    let r = compact(&tc);
    assert!(r.is_err(), "the MDS answered: {r:?}");
    restart(&mut tc, Some("after-switch"));
    let s = tc.cluster.status().unwrap();
    assert_eq!(
        s.segments,
        before.segments + 1,
        "the copy's segment, unswitched"
    );
    assert_eq!(s.segment_live_bytes, before.segment_live_bytes);
    check_all(
        &a,
        files.iter().skip(1).step_by(2),
        "after the kill before the switch",
    );

    // Killed with the switch in the log: the pass drops the unswitched
    // segment first, then copies again and switches.
    let r = compact(&tc);
    assert!(r.is_err(), "the MDS answered: {r:?}");
    restart(&mut tc, None);
    let s = tc.cluster.status().unwrap();
    assert_eq!(s.segment_live_bytes, before.segment_live_bytes);
    assert!(
        s.segment_bytes < before.segment_bytes * 3 / 4 && s.segments < before.segments,
        "{before:?} -> {s:?}"
    );
    check_files(&mut tc, &a, &files, "after the kill after the switch");
    // The old segments' replicas, whose deletes died with the MDS, go as
    // orphans; nothing else is left behind.
    wait_settled(&tc, 3);
    // The passes after it (one pass fills one new segment) finish the job.
    let r = compact_fully(&tc);
    let s = tc.cluster.status().unwrap();
    assert_eq!(s.segment_live_bytes, before.segment_live_bytes, "{r:?}");
    check_all(&a, files.iter().skip(1).step_by(2), "after the last passes");
    wait_settled(&tc, 3);
    wait_until("fsck clean", Duration::from_secs(60), || {
        tc.cluster
            .fsck()
            .is_ok_and(|f| f.problems.is_empty() && f.orphan_replicas == 0)
    });
}
