//! Inodes: what one file-system object is, and how it is shown as a `pb::Attr`.
//!
//! Invariants (kept by the ops, checked by the tests):
//! - `kind` and `body` agree: `Directory` ⇔ `Body::Dir`, `Regular` ⇔
//!   `Body::File | Body::Packed`, `Symlink` ⇔ `Body::Symlink`, every other
//!   kind ⇔ `Body::Special`.
//! - A segment (`parent == SEGMENT_PARENT`) is a `Body::File` no directory
//!   names, `nlink` 1: its chunk 0 holds packed files' needles.
//! - `mode` holds permission bits only (07777); the type lives in `kind`.
//! - A directory's `parent` is the directory holding it (the root is its own
//!   parent) and `nlink` is 2 + its subdirectories, 0 once removed.
//! - For other kinds `parent`/`name` remember one link for `path_of` (best
//!   effort with hard links); `parent == 0` means "unknown".

use super::dir::Dir;
use super::name::Name;
use super::pb;
use super::thin_map::ThinMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const S_IFMT: u32 = libc::S_IFMT;
pub const S_ISUID: u32 = libc::S_ISUID;
pub const S_ISGID: u32 = libc::S_ISGID;
pub const S_ISVTX: u32 = libc::S_ISVTX;
pub const S_IXGRP: u32 = libc::S_IXGRP;
/// Permission bits plus setuid/setgid/sticky.
pub const MODE_MASK: u32 = 0o7777;
/// What `stat` shows as a directory's size, as ext4 does for a one-block directory.
pub const DIR_SIZE: u64 = 4096;

/// A point in time, nanosecond resolution, as journaled in records.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl From<pb::Timespec> for Time {
    fn from(t: pb::Timespec) -> Self {
        // Clamp a malformed nanosecond field rather than store an impossible time.
        Time {
            sec: t.sec,
            nsec: t.nsec.min(999_999_999),
        }
    }
}

impl From<&pb::Timespec> for Time {
    fn from(t: &pb::Timespec) -> Self {
        Time::from(*t)
    }
}

impl From<Time> for pb::Timespec {
    fn from(t: Time) -> Self {
        pb::Timespec {
            sec: t.sec,
            nsec: t.nsec,
        }
    }
}

/// The type of a file-system object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    /// The kind named by the S_IFMT bits of a mode; 0 means a regular file, as
    /// mknod(2) says.
    pub fn from_mode(mode: u32) -> Option<Kind> {
        match mode & S_IFMT {
            0 | libc::S_IFREG => Some(Kind::Regular),
            libc::S_IFDIR => Some(Kind::Directory),
            libc::S_IFLNK => Some(Kind::Symlink),
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFSOCK => Some(Kind::Socket),
            libc::S_IFCHR => Some(Kind::CharDevice),
            libc::S_IFBLK => Some(Kind::BlockDevice),
            _ => None,
        }
    }

    pub fn to_pb(self) -> pb::FileKind {
        match self {
            Kind::Regular => pb::FileKind::Regular,
            Kind::Directory => pb::FileKind::Directory,
            Kind::Symlink => pb::FileKind::Symlink,
            Kind::Fifo => pb::FileKind::Fifo,
            Kind::Socket => pb::FileKind::Socket,
            Kind::CharDevice => pb::FileKind::CharDevice,
            Kind::BlockDevice => pb::FileKind::BlockDevice,
        }
    }
}

/// One chunk of a regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: u64,
    pub version: u64,
}

/// The `parent` of a segment: no directory.
pub const SEGMENT_PARENT: u64 = u64::MAX;
/// A segment's creating session (little-endian u64), kept with the inode so
/// snapshots carry it; a segment is never listed or named, so no client sees it.
pub const SEGMENT_SESSION_XATTR: &[u8] = b"system.weft.segment_session";
/// Where needles start: every needle offset is a multiple of this.
pub const NEEDLE_ALIGN: u64 = 64;
/// A needle's header bytes before its data.
pub const NEEDLE_HEADER: u64 = 32;
/// The writer session of a segment the MDS made itself (compaction): no
/// client session is 0, so no mount appends to it.
pub const MDS_SEGMENT_SESSION: u64 = 0;

/// Bytes a needle of `len` data bytes takes in its segment (header and
/// padding included).
pub fn needle_span(len: u64) -> u64 {
    NEEDLE_HEADER
        .saturating_add(len)
        .next_multiple_of(NEEDLE_ALIGN)
}

