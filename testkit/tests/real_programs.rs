//! Real programs on a mount, judged as on ext4: git (clone, commit, gc,
//! fsck), sqlite in WAL mode with two concurrent writers, a compiler building
//! and running a program from the mount, an editor-style atomic save, and
//! rsync -aHAX keeping hard links, xattrs, ACLs, modes and times.

use std::fs;
use std::os::unix::fs::MetadataExt;

use weft_testkit::{sh, TestCluster};

const MIB: u64 = 1 << 20;

const GIT: &str = "git -c user.name=weft -c user.email=weft@localhost -c init.defaultBranch=main";

#[test]
fn git_clone_commit_gc_fsck() {
    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();
    sh(
        &m,
        &format!(
            "{GIT} init -q src && cd src && for i in $(seq 1 50); do echo line $i > f$i; done \
             && mkdir -p d/e && seq 1 10000 > d/e/big && {GIT} add -A && {GIT} commit -qm one \
             && echo more >> f1 && {GIT} commit -qam two"
        ),
    );
    sh(
        &m,
        &format!(
            "{GIT} clone -q src clone && cd clone && echo three > new && {GIT} add new \
             && {GIT} commit -qm three && {GIT} gc -q --aggressive && {GIT} fsck --strict --no-progress \
             && {GIT} repack -adq && {GIT} fsck --strict --no-progress"
        ),
    );
    let log = sh(&m.join("clone"), &format!("{GIT} log --format=%s"));
    assert_eq!(log, "three\ntwo\none\n");
    assert_eq!(sh(&m.join("clone"), "cat f1"), "line 1\nmore\n");
}

#[test]
fn sqlite_wal_two_writers() {
    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();
    sh(
        &m,
        "sqlite3 db 'PRAGMA journal_mode=WAL;' 'CREATE TABLE t(w INTEGER, i INTEGER, v TEXT);' >/dev/null",
    );
    // Two writers at once, each 200 transactions; busy_timeout makes them wait
    // for each other's write lock (fcntl locks on the db and -shm).
    let writer = |w: u32| {
        format!(
            "(echo '.timeout 20000'; for i in $(seq 1 200); do \
             echo \"BEGIN IMMEDIATE; INSERT INTO t VALUES({w}, $i, hex(randomblob(100))); COMMIT;\"; done) \
             | sqlite3 db"
        )
    };
    sh(&m, &format!("{} & {} & wait", writer(1), writer(2)));
    let out = sh(
        &m,
        "sqlite3 db 'PRAGMA integrity_check;' 'SELECT w, count(*), count(DISTINCT i) FROM t GROUP BY w;' \
         'PRAGMA journal_mode;'",
    );
    assert_eq!(out, "ok\n1|200|200\n2|200|200\nwal\n");
}

#[test]
fn compiler_editor_save_and_rsync() {
    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();
    // Build and run a program from the mount.
    fs::write(
        m.join("hello.c"),
        "#include <stdio.h>\nint main(void){puts(\"hello from weft\");return 0;}\n",
    )
    .unwrap();
    sh(&m, "cc -O2 -o hello hello.c");
    assert_eq!(sh(&m, "./hello"), "hello from weft\n");

    // An editor's atomic save: write a temp file, fsync it, rename over.
    sh(
        &m,
        "echo v1 > doc && echo v2 > .doc.tmp && sync .doc.tmp && mv .doc.tmp doc && sync -f doc",
    );
    assert_eq!(fs::read(m.join("doc")).unwrap(), b"v2\n");

    // rsync -aHAX from a local tree and back: links, xattrs, ACLs, modes, times.
    let local = tc.tmp.path().join("local");
    fs::create_dir(&local).unwrap();
    sh(
        &local,
        "mkdir -p src/sub && echo a > src/a && ln src/a src/a-link && chmod 640 src/a \
         && echo b > src/sub/b && chmod 2755 src/sub && ln -s a src/sym \
         && setfattr -n user.color -v blue src/a && setfacl -m u:nobody:r src/sub/b \
         && touch -d '2001-02-03 04:05:06.789' src/sub/b src/a",
    );
    let (src, dst) = (local.join("src"), m.join("dst"));
    sh(
        &local,
        &format!("rsync -aHAX {}/ {}/", src.display(), dst.display()),
    );
    let a = fs::metadata(dst.join("a")).unwrap();
    assert_eq!(a.ino(), fs::metadata(dst.join("a-link")).unwrap().ino());
    assert_eq!(a.nlink(), 2);
    assert_eq!(a.mode() & 0o7777, 0o640);
    assert_eq!(a.mtime(), fs::metadata(src.join("a")).unwrap().mtime());
    assert_eq!(
        fs::metadata(dst.join("sub")).unwrap().mode() & 0o7777,
        0o2755
    );
    assert_eq!(sh(&m, "getfattr --only-values -n user.color dst/a"), "blue");
    assert!(sh(&m, "getfacl -cp dst/sub/b").contains("user:nobody:r--"));
    assert_eq!(fs::read_link(dst.join("sym")).unwrap().to_str(), Some("a"));
    // A second pass finds nothing to do, and a copy back is identical.
    let again = sh(
        &local,
        &format!("rsync -aHAXi {}/ {}/", src.display(), dst.display()),
    );
    assert_eq!(again, "", "rsync saw differences on the second pass");
    sh(
        &local,
        &format!("rsync -aHAX {}/ back/ && diff -r src back", dst.display()),
    );
}
