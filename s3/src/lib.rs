//! weft-s3: an S3 gateway over a weft cluster, on the s3s crate and the
//! client library weft-client (the same one weftfs mounts with), so S3 and
//! FUSE mounts share one namespace: a file closed on a mount is an object at
//! once, and an object PUT is a file at once.
//!
//! Layout:
//! - `config.rs`: the command line, the access keys (`Keys`, s3s's auth);
//! - `store.rs`: the namespace as objects (buckets, keys as paths, atomic
//!   writes through a hidden temp directory, streaming reads, xattrs);
//! - `checksum.rs`: Content-MD5 and S3's additional checksums, checked
//!   and stored; `tagging.rs`: object tags;
//! - `keys.rs`: which keys are paths, and S3's errors for those that are not;
//! - `listing.rs`: ListObjects's walk in S3's order;
//! - `service.rs`: the S3 operations; `multipart.rs`: multipart uploads;
//! - `server.rs`: the HTTP listener (`serve`).

pub mod checksum;
pub mod config;
pub mod keys;
pub mod listing;
pub mod multipart;
pub mod server;
pub mod service;
pub mod store;
pub mod tagging;
