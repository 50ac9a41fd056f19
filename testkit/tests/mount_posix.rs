//! The namespace through a real mount: each result and errno as ext4 gives it.

use std::ffi::CString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use weft_testkit::TestCluster;

const MIB: u64 = 1 << 20;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    r.err()
        .and_then(|e| e.raw_os_error())
        .expect("expected an error")
}

fn rename2(a: &Path, b: &Path, flags: u32) -> i32 {
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(a).as_ptr(),
            libc::AT_FDCWD,
            c(b).as_ptr(),
            flags,
        )
    };
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap()
    }
}

#[test]
fn namespace_operations_and_errnos() {
    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();

    fs::create_dir(m.join("a")).unwrap();
    assert_eq!(errno_of(fs::create_dir(m.join("a"))), libc::EEXIST);
    assert_eq!(errno_of(fs::metadata(m.join("nope"))), libc::ENOENT);
    fs::write(m.join("a/f"), b"hello").unwrap();
    assert_eq!(errno_of(fs::create_dir(m.join("a/f/x"))), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_dir(m.join("a"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_file(m.join("a"))), libc::EISDIR);
    assert_eq!(errno_of(fs::remove_dir(m.join("a/f"))), libc::ENOTDIR);
    let long = "x".repeat(256);
    assert_eq!(errno_of(fs::write(m.join(&long), b"")), libc::ENAMETOOLONG);
    fs::write(m.join("x".repeat(255)), b"ok").unwrap();

    // Link counts: a directory has 2 plus one per subdirectory.
    fs::create_dir(m.join("a/sub")).unwrap();
    assert_eq!(fs::metadata(m.join("a")).unwrap().nlink(), 3);

    // Hard links share an inode; the count follows.
    fs::hard_link(m.join("a/f"), m.join("a/g")).unwrap();
    let (f, g) = (
        fs::metadata(m.join("a/f")).unwrap(),
        fs::metadata(m.join("a/g")).unwrap(),
    );
    assert_eq!(f.ino(), g.ino());
    assert_eq!(f.nlink(), 2);
    assert_eq!(
        errno_of(fs::hard_link(m.join("a/sub"), m.join("a/sublink"))),
        libc::EPERM
    );
    fs::remove_file(m.join("a/g")).unwrap();
    assert_eq!(fs::metadata(m.join("a/f")).unwrap().nlink(), 1);

    // Symlinks.
    std::os::unix::fs::symlink("f", m.join("a/s")).unwrap();
    assert_eq!(fs::read_link(m.join("a/s")).unwrap(), Path::new("f"));
    assert_eq!(fs::read(m.join("a/s")).unwrap(), b"hello");
    assert!(fs::symlink_metadata(m.join("a/s"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Rename: over an existing file, across directories, and the flags.
    fs::write(m.join("a/t"), b"target").unwrap();
    fs::rename(m.join("a/f"), m.join("a/t")).unwrap();
    assert_eq!(fs::read(m.join("a/t")).unwrap(), b"hello");
    assert_eq!(errno_of(fs::metadata(m.join("a/f"))), libc::ENOENT);
    fs::create_dir(m.join("b")).unwrap();
    fs::rename(m.join("a/sub"), m.join("b/sub")).unwrap();
    assert_eq!(fs::metadata(m.join("a")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(m.join("b")).unwrap().nlink(), 3);
    assert_eq!(
        errno_of(fs::rename(m.join("b"), m.join("b/sub/inside"))),
        libc::EINVAL
    );
    fs::write(m.join("b/x"), b"x").unwrap();
    assert_eq!(
        rename2(&m.join("a/t"), &m.join("b/x"), libc::RENAME_NOREPLACE),
        libc::EEXIST
    );
    assert_eq!(
        rename2(&m.join("a/t"), &m.join("b/x"), libc::RENAME_EXCHANGE),
        0
    );
    assert_eq!(fs::read(m.join("a/t")).unwrap(), b"x");
    assert_eq!(fs::read(m.join("b/x")).unwrap(), b"hello");
    assert_eq!(
        rename2(&m.join("a/t"), &m.join("a/none"), libc::RENAME_EXCHANGE),
        libc::ENOENT
    );
    // RENAME_WHITEOUT (overlayfs): the source name becomes a 0:0 char device.
    assert_eq!(
        rename2(&m.join("b/x"), &m.join("a/w"), libc::RENAME_WHITEOUT),
        0
    );
    assert_eq!(fs::read(m.join("a/w")).unwrap(), b"hello");
    let w = fs::symlink_metadata(m.join("b/x")).unwrap();
    assert!(w.file_type().is_char_device(), "{:?}", w.file_type());
    assert_eq!((w.rdev(), w.mode() & 0o7777), (0, 0));
    fs::remove_file(m.join("b/x")).unwrap();
    fs::rename(m.join("a/w"), m.join("b/x")).unwrap();
    fs::write(m.join("b/sub/y"), b"").unwrap();
    fs::create_dir(m.join("a/d2")).unwrap();
    assert_eq!(
        errno_of(fs::rename(m.join("a/d2"), m.join("b/sub"))),
        libc::ENOTEMPTY
    );

    // readdir lists exactly what is there.
    let mut names: Vec<String> = fs::read_dir(m.join("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["sub", "x"]);

    // A directory of 3000 entries lists completely.
    fs::create_dir(m.join("many")).unwrap();
    for i in 0..3000 {
        fs::File::create(m.join(format!("many/e{i:05}"))).unwrap();
    }
    assert_eq!(fs::read_dir(m.join("many")).unwrap().count(), 3000);
}

#[test]
fn attributes_permissions_and_times() {
    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();
    let f = m.join("f");
    fs::write(&f, b"data").unwrap();
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 5678));

    // utimens with explicit nanosecond times.
    let times = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_100_000_000,
            tv_nsec: 987_654_321,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c(&f).as_ptr(), times.as_ptr(), 0) },
        0
    );
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_100_000_000, 987_654_321));

    // A write moves mtime forward and clears setuid.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4755)).unwrap();
    // A duration: the write's mtime must differ from the chmod's.
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut h| std::io::Write::write_all(&mut h, b"more"))
        .unwrap();
    let md = fs::metadata(&f).unwrap();
    assert!(md.mtime() > 1_100_000_000);
    assert_eq!(md.len(), 8);

    // A non-owner, non-root caller is refused by mode bits.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=4321", "--regid=4321", "--clear-groups", "cat"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
}

