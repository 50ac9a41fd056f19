//! mknod, mkdir, create, symlink, link.

use super::*;

#[test]
fn mkdir_sets_links_times_and_owner() {
    let mut h = Harness::new();
    let alice = user(1000, 100);
    h.chmod_as(&root(), ROOT_INO, 0o777).unwrap();
    let a = h
        .op(
            &alice,
            Op::Mkdir(pb::MkdirReq {
                parent: 1,
                name: "a".into(),
                mode: 0o7777,
                umask: 0o022,
            }),
        )
        .map(attr)
        .unwrap();
    let now = h.now();
    // suid/sgid dropped by mkdir, umask applied, sticky kept.
    assert_eq!(a.mode, 0o1755);
    assert_eq!((a.uid, a.gid, a.nlink, a.size), (1000, 100, 2, 4096));
    assert_eq!(a.kind, pb::FileKind::Directory as i32);
    for t in [a.atime, a.mtime, a.ctime, a.crtime] {
        assert_eq!(t, Some(now.into()));
    }
    let r = h.getattr(ROOT_INO);
    assert_eq!(r.nlink, 3);
    assert_eq!((r.mtime, r.ctime), (Some(now.into()), Some(now.into())));
    let b = h.mkdir(a.ino, "b");
    assert_eq!(h.getattr(a.ino).nlink, 3);
    assert_eq!(h.getattr(b).nlink, 2);
    assert_eq!(h.lookup(a.ino, "b").unwrap().ino, b);
    assert_eq!(h.lookup(b, "..").unwrap().ino, a.ino);
    assert_eq!(h.lookup(b, ".").unwrap().ino, b);
    assert_eq!(h.lookup(ROOT_INO, "..").unwrap().ino, ROOT_INO);
    assert_eq!(h.ns.path_of(b), "/a/b");
}

#[test]
fn inode_numbers_are_never_reused() {
    let mut h = Harness::new();
    let a = h.create(1, "a");
    h.unlink_as(&root(), 1, "a").unwrap();
    let b = h.create(1, "a");
    assert!(b > a);
    assert_eq!(h.lookup(1, "a").unwrap().ino, b);
}

#[test]
fn name_rules() {
    let mut h = Harness::new();
    let long = "x".repeat(256);
    assert_eq!(
        h.mkdir_as(&root(), 1, &long, 0o755),
        Err(Errno::ENAMETOOLONG)
    );
    assert!(h.mkdir_as(&root(), 1, &"x".repeat(255), 0o755).is_ok());
    assert_eq!(h.mkdir_as(&root(), 1, "a/b", 0o755), Err(Errno::EINVAL));
    assert_eq!(h.create_as(&root(), 1, "a\0b", 0o644), Err(Errno::EINVAL));
    assert_eq!(h.mkdir_as(&root(), 1, "", 0o755), Err(Errno::ENOENT));
    assert_eq!(h.mkdir_as(&root(), 1, ".", 0o755), Err(Errno::EEXIST));
    assert_eq!(h.mkdir_as(&root(), 1, "..", 0o755), Err(Errno::EEXIST));
    assert_eq!(h.lookup(1, ""), Err(Errno::ENOENT));
    assert_eq!(h.lookup(1, &long), Err(Errno::ENAMETOOLONG));
    assert_eq!(h.lookup(1, "nope"), Err(Errno::ENOENT));
}

#[test]
fn eexist_enotdir_enoent() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    h.mkdir(1, "d");
    assert_eq!(h.mkdir_as(&root(), 1, "f", 0o755), Err(Errno::EEXIST));
    assert_eq!(h.mkdir_as(&root(), 1, "d", 0o755), Err(Errno::EEXIST));
    assert_eq!(h.create_as(&root(), 1, "d", 0o644), Err(Errno::EEXIST));
    assert_eq!(h.mkdir_as(&root(), f, "x", 0o755), Err(Errno::ENOTDIR));
    assert_eq!(h.lookup(f, "x"), Err(Errno::ENOTDIR));
    assert_eq!(h.mkdir_as(&root(), 999, "x", 0o755), Err(Errno::ENOENT));
    assert_eq!(h.lookup(999, "x"), Err(Errno::ENOENT));
    assert_eq!(h.ns.getattr(999), Err(Errno::ENOENT));
}

