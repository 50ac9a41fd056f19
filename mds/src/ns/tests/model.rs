//! The namespace against a model: a map from path to directory / file (hard
//! links share a file id with a size and a link count). Random sequences of
//! mkdir, create, unlink, rmdir, rename (with flags), link, truncate and
//! write, plus "restart" (postcard round trip of the state) and "replay" (all
//! records onto a fresh namespace), must give the model's errno or success,
//! and afterwards the same tree. "checkpoint" and "disk restart" go through
//! the real files: a snapshot written by `snapshot::write` at that point, and
//! on restart every record framed into real log segments (those the newest
//! snapshot covers dropped), then `datadir::recover` rebuilds the state.

use super::*;
use proptest::prelude::*;

type P = Vec<String>;

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir,
    File(u64),
}

#[derive(Default)]
struct Model {
    paths: BTreeMap<P, Node>,
    /// file id → (size, nlink)
    files: BTreeMap<u64, (u64, u32)>,
    next: u64,
}

#[derive(Clone, Debug)]
enum MOp {
    Mkdir(P),
    Create(P),
    Unlink(P),
    Rmdir(P),
    Rename(P, P, u32),
    Link(P, P),
    Truncate(P, u64),
    Write(P, u64),
    Restart,
    Replay,
    Checkpoint,
    DiskRestart,
}

const SMALL_CHUNK: u64 = 4096;

fn parent(p: &P) -> P {
    p[..p.len() - 1].to_vec()
}

fn is_prefix(a: &P, b: &P) -> bool {
    b.len() >= a.len() && b[..a.len()] == a[..]
}

impl Model {
    /// The directory `p` must be: ENOENT / ENOTDIR at the first bad component.
    fn resolve_dir(&self, p: &P) -> Result<(), Errno> {
        for n in 1..=p.len() {
            match self.paths.get(&p[..n]) {
                None => return Err(Errno::ENOENT),
                Some(Node::File(_)) => return Err(Errno::ENOTDIR),
                Some(Node::Dir) => {}
            }
        }
        Ok(())
    }

    fn get(&self, p: &P) -> Result<Option<&Node>, Errno> {
        self.resolve_dir(&parent(p))?;
        Ok(self.paths.get(p))
    }

    fn has_children(&self, p: &P) -> bool {
        self.paths
            .keys()
            .any(|k| k.len() == p.len() + 1 && is_prefix(p, k))
    }

    fn drop_link(&mut self, p: &P) {
        if let Some(Node::File(id)) = self.paths.remove(p) {
            let f = self.files.get_mut(&id).unwrap();
            f.1 -= 1;
            if f.1 == 0 {
                self.files.remove(&id);
            }
        }
    }

    /// Moves every path under `from` (inclusive) to under `to`.
    fn take_subtree(&mut self, from: &P) -> Vec<(P, Node)> {
        let keys: Vec<P> = self
            .paths
            .keys()
            .filter(|k| is_prefix(from, k))
            .cloned()
            .collect();
        keys.into_iter()
            .map(|k| {
                let n = self.paths.remove(&k).unwrap();
                (k[from.len()..].to_vec(), n)
            })
            .collect()
    }

    fn put_subtree(&mut self, at: &P, nodes: Vec<(P, Node)>) {
        for (rest, n) in nodes {
            self.paths.insert([at.clone(), rest].concat(), n);
        }
    }

