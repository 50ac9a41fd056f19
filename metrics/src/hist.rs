//! A histogram of relaxed atomics (prometheus-client's own takes a lock on
//! every observation). Values are integers in a raw unit (nanoseconds,
//! entries) scaled to the base unit when encoded.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::{AtomicU64, Ordering};

/// Latency buckets in nanoseconds: 50 µs to 10 s.
pub const LATENCY_BUCKETS_NS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Count buckets (batch sizes): 1 to 4096.
pub const SIZE_BUCKETS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

#[derive(Debug)]
pub struct Hist {
    bounds: &'static [u64],
    /// Per bucket (not cumulative); the last is +Inf.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    /// Multiplies raw values into the base unit (1e-9 for nanoseconds).
    scale: f64,
}

impl Hist {
    pub fn new(bounds: &'static [u64], scale: f64) -> Hist {
        Hist {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }
    }

    /// A latency histogram in seconds.
    pub fn latency() -> Hist {
        Hist::new(LATENCY_BUCKETS_NS, 1e-9)
    }

    /// A histogram of counts (batch sizes).
    pub fn sizes() -> Hist {
        Hist::new(SIZE_BUCKETS, 1.0)
    }

    #[inline]
    pub fn observe(&self, raw: u64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| raw <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(raw, Ordering::Relaxed);
    }

    /// Observes the time since `t` (nothing while metrics are off).
    #[inline]
    pub fn since(&self, t: crate::Timer) {
        if let Some(ns) = t.elapsed_ns() {
            self.observe(ns);
        }
    }

    /// The sum of the raw values observed.
    pub fn sum_raw(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// (sum in base units, count, per-bucket counts with f64 bounds).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .map(|&b| b as f64 * self.scale)
            .chain(std::iter::once(f64::MAX))
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        // Bucket counts and the sum are read apart: the count is their
        // total, so _count always equals the +Inf bucket.
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.sum.load(Ordering::Relaxed) as f64 * self.scale;
        if let Some(last) = buckets.last_mut() {
            last.0 = f64::MAX;
        }
        (sum, count, buckets)
    }
}

impl TypedMetric for Hist {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Hist {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl EncodeMetric for &'static Hist {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        (**self).encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = Hist::new(&[10, 100], 1.0);
        for v in [0, 10, 11, 100, 101, 5000] {
            h.observe(v);
        }
        let (sum, count, b) = h.snapshot();
        assert_eq!(count, 6);
        assert_eq!(sum, 5222.0);
        assert_eq!(b, vec![(10.0, 2), (100.0, 2), (f64::MAX, 2)]);
    }
}
