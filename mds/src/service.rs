//! gRPC glue: decodes requests, routes reads to the state and mutations to the
//! committer, and fills in what only the registry knows (replica locations).
//! No file-system decisions are made here.
//!
//! The feature files (`leases.rs`, `repair.rs`, `sessions.rs`, `metrics.rs`)
//! decide and keep their own state without knowing of `Mds`; the modules
//! under `service/` carry out what they decide: `grant` (write leases),
//! `repair` (the re-replication loop and the `Admin` service), `expiry`
//! (session expiry), `leadership` (what a node does on becoming an MDS
//! group's leader), `view` (what status and metrics show), `chunk_admin`
//! (calls to chunk daemons), `propose` (the commit thread or the group's
//! log).

pub mod chunk_admin;
pub mod compact;
mod expiry;
mod grant;
mod leadership;
mod propose;
mod repair;
mod unpack;
pub use repair::spawn as spawn_repair;
pub use unpack::Unpacks;
mod view;
pub use expiry::start_expiry;
pub use leadership::watch_leadership;
pub use propose::Committer;

use crate::chunkds::{Known, Registry, Reports};
use crate::committer::{Outcome, Proposal};
use crate::exports::{self, Slot};
use crate::leases::Decided;
use crate::ns::{Caller, Ctx, ROOT_INO};
use crate::state::State;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::RwLock;
use tonic::{Request, Response, Status};
use weft_proto::caps::Mode;
use weft_proto::contract::{self, limits::MAX_CHUNKS_PER_CALL, limits::OPEN_CHUNKS, OpKind};
use weft_proto::pb::meta_reply::Result as Reply;
use weft_proto::pb::meta_request::Op;
use weft_proto::{pb, Errno};

#[derive(Clone)]
pub struct Mds {
    pub state: Arc<RwLock<State>>,
    pub registry: Arc<Mutex<Registry>>,
    pub committer: Committer,
    pub replicas: u32,
    pub heartbeat_ms: u64,
    /// Write leases and version bumps (leases.rs).
    pub leases: Arc<crate::leases::Leases>,
    /// Re-replication progress (repair.rs).
    pub repair: Arc<crate::repair::RepairStats>,
    /// Advisory locks: a single MDS's, in memory only; in a group, only when
    /// each lock-holding session was last heard from (see locks.rs).
    pub locks: Arc<Mutex<crate::locks::LockTable>>,
    /// When each client session was last heard from (see `sessions`).
    pub contacts: crate::sessions::Contacts,
    /// How long an unreferenced replica is left alone before it is deleted.
    pub orphan_grace: Duration,
    /// How far the log is written and on disk (early replies).
    pub log: LogPosition,
    /// Sent with every instruction to a chunk daemon (term fencing).
    pub term: Arc<crate::term::Term>,
    /// This node's id and the address it serves on.
    pub node_id: u64,
    pub addr: String,
    /// The MDS group this node belongs to (None: a single MDS, as before).
    pub group: Option<Arc<crate::group::Group>>,
    /// Who may mount what (exports.rs); open to all without --exports.
    pub exports: Arc<crate::exports::Exports>,
    /// Signs chunk capabilities (--cap-key); None: the cluster runs without.
    pub caps: Option<Arc<Caps>>,
    /// Unpacks of packed files under way, one per inode (service/unpack.rs).
    pub unpacks: Arc<Unpacks>,
    /// Compaction of sparse segments (service/compact.rs).
    pub compactor: Arc<compact::Compactor>,
}

/// The capability key file and how long a capability lasts.
pub struct Caps {
    pub keys: Arc<weft_proto::caps::KeyFile>,
    pub ttl: Duration,
}

#[derive(Clone)]
pub struct LogPosition {
    pub durability: Arc<crate::wal::Durability>,
    /// Random per MDS start: log indexes a client holds are only comparable
    /// within one epoch.
    pub epoch: u64,
    /// The last entry replayed at start (on disk: the log is synced at open).
    pub recovered: u64,
    /// An MDS group: replies carry the Raft log's positions and SyncLog
    /// waits for a majority (`Group::sync_log`); this is unused.
    pub replicated: bool,
}

impl LogPosition {
    /// SyncLog: Ok once `index` of `epoch` is on disk; EIO if that entry is
    /// gone (from an earlier epoch and past what this start recovered: a
    /// power loss took it).
    pub async fn sync(&self, index: u64, epoch: u64) -> Outcome {
        let index = if epoch == self.epoch {
            // Never wait for an entry that does not exist yet.
            index.min(self.durability.appended())
        } else if index <= self.recovered {
            index
        } else {
            tracing::warn!(
                index,
                recovered = self.recovered,
                "a client waits for a log entry this MDS did not recover (lost in a crash)"
            );
            return Err(Errno::EIO);
        };
        self.durability.wait(index).await;
        Ok(Reply::Empty(pb::Empty {}))
    }
}

