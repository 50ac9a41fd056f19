//! Determinism: a long pseudo-random run of every mutation (several callers,
//! opens and releases, errors included) through prepare + apply; the journaled
//! records replayed onto a fresh `Namespace::new` give the same state (equal
//! and byte-identical when serialized) and the same replies.

use super::*;

/// xorshift64*: a fixed, dependency-free sequence per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "longer-name"];

fn random_op(h: &mut Harness, rng: &mut Rng, callers: &[Caller], open: &mut Vec<u64>) {
    let inos: Vec<u64> = h.ns.inodes.keys().collect();
    let dirs: Vec<u64> =
        h.ns.inodes
            .values()
            .filter(|i| i.is_dir())
            .map(|i| i.ino)
            .collect();
    let caller = rng.pick(callers).clone();
    let ino = *rng.pick(&inos);
    let dir = *rng.pick(&dirs);
    // Mostly names that exist, so removals and renames succeed often.
    let existing: Vec<Vec<u8>> = h.ns.inodes[&dir]
        .dir()
        .unwrap()
        .iter()
        .map(|(n, _)| n.to_vec())
        .collect();
    let name: Vec<u8> = if !existing.is_empty() && rng.chance(60) {
        rng.pick(&existing).clone()
    } else {
        rng.pick(&NAMES).as_bytes().to_vec()
    };
    let time = |rng: &mut Rng| {
        if rng.chance(50) {
            None
        } else {
            Some(pb::TimeSet {
                now: rng.chance(50),
                time: Some(pb::Timespec {
                    sec: rng.below(1 << 40) as i64,
                    nsec: rng.below(1_000_000_000) as u32,
                }),
            })
        }
    };
    let op = match rng.below(26) {
        0 | 1 => Op::Mkdir(pb::MkdirReq {
            parent: dir,
            name,
            mode: rng.below(0o10000) as u32,
            umask: *rng.pick(&[0, 0o022, 0o077]),
        }),
        2 | 3 => Op::Create(pb::CreateReq {
            parent: dir,
            name,
            mode: rng.below(0o10000) as u32,
            umask: 0o022,
            flags: *rng.pick(&[
                libc::O_RDWR,
                libc::O_WRONLY | libc::O_TRUNC,
                libc::O_EXCL | libc::O_WRONLY,
                libc::O_RDONLY,
            ]) as u32
                | libc::O_CREAT as u32,
        }),
        4 => Op::Mknod(pb::MknodReq {
            parent: dir,
            name,
            mode: *rng.pick(&[libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR, libc::S_IFREG]) | 0o640,
            rdev: rng.below(1000) as u32,
            umask: 0,
        }),
        5 => Op::Symlink(pb::SymlinkReq {
            parent: dir,
            name,
            target: rng.pick(&NAMES).as_bytes().to_vec(),
        }),
        6 => Op::Link(pb::LinkReq {
            ino,
            new_parent: dir,
            new_name: name,
        }),
        7 | 8 => Op::Unlink(pb::UnlinkReq { parent: dir, name }),
        9 => Op::Rmdir(pb::RmdirReq { parent: dir, name }),
        10 | 11 => Op::Rename(pb::RenameReq {
            parent: dir,
            name,
            new_parent: *rng.pick(&dirs),
            new_name: rng.pick(&NAMES).as_bytes().to_vec(),
            flags: *rng.pick(&[0, 0, 1, 2]),
        }),
        12 => Op::Setattr(pb::SetAttrReq {
            ino,
            mode: rng.chance(30).then(|| rng.below(0o10000) as u32),
            uid: rng.chance(20).then(|| *rng.pick(&[0, 1000, 1001])),
            gid: rng.chance(20).then(|| *rng.pick(&[0, 100, 200])),
            size: rng.chance(30).then(|| rng.below(5 * CHUNK)),
            atime: time(rng),
            mtime: time(rng),
            ..Default::default()
        }),
        13 => Op::Open(pb::OpenReq {
            ino,
            flags: *rng.pick(&[libc::O_RDONLY, libc::O_RDWR | libc::O_TRUNC, libc::O_WRONLY])
                as u32,
        }),
        14 => Op::Setxattr(pb::SetXattrReq {
            ino,
            name: [b"user.".as_slice(), &name].concat(),
            value: vec![rng.below(256) as u8; rng.below(100) as usize],
            flags: *rng.pick(&[0, 1, 2]),
        }),
        15 => Op::Removexattr(pb::RemoveXattrReq {
            ino,
            name: [b"user.".as_slice(), &name].concat(),
        }),
        16 | 17 => Op::AllocChunk(pb::AllocChunkReq {
            ino,
            index: rng.below(5),
            ..Default::default()
        }),
        18 => Op::CommitWrite(pb::CommitWriteReq {
            ino,
            end: rng.below(5 * CHUNK),
            // The chunks' allocation, for chunks the file holds or not.
            allocs: match h.ns.file_chunks(ino, 0, 5) {
                Ok((_, chunks)) if rng.chance(70) => {
                    let mut allocs = Vec::new();
                    for &(index, id, _) in &chunks {
                        if rng.chance(50) {
                            allocs.push(pb::ChunkAlloc {
                                index,
                                chunk_id: if rng.chance(80) { id } else { id + 1 },
                                bytes: rng.below(CHUNK + 10),
                            });
                        }
                    }
                    allocs
                }
                _ => vec![],
            },
            allocs_only: rng.chance(20),
            then_setattr: Vec::new(),
        }),
        19 => {
            // The session is the writer's; only the record carries it.
            let ctx = h.ctx(&caller);
            let Prepared::Record(rec) = h.ns.prepare_create_segment(&ctx, rng.next()) else {
                unreachable!("a segment is always a record")
            };
            let seg = attr(h.apply(rec)).ino;
            if rng.chance(90) {
                let alloc = Op::AllocChunk(pb::AllocChunkReq {
                    ino: seg,
                    index: 0,
                    ..Default::default()
                });
                h.op(&root(), alloc).unwrap();
            }
            return;
        }
        20 | 21 => {
            // Mostly files that may be packed: regular, with no data yet.
            let empty: Vec<u64> =
                h.ns.inodes
                    .values()
                    .filter(|i| i.chunks().is_some_and(|c| c.is_empty()) && !i.is_segment())
                    .map(|i| i.ino)
                    .collect();
            let ino = if empty.is_empty() || rng.chance(20) {
                ino
            } else {
                *rng.pick(&empty)
            };
            let segments: Vec<u64> =
                h.ns.inodes
                    .values()
                    .filter(|i| i.is_segment())
                    .map(|i| i.ino)
                    .collect();
            let segment = if segments.is_empty() || rng.chance(10) {
                ino
            } else {
                *rng.pick(&segments)
            };
            let seg_chunk = h.ns.inodes[&segment]
                .chunks()
                .and_then(|c| c.get(&0))
                .map_or(0, |c| c.id);
            let len = rng.below(70_000);
            Op::CommitPacked(pb::CommitPackedReq {
                ino,
                segment,
                chunk_id: if rng.chance(90) {
                    seg_chunk
                } else {
                    seg_chunk + 1
                },
                offset: rng.below(CHUNK / 64) * 64 + rng.chance(5) as u64,
                len,
                end: len + rng.below(3) * rng.below(CHUNK),
                then_setattr: Vec::new(),
            })
        }
        22 => {
            let packed: Vec<u64> =
                h.ns.inodes
                    .values()
                    .filter(|i| matches!(i.body, Body::Packed { .. }))
                    .map(|i| i.ino)
                    .collect();
            let ino = if packed.is_empty() || rng.chance(10) {
                ino
            } else {
                *rng.pick(&packed)
            };
            // The service's unpack: begin, or finish one under way
            // (sometimes with a length a truncate has changed since).
            match h.ns.prepare_begin_unpack(ino) {
                Ok(Some(rec)) => {
                    h.apply(rec);
                }
                Ok(None) => {
                    let chunk_id = h.ns.unpack_target(ino).unwrap().id;
                    let len = match h.ns.inodes[&ino].body {
                        Body::Packed { len, .. } => len + rng.chance(10) as u64,
                        _ => unreachable!(),
                    };
                    h.apply(Record::Unpack { ino, chunk_id, len });
                }
                Err(_) => {}
            }
            return;
        }
        23 => {
            // The compactor: a new segment, then the switch of some packed
            // files (some with a stale offset, as when a file changed
            // during the copy) and the drop of some segments.
            let now = h.ctx(&root()).now;
            let new = if rng.chance(80) {
                attr(h.apply(Record::CompactBegin { now })).ino
            } else {
                ino
            };
            let packed: Vec<(u64, u64, u64)> =
                h.ns.inodes
                    .values()
                    .filter_map(|i| match i.body {
                        Body::Packed { chunk, offset, .. } => Some((i.ino, chunk, offset)),
                        _ => None,
                    })
                    .collect();
            let mut moves = Vec::new();
            let mut at = 0;
            for &(ino, chunk, offset) in &packed {
                if rng.chance(50) {
                    moves.push(crate::ns::NeedleMove {
                        ino,
                        chunk,
                        offset: offset + 64 * rng.chance(10) as u64,
                        new_offset: at,
                    });
                    at += 64 * (1 + rng.below(100));
                }
            }
            let drop: Vec<u64> =
                h.ns.inodes
                    .values()
                    .filter(|i| i.is_segment() && rng.chance(50))
                    .map(|i| i.ino)
                    .collect();
            h.apply(Record::CompactSegments {
                new,
                end: at,
                moves,
                drop,
            });
            return;
        }
        _ => {
            // Open bookkeeping, as the MDS does it around Open/Create/Release.
            if rng.chance(50) || open.is_empty() {
                h.ns.opened(ino);
                open.push(ino);
            } else {
                let ino = open.swap_remove(rng.below(open.len() as u64) as usize);
                if let Some(rec) = h.ns.released(ino) {
                    h.apply(rec);
                }
            }
            return;
        }
    };
    let _ = h.op(&caller, op);
}

