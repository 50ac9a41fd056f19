//! setuid, setgid and file capabilities cleared by writes, chmod by a
//! non-owner, device nodes with `-o dev`, and execute-only programs, through a
//! real mount (each as ext4 behaves; xfstests cases named in the tests).

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;
use weft_testkit::{wait_until, TestCluster};

const MIB: u64 = 1 << 20;

fn set_caps(p: &std::path::Path) {
    // vfs_cap_data v2: effective, permitted CAP_NET_RAW.
    let mut v = Vec::new();
    for w in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    xattr_set(p, "security.capability", &v);
}

fn xattr_set(p: &std::path::Path, name: &str, v: &[u8]) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let r = unsafe { libc::setxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn has_caps(p: &std::path::Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new("security.capability").unwrap();
    let r = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    r > 0
}

fn mknod_char(p: &std::path::Path, major: u32, minor: u32) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let r = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(r, 0, "mknod: {}", std::io::Error::last_os_error());
}

/// weftfs remembers for attr_timeout that a file has no security.capability
/// (the kernel asks before every write); a capability set later, on this
/// mount or another one, is still dropped by the next write, as on ext4.
#[test]
fn write_drops_file_capabilities_set_after_earlier_writes() {
    use std::io::Write;
    let mut tc = TestCluster::start(1, MIB);
    let a = tc.mount();
    let b = tc.mount();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(a.join("prog"))
        .unwrap();
    f.write_all(b"1").unwrap();
    set_caps(&a.join("prog"));
    assert!(has_caps(&a.join("prog")));
    f.write_all(b"2").unwrap();
    assert!(
        !has_caps(&a.join("prog")),
        "write on the same mount kept it"
    );

    f.write_all(b"3").unwrap();
    set_caps(&b.join("prog"));
    // The other mount's change reaches this one by the coherence push.
    wait_until(
        "mount A to see B's capability",
        Duration::from_secs(10),
        || has_caps(&a.join("prog")),
    );
    f.write_all(b"4").unwrap();
    assert!(
        !has_caps(&b.join("prog")),
        "a capability set on another mount survived a write"
    );
    drop(f);
    assert_eq!(fs::read(a.join("prog")).unwrap(), b"1234");
}

/// generic/683-685: fallocate, punch and zero by a user who may write the
/// file but does not own it clear setuid/setgid (the kernel asks the file
/// system to, as for a write) instead of failing with EPERM.
#[test]
fn fallocate_by_non_owner_clears_setuid_setgid() {
    use std::os::unix::fs::PermissionsExt;
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount_with(&["allow_other"]);
    fs::set_permissions(&m, fs::Permissions::from_mode(0o777)).unwrap();
    for (i, verb) in [
        &["-l", "64k"][..],
        &["-p", "-l", "64k"],
        &["-z", "-l", "64k"],
    ]
    .iter()
    .enumerate()
    {
        let p = m.join(format!("f{i}"));
        fs::write(&p, vec![b'X'; 192 << 10]).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o6666)).unwrap();
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=tests",
                "--regid=tests",
                "--clear-groups",
                "fallocate",
            ])
            .args(*verb)
            // Relative to the mount: its temp parent is not open to `tests`.
            .arg(format!("f{i}"))
            .current_dir(&m)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
            "fallocate {verb:?}: {out:?}"
        );
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o666, "fallocate {verb:?} left mode {mode:o}");
    }
}

