//! Access, modification and change times through a real mount: the
//! atime policies (relatime by default, noatime, strictatime), and times set
//! or moved by writes around close.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;
use weft_testkit::{pattern, wait_until, TestCluster};

const MIB: u64 = 1 << 20;

fn atime(p: &Path) -> (i64, i64) {
    let md = fs::metadata(p).unwrap();
    (md.atime(), md.atime_nsec())
}

fn read(p: &Path) {
    let mut v = Vec::new();
    File::open(p).unwrap().read_to_end(&mut v).unwrap();
}

#[test]
fn atime_relatime_noatime_strictatime() {
    let mut tc = TestCluster::start(1, MIB);
    // No kernel attribute caching, so stat shows the MDS's atime.
    let rel = tc.mount_with(&["attr_timeout=0", "entry_timeout=0"]);
    let no = tc.mount_with(&["attr_timeout=0", "entry_timeout=0", "noatime"]);
    let strict = tc.mount_with(&["attr_timeout=0", "entry_timeout=0", "strictatime"]);
    fs::write(rel.join("f"), b"x").unwrap();
    let t0 = atime(&rel.join("f"));
    // A duration: a later read's atime must differ from t0 (clock granularity).
    std::thread::sleep(Duration::from_millis(50));

    // noatime: a read changes nothing. A stat on the reading mount waits for
    // any update its read sent (atime.rs), so it comes after that update.
    read(&no.join("f"));
    atime(&no.join("f"));
    assert_eq!(atime(&rel.join("f")), t0);

    // relatime: the first read after a write moves atime, the next does not.
    read(&rel.join("f"));
    wait_until("relatime update", Duration::from_secs(5), || {
        atime(&rel.join("f")) > t0
    });
    let t1 = atime(&rel.join("f"));
    let ctime = fs::metadata(rel.join("f")).unwrap().ctime_nsec();
    // A duration: an update now would show as a later atime.
    std::thread::sleep(Duration::from_millis(50));
    read(&rel.join("f"));
    // The stat on the reading mount waits for any update the read sent.
    assert_eq!(atime(&rel.join("f")), t1);
    assert_eq!(
        fs::metadata(rel.join("f")).unwrap().ctime_nsec(),
        ctime,
        "atime moved ctime"
    );

    // strictatime: every read, also one the kernel could serve from the
    // pages an earlier open of the unchanged file cached (generic/003).
    read(&strict.join("f"));
    wait_until("strictatime update", Duration::from_secs(5), || {
        atime(&rel.join("f")) > t1
    });
    let t2 = atime(&rel.join("f"));
    // A duration: the next update must show as a later atime.
    std::thread::sleep(Duration::from_millis(50));
    read(&strict.join("f"));
    wait_until(
        "strictatime update of a cached file",
        Duration::from_secs(5),
        || atime(&rel.join("f")) > t2,
    );
}

/// generic/003: a stat right after a read already shows the read's atime
/// (the update is sent in the background; a getattr waits for it).
#[test]
fn stat_right_after_a_read_shows_its_atime() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let p = m.join("f");
    for round in 0..20 {
        fs::write(&p, format!("round {round}")).unwrap();
        let before = atime(&p);
        // A duration: the read's atime must differ from the write's.
        std::thread::sleep(Duration::from_millis(20));
        read(&p);
        assert!(atime(&p) > before, "round {round}: atime not updated yet");
    }
}

/// The writer's own mount: with names and attributes kept long while the MDS's
/// pushes are live, a stat after close must still show the size and mtime the
/// flush committed, not the attributes weftfs had cached from before the writes.
#[test]
fn a_stat_after_close_shows_the_committed_mtime() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let p = m.join("f");
    File::create(&p).unwrap();
    let created = fs::metadata(&p).unwrap();
    // A duration: the writes' mtime must be in a later second than the create's.
    std::thread::sleep(Duration::from_millis(1100));
    let mut f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all(&pattern(10_000, 1)).unwrap();
    // A stat while the bytes are still buffered in weftfs: write(2) has
    // changed mtime and ctime already.
    let during = fs::metadata(&p).unwrap();
    assert_eq!(during.len(), 10_000);
    assert!(
        during.mtime() > created.mtime() && during.ctime() > created.ctime(),
        "mtime/ctime during the write {}/{} are not past the create's {}",
        during.mtime(),
        during.ctime(),
        created.mtime()
    );
    drop(f);
    let after = fs::metadata(&p).unwrap();
    assert_eq!(after.len(), 10_000);
    assert!(
        after.mtime() > created.mtime(),
        "mtime after the write {} is not past the create's {}",
        after.mtime(),
        created.mtime()
    );
}

