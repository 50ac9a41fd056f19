//! Advisory locks held by the MDS: two mounts of one cluster exclude each
//! other with fcntl byte-range locks, OFD locks and flock; F_GETLK reports
//! the holder; F_SETLKW waits for the holder's close; a dead mount's locks
//! expire.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use weft_testkit::{wait_until, TestCluster};

const MIB: u64 = 1 << 20;

fn flock_struct(typ: i32, start: i64, len: i64) -> libc::flock {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = typ as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

/// fcntl(cmd) with a lock; Ok or the errno.
fn lock(f: &File, cmd: i32, typ: i32, start: i64, len: i64) -> Result<libc::flock, i32> {
    let mut fl = flock_struct(typ, start, len);
    let r = unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) };
    if r == 0 {
        Ok(fl)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

fn open(p: &Path) -> File {
    OpenOptions::new().read(true).write(true).open(p).unwrap()
}

fn flock(f: &File, op: i32) -> Result<(), i32> {
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

#[test]
fn two_mounts_exclude_each_other() {
    let mut tc = TestCluster::start(1, MIB);
    let m1 = tc.mount();
    let m2 = tc.mount();
    std::fs::write(m1.join("f"), b"data").unwrap();
    std::fs::write(m1.join("g"), b"data").unwrap();

    // fcntl byte-range locks.
    let a = open(&m1.join("f"));
    lock(&a, libc::F_SETLK, libc::F_WRLCK, 0, 100).unwrap();
    let b = open(&m2.join("f"));
    assert_eq!(
        lock(&b, libc::F_SETLK, libc::F_WRLCK, 50, 10).unwrap_err(),
        libc::EAGAIN
    );
    assert_eq!(
        lock(&b, libc::F_SETLK, libc::F_RDLCK, 99, 1).unwrap_err(),
        libc::EAGAIN
    );
    let held = lock(&b, libc::F_GETLK, libc::F_WRLCK, 0, 0).unwrap();
    assert_eq!(held.l_type, libc::F_WRLCK as i16);
    assert_eq!((held.l_start, held.l_len), (0, 100));
    assert_eq!(held.l_pid, std::process::id() as i32);
    // Past the held range there is no conflict.
    lock(&b, libc::F_SETLK, libc::F_RDLCK, 100, 50).unwrap();
    let free = lock(&a, libc::F_GETLK, libc::F_WRLCK, 200, 10).unwrap();
    assert_eq!(free.l_type, libc::F_UNLCK as i16);

    // F_SETLKW waits until the holder closes its descriptor.
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let r = lock(&b, libc::F_SETLKW, libc::F_WRLCK, 0, 100);
        tx.send(()).unwrap();
        (r, t.elapsed(), b)
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(700)).is_err(),
        "F_SETLKW did not wait"
    );
    drop(a);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("F_SETLKW still waiting after the holder closed");
    let (r, waited, b) = waiter.join().unwrap();
    r.unwrap();
    assert!(waited >= Duration::from_millis(600));
    // Now mount 1 is the one refused.
    let a = open(&m1.join("f"));
    assert_eq!(
        lock(&a, libc::F_SETLK, libc::F_RDLCK, 0, 1).unwrap_err(),
        libc::EAGAIN
    );
    drop(b);
    lock(&a, libc::F_SETLK, libc::F_RDLCK, 0, 1).unwrap();
    drop(a);

    // OFD locks belong to the open file: a second open file conflicts even in
    // the same process, and the lock goes with the file's last close.
    let o1 = open(&m1.join("f"));
    let o2 = open(&m2.join("f"));
    lock(&o1, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    assert_eq!(
        lock(&o2, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0).unwrap_err(),
        libc::EAGAIN
    );
    drop(o1);
    // FUSE sends the release of a closed file asynchronously: the lock goes
    // a moment after close(2) returns.
    wait_until(
        "OFD lock released by the last close",
        Duration::from_secs(5),
        || lock(&o2, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0).is_ok(),
    );
    drop(o2);

    // flock, whole file, on another file.
    let f1 = open(&m1.join("g"));
    let f2 = open(&m2.join("g"));
    flock(&f1, libc::LOCK_SH).unwrap();
    flock(&f2, libc::LOCK_SH).unwrap();
    assert_eq!(
        flock(&f2, libc::LOCK_EX | libc::LOCK_NB).unwrap_err(),
        libc::EWOULDBLOCK
    );
    flock(&f1, libc::LOCK_UN).unwrap();
    flock(&f2, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    assert_eq!(
        flock(&f1, libc::LOCK_SH | libc::LOCK_NB).unwrap_err(),
        libc::EWOULDBLOCK
    );
    drop(f2);
    wait_until(
        "flock released by the last close",
        Duration::from_secs(5),
        || flock(&f1, libc::LOCK_EX | libc::LOCK_NB).is_ok(),
    );
}

#[test]
fn a_dead_mounts_locks_expire() {
    let mut tc = TestCluster::start_with(1, |s| {
        s.chunk_size = Some(MIB);
        s.mds_args
            .extend(["--lock-expiry-secs".to_string(), "2".to_string()]);
    });
    let m1 = tc.mount();
    let m2 = tc.mount();
    std::fs::write(m1.join("f"), b"x").unwrap();
    let a = open(&m1.join("f"));
    lock(&a, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap();
    let b = open(&m2.join("f"));
    assert_eq!(
        lock(&b, libc::F_SETLK, libc::F_WRLCK, 0, 0).unwrap_err(),
        libc::EAGAIN
    );
    // Kill mount 1's daemon outright: no unlock, no keepalive any more.
    tc.cluster.mounts[0].proc.crash();
    drop(a); // the connection is gone: this close reaches nobody
    wait_until(
        "the dead mount's lock to expire",
        Duration::from_secs(15),
        || match lock(&b, libc::F_SETLK, libc::F_WRLCK, 0, 0) {
            Ok(_) => true,
            Err(e) => {
                assert_eq!(e, libc::EAGAIN);
                false
            }
        },
    );
}

/// generic/478: an OFD lock or a flock is gone for the very next lock request
/// on the same mount once the last close of its file returned (the kernel
/// sends that release in the background, right before the next request).
#[test]
fn last_close_releases_ofd_locks_and_flocks_before_the_next_request() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    std::fs::write(m.join("f"), b"data").unwrap();
    let other = open(&m.join("f"));
    for round in 0..100 {
        let holder = open(&m.join("f"));
        lock(&holder, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 10).unwrap();
        let held = lock(&other, libc::F_OFD_GETLK, libc::F_WRLCK, 0, 10).unwrap();
        assert_eq!(held.l_type, libc::F_WRLCK as i16, "round {round}");
        drop(holder);
        let after = lock(&other, libc::F_OFD_GETLK, libc::F_WRLCK, 0, 10).unwrap();
        assert_eq!(
            after.l_type,
            libc::F_UNLCK as i16,
            "round {round}: OFD lock still seen after its file's last close"
        );

        let holder = open(&m.join("f"));
        flock(&holder, libc::LOCK_EX).unwrap();
        drop(holder);
        let next = open(&m.join("f"));
        flock(&next, libc::LOCK_EX | libc::LOCK_NB)
            .unwrap_or_else(|e| panic!("round {round}: flock still held after close: errno {e}"));
    }
}
