//! weftfs's Prometheus metrics (`-o http=ADDR`): FUSE requests by kind,
//! MDS calls by kind, chunk I/O by kind (count and latency each), bytes read
//! and written through the mount, errors by errno, cache hits and misses
//! (metadata, data in memory, data on disk), and dirty write-back bytes.

use crate::client::Weft;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::{Arc, LazyLock};
use weft_metrics::{op_kinds, prometheus_client, Counter, ErrnoCounts, OpSet, Registry};

op_kinds!(
    pub enum FuseOp {
        Lookup = "lookup",
        Getattr = "getattr",
        Setattr = "setattr",
        Readlink = "readlink",
        Mknod = "mknod",
        Mkdir = "mkdir",
        Unlink = "unlink",
        Rmdir = "rmdir",
        Symlink = "symlink",
        Rename = "rename",
        Link = "link",
        Open = "open",
        Create = "create",
        Read = "read",
        Write = "write",
        Flush = "flush",
        Release = "release",
        Fsync = "fsync",
        Opendir = "opendir",
        Readdir = "readdir",
        Readdirplus = "readdirplus",
        Releasedir = "releasedir",
        Lseek = "lseek",
        Fsyncdir = "fsyncdir",
        Statfs = "statfs",
        Setxattr = "setxattr",
        Getxattr = "getxattr",
        Listxattr = "listxattr",
        Removexattr = "removexattr",
        Access = "access",
        Ioctl = "ioctl",
        Fallocate = "fallocate",
        CopyFileRange = "copy_file_range",
        Getlk = "getlk",
        Setlk = "setlk",
    }
);

op_kinds!(
    pub enum ChunkOp {
        Read = "read",
        Write = "write",
        Sync = "sync",
        Truncate = "truncate",
        Allocate = "allocate",
        DataExtents = "data_extents",
        Copy = "copy",
    }
);

op_kinds!(
    pub enum Cache {
        Meta = "meta",
        Data = "data",
        Disk = "disk",
    }
);

pub struct ClientMetrics {
    pub fuse: OpSet,
    pub mds: OpSet,
    pub chunk: OpSet,
    pub errors: ErrnoCounts,
    pub read_bytes: Counter,
    pub written_bytes: Counter,
    pub hits: [Counter; 3],
    pub misses: [Counter; 3],
}

pub static M: LazyLock<ClientMetrics> = LazyLock::new(|| ClientMetrics {
    fuse: OpSet::new(
        "weft_client_fuse_requests",
        "weft_client_fuse_request_duration_seconds",
        "FUSE requests answered",
        "op",
        FuseOp::LABELS,
    ),
    mds: OpSet::new(
        "weft_client_mds_requests",
        "weft_client_mds_request_duration_seconds",
        "metadata calls to the MDS (with retries)",
        "op",
        weft_proto::OP_KINDS,
    ),
    chunk: OpSet::new(
        "weft_client_chunk_requests",
        "weft_client_chunk_request_duration_seconds",
        "chunk daemon calls",
        "op",
        ChunkOp::LABELS,
    ),
    errors: ErrnoCounts::new(
        "weft_client_fuse_errors",
        "FUSE requests answered with an error, by errno",
    ),
    read_bytes: Counter::default(),
    written_bytes: Counter::default(),
    hits: Default::default(),
    misses: Default::default(),
});

/// Counts a cache lookup.
#[inline]
pub fn cache(c: Cache, hit: bool) {
    let set = if hit { &M.hits } else { &M.misses };
    weft_metrics::add(&set[c.index()], 1);
}

struct MountCollector(Arc<Weft>);

impl std::fmt::Debug for MountCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MountCollector")
    }
}

impl Collector for MountCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let dirty = self.0.files.dirty_total() as i64;
        ConstGauge::new(dirty).encode(e.encode_descriptor(
            "weft_client_dirty_bytes",
            "written bytes buffered in weftfs, not yet sent to the chunk daemons",
            None,
            MetricType::Gauge,
        )?)?;
        for (name, help, set) in [
            (
                "weft_client_cache_hits",
                "reads and lookups answered from a cache, by cache",
                &M.hits,
            ),
            (
                "weft_client_cache_misses",
                "reads and lookups a cache could not answer, by cache",
                &M.misses,
            ),
        ] {
            let mut fam = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (label, c) in Cache::LABELS.iter().zip(set.iter()) {
                c.encode(fam.encode_family(&[("cache", *label)])?)?;
            }
        }
        Ok(())
    }
}

/// The registry served at /metrics.
pub fn registry(w: Arc<Weft>) -> Registry {
    let m: &'static ClientMetrics = &M;
    let mut r = Registry::default();
    r.register_collector(Box::new(&m.fuse));
    r.register_collector(Box::new(&m.mds));
    r.register_collector(Box::new(&m.chunk));
    r.register_collector(Box::new(&m.errors));
    r.register(
        "weft_client_read_bytes",
        "bytes read through the mount",
        m.read_bytes.clone(),
    );
    r.register(
        "weft_client_written_bytes",
        "bytes written through the mount",
        m.written_bytes.clone(),
    );
    r.register_collector(Box::new(MountCollector(w)));
    r
}
