//! The daemon's side of the `Master` service: registration, the heartbeat
//! loop and corruption reports.
//!
//! Invariants:
//! * the MDS may be down or not started: every call is retried (registration
//!   with exponential backoff, beats on the next period) and nothing here ever
//!   stops the daemon serving;
//! * replica changes (the store's dirty set) are only forgotten once the MDS
//!   acknowledged the beat or registration carrying them; a failed call puts
//!   them back to be resent;
//! * a beat goes out within ~50 ms (`EARLY_BEAT_DELAY`) of a new replica (or a version change), so
//!   the MDS learns of fresh replicas quickly;
//! * until a registration succeeded the chunk size is unknown and the store
//!   accepts writes up to its provisional 1 GiB bound (`store::PROVISIONAL_CHUNK_SIZE`);
//!   afterwards it refuses offsets past the MDS's chunk size.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, Instant};
use weft_proto::leader::MdsList;
use weft_proto::master_client::MasterClient;
use weft_proto::net::Channel;
use weft_proto::{ChunkReport, CorruptReq, HeartbeatReq, RegisterReq, MAX_MESSAGE};

use crate::store::{ChunkSummary, Store};
use crate::term::TermGuard;

const REGISTER_BACKOFF_MIN: Duration = Duration::from_millis(200);
// Low: after an MDS failover the daemons must find the new leader quickly.
const REGISTER_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Used when the MDS's reply carries no period.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
/// Gathers a burst of new replicas into one early beat.
const EARLY_BEAT_DELAY: Duration = Duration::from_millis(50);
/// Bound on any single call to the MDS.
const MDS_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The same chunk is not reported corrupt again within this time.
const REPORT_DEDUP: Duration = Duration::from_secs(30);

