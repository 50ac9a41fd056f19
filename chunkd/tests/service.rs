//! The Chunk service end to end: three in-process daemons (no MDS — the
//! heartbeat loop keeps retrying an address where nothing listens).

use tonic::Code;
use weft_chunkd::pipeline::failed_addr;
use weft_chunkd::store::format::{header_len, Header};
use weft_proto::{SyncReq, TruncateReq, MAX_IO};
use weft_testkit::chunkd::*;
use weft_testkit::flip_byte as flip;

const BS: usize = 65536;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_write_lands_on_all_replicas() {
    let (_dirs, ds, addrs) = start_chain(3).await;
    let mut first = client(&addrs[0]);

    let data = nonzero_pattern(3 * BS + 123, 5);
    let mut req = write_req(0xc0ffee, 1, 1000, &data, &addrs[1..]);
    req.sync = true;
    first.write(req).await.expect("pipelined write");
    let big = nonzero_pattern(MAX_IO, 9);
    first
        .write(write_req(0xc0ffee, 1, 4 << 20, &big, &addrs[1..]))
        .await
        .expect("MAX_IO write through the pipeline");

    for a in &addrs {
        let mut c = client(a);
        let got = read(&mut c, 0xc0ffee, 0, (3 * BS + 2000) as u32)
            .await
            .unwrap();
        assert!(got[..1000].iter().all(|&b| b == 0), "{a}: leading zeros");
        assert_eq!(&got[1000..1000 + data.len()], &data[..], "{a}: data");
        assert!(
            got[1000 + data.len()..].iter().all(|&b| b == 0),
            "{a}: trailing zeros"
        );
        assert_eq!(
            read(&mut c, 0xc0ffee, 4 << 20, MAX_IO as u32)
                .await
                .unwrap(),
            big,
            "{a}: big"
        );
    }

    // Sync and Truncate travel the same chain.
    first
        .sync(SyncReq {
            chunk_ids: vec![0xc0ffee],
            chain: addrs[1..].to_vec(),
            caps: vec![],
        })
        .await
        .unwrap();
    first
        .truncate(TruncateReq {
            chunk_id: 0xc0ffee,
            version: 1,
            length: 1010,
            chain: addrs[1..].to_vec(),
            lease_epoch: 1,
            serial: 0,
            cap: None,
        })
        .await
        .unwrap();
    for a in &addrs {
        let mut c = client(a);
        let got = read(&mut c, 0xc0ffee, 1000, 20).await.unwrap();
        assert_eq!(&got[..10], &data[..10], "{a}");
        assert_eq!(&got[10..], &[0u8; 10], "{a}");
        assert!(read(&mut c, 0xc0ffee, 4 << 20, 4096)
            .await
            .unwrap()
            .iter()
            .all(|&b| b == 0));
        assert_eq!(
            ds.iter()
                .find(|d| d.addr.to_string() == *a)
                .unwrap()
                .store
                .summary(0xc0ffee)
                .unwrap()
                .size,
            1010
        );
    }
    // Sync of a chunk a replica does not hold is an error, not a silent success.
    let e = first
        .sync(SyncReq {
            chunk_ids: vec![absent_id()],
            chain: addrs[1..].to_vec(),
            caps: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

const fn absent_id() -> u64 {
    0x5eed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_replica_in_chain_is_unavailable() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mds = dead_addr();
    let a = start_chunkd(d1.path(), &mds, |_| {}).await;
    let b = start_chunkd(d2.path(), &mds, |_| {}).await;
    let dead = dead_addr();
    let mut c = client(a.addr);

    // The dead replica right after the first...
    let e = c
        .write(write_req(1, 1, 0, b"hello", std::slice::from_ref(&dead)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&dead),
        "message names the dead replica: {}",
        e.message()
    );
    assert_eq!(failed_addr(&e).as_deref(), Some(dead.as_str()));

    // ...and one hop further down: still UNAVAILABLE naming the dead one.
    let e = c
        .write(write_req(
            2,
            1,
            0,
            b"hello",
            &[b.addr.to_string(), dead.clone()],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&dead), "{}", e.message());
    assert_eq!(failed_addr(&e).as_deref(), Some(dead.as_str()));
    // The live replicas did apply it (the client retries or re-replicates).
    assert_eq!(read(&mut client(b.addr), 2, 0, 5).await.unwrap(), b"hello");

    let e = c
        .truncate(TruncateReq {
            chunk_id: 2,
            version: 1,
            length: 0,
            chain: vec![dead.clone()],
            lease_epoch: 1,
            serial: 0,
            cap: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    let e = c
        .sync(SyncReq {
            chunk_ids: vec![2],
            chain: vec![dead.clone()],
            caps: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_version_and_epoch_refused() {
    let d = tempfile::tempdir().unwrap();
    let daemon = start_chunkd(d.path(), &dead_addr(), |_| {}).await;
    let mut c = client(daemon.addr);
    c.write(write_req(7, 3, 0, b"v3", &[])).await.unwrap();
    let e = c.write(write_req(7, 2, 0, b"v2", &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = c
        .read(weft_proto::ReadReq {
            chunk_id: 7,
            version: 2,
            offset: 0,
            length: 2,
            cap: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let mut older_epoch = write_req(7, 3, 0, b"xx", &[]);
    older_epoch.lease_epoch = 0;
    assert_eq!(
        c.write(older_epoch).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    // A newer version is adopted.
    c.write(write_req(7, 4, 0, b"v4", &[])).await.unwrap();
    let r = c
        .read(weft_proto::ReadReq {
            chunk_id: 7,
            version: 4,
            offset: 0,
            length: 2,
            cap: None,
        })
        .await
        .unwrap();
    assert_eq!(&r.into_inner().data[..], b"v4");
    assert_eq!(daemon.store.summary(7).unwrap().version, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_codes() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mds = dead_addr();
    let a = start_chunkd(d1.path(), &mds, |_| {}).await;
    let small = start_chunkd(d2.path(), &mds, |c| c.capacity = Some(256 << 10)).await;
    let mut c = client(a.addr);

    assert_eq!(
        read(&mut c, 404, 0, 1).await.unwrap_err().code(),
        Code::NotFound
    );
    c.write(write_req(1, 1, 0, b"x", &[])).await.unwrap();
    // Before registration the chunk size is provisional (1 GiB).
    assert_eq!(
        read(&mut c, 1, 1 << 30, 1).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.write(write_req(1, 1, (1 << 30) - 1, b"xy", &[]))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        read(&mut c, 1, 0, MAX_IO as u32 + 1)
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // A full replica downstream: its RESOURCE_EXHAUSTED comes back up, naming it.
    let e = c
        .write(write_req(
            2,
            1,
            0,
            &nonzero_pattern(512 << 10, 1),
            &[small.addr.to_string()],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains(&small.addr.to_string()));
    assert_eq!(
        read(&mut client(small.addr), 2, 0, 1)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // A flipped byte is DATA_LOSS, never data.
    let path = a.store.chunk_path(1);
    flip(&path, weft_chunkd::store::format::header_len(1 << 30)); // data byte 0
    assert_eq!(
        read(&mut c, 1, 0, 1).await.unwrap_err().code(),
        Code::DataLoss
    );
}

use weft_testkit::sha256_hex as sha256;

/// Many overlapping writes (and some truncates) to one chunk from concurrent
/// clients at once: every replica must end with the same bytes, because the
/// primary numbers the chunk's mutations and every replica applies them in
/// that order. Checked on the replica files themselves (header, crcs, data),
/// and against what a read returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_overlapping_writes_leave_identical_replicas() {
    let (_dirs, ds, addrs) = start_chain(3).await;
    const CHUNK: u64 = 0xabc;
    const SPAN: usize = 4 * BS;
    for round in 0..5u8 {
        let writers: Vec<_> = (0..24u8)
            .map(|w| {
                let (primary, chain) = (addrs[0].clone(), addrs[1..].to_vec());
                tokio::spawn(async move {
                    let mut c = client(&primary);
                    if w % 8 == 7 {
                        // A cut somewhere in the span, ordered among the writes.
                        c.truncate(TruncateReq {
                            chunk_id: CHUNK,
                            version: 1,
                            length: (w as u64 * 1553) % SPAN as u64,
                            chain,
                            lease_epoch: 1,
                            serial: 0,
                            cap: None,
                        })
                        .await
                        .expect("concurrent truncate");
                        return;
                    }
                    // Each writer covers most of the span with its own byte,
                    // starting at a different offset: every pair overlaps.
                    let off = (w as usize * 977) % BS;
                    let data = vec![round.wrapping_mul(31).wrapping_add(w + 1); SPAN - BS];
                    c.write(write_req(CHUNK, 1, off as u64, &data, &chain))
                        .await
                        .expect("overlapping write");
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let files: Vec<Vec<u8>> = ds
            .iter()
            .map(|d| std::fs::read(d.store.chunk_path(CHUNK)).unwrap())
            .collect();
        let reads: Vec<Vec<u8>> = {
            let mut v = Vec::new();
            for a in &addrs {
                v.push(read(&mut client(a), CHUNK, 0, SPAN as u32).await.unwrap());
            }
            v
        };
        for i in 1..files.len() {
            assert_eq!(
                sha256(&files[i]),
                sha256(&files[0]),
                "round {round}: replica file on {} differs from the primary's",
                addrs[i]
            );
            assert_eq!(
                sha256(&reads[i]),
                sha256(&reads[0]),
                "round {round}: a read from {} differs from the primary's",
                addrs[i]
            );
        }
        // The bytes a read returns are the file's data, after its header.
        let (_, _, chunk_size, data_len) = Header::decode_fixed(&files[0]).unwrap();
        let (at, len) = (header_len(chunk_size) as usize, data_len as usize);
        assert_eq!(
            sha256(&reads[0][..len]),
            sha256(&files[0][at..at + len]),
            "round {round}: a read differs from the replica file"
        );
        assert!(reads[0][len..].iter().all(|&b| b == 0));
    }
}

/// A punch carries no data, only its length: every replica of the chain
/// makes the zeros itself, frees the whole blocks, and reports what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_punch_without_data_zeros_the_range_on_every_replica() {
    let (_dirs, _ds, addrs) = start_chain(3).await;
    let mut first = client(&addrs[0]);
    let data = nonzero_pattern(8 * BS, 3);
    let full = first
        .write(write_req(0xbeef, 1, 0, &data, &addrs[1..]))
        .await
        .unwrap()
        .into_inner()
        .allocated
        .unwrap();
    assert!(full >= data.len() as u64, "{full} bytes allocated");

    // [BS + 10, 6 BS + 20): four whole blocks freed, edges written.
    let mut req = write_req(0xbeef, 1, BS as u64 + 10, &[], &addrs[1..]);
    req.punch = true;
    req.punch_length = 5 * BS as u64 + 10;
    let punched = first.write(req).await.unwrap().into_inner();
    assert_eq!(punched.allocated, Some(full - 4 * BS as u64));
    let mut want = data.clone();
    want[BS + 10..6 * BS + 20].fill(0);
    for a in &addrs {
        let got = read(&mut client(a), 0xbeef, 0, want.len() as u32)
            .await
            .unwrap();
        assert!(got == want, "{a}: bytes after the punch differ");
    }

    // Longer than one message may carry: refused, nothing changed.
    let mut req = write_req(0xbeef, 1, 0, &[], &addrs[1..]);
    req.punch = true;
    req.punch_length = MAX_IO as u64 + 1;
    let e = first.write(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}
