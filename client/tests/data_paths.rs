//! Tests of the client's data paths (`Weft`: write-back, flush, fsync, read,
//! truncate, error reporting) against a real MDS and real chunk daemons
//! started in this process (`weft_testkit::inproc`), over loopback gRPC. No FUSE
//! mount is involved; faults are real (a stopped daemon, a flipped byte on
//! disk, a daemon without room).

use std::sync::Arc;
use std::time::Duration;

use weft_proto::{Caller, Errno};

use weft_client::{ClientOpts, SetAttrArgs, Weft};
use weft_testkit::inproc::InProcCluster;
use weft_testkit::{pattern, wait_until_async, ChunkdSpec, TestCluster};

/// The MDS's smallest chunk size, so a few MiB span several chunks.
const CS: u64 = 1 << 20;

fn me() -> Caller {
    Caller {
        uid: 0,
        gid: 0,
        groups: vec![],
        pid: std::process::id(),
    }
}

async fn client(mc: &InProcCluster) -> Arc<Weft> {
    client_packing(mc, ClientOpts::default().pack_max).await
}

/// `client`, packing files written whole up to `pack_max` (0: never).
async fn client_packing(mc: &InProcCluster, pack_max: u64) -> Arc<Weft> {
    // RUST_LOG=… shows the client's and the daemons' logs of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let opts = ClientOpts {
        mds_timeout: Duration::from_secs(5),
        pack_max,
        ..Default::default()
    };
    let w = Weft::connect(&mc.mds_addr, &opts, Duration::from_secs(5))
        .await
        .expect("connect");
    assert_eq!(w.chunk_size(), CS);
    w
}

/// `daemons` chunk daemons keeping `replicas` copies, and a client.
async fn setup(replicas: u32, daemons: usize) -> (InProcCluster, Arc<Weft>) {
    let mc = TestCluster::builder()
        .replicas(replicas)
        .chunk_size(CS)
        .chunkds(daemons)
        .start_in_process()
        .await;
    let w = client(&mc).await;
    (mc, w)
}

/// The size another mount sees now: a fresh client with empty caches, so
/// what the MDS has committed.
async fn size_elsewhere(mc: &InProcCluster, ino: u64) -> u64 {
    client(mc).await.getattr(&me(), ino).await.unwrap().size
}

