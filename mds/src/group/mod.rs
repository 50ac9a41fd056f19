//! The MDS group: several weft-mds nodes agree on one log with openraft, so
//! any minority of them can crash, pause, be cut off or lose its disk while
//! the file system carries on.
//!
//! - `log_store`: the Raft log and vote on disk (the WAL's frame format)
//! - `state_machine`: applies entries, each a client's request decided
//!   (`committer::decide_with`) on every node alike; snapshots are the MDS
//!   checkpoints
//! - `network`: MDS↔MDS calls over tonic (`weft.Raft`), and the
//!   acknowledgements the leader lease is computed from
//!
//! A request is in the log before anything decides it: the leader appends
//! (session, seq, caller, op, the leader's clock), and every node runs
//! `prepare` + `apply` when the entry commits, so a request prepared against a
//! state that changed meanwhile cannot misapply, and the reply table that
//! makes retries exactly-once is the same on every node. The answer goes back
//! once the entry is written on a majority (each fdatasyncs right behind) and
//! applied on the leader; a client's fsync or close then waits until its
//! changes are on disk on a majority (`Group::sync_log`).

pub mod log_store;
pub mod network;
pub mod state_machine;

use crate::committer::{Outcome, Request};
use crate::ns::{Ctx, Record, Time};
use openraft::{BasicNode, ServerState};
use parking_lot::Mutex;
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft_proto::{pb, Errno};

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Cmd,
        R = Answer,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// What one log entry asks: a `committer::Request`, with the op as its
/// protobuf bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Cmd {
    Mutate {
        session: u64,
        seq: u64,
        ctx: Ctx,
        op: Vec<u8>,
    },
    Release {
        session: u64,
        ino: u64,
    },
    Expire {
        session: u64,
    },
    Internal {
        record: Record,
    },
    /// A Release of an open for writing (`Release` is one for reading: the
    /// variant older logs hold). Last, so older entries decode unchanged.
    ReleaseWrite {
        session: u64,
        ino: u64,
    },
    /// An advisory lock change (`locks::LockChange`): EAGAIN if it conflicts.
    Lock {
        session: u64,
        change: crate::locks::LockChange,
    },
    /// `weft drain` (or its cancel) of chunk daemon `chunkd`.
    Drain {
        chunkd: u64,
        draining: bool,
    },
    /// `committer::Request::Lease`: an AllocChunk (its protobuf bytes) whose
    /// lease raises `chunk_id` to `version` in the same entry.
    Lease {
        session: u64,
        seq: u64,
        ctx: Ctx,
        op: Vec<u8>,
        chunk_id: u64,
        version: u64,
    },
    /// Releases of several opens (`(ino, write)`), exactly-once per
    /// (session, seq). Last, so older entries decode unchanged.
    Releases {
        session: u64,
        seq: u64,
        now: Time,
        atimes: Vec<(u64, u32)>,
        items: Vec<(u64, bool)>,
    },
}

impl From<Request> for Cmd {
    fn from(r: Request) -> Cmd {
        match r {
            Request::Mutate {
                session,
                seq,
                ctx,
                op,
            } => Cmd::Mutate {
                session,
                seq,
                ctx,
                op: pb::MetaRequest {
                    op: Some(op),
                    ..Default::default()
                }
                .encode_to_vec(),
            },
            Request::Release {
                session,
                seq,
                now,
                atimes,
                items,
            } => Cmd::Releases {
                session,
                seq,
                now,
                atimes,
                items,
            },
            Request::Expire { session } => Cmd::Expire { session },
            Request::Internal { record } => Cmd::Internal { record },
            Request::Lock { session, change } => Cmd::Lock { session, change },
            Request::Drain { chunkd, draining } => Cmd::Drain { chunkd, draining },
            Request::Lease {
                session,
                seq,
                ctx,
                op,
                chunk_id,
                version,
            } => Cmd::Lease {
                session,
                seq,
                ctx,
                op: op.encode_to_vec(),
                chunk_id,
                version,
            },
        }
    }
}

