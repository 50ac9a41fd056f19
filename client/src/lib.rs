//! weft-client: everything a weft client does, for every front end (weftfs,
//! the FUSE adapter in fuse-client/, and weft-s3, the S3 gateway in s3/).
//!
//! Layout:
//! - `client.rs`: `Weft`, the session's state and the metadata operations
//!   (lookup, create, mkdir, unlink, rename, setattr, readdir, xattrs), as
//!   plain async functions returning `Result<_, Errno>`; `ClientOpts`.
//! - `read_path.rs`, `write_path.rs`, `writeback.rs`, `fallocate.rs`, `copy.rs`,
//!   `seek.rs`: data operations (parallel reads, buffered and pipelined
//!   writes, flush, fsync, truncate, holes, server-side copy).
//! - `mds_client.rs`: the MDS session (exactly-once retries, keepalive,
//!   following the MDS leader); `log_track.rs` orders its replies.
//! - `chunk_io.rs`: calls to chunk daemons (leases, pipelines, failover).
//! - `segments.rs`: packed small files (needles appended to this mount's
//!   segments).
//! - `open_files.rs`: open files and their dirty state; `attr_fold.rs`:
//!   which setattrs ride on the commit of buffered data; `releases.rs`:
//!   releases of opens sent to the MDS in batches; `locks.rs`: advisory
//!   locks and their keepalive; `atime.rs`: the atime policy.
//! - `cache/`: attributes, names, chunk locations, file data (memory and
//!   disk), the kernel's TTLs and the MDS's coherence stream.
//! - `metrics.rs`, `errno.rs`, `convert.rs`, `caller.rs`: counters, errno
//!   maps, attribute conversion and callers' groups.

pub mod atime;
pub mod attr_fold;
pub mod cache;
pub mod caller;
pub mod chunk_io;
pub mod client;
pub mod convert;
pub mod copy;
pub mod errno;
pub mod fallocate;
pub mod locks;
pub mod log_track;
pub mod mds_client;
pub mod metrics;
pub mod open_files;
pub mod read_path;
pub mod releases;
pub mod seek;
pub mod segments;
pub mod write_path;
pub mod writeback;

pub use client::{ClientOpts, SetAttrArgs, Weft};
pub use fuser::{FileAttr, FileType};
pub use weft_proto::{Caller, Errno};
