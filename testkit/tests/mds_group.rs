//! The MDS group (issue: metadata that survives losing any MDS machine):
//! three weft-mds nodes on openraft under a real mount, with real faults —
//! kill -9 of the leader during a workload, SIGSTOP past an election, the
//! leader cut off from both followers (a fault proxy on every MDS→MDS link),
//! a wiped follower, a majority down — and online membership changes; and
//! what a failover must keep besides the namespace: advisory locks (and
//! their expiry), files unlinked while open, drain marks.

use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use weft_testkit::group::{check_acked, wait_leader, Workload};
use weft_testkit::proxy::{FaultProxy, Mode};
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

#[test]
fn workload_rides_through_leader_kills() {
    let mut c = group(3, |_| {});
    let mnt = c.mount();
    let mut work = Workload::start(&mnt.join("work"));
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
    let steps = work.finish();
    assert!(
        steps > 10,
        "the workload made too little progress: {steps} steps"
    );
    check_acked(&work.acked.lock().unwrap());
    let f = c.cluster.wait_replicated(Duration::from_secs(180)).unwrap();
    assert!(f.problems.is_empty(), "fsck: {:?}", f.problems);
    eprintln!("{steps} workload steps through {kills} leader kills");
}

/// `weft status --mds ADDR` as the node at `addr` answers it: a follower
/// that knows the leader passes the question on to it, a leader (or a node
/// that knows none) answers itself. None if nothing answers within 3 s.
fn status_at(addr: &str) -> Option<weft_proto::pb::StatusReply> {
    weft_cli::admin::block_on(async {
        tokio::time::timeout(Duration::from_secs(3), weft_cli::admin::status(addr)).await
    })
    .ok()?
    .ok()
}

/// Restarts every node of a three-node group so that each dials each other
/// node through its own fault proxy (`--peer-via`); returns the proxies by
/// (from, to).
fn proxy_every_link(c: &mut TestCluster) -> BTreeMap<(u64, u64), FaultProxy> {
    let addr = |c: &mut TestCluster, id: u64| c.cluster.mds_node(id).addr.clone();
    let mut links = BTreeMap::new();
    for from in 1..=3u64 {
        for to in (1..=3u64).filter(|t| *t != from) {
            links.insert((from, to), FaultProxy::start(&addr(c, to)));
        }
    }
    for id in 1..=3u64 {
        let via: Vec<String> = (1..=3u64)
            .filter(|t| *t != id)
            .map(|t| format!("{t}={}", links[&(id, t)].addr()))
            .collect();
        c.cluster.mds_node(id).stop(Duration::from_secs(10));
        c.cluster
            .start_mds_node_with(id, &["--peer-via", &via.join(",")])
            .unwrap();
        // The group is whole again before the next node goes.
        wait_until(
            "all three MDS nodes in the group",
            Duration::from_secs(30),
            || {
                c.cluster.status().is_ok_and(|s| {
                    s.mds.len() == 3
                        && s.mds
                            .iter()
                            .all(|n| n.role == "leader" || n.role == "follower")
                })
            },
        );
    }
    links
}

