//! The fuser `Filesystem` implementation: decode each kernel request into owned
//! values, spawn the matching `Weft` operation onto the tokio runtime, and send
//! the reply from that task (fuser 0.18 replies are `Send`), so a slow
//! operation never blocks the others.
//!
//! Invariants: every request gets exactly one reply (a dropped reply would be
//! answered EIO by fuser); errors reach the kernel only through
//! `errno::to_fuse`; the session loop thread never waits on the network,
//! except in `destroy`, which flushes everything before the process exits.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::*;
use tokio::runtime::Handle as Rt;
use tracing::Instrument;

use weft_client::cache::kernel::Ticket;
use weft_client::client::{SetAttrArgs, Weft};
use weft_client::errno::to_fuse;
use weft_client::metrics::{FuseOp, M};

pub struct WeftFs {
    w: Arc<Weft>,
    rt: Rt,
    /// The session's notifier, set once mounted (`write` of direct I/O).
    notifier: Arc<OnceLock<Notifier>>,
    paged: Arc<PagedInodes>,
}

impl WeftFs {
    pub fn new(w: Arc<Weft>, rt: Rt, notifier: Arc<OnceLock<Notifier>>) -> WeftFs {
        WeftFs {
            w,
            rt,
            notifier,
            paged: Arc::new(PagedInodes::new()),
        }
    }

    /// Runs `f(weft, caller)` on the runtime, timed as a FUSE `op` until it
    /// has answered.
    fn spawn<F, Fut>(&self, req: &Request, op: FuseOp, f: F)
    where
        F: FnOnce(Arc<Weft>, weft_proto::Caller) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let w = self.w.clone();
        let (uid, gid, pid) = (req.uid(), req.gid(), req.pid());
        let timed = M.fuse.guard(op.index());
        // One request id per FUSE request: the MDS and chunk daemons log it
        // for the calls this request makes (weft_proto::reqid).
        let id = weft_proto::reqid::new_id();
        let span = tracing::info_span!(
            "fuse",
            req = %weft_proto::reqid::Id(id),
            op = FuseOp::LABELS[op.index()],
            pid,
        );
        self.rt.spawn(
            weft_proto::reqid::scope(
                id,
                weft_proto::reqid::log_if_slow("fuse request", async move {
                    let caller = w.caller(uid, gid, pid);
                    f(w, caller).await;
                    drop(timed);
                }),
            )
            .instrument(span),
        );
    }
}

/// Inodes whose pages the kernel may hold in its page cache: a read or a
/// write other than a direct one reached weftfs for them (pages enter the
/// page cache no other way: weftfs never sends FUSE_NOTIFY_STORE). Marked
/// before such a request is served, never cleared; kept as bits of a fixed
/// table by inode number, so a collision only costs an invalidation that was
/// not needed. A direct write of an inode not marked when its bytes were
/// accepted needs no invalidation: any read that could have cached the old
/// bytes was marked before it read them.
struct PagedInodes(Box<[AtomicU64]>);

impl PagedInodes {
    const BITS: u64 = 1 << 16;

    fn new() -> PagedInodes {
        PagedInodes((0..Self::BITS / 64).map(|_| AtomicU64::new(0)).collect())
    }

    fn mark(&self, ino: u64) {
        let bit = ino % Self::BITS;
        self.0[(bit / 64) as usize].fetch_or(1 << (bit % 64), AtomicOrdering::SeqCst);
    }

    fn marked(&self, ino: u64) -> bool {
        let bit = ino % Self::BITS;
        self.0[(bit / 64) as usize].load(AtomicOrdering::SeqCst) & (1 << (bit % 64)) != 0
    }
}

/// A request the kernel's direct I/O path sent (fuse_direct_io): O_DIRECT,
/// and a lock owner, which page cache reads and writes never carry (nor the
/// buffered fallback of a direct write).
fn is_direct(flags: OpenFlags, lock_owner: Option<LockOwner>) -> bool {
    flags.0 & libc::O_DIRECT != 0 && lock_owner.is_some()
}

