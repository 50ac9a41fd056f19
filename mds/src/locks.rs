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
//! locks at the next lock operation.
//!
//! A single MDS holds them in memory only (`LockTable`): after its restart
//! there are none, as after an NFS server reboot without a grace period. An
//! MDS group replicates them: each change is a log entry (`LockChange`,
//! applied to `Locks` in the state on every node alike, carried in
//! snapshots), so a lock held through a failover stays held. Expiry there is
//! the leader's decision, logged as a `ReleaseSession` (a new leader counts
//! every lock holder's `expiry` from its election), and a session's expiry
//! (`Request::Expire`) drops its locks too.
//!
//! Invariant: no two locks held in the table conflict.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use weft_proto::Errno;

pub const F_RDLCK: i32 = libc::F_RDLCK;
pub const F_WRLCK: i32 = libc::F_WRLCK;
pub const F_UNLCK: i32 = libc::F_UNLCK;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// One change to the lock table, as an MDS group's log carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockChange {
    /// F_SETLK/F_SETLKW (F_UNLCK included) of one owner over [start, end].
    Set {
        ino: u64,
        owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
    },
    /// Every lock of one owner on one file (close, flock release).
    Release { ino: u64, owner: u64 },
    /// Every lock of the session (unmount, or its locks expired).
    ReleaseSession,
}

/// The locks held, without clocks: a pure function of the changes applied
/// in order, so every node of an MDS group that applies the same changes
/// holds the same locks (and a snapshot carries them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locks {
    files: BTreeMap<u64, Vec<Lock>>,
}

fn lock_kind(typ: i32) -> Result<Option<bool>, Errno> {
    match typ {
        F_RDLCK => Ok(Some(false)),
        F_WRLCK => Ok(Some(true)),
        F_UNLCK => Ok(None),
        _ => Err(Errno::EINVAL),
    }
}

impl Locks {
    /// F_GETLK: the first lock that would block (session, owner) from taking
    /// `typ` over [start, end], if any.
    pub fn test(
        &self,
        ino: u64,
        session: u64,
        owner: u64,
        (start, end): (u64, u64),
        typ: i32,
    ) -> Result<Option<Lock>, Errno> {
        check_range(start, end)?;
        match lock_kind(typ)? {
            Some(write) => Ok(self.conflict(ino, session, owner, start, end, write)),
            None => Err(Errno::EINVAL),
        }
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

    /// Whether `session` holds any lock (of `owner`, on `ino`, when given):
    /// a release of nothing changes nothing and need not be logged.
    pub fn holds(&self, session: u64, ino: Option<u64>, owner: Option<u64>) -> bool {
        let mine = |l: &Lock| l.session == session && owner.is_none_or(|o| l.owner == o);
        match ino {
            Some(ino) => self
                .files
                .get(&ino)
                .is_some_and(|locks| locks.iter().any(mine)),
            None => self.files.values().flatten().any(mine),
        }
    }

    /// Sessions holding locks.
    pub fn sessions(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.files.values().flatten().map(|l| l.session).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Applies one change of `session`: EAGAIN on a conflict (nothing
    /// changes), EINVAL for a bad range or type.
    pub fn apply(&mut self, session: u64, change: &LockChange) -> Result<(), Errno> {
        match *change {
            LockChange::Set {
                ino,
                owner,
                start,
                end,
                typ,
                pid,
            } => self.set(ino, session, owner, (start, end), typ, pid),
            LockChange::Release { ino, owner } => {
                self.release(session, Some(ino), Some(owner));
                Ok(())
            }
            LockChange::ReleaseSession => {
                self.release(session, None, None);
                Ok(())
            }
        }
    }

    /// F_SETLK: takes, converts or releases; EAGAIN on a conflict (the
    /// client retries for F_SETLKW).
    pub fn set(
        &mut self,
        ino: u64,
        session: u64,
        owner: u64,
        (start, end): (u64, u64),
        typ: i32,
        pid: u32,
    ) -> Result<(), Errno> {
        check_range(start, end)?;
        let write = lock_kind(typ)?;
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
            _ => self.files.retain(|_, locks| {
                locks.retain(|l| l.session != session);
                !locks.is_empty()
            }),
        }
    }

    pub fn held(&self) -> usize {
        self.files.values().map(Vec::len).sum()
    }
}

/// A single MDS's lock table (the locks in memory, with when each session
/// was last heard from), and in an MDS group the leader's clock for the
/// sessions holding the group's locks (its `locks` stay empty there).
pub struct LockTable {
    locks: Locks,
    /// Last time each session holding locks was heard from.
    seen: HashMap<u64, Instant>,
    expiry: Duration,
}

impl LockTable {
    pub fn new(expiry: Duration) -> LockTable {
        LockTable {
            locks: Locks::default(),
            seen: HashMap::new(),
            expiry,
        }
    }

    /// The session is alive (any lock request or keepalive says so).
    pub fn touch(&mut self, session: u64, now: Instant) {
        self.seen.insert(session, now);
    }

    /// Sessions silent for longer than `expiry`, forgotten here (their
    /// locks in this table dropped).
    pub fn take_expired(&mut self, now: Instant) -> Vec<u64> {
        let expiry = self.expiry;
        let dead: Vec<u64> = self
            .seen
            .iter()
            .filter(|(_, at)| now.duration_since(**at) > expiry)
            .map(|(s, _)| *s)
            .collect();
        for s in &dead {
            tracing::info!(session = s, "session expired: releasing its locks");
            self.release_session(*s);
        }
        dead
    }

    /// F_GETLK, as `Locks::test`, after dropping expired sessions' locks.
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
        self.take_expired(now);
        self.locks.test(ino, session, owner, (start, end), typ)
    }

    /// F_SETLK, as `Locks::set`, after dropping expired sessions' locks.
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
        self.take_expired(now);
        self.locks.set(ino, session, owner, (start, end), typ, pid)
    }

