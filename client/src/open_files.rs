//! Per-inode client state for files with open handles or unstored data, the
//! handle tables (files and directories), and global dirty-memory accounting.
//!
//! A `FileState` exists while an inode has open handles, dirty or in-flight
//! data, or chunks written since its last fsync (so an fsync through a later
//! handle still syncs them). It holds:
//! - the dirty buffer (`writeback::DirtyBuffer`) and the end of data taken by a
//!   flush but not yet committed (`inflight_end`) — together the local size
//!   override the kernel must see;
//! - the write-back error sequence: each failed store bumps `err_seq`; a handle
//!   remembers the `err_seq` it has seen, so every handle open at the time of a
//!   failure reports it exactly once on its next flush/fsync (the kernel's
//!   errseq semantics);
//! - cached `AllocChunk` answers per chunk index (valid while the file is open
//!   and the lease lasts) and the chunks to sync on fsync.
//!
//! `flush_lock` serialises flushes and truncations of one inode, so data is
//! stored in write order and a truncate never races a flush.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::Notify;
use weft_proto::{Attr, Caller, ChunkWrite, DirEntry, Errno, SetAttrReq};

use crate::writeback::DirtyBuffer;

pub struct FileInner {
    pub dirty: DirtyBuffer,
    /// When the oldest byte in `dirty` was written (for the periodic flusher).
    pub dirty_since: Option<Instant>,
    /// End of data handed to a flush that has not committed yet (0: none).
    pub inflight_end: u64,
    /// When the latest write was buffered: the mtime and ctime stat shows
    /// while data is pending (write(2) changes them at once; the MDS sets
    /// its own when the data is committed).
    pub last_write: Option<SystemTime>,
    /// Bytes handed to flushes that have not committed yet.
    pub inflight_bytes: u64,
    /// The last writer: background flushes act on its behalf.
    pub writer: Caller,
    pub opens: u32,
    /// Handles of `opens` that execve(2) opened.
    pub execs: u32,
    pub err_seq: u64,
    pub err: Option<Errno>,
    /// A background flush is queued or running (avoid piling up more).
    pub flush_queued: bool,
    pub allocs: HashMap<u64, ChunkWrite>,
    /// chunk_id → (chunk index, replica pipeline) written since the last fsync.
    pub unsynced: HashMap<u64, (u64, Vec<String>)>,
    /// The buffer holds the whole file: it was empty when opened here or
    /// truncated to 0 since, and no chunk of it was stored since (a close
    /// may pack it, segments.rs).
    pub packable: bool,
    /// The segment a needle of this file went to since the last fsync.
    pub packed_in: Option<u64>,
    /// The size the MDS gave this mount's latest open: where an O_APPEND
    /// write goes at least, though the kernel's size and the attribute
    /// cache may still lag another mount's close (its push on the way).
    pub open_size: u64,
    /// The attributes this mount's latest open, create or commit of the
    /// file was answered with: what a folded setattr is predicted from
    /// when the caches hold none (the push stream not live yet, say).
    pub open_attr: Option<Attr>,
    /// Owner, mode and time changes folded into the next commit of the
    /// buffered data (client.rs `fold_setattr`).
    pub folded: Option<FoldedAttrs>,
}

/// setattrs (chown, chmod, explicit times) made while data was buffered and
/// not sent yet: the commit that stores the data carries them
/// (`then_setattr`), so tar's fchown, fchmod and futimens before close cost
/// no round trip each. Until then `view` is what stat shows on this mount;
/// other mounts see the changes with the data, at close or fsync.
#[derive(Debug, Clone)]
pub struct FoldedAttrs {
    /// Not yet handed to a flush (a flush in progress took the earlier ones).
    pub changes: Vec<SetAttrReq>,
    /// The attributes after every folded change, taken or not.
    pub view: Attr,
    /// A change set mtime (stat shows it, not the time of the last write).
    pub mtime_set: bool,
    /// Who made them (root): who sends them again if the commit's reply
    /// does not show them.
    pub caller: Caller,
}

pub struct FileState {
    pub ino: u64,
    pub inner: Mutex<FileInner>,
    pub flush_lock: tokio::sync::Mutex<()>,
}

