//! chmod, chown, utimens, truncate, open.

use super::*;

fn ts(now: bool, sec: i64) -> Option<pb::TimeSet> {
    Some(pb::TimeSet {
        now,
        time: Some(pb::Timespec { sec, nsec: 5 }),
    })
}

#[test]
fn chmod_rules() {
    let mut h = Harness::new();
    let alice = Caller {
        uid: 1000,
        gid: 100,
        groups: vec![200],
    };
    let bob = user(1001, 100);
    let f = h.create(1, "f");
    h.chown_as(&root(), f, Some(1000), Some(100)).unwrap();
    let a = h.chmod_as(&alice, f, 0o4755).unwrap();
    assert_eq!((a.mode, a.ctime), (0o4755, Some(h.now().into())));
    assert_eq!(h.chmod_as(&bob, f, 0o777), Err(Errno::EPERM));
    // File type bits in the request are ignored.
    assert_eq!(
        h.chmod_as(&alice, f, libc::S_IFDIR | 0o644).unwrap().mode,
        0o644
    );
    // Setgid survives only if the owner is in the file's group.
    assert_eq!(h.chmod_as(&alice, f, 0o2755).unwrap().mode, 0o2755);
    h.chown_as(&root(), f, None, Some(300)).unwrap();
    assert_eq!(h.chmod_as(&alice, f, 0o2755).unwrap().mode, 0o755);
    assert_eq!(h.chmod_as(&root(), f, 0o2755).unwrap().mode, 0o2755);
    assert_eq!(h.chmod_as(&root(), 999, 0o2755), Err(Errno::ENOENT));
}

#[test]
fn non_owner_with_write_access_may_only_drop_setuid_setgid() {
    let mut h = Harness::new();
    let bob = user(1001, 100);
    let f = h.create(1, "f");
    h.chown_as(&root(), f, None, Some(100)).unwrap();
    h.chmod_as(&root(), f, 0o6666).unwrap();
    // The kernel's privilege drop before bob's write/fallocate.
    assert_eq!(h.chmod_as(&bob, f, 0o2666).unwrap().mode, 0o2666);
    assert_eq!(h.chmod_as(&bob, f, 0o666).unwrap().mode, 0o666);
    // Anything else stays the owner's: adding bits, other bits, no change.
    assert_eq!(h.chmod_as(&bob, f, 0o4666), Err(Errno::EPERM));
    assert_eq!(h.chmod_as(&bob, f, 0o644), Err(Errno::EPERM));
    assert_eq!(h.chmod_as(&bob, f, 0o666), Err(Errno::EPERM));
    // Without write permission not even that.
    h.chmod_as(&root(), f, 0o6644).unwrap();
    assert_eq!(h.chmod_as(&bob, f, 0o644), Err(Errno::EPERM));
}

#[test]
fn chown_rules() {
    let mut h = Harness::new();
    let alice = Caller {
        uid: 1000,
        gid: 100,
        groups: vec![200],
    };
    let bob = user(1001, 100);
    let f = h.create(1, "f");
    h.chown_as(&root(), f, Some(1000), Some(100)).unwrap();
    assert_eq!(h.chown_as(&alice, f, Some(1001), None), Err(Errno::EPERM));
    assert_eq!(h.chown_as(&alice, f, None, Some(300)), Err(Errno::EPERM));
    assert_eq!(h.chown_as(&bob, f, None, Some(100)), Err(Errno::EPERM));
    let a = h.chown_as(&alice, f, Some(1000), Some(200)).unwrap();
    assert_eq!((a.uid, a.gid), (1000, 200));
    // chown of a non-directory clears setuid, even by root; setgid when group-exec.
    h.chmod_as(&root(), f, 0o6755).unwrap();
    assert_eq!(h.chown_as(&root(), f, Some(0), None).unwrap().mode, 0o755);
    h.chmod_as(&root(), f, 0o2745).unwrap();
    assert_eq!(
        h.chown_as(&root(), f, None, Some(100)).unwrap().mode,
        0o2745,
        "sgid without group-exec stays"
    );
    // Directories keep their bits.
    let d = h.mkdir(1, "d");
    h.chmod_as(&root(), d, 0o3755).unwrap();
    assert_eq!(
        h.chown_as(&root(), d, Some(5), Some(5)).unwrap().mode,
        0o3755
    );
}

