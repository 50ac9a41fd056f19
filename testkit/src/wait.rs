//! Waiting on conditions with deadlines, never fixed sleeps: every test and
//! every helper here polls what it waits for (a file, an exit, a count) until
//! it holds or the deadline passes. An absence is asserted after the event
//! that would have caused it, which is waited for the same way.

use std::path::Path;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How often conditions are polled. Some run a command or an RPC, so not
/// much more often than this.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `cond` until true (returns true) or `timeout` passes (returns
/// false), for callers that report a timeout themselves.
pub fn poll_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_every(POLL, timeout, cond)
}

/// `poll_until`, polling every `every`: for tests that measure how soon
/// something happens.
pub fn poll_every(every: Duration, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t.elapsed() >= timeout {
            return false;
        }
        // The poll interval: the one sleep behind every wait.
        std::thread::sleep(every);
    }
}

/// Polls `cond` until true; panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    assert!(
        poll_until(timeout, cond),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// `poll_until` for async tests: the runtime keeps running (the daemons
/// under test may share it) while `cond` is false.
pub async fn poll_until_async(timeout: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if cond().await {
            return true;
        }
        if t.elapsed() >= timeout {
            return false;
        }
        // The poll interval, as in `poll_every`.
        tokio::time::sleep(POLL).await;
    }
}

/// `wait_until` for async tests.
pub async fn wait_until_async(what: &str, timeout: Duration, cond: impl AsyncFnMut() -> bool) {
    assert!(
        poll_until_async(timeout, cond).await,
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// The trimmed contents of `path` once it exists and is not empty (an
/// address file a daemon writes once it listens); panics after `timeout`.
pub fn wait_for_file(path: &Path, timeout: Duration) -> String {
    let mut got = String::new();
    wait_until(
        &format!("{} to be written", path.display()),
        timeout,
        || {
            got = std::fs::read_to_string(path).unwrap_or_default();
            !got.trim().is_empty()
        },
    );
    got.trim().to_string()
}

/// The exit status of `child` once it exits; None (the child still runs)
/// after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut st = None;
    poll_until(timeout, || {
        st = child.try_wait().expect("try_wait");
        st.is_some()
    });
    st
}
