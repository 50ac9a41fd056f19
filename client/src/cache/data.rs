//! The data cache: chunk blocks read from chunk daemons, kept in weftfs
//! memory in an LRU bounded in bytes (mount option `data_cache=MIB`).
//!
//! A block is `BLOCK` bytes (the chunk daemons' crc block) at a block-aligned
//! offset of one chunk, keyed by (ino, chunk id, version, block index): a new
//! version of a chunk (a new write lease, a re-replication) never hits an
//! older version's bytes.
//!
//! A version alone does not name the bytes (writes under one lease keep the
//! version), so the cache is also dropped:
//! - for a file, when this mount stores data into it or truncates it, and
//!   when the MDS pushes that another mount changed its data;
//! - for a file, at open, when its (size, mtime, ctime) differ from what they
//!   were at its previous open on this mount (close-to-open: a writer's close
//!   commits a new mtime before it returns) — `open_check`, which also tells
//!   the kernel whether its own page cache may be kept (FOPEN_KEEP_CACHE);
//! - entirely, when coherence pushes may have been missed.
//!
//! With `disk_cache=DIR`, every block offered to `put` is also kept on a local
//! disk (disk.rs), under the same epoch check and invalidations, and a read
//! that misses memory tries the disk (`disk_piece`) before a chunk daemon.
//!
//! Invariants: `bytes` is the sum of the cached blocks' lengths and never
//! exceeds `capacity` after a `put`; a block fetched before an invalidation
//! is never inserted after it (every invalidation bumps `epoch`, and `put`
//! takes the epoch its caller read before fetching); blocks own their memory
//! (copied out of the RPC buffer, so a cached block never pins a larger one).

use std::num::NonZeroUsize;
use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

/// Bytes per cached block: the chunk daemons' crc block, which they read
/// and verify whole anyway.
pub const BLOCK: u64 = weft_proto::contract::limits::BLOCK_SIZE as u64;
/// Files whose open-time attributes are remembered.
const STAMPS: usize = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub ino: u64,
    pub chunk_id: u64,
    pub version: u64,
    /// Block index within the chunk.
    pub block: u64,
}

/// The version a needle's key carries (no chunk reaches it).
const NEEDLE_VERSION: u64 = u64::MAX;

/// The key of the data of file `ino`'s needle at `offset` of segment chunk
/// `chunk_id`. A needle's bytes never change once committed (a segment is
/// only appended to; compaction and rewrites put data at a new place, and a
/// truncate only shortens the length the MDS gives), so the entry needs no
/// invalidation: a reader that gets the needle's place from the MDS gets
/// its bytes, or a prefix of them.
pub fn needle_key(ino: u64, chunk_id: u64, offset: u64) -> BlockKey {
    BlockKey {
        ino,
        chunk_id,
        version: NEEDLE_VERSION,
        block: offset,
    }
}

/// What a file looked like at open: (size, mtime ns, ctime ns).
pub type Stamp = (u64, i128, i128);

pub struct DataCache {
    capacity: u64,
    inner: Mutex<Inner>,
    /// The local-disk tier, if the mount has one.
    disk: Option<Arc<super::disk::DiskCache>>,
}

struct Inner {
    blocks: LruCache<BlockKey, Bytes>,
    bytes: u64,
    epoch: u64,
    stamps: LruCache<u64, Stamp>,
}

impl DataCache {
    /// A cache of at most `capacity` bytes; 0 caches nothing.
    pub fn new(capacity: u64) -> DataCache {
        DataCache {
            capacity,
            inner: Mutex::new(Inner {
                blocks: LruCache::unbounded(),
                bytes: 0,
                epoch: 0,
                stamps: LruCache::new(NonZeroUsize::new(STAMPS).unwrap()),
            }),
            disk: None,
        }
    }

