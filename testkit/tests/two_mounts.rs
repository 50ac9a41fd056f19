//! Two mounts of one cluster (two weftfs processes, as two workstations would
//! have): close-to-open is exact, namespace changes on one mount reach the
//! other within the documented bound, and no cache (kernel page cache, weftfs
//! location cache) serves an old version after the other mount's write+close.
//!
//! The bound is 1 s: while a mount's push stream from the MDS is live, the
//! kernel keeps names and attributes long and pushes invalidate them; when it
//! is not, the kernel's entry/attribute TTL (`entry_timeout`, `attr_timeout`,
//! default 1 s). The tests poll every 10 ms and allow 1 s plus 250 ms for the
//! poll and the FUSE round trips.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use weft_testkit::{pattern, poll_every, read_all, sha256_hex, TestCluster};

const MIB: u64 = 1 << 20;
const BOUND: Duration = Duration::from_millis(1250);

/// Polls `cond` every 10 ms; returns how long it took, panics past BOUND.
fn visible_within(what: &str, cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    assert!(
        poll_every(Duration::from_millis(10), BOUND, cond),
        "{what}: not visible on the other mount after {:?}",
        t.elapsed()
    );
    t.elapsed()
}

fn write_file(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.write_all(data).unwrap();
    // close() is the point close-to-open promises from.
}

#[test]
fn close_to_open_is_exact_over_many_rounds() {
    // 1 MiB chunks so a file spans several chunks and versions change often.
    let mut tc = TestCluster::start(3, MIB);
    let a = tc.mount();
    let b = tc.mount();
    let (pa, pb) = (a.join("ping"), b.join("ping"));
    for round in 0..40u64 {
        // Sizes grow, shrink and repeat so neither a cached size nor a cached
        // length-equal page can hide an old version.
        let len = match round % 4 {
            0 => 3 * MIB as usize + 123,
            1 => 4096,
            2 => 3 * MIB as usize + 123,
            _ => 1 + (round as usize * 7919) % 200_000,
        };
        let data = pattern(len, round);
        let (w, r) = if round % 2 == 0 {
            (&pa, &pb)
        } else {
            (&pb, &pa)
        };
        write_file(w, &data);
        let got = read_all(r);
        assert_eq!(got.len(), data.len(), "round {round}: size");
        assert_eq!(sha256_hex(&got), sha256_hex(&data), "round {round}: bytes");
    }
}

#[test]
fn an_open_reader_sees_the_new_version_on_its_next_open() {
    let mut tc = TestCluster::start(3, MIB);
    let a = tc.mount();
    let b = tc.mount();
    let v1 = pattern(2 * MIB as usize, 1);
    write_file(&a.join("f"), &v1);
    // B reads v1 twice (page cache, location cache warm).
    assert_eq!(sha256_hex(&read_all(&b.join("f"))), sha256_hex(&v1));
    assert_eq!(sha256_hex(&read_all(&b.join("f"))), sha256_hex(&v1));
    let mut v = v1.clone();
    for round in 2..12u64 {
        // Same size, new bytes in the middle of the second chunk: only the
        // data differs, so only a real revalidation catches it.
        let at = MIB as usize + 4096 * round as usize;
        v[at..at + 4096].copy_from_slice(&pattern(4096, round));
        {
            let mut f = OpenOptions::new().write(true).open(a.join("f")).unwrap();
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(at as u64)).unwrap();
            f.write_all(&v[at..at + 4096]).unwrap();
        }
        let mut got = Vec::new();
        fs::File::open(b.join("f"))
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&v),
            "round {round}: B served a stale version"
        );
    }
}

#[test]
fn namespace_changes_on_one_mount_reach_the_other_within_the_bound() {
    namespace_changes_reach_the_other_mount(&[]);
}

/// With kernel TTLs of 60 s only the MDS's pushes (Coherence.Watch →
/// notify_inval_entry/inode) can make the changes visible within the bound.
#[test]
fn with_long_kernel_ttls_the_mds_pushes_keep_mounts_coherent() {
    namespace_changes_reach_the_other_mount(&["attr_timeout=60", "entry_timeout=60"]);
}

