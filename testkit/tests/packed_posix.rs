//! Every POSIX path on a packed small file, through real mounts. A file
//! written whole through mount A is checked to be packed first (the MDS's
//! GetChunks answer names a needle and no chunk, and the chunk daemons
//! gained no replica but the segment's); then an operation runs on it
//! through one mount, and the other mount checks what a user sees: the
//! bytes (SHA-256, against a model of the file kept here), the size,
//! st_blocks, errnos and lseek answers.
//!
//! Covered: SEEK_DATA/SEEK_HOLE; truncate down, up and to 0; st_blocks;
//! hard links; rename over; O_APPEND; pwrite; mmap write; O_DIRECT read
//! and write; copy_file_range from and into packed files; fallocate
//! (plain, KEEP_SIZE past the end, PUNCH_HOLE, ZERO_RANGE; COLLAPSE_RANGE
//! and INSERT_RANGE refused as for any weft file).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use weft_proto::pb;
use weft_proto::pb::meta_reply::Result as R;
use weft_proto::pb::meta_request::Op;
use weft_testkit::mds::RawMeta;
use weft_testkit::{fstat, lseek, open_rw, pattern, sh, sha256_hex, TestCluster};

const MIB: u64 = 1 << 20;
const PACK: &[&str] = &["pack_max_kib=64"];
/// The session the test's GetChunks calls name (reads need none of their own).
const SESSION: u64 = 0x7e57;

struct Env {
    tc: TestCluster,
    a: PathBuf,
    b: PathBuf,
    rt: tokio::runtime::Runtime,
    meta: RawMeta,
}

/// Every replica file (`.chunk`) under a daemon's data directory.
fn chunk_files(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in fs::read_dir(data.join("chunks"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "chunk") {
                out.push(f.path());
            }
        }
    }
    out
}

/// The chunk id in a replica file's header.
fn chunk_id(path: &Path) -> u64 {
    let mut b = [0u8; 20];
    File::open(path).unwrap().read_exact_at(&mut b, 0).unwrap();
    u64::from_le_bytes(b[12..20].try_into().unwrap())
}

impl Env {
    /// Three daemons, two replicas, 1 MiB chunks (so offsets past 1 MiB
    /// are another chunk), two mounts packing files up to 64 KiB.
    fn start() -> Env {
        let mut tc = TestCluster::start_with(3, |s| {
            s.chunk_size = Some(MIB);
            s.replicas = Some(2);
        });
        let a = tc.mount_with(PACK);
        let b = tc.mount_with(PACK);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let meta = rt.block_on(RawMeta::connect(&tc.mds_addr()));
        Env { tc, a, b, rt, meta }
    }

    /// The needle of the file at `path` as the MDS has it: Some((length,
    /// segment chunk)) when the file is packed, None when it has chunks.
    fn needle(&self, path: &Path) -> Option<(u64, u64)> {
        let ino = fs::metadata(path).unwrap().ino();
        let op = Op::GetChunks(pb::GetChunksReq {
            ino,
            first_index: 0,
            count: 8,
        });
        let l = match self.rt.block_on(self.meta.call(SESSION, 0, op)) {
            Ok(R::Chunks(l)) => l,
            other => panic!("GetChunks of {}: {other:?}", path.display()),
        };
        let n = l.packed?;
        assert!(
            l.chunks.iter().all(|c| c.chunk_id == 0),
            "{} has a needle and chunks: {:?}",
            path.display(),
            l.chunks
        );
        Some((n.len, n.chunk.expect("the segment's chunk").chunk_id))
    }

    /// Distinct chunks the daemons hold replicas of.
    fn chunk_ids(&self) -> BTreeSet<u64> {
        self.tc
            .cluster
            .chunkds
            .iter()
            .flat_map(|c| chunk_files(&c.data))
            .map(|p| chunk_id(&p))
            .collect()
    }

    /// Writes `data` as the new file `name` through mount A (create, write,
    /// close) and checks that it was packed: a needle of its length, and no
    /// replica on the daemons but its segment's. Returns its path on A.
    fn packed(&self, name: &str, data: &[u8]) -> PathBuf {
        let before = self.chunk_ids();
        let p = self.a.join(name);
        fs::write(&p, data).unwrap();
        self.assert_packed(&p, data.len() as u64);
        let (_, segment) = self.needle(&p).unwrap();
        let new: Vec<u64> = self
            .chunk_ids()
            .difference(&before)
            .copied()
            .filter(|c| *c != segment)
            .collect();
        assert!(new.is_empty(), "{name}: chunks {new:?} besides its segment");
        p
    }