impl Mds {
    /// Ok when this node may answer: always for a single MDS; in a group,
    /// only the leader (and for reads, only within its lease).
    pub fn check_leader(&self, read: bool) -> Result<(), Status> {
        match &self.group {
            None => Ok(()),
            Some(g) => {
                g.check_leader(read)?;
                if g.take_resumed() {
                    // While it refused, the daemons' heartbeats bounced: their
                    // silence was ours, and their replicas are where they were.
                    self.registry.lock().heard_all_now();
                    tracing::info!("answering again: chunk daemons count as heard from now");
                }
                Ok(())
            }
        }
    }

    /// The "not leader" answer for a proposal the group did not take.
    fn lost_leadership(&self) -> Status {
        match &self.group {
            Some(g) => g
                .check_leader(false)
                .err()
                .unwrap_or_else(|| weft_proto::leader::not_leader(None)),
            None => Status::unavailable("not leader"),
        }
    }

    pub async fn dispatch(
        &self,
        peer: Option<&weft_proto::identity::Peer>,
        session: u64,
        seq: u64,
        caller: Caller,
        op: Op,
    ) -> Outcome {
        // The kind (weft_proto::contract) decides the route; the client
        // numbered the request by the same table.
        match (contract::kind(&op), op) {
            (OpKind::Read, Op::Statfs(_)) => Ok(self.statfs().await),
            (OpKind::Read, Op::GetChunks(g)) => {
                self.may_touch_chunks(peer, "Meta.GetChunks", session, &caller, g.ino, false)
                    .await?;
                self.get_chunks(g).await
            }
            (OpKind::Read, Op::SyncLog(s)) => match &self.group {
                Some(g) => g.sync_log(s.index, s.epoch).await,
                None => self.log.sync(s.index, s.epoch).await,
            },
            (OpKind::Read, op) => self.state.read().await.ns.read(&caller, &op),
            (OpKind::Session, op) if self.group.is_some() => self.group_lock_op(session, op).await,
            (OpKind::Session, op) => self.lock_op(session, op),
            (OpKind::Mutation, Op::Release(r)) => {
                let all: Vec<(u64, bool, bool)> = std::iter::once((r.ino, r.write, r.held))
                    .filter(|&(ino, _, _)| ino != 0)
                    .chain(r.more.iter().map(|m| (m.ino, m.write, m.held)))
                    .collect();
                let items: Vec<(u64, bool)> = {
                    let st = self.state.read().await;
                    all.into_iter()
                        .filter(|&(ino, _, held)| !held || st.opens_of(session, ino).total() > 1)
                        .map(|(ino, write, _)| (ino, write))
                        .collect()
                };
                let atimes = r.atimes.iter().map(|a| (a.ino, a.how)).collect();
                let now = weft_proto::now().into();
                self.committer
                    .propose(move |done| Proposal::Release {
                        session,
                        seq,
                        now,
                        atimes,
                        items,
                        done,
                    })
                    .await
            }
            (OpKind::Mutation, Op::Setattr(mut s)) if s.has_fh && s.size.is_some() => {
                // A truncate through a descriptor skips the write-permission
                // check (as ftruncate does) only if this session holds the
                // file open for writing: a read-only open lends no write.
                if self.state.read().await.opens_of(session, s.ino).write == 0 {
                    s.has_fh = false;
                }
                self.mutate(session, seq, caller, Op::Setattr(s)).await
            }
            (OpKind::Mutation, Op::CommitWrite(c)) => {
                self.may_touch_chunks(peer, "Meta.CommitWrite", session, &caller, c.ino, true)
                    .await?;
                self.mutate(session, seq, caller, Op::CommitWrite(c)).await
            }
            (OpKind::Mutation, Op::CommitPacked(c)) => {
                self.may_touch_chunks(peer, "Meta.CommitPacked", session, &caller, c.ino, true)
                    .await?;
                // The segment's writer commits its needles (EINVAL for an
                // inode that is no segment: the namespace's check).
                let seg_ok = {
                    let st = self.state.read().await;
                    st.ns
                        .get(c.segment)
                        .and_then(|s| s.segment_session())
                        .is_none_or(|owner| {
                            owner == session && owner != crate::ns::MDS_SEGMENT_SESSION
                        })
                };
                if !seg_ok {
                    return Err(Errno::EACCES);
                }
                self.mutate(session, seq, caller, Op::CommitPacked(c)).await
            }
            (OpKind::Mutation, Op::AllocChunk(a)) => {
                self.may_touch_chunks(peer, "Meta.AllocChunk", session, &caller, a.ino, true)
                    .await?;
                // A packed file's chunks begin with its needle's bytes.
                if self.is_packed(a.ino).await {
                    self.unpack(a.ino).await?;
                }
                // Just after an MDS start no daemon may have registered yet:
                // that is not a full cluster, so wait out the startup grace.
                let room = self
                    .after_reports(|reg| {
                        if !reg.place(1, 0, &[]).is_empty() {
                            Reports::Done(true)
                        } else if !reg.in_startup_grace() {
                            Reports::Done(false)
                        } else {
                            Reports::Pending
                        }
                    })
                    .await;
                if !room {
                    return Err(Errno::ENOSPC);
                }
                let failed = self.failed_ids(&a.failed);
                // A chunk already there has its lease decided first, so a
                // new version goes into the log in the AllocChunk's own
                // pass through the committer (a new chunk is placed fresh).
                let existing = {
                    let st = self.state.read().await;
                    let at = st.ns.file_chunks(a.ino, a.index, 1).ok();
                    at.and_then(|(_, l)| l.first().map(|c| c.1))
                        .filter(|chunk| *chunk != 0)
                };
                let before = match existing {
                    Some(chunk) => self.decide_lease(chunk, &failed).await,
                    None => None,
                };
                let reply = match before
                    .as_ref()
                    .and_then(|d: &Decided| Some((d.chunk, d.bump()?)))
                {
                    Some((chunk_id, version)) => {
                        let ctx = Ctx {
                            now: weft_proto::now().into(),
                            caller,
                        };
                        self.committer
                            .propose(|done| Proposal::Lease {
                                session,
                                seq,
                                ctx,
                                op: a,
                                chunk_id,
                                version,
                                done,
                            })
                            .await?
                    }
                    None => self.mutate(session, seq, caller, Op::AllocChunk(a)).await?,
                };
                match reply {
                    Reply::ChunkWrite(cw) => {
                        let mut cw = self.grant(cw, &failed, before).await?;
                        if let Some(loc) = cw.chunk.as_mut() {
                            loc.cap = self.cap(loc.chunk_id, loc.version, Mode::Write);
                        }
                        Ok(Reply::ChunkWrite(cw))
                    }
                    other => Ok(other),
                }
            }
            (OpKind::Mutation, op) => self.mutate(session, seq, caller, op).await,
        }
    }

