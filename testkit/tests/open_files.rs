//! Open files outliving their names: fstat after a rename replaced
//! them, a file unlinked while open, a directory listed while its entries are
//! renamed, and O_TMPFILE's refusal.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;
use weft_testkit::{bytes_under, fstat, open_rw, pattern, wait_until, TestCluster};

const MIB: u64 = 1 << 20;

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

#[test]
fn unlinked_while_open_lives_until_last_close() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let p = m.join("f");
    let data = pattern((2 * MIB) as usize, 9);
    fs::write(&p, &data).unwrap();
    let chunks_dir = tc.tmp.path().join("cluster");
    wait_until("chunks on disk", Duration::from_secs(10), || {
        bytes_under(&chunks_dir, ".chunk") >= 2 * MIB
    });
    let mut f = open_rw(&p);
    fs::remove_file(&p).unwrap();
    assert!(fs::metadata(&p).is_err());
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    // Still readable and writable through the handle.
    f.seek(SeekFrom::Start(MIB)).unwrap();
    f.write_all(b"after unlink").unwrap();
    f.sync_all().unwrap();
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    let mut want = data.clone();
    want[MIB as usize..MIB as usize + 12].copy_from_slice(b"after unlink");
    assert_eq!(back, want);
    drop(f);
    // Last close: the chunks are freed on the daemons.
    wait_until(
        "chunks freed after the last close",
        Duration::from_secs(20),
        || bytes_under(&chunks_dir, ".chunk") < MIB / 2,
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

/// O_TMPFILE: the kernel sends FUSE_TMPFILE, which fuser 0.18 does not
/// dispatch (it answers ENOSYS), so the kernel refuses O_TMPFILE on the mount
/// with EOPNOTSUPP, as on any file system without it; callers (glibc's
/// tmpfile, systemd, ...) then fall back to a named file. Nothing is created.
#[test]
fn o_tmpfile_is_refused_with_eopnotsupp() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let dir = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).unwrap();
    let fd = unsafe { libc::open(dir.as_ptr(), libc::O_TMPFILE | libc::O_RDWR, 0o600) };
    let err = std::io::Error::last_os_error().raw_os_error();
    assert_eq!((fd, err), (-1, Some(libc::EOPNOTSUPP)));
    assert_eq!(fs::read_dir(&m).unwrap().count(), 0);
}
