//! The one place where failures become the errno the kernel sees.
//!
//! Three sources of failure exist: the MDS's own answer (`MetaReply.errno`, a
//! Linux errno passed through unchanged), transport failures on the MDS channel
//! (retried until `mds_timeout`, then EIO), and chunk daemon statuses (mapped by
//! `weft_proto::chunk_status_errno`, with some codes meaning "try another
//! replica" on reads or "re-allocate and retry" on writes).
//!
//! Invariant: nothing here ever produces errno 0 or a negative errno for the
//! kernel; anything unrecognised becomes EIO.

use tonic::Code;
use weft_proto::Errno;

/// `MetaReply.errno` (non-zero) as an errno; garbage becomes EIO.
pub fn meta_errno(code: i32) -> Errno {
    if code > 0 && code < 4096 {
        Errno(code)
    } else {
        Errno::EIO
    }
}

/// The fuser form of an errno.
pub fn to_fuse(e: Errno) -> fuser::Errno {
    // Every error reply goes through here.
    crate::metrics::M.errors.inc(e.0);
    fuser::Errno::from_i32(e.0)
}

/// Whether an MDS call failed in transport (the MDS may never have seen it, or
/// its answer was lost) so the same request should be sent again. Codes an MDS
/// would return deliberately for a bad request are not retried.
pub fn mds_status_is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

/// On a read, whether this replica's failure means "try the next one": the
/// replica is corrupt (DATA_LOSS), unreachable, lacks the chunk, or holds a
/// stale version. Anything else (INVALID_ARGUMENT, ...) would fail on every
/// replica alike.
pub fn read_should_try_next_replica(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::DataLoss
            | Code::Unavailable
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
    )
}

/// On a write, whether asking the MDS for a fresh pipeline (AllocChunk) and
/// writing again may succeed: the lease or version went stale, a replica lost
/// the chunk, or a pipeline member is down.
pub fn write_should_realloc(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::FailedPrecondition
            | Code::NotFound
            | Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
    )
}

/// The errno a failed chunk write or sync reports to flush/fsync/close.
pub fn chunk_errno(status: &tonic::Status) -> Errno {
    weft_proto::chunk_status_errno(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn meta_errno_passes_linux_errnos_through() {
        assert_eq!(meta_errno(libc::ENOENT), Errno::ENOENT);
        assert_eq!(meta_errno(libc::ENOTEMPTY), Errno::ENOTEMPTY);
        assert_eq!(meta_errno(libc::EXDEV).0, 18);
        assert_eq!(meta_errno(-5), Errno::EIO);
        assert_eq!(meta_errno(100_000), Errno::EIO);
    }

    #[test]
    fn to_fuse_keeps_the_code() {
        assert_eq!(to_fuse(Errno::ERANGE).code(), libc::ERANGE);
        assert_eq!(to_fuse(Errno::ESTALE).code(), libc::ESTALE);
        assert_eq!(to_fuse(Errno(0)).code(), libc::EIO);
    }

    #[test]
    fn chunk_statuses() {
        assert_eq!(
            chunk_errno(&Status::resource_exhausted("full")),
            Errno::ENOSPC
        );
        assert_eq!(
            chunk_errno(&Status::invalid_argument("range")),
            Errno::EINVAL
        );
        assert_eq!(
            chunk_errno(&Status::failed_precondition("epoch")),
            Errno::ESTALE
        );
        assert_eq!(chunk_errno(&Status::unavailable("down")), Errno::EIO);
        assert_eq!(chunk_errno(&Status::data_loss("crc")), Errno::EIO);
    }

    #[test]
    fn read_failover_codes() {
        for s in [
            Status::data_loss("crc"),
            Status::unavailable("x"),
            Status::not_found("x"),
            Status::failed_precondition("x"),
        ] {
            assert!(read_should_try_next_replica(&s), "{s:?}");
        }
        assert!(!read_should_try_next_replica(&Status::invalid_argument(
            "x"
        )));
        assert!(!read_should_try_next_replica(&Status::resource_exhausted(
            "x"
        )));
    }

    #[test]
    fn write_realloc_codes() {
        assert!(write_should_realloc(&Status::failed_precondition("epoch")));
        assert!(write_should_realloc(&Status::unavailable("downstream")));
        assert!(!write_should_realloc(&Status::resource_exhausted("full")));
        assert!(!write_should_realloc(&Status::invalid_argument("range")));
        assert!(!write_should_realloc(&Status::data_loss("crc")));
    }

    #[test]
    fn mds_transient_codes() {
        assert!(mds_status_is_transient(&Status::unavailable("refused")));
        assert!(mds_status_is_transient(&Status::unknown("h2")));
        assert!(!mds_status_is_transient(&Status::invalid_argument("x")));
        assert!(!mds_status_is_transient(&Status::internal("bug")));
        assert!(!mds_status_is_transient(&Status::unimplemented("x")));
    }
}
