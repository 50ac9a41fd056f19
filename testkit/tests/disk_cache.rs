//! The data cache's local-disk tier (weftfs `disk_cache=DIR`,
//! `disk_cache_size=MIB`): blocks the memory cache cannot hold are read back
//! from files under DIR, a corrupt file is a miss (the bytes come from a chunk
//! daemon), another mount's write and close is never hidden by an older
//! block on disk, and DIR stays within its size.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::Duration;
use weft_testkit::{pattern, read_all, sha256_hex, wait_until, TestCluster};

const MIB: u64 = 1 << 20;

/// Bytes of the disk cache's block files in `dir`.
fn cache_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".wblk"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Drops the kernel's cached pages of `path` (as a cold read would find it).
fn drop_pages(path: &Path) {
    let f = fs::File::open(path).unwrap();
    nix::fcntl::posix_fadvise(
        &f,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    )
    .unwrap();
}

/// Resumes stopped processes when dropped, so a failing test still cleans up.
struct Stopped(Vec<u32>);

impl Drop for Stopped {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        for pid in &self.0 {
            let _ = kill(nix::unistd::Pid::from_raw(*pid as i32), Signal::SIGCONT);
        }
    }
}

fn stop(pids: Vec<u32>) -> Stopped {
    use nix::sys::signal::{kill, Signal};
    for pid in &pids {
        kill(nix::unistd::Pid::from_raw(*pid as i32), Signal::SIGSTOP).unwrap();
    }
    for pid in &pids {
        wait_until("process stopped", Duration::from_secs(10), || {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
                st.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
        });
    }
    Stopped(pids)
}

/// Reads `path` on another thread; None if it takes longer than `limit`.
fn read_within(path: &Path, limit: Duration) -> Option<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(read_all(&p));
    });
    rx.recv_timeout(limit).ok()
}

#[test]
fn the_disk_tier_serves_right_bytes_misses_corrupt_files_and_stays_bounded() {
    const DISK_MIB: u64 = 16;
    let mut tc = TestCluster::start(2, MIB);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let a = tc.mount();
    let b = tc.mount_with(&[
        "data_cache=1",
        &format!("disk_cache={}", cache.display()),
        &format!("disk_cache_size={DISK_MIB}"),
    ]);
    let mut v = pattern(6 * MIB as usize + 777, 1);
    fs::write(a.join("f"), &v).unwrap();
    assert_eq!(sha256_hex(&read_all(&b.join("f"))), sha256_hex(&v));
    // The file is 6x the memory tier; its blocks are on disk once written.
    wait_until("blocks on disk", Duration::from_secs(20), || {
        cache_bytes(&cache) >= 6 * MIB
    });

    // With every chunk daemon paused, only the disk tier can serve the bytes.
    drop_pages(&b.join("f"));
    {
        let pids = tc.cluster.chunkds.iter().filter_map(|c| c.pid()).collect();
        let _stopped = stop(pids);
        let got = read_within(&b.join("f"), Duration::from_secs(20))
            .expect("the read waited for a paused chunk daemon: not served from disk");
        assert_eq!(sha256_hex(&got), sha256_hex(&v), "bytes from the disk tier");
    }

    // A corrupt block file is a miss: the right bytes come from a daemon.
    let mut corrupted = 0;
    for e in fs::read_dir(&cache).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "wblk") {
            let mut d = fs::read(&p).unwrap();
            let at = d.len() / 2;
            d[at] ^= 0x5a;
            fs::write(&p, d).unwrap();
            corrupted += 1;
        }
    }
    assert!(corrupted >= 96, "{corrupted} block files");
    drop_pages(&b.join("f"));
    assert_eq!(
        sha256_hex(&read_all(&b.join("f"))),
        sha256_hex(&v),
        "after corrupting the cache"
    );

    // Another mount's write and close: B's next open reads the new bytes,
    // not a block of the old content from disk.
    for round in 0..5u64 {
        assert_eq!(
            sha256_hex(&read_all(&b.join("f"))),
            sha256_hex(&v),
            "round {round}"
        );
        let at = (round as usize * 1_300_021) % (v.len() - 100);
        v[at..at + 100].copy_from_slice(&pattern(100, 50 + round));
        {
            let f = OpenOptions::new().write(true).open(a.join("f")).unwrap();
            f.write_all_at(&v[at..at + 100], at as u64).unwrap();
        }
        drop_pages(&b.join("f"));
        assert_eq!(
            sha256_hex(&read_all(&b.join("f"))),
            sha256_hex(&v),
            "round {round}: stale"
        );
    }

    // A file bigger than the disk tier: it stays within its size.
    let big = pattern(40 * MIB as usize, 2);
    {
        let mut f = fs::File::create(a.join("big")).unwrap();
        f.write_all(&big).unwrap();
    }
    let mut peak = 0;
    let f = fs::File::open(b.join("big")).unwrap();
    let mut got = vec![0u8; big.len()];
    for (i, piece) in got.chunks_mut(MIB as usize).enumerate() {
        f.read_exact_at(piece, i as u64 * MIB).unwrap();
        peak = peak.max(cache_bytes(&cache));
    }
    assert_eq!(sha256_hex(&got), sha256_hex(&big));
    // A duration: fills of the disk tier land in the background, with no
    // sign when the last has; the bound must hold after them too.
    std::thread::sleep(Duration::from_millis(500));
    peak = peak.max(cache_bytes(&cache));
    assert!(
        peak <= DISK_MIB * MIB,
        "the disk cache held {peak} bytes with disk_cache_size={DISK_MIB}"
    );
    assert!(
        peak >= DISK_MIB * MIB / 2,
        "the disk cache was barely used: {peak}"
    );
}
