//! The namespace as a pure state machine: no I/O, no clocks, no randomness.
//!
//! Every mutation goes `prepare` (validate against the current state and decide
//! everything non-deterministic — inode numbers, chunk ids, times taken from
//! `Ctx` — yielding a `Record`) → the caller journals the record → `apply`
//! (deterministic; also what log replay runs). Reads are answered from state.
//!
//! Invariants:
//! - `apply` never fails on a record `prepare` produced against the same state,
//!   and its outcome depends only on (state, record): every map that affects an
//!   outcome or the serialized form is a `BTreeMap`.
//! - `chunk_owners` is exactly the inverse of the files' chunk maps.
//! - `dirs` and `bytes` equal what a full scan would count.
//! - `next_ino`/`next_chunk` are above every number ever handed out (never reused).
//! - Open counts are memory only: they decide, in `prepare`, whether an inode
//!   losing its last link is purged at once or kept as an orphan (`nlink == 0`)
//!   until `released`; that decision is in the record, so replay agrees.
//!
//! Semantics follow ext4 on Linux; the ops live in `ops/`, one file per family.

mod acl;
mod dir;
mod inode;
mod name;
mod ops;
mod perm;
mod record;
mod table;
#[cfg(test)]
mod tests;
mod thin_map;

pub use dir::{Entry, FIRST_COOKIE};
pub use inode::{
    needle_span, Body, ChunkRef, Inode, Kind, Time, MDS_SEGMENT_SESSION, NEEDLE_HEADER,
    SEGMENT_PARENT,
};
pub use name::Name;
pub use ops::compact::{Live, SegmentInfo};
pub use ops::packed::NeedleAt;
pub use perm::{may_access, LINK_MAX, MAY_EXEC, MAY_READ, MAY_WRITE, NAME_MAX};
pub use record::{ChunkAlloc, NeedleMove, Record};
pub use weft_proto::{pb, Errno};

use pb::meta_reply::Result as ReplyResult;
use pb::meta_request::Op;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use table::InodeTable;

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
/// Largest file size (as Linux's MAX_LFS_FILESIZE).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Most entries `file_chunks` returns in one call.
pub use weft_proto::contract::limits::MAX_CHUNKS_PER_CALL;

/// Who is asking (from `pb::Caller`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl From<&pb::Caller> for Caller {
    fn from(c: &pb::Caller) -> Self {
        Caller {
            uid: c.uid,
            gid: c.gid,
            groups: c.groups.clone(),
        }
    }
}

impl Caller {
    pub fn root() -> Caller {
        Caller::default()
    }
}

/// Inputs `prepare` may use that the state machine can't make itself.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Ctx {
    pub now: Time,
    pub caller: Caller,
}

/// What `prepare` decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Prepared {
    /// Journal this, then `apply` it.
    Record(Record),
    /// Nothing changes: answer this (e.g. open without O_TRUNC).
    Reply(ReplyResult),
}

/// What `apply` did.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub reply: ReplyResult,
    /// Chunk ids no file references any more: delete them from the daemons.
    pub freed_chunks: Vec<u64>,
}

/// A page of `Namespace::chunks_after`: (ino, index, chunk id, version) of
/// each chunk, the inodes walked, and where the next page starts (None: done).
pub type ChunksPage = (Vec<(u64, u64, u64, u64)>, usize, Option<u64>);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Non-directories, orphans included, segments not.
    pub files: u64,
    /// Segments (hidden files holding packed files' needles).
    pub segments: u64,
    pub directories: u64,
    pub chunks: u64,
    pub inodes: u64,
    /// Sum of regular file sizes.
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct Namespace {
    chunk_size: u64,
    next_ino: u64,
    next_chunk: u64,
    inodes: InodeTable,
    /// chunk id → (ino, index).
    chunk_owners: BTreeMap<u64, (u64, u64)>,
    dirs: u64,
    bytes: u64,
    /// ino → open count. Not journaled, not serialized with the namespace:
    /// after a single MDS's restart nothing is open (an MDS group's snapshot
    /// carries them, `snapshot.rs`).
    #[serde(skip)]
    open: HashMap<u64, u32>,
    /// How many inodes are segments: counted again on load (`Stored`).
    #[serde(skip)]
    segments: u64,
    /// Per segment chunk: the live needles in it (files referencing it) and
    /// their bytes. Derived: counted again on load (`Stored`), kept by every
    /// apply that makes, changes or ends a packed file.
    #[serde(skip)]
    live: BTreeMap<u64, Live>,
}