#[test]
fn permissions_on_create() {
    let mut h = Harness::new();
    let alice = user(1000, 100);
    let d = h.mkdir(1, "d"); // 0755 root
    h.create(d, "exists");
    // Search permission is checked before existence, existence before write.
    assert_eq!(h.mkdir_as(&alice, d, "new", 0o755), Err(Errno::EACCES));
    assert_eq!(h.mkdir_as(&alice, d, "exists", 0o755), Err(Errno::EEXIST));
    h.chmod_as(&root(), d, 0o700).unwrap();
    assert_eq!(h.mkdir_as(&alice, d, "exists", 0o755), Err(Errno::EACCES));
    assert_eq!(h.lookup_as(&alice, d, "exists"), Err(Errno::EACCES));
    // Group write via a supplementary group.
    h.chown_as(&root(), d, None, Some(500)).unwrap();
    h.chmod_as(&root(), d, 0o770).unwrap();
    let carol = Caller {
        uid: 1002,
        gid: 100,
        groups: vec![500],
    };
    assert!(h.create_as(&carol, d, "c", 0o644).is_ok());
    assert_eq!(h.create_as(&alice, d, "a", 0o644), Err(Errno::EACCES));
    // Owner bits win even when group bits would allow.
    h.chown_as(&root(), d, Some(1002), None).unwrap();
    h.chmod_as(&root(), d, 0o070).unwrap();
    assert_eq!(h.create_as(&carol, d, "c2", 0o644), Err(Errno::EACCES));
    // Root needs no permission bits on directories.
    h.chmod_as(&root(), d, 0).unwrap();
    assert!(h.create_as(&root(), d, "r", 0o644).is_ok());
}

#[test]
fn setgid_directories_pass_on_group() {
    let mut h = Harness::new();
    let alice = Caller {
        uid: 1000,
        gid: 100,
        groups: vec![],
    };
    let d = h.mkdir(1, "d");
    h.chown_as(&root(), d, None, Some(500)).unwrap();
    h.chmod_as(&root(), d, 0o2777).unwrap();
    let sub = h.mkdir_as(&alice, d, "sub", 0o755).unwrap();
    let a = h.getattr(sub);
    assert_eq!((a.gid, a.mode), (500, 0o2755));
    let f = h.create_as(&alice, d, "f", 0o2755).unwrap();
    // alice is not in group 500: setgid+group-exec is stripped from a new file.
    assert_eq!((h.getattr(f).gid, h.getattr(f).mode), (500, 0o755));
    let g = h.create_as(&alice, d, "g", 0o644).unwrap();
    assert_eq!(h.getattr(g).gid, 500);
    // Outside the setgid dir: caller's gid.
    h.chmod_as(&root(), ROOT_INO, 0o777).unwrap();
    let x = h.create_as(&alice, 1, "x", 0o2755).unwrap();
    assert_eq!((h.getattr(x).gid, h.getattr(x).mode), (100, 0o2755));
}

