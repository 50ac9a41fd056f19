//! The data cache's optional second tier: blocks on a local disk directory
//! (mount options `disk_cache=DIR`, `disk_cache_size=MIB`).
//!
//! Every block the memory cache is offered (data.rs `put`) is also written
//! here, one file per block named by its key (ino, chunk id, version, block):
//! a 4-byte crc32c of the bytes, then the bytes. A file whose crc does not
//! match (a torn write, a bad disk, someone editing it) is a miss, deleted,
//! and the block is read from a chunk daemon again.
//!
//! The directory is emptied of such files at mount start, not reused: a
//! version alone does not name a block's bytes (writes under one lease keep
//! the version), and what another mount changed while this one was down is
//! unknown. It is invalidated with the memory tier (a file's blocks on a
//! write, truncate, push or changed open; everything when pushes may have
//! been missed). One mount per directory.
//!
//! Invariants: the index (an LRU of keys and file sizes) is the truth, files
//! on disk may lag it: a key absent from the index is never read, and a file
//! of an indexed key may be missing (a miss). The files' total size stays
//! within `capacity`: one writer thread performs writes and deletions in the
//! order they were decided, deletions of evicted blocks before the write that
//! evicted them. Writes go to a temporary name and are renamed, so a reader
//! sees a whole file or none. No disk I/O on the FUSE threads: reads run in
//! `spawn_blocking`, writes on the writer thread (dropped when it falls
//! behind: the cache is a hint).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

use super::data::BlockKey;

/// Bytes per file besides the block: its crc32c.
const HEADER: u64 = 4;
const SUFFIX: &str = "wblk";
/// Block writes queued before new ones are dropped.
const QUEUE: usize = 256;

enum Job {
    Write(PathBuf, Bytes),
    Remove(PathBuf),
    /// Answered once every earlier job is done.
    #[cfg(test)]
    Settle(std::sync::mpsc::Sender<()>),
}

pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    inner: Mutex<Index>,
    jobs: Sender<Job>,
    /// Writes queued and not yet done (removals are never dropped).
    queued: Arc<AtomicUsize>,
}

struct Index {
    files: LruCache<BlockKey, u64>,
    bytes: u64,
}

fn file_name(k: &BlockKey) -> String {
    format!(
        "{:x}.{:x}.{:x}.{:x}.{SUFFIX}",
        k.ino, k.chunk_id, k.version, k.block
    )
}

