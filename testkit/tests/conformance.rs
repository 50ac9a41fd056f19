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
//! (`WEFT_FSX_SEED=N`); a failed run's whole output, fsx's artifacts and the
//! cluster's logs are kept in `target/fsx-failures/<seed>/`.
//!
//! `WEFT_MOUNT_OPTIONS` (comma-separated `-o` options, e.g.
//! `pack_max_kib=0`) is added to the suites' mounts, to run them with
//! another configuration than weftfs's defaults.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use weft_testkit::{install_weftfs, require_fuse, TestCluster};

const MIB: u64 = 1 << 20;
const FSX_FIXED_SEED: u64 = 20261122;
/// The first seed of `fsx_small_packed_files`' runs.
const FSX_SMALL_SEED: u64 = 7_000_000;

/// A cluster for the suites: failure detection is not what they test, so a
/// chunk daemon is declared dead only after 10 s of silence (the harness's
/// 1.5 s is too short on a loaded 2-core machine, where a late heartbeat
/// would make a replica vanish and an mmap read fail with SIGBUS).
fn cluster() -> TestCluster {
    TestCluster::start_with(3, |s| {
        s.chunk_size = Some(MIB);
        s.heartbeat_ms = Some(500);
        s.dead_after_ms = Some(10_000);
    })
}

/// The suites' mount options: `base`, then those in `WEFT_MOUNT_OPTIONS`.
fn mount_options(base: &[&str]) -> Vec<String> {
    let extra = std::env::var("WEFT_MOUNT_OPTIONS").unwrap_or_default();
    let opts: Vec<String> = base
        .iter()
        .map(|s| s.to_string())
        .chain(
            extra
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        )
        .collect();
    println!("mount options: {opts:?}");
    opts
}

fn mount(tc: &mut TestCluster, base: &[&str]) -> PathBuf {
    let opts = mount_options(base);
    tc.mount_with(&opts.iter().map(String::as_str).collect::<Vec<_>>())
}

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

/// Keeps what it takes to study a failed run after the cluster's temp dir is
/// gone: pjdfstest's output (`output`, per pass) and every daemon's and
/// weftfs's log, copied to /tmp/weft-conformance-failed-<pid>/. Returns that
/// directory, which the failure message names.
fn keep_for_study(tc: &TestCluster, output: &[(String, String)]) -> PathBuf {
    let dir = PathBuf::from(format!(
        "/tmp/weft-conformance-failed-{}",
        std::process::id()
    ));
    fs::create_dir_all(&dir).unwrap();
    for (pass, text) in output {
        fs::write(dir.join(format!("pjdfstest-{pass}.out")), text).unwrap();
    }
    let logs = tc.cluster.spec.dir.join("logs");
    if let Ok(rd) = fs::read_dir(&logs) {
        for e in rd.flatten() {
            let _ = fs::copy(e.path(), dir.join(e.file_name()));
        }
    }
    println!("pjdfstest: output and logs kept in {}", dir.display());
    dir
}

/// One pjdfstest run's results, parsed from its plain-text output: each
/// case's result ends its line; details follow on tab-indented lines.
#[derive(Default)]
struct PjdResults {
    passed: Vec<String>,
    failed: BTreeMap<String, String>,
    unexpected_pass: Vec<String>,
    expected_fail: Vec<String>,
    skipped: BTreeMap<String, String>,
}

fn parse_pjdfstest(stdout: &str, r: &mut PjdResults) {
    enum Cur {
        None,
        Failed(String),
        Skipped(String),
    }
    let mut cur = Cur::None;
    for line in stdout.lines() {
        if line.starts_with('\t') {
            match &cur {
                Cur::Failed(n) => {
                    let d = r.failed.get_mut(n).unwrap();
                    d.push_str(line);
                    d.push('\n');
                }
                Cur::Skipped(n) => {
                    let d = r.skipped.get_mut(n).unwrap();
                    d.push_str(line.trim());
                    d.push(' ');
                }
                Cur::None => {}
            }
            continue;
        }
        cur = Cur::None;
        let name = line.split_whitespace().next().unwrap_or("").to_string();
        let l = line.trim_end();
        if l.ends_with(" skipped") {
            r.skipped.insert(name.clone(), String::new());
            cur = Cur::Skipped(name);
        } else if l.ends_with("FAILED") {
            r.failed.insert(name.clone(), String::new());
            cur = Cur::Failed(name);
        } else if l.ends_with("PASSED UNEXPECTEDLY") {
            r.unexpected_pass.push(name);
        } else if l.ends_with("failed as expected") {
            r.expected_fail.push(name);
        } else if l.ends_with(" ok") {
            r.passed.push(name);
        }
    }
}