/// A lazily connecting `Master` client for the MDS at `addr`.
pub fn master_client(addr: &str) -> anyhow::Result<MasterClient<Channel>> {
    let ep = weft_proto::net::endpoint(addr)
        .map_err(|e| anyhow::anyhow!("--mds {addr}: {e}"))?
        .timeout(MDS_CALL_TIMEOUT);
    Ok(MasterClient::new(Channel::from(ep.connect_lazy()))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// The MDS nodes this daemon may talk to (`--mds A,B,C`): calls go to the
/// current one, and a failure moves to the leader a "not leader" answer
/// names, else to the next address. One lazily connecting client per address.
#[derive(Clone)]
pub struct Masters {
    list: MdsList,
    clients: Arc<Mutex<HashMap<String, MasterClient<Channel>>>>,
    /// The highest MDS term seen (term fencing).
    pub term: Arc<TermGuard>,
}

impl Masters {
    pub fn new(list: &str, term: Arc<TermGuard>) -> anyhow::Result<Masters> {
        let list = MdsList::parse(list).map_err(|e| anyhow::anyhow!("--mds {e}"))?;
        let mut clients = HashMap::new();
        for a in list.all() {
            clients.insert(a.clone(), master_client(&a)?);
        }
        Ok(Masters {
            list,
            clients: Arc::new(Mutex::new(clients)),
            term,
        })
    }

    /// The address to call now and its client.
    pub fn client(&self) -> anyhow::Result<(String, MasterClient<Channel>)> {
        let addr = self.list.current();
        let mut clients = self.clients.lock();
        if let Some(c) = clients.get(&addr) {
            return Ok((addr, c.clone()));
        }
        let c = master_client(&addr)?;
        clients.insert(addr.clone(), c.clone());
        Ok((addr, c))
    }

    /// A call to `addr` failed (`status`; None for a stale term): move on.
    pub fn failed(&self, addr: &str, status: Option<&tonic::Status>) {
        let next = self.list.failed(addr, status);
        if next != addr {
            tracing::info!(from = addr, to = %next, "trying another MDS");
        }
    }
}

fn report(s: &ChunkSummary) -> ChunkReport {
    ChunkReport {
        chunk_id: s.id,
        version: s.version,
        size: s.size,
    }
}

/// Who this daemon is, as told to the MDS.
#[derive(Debug, Clone)]
pub struct Identity {
    pub chunkd_id: u64,
    /// Address clients and peers reach us at.
    pub addr: String,
    pub rack: String,
    /// `--heartbeat-ms`: wins over the period the MDS sends.
    pub heartbeat_override: Option<Duration>,
}

/// Registers, then beats forever (re-registering when the MDS asks). Runs
/// until its task is aborted.
pub async fn run(store: Arc<Store>, masters: Masters, me: Identity) {
    let signal = store.new_replica_signal();
    loop {
        let (period, addr, mut master) = register(&store, &masters, &me).await;
        let mut next = Instant::now() + period;
        let mut failures = 0u64;
        loop {
            tokio::select! {
                _ = sleep_until(next) => {}
                _ = signal.notified() => sleep(EARLY_BEAT_DELAY).await,
            }
            next = Instant::now() + period;
            let delta = store.take_delta();
            let req = HeartbeatReq {
                chunkd_id: me.chunkd_id,
                capacity: store.capacity(),
                used: store.used(),
                free: Some(store.free_for_data()),
                read_bytes: crate::metrics::M.read_bytes.get(),
                written_bytes: crate::metrics::M.written_bytes.get(),
                added: delta.added.iter().map(report).collect(),
                removed: delta.removed.clone(),
            };
            let reply = match master.heartbeat(req).await {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    store.restore_delta(&delta);
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(failures, mds = %addr, error = %status.message(), code = ?status.code(), "heartbeat to MDS failed; will resend");
                    }
                    if masters.list.len() > 1 && failures >= 2 {
                        // Another node may lead now: register there.
                        masters.failed(&addr, Some(&status));
                        break;
                    }
                    continue;
                }
            };
            if let Err(stale) = masters.term.admit(reply.term) {
                // A deposed leader: obey none of it, find the current one.
                tracing::warn!(mds = %addr, "{stale}; ignoring its heartbeat reply");
                store.restore_delta(&delta);
                masters.failed(&addr, None);
                break;
            }
            if failures > 0 {
                tracing::info!(after_failures = failures, "heartbeats to MDS resumed");
                failures = 0;
            }
            if !reply.delete_chunks.is_empty() {
                delete_chunks(&store, reply.delete_chunks).await;
                // Tell the MDS soon rather than a whole period later.
                next = next.min(Instant::now() + EARLY_BEAT_DELAY);
            }
            if reply.reregister {
                // The MDS does not know us (it restarted): this beat was not
                // applied; registration sends the full list anyway.
                store.restore_delta(&delta);
                tracing::info!("MDS asked us to register again");
                break;
            }
        }
    }
}

/// Registers with the MDS, retrying with backoff until it answers. Returns the
/// heartbeat period to use.
async fn register(
    store: &Arc<Store>,
    masters: &Masters,
    me: &Identity,
) -> (Duration, String, MasterClient<Channel>) {
    let mut backoff = REGISTER_BACKOFF_MIN;
    let mut attempt = 0u64;
    loop {
        attempt += 1;
        let (addr, mut master) = match masters.client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("{e:#}");
                sleep(REGISTER_BACKOFF_MAX).await;
                continue;
            }
        };
        // Everything we hold goes in the request, so pending deltas are covered.
        let delta = store.take_delta();
        let chunks: Vec<ChunkReport> = store.summaries().iter().map(report).collect();
        let n = chunks.len();
        let req = RegisterReq {
            chunkd_id: me.chunkd_id,
            addr: me.addr.clone(),
            rack: me.rack.clone(),
            capacity: store.capacity(),
            used: store.used(),
            free: Some(store.free_for_data()),
            chunks,
        };
        match master.register(req).await {
            Ok(r) => {
                let r = r.into_inner();
                if let Err(stale) = masters.term.admit(r.term) {
                    store.restore_delta(&delta);
                    tracing::warn!(mds = %addr, "{stale}; registering elsewhere");
                    masters.failed(&addr, None);
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(REGISTER_BACKOFF_MAX);
                    continue;
                }
                if r.chunk_size > 0 {
                    store.set_chunk_size(r.chunk_size);
                }
                let period = me
                    .heartbeat_override
                    .or((r.heartbeat_ms > 0).then(|| Duration::from_millis(r.heartbeat_ms)))
                    .unwrap_or(DEFAULT_HEARTBEAT);
                tracing::info!(
                    chunkd_id = format_args!("{:016x}", me.chunkd_id),
                    chunks = n,
                    chunk_size = r.chunk_size,
                    heartbeat_ms = period.as_millis() as u64,
                    attempt,
                    mds = %addr,
                    "registered with MDS"
                );
                return (period, addr, master);
            }
            Err(status) => {
                store.restore_delta(&delta);
                // Every failure for a while, then a reminder every ~30 s.
                if attempt <= 5 || attempt.is_multiple_of(15) {
                    tracing::warn!(
                    attempt,
                    retry_in_ms = backoff.as_millis() as u64,
                    code = ?status.code(),
                    error = %status.message(),
                    "registration with MDS failed; retrying"
                    );
                }
                masters.failed(&addr, Some(&status));
                sleep(backoff).await;
                backoff = (backoff * 2).min(REGISTER_BACKOFF_MAX);
            }
        }
    }
}

