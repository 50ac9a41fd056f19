//! Chunk capabilities with real processes (proto/src/caps.rs): a TLS cluster
//! whose MDS and chunk daemon share the CA's `cap.key`, the MDS signing
//! capabilities that last `--cap-ttl-ms 3000`.
//!
//! - a client that may not open a file gets no capability from the MDS, and
//!   the chunk daemon refuses it the chunk even with its id and version
//!   known: without a capability, with a forged or altered one, with an
//!   expired one, with a read capability for a write; nothing changes;
//! - a read-only open lends no write: a session that opened a file O_RDONLY
//!   (and may not write it) gets no write lease, no write capability and no
//!   commit from the MDS, and its read capability writes nothing on the
//!   chunk daemon; an open for writing lends them until it is released;
//! - every refusal is logged with who and why and counted in the daemon's
//!   metrics;
//! - a file held open across many capability lifetimes keeps working
//!   (weftfs renews ahead of expiry and on a refusal);
//! - a packed file's capability reads its needle's bytes of the segment
//!   chunk only, not a neighbour's (nor a widened range: the MAC covers it).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::time::{Duration, Instant};
use weft_proto::pb;
use weft_proto::pb::meta_reply::Result as R;
use weft_testkit::mds::{lookup, RawMeta};
use weft_testkit::{http, pattern, sha256_hex, test_ca, TestCluster};

const MIB: u64 = 1 << 20;
const TTL_MS: u64 = 3000;

fn cluster() -> TestCluster {
    TestCluster::start_with(1, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(1);
        s.tls_ca = Some(test_ca());
        s.http = true;
        s.mds_args = vec!["--cap-ttl-ms".into(), TTL_MS.to_string()];
    })
}

fn chunkd_log(c: &TestCluster) -> String {
    fs::read_to_string(&c.cluster.chunkds[0].log).unwrap_or_default()
}

fn cap_refusals(c: &TestCluster, needle: &str) -> usize {
    chunkd_log(c)
        .lines()
        .filter(|l| l.contains("refused") && l.contains("capability") && l.contains(needle))
        .count()
}

