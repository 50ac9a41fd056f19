//! setuid/setgid clearing as ext4 does it, through a real mount: weftfs
//! negotiates FUSE_HANDLE_KILLPRIV_V2, so the MDS clears the bits on a write,
//! truncate or fallocate by a caller without CAP_FSETID, and a chmod stays
//! the owner's alone.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use weft_testkit::TestCluster;

const MIB: u64 = 1 << 20;

/// Runs `sh -c script` in `dir` as the unprivileged user `tests` (uid 1001,
/// no supplementary groups, no capabilities).
fn as_user(dir: &Path, script: &str) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=tests",
            "--regid=tests",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .output()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

fn file(dir: &Path, name: &str, mode: u32) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, b"0123456789").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    assert_eq!(self::mode(&p), mode);
    p
}

#[test]
fn setuid_setgid_cleared_by_unprivileged_writes_only() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount_with(&["allow_other"]);
    fs::set_permissions(&m, fs::Permissions::from_mode(0o777)).unwrap();

    // A non-owner's write clears setuid, and setgid where group-exec makes
    // it meaningful; the writer itself sees the new mode right away.
    let f = file(&m, "w1", 0o6777);
    let out = as_user(&m, "printf abc >> w1 && stat -c %a w1");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "777");
    assert_eq!(mode(&f), 0o777);
    assert_eq!(fs::read(&f).unwrap(), b"0123456789abc");
    let f = file(&m, "w2", 0o6766);
    let out = as_user(&m, "printf abc >> w2");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&f), 0o2766, "setgid without group-exec stays");

    // A write at an offset inside the file (no size change) too.
    let f = file(&m, "w3", 0o4666);
    let out = as_user(
        &m,
        "printf X | dd of=w3 bs=1 seek=2 conv=notrunc status=none",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&f), 0o666);
    assert_eq!(fs::read(&f).unwrap(), b"01X3456789");

    // Root (CAP_FSETID) keeps them, as on ext4.
    let f = file(&m, "r", 0o6777);
    fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut h| std::io::Write::write_all(&mut h, b"root"))
        .unwrap();
    assert_eq!(mode(&f), 0o6777);
    assert_eq!(fs::read(&f).unwrap(), b"0123456789root");

    // A non-owner's truncate (truncate(2) and O_TRUNC) clears them.
    let f = file(&m, "t1", 0o6777);
    let out = as_user(&m, "truncate -s 4 t1");
    assert!(out.status.success(), "{out:?}");
    assert_eq!((mode(&f), fs::metadata(&f).unwrap().len()), (0o777, 4));
    let f = file(&m, "t2", 0o6777);
    let out = as_user(&m, ": > t2");
    assert!(out.status.success(), "{out:?}");
    assert_eq!((mode(&f), fs::metadata(&f).unwrap().len()), (0o777, 0));

    // fallocate inside the file (no size change) clears them too.
    let f = file(&m, "a", 0o6777);
    let out = as_user(&m, "fallocate -l 4 a && stat -c %a a");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "777");
    assert_eq!(mode(&f), 0o777);
}

/// Linux refuses a chmod by anyone but the owner (or CAP_FOWNER) with EPERM,
/// also one that only clears setuid/setgid, whatever write access the caller
/// has.
#[test]
fn non_owner_chmod_is_eperm_even_to_clear_setuid() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount_with(&["allow_other"]);
    fs::set_permissions(&m, fs::Permissions::from_mode(0o777)).unwrap();
    let f = file(&m, "f", 0o6666);
    for target in ["0666", "2666", "6666"] {
        let out = as_user(&m, &format!("chmod {target} f"));
        assert!(!out.status.success(), "chmod {target} succeeded");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
            "chmod {target}: {out:?}"
        );
        assert_eq!(mode(&f), 0o6666, "chmod {target} changed the mode");
    }
    // The owner may.
    let out = as_user(
        &m,
        "printf '' > mine && chmod 6755 mine && chmod 0755 mine && stat -c %a mine",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "755");
}
