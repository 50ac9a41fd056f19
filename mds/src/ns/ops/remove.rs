//! unlink and rmdir (`Record::Remove`), and dropping a link in general.
//!
//! Check order is Linux's: "." / ".." first, search permission, ENOENT, then
//! `may_delete` (EACCES, sticky EPERM), then the type (EISDIR / ENOTDIR), then
//! ENOTEMPTY. An inode losing its last link is purged at once unless it is
//! open: then it stays with nlink 0 until the last release.

use super::create::touch_dir;
use crate::ns::inode::Time;
use crate::ns::perm::{check_access, check_name, may_delete, MAY_EXEC};
use crate::ns::{pb, Ctx, Errno, Name, Namespace, Prepared, Record};
use pb::meta_reply::Result as ReplyResult;

impl Namespace {
    pub(crate) fn prepare_remove(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &[u8],
        rmdir: bool,
    ) -> Result<Prepared, Errno> {
        match (name, rmdir) {
            (b".", true) => return Err(Errno::EINVAL),
            (b"..", true) => return Err(Errno::ENOTEMPTY),
            (b"." | b"..", false) => return Err(Errno::EISDIR),
            _ => {}
        }
        let (p, dir) = self.live_dir(parent)?;
        check_access(p, &ctx.caller, MAY_EXEC)?;
        check_name(name)?;
        let victim = self.child(dir, name).ok_or(Errno::ENOENT)?;
        may_delete(p, victim, &ctx.caller)?;
        if rmdir {
            let d = victim.dir().ok_or(Errno::ENOTDIR)?;
            if !d.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
        } else if victim.is_dir() {
            return Err(Errno::EISDIR);
        }
        Ok(Prepared::Record(Record::Remove {
            parent,
            name: name.to_vec(),
            ino: victim.ino,
            purge: !self.is_open(victim.ino),
            now: ctx.now,
        }))
    }

    pub(crate) fn apply_remove(
        &mut self,
        parent: u64,
        name: &[u8],
        ino: u64,
        purge: bool,
        now: Time,
        freed: &mut Vec<u64>,
    ) -> Result<ReplyResult, Errno> {
        match self
            .inodes
            .get(&parent)
            .and_then(|p| p.dir())
            .and_then(|d| d.get(name))
        {
            Some(e) if e.ino == ino && self.inodes.contains_key(&ino) => {}
            _ => return Err(Errno::EIO),
        }
        self.drop_link(parent, name, now);
        self.finish_unlinked(ino, purge, freed);
        Ok(ReplyResult::Empty(pb::Empty {}))
    }

    /// Removes the entry `parent/name` (which must exist) and its link:
    /// parent mtime/ctime, the inode's ctime and nlink (a directory's goes to
    /// 0 and its parent loses the ".." link).
    pub(crate) fn drop_link(&mut self, parent: u64, name: &[u8], now: Time) {
        let p = self.inodes.get_mut(&parent).expect("parent exists");
        let e = p
            .dir_mut()
            .expect("parent is a directory")
            .remove(name)
            .expect("entry exists");
        touch_dir(p, now);
        let victim = self.inodes.get_mut(&e.ino).expect("entry's inode exists");
        victim.ctime = now;
        if victim.is_dir() {
            victim.nlink = 0;
            let p = self.inodes.get_mut(&parent).expect("parent exists");
            p.nlink -= 1;
        } else {
            victim.nlink -= 1;
            if victim.nlink > 0 && victim.parent == parent && victim.name == name {
                // The remembered link is gone; another one survives somewhere.
                victim.parent = 0;
                victim.name = Name::default();
            }
        }
    }

    /// After a link was dropped: purge the inode if it has none left and the
    /// record says it is not open.
    pub(crate) fn finish_unlinked(&mut self, ino: u64, purge: bool, freed: &mut Vec<u64>) {
        if purge && self.inodes.get(&ino).is_some_and(|i| i.nlink == 0) {
            freed.extend(self.purge_inode(ino));
        }
    }
}