fn bytes(s: &OsStr) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// Replies (parent, name) → attr with the TTLs the kernel may keep it for
/// (cache/kernel.rs); `t` is the ticket taken when the request arrived.
fn entry(
    w: &Weft,
    reply: ReplyEntry,
    t: Ticket,
    parent: INodeNo,
    name: &[u8],
    r: Result<FileAttr, weft_proto::Errno>,
) {
    match r {
        Ok(a) => {
            let (attr_ttl, entry_ttl) = w.kernel().entry_reply(t, parent.0, name, a.ino.0);
            reply.entry_with_ttls(&attr_ttl, &entry_ttl, &a, Generation(0));
            w.kernel()
                .after_reply(t, &[(parent.0, name.to_vec(), a.ino.0)]);
        }
        Err(e) => reply.error(to_fuse(e)),
    }
}

/// A name that does not exist: with a TTL, a negative entry the kernel
/// remembers for entry_timeout (short: a break could not take it back);
/// another mount's create of it is pushed by the MDS and invalidates it
/// (cache/coherence.rs).
fn negative(w: &Weft, reply: ReplyEntry) {
    // The caller sees ENOENT, whether as an error or a cached negative entry.
    M.errors.inc(libc::ENOENT);
    let ttl = w.kernel().entry_short();
    if ttl.is_zero() {
        reply.error(Errno::ENOENT);
    } else {
        reply.entry_with_ttls(
            &Duration::ZERO,
            &ttl,
            &weft_client::convert::negative_entry(),
            Generation(0),
        );
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), weft_proto::Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(to_fuse(e)),
    }
}

/// Answers getxattr/listxattr per the size protocol: 0 asks for the size;
/// a buffer too small is ERANGE.
fn xattr_reply(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, weft_proto::Errno>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(to_fuse(e)),
    }
}

