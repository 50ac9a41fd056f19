//! Cluster-wide advisory locks: fcntl byte-range locks (F_SETLK, F_SETLKW,
//! F_GETLK) and flock, held in the MDS's memory so that two mounts on two
//! hosts exclude each other.
//!
//! A lock belongs to an owner = (client session, the kernel's lock_owner),
//! covers an inclusive byte range and is shared (read) or exclusive (write).
//! Two locks conflict when their owners differ, their ranges overlap and one
//! is exclusive. Setting a lock replaces the owner's own locks over that
//! range (POSIX: a lock converts or splits the owner's existing ones);
//! unlocking removes them, splitting at the edges.
//!
//! Lifetime: the kernel unlocks on close and on the owner's exit (which
//! arrive as unlock requests), weftfs drops all of its session's locks when
//! it unmounts, and a session that has not been heard from for `expiry`
//! (a mount that died: weftfs sends a keepalive every few seconds) loses its
//! locks at the next lock operation. Locks are not journaled: after an MDS
//! restart there are none, as after an NFS server reboot without a grace
//! period (documented in docs/posix.md).
//!
//! Invariant: no two locks held in the table conflict.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weft_proto::Errno;

pub const F_RDLCK: i32 = libc::F_RDLCK;
pub const F_WRLCK: i32 = libc::F_WRLCK;
pub const F_UNLCK: i32 = libc::F_UNLCK;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub session: u64,
    pub owner: u64,
    /// Inclusive range.
    pub start: u64,
    pub end: u64,
    pub write: bool,
    pub pid: u32,
}

impl Lock {
    fn same_owner(&self, session: u64, owner: u64) -> bool {
        self.session == session && self.owner == owner
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }
}

pub struct LockTable {
    files: HashMap<u64, Vec<Lock>>,
    /// Last time each session holding locks was heard from.
    seen: HashMap<u64, Instant>,
    expiry: Duration,
}

impl LockTable {
    pub fn new(expiry: Duration) -> LockTable {
        LockTable {
            files: HashMap::new(),
            seen: HashMap::new(),
            expiry,
        }
    }

    /// The session is alive (any lock request or keepalive says so).
    pub fn touch(&mut self, session: u64, now: Instant) {
        self.seen.insert(session, now);
    }

    /// Drops every lock of sessions silent for longer than `expiry`.
    fn expire(&mut self, now: Instant) {
        let expiry = self.expiry;
        let dead: Vec<u64> = self
            .seen
            .iter()
            .filter(|(_, at)| now.duration_since(**at) > expiry)
            .map(|(s, _)| *s)
            .collect();
        for s in dead {
            tracing::info!(session = s, "session expired: releasing its locks");
            self.release_session(s);
        }
    }

    /// F_GETLK: the first lock that would block (session, owner) from taking
    /// `typ` over [start, end], if any.
    #[allow(clippy::too_many_arguments)]
    pub fn test(
        &mut self,
        now: Instant,
        ino: u64,
        session: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
    ) -> Result<Option<Lock>, Errno> {
        check_range(start, end)?;
        self.touch(session, now);
        self.expire(now);
        let write = match typ {
            F_RDLCK => false,
            F_WRLCK => true,
            _ => return Err(Errno::EINVAL),
        };
        Ok(self.conflict(ino, session, owner, start, end, write))
    }

    fn conflict(
        &self,
        ino: u64,
        session: u64,
        owner: u64,
        start: u64,
        end: u64,
        write: bool,
    ) -> Option<Lock> {
        self.files.get(&ino).and_then(|locks| {
            locks
                .iter()
                .find(|l| {
                    !l.same_owner(session, owner) && l.overlaps(start, end) && (write || l.write)
                })
                .copied()
        })
    }

    /// F_SETLK: takes, converts or releases; EAGAIN on a conflict (the
    /// client retries for F_SETLKW).
    #[allow(clippy::too_many_arguments)]
    pub fn set(
        &mut self,
        now: Instant,
        ino: u64,
        session: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
    ) -> Result<(), Errno> {
        check_range(start, end)?;
        self.touch(session, now);
        self.expire(now);
        let write = match typ {
            F_RDLCK => Some(false),
            F_WRLCK => Some(true),
            F_UNLCK => None,
            _ => return Err(Errno::EINVAL),
        };
        if let Some(write) = write {
            if self
                .conflict(ino, session, owner, start, end, write)
                .is_some()
            {
                return Err(Errno::EAGAIN);
            }
        }
        let locks = self.files.entry(ino).or_default();
        // Cut the owner's own locks out of [start, end], keeping the edges.
        let mut kept = Vec::with_capacity(locks.len() + 1);
        for l in locks.drain(..) {
            if !l.same_owner(session, owner) || !l.overlaps(start, end) {
                kept.push(l);
                continue;
            }
            if l.start < start {
                kept.push(Lock {
                    end: start - 1,
                    ..l
                });
            }
            if l.end > end {
                kept.push(Lock {
                    start: end + 1,
                    ..l
                });
            }
        }
        if let Some(write) = write {
            kept.push(Lock {
                session,
                owner,
                start,
                end,
                write,
                pid,
            });
        }
        if kept.is_empty() {
            self.files.remove(&ino);
        } else {
            *locks = kept;
        }
        Ok(())
    }

