//! fallocate (default, KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE), space
//! reservation and ENOSPC, and copy_file_range, through a real mount: what
//! the replicas hold on disk afterwards, and what statfs shows.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;
use weft_testkit::{lseek, open_rw, pattern, wait_until, TestCluster};

const MIB: u64 = 1 << 20;

fn falloc(f: &File, mode: i32, off: i64, len: i64) -> Result<(), i32> {
    if unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// The replica files (`*.chunk`) under `dir` holding more than `min_len`
/// bytes, with their lengths.
fn replicas_over(dir: &Path, min_len: u64, out: &mut Vec<(std::path::PathBuf, u64)>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let md = fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            replicas_over(&p, min_len, out);
        } else if p.to_string_lossy().ends_with(".chunk") && md.len() > min_len {
            out.push((p, md.len()));
        }
    }
}

#[test]
fn fallocate_modes_and_copy_file_range() {
    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();
    let p = m.join("f");
    let data = pattern((3 * MIB) as usize, 7);
    fs::write(&p, &data).unwrap();
    let f = open_rw(&p);
    let mut want = data.clone();

    // Punch a hole across the first chunk boundary: zeros there, size kept.
    falloc(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        1_000_000,
        100_000,
    )
    .unwrap();
    want[1_000_000..1_100_000].fill(0);
    // Zero a range with keep-size, then past the end without it (grows).
    falloc(
        &f,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        5,
        10,
    )
    .unwrap();
    want[5..15].fill(0);
    falloc(&f, libc::FALLOC_FL_ZERO_RANGE, 3 * MIB as i64 - 10, 20).unwrap();
    want[(3 * MIB - 10) as usize..].fill(0);
    want.resize((3 * MIB + 10) as usize, 0);
    // Plain allocation grows the size; keep-size past the end does not.
    falloc(&f, 0, 0, 3 * MIB as i64 + 100).unwrap();
    want.resize((3 * MIB + 100) as usize, 0);
    falloc(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 5 * MIB as i64).unwrap();
    // What weft cannot do is refused, not faked; punch needs keep-size.
    assert_eq!(
        falloc(&f, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096),
        Err(libc::EOPNOTSUPP)
    );
    assert_eq!(
        falloc(&f, libc::FALLOC_FL_PUNCH_HOLE, 0, 10),
        Err(libc::EOPNOTSUPP)
    );
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), want);

    // copy_file_range within the mount (and within one file).
    let src = File::open(&p).unwrap();
    let dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.join("g"))
        .unwrap();
    let (mut off_in, mut off_out) = (100i64, 0i64);
    let mut left = 2 * MIB as usize;
    while left > 0 {
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                left,
                0,
            )
        };
        assert!(
            n > 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        left -= n as usize;
    }
    drop(dst);
    assert_eq!(
        fs::read(m.join("g")).unwrap(),
        want[100..100 + 2 * MIB as usize]
    );
}

/// generic/539: a punched range is a hole. Inside a written 4 MiB chunk
/// (r=3), punching [512 KiB + 100, 2 MiB + 50) frees the 64 KiB blocks it
/// covers whole on every replica (SEEK_DATA skips them there and through
/// the mount, the replica files shrink), the edges read as zeros, bytes
/// outside the range are untouched, and data this client had buffered in
/// the range does not come back after the punch.
#[test]
fn punch_hole_frees_the_blocks_on_every_replica() {
    let mut tc = TestCluster::start(3, 4 * MIB);
    let m = tc.mount();
    let p = m.join("punched");
    let mut want = pattern((4 * MIB + 100_000) as usize, 9);
    fs::write(&p, &want).unwrap();
    let f = open_rw(&p);
    f.sync_all().unwrap();
    let cluster = tc.tmp.path().join("cluster");
    let mut before = Vec::new();
    replicas_over(&cluster, 4 * MIB, &mut before);
    assert_eq!(before.len(), 3, "replicas of chunk 0: {before:?}");
    let blocks_before: Vec<u64> = before
        .iter()
        .map(|(r, _)| fs::metadata(r).unwrap().blocks())
        .collect();

    // Buffered (not yet stored) bytes inside the range, then the punch.
    f.write_all_at(&pattern(5000, 3), MIB).unwrap();
    let k = 1024i64;
    let (lo, hi) = (512 * k + 100, 2048 * k + 50);
    falloc(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        lo,
        hi - lo,
    )
    .unwrap();
    want[lo as usize..hi as usize].fill(0);

    let (d, h) = (libc::SEEK_DATA, libc::SEEK_HOLE);
    assert_eq!(lseek(&f, 0, h), Ok(576 * k));
    assert_eq!(lseek(&f, 576 * k, d), Ok(2048 * k));
    assert_eq!(lseek(&f, 2048 * k, h), Ok(want.len() as i64));
    assert_eq!(fs::metadata(&p).unwrap().len(), want.len() as u64);
    assert!(fs::read(&p).unwrap() == want, "bytes read back differ");
    drop(f);
    assert!(fs::read(&p).unwrap() == want, "bytes differ after close");

    for ((r, len), blocks) in before.iter().zip(blocks_before) {
        let md = fs::metadata(r).unwrap();
        assert_eq!(md.len(), *len, "{r:?}: the replica's size changed");
        // 23 whole blocks (576 KiB .. 2 MiB) freed.
        assert!(
            md.blocks() * 512 + 23 * 65536 <= blocks * 512,
            "{r:?}: {} bytes allocated, {} before",
            md.blocks() * 512,
            blocks * 512
        );
        // Chunk data starts after the header: the file's length less 4 MiB.
        let header = (len - 4 * MIB) as i64;
        let rf = File::open(r).unwrap();
        assert_eq!(lseek(&rf, header, h), Ok(header + 576 * k), "{r:?}");
        assert_eq!(
            lseek(&rf, header + 576 * k, d),
            Ok(header + 2048 * k),
            "{r:?}"
        );
    }
}

