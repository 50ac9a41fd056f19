//! Unit tests of the chunk store against real files in a temp dir.

use std::os::unix::fs::MetadataExt;

use proptest::prelude::*;

use super::format::{header_len, FormatError, BLOCK_SIZE};
use super::*;

const BS: usize = BLOCK_SIZE as usize;
const MIB: u64 = 1 << 20;

fn store(dir: &Path) -> Store {
    let s = Store::open(dir, u64::MAX).unwrap();
    s.set_chunk_size(64 * MIB);
    s
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

use weft_testkit::flip_byte as flip;

#[test]
fn roundtrip_unaligned_across_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let a = pattern(3 * BS + 1234, 7);
    s.write(1, 1, 0, 1000, &a).unwrap();
    assert_eq!(s.read(1, 1, 1000, a.len()).unwrap(), a);
    // Overwrite a middle range that straddles two block boundaries.
    let b = pattern(BS + 10, 99);
    s.write(1, 1, 0, BS as u64 - 5, &b).unwrap();
    let mut model = vec![0u8; 5 * BS];
    model[1000..1000 + a.len()].copy_from_slice(&a);
    model[BS - 5..2 * BS + 5].copy_from_slice(&b);
    assert_eq!(s.read(1, 0, 0, model.len()).unwrap(), model);
    // Odd-sized reads inside single blocks.
    assert_eq!(s.read(1, 1, 1001, 3).unwrap(), model[1001..1004].to_vec());
    assert_eq!(s.read(1, 1, 0, 0).unwrap(), Vec::<u8>::new());
    assert_eq!(s.summary(1).unwrap().size, 1000 + a.len() as u64);
}

#[test]
fn sparse_ranges_read_zero_and_stay_holes() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.write(5, 1, 0, 0, b"head").unwrap();
    s.write(5, 1, 0, 40 * MIB, b"tail").unwrap();
    let mid = s.read(5, 1, 10 * MIB, 3 * BS).unwrap();
    assert!(mid.iter().all(|&b| b == 0));
    assert_eq!(s.read(5, 1, 40 * MIB - 2, 8).unwrap(), b"\0\0tail\0\0");
    let md = std::fs::metadata(s.chunk_path(5)).unwrap();
    assert!(md.len() > 40 * MIB);
    // Header + two touched pages, far below the 40 MiB span.
    assert!(md.blocks() * 512 <= 64 * 1024, "st_blocks {}", md.blocks());
    assert_eq!(s.used(), md.blocks() * 512);
}

#[test]
fn flipped_data_byte_fails_only_its_block() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let data = pattern(4 * BS, 3);
    s.write(9, 2, 0, 0, &data).unwrap();
    let hl = header_len(64 * MIB);
    flip(&s.chunk_path(9), hl + 2 * BS as u64 + 17);
    match s.read(9, 2, 2 * BS as u64 + 100, 10) {
        Err(StoreError::Corrupt { id: 9, block: 2 }) => {}
        other => panic!("expected corruption of block 2, got {other:?}"),
    }
    // A read spanning the bad block fails too; the others still read.
    assert!(matches!(
        s.read(9, 2, 0, 4 * BS),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(s.read(9, 2, 0, 2 * BS).unwrap(), data[..2 * BS].to_vec());
    assert_eq!(
        s.read(9, 2, 3 * BS as u64, BS).unwrap(),
        data[3 * BS..].to_vec()
    );
    // A partial write into the bad block refuses rather than blessing it...
    assert!(matches!(
        s.write(9, 2, 0, 2 * BS as u64 + 5, b"x"),
        Err(StoreError::Corrupt { block: 2, .. })
    ));
    // ...while a full-block overwrite replaces it.
    let fresh = pattern(BS, 44);
    s.write(9, 2, 0, 2 * BS as u64, &fresh).unwrap();
    assert_eq!(s.read(9, 2, 2 * BS as u64, BS).unwrap(), fresh);
}

#[test]
fn damaged_crc_entry_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.write(3, 1, 0, 0, &pattern(2 * BS, 1)).unwrap();
    flip(&s.chunk_path(3), format::FIXED_LEN as u64 + 4); // crc of block 1
    assert!(matches!(
        s.read(3, 1, BS as u64, 1),
        Err(StoreError::Corrupt { block: 1, .. })
    ));
    assert!(s.read(3, 1, 0, BS).is_ok());
}

