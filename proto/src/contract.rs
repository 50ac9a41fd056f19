//! The wire contract both ends of weft's services rely on, decided once:
//! what kind each `Meta` operation is (exactly-once depends on the client and
//! the MDS agreeing which ones are mutations), which inodes and names a
//! mutation changes, the shared limits, and the one table from a gRPC status
//! to what the caller does next (retry, try another replica, ask for a new
//! write lease, or fail with an errno).

use tonic::Code;

use crate::meta_request::Op;
use crate::Errno;

/// Limits both sides must agree on.
pub mod limits {
    /// The checksum block of a chunk replica, and so the unit of reads the
    /// client caches and the `st_blksize` it reports: a write smaller than
    /// this costs a read-modify-write of the block on every replica.
    pub const BLOCK_SIZE: u32 = 64 * 1024;
    /// Most chunk locations one `GetChunks` answers; a client asks again from
    /// where the answer stopped.
    pub const MAX_CHUNKS_PER_CALL: u32 = 1024;
    /// Chunk locations an open for reading answers with
    /// (`MetaReply.open_chunks`): the first chunk and as many ahead as the
    /// client's first GetChunks would have asked for.
    pub const OPEN_CHUNKS: u32 = 17;
    /// Most chunk allocations one `CommitWrite` carries: a client splits a
    /// larger commit (a punch or fallocate over many chunks), the MDS refuses
    /// one over it with EINVAL.
    pub const MAX_ALLOCS_PER_COMMIT: usize = 1024;
}

/// How the MDS treats an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Answered from the state as it stands; carries seq 0.
    Read,
    /// The lock table and session liveness: not journaled, and repeating one
    /// is harmless (a lock already held by its owner is held again), so no
    /// sequence number either.
    Session,
    /// Journaled: carries a fresh (session, seq), and a retry of the same seq
    /// gets the original reply.
    Mutation,
}

/// The kind of `op`. Every `Op` variant is named, so a new one cannot be
/// added without deciding its kind here.
pub fn kind(op: &Op) -> OpKind {
    match op {
        Op::Lookup(_)
        | Op::Getattr(_)
        | Op::Readlink(_)
        | Op::Readdir(_)
        | Op::Getxattr(_)
        | Op::Listxattr(_)
        | Op::Statfs(_)
        | Op::GetChunks(_)
        | Op::SyncLog(_) => OpKind::Read,
        Op::Setlk(_) | Op::Getlk(_) | Op::ReleaseLocks(_) | Op::Keepalive(_) => OpKind::Session,
        Op::Create(_)
        | Op::Mknod(_)
        | Op::Mkdir(_)
        | Op::Symlink(_)
        | Op::Link(_)
        | Op::Unlink(_)
        | Op::Rmdir(_)
        | Op::Rename(_)
        | Op::Setattr(_)
        | Op::Setxattr(_)
        | Op::Removexattr(_)
        | Op::Open(_)
        | Op::Release(_)
        | Op::AllocChunk(_)
        | Op::CommitWrite(_)
        | Op::CreateSegment(_)
        | Op::CommitPacked(_) => OpKind::Mutation,
    }
}

/// True for the operations that need a sequence number.
pub fn is_mutation(op: &Op) -> bool {
    kind(op) == OpKind::Mutation
}

/// A (directory inode, name) pair.
pub type Name = (u64, Vec<u8>);

/// What a mutation changes, for the caches that must forget it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Nothing a cache holds (reads, locks, open counts).
    Nothing,
    Some {
        /// Inodes whose attributes (or, for directories, entries) change.
        inodes: Vec<u64>,
        /// Names that stop pointing where they did.
        removed: Vec<Name>,
        /// The name the reply's attributes belong to (creates, links).
        created: Option<Name>,
    },
    /// Too much to name (renameat2 RENAME_WHITEOUT also creates the source
    /// name anew): forget everything.
    All,
}

