//! `Weft`: the mounted file system's state and its metadata operations, as
//! plain async functions returning `Result<_, Errno>` (fs.rs only decodes the
//! kernel request, spawns one of these and replies).
//!
//! The read path lives in read_path.rs and the write path (buffering, flush,
//! fsync, truncate) in write_path.rs, as further `impl Weft` blocks.
//!
//! Invariants: every `Attr` the MDS returns goes through `fattr`, which caches
//! it and applies the local size override, so the kernel never sees a size
//! smaller than data this client has accepted; names longer than 255 bytes are
//! refused locally with ENAMETOOLONG, as ext4 does.

use std::sync::Arc;
use std::time::Duration;

use fuser::FileAttr;
use weft_proto::meta_request::Op;
use weft_proto::*;

use crate::cache::kernel::KernelCache;
use crate::cache::meta::Found;
use crate::cache::ChunkLocCache;
use crate::caller::GroupCache;
use crate::chunk_io::ChunkIo;
use crate::convert::{file_attr, file_type, time_set};
use crate::mds_client::{CallError, MdsClient};
use crate::open_files::OpenFiles;

pub const NAME_MAX: usize = 255;
/// Directory entries asked of the MDS per ReadDir page.
const READDIR_PAGE: u32 = 256;

pub struct Weft {
    pub(crate) mds: MdsClient,
    pub(crate) chunks: ChunkIo,
    pub(crate) locs: ChunkLocCache,
    /// File data read from chunk daemons (cache/data.rs).
    pub(crate) data: crate::cache::DataCache,
    pub(crate) files: OpenFiles,
    pub(crate) groups: GroupCache,
    pub(crate) chunk_size: u64,
    /// What TTLs the kernel gets, and taking names back (cache/kernel.rs).
    pub(crate) kernel: KernelCache,
    /// How long a chunk write keeps re-allocating its pipeline after replica
    /// failures (the MDS drops a dead daemon from pipelines only once it has
    /// missed heartbeats for a while).
    pub(crate) write_retry_budget: Duration,
    /// Which lock owners hold advisory locks through this mount (locks.rs).
    pub(crate) held_locks: crate::locks::HeldLocks,
    pub(crate) pending_releases: crate::locks::PendingReleases,
    /// Releases of opens waiting to go to the MDS together (releases.rs).
    pub(crate) releases: Arc<crate::releases::Releases>,
    /// The mount's atime policy (atime.rs).
    pub(crate) atime: crate::atime::Atime,
    /// `ClientOpts::file_dirty_limit`.
    pub(crate) file_dirty_limit: Option<u64>,
    /// Files up to this many bytes, written whole, go into segments (0: never).
    pub(crate) pack_max: u64,
    /// This mount's segments (segments.rs).
    pub(crate) segments: crate::segments::Segments,
    /// `ClientOpts::close_sync`.
    pub(crate) close_sync: bool,
}

/// What a client is tuned with (weftfs takes them from its `-o` options,
/// fuse-client/src/options.rs; weft-s3 from its flags).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOpts {
    /// How long one operation keeps retrying an unreachable MDS before EIO.
    pub mds_timeout: Duration,
    pub attr_timeout: Duration,
    pub entry_timeout: Duration,
    /// Kernel TTL of names and attributes while the MDS's pushes are live
    /// (cache/kernel.rs); 0 keeps the short ones always.
    pub cache_timeout: Duration,
    /// When reads update atime (atime.rs).
    pub atime: crate::atime::AtimeMode,
    /// MiB of memory for cached file data (cache/data.rs); 0: none.
    pub data_cache_mib: u64,
    /// A directory for the data cache's local-disk tier (cache/disk.rs).
    pub disk_cache: Option<std::path::PathBuf>,
    /// MiB the disk tier may fill.
    pub disk_cache_mib: u64,
    /// Strict coherence: another client's change returns only after this
    /// client's caches dropped it (cache/coherence.rs).
    pub strict: bool,
    /// Bytes one file may hold written but not yet stored (buffered and in
    /// flight); a writer of that file waits past it, and its buffer is
    /// flushed from half of it. None: only the shared `TOTAL_DIRTY_LIMIT`
    /// (write_path.rs), as weftfs has it.
    pub file_dirty_limit: Option<u64>,
    /// Bytes up to which a file written whole between open and close is
    /// packed as a needle into one of this mount's segments (segments.rs)
    /// instead of a chunk of its own; 0: never. Capped at a quarter of a
    /// segment.
    pub pack_max: u64,
    /// close also waits until the MDS has the file's metadata changes
    /// (creation, size, attributes) on disk, not only in its log's page cache
    /// (a majority's, in a group). Off: close returns once the MDS holds them,
    /// as the chunk daemons hold the data, and fsync makes both durable.
    pub close_sync: bool,
}