#[test]
fn header_damage_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.write(0x1234, 1, 0, 0, b"data").unwrap();
    let path = s.chunk_path(0x1234);
    flip(&path, 0); // magic
    match s.read(0x1234, 1, 0, 4) {
        Err(
            e @ StoreError::BadHeader {
                reason: FormatError::BadMagic,
                ..
            },
        ) => {
            let msg = e.to_string();
            assert!(
                msg.contains("bad magic") && msg.contains("0000000000001234.chunk"),
                "{msg}"
            );
        }
        other => panic!("expected bad magic, got {other:?}"),
    }
    drop(s);
    // Reopening quarantines the file instead of serving or crashing.
    let s = store(dir.path());
    assert!(matches!(
        s.read(0x1234, 0, 0, 4),
        Err(StoreError::NotFound { .. })
    ));
    assert!(!path.exists());
    assert!(s.corrupt_path(0x1234).exists());
    // A damaged version field trips the header checksum.
    s.write(7, 3, 0, 0, b"x").unwrap();
    flip(&s.chunk_path(7), 21);
    assert!(matches!(
        s.read(7, 0, 0, 1),
        Err(StoreError::BadHeader {
            reason: FormatError::HeaderCrc,
            ..
        })
    ));
}

#[test]
fn truncate_then_extend_reads_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let data = pattern(3 * BS, 5);
    s.write(2, 1, 0, 0, &data).unwrap();
    s.truncate(2, 1, BS as u64 + 100).unwrap();
    assert_eq!(s.summary(2).unwrap().size, BS as u64 + 100);
    let mut model = data.clone();
    model[BS + 100..].fill(0);
    assert_eq!(s.read(2, 1, 0, 3 * BS).unwrap(), model);
    // Extend past the old end: the truncated range stays zero.
    s.write(2, 1, 0, 3 * BS as u64, b"end").unwrap();
    let got = s.read(2, 1, 0, 3 * BS + 3).unwrap();
    assert_eq!(&got[..3 * BS], &model[..]);
    assert_eq!(&got[3 * BS..], b"end");
    // Truncate to zero, then a partial write in block 0 still verifies.
    s.truncate(2, 1, 0).unwrap();
    s.write(2, 1, 0, 10, b"abc").unwrap();
    let got = s.read(2, 1, 0, 4 * BS).unwrap();
    assert_eq!(&got[10..13], b"abc");
    assert_eq!(got.iter().filter(|&&b| b != 0).count(), 3);
    // Truncate beyond the data is a no-op; beyond the chunk is out of range.
    s.truncate(2, 1, 10 * MIB).unwrap();
    assert_eq!(s.summary(2).unwrap().size, 13);
    assert!(matches!(
        s.truncate(2, 1, 65 * MIB),
        Err(StoreError::OutOfRange { .. })
    ));
    // Truncating a chunk not held is a no-op that creates nothing.
    s.truncate(99, 1, 0).unwrap();
    assert!(matches!(
        s.read(99, 0, 0, 1),
        Err(StoreError::NotFound { id: 99 })
    ));
}

#[test]
fn reopen_sees_same_chunks_and_drops_temps() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path());
        s.write(0x100, 4, 0, 0, b"one").unwrap();
        s.write(0x2ff, 6, 0, 70000, b"two").unwrap();
        s.sync(0x100).unwrap();
    }
    let tmp = dir.path().join("chunks/00/0000000000000300.chunk.tmp");
    std::fs::write(&tmp, b"half-created").unwrap();
    let s = store(dir.path());
    assert!(!tmp.exists());
    assert_eq!(
        s.summaries(),
        vec![
            ChunkSummary {
                id: 0x100,
                version: 4,
                size: 3
            },
            ChunkSummary {
                id: 0x2ff,
                version: 6,
                size: 70003
            },
        ]
    );
    assert_eq!(s.read(0x2ff, 6, 70000, 3).unwrap(), b"two");
    assert!(s.used() > 0);
    assert!(dir.path().join("chunks/ff/00000000000002ff.chunk").exists());
}

