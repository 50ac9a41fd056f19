//! unlink, rmdir, orphans and purging.

use super::*;

#[test]
fn unlink_and_rmdir_errors() {
    let mut h = Harness::new();
    let d = h.mkdir(1, "d");
    let f = h.create(1, "f");
    h.create(d, "inner");
    assert_eq!(h.unlink_as(&root(), 1, "d"), Err(Errno::EISDIR));
    assert_eq!(h.rmdir_as(&root(), 1, "f"), Err(Errno::ENOTDIR));
    assert_eq!(h.rmdir_as(&root(), 1, "d"), Err(Errno::ENOTEMPTY));
    assert_eq!(h.unlink_as(&root(), 1, "nope"), Err(Errno::ENOENT));
    assert_eq!(h.rmdir_as(&root(), 1, "nope"), Err(Errno::ENOENT));
    assert_eq!(h.rmdir_as(&root(), d, "."), Err(Errno::EINVAL));
    assert_eq!(h.rmdir_as(&root(), d, ".."), Err(Errno::ENOTEMPTY));
    assert_eq!(h.unlink_as(&root(), d, "."), Err(Errno::EISDIR));
    assert_eq!(h.unlink_as(&root(), f, "x"), Err(Errno::ENOTDIR));
    assert_eq!(h.unlink_as(&root(), 999, "x"), Err(Errno::ENOENT));
    assert_eq!(
        h.unlink_as(&root(), 1, &"y".repeat(300)),
        Err(Errno::ENAMETOOLONG)
    );
    h.unlink_as(&root(), d, "inner").unwrap();
    h.rmdir_as(&root(), 1, "d").unwrap();
    assert_eq!(h.lookup(1, "d"), Err(Errno::ENOENT));
    assert_eq!(h.ns.getattr(d), Err(Errno::ENOENT));
    assert_eq!(h.getattr(1).nlink, 2);
}

#[test]
fn unlink_times_and_links() {
    let mut h = Harness::new();
    let d = h.mkdir(1, "d");
    let f = h.create(d, "f");
    h.link_as(&root(), f, 1, "g").unwrap();
    h.unlink_as(&root(), d, "f").unwrap();
    let now = Some(h.now().into());
    let a = h.getattr(f);
    assert_eq!((a.nlink, a.ctime), (1, now));
    let p = h.getattr(d);
    assert_eq!((p.mtime, p.ctime), (now, now));
    assert_eq!(h.ns.path_of(f), "/g");
    h.unlink_as(&root(), 1, "g").unwrap();
    assert_eq!(h.ns.getattr(f), Err(Errno::ENOENT));
}

#[test]
fn rmdir_link_counts() {
    let mut h = Harness::new();
    let a = h.mkdir(1, "a");
    h.mkdir(a, "b");
    h.mkdir(a, "c");
    assert_eq!(h.getattr(a).nlink, 4);
    assert_eq!(h.getattr(1).nlink, 3);
    h.rmdir_as(&root(), a, "b").unwrap();
    assert_eq!(h.getattr(a).nlink, 3);
    h.rmdir_as(&root(), a, "c").unwrap();
    assert_eq!(h.getattr(a).nlink, 2);
    h.rmdir_as(&root(), 1, "a").unwrap();
    assert_eq!(h.getattr(1).nlink, 2);
    assert_eq!(h.ns.counts().directories, 1);
}

