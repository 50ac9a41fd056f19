//! The order in which a chunk's mutations touch a replica: the primary's
//! serial numbers (GFS).
//!
//! The primary (the head of a lease's pipeline, where the client sends its
//! writes) numbers each chunk's mutations 1, 2, 3… per lease epoch (`assign`,
//! a short lock, nothing held across the forward) and sends the number down
//! the chain with the mutation. Every replica, the primary included, lets
//! serial n touch its copy only once n-1 has (`enter`), so all replicas apply
//! the same mutations in the same order and hold identical bytes. A hop waits
//! only for its own earlier serials, which its upstream sent before this one:
//! no hop ever waits on a downstream one, so a reordered chain cannot deadlock.
//!
//! Epochs: a newer epoch (a new lease: maybe another primary, another chain
//! order) starts a new sequence and fails the older epoch's waiters as stale;
//! an older epoch is refused. A gap that stays open for the gap timeout —
//! nothing applying, nothing applied meanwhile: the upstream hop lost a
//! mutation — breaks the epoch on this replica, since this copy missed one:
//! its waiters and later arrivals fail (UNAVAILABLE, naming this replica), and
//! the writer gets a new lease without it from the MDS.
//!
//! `ChunkSeq` is the pure per-chunk state machine (time is passed in);
//! `Sequencer` adds the waiting, per chunk, with a `Notify`.

use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a gap in the serials may stay open before the epoch is broken.
pub const GAP_TIMEOUT: Duration = Duration::from_secs(5);

/// A chunk idle this long is forgotten: its lease (at most a few minutes
/// without writes) has expired, so the next write brings a new epoch.
const IDLE_FORGET: Duration = Duration::from_secs(600);
/// The map is first swept for idle chunks once it holds this many; then
/// whenever it has doubled since the last sweep.
const SWEEP_AT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeqError {
    /// A newer lease epoch has been seen for this chunk.
    Stale { current: u64, got: u64 },
    /// This serial already applied or is already waiting in this epoch.
    Duplicate { epoch: u64, serial: u64 },
    /// Serial `missing` of `epoch` never came: this replica cannot apply
    /// later ones in order.
    Broken { epoch: u64, missing: u64 },
}

impl std::fmt::Display for SeqError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeqError::Stale { current, got } => {
                write!(f, "stale lease epoch {got} (epoch {current} seen)")
            }
            SeqError::Duplicate { epoch, serial } => {
                write!(f, "serial {serial} of epoch {epoch} seen twice")
            }
            SeqError::Broken { epoch, missing } => write!(
                f,
                "serial {missing} of epoch {epoch} never arrived: this replica missed a mutation"
            ),
        }
    }
}

/// What an arriving or re-checking mutation may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Its turn: apply, then `done`.
    Go,
    /// Earlier serials first.
    Wait,
}

/// One chunk's ordering state in its current epoch.
#[derive(Debug)]
pub struct ChunkSeq {
    epoch: u64,
    /// Last serial handed out (on the primary).
    assigned: u64,
    /// Serials 1..=applied have had their turn.
    applied: u64,
    /// The serial applying now (always applied + 1).
    holder: Option<u64>,
    waiting: BTreeSet<u64>,
    /// Set when a gap timed out: the serial that never came.
    broken: Option<u64>,
    last_progress: Instant,
}