fn run(seed: u64, steps: usize) -> Harness {
    let callers = [
        root(),
        Caller {
            uid: 1000,
            gid: 100,
            groups: vec![200],
        },
        user(1001, 100),
    ];
    let mut h = Harness::new();
    // Let the non-root callers do things too.
    h.chmod_as(&root(), ROOT_INO, 0o1777).unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut open = Vec::new();
    for _ in 0..steps {
        random_op(&mut h, &mut rng, &callers, &mut open);
    }
    h
}

fn replay(log: &[Record]) -> (Namespace, Vec<R>) {
    let mut ns = Namespace::new(CHUNK);
    let replies = log.iter().map(|r| ns.apply(r).reply).collect();
    (ns, replies)
}

#[test]
fn replay_rebuilds_the_same_state() {
    for seed in 1..=12 {
        let h = run(seed, 1500);
        assert!(
            h.log.len() > 150,
            "seed {seed}: only {} records",
            h.log.len()
        );
        let (ns, replies) = replay(&h.log);
        assert_eq!(replies, h.replies, "seed {seed}");
        assert_eq!(ns, h.ns, "seed {seed}");
        assert_eq!(
            postcard::to_allocvec(&ns).unwrap(),
            postcard::to_allocvec(&h.ns).unwrap(),
            "seed {seed}: serialized forms differ"
        );
        check_invariants(&ns);
    }
}

