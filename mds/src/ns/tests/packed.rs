//! Packed small files: segments, CommitPacked, reads of a needle, truncate,
//! removal and the unpack records.

use super::*;
use crate::ns::inode::SEGMENT_SESSION_XATTR;

const SESSION: u64 = 0x5e55;

/// A segment of `SESSION` with its chunk 0 allocated: (ino, chunk id).
fn segment(h: &mut Harness) -> (u64, u64) {
    let ctx = h.ctx(&root());
    let Prepared::Record(rec) = h.ns.prepare_create_segment(&ctx, SESSION) else {
        panic!("CreateSegment is a record")
    };
    let seg = attr(h.apply(rec)).ino;
    let chunk = h.write(seg, 0, 0);
    (seg, chunk)
}

fn pack(
    h: &mut Harness,
    ino: u64,
    (segment, chunk_id): (u64, u64),
    offset: u64,
    len: u64,
    end: u64,
) -> Result<pb::Attr, Errno> {
    h.op(
        &user(1000, 100),
        Op::CommitPacked(pb::CommitPackedReq {
            ino,
            segment,
            chunk_id,
            offset,
            len,
            end,
            then_setattr: Vec::new(),
        }),
    )
    .map(attr)
}

fn needle(h: &Harness, ino: u64) -> Option<(u64, u64, u64)> {
    h.ns.needle(ino).map(|n| (n.chunk, n.offset, n.len))
}

#[test]
fn a_segment_is_hidden_but_its_chunk_is_reachable() {
    let mut h = Harness::new();
    let before = h.ns.counts();
    let (seg, chunk) = segment(&mut h);
    let i = h.ns.get(seg).unwrap();
    assert_eq!(
        (i.parent, i.nlink, i.mode, i.uid, i.gid, i.name.len()),
        (SEGMENT_PARENT, 1, 0o600, 0, 0, 0)
    );
    assert_eq!(i.segment_session(), Some(SESSION));
    assert_eq!(h.ns.chunk_owner(chunk), Some((seg, 0, 1)));
    // Not a file anyone sees: not counted, not reachable by ino.
    let c = h.ns.counts();
    assert_eq!((c.files, c.segments), (before.files, 1));
    assert_eq!(c.inodes, before.inodes + 1);
    assert_eq!(h.ns.getattr(seg), Err(Errno::ENOENT));
    let xattr = Op::Getxattr(pb::GetXattrReq {
        ino: seg,
        name: SEGMENT_SESSION_XATTR.to_vec(),
    });
    assert_eq!(h.read(&root(), xattr), Err(Errno::ENOENT));
    assert_eq!(h.truncate_as(&root(), seg, 0), Err(Errno::ENOENT));
    assert!(h.open_as(&root(), seg, libc::O_RDWR).is_err());
    // ... except its chunk, for its writer (AllocChunk above, GetChunks).
    assert_eq!(h.ns.file_chunks(seg, 0, 1).unwrap().1, vec![(0, chunk, 1)]);
    assert_eq!(h.names(1), vec![".", ".."]);
    // Any export's subtree lets it through (the session check guards it).
    let d = h.mkdir(1, "d");
    assert!(h.ns.within(d, seg));
}

#[test]
fn commit_packed_makes_the_file_a_needle() {
    let mut h = Harness::new();
    let seg = segment(&mut h);
    let f = h.create(1, "f");
    let a = pack(&mut h, f, seg, 128, 5000, 5000).unwrap();
    assert_eq!((a.ino, a.size, a.blocks), (f, 5000, 8192 / 512));
    assert_eq!(a.mtime, Some(h.now().into()));
    assert_eq!(needle(&h, f), Some((seg.1, 128, 5000)));
    let n = h.ns.needle(f).unwrap();
    assert_eq!((n.segment, n.version), (seg.0, 1));
    // No chunk of its own; nothing for repair or orphan GC to see.
    assert_eq!(h.ns.file_chunks(f, 0, 3).unwrap(), (5000, vec![]));
    assert!(h.ns.all_chunks().all(|(ino, ..)| ino != f));
    assert_eq!(h.ns.counts().chunks, 1);
    assert_eq!(h.ns.counts().bytes, 5000);
    // An empty needle, and a size past the needle (zeros).
    let g = h.create(1, "g");
    let a = pack(&mut h, g, seg, 5184, 0, 100).unwrap();
    assert_eq!((a.size, a.blocks), (100, 0));
    assert_eq!(h.getattr(g).size, 100);
}

