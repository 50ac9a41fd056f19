//! Compaction of segments: the live-bytes figure of each segment (derived
//! state, counted again on load), what the compactor asks of the namespace
//! (`segment_infos`, `needles_in`), and its two records: `CompactBegin` (a
//! new segment of the MDS's own) and `CompactSegments` (the switch of every
//! still-matching needle to the new segment, and the removal of segments no
//! file references any more).
//!
//! Invariant: `live[chunk]` is exactly, over the files whose body is
//! `Packed { chunk, len, .. }`, their count and the sum of `needle_span(len)`
//! (what `count_live` finds).

use crate::ns::inode::{
    needle_span, Body, ChunkRef, Inode, Kind, Time, MDS_SEGMENT_SESSION, SEGMENT_PARENT,
    SEGMENT_SESSION_XATTR,
};
use crate::ns::ops::chunks::FIRST_VERSION;
use crate::ns::record::NeedleMove;
use crate::ns::{pb, Errno, Namespace};
use pb::meta_reply::Result as ReplyResult;
use std::collections::{BTreeMap, BTreeSet};

/// Live needles in one segment chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Live {
    pub needles: u64,
    /// Sum of their spans (header, data a reader gets, padding).
    pub bytes: u64,
}

impl Live {
    pub(crate) fn add(&mut self, len: u64) {
        self.needles += 1;
        self.bytes += needle_span(len);
    }

    pub(crate) fn remove(&mut self, len: u64) {
        self.needles = self.needles.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(needle_span(len));
    }
}

/// The live figure of every segment chunk, by a full scan.
pub(crate) fn count_live(inodes: &super::super::table::InodeTable) -> BTreeMap<u64, Live> {
    let mut live: BTreeMap<u64, Live> = BTreeMap::new();
    for i in inodes.values() {
        if let Body::Packed { chunk, len, .. } = i.body {
            live.entry(chunk).or_default().add(len);
        }
    }
    live
}

/// What the compactor knows of one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub ino: u64,
    /// Its chunk 0 (0: none allocated yet) and that chunk's version.
    pub chunk: u64,
    pub version: u64,
    /// The session that appends to it (`MDS_SEGMENT_SESSION`: the MDS).
    pub session: u64,
    /// How far it is written: the end of the last needle committed into
    /// it (at least the end of every live one).
    pub written: u64,
    pub live: Live,
    /// When a needle last went in (or it was made).
    pub mtime: Time,
}

impl SegmentInfo {
    /// Live bytes over written bytes (1 for an empty segment).
    pub fn live_fraction(&self) -> f64 {
        if self.written == 0 {
            return 1.0;
        }
        self.live.bytes as f64 / self.written as f64
    }
}

impl Namespace {
    pub(crate) fn live_add(&mut self, chunk: u64, len: u64) {
        self.live.entry(chunk).or_default().add(len);
    }

    pub(crate) fn live_sub(&mut self, chunk: u64, len: u64) {
        if let Some(l) = self.live.get_mut(&chunk) {
            l.remove(len);
            if l.needles == 0 {
                self.live.remove(&chunk);
            }
        }
    }

    /// The live needles of segment chunk `chunk`.
    pub fn live_in(&self, chunk: u64) -> Live {
        self.live.get(&chunk).copied().unwrap_or_default()
    }

    /// Every segment, by inode number.
    pub fn segment_infos(&self) -> Vec<SegmentInfo> {
        self.inodes
            .values()
            .filter(|i| i.is_segment())
            .map(|i| {
                let c = i.chunks().and_then(|c| c.get(&0)).copied();
                let chunk = c.map_or(0, |c| c.id);
                let live = self.live_in(chunk);
                SegmentInfo {
                    ino: i.ino,
                    chunk,
                    version: c.map_or(0, |c| c.version),
                    session: i.segment_session().unwrap_or(MDS_SEGMENT_SESSION),
                    // A snapshot from before the figure was kept: at least
                    // the live bytes.
                    written: i.alloc.get(&0).copied().unwrap_or(0).max(live.bytes),
                    live,
                    mtime: i.mtime,
                }
            })
            .collect()
    }