#[test]
fn mknod_kinds() {
    let mut h = Harness::new();
    let mk = |h: &mut Harness, c: &Caller, name: &str, mode: u32, rdev: u32| {
        h.op(
            c,
            Op::Mknod(pb::MknodReq {
                parent: 1,
                name: name.into(),
                mode,
                rdev,
                umask: 0o022,
            }),
        )
        .map(attr)
    };
    let fifo = mk(&mut h, &root(), "fifo", libc::S_IFIFO | 0o666, 5).unwrap();
    assert_eq!(
        (fifo.kind, fifo.mode, fifo.rdev),
        (pb::FileKind::Fifo as i32, 0o644, 0)
    );
    let sock = mk(&mut h, &root(), "sock", libc::S_IFSOCK | 0o777, 0).unwrap();
    assert_eq!(sock.kind, pb::FileKind::Socket as i32);
    let reg = mk(&mut h, &root(), "reg", 0o600, 0).unwrap();
    assert_eq!((reg.kind, reg.nlink), (pb::FileKind::Regular as i32, 1));
    let chr = mk(&mut h, &root(), "chr", libc::S_IFCHR | 0o600, 0x0501).unwrap();
    assert_eq!(
        (chr.kind, chr.rdev),
        (pb::FileKind::CharDevice as i32, 0x0501)
    );
    let blk = mk(&mut h, &root(), "blk", libc::S_IFBLK | 0o600, 7).unwrap();
    assert_eq!(blk.kind, pb::FileKind::BlockDevice as i32);
    assert_eq!(
        mk(&mut h, &root(), "dir", libc::S_IFDIR | 0o755, 0),
        Err(Errno::EPERM)
    );
    assert_eq!(
        mk(&mut h, &root(), "lnk", libc::S_IFLNK | 0o777, 0),
        Err(Errno::EINVAL)
    );
    assert_eq!(mk(&mut h, &root(), "bad", 0o170000, 0), Err(Errno::EINVAL));
    h.chmod_as(&root(), ROOT_INO, 0o777).unwrap();
    let alice = user(1000, 100);
    assert_eq!(
        mk(&mut h, &alice, "c2", libc::S_IFCHR | 0o600, 1),
        Err(Errno::EPERM)
    );
    assert!(mk(&mut h, &alice, "f2", libc::S_IFIFO | 0o600, 0).is_ok());
    assert_eq!(h.ns.counts().files, 6);
}

#[test]
fn symlinks() {
    let mut h = Harness::new();
    let sl = |h: &mut Harness, name: &str, target: &[u8]| {
        h.op(
            &root(),
            Op::Symlink(pb::SymlinkReq {
                parent: 1,
                name: name.into(),
                target: target.to_vec(),
            }),
        )
        .map(attr)
    };
    let a = sl(&mut h, "l", b"../some/where").unwrap();
    assert_eq!(
        (a.kind, a.mode, a.size, a.nlink),
        (pb::FileKind::Symlink as i32, 0o777, 13, 1)
    );
    assert_eq!(
        h.read(&root(), Op::Readlink(pb::ReadlinkReq { ino: a.ino })),
        Ok(R::Data(b"../some/where".to_vec()))
    );
    assert_eq!(sl(&mut h, "l", b"x"), Err(Errno::EEXIST));
    assert_eq!(sl(&mut h, "e", b""), Err(Errno::ENOENT));
    assert_eq!(sl(&mut h, "long", &[b'a'; 4096]), Err(Errno::ENAMETOOLONG));
    assert!(sl(&mut h, "ok", &[b'a'; 4095]).is_ok());
    assert_eq!(
        h.read(&root(), Op::Readlink(pb::ReadlinkReq { ino: 1 })),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.read(&root(), Op::Readlink(pb::ReadlinkReq { ino: 99 })),
        Err(Errno::ENOENT)
    );
    assert_eq!(h.open_as(&root(), a.ino, libc::O_RDONLY), Err(Errno::ELOOP));
}

