//! Registration, heartbeats, deletes, corruption reports and the scrubber,
//! against a fake MDS in-process.

use std::time::{Duration, Instant};

use tonic::Code;
use weft_chunkd::store::format::header_len;
use weft_testkit::chunkd::*;
use weft_testkit::flip_byte as flip;
use weft_testkit::wait_until_async;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_late_mds_and_reports_deltas() {
    let d = tempfile::tempdir().unwrap();
    let mds_addr = dead_addr();
    // The MDS is not up yet: the daemon serves anyway.
    let daemon = start_chunkd(d.path(), &mds_addr, |c| {
        c.heartbeat_ms = Some(3000);
        c.rack = "r7".into();
    })
    .await;
    let mut c = client(daemon.addr);
    c.write(write_req(0x10, 2, 0, b"early", &[])).await.unwrap();
    // A duration, not a wait: the MDS stays down a while, so registration
    // has to be retried.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mds = FakeMds::new(MIB, 100);
    mds.serve(&mds_addr).await;
    let log = mds.log.clone();
    wait_until_async(
        "registration retried until the MDS came up",
        Duration::from_secs(10),
        async || !log.lock().registers.is_empty(),
    )
    .await;
    wait_until_async(
        "the chunk size from the registration reply",
        Duration::from_secs(2),
        async || daemon.store.chunk_size() == Some(MIB),
    )
    .await;
    {
        let l = log.lock();
        let r = &l.registers[0];
        assert_eq!(r.chunkd_id, daemon.chunkd_id);
        assert_eq!(r.addr, daemon.addr.to_string());
        assert_eq!(r.rack, "r7");
        assert!(r.capacity > 0 && r.used > 0);
        assert_eq!(r.chunks.len(), 1);
        assert_eq!(
            (r.chunks[0].chunk_id, r.chunks[0].version, r.chunks[0].size),
            (0x10, 2, 5)
        );
    }
    // The chunk size from the reply now bounds writes.
    let e = c
        .write(write_req(0x11, 1, MIB - 1, b"xy", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A new replica is announced early, well before the 3 s period.
    let t0 = Instant::now();
    c.write(write_req(0x12, 1, 0, b"new", &[])).await.unwrap();
    wait_until_async("early beat", Duration::from_secs(2), async || {
        log.lock()
            .beats
            .iter()
            .any(|b| b.added.iter().any(|a| a.chunk_id == 0x12))
    })
    .await;
    assert!(
        t0.elapsed() < Duration::from_millis(1000),
        "early beat took {:?}",
        t0.elapsed()
    );
    let beat = log
        .lock()
        .beats
        .iter()
        .find(|b| b.added.iter().any(|a| a.chunk_id == 0x12))
        .cloned()
        .unwrap();
    assert_eq!(beat.chunkd_id, daemon.chunkd_id);
    assert_eq!(
        beat.added.iter().find(|a| a.chunk_id == 0x12).unwrap().size,
        3
    );
    // Chunk 0x10 was covered by registration, not repeated as a delta.
    assert!(!log
        .lock()
        .beats
        .iter()
        .any(|b| b.added.iter().any(|a| a.chunk_id == 0x10)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_reregisters_and_resends_failed_deltas() {
    let d = tempfile::tempdir().unwrap();
    let mds = FakeMds::new(64 * MIB, 100);
    let mds_addr = mds.serve("127.0.0.1:0").await.to_string();
    let log = mds.log.clone();
    let daemon = start_chunkd(d.path(), &mds_addr, |c| c.heartbeat_ms = Some(100)).await;
    wait_until_async("registration", Duration::from_secs(5), async || {
        !log.lock().registers.is_empty()
    })
    .await;
    let mut c = client(daemon.addr);

    // Beats fail for a while: the delta is kept and resent.
    log.lock().fail_beats = true;
    c.write(write_req(0x20, 1, 0, b"kept", &[])).await.unwrap();
    // Two beats failed since the write: at least one of them carried it.
    let failed = log.lock().failed_beats;
    wait_until_async("two failed beats", Duration::from_secs(3), async || {
        log.lock().failed_beats >= failed + 2
    })
    .await;
    assert!(log
        .lock()
        .beats
        .iter()
        .all(|b| b.added.iter().all(|a| a.chunk_id != 0x20)));
    log.lock().fail_beats = false;
    wait_until_async(
        "delta resent after failures",
        Duration::from_secs(3),
        async || {
            log.lock()
                .beats
                .iter()
                .any(|b| b.added.iter().any(|a| a.chunk_id == 0x20))
        },
    )
    .await;

    // delete_chunks removes the replica and the next beat reports it removed.
    let path = daemon.store.chunk_path(0x20);
    assert!(path.exists());
    log.lock().delete_next = vec![0x20];
    wait_until_async(
        "a beat reporting 0x20 removed",
        Duration::from_secs(3),
        async || log.lock().beats.iter().any(|b| b.removed.contains(&0x20)),
    )
    .await;
    assert!(!path.exists());
    assert_eq!(
        read(&mut c, 0x20, 0, 1).await.unwrap_err().code(),
        Code::NotFound
    );

    // reregister: a fresh Register with everything held.
    c.write(write_req(0x21, 5, 0, b"z", &[])).await.unwrap();
    log.lock().reregister_next = true;
    wait_until_async("re-registered", Duration::from_secs(3), async || {
        log.lock().registers.len() >= 2
    })
    .await;
    let r = log.lock().registers[1].clone();
    assert_eq!(
        r.chunks
            .iter()
            .map(|c| (c.chunk_id, c.version))
            .collect::<Vec<_>>(),
        vec![(0x21, 5)]
    );
    // Capacity and usage travel with every beat.
    let last = log.lock().beats.last().cloned().unwrap();
    assert_eq!(last.capacity, daemon.store.capacity());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_read_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let mds = FakeMds::new(64 * MIB, 100);
    let mds_addr = mds.serve("127.0.0.1:0").await.to_string();
    let log = mds.log.clone();
    let daemon = start_chunkd(d.path(), &mds_addr, |_| {}).await;
    wait_until_async("registration", Duration::from_secs(5), async || {
        daemon.store.chunk_size().is_some()
    })
    .await;
    let mut c = client(daemon.addr);
    c.write(write_req(0x30, 1, 0, &nonzero_pattern(200_000, 3), &[]))
        .await
        .unwrap();
    flip(
        &daemon.store.chunk_path(0x30),
        header_len(64 * MIB) + 70_000,
    );
    assert_eq!(
        read(&mut c, 0x30, 65536, 10).await.unwrap_err().code(),
        Code::DataLoss
    );
    // The other blocks still serve.
    assert_eq!(
        read(&mut c, 0x30, 0, 10).await.unwrap(),
        nonzero_pattern(10, 3)
    );
    wait_until_async(
        "a corruption report of 0x30",
        Duration::from_secs(5),
        async || {
            log.lock()
                .corrupt
                .iter()
                .any(|r| r.chunk_id == 0x30 && r.chunkd_id == daemon.chunkd_id)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrubber_finds_and_quarantines_corruption() {
    let d = tempfile::tempdir().unwrap();
    let mds = FakeMds::new(64 * MIB, 100);
    let mds_addr = mds.serve("127.0.0.1:0").await.to_string();
    let log = mds.log.clone();
    let daemon = start_chunkd(d.path(), &mds_addr, |c| {
        c.scrub_interval = 1;
        c.heartbeat_ms = Some(100);
    })
    .await;
    wait_until_async("registration", Duration::from_secs(5), async || {
        daemon.store.chunk_size().is_some()
    })
    .await;
    let mut c = client(daemon.addr);
    c.write(write_req(0x40, 1, 0, &nonzero_pattern(300_000, 1), &[]))
        .await
        .unwrap();
    c.write(write_req(0x41, 1, 0, &nonzero_pattern(300_000, 2), &[]))
        .await
        .unwrap();
    flip(
        &daemon.store.chunk_path(0x40),
        header_len(64 * MIB) + 250_000,
    );
    wait_until_async("scrub reported", Duration::from_secs(10), async || {
        log.lock().corrupt.iter().any(|r| r.chunk_id == 0x40)
    })
    .await;
    assert!(daemon.store.corrupt_path(0x40).exists());
    assert!(!daemon.store.chunk_path(0x40).exists());
    wait_until_async(
        "a beat reporting 0x40 removed",
        Duration::from_secs(3),
        async || log.lock().beats.iter().any(|b| b.removed.contains(&0x40)),
    )
    .await;
    // Never served again; the healthy chunk is untouched.
    assert_eq!(
        read(&mut c, 0x40, 0, 1).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        read(&mut c, 0x41, 0, 300_000).await.unwrap(),
        nonzero_pattern(300_000, 2)
    );
    assert!(!log.lock().corrupt.iter().any(|r| r.chunk_id == 0x41));
}
