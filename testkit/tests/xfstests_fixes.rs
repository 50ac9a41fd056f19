//! Behaviours xfstests checks that weft once got wrong, each through a real
//! mount of a real cluster (the xfstests case named in each test).

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};

use std::time::Duration;
use weft_testkit::{wait_until, TestCluster};

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
    std::thread::sleep(std::time::Duration::from_millis(300));
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

/// name_to_handle_at(2) on one mount's path, then open_by_handle_at(2) of it
/// on another mount that has never seen the inode.
fn handle_of(p: &std::path::Path) -> Vec<u8> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut buf = vec![0u8; 8 + 128];
    buf[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "name_to_handle_at: {}",
        std::io::Error::last_os_error()
    );
    buf
}

fn open_by_handle(mount: &std::path::Path, handle: &mut [u8]) -> Result<File, i32> {
    let m = File::open(mount).unwrap();
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            m.as_raw_fd(),
            handle.as_mut_ptr(),
            libc::O_RDONLY,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// generic/467, 477: file handles open the file again, also on another mount
/// (or after a remount) that no longer caches the inode; a removed file's
/// handle is stale.
#[test]
fn file_handles_open_by_handle_on_a_fresh_mount() {
    use std::io::Read;
    let mut tc = TestCluster::start(1, MIB);
    let a = tc.mount();
    fs::create_dir(a.join("d")).unwrap();
    fs::write(a.join("d/f"), b"by handle").unwrap();
    fs::write(a.join("gone"), b"x").unwrap();
    let mut hf = handle_of(&a.join("d/f"));
    let mut hd = handle_of(&a.join("d"));
    let mut hg = handle_of(&a.join("gone"));
    fs::remove_file(a.join("gone")).unwrap();

    let b = tc.mount();
    let mut s = String::new();
    open_by_handle(&b, &mut hf)
        .expect("open_by_handle_at of a file on another mount")
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "by handle");
    let d = open_by_handle(&b, &mut hd).expect("open_by_handle_at of a directory");
    assert_eq!(fstat(&d).unwrap().st_mode & libc::S_IFMT, libc::S_IFDIR);
    assert_eq!(open_by_handle(&b, &mut hg).err(), Some(libc::ESTALE));
}

/// generic/213: fallocate of more than the free space fails with ENOSPC and
/// leaves the size alone; a range that fits still succeeds.
#[test]
fn fallocate_beyond_free_space_is_enospc() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let p = m.join("big");
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    let avail = st.f_bavail as i64 * st.f_frsize as i64;
    assert!(avail > 0);
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, avail * 2) };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::ENOSPC))
    );
    assert_eq!(fs::metadata(&p).unwrap().len(), 0);
    assert_eq!(unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) }, 0);
    assert_eq!(fs::metadata(&p).unwrap().len(), 1 << 20);
}

/// generic/568: fallocate reserves the space. st_blocks counts it at once, a
/// write into the range does not grow it, and that write still succeeds once
/// other data has filled the cluster.
#[test]
fn fallocate_reserves_space_for_later_writes() {
    let mut tc = TestCluster::start_with(1, |s| {
        s.chunk_size = Some(MIB);
        s.capacity = Some(16 * MIB);
    });
    let m = tc.mount();
    let p = m.join("reserved");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    let len = 4 * MIB;
    assert_eq!(
        unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as i64) },
        0
    );
    let blocks = fs::metadata(&p).unwrap().blocks();
    assert!(blocks * 512 >= len, "st_blocks {blocks} after fallocate");

    // Fill the cluster with another file until it is full.
    let filler = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.join("filler"))
        .unwrap();
    let piece = vec![7u8; MIB as usize];
    let mut full = false;
    for i in 0..32u64 {
        let r = filler
            .write_all_at(&piece, i * MIB)
            .and_then(|()| filler.sync_all());
        if let Err(e) = r {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            full = true;
            break;
        }
    }
    assert!(full, "16 MiB of capacity never filled up");
    drop(filler);

    // The reserved range is still writable, and st_blocks does not grow.
    let data = weft_testkit::pattern(len as usize, 5);
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::metadata(&p).unwrap().blocks(), blocks);
    assert!(fs::read(&p).unwrap() == data, "bytes read back differ");
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