#[test]
fn versions_and_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.write(1, 5, 10, 0, b"v5").unwrap();
    assert!(matches!(
        s.write(1, 4, 10, 0, b"old"),
        Err(StoreError::StaleVersion {
            stored: 5,
            got: 4,
            ..
        })
    ));
    assert!(matches!(
        s.write(1, 5, 9, 0, b"old"),
        Err(StoreError::StaleEpoch {
            seen: 10,
            got: 9,
            ..
        })
    ));
    assert!(matches!(
        s.read(1, 4, 0, 2),
        Err(StoreError::StaleVersion { .. })
    ));
    s.write(1, 6, 11, 0, b"v6").unwrap();
    assert_eq!(s.read(1, 6, 0, 2).unwrap(), b"v6");
    assert_eq!(s.read(1, 0, 0, 2).unwrap(), b"v6");
    assert!(matches!(
        s.read(1, 5, 0, 2),
        Err(StoreError::StaleVersion { stored: 6, .. })
    ));
    assert!(matches!(
        s.truncate(1, 5, 0),
        Err(StoreError::StaleVersion { .. })
    ));
    // The version survives a restart (it is in the header).
    drop(s);
    let s = store(dir.path());
    assert_eq!(s.summary(1).unwrap().version, 6);
}

#[test]
fn range_limits() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), u64::MAX).unwrap();
    // Before registration: provisional 1 GiB.
    assert!(matches!(
        s.write(1, 1, 0, PROVISIONAL_CHUNK_SIZE, b"x"),
        Err(StoreError::OutOfRange { .. })
    ));
    s.write(1, 1, 0, 100 * MIB, b"x").unwrap();
    s.set_chunk_size(64 * MIB);
    // After: the MDS's chunk size bounds reads and writes, even of old replicas.
    assert!(matches!(
        s.write(1, 1, 0, 64 * MIB - 1, b"xy"),
        Err(StoreError::OutOfRange { .. })
    ));
    assert!(matches!(
        s.read(1, 1, 64 * MIB - 1, 2),
        Err(StoreError::OutOfRange { .. })
    ));
    assert_eq!(s.read(1, 1, 64 * MIB - 1, 1).unwrap(), b"\0");
    assert!(matches!(
        s.write(2, 1, 0, u64::MAX, b"x"),
        Err(StoreError::OutOfRange { .. })
    ));
}

#[test]
fn capacity_refuses_and_leaves_chunk_intact() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), 2 * MIB).unwrap();
    s.set_chunk_size(64 * MIB);
    let first = pattern(MIB as usize, 8);
    s.write(1, 1, 0, 0, &first).unwrap();
    let used = s.used();
    assert!((MIB..MIB + 64 * 1024).contains(&used), "used {used}");
    match s.write(1, 1, 0, MIB, &pattern(2 * MIB as usize, 9)) {
        Err(StoreError::NoSpace { .. }) => {}
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert_eq!(s.read(1, 1, 0, MIB as usize).unwrap(), first);
    assert!(s
        .read(1, 1, MIB, MIB as usize)
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    assert_eq!(s.summary(1).unwrap().size, MIB);
    // Overwriting allocated data needs no new space, so it still works.
    s.write(1, 1, 0, 0, &pattern(MIB as usize, 10)).unwrap();
    // A new chunk that does not fit is not created at all.
    assert!(matches!(
        s.write(2, 1, 0, 0, &pattern(MIB as usize, 1)),
        Err(StoreError::NoSpace { .. })
    ));
    assert!(!s.chunk_path(2).exists());
    // Deleting frees the space.
    assert!(s.delete(1).unwrap());
    assert_eq!(s.used(), 0);
    s.write(2, 1, 0, 0, &pattern(MIB as usize, 1)).unwrap();
}

#[test]
fn deltas_report_current_state_and_can_be_restored() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.write(1, 1, 0, 0, b"a").unwrap();
    s.write(2, 1, 0, 0, b"bb").unwrap();
    let d = s.take_delta();
    assert_eq!(
        d.added,
        vec![
            ChunkSummary {
                id: 1,
                version: 1,
                size: 1
            },
            ChunkSummary {
                id: 2,
                version: 1,
                size: 2
            },
        ]
    );
    assert!(s.take_delta().is_empty());
    s.restore_delta(&d); // the beat failed
    s.delete(2).unwrap();
    let d = s.take_delta();
    assert_eq!(
        d.added,
        vec![ChunkSummary {
            id: 1,
            version: 1,
            size: 1
        }]
    );
    assert_eq!(d.removed, vec![2]);
    assert!(!s.delete(2).unwrap());
}