    /// Adds the local-disk tier (only used while the memory tier is enabled).
    pub fn with_disk(mut self, disk: super::disk::DiskCache) -> DataCache {
        self.disk = Some(Arc::new(disk));
        self
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// Whether `len` more bytes fit without evicting anything.
    pub fn has_room(&self, len: u64) -> bool {
        self.inner.lock().bytes + len <= self.capacity
    }

    /// The epoch to pass to `put` for data fetched from now on.
    pub fn epoch(&self) -> u64 {
        self.inner.lock().epoch
    }

    /// Whether blocks are kept on disk too.
    pub fn has_disk(&self) -> bool {
        self.disk.is_some()
    }

    pub fn get(&self, key: &BlockKey) -> Option<Bytes> {
        self.inner.lock().blocks.get(key).cloned()
    }

    /// Caches a block fetched after `epoch()` returned `epoch`, unless the
    /// cache was invalidated since. Evicts least recently used blocks to stay
    /// within the capacity, or, without `evict`, caches only into free room.
    pub fn put(&self, key: BlockKey, data: &[u8], epoch: u64, evict: bool) {
        if let Some(disk) = &self.disk {
            // Under the lock: an invalidation cannot slip between the check
            // and the disk's index.
            let g = self.inner.lock();
            if g.epoch == epoch && !data.is_empty() && self.capacity > 0 {
                disk.put(key, data);
            }
        }
        self.put_mem(key, data, epoch, evict)
    }

    fn put_mem(&self, key: BlockKey, data: &[u8], epoch: u64, evict: bool) {
        if data.len() as u64 > self.capacity || data.is_empty() {
            return;
        }
        if !evict && self.inner.lock().bytes + data.len() as u64 > self.capacity {
            return;
        }
        let block = Bytes::copy_from_slice(data);
        let mut g = self.inner.lock();
        if g.epoch != epoch || (!evict && g.bytes + data.len() as u64 > self.capacity) {
            return;
        }
        if let Some(old) = g.blocks.put(key, block) {
            g.bytes -= old.len() as u64;
        }
        g.bytes += data.len() as u64;
        while g.bytes > self.capacity {
            let Some((_, b)) = g.blocks.pop_lru() else {
                break;
            };
            g.bytes -= b.len() as u64;
        }
    }

    /// Drops every block of `ino`. Linear in the number of cached blocks
    /// (capacity / BLOCK), and only on writes, truncation and changed opens.
    pub fn invalidate_file(&self, ino: u64) {
        let mut g = self.inner.lock();
        g.epoch += 1;
        if let Some(disk) = &self.disk {
            disk.invalidate_file(ino);
        }
        let keys: Vec<BlockKey> = g
            .blocks
            .iter()
            .filter(|(k, _)| k.ino == ino)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(b) = g.blocks.pop(&k) {
                g.bytes -= b.len() as u64;
            }
        }
    }

    pub fn clear(&self) {
        let mut g = self.inner.lock();
        g.epoch += 1;
        g.blocks.clear();
        g.bytes = 0;
        g.stamps.clear();
        if let Some(disk) = &self.disk {
            disk.clear();
        }
    }

    /// Bytes [off, off+len) of chunk (chunk_id, version) of `ino` from the
    /// disk tier when every block covering them is there (read off the
    /// calling thread); the blocks also fill free room in memory.
    pub async fn disk_piece(
        &self,
        ino: u64,
        chunk_id: u64,
        version: u64,
        off: u64,
        len: u64,
        chunk_size: u64,
    ) -> Option<Bytes> {
        let disk = self.disk.clone().filter(|_| self.enabled())?;
        let (first, start, alen) = aligned(off, len, chunk_size);
        let keys: Vec<BlockKey> = (first..first + alen.div_ceil(BLOCK))
            .map(|block| BlockKey {
                ino,
                chunk_id,
                version,
                block,
            })
            .collect();
        if !disk.has_all(&keys) {
            return None;
        }
        let epoch = self.epoch();
        let blocks = {
            let keys = keys.clone();
            tokio::task::spawn_blocking(move || disk.read(&keys))
                .await
                .ok()??
        };
        for (k, b) in keys.iter().zip(&blocks) {
            self.put_mem(*k, b, epoch, false);
        }
        assemble(&blocks, (off - start) as usize, len as usize)
    }

    /// At open, with the attributes the MDS just returned: true when the
    /// file is unchanged since its previous open on this mount (cached data,
    /// ours and the kernel's, is still right); otherwise drops the file's
    /// blocks and remembers the new stamp.
    /// This mount stored the whole of `ino`, which the MDS now describes as
    /// `now`, and kept what it wrote here: the next open finds it unchanged
    /// (a read after a drop_caches is then served from this cache).
    pub fn written(&self, ino: u64, now: Stamp) {
        self.inner.lock().stamps.put(ino, now);
    }

