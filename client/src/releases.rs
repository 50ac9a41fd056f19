//! Releases (the last close of each open file) go to the MDS a few at a time.
//!
//! The MDS counts each session's opens: an unlinked file is purged at its
//! last release, and write leases are lent only while the session holds a
//! write open. Nobody waits for a release (the kernel sends it after
//! close(2) returned), yet one call per closed file was a third of the MDS
//! calls of an untar or of reading small files back, competing for the same
//! cores as the calls someone waits for. So a release waits up to `GATHER`
//! for others and they go as one call (`ReleaseReq.more`), which the MDS
//! carries out as if each came alone. Holding a file open at the MDS a few
//! milliseconds longer only delays its purge, or lends a lease a little
//! longer to the session that just had it. Each release says whether this
//! mount still holds the file open (`held`): one that arrives after an MDS
//! restart forgot the opens then cannot purge a file another handle reads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use weft_proto::meta_request::Op;
use weft_proto::{Caller, ReleaseOne, ReleaseReq};

use crate::client::Weft;

/// How long the first queued release waits for company.
const GATHER: Duration = Duration::from_millis(3);
/// Most releases in one call.
const MAX_BATCH: usize = 512;

#[derive(Default)]
pub struct Releases {
    queue: Mutex<Vec<(ReleaseOne, Caller)>>,
    /// Queued or in a call not answered yet.
    pending: AtomicUsize,
    started: AtomicBool,
    queued: Notify,
    drained: Notify,
}

impl Releases {
    /// Queues the release of one open of `ino` (`write`: it was opened for
    /// writing); `w` sends it.
    pub fn push(self: &Arc<Self>, w: &Arc<Weft>, c: &Caller, ino: u64, write: bool) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.queue.lock().push((
            ReleaseOne {
                ino,
                write,
                held: false,
            },
            c.clone(),
        ));
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(send_loop(self.clone(), Arc::downgrade(w)));
        }
        self.queued.notify_one();
    }

    /// Waits until every release queued so far has been answered (unmount).
    pub async fn drain(&self) {
        loop {
            let drained = self.drained.notified();
            if self.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            drained.await;
        }
    }

    fn take(&self) -> Vec<(ReleaseOne, Caller)> {
        let mut q = self.queue.lock();
        let n = q.len().min(MAX_BATCH);
        q.drain(..n).collect()
    }

    fn done(&self, n: usize) {
        if self.pending.fetch_sub(n, Ordering::AcqRel) == n {
            self.drained.notify_waiters();
        }
    }
}

/// One call per gathered batch, until the client is gone.
async fn send_loop(r: Arc<Releases>, w: Weak<Weft>) {
    loop {
        let queued = r.queued.notified();
        if r.queue.lock().is_empty() {
            queued.await;
            continue;
        }
        tokio::time::sleep(GATHER).await;
        let batch = r.take();
        let Some(((first, caller), rest)) = batch.split_first() else {
            continue;
        };
        let Some(weft) = w.upgrade() else {
            r.done(batch.len());
            return;
        };
        // Whether this mount still holds each file open, as of now.
        let held = |one: &ReleaseOne| ReleaseOne {
            held: weft.files.opens(one.ino) > 0,
            ..*one
        };
        let first = held(first);
        let req = ReleaseReq {
            ino: first.ino,
            write: first.write,
            more: rest.iter().map(|(one, _)| held(one)).collect(),
            held: first.held,
        };
        // The MDS client retries through an MDS restart; past that the
        // session's expiry ends these opens anyway.
        if let Err(e) = weft.mds.empty(caller, Op::Release(req)).await {
            tracing::warn!(releases = batch.len(), error = %e, "releasing opens failed");
        }
        drop(weft);
        r.done(batch.len());
    }
}
