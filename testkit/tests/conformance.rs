//! External conformance suites against a real mounted cluster: pjdfstest
//! (POSIX semantics, errno by errno) and fsx (random I/O checked byte for
//! byte). Both tools are installed by scripts/install-test-deps into
//! `.tools/` (or `$WEFT_TOOLS_DIR`); a missing tool fails the test, never
//! skips it.
//!
//! pjdfstest's failures must match `conformance/pjdfstest.expected-failures`
//! exactly: an unexpected failure fails the test, and so does a listed case
//! that passes (the list may only shrink). fsx runs one fixed seed and one
//! random seed, which it prints so a failure can be replayed
//! (`WEFT_FSX_SEED=N`).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use weft_testkit::{require_fuse, TestCluster};

const MIB: u64 = 1 << 20;
const FSX_FIXED_SEED: u64 = 20261122;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("WEFT_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".tools"));
    let p = dir.join("bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-test-deps (it installs pjdfstest and fsx into .tools/)",
        p.display()
    );
    p
}

/// The cluster's temp dir is 0700; pjdfstest switches to other users, who
/// must be able to reach the mount point.
fn open_up(dir: &Path) {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `name reason...` lines; '#' starts a comment. Every entry needs a reason.
fn expected_failures() -> BTreeMap<String, String> {
    let path = repo_root().join("conformance/pjdfstest.expected-failures");
    let text = fs::read_to_string(&path).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, reason) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        assert!(
            !reason.trim().is_empty(),
            "{}: `{name}` has no reason",
            path.display()
        );
        out.insert(name.to_string(), reason.trim().to_string());
    }
    out
}

#[test]
fn pjdfstest_suite() {
    require_fuse();
    let pjd = tool("pjdfstest");
    let mut tc = TestCluster::start(3, MIB);
    open_up(tc.tmp.path());
    let m = tc.mount_with(&["allow_other"]);
    // A second, distinct file system for the cross-device (EXDEV) cases.
    let other = tc.tmp.path().join("local");
    fs::create_dir(&other).unwrap();
    open_up(&other);

    let expected = expected_failures();
    let base = fs::read_to_string(repo_root().join("conformance/pjdfstest.toml")).unwrap();
    assert!(
        !base
            .lines()
            .any(|l| l.trim_start().starts_with("expected_failures")),
        "list expected failures in pjdfstest.expected-failures, not the TOML"
    );
    let list: Vec<String> = expected.keys().map(|k| format!("{k:?}")).collect();
    let config = tc.tmp.path().join("pjdfstest.toml");
    fs::write(
        &config,
        format!("{base}\nexpected_failures = [{}]\n", list.join(", ")),
    )
    .unwrap();

    let t = Instant::now();
    let out = Command::new(&pjd)
        .arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&m)
        .arg("-s")
        .arg(&other)
        .env("NO_COLOR", "1")
        .env("CLICOLOR", "0")
        .output()
        .expect("run pjdfstest");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let log = tc.tmp.path().join("pjdfstest.log");
    fs::write(&log, &stdout).unwrap();

    // A case's result is on its line; details follow on tab-indented lines.
    let mut failed: BTreeMap<String, String> = BTreeMap::new();
    let mut unexpected_pass = Vec::new();
    let mut skipped: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut current_skip: Option<String> = None;
    for line in stdout.lines() {
        if line.starts_with('\t') {
            if let Some(name) = &current {
                let d = failed.get_mut(name).unwrap();
                d.push_str(line);
                d.push('\n');
            }
            if let Some(name) = &current_skip {
                let d = skipped.get_mut(name).unwrap();
                d.push_str(line.trim());
                d.push(' ');
            }
            continue;
        }
        current = None;
        current_skip = None;
        let name = line.split_whitespace().next().unwrap_or("").to_string();
        if line.trim_end().ends_with(" skipped") {
            skipped.insert(name.clone(), String::new());
            current_skip = Some(name);
        } else if line.trim_end().ends_with("FAILED") {
            failed.insert(name.clone(), String::new());
            current = Some(name);
        } else if line.trim_end().ends_with("PASSED UNEXPECTEDLY") {
            unexpected_pass.push(name);
        }
    }
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("Summary:"))
        .unwrap_or_else(|| {
            panic!(
                "pjdfstest printed no summary (exit {:?}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    println!("pjdfstest ({:.0?}): {summary}", t.elapsed());
    for (name, why) in &skipped {
        println!("pjdfstest skipped {name}: {}", why.trim());
    }
    let mut problems = String::new();
    for (name, detail) in &failed {
        problems.push_str(&format!("unexpected failure: {name}\n{detail}"));
    }
    for name in &unexpected_pass {
        problems.push_str(&format!(
            "listed in pjdfstest.expected-failures but passed: {name} (remove it)\n"
        ));
    }
    assert!(problems.is_empty(), "pjdfstest: {summary}\n{problems}");
    assert!(
        out.status.success(),
        "pjdfstest exited {:?}:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs fsx on `file` with the checked-in config; returns its exit and output tail.
fn run_fsx(fsx: &Path, file: &Path, seed: u64, ops: u64, artifacts: &Path) -> (bool, String) {
    fs::create_dir_all(artifacts).unwrap();
    let out = Command::new(fsx)
        .arg("-f")
        .arg(repo_root().join("conformance/fsx.toml"))
        .arg("-N")
        .arg(ops.to_string())
        .arg("-S")
        .arg(seed.to_string())
        .arg("-P")
        .arg(artifacts)
        .arg(file)
        .output()
        .expect("run fsx");
    let text = format!(
        "{}{}\nfsx exited: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status
    );
    let tail: Vec<&str> = text.lines().rev().take(60).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    (out.status.success(), tail.join("\n"))
}

#[test]
fn fsx_fixed_and_random_seed() {
    require_fuse();
    let fsx = tool("fsx");
    let ops: u64 = std::env::var("WEFT_FSX_OPS")
        .ok()
        .map(|s| s.parse().expect("WEFT_FSX_OPS"))
        .unwrap_or(100_000);
    let random_seed: u64 = std::env::var("WEFT_FSX_SEED")
        .ok()
        .map(|s| s.parse().expect("WEFT_FSX_SEED"))
        .unwrap_or_else(|| rand::random::<u32>() as u64);
    println!("fsx: {ops} operations, fixed seed {FSX_FIXED_SEED}, random seed {random_seed} (replay with WEFT_FSX_SEED={random_seed})");

    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();
    let art = tc.tmp.path().join("fsx-artifacts");
    let t = Instant::now();
    // The two seeds run at once, on two files: independent, and half the time.
    let runs: Vec<(u64, bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = [("fixed", FSX_FIXED_SEED), ("random", random_seed)]
            .into_iter()
            .map(|(name, seed)| {
                let (fsx, file, art) = (&fsx, m.join(format!("fsx-{name}")), art.join(name));
                s.spawn(move || {
                    let (ok, tail) = run_fsx(fsx, &file, seed, ops, &art);
                    (seed, ok, tail)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failures = String::new();
    for (seed, ok, tail) in &runs {
        println!(
            "fsx seed {seed}: {} ({ops} operations)",
            if *ok { "passed" } else { "FAILED" }
        );
        if !ok {
            failures.push_str(&format!("--- fsx seed {seed} ---\n{tail}\n"));
        }
    }
    println!("fsx: {:.0?}", t.elapsed());
    assert!(failures.is_empty(), "{failures}");
}