#[test]
fn permissions_and_sticky() {
    let mut h = Harness::new();
    let alice = user(1000, 100);
    let bob = user(1001, 100);
    let tmp = h.mkdir(1, "tmp");
    h.chmod_as(&root(), tmp, 0o1777).unwrap();
    h.create_as(&alice, tmp, "a", 0o644).unwrap();
    h.create_as(&alice, tmp, "a2", 0o644).unwrap();
    h.mkdir_as(&alice, tmp, "ad", 0o777).unwrap();
    h.create_as(&bob, tmp, "b", 0o666).unwrap();
    // bob may not remove alice's entries in a sticky dir, even with write permission.
    assert_eq!(h.unlink_as(&bob, tmp, "a"), Err(Errno::EPERM));
    assert_eq!(h.rmdir_as(&bob, tmp, "ad"), Err(Errno::EPERM));
    assert_eq!(h.rename_as(&bob, tmp, "a", tmp, "x", 0), Err(Errno::EPERM));
    assert_eq!(h.rename_as(&bob, tmp, "b", tmp, "a", 0), Err(Errno::EPERM));
    // ... but alice, root and the directory's owner may.
    h.unlink_as(&alice, tmp, "a").unwrap();
    h.unlink_as(&root(), tmp, "b").unwrap();
    h.chown_as(&root(), tmp, Some(1001), None).unwrap();
    h.unlink_as(&bob, tmp, "a2").unwrap();
    // Without the sticky bit, write permission on the directory is enough.
    h.chmod_as(&root(), tmp, 0o777).unwrap();
    h.rmdir_as(&alice, tmp, "ad").unwrap();
    // No write permission: EACCES (before the type check).
    let d = h.mkdir(1, "ro");
    h.create(d, "f");
    h.mkdir(d, "sub");
    assert_eq!(h.unlink_as(&alice, d, "f"), Err(Errno::EACCES));
    assert_eq!(h.unlink_as(&alice, d, "sub"), Err(Errno::EACCES));
    assert_eq!(h.rmdir_as(&alice, d, "sub"), Err(Errno::EACCES));
    assert_eq!(h.unlink_as(&alice, d, "missing"), Err(Errno::ENOENT));
    h.chmod_as(&root(), d, 0o700).unwrap();
    assert_eq!(h.unlink_as(&alice, d, "missing"), Err(Errno::EACCES));
}

#[test]
fn unlinked_open_file_is_kept_until_release() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    let c = h.write(f, 0, 10);
    h.ns.opened(f);
    h.ns.opened(f);
    h.unlink_as(&root(), 1, "f").unwrap();
    assert!(h.freed.is_empty());
    assert_eq!(h.getattr(f).nlink, 0);
    assert_eq!(h.ns.orphans(), vec![f]);
    assert_eq!(h.ns.path_of(f), format!("<ino {f}>"));
    assert_eq!(h.ns.purge_record(f), None, "still open");
    // Still readable and writable through the open file.
    assert_eq!(h.ns.file_chunks(f, 0, 1).unwrap(), (10, vec![(0, c, 1)]));
    h.write(f, 1, CHUNK + 5);
    assert_eq!(h.ns.released(f), None);
    let rec = h.ns.released(f).expect("last release purges");
    assert_eq!(rec, Record::Purge { ino: f });
    h.apply(rec);
    assert_eq!(h.ns.getattr(f), Err(Errno::ENOENT));
    let mut freed = h.freed.clone();
    freed.sort();
    assert_eq!(freed.len(), 2);
    assert!(freed.contains(&c));
    assert!(h.ns.orphans().is_empty());
    assert_eq!(h.ns.counts().chunks, 0);
    assert_eq!(h.ns.counts().bytes, 0);
}

#[test]
fn orphans_after_restart_are_purged_by_purge_record() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    h.write(f, 0, 10);
    h.ns.opened(f);
    h.unlink_as(&root(), 1, "f").unwrap();
    // "Restart": the state round-trips through postcard; open counts are gone.
    let bytes = postcard::to_allocvec(&h.ns).unwrap();
    let ns: Namespace = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(ns, h.ns);
    assert_eq!(ns.orphans(), vec![f]);
    h.ns = ns;
    let rec = h.ns.purge_record(f).unwrap();
    h.apply(rec);
    assert!(h.ns.orphans().is_empty());
    assert_eq!(h.freed.len(), 1);
    // Purge of a purged inode changes nothing.
    let a = h.ns.apply(&Record::Purge { ino: f });
    assert!(a.freed_chunks.is_empty());
    // A released inode that still has links is not purged.
    let g = h.create(1, "g");
    h.ns.opened(g);
    assert_eq!(h.ns.released(g), None);
    assert_eq!(h.ns.released(12345), None);
}

#[test]
fn lookups_in_a_removed_directory_fail() {
    let mut h = Harness::new();
    let d = h.mkdir(1, "d");
    h.ns.opened(d);
    h.rmdir_as(&root(), 1, "d").unwrap();
    assert_eq!(h.getattr(d).nlink, 0);
    assert_eq!(h.lookup(d, "x"), Err(Errno::ENOENT));
    assert_eq!(h.create_as(&root(), d, "x", 0o644), Err(Errno::ENOENT));
    assert_eq!(
        h.read(
            &root(),
            Op::Readdir(pb::ReadDirReq {
                ino: d,
                ..Default::default()
            })
        ),
        Err(Errno::ENOENT)
    );
    let rec = h.ns.released(d).unwrap();
    h.apply(rec);
    assert_eq!(h.ns.counts().directories, 1);
}
