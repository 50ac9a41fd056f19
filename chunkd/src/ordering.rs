//! Per-chunk ordering of pipelined mutations.
//!
//! Each hop holds its chunk's turn from the moment it starts a write (or
//! truncate) until its own copy and everything downstream have finished. The
//! primary therefore hands a chunk's mutations down the chain one at a time, in
//! the order it took them, and every secondary applies them in that same order:
//! two clients writing overlapping ranges at once leave identical bytes on every
//! replica (the role GFS gives the primary's serial numbers). Leases guarantee a
//! single primary per chunk, so no secondary sees two upstreams for one chunk.
//! Different chunks never wait for each other.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

type Turn = Arc<tokio::sync::Mutex<()>>;

#[derive(Default)]
pub struct ChunkOrder {
    turns: Mutex<HashMap<u64, Turn>>,
}

/// Holding this is holding the chunk's turn; dropping it passes the turn on
/// (and forgets the chunk's entry when nobody else is waiting).
pub struct TurnGuard<'a> {
    order: &'a ChunkOrder,
    chunk: u64,
    turn: Turn,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl ChunkOrder {
    /// Waits (FIFO, as tokio's mutex is fair) for `chunk`'s turn.
    pub async fn turn(&self, chunk: u64) -> TurnGuard<'_> {
        let turn = self.turns.lock().entry(chunk).or_default().clone();
        let guard = turn.clone().lock_owned().await;
        TurnGuard {
            order: self,
            chunk,
            turn,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.turns.lock().len()
    }
}

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut turns = self.order.turns.lock();
        // The map's copy and ours: nobody else holds or awaits this turn.
        if Arc::strong_count(&self.turn) == 2 {
            turns.remove(&self.chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_at_a_time_per_chunk_in_arrival_order_and_forgotten_after() {
        let order = Arc::new(ChunkOrder::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let first = order.turn(7).await;
        let mut waiters = Vec::new();
        for i in 0..5 {
            let (order, log) = (order.clone(), log.clone());
            waiters.push(tokio::spawn(async move {
                let _t = order.turn(7).await;
                log.lock().push(i);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }));
            // Let each waiter queue before the next one.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Another chunk is not held up by chunk 7.
        drop(order.turn(8).await);
        assert!(
            log.lock().is_empty(),
            "nobody may pass while the turn is held"
        );
        drop(first);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*log.lock(), vec![0, 1, 2, 3, 4]);
        assert_eq!(order.tracked(), 0);
    }
}
