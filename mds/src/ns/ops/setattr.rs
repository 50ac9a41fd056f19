//! setattr (chmod, chown, truncate, utimens) and open, whose O_TRUNC is a
//! truncate. Both become `Record::SetAttr` with final values.
//!
//! Rules (Linux `setattr_prepare`/`notify_change`, `do_truncate`, `may_open`):
//! - truncate: regular files only (EISDIR / EINVAL), write permission (the
//!   checked unless the request comes through an open descriptor, `has_fh`,
//!   whose open already checked it, as Linux skips it for ftruncate; root passes),
//!   EFBIG past MAX_FILE_SIZE; sets mtime+ctime and, for a non-root caller,
//!   clears setuid (and setgid with group-exec). Shrinking drops the chunks
//!   wholly past the new size; the boundary chunk stays (the client zeroes
//!   its tail on the replicas).
//! - chown: only root changes the owner; the owner may change the group to
//!   one of theirs; else EPERM. Any chown of a non-directory clears setuid,
//!   and setgid when group-exec is set or the caller is not root and not in
//!   the file's group.
//! - chmod: owner or root (EPERM); a non-root caller not in the (new) group
//!   loses setgid. A change that only clears setuid/setgid needs just write
//!   permission: it is the kernel dropping privileges before a non-owner's
//!   write, truncate or fallocate.
//! - times: explicit values need owner or root (EPERM); "now" needs owner,
//!   root or write permission (EACCES).
//! - every change sets ctime.

use crate::ns::acl;
use crate::ns::inode::{Body, Inode, Kind, Time, MODE_MASK, S_ISGID, S_ISUID, S_IXGRP};
use crate::ns::perm::{
    check_access, killed_privs, may_access, write_kills_privs, MAY_READ, MAY_WRITE,
};
use crate::ns::{pb, Ctx, Errno, Namespace, Prepared, Record, MAX_FILE_SIZE};
use pb::meta_reply::Result as ReplyResult;

impl Namespace {
    pub(crate) fn prepare_setattr(&self, ctx: &Ctx, r: &pb::SetAttrReq) -> Result<Prepared, Errno> {
        let i = self.inode(r.ino)?;
        if r.atime_update != 0 {
            return self.prepare_access_time(ctx, i, r.atime_update);
        }
        let caller = &ctx.caller;
        let mut mode = i.mode;
        let mut mtime = None;
        if let Some(size) = r.size {
            match i.kind {
                Kind::Regular => {}
                Kind::Directory => return Err(Errno::EISDIR),
                _ => return Err(Errno::EINVAL),
            }
            if !r.has_fh {
                check_access(i, caller, MAY_WRITE)?;
            }
            if size > MAX_FILE_SIZE {
                return Err(Errno::EFBIG);
            }
            mtime = Some(ctx.now);
        }
        if let Some(uid) = r.uid {
            if !(caller.is_root() || caller.uid == i.uid && uid == i.uid) {
                return Err(Errno::EPERM);
            }
        }
        if let Some(gid) = r.gid {
            if !(caller.is_root() || caller.uid == i.uid && (gid == i.gid || caller.in_group(gid)))
            {
                return Err(Errno::EPERM);
            }
        }
        if let Some(m) = r.mode {
            // Before a write, truncate or fallocate by a non-owner, the kernel
            // clears setuid/setgid itself (file_remove_privs, ATTR_FORCE) and
            // FUSE sends that as a chmod: it needs only write permission.
            let drops_privs_only = m & MODE_MASK != i.mode
                && (m & MODE_MASK) | S_ISUID | S_ISGID == i.mode | S_ISUID | S_ISGID
                && m & MODE_MASK & !i.mode == 0;
            let may_drop = drops_privs_only && may_access(i, caller, MAY_WRITE);
            if !(caller.owns(i) || may_drop) {
                return Err(Errno::EPERM);
            }
            mode = m & MODE_MASK;
            if !caller.is_root() && !caller.in_group(r.gid.unwrap_or(i.gid)) {
                mode &= !S_ISGID;
            }
        }
        let resolve = |t: &pb::TimeSet| {
            if t.now {
                ctx.now
            } else {
                t.time.map(Time::from).unwrap_or_default()
            }
        };
        let times = [r.atime.as_ref(), r.mtime.as_ref()];
        if times.iter().flatten().any(|t| !t.now) && !caller.owns(i) {
            return Err(Errno::EPERM);
        }
        if times.iter().flatten().any(|t| t.now)
            && !caller.owns(i)
            && !may_access(i, caller, MAY_WRITE)
        {
            return Err(Errno::EACCES);
        }
        let atime = r.atime.as_ref().map(resolve);
        if let Some(t) = r.mtime.as_ref() {
            mtime = Some(resolve(t));
        }
        if (r.uid.is_some() || r.gid.is_some()) && !i.is_dir() {
            mode = chown_killed_privs(i, caller, mode);
        }
        if r.size.is_some() && write_kills_privs(i, caller) {
            mode = killed_privs(mode);
        }
        if r.mode.is_none()
            && r.uid.is_none()
            && r.gid.is_none()
            && r.size.is_none()
            && atime.is_none()
            && mtime.is_none()
        {
            return Ok(Prepared::Reply(ReplyResult::Attr(self.attr_of(i))));
        }
        Ok(Prepared::Record(Record::SetAttr {
            ino: r.ino,
            mode: (r.mode.is_some() || mode != i.mode).then_some(mode),
            uid: r.uid,
            gid: r.gid,
            size: r.size,
            atime,
            mtime,
            ctime: ctx.now,
        }))
    }

