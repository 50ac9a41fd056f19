//! Checkpoints and recovery of a real weft-mds data directory: the log stays
//! bounded by checkpoints and everything survives kill -9; a torn tail is cut
//! off and the MDS starts; damage before the tail (log or snapshot) refuses to
//! start and `weft-mds --check` names the file and offset.

use std::fs;
use std::path::{Path, PathBuf};
use weft_testkit::mds::*;

const S: u64 = 0x7e57;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn files_in(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == ext));
    v.sort();
    v
}

fn bytes_of(paths: &[PathBuf]) -> u64 {
    paths.iter().map(|p| fs::metadata(p).unwrap().len()).sum()
}

fn check(data: &Path) -> (i32, String) {
    mds_tool(&["--check", "--data", data.to_str().unwrap()])
}

#[test]
fn checkpoints_bound_the_log_and_survive_kill9() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mds");
    let mut mds = MdsProc::start(&data, &["--checkpoint-bytes", "16384"]);
    let r = rt();
    const N: u64 = 3000;
    r.block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        for i in 0..N {
            let ino = ino_of(
                &c.call(S, 2 * i + 1, create(1, &format!("f{i}"), libc::O_EXCL))
                    .await,
            );
            c.call(
                S,
                2 * i + 2,
                weft_proto::pb::meta_request::Op::Release(weft_proto::pb::ReleaseReq {
                    ino,
                    write: true,
                    more: Vec::new(),
                    held: false,
                    atimes: Vec::new(),
                }),
            )
            .await
            .unwrap();
        }
    });
    // Checkpoints run in the background: the last one drops the older
    // snapshot and the segments it covers when it is done.
    weft_testkit::wait_until(
        "the last checkpoint to drop what it covers",
        std::time::Duration::from_secs(20),
        || {
            files_in(&data.join("snapshot"), "snap").len() == 1
                && files_in(&data.join("wal"), "wal").len() <= 3
        },
    );
    let snaps = files_in(&data.join("snapshot"), "snap");
    assert_eq!(snaps.len(), 1, "one snapshot is kept: {snaps:?}");
    let segs = files_in(&data.join("wal"), "wal");
    assert!(segs.len() <= 3, "covered segments are dropped: {segs:?}");
    assert!(
        bytes_of(&segs) < 200_000,
        "log is {} bytes after {N} creates with 16 KiB checkpoints",
        bytes_of(&segs)
    );

    mds.kill9();
    mds.restart().unwrap();
    r.block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        for i in 0..N {
            assert!(
                c.call(0, 0, lookup(1, &format!("f{i}"))).await.is_ok(),
                "f{i} lost"
            );
        }
        // A retry of the last create, answered from a table that went through snapshots.
        assert!(c
            .call(
                S,
                2 * (N - 1) + 1,
                create(1, &format!("f{}", N - 1), libc::O_EXCL)
            )
            .await
            .is_ok());
        for i in 0..N {
            c.call(S, 10_000 + i, unlink(1, &format!("f{i}")))
                .await
                .unwrap();
        }
    });
    mds.stop();
    let (code, out) = check(&data);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("state: 0 files, 1 directories"), "{out}");
    // After N creates and N deletes, disk use is back to (nearly) an empty file system.
    let snap = bytes_of(&files_in(&data.join("snapshot"), "snap"));
    let log = bytes_of(&files_in(&data.join("wal"), "wal"));
    assert!(
        snap < 300_000 && log < 200_000,
        "snapshot {snap} bytes, log {log} bytes"
    );
    mds.restart().unwrap();
    r.block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        assert_eq!(c.call(0, 0, lookup(1, "f0")).await, Err(libc::ENOENT));
    });
}

#[test]
fn torn_tail_recovers_and_mid_log_damage_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mds");
    let mut mds = MdsProc::start(&data, &[]);
    let r = rt();
    r.block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        for i in 0..50 {
            ino_of(&c.call(S, i + 1, mkdir(1, &format!("d{i}"))).await);
        }
    });
    mds.kill9();
    let seg = files_in(&data.join("wal"), "wal").pop().unwrap();
    let good = fs::read(&seg).unwrap();
    // A crash mid-append: half a frame header at the end.
    let mut torn = good.clone();
    torn.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 51, 0]);
    fs::write(&seg, &torn).unwrap();
    let (code, out) = check(&data);
    assert_eq!(code, 0, "a torn tail is recoverable: {out}");
    assert!(out.contains("torn record of 10 bytes"), "{out}");
    assert_eq!(
        fs::read(&seg).unwrap().len(),
        torn.len(),
        "--check changes nothing"
    );
    mds.restart().unwrap();
    r.block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        for i in 0..50 {
            assert!(c.call(0, 0, lookup(1, &format!("d{i}"))).await.is_ok());
        }
    });
    mds.kill9();
    assert_eq!(fs::read(&seg).unwrap(), good, "the torn tail was cut off");
    assert!(fs::read_to_string(&mds.log)
        .unwrap()
        .contains("torn record"));

    // Damage inside the first record: refuse, naming file and offset.
    let mut bad = good.clone();
    bad[16 + 30] ^= 0x40;
    fs::write(&seg, &bad).unwrap();
    let (code, out) = check(&data);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(seg.to_str().unwrap()) && out.contains("offset 16"),
        "{out}"
    );
    let err = mds.restart().unwrap_err();
    assert!(
        err.contains(seg.to_str().unwrap()) && err.contains("refusing to start"),
        "{err}"
    );
}

#[test]
fn damaged_snapshot_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("mds");
    let mut mds = MdsProc::start(&data, &[]);
    rt().block_on(async {
        let c = RawMeta::connect(&mds.addr).await;
        for i in 0..20 {
            ino_of(&c.call(S, i + 1, mkdir(1, &format!("d{i}"))).await);
        }
    });
    mds.stop(); // a clean stop writes a checkpoint
    let snap = files_in(&data.join("snapshot"), "snap")
        .pop()
        .expect("a snapshot after a clean stop");
    let (code, out) = check(&data);
    assert_eq!(code, 0, "{out}");
    let mut b = fs::read(&snap).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    fs::write(&snap, &b).unwrap();
    let (code, out) = check(&data);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(snap.to_str().unwrap()) && out.contains("checksum mismatch"),
        "{out}"
    );
    let err = mds.restart().unwrap_err();
    assert!(err.contains("checksum mismatch"), "{err}");
}