/// The serialized form of `Namespace` (its fields in order, without what
/// is counted again on load).
#[derive(Deserialize)]
struct Stored {
    chunk_size: u64,
    next_ino: u64,
    next_chunk: u64,
    inodes: InodeTable,
    chunk_owners: BTreeMap<u64, (u64, u64)>,
    dirs: u64,
    bytes: u64,
}

impl From<Stored> for Namespace {
    fn from(s: Stored) -> Namespace {
        let segments = s.inodes.values().filter(|i| i.is_segment()).count() as u64;
        let live = ops::compact::count_live(&s.inodes);
        Namespace {
            chunk_size: s.chunk_size,
            next_ino: s.next_ino,
            next_chunk: s.next_chunk,
            inodes: s.inodes,
            chunk_owners: s.chunk_owners,
            dirs: s.dirs,
            bytes: s.bytes,
            open: HashMap::new(),
            segments,
            live,
        }
    }
}

/// Equal persistent state (open counts are not state).
impl PartialEq for Namespace {
    fn eq(&self, o: &Self) -> bool {
        self.chunk_size == o.chunk_size
            && self.next_ino == o.next_ino
            && self.next_chunk == o.next_chunk
            && self.inodes == o.inodes
            && self.chunk_owners == o.chunk_owners
            && self.dirs == o.dirs
            && self.bytes == o.bytes
    }
}

impl Namespace {
    /// An empty file system: the root directory, ino 1, mode 0755, owned by
    /// root, all times 0 until a record sets them.
    pub fn new(chunk_size: u64) -> Self {
        assert!(chunk_size > 0, "chunk size must be positive");
        let mut root = Inode::new(ROOT_INO, Kind::Directory, 0o755, 0, 0, Time::default());
        root.nlink = 2;
        root.parent = ROOT_INO;
        let mut inodes = InodeTable::new();
        inodes.insert(ROOT_INO, root);
        Namespace {
            chunk_size,
            next_ino: ROOT_INO + 1,
            next_chunk: 1,
            inodes,
            chunk_owners: BTreeMap::new(),
            dirs: 1,
            bytes: 0,
            open: HashMap::new(),
            segments: 0,
            live: BTreeMap::new(),
        }
    }

    /// Every file's known chunk allocations (`Inode::alloc`), for snapshots.
    pub fn allocations(&self) -> impl Iterator<Item = (u64, &BTreeMap<u64, u64>)> {
        self.inodes
            .iter()
            .filter_map(|(ino, i)| Some((ino, i.alloc.as_map()?)))
    }

