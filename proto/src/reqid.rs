//! Request ids: one id follows an operation from weftfs (or the gateway, or
//! the CLI) through the MDS to the chunk daemons, so one slow or failed
//! operation can be found in every process's log.
//!
//! The id is carried in a task-local ([`scope`]) on the calling side; every
//! channel made by [`net`](crate::net) copies it into the
//! `x-weft-request-id` header of each call. Every server's
//! [`gate`](crate::gate) reads the header (or makes a fresh id for a call
//! that came without one, a heartbeat say), runs the handler in a `rpc` span
//! carrying it and in the same task-local scope, so calls the handler makes
//! (the MDS to a chunk daemon, a daemon down the write pipeline) carry it on.
//! Calls slower than `WEFT_SLOW_RPC_MS` (default 1000; 0 logs every call)
//! are logged with the id and their time.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

/// The gRPC metadata key that carries the id (16 lowercase hex digits).
pub const HEADER: &str = "x-weft-request-id";

tokio::task_local! {
    static CURRENT: u64;
}

/// A new id, unique across the cluster for practical purposes: the process id
/// and start time fill the high bits, a counter the low ones.
pub fn new_id() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let base = *BASE.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // splitmix64 of (pid, start time): distinct processes land far apart.
        let mut z = nanos ^ (u64::from(std::process::id()) << 32);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) & !0xff_ffff
    });
    base.wrapping_add(NEXT.fetch_add(1, Relaxed))
}

/// The id of the operation this task is working for, if any.
pub fn current() -> Option<u64> {
    CURRENT.try_with(|id| *id).ok()
}

/// Runs `f` as part of operation `id`: every call it makes carries the id.
pub async fn scope<F: Future>(id: u64, f: F) -> F::Output {
    CURRENT.scope(id, f).await
}

/// `f`, still part of this task's operation (if any) when spawned onto
/// another task, and in the current tracing span: for work an operation hands
/// to a task of its own.
pub fn carry<F: Future>(f: F) -> impl Future<Output = F::Output> {
    use tracing::Instrument;
    let id = current();
    async move {
        match id {
            Some(id) => scope(id, f).await,
            None => f.await,
        }
    }
    .in_current_span()
}

/// The id as it appears in headers and logs.
pub fn format(id: u64) -> String {
    Id(id).to_string()
}

/// Displays an id as [`format`] does, without allocating (for log fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Id(pub u64);

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The id in a header value; None if malformed (the server then makes one).
pub fn parse(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Calls (and weftfs operations) that take at least this long are logged
/// with their request id: `WEFT_SLOW_RPC_MS`, default 1000 ms.
pub fn slow_threshold() -> Duration {
    static T: OnceLock<Duration> = OnceLock::new();
    *T.get_or_init(|| {
        let ms = std::env::var("WEFT_SLOW_RPC_MS")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1000);
        Duration::from_millis(ms)
    })
}

/// Runs `f`, and logs `what took ms=…` (in the current span, with its id)
/// when it took at least [`slow_threshold`].
pub async fn log_if_slow<F: Future>(what: &'static str, f: F) -> F::Output {
    let start = std::time::Instant::now();
    let out = f.await;
    let took = start.elapsed();
    if took >= slow_threshold() {
        tracing::info!(ms = took.as_millis() as u64, "{what} took");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_round_trip() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert_eq!(parse(&format(a)), Some(a));
        assert_eq!(format(1).len(), 16);
        assert_eq!(parse(""), None);
        assert_eq!(parse("xyz"), None);
        assert_eq!(parse("00000000000000001"), None);
    }

    #[tokio::test]
    async fn the_scope_is_seen_inside_and_not_outside() {
        assert_eq!(current(), None);
        let seen = scope(42, async { current() }).await;
        assert_eq!(seen, Some(42));
        assert_eq!(current(), None);
    }
}
