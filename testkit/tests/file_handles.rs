//! name_to_handle_at / open_by_handle_at through a real mount:
//! handles stay valid on a fresh mount and after the kernel dropped its caches.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use weft_testkit::{fstat, TestCluster};

const MIB: u64 = 1 << 20;

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
