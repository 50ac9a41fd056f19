//! Mounting the FUSE file system and taking it down.
//!
//! As root, weftfs opens /dev/fuse and calls mount(2) itself, because fuser's
//! own direct mount always uses the plain `fuse` type; weft wants the kernel
//! type `fuse.<subtype>` (default `fuse.weftfs`) and the source exactly as the
//! user gave it, which is what mount(8) and /proc/mounts then show. Without the
//! privilege (EPERM), it falls back to fuser's mount, which goes through the
//! setuid fusermount3 helper (that helper sets the subtype too).
//!
//! Invariant: once mounted, a failure before the session is running unmounts
//! again, so no dead mount is left behind.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fuser::{Config, MountOption, Session, SessionACL, SessionUnmounter};
use nix::mount::{MntFlags, MsFlags};

use crate::fs::WeftFs;
use crate::options::MountOpts;

/// What a mount needs besides the file system.
pub struct MountSpec {
    pub mountpoint: PathBuf,
    pub source: String,
    pub subtype: Option<String>,
    pub ro: bool,
    pub noatime: bool,
    pub dev: bool,
    pub suid: bool,
    pub acl: SessionACL,
}

/// mount(2) flags for the options (also used by remount).
pub fn mount_flags(ro: bool, noatime: bool, dev: bool, suid: bool) -> MsFlags {
    let mut f = MsFlags::empty();
    if !suid {
        f |= MsFlags::MS_NOSUID;
    }
    if !dev {
        f |= MsFlags::MS_NODEV;
    }
    if ro {
        f |= MsFlags::MS_RDONLY;
    }
    if noatime {
        f |= MsFlags::MS_NOATIME;
    }
    f
}

impl MountSpec {
    pub fn new(mountpoint: &Path, source: &str, o: &MountOpts) -> MountSpec {
        let acl = if o.allow_other {
            SessionACL::All
        } else if o.allow_root {
            SessionACL::RootAndOwner
        } else {
            SessionACL::Owner
        };
        MountSpec {
            mountpoint: mountpoint.to_path_buf(),
            source: o.fsname.clone().unwrap_or_else(|| source.to_string()),
            subtype: o.effective_subtype().map(str::to_string),
            ro: o.ro,
            noatime: o.noatime,
            dev: o.dev,
            suid: o.suid,
            acl,
        }
    }

    pub fn fstype(&self) -> String {
        match &self.subtype {
            Some(s) => format!("fuse.{s}"),
            None => "fuse".to_string(),
        }
    }

    /// The data string of mount(2) for a FUSE mount on `fd`.
    pub fn kernel_options(&self, fd: i32, uid: u32, gid: u32) -> String {
        let mut o =
            format!("fd={fd},rootmode=40000,user_id={uid},group_id={gid},default_permissions");
        if self.acl != SessionACL::Owner {
            o.push_str(",allow_other");
        }
        o
    }

    pub fn flags(&self) -> MsFlags {
        mount_flags(self.ro, self.noatime, self.dev, self.suid)
    }
}

/// How to take the mount down from inside (signals).
pub enum Unmounter {
    Direct(PathBuf),
    Helper(SessionUnmounter),
}

impl Unmounter {
    pub fn unmount(&mut self) -> io::Result<()> {
        match self {
            Unmounter::Direct(p) => unmount_path(p),
            Unmounter::Helper(u) => u.unmount(),
        }
    }
}

