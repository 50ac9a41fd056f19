//! Behaviours xfstests checks that weft once got wrong, each through a real
//! mount of a real cluster (the xfstests case named in each test).

use std::fs::{self, File};
use std::os::fd::AsRawFd;

use weft_testkit::TestCluster;

const MIB: u64 = 1 << 20;

fn fstat(f: &File) -> Result<libc::stat, i32> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(f.as_raw_fd(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

/// generic/035: fstat of an open file or directory that a rename replaced
/// succeeds and shows nlink 0.
#[test]
fn fstat_after_rename_over_open_file_and_directory() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    fs::write(m.join("f1"), b"one").unwrap();
    fs::write(m.join("f2"), b"two").unwrap();
    let f = File::open(m.join("f2")).unwrap();
    fs::rename(m.join("f1"), m.join("f2")).unwrap();
    let st = fstat(&f).unwrap();
    assert_eq!(st.st_nlink, 0);
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);

    fs::create_dir(m.join("d1")).unwrap();
    fs::create_dir(m.join("d2")).unwrap();
    let d = File::open(m.join("d2")).unwrap();
    let ino = fstat(&d).unwrap().st_ino;
    fs::rename(m.join("d1"), m.join("d2")).unwrap();
    let st = fstat(&d).expect("fstat of a directory replaced by rename");
    assert_eq!(st.st_nlink, 0);
    assert_eq!(st.st_ino, ino);
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);

    // Same after rmdir.
    fs::create_dir(m.join("d3")).unwrap();
    let d3 = File::open(m.join("d3")).unwrap();
    fs::remove_dir(m.join("d3")).unwrap();
    assert_eq!(
        fstat(&d3).expect("fstat of a removed directory").st_nlink,
        0
    );
}

/// generic/736: a program that renames each entry it lists (away and back)
/// sees every entry once and the listing ends; before, each rename gave the
/// entry a fresh readdir cookie, so it came round again after every page.
#[test]
fn readdir_while_renaming_each_entry_lists_each_once() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    const N: usize = 1500;
    for i in 0..N {
        File::create(d.join(i.to_string())).unwrap();
    }
    let mut seen = std::collections::HashMap::<String, usize>::new();
    for e in fs::read_dir(&d).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        *seen.entry(name.clone()).or_default() += 1;
        assert!(seen.len() <= N, "listing does not end");
        fs::rename(d.join(&name), d.join("TEMPFILE")).unwrap();
        fs::rename(d.join("TEMPFILE"), d.join(&name)).unwrap();
    }
    let twice: Vec<_> = seen.iter().filter(|(_, &c)| c > 1).take(5).collect();
    assert!(twice.is_empty(), "listed more than once: {twice:?}");
    assert_eq!(seen.len(), N);
}
