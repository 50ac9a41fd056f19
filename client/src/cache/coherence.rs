//! The mount's end of `Coherence.Watch`: the MDS pushes what other mounts'
//! committed changes made stale, and this drops it from weftfs's caches and
//! from the kernel's (FUSE notify_inval_entry / notify_inval_inode).
//!
//! Invariants: kernel notifications are sent from one dedicated thread, never
//! from a tokio worker or a request handler: an inval_entry waits for the
//! directory's lock, which a lookup that is itself waiting on weftfs may hold.
//! When the stream breaks, goes silent for `LAG` (the MDS sends an empty batch
//! every 200 ms) or the MDS reports `overflow`, pushes may have been missed, so
//! every weftfs cache is cleared and everything the kernel holds from weftfs is
//! invalidated (kernel.rs); until the stream is back the kernel gets the short
//! TTLs (`attr_timeout`/`entry_timeout`), which are then the bound.
//!
//! Strict mode (`strict`): after a batch's invalidations, a `Barrier` goes to
//! the notifying thread; once it passes (every notify_inval_* before it
//! returned) the acker task sends `Ack(seq)` to the MDS, which answers the
//! change's author only then (or when this mount's trust lease ran out,
//! mds/src/strict.rs). The acker also renews the lease every `RENEW`; each
//! grant extends trust to its lease counted from before the Ack was sent, so
//! the mount stops trusting its caches before the MDS stops waiting for it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{INodeNo, Notifier};
use weft_proto::pb;

use crate::cache::kernel::Inval;
use crate::client::Weft;

/// A stream silent this long is treated as broken: less than the 1 s bound,
/// well above the MDS's 200 ms tick.
const LAG: Duration = Duration::from_millis(700);

/// Strict mode: a lease renewal at least this often (the MDS's lease is 1 s,
/// so three renewals may be lost or late before the mount lapses).
const RENEW: Duration = Duration::from_millis(200);

/// Numbers watch streams, so an ack never confuses two of them.
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// Barriers that reached the kernel: (stream epoch, batch).
type Passed = tokio::sync::watch::Receiver<(u64, u64)>;

/// Starts the watcher on the runtime and the notifying thread. Runs until the
/// process exits.
/// The stream goes to the MDS node the mount's calls go to (the leader, with
/// a group); a failed stream moves that choice on like a failed call.
pub fn start(w: Arc<Weft>, notifier: Notifier, rt: &tokio::runtime::Handle) {
    let (tx, rx) = std::sync::mpsc::channel::<Inval>();
    let (passed_tx, passed) = tokio::sync::watch::channel((0u64, 0u64));
    w.kernel.set_notifier(tx.clone());
    let _ = w.mds.kernel_notifier.set(notifier.clone());
    std::thread::Builder::new()
        .name("weftfs-inval".into())
        .spawn(move || notify_kernel(notifier, rx, passed_tx))
        .expect("spawn the invalidation thread");
    rt.spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mds_addr = w.mds.list.current();
            match watch_once(&w, &mds_addr, &tx, &passed).await {
                Ok(()) => tracing::info!("coherence stream ended; reconnecting"),
                Err(e) => {
                    tracing::info!(error = %e.msg, "coherence stream failed; reconnecting");
                    if w.mds.list.len() > 1 {
                        w.mds.list.failed(&mds_addr, e.status.as_ref());
                    }
                }
            }
            // Pushes may have been missed while disconnected.
            w.drop_all_caches();
            w.kernel.drop_all(false);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
}

/// Aborts the acker when its stream ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a stream ended: what to log, and the MDS's answer if it gave one (a
/// "not leader" names where to go).
struct StreamError {
    msg: String,
    status: Option<tonic::Status>,
}

impl From<String> for StreamError {
    fn from(msg: String) -> StreamError {
        StreamError { msg, status: None }
    }
}

impl From<&str> for StreamError {
    fn from(msg: &str) -> StreamError {
        msg.to_string().into()
    }
}

impl From<tonic::Status> for StreamError {
    fn from(s: tonic::Status) -> StreamError {
        StreamError {
            msg: s.to_string(),
            status: Some(s),
        }
    }
}

