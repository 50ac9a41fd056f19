//! A real MDS and chunk daemons on loopback: registration, status, fsck,
//! replica placement, a daemon's death.

use std::process::Command;
use std::time::Duration;
use weft_testkit::{bin, bytes_under, pattern, TestCluster};

const MIB: u64 = 1 << 20;

fn weft(args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("weft")).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn status_json_lists_daemons_and_counts() {
    let tc = TestCluster::start(3, MIB);
    let (code, out) = weft(&["status", "--mds", &tc.mds_addr(), "--json"]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ds = v["chunkds"].as_array().unwrap();
    assert_eq!(ds.len(), 3);
    for d in ds {
        assert_eq!(d["alive"], true);
        assert!(d["capacity"].as_u64().unwrap() > 0);
        assert!(d["address"].as_str().unwrap().starts_with("127.0.0.1:"));
    }
    for field in ["files", "chunks", "under_replicated", "missing"] {
        assert_eq!(v[field].as_u64(), Some(0), "{field} in {out}");
    }
}

#[test]
fn fsck_clean_then_reports_a_dead_daemon() {
    let mut tc = TestCluster::start(3, MIB);
    let mnt = tc.mount();
    std::fs::write(mnt.join("f"), pattern(3 * MIB as usize + 5, 1)).unwrap();
    let f = tc
        .cluster
        .wait_replicated(Duration::from_secs(20))
        .expect("replicated");
    assert_eq!(f.chunks, 4);
    let (code, out) = weft(&["fsck", "--mds", &tc.mds_addr()]);
    assert_eq!(code, 0, "{out}");

    // Three replicas on three daemons: each daemon holds every chunk once.
    let s = tc.cluster.status().unwrap();
    assert!(s.chunkds.iter().all(|d| d.chunks == 4), "{:?}", s.chunkds);
    for c in &tc.cluster.chunkds {
        let stored = bytes_under(&c.data, ".chunk");
        assert!(
            stored >= 3 * MIB,
            "{} holds only {stored} bytes",
            c.data.display()
        );
    }
    assert!(
        bytes_under(&tc.cluster.mds.data, "") < MIB,
        "the MDS must hold no file data"
    );

    tc.cluster.chunkds[0].crash();
    weft_testkit::wait_until(
        "the daemon to be declared dead",
        Duration::from_secs(10),
        || {
            tc.cluster
                .status()
                .map(|s| s.chunkds.iter().filter(|d| d.alive).count() == 2)
                .unwrap_or(false)
        },
    );
    let (code, out) = weft(&["fsck", "--mds", &tc.mds_addr()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("/f chunk 0") && out.contains("2 of 3"),
        "{out}"
    );
    let s = tc.cluster.status().unwrap();
    assert_eq!(s.under_replicated, 4);
    assert_eq!(s.missing, 0);

    // A page of one inode at a time finds the same: every inode walked once
    // (root, /f, /g), the four problem chunks of /f and the three of /g once.
    std::fs::write(mnt.join("g"), pattern(2 * MIB as usize + 1, 2)).unwrap();
    let mut pages = Vec::new();
    let paged = weft_cli::admin::block_on(weft_cli::admin::fsck_paged(
        &tc.mds_addr(),
        1,
        |walked, of| pages.push((walked, of)),
    ))
    .unwrap();
    assert_eq!(pages, vec![(1, 3), (2, 3), (3, 3)]);
    assert_eq!((paged.walked, paged.inodes, paged.chunks), (3, 3, 7));
    let mut bad: Vec<(String, u64)> = paged
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.index))
        .collect();
    bad.sort();
    let want: Vec<(String, u64)> = [("/f", 0..4), ("/g", 0..3)]
        .into_iter()
        .flat_map(|(p, r)| r.map(move |i| (p.to_string(), i)))
        .collect();
    assert_eq!(bad, want);
    assert_eq!(tc.cluster.fsck().unwrap().problems.len(), 7);
}

#[test]
fn replicas_spread_over_racks() {
    let mut tc = TestCluster::start_with(4, |s| {
        s.chunk_size = Some(MIB);
        s.replicas = Some(2);
        s.racks = vec!["r1".into(), "r1".into(), "r1".into(), "r2".into()];
    });
    let mnt = tc.mount();
    std::fs::write(mnt.join("f"), pattern(6 * MIB as usize, 2)).unwrap();
    tc.cluster
        .wait_replicated(Duration::from_secs(20))
        .expect("replicated");
    // Rack r2 has one daemon: with two racks, every chunk has a copy there.
    let s = tc.cluster.status().unwrap();
    let r2 = s.chunkds.iter().find(|d| d.rack == "r2").unwrap();
    assert_eq!(r2.chunks, 6, "{:?}", s.chunkds);
}
