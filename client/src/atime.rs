//! Access-time updates after reads and directory listings.
//!
//! FUSE leaves atime to the file system (the kernel marks FUSE inodes
//! S_NOATIME), and weftfs reads data from the chunk daemons, so the MDS only
//! learns of a read when weftfs tells it. Policy by mount option: relatime
//! (default: update when atime is not after mtime/ctime or a day old, as
//! Linux does), strictatime (every read), noatime (never).
//!
//! Updates run in the background (a read never waits for one, but a getattr
//! of the inode does, so a stat right after a read shows it) and at most
//! one per inode is in flight; under relatime the cached attributes filter
//! out reads that need no update, so a file read many times costs at most
//! one MDS call per attribute-cache period.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use weft_proto::{Attr, Caller, Timespec};

use crate::client::Weft;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AtimeMode {
    #[default]
    Relatime,
    Strict,
    Never,
}

const RELATIME: u32 = 1;
const STRICT: u32 = 2;
const DAY_SECS: i64 = 24 * 60 * 60;

#[derive(Default)]
pub struct Atime {
    pub mode: AtimeMode,
    in_flight: Mutex<HashSet<u64>>,
    /// Signalled whenever an update finishes.
    done: tokio::sync::Notify,
}

impl Atime {
    pub fn new(mode: AtimeMode) -> Atime {
        Atime {
            mode,
            in_flight: Mutex::default(),
            done: tokio::sync::Notify::new(),
        }
    }
}

fn key(t: Option<&Timespec>) -> (i64, u32) {
    t.map_or((0, 0), |t| (t.sec, t.nsec))
}

/// `relatime_need_update` on cached attributes.
fn relatime_due(a: &Attr, now_sec: i64) -> bool {
    let at = key(a.atime.as_ref());
    at <= key(a.mtime.as_ref()) || at <= key(a.ctime.as_ref()) || now_sec - at.0 >= DAY_SECS
}

impl Weft {
    /// Whether an atime update of `ino` is on its way to the MDS.
    pub fn atime_in_flight(&self, ino: u64) -> bool {
        self.atime.in_flight.lock().contains(&ino)
    }

    /// Returns once no atime update of `ino` is in flight, so attributes
    /// fetched next include it.
    pub async fn wait_atime(&self, ino: u64) {
        loop {
            let done = self.atime.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !self.atime_in_flight(ino) {
                return;
            }
            self.releases.kick();
            done.await;
        }
    }

    /// Whether a listing of a directory with attributes `a` may skip its
    /// atime update (so the kernel may serve it from its cache, which
    /// weftfs never sees): never under strictatime; under relatime once the
    /// atime is past mtime and ctime and less than a day old.
    pub fn listing_needs_no_atime(&self, a: &Attr) -> bool {
        match self.atime.mode {
            AtimeMode::Never => true,
            AtimeMode::Strict => false,
            AtimeMode::Relatime => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                !relatime_due(a, now)
            }
        }
    }

    /// Called after a successful read or readdir of `ino`.
    pub fn touch_atime(self: &Arc<Self>, c: &Caller, ino: u64) {
        let how = match self.atime.mode {
            AtimeMode::Never => return,
            AtimeMode::Strict => STRICT,
            AtimeMode::Relatime => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                if let Some(a) = self.mds.attrs.get(ino) {
                    if !relatime_due(&a, now) {
                        return;
                    }
                }
                RELATIME
            }
        };
        if !self.atime.in_flight.lock().insert(ino) {
            return;
        }
        // With the file's release, usually (releases.rs). The caches keep
        // the answer only if no other change of the file overlapped it
        // (cache/attr.rs, cache/meta.rs): an older size kept would make a
        // read short, which the kernel takes as EOF.
        self.releases.push_atime(self, c, ino, how);
    }

    /// The updates of `inos` were sent; `answered`: the attributes the MDS
    /// gave back (the caches kept them, mds_client.rs).
    pub(crate) fn atimes_sent(&self, inos: &[u64], answered: &[Attr]) {
        // A directory's next opendir decides by its atime whether the
        // kernel may list it from cache: it asks the MDS.
        for a in answered {
            if a.kind == weft_proto::FileKind::Directory as i32 {
                self.mds.attrs.invalidate(a.ino);
            }
        }
        let mut any = false;
        {
            let mut f = self.atime.in_flight.lock();
            for ino in inos {
                any |= f.remove(ino);
            }
        }
        if any {
            self.atime.done.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(sec: i64) -> Option<Timespec> {
        Some(Timespec { sec, nsec: 0 })
    }

    #[test]
    fn relatime_filter() {
        let a = Attr {
            atime: ts(10),
            mtime: ts(20),
            ctime: ts(20),
            ..Default::default()
        };
        assert!(relatime_due(&a, 30));
        let a = Attr { atime: ts(30), ..a };
        assert!(!relatime_due(&a, 40));
        assert!(relatime_due(&a, 30 + DAY_SECS));
    }
}