/// `ClientOpts::pack_max`'s default: files written whole up to 64 KiB are
/// packed (weftfs `--pack-max-kib 0` turns it off).
pub const DEFAULT_PACK_MAX: u64 = 64 << 10;

/// The data cache's default size, MiB.
pub const DEFAULT_DATA_CACHE_MIB: u64 = 128;

impl Default for ClientOpts {
    fn default() -> Self {
        ClientOpts {
            mds_timeout: Duration::from_secs(60),
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            cache_timeout: Duration::from_secs(60),
            atime: crate::atime::AtimeMode::Relatime,
            data_cache_mib: DEFAULT_DATA_CACHE_MIB,
            disk_cache: None,
            disk_cache_mib: 1024,
            strict: false,
            file_dirty_limit: None,
            pack_max: DEFAULT_PACK_MAX,
            close_sync: false,
        }
    }
}

/// Arguments of setattr that map onto SetAttrReq.
#[derive(Debug, Default, Clone)]
pub struct SetAttrArgs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<fuser::TimeOrNow>,
    pub mtime: Option<fuser::TimeOrNow>,
    /// Through an open descriptor (ftruncate, futimens): see SetAttrReq.has_fh.
    pub has_fh: bool,
}

impl Weft {
    /// Connects to the MDS and proves it answers: GetAttr of the root and
    /// StatFs (for the chunk size) within `probe_budget`. Must run inside the
    /// runtime. The error names the address.
    pub async fn connect(
        mds_addr: &str,
        opts: &ClientOpts,
        probe_budget: Duration,
    ) -> Result<Arc<Weft>, String> {
        let mds = MdsClient::new(mds_addr, opts.mds_timeout, opts.attr_timeout)?;
        let me = Caller {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            groups: vec![],
            pid: std::process::id(),
        };
        let unreachable = |e: CallError| match e {
            CallError::Unreachable(s) => format!(
                "cannot reach the MDS at {mds_addr}: no answer within {} s ({})",
                probe_budget.as_secs(),
                s.message()
            ),
            CallError::Errno(e) => {
                format!("the MDS at {mds_addr} refused GetAttr of the root: {e}")
            }
        };
        let root = mds
            .call_within(&me, Op::Getattr(GetAttrReq { ino: 1 }), probe_budget)
            .await
            .map_err(unreachable)?;
        if !matches!(root, meta_reply::Result::Attr(_)) {
            return Err(format!(
                "the MDS at {mds_addr} answered GetAttr with a malformed reply"
            ));
        }
        let chunk_size = match mds
            .call_within(&me, Op::Statfs(StatFsReq {}), probe_budget)
            .await
            .map_err(unreachable)?
        {
            meta_reply::Result::Statfs(s) if s.chunk_size > 0 => s.chunk_size,
            _ => return Err(format!("the MDS at {mds_addr} did not report a chunk size")),
        };
        tracing::info!(
            addr = mds_addr,
            chunk_size,
            session = mds.session(),
            "connected to the MDS"
        );
        let mut data = crate::cache::DataCache::new(opts.data_cache_mib << 20);
        if let Some(dir) = &opts.disk_cache {
            let disk = crate::cache::disk::DiskCache::open(dir, opts.disk_cache_mib << 20)
                .map_err(|e| format!("cannot use {} as the disk cache: {e}", dir.display()))?;
            data = data.with_disk(disk);
        }
        let weft = Arc::new(Weft {
            mds,
            chunks: ChunkIo::new(opts.mds_timeout.max(Duration::from_secs(30))),
            locs: ChunkLocCache::new(65536),
            data,
            files: OpenFiles::new(chunk_size),
            groups: GroupCache::default(),
            chunk_size,
            kernel: KernelCache::new(
                opts.attr_timeout,
                opts.entry_timeout,
                opts.cache_timeout,
                opts.strict,
            ),
            write_retry_budget: opts.mds_timeout.min(Duration::from_secs(30)),
            held_locks: Default::default(),
            pending_releases: Default::default(),
            releases: Default::default(),
            atime: crate::atime::Atime::new(opts.atime),
            file_dirty_limit: opts.file_dirty_limit,
            pack_max: crate::segments::pack_limit(opts.pack_max, chunk_size),
            segments: crate::segments::Segments::new(chunk_size),
            close_sync: opts.close_sync,
        });
        Ok(weft)
    }

