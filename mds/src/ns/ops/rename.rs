//! rename / renameat2 (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
//!
//! Check order follows Linux `do_renameat2` + `vfs_rename` + ext4_rename:
//! flags, "."/".." (EBUSY), lookups (ENOENT), NOREPLACE/EXCHANGE existence,
//! the ancestry traps (EINVAL: a directory into its own subtree; ENOTEMPTY:
//! over an ancestor of the source), same inode ⇒ success doing nothing,
//! `may_delete` on the source, `may_delete`/`may_create` on the target with
//! the type checks (EISDIR / ENOTDIR), write permission on a directory that
//! changes parent (its ".." is rewritten), and last ENOTEMPTY for a non-empty
//! directory target.
//!
//! Effects: a moved entry gets a fresh cookie in its new directory; an
//! exchange keeps both cookies and swaps the inodes. Parents' nlink follow
//! their subdirectories; both parents get mtime/ctime, moved and replaced
//! inodes ctime. RENAME_WHITEOUT (overlayfs) leaves a 0:0 character device
//! at the source name, created as mknod would, in the same record.

use super::create::touch_dir;
use crate::ns::inode::Kind;
use crate::ns::perm::{
    check_access, check_name, is_dot_or_dotdot, may_delete, MAY_EXEC, MAY_WRITE,
};
use crate::ns::{pb, Ctx, Errno, Name, Namespace, Prepared, Record};
use pb::meta_reply::Result as ReplyResult;

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
pub const RENAME_WHITEOUT: u32 = 4;