impl Cmd {
    /// None for an op this build cannot decode (a newer node's).
    pub fn into_request(self) -> Option<Request> {
        Some(match self {
            Cmd::Mutate {
                session,
                seq,
                ctx,
                op,
            } => Request::Mutate {
                session,
                seq,
                ctx,
                op: pb::MetaRequest::decode(op.as_slice()).ok()?.op?,
            },
            Cmd::Release { session, ino } => Request::Release {
                session,
                seq: 0,
                now: Time::default(),
                atimes: vec![],
                items: vec![(ino, false)],
            },
            Cmd::ReleaseWrite { session, ino } => Request::Release {
                session,
                seq: 0,
                now: Time::default(),
                atimes: vec![],
                items: vec![(ino, true)],
            },
            Cmd::Releases {
                session,
                seq,
                now,
                atimes,
                items,
            } => Request::Release {
                session,
                seq,
                now,
                atimes,
                items,
            },
            Cmd::Expire { session } => Request::Expire { session },
            Cmd::Internal { record } => Request::Internal { record },
            Cmd::Lock { session, change } => Request::Lock { session, change },
            Cmd::Drain { chunkd, draining } => Request::Drain { chunkd, draining },
            Cmd::Lease {
                session,
                seq,
                ctx,
                op,
                chunk_id,
                version,
            } => Request::Lease {
                session,
                seq,
                ctx,
                op: pb::AllocChunkReq::decode(op.as_slice()).ok()?,
                chunk_id,
                version,
            },
        })
    }
}

/// The answer to one entry, as the leader's state machine computed it: the
/// encoded `MetaReply` result or an errno, and the strict-mode wait (hub
/// sequence, origin session) that must end before the client hears it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Answer {
    pub reply: Option<Result<Vec<u8>, i32>>,
    pub strict: Option<(u64, u64)>,
}

impl Answer {
    pub fn outcome(&self) -> Outcome {
        match &self.reply {
            Some(Ok(bytes)) => pb::MetaReply::decode(bytes.as_slice())
                .ok()
                .and_then(|r| r.result)
                .ok_or(Errno::EIO),
            Some(Err(code)) => Err(Errno(*code)),
            None => Ok(pb::meta_reply::Result::Empty(pb::Empty {})),
        }
    }
}

/// The leader lease: when each voter last acknowledged an AppendEntries this
/// node sent as leader, by the time it was sent (so the lease the follower
/// grants, counted from when it received it, always outlasts ours).
#[derive(Default)]
pub struct Acks(Mutex<HashMap<u64, (u64, Instant)>>);

impl Acks {
    pub fn ack(&self, node: u64, term: u64, sent: Instant) {
        let mut m = self.0.lock();
        let e = m.entry(node).or_insert((term, sent));
        if (term, sent) > *e {
            *e = (term, sent);
        }
    }

    /// Whether `node` acknowledged this leader of `term` within `d` before `now`.
    pub fn heard_within(&self, node: u64, term: u64, d: Duration, now: Instant) -> bool {
        self.0
            .lock()
            .get(&node)
            .is_some_and(|(t, at)| *t == term && now.saturating_duration_since(*at) < d)
    }

    /// Whether a majority of `voters` (this node counting as acknowledged)
    /// acknowledged this node as leader of `term` within `lease` before
    /// `now`; always true for one voter or none.
    pub fn quorum_within(
        &self,
        me: u64,
        voters: impl IntoIterator<Item = u64>,
        term: u64,
        lease: Duration,
        now: Instant,
    ) -> bool {
        let m = self.0.lock();
        let (mut all, mut fresh) = (0usize, 0usize);
        for v in voters {
            all += 1;
            if v == me
                || m.get(&v)
                    .is_some_and(|(t, at)| *t == term && now.saturating_duration_since(*at) < lease)
            {
                fresh += 1;
            }
        }
        all <= 1 || fresh * 2 > all
    }
}

