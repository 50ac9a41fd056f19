//! Names and attributes weftfs answers lookups from without asking the MDS,
//! while the MDS's push stream is live (a stat after the kernel dropped its
//! dentries then costs no round trip).
//!
//! Coherence: other mounts' changes arrive as pushes (coherence.rs) and drop
//! what they name; this mount's own changes are seen here, as every MDS call
//! passes through `before`/`after` (mds_client.rs), which drop what the call may
//! change. A break of the stream clears everything and stops answering until
//! the stream is back.
//!
//! Negative answers: a directory this mount made (mkdir) starts empty and
//! stays "complete" — every name in it is in `entries` — as long as only this
//! mount's successful calls change it. Any push naming an entry in it, a failed
//! or overlapped call on it, an evicted entry of it, or a break makes it
//! incomplete. A name absent from a complete directory does not exist, so
//! e.g. the lookup before each create of an untar costs no round trip.
//!
//! Race rule: every invalidation bumps `gen` under the lock; an answer read
//! from the MDS is stored only if `gen` did not move since its request began
//! and no mutation of this mount is in flight (so a reply computed before a
//! change can never land after the change's invalidation). A mutation's own
//! reply (a created name's attributes, or those of the inode an open,
//! setattr or flush's commit changed) is stored only if no other mutation
//! overlapped it at all: one that began earlier and is still on its way may
//! be applied by the MDS after this one (a truncate's SetAttr and a read's
//! atime update, sent in that order, can be logged in the other), and this
//! reply would then be the older state.

use std::collections::HashSet;
use std::num::NonZeroUsize;

use lru::LruCache;
use parking_lot::Mutex;
use weft_proto::contract::{self, Changes};
use weft_proto::meta_reply::Result as R;
use weft_proto::meta_request::Op;
use weft_proto::Attr;

use crate::mds_client::answered_attrs;

const CAPACITY: usize = 65536;

struct Inner {
    gen: u64,
    /// Mutations begun (`before`) and not yet ended (`after`, or dropped).
    in_flight: u64,
    /// Bumped by every push of another mount's change (and `reset`).
    pushes: u64,
    live: bool,
    entries: LruCache<(u64, Vec<u8>), u64>,
    attrs: LruCache<u64, Attr>,
    /// Directories whose every name is in `entries`.
    complete: HashSet<u64>,
    /// security.* names an inode is known not to have (the kernel asks for
    /// security.capability before every write); dropped with its attributes.
    no_xattr: LruCache<u64, Vec<Vec<u8>>>,
}

/// Only security.* answers are the same for every caller (mds xattr.rs).
fn xattr_cacheable(name: &[u8]) -> bool {
    name.starts_with(b"security.")
}

/// What `after` needs of a call `before` saw. Dropped without `after` (the
/// call's future was cancelled), it ends the call as failed.
pub struct Started<'a> {
    cache: &'a MetaCache,
    ticket: MetaTicket,
    /// Other mutations were in flight when this one began.
    overlapped: bool,
    /// `pushes` when it began.
    pushes: u64,
    touch: Changes,
    ended: bool,
}

impl Drop for Started<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.ended = true;
            let touch = std::mem::replace(&mut self.touch, Changes::Nothing);
            self.cache.end(
                self.ticket,
                self.overlapped,
                self.pushes,
                touch,
                None,
                None,
                false,
            );
        }
    }
}

/// What a lookup in the cache found.
#[derive(Debug, PartialEq)]
pub enum Found {
    Attr(Attr),
    /// The name does not exist (its directory is complete).
    Absent,
}

pub struct MetaCache {
    inner: Mutex<Inner>,
}

/// `gen` when a request began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaTicket(u64);

impl Default for MetaCache {
    fn default() -> Self {
        let cap = NonZeroUsize::new(CAPACITY).unwrap();
        MetaCache {
            inner: Mutex::new(Inner {
                gen: 0,
                in_flight: 0,
                pushes: 0,
                live: false,
                entries: LruCache::new(cap),
                attrs: LruCache::new(cap),
                complete: HashSet::new(),
                no_xattr: LruCache::new(cap),
            }),
        }
    }
}

