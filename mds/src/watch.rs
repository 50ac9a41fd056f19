//! Cache coherence pushes: what each committed record made stale, fanned out
//! to every mount's `Coherence.Watch` stream except the one that made it.
//!
//! Invariants: the committer publishes a batch only after it is written to
//! the log (the page cache; the fdatasync follows right behind, see
//! `wal::durable`), so the next lookup a mount makes after a push sees the
//! change, as every reader could already; batches go out in
//! commit order; a watcher that falls behind the bounded channel gets
//! `overflow` (drop everything) rather than a silent gap, and an empty batch
//! goes out every `TICK` so a silent stream is noticed. Mounts keep names and
//! attributes long only while their stream is live; on a gap they invalidate
//! everything and fall back to their short TTLs.
//!
//! A mount of a subtree export hears only of what lies inside its subtree
//! (`Event::inside`): names and inode numbers elsewhere are never sent to it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{broadcast, Notify};
use tokio_stream::{Stream, StreamExt};
use weft_proto::pb;

use crate::ns::{Namespace, Record, ROOT_INO};
use crate::strict::{Table, LEASE};

/// Batches a slow watcher may lag before it is told `overflow`.
const CHANNEL: usize = 4096;

/// An empty batch goes out this often, so a mount whose stream went silent
/// (a hung MDS, a cut link) notices within its lag bound and falls back to
/// short kernel TTLs instead of trusting pushes that no longer come.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// One committed record's invalidations, tagged with the session that made it.
#[derive(Clone, Debug)]
pub struct Event {
    pub origin: u64,
    pub items: Vec<pb::Invalidation>,
    /// For each subtree export watched when the record was committed (its
    /// directory's inode): which `items` lie inside it, bit i for items[i].
    /// A watch of a subtree not listed gets `overflow` for this event.
    pub inside: Vec<(u64, u64)>,
}

impl Event {
    /// What `record` made stale, by `origin`, scoped for the watched subtree
    /// exports `tops`. `ns` is the state before the record applies, where a
    /// mount could have seen what the record changes: an entry counts as
    /// inside by its directory, an inode by its links (a file renamed out of
    /// a subtree is still invalidated there; one renamed in was never seen).
    pub fn new(origin: u64, record: &Record, ns: &Namespace, tops: &[u64]) -> Event {
        let items = invalidations(record);
        debug_assert!(items.len() <= 64);
        let inside = tops
            .iter()
            .map(|&top| {
                let mut mask = 0u64;
                for (i, it) in items.iter().enumerate().take(64) {
                    let ino = if it.name.is_empty() {
                        it.ino
                    } else {
                        it.parent
                    };
                    if ns.within(top, ino) {
                        mask |= 1 << i;
                    }
                }
                (top, mask)
            })
            .collect();
        Event {
            origin,
            items,
            inside,
        }
    }
}

type Batch = Arc<(u64, Vec<Event>)>;

pub struct Hub {
    tx: broadcast::Sender<Batch>,
    /// Strict watchers (strict.rs). Publishing and subscribing happen under
    /// this lock, so a watcher owes exactly the batches its stream carries.
    strict: Mutex<Table>,
    acked: Notify,
    /// Subtree watches: exported directory inode → how many streams.
    subtrees: Mutex<std::collections::HashMap<u64, usize>>,
    /// Set when the MDS stops (`close`): every stream ends.
    closed: tokio::sync::watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(false)
    }
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Invalidations, tonic::Status>> + Send>>;

/// Marks a strict watch ended when its stream is dropped.
struct Registered {
    hub: Arc<Hub>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.hub.strict.lock().gone(self.id);
    }
}

/// Counts a subtree watch while its stream lives.
struct Scoped {
    hub: Arc<Hub>,
    top: u64,
}

impl Drop for Scoped {
    fn drop(&mut self) {
        let mut m = self.hub.subtrees.lock();
        if let Some(n) = m.get_mut(&self.top) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.top);
            }
        }
    }
}