/// One node's handle on the group.
pub struct Group {
    pub raft: Raft,
    pub id: u64,
    pub acks: Arc<Acks>,
    /// Reads are served only while a majority acknowledged this leader
    /// within this (below the followers' election timeout).
    pub read_lease: Duration,
    /// Anything else (mutations, chunk daemons' calls, admin) is answered
    /// only while a majority acknowledged this leader within this (4 x the
    /// election timeout): a leader cut off from its majority stops taking
    /// work and says "not leader" (`propose`).
    pub write_grace: Duration,
    hub: Arc<crate::watch::Hub>,
    /// openraft's metrics, read in place (`borrow`) rather than cloned.
    metrics: tokio::sync::watch::Receiver<Metrics>,
    log: log_store::LogStore,
    dial: Arc<network::Dial>,
    /// The newest entry (index, term) known on disk on a majority: replies
    /// carry it, so a close whose changes are older needs no SyncLog.
    confirmed: Mutex<(u64, u64)>,
    /// The term whose take-over (`service/leadership.rs`: fencing term,
    /// leases forgotten, chunk-daemon registry started afresh) has finished.
    /// A leader answers nothing before it: its registry still holds the
    /// last term's daemons, gone stale while there was no leader, and would
    /// tell a reader a chunk has no replica.
    taken_over: std::sync::atomic::AtomicU64,
    /// Set when `check_leader` refused for want of a majority; `resumed`
    /// reports the first answer after that.
    refusing: std::sync::atomic::AtomicBool,
    resumed: std::sync::atomic::AtomicBool,
}

/// Marks a reply's `log_epoch` as a group's: the rest is the term of the
/// entry at `log_index`. A single MDS's epochs have this bit clear.
pub const GROUP_EPOCH: u64 = 1 << 63;

type Metrics = openraft::RaftMetrics<u64, BasicNode>;

/// Leader, and everything committed before its term is applied: only then
/// does this node's state hold every answer the group gave.
fn is_ready(m: &Metrics) -> bool {
    m.state == ServerState::Leader
        && m.last_applied.map(|l| l.leader_id.term) == Some(m.current_term)
}

/// Where a node stands, from openraft's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub leader: Option<u64>,
    pub term: u64,
    pub role: &'static str,
    /// Leader, and everything committed before its term is applied.
    pub ready: bool,
    pub voters: Vec<u64>,
    pub nodes: BTreeMap<u64, String>,
    pub last_log: u64,
    pub applied: u64,
}

