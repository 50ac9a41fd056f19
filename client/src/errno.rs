//! The one place where failures become the errno the kernel sees.
//!
//! Three sources of failure exist: the MDS's own answer (`MetaReply.errno`, a
//! Linux errno passed through unchanged), transport failures on the MDS channel
//! (retried until `mds_timeout`, then EIO), and chunk daemon statuses. What a
//! gRPC status means (retry, try another replica, re-allocate, or which errno)
//! is decided in one table, `weft_proto::contract::next`.
//!
//! Invariant: nothing here ever produces errno 0 or a negative errno for the
//! kernel; anything unrecognised becomes EIO.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
