//! For tests of the MDS group: finding its leader, and a live workload on a
//! mount that records every operation it was told succeeded, to check
//! afterwards that each is there (and applied once) after kills, cuts and
//! membership changes.

use crate::{sha256_hex, wait_until, TestCluster};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Waits for a leader other than `not` (None: any), returns its id.
pub fn wait_leader(c: &TestCluster, not: Option<u64>) -> u64 {
    let mut id = 0;
    wait_until("an MDS group leader", Duration::from_secs(30), || {
        match c.cluster.leader_id() {
            Some(l) if Some(l) != not => {
                id = l;
                true
            }
            _ => false,
        }
    });
    id
}

/// What the workload was told succeeded, to check afterwards.
#[derive(Default)]
pub struct Acked {
    /// path → sha256 of the bytes, for files that must exist.
    pub files: BTreeMap<PathBuf, String>,
    /// paths that must not exist (unlinked, or renamed away).
    pub gone: Vec<PathBuf>,
    /// path → mode bits set by chmod.
    pub modes: BTreeMap<PathBuf, u32>,
}

/// One round of mutations; every step that returns Ok is recorded. Each
/// step fails if an earlier one were applied twice: the create is O_EXCL
/// (EEXIST), the rename and unlink find their source gone (ENOENT).
pub fn workload_step(dir: &Path, i: usize, acked: &Mutex<Acked>) -> std::io::Result<()> {
    let data = format!("file {i} {}\n", "x".repeat(i % 3000)).into_bytes();
    let p = dir.join(format!("f{i}"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)?;
    // A lock change is a log entry too: taken and released around the write.
    flock(&f, libc::LOCK_EX)?;
    f.write_all(&data)?;
    f.sync_all()?;
    flock(&f, libc::LOCK_UN)?;
    drop(f);
    acked
        .lock()
        .unwrap()
        .files
        .insert(p.clone(), sha256_hex(&data));
    // A rename or unlink is recorded under the lock it is made under, so a
    // check while the workload runs never sees it made and not yet recorded.
    if i.is_multiple_of(3) {
        let q = dir.join(format!("r{i}"));
        let mut a = acked.lock().unwrap();
        fs::rename(&p, &q)?;
        let h = a.files.remove(&p).unwrap();
        a.files.insert(q, h);
        a.gone.push(p);
    } else if i % 3 == 1 {
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600))?;
        acked.lock().unwrap().modes.insert(p, 0o600);
    } else if i % 5 == 2 {
        let mut a = acked.lock().unwrap();
        fs::remove_file(&p)?;
        a.files.remove(&p);
        a.gone.push(p);
    }
    Ok(())
}

fn flock(f: &fs::File, op: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Every acknowledged file has its bytes and mode, every removed one is gone.
pub fn check_acked(acked: &Acked) {
    for (p, h) in &acked.files {
        let bytes =
            fs::read(p).unwrap_or_else(|e| panic!("{}: acknowledged, now {e}", p.display()));
        assert_eq!(&sha256_hex(&bytes), h, "{}: bytes differ", p.display());
    }
    for p in &acked.gone {
        assert!(!p.exists(), "{}: removed, yet it exists", p.display());
    }
    for (p, m) in &acked.modes {
        if acked.files.contains_key(p) {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, *m, "{}: mode", p.display());
        }
    }
}

/// `workload_step` in a loop on a thread, in one directory, until stopped
/// or until a step fails.
pub struct Workload {
    pub dir: PathBuf,
    pub acked: Arc<Mutex<Acked>>,
    stop: Arc<AtomicBool>,
    steps: Arc<AtomicUsize>,
    worker: Option<JoinHandle<Option<String>>>,
}

impl Workload {
    /// Creates `dir` and starts the loop in it.
    pub fn start(dir: &Path) -> Workload {
        fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let acked = Arc::new(Mutex::new(Acked::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let steps = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (dir, acked, stop, steps) = (
                dir.to_path_buf(),
                acked.clone(),
                stop.clone(),
                steps.clone(),
            );
            std::thread::spawn(move || -> Option<String> {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = workload_step(&dir, i, &acked) {
                        return Some(format!("step {i}: {e}"));
                    }
                    i += 1;
                    steps.store(i, Ordering::Relaxed);
                }
                None
            })
        };
        Workload {
            dir: dir.to_path_buf(),
            acked,
            stop,
            steps,
            worker: Some(worker),
        }
    }

    /// Steps completed so far.
    pub fn steps(&self) -> usize {
        self.steps.load(Ordering::Relaxed)
    }

    /// Waits (up to `timeout`) for `n` more steps; panics with `what` if the
    /// workload stopped on an error or made no such progress.
    pub fn progress(&mut self, n: usize, what: &str, timeout: Duration) {
        let from = self.steps();
        let worker = self.worker.as_ref().expect("the workload runs");
        wait_until(what, timeout, || {
            self.steps.load(Ordering::Relaxed) >= from + n || worker.is_finished()
        });
        if worker.is_finished() {
            let err = self.worker.take().unwrap().join().unwrap();
            panic!("the workload stopped, waiting for {what}: {err:?}");
        }
    }

    /// Stops the loop (between two steps) and returns how many steps it
    /// made; panics if one failed.
    pub fn finish(&mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let err = self
            .worker
            .take()
            .expect("the workload runs")
            .join()
            .unwrap();
        assert!(err.is_none(), "the workload saw an error: {err:?}");
        self.steps()
    }

    /// After `finish`: every acknowledged operation is there, and nothing
    /// else is: the directory holds exactly the files the workload was told
    /// exist (an operation applied twice, or one applied but reported
    /// failed, would show here).
    pub fn check(&self) {
        let acked = self.acked.lock().unwrap();
        check_acked(&acked);
        let mut listed: Vec<PathBuf> = fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        listed.sort();
        let want: Vec<PathBuf> = acked.files.keys().cloned().collect();
        assert_eq!(listed, want, "the workload's directory");
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // A failed test still stops the thread before the mount goes.
        self.stop.store(true, Ordering::Relaxed);
    }
}
