//! readdir paging and cookie stability; lookup of "." and "..".

use super::*;

fn page(h: &Harness, dir: u64, offset: u64, limit: u32, plus: bool) -> pb::DirEntries {
    match h
        .read(
            &root(),
            Op::Readdir(pb::ReadDirReq {
                ino: dir,
                offset,
                limit,
                plus,
            }),
        )
        .unwrap()
    {
        R::Entries(e) => e,
        r => panic!("{r:?}"),
    }
}

fn names(e: &pb::DirEntries) -> Vec<String> {
    e.entries
        .iter()
        .map(|e| String::from_utf8(e.name.clone()).unwrap())
        .collect()
}

#[test]
fn dot_entries_and_cookies() {
    let mut h = Harness::new();
    let d = h.mkdir(1, "d");
    let f = h.create(d, "f");
    let s = h.mkdir(d, "s");
    let e = page(&h, d, 0, 0, false);
    assert!(e.eof);
    assert_eq!(names(&e), [".", "..", "f", "s"]);
    let cookies: Vec<u64> = e.entries.iter().map(|e| e.cookie).collect();
    assert_eq!(cookies, [1, 2, 3, 4]);
    let inos: Vec<u64> = e.entries.iter().map(|e| e.ino).collect();
    assert_eq!(inos, [d, 1, f, s]);
    let kinds: Vec<i32> = e.entries.iter().map(|e| e.kind).collect();
    let (dk, fk) = (pb::FileKind::Directory as i32, pb::FileKind::Regular as i32);
    assert_eq!(kinds, [dk, dk, fk, dk]);
    assert!(e.entries.iter().all(|e| e.attr.is_none()));
    let p = page(&h, d, 0, 0, true);
    assert_eq!(p.entries[0].attr.unwrap().ino, d);
    assert_eq!(p.entries[1].attr.unwrap().ino, 1);
    assert_eq!(p.entries[2].attr.unwrap(), h.getattr(f));
    // Offsets skip the dot entries.
    assert_eq!(names(&page(&h, d, 1, 0, false)), ["..", "f", "s"]);
    assert_eq!(names(&page(&h, d, 2, 0, false)), ["f", "s"]);
    let end = page(&h, d, 4, 0, false);
    assert!(end.eof && end.entries.is_empty());
    assert!(page(&h, d, 1000, 0, false).eof);
}

#[test]
fn paging_with_limits() {
    let mut h = Harness::new();
    let d = h.mkdir(1, "d");
    for i in 0..10 {
        h.create(d, &format!("f{i}"));
    }
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let e = page(&h, d, offset, 3, false);
        assert!(e.entries.len() <= 3);
        seen.extend(names(&e));
        if e.eof {
            break;
        }
        offset = e.entries.last().unwrap().cookie;
    }
    assert_eq!(seen.len(), 12);
    assert_eq!(seen[..3], [".", "..", "f0"]);
    // limit 1 before the dot entries is not eof.
    let e = page(&h, d, 0, 1, false);
    assert_eq!((names(&e), e.eof), (vec![".".to_string()], false));
    // A page that ends exactly at the last entry says eof.
    let e = page(&h, d, 2, 10, false);
    assert!(e.eof && e.entries.len() == 10);
    // Default limit is 1024.
    let big = h.mkdir(1, "big");
    for i in 0..1100 {
        h.create(big, &format!("{i}"));
    }
    let e = page(&h, big, 0, 0, false);
    assert_eq!((e.entries.len(), e.eof), (1024, false));
}

#[test]
fn cookies_are_stable_while_entries_come_and_go() {
    let mut h = Harness::new();
    let d = h.mkdir(1, "d");
    for i in 0..6 {
        h.create(d, &format!("f{i}"));
    }
    let first = page(&h, d, 0, 4, false); // . .. f0 f1
    assert_eq!(names(&first), [".", "..", "f0", "f1"]);
    let offset = first.entries.last().unwrap().cookie;
    // Between pages: remove a seen and an unseen entry, rename one, add one.
    h.unlink_as(&root(), d, "f0").unwrap();
    h.unlink_as(&root(), d, "f3").unwrap();
    h.rename(d, "f4", d, "renamed").unwrap();
    h.create(d, "new");
    let rest = page(&h, d, offset, 0, false);
    // Unaffected entries keep their cookies: nothing seen twice, nothing
    // surviving skipped; a rename within the directory keeps the cookie too.
    assert_eq!(names(&rest), ["f2", "renamed", "f5", "new"]);
    let all = page(&h, d, 0, 0, false);
    let cookie_of = |n: &str| {
        all.entries
            .iter()
            .find(|e| e.name == n.as_bytes())
            .unwrap()
            .cookie
    };
    assert_eq!(
        (cookie_of("f1"), cookie_of("f2"), cookie_of("f5")),
        (4, 5, 8)
    );
    assert_eq!(cookie_of("renamed"), 7);
    assert!(cookie_of("new") > 8);
    // Renamed away and back (generic/736's loop): still the same cookie, once.
    h.rename(d, "renamed", d, "TEMP").unwrap();
    h.rename(d, "TEMP", d, "renamed").unwrap();
    let again = page(&h, d, 0, 0, false);
    assert_eq!(
        names(&again),
        [".", "..", "f1", "f2", "renamed", "f5", "new"]
    );
    // Over an existing name: the moved entry's cookie, the target's is gone.
    h.rename(d, "f1", d, "f5").unwrap();
    let over = page(&h, d, 0, 0, false);
    assert_eq!(names(&over), [".", "..", "f5", "f2", "renamed", "new"]);
    assert_eq!(over.entries[2].cookie, 4);
    // Cookies are never reused.
    h.create(d, "f0");
    assert!(cookie_of("new") < page(&h, d, 0, 0, false).entries.last().unwrap().cookie);
}

#[test]
fn readdir_errors() {
    let mut h = Harness::new();
    let f = h.create(1, "f");
    let alice = user(1000, 100);
    let d = h.mkdir_as(&root(), 1, "d", 0o711).unwrap();
    let r = |c: &Caller, ino| {
        h.read(
            c,
            Op::Readdir(pb::ReadDirReq {
                ino,
                ..Default::default()
            }),
        )
    };
    assert_eq!(r(&root(), f), Err(Errno::ENOTDIR));
    assert_eq!(r(&root(), 999), Err(Errno::ENOENT));
    assert_eq!(r(&alice, d), Err(Errno::EACCES));
    assert!(r(&root(), d).is_ok());
    // Search without read still allows lookups.
    assert_eq!(h.lookup_as(&alice, d, "x"), Err(Errno::ENOENT));
}
