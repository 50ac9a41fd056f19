//! The write-ahead log on disk: numbered segment files in `DATA/wal/`.
//!
//! Invariants: entry indexes are consecutive across segments; a segment is
//! named for the index of its first entry (zero-padded, so names sort); only
//! the last segment is ever appended to. Replay trusts nothing it has not
//! checksummed: a torn frame at the very tail of the last segment is the
//! signature of a power loss mid-sync and is cut off (no fsync or close waited
//! for it); damage anywhere else means the disk lost data it had synced, and
//! replay refuses to start rather than silently dropping it. Every segment but
//! the last was synced whole before the next one was started.

use super::codec::{self, Decoded, Frame};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::durable::Durability;

/// Roll to a new segment past this size.
pub const SEGMENT_TARGET: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} at offset {offset}: {what}; refusing to start (the log is damaged before its tail)"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}.wal")
}

/// Segment files in `dir`, sorted by first index.
pub fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut segs = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir))? {
        let e = e.map_err(io_err(dir))?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(num) = name.strip_suffix(".wal") {
            if let Ok(first) = num.parse::<u64>() {
                segs.push((first, e.path()));
            }
        }
    }
    segs.sort();
    Ok(segs)
}

/// What replay found.
pub struct Replayed {
    pub frames: Vec<Frame>,
    /// A torn tail that was cut off: (segment, offset, bytes dropped).
    pub truncated_tail: Option<(PathBuf, u64, u64)>,
}

/// Reads every segment, checking each frame and that indexes run on from
/// `after` (entries at or below it — already in a snapshot — are skipped).
/// Cuts a torn tail off the last segment when `repair` is set.
pub fn replay(dir: &Path, after: u64, repair: bool) -> Result<Replayed, WalError> {
    let segs = list_segments(dir)?;
    let mut frames = Vec::new();
    let mut truncated_tail = None;
    let mut expect = None::<u64>;
    for (i, (first, path)) in segs.iter().enumerate() {
        let last_segment = i + 1 == segs.len();
        let mut buf = Vec::new();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(io_err(path))?;
        let corrupt = |offset: usize, what: String| WalError::Corrupt {
            path: path.clone(),
            offset: offset as u64,
            what,
        };
        if buf.len() < codec::SEGMENT_HEADER_LEN && last_segment {
            // Crashed while creating the segment: nothing in it was acknowledged.
            truncated_tail = Some((path.clone(), 0, buf.len() as u64));
            if repair {
                fs::remove_file(path).map_err(io_err(path))?;
            }
            break;
        }
        codec::check_segment_header(&buf).map_err(|e| corrupt(0, e))?;
        let mut off = codec::SEGMENT_HEADER_LEN;
        let mut first_in_segment = true;
        loop {
            match codec::decode_frame(&buf[off..]) {
                Decoded::End => break,
                Decoded::Frame(frame, len) => {
                    if first_in_segment && frame.index != *first {
                        return Err(corrupt(
                            off,
                            format!(
                                "first entry is {} but the file is named for {first}",
                                frame.index
                            ),
                        ));
                    }
                    if let Some(e) = expect {
                        if frame.index != e {
                            return Err(corrupt(
                                off,
                                format!("entry {} where {e} was expected", frame.index),
                            ));
                        }
                    }
                    first_in_segment = false;
                    expect = Some(frame.index + 1);
                    if frame.index > after {
                        frames.push(frame);
                    }
                    off += len;
                }
                Decoded::Truncated if last_segment => {
                    truncated_tail = Some(cut_tail(path, off as u64, buf.len() as u64, repair)?);
                    break;
                }
                Decoded::Truncated => {
                    return Err(corrupt(off, "the segment ends inside a record".into()))
                }
                Decoded::Corrupt(what) => {
                    // A bad checksum on the last frame of the last segment is a
                    // torn write too (the length landed, the payload did not).
                    let is_tail = last_segment
                        && matches!(codec::decode_frame(&buf[off..]), Decoded::Corrupt(_))
                        && frame_end(&buf[off..]).is_some_and(|end| off + end == buf.len());
                    if is_tail {
                        truncated_tail =
                            Some(cut_tail(path, off as u64, buf.len() as u64, repair)?);
                        break;
                    }
                    return Err(corrupt(off, what));
                }
            }
        }
    }
    Ok(Replayed {
        frames,
        truncated_tail,
    })
}

/// The torn tail of the last segment, from `off` to `len`: cut off (and the
/// cut made durable) when `repair` is set; either way, what was found.
fn cut_tail(
    path: &Path,
    off: u64,
    len: u64,
    repair: bool,
) -> Result<(PathBuf, u64, u64), WalError> {
    if repair {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        f.set_len(off).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok((path.to_path_buf(), off, len - off))
}

/// Where the frame starting at `buf` would end, if its length field is sane.
fn frame_end(buf: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?);
    (len <= codec::MAX_PAYLOAD).then_some(codec::FRAME_HEADER_LEN + len as usize)
}