/// A punch over more chunks than the MDS lists in one GetChunks answer
/// (65,536) reaches the last of them: 1 MiB chunks, a 70 GiB sparse file
/// with data in its first and last chunk, punched whole.
#[test]
fn punch_reaches_every_chunk_of_a_long_sparse_file() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let p = m.join("long");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let size = 70 * 1024 * MIB;
    f.write_all_at(&pattern(1000, 1), 0).unwrap();
    f.write_all_at(&pattern(1000, 2), size - 1000).unwrap();
    f.sync_all().unwrap();
    falloc(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        size as i64,
    )
    .unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), size);
    let mut buf = vec![1u8; 1000];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == vec![0u8; 1000], "the first chunk was not punched");
    f.read_exact_at(&mut buf, size - 1000).unwrap();
    assert!(buf == vec![0u8; 1000], "the last chunk was not punched");
}

/// generic/213: fallocate of more than the free space fails with ENOSPC and
/// leaves the size alone; a range that fits still succeeds.
#[test]
fn fallocate_beyond_free_space_is_enospc() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let p = m.join("big");
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    let avail = st.f_bavail as i64 * st.f_frsize as i64;
    assert!(avail > 0);
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, avail * 2) };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::ENOSPC))
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) }, 0);
    assert_eq!(fs::metadata(&p).unwrap().len(), 1 << 20);
}

/// generic/568: fallocate reserves the space. st_blocks counts it at once, a
/// write into the range does not grow it, and that write still succeeds once
/// other data has filled the cluster.
#[test]
fn fallocate_reserves_space_for_later_writes() {
    let mut tc = TestCluster::start_with(1, |s| {
        s.chunk_size = Some(MIB);
        s.capacity = Some(16 * MIB);
    });
    let m = tc.mount();
    let p = m.join("reserved");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    let len = 4 * MIB;
    assert_eq!(
        unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as i64) },
        0
    );
    let blocks = fs::metadata(&p).unwrap().blocks();
    assert!(blocks * 512 >= len, "st_blocks {blocks} after fallocate");

    // Fill the cluster with another file until it is full.
    let filler = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.join("filler"))
        .unwrap();
    let piece = vec![7u8; MIB as usize];
    let mut full = false;
    for i in 0..32u64 {
        let r = filler
            .write_all_at(&piece, i * MIB)
            .and_then(|()| filler.sync_all());
        if let Err(e) = r {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            full = true;
            break;
        }
    }
    assert!(full, "16 MiB of capacity never filled up");
    drop(filler);

    // The reserved range is still writable, and st_blocks does not grow.
    let data = weft_testkit::pattern(len as usize, 5);
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().blocks(), blocks);
    assert!(fs::read(&p).unwrap() == data, "bytes read back differ");
}