    pub(crate) fn prepare_open(&self, ctx: &Ctx, r: &pb::OpenReq) -> Result<Prepared, Errno> {
        let i = self.inode(r.ino)?;
        self.open_inode(ctx, i, r.flags)
    }

    /// `may_open` on an existing inode; O_TRUNC of a regular file is a
    /// truncate to 0 (always a record: it stamps mtime/ctime even when the
    /// file is already empty, as Linux does).
    pub(crate) fn open_inode(&self, ctx: &Ctx, i: &Inode, flags: u32) -> Result<Prepared, Errno> {
        let flags = flags as i32;
        let acc = flags & libc::O_ACCMODE;
        let trunc = flags & libc::O_TRUNC != 0;
        // execve(2) opens the program with __FMODE_EXEC (0x20 in the open
        // flags FUSE passes on): that needs execute permission, not read.
        const FMODE_EXEC: i32 = 0x20;
        let mut mask = match acc {
            libc::O_RDONLY if flags & FMODE_EXEC != 0 => crate::ns::perm::MAY_EXEC,
            libc::O_RDONLY => MAY_READ,
            libc::O_WRONLY => MAY_WRITE,
            _ => MAY_READ | MAY_WRITE,
        };
        if trunc {
            mask |= MAY_WRITE;
        }
        match i.kind {
            Kind::Symlink => return Err(Errno::ELOOP),
            Kind::Directory if mask & MAY_WRITE != 0 => return Err(Errno::EISDIR),
            Kind::Directory => {}
            _ if flags & libc::O_DIRECTORY != 0 => return Err(Errno::ENOTDIR),
            _ => {}
        }
        check_access(i, &ctx.caller, mask)?;
        if !(trunc && i.kind == Kind::Regular) {
            return Ok(Prepared::Reply(ReplyResult::Attr(self.attr_of(i))));
        }
        let mode = if write_kills_privs(i, &ctx.caller) {
            killed_privs(i.mode)
        } else {
            i.mode
        };
        Ok(Prepared::Record(Record::SetAttr {
            ino: i.ino,
            mode: (mode != i.mode).then_some(mode),
            uid: None,
            gid: None,
            size: Some(0),
            atime: None,
            mtime: Some(ctx.now),
            ctime: ctx.now,
        }))
    }