/// umount(2); if busy, detach lazily (the session then ends when the last
/// user lets go).
pub fn unmount_path(p: &Path) -> io::Result<()> {
    match nix::mount::umount2(p, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            tracing::warn!(mountpoint = %p.display(), "mount busy, detaching lazily");
            nix::mount::umount2(p, MntFlags::MNT_DETACH).map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

fn session_config() -> Config {
    let mut c = Config::default();
    // Requests are handed to tokio at once; one reader thread keeps up.
    c.n_threads = Some(1);
    c
}

/// Mounts and completes the FUSE handshake. On return the mount is live.
pub fn mount(fs: WeftFs, spec: &MountSpec) -> io::Result<(Session<WeftFs>, Unmounter)> {
    match mount_direct(spec)? {
        Some(dev) => {
            let session =
                Session::from_fd(fs, dev, spec.acl, session_config()).inspect_err(|_| {
                    let _ = nix::mount::umount2(&spec.mountpoint, MntFlags::MNT_DETACH);
                })?;
            Ok((session, Unmounter::Direct(spec.mountpoint.clone())))
        }
        None => {
            tracing::info!("mount(2) not permitted, using fusermount3");
            let mut opts = vec![
                // fusermount3 takes it inside its comma-separated option
                // string: a source listing several MDS nodes shows with ';'.
                MountOption::FSName(spec.source.replace(',', ";")),
                MountOption::DefaultPermissions,
                MountOption::NoSuid,
                MountOption::NoDev,
            ];
            if let Some(s) = &spec.subtype {
                opts.push(MountOption::Subtype(s.clone()));
            }
            if spec.ro {
                opts.push(MountOption::RO);
            }
            if spec.noatime {
                opts.push(MountOption::NoAtime);
            }
            let mut config = session_config();
            config.mount_options = opts;
            config.acl = spec.acl;
            let mut session = Session::new(fs, &spec.mountpoint, &config)?;
            let unmounter = session.unmount_callable();
            Ok((session, Unmounter::Helper(unmounter)))
        }
    }
}

/// mount(2) with our own /dev/fuse descriptor. None: not permitted.
fn mount_direct(spec: &MountSpec) -> io::Result<Option<OwnedFd>> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/fuse: {e}")))?;
    let data = spec.kernel_options(
        dev.as_raw_fd(),
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let fstype = spec.fstype();
    match nix::mount::mount(
        Some(spec.source.as_str()),
        &spec.mountpoint,
        Some(fstype.as_str()),
        spec.flags(),
        Some(data.as_str()),
    ) {
        Ok(()) => Ok(Some(OwnedFd::from(dev))),
        Err(nix::errno::Errno::EPERM) => Ok(None),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "mount of {} ({fstype}) at {} failed: {e}",
                spec.source,
                spec.mountpoint.display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{parse_args, Parsed};

    fn spec(args: &[&str]) -> MountSpec {
        let Ok(Parsed::Run(c)) = parse_args(args.iter().copied()) else {
            panic!()
        };
        MountSpec::new(&c.mountpoint, &c.source, &c.opts)
    }

    #[test]
    fn defaults() {
        let s = spec(&["127.0.0.1:9000", "/m"]);
        assert_eq!(s.source, "127.0.0.1:9000");
        assert_eq!(s.fstype(), "fuse.weftfs");
        assert_eq!(
            s.kernel_options(5, 0, 0),
            "fd=5,rootmode=40000,user_id=0,group_id=0,default_permissions"
        );
        assert_eq!(s.flags(), MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        assert_eq!(s.acl, SessionACL::Owner);
    }

    #[test]
    fn honoured_options() {
        let s = spec(&[
            "h:1",
            "/m",
            "-o",
            "ro,noatime,allow_other,fsname=x,nosubtype",
        ]);
        assert_eq!(s.source, "x");
        assert_eq!(s.fstype(), "fuse");
        assert!(s.flags().contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
        let root = spec(&["h:1", "/m", "-o", "rw,dev,suid"]);
        assert!(!root
            .flags()
            .intersects(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
        assert!(s.kernel_options(3, 1, 2).ends_with(",allow_other"));
        assert!(s.flags().contains(MsFlags::MS_RDONLY | MsFlags::MS_NOATIME));
        assert_eq!(s.acl, SessionACL::All);
        assert_eq!(
            spec(&["h:1", "/m", "-o", "subtype=abc"]).fstype(),
            "fuse.abc"
        );
    }
}