/// generic/103: a fallocate of all but 512 KiB of what statfs shows free
/// succeeds. What a daemon offers is counted in data bytes: each chunk file
/// also needs its header and an extent block, which with 1 MiB chunks is
/// over 1 MiB of a 256 MiB capacity.
#[test]
fn a_fallocate_of_what_statfs_shows_free_fits() {
    let mut tc = TestCluster::start_with(1, |s| {
        s.chunk_size = Some(MIB);
        s.capacity = Some(256 * MIB);
    });
    let m = tc.mount();
    let free = || nix::sys::statvfs::statvfs(&m).map(|s| s.blocks_available() * s.fragment_size());
    // The daemon learns the chunk size when it registers; its next
    // heartbeat offers the space in those terms.
    wait_until("the offer in data bytes", Duration::from_secs(10), || {
        free().unwrap() < 255 * MIB
    });
    let avail = free().unwrap();
    assert!(avail > 250 * MIB, "{avail}");
    let f = fs::File::create(m.join("spc")).unwrap();
    let len = avail - (512 << 10);
    assert_eq!(
        unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as i64) },
        0,
        "fallocate of {len} with {avail} free: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(fs::metadata(m.join("spc")).unwrap().len(), len);
}

/// One sample of a Prometheus exposition (0 when absent).
fn sample(addr: &str, series: &str) -> f64 {
    let (status, body) = weft_testkit::http::get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "GET {addr}/metrics: {body}");
    body.lines()
        .find(|l| l.split(' ').next() == Some(series))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// copy_file_range(2) until `len` bytes are copied; the errno otherwise.
fn copy_all(src: &File, mut off_in: i64, dst: &File, mut off_out: i64, len: usize) {
    let mut left = len;
    while left > 0 {
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                left,
                0,
            )
        };
        assert!(
            n > 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        left -= n as usize;
    }
}

#[test]
fn copy_file_range_is_copied_by_the_chunk_daemons() {
    let mut tc = TestCluster::start_with(3, |s| {
        s.http = true;
        s.chunk_size = Some(MIB);
    });
    let m = tc.mount();
    let m2 = tc.mount();
    let mount_http = tc.cluster.mounts[0].proc.http.clone().expect("weftfs http");
    let data = pattern((3 * MIB + 5000) as usize, 9);
    fs::write(m.join("src"), &data).unwrap();

    // Across chunk boundaries, source and destination offsets unaligned to
    // each other: no chunk read or write from this client, only copies.
    let chunk_op = |op: &str| {
        sample(
            &mount_http,
            &format!("weft_client_chunk_requests_total{{op=\"{op}\"}}"),
        )
    };
    let (reads, writes, copies) = (chunk_op("read"), chunk_op("write"), chunk_op("copy"));
    let src = File::open(m.join("src")).unwrap();
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.join("dst"))
        .unwrap();
    let (from, at, len) = (700_000usize, 12_345usize, 2 * MIB as usize + 99_999);
    copy_all(&src, from as i64, &dst, at as i64, len);
    assert_eq!(chunk_op("read"), reads, "chunk reads through the client");
    assert_eq!(chunk_op("write"), writes, "chunk writes through the client");
    assert!(chunk_op("copy") >= 3.0 + copies, "chunk copies");
    drop(dst);
    let mut want = vec![0u8; at];
    want.extend_from_slice(&data[from..from + len]);
    let sha = weft_testkit::sha256_hex(&want);
    assert_eq!(
        weft_testkit::sha256_hex(&fs::read(m.join("dst")).unwrap()),
        sha
    );
    assert_eq!(
        weft_testkit::sha256_hex(&fs::read(m2.join("dst")).unwrap()),
        sha,
        "as another mount sees it"
    );

    // Read-your-writes: bytes still buffered in this client (no close, no
    // fsync) are what gets copied, and a copy over buffered bytes of the
    // destination is not undone by their later write-back.
    let f = open_rw(&m.join("src"));
    f.write_all_at(b"fresh bytes", MIB - 3).unwrap();
    let d = open_rw(&m.join("dst"));
    d.write_all_at(&[0xAB; 64], 100).unwrap();
    copy_all(&f, (MIB - 3) as i64, &d, 90, 11);
    drop(f);
    drop(d);
    let mut want2 = want.clone();
    want2[100..164].fill(0xAB);
    want2[90..101].copy_from_slice(b"fresh bytes");
    for mnt in [&m, &m2] {
        assert_eq!(
            weft_testkit::sha256_hex(&fs::read(mnt.join("dst")).unwrap()),
            weft_testkit::sha256_hex(&want2)
        );
    }
}