#[test]
fn scrub_quarantines_and_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.write(4, 3, 0, 0, &pattern(3 * BS, 2)).unwrap();
    s.write(5, 1, 0, 0, &pattern(BS, 2)).unwrap();
    assert_eq!(
        s.scrub_step(5, 0, 16).unwrap(),
        ScrubStep::Next {
            next: 1,
            bytes: BS as u64
        }
    );
    assert_eq!(s.scrub_step(5, 1, 16).unwrap(), ScrubStep::Done);
    assert_eq!(s.scrub_step(77, 0, 16).unwrap(), ScrubStep::Gone);
    flip(&s.chunk_path(4), header_len(64 * MIB) + BS as u64 + 1);
    s.take_delta();
    assert!(matches!(
        s.scrub_step(4, 0, 16),
        Err(StoreError::Corrupt { block: 1, .. })
    ));
    assert!(!s.chunk_path(4).exists());
    assert!(s.corrupt_path(4).exists());
    assert!(matches!(
        s.read(4, 0, 0, 1),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(s.take_delta().removed, vec![4]);
    // Not re-created by a write at the same version...
    assert!(matches!(
        s.write(4, 3, 0, BS as u64, b"x"),
        Err(StoreError::Quarantined { version: 3, .. })
    ));
    // ...across a restart too...
    drop(s);
    let s = store(dir.path());
    assert!(matches!(
        s.write(4, 3, 0, 0, b"x"),
        Err(StoreError::Quarantined { .. })
    ));
    // ...but a newer version may place a fresh replica.
    s.write(4, 4, 0, 0, b"new").unwrap();
    assert_eq!(s.read(4, 4, 0, 3).unwrap(), b"new");
    // Damage to the unused part of the crc table is found as well.
    flip(&s.chunk_path(5), format::FIXED_LEN as u64 + 4 * 500);
    assert_eq!(
        s.scrub_step(5, 0, 16).unwrap(),
        ScrubStep::Next {
            next: 1,
            bytes: BS as u64
        }
    );
    assert!(matches!(
        s.scrub_step(5, 1, 16),
        Err(StoreError::Corrupt { block: 500, .. })
    ));
    // Delete clears the quarantined copy.
    s.delete(5).unwrap();
    assert!(!s.corrupt_path(5).exists());
}

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: usize, seed: u8 },
    Truncate { length: u64 },
    Read { offset: u64, len: usize },
    Reopen,
}

