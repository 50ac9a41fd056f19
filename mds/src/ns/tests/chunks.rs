//! AllocChunk, CommitWrite and the chunk-map queries.

use super::*;

fn alloc(h: &mut Harness, ino: u64, index: u64) -> Result<pb::ChunkWrite, Errno> {
    match h.op(
        &root(),
        Op::AllocChunk(pb::AllocChunkReq {
            ino,
            index,
            ..Default::default()
        }),
    )? {
        R::ChunkWrite(cw) => Ok(cw),
        r => panic!("{r:?}"),
    }
}

fn commit_as(h: &mut Harness, c: &Caller, ino: u64, end: u64) -> Result<pb::Attr, Errno> {
    h.op(
        c,
        Op::CommitWrite(pb::CommitWriteReq {
            ino,
            end,
            ..Default::default()
        }),
    )
    .map(attr)
}

#[test]
fn alloc_fills_holes_once() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    let cw = alloc(&mut h, f, 3).unwrap();
    let loc = cw.chunk.clone().unwrap();
    assert_eq!((loc.index, loc.version, loc.replicas.len()), (3, 1, 0));
    assert_eq!(
        (cw.chunk_size, cw.lease_epoch, cw.lease_expires_ms),
        (CHUNK, 0, 0)
    );
    assert!(loc.chunk_id > 0);
    let n = h.log.len();
    // Existing: the same chunk, no record.
    assert_eq!(alloc(&mut h, f, 3).unwrap(), cw);
    assert_eq!(h.log.len(), n);
    let other = alloc(&mut h, f, 0).unwrap().chunk.unwrap().chunk_id;
    assert_ne!(other, loc.chunk_id);
    assert_eq!(h.ns.chunk_owner(loc.chunk_id), Some((f, 3, 1)));
    assert_eq!(h.ns.chunk_owner(999), None);
    // An allocated chunk past EOF counts no blocks until the size covers it.
    assert_eq!(h.getattr(f).size, 0);
    assert_eq!(h.getattr(f).blocks, 0);
    let (size, list) = h.ns.file_chunks(f, 0, 5).unwrap();
    assert_eq!(size, 0);
    assert_eq!(
        list,
        vec![
            (0, other, 1),
            (1, 0, 0),
            (2, 0, 0),
            (3, loc.chunk_id, 1),
            (4, 0, 0)
        ]
    );
    // Chunk ids are never reused, even after the file is gone.
    h.unlink_as(&root(), 1, "f").unwrap();
    let g = h.create(1, "g");
    let id = alloc(&mut h, g, 0).unwrap().chunk.unwrap().chunk_id;
    assert!(id > loc.chunk_id && id > other);
}

#[test]
fn alloc_and_commit_errors() {
    let mut h = Harness::new();
    let d = h.mkdir(1, "d");
    let l = attr(
        h.op(
            &root(),
            Op::Symlink(pb::SymlinkReq {
                parent: 1,
                name: "l".into(),
                target: "x".into(),
            }),
        )
        .unwrap(),
    )
    .ino;
    let f = h.create(1, "f");
    assert_eq!(alloc(&mut h, d, 0), Err(Errno::EISDIR));
    assert_eq!(alloc(&mut h, l, 0), Err(Errno::EINVAL));
    assert_eq!(alloc(&mut h, 999, 0), Err(Errno::ENOENT));
    assert_eq!(alloc(&mut h, f, u64::MAX), Err(Errno::EFBIG));
    assert_eq!(commit_as(&mut h, &root(), d, 1), Err(Errno::EISDIR));
    assert_eq!(commit_as(&mut h, &root(), l, 1), Err(Errno::EINVAL));
    assert_eq!(commit_as(&mut h, &root(), 999, 1), Err(Errno::ENOENT));
    assert_eq!(
        commit_as(&mut h, &root(), f, MAX_FILE_SIZE + 1),
        Err(Errno::EFBIG)
    );
    assert_eq!(h.ns.file_chunks(d, 0, 1), Err(Errno::EISDIR));
    assert_eq!(h.ns.file_chunks(l, 0, 1), Err(Errno::EINVAL));
    assert_eq!(h.ns.file_chunks(999, 0, 1), Err(Errno::ENOENT));
}