#[test]
fn commit_packed_clears_setuid_as_a_write_does() {
    let mut h = Harness::new();
    let seg = segment(&mut h);
    let f = h
        .create_as(&user(1000, 100), 1, "f", 0o6755)
        .unwrap_or_else(|_| {
            let f = h.create(1, "f");
            h.chmod_as(&root(), f, 0o6755).unwrap();
            f
        });
    h.chmod_as(&root(), f, 0o6755).unwrap();
    let a = pack(&mut h, f, seg, 0, 10, 10).unwrap();
    assert_eq!(a.mode & (libc::S_ISUID | libc::S_ISGID), 0);
}

#[test]
fn data_elsewhere_is_eagain_and_bad_needles_einval() {
    let mut h = Harness::new();
    let seg = segment(&mut h);
    let f = h.create(1, "f");
    pack(&mut h, f, seg, 0, 10, 10).unwrap();
    // Another mount's needle won.
    assert_eq!(pack(&mut h, f, seg, 64, 10, 10), Err(Errno::EAGAIN));
    // A file with a chunk.
    let g = h.create(1, "g");
    h.write(g, 0, 10);
    assert_eq!(pack(&mut h, g, seg, 64, 10, 10), Err(Errno::EAGAIN));
    let e = h.create(1, "e");
    let n = h.log.len();
    for (chunk, offset, len, end) in [
        (seg.1 + 1, 64, 10, 10),        // not the segment's chunk
        (seg.1, 65, 10, 10),            // not aligned
        (seg.1, 64, 11, 10),            // len > end
        (seg.1, CHUNK - 64, 33, 33),    // past the chunk
        (seg.1, u64::MAX - 63, 10, 10), // overflow
    ] {
        assert_eq!(
            pack(&mut h, e, (seg.0, chunk), offset, len, end),
            Err(Errno::EINVAL),
            "{chunk} {offset} {len} {end}"
        );
    }
    // The needle may end exactly at the chunk's end.
    assert_eq!(h.log.len(), n);
    // Not a segment; a segment packed into; a directory.
    assert_eq!(pack(&mut h, e, (g, seg.1), 0, 1, 1), Err(Errno::EINVAL));
    assert_eq!(pack(&mut h, seg.0, seg, 0, 1, 1), Err(Errno::ENOENT));
    let d = h.mkdir(1, "d");
    assert_eq!(pack(&mut h, d, seg, 0, 1, 1), Err(Errno::EISDIR));
    assert_eq!(pack(&mut h, 999, seg, 0, 1, 1), Err(Errno::ENOENT));
    pack(&mut h, e, seg, CHUNK - 64, 32, 32).unwrap();
}

#[test]
fn truncate_shortens_the_needle_and_zero_unpacks_nothing() {
    let mut h = Harness::new();
    let seg = segment(&mut h);
    let f = h.create(1, "f");
    pack(&mut h, f, seg, 0, 5000, 5000).unwrap();
    // Extend: only the size.
    let a = h.truncate_as(&root(), f, 3 * CHUNK).unwrap();
    assert_eq!((a.size, a.blocks), (3 * CHUNK, 16));
    assert_eq!(needle(&h, f), Some((seg.1, 0, 5000)));
    // Shrink: the needle's tail is gone for good (an extend reads zeros).
    h.truncate_as(&root(), f, 100).unwrap();
    assert_eq!(needle(&h, f), Some((seg.1, 0, 100)));
    let a = h.truncate_as(&root(), f, 7000).unwrap();
    assert_eq!((a.size, a.blocks), (7000, 8));
    assert_eq!(needle(&h, f), Some((seg.1, 0, 100)));
    // To zero: an ordinary empty file again, which may be packed anew.
    let freed = h.freed.len();
    h.open_as(&root(), f, libc::O_WRONLY | libc::O_TRUNC)
        .unwrap();
    assert_eq!(needle(&h, f), None);
    assert_eq!(h.getattr(f).size, 0);
    assert_eq!(h.freed.len(), freed, "the segment's chunk is not freed");
    pack(&mut h, f, seg, 4096, 7, 7).unwrap();
    assert_eq!(needle(&h, f), Some((seg.1, 4096, 7)));
}