#[test]
fn utimens_rules() {
    let mut h = Harness::new();
    let alice = user(1000, 100);
    let bob = user(1001, 100);
    let f = h.create(1, "f");
    h.chown_as(&root(), f, Some(1000), Some(100)).unwrap();
    h.chmod_as(&root(), f, 0o664).unwrap();
    let set = |h: &mut Harness, c: &Caller, atime, mtime| {
        h.setattr_as(
            c,
            pb::SetAttrReq {
                ino: f,
                atime,
                mtime,
                ..Default::default()
            },
        )
    };
    let a = set(&mut h, &alice, ts(false, 11), ts(false, 22)).unwrap();
    assert_eq!(a.atime, Some(pb::Timespec { sec: 11, nsec: 5 }));
    assert_eq!(a.mtime, Some(pb::Timespec { sec: 22, nsec: 5 }));
    assert_eq!(a.ctime, Some(h.now().into()));
    // bob is in the group with write permission: "now" is allowed, explicit times are not.
    assert_eq!(set(&mut h, &bob, ts(false, 1), None), Err(Errno::EPERM));
    let b = set(&mut h, &bob, ts(true, 0), ts(true, 0)).unwrap();
    assert_eq!(
        (b.atime, b.mtime),
        (Some(h.now().into()), Some(h.now().into()))
    );
    h.chmod_as(&root(), f, 0o644).unwrap();
    assert_eq!(set(&mut h, &bob, None, ts(true, 0)), Err(Errno::EACCES));
    assert!(set(&mut h, &root(), ts(false, 3), ts(true, 0)).is_ok());
    // A request with nothing in it changes nothing and journals nothing.
    let n = h.log.len();
    let x = set(&mut h, &bob, None, None).unwrap();
    assert_eq!(x, h.getattr(f));
    assert_eq!(h.log.len(), n);
}

#[test]
fn truncate_drops_chunks_past_the_end() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    let c0 = h.write(f, 0, CHUNK);
    let c1 = h.write(f, 1, 2 * CHUNK);
    let c2 = h.write(f, 2, 2 * CHUNK + 100);
    assert_eq!(h.getattr(f).blocks, (2 * CHUNK + 512) / 512);
    assert_eq!(h.ns.counts().bytes, 2 * CHUNK + 100);
    let a = h.truncate_as(&root(), f, CHUNK + 1).unwrap();
    assert_eq!(a.size, CHUNK + 1);
    assert_eq!(
        (a.mtime, a.ctime),
        (Some(h.now().into()), Some(h.now().into()))
    );
    assert_eq!(h.freed, vec![c2]);
    let (size, list) = h.ns.file_chunks(f, 0, 3).unwrap();
    assert_eq!(size, CHUNK + 1);
    assert_eq!(list, vec![(0, c0, 1), (1, c1, 1), (2, 0, 0)]);
    assert_eq!(h.ns.chunk_owner(c2), None);
    // Exactly on a boundary: the chunk starting there goes.
    h.truncate_as(&root(), f, CHUNK).unwrap();
    assert_eq!(h.freed, vec![c2, c1]);
    // Growing makes a hole.
    h.truncate_as(&root(), f, 10 * CHUNK).unwrap();
    assert_eq!(h.getattr(f).size, 10 * CHUNK);
    assert_eq!(h.getattr(f).blocks, CHUNK / 512);
    assert_eq!(h.ns.counts().bytes, 10 * CHUNK);
    h.truncate_as(&root(), f, 0).unwrap();
    assert_eq!(h.freed, vec![c2, c1, c0]);
    assert_eq!(h.ns.counts().chunks, 0);
    assert_eq!(h.getattr(f).blocks, 0);
}

