//! Advisory locks through the MDS, so that two mounts exclude each other:
//! fcntl byte-range locks (F_SETLK, F_SETLKW, F_GETLK; OFD locks arrive the
//! same way with the open file as owner) and flock (FUSE_FLOCK_LOCKS: the
//! kernel sends a whole-file lock owned by the open file).
//!
//! F_SETLKW is a retry loop of F_SETLK with backoff. fuser answers the
//! kernel's FUSE_INTERRUPT with ENOSYS, so a waiting request cannot be
//! cancelled that way; instead the loop looks at the waiting thread's pending
//! signals in /proc and gives up with EINTR when one that is not blocked has
//! arrived (the kernel then runs the handler, or kills the process).
//!
//! A background task sends a keepalive so the MDS keeps this session's locks;
//! a mount that dies stops sending it and its locks expire at the MDS.
//! Unmount drops every lock of the session.
//!
//! The kernel sends FUSE_RELEASE (which drops OFD and flock locks) in the
//! background after the last close, so a lock request of another process can
//! reach weftfs right behind it. Both arrive in order on the one reader
//! thread: `release` takes the open file's owners there, synchronously, and
//! marks the inode (`PendingReleases`); lock requests on that inode wait until
//! the MDS has dropped those locks, so a close is seen by every later request.
//!
//! Limitation: fuser does not pass FUSE_LK_FLOCK, so a flock and an fcntl
//! lock on the same file by different owners conflict here (on ext4 the two
//! kinds are independent).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use weft_proto::meta_reply::Result as R;
use weft_proto::meta_request::Op;
use weft_proto::{Caller, Errno, KeepaliveReq, LockInfo, LockReq, ReleaseLocksReq};

use crate::client::Weft;

/// Owners that took locks through this mount, so that close only costs an
/// MDS round trip when there is something to release. The kernel sends the
/// process's owner with every flush (POSIX: any close drops the process's
/// locks on the file); OFD and flock locks belong to the open file, so they
/// are dropped at its release.
#[derive(Default)]
pub struct HeldLocks {
    inner: Mutex<HeldInner>,
}

#[derive(Default)]
struct HeldInner {
    by_ino: HashMap<u64, HashSet<u64>>,
    by_fh: HashMap<u64, HashSet<u64>>,
}

impl HeldLocks {
    fn took(&self, ino: u64, fh: u64, owner: u64) {
        let mut g = self.inner.lock();
        g.by_ino.entry(ino).or_default().insert(owner);
        g.by_fh.entry(fh).or_default().insert(owner);
    }

    /// Forgets `owner` on `ino`; true if it had taken locks there.
    fn forget(&self, ino: u64, owner: u64) -> bool {
        let mut g = self.inner.lock();
        let Some(set) = g.by_ino.get_mut(&ino) else {
            return false;
        };
        let had = set.remove(&owner);
        if set.is_empty() {
            g.by_ino.remove(&ino);
        }
        had
    }

    fn owners_of_fh(&self, fh: u64) -> Vec<u64> {
        self.inner
            .lock()
            .by_fh
            .remove(&fh)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default()
    }
}

/// Inodes whose released locks are not yet dropped at the MDS.
#[derive(Default)]
pub struct PendingReleases {
    count: Mutex<HashMap<u64, usize>>,
    done: tokio::sync::Notify,
}

impl PendingReleases {
    fn begin(&self, ino: u64) {
        *self.count.lock().entry(ino).or_default() += 1;
    }

    fn end(&self, ino: u64) {
        {
            let mut g = self.count.lock();
            if let Some(n) = g.get_mut(&ino) {
                *n -= 1;
                if *n == 0 {
                    g.remove(&ino);
                }
            }
        }
        self.done.notify_waiters();
    }

    fn pending(&self, ino: u64) -> bool {
        self.count.lock().contains_key(&ino)
    }

    /// Returns once no release of `ino` begun before this call is in flight.
    async fn wait(&self, ino: u64) {
        loop {
            let done = self.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self.pending(ino) {
                return;
            }
            done.await;
        }
    }
}

/// The locks a release must drop, taken on the FUSE reader thread in request
/// order (see the module comment); `Weft::finish_release` drops them.
pub struct ReleasedLocks {
    ino: u64,
    owners: Vec<u64>,
}

/// How often the session tells the MDS it is alive (its expiry is 30 s by default).
pub const KEEPALIVE: Duration = Duration::from_secs(5);
const WAIT_MIN: Duration = Duration::from_millis(5);
const WAIT_MAX: Duration = Duration::from_millis(200);

