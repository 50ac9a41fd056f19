//! lseek(2) SEEK_DATA / SEEK_HOLE for weftfs.
//!
//! weft stores a file as fixed-size chunks. A chunk never written is a hole
//! that the MDS lists with chunk_id 0; inside a written chunk, a replica's
//! daemon reports which 64 KiB blocks hold data (ChunkSpace.DataExtents: the
//! replica is a sparse file). So data and holes are found at block
//! granularity: a block holding any stored byte is data in full (POSIX lets a
//! file system report a hole as data, never data as a hole), and the end of
//! the file is a hole. If no replica answers, the whole chunk counts as data.
//! Punched and zeroed ranges are stored zeros, so they are data. The client's
//! own unflushed writes are stored first, so they count. A packed file
//! (segments.rs) has no chunk: its needle's bytes `[0, len)` are data
//! (dense), and what lies past them up to the size (a truncate up) reads as
//! zeros and is a hole.
//!
//! Invariants: SEEK_DATA returns an offset in [offset, size) or ENXIO;
//! SEEK_HOLE returns an offset in [offset, size] or ENXIO when offset is at or
//! past the end (or negative), as ext4 does.

use std::sync::Arc;

use weft_proto::{Caller, Errno};

use crate::client::Weft;

/// Chunks asked of the MDS per GetChunks call.
const BATCH: u32 = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    Data,
    Hole,
}

/// The answer within `[lo, hi)` of one chunk whose data is `extents`
/// (ascending, disjoint, inside `[lo, hi)`), or None if none there.
pub fn match_in_chunk(seek: Seek, lo: u64, hi: u64, extents: &[(u64, u64)]) -> Option<u64> {
    match seek {
        Seek::Data => extents.first().map(|&(s, _)| s.max(lo)).filter(|&s| s < hi),
        Seek::Hole => {
            let mut at = lo;
            for &(s, e) in extents {
                if s > at {
                    break;
                }
                at = at.max(e);
            }
            (at < hi).then_some(at)
        }
    }
}

/// The answer for a packed file of `size` bytes whose needle holds the
/// first `data_end` of them (`offset` is below the size).
pub fn in_packed(seek: Seek, offset: u64, data_end: u64) -> Result<u64, Errno> {
    match seek {
        Seek::Data if offset < data_end => Ok(offset),
        Seek::Data => Err(Errno(libc::ENXIO)),
        Seek::Hole => Ok(offset.max(data_end)),
    }
}

/// The answer once no chunk below the end of the file matched.
pub fn past_last_chunk(seek: Seek, size: u64) -> Result<u64, Errno> {
    match seek {
        Seek::Data => Err(Errno(libc::ENXIO)),
        Seek::Hole => Ok(size),
    }
}

impl Weft {
    pub async fn seek_data_hole(
        self: &Arc<Self>,
        c: &Caller,
        ino: u64,
        offset: i64,
        seek: Seek,
    ) -> Result<u64, Errno> {
        if let Some(st) = self.files.get(ino) {
            self.flush_file(&st).await?;
        }
        let first = self.mds.get_chunks(c, ino, 0, 0).await?;
        let size = first
            .file_size
            .max(self.files.size_override(ino).unwrap_or(0));
        if offset < 0 || offset as u64 >= size {
            return Err(Errno(libc::ENXIO));
        }
        let offset = offset as u64;
        if let Some(n) = &first.packed {
            return in_packed(seek, offset, n.len.min(size));
        }
        let cs = first.chunk_size.max(1);
        let end_index = size.div_ceil(cs);
        let mut index = offset / cs;
        while index < end_index {
            let count = (end_index - index).min(BATCH as u64) as u32;
            let list = self.mds.get_chunks(c, ino, index, count).await?;
            if list.chunks.is_empty() {
                break;
            }
            for (i, loc) in list.chunks.iter().enumerate() {
                let start = (index + i as u64) * cs;
                // The part of this chunk at or past `offset` and below the size.
                let lo = offset.saturating_sub(start);
                let hi = (size - start).min(cs);
                if lo >= hi {
                    continue;
                }
                let extents = if loc.chunk_id == 0 {
                    Vec::new()
                } else {
                    match self.chunks.data_extents(loc, lo, hi - lo).await {
                        Ok(e) => e,
                        Err(s) => {
                            tracing::info!(ino, chunk = loc.chunk_id, status = %s, "no replica told where its data is; counting the chunk as data");
                            vec![(lo, hi)]
                        }
                    }
                };
                if let Some(at) = match_in_chunk(seek, lo, hi, &extents) {
                    return Ok(start + at);
                }
            }
            index += list.chunks.len() as u64;
        }
        past_last_chunk(seek, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_the_first_extent_at_or_after_the_offset() {
        let ext = [(100, 200), (300, 350)];
        assert_eq!(match_in_chunk(Seek::Data, 0, 1000, &ext), Some(100));
        // Extents are clipped to [lo, hi) by the daemon; lo inside one is data.
        assert_eq!(
            match_in_chunk(Seek::Data, 150, 1000, &[(150, 200), (300, 350)]),
            Some(150)
        );
        assert_eq!(match_in_chunk(Seek::Data, 0, 1000, &[]), None);
    }

    #[test]
    fn holes_are_gaps_between_extents_and_the_rest_of_the_chunk() {
        let ext = [(0, 100), (100, 200), (300, 350)];
        assert_eq!(match_in_chunk(Seek::Hole, 0, 1000, &ext), Some(200));
        assert_eq!(match_in_chunk(Seek::Hole, 50, 1000, &[(50, 60)]), Some(60));
        assert_eq!(match_in_chunk(Seek::Hole, 0, 1000, &[(10, 20)]), Some(0));
        // All data up to the end of the range: no hole in this chunk.
        assert_eq!(match_in_chunk(Seek::Hole, 0, 350, &[(0, 350)]), None);
        assert_eq!(match_in_chunk(Seek::Hole, 0, 1000, &[]), Some(0));
        assert_eq!(past_last_chunk(Seek::Hole, 300), Ok(300));
        assert_eq!(past_last_chunk(Seek::Data, 350), Err(Errno(libc::ENXIO)));
    }

    #[test]
    fn a_needle_is_data_and_what_follows_it_a_hole() {
        // 100 bytes of needle in a file of 100 bytes.
        assert_eq!(in_packed(Seek::Data, 0, 100), Ok(0));
        assert_eq!(in_packed(Seek::Data, 99, 100), Ok(99));
        assert_eq!(in_packed(Seek::Hole, 0, 100), Ok(100));
        assert_eq!(in_packed(Seek::Hole, 99, 100), Ok(100));
        // Grown to 5000 by a truncate: [100, 5000) reads as zeros.
        assert_eq!(in_packed(Seek::Data, 100, 100), Err(Errno(libc::ENXIO)));
        assert_eq!(in_packed(Seek::Data, 4999, 100), Err(Errno(libc::ENXIO)));
        assert_eq!(in_packed(Seek::Hole, 100, 100), Ok(100));
        assert_eq!(in_packed(Seek::Hole, 4000, 100), Ok(4000));
    }
}
