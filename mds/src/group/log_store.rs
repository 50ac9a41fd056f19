//! The Raft log on disk: the write-ahead log's frames (`wal/codec.rs`: len,
//! crc, index, term, payload) in segment files under `DATA/raft/log/`, the
//! payload a postcard-encoded openraft entry; the vote in `DATA/raft/vote`
//! and the purge point in `DATA/raft/purged`, each written durably (temp,
//! fsync, rename, fsync dir) before openraft is told.
//!
//! Appends go to the page cache and are reported to openraft as flushed at
//! once, so an entry counts towards a majority once a majority has it
//! written: a kill -9 of every node loses nothing committed (the page cache
//! outlives a process), and neither does the power loss of a minority. One
//! thread (`raft-log-sync`) fdatasyncs right behind; `durable` says whether
//! an entry is on this node's disk, and a client's fsync or close waits until
//! it is on a majority's (`Group::sync_log`). Many appends share one
//! fdatasync (group commit); a failed fdatasync aborts the node, so a restart
//! serves only what its disk holds.
//!
//! Entries after the purge point are also kept in memory (openraft reads them
//! to replicate and to apply); a snapshot lets openraft purge them.

use super::TypeConfig;
use crate::durable_file::write_durably;
use crate::wal::codec::{self, Decoded};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, OptionalSend, StorageError, StorageIOError, Vote};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::watch;

type Nid = u64;
type SErr = StorageError<Nid>;

/// A segment is rolled once it holds this much.
const SEGMENT_TARGET: u64 = 64 << 20;

fn werr(e: impl std::error::Error + 'static) -> SErr {
    StorageIOError::<Nid>::write_logs(AnyError::new(&e)).into()
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

struct Inner {
    dir: PathBuf,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// (first index named, path), in order; the last is appended to.
    segments: Vec<(u64, PathBuf)>,
    file: Arc<File>,
    size: u64,
    vote: Option<Vote<Nid>>,
    purged: Option<LogId<Nid>>,
    committed: Option<LogId<Nid>>,
    sync: mpsc::Sender<(Arc<File>, u64)>,
    /// Number of the last append (entries read at open count as 0: synced).
    seq: u64,
    /// First index of each append still in the log → its number: an
    /// entry's append is the last one starting at or below it.
    appends: BTreeMap<u64, u64>,
}

/// How far this node's log is on disk, shared with the sync thread and with
/// waiters: the highest append number fdatasync'd, and a tick on every
/// append and every sync, to wake whoever waits for an entry.
struct Progress {
    synced: AtomicU64,
    tick: watch::Sender<u64>,
}

impl Progress {
    fn tick(&self) {
        self.tick.send_modify(|t| *t = t.wrapping_add(1));
    }
}

/// Whether an entry (index, term) is on this node's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDisk {
    Yes,
    /// In the log, not yet fdatasync'd.
    Unsynced,
    /// Not in the log: not arrived yet, or an older term's entry sits at
    /// that index (a lagging follower; a leader holds every committed entry).
    Absent,
    /// A newer term's entry replaced it here: it was never committed.
    Replaced,
}

/// Cheap to clone; every clone is the same log (the reader openraft asks
/// for is a clone).
#[derive(Clone)]
pub struct LogStore(Arc<Mutex<Inner>>, Arc<Progress>);