    fn assert_packed(&self, p: &Path, len: u64) {
        match self.needle(p) {
            Some((l, _)) => assert_eq!(l, len, "{}: needle length", p.display()),
            None => panic!("{} is not packed", p.display()),
        }
    }

    fn assert_unpacked(&self, p: &Path) {
        assert!(self.needle(p).is_none(), "{} is still packed", p.display());
    }
}

/// What a user of `path` sees: its bytes and size (by its SHA-256, against
/// `want`) and st_blocks (returned after a sanity check: not 0 when the file
/// holds a byte that is not zero, and not past its size (or `reserved`, an
/// end fallocate reserved to) rounded up to a chunk).
fn check(path: &Path, want: &[u8], reserved: u64, what: &str) -> u64 {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("{what}: open {}: {e}", path.display()));
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), want.len(), "{what}: bytes read");
    assert_eq!(sha256_hex(&got), sha256_hex(want), "{what}: content");
    let st = fstat(&f).unwrap();
    assert_eq!(st.st_size as usize, want.len(), "{what}: st_size");
    let blocks = st.st_blocks as u64;
    if want.iter().any(|b| *b != 0) {
        assert!(blocks > 0, "{what}: st_blocks 0 for a file with data");
    }
    let bound = (want.len() as u64).max(reserved).div_ceil(MIB) * MIB;
    assert!(
        blocks * 512 <= bound,
        "{what}: st_blocks {blocks} past {bound} bytes"
    );
    blocks
}

/// A packed file's st_blocks: its needle's bytes in 4 KiB blocks.
fn packed_blocks(len: u64) -> u64 {
    len.div_ceil(4096) * 8
}

fn falloc(f: &File, mode: i32, off: u64, len: u64) -> Result<(), i32> {
    if unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) } == 0 {
        Ok(())
    } else {
        Err(weft_testkit::last_errno())
    }
}

/// copy_file_range(2) of up to `len` bytes, looping on short counts until
/// it copied `len` or reached the source's end; returns what it copied.
fn copy_range(src: &File, mut off_in: u64, dst: &File, mut off_out: u64, len: u64) -> u64 {
    let mut done = 0;
    while done < len {
        let (mut i, mut o) = (off_in as i64, off_out as i64);
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut i,
                dst.as_raw_fd(),
                &mut o,
                (len - done) as usize,
                0,
            )
        };
        assert!(
            n >= 0,
            "copy_file_range: errno {}",
            weft_testkit::last_errno()
        );
        if n == 0 {
            break;
        }
        done += n as u64;
        off_in += n as u64;
        off_out += n as u64;
    }
    done
}

/// `want` with `data` written at `off` (grown with zeros as a write would).
fn written(want: &[u8], off: usize, data: &[u8]) -> Vec<u8> {
    let mut v = want.to_vec();
    if v.len() < off + data.len() {
        v.resize(off + data.len(), 0);
    }
    v[off..off + data.len()].copy_from_slice(data);
    v
}

fn zeroed(want: &[u8], from: usize, to: usize) -> Vec<u8> {
    let mut v = want.to_vec();
    v[from..to.min(want.len())].fill(0);
    v
}

/// A page-aligned buffer of whole pages, as O_DIRECT needs.
struct Aligned(*mut u8, usize);

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!p.is_null());
        Aligned(p, len)
    }

    fn as_mut(&mut self) -> &mut [u8] {
        unsafe { std::slice::from_raw_parts_mut(self.0, self.1) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.1, 4096).unwrap();
        unsafe { std::alloc::dealloc(self.0, layout) };
    }
}