    /// Puts back what `allocations` listed (loading a snapshot); entries for
    /// an inode or chunk index that is not there are dropped.
    pub fn restore_allocations(&mut self, allocs: Vec<(u64, BTreeMap<u64, u64>)>) {
        for (ino, mut alloc) in allocs {
            if let Some(i) = self.inodes.get_mut(&ino) {
                if let Some(chunks) = i.chunks() {
                    alloc.retain(|index, _| chunks.contains_key(index));
                    i.alloc = alloc.into();
                }
            }
        }
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// The next chunk id `prepare` will hand out: every id below it was
    /// journaled (AllocChunk) before any replica of it could exist.
    pub fn next_chunk_id(&self) -> u64 {
        self.next_chunk
    }

    /// Read-only ops: Lookup, GetAttr, Readlink, ReadDir, GetXattr, ListXattr.
    pub fn read(&self, caller: &Caller, op: &Op) -> Result<ReplyResult, Errno> {
        match op {
            Op::Lookup(r) => self
                .lookup(caller, r.parent, &r.name)
                .map(|i| ReplyResult::Attr(self.attr_of(i))),
            Op::Getattr(r) => self
                .inode(r.ino)
                .map(|i| ReplyResult::Attr(self.attr_of(i))),
            Op::Readlink(r) => self.readlink(r.ino).map(ReplyResult::Data),
            Op::Readdir(r) => self.readdir(caller, r).map(ReplyResult::Entries),
            Op::Getxattr(r) => self.getxattr(caller, r.ino, &r.name).map(ReplyResult::Data),
            Op::Listxattr(r) => self.listxattr(caller, r.ino).map(ReplyResult::Names),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Mutations: validate and decide; nothing changes until `apply`.
    pub fn prepare(&self, ctx: &Ctx, op: &Op) -> Result<Prepared, Errno> {
        match op {
            Op::Setattr(r) => self.prepare_setattr(ctx, r),
            Op::Mknod(r) => self.prepare_mknod(ctx, r),
            Op::Mkdir(r) => self.prepare_mkdir(ctx, r),
            Op::Create(r) => self.prepare_create(ctx, r),
            Op::Open(r) => self.prepare_open(ctx, r),
            Op::Symlink(r) => self.prepare_symlink(ctx, r),
            Op::Link(r) => self.prepare_link(ctx, r),
            Op::Unlink(r) => self.prepare_remove(ctx, r.parent, &r.name, false),
            Op::Rmdir(r) => self.prepare_remove(ctx, r.parent, &r.name, true),
            Op::Rename(r) => self.prepare_rename(ctx, r),
            Op::Setxattr(r) => self.prepare_setxattr(ctx, r),
            Op::Removexattr(r) => self.prepare_removexattr(ctx, r),
            Op::AllocChunk(r) => self.prepare_alloc_chunk(r),
            Op::CommitWrite(r) => self.prepare_commit_write(ctx, r),
            Op::CommitPacked(r) => self.prepare_commit_packed(ctx, r),
            // Needs the session: `prepare_create_segment`.
            Op::CreateSegment(_) => Err(Errno::EINVAL),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Applies a record. Deterministic; a record that does not fit the state
    /// (impossible for one prepared against it) changes nothing and is logged.
    pub fn apply(&mut self, rec: &Record) -> Applied {
        let mut freed = Vec::new();
        let reply = match rec {
            Record::Create { .. } => self.apply_create(rec),
            Record::Link {
                ino,
                new_parent,
                new_name,
                now,
            } => self.apply_link(*ino, *new_parent, new_name, *now),
            Record::Remove {
                parent,
                name,
                ino,
                purge,
                now,
            } => self.apply_remove(*parent, name, *ino, *purge, *now, &mut freed),
            Record::Rename { .. } => self.apply_rename(rec, &mut freed),
            Record::SetAttr { .. } => self.apply_setattr(rec, &mut freed),
            Record::SetXattr {
                ino,
                name,
                value,
                now,
            } => self.apply_setxattr(*ino, name, value, *now),
            Record::RemoveXattr { ino, name, now } => self.apply_removexattr(*ino, name, *now),
            Record::AllocChunk {
                ino,
                index,
                chunk_id,
                version,
            } => self.apply_alloc_chunk(*ino, *index, *chunk_id, *version),
            Record::CommitWrite {
                ino,
                end,
                kill_privs,
                now,
            } => self.apply_commit_write(*ino, *end, *kill_privs, *now),
            Record::SetAcl {
                ino,
                value,
                mode,
                now,
            } => self.apply_set_acl(*ino, value.as_deref(), *mode, *now),
            Record::Purge { ino } => {
                match self.inodes.get(ino) {
                    Some(i) if i.nlink == 0 => freed = self.purge_inode(*ino),
                    Some(_) => tracing::warn!(ino, "purge of an inode that has links again: kept"),
                    None => tracing::debug!(ino, "purge of an inode already gone"),
                }
                Ok(ReplyResult::Empty(pb::Empty {}))
            }
            Record::BumpVersion {
                ino,
                index,
                chunk_id,
                version,
            } => self.apply_bump_version(*ino, *index, *chunk_id, *version),
            Record::CommitAlloc {
                ino,
                end,
                kill_privs,
                now,
                allocs,
            } => self.apply_commit_alloc(*ino, *end, *kill_privs, *now, allocs),
            // Session bookkeeping lives in `State`; nothing here.
            Record::ExpireSession { .. } => Ok(ReplyResult::Empty(pb::Empty {})),
            Record::CreateSegment { ino, session, now } => {
                self.apply_create_segment(*ino, *session, *now)
            }
            Record::CommitPacked {
                ino,
                chunk,
                offset,
                len,
                end,
                kill_privs,
                now,
            } => self.apply_commit_packed(*ino, *chunk, *offset, *len, *end, *kill_privs, *now),
            Record::BeginUnpack {
                ino,
                chunk_id,
                version,
            } => self.apply_begin_unpack(*ino, *chunk_id, *version),
            Record::Unpack { ino, chunk_id, len } => self.apply_unpack(*ino, *chunk_id, *len),
            Record::CompactBegin { now } => self.apply_compact_begin(*now),
            Record::CompactSegments {
                new,
                end,
                moves,
                drop,
            } => Ok(self.apply_compact_segments(*new, *end, moves, drop, &mut freed)),
            Record::RenameWhiteout { rename, whiteout } => self
                .apply_rename(rename, &mut freed)
                .and_then(|_| self.apply_create(whiteout))
                .map(|_| ReplyResult::Empty(pb::Empty {})),
        };
        let reply = reply.unwrap_or_else(|e| {
            tracing::error!(?rec, errno = %e, "record does not fit the namespace; nothing changed");
            ReplyResult::Empty(pb::Empty {})
        });
        Applied {
            reply,
            freed_chunks: freed,
        }
    }

    /// `(file size, [(index, chunk id or 0 for a hole, version)])` for
    /// `count` indexes from `first_index` (at most MAX_CHUNKS_PER_CALL).
    /// A packed file has no chunks (its data is `needle`).
    #[allow(clippy::type_complexity)]
    pub fn file_chunks(
        &self,
        ino: u64,
        first_index: u64,
        count: u32,
    ) -> Result<(u64, Vec<(u64, u64, u64)>), Errno> {
        let inode = self.file_inode(ino)?;
        if let Body::Packed { .. } = inode.body {
            return Ok((inode.size, Vec::new()));
        }
        let chunks = self.file_body(inode)?;
        let count = count.min(MAX_CHUNKS_PER_CALL) as u64;
        let end = first_index.saturating_add(count);
        let mut out = Vec::with_capacity(count as usize);
        let mut present = chunks.range(first_index..end).peekable();
        for index in first_index..end {
            match present.peek() {
                Some((&i, c)) if i == index => {
                    out.push((index, c.id, c.version));
                    present.next();
                }
                _ => out.push((index, 0, 0)),
            }
        }
        Ok((inode.size, out))
    }

    /// `(ino, index, version)` of the file chunk `chunk_id` belongs to.
    pub fn chunk_owner(&self, chunk_id: u64) -> Option<(u64, u64, u64)> {
        let &(ino, index) = self.chunk_owners.get(&chunk_id)?;
        let i = self.inodes.get(&ino)?;
        let c = match (&i.body, index) {
            (Body::Packed { unpack_to, .. }, 0) => *unpack_to.as_deref()?,
            _ => *i.chunks()?.get(&index)?,
        };
        Some((ino, index, c.version))
    }

    /// Every chunk: `(ino, index, chunk id, version)`, by inode then index.
    pub fn all_chunks(&self) -> impl Iterator<Item = (u64, u64, u64, u64)> + '_ {
        self.inodes
            .values()
            .flat_map(|i| owned_chunks(i).map(move |(index, c)| (i.ino, index, c.id, c.version)))
    }

    /// The chunks (ino, index, chunk id, version) of at most `max` inodes
    /// numbered above `after`, in inode order; and the last inode walked if
    /// inodes remain after it (where the next page starts).
    pub fn chunks_after(&self, after: u64, max: usize) -> ChunksPage {
        let mut out = Vec::new();
        let mut range = self.inodes.range_from(after.saturating_add(1)).peekable();
        let mut walked = 0;
        while walked < max {
            let Some((ino, i)) = range.next() else { break };
            walked += 1;
            let chunks = owned_chunks(i);
            out.extend(chunks.map(|(index, c)| (ino, index, c.id, c.version)));
            if walked == max && range.peek().is_some() {
                return (out, walked, Some(ino));
            }
        }
        (out, walked, None)
    }

    /// A path for messages: "/a/b"; with hard links one of them; "<ino N>"
    /// when no path is known (orphans, unknown inodes).
    pub fn path_of(&self, ino: u64) -> String {
        let unknown = || format!("<ino {ino}>");
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = ino;
        while cur != ROOT_INO {
            let Some(i) = self.inodes.get(&cur) else {
                return unknown();
            };
            if i.nlink == 0 || parts.len() > 4096 {
                return unknown();
            }
            // The remembered link is exact for directories; for a file whose
            // remembered link was removed while others remain, search for one
            // (a full scan, fine for the rare messages this is for).
            let (parent, name) = match self
                .inodes
                .get(&i.parent)
                .and_then(|p| p.dir())
                .and_then(|d| d.get(&i.name))
            {
                Some(e) if e.ino == cur => (i.parent, i.name.as_bytes()),
                _ => match self.find_link(cur) {
                    Some(link) => link,
                    None => return unknown(),
                },
            };
            parts.push(name);
            cur = parent;
        }
        if parts.is_empty() {
            return "/".to_string();
        }
        let mut s = String::new();
        for p in parts.iter().rev() {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(p));
        }
        s
    }

    pub fn counts(&self) -> Counts {
        let inodes = self.inodes.len() as u64;
        Counts {
            files: inodes - self.dirs - self.segments,
            segments: self.segments,
            directories: self.dirs,
            chunks: self.chunk_owners.len() as u64,
            inodes,
            bytes: self.bytes,
        }
    }

    /// Every inode's open count (an MDS group's snapshot carries them).
    pub fn open_counts(&self) -> Vec<(u64, u32)> {
        let mut v: Vec<(u64, u32)> = self.open.iter().map(|(i, n)| (*i, *n)).collect();
        v.sort_unstable();
        v
    }

    /// Replaces the open counts (from a snapshot; empty: nothing is open).
    pub fn set_open_counts(&mut self, counts: impl IntoIterator<Item = (u64, u32)>) {
        self.open = counts.into_iter().filter(|(_, n)| *n > 0).collect();
    }

    /// A client opened `ino` (after a successful Open or Create).
    pub fn opened(&mut self, ino: u64) {
        *self.open.entry(ino).or_insert(0) += 1;
    }

    /// A client closed `ino`: when that was the last open of an inode with no
    /// links, the record that purges it (journal and apply it).
    pub fn released(&mut self, ino: u64) -> Option<Record> {
        if let Some(n) = self.open.get_mut(&ino) {
            *n -= 1;
            if *n > 0 {
                return None;
            }
            self.open.remove(&ino);
        }
        self.purge_record(ino)
    }

    /// Inodes with no links (kept for open files; after a restart none is open).
    pub fn orphans(&self) -> Vec<u64> {
        self.inodes
            .values()
            .filter(|i| i.nlink == 0)
            .map(|i| i.ino)
            .collect()
    }

    /// The record that purges `ino`, if it has no links and is not open.
    pub fn purge_record(&self, ino: u64) -> Option<Record> {
        match self.inodes.get(&ino) {
            Some(i) if i.nlink == 0 && !self.is_open(ino) => Some(Record::Purge { ino }),
            _ => None,
        }
    }

    /// Attributes of one inode (also for the lead's replies and tests).
    pub fn getattr(&self, ino: u64) -> Result<pb::Attr, Errno> {
        self.inode(ino).map(|i| self.attr_of(i))
    }

    /// The inode itself, read-only (fsck, tests).
    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    /// The directory an absolute, normalised path ("/" or "/a/b") names,
    /// without permission checks (export roots). ENOENT / ENOTDIR otherwise.
    pub fn resolve_dir(&self, path: &str) -> Result<u64, Errno> {
        let mut cur = ROOT_INO;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            let (_, dir) = self.live_dir(cur)?;
            let child = self.child(dir, name.as_bytes()).ok_or(Errno::ENOENT)?;
            if !child.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            cur = child.ino;
        }
        self.live_dir(cur)?;
        Ok(cur)
    }

    /// Whether `ino` lies in the subtree of directory `top` (is `top` or
    /// below it): a directory by its parent chain; a file by the link it
    /// remembers, else (hard links) by any directory below `top` naming it;
    /// an unlinked file by the directory it was last in.
    pub fn within(&self, top: u64, ino: u64) -> bool {
        if top == ROOT_INO {
            return true;
        }
        let Some(i) = self.inodes.get(&ino) else {
            return false;
        };
        if i.is_dir() {
            return self.is_ancestor(top, ino);
        }
        if i.is_segment() {
            // In no directory: its writer is checked by session instead.
            return true;
        }
        if i.nlink == 0 {
            return i.parent != 0 && self.is_ancestor(top, i.parent);
        }
        let remembered = self
            .inodes
            .get(&i.parent)
            .and_then(|p| p.dir())
            .and_then(|d| d.get(&i.name))
            .is_some_and(|e| e.ino == ino);
        if remembered {
            if self.is_ancestor(top, i.parent) {
                return true;
            }
            if i.nlink == 1 {
                return false;
            }
        }
        // Hard links (or an unknown remembered link): a full scan, rare.
        self.inodes.values().any(|d| {
            d.dir()
                .is_some_and(|dir| dir.iter().any(|(_, e)| e.ino == ino))
                && self.is_ancestor(top, d.ino)
        })
    }

    // ---------------------------------------------------------------- helpers

    fn is_open(&self, ino: u64) -> bool {
        self.open.get(&ino).is_some_and(|&n| n > 0)
    }

    fn attr_of(&self, i: &Inode) -> pb::Attr {
        i.attr(self.chunk_size)
    }

    /// An inode a client may name: ENOENT for a segment too (no directory
    /// names one; only its chunk is reachable, by `file_inode`).
    fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes
            .get(&ino)
            .filter(|i| !i.is_segment())
            .ok_or(Errno::ENOENT)
    }

    /// An inode whose chunks a client may read or write: any file, segments
    /// included.
    fn file_inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    /// A directory that can still hold entries: ENOENT if missing or removed,
    /// ENOTDIR if not a directory.
    fn live_dir(&self, ino: u64) -> Result<(&Inode, &dir::Dir), Errno> {
        let i = self.inode(ino)?;
        let d = i.dir().ok_or(Errno::ENOTDIR)?;
        if i.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        Ok((i, d))
    }

    /// The chunk map of a regular file; EISDIR for a directory, EINVAL otherwise.
    fn file_body<'a>(&self, i: &'a Inode) -> Result<&'a BTreeMap<u64, ChunkRef>, Errno> {
        match &i.body {
            Body::File { chunks } => Ok(chunks),
            Body::Dir(_) => Err(Errno::EISDIR),
            _ => Err(Errno::EINVAL),
        }
    }

    /// The inode `name` names in directory `dir` (no permission checks).
    fn child(&self, dir: &dir::Dir, name: &[u8]) -> Option<&Inode> {
        dir.get(name).and_then(|e| self.inodes.get(&e.ino))
    }

    /// Removes an inode for good; returns the chunks it held.
    fn purge_inode(&mut self, ino: u64) -> Vec<u64> {
        let Some(inode) = self.inodes.remove(&ino) else {
            return Vec::new();
        };
        if inode.is_segment() {
            self.segments -= 1;
        }
        let mut freed = Vec::new();
        match inode.body {
            Body::File { chunks } => {
                self.bytes -= inode.size;
                for c in chunks.values() {
                    self.chunk_owners.remove(&c.id);
                    freed.push(c.id);
                }
            }
            Body::Packed {
                unpack_to,
                chunk,
                len,
                ..
            } => {
                // The needle is dead space in its segment; only a begun
                // unpack's chunk is the file's own.
                self.live_sub(chunk, len);
                self.bytes -= inode.size;
                if let Some(c) = unpack_to {
                    self.chunk_owners.remove(&c.id);
                    freed.push(c.id);
                }
            }
            Body::Dir(_) => self.dirs -= 1,
            _ => {}
        }
        freed
    }

    /// Whether the file's body is a regular file's (chunks or a needle).
    fn is_file_body(i: &Inode) -> bool {
        matches!(i.body, Body::File { .. } | Body::Packed { .. })
    }

    /// Some (directory, name) naming `ino`, by scanning every directory.
    fn find_link(&self, ino: u64) -> Option<(u64, &[u8])> {
        self.inodes.values().find_map(|d| {
            let dir = d.dir()?;
            dir.iter()
                .find(|(_, e)| e.ino == ino)
                .map(|(name, _)| (d.ino, name))
        })
    }

    /// Whether `ancestor` is `ino` or one of the directories above it.
    fn is_ancestor(&self, ancestor: u64, mut ino: u64) -> bool {
        for _ in 0..=self.inodes.len() {
            if ino == ancestor {
                return true;
            }
            if ino == ROOT_INO {
                return false;
            }
            match self.inodes.get(&ino) {
                Some(i) => ino = i.parent,
                None => return false,
            }
        }
        false
    }
}

/// The chunks an inode owns: a file's chunk map, or a packed file's begun
/// unpack chunk (at index 0).
fn owned_chunks(i: &Inode) -> impl Iterator<Item = (u64, ChunkRef)> + '_ {
    let unpack = match &i.body {
        Body::Packed { unpack_to, .. } => unpack_to.as_deref().copied(),
        _ => None,
    };
    i.chunks()
        .into_iter()
        .flatten()
        .map(|(&x, &c)| (x, c))
        .chain(unpack.map(|c| (0, c)))
}
