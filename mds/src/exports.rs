//! Export rules: which client identity may mount which subtree, and how far
//! the uid and gids it sends are trusted (like MooseFS's mfsexports.cfg and
//! NFS's /etc/exports).
//!
//! The rules come from a TOML file (`weft-mds --exports FILE`, or `exports =`
//! in the MDS config file), re-read when its mtime changes or on SIGHUP; a
//! file that does not parse on reload leaves the previous rules in force (and
//! says so in the log). Without `--exports` every client may do everything
//! at the root, as before.
//!
//! ```toml
//! [[export]]
//! clients = "web-*"        # certificate name glob (* and ?); "role/name" globs too
//! path = "/srv/web"        # the subtree it mounts; its root is this directory
//! access = "rw"            # or "ro": every mutation is EROFS
//! squash = "root"          # "none", "root" (uid/gid 0 -> anonuid/anongid), "all"
//! anonuid = 65534
//! anongid = 65534
//! setuid = false           # may set setuid/setgid bits
//! devices = false          # may create device files
//! ```
//!
//! The first rule whose `clients` matches decides; an identity no rule
//! matches is refused (every call EACCES, logged and counted). Without TLS
//! there is no certificate and the identity is `anonymous` (matched by
//! `anonymous` and `*`).
//!
//! Everything here is pure: [`decide`] picks the export for an identity,
//! [`squash`] maps a caller, [`check_op`] applies ro/setuid/devices, and
//! [`op_inodes`] names every inode a request carries so the service can map
//! the mount's root (inode 1 on the client) to the exported directory and
//! refuse whatever lies outside it.

use crate::ns::Caller;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use weft_proto::identity::Peer;
use weft_proto::pb::meta_request::Op;
use weft_proto::Errno;

/// nobody/nogroup, NFS's default anonuid/anongid.
pub const NOBODY: u32 = 65534;

/// The identity a peer without a certificate (TLS off) is matched as.
pub const ANONYMOUS: &str = "anonymous";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    Rw,
    Ro,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Squash {
    None,
    /// uid 0 and gid 0 (also among the groups) become anonuid/anongid.
    #[default]
    Root,
    /// Every uid and gid becomes anonuid/anongid; no supplementary groups.
    All,
}

/// What one identity may do: the outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Export {
    /// The exported directory, absolute and normalised ("/" or "/a/b").
    pub path: String,
    pub read_only: bool,
    pub squash: Squash,
    pub anonuid: u32,
    pub anongid: u32,
    pub setuid: bool,
    pub devices: bool,
    /// Which rule (1-based, in file order) decided: for logs.
    pub rule: usize,
}

impl Export {
    /// Everything allowed at the root: no exports file.
    pub fn everything() -> Export {
        Export {
            path: "/".into(),
            read_only: false,
            squash: Squash::None,
            anonuid: NOBODY,
            anongid: NOBODY,
            setuid: true,
            devices: true,
            rule: 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    export: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Patterns {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    clients: Patterns,
    #[serde(default = "root_path")]
    path: String,
    #[serde(default)]
    access: Access,
    #[serde(default)]
    squash: Squash,
    #[serde(default = "nobody")]
    anonuid: u32,
    #[serde(default = "nobody")]
    anongid: u32,
    #[serde(default)]
    setuid: bool,
    #[serde(default)]
    devices: bool,
}

fn root_path() -> String {
    "/".into()
}

fn nobody() -> u32 {
    NOBODY
}

/// One parsed rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub clients: Vec<String>,
    pub export: Export,
}

/// The rules of one exports file, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub rules: Vec<Rule>,
}

/// "/a//b/" -> "/a/b"; refuses relative paths and "." / ".." components.
pub fn normalise(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("path '{path}' must be absolute"));
    }
    let mut out = String::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return Err(format!("path '{path}' may not contain '.' or '..'"));
        }
        out.push('/');
        out.push_str(c);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

