//! Tests of the namespace: one file per op family with errno assertions, a
//! determinism test (replay of the journaled records rebuilds the same state)
//! and a proptest against a simple path model. `Harness` runs every mutation
//! through prepare → apply exactly as the MDS does, keeps the records, and
//! checks the namespace's invariants after each applied record.

mod chunks;
mod create;
mod determinism;
mod model;
mod packed;
mod readdir;
mod remove;
mod rename;
mod setattr;
mod subtree;
mod xattr;

use super::*;
use pb::meta_reply::Result as R;
use std::collections::BTreeMap;

pub const CHUNK: u64 = 1 << 20;

pub fn root() -> Caller {
    Caller::root()
}

pub fn user(uid: u32, gid: u32) -> Caller {
    Caller {
        uid,
        gid,
        groups: vec![],
    }
}

pub struct Harness {
    pub ns: Namespace,
    pub clock: i64,
    pub log: Vec<Record>,
    pub replies: Vec<R>,
    pub freed: Vec<u64>,
}

impl Harness {
    pub fn new() -> Harness {
        Harness {
            ns: Namespace::new(CHUNK),
            clock: 1000,
            log: Vec::new(),
            replies: Vec::new(),
            freed: Vec::new(),
        }
    }

    /// A context whose clock ticks one second per mutation.
    pub fn ctx(&mut self, caller: &Caller) -> Ctx {
        self.clock += 1;
        Ctx {
            now: Time {
                sec: self.clock,
                nsec: 7,
            },
            caller: caller.clone(),
        }
    }

    pub fn now(&self) -> Time {
        Time {
            sec: self.clock,
            nsec: 7,
        }
    }

    /// prepare + apply, as the MDS does; remembers records and replies.
    pub fn op(&mut self, caller: &Caller, op: Op) -> Result<R, Errno> {
        let ctx = self.ctx(caller);
        match self.ns.prepare(&ctx, &op)? {
            Prepared::Reply(r) => Ok(r),
            Prepared::Record(rec) => Ok(self.apply(rec)),
        }
    }

    pub fn apply(&mut self, rec: Record) -> R {
        let before = self.ns.clone();
        let a = self.ns.apply(&rec);
        // apply of a prepared record is deterministic: do it again on a copy.
        let mut again = before;
        assert_eq!(again.apply(&rec), a, "apply is deterministic");
        assert_eq!(again, self.ns);
        check_invariants(&self.ns);
        self.log.push(rec);
        self.replies.push(a.reply.clone());
        self.freed.extend(a.freed_chunks);
        a.reply
    }

    pub fn read(&self, caller: &Caller, op: Op) -> Result<R, Errno> {
        self.ns.read(caller, &op)
    }

    // ---- shorthands; `*_as` take a caller, the others act as root.

    pub fn mkdir_as(
        &mut self,
        c: &Caller,
        parent: u64,
        name: &str,
        mode: u32,
    ) -> Result<u64, Errno> {
        let r = self.op(
            c,
            Op::Mkdir(pb::MkdirReq {
                parent,
                name: name.into(),
                mode,
                umask: 0,
            }),
        )?;
        Ok(attr(r).ino)
    }

    pub fn mkdir(&mut self, parent: u64, name: &str) -> u64 {
        self.mkdir_as(&root(), parent, name, 0o755).unwrap()
    }

    pub fn create_as(
        &mut self,
        c: &Caller,
        parent: u64,
        name: &str,
        mode: u32,
    ) -> Result<u64, Errno> {
        let r = self.op(
            c,
            Op::Create(pb::CreateReq {
                parent,
                name: name.into(),
                mode,
                umask: 0,
                flags: (libc::O_CREAT | libc::O_EXCL | libc::O_RDWR) as u32,
            }),
        )?;
        Ok(attr(r).ino)
    }

    pub fn create(&mut self, parent: u64, name: &str) -> u64 {
        self.create_as(&root(), parent, name, 0o644).unwrap()
    }

    pub fn unlink_as(&mut self, c: &Caller, parent: u64, name: &str) -> Result<(), Errno> {
        self.op(
            c,
            Op::Unlink(pb::UnlinkReq {
                parent,
                name: name.into(),
            }),
        )
        .map(drop)
    }