#[test]
fn pjdfstest_suite() {
    require_fuse();
    let pjd = tool("pjdfstest");
    // The erofs cases remount read-only with `mount -o remount,ro`.
    let _helper = install_weftfs();
    let mut tc = cluster();
    open_up(tc.tmp.path());
    let m = mount(&mut tc, &["allow_other"]);
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
    assert!(base.contains("allow_remount = true"));
    let list: Vec<String> = expected.keys().map(|k| format!("{k:?}")).collect();
    let failures = format!("\nexpected_failures = [{}]\n", list.join(", "));

    // Two passes: the erofs cases alone first (they remount read-only), then
    // everything else with remounts off. Several pjdfstest cases leak
    // descriptors open for writing (posix_fallocate's, for one), and a
    // file system with a file open for writing cannot be remounted read-only
    // (EBUSY, on ext4 too), so erofs cases that ran after them would fail.
    let t = Instant::now();
    let mut results = PjdResults::default();
    let mut logs = String::new();
    let mut outputs: Vec<(String, String)> = Vec::new();
    for (pass, config_text, patterns) in [
        ("erofs", base.clone(), vec!["erofs"]),
        (
            "rest",
            base.replace("allow_remount = true", "allow_remount = false"),
            vec![],
        ),
    ] {
        let config = tc.tmp.path().join(format!("pjdfstest-{pass}.toml"));
        fs::write(&config, format!("{config_text}{failures}")).unwrap();
        let out = Command::new(&pjd)
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(&m)
            .arg("-s")
            .arg(&other)
            .args(patterns)
            .env("NO_COLOR", "1")
            .env("CLICOLOR", "0")
            .output()
            .expect("run pjdfstest");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        outputs.push((
            pass.to_string(),
            format!("{stdout}\n--- stderr (exit {:?}) ---\n{stderr}", out.status),
        ));
        if !stdout.lines().any(|l| l.starts_with("Summary:")) {
            let kept = keep_for_study(&tc, &outputs);
            panic!(
                "pjdfstest ({pass}) printed no summary (exit {:?}; kept in {}):\n{stdout}\n{stderr}",
                out.status,
                kept.display()
            );
        }
        logs.push_str(&stdout);
        parse_pjdfstest(&stdout, &mut results);
    }
    fs::write(tc.tmp.path().join("pjdfstest.log"), &logs).unwrap();
    // A case skipped in the second pass because it ran in the first is not skipped.
    let ran: std::collections::BTreeSet<String> = results
        .passed
        .iter()
        .chain(results.failed.keys())
        .chain(&results.expected_fail)
        .chain(&results.unexpected_pass)
        .cloned()
        .collect();
    results.skipped.retain(|n, _| !ran.contains(n));
    let summary = format!(
        "{} passed, {} failed, {} skipped, {} expected failures",
        results.passed.len(),
        results.failed.len() + results.unexpected_pass.len(),
        results.skipped.len(),
        results.expected_fail.len()
    );
    println!("pjdfstest ({:.0?}):", t.elapsed());
    for (name, why) in &results.skipped {
        println!("pjdfstest skipped {name}: {}", why.trim());
    }
    for name in &results.expected_fail {
        println!("pjdfstest expected failure {name}: {}", expected[name]);
    }
    println!("pjdfstest: {summary}");
    let mut problems = String::new();
    for (name, detail) in &results.failed {
        problems.push_str(&format!("unexpected failure: {name}\n{detail}"));
    }
    for name in &results.unexpected_pass {
        problems.push_str(&format!(
            "listed in pjdfstest.expected-failures but passed: {name} (remove it)\n"
        ));
    }
    if !problems.is_empty() {
        let kept = keep_for_study(&tc, &outputs);
        panic!(
            "pjdfstest: {summary} (output and logs kept in {})\n{problems}",
            kept.display()
        );
    }
    assert!(
        results.passed.len() > 300,
        "pjdfstest ran too few cases: {summary}"
    );
}