async fn delete_chunks(store: &Arc<Store>, ids: Vec<u64>) {
    let store = store.clone();
    let r = tokio::task::spawn_blocking(move || {
        for id in ids {
            match store.delete(id) {
                Ok(true) => tracing::info!(
                    chunk = format_args!("{id:016x}"),
                    "replica deleted at MDS request"
                ),
                Ok(false) => tracing::debug!(
                    chunk = format_args!("{id:016x}"),
                    "MDS asked to delete a replica we do not hold"
                ),
                Err(e) => tracing::error!(error = %e, "deleting replica failed"),
            }
        }
    })
    .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "delete task failed");
    }
}

/// Hands corrupt-replica reports to a background task that tells the MDS
/// (best effort: a few retries, duplicates within 30 s dropped).
#[derive(Clone)]
pub struct CorruptReporter {
    tx: Option<mpsc::UnboundedSender<u64>>,
}

impl CorruptReporter {
    /// A reporter that only logs (no MDS).
    pub fn disabled() -> CorruptReporter {
        CorruptReporter { tx: None }
    }

    /// Starts the reporting task for daemon `chunkd_id`.
    pub fn spawn(master: Masters, chunkd_id: u64) -> (CorruptReporter, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(report_loop(master, chunkd_id, rx));
        (CorruptReporter { tx: Some(tx) }, task)
    }

    /// Queues a report that this daemon's replica of `chunk_id` is corrupt.
    pub fn report(&self, chunk_id: u64) {
        tracing::error!(
            chunk = format_args!("{chunk_id:016x}"),
            "corrupt replica; reporting to MDS"
        );
        if let Some(tx) = &self.tx {
            let _ = tx.send(chunk_id);
        }
    }
}

async fn report_loop(masters: Masters, chunkd_id: u64, mut rx: mpsc::UnboundedReceiver<u64>) {
    let mut last: HashMap<u64, Instant> = HashMap::new();
    while let Some(chunk_id) = rx.recv().await {
        let now = Instant::now();
        if last
            .get(&chunk_id)
            .is_some_and(|t| now.duration_since(*t) < REPORT_DEDUP)
        {
            continue;
        }
        last.retain(|_, t| now.duration_since(*t) < REPORT_DEDUP);
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=5 {
            let Ok((addr, mut master)) = masters.client() else {
                break;
            };
            match master
                .report_corrupt(CorruptReq {
                    chunkd_id,
                    chunk_id,
                })
                .await
            {
                Ok(_) => {
                    last.insert(chunk_id, Instant::now());
                    break;
                }
                Err(status) => {
                    tracing::warn!(attempt, chunk = format_args!("{chunk_id:016x}"), error = %status.message(), "ReportCorrupt failed");
                    masters.failed(&addr, Some(&status));
                    sleep(delay).await;
                    delay *= 2;
                }
            }
        }
    }
}