    pub fn open_check(&self, ino: u64, now: Stamp) -> bool {
        let unchanged = {
            let mut g = self.inner.lock();
            let same = g.stamps.get(&ino) == Some(&now);
            if !same {
                g.stamps.put(ino, now);
            }
            same
        };
        if !unchanged {
            self.invalidate_file(ino);
        }
        unchanged
    }
}

/// `len` bytes from `skip` into the concatenation of `blocks`, if they hold them.
fn assemble(blocks: &[Bytes], skip: usize, len: usize) -> Option<Bytes> {
    if blocks.iter().map(|b| b.len()).sum::<usize>() < skip + len {
        return None;
    }
    if let [one] = blocks {
        return Some(one.slice(skip..skip + len));
    }
    let mut v = Vec::with_capacity(len);
    let mut skip = skip;
    for b in blocks {
        if skip >= b.len() {
            skip -= b.len();
            continue;
        }
        let want = (len - v.len()).min(b.len() - skip);
        v.extend_from_slice(&b[skip..skip + want]);
        skip = 0;
        if v.len() == len {
            break;
        }
    }
    Some(Bytes::from(v))
}

/// The block-aligned range of a chunk covering [off, off+len): (first
/// block, aligned offset, aligned length), the length clipped to `chunk_size`.
pub fn aligned(off: u64, len: u64, chunk_size: u64) -> (u64, u64, u64) {
    let first = off / BLOCK;
    let start = first * BLOCK;
    let end = (off + len).div_ceil(BLOCK) * BLOCK;
    (first, start, end.min(chunk_size.max(off + len)) - start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64, block: u64) -> BlockKey {
        BlockKey {
            ino,
            chunk_id: 7,
            version: 1,
            block,
        }
    }

    #[test]
    fn stays_within_capacity_evicting_least_recent() {
        let c = DataCache::new(3 * BLOCK);
        let b = vec![1u8; BLOCK as usize];
        for i in 0..3 {
            c.put(key(1, i), &b, c.epoch(), true);
        }
        assert_eq!(c.bytes(), 3 * BLOCK);
        assert!(c.get(&key(1, 0)).is_some()); // 0 is now most recent
        c.put(key(1, 3), &b, c.epoch(), true);
        assert_eq!(c.bytes(), 3 * BLOCK);
        assert!(c.get(&key(1, 1)).is_none(), "least recent evicted");
        assert!(c.get(&key(1, 0)).is_some());
        assert!(c.get(&key(1, 3)).is_some());
        // Replacing a block does not double-count it.
        c.put(key(1, 3), &b[..10], c.epoch(), true);
        assert_eq!(c.bytes(), 2 * BLOCK + 10);
    }

    #[test]
    fn a_streaming_put_only_fills_free_room() {
        let c = DataCache::new(2 * BLOCK);
        let b = vec![1u8; BLOCK as usize];
        c.put(key(1, 0), &b, c.epoch(), false);
        c.put(key(1, 1), &b, c.epoch(), false);
        assert!(!c.has_room(1));
        c.put(key(1, 2), &b, c.epoch(), false);
        assert!(c.get(&key(1, 0)).is_some() && c.get(&key(1, 1)).is_some());
        assert!(c.get(&key(1, 2)).is_none(), "nothing evicted for a stream");
        c.put(key(1, 2), &b, c.epoch(), true);
        assert!(c.get(&key(1, 2)).is_some());
        assert_eq!(c.bytes(), 2 * BLOCK);
    }

    #[test]
    fn another_version_misses() {
        let c = DataCache::new(4 * BLOCK);
        c.put(key(1, 0), b"old", c.epoch(), true);
        let newer = BlockKey {
            version: 2,
            ..key(1, 0)
        };
        assert!(c.get(&newer).is_none());
        assert_eq!(c.get(&key(1, 0)).unwrap(), Bytes::from_static(b"old"));
    }

    #[test]
    fn a_fetch_older_than_an_invalidation_is_not_cached() {
        let c = DataCache::new(4 * BLOCK);
        let e = c.epoch();
        c.invalidate_file(9); // any file: the epoch is global
        c.put(key(1, 0), b"stale", e, true);
        assert!(c.get(&key(1, 0)).is_none());
        c.put(key(1, 0), b"fresh", c.epoch(), true);
        assert!(c.get(&key(1, 0)).is_some());
    }

    #[test]
    fn invalidation_is_per_file() {
        let c = DataCache::new(4 * BLOCK);
        c.put(key(1, 0), b"a", c.epoch(), true);
        c.put(key(2, 0), b"b", c.epoch(), true);
        c.invalidate_file(1);
        assert!(c.get(&key(1, 0)).is_none());
        assert!(c.get(&key(2, 0)).is_some());
        assert_eq!(c.bytes(), 1);
        c.clear();
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn open_check_keeps_data_only_for_an_unchanged_file() {
        let c = DataCache::new(4 * BLOCK);
        assert!(!c.open_check(1, (10, 5, 5)), "first open: nothing known");
        c.put(key(1, 0), b"x", c.epoch(), true);
        assert!(c.open_check(1, (10, 5, 5)));
        assert!(c.get(&key(1, 0)).is_some());
        assert!(!c.open_check(1, (10, 6, 6)), "mtime moved");
        assert!(c.get(&key(1, 0)).is_none());
    }

    #[test]
    fn disabled_caches_nothing() {
        let c = DataCache::new(0);
        assert!(!c.enabled());
        c.put(key(1, 0), b"x", c.epoch(), true);
        assert!(c.get(&key(1, 0)).is_none());
    }

    #[test]
    fn alignment() {
        let cs = 64 * BLOCK;
        assert_eq!(aligned(0, BLOCK, cs), (0, 0, BLOCK));
        assert_eq!(aligned(100, 10, cs), (0, 0, BLOCK));
        assert_eq!(aligned(BLOCK - 1, 2, cs), (0, 0, 2 * BLOCK));
        assert_eq!(aligned(3 * BLOCK, 1 << 20, cs), (3, 3 * BLOCK, 1 << 20));
        // A chunk smaller than a block: never past its end.
        assert_eq!(aligned(10, 20, 100), (0, 0, 100));
    }

    #[tokio::test]
    async fn the_disk_tier_serves_what_memory_dropped_and_is_invalidated_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let disk = crate::cache::disk::DiskCache::open(dir.path(), 1 << 20).unwrap();
        let c = DataCache::new(BLOCK).with_disk(disk);
        let cs = 64 * BLOCK;
        let blocks: Vec<Vec<u8>> = (0..3).map(|i| vec![i as u8 + 1; BLOCK as usize]).collect();
        for (i, b) in blocks.iter().enumerate() {
            c.put(key(1, i as u64), b, c.epoch(), true);
        }
        assert!(c.get(&key(1, 0)).is_none(), "memory holds one block");
        // Spanning blocks 0..2, from disk, once the writer thread wrote them
        // (a read that finds an indexed file not yet written drops it: a miss).
        c.disk.as_ref().unwrap().settle();
        let got = c.disk_piece(1, 7, 1, BLOCK - 10, 20, cs).await;
        let got = got.expect("blocks 0 and 1 from disk");
        assert_eq!(&got[..10], &[1u8; 10]);
        assert_eq!(&got[10..], &[2u8; 10]);
        assert!(
            c.disk_piece(1, 7, 2, 0, 10, cs).await.is_none(),
            "another version"
        );
        c.invalidate_file(1);
        assert!(c.disk_piece(1, 7, 1, 0, 10, cs).await.is_none());
        // A fetch older than an invalidation reaches neither tier.
        let e = c.epoch();
        c.invalidate_file(9);
        c.put(key(1, 0), &blocks[0], e, true);
        assert!(c.disk_piece(1, 7, 1, 0, 10, cs).await.is_none());
    }

    #[test]
    fn assembling_pieces() {
        let b = [Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh")];
        assert_eq!(assemble(&b, 2, 4).unwrap(), Bytes::from_static(b"cdef"));
        assert_eq!(assemble(&b, 5, 2).unwrap(), Bytes::from_static(b"fg"));
        assert!(assemble(&b, 5, 4).is_none());
    }
}