/// Runs fsx on `file` with the checked-in config; returns its exit and whole output.
fn run_fsx(fsx: &Path, file: &Path, seed: u64, ops: u64, artifacts: &Path) -> (bool, String) {
    run_fsx_with("fsx.toml", fsx, file, seed, ops, artifacts)
}

/// `run_fsx` with the config `conformance/<config>`.
fn run_fsx_with(
    config: &str,
    fsx: &Path,
    file: &Path,
    seed: u64,
    ops: u64,
    artifacts: &Path,
) -> (bool, String) {
    fs::create_dir_all(artifacts).unwrap();
    let out = Command::new(fsx)
        .arg("-f")
        .arg(repo_root().join("conformance").join(config))
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
    (out.status.success(), text)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A failed fsx run's evidence outlives the cluster's temp dir: its whole
/// output (fsx 0.3.2 logs its last operations there), its -P artifact (the
/// expected contents, `.fsxgood`), the file as the mount reads it now
/// (`.actual`) and the cluster's logs go to `target/fsx-failures/<seed>/`,
/// which this returns.
fn keep_fsx_failure(
    tc: &TestCluster,
    seed: u64,
    output: &str,
    artifacts: &Path,
    file: &Path,
) -> PathBuf {
    let target = weft_testkit::bin_dir()
        .parent()
        .expect("target dir")
        .to_path_buf();
    let dir = target.join("fsx-failures").join(seed.to_string());
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("fsx.out"), output).unwrap();
    let name = file.file_name().expect("file name").to_string_lossy();
    if let Err(e) = fs::copy(file, dir.join(format!("{name}.actual"))) {
        fs::write(dir.join(format!("{name}.actual.error")), e.to_string()).unwrap();
    }
    for (from, to) in [
        (artifacts.to_path_buf(), dir.clone()),
        (tc.cluster.spec.dir.join("logs"), dir.join("cluster-logs")),
    ] {
        if let Ok(rd) = fs::read_dir(&from) {
            fs::create_dir_all(&to).unwrap();
            for e in rd.flatten() {
                let _ = fs::copy(e.path(), to.join(e.file_name()));
            }
        }
    }
    dir
}