#[test]
fn a_late_commit_write_moves_only_the_size() {
    let mut h = Harness::new();
    let seg = segment(&mut h);
    let f = h.create(1, "f");
    pack(&mut h, f, seg, 0, 10, 10).unwrap();
    let a = attr(
        h.op(
            &root(),
            Op::CommitWrite(pb::CommitWriteReq {
                ino: f,
                end: 20,
                ..Default::default()
            }),
        )
        .unwrap(),
    );
    assert_eq!(a.size, 20);
    assert_eq!(needle(&h, f), Some((seg.1, 0, 10)));
}

#[test]
fn removing_a_packed_file_frees_nothing_but_its_unpack_chunk() {
    let mut h = Harness::new();
    let seg = segment(&mut h);
    let f = h.create(1, "f");
    let g = h.create(1, "g");
    pack(&mut h, f, seg, 0, 10, 10).unwrap();
    pack(&mut h, g, seg, 64, 10, 10).unwrap();
    h.unlink_as(&root(), 1, "f").unwrap();
    assert!(h.freed.is_empty());
    assert!(h.ns.get(f).is_none());
    assert_eq!(h.ns.counts().bytes, 10);
    let Some(rec) = h.ns.prepare_begin_unpack(g).unwrap() else {
        panic!("no unpack under way yet")
    };
    h.apply(rec);
    let c = h.ns.unpack_target(g).unwrap();
    h.unlink_as(&root(), 1, "g").unwrap();
    assert_eq!(h.freed, vec![c.id]);
    assert_eq!(h.ns.chunk_owner(seg.1), Some((seg.0, 0, 1)));
    assert_eq!(h.ns.counts().bytes, 0);
}

#[test]
fn unpack_moves_the_needle_into_a_chunk_of_its_own() {
    let mut h = Harness::new();
    let seg = segment(&mut h);
    let f = h.create(1, "f");
    pack(&mut h, f, seg, 64, 5000, 6000).unwrap();
    // A chunk write must wait for the unpack.
    let alloc = |h: &mut Harness| {
        h.op(
            &root(),
            Op::AllocChunk(pb::AllocChunkReq {
                ino: f,
                index: 1,
                ..Default::default()
            }),
        )
    };
    assert_eq!(alloc(&mut h), Err(Errno::EAGAIN));
    let rec = h.ns.prepare_begin_unpack(f).unwrap().unwrap();
    let Record::BeginUnpack {
        chunk_id, version, ..
    } = rec
    else {
        panic!("{rec:?}")
    };
    h.apply(rec);
    // Begun once: a second AllocChunk (or one after an MDS restart) copies
    // into the same chunk, which is the file's (never an orphan).
    assert_eq!(h.ns.prepare_begin_unpack(f), Ok(None));
    assert_eq!(h.ns.chunk_owner(chunk_id), Some((f, 0, version)));
    assert!(h.ns.all_chunks().any(|c| c == (f, 0, chunk_id, version)));
    assert_eq!(needle(&h, f), Some((seg.1, 64, 5000)));
    // A stale copy (the needle was shortened since) changes nothing.
    let r = h.apply(Record::Unpack {
        ino: f,
        chunk_id,
        len: 4999,
    });
    assert_eq!(r, R::Empty(pb::Empty {}));
    assert!(needle(&h, f).is_some());
    let a = attr(h.apply(Record::Unpack {
        ino: f,
        chunk_id,
        len: 5000,
    }));
    assert_eq!(a.size, 6000);
    assert_eq!(needle(&h, f), None);
    assert_eq!(
        h.ns.file_chunks(f, 0, 2).unwrap(),
        (6000, vec![(0, chunk_id, 1), (1, 0, 0)])
    );
    // Now an ordinary file.
    assert!(alloc(&mut h).is_ok());
    assert_eq!(pack(&mut h, f, seg, 0, 1, 1), Err(Errno::EAGAIN));
    assert_eq!(h.ns.prepare_begin_unpack(f), Err(Errno::EINVAL));
}

#[test]
fn emptying_a_file_mid_unpack_frees_the_copy() {
    let mut h = Harness::new();
    let seg = segment(&mut h);
    let f = h.create(1, "f");
    pack(&mut h, f, seg, 0, 10, 10).unwrap();
    let rec = h.ns.prepare_begin_unpack(f).unwrap().unwrap();
    h.apply(rec);
    let c = h.ns.unpack_target(f).unwrap();
    h.truncate_as(&root(), f, 0).unwrap();
    assert_eq!(h.freed, vec![c.id]);
    assert_eq!(h.ns.chunk_owner(c.id), None);
    let r = h.apply(Record::Unpack {
        ino: f,
        chunk_id: c.id,
        len: 10,
    });
    assert_eq!(r, R::Empty(pb::Empty {}));
    assert_eq!(h.ns.file_chunks(f, 0, 1).unwrap(), (0, vec![(0, 0, 0)]));
}

