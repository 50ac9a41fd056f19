//! Kernel-side tuning of a mount that FUSE's INIT cannot express.
//!
//! Readahead: the kernel caps a FUSE mount's readahead at its backing device
//! info's `read_ahead_kb` (128 KiB by default) whatever INIT's max_readahead
//! says, so a sequential reader would wait on one 128 KiB request at a time.
//! Raising it lets the kernel's adaptive readahead (which grows the window
//! only while access stays sequential) keep several 1 MiB reads in flight.
//!
//! Invariant: nothing here touches the mount itself (no stat of the mount
//! point, which would wait on this very process before its session runs): the
//! device number comes from /proc/self/mountinfo.

use std::io;
use std::path::Path;

/// The "major:minor" of the file system mounted at `mountpoint`.
pub fn mount_device(mountpoint: &Path) -> io::Result<String> {
    let want = std::fs::canonicalize(mountpoint)
        .unwrap_or_else(|_| mountpoint.to_path_buf())
        .to_string_lossy()
        .into_owned();
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    // Field 3 is major:minor, field 5 the mount point (octal-escaped); the
    // last matching line is the topmost mount.
    info.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && unescape(f[4]) == want).then(|| f[2].to_string())
        })
        .next_back()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "mount not in mountinfo"))
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Sets the mount's readahead window to `kb` KiB.
pub fn set_readahead(mountpoint: &Path, kb: u32) -> io::Result<()> {
    let dev = mount_device(mountpoint)?;
    std::fs::write(
        format!("/sys/class/bdi/{dev}/read_ahead_kb"),
        kb.to_string(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_root_mount_has_a_device() {
        let d = super::mount_device(std::path::Path::new("/")).unwrap();
        assert!(d.contains(':'), "{d}");
    }
}
