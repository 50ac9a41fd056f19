//! Tests of the client's data paths (`Weft`: write-back, flush, fsync, read,
//! truncate, error reporting) against the in-memory cluster of
//! mock_cluster.rs, over real loopback gRPC. No FUSE mount is involved.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use weft_proto::{Caller, Errno};

use crate::client::{SetAttrArgs, Weft};
use crate::mock_cluster::MockCluster;
use crate::options::MountOpts;

const CS: u64 = 64 * 1024;

fn me() -> Caller {
    Caller {
        uid: 0,
        gid: 0,
        groups: vec![],
        pid: std::process::id(),
    }
}

async fn setup(replicas: usize) -> (MockCluster, Arc<Weft>) {
    let mc = MockCluster::start(replicas, CS).await;
    let opts = MountOpts {
        mds_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let w = Weft::connect(&mc.mds_addr, &opts, Duration::from_secs(5))
        .await
        .expect("connect");
    assert_eq!(w.chunk_size, CS);
    (mc, w)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 * 2654435761) >> 7) as u8 ^ seed)
        .collect()
}

async fn create(w: &Arc<Weft>, name: &str) -> (u64, u64) {
    let (a, fh) = w
        .create(
            &me(),
            1,
            name.as_bytes().to_vec(),
            0o100644,
            0o022,
            libc::O_RDWR,
        )
        .await
        .unwrap();
    (a.ino.0, fh)
}

#[tokio::test]
async fn write_flush_read_round_trip_across_chunks() {
    let (mc, w) = setup(3).await;
    let (ino, fh) = create(&w, "f").await;
    let data = pattern((3 * CS + 1234) as usize, 1);
    // Written in odd-sized, out-of-order pieces.
    let cut = [0usize, 5000, 70_000, 150_000, data.len()];
    for win in cut.windows(2).rev() {
        let n = w
            .write(me(), ino, win[0] as u64, data[win[0]..win[1]].to_vec())
            .await
            .unwrap();
        assert_eq!(n as usize, win[1] - win[0]);
    }
    // Before any flush the kernel must already see the full size.
    assert_eq!(w.getattr(&me(), ino).await.unwrap().size, data.len() as u64);
    assert_eq!(mc.mds.commits.load(Ordering::Relaxed), 0);
    w.fsync(ino, fh).await.unwrap();
    assert_eq!(
        mc.mds.commits.load(Ordering::Relaxed),
        1,
        "one commit per flush"
    );
    assert!(
        mc.chunkds
            .iter()
            .all(|d| d.syncs.load(Ordering::Relaxed) > 0),
        "fsync reached every replica"
    );
    // Every replica holds the same bytes (the chain was followed).
    for d in &mc.chunkds {
        let stored = d.data.lock();
        assert_eq!(stored.len(), 4, "4 chunks on every replica");
    }
    // Reads: whole, unaligned, across a chunk boundary, past EOF.
    let all = w
        .read(&me(), ino, 0, data.len() as u32 + 100)
        .await
        .unwrap();
    assert_eq!(all, data);
    let mid = w.read(&me(), ino, CS - 10, 20).await.unwrap();
    assert_eq!(mid, &data[(CS - 10) as usize..(CS + 10) as usize]);
    assert!(w
        .read(&me(), ino, data.len() as u64, 10)
        .await
        .unwrap()
        .is_empty());
    w.flush_handle(ino, fh).await.unwrap();
    w.release(&me(), ino, fh).await.unwrap();
    assert!(
        w.files.get(ino).is_none(),
        "state dropped once clean and closed"
    );
}

