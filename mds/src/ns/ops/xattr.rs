//! Extended attributes: get, list, set, remove.
//!
//! Names are stored as given, any namespace; the checks are the VFS's
//! `xattr_permission`: security.* is left to the LSM (none here); system.*
//! (POSIX ACLs) may be written by the owner or root only; trusted.* is root's
//! (others get ENODATA reading, EPERM writing, and don't see the names in
//! listxattr); user.* only on regular files and directories, writing to a
//! sticky directory's needs its owner, then read/write permission.
//! Limits: names 1..=255 bytes (ERANGE), values up to 64 KiB (E2BIG), all of an
//! inode's xattrs together up to 1 MiB (ENOSPC) to keep the in-memory
//! namespace bounded. set/remove stamp ctime.

use crate::ns::acl;
use crate::ns::inode::{Inode, Kind, Time, S_ISGID, S_ISVTX};
use crate::ns::perm::{check_access, MAY_READ, MAY_WRITE};
use crate::ns::{pb, Caller, Ctx, Errno, Namespace, Prepared, Record};
use pb::meta_reply::Result as ReplyResult;

pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;
pub const XATTR_NAME_MAX: usize = 255;
pub const XATTR_SIZE_MAX: usize = 64 * 1024;
/// All names and values of one inode together.
pub const XATTR_TOTAL_MAX: usize = 1024 * 1024;

fn check_xattr_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name.len() > XATTR_NAME_MAX {
        return Err(Errno::ERANGE);
    }
    Ok(())
}

/// `xattr_permission`.
fn xattr_permission(i: &Inode, caller: &Caller, name: &[u8], write: bool) -> Result<(), Errno> {
    if name.starts_with(b"security.") {
        return Ok(());
    }
    if name.starts_with(b"system.") {
        return if write && !caller.owns(i) {
            Err(Errno::EPERM)
        } else {
            Ok(())
        };
    }
    if name.starts_with(b"trusted.") {
        return match (caller.is_root(), write) {
            (true, _) => Ok(()),
            (false, true) => Err(Errno::EPERM),
            (false, false) => Err(Errno::ENODATA),
        };
    }
    if name.starts_with(b"user.") {
        if !matches!(i.kind, Kind::Regular | Kind::Directory) {
            return Err(if write { Errno::EPERM } else { Errno::ENODATA });
        }
        if write && i.is_dir() && i.mode & S_ISVTX != 0 && !caller.owns(i) {
            return Err(Errno::EPERM);
        }
    }
    check_access(i, caller, if write { MAY_WRITE } else { MAY_READ })
}

impl Namespace {
    pub(crate) fn getxattr(
        &self,
        caller: &Caller,
        ino: u64,
        name: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        let i = self.inode(ino)?;
        check_xattr_name(name)?;
        xattr_permission(i, caller, name, false)?;
        i.xattrs.get(name).cloned().ok_or(Errno::ENODATA)
    }

    pub(crate) fn listxattr(&self, caller: &Caller, ino: u64) -> Result<pb::Names, Errno> {
        let i = self.inode(ino)?;
        let names = i
            .xattrs
            .keys()
            .filter(|n| caller.is_root() || !n.starts_with(b"trusted."))
            .cloned()
            .collect();
        Ok(pb::Names { names })
    }

