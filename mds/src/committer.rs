//! Group commit: the one thread that changes MDS state.
//!
//! It takes every proposal waiting, and for each one decides (`prepare`),
//! frames the record and applies it, all under the state's write lock; then it
//! writes the whole batch to the log (one write(2), into the page cache), and
//! only then releases the lock and answers. So no reader ever sees a change
//! that is not in the log (a kill -9 of the MDS loses nothing answered), and
//! log order is apply order. The fdatasync is not waited for here: the sync
//! thread (`wal::durable`) runs right behind, and a caller that promises
//! durability (a client's fsync or close) waits for it. A failed write leaves
//! memory ahead of the log, which cannot be undone: the MDS aborts and a
//! restart replays exactly what is in the log.
//!
//! Checkpoints start here too, between batches, once `checkpoint_bytes` of
//! log were written since the last one: roll the log to a fresh segment, copy
//! the state under the read lock (readers go on; mutations wait only for the
//! copy), and write the copy on another thread.

use crate::chunkds::Registry;
use crate::ns::{Ctx, Prepared, Record};
use crate::snapshot::Checkpointer;
use crate::state::{encode_entry, LogEntry, State};
use crate::wal::{codec, LogWriter};
use crate::watch::{self, Hub};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, RwLock};
use weft_proto::{pb, Errno};

pub type Outcome = Result<pb::meta_reply::Result, Errno>;

pub enum Proposal {
    /// A client's mutation, exactly-once per (session, seq).
    Mutate {
        session: u64,
        seq: u64,
        ctx: Ctx,
        op: pb::meta_request::Op,
        done: oneshot::Sender<Outcome>,
    },
    /// A client closed a file (`write`: an open for writing): may purge an
    /// unlinked inode.
    Release {
        session: u64,
        ino: u64,
        write: bool,
        done: oneshot::Sender<Outcome>,
    },
    /// A session was silent too long: journal its expiry, release its opens.
    Expire {
        session: u64,
        done: oneshot::Sender<Outcome>,
    },
    /// A record the MDS decided itself (e.g. purging orphans at startup).
    Internal {
        record: Record,
        done: oneshot::Sender<Outcome>,
    },
    /// An MDS group's advisory lock change (a single MDS keeps its locks in
    /// memory, `locks::LockTable`).
    Lock {
        session: u64,
        change: crate::locks::LockChange,
        done: oneshot::Sender<Outcome>,
    },
    /// An MDS group's drain mark of one chunk daemon, set or cleared.
    Drain {
        chunkd: u64,
        draining: bool,
        done: oneshot::Sender<Outcome>,
    },
}

/// Most proposals folded into one write.
const MAX_BATCH: usize = 1024;

/// The answer to a proposal this node could not put in the log because it
/// is not (or no longer) the MDS group's leader; the RPC layer turns it into
/// the "not leader" status, and the client retries with the same (session,
/// seq) on the leader. Never sent to a client as an errno.
pub const NOT_LEADER: Errno = Errno(-1);

/// Where proposals go: the local commit thread (a single MDS) or the MDS
/// group's log.
#[derive(Clone)]
pub enum Committer {
    Local(mpsc::UnboundedSender<Proposal>),
    Group(Arc<crate::group::Group>),
}

impl Committer {
    pub fn start(
        state: Arc<RwLock<State>>,
        log: LogWriter,
        registry: Arc<Mutex<Registry>>,
        hub: Arc<Hub>,
        checkpoints: Option<(Arc<Checkpointer>, u64)>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        // Answers that wait for strict mounts' acks are sent from tasks here.
        let rt = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("wal-commit".into())
            .spawn(move || run(rx, state, log, registry, hub, checkpoints, rt))
            .expect("spawn the commit thread");
        Committer::Local(tx)
    }

    pub async fn propose(
        &self,
        make: impl FnOnce(oneshot::Sender<Outcome>) -> Proposal,
    ) -> Outcome {
        let (done, rx) = oneshot::channel();
        match self {
            Committer::Local(tx) => {
                if tx.send(make(done)).is_err() {
                    return Err(Errno::EIO);
                }
                rx.await.unwrap_or(Err(Errno::EIO))
            }
            Committer::Group(g) => {
                let (req, _) = make(done).split();
                g.propose(req).await
            }
        }
    }
}

