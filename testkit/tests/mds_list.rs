//! Every client names the MDS by a list of addresses (an MDS group's nodes):
//! here the list's first node never answers, and chunk daemons, a real FUSE
//! mount and the `weft` CLI all move past it to the node that does.

use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use weft_testkit::{bin, pattern, read_all, TestCluster};

const MIB: u64 = 1 << 20;

/// A loopback address where nothing listens (a port that was just free).
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[test]
fn clients_move_past_an_mds_node_that_does_not_answer() {
    let dead = dead_addr();
    // The chunk daemons get "DEAD,MDS" too; start() waits until all registered.
    let mut tc = TestCluster::start_with(3, |s| {
        s.chunk_size = Some(4 * MIB);
        s.extra_mds_addrs = vec![dead.clone()];
    });
    let list = tc.cluster.mds_list();
    assert!(list.starts_with(&format!("{dead},")), "{list}");
    let mnt = tc.mount();

    let data = pattern(9 * MIB as usize + 123, 7);
    fs::write(mnt.join("f"), &data).unwrap();
    fs::create_dir(mnt.join("d")).unwrap();
    fs::rename(mnt.join("f"), mnt.join("d/g")).unwrap();
    fs::set_permissions(mnt.join("d/g"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(sha(&read_all(&mnt.join("d/g"))), sha(&data));
    let md = fs::metadata(mnt.join("d/g")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o600);
    assert!(!mnt.join("f").exists());

    // The CLI takes the same list.
    let out = Command::new(bin("weft"))
        .args(["status", "--json", "--mds", &list])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["files"], 1, "{v}");
    // The node table: a single MDS leads a group of one.
    assert_eq!(v["leader"], 1, "{v}");
    let node = &v["mds"][0];
    assert_eq!(node["id"], 1, "{v}");
    assert_eq!(node["addr"], tc.mds_addr(), "{v}");
    assert_eq!(node["role"], "leader", "{v}");
    assert!(node["term"].as_u64().unwrap() >= 1, "{v}");
    // mkdir, rename, chmod and the file's create and commits were applied.
    assert!(node["applied"].as_u64().unwrap() >= 4, "{v}");
    let out = Command::new(bin("weft"))
        .args(["status", "--mds", &list])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text
        .lines()
        .find(|l| l.starts_with("1 "))
        .unwrap_or_else(|| panic!("no MDS row:\n{text}"));
    assert!(
        row.contains(&tc.mds_addr()) && row.contains("leader"),
        "{text}"
    );
    let f = tc
        .cluster
        .wait_replicated(std::time::Duration::from_secs(30))
        .unwrap();
    assert_eq!(f.chunks, 3);
    let out = Command::new(bin("weft"))
        .args(["fsck", "--mds", &list])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A list where no node answers is an error naming them, not a hang.
    let out = Command::new(bin("weft"))
        .args(["status", "--mds", &format!("{dead},{}", dead_addr())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the MDS") && err.contains(&dead),
        "{err}"
    );
}
