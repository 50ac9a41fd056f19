//! POSIX surface beyond the basics, through a real mount: fallocate modes,
//! copy_file_range, a file unlinked while open, and atime policies
//! (relatime by default, noatime, strictatime).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use weft_testkit::{bytes_under, pattern, wait_until, TestCluster};

const MIB: u64 = 1 << 20;

fn falloc(f: &File, mode: i32, off: i64, len: i64) -> Result<(), i32> {
    if unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

fn rw(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

#[test]
fn fallocate_modes_and_copy_file_range() {
    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();
    let p = m.join("f");
    let data = pattern((3 * MIB) as usize, 7);
    fs::write(&p, &data).unwrap();
    let f = rw(&p);
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

#[test]
fn unlinked_while_open_lives_until_last_close() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let p = m.join("f");
    let data = pattern((2 * MIB) as usize, 9);
    fs::write(&p, &data).unwrap();
    let chunks_dir = tc.tmp.path().join("cluster");
    wait_until("chunks on disk", Duration::from_secs(10), || {
        bytes_under(&chunks_dir, ".chunk") >= 2 * MIB
    });
    let mut f = rw(&p);
    fs::remove_file(&p).unwrap();
    assert!(fs::metadata(&p).is_err());
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    // Still readable and writable through the handle.
    f.seek(SeekFrom::Start(MIB)).unwrap();
    f.write_all(b"after unlink").unwrap();
    f.sync_all().unwrap();
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    let mut want = data.clone();
    want[MIB as usize..MIB as usize + 12].copy_from_slice(b"after unlink");
    assert_eq!(back, want);
    drop(f);
    // Last close: the chunks are freed on the daemons.
    wait_until(
        "chunks freed after the last close",
        Duration::from_secs(20),
        || bytes_under(&chunks_dir, ".chunk") < MIB / 2,
    );
}

fn atime(p: &Path) -> (i64, i64) {
    let md = fs::metadata(p).unwrap();
    (md.atime(), md.atime_nsec())
}

fn read(p: &Path) {
    let mut v = Vec::new();
    File::open(p).unwrap().read_to_end(&mut v).unwrap();
}

#[test]
fn atime_relatime_noatime_strictatime() {
    let mut tc = TestCluster::start(1, MIB);
    // No kernel attribute caching, so stat shows the MDS's atime.
    let rel = tc.mount_with(&["attr_timeout=0", "entry_timeout=0"]);
    let no = tc.mount_with(&["attr_timeout=0", "entry_timeout=0", "noatime"]);
    let strict = tc.mount_with(&["attr_timeout=0", "entry_timeout=0", "strictatime"]);
    fs::write(rel.join("f"), b"x").unwrap();
    let t0 = atime(&rel.join("f"));
    std::thread::sleep(Duration::from_millis(50));

    // noatime: a read changes nothing.
    read(&no.join("f"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(atime(&rel.join("f")), t0);

    // relatime: the first read after a write moves atime, the next does not.
    read(&rel.join("f"));
    wait_until("relatime update", Duration::from_secs(5), || {
        atime(&rel.join("f")) > t0
    });
    let t1 = atime(&rel.join("f"));
    let ctime = fs::metadata(rel.join("f")).unwrap().ctime_nsec();
    std::thread::sleep(Duration::from_millis(50));
    read(&rel.join("f"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(atime(&rel.join("f")), t1);
    assert_eq!(
        fs::metadata(rel.join("f")).unwrap().ctime_nsec(),
        ctime,
        "atime moved ctime"
    );

    // strictatime: every read, also one the kernel could serve from the
    // pages an earlier open of the unchanged file cached (generic/003).
    read(&strict.join("f"));
    wait_until("strictatime update", Duration::from_secs(5), || {
        atime(&rel.join("f")) > t1
    });
    let t2 = atime(&rel.join("f"));
    std::thread::sleep(Duration::from_millis(50));
    read(&strict.join("f"));
    wait_until(
        "strictatime update of a cached file",
        Duration::from_secs(5),
        || atime(&rel.join("f")) > t2,
    );
}

/// generic/003: a stat right after a read already shows the read's atime
/// (the update is sent in the background; a getattr waits for it).
#[test]
fn stat_right_after_a_read_shows_its_atime() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let p = m.join("f");
    for round in 0..20 {
        fs::write(&p, format!("round {round}")).unwrap();
        let before = atime(&p);
        std::thread::sleep(Duration::from_millis(20));
        read(&p);
        assert!(atime(&p) > before, "round {round}: atime not updated yet");
    }
}

fn seek(f: &File, offset: i64, whence: i32) -> Result<i64, i32> {
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset, whence) };
    if r >= 0 {
        Ok(r)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// SEEK_DATA/SEEK_HOLE on a real sparse file: chunks never written are holes
/// (1 MiB chunks here), the end of the file is a hole, and data still in the
/// client's buffers counts as data.
#[test]
fn seek_data_and_seek_hole_in_a_sparse_file() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let p = m.join("sparse");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let (mib, d, h) = (MIB as i64, libc::SEEK_DATA, libc::SEEK_HOLE);
    // Not yet flushed: written through this descriptor only.
    f.write_all_at(&pattern(100_000, 1), MIB).unwrap();
    assert_eq!(seek(&f, 0, d), Ok(mib));
    f.write_all_at(&pattern(10_000, 2), 4 * MIB).unwrap();
    f.sync_all().unwrap();
    let size = 4 * mib + 10_000;
    assert_eq!(fs::metadata(&p).unwrap().len(), size as u64);

    assert_eq!(seek(&f, 0, h), Ok(0));
    assert_eq!(seek(&f, 0, d), Ok(mib));
    assert_eq!(seek(&f, mib + 5, d), Ok(mib + 5));
    // The chunk's data ends at its 100,000th byte: the rest of it is a hole.
    assert_eq!(seek(&f, mib, h), Ok(mib + 100_000));
    assert_eq!(seek(&f, 2 * mib + 7, d), Ok(4 * mib));
    assert_eq!(seek(&f, 3 * mib, h), Ok(3 * mib));
    assert_eq!(seek(&f, 4 * mib, h), Ok(size));
    assert_eq!(seek(&f, size, d), Err(libc::ENXIO));
    assert_eq!(seek(&f, size, h), Err(libc::ENXIO));
    assert_eq!(seek(&f, -1, d), Err(libc::ENXIO));

    // The same answers through another descriptor, and a file with no data.
    let g = File::open(&p).unwrap();
    assert_eq!(seek(&g, 0, d), Ok(mib));
    let e = m.join("empty-sized");
    let ef = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&e)
        .unwrap();
    ef.set_len(3 * MIB).unwrap();
    assert_eq!(seek(&ef, 0, d), Err(libc::ENXIO));
    assert_eq!(seek(&ef, 0, h), Ok(0));
}

/// generic/490: holes inside one written chunk are holes, at the daemons'
/// 64 KiB block granularity (a block with any byte written is data), with
/// the bytes read back intact around them.
#[test]
fn seek_finds_holes_inside_a_chunk() {
    let mut tc = TestCluster::start(1, 4 * MIB);
    let m = tc.mount();
    let p = m.join("holey");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let (d, h) = (libc::SEEK_DATA, libc::SEEK_HOLE);
    let k = 1024i64;
    // Chunk 0 (4 MiB): 4 KiB at 128 KiB, 100 bytes across the 576 KiB block
    // border, 64 KiB at 1 MiB; chunk 1: 10 bytes at 5 MiB; size 6 MiB.
    let a = pattern(4096, 3);
    let b = pattern(100, 4);
    let c = pattern(65536, 5);
    let e = pattern(10, 6);
    f.write_all_at(&a, 128 * 1024).unwrap();
    f.write_all_at(&b, 576 * 1024 - 50).unwrap();
    f.write_all_at(&c, MIB).unwrap();
    f.write_all_at(&e, 5 * MIB).unwrap();
    f.set_len(6 * MIB).unwrap();
    f.sync_all().unwrap();

    assert_eq!(seek(&f, 0, d), Ok(128 * k));
    assert_eq!(seek(&f, 0, h), Ok(0));
    assert_eq!(seek(&f, 128 * k, h), Ok(192 * k));
    assert_eq!(seek(&f, 192 * k, d), Ok(512 * k));
    assert_eq!(seek(&f, 512 * k, h), Ok(640 * k));
    assert_eq!(seek(&f, 700 * k, d), Ok(1024 * k));
    assert_eq!(seek(&f, 1024 * k + 5, h), Ok(1088 * k));
    assert_eq!(seek(&f, 1088 * k, d), Ok(5 * 1024 * k));
    assert_eq!(seek(&f, 5 * 1024 * k, h), Ok(5 * 1024 * k + 10));
    assert_eq!(seek(&f, 5 * 1024 * k + 10, d), Err(libc::ENXIO));
    assert_eq!(seek(&f, 5 * 1024 * k + 10, h), Ok(5 * 1024 * k + 10));

    // The bytes around the holes read back as written, the holes as zeros.
    let mut want = vec![0u8; 6 * MIB as usize];
    want[128 * 1024..128 * 1024 + 4096].copy_from_slice(&a);
    want[576 * 1024 - 50..576 * 1024 + 50].copy_from_slice(&b);
    want[MIB as usize..MIB as usize + 65536].copy_from_slice(&c);
    want[5 * MIB as usize..5 * MIB as usize + 10].copy_from_slice(&e);
    assert!(fs::read(&p).unwrap() == want, "bytes read back differ");
}

/// O_TMPFILE: the kernel sends FUSE_TMPFILE, which fuser 0.18 does not
/// dispatch (it answers ENOSYS), so the kernel refuses O_TMPFILE on the mount
/// with EOPNOTSUPP, as on any file system without it; callers (glibc's
/// tmpfile, systemd, ...) then fall back to a named file. Nothing is created.
#[test]
fn o_tmpfile_is_refused_with_eopnotsupp() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let dir = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).unwrap();
    let fd = unsafe { libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, 0o600) };
    let err = std::io::Error::last_os_error().raw_os_error();
    assert_eq!((fd, err), (-1, Some(libc::EOPNOTSUPP)));
    assert_eq!(fs::read_dir(&m).unwrap().count(), 0);
}