#[tokio::test]
async fn reading_dirty_data_flushes_it_first() {
    let (mc, w) = setup(1).await;
    let (ino, _fh) = create(&w, "g").await;
    w.write(me(), ino, 10, b"hello".to_vec()).await.unwrap();
    let got = w.read(&me(), ino, 0, 100).await.unwrap();
    let mut want = vec![0u8; 10];
    want.extend_from_slice(b"hello");
    assert_eq!(got, want);
    assert_eq!(mc.mds.commits.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn read_fails_over_to_a_good_replica() {
    let (mc, w) = setup(2).await;
    let (ino, fh) = create(&w, "h").await;
    let data = pattern(1000, 9);
    w.write(me(), ino, 0, data.clone()).await.unwrap();
    w.fsync(ino, fh).await.unwrap();
    mc.chunkds[0].fail_reads.store(true, Ordering::Relaxed);
    assert_eq!(w.read(&me(), ino, 0, 1000).await.unwrap(), data);
    assert!(mc.chunkds[1].reads.load(Ordering::Relaxed) >= 1);
    // The good replica is preferred afterwards: no more failed attempts.
    // (Without the data cache, which would serve the bytes itself.)
    w.data.clear();
    let bad_before = mc.chunkds[0].reads.load(Ordering::Relaxed);
    assert_eq!(w.read(&me(), ino, 0, 1000).await.unwrap(), data);
    assert_eq!(mc.chunkds[0].reads.load(Ordering::Relaxed), bad_before);
    // All replicas bad: EIO, never garbage.
    w.data.clear();
    mc.chunkds[1].fail_reads.store(true, Ordering::Relaxed);
    assert_eq!(w.read(&me(), ino, 0, 1000).await.unwrap_err(), Errno::EIO);
}

#[tokio::test]
async fn write_errors_reach_every_open_handle_once() {
    let (mc, w) = setup(1).await;
    let (ino, fh1) = create(&w, "full").await;
    let (fh2, _) = w.open(&me(), ino, libc::O_RDWR).await.unwrap();
    *mc.chunkds[0].fail_writes.lock() = Some(tonic::Code::ResourceExhausted);
    w.write(me(), ino, 0, vec![7; 100]).await.unwrap();
    assert_eq!(w.flush_handle(ino, fh1).await, Err(Errno::ENOSPC));
    assert_eq!(
        w.flush_handle(ino, fh1).await,
        Ok(()),
        "reported once per handle"
    );
    assert_eq!(
        w.fsync(ino, fh2).await,
        Err(Errno::ENOSPC),
        "other handle sees it"
    );
    assert_eq!(w.fsync(ino, fh2).await, Ok(()));
    // The lost data is not claimed: size falls back to what the MDS has.
    assert_eq!(w.getattr(&me(), ino).await.unwrap().size, 0);
    assert_eq!(mc.mds.commits.load(Ordering::Relaxed), 0);
    // Once the daemon recovers, new writes are stored.
    *mc.chunkds[0].fail_writes.lock() = None;
    w.write(me(), ino, 0, vec![8; 100]).await.unwrap();
    assert_eq!(w.fsync(ino, fh1).await, Ok(()));
    assert_eq!(w.read(&me(), ino, 0, 200).await.unwrap(), vec![8; 100]);
}

#[tokio::test]
async fn a_failed_pipeline_is_reallocated_and_retried() {
    let (mc, w) = setup(2).await;
    let (ino, fh) = create(&w, "retry").await;
    mc.chunkds[0].fail_next_writes.store(2, Ordering::Relaxed);
    w.write(me(), ino, 0, vec![5; 4000]).await.unwrap();
    w.fsync(ino, fh).await.unwrap();
    assert_eq!(
        mc.mds.allocs.load(Ordering::Relaxed),
        3,
        "one AllocChunk per attempt"
    );
    assert_eq!(w.read(&me(), ino, 0, 4000).await.unwrap(), vec![5; 4000]);
    // While the lease is cached a second flush of the same chunk needs no AllocChunk.
    w.write(me(), ino, 4000, vec![6; 10]).await.unwrap();
    w.flush_handle(ino, fh).await.unwrap();
    assert_eq!(mc.mds.allocs.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn truncate_down_then_up_reads_zeros() {
    let (_mc, w) = setup(2).await;
    let (ino, fh) = create(&w, "t").await;
    let data = pattern((CS + 500) as usize, 3);
    w.write(me(), ino, 0, data.clone()).await.unwrap();
    w.fsync(ino, fh).await.unwrap();
    let size = |s| SetAttrArgs {
        size: Some(s),
        ..Default::default()
    };
    let a = w.setattr(&me(), ino, size(100)).await.unwrap();
    assert_eq!(a.size, 100);
    let a = w.setattr(&me(), ino, size(CS + 500)).await.unwrap();
    assert_eq!(a.size, CS + 500);
    let got = w.read(&me(), ino, 0, (CS + 500) as u32).await.unwrap();
    assert_eq!(&got[..100], &data[..100]);
    assert!(got[100..].iter().all(|b| *b == 0), "extension reads zeros");
}

#[tokio::test]
async fn truncate_discards_dirty_tail_and_o_trunc_discards_all() {
    let (mc, w) = setup(1).await;
    let (ino, fh) = create(&w, "d").await;
    w.write(me(), ino, 0, vec![1; 3000]).await.unwrap();
    let a = w
        .setattr(
            &me(),
            ino,
            SetAttrArgs {
                size: Some(1000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(a.size, 1000, "dirty bytes past the new size are gone");
    assert_eq!(w.read(&me(), ino, 0, 5000).await.unwrap(), vec![1; 1000]);
    w.write(me(), ino, 0, vec![2; 50]).await.unwrap();
    let (fh2, _) = w
        .open(&me(), ino, libc::O_WRONLY | libc::O_TRUNC)
        .await
        .unwrap();
    assert_eq!(w.getattr(&me(), ino).await.unwrap().size, 0);
    w.flush_handle(ino, fh2).await.unwrap();
    assert_eq!(w.getattr(&me(), ino).await.unwrap().size, 0);
    assert_eq!(w.files.dirty_total(), 0);
    let _ = (mc, fh);
}

#[tokio::test]
async fn big_files_flush_in_the_background() {
    let (mc, w) = setup(1).await;
    let (ino, fh) = create(&w, "big").await;
    let block = pattern(1 << 20, 5);
    for i in 0..20u64 {
        w.write(me(), ino, i << 20, block.clone()).await.unwrap();
    }
    // Past the 8 MiB per-file limit, flushes ran without being asked.
    crate::client_tests::wait(|| mc.mds.commits.load(Ordering::Relaxed) >= 1).await;
    w.fsync(ino, fh).await.unwrap();
    assert_eq!(w.files.dirty_total(), 0);
    assert_eq!(w.getattr(&me(), ino).await.unwrap().size, 20 << 20);
    let got = w.read(&me(), ino, 13 << 20, 1 << 20).await.unwrap();
    assert_eq!(got, block);
}

pub async fn wait(mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not met in 5 s");
}
