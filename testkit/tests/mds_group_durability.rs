//! What an MDS group's answers promise about the disk. A change is answered
//! once a majority has it written (each node fdatasyncs right behind it);
//! fsync (and close, with `-o close_sync`) waits until it is on disk on a
//! majority. Every node here holds each fdatasync back by
//! `--test-sync-delay-ms`, so the tests can tell "written" from "on disk".

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};
use weft_testkit::{wait_until, TestCluster};

const SYNC_DELAY: Duration = Duration::from_secs(5);

fn group_with_slow_disks() -> TestCluster {
    TestCluster::start_with(1, |s| {
        s.mds_nodes = 3;
        s.chunk_size = Some(1 << 20);
        s.mds_args = vec![
            "--test-sync-delay-ms".into(),
            SYNC_DELAY.as_millis().to_string(),
        ];
    })
}

fn wait_leader(c: &TestCluster) -> u64 {
    let mut id = 0;
    wait_until("an MDS group leader", Duration::from_secs(60), || {
        match c.cluster.leader_id() {
            Some(l) => {
                id = l;
                true
            }
            None => false,
        }
    });
    id
}

#[test]
fn changes_are_answered_once_written_and_fsync_waits_for_a_majority_disk() {
    let mut c = group_with_slow_disks();
    let mnt = c.mount();
    wait_leader(&c);
    // Warm up: the first calls of a mount may wait for a leader and a lease.
    fs::create_dir(mnt.join("warm")).unwrap();

    let t = Instant::now();
    fs::create_dir(mnt.join("answered-early")).unwrap();
    let mkdir = t.elapsed();
    // No fdatasync can have finished within SYNC_DELAY of the append, so an
    // answer faster than that was given for a change written, not synced.
    assert!(
        mkdir < SYNC_DELAY,
        "mkdir took {mkdir:?}: it waited for the disk"
    );

    // fsync of the directory must wait for the disks of a majority.
    let t = Instant::now();
    fs::File::open(mnt.join("answered-early"))
        .unwrap()
        .sync_all()
        .unwrap();
    let fsync = t.elapsed();
    assert!(
        fsync >= SYNC_DELAY - Duration::from_millis(mkdir.as_millis() as u64),
        "fsync returned after {fsync:?}, before any node's fdatasync of the change"
    );

    // A second fsync with nothing new to sync is answered at once.
    let t = Instant::now();
    fs::File::open(mnt.join("answered-early"))
        .unwrap()
        .sync_all()
        .unwrap();
    assert!(t.elapsed() < SYNC_DELAY, "{:?}", t.elapsed());
}

#[test]
fn a_kill_of_every_node_at_once_loses_no_answered_change() {
    let mut c = group_with_slow_disks();
    let mnt = c.mount();
    wait_leader(&c);
    fs::create_dir(mnt.join("warm")).unwrap();

    // Answered, and on no disk yet (each fdatasync is held back 5 s): they
    // live in the nodes' page caches, which a kill -9 does not take.
    let t = Instant::now();
    let mut made = Vec::new();
    for i in 0..20 {
        let p = mnt.join(format!("d{i}"));
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700 + i % 8)).unwrap();
        made.push((p, 0o700 + i % 8));
    }
    let answered_in = t.elapsed();
    for id in 1..=3 {
        c.cluster.mds_node(id).crash();
    }
    eprintln!("20 mkdirs + chmods answered in {answered_in:?}, then every node killed");
    for id in 1..=3 {
        c.cluster.start_mds_node(id).unwrap();
    }
    wait_leader(&c);
    for (p, mode) in &made {
        let m = fs::metadata(p).unwrap_or_else(|e| panic!("{} after the kills: {e}", p.display()));
        assert!(m.is_dir(), "{}", p.display());
        assert_eq!(m.permissions().mode() & 0o7777, *mode, "{}", p.display());
    }
}