/// What `op` changes if it succeeds.
pub fn changes(op: &Op) -> Changes {
    let some = |inodes: Vec<u64>, removed: Vec<Name>, created: Option<Name>| Changes::Some {
        inodes,
        removed,
        created,
    };
    match op {
        // Open counts, and the atimes it carries; a purge leaves no name
        // to find it by.
        Op::Release(r) if r.atimes.is_empty() => Changes::Nothing,
        Op::Release(r) => some(r.atimes.iter().map(|a| a.ino).collect(), vec![], None),
        _ if kind(op) != OpKind::Mutation => Changes::Nothing,
        Op::Setattr(r) => some(vec![r.ino], vec![], None),
        Op::Setxattr(r) => some(vec![r.ino], vec![], None),
        Op::Removexattr(r) => some(vec![r.ino], vec![], None),
        Op::Open(r) => some(vec![r.ino], vec![], None),
        Op::AllocChunk(r) => some(vec![r.ino], vec![], None),
        Op::CommitWrite(r) => some(vec![r.ino], vec![], None),
        // The file's size and data; the segment's chunk was written by
        // its lease, and no cache holds a segment's attributes.
        Op::CommitPacked(r) => some(vec![r.ino], vec![], None),
        // A hidden inode no name or cache refers to yet.
        Op::CreateSegment(_) => Changes::Nothing,
        Op::Mknod(r) => some(vec![r.parent], vec![], Some((r.parent, r.name.clone()))),
        Op::Mkdir(r) => some(vec![r.parent], vec![], Some((r.parent, r.name.clone()))),
        Op::Symlink(r) => some(vec![r.parent], vec![], Some((r.parent, r.name.clone()))),
        Op::Create(r) => some(vec![r.parent], vec![], Some((r.parent, r.name.clone()))),
        Op::Link(r) => some(
            vec![r.ino, r.new_parent],
            vec![],
            Some((r.new_parent, r.new_name.clone())),
        ),
        Op::Unlink(r) => some(vec![r.parent], vec![(r.parent, r.name.clone())], None),
        Op::Rmdir(r) => some(vec![r.parent], vec![(r.parent, r.name.clone())], None),
        Op::Rename(r) if r.flags & libc::RENAME_WHITEOUT != 0 => Changes::All,
        Op::Rename(r) => some(
            vec![r.parent, r.new_parent],
            vec![
                (r.parent, r.name.clone()),
                (r.new_parent, r.new_name.clone()),
            ],
            None,
        ),
        _ => Changes::All,
    }
}

/// The inodes whose fsync (or close) must wait until `op` is durable: the
/// inode itself, and the directory whose entries it changes. An access-time
/// update and a plain open change nothing worth a wait (ext4 does not sync
/// an atime either).
pub fn durability_inodes(op: &Op) -> Vec<u64> {
    match op {
        Op::Setattr(r) if r.atime_update != 0 => vec![],
        Op::Release(_) => vec![],
        Op::Open(r) if r.flags & libc::O_TRUNC as u32 == 0 => vec![],
        _ => match changes(op) {
            Changes::Some { inodes, .. } => inodes,
            Changes::Nothing | Changes::All => vec![],
        },
    }
}

/// The one directory whose entries `op` changes, for `MetaReply.parent_attr`
/// (a rename changes two and gets none).
pub fn changed_dir(op: &Op) -> Option<u64> {
    match op {
        Op::Create(r) => Some(r.parent),
        Op::Mknod(r) => Some(r.parent),
        Op::Mkdir(r) => Some(r.parent),
        Op::Symlink(r) => Some(r.parent),
        Op::Link(r) => Some(r.new_parent),
        Op::Unlink(r) => Some(r.parent),
        Op::Rmdir(r) => Some(r.parent),
        _ => None,
    }
}

/// Which call a failed status came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// A `Meta` call to the MDS.
    Meta,
    /// A chunk read from one replica.
    ChunkRead,
    /// A chunk write, punch or allocation down a write pipeline.
    ChunkWrite,
}

/// What a caller does with a failed status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Transport trouble: the peer may never have seen the request or its
    /// answer was lost; send the same request again (same seq) until the
    /// deadline.
    Retry,
    /// This replica is corrupt, unreachable, lacks the chunk or holds a
    /// stale version: read from the next one.
    NextReplica,
    /// The lease or version went stale, a replica lost the chunk, or a
    /// pipeline member is down: ask the MDS for a fresh pipeline and write
    /// again.
    Realloc,
    /// Give up with this errno.
    Fail(Errno),
}

/// The one table from (call, gRPC status) to what happens next.
pub fn next(call: Call, status: &tonic::Status) -> Next {
    use Code::*;
    let transport = matches!(
        status.code(),
        Unavailable | Unknown | Cancelled | DeadlineExceeded | Aborted
    );
    match call {
        Call::Meta if transport => Next::Retry,
        // Codes an MDS returns deliberately for a bad request.
        Call::Meta => Next::Fail(Errno::EIO),
        Call::ChunkRead if transport => Next::NextReplica,
        Call::ChunkRead => match status.code() {
            // Unauthenticated: the capability expired or its key rotated;
            // after every replica the reader asks the MDS again.
            DataLoss | NotFound | FailedPrecondition | Internal | Unauthenticated => {
                Next::NextReplica
            }
            _ => Next::Fail(status_errno(status)),
        },
        Call::ChunkWrite if transport => Next::Realloc,
        Call::ChunkWrite => match status.code() {
            // Unauthenticated: a new lease brings a new capability.
            FailedPrecondition | NotFound | Unauthenticated => Next::Realloc,
            _ => Next::Fail(status_errno(status)),
        },
    }
}

/// Metadata entry on a failed Chunk.Copy whose source could not be read:
/// the destination pipeline is fine, the source's locations may be stale.
pub const COPY_SOURCE_KEY: &str = "weft-copy-source";

/// Whether a failed Chunk.Copy failed reading its source.
pub fn copy_source_failed(status: &tonic::Status) -> bool {
    status.metadata().get(COPY_SOURCE_KEY).is_some()
}