/// A non-owner with write permission cannot clear setuid/setgid with
/// chmod(2) or fchmod(2) (EPERM, mode unchanged: the kernel's
/// default_permissions check refuses it before weftfs sees it), but a write
/// by that user clears them as tmpfs and ext4 do: setuid always, setgid with
/// group execute or when the writer is not in the file's group. The MDS lets a non-owner's mode change through only when it just
/// drops those bits, which is what the kernel sends before such a write.
#[test]
fn chmod_by_non_owner_is_eperm_but_a_write_clears_setuid_setgid() {
    use std::os::unix::fs::PermissionsExt;
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount_with(&["allow_other"]);
    fs::set_permissions(&m, fs::Permissions::from_mode(0o777)).unwrap();
    let mode_of = |name: &str| fs::metadata(m.join(name)).unwrap().permissions().mode() & 0o7777;
    // Runs perl as user `tests`, in the mount (its temp parent is not open to
    // `tests`); prints the errno of each call, 0 for success.
    let as_tests = |script: &str, file: &str| -> String {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=tests", "--regid=tests", "--clear-groups"])
            .args(["perl", "-e", script, file])
            .current_dir(&m)
            .output()
            .unwrap();
        assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let id = std::process::Command::new("id")
        .args(["-g", "tests"])
        .output()
        .unwrap();
    let tests_gid: u32 = String::from_utf8(id.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for (name, mode, gid, after_write) in [
        ("gx", 0o6777, 0, 0o777),
        ("nogx", 0o6766, 0, 0o766),
        ("nogx-in-group", 0o6766, tests_gid, 0o2766),
    ] {
        fs::write(m.join(name), b"old").unwrap();
        std::os::unix::fs::chown(m.join(name), None, Some(gid)).unwrap();
        fs::set_permissions(m.join(name), fs::Permissions::from_mode(mode)).unwrap();
        assert_eq!(mode_of(name), mode);
        let errnos = as_tests(
            "$f = $ARGV[0];
             print chmod(0777, $f) ? 0 : $! + 0, \"\\n\";
             print chmod(0666, $f) ? 0 : $! + 0, \"\\n\";
             open(F, '<', $f) or die \"open: $!\";
             print chmod(0777, \\*F) ? 0 : $! + 0, \"\\n\";",
            name,
        );
        let eperm = libc::EPERM.to_string();
        assert_eq!(
            errnos.lines().collect::<Vec<_>>(),
            [&*eperm, &*eperm, &*eperm],
            "chmod, chmod, fchmod of {name} ({mode:o}) by a non-owner"
        );
        assert_eq!(
            mode_of(name),
            mode,
            "{name}: a refused chmod changed the mode"
        );

        let wrote = as_tests(
            "open(F, '>>', $ARGV[0]) or die \"open: $!\";
             syswrite(F, 'new') == 3 or die \"write: $!\"; close(F) or die; print 0;",
            name,
        );
        assert_eq!(wrote, "0");
        assert_eq!(
            mode_of(name),
            after_write,
            "{name} ({mode:o}) after a non-owner's write"
        );
        assert_eq!(fs::read(m.join(name)).unwrap(), b"oldnew");
    }
}

/// generic/306: with `dev` (which mount.fuse3 passes when root mounts),
/// device nodes on the mount work; without it the mount stays nodev.
#[test]
fn dev_option_lets_device_nodes_work() {
    use std::io::{Read, Write};
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount_with(&["dev", "suid"]);
    mknod_char(&m.join("null"), 1, 3);
    mknod_char(&m.join("zero"), 1, 5);
    fs::OpenOptions::new()
        .write(true)
        .open(m.join("null"))
        .expect("open a device node on a dev mount")
        .write_all(b"gone")
        .unwrap();
    let mut buf = [7u8; 16];
    File::open(m.join("zero"))
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    assert_eq!(buf, [0u8; 16]);

    let plain = tc.mount();
    let e = File::open(plain.join("zero")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "nodev by default");
}

/// generic/126: a program with execute but no read permission for the caller
/// runs (execve opens it for exec, not for reading).
#[test]
fn execute_only_program_runs() {
    use std::os::unix::fs::PermissionsExt;
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount_with(&["allow_other"]);
    fs::set_permissions(&m, fs::Permissions::from_mode(0o755)).unwrap();
    fs::copy("/bin/true", m.join("prog")).unwrap();
    fs::set_permissions(m.join("prog"), fs::Permissions::from_mode(0o711)).unwrap();
    let run = |file: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid=tests", "--regid=tests", "--clear-groups", file])
            .current_dir(&m)
            .status()
            .unwrap()
            .success()
    };
    assert!(run("./prog"), "execute-only program did not run");
    // Reading it is still refused.
    fs::copy("/bin/true", m.join("noexec")).unwrap();
    fs::set_permissions(m.join("noexec"), fs::Permissions::from_mode(0o700)).unwrap();
    assert!(!run("./noexec"));
}

/// A user writes to its own file and, before closing it, sets the setuid
/// bit (as `install -m 4755` does): the bit stays. The write cleared the
/// privileges before the chmod, as on ext4, not at the close after it.
#[test]
fn setuid_set_after_a_write_before_close_stays() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount_with(&["allow_other"]);
    let p = m.join("prog");
    fs::write(&p, b"").unwrap();
    let status = std::process::Command::new("chown")
        .args(["tests:tests"])
        .arg(&p)
        .status()
        .unwrap();
    assert!(status.success());
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=tests",
            "--regid=tests",
            "--clear-groups",
            "perl",
            "-e",
        ])
        // One descriptor, never closed before the chmod (a shell's `>&3`
        // would close a copy of it, and a close commits the data).
        .arg(
            "open(F, '+<', 'prog') or die $!; syswrite(F, 'some program') or die $!; \
             chmod(04755, 'prog') or die $!; close(F) or die $!",
        )
        .current_dir(&m)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.len(), md.mode() & 0o7777), (12, 0o4755));
}
