//! `weft stats`: a live line per interval from two `Status` replies of the
//! MDS — metadata requests per second (total and the busiest kinds) with
//! their mean latency, MiB/s read from and written to the chunk daemons
//! (writes counted at every replica), and health — like `juicefs stats`.

use std::collections::HashMap;
use weft_proto::pb;

pub const HEADER: &str =
    "    time   meta/s  lat ms  busiest kinds                        read MiB/s  write MiB/s  daemons  under  missing";

/// The line for the interval between `prev` and `cur` (`secs` long).
pub fn line(time: &str, prev: &pb::StatusReply, cur: &pb::StatusReply, secs: f64) -> String {
    let before: HashMap<&str, &pb::OpStat> = prev.ops.iter().map(|o| (o.op.as_str(), o)).collect();
    let mut kinds: Vec<(&str, u64, u64)> = cur
        .ops
        .iter()
        .map(|o| {
            let (c0, l0) = before
                .get(o.op.as_str())
                .map_or((0, 0), |p| (p.count, p.latency_ns));
            // A restarted MDS counts from zero again.
            let (c0, l0) = if o.count < c0 { (0, 0) } else { (c0, l0) };
            (o.op.as_str(), o.count - c0, o.latency_ns.saturating_sub(l0))
        })
        .filter(|(_, n, _)| *n > 0)
        .collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let count: u64 = kinds.iter().map(|k| k.1).sum();
    let ns: u64 = kinds.iter().map(|k| k.2).sum();
    let lat_ms = if count > 0 {
        ns as f64 / count as f64 / 1e6
    } else {
        0.0
    };
    let busiest: Vec<String> = kinds
        .iter()
        .take(3)
        .map(|(op, n, _)| format!("{op} {:.0}", *n as f64 / secs))
        .collect();
    let bytes = |s: &pb::StatusReply, f: fn(&pb::ChunkdStatus) -> u64| -> HashMap<u64, u64> {
        s.chunkds.iter().map(|d| (d.id, f(d))).collect()
    };
    let rate = |f: fn(&pb::ChunkdStatus) -> u64| -> f64 {
        let was = bytes(prev, f);
        let moved: u64 = cur
            .chunkds
            .iter()
            .map(|d| {
                let now = f(d);
                match was.get(&d.id) {
                    // A restarted daemon counts from zero again.
                    Some(&b) if b <= now => now - b,
                    _ => 0,
                }
            })
            .sum();
        moved as f64 / secs / (1 << 20) as f64
    };
    let alive = cur.chunkds.iter().filter(|d| d.alive).count();
    format!(
        "{time:>8} {:>8.0} {lat_ms:>7.2}  {:<36} {:>10.1} {:>12.1} {:>8} {:>6} {:>8}",
        count as f64 / secs,
        busiest.join(", "),
        rate(|d| d.read_bytes),
        rate(|d| d.written_bytes),
        format!("{alive}/{}", cur.chunkds.len()),
        cur.under_replicated,
        cur.missing,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: &str, count: u64, latency_ns: u64) -> pb::OpStat {
        pb::OpStat {
            op: op.into(),
            count,
            latency_ns,
        }
    }

    fn daemon(id: u64, alive: bool, read: u64, written: u64) -> pb::ChunkdStatus {
        pb::ChunkdStatus {
            id,
            alive,
            read_bytes: read,
            written_bytes: written,
            ..Default::default()
        }
    }

    #[test]
    fn rates_latency_and_health_over_one_interval() {
        let prev = pb::StatusReply {
            ops: vec![op("lookup", 100, 100_000_000), op("create", 10, 10_000_000)],
            chunkds: vec![daemon(1, true, 0, 0), daemon(2, true, 5 << 20, 0)],
            ..Default::default()
        };
        let cur = pb::StatusReply {
            ops: vec![
                op("lookup", 300, 300_000_000),
                op("create", 110, 60_000_000),
                op("getattr", 50, 5_000_000),
            ],
            chunkds: vec![
                daemon(1, true, 4 << 20, 8 << 20),
                daemon(2, false, 1 << 20, 8 << 20),
            ],
            under_replicated: 7,
            ..Default::default()
        };
        let l = line("12:00:00", &prev, &cur, 2.0);
        // 350 requests in 2 s; 255 ms of latency over 350.
        assert!(l.contains("     175 "), "{l}");
        assert!(l.contains(" 0.73 "), "{l}");
        assert!(l.contains("lookup 100, create 50, getattr 25"), "{l}");
        // Daemon 2 restarted (its count went down): only daemon 1's 4 MiB read.
        assert!(l.contains("        2.0 "), "{l}");
        assert!(l.contains("         8.0 "), "{l}");
        assert!(l.contains("     1/2      7        0"), "{l}");
    }
}