/// generic/467 (`open_by_handle -rp`): a directory this mount created, so
/// knows every entry of, is opened again by its handle after the kernel
/// dropped its inode and dentries: the kernel's lookups of "." (the inode)
/// and ".." (to reconnect it) must not be answered "no such entry" from
/// that listing, which the kernel turns into ESTALE.
#[test]
fn handle_of_a_directory_this_mount_created_opens_after_drop_caches() {
    let mut tc = TestCluster::start(1, MIB);
    let m = tc.mount();
    let d = m.join("467-dir");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("file000000"), b"x").unwrap();
    // List it so this mount holds the directory's complete listing.
    assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
    let mut hd = handle_of(&d);
    // Only dentries and inodes (2), not the page cache.
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let f = open_by_handle(&m, &mut hd).expect("open_by_handle_at of a linked directory");
    assert_eq!(fstat(&f).unwrap().st_mode & libc::S_IFMT, libc::S_IFDIR);
    let name = std::ffi::CString::new("file000000").unwrap();
    assert_eq!(
        unsafe { libc::faccessat(f.as_raw_fd(), name.as_ptr(), libc::F_OK, 0) },
        0,
        "the directory opened by handle does not show its file"
    );
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

/// One 4 KiB page of cycle `cycle`'s contents at page `page`: every page of
/// every cycle differs, so a read shows which write each page came from.
fn tagged_page(cycle: u64, page: u64) -> Vec<u8> {
    let mut x = (cycle << 32 | page).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..4096 / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

/// A page-aligned buffer, as O_DIRECT needs.
struct Aligned(*mut u8, usize);

impl Aligned {
    fn filled(pages: u64, cycle: u64) -> Aligned {
        let len = (pages * 4096) as usize;
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        let p = unsafe { std::alloc::alloc(layout) };
        assert!(!p.is_null());
        let buf = unsafe { std::slice::from_raw_parts_mut(p, len) };
        for (i, page) in buf.chunks_mut(4096).enumerate() {
            page.copy_from_slice(&tagged_page(cycle, i as u64));
        }
        Aligned(p, len)
    }

    fn as_slice(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.0, self.1) }
    }
}

fn sha256(d: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(d).to_vec()
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.1, 4096).unwrap();
        unsafe { std::alloc::dealloc(self.0, layout) };
    }
}

/// struct io_event of linux/aio_abi.h (libc has no binding for it).
#[repr(C)]
#[derive(Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// A Linux AIO context (io_setup(2)) with one request in flight at most.
struct Aio(libc::c_ulong);

impl Aio {
    fn new() -> Aio {
        let mut ctx: libc::c_ulong = 0;
        let r = unsafe { libc::syscall(libc::SYS_io_setup, 1, &mut ctx) };
        assert_eq!(r, 0, "io_setup: {}", std::io::Error::last_os_error());
        Aio(ctx)
    }

    /// pwrite through io_submit, then waits for its completion; returns the
    /// completion's result (bytes written or -errno).
    fn pwrite(&self, f: &File, buf: &Aligned, offset: u64) -> i64 {
        let mut cb: libc::iocb = unsafe { std::mem::zeroed() };
        cb.aio_lio_opcode = 1; // IOCB_CMD_PWRITE
        cb.aio_fildes = f.as_raw_fd() as u32;
        cb.aio_buf = buf.0 as u64;
        cb.aio_nbytes = buf.1 as u64;
        cb.aio_offset = offset as i64;
        let mut cbs = [&mut cb as *mut libc::iocb];
        let r = unsafe { libc::syscall(libc::SYS_io_submit, self.0, 1, cbs.as_mut_ptr()) };
        assert_eq!(r, 1, "io_submit: {}", std::io::Error::last_os_error());
        let mut ev = IoEvent::default();
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_getevents,
                self.0,
                1,
                1,
                &mut ev as *mut IoEvent,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        assert_eq!(r, 1, "io_getevents: {}", std::io::Error::last_os_error());
        ev.res
    }
}

impl Drop for Aio {
    fn drop(&mut self) {
        unsafe { libc::syscall(libc::SYS_io_destroy, self.0) };
    }
}

