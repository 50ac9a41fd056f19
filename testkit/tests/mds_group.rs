//! The MDS group (issue: metadata that survives losing any MDS machine):
//! three weft-mds nodes on openraft under a real mount, with real faults —
//! kill -9 of the leader during a workload, SIGSTOP past an election, a
//! wiped follower, a majority down — and online membership changes.

use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weft_testkit::{sha256_hex, wait_until, TestCluster};

fn group(chunkds: usize, tweak: impl FnOnce(&mut weft_cli::cluster::ClusterSpec)) -> TestCluster {
    TestCluster::start_with(chunkds, |s| {
        s.mds_nodes = 3;
        s.chunk_size = Some(1 << 20);
        tweak(s);
    })
}

/// Rounds of a kill loop: a few in CI, the full count with WEFT_FULL=1.
fn rounds(ci: usize, full: usize) -> usize {
    if std::env::var_os("WEFT_FULL").is_some_and(|v| v == "1") {
        full
    } else {
        ci
    }
}

/// Waits for a leader other than `not` (None: any), returns its id.
fn wait_leader(c: &TestCluster, not: Option<u64>) -> u64 {
    let mut id = 0;
    wait_until("an MDS group leader", Duration::from_secs(30), || {
        match c.cluster.leader_id() {
            Some(l) if Some(l) != not => {
                id = l;
                true
            }
            _ => false,
        }
    });
    id
}

/// What the workload was told succeeded, to check afterwards.
#[derive(Default)]
struct Acked {
    /// path → sha256 of the bytes, for files that must exist.
    files: BTreeMap<PathBuf, String>,
    /// paths that must not exist (unlinked, or renamed away).
    gone: Vec<PathBuf>,
    /// path → mode bits set by chmod.
    modes: BTreeMap<PathBuf, u32>,
}

/// One round of mutations; every step that returns Ok is recorded.
fn workload_step(dir: &Path, i: usize, acked: &Mutex<Acked>) -> std::io::Result<()> {
    let data = format!("file {i} {}\n", "x".repeat(i % 3000)).into_bytes();
    let p = dir.join(format!("f{i}"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)?;
    f.write_all(&data)?;
    f.sync_all()?;
    drop(f);
    acked
        .lock()
        .unwrap()
        .files
        .insert(p.clone(), sha256_hex(&data));
    if i.is_multiple_of(3) {
        let q = dir.join(format!("r{i}"));
        fs::rename(&p, &q)?;
        let mut a = acked.lock().unwrap();
        let h = a.files.remove(&p).unwrap();
        a.files.insert(q, h);
        a.gone.push(p);
    } else if i % 3 == 1 {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600))?;
        acked.lock().unwrap().modes.insert(p, 0o600);
    } else if i % 5 == 2 {
        fs::remove_file(&p)?;
        let mut a = acked.lock().unwrap();
        a.files.remove(&p);
        a.gone.push(p);
    }
    Ok(())
}

fn check_acked(acked: &Acked) {
    for (p, h) in &acked.files {
        let bytes =
            fs::read(p).unwrap_or_else(|e| panic!("{}: acknowledged, now {e}", p.display()));
        assert_eq!(&sha256_hex(&bytes), h, "{}: bytes differ", p.display());
    }
    for p in &acked.gone {
        assert!(!p.exists(), "{}: removed, yet it exists", p.display());
    }
    for (p, m) in &acked.modes {
        if acked.files.contains_key(p) {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, *m, "{}: mode", p.display());
        }
    }
}

#[test]
fn workload_rides_through_leader_kills() {
    let mut c = group(3, |_| {});
    let mnt = c.mount();
    let dir = mnt.join("work");
    fs::create_dir(&dir).unwrap();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (dir, acked, stop) = (dir.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || -> (usize, Option<String>) {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = workload_step(&dir, i, &acked) {
                    return (i, Some(format!("step {i}: {e}")));
                }
                i += 1;
            }
            (i, None)
        })
    };
    // CI: 3 kills; the 10 by hand (WEFT_FULL=1).
    let kills = rounds(3, 10);
    for round in 0..kills {
        let leader = wait_leader(&c, None);
        std::thread::sleep(Duration::from_millis(300)); // let the workload run a little
        c.cluster.mds_node(leader).crash();
        let next = wait_leader(&c, Some(leader));
        eprintln!("round {round}: killed leader {leader}, node {next} leads");
        c.cluster.start_mds_node(leader).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (steps, err) = worker.join().unwrap();
    assert!(err.is_none(), "the workload saw an error: {err:?}");
    assert!(
        steps > 10,
        "the workload made too little progress: {steps} steps"
    );
    check_acked(&acked.lock().unwrap());
    let f = c.cluster.wait_replicated(Duration::from_secs(180)).unwrap();
    assert!(f.problems.is_empty(), "fsck: {:?}", f.problems);
    eprintln!("{steps} workload steps through {kills} leader kills");
}

