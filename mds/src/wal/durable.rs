//! Early replies: the commit thread writes each batch to the log (page cache:
//! it survives a kill -9 of the MDS, not a power loss) and answers; the sync
//! thread here fdatasyncs the log continuously while something written is not
//! yet durable, so the durable index trails the appended one by about one
//! fsync, with no timer. Callers that promise durability (a client's fsync or
//! close) wait on `durable` (see `Durability::wait`).
//!
//! Invariants: `durable <= appended`; both only grow; everything at or below
//! `durable` is on disk, because one fdatasync covers every byte written to
//! the file before it started, and a segment is synced before the log moves on
//! to the next one (`LogWriter` does that itself). A failed fdatasync aborts the
//! MDS: the kernel may have dropped the dirty pages, so memory is ahead of the
//! disk and only a replay can reconcile them.

use parking_lot::{Condvar, Mutex};
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub struct Durability {
    tail: Mutex<Tail>,
    wake: Condvar,
    appended: AtomicU64,
    durable: watch::Sender<u64>,
}

struct Tail {
    /// The segment being appended to.
    file: Arc<File>,
    /// Highest index written to `file` (or an earlier, already synced, segment).
    appended: u64,
    durable: u64,
}

impl Durability {
    /// `file` is the current segment, whose every entry up to `durable` is on disk.
    pub fn new(file: Arc<File>, durable: u64) -> Arc<Self> {
        Arc::new(Durability {
            tail: Mutex::new(Tail {
                file,
                appended: durable,
                durable,
            }),
            wake: Condvar::new(),
            appended: AtomicU64::new(durable),
            durable: watch::Sender::new(durable),
        })
    }

    /// Highest index written to the log (applied and visible to readers).
    pub fn appended(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    /// Highest index on disk.
    /// An MDS group answers only what a majority holds on disk, so written
    /// and durable move together to the applied index.
    pub fn advance(&self, index: u64) {
        {
            let mut t = self.tail.lock();
            t.appended = t.appended.max(index);
        }
        self.appended.fetch_max(index, Ordering::AcqRel);
        self.synced(index);
    }

    pub fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Entries up to `index` were written to `file` (the current segment).
    pub(super) fn wrote(&self, file: &Arc<File>, index: u64) {
        let mut t = self.tail.lock();
        if !Arc::ptr_eq(&t.file, file) {
            t.file = file.clone();
        }
        t.appended = t.appended.max(index);
        self.appended.fetch_max(index, Ordering::AcqRel);
        drop(t);
        self.wake.notify_one();
    }

    /// Entries up to `index` are on disk.
    pub(super) fn synced(&self, index: u64) {
        {
            let mut t = self.tail.lock();
            t.durable = t.durable.max(index);
        }
        self.durable.send_if_modified(|d| {
            let moved = index > *d;
            *d = (*d).max(index);
            moved
        });
    }

    /// Waits until every entry up to `index` is on disk.
    pub async fn wait(&self, index: u64) {
        let mut rx = self.durable.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = rx.wait_for(|d| *d >= index).await;
    }

    /// Starts the sync thread. `delay` (a test hook, normally zero) is slept
    /// before each fdatasync, to make the lag observable.
    pub fn start_sync_thread(self: &Arc<Self>, delay: Duration) {
        let me = self.clone();
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || me.sync_loop(delay))
            .expect("spawn the log sync thread");
    }

    fn sync_loop(&self, delay: Duration) {
        loop {
            let (file, upto) = {
                let mut t = self.tail.lock();
                while t.appended <= t.durable {
                    self.wake.wait(&mut t);
                }
                (t.file.clone(), t.appended)
            };
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            let timer = weft_metrics::Timer::start();
            if let Err(e) = file.sync_data() {
                tracing::error!("write-ahead log fdatasync failed, aborting so a restart replays what is durable: {e}");
                std::process::abort();
            }
            crate::metrics::M.wal_sync.since(timer);
            self.synced(upto);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn the_sync_thread_follows_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(File::create(dir.path().join("seg")).unwrap());
        let d = Durability::new(file.clone(), 5);
        assert_eq!((d.appended(), d.durable()), (5, 5));
        // Not started yet: written but not durable.
        (&*file).write_all(b"entries 6 to 9").unwrap();
        d.wrote(&file, 9);
        assert_eq!((d.appended(), d.durable()), (9, 5));
        d.start_sync_thread(Duration::from_millis(50));
        tokio::time::timeout(Duration::from_secs(10), d.wait(9))
            .await
            .expect("durable reaches 9");
        assert_eq!(d.durable(), 9);
        // Waiting for what is already durable returns at once; durable never goes back.
        d.synced(3);
        d.wait(7).await;
        assert_eq!(d.durable(), 9);
    }
}
