//! metrics-cost: what recording one operation costs on the hot path, with
//! metrics off (no --http: a flag check) and on (a clock read and two
//! relaxed atomic adds), on 1 thread and on N threads hitting the same
//! operation kind (the worst case: one cache line bounced between cores).
//!
//!     target/release/metrics-cost [ITERATIONS] [THREADS]

use std::sync::LazyLock;
use std::time::Instant;
use weft_metrics::{Counter, OpSet};

static OPS: LazyLock<OpSet> = LazyLock::new(|| {
    OpSet::new(
        "bench_ops",
        "bench_op_duration_seconds",
        "ops",
        "op",
        &["a", "b"],
    )
});
static BYTES: LazyLock<Counter> = LazyLock::new(Counter::default);

/// One operation as the daemons record it: a timed guard and a byte count.
#[inline(never)]
fn one() {
    let _timed = OPS.guard(0);
    weft_metrics::add(&BYTES, 4096);
}

fn run(iterations: u64, threads: usize) -> f64 {
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..iterations {
                    one();
                }
            });
        }
    });
    t.elapsed().as_nanos() as f64 / iterations as f64
}

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    LazyLock::force(&OPS);
    println!("ns per operation ({iterations} iterations per thread; wall time / iterations)");
    let off1 = run(iterations, 1);
    let offn = run(iterations, threads);
    weft_metrics::enable();
    let on1 = run(iterations, 1);
    let onn = run(iterations, threads);
    println!("metrics off, 1 thread:  {off1:.1}");
    println!("metrics off, {threads} threads: {offn:.1}");
    println!("metrics on,  1 thread:  {on1:.1}");
    println!("metrics on,  {threads} threads: {onn:.1}");
    assert_eq!(OPS.count(0), iterations * (1 + threads as u64));
}
