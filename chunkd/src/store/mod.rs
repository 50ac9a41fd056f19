//! The chunk store: every replica this daemon holds, on disk under
//! `DIR/chunks/<last two hex digits>/<id as 016x>.chunk`, with an in-memory
//! index (id → version, data length, chunk size, bytes allocated, lease epoch).
//! Synchronous; callers run it on the blocking pool.
//!
//! Invariants:
//! * an id is in the index iff its `.chunk` file exists with a valid header
//!   (checked at startup and kept by every operation under the chunk's lock);
//! * all I/O on one chunk happens under that chunk's stripe lock (writes,
//!   truncates, deletes, quarantine and scrub exclusive; reads and syncs shared),
//!   so a reader never sees data whose crc is not yet written;
//! * `used` is the sum of the index's `allocated` (st_blocks * 512 of each live
//!   chunk file); `used + reserved` never passes `capacity` because of a write;
//! * every id whose replica was created, changed or removed since the MDS last
//!   acknowledged a report is in `dirty`;
//! * a replica found corrupt by the scrubber is renamed to `<id>.corrupt`
//!   (kept for forensics) and leaves a tombstone: a write with a version not
//!   newer than the corrupt replica's is refused rather than silently creating
//!   a fresh, mostly-empty replica under the same id. `delete` clears it.
//!
//! Lock order: stripe lock, then the short internal mutexes (never the reverse).

pub mod chunkfile;
pub mod error;
pub mod format;
mod install;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

pub use chunkfile::ChunkFile;
pub use error::{Result, StoreError};
use format::{Header, BLOCK_SIZE};

/// Chunk size used for replicas created before the MDS has told us the real
/// one (before registration succeeds): writes are accepted up to this offset.
pub const PROVISIONAL_CHUNK_SIZE: u64 = 1 << 30;

/// The most of its disk a daemon keeps out of what it offers (2% of the
/// disk up to this): see `free_for_data`.
const DISK_KEPT_MAX: u64 = 2 << 30;

const STRIPES: usize = 1024;

/// What the MDS is told about one replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSummary {
    pub id: u64,
    pub version: u64,
    /// Bytes of data stored: the highest offset written.
    pub size: u64,
}

/// Replica changes not yet acknowledged by the MDS.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    pub added: Vec<ChunkSummary>,
    pub removed: Vec<u64>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Progress of the scrubber through one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScrubStep {
    /// `bytes` were verified; continue at block `next`.
    Next { next: u64, bytes: u64 },
    /// The whole chunk verified.
    Done,
    /// The chunk went away meanwhile (deleted).
    Gone,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    version: u64,
    data_len: u64,
    chunk_size: u64,
    allocated: u64,
    /// Highest lease epoch seen in a write; memory only.
    epoch: u64,
}

impl Entry {
    /// The index entry for a replica file whose header is `h`.
    fn of(h: &Header, allocated: u64, epoch: u64) -> Entry {
        Entry {
            version: h.version,
            data_len: h.data_len,
            chunk_size: h.chunk_size,
            allocated,
            epoch,
        }
    }

    /// What the replica's data region holds on disk (written or reserved
    /// blocks), which is what `st_blocks` of the file shows: the file's
    /// allocation less its header (always written whole), at most the chunk.
    fn data_allocated(&self) -> u64 {
        self.allocated
            .saturating_sub(format::header_len(self.chunk_size))
            .min(self.chunk_size)
    }
}

#[derive(Default)]
struct Acct {
    used: u64,
    reserved: u64,
}

pub struct Store {
    chunks_dir: PathBuf,
    capacity: u64,
    stripes: Box<[RwLock<()>]>,
    index: Mutex<HashMap<u64, Entry>>,
    tombstones: Mutex<HashMap<u64, u64>>,
    acct: Mutex<Acct>,
    /// Chunk size from the MDS; 0 until registration.
    chunk_size: AtomicU64,
    dirty: Mutex<HashSet<u64>>,
    new_replica: Arc<Notify>,
}

