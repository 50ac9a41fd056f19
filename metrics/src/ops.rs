//! Families encoded at scrape time from fixed arrays of atomics: operations
//! by kind (count and latency; the count is the histogram's, so an
//! operation costs one clock read and two atomic adds) and errors by errno.

use crate::hist::Hist;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering};

/// Count and latency of each kind of operation, labelled `label=kind`.
#[derive(Debug)]
pub struct OpSet {
    /// Counter family name (encoded with `_total`).
    counter: &'static str,
    /// Histogram family name (ends in `_seconds`).
    histogram: &'static str,
    what: &'static str,
    label: &'static str,
    kinds: &'static [&'static str],
    hists: Box<[Hist]>,
}

impl OpSet {
    pub fn new(
        counter: &'static str,
        histogram: &'static str,
        what: &'static str,
        label: &'static str,
        kinds: &'static [&'static str],
    ) -> OpSet {
        OpSet {
            counter,
            histogram,
            what,
            label,
            kinds,
            hists: kinds.iter().map(|_| Hist::latency()).collect(),
        }
    }

    /// Records one operation of kind `i` that began at `t`.
    #[inline]
    pub fn done(&self, i: usize, t: crate::Timer) {
        self.hists[i].since(t);
    }

    /// Times an operation of kind `i` until the guard drops (any return path).
    #[inline]
    pub fn guard(&'static self, i: usize) -> OpGuard {
        OpGuard {
            set: self,
            kind: i,
            timer: crate::Timer::start(),
        }
    }

    /// Operations of kind `i` so far.
    pub fn count(&self, i: usize) -> u64 {
        self.hists[i].count()
    }

    pub fn hist(&self, i: usize) -> &Hist {
        &self.hists[i]
    }
}

/// Records its operation when dropped.
pub struct OpGuard {
    set: &'static OpSet,
    kind: usize,
    timer: crate::Timer,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        self.set.done(self.kind, self.timer);
    }
}

impl Collector for OpSet {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let help = format!("{} by {}", self.what, self.label);
        {
            let mut fam =
                encoder.encode_descriptor(self.counter, &help, None, MetricType::Counter)?;
            for (kind, h) in self.kinds.iter().zip(self.hists.iter()) {
                let labels = [(self.label, *kind)];
                ConstCounter::new(h.count()).encode(fam.encode_family(&labels)?)?;
            }
        }
        let help = format!("latency of {} by {}", self.what, self.label);
        let mut fam =
            encoder.encode_descriptor(self.histogram, &help, None, MetricType::Histogram)?;
        for (kind, h) in self.kinds.iter().zip(self.hists.iter()) {
            let labels = [(self.label, *kind)];
            let (sum, count, buckets) = h.snapshot();
            fam.encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

const MAX_ERRNO: usize = 134;

/// Errors by errno, labelled `errno="ENOENT"`; only errnos seen are shown.
#[derive(Debug)]
pub struct ErrnoCounts {
    name: &'static str,
    help: &'static str,
    counts: Box<[AtomicU64]>,
}

impl ErrnoCounts {
    pub fn new(name: &'static str, help: &'static str) -> ErrnoCounts {
        ErrnoCounts {
            name,
            help,
            counts: (0..=MAX_ERRNO).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    #[inline]
    pub fn inc(&self, errno: i32) {
        if crate::on() {
            let i = (errno.max(0) as usize).min(MAX_ERRNO);
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// "ENOENT" for 2; "E123" for a number without a name here.
pub fn errno_name(errno: i32) -> String {
    let name = format!("{:?}", nix::errno::Errno::from_raw(errno));
    if name.starts_with('E') && name.chars().all(|c| c.is_ascii_alphanumeric()) {
        name
    } else {
        format!("E{errno}")
    }
}

impl Collector for ErrnoCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut fam = encoder.encode_descriptor(self.name, self.help, None, MetricType::Counter)?;
        for (errno, c) in self.counts.iter().enumerate() {
            let v = c.load(Ordering::Relaxed);
            if v > 0 {
                let name = errno_name(errno as i32);
                let labels = [("errno", name.as_str())];
                ConstCounter::new(v).encode(fam.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

// Daemons keep their sets in statics and register references to them.
impl Collector for &'static OpSet {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        (**self).encode(encoder)
    }
}

impl Collector for &'static ErrnoCounts {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        (**self).encode(encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(28), "ENOSPC");
        assert_eq!(errno_name(5), "EIO");
    }
}
