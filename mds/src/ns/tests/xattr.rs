//! Extended attributes.

use super::*;

fn set(
    h: &mut Harness,
    c: &Caller,
    ino: u64,
    name: &[u8],
    value: &[u8],
    flags: u32,
) -> Result<R, Errno> {
    h.op(
        c,
        Op::Setxattr(pb::SetXattrReq {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        }),
    )
}

fn get(h: &Harness, c: &Caller, ino: u64, name: &[u8]) -> Result<Vec<u8>, Errno> {
    match h.read(
        c,
        Op::Getxattr(pb::GetXattrReq {
            ino,
            name: name.to_vec(),
        }),
    )? {
        R::Data(d) => Ok(d),
        r => panic!("{r:?}"),
    }
}

fn list(h: &Harness, c: &Caller, ino: u64) -> Vec<Vec<u8>> {
    match h.read(c, Op::Listxattr(pb::ListXattrReq { ino })).unwrap() {
        R::Names(n) => n.names,
        r => panic!("{r:?}"),
    }
}

fn remove(h: &mut Harness, c: &Caller, ino: u64, name: &[u8]) -> Result<R, Errno> {
    h.op(
        c,
        Op::Removexattr(pb::RemoveXattrReq {
            ino,
            name: name.to_vec(),
        }),
    )
}

#[test]
fn set_get_list_remove() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    assert_eq!(
        set(&mut h, &root(), f, b"user.b", b"2", 0),
        Ok(R::Empty(pb::Empty {}))
    );
    set(&mut h, &root(), f, b"user.a", b"1", 0).unwrap();
    set(&mut h, &root(), f, b"security.selinux", b"ctx", 0).unwrap();
    set(&mut h, &root(), f, b"user.empty", b"", 0).unwrap();
    assert_eq!(get(&h, &root(), f, b"user.a"), Ok(b"1".to_vec()));
    assert_eq!(get(&h, &root(), f, b"user.empty"), Ok(vec![]));
    assert_eq!(get(&h, &root(), f, b"user.zzz"), Err(Errno::ENODATA));
    assert_eq!(
        list(&h, &root(), f),
        vec![
            b"security.selinux".to_vec(),
            b"user.a".to_vec(),
            b"user.b".to_vec(),
            b"user.empty".to_vec()
        ]
    );
    set(&mut h, &root(), f, b"user.a", b"one", 0).unwrap();
    assert_eq!(get(&h, &root(), f, b"user.a"), Ok(b"one".to_vec()));
    remove(&mut h, &root(), f, b"user.a").unwrap();
    assert_eq!(get(&h, &root(), f, b"user.a"), Err(Errno::ENODATA));
    assert_eq!(remove(&mut h, &root(), f, b"user.a"), Err(Errno::ENODATA));
    assert_eq!(get(&h, &root(), 999, b"user.a"), Err(Errno::ENOENT));
}

#[test]
fn flags_and_limits() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    assert_eq!(
        set(&mut h, &root(), f, b"user.a", b"1", 2),
        Err(Errno::ENODATA),
        "REPLACE of a missing one"
    );
    set(&mut h, &root(), f, b"user.a", b"1", 1).unwrap();
    assert_eq!(
        set(&mut h, &root(), f, b"user.a", b"2", 1),
        Err(Errno::EEXIST),
        "CREATE of an existing one"
    );
    set(&mut h, &root(), f, b"user.a", b"2", 2).unwrap();
    assert_eq!(get(&h, &root(), f, b"user.a"), Ok(b"2".to_vec()));
    assert_eq!(
        set(&mut h, &root(), f, b"user.a", b"2", 4),
        Err(Errno::EINVAL)
    );
    let long = [b'n'; 256];
    assert_eq!(set(&mut h, &root(), f, &long, b"", 0), Err(Errno::ERANGE));
    assert_eq!(get(&h, &root(), f, &long), Err(Errno::ERANGE));
    assert_eq!(set(&mut h, &root(), f, b"", b"", 0), Err(Errno::ERANGE));
    assert!(set(&mut h, &root(), f, &long[..255], b"", 0).is_ok());
    assert_eq!(
        set(&mut h, &root(), f, b"user.big", &vec![0; 65537], 0),
        Err(Errno::E2BIG)
    );
    for i in 0..15 {
        set(
            &mut h,
            &root(),
            f,
            format!("user.{i}").as_bytes(),
            &vec![1; 65536],
            0,
        )
        .unwrap();
    }
    assert_eq!(
        set(&mut h, &root(), f, b"user.16", &vec![1; 65536], 0),
        Err(Errno::ENOSPC)
    );
    // Replacing a value with one of the same size still fits.
    assert!(set(&mut h, &root(), f, b"user.0", &vec![2; 65536], 0).is_ok());
}

