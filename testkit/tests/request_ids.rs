//! One request id follows an operation through every process: a file written
//! and fsync'd on a real mount leaves its FUSE request's id in weftfs's log,
//! in the MDS's log (the chunk allocation and the commit) and in the log of
//! every chunk daemon down the replication pipeline. `WEFT_SLOW_RPC_MS=0`
//! makes every process log every call with its id and time.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use weft_testkit::{pattern, sha256_hex, TestCluster};

/// The request ids on the lines of `log` whose span is `span` ("fuse", "rpc",
/// "writeback"): what follows `span{req=` up to the next space or brace.
fn ids(log: &Path, span: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let key = format!("{span}{{req=");
    text.lines()
        .filter_map(|l| {
            let at = l.find(&key)? + key.len();
            let id: String = l[at..]
                .chars()
                .take_while(|c| c.is_ascii_hexdigit())
                .collect();
            (id.len() == 16).then_some(id)
        })
        .collect()
}

#[test]
fn one_request_id_is_logged_by_weftfs_the_mds_and_every_replica() {
    // Inherited by every process the cluster starts.
    std::env::set_var("WEFT_SLOW_RPC_MS", "0");
    let mut c = TestCluster::start_with(3, |s| {
        s.chunk_size = Some(1 << 20);
        s.replicas = Some(3);
    });
    let mnt = c.mount();
    c.cluster
        .wait_alive(3, std::time::Duration::from_secs(30))
        .unwrap();

    let data = pattern(300_000, 7);
    let path = mnt.join("traced");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(
        sha256_hex(&std::fs::read(&path).unwrap()),
        sha256_hex(&data)
    );

    let cl = &c.cluster;
    let weftfs_log = &cl.mounts[0].proc.log;
    let mut client: BTreeSet<String> = ids(weftfs_log, "fuse");
    client.extend(ids(weftfs_log, "writeback"));
    assert!(
        !client.is_empty(),
        "weftfs logged no request ids:\n{}",
        cl.mounts[0].proc.log_tail()
    );
    let mds = ids(&cl.mds.log, "rpc");
    let daemons: Vec<BTreeSet<String>> = cl.chunkds.iter().map(|d| ids(&d.log, "rpc")).collect();

    // Some request of weftfs (the write-back of the file, under the fsync or
    // on its own) reached the MDS and all three replicas under one id.
    let followed: Vec<&String> = client
        .iter()
        .filter(|id| mds.contains(*id) && daemons.iter().all(|d| d.contains(*id)))
        .collect();
    assert!(
        !followed.is_empty(),
        "no id of weftfs's ({}) is in the MDS's log ({} ids) and every daemon's ({:?} ids)\nweftfs:\n{}\nmds:\n{}",
        client.len(),
        mds.len(),
        daemons.iter().map(|d| d.len()).collect::<Vec<_>>(),
        cl.mounts[0].proc.log_tail(),
        cl.mds.log_tail(),
    );

    let id = followed[0];
    for p in [weftfs_log, &cl.mds.log, &cl.chunkds[2].log] {
        let t = std::fs::read_to_string(p).unwrap();
        for l in t.lines().filter(|l| l.contains(id.as_str())).take(3) {
            eprintln!("{}: {l}", p.display());
        }
    }

    // Calls that came without an id (heartbeats, registrations) get one of
    // their own at the server: every logged call has one.
    let text = std::fs::read_to_string(&cl.mds.log).unwrap();
    assert!(
        text.lines()
            .filter(|l| l.contains("rpc took"))
            .all(|l| l.contains("rpc{req=")),
        "an rpc line without an id:\n{}",
        cl.mds.log_tail()
    );
    // Plain text for files and journald: no terminal colour codes.
    for d in cl.chunkds.iter().chain([&cl.mds]) {
        let t = std::fs::read_to_string(&d.log).unwrap();
        assert!(!t.contains('\u{1b}'), "{} logs colour codes", d.name);
    }
}