    /// Forgets every cached attribute and location (coherence pushes were
    /// possibly missed).
    pub fn drop_all_caches(&self) {
        self.mds.meta.reset(false);
        self.mds.attrs.clear();
        self.locs.clear();
        self.data.clear();
    }

    /// The TTLs and name bookkeeping the FUSE adapter replies with
    /// (cache/kernel.rs); other front ends ignore it.
    pub fn kernel(&self) -> &KernelCache {
        &self.kernel
    }

    /// The cluster's chunk size, as the MDS said at connect.
    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Whether the MDS's pushes say this xattr is absent, so a getxattr can
    /// answer ENODATA without asking (only while the push stream is live).
    pub fn xattr_known_absent(&self, ino: u64, name: &[u8]) -> bool {
        self.kernel.trusted() && self.mds.meta.xattr_absent(ino, name)
    }

    pub fn close_dir(&self, fh: u64) {
        self.files.close_dir(fh)
    }

    /// The attributes a still-open directory had when it was opened, once it
    /// is removed (the kernel asks by inode, with no handle).
    pub fn removed_dir_attr(&self, ino: u64) -> Option<Attr> {
        self.files.removed_dir_attr(ino)
    }

    /// Waits until every change this client was answered for is durable
    /// (the MDS's early replies; syncfs).
    pub async fn sync_all(&self, c: &Caller) -> Result<(), Errno> {
        self.mds.log_durable_all(c).await
    }

    /// Bytes written and not yet on the chunk daemons, over all files.
    pub fn dirty_bytes(&self) -> u64 {
        self.files.dirty_total()
    }

    /// Whether this client keeps state for the file (open, or dirty data).
    pub fn holds_file_state(&self, ino: u64) -> bool {
        self.files.get(ino).is_some()
    }

    /// Where chunks `first..first + count` of a file live, asked of the MDS.
    pub async fn chunk_locations(
        &self,
        c: &Caller,
        ino: u64,
        first: u64,
        count: u32,
    ) -> Result<Vec<ChunkLoc>, Errno> {
        Ok(self.mds.get_chunks(c, ino, first, count).await?.chunks)
    }

    /// The location of one chunk as this client has it cached, if it does.
    pub fn cached_chunk_location(&self, ino: u64, index: u64) -> Option<ChunkLoc> {
        self.locs.get(ino, index)
    }

    pub fn caller(&self, uid: u32, gid: u32, pid: u32) -> Caller {
        self.groups.caller(uid, gid, pid)
    }

    /// Caches `a` and converts it for the kernel, with the local size override.
    /// Folded setattrs (attr_fold.rs) show in place of the MDS's owner,
    /// mode and times until their commit.
    pub fn fattr(&self, a: &Attr) -> FileAttr {
        let Some(st) = self.files.get(a.ino) else {
            return file_attr(a, None);
        };
        let p = st.pending();
        let mut shown = *a;
        if let Some((v, _)) = p.folded {
            (shown.mode, shown.uid, shown.gid) = (v.mode, v.uid, v.gid);
            (shown.atime, shown.mtime, shown.ctime) = (v.atime, v.mtime, v.ctime);
        }
        let mtime_set = p.folded.is_some_and(|(_, set)| set);
        let mut fa = file_attr(&shown, p.overlay);
        if let Some(t) = p.write_time {
            if !mtime_set {
                fa.mtime = fa.mtime.max(t);
            }
            fa.ctime = fa.ctime.max(t);
        }
        fa
    }