    pub(crate) fn prepare_setxattr(
        &self,
        ctx: &Ctx,
        r: &pb::SetXattrReq,
    ) -> Result<Prepared, Errno> {
        let i = self.inode(r.ino)?;
        if r.flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return Err(Errno::EINVAL);
        }
        check_xattr_name(&r.name)?;
        if r.value.len() > XATTR_SIZE_MAX {
            return Err(Errno::E2BIG);
        }
        xattr_permission(i, &ctx.caller, &r.name, true)?;
        let old = i.xattrs.get(&r.name);
        if r.flags & XATTR_CREATE != 0 && old.is_some() {
            return Err(Errno::EEXIST);
        }
        if r.flags & XATTR_REPLACE != 0 && old.is_none() {
            return Err(Errno::ENODATA);
        }
        if acl::is_acl_name(&r.name) {
            return self.prepare_set_acl(ctx, i, r);
        }
        let total: usize = i.xattrs.iter().map(|(n, v)| n.len() + v.len()).sum();
        let after =
            total - old.map_or(0, |v| r.name.len() + v.len()) + r.name.len() + r.value.len();
        if after > XATTR_TOTAL_MAX {
            return Err(Errno::ENOSPC);
        }
        Ok(Prepared::Record(Record::SetXattr {
            ino: r.ino,
            name: r.name.clone(),
            value: r.value.clone(),
            now: ctx.now,
        }))
    }

    /// system.posix_acl_access / _default (`set_posix_acl`): validated; a
    /// default ACL only on directories (an empty one removes it); an access
    /// ACL sets the mode's permission bits and is dropped when the mode
    /// says it all (`posix_acl_update_mode`, which also drops setgid for a
    /// caller outside the file's group).
    fn prepare_set_acl(
        &self,
        ctx: &Ctx,
        i: &Inode,
        r: &pb::SetXattrReq,
    ) -> Result<Prepared, Errno> {
        if r.name == acl::DEFAULT {
            if !i.is_dir() {
                return Err(if r.value.is_empty() {
                    Errno::ENODATA
                } else {
                    Errno::EACCES
                });
            }
            if r.value.is_empty() {
                return Ok(Prepared::Record(Record::RemoveXattr {
                    ino: r.ino,
                    name: r.name.clone(),
                    now: ctx.now,
                }));
            }
            acl::parse(&r.value)?;
            return Ok(Prepared::Record(Record::SetXattr {
                ino: r.ino,
                name: r.name.clone(),
                value: r.value.clone(),
                now: ctx.now,
            }));
        }
        let entries = acl::parse(&r.value)?;
        let (bits, equiv) = acl::equiv_mode(&entries);
        let mut mode = (i.mode & !0o777) | bits;
        if !ctx.caller.is_root() && !ctx.caller.in_group(i.gid) {
            mode &= !S_ISGID;
        }
        Ok(Prepared::Record(Record::SetAcl {
            ino: r.ino,
            value: (!equiv).then(|| acl::encode(&entries)),
            mode,
            now: ctx.now,
        }))
    }

    pub(crate) fn apply_set_acl(
        &mut self,
        ino: u64,
        value: Option<&[u8]>,
        mode: u32,
        now: Time,
    ) -> Result<ReplyResult, Errno> {
        let i = self.inodes.get_mut(&ino).ok_or(Errno::EIO)?;
        match value {
            Some(v) => i.xattrs.insert(acl::ACCESS.to_vec(), v.to_vec()),
            None => i.xattrs.remove(acl::ACCESS),
        };
        i.mode = mode;
        i.ctime = now;
        Ok(ReplyResult::Empty(pb::Empty {}))
    }

    pub(crate) fn prepare_removexattr(
        &self,
        ctx: &Ctx,
        r: &pb::RemoveXattrReq,
    ) -> Result<Prepared, Errno> {
        let i = self.inode(r.ino)?;
        check_xattr_name(&r.name)?;
        xattr_permission(i, &ctx.caller, &r.name, true)?;
        if !i.xattrs.contains_key(&r.name) {
            return Err(Errno::ENODATA);
        }
        Ok(Prepared::Record(Record::RemoveXattr {
            ino: r.ino,
            name: r.name.clone(),
            now: ctx.now,
        }))
    }

    pub(crate) fn apply_setxattr(
        &mut self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        now: Time,
    ) -> Result<ReplyResult, Errno> {
        let i = self.inodes.get_mut(&ino).ok_or(Errno::EIO)?;
        i.xattrs.insert(name.to_vec(), value.to_vec());
        i.ctime = now;
        Ok(ReplyResult::Empty(pb::Empty {}))
    }

    pub(crate) fn apply_removexattr(
        &mut self,
        ino: u64,
        name: &[u8],
        now: Time,
    ) -> Result<ReplyResult, Errno> {
        let i = self.inodes.get_mut(&ino).ok_or(Errno::EIO)?;
        i.xattrs.remove(name).ok_or(Errno::EIO)?;
        i.ctime = now;
        Ok(ReplyResult::Empty(pb::Empty {}))
    }
}