impl LogStore {
    /// Opens (or creates) the log in `dir`. A torn frame at the very end of
    /// the last segment (a crash mid-write; nothing was acknowledged for it)
    /// is cut off; damage anywhere else refuses to start.
    /// `sync_delay` (a test hook, `--test-sync-delay-ms`) holds each
    /// fdatasync back, so tests can see who waits for the disk.
    pub fn open(dir: &Path, sync_delay: std::time::Duration) -> anyhow::Result<LogStore> {
        use anyhow::Context;
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let vote: Option<Vote<Nid>> = read_json(&dir.join("vote"))?;
        let purged: Option<LogId<Nid>> = read_json(&dir.join("purged"))?;
        let mut segments = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(n) = name
                .strip_suffix(".log")
                .and_then(|n| n.parse::<u64>().ok())
            {
                segments.push((n, e.path()));
            }
        }
        segments.sort();
        let mut entries = BTreeMap::new();
        // Entries at or below the purge point are covered by a snapshot.
        let keep = |index: u64| purged.is_none_or(|p| index > p.index);
        for (i, (_, path)) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let mut buf = Vec::new();
            File::open(path)?.read_to_end(&mut buf)?;
            if buf.len() < codec::SEGMENT_HEADER_LEN {
                if last {
                    // Crashed while creating it: write a fresh header below.
                    buf.clear();
                    fs::write(path, codec::encode_segment_header())?;
                    File::open(path)?.sync_all()?;
                    continue;
                }
                anyhow::bail!("{}: shorter than a segment header", path.display());
            }
            codec::check_segment_header(&buf[..codec::SEGMENT_HEADER_LEN])
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let mut off = codec::SEGMENT_HEADER_LEN;
            loop {
                match codec::decode_frame(&buf[off..]) {
                    Decoded::Frame(f, n) => {
                        let entry: Entry<TypeConfig> = postcard::from_bytes(&f.payload)
                            .with_context(|| {
                                format!("{} at offset {off}: entry does not decode", path.display())
                            })?;
                        if keep(f.index) {
                            entries.insert(f.index, entry);
                        }
                        off += n;
                    }
                    Decoded::End => break,
                    Decoded::Truncated if last => {
                        tracing::warn!(
                            "{}: cut {} bytes of a torn entry at offset {off} (a crash mid-write; never acknowledged)",
                            path.display(),
                            buf.len() - off
                        );
                        let f = OpenOptions::new().write(true).open(path)?;
                        f.set_len(off as u64)?;
                        f.sync_all()?;
                        break;
                    }
                    Decoded::Truncated | Decoded::Corrupt(_) => anyhow::bail!(
                        "{} at offset {off}: damaged Raft log entry; refusing to start",
                        path.display()
                    ),
                }
            }
        }
        if let (Some(first), Some(last)) = (entries.keys().next(), entries.keys().last()) {
            let hole = (last - first + 1) as usize != entries.len()
                || purged.is_some_and(|p| *first != p.index + 1);
            if hole {
                anyhow::bail!(
                    "{}: the Raft log has a hole (entries {first}..={last}, {} present, purged to {purged:?})",
                    dir.display(),
                    entries.len()
                );
            }
        }
        if segments.is_empty() {
            let first = purged.map(|p| p.index + 1).unwrap_or(0);
            let path = dir.join(segment_name(first));
            fs::write(&path, codec::encode_segment_header())?;
            File::open(&path)?.sync_all()?;
            File::open(dir)?.sync_all()?;
            segments.push((first, path));
        }
        let path = segments.last().unwrap().1.clone();
        let file = OpenOptions::new().append(true).open(&path)?;
        file.sync_all()?;
        let size = file.metadata()?.len();
        let (tx, rx) = mpsc::channel::<(Arc<File>, u64)>();
        let progress = Arc::new(Progress {
            synced: AtomicU64::new(0),
            tick: watch::Sender::new(0),
        });
        let p = progress.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || sync_loop(rx, &p, sync_delay))?;
        Ok(LogStore(
            Arc::new(Mutex::new(Inner {
                dir: dir.to_path_buf(),
                entries,
                segments,
                file: Arc::new(file),
                size,
                vote,
                purged,
                committed: None,
                sync: tx,
                seq: 0,
                appends: BTreeMap::new(),
            })),
            progress,
        ))
    }

    /// Whether entry (`index`, `term`) is on this node's disk. Entries at or
    /// below the purge point are: a snapshot written durably holds them.
    pub fn on_disk(&self, index: u64, term: u64) -> OnDisk {
        let g = self.0.lock();
        if g.purged.is_some_and(|p| index <= p.index) {
            return OnDisk::Yes;
        }
        match g.entries.get(&index).map(|e| e.log_id.leader_id.term) {
            None => OnDisk::Absent,
            Some(t) if t > term => OnDisk::Replaced,
            Some(t) if t < term => OnDisk::Absent,
            Some(_) => {
                let seq = g
                    .appends
                    .range(..=index)
                    .next_back()
                    .map(|(_, s)| *s)
                    .unwrap_or(0);
                if seq <= self.1.synced.load(Ordering::Acquire) {
                    OnDisk::Yes
                } else {
                    OnDisk::Unsynced
                }
            }
        }
    }

    /// Waits until entry (`index`, `term`) is on this node's disk, or until
    /// waiting cannot help (replaced; absent on a leader, `have_all`: it
    /// holds every committed entry), or until `until`; returns where it
    /// stands then.
    pub async fn wait_on_disk(
        &self,
        index: u64,
        term: u64,
        have_all: bool,
        until: tokio::time::Instant,
    ) -> OnDisk {
        let mut ticks = self.1.tick.subscribe();
        loop {
            let now = self.on_disk(index, term);
            match now {
                OnDisk::Yes | OnDisk::Replaced => return now,
                OnDisk::Absent if have_all => return now,
                OnDisk::Absent | OnDisk::Unsynced => {}
            }
            if tokio::time::timeout_at(until, ticks.changed())
                .await
                .is_err()
            {
                return now;
            }
        }
    }

    /// The last entry's index (0 for an empty log).
    pub fn last_index(&self) -> u64 {
        let g = self.0.lock();
        g.entries
            .keys()
            .last()
            .copied()
            .or(g.purged.map(|p| p.index))
            .unwrap_or(0)
    }

    /// The saved vote (before openraft starts: seeding the first term).
    pub fn vote(&self) -> Option<Vote<Nid>> {
        self.0.lock().vote
    }

    pub fn save_vote_now(&self, vote: &Vote<Nid>) -> std::io::Result<()> {
        let mut g = self.0.lock();
        write_durably(&g.dir, "vote", &serde_json::to_vec(vote).unwrap())?;
        g.vote = Some(*vote);
        Ok(())
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).map_err(|e| {
            anyhow::anyhow!("{}: does not decode: {e}", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// fdatasyncs behind the appends: takes every append waiting, syncs each
/// file once, then publishes the highest append number synced.
fn sync_loop(
    rx: mpsc::Receiver<(Arc<File>, u64)>,
    progress: &Progress,
    delay: std::time::Duration,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        // After the batch is taken: every append waits at least `delay`.
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut synced: Vec<Arc<File>> = Vec::new();
        for (file, _) in &batch {
            if !synced.iter().any(|f| Arc::ptr_eq(f, file)) {
                if let Err(e) = file.sync_data() {
                    // Entries were acknowledged as written: memory and
                    // peers are ahead of this disk, which cannot be undone.
                    tracing::error!("Raft log fdatasync failed, aborting so a restart serves only what is on disk: {e}");
                    std::process::abort();
                }
                synced.push(file.clone());
            }
        }
        let top = batch.iter().map(|(_, seq)| *seq).max().unwrap_or(0);
        progress.synced.fetch_max(top, Ordering::AcqRel);
        progress.tick();
    }
}

impl Inner {
    fn new_segment(&mut self, first: u64) -> std::io::Result<()> {
        let path = self.dir.join(segment_name(first));
        let mut f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        f.write_all(&codec::encode_segment_header())?;
        f.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        self.file = Arc::new(f);
        self.size = codec::SEGMENT_HEADER_LEN as u64;
        self.segments.push((first, path));
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        let g = self.0.lock();
        Ok(g.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let g = self.0.lock();
        let last = g.entries.values().last().map(|e| e.log_id).or(g.purged);
        Ok(LogState {
            last_purged_log_id: g.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<Nid>) -> Result<(), SErr> {
        self.save_vote_now(vote)
            .map_err(|e| StorageIOError::<Nid>::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<Nid>>, SErr> {
        Ok(self.0.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<Nid>>) -> Result<(), SErr> {
        // Memory only: after a restart the leader tells us again.
        self.0.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<Nid>>, SErr> {
        Ok(self.0.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut g = self.0.lock();
        let mut bytes = Vec::new();
        let mut batch = Vec::new();
        for e in entries {
            let payload = postcard::to_allocvec(&e).map_err(werr)?;
            codec::encode_frame(
                e.log_id.index,
                e.log_id.leader_id.term,
                &payload,
                &mut bytes,
            );
            batch.push(e);
        }
        let Some(first) = batch.first().map(|e| e.log_id.index) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        if g.size >= SEGMENT_TARGET {
            g.new_segment(first).map_err(werr)?;
        }
        (&*g.file).write_all(&bytes).map_err(werr)?;
        g.size += bytes.len() as u64;
        for e in batch {
            g.entries.insert(e.log_id.index, e);
        }
        g.seq += 1;
        let seq = g.seq;
        g.appends.insert(first, seq);
        let file = g.file.clone();
        g.sync
            .send((file, seq))
            .map_err(|_| werr(std::io::Error::other("the log sync thread stopped")))?;
        drop(g);
        // Written (in the page cache): counts towards a majority now.
        callback.log_io_completed(Ok(()));
        self.1.tick();
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<Nid>) -> Result<(), SErr> {
        // Rare: a follower drops entries a new leader never had. Segments
        // from `log_id` on go; the one holding it is rewritten without them.
        let mut g = self.0.lock();
        let from = log_id.index;
        g.entries.split_off(&from);
        g.appends.split_off(&from);
        let dir = g.dir.clone();
        while g.segments.len() > 1 && g.segments.last().unwrap().0 >= from {
            let (_, path) = g.segments.pop().unwrap();
            fs::remove_file(&path).map_err(werr)?;
        }
        let (seg_first, path) = g.segments.last().cloned().unwrap();
        let mut bytes = codec::encode_segment_header().to_vec();
        for (i, e) in g.entries.range(seg_first..from) {
            let payload = postcard::to_allocvec(e).map_err(werr)?;
            codec::encode_frame(*i, e.log_id.leader_id.term, &payload, &mut bytes);
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        write_durably(&dir, &name, &bytes).map_err(werr)?;
        let f = OpenOptions::new().append(true).open(&path).map_err(werr)?;
        g.file = Arc::new(f);
        g.size = bytes.len() as u64;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<Nid>) -> Result<(), SErr> {
        let mut g = self.0.lock();
        // The purge point first: a crash after it leaves entries a restart skips.
        write_durably(&g.dir, "purged", &serde_json::to_vec(&log_id).unwrap()).map_err(werr)?;
        g.purged = Some(log_id);
        let keep = g.entries.split_off(&(log_id.index + 1));
        g.entries = keep;
        // Keep the append that covers the first entry left.
        if let Some((&first, _)) = g.appends.range(..=log_id.index + 1).next_back() {
            g.appends = g.appends.split_off(&first);
        }
        // Whole segments whose every entry is purged (never the last one).
        while g.segments.len() > 1 && g.segments[1].0 <= log_id.index + 1 {
            let (_, path) = g.segments.remove(0);
            fs::remove_file(&path).map_err(werr)?;
        }
        Ok(())
    }
}