    pub(crate) fn apply_setattr(
        &mut self,
        rec: &Record,
        freed: &mut Vec<u64>,
    ) -> Result<ReplyResult, Errno> {
        let Record::SetAttr {
            ino,
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            ctime,
        } = rec
        else {
            unreachable!("apply_setattr takes SetAttr records")
        };
        match self.inodes.get(ino) {
            Some(i) if size.is_none() || i.kind == Kind::Regular => {}
            _ => return Err(Errno::EIO),
        }
        if let Some(size) = size {
            self.truncate(*ino, *size, freed);
        }
        let i = self.inodes.get_mut(ino).expect("checked above");
        if let Some(m) = mode {
            i.mode = m & MODE_MASK;
            // chmod rewrites the access ACL's owner, group-class and other
            // entries to match (`posix_acl_chmod`).
            if let Some(mut entries) = i.xattrs.get(acl::ACCESS).and_then(|v| acl::parse(v).ok()) {
                acl::chmod(&mut entries, i.mode);
                i.xattrs.insert(acl::ACCESS.to_vec(), acl::encode(&entries));
            }
        }
        if let Some(u) = uid {
            i.uid = *u;
        }
        if let Some(g) = gid {
            i.gid = *g;
        }
        if let Some(t) = atime {
            i.atime = *t;
        }
        if let Some(t) = mtime {
            i.mtime = *t;
        }
        i.ctime = *ctime;
        let attr = i.attr(self.chunk_size);
        Ok(ReplyResult::Attr(attr))
    }

    /// Sets a regular file's size, dropping the chunks that start at or past it.
    pub(crate) fn truncate(&mut self, ino: u64, size: u64, freed: &mut Vec<u64>) {
        let cs = self.chunk_size;
        let keep = size.div_ceil(cs);
        let i = self.inodes.get_mut(&ino).expect("inode exists");
        self.bytes = self.bytes - i.size + size;
        // weftfs cuts the chunk holding the smaller of the two sizes on its
        // replicas (a truncate there frees the blocks past the cut, reserved
        // ones too): its allocation shrinks to at most the pages before it.
        let cut = i.size.min(size);
        if !cut.is_multiple_of(cs) {
            if let Some(bytes) = i.alloc.get_mut(&(cut / cs)) {
                *bytes = (*bytes).min((cut % cs).next_multiple_of(PAGE));
            }
        }
        i.size = size;
        if let Body::Packed {
            len,
            unpack_to,
            chunk,
            ..
        } = &mut i.body
        {
            let (chunk, before) = (*chunk, *len);
            let after = if size == 0 {
                None
            } else {
                Some(before.min(size))
            };
            // The live figure counts what a reader gets of the needle.
            if after != Some(before) {
                let live = self.live.entry(chunk).or_default();
                live.remove(before);
                if let Some(l) = after {
                    live.add(l);
                }
                if live.needles == 0 {
                    self.live.remove(&chunk);
                }
            }
            if size == 0 {
                // Empty again: it may be packed anew; an unpack under way
                // loses its chunk (its Unpack then finds nothing to do).
                if let Some(c) = unpack_to.take() {
                    self.chunk_owners.remove(&c.id);
                    freed.push(c.id);
                }
                i.body = Body::File {
                    chunks: Default::default(),
                };
            } else {
                *len = (*len).min(size);
            }
            return;
        }
        drop(i.alloc.split_off(&keep));
        let chunks = i.chunks_mut().expect("a regular file");
        let dropped = chunks.split_off(&keep);
        for c in dropped.values() {
            self.chunk_owners.remove(&c.id);
            freed.push(c.id);
        }
    }
}

/// The allocation unit of the daemons' file systems, as far as a replica
/// truncate's effect on st_blocks goes.
const PAGE: u64 = 4096;

/// The mode after chown of a non-directory (`notify_change` with
/// ATTR_KILL_SUID | ATTR_KILL_SGID): setuid always goes, even for root;
/// setgid goes if group-exec is set, or if the caller is neither root nor in
/// the file's group.
fn chown_killed_privs(i: &Inode, caller: &crate::ns::Caller, mut mode: u32) -> u32 {
    mode &= !S_ISUID;
    if mode & S_ISGID != 0
        && (mode & S_IXGRP != 0 || (!caller.is_root() && !caller.in_group(i.gid)))
    {
        mode &= !S_ISGID;
    }
    mode
}
