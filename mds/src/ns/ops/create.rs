//! New names: mknod, mkdir, create, symlink (all `Record::Create`) and link.
//!
//! Check order follows Linux (`filename_create` then `may_create`): search
//! permission on the parent, then EEXIST, then write permission (EACCES) — so
//! `mkdir` of an existing name in an unwritable directory says EEXIST.

use crate::ns::acl;
use crate::ns::inode::{Body, Inode, Kind, Time, MODE_MASK, S_IFMT};
use crate::ns::perm::{
    check_access, check_name, is_dot_or_dotdot, new_owner, LINK_MAX, MAY_EXEC, MAY_WRITE,
    SYMLINK_MAX,
};
use crate::ns::{pb, Caller, Ctx, Errno, Name, Namespace, Prepared, Record};
use pb::meta_reply::Result as ReplyResult;

impl Namespace {
    /// Checks for adding `parent/name`; returns the parent inode.
    fn new_entry_parent(&self, caller: &Caller, parent: u64, name: &[u8]) -> Result<&Inode, Errno> {
        let (p, dir) = self.live_dir(parent)?;
        check_access(p, caller, MAY_EXEC)?;
        if is_dot_or_dotdot(name) {
            return Err(Errno::EEXIST);
        }
        check_name(name)?;
        if dir.get(name).is_some() {
            return Err(Errno::EEXIST);
        }
        check_access(p, caller, MAY_WRITE | MAY_EXEC)?;
        Ok(p)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_record(
        &self,
        ctx: &Ctx,
        p: &Inode,
        name: &[u8],
        kind: Kind,
        mode: u32,
        rdev: u32,
        target: &[u8],
    ) -> Prepared {
        let (uid, gid, mode) = new_owner(p, &ctx.caller, kind, mode);
        Prepared::Record(Record::Create {
            parent: p.ino,
            name: name.to_vec(),
            ino: self.next_ino,
            kind,
            mode,
            uid,
            gid,
            rdev,
            target: target.to_vec(),
            now: ctx.now,
        })
    }

    pub(crate) fn prepare_mknod(&self, ctx: &Ctx, r: &pb::MknodReq) -> Result<Prepared, Errno> {
        // may_mknod: directories are mkdir's, symlinks symlink's.
        let kind = match Kind::from_mode(r.mode) {
            Some(Kind::Directory) => return Err(Errno::EPERM),
            Some(Kind::Symlink) | None => return Err(Errno::EINVAL),
            Some(k) => k,
        };
        let p = self.new_entry_parent(&ctx.caller, r.parent, &r.name)?;
        let device = matches!(kind, Kind::CharDevice | Kind::BlockDevice);
        if device && !ctx.caller.is_root() {
            return Err(Errno::EPERM); // CAP_MKNOD
        }
        let mode = acl_mode(p, r.mode & MODE_MASK, r.umask);
        let rdev = if device { r.rdev } else { 0 };
        Ok(self.create_record(ctx, p, &r.name, kind, mode, rdev, &[]))
    }

    pub(crate) fn prepare_mkdir(&self, ctx: &Ctx, r: &pb::MkdirReq) -> Result<Prepared, Errno> {
        let p = self.new_entry_parent(&ctx.caller, r.parent, &r.name)?;
        // vfs_mkdir keeps only rwx and sticky from the request; setgid comes from the parent.
        let mode = acl_mode(p, r.mode & 0o1777, r.umask);
        Ok(self.create_record(ctx, p, &r.name, Kind::Directory, mode, 0, &[]))
    }

    pub(crate) fn prepare_symlink(&self, ctx: &Ctx, r: &pb::SymlinkReq) -> Result<Prepared, Errno> {
        if r.target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if r.target.len() > SYMLINK_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let p = self.new_entry_parent(&ctx.caller, r.parent, &r.name)?;
        Ok(self.create_record(ctx, p, &r.name, Kind::Symlink, 0o777, 0, &r.target))
    }

    /// open(O_CREAT): a new regular file, or — without O_EXCL — an open of the
    /// existing one.
    pub(crate) fn prepare_create(&self, ctx: &Ctx, r: &pb::CreateReq) -> Result<Prepared, Errno> {
        let (p, dir) = self.live_dir(r.parent)?;
        check_access(p, &ctx.caller, MAY_EXEC)?;
        if is_dot_or_dotdot(&r.name) {
            return Err(Errno::EISDIR);
        }
        check_name(&r.name)?;
        if let Some(existing) = self.child(dir, &r.name) {
            if r.flags as i32 & libc::O_EXCL != 0 {
                return Err(Errno::EEXIST);
            }
            if existing.is_dir() {
                return Err(Errno::EISDIR);
            }
            return self.open_inode(ctx, existing, r.flags);
        }
        check_access(p, &ctx.caller, MAY_WRITE | MAY_EXEC)?;
        let mode = acl_mode(p, r.mode & MODE_MASK & !S_IFMT, r.umask);
        Ok(self.create_record(ctx, p, &r.name, Kind::Regular, mode, 0, &[]))
    }

    pub(crate) fn prepare_link(&self, ctx: &Ctx, r: &pb::LinkReq) -> Result<Prepared, Errno> {
        let inode = self.inode(r.ino)?;
        self.new_entry_parent(&ctx.caller, r.new_parent, &r.new_name)?;
        if inode.is_dir() {
            return Err(Errno::EPERM);
        }
        if inode.nlink == 0 {
            return Err(Errno::ENOENT);
        }
        if inode.nlink >= LINK_MAX {
            return Err(Errno::EMLINK);
        }
        Ok(Prepared::Record(Record::Link {
            ino: r.ino,
            new_parent: r.new_parent,
            new_name: r.new_name.clone(),
            now: ctx.now,
        }))
    }

    pub(crate) fn apply_create(&mut self, rec: &Record) -> Result<ReplyResult, Errno> {
        let Record::Create {
            parent,
            name,
            ino,
            kind,
            mode,
            uid,
            gid,
            rdev,
            target,
            now,
        } = rec
        else {
            unreachable!("apply_create takes Create records")
        };
        let (parent, ino, kind, now) = (*parent, *ino, *kind, *now);
        match self.inodes.get(&parent).and_then(|p| p.dir()) {
            Some(d) if d.get(name).is_none() && !self.inodes.contains_key(&ino) => {}
            _ => return Err(Errno::EIO),
        }
        let mut inode = Inode::new(ino, kind, *mode, *uid, *gid, now);
        inode.parent = parent;
        inode.name = Name::from(name.as_slice());
        inode.nlink = if kind == Kind::Directory { 2 } else { 1 };
        match kind {
            Kind::CharDevice | Kind::BlockDevice => inode.rdev = *rdev,
            Kind::Symlink => {
                inode.size = target.len() as u64;
                inode.body = Body::Symlink {
                    target: target.clone(),
                };
            }
            _ => {}
        }
        if kind != Kind::Symlink {
            inherit_acls(&self.inodes[&parent], &mut inode);
        }
        let attr = self.attr_of(&inode);
        self.inodes.insert(ino, inode);
        let p = self.inodes.get_mut(&parent).expect("checked above");
        p.dir_mut().expect("checked above").insert(name, ino);
        if kind == Kind::Directory {
            p.nlink += 1;
            self.dirs += 1;
        }
        touch_dir(p, now);
        self.next_ino = self.next_ino.max(ino.saturating_add(1));
        Ok(ReplyResult::Attr(attr))
    }

    pub(crate) fn apply_link(
        &mut self,
        ino: u64,
        new_parent: u64,
        new_name: &[u8],
        now: Time,
    ) -> Result<ReplyResult, Errno> {
        match (
            self.inodes.get(&ino),
            self.inodes.get(&new_parent).and_then(|p| p.dir()),
        ) {
            (Some(i), Some(d)) if !i.is_dir() && d.get(new_name).is_none() => {}
            _ => return Err(Errno::EIO),
        }
        let p = self.inodes.get_mut(&new_parent).expect("checked above");
        p.dir_mut().expect("checked above").insert(new_name, ino);
        touch_dir(p, now);
        let i = self.inodes.get_mut(&ino).expect("checked above");
        i.nlink += 1;
        i.ctime = now;
        if i.parent == 0 {
            // The remembered link was removed earlier: remember this one.
            i.parent = new_parent;
            i.name = Name::from(new_name);
        }
        let attr = i.attr(self.chunk_size);
        Ok(ReplyResult::Attr(attr))
    }
}

/// A directory's contents changed: mtime and ctime.
pub(crate) fn touch_dir(dir: &mut Inode, now: Time) {
    dir.mtime = now;
    dir.ctime = now;
}

/// The mode of a new inode: with a default ACL on the parent the ACL masks
/// the requested mode and the umask does not apply (`posix_acl_create`),
/// else the umask does.
fn acl_mode(parent: &Inode, mode: u32, umask: u32) -> u32 {
    match parent
        .xattrs
        .get(acl::DEFAULT)
        .and_then(|v| acl::parse(v).ok())
    {
        Some(default) => acl::inherit(&default, mode).1,
        None => mode & !umask,
    }
}

/// A new inode under a directory with a default ACL gets it as its access
/// ACL (masked by its mode, unless that says no more than the mode), and a
/// new directory also inherits it as its own default. Deterministic: the
/// mode in the record is already masked, and masking again changes nothing.
fn inherit_acls(parent: &Inode, inode: &mut Inode) {
    let Some(raw) = parent.xattrs.get(acl::DEFAULT) else {
        return;
    };
    let Ok(default) = acl::parse(raw) else {
        return;
    };
    let (access, _) = acl::inherit(&default, inode.mode);
    if !acl::equiv_mode(&access).1 {
        inode
            .xattrs
            .insert(acl::ACCESS.to_vec(), acl::encode(&access));
    }
    if inode.kind == Kind::Directory {
        inode.xattrs.insert(acl::DEFAULT.to_vec(), raw.clone());
    }
}