#[test]
fn truncate_errors_and_privs() {
    let mut h = Harness::new();
    let alice = user(1000, 100);
    let f = h.create(1, "f");
    let d = h.mkdir(1, "d");
    h.op(
        &root(),
        Op::Mknod(pb::MknodReq {
            parent: 1,
            name: "p".into(),
            mode: libc::S_IFIFO | 0o666,
            rdev: 0,
            umask: 0,
        }),
    )
    .unwrap();
    let p = h.lookup(1, "p").unwrap().ino;
    assert_eq!(h.truncate_as(&root(), d, 0), Err(Errno::EISDIR));
    assert_eq!(h.truncate_as(&root(), p, 0), Err(Errno::EINVAL));
    assert_eq!(
        h.truncate_as(&root(), f, MAX_FILE_SIZE + 1),
        Err(Errno::EFBIG)
    );
    assert_eq!(h.truncate_as(&alice, f, 0), Err(Errno::EACCES));
    h.chmod_as(&root(), f, 0o6777).unwrap();
    // A non-root truncate clears setuid and (group-exec) setgid, root's doesn't.
    assert_eq!(h.truncate_as(&root(), f, 5).unwrap().mode, 0o6777);
    assert_eq!(h.truncate_as(&alice, f, 5).unwrap().mode, 0o777);
}

#[test]
fn open_checks_and_truncates() {
    let mut h = Harness::new();
    let alice = user(1000, 100);
    let f = h.create(1, "f");
    h.write(f, 0, 100);
    h.chmod_as(&root(), f, 0o604).unwrap();
    let d = h.mkdir(1, "d");
    let n = h.log.len();
    assert_eq!(
        attr(h.open_as(&alice, f, libc::O_RDONLY).unwrap()).size,
        100
    );
    assert_eq!(h.log.len(), n, "plain open journals nothing");
    assert_eq!(h.open_as(&alice, f, libc::O_WRONLY), Err(Errno::EACCES));
    assert_eq!(h.open_as(&alice, f, libc::O_RDWR), Err(Errno::EACCES));
    assert_eq!(
        h.open_as(&alice, f, libc::O_RDONLY | libc::O_TRUNC),
        Err(Errno::EACCES)
    );
    assert_eq!(h.open_as(&root(), d, libc::O_WRONLY), Err(Errno::EISDIR));
    assert_eq!(
        h.open_as(&root(), d, libc::O_RDONLY | libc::O_TRUNC),
        Err(Errno::EISDIR)
    );
    assert!(h
        .open_as(&root(), d, libc::O_RDONLY | libc::O_DIRECTORY)
        .is_ok());
    assert_eq!(
        h.open_as(&root(), f, libc::O_RDONLY | libc::O_DIRECTORY),
        Err(Errno::ENOTDIR)
    );
    assert_eq!(h.open_as(&root(), 999, libc::O_RDONLY), Err(Errno::ENOENT));
    h.chmod_as(&root(), d, 0o700).unwrap();
    assert_eq!(h.open_as(&alice, d, libc::O_RDONLY), Err(Errno::EACCES));
    // O_TRUNC truncates (and stamps times) through a record.
    let a = attr(
        h.open_as(&root(), f, libc::O_WRONLY | libc::O_TRUNC)
            .unwrap(),
    );
    assert_eq!((a.size, a.mtime), (0, Some(h.now().into())));
    assert_eq!(h.freed.len(), 1);
    assert!(matches!(
        h.log.last(),
        Some(Record::SetAttr { size: Some(0), .. })
    ));
}

#[test]
fn times_follow_changes() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    let created = h.now();
    let set = |h: &mut Harness, name: &str| {
        h.op(
            &root(),
            Op::Setxattr(pb::SetXattrReq {
                ino: f,
                name: name.into(),
                value: b"v".to_vec(),
                flags: 0,
            }),
        )
        .unwrap();
    };
    set(&mut h, "user.a");
    let a = h.getattr(f);
    assert_eq!(a.ctime, Some(h.now().into()));
    assert_eq!(a.mtime, Some(created.into()));
    assert_eq!(a.crtime, Some(created.into()));
    h.write(f, 0, 10);
    let a = h.getattr(f);
    assert_eq!(
        (a.mtime, a.ctime, a.atime),
        (
            Some(h.now().into()),
            Some(h.now().into()),
            Some(created.into())
        )
    );
}