impl Inner {
    /// `xattrs`: the change may give an inode extended attributes (only a
    /// setxattr or removexattr does: a data commit, chmod or chown before
    /// tar's next question about security.capability leaves it absent).
    fn drop_touched(&mut self, t: &Changes, xattrs: bool) {
        self.gen += 1;
        match t {
            Changes::Nothing => {}
            Changes::All => {
                self.entries.clear();
                self.attrs.clear();
                self.complete.clear();
                self.no_xattr.clear();
            }
            Changes::Some {
                inodes,
                removed,
                created,
            } => {
                for ino in inodes {
                    self.attrs.pop(ino);
                    if xattrs {
                        self.no_xattr.pop(ino);
                    }
                }
                for key in removed.iter().chain(created) {
                    match self.entries.pop(key) {
                        Some(ino) => {
                            self.attrs.pop(&ino);
                            self.no_xattr.pop(&ino);
                            self.complete.remove(&ino);
                        }
                        // A name we did not know may be a hard link of an
                        // inode we do: its link count changes.
                        None if created.is_none() => self.attrs.clear(),
                        None => {}
                    }
                }
            }
        }
    }
}

impl Inner {
    fn put_entry(&mut self, parent: u64, name: Vec<u8>, ino: u64) {
        if let Some(((p, _), _)) = self.entries.push((parent, name), ino) {
            // An entry of another name fell out: its directory is no longer whole.
            self.complete.remove(&p);
        }
    }
}

impl MetaCache {
    pub fn ticket(&self) -> MetaTicket {
        MetaTicket(self.inner.lock().gen)
    }