    /// The live needles of the segment chunks in `chunks`: per chunk, (offset,
    /// ino, len) by offset. One walk over every inode.
    pub fn needles_in(&self, chunks: &BTreeSet<u64>) -> BTreeMap<u64, Vec<(u64, u64, u64)>> {
        let mut out: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
        for i in self.inodes.values() {
            if let Body::Packed {
                chunk, offset, len, ..
            } = i.body
            {
                if chunks.contains(&chunk) {
                    out.entry(chunk).or_default().push((offset, i.ino, len));
                }
            }
        }
        for v in out.values_mut() {
            v.sort_unstable();
        }
        out
    }

    pub(crate) fn apply_compact_begin(&mut self, now: Time) -> Result<ReplyResult, Errno> {
        let (ino, chunk_id) = (self.next_ino, self.next_chunk);
        if self.inodes.contains_key(&ino) || self.chunk_owners.contains_key(&chunk_id) {
            return Err(Errno::EIO);
        }
        let mut inode = Inode::new(ino, Kind::Regular, 0o600, 0, 0, now);
        inode.parent = SEGMENT_PARENT;
        inode.nlink = 1;
        inode.xattrs.insert(
            SEGMENT_SESSION_XATTR.to_vec(),
            MDS_SEGMENT_SESSION.to_le_bytes().to_vec(),
        );
        inode.body = Body::File {
            chunks: BTreeMap::from([(
                0,
                ChunkRef {
                    id: chunk_id,
                    version: FIRST_VERSION,
                },
            )]),
        };
        let attr = self.attr_of(&inode);
        self.inodes.insert(ino, inode);
        self.chunk_owners.insert(chunk_id, (ino, 0));
        self.segments += 1;
        self.next_ino = ino.saturating_add(1);
        self.next_chunk = chunk_id.saturating_add(1);
        Ok(ReplyResult::Attr(attr))
    }

    /// The switch. Deterministic: every check is against the state.
    pub(crate) fn apply_compact_segments(
        &mut self,
        new: u64,
        end: u64,
        moves: &[NeedleMove],
        drop: &[u64],
        freed: &mut Vec<u64>,
    ) -> ReplyResult {
        let new_chunk = self
            .inodes
            .get(&new)
            .filter(|s| s.is_segment())
            .and_then(|s| s.chunks()?.get(&0))
            .map(|c| c.id);
        let mut moved = 0u64;
        if let Some(new_chunk) = new_chunk {
            for m in moves {
                let Some(i) = self.inodes.get_mut(&m.ino) else {
                    continue; // removed meanwhile
                };
                let Body::Packed {
                    chunk, offset, len, ..
                } = &mut i.body
                else {
                    continue; // emptied, or unpacked, meanwhile
                };
                if (*chunk, *offset) != (m.chunk, m.offset) || m.chunk == new_chunk {
                    continue; // its data is elsewhere now
                }
                let len = *len;
                *chunk = new_chunk;
                *offset = m.new_offset;
                self.live_sub(m.chunk, len);
                self.live_add(new_chunk, len);
                moved += 1;
            }
            if let Some(s) = self.inodes.get_mut(&new) {
                let w = s.alloc.entry(0).or_insert(0);
                *w = (*w).max(end).min(self.chunk_size);
            }
        }
        let mut removed = 0u64;
        for &seg in drop.iter().chain(new_chunk.map(|_| &new)) {
            if self.remove_segment(seg, freed) {
                removed += 1;
            }
        }
        tracing::debug!(new, moved, removed, "segments compacted");
        ReplyResult::Empty(pb::Empty {})
    }

    /// Removes segment `ino` with its chunk if no file's needle is in it.
    fn remove_segment(&mut self, ino: u64, freed: &mut Vec<u64>) -> bool {
        let Some(s) = self.inodes.get(&ino).filter(|s| s.is_segment()) else {
            return false;
        };
        let chunk = s.chunks().and_then(|c| c.get(&0)).map(|c| c.id);
        if chunk.is_some_and(|c| self.live_in(c).needles > 0) {
            return false;
        }
        freed.extend(self.purge_inode(ino));
        true
    }
}
