//! Membership changes of the MDS group under a live workload on a mount:
//! replacing a node (a new empty one joins, the old one is removed, stopped
//! and its data deleted) and shrinking five nodes to three, each followed by
//! a kill -9 of the leader. Every acknowledged operation must be there, none
//! applied twice, fsck clean, and `weft status` must list exactly the nodes
//! left.

use std::collections::BTreeSet;
use std::time::Duration;
use weft_testkit::group::{wait_leader, Workload};
use weft_testkit::{weft_cmd, TestCluster};

/// Generous: the machine running the tests may be loaded.
const PROGRESS: Duration = Duration::from_secs(120);

fn group(nodes: usize) -> TestCluster {
    TestCluster::start_with(3, |s| {
        s.mds_nodes = nodes;
        s.chunk_size = Some(1 << 20);
    })
}

/// `weft ARGS --mds LIST`; panics with its stderr unless it succeeds.
fn weft(c: &TestCluster, args: &[&str]) -> String {
    let out = weft_cmd()
        .args(args)
        .args(["--mds", &c.cluster.mds_list()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "weft {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The voters as the leader reports them (`weft status --json`): (id, role).
fn members(c: &TestCluster) -> Option<Vec<(u64, String)>> {
    let out = weft_cmd()
        .args(["status", "--json", "--mds", &c.cluster.mds_list()])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v["mds"]
            .as_array()?
            .iter()
            .map(|n| {
                (
                    n["id"].as_u64().unwrap(),
                    n["role"].as_str().unwrap().into(),
                )
            })
            .collect(),
    )
}

/// Waits until `weft status --json` lists exactly `ids`: one leader, the
/// others following it.
fn wait_members(c: &TestCluster, ids: &BTreeSet<u64>) {
    let mut last = None;
    let t = std::time::Instant::now();
    loop {
        let m = members(c);
        if let Some(m) = &m {
            let listed: BTreeSet<u64> = m.iter().map(|(id, _)| *id).collect();
            let leaders = m.iter().filter(|(_, r)| r == "leader").count();
            let followers = m.iter().filter(|(_, r)| r == "follower").count();
            if &listed == ids && leaders == 1 && followers == ids.len() - 1 {
                return;
            }
        }
        last = m.or(last);
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "weft status never listed exactly {ids:?} (one leader, the rest following); last: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `weft mds remove ID`, then the node is stopped and its data deleted.
fn remove_and_retire(c: &mut TestCluster, id: u64) {
    let out = weft(c, &["mds", "remove", &id.to_string()]);
    eprintln!("removed node {id}: {}", out.trim());
    c.cluster.retire_mds_node(id).unwrap();
}

/// kill -9 of the leader; a new one is elected among the rest, the killed
/// node restarts and follows. Returns (killed, new leader).
fn kill_the_leader(c: &mut TestCluster, w: &mut Workload) -> (u64, u64) {
    let leader = wait_leader(c, None);
    c.cluster.mds_node(leader).crash();
    let next = wait_leader(c, Some(leader));
    w.progress(5, "the workload after the leader's kill", PROGRESS);
    c.cluster.start_mds_node(leader).unwrap();
    (leader, next)
}

/// The end of each test: the workload made progress without an error,
/// every acknowledged operation is there once, fsck is clean and the group
/// is exactly `ids`.
fn finish(c: &TestCluster, mut w: Workload, ids: &[u64]) {
    w.progress(5, "the workload at the end", PROGRESS);
    let steps = w.finish();
    w.check();
    let f = c.cluster.wait_replicated(Duration::from_secs(180)).unwrap();
    assert!(f.problems.is_empty(), "fsck: {:?}", f.problems);
    weft(c, &["fsck"]);
    wait_members(c, &ids.iter().copied().collect());
    eprintln!("{steps} workload steps");
}

/// Three nodes under load; node 4 (empty, `--join`) is added, then the
/// leader (or a follower) is removed, stopped and its data deleted; then
/// the leader of the new three is killed.
fn replace_a_node(remove_the_leader: bool) {
    let mut c = group(3);
    let mnt = c.mount();
    let mut w = Workload::start(&mnt.join("work"));
    w.progress(5, "the workload to start", PROGRESS);

    let (new, addr) = c.cluster.add_mds_node().unwrap();
    weft(&c, &["mds", "add", &new.to_string(), &addr]);
    w.progress(5, "the workload after the add", PROGRESS);
    wait_members(&c, &[1, 2, 3, new].into());

    let leader = wait_leader(&c, None);
    let victim = if remove_the_leader {
        leader
    } else {
        (1..=3).find(|i| *i != leader).unwrap()
    };
    remove_and_retire(&mut c, victim);
    let left: Vec<u64> = [1, 2, 3, new]
        .into_iter()
        .filter(|i| *i != victim)
        .collect();
    w.progress(5, "the workload after the remove", PROGRESS);
    wait_members(&c, &left.iter().copied().collect());

    let (killed, next) = kill_the_leader(&mut c, &mut w);
    eprintln!("replaced node {victim} (the leader: {remove_the_leader}) by {new}; killed leader {killed}, {next} leads");
    finish(&c, w, &left);
}

#[test]
fn replacing_the_leader_under_load_loses_nothing() {
    replace_a_node(true);
}

#[test]
fn replacing_a_follower_under_load_loses_nothing() {
    replace_a_node(false);
}

#[test]
fn shrinking_five_nodes_to_three_under_load_loses_nothing() {
    let mut c = group(5);
    let mnt = c.mount();
    let mut w = Workload::start(&mnt.join("work"));
    w.progress(5, "the workload to start", PROGRESS);

    // A follower first, then the leader itself.
    let leader = wait_leader(&c, None);
    let follower = (1..=5).find(|i| *i != leader).unwrap();
    remove_and_retire(&mut c, follower);
    w.progress(5, "the workload after a follower's removal", PROGRESS);
    let leader = wait_leader(&c, None);
    remove_and_retire(&mut c, leader);
    w.progress(5, "the workload after the leader's removal", PROGRESS);
    let left: Vec<u64> = (1..=5).filter(|i| *i != follower && *i != leader).collect();
    wait_members(&c, &left.iter().copied().collect());

    let (killed, next) = kill_the_leader(&mut c, &mut w);
    eprintln!("removed {follower} and leader {leader}; killed leader {killed}, {next} leads");
    finish(&c, w, &left);
}
