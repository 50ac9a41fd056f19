//! One open chunk replica file: checked reads, in-place writes that keep the
//! crc table right, truncation, and space accounting. Synchronous std I/O; the
//! caller (the `Store`) holds the chunk's lock for the whole operation.
//!
//! Invariants kept on disk (see `format.rs` for the layout):
//! * every block's crc entry matches the block's bytes as stored, holes and
//!   bytes past end of file reading as zeros;
//! * every block at or past `ceil(data_len / 64 KiB)` is all zeros and carries
//!   `zero_block_crc()`; the file holds nothing past `H + data_len` except zeros.
//!
//! Ordering of a write, and what a crash leaves:
//! 1. the first and last block, when only partly covered, are read and their
//!    old crc verified (a mismatch means the replica is already corrupt:
//!    DATA_LOSS, nothing is changed);
//! 2. the range is preallocated with fallocate, so a full disk fails here,
//!    before any byte changes (RESOURCE_EXHAUSTED, the chunk reads as before);
//! 3. the data is pwritten in place;
//! 4. the fixed fields and the crc entries up to the last touched block are
//!    pwritten in one call at offset 0.
//!
//! A punch (fallocate PUNCH_HOLE/ZERO_RANGE) is a write of zeros in the same
//! order, except that in 3 the blocks it covers whole are punched out of the
//! file (a hole, its space given back) instead of written.
//!
//! A crash between 3 and 4 leaves blocks whose bytes and crcs disagree: the
//! next read (or the scrubber) finds the mismatch, the replica is reported
//! corrupt and re-replicated from the others — the GFS approach; nothing
//! unverified is ever served. Durability comes only from `sync` (fdatasync),
//! which the client asks for with WriteReq.sync or the Sync RPC.
//!
//! Creation writes the whole header to `<name>.tmp`, fsyncs it, renames it into
//! place and fsyncs the directory, so a chunk file that exists always has a
//! complete header. Truncation verifies the block holding the new end, cuts the
//! file with ftruncate, then rewrites the header; a crash in between again
//! shows up as crc mismatches, never as wrong data served.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::error::{Result, StoreError};
use super::format::{self, block_crc, zero_block_crc, FormatError, Header, BLOCK_SIZE, FIXED_LEN};

const BS: u64 = BLOCK_SIZE as u64;

pub struct ChunkFile {
    file: File,
    path: PathBuf,
    header: Header,
}

