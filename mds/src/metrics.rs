//! The MDS's Prometheus metrics: requests by kind, errors by errno, the log
//! (append and fdatasync latency, batch sizes, bytes), checkpoints — recorded
//! where they happen, in statics — and the cluster's state (daemons,
//! capacity, replication, repair, drain, sessions, locks), read from the
//! same view as `weft status` at scrape time.

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::{Arc, LazyLock};
use weft_metrics::{prometheus_client, Counter, ErrnoCounts, Hist, OpSet, Registry};
use weft_proto::pb;

pub struct MdsMetrics {
    pub requests: OpSet,
    pub errors: ErrnoCounts,
    pub wal_append: Hist,
    pub wal_sync: Hist,
    pub wal_batch: Hist,
    pub wal_bytes: Counter,
    pub checkpoint: Hist,
}

pub static M: LazyLock<MdsMetrics> = LazyLock::new(|| MdsMetrics {
    requests: OpSet::new(
        "weft_mds_requests",
        "weft_mds_request_duration_seconds",
        "metadata requests served",
        "op",
        weft_proto::OP_KINDS,
    ),
    errors: ErrnoCounts::new(
        "weft_mds_request_errors",
        "metadata requests answered with an error, by errno",
    ),
    wal_append: Hist::latency(),
    wal_sync: Hist::latency(),
    wal_batch: Hist::sizes(),
    wal_bytes: Counter::default(),
    checkpoint: Hist::latency(),
});

/// Requests served by kind, for `weft stats` (kinds never asked for left out).
pub fn op_stats() -> Vec<pb::OpStat> {
    weft_proto::OP_KINDS
        .iter()
        .enumerate()
        .map(|(i, op)| pb::OpStat {
            op: op.to_string(),
            count: M.requests.count(i),
            latency_ns: M.requests.hist(i).sum_raw(),
        })
        .filter(|s| s.count > 0)
        .collect()
}

/// The cluster as `weft status` shows it, plus what only the MDS counts.
#[derive(Default, Clone)]
pub struct View {
    pub status: pb::StatusReply,
    pub sessions: u64,
    pub locks: u64,
    /// This MDS's node id, to find its row in `status.mds`.
    pub node_id: u64,
    /// Each mount's session and how long ago it was heard from.
    pub session_list: Vec<(u64, std::time::Duration)>,
}

/// Encodes the last `View` taken (refreshed before each scrape).
#[derive(Debug, Default)]
struct ClusterCollector(Arc<Mutex<Option<ViewDbg>>>);

#[derive(Clone)]
struct ViewDbg(View);

impl std::fmt::Debug for ViewDbg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("View")
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

