//! rename and renameat2 flags.

use super::*;
const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

#[test]
fn rename_file_within_and_across_dirs() {
    let mut h = Harness::new();
    let a = h.mkdir(1, "a");
    let b = h.mkdir(1, "b");
    let f = h.create(a, "f");
    h.rename(a, "f", a, "g").unwrap();
    assert_eq!(h.lookup(a, "f"), Err(Errno::ENOENT));
    assert_eq!(h.lookup(a, "g").unwrap().ino, f);
    h.rename(a, "g", b, "h").unwrap();
    let now = Some(h.now().into());
    assert_eq!(h.lookup(b, "h").unwrap().ino, f);
    assert!(h.names(a).len() == 2);
    assert_eq!(h.getattr(f).ctime, now);
    for d in [a, b] {
        let x = h.getattr(d);
        assert_eq!((x.mtime, x.ctime, x.nlink), (now, now, 2));
    }
    assert_eq!(h.ns.path_of(f), "/b/h");
}

#[test]
fn rename_dir_across_dirs_fixes_link_counts() {
    let mut h = Harness::new();
    let a = h.mkdir(1, "a");
    let b = h.mkdir(1, "b");
    let d = h.mkdir(a, "d");
    h.mkdir(d, "inner");
    assert_eq!((h.getattr(a).nlink, h.getattr(b).nlink), (3, 2));
    h.rename(a, "d", b, "d2").unwrap();
    assert_eq!(
        (h.getattr(a).nlink, h.getattr(b).nlink, h.getattr(d).nlink),
        (2, 3, 3)
    );
    assert_eq!(h.lookup(d, "..").unwrap().ino, b);
    assert_eq!(h.ns.path_of(d), "/b/d2");
    // Over an empty directory in another parent: that one goes.
    let e = h.mkdir(a, "e");
    h.rename(b, "d2", a, "e").unwrap();
    assert_eq!(h.ns.getattr(e), Err(Errno::ENOENT));
    assert_eq!((h.getattr(a).nlink, h.getattr(b).nlink), (3, 2));
    assert_eq!(h.lookup(a, "e").unwrap().ino, d);
    // Over an empty directory in the same parent.
    h.mkdir(a, "f");
    assert_eq!(h.getattr(a).nlink, 4);
    h.rename(a, "e", a, "f").unwrap();
    assert_eq!(h.getattr(a).nlink, 3);
    assert_eq!(h.ns.counts().directories, 5);
}

#[test]
fn rename_errors() {
    let mut h = Harness::new();
    let a = h.mkdir(1, "a");
    let b = h.mkdir(a, "b");
    let c = h.mkdir(b, "c");
    h.create(1, "f");
    h.create(c, "x");
    let full = h.mkdir(1, "full");
    h.create(full, "y");
    h.mkdir(1, "empty");
    assert_eq!(h.rename(1, "nope", 1, "z"), Err(Errno::ENOENT));
    assert_eq!(
        h.rename(1, "a", b, "a"),
        Err(Errno::EINVAL),
        "into own subtree"
    );
    assert_eq!(h.rename(1, "a", a, "a"), Err(Errno::EINVAL), "into itself");
    assert_eq!(
        h.rename(b, "c", 1, "a"),
        Err(Errno::ENOTEMPTY),
        "over an ancestor"
    );
    assert_eq!(h.rename(1, "f", 1, "empty"), Err(Errno::EISDIR));
    assert_eq!(h.rename(1, "empty", 1, "f"), Err(Errno::ENOTDIR));
    assert_eq!(h.rename(1, "empty", 1, "full"), Err(Errno::ENOTEMPTY));
    assert_eq!(h.rename(1, "f", 1, "."), Err(Errno(libc::EBUSY)));
    assert_eq!(h.rename(1, "..", 1, "x"), Err(Errno(libc::EBUSY)));
    assert_eq!(h.rename(1, "f", 999, "x"), Err(Errno::ENOENT));
    assert_eq!(h.rename(1, "f", c, "x/y"), Err(Errno::EINVAL));
    let fino = h.lookup(1, "f").unwrap().ino;
    assert_eq!(h.rename(1, "f", fino, "x"), Err(Errno::ENOTDIR));
    assert_eq!(h.rename_as(&root(), 1, "f", 1, "g", 8), Err(Errno::EINVAL));
    assert_eq!(
        h.rename_as(&root(), 1, "f", 1, "g", RENAME_EXCHANGE | RENAME_NOREPLACE),
        Err(Errno::EINVAL)
    );
    // Nothing changed.
    assert_eq!(h.names(1), [".", "..", "a", "f", "full", "empty"]);
}