fn refused_metric(c: &TestCluster) -> u64 {
    let addr = c.cluster.chunkds[0].http.clone().expect("chunkd --http");
    let (code, body) = http::get(&addr, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    body.lines()
        .find(|l| l.starts_with("weft_chunkd_refused_total{kind=\"capability\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no capability refusal counter in:\n{body}"))
}

fn user(uid: u32) -> pb::Caller {
    pb::Caller {
        uid,
        gid: uid,
        groups: vec![],
        pid: 1,
    }
}

async fn chunk_client(addr: &str) -> pb::chunk_client::ChunkClient<tonic::transport::Channel> {
    let ch = weft_proto::net::endpoint(addr)
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::chunk_client::ChunkClient::new(ch)
}

fn read_req(loc: &pb::ChunkLoc, cap: Option<pb::ChunkCap>) -> pb::ReadReq {
    pb::ReadReq {
        chunk_id: loc.chunk_id,
        version: loc.version,
        offset: 0,
        length: 4096,
        cap,
    }
}

fn write_req(loc: &pb::ChunkLoc, cap: Option<pb::ChunkCap>) -> pb::WriteReq {
    pb::WriteReq {
        chunk_id: loc.chunk_id,
        version: loc.version,
        lease_epoch: 1,
        offset: 0,
        data: vec![0x66; 4096].into(),
        chain: vec![],
        sync: true,
        punch: false,
        serial: 0,
        punch_length: 0,
        term: 0,
        cap,
        source: None,
    }
}

#[test]
fn a_chunk_is_served_only_with_a_valid_capability() {
    let mut c = cluster();
    let m = c.mount(); // client-1, root
    let secret = pattern(MIB as usize, 3);
    fs::write(m.join("private"), &secret).unwrap();
    std::os::unix::fs::chown(m.join("private"), Some(2000), Some(2000)).unwrap();
    fs::set_permissions(m.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
    let chunkd = c.cluster.chunkds[0].addr.clone();
    let before = refused_metric(&c);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // This process's certificate is test-admin (the Meta and Chunk roles).
        let meta = RawMeta::connect(&c.mds_addr()).await;
        let session = rand::random::<u64>() | 1;
        let ino = match meta.call(session, 0, lookup(1, "private")).await {
            Ok(R::Attr(a)) => a.ino,
            other => panic!("lookup: {other:?}"),
        };
        let get_chunks = pb::meta_request::Op::GetChunks(pb::GetChunksReq {
            ino,
            first_index: 0,
            count: 1,
        });
        // uid 1000 may not open the file: no locations, no capability.
        assert_eq!(
            meta.call_as(user(1000), session, 0, get_chunks.clone())
                .await
                .err(),
            Some(libc::EACCES)
        );
        // The owner may: its answer tells us (the attacker) the id and version.
        let loc = match meta
            .call_as(user(2000), session, 0, get_chunks.clone())
            .await
        {
            Ok(R::Chunks(l)) => l.chunks[0].clone(),
            other => panic!("get_chunks: {other:?}"),
        };
        let good = loc.cap.clone().expect("a capability with the location");
        assert!(!good.write && good.chunk_id == loc.chunk_id);
        let mut chunk = chunk_client(&chunkd).await;
        let refused = |r: Result<tonic::Response<pb::ReadReply>, tonic::Status>| {
            let s = r.expect_err("served without a valid capability");
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
            s.message().to_string()
        };

        // No capability, id and version known.
        let why = refused(chunk.read(read_req(&loc, None)).await);
        assert!(why.contains("no capability"), "{why}");
        // Forged: a MAC of our own making, or another chunk's capability.
        let mut forged = good.clone();
        forged.mac = vec![0u8; 32];
        let why = refused(chunk.read(read_req(&loc, Some(forged))).await);
        assert!(why.contains("signature"), "{why}");
        let mut longer = good.clone();
        longer.expires_ms += 3_600_000;
        refused(chunk.read(read_req(&loc, Some(longer))).await);
        let mut other = good.clone();
        other.chunk_id += 1;
        refused(chunk.read(read_req(&loc, Some(other))).await);
        // The real one reads (until it expires).
        let d = chunk
            .read(read_req(&loc, Some(good.clone())))
            .await
            .expect("a valid capability reads")
            .into_inner()
            .data;
        assert_eq!(&d[..], &secret[..4096]);
        // A read capability does not write; no capability does not write.
        let s = chunk
            .write(write_req(&loc, Some(good.clone())))
            .await
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains("read capability for a write"), "{s:?}");
        let s = chunk.write(write_req(&loc, None)).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        let trunc = pb::TruncateReq {
            chunk_id: loc.chunk_id,
            version: loc.version,
            length: 0,
            chain: vec![],
            lease_epoch: 1,
            serial: 0,
            cap: None,
        };
        let s = chunk.truncate(trunc).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        // Expired: the same capability once its time is up (a duration:
        // expiry is by the clock).
        let wait = good.expires_ms.saturating_sub(weft_proto::caps::unix_ms()) + 200;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let why = refused(chunk.read(read_req(&loc, Some(good.clone()))).await);
        assert!(why.contains("expired"), "{why}");
    });
    // Nothing changed.
    assert_eq!(
        sha256_hex(&fs::read(m.join("private")).unwrap()),
        sha256_hex(&secret)
    );
    // Logged with who and why, and counted.
    assert!(
        cap_refusals(&c, "admin/test-admin") >= 8,
        "{}",
        chunkd_log(&c)
    );
    assert!(cap_refusals(&c, "expired") >= 1, "{}", chunkd_log(&c));
    assert!(cap_refusals(&c, "signature") >= 1, "{}", chunkd_log(&c));
    assert!(
        refused_metric(&c) >= before + 8,
        "metric {}",
        refused_metric(&c)
    );
}

fn mds_log(c: &TestCluster) -> String {
    fs::read_to_string(&c.cluster.mds.log).unwrap_or_default()
}

fn open(ino: u64, flags: i32) -> pb::meta_request::Op {
    pb::meta_request::Op::Open(pb::OpenReq {
        ino,
        flags: flags as u32,
    })
}

fn alloc(ino: u64) -> pb::meta_request::Op {
    pb::meta_request::Op::AllocChunk(pb::AllocChunkReq {
        ino,
        index: 0,
        failed: vec![],
    })
}

fn commit(ino: u64, end: u64) -> pb::meta_request::Op {
    pb::meta_request::Op::CommitWrite(pb::CommitWriteReq {
        ino,
        end,
        ..Default::default()
    })
}

