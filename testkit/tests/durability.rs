//! What was acknowledged survives: kill -9 of the MDS, restart on the same
//! directory, and every file closed before the kill is intact; `weft up`
//! run twice on one directory finds its files.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;
use weft_testkit::{bin, is_mounted, pattern, read_all, sha256_hex, wait_until, TestCluster};

const MIB: u64 = 1 << 20;

#[test]
fn mds_kill9_and_restart_loses_nothing_closed() {
    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();
    fs::create_dir_all(m.join("dir/sub")).unwrap();
    let mut want = Vec::new();
    for i in 0..30 {
        let p = m.join(format!("dir/sub/f{i}"));
        let data = pattern(i * 100_000 + 1, i as u64);
        fs::write(&p, &data).unwrap();
        want.push((p, sha256_hex(&data)));
    }
    fs::rename(m.join("dir/sub/f0"), m.join("dir/renamed")).unwrap();
    want[0].0 = m.join("dir/renamed");
    std::os::unix::fs::symlink("renamed", m.join("dir/link")).unwrap();

    let addr = tc.mds_addr();
    tc.cluster.mds.crash();
    tc.cluster
        .start_mds(Some(&addr))
        .expect("restart the MDS on the same port and directory");
    tc.cluster.wait_alive(3, Duration::from_secs(20)).unwrap();

    // The same mount keeps working across the restart.
    for (p, h) in &want {
        assert_eq!(&sha256_hex(&read_all(p)), h, "{}", p.display());
    }
    assert_eq!(
        fs::read_link(m.join("dir/link")).unwrap().to_str(),
        Some("renamed")
    );
    // And a fresh mount sees the same.
    let m2 = tc.mount();
    for (p, h) in &want {
        let p2 = m2.join(p.strip_prefix(&m).unwrap());
        assert_eq!(&sha256_hex(&read_all(&p2)), h, "{}", p2.display());
    }
    tc.cluster
        .wait_replicated(Duration::from_secs(20))
        .expect("all chunks replicated after restart");
}

#[test]
fn weft_up_twice_on_one_dir_keeps_files() {
    weft_testkit::require_fuse();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let data = pattern(3 * MIB as usize, 5);
    for round in 0..2 {
        let mut up = Command::new(bin("weft"))
            .args(["up", "--dir"])
            .arg(&dir)
            .args(["--chunk-size", "1048576"])
            .arg(&mnt)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let canon = fs::canonicalize(&mnt).unwrap();
        wait_until("weft up to mount", Duration::from_secs(60), || {
            is_mounted(&canon) || matches!(up.try_wait(), Ok(Some(_)))
        });
        assert!(is_mounted(&canon), "weft up did not mount");
        if round == 0 {
            fs::write(mnt.join("kept"), &data).unwrap();
        } else {
            assert_eq!(sha256_hex(&read_all(&mnt.join("kept"))), sha256_hex(&data));
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(up.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let status = up.wait().unwrap();
        assert!(status.success(), "weft up exited with {status}");
        assert!(!is_mounted(&canon), "weft up left the mount behind");
    }
}