impl Hub {
    /// `restarted`: the MDS recovered state, so strict mounts of its previous
    /// run may still trust their caches for up to one lease.
    pub fn new(restarted: bool) -> Self {
        Hub {
            tx: broadcast::channel(CHANNEL).0,
            strict: Mutex::new(Table::new(Instant::now(), restarted)),
            acked: Notify::new(),
            subtrees: Mutex::new(Default::default()),
            closed: tokio::sync::watch::channel(false).0,
        }
    }

    /// The MDS is stopping: every stream ends with "not leader" (a mount
    /// watches again, at its next address), so the server's graceful
    /// shutdown, which waits for open streams, can finish.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// The directories of the subtree exports being watched now: the
    /// committer scopes each batch's events for them (`Event::new`).
    pub fn subtrees(&self) -> Vec<u64> {
        self.subtrees.lock().keys().copied().collect()
    }

    /// Called by the committer after the batch is durable. Returns the batch
    /// number, for `must_wait`.
    pub fn publish(&self, events: Vec<Event>) -> u64 {
        let origins: Vec<u64> = events
            .iter()
            .filter(|e| !e.items.is_empty())
            .map(|e| e.origin)
            .collect();
        let mut table = self.strict.lock();
        if origins.is_empty() {
            return 0;
        }
        let seq = table.publish(&origins, Instant::now());
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new((seq, events)));
        }
        seq
    }

    /// Whether the answer to `origin`'s change in batch `seq` must wait for
    /// strict watchers (then `wait`, off the commit thread).
    pub fn must_wait(&self, seq: u64, origin: u64) -> bool {
        let now = Instant::now();
        let table = self.strict.lock();
        seq != 0 && table.any(now) && table.pending(seq, origin, now).is_some()
    }

    /// Until every strict watcher of another session acknowledged batch `seq`
    /// or its lease ran out.
    pub async fn wait(&self, seq: u64, origin: u64) {
        loop {
            let notified = self.acked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some(until) = self.strict.lock().pending(seq, origin, Instant::now()) else {
                return;
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    /// A strict watcher acknowledged every batch up to `seq`.
    pub fn ack(&self, watcher: u64, seq: u64) -> bool {
        let granted = self.strict.lock().ack(watcher, seq, Instant::now());
        self.acked.notify_waiters();
        granted
    }

    /// The stream of invalidations for `session`: everyone's changes but its
    /// own, and of those only what lies inside `top` (the mount's exported
    /// directory; ROOT_INO: everything). A strict watch's messages carry its
    /// id and batch numbers.
    pub fn watch(self: &Arc<Self>, session: u64, strict: bool, top: u64) -> WatchStream {
        // Counted before subscribing: every batch this stream receives was
        // scoped for `top`, except one judged in between (then `overflow`).
        let scoped = (top != ROOT_INO).then(|| {
            *self.subtrees.lock().entry(top).or_insert(0) += 1;
            Scoped {
                hub: self.clone(),
                top,
            }
        });
        let (rx, registered) = {
            let mut table = self.strict.lock();
            let rx = self.tx.subscribe();
            let registered = strict.then(|| Registered {
                hub: self.clone(),
                id: table.register(session, Instant::now()),
            });
            (rx, registered)
        };
        let watcher = registered.as_ref().map_or(0, |r| r.id);
        let rx = tokio_stream::wrappers::BroadcastStream::new(rx);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ticks = tokio_stream::wrappers::IntervalStream::new(tick).map(move |_| {
            Ok(pb::Invalidations {
                items: vec![],
                overflow: false,
                seq: 0,
                watcher,
            })
        });
        let changes = rx.filter_map(move |r| {
            // Live as long as the stream.
            let _ = (&registered, &scoped);
            match r {
                Ok(batch) => {
                    let (seq, events) = &*batch;
                    let (mut items, mut owed, mut overflow) = (Vec::new(), false, false);
                    for e in events.iter().filter(|e| e.origin != session) {
                        owed |= !e.items.is_empty();
                        if top == ROOT_INO {
                            items.extend(e.items.iter().cloned());
                            continue;
                        }
                        match e.inside.iter().find(|(t, _)| *t == top) {
                            Some(&(_, mask)) => items.extend(
                                e.items
                                    .iter()
                                    .enumerate()
                                    .filter(|(i, _)| mask & (1 << i) != 0)
                                    .map(|(_, it)| it.clone()),
                            ),
                            None => overflow |= !e.items.is_empty(),
                        }
                    }
                    // A strict watcher acknowledges every batch it is owed,
                    // even one with nothing inside its subtree.
                    let send = !items.is_empty() || overflow || (owed && watcher != 0);
                    send.then_some(Ok(pb::Invalidations {
                        items,
                        overflow,
                        seq: *seq,
                        watcher,
                    }))
                }
                Err(_lagged) => Some(Ok(pb::Invalidations {
                    items: vec![],
                    overflow: true,
                    seq: 0,
                    watcher,
                })),
            }
        });
        let closed = tokio_stream::wrappers::WatchStream::new(self.closed.subscribe())
            .filter_map(|closed| closed.then(|| Err(weft_proto::leader::not_leader(None))));
        // A stream ends at its first error.
        Box::pin(changes.merge(ticks).merge(closed))
    }
}

/// The `Coherence` gRPC service.
pub struct Service(pub Arc<Hub>);

#[tonic::async_trait]
impl pb::coherence_server::Coherence for Service {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: tonic::Request<pb::WatchReq>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        let r = req.into_inner();
        Ok(tonic::Response::new(
            self.0.watch(r.session, r.strict, ROOT_INO),
        ))
    }

    async fn ack(
        &self,
        req: tonic::Request<pb::AckReq>,
    ) -> Result<tonic::Response<pb::AckReply>, tonic::Status> {
        let r = req.into_inner();
        Ok(tonic::Response::new(pb::AckReply {
            granted: self.0.ack(r.watcher, r.seq),
            lease_ms: LEASE.as_millis() as u64,
        }))
    }
}

fn inode(ino: u64, data: bool) -> pb::Invalidation {
    pb::Invalidation {
        ino,
        data,
        ..Default::default()
    }
}

fn entry(parent: u64, name: &[u8]) -> pb::Invalidation {
    pb::Invalidation {
        parent,
        name: name.to_vec(),
        ..Default::default()
    }
}

/// What `record` makes stale in a client's caches. Parents are included
/// because their mtime, ctime and link count change with their entries.
pub fn invalidations(record: &Record) -> Vec<pb::Invalidation> {
    match record {
        Record::Create { parent, name, .. } => vec![entry(*parent, name), inode(*parent, false)],
        Record::Link {
            ino,
            new_parent,
            new_name,
            ..
        } => vec![
            entry(*new_parent, new_name),
            inode(*new_parent, false),
            inode(*ino, false),
        ],
        Record::Remove {
            parent, name, ino, ..
        } => vec![
            entry(*parent, name),
            inode(*parent, false),
            inode(*ino, false),
        ],
        Record::Rename {
            parent,
            name,
            new_parent,
            new_name,
            ino,
            replaced,
            ..
        } => {
            let mut v = vec![
                entry(*parent, name),
                entry(*new_parent, new_name),
                inode(*parent, false),
                inode(*ino, false),
            ];
            if new_parent != parent {
                v.push(inode(*new_parent, false));
            }
            if let Some(r) = replaced {
                v.push(inode(*r, false));
            }
            v
        }
        Record::SetAttr { ino, size, .. } => vec![inode(*ino, size.is_some())],
        Record::SetXattr { ino, .. }
        | Record::RemoveXattr { ino, .. }
        | Record::SetAcl { ino, .. } => vec![inode(*ino, false)],
        // The whiteout is the source name's new entry: the rename's own list.
        Record::RenameWhiteout { rename, .. } => invalidations(rename),
        Record::AllocChunk { ino, .. } | Record::CommitWrite { ino, .. } => vec![inode(*ino, true)],
        // A packed file's size and data, or where its data is (a cached
        // needle location must go once the file has a chunk instead).
        Record::CommitPacked { ino, .. } | Record::Unpack { ino, .. } => vec![inode(*ino, true)],
        // A hidden segment no cache holds; an unpack's chunk is not the
        // file's until `Unpack`.
        Record::CreateSegment { .. } | Record::BeginUnpack { .. } | Record::CompactBegin { .. } => {
            vec![]
        }
        // Where each moved file's data is: a cached needle location must go
        // (a stale one would fail once the old segment's chunk is deleted,
        // and the reader would ask again; this saves that round).
        Record::CompactSegments { moves, .. } => moves.iter().map(|m| inode(m.ino, true)).collect(),
        // Only st_blocks changes when `now` is None: no data to drop.
        Record::CommitAlloc { ino, now, .. } => vec![inode(*ino, now.is_some())],
        // The inode is gone: nobody can reach it by name any more.
        Record::Purge { .. } => vec![],
        #[allow(unreachable_patterns)]
        // A variant added later invalidates nothing until it is listed here;
        // the kernel TTL still bounds staleness.
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::Time;

    #[test]
    fn rename_invalidates_both_names_and_the_replaced_inode() {
        let r = Record::Rename {
            parent: 1,
            name: b"a".to_vec(),
            new_parent: 2,
            new_name: b"b".to_vec(),
            ino: 10,
            replaced: Some(11),
            exchange: false,
            purge: false,
            now: Time::default(),
        };
        let v = invalidations(&r);
        assert!(v.iter().any(|i| i.parent == 1 && i.name == b"a"));
        assert!(v.iter().any(|i| i.parent == 2 && i.name == b"b"));
        for ino in [1, 2, 10, 11] {
            assert!(v.iter().any(|i| i.ino == ino && i.name.is_empty()), "{ino}");
        }
    }

    #[tokio::test]
    async fn a_watcher_sees_others_changes_not_its_own() {
        let hub = Arc::new(Hub::default());
        let mut s = hub.watch(7, false, ROOT_INO);
        hub.publish(vec![Event {
            origin: 7,
            items: vec![inode(5, true)],
            inside: vec![],
        }]);
        hub.publish(vec![Event {
            origin: 8,
            items: vec![inode(6, false)],
            inside: vec![],
        }]);
        // Ticks (empty batches) may come first.
        let got = loop {
            let b = s.next().await.unwrap().unwrap();
            if !b.items.is_empty() {
                break b;
            }
        };
        assert_eq!(got.items, vec![inode(6, false)]);
    }

    #[tokio::test]
    async fn a_change_is_answered_after_the_strict_watcher_acks_it() {
        let hub = Arc::new(Hub::default());
        let mut s = hub.watch(2, true, ROOT_INO);
        let first = s.next().await.unwrap().unwrap();
        let id = first.watcher;
        assert!(
            id != 0 && hub.ack(id, 0),
            "a strict watch gets an id and a lease"
        );
        let seq = hub.publish(vec![Event {
            origin: 1,
            items: vec![inode(6, false)],
            inside: vec![],
        }]);
        assert!(hub.must_wait(seq, 1));
        assert!(!hub.must_wait(seq, 2), "never for its own change");
        let waiting = tokio::spawn({
            let hub = hub.clone();
            async move { hub.wait(seq, 1).await }
        });
        let got = loop {
            let b = s.next().await.unwrap().unwrap();
            if !b.items.is_empty() {
                break b;
            }
        };
        assert_eq!(got.seq, seq);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "answered before the ack");
        assert!(hub.ack(id, seq));
        tokio::time::timeout(std::time::Duration::from_millis(500), waiting)
            .await
            .expect("answered once acked")
            .unwrap();
    }
}
