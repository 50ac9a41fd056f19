//! Subtree containment for export rules: `resolve_dir` finds an export's
//! directory by path, `within` says whether an inode lies below it — a
//! directory by its parent chain, a file by any of its links, an unlinked
//! file by where it was — and follows renames.

use super::*;

#[test]
fn export_paths_resolve_to_directories_only() {
    let mut h = Harness::new();
    let a = h.mkdir(ROOT_INO, "a");
    let b = h.mkdir(a, "b");
    h.create(a, "f");
    assert_eq!(h.ns.resolve_dir("/"), Ok(ROOT_INO));
    assert_eq!(h.ns.resolve_dir("/a"), Ok(a));
    assert_eq!(h.ns.resolve_dir("/a/b"), Ok(b));
    assert_eq!(h.ns.resolve_dir("/a/f"), Err(Errno::ENOTDIR));
    assert_eq!(h.ns.resolve_dir("/a/nope"), Err(Errno::ENOENT));
    assert_eq!(h.ns.resolve_dir("/a/f/x"), Err(Errno::ENOTDIR));
}

#[test]
fn within_follows_parents_links_and_renames() {
    let mut h = Harness::new();
    let proj = h.mkdir(ROOT_INO, "proj");
    let sub = h.mkdir(proj, "sub");
    let sib = h.mkdir(ROOT_INO, "sibling");
    let f = h.create(sub, "f");
    let secret = h.create(sib, "secret");
    let everything = |h: &Harness, ino| h.ns.within(ROOT_INO, ino);
    assert!(everything(&h, secret) && everything(&h, f));
    assert!(h.ns.within(proj, proj), "the export's own directory");
    assert!(h.ns.within(proj, sub) && h.ns.within(proj, f));
    assert!(!h.ns.within(proj, sib) && !h.ns.within(proj, secret));
    assert!(
        !h.ns.within(proj, ROOT_INO),
        "the export's parent is outside"
    );
    assert!(!h.ns.within(sub, proj));
    assert!(!h.ns.within(proj, 9999), "an unknown inode");

    // A hard link inside makes the sibling's file reachable; removing the
    // inside link (the one remembered or not) takes that back.
    h.link_as(&root(), secret, sub, "secret-link").unwrap();
    assert!(h.ns.within(proj, secret));
    h.unlink_as(&root(), sub, "secret-link").unwrap();
    assert!(!h.ns.within(proj, secret));
    h.link_as(&root(), f, sib, "f-out").unwrap();
    h.unlink_as(&root(), sub, "f").unwrap();
    assert!(!h.ns.within(proj, f), "its only link is outside now");
    assert!(h.ns.within(sib, f));

    // Renames move whole subtrees in and out.
    h.rename(ROOT_INO, "sibling", proj, "moved-in").unwrap();
    assert!(h.ns.within(proj, sib) && h.ns.within(proj, secret));
    h.rename(proj, "sub", ROOT_INO, "moved-out").unwrap();
    assert!(!h.ns.within(proj, sub));
}

#[test]
fn an_unlinked_open_file_stays_where_it_was() {
    let mut h = Harness::new();
    let proj = h.mkdir(ROOT_INO, "proj");
    let sib = h.mkdir(ROOT_INO, "sibling");
    let f = h.create(proj, "f");
    let g = h.create(sib, "g");
    h.ns.opened(f);
    h.ns.opened(g);
    h.unlink_as(&root(), proj, "f").unwrap();
    h.unlink_as(&root(), sib, "g").unwrap();
    assert_eq!(h.ns.get(f).map(|i| i.nlink), Some(0));
    assert!(h.ns.within(proj, f));
    assert!(!h.ns.within(proj, g));
}