impl Rules {
    pub fn parse(text: &str) -> Result<Rules, String> {
        let f: RulesFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut rules = Vec::new();
        for (i, r) in f.export.into_iter().enumerate() {
            let n = i + 1;
            let clients = match r.clients {
                Patterns::One(p) => vec![p],
                Patterns::Many(v) => v,
            };
            if clients.is_empty() || clients.iter().any(|c| c.is_empty()) {
                return Err(format!(
                    "export #{n}: clients must name at least one pattern"
                ));
            }
            let path = normalise(&r.path).map_err(|e| format!("export #{n}: {e}"))?;
            rules.push(Rule {
                clients,
                export: Export {
                    path,
                    read_only: r.access == Access::Ro,
                    squash: r.squash,
                    anonuid: r.anonuid,
                    anongid: r.anongid,
                    setuid: r.setuid,
                    devices: r.devices,
                    rule: n,
                },
            });
        }
        Ok(Rules { rules })
    }
}

/// `*` (any run, also empty) and `?` (one character) glob match.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// How an identity is named for matching: its certificate name, or
/// "role/name" for a pattern with a '/'; `anonymous` without TLS.
fn matches(pattern: &str, who: Option<&Peer>) -> bool {
    match who {
        None => pattern == "*" || pattern == ANONYMOUS,
        Some(p) if pattern.contains('/') => glob(pattern, &format!("{}/{}", p.role, p.name)),
        Some(p) => glob(pattern, &p.name),
    }
}

/// The export for `who` (None: no certificate): the first rule matching it,
/// or None when no rule does (refused).
pub fn decide(rules: &Rules, who: Option<&Peer>) -> Option<Export> {
    rules
        .rules
        .iter()
        .find(|r| r.clients.iter().any(|p| matches(p, who)))
        .map(|r| r.export.clone())
}

/// The caller the MDS acts for: the one sent, squashed as the export says.
pub fn squash(e: &Export, c: &Caller) -> Caller {
    match e.squash {
        Squash::None => c.clone(),
        Squash::All => Caller {
            uid: e.anonuid,
            gid: e.anongid,
            groups: Vec::new(),
        },
        Squash::Root => {
            let g = |g: u32| if g == 0 { e.anongid } else { g };
            Caller {
                uid: if c.uid == 0 { e.anonuid } else { c.uid },
                gid: g(c.gid),
                groups: c.groups.iter().map(|&x| g(x)).collect(),
            }
        }
    }
}

/// Whether a request changes anything (a read-only export refuses it with
/// EROFS). Opening for reading, closing, locks and keepalives do not.
pub fn writes(op: &Op) -> bool {
    match op {
        Op::Open(o) => {
            let f = o.flags as i32;
            f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0
        }
        Op::Setattr(_)
        | Op::Mknod(_)
        | Op::Mkdir(_)
        | Op::Create(_)
        | Op::Unlink(_)
        | Op::Rmdir(_)
        | Op::Symlink(_)
        | Op::Rename(_)
        | Op::Link(_)
        | Op::Setxattr(_)
        | Op::Removexattr(_)
        | Op::AllocChunk(_)
        | Op::CommitWrite(_)
        | Op::CreateSegment(_)
        | Op::CommitPacked(_) => true,
        Op::Lookup(_)
        | Op::Getattr(_)
        | Op::Readlink(_)
        | Op::Readdir(_)
        | Op::Getxattr(_)
        | Op::Listxattr(_)
        | Op::Statfs(_)
        | Op::Release(_)
        | Op::GetChunks(_)
        | Op::Setlk(_)
        | Op::Getlk(_)
        | Op::ReleaseLocks(_)
        | Op::Keepalive(_)
        | Op::SyncLog(_) => false,
    }
}

