//! Orphan garbage collection: replicas no file references (here: a file
//! removed while one daemon was down, so that daemon never got the delete)
//! are reported by `weft fsck` and deleted from the daemon's disk after the
//! MDS's grace period, through heartbeat replies.

use std::fs;
use std::process::Command;
use std::time::Duration;
use weft_testkit::{bin, bytes_under, pattern, wait_until, TestCluster};

const MIB: u64 = 1 << 20;

fn fsck_text(addr: &str) -> (i32, String) {
    let out = Command::new(bin("weft"))
        .args(["fsck", "--mds", addr])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn orphans_are_reported_then_deleted_after_the_grace_period() {
    let mut tc = TestCluster::start_with(2, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(2);
        s.mds_args = vec!["--orphan-grace-secs".into(), "3".into()];
    });
    let m = tc.mount();
    fs::write(m.join("keep"), pattern(MIB as usize, 1)).unwrap();
    fs::write(m.join("doomed"), pattern(3 * MIB as usize, 2)).unwrap();
    tc.cluster.wait_replicated(Duration::from_secs(20)).unwrap();
    let d1 = tc.cluster.chunkds[1].data.clone();
    let held = bytes_under(&d1, ".chunk");
    assert!(held >= 4 * MIB, "daemon 1 holds all 4 chunks: {held}");

    // Daemon 1 is away while "doomed" is removed: it keeps its 3 replicas.
    tc.cluster.chunkds[1].crash();
    fs::remove_file(m.join("doomed")).unwrap();
    tc.cluster.start_chunkd(1).unwrap();
    tc.cluster.wait_alive(2, Duration::from_secs(20)).unwrap();
    let addr = tc.mds_addr();
    let f = tc.cluster.fsck().unwrap();
    assert_eq!((f.orphan_chunks, f.orphan_replicas), (3, 3), "{f:?}");
    assert_eq!(f.missing_chunks, 0);
    let (code, text) = fsck_text(&addr);
    assert_eq!(code, 0, "orphans are not a problem for the data: {text}");
    assert!(text.contains("orphans: 3 chunks (3 replicas)"), "{text}");
    assert!(
        bytes_under(&d1, ".chunk") >= 4 * MIB,
        "nothing deleted before the grace period"
    );

    // After the grace period the daemon is told to delete them.
    wait_until("orphans deleted", Duration::from_secs(30), || {
        tc.cluster.fsck().unwrap().orphan_chunks == 0 && bytes_under(&d1, ".chunk") < 2 * MIB
    });
    assert!(
        bytes_under(&d1, ".chunk") >= MIB,
        "the live file's replica stays"
    );
    assert_eq!(fs::read(m.join("keep")).unwrap(), pattern(MIB as usize, 1));
    let f = tc.cluster.wait_replicated(Duration::from_secs(20)).unwrap();
    assert!(f.problems.is_empty());
}