    fn apply(&mut self, op: &MOp) -> Result<(), Errno> {
        match op {
            MOp::Mkdir(p) | MOp::Create(p) => {
                if self.get(p)?.is_some() {
                    return Err(Errno::EEXIST);
                }
                let node = if matches!(op, MOp::Mkdir(_)) {
                    Node::Dir
                } else {
                    self.next += 1;
                    self.files.insert(self.next, (0, 1));
                    Node::File(self.next)
                };
                self.paths.insert(p.clone(), node);
            }
            MOp::Unlink(p) => match self.get(p)? {
                None => return Err(Errno::ENOENT),
                Some(Node::Dir) => return Err(Errno::EISDIR),
                Some(Node::File(_)) => self.drop_link(p),
            },
            MOp::Rmdir(p) => match self.get(p)? {
                None => return Err(Errno::ENOENT),
                Some(Node::File(_)) => return Err(Errno::ENOTDIR),
                Some(Node::Dir) if self.has_children(p) => return Err(Errno::ENOTEMPTY),
                Some(Node::Dir) => {
                    self.paths.remove(p);
                }
            },
            MOp::Link(a, b) => {
                let src = self.get(a)?.cloned().ok_or(Errno::ENOENT)?;
                if self.get(b)?.is_some() {
                    return Err(Errno::EEXIST);
                }
                let Node::File(id) = src else {
                    return Err(Errno::EPERM);
                };
                self.files.get_mut(&id).unwrap().1 += 1;
                self.paths.insert(b.clone(), Node::File(id));
            }
            MOp::Truncate(p, size) | MOp::Write(p, size) => {
                let Node::File(id) = self.get(p)?.cloned().ok_or(Errno::ENOENT)? else {
                    return Err(Errno::EISDIR);
                };
                let f = self.files.get_mut(&id).unwrap();
                f.0 = if matches!(op, MOp::Write(..)) {
                    f.0.max(*size)
                } else {
                    *size
                };
            }
            MOp::Rename(a, b, flags) => {
                let exchange = *flags == 2;
                self.resolve_dir(&parent(a))?;
                self.resolve_dir(&parent(b))?;
                let src = self.paths.get(a).cloned().ok_or(Errno::ENOENT)?;
                let tgt = self.paths.get(b).cloned();
                if *flags == 1 && tgt.is_some() {
                    return Err(Errno::EEXIST);
                }
                if exchange && tgt.is_none() {
                    return Err(Errno::ENOENT);
                }
                if src == Node::Dir && is_prefix(a, &parent(b)) {
                    return Err(Errno::EINVAL);
                }
                if tgt == Some(Node::Dir) && is_prefix(b, &parent(a)) {
                    return Err(if exchange {
                        Errno::EINVAL
                    } else {
                        Errno::ENOTEMPTY
                    });
                }
                let same = a == b
                    || matches!((&src, &tgt), (Node::File(x), Some(Node::File(y))) if x == y);
                if same {
                    return Ok(());
                }
                if exchange {
                    let sa = self.take_subtree(a);
                    let sb = self.take_subtree(b);
                    self.put_subtree(b, sa);
                    self.put_subtree(a, sb);
                    return Ok(());
                }
                match (&src, &tgt) {
                    (Node::Dir, Some(Node::File(_))) => return Err(Errno::ENOTDIR),
                    (Node::File(_), Some(Node::Dir)) => return Err(Errno::EISDIR),
                    (_, Some(Node::Dir)) if self.has_children(b) => return Err(Errno::ENOTEMPTY),
                    _ => {}
                }
                if tgt.is_some() {
                    self.drop_link(b);
                    self.paths.remove(b);
                }
                let s = self.take_subtree(a);
                self.put_subtree(b, s);
            }
            MOp::Restart | MOp::Replay | MOp::Checkpoint | MOp::DiskRestart => {}
        }
        Ok(())
    }
}

/// The inode a directory path names, by lookups from the root.
fn walk(h: &Harness, p: &[String]) -> Result<u64, Errno> {
    let mut cur = ROOT_INO;
    for c in p {
        let a = h.lookup(cur, c)?;
        if a.kind != pb::FileKind::Directory as i32 {
            return Err(Errno::ENOTDIR);
        }
        cur = a.ino;
    }
    Ok(cur)
}

/// (parent ino, name) of a path, failing like the kernel's path walk.
fn at(h: &Harness, p: &P) -> Result<(u64, String), Errno> {
    let dir = walk(h, &p[..p.len() - 1])?;
    Ok((dir, p[p.len() - 1].clone()))
}