impl Namespace {
    pub(crate) fn prepare_rename(&self, ctx: &Ctx, r: &pb::RenameReq) -> Result<Prepared, Errno> {
        let caller = &ctx.caller;
        let noreplace = r.flags & RENAME_NOREPLACE != 0;
        let exchange = r.flags & RENAME_EXCHANGE != 0;
        let whiteout = r.flags & RENAME_WHITEOUT != 0;
        // As do_renameat2: unknown flags, and EXCHANGE with either other one.
        if r.flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT) != 0
            || (exchange && (noreplace || whiteout))
        {
            return Err(Errno::EINVAL);
        }
        // A whiteout is a device node: CAP_MKNOD.
        if whiteout && !caller.is_root() {
            return Err(Errno::EPERM);
        }
        if is_dot_or_dotdot(&r.name) {
            return Err(Errno(libc::EBUSY));
        }
        if is_dot_or_dotdot(&r.new_name) {
            return Err(if noreplace {
                Errno::EEXIST
            } else {
                Errno(libc::EBUSY)
            });
        }
        let (op, odir) = self.live_dir(r.parent)?;
        let (np, ndir) = self.live_dir(r.new_parent)?;
        check_access(op, caller, MAY_EXEC)?;
        check_access(np, caller, MAY_EXEC)?;
        check_name(&r.name)?;
        check_name(&r.new_name)?;
        let src = self.child(odir, &r.name).ok_or(Errno::ENOENT)?;
        let tgt = self.child(ndir, &r.new_name);
        if noreplace && tgt.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && tgt.is_none() {
            return Err(Errno::ENOENT);
        }
        if src.is_dir() && self.is_ancestor(src.ino, r.new_parent) {
            return Err(Errno::EINVAL);
        }
        if let Some(t) = tgt {
            if t.is_dir() && self.is_ancestor(t.ino, r.parent) {
                return Err(if exchange {
                    Errno::EINVAL
                } else {
                    Errno::ENOTEMPTY
                });
            }
            if t.ino == src.ino {
                // POSIX: two links to the same file (or a name onto itself): do nothing.
                return Ok(Prepared::Reply(ReplyResult::Empty(pb::Empty {})));
            }
        }
        may_delete(op, src, caller)?;
        match tgt {
            None => check_access(np, caller, MAY_WRITE | MAY_EXEC)?,
            Some(t) => {
                may_delete(np, t, caller)?;
                if !exchange {
                    if src.is_dir() && !t.is_dir() {
                        return Err(Errno::ENOTDIR);
                    }
                    if !src.is_dir() && t.is_dir() {
                        return Err(Errno::EISDIR);
                    }
                }
            }
        }
        if r.parent != r.new_parent {
            if src.is_dir() {
                check_access(src, caller, MAY_WRITE)?;
            }
            if let Some(t) = tgt.filter(|t| exchange && t.is_dir()) {
                check_access(t, caller, MAY_WRITE)?;
            }
        }
        if let Some(t) = tgt.filter(|_| !exchange) {
            if t.dir().is_some_and(|d| !d.is_empty()) {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let rename = Record::Rename {
            parent: r.parent,
            name: r.name.clone(),
            new_parent: r.new_parent,
            new_name: r.new_name.clone(),
            ino: src.ino,
            replaced: tgt.map(|t| t.ino),
            exchange,
            purge: tgt.is_none_or(|t| !self.is_open(t.ino)),
            now: ctx.now,
        };
        if !whiteout {
            return Ok(Prepared::Record(rename));
        }
        let Prepared::Record(create) =
            self.create_record(ctx, op, &r.name, Kind::CharDevice, 0, 0, b"")
        else {
            unreachable!("create_record prepares a record")
        };
        Ok(Prepared::Record(Record::RenameWhiteout {
            rename: Box::new(rename),
            whiteout: Box::new(create),
        }))
    }

    pub(crate) fn apply_rename(
        &mut self,
        rec: &Record,
        freed: &mut Vec<u64>,
    ) -> Result<ReplyResult, Errno> {
        let Record::Rename {
            parent,
            name,
            new_parent,
            new_name,
            ino,
            replaced,
            exchange,
            purge,
            now,
        } = rec
        else {
            unreachable!("apply_rename takes Rename records")
        };
        let (parent, new_parent, ino, now) = (*parent, *new_parent, *ino, *now);
        let entry = |dir: u64, name: &[u8]| {
            self.inodes
                .get(&dir)
                .and_then(|p| p.dir())
                .map(|d| d.get(name).map(|e| e.ino))
        };
        let fits = entry(parent, name) == Some(Some(ino))
            && entry(new_parent, new_name) == Some(*replaced)
            && *replaced != Some(ino)
            && (!exchange || replaced.is_some());
        if !fits {
            return Err(Errno::EIO);
        }
        let src_is_dir = self.inodes[&ino].is_dir();
        if *exchange {
            let other = replaced.expect("checked above");
            let other_is_dir = self.inodes[&other].is_dir();
            let op = self.inodes.get_mut(&parent).expect("checked above");
            op.dir_mut().expect("checked above").set_ino(name, other);
            touch_dir(op, now);
            let np = self.inodes.get_mut(&new_parent).expect("checked above");
            np.dir_mut().expect("checked above").set_ino(new_name, ino);
            touch_dir(np, now);
            if parent != new_parent {
                let delta = src_is_dir as i64 - other_is_dir as i64;
                self.add_nlink(parent, -delta);
                self.add_nlink(new_parent, delta);
            }
            self.relink(ino, new_parent, new_name, now);
            self.relink(other, parent, name, now);
        } else {
            if replaced.is_some() {
                self.drop_link(new_parent, new_name, now);
            }
            if parent == new_parent {
                let op = self.inodes.get_mut(&parent).expect("checked above");
                op.dir_mut()
                    .expect("checked above")
                    .rename_entry(name, new_name);
                touch_dir(op, now);
            } else {
                let op = self.inodes.get_mut(&parent).expect("checked above");
                op.dir_mut().expect("checked above").remove(name);
                touch_dir(op, now);
                let np = self.inodes.get_mut(&new_parent).expect("checked above");
                np.dir_mut().expect("checked above").insert(new_name, ino);
                touch_dir(np, now);
            }
            if src_is_dir && parent != new_parent {
                self.add_nlink(parent, -1);
                self.add_nlink(new_parent, 1);
            }
            self.relink(ino, new_parent, new_name, now);
            if let Some(r) = replaced {
                self.finish_unlinked(*r, *purge, freed);
            }
        }
        Ok(ReplyResult::Empty(pb::Empty {}))
    }

    fn add_nlink(&mut self, ino: u64, delta: i64) {
        let i = self.inodes.get_mut(&ino).expect("directory exists");
        i.nlink = (i.nlink as i64 + delta) as u32;
    }

    /// `ino` now lives at `parent/name` (which is its new ".." if a directory).
    fn relink(&mut self, ino: u64, parent: u64, name: &[u8], now: crate::ns::Time) {
        let i = self.inodes.get_mut(&ino).expect("inode exists");
        i.parent = parent;
        i.name = Name::from(name);
        i.ctime = now;
    }
}
