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
//!
//! Access-time updates after reads (atime.rs) wait in the same queue: a
//! small file read whole is opened, read and closed within microseconds, so
//! its atime update and its release go in the same call, which the MDS
//! answers with the updated attributes (`Attrs`). Someone who needs an
//! update now (a stat right after a read, `Weft::wait_atime`) sends the
//! queue at once (`kick`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use weft_proto::meta_reply::Result as R;
use weft_proto::meta_request::Op;
use weft_proto::{AtimeOne, Caller, ReleaseOne, ReleaseReq};

use crate::client::Weft;

/// How long the first queued release waits for company.
const GATHER: Duration = Duration::from_millis(3);
/// Most releases in one call.
const MAX_BATCH: usize = 512;

/// What waits in the queue.
enum Item {
    Release(ReleaseOne),
    Atime(AtimeOne),
}

#[derive(Default)]
pub struct Releases {
    queue: Mutex<Vec<(Item, Caller)>>,
    /// Queued or in a call not answered yet.
    pending: AtomicUsize,
    started: AtomicBool,
    queued: Notify,
    /// Send what is queued without waiting for company.
    kicked: Notify,
    drained: Notify,
}

impl Releases {
    /// Queues the release of one open of `ino` (`write`: it was opened for
    /// writing); `w` sends it.
    pub fn push(self: &Arc<Self>, w: &Arc<Weft>, c: &Caller, ino: u64, write: bool) {
        let one = ReleaseOne {
            ino,
            write,
            held: false,
        };
        self.enqueue(w, c, Item::Release(one));
    }

    /// Queues an access-time update of `ino` (`how`: SetAttrReq.atime_update).
    pub fn push_atime(self: &Arc<Self>, w: &Arc<Weft>, c: &Caller, ino: u64, how: u32) {
        self.enqueue(w, c, Item::Atime(AtimeOne { ino, how }));
    }

    fn enqueue(self: &Arc<Self>, w: &Arc<Weft>, c: &Caller, item: Item) {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.queue.lock().push((item, c.clone()));
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(send_loop(self.clone(), Arc::downgrade(w)));
        }
        self.queued.notify_one();
    }

    /// Sends what is queued now rather than after `GATHER`.
    pub fn kick(&self) {
        self.kicked.notify_one();
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

    fn take(&self) -> Vec<(Item, Caller)> {
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
        tokio::select! {
            _ = tokio::time::sleep(GATHER) => {}
            _ = r.kicked.notified() => {}
        }
        let batch = r.take();
        let Some((_, caller)) = batch.first() else {
            continue;
        };
        let Some(weft) = w.upgrade() else {
            r.done(batch.len());
            return;
        };
        // Whether this mount still holds each file open, as of now.
        let mut releases = Vec::new();
        let mut atimes = Vec::new();
        let mut atime_inos = Vec::new();
        for (item, _) in &batch {
            match item {
                Item::Release(one) => releases.push(ReleaseOne {
                    held: weft.files.opens(one.ino) > 0,
                    ..*one
                }),
                Item::Atime(a) => {
                    atimes.push(*a);
                    atime_inos.push(a.ino);
                }
            }
        }
        let first = if releases.is_empty() {
            // Ino 0: no release of its own.
            ReleaseOne::default()
        } else {
            releases.remove(0)
        };
        let req = ReleaseReq {
            ino: first.ino,
            write: first.write,
            more: releases,
            held: first.held,
            atimes,
        };
        // The MDS client retries through an MDS restart; past that the
        // session's expiry ends these opens anyway. The atime updates'
        // answers are in the caches (mds_client.rs) when this returns.
        let answered = match weft.mds.call(caller, Op::Release(req)).await {
            Ok(R::Attrs(list)) => list.attrs,
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::warn!(calls = batch.len(), error = %e, "releasing opens failed");
                Vec::new()
            }
        };
        weft.atimes_sent(&atime_inos, &answered);
        drop(weft);
        r.done(batch.len());
    }
}