#[test]
fn namespaces_and_permissions() {
    let mut h = Harness::new();
    let alice = user(1000, 100);
    let bob = user(1001, 100);
    h.chmod_as(&root(), 1, 0o777).unwrap();
    let f = h.create_as(&alice, 1, "f", 0o644).unwrap();
    set(&mut h, &alice, f, b"user.a", b"1", 0).unwrap();
    assert_eq!(get(&h, &bob, f, b"user.a"), Ok(b"1".to_vec()));
    assert_eq!(set(&mut h, &bob, f, b"user.a", b"2", 0), Err(Errno::EACCES));
    assert_eq!(remove(&mut h, &bob, f, b"user.a"), Err(Errno::EACCES));
    h.chmod_as(&alice, f, 0o600).unwrap();
    assert_eq!(get(&h, &bob, f, b"user.a"), Err(Errno::EACCES));
    // trusted.* is root's.
    set(&mut h, &root(), f, b"trusted.t", b"x", 0).unwrap();
    assert_eq!(get(&h, &alice, f, b"trusted.t"), Err(Errno::ENODATA));
    assert_eq!(
        set(&mut h, &alice, f, b"trusted.u", b"x", 0),
        Err(Errno::EPERM)
    );
    assert_eq!(list(&h, &alice, f), vec![b"user.a".to_vec()]);
    assert_eq!(
        list(&h, &root(), f),
        vec![b"trusted.t".to_vec(), b"user.a".to_vec()]
    );
    // system.* (ACLs) by the owner only; security.* unchecked.
    assert_eq!(
        set(&mut h, &bob, f, b"system.posix_acl_access", b"x", 0),
        Err(Errno::EPERM)
    );
    // The owner may set one, but it must be a valid ACL (acl.rs).
    assert_eq!(
        set(&mut h, &alice, f, b"system.posix_acl_access", b"x", 0),
        Err(Errno::EINVAL)
    );
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(1u16, 6u16), (2, 6), (4, 4), (0x10, 6), (0x20, 4)] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        let id: u32 = if tag == 2 { 1234 } else { u32::MAX };
        acl.extend_from_slice(&id.to_le_bytes());
    }
    set(&mut h, &alice, f, b"system.posix_acl_access", &acl, 0).unwrap();
    set(&mut h, &bob, f, b"security.x", b"x", 0).unwrap();
    // user.* only on files and directories.
    let l = h
        .op(
            &alice,
            Op::Symlink(pb::SymlinkReq {
                parent: 1,
                name: "l".into(),
                target: "f".into(),
            }),
        )
        .map(attr)
        .unwrap()
        .ino;
    assert_eq!(
        set(&mut h, &alice, l, b"user.a", b"1", 0),
        Err(Errno::EPERM)
    );
    assert_eq!(get(&h, &alice, l, b"user.a"), Err(Errno::ENODATA));
    // A sticky directory's user.* by its owner only.
    let d = h.mkdir_as(&alice, 1, "d", 0o1777).unwrap();
    assert_eq!(set(&mut h, &bob, d, b"user.a", b"1", 0), Err(Errno::EPERM));
    set(&mut h, &alice, d, b"user.a", b"1", 0).unwrap();
}
