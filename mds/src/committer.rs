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
//!
//! The deciding is `decide_batch`, with no I/O: it returns the frames to
//! write, each waiter's answer and what to publish; `run` only does the I/O
//! around it (the lock, the append, the answers). Unit tests below.

use crate::chunkds::Registry;
use crate::ns::{Ctx, Prepared, Record, Time};
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
    /// A client closed files (each `(ino, write)`, `write`: an open for
    /// writing): may purge unlinked inodes. First the access-time updates
    /// it carries (`(ino, how)`, as SetAttrReq.atime_update, at `now`).
    /// Exactly-once per (session, seq) like a mutation: a retried Release
    /// must not end an open twice.
    Release {
        session: u64,
        seq: u64,
        now: Time,
        atimes: Vec<(u64, u32)>,
        items: Vec<(u64, bool)>,
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
    /// An AllocChunk whose new write lease raises the chunk's version (see
    /// `Request::Lease`).
    Lease {
        session: u64,
        seq: u64,
        ctx: Ctx,
        op: pb::AllocChunkReq,
        chunk_id: u64,
        version: u64,
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

/// The local commit thread (a single MDS): proposals reach it over a
/// channel. (Where a proposal goes, this thread or an MDS group's log, is
/// the service's choice: `service::Committer`.)
#[derive(Clone)]
pub struct Local(mpsc::UnboundedSender<Proposal>);

impl Local {
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
        Local(tx)
    }

    pub async fn propose(
        &self,
        make: impl FnOnce(oneshot::Sender<Outcome>) -> Proposal,
    ) -> Outcome {
        let (done, rx) = oneshot::channel();
        if self.0.send(make(done)).is_err() {
            return Err(Errno::EIO);
        }
        rx.await.unwrap_or(Err(Errno::EIO))
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
        fill_batch(&mut batch, first, || rx.try_recv().ok());
        let (requests, waiters): (Vec<Request>, Vec<oneshot::Sender<Outcome>>) =
            batch.drain(..).map(Proposal::split).unzip();
        let mut st = state.blocking_write();
        // Subtree exports being watched: each event is scoped for them.
        let tops = hub.subtrees();
        let first_index = st.applied_index + 1;
        frames.clear();
        let decided = decide_batch(&mut st, requests, &tops, &mut frames);
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
        let seq = hub.publish(decided.events);
        if !decided.freed.is_empty() {
            registry.lock().forget_chunks(&decided.freed);
        }
        for (done, answer) in waiters.into_iter().zip(decided.answers) {
            match answer.origin {
                // Strict mounts drop their copies first; the wait holds no
                // lock and delays no other batch.
                Some(origin) if hub.must_wait(seq, origin) => {
                    let hub = hub.clone();
                    rt.spawn(async move {
                        hub.wait(seq, origin).await;
                        let _ = done.send(answer.outcome);
                    });
                }
                _ => {
                    let _ = done.send(answer.outcome);
                }
            }
        }
        since_checkpoint += frames.len() as u64;
        if let Some((cp, every)) = &checkpoints {
            if checkpoint_due(since_checkpoint, *every, busy.load(Ordering::Acquire)) {
                since_checkpoint = 0;
                start_checkpoint(&state, &mut log, cp.clone(), busy.clone());
            }
        }
    }
}

/// Takes `first` and whatever else is waiting (`next`), up to `MAX_BATCH`
/// proposals; the rest waits for the next batch.
fn fill_batch<P>(batch: &mut Vec<P>, first: P, mut next: impl FnMut() -> Option<P>) {
    batch.push(first);
    while batch.len() < MAX_BATCH {
        match next() {
            Some(p) => batch.push(p),
            None => break,
        }
    }
}

/// Whether to start a checkpoint after a batch: `every` bytes of log were
/// written since the last one, and none is being written.
fn checkpoint_due(since: u64, every: u64, busy: bool) -> bool {
    since >= every && !busy
}

/// What one batch decided: the answer to each request (in order) and what
/// the commit thread does once the batch's frames are in the log.
#[derive(Debug)]
pub struct Decided {
    pub answers: Vec<Answer>,
    /// Chunks no file references any more: the registry forgets them.
    pub freed: Vec<u64>,
    /// The coherence events to publish, in log order.
    pub events: Vec<watch::Event>,
}

/// The answer to one request.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub outcome: Outcome,
    /// The session whose change other mounts must see before this answer
    /// goes (strict mode); None if the request changed nothing visible.
    pub origin: Option<u64>,
}

