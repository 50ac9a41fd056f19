//! Permission checks and name rules, after Linux `generic_permission`,
//! `may_delete`/`check_sticky`, `inode_init_owner` and ext4's name limits.
//!
//! Root (uid 0) stands for every capability (CAP_DAC_OVERRIDE, CAP_FOWNER,
//! CAP_CHOWN, CAP_FSETID, CAP_MKNOD, CAP_SYS_ADMIN): the MDS sees only ids.

use super::inode::{Inode, Kind, S_ISGID, S_ISVTX, S_IXGRP};
use super::{Caller, Errno};

pub const MAY_EXEC: u32 = 1;
pub const MAY_WRITE: u32 = 2;
pub const MAY_READ: u32 = 4;

/// ext4's EXT4_NAME_LEN.
pub const NAME_MAX: usize = 255;
/// Longest symlink target (PATH_MAX less the NUL).
pub const SYMLINK_MAX: usize = 4095;
/// Hard-link limit for non-directories (ext4's EXT4_LINK_MAX).
pub const LINK_MAX: u32 = 65000;

impl Caller {
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// `in_group_p`: the primary or a supplementary group.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// `inode_owner_or_capable`.
    pub fn owns(&self, inode: &Inode) -> bool {
        self.is_root() || self.uid == inode.uid
    }
}

/// `generic_permission`: the access ACL if there is one (acl.rs), else owner
/// bits if the caller owns the inode, else group bits if in its group, else
/// other bits. Root passes everything except
/// execute on a non-directory with no x bit at all.
pub fn may_access(inode: &Inode, caller: &Caller, mask: u32) -> bool {
    if caller.is_root() {
        return mask & MAY_EXEC == 0 || inode.is_dir() || inode.mode & 0o111 != 0;
    }
    if let Some(acl) = inode
        .xattrs
        .get(super::acl::ACCESS)
        .and_then(|v| super::acl::parse(v).ok())
    {
        return super::acl::permits(&acl, inode, caller, mask);
    }
    let bits = if caller.uid == inode.uid {
        inode.mode >> 6
    } else if caller.in_group(inode.gid) {
        inode.mode >> 3
    } else {
        inode.mode
    } & 7;
    bits & mask == mask
}

pub fn check_access(inode: &Inode, caller: &Caller, mask: u32) -> Result<(), Errno> {
    if may_access(inode, caller, mask) {
        Ok(())
    } else {
        Err(Errno::EACCES)
    }
}

/// `check_sticky`: in a sticky directory only the file's owner, the
/// directory's owner or root may remove or rename an entry.
pub fn sticky_denies(dir: &Inode, victim: &Inode, caller: &Caller) -> bool {
    dir.mode & S_ISVTX != 0
        && caller.uid != victim.uid
        && caller.uid != dir.uid
        && !caller.is_root()
}

/// `may_delete` minus the type checks: write+search on the directory, then the
/// sticky rule.
pub fn may_delete(dir: &Inode, victim: &Inode, caller: &Caller) -> Result<(), Errno> {
    check_access(dir, caller, MAY_WRITE | MAY_EXEC)?;
    if sticky_denies(dir, victim, caller) {
        return Err(Errno::EPERM);
    }
    Ok(())
}

/// A component name to create or look up: not empty, at most NAME_MAX bytes,
/// no '/' or NUL. ("." and ".." are the callers' business: each op treats
/// them differently.)
pub fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() {
        return Err(Errno::ENOENT);
    }
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

pub fn is_dot_or_dotdot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// Owner, group and final mode of a new inode (`inode_init_owner` plus
/// `mode_strip_sgid`): a setgid parent passes on its group, and its setgid bit
/// to subdirectories; a new non-directory keeps setgid+group-exec only if the
/// creator is in its group or is root.
pub fn new_owner(parent: &Inode, caller: &Caller, kind: Kind, mut mode: u32) -> (u32, u32, u32) {
    let gid = if parent.mode & S_ISGID != 0 {
        if kind == Kind::Directory {
            mode |= S_ISGID;
        }
        parent.gid
    } else {
        caller.gid
    };
    if kind != Kind::Directory
        && mode & (S_ISGID | S_IXGRP) == (S_ISGID | S_IXGRP)
        && !caller.in_group(gid)
        && !caller.is_root()
    {
        mode &= !S_ISGID;
    }
    (caller.uid, gid, mode)
}

/// Whether a write or truncate by `caller` strips setuid/setgid
/// (`file_remove_privs`): any non-root caller on a regular file.
pub fn write_kills_privs(inode: &Inode, caller: &Caller) -> bool {
    inode.kind == Kind::Regular && !caller.is_root()
}

/// The mode after a write-like change by a caller without CAP_FSETID:
/// setuid always goes, setgid only when group-exec makes it meaningful
/// (without group-exec it marks mandatory locking, which a write keeps).
pub fn killed_privs(mode: u32) -> u32 {
    let mut mode = mode & !libc::S_ISUID;
    if mode & S_IXGRP != 0 {
        mode &= !S_ISGID;
    }
    mode
}
