//! The MDS write-ahead log: every mutation is framed, appended and fsync'd
//! here before it is applied or acknowledged. `codec` is the byte format,
//! `log` the segment files; the group commit lives in `crate::committer`.

pub mod codec;
pub mod log;

pub use log::{LogWriter, WalError};