    /// Folds root's chown, chmod or explicit times of a file whose data is
    /// still buffered into that data's commit (attr_fold.rs); returns the
    /// attributes they give, or None to send the setattr now.
    fn fold_setattr(&self, c: &Caller, ino: u64, req: &SetAttrReq) -> Option<Attr> {
        if !crate::attr_fold::foldable(c.uid, req) {
            return None;
        }
        let st = self.files.get(ino)?;
        let cached = self
            .mds
            .meta
            .getattr(ino)
            .or_else(|| self.mds.attrs.get(ino));
        let now = crate::convert::timespec(std::time::SystemTime::now());
        let mut g = st.inner.lock();
        // The commit runs as the writer: root's checks only for root's data.
        if g.dirty.is_empty() || g.writer.uid != 0 {
            return None;
        }
        // The caches' copy is the freshest; this mount's open or last
        // commit of the file is there when they hold none. Either way the
        // commit's reply is compared with what is predicted from it.
        let base = cached.or(g.open_attr);
        let from = match &g.folded {
            Some(f) => f.view,
            None if base.is_some_and(|b| b.kind == FileKind::Regular as i32) => base?,
            None => return None,
        };
        let view = crate::attr_fold::apply(&from, req, now);
        let f = g
            .folded
            .get_or_insert_with(|| crate::open_files::FoldedAttrs {
                changes: Vec::new(),
                view,
                mtime_set: false,
                caller: c.clone(),
            });
        f.changes.push(*req);
        f.view = view;
        f.mtime_set |= req.mtime.is_some();
        Some(view)
    }

    /// Sends the setattrs folded for `ino` (with its buffered data) before
    /// an operation the MDS must decide on the file's current owner, mode
    /// or times (an open's permission check, an xattr, a link).
    pub(crate) async fn settle(self: &Arc<Self>, ino: u64) -> Result<(), Errno> {
        match self.files.get(ino).filter(|st| st.has_folded()) {
            Some(st) => self.flush_file_as(&st, true).await,
            None => Ok(()),
        }
    }

    /// `settle` for the file `parent`/`name` names, or every file when this
    /// mount does not know which (an unlink or rename in a sticky directory
    /// decides on the owner).
    pub(crate) async fn settle_name(
        self: &Arc<Self>,
        parent: u64,
        name: &[u8],
    ) -> Result<(), Errno> {
        let folded = self.files.folded();
        if folded.is_empty() {
            return Ok(());
        }
        match self.mds.meta.lookup(parent, name) {
            Some(Found::Attr(a)) => self.settle(a.ino).await,
            Some(Found::Absent) => Ok(()),
            None => {
                for ino in folded {
                    self.settle(ino).await?;
                }
                Ok(())
            }
        }
    }

    pub async fn lookup(&self, c: &Caller, parent: u64, name: Vec<u8>) -> Result<FileAttr, Errno> {
        if name == b"." {
            // Only the kernel asks this, to turn a file handle (open_by_handle_at,
            // NFS export) whose inode it no longer caches into an inode again; the
            // node may be any kind of file. A removed inode gives ESTALE.
            return self.getattr(c, parent).await.map_err(|e| {
                if e == Errno::ENOENT {
                    Errno::ESTALE
                } else {
                    e
                }
            });
        }
        check_name(&name)?;
        if let Some(r) = self.lookup_cached(parent, &name) {
            return r;
        }
        let t = self.mds.meta.ticket();
        let a = self
            .mds
            .attr(
                c,
                Op::Lookup(LookupReq {
                    parent,
                    name: name.clone(),
                }),
            )
            .await?;
        if name != b".." {
            // Not an entry of `parent`'s listing (and it moves with renames).
            self.mds.meta.insert(t, parent, &name, &a);
        }
        Ok(self.fattr(&a))
    }

