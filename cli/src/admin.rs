//! Admin calls to the MDS (status, fsck) and how `weft` prints them.

use anyhow::{Context, Result};
use std::time::Duration;
use weft_proto::pb;

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// A connection to the MDS at `addr` (host:port or a URI); the error says
/// which address could not be reached.
async fn mds_channel(addr: &str) -> Result<weft_proto::net::Channel> {
    weft_proto::net::endpoint(addr)
        .map_err(anyhow::Error::msg)?
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map(weft_proto::net::Channel::from)
        .with_context(|| format!("cannot reach the MDS at {addr}"))
}

/// Runs `call` on the MDS leader: `addrs` is one address or a group's nodes,
/// comma-separated. A node that does not answer, or answers "not leader",
/// passes the call on (to the leader it names, else to the next node).
async fn on_leader<T, F, Fut>(addrs: &str, what: &str, call: F) -> Result<T>
where
    F: Fn(weft_proto::net::Channel) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
{
    let list =
        weft_proto::leader::MdsList::parse(addrs).map_err(|e| anyhow::anyhow!("--mds {e}"))?;
    let mut failures = Vec::new();
    for _ in 0..2 * list.len() + 1 {
        let addr = list.current();
        match mds_channel(&addr).await {
            Err(e) => {
                failures.push(format!("{e:#}"));
                list.failed(&addr, None);
            }
            Ok(ch) => match call(ch).await {
                Ok(r) => return Ok(r),
                Err(s) if s.code() == tonic::Code::Unavailable => {
                    failures.push(format!("{addr}: {}", s.message()));
                    list.failed(&addr, Some(&s));
                }
                Err(s) => anyhow::bail!("{what}: {}", s.message()),
            },
        }
    }
    anyhow::bail!("{what}: no MDS leader answered ({})", failures.join("; "))
}

fn master(
    ch: weft_proto::net::Channel,
) -> pb::master_client::MasterClient<weft_proto::net::Channel> {
    pb::master_client::MasterClient::new(ch).max_decoding_message_size(weft_proto::MAX_MESSAGE)
}

/// The cluster's status as the MDS leader sees it. A node that leads no
/// majority (a stale leader: cut off, or restarted and not yet told of a
/// newer term; or a node that knows no leader) answers for itself; then each
/// other node of `addr` is asked too, and the answer of the leader a
/// majority follows wins, if one gives it.
pub async fn status(addr: &str) -> Result<pb::StatusReply> {
    let first = status_on_leader(addr).await?;
    let list = weft_proto::leader::parse_list(addr).map_err(|e| anyhow::anyhow!("--mds {e}"))?;
    if leads(&first) || list.len() < 2 {
        return Ok(first);
    }
    let mut others = tokio::task::JoinSet::new();
    for a in list {
        others.spawn(async move {
            tokio::time::timeout(Duration::from_secs(3), status_on_leader(&a)).await
        });
    }
    while let Some(r) = others.join_next().await {
        if let Ok(Ok(Ok(r))) = r {
            if leads(&r) {
                return Ok(r);
            }
        }
    }
    Ok(first)
}

async fn status_on_leader(addr: &str) -> Result<pb::StatusReply> {
    on_leader(addr, "status", |ch| async move {
        Ok(master(ch).status(pb::StatusReq {}).await?.into_inner())
    })
    .await
}

/// Whether a status reply comes from (or through) a leader that a majority
/// acknowledges: the node it names as leader reports itself as "leader".
fn leads(s: &pb::StatusReply) -> bool {
    s.mds.iter().any(|n| n.id == s.leader && n.role == "leader")
}

pub async fn fsck(addr: &str) -> Result<pb::FsckReply> {
    fsck_paged(addr, FSCK_PAGE, |_, _| {}).await
}

/// Inodes per fsck call: the MDS holds its locks for one page at a time.
pub const FSCK_PAGE: u64 = 20_000;