/// Offsets cluster near block boundaries of a small 1 MiB chunk.
fn offset_strategy() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..(1 << 20),
        (0u64..16, -3i64..4).prop_map(|(b, d)| (b as i64 * BS as i64 + d).clamp(0, 1 << 20) as u64),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (offset_strategy(), 0usize..200_000, any::<u8>())
            .prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
        2 => offset_strategy().prop_map(|length| Op::Truncate { length }),
        5 => (offset_strategy(), 0usize..200_000).prop_map(|(offset, len)| Op::Read { offset, len }),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn matches_vec_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        const CHUNK: u64 = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let open = || { let s = Store::open(dir.path(), u64::MAX).unwrap(); s.set_chunk_size(CHUNK); s };
        let mut s = open();
        let mut model = vec![0u8; CHUNK as usize];
        let mut data_len = 0u64;
        let mut exists = false;
        for op in ops {
            match op {
                Op::Write { offset, len, seed } => {
                    let data = pattern(len, seed);
                    let r = s.write(1, 1, 0, offset, &data);
                    if offset + len as u64 > CHUNK {
                        prop_assert!(matches!(r, Err(StoreError::OutOfRange { .. })), "{:?}", r);
                    } else {
                        r.unwrap();
                        model[offset as usize..offset as usize + len].copy_from_slice(&data);
                        data_len = data_len.max(offset + len as u64);
                        exists = true;
                    }
                }
                Op::Truncate { length } => {
                    let r = s.truncate(1, 1, length);
                    r.unwrap();
                    if !exists {
                        prop_assert!(s.summary(1).is_none());
                    } else {
                        if length < data_len {
                            model[length as usize..].fill(0);
                            data_len = length;
                        }
                    }
                }
                Op::Read { offset, len } => {
                    let r = s.read(1, 0, offset, len);
                    if !exists {
                        prop_assert!(matches!(r, Err(StoreError::NotFound { .. })), "{:?}", r);
                    } else if offset + len as u64 > CHUNK {
                        prop_assert!(matches!(r, Err(StoreError::OutOfRange { .. })), "{:?}", r);
                    } else {
                        let got = r.unwrap();
                        prop_assert!(got == model[offset as usize..offset as usize + len], "read {}+{} differs", offset, len);
                    }
                }
                Op::Reopen => {
                    drop(s);
                    s = open();
                }
            }
            if exists {
                prop_assert_eq!(s.summary(1).unwrap().size, data_len);
            }
        }
        // Every block still verifies at the end.
        if exists {
            let mut next = 0;
            loop {
                match s.scrub_step(1, next, 4).unwrap() {
                    ScrubStep::Next { next: n, .. } => next = n,
                    ScrubStep::Done => break,
                    ScrubStep::Gone => panic!("chunk vanished"),
                }
            }
        }
    }
}