    /// Drops the locks of one owner on one file (close, flock release), or
    /// with `owner` None every lock of the session (unmount).
    pub fn release(&mut self, session: u64, ino: Option<u64>, owner: Option<u64>) {
        match (ino, owner) {
            (Some(_), Some(_)) => self.locks.release(session, ino, owner),
            _ => self.release_session(session),
        }
    }

    fn release_session(&mut self, session: u64) {
        self.locks.release(session, None, None);
        self.seen.remove(&session);
    }

    pub fn held(&self) -> usize {
        self.locks.held()
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

    #[test]
    fn changes_apply_alike_and_releases_know_what_is_held() {
        let changes = [
            (
                1,
                LockChange::Set {
                    ino: 5,
                    owner: 7,
                    start: 0,
                    end: E,
                    typ: F_WRLCK,
                    pid: 1,
                },
            ),
            (
                2,
                LockChange::Set {
                    ino: 5,
                    owner: 8,
                    start: 0,
                    end: 0,
                    typ: F_RDLCK,
                    pid: 2,
                },
            ),
            (
                2,
                LockChange::Set {
                    ino: 6,
                    owner: 8,
                    start: 0,
                    end: E,
                    typ: F_RDLCK,
                    pid: 2,
                },
            ),
        ];
        let run = || {
            let mut l = Locks::default();
            let answers: Vec<_> = changes.iter().map(|(s, c)| l.apply(*s, c)).collect();
            (l, answers)
        };
        let (mut a, answers) = run();
        assert_eq!(answers, vec![Ok(()), Err(Errno::EAGAIN), Ok(())]);
        assert_eq!(a, run().0, "the same changes make the same table");
        assert_eq!(a.sessions(), vec![1, 2]);
        assert!(a.holds(1, Some(5), Some(7)) && !a.holds(1, Some(5), Some(8)));
        assert!(a.holds(2, None, None) && !a.holds(2, Some(5), None));
        a.apply(1, &LockChange::ReleaseSession).unwrap();
        assert_eq!(a.sessions(), vec![2]);
        a.apply(2, &LockChange::Release { ino: 6, owner: 8 })
            .unwrap();
        assert_eq!(a.held(), 0);
    }
}