fn run_op(h: &mut Harness, op: &MOp) -> Result<(), Errno> {
    let c = root();
    match op {
        MOp::Mkdir(p) => {
            let (d, n) = at(h, p)?;
            h.mkdir_as(&c, d, &n, 0o755).map(drop)
        }
        MOp::Create(p) => {
            let (d, n) = at(h, p)?;
            h.create_as(&c, d, &n, 0o644).map(drop)
        }
        MOp::Unlink(p) => {
            let (d, n) = at(h, p)?;
            h.unlink_as(&c, d, &n)
        }
        MOp::Rmdir(p) => {
            let (d, n) = at(h, p)?;
            h.rmdir_as(&c, d, &n)
        }
        MOp::Rename(a, b, flags) => {
            let (da, na) = at(h, a)?;
            let (db, nb) = at(h, b)?;
            h.rename_as(&c, da, &na, db, &nb, *flags)
        }
        MOp::Link(a, b) => {
            let (da, na) = at(h, a)?;
            let ino = h.lookup(da, &na)?.ino;
            let (db, nb) = at(h, b)?;
            h.link_as(&c, ino, db, &nb).map(drop)
        }
        MOp::Truncate(p, size) => {
            let (d, n) = at(h, p)?;
            let ino = h.lookup(d, &n)?.ino;
            h.truncate_as(&c, ino, *size).map(drop)
        }
        MOp::Write(p, end) => {
            let (d, n) = at(h, p)?;
            let ino = h.lookup(d, &n)?.ino;
            if *end > 0 {
                let index = (end - 1) / SMALL_CHUNK;
                h.op(
                    &c,
                    Op::AllocChunk(pb::AllocChunkReq {
                        ino,
                        index,
                        ..Default::default()
                    }),
                )?;
            }
            h.op(
                &c,
                Op::CommitWrite(pb::CommitWriteReq {
                    ino,
                    end: *end,
                    ..Default::default()
                }),
            )
            .map(drop)
        }
        MOp::Restart => {
            let bytes = postcard::to_allocvec(&h.ns).unwrap();
            let ns: Namespace = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(ns, h.ns);
            h.ns = ns;
            Ok(())
        }
        MOp::Checkpoint | MOp::DiskRestart => unreachable!("run by disk_op"),
        MOp::Replay => {
            let mut ns = Namespace::new(SMALL_CHUNK);
            for (rec, reply) in h.log.iter().zip(&h.replies) {
                assert_eq!(&ns.apply(rec).reply, reply);
            }
            assert_eq!(ns, h.ns);
            h.ns = ns;
            Ok(())
        }
    }
}

/// Checkpoint: the state as of the last record, written as a real snapshot.
/// DiskRestart: every record framed into real log segments (rolled at each
/// checkpoint, covered ones dropped, as the MDS does), then recovery from
/// snapshot + log must rebuild exactly the live state.
fn disk_op(h: &mut Harness, op: &MOp, dir: &std::path::Path) -> Result<(), Errno> {
    use crate::state::{encode_entry, LogEntry, State};
    use crate::wal::{codec, log};
    let snap_dir = dir.join(crate::snapshot::DIR);
    match op {
        MOp::Checkpoint => {
            let st = State {
                ns: h.ns.clone(),
                applied_index: h.log.len() as u64,
                ..State::new(SMALL_CHUNK)
            };
            crate::snapshot::write(&snap_dir, &st).unwrap();
        }
        _ => {
            let wal = dir.join("wal");
            let _ = std::fs::remove_dir_all(&wal);
            std::fs::create_dir_all(&wal).unwrap();
            let cuts: Vec<u64> = crate::snapshot::list(&snap_dir)
                .unwrap()
                .iter()
                .map(|(i, _)| *i)
                .collect();
            let mut w = log::LogWriter::open(&wal, 1).unwrap();
            for (i, rec) in h.log.iter().enumerate() {
                let index = i as u64 + 1;
                if cuts.contains(&(index - 1)) {
                    w.roll(index).unwrap();
                }
                let mut buf = Vec::new();
                let e = LogEntry {
                    session: 0,
                    seq: 0,
                    record: rec.clone(),
                };
                codec::encode_frame(index, 0, &encode_entry(&e), &mut buf);
                w.append_sync(index, &buf).unwrap();
            }
            if let Some(last) = cuts.last() {
                w.drop_covered(*last).unwrap();
            }
            let st = crate::datadir::recover(dir, SMALL_CHUNK, true).unwrap();
            assert_eq!(st.applied_index, h.log.len() as u64);
            assert_eq!(st.ns, h.ns);
            h.ns = st.ns;
        }
    }
    Ok(())
}