#[test]
fn data_extents_are_the_written_blocks_of_a_sparse_replica() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let b = BS as u64;
    // Data in block 1 (one byte) and blocks 20..=21 (straddling their border);
    // a hole between; nothing past the data length (21 blocks + 10 bytes).
    s.write(7, 1, 0, b + 100, b"x").unwrap();
    s.write(7, 1, 0, 21 * b - 10, &pattern(20, 3)).unwrap();
    assert_eq!(
        s.data_extents(7, 1, 0, 64 * MIB).unwrap(),
        vec![(b, 2 * b), (20 * b, 21 * b + 10)]
    );
    // Clipped to the range asked for (and the data length), inside blocks too.
    assert_eq!(
        s.data_extents(7, 0, b + 500, 20 * b).unwrap(),
        vec![(b + 500, 2 * b), (20 * b, 21 * b + 10)]
    );
    assert_eq!(s.data_extents(7, 1, 2 * b, 18 * b).unwrap(), vec![]);
    // Past the data length nothing is stored.
    assert_eq!(s.data_extents(7, 1, 22 * b, b).unwrap(), vec![]);
    // A truncate drops the data past the cut.
    s.truncate(7, 1, 5 * b).unwrap();
    assert_eq!(s.data_extents(7, 1, 0, 64 * MIB).unwrap(), vec![(b, 2 * b)]);
    assert!(matches!(
        s.data_extents(7, 9, 0, b),
        Err(StoreError::StaleVersion { .. })
    ));
    assert!(matches!(
        s.data_extents(8, 0, 0, b),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn block_runs_widen_clip_and_merge() {
    use super::chunkfile::block_runs;
    let b = BS as u64;
    assert_eq!(block_runs(&[(10, 20)], 0, 10 * b), vec![(0, b)]);
    // Two runs in neighbouring blocks merge once widened.
    assert_eq!(
        block_runs(&[(b - 1, b), (b + 5, b + 6)], 0, 10 * b),
        vec![(0, 2 * b)]
    );
    assert_eq!(
        block_runs(&[(0, 1), (3 * b, 3 * b + 1)], 100, 3 * b + 7),
        vec![(100, b), (3 * b, 3 * b + 7)]
    );
    assert_eq!(block_runs(&[], 0, b), vec![]);
}

#[test]
fn allocate_reserves_space_that_later_writes_use() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let b = BS as u64;
    // A replica that does not exist yet is created by the allocation.
    s.allocate(3, 1, 0, b, 16 * b).unwrap();
    let reserved = s.used();
    assert!(reserved >= 16 * b, "only {reserved} bytes reserved");
    // Nothing readable changed: no data, no data length, zeros.
    assert_eq!(s.data_extents(3, 1, 0, 64 * MIB).unwrap(), vec![]);
    assert_eq!(s.summary(3).unwrap().size, 0);
    assert_eq!(s.read(3, 1, 0, 17 * BS).unwrap(), vec![0u8; 17 * BS]);
    // A write inside the reserved range needs no new space, even when the
    // capacity has no room left for it otherwise.
    let full = tempfile::tempdir().unwrap();
    let t = Store::open(full.path(), MIB).unwrap();
    t.set_chunk_size(64 * MIB);
    t.allocate(5, 1, 0, 0, 8 * b).unwrap();
    t.write(5, 1, 0, 0, &pattern(8 * BS, 1)).unwrap();
    let data = pattern(4 * BS, 9);
    s.write(3, 1, 0, 2 * b, &data).unwrap();
    assert_eq!(s.used(), reserved);
    assert_eq!(s.read(3, 1, 2 * b, data.len()).unwrap(), data);
    // (The zeros read above may count as data: the file system sees cached
    // pages there. A hole reported as data is allowed; data as a hole is not.)
    let ext = s.data_extents(3, 1, 0, 64 * MIB).unwrap();
    assert!(
        ext.iter().any(|&(lo, hi)| lo <= 2 * b && hi >= 6 * b),
        "{ext:?}"
    );
    // A truncate gives back the reservation past the cut.
    s.truncate(3, 1, 6 * b).unwrap();
    assert!(s.used() < reserved, "truncate kept the reserved space");
    assert_eq!(s.read(3, 1, 2 * b, data.len()).unwrap(), data);
    // Past the capacity: refused, nothing reserved.
    let small = tempfile::tempdir().unwrap();
    let s = Store::open(small.path(), 2 * MIB).unwrap();
    s.set_chunk_size(64 * MIB);
    assert!(matches!(
        s.allocate(4, 1, 0, 0, 8 * MIB),
        Err(StoreError::NoSpace { .. })
    ));
    assert!(s.used() < MIB);
}

#[test]
fn punch_frees_whole_blocks_with_the_zero_block_crc() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let b = BS as u64;
    s.write(4, 1, 0, 0, &pattern(8 * BS, 5)).unwrap();
    let used = s.used();
    // Blocks 2..=5 covered whole; block 1 and 6 only in part.
    let (lo, hi) = (b + 100, 6 * b + 50);
    s.punch(4, 2, 0, lo, &vec![0u8; (hi - lo) as usize])
        .unwrap();
    let mut model = pattern(8 * BS, 5);
    model[lo as usize..hi as usize].fill(0);
    assert_eq!(s.read(4, 2, 0, model.len()).unwrap(), model);
    assert_eq!(
        s.data_extents(4, 2, 0, 64 * MIB).unwrap(),
        vec![(0, 2 * b), (6 * b, 8 * b)]
    );
    assert!(
        s.used() <= used - 4 * b,
        "{} of {used} still used",
        s.used()
    );
    // The crc table on disk says what a zero block's crc is for the holes,
    // and matches the edge blocks' merged bytes (a reopened store reads and
    // scrubs them clean).
    let cf = chunkfile::ChunkFile::open(&s.chunk_path(4), 4).unwrap();
    let crcs = &cf.header().crcs;
    for (blk, crc) in crcs.iter().enumerate().take(6).skip(2) {
        assert_eq!(*crc, format::zero_block_crc(), "block {blk}");
    }
    assert_eq!(crcs[1], crc32c::crc32c(&model[BS..2 * BS]));
    assert_eq!(crcs[6], crc32c::crc32c(&model[6 * BS..7 * BS]));
    assert_eq!(cf.header().version, 2);
    cf.verify_blocks(0, 8).unwrap();
    drop(s);
    let s = store(dir.path());
    assert_eq!(s.read(4, 2, 0, model.len()).unwrap(), model);
    // A "punch" carrying bytes other than zeros is stored as a write.
    s.punch(4, 2, 0, 3 * b, &pattern(BS, 1)).unwrap();
    assert_eq!(s.read(4, 2, 3 * b, BS).unwrap(), pattern(BS, 1));
}