/// Decides a batch against the (already locked) state, with no I/O: every
/// record is applied and framed into `frames` at consecutive log indexes
/// from `st.applied_index + 1`, which the caller writes as one append.
pub fn decide_batch(
    st: &mut State,
    requests: impl IntoIterator<Item = Request>,
    tops: &[u64],
    frames: &mut Vec<u8>,
) -> Decided {
    let mut d = Decided {
        answers: Vec::new(),
        freed: Vec::new(),
        events: Vec::new(),
    };
    for req in requests {
        let first_event = d.events.len();
        let events = &mut d.events;
        let freed = &mut d.freed;
        let outcome = decide_with(st, req, &mut |st, session, seq, record| {
            events.push(watch::Event::new(session, &record, &st.ns, tops));
            commit(st, session, seq, record, frames, freed)
        });
        // Whose change other mounts must see before this answer (strict mode).
        let origin = d.events[first_event..]
            .iter()
            .find(|e| !e.items.is_empty())
            .map(|e| e.origin);
        d.answers.push(Answer { outcome, origin });
    }
    d
}

/// Rolls the log and hands a copy of the state to a checkpoint thread. Runs
/// on the commit thread, so no mutation happens between the roll and the copy.
/// Hands the allocator's free pages back to the system. A checkpoint
/// writes a copy of the whole state; once it is dropped, glibc keeps the
/// copy's pages as free memory between the live allocations made meanwhile,
/// so a running MDS would hold about two namespaces' worth of memory.
fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

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
            give_back_freed_memory();
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
        seq: u64,
        now: Time,
        atimes: Vec<(u64, u32)>,
        items: Vec<(u64, bool)>,
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
    /// An AllocChunk of an existing chunk whose new write lease (decided
    /// before, `leases::decide`) raises the chunk's version: the bump
    /// (`Record::BumpVersion`, journaled only while `chunk_id` is still at
    /// that index below `version`) and then the AllocChunk, as `Mutate`
    /// decides it, in one request: one pass through the log.
    Lease {
        session: u64,
        seq: u64,
        ctx: Ctx,
        op: pb::AllocChunkReq,
        chunk_id: u64,
        version: u64,
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
                seq,
                now,
                atimes,
                items,
                done,
            } => (
                Request::Release {
                    session,
                    seq,
                    now,
                    atimes,
                    items,
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
            Proposal::Lease {
                session,
                seq,
                ctx,
                op,
                chunk_id,
                version,
                done,
            } => (
                Request::Lease {
                    session,
                    seq,
                    ctx,
                    op,
                    chunk_id,
                    version,
                },
                done,
            ),
        }
    }
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
            let prepared = match &op {
                // A segment records its writer: the one session that may
                // append to it.
                pb::meta_request::Op::CreateSegment(_) => {
                    Ok(st.ns.prepare_create_segment(&ctx, session))
                }
                _ => st.ns.prepare(&ctx, &op),
            };
            let mut outcome = match prepared {
                Err(e) => Err(e),
                Ok(Prepared::Reply(r)) => Ok(r),
                Ok(Prepared::Record(record)) => Ok(commit(st, session, seq, record)),
            };
            if outcome.is_ok() {
                for r in folded_setattrs(&op) {
                    match st.ns.prepare_setattr(&ctx, r) {
                        Ok(Prepared::Record(record)) => {
                            outcome = Ok(commit(st, session, seq, record));
                        }
                        Ok(Prepared::Reply(reply)) => outcome = Ok(reply),
                        // Skipped: the client sees it missing from the reply.
                        Err(_) => {}
                    }
                }
            }
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
            seq,
            now,
            atimes,
            items,
        } => {
            // Not journaled itself (opens are not), so remembered here: every
            // node of a group decides it alike; a single MDS forgets it with
            // the opens on a restart.
            if session != 0 && seq != 0 {
                if let Some(reply) = st.sessions.answered(session, seq) {
                    return Ok(reply);
                }
            }
            // The atimes first: a release may purge the file.
            let ctx = Ctx {
                now,
                caller: Default::default(),
            };
            let mut attrs = Vec::new();
            for (ino, how) in &atimes {
                let req = pb::SetAttrReq {
                    ino: *ino,
                    atime_update: *how,
                    ..Default::default()
                };
                let reply = match st.ns.prepare_setattr(&ctx, &req) {
                    Ok(Prepared::Record(record)) => commit(st, session, seq, record),
                    Ok(Prepared::Reply(reply)) => reply,
                    // Gone meanwhile, or no file: nothing to update.
                    Err(_) => continue,
                };
                if let pb::meta_reply::Result::Attr(a) = reply {
                    attrs.push(a);
                }
            }
            for (ino, write) in items {
                if let Some(record) = st.released(session, ino, write) {
                    commit(st, 0, 0, record);
                }
            }
            let reply = if atimes.is_empty() {
                pb::meta_reply::Result::Empty(pb::Empty {})
            } else {
                pb::meta_reply::Result::Attrs(pb::Attrs { attrs })
            };
            if seq != 0 {
                st.sessions.remember(session, seq, &reply);
            }
            Ok(reply)
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
        Request::Lease {
            session,
            seq,
            ctx,
            op,
            chunk_id,
            version,
        } => {
            let (ino, index) = (op.ino, op.index);
            // Before the stored-reply check: a retry needs the new lease
            // too, unless its stored reply names another chunk (the index
            // was truncated away and refilled since): the service then
            // carries out no lease for this one, so nothing may bump it.
            let stored = match session {
                0 => None,
                _ => st.sessions.answered(session, seq),
            };
            let answers_it = match &stored {
                None => true,
                Some(pb::meta_reply::Result::ChunkWrite(cw)) => {
                    cw.chunk.as_ref().map(|c| c.chunk_id) == Some(chunk_id)
                }
                Some(_) => false,
            };
            let fits = answers_it
                && st
                    .ns
                    .chunk_owner(chunk_id)
                    .is_some_and(|(i, x, v)| (i, x) == (ino, index) && v < version);
            if fits {
                let bump = Record::BumpVersion {
                    ino,
                    index,
                    chunk_id,
                    version,
                };
                commit(st, 0, 0, bump);
            }
            let op = pb::meta_request::Op::AllocChunk(op);
            decide_with(
                st,
                Request::Mutate {
                    session,
                    seq,
                    ctx,
                    op,
                },
                commit,
            )
        }
    }
}