/// Appends frames to the last segment, rolling to a new one when it grows big.
/// Appends go to the page cache; `Durability` (shared with the sync thread)
/// says how far they are on disk.
pub struct LogWriter {
    dir: PathBuf,
    file: Arc<File>,
    path: PathBuf,
    size: u64,
    /// Index of the last entry written.
    last_index: u64,
    durability: Arc<Durability>,
}

impl LogWriter {
    /// Opens the log for appending after replay; `next_index` is the index the
    /// next entry will carry. The last segment is synced first: after a kill -9
    /// replay may have read entries that were still only in the page cache.
    pub fn open(dir: &Path, next_index: u64) -> Result<Self, WalError> {
        let segs = list_segments(dir)?;
        let last_index = next_index - 1;
        match segs.last() {
            Some((_, path)) => {
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                let size = file.seek(SeekFrom::End(0)).map_err(io_err(path))?;
                file.sync_data().map_err(io_err(path))?;
                let file = Arc::new(file);
                Ok(LogWriter {
                    dir: dir.to_path_buf(),
                    durability: Durability::new(file.clone(), last_index),
                    file,
                    path: path.clone(),
                    size,
                    last_index,
                })
            }
            None => {
                let (file, path) = Self::create_segment(dir, next_index)?;
                Ok(LogWriter {
                    dir: dir.to_path_buf(),
                    durability: Durability::new(file.clone(), last_index),
                    file,
                    path,
                    size: codec::SEGMENT_HEADER_LEN as u64,
                    last_index,
                })
            }
        }
    }

    /// Shared with the sync thread and whoever waits for durability.
    pub fn durability(&self) -> Arc<Durability> {
        self.durability.clone()
    }

    fn create_segment(dir: &Path, first_index: u64) -> Result<(Arc<File>, PathBuf), WalError> {
        let path = dir.join(segment_name(first_index));
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(&codec::encode_segment_header())
            .map_err(io_err(&path))?;
        file.sync_all().map_err(io_err(&path))?;
        sync_dir(dir)?;
        Ok((Arc::new(file), path))
    }

    /// Moves on to a new segment for `first_index`. The current one is synced
    /// first: replay trusts only the tail of the last segment to be torn.
    fn next_segment(&mut self, first_index: u64) -> Result<(), WalError> {
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.durability.synced(self.last_index);
        let (file, path) = Self::create_segment(&self.dir, first_index)?;
        self.file = file;
        self.path = path;
        self.size = codec::SEGMENT_HEADER_LEN as u64;
        Ok(())
    }

    /// Writes already-framed bytes holding entries `first_index..=last_index`
    /// to the log (the page cache); the sync thread makes them durable.
    pub fn append(
        &mut self,
        first_index: u64,
        last_index: u64,
        bytes: &[u8],
    ) -> Result<(), WalError> {
        // Roll only a segment that holds entries: a fresh one is named for `first_index` already.
        if self.size >= SEGMENT_TARGET && self.size > codec::SEGMENT_HEADER_LEN as u64 {
            self.next_segment(first_index)?;
        }
        (&*self.file).write_all(bytes).map_err(io_err(&self.path))?;
        self.size += bytes.len() as u64;
        self.last_index = last_index;
        self.durability.wrote(&self.file, last_index);
        Ok(())
    }

    /// `append`, then fdatasync before returning (tools and tests).
    pub fn append_sync(&mut self, first_index: u64, bytes: &[u8]) -> Result<(), WalError> {
        let mut last = first_index;
        let mut off = 0;
        while let Decoded::Frame(f, n) = codec::decode_frame(&bytes[off..]) {
            last = f.index;
            off += n;
        }
        self.append(first_index, last, bytes)?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.durability.synced(last);
        Ok(())
    }

    /// Removes segments whose every entry is at or below `upto` (covered by a snapshot).
    pub fn drop_covered(&self, upto: u64) -> Result<usize, WalError> {
        drop_covered_in(&self.dir, upto)
    }

    /// Starts a new segment for `next_index` if the current one holds entries,
    /// so a checkpoint at `next_index - 1` covers every older segment whole.
    /// Everything before `next_index` is durable afterwards, so a snapshot
    /// never covers more than the log holds on disk.
    pub fn roll(&mut self, next_index: u64) -> Result<(), WalError> {
        if self.size > codec::SEGMENT_HEADER_LEN as u64 {
            self.next_segment(next_index)?;
        }
        Ok(())
    }
}

