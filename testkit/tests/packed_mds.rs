//! Packed small files at the MDS with real processes (a TLS cluster with
//! chunk capabilities, two chunk daemons, one replica each): a needle
//! written by hand the way a mount packs a file (CreateSegment, a write
//! lease on the segment's chunk 0, the needle written at its offset,
//! CommitPacked), then:
//! - a reader's GetChunks names the needle, and its bytes read back;
//! - the segment's chunk is its writer's alone (EACCES for another session);
//! - a second CommitPacked is EAGAIN;
//! - an AllocChunk from another session unpacks: the file's chunk 0 holds
//!   the needle's bytes (hash), and a mount appending to the file then
//!   reads needle + appended bytes;
//! - an unpack whose copy fails (the segment's daemon killed) is done again
//!   by the next AllocChunk once the daemon is back.

use std::time::Duration;
use weft_proto::pb;
use weft_proto::pb::meta_reply::Result as R;
use weft_proto::pb::meta_request::Op;
use weft_testkit::mds::{lookup, RawMeta};
use weft_testkit::{pattern, sha256_hex, test_ca, TestCluster};

const MIB: u64 = 1 << 20;

fn cluster() -> TestCluster {
    TestCluster::start_with(2, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(1);
        s.tls_ca = Some(test_ca());
    })
}

/// A needle as weft.proto's "Packed small files" lays it out.
fn needle(ino: u64, data: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(32 + data.len() + 64);
    h.extend_from_slice(b"WNDL");
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&ino.to_le_bytes());
    h.extend_from_slice(&(data.len() as u64).to_le_bytes());
    h.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    let hcrc = crc32c::crc32c(&h[8..32]);
    h[4..8].copy_from_slice(&hcrc.to_le_bytes());
    h.extend_from_slice(data);
    h.resize(h.len().next_multiple_of(64), 0);
    h
}

