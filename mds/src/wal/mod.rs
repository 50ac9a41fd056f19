//! The MDS write-ahead log: every mutation is framed and written here before
//! it is acknowledged, and fdatasync'd by the sync thread (`durable`) right
//! after. `codec` is the byte format, `log` the segment files; the group
//! commit lives in `crate::committer`.

pub mod codec;
pub mod durable;
pub mod log;

pub use durable::Durability;
pub use log::{LogWriter, WalError};