#[test]
fn seek_truncate_blocks_links_and_renames_on_packed_files() {
    let e = Env::start();
    let d = pattern(10_000, 1);
    let pa = e.packed("seek", &d);
    let pb = e.b.join("seek");

    // The needle is data, dense; the end of the file is where the hole is.
    for p in [&pa, &pb] {
        let f = File::open(p).unwrap();
        assert_eq!(lseek(&f, 0, libc::SEEK_DATA), Ok(0));
        assert_eq!(lseek(&f, 9_999, libc::SEEK_DATA), Ok(9_999));
        assert_eq!(lseek(&f, 0, libc::SEEK_HOLE), Ok(10_000));
        assert_eq!(lseek(&f, 5_000, libc::SEEK_HOLE), Ok(10_000));
        assert_eq!(lseek(&f, 10_000, libc::SEEK_DATA), Err(libc::ENXIO));
        assert_eq!(lseek(&f, 10_000, libc::SEEK_HOLE), Err(libc::ENXIO));
        assert_eq!(lseek(&f, 1 << 40, libc::SEEK_DATA), Err(libc::ENXIO));
    }
    assert_eq!(check(&pb, &d, 0, "packed, on B"), packed_blocks(10_000));
    e.assert_packed(&pa, 10_000);

    // Truncated up on A: the size moves, the needle stays; past it zeros,
    // which SEEK_DATA/SEEK_HOLE call a hole.
    open_rw(&pa).set_len(300_000).unwrap();
    let mut want = d.clone();
    want.resize(300_000, 0);
    assert_eq!(
        check(&pb, &want, 0, "truncated up, on B"),
        packed_blocks(10_000)
    );
    e.assert_packed(&pa, 10_000);
    let f = File::open(&pb).unwrap();
    assert_eq!(lseek(&f, 0, libc::SEEK_HOLE), Ok(10_000));
    assert_eq!(lseek(&f, 10_000, libc::SEEK_DATA), Err(libc::ENXIO));
    assert_eq!(lseek(&f, 200_000, libc::SEEK_HOLE), Ok(200_000));
    assert_eq!(lseek(&f, 300_000, libc::SEEK_HOLE), Err(libc::ENXIO));
    drop(f);

    // Truncated down on B: A sees the prefix; up again on A: the cut bytes
    // never come back.
    open_rw(&pb).set_len(4_000).unwrap();
    want.truncate(4_000);
    assert_eq!(
        check(&pa, &want, 0, "truncated down, on A"),
        packed_blocks(4_000)
    );
    e.assert_packed(&pa, 4_000);
    open_rw(&pa).set_len(8_000).unwrap();
    want.resize(8_000, 0);
    check(&pb, &want, 0, "truncated down then up, on B");
    // The same the other way round, while A holds the needle's location.
    open_rw(&pb).set_len(2_000).unwrap();
    open_rw(&pb).set_len(6_000).unwrap();
    want.truncate(2_000);
    want.resize(6_000, 0);
    check(&pa, &want, 0, "truncated down then up on B, on A");
    e.assert_packed(&pa, 2_000);

    // Truncated to 0, then written whole again through an open without
    // O_TRUNC: packed anew.
    open_rw(&pa).set_len(0).unwrap();
    assert_eq!(check(&pb, &[], 0, "truncated to 0, on B"), 0);
    let e2 = pattern(3_000, 2);
    open_rw(&pa).write_all(&e2).unwrap();
    e.assert_packed(&pa, 3_000);
    assert_eq!(check(&pb, &e2, 0, "rewritten, on B"), packed_blocks(3_000));

    // A hard link names the same packed file; an append through one name
    // on B shows through the other on A; the last name keeps the bytes.
    fs::hard_link(&pa, e.a.join("seek-link")).unwrap();
    let lb = e.b.join("seek-link");
    check(&lb, &e2, 0, "hard link, on B");
    assert_eq!(fs::metadata(&pb).unwrap().nlink(), 2);
    e.assert_packed(&lb, 3_000);
    let tail = pattern(700, 3);
    OpenOptions::new()
        .append(true)
        .open(&lb)
        .unwrap()
        .write_all(&tail)
        .unwrap();
    let mut want = e2.clone();
    want.extend_from_slice(&tail);
    check(&pa, &want, 0, "appended through the link on B, on A");
    e.assert_unpacked(&pa);
    fs::remove_file(&pa).unwrap();
    check(
        &lb,
        &want,
        0,
        "the link after the unlink of the first name, on B",
    );

    // Renamed over a packed file and over a chunked one.
    let x = pattern(2_000, 4);
    let y = pattern(5_000, 5);
    let big = pattern(300_000, 6);
    let r1 = e.packed("r1", &x);
    let r2 = e.packed("r2", &y);
    fs::write(e.a.join("big"), &big).unwrap();
    fs::rename(&r1, &r2).unwrap();
    check(&e.b.join("r2"), &x, 0, "renamed over a packed file, on B");
    assert!(!e.b.join("r1").exists());
    fs::rename(&r2, e.a.join("big")).unwrap();
    check(&e.b.join("big"), &x, 0, "renamed over a chunked file, on B");
    e.assert_packed(&e.a.join("big"), 2_000);
}

