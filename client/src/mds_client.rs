//! The client side of the MDS's `Meta` service.
//!
//! Every request carries this mount's random session id; every mutating request
//! also carries a fresh, strictly increasing `seq`, so that a retry of the SAME
//! request (same seq) after a transport failure is answered exactly once by the
//! MDS. Read-only requests carry seq 0 (nothing to deduplicate).
//!
//! Transport failures (connection refused, reset, HTTP/2 errors) are retried
//! with capped exponential backoff until `mds_timeout` has passed since the
//! operation began; then the operation fails with EIO. With a list of MDS
//! nodes, a retry goes to the leader a "not leader" answer named (at once),
//! or to the next node (`weft_proto::leader::MdsList`); the retry carries the
//! same (session, seq), and the group's replicated reply table answers it. A non-zero
//! `MetaReply.errno` is the MDS's verdict and is returned as is.
//!
//! Invariant: a request whose result variant does not match what the op
//! returns is a protocol error and becomes EIO (never a panic).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weft_proto::leader::MdsList;
use weft_proto::meta_client::MetaClient;
use weft_proto::meta_reply::Result as R;
use weft_proto::meta_request::Op;
use weft_proto::net::Channel;
use weft_proto::*;

use crate::cache::attr::AttrCache;
use crate::cache::meta::MetaCache;
use crate::errno::meta_errno;
use crate::log_track::{LogPos, LogTrack};
use weft_proto::contract::{self, Call, Next};

pub struct MdsClient {
    /// Lookups answered without a round trip; every call here keeps it
    /// coherent with this mount's own changes (cache/meta.rs).
    pub meta: MetaCache,
    /// Attributes for `attr_timeout`, stored only from answers no change
    /// of this mount or another can have overtaken (cache/attr.rs).
    pub attrs: AttrCache,
    /// The kernel's notifier, once mounted: a commit's attribute
    /// invalidation is written before the commit returns (see `call`).
    pub kernel_notifier: std::sync::OnceLock<fuser::Notifier>,
    /// The MDS nodes, and which one calls go to.
    pub list: MdsList,
    /// One lazily connected channel per node (weft's connection settings).
    channels: weft_proto::net::Pool,
    session: u64,
    seq: AtomicU64,
    timeout: Duration,
    /// This mount's changes not yet known on disk in the MDS log.
    log: parking_lot::Mutex<LogTrack>,
}

/// Where the MDS log stood at a reply: (epoch, index, durable index).
type ReplyLog = (u64, u64, u64);

/// What a `MetaReply` carries beside its result.
struct Extras {
    /// The changed directory's attributes (`parent_attr`).
    parent: Option<Attr>,
    /// An open for reading: its first chunks' locations.
    open_chunks: Option<ChunkList>,
}

/// Why an MDS call produced no answer.
#[derive(Debug)]
pub enum CallError {
    /// The MDS answered with this errno (or with a malformed reply: EIO).
    Errno(Errno),
    /// Nothing usable came back before the deadline; the last transport status.
    Unreachable(tonic::Status),
}

impl From<CallError> for Errno {
    fn from(e: CallError) -> Errno {
        match e {
            CallError::Errno(e) => e,
            CallError::Unreachable(_) => Errno::EIO,
        }
    }
}

impl MdsClient {
    /// Must be called inside the tokio runtime (the channel spawns its worker).
    /// `addrs`: one MDS address or a comma-separated list of a group's nodes.
    /// `attr_ttl`: how long `attrs` keeps an answer.
    pub fn new(addrs: &str, timeout: Duration, attr_ttl: Duration) -> Result<MdsClient, String> {
        let list = MdsList::parse(addrs)?;
        let channels = weft_proto::net::Pool::new(None);
        // Every address is checked now, so a bad one fails the mount.
        for a in list.all() {
            channels.channel(&a)?;
        }
        Ok(MdsClient {
            meta: MetaCache::default(),
            attrs: AttrCache::new(attr_ttl, 65536),
            kernel_notifier: std::sync::OnceLock::new(),
            list,
            channels,
            session: rand::random::<u64>() | 1,
            seq: AtomicU64::new(1),
            timeout,
            log: Default::default(),
        })
    }

