//! Which setattrs a commit can carry, and the attributes they give (pure).
//!
//! tar, cp -p and rsync set owner, mode and times through the open
//! descriptor after writing and before close: three round trips to the MDS
//! per extracted file. While the file's data is still buffered here, those
//! changes can ride on the commit that stores it (`then_setattr`, applied by
//! the MDS after the data, in order). stat on this mount must show them at
//! once, so this predicts what the MDS will answer.
//!
//! Only a root caller's changes are folded: root passes every permission
//! check of mds/src/ns/ops/setattr.rs, so the prediction needs no groups or
//! ACLs and cannot disagree about a refusal. "now" times are not folded (the
//! MDS's clock decides them), nor are sizes (a truncate stores data first).
//! The client still compares the commit's reply with the prediction and
//! sends plain SetAttrs for anything it does not show.

use weft_proto::{Attr, SetAttrReq, Timespec};

const S_ISUID: u32 = 0o4000;
const S_ISGID: u32 = 0o2000;
const S_IXGRP: u32 = 0o0010;
const PERM_BITS: u32 = 0o7777;

/// Whether `r`, asked by `uid`, can be folded into a commit.
pub fn foldable(uid: u32, r: &SetAttrReq) -> bool {
    let explicit = |t: &Option<weft_proto::TimeSet>| t.as_ref().is_none_or(|t| !t.now);
    uid == 0
        && r.size.is_none()
        && r.atime_update == 0
        && explicit(&r.atime)
        && explicit(&r.mtime)
        && (r.mode.is_some()
            || r.uid.is_some()
            || r.gid.is_some()
            || r.atime.is_some()
            || r.mtime.is_some())
}

/// The attributes of regular file `a` after root's `r`, ctime `now`: what
/// `prepare_setattr` and `apply_setattr` make of them.
pub fn apply(a: &Attr, r: &SetAttrReq, now: Timespec) -> Attr {
    let mut n = *a;
    let mut perm = a.mode & PERM_BITS;
    if let Some(m) = r.mode {
        perm = m & PERM_BITS;
    }
    if let Some(u) = r.uid {
        n.uid = u;
    }
    if let Some(g) = r.gid {
        n.gid = g;
    }
    // Any chown of a non-directory drops setuid, and setgid with group-exec.
    if r.uid.is_some() || r.gid.is_some() {
        perm &= !S_ISUID;
        if perm & S_IXGRP != 0 {
            perm &= !S_ISGID;
        }
    }
    n.mode = (a.mode & !PERM_BITS) | perm;
    if let Some(t) = r.atime.as_ref().and_then(|t| t.time) {
        n.atime = Some(t);
    }
    if let Some(t) = r.mtime.as_ref().and_then(|t| t.time) {
        n.mtime = Some(t);
    }
    n.ctime = Some(now);
    n
}

/// Whether the MDS's `reply` shows every change of `changes` as `view`
/// predicted (owner, mode, and the times they set).
pub fn shown(reply: &Attr, view: &Attr, changes: &[SetAttrReq]) -> bool {
    let sets = |f: fn(&SetAttrReq) -> bool| changes.iter().any(f);
    (reply.mode & PERM_BITS, reply.uid, reply.gid) == (view.mode & PERM_BITS, view.uid, view.gid)
        && (!sets(|r| r.atime.is_some()) || reply.atime == view.atime)
        && (!sets(|r| r.mtime.is_some()) || reply.mtime == view.mtime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::TimeSet;

    fn at(sec: i64) -> Timespec {
        Timespec { sec, nsec: 3 }
    }

    fn file() -> Attr {
        Attr {
            ino: 9,
            mode: libc::S_IFREG | 0o600,
            uid: 0,
            gid: 0,
            size: 10,
            mtime: Some(at(100)),
            atime: Some(at(100)),
            ctime: Some(at(100)),
            ..Default::default()
        }
    }

    fn req(f: impl FnOnce(&mut SetAttrReq)) -> SetAttrReq {
        let mut r = SetAttrReq {
            ino: 9,
            ..Default::default()
        };
        f(&mut r);
        r
    }

    #[test]
    fn only_roots_owner_mode_and_explicit_time_changes_fold() {
        assert!(foldable(0, &req(|r| r.mode = Some(0o644))));
        assert!(foldable(0, &req(|r| r.uid = Some(5))));
        assert!(foldable(
            0,
            &req(|r| r.mtime = Some(TimeSet {
                now: false,
                time: Some(at(1))
            }))
        ));
        assert!(!foldable(1000, &req(|r| r.mode = Some(0o644))));
        assert!(!foldable(0, &req(|r| r.size = Some(0))));
        assert!(!foldable(0, &req(|r| r.atime_update = 1)));
        assert!(!foldable(
            0,
            &req(|r| r.mtime = Some(TimeSet {
                now: true,
                time: None
            }))
        ));
        assert!(!foldable(0, &req(|_| {})));
    }

    #[test]
    fn tars_three_changes_give_what_the_mds_would() {
        let a = file();
        let a = apply(
            &a,
            &req(|r| (r.uid, r.gid) = (Some(1000), Some(100))),
            at(200),
        );
        let a = apply(&a, &req(|r| r.mode = Some(0o6755)), at(201));
        let times = req(|r| {
            r.atime = Some(TimeSet {
                now: false,
                time: Some(at(7)),
            });
            r.mtime = Some(TimeSet {
                now: false,
                time: Some(at(8)),
            });
        });
        let a = apply(&a, &times, at(202));
        assert_eq!(a.mode, libc::S_IFREG | 0o6755);
        assert_eq!((a.uid, a.gid, a.size), (1000, 100, 10));
        assert_eq!(
            (a.atime, a.mtime, a.ctime),
            (Some(at(7)), Some(at(8)), Some(at(202)))
        );
    }

    #[test]
    fn a_chown_after_a_chmod_drops_setuid_and_an_executable_setgid() {
        let a = apply(&file(), &req(|r| r.mode = Some(0o6755)), at(1));
        let a = apply(&a, &req(|r| r.gid = Some(5)), at(2));
        assert_eq!(a.mode & PERM_BITS, 0o0755);
        let a = apply(&file(), &req(|r| r.mode = Some(0o6745)), at(1));
        let a = apply(&a, &req(|r| r.uid = Some(5)), at(2));
        assert_eq!(a.mode & PERM_BITS, 0o2745);
    }

    #[test]
    fn a_reply_missing_any_change_is_not_shown() {
        let changes = [
            req(|r| r.mode = Some(0o644)),
            req(|r| {
                r.mtime = Some(TimeSet {
                    now: false,
                    time: Some(at(8)),
                })
            }),
        ];
        let mut view = file();
        for r in &changes {
            view = apply(&view, r, at(50));
        }
        let mut reply = view;
        reply.ctime = Some(at(51));
        reply.atime = Some(at(52));
        assert!(shown(&reply, &view, &changes));
        assert!(!shown(&file(), &view, &changes));
        let mut old_time = view;
        old_time.mtime = Some(at(60));
        assert!(!shown(&old_time, &view, &changes));
    }
}