#[test]
fn a_read_only_open_lends_no_write() {
    let mut c = cluster();
    let m = c.mount(); // client-1, root
    let data = pattern(MIB as usize, 5);
    fs::write(m.join("shared"), &data).unwrap();
    // Owned by 2000, readable by everyone, writable by its owner only.
    std::os::unix::fs::chown(m.join("shared"), Some(2000), Some(2000)).unwrap();
    fs::set_permissions(m.join("shared"), fs::Permissions::from_mode(0o644)).unwrap();
    let chunkd = c.cluster.chunkds[0].addr.clone();
    let before = refused_metric(&c);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let meta = RawMeta::connect(&c.mds_addr()).await;
        let reader = rand::random::<u64>() | 1;
        let ino = match meta.call(reader, 0, lookup(1, "shared")).await {
            Ok(R::Attr(a)) => a.ino,
            other => panic!("lookup: {other:?}"),
        };
        // uid 1000 may read the file: its read-only open succeeds.
        let as_reader = |seq, op| meta.call_as(user(1000), reader, seq, op);
        assert!(as_reader(1, open(ino, libc::O_RDONLY)).await.is_ok());
        // ... and lends no write: no lease (so no write capability), no commit.
        assert_eq!(as_reader(2, alloc(ino)).await.err(), Some(libc::EACCES));
        assert_eq!(
            as_reader(3, commit(ino, 64 * MIB)).await.err(),
            Some(libc::EACCES)
        );
        // Nor a truncate claiming to come through a descriptor (ftruncate).
        let ftruncate = pb::meta_request::Op::Setattr(pb::SetAttrReq {
            ino,
            size: Some(0),
            has_fh: true,
            ..Default::default()
        });
        assert_eq!(as_reader(6, ftruncate).await.err(), Some(libc::EACCES));
        // An O_TRUNC read-only open would truncate: refused (EACCES) as ext4
        // refuses it, and it leaves no write either.
        assert_eq!(
            as_reader(4, open(ino, libc::O_RDONLY | libc::O_TRUNC))
                .await
                .err(),
            Some(libc::EACCES)
        );
        assert_eq!(as_reader(5, alloc(ino)).await.err(), Some(libc::EACCES));
        // It reads: a read capability, which the chunk daemon takes for a read
        // and refuses for a write.
        let get_chunks = pb::meta_request::Op::GetChunks(pb::GetChunksReq {
            ino,
            first_index: 0,
            count: 1,
        });
        let loc = match as_reader(0, get_chunks).await {
            Ok(R::Chunks(l)) => l.chunks[0].clone(),
            other => panic!("get_chunks: {other:?}"),
        };
        let cap = loc.cap.clone().expect("a read capability");
        assert!(!cap.write);
        let mut chunk = chunk_client(&chunkd).await;
        let d = chunk
            .read(read_req(&loc, Some(cap.clone())))
            .await
            .expect("the read capability reads")
            .into_inner()
            .data;
        assert_eq!(&d[..], &data[..4096]);
        let s = chunk
            .write(write_req(&loc, Some(cap.clone())))
            .await
            .unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains("read capability for a write"), "{s:?}");

        // The contrast: the owner's open for writing lends a write lease with
        // a write capability, even once the file is chmod'ed read-only
        // (as a local descriptor stays writable)...
        let writer = rand::random::<u64>() | 1;
        let as_writer = |seq, op| meta.call_as(user(2000), writer, seq, op);
        assert!(as_writer(1, open(ino, libc::O_RDWR)).await.is_ok());
        let chmod = pb::meta_request::Op::Setattr(pb::SetAttrReq {
            ino,
            mode: Some(0o444),
            ..Default::default()
        });
        assert!(as_writer(2, chmod).await.is_ok());
        match as_writer(3, alloc(ino)).await {
            Ok(R::ChunkWrite(w)) => {
                let wcap = w.chunk.and_then(|l| l.cap).expect("a write capability");
                assert!(wcap.write);
            }
            other => panic!("the writer's lease: {other:?}"),
        }
        // ... until it is closed: a read-only open then lends nothing.
        assert!(as_writer(4, open(ino, libc::O_RDONLY)).await.is_ok());
        let release = pb::meta_request::Op::Release(pb::ReleaseReq {
            ino,
            write: true,
            more: Vec::new(),
            held: false,
            atimes: Vec::new(),
        });
        assert!(as_writer(5, release).await.is_ok());
        assert_eq!(as_writer(6, alloc(ino)).await.err(), Some(libc::EACCES));
        assert_eq!(
            as_writer(7, commit(ino, 64 * MIB)).await.err(),
            Some(libc::EACCES)
        );
    });
    // Nothing changed: the bytes and the size.
    let now = fs::read(m.join("shared")).unwrap();
    assert_eq!(now.len(), data.len());
    assert_eq!(sha256_hex(&now), sha256_hex(&data));
    // Each refusal logged with who and why, and the daemon's counted.
    let log = mds_log(&c);
    let mds_refusals = log
        .lines()
        .filter(|l| {
            l.contains("refused") && l.contains("admin/test-admin") && l.contains("(EACCES)")
        })
        .count();
    assert!(mds_refusals >= 5, "{log}");
    assert!(
        log.contains("holds the file open read-only and may not write it"),
        "{log}"
    );
    assert!(refused_metric(&c) > before, "metric {}", refused_metric(&c));
}