#[test]
fn alloc_does_not_recheck_write_permission() {
    let mut h = Harness::new();
    let alice = user(1000, 100);
    let f = h.create(1, "f");
    h.chmod_as(&root(), f, 0o444).unwrap();
    let ctx = h.ctx(&alice);
    assert!(matches!(
        h.ns.prepare(
            &ctx,
            &Op::AllocChunk(pb::AllocChunkReq {
                ino: f,
                index: 0,
                ..Default::default()
            })
        ),
        Ok(Prepared::Record(_))
    ));
    assert!(commit_as(&mut h, &alice, f, 10).is_ok());
}

#[test]
fn commit_extends_and_clears_privs() {
    let mut h = Harness::new();
    let alice = user(1000, 100);
    let f = h.create(1, "f");
    h.write(f, 0, 100);
    let a = commit_as(&mut h, &root(), f, 50).unwrap();
    assert_eq!(a.size, 100, "commit never shrinks");
    assert_eq!(
        (a.mtime, a.ctime),
        (Some(h.now().into()), Some(h.now().into()))
    );
    h.chmod_as(&root(), f, 0o6777).unwrap();
    assert_eq!(
        commit_as(&mut h, &root(), f, 100).unwrap().mode,
        0o6777,
        "root keeps the bits"
    );
    assert_eq!(commit_as(&mut h, &alice, f, 200).unwrap().mode, 0o777);
    h.chmod_as(&root(), f, 0o6767).unwrap();
    assert_eq!(
        commit_as(&mut h, &alice, f, 200).unwrap().mode,
        0o2767,
        "sgid without group-exec stays"
    );
    assert_eq!(h.ns.counts().bytes, 200);
}

#[test]
fn file_chunks_ranges() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    let c1 = h.write(f, 1, CHUNK + 10);
    assert_eq!(
        h.ns.file_chunks(f, 1, 1).unwrap(),
        (CHUNK + 10, vec![(1, c1, 1)])
    );
    assert_eq!(h.ns.file_chunks(f, 5, 0).unwrap(), (CHUNK + 10, vec![]));
    assert_eq!(h.ns.file_chunks(f, u64::MAX, 3).unwrap().1, vec![]);
    assert_eq!(
        h.ns.file_chunks(f, 0, u32::MAX).unwrap().1.len(),
        MAX_CHUNKS_PER_CALL as usize
    );
}

#[test]
fn all_chunks_counts_and_paths() {
    let mut h = Harness::new();
    let d = h.mkdir(1, "dir");
    let f = h.create(d, "f");
    let g = h.create(1, "g");
    let a = h.write(f, 0, 10);
    let b = h.write(f, 2, 2 * CHUNK + 1);
    let c = h.write(g, 0, 7);
    let all: Vec<_> = h.ns.all_chunks().collect();
    assert_eq!(all, vec![(f, 0, a, 1), (f, 2, b, 1), (g, 0, c, 1)]);
    assert_eq!(
        h.ns.counts(),
        Counts {
            files: 2,
            segments: 0,
            directories: 2,
            chunks: 3,
            inodes: 4,
            bytes: 2 * CHUNK + 8
        }
    );
    assert_eq!(h.ns.path_of(f), "/dir/f");
    assert_eq!(h.ns.path_of(g), "/g");
    assert_eq!(h.ns.path_of(d), "/dir");
    assert_eq!(h.ns.path_of(77), "<ino 77>");
    // blocks: chunk 0 and 2 present; chunk 0 full, chunk 2 holds 1 byte.
    assert_eq!(h.getattr(f).blocks, (CHUNK + 512) / 512);
}

#[test]
fn chunks_after_pages_through_every_inode_once() {
    let mut h = Harness::new();
    let d = h.mkdir(1, "dir");
    let f = h.create(d, "f");
    let g = h.create(1, "g");
    let a = h.write(f, 0, 10);
    let b = h.write(f, 2, 2 * CHUNK + 1);
    let c = h.write(g, 0, 7);
    // Inodes 1 (root), d, f, g: pages of two.
    let (p1, n1, next) = h.ns.chunks_after(0, 2);
    assert_eq!((p1, n1, next), (vec![], 2, Some(d)));
    let (p2, n2, next) = h.ns.chunks_after(d, 2);
    assert_eq!(
        (p2, n2, next),
        (vec![(f, 0, a, 1), (f, 2, b, 1), (g, 0, c, 1)], 2, None)
    );
    // A page that ends exactly on the last inode says it is the last.
    let (_, _, next) = h.ns.chunks_after(0, 4);
    assert_eq!(next, None);
    let (all, n, next) = h.ns.chunks_after(0, usize::MAX);
    assert_eq!((all.len(), n, next), (3, 4, None));
    assert_eq!(h.ns.chunks_after(g, 5), (vec![], 0, None));
}