    /// A lookup answered from weftfs's own cache (cache/meta.rs), if it can be.
    pub fn lookup_cached(&self, parent: u64, name: &[u8]) -> Option<Result<FileAttr, Errno>> {
        if !self.kernel.trusted() {
            return None;
        }
        match self.mds.meta.lookup(parent, name)? {
            Found::Attr(a) => Some(Ok(self.fattr(&a))),
            Found::Absent => Some(Err(Errno::ENOENT)),
        }
    }

    /// getattr answered from weftfs's own cache (cache/meta.rs), if it can be.
    pub fn getattr_cached(&self, ino: u64) -> Option<FileAttr> {
        if !self.kernel.trusted() {
            return None;
        }
        let a = self.mds.meta.getattr(ino)?;
        Some(self.fattr(&a))
    }

    pub async fn getattr(&self, c: &Caller, ino: u64) -> Result<FileAttr, Errno> {
        let a = self.mds.getattr(c, ino).await?;
        Ok(self.fattr(&a))
    }

    /// Attributes from the cache when fresh, else from the MDS.
    pub async fn cached_attr(&self, c: &Caller, ino: u64) -> Result<Attr, Errno> {
        if let Some(a) = self.mds.attrs.get(ino) {
            return Ok(a);
        }
        let a = self.mds.getattr(c, ino).await?;
        Ok(a)
    }

    pub async fn setattr(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        args: SetAttrArgs,
    ) -> Result<FileAttr, Errno> {
        let req = SetAttrReq {
            ino,
            mode: args.mode.map(|m| m & 0o7777),
            uid: args.uid,
            gid: args.gid,
            size: args.size,
            atime: args.atime.map(time_set),
            mtime: args.mtime.map(time_set),
            has_fh: args.has_fh,
            atime_update: 0,
        };
        let a = match args.size {
            Some(size) => {
                self.settle(ino).await?;
                self.truncate(c, ino, size, req).await?
            }
            None if req.mode.is_none()
                && req.uid.is_none()
                && req.gid.is_none()
                && req.atime.is_none()
                && req.mtime.is_none() =>
            {
                // Nothing the MDS stores (e.g. only ctime): just report.
                self.mds.getattr(c, ino).await?
            }
            None => {
                // Explicit times, modes, owners (cp -p and tar set them
                // through the open descriptor before close): data written
                // before them is committed first, or its commit would set
                // mtime to "now", or drop a setuid bit, after them. Root's
                // ride on that commit (attr_fold.rs); others' wait for it.
                // That data is the whole file as a rule (tar, cp -p, rsync
                // set them last), so a small one is packed as at close:
                // else every file tar extracts had a chunk of its own.
                if let Some(a) = self.fold_setattr(c, ino, &req) {
                    return Ok(self.fattr(&a));
                }
                if let Some(st) = self.files.get(ino) {
                    if st.has_pending() || st.has_folded() {
                        self.flush_file_as(&st, true).await?;
                    }
                }
                self.mds.attr(c, Op::Setattr(req)).await?
            }
        };
        Ok(self.fattr(&a))
    }