#[test]
fn a_cut_off_leader_acknowledges_nothing_and_catches_up_when_healed() {
    let mut c = group(3, |_| {});
    let links = proxy_every_link(&mut c);
    c.cluster.wait_alive(3, Duration::from_secs(30)).unwrap();
    let old = wait_leader(&c, None);
    let old_addr = c.cluster.mds_node(old).addr.clone();
    let others: Vec<u64> = (1..=3).filter(|i| *i != old).collect();
    let other_addrs: Vec<String> = others
        .iter()
        .map(|o| c.cluster.mds_node(*o).addr.clone())
        .collect();
    // The leader's traffic to its followers goes through the proxies.
    wait_until(
        "the leader's links to go through their proxies",
        Duration::from_secs(10),
        || {
            others
                .iter()
                .all(|f| links[&(old, *f)].open_connections() > 0)
        },
    );

    // A mount given every MDS address, doing a live workload.
    let mnt = c.mount();
    let mut work = Workload::start(&mnt.join("work"));
    // A second mount that knows only the leader, with a long mds_timeout: a
    // client that stays with the old leader through the cut.
    let lone_mnt = c.tmp.path().join("lone");
    c.cluster
        .mount_source(&lone_mnt, &old_addr, &["mds_timeout=300"])
        .unwrap();
    let lone_mnt = c.cluster.mounts.last().unwrap().path.clone();
    let lone_bytes = weft_testkit::pattern(200 << 10, 5);
    fs::write(lone_mnt.join("lone-a"), &lone_bytes).unwrap();
    let lone_file = fs::File::open(lone_mnt.join("lone-a")).unwrap();
    work.progress(5, "the workload to start", Duration::from_secs(60));

    // Cut the old leader off from both followers (both directions).
    for f in &others {
        links[&(old, *f)].set(Mode::Cut);
        links[&(*f, old)].set(Mode::Cut);
    }
    let cut_at = Instant::now();
    // The lone mount's changes: a chmod through an open descriptor (no
    // lookup first: it goes straight to the old leader), a rename, a mkdir.
    let lone = {
        let m = lone_mnt.clone();
        std::thread::spawn(move || -> Vec<std::io::Result<()>> {
            vec![
                lone_file.set_permissions(fs::Permissions::from_mode(0o640)),
                fs::rename(m.join("lone-a"), m.join("lone-b")),
                fs::create_dir(m.join("lone-dir")),
            ]
        })
    };
    // The majority elects a new leader, which both of them name.
    let mut new = 0;
    wait_until(
        "the majority side to elect a new leader",
        Duration::from_secs(30),
        || {
            let seen: Vec<u64> = other_addrs
                .iter()
                .map(|a| status_at(a).map(|s| s.leader).unwrap_or(0))
                .collect();
            new = seen[0];
            seen.iter().all(|l| *l == new) && new != 0 && new != old
        },
    );
    eprintln!(
        "cut off leader {old}; node {new} leads after {:.1} s",
        cut_at.elapsed().as_secs_f64()
    );
    // The old leader, asked directly, still thinks it leads (nobody told it
    // otherwise) but applies nothing from now on.
    let old_view = status_at(&old_addr).expect("the old leader answers status");
    assert_eq!(old_view.leader, old, "the cut-off leader heard of another");
    let old_applied = old_view
        .mds
        .iter()
        .find(|n| n.id == old)
        .map(|n| n.applied)
        .unwrap();
    // The workload carries on with the new leader, for a few seconds of cut
    // (past the old leader's grace, 4 x the election timeout).
    work.progress(
        10,
        "the workload to carry on during the cut",
        Duration::from_secs(60),
    );
    wait_until("a few seconds of cut", Duration::from_secs(60), || {
        cut_at.elapsed() > Duration::from_secs(5)
    });
    work.progress(
        3,
        "more of the workload during the cut",
        Duration::from_secs(60),
    );
    assert!(
        !lone.is_finished(),
        "a mount talking only to the cut-off leader got an answer: {:?}",
        lone.join()
    );
    let old_now = status_at(&old_addr).expect("the old leader answers status");
    let n = old_now.mds.iter().find(|n| n.id == old).unwrap();
    assert_eq!(
        n.applied, old_applied,
        "the cut-off leader applied (acknowledged) entries during the cut"
    );
    for f in &others {
        let seen = old_now.mds.iter().find(|n| n.id == *f).unwrap();
        assert_eq!(seen.role, "unreachable", "node {f} from the old leader");
    }
    // It calls itself stale, not leader; and `weft status` given every node
    // shows the leader the majority follows, whichever node answers first.
    assert_eq!(n.role, "stale", "the cut-off leader's own role");
    let out = weft_testkit::weft_cmd()
        .args(["status", "--json", "--mds", &c.cluster.mds_list()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["leader"], new, "weft status during the cut: {v}");
    for node in v["mds"].as_array().unwrap() {
        let want = if node["id"] == new {
            "leader"
        } else {
            "follower"
        };
        if node["id"] != old {
            assert_eq!(node["role"], want, "weft status during the cut: {v}");
        } else {
            assert_ne!(node["role"], "leader", "weft status during the cut: {v}");
        }
    }

    // Heal: the old leader steps down, follows the new one and catches up.
    for l in links.values() {
        l.set(Mode::Pass);
    }
    wait_until(
        "the old leader to follow the new one and catch up",
        Duration::from_secs(60),
        || {
            status_at(&old_addr).is_some_and(|s| {
                let leader_applied = s.mds.iter().find(|n| n.id == new).map(|n| n.applied);
                s.leader == new
                    && s.mds.iter().any(|n| {
                        n.id == old && n.role == "follower" && Some(n.applied) >= leader_applied
                    })
            })
        },
    );
    // The lone mount's changes now go to the new leader, each applied once.
    wait_until(
        "the lone mount's changes to finish after the heal",
        Duration::from_secs(60),
        || lone.is_finished(),
    );
    let results = lone.join().unwrap();
    for r in &results {
        assert!(r.is_ok(), "the lone mount after the heal: {results:?}");
    }
    let check_lone = || {
        assert!(
            !mnt.join("lone-a").exists(),
            "lone-a renamed away, yet there"
        );
        let p = mnt.join("lone-b");
        assert_eq!(sha256_hex(&fs::read(&p).unwrap()), sha256_hex(&lone_bytes));
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert!(mnt.join("lone-dir").is_dir());
    };
    check_lone();
    work.progress(3, "the workload after the heal", Duration::from_secs(60));
    check_acked(&work.acked.lock().unwrap());

    // kill -9 the new leader: the old one (now a follower that caught up)
    // and the third node carry on with everything that was acknowledged.
    c.cluster.mds_node(new).crash();
    let last = wait_leader(&c, Some(new));
    eprintln!("killed node {new}; node {last} leads");
    work.progress(
        3,
        "the workload after the new leader's kill",
        Duration::from_secs(60),
    );
    let steps = work.finish();
    check_acked(&work.acked.lock().unwrap());
    check_lone();
    let f = c.cluster.wait_replicated(Duration::from_secs(180)).unwrap();
    assert!(f.problems.is_empty(), "fsck: {:?}", f.problems);
    eprintln!("{steps} workload steps through the cut, the heal and a kill");
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
    let back = fs::read(mnt.join("majority-down"))
        .unwrap_or_else(|e| panic!("read back: {e}\n{}", c.cluster.mounts[0].proc.log_tail()));
    assert_eq!(back, b"waited");
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

fn open_rw(p: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// fcntl(cmd) of a lock over the whole file; the lock as F_GETLK reports it,
/// or the errno.
fn fcntl_lock(f: &fs::File, cmd: i32, typ: i32) -> Result<libc::flock, i32> {
    use std::os::fd::AsRawFd;
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    if unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) } == 0 {
        Ok(fl)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

fn flock(f: &fs::File, op: i32) -> Result<(), i32> {
    use std::os::fd::AsRawFd;
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// Makes every follower's state come from its own snapshot: enough changes
/// that each writes one (with `--snapshot-entries 50`) past everything done
/// so far, then a kill -9 and restart of each follower, which loads it and
/// replays only the log after it. So the next leader knows what came before
/// only through a snapshot.
fn followers_through_snapshots(c: &mut TestCluster, mnt: &Path, leader: u64) {
    let dir = mnt.join("filler");
    fs::create_dir(&dir).unwrap();
    for i in 0..60 {
        fs::write(dir.join(format!("f{i}")), b"filler").unwrap();
    }
    for id in (1..=3u64).filter(|i| *i != leader) {
        let snaps = c.cluster.mds_node(id).data.join("raft/snapshot");
        wait_until("a follower's snapshot", Duration::from_secs(30), || {
            fs::read_dir(&snaps).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".snap"))
            })
        });
        c.cluster.mds_node(id).crash();
        c.cluster.start_mds_node(id).unwrap();
    }
    let last = |c: &TestCluster| {
        c.cluster.status().ok().and_then(|s| {
            let top = s.mds.iter().map(|n| n.last_log_index).max()?;
            Some(s.mds.len() == 3 && s.mds.iter().all(|n| n.applied + 5 >= top))
        })
    };
    wait_until(
        "the restarted followers caught up",
        Duration::from_secs(30),
        || last(c) == Some(true),
    );
}

