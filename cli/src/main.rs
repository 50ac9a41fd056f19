//! weft: run a one-machine cluster (`up`), inspect a cluster (`status`, `fsck`),
//! and move data off or across chunk daemons (`drain`, `rebalance`).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use weft_cli::cluster::{ClusterSpec, LocalCluster};
use weft_cli::progress::Progress;
use weft_cli::{admin, certs};
use weft_proto::identity::Role;

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "weft distributed file system: admin tool"
)]
struct Cli {
    /// Certificate directory (from `weft certs issue --role admin`) for
    /// talking to a cluster with TLS on; admin commands need an admin one.
    #[arg(long, global = true, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum MdsCmd {
    /// Add MDS node ID at ADDR to the group (start it first with
    /// `weft-mds --node-id ID --join --listen ADDR ...`): it catches up as a
    /// learner, then votes.
    Add {
        /// The group's nodes, comma-separated.
        #[arg(long, value_name = "ADDR[,ADDR...]")]
        mds: String,
        id: u64,
        addr: String,
    },
    /// Remove MDS node ID from the group (stop it afterwards).
    Remove {
        /// The group's nodes, comma-separated.
        #[arg(long, value_name = "ADDR[,ADDR...]")]
        mds: String,
        id: u64,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create a cluster certificate authority in DIR (ca.pem, ca-key.pem).
    Init { dir: PathBuf },
    /// Issue a certificate for ROLE/NAME into DIR/NAME/ (ca.pem, cert.pem,
    /// key.pem): the directory to give as --tls-dir.
    Issue {
        dir: PathBuf,
        #[arg(long, value_parser = ["mds", "chunkd", "client", "gateway", "admin"])]
        role: String,
        #[arg(long)]
        name: String,
        /// Days of validity (a negative count issues an already expired one).
        #[arg(long, default_value_t = 825, allow_negative_numbers = true)]
        days: i64,
    },
    /// Make a chunk capability key file (the MDS's and chunk daemons'
    /// --cap-key) if FILE is missing; with --rotate add a new signing key.
    CapKey {
        file: PathBuf,
        /// Add a key with a higher id: the MDS signs with it once it has
        /// re-read the file; older keys still verify until removed.
        #[arg(long)]
        rotate: bool,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Start an MDS and chunk daemons on free loopback ports, mount at MOUNTPOINT,
    /// and run until Ctrl-C; all state lives under --dir, so a second run finds every file.
    Up {
        /// Directory holding all state (MDS log, chunk replicas, logs).
        #[arg(long, default_value = "./.weft")]
        dir: PathBuf,
        /// Number of chunk daemons.
        #[arg(long, default_value_t = 3)]
        chunkds: usize,
        /// Chunk size in bytes for a new file system [default: 64 MiB].
        #[arg(long)]
        chunk_size: Option<u64>,
        /// Copies of each chunk [default: min(3, chunkds)].
        #[arg(long)]
        replicas: Option<u32>,
        /// Extra mount options for weftfs (comma-separated).
        #[arg(short = 'o', long)]
        options: Option<String>,
        /// Serve no metrics and no status page (no process records any;
        /// bench/compare's "weft3off" measures what they cost).
        #[arg(long)]
        no_metrics: bool,
        /// Plaintext links instead of mutual TLS (still loopback only).
        #[arg(long)]
        no_tls: bool,
        /// MDS nodes: 1 (a single MDS) or 3 or 5 (an MDS group that rides
        /// through the loss of any minority of them).
        #[arg(long, default_value_t = 1)]
        mds_nodes: usize,
        mountpoint: PathBuf,
    },
    /// Change the MDS group's membership online.
    Mds {
        #[command(subcommand)]
        cmd: MdsCmd,
    },
    /// Make the certificates for mutual TLS (see README, "Securing a cluster").
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Chunk daemons, files, chunks, and replication health.
    Status {
        /// The MDS's address, or a group's nodes comma-separated.
        #[arg(long, value_name = "ADDR[,ADDR...]")]
        mds: String,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Move every replica off a chunk daemon before retiring it. Runs in the
    /// MDS's background; progress shows in `weft status`. With --wait, returns
    /// once the daemon holds nothing.
    Drain {
        /// The MDS's address, or a group's nodes comma-separated.
        #[arg(long, value_name = "ADDR[,ADDR...]")]
        mds: String,
        /// The daemon's address, as `weft status` shows it.
        chunkd: String,
        /// Wait until it is empty, printing progress.
        #[arg(long)]
        wait: bool,
        /// Stop draining it (it takes new replicas again).
        #[arg(long)]
        cancel: bool,
    },
    /// Even out usage across the live chunk daemons, in the MDS's background
    /// (it stops by itself once balanced); progress shows in `weft status`.
    Rebalance {
        /// The MDS's address, or a group's nodes comma-separated.
        #[arg(long, value_name = "ADDR[,ADDR...]")]
        mds: String,
        /// Wait until it is balanced.
        #[arg(long)]
        wait: bool,
        /// Stop rebalancing.
        #[arg(long)]
        stop: bool,
    },
    /// Compact packed small files' segments now: sealed segments whose live
    /// needles fill less than the threshold are rewritten and the old ones
    /// removed (the MDS also does this in its background). Prints what the
    /// pass did.
    Compact {
        /// The MDS's address, or a group's nodes comma-separated.
        #[arg(long, value_name = "ADDR[,ADDR...]")]
        mds: String,
        /// Live fraction below which a segment is rewritten (default: the
        /// MDS's --compact-below).
        #[arg(long)]
        below: Option<f64>,
    },
    /// A live view, one line per interval: metadata requests/s (busiest
    /// kinds) and their mean latency, MiB/s read and written at the chunk
    /// daemons (writes at every replica), live daemons, under-replicated and
    /// missing chunks. Ctrl-C stops it.
    Stats {
        /// The MDS's address(es), comma-separated: the first that answers.
        #[arg(long)]
        mds: String,
        /// Seconds between lines.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many lines (default: run until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
    /// Check that every chunk of every file has its full replica count at its
    /// current version; exit 0 only if so.
    Fsck {
        /// The MDS's address, or a group's nodes comma-separated.
        #[arg(long, value_name = "ADDR[,ADDR...]")]
        mds: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weft: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    // `up` makes and uses its own admin certificate.
    if !matches!(cli.cmd, Cmd::Up { .. }) {
        weft_proto::net::configure_dir(cli.tls_dir.as_deref()).map_err(anyhow::Error::msg)?;
    }
    match cli.cmd {
        Cmd::Stats {
            mds,
            interval,
            count,
        } => {
            if !(interval.is_finite() && interval >= 0.1) {
                bail!("--interval {interval}: must be at least 0.1 seconds");
            }
            admin::block_on(stats(&mds, Duration::from_secs_f64(interval), count))?;
            Ok(0)
        }
        Cmd::Certs {
            cmd: CertsCmd::CapKey { file, rotate },
        } => {
            if rotate || !file.exists() {
                let id = certs::rotate_cap_key(&file)?;
                println!("{}: key {id} added (the newest signs)", file.display());
            } else {
                println!("{}: exists (give --rotate to add a key)", file.display());
            }
            Ok(0)
        }
        Cmd::Certs {
            cmd: CertsCmd::Init { dir },
        } => {
            certs::init(&dir)?;
            println!("CA created in {}", dir.display());
            Ok(0)
        }
        Cmd::Certs {
            cmd:
                CertsCmd::Issue {
                    dir,
                    role,
                    name,
                    days,
                },
        } => {
            let role = Role::parse(&role).context("bad --role")?;
            certs::issue(&dir, role, &name, days)?;
            println!(
                "{}: {role} certificate for {name}",
                dir.join(&name).display()
            );
            Ok(0)
        }
        Cmd::Status { mds, json } => {
            let s = admin::block_on(admin::status(&mds))?;
            if json {
                println!("{}", admin::status_json(&s));
            } else {
                print!("{}", admin::status_text(&s));
            }
            Ok(0)
        }
        Cmd::Drain {
            mds,
            chunkd,
            wait,
            cancel,
        } => {
            let r = admin::block_on(admin::drain(&mds, &chunkd, cancel))?;
            if cancel {
                println!(
                    "{chunkd}: draining stopped ({} replicas on it)",
                    r.remaining
                );
                return Ok(0);
            }
            println!("{chunkd}: draining, {} replicas to move", r.remaining);
            if wait {
                let p = Progress::counter(r.remaining, &format!("{chunkd}: moved"));
                loop {
                    let s = admin::block_on(admin::status(&mds))?;
                    let left = s
                        .chunkds
                        .iter()
                        .find(|d| d.id == r.chunkd_id)
                        .map_or(0, |d| d.chunks);
                    p.set_progress(r.remaining.saturating_sub(left), r.remaining);
                    if left == 0 {
                        break;
                    }
                    if p.is_bar() {
                        std::thread::sleep(Duration::from_millis(500));
                    } else {
                        println!("{chunkd}: {left} replicas left");
                        std::thread::sleep(Duration::from_secs(2));
                    }
                }
                p.finish();
            }
            if wait || r.remaining == 0 {
                println!("{chunkd}: empty, safe to retire");
            }
            Ok(0)
        }
        Cmd::Mds {
            cmd: MdsCmd::Add { mds, id, addr },
        } => {
            let r = admin::block_on(admin::mds_add(&mds, id, &addr))?;
            println!("MDS node {id} added; voters: {}", r.voters.join(","));
            Ok(0)
        }
        Cmd::Mds {
            cmd: MdsCmd::Remove { mds, id },
        } => {
            let r = admin::block_on(admin::mds_remove(&mds, id))?;
            println!("MDS node {id} removed; voters: {}", r.voters.join(","));
            Ok(0)
        }
        Cmd::Compact { mds, below } => {
            let r = admin::block_on(admin::compact(&mds, below.unwrap_or(0.0)))?;
            print!("{}", admin::compact_text(&r));
            Ok(0)
        }
        Cmd::Rebalance { mds, wait, stop } => {
            admin::block_on(admin::rebalance(&mds, stop))?;
            if stop {
                println!("rebalancing stopped");
                return Ok(0);
            }
            println!("rebalancing");
            if wait {
                // Bytes copied so far against an estimate of what is left to
                // move (recomputed each second from the daemons' usage).
                let p = Progress::bytes(0, "rebalancing");
                let mut start = None;
                loop {
                    let s = admin::block_on(admin::status(&mds))?;
                    let (c0, b0) = *start.get_or_insert((s.copies_done, s.copied_bytes));
                    let copied = s.copied_bytes.saturating_sub(b0);
                    let left = weft_cli::progress::rebalance_left(&s.chunkds, s.chunk_size);
                    p.set_progress(copied, copied + left);
                    p.set_message(format!(
                        "rebalancing: {} replicas moved, {} in flight",
                        s.copies_done.saturating_sub(c0),
                        s.copies_in_flight
                    ));
                    if !p.is_bar() {
                        println!(
                            "rebalancing: {:.1} MiB copied, about {:.1} MiB left",
                            copied as f64 / (1 << 20) as f64,
                            left as f64 / (1 << 20) as f64
                        );
                    }
                    if !s.rebalancing {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                p.finish();
            }
            if wait {
                println!("balanced");
            }
            Ok(0)
        }
        Cmd::Fsck { mds } => {
            // A page of inodes per call: a bar of inodes walked, with the time left.
            let p = Progress::counter(0, "fsck: inodes checked");
            let f = admin::block_on(admin::fsck_paged(&mds, admin::FSCK_PAGE, |n, of| {
                p.set_progress(n, of)
            }));
            p.finish();
            let f = f?;
            for p in &f.problems {
                let what = if p.good_replicas == 0 {
                    "MISSING"
                } else {
                    "under-replicated"
                };
                println!(
                    "{what}: {} chunk {} (id {:016x} v{}): {} of {} replicas",
                    p.path, p.index, p.chunk_id, p.version, p.good_replicas, p.want
                );
            }
            if f.orphan_chunks > 0 {
                println!(
                    "orphans: {} chunks ({} replicas) no file references, deleted after the MDS's --orphan-grace-secs",
                    f.orphan_chunks, f.orphan_replicas
                );
            }
            println!(
                "{} files, {} chunks, {} problems ({} missing), {} orphan chunks",
                f.files,
                f.chunks,
                f.problems.len(),
                f.missing_chunks,
                f.orphan_chunks
            );
            Ok(if f.problems.is_empty() { 0 } else { 1 })
        }
        Cmd::Up {
            dir,
            chunkds,
            chunk_size,
            replicas,
            options,
            no_metrics,
            no_tls,
            mds_nodes,
            mountpoint,
        } => up(
            dir,
            chunkds,
            chunk_size,
            replicas,
            options,
            Serving {
                metrics: !no_metrics,
                tls: !no_tls,
                mds_nodes,
            },
            mountpoint,
        ),
    }
}

/// How `weft up`'s processes serve: metrics and the status page, mutual TLS.
struct Serving {
    metrics: bool,
    tls: bool,
    /// MDS group size (1: a single MDS).
    mds_nodes: usize,
}

fn up(
    dir: PathBuf,
    chunkds: usize,
    chunk_size: Option<u64>,
    replicas: Option<u32>,
    options: Option<String>,
    Serving {
        metrics,
        tls,
        mds_nodes,
    }: Serving,
    mountpoint: PathBuf,
) -> Result<i32> {
    if chunkds == 0 {
        bail!("--chunkds must be at least 1");
    }
    if mds_nodes == 0 || mds_nodes > 7 {
        bail!("--mds-nodes {mds_nodes}: must be between 1 and 7 (3 or 5 for a group)");
    }
    if !mountpoint.is_dir() {
        bail!(
            "mount point {} does not exist or is not a directory",
            mountpoint.display()
        );
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    let mut spec = ClusterSpec::new(&dir, chunkds);
    spec.chunk_size = chunk_size;
    spec.replicas = replicas;
    spec.http = metrics;
    spec.mds_nodes = mds_nodes;
    let mut admin_dir = None;
    if tls {
        let ca = dir.join("certs");
        let admin = certs::ensure(&ca, &ca.join("admin"), Role::Admin, "admin")?;
        weft_proto::net::configure_dir(Some(&admin)).map_err(anyhow::Error::msg)?;
        spec.tls_ca = Some(ca);
        admin_dir = Some(admin);
    }
    let mut cluster = LocalCluster::start(spec)?;
    let opts: Vec<&str> = options
        .as_deref()
        .map(|o| o.split(',').collect())
        .unwrap_or_default();
    cluster.mount(&mountpoint, &opts)?;

    println!("weft is up; state in {}", dir.display());
    println!(
        "  weft-mds     {}  pid {}  data {}",
        cluster.mds.addr,
        cluster.mds.pid().unwrap_or(0),
        cluster.mds.data.display()
    );
    for c in &cluster.chunkds {
        println!(
            "  {:<12} {}  pid {}  data {}",
            c.name,
            c.addr,
            c.pid().unwrap_or(0),
            c.data.display()
        );
    }
    let m = &cluster.mounts[0];
    println!(
        "  weftfs       {}  pid {}",
        m.path.display(),
        m.proc.pid().unwrap_or(0)
    );
    if let Some(http) = &cluster.mds.http {
        println!("  status page  http://{http}/  (metrics: /metrics on every process's run/*.http address)");
    }
    let tls_arg = match &admin_dir {
        Some(a) => {
            println!(
                "mutual TLS on: CA and certificates in {}/certs (`weft certs issue {}/certs ...` for more)",
                dir.display(),
                dir.display()
            );
            format!(" --tls-dir {}", a.display())
        }
        None => {
            println!("TLS off (--no-tls): plaintext on loopback");
            String::new()
        }
    };
    println!(
        "logs in {}/logs; `weft status --mds {}{tls_arg}` for health; Ctrl-C to unmount and stop",
        dir.display(),
        cluster.mds.addr
    );

    let reason = admin::block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok::<_, anyhow::Error>(None),
                _ = term.recv() => return Ok(None),
                _ = tick.tick() => {
                    if !cluster.mds.running() {
                        return Ok(Some(format!("weft-mds exited:\n{}", cluster.mds.log_tail())));
                    }
                    if !cluster.mounts[0].proc.running() {
                        return Ok(Some("the mount ended (unmounted from outside?)".to_string()));
                    }
                }
            }
        }
    })?;
    println!(
        "\nstopping: unmounting {} and stopping the daemons",
        cluster.mounts[0].path.display()
    );
    cluster.stop();
    match reason {
        None => {
            println!("stopped");
            Ok(0)
        }
        Some(why) => {
            eprintln!("weft: {why}");
            Ok(1)
        }
    }
}

/// `weft stats`: Status from the first MDS that answers, every `interval`.
async fn stats(mds: &str, interval: Duration, count: Option<u64>) -> Result<()> {
    let addrs: Vec<&str> = mds
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    let poll = || async {
        let mut last = None;
        for a in &addrs {
            match admin::status(a).await {
                Ok(s) => return Ok((s, std::time::Instant::now())),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("--mds names no address")))
    };
    let (mut prev, mut at) = poll().await?;
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    let mut lines = 0u64;
    while count.is_none_or(|c| lines < c) {
        ticker.tick().await;
        let (cur, now) = poll().await?;
        if lines.is_multiple_of(20) {
            println!("{}", weft_cli::stats::HEADER);
        }
        let time = utc_time();
        let secs = now.duration_since(at).as_secs_f64().max(1e-3);
        println!("{}", weft_cli::stats::line(&time, &prev, &cur, secs));
        (prev, at) = (cur, now);
        lines += 1;
    }
    Ok(())
}

/// HH:MM:SS in UTC.
fn utc_time() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}