    async fn mutate(&self, session: u64, seq: u64, caller: Caller, op: Op) -> Outcome {
        let ctx = Ctx {
            now: weft_proto::now().into(),
            caller,
        };
        self.committer
            .propose(|done| Proposal::Mutate {
                session,
                seq,
                ctx,
                op,
                done,
            })
            .await
    }

    /// A capability for `chunk` at `version` in `mode`, expiring a
    /// --cap-ttl-ms from now; None without a key.
    pub fn cap(&self, chunk: u64, version: u64, mode: Mode) -> Option<pb::ChunkCap> {
        let c = self.caps.as_ref()?;
        let expires = weft_proto::caps::unix_ms() + c.ttl.as_millis() as u64;
        Some(c.keys.ring().sign(chunk, version, mode, expires))
    }

    /// A read capability for a needle's header and data only.
    fn needle_cap(&self, n: &crate::ns::NeedleAt) -> Option<pb::ChunkCap> {
        let c = self.caps.as_ref()?;
        let expires = weft_proto::caps::unix_ms() + c.ttl.as_millis() as u64;
        let end = n.offset + crate::ns::NEEDLE_HEADER + n.len;
        Some(c.keys.ring().sign_range(
            n.chunk,
            n.version,
            Mode::Read,
            expires,
            Some((n.offset, end)),
        ))
    }

    /// Whether `caller` of `session` may have `ino`'s chunk locations (and
    /// so read capabilities) or, with `write`, a write lease (and its write
    /// capability) or commit a write: the session holds the file open in
    /// that mode (the kernel checked the mode at open, and a file chmod'ed
    /// after its open stays usable through that descriptor; any open reads,
    /// only one for writing writes), or the caller may read (write) it now,
    /// as an open in that mode would be allowed (truncate(2) by path writes
    /// with no open). So a read-only open lends no write. EACCES otherwise,
    /// logged and counted (kind capability).
    async fn may_touch_chunks(
        &self,
        peer: Option<&weft_proto::identity::Peer>,
        what: &str,
        session: u64,
        caller: &Caller,
        ino: u64,
        write: bool,
    ) -> Result<(), Errno> {
        let st = self.state.read().await;
        let inode = st.ns.get(ino).ok_or(Errno::ENOENT)?;
        if inode.is_segment() {
            // A segment holds many files' needles: only the mount that
            // appends to it reaches its chunk (readers get a needle's own
            // location with the file's).
            // (Session 0 is the MDS's own: no mount's.)
            if session != crate::ns::MDS_SEGMENT_SESSION && inode.segment_session() == Some(session)
            {
                return Ok(());
            }
            drop(st);
            let why = format!("ino {ino}: a segment of another session (EACCES)");
            let _ = weft_proto::gate::refuse_as(
                weft_proto::gate::Refusal::Capability,
                peer,
                what,
                &why,
            );
            return Err(Errno::EACCES);
        }
        if self.caps.is_none() {
            // Without capabilities a chunk daemon serves whoever asks: the
            // check would guard nothing.
            return Ok(());
        }
        let opens = st.opens_of(session, ino);
        let (held, mask) = if write {
            (opens.write > 0, crate::ns::MAY_WRITE)
        } else {
            (opens.total() > 0, crate::ns::MAY_READ)
        };
        if held || crate::ns::may_access(inode, caller, mask) {
            return Ok(());
        }
        drop(st);
        let why = match (write, opens.total() > 0) {
            (true, true) => "the session holds the file open read-only and may not write it",
            (true, false) => "no open for writing and the caller may not write the file",
            (false, _) => "no open and the caller may not read the file",
        };
        let why = format!("ino {ino}, uid {}: {why} (EACCES)", caller.uid);
        let _ =
            weft_proto::gate::refuse_as(weft_proto::gate::Refusal::Capability, peer, what, &why);
        Err(Errno::EACCES)
    }

