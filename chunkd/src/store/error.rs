//! The one error type of the chunk store. Each variant corresponds to exactly
//! one answer on the wire (see `service::status_of`), so callers never have to
//! inspect io errors themselves.

use std::path::PathBuf;

use super::format::FormatError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {id:016x}: no replica here")]
    NotFound { id: u64 },
    #[error("chunk {id:016x}: stale version {got} (replica is at {stored})")]
    StaleVersion { id: u64, stored: u64, got: u64 },
    #[error("chunk {id:016x}: stale lease epoch {got} (seen {seen})")]
    StaleEpoch { id: u64, seen: u64, got: u64 },
    #[error("chunk {id:016x}: checksum mismatch in block {block}")]
    Corrupt { id: u64, block: u64 },
    #[error("chunk {id:016x}: bad header in {}: {reason}", path.display())]
    BadHeader {
        id: u64,
        path: PathBuf,
        reason: FormatError,
    },
    #[error("chunk {id:016x}: replica was quarantined as corrupt at version {version}; a write needs a newer version")]
    Quarantined { id: u64, version: u64 },
    #[error("chunk {id:016x}: range {offset}+{len} is outside the chunk (limit {limit})")]
    OutOfRange {
        id: u64,
        offset: u64,
        len: u64,
        limit: u64,
    },
    #[error("chunk {id:016x}: no space: {detail}")]
    NoSpace { id: u64, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// An io error with what was being done; ENOSPC and EDQUOT become `NoSpace`
    /// so a full disk always reads as RESOURCE_EXHAUSTED.
    pub fn io(id: u64, context: impl Into<String>, source: std::io::Error) -> StoreError {
        let context = context.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace {
                id,
                detail: format!("{context}: {source}"),
            },
            _ => StoreError::Io { context, source },
        }
    }

    /// True when the replica itself is damaged (checksum or header): the cases
    /// reported to the MDS as corrupt.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. } | StoreError::BadHeader { .. }
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
