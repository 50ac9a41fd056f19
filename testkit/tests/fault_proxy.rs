//! The fault proxy (`weft_testkit::proxy`) on a real link: a FUSE mount
//! talks to the MDS through it. A delayed link slows metadata calls; a cut
//! or black-holed link makes them wait, and they finish without an error
//! (retried with the same session and seq: applied once) when it heals.

use sha2::{Digest, Sha256};
use std::fs;
use std::time::{Duration, Instant};
use weft_testkit::proxy::{FaultProxy, Mode};
use weft_testkit::{pattern, read_all, require_fuse, wait_until, TestCluster};

const MIB: u64 = 1 << 20;

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Runs `f` on a thread; the handle says whether it finished.
fn in_background<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(f)
}

/// Asserts `h` is still running after `d` (the link holds it up).
fn still_waiting<T>(h: &std::thread::JoinHandle<T>, d: Duration, what: &str) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        assert!(!h.is_finished(), "{what} finished through a broken link");
        // A duration: the link stays broken for `d`, checked all along.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_mount_waits_out_a_cut_or_black_holed_mds_link() {
    require_fuse();
    let mut tc = TestCluster::start(3, 4 * MIB);
    let proxy = FaultProxy::start(&tc.mds_addr());
    let path = tc.tmp.path().join("mnt1");
    tc.cluster
        .mount_source(&path, &proxy.addr(), &[])
        .expect("mount through the proxy");
    let mnt = tc.cluster.mounts[0].path.clone();

    // Pass: bytes in, same bytes out.
    let data = pattern(5 * MIB as usize + 3, 11);
    fs::write(mnt.join("a"), &data).unwrap();
    assert_eq!(sha(&read_all(&mnt.join("a"))), sha(&data));

    // Delay: a mkdir's request and reply each wait 300 ms.
    proxy.set(Mode::Delay(Duration::from_millis(300)));
    let t = Instant::now();
    fs::create_dir(mnt.join("slow")).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(550),
        "{:?}",
        t.elapsed()
    );
    proxy.set(Mode::Pass);

    // Cut: a mkdir waits, then succeeds once the link is back.
    proxy.set(Mode::Cut);
    let m = mnt.clone();
    let h = in_background(move || fs::create_dir(m.join("during-cut")));
    still_waiting(&h, Duration::from_millis(1500), "mkdir");
    assert_eq!(proxy.open_connections(), 0, "a connection survived the cut");
    proxy.set(Mode::Pass);
    h.join().unwrap().expect("mkdir after the cut healed");
    assert!(mnt.join("during-cut").is_dir());

    // Drop (a black hole), then a cut ends the dead connection, then the
    // link heals: an O_EXCL create waits and succeeds once (a second
    // application would have answered EEXIST).
    proxy.set(Mode::Drop);
    let m = mnt.clone();
    let h = in_background(move || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(m.join("excl"))
            .map(drop)
    });
    still_waiting(&h, Duration::from_millis(1500), "O_EXCL create");
    proxy.set(Mode::Cut);
    wait_until(
        "the cut closes every connection",
        Duration::from_secs(5),
        || proxy.open_connections() == 0,
    );
    proxy.set(Mode::Pass);
    h.join()
        .unwrap()
        .expect("O_EXCL create after the link healed");
    let mut names: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "during-cut", "excl", "slow"]);
    assert_eq!(sha(&read_all(&mnt.join("a"))), sha(&data));
    tc.cluster.unmount(0).unwrap();
}