/// What a fresh client (another mount, empty caches) reads.
async fn read_elsewhere(mc: &InProcCluster, ino: u64, len: u32) -> Result<Vec<u8>, Errno> {
    client(mc)
        .await
        .read(&me(), ino, 0, len)
        .await
        .map(|b| b.to_vec())
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_flush_read_round_trip_across_chunks() {
    let (mc, w) = setup(3, 3).await;
    let (ino, fh) = create(&w, "f").await;
    let data = pattern((3 * CS + 1234) as usize, 1);
    // Written in odd-sized, out-of-order pieces.
    let cut = [0usize, 5000, 700_000, 1_500_000, data.len()];
    for win in cut.windows(2).rev() {
        let n = w
            .write(me(), ino, win[0] as u64, data[win[0]..win[1]].to_vec())
            .await
            .unwrap();
        assert_eq!(n as usize, win[1] - win[0]);
    }
    // Before any flush this mount already sees the full size; another mount
    // sees only what the MDS committed: nothing yet.
    assert_eq!(w.getattr(&me(), ino).await.unwrap().size, data.len() as u64);
    assert_eq!(size_elsewhere(&mc, ino).await, 0);
    w.fsync(ino, fh).await.unwrap();
    assert_eq!(size_elsewhere(&mc, ino).await, data.len() as u64);
    // fsync reached every replica, and every replica holds the same bytes
    // (the chain was followed): 4 chunks on each of the 3 daemons.
    let first = mc.replicas(0);
    assert_eq!(first.len(), 4, "4 chunks on every replica");
    assert_eq!(
        first.values().map(|b| b.len()).sum::<usize>(),
        data.len(),
        "the replicas hold exactly the file's bytes"
    );
    for i in 1..3 {
        assert!(
            mc.replicas(i) == first,
            "replica {i} differs from replica 0"
        );
    }
    // Reads: whole, unaligned, across a chunk boundary, past EOF.
    let all = w
        .read(&me(), ino, 0, data.len() as u32 + 100)
        .await
        .unwrap();
    assert_eq!(all, data);
    assert_eq!(
        read_elsewhere(&mc, ino, data.len() as u32).await.unwrap(),
        data
    );
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
        !w.holds_file_state(ino),
        "state dropped once clean and closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_dirty_data_flushes_it_first() {
    let (mc, w) = setup(1, 1).await;
    let (ino, _fh) = create(&w, "g").await;
    w.write(me(), ino, 10, b"hello".to_vec()).await.unwrap();
    let got = w.read(&me(), ino, 0, 100).await.unwrap();
    let mut want = vec![0u8; 10];
    want.extend_from_slice(b"hello");
    assert_eq!(got, want);
    assert_eq!(
        size_elsewhere(&mc, ino).await,
        15,
        "the read committed the write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_fails_over_to_a_good_replica() {
    let (mc, w) = setup(2, 2).await;
    let (ino, fh) = create(&w, "h").await;
    let data = pattern(200_000, 9);
    w.write(me(), ino, 0, data.clone()).await.unwrap();
    w.fsync(ino, fh).await.unwrap();
    // Spoil the replica a reader tries first, on disk.
    let loc = w.chunk_locations(&me(), ino, 0, 1).await.unwrap()[0].clone();
    let daemon_at = |addr: &str| {
        (0..2)
            .find(|i| mc.chunkd(*i).addr.to_string() == addr)
            .expect("a replica address is one of the daemons")
    };
    let (bad, good) = (
        daemon_at(&loc.replicas[0].addr),
        daemon_at(&loc.replicas[1].addr),
    );
    mc.corrupt_replicas(bad);
    // Another mount reads the right bytes from the good replica, and prefers
    // it from then on.
    let other = client(&mc).await;
    assert_eq!(other.read(&me(), ino, 0, 200_000).await.unwrap(), data);
    let preferred = other
        .cached_chunk_location(ino, 0)
        .expect("location cached")
        .replicas[0]
        .addr
        .clone();
    assert_eq!(preferred, mc.chunkd(good).addr.to_string());
    // Every replica bad: EIO, never garbage.
    mc.corrupt_replicas(good);
    assert_eq!(
        read_elsewhere(&mc, ino, 200_000).await.unwrap_err(),
        Errno::EIO
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_errors_reach_every_open_handle_once() {
    // The only daemon has room for less than one chunk.
    let mut mc = TestCluster::builder()
        .replicas(1)
        .chunk_size(CS)
        .chunkd(ChunkdSpec {
            capacity: Some(CS / 2),
            ..Default::default()
        })
        .start_in_process()
        .await;
    let w = client(&mc).await;
    let (ino, fh1) = create(&w, "full").await;
    let (fh2, _) = w.open(&me(), ino, libc::O_RDWR).await.unwrap();
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
    assert_eq!(size_elsewhere(&mc, ino).await, 0);
    // Once a daemon with room joins, new writes are stored.
    mc.add_chunkd(&ChunkdSpec::default()).await;
    mc.wait_alive(2).await;
    w.write(me(), ino, 0, vec![8; 100]).await.unwrap();
    assert_eq!(w.fsync(ino, fh1).await, Ok(()));
    assert_eq!(w.read(&me(), ino, 0, 200).await.unwrap(), vec![8; 100]);
    assert_eq!(read_elsewhere(&mc, ino, 200).await.unwrap(), vec![8; 100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pipeline_is_reallocated_and_retried() {
    // Two racks: placement always puts one replica on rack b's only daemon,
    // which is stopped — but the MDS has not noticed yet.
    let rack = |rack| ChunkdSpec {
        rack,
        ..Default::default()
    };
    // The MDS takes 3 s to declare a silent daemon dead: the client, not the
    // heartbeat, must notice this one.
    let mut mc = TestCluster::builder()
        .replicas(2)
        .chunk_size(CS)
        .chunkd(rack("a"))
        .chunkd(rack("a"))
        .chunkd(rack("b"))
        .dead_after(Duration::from_secs(3))
        .start_in_process()
        .await;
    // The file's own chunk, not a needle in a segment.
    let w = client_packing(&mc, 0).await;
    let dead = mc.chunkd(2).addr.to_string();
    mc.stop_chunkd(2).await;
    let (ino, fh) = create(&w, "retry").await;
    w.write(me(), ino, 0, vec![5; 4000]).await.unwrap();
    w.fsync(ino, fh).await.unwrap();
    let loc = w.chunk_locations(&me(), ino, 0, 1).await.unwrap()[0].clone();
    assert_eq!(loc.replicas.len(), 2, "{loc:?}");
    assert!(
        !loc.replicas.iter().any(|r| r.addr == dead),
        "the new replica set avoids the dead daemon: {loc:?}"
    );
    assert_eq!(read_elsewhere(&mc, ino, 4000).await.unwrap(), vec![5; 4000]);
    for i in 0..2 {
        assert_eq!(mc.replicas(i).values().next().unwrap(), &vec![5u8; 4000]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_down_then_up_reads_zeros() {
    let (mc, w) = setup(2, 2).await;
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
    assert_eq!(
        read_elsewhere(&mc, ino, (CS + 500) as u32).await.unwrap(),
        got
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_discards_dirty_tail_and_o_trunc_discards_all() {
    let (mc, w) = setup(1, 1).await;
    let (ino, _fh) = create(&w, "d").await;
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
    assert_eq!(size_elsewhere(&mc, ino).await, 0);
    assert_eq!(w.dirty_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_files_flush_in_the_background() {
    let (mc, w) = setup(1, 1).await;
    let (ino, fh) = create(&w, "big").await;
    let block = pattern(1 << 20, 5);
    for i in 0..20u64 {
        w.write(me(), ino, i << 20, block.clone()).await.unwrap();
    }
    // Past the 8 MiB per-file limit, flushes ran without being asked: another
    // mount sees part of the file before any fsync.
    wait_until_async(
        "a flush in the background",
        Duration::from_secs(5),
        async || size_elsewhere(&mc, ino).await > 0,
    )
    .await;
    w.fsync(ino, fh).await.unwrap();
    assert_eq!(w.dirty_bytes(), 0);
    assert_eq!(w.getattr(&me(), ino).await.unwrap().size, 20 << 20);
    let got = w.read(&me(), ino, 13 << 20, 1 << 20).await.unwrap();
    assert_eq!(got, block);
}