/// fsx 0.3.2 skips a zero-length read, write, copy or punch but sends a
/// zero-length posix_fallocate, which every file system answers EINVAL (ext4
/// too) and which fsx takes for "not supported" and fails on: seed
/// 3568794553 did at operation 80253. Its sizes are drawn from
/// [opsize.min, opsize.max] and, for posix_fallocate, cut to the file's
/// maximum length from an offset that is not aligned, then rounded down to
/// the alignment: only min >= 1 with alignment 1 keeps them above 0.
#[test]
fn fsx_config_never_sends_a_zero_length_posix_fallocate() {
    let path = repo_root().join("conformance/fsx.toml");
    let conf: toml::Table = fs::read_to_string(&path).unwrap().parse().unwrap();
    let int = |section: &str, key: &str, default: i64| {
        conf.get(section)
            .and_then(|s| s.get(key))
            .map_or(default, |v| {
                v.as_integer()
                    .or_else(|| v.as_float().map(|f| f.ceil() as i64))
                    .expect("a number")
            })
    };
    if int("weights", "posix_fallocate", 0) == 0 {
        return;
    }
    let (min, align) = (int("opsize", "min", 0), int("opsize", "align", 1));
    assert!(
        min >= 1 && align == 1,
        "{}: posix_fallocate is on, so opsize.min must be at least 1 and \
         opsize.align 1 (found min {min}, align {align}), else fsx sends a \
         zero-length posix_fallocate and fails on its EINVAL",
        path.display()
    );
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

    let mut tc = cluster();
    let m = mount(&mut tc, &[]);
    let art = tc.tmp.path().join("fsx-artifacts");
    let t = Instant::now();
    // The two seeds run at once, on two files: independent, and half the time.
    let seeds = [("fixed", FSX_FIXED_SEED), ("random", random_seed)];
    let runs: Vec<(bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .into_iter()
            .map(|(name, seed)| {
                let (fsx, file, art) = (&fsx, m.join(format!("fsx-{name}")), art.join(name));
                s.spawn(move || run_fsx(fsx, &file, seed, ops, &art))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut failures = String::new();
    for ((name, seed), (ok, text)) in seeds.into_iter().zip(&runs) {
        println!(
            "fsx seed {seed}: {} ({ops} operations)",
            if *ok { "passed" } else { "FAILED" }
        );
        if !ok {
            let file = m.join(format!("fsx-{name}"));
            let kept = keep_fsx_failure(&tc, seed, text, &art.join(name), &file);
            failures.push_str(&format!(
                "--- fsx seed {seed} (output, artifacts and cluster logs kept in {}) ---\n{}\n",
                kept.display(),
                tail(text, 60)
            ));
        }
    }
    println!("fsx: {:.0?}", t.elapsed());
    assert!(failures.is_empty(), "{failures}");
}

/// fsx on small files with packing on: many short runs, each on a new file
/// under the packing threshold (`conformance/fsx-small.toml`) that its
/// first close/reopen or fsync packs, so every operation kind runs on a
/// packed file and on the one it turns into. Seeds FSX_SMALL_SEED + i for
/// `WEFT_FSX_SMALL_RUNS` runs (default 40) of `WEFT_FSX_SMALL_OPS`
/// operations (default 1,000), two at a time.
#[test]
fn fsx_small_packed_files() {
    require_fuse();
    let fsx = tool("fsx");
    let env = |k: &str, d: u64| std::env::var(k).map_or(d, |v| v.parse().expect(k));
    let runs = env("WEFT_FSX_SMALL_RUNS", 40);
    let ops = env("WEFT_FSX_SMALL_OPS", 1000);
    let mut tc = cluster();
    let m = mount(&mut tc, &["pack_max_kib=64"]);
    let art = tc.tmp.path().join("fsx-small-artifacts");
    let t = Instant::now();
    let next = std::sync::atomic::AtomicU64::new(0);
    let failures = std::sync::Mutex::new(String::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= runs || !failures.lock().unwrap().is_empty() {
                    return;
                }
                let seed = FSX_SMALL_SEED + i;
                let (file, dir) = (m.join(format!("small-{seed}")), art.join(seed.to_string()));
                let (ok, text) = run_fsx_with("fsx-small.toml", &fsx, &file, seed, ops, &dir);
                if !ok {
                    let kept = keep_fsx_failure(&tc, seed, &text, &dir, &file);
                    failures.lock().unwrap().push_str(&format!(
                        "--- fsx-small seed {seed} (kept in {}) ---\n{}\n",
                        kept.display(),
                        tail(&text, 60)
                    ));
                }
            });
        }
    });
    let packed = needles(&tc);
    println!(
        "fsx-small: {runs} runs of {ops} operations in {:.0?}; {packed} files were packed on the way",
        t.elapsed()
    );
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{failures}");
    // Packing is up to each run's first operations: most runs, not all.
    assert!(
        packed >= runs.div_ceil(5) as usize,
        "only {packed} of {runs} runs packed their file"
    );
}

/// Needles written (each a file packed once), counted on the daemons' disks:
/// valid needle headers at 64-byte steps in the replica files' data.
fn needles(tc: &TestCluster) -> usize {
    use std::os::unix::fs::FileExt;
    let mut seen = std::collections::BTreeSet::new();
    for c in &tc.cluster.chunkds {
        for sub in fs::read_dir(c.data.join("chunks"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
                if f.path().extension().is_none_or(|e| e != "chunk") {
                    continue;
                }
                let file = fs::File::open(f.path()).unwrap();
                let mut h = [0u8; 52];
                if file.read_exact_at(&mut h, 0).is_err() {
                    continue;
                }
                let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().unwrap());
                let (id, chunk_size, len) = (u64_at(12), u64_at(28), u64_at(40));
                // The replica file's header: 52 bytes, a crc per 64 KiB, to 4 KiB.
                let data_at = (52 + 4 * chunk_size.div_ceil(65536)).next_multiple_of(4096);
                let mut data = vec![0u8; len as usize];
                if file.read_exact_at(&mut data, data_at).is_err() {
                    continue;
                }
                for (i, n) in data.chunks(64).enumerate() {
                    if n.len() >= 32
                        && &n[..4] == b"WNDL"
                        && u32::from_le_bytes(n[4..8].try_into().unwrap())
                            == crc32c::crc32c(&n[8..32])
                    {
                        seen.insert((id, i));
                    }
                }
            }
        }
    }
    seen.len()
}