    /// Drops the locks of one owner on one file (close, flock release), or
    /// with `owner` None every lock of the session (unmount).
    pub fn release(&mut self, session: u64, ino: Option<u64>, owner: Option<u64>) {
        match (ino, owner) {
            (Some(ino), Some(owner)) => {
                if let Some(locks) = self.files.get_mut(&ino) {
                    locks.retain(|l| !l.same_owner(session, owner));
                    if locks.is_empty() {
                        self.files.remove(&ino);
                    }
                }
            }
            _ => self.release_session(session),
        }
    }

    fn release_session(&mut self, session: u64) {
        self.files.retain(|_, locks| {
            locks.retain(|l| l.session != session);
            !locks.is_empty()
        });
        self.seen.remove(&session);
    }

    pub fn held(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }
}

fn check_range(start: u64, end: u64) -> Result<(), Errno> {
    if start > end {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: u64 = u64::MAX;

    fn t() -> (LockTable, Instant) {
        (LockTable::new(Duration::from_secs(30)), Instant::now())
    }

    #[test]
    fn readers_share_writers_exclude() {
        let (mut lt, now) = t();
        lt.set(now, 7, 1, 10, 0, E, F_RDLCK, 100).unwrap();
        lt.set(now, 7, 2, 20, 0, 99, F_RDLCK, 200).unwrap();
        assert_eq!(
            lt.set(now, 7, 2, 20, 50, 60, F_WRLCK, 200),
            Err(Errno::EAGAIN)
        );
        let c = lt.test(now, 7, 3, 30, 0, 0, F_WRLCK).unwrap().unwrap();
        assert_eq!((c.session, c.pid), (1, 100));
        // Another file is independent; the same owner converts freely.
        lt.set(now, 8, 2, 20, 0, E, F_WRLCK, 200).unwrap();
        lt.set(now, 7, 1, 10, 0, E, F_UNLCK, 100).unwrap();
        lt.set(now, 7, 2, 20, 50, 60, F_WRLCK, 200).unwrap();
    }

    #[test]
    fn unlock_splits_and_ranges_are_inclusive() {
        let (mut lt, now) = t();
        lt.set(now, 1, 1, 1, 0, 99, F_WRLCK, 1).unwrap();
        lt.set(now, 1, 1, 1, 40, 59, F_UNLCK, 1).unwrap();
        assert_eq!(lt.held(), 2);
        assert!(lt.test(now, 1, 2, 2, 40, 59, F_WRLCK).unwrap().is_none());
        assert!(lt.test(now, 1, 2, 2, 39, 39, F_WRLCK).unwrap().is_some());
        assert!(lt.test(now, 1, 2, 2, 60, 60, F_RDLCK).unwrap().is_some());
        assert!(lt.test(now, 1, 2, 2, 100, E, F_WRLCK).unwrap().is_none());
        assert_eq!(lt.set(now, 1, 1, 1, 5, 4, F_WRLCK, 1), Err(Errno::EINVAL));
    }

    #[test]
    fn release_by_owner_session_and_expiry() {
        let (mut lt, now) = t();
        lt.set(now, 1, 1, 1, 0, E, F_WRLCK, 1).unwrap();
        lt.set(now, 2, 1, 2, 0, E, F_WRLCK, 1).unwrap();
        lt.set(now, 3, 2, 1, 0, E, F_WRLCK, 1).unwrap();
        lt.release(1, Some(1), Some(1));
        assert_eq!(lt.held(), 2);
        lt.release(1, None, None);
        assert_eq!(lt.held(), 1);
        // Session 2 goes silent; session 3's request past the expiry frees the file.
        let later = now + Duration::from_secs(31);
        lt.set(later, 3, 3, 1, 0, E, F_WRLCK, 1).unwrap();
        assert_eq!(lt.held(), 1);
        // A live session keeps its lock.
        assert_eq!(lt.set(later, 3, 4, 1, 0, E, F_RDLCK, 1), Err(Errno::EAGAIN));
    }
}