#[test]
fn writes_into_packed_files_from_either_mount() {
    let e = Env::start();

    // O_APPEND on A.
    let d = pattern(10_000, 10);
    let p = e.packed("append", &d);
    let more = pattern(20_000, 11);
    OpenOptions::new()
        .append(true)
        .open(&p)
        .unwrap()
        .write_all(&more)
        .unwrap();
    let mut want = d.clone();
    want.extend_from_slice(&more);
    check(&e.b.join("append"), &want, 0, "O_APPEND on A, on B");
    e.assert_unpacked(&p);

    // O_APPEND on B to a file packed by A, which A has read (its needle is
    // in A's caches).
    let p = e.packed("append-b", &d);
    check(&p, &d, 0, "packed, on A");
    OpenOptions::new()
        .append(true)
        .open(e.b.join("append-b"))
        .unwrap()
        .write_all(&more)
        .unwrap();
    check(&p, &want, 0, "O_APPEND on B, on A");

    // pwrite inside, and one far past the end (another chunk), on B.
    let p = e.packed("pwrite", &d);
    check(&p, &d, 0, "packed, on A");
    let f = open_rw(&e.b.join("pwrite"));
    f.write_all_at(b"middle", 5_000).unwrap();
    f.write_all_at(b"far", 3 * MIB + 10).unwrap();
    drop(f);
    let want = written(
        &written(&d, 5_000, b"middle"),
        3 * MIB as usize + 10,
        b"far",
    );
    check(&p, &want, 0, "pwrite on B, on A");

    // A shared mapping written on A, synced.
    let p = e.packed("mmap", &d);
    let f = open_rw(&p);
    unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            d.len(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(m, libc::MAP_FAILED, "mmap");
        let s = std::slice::from_raw_parts_mut(m as *mut u8, d.len());
        assert_eq!(&s[..], &d[..], "the mapping shows the needle's bytes");
        s[100..200].fill(0xab);
        assert_eq!(libc::msync(m, d.len(), libc::MS_SYNC), 0, "msync");
        assert_eq!(libc::munmap(m, d.len()), 0);
    }
    drop(f);
    let want = written(&d, 100, &[0xab; 100]);
    check(&e.b.join("mmap"), &want, 0, "mmap write on A, on B");

    // O_DIRECT: a read of a packed file on B, a page written on A.
    let p = e.packed("direct", &d);
    let mut buf = Aligned::new(16_384);
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(e.b.join("direct"))
        .unwrap();
    let n = f.read_at(buf.as_mut(), 0).unwrap();
    assert_eq!(n, d.len(), "O_DIRECT read of a packed file");
    assert_eq!(sha256_hex(&buf.as_mut()[..n]), sha256_hex(&d));
    drop(f);
    e.assert_packed(&p, 10_000);
    let page = pattern(4096, 12);
    let mut wbuf = Aligned::new(4096);
    wbuf.as_mut().copy_from_slice(&page);
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .unwrap();
    assert_eq!(f.write_at(wbuf.as_mut(), 4096).unwrap(), 4096);
    drop(f);
    let want = written(&d, 4096, &page);
    check(&e.b.join("direct"), &want, 0, "O_DIRECT write on A, on B");
}

