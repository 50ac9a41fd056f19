//! st_blocks shows what the replicas hold on disk: a sparse file
//! counts only its written blocks — also right after the write, after a
//! remount (from the MDS, not a client cache), after an MDS crash (log
//! replay) and after a clean MDS restart (snapshot) — a punched range leaves
//! st_blocks, space reserved past the end with fallocate KEEP_SIZE joins it,
//! zeroing a range (fallocate ZERO_RANGE) keeps its blocks, and a truncate
//! to 0 empties it. `du` and `ls -s` read st_blocks.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use weft_testkit::{pattern, wait_until, TestCluster};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn falloc(f: &File, mode: i32, off: u64, len: u64) {
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
}

fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

/// xfstests' `_require_sparse_files`: 51200 bytes written at 1638400 of a
/// new file must show at most 1 MiB allocated (`du -sk` ≤ 1024).
fn assert_sparse(p: &Path, when: &str) {
    let md = fs::metadata(p).unwrap();
    let bytes = md.blocks() * 512;
    assert_eq!(md.len(), 1_638_400 + 51_200, "{when}: size");
    assert!(
        (51_200..=128 * KIB).contains(&bytes),
        "{when}: {bytes} bytes allocated for 51200 written"
    );
}

#[test]
fn a_sparse_file_counts_only_its_written_blocks() {
    let mut tc = TestCluster::start(3, 4 * MIB);
    let m = tc.mount();
    let p = m.join("sparse");
    let f = File::create(&p).unwrap();
    f.write_all_at(&pattern(51_200, 1), 1_638_400).unwrap();
    // Buffered, not stored yet: the pending pages count, not the size.
    let pending = allocated(&p);
    assert!(
        (51_200..=MIB).contains(&pending),
        "before close: {pending} bytes allocated"
    );
    drop(f);
    assert_sparse(&p, "after close");
    let du = weft_testkit::sh(&m, "du -sk sparse | cut -f1");
    assert!(du.trim().parse::<u64>().unwrap() <= 128, "du -sk says {du}");

    tc.cluster.unmount(0).unwrap();
    let m = tc.mount();
    assert_sparse(&m.join("sparse"), "after a remount");

    // Killed: the MDS replays its log.
    let addr = tc.mds_addr();
    tc.cluster.mds.crash();
    tc.cluster.start_mds(Some(&addr)).unwrap();
    tc.cluster.unmount(0).unwrap();
    let m = tc.mount();
    assert_sparse(&m.join("sparse"), "after an MDS crash");

    // Stopped cleanly: it checkpoints, and starts from the snapshot.
    tc.cluster.mds.stop(Duration::from_secs(10));
    tc.cluster.start_mds(Some(&addr)).unwrap();
    tc.cluster.unmount(0).unwrap();
    let m = tc.mount();
    assert_sparse(&m.join("sparse"), "after an MDS restart from its snapshot");
}

#[test]
fn punch_reserve_and_truncate_move_st_blocks() {
    let mut tc = TestCluster::start(3, 4 * MIB);
    let m = tc.mount();
    let p = m.join("f");
    fs::write(&p, pattern(4 * MIB as usize, 2)).unwrap();
    let full = allocated(&p);
    assert!(
        (4 * MIB..=4 * MIB + 64 * KIB).contains(&full),
        "4 MiB written: {full} bytes allocated"
    );
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();

    // Punching 2 MiB in the middle gives back about 2 MiB.
    falloc(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        MIB,
        2 * MIB,
    );
    let punched = allocated(&p);
    assert!(
        full - punched >= 2 * MIB - 64 * KIB && full - punched <= 2 * MIB,
        "punch of 2 MiB: {full} -> {punched} bytes allocated"
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), 4 * MIB);

    // Zeroing written data keeps its blocks (ext4: unwritten extents), and
    // the range reads as zeros.
    falloc(
        &f,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        512 * KIB,
    );
    assert_eq!(allocated(&p), punched, "ZERO_RANGE kept the blocks");
    let mut head = vec![1u8; 512 * KIB as usize];
    f.read_exact_at(&mut head, 0).unwrap();
    assert!(head.iter().all(|&b| b == 0), "zeroed range reads as zeros");

    // Reserving 1 MiB past the end (KEEP_SIZE) shows, the size stays.
    falloc(&f, libc::FALLOC_FL_KEEP_SIZE, 4 * MIB, MIB);
    let reserved = allocated(&p);
    assert_eq!(
        reserved - punched,
        MIB,
        "KEEP_SIZE reservation: {punched} -> {reserved}"
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), 4 * MIB);

    // A new mount sees the MDS's figure.
    drop(f);
    let other = tc.mount();
    assert_eq!(allocated(&other.join("f")), reserved);

    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(0).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().blocks(), 0, "truncated to 0");
    // The other mount hears of it by the MDS's push (asynchronous).
    wait_until(
        "the other mount sees 0 blocks",
        Duration::from_secs(3),
        || fs::metadata(other.join("f")).unwrap().blocks() == 0,
    );
}
