//! Cache coherence pushes: what each committed record made stale, fanned out
//! to every mount's `Coherence.Watch` stream except the one that made it.
//!
//! Invariants: the committer publishes a batch only after its log append is
//! durable (so a mount never drops a cache for a change that could still be
//! lost, and the next lookup it makes sees the change); batches go out in
//! commit order; a watcher that falls behind the bounded channel gets
//! `overflow` (drop everything) rather than a silent gap, and an empty batch
//! goes out every `TICK` so a silent stream is noticed. Mounts keep names and
//! attributes long only while their stream is live; on a gap they invalidate
//! everything and fall back to their short TTLs.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_stream::{Stream, StreamExt};
use weft_proto::pb;

use crate::ns::Record;

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
}

pub struct Hub {
    tx: broadcast::Sender<Arc<Vec<Event>>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(CHANNEL).0,
        }
    }
}

impl Hub {
    /// Called by the committer after the batch is durable.
    pub fn publish(&self, events: Vec<Event>) {
        if !events.is_empty() && self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(events));
        }
    }

    /// The stream of invalidations for `session`: everyone's changes but its own.
    pub fn watch(
        &self,
        session: u64,
    ) -> Pin<Box<dyn Stream<Item = Result<pb::Invalidations, tonic::Status>> + Send>> {
        let rx = tokio_stream::wrappers::BroadcastStream::new(self.tx.subscribe());
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ticks = tokio_stream::wrappers::IntervalStream::new(tick).map(|_| {
            Ok(pb::Invalidations {
                items: vec![],
                overflow: false,
            })
        });
        let changes = rx.filter_map(move |r| match r {
            Ok(batch) => {
                let items: Vec<_> = batch
                    .iter()
                    .filter(|e| e.origin != session)
                    .flat_map(|e| e.items.iter().cloned())
                    .collect();
                (!items.is_empty()).then_some(Ok(pb::Invalidations {
                    items,
                    overflow: false,
                }))
            }
            Err(_lagged) => Some(Ok(pb::Invalidations {
                items: vec![],
                overflow: true,
            })),
        });
        Box::pin(changes.merge(ticks))
    }
}

/// The `Coherence` gRPC service.
pub struct Service(pub Arc<Hub>);

#[tonic::async_trait]
impl pb::coherence_server::Coherence for Service {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Invalidations, tonic::Status>> + Send>>;

    async fn watch(
        &self,
        req: tonic::Request<pb::WatchReq>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Ok(tonic::Response::new(self.0.watch(req.into_inner().session)))
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
        Record::SetXattr { ino, .. } | Record::RemoveXattr { ino, .. } => vec![inode(*ino, false)],
        Record::AllocChunk { ino, .. } | Record::CommitWrite { ino, .. } => vec![inode(*ino, true)],
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
        let hub = Hub::default();
        let mut s = hub.watch(7);
        hub.publish(vec![Event {
            origin: 7,
            items: vec![inode(5, true)],
        }]);
        hub.publish(vec![Event {
            origin: 8,
            items: vec![inode(6, false)],
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
}