impl Group {
    pub fn standing(&self) -> Standing {
        let m = self.metrics.borrow();
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let nodes: BTreeMap<u64, String> = membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower if !voters.contains(&self.id) => "learner",
            ServerState::Learner => "learner",
            ServerState::Candidate => "candidate",
            ServerState::Follower => "follower",
            ServerState::Shutdown => "stopped",
        };
        let ready = is_ready(&m);
        Standing {
            leader: m.current_leader,
            term: m.current_term,
            role,
            ready,
            voters,
            nodes,
            last_log: m.last_log_index.unwrap_or(0),
            applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        }
    }

    /// Ok when this node may answer clients now: the leader, caught up with
    /// its own term, done taking it over (`took_over`), and heard from by a majority within its read lease (for
    /// reads) or within `write_grace` (for everything else). Otherwise the
    /// "not leader" answer naming the leader it knows of (none, for a leader
    /// cut off from its majority: the client moves to its next address).
    ///
    /// Asked on every request, so it reads the few fields it needs in place
    /// (no `Standing`, no copy of openraft's metrics).
    /// Records that this node's take-over of `term` has finished (see
    /// `taken_over`): from now on it answers as leader.
    pub fn took_over(&self, term: u64) {
        self.taken_over
            .store(term, std::sync::atomic::Ordering::Release);
    }

    /// True once after this leader answers again having refused for want of
    /// a majority (the same term: no take-over follows).
    pub fn take_resumed(&self) -> bool {
        self.resumed
            .swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    pub fn check_leader(&self, read: bool) -> Result<(), tonic::Status> {
        let within = if read {
            self.read_lease
        } else {
            self.write_grace
        };
        let now = Instant::now();
        let m = self.metrics.borrow();
        let membership = m.membership_config.membership();
        if is_ready(&m)
            && self.taken_over.load(std::sync::atomic::Ordering::Acquire) == m.current_term
            && self
                .acks
                .quorum_within(self.id, membership.voter_ids(), m.current_term, within, now)
        {
            if self
                .refusing
                .swap(false, std::sync::atomic::Ordering::AcqRel)
            {
                self.resumed
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            return Ok(());
        }
        if is_ready(&m) {
            // The leader, but not heard from by a majority: it refuses
            // everything, chunk daemons' heartbeats included.
            self.refusing
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let hint = m
            .current_leader
            .filter(|l| *l != self.id)
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.addr.clone());
        drop(m);
        Err(weft_proto::leader::not_leader(hint.as_deref()))
    }

    /// Whether a majority of the voters acknowledged this node as leader of
    /// its current term within `write_grace` before `now`: false for a
    /// leader cut off, or restarted and not yet told of a newer term (a
    /// stale leader).
    pub fn majority_heard(&self, s: &Standing, now: Instant) -> bool {
        self.majority_within(s, self.write_grace, now)
    }

    /// Whether a majority of the voters (this node included) acknowledged
    /// this node as leader of its current term within `d` before `now`;
    /// always true in a group of one.
    fn majority_within(&self, s: &Standing, d: Duration, now: Instant) -> bool {
        self.acks
            .quorum_within(self.id, s.voters.iter().copied(), s.term, d, now)
    }

    /// This node's Raft log (for the `Synced` RPC).
    pub fn log_store(&self) -> log_store::LogStore {
        self.log.clone()
    }

    /// The log position a reply carries: (index, durable index, epoch). The
    /// index is the last entry applied here (at or past the change just
    /// answered, and committed), the epoch its term.
    pub fn reply_position(&self) -> (u64, u64, u64) {
        let (index, term) = self
            .metrics
            .borrow()
            .last_applied
            .map(|l| (l.index, l.leader_id.term))
            .unwrap_or((0, 0));
        let (c_index, c_term) = *self.confirmed.lock();
        // Within one term the durable index compares with the index; an
        // older confirmation says nothing the client could use.
        let durable = if c_term == term { c_index } else { 0 };
        (index, durable, GROUP_EPOCH | term)
    }

    /// SyncLog in a group: Ok once entry (`index`, term in `epoch`) is on
    /// disk on a majority of the voters; EIO if it is not in the log (a
    /// newer term replaced it: it was never answered); "not leader" when no
    /// majority confirms within the write grace (the client retries).
    pub async fn sync_log(&self, index: u64, epoch: u64) -> Outcome {
        let done = Ok(pb::meta_reply::Result::Empty(pb::Empty {}));
        if epoch & GROUP_EPOCH == 0 {
            // A position from the single MDS this group took over: its log
            // was synced when the group started from it.
            return done;
        }
        let term = epoch & !GROUP_EPOCH;
        {
            let (c_index, c_term) = *self.confirmed.lock();
            if c_term == term && index <= c_index {
                return done;
            }
        }
        let s = self.standing();
        if term > s.term {
            // Answered by a newer leader than this node knows of.
            return Err(crate::committer::NOT_LEADER);
        }
        let until = tokio::time::Instant::now() + self.write_grace;
        let wait = self.write_grace / 2;
        let mut asks = futures::stream::FuturesUnordered::new();
        for v in s.voters.iter().filter(|v| **v != self.id) {
            let addr = s.nodes.get(v).cloned().unwrap_or_default();
            let (dial, v) = (self.dial.clone(), *v);
            asks.push(async move { dial.synced(v, &addr, index, term, wait).await });
        }
        let need = s.voters.len() / 2 + 1;
        let mine = self.log.wait_on_disk(index, term, true, until);
        tokio::pin!(mine);
        let (mut yes, mut mine_done) = (0usize, false);
        use futures::StreamExt;
        while yes < need {
            tokio::select! {
                here = &mut mine, if !mine_done => {
                    mine_done = true;
                    match here {
                        log_store::OnDisk::Yes => yes += 1,
                        log_store::OnDisk::Replaced | log_store::OnDisk::Absent => {
                            tracing::warn!(index, term, "a client waits for a log entry this group does not hold (never answered)");
                            return Err(Errno::EIO);
                        }
                        // Its own disk did not sync within the grace.
                        log_store::OnDisk::Unsynced => return Err(crate::committer::NOT_LEADER),
                    }
                }
                Some(on_disk) = asks.next() => {
                    if on_disk {
                        yes += 1;
                    }
                }
                else => break,
            }
        }
        if yes < need {
            return Err(crate::committer::NOT_LEADER);
        }
        let mut c = self.confirmed.lock();
        if (term, index) > (c.1, c.0) {
            *c = (index, term);
        }
        done
    }

    /// Puts a request in the log and returns its answer once it is written
    /// on a majority and applied here. "Not leader" comes back as
    /// `NOT_LEADER` (the client retries with the same (session, seq)).
    ///
    /// openraft's `client_write` on a leader cut off from its followers
    /// waits until it learns of a newer term, which it may never do while
    /// the cut lasts. So every `write_grace / 2` this checks that a majority
    /// acknowledged this leader within `write_grace`; when not, the client
    /// is told "not leader" and retries elsewhere. The entry may still
    /// commit (a slow majority, not a lost one): the retry with the same
    /// (session, seq) then gets its stored reply, so it applies once.
    pub async fn propose(&self, req: Request) -> Outcome {
        let write = self.raft.client_write(Cmd::from(req));
        tokio::pin!(write);
        let every = self.write_grace / 2;
        let mut check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let written = loop {
            tokio::select! {
                biased;
                r = &mut write => break r,
                _ = check.tick() => {
                    let s = self.standing();
                    if !self.majority_within(&s, self.write_grace, Instant::now()) {
                        tracing::warn!(
                            term = s.term,
                            grace = ?self.write_grace,
                            "no majority heard from within the grace: answering not leader"
                        );
                        return Err(crate::committer::NOT_LEADER);
                    }
                }
            }
        };
        match written {
            Ok(resp) => {
                if let Some((seq, origin)) = resp.data.strict {
                    self.hub.wait(seq, origin).await;
                }
                resp.data.outcome()
            }
            Err(e) => {
                tracing::debug!("proposal not committed here: {e}");
                Err(crate::committer::NOT_LEADER)
            }
        }
    }
}

/// The openraft settings for this node.
pub fn raft_config(cfg: &crate::config::Config) -> anyhow::Result<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "weft-mds".into(),
        heartbeat_interval: cfg.raft_heartbeat_ms,
        election_timeout_min: cfg.election_timeout_ms,
        election_timeout_max: cfg.election_timeout_ms * 2,
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(cfg.snapshot_entries),
        max_in_snapshot_log_to_keep: 1000,
        snapshot_max_chunk_size: 4 << 20,
        ..Default::default()
    };
    Ok(c.validate()?)
}