#[test]
fn a_paused_leader_is_fenced_and_steps_down() {
    let mut c = group(3, |_| {});
    let mnt = c.mount();
    fs::write(mnt.join("before"), b"before").unwrap();
    let old = wait_leader(&c, None);
    let old_term = c
        .cluster
        .status()
        .unwrap()
        .mds
        .iter()
        .map(|n| n.term)
        .max()
        .unwrap();
    assert!(old_term > 0);
    c.cluster.mds_node(old).signal(Signal::SIGSTOP);
    let new = wait_leader(&c, Some(old));
    // The mount carries on with the new leader.
    let data = weft_testkit::pattern(3 << 20, 7);
    fs::write(mnt.join("during"), &data).unwrap();
    c.cluster.mds_node(old).signal(Signal::SIGCONT);
    // The old leader hears of the newer term and follows.
    wait_until("the old leader to follow", Duration::from_secs(20), || {
        c.cluster.leader_id() == Some(new)
            && c.cluster
                .status()
                .map(|s| s.mds.iter().any(|n| n.id == old && n.role == "follower"))
                .unwrap_or(false)
    });
    // Every chunk daemon heard the new term: the old one is refused from now on.
    for d in &c.cluster.chunkds {
        let seen: u64 = fs::read_to_string(d.data.join("mds.term"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            seen > old_term,
            "{}: term {seen}, not above {old_term}",
            d.name
        );
    }
    assert_eq!(fs::read(mnt.join("before")).unwrap(), b"before");
    assert_eq!(
        sha256_hex(&fs::read(mnt.join("during")).unwrap()),
        sha256_hex(&data)
    );
    fs::write(mnt.join("after"), b"after").unwrap();
    assert_eq!(fs::read(mnt.join("after")).unwrap(), b"after");
}

#[test]
fn minority_down_works_majority_down_waits() {
    let mut c = group(3, |_| {});
    let mnt = c.mount();
    let leader = wait_leader(&c, None);
    let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    c.cluster.mds_node(followers[0]).crash();
    fs::write(mnt.join("one-down"), b"ok").unwrap();
    assert_eq!(fs::read(mnt.join("one-down")).unwrap(), b"ok");
    c.cluster.mds_node(followers[1]).crash();
    // No majority: a change waits (no error, no success) until one is back.
    let t = Instant::now();
    let writer = {
        let p = mnt.join("majority-down");
        std::thread::spawn(move || fs::write(p, b"waited"))
    };
    std::thread::sleep(Duration::from_secs(3));
    if writer.is_finished() {
        let r = writer.join().unwrap();
        panic!(
            "a change finished without a majority: {r:?}\n{}",
            c.cluster.mounts[0].proc.log_tail()
        );
    }
    c.cluster.start_mds_node(followers[0]).unwrap();
    let r = writer.join().unwrap();
    assert!(r.is_ok(), "after a majority came back: {r:?}");
    assert!(t.elapsed() >= Duration::from_secs(3));
    assert_eq!(fs::read(mnt.join("majority-down")).unwrap(), b"waited");
    assert_eq!(fs::read(mnt.join("one-down")).unwrap(), b"ok");
}

#[test]
fn a_wiped_follower_catches_up_by_snapshot() {
    let mut c = group(3, |s| {
        s.mds_args = vec!["--snapshot-entries".into(), "300".into()];
    });
    let mnt = c.mount();
    let mut hashes = BTreeMap::new();
    for i in 0..400 {
        let data = format!("small file {i}").into_bytes();
        fs::write(mnt.join(format!("s{i}")), &data).unwrap();
        hashes.insert(i, sha256_hex(&data));
    }
    let leader = wait_leader(&c, None);
    let victim = (2..=3).find(|i| *i != leader).unwrap();
    let node = c.cluster.mds_node(victim);
    node.crash();
    fs::remove_dir_all(&node.data).unwrap();
    for i in 400..500 {
        let data = format!("small file {i}").into_bytes();
        fs::write(mnt.join(format!("s{i}")), &data).unwrap();
        hashes.insert(i, sha256_hex(&data));
    }
    c.cluster.start_mds_node_with(victim, &["--join"]).unwrap();
    // It comes back empty and is sent a snapshot (the log before it is gone).
    let snap_dir = c.cluster.mds_node(victim).data.join("raft/snapshot");
    let t = Instant::now();
    while !fs::read_dir(&snap_dir)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        })
        .unwrap_or(false)
    {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the wiped node installed no snapshot in 30 s:\n{}",
            fs::read_to_string(&c.cluster.mds_node(victim).log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("WARN"))
                .take(6)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let leader_log = c
        .cluster
        .status()
        .unwrap()
        .mds
        .iter()
        .find(|n| n.role == "leader")
        .unwrap()
        .last_log_index;
    wait_until(
        "the wiped node to catch up",
        Duration::from_secs(30),
        || {
            c.cluster
                .status()
                .map(|s| {
                    s.mds
                        .iter()
                        .any(|n| n.id == victim && n.applied >= leader_log)
                })
                .unwrap_or(false)
        },
    );
    // A failover that needs it for a majority loses nothing.
    let other = (1..=3).find(|i| *i != leader && *i != victim).unwrap();
    c.cluster.mds_node(leader).crash();
    c.cluster.mds_node(other).crash();
    c.cluster.start_mds_node(other).unwrap();
    wait_leader(&c, Some(leader));
    for (i, h) in &hashes {
        let bytes = fs::read(mnt.join(format!("s{i}")))
            .unwrap_or_else(|e| panic!("s{i}: {e}\n{}", c.cluster.mounts[0].proc.log_tail()));
        assert_eq!(&sha256_hex(&bytes), h, "s{i}");
    }
    assert_eq!(fs::read_dir(&mnt).unwrap().count(), 500);
}