    /// Applies the caller's export to one request: the caller as squashed,
    /// and the exported directory's inode (`top`). Inode 1 in the request
    /// stands for `top`; any inode outside it is refused (ESTALE, EXDEV for
    /// where a rename or link would put a name), as are changes a read-only
    /// export or its setuid/device rules forbid. Refusals are logged and counted.
    async fn admit(
        &self,
        peer: Option<&weft_proto::identity::Peer>,
        op: &mut Op,
        caller: &Caller,
    ) -> Result<(Caller, u64), Errno> {
        if !self.exports.configured() {
            // No --exports: everyone may do everything, at no cost.
            return Ok((caller.clone(), ROOT_INO));
        }
        let what = format!("Meta.{}", weft_proto::OP_KINDS[weft_proto::op_kind(op)]);
        let refuse = |why: &str, e: Errno| {
            let why = format!("{why} ({})", e);
            let _ =
                weft_proto::gate::refuse_as(weft_proto::gate::Refusal::Export, peer, &what, &why);
            Err(e)
        };
        let Some(export) = self.exports.export_for(peer) else {
            return refuse("no export rule matches this client", Errno::EACCES);
        };
        let caller = exports::squash(&export, caller);
        let st = self.state.read().await;
        let ns = &st.ns;
        let is_dir = |ino| ns.get(ino).is_some_and(|i| i.is_dir());
        let top = if export.path == "/" {
            ROOT_INO
        } else {
            match ns.resolve_dir(&export.path) {
                Ok(t) => t,
                Err(_) => {
                    let why = format!("exported directory {} does not exist", export.path);
                    return refuse(&why, Errno::ESTALE);
                }
            }
        };
        if top != ROOT_INO {
            for (ino, slot) in exports::op_inodes(op) {
                if *ino == ROOT_INO {
                    *ino = top;
                } else if !ns.within(top, *ino) {
                    let (why, e) = match slot {
                        Slot::Object => ("inode outside the exported subtree", Errno::ESTALE),
                        Slot::Target => ("target outside the exported subtree", Errno::EXDEV),
                    };
                    let why = format!("{why} {} (ino {})", export.path, *ino);
                    return refuse(&why, e);
                }
            }
            // ".." of the export's root is the root itself, as at "/".
            if let Op::Lookup(l) = op {
                if l.parent == top && l.name == b".." {
                    l.name = b".".to_vec();
                }
            }
        }
        // A read-only export keeps no access times (as `mount -o ro`); the
        // releases still count.
        if let (true, Op::Release(r)) = (export.read_only, &mut *op) {
            r.atimes.clear();
        }
        if let Err(e) = exports::check_op(&export, op, is_dir) {
            let why = format!(
                "export rule #{} ({}) forbids this",
                export.rule, export.path
            );
            return refuse(&why, e);
        }
        Ok((caller, top))
    }

    /// A single MDS's advisory locks: answered from the in-memory table,
    /// never journaled.
    fn lock_op(&self, session: u64, op: Op) -> Outcome {
        let now = std::time::Instant::now();
        let mut t = self.locks.lock();
        match op {
            Op::Setlk(l) => {
                t.set(now, l.ino, session, l.owner, l.start, l.end, l.typ, l.pid)?;
                Ok(Reply::Empty(pb::Empty {}))
            }
            Op::Getlk(l) => {
                let c = t.test(now, l.ino, session, l.owner, l.start, l.end, l.typ)?;
                Ok(lock_info(c))
            }
            Op::ReleaseLocks(r) => {
                if r.all {
                    t.release(session, None, None);
                } else {
                    t.release(session, Some(r.ino), Some(r.owner));
                }
                Ok(Reply::Empty(pb::Empty {}))
            }
            _ => {
                t.touch(session, now);
                Ok(Reply::Empty(pb::Empty {}))
            }
        }
    }