/// Refusals (logged with who and why) by kind: failed TLS handshakes, a role
/// that may not call, export rules, chunk capabilities.
pub fn refused_family(e: &mut DescriptorEncoder, name: &str) -> Result<(), std::fmt::Error> {
    use weft_proto::gate::{refused, Refusal};
    let mut fam = e.encode_descriptor(
        name,
        "calls and connections refused, by why (connection, role, export, capability)",
        None,
        MetricType::Counter,
    )?;
    for k in Refusal::ALL {
        let labels = [("kind", k.as_str())];
        ConstCounter::new(refused(k)).encode(fam.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ClusterCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(ViewDbg(v)) = self.0.lock().clone() else {
            return Ok(());
        };
        let s = &v.status;
        let i = |x: u64| x as i64;
        gauge(&mut e, "weft_mds_up", "1 while this MDS serves", 1)?;
        refused_family(&mut e, "weft_mds_refused")?;
        gauge(&mut e, "weft_mds_files", "regular files", i(s.files))?;
        gauge(
            &mut e,
            "weft_mds_directories",
            "directories",
            i(s.directories),
        )?;
        gauge(
            &mut e,
            "weft_mds_chunks",
            "chunks referenced by files",
            i(s.chunks),
        )?;
        gauge(
            &mut e,
            "weft_mds_replicas_target",
            "copies kept of each chunk",
            s.replicas as i64,
        )?;
        gauge(
            &mut e,
            "weft_mds_chunks_under_replicated",
            "chunks with fewer good replicas than the target (but at least one)",
            i(s.under_replicated),
        )?;
        gauge(
            &mut e,
            "weft_mds_chunks_missing",
            "chunks without any good replica",
            i(s.missing),
        )?;
        gauge(
            &mut e,
            "weft_mds_repair_queue_chunks",
            "chunks waiting for a re-replication copy",
            i(s.under_replicated),
        )?;
        gauge(
            &mut e,
            "weft_mds_repair_copies_in_flight",
            "re-replication copies running now",
            i(s.copies_in_flight),
        )?;
        counter(
            &mut e,
            "weft_mds_repair_copies",
            "re-replication, drain and rebalance copies finished since start",
            s.copies_done,
        )?;
        counter(
            &mut e,
            "weft_mds_repair_copied_bytes",
            "bytes copied by re-replication, drain and rebalance since start",
            s.copied_bytes,
        )?;
        gauge(
            &mut e,
            "weft_mds_rebalancing",
            "1 while `weft rebalance` evens out usage",
            s.rebalancing as i64,
        )?;
        let draining: u64 = s
            .chunkds
            .iter()
            .filter(|d| d.draining)
            .map(|d| d.chunks)
            .sum();
        gauge(
            &mut e,
            "weft_mds_drain_replicas_remaining",
            "replicas still on draining daemons",
            i(draining),
        )?;
        gauge(
            &mut e,
            "weft_mds_log_appended_index",
            "last entry written to the log",
            i(s.log_appended_index),
        )?;
        gauge(
            &mut e,
            "weft_mds_log_durable_index",
            "last log entry on disk",
            i(s.log_durable_index),
        )?;
        gauge(
            &mut e,
            "weft_mds_sessions",
            "client sessions heard from (mounts)",
            i(v.sessions),
        )?;
        gauge(&mut e, "weft_mds_locks", "advisory locks held", i(v.locks))?;
        let alive = s.chunkds.iter().filter(|d| d.alive).count() as i64;
        gauge(
            &mut e,
            "weft_mds_chunkds_alive",
            "chunk daemons alive",
            alive,
        )?;
        gauge(
            &mut e,
            "weft_mds_chunkds_dead",
            "chunk daemons registered but silent past --dead-after-ms",
            s.chunkds.len() as i64 - alive,
        )?;
        // The MDS group as this node sees it: commit lag is
        // last_log_index - applied; no leader means metadata stalls.
        if let Some(me) = s.mds.iter().find(|n| n.id == v.node_id) {
            gauge(
                &mut e,
                "weft_mds_term",
                "this MDS's current term",
                i(me.term),
            )?;
            gauge(
                &mut e,
                "weft_mds_is_leader",
                "1 while this MDS is the group's leader",
                (me.role == "leader") as i64,
            )?;
            gauge(
                &mut e,
                "weft_mds_last_log_index",
                "last entry in this MDS's log",
                i(me.last_log_index),
            )?;
            gauge(
                &mut e,
                "weft_mds_applied_index",
                "last log entry this MDS applied to its namespace",
                i(me.applied),
            )?;
        }
        gauge(
            &mut e,
            "weft_mds_has_leader",
            "1 while this MDS knows a leader of its group",
            (s.leader != 0) as i64,
        )?;
        gauge(
            &mut e,
            "weft_mds_leader_node",
            "node id of the leader this MDS follows (0: none)",
            i(s.leader),
        )?;
        type Get = fn(&pb::ChunkdStatus) -> i64;
        let per_daemon: [(&str, &str, Get); 6] = [
            (
                "weft_mds_chunkd_alive",
                "1 if the chunk daemon is alive",
                |d| d.alive as i64,
            ),
            (
                "weft_mds_chunkd_draining",
                "1 while the chunk daemon is drained",
                |d| d.draining as i64,
            ),
            (
                "weft_mds_chunkd_capacity_bytes",
                "the chunk daemon's capacity",
                |d| d.capacity as i64,
            ),
            (
                "weft_mds_chunkd_used_bytes",
                "bytes the chunk daemon's replicas use",
                |d| d.used as i64,
            ),
            (
                "weft_mds_chunkd_free_bytes",
                "bytes the chunk daemon can still take",
                |d| d.free as i64,
            ),
            (
                "weft_mds_chunkd_replicas",
                "replicas the chunk daemon holds",
                |d| d.chunks as i64,
            ),
        ];
        for (name, help, get) in per_daemon {
            let mut fam = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for d in &s.chunkds {
                let id = d.id.to_string();
                let labels = [
                    ("chunkd", id.as_str()),
                    ("addr", d.addr.as_str()),
                    ("rack", d.rack.as_str()),
                ];
                ConstGauge::new(get(d)).encode(fam.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The registry served at /metrics and the refresh that runs before each
/// scrape, which takes a `View` from `take_view`.
pub fn registry<F, Fut>(take_view: F) -> (Registry, weft_metrics::Refresh)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = View> + Send + 'static,
{
    let m: &'static MdsMetrics = &M;
    let mut r = Registry::default();
    r.register_collector(Box::new(&m.requests));
    r.register_collector(Box::new(&m.errors));
    r.register(
        "weft_mds_wal_append_duration_seconds",
        "time to write one batch to the log (write(2) into the page cache)",
        &m.wal_append,
    );
    r.register(
        "weft_mds_wal_fdatasync_duration_seconds",
        "time of one log fdatasync",
        &m.wal_sync,
    );
    r.register(
        "weft_mds_wal_batch_entries",
        "log entries written per batch",
        &m.wal_batch,
    );
    r.register(
        "weft_mds_wal_written_bytes",
        "bytes written to the log",
        m.wal_bytes.clone(),
    );
    r.register(
        "weft_mds_checkpoint_duration_seconds",
        "time to write a checkpoint (snapshot, fsyncs, dropping covered log)",
        &m.checkpoint,
    );
    let view: Arc<Mutex<Option<ViewDbg>>> = Default::default();
    r.register_collector(Box::new(ClusterCollector(view.clone())));
    let refresh: weft_metrics::Refresh = Arc::new(move || {
        let (next, view) = (take_view(), view.clone());
        Box::pin(async move {
            let v = next.await;
            *view.lock() = Some(ViewDbg(v));
        })
    });
    (r, refresh)
}