pub struct Started {
    pub group: Arc<Group>,
    pub state: Arc<tokio::sync::RwLock<crate::state::State>>,
}

/// Opens this node's log and state machine under `DATA/raft`, starts
/// openraft, and starts a new group if this is its first node's first start.
/// A data directory from a single MDS is taken over as a group of one at
/// the index it had reached.
pub async fn start(
    cfg: &crate::config::Config,
    chunk_size: u64,
    addr: &str,
    hub: Arc<crate::watch::Hub>,
    registry: Arc<Mutex<crate::chunkds::Registry>>,
) -> anyhow::Result<Started> {
    let id = cfg.node_id.unwrap_or(1);
    let peers = match &cfg.peers {
        Some(p) => crate::config::parse_peers(p).map_err(anyhow::Error::msg)?,
        None => vec![(id, addr.to_string())],
    };
    let dir = cfg.data.join("raft");
    let fresh = !dir.join("log").exists();
    let log = log_store::LogStore::open(
        &dir.join("log"),
        Duration::from_millis(cfg.test_sync_delay_ms),
    )?;
    let mut sm = state_machine::StateMachine::open(
        &dir.join("snapshot"),
        chunk_size,
        hub.clone(),
        registry,
    )?;
    if fresh && !cfg.join {
        if let Some(st) = legacy_state(&cfg.data, chunk_size)? {
            // A single MDS's data directory: its state becomes the group's
            // first snapshot (with --peers as the group), and its last term
            // the floor of the Raft terms (the chunk daemons remember it).
            let index = st.applied_index;
            tracing::info!(
                index,
                "taking over a single MDS's data directory as the group's first snapshot"
            );
            let nodes: BTreeMap<u64, BasicNode> =
                peers.iter().map(|(i, a)| (*i, BasicNode::new(a))).collect();
            sm.adopt(st, id, nodes).await?;
            let mut l2 = log.clone();
            use openraft::storage::RaftLogStorage;
            l2.purge(openraft::LogId::new(
                openraft::CommittedLeaderId::new(0, id),
                index,
            ))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let last_term = crate::term::Term::last(&cfg.data)?.max(cfg.min_term);
            if last_term > 0 {
                log.save_vote_now(&openraft::Vote::new(last_term, id))?;
            }
        }
    }
    let state = sm.state();
    let acks = Arc::new(Acks::default());
    let via = match (&cfg.peer_via, &cfg.peers) {
        (Some(v), Some(p)) => crate::config::parse_peer_via(v, p)
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .collect(),
        _ => HashMap::new(),
    };
    let dial = Arc::new(network::Dial::new(via));
    let network = network::Network::new(acks.clone(), dial.clone());
    let config = Arc::new(raft_config(cfg)?);
    let raft = Raft::new(id, config, network, log.clone(), sm)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start openraft: {e}"))?;
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Only the lowest id starts a new group; the others wait to be
    // contacted, so a wiped node never starts a group of its own.
    let first = peers.iter().map(|(i, _)| *i).min() == Some(id);
    if !initialized && !cfg.join && first {
        let members: BTreeMap<u64, BasicNode> =
            peers.iter().map(|(i, a)| (*i, BasicNode::new(a))).collect();
        tracing::info!(?members, "starting a new MDS group");
        raft.initialize(members)
            .await
            .map_err(|e| anyhow::anyhow!("cannot start the group: {e}"))?;
    }
    let lease_ms = (cfg.election_timeout_ms * 4 / 5).max(1);
    let metrics = raft.metrics();
    Ok(Started {
        group: Arc::new(Group {
            metrics,
            raft,
            id,
            acks,
            read_lease: Duration::from_millis(lease_ms),
            write_grace: Duration::from_millis(cfg.election_timeout_ms * 4),
            hub,
            log,
            dial,
            confirmed: Mutex::new((0, 0)),
            taken_over: std::sync::atomic::AtomicU64::new(0),
            refusing: std::sync::atomic::AtomicBool::new(false),
            resumed: std::sync::atomic::AtomicBool::new(false),
        }),
        state,
    })
}