/// The writer's own mount: with names and attributes kept long while the MDS's
/// pushes are live, a stat after close must still show the size and mtime the
/// flush committed, not the attributes weftfs had cached from before the writes.
#[test]
fn a_stat_after_close_shows_the_committed_mtime() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let p = m.join("f");
    File::create(&p).unwrap();
    let created = fs::metadata(&p).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let mut f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all(&pattern(10_000, 1)).unwrap();
    // A stat while the bytes are still buffered in weftfs: write(2) has
    // changed mtime and ctime already.
    let during = fs::metadata(&p).unwrap();
    assert_eq!(during.len(), 10_000);
    assert!(
        during.mtime() > created.mtime() && during.ctime() > created.ctime(),
        "mtime/ctime during the write {}/{} are not past the create's {}",
        during.mtime(),
        during.ctime(),
        created.mtime()
    );
    drop(f);
    let after = fs::metadata(&p).unwrap();
    assert_eq!(after.len(), 10_000);
    assert!(
        after.mtime() > created.mtime(),
        "mtime after the write {} is not past the create's {}",
        after.mtime(),
        created.mtime()
    );
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
    let f = rw(&p);
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
    assert_eq!(seek(&f, 0, h), Ok(576 * k));
    assert_eq!(seek(&f, 576 * k, d), Ok(2048 * k));
    assert_eq!(seek(&f, 2048 * k, h), Ok(want.len() as i64));
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
        assert_eq!(seek(&rf, header, h), Ok(header + 576 * k), "{r:?}");
        assert_eq!(
            seek(&rf, header + 576 * k, d),
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

/// Times set through a descriptor before close survive the close: `cp -p`
/// (and tar) write the data, then futimens, then close. The buffered data's
/// commit must not move mtime to the time of the close.
#[test]
fn times_set_before_close_survive_the_close() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let p = m.join("stamped");
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    {
        let mut f = File::create(&p).unwrap();
        f.write_all(&pattern(10_000, 3)).unwrap();
        f.set_times(fs::FileTimes::new().set_modified(old).set_accessed(old))
            .unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mtime(), 1_000_000_000);
    }
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.len(), md.mtime()), (10_000, 1_000_000_000));

    // The same through cp -p from the local disk.
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    fs::write(&src, pattern(200_000, 4)).unwrap();
    File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(old).set_accessed(old))
        .unwrap();
    let st = std::process::Command::new("cp")
        .arg("-p")
        .arg(&src)
        .arg(m.join("copied"))
        .status()
        .unwrap();
    assert!(st.success());
    // Past the attribute TTL: what the MDS holds.
    std::thread::sleep(Duration::from_millis(1200));
    let md = fs::metadata(m.join("copied")).unwrap();
    assert_eq!((md.len(), md.mtime()), (200_000, 1_000_000_000));
}
