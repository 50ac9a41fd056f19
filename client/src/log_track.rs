//! Which of this mount's metadata changes may not be on disk at the MDS yet.
//!
//! The MDS answers a change once it is in its log and fdatasyncs right behind
//! (early replies). Each reply says where the log stood (`log_index`, at or
//! past the change) and how far it is on disk (`durable_index`), within a
//! `log_epoch` that changes at every MDS start. fsync and close wait until
//! the log is on disk past the mount's own change (`SyncLog`), and skip the
//! call when a reply already said so. Pure: no I/O.
//!
//! Invariants: an inode is listed in `by_ino` only while its latest change by
//! this mount is not known to be on disk; `latest` holds, per epoch, the
//! highest index of a change by this mount not known to be on disk. Positions
//! of an earlier epoch stay until a SyncLog for them is answered (the
//! restarted MDS says whether it recovered them).

use std::collections::HashMap;

/// A position in the MDS log: (epoch, index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPos {
    pub epoch: u64,
    pub index: u64,
}

#[derive(Default)]
pub struct LogTrack {
    /// The epoch of the newest reply and how far its log is known on disk.
    epoch: u64,
    durable: u64,
    by_ino: HashMap<u64, LogPos>,
    latest: HashMap<u64, u64>,
    /// Prune `by_ino` when it grows past this.
    prune_at: usize,
}

const PRUNE_MIN: usize = 1024;

impl LogTrack {
    /// A reply from the MDS: its epoch and durable index (and, for a change,
    /// the inodes it touched and its position).
    pub fn reply(&mut self, epoch: u64, log_index: u64, durable: u64, touched: &[u64]) {
        if epoch == 0 {
            return; // an MDS without early replies: every change was on disk
        }
        if epoch != self.epoch {
            self.epoch = epoch;
            self.durable = 0;
        }
        self.durable = self.durable.max(durable);
        if !touched.is_empty() && log_index > self.durable {
            let pos = LogPos {
                epoch,
                index: log_index,
            };
            for &ino in touched {
                let e = self.by_ino.entry(ino).or_insert(pos);
                if e.epoch != epoch || e.index < log_index {
                    *e = pos;
                }
            }
            let l = self.latest.entry(epoch).or_insert(0);
            *l = (*l).max(log_index);
        }
        self.prune_if_big();
    }

    /// Where the log must be on disk for `ino`'s changes by this mount, if
    /// it is not known to be.
    pub fn pending_for(&self, ino: u64) -> Option<LogPos> {
        self.by_ino
            .get(&ino)
            .copied()
            .filter(|p| !self.is_durable(*p))
    }

    /// Every position to wait for so that all of this mount's changes are on
    /// disk (one per epoch).
    pub fn pending_all(&self) -> Vec<LogPos> {
        self.latest
            .iter()
            .map(|(&epoch, &index)| LogPos { epoch, index })
            .filter(|p| !self.is_durable(*p))
            .collect()
    }

    /// The MDS answered a SyncLog for `pos`: it is on disk.
    pub fn synced(&mut self, pos: LogPos) {
        if pos.epoch == self.epoch {
            self.durable = self.durable.max(pos.index);
        } else {
            // An earlier epoch: what it held up to `pos` survived the restart.
            self.by_ino
                .retain(|_, p| !(p.epoch == pos.epoch && p.index <= pos.index));
            if self.latest.get(&pos.epoch).is_some_and(|&l| l <= pos.index) {
                self.latest.remove(&pos.epoch);
            }
        }
        self.prune();
    }

    /// The MDS said `ino`'s change was lost (EIO): the caller reports it once.
    pub fn lost_ino(&mut self, ino: u64) {
        self.by_ino.remove(&ino);
    }

    /// The MDS said `pos` (from `pending_all`) was lost: the caller reports
    /// it once. Inodes of that epoch stay listed, each to be reported at its
    /// own close or fsync.
    pub fn lost_all(&mut self, pos: LogPos) {
        self.latest.remove(&pos.epoch);
    }