/// Removes segments of `dir` whose every entry is at or below `upto`. The last
/// segment is never removed (it may be the one being appended to), so this is
/// safe to run beside the writer.
pub fn drop_covered_in(dir: &Path, upto: u64) -> Result<usize, WalError> {
    let segs = list_segments(dir)?;
    let mut dropped = 0;
    for w in segs.windows(2) {
        // A segment's entries end just before the next segment's first.
        if w[1].0 <= upto + 1 {
            fs::remove_file(&w[0].1).map_err(io_err(&w[0].1))?;
            dropped += 1;
        }
    }
    if dropped > 0 {
        sync_dir(dir)?;
    }
    Ok(dropped)
}

pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_entries(dir: &Path, n: u64) -> Vec<u8> {
        let mut w = LogWriter::open(dir, 1).unwrap();
        let mut all = Vec::new();
        for i in 1..=n {
            let mut buf = Vec::new();
            codec::encode_frame(i, 0, format!("entry {i}").as_bytes(), &mut buf);
            w.append_sync(i, &buf).unwrap();
            all.extend_from_slice(&buf);
        }
        all
    }

    #[test]
    fn replay_after_cut_at_every_offset_is_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), 5);
        let seg = dir.path().join(segment_name(1));
        let full = fs::read(&seg).unwrap();
        let mut ends = vec![codec::SEGMENT_HEADER_LEN];
        let mut off = codec::SEGMENT_HEADER_LEN;
        while let Decoded::Frame(_, n) = codec::decode_frame(&full[off..]) {
            off += n;
            ends.push(off);
        }
        for cut in codec::SEGMENT_HEADER_LEN..=full.len() {
            fs::write(&seg, &full[..cut]).unwrap();
            let r = replay(dir.path(), 0, true).unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count() - 1;
            assert_eq!(r.frames.len(), whole, "cut at {cut}");
            for (i, f) in r.frames.iter().enumerate() {
                assert_eq!(f.payload, format!("entry {}", i + 1).into_bytes());
            }
            assert_eq!(
                r.truncated_tail.is_some(),
                !ends.contains(&cut),
                "cut at {cut}"
            );
            // After repair the file ends on a frame boundary, and a second replay agrees.
            let again = replay(dir.path(), 0, false).unwrap();
            assert_eq!(again.frames.len(), whole);
            assert!(again.truncated_tail.is_none());
        }
    }

    #[test]
    fn damage_before_the_tail_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), 3);
        // Start a second segment so the first is no longer the tail.
        let mut w = LogWriter::open(dir.path(), 4).unwrap();
        w.size = SEGMENT_TARGET;
        let mut buf = Vec::new();
        codec::encode_frame(4, 0, b"entry 4", &mut buf);
        w.append_sync(4, &buf).unwrap();
        assert_eq!(list_segments(dir.path()).unwrap().len(), 2);

        let seg = dir.path().join(segment_name(1));
        let mut bytes = fs::read(&seg).unwrap();
        bytes[codec::SEGMENT_HEADER_LEN + 30] ^= 1;
        fs::write(&seg, &bytes).unwrap();
        match replay(dir.path(), 0, true) {
            Err(WalError::Corrupt { path, offset, .. }) => {
                assert_eq!(path, seg);
                assert_eq!(offset, codec::SEGMENT_HEADER_LEN as u64);
            }
            other => panic!(
                "expected corruption, got {:?}",
                other.map(|r| r.frames.len())
            ),
        }
    }

    #[test]
    fn damaged_middle_of_last_segment_refuses() {
        let dir = tempfile::tempdir().unwrap();
        write_entries(dir.path(), 3);
        let seg = dir.path().join(segment_name(1));
        let mut bytes = fs::read(&seg).unwrap();
        bytes[codec::SEGMENT_HEADER_LEN + 30] ^= 1; // inside entry 1, not the tail
        fs::write(&seg, &bytes).unwrap();
        assert!(matches!(
            replay(dir.path(), 0, true),
            Err(WalError::Corrupt { .. })
        ));
    }

    #[test]
    fn drop_covered_keeps_live_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = LogWriter::open(dir.path(), 1).unwrap();
        for i in 1..=6u64 {
            if i == 3 || i == 5 {
                w.size = SEGMENT_TARGET;
            }
            let mut buf = Vec::new();
            codec::encode_frame(i, 0, b"x", &mut buf);
            w.append_sync(i, &buf).unwrap();
        }
        assert_eq!(list_segments(dir.path()).unwrap().len(), 3); // 1-2, 3-4, 5-6
        assert_eq!(w.drop_covered(4).unwrap(), 2);
        let r = replay(dir.path(), 4, false).unwrap();
        assert_eq!(
            r.frames.iter().map(|f| f.index).collect::<Vec<_>>(),
            vec![5, 6]
        );
    }
}