/// ro, setuid and device rules for one request. `is_dir(ino)` says whether
/// an existing inode is a directory (a setgid directory only passes on its
/// group, so it is allowed without `setuid`).
pub fn check_op(e: &Export, op: &Op, is_dir: impl Fn(u64) -> bool) -> Result<(), Errno> {
    if e.read_only && writes(op) {
        return Err(Errno::EROFS);
    }
    const SUID: u32 = libc::S_ISUID;
    const SGID: u32 = libc::S_ISGID;
    if !e.setuid {
        let bad = match op {
            Op::Setattr(s) => s
                .mode
                .is_some_and(|m| m & SUID != 0 || (m & SGID != 0 && !is_dir(s.ino))),
            Op::Create(c) => c.mode & (SUID | SGID) != 0,
            Op::Mknod(m) => m.mode & (SUID | SGID) != 0,
            Op::Mkdir(m) => m.mode & SUID != 0,
            _ => false,
        };
        if bad {
            return Err(Errno::EPERM);
        }
    }
    if !e.devices {
        if let Op::Mknod(m) = op {
            let t = m.mode & libc::S_IFMT;
            if t == libc::S_IFCHR || t == libc::S_IFBLK {
                return Err(Errno::EPERM);
            }
        }
    }
    Ok(())
}

/// What an inode number in a request stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// The inode acted on (or the directory looked in): outside the export,
    /// ESTALE, as NFS answers a file handle outside its export.
    Object,
    /// Where a rename or link puts a name: outside the export, EXDEV, as
    /// between two mounts.
    Target,
}

/// Every inode number `op` carries, in request order.
pub fn op_inodes(op: &mut Op) -> Vec<(&mut u64, Slot)> {
    use Slot::*;
    match op {
        Op::Lookup(r) => vec![(&mut r.parent, Object)],
        Op::Getattr(r) => vec![(&mut r.ino, Object)],
        Op::Setattr(r) => vec![(&mut r.ino, Object)],
        Op::Mknod(r) => vec![(&mut r.parent, Object)],
        Op::Mkdir(r) => vec![(&mut r.parent, Object)],
        Op::Unlink(r) => vec![(&mut r.parent, Object)],
        Op::Rmdir(r) => vec![(&mut r.parent, Object)],
        Op::Symlink(r) => vec![(&mut r.parent, Object)],
        Op::Readlink(r) => vec![(&mut r.ino, Object)],
        Op::Rename(r) => vec![(&mut r.parent, Object), (&mut r.new_parent, Target)],
        Op::Link(r) => vec![(&mut r.ino, Object), (&mut r.new_parent, Target)],
        Op::Readdir(r) => vec![(&mut r.ino, Object)],
        Op::Setxattr(r) => vec![(&mut r.ino, Object)],
        Op::Getxattr(r) => vec![(&mut r.ino, Object)],
        Op::Listxattr(r) => vec![(&mut r.ino, Object)],
        Op::Removexattr(r) => vec![(&mut r.ino, Object)],
        Op::Open(r) => vec![(&mut r.ino, Object)],
        Op::Create(r) => vec![(&mut r.parent, Object)],
        // Ino 0: a call of only `more` and `atimes`.
        Op::Release(r) => std::iter::once(&mut r.ino)
            .filter(|ino| **ino != 0)
            .chain(r.more.iter_mut().map(|m| &mut m.ino))
            .chain(r.atimes.iter_mut().map(|a| &mut a.ino))
            .map(|ino| (ino, Object))
            .collect(),
        Op::GetChunks(r) => vec![(&mut r.ino, Object)],
        Op::AllocChunk(r) => vec![(&mut r.ino, Object)],
        Op::CommitWrite(r) => vec![(&mut r.ino, Object)],
        // A segment is outside every directory tree: `Namespace::within`
        // lets it through any export (its writer is checked by session).
        Op::CommitPacked(r) => vec![(&mut r.ino, Object), (&mut r.segment, Object)],
        Op::CreateSegment(_) => vec![],
        Op::Setlk(r) | Op::Getlk(r) => vec![(&mut r.ino, Object)],
        Op::ReleaseLocks(r) => vec![(&mut r.ino, Object)],
        Op::Statfs(_) | Op::Keepalive(_) | Op::SyncLog(_) => vec![],
    }
}