#[test]
fn a_long_open_file_keeps_working_past_capability_expiry() {
    let mut c = cluster();
    // No data cache and O_DIRECT: every read goes to the chunk daemon.
    let m = c.mount_with(&["data_cache=0"]);
    let data = pattern(4 * MIB as usize, 9);
    fs::write(m.join("old"), &data).unwrap();
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.join("old"))
        .unwrap();
    let mut writer = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(m.join("new"))
        .unwrap();
    let block = 64 << 10;
    let mut buf = weft_testkit_aligned(block);
    let t = Instant::now();
    let mut rounds = 0u64;
    // Three capability lifetimes and more, the files open all along.
    while t.elapsed() < Duration::from_millis(3 * TTL_MS + 1000) {
        let off = (rounds * block as u64 * 7) % (data.len() as u64 - block as u64);
        let off = off / 4096 * 4096;
        reader.seek(SeekFrom::Start(off)).unwrap();
        reader
            .read_exact(&mut buf[..])
            .unwrap_or_else(|e| panic!("read after {:?}: {e}", t.elapsed()));
        assert_eq!(
            &buf[..],
            &data[off as usize..off as usize + block],
            "at {off}"
        );
        writer.write_all(&pattern(block, rounds)).unwrap();
        writer
            .sync_all()
            .unwrap_or_else(|e| panic!("fsync after {:?}: {e}", t.elapsed()));
        rounds += 1;
        // A duration: the rounds are spread over the capabilities' lifetime.
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(writer);
    let mut want = Vec::new();
    for r in 0..rounds {
        want.extend(pattern(block, r));
    }
    assert_eq!(
        sha256_hex(&fs::read(m.join("new")).unwrap()),
        sha256_hex(&want)
    );
    // Renewed ahead of time: the daemon never had to refuse this mount.
    assert_eq!(cap_refusals(&c, "client/client-1"), 0, "{}", chunkd_log(&c));
}

/// A 4 KiB-aligned buffer of `len` bytes (O_DIRECT).
fn weft_testkit_aligned(len: usize) -> AlignedBuf {
    AlignedBuf::new(len)
}

struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: a non-zero size; freed in Drop with the same layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        AlignedBuf { ptr, len }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr holds len initialised bytes for the buffer's life.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).unwrap();
        // SAFETY: allocated in new with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