/// generic/451: AIO O_DIRECT writes of a file while other threads read it
/// through the page cache. Every buffered read shows, page by page, the
/// bytes of the write before or the one in flight, and a buffered read after
/// a write completed shows exactly its bytes (the kernel does not invalidate
/// the page cache when an async FUSE direct write completes, so pages a
/// reader cached from the old bytes while the write was in flight stayed).
#[test]
fn buffered_reads_after_aio_direct_writes_see_the_new_bytes() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    const PAGES: u64 = 160; // 640 KiB, as generic/451
    const READERS: usize = 4;
    // About 3 in 800 cycles showed stale pages before the fix.
    let cycles: u64 = 800;
    let mut tc = TestCluster::start(1, 64 * MIB);
    let m = tc.mount();
    let path = m.join("aio-dio");
    fs::write(&path, Aligned::filled(PAGES, 0).as_slice()).unwrap();

    // The cycle whose write was submitted last; its write is in flight or done.
    let submitted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (path, submitted, stop) = (path.clone(), submitted.clone(), stop.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut buf = Vec::with_capacity((PAGES * 4096) as usize);
                let mut reads = 0;
                while !stop.load(Ordering::SeqCst) {
                    let before = submitted.load(Ordering::SeqCst);
                    buf.clear();
                    File::open(&path)
                        .and_then(|mut f| f.read_to_end(&mut buf))
                        .map_err(|e| format!("buffered read: {e}"))?;
                    let after = submitted.load(Ordering::SeqCst);
                    if buf.len() as u64 != PAGES * 4096 {
                        return Err(format!("buffered read of {} bytes", buf.len()));
                    }
                    for (p, page) in buf.chunks(4096).enumerate() {
                        let p = p as u64;
                        // Complete before `before` was submitted: before - 1.
                        if !(before.saturating_sub(1)..=after).any(|c| tagged_page(c, p) == page) {
                            return Err(format!(
                                "page {p} of a buffered read during writes {before}..={after} \
                                 is none of their bytes"
                            ));
                        }
                    }
                    reads += 1;
                }
                Ok(reads)
            })
        })
        .collect();

    let aio = Aio::new();
    let mut stale = Vec::new();
    for cycle in 1..=cycles {
        let data = Aligned::filled(PAGES, cycle);
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        submitted.store(cycle, Ordering::SeqCst);
        assert_eq!(
            aio.pwrite(&f, &data, 0),
            data.1 as i64,
            "AIO O_DIRECT write"
        );
        drop(f);
        let read = fs::read(&path).unwrap();
        if sha256(&read) != sha256(data.as_slice()) {
            let old_pages = (0..PAGES)
                .filter(|&p| read[(p * 4096) as usize..][..4096] == tagged_page(cycle - 1, p))
                .count();
            stale.push(format!("cycle {cycle}: {old_pages} of {PAGES} pages old"));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let reads: Vec<_> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    eprintln!(
        "{cycles} AIO O_DIRECT writes; buffered reads per reader: {reads:?}; stale after write: {}",
        stale.len()
    );
    assert!(
        stale.is_empty(),
        "buffered read after the AIO write completed showed old bytes: {stale:?}"
    );
    for r in reads {
        r.unwrap();
    }
}

/// generic/103: a fallocate of all but 512 KiB of what statfs shows free
/// succeeds. What a daemon offers is counted in data bytes: each chunk file
/// also needs its header and an extent block, which with 1 MiB chunks is
/// over 1 MiB of a 256 MiB capacity.
#[test]
fn a_fallocate_of_what_statfs_shows_free_fits() {
    let mut tc = TestCluster::start_with(1, |s| {
        s.chunk_size = Some(MIB);
        s.capacity = Some(256 * MIB);
    });
    let m = tc.mount();
    let free = || nix::sys::statvfs::statvfs(&m).map(|s| s.blocks_available() * s.fragment_size());
    // The daemon learns the chunk size when it registers; its next
    // heartbeat offers the space in those terms.
    wait_until("the offer in data bytes", Duration::from_secs(10), || {
        free().unwrap() < 255 * MIB
    });
    let avail = free().unwrap();
    assert!(avail > 250 * MIB, "{avail}");
    let f = fs::File::create(m.join("spc")).unwrap();
    let len = avail - (512 << 10);
    assert_eq!(
        unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len as i64) },
        0,
        "fallocate of {len} with {avail} free: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(fs::metadata(m.join("spc")).unwrap().len(), len);
}
