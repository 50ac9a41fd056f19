//! Prometheus metrics shared by every weft daemon: the switch that turns
//! recording on (only a process given an HTTP address records anything),
//! lock-free histograms and per-kind operation sets, errno counters, and the
//! HTTP server that serves `/metrics` (plus whatever pages a daemon adds).
//!
//! Hot-path cost: a relaxed load of the switch; when on, one `Instant::now()`
//! per timed operation and a few relaxed atomic adds. No locks.

mod hist;
mod http;
mod ops;

pub use hist::{Hist, LATENCY_BUCKETS_NS, SIZE_BUCKETS};
pub use http::{serve, Refresh};
pub use ops::{errno_name, ErrnoCounts, OpGuard, OpSet};
pub use prometheus_client;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::registry::Registry;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);

/// Starts recording (called once a daemon serves `/metrics`).
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Whether metrics are being recorded in this process.
#[inline]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// When a timed operation began; `None` (and no clock read) while off.
#[derive(Clone, Copy, Debug)]
pub struct Timer(Option<Instant>);

impl Timer {
    #[inline]
    pub fn start() -> Timer {
        Timer(if on() { Some(Instant::now()) } else { None })
    }

    /// Nanoseconds since the start, if timing.
    #[inline]
    pub fn elapsed_ns(&self) -> Option<u64> {
        self.0.map(|t| t.elapsed().as_nanos() as u64)
    }
}

/// Adds `v` to a counter while recording.
#[inline]
pub fn add(c: &Counter, v: u64) {
    if on() {
        c.inc_by(v);
    }
}

/// Declares an enum of operation kinds with their label values, for `OpSet`.
#[macro_export]
macro_rules! op_kinds {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($variant:ident = $label:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name { $($variant),+ }
        impl $name {
            pub const LABELS: &'static [&'static str] = &[$($label),+];
            #[inline]
            pub fn index(self) -> usize { self as usize }
        }
    };
}