async fn watch_once(
    w: &Arc<Weft>,
    addr: &str,
    tx: &std::sync::mpsc::Sender<Inval>,
    passed: &Passed,
) -> Result<(), StreamError> {
    let channel = weft_proto::net::endpoint(addr)?
        .connect()
        .await
        .map(weft_proto::net::Channel::from)
        .map_err(|e| e.to_string())?;
    let mut client = pb::coherence_client::CoherenceClient::new(channel);
    let strict = w.kernel.strict();
    let epoch = EPOCH.fetch_add(1, Relaxed);
    let mut acker: Option<AbortOnDrop> = None;
    let mut stream = client
        .watch(pb::WatchReq {
            session: w.mds.session(),
            strict,
        })
        .await?
        .into_inner();
    // Anything changed between the last stream and this one is unknown (the
    // kernel's copies were invalidated when the last one ended). The MDS
    // subscribed this stream before answering, so from here on nothing is missed.
    w.drop_all_caches();
    w.kernel.stream_up();
    w.mds.meta.reset(w.kernel.long_enabled());
    loop {
        let batch = match tokio::time::timeout(LAG, stream.message()).await {
            Err(_) => return Err(format!("no message for {LAG:?}").into()),
            Ok(r) => match r? {
                Some(b) => b,
                None => return Ok(()),
            },
        };
        if strict && acker.is_none() && batch.watcher != 0 {
            acker = Some(AbortOnDrop(tokio::spawn(ack(
                w.clone(),
                client.clone(),
                batch.watcher,
                epoch,
                passed.clone(),
            ))));
        }
        if batch.overflow {
            tracing::info!("coherence pushes were dropped by the MDS; clearing caches");
            w.drop_all_caches();
            w.kernel.drop_all(true);
            w.mds.meta.reset(w.kernel.long_enabled());
        }
        // Directories whose names changed: the kernel's copy of their
        // listing (FOPEN_CACHE_DIR pages) goes with their attributes.
        let listings: std::collections::HashSet<u64> = batch
            .items
            .iter()
            .filter(|i| !i.name.is_empty())
            .map(|i| i.parent)
            .collect();
        for inv in batch.items {
            if inv.name.is_empty() {
                w.mds.attrs.invalidate(inv.ino);
                if inv.data {
                    w.locs.invalidate_file(inv.ino);
                    w.data.invalidate_file(inv.ino);
                }
            }
            if inv.name.is_empty() {
                w.mds.meta.invalidate_ino(inv.ino);
            } else {
                w.mds.meta.invalidate_entry(inv.parent, &inv.name);
            }
            let inv = if inv.name.is_empty() {
                Inval::Inode {
                    ino: inv.ino,
                    data: inv.data || listings.contains(&inv.ino),
                }
            } else {
                Inval::Entry {
                    parent: inv.parent,
                    name: inv.name,
                }
            };
            // Before the kernel sees it: replies racing with it notice.
            w.kernel.pushed();
            if tx.send(inv).is_err() {
                return Err("the invalidation thread is gone".into());
            }
        }
        if strict && batch.seq != 0 {
            let _ = tx.send(Inval::Barrier {
                epoch,
                seq: batch.seq,
            });
        }
    }
}

/// Strict mode: acknowledges the batches that reached the kernel, at once,
/// and renews the trust lease every RENEW.
async fn ack(
    w: Arc<Weft>,
    mut client: pb::coherence_client::CoherenceClient<weft_proto::net::Channel>,
    watcher: u64,
    epoch: u64,
    mut passed: Passed,
) {
    let mut seq = 0;
    loop {
        let sent = Instant::now();
        match client.ack(pb::AckReq { watcher, seq }).await {
            Ok(r) => {
                let r = r.into_inner();
                if r.granted {
                    w.kernel
                        .extend_trust(sent + Duration::from_millis(r.lease_ms));
                }
            }
            Err(e) => tracing::debug!(error = %e, "strict ack failed"),
        }
        if let Ok(Err(_)) = tokio::time::timeout(RENEW, passed.changed()).await {
            tokio::time::sleep(RENEW).await
        }
        let (e, s) = *passed.borrow_and_update();
        if e == epoch {
            seq = seq.max(s);
        }
    }
}

fn notify_kernel(
    notifier: Notifier,
    rx: std::sync::mpsc::Receiver<Inval>,
    passed: tokio::sync::watch::Sender<(u64, u64)>,
) {
    for inv in rx {
        // ENOENT: the kernel holds nothing for it, which is fine.
        let r = match &inv {
            Inval::Entry { parent, name } => {
                notifier.inval_entry(INodeNo(*parent), OsStr::from_bytes(name))
            }
            // Attributes and every cached page.
            Inval::Inode { ino, data: true } => notifier.inval_inode(INodeNo(*ino), 0, 0),
            // Attributes only.
            Inval::Inode { ino, data: false } => notifier.inval_inode(INodeNo(*ino), -1, 0),
            Inval::Barrier { epoch, seq } => {
                passed.send_replace((*epoch, *seq));
                Ok(())
            }
        };
        if let Err(e) = r {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!(error = %e, ?inv, "kernel invalidation failed");
            }
        }
    }
}