    /// An MDS group's advisory locks: every change is a log entry, applied
    /// to the replicated table on every node (`locks::Locks`), so the locks
    /// outlive a failover. F_GETLK, and a conflict or a release of nothing,
    /// are answered from the leader's applied table without a log entry
    /// (anything answered before is applied here already), so an F_SETLKW
    /// that waits does not fill the log. The leader drops the locks of
    /// sessions silent past the lock expiry, by a logged `ReleaseSession`.
    async fn group_lock_op(&self, session: u64, op: Op) -> Outcome {
        use crate::locks::LockChange;
        let expired = {
            let now = std::time::Instant::now();
            let mut t = self.locks.lock();
            t.touch(session, now);
            t.take_expired(now)
        };
        for gone in expired {
            if self.state.read().await.locks.holds(gone, None, None) {
                self.propose_lock(gone, LockChange::ReleaseSession).await?;
            }
        }
        // Answered from this node's table: only while it surely leads.
        if self.check_leader(true).is_err() {
            return Err(crate::committer::NOT_LEADER);
        }
        let change = match op {
            Op::Setlk(l) => {
                let st = self.state.read().await;
                if l.typ == crate::locks::F_UNLCK {
                    if !st.locks.holds(session, Some(l.ino), Some(l.owner)) {
                        return Ok(Reply::Empty(pb::Empty {}));
                    }
                } else if st
                    .locks
                    .test(l.ino, session, l.owner, (l.start, l.end), l.typ)?
                    .is_some()
                {
                    return Err(Errno::EAGAIN);
                }
                LockChange::Set {
                    ino: l.ino,
                    owner: l.owner,
                    start: l.start,
                    end: l.end,
                    typ: l.typ,
                    pid: l.pid,
                }
            }
            Op::Getlk(l) => {
                let st = self.state.read().await;
                let c = st
                    .locks
                    .test(l.ino, session, l.owner, (l.start, l.end), l.typ)?;
                return Ok(lock_info(c));
            }
            Op::ReleaseLocks(r) => {
                let (ino, owner) = if r.all {
                    (None, None)
                } else {
                    (Some(r.ino), Some(r.owner))
                };
                if !self.state.read().await.locks.holds(session, ino, owner) {
                    return Ok(Reply::Empty(pb::Empty {}));
                }
                match (ino, owner) {
                    (Some(ino), Some(owner)) => LockChange::Release { ino, owner },
                    _ => LockChange::ReleaseSession,
                }
            }
            // A keepalive: the touch above is all it does.
            _ => return Ok(Reply::Empty(pb::Empty {})),
        };
        self.propose_lock(session, change).await
    }

    async fn propose_lock(&self, session: u64, change: crate::locks::LockChange) -> Outcome {
        self.committer
            .propose(|done| Proposal::Lock {
                session,
                change,
                done,
            })
            .await
    }

    async fn statfs(&self) -> Reply {
        let (counts, chunk_size) = {
            let st = self.state.read().await;
            (st.ns.counts(), st.ns.chunk_size())
        };
        let (capacity, free) = self.registry.lock().space();
        let r = self.replicas.max(1) as u64;
        Reply::Statfs(pb::StatFs {
            total_bytes: capacity / r,
            free_bytes: free / r,
            files: counts.inodes,
            chunk_size,
            block_size: 4096,
            name_max: 255,
        })
    }

    /// Locations of a chunk; just after an MDS restart the daemons may not have
    /// reported yet, so wait for them (up to the dead-after time) rather than
    /// tell a reader the data is gone.
    async fn wait_locations(&self, chunk_id: u64, version: u64) -> Vec<pb::Replica> {
        self.after_reports(|reg| {
            let locs = reg.locations(chunk_id, version);
            if !locs.is_empty() || !reg.may_have_unreported(chunk_id) {
                Reports::Done(locs)
            } else {
                Reports::Pending
            }
        })
        .await
    }

    /// Asks `check` now and again after every daemon registration or
    /// heartbeat (never on a timer) until it decides; the end of the startup
    /// grace also wakes it, and by then every check decides.
    pub async fn after_reports<T>(&self, mut check: impl FnMut(&Registry) -> Reports<T>) -> T {
        let reported = self.registry.lock().reported();
        loop {
            let next = reported.notified();
            tokio::pin!(next);
            // Registered before the check, so a report that lands between the
            // check and the wait still wakes it.
            next.as_mut().enable();
            let grace_left = {
                let reg = self.registry.lock();
                if let Reports::Done(t) = check(&reg) {
                    return t;
                }
                reg.grace_left()
            };
            tokio::select! {
                _ = next => {}
                // At least a tick, so a check that still says Pending after
                // the grace does not spin.
                _ = tokio::time::sleep(grace_left.max(Duration::from_millis(10))) => {}
            }
        }
    }

    async fn get_chunks(&self, g: pb::GetChunksReq) -> Outcome {
        let count = g.count.clamp(1, MAX_CHUNKS_PER_CALL);
        let (file_size, chunk_size, list, needle) = {
            let st = self.state.read().await;
            let (size, list) = st.ns.file_chunks(g.ino, g.first_index, count)?;
            (size, st.ns.chunk_size(), list, st.ns.needle(g.ino))
        };
        let packed = match needle {
            Some(n) => Some(pb::Needle {
                chunk: Some(pb::ChunkLoc {
                    index: 0,
                    chunk_id: n.chunk,
                    version: n.version,
                    replicas: self.wait_locations(n.chunk, n.version).await,
                    // The needle's bytes only, not its segment neighbours'.
                    cap: self.needle_cap(&n),
                }),
                offset: n.offset,
                len: n.len,
            }),
            None => None,
        };
        let mut chunks = Vec::with_capacity(list.len());
        for (index, chunk_id, version) in list {
            let replicas = if chunk_id == 0 {
                Vec::new()
            } else {
                self.wait_locations(chunk_id, version).await
            };
            chunks.push(pb::ChunkLoc {
                index,
                chunk_id,
                version,
                replicas,
                cap: (chunk_id != 0)
                    .then(|| self.cap(chunk_id, version, Mode::Read))
                    .flatten(),
            });
        }
        Ok(Reply::Chunks(pb::ChunkList {
            chunk_size,
            file_size,
            chunks,
            packed,
        }))
    }