/// The state a single MDS left in `data` (snapshot + write-ahead log), if any.
fn legacy_state(
    data: &std::path::Path,
    chunk_size: u64,
) -> anyhow::Result<Option<crate::state::State>> {
    let has_wal = crate::wal::log::list_segments(&data.join("wal"))
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    let has_snap = data.join(crate::snapshot::DIR).exists();
    if !has_wal && !has_snap {
        return Ok(None);
    }
    Ok(Some(crate::datadir::recover(data, chunk_size, true)?))
}

/// The voters as "ID=ADDR".
pub fn voters(g: &Group) -> Vec<String> {
    let s = g.standing();
    s.voters
        .iter()
        .map(|v| format!("{v}={}", s.nodes.get(v).cloned().unwrap_or_default()))
        .collect()
}

fn membership_error(e: impl std::fmt::Display) -> tonic::Status {
    let msg = e.to_string();
    if msg.contains("forward") || msg.contains("leader") {
        weft_proto::leader::not_leader(None)
    } else {
        tonic::Status::failed_precondition(format!("membership change refused: {msg}"))
    }
}

/// `weft mds add`: node `id` joins as a learner, is brought up to date (by
/// snapshot if need be), then becomes a voter.
pub async fn add_node(g: &Group, id: u64, addr: &str) -> Result<(), tonic::Status> {
    if id == 0 {
        return Err(tonic::Status::invalid_argument("node ids start at 1"));
    }
    let s = g.standing();
    if s.voters.contains(&id) {
        return Err(tonic::Status::already_exists(format!(
            "node {id} is already a voter"
        )));
    }
    tracing::info!(id, addr, "adding an MDS node: catching it up as a learner");
    g.raft
        .add_learner(id, BasicNode::new(addr), true)
        .await
        .map_err(membership_error)?;
    let add: std::collections::BTreeSet<u64> = [id].into();
    g.raft
        .change_membership(openraft::ChangeMembers::AddVoterIds(add), false)
        .await
        .map_err(membership_error)?;
    tracing::info!(id, addr, "MDS node added as a voter");
    Ok(())
}