#[test]
fn copy_file_range_from_and_into_packed_files() {
    let e = Env::start();
    let s = pattern(20_000, 20);
    let src = e.packed("src", &s);
    let sf = File::open(&src).unwrap();

    // Whole, to a new file.
    let dst = open_rw_new(&e.a.join("whole"));
    assert_eq!(copy_range(&sf, 0, &dst, 0, 20_000), 20_000);
    drop(dst);
    check(&e.b.join("whole"), &s, 0, "a packed file copied, on B");
    e.assert_packed(&src, 20_000);

    // A part, into another chunk of the destination; and past the source's
    // end (a short count).
    let dst = open_rw_new(&e.a.join("part"));
    assert_eq!(copy_range(&sf, 1_000, &dst, 2 * MIB + 100, 6_000), 6_000);
    assert_eq!(copy_range(&sf, 19_000, &dst, 0, 10_000), 1_000);
    drop(dst);
    let want = written(
        &written(&[], 2 * MIB as usize + 100, &s[1_000..7_000]),
        0,
        &s[19_000..],
    );
    check(
        &e.b.join("part"),
        &want,
        0,
        "parts of a packed file copied, on B",
    );

    // A packed source grown by a truncate: the needle, then zeros.
    open_rw(&src).set_len(50_000).unwrap();
    let dst = open_rw_new(&e.a.join("grown"));
    assert_eq!(copy_range(&sf, 0, &dst, 0, 1 << 20), 50_000);
    drop(dst);
    let mut grown = s.clone();
    grown.resize(50_000, 0);
    check(
        &e.b.join("grown"),
        &grown,
        0,
        "a grown packed file copied, on B",
    );
    e.assert_packed(&src, 20_000);

    // Into packed destinations: from a chunked file, at an offset inside
    // the needle and in another chunk; from a packed file.
    let big = pattern(300_000, 21);
    fs::write(e.a.join("big"), &big).unwrap();
    let bf = File::open(e.a.join("big")).unwrap();
    let t = pattern(8_000, 22);
    let into = e.packed("into", &t);
    let df = open_rw(&into);
    assert_eq!(copy_range(&bf, 0, &df, 1_000, 5_000), 5_000);
    assert_eq!(copy_range(&bf, 100_000, &df, MIB + 5, 3_000), 3_000);
    drop(df);
    let want = written(
        &written(&t, 1_000, &big[..5_000]),
        MIB as usize + 5,
        &big[100_000..103_000],
    );
    check(
        &e.b.join("into"),
        &want,
        0,
        "copied into a packed file, on B",
    );
    e.assert_unpacked(&into);
    let u = pattern(6_000, 23);
    let both = e.packed("both", &u);
    let df = open_rw(&both);
    assert_eq!(copy_range(&sf, 0, &df, 500, 3_000), 3_000);
    drop(df);
    check(
        &e.b.join("both"),
        &written(&u, 500, &s[..3_000]),
        0,
        "packed into packed, on B",
    );

    // On B, from a file A packed (and A had read), into a new file there.
    let v = pattern(9_000, 24);
    let from_a = e.packed("from-a", &v);
    check(&from_a, &v, 0, "packed, on A");
    let sb = File::open(e.b.join("from-a")).unwrap();
    let db = open_rw_new(&e.b.join("to-b"));
    assert_eq!(copy_range(&sb, 0, &db, 0, 9_000), 9_000);
    drop(db);
    check(&e.a.join("to-b"), &v, 0, "copied on B, on A");
}

fn open_rw_new(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(p)
        .unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
}

