//! The mount's end of `Coherence.Watch`: the MDS pushes what other mounts'
//! committed changes made stale, and this drops it from weftfs's caches and
//! from the kernel's (FUSE notify_inval_entry / notify_inval_inode).
//!
//! Invariants: kernel notifications are sent from one dedicated thread, never
//! from a tokio worker or a request handler: an inval_entry waits for the
//! directory's lock, which a lookup that is itself waiting on weftfs may hold.
//! When the stream breaks or the MDS reports `overflow`, pushes may have been
//! missed, so every weftfs cache is cleared; the kernel's copies then expire
//! by their TTL (`attr_timeout`/`entry_timeout`), which stays the bound.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use fuser::{INodeNo, Notifier};
use weft_proto::pb;

use crate::client::Weft;
use crate::mds_client::endpoint;

/// Starts the watcher on the runtime and the notifying thread. Runs until the
/// process exits.
pub fn start(w: Arc<Weft>, mds_addr: String, notifier: Notifier, rt: &tokio::runtime::Handle) {
    let (tx, rx) = std::sync::mpsc::channel::<pb::Invalidation>();
    std::thread::Builder::new()
        .name("weftfs-inval".into())
        .spawn(move || notify_kernel(notifier, rx))
        .expect("spawn the invalidation thread");
    rt.spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match watch_once(&w, &mds_addr, &tx).await {
                Ok(()) => tracing::info!("coherence stream ended; reconnecting"),
                Err(e) => tracing::debug!(error = %e, "coherence stream failed; reconnecting"),
            }
            // Pushes may have been missed while disconnected.
            w.drop_all_caches();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
}

async fn watch_once(
    w: &Weft,
    addr: &str,
    tx: &std::sync::mpsc::Sender<pb::Invalidation>,
) -> Result<(), String> {
    let channel = endpoint(addr)?.connect().await.map_err(|e| e.to_string())?;
    let mut client = pb::coherence_client::CoherenceClient::new(channel);
    let mut stream = client
        .watch(pb::WatchReq {
            session: w.mds.session(),
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    // Anything changed between the last stream and this one is unknown.
    w.drop_all_caches();
    while let Some(batch) = stream.message().await.map_err(|e| e.to_string())? {
        if batch.overflow {
            tracing::info!("coherence pushes were dropped by the MDS; clearing caches");
            w.drop_all_caches();
        }
        for inv in batch.items {
            if inv.name.is_empty() {
                w.attrs.invalidate(inv.ino);
                if inv.data {
                    w.locs.invalidate_file(inv.ino);
                    w.data.invalidate_file(inv.ino);
                }
            }
            if tx.send(inv).is_err() {
                return Err("the invalidation thread is gone".into());
            }
        }
    }
    Ok(())
}

fn notify_kernel(notifier: Notifier, rx: std::sync::mpsc::Receiver<pb::Invalidation>) {
    for inv in rx {
        // ENOENT: the kernel holds nothing for it, which is fine.
        let r = if !inv.name.is_empty() {
            notifier.inval_entry(INodeNo(inv.parent), OsStr::from_bytes(&inv.name))
        } else if inv.data {
            // Attributes and every cached page.
            notifier.inval_inode(INodeNo(inv.ino), 0, 0)
        } else {
            // Attributes only.
            notifier.inval_inode(INodeNo(inv.ino), -1, 0)
        };
        if let Err(e) = r {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::debug!(error = %e, ?inv, "kernel invalidation failed");
            }
        }
    }
}
