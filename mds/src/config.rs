//! weft-mds settings: the command line, validated in one place.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;
pub const MIN_CHUNK_SIZE: u64 = 1 << 20;
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;

/// weft metadata server: owns the namespace and the file -> chunk map, and
/// journals every change to a write-ahead log in --data before answering.
#[derive(Parser, Debug, Clone)]
#[command(name = "weft-mds", version, args_override_self = true)]
pub struct Config {
    /// Read settings from this TOML file (keys are the long flags, e.g.
    /// `checkpoint-bytes = 67108864`); flags given here win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to serve on (127.0.0.1:0 picks a free port; see --addr-file).
    #[arg(long, default_value = "127.0.0.1:9700")]
    pub listen: SocketAddr,
    /// Directory for the write-ahead log and format file (created if missing).
    #[arg(long)]
    pub data: PathBuf,
    /// Chunk size in bytes for a new file system (a power of two, 1 MiB..1 GiB).
    /// An existing file system keeps the size it was created with. [default: 64 MiB]
    #[arg(long)]
    pub chunk_size: Option<u64>,
    /// Copies of each chunk to keep.
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// Write the address actually listened on to this file once serving.
    #[arg(long)]
    pub addr_file: Option<PathBuf>,
    /// How often chunk daemons heartbeat, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// A chunk daemon not heard from for this long is dead, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub dead_after_ms: u64,
    /// How long a write lease on a chunk lasts, in milliseconds (renewed while
    /// writes continue). A primary paused longer than this is fenced off.
    #[arg(long, default_value_t = 60_000)]
    pub lease_ms: u64,
    /// A write carries on, without error, while at least this many replicas of
    /// a chunk take it; re-replication brings it back to --replicas later.
    #[arg(long, default_value_t = 2)]
    pub min_replicas: u32,
    /// Re-replication bandwidth cap, in MiB/s over the whole cluster (0: no cap).
    #[arg(long, default_value_t = 200)]
    pub repair_mib_per_sec: u64,
    /// Re-replication copies in flight at once over the whole cluster.
    #[arg(long, default_value_t = 8)]
    pub repair_parallel: usize,
    /// A client session silent for this long (weftfs sends a keepalive every
    /// few seconds) loses its advisory locks, in seconds.
    #[arg(long, default_value_t = 30)]
    pub lock_expiry_secs: u64,
    /// Write a checkpoint (snapshot of the whole state) after this many bytes
    /// of log, then drop the log it covers. One is also written at clean shutdown.
    #[arg(long, default_value_t = 64 << 20)]
    pub checkpoint_bytes: u64,
    /// Serve under at least this term. Chunk daemons refuse an MDS whose term
    /// is below one they have seen (their log names it): after restoring an
    /// older copy of the data directory, start with a term above that.
    #[arg(long, default_value_t = 0)]
    pub min_term: u64,
    /// A client session not heard from for this many seconds expires: its
    /// remembered replies and its open files are dropped.
    #[arg(long, default_value_t = 300)]
    pub session_timeout_secs: u64,
    /// Packed small files: a sealed segment whose live needles fill less than
    /// this fraction of it is compacted (its needles copied into a new one,
    /// the old one removed).
    #[arg(long, default_value_t = 0.5)]
    pub compact_below: f64,
    /// Compaction copy bandwidth cap, in MiB/s (0: no cap).
    #[arg(long, default_value_t = 20)]
    pub compact_mib_per_sec: u64,
    /// Seconds between background compaction passes (0: only `weft compact`).
    #[arg(long, default_value_t = 60)]
    pub compact_interval_secs: u64,
    /// A live mount's older segment (it appends only to its newest) is
    /// compacted once no needle went into it for this many seconds.
    #[arg(long, default_value_t = 60)]
    pub compact_idle_secs: u64,
    /// A replica no file references is deleted from its daemon once it has
    /// been reported for this many seconds (so nothing in flight is lost).
    #[arg(long, default_value_t = 300)]
    pub orphan_grace_secs: u64,
    /// Verify the data directory offline (format, snapshot, every log record)
    /// and exit: 0 if sound, 1 with what is wrong.
    #[arg(long)]
    pub check: bool,
    /// Print every log record after the newest snapshot readably and exit.
    #[arg(long)]
    pub dump: bool,
    /// Test hook: sleep this long before each log fdatasync, so tests can
    /// see callers wait for durability.
    #[arg(long, default_value_t = 0, hide = true)]
    pub test_sync_delay_ms: u64,
    /// Test hook: the MDS kills itself (SIGKILL) in a compaction pass at this
    /// point: `before-switch` (needles copied, nothing switched) or
    /// `after-switch` (the switch record is in the log).
    #[arg(long, hide = true)]
    pub test_compact_fault: Option<String>,
    /// Serve Prometheus metrics at /metrics and the status page at / over
    /// HTTP on this address (e.g. 127.0.0.1:9800).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Write the HTTP address actually listened on to this file (for --http 127.0.0.1:0).
    #[arg(long)]
    pub http_addr_file: Option<PathBuf>,
    /// Certificate directory (ca.pem, cert.pem, key.pem from `weft certs
    /// issue`): mutual TLS on every link. Without it the daemon is plaintext
    /// and listens only on loopback unless --insecure.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Export rules (TOML): which client certificate may mount which
    /// subtree, read-only or read-write, with root or all squash (see
    /// README "Securing a cluster"). Re-read when it changes or on SIGHUP.
    /// Without it every client may do everything.
    #[arg(long, value_name = "FILE")]
    pub exports: Option<PathBuf>,
    /// Chunk capability key file ("ID HEX-KEY" lines; `weft certs init`
    /// writes one): every chunk location and write lease carries a capability
    /// signed with the newest key, which chunk daemons given the same file
    /// check. Re-read when it changes.
    #[arg(long, value_name = "FILE")]
    pub cap_key: Option<PathBuf>,
    /// How long a chunk capability lasts, in milliseconds (clients renew
    /// before it runs out).
    #[arg(long, default_value_t = 600_000)]
    pub cap_ttl_ms: u64,
    /// Allow plaintext on a non-loopback address (anyone reaching it can do anything).
    #[arg(long)]
    pub insecure: bool,
    /// Log filter (error, warn, info, debug, trace or a tracing directive).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// This node's id in an MDS group (1, 2, 3, ...). With --peers.
    #[arg(long)]
    pub node_id: Option<u64>,
    /// The MDS group: every voter as ID=ADDR, comma-separated
    /// (1=127.0.0.1:9700,2=...). Without it the MDS runs alone, as before.
    #[arg(long, value_name = "ID=ADDR,...")]
    pub peers: Option<String>,
    /// MDS group: dial peer ID through ADDR instead of its --peers address
    /// (NAT, or a test's fault proxy on one link), comma-separated
    /// (2=127.0.0.1:7001,...). What clients are told as the leader's
    /// address stays its --peers address.
    #[arg(long, value_name = "ID=ADDR,...")]
    pub peer_via: Option<String>,
    /// Join an existing group (a replacement or a wiped node): never start a
    /// new group, wait for the leader to send the log or a snapshot.
    #[arg(long)]
    pub join: bool,
    /// MDS group: the leader's heartbeat to its followers.
    #[arg(long, default_value_t = 100)]
    pub raft_heartbeat_ms: u64,
    /// MDS group: a follower that hears nothing from the leader for this
    /// long (up to twice it, at random) starts an election. Reads are served
    /// under a leader lease shorter than it.
    #[arg(long, default_value_t = 500)]
    pub election_timeout_ms: u64,
    /// MDS group: take a snapshot (and let the log before it go) every this many entries.
    #[arg(long, default_value_t = 20_000)]
    pub snapshot_entries: u64,
}