#[test]
fn xattrs_fifos_sockets_and_statfs() {
    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();
    let f = m.join("f");
    fs::write(&f, b"").unwrap();
    let cf = c(&f);
    let name = CString::new("user.color").unwrap();
    assert_eq!(
        unsafe { libc::setxattr(cf.as_ptr(), name.as_ptr(), b"blue".as_ptr().cast(), 4, 0) },
        0
    );
    let mut buf = [0u8; 64];
    let n = unsafe {
        libc::getxattr(
            cf.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(&buf[..n as usize], b"blue");
    assert_eq!(
        unsafe { libc::getxattr(cf.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) },
        4,
        "size query"
    );
    let mut small = [0u8; 2];
    assert_eq!(
        unsafe { libc::getxattr(cf.as_ptr(), name.as_ptr(), small.as_mut_ptr().cast(), 2) },
        -1
    );
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ERANGE)
    );
    assert_eq!(
        unsafe {
            libc::setxattr(
                cf.as_ptr(),
                name.as_ptr(),
                b"red".as_ptr().cast(),
                3,
                libc::XATTR_CREATE,
            )
        },
        -1
    );
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    let n = unsafe { libc::listxattr(cf.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(&buf[..n as usize], b"user.color\0");
    assert_eq!(unsafe { libc::removexattr(cf.as_ptr(), name.as_ptr()) }, 0);
    assert_eq!(
        unsafe {
            libc::getxattr(
                cf.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        },
        -1
    );
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENODATA)
    );

    let fifo = m.join("fifo");
    assert_eq!(unsafe { libc::mkfifo(c(&fifo).as_ptr(), 0o644) }, 0);
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &fs::metadata(&fifo).unwrap().file_type()
    ));
    let sock = m.join("sock");
    assert_eq!(
        unsafe { libc::mknod(c(&sock).as_ptr(), libc::S_IFSOCK | 0o644, 0) },
        0
    );
    assert!(std::os::unix::fs::FileTypeExt::is_socket(
        &fs::metadata(&sock).unwrap().file_type()
    ));

    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c(&m).as_ptr(), &mut st) }, 0);
    let total = st.f_blocks * st.f_frsize;
    assert!(total > 0, "statfs reports the cluster's capacity");
    assert!(st.f_namemax == 255);
}

#[test]
fn unlinked_file_with_missing_parent_errors_cleanly() {
    let mut tc = TestCluster::start(3, MIB);
    let m = tc.mount();
    assert_eq!(
        fs::write(m.join("no/such/dir/f"), b"").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(errno_of(fs::read_link(m.join("no"))), libc::ENOENT);
}