/// A packed file's read capability covers its needle only: the MDS signs
/// the needle's byte range of the segment chunk, and the chunk daemon
/// refuses a read (or a data-extents query) outside it, or a capability
/// whose range was widened.
#[test]
fn a_needles_capability_reads_its_needle_only() {
    let mut c = cluster();
    let m = c.mount(); // client-1, root
    fs::write(m.join("a"), b"").unwrap();
    fs::write(m.join("b"), b"").unwrap();
    let chunkd = c.cluster.chunkds[0].addr.clone();
    let before = refused_metric(&c);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let meta = RawMeta::connect(&c.mds_addr()).await;
        let writer = rand::random::<u64>() | 1;
        let ino = |name: &'static str| {
            let meta = meta.clone();
            async move {
                match meta.call(writer, 0, lookup(1, name)).await {
                    Ok(R::Attr(a)) => a.ino,
                    other => panic!("lookup: {other:?}"),
                }
            }
        };
        let (a, b) = (ino("a").await, ino("b").await);
        let seg = match meta
            .call(
                writer,
                1,
                pb::meta_request::Op::CreateSegment(pb::CreateSegmentReq {}),
            )
            .await
        {
            Ok(R::Attr(s)) => s.ino,
            other => panic!("CreateSegment: {other:?}"),
        };
        let cw = match meta.call(writer, 2, alloc(seg)).await {
            Ok(R::ChunkWrite(cw)) => cw,
            other => panic!("AllocChunk: {other:?}"),
        };
        let loc = cw.chunk.clone().unwrap();
        // Two needles side by side: a's 100 bytes at 0, b's secret at 192.
        let mut chunk = chunk_client(&chunkd).await;
        let secret = pattern(1000, 11);
        for (offset, file, data) in [(0u64, a, vec![b'a'; 100]), (192, b, secret.clone())] {
            let mut w = write_req(&loc, loc.cap.clone());
            w.lease_epoch = cw.lease_epoch;
            w.term = cw.term;
            w.offset = offset;
            let mut needle = b"WNDL\0\0\0\0".to_vec();
            needle.extend_from_slice(&file.to_le_bytes());
            needle.extend_from_slice(&(data.len() as u64).to_le_bytes());
            needle.extend_from_slice(&crc32c::crc32c(&data).to_le_bytes());
            needle.extend_from_slice(&[0; 4]);
            let hcrc = crc32c::crc32c(&needle[8..32]);
            needle[4..8].copy_from_slice(&hcrc.to_le_bytes());
            needle.extend_from_slice(&data);
            w.data = needle.into();
            chunk.write(w).await.expect("needle written");
            let commit = pb::meta_request::Op::CommitPacked(pb::CommitPackedReq {
                ino: file,
                segment: seg,
                chunk_id: loc.chunk_id,
                offset,
                len: data.len() as u64,
                end: data.len() as u64,
                then_setattr: Vec::new(),
            });
            assert!(meta.call(writer, 3 + offset, commit).await.is_ok());
        }
        // uid 1000 may read a (0644 by root) but is refused b's locations...
        fs::set_permissions(m.join("b"), fs::Permissions::from_mode(0o600)).unwrap();
        let reader = rand::random::<u64>() | 1;
        let get = |ino| {
            pb::meta_request::Op::GetChunks(pb::GetChunksReq {
                ino,
                first_index: 0,
                count: 1,
            })
        };
        assert_eq!(
            meta.call_as(user(1000), reader, 0, get(b)).await.err(),
            Some(libc::EACCES)
        );
        let n = match meta.call_as(user(1000), reader, 0, get(a)).await {
            Ok(R::Chunks(l)) => l.packed.expect("a needle"),
            other => panic!("GetChunks: {other:?}"),
        };
        let nloc = n.chunk.unwrap();
        let cap = nloc.cap.clone().expect("a capability");
        assert_eq!((cap.range_start, cap.range_end), (0, 32 + 100));
        // ... its needle reads ...
        let mut r = read_req(&nloc, Some(cap.clone()));
        r.length = 132;
        let d = chunk
            .read(r.clone())
            .await
            .expect("the needle reads")
            .into_inner()
            .data;
        assert_eq!(&d[32..], &[b'a'; 100][..]);
        // ... and b's bytes next to it do not, by any range that leaves it.
        for (offset, length) in [(192, 1032), (0, 4096), (100, 64), (132, 1)] {
            r.offset = offset;
            r.length = length;
            let s = chunk.read(r.clone()).await.unwrap_err();
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
            assert!(s.message().contains("covers bytes [0, 132) only"), "{s:?}");
        }
        let extents = pb::DataExtentsReq {
            chunk_id: nloc.chunk_id,
            version: nloc.version,
            offset: 0,
            length: 1 << 20,
            cap: Some(cap.clone()),
        };
        let ch = weft_proto::net::endpoint(&chunkd)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut space = pb::chunk_space_client::ChunkSpaceClient::new(ch);
        let s = space.data_extents(extents).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        // Widening the range breaks the signature.
        let mut wide = cap.clone();
        wide.range_end = 1 << 20;
        r.offset = 192;
        r.length = 1032;
        r.cap = Some(wide);
        let s = chunk.read(r).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
        assert!(s.message().contains("signature"), "{s:?}");
    });
    assert!(cap_refusals(&c, "covers bytes") >= 5, "{}", chunkd_log(&c));
    assert!(refused_metric(&c) >= before + 6);
}