    fn classify(st: &State) -> impl Fn(u64) -> Known + '_ {
        |chunk| match st.ns.chunk_owner(chunk) {
            Some((_, _, version)) => Known::Current(version),
            None => Known::Unreferenced,
        }
    }
}

#[tonic::async_trait]
impl pb::meta_server::Meta for Mds {
    async fn call(&self, req: Request<pb::MetaRequest>) -> Result<Response<pb::MetaReply>, Status> {
        let peer = weft_proto::gate::peer_of(&req).cloned();
        let req = req.into_inner();
        let mut op = req
            .op
            .ok_or_else(|| Status::invalid_argument("MetaRequest without an op"))?;
        let caller = Caller::from(&req.caller.unwrap_or_default());
        self.check_leader(contract::kind(&op) == OpKind::Read)?;
        self.contacts.touch(req.session);
        let (timer, kind) = (weft_metrics::Timer::start(), weft_proto::op_kind(&op));
        // The export decides the caller, the root and what may be touched.
        let admitted = self.admit(peer.as_ref(), &mut op, &caller).await;
        let parent = contract::changed_dir(&op);
        let listed = match &op {
            Op::Readdir(r) => Some(r.ino),
            _ => None,
        };
        let read_open = match &op {
            Op::Open(o) if reads(o.flags) => Some(o.ino),
            _ => None,
        };
        let (outcome, top) = match admitted {
            Ok((caller, top)) => (
                self.dispatch(peer.as_ref(), req.session, req.seq, caller, op)
                    .await,
                top,
            ),
            Err(e) => (Err(e), ROOT_INO),
        };
        if outcome == Err(crate::committer::NOT_LEADER) {
            return Err(self.lost_leadership());
        }
        let (log_index, durable_index, log_epoch) = if let Some(g) = &self.group {
            let (index, durable, epoch) = g.reply_position();
            if req.wait_durable && outcome.is_ok() && index > durable {
                if let Err(e) = g.sync_log(index, epoch).await {
                    return Err(match e {
                        crate::committer::NOT_LEADER => self.lost_leadership(),
                        e => Status::unavailable(format!("not on disk on a majority: {e:?}")),
                    });
                }
            }
            (index, durable, epoch)
        } else {
            // The change (or the state a read saw) is at or below what is written now.
            let log_index = self.log.durability.appended();
            if req.wait_durable && outcome.is_ok() {
                self.log.durability.wait(log_index).await;
            }
            (log_index, self.log.durability.durable(), self.log.epoch)
        };
        crate::metrics::M.requests.done(kind, timer);
        if let Err(e) = &outcome {
            crate::metrics::M.errors.inc(e.code());
        }
        let reply = match outcome {
            Ok(result) => {
                // Spares the client a GetAttr of the directory it just changed.
                let mut parent_attr = match parent {
                    Some(p) => self.state.read().await.ns.getattr(p).ok(),
                    None => None,
                };
                // The first read's GetChunks, answered with the open. The
                // session holds the file open for reading now, which is what
                // GetChunks would check.
                let open_chunks = match read_open {
                    Some(ino) => match self
                        .get_chunks(pb::GetChunksReq {
                            ino,
                            first_index: 0,
                            count: OPEN_CHUNKS,
                        })
                        .await
                    {
                        Ok(Reply::Chunks(l)) => Some(l),
                        _ => None,
                    },
                    None => None,
                };
                let mut result = result;
                if top != ROOT_INO {
                    let top_attr = match listed {
                        Some(d) if d == top => self.state.read().await.ns.getattr(top).ok(),
                        _ => None,
                    };
                    exports::map_reply(top, &mut result, parent_attr.as_mut(), top_attr);
                }
                pb::MetaReply {
                    errno: 0,
                    result: Some(result),
                    parent_attr,
                    log_index,
                    durable_index,
                    log_epoch,
                    open_chunks,
                }
            }
            Err(e) => pb::MetaReply {
                errno: e.code(),
                result: None,
                parent_attr: None,
                log_index,
                durable_index,
                log_epoch,
                open_chunks: None,
            },
        };
        Ok(Response::new(reply))
    }
}