#[test]
fn fallocate_on_packed_files() {
    let e = Env::start();
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    let punch = libc::FALLOC_FL_PUNCH_HOLE | keep;
    let d = pattern(30_000, 30);

    // A hole punched on A inside the needle.
    let p = e.packed("punch", &d);
    falloc(&open_rw(&p), punch, 1_000, 3_000).unwrap();
    let want = zeroed(&d, 1_000, 4_000);
    check(&e.b.join("punch"), &want, 0, "punched on A, on B");
    // And on B, where A has the needle cached; across the needle's end.
    let p = e.packed("punch-b", &d);
    check(&p, &d, 0, "packed, on A");
    falloc(&open_rw(&e.b.join("punch-b")), punch, 25_000, 10_000).unwrap();
    check(&p, &zeroed(&d, 25_000, 35_000), 0, "punched on B, on A");
    // The whole file.
    let p = e.packed("punch-all", &d);
    falloc(&open_rw(&p), punch, 0, 30_000).unwrap();
    check(&e.b.join("punch-all"), &[0; 30_000], 0, "all punched, on B");

    // Past the needle of a file grown by a truncate: nothing stored there
    // to free, the file stays packed.
    let p = e.packed("punch-past", &d);
    open_rw(&p).set_len(100_000).unwrap();
    falloc(&open_rw(&p), punch, 50_000, 10_000).unwrap();
    let mut grown = d.clone();
    grown.resize(100_000, 0);
    check(
        &e.b.join("punch-past"),
        &grown,
        0,
        "punched past the needle, on B",
    );
    e.assert_packed(&p, 30_000);

    // Zero ranges: inside (keep size), and past the end (grows).
    let p = e.packed("zero", &d);
    falloc(&open_rw(&p), libc::FALLOC_FL_ZERO_RANGE | keep, 100, 100).unwrap();
    falloc(&open_rw(&p), libc::FALLOC_FL_ZERO_RANGE, 29_000, 11_000).unwrap();
    let mut want = zeroed(&d, 100, 200);
    want[29_000..].fill(0);
    want.resize(40_000, 0);
    check(&e.b.join("zero"), &want, 0, "zero ranges on A, on B");

    // Plain allocation that grows the file; KEEP_SIZE past the end.
    let p = e.packed("alloc", &d);
    falloc(&open_rw(&p), 0, 0, 200_000).unwrap();
    let mut want = d.clone();
    want.resize(200_000, 0);
    let blocks = check(&e.b.join("alloc"), &want, 200_000, "allocated on A, on B");
    assert!(
        blocks * 512 >= 200_000,
        "st_blocks {blocks} after fallocate"
    );
    let p = e.packed("keep", &d);
    falloc(&open_rw(&p), keep, 0, 500_000).unwrap();
    let blocks = check(&e.b.join("keep"), &d, 500_000, "KEEP_SIZE on A, on B");
    assert!(
        blocks * 512 >= 500_000,
        "st_blocks {blocks} after KEEP_SIZE"
    );

    // What weft refuses for any file it refuses for a packed one, which
    // stays as it was.
    let p = e.packed("refused", &d);
    let f = open_rw(&p);
    for mode in [libc::FALLOC_FL_COLLAPSE_RANGE, libc::FALLOC_FL_INSERT_RANGE] {
        assert_eq!(
            falloc(&f, mode, 0, 4096),
            Err(libc::EOPNOTSUPP),
            "mode {mode:#x}"
        );
    }
    assert_eq!(
        falloc(&f, libc::FALLOC_FL_PUNCH_HOLE, 0, 10),
        Err(libc::EOPNOTSUPP)
    );
    drop(f);
    check(&e.b.join("refused"), &d, 0, "after refused modes, on B");
    e.assert_packed(&p, 30_000);
}

#[test]
fn tar_and_cp_p_store_small_files_packed_with_their_modes_and_times() {
    let e = Env::start();
    // A tree on the local disk: small files of several sizes, modes and
    // mtimes, as a source tree's are.
    let src = e.tc.tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let mut files = Vec::new();
    for i in 0..30u64 {
        let name = if i % 3 == 0 {
            format!("sub/f{i}")
        } else {
            format!("f{i}")
        };
        let data = pattern(100 + i as usize * 997, i);
        let p = src.join(&name);
        fs::write(&p, &data).unwrap();
        let mode = [0o640, 0o755, 0o600][i as usize % 3];
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
        let mtime = 1_000_000_000 + i as i64 * 86_400;
        sh(&src, &format!("touch -m -d @{mtime} {name}"));
        files.push((name, data, mode, mtime));
    }
    let tar = e.tc.tmp.path().join("src.tar");
    sh(&src, &format!("tar -cf {} .", tar.display()));

    let before = e.chunk_ids();
    fs::create_dir(e.a.join("x")).unwrap();
    sh(&e.a.join("x"), &format!("tar -xpf {}", tar.display()));
    fs::create_dir(e.a.join("c")).unwrap();
    sh(&e.a, &format!("cp -p {}/f1 c/f1", src.display()));
    files.push(("../c/f1".into(), files[1].1.clone(), files[1].2, files[1].3));

    let mut segments = BTreeSet::new();
    for (name, data, mode, mtime) in &files {
        let pa = e.a.join("x").join(name);
        let (len, segment) = e
            .needle(&pa)
            .unwrap_or_else(|| panic!("{name}: extracted as chunks, not packed"));
        assert_eq!(len, data.len() as u64, "{name}: needle length");
        segments.insert(segment);
        // What B sees: the bytes, the mode and the mtime tar or cp -p set.
        let pb = e.b.join("x").join(name);
        check(&pb, data, 0, name);
        let m = fs::metadata(&pb).unwrap();
        assert_eq!(m.mode() & 0o7777, *mode, "{name}: mode");
        assert_eq!(m.mtime(), *mtime, "{name}: mtime");
    }
    // The daemons gained the segments' replicas and nothing else.
    let new: BTreeSet<u64> = e.chunk_ids().difference(&before).copied().collect();
    assert!(
        new.is_subset(&segments),
        "chunks {new:?} besides the segments {segments:?}"
    );
}