/// The errno a chunk daemon's `status` means once retrying is over (the
/// table in weft.proto's Chunk service comment).
pub fn status_errno(status: &tonic::Status) -> Errno {
    match status.code() {
        Code::ResourceExhausted => Errno::ENOSPC,
        Code::InvalidArgument => Errno::EINVAL,
        Code::FailedPrecondition => Errno::ESTALE,
        _ => Errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use tonic::Status;

    #[test]
    fn reads_and_locks_carry_no_seq_and_every_change_does() {
        assert_eq!(kind(&Op::Getattr(GetAttrReq { ino: 1 })), OpKind::Read);
        assert_eq!(kind(&Op::GetChunks(GetChunksReq::default())), OpKind::Read);
        assert_eq!(kind(&Op::Statfs(StatFsReq {})), OpKind::Read);
        assert_eq!(kind(&Op::Setlk(LockReq::default())), OpKind::Session);
        assert!(!is_mutation(&Op::Keepalive(KeepaliveReq {})));
        assert!(is_mutation(&Op::Mkdir(MkdirReq::default())));
        assert!(is_mutation(&Op::Open(OpenReq::default())));
        assert!(is_mutation(&Op::Release(ReleaseReq::default())));
        assert!(is_mutation(&Op::AllocChunk(AllocChunkReq::default())));
        assert!(is_mutation(&Op::CommitWrite(CommitWriteReq::default())));
        assert!(is_mutation(&Op::CreateSegment(CreateSegmentReq {})));
        assert!(is_mutation(&Op::CommitPacked(CommitPackedReq::default())));
    }

    #[test]
    fn a_rename_changes_both_names_and_both_directories() {
        let op = Op::Rename(RenameReq {
            parent: 2,
            name: b"a".to_vec(),
            new_parent: 3,
            new_name: b"b".to_vec(),
            ..Default::default()
        });
        assert_eq!(
            changes(&op),
            Changes::Some {
                inodes: vec![2, 3],
                removed: vec![(2, b"a".to_vec()), (3, b"b".to_vec())],
                created: None
            }
        );
        assert_eq!(durability_inodes(&op), vec![2, 3]);
        assert_eq!(changed_dir(&op), None);
        let whiteout = Op::Rename(RenameReq {
            flags: libc::RENAME_WHITEOUT,
            ..Default::default()
        });
        assert_eq!(changes(&whiteout), Changes::All);
    }

    #[test]
    fn an_atime_update_or_a_plain_open_waits_for_nothing() {
        let atime = Op::Setattr(SetAttrReq {
            ino: 5,
            atime_update: 1,
            ..Default::default()
        });
        assert_eq!(durability_inodes(&atime), Vec::<u64>::new());
        assert!(matches!(changes(&atime), Changes::Some { .. }));
        let open = Op::Open(OpenReq {
            ino: 5,
            ..Default::default()
        });
        assert_eq!(durability_inodes(&open), Vec::<u64>::new());
        let trunc = Op::Open(OpenReq {
            ino: 5,
            flags: libc::O_TRUNC as u32,
        });
        assert_eq!(durability_inodes(&trunc), vec![5]);
        assert_eq!(
            changes(&Op::Release(ReleaseReq::default())),
            Changes::Nothing
        );
        let release_atimes = Op::Release(ReleaseReq {
            ino: 5,
            atimes: vec![crate::AtimeOne { ino: 6, how: 1 }],
            ..Default::default()
        });
        assert_eq!(
            changes(&release_atimes),
            Changes::Some {
                inodes: vec![6],
                removed: vec![],
                created: None
            }
        );
        assert_eq!(durability_inodes(&release_atimes), Vec::<u64>::new());
    }

    #[test]
    fn the_status_table() {
        let down = Status::unavailable("down");
        assert_eq!(next(Call::Meta, &down), Next::Retry);
        assert_eq!(next(Call::ChunkRead, &down), Next::NextReplica);
        assert_eq!(next(Call::ChunkWrite, &down), Next::Realloc);
        let bad = Status::invalid_argument("range");
        assert_eq!(next(Call::Meta, &bad), Next::Fail(Errno::EIO));
        assert_eq!(next(Call::ChunkRead, &bad), Next::Fail(Errno::EINVAL));
        assert_eq!(next(Call::ChunkWrite, &bad), Next::Fail(Errno::EINVAL));
        let crc = Status::data_loss("crc");
        assert_eq!(next(Call::ChunkRead, &crc), Next::NextReplica);
        assert_eq!(next(Call::ChunkWrite, &crc), Next::Fail(Errno::EIO));
        let stale = Status::failed_precondition("version");
        assert_eq!(next(Call::ChunkRead, &stale), Next::NextReplica);
        assert_eq!(next(Call::ChunkWrite, &stale), Next::Realloc);
        assert_eq!(status_errno(&stale), Errno::ESTALE);
        let full = Status::resource_exhausted("full");
        assert_eq!(next(Call::ChunkWrite, &full), Next::Fail(Errno::ENOSPC));
        assert_eq!(
            next(Call::ChunkRead, &Status::internal("x")),
            Next::NextReplica
        );
    }
}