    pub async fn mknod(
        &self,
        c: &Caller,
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> Result<FileAttr, Errno> {
        check_name(&name)?;
        let op = Op::Mknod(MknodReq {
            parent,
            name,
            mode,
            rdev,
            umask,
        });
        let a = self.mds.attr(c, op).await?;
        Ok(self.fattr(&a))
    }

    pub async fn mkdir(
        &self,
        c: &Caller,
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        umask: u32,
    ) -> Result<FileAttr, Errno> {
        check_name(&name)?;
        let op = Op::Mkdir(MkdirReq {
            parent,
            name,
            mode,
            umask,
        });
        let a = self.mds.attr(c, op).await?;
        Ok(self.fattr(&a))
    }

    pub async fn unlink(
        self: &Arc<Self>,
        c: &Caller,
        parent: u64,
        name: Vec<u8>,
    ) -> Result<(), Errno> {
        check_name(&name)?;
        self.settle_name(parent, &name).await?;
        self.mds
            .empty(c, Op::Unlink(UnlinkReq { parent, name }))
            .await
    }

    pub async fn rmdir(&self, c: &Caller, parent: u64, name: Vec<u8>) -> Result<(), Errno> {
        check_name(&name)?;
        self.mds
            .empty(c, Op::Rmdir(RmdirReq { parent, name }))
            .await
    }

    pub async fn symlink(
        &self,
        c: &Caller,
        parent: u64,
        name: Vec<u8>,
        target: Vec<u8>,
    ) -> Result<FileAttr, Errno> {
        check_name(&name)?;
        if target.len() >= 4096 {
            return Err(Errno::ENAMETOOLONG);
        }
        let op = Op::Symlink(SymlinkReq {
            parent,
            name,
            target,
        });
        let a = self.mds.attr(c, op).await?;
        Ok(self.fattr(&a))
    }

    pub async fn readlink(&self, c: &Caller, ino: u64) -> Result<Vec<u8>, Errno> {
        self.mds.data(c, Op::Readlink(ReadlinkReq { ino })).await
    }

    pub async fn rename(
        self: &Arc<Self>,
        c: &Caller,
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        flags: u32,
    ) -> Result<(), Errno> {
        check_name(&name)?;
        check_name(&new_name)?;
        self.settle_name(parent, &name).await?;
        self.settle_name(new_parent, &new_name).await?;
        let op = Op::Rename(RenameReq {
            parent,
            name,
            new_parent,
            new_name,
            flags,
        });
        self.mds.empty(c, op).await
    }

    pub async fn link(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        new_parent: u64,
        new_name: Vec<u8>,
    ) -> Result<FileAttr, Errno> {
        check_name(&new_name)?;
        self.settle(ino).await?;
        let op = Op::Link(LinkReq {
            ino,
            new_parent,
            new_name,
        });
        let a = self.mds.attr(c, op).await?;
        Ok(self.fattr(&a))
    }

    pub async fn statfs(&self, c: &Caller) -> Result<StatFs, Errno> {
        self.mds.statfs(c).await
    }

    pub async fn setxattr(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: u32,
    ) -> Result<(), Errno> {
        check_xattr_name(&name)?;
        if value.len() > 65536 {
            return Err(Errno::E2BIG);
        }
        self.settle(ino).await?;
        let op = Op::Setxattr(SetXattrReq {
            ino,
            name,
            value,
            flags,
        });
        let r = self.mds.empty(c, op).await;
        // An access ACL moves the mode bits; xattr changes move ctime.
        self.mds.attrs.invalidate(ino);
        r
    }

    pub async fn getxattr(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        name: Vec<u8>,
    ) -> Result<Vec<u8>, Errno> {
        check_xattr_name(&name)?;
        if self.kernel.trusted() && self.mds.meta.xattr_absent(ino, &name) {
            return Err(Errno::ENODATA);
        }
        // A folded chmod rewrites the access ACL.
        self.settle(ino).await?;
        let t = self.mds.meta.ticket();
        let r = self
            .mds
            .data(
                c,
                Op::Getxattr(GetXattrReq {
                    ino,
                    name: name.clone(),
                }),
            )
            .await;
        if r == Err(Errno::ENODATA) {
            self.mds.meta.insert_xattr_absent(t, ino, &name);
        }
        r
    }

    /// The names as listxattr(2) returns them: each followed by a NUL.
    pub async fn listxattr(self: &Arc<Self>, c: &Caller, ino: u64) -> Result<Vec<u8>, Errno> {
        self.settle(ino).await?;
        let names = self.mds.names(c, ino).await?;
        Ok(join_names(&names))
    }

    pub async fn removexattr(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        name: Vec<u8>,
    ) -> Result<(), Errno> {
        check_xattr_name(&name)?;
        self.settle(ino).await?;
        let r = self
            .mds
            .empty(c, Op::Removexattr(RemoveXattrReq { ino, name }))
            .await;
        self.mds.attrs.invalidate(ino);
        r
    }

    pub async fn access(self: &Arc<Self>, c: &Caller, ino: u64, mask: i32) -> Result<(), Errno> {
        self.settle(ino).await?;
        let a = self.cached_attr(c, ino).await?;
        if access_ok(&a, c, mask) {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }

    /// opendir: a handle, whether the kernel may keep the listing in its
    /// page cache (FOPEN_CACHE_DIR), and whether this open may be served
    /// from what it kept (FOPEN_KEEP_CACHE; otherwise the kernel drops it
    /// and lists through weftfs). Pushes of other mounts' changes to the
    /// directory invalidate the kept listing (`cache/coherence.rs`), the
    /// kernel itself drops it on this mount's changes, and a listing that
    /// owes an atime update is not served from it. The attributes (usually
    /// cached since the lookup) are kept for fstat of the handle after the
    /// directory is removed.
    pub async fn opendir(&self, c: &Caller, ino: u64) -> (u64, bool, bool) {
        let cache = self.kernel.listings_cacheable();
        if cache {
            // The last listing's atime update: its result decides `keep`.
            self.wait_atime(ino).await;
        }
        let opened_as = self.cached_attr(c, ino).await.ok();
        let keep = cache && opened_as.is_some_and(|a| self.listing_needs_no_atime(&a));
        (self.files.open_dir(opened_as), cache, keep)
    }

    /// Fills one readdir reply through `add` (which returns true when the
    /// kernel's buffer is full). Entries come from the handle's buffered page
    /// when the kernel continues where it left off, else from a fresh ReadDir.
    /// Every entry of directory `ino` but `.` and `..`, with attributes (a
    /// front end without directory handles: weft-s3's listings).
    pub async fn readdir_all(
        &self,
        c: &Caller,
        ino: u64,
    ) -> Result<Vec<(DirEntry, FileAttr)>, Errno> {
        let fh = self.files.open_dir(None);
        let mut out = Vec::new();
        // `readdir` answers at most one MDS page per call: ask again from
        // the last cookie until a call adds nothing (the end).
        let mut offset = 0;
        let r = loop {
            let mut last = None;
            let r = self
                .readdir(c, ino, fh, offset, true, |e, a| {
                    last = Some(e.cookie);
                    if e.name != b"." && e.name != b".." {
                        if let Some(a) = a {
                            out.push((e.clone(), a));
                        }
                    }
                    false
                })
                .await;
            match (r, last) {
                (Ok(()), Some(cookie)) => offset = cookie,
                (r, _) => break r,
            }
        };
        self.files.close_dir(fh);
        r.map(|()| out)
    }

    pub async fn readdir(
        &self,
        c: &Caller,
        ino: u64,
        fh: u64,
        mut offset: u64,
        plus: bool,
        mut add: impl FnMut(&DirEntry, Option<FileAttr>) -> bool + Send,
    ) -> Result<(), Errno> {
        let handle = match self.files.dir(fh) {
            Some(h) => h,
            None => {
                // No opendir seen (should not happen): serve statelessly.
                let fh = self.files.open_dir(None);
                let h = self.files.dir(fh).unwrap();
                self.files.close_dir(fh);
                h
            }
        };
        let mut h = handle.lock().await;
        let mut empty_pages = 0;
        loop {
            let usable =
                h.valid && h.after == offset && h.plus == plus && (!h.buf.is_empty() || h.eof);
            if !usable {
                let mut page = self
                    .mds
                    .readdir(
                        c,
                        ReadDirReq {
                            ino,
                            offset,
                            limit: READDIR_PAGE,
                            plus,
                        },
                    )
                    .await?;
                if plus {
                    self.fill_missing_attrs(c, &mut page.entries).await?;
                }
                h.buf = page.entries.into();
                h.eof = page.eof;
                h.after = offset;
                h.plus = plus;
                h.valid = true;
            }
            let mut added = false;
            while let Some(e) = h.buf.front() {
                let attr = e.attr.as_ref().map(|a| self.fattr(a));
                let attr = if plus && attr.is_none() {
                    Some(dot_attr(e))
                } else {
                    attr
                };
                if add(e, attr) {
                    return Ok(());
                }
                offset = e.cookie;
                h.after = e.cookie;
                h.buf.pop_front();
                added = true;
            }
            if added || h.eof {
                return Ok(());
            }
            // An empty page that is not the end: ask again, but never spin.
            empty_pages += 1;
            if empty_pages > 2 {
                tracing::warn!(ino, offset, "MDS keeps returning empty readdir pages");
                return Ok(());
            }
            h.valid = false;
        }
    }

    async fn fill_missing_attrs(&self, c: &Caller, entries: &mut [DirEntry]) -> Result<(), Errno> {
        for e in entries.iter_mut() {
            if e.attr.is_none() && e.name != b"." && e.name != b".." {
                match self.mds.getattr(c, e.ino).await {
                    Ok(a) => e.attr = Some(a),
                    // Removed meanwhile: the synthetic attr keeps the listing going.
                    Err(err) if err == Errno::ENOENT => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }
}

/// Minimal attributes for an entry the MDS sent without any ("." and "..");
/// the kernel does not instantiate inodes for those.
fn dot_attr(e: &DirEntry) -> FileAttr {
    file_attr(
        &Attr {
            ino: e.ino,
            kind: e.kind,
            mode: 0o755,
            nlink: 1,
            ..Default::default()
        },
        None,
    )
}

pub fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > NAME_MAX {
        Err(Errno::ENAMETOOLONG)
    } else {
        Ok(())
    }
}

/// POSIX ACLs (system.posix_acl_*) pass through: the MDS validates and
/// stores them, keeps the mode in step, and enforces them (the kernel too,
/// with FUSE_POSIX_ACL).
fn check_xattr_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name.len() > 255 {
        Err(Errno::ERANGE)
    } else {
        Ok(())
    }
}

pub fn join_names(names: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in names {
        out.extend_from_slice(n);
        out.push(0);
    }
    out
}

/// POSIX permission check of `mask` (R_OK|W_OK|X_OK bits, 0 = existence) for
/// `c` against `a`. Root may read and write anything and execute anything
/// with some x bit (or a directory).
pub fn access_ok(a: &Attr, c: &Caller, mask: i32) -> bool {
    let mask = (mask & 7) as u32;
    if mask == 0 {
        return true;
    }
    if c.uid == 0 {
        let is_dir = file_type(a.kind) == fuser::FileType::Directory;
        return mask & 1 == 0 || is_dir || a.mode & 0o111 != 0;
    }
    let bits = if c.uid == a.uid {
        (a.mode >> 6) & 7
    } else if c.gid == a.gid || c.groups.contains(&a.gid) {
        (a.mode >> 3) & 7
    } else {
        a.mode & 7
    };
    bits & mask == mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name(&[b'a'; 255]).is_ok());
        assert_eq!(check_name(&[b'a'; 256]), Err(Errno::ENAMETOOLONG));
        assert_eq!(
            join_names(&[b"user.a".to_vec(), b"user.bb".to_vec()]),
            b"user.a\0user.bb\0".to_vec()
        );
        assert!(join_names(&[]).is_empty());
        assert_eq!(check_xattr_name(b"user.x"), Ok(()));
        assert_eq!(check_xattr_name(b""), Err(Errno::ERANGE));
        assert_eq!(check_xattr_name(b"system.posix_acl_access"), Ok(()));
    }

    #[test]
    fn access_checks() {
        let a = Attr {
            uid: 10,
            gid: 20,
            mode: 0o640,
            kind: FileKind::Regular as i32,
            ..Default::default()
        };
        let who = |uid, gid, groups: Vec<u32>| Caller {
            uid,
            gid,
            groups,
            pid: 1,
        };
        assert!(access_ok(&a, &who(10, 1, vec![]), libc::R_OK | libc::W_OK));
        assert!(!access_ok(&a, &who(10, 1, vec![]), libc::X_OK));
        assert!(access_ok(&a, &who(11, 20, vec![]), libc::R_OK));
        assert!(!access_ok(&a, &who(11, 20, vec![]), libc::W_OK));
        assert!(access_ok(&a, &who(11, 1, vec![20]), libc::R_OK));
        assert!(!access_ok(&a, &who(11, 1, vec![]), libc::R_OK));
        assert!(access_ok(&a, &who(11, 1, vec![]), libc::F_OK));
        assert!(access_ok(&a, &who(0, 0, vec![]), libc::R_OK | libc::W_OK));
        assert!(!access_ok(&a, &who(0, 0, vec![]), libc::X_OK));
        let d = Attr {
            kind: FileKind::Directory as i32,
            mode: 0o700,
            ..a
        };
        assert!(access_ok(&d, &who(0, 0, vec![]), libc::X_OK));
    }
}
