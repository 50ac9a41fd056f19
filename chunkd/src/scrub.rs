//! The scrubber: every `--scrub-interval` seconds, a pass that reads every
//! replica block by block at a bounded rate and checks the crcs, so silent
//! disk corruption is found before a client needs the data.
//!
//! Invariants: at most `SCRUB_BATCH_BLOCKS` blocks are read under a chunk's
//! lock at a time (clients are never stalled behind a whole chunk); the
//! average read rate over a pass stays at or below the configured rate; a
//! replica that fails is quarantined by the store (renamed `.corrupt`, dropped
//! from the index, reported removed in the next beat) and reported to the MDS
//! with ReportCorrupt.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, Instant, MissedTickBehavior};

use crate::heartbeat::CorruptReporter;
use crate::store::{ScrubStep, Store};

/// Blocks (64 KiB each) verified per store call: 1 MiB.
pub const SCRUB_BATCH_BLOCKS: u64 = 16;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScrubStats {
    /// Replicas verified completely.
    pub chunks: u64,
    /// Data bytes read.
    pub bytes: u64,
    /// Replicas found corrupt (and quarantined).
    pub corrupt: u64,
}

/// Runs a pass every `interval` (the first one `interval` after start).
pub async fn run(
    store: Arc<Store>,
    reporter: CorruptReporter,
    interval: Duration,
    bytes_per_sec: u64,
) {
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let stats = pass(&store, &reporter, bytes_per_sec).await;
        tracing::info!(
            chunks = stats.chunks,
            bytes = stats.bytes,
            corrupt = stats.corrupt,
            secs = started.elapsed().as_secs_f64(),
            "scrub pass finished"
        );
    }
}

/// One pass over every replica held when it starts.
pub async fn pass(
    store: &Arc<Store>,
    reporter: &CorruptReporter,
    bytes_per_sec: u64,
) -> ScrubStats {
    let started = Instant::now();
    let mut stats = ScrubStats::default();
    let ids = store.ids();
    let m = &crate::metrics::M;
    m.scrub_pass_total.store(ids.len() as u64, Relaxed);
    m.scrub_pass_done.store(0, Relaxed);
    for id in ids {
        m.scrub_pass_done.fetch_add(1, Relaxed);
        let mut next = 0;
        loop {
            let s = store.clone();
            let step =
                tokio::task::spawn_blocking(move || s.scrub_step(id, next, SCRUB_BATCH_BLOCKS))
                    .await;
            match step {
                Ok(Ok(ScrubStep::Next { next: n, bytes })) => {
                    next = n;
                    stats.bytes += bytes;
                    weft_metrics::add(&m.scrub_bytes, bytes);
                    pace(started, stats.bytes, bytes_per_sec).await;
                }
                Ok(Ok(ScrubStep::Done)) => {
                    stats.chunks += 1;
                    weft_metrics::add(&m.scrub_chunks, 1);
                    break;
                }
                Ok(Ok(ScrubStep::Gone)) => break,
                Ok(Err(e)) if e.is_corruption() => {
                    tracing::error!(error = %e, "scrub found a corrupt replica");
                    stats.corrupt += 1;
                    weft_metrics::add(&m.scrub_corrupt, 1);
                    reporter.report(id);
                    break;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "scrub could not check a replica");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "scrub task failed");
                    break;
                }
            }
        }
    }
    weft_metrics::add(&m.scrub_passes, 1);
    stats
}

/// Sleeps until `bytes` read since `started` is within the rate.
async fn pace(started: Instant, bytes: u64, bytes_per_sec: u64) {
    if bytes_per_sec == 0 {
        return;
    }
    let due = Duration::from_secs_f64(bytes as f64 / bytes_per_sec as f64);
    let elapsed = started.elapsed();
    if due > elapsed {
        sleep(due - elapsed).await;
    }
}