fn run(
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    state: Arc<RwLock<State>>,
    mut log: LogWriter,
    registry: Arc<Mutex<Registry>>,
    hub: Arc<Hub>,
    checkpoints: Option<(Arc<Checkpointer>, u64)>,
    rt: tokio::runtime::Handle,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut frames = Vec::new();
    let mut since_checkpoint = 0u64;
    let busy = Arc::new(AtomicBool::new(false));
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut st = state.blocking_write();
        // Subtree exports being watched: each event is scoped for them.
        let tops = hub.subtrees();
        let first_index = st.applied_index + 1;
        let mut answers = Vec::with_capacity(batch.len());
        let mut freed = Vec::new();
        let mut events = Vec::new();
        frames.clear();
        for p in batch.drain(..) {
            let first_event = events.len();
            let (outcome, done) = decide(&mut st, p, &mut frames, &mut freed, &mut events, &tops);
            // Whose change other mounts must see before this answer (strict mode).
            let origin = events[first_event..]
                .iter()
                .find(|e| !e.items.is_empty())
                .map(|e| e.origin);
            answers.push((done, outcome, origin));
        }
        if !frames.is_empty() {
            let timer = weft_metrics::Timer::start();
            if let Err(e) = log.append(first_index, st.applied_index, &frames) {
                tracing::error!("write-ahead log append failed, aborting so a restart replays what is durable: {e}");
                std::process::abort();
            }
            let m = &crate::metrics::M;
            m.wal_append.since(timer);
            if weft_metrics::on() {
                m.wal_batch.observe(st.applied_index + 1 - first_index);
                m.wal_bytes.inc_by(frames.len() as u64);
            }
        }
        drop(st);
        // In the log now (durable a moment later): other mounts may drop what
        // these changes made stale, as they could read them already.
        let seq = hub.publish(events);
        if !freed.is_empty() {
            registry.lock().forget_chunks(&freed);
        }
        for (done, outcome, origin) in answers {
            match origin {
                // Strict mounts drop their copies first; the wait holds no
                // lock and delays no other batch.
                Some(origin) if hub.must_wait(seq, origin) => {
                    let hub = hub.clone();
                    rt.spawn(async move {
                        hub.wait(seq, origin).await;
                        let _ = done.send(outcome);
                    });
                }
                _ => {
                    let _ = done.send(outcome);
                }
            }
        }
        since_checkpoint += frames.len() as u64;
        if let Some((cp, every)) = &checkpoints {
            if since_checkpoint >= *every && !busy.load(Ordering::Acquire) {
                since_checkpoint = 0;
                start_checkpoint(&state, &mut log, cp.clone(), busy.clone());
            }
        }
    }
}

