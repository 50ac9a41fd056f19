//! weft's wire protocol: the generated gRPC services (`Meta`, `Coherence`, `Master`,
//! `Admin`, `Chunk`, `ChunkSpace`, `ChunkAdmin`)
//! and the few types every side shares — the errno carried in `MetaReply` and
//! message-size limits; `contract` holds what both ends must agree on.

#![allow(clippy::large_enum_variant)]

pub mod pb {
    tonic::include_proto!("weft");
}

pub use pb::*;

pub mod accept;
pub mod caps;
pub mod contract;
pub mod gate;
pub mod identity;
pub mod net;
pub mod reqid;

/// Largest gRPC message any weft service sends or accepts: a 4 MiB data block
/// plus headroom for the envelope.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Largest data payload a client puts in one `WriteReq` or asks for in one `ReadReq`.
pub const MAX_IO: usize = 4 * 1024 * 1024;

/// A Linux errno, as a kernel file system would return it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const EMLINK: Errno = Errno(libc::EMLINK);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ELOOP: Errno = Errno(libc::ELOOP);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const ETIMEDOUT: Errno = Errno(libc::ETIMEDOUT);
    pub const ESTALE: Errno = Errno(libc::ESTALE);
    pub const EAGAIN: Errno = Errno(libc::EAGAIN);

    pub fn code(self) -> i32 {
        self.0
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for Errno {}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// Nanosecond wall-clock time as a `Timespec`.
pub fn now() -> Timespec {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timespec {
        sec: d.as_secs() as i64,
        nsec: d.subsec_nanos(),
    }
}

pub mod leader;
pub mod md5_state;

/// Label values for the kinds of `Meta` operations, indexed by `op_kind`
/// (the metrics of the MDS and of weftfs count calls by these).
pub const OP_KINDS: &[&str] = &[
    "lookup",
    "getattr",
    "setattr",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "readlink",
    "rename",
    "link",
    "readdir",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "statfs",
    "open",
    "create",
    "release",
    "get_chunks",
    "alloc_chunk",
    "commit_write",
    "setlk",
    "getlk",
    "release_locks",
    "keepalive",
    "sync_log",
    "create_segment",
    "commit_packed",
];

/// Index of `op` in `OP_KINDS`.
pub fn op_kind(op: &meta_request::Op) -> usize {
    use meta_request::Op;
    match op {
        Op::Lookup(_) => 0,
        Op::Getattr(_) => 1,
        Op::Setattr(_) => 2,
        Op::Mknod(_) => 3,
        Op::Mkdir(_) => 4,
        Op::Unlink(_) => 5,
        Op::Rmdir(_) => 6,
        Op::Symlink(_) => 7,
        Op::Readlink(_) => 8,
        Op::Rename(_) => 9,
        Op::Link(_) => 10,
        Op::Readdir(_) => 11,
        Op::Setxattr(_) => 12,
        Op::Getxattr(_) => 13,
        Op::Listxattr(_) => 14,
        Op::Removexattr(_) => 15,
        Op::Statfs(_) => 16,
        Op::Open(_) => 17,
        Op::Create(_) => 18,
        Op::Release(_) => 19,
        Op::GetChunks(_) => 20,
        Op::AllocChunk(_) => 21,
        Op::CommitWrite(_) => 22,
        Op::Setlk(_) => 23,
        Op::Getlk(_) => 24,
        Op::ReleaseLocks(_) => 25,
        Op::Keepalive(_) => 26,
        Op::SyncLog(_) => 27,
        Op::CreateSegment(_) => 28,
        Op::CommitPacked(_) => 29,
    }
}