    /// What is known of (parent, name), if the stream is live.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Option<Found> {
        // "." and ".." are no entries of a listing: a complete directory
        // must not call them absent (the kernel looks them up to turn a file
        // handle back into a connected dentry; absent there is ESTALE).
        if name == b"." || name == b".." {
            return None;
        }
        let mut g = self.inner.lock();
        if !g.live {
            return None;
        }
        let known = g.entries.get(&(parent, name.to_vec())).copied();
        match known {
            Some(ino) => g.attrs.get(&ino).copied().map(Found::Attr),
            None if g.complete.contains(&parent) => Some(Found::Absent),
            None => None,
        }
    }

    /// The attributes of `ino`, if known and the stream is live.
    pub fn getattr(&self, ino: u64) -> Option<Attr> {
        let mut g = self.inner.lock();
        if !g.live {
            return None;
        }
        g.attrs.get(&ino).copied()
    }

    /// Stores a lookup's answer read from the MDS by a request begun at `t`.
    pub fn insert(&self, t: MetaTicket, parent: u64, name: &[u8], a: &Attr) {
        let mut g = self.inner.lock();
        if g.live && g.gen == t.0 && g.in_flight == 0 {
            g.put_entry(parent, name.to_vec(), a.ino);
            g.attrs.put(a.ino, *a);
        }
    }

    /// Before a call goes to the MDS: drops what it may change. The result
    /// goes to `after`.
    pub fn before(&self, op: &Op) -> Option<Started<'_>> {
        let touch = contract::changes(op);
        if touch == Changes::Nothing {
            return None;
        }
        let mut g = self.inner.lock();
        g.drop_touched(&touch, matches!(op, Op::Setxattr(_) | Op::Removexattr(_)));
        let overlapped = g.in_flight > 0;
        g.in_flight += 1;
        Some(Started {
            cache: self,
            ticket: MetaTicket(g.gen),
            overlapped,
            pushes: g.pushes,
            touch,
            ended: false,
        })
    }

    /// After a call's answer (`None`: it failed): bumps `gen` (lookups that
    /// overlapped it may carry the old state); keeps a created name's, or a
    /// changed inode's, attributes when no other change overlapped; keeps directories complete
    /// only where the outcome is known.
    pub fn after(
        &self,
        started: Option<Started<'_>>,
        reply: Option<&R>,
        parent_attr: Option<&Attr>,
        mkdir: bool,
    ) {
        let Some(mut started) = started else {
            return;
        };
        started.ended = true;
        let touch = std::mem::replace(&mut started.touch, Changes::Nothing);
        self.end(
            started.ticket,
            started.overlapped,
            started.pushes,
            touch,
            reply,
            parent_attr,
            mkdir,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn end(
        &self,
        ticket: MetaTicket,
        overlapped: bool,
        pushes: u64,
        touch: Changes,
        reply: Option<&R>,
        parent_attr: Option<&Attr>,
        mkdir: bool,
    ) {
        let mut g = self.inner.lock();
        g.in_flight -= 1;
        // Nothing began while this call was on its way, and nothing that
        // began before it was still on its way.
        let alone = g.gen == ticket.0 && !overlapped;
        g.gen += 1;
        if let (true, true, Some(p)) = (alone, g.live, parent_attr) {
            // Read by the MDS after the change was durable.
            g.attrs.put(p.ino, *p);
        }
        if let (true, true, Changes::Some { inodes, .. }, Some(r)) = (alone, g.live, &touch, reply)
        {
            // An open, a setattr, a flush's commit, a release's atime
            // updates: the MDS read the attributes after the change, and
            // nothing else changed meanwhile (a lookup of the file then
            // needs no round trip).
            for a in answered_attrs(r).iter().filter(|a| inodes.contains(&a.ino)) {
                g.attrs.put(a.ino, *a);
            }
        }
        let Changes::Some {
            removed: names,
            created,
            ..
        } = touch
        else {
            return;
        };
        if reply.is_none() {
            // Failed: whether the names exist is unknown.
            for (parent, _) in names.iter().chain(&created) {
                g.complete.remove(parent);
            }
            return;
        }
        // A rename's new name now exists; an unlink's old one does not.
        if names.len() == 2 {
            g.complete.remove(&names[1].0);
        }
        if let Some((parent, name)) = created {
            // A new inode carries no security.* names (only ACLs inherit),
            // and no other call of this mount can have named it yet: only
            // another mount's change (a push) could have given it one. So
            // this holds even when other calls overlapped this one (tar's
            // release of the file before): the kernel's security.capability
            // question before every first write needs no round trip.
            if let (true, true, Some(R::Attr(a))) = (g.live, g.pushes == pushes, reply) {
                if a.nlink <= 1 || mkdir {
                    g.no_xattr.put(a.ino, vec![b"security.capability".to_vec()]);
                }
            }
            match (alone && g.live, reply) {
                (true, Some(R::Attr(a))) => {
                    g.put_entry(parent, name, a.ino);
                    g.attrs.put(a.ino, *a);
                    if mkdir {
                        // Empty, and every later change of it is seen.
                        g.complete.insert(a.ino);
                    }
                }
                _ => {
                    g.complete.remove(&parent);
                }
            }
        }
    }

    /// Another mount changed (parent, name).
    pub fn invalidate_entry(&self, parent: u64, name: &[u8]) {
        let mut g = self.inner.lock();
        g.gen += 1;
        g.pushes += 1;
        g.entries.pop(&(parent, name.to_vec()));
        g.complete.remove(&parent);
    }

    /// Another mount changed the inode's attributes.
    pub fn invalidate_ino(&self, ino: u64) {
        let mut g = self.inner.lock();
        g.gen += 1;
        g.pushes += 1;
        g.attrs.pop(&ino);
        g.no_xattr.pop(&ino);
    }

    /// True when `ino` is known not to have the xattr `name` (stream live).
    pub fn xattr_absent(&self, ino: u64, name: &[u8]) -> bool {
        let mut g = self.inner.lock();
        g.live
            && xattr_cacheable(name)
            && g.no_xattr
                .get(&ino)
                .is_some_and(|v| v.iter().any(|n| n == name))
    }

    /// The MDS answered ENODATA for (ino, name) to a request begun at `t`.
    pub fn insert_xattr_absent(&self, t: MetaTicket, ino: u64, name: &[u8]) {
        let mut g = self.inner.lock();
        if g.live && g.gen == t.0 && g.in_flight == 0 && xattr_cacheable(name) {
            match g.no_xattr.get_mut(&ino) {
                Some(v) if v.len() < 16 => v.push(name.to_vec()),
                Some(_) => {}
                None => {
                    g.no_xattr.put(ino, vec![name.to_vec()]);
                }
            }
        }
    }

    /// Pushes may have been missed (`live` false) or the stream is (back) up.
    pub fn reset(&self, live: bool) {
        let mut g = self.inner.lock();
        g.gen += 1;
        g.pushes += 1;
        g.entries.clear();
        g.attrs.clear();
        g.complete.clear();
        g.no_xattr.clear();
        g.live = live;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::*;

    fn attr(ino: u64, size: u64) -> Attr {
        Attr {
            ino,
            size,
            ..Default::default()
        }
    }

    /// The attributes, if the cache has them.
    fn found(c: &MetaCache, parent: u64, name: &[u8]) -> Option<Attr> {
        match c.lookup(parent, name) {
            Some(Found::Attr(a)) => Some(a),
            _ => None,
        }
    }

    fn create(parent: u64, name: &str) -> Op {
        Op::Create(CreateReq {
            parent,
            name: name.into(),
            ..Default::default()
        })
    }

    #[test]
    fn answers_only_while_live() {
        let c = MetaCache::default();
        let t = c.ticket();
        c.insert(t, 1, b"a", &attr(5, 1));
        assert_eq!(found(&c, 1, b"a"), None, "not live: nothing stored");
        c.reset(true);
        c.insert(c.ticket(), 1, b"a", &attr(5, 1));
        assert_eq!(found(&c, 1, b"a").unwrap().size, 1);
        c.reset(false);
        assert_eq!(found(&c, 1, b"a"), None);
    }

    #[test]
    fn an_answer_older_than_an_invalidation_is_not_stored() {
        let c = MetaCache::default();
        c.reset(true);
        let t = c.ticket();
        c.invalidate_ino(9);
        c.insert(t, 1, b"a", &attr(5, 1));
        assert_eq!(found(&c, 1, b"a"), None);
    }

    fn setattr(ino: u64) -> Op {
        Op::Setattr(SetAttrReq {
            ino,
            ..Default::default()
        })
    }

    /// A truncate's SetAttr, then a read's atime update of the same file,
    /// are on their way at once, and the MDS logs the atime update first:
    /// its reply (the size before the truncate) comes back with nothing
    /// begun after it. It must not be kept: a stat would show the old size.
    #[test]
    fn a_reply_overlapped_by_an_earlier_mutation_is_not_kept() {
        let c = MetaCache::default();
        c.reset(true);
        let truncate = c.before(&setattr(7));
        let atime = c.before(&setattr(7));
        c.after(atime, Some(&R::Attr(attr(7, 100))), None, false);
        assert_eq!(c.getattr(7), None, "the atime reply predates the truncate");
        c.after(truncate, Some(&R::Attr(attr(7, 900))), None, false);
        assert_eq!(c.getattr(7), None, "the truncate overlapped another call");
        // Alone again: kept.
        let s = c.before(&setattr(7));
        c.after(s, Some(&R::Attr(attr(7, 900))), None, false);
        assert_eq!(c.getattr(7).unwrap().size, 900);
    }

    #[test]
    fn a_lookup_answered_while_a_mutation_is_in_flight_is_not_stored() {
        let c = MetaCache::default();
        c.reset(true);
        let s = c.before(&setattr(5));
        let t = c.ticket();
        c.insert(t, 1, b"a", &attr(5, 1));
        assert_eq!(found(&c, 1, b"a"), None, "the setattr may land after it");
        c.after(s, None, None, false);
        let t = c.ticket();
        c.insert(t, 1, b"a", &attr(5, 1));
        assert_eq!(found(&c, 1, b"a").unwrap().size, 1);
    }

    #[test]
    fn a_cancelled_mutation_ends_as_failed() {
        let c = MetaCache::default();
        c.reset(true);
        drop(c.before(&setattr(5)));
        let s = c.before(&setattr(5));
        c.after(s, Some(&R::Attr(attr(5, 3))), None, false);
        assert_eq!(c.getattr(5).unwrap().size, 3, "nothing is left in flight");
    }

    #[test]
    fn own_mutations_drop_what_they_change_and_keep_what_they_create() {
        let c = MetaCache::default();
        c.reset(true);
        let op = create(1, "new");
        let s = c.before(&op);
        c.after(s, Some(&R::Attr(attr(7, 0))), Some(&attr(1, 3)), false);
        assert_eq!(found(&c, 1, b"new").unwrap().ino, 7);
        assert_eq!(
            c.getattr(1).unwrap().size,
            3,
            "the directory as the MDS sent it"
        );
        // The next change of the directory drops it until its reply.
        let s = c.before(&create(1, "other"));
        assert_eq!(c.getattr(1), None);
        c.after(s, None, None, false);

        // A write's commit drops the attributes (the name stays).
        let op = Op::CommitWrite(CommitWriteReq {
            ino: 7,
            ..Default::default()
        });
        let s = c.before(&op);
        c.after(s, Some(&R::Empty(Empty {})), None, false);
        assert_eq!(found(&c, 1, b"new"), None);
        c.insert(c.ticket(), 1, b"new", &attr(7, 4096));
        assert_eq!(found(&c, 1, b"new").unwrap().size, 4096);

        // Unlink drops the name and the inode.
        let op = Op::Unlink(UnlinkReq {
            parent: 1,
            name: b"new".to_vec(),
        });
        let s = c.before(&op);
        c.after(s, Some(&R::Empty(Empty {})), None, false);
        assert_eq!(found(&c, 1, b"new"), None);

        // A lookup overlapping a mutation is not stored.
        let t = c.ticket();
        let s = c.before(&create(1, "x"));
        c.insert(t, 1, b"y", &attr(8, 0));
        c.after(s, Some(&R::Attr(attr(9, 0))), None, false);
        assert_eq!(found(&c, 1, b"y"), None);
        assert_eq!(found(&c, 1, b"x").unwrap().ino, 9);
        let t = c.ticket();
        let s = c.before(&create(1, "z"));
        c.after(s, Some(&R::Attr(attr(10, 0))), None, false);
        c.insert(t, 1, b"y", &attr(8, 0));
        assert_eq!(found(&c, 1, b"y"), None, "began before the create ended");
    }

    #[test]
    fn unlinking_an_unknown_name_drops_every_attribute() {
        let c = MetaCache::default();
        c.reset(true);
        c.insert(c.ticket(), 1, b"a", &attr(5, 1));
        // "b" may be a hard link of inode 5: its link count changes.
        let s = c.before(&Op::Unlink(UnlinkReq {
            parent: 1,
            name: b"b".to_vec(),
        }));
        c.after(s, Some(&R::Empty(Empty {})), None, false);
        assert_eq!(found(&c, 1, b"a"), None);
    }

    #[test]
    fn absent_security_xattrs_are_remembered_until_the_inode_changes() {
        let c = MetaCache::default();
        c.reset(true);
        let s = c.before(&create(1, "f"));
        c.after(s, Some(&R::Attr(attr(7, 0))), None, false);
        assert!(
            c.xattr_absent(7, b"security.capability"),
            "a new file has none"
        );
        assert!(!c.xattr_absent(7, b"user.x"), "only security.* is cached");
        c.insert_xattr_absent(c.ticket(), 7, b"user.x");
        assert!(!c.xattr_absent(7, b"user.x"));
        // tar: the data's commit, then chown, chmod and the times: none
        // gives the file an extended attribute.
        for op in [
            Op::CommitWrite(CommitWriteReq {
                ino: 7,
                end: 10,
                ..Default::default()
            }),
            Op::Setattr(SetAttrReq {
                ino: 7,
                uid: Some(1000),
                mode: Some(0o644),
                ..Default::default()
            }),
        ] {
            let s = c.before(&op);
            assert!(s.is_some());
            c.after(s, Some(&R::Attr(attr(7, 10))), None, false);
            assert!(c.xattr_absent(7, b"security.capability"), "{op:?}");
        }
        let s = c.before(&Op::Setxattr(SetXattrReq {
            ino: 7,
            name: b"security.capability".to_vec(),
            ..Default::default()
        }));
        c.after(s, Some(&R::Empty(Empty {})), None, false);
        assert!(!c.xattr_absent(7, b"security.capability"));
        c.insert_xattr_absent(c.ticket(), 8, b"security.selinux");
        assert!(c.xattr_absent(8, b"security.selinux"));
        c.invalidate_ino(8);
        assert!(
            !c.xattr_absent(8, b"security.selinux"),
            "another mount changed it"
        );
    }

    #[test]
    fn a_created_inode_has_no_security_xattr_though_other_calls_overlapped_unless_a_push_came() {
        let c = MetaCache::default();
        c.reset(true);
        // Another file's chmod is still on its way.
        let chmod = c.before(&Op::Setattr(SetAttrReq {
            ino: 6,
            mode: Some(0o600),
            ..Default::default()
        }));
        assert!(chmod.is_some());
        let s = c.before(&create(1, "g"));
        c.after(s, Some(&R::Attr(attr(9, 0))), None, false);
        assert!(c.xattr_absent(9, b"security.capability"));
        assert_eq!(
            found(&c, 1, b"g"),
            None,
            "its name waits: a call overlapped"
        );
        // A push between the create's start and its answer may concern it.
        let s = c.before(&create(1, "h"));
        c.invalidate_ino(10);
        c.after(s, Some(&R::Attr(attr(10, 0))), None, false);
        assert!(!c.xattr_absent(10, b"security.capability"));
        c.after(chmod, Some(&R::Attr(attr(6, 0))), None, false);
    }

    #[test]
    fn pushes_drop_names_and_attributes() {
        let c = MetaCache::default();
        c.reset(true);
        c.insert(c.ticket(), 1, b"a", &attr(5, 1));
        c.invalidate_ino(5);
        assert_eq!(found(&c, 1, b"a"), None);
        c.insert(c.ticket(), 1, b"a", &attr(5, 1));
        c.invalidate_entry(1, b"a");
        assert_eq!(found(&c, 1, b"a"), None);
    }

    #[test]
    fn a_directory_made_here_knows_its_absent_names_until_a_push_names_one() {
        let c = MetaCache::default();
        c.reset(true);
        let s = c.before(&Op::Mkdir(MkdirReq {
            parent: 1,
            name: b"d".to_vec(),
            ..Default::default()
        }));
        c.after(s, Some(&R::Attr(attr(20, 0))), None, true);
        assert_eq!(c.lookup(20, b"x"), Some(Found::Absent));
        let s = c.before(&create(20, "x"));
        c.after(s, Some(&R::Attr(attr(21, 0))), None, false);
        assert_eq!(found(&c, 20, b"x").unwrap().ino, 21);
        assert_eq!(c.lookup(20, b"y"), Some(Found::Absent));
        // Our unlink succeeded: the name is gone, the directory still whole.
        let s = c.before(&Op::Unlink(UnlinkReq {
            parent: 20,
            name: b"x".to_vec(),
        }));
        c.after(s, Some(&R::Empty(Empty {})), None, false);
        assert_eq!(c.lookup(20, b"x"), Some(Found::Absent));
        // A failed create (EEXIST: someone else made it): no longer whole.
        let s = c.before(&create(20, "z"));
        c.after(s, None, None, false);
        assert_eq!(c.lookup(20, b"y"), None);

        let s = c.before(&Op::Mkdir(MkdirReq {
            parent: 1,
            name: b"e".to_vec(),
            ..Default::default()
        }));
        c.after(s, Some(&R::Attr(attr(30, 0))), None, true);
        assert_eq!(c.lookup(30, b"y"), Some(Found::Absent));
        c.invalidate_entry(30, b"other");
        assert_eq!(
            c.lookup(30, b"y"),
            None,
            "another mount changed a name in it"
        );

        // A rename into a whole directory makes it not whole.
        let s = c.before(&Op::Mkdir(MkdirReq {
            parent: 1,
            name: b"f".to_vec(),
            ..Default::default()
        }));
        c.after(s, Some(&R::Attr(attr(40, 0))), None, true);
        let s = c.before(&Op::Rename(RenameReq {
            parent: 1,
            name: b"a".to_vec(),
            new_parent: 40,
            new_name: b"b".to_vec(),
            flags: 0,
        }));
        c.after(s, Some(&R::Empty(Empty {})), None, false);
        assert_eq!(c.lookup(40, b"b"), None);
        c.reset(false);
        assert_eq!(c.lookup(40, b"q"), None);
    }
}