/// Kind-specific contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    Dir(Box<Dir>),
    /// chunk index (byte offset / chunk size) → chunk; absent indexes are holes.
    File {
        chunks: BTreeMap<u64, ChunkRef>,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// FIFOs, sockets and devices: nothing beyond `rdev`.
    Special,
    /// A regular file whose data is one needle in a segment: `len` data
    /// bytes after the needle header at `offset` of chunk `chunk` (chunk 0
    /// of a segment). Bytes [len, size) read as zeros. `unpack_to` is the
    /// chunk an unpack in progress copies the needle into (owned by
    /// (ino, 0) in `chunk_owners`). Added last: older snapshots still decode.
    Packed {
        chunk: u64,
        offset: u64,
        len: u64,
        unpack_to: Option<Box<ChunkRef>>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Inode {
    pub ino: u64,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
    pub rdev: u32,
    pub xattrs: ThinMap<Vec<u8>, Vec<u8>>,
    pub parent: u64,
    pub name: Name,
    pub body: Body,
    /// Chunk index → data bytes its replicas hold on disk, as the
    /// primary last reported (`Record::CommitAlloc`); a chunk absent here is
    /// estimated. Not in the postcard form of the inode (snapshots written
    /// before it existed must still load): the snapshot stores it after the
    /// namespace (`snapshot.rs`, format version 2).
    #[serde(skip)]
    pub alloc: ThinMap<u64, u64>,
}

// What a file costs the MDS is mostly its inode: keep it small (the
// rarely used parts are boxed: a directory's contents, a begun unpack,
// extended attributes, allocations).
const _: () = assert!(std::mem::size_of::<Inode>() <= 192);

impl Inode {
    /// A fresh inode of `kind` with every time set to `now` and no links yet
    /// (the caller sets `nlink`, `parent`, `name`).
    pub fn new(ino: u64, kind: Kind, mode: u32, uid: u32, gid: u32, now: Time) -> Inode {
        let body = match kind {
            Kind::Directory => Body::Dir(Box::default()),
            Kind::Regular => Body::File {
                chunks: BTreeMap::new(),
            },
            Kind::Symlink => Body::Symlink { target: Vec::new() },
            _ => Body::Special,
        };
        Inode {
            ino,
            kind,
            mode: mode & MODE_MASK,
            uid,
            gid,
            nlink: 0,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev: 0,
            xattrs: ThinMap::new(),
            parent: 0,
            name: Name::default(),
            body,
            alloc: ThinMap::new(),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Directory
    }

    /// A segment: a hidden file holding packed files' needles.
    pub fn is_segment(&self) -> bool {
        self.parent == SEGMENT_PARENT
    }

    /// The session that created this segment (None: not a segment).
    pub fn segment_session(&self) -> Option<u64> {
        if !self.is_segment() {
            return None;
        }
        let v = self.xattrs.get(SEGMENT_SESSION_XATTR)?;
        Some(u64::from_le_bytes(v.as_slice().try_into().ok()?))
    }

    pub fn dir(&self) -> Option<&Dir> {
        match &self.body {
            Body::Dir(d) => Some(d),
            _ => None,
        }
    }

    pub fn dir_mut(&mut self) -> Option<&mut Dir> {
        match &mut self.body {
            Body::Dir(d) => Some(d),
            _ => None,
        }
    }

    pub fn chunks(&self) -> Option<&BTreeMap<u64, ChunkRef>> {
        match &self.body {
            Body::File { chunks } => Some(chunks),
            _ => None,
        }
    }

    pub fn chunks_mut(&mut self) -> Option<&mut BTreeMap<u64, ChunkRef>> {
        match &mut self.body {
            Body::File { chunks } => Some(chunks),
            _ => None,
        }
    }

    /// Bytes the file holds on disk (what `st_blocks` counts): for each
    /// chunk, what its primary replica last reported (written or reserved
    /// blocks, so fallocate KEEP_SIZE past the end counts, as on ext4), at
    /// most the chunk size; a chunk without a report (written by an older
    /// client, or before an older snapshot) counts its part below the file
    /// size, an upper bound since replicas are sparse.
    pub fn allocated_bytes(&self, chunk_size: u64) -> u64 {
        if let Body::Packed { len, .. } = self.body {
            // The needle's data, counted in the 4 KiB blocks a file of its
            // own would take (the segment's blocks are the segment's).
            return len.next_multiple_of(4096);
        }
        let Some(chunks) = self.chunks() else {
            return 0;
        };
        chunks
            .keys()
            .map(|&index| match self.alloc.get(&index) {
                Some(&bytes) => bytes.min(chunk_size),
                None => {
                    let start = index.saturating_mul(chunk_size);
                    self.size
                        .saturating_sub(start)
                        .min(chunk_size)
                        .div_ceil(512)
                        * 512
                }
            })
            .fold(0u64, u64::saturating_add)
    }

    /// What `stat` shows.
    pub fn attr(&self, chunk_size: u64) -> pb::Attr {
        let (size, blocks) = match self.kind {
            Kind::Directory => (DIR_SIZE, DIR_SIZE / 512),
            Kind::Regular => (self.size, self.allocated_bytes(chunk_size).div_ceil(512)),
            _ => (self.size, 0),
        };
        pb::Attr {
            ino: self.ino,
            kind: self.kind.to_pb() as i32,
            mode: self.mode & MODE_MASK,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            size,
            atime: Some(self.atime.into()),
            mtime: Some(self.mtime.into()),
            ctime: Some(self.ctime.into()),
            crtime: Some(self.crtime.into()),
            rdev: self.rdev,
            blocks,
        }
    }
}
