//! The chunk daemon's Prometheus metrics: requests by kind (count and
//! latency), bytes read and written, errors by gRPC code, scrub progress and
//! corruptions — recorded where they happen, in statics — and capacity,
//! used and free bytes and replicas held, read from the store at scrape time.

use crate::store::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use weft_metrics::{op_kinds, prometheus_client, Counter, OpSet, Registry};

op_kinds!(
    pub enum ChunkOp {
        Read = "read",
        Write = "write",
        Sync = "sync",
        Truncate = "truncate",
        DataExtents = "data_extents",
        Allocate = "allocate",
        Copy = "copy",
    }
);

pub struct ChunkdMetrics {
    pub requests: OpSet,
    pub read_bytes: Counter,
    pub written_bytes: Counter,
    /// Bytes a Chunk.Copy's head read from a source replica (its own or a
    /// peer's) instead of receiving them from the client.
    pub copied_bytes: Counter,
    /// Errors by gRPC code, indexed by `tonic::Code as usize` (0..=16).
    pub errors: [Counter; 17],
    pub scrub_bytes: Counter,
    pub scrub_chunks: Counter,
    pub scrub_corrupt: Counter,
    pub scrub_passes: Counter,
    /// Replicas checked in the current pass, and how many it covers.
    pub scrub_pass_done: AtomicU64,
    pub scrub_pass_total: AtomicU64,
}

pub static M: LazyLock<ChunkdMetrics> = LazyLock::new(|| ChunkdMetrics {
    requests: OpSet::new(
        "weft_chunkd_requests",
        "weft_chunkd_request_duration_seconds",
        "chunk requests served (as the head of a pipeline or downstream)",
        "op",
        ChunkOp::LABELS,
    ),
    read_bytes: Counter::default(),
    written_bytes: Counter::default(),
    copied_bytes: Counter::default(),
    errors: Default::default(),
    scrub_bytes: Counter::default(),
    scrub_chunks: Counter::default(),
    scrub_corrupt: Counter::default(),
    scrub_passes: Counter::default(),
    scrub_pass_done: AtomicU64::new(0),
    scrub_pass_total: AtomicU64::new(0),
});

/// Counts a request that failed with `status`.
pub fn error(status: &tonic::Status) {
    if weft_metrics::on() {
        M.errors[(status.code() as usize).min(16)].inc();
    }
}

struct StoreCollector(Arc<Store>);

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCollector")
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v as i64).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for StoreCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        gauge(
            &mut e,
            "weft_chunkd_capacity_bytes",
            "bytes this daemon may use (--capacity, else its disk's size)",
            s.capacity(),
        )?;
        gauge(
            &mut e,
            "weft_chunkd_used_bytes",
            "bytes allocated on disk by replicas",
            s.used(),
        )?;
        gauge(
            &mut e,
            "weft_chunkd_free_bytes",
            "data bytes this daemon can still take",
            s.free_for_data(),
        )?;
        gauge(
            &mut e,
            "weft_chunkd_replicas",
            "replicas held",
            s.len() as u64,
        )?;
        let (done, total) = (
            M.scrub_pass_done.load(Ordering::Relaxed),
            M.scrub_pass_total.load(Ordering::Relaxed),
        );
        gauge(
            &mut e,
            "weft_chunkd_scrub_pass_replicas",
            "replicas the current (or last) scrub pass covers",
            total,
        )?;
        gauge(
            &mut e,
            "weft_chunkd_scrub_pass_replicas_done",
            "replicas the current (or last) scrub pass has checked",
            done,
        )?;
        {
            use weft_proto::gate::{refused, Refusal};
            let mut fam = e.encode_descriptor(
                "weft_chunkd_refused",
                "calls and connections refused, by why (connection, role, capability)",
                None,
                MetricType::Counter,
            )?;
            for k in Refusal::ALL {
                let labels = [("kind", k.as_str())];
                prometheus_client::metrics::counter::ConstCounter::new(refused(k))
                    .encode(fam.encode_family(&labels)?)?;
            }
        }
        let mut fam = e.encode_descriptor(
            "weft_chunkd_request_errors",
            "chunk requests that failed, by gRPC code",
            None,
            MetricType::Counter,
        )?;
        for (i, c) in M.errors.iter().enumerate() {
            let v = c.get();
            if v > 0 {
                let code = format!("{:?}", tonic::Code::from(i as i32));
                let labels = [("code", code.as_str())];
                c.encode(fam.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The registry served at /metrics.
pub fn registry(store: Arc<Store>) -> Registry {
    let m: &'static ChunkdMetrics = &M;
    let mut r = Registry::default();
    r.register_collector(Box::new(&m.requests));
    r.register(
        "weft_chunkd_read_bytes",
        "bytes read from replicas for clients",
        m.read_bytes.clone(),
    );
    r.register(
        "weft_chunkd_written_bytes",
        "bytes written to replicas (client writes, at every replica)",
        m.written_bytes.clone(),
    );
    r.register(
        "weft_chunkd_copied_bytes",
        "bytes server-side copies read from source replicas (as the copy's head)",
        m.copied_bytes.clone(),
    );
    r.register(
        "weft_chunkd_scrub_bytes",
        "bytes checked by the scrubber",
        m.scrub_bytes.clone(),
    );
    r.register(
        "weft_chunkd_scrub_replicas",
        "replicas the scrubber checked whole",
        m.scrub_chunks.clone(),
    );
    r.register(
        "weft_chunkd_scrub_corruptions",
        "corrupt replicas the scrubber found (reported to the MDS, which replaces them)",
        m.scrub_corrupt.clone(),
    );
    r.register(
        "weft_chunkd_scrub_passes",
        "scrub passes finished",
        m.scrub_passes.clone(),
    );
    r.register_collector(Box::new(StoreCollector(store)));
    r
}
