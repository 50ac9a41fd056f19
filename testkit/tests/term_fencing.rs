//! Term fencing with real processes: every MDS start takes a higher term,
//! chunk daemons keep the highest on disk, and an MDS started from an older
//! copy of the data directory (a stale MDS) gets nothing obeyed — the
//! daemons do not even register with it — until it is started with
//! `--min-term` above what they saw.

use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;
use std::time::Duration;
use weft_testkit::{pattern, read_all, wait_until, TestCluster};

const MIB: u64 = 1 << 20;

fn term_of(dir: &Path) -> u64 {
    fs::read_to_string(dir.join("mds.term"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Replica files a daemon holds.
fn chunk_files(dir: &Path) -> usize {
    let mut n = 0;
    for sub in fs::read_dir(dir.join("chunks")).unwrap() {
        let sub = sub.unwrap().path();
        if sub.is_dir() {
            n += fs::read_dir(&sub)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".chunk")
                })
                .count();
        }
    }
    n
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == "LOCK" {
            continue;
        }
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(&name));
        } else {
            fs::copy(e.path(), to.join(&name)).unwrap();
        }
    }
}

#[test]
fn a_stale_mds_is_refused_until_it_takes_a_newer_term() {
    let mut tc = TestCluster::start(3, MIB);
    let chunkd_dirs: Vec<_> = tc.cluster.chunkds.iter().map(|c| c.data.clone()).collect();
    let all_at = |t: u64| {
        let dirs = chunkd_dirs.clone();
        move || dirs.iter().all(|d| term_of(d) == t)
    };
    let term = |tc: &TestCluster| tc.cluster.status().unwrap().mds[0].term;
    let t1 = term(&tc);
    assert!(t1 >= 1);
    wait_until("daemons record term 1", Duration::from_secs(10), all_at(t1));

    let m = tc.mount();
    let data = pattern(3 * MIB as usize / 2, 4);
    fs::write(m.join("f"), &data).unwrap();

    // A copy of the data directory as it stands now (stopped cleanly).
    let addr = tc.mds_addr();
    tc.cluster.mds.stop(Duration::from_secs(10));
    let mds_dir = tc.cluster.mds.data.clone();
    let stale_copy = tc.tmp.path().join("stale-mds");
    copy_dir(&mds_dir, &stale_copy);

    // Two more starts: the daemons now know term t1 + 2.
    tc.cluster.start_mds(Some(&addr)).unwrap();
    tc.cluster.mds.stop(Duration::from_secs(10));
    tc.cluster.start_mds(Some(&addr)).unwrap();
    assert_eq!(term(&tc), t1 + 2);
    wait_until(
        "daemons record the new term",
        Duration::from_secs(10),
        all_at(t1 + 2),
    );
    // An overwrite needs a new lease: SetVersion under the new term.
    let data2 = pattern(3 * MIB as usize / 2, 9);
    fs::write(m.join("f"), &data2).unwrap();
    assert_eq!(
        hex::encode(Sha256::digest(read_all(&m.join("f")))),
        hex::encode(Sha256::digest(&data2))
    );

    let replicas_before: std::collections::HashMap<_, _> = tc
        .cluster
        .chunkds
        .iter()
        .map(|c| (c.data.clone(), chunk_files(&c.data)))
        .collect();
    assert!(
        replicas_before.values().all(|n| *n == 2),
        "{replicas_before:?}"
    );

    // The stale copy starts at t1 + 1: the daemons refuse it.
    tc.cluster.mds.stop(Duration::from_secs(10));
    let real = tc.tmp.path().join("real-mds");
    fs::rename(&mds_dir, &real).unwrap();
    fs::rename(&stale_copy, &mds_dir).unwrap();
    tc.cluster.start_mds(Some(&addr)).unwrap();
    assert_eq!(term(&tc), t1 + 1);
    let logs: Vec<_> = tc.cluster.chunkds.iter().map(|c| c.log.clone()).collect();
    wait_until(
        "every daemon refuses the stale term",
        Duration::from_secs(15),
        || {
            logs.iter().all(|l| {
                fs::read_to_string(l)
                    .unwrap_or_default()
                    .contains(&format!("stale MDS term {}", t1 + 1))
            })
        },
    );
    // It knows older versions of f's chunks than the daemons hold, so it
    // would have them deleted as stale; nothing of it is obeyed.
    let logs_len: Vec<usize> = logs
        .iter()
        .map(|l| fs::read_to_string(l).unwrap_or_default().len())
        .collect();
    wait_until("a few more refused rounds", Duration::from_secs(15), || {
        logs.iter().zip(&logs_len).all(|(l, n)| {
            let text = fs::read_to_string(l).unwrap_or_default();
            text[*n..].matches("stale MDS term").count() >= 2
        })
    });
    for c in &tc.cluster.chunkds {
        assert_eq!(term_of(&c.data), t1 + 2);
        assert_eq!(
            chunk_files(&c.data),
            replicas_before[&c.data],
            "{}",
            c.data.display()
        );
    }

    // --min-term puts it above what they saw: they register again.
    tc.cluster.mds.stop(Duration::from_secs(10));
    tc.cluster
        .spec
        .mds_args
        .extend(["--min-term".into(), (t1 + 10).to_string()]);
    tc.cluster.start_mds(Some(&addr)).unwrap();
    assert_eq!(term(&tc), t1 + 10);
    tc.cluster.wait_alive(3, Duration::from_secs(20)).unwrap();
    wait_until(
        "daemons record it",
        Duration::from_secs(10),
        all_at(t1 + 10),
    );
}