/// Reads into `buf` at `pos`, zero-filling whatever lies past end of file.
fn pread_zero_fill(file: &File, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => {
                buf[done..].fill(0);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// fsyncs a directory so a rename or unlink in it is durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl ChunkFile {
    /// Creates a new replica file durably (temp file, fsync, rename, fsync dir).
    pub fn create(path: &Path, header: Header) -> Result<ChunkFile> {
        let id = header.id;
        let tmp = path.with_extension("chunk.tmp");
        let result = (|| -> std::io::Result<File> {
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&header.encode())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            fsync_dir(path.parent().expect("chunk path has a parent"))?;
            Ok(f)
        })();
        match result {
            Ok(file) => Ok(ChunkFile {
                file,
                path: path.to_owned(),
                header,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(StoreError::io(id, format!("create {}", path.display()), e))
            }
        }
    }

    /// Opens an existing replica and checks its header belongs to chunk `id`.
    pub fn open(path: &Path, id: u64) -> Result<ChunkFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    StoreError::NotFound { id }
                } else {
                    StoreError::io(id, format!("open {}", path.display()), e)
                }
            })?;
        let header = Self::read_header(&file, path, id)?;
        Ok(ChunkFile {
            file,
            path: path.to_owned(),
            header,
        })
    }

    fn read_header(file: &File, path: &Path, id: u64) -> Result<Header> {
        let bad = |reason| StoreError::BadHeader {
            id,
            path: path.to_owned(),
            reason,
        };
        let io = |e| StoreError::io(id, format!("read header of {}", path.display()), e);
        let flen = file.metadata().map_err(io)?.len();
        let mut fixed = [0u8; FIXED_LEN];
        if flen < FIXED_LEN as u64 {
            return Err(bad(FormatError::Short(flen as usize)));
        }
        pread_zero_fill(file, &mut fixed, 0).map_err(io)?;
        let (found, _, chunk_size, _) = Header::decode_fixed(&fixed).map_err(bad)?;
        if found != id {
            return Err(bad(FormatError::IdMismatch {
                found,
                expected: id,
            }));
        }
        let hlen = format::header_len(chunk_size);
        if flen < hlen {
            return Err(bad(FormatError::Short(flen as usize)));
        }
        let mut buf = vec![0u8; hlen as usize];
        pread_zero_fill(file, &mut buf, 0).map_err(io)?;
        Header::decode(&buf).map_err(bad)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn io_err(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError::io(self.header.id, format!("{what} {}", self.path.display()), e)
    }

    /// Raw bytes of blocks `first..first+n` as stored (zeros past end of file).
    fn read_blocks_raw(&self, first: u64, n: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; (n * BS) as usize];
        pread_zero_fill(&self.file, &mut buf, self.header.header_len() + first * BS)
            .map_err(|e| self.io_err("read", e))?;
        Ok(buf)
    }

    /// Checks `buf` (the raw bytes of blocks starting at `first`) against the crc table.
    fn verify(&self, first: u64, buf: &[u8]) -> Result<()> {
        for (i, blk) in buf.chunks(BS as usize).enumerate() {
            let b = first + i as u64;
            if block_crc(blk) != self.header.crcs[b as usize] {
                return Err(StoreError::Corrupt {
                    id: self.header.id,
                    block: b,
                });
            }
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` (the caller checked the range is within the
    /// chunk), verifying every block touched; a mismatch is never returned as data.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let end = offset + len as u64;
        let first = offset / BS;
        let last = (end - 1) / BS;
        let buf = self.read_blocks_raw(first, last - first + 1)?;
        self.verify(first, &buf)?;
        let skip = (offset - first * BS) as usize;
        Ok(buf[skip..skip + len].to_vec())
    }

    /// Verifies blocks `first..first+n` (the scrubber's unit of work).
    pub fn verify_blocks(&self, first: u64, n: u64) -> Result<()> {
        let buf = self.read_blocks_raw(first, n)?;
        self.verify(first, &buf)
    }

    /// Checks that every block past the data length still carries the crc of a
    /// zero block: catches damage to the unused part of the crc table.
    pub fn verify_unwritten_crcs(&self) -> Result<()> {
        let from = format::nblocks(self.header.data_len) as usize;
        match self.header.crcs[from..]
            .iter()
            .position(|&c| c != zero_block_crc())
        {
            None => Ok(()),
            Some(i) => Err(StoreError::Corrupt {
                id: self.header.id,
                block: (from + i) as u64,
            }),
        }
    }

    /// Writes the header prefix covering blocks `0..upto_block` if it changed.
    fn store_header(&mut self, new: Header, upto_block: usize) -> Result<()> {
        if new != self.header {
            let buf = new.encode_prefix(upto_block);
            self.file
                .write_all_at(&buf, 0)
                .map_err(|e| self.io_err("write header of", e))?;
            self.header = new;
        }
        Ok(())
    }

    /// Writes `data` at `offset` and sets the stored version to `version`. See
    /// the module comment for the ordering. The caller checked range and version.
    pub fn write(&mut self, offset: u64, data: &[u8], version: u64) -> Result<()> {
        self.write_or_punch(offset, data, version, false)
    }

    /// Zeros `[offset, offset+len)` as a write of `zeros` would, but the
    /// blocks the range covers whole become holes in the replica file
    /// (fallocate PUNCH_HOLE|KEEP_SIZE: SEEK_DATA skips them, their space is
    /// given back) with the zero-block crc; partial edge blocks are written.
    /// Same order as a write (data first, header last), so a crash in between
    /// leaves crc mismatches, never wrong bytes served.
    /// `zeros` must be all zeros (what a write of it would store).
    pub fn punch(&mut self, offset: u64, zeros: &[u8], version: u64) -> Result<()> {
        debug_assert!(zeros.iter().all(|&b| b == 0));
        self.write_or_punch(offset, zeros, version, true)
    }

    fn write_or_punch(
        &mut self,
        offset: u64,
        data: &[u8],
        version: u64,
        punch: bool,
    ) -> Result<()> {
        let mut new = self.header.clone();
        new.version = version;
        if data.is_empty() {
            return self.store_header(new, 0);
        }
        let end = offset + data.len() as u64;
        let first = offset / BS;
        let last = (end - 1) / BS;
        for b in first..=last {
            let bstart = b * BS;
            let lo = offset.max(bstart);
            let hi = end.min(bstart + BS);
            let piece = &data[(lo - offset) as usize..(hi - offset) as usize];
            new.crcs[b as usize] = if hi - lo == BS && punch {
                zero_block_crc()
            } else if hi - lo == BS {
                crc32c::crc32c(piece)
            } else {
                // Partial block: the crc covers the whole block, so merge with
                // what is stored — after checking what is stored is intact.
                let mut blk = self.read_blocks_raw(b, 1)?;
                self.verify(b, &blk)?;
                blk[(lo - bstart) as usize..(hi - bstart) as usize].copy_from_slice(piece);
                crc32c::crc32c(&blk)
            };
        }
        new.data_len = new.data_len.max(end);

        // The whole blocks of a punch, [hole_lo, hole_hi); empty for a write.
        let (hole_lo, hole_hi) = if punch {
            (offset.next_multiple_of(BS).min(end), end - end % BS)
        } else {
            (end, end)
        };
        let (hole_lo, hole_hi) = if hole_lo < hole_hi {
            (hole_lo, hole_hi)
        } else {
            (end, end)
        };
        let h = self.header.header_len();
        for (lo, hi) in [(offset, hole_lo), (hole_hi, end)] {
            if lo < hi {
                let piece = &data[(lo - offset) as usize..(hi - offset) as usize];
                self.preallocate(h + lo, hi - lo)?;
                self.file
                    .write_all_at(piece, h + lo)
                    .map_err(|e| self.io_err("write", e))?;
            }
        }
        if hole_lo < hole_hi {
            self.punch_hole(h + hole_lo, hole_hi - hole_lo)?;
        }
        self.store_header(new, last as usize + 1)
    }

    /// Frees `[pos, pos+len)` of the replica file (reads as zeros after).
    /// Where the file system cannot punch, zeros are written instead.
    fn punch_hole(&self, pos: u64, len: u64) -> Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(
            self.file.as_fd(),
            flags,
            pos as libc::off_t,
            len as libc::off_t,
        ) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::ENOSYS) => {
                self.preallocate(pos, len)?;
                self.file
                    .write_all_at(&vec![0u8; len as usize], pos)
                    .map_err(|e| self.io_err("write", e))
            }
            Err(e) => Err(self.io_err("punch a hole in", std::io::Error::from(e))),
        }
    }

    /// Reserves disk blocks for a range so the pwrite that follows cannot hit
    /// ENOSPC halfway (which would leave torn blocks). Filesystems without
    /// fallocate fall back to plain writes.
    fn preallocate(&self, pos: u64, len: u64) -> Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        let old_len = self
            .file
            .metadata()
            .map_err(|e| self.io_err("stat", e))?
            .len();
        match fallocate(
            self.file.as_fd(),
            FallocateFlags::empty(),
            pos as libc::off_t,
            len as libc::off_t,
        ) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::ENOSYS) => Ok(()),
            Err(e) => {
                // A failed fallocate may keep part of what it allocated; cut
                // the file back so the space past the old end is returned
                // (everything there was zeros, so nothing readable changes).
                if pos + len > old_len {
                    let _ = self.file.set_len(old_len);
                }
                Err(self.io_err("fallocate", std::io::Error::from(e)))
            }
        }
    }

    /// Reserves disk blocks for `[offset, offset+len)` of the chunk (fallocate
    /// of the replica file: unwritten extents, which read as zeros and which
    /// SEEK_DATA counts as holes). Nothing readable and no crc changes.
    pub fn allocate(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.preallocate(self.header.header_len() + offset, len)
    }

    /// Drops everything at or past `length` (reads as zeros afterwards) and sets
    /// the version. A no-op on the data when `length >= data_len`, but space
    /// reserved past `length` (fallocate) is given back.
    pub fn truncate(&mut self, length: u64, version: u64) -> Result<()> {
        let mut new = self.header.clone();
        new.version = version;
        let old_blocks = format::nblocks(self.header.data_len);
        if length >= self.header.data_len {
            let cut = self.header.header_len() + length;
            let file_len = self
                .file
                .metadata()
                .map_err(|e| self.io_err("stat", e))?
                .len();
            if file_len > cut {
                // Only reserved, never-written space lies past data_len.
                self.file
                    .set_len(cut)
                    .map_err(|e| self.io_err("truncate", e))?;
            }
            return self.store_header(new, 0);
        }
        let b = length / BS;
        let mut first_zero = b;
        if !length.is_multiple_of(BS) {
            let mut blk = self.read_blocks_raw(b, 1)?;
            self.verify(b, &blk)?;
            blk[(length % BS) as usize..].fill(0);
            new.crcs[b as usize] = crc32c::crc32c(&blk);
            first_zero = b + 1;
        }
        for c in &mut new.crcs[first_zero as usize..old_blocks as usize] {
            *c = zero_block_crc();
        }
        new.data_len = length;
        self.file
            .set_len(self.header.header_len() + length)
            .map_err(|e| self.io_err("truncate", e))?;
        self.store_header(new, old_blocks as usize)
    }

    /// fdatasync: data, crcs and the file size reach the disk.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| self.io_err("fsync", e))
    }

    /// The parts of `[offset, offset+len)` that hold stored bytes, as
    /// (start, end) chunk offsets at block granularity (`block_runs`).
    /// Nothing past the data length is stored.
    pub fn data_extents(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64)>> {
        let end = offset.saturating_add(len).min(self.header.data_len);
        if offset >= end {
            return Ok(Vec::new());
        }
        let h = self.header.header_len();
        // Whole blocks are asked for, so a block's data before `offset` counts.
        let from = offset - offset % BS;
        let to = end.next_multiple_of(BS);
        let runs = data_runs(&self.file, h + from, h + to)
            .map_err(|e| self.io_err("seek data in", std::io::Error::from(e)))?;
        let runs: Vec<(u64, u64)> = runs.iter().map(|&(s, e)| (s - h, e - h)).collect();
        Ok(block_runs(&runs, offset, end))
    }

    /// Bytes the file occupies on disk (st_blocks * 512).
    pub fn allocated(&self) -> Result<u64> {
        let md = self.file.metadata().map_err(|e| self.io_err("stat", e))?;
        Ok(md.blocks() * 512)
    }

    /// Upper bound of the bytes a write of `len` bytes at `offset` newly
    /// allocates: the 4 KiB pages of the range with no block yet (a range
    /// fallocated before needs nothing new).
    pub fn new_allocation(&self, offset: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let pos = self.header.header_len() + offset;
        let start = pos - pos % 4096;
        let end = (pos + len).next_multiple_of(4096);
        allocated_in(&self.file, start, end)
            .map(|a| (end - start).saturating_sub(a))
            .unwrap_or(end - start)
    }
}

/// The runs of `[start, end)` of `file` that are data, not holes
/// (SEEK_DATA/SEEK_HOLE: preallocated, never-written ranges are holes).
fn data_runs(file: &File, start: u64, end: u64) -> nix::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let mut runs = Vec::new();
    let mut p = start;
    while p < end {
        let data = match lseek(file.as_fd(), p as libc::off_t, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole up to end of file
            Err(e) => return Err(e),
        };
        if data >= end {
            break;
        }
        let hole = lseek(file.as_fd(), data as libc::off_t, Whence::SeekHole)? as u64;
        runs.push((data.max(start), hole.min(end)));
        p = hole;
    }
    Ok(runs)
}

/// Widens data runs (ascending) to whole blocks, clips them to `[lo, hi)` and
/// merges what then touches: a block with any data counts as data in full.
pub fn block_runs(runs: &[(u64, u64)], lo: u64, hi: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(s, e) in runs {
        let s = (s - s % BS).max(lo);
        let e = e.next_multiple_of(BS).min(hi);
        if s >= e {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 >= s => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Bytes of `[start, end)` the file system holds blocks for, written or only
/// reserved (FIEMAP lists fallocated, never-written extents too, which
/// SEEK_DATA calls holes); where FIEMAP is missing, the data (SEEK_DATA).
fn allocated_in(file: &File, start: u64, end: u64) -> nix::Result<u64> {
    fiemap_allocated(file, start, end).or_else(|_| data_in(file, start, end))
}

/// FIEMAP (linux/fiemap.h): bytes of `[start, end)` inside any extent.
fn fiemap_allocated(file: &File, start: u64, end: u64) -> nix::Result<u64> {
    use std::os::fd::AsRawFd;
    // _IOWR('f', 11, struct fiemap)
    const FS_IOC_FIEMAP: u64 = 0xC020_660B;
    const FIEMAP_EXTENT_LAST: u32 = 1;
    const N: usize = 32;
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Map {
        start: u64,
        length: u64,
        flags: u32,
        mapped: u32,
        count: u32,
        reserved: u32,
        extents: [Extent; N],
    }
    let mut total = 0;
    let mut p = start;
    while p < end {
        let mut m = Map {
            start: p,
            length: end - p,
            flags: 0,
            mapped: 0,
            count: N as u32,
            reserved: 0,
            extents: [Extent::default(); N],
        };
        // SAFETY: `m` is a struct fiemap with room for `count` extents.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, &mut m) };
        if r < 0 {
            return Err(nix::errno::Errno::last());
        }
        let got = &m.extents[..(m.mapped as usize).min(N)];
        for e in got {
            let lo = e.logical.max(start);
            let hi = (e.logical + e.length).min(end);
            total += hi.saturating_sub(lo);
            p = p.max(e.logical + e.length);
        }
        if got.len() < N || got.iter().any(|e| e.flags & FIEMAP_EXTENT_LAST != 0) {
            break;
        }
    }
    Ok(total)
}

/// Bytes of `[start, end)` that are data (not holes), via SEEK_DATA/SEEK_HOLE.
fn data_in(file: &File, start: u64, end: u64) -> nix::Result<u64> {
    Ok(data_runs(file, start, end)?
        .iter()
        .map(|(a, b)| b - a)
        .sum())
}
