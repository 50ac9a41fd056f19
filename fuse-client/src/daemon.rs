//! Going to the background the way mount helpers expect: the command returns
//! only once the mount is live (exit 0), or with the reason it is not (exit 1).
//!
//! `daemonize` forks BEFORE any thread exists (no tokio yet). The parent keeps
//! the read end of a pipe and waits; the child starts a new session, moves to
//! `/`, points stdin/stdout at /dev/null and stderr at the log file (or
//! /dev/null), and later writes either `OK` or its error message through the
//! write end. EOF without a message means the child died; the parent says so.
//!
//! Invariant: after the child reports ready, nothing it does reaches the
//! caller's terminal.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use nix::fcntl::OFlag;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

const READY: &str = "OK\n";

/// The child's end of the pipe to the waiting parent.
pub struct ReadyPipe(File);

impl ReadyPipe {
    /// Tells the parent the mount is live; it exits 0.
    pub fn ready(mut self) {
        let _ = self.0.write_all(READY.as_bytes());
    }

    /// Tells the parent why the mount failed; it prints this and exits 1.
    pub fn fail(mut self, msg: &str) {
        let _ = self.0.write_all(msg.as_bytes());
    }
}

/// Forks. Returns in the child only; the parent exits with the child's verdict.
/// `log` (already open) becomes the child's stderr, so panics reach it.
pub fn daemonize(log: Option<&File>) -> Result<ReadyPipe, String> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the process is single-threaded here (no runtime, no threads yet),
    // so the child may run arbitrary code after fork.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Parent { child } => {
            drop(w);
            let mut msg = String::new();
            let _ = File::from(r).read_to_string(&mut msg);
            if msg == READY {
                std::process::exit(0);
            }
            if msg.is_empty() {
                let how = match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
                    Ok(WaitStatus::Signaled(_, sig, _)) => format!("was killed by {sig}"),
                    _ => "exited".to_string(),
                };
                msg = format!("the weftfs background process {how} before the mount was ready");
            }
            eprintln!("weftfs: {}", msg.trim_end());
            std::process::exit(1);
        }
        ForkResult::Child => {
            drop(r);
            let _ = nix::unistd::setsid();
            let _ = std::env::set_current_dir("/");
            redirect_stdio(log);
            Ok(ReadyPipe(File::from(w)))
        }
    }
}

fn redirect_stdio(log: Option<&File>) {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let err_target = log.map_or(null.as_raw_fd(), |f| f.as_raw_fd());
    // SAFETY: dup2 on descriptors we own onto the standard ones.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(err_target, 2);
    }
}
