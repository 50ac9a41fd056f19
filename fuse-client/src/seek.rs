//! lseek(2) SEEK_DATA / SEEK_HOLE for weftfs.
//!
//! weft stores a file as fixed-size chunks, and a chunk never written is a
//! hole that the MDS lists with chunk_id 0. So data and holes are found at
//! chunk granularity: a chunk holding any stored byte counts as data in full
//! (POSIX lets a file system report a hole as data, never data as a hole), and
//! the end of the file is a hole. Punched and zeroed ranges are stored zeros,
//! so they are data. The client's own unflushed writes are stored first, so
//! they count.
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

/// The answer within one run of chunks `first_index..` (`has_data[i]` for chunk
/// `first_index + i`), or None if none of them matches.
pub fn first_match(
    seek: Seek,
    offset: u64,
    size: u64,
    chunk_size: u64,
    first_index: u64,
    has_data: &[bool],
) -> Option<u64> {
    has_data.iter().enumerate().find_map(|(i, &data)| {
        let at = ((first_index + i as u64) * chunk_size).max(offset);
        let wanted = match seek {
            Seek::Data => data,
            Seek::Hole => !data,
        };
        (wanted && at < size).then_some(at)
    })
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
        let cs = first.chunk_size.max(1);
        let end_index = size.div_ceil(cs);
        let mut index = offset / cs;
        while index < end_index {
            let count = (end_index - index).min(BATCH as u64) as u32;
            let list = self.mds.get_chunks(c, ino, index, count).await?;
            let has_data: Vec<bool> = list.chunks.iter().map(|l| l.chunk_id != 0).collect();
            if has_data.is_empty() {
                break;
            }
            if let Some(at) = first_match(seek, offset, size, cs, index, &has_data) {
                return Ok(at);
            }
            index += has_data.len() as u64;
        }
        past_last_chunk(seek, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u64 = 100;

    #[test]
    fn data_starts_at_the_first_written_chunk_or_the_offset_inside_it() {
        // chunks: hole, data, hole, data; size 350 (last chunk partial).
        let map = [false, true, false, true];
        assert_eq!(first_match(Seek::Data, 0, 350, CS, 0, &map), Some(100));
        assert_eq!(
            first_match(Seek::Data, 150, 350, CS, 1, &map[1..]),
            Some(150)
        );
        assert_eq!(
            first_match(Seek::Data, 250, 350, CS, 2, &map[2..]),
            Some(300)
        );
        assert_eq!(
            first_match(Seek::Data, 0, 350, CS, 0, &[false, false]),
            None
        );
        assert_eq!(past_last_chunk(Seek::Data, 350), Err(Errno(libc::ENXIO)));
    }

    #[test]
    fn holes_are_unwritten_chunks_and_the_end_of_the_file() {
        let map = [true, false, true];
        assert_eq!(first_match(Seek::Hole, 0, 300, CS, 0, &map), Some(100));
        assert_eq!(
            first_match(Seek::Hole, 120, 300, CS, 1, &map[1..]),
            Some(120)
        );
        assert_eq!(first_match(Seek::Hole, 200, 300, CS, 2, &map[2..]), None);
        assert_eq!(past_last_chunk(Seek::Hole, 300), Ok(300));
        // A hole chunk that starts past the size is not a hole below it.
        assert_eq!(first_match(Seek::Hole, 0, 250, CS, 2, &[true, false]), None);
    }
}