#[test]
fn create_modes_and_existing() {
    let mut h = Harness::new();
    let create = |h: &mut Harness, c: &Caller, name: &str, flags: i32| {
        h.op(
            c,
            Op::Create(pb::CreateReq {
                parent: 1,
                name: name.into(),
                mode: 0o666,
                umask: 0o027,
                flags: (libc::O_CREAT | flags) as u32,
            }),
        )
    };
    let a = attr(create(&mut h, &root(), "f", libc::O_WRONLY).unwrap());
    assert_eq!(
        (a.mode, a.nlink, a.size, a.kind),
        (0o640, 1, 0, pb::FileKind::Regular as i32)
    );
    h.write(a.ino, 0, 100);
    // Existing without O_EXCL: an open, no record, no truncation.
    let n = h.log.len();
    let b = attr(create(&mut h, &root(), "f", libc::O_RDWR).unwrap());
    assert_eq!((b.ino, b.size), (a.ino, 100));
    assert_eq!(h.log.len(), n);
    assert_eq!(
        create(&mut h, &root(), "f", libc::O_RDWR | libc::O_EXCL),
        Err(Errno::EEXIST)
    );
    // With O_TRUNC: truncated.
    let c = attr(create(&mut h, &root(), "f", libc::O_RDWR | libc::O_TRUNC).unwrap());
    assert_eq!((c.ino, c.size), (a.ino, 0));
    // Existing file the caller may not write.
    h.chmod_as(&root(), ROOT_INO, 0o777).unwrap();
    let alice = user(1000, 100);
    assert_eq!(
        create(&mut h, &alice, "f", libc::O_WRONLY),
        Err(Errno::EACCES)
    );
    assert!(create(&mut h, &alice, "f", libc::O_RDONLY).is_err()); // 0640, other has nothing
    h.mkdir(1, "d");
    assert_eq!(
        create(&mut h, &root(), "d", libc::O_RDONLY),
        Err(Errno::EISDIR)
    );
    assert_eq!(
        create(&mut h, &root(), ".", libc::O_RDONLY),
        Err(Errno::EISDIR)
    );
    // A new file is created even when its own mode would not allow the access.
    let r = create(&mut h, &alice, "ro", libc::O_RDWR);
    assert!(r.is_ok());
}

#[test]
fn hard_links() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    let d = h.mkdir(1, "d");
    let a = h.link_as(&root(), f, d, "g").unwrap();
    assert_eq!((a.ino, a.nlink, a.ctime), (f, 2, Some(h.now().into())));
    assert_eq!(h.getattr(d).mtime, Some(h.now().into()));
    assert_eq!(h.lookup(d, "g").unwrap().ino, f);
    assert_eq!(h.link_as(&root(), f, d, "g"), Err(Errno::EEXIST));
    assert_eq!(h.link_as(&root(), d, 1, "dd"), Err(Errno::EPERM));
    assert_eq!(h.link_as(&root(), 999, 1, "x"), Err(Errno::ENOENT));
    assert_eq!(h.link_as(&root(), f, f, "x"), Err(Errno::ENOTDIR));
    assert_eq!(h.link_as(&root(), f, 1, "."), Err(Errno::EEXIST));
    let alice = user(1000, 100);
    assert_eq!(h.link_as(&alice, f, d, "h"), Err(Errno::EACCES));
    h.unlink_as(&root(), 1, "f").unwrap();
    assert_eq!(h.getattr(f).nlink, 1);
    assert_eq!(h.ns.path_of(f), "/d/g", "found by a scan");
    h.link_as(&root(), f, 1, "back").unwrap();
    assert_eq!(h.ns.path_of(f), "/back");
}

#[test]
fn link_limit() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    h.ns.inodes.get_mut(&f).unwrap().nlink = LINK_MAX - 1;
    // Fake the missing links' entries are irrelevant to prepare; only the count is.
    let ctx = h.ctx(&root());
    let op = Op::Link(pb::LinkReq {
        ino: f,
        new_parent: 1,
        new_name: "x".into(),
    });
    assert!(matches!(h.ns.prepare(&ctx, &op), Ok(Prepared::Record(_))));
    h.ns.inodes.get_mut(&f).unwrap().nlink = LINK_MAX;
    assert_eq!(h.ns.prepare(&ctx, &op), Err(Errno::EMLINK));
}

#[test]
fn link_of_orphan_is_enoent() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    h.ns.opened(f);
    h.unlink_as(&root(), 1, "f").unwrap();
    assert_eq!(h.getattr(f).nlink, 0);
    assert_eq!(h.link_as(&root(), f, 1, "again"), Err(Errno::ENOENT));
}
