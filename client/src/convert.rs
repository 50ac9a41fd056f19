//! Conversions between weft's wire types and fuser's: attributes, file kinds,
//! timestamps.
//!
//! Invariants: inode numbers are the MDS's own (root = 1) and pass through
//! unchanged; `blksize` is always 65536 (the chunk daemons' checksum block, the
//! best I/O unit to advertise); timestamps before the epoch are representable.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};
use weft_proto::{Attr, FileKind, TimeSet, Timespec};

use crate::open_files::Overlay;

/// `st_blksize`: the chunk daemons' checksum block, the smallest write that
/// needs no read-modify-write.
pub const BLKSIZE: u32 = weft_proto::contract::limits::BLOCK_SIZE;

pub fn file_type(kind: i32) -> FileType {
    match FileKind::try_from(kind).unwrap_or(FileKind::Unspecified) {
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::Regular | FileKind::Unspecified => FileType::RegularFile,
    }
}

pub fn system_time(ts: Option<&Timespec>) -> SystemTime {
    let Some(ts) = ts else { return UNIX_EPOCH };
    let nsec = Duration::from_nanos(u64::from(ts.nsec.min(999_999_999)));
    if ts.sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(ts.sec as u64) + nsec
    } else {
        UNIX_EPOCH - Duration::from_secs(ts.sec.unsigned_abs()) + nsec
    }
}

pub fn timespec(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            // Before the epoch: floor to whole seconds, keep nsec positive.
            let d = e.duration();
            let mut sec = -(d.as_secs() as i64);
            let mut nsec = 0;
            if d.subsec_nanos() > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - d.subsec_nanos();
            }
            Timespec { sec, nsec }
        }
    }
}

pub fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet {
            now: true,
            time: None,
        },
        TimeOrNow::SpecificTime(t) => TimeSet {
            now: false,
            time: Some(timespec(t)),
        },
    }
}

/// pb::Attr as the kernel should see it, with `size` and `blocks` raised when
/// the client holds data the MDS has not been told about yet: its pages
/// count as allocated (an overwrite of stored data is counted twice, so the
/// sum is capped at what the size can hold, beyond the MDS's own figure).
pub fn file_attr(a: &Attr, overlay: Option<Overlay>) -> FileAttr {
    let (size, blocks) = match overlay {
        Some(o) => {
            let size = o.size.max(a.size);
            let pending = o.pending_bytes.next_multiple_of(4096) / 512;
            let cap = a.blocks.max(size.next_multiple_of(4096) / 512);
            (size, (a.blocks + pending).min(cap))
        }
        None => (a.size, a.blocks),
    };
    FileAttr {
        ino: INodeNo(a.ino),
        size,
        blocks,
        atime: system_time(a.atime.as_ref()),
        mtime: system_time(a.mtime.as_ref()),
        ctime: system_time(a.ctime.as_ref()),
        crtime: system_time(a.crtime.as_ref()),
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: BLKSIZE,
        flags: 0,
    }
}

/// The attributes of a negative lookup reply: node id 0 tells the kernel the
/// name does not exist (cached for the entry TTL).
pub fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_conversion() {
        let a = Attr {
            ino: 42,
            kind: FileKind::Symlink as i32,
            mode: 0o104755,
            nlink: 3,
            uid: 10,
            gid: 20,
            size: 100,
            atime: Some(Timespec { sec: 5, nsec: 7 }),
            mtime: Some(Timespec { sec: 6, nsec: 0 }),
            ctime: None,
            crtime: None,
            rdev: 0x0803,
            blocks: 8,
        };
        let f = file_attr(&a, None);
        assert_eq!(f.ino, INodeNo(42));
        assert_eq!(f.kind, FileType::Symlink);
        assert_eq!(f.perm, 0o4755);
        assert_eq!((f.nlink, f.uid, f.gid, f.rdev), (3, 10, 20, 0x0803));
        assert_eq!((f.size, f.blocks, f.blksize), (100, 8, 65536));
        assert_eq!(f.atime, UNIX_EPOCH + Duration::new(5, 7));
        assert_eq!(f.ctime, UNIX_EPOCH);
        let o = |size, pending_bytes| {
            Some(Overlay {
                size,
                pending_bytes,
            })
        };
        assert_eq!(file_attr(&a, o(500, 0)).size, 500);
        assert_eq!(file_attr(&a, o(50, 0)).size, 100);
    }

    #[test]
    fn pending_data_counts_as_allocated_within_the_size() {
        let a = Attr {
            size: 1 << 20,
            blocks: 8,
            ..Default::default()
        };
        let o = |size, pending_bytes| {
            Some(Overlay {
                size,
                pending_bytes,
            })
        };
        // A sparse write of 51200 bytes: 13 pages more.
        assert_eq!(file_attr(&a, o(1 << 20, 51_200)).blocks, 8 + 13 * 8);
        // Never more than the size holds (an overwrite counts twice)...
        assert_eq!(file_attr(&a, o(8192, 1 << 20)).blocks, 2048);
        // ...unless the MDS already says more (space reserved past the end).
        let reserved = Attr { blocks: 4096, ..a };
        assert_eq!(file_attr(&reserved, o(0, 4096)).blocks, 4096);
    }

    #[test]
    fn kinds() {
        assert_eq!(file_type(FileKind::Directory as i32), FileType::Directory);
        assert_eq!(file_type(FileKind::Fifo as i32), FileType::NamedPipe);
        assert_eq!(file_type(FileKind::Socket as i32), FileType::Socket);
        assert_eq!(file_type(FileKind::CharDevice as i32), FileType::CharDevice);
        assert_eq!(
            file_type(FileKind::BlockDevice as i32),
            FileType::BlockDevice
        );
        assert_eq!(file_type(FileKind::Regular as i32), FileType::RegularFile);
        assert_eq!(file_type(99), FileType::RegularFile);
    }

    #[test]
    fn timespec_round_trip() {
        for (sec, nsec) in [
            (0i64, 0u32),
            (1_700_000_000, 123_456_789),
            (-1, 500_000_000),
            (-10, 0),
        ] {
            let ts = Timespec { sec, nsec };
            assert_eq!(timespec(system_time(Some(&ts))), ts, "{sec}.{nsec}");
        }
        let set = time_set(TimeOrNow::Now);
        assert!(set.now && set.time.is_none());
        let set = time_set(TimeOrNow::SpecificTime(UNIX_EPOCH + Duration::new(9, 1)));
        assert!(!set.now);
        assert_eq!(set.time, Some(Timespec { sec: 9, nsec: 1 }));
    }
}