impl ChunkSeq {
    pub fn new(epoch: u64, now: Instant) -> ChunkSeq {
        ChunkSeq {
            epoch,
            assigned: 0,
            applied: 0,
            holder: None,
            waiting: BTreeSet::new(),
            broken: None,
            last_progress: now,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Refuses an older epoch; a newer one starts a new sequence. Returns
    /// whether it did (the old epoch's waiters must be woken to fail).
    pub fn observe(&mut self, epoch: u64, now: Instant) -> Result<bool, SeqError> {
        if epoch < self.epoch {
            return Err(SeqError::Stale {
                current: self.epoch,
                got: epoch,
            });
        }
        if epoch > self.epoch {
            *self = ChunkSeq::new(epoch, now);
            return Ok(true);
        }
        Ok(false)
    }

    /// The primary's next serial for `epoch` (after `observe`): past every
    /// serial seen here, so a replica that was a secondary in this epoch and
    /// now acts as head (a zombie primary of an old lease) never reuses one.
    pub fn assign(&mut self) -> u64 {
        let seen = [
            self.assigned,
            self.applied,
            self.holder.unwrap_or(0),
            self.waiting.last().copied().unwrap_or(0),
        ];
        self.assigned = seen.into_iter().max().unwrap_or(0) + 1;
        self.assigned
    }

    /// A mutation `serial` of the current epoch arrives (after `observe`).
    pub fn arrive(&mut self, serial: u64, now: Instant) -> Result<Step, SeqError> {
        if serial <= self.applied || self.holder == Some(serial) || self.waiting.contains(&serial) {
            return Err(SeqError::Duplicate {
                epoch: self.epoch,
                serial,
            });
        }
        self.waiting.insert(serial);
        self.poll(self.epoch, serial, now)
    }

    /// Whether waiting `serial` of `epoch` may go now.
    pub fn poll(&mut self, epoch: u64, serial: u64, _now: Instant) -> Result<Step, SeqError> {
        if epoch != self.epoch {
            return Err(SeqError::Stale {
                current: self.epoch,
                got: epoch,
            });
        }
        if let Some(missing) = self.broken {
            self.waiting.remove(&serial);
            return Err(SeqError::Broken { epoch, missing });
        }
        if self.holder.is_none() && serial == self.applied + 1 {
            self.waiting.remove(&serial);
            self.holder = Some(serial);
            return Ok(Step::Go);
        }
        Ok(Step::Wait)
    }

    /// `serial` of `epoch` finished (applied or failed: its turn is used up
    /// either way, as on every other replica). Returns whether someone may go.
    pub fn done(&mut self, epoch: u64, serial: u64, now: Instant) -> bool {
        if epoch != self.epoch || self.holder != Some(serial) {
            return false;
        }
        self.holder = None;
        self.applied = serial;
        self.last_progress = now;
        self.waiting.contains(&(serial + 1))
    }

    /// A waiter's timer fired: is the gap still open after `timeout` of no
    /// progress? Returns how much longer to wait, or breaks the epoch (every
    /// waiter must be woken to fail).
    pub fn gap(&mut self, epoch: u64, now: Instant, timeout: Duration) -> Option<Duration> {
        if epoch != self.epoch || self.broken.is_some() {
            return Some(Duration::ZERO);
        }
        if self.holder.is_some() {
            return Some(timeout);
        }
        let quiet = now.saturating_duration_since(self.last_progress);
        if quiet < timeout {
            return Some(timeout - quiet);
        }
        self.broken = Some(self.applied + 1);
        None
    }

    fn idle(&self) -> bool {
        self.holder.is_none() && self.waiting.is_empty()
    }
}

struct Slot {
    seq: ChunkSeq,
    wake: Arc<Notify>,
}

#[derive(Default)]
struct Slots {
    map: HashMap<u64, Slot>,
    sweep_at: usize,
}

/// The ordering state of every chunk this daemon is writing.
pub struct Sequencer {
    chunks: Mutex<Slots>,
    gap_timeout: Duration,
}

impl Default for Sequencer {
    fn default() -> Self {
        Sequencer::new(GAP_TIMEOUT)
    }
}

/// Holding this is `serial`'s turn on the chunk; dropping it passes the turn on.
pub struct Turn<'a> {
    seq: &'a Sequencer,
    chunk: u64,
    epoch: u64,
    serial: u64,
}

impl Sequencer {
    pub fn new(gap_timeout: Duration) -> Sequencer {
        Sequencer {
            chunks: Mutex::new(Slots {
                map: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
            gap_timeout,
        }
    }

    fn slot(slots: &mut Slots, chunk: u64, epoch: u64) -> &mut Slot {
        if slots.map.len() >= slots.sweep_at && !slots.map.contains_key(&chunk) {
            let now = Instant::now();
            slots.map.retain(|_, s| {
                !(s.seq.idle() && now.saturating_duration_since(s.seq.last_progress) > IDLE_FORGET)
            });
            slots.sweep_at = (slots.map.len() * 2).max(SWEEP_AT);
        }
        slots.map.entry(chunk).or_insert_with(|| Slot {
            seq: ChunkSeq::new(epoch, Instant::now()),
            wake: Arc::new(Notify::new()),
        })
    }

    /// Moves `chunk` to `epoch` if newer (a new lease was adopted), failing
    /// older epochs' waiters; an older epoch is stale.
    pub fn observe(&self, chunk: u64, epoch: u64) -> Result<(), SeqError> {
        let mut map = self.chunks.lock();
        let slot = Self::slot(&mut map, chunk, epoch);
        if slot.seq.observe(epoch, Instant::now())? {
            slot.wake.notify_waiters();
        }
        Ok(())
    }

    /// The primary's serial for its next mutation of `chunk` in `epoch`.
    pub fn assign(&self, chunk: u64, epoch: u64) -> Result<u64, SeqError> {
        let mut map = self.chunks.lock();
        let slot = Self::slot(&mut map, chunk, epoch);
        if slot.seq.observe(epoch, Instant::now())? {
            slot.wake.notify_waiters();
        }
        Ok(slot.seq.assign())
    }

    /// Waits for `serial`'s turn on `chunk` in `epoch`.
    pub async fn enter(&self, chunk: u64, epoch: u64, serial: u64) -> Result<Turn<'_>, SeqError> {
        // Built only once the turn is ours: its Drop passes the turn on.
        let turn = || Turn {
            seq: self,
            chunk,
            epoch,
            serial,
        };
        let mut wait_for = self.gap_timeout;
        let mut first = true;
        loop {
            let (step, wake) = {
                let mut map = self.chunks.lock();
                let slot = Self::slot(&mut map, chunk, epoch);
                let now = Instant::now();
                let step = if first {
                    if slot.seq.observe(epoch, now)? {
                        slot.wake.notify_waiters();
                    }
                    slot.seq.arrive(serial, now)?
                } else {
                    slot.seq.poll(epoch, serial, now)?
                };
                (step, slot.wake.clone())
            };
            first = false;
            if step == Step::Go {
                return Ok(turn());
            }
            // Registered before the lock is taken again, so no wakeup is lost
            // between the check above and the wait below.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Re-check once: the state may have moved between the lock and enable().
            {
                let mut map = self.chunks.lock();
                let slot = Self::slot(&mut map, chunk, epoch);
                if slot.seq.poll(epoch, serial, Instant::now())? == Step::Go {
                    return Ok(turn());
                }
            }
            if tokio::time::timeout(wait_for, notified).await.is_err() {
                let mut map = self.chunks.lock();
                let slot = Self::slot(&mut map, chunk, epoch);
                match slot.seq.gap(epoch, Instant::now(), self.gap_timeout) {
                    Some(more) => wait_for = more.max(Duration::from_millis(1)),
                    None => {
                        slot.wake.notify_waiters();
                        tracing::warn!(
                            chunk = format_args!("{chunk:016x}"),
                            epoch,
                            serial,
                            "a serial never arrived; this replica drops out of the epoch"
                        );
                    }
                }
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.chunks.lock().map.len()
    }
}

impl Turn<'_> {
    pub fn serial(&self) -> u64 {
        self.serial
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut map = self.seq.chunks.lock();
        if let Some(slot) = map.map.get_mut(&self.chunk) {
            if slot.seq.done(self.epoch, self.serial, Instant::now()) {
                slot.wake.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn pure_in_order_and_out_of_order() {
        let now = t0();
        let mut s = ChunkSeq::new(3, now);
        assert_eq!(s.observe(3, now), Ok(false));
        assert_eq!((s.assign(), s.assign(), s.assign()), (1, 2, 3));
        // 2 and 3 arrive before 1.
        assert_eq!(s.arrive(3, now), Ok(Step::Wait));
        assert_eq!(s.arrive(2, now), Ok(Step::Wait));
        assert_eq!(s.arrive(1, now), Ok(Step::Go));
        assert_eq!(s.poll(3, 2, now), Ok(Step::Wait), "1 still applying");
        assert!(s.done(3, 1, now));
        assert_eq!(s.poll(3, 3, now), Ok(Step::Wait));
        assert_eq!(s.poll(3, 2, now), Ok(Step::Go));
        assert!(s.done(3, 2, now));
        assert_eq!(s.poll(3, 3, now), Ok(Step::Go));
        assert!(!s.done(3, 3, now));
        assert!(s.idle());
        assert_eq!(
            s.arrive(2, now),
            Err(SeqError::Duplicate {
                epoch: 3,
                serial: 2
            })
        );
    }

    #[test]
    fn pure_assign_passes_serials_seen_as_a_secondary() {
        let now = t0();
        let mut s = ChunkSeq::new(1, now);
        assert_eq!(s.arrive(1, now), Ok(Step::Go));
        s.done(1, 1, now);
        assert_eq!(s.arrive(2, now), Ok(Step::Go));
        assert_eq!(s.arrive(4, now), Ok(Step::Wait));
        assert_eq!(s.assign(), 5);
        assert_eq!(s.assign(), 6);
    }

    #[test]
    fn pure_epochs() {
        let now = t0();
        let mut s = ChunkSeq::new(5, now);
        assert_eq!(s.arrive(2, now), Ok(Step::Wait));
        assert_eq!(
            s.observe(4, now),
            Err(SeqError::Stale { current: 5, got: 4 })
        );
        // A new lease: a new sequence from 1, the old waiter is stale.
        assert_eq!(s.observe(6, now), Ok(true));
        assert_eq!(
            s.poll(5, 2, now),
            Err(SeqError::Stale { current: 6, got: 5 })
        );
        assert_eq!(s.assign(), 1);
        assert_eq!(s.arrive(1, now), Ok(Step::Go));
        // The old epoch's holder finishing changes nothing.
        assert!(!s.done(5, 1, now));
        assert!(!s.done(6, 1, now));
        assert_eq!(s.arrive(2, now), Ok(Step::Go));
    }

    #[test]
    fn pure_gap() {
        let now = t0();
        let timeout = Duration::from_secs(5);
        let mut s = ChunkSeq::new(1, now);
        assert_eq!(s.arrive(1, now), Ok(Step::Go));
        assert_eq!(s.arrive(3, now), Ok(Step::Wait));
        // Something applying: not a gap, whatever the time.
        assert_eq!(s.gap(1, now + timeout * 3, timeout), Some(timeout));
        s.done(1, 1, now + Duration::from_secs(1));
        // Progress a second ago: four more to wait.
        assert_eq!(
            s.gap(1, now + Duration::from_secs(2), timeout),
            Some(Duration::from_secs(4))
        );
        assert_eq!(s.gap(1, now + Duration::from_secs(6), timeout), None);
        let broken = Err(SeqError::Broken {
            epoch: 1,
            missing: 2,
        });
        assert_eq!(s.poll(1, 3, now), broken);
        // A late 2, and anything after, are refused too; a new epoch heals.
        assert_eq!(s.arrive(2, now), broken);
        assert_eq!(s.observe(2, now), Ok(true));
        assert_eq!(s.arrive(1, now), Ok(Step::Go));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_order_arrivals_apply_in_serial_order() {
        let seq = Arc::new(Sequencer::new(Duration::from_secs(5)));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Serials arrive in reverse, each a little after the previous.
        for serial in (1..=6u64).rev() {
            let (seq, log) = (seq.clone(), log.clone());
            tasks.push(tokio::spawn(async move {
                let turn = seq.enter(7, 1, serial).await.unwrap();
                log.lock().push(turn.serial());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Another chunk is not held up by chunk 7.
        drop(seq.enter(8, 1, 1).await.unwrap());
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*log.lock(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(seq.tracked(), 2);
    }

    #[tokio::test]
    async fn in_order_assigned_serials_pass_straight_through() {
        let seq = Sequencer::new(Duration::from_secs(5));
        for want in 1..=3 {
            let s = seq.assign(9, 4).unwrap();
            assert_eq!(s, want);
            let turn = seq.enter(9, 4, s).await.unwrap();
            assert_eq!(turn.serial(), want);
        }
        assert!(matches!(
            seq.enter(9, 4, 2).await,
            Err(SeqError::Duplicate { .. })
        ));
    }

    #[tokio::test]
    async fn a_gap_that_never_fills_fails_after_the_timeout() {
        let seq = Arc::new(Sequencer::new(Duration::from_millis(200)));
        let started = Instant::now();
        let r = seq.enter(1, 1, 2).await;
        assert_eq!(
            r.err(),
            Some(SeqError::Broken {
                epoch: 1,
                missing: 1
            })
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        // The late serial 1 is refused as well; a new epoch starts afresh.
        assert!(matches!(
            seq.enter(1, 1, 1).await,
            Err(SeqError::Broken { .. })
        ));
        assert!(seq.enter(1, 2, 1).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_apply_is_not_a_gap() {
        let seq = Arc::new(Sequencer::new(Duration::from_millis(100)));
        let first = seq.enter(1, 1, 1).await.unwrap();
        let s2 = seq.clone();
        let waiter = tokio::spawn(async move { s2.enter(1, 1, 2).await.map(|t| t.serial()) });
        tokio::time::sleep(Duration::from_millis(350)).await;
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_epoch_fails_the_old_waiters() {
        let seq = Arc::new(Sequencer::new(Duration::from_secs(30)));
        let s2 = seq.clone();
        let old = tokio::spawn(async move { s2.enter(5, 3, 4).await.map(|t| t.serial()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(seq.assign(5, 4), Ok(1));
        let started = Instant::now();
        assert_eq!(
            old.await.unwrap(),
            Err(SeqError::Stale { current: 4, got: 3 })
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            seq.assign(5, 3),
            Err(SeqError::Stale { current: 4, got: 3 })
        );
        assert!(seq.enter(5, 4, 1).await.is_ok());
    }
}