#[test]
fn records_and_state_round_trip_through_postcard() {
    let h = run(99, 800);
    for rec in &h.log {
        let bytes = postcard::to_allocvec(rec).unwrap();
        assert_eq!(&postcard::from_bytes::<Record>(&bytes).unwrap(), rec);
    }
    // The chunk allocations travel beside the namespace (as in a snapshot).
    let through_postcard = |ns: &Namespace| {
        let allocs: Vec<(u64, std::collections::BTreeMap<u64, u64>)> =
            ns.allocations().map(|(i, a)| (i, a.clone())).collect();
        let mut back: Namespace =
            postcard::from_bytes(&postcard::to_allocvec(ns).unwrap()).unwrap();
        back.restore_allocations(allocs);
        back
    };
    assert_eq!(through_postcard(&h.ns), h.ns);
    // A restored snapshot plus the rest of the log equals the full replay.
    let mid = h.log.len() / 2;
    let (mut ns, _) = replay(&h.log[..mid]);
    ns = through_postcard(&ns);
    for rec in &h.log[mid..] {
        ns.apply(rec);
    }
    assert_eq!(ns, h.ns);
}

#[test]
fn the_run_exercises_every_record_kind() {
    let h = run(7, 3000);
    let mut kinds = std::collections::HashSet::new();
    for r in &h.log {
        kinds.insert(std::mem::discriminant(r));
        let _ = r.ino();
    }
    assert_eq!(kinds.len(), 17, "some record kinds never happened");
}