impl FileState {
    pub(crate) fn new(ino: u64, chunk_size: u64) -> FileState {
        FileState {
            ino,
            inner: Mutex::new(FileInner {
                dirty: DirtyBuffer::new(chunk_size),
                dirty_since: None,
                inflight_end: 0,
                last_write: None,
                inflight_bytes: 0,
                writer: Caller::default(),
                opens: 0,
                execs: 0,
                err_seq: 0,
                err: None,
                flush_queued: false,
                allocs: HashMap::new(),
                unsynced: HashMap::new(),
                packable: false,
                packed_in: None,
                open_size: 0,
                open_attr: None,
                folded: None,
            }),
            flush_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether there is data not yet committed to the MDS (buffered or in flight).
    pub fn has_pending(&self) -> bool {
        let g = self.inner.lock();
        !g.dirty.is_empty() || g.inflight_end > 0
    }

    /// Whether folded setattrs wait for a flush to carry them.
    pub fn has_folded(&self) -> bool {
        self.inner
            .lock()
            .folded
            .as_ref()
            .is_some_and(|f| !f.changes.is_empty())
    }

    /// The size the kernel must see at least, if data is pending.
    pub fn size_override(&self) -> Option<u64> {
        let g = self.inner.lock();
        let end = g.dirty.end().max(g.inflight_end);
        (!g.dirty.is_empty() || g.inflight_end > 0).then_some(end)
    }

    /// What stat shows beyond the MDS's attributes, read under one lock:
    /// while data is pending, the size at least and the pending bytes as
    /// allocated (as a local file system's delayed allocation shows them),
    /// and the last write's time; the folded setattrs' view.
    pub fn pending(&self) -> Pending {
        let g = self.inner.lock();
        let data = !g.dirty.is_empty() || g.inflight_end > 0;
        Pending {
            overlay: data.then(|| Overlay {
                size: g.dirty.end().max(g.inflight_end),
                pending_bytes: g.dirty.bytes() + g.inflight_bytes,
            }),
            write_time: if data { g.last_write } else { None },
            folded: g.folded.as_ref().map(|f| (f.view, f.mtime_set)),
        }
    }

    pub fn record_error(&self, e: Errno) {
        let mut g = self.inner.lock();
        g.err_seq += 1;
        g.err = Some(e);
    }
}

/// See `FileState::pending`.
pub struct Pending {
    pub overlay: Option<Overlay>,
    /// The last write's time, while its data is pending.
    pub write_time: Option<SystemTime>,
    /// The folded setattrs' attributes, and whether they set mtime.
    pub folded: Option<(Attr, bool)>,
}

/// See `FileState::pending`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overlay {
    pub size: u64,
    pub pending_bytes: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Handle {
    pub ino: u64,
    pub seen_err: u64,
    /// Opened by execve(2) (__FMODE_EXEC): the program runs until released.
    pub exec: bool,
    /// Opened for writing (O_WRONLY, O_RDWR): its Release tells the MDS so.
    pub write: bool,
}

/// An open directory stream: a page of entries from the MDS not yet handed to
/// the kernel, and the cookie just before the first of them.
#[derive(Default)]
pub struct DirHandle {
    pub buf: std::collections::VecDeque<DirEntry>,
    pub after: u64,
    pub eof: bool,
    pub plus: bool,
    pub valid: bool,
}

pub struct OpenFiles {
    chunk_size: u64,
    files: Mutex<HashMap<u64, Arc<FileState>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirHandle>>>>,
    /// Each open directory handle's attributes at open time: what fstat shows
    /// once the directory is removed (rmdir, or a rename over it) while still
    /// open, with nlink 0, as on a local file system.
    dir_attrs: Mutex<HashMap<u64, weft_proto::Attr>>,
    next_fh: AtomicU64,
    dirty_total: AtomicU64,
    /// Signalled whenever dirty memory is released.
    pub dirty_released: Notify,
}

impl OpenFiles {
    pub fn new(chunk_size: u64) -> OpenFiles {
        OpenFiles {
            chunk_size,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            dir_attrs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            dirty_total: AtomicU64::new(0),
            dirty_released: Notify::new(),
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<FileState>> {
        self.files.lock().get(&ino).cloned()
    }

    pub fn get_or_create(&self, ino: u64) -> Arc<FileState> {
        self.files
            .lock()
            .entry(ino)
            .or_insert_with(|| Arc::new(FileState::new(ino, self.chunk_size)))
            .clone()
    }

    /// Runs `f` on the state of `ino` (created if needed) while the table is
    /// locked, so `maybe_drop` cannot detach the state between lookup and
    /// update (data written into a detached state would never be stored).
    pub fn update<R>(&self, ino: u64, f: impl FnOnce(&mut FileInner) -> R) -> (Arc<FileState>, R) {
        let mut files = self.files.lock();
        let st = files
            .entry(ino)
            .or_insert_with(|| Arc::new(FileState::new(ino, self.chunk_size)))
            .clone();
        let r = f(&mut st.inner.lock());
        (st, r)
    }

    pub fn all(&self) -> Vec<Arc<FileState>> {
        self.files.lock().values().cloned().collect()
    }

    pub fn size_override(&self, ino: u64) -> Option<u64> {
        self.get(ino).and_then(|f| f.size_override())
    }

    /// The inodes with setattrs folded and not yet sent (none, as a rule:
    /// tar's close sends them right after).
    pub fn folded(&self) -> Vec<u64> {
        self.files
            .lock()
            .values()
            .filter(|st| st.has_folded())
            .map(|st| st.ino)
            .collect()
    }

    /// Registers an open handle of `ino` (`exec`: opened by execve; `write`:
    /// for writing); returns the fh.
    pub fn open(&self, ino: u64, exec: bool, write: bool) -> u64 {
        let st = self.get_or_create(ino);
        let seen_err = {
            let mut g = st.inner.lock();
            g.opens += 1;
            g.execs += u32::from(exec);
            g.err_seq
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(
            fh,
            Handle {
                ino,
                seen_err,
                exec,
                write,
            },
        );
        fh
    }

    /// Handles of `ino` open on this mount.
    pub fn opens(&self, ino: u64) -> u32 {
        self.get(ino).map_or(0, |st| st.inner.lock().opens)
    }

    /// Whether a program runs from `ino` on this mount (an execve handle is open).
    pub fn executing(&self, ino: u64) -> bool {
        self.get(ino).is_some_and(|st| st.inner.lock().execs > 0)
    }

    /// The write-back error this handle has not seen yet, marking it seen.
    pub fn take_unseen_error(&self, fh: u64, st: &FileState) -> Option<Errno> {
        let (seq, err) = {
            let g = st.inner.lock();
            (g.err_seq, g.err)
        };
        let mut handles = self.handles.lock();
        let h = handles.get_mut(&fh)?;
        if h.seen_err < seq {
            h.seen_err = seq;
            err
        } else {
            None
        }
    }

    /// The program that opened handle `fh` by execve(2) has let go of it:
    /// called in request order when its release arrives, so an open(2) with
    /// O_TRUNC that the kernel sends after the program's exit never meets
    /// ETXTBSY while the release is still being processed.
    pub fn end_exec(&self, fh: u64) {
        let ino = {
            let mut handles = self.handles.lock();
            let Some(h) = handles.get_mut(&fh) else {
                return;
            };
            if !h.exec {
                return;
            }
            h.exec = false;
            h.ino
        };
        if let Some(st) = self.get(ino) {
            let mut g = st.inner.lock();
            g.execs = g.execs.saturating_sub(1);
        }
    }

    /// Forgets a handle; returns it if it existed.
    pub fn close(&self, fh: u64) -> Option<Handle> {
        let h = self.handles.lock().remove(&fh)?;
        if let Some(st) = self.get(h.ino) {
            let mut g = st.inner.lock();
            g.opens = g.opens.saturating_sub(1);
            if h.exec {
                g.execs = g.execs.saturating_sub(1);
            }
            if g.opens == 0 {
                // Leases are only trusted while the file is open.
                g.allocs.clear();
            }
        }
        self.maybe_drop(h.ino);
        Some(h)
    }

    /// Drops the state of `ino` if nothing needs it any more.
    /// The file is empty at the MDS as this open saw it: unless data of
    /// this mount is pending, a later flush holds all of it.
    pub fn mark_packable(&self, ino: u64) {
        if let Some(st) = self.get(ino) {
            let mut g = st.inner.lock();
            if g.dirty.is_empty() && g.inflight_end == 0 {
                g.packable = true;
            }
        }
    }

    pub fn maybe_drop(&self, ino: u64) {
        let mut files = self.files.lock();
        let idle = files.get(&ino).is_some_and(|st| {
            let g = st.inner.lock();
            g.opens == 0
                && g.dirty.is_empty()
                && g.inflight_end == 0
                && g.unsynced.is_empty()
                && g.packed_in.is_none()
                && !g.flush_queued
                && g.folded.is_none()
        });
        if idle {
            files.remove(&ino);
        }
    }

    pub fn add_dirty(&self, n: u64) {
        self.dirty_total.fetch_add(n, Ordering::AcqRel);
    }

    pub fn release_dirty(&self, n: u64) {
        if n > 0 {
            self.dirty_total.fetch_sub(n, Ordering::AcqRel);
            self.dirty_released.notify_waiters();
        }
    }

    pub fn dirty_total(&self) -> u64 {
        self.dirty_total.load(Ordering::Acquire)
    }

    pub fn open_dir(&self, opened_as: Option<weft_proto::Attr>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .insert(fh, Arc::new(tokio::sync::Mutex::new(DirHandle::default())));
        if let Some(a) = opened_as {
            self.dir_attrs.lock().insert(fh, a);
        }
        fh
    }

    /// A directory `ino` the MDS no longer has but this client holds open:
    /// its attributes at open time with nlink 0.
    pub fn removed_dir_attr(&self, ino: u64) -> Option<weft_proto::Attr> {
        let mut a = *self.dir_attrs.lock().values().find(|a| a.ino == ino)?;
        a.nlink = 0;
        Some(a)
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<tokio::sync::Mutex<DirHandle>>> {
        self.dirs.lock().get(&fh).cloned()
    }

    pub fn close_dir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
        self.dir_attrs.lock().remove(&fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errseq_reports_once_per_handle() {
        let of = OpenFiles::new(1 << 20);
        let a = of.open(5, false, false);
        let b = of.open(5, false, false);
        let st = of.get(5).unwrap();
        assert_eq!(of.take_unseen_error(a, &st), None);
        st.record_error(Errno::ENOSPC);
        assert_eq!(of.take_unseen_error(a, &st), Some(Errno::ENOSPC));
        assert_eq!(of.take_unseen_error(a, &st), None, "seen once");
        // A handle opened after the failure does not see it.
        let c = of.open(5, false, false);
        assert_eq!(of.take_unseen_error(c, &st), None);
        assert_eq!(of.take_unseen_error(b, &st), Some(Errno::ENOSPC));
    }

    #[test]
    fn executing_while_an_exec_handle_is_open() {
        let of = OpenFiles::new(1 << 20);
        let plain = of.open(3, false, false);
        assert!(!of.executing(3));
        let a = of.open(3, true, false);
        let b = of.open(3, true, false);
        of.close(plain);
        of.close(a);
        assert!(of.executing(3), "one program still runs");
        of.close(b);
        assert!(!of.executing(3));
        // A release ends the program's hold at once, before the handle's
        // close (the flush and the MDS's Release) has run.
        let c = of.open(3, true, false);
        of.end_exec(c);
        assert!(!of.executing(3), "released, not yet closed");
        of.end_exec(c);
        of.close(c);
        let d = of.open(3, true, false);
        assert!(of.executing(3), "counted once, not twice");
        of.close(d);
        assert!(!of.executing(3));
    }

    #[test]
    fn state_lives_while_needed() {
        let of = OpenFiles::new(1 << 20);
        let fh = of.open(9, false, false);
        let st = of.get(9).unwrap();
        st.inner.lock().dirty.write(0, b"x");
        assert_eq!(st.size_override(), Some(1));
        assert!(of.close(fh).is_some());
        assert!(of.get(9).is_some(), "dirty data keeps the state");
        st.inner.lock().dirty.take();
        st.inner.lock().unsynced.insert(77, (0, vec!["a".into()]));
        of.maybe_drop(9);
        assert!(of.get(9).is_some(), "unsynced chunks keep the state");
        st.inner.lock().unsynced.clear();
        of.maybe_drop(9);
        assert!(of.get(9).is_none());
        assert!(of.close(fh).is_none());
    }

    #[test]
    fn size_override_covers_inflight() {
        let of = OpenFiles::new(10);
        let st = of.get_or_create(3);
        assert_eq!(st.size_override(), None);
        st.inner.lock().inflight_end = 25;
        st.inner.lock().dirty.write(5, b"abc");
        assert_eq!(st.size_override(), Some(25));
        assert!(st.has_pending());
    }
}