#[test]
fn a_single_mds_becomes_a_group_and_grows_then_shrinks() {
    // Today's single MDS with files in it...
    let mut c = TestCluster::start_with(2, |s| s.chunk_size = Some(1 << 20));
    let mnt = c.mount();
    fs::write(mnt.join("old"), b"from the single MDS").unwrap();
    c.cluster.unmount(0).unwrap();
    let addr = c.cluster.mds.addr.clone();
    c.cluster.mds.stop(Duration::from_secs(5));
    // ...restarted as node 1 of a group of one, on the same address.
    c.cluster.spec.mds_args = vec![
        "--node-id".into(),
        "1".into(),
        "--peers".into(),
        format!("1={addr}"),
    ];
    c.cluster.start_mds(Some(&addr)).unwrap();
    c.cluster.wait_alive(2, Duration::from_secs(30)).unwrap();
    let mnt = c.mount();
    assert_eq!(fs::read(mnt.join("old")).unwrap(), b"from the single MDS");
    // Grow 1 → 3 online, under a mount.
    let tmp = c.tmp.path().to_path_buf();
    let mut extra = Vec::new();
    for id in 2..=3u64 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap().to_string();
        drop(l);
        let data = tmp.join(format!("mds-{id}"));
        let log = fs::File::create(tmp.join(format!("mds-{id}.log"))).unwrap();
        let child = std::process::Command::new(weft_testkit::bin("weft-mds"))
            .args([
                "--listen",
                &a,
                "--data",
                &data.display().to_string(),
                "--node-id",
                &id.to_string(),
                "--join",
                "--chunk-size",
                "1048576",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        extra.push((id, a.clone(), child));
        let out = weft_testkit::weft_cmd()
            .args(["mds", "add", "--mds", &addr, &id.to_string(), &a])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "weft mds add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::write(mnt.join(format!("after-add-{id}")), b"ok").unwrap();
    }
    let s = c.cluster.status().unwrap();
    assert_eq!(s.mds.len(), 3, "{:?}", s.mds);
    // Shrink back: remove node 3, and the group of two keeps working.
    let out = weft_testkit::weft_cmd()
        .args(["mds", "remove", "--mds", &addr, "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weft mds remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(mnt.join("after-remove"), b"ok").unwrap();
    let s = c.cluster.status().unwrap();
    assert_eq!(s.mds.len(), 2, "{:?}", s.mds);
    assert_eq!(fs::read(mnt.join("old")).unwrap(), b"from the single MDS");
    c.cluster.stop();
    for (_, _, mut child) in extra {
        let _ = child.kill();
        let _ = child.wait();
    }
}