fn namespace_changes_reach_the_other_mount(opts: &[&str]) {
    let mut tc = TestCluster::start(3, MIB);
    let a = tc.mount_with(opts);
    let b = tc.mount_with(opts);
    fs::create_dir(a.join("d")).unwrap();
    visible_within("mkdir", || b.join("d").is_dir());

    // A new file: B looked the name up first (a negative answer it could cache).
    assert_eq!(
        fs::metadata(b.join("d/new")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    write_file(&a.join("d/new"), b"hello");
    visible_within("new file", || {
        fs::read(b.join("d/new")).is_ok_and(|d| d == b"hello")
    });

    // chmod: B has the attributes cached.
    assert_eq!(
        fs::metadata(b.join("d/new")).unwrap().permissions().mode() & 0o777,
        0o644
    );
    fs::set_permissions(a.join("d/new"), fs::Permissions::from_mode(0o600)).unwrap();
    visible_within("chmod", || {
        fs::metadata(b.join("d/new")).unwrap().permissions().mode() & 0o777 == 0o600
    });

    // rename: the old name goes, the new one comes, with the same bytes.
    fs::rename(a.join("d/new"), a.join("d/renamed")).unwrap();
    visible_within("rename (old name gone)", || !b.join("d/new").exists());
    visible_within("rename (new name)", || {
        fs::read(b.join("d/renamed")).is_ok_and(|d| d == b"hello")
    });

    // unlink, then a directory listing without it.
    fs::remove_file(a.join("d/renamed")).unwrap();
    visible_within("unlink", || {
        !b.join("d/renamed").exists() && fs::read_dir(b.join("d")).unwrap().count() == 0
    });

    // rmdir.
    fs::remove_dir(a.join("d")).unwrap();
    visible_within("rmdir", || !b.join("d").exists());
}

#[test]
fn appends_from_two_mounts_in_turn_keep_every_byte() {
    let mut tc = TestCluster::start(3, MIB);
    let a = tc.mount();
    let b = tc.mount();
    let mut model = Vec::new();
    for round in 0..20u64 {
        let piece = pattern(1000 + round as usize * 37, 100 + round);
        let dir = if round % 2 == 0 { &a } else { &b };
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(dir.join("log"))
            .unwrap();
        f.write_all(&piece).unwrap();
        drop(f);
        model.extend_from_slice(&piece);
    }
    assert_eq!(sha256_hex(&read_all(&a.join("log"))), sha256_hex(&model));
    assert_eq!(sha256_hex(&read_all(&b.join("log"))), sha256_hex(&model));
}

/// The data cache (cache/data.rs) keeps blocks keyed by chunk version, and
/// writes under one write lease keep the version: B's cached blocks of an
/// older content must still never be served once A's close has returned.
/// B reads with small preads (the cache's blocks are 64 KiB) so every
/// round's reads land in blocks B cached in the previous rounds.
#[test]
fn the_data_cache_never_serves_a_stale_version_after_another_mounts_close() {
    let mut tc = TestCluster::start(3, MIB);
    let a = tc.mount();
    let b = tc.mount_with(&["data_cache=16"]);
    let len = 2 * MIB as usize + 5000;
    let mut v = pattern(len, 100);
    write_file(&a.join("f"), &v);
    for round in 0..30u64 {
        // B reads the whole file in 4 KiB pieces, warming its cache.
        {
            let f = fs::File::open(b.join("f")).unwrap();
            let mut got = vec![0u8; len];
            for at in (0..len).step_by(4096) {
                let n = 4096.min(len - at);
                f.read_exact_at(&mut got[at..at + n], at as u64).unwrap();
            }
            assert_eq!(
                sha256_hex(&got),
                sha256_hex(&v),
                "round {round}: B read a stale version"
            );
        }
        // A changes a few bytes in place (same size, same chunks, and
        // usually the same lease and version), in a block B has cached.
        let at = (round as usize * 300_007) % (len - 100);
        v[at..at + 100].copy_from_slice(&pattern(100, round + 1000));
        {
            let f = OpenOptions::new().write(true).open(a.join("f")).unwrap();
            f.write_all_at(&v[at..at + 100], at as u64).unwrap();
        }
        let got = read_all(&b.join("f"));
        assert_eq!(
            sha256_hex(&got),
            sha256_hex(&v),
            "round {round}: B served stale cached data"
        );
    }
}

/// weftfs memory stays within its data cache option plus a fixed bound
/// while it reads several times more data than the cache holds.
#[test]
fn weftfs_memory_stays_bounded_by_the_data_cache_option() {
    const CACHE_MIB: u64 = 16;
    // What weftfs holds besides the data cache: runtime, FUSE buffers (16 MiB
    // request buffer), gRPC buffers of up to 8 parallel 1 MiB reads.
    const OTHER_MIB: u64 = 96;
    let mut tc = TestCluster::start(3, 8 * MIB);
    let a = tc.mount();
    let b = tc.mount_with(&["data_cache=16"]);
    let pid = tc.cluster.mounts.last().unwrap().proc.pid().unwrap();
    let data = pattern(96 * MIB as usize, 7);
    write_file(&a.join("big"), &data);
    let want = sha256_hex(&data);
    drop(data);
    let rss_mib = || {
        let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kb: u64 = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb / 1024
    };
    let mut peak = 0;
    for round in 0..3 {
        // 96 MiB sequentially, then scattered 4 KiB reads over all of it.
        assert_eq!(sha256_hex(&read_all(&b.join("big"))), want, "round {round}");
        peak = peak.max(rss_mib());
        let f = fs::File::open(b.join("big")).unwrap();
        let mut buf = vec![0u8; 4096];
        for i in 0..4000u64 {
            let at = (i * 7_919 * 4096) % (96 * MIB - 4096);
            f.read_exact_at(&mut buf, at).unwrap();
        }
        peak = peak.max(rss_mib());
    }
    assert!(
        peak <= CACHE_MIB + OTHER_MIB,
        "weftfs RSS peaked at {peak} MiB with data_cache={CACHE_MIB}"
    );
    eprintln!("weftfs peak RSS {peak} MiB with data_cache={CACHE_MIB} after reading 3 x 96 MiB");
}

/// While its push stream is live a mount lets the kernel keep names and
/// attributes for `cache_timeout` (60 s). When the stream breaks (here: the
/// MDS is killed and restarted) pushes are missed, so the mount must take back
/// everything it handed out and use the short TTLs until the stream is back:
/// changes made meanwhile still show within the bound.
#[test]
fn changes_made_while_the_push_stream_is_down_show_within_the_bound() {
    let mut tc = TestCluster::start(2, MIB);
    let a = tc.mount();
    let b = tc.mount();
    fs::create_dir(a.join("d")).unwrap();
    write_file(&a.join("d/f"), b"one");
    visible_within("new file", || {
        fs::read(b.join("d/f")).is_ok_and(|d| d == b"one")
    });
    // Let B's stream settle, then have B cache the name and attributes. A
    // duration: nothing outside weftfs shows when its push stream is up.
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        assert_eq!(
            fs::metadata(b.join("d/f")).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    let addr = tc.mds_addr();
    tc.cluster.mds.crash();
    tc.cluster
        .start_mds(Some(&addr))
        .expect("restart the MDS on the same address");

    // A's changes land right after the restart, while B's stream reconnects.
    fs::set_permissions(a.join("d/f"), fs::Permissions::from_mode(0o600)).unwrap();
    visible_within("chmod while the stream was down", || {
        fs::metadata(b.join("d/f")).unwrap().permissions().mode() & 0o777 == 0o600
    });
    fs::rename(a.join("d/f"), a.join("d/g")).unwrap();
    visible_within("rename (old name gone)", || !b.join("d/f").exists());
    visible_within("rename (new name)", || {
        fs::read(b.join("d/g")).is_ok_and(|d| d == b"one")
    });

    // With the stream back, pushes carry changes again. A duration: B's
    // reconnect is not visible from outside, so give it its retry period.
    std::thread::sleep(Duration::from_secs(3));
    assert!(b.join("d/g").exists());
    fs::remove_file(a.join("d/g")).unwrap();
    visible_within("unlink after the stream is back", || {
        !b.join("d/g").exists()
    });
}

/// Strict mode: the MDS answers A's change only after B (mounted `strict`)
/// dropped its copies and its kernel's, so B sees each change as soon as A's
/// call returns — checked at once, with no poll and no sleep, after B cached
/// the old state (the name absent, the old mode, the old name).
#[test]
fn a_strict_mount_sees_each_change_before_the_call_returns() {
    let mut tc = TestCluster::start(2, MIB);
    let a = tc.mount();
    let b = tc.mount_with(&["strict"]);
    fs::create_dir(a.join("d")).unwrap();
    visible_within("mkdir", || b.join("d").is_dir());
    for round in 0..30 {
        let (name, other) = (format!("d/n{round}"), format!("d/m{round}"));
        // create: B cached the absence.
        assert!(!b.join(&name).exists(), "round {round}");
        write_file(&a.join(&name), b"x");
        assert!(
            b.join(&name).exists(),
            "round {round}: create not visible on B"
        );

        // chmod: B cached the mode.
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&b.join(&name)), 0o644, "round {round}");
        fs::set_permissions(a.join(&name), fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            mode(&b.join(&name)),
            0o600,
            "round {round}: chmod not visible on B"
        );

        // rename: B cached the old name and the absence of the new one.
        assert!(!b.join(&other).exists(), "round {round}");
        fs::rename(a.join(&name), a.join(&other)).unwrap();
        assert!(
            !b.join(&name).exists(),
            "round {round}: old name still on B"
        );
        assert_eq!(
            mode(&b.join(&other)),
            0o600,
            "round {round}: new name not on B"
        );

        // unlink.
        fs::remove_file(a.join(&other)).unwrap();
        assert!(
            !b.join(&other).exists(),
            "round {round}: unlink not visible on B"
        );
    }
    assert_eq!(fs::read_dir(b.join("d")).unwrap().count(), 0);
}

/// Resumes a stopped process when dropped, so a failing test still unmounts.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        use nix::sys::signal::{kill, Signal};
        kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
        // kill(2) returns before every thread has stopped.
        weft_testkit::wait_until("weftfs stopped", Duration::from_secs(10), || {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
                st.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
        });
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        let _ = kill(nix::unistd::Pid::from_raw(self.0 as i32), Signal::SIGCONT);
    }
}