    pub fn session(&self) -> u64 {
        self.session
    }

    /// The MDS node calls go to now, and its client.
    fn current(&self) -> Result<(String, MetaClient<Channel>), String> {
        let addr = self.list.current();
        let client = MetaClient::new(self.channels.channel(&addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok((addr, client))
    }

    /// One operation, retried on transport failure until `mds_timeout`.
    pub async fn call(&self, caller: &Caller, op: Op) -> Result<R, Errno> {
        self.call_within(caller, op, self.timeout)
            .await
            .map_err(Errno::from)
    }

    /// Like `call`, with an explicit retry budget.
    pub async fn call_within(
        &self,
        caller: &Caller,
        op: Op,
        budget: Duration,
    ) -> Result<R, CallError> {
        self.call_full(caller, op, budget).await.map(|(r, _)| r)
    }

    /// An open: the attributes, and for an open for reading the locations
    /// of the file's first chunks (`MetaReply.open_chunks`).
    pub async fn open(&self, caller: &Caller, op: Op) -> Result<(Attr, Option<ChunkList>), Errno> {
        match self.call_full(caller, op, self.timeout).await? {
            (R::Attr(a), chunks) => Ok((a, chunks)),
            (other, _) => Err(unexpected(&other)),
        }
    }

    /// `call_within`, with the chunk locations an open was answered with.
    async fn call_full(
        &self,
        caller: &Caller,
        op: Op,
        budget: Duration,
    ) -> Result<(R, Option<ChunkList>), CallError> {
        let started = self.meta.before(&op);
        let touch = contract::changes(&op);
        let change = self.attrs.begin(&touch);
        let read_ticket = self.attrs.ticket();
        let mkdir = matches!(op, Op::Mkdir(_));
        // A flush's commit moves size and mtime at the MDS behind the
        // kernel's back; its copy (kept long) must go.
        let committed = match &op {
            Op::CommitWrite(c) => Some(c.ino),
            _ => None,
        };
        let mut touched = contract::durability_inodes(&op);
        let r = self.call_uncached(caller, op, budget).await;
        match r {
            Ok((
                r,
                Extras {
                    parent,
                    open_chunks,
                },
                (epoch, index, durable),
            )) => {
                if !touched.is_empty() {
                    if let R::Attr(a) = &r {
                        touched.push(a.ino); // a new inode's own fsync waits for its creation
                    }
                }
                self.log.lock().reply(epoch, index, durable, &touched);
                self.meta.after(started, Some(&r), parent.as_ref(), mkdir);
                let attr = match &r {
                    R::Attr(a) => Some(a),
                    _ => None,
                };
                match (change, attr) {
                    (Some(change), _) => change.end(answered_attrs(&r)),
                    (None, Some(a)) if touch == contract::Changes::Nothing => {
                        self.attrs.read_answer(read_ticket, a)
                    }
                    (None, _) => {}
                }
                // Directly, not through the notifying thread's queue: a stat
                // right after close(2) must not be answered from the copy
                // the kernel cached during the write (stale mtime). Attributes
                // only, so the kernel takes no page lock and cannot wait on us.
                if let (Some(ino), Some(n)) = (committed, self.kernel_notifier.get()) {
                    if let Err(e) = n.inval_inode(fuser::INodeNo(ino), -1, 0) {
                        if e.raw_os_error() != Some(libc::ENOENT) {
                            tracing::debug!(ino, error = %e, "attribute invalidation failed");
                        }
                    }
                }
                Ok((r, open_chunks))
            }
            Err(e) => {
                self.meta.after(started, None, None, mkdir);
                drop(change);
                Err(e)
            }
        }
    }

    /// The reply, what the MDS sent beside it, and where the MDS log stood.
    async fn call_uncached(
        &self,
        caller: &Caller,
        op: Op,
        budget: Duration,
    ) -> Result<(R, Extras, ReplyLog), CallError> {
        let seq = if contract::is_mutation(&op) {
            self.seq.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        let _timed = crate::metrics::M.mds.guard(weft_proto::op_kind(&op));
        let req = MetaRequest {
            session: self.session,
            seq,
            caller: Some(caller.clone()),
            op: Some(op),
            wait_durable: false,
        };
        let deadline = Instant::now() + budget;
        let mut backoff = Duration::from_millis(50);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let (addr, mut client) = self.current().map_err(|e| {
                tracing::warn!("{e}");
                CallError::Errno(Errno::EIO)
            })?;
            let status = match tokio::time::timeout(
                remaining.max(Duration::from_millis(1)),
                client.call(req.clone()),
            )
            .await
            {
                Ok(Ok(reply)) => {
                    let mut reply = reply.into_inner();
                    let extras = Extras {
                        parent: reply.parent_attr.take(),
                        open_chunks: reply.open_chunks.take(),
                    };
                    let log = (reply.log_epoch, reply.log_index, reply.durable_index);
                    return decode(reply).map(|r| (r, extras, log));
                }
                Ok(Err(status)) if contract::next(Call::Meta, &status) == Next::Retry => status,
                Ok(Err(status)) => {
                    tracing::warn!(%addr, %status, "MDS call failed");
                    return Err(CallError::Errno(Errno::EIO));
                }
                Err(_) => tonic::Status::deadline_exceeded("no answer from the MDS in time"),
            };
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(%addr, %status, attempt, seq, "MDS unreachable, giving up");
                return Err(CallError::Unreachable(status));
            }
            if attempt == 1 {
                tracing::info!(%addr, %status, seq, "MDS call failed in transport, retrying");
            }
            let next = self.list.failed(&addr, Some(&status));
            let hinted = weft_proto::leader::leader_hint(&status).is_some_and(|h| h.is_some());
            if hinted && next != addr && attempt <= self.list.len() as u32 {
                // Sent to the leader we were told of: no reason to wait.
                continue;
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            // Capped low: a new MDS leader answers within a second or two.
            backoff = (backoff * 2).min(Duration::from_millis(400));
        }
    }

    /// Returns once `ino`'s changes by this mount are on disk in the MDS log
    /// (no call when a reply already said so). EIO: the MDS lost one (it
    /// restarted after a power loss).
    pub async fn log_durable_for(&self, caller: &Caller, ino: u64) -> Result<(), Errno> {
        let Some(pos) = self.log.lock().pending_for(ino) else {
            return Ok(());
        };
        let r = self.sync_log(caller, pos).await;
        if r.is_err() {
            self.log.lock().lost_ino(ino);
        }
        r
    }

    /// Returns once every change by this mount is on disk in the MDS log.
    pub async fn log_durable_all(&self, caller: &Caller) -> Result<(), Errno> {
        let pending = self.log.lock().pending_all();
        let mut first = Ok(());
        for pos in pending {
            if let Err(e) = self.sync_log(caller, pos).await {
                self.log.lock().lost_all(pos);
                first = first.and(Err(e));
            }
        }
        first
    }

    async fn sync_log(&self, caller: &Caller, pos: LogPos) -> Result<(), Errno> {
        let op = Op::SyncLog(SyncLogReq {
            index: pos.index,
            epoch: pos.epoch,
        });
        let (r, _, (epoch, index, durable)) = self
            .call_uncached(caller, op, self.timeout)
            .await
            .map_err(Errno::from)?;
        let mut log = self.log.lock();
        log.reply(epoch, index, durable, &[]);
        match r {
            R::Empty(_) => {
                log.synced(pos);
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    pub async fn attr(&self, caller: &Caller, op: Op) -> Result<Attr, Errno> {
        match self.call(caller, op).await? {
            R::Attr(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn empty(&self, caller: &Caller, op: Op) -> Result<(), Errno> {
        match self.call(caller, op).await? {
            R::Empty(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn data(&self, caller: &Caller, op: Op) -> Result<Vec<u8>, Errno> {
        match self.call(caller, op).await? {
            R::Data(d) => Ok(d),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn getattr(&self, caller: &Caller, ino: u64) -> Result<Attr, Errno> {
        self.attr(caller, Op::Getattr(GetAttrReq { ino })).await
    }

    pub async fn readdir(&self, caller: &Caller, req: ReadDirReq) -> Result<DirEntries, Errno> {
        match self.call(caller, Op::Readdir(req)).await? {
            R::Entries(e) => Ok(e),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn names(&self, caller: &Caller, ino: u64) -> Result<Vec<Vec<u8>>, Errno> {
        match self
            .call(caller, Op::Listxattr(ListXattrReq { ino }))
            .await?
        {
            R::Names(n) => Ok(n.names),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn statfs(&self, caller: &Caller) -> Result<StatFs, Errno> {
        match self.call(caller, Op::Statfs(StatFsReq {})).await? {
            R::Statfs(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn get_chunks(
        &self,
        caller: &Caller,
        ino: u64,
        first_index: u64,
        count: u32,
    ) -> Result<ChunkList, Errno> {
        let op = Op::GetChunks(GetChunksReq {
            ino,
            first_index,
            count,
        });
        match self.call(caller, op).await? {
            R::Chunks(c) => Ok(c),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn alloc_chunk(
        &self,
        caller: &Caller,
        ino: u64,
        index: u64,
        failed: Vec<String>,
    ) -> Result<ChunkWrite, Errno> {
        match self
            .call(caller, Op::AllocChunk(AllocChunkReq { ino, index, failed }))
            .await?
        {
            R::ChunkWrite(w) if w.chunk.is_some() => Ok(w),
            other => Err(unexpected(&other)),
        }
    }
}

fn decode(reply: MetaReply) -> Result<R, CallError> {
    if reply.errno != 0 {
        return Err(CallError::Errno(meta_errno(reply.errno)));
    }
    reply.result.ok_or_else(|| {
        tracing::warn!("MDS reply with errno 0 and no result");
        CallError::Errno(Errno::EIO)
    })
}

/// The attributes a reply carries: one inode's, or each of a release's
/// atime updates'.
pub(crate) fn answered_attrs(r: &R) -> &[Attr] {
    match r {
        R::Attr(a) => std::slice::from_ref(a),
        R::Attrs(list) => &list.attrs,
        _ => &[],
    }
}

fn unexpected(r: &R) -> Errno {
    let kind = match r {
        R::Attr(_) => "attr",
        R::Data(_) => "data",
        R::Entries(_) => "entries",
        R::Names(_) => "names",
        R::Statfs(_) => "statfs",
        R::Chunks(_) => "chunks",
        R::ChunkWrite(_) => "chunk_write",
        R::Empty(_) => "empty",
        R::Lock(_) => "lock",
        R::Attrs(_) => "attrs",
    };
    tracing::warn!(kind, "MDS reply of an unexpected kind");
    Errno::EIO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_maps_errno_and_missing_result() {
        let r = decode(MetaReply {
            errno: libc::ENOTEMPTY,
            result: None,
            ..Default::default()
        });
        assert!(matches!(r, Err(CallError::Errno(e)) if e == Errno::ENOTEMPTY));
        let r = decode(MetaReply {
            errno: 0,
            result: None,
            ..Default::default()
        });
        assert!(matches!(r, Err(CallError::Errno(e)) if e == Errno::EIO));
        let r = decode(MetaReply {
            errno: 0,
            result: Some(R::Empty(Empty {})),
            ..Default::default()
        });
        assert!(matches!(r, Ok(R::Empty(_))));
    }

    #[tokio::test]
    async fn unreachable_mds_gives_eio_after_the_budget() {
        // A port nobody listens on: bind, learn the port, close.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = MdsClient::new(
            &format!("127.0.0.1:{port}"),
            Duration::from_millis(300),
            Duration::ZERO,
        )
        .unwrap();
        let t0 = Instant::now();
        let r = c.getattr(&Caller::default(), 1).await;
        assert_eq!(r.unwrap_err(), Errno::EIO);
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
