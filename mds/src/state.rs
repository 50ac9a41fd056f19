//! Everything the log rebuilds: the namespace plus the per-session table of
//! recent replies that makes retried mutations exactly-once.
//!
//! `apply_entry` is the only way state changes, on the live path and on replay
//! alike, so both produce the same state and the same replies.
//!
//! Which session holds which inode open is not journaled (like the
//! namespace's open counts): after a single MDS's restart nothing is open.
//! In an MDS group every node builds it alike from the log, and snapshots
//! carry it, so a file unlinked while open stays readable through a failover.
//! It exists so that an expired session's opens can be released — purging
//! inodes it kept alive unlinked — and so that the MDS lends a session chunk
//! access only in the mode it opened the file (`Opens`: a read-only open
//! lends no write).
//!
//! An MDS group's advisory locks (`locks`) and drain marks (`draining`) live
//! here too, changed by their own log entries; a single MDS keeps its locks
//! and drain marks elsewhere in memory (`locks::LockTable`, the registry).

use crate::ns::{Applied, Namespace, Record};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use weft_proto::pb;

/// Replies remembered per session. A client has at most a few hundred requests
/// in flight (FUSE's max_background), so a retry always finds its answer.
const REPLIES_PER_SESSION: usize = 4096;

/// One journaled mutation: who asked (session 0 = the MDS itself) and what changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    pub session: u64,
    pub seq: u64,
    pub record: Record,
}

#[derive(Default, Clone, Serialize, Deserialize)]
pub struct Sessions {
    replies: HashMap<u64, BTreeMap<u64, Vec<u8>>>,
}

impl Sessions {
    /// The reply already given to (session, seq), if any.
    pub fn answered(&self, session: u64, seq: u64) -> Option<pb::meta_reply::Result> {
        let bytes = self.replies.get(&session)?.get(&seq)?;
        pb::MetaReply::decode(bytes.as_slice()).ok()?.result
    }

    pub(crate) fn remember(&mut self, session: u64, seq: u64, reply: &pb::meta_reply::Result) {
        if session == 0 {
            return;
        }
        let log = self.replies.entry(session).or_default();
        let msg = pb::MetaReply {
            errno: 0,
            result: Some(reply.clone()),
            ..Default::default()
        };
        log.insert(seq, msg.encode_to_vec());
        while log.len() > REPLIES_PER_SESSION {
            log.pop_first();
        }
    }

    pub fn len(&self) -> usize {
        self.replies.len()
    }

    /// Sessions with remembered replies.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.replies.keys().copied()
    }

    pub fn contains(&self, session: u64) -> bool {
        self.replies.contains_key(&session)
    }

    /// Replies remembered in all sessions (for benchmarks and status).
    pub fn replies(&self) -> usize {
        self.replies.values().map(|r| r.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }
}

/// One session's opens of one inode, by access mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opens {
    /// O_RDONLY opens.
    pub read: u32,
    /// O_WRONLY and O_RDWR opens.
    pub write: u32,
}

impl Opens {
    pub fn total(&self) -> u32 {
        self.read + self.write
    }
}

/// Whether open(2) `flags` open for writing (the access mode; O_TRUNC of a
/// read-only open truncates but gives no descriptor to write through).
pub fn writes(flags: u32) -> bool {
    flags as i32 & libc::O_ACCMODE != libc::O_RDONLY
}

#[derive(Clone)]
pub struct State {
    pub ns: Namespace,
    pub sessions: Sessions,
    /// Index of the last entry applied.
    pub applied_index: u64,
    /// session → ino → opens by that session. Not journaled.
    pub opens: HashMap<u64, HashMap<u64, Opens>>,
    /// An MDS group's advisory locks (a single MDS: always empty).
    pub locks: crate::locks::Locks,
    /// Chunk daemons an MDS group drains (a single MDS: always empty).
    pub draining: BTreeSet<u64>,
}

impl State {
    pub fn new(chunk_size: u64) -> Self {
        State {
            ns: Namespace::new(chunk_size),
            sessions: Sessions::default(),
            applied_index: 0,
            opens: HashMap::new(),
            locks: Default::default(),
            draining: BTreeSet::new(),
        }
    }

    /// Forgets what a single MDS's log does not rebuild (opens, and the
    /// group-only locks and drain marks) after loading a snapshot that may
    /// carry them, so a restart starts with nothing open, as before.
    pub fn forget_unlogged(&mut self) {
        self.opens.clear();
        self.ns.set_open_counts([]);
        self.locks = Default::default();
        self.draining.clear();
    }

    /// `session` opened `ino`, for writing or not (the namespace's count is
    /// raised too).
    pub fn opened(&mut self, session: u64, ino: u64, write: bool) {
        self.ns.opened(ino);
        if session != 0 {
            let o = self
                .opens
                .entry(session)
                .or_default()
                .entry(ino)
                .or_default();
            if write {
                o.write += 1;
            } else {
                o.read += 1;
            }
        }
    }

    /// What `session` holds open of `ino`.
    pub fn opens_of(&self, session: u64, ino: u64) -> Opens {
        self.opens
            .get(&session)
            .and_then(|m| m.get(&ino))
            .copied()
            .unwrap_or_default()
    }

    /// `session` closed an open of `ino` made for writing or not: the purge
    /// record if that was the last open of an unlinked inode. A release that
    /// names the other mode than any open left (a client that does not say
    /// which it closes says read) takes one of the other kind.
    pub fn released(&mut self, session: u64, ino: u64, write: bool) -> Option<Record> {
        if let Some(m) = self.opens.get_mut(&session) {
            if let Some(o) = m.get_mut(&ino) {
                let (mine, other) = if write {
                    (&mut o.write, &mut o.read)
                } else {
                    (&mut o.read, &mut o.write)
                };
                if *mine > 0 {
                    *mine -= 1;
                } else {
                    *other = other.saturating_sub(1);
                }
                if o.total() == 0 {
                    m.remove(&ino);
                }
            }
            if m.is_empty() {
                self.opens.remove(&session);
            }
        }
        self.ns.released(ino)
    }

    /// Everything `session` still holds open, forgotten; each (ino, count).
    pub fn take_opens(&mut self, session: u64) -> Vec<(u64, u32)> {
        self.opens
            .remove(&session)
            .map(|m| m.into_iter().map(|(ino, o)| (ino, o.total())).collect())
            .unwrap_or_default()
    }

    /// Applies the entry at `index` (the next one) and remembers its reply.
    pub fn apply_entry(&mut self, index: u64, entry: &LogEntry) -> Applied {
        debug_assert!(self.applied_index == 0 || index == self.applied_index + 1);
        let applied = self.apply_record(entry.session, entry.seq, &entry.record);
        self.applied_index = index;
        applied
    }

    /// Applies one record and remembers its reply, leaving `applied_index`
    /// to the caller (one Raft entry may make several records).
    pub fn apply_record(&mut self, session: u64, seq: u64, record: &Record) -> Applied {
        let applied = self.ns.apply(record);
        if let Record::ExpireSession { session } = record {
            self.sessions.replies.remove(session);
        }
        self.sessions.remember(session, seq, &applied.reply);
        applied
    }
}

pub fn encode_entry(e: &LogEntry) -> Vec<u8> {
    postcard::to_allocvec(e).expect("log entries always serialize")
}

pub fn decode_entry(bytes: &[u8]) -> Result<LogEntry, postcard::Error> {
    postcard::from_bytes(bytes)
}
