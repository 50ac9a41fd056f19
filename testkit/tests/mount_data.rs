//! Bytes through a real FUSE mount of a real cluster: what goes in comes out.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;
use weft_testkit::{bytes_under, pattern, read_all, sha256_hex, TestCluster};

const MIB: u64 = 1 << 20;

#[test]
fn a_200_mib_file_spans_chunks_and_reads_back_identical() {
    let mut tc = TestCluster::start(3, 16 * MIB);
    let mnt = tc.mount();
    let data = pattern(200 * MIB as usize, 42);
    {
        let mut f = fs::File::create(mnt.join("big")).unwrap();
        for piece in data.chunks(3 * MIB as usize + 17) {
            f.write_all(piece).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert_eq!(
        fs::metadata(mnt.join("big")).unwrap().len(),
        data.len() as u64
    );
    assert_eq!(sha256_hex(&read_all(&mnt.join("big"))), sha256_hex(&data));

    // 13 chunks, each on all 3 daemons; the MDS directory holds none of the data.
    let f = tc
        .cluster
        .wait_replicated(Duration::from_secs(30))
        .expect("replicated");
    assert_eq!(f.chunks, 13);
    let s = tc.cluster.status().unwrap();
    assert!(s.chunkds.iter().all(|d| d.chunks == 13), "{:?}", s.chunkds);
    for c in &tc.cluster.chunkds {
        assert!(bytes_under(&c.data, ".chunk") >= 200 * MIB);
    }
    assert!(bytes_under(&tc.cluster.mds.data, "") < MIB);

    // Through a second, fresh mount (no client cache) the bytes are the same.
    let mnt2 = tc.mount();
    assert_eq!(sha256_hex(&read_all(&mnt2.join("big"))), sha256_hex(&data));
}

#[test]
fn random_overwrites_and_reads_match_a_model() {
    let mut tc = TestCluster::start(3, MIB);
    let mnt = tc.mount();
    let path = mnt.join("model");
    let mut model = vec![0u8; 0];
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mut x: u64 = 7;
    for round in 0..300 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) % (5 * MIB);
        let len = 1 + (x >> 8) % (300 * 1024);
        let data = pattern(len as usize, x);
        f.seek(SeekFrom::Start(off)).unwrap();
        f.write_all(&data).unwrap();
        let end = (off + len) as usize;
        if model.len() < end {
            model.resize(end, 0);
        }
        model[off as usize..end].copy_from_slice(&data);
        if round % 37 == 0 {
            f.sync_all().unwrap();
        }
        if round % 10 == 0 {
            let roff = (x >> 33) % model.len() as u64;
            let rlen = ((x >> 3) % (400 * 1024)).min(model.len() as u64 - roff);
            let mut buf = vec![0u8; rlen as usize];
            f.seek(SeekFrom::Start(roff)).unwrap();
            f.read_exact(&mut buf).unwrap();
            assert!(
                buf == model[roff as usize..(roff + rlen) as usize],
                "round {round}: read at {roff}+{rlen} differs"
            );
        }
    }
    drop(f);
    assert_eq!(sha256_hex(&read_all(&path)), sha256_hex(&model));
}

#[test]
fn sparse_files_read_zeros_and_store_nothing_for_holes() {
    let mut tc = TestCluster::start(3, MIB);
    let mnt = tc.mount();
    let path = mnt.join("sparse");
    let mut f = fs::File::create(&path).unwrap();
    f.seek(SeekFrom::Start(10 * MIB + 100)).unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    let data = read_all(&path);
    assert_eq!(data.len() as u64, 10 * MIB + 104);
    assert!(data[..(10 * MIB + 100) as usize].iter().all(|&b| b == 0));
    assert_eq!(&data[(10 * MIB + 100) as usize..], b"tail");
    let f = tc.cluster.wait_replicated(Duration::from_secs(20)).unwrap();
    assert_eq!(f.chunks, 1, "only the chunk holding data exists");
    assert!(
        fs::metadata(&path).unwrap().blocks() * 512 < 4 * MIB,
        "a sparse file allocates little"
    );
}

#[test]
fn truncate_down_and_up_reads_zeros_past_the_cut() {
    let mut tc = TestCluster::start(3, MIB);
    let mnt = tc.mount();
    let path = mnt.join("t");
    fs::write(&path, pattern(3 * MIB as usize, 9)).unwrap();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(MIB + 1000).unwrap();
    f.set_len(3 * MIB).unwrap();
    drop(f);
    let data = read_all(&path);
    let orig = pattern(3 * MIB as usize, 9);
    assert_eq!(data.len() as u64, 3 * MIB);
    assert!(data[..(MIB + 1000) as usize] == orig[..(MIB + 1000) as usize]);
    assert!(
        data[(MIB + 1000) as usize..].iter().all(|&b| b == 0),
        "bytes past the cut must read as zeros"
    );
}

#[test]
fn append_mode_appends() {
    let mut tc = TestCluster::start(3, MIB);
    let mnt = tc.mount();
    let path = mnt.join("log");
    for i in 0..50 {
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        writeln!(f, "line {i}").unwrap();
    }
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 50);
    assert_eq!(text.lines().last(), Some("line 49"));
}

#[test]
fn many_files_written_at_once() {
    let mut tc = TestCluster::start(3, MIB);
    let mnt = tc.mount();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let dir = mnt.join(format!("d{t}"));
            std::thread::spawn(move || {
                fs::create_dir(&dir).unwrap();
                for i in 0..40 {
                    fs::write(
                        dir.join(format!("f{i}")),
                        pattern(1000 + i * 3000, (t * 1000 + i) as u64),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..8 {
        for i in 0..40 {
            let got = read_all(&mnt.join(format!("d{t}/f{i}")));
            assert!(
                got == pattern(1000 + i * 3000, (t * 1000 + i) as u64),
                "d{t}/f{i}"
            );
        }
    }
}