/// A reply as the mount sees it: the exported directory `top` is inode 1.
/// With `top_dir_attr`, this is a listing of `top`, whose ".." names `top`
/// itself (the root's parent is the root) with these attributes.
pub fn map_reply(
    top: u64,
    r: &mut weft_proto::pb::meta_reply::Result,
    parent_attr: Option<&mut weft_proto::pb::Attr>,
    top_dir_attr: Option<weft_proto::pb::Attr>,
) {
    use weft_proto::pb::meta_reply::Result as Reply;
    let root = crate::ns::ROOT_INO;
    let fix = |a: &mut weft_proto::pb::Attr| {
        if a.ino == top {
            a.ino = root;
        }
    };
    match r {
        Reply::Attr(a) => fix(a),
        Reply::Entries(es) => {
            for e in es.entries.iter_mut() {
                if e.name == b".." {
                    if let Some(t) = &top_dir_attr {
                        e.ino = top;
                        if e.attr.is_some() {
                            e.attr = Some(*t);
                        }
                    }
                }
                if e.ino == top {
                    e.ino = root;
                }
                if let Some(a) = e.attr.as_mut() {
                    fix(a);
                }
            }
        }
        _ => {}
    }
    if let Some(a) = parent_attr {
        fix(a);
    }
}

/// The rules in force, re-read from their file when it changes.
pub struct Exports {
    file: Option<PathBuf>,
    current: parking_lot::RwLock<(Option<SystemTime>, Arc<Rules>)>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Exports {
    /// No exports file: everyone may do everything.
    pub fn open_to_all() -> Exports {
        Exports {
            file: None,
            current: parking_lot::RwLock::new((None, Arc::new(Rules::default()))),
        }
    }

    /// Reads `file` (an error stops the MDS at start).
    pub fn load(file: &Path) -> Result<Exports, String> {
        let m = mtime(file);
        let rules = read_rules(file)?;
        tracing::info!(file = %file.display(), rules = rules.rules.len(), "export rules loaded");
        Ok(Exports {
            file: Some(file.to_path_buf()),
            current: parking_lot::RwLock::new((m, Arc::new(rules))),
        })
    }

    pub fn configured(&self) -> bool {
        self.file.is_some()
    }

    /// The export of `who`: Some(everything) without an exports file; None
    /// when no rule matches.
    pub fn export_for(&self, who: Option<&Peer>) -> Option<Export> {
        if self.file.is_none() {
            return Some(Export::everything());
        }
        let rules = self.current.read().1.clone();
        decide(&rules, who)
    }

    /// Re-reads the file if its mtime changed (or always, with `force`).
    pub fn reload(&self, force: bool) {
        let Some(file) = &self.file else { return };
        let m = mtime(file);
        if !force && m == self.current.read().0 {
            return;
        }
        match read_rules(file) {
            Ok(rules) => {
                tracing::info!(file = %file.display(), rules = rules.rules.len(), "export rules reloaded");
                *self.current.write() = (m, Arc::new(rules));
            }
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "export rules not reloaded: the previous rules stay in force");
                // Not again until the file changes once more.
                self.current.write().0 = m;
            }
        }
    }

    /// Watches the file: its mtime every `every`, and SIGHUP.
    pub fn spawn_watcher(self: &Arc<Self>, every: std::time::Duration) {
        if self.file.is_none() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut hup = signal(SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(every);
            loop {
                let force = tokio::select! {
                    _ = tick.tick() => false,
                    Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                me.reload(force);
            }
        });
    }
}

