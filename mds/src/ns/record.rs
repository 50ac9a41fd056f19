//! Journal records: one variant per kind of mutation, fully resolved by
//! `prepare` (inode and chunk numbers, times, owners, final modes, whether an
//! inode that loses its last link is purged now or kept for its open files).
//!
//! `apply` of a record is a pure function of (state, record), so replaying the
//! log onto `Namespace::new` rebuilds the same state. Records are serialized
//! with postcard into the WAL: only ever ADD variants at the end and never
//! change an existing variant's fields, or old logs stop decoding.

use super::inode::{Kind, Time};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// mknod, mkdir, create, symlink: a new inode linked at `parent/name`.
    Create {
        parent: u64,
        name: Vec<u8>,
        ino: u64,
        kind: Kind,
        /// Final permission bits (umask, setgid inheritance applied).
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        /// Symlink target; empty for other kinds.
        target: Vec<u8>,
        now: Time,
    },
    /// link: another name for an existing non-directory.
    Link {
        ino: u64,
        new_parent: u64,
        new_name: Vec<u8>,
        now: Time,
    },
    /// unlink or rmdir of `parent/name` (which names `ino`). When that was
    /// the last link, `purge` says whether the inode goes now (true) or stays
    /// as an orphan because it is open (false; a later `Purge` removes it).
    Remove {
        parent: u64,
        name: Vec<u8>,
        ino: u64,
        purge: bool,
        now: Time,
    },
    /// rename/renameat2. `replaced` is the inode `new_parent/new_name` named
    /// before (None if absent); with `exchange` the two entries swap inodes.
    /// `purge` is as for `Remove`, about `replaced`.
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        ino: u64,
        replaced: Option<u64>,
        exchange: bool,
        purge: bool,
        now: Time,
    },
    /// setattr, and open/create with O_TRUNC. Present fields are final values;
    /// a smaller `size` drops the chunks wholly past it.
    SetAttr {
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Time>,
        mtime: Option<Time>,
        ctime: Time,
    },
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        now: Time,
    },
    RemoveXattr {
        ino: u64,
        name: Vec<u8>,
        now: Time,
    },
    /// A new chunk fills the hole at `index`.
    AllocChunk {
        ino: u64,
        index: u64,
        chunk_id: u64,
        version: u64,
    },
    /// Data up to `end` is on every replica: size = max(size, end), mtime =
    /// ctime = now, and setuid/setgid cleared when `kill_privs`.
    CommitWrite {
        ino: u64,
        end: u64,
        kill_privs: bool,
        now: Time,
    },
    /// An inode with no links left and no opens: gone, with its chunks.
    Purge {
        ino: u64,
    },
    /// A new write lease on chunk `chunk_id` (at `index` of `ino`)
    /// raises its version, so replicas that miss the writes under it are
    /// recognisably stale. Ignored if the chunk is no longer there.
    BumpVersion {
        ino: u64,
        index: u64,
        chunk_id: u64,
        version: u64,
    },
    /// Setxattr/removexattr of system.posix_acl_access. The ACL is
    /// stored (Some) or dropped (None: the mode says it all), and the mode's
    /// permission bits (and a setgid the caller may not keep) become `mode`.
    SetAcl {
        ino: u64,
        value: Option<Vec<u8>>,
        mode: u32,
        now: Time,
    },
    /// A client session was silent past the session timeout: its remembered
    /// replies go (in `State`; the namespace itself does not change). Its open
    /// files are released by the `Purge` records that follow it.
    ExpireSession {
        session: u64,
    },
    /// Renameat2(RENAME_WHITEOUT): the `Rename`, then the whiteout
    /// (a `Create` of a 0:0 character device) at the source name, as one
    /// journaled change.
    RenameWhiteout {
        rename: Box<Record>,
        whiteout: Box<Record>,
    },
    /// A CommitWrite that also records what the written chunks'
    /// replicas hold on disk now (`allocs`, each applied only while its index
    /// still holds that chunk). With `now` None only the allocation changes
    /// (fallocate KEEP_SIZE reserved space): neither size nor times.
    CommitAlloc {
        ino: u64,
        end: u64,
        kill_privs: bool,
        now: Option<Time>,
        allocs: Vec<ChunkAlloc>,
    },
    /// A new segment: a hidden regular file (0600 root:root, nlink 1, no
    /// name, parent `SEGMENT_PARENT`) that `session` appends needles to.
    CreateSegment {
        ino: u64,
        session: u64,
        now: Time,
    },
    /// The needle of `len` data bytes at `offset` of chunk `chunk` is on
    /// every replica: the file becomes packed, size = max(size, end),
    /// mtime = ctime = now, setuid/setgid cleared when `kill_privs`.
    CommitPacked {
        ino: u64,
        chunk: u64,
        offset: u64,
        len: u64,
        end: u64,
        kill_privs: bool,
        now: Time,
    },
    /// An unpack of packed file `ino` begins: `chunk_id` (fresh, at
    /// `version`) is where its needle is copied, owned by (ino, 0).
    BeginUnpack {
        ino: u64,
        chunk_id: u64,
        version: u64,
    },
    /// The needle's `len` data bytes are in `chunk_id`: the file becomes
    /// `File { 0: chunk_id }`, its size unchanged. Ignored unless `chunk_id`
    /// is still its unpack chunk and `len` its needle's length (a truncate
    /// in between shortened it: the copy is done again).
    Unpack {
        ino: u64,
        chunk_id: u64,
        len: u64,
    },
    /// Compaction begins: a new segment written by the MDS itself
    /// (`MDS_SEGMENT_SESSION`) with its chunk 0 (version 1), which live
    /// needles of sparse segments are copied into. Its inode number and
    /// chunk id are the next ones when it applies (the compactor proposes it
    /// from outside the commit thread); the reply is its attributes.
    CompactBegin {
        now: Time,
    },
    /// Compaction's switch, after the needles are on every replica of
    /// `new`'s chunk (synced): each file in `moves` whose needle is still at
    /// (chunk, offset) has it at `new_offset` of `new`'s chunk from now on
    /// (a file changed meanwhile keeps what it has); `end` is how far `new`
    /// is written. Then every segment in `drop` (and `new`) that no file
    /// references any more is removed with its chunk. `new` 0: only drops.
    CompactSegments {
        new: u64,
        end: u64,
        moves: Vec<NeedleMove>,
        drop: Vec<u64>,
    },
}

