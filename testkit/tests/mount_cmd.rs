//! weft through mount(8): `mount -t fuse.weftfs HOST:PORT DIR` (via Debian's
//! mount.fuse3, which runs `weftfs` from PATH), an fstab line with
//! `_netdev`, an unknown option refused by name, and umount of a busy mount
//! refused as busy.
//!
//! mount(8) runs its helpers with no PATH (sh's default applies), so for the
//! length of each test /usr/local/sbin/weftfs is a symlink to the weftfs
//! under test (the tests take turns; a regular file there is never touched).
//! weftfs started by mount(8) daemonizes; each test finds it by its mount
//! point in /proc and stops only that PID if the unmount did not end it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use weft_testkit::{install_weftfs, is_mounted, require_fuse, wait_until, TestCluster};

const MIB: u64 = 1 << 20;

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// weftfs processes serving `mnt` (found by their argv), by PID.
fn weftfs_pids(mnt: &Path) -> Vec<i32> {
    let want = mnt.to_string_lossy().to_string();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("weftfs")) && args.contains(&want) {
            pids.push(pid);
        }
    }
    pids
}

/// Unmounts if still mounted and stops that mount's weftfs (by PID).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
        for pid in weftfs_pids(&self.0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

fn mount_point(tc: &TestCluster, name: &str) -> PathBuf {
    let p = tc.tmp.path().join(name);
    std::fs::create_dir_all(&p).unwrap();
    std::fs::canonicalize(&p).unwrap()
}

#[test]
fn mount_t_fuse_weftfs_and_busy_umount() {
    require_fuse();
    let _helper = install_weftfs();
    let tc = TestCluster::start(1, MIB);
    let addr = tc.mds_addr();
    let mnt = mount_point(&tc, "m");
    let _c = Cleanup(mnt.clone());
    let m = mnt.to_str().unwrap();

    // An unknown option is refused, by name, and nothing is mounted.
    let o = run(
        "mount",
        &["-t", "fuse.weftfs", "-o", "no_such_opt", &addr, m],
    );
    assert!(!o.status.success(), "mount with a bogus option succeeded");
    assert!(
        text(&o).contains("no_such_opt"),
        "error does not name the option: {}",
        text(&o)
    );
    assert!(!is_mounted(&mnt));

    let o = run("mount", &["-t", "fuse.weftfs", "-o", "noatime", &addr, m]);
    assert!(
        o.status.success(),
        "mount -t fuse.weftfs failed: {}",
        text(&o)
    );
    assert!(is_mounted(&mnt));
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(m))
        .expect("mount in /proc/self/mounts");
    assert!(
        line.starts_with(&format!("{addr} {m} fuse.weftfs ")),
        "{line}"
    );
    std::fs::write(mnt.join("f"), b"through mount(8)").unwrap();
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"through mount(8)");

    // Remount read-only and back, through the same helper.
    let o = run("mount", &["-o", "remount,ro", m]);
    assert!(o.status.success(), "remount,ro failed: {}", text(&o));
    let e = std::fs::write(mnt.join("g"), b"no").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"through mount(8)");
    let o = run("mount", &["-o", "remount,rw", m]);
    assert!(o.status.success(), "remount,rw failed: {}", text(&o));
    std::fs::write(mnt.join("g"), b"yes").unwrap();
    assert_eq!(weftfs_pids(&mnt).len(), 1, "remount started another weftfs");

    // Busy: a process has its working directory in the mount.
    let mut busy = Command::new("sleep")
        .arg("60")
        .current_dir(&mnt)
        .spawn()
        .unwrap();
    let o = run("umount", &[m]);
    assert!(!o.status.success(), "umount of a busy mount succeeded");
    assert!(
        text(&o).contains("busy"),
        "umount did not say busy: {}",
        text(&o)
    );
    assert!(is_mounted(&mnt));
    busy.kill().unwrap();
    busy.wait().unwrap();

    let o = run("umount", &[m]);
    assert!(o.status.success(), "umount failed: {}", text(&o));
    assert!(!is_mounted(&mnt));
    wait_until(
        "weftfs to exit after umount",
        Duration::from_secs(10),
        || weftfs_pids(&mnt).is_empty(),
    );
}

#[test]
fn fstab_line_with_netdev() {
    require_fuse();
    let _helper = install_weftfs();
    let tc = TestCluster::start(1, MIB);
    let addr = tc.mds_addr();
    let mnt = mount_point(&tc, "fstab-mnt");
    let _c = Cleanup(mnt.clone());
    let m = mnt.to_str().unwrap();
    let fstab = tc.tmp.path().join("fstab");
    std::fs::write(
        &fstab,
        format!("# weft\n{addr}  {m}  fuse.weftfs  _netdev,allow_other,ro  0 0\n"),
    )
    .unwrap();
    let o = run("mount", &["--fstab", fstab.to_str().unwrap(), m]);
    assert!(o.status.success(), "mount from fstab failed: {}", text(&o));
    assert!(is_mounted(&mnt));
    // ro was honoured.
    let e = std::fs::write(mnt.join("x"), b"no").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    let o = run("umount", &[m]);
    assert!(o.status.success(), "umount failed: {}", text(&o));
    wait_until(
        "weftfs to exit after umount",
        Duration::from_secs(10),
        || weftfs_pids(&mnt).is_empty(),
    );
}