#[test]
fn rename_over_file_frees_it() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    let g = h.create(1, "g");
    let chunk = h.write(g, 0, 10);
    h.rename(1, "f", 1, "g").unwrap();
    assert_eq!(h.lookup(1, "g").unwrap().ino, f);
    assert_eq!(h.ns.getattr(g), Err(Errno::ENOENT));
    assert_eq!(h.freed, vec![chunk]);
    // An open target is kept as an orphan.
    let k = h.create(1, "k");
    h.ns.opened(k);
    h.rename(1, "g", 1, "k").unwrap();
    assert_eq!(h.getattr(k).nlink, 0);
    assert_eq!(h.ns.orphans(), vec![k]);
    // A hard-linked target just loses a link.
    let m = h.create(1, "m");
    h.link_as(&root(), m, 1, "m2").unwrap();
    h.rename(1, "k", 1, "m").unwrap();
    assert_eq!(h.getattr(m).nlink, 1);
    assert_eq!(h.ns.path_of(m), "/m2");
}

#[test]
fn rename_same_inode_does_nothing() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    h.link_as(&root(), f, 1, "g").unwrap();
    let n = h.log.len();
    h.rename(1, "f", 1, "g").unwrap();
    h.rename(1, "f", 1, "f").unwrap();
    h.rename_as(&root(), 1, "f", 1, "g", RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(h.log.len(), n, "no records");
    assert_eq!(h.getattr(f).nlink, 2);
    assert_eq!(h.names(1), [".", "..", "f", "g"]);
    // Even for a caller without write permission (Linux checks sameness first).
    let alice = user(1000, 100);
    h.rename_as(&alice, 1, "f", 1, "g", 0).unwrap();
}

