//! POSIX ACLs through a real mount, with the acl package's own tools
//! (setfacl/getfacl): an access ACL grants a named user what the mode does
//! not, the mode's group bits follow the ACL mask, chmod moves the mask, a
//! directory's default ACL is inherited (and the umask ignored) on create,
//! and removing the ACL leaves plain mode bits.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use weft_testkit::{sh, TestCluster};

const MIB: u64 = 1 << 20;

/// Runs `cmd` as the user `tests` (created by scripts/install-test-deps);
/// true if it succeeded.
fn as_tests(dir: &Path, cmd: &str) -> bool {
    Command::new("setpriv")
        .args([
            "--reuid=tests",
            "--regid=tests",
            "--clear-groups",
            "sh",
            "-c",
            cmd,
        ])
        .current_dir(dir)
        .status()
        .expect("setpriv")
        .success()
}

#[test]
fn access_and_default_acls() {
    let mut tc = TestCluster::start(1, MIB);
    fs::set_permissions(tc.tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let m = tc.mount_with(&["allow_other"]);
    let d = m.join("d");
    fs::create_dir(&d).unwrap();
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();

    // Without an ACL the user `tests` cannot create in root's 0755 directory.
    assert!(!as_tests(&m, "touch d/nope 2>/dev/null"));
    sh(&m, "setfacl -m u:tests:rwx d");
    let acl = sh(&m, "getfacl -cp d");
    assert!(acl.contains("user:tests:rwx"), "{acl}");
    assert!(acl.contains("mask::rwx"), "{acl}");
    // The mode's group bits are the mask.
    assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o775);
    assert!(as_tests(&m, "touch d/yes"));
    assert_eq!(fs::metadata(d.join("yes")).unwrap().uid(), {
        let out = sh(&m, "id -u tests");
        out.trim().parse::<u32>().unwrap()
    });

    // chmod moves the mask, and the named entry is masked with it.
    sh(&m, "chmod 755 d");
    let acl = sh(&m, "getfacl -cp d");
    assert!(acl.contains("mask::r-x"), "{acl}");
    assert!(!as_tests(&m, "touch d/masked 2>/dev/null"));
    sh(&m, "chmod 775 d");

    // A default ACL is inherited; the umask does not apply under it.
    sh(&m, "setfacl -d -m u:tests:rw d");
    sh(&m, "umask 077 && touch d/inherited && mkdir d/sub");
    let f = d.join("inherited");
    let acl = sh(&m, "getfacl -cp d/inherited");
    assert!(acl.contains("user:tests:rw-"), "{acl}");
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o664, "{acl}");
    let sub = sh(&m, "getfacl -cp d/sub");
    assert!(sub.contains("default:user:tests:rw-"), "{sub}");
    // Outside the directory the umask still applies.
    sh(&m, "umask 077 && touch plain");
    assert_eq!(fs::metadata(m.join("plain")).unwrap().mode() & 0o777, 0o600);

    // Removing every ACL leaves the mode alone and no ACL xattrs.
    sh(&m, "setfacl -b d/inherited && setfacl -k d");
    let names = sh(&m, "getfattr -d -m - d/inherited || true");
    assert!(!names.contains("posix_acl"), "{names}");
    // The base entries stay: the group entry (r--), not the old mask (rw-).
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o644);
    let names = sh(&m, "getfattr -d -m - d || true");
    assert!(!names.contains("posix_acl_default"), "{names}");
    assert!(names.contains("posix_acl_access"), "{names}");
    // An ACL with a bad entry is refused.
    let bad = Command::new("setfattr")
        .args(["-n", "system.posix_acl_access", "-v", "0x02000000", "plain"])
        .current_dir(&m)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
