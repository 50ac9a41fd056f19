//! `mount -o remount,ro|rw MOUNTPOINT`. mount(8) hands a remount of
//! a fuse.weftfs mount to mount.fuse3, which runs `weftfs SOURCE MOUNTPOINT
//! -o remount,...` like a new mount. weftfs then must not start a second
//! daemon: it changes the existing mount's flags with mount(2) MS_REMOUNT
//! (the FUSE kernel module accepts a read-only switch; the VFS then refuses
//! writes with EROFS) and exits.
//!
//! A read-only switch fails with EBUSY while an unlinked inode is still held
//! by the kernel; FUSE holds a closed file's inode until weftfs answers its
//! (asynchronous) release, so just after a close the remount is retried for
//! a moment rather than refused for a file that is already closed.
//!
//! Invariant: a remount sets the per-mount flags from its options as a mount
//! does (nosuid/nodev unless `suid`/`dev`, which mount.fuse3 adds for root,
//! ro, noatime); it changes nothing else.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// How long a remount waits out releases still in flight.
const BUSY_RETRY: Duration = Duration::from_secs(3);

use crate::options::MountOpts;

pub fn remount(mountpoint: &Path, opts: &MountOpts) -> Result<(), String> {
    let flags =
        MsFlags::MS_REMOUNT | crate::mount::mount_flags(opts.ro, opts.noatime, opts.dev, opts.suid);
    let deadline = Instant::now() + BUSY_RETRY;
    loop {
        match mount(None::<&str>, mountpoint, None::<&str>, flags, None::<&str>) {
            Err(Errno::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            r => return r.map_err(|e| format!("cannot remount {}: {e}", mountpoint.display())),
        }
    }
}