/// The MDS SetAttr calls weftfs at `http` has made so far.
fn setattr_calls(http: &str) -> f64 {
    let (status, body) = weft_testkit::http::get(http, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with("weft_client_mds_requests_total{op=\"setattr\"} "))
        .map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

fn id_of(flag: &str) -> u32 {
    let out = std::process::Command::new("id")
        .args([flag, "tests"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn set_times(f: &File, atime: (i64, i64), mtime: (i64, i64)) {
    let ts = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    assert_eq!(unsafe { libc::futimens(f.as_raw_fd(), ts.as_ptr()) }, 0);
}

fn perm(st: &libc::stat) -> u32 {
    st.st_mode & 0o7777
}

/// tar and cp -p, as root, set owner, mode and times through the open
/// descriptor after writing and before close. weftfs sends them with the
/// commit of the buffered data (client/src/attr_fold.rs) instead of one
/// SetAttr each: fstat and stat on the writing mount show them at once, an
/// open by another user is decided on the new mode, the other mount sees
/// them with the data after close, and Linux's rules hold (a chown drops
/// setuid, and setgid with group-exec; a write after futimens sets mtime).
#[test]
fn owner_mode_and_times_set_before_close_ride_on_the_commit() {
    let mut tc = TestCluster::start_with(3, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(2);
        s.http = true;
    });
    let a = tc.mount_with(&["pack_max_kib=64", "allow_other"]);
    let b = tc.mount_with(&["pack_max_kib=64"]);
    let http = tc.cluster.mounts[0].proc.http.clone().expect("weftfs http");
    fs::set_permissions(&a, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (uid, gid) = (id_of("-u"), id_of("-g"));

    // tar's order: write, fchown, fchmod (after the chown, so setuid
    // stays), futimens.
    let data = pattern(5000, 1);
    let p = a.join("f");
    let calls = setattr_calls(&http);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .unwrap();
    f.write_all(&data).unwrap();
    std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).unwrap();
    let st = fstat(&f).unwrap();
    assert_eq!((st.st_uid, st.st_gid, st.st_size), (uid, gid, 5000));
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o4755))
        .unwrap();
    assert_eq!(perm(&fstat(&f).unwrap()), 0o4755);
    set_times(&f, (1_000_000_000, 5), (1_000_000_100, 7));
    let m = fs::metadata(&p).unwrap();
    assert_eq!(
        (
            m.uid(),
            m.gid(),
            m.mode() & 0o7777,
            m.mtime(),
            m.mtime_nsec()
        ),
        (uid, gid, 0o4755, 1_000_000_100, 7)
    );
    // Created 0600 root: user `tests` may read it only by the new owner
    // and mode, which the MDS must know before it decides the open.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=tests", "--regid=tests", "--clear-groups"])
        .args([
            "perl",
            "-e",
            "open(F, '<', $ARGV[0]) or die \"$!\\n\"; print 'ok'",
        ])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok", "{out:?}");
    drop(f);
    let mb = fs::metadata(b.join("f")).unwrap();
    assert_eq!(
        (mb.uid(), mb.gid(), mb.mode() & 0o7777, mb.len()),
        (uid, gid, 0o4755, 5000)
    );
    assert_eq!((mb.mtime(), mb.mtime_nsec()), (1_000_000_100, 7));
    assert_eq!((mb.atime(), mb.atime_nsec()), (1_000_000_000, 5));
    assert_eq!(
        sha256_hex(&fs::read(b.join("f")).unwrap()),
        sha256_hex(&data)
    );

    // chmod, then chown: the chown drops setuid, and setgid (group-exec).
    let g = a.join("g");
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&g)
        .unwrap();
    f.write_all(&data[..100]).unwrap();
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o6755))
        .unwrap();
    std::os::unix::fs::fchown(&f, Some(uid), None).unwrap();
    assert_eq!(perm(&fstat(&f).unwrap()), 0o755);
    drop(f);
    let mb = fs::metadata(b.join("g")).unwrap();
    assert_eq!((mb.uid(), mb.mode() & 0o7777, mb.len()), (uid, 0o755, 100));
    // The owner, mode and time changes above cost no SetAttr of their own
    // (the open by `tests` sent the first file's three with its data).
    assert_eq!(
        setattr_calls(&http) - calls,
        0.0,
        "SetAttr calls to the MDS"
    );

    // A write after futimens: the write's mtime is the one that stays.
    let h = a.join("h");
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&h)
        .unwrap();
    f.write_all(&data[..100]).unwrap();
    set_times(&f, (1_000_000_000, 0), (1_000_000_000, 0));
    assert_eq!(fstat(&f).unwrap().st_mtime, 1_000_000_000);
    f.write_all(&data[100..200]).unwrap();
    let st = fstat(&f).unwrap();
    assert!(
        st.st_mtime > 1_700_000_000,
        "mtime after the write: {}",
        st.st_mtime
    );
    drop(f);
    let mb = fs::metadata(b.join("h")).unwrap();
    assert_eq!(mb.len(), 200);
    assert!(mb.mtime() > 1_700_000_000, "mtime on B: {}", mb.mtime());
    assert_eq!(
        sha256_hex(&fs::read(b.join("h")).unwrap()),
        sha256_hex(&data[..200])
    );
}