#[test]
fn packed_files_and_segments_survive_postcard() {
    let mut h = Harness::new();
    let seg = segment(&mut h);
    let f = h.create(1, "f");
    let g = h.create(1, "g");
    pack(&mut h, f, seg, 0, 10, 10).unwrap();
    pack(&mut h, g, seg, 64, 10, 10).unwrap();
    let rec = h.ns.prepare_begin_unpack(g).unwrap().unwrap();
    h.apply(rec);
    let mut back: Namespace = postcard::from_bytes(&postcard::to_allocvec(&h.ns).unwrap()).unwrap();
    // How far the segment is written travels with the allocations, as in a
    // snapshot.
    back.restore_allocations(h.ns.allocations().map(|(i, a)| (i, a.clone())).collect());
    assert_eq!(back, h.ns);
    assert_eq!(back.segment_infos(), h.ns.segment_infos());
    assert_eq!(back.counts(), h.ns.counts());
    assert_eq!(back.counts().segments, 1);
    check_invariants(&back);
}

/// The segment's info as the compactor sees it.
fn info(h: &Harness, seg: u64) -> crate::ns::SegmentInfo {
    h.ns.segment_infos()
        .into_iter()
        .find(|s| s.ino == seg)
        .expect("the segment")
}

#[test]
fn the_live_figure_follows_every_change_of_a_packed_file() {
    let mut h = Harness::new();
    let seg = segment(&mut h);
    let (f, g, k) = (h.create(1, "f"), h.create(1, "g"), h.create(1, "k"));
    pack(&mut h, f, seg, 0, 5000, 5000).unwrap(); // span 5056
    pack(&mut h, g, seg, 5056, 100, 100).unwrap(); // span 192
    pack(&mut h, k, seg, 5248, 0, 0).unwrap(); // span 64
    let s = info(&h, seg.0);
    assert_eq!((s.live.needles, s.live.bytes), (3, 5056 + 192 + 64));
    assert_eq!((s.written, s.session, s.chunk), (5312, SESSION, seg.1));
    assert_eq!(s.mtime, h.now(), "the last needle's commit");
    // Shrink: what a reader gets; the segment stays written as far.
    h.truncate_as(&root(), f, 10).unwrap();
    assert_eq!(info(&h, seg.0).live.bytes, 64 + 192 + 64);
    // Removal, truncation to 0, an unpack: each needle goes.
    h.unlink_as(&root(), 1, "g").unwrap();
    assert_eq!(info(&h, seg.0).live.needles, 2);
    h.truncate_as(&root(), k, 0).unwrap();
    assert_eq!(info(&h, seg.0).live.needles, 1);
    let begin = h.ns.prepare_begin_unpack(f).unwrap().unwrap();
    h.apply(begin);
    let chunk_id = h.ns.unpack_target(f).unwrap().id;
    h.apply(Record::Unpack {
        ino: f,
        chunk_id,
        len: 10,
    });
    let s = info(&h, seg.0);
    assert_eq!((s.live.needles, s.live.bytes, s.written), (0, 0, 5312));
    assert_eq!(s.live_fraction(), 0.0);
    // A snapshot counts it again (check_invariants compares with a scan).
    let back: Namespace = postcard::from_bytes(&postcard::to_allocvec(&h.ns).unwrap()).unwrap();
    check_invariants(&back);
    assert_eq!(back.live_in(seg.1), Live::default());
}

