//! Clients ride through MDS restarts: with the MDS killed (SIGKILL) and
//! restarted on the same address a few seconds later, a mounted process's
//! metadata operations wait and then complete, file handles opened before the
//! restart keep working, and nothing is remounted. With a short `mds_timeout`
//! an operation fails with EIO instead, and the mount works again once the MDS
//! is back.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};
use weft_testkit::{pattern, read_all, sha256_hex, TestCluster};

const MIB: u64 = 1 << 20;

#[test]
fn mount_rides_through_an_mds_restart() {
    let mut tc = TestCluster::start(2, MIB);
    let m = tc.mount();
    let before = pattern(3 * MIB as usize / 2, 1);
    fs::write(m.join("old"), &before).unwrap();
    let mut reader = fs::File::open(m.join("old")).unwrap();
    let mut writer = fs::File::create(m.join("growing")).unwrap();
    writer.write_all(&pattern(100_000, 2)).unwrap();
    writer.sync_all().unwrap();
    // An open file unlinked before the restart stays readable through its handle.
    let ghost_data = pattern(250_000, 5);
    fs::write(m.join("ghost"), &ghost_data).unwrap();
    let mut ghost = fs::File::open(m.join("ghost")).unwrap();
    fs::remove_file(m.join("ghost")).unwrap();

    let addr = tc.mds_addr();
    tc.cluster.mds.crash();
    // Metadata work starts while the MDS is down; it must wait, not fail.
    let mm = m.clone();
    let worker = std::thread::spawn(move || -> std::io::Result<Duration> {
        let t = Instant::now();
        fs::create_dir(mm.join("made-while-down"))?;
        fs::write(mm.join("made-while-down/f"), pattern(200_000, 3))?;
        fs::rename(mm.join("made-while-down/f"), mm.join("moved"))?;
        fs::remove_file(mm.join("moved"))?;
        fs::write(mm.join("kept"), b"kept")?;
        Ok(t.elapsed())
    });
    // A duration: the MDS stays down 3 s, the outage the operations wait out.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!worker.is_finished(), "operations must wait for the MDS");
    tc.cluster
        .start_mds(Some(&addr))
        .expect("restart the MDS on the same address");
    let waited = worker
        .join()
        .unwrap()
        .expect("no error while the MDS restarted");
    assert!(waited >= Duration::from_secs(2), "{waited:?}");

    // The same mount, the same handles.
    let mut got = Vec::new();
    reader.seek(SeekFrom::Start(0)).unwrap();
    reader.read_to_end(&mut got).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&before));
    let mut g = Vec::new();
    ghost.read_to_end(&mut g).unwrap();
    assert_eq!(
        sha256_hex(&g),
        sha256_hex(&ghost_data),
        "unlinked open file"
    );
    drop(ghost);
    writer.write_all(&pattern(300_000, 4)).unwrap();
    writer.sync_all().unwrap();
    drop(writer);
    let mut want = pattern(100_000, 2);
    want.extend(pattern(300_000, 4));
    assert_eq!(sha256_hex(&read_all(&m.join("growing"))), sha256_hex(&want));
    assert!(m.join("made-while-down").is_dir());
    assert!(!m.join("moved").exists());
    assert_eq!(fs::read(m.join("kept")).unwrap(), b"kept");
    let fsck = tc
        .cluster
        .wait_replicated(Duration::from_secs(20))
        .expect("fsck clean");
    assert!(fsck.problems.is_empty());
}

#[test]
fn short_mds_timeout_gives_eio_then_recovers() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount_with(&["mds_timeout=2"]);
    fs::write(m.join("a"), b"hello").unwrap();
    let addr = tc.mds_addr();
    tc.cluster.mds.crash();
    let t = Instant::now();
    let err = fs::create_dir(m.join("never")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    tc.cluster.start_mds(Some(&addr)).unwrap();
    // No remount: the same mount serves again.
    fs::create_dir(m.join("after")).unwrap();
    assert_eq!(fs::read(m.join("a")).unwrap(), b"hello");
    assert!(!m.join("never").exists());
}