/// A strict mount that stops answering (SIGSTOP) holds other mounts' changes
/// back only until its trust lease (1 s) runs out, and by then it trusts no
/// cache: once resumed it shows the change at once. A liveness check, so the
/// bound is generous for a loaded machine.
#[test]
fn a_stopped_strict_mount_delays_other_mounts_only_until_its_lease_ends() {
    const BOUND: Duration = Duration::from_secs(6);
    let mut tc = TestCluster::start(2, MIB);
    let a = tc.mount();
    let b = tc.mount_with(&["strict"]);
    let pid = tc.cluster.mounts.last().unwrap().proc.pid().unwrap();
    write_file(&a.join("f"), b"x");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // B is live and strict: A's change waits for it (see the test above).
    assert_eq!(mode(&b.join("f")), 0o644);
    fs::set_permissions(a.join("f"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(mode(&b.join("f")), 0o640);

    let stopped = Stopped::stop(pid);
    let (tx, rx) = std::sync::mpsc::channel();
    let af = a.join("f");
    std::thread::spawn(move || {
        let t = Instant::now();
        fs::set_permissions(&af, fs::Permissions::from_mode(0o600)).unwrap();
        let _ = tx.send(t.elapsed());
    });
    let took = rx
        .recv_timeout(BOUND)
        .expect("A's chmod is still waiting for the stopped strict mount");
    eprintln!("chmod with a stopped strict mount took {took:?}");
    // With B's lease over, A is not held back at all.
    let t = Instant::now();
    fs::rename(a.join("f"), a.join("g")).unwrap();
    assert!(t.elapsed() < BOUND, "rename took {:?}", t.elapsed());
    drop(stopped);
    assert_eq!(
        mode(&b.join("g")),
        0o600,
        "B trusted a stale mode after its lease"
    );
    assert!(
        !b.join("f").exists(),
        "B trusted a stale name after its lease"
    );
}

/// Names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// `weft_mds_requests_total{op="OP"}` summed over the MDS nodes' /metrics
/// (an MDS group's leader may be any of them).
fn mds_requests(tc: &TestCluster, op: &str) -> u64 {
    let series = format!("weft_mds_requests_total{{op=\"{op}\"}}");
    std::iter::once(&tc.cluster.mds)
        .chain(&tc.cluster.mds_peers)
        .map(|m| {
            let addr = m.http.clone().expect("the MDS serves /metrics");
            let (status, body) = weft_testkit::http::get(&addr, "/metrics").unwrap();
            assert_eq!(status, 200, "{body}");
            body.lines()
                .find(|l| l.split(' ').next() == Some(series.as_str()))
                .map_or(0, |l| {
                    l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
                })
        })
        .sum()
}

/// The kernel keeps a directory's listing (FOPEN_CACHE_DIR): a listing of an
/// unchanged directory asks the MDS nothing, and the MDS's push of another
/// mount's change drops the kept listing, so the next one shows the change.
#[test]
fn an_unchanged_listing_comes_from_the_kernel_and_a_change_drops_it() {
    let mut tc = TestCluster::start_with(2, |s| {
        s.http = true;
        s.chunk_size = Some(MIB);
    });
    let a = tc.mount();
    let b = tc.mount();
    fs::create_dir(a.join("d")).unwrap();
    // More names than one MDS readdir page.
    let mut names: Vec<String> = (0..300).map(|i| format!("f{i:03}")).collect();
    for n in &names {
        fs::write(a.join("d").join(n), b"").unwrap();
    }
    names.sort();
    // The first listing owes the directory an atime update (relatime), so
    // it and the one after it may reach the MDS; from then on, none.
    for _ in 0..3 {
        assert_eq!(listing(&a.join("d")), names);
    }
    let before = mds_requests(&tc, "readdir");
    for _ in 0..5 {
        assert_eq!(listing(&a.join("d")), names);
    }
    assert_eq!(
        mds_requests(&tc, "readdir"),
        before,
        "an unchanged directory's listing went to the MDS"
    );

    // Another mount's create, unlink and rename each show in A's next
    // listings within the bound.
    fs::write(b.join("d/new"), b"x").unwrap();
    names.push("new".into());
    names.sort();
    visible_within("create in a listed directory", || {
        listing(&a.join("d")) == names
    });
    assert!(mds_requests(&tc, "readdir") > before);
    fs::remove_file(b.join("d/f000")).unwrap();
    names.retain(|n| n != "f000");
    visible_within("unlink in a listed directory", || {
        listing(&a.join("d")) == names
    });
    fs::rename(b.join("d/f001"), b.join("d/g001")).unwrap();
    names.retain(|n| n != "f001");
    names.push("g001".into());
    names.sort();
    visible_within("rename in a listed directory", || {
        listing(&a.join("d")) == names
    });
    // A's own changes: the kernel drops the kept listing itself.
    fs::write(a.join("d/mine"), b"").unwrap();
    names.push("mine".into());
    names.sort();
    assert_eq!(listing(&a.join("d")), names);
}

/// On a strict mount a kept listing is dropped before another mount's
/// change returns: listed at once after each create, unlink and rename on
/// A, with no poll and no sleep, B's listing (kept by its kernel) shows it.
#[test]
fn a_kept_listing_on_a_strict_mount_shows_another_mounts_change_at_once() {
    let mut tc = TestCluster::start(2, MIB);
    let a = tc.mount();
    let b = tc.mount_with(&["strict"]);
    fs::create_dir(a.join("d")).unwrap();
    visible_within("mkdir", || b.join("d").is_dir());
    let mut names: Vec<String> = Vec::new();
    for round in 0..20 {
        // Listed twice: kept by B's kernel from here on.
        assert_eq!(listing(&b.join("d")), names, "round {round}");
        assert_eq!(listing(&b.join("d")), names, "round {round}");
        let name = format!("n{round}");
        write_file(&a.join("d").join(&name), b"x");
        names.push(name.clone());
        names.sort();
        assert_eq!(listing(&b.join("d")), names, "round {round}: create");
        let moved = format!("m{round}");
        fs::rename(a.join("d").join(&name), a.join("d").join(&moved)).unwrap();
        names.retain(|n| *n != name);
        names.push(moved.clone());
        names.sort();
        assert_eq!(listing(&b.join("d")), names, "round {round}: rename");
        if round % 2 == 1 {
            fs::remove_file(a.join("d").join(&moved)).unwrap();
            names.retain(|n| *n != moved);
            assert_eq!(listing(&b.join("d")), names, "round {round}: unlink");
        }
    }
}

/// An open for reading comes back with the file's chunk locations: reading
/// a small file another mount wrote costs one Open and no GetChunks.
#[test]
fn a_small_file_read_needs_no_get_chunks() {
    let mut tc = TestCluster::start_with(3, |s| {
        s.http = true;
        s.chunk_size = Some(MIB);
    });
    let a = tc.mount();
    let b = tc.mount();
    let files: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("s{i}"), pattern(4096 + i * 1000, i as u64)))
        .collect();
    for (n, d) in &files {
        write_file(&a.join(n), d);
    }
    let (chunks, opens) = (mds_requests(&tc, "get_chunks"), mds_requests(&tc, "open"));
    for (n, d) in &files {
        let got = read_all(&b.join(n));
        assert_eq!(sha256_hex(&got), sha256_hex(d), "{n}");
    }
    assert_eq!(mds_requests(&tc, "open") - opens, files.len() as u64);
    assert_eq!(
        mds_requests(&tc, "get_chunks"),
        chunks,
        "a small file's read asked the MDS for its chunks"
    );
}