#[test]
fn compaction_moves_the_needles_that_still_match_and_drops_emptied_segments() {
    let mut h = Harness::new();
    let old = segment(&mut h);
    let files: Vec<u64> = (0..5).map(|i| h.create(1, &format!("f{i}"))).collect();
    for (n, &f) in files.iter().enumerate() {
        pack(&mut h, f, old, 128 * n as u64, 50, 50).unwrap();
    }
    // f0 and f1 are removed; f2 is emptied during the copy.
    h.unlink_as(&root(), 1, "f0").unwrap();
    h.unlink_as(&root(), 1, "f1").unwrap();
    let now = h.ctx(&root()).now;
    let next_chunk = h.ns.next_chunk_id();
    let new = attr(h.apply(Record::CompactBegin { now }));
    let new_chunk = h.ns.file_chunks(new.ino, 0, 1).unwrap().1[0];
    assert_eq!(new_chunk, (0, next_chunk, 1));
    let n = info(&h, new.ino);
    assert_eq!((n.session, n.live.needles), (MDS_SEGMENT_SESSION, 0));
    assert_eq!(h.ns.counts().segments, 2);
    assert_eq!(h.ns.getattr(new.ino), Err(Errno::ENOENT), "hidden");
    h.truncate_as(&root(), files[2], 0).unwrap();
    let mv = |ino, offset, new_offset| crate::ns::NeedleMove {
        ino,
        chunk: old.1,
        offset,
        new_offset,
    };
    let freed = h.freed.len();
    h.apply(Record::CompactSegments {
        new: new.ino,
        end: 256,
        moves: vec![
            mv(files[2], 256, 0),
            mv(files[3], 384, 0),
            mv(files[4], 512, 128),
        ],
        drop: vec![old.0],
    });
    assert_eq!(needle(&h, files[3]), Some((next_chunk, 0, 50)));
    assert_eq!(needle(&h, files[4]), Some((next_chunk, 128, 50)));
    assert_eq!(needle(&h, files[2]), None);
    // The old segment went with its chunk.
    assert!(h.ns.get(old.0).is_none());
    assert_eq!(h.freed[freed..], [old.1]);
    assert_eq!(h.ns.chunk_owner(old.1), None);
    let n = info(&h, new.ino);
    assert_eq!((n.live.needles, n.live.bytes, n.written), (2, 256, 256));
    assert_eq!(h.ns.counts().segments, 1);
    // Replaying the switch changes nothing more (the moves no longer
    // match, the old segment is gone).
    let before = h.ns.clone();
    h.apply(Record::CompactSegments {
        new: new.ino,
        end: 256,
        moves: vec![mv(files[3], 384, 0), mv(files[4], 512, 128)],
        drop: vec![old.0],
    });
    assert_eq!(h.ns, before);
}

#[test]
fn a_segment_still_referenced_stays_and_an_unused_new_one_goes() {
    let mut h = Harness::new();
    let old = segment(&mut h);
    let (f, g) = (h.create(1, "f"), h.create(1, "g"));
    pack(&mut h, f, old, 0, 10, 10).unwrap();
    pack(&mut h, g, old, 64, 10, 10).unwrap();
    let now = h.ctx(&root()).now;
    let new = attr(h.apply(Record::CompactBegin { now })).ino;
    let new_chunk = h.ns.file_chunks(new, 0, 1).unwrap().1[0].1;
    // g was repacked at another offset after the copy began: a stale move
    // (and a needle committed after the scan is in no move at all).
    let stale = crate::ns::NeedleMove {
        ino: g,
        chunk: old.1,
        offset: 128,
        new_offset: 64,
    };
    let good = crate::ns::NeedleMove {
        ino: f,
        chunk: old.1,
        offset: 0,
        new_offset: 0,
    };
    h.apply(Record::CompactSegments {
        new,
        end: 128,
        moves: vec![good, stale],
        drop: vec![old.0],
    });
    assert_eq!(needle(&h, f), Some((new_chunk, 0, 10)));
    assert_eq!(needle(&h, g), Some((old.1, 64, 10)));
    assert!(h.ns.get(old.0).is_some(), "g's needle is still there");
    // Nothing moved into a new segment: it goes (a compaction whose copy
    // found nothing to move, or after a crash before its switch).
    let now = h.ctx(&root()).now;
    let unused = attr(h.apply(Record::CompactBegin { now })).ino;
    let unused_chunk = h.ns.file_chunks(unused, 0, 1).unwrap().1[0].1;
    let freed = h.freed.len();
    h.apply(Record::CompactSegments {
        new: unused,
        end: 0,
        moves: vec![stale],
        drop: vec![],
    });
    assert!(h.ns.get(unused).is_none());
    assert_eq!(h.freed[freed..], [unused_chunk]);
    // Drops only: a segment with a live needle stays, an empty one goes.
    h.unlink_as(&root(), 1, "f").unwrap();
    h.apply(Record::CompactSegments {
        new: 0,
        end: 0,
        moves: vec![],
        drop: vec![old.0, new, f, 12345],
    });
    assert!(h.ns.get(old.0).is_some());
    assert!(h.ns.get(new).is_none());
    assert_eq!(h.ns.counts().segments, 1);
}
