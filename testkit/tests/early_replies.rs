//! Early replies: the MDS answers a change once it is written to its
//! log and fdatasyncs right behind. These tests slow that fdatasync down (the
//! MDS's hidden `--test-sync-delay-ms`) so that "answered but not yet on disk"
//! lasts long enough to look at:
//! - changes whose syscalls returned survive a kill -9 of the MDS taken while
//!   none of them was synced (the page cache keeps them);
//! - fsync and fsyncdir return only once the MDS reports its log on disk
//!   past the change; close of a changed file too with `-o close_sync`, and
//!   without it close returns before (the MDS holds the change, which a
//!   kill -9 of the MDS does not lose).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use weft_testkit::{sh, wait_until, TestCluster};

const MIB: u64 = 1 << 20;

fn slow_sync_cluster(delay_ms: u64) -> TestCluster {
    TestCluster::start_with(1, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(1);
        s.mds_args = vec![format!("--test-sync-delay-ms={delay_ms}")];
    })
}

/// (appended, durable) indexes of the MDS log.
fn log_indexes(tc: &TestCluster) -> (u64, u64) {
    let s = tc.cluster.status().expect("status");
    (s.log_appended_index, s.log_durable_index)
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn changes_answered_before_the_sync_survive_kill9() {
    let mut tc = slow_sync_cluster(20_000);
    let m = tc.mount();
    // Wait for the sync of whatever the mount's start wrote (nothing, or a little).
    let (_, durable_before) = log_indexes(&tc);
    // None of these closes a changed file, so none waits for the log.
    sh(
        &m,
        r#"
        for i in $(seq 1 60); do
          mkdir d$i
          chmod 0750 d$i
          ln -s target-$i s$i
          mkdir -p d$i/sub
          mv d$i/sub d$i/moved
        done
        rmdir d7/moved
        "#,
    );
    let (appended, durable) = log_indexes(&tc);
    assert!(
        appended >= durable_before + 300 && durable < appended,
        "the burst should be answered before it is on disk: appended {appended}, durable {durable} (was {durable_before})"
    );

    tc.cluster.mds.crash();
    let addr = tc.mds_addr();
    tc.cluster.start_mds(Some(&addr)).expect("restart the MDS");
    // A fresh mount: nothing from the first one's caches.
    let m2 = tc.mount();
    for i in 1..=60 {
        let d = m2.join(format!("d{i}"));
        assert_eq!(mode(&d), 0o750, "d{i}");
        assert_eq!(
            fs::read_link(m2.join(format!("s{i}"))).unwrap(),
            Path::new(&format!("target-{i}"))
        );
        assert!(!d.join("sub").exists(), "d{i}/sub");
        assert_eq!(d.join("moved").exists(), i != 7, "d{i}/moved");
    }
    let (appended2, durable2) = log_indexes(&tc);
    assert!(appended2 >= appended, "{appended2} < {appended}");
    assert_eq!(
        durable2, appended2,
        "the restarted MDS syncs what it replayed"
    );
}

#[test]
fn fsync_fsyncdir_and_close_sync_wait_for_the_log() {
    let mut tc = slow_sync_cluster(3_000);
    let m = tc.mount_with(&["close_sync"]);
    fs::write(m.join("f"), b"hello").unwrap();
    fs::create_dir(m.join("dir")).unwrap();

    // fsync of a file: every change of this mount before it is on disk after.
    sh(&m, "chmod 0600 f");
    let (after_chmod, durable) = log_indexes(&tc);
    assert!(durable < after_chmod, "chmod should answer before the sync");
    sh(
        &m,
        "python3 -c 'import os; fd = os.open(\"f\", os.O_RDONLY); os.fsync(fd); os.close(fd)'",
    );
    let (_, durable) = log_indexes(&tc);
    assert!(
        durable >= after_chmod,
        "fsync returned at durable {durable} < {after_chmod}"
    );

    // fsyncdir after a create in the directory.
    sh(&m, "mkdir dir/sub");
    let (after_mkdir, durable) = log_indexes(&tc);
    assert!(durable < after_mkdir);
    sh(
        &m,
        "python3 -c 'import os; fd = os.open(\"dir\", os.O_RDONLY | os.O_DIRECTORY); os.fsync(fd); os.close(fd)'",
    );
    let (_, durable) = log_indexes(&tc);
    assert!(
        durable >= after_mkdir,
        "fsyncdir returned at durable {durable} < {after_mkdir}"
    );

    // close (with close_sync) of a file this mount created and wrote: its
    // creation, size and mtime are on disk when close returns.
    sh(&m, "printf 'some bytes' > g");
    let (after_close, durable) = log_indexes(&tc);
    assert!(
        durable >= after_close,
        "close returned at durable {durable} < {after_close}"
    );
    assert_eq!(fs::read(m.join("g")).unwrap(), b"some bytes");

    // A read-only open and close of a file whose changes are on disk does not
    // wait for the log, which lags behind a change of another file meanwhile.
    sh(&m, "chmod 0644 f");
    let (after, _) = log_indexes(&tc);
    sh(&m, "cat g > /dev/null");
    let (_, durable) = log_indexes(&tc);
    assert!(
        durable < after,
        "a read-only close waited for the log ({durable} >= {after})"
    );
    wait_until("the log catches up", Duration::from_secs(10), || {
        let (a, d) = log_indexes(&tc);
        a == d
    });
}

#[test]
fn close_returns_before_the_log_sync_and_a_kill9_loses_nothing_closed() {
    let mut tc = slow_sync_cluster(20_000);
    let m = tc.mount();
    // Twenty files created, written and closed (packed and in chunks): every
    // close returns while the log sync is held back for 20 s.
    let t0 = std::time::Instant::now();
    let mut want = Vec::new();
    for i in 0..20u32 {
        let data: Vec<u8> = (0..(i as usize * 7_001 + 100))
            .map(|j| (j as u32 * 31 + i) as u8)
            .collect();
        fs::write(m.join(format!("c{i}")), &data).unwrap();
        want.push(data);
    }
    let took = t0.elapsed();
    let (appended, durable) = log_indexes(&tc);
    assert!(
        durable < appended,
        "the closes should be answered before they are on disk: appended {appended}, durable {durable}"
    );
    assert!(
        took < Duration::from_secs(15),
        "twenty closes took {took:?}: they waited for the 20 s log sync"
    );
    // The MDS holds them: a kill -9 now loses none, as a fresh mount and
    // the writing one both see.
    tc.cluster.mds.crash();
    let addr = tc.mds_addr();
    tc.cluster.start_mds(Some(&addr)).expect("restart the MDS");
    let m2 = tc.mount();
    for mnt in [&m2, &m] {
        for (i, data) in want.iter().enumerate() {
            let p = mnt.join(format!("c{i}"));
            assert_eq!(&fs::read(&p).unwrap(), data, "{}", p.display());
        }
    }
}