/// fsck a page of `page` inodes at a time (each page on whichever node
/// leads then), calling `progress(walked, inodes)` after each; the pages'
/// findings summed into one reply. Not a snapshot: a file created meanwhile
/// is checked if its inode comes after the page being walked.
pub async fn fsck_paged(
    addr: &str,
    page: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<pb::FsckReply> {
    let mut all = pb::FsckReply::default();
    let mut after = 0;
    loop {
        let r = on_leader(addr, "fsck", |ch| async move {
            let req = pb::FsckReq {
                after_ino: after,
                max_inodes: page,
            };
            Ok(master(ch).fsck(req).await?.into_inner())
        })
        .await?;
        all.files = r.files;
        all.inodes = r.inodes;
        all.chunks += r.chunks;
        all.walked += r.walked;
        all.missing_chunks += r.missing_chunks;
        all.problems.extend(r.problems);
        all.orphan_chunks = r.orphan_chunks;
        all.orphan_replicas = r.orphan_replicas;
        progress(all.walked, all.inodes);
        if r.next_ino == 0 {
            return Ok(all);
        }
        after = r.next_ino;
    }
}

/// Starts (or with `cancel` stops) draining the daemon at `chunkd`; returns
/// the replicas still on it.
pub async fn drain(addr: &str, chunkd: &str, cancel: bool) -> Result<pb::DrainReply> {
    on_leader(addr, &format!("drain {chunkd}"), |ch| async move {
        let req = pb::DrainReq {
            addr: chunkd.to_string(),
            cancel,
        };
        Ok(pb::admin_client::AdminClient::new(ch)
            .drain(req)
            .await?
            .into_inner())
    })
    .await
}

/// Adds MDS node `id` at `addr` to the group (returns once it votes).
pub async fn mds_add(addr: &str, id: u64, node: &str) -> Result<pb::MdsChangeReply> {
    on_leader(addr, &format!("mds add {id}"), |ch| async move {
        Ok(pb::admin_client::AdminClient::new(ch)
            .mds_add(pb::MdsAddReq {
                id,
                addr: node.to_string(),
            })
            .await?
            .into_inner())
    })
    .await
}

/// Removes MDS node `id` from the group.
pub async fn mds_remove(addr: &str, id: u64) -> Result<pb::MdsChangeReply> {
    on_leader(addr, &format!("mds remove {id}"), |ch| async move {
        Ok(pb::admin_client::AdminClient::new(ch)
            .mds_remove(pb::MdsRemoveReq { id })
            .await?
            .into_inner())
    })
    .await
}

/// Starts (or stops) evening out usage across daemons.
pub async fn rebalance(addr: &str, stop: bool) -> Result<pb::RebalanceReply> {
    on_leader(addr, "rebalance", |ch| async move {
        Ok(pb::admin_client::AdminClient::new(ch)
            .rebalance(pb::RebalanceReq { stop })
            .await?
            .into_inner())
    })
    .await
}

pub async fn compact(addr: &str, below: f64) -> Result<pb::CompactReply> {
    on_leader(addr, "compact", |ch| async move {
        Ok(pb::admin_client::AdminClient::new(ch)
            .compact(pb::CompactReq { below })
            .await?
            .into_inner())
    })
    .await
}

/// What `weft compact` prints.
pub fn compact_text(r: &pb::CompactReply) -> String {
    format!(
        "compacted {} segments into {} new ({} needles, {} copied); removed {} segments ({} freed)
         segments now: {}, {} written, {} live
",
        r.segments_compacted,
        r.new_segments,
        r.needles_moved,
        human(r.bytes_copied),
        r.segments_removed,
        human(r.bytes_freed),
        r.segments,
        human(r.segment_bytes),
        human(r.segment_live_bytes),
    )
}

pub fn status_json(s: &pb::StatusReply) -> serde_json::Value {
    serde_json::json!({
        "chunkds": s.chunkds.iter().map(|d| serde_json::json!({
            "id": format!("{:016x}", d.id),
            "address": d.addr,
            "rack": d.rack,
            "alive": d.alive,
            "capacity": d.capacity,
            "used": d.used,
            "chunks": d.chunks,
            "draining": d.draining,
        })).collect::<Vec<_>>(),
        "copies_in_flight": s.copies_in_flight,
        "copies_done": s.copies_done,
        "copied_bytes": s.copied_bytes,
        "rebalancing": s.rebalancing,
        "files": s.files,
        "directories": s.directories,
        "chunks": s.chunks,
        "under_replicated": s.under_replicated,
        "missing": s.missing,
        "replicas": s.replicas,
        "chunk_size": s.chunk_size,
        "mds": s.mds.iter().map(|n| serde_json::json!({
            "id": n.id,
            "addr": n.addr,
            "role": n.role,
            "term": n.term,
            "last_log_index": n.last_log_index,
            "applied": n.applied,
        })).collect::<Vec<_>>(),
        "leader": s.leader,
        "segments": s.segments,
        "segment_bytes": s.segment_bytes,
        "segment_live_bytes": s.segment_live_bytes,
        "compactions": s.compactions,
    })
}

pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn status_text(s: &pb::StatusReply) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<6} {:<22} {:<12} {:>8} {:>12} {:>12}\n",
        "MDS", "ADDRESS", "ROLE", "TERM", "LAST INDEX", "APPLIED"
    ));
    for n in &s.mds {
        out.push_str(&format!(
            "{:<6} {:<22} {:<12} {:>8} {:>12} {:>12}\n",
            n.id, n.addr, n.role, n.term, n.last_log_index, n.applied
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<18} {:<22} {:<8} {:<6} {:>10} {:>10} {:>8}\n",
        "CHUNKD", "ADDRESS", "RACK", "ALIVE", "CAPACITY", "USED", "CHUNKS"
    ));
    for d in &s.chunkds {
        out.push_str(&format!(
            "{:<18} {:<22} {:<8} {:<6} {:>10} {:>10} {:>8}\n",
            format!("{:016x}", d.id),
            d.addr,
            if d.rack.is_empty() { "-" } else { &d.rack },
            if d.draining {
                "drain"
            } else if d.alive {
                "yes"
            } else {
                "NO"
            },
            human(d.capacity),
            human(d.used),
            d.chunks
        ));
    }
    out.push_str(&format!(
        "files: {}  directories: {}  chunks: {}  replicas: {}  chunk size: {}\nunder-replicated: {}  missing: {}\n",
        s.files,
        s.directories,
        s.chunks,
        s.replicas,
        human(s.chunk_size),
        s.under_replicated,
        s.missing
    ));
    if s.copies_in_flight > 0 || s.copies_done > 0 {
        out.push_str(&format!(
            "re-replication: {} copies running, {} done ({})\n",
            s.copies_in_flight,
            s.copies_done,
            human(s.copied_bytes)
        ));
    }
    if s.segments > 0 {
        out.push_str(&format!(
            "packed small files: {} segments, {} written, {} live ({} compaction passes)\n",
            s.segments,
            human(s.segment_bytes),
            human(s.segment_live_bytes),
            s.compactions
        ));
    }
    if s.rebalancing {
        out.push_str("rebalancing: moving replicas from the fullest daemons to the emptiest\n");
    }
    for d in s.chunkds.iter().filter(|d| d.draining) {
        out.push_str(&format!(
            "draining {}: {} replicas left{}\n",
            d.addr,
            d.chunks,
            if d.chunks == 0 {
                " (empty: safe to retire)"
            } else {
                ""
            }
        ));
    }
    out
}