impl Filesystem for WeftFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // 1 MiB requests: fewer round trips per chunk.
        if let Err(max) = config.set_max_write(1 << 20) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        for cap in [
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_BIG_WRITES,
            InitFlags::FUSE_MAX_PAGES,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            // An AIO direct write is then answered -EIOCBQUEUED by the
            // kernel, which skips its page cache invalidation after the
            // write: `write` invalidates the range itself (generic/451).
            InitFlags::FUSE_ASYNC_DIO,
            // Locks go to the MDS (locks.rs), so mounts exclude each other.
            InitFlags::FUSE_POSIX_LOCKS,
            // ACLs: the kernel enforces them and leaves the umask to us (the
            // MDS applies it only where no default ACL is inherited).
            InitFlags::FUSE_POSIX_ACL,
            InitFlags::FUSE_DONT_MASK,
            InitFlags::FUSE_FLOCK_LOCKS,
            // File handles (name_to_handle_at/open_by_handle_at, NFS export):
            // inode numbers are the MDS's, stable across mounts, and a lookup
            // of "." by inode number finds the inode again.
            InitFlags::FUSE_EXPORT_SUPPORT,
        ] {
            if config.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "kernel lacks capability");
            }
        }
        tracing::info!("FUSE session initialised");
        Ok(())
    }

    fn destroy(&mut self) {
        let w = self.w.clone();
        let r = self.rt.block_on(async move { w.flush_all().await });
        if let Err(e) = r {
            tracing::error!(error = %e, "data could not be stored at unmount");
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let t = self.w.kernel().ticket();
        // Answered here, without a hand-off to the runtime, when weftfs knows it.
        if name.len() <= weft_client::client::NAME_MAX {
            let timer = weft_metrics::Timer::start();
            let found = self.w.lookup_cached(parent.0, name.as_bytes());
            weft_client::metrics::cache(weft_client::metrics::Cache::Meta, found.is_some());
            match found {
                Some(Err(weft_proto::Errno::ENOENT)) => {
                    negative(&self.w, reply);
                    M.fuse.done(FuseOp::Lookup.index(), timer);
                    return;
                }
                Some(r) => {
                    entry(&self.w, reply, t, parent, name.as_bytes(), r);
                    M.fuse.done(FuseOp::Lookup.index(), timer);
                    return;
                }
                None => {}
            }
        }
        let name = bytes(name);
        self.spawn(req, FuseOp::Lookup, move |w, c| async move {
            match w.lookup(&c, parent.0, name.clone()).await {
                Err(weft_proto::Errno::ENOENT) => negative(&w, reply),
                r => entry(&w, reply, t, parent, &name, r),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        // Inode numbers are the MDS's; only the kernel cache's records of
        // which names it holds go (cache/kernel.rs).
        self.w.kernel().forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        // E.g. the directory a create just changed, checked for permission
        // on the next path walk: no hand-off, no round trip.
        let atime_pending = self.w.atime_in_flight(ino.0);
        if !atime_pending {
            let timer = weft_metrics::Timer::start();
            let cached = self.w.getattr_cached(ino.0);
            weft_client::metrics::cache(weft_client::metrics::Cache::Meta, cached.is_some());
            if let Some(a) = cached {
                reply.attr(&self.w.kernel().attr_ttl(), &a);
                M.fuse.done(FuseOp::Getattr.index(), timer);
                return;
            }
        }
        self.spawn(req, FuseOp::Getattr, move |w, c| async move {
            // A read's atime update still on its way: stat shows it (the
            // kernel asks again after every read, for the atime).
            w.wait_atime(ino.0).await;
            match w.getattr(&c, ino.0).await {
                Ok(a) => reply.attr(&w.kernel().attr_ttl(), &a),
                // fstat of a directory removed while open: the kernel asks by
                // inode (it passes no handle for directories).
                Err(weft_proto::Errno::ENOENT) if w.removed_dir_attr(ino.0).is_some() => {
                    let a = w.removed_dir_attr(ino.0).unwrap();
                    reply.attr(&Duration::ZERO, &weft_client::convert::file_attr(&a, None))
                }
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let args = SetAttrArgs {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            has_fh: fh.is_some(),
        };
        self.spawn(req, FuseOp::Setattr, move |w, c| async move {
            match w.setattr(&c, ino.0, args).await {
                Ok(a) => reply.attr(&w.kernel().attr_ttl(), &a),
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(req, FuseOp::Readlink, move |w, c| async move {
            match w.readlink(&c, ino.0).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = bytes(name);
        let t = self.w.kernel().ticket();
        self.spawn(req, FuseOp::Mknod, move |w, c| async move {
            let r = w.mknod(&c, parent.0, name.clone(), mode, umask, rdev).await;
            entry(&w, reply, t, parent, &name, r)
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = bytes(name);
        let t = self.w.kernel().ticket();
        self.spawn(req, FuseOp::Mkdir, move |w, c| async move {
            let r = w.mkdir(&c, parent.0, name.clone(), mode, umask).await;
            entry(&w, reply, t, parent, &name, r)
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = bytes(name);
        self.spawn(req, FuseOp::Unlink, move |w, c| async move {
            empty(reply, w.unlink(&c, parent.0, name).await)
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = bytes(name);
        self.spawn(req, FuseOp::Rmdir, move |w, c| async move {
            empty(reply, w.rmdir(&c, parent.0, name).await)
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = bytes(link_name);
        let target = target.as_os_str().as_bytes().to_vec();
        let t = self.w.kernel().ticket();
        self.spawn(req, FuseOp::Symlink, move |w, c| async move {
            let r = w.symlink(&c, parent.0, name.clone(), target).await;
            entry(&w, reply, t, parent, &name, r)
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (bytes(name), bytes(newname));
        self.spawn(req, FuseOp::Rename, move |w, c| async move {
            let r = w
                .rename(&c, parent.0, name, newparent.0, newname, flags.bits())
                .await;
            empty(reply, r)
        });
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = bytes(newname);
        let t = self.w.kernel().ticket();
        self.spawn(req, FuseOp::Link, move |w, c| async move {
            let r = w.link(&c, ino.0, newparent.0, newname.clone()).await;
            entry(&w, reply, t, newparent, &newname, r)
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(req, FuseOp::Open, move |w, c| async move {
            match w.open(&c, ino.0, flags.0).await {
                Ok((fh, keep)) => {
                    let flags = if keep {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), flags)
                }
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = bytes(name);
        let t = self.w.kernel().ticket();
        self.spawn(req, FuseOp::Create, move |w, c| async move {
            match w
                .create(&c, parent.0, name.clone(), mode, umask, flags)
                .await
            {
                Ok((a, fh)) => {
                    // fuser gives `created` one TTL for both.
                    let (attr_ttl, entry_ttl) = w.kernel().entry_reply(t, parent.0, &name, a.ino.0);
                    reply.created(
                        &attr_ttl.min(entry_ttl),
                        &a,
                        Generation(0),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    );
                    w.kernel().after_reply(t, &[(parent.0, name, a.ino.0)]);
                }
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if !is_direct(flags, lock_owner) {
            self.paged.mark(ino.0);
        }
        // Served from the data cache right here when it can be.
        {
            let t = weft_metrics::Timer::start();
            let _rt = self.rt.enter();
            if let Some(d) = self.w.read_now(ino.0, offset, size) {
                weft_metrics::add(&M.read_bytes, d.len() as u64);
                M.fuse.done(FuseOp::Read.index(), t);
                // Before the reply: a stat right after the read must find
                // the update in flight and wait for it (getattr).
                let c = self.w.caller(req.uid(), req.gid(), req.pid());
                self.w.touch_atime(&c, ino.0);
                reply.data(&d);
                return;
            }
        }
        self.spawn(req, FuseOp::Read, move |w, c| async move {
            match w.read(&c, ino.0, offset, size).await {
                Ok(d) => {
                    weft_metrics::add(&M.read_bytes, d.len() as u64);
                    w.touch_atime(&c, ino.0);
                    reply.data(&d);
                }
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // The kernel holds the inode lock across a buffered write, so no
        // other write of this inode is in between.
        let offset = if flags.0 & libc::O_APPEND != 0 {
            self.w.append_offset(ino.0, offset)
        } else {
            offset
        };
        // An AIO direct write is completed by the kernel without
        // invalidating the page cache: pages a buffered reader cached from
        // the old bytes while it was in flight would stay. So once its bytes
        // are accepted (a read after that sees them) and before the reply,
        // the range is invalidated, if the kernel may cache pages of the
        // file at all. The pages are not locked by this write, only by reads
        // that weftfs answers meanwhile; the notifier blocks until those are
        // done, so it runs on the blocking pool, never on the FUSE reader
        // thread. A buffered write holds its pages locked until the reply:
        // invalidating them here would deadlock, hence `is_direct`.
        let direct = is_direct(flags, lock_owner);
        if !direct {
            self.paged.mark(ino.0);
        }
        let notifier = self.notifier.get().filter(|_| direct).cloned();
        let paged = self.paged.clone();
        // The invalidation to make once the bytes are accepted, if any.
        let inval_after = move || notifier.clone().filter(|_| paged.marked(ino.0));
        let len = data.len() as i64;
        // Buffered right here when there is room (the common case): a write
        // is then answered without waking a tokio worker.
        let c = self.w.caller(req.uid(), req.gid(), req.pid());
        let _rt = self.rt.enter();
        let t = weft_metrics::Timer::start();
        let (accepted, data) = match self.w.write_now(&c, ino.0, offset, data) {
            Some(Err(e)) => return reply.error(to_fuse(e)),
            Some(Ok(n)) => match inval_after() {
                None => {
                    weft_metrics::add(&M.written_bytes, n as u64);
                    M.fuse.done(FuseOp::Write.index(), t);
                    return reply.written(n);
                }
                Some(notifier) => (Some((n, notifier)), Vec::new()),
            },
            None => (None, data.to_vec()),
        };
        self.spawn(req, FuseOp::Write, move |w, c| async move {
            let (r, inval) = match accepted {
                Some((n, notifier)) => (Ok(n), Some(notifier)),
                None => match w.write(c, ino.0, offset, data).await {
                    Ok(n) => (Ok(n), inval_after()),
                    Err(e) => (Err(e), None),
                },
            };
            if let Some(n) = inval {
                let _ = tokio::task::spawn_blocking(move || n.inval_inode(ino, offset as i64, len))
                    .await;
            }
            match r {
                Ok(n) => {
                    weft_metrics::add(&M.written_bytes, n as u64);
                    reply.written(n)
                }
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.spawn(req, FuseOp::Flush, move |w, c| async move {
            // POSIX: closing any descriptor drops the process's locks on the file.
            if let Err(e) = w.unlock_on_flush(&c, ino.0, lock_owner.0).await {
                tracing::warn!(ino = ino.0, error = %e, "releasing locks at close failed");
            }
            empty(reply, w.flush_handle(ino.0, fh.0).await)
        });
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // The kernel names the owner when the file held a flock. Taken here,
        // in request order, so a lock request behind this one waits for it.
        let released = self.w.begin_release(ino.0, fh.0, lock_owner.map(|o| o.0));
        self.spawn(req, FuseOp::Release, move |w, c| async move {
            if let Some(r) = released {
                if let Err(e) = w.finish_release(&c, r).await {
                    tracing::warn!(ino = ino.0, error = %e, "releasing locks failed");
                }
            }
            empty(reply, w.release(&c, ino.0, fh.0).await)
        });
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(req, FuseOp::Fsync, move |w, _c| async move {
            empty(reply, w.fsync(ino.0, fh.0).await)
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Permission to read the directory is checked by the kernel
        // (default_permissions) and again by the MDS on ReadDir.
        self.spawn(req, FuseOp::Opendir, move |w, c| async move {
            let (fh, cache, keep) = w.opendir(&c, ino.0).await;
            let mut flags = FopenFlags::empty();
            if cache {
                flags |= FopenFlags::FOPEN_CACHE_DIR;
            }
            if keep {
                flags |= FopenFlags::FOPEN_KEEP_CACHE;
            }
            reply.opened(FileHandle(fh), flags);
        });
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.spawn(req, FuseOp::Readdir, move |w, c| async move {
            let r = w
                .readdir(&c, ino.0, fh.0, offset, false, |e, _| {
                    reply.add(
                        INodeNo(e.ino),
                        e.cookie,
                        weft_client::convert::file_type(e.kind),
                        OsStr::from_bytes(&e.name),
                    )
                })
                .await;
            match r {
                Ok(()) => {
                    reply.ok();
                    if offset == 0 {
                        w.touch_atime(&c, ino.0);
                    }
                }
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let t = self.w.kernel().ticket();
        self.spawn(req, FuseOp::Readdirplus, move |w, c| async move {
            // Names sent, to take back if a push raced with this reply.
            let mut sent = Vec::new();
            let r = w
                .readdir(&c, ino.0, fh.0, offset, true, |e, attr| {
                    let Some(attr) = attr else { return false };
                    let dot = e.name == b"." || e.name == b"..";
                    // The kernel counts a lookup for each entry but "." and "..".
                    let (attr_ttl, entry_ttl) = if dot {
                        w.kernel().entry_ttls(t)
                    } else {
                        w.kernel().entry_reply(t, ino.0, &e.name, e.ino)
                    };
                    let full = reply.add(
                        INodeNo(e.ino),
                        e.cookie,
                        OsStr::from_bytes(&e.name),
                        &attr_ttl.min(entry_ttl),
                        &attr,
                        Generation(0),
                    );
                    if full {
                        if !dot {
                            // Not sent after all.
                            w.kernel().forget(e.ino, 1);
                        }
                    } else if !dot {
                        sent.push((ino.0, e.name.clone(), e.ino));
                    }
                    full
                })
                .await;
            match r {
                Ok(()) => {
                    reply.ok();
                    w.kernel().after_reply(t, &sent);
                    if offset == 0 {
                        w.touch_atime(&c, ino.0);
                    }
                }
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.w.close_dir(fh.0);
        reply.ok();
    }

    fn lseek(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // The kernel itself handles SEEK_SET/CUR/END; only these come here.
        let seek = match whence {
            libc::SEEK_DATA => weft_client::seek::Seek::Data,
            libc::SEEK_HOLE => weft_client::seek::Seek::Hole,
            _ => return reply.error(Errno::EINVAL),
        };
        self.spawn(req, FuseOp::Lseek, move |w, c| async move {
            match w.seek_data_hole(&c, ino.0, offset, seek).await {
                Ok(at) => reply.offset(at as i64),
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn fsyncdir(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every change of this mount (the directory's among them) on disk in the MDS log.
        self.spawn(req, FuseOp::Fsyncdir, move |w, c| async move {
            empty(reply, w.sync_all(&c).await)
        });
    }

    fn statfs(&self, req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(req, FuseOp::Statfs, move |w, c| async move {
            match w.statfs(&c).await {
                Ok(s) => {
                    let bsize = if s.block_size > 0 { s.block_size } else { 4096 };
                    let b = u64::from(bsize);
                    let namelen = if s.name_max > 0 { s.name_max } else { 255 };
                    // Inodes are not preallocated: report plenty free.
                    let ffree = u64::from(u32::MAX);
                    reply.statfs(
                        s.total_bytes / b,
                        s.free_bytes / b,
                        s.free_bytes / b,
                        s.files + ffree,
                        ffree,
                        bsize,
                        namelen,
                        bsize,
                    )
                }
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        if position != 0 {
            reply.error(Errno::EINVAL);
            return;
        }
        let (name, value) = (bytes(name), value.to_vec());
        self.spawn(req, FuseOp::Setxattr, move |w, c| async move {
            empty(
                reply,
                w.setxattr(&c, ino.0, name, value, flags as u32).await,
            )
        });
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // The kernel asks for security.capability before every write.
        if self.w.xattr_known_absent(ino.0, name.as_bytes()) {
            reply.error(Errno::ENODATA);
            return;
        }
        let name = bytes(name);
        self.spawn(req, FuseOp::Getxattr, move |w, c| async move {
            let r = w.getxattr(&c, ino.0, name).await;
            xattr_reply(reply, size, r)
        });
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn(req, FuseOp::Listxattr, move |w, c| async move {
            let r = w.listxattr(&c, ino.0).await;
            xattr_reply(reply, size, r)
        });
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = bytes(name);
        self.spawn(req, FuseOp::Removexattr, move |w, c| async move {
            empty(reply, w.removexattr(&c, ino.0, name).await)
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let mask = mask.bits();
        self.spawn(req, FuseOp::Access, move |w, c| async move {
            empty(reply, w.access(&c, ino.0, mask).await)
        });
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // No file ioctls (cp tries FICLONE first and falls back on ENOTTY).
        reply.error(Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.spawn(req, FuseOp::Fallocate, move |w, c| async move {
            empty(reply, w.fallocate(&c, ino.0, offset, length, mode).await)
        });
    }

    fn copy_file_range(
        &self,
        req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.spawn(req, FuseOp::CopyFileRange, move |w, c| async move {
            let r = w
                .copy_file_range(&c, ino_in.0, offset_in, ino_out.0, offset_out, len)
                .await;
            match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn getlk(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        self.spawn(req, FuseOp::Getlk, move |w, c| async move {
            match w.getlk(&c, ino.0, lock_owner.0, start, end, typ, pid).await {
                Ok(l) => reply.locked(l.start, l.end, l.typ, l.pid),
                Err(e) => reply.error(to_fuse(e)),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(req, FuseOp::Setlk, move |w, c| async move {
            let r = w
                .setlk(&c, ino.0, lock_owner.0, start, end, typ, pid, sleep, fh.0)
                .await;
            empty(reply, r)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paged_inodes_remember_marks_and_collide_only_towards_marked() {
        let p = PagedInodes::new();
        assert!(!p.marked(7));
        p.mark(7);
        assert!(p.marked(7));
        assert!(!p.marked(8));
        // Same bit: a false "may be cached", never a false "not cached".
        assert!(p.marked(7 + PagedInodes::BITS));
        p.mark(u64::MAX);
        assert!(p.marked(u64::MAX));
    }

    #[test]
    fn only_o_direct_with_a_lock_owner_is_the_direct_path() {
        let d = OpenFlags(libc::O_RDWR | libc::O_DIRECT);
        assert!(is_direct(d, Some(LockOwner(1))));
        assert!(!is_direct(d, None));
        assert!(!is_direct(OpenFlags(libc::O_RDWR), Some(LockOwner(1))));
    }
}