async fn chunk_client(addr: &str) -> pb::chunk_client::ChunkClient<tonic::transport::Channel> {
    let ch = weft_proto::net::endpoint(addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::chunk_client::ChunkClient::new(ch)
}

struct Writer {
    meta: RawMeta,
    session: u64,
    seq: u64,
}

impl Writer {
    async fn call(&mut self, op: Op) -> Result<R, i32> {
        self.seq += 1;
        self.meta.call(self.session, self.seq, op).await
    }

    async fn alloc(&mut self, ino: u64, index: u64) -> Result<pb::ChunkWrite, i32> {
        let op = Op::AllocChunk(pb::AllocChunkReq {
            ino,
            index,
            failed: vec![],
        });
        match self.call(op).await? {
            R::ChunkWrite(cw) => Ok(cw),
            r => panic!("AllocChunk answered {r:?}"),
        }
    }

    /// Packs `data` as file `ino`'s needle at `offset` of a new segment:
    /// (segment ino, its chunk's location).
    async fn pack(&mut self, ino: u64, offset: u64, data: &[u8]) -> (u64, pb::ChunkLoc) {
        let seg = match self.call(Op::CreateSegment(pb::CreateSegmentReq {})).await {
            Ok(R::Attr(a)) => a,
            other => panic!("CreateSegment: {other:?}"),
        };
        assert_eq!((seg.mode, seg.uid, seg.nlink), (0o600, 0, 1));
        let cw = self
            .alloc(seg.ino, 0)
            .await
            .expect("a lease on the segment");
        let loc = cw.chunk.clone().unwrap();
        let mut c = chunk_client(&loc.replicas[0].addr).await;
        c.write(pb::WriteReq {
            chunk_id: loc.chunk_id,
            version: loc.version,
            lease_epoch: cw.lease_epoch,
            offset,
            data: needle(ino, data).into(),
            sync: true,
            term: cw.term,
            cap: loc.cap.clone(),
            ..Default::default()
        })
        .await
        .expect("needle written");
        let commit = Op::CommitPacked(pb::CommitPackedReq {
            ino,
            segment: seg.ino,
            chunk_id: loc.chunk_id,
            offset,
            len: data.len() as u64,
            end: data.len() as u64,
            then_setattr: Vec::new(),
        });
        match self.call(commit).await {
            Ok(R::Attr(a)) => assert_eq!(a.size, data.len() as u64),
            other => panic!("CommitPacked: {other:?}"),
        }
        (seg.ino, loc)
    }
}

async fn chunks(meta: &RawMeta, session: u64, ino: u64) -> pb::ChunkList {
    let op = Op::GetChunks(pb::GetChunksReq {
        ino,
        first_index: 0,
        count: 2,
    });
    match meta.call(session, 0, op).await {
        Ok(R::Chunks(l)) => l,
        other => panic!("GetChunks: {other:?}"),
    }
}

async fn read(loc: &pb::ChunkLoc, offset: u64, len: u64) -> Vec<u8> {
    let mut c = chunk_client(&loc.replicas[0].addr).await;
    c.read(pb::ReadReq {
        chunk_id: loc.chunk_id,
        version: loc.version,
        offset,
        length: len as u32,
        cap: loc.cap.clone(),
    })
    .await
    .expect("chunk read")
    .into_inner()
    .data
    .to_vec()
}

#[test]
fn an_alloc_chunk_unpacks_a_needle_into_the_files_own_chunk() {
    let mut c = cluster();
    let m = c.mount();
    std::fs::write(m.join("small"), b"").unwrap();
    let data = pattern(5000, 7);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ino, seg) = rt.block_on(async {
        let meta = RawMeta::connect(&c.mds_addr()).await;
        let ino = match meta.call(1, 0, lookup(1, "small")).await {
            Ok(R::Attr(a)) => a.ino,
            other => panic!("lookup: {other:?}"),
        };
        let mut w = Writer {
            meta: meta.clone(),
            session: rand::random::<u64>() | 1,
            seq: 0,
        };
        let (seg, seg_loc) = w.pack(ino, 128, &data).await;

        // A reader of the file gets the needle, not chunks.
        let reader = rand::random::<u64>() | 1;
        let l = chunks(&meta, reader, ino).await;
        assert!(l.chunks.is_empty(), "{l:?}");
        assert_eq!(l.file_size, 5000);
        let n = l.packed.expect("the needle");
        assert_eq!((n.offset, n.len), (128, 5000));
        let nloc = n.chunk.unwrap();
        assert_eq!((nloc.chunk_id, nloc.index), (seg_loc.chunk_id, 0));
        let got = read(&nloc, 128, 32 + 5000).await;
        assert_eq!(&got[..], &needle(ino, &data)[..32 + 5000]);

        // The segment is its writer's: another session gets no lease on
        // it, no locations, and cannot commit a needle in it.
        let mut other = Writer {
            meta: meta.clone(),
            session: reader,
            seq: 0,
        };
        assert_eq!(other.alloc(seg, 0).await.err(), Some(libc::EACCES));
        let seg_chunks = Op::GetChunks(pb::GetChunksReq {
            ino: seg,
            first_index: 0,
            count: 1,
        });
        assert_eq!(
            meta.call(reader, 0, seg_chunks).await.err(),
            Some(libc::EACCES)
        );
        // Nor does anyone see it as a file.
        let getattr = Op::Getattr(pb::GetAttrReq { ino: seg });
        assert_eq!(
            meta.call(reader, 0, getattr).await.err(),
            Some(libc::ENOENT)
        );
        // The file has its data: a second needle is refused.
        let again = Op::CommitPacked(pb::CommitPackedReq {
            ino,
            segment: seg,
            chunk_id: seg_loc.chunk_id,
            offset: 128 + 5056,
            len: 10,
            end: 10,
            then_setattr: Vec::new(),
        });
        assert_eq!(w.call(again.clone()).await.err(), Some(libc::EAGAIN));

        // Another session's AllocChunk unpacks: chunk 0 holds the bytes.
        let cw = other.alloc(ino, 0).await.expect("a lease after the unpack");
        let loc = cw.chunk.unwrap();
        assert_ne!(loc.chunk_id, seg_loc.chunk_id);
        let l = chunks(&meta, reader, ino).await;
        assert!(l.packed.is_none());
        assert_eq!(l.chunks[0].chunk_id, loc.chunk_id);
        let got = read(&l.chunks[0], 0, 5000).await;
        assert_eq!(sha256_hex(&got), sha256_hex(&data));
        // The needle is no longer the file's: the slot cannot be packed.
        assert_eq!(w.call(again.clone()).await.err(), Some(libc::EAGAIN));
        (ino, seg)
    });
    let _ = (ino, seg);
    // A segment is no file of anyone's.
    assert_eq!(c.cluster.status().unwrap().files, 1);
    // A mount sees the committed size (the MDS pushed the change), appends
    // to the unpacked file and reads it whole.
    weft_testkit::wait_until(
        "the mount sees the packed size",
        Duration::from_secs(10),
        || std::fs::metadata(m.join("small")).map(|a| a.len()).ok() == Some(5000),
    );
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("small"))
        .unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    let mut want = data.clone();
    want.extend_from_slice(b"tail");
    let got = std::fs::read(m.join("small")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&want));
}