/// Times set through a descriptor before close survive the close: `cp -p`
/// (and tar) write the data, then futimens, then close. The buffered data's
/// commit must not move mtime to the time of the close.
#[test]
fn times_set_before_close_survive_the_close() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let p = m.join("stamped");
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    {
        let mut f = File::create(&p).unwrap();
        f.write_all(&pattern(10_000, 3)).unwrap();
        f.set_times(fs::FileTimes::new().set_modified(old).set_accessed(old))
            .unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mtime(), 1_000_000_000);
    }
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.len(), md.mtime()), (10_000, 1_000_000_000));

    // The same through cp -p from the local disk.
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("src");
    fs::write(&src, pattern(200_000, 4)).unwrap();
    File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(old).set_accessed(old))
        .unwrap();
    let st = std::process::Command::new("cp")
        .arg("-p")
        .arg(&src)
        .arg(m.join("copied"))
        .status()
        .unwrap();
    assert!(st.success());
    // A duration: past the attribute TTL, the stat shows what the MDS holds
    // (a late flush's mtime would show), not what the kernel cached.
    std::thread::sleep(Duration::from_millis(1200));
    let md = fs::metadata(m.join("copied")).unwrap();
    assert_eq!((md.len(), md.mtime()), (200_000, 1_000_000_000));
}

/// The MDS calls of kind `op` weftfs at `http` has made so far.
fn mds_calls(http: &str, op: &str) -> f64 {
    let (status, body) = weft_testkit::http::get(http, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    let key = format!("weft_client_mds_requests_total{{op=\"{op}\"}} ");
    body.lines()
        .find(|l| l.starts_with(&key))
        .map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

/// Small files read back (relatime: the first read after a write moves the
/// atime): each update goes to the MDS with the file's release, many in
/// one call (releases.rs), never as a SetAttr of its own, and both mounts
/// show every new atime.
#[test]
fn atime_updates_go_with_the_releases() {
    let mut tc = TestCluster::start_with(1, |s| {
        s.chunk_size = Some(MIB);
        s.http = true;
    });
    // The kernel's attribute timeouts as weft up mounts (with none, the
    // kernel asks for the size before every read(2), and a stat waits for
    // the atime update in flight: each goes at once).
    let a = tc.mount_with(&[]);
    let b = tc.mount_with(&["attr_timeout=0", "entry_timeout=0"]);
    let http = tc.cluster.mounts[0].proc.http.clone().expect("weftfs http");
    const N: usize = 40;
    let name = |i: usize| format!("f{i}");
    let mut before = Vec::new();
    for i in 0..N {
        let p = a.join(name(i));
        fs::write(&p, pattern(3000, i as u64)).unwrap();
        before.push(atime(&p));
    }
    // A duration: the reads' atimes must differ from the writes'.
    std::thread::sleep(Duration::from_millis(20));
    let (setattrs, releases) = (mds_calls(&http, "setattr"), mds_calls(&http, "release"));
    for i in 0..N {
        let mut v = Vec::new();
        File::open(a.join(name(i)))
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        assert_eq!(v, pattern(3000, i as u64), "{}", name(i));
    }
    for (i, t) in before.iter().enumerate() {
        wait_until(
            "the other mount shows the read's atime",
            Duration::from_secs(5),
            || atime(&b.join(name(i))) > *t,
        );
        assert!(atime(&a.join(name(i))) > *t, "{}: this mount", name(i));
    }
    assert_eq!(
        mds_calls(&http, "setattr") - setattrs,
        0.0,
        "atime updates sent as SetAttrs of their own"
    );
    let calls = mds_calls(&http, "release") - releases;
    assert!(
        (1.0..(N / 2) as f64).contains(&calls),
        "{calls} Release calls for {N} files read and closed"
    );
}