#[test]
fn noreplace_and_exchange() {
    let mut h = Harness::new();
    let a = h.mkdir(1, "a");
    let b = h.mkdir(1, "b");
    let f = h.create(a, "f");
    let d = h.mkdir(b, "d");
    h.mkdir(d, "dd");
    assert_eq!(
        h.rename_as(&root(), a, "f", b, "d", RENAME_NOREPLACE),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        h.rename_as(&root(), a, "f", b, ".", RENAME_NOREPLACE),
        Err(Errno::EEXIST)
    );
    h.rename_as(&root(), a, "f", b, "f2", RENAME_NOREPLACE)
        .unwrap();
    assert_eq!(
        h.rename_as(&root(), b, "f2", a, "none", RENAME_EXCHANGE),
        Err(Errno::ENOENT)
    );
    h.rename(b, "f2", a, "f").unwrap();
    // Exchange a file and a non-empty directory across parents.
    let cookies = |h: &Harness, dir: u64| {
        h.ns.inodes[&dir]
            .dir()
            .unwrap()
            .iter()
            .map(|(n, e)| (n.to_vec(), e.cookie))
            .collect::<Vec<_>>()
    };
    let (ca, cb) = (cookies(&h, a), cookies(&h, b));
    h.rename_as(&root(), a, "f", b, "d", RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(h.lookup(a, "f").unwrap().ino, d);
    assert_eq!(h.lookup(b, "d").unwrap().ino, f);
    assert_eq!(h.lookup(d, "..").unwrap().ino, a);
    assert_eq!((h.getattr(a).nlink, h.getattr(b).nlink), (3, 2));
    assert_eq!(
        (cookies(&h, a), cookies(&h, b)),
        (ca, cb),
        "exchange keeps cookies"
    );
    let now = Some(h.now().into());
    assert_eq!((h.getattr(f).ctime, h.getattr(d).ctime), (now, now));
    assert_eq!(
        (h.ns.path_of(d), h.ns.path_of(f)),
        ("/a/f".to_string(), "/b/d".to_string())
    );
    // Exchange a directory with its own ancestor: EINVAL.
    let dd = h.lookup(d, "dd").unwrap().ino;
    h.create(dd, "leaf");
    assert_eq!(
        h.rename_as(&root(), dd, "leaf", 1, "a", RENAME_EXCHANGE),
        Err(Errno::EINVAL)
    );
    assert_eq!(
        h.rename_as(&root(), 1, "a", dd, "leaf", RENAME_EXCHANGE),
        Err(Errno::EINVAL)
    );
    // Exchange two directories in one parent.
    h.rename_as(&root(), 1, "a", 1, "b", RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(h.lookup(1, "a").unwrap().ino, b);
    assert_eq!(h.getattr(1).nlink, 4);
}

#[test]
fn rename_permissions() {
    let mut h = Harness::new();
    let alice = user(1000, 100);
    let mine = h.mkdir_as(&root(), 1, "mine", 0o777).unwrap();
    h.chown_as(&root(), mine, Some(1000), Some(100)).unwrap();
    let theirs = h.mkdir(1, "theirs"); // 0755 root
    h.mkdir_as(&alice, mine, "sub", 0o755).unwrap();
    h.create_as(&alice, mine, "f", 0o644).unwrap();
    assert_eq!(
        h.rename_as(&alice, mine, "f", theirs, "f", 0),
        Err(Errno::EACCES)
    );
    h.create(theirs, "t");
    assert_eq!(
        h.rename_as(&alice, theirs, "t", mine, "t", 0),
        Err(Errno::EACCES)
    );
    // Moving a directory to another parent needs write permission on it (its "..").
    let other = h.mkdir_as(&root(), 1, "other", 0o777).unwrap();
    let sub = h.lookup(mine, "sub").unwrap().ino;
    h.chmod_as(&alice, sub, 0o555).unwrap();
    assert_eq!(
        h.rename_as(&alice, mine, "sub", other, "sub", 0),
        Err(Errno::EACCES)
    );
    h.rename_as(&alice, mine, "sub", mine, "sub2", 0).unwrap();
    h.chmod_as(&alice, sub, 0o755).unwrap();
    h.rename_as(&alice, mine, "sub2", other, "sub", 0).unwrap();
    assert_eq!(h.lookup(sub, "..").unwrap().ino, other);
}

#[test]
fn whiteout_leaves_a_device_at_the_source_name() {
    const RENAME_WHITEOUT: u32 = 4;
    let mut h = Harness::new();
    let a = h.mkdir(1, "a");
    let f = h.create(a, "f");
    h.create(1, "t");
    h.rename_as(&root(), a, "f", 1, "t", RENAME_WHITEOUT)
        .unwrap();
    assert_eq!(h.lookup(1, "t").unwrap().ino, f);
    let w = h.lookup(a, "f").unwrap();
    assert_ne!(w.ino, f);
    assert_eq!(w.kind, pb::FileKind::CharDevice as i32);
    assert_eq!((w.rdev, w.mode & 0o7777, w.uid), (0, 0, 0));
    assert_eq!(h.names(a), [".", "..", "f"]);
    // One record, that survives the WAL's encoding.
    let rec = h.log.last().unwrap().clone();
    assert!(matches!(rec, Record::RenameWhiteout { .. }));
    let bytes = postcard::to_allocvec(&rec).unwrap();
    assert_eq!(postcard::from_bytes::<Record>(&bytes).unwrap(), rec);

    // Only with NOREPLACE, never EXCHANGE; a whiteout is mknod (root only).
    h.create(a, "g");
    assert_eq!(
        h.rename_as(&root(), a, "g", 1, "t", RENAME_WHITEOUT | RENAME_NOREPLACE),
        Err(Errno::EEXIST)
    );
    assert_eq!(
        h.rename_as(&root(), a, "g", 1, "t", RENAME_WHITEOUT | RENAME_EXCHANGE),
        Err(Errno::EINVAL)
    );
    h.ns.inodes.get_mut(&a).unwrap().mode = 0o777;
    assert_eq!(
        h.rename_as(&user(1000, 1000), a, "g", a, "h", RENAME_WHITEOUT),
        Err(Errno::EPERM)
    );
    assert_eq!(h.names(a), [".", "..", "f", "g"]);
}