/// `weft mds remove`: node `id` leaves the group.
pub async fn remove_node(g: &Group, id: u64) -> Result<(), tonic::Status> {
    let s = g.standing();
    if !s.voters.contains(&id) && !s.nodes.contains_key(&id) {
        return Err(tonic::Status::not_found(format!(
            "no MDS node {id} in the group"
        )));
    }
    if s.voters.len() == 1 && s.voters.contains(&id) {
        return Err(tonic::Status::failed_precondition(
            "cannot remove the group's last voter",
        ));
    }
    let rm: std::collections::BTreeSet<u64> = [id].into();
    let change = if s.voters.contains(&id) {
        openraft::ChangeMembers::RemoveVoters(rm)
    } else {
        openraft::ChangeMembers::RemoveNodes(rm)
    };
    g.raft
        .change_membership(change, false)
        .await
        .map_err(membership_error)?;
    tracing::info!(id, "MDS node removed from the group");
    Ok(())
}

/// A change in whether this node leads the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Became the ready leader of a new term.
    Took { term: u64 },
    /// Stopped leading (no longer leader, nor ready).
    Lost,
}

/// Turns a node's successive standings into leadership changes (pure: it
/// holds only the term it last led).
#[derive(Debug, Default)]
pub struct LeadershipTracker {
    led: Option<u64>,
}

impl LeadershipTracker {
    pub fn observe(&mut self, s: &Standing) -> Option<Leadership> {
        if s.ready && self.led != Some(s.term) {
            self.led = Some(s.term);
            Some(Leadership::Took { term: s.term })
        } else if !s.ready && self.led.is_some() && s.role != "leader" {
            self.led = None;
            Some(Leadership::Lost)
        } else {
            None
        }
    }
}

/// This node's leadership changes, in order, as openraft's metrics change
/// (`service/leadership.rs` carries them out).
pub struct LeadershipChanges {
    group: Arc<Group>,
    rx: tokio::sync::watch::Receiver<Metrics>,
    tracker: LeadershipTracker,
    started: bool,
}

impl Group {
    pub fn leadership_changes(self: &Arc<Self>) -> LeadershipChanges {
        LeadershipChanges {
            group: self.clone(),
            rx: self.raft.metrics(),
            tracker: LeadershipTracker::default(),
            started: false,
        }
    }
}