/// A flock and an fcntl write lock taken by mount A through the group stay
/// held through a kill -9 of the leader: mount B's non-blocking attempts
/// still fail, F_GETLK names A's lock, and once A lets go B gets both.
fn locks_survive_a_leader_kill(through_snapshot: bool) {
    let mut c = group(2, |s| {
        if through_snapshot {
            s.mds_args = vec!["--snapshot-entries".into(), "50".into()];
        }
    });
    let a = c.mount();
    let b = c.mount();
    fs::write(a.join("flocked"), b"flock").unwrap();
    fs::write(a.join("fcntl"), b"fcntl").unwrap();
    let fa = open_rw(&a.join("flocked"));
    let ga = open_rw(&a.join("fcntl"));
    flock(&fa, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    fcntl_lock(&ga, libc::F_SETLK, libc::F_WRLCK).unwrap();
    let fb = open_rw(&b.join("flocked"));
    let gb = open_rw(&b.join("fcntl"));
    assert_eq!(
        flock(&fb, libc::LOCK_SH | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );
    assert_eq!(
        fcntl_lock(&gb, libc::F_SETLK, libc::F_RDLCK).unwrap_err(),
        libc::EAGAIN
    );
    let leader = wait_leader(&c, None);
    if through_snapshot {
        followers_through_snapshots(&mut c, &a, leader);
    }
    c.cluster.mds_node(leader).crash();
    let next = wait_leader(&c, Some(leader));
    eprintln!("killed leader {leader}, node {next} leads");
    assert_eq!(
        flock(&fb, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK),
        "a flock held through the failover"
    );
    assert_eq!(
        fcntl_lock(&gb, libc::F_SETLK, libc::F_WRLCK).unwrap_err(),
        libc::EAGAIN,
        "an fcntl lock held through the failover"
    );
    let held = fcntl_lock(&gb, libc::F_GETLK, libc::F_RDLCK).unwrap();
    assert_eq!(held.l_type as i32, libc::F_WRLCK, "F_GETLK names A's lock");
    // A lets go (unlock, and close), and B gets both.
    flock(&fa, libc::LOCK_UN).unwrap();
    drop(ga);
    flock(&fb, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    fcntl_lock(&gb, libc::F_SETLK, libc::F_WRLCK).unwrap();
    // And A is shut out in turn.
    let fa2 = open_rw(&a.join("flocked"));
    assert_eq!(
        flock(&fa2, libc::LOCK_EX | libc::LOCK_NB),
        Err(libc::EWOULDBLOCK)
    );
    c.cluster.start_mds_node(leader).unwrap();
}

#[test]
fn locks_are_held_through_a_leader_kill() {
    locks_survive_a_leader_kill(false);
}

#[test]
fn locks_are_held_through_a_leader_kill_from_a_snapshot() {
    locks_survive_a_leader_kill(true);
}

#[test]
fn a_dead_mounts_locks_expire_after_a_failover() {
    let mut c = group(2, |s| {
        s.mds_args = vec!["--lock-expiry-secs".into(), "5".into()];
    });
    let a = c.mount();
    let b = c.mount();
    fs::write(a.join("f"), b"x").unwrap();
    let fa = open_rw(&a.join("f"));
    fcntl_lock(&fa, libc::F_SETLK, libc::F_WRLCK).unwrap();
    let fb = open_rw(&b.join("f"));
    assert_eq!(
        fcntl_lock(&fb, libc::F_SETLK, libc::F_WRLCK).unwrap_err(),
        libc::EAGAIN
    );
    // Mount A dies (no unlock, no keepalive any more), then so does the leader.
    c.cluster.mounts[0].proc.crash();
    drop(fa);
    let leader = wait_leader(&c, None);
    c.cluster.mds_node(leader).crash();
    wait_leader(&c, Some(leader));
    let t = Instant::now();
    // The new leader holds the lock for a lock expiry from its election...
    assert_eq!(
        fcntl_lock(&fb, libc::F_SETLK, libc::F_WRLCK).unwrap_err(),
        libc::EAGAIN,
        "the dead mount's lock held through the failover"
    );
    // ...and then lets it go, though nobody unlocked it.
    loop {
        match fcntl_lock(&fb, libc::F_SETLK, libc::F_WRLCK) {
            Ok(_) => break,
            Err(e) => assert_eq!(e, libc::EAGAIN),
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the dead mount's lock never expired after the failover"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    c.cluster.start_mds_node(leader).unwrap();
}

/// A file unlinked while two mounts hold it open stays readable through a
/// failover to a leader whose state came from a snapshot, after one of the
/// two closes it.
#[test]
fn an_unlinked_open_file_stays_readable_through_a_failover() {
    let mut c = group(2, |s| {
        s.mds_args = vec!["--snapshot-entries".into(), "50".into()];
    });
    let a = c.mount();
    let b = c.mount();
    let data = weft_testkit::pattern(3 << 20, 12);
    fs::write(a.join("u"), &data).unwrap();
    let fa = fs::File::open(a.join("u")).unwrap();
    let fb = fs::File::open(b.join("u")).unwrap();
    fs::remove_file(a.join("u")).unwrap();
    let leader = wait_leader(&c, None);
    followers_through_snapshots(&mut c, &a, leader);
    c.cluster.mds_node(leader).crash();
    wait_leader(&c, Some(leader));
    // A's close is not the last one: B still has it open. Once the group
    // has it (the release is the only change now), B reads the file, which
    // B's mount never cached.
    let logged = |c: &TestCluster| {
        c.cluster
            .status()
            .ok()
            .and_then(|s| s.mds.iter().map(|n| n.last_log_index).max())
            .unwrap_or(0)
    };
    let before = logged(&c);
    drop(fa);
    wait_until("A's close in the log", Duration::from_secs(10), || {
        logged(&c) > before
    });
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
    let mut back = Vec::new();
    std::io::Read::read_to_end(&mut &fb, &mut back)
        .unwrap_or_else(|e| panic!("reading the unlinked file through B: {e}"));
    assert_eq!(sha256_hex(&back), sha256_hex(&data));
    assert!(!b.join("u").exists());
    drop(fb);
    c.cluster.start_mds_node(leader).unwrap();
}

/// `weft drain` marks a daemon in the group's log: the next leader shows it
/// draining and finishes the drain.
#[test]
fn a_drain_goes_on_after_a_failover() {
    let mut c = group(4, |s| s.replicas = Some(2));
    let mnt = c.mount();
    let data = weft_testkit::pattern(8 << 20, 5);
    fs::write(mnt.join("f"), &data).unwrap();
    c.cluster
        .wait_replicated(Duration::from_secs(60))
        .expect("replicated");
    let victim = c.cluster.chunkds[0].addr.clone();
    let out = weft_testkit::weft_cmd()
        .args(["drain", "--mds", &c.cluster.mds_list(), &victim])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weft drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leader = wait_leader(&c, None);
    c.cluster.mds_node(leader).crash();
    wait_leader(&c, Some(leader));
    wait_until(
        "the drain to finish under the new leader",
        Duration::from_secs(90),
        || {
            c.cluster.status().is_ok_and(|s| {
                s.chunkds
                    .iter()
                    .any(|d| d.addr == victim && d.alive && d.draining && d.chunks == 0)
            })
        },
    );
    let out = weft_testkit::weft_cmd()
        .args(["status", "--mds", &c.cluster.mds_list(), "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "weft status --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let d = json["chunkds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["address"] == victim.as_str())
        .unwrap()
        .clone();
    assert_eq!(d["draining"], true, "{d}");
    assert_eq!(
        sha256_hex(&fs::read(mnt.join("f")).unwrap()),
        sha256_hex(&data)
    );
    c.cluster.start_mds_node(leader).unwrap();
}