/// Capacity held for a write in flight; released when dropped.
struct Reservation<'a> {
    store: &'a Store,
    bytes: u64,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.store.acct.lock().reserved -= self.bytes;
    }
}

fn parse_id(stem: &str) -> Option<u64> {
    if stem.len() == 16 {
        u64::from_str_radix(stem, 16).ok()
    } else {
        None
    }
}

/// Refuses a mutation of replica `e` carrying an older version, or (when
/// the mutation carries one) an older lease epoch than this replica has seen.
fn refuse_stale(id: u64, e: &Entry, version: u64, epoch: Option<u64>) -> Result<()> {
    if version < e.version {
        return Err(StoreError::StaleVersion {
            id,
            stored: e.version,
            got: version,
        });
    }
    match epoch {
        Some(got) if got < e.epoch => Err(StoreError::StaleEpoch {
            id,
            seen: e.epoch,
            got,
        }),
        _ => Ok(()),
    }
}

impl Store {
    /// Opens (creating if needed) the store under `dir`: scans `dir/chunks`,
    /// deletes leftover temp files, indexes valid replicas and quarantines files
    /// whose header is damaged.
    pub fn open(dir: &Path, capacity: u64) -> Result<Store> {
        let chunks_dir = dir.join("chunks");
        let io = |what: &str, p: &Path, e| StoreError::io(0, format!("{what} {}", p.display()), e);
        if !chunks_dir.exists() {
            std::fs::create_dir_all(&chunks_dir).map_err(|e| io("create", &chunks_dir, e))?;
            chunkfile::fsync_dir(dir).map_err(|e| io("fsync", dir, e))?;
        }
        let store = Store {
            chunks_dir,
            capacity,
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            index: Mutex::new(HashMap::new()),
            tombstones: Mutex::new(HashMap::new()),
            acct: Mutex::new(Acct::default()),
            chunk_size: AtomicU64::new(0),
            dirty: Mutex::new(HashSet::new()),
            new_replica: Arc::new(Notify::new()),
        };
        store.scan()?;
        Ok(store)
    }

