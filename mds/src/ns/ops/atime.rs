//! Access times on read. weftfs reads data straight from the chunk
//! daemons, so the MDS hears of a read only when the client asks for an
//! atime update (SetAttrReq.atime_update) after it: 1 = relatime, 2 =
//! strictatime (noatime mounts never ask).
//!
//! Rules (Linux `relatime_need_update`): with relatime the atime moves only
//! when it is not after the mtime or the ctime, or is a day old, so most
//! reads cost no journal write. An atime update is not a change of the
//! inode: ctime stays. It needs no ownership or write permission (the reader
//! already passed the open's read check), so only atime can be set this way.

use crate::ns::inode::{Inode, Kind, Time};
use crate::ns::{pb, Ctx, Errno, Namespace, Prepared, Record};
use pb::meta_reply::Result as ReplyResult;

pub const ATIME_RELATIME: u32 = 1;
pub const ATIME_STRICT: u32 = 2;
const DAY_SECS: i64 = 24 * 60 * 60;

/// `relatime_need_update`.
pub fn relatime_due(atime: Time, mtime: Time, ctime: Time, now: Time) -> bool {
    let key = |t: Time| (t.sec, t.nsec);
    key(atime) <= key(mtime) || key(atime) <= key(ctime) || now.sec - atime.sec >= DAY_SECS
}

impl Namespace {
    pub(crate) fn prepare_access_time(
        &self,
        ctx: &Ctx,
        i: &Inode,
        how: u32,
    ) -> Result<Prepared, Errno> {
        if !matches!(i.kind, Kind::Regular | Kind::Directory) {
            return Err(Errno::EINVAL);
        }
        let due = match how {
            ATIME_STRICT => true,
            ATIME_RELATIME => relatime_due(i.atime, i.mtime, i.ctime, ctx.now),
            _ => return Err(Errno::EINVAL),
        };
        if !due {
            return Ok(Prepared::Reply(ReplyResult::Attr(self.attr_of(i))));
        }
        Ok(Prepared::Record(Record::SetAttr {
            ino: i.ino,
            mode: None,
            uid: None,
            gid: None,
            size: None,
            atime: Some(ctx.now),
            mtime: None,
            ctime: i.ctime,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(sec: i64) -> Time {
        Time { sec, nsec: 0 }
    }

    #[test]
    fn relatime_rules() {
        // Read after a write: due. Read again: not due, until a day passes.
        assert!(relatime_due(t(10), t(20), t(20), t(30)));
        assert!(!relatime_due(t(30), t(20), t(20), t(40)));
        assert!(relatime_due(t(30), t(20), t(20), t(30 + DAY_SECS)));
        assert!(
            relatime_due(t(20), t(20), t(10), t(21)),
            "equal to mtime is due"
        );
    }
}
