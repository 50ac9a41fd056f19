//! A program running from the mount cannot be truncated by an open(2) with
//! O_TRUNC (pjdfstest open::etxtbsy). The kernel checks ETXTBSY for
//! O_RDONLY|O_TRUNC only after the file system's open, which with
//! FUSE_ATOMIC_O_TRUNC is the truncation itself; weftfs used to truncate the
//! running binary there (it then crashed in ld.so, and when it died before the
//! kernel's check, the open even succeeded: the intermittent failure).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use weft_testkit::{sha256_hex, TestCluster};

const MIB: u64 = 1 << 20;

fn open_trunc_readonly(p: &std::path::Path) -> std::io::Result<fs::File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_TRUNC)
        .open(p)
}

#[test]
fn running_program_is_not_truncated_by_open_o_trunc() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let prog = m.join("sleep");
    let original = fs::read("/usr/bin/sleep").unwrap();
    fs::write(&prog, &original).unwrap();
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();

    // spawn returns once execve succeeded.
    let mut child = Command::new(&prog).arg("30").spawn().unwrap();
    for _ in 0..20 {
        let e = open_trunc_readonly(&prog).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ETXTBSY));
        for read in [false, true] {
            let e = OpenOptions::new()
                .read(read)
                .write(true)
                .open(&prog)
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ETXTBSY));
        }
    }
    // A duration: a truncated program dies when it next pages in, which
    // nothing announces; give that a moment before checking it lives.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the program died: {:?}",
        child.try_wait()
    );
    assert_eq!(sha256_hex(&fs::read(&prog).unwrap()), sha256_hex(&original));

    // Once it has exited, O_TRUNC truncates again.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(open_trunc_readonly(&prog).unwrap());
    assert_eq!(fs::metadata(&prog).unwrap().len(), 0);
}