/// The chunk-daemon reads weftfs at `http` has made so far.
fn chunk_reads(http: &str) -> f64 {
    let (status, body) = weft_testkit::http::get(http, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find(|l| l.starts_with("weft_client_chunk_requests_total{op=\"read\"} "))
        .map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

fn drop_caches() {
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

/// A small file this mount wrote is read back, after the kernel dropped
/// its caches, from what weftfs kept of the needle (cache/data.rs
/// `needle_key`): no chunk daemon is asked. What another mount changes
/// since (a rewrite, a truncate) is what the next open reads.
#[test]
fn a_needle_written_here_is_read_back_from_the_mounts_cache_until_another_mount_changes_it() {
    let mut tc = TestCluster::start_with(3, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(2);
        s.http = true;
    });
    let a = tc.mount_with(PACK);
    let b = tc.mount_with(PACK);
    let http = tc.cluster.mounts[0].proc.http.clone().expect("weftfs http");
    let first = pattern(3000, 7);
    fs::write(a.join("f"), &first).unwrap();
    drop_caches();
    let reads = chunk_reads(&http);
    assert_eq!(
        sha256_hex(&fs::read(a.join("f")).unwrap()),
        sha256_hex(&first)
    );
    assert_eq!(
        chunk_reads(&http) - reads,
        0.0,
        "chunk reads for a kept needle"
    );

    // Rewritten through B: A's open sees the new place and reads it.
    let second = pattern(2000, 8);
    fs::write(b.join("f"), &second).unwrap();
    assert_eq!(
        sha256_hex(&fs::read(a.join("f")).unwrap()),
        sha256_hex(&second)
    );
    drop_caches();
    assert_eq!(
        sha256_hex(&fs::read(a.join("f")).unwrap()),
        sha256_hex(&second)
    );

    // Cut short through B: A reads the prefix, then zeros past it when B
    // extends the file again.
    let f = OpenOptions::new().write(true).open(b.join("f")).unwrap();
    f.set_len(500).unwrap();
    drop(f);
    assert_eq!(
        sha256_hex(&fs::read(a.join("f")).unwrap()),
        sha256_hex(&second[..500])
    );
    let f = OpenOptions::new().write(true).open(b.join("f")).unwrap();
    f.set_len(1500).unwrap();
    drop(f);
    let mut want = second[..500].to_vec();
    want.resize(1500, 0);
    drop_caches();
    assert_eq!(
        sha256_hex(&fs::read(a.join("f")).unwrap()),
        sha256_hex(&want)
    );
}