#[tonic::async_trait]
impl pb::master_server::Master for Mds {
    async fn register(
        &self,
        req: Request<pb::RegisterReq>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        self.check_leader(false)?;
        let req = req.into_inner();
        let st = self.state.read().await;
        {
            let mut reg = self.registry.lock();
            reg.register(&req, Self::classify(&st));
            // An MDS group's drain marks outlive its leaders' registries.
            if st.draining.contains(&req.chunkd_id) {
                reg.set_draining(req.chunkd_id, true);
            }
        }
        tracing::info!(chunkd = req.chunkd_id, addr = %req.addr, rack = %req.rack, chunks = req.chunks.len(), "chunk daemon registered");
        Ok(Response::new(pb::RegisterReply {
            chunk_size: st.ns.chunk_size(),
            heartbeat_ms: self.heartbeat_ms,
            term: self.term.get(),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatReq>,
    ) -> Result<Response<pb::HeartbeatReply>, Status> {
        self.check_leader(false)?;
        let req = req.into_inner();
        let st = self.state.read().await;
        let mut reg = self.registry.lock();
        let collected = reg.collect_orphans(self.orphan_grace, st.ns.next_chunk_id());
        if collected > 0 {
            tracing::info!(
                replicas = collected,
                "deleting orphan replicas (no file references them)"
            );
        }
        let reply = match reg.heartbeat(&req, Self::classify(&st)) {
            Some(delete_chunks) => pb::HeartbeatReply {
                reregister: false,
                delete_chunks,
                term: self.term.get(),
            },
            None => pb::HeartbeatReply {
                reregister: true,
                delete_chunks: vec![],
                term: self.term.get(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn report_corrupt(
        &self,
        req: Request<pb::CorruptReq>,
    ) -> Result<Response<pb::Empty>, Status> {
        self.check_leader(false)?;
        let req = req.into_inner();
        tracing::warn!(
            chunkd = req.chunkd_id,
            chunk = req.chunk_id,
            "corrupt replica reported"
        );
        self.registry.lock().corrupt(req.chunkd_id, req.chunk_id);
        Ok(Response::new(pb::Empty {}))
    }

    async fn status(
        &self,
        _req: Request<pb::StatusReq>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        // A follower that knows the leader sends the caller there (the
        // leader sees every node); with no leader it answers itself.
        if let Some(g) = &self.group {
            if let Err(s) = g.check_leader(false) {
                if weft_proto::leader::leader_hint(&s).is_some_and(|h| h.is_some()) {
                    return Err(s);
                }
            }
        }
        Ok(Response::new(self.status_reply().await))
    }

    async fn fsck(&self, req: Request<pb::FsckReq>) -> Result<Response<pb::FsckReply>, Status> {
        self.check_leader(true)?;
        let r = req.into_inner();
        let max = match r.max_inodes {
            0 => usize::MAX,
            n => n as usize,
        };
        self.fsck_reply(r.after_ino, max).await
    }
}

impl Mds {
    /// The cluster as `weft status`, the metrics and the status page show it.
    pub async fn status_reply(&self) -> pb::StatusReply {
        let st = self.state.read().await;
        let counts = st.ns.counts();
        let reg = self.registry.lock();
        let (mut under, mut missing, mut chunks) = (0, 0, 0);
        for (_, _, chunk, version) in st.ns.all_chunks() {
            chunks += 1;
            let good = reg.good_replicas(chunk, version);
            if good == 0 {
                missing += 1;
            } else if good < self.replicas {
                under += 1;
            }
        }
        let (mds, leader) = self.mds_nodes(st.applied_index);
        let (mut segments, mut segment_bytes, mut segment_live_bytes) = (0, 0, 0);
        for s in st.ns.segment_infos() {
            segments += 1;
            segment_bytes += s.written;
            segment_live_bytes += s.live.bytes;
        }
        pb::StatusReply {
            chunkds: reg.status(),
            files: counts.files,
            directories: counts.directories,
            chunks,
            under_replicated: under,
            missing,
            replicas: self.replicas,
            chunk_size: st.ns.chunk_size(),
            copies_in_flight: self.repair.in_flight(),
            copies_done: self.repair.done(),
            copied_bytes: self.repair.bytes(),
            rebalancing: self.repair.rebalancing(),
            log_appended_index: self.log.durability.appended(),
            log_durable_index: self.log.durability.durable(),
            mds,
            leader,
            ops: crate::metrics::op_stats(),
            segments,
            segment_bytes,
            segment_live_bytes,
            compactions: self.compactor.passes(),
        }
    }

    /// The MDS nodes as this node sees them, and the leader's id (0: none known).
    fn mds_nodes(&self, applied: u64) -> (Vec<pb::MdsNode>, u64) {
        let Some(g) = &self.group else {
            // A single MDS leads a group of one.
            return (
                vec![pb::MdsNode {
                    id: self.node_id,
                    addr: self.addr.clone(),
                    role: "leader".into(),
                    term: self.term.get(),
                    last_log_index: self.log.durability.appended(),
                    applied,
                }],
                self.node_id,
            );
        };
        let s = g.standing();
        let replication = g.raft.metrics().borrow().replication.clone();
        let replication = replication.unwrap_or_default();
        let now = std::time::Instant::now();
        let lease = g.read_lease * 4;
        let nodes = s
            .nodes
            .iter()
            .map(|(id, addr)| {
                let voter = s.voters.contains(id);
                if *id == g.id {
                    // A leader no majority acknowledges (cut off, or
                    // restarted into its old term) is not the one the
                    // group follows: "stale", not "leader".
                    let role = if s.role == "leader" && !g.majority_heard(&s, now) {
                        "stale"
                    } else {
                        s.role
                    };
                    return pb::MdsNode {
                        id: *id,
                        addr: addr.clone(),
                        role: role.into(),
                        term: s.term,
                        last_log_index: s.last_log,
                        applied: s.applied,
                    };
                }
                // Only the leader knows how far the others are.
                let matched = replication.get(id).copied().flatten();
                let heard = g.acks.heard_within(*id, s.term, lease, now);
                let role = if s.role != "leader" {
                    if Some(*id) == s.leader {
                        "leader"
                    } else if voter {
                        "follower"
                    } else {
                        "learner"
                    }
                } else if !heard {
                    "unreachable"
                } else if voter {
                    "follower"
                } else {
                    "learner"
                };
                pb::MdsNode {
                    id: *id,
                    addr: addr.clone(),
                    role: role.into(),
                    term: s.term,
                    last_log_index: matched.map(|l| l.index).unwrap_or(0),
                    applied: matched.map(|l| l.index).unwrap_or(0),
                }
            })
            .collect();
        (nodes, s.leader.unwrap_or(0))
    }

    /// One page of fsck: the chunks of at most `max` inodes after `after`;
    /// orphans are counted on the last page.
    async fn fsck_reply(&self, after: u64, max: usize) -> Result<Response<pb::FsckReply>, Status> {
        let st = self.state.read().await;
        let reg = self.registry.lock();
        let mut problems = Vec::new();
        let mut chunks = 0;
        let (page, walked, next) = st.ns.chunks_after(after, max);
        for (ino, index, chunk, version) in page {
            chunks += 1;
            let good = reg.good_replicas(chunk, version);
            if good < self.replicas {
                problems.push(pb::FsckProblem {
                    ino,
                    path: st.ns.path_of(ino),
                    index,
                    chunk_id: chunk,
                    version,
                    good_replicas: good,
                    want: self.replicas,
                });
            }
        }
        let (mut orphan_chunks, mut orphan_replicas) = (0, 0);
        if next.is_none() {
            for (_, n) in reg.orphans() {
                orphan_chunks += 1;
                orphan_replicas += n as u64;
            }
        }
        let missing_chunks = problems.iter().filter(|p| p.good_replicas == 0).count() as u64;
        let counts = st.ns.counts();
        Ok(Response::new(pb::FsckReply {
            files: counts.files,
            chunks,
            problems,
            orphan_chunks,
            orphan_replicas,
            missing_chunks,
            next_ino: next.unwrap_or(0),
            inodes: counts.inodes,
            walked: walked as u64,
        }))
    }
}

/// The `Coherence` service with export rules: a mount of a subtree gets only
/// the invalidations inside it, with the exported directory as inode 1; a
/// client no rule admits gets no stream, and a stream ends when the rules
/// change what its client may see (the mount watches again, under the new rule).
pub struct Watch {
    pub hub: Arc<crate::watch::Hub>,
    pub mds: Mds,
}

#[tonic::async_trait]
impl pb::coherence_server::Coherence for Watch {
    type WatchStream = crate::watch::WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchReq>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // In an MDS group only the leader pushes (a mount follows "not leader").
        self.mds.check_leader(false)?;
        let peer = weft_proto::gate::peer_of(&req).cloned();
        let r = req.into_inner();
        let Some(export) = self.mds.exports.export_for(peer.as_ref()) else {
            return Err(weft_proto::gate::refuse_as(
                weft_proto::gate::Refusal::Export,
                peer.as_ref(),
                "Coherence.Watch",
                "no export rule matches this client",
            ));
        };
        if !self.mds.exports.configured() {
            return Ok(Response::new(self.hub.watch(r.session, r.strict, ROOT_INO)));
        }
        let top = if export.path == "/" {
            ROOT_INO
        } else {
            let top = self.mds.state.read().await.ns.resolve_dir(&export.path);
            top.map_err(|_| Status::not_found("the exported directory does not exist"))?
        };
        let stream = self.hub.watch(r.session, r.strict, top);
        use tokio_stream::StreamExt;
        let exports = self.mds.exports.clone();
        let path = export.path;
        let mut ended = false;
        let mapped = stream.map_while(move |b| {
            if ended {
                return None;
            }
            // New rules apply to a running stream too (checked at every
            // message, ticks included: within 200 ms).
            if exports.export_for(peer.as_ref()).map(|e| e.path).as_ref() != Some(&path) {
                ended = true;
                return Some(Err(Status::unavailable(
                    "the export rules changed: watch again",
                )));
            }
            Some(b.map(|mut b| {
                if top != ROOT_INO {
                    for i in b.items.iter_mut() {
                        if i.ino == top {
                            i.ino = ROOT_INO;
                        }
                        if i.parent == top {
                            i.parent = ROOT_INO;
                        }
                    }
                }
                b
            }))
        });
        Ok(Response::new(Box::pin(mapped)))
    }

    async fn ack(&self, req: Request<pb::AckReq>) -> Result<Response<pb::AckReply>, Status> {
        crate::watch::Service(self.hub.clone()).ack(req).await
    }
}

/// F_GETLK's answer: the conflicting lock, or F_UNLCK for none.
/// An open(2) with these flags may read the file.
fn reads(flags: u32) -> bool {
    flags as i32 & libc::O_ACCMODE != libc::O_WRONLY
}

fn lock_info(c: Option<crate::locks::Lock>) -> Reply {
    Reply::Lock(match c {
        Some(c) => pb::LockInfo {
            typ: if c.write {
                crate::locks::F_WRLCK
            } else {
                crate::locks::F_RDLCK
            },
            start: c.start,
            end: c.end,
            pid: c.pid,
        },
        None => pb::LockInfo {
            typ: crate::locks::F_UNLCK,
            ..Default::default()
        },
    })
}