/// The setattrs a data commit carries (`CommitPackedReq.then_setattr`):
/// only owner, mode and explicit times of the committed inode; anything
/// else in the list is ignored, so a commit can never truncate or touch
/// another file through it.
fn folded_setattrs(op: &pb::meta_request::Op) -> impl Iterator<Item = &pb::SetAttrReq> {
    use pb::meta_request::Op;
    let (ino, list) = match op {
        Op::CommitPacked(r) => (r.ino, &r.then_setattr[..]),
        Op::CommitWrite(r) if !r.allocs_only => (r.ino, &r.then_setattr[..]),
        _ => (0, &[][..]),
    };
    let explicit = |t: &Option<pb::TimeSet>| t.as_ref().is_none_or(|t| !t.now);
    list.iter().filter(move |r| {
        r.ino == ino
            && r.size.is_none()
            && r.atime_update == 0
            && explicit(&r.atime)
            && explicit(&r.mtime)
    })
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
    use crate::ns::{Caller, ROOT_INO};
    use crate::state::decode_entry;
    use crate::wal::codec::{decode_frame, Decoded};
    use pb::meta_reply::Result as R;
    use pb::meta_request::Op;

    fn mutate(session: u64, seq: u64, op: Op) -> Request {
        Request::Mutate {
            session,
            seq,
            ctx: Ctx {
                now: Time { sec: 1000, nsec: 0 },
                caller: Caller::root(),
            },
            op,
        }
    }

    fn mkdir(name: &str) -> Op {
        Op::Mkdir(pb::MkdirReq {
            parent: ROOT_INO,
            name: name.into(),
            mode: 0o755,
            umask: 0,
        })
    }

    fn create(name: &str) -> Op {
        Op::Create(pb::CreateReq {
            parent: ROOT_INO,
            name: name.into(),
            mode: 0o644,
            umask: 0,
            flags: (libc::O_CREAT | libc::O_EXCL | libc::O_RDWR) as u32,
        })
    }

    fn unlink(name: &str) -> Op {
        Op::Unlink(pb::UnlinkReq {
            parent: ROOT_INO,
            name: name.into(),
        })
    }

    fn alloc(ino: u64, index: u64) -> Op {
        Op::AllocChunk(pb::AllocChunkReq {
            ino,
            index,
            failed: vec![],
        })
    }

    /// Decides one batch; its answers and the entries it journaled, with
    /// their log indexes, decoded from the frames as replay would.
    fn batch(st: &mut State, reqs: Vec<Request>) -> (Vec<Answer>, Vec<(u64, LogEntry)>, Decided) {
        let mut frames = Vec::new();
        let mut d = decide_batch(st, reqs, &[], &mut frames);
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            match decode_frame(&frames[at..]) {
                Decoded::Frame(f, len) => {
                    entries.push((f.index, decode_entry(&f.payload).unwrap()));
                    at += len;
                }
                Decoded::End => break,
                other => panic!("the batch's frames do not decode: {other:?}"),
            }
        }
        (std::mem::take(&mut d.answers), entries, d)
    }

    fn ino(o: &Outcome) -> u64 {
        match o {
            Ok(R::Attr(a)) => a.ino,
            other => panic!("not an attr: {other:?}"),
        }
    }

    fn chunk_id(o: &Outcome) -> u64 {
        match o {
            Ok(R::ChunkWrite(cw)) => cw.chunk.as_ref().unwrap().chunk_id,
            other => panic!("not a chunk write: {other:?}"),
        }
    }

    fn empty() -> Outcome {
        Ok(R::Empty(pb::Empty {}))
    }

    #[test]
    fn each_change_is_journaled_at_the_next_index_with_who_asked() {
        let mut st = State::new(1 << 20);
        let (answers, entries, _) = batch(
            &mut st,
            vec![mutate(7, 1, mkdir("a")), mutate(7, 2, mkdir("b"))],
        );
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries
                .iter()
                .map(|(i, e)| (*i, e.session, e.seq))
                .collect::<Vec<_>>(),
            vec![(1, 7, 1), (2, 7, 2)]
        );
        assert!(matches!(entries[0].1.record, Record::Create { ref name, .. } if name == b"a"));
        assert_eq!(st.applied_index, 2);
        assert_ne!(ino(&answers[0].outcome), ino(&answers[1].outcome));
        // Other mounts must see a change before its maker hears back.
        assert_eq!(answers[0].origin, Some(7));
        // The next batch goes on from where this one ended.
        let (_, entries, _) = batch(&mut st, vec![mutate(7, 3, mkdir("c"))]);
        assert_eq!(entries[0].0, 3);
    }

    #[test]
    fn a_retried_request_gets_its_first_reply_and_journals_nothing() {
        let mut st = State::new(1 << 20);
        let (first, _, _) = batch(&mut st, vec![mutate(7, 1, mkdir("a"))]);
        // Same (session, seq), in a later batch: even a different op (a
        // client never sends one) gets the stored answer, not EEXIST.
        let (again, entries, _) = batch(&mut st, vec![mutate(7, 1, mkdir("z"))]);
        assert_eq!(again[0].outcome, first[0].outcome);
        assert_eq!(again[0].origin, None);
        assert!(entries.is_empty());
        assert_eq!(st.applied_index, 1);
        // Twice within one batch: applied once, both answered alike.
        let (both, entries, _) = batch(
            &mut st,
            vec![mutate(7, 2, mkdir("b")), mutate(7, 2, mkdir("b"))],
        );
        assert_eq!(entries.len(), 1);
        assert_eq!(both[0].outcome, both[1].outcome);
        assert!(st.ns.lookup(&Caller::root(), ROOT_INO, b"z").is_err());
    }

    #[test]
    fn a_refusal_journals_nothing_and_is_decided_again_on_retry() {
        let mut st = State::new(1 << 20);
        let (answers, entries, _) = batch(
            &mut st,
            vec![mutate(7, 1, mkdir("a")), mutate(7, 2, mkdir("a"))],
        );
        assert_eq!(answers[1].outcome, Err(Errno::EEXIST));
        assert_eq!(entries.len(), 1);
        // An errno is not remembered: once the name is free the retry succeeds.
        batch(
            &mut st,
            vec![mutate(
                8,
                1,
                Op::Rmdir(pb::RmdirReq {
                    parent: ROOT_INO,
                    name: b"a".to_vec(),
                }),
            )],
        );
        let (retry, entries, _) = batch(&mut st, vec![mutate(7, 2, mkdir("a"))]);
        assert!(retry[0].outcome.is_ok());
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn the_mds_own_requests_are_journaled_as_session_zero_and_not_remembered() {
        let mut st = State::new(1 << 20);
        let (_, entries, _) = batch(&mut st, vec![mutate(0, 1, mkdir("a"))]);
        assert_eq!((entries[0].1.session, entries[0].1.seq), (0, 1));
        let (again, entries, _) = batch(&mut st, vec![mutate(0, 1, mkdir("a"))]);
        assert_eq!(again[0].outcome, Err(Errno::EEXIST));
        assert!(entries.is_empty());
        let record = Record::Purge { ino: 999 };
        let (answers, entries, _) = batch(
            &mut st,
            vec![Request::Internal {
                record: record.clone(),
            }],
        );
        assert_eq!(answers[0].outcome, empty());
        assert_eq!(
            entries[0].1,
            LogEntry {
                session: 0,
                seq: 0,
                record
            }
        );
    }

    #[test]
    fn an_answer_that_changes_nothing_journals_nothing() {
        let mut st = State::new(1 << 20);
        let (a, _, _) = batch(&mut st, vec![mutate(7, 1, create("f"))]);
        let f = ino(&a[0].outcome);
        let (first, entries, _) = batch(&mut st, vec![mutate(7, 2, alloc(f, 0))]);
        assert!(
            matches!(entries[0].1.record, Record::AllocChunk { ino, index: 0, .. } if ino == f)
        );
        // The chunk is there now: a second AllocChunk only answers it.
        let (second, entries, _) = batch(&mut st, vec![mutate(7, 3, alloc(f, 0))]);
        assert!(entries.is_empty());
        assert_eq!(second[0].origin, None);
        assert_eq!(chunk_id(&second[0].outcome), chunk_id(&first[0].outcome));
    }

    #[test]
    fn the_last_release_of_an_unlinked_file_journals_its_purge_and_frees_its_chunks() {
        let mut st = State::new(1 << 20);
        let (a, _, _) = batch(&mut st, vec![mutate(7, 1, create("f"))]);
        let f = ino(&a[0].outcome);
        assert_eq!(st.opens_of(7, f).write, 1);
        let (c, _, _) = batch(
            &mut st,
            vec![mutate(7, 2, alloc(f, 0)), mutate(7, 3, unlink("f"))],
        );
        let chunk = chunk_id(&c[0].outcome);
        // Open: the unlink keeps the inode.
        assert!(st.ns.get(f).is_some());
        let release = |seq| Request::Release {
            session: 7,
            seq,
            now: Time::default(),
            atimes: vec![],
            items: vec![(f, true)],
        };
        let (answers, entries, d) = batch(&mut st, vec![release(4)]);
        assert_eq!(answers[0].outcome, empty());
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0].1,
            LogEntry {
                session: 0,
                seq: 0,
                record: Record::Purge { ino: f }
            }
        );
        assert_eq!(d.freed, vec![chunk]);
        assert!(st.ns.get(f).is_none());
        // A release with no open left answers and journals nothing.
        let (answers, entries, _) = batch(&mut st, vec![release(5)]);
        assert_eq!(answers[0].outcome, empty());
        assert!(entries.is_empty());
    }

    #[test]
    fn a_retried_release_ends_its_opens_once() {
        let mut st = State::new(1 << 20);
        let (a, _, _) = batch(&mut st, vec![mutate(7, 1, create("f"))]);
        let f = ino(&a[0].outcome);
        let open = pb::meta_request::Op::Open(pb::OpenReq {
            ino: f,
            flags: libc::O_RDONLY as u32,
        });
        batch(&mut st, vec![mutate(7, 2, open), mutate(7, 3, unlink("f"))]);
        assert_eq!(st.opens_of(7, f).total(), 2);
        let release = Request::Release {
            session: 7,
            seq: 4,
            now: Time::default(),
            atimes: vec![],
            items: vec![(f, true)],
        };
        // The reply was lost and the client sent the same seq again.
        let (answers, entries, _) = batch(&mut st, vec![release.clone(), release.clone()]);
        assert_eq!(answers[1].outcome, empty());
        assert!(entries.is_empty(), "one open is left: no purge");
        assert_eq!(st.opens_of(7, f).total(), 1);
        assert!(st.ns.get(f).is_some());
        let (_, entries, _) = batch(&mut st, vec![release]);
        assert!(entries.is_empty(), "still the same release");
        let last = Request::Release {
            session: 7,
            seq: 5,
            now: Time::default(),
            atimes: vec![],
            items: vec![(f, false)],
        };
        let (_, entries, _) = batch(&mut st, vec![last]);
        assert_eq!(entries.len(), 1, "the last open's release purges");
        assert!(st.ns.get(f).is_none());
    }

    #[test]
    fn expiry_journals_the_sessions_end_then_purges_what_only_it_kept_open() {
        let mut st = State::new(1 << 20);
        let (a, _, _) = batch(
            &mut st,
            vec![mutate(7, 1, create("f")), mutate(7, 2, unlink("f"))],
        );
        let f = ino(&a[0].outcome);
        let (answers, entries, _) = batch(&mut st, vec![Request::Expire { session: 7 }]);
        assert_eq!(answers[0].outcome, empty());
        assert_eq!(
            entries
                .into_iter()
                .map(|(_, e)| e.record)
                .collect::<Vec<_>>(),
            vec![
                Record::ExpireSession { session: 7 },
                Record::Purge { ino: f }
            ]
        );
        // Its replies are forgotten: a late retry is decided afresh.
        assert_eq!(st.sessions.answered(7, 1), None);
        assert!(st.opens_of(7, f).total() == 0);
        // An unknown session: nothing to journal.
        let (_, entries, _) = batch(&mut st, vec![Request::Expire { session: 9 }]);
        assert!(entries.is_empty());
    }

    fn lease(session: u64, seq: u64, ino: u64, index: u64, chunk_id: u64, version: u64) -> Request {
        Request::Lease {
            session,
            seq,
            ctx: Ctx {
                now: Time { sec: 1000, nsec: 0 },
                caller: Caller::root(),
            },
            op: pb::AllocChunkReq {
                ino,
                index,
                failed: vec![],
            },
            chunk_id,
            version,
        }
    }

    fn version_of(o: &Outcome) -> u64 {
        match o {
            Ok(R::ChunkWrite(cw)) => cw.chunk.as_ref().unwrap().version,
            other => panic!("not a chunk write: {other:?}"),
        }
    }

    #[test]
    fn a_new_lease_journals_its_bump_in_the_allocchunks_own_pass() {
        let mut st = State::new(1 << 20);
        let (a, _, _) = batch(&mut st, vec![mutate(7, 1, create("f"))]);
        let f = ino(&a[0].outcome);
        let (c, _, _) = batch(&mut st, vec![mutate(7, 2, alloc(f, 0))]);
        let chunk = chunk_id(&c[0].outcome);
        let (answers, entries, _) = batch(&mut st, vec![lease(7, 3, f, 0, chunk, 2)]);
        // One request, one record: the bump, by the MDS (not remembered as
        // the client's reply), and the answer names the new version.
        assert_eq!(
            entries.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(),
            vec![LogEntry {
                session: 0,
                seq: 0,
                record: Record::BumpVersion {
                    ino: f,
                    index: 0,
                    chunk_id: chunk,
                    version: 2
                }
            }]
        );
        assert_eq!(chunk_id(&answers[0].outcome), chunk);
        assert_eq!(version_of(&answers[0].outcome), 2);
        assert_eq!(st.ns.chunk_owner(chunk), Some((f, 0, 2)));
    }

    #[test]
    fn a_bump_that_no_longer_fits_journals_nothing() {
        let mut st = State::new(1 << 20);
        let (a, _, _) = batch(&mut st, vec![mutate(7, 1, create("f"))]);
        let f = ino(&a[0].outcome);
        let (c, _, _) = batch(
            &mut st,
            vec![mutate(7, 2, alloc(f, 0)), lease(7, 3, f, 0, 0, 2)],
        );
        let chunk = chunk_id(&c[0].outcome);
        let bumps = |entries: &[(u64, LogEntry)]| {
            entries
                .iter()
                .filter(|(_, e)| matches!(e.record, Record::BumpVersion { .. }))
                .count()
        };
        batch(&mut st, vec![lease(7, 4, f, 0, chunk, 3)]);
        // Already at (or past) that version; another chunk id; another index.
        for (seq, id, index, v) in [
            (5, chunk, 0, 3),
            (6, chunk, 0, 2),
            (7, chunk + 1, 0, 9),
            (8, chunk, 1, 9),
        ] {
            let (answers, entries, _) = batch(&mut st, vec![lease(7, seq, f, index, id, v)]);
            assert_eq!(bumps(&entries), 0, "seq {seq}");
            assert!(answers[0].outcome.is_ok());
        }
        assert_eq!(st.ns.chunk_owner(chunk), Some((f, 0, 3)));
        // The AllocChunk half still allocates a hole (index 1 above).
        assert!(st.ns.file_chunks(f, 1, 1).unwrap().1[0].1 != 0);
    }

    #[test]
    fn a_retried_allocchunk_gets_its_stored_reply_and_still_its_bump() {
        let mut st = State::new(1 << 20);
        let (a, _, _) = batch(&mut st, vec![mutate(7, 1, create("f"))]);
        let f = ino(&a[0].outcome);
        let (first, _, _) = batch(&mut st, vec![mutate(7, 2, alloc(f, 0))]);
        let chunk = chunk_id(&first[0].outcome);
        // The reply to (7, 2) was lost; the retry's lease raises the version.
        let (again, entries, _) = batch(&mut st, vec![lease(7, 2, f, 0, chunk, 2)]);
        assert_eq!(again[0].outcome, first[0].outcome);
        assert_eq!(entries.len(), 1);
        assert_eq!(st.ns.chunk_owner(chunk), Some((f, 0, 2)));
    }

    #[test]
    fn a_retry_whose_stored_reply_names_another_chunk_bumps_nothing() {
        let mut st = State::new(1 << 20);
        let (a, _, _) = batch(&mut st, vec![mutate(7, 1, create("f"))]);
        let f = ino(&a[0].outcome);
        let (first, _, _) = batch(&mut st, vec![mutate(7, 2, alloc(f, 0))]);
        let old = chunk_id(&first[0].outcome);
        // Truncated to nothing, and index 0 filled again by another chunk.
        let truncate = Op::Setattr(pb::SetAttrReq {
            ino: f,
            size: Some(0),
            ..Default::default()
        });
        let write = Op::CommitWrite(pb::CommitWriteReq {
            ino: f,
            end: 100,
            ..Default::default()
        });
        batch(&mut st, vec![mutate(8, 0, write), mutate(8, 1, truncate)]);
        let (b, _, _) = batch(&mut st, vec![mutate(8, 2, alloc(f, 0))]);
        let new = chunk_id(&b[0].outcome);
        assert_ne!(old, new);
        // (7, 2) retried, with a lease decided for the chunk there now.
        let (again, entries, _) = batch(&mut st, vec![lease(7, 2, f, 0, new, 2)]);
        assert_eq!(again[0].outcome, first[0].outcome);
        assert!(entries.is_empty());
        assert_eq!(st.ns.chunk_owner(new), Some((f, 0, 1)));
    }

    #[test]
    fn a_commits_folded_setattrs_apply_after_it_each_journaled_and_a_refused_one_is_skipped() {
        let mut st = State::new(1 << 20);
        let (a, _, _) = batch(&mut st, vec![mutate(7, 1, create("f"))]);
        let f = ino(&a[0].outcome);
        let (a, _, _) = batch(&mut st, vec![mutate(7, 2, create("g"))]);
        let other = ino(&a[0].outcome);
        let set = |ino: u64, f: &dyn Fn(&mut pb::SetAttrReq)| {
            let mut r = pb::SetAttrReq {
                ino,
                ..Default::default()
            };
            f(&mut r);
            r
        };
        let when = |sec: i64| pb::TimeSet {
            now: false,
            time: Some(pb::Timespec { sec, nsec: 7 }),
        };
        let then_setattr = vec![
            set(f, &|r| r.mode = Some(0o4755)),
            // chown clears setuid, as on Linux.
            set(f, &|r| (r.uid, r.gid) = (Some(1000), Some(100))),
            // A non-owner's chmod would be refused: this one is root's, but
            // one naming another inode, a size or "now" is never applied.
            set(other, &|r| r.mode = Some(0o600)),
            set(f, &|r| r.size = Some(0)),
            set(f, &|r| {
                r.mtime = Some(pb::TimeSet {
                    now: true,
                    time: None,
                })
            }),
            set(f, &|r| (r.atime, r.mtime) = (Some(when(5)), Some(when(6)))),
        ];
        let write = Op::CommitWrite(pb::CommitWriteReq {
            ino: f,
            end: 100,
            then_setattr,
            ..Default::default()
        });
        let (a, entries, _) = batch(&mut st, vec![mutate(7, 3, write.clone())]);
        let Ok(R::Attr(attr)) = &a[0].outcome else {
            panic!("a commit answers attributes: {:?}", a[0].outcome)
        };
        assert_eq!(
            (attr.size, attr.mode & 0o7777, attr.uid, attr.gid),
            (100, 0o755, 1000, 100)
        );
        assert_eq!(attr.atime.as_ref().map(|t| (t.sec, t.nsec)), Some((5, 7)));
        assert_eq!(attr.mtime.as_ref().map(|t| (t.sec, t.nsec)), Some((6, 7)));
        // The commit and three setattrs, all as (7, 3).
        let kinds: Vec<_> = entries
            .iter()
            .map(|(_, e)| (e.session, e.seq, std::mem::discriminant(&e.record)))
            .collect();
        let setattr = std::mem::discriminant(&Record::SetAttr {
            ino: 0,
            mode: None,
            uid: None,
            gid: None,
            size: None,
            atime: None,
            mtime: None,
            ctime: Time::default(),
        });
        assert_eq!(kinds.len(), 4);
        assert!(kinds[1..].iter().all(|k| *k == (7, 3, setattr)));
        assert_eq!(st.ns.getattr(other).unwrap().mode & 0o7777, 0o644);
        // A retry gets the final attributes and journals nothing.
        let (again, entries, _) = batch(&mut st, vec![mutate(7, 3, write)]);
        assert_eq!(again[0].outcome, a[0].outcome);
        assert!(entries.is_empty());
        // A caller the checks refuse: the commit stands, the chown does not.
        let user = Ctx {
            now: Time { sec: 2000, nsec: 0 },
            caller: Caller {
                uid: 1000,
                gid: 100,
                groups: vec![],
            },
        };
        let write = Op::CommitWrite(pb::CommitWriteReq {
            ino: f,
            end: 200,
            then_setattr: vec![set(f, &|r| r.uid = Some(0))],
            ..Default::default()
        });
        let req = Request::Mutate {
            session: 7,
            seq: 4,
            ctx: user,
            op: write,
        };
        let (a, entries, _) = batch(&mut st, vec![req]);
        let Ok(R::Attr(attr)) = &a[0].outcome else {
            panic!("the commit stands: {:?}", a[0].outcome)
        };
        assert_eq!((attr.size, attr.uid), (200, 1000));
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn a_batch_takes_what_is_waiting_up_to_its_limit() {
        let mut waiting: std::collections::VecDeque<usize> = (1..MAX_BATCH + 5).collect();
        let mut b = Vec::new();
        fill_batch(&mut b, 0, || waiting.pop_front());
        assert_eq!(b.len(), MAX_BATCH);
        assert_eq!(b.last(), Some(&(MAX_BATCH - 1)));
        b.clear();
        let first = waiting.pop_front().unwrap();
        fill_batch(&mut b, first, || waiting.pop_front());
        assert_eq!(b, (MAX_BATCH..MAX_BATCH + 5).collect::<Vec<_>>());
        b.clear();
        fill_batch(&mut b, 42, || None);
        assert_eq!(b, vec![42]);
    }

    #[test]
    fn a_checkpoint_starts_once_enough_log_is_written_and_none_is_running() {
        assert!(!checkpoint_due(99, 100, false));
        assert!(checkpoint_due(100, 100, false));
        assert!(!checkpoint_due(500, 100, true));
    }

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