/// Rolls the log and hands a copy of the state to a checkpoint thread. Runs
/// on the commit thread, so no mutation happens between the roll and the copy.
fn start_checkpoint(
    state: &Arc<RwLock<State>>,
    log: &mut LogWriter,
    cp: Arc<Checkpointer>,
    busy: Arc<AtomicBool>,
) {
    let t = Instant::now();
    let copy = {
        let st = state.blocking_read();
        if let Err(e) = log.roll(st.applied_index + 1) {
            tracing::error!(
                "write-ahead log roll failed, aborting so a restart replays what is durable: {e}"
            );
            std::process::abort();
        }
        st.clone()
    };
    let pause_ms = t.elapsed().as_millis() as u64;
    busy.store(true, Ordering::Release);
    let flag = busy.clone();
    let spawned = std::thread::Builder::new()
        .name("checkpoint".into())
        .spawn(move || {
            match cp.checkpoint(&copy) {
                Ok(d) => tracing::info!(
                    index = d.index,
                    bytes = d.bytes,
                    segments_dropped = d.segments_dropped,
                    write_ms = d.ms,
                    pause_ms,
                    "checkpoint written"
                ),
                // The log still holds everything: a failed checkpoint costs disk, not data.
                Err(e) => tracing::error!("checkpoint failed (the log is kept): {e:#}"),
            }
            drop(copy);
            flag.store(false, Ordering::Release);
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start a checkpoint thread: {e}");
        busy.store(false, Ordering::Release);
    }
}

/// What a proposal asks, without its reply channel: what the Raft log carries.
#[derive(Debug, Clone)]
pub enum Request {
    Mutate {
        session: u64,
        seq: u64,
        ctx: Ctx,
        op: pb::meta_request::Op,
    },
    Release {
        session: u64,
        ino: u64,
        write: bool,
    },
    Expire {
        session: u64,
    },
    Internal {
        record: Record,
    },
    Lock {
        session: u64,
        change: crate::locks::LockChange,
    },
    Drain {
        chunkd: u64,
        draining: bool,
    },
}

impl Proposal {
    pub fn split(self) -> (Request, oneshot::Sender<Outcome>) {
        match self {
            Proposal::Mutate {
                session,
                seq,
                ctx,
                op,
                done,
            } => (
                Request::Mutate {
                    session,
                    seq,
                    ctx,
                    op,
                },
                done,
            ),
            Proposal::Release {
                session,
                ino,
                write,
                done,
            } => (
                Request::Release {
                    session,
                    ino,
                    write,
                },
                done,
            ),
            Proposal::Expire { session, done } => (Request::Expire { session }, done),
            Proposal::Internal { record, done } => (Request::Internal { record }, done),
            Proposal::Lock {
                session,
                change,
                done,
            } => (Request::Lock { session, change }, done),
            Proposal::Drain {
                chunkd,
                draining,
                done,
            } => (Request::Drain { chunkd, draining }, done),
        }
    }
}

/// Decides one proposal against the (already locked) state; a mutation is
/// applied and its frame appended to `frames`.
fn decide(
    st: &mut State,
    p: Proposal,
    frames: &mut Vec<u8>,
    freed: &mut Vec<u64>,
    events: &mut Vec<watch::Event>,
    tops: &[u64],
) -> (Outcome, oneshot::Sender<Outcome>) {
    let (req, done) = p.split();
    let outcome = decide_with(st, req, &mut |st, session, seq, record| {
        events.push(watch::Event::new(session, &record, &st.ns, tops));
        commit(st, session, seq, record, frames, freed)
    });
    (outcome, done)
}

/// Decides one request against the (already locked) state. Every record it
/// makes goes to `commit`, which applies it (and journals it, on the local
/// log) and returns the record's reply. Deterministic given the state and
/// the request, so every node of an MDS group that applies the same request
/// gets the same records and the same answer.
pub fn decide_with(
    st: &mut State,
    req: Request,
    commit: &mut dyn FnMut(&mut State, u64, u64, Record) -> pb::meta_reply::Result,
) -> Outcome {
    match req {
        Request::Mutate {
            session,
            seq,
            ctx,
            op,
        } => {
            if session != 0 {
                if let Some(reply) = st.sessions.answered(session, seq) {
                    return Ok(reply);
                }
            }
            let outcome = match st.ns.prepare(&ctx, &op) {
                Err(e) => Err(e),
                Ok(Prepared::Reply(r)) => Ok(r),
                Ok(Prepared::Record(record)) => Ok(commit(st, session, seq, record)),
            };
            if let Ok(pb::meta_reply::Result::Attr(a)) = &outcome {
                let flags = match &op {
                    pb::meta_request::Op::Open(o) => Some(o.flags),
                    pb::meta_request::Op::Create(c) => Some(c.flags),
                    _ => None,
                };
                if let Some(flags) = flags {
                    st.opened(session, a.ino, crate::state::writes(flags));
                }
            }
            outcome
        }
        Request::Release {
            session,
            ino,
            write,
        } => {
            if let Some(record) = st.released(session, ino, write) {
                commit(st, 0, 0, record);
            }
            Ok(pb::meta_reply::Result::Empty(pb::Empty {}))
        }
        Request::Expire { session } => {
            st.locks.release(session, None, None);
            let opens = st.take_opens(session);
            if st.sessions.contains(session) {
                commit(st, 0, 0, Record::ExpireSession { session });
            }
            for (ino, n) in opens {
                for _ in 0..n {
                    if let Some(record) = st.ns.released(ino) {
                        commit(st, 0, 0, record);
                    }
                }
            }
            Ok(pb::meta_reply::Result::Empty(pb::Empty {}))
        }
        Request::Internal { record } => Ok(commit(st, 0, 0, record)),
        // No record: the lock table and drain marks are not the namespace's,
        // and only an MDS group (whose log holds the request) sends these.
        Request::Lock { session, change } => st
            .locks
            .apply(session, &change)
            .map(|()| pb::meta_reply::Result::Empty(pb::Empty {})),
        Request::Drain { chunkd, draining } => {
            if draining {
                st.draining.insert(chunkd);
            } else {
                st.draining.remove(&chunkd);
            }
            Ok(pb::meta_reply::Result::Empty(pb::Empty {}))
        }
    }
}

fn commit(
    st: &mut State,
    session: u64,
    seq: u64,
    record: Record,
    frames: &mut Vec<u8>,
    freed: &mut Vec<u64>,
) -> pb::meta_reply::Result {
    let index = st.applied_index + 1;
    let entry = LogEntry {
        session,
        seq,
        record,
    };
    codec::encode_frame(index, 0, &encode_entry(&entry), frames);
    let applied = st.apply_entry(index, &entry);
    freed.extend(applied.freed_chunks);
    applied.reply
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locks::{LockChange, F_WRLCK};

    fn run(st: &mut State, req: Request) -> Outcome {
        decide_with(st, req, &mut |st, session, seq, record| {
            st.apply_record(session, seq, &record).reply
        })
    }

    fn lock(session: u64) -> Request {
        Request::Lock {
            session,
            change: LockChange::Set {
                ino: 5,
                owner: 1,
                start: 0,
                end: u64::MAX,
                typ: F_WRLCK,
                pid: 1,
            },
        }
    }

    #[test]
    fn a_session_expiry_drops_its_locks_and_drain_marks_toggle() {
        let mut st = State::new(1 << 20);
        run(&mut st, lock(7)).unwrap();
        assert_eq!(run(&mut st, lock(8)), Err(Errno::EAGAIN));
        run(&mut st, Request::Expire { session: 7 }).unwrap();
        assert_eq!(st.locks.held(), 0);
        run(&mut st, lock(8)).unwrap();
        let drain = |draining| Request::Drain {
            chunkd: 3,
            draining,
        };
        run(&mut st, drain(true)).unwrap();
        assert!(st.draining.contains(&3));
        run(&mut st, drain(false)).unwrap();
        assert!(st.draining.is_empty());
    }
}