/// `--peers`: (id, address) of every voter.
pub fn parse_peers(s: &str) -> Result<Vec<(u64, String)>, String> {
    parse_id_addrs("--peers", s)
}

/// `--peer-via`: (id, address to dial it through); every id must be in
/// `--peers`.
pub fn parse_peer_via(s: &str, peers: &str) -> Result<Vec<(u64, String)>, String> {
    let via = parse_id_addrs("--peer-via", s)?;
    let peers = parse_peers(peers)?;
    for (id, _) in &via {
        if !peers.iter().any(|(p, _)| p == id) {
            return Err(format!("--peer-via: node {id} is not in --peers"));
        }
    }
    Ok(via)
}

/// "ID=ADDR,..." as (id, address) pairs; `flag` names the flag in errors.
fn parse_id_addrs(flag: &str, s: &str) -> Result<Vec<(u64, String)>, String> {
    let mut out: Vec<(u64, String)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{flag}: {part:?} is not ID=ADDR"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{flag}: {id:?} is not a node id"))?;
        if id == 0 {
            return Err(format!("{flag}: node ids start at 1"));
        }
        if out.iter().any(|(i, _)| *i == id) {
            return Err(format!("{flag}: node {id} appears twice"));
        }
        let addr = addr.trim();
        if addr.is_empty() {
            return Err(format!("{flag}: node {id} has no address"));
        }
        out.push((id, addr.to_string()));
    }
    if out.is_empty() {
        return Err(format!("{flag}: no nodes"));
    }
    Ok(out)
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(cs) = self.chunk_size {
            if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) || !cs.is_power_of_two() {
                return Err(format!("--chunk-size {cs}: must be a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"));
            }
        }
        if self.replicas == 0 || self.replicas > 16 {
            return Err(format!(
                "--replicas {}: must be between 1 and 16",
                self.replicas
            ));
        }
        if self.min_replicas == 0 {
            return Err("--min-replicas must be at least 1".into());
        }
        if !(self.compact_below > 0.0 && self.compact_below <= 1.0) {
            return Err(format!(
                "--compact-below {}: must be above 0 and at most 1",
                self.compact_below
            ));
        }
        if self.lease_ms < 1000 {
            return Err("--lease-ms must be at least 1000".into());
        }
        if self.repair_parallel == 0 {
            return Err("--repair-parallel must be at least 1".into());
        }
        if self.heartbeat_ms == 0 || self.dead_after_ms < 2 * self.heartbeat_ms {
            return Err("--dead-after-ms must be at least twice --heartbeat-ms (one missed beat is not death)".into());
        }
        if self.checkpoint_bytes < 4096 {
            return Err("--checkpoint-bytes must be at least 4096".into());
        }
        if self.cap_ttl_ms < 1000 {
            return Err("--cap-ttl-ms must be at least 1000".into());
        }
        if self.session_timeout_secs == 0 {
            return Err("--session-timeout-secs must be positive".into());
        }
        if let Some(p) = &self.peers {
            let peers = parse_peers(p)?;
            let id = self
                .node_id
                .ok_or("--peers needs --node-id (this node's id in the list)")?;
            if !peers.iter().any(|(i, _)| *i == id) && !self.join {
                return Err(format!(
                    "--node-id {id} is not in --peers (use --join for a node being added)"
                ));
            }
        } else if self.node_id.is_some() && !self.join {
            return Err("--node-id needs --peers (the group's voters) or --join".into());
        }
        if let Some(v) = &self.peer_via {
            let peers = self
                .peers
                .as_deref()
                .ok_or("--peer-via needs --peers (the nodes it names)")?;
            parse_peer_via(v, peers)?;
        }
        if self.raft_heartbeat_ms == 0 || self.election_timeout_ms < 3 * self.raft_heartbeat_ms {
            return Err("--election-timeout-ms must be at least three --raft-heartbeat-ms".into());
        }
        Ok(())
    }

    pub fn session_timeout(&self) -> Duration {
        Duration::from_secs(self.session_timeout_secs)
    }

    pub fn dead_after(&self) -> Duration {
        Duration::from_millis(self.dead_after_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        let mut argv = vec!["weft-mds", "--data", "/nonexistent"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).unwrap()
    }

    #[test]
    fn peer_via_names_only_known_peers() {
        let peers = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3";
        let ok = cfg(&[
            "--node-id",
            "1",
            "--peers",
            peers,
            "--peer-via",
            "2=127.0.0.1:12, 3=127.0.0.1:13",
        ]);
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            parse_peer_via(ok.peer_via.as_deref().unwrap(), peers).unwrap(),
            vec![(2, "127.0.0.1:12".into()), (3, "127.0.0.1:13".into())]
        );
        let unknown = cfg(&[
            "--node-id",
            "1",
            "--peers",
            peers,
            "--peer-via",
            "4=127.0.0.1:14",
        ]);
        assert!(unknown.validate().unwrap_err().contains("node 4"));
        for bad in ["2", "x=127.0.0.1:1", "0=127.0.0.1:1", "2=a:1,2=b:2", "2="] {
            let c = cfg(&["--node-id", "1", "--peers", peers, "--peer-via", bad]);
            assert!(c.validate().is_err(), "{bad:?} accepted");
        }
        let alone = cfg(&["--peer-via", "2=127.0.0.1:12"]);
        assert!(alone.validate().unwrap_err().contains("--peers"));
    }
}