    pub fn rmdir_as(&mut self, c: &Caller, parent: u64, name: &str) -> Result<(), Errno> {
        self.op(
            c,
            Op::Rmdir(pb::RmdirReq {
                parent,
                name: name.into(),
            }),
        )
        .map(drop)
    }

    pub fn rename_as(
        &mut self,
        c: &Caller,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        flags: u32,
    ) -> Result<(), Errno> {
        self.op(
            c,
            Op::Rename(pb::RenameReq {
                parent,
                name: name.into(),
                new_parent,
                new_name: new_name.into(),
                flags,
            }),
        )
        .map(drop)
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
    ) -> Result<(), Errno> {
        self.rename_as(&root(), parent, name, new_parent, new_name, 0)
    }

    pub fn link_as(
        &mut self,
        c: &Caller,
        ino: u64,
        new_parent: u64,
        new_name: &str,
    ) -> Result<pb::Attr, Errno> {
        self.op(
            c,
            Op::Link(pb::LinkReq {
                ino,
                new_parent,
                new_name: new_name.into(),
            }),
        )
        .map(attr)
    }

    pub fn lookup_as(&self, c: &Caller, parent: u64, name: &str) -> Result<pb::Attr, Errno> {
        self.read(
            c,
            Op::Lookup(pb::LookupReq {
                parent,
                name: name.into(),
            }),
        )
        .map(attr)
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<pb::Attr, Errno> {
        self.lookup_as(&root(), parent, name)
    }

    pub fn getattr(&self, ino: u64) -> pb::Attr {
        self.ns.getattr(ino).unwrap()
    }

    pub fn setattr_as(&mut self, c: &Caller, req: pb::SetAttrReq) -> Result<pb::Attr, Errno> {
        self.op(c, Op::Setattr(req)).map(attr)
    }

    pub fn chmod_as(&mut self, c: &Caller, ino: u64, mode: u32) -> Result<pb::Attr, Errno> {
        self.setattr_as(
            c,
            pb::SetAttrReq {
                ino,
                mode: Some(mode),
                ..Default::default()
            },
        )
    }

    pub fn chown_as(
        &mut self,
        c: &Caller,
        ino: u64,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<pb::Attr, Errno> {
        self.setattr_as(
            c,
            pb::SetAttrReq {
                ino,
                uid,
                gid,
                ..Default::default()
            },
        )
    }

    pub fn truncate_as(&mut self, c: &Caller, ino: u64, size: u64) -> Result<pb::Attr, Errno> {
        self.setattr_as(
            c,
            pb::SetAttrReq {
                ino,
                size: Some(size),
                ..Default::default()
            },
        )
    }

    pub fn open_as(&mut self, c: &Caller, ino: u64, flags: i32) -> Result<R, Errno> {
        self.op(
            c,
            Op::Open(pb::OpenReq {
                ino,
                flags: flags as u32,
            }),
        )
    }

    /// Allocates chunk `index` and commits a write ending at `end`.
    pub fn write(&mut self, ino: u64, index: u64, end: u64) -> u64 {
        let r = self
            .op(
                &root(),
                Op::AllocChunk(pb::AllocChunkReq {
                    ino,
                    index,
                    ..Default::default()
                }),
            )
            .unwrap();
        let R::ChunkWrite(cw) = r else {
            panic!("not a ChunkWrite: {r:?}")
        };
        self.op(
            &root(),
            Op::CommitWrite(pb::CommitWriteReq {
                ino,
                end,
                ..Default::default()
            }),
        )
        .unwrap();
        cw.chunk.unwrap().chunk_id
    }

    pub fn names(&self, dir: u64) -> Vec<String> {
        let R::Entries(e) = self
            .read(
                &root(),
                Op::Readdir(pb::ReadDirReq {
                    ino: dir,
                    offset: 0,
                    limit: 0,
                    plus: false,
                }),
            )
            .unwrap()
        else {
            panic!()
        };
        assert!(e.eof);
        e.entries
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect()
    }
}

pub fn attr(r: R) -> pb::Attr {
    match r {
        R::Attr(a) => a,
        other => panic!("expected an Attr, got {other:?}"),
    }
}

/// Everything the namespace promises about itself.
pub fn check_invariants(ns: &Namespace) {
    let root = &ns.inodes[&ROOT_INO];
    assert!(root.is_dir() && root.parent == ROOT_INO && root.nlink >= 2);
    let mut links: BTreeMap<u64, u32> = BTreeMap::new();
    let mut dirs = 0;
    let mut bytes = 0;
    let mut owners = BTreeMap::new();
    let mut segments = 0;
    for (ino, i) in ns.inodes.iter() {
        assert_eq!(ino, i.ino);
        assert!(ino < ns.next_ino);
        assert_eq!(i.mode & !0o7777, 0);
        match (&i.body, i.kind) {
            (Body::Dir(d), Kind::Directory) => {
                dirs += 1;
                assert!(d.consistent());
                let subdirs = d
                    .iter()
                    .filter(|(_, e)| {
                        ns.inodes
                            .get(&e.ino)
                            .expect("entry points at an inode")
                            .is_dir()
                    })
                    .count() as u32;
                if i.nlink > 0 {
                    assert_eq!(i.nlink, 2 + subdirs, "nlink of dir {ino}");
                } else {
                    assert!(d.is_empty());
                }
                for (name, e) in d.iter() {
                    assert!(!name.is_empty() && name != b"." && name != b"..");
                    *links.entry(e.ino).or_default() += 1;
                    let child = &ns.inodes[&e.ino];
                    if child.is_dir() {
                        assert_eq!(child.parent, ino, "parent of dir {}", e.ino);
                        assert_eq!(child.name, name);
                    }
                }
            }
            (Body::File { chunks }, Kind::Regular) => {
                bytes += i.size;
                for (&index, c) in chunks {
                    assert!(c.id < ns.next_chunk);
                    assert!(
                        owners.insert(c.id, (ino, index)).is_none(),
                        "chunk {} used twice",
                        c.id
                    );
                }
                for (index, &bytes) in &i.alloc {
                    assert!(chunks.contains_key(index), "allocation of a hole");
                    assert!(bytes <= ns.chunk_size());
                }
            }
            (
                Body::Packed {
                    chunk,
                    offset,
                    len,
                    unpack_to,
                },
                Kind::Regular,
            ) => {
                bytes += i.size;
                assert!(*len <= i.size, "needle past the size of {ino}");
                assert_eq!(offset % inode::NEEDLE_ALIGN, 0);
                assert!(*chunk < ns.next_chunk);
                assert!(i.alloc.is_empty());
                if let Some(c) = unpack_to {
                    assert!(c.id < ns.next_chunk);
                    assert!(
                        owners.insert(c.id, (ino, 0)).is_none(),
                        "chunk {} used twice",
                        c.id
                    );
                }
            }
            (Body::Symlink { target }, Kind::Symlink) => assert_eq!(i.size, target.len() as u64),
            (Body::Special, k) => assert!(!matches!(
                k,
                Kind::Directory | Kind::Regular | Kind::Symlink
            )),
            (b, k) => panic!("kind {k:?} with body {b:?}"),
        }
    }
    for (ino, i) in ns.inodes.iter() {
        let n = links.get(&ino).copied().unwrap_or(0);
        if ino == ROOT_INO {
            assert_eq!(n, 0);
        } else if i.is_segment() {
            assert_eq!((n, i.nlink, i.kind), (0, 1, Kind::Regular), "segment {ino}");
            assert!(i.chunks().is_some() && i.segment_session().is_some());
            segments += 1;
        } else if i.is_dir() {
            assert_eq!(n, (i.nlink > 0) as u32, "links to dir {ino}");
        } else {
            assert_eq!(n, i.nlink, "links to {ino}");
        }
    }
    assert_eq!(owners, ns.chunk_owners);
    assert_eq!(
        crate::ns::ops::compact::count_live(&ns.inodes),
        ns.live,
        "live needles per segment"
    );
    assert_eq!(dirs, ns.dirs);
    assert_eq!(bytes, ns.bytes);
    let c = ns.counts();
    assert_eq!(c.inodes, ns.inodes.len() as u64);
    assert_eq!(c.segments, segments);
    assert_eq!(c.files + c.directories + c.segments, c.inodes);
    assert_eq!(c.chunks, owners.len() as u64);
}

#[test]
fn new_namespace_has_a_root() {
    let ns = Namespace::new(CHUNK);
    check_invariants(&ns);
    let a = ns.getattr(ROOT_INO).unwrap();
    assert_eq!(a.ino, 1);
    assert_eq!(a.kind, pb::FileKind::Directory as i32);
    assert_eq!(a.mode, 0o755);
    assert_eq!((a.uid, a.gid, a.nlink), (0, 0, 2));
    assert_eq!(a.mtime, Some(pb::Timespec { sec: 0, nsec: 0 }));
    assert_eq!(ns.chunk_size(), CHUNK);
    assert_eq!(ns.path_of(ROOT_INO), "/");
    assert_eq!(
        ns.counts(),
        Counts {
            files: 0,
            segments: 0,
            directories: 1,
            chunks: 0,
            inodes: 1,
            bytes: 0
        }
    );
}

#[test]
fn unhandled_ops_are_einval() {
    let mut h = Harness::new();
    assert_eq!(
        h.read(&root(), Op::Statfs(pb::StatFsReq {})),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.read(&root(), Op::Mkdir(Default::default())),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.op(
            &root(),
            Op::Release(pb::ReleaseReq {
                ino: 1,
                write: false,
                more: Vec::new(),
                held: false,
                atimes: Vec::new(),
            })
        ),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.op(&root(), Op::GetChunks(Default::default())),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.op(&root(), Op::Lookup(Default::default())),
        Err(Errno::EINVAL)
    );
}

#[test]
fn caller_from_pb() {
    let c = Caller::from(&pb::Caller {
        uid: 5,
        gid: 6,
        groups: vec![7, 8],
        pid: 9,
    });
    assert_eq!(
        c,
        Caller {
            uid: 5,
            gid: 6,
            groups: vec![7, 8]
        }
    );
    assert!(c.in_group(6) && c.in_group(8) && !c.in_group(9));
}

#[test]
fn time_conversions() {
    let t = Time::from(pb::Timespec {
        sec: -5,
        nsec: 2_000_000_000,
    });
    assert_eq!(
        t,
        Time {
            sec: -5,
            nsec: 999_999_999
        }
    );
    assert_eq!(
        pb::Timespec::from(Time { sec: 9, nsec: 8 }),
        pb::Timespec { sec: 9, nsec: 8 }
    );
}

#[test]
fn a_record_that_does_not_fit_changes_nothing() {
    let mut h = Harness::new();
    let d = h.mkdir(1, "d");
    let f = h.create(d, "f");
    let before = h.ns.clone();
    let now = t(5);
    for rec in [
        Record::Remove {
            parent: d,
            name: b"nope".to_vec(),
            ino: f,
            purge: true,
            now,
        },
        Record::Remove {
            parent: d,
            name: b"f".to_vec(),
            ino: f + 1,
            purge: true,
            now,
        },
        Record::Create {
            parent: d,
            name: b"f".to_vec(),
            ino: 99,
            kind: Kind::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: vec![],
            now,
        },
        Record::Create {
            parent: f,
            name: b"x".to_vec(),
            ino: 99,
            kind: Kind::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: vec![],
            now,
        },
        Record::Link {
            ino: d,
            new_parent: 1,
            new_name: b"x".to_vec(),
            now,
        },
        Record::Rename {
            parent: d,
            name: b"f".to_vec(),
            new_parent: 1,
            new_name: b"d".to_vec(),
            ino: f,
            replaced: None,
            exchange: false,
            purge: true,
            now,
        },
        Record::SetAttr {
            ino: d,
            mode: None,
            uid: None,
            gid: None,
            size: Some(0),
            atime: None,
            mtime: None,
            ctime: now,
        },
        Record::AllocChunk {
            ino: d,
            index: 0,
            chunk_id: 50,
            version: 1,
        },
        Record::CommitWrite {
            ino: 77,
            end: 5,
            kill_privs: false,
            now,
        },
        Record::RemoveXattr {
            ino: f,
            name: b"user.x".to_vec(),
            now,
        },
        Record::Purge { ino: f },
    ] {
        let a = h.ns.apply(&rec);
        assert_eq!(a.reply, R::Empty(pb::Empty {}), "{rec:?}");
        assert!(a.freed_chunks.is_empty());
        assert_eq!(h.ns, before, "{rec:?}");
    }
}

pub fn t(sec: i64) -> Time {
    Time { sec, nsec: 7 }
}