impl Weft {
    #[allow(clippy::too_many_arguments)]
    pub async fn getlk(
        &self,
        c: &Caller,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
    ) -> Result<LockInfo, Errno> {
        self.pending_releases.wait(ino).await;
        let req = LockReq {
            ino,
            owner,
            start,
            end,
            typ,
            pid,
        };
        match self.mds.call(c, Op::Getlk(req)).await? {
            R::Lock(l) => Ok(l),
            _ => Err(Errno::EIO),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn setlk(
        &self,
        c: &Caller,
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        fh: u64,
    ) -> Result<(), Errno> {
        let req = LockReq {
            ino,
            owner,
            start,
            end,
            typ,
            pid,
        };
        self.pending_releases.wait(ino).await;
        let mut wait = WAIT_MIN;
        loop {
            match self.mds.empty(c, Op::Setlk(req)).await {
                Err(e) if e == Errno::EAGAIN && sleep => {
                    if signal_pending(c.pid) {
                        return Err(Errno(libc::EINTR));
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(WAIT_MAX);
                }
                Ok(()) => {
                    if typ != libc::F_UNLCK {
                        self.held_locks.took(ino, fh, owner);
                    }
                    return Ok(());
                }
                r => return r,
            }
        }
    }

    /// flush (every close): drops the closing process's locks on `ino`.
    pub async fn unlock_on_flush(&self, c: &Caller, ino: u64, owner: u64) -> Result<(), Errno> {
        if !self.held_locks.forget(ino, owner) {
            return Ok(());
        }
        self.release_locks(c, ino, owner).await
    }

    /// release (last close of an open file), on the FUSE reader thread: ends
    /// an execve handle's hold on the program (no ETXTBSY past this point),
    /// takes the locks owned by the open file itself (OFD, flock) and by
    /// `owner` if the kernel names one, and holds back lock requests on `ino`
    /// until `finish_release` has dropped them.
    pub fn begin_release(&self, ino: u64, fh: u64, owner: Option<u64>) -> Option<ReleasedLocks> {
        self.files.end_exec(fh);
        let mut owners = self.held_locks.owners_of_fh(fh);
        owners.extend(owner);
        owners.retain(|&o| self.held_locks.forget(ino, o));
        if owners.is_empty() {
            return None;
        }
        self.pending_releases.begin(ino);
        Some(ReleasedLocks { ino, owners })
    }

    /// Drops at the MDS the locks `begin_release` took.
    pub async fn finish_release(&self, c: &Caller, r: ReleasedLocks) -> Result<(), Errno> {
        let mut result = Ok(());
        for &o in &r.owners {
            if let Err(e) = self.release_locks(c, r.ino, o).await {
                result = Err(e);
            }
        }
        self.pending_releases.end(r.ino);
        result
    }

    /// Drops `owner`'s locks on `ino`.
    async fn release_locks(&self, c: &Caller, ino: u64, owner: u64) -> Result<(), Errno> {
        let req = ReleaseLocksReq {
            ino,
            owner,
            all: false,
        };
        self.mds.empty(c, Op::ReleaseLocks(req)).await
    }

    /// Drops every lock this mount holds (unmount).
    pub async fn release_all_locks(&self) -> Result<(), Errno> {
        let req = ReleaseLocksReq {
            all: true,
            ..Default::default()
        };
        let c = Caller::default();
        self.mds.empty(&c, Op::ReleaseLocks(req)).await
    }

    /// Keeps this session's locks alive at the MDS while the mount lives.
    pub fn start_keepalive(self: &Arc<Self>) {
        let w = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(KEEPALIVE);
            loop {
                tick.tick().await;
                let Some(w) = w.upgrade() else { return };
                let c = Caller::default();
                if let Err(e) = w.mds.empty(&c, Op::Keepalive(KeepaliveReq {})).await {
                    tracing::warn!(error = %e, "lock keepalive failed");
                }
            }
        });
    }
}

/// True when thread `pid` has a signal pending that it does not block.
fn signal_pending(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        // The thread is gone: nobody waits for this lock any more.
        return true;
    };
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = field("SigPnd:") | field("ShdPnd:");
    pending & !field("SigBlk:") != 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_thread_has_no_pending_signal() {
        assert!(!super::signal_pending(std::process::id()));
        assert!(super::signal_pending(u32::MAX - 1));
    }
}
