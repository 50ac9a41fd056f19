//! The crash test: a workload of creates, writes with fsync, renames and
//! unlinks runs through one mount while the MDS is SIGKILLed at random moments
//! and restarted on the same address, several times. Afterwards every
//! operation that returned success is there, none happened twice (a doubled
//! O_EXCL create, rename or unlink would have failed the workload with EEXIST
//! or ENOENT), the workload saw no error, and fsck is clean.
//!
//! The workload is a separate process (bash + coreutils), as an application
//! would be. (It must not be a thread of this test: when this process spawns
//! the MDS, exec closes its close-on-exec descriptors, and closing a weft file
//! sends FUSE a FLUSH that waits for the very MDS being started.)

use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::time::Duration;
use weft_testkit::{read_all, sha256_hex, TestCluster};

const MIB: u64 = 1 << 20;

/// Iteration i: create w/f<i> (O_EXCL) with `content(i)`, fsync; if i%3==0
/// rename it to w/r<i>; if i%5==0 unlink it; if i%7==0 mkdir w/d<i>.
const WORKLOAD: &str = r#"
set -eu  # no pipefail: `yes` ends with SIGPIPE; dd's status is the pipeline's
m=$1; stop=$2
mkdir "$m/w"
i=0
while [ ! -e "$stop" ] || [ $i -lt 30 ]; do
  n=$(( 1 + (i * 37813) % 400000 ))
  yes "weft crash test line $i" | head -c $n | dd of="$m/w/f$i" conv=excl,fsync status=none
  at="$m/w/f$i"
  if [ $((i % 3)) -eq 0 ]; then mv -T "$at" "$m/w/r$i"; at="$m/w/r$i"; fi
  if [ $((i % 5)) -eq 0 ]; then rm "$at"; fi
  if [ $((i % 7)) -eq 0 ]; then mkdir "$m/w/d$i"; fi
  i=$((i + 1))
done
echo $i
"#;

fn content(i: usize) -> Vec<u8> {
    let n = 1 + (i * 37_813) % 400_000;
    let line = format!("weft crash test line {i}\n");
    line.as_bytes().iter().copied().cycle().take(n).collect()
}

/// What the tree must be after `iters` iterations: name → sha256 (empty for a directory).
fn expected(iters: usize) -> BTreeMap<String, String> {
    let mut want = BTreeMap::new();
    for i in 0..iters {
        let name = if i % 3 == 0 {
            format!("r{i}")
        } else {
            format!("f{i}")
        };
        if i % 5 != 0 {
            want.insert(name, sha256_hex(&content(i)));
        }
        if i % 7 == 0 {
            want.insert(format!("d{i}"), String::new());
        }
    }
    want
}

#[test]
fn workload_survives_random_mds_kills() {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();
    let stop = tc.tmp.path().join("stop");
    let mut worker = Command::new("bash")
        .arg("-c")
        .arg(WORKLOAD)
        .arg("workload")
        .arg(&m)
        .arg(&stop)
        .current_dir(tc.tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = tc.mds_addr();
    for k in 0..5 {
        // Durations, the fault itself: the workload runs a random while, then
        // the MDS stays down a random while.
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2000)));
        if worker.try_wait().unwrap().is_some() {
            let out = worker.wait_with_output().unwrap();
            panic!(
                "the workload stopped early (before kill {k}, seed {seed}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tc.cluster.mds.crash();
        std::thread::sleep(Duration::from_millis(rng.random_range(100..1500)));
        tc.cluster
            .start_mds(Some(&addr))
            .unwrap_or_else(|e| panic!("restart {k}: {e:#}"));
    }
    // A duration: the workload runs on a while against the last MDS.
    std::thread::sleep(Duration::from_millis(500));
    fs::write(&stop, b"").unwrap();
    let out = worker.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the workload saw an error (seed {seed}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let iters: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let want = expected(iters);
    eprintln!("{iters} iterations, {} entries expected", want.len());

    // Exactly the expected entries, with the expected bytes, in a fresh mount.
    let m2 = tc.mount();
    let mut got = BTreeMap::new();
    for e in fs::read_dir(m2.join("w")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().to_string();
        let h = if e.file_type().unwrap().is_dir() {
            String::new()
        } else {
            sha256_hex(&read_all(&e.path()))
        };
        got.insert(name, h);
    }
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?} (seed {seed})"
    );
    for (name, h) in &want {
        assert_eq!(&got[name], h, "{name} content (seed {seed})");
    }
    let f = tc
        .cluster
        .wait_replicated(Duration::from_secs(30))
        .expect("fsck clean after the kills");
    assert!(f.problems.is_empty());
}