/// Removes this cache's files (and unfinished temporaries) from `dir`.
fn clean(dir: &Path) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(SUFFIX) || name.ends_with(".wblk.tmp") {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

fn run_jobs(rx: std::sync::mpsc::Receiver<Job>, queued: Arc<AtomicUsize>) {
    for job in rx {
        match job {
            Job::Write(path, data) => {
                queued.fetch_sub(1, SeqCst);
                let tmp = path.with_extension("wblk.tmp");
                let r = (|| {
                    let mut f = fs::File::create(&tmp)?;
                    f.write_all(&crc32c::crc32c(&data).to_le_bytes())?;
                    f.write_all(&data)?;
                    fs::rename(&tmp, &path)
                })();
                if let Err(e) = r {
                    tracing::debug!(error = %e, path = %path.display(), "disk cache write failed");
                    let _ = fs::remove_file(&tmp);
                    let _ = fs::remove_file(&path);
                }
            }
            Job::Remove(path) => {
                let _ = fs::remove_file(&path);
            }
            #[cfg(test)]
            Job::Settle(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// The block in `file` if its crc matches.
fn read_block(path: &Path) -> Option<Bytes> {
    let v = fs::read(path).ok()?;
    if v.len() < HEADER as usize {
        return None;
    }
    let (crc, data) = v.split_at(HEADER as usize);
    (crc32c::crc32c(data).to_le_bytes() == crc).then(|| Bytes::copy_from_slice(data))
}

impl DiskCache {
    /// Empties `dir` of an earlier mount's blocks and starts the writer.
    pub fn open(dir: &Path, capacity: u64) -> std::io::Result<DiskCache> {
        fs::create_dir_all(dir)?;
        clean(dir)?;
        let (jobs, rx) = channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let q = queued.clone();
        std::thread::Builder::new()
            .name("weftfs-diskcache".into())
            .spawn(move || run_jobs(rx, q))?;
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            capacity,
            inner: Mutex::new(Index {
                files: LruCache::unbounded(),
                bytes: 0,
            }),
            jobs,
            queued,
        })
    }

    fn path(&self, k: &BlockKey) -> PathBuf {
        self.dir.join(file_name(k))
    }

    /// Queues `data` as the block `key` (called with the memory tier's lock
    /// not held, after its epoch check).
    pub fn put(&self, key: BlockKey, data: &[u8]) {
        let size = data.len() as u64 + HEADER;
        if size > self.capacity || data.is_empty() {
            return;
        }
        if self.queued.load(SeqCst) >= QUEUE {
            // The disk is behind: skip this block.
            return;
        }
        let mut g = self.inner.lock();
        if g.files.contains(&key) {
            return;
        }
        // Room first: the evicted files go before the new one is written.
        while g.bytes + size > self.capacity {
            let Some((k, s)) = g.files.pop_lru() else {
                break;
            };
            g.bytes -= s;
            let _ = self.jobs.send(Job::Remove(self.path(&k)));
        }
        self.queued.fetch_add(1, SeqCst);
        if self
            .jobs
            .send(Job::Write(self.path(&key), Bytes::copy_from_slice(data)))
            .is_ok()
        {
            g.files.put(key, size);
            g.bytes += size;
        }
    }

    /// Whether every one of `keys` is indexed (then `read` is worth a try).
    pub fn has_all(&self, keys: &[BlockKey]) -> bool {
        let mut g = self.inner.lock();
        keys.iter().all(|k| g.files.get(k).is_some())
    }

    /// Reads blocks from disk (blocking: call from spawn_blocking). None if
    /// any is missing or corrupt; a corrupt or vanished one leaves the index.
    pub fn read(&self, keys: &[BlockKey]) -> Option<Vec<Bytes>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if !self.inner.lock().files.contains(k) {
                return None;
            }
            match read_block(&self.path(k)) {
                Some(b) => out.push(b),
                None => {
                    self.forget(|x| x == k);
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Drops the blocks matching `which` from the index and the disk.
    fn forget(&self, which: impl Fn(&BlockKey) -> bool) {
        let mut g = self.inner.lock();
        let keys: Vec<BlockKey> = g
            .files
            .iter()
            .filter(|(k, _)| which(k))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            if let Some(s) = g.files.pop(&k) {
                g.bytes -= s;
                let _ = self.jobs.send(Job::Remove(self.path(&k)));
            }
        }
    }

    pub fn invalidate_file(&self, ino: u64) {
        self.forget(|k| k.ino == ino);
    }

    pub fn clear(&self) {
        self.forget(|_| true);
    }

    /// Bytes the index holds (files on disk may lag it).
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// Waits until the writer has done everything queued so far.
    #[cfg(test)]
    pub fn settle(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs.send(Job::Settle(tx)).unwrap();
        rx.recv().unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ino: u64, block: u64) -> BlockKey {
        BlockKey {
            ino,
            chunk_id: 3,
            version: 1,
            block,
        }
    }

    fn on_disk(dir: &Path) -> u64 {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn blocks_come_back_and_the_directory_stays_within_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 3 * (1000 + HEADER)).unwrap();
        for b in 0..10 {
            c.put(key(1, b), &vec![b as u8; 1000]);
            assert!(c.bytes() <= 3 * (1000 + HEADER));
        }
        c.settle();
        assert!(on_disk(dir.path()) <= 3 * (1000 + HEADER));
        assert!(!c.has_all(&[key(1, 0)]), "least recent evicted");
        assert!(c.has_all(&[key(1, 8), key(1, 9)]));
        let got = c.read(&[key(1, 9)]).unwrap();
        assert_eq!(got[0], vec![9u8; 1000]);
    }

    #[test]
    fn a_corrupt_file_is_a_miss_and_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20).unwrap();
        c.put(key(1, 0), &[7u8; 100]);
        c.settle();
        let p = c.path(&key(1, 0));
        let mut v = fs::read(&p).unwrap();
        v[50] ^= 1;
        fs::write(&p, v).unwrap();
        assert!(c.read(&[key(1, 0)]).is_none());
        assert!(!c.has_all(&[key(1, 0)]));
    }

    #[test]
    fn invalidation_and_restart_empty_it() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20).unwrap();
        c.put(key(1, 0), b"a");
        c.put(key(2, 0), b"b");
        c.invalidate_file(1);
        assert!(c.read(&[key(1, 0)]).is_none());
        c.settle();
        assert!(c.read(&[key(2, 0)]).is_some());
        fs::write(dir.path().join("keep.txt"), b"not ours").unwrap();
        drop(c);
        let _c = DiskCache::open(dir.path(), 1 << 20).unwrap();
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("keep.txt")]);
    }
}