fn commit_allocs(
    h: &mut Harness,
    ino: u64,
    end: u64,
    allocs: &[(u64, u64, u64)],
    allocs_only: bool,
) -> pb::Attr {
    let allocs = allocs
        .iter()
        .map(|&(index, chunk_id, bytes)| pb::ChunkAlloc {
            index,
            chunk_id,
            bytes,
        })
        .collect();
    attr(
        h.op(
            &root(),
            Op::CommitWrite(pb::CommitWriteReq {
                ino,
                end,
                allocs,
                allocs_only,
                then_setattr: Vec::new(),
            }),
        )
        .unwrap(),
    )
}

#[test]
fn st_blocks_follow_the_reported_allocation_of_a_sparse_file() {
    let mut h = Harness::new();
    let f = h.create(1, "sparse");
    // xfstests' _require_sparse_files: 51200 bytes at 1638400 (chunk 1 here).
    let (off, len) = (1_638_400u64, 51_200u64);
    let index = off / CHUNK;
    let id = alloc(&mut h, f, index).unwrap().chunk.unwrap().chunk_id;
    let a = commit_allocs(&mut h, f, off + len, &[(index, id, 53_248)], false);
    assert_eq!(a.size, off + len);
    assert_eq!(
        a.blocks * 512,
        53_248,
        "what the replica holds, not the size"
    );
    assert!(matches!(
        h.log.last(),
        Some(Record::CommitAlloc { now: Some(_), .. })
    ));
    // A figure past the chunk is capped.
    let a = commit_allocs(&mut h, f, 0, &[(index, id, 5 * CHUNK)], false);
    assert_eq!(a.blocks * 512, CHUNK);
    // A figure for another chunk id (the index was truncated away and
    // refilled meanwhile) or for a hole changes nothing.
    let before = h.getattr(f).blocks;
    commit_allocs(&mut h, f, 0, &[(index, id + 100, 0), (7, id, 4096)], false);
    assert_eq!(h.getattr(f).blocks, before);
}

#[test]
fn without_a_report_a_chunk_counts_its_part_below_the_size() {
    let mut h = Harness::new();
    let f = h.create(1, "old");
    h.write(f, 0, 5000);
    assert_eq!(h.getattr(f).blocks, 5000u64.div_ceil(512));
    assert!(matches!(h.log.last(), Some(Record::CommitWrite { .. })));
}

#[test]
fn a_reservation_past_the_end_counts_and_changes_neither_size_nor_times() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    let id = alloc(&mut h, f, 2).unwrap().chunk.unwrap().chunk_id;
    let before = h.getattr(f);
    assert_eq!(before.blocks, 0, "past the size, unreported: nothing");
    let a = commit_allocs(&mut h, f, 0, &[(2, id, 65_536)], true);
    assert_eq!((a.size, a.blocks), (0, 128));
    assert_eq!((a.mtime, a.ctime), (before.mtime, before.ctime));
}

#[test]
fn truncate_drops_and_shrinks_allocations() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    let ids: Vec<u64> = (0..3)
        .map(|i| alloc(&mut h, f, i).unwrap().chunk.unwrap().chunk_id)
        .collect();
    let full: Vec<(u64, u64, u64)> = (0..3).map(|i| (i, ids[i as usize], CHUNK)).collect();
    let a = commit_allocs(&mut h, f, 3 * CHUNK, &full, false);
    assert_eq!(a.blocks * 512, 3 * CHUNK);
    // Into chunk 1: chunk 2 goes, chunk 1 keeps at most the pages before the cut.
    let a = h.truncate_as(&root(), f, CHUNK + 10_000).unwrap();
    assert_eq!(a.blocks * 512, CHUNK + 12_288);
    // Growing again adds nothing (a hole), and cuts nothing more.
    let a = h.truncate_as(&root(), f, 2 * CHUNK).unwrap();
    assert_eq!(a.blocks * 512, CHUNK + 12_288);
    // A new chunk at an index that had one starts without a figure.
    let a = h.truncate_as(&root(), f, 0).unwrap();
    assert_eq!(a.blocks, 0);
    alloc(&mut h, f, 0).unwrap();
    h.op(
        &root(),
        Op::CommitWrite(pb::CommitWriteReq {
            ino: f,
            end: 100,
            ..Default::default()
        }),
    )
    .unwrap();
    assert_eq!(h.getattr(f).blocks, 1, "estimated: 100 bytes");
}