    fn scan(&self) -> Result<()> {
        let io = |what: &str, p: &Path, e| StoreError::io(0, format!("{what} {}", p.display()), e);
        let rd =
            std::fs::read_dir(&self.chunks_dir).map_err(|e| io("read", &self.chunks_dir, e))?;
        let (mut temps, mut corrupt) = (0, 0);
        for sub in rd {
            let sub = sub.map_err(|e| io("read", &self.chunks_dir, e))?;
            if !sub.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                tracing::warn!(path = %sub.path().display(), "ignoring stray entry in chunks dir");
                continue;
            }
            let sub_path = sub.path();
            for ent in std::fs::read_dir(&sub_path).map_err(|e| io("read", &sub_path, e))? {
                let ent = ent.map_err(|e| io("read", &sub_path, e))?;
                let path = ent.path();
                let name = ent.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    tracing::warn!(path = %path.display(), "deleting leftover temp file");
                    std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
                    temps += 1;
                    continue;
                }
                let (stem, ext) = name.split_once('.').unwrap_or((&name, ""));
                let id = match parse_id(stem) {
                    Some(id) if path == self.path_with(id, ext) => id,
                    _ => {
                        tracing::warn!(path = %path.display(), "ignoring unexpected file in chunks dir");
                        continue;
                    }
                };
                match ext {
                    "chunk" => match ChunkFile::open(&path, id) {
                        Ok(cf) => {
                            let h = cf.header();
                            let entry = Entry::of(h, cf.allocated()?, 0);
                            self.acct.lock().used += entry.allocated;
                            self.index.lock().insert(id, entry);
                        }
                        Err(e @ StoreError::BadHeader { .. }) => {
                            tracing::error!(error = %e, "quarantining replica with a damaged header");
                            self.rename_corrupt(id)?;
                            self.tombstones.lock().insert(id, u64::MAX);
                            corrupt += 1;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "skipping unreadable replica");
                        }
                    },
                    "corrupt" => {
                        self.tombstones
                            .lock()
                            .insert(id, corrupt_version(&path).unwrap_or(u64::MAX));
                        corrupt += 1;
                    }
                    _ => {
                        tracing::warn!(path = %path.display(), "ignoring unexpected file in chunks dir")
                    }
                }
            }
        }
        tracing::info!(
            chunks = self.index.lock().len(),
            used = self.acct.lock().used,
            deleted_temps = temps,
            corrupt,
            "chunk store opened"
        );
        Ok(())
    }

    fn path_with(&self, id: u64, ext: &str) -> PathBuf {
        self.chunks_dir
            .join(format!("{:02x}", id & 0xff))
            .join(format!("{id:016x}.{ext}"))
    }

    /// Where the replica of chunk `id` lives.
    pub fn chunk_path(&self, id: u64) -> PathBuf {
        self.path_with(id, "chunk")
    }

    /// Where a quarantined replica of chunk `id` is kept.
    pub fn corrupt_path(&self, id: u64) -> PathBuf {
        self.path_with(id, "corrupt")
    }

    fn stripe(&self, id: u64) -> &RwLock<()> {
        let h = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // top 10 bits
        &self.stripes[h as usize % STRIPES]
    }

    /// Signalled whenever a replica is created or its version changes, so the
    /// heartbeat loop can tell the MDS early.
    pub fn new_replica_signal(&self) -> Arc<Notify> {
        self.new_replica.clone()
    }

    /// Records the chunk size the MDS announced at registration.
    pub fn set_chunk_size(&self, size: u64) {
        let size = size.min(format::MAX_CHUNK_SIZE);
        self.chunk_size.store(size, Ordering::Relaxed);
    }

    /// The MDS's chunk size, if registration has told us.
    pub fn chunk_size(&self) -> Option<u64> {
        match self.chunk_size.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The data bytes this daemon can still take (heartbeats; statfs and
    /// placement use it): the headroom `--capacity` leaves (by default the
    /// disk's size), but no more than its disk really has free less 2% of
    /// the disk (at most 2 GiB; the disk may be shared), counted in data
    /// bytes: each chunk file also needs its header and its file system's
    /// extent block. So `df` on a mount, and a fallocate of what it shows,
    /// stay within what the disks take.
    pub fn free_for_data(&self) -> u64 {
        let mut headroom = self.capacity.saturating_sub(self.used());
        if let Ok(fs) = nix::sys::statvfs::statvfs(&self.chunks_dir) {
            let block = fs.fragment_size();
            let disk_free = fs.blocks_available().saturating_mul(block);
            // Never offered: room for what else lives on the disk (an MDS
            // log beside the chunks must not be the one to hit ENOSPC).
            let kept = (fs.blocks().saturating_mul(block) / 50).min(DISK_KEPT_MAX);
            headroom = headroom.min(disk_free.saturating_sub(kept));
        }
        let cs = self.chunk_size().unwrap_or(PROVISIONAL_CHUNK_SIZE);
        data_share(headroom, cs)
    }

    /// Bytes allocated on disk by live chunk files.
    pub fn used(&self) -> u64 {
        self.acct.lock().used
    }

    pub fn len(&self) -> usize {
        self.index.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every replica held, for registration.
    pub fn summaries(&self) -> Vec<ChunkSummary> {
        let mut v: Vec<_> = self
            .index
            .lock()
            .iter()
            .map(|(&id, e)| ChunkSummary {
                id,
                version: e.version,
                size: e.data_len,
            })
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    pub fn summary(&self, id: u64) -> Option<ChunkSummary> {
        self.index.lock().get(&id).map(|e| ChunkSummary {
            id,
            version: e.version,
            size: e.data_len,
        })
    }

    /// Ids of all replicas held (the scrubber's work list).
    pub fn ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.index.lock().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Takes the unacknowledged changes: each dirty id is reported as it is now
    /// (present → added with its current version/size, absent → removed).
    pub fn take_delta(&self) -> Delta {
        let ids: Vec<u64> = self.dirty.lock().drain().collect();
        let index = self.index.lock();
        let mut d = Delta::default();
        for id in ids {
            match index.get(&id) {
                Some(e) => d.added.push(ChunkSummary {
                    id,
                    version: e.version,
                    size: e.data_len,
                }),
                None => d.removed.push(id),
            }
        }
        d.added.sort_by_key(|s| s.id);
        d.removed.sort_unstable();
        d
    }

    /// Puts back a delta the MDS did not acknowledge, to be resent.
    pub fn restore_delta(&self, d: &Delta) {
        let mut dirty = self.dirty.lock();
        dirty.extend(d.added.iter().map(|s| s.id));
        dirty.extend(d.removed.iter().copied());
    }

    fn mark_dirty(&self, id: u64) {
        self.dirty.lock().insert(id);
    }

    fn entry(&self, id: u64) -> Result<Entry> {
        self.index
            .lock()
            .get(&id)
            .copied()
            .ok_or(StoreError::NotFound { id })
    }

    /// The highest offset a replica with header chunk size `chunk_size` accepts.
    fn limit(&self, chunk_size: u64) -> u64 {
        match self.chunk_size() {
            Some(n) => n.min(chunk_size),
            None => chunk_size,
        }
    }

    fn check_range(&self, id: u64, offset: u64, len: u64, chunk_size: u64) -> Result<()> {
        let limit = self.limit(chunk_size);
        match offset.checked_add(len) {
            Some(end) if end <= limit => Ok(()),
            _ => Err(StoreError::OutOfRange {
                id,
                offset,
                len,
                limit,
            }),
        }
    }

    fn reserve(&self, id: u64, bytes: u64) -> Result<Reservation<'_>> {
        let mut a = self.acct.lock();
        if a.used + a.reserved + bytes > self.capacity {
            return Err(StoreError::NoSpace {
                id,
                detail: format!(
                    "capacity {} bytes reached ({} used, {} more needed)",
                    self.capacity,
                    a.used + a.reserved,
                    bytes
                ),
            });
        }
        a.reserved += bytes;
        Ok(Reservation { store: self, bytes })
    }

    /// Replaces the accounted allocation of `id` (index entry and `used`).
    fn account(&self, id: u64, entry: Option<Entry>, old_allocated: u64) {
        let new_allocated = entry.map_or(0, |e| e.allocated);
        {
            let mut a = self.acct.lock();
            a.used = a.used - old_allocated + new_allocated;
        }
        let mut index = self.index.lock();
        match entry {
            Some(e) => index.insert(id, e),
            None => index.remove(&id),
        };
    }

    /// Refuses a mutation older than this replica's version or the newest
    /// lease epoch it has written at (checked again under the stripe lock by
    /// `write` and `truncate`); lets through a chunk not held here.
    pub fn check_fresh(&self, id: u64, version: u64, epoch: u64) -> Result<()> {
        match self.index.lock().get(&id) {
            Some(e) => refuse_stale(id, e, version, Some(epoch)),
            None => Ok(()),
        }
    }

    /// Writes `data` at `offset` of chunk `id`, creating the replica if it is
    /// not here. Refuses stale versions and epochs, ranges past the chunk size,
    /// and writes that would pass the capacity; on any error the replica reads
    /// as it did before (see `chunkfile` for the crash case).
    /// Returns the replica's data bytes allocated afterwards (`data_allocated`).
    pub fn write(
        &self,
        id: u64,
        version: u64,
        epoch: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u64> {
        self.write_or_punch(id, version, epoch, offset, data, false)
    }

    /// A write of `data` (zeros) whose whole blocks become holes in the
    /// replica file, their space given back (`ChunkFile::punch`). Data that is
    /// not all zeros is stored as a plain write: a punch never loses bytes.
    pub fn punch(
        &self,
        id: u64,
        version: u64,
        epoch: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u64> {
        let zeros = data.iter().all(|&b| b == 0);
        self.write_or_punch(id, version, epoch, offset, data, zeros)
    }

    fn write_or_punch(
        &self,
        id: u64,
        version: u64,
        epoch: u64,
        offset: u64,
        data: &[u8],
        punch: bool,
    ) -> Result<u64> {
        let _g = self.stripe(id).write();
        let len = data.len() as u64;
        let existing = self.index.lock().get(&id).copied();
        match existing {
            Some(e) => {
                refuse_stale(id, &e, version, Some(epoch))?;
                self.check_range(id, offset, len, e.chunk_size)?;
                let mut cf = ChunkFile::open(&self.chunk_path(id), id)?;
                let need = if punch {
                    punch_edges(offset, len)
                        .map(|(lo, hi)| cf.new_allocation(lo, hi - lo))
                        .sum()
                } else {
                    cf.new_allocation(offset, len)
                };
                let reservation = self.reserve(id, need)?;
                let result = if punch {
                    cf.punch(offset, data, version.max(e.version))
                } else {
                    cf.write(offset, data, version.max(e.version))
                };
                // Even a failed write may have allocated (fallocate): re-measure.
                let allocated = cf.allocated().unwrap_or(e.allocated);
                let h = cf.header();
                let seen = if result.is_ok() {
                    e.epoch.max(epoch)
                } else {
                    e.epoch
                };
                let entry = Entry::of(h, allocated, seen);
                self.account(id, Some(entry), e.allocated);
                drop(reservation);
                result?;
                self.mark_dirty(id);
                if entry.version != e.version {
                    self.new_replica.notify_one();
                }
                Ok(entry.data_allocated())
            }
            None => {
                if let Some(&tv) = self.tombstones.lock().get(&id) {
                    if version <= tv {
                        return Err(StoreError::Quarantined { id, version: tv });
                    }
                }
                let chunk_size = self.chunk_size().unwrap_or(PROVISIONAL_CHUNK_SIZE);
                self.check_range(id, offset, len, chunk_size)?;
                // Header plus the data's pages (one extra page for misalignment).
                let estimate = format::header_len(chunk_size)
                    + if len > 0 {
                        len.next_multiple_of(4096) + 4096
                    } else {
                        0
                    };
                let reservation = self.reserve(id, estimate)?;
                let path = self.chunk_path(id);
                let parent = path.parent().expect("chunk path has a parent");
                if !parent.exists() {
                    std::fs::create_dir_all(parent)
                        .and_then(|_| chunkfile::fsync_dir(&self.chunks_dir))
                        .map_err(|e| {
                            StoreError::io(id, format!("create {}", parent.display()), e)
                        })?;
                }
                let mut cf = ChunkFile::create(&path, Header::new(id, version, chunk_size))?;
                let written = if punch {
                    cf.punch(offset, data, version)
                } else {
                    cf.write(offset, data, version)
                };
                if let Err(e) = written {
                    // The replica did not exist before: leave it that way.
                    drop(cf);
                    let _ = std::fs::remove_file(&path);
                    let _ = chunkfile::fsync_dir(parent);
                    return Err(e);
                }
                let h = cf.header();
                let entry = Entry::of(h, cf.allocated()?, epoch);
                self.account(id, Some(entry), 0);
                drop(reservation);
                self.tombstones.lock().remove(&id);
                self.mark_dirty(id);
                self.new_replica.notify_one();
                Ok(entry.data_allocated())
            }
        }
    }

    /// Opens the replica of `id` for a read of `[offset, offset+len)`
    /// (caller holds the stripe lock). `version` 0 accepts any version;
    /// otherwise it must match.
    fn open_to_read(&self, id: u64, version: u64, offset: u64, len: u64) -> Result<ChunkFile> {
        let e = self.entry(id)?;
        if version != 0 && version != e.version {
            return Err(StoreError::StaleVersion {
                id,
                stored: e.version,
                got: version,
            });
        }
        self.check_range(id, offset, len, e.chunk_size)?;
        ChunkFile::open(&self.chunk_path(id), id)
    }

    /// Reads exactly `len` bytes at `offset` (zeros where nothing was written).
    /// `version` 0 accepts any version; otherwise it must match.
    pub fn read(&self, id: u64, version: u64, offset: u64, len: usize) -> Result<Vec<u8>> {
        let _g = self.stripe(id).read();
        self.open_to_read(id, version, offset, len as u64)?
            .read(offset, len)
    }

    /// Reserves disk space for `[offset, offset+len)` of chunk `id` (fallocate),
    /// creating the replica if it is not here, within the capacity like a
    /// write. Refuses stale versions and epochs and ranges past the chunk.
    /// Returns the replica's data bytes allocated afterwards.
    pub fn allocate(
        &self,
        id: u64,
        version: u64,
        epoch: u64,
        offset: u64,
        len: u64,
    ) -> Result<u64> {
        if self.index.lock().get(&id).is_none() {
            // An empty write creates the replica (header only).
            self.write(id, version, epoch, offset, &[])?;
        }
        let _g = self.stripe(id).write();
        let e = self.entry(id)?;
        refuse_stale(id, &e, version, Some(epoch))?;
        self.check_range(id, offset, len, e.chunk_size)?;
        let cf = ChunkFile::open(&self.chunk_path(id), id)?;
        let reservation = self.reserve(id, cf.new_allocation(offset, len))?;
        let result = cf.allocate(offset, len);
        // Even a failed fallocate may have allocated: re-measure.
        let allocated = cf.allocated().unwrap_or(e.allocated);
        let entry = Entry { allocated, ..e };
        self.account(id, Some(entry), e.allocated);
        drop(reservation);
        result.map(|()| entry.data_allocated())
    }

    /// The data bytes allocated on disk for the replica of `id` (see
    /// `Entry::data_allocated`).
    pub fn data_allocated(&self, id: u64) -> Result<u64> {
        Ok(self.entry(id)?.data_allocated())
    }

    /// The parts of `[offset, offset+len)` of chunk `id` that hold data, as
    /// ascending (start, end) runs of whole 64 KiB blocks clipped to the range.
    /// `version` 0 accepts any version; otherwise it must match.
    pub fn data_extents(
        &self,
        id: u64,
        version: u64,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, u64)>> {
        let _g = self.stripe(id).read();
        self.open_to_read(id, version, offset, len)?
            .data_extents(offset, len)
    }

    /// Makes everything at or past `length` read as zeros; a newer `version`
    /// is adopted as for a write. Truncating a chunk not held here succeeds
    /// and creates nothing: no byte past `length` is stored, which is all a
    /// truncate promises (a chunk allocated but never written, or already
    /// deleted, must not fail the client's truncate).
    pub fn truncate(&self, id: u64, version: u64, length: u64) -> Result<()> {
        let _g = self.stripe(id).write();
        let Some(e) = self.index.lock().get(&id).copied() else {
            return Ok(());
        };
        refuse_stale(id, &e, version, None)?;
        self.check_range(id, length, 0, e.chunk_size)?;
        let mut cf = ChunkFile::open(&self.chunk_path(id), id)?;
        let result = cf.truncate(length, version.max(e.version));
        let h = cf.header();
        let entry = Entry::of(h, cf.allocated().unwrap_or(e.allocated), e.epoch);
        self.account(id, Some(entry), e.allocated);
        result?;
        self.mark_dirty(id);
        if entry.version != e.version {
            self.new_replica.notify_one();
        }
        Ok(())
    }

    /// fdatasyncs the replica of `id`.
    pub fn sync(&self, id: u64) -> Result<()> {
        let _g = self.stripe(id).read();
        self.entry(id)?;
        ChunkFile::open(&self.chunk_path(id), id)?.sync()
    }

    /// Deletes the replica of `id` (and any quarantined copy). Returns whether
    /// a live replica was there.
    pub fn delete(&self, id: u64) -> Result<bool> {
        let _g = self.stripe(id).write();
        let existed = self.index.lock().get(&id).copied();
        let path = self.chunk_path(id);
        let io = |p: &Path, e| StoreError::io(id, format!("remove {}", p.display()), e);
        if let Some(e) = existed {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io(&path, err)),
            }
            self.account(id, None, e.allocated);
            self.mark_dirty(id);
        }
        if self.tombstones.lock().remove(&id).is_some() {
            let cp = self.corrupt_path(id);
            match std::fs::remove_file(&cp) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io(&cp, err)),
            }
        }
        let parent = path.parent().expect("chunk path has a parent");
        if parent.exists() {
            chunkfile::fsync_dir(parent).map_err(|e| io(parent, e))?;
        }
        Ok(existed.is_some())
    }

    fn rename_corrupt(&self, id: u64) -> Result<()> {
        let (from, to) = (self.chunk_path(id), self.corrupt_path(id));
        std::fs::rename(&from, &to)
            .and_then(|_| chunkfile::fsync_dir(from.parent().expect("has parent")))
            .map_err(|e| StoreError::io(id, format!("rename {} to .corrupt", from.display()), e))
    }

    /// Takes a corrupt replica out of service (caller holds the stripe lock):
    /// renamed to `.corrupt`, dropped from the index, reported removed.
    fn quarantine_locked(&self, id: u64) -> Result<()> {
        let Some(e) = self.index.lock().get(&id).copied() else {
            return Ok(());
        };
        self.rename_corrupt(id)?;
        self.account(id, None, e.allocated);
        self.tombstones.lock().insert(id, e.version);
        self.mark_dirty(id);
        tracing::error!(
            chunk = format_args!("{id:016x}"),
            version = e.version,
            "replica quarantined as corrupt"
        );
        Ok(())
    }

    /// Takes the replica of `id` out of service as corrupt.
    pub fn quarantine(&self, id: u64) -> Result<()> {
        let _g = self.stripe(id).write();
        self.quarantine_locked(id)
    }

    /// Verifies up to `max_blocks` blocks of chunk `id` starting at block
    /// `first`; past the data it checks the rest of the crc table. A replica
    /// that fails is quarantined before the corruption error is returned.
    pub fn scrub_step(&self, id: u64, first: u64, max_blocks: u64) -> Result<ScrubStep> {
        let _g = self.stripe(id).write();
        if !self.index.lock().contains_key(&id) {
            return Ok(ScrubStep::Gone);
        }
        let result = ChunkFile::open(&self.chunk_path(id), id).and_then(|cf| {
            let data_blocks = format::nblocks(cf.header().data_len);
            if first < data_blocks {
                let n = max_blocks.max(1).min(data_blocks - first);
                cf.verify_blocks(first, n)?;
                Ok(ScrubStep::Next {
                    next: first + n,
                    bytes: n * BLOCK_SIZE as u64,
                })
            } else {
                cf.verify_unwritten_crcs()?;
                Ok(ScrubStep::Done)
            }
        });
        match result {
            Err(e) if e.is_corruption() => {
                self.quarantine_locked(id)?;
                Err(e)
            }
            Err(StoreError::NotFound { .. }) => Ok(ScrubStep::Gone),
            other => other,
        }
    }
}

/// The version recorded in a quarantined file, if its fixed header still parses.
fn corrupt_version(path: &Path) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; format::FIXED_LEN];
    f.read_exact_at(&mut buf, 0).ok()?;
    Header::decode_fixed(&buf).ok().map(|(_, v, _, _)| v)
}

#[cfg(test)]
mod install_tests;
#[cfg(test)]
mod tests;

/// The partial blocks at the edges of a punch of `[offset, offset+len)`: the
/// only parts it writes (the whole blocks between become a hole).
fn punch_edges(offset: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    let bs = format::BLOCK_SIZE as u64;
    let end = offset + len;
    let (lo, hi) = (offset.next_multiple_of(bs).min(end), end - end % bs);
    let pieces = if lo < hi {
        [(offset, lo), (hi, end)]
    } else {
        [(offset, end), (end, end)]
    };
    pieces.into_iter().filter(|(a, b)| a < b)
}

/// The data bytes `raw` bytes of disk hold in chunk files of `chunk_size`
/// once each file's header and extent block are paid for.
pub fn data_share(raw: u64, chunk_size: u64) -> u64 {
    let whole = chunk_size + format::header_len(chunk_size) + 4096;
    (raw as u128 * chunk_size as u128 / whole as u128) as u64
}