#[test]
fn an_unpack_that_failed_is_done_again() {
    let mut c = cluster();
    let m = c.mount();
    std::fs::write(m.join("small"), b"").unwrap();
    let data = pattern(3000, 9);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ino, seg_addr) = rt.block_on(async {
        let meta = RawMeta::connect(&c.mds_addr()).await;
        let ino = match meta.call(1, 0, lookup(1, "small")).await {
            Ok(R::Attr(a)) => a.ino,
            other => panic!("lookup: {other:?}"),
        };
        let mut w = Writer {
            meta,
            session: rand::random::<u64>() | 1,
            seq: 0,
        };
        let (_, loc) = w.pack(ino, 0, &data).await;
        (ino, loc.replicas[0].addr.clone())
    });
    // The daemon holding the segment's only replica dies: the unpack's
    // copy cannot read the needle.
    let i = c
        .cluster
        .chunkds
        .iter()
        .position(|p| p.addr == seg_addr)
        .expect("the segment's daemon");
    c.cluster.chunkds[i].crash();
    // Once the MDS knows, the copy is placed on the live daemon, and only
    // the source is missing.
    weft_testkit::wait_until(
        "the MDS sees the daemon dead",
        Duration::from_secs(30),
        || {
            let s = c.cluster.status();
            s.is_ok_and(|s| s.chunkds.iter().filter(|d| d.alive).count() == 1)
        },
    );
    rt.block_on(async {
        let meta = RawMeta::connect(&c.mds_addr()).await;
        let mut other = Writer {
            meta: meta.clone(),
            session: rand::random::<u64>() | 1,
            seq: 0,
        };
        let mds_log = || std::fs::read_to_string(&c.cluster.mds.log).unwrap_or_default();
        assert_eq!(
            other.alloc(ino, 0).await.err(),
            Some(libc::EIO),
            "{}",
            mds_log()
        );
        // Still packed; the begun chunk waits in the log.
        let l = chunks(&meta, other.session, ino).await;
        assert!(l.packed.is_some());
    });
    c.cluster.start_chunkd(i).unwrap();
    c.cluster.wait_alive(2, Duration::from_secs(30)).unwrap();
    rt.block_on(async {
        let meta = RawMeta::connect(&c.mds_addr()).await;
        let mut other = Writer {
            meta: meta.clone(),
            session: rand::random::<u64>() | 1,
            seq: 0,
        };
        // The daemon's replica may take a heartbeat to be reported again.
        let mut cw = None;
        weft_testkit::wait_until_async(
            "an unpack once the daemon is back",
            Duration::from_secs(30),
            async || {
                cw = other.alloc(ino, 0).await.ok();
                cw.is_some()
            },
        )
        .await;
        let l = chunks(&meta, other.session, ino).await;
        assert!(l.packed.is_none());
        assert_eq!(l.chunks[0].chunk_id, cw.unwrap().chunk.unwrap().chunk_id);
        let got = read(&l.chunks[0], 0, 3000).await;
        assert_eq!(sha256_hex(&got), sha256_hex(&data));
    });
    let _ = m;
}
