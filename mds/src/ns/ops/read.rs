//! Read-only ops: lookup, readlink, readdir (getattr and the xattr reads are
//! one-liners elsewhere). None of them change atime: weftfs asks for an atime
//! update after a read or readdir when its mount's policy says so (`atime.rs`).

use crate::ns::inode::{Body, Inode, Kind};
use crate::ns::perm::{check_access, check_name, MAY_EXEC, MAY_READ};
use crate::ns::{pb, Caller, Errno, Namespace};

/// Entries per ReadDir when the request says 0.
pub const READDIR_DEFAULT_LIMIT: u32 = 1024;

impl Namespace {
    /// The inode `parent/name` names, after search permission on `parent`.
    /// "." is `parent` itself and ".." its parent (the root's is the root).
    pub(crate) fn lookup(
        &self,
        caller: &Caller,
        parent: u64,
        name: &[u8],
    ) -> Result<&Inode, Errno> {
        let (p, dir) = self.live_dir(parent)?;
        check_access(p, caller, MAY_EXEC)?;
        match name {
            b"." => return Ok(p),
            b".." => return self.inode(p.parent),
            _ => {}
        }
        check_name(name)?;
        self.child(dir, name).ok_or(Errno::ENOENT)
    }

    pub(crate) fn readlink(&self, ino: u64) -> Result<Vec<u8>, Errno> {
        match &self.inode(ino)?.body {
            Body::Symlink { target } => Ok(target.clone()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Entries with a cookie above `offset`, in cookie order: "." (cookie 1),
    /// ".." (2), then the stored entries (3 and up).
    pub(crate) fn readdir(
        &self,
        caller: &Caller,
        r: &pb::ReadDirReq,
    ) -> Result<pb::DirEntries, Errno> {
        let (d, dir) = self.live_dir(r.ino)?;
        check_access(d, caller, MAY_READ)?;
        let limit = if r.limit == 0 {
            READDIR_DEFAULT_LIMIT
        } else {
            r.limit
        } as usize;
        let mut entries = Vec::new();
        let mut push = |name: &[u8], ino: u64, cookie: u64| -> bool {
            if entries.len() >= limit {
                return false;
            }
            let inode = self.inodes.get(&ino);
            entries.push(pb::DirEntry {
                name: name.to_vec(),
                ino,
                kind: inode.map_or(Kind::Regular, |i| i.kind).to_pb() as i32,
                cookie,
                attr: if r.plus {
                    inode.map(|i| self.attr_of(i))
                } else {
                    None
                },
            });
            true
        };
        let mut eof = true;
        if r.offset < 1 && !push(b".", d.ino, 1) {
            eof = false;
        }
        if eof && r.offset < 2 && !push(b"..", d.parent, 2) {
            eof = false;
        }
        if eof {
            for (cookie, name, ino) in dir.after(r.offset.max(2)) {
                if !push(name, ino, cookie) {
                    eof = false;
                    break;
                }
            }
        }
        Ok(pb::DirEntries { entries, eof })
    }
}
