//! lseek SEEK_DATA / SEEK_HOLE through a real mount, between chunks and
//! inside one at the replicas' block granularity.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use weft_testkit::{lseek, pattern, TestCluster};

const MIB: u64 = 1 << 20;

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
    assert_eq!(lseek(&f, 0, d), Ok(mib));
    f.write_all_at(&pattern(10_000, 2), 4 * MIB).unwrap();
    f.sync_all().unwrap();
    let size = 4 * mib + 10_000;
    assert_eq!(fs::metadata(&p).unwrap().len(), size as u64);

    assert_eq!(lseek(&f, 0, h), Ok(0));
    assert_eq!(lseek(&f, 0, d), Ok(mib));
    assert_eq!(lseek(&f, mib + 5, d), Ok(mib + 5));
    // The chunk's data ends at its 100,000th byte: the rest of it is a hole.
    assert_eq!(lseek(&f, mib, h), Ok(mib + 100_000));
    assert_eq!(lseek(&f, 2 * mib + 7, d), Ok(4 * mib));
    assert_eq!(lseek(&f, 3 * mib, h), Ok(3 * mib));
    assert_eq!(lseek(&f, 4 * mib, h), Ok(size));
    assert_eq!(lseek(&f, size, d), Err(libc::ENXIO));
    assert_eq!(lseek(&f, size, h), Err(libc::ENXIO));
    assert_eq!(lseek(&f, -1, d), Err(libc::ENXIO));

    // The same answers through another descriptor, and a file with no data.
    let g = File::open(&p).unwrap();
    assert_eq!(lseek(&g, 0, d), Ok(mib));
    let e = m.join("empty-sized");
    let ef = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&e)
        .unwrap();
    ef.set_len(3 * MIB).unwrap();
    assert_eq!(lseek(&ef, 0, d), Err(libc::ENXIO));
    assert_eq!(lseek(&ef, 0, h), Ok(0));
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

    assert_eq!(lseek(&f, 0, d), Ok(128 * k));
    assert_eq!(lseek(&f, 0, h), Ok(0));
    assert_eq!(lseek(&f, 128 * k, h), Ok(192 * k));
    assert_eq!(lseek(&f, 192 * k, d), Ok(512 * k));
    assert_eq!(lseek(&f, 512 * k, h), Ok(640 * k));
    assert_eq!(lseek(&f, 700 * k, d), Ok(1024 * k));
    assert_eq!(lseek(&f, 1024 * k + 5, h), Ok(1088 * k));
    assert_eq!(lseek(&f, 1088 * k, d), Ok(5 * 1024 * k));
    assert_eq!(lseek(&f, 5 * 1024 * k, h), Ok(5 * 1024 * k + 10));
    assert_eq!(lseek(&f, 5 * 1024 * k + 10, d), Err(libc::ENXIO));
    assert_eq!(lseek(&f, 5 * 1024 * k + 10, h), Ok(5 * 1024 * k + 10));

    // The bytes around the holes read back as written, the holes as zeros.
    let mut want = vec![0u8; 6 * MIB as usize];
    want[128 * 1024..128 * 1024 + 4096].copy_from_slice(&a);
    want[576 * 1024 - 50..576 * 1024 + 50].copy_from_slice(&b);
    want[MIB as usize..MIB as usize + 65536].copy_from_slice(&c);
    want[5 * MIB as usize..5 * MIB as usize + 10].copy_from_slice(&e);
    assert!(fs::read(&p).unwrap() == want, "bytes read back differ");
}