/// The namespace's tree as (path → (is dir, size, nlink, ino)), by readdir.
fn tree(h: &Harness) -> BTreeMap<P, (bool, u64, u32, u64)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![(Vec::new(), ROOT_INO)];
    while let Some((p, dir)) = todo.pop() {
        for name in h.names(dir).into_iter().skip(2) {
            let a = h.lookup(dir, &name).unwrap();
            let mut q: P = p.clone();
            q.push(name);
            let is_dir = a.kind == pb::FileKind::Directory as i32;
            if is_dir {
                todo.push((q.clone(), a.ino));
            }
            out.insert(q, (is_dir, if is_dir { 0 } else { a.size }, a.nlink, a.ino));
        }
    }
    out
}

fn compare(h: &Harness, m: &Model) {
    let t = tree(h);
    assert_eq!(
        t.keys().collect::<Vec<_>>(),
        m.paths.keys().collect::<Vec<_>>()
    );
    let mut id_to_ino = BTreeMap::new();
    let mut ino_to_id = BTreeMap::new();
    for (p, node) in &m.paths {
        let (is_dir, size, nlink, ino) = t[p];
        match node {
            Node::Dir => {
                let subdirs = m
                    .paths
                    .iter()
                    .filter(|(k, n)| **n == Node::Dir && k.len() == p.len() + 1 && is_prefix(p, k))
                    .count();
                assert!(is_dir, "{p:?}");
                assert_eq!(nlink as usize, 2 + subdirs, "{p:?}");
            }
            Node::File(id) => {
                assert!(!is_dir, "{p:?}");
                assert_eq!((size, nlink), m.files[id], "{p:?}");
                assert_eq!(
                    *id_to_ino.entry(*id).or_insert(ino),
                    ino,
                    "{p:?}: links of one file"
                );
                assert_eq!(
                    *ino_to_id.entry(ino).or_insert(*id),
                    *id,
                    "{p:?}: distinct files"
                );
            }
        }
    }
    let root_subdirs = m
        .paths
        .iter()
        .filter(|(k, n)| **n == Node::Dir && k.len() == 1)
        .count();
    assert_eq!(h.getattr(ROOT_INO).nlink as usize, 2 + root_subdirs);
    let c = h.ns.counts();
    assert_eq!(c.files as usize, m.files.len());
    assert_eq!(c.bytes, m.files.values().map(|f| f.0).sum::<u64>());
    assert!(h.ns.orphans().is_empty());
}

fn path() -> impl Strategy<Value = P> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from),
        1..=3,
    )
}

fn mop() -> impl Strategy<Value = MOp> {
    prop_oneof![
        3 => path().prop_map(MOp::Mkdir),
        3 => path().prop_map(MOp::Create),
        2 => path().prop_map(MOp::Unlink),
        2 => path().prop_map(MOp::Rmdir),
        4 => (path(), path(), prop::sample::select(vec![0u32, 0, 1, 2])).prop_map(|(a, b, f)| MOp::Rename(a, b, f)),
        2 => (path(), path()).prop_map(|(a, b)| MOp::Link(a, b)),
        1 => (path(), 0..5 * SMALL_CHUNK).prop_map(|(p, s)| MOp::Truncate(p, s)),
        2 => (path(), 0..5 * SMALL_CHUNK).prop_map(|(p, s)| MOp::Write(p, s)),
        1 => Just(MOp::Restart),
        1 => Just(MOp::Replay),
        1 => Just(MOp::Checkpoint),
        1 => Just(MOp::DiskRestart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn namespace_matches_model(ops in prop::collection::vec(mop(), 1..60)) {
        let mut h = Harness::new();
        h.ns = Namespace::new(SMALL_CHUNK);
        let mut m = Model::default();
        let disk = tempfile::tempdir().unwrap();
        for op in &ops {
            let want = m.apply(op);
            let got = match op {
                MOp::Checkpoint | MOp::DiskRestart => disk_op(&mut h, op, disk.path()),
                _ => run_op(&mut h, op),
            };
            prop_assert_eq!(got, want, "{:?}", op);
            compare(&h, &m);
        }
    }
}