    fn is_durable(&self, p: LogPos) -> bool {
        p.epoch == self.epoch && p.index <= self.durable
    }

    fn prune_if_big(&mut self) {
        if self.by_ino.len() >= self.prune_at.max(PRUNE_MIN) {
            self.prune();
        }
    }

    fn prune(&mut self) {
        let (epoch, durable) = (self.epoch, self.durable);
        self.by_ino
            .retain(|_, p| !(p.epoch == epoch && p.index <= durable));
        if self.latest.get(&epoch).is_some_and(|&l| l <= durable) {
            self.latest.remove(&epoch);
        }
        self.prune_at = 2 * self.by_ino.len();
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.by_ino.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(epoch: u64, index: u64) -> LogPos {
        LogPos { epoch, index }
    }

    #[test]
    fn change_is_pending_until_a_reply_says_durable() {
        let mut t = LogTrack::default();
        t.reply(7, 10, 8, &[100, 1]);
        assert_eq!(t.pending_for(100), Some(pos(7, 10)));
        assert_eq!(t.pending_for(1), Some(pos(7, 10)));
        assert_eq!(t.pending_for(200), None);
        assert_eq!(t.pending_all(), vec![pos(7, 10)]);
        // Another inode's later change does not move 100's position.
        t.reply(7, 12, 9, &[200]);
        assert_eq!(t.pending_for(100), Some(pos(7, 10)));
        assert_eq!(t.pending_all(), vec![pos(7, 12)]);
        // A read's reply carrying durable 10 settles 100 but not 200.
        t.reply(7, 12, 10, &[]);
        assert_eq!(t.pending_for(100), None);
        assert_eq!(t.pending_for(200), Some(pos(7, 12)));
        t.synced(pos(7, 12));
        assert_eq!(t.pending_for(200), None);
        assert!(t.pending_all().is_empty());
    }

    #[test]
    fn a_change_already_durable_is_not_tracked() {
        let mut t = LogTrack::default();
        t.reply(7, 10, 10, &[5]);
        assert_eq!(t.pending_for(5), None);
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn positions_of_an_earlier_epoch_wait_for_the_restarted_mds() {
        let mut t = LogTrack::default();
        t.reply(7, 10, 8, &[100]);
        // The MDS restarted; the new epoch's indexes say nothing about epoch 7.
        t.reply(9, 50, 50, &[]);
        assert_eq!(t.pending_for(100), Some(pos(7, 10)));
        assert_eq!(t.pending_all(), vec![pos(7, 10)]);
        t.synced(pos(7, 10));
        assert_eq!(t.pending_for(100), None);
        assert!(t.pending_all().is_empty());

        t.reply(9, 60, 55, &[101]);
        t.reply(11, 3, 3, &[]);
        // The MDS did not recover it: reported once to fsync, once to 101's close.
        t.lost_all(pos(9, 60));
        assert!(t.pending_all().is_empty());
        assert_eq!(t.pending_for(101), Some(pos(9, 60)));
        t.lost_ino(101);
        assert_eq!(t.pending_for(101), None);
    }

    #[test]
    fn epoch_zero_means_every_change_was_durable() {
        let mut t = LogTrack::default();
        t.reply(0, 0, 0, &[5]);
        assert_eq!(t.pending_for(5), None);
        assert!(t.pending_all().is_empty());
    }

    #[test]
    fn memory_stays_bounded_while_the_log_keeps_up() {
        let mut t = LogTrack::default();
        for i in 1..100_000u64 {
            // Each reply says the previous change is on disk.
            t.reply(3, i, i - 1, &[i]);
        }
        assert!(t.tracked() <= 2 * PRUNE_MIN, "{}", t.tracked());
        assert_eq!(t.pending_for(99_999), Some(pos(3, 99_999)));
        assert_eq!(t.pending_for(5), None);
    }
}