impl LeadershipChanges {
    /// The next change and the standing it was seen in (the first call
    /// looks at the standing now); None once openraft has stopped.
    pub async fn next(&mut self) -> Option<(Leadership, Standing)> {
        loop {
            if self.started && self.rx.changed().await.is_err() {
                return None;
            }
            self.started = true;
            let s = self.group.standing();
            if let Some(change) = self.tracker.observe(&s) {
                return Some((change, s));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(role: &'static str, term: u64, ready: bool) -> Standing {
        Standing {
            leader: (role == "leader").then_some(1),
            term,
            role,
            ready,
            voters: vec![1, 2, 3],
            nodes: BTreeMap::new(),
            last_log: 0,
            applied: 0,
        }
    }

    #[test]
    fn leadership_is_taken_once_per_term_when_ready_and_lost_once() {
        let mut t = LeadershipTracker::default();
        assert_eq!(t.observe(&standing("follower", 1, false)), None);
        // Elected, but the earlier terms' entries not yet applied.
        assert_eq!(t.observe(&standing("leader", 2, false)), None);
        assert_eq!(
            t.observe(&standing("leader", 2, true)),
            Some(Leadership::Took { term: 2 })
        );
        assert_eq!(t.observe(&standing("leader", 2, true)), None);
        // Still leader but a new term (re-elected): taken anew.
        assert_eq!(
            t.observe(&standing("leader", 3, true)),
            Some(Leadership::Took { term: 3 })
        );
        // Not ready but still the leader: not lost yet.
        assert_eq!(t.observe(&standing("leader", 3, false)), None);
        assert_eq!(
            t.observe(&standing("candidate", 4, false)),
            Some(Leadership::Lost)
        );
        assert_eq!(t.observe(&standing("follower", 4, false)), None);
        assert_eq!(
            t.observe(&standing("leader", 5, true)),
            Some(Leadership::Took { term: 5 })
        );
    }

    #[test]
    fn a_quorum_counts_this_node_and_fresh_acks_of_this_term() {
        let acks = Acks::default();
        let t0 = Instant::now();
        let lease = Duration::from_secs(2);
        // Alone, or one voter: always.
        assert!(acks.quorum_within(1, [1], 5, lease, t0));
        assert!(acks.quorum_within(1, [], 5, lease, t0));
        assert!(!acks.quorum_within(1, [1, 2, 3], 5, lease, t0));
        acks.ack(2, 5, t0);
        assert!(acks.quorum_within(1, [1, 2, 3], 5, lease, t0));
        assert!(acks.heard_within(2, 5, lease, t0 + lease - Duration::from_millis(1)));
        // The lease runs out at t0 + lease exactly.
        assert!(!acks.quorum_within(1, [1, 2, 3], 5, lease, t0 + lease));
        assert!(!acks.heard_within(2, 5, lease, t0 + lease));
        // An ack of an older term says nothing of this one.
        assert!(!acks.quorum_within(1, [1, 2, 3], 6, lease, t0));
        // Four voters need three.
        assert!(!acks.quorum_within(1, [1, 2, 3, 4], 5, lease, t0));
        acks.ack(3, 5, t0);
        assert!(acks.quorum_within(1, [1, 2, 3, 4], 5, lease, t0));
    }

    #[test]
    fn a_lease_request_crosses_the_group_log_unchanged() {
        let req = Request::Lease {
            session: 7,
            seq: 3,
            ctx: Ctx {
                now: crate::ns::Time { sec: 1000, nsec: 0 },
                caller: crate::ns::Caller::root(),
            },
            op: pb::AllocChunkReq {
                ino: 42,
                index: 5,
                failed: vec![],
            },
            chunk_id: 99,
            version: 4,
        };
        let back = Cmd::from(req.clone()).into_request();
        assert_eq!(format!("{back:?}"), format!("{:?}", Some(req)));
    }
}