fn read_rules(file: &Path) -> Result<Rules, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("--exports {}: {e}", file.display()))?;
    Rules::parse(&text).map_err(|e| format!("--exports {}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::identity::Role;
    use weft_proto::pb;

    fn peer(role: Role, name: &str) -> Peer {
        Peer {
            role,
            name: name.into(),
        }
    }

    const RULES: &str = r#"
        [[export]]
        clients = "admin-1"
        path = "/"
        squash = "none"
        setuid = true
        devices = true

        [[export]]
        clients = ["web-*", "gateway/s3?"]
        path = "/srv//web/"
        access = "ro"

        [[export]]
        clients = "batch"
        path = "/batch"
        squash = "all"
        anonuid = 1000
        anongid = 100

        [[export]]
        clients = "anonymous"
        path = "/pub"
        access = "ro"
    "#;

    #[test]
    fn first_matching_rule_decides() {
        let r = Rules::parse(RULES).unwrap();
        let e = decide(&r, Some(&peer(Role::Client, "admin-1"))).unwrap();
        assert_eq!((e.path.as_str(), e.read_only, e.rule), ("/", false, 1));
        assert_eq!(e.squash, Squash::None);
        let e = decide(&r, Some(&peer(Role::Client, "web-7"))).unwrap();
        assert_eq!(
            (e.path.as_str(), e.read_only, e.rule),
            ("/srv/web", true, 2)
        );
        // Defaults: root squash to nobody, no setuid, no devices.
        assert_eq!(
            (e.squash, e.anonuid, e.setuid, e.devices),
            (Squash::Root, NOBODY, false, false)
        );
        // "role/name" patterns match the role too.
        assert_eq!(
            decide(&r, Some(&peer(Role::Gateway, "s31"))).unwrap().rule,
            2
        );
        assert_eq!(decide(&r, Some(&peer(Role::Client, "s31"))), None);
        assert_eq!(
            decide(&r, Some(&peer(Role::Client, "batch")))
                .unwrap()
                .anonuid,
            1000
        );
        // Without a certificate: "anonymous".
        assert_eq!(decide(&r, None).unwrap().path, "/pub");
        assert_eq!(decide(&r, Some(&peer(Role::Client, "stranger"))), None);
        assert_eq!(decide(&Rules::default(), None), None);
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(
            Rules::parse("[[export]]\npath = \"/\"").is_err(),
            "no clients"
        );
        assert!(Rules::parse("[[export]]\nclients = \"*\"\npath = \"rel\"").is_err());
        assert!(Rules::parse("[[export]]\nclients = \"*\"\npath = \"/a/../b\"").is_err());
        assert!(Rules::parse("[[export]]\nclients = \"*\"\naccess = \"rwx\"").is_err());
        assert!(Rules::parse("[[export]]\nclients = \"*\"\nsquahs = \"all\"").is_err());
        assert!(Rules::parse("[[export]]\nclients = []").is_err());
        assert_eq!(Rules::parse("").unwrap().rules.len(), 0);
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("*", "anything"));
        assert!(glob("web-*", "web-"));
        assert!(glob("web-*", "web-12"));
        assert!(!glob("web-*", "xweb-1"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "ac"));
        assert!(glob("*-db-*", "eu-db-3"));
        assert!(!glob("*-db-*", "eu-db"));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(!glob("abc", "abcd"));
        // Without TLS only "*" and "anonymous" match.
        assert!(matches("*", None));
        assert!(!matches("anon*", None));
    }

    #[test]
    fn squashing() {
        let mut e = Export::everything();
        let root = Caller {
            uid: 0,
            gid: 0,
            groups: vec![0, 5],
        };
        let user = Caller {
            uid: 1000,
            gid: 100,
            groups: vec![0, 10],
        };
        assert_eq!(squash(&e, &root), root);
        e.squash = Squash::Root;
        let r = squash(&e, &root);
        assert_eq!(
            (r.uid, r.gid, r.groups.clone()),
            (NOBODY, NOBODY, vec![NOBODY, 5])
        );
        // A non-root user keeps its ids; only group 0 goes.
        let u = squash(&e, &user);
        assert_eq!((u.uid, u.gid, u.groups), (1000, 100, vec![NOBODY, 10]));
        e.squash = Squash::All;
        e.anonuid = 7;
        e.anongid = 8;
        let u = squash(&e, &user);
        assert_eq!((u.uid, u.gid, u.groups.len()), (7, 8, 0));
    }

    #[test]
    fn read_only_refuses_every_change_and_nothing_else() {
        let mut e = Export::everything();
        e.read_only = true;
        let ok = |op: Op| check_op(&e, &op, |_| false);
        assert_eq!(ok(Op::Mkdir(pb::MkdirReq::default())), Err(Errno::EROFS));
        assert_eq!(
            ok(Op::Setattr(pb::SetAttrReq::default())),
            Err(Errno::EROFS)
        );
        assert_eq!(
            ok(Op::AllocChunk(pb::AllocChunkReq::default())),
            Err(Errno::EROFS)
        );
        assert_eq!(ok(Op::Rename(pb::RenameReq::default())), Err(Errno::EROFS));
        let open = |flags: i32| {
            Op::Open(pb::OpenReq {
                ino: 2,
                flags: flags as u32,
            })
        };
        assert_eq!(ok(open(libc::O_RDONLY)), Ok(()));
        assert_eq!(ok(open(libc::O_WRONLY)), Err(Errno::EROFS));
        assert_eq!(ok(open(libc::O_RDONLY | libc::O_TRUNC)), Err(Errno::EROFS));
        assert_eq!(ok(Op::Getattr(pb::GetAttrReq { ino: 1 })), Ok(()));
        assert_eq!(ok(Op::GetChunks(pb::GetChunksReq::default())), Ok(()));
        assert_eq!(
            ok(Op::Release(pb::ReleaseReq {
                ino: 2,
                write: false,
                more: Vec::new(),
                held: false,
                atimes: Vec::new(),
            })),
            Ok(())
        );
    }

    #[test]
    fn setuid_and_devices() {
        let mut e = Export::everything();
        e.setuid = false;
        e.devices = false;
        let chmod = |ino, mode| {
            Op::Setattr(pb::SetAttrReq {
                ino,
                mode: Some(mode),
                ..Default::default()
            })
        };
        let dirs = |ino: u64| ino == 5;
        assert_eq!(check_op(&e, &chmod(4, 0o4755), dirs), Err(Errno::EPERM));
        assert_eq!(check_op(&e, &chmod(4, 0o2755), dirs), Err(Errno::EPERM));
        assert_eq!(
            check_op(&e, &chmod(5, 0o2775), dirs),
            Ok(()),
            "setgid directory"
        );
        assert_eq!(check_op(&e, &chmod(4, 0o755), dirs), Ok(()));
        let mknod = |mode| {
            Op::Mknod(pb::MknodReq {
                mode,
                ..Default::default()
            })
        };
        assert_eq!(
            check_op(&e, &mknod(libc::S_IFCHR | 0o600), dirs),
            Err(Errno::EPERM)
        );
        assert_eq!(
            check_op(&e, &mknod(libc::S_IFBLK | 0o600), dirs),
            Err(Errno::EPERM)
        );
        assert_eq!(check_op(&e, &mknod(libc::S_IFIFO | 0o600), dirs), Ok(()));
        e.devices = true;
        e.setuid = true;
        assert_eq!(check_op(&e, &mknod(libc::S_IFCHR | 0o600), dirs), Ok(()));
        assert_eq!(check_op(&e, &chmod(4, 0o4755), dirs), Ok(()));
    }

    #[test]
    fn every_inode_of_a_request_is_named() {
        let mut op = Op::Rename(pb::RenameReq {
            parent: 3,
            new_parent: 4,
            ..Default::default()
        });
        let got: Vec<(u64, Slot)> = op_inodes(&mut op)
            .into_iter()
            .map(|(i, s)| (*i, s))
            .collect();
        assert_eq!(got, vec![(3, Slot::Object), (4, Slot::Target)]);
        let mut op = Op::Link(pb::LinkReq {
            ino: 9,
            new_parent: 1,
            ..Default::default()
        });
        for (i, _) in op_inodes(&mut op) {
            if *i == 1 {
                *i = 77;
            }
        }
        assert!(matches!(
            op,
            Op::Link(pb::LinkReq {
                ino: 9,
                new_parent: 77,
                ..
            })
        ));
        assert!(op_inodes(&mut Op::Statfs(pb::StatFsReq {})).is_empty());
    }
}