/// One needle compaction moves: file `ino`'s needle at `offset` of segment
/// chunk `chunk` goes to `new_offset` of the new segment's chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NeedleMove {
    pub ino: u64,
    pub chunk: u64,
    pub offset: u64,
    pub new_offset: u64,
}

/// One chunk's data bytes on disk, as its primary replica reported them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkAlloc {
    pub index: u64,
    pub chunk_id: u64,
    pub bytes: u64,
}

impl Record {
    /// The inode the record is mainly about (for logs).
    pub fn ino(&self) -> u64 {
        match self {
            Record::Create { ino, .. }
            | Record::Link { ino, .. }
            | Record::Remove { ino, .. }
            | Record::Rename { ino, .. }
            | Record::SetAttr { ino, .. }
            | Record::SetXattr { ino, .. }
            | Record::RemoveXattr { ino, .. }
            | Record::AllocChunk { ino, .. }
            | Record::CommitWrite { ino, .. }
            | Record::Purge { ino }
            | Record::BumpVersion { ino, .. }
            | Record::CommitAlloc { ino, .. }
            | Record::CreateSegment { ino, .. }
            | Record::CommitPacked { ino, .. }
            | Record::BeginUnpack { ino, .. }
            | Record::Unpack { ino, .. } => *ino,
            Record::SetAcl { ino, .. } => *ino,
            Record::ExpireSession { .. } | Record::CompactBegin { .. } => 0,
            Record::CompactSegments { new, .. } => *new,
            Record::RenameWhiteout { rename, .. } => rename.ino(),
        }
    }
}
