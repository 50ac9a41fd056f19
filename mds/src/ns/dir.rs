//! Directory contents with stable readdir cookies.
//!
//! Every entry gets a cookie from the directory's own counter when it is
//! inserted; cookies are never reused and never change while the entry lives,
//! so a reader paging with "entries after cookie C" sees every entry that
//! existed throughout exactly once, however many others come and go between
//! pages. "." and ".." are not stored: `read()` synthesizes them as cookies 1
//! and 2, so stored cookies start at 3.
//!
//! Layout, for memory (a directory of small files costs about 50 bytes per
//! entry): the entries live in slots in cookie order (cookies only grow, so
//! an insert is a push; `Slots`, blocks of 1,024), each name stored once, in
//! its slot (inline when short, `name.rs`); a hash index
//! of slot positions finds a name. A removed entry leaves a tombstone (ino 0,
//! no inode has it) until tombstones are half the slots, then the vector is
//! compacted and the index rebuilt. The index's hasher is seeded at random
//! per process (names come from clients): it decides only how fast a lookup
//! is, never an outcome, so replicas and replays still agree.
//!
//! Invariants: cookies strictly increase along `slots` and are all below
//! `next_cookie`; `index` holds exactly the live slots' positions, one per
//! name; `tombstones` counts the slots with ino 0.
//!
//! Serialized as it always was (a map name → entry, a map cookie → name, the
//! next cookie), so snapshots load across this change in both directions.

use super::name::Name;
use hashbrown::HashTable;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

/// The first cookie a stored entry can get ("." is 1, ".." is 2).
pub const FIRST_COOKIE: u64 = 3;

/// Below this many tombstones a directory is never compacted.
const MIN_TOMBSTONES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub ino: u64,
    pub cookie: u64,
}

#[derive(Clone, Debug)]
struct Slot {
    cookie: u64,
    /// 0: a tombstone (the entry was removed).
    ino: u64,
    name: Name,
}

/// Slots per block of a large directory.
const BLOCK: usize = 1024;

/// The slots, in blocks of `BLOCK` (the first grows up to that like a
/// vector, so a small directory stays small): a directory of 80,000 entries
/// held in one vector would sit at 1.6x its size on average after the
/// vector's last doubling; in blocks, at most one block is slack. Every block
/// but the last is full, so position p is in block p / BLOCK.
#[derive(Clone, Debug, Default)]
struct Slots {
    blocks: Vec<Vec<Slot>>,
    len: usize,
}

impl Slots {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, s: Slot) {
        match self.blocks.last_mut() {
            Some(b) if b.len() < BLOCK => {
                if b.len() == b.capacity() {
                    b.reserve_exact(b.len().max(4).min(BLOCK - b.len()));
                }
                b.push(s)
            }
            _ => {
                let mut b = Vec::with_capacity(if self.blocks.is_empty() { 4 } else { BLOCK });
                b.push(s);
                self.blocks.push(b);
            }
        }
        self.len += 1;
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.blocks.iter().flatten()
    }

    /// The slots from position `start` on.
    fn iter_from(&self, start: usize) -> impl Iterator<Item = &Slot> + '_ {
        let (b, i) = (start / BLOCK, start % BLOCK);
        self.blocks
            .get(b..)
            .unwrap_or_default()
            .iter()
            .enumerate()
            .flat_map(move |(k, block)| &block[if k == 0 { i.min(block.len()) } else { 0 }..])
    }

    /// The position of the first slot whose cookie is above `cookie`.
    fn first_after(&self, cookie: u64) -> usize {
        let b = self
            .blocks
            .partition_point(|block| block.last().is_some_and(|s| s.cookie <= cookie));
        match self.blocks.get(b) {
            Some(block) => b * BLOCK + block.partition_point(|s| s.cookie <= cookie),
            None => self.len,
        }
    }

    fn last(&self) -> Option<&Slot> {
        self.blocks.last()?.last()
    }

    /// Keeps the live slots only (positions change).
    fn drop_tombstones(&mut self) {
        let live: Vec<Slot> = std::mem::take(&mut self.blocks)
            .into_iter()
            .flatten()
            .filter(|s| s.ino != 0)
            .collect();
        self.len = 0;
        for s in live {
            self.push(s);
        }
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Slot;
    fn index(&self, p: usize) -> &Slot {
        &self.blocks[p / BLOCK][p % BLOCK]
    }
}

impl std::ops::IndexMut<usize> for Slots {
    fn index_mut(&mut self, p: usize) -> &mut Slot {
        &mut self.blocks[p / BLOCK][p % BLOCK]
    }
}

#[derive(Clone, Debug)]
pub struct Dir {
    slots: Slots,
    /// Positions in `slots` of the live entries, hashed by their names.
    index: HashTable<u32>,
    tombstones: usize,
    next_cookie: u64,
}

fn hash(name: &[u8]) -> u64 {
    static STATE: OnceLock<RandomState> = OnceLock::new();
    STATE.get_or_init(RandomState::new).hash_one(name)
}

impl Default for Dir {
    fn default() -> Self {
        Dir::new()
    }
}

/// Equal entries (name, ino, cookie) and counter: the layout (tombstones,
/// capacity) is not content.
impl PartialEq for Dir {
    fn eq(&self, o: &Self) -> bool {
        self.next_cookie == o.next_cookie
            && self.len() == o.len()
            && self.live().zip(o.live()).all(|(a, b)| {
                a.cookie == b.cookie && a.ino == b.ino && a.name.as_bytes() == b.name.as_bytes()
            })
    }
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            slots: Slots::default(),
            index: HashTable::new(),
            tombstones: 0,
            next_cookie: FIRST_COOKIE,
        }
    }

    fn live(&self) -> impl Iterator<Item = &Slot> + '_ {
        self.slots.iter().filter(|s| s.ino != 0)
    }

    fn position(&self, name: &[u8]) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(hash(name), |&p| slots[p as usize].name.as_bytes() == name)
            .map(|&p| p as usize)
    }

    pub fn get(&self, name: &[u8]) -> Option<Entry> {
        let s = &self.slots[self.position(name)?];
        Some(Entry {
            ino: s.ino,
            cookie: s.cookie,
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.tombstones
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `name → ino` with a fresh cookie; an existing entry of that name is
    /// replaced (and returned) — callers remove targets explicitly first, this
    /// only keeps the structure consistent if they don't.
    pub fn insert(&mut self, name: &[u8], ino: u64) -> Option<Entry> {
        let old = self.remove(name);
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.push(cookie, ino, Name::from(name));
        old
    }

    fn push(&mut self, cookie: u64, ino: u64, name: Name) {
        let pos = u32::try_from(self.slots.len()).expect("a directory of 2^32 slots");
        let h = hash(&name);
        self.slots.push(Slot { cookie, ino, name });
        let slots = &self.slots;
        self.index
            .insert_unique(h, pos, |&p| hash(&slots[p as usize].name));
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Entry> {
        let slots = &self.slots;
        let found = self
            .index
            .find_entry(hash(name), |&p| slots[p as usize].name.as_bytes() == name)
            .ok()?;
        let (pos, _) = found.remove();
        let s = &mut self.slots[pos as usize];
        let e = Entry {
            ino: s.ino,
            cookie: s.cookie,
        };
        s.ino = 0;
        s.name = Name::default();
        self.tombstones += 1;
        self.compact_if_sparse();
        Some(e)
    }

    /// Drops the tombstones once they are half the slots (amortized O(1)
    /// per remove), and gives memory back to a directory that shrank.
    fn compact_if_sparse(&mut self) {
        if self.tombstones < MIN_TOMBSTONES || self.tombstones * 2 < self.slots.len() {
            return;
        }
        self.slots.drop_tombstones();
        self.tombstones = 0;
        self.reindex();
    }

    fn reindex(&mut self) {
        let slots = &self.slots;
        let mut index = HashTable::with_capacity(slots.len());
        for (p, s) in slots.iter().enumerate() {
            if s.ino != 0 {
                index.insert_unique(hash(&s.name), p as u32, |&p: &u32| {
                    hash(&slots[p as usize].name)
                });
            }
        }
        self.index = index;
    }

    /// Renames an entry within this directory keeping its cookie (an entry
    /// already called `to` is dropped). A reader paging through the directory
    /// then sees the entry once, under the old or the new name, rather than
    /// again under a fresh cookie after the ones it has read: a program that
    /// renames what it lists (xfstests generic/736) would otherwise never end.
    pub fn rename_entry(&mut self, from: &[u8], to: &[u8]) -> bool {
        if self.position(from).is_none() {
            return false;
        }
        if from == to {
            return true;
        }
        // Drop the target first: that may compact, which moves slots.
        self.remove(to);
        let slots = &self.slots;
        let Ok(found) = self
            .index
            .find_entry(hash(from), |&p| slots[p as usize].name.as_bytes() == from)
        else {
            return false;
        };
        let (pos, _) = found.remove();
        self.slots[pos as usize].name = Name::from(to);
        let slots = &self.slots;
        self.index
            .insert_unique(hash(to), pos, |&p| hash(&slots[p as usize].name));
        true
    }

    /// Points an existing entry at another inode, keeping its cookie
    /// (RENAME_EXCHANGE swaps inodes, not names).
    pub fn set_ino(&mut self, name: &[u8], ino: u64) -> bool {
        debug_assert_ne!(ino, 0, "ino 0 marks a tombstone");
        match self.position(name) {
            Some(p) => {
                self.slots[p].ino = ino;
                true
            }
            None => false,
        }
    }

    /// Entries whose cookie is greater than `cookie`, in cookie order.
    pub fn after(&self, cookie: u64) -> impl Iterator<Item = (u64, &[u8], u64)> + '_ {
        let start = self.slots.first_after(cookie);
        self.slots
            .iter_from(start)
            .filter(|s| s.ino != 0)
            .map(|s| (s.cookie, s.name.as_bytes(), s.ino))
    }

    /// Every entry, in cookie order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Entry)> + '_ {
        self.live().map(|s| {
            (
                s.name.as_bytes(),
                Entry {
                    ino: s.ino,
                    cookie: s.cookie,
                },
            )
        })
    }

    /// Checks the invariants (tests and debug assertions).
    pub fn consistent(&self) -> bool {
        let ordered = self
            .slots
            .iter()
            .zip(self.slots.iter().skip(1))
            .all(|(a, b)| a.cookie < b.cookie);
        let blocks_full = self
            .slots
            .blocks
            .iter()
            .rev()
            .skip(1)
            .all(|b| b.len() == BLOCK)
            && self.slots.blocks.iter().map(Vec::len).sum::<usize>() == self.slots.len();
        let below = self
            .slots
            .last()
            .is_none_or(|s| s.cookie < self.next_cookie);
        let dead = self.slots.iter().filter(|s| s.ino == 0).count();
        let indexed = self.live().all(|s| {
            self.position(&s.name)
                .is_some_and(|p| self.slots[p].cookie == s.cookie)
        });
        ordered
            && blocks_full
            && below
            && dead == self.tombstones
            && indexed
            && self.index.len() == self.len()
    }
}

/// The serialized form, as the directory was once held.
#[derive(Serialize)]
struct StoredRef<'a> {
    entries: Vec<(&'a [u8], Entry)>,
    by_cookie: Vec<(u64, &'a [u8])>,
    next_cookie: u64,
}

#[derive(Deserialize)]
struct Stored {
    entries: BTreeMap<Vec<u8>, Entry>,
    by_cookie: BTreeMap<u64, Vec<u8>>,
    next_cookie: u64,
}

impl Serialize for Dir {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Maps (not sequences), as a BTreeMap serializes; the name map in
        // name order, as it always was, so the bytes are too.
        let mut entries: Vec<(&[u8], Entry)> = self.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let by_cookie = self.live().map(|s| (s.cookie, s.name.as_bytes())).collect();
        let stored = StoredRef {
            entries,
            by_cookie,
            next_cookie: self.next_cookie,
        };
        stored.serialize_as_maps(s)
    }
}

impl StoredRef<'_> {
    fn serialize_as_maps<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct AsMap<'b, K, V>(&'b [(K, V)]);
        impl<K: Serialize, V: Serialize> Serialize for AsMap<'_, K, V> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
            }
        }
        let mut st = s.serialize_struct("Dir", 3)?;
        st.serialize_field("entries", &AsMap(&self.entries))?;
        st.serialize_field("by_cookie", &AsMap(&self.by_cookie))?;
        st.serialize_field("next_cookie", &self.next_cookie)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Dir {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Stored {
            entries,
            by_cookie,
            next_cookie,
        } = Stored::deserialize(d)?;
        let mut dir = Dir {
            slots: Slots::default(),
            index: HashTable::with_capacity(by_cookie.len()),
            tombstones: 0,
            next_cookie,
        };
        for (cookie, name) in by_cookie {
            let e = entries
                .get(&name)
                .filter(|e| e.cookie == cookie && e.ino != 0);
            let e = e.ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "directory entry {:?} (cookie {cookie}) is not in both maps",
                    String::from_utf8_lossy(&name)
                ))
            })?;
            if cookie >= next_cookie {
                return Err(serde::de::Error::custom("a cookie at or past the next one"));
            }
            dir.push(cookie, e.ino, Name::from(name));
        }
        if dir.len() != entries.len() {
            return Err(serde::de::Error::custom(
                "directory maps disagree on the number of entries",
            ));
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout the directory had before: the model its behaviour and
    /// serialized bytes are checked against.
    #[derive(Default, Serialize)]
    struct Model {
        entries: BTreeMap<Vec<u8>, Entry>,
        by_cookie: BTreeMap<u64, Vec<u8>>,
        next_cookie: u64,
    }

    impl Model {
        fn new() -> Model {
            Model {
                next_cookie: FIRST_COOKIE,
                ..Model::default()
            }
        }
        fn remove(&mut self, name: &[u8]) -> Option<Entry> {
            let e = self.entries.remove(name)?;
            self.by_cookie.remove(&e.cookie);
            Some(e)
        }
        fn insert(&mut self, name: &[u8], ino: u64) -> Option<Entry> {
            let old = self.remove(name);
            let cookie = self.next_cookie;
            self.next_cookie += 1;
            self.entries.insert(name.to_vec(), Entry { ino, cookie });
            self.by_cookie.insert(cookie, name.to_vec());
            old
        }
        fn rename(&mut self, from: &[u8], to: &[u8]) -> bool {
            let Some(e) = self.entries.remove(from) else {
                return false;
            };
            if let Some(old) = self.entries.remove(to) {
                self.by_cookie.remove(&old.cookie);
            }
            self.by_cookie.insert(e.cookie, to.to_vec());
            self.entries.insert(to.to_vec(), e);
            true
        }
    }

    fn same(d: &Dir, m: &Model) {
        assert!(d.consistent());
        assert_eq!(d.len(), m.entries.len());
        for cookie in [0, 3, 10, 50, 400, u64::MAX] {
            let got: Vec<(u64, Vec<u8>, u64)> = d
                .after(cookie)
                .map(|(c, n, i)| (c, n.to_vec(), i))
                .collect();
            let want: Vec<(u64, Vec<u8>, u64)> = m
                .by_cookie
                .range(cookie.saturating_add(1)..)
                .map(|(&c, n)| (c, n.clone(), m.entries[n].ino))
                .collect();
            assert_eq!(got, want, "after {cookie}");
        }
        for (n, e) in &m.entries {
            assert_eq!(d.get(n), Some(*e));
        }
        assert_eq!(
            postcard::to_allocvec(d).unwrap(),
            postcard::to_allocvec(m).unwrap(),
            "serialized form changed"
        );
        let back: Dir = postcard::from_bytes(&postcard::to_allocvec(d).unwrap()).unwrap();
        assert_eq!(&back, d);
        assert!(back.consistent());
    }

    #[test]
    fn behaves_and_serializes_as_the_two_maps_did() {
        let mut d = Dir::new();
        let mut m = Model::new();
        // A deterministic mix of inserts, replacing inserts, removes (enough
        // to compact several times) and renames onto free and taken names.
        let mut x: u64 = 12345;
        for step in 0..5_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = format!("n{}", (x >> 33) % 300).into_bytes();
            let b = format!("n{}", (x >> 13) % 300).into_bytes();
            let long = format!("{}-{}", "long".repeat(10), (x >> 40) % 50).into_bytes();
            match (x >> 60) % 6 {
                0 | 1 => assert_eq!(d.insert(&a, step + 10), m.insert(&a, step + 10)),
                2 => assert_eq!(d.insert(&long, step + 10), m.insert(&long, step + 10)),
                3 | 4 => assert_eq!(d.remove(&a), m.remove(&a)),
                _ => assert_eq!(d.rename_entry(&a, &b), m.rename(&a, &b)),
            }
            if step % 250 == 0 {
                same(&d, &m);
            }
        }
        same(&d, &m);
        assert!(d.set_ino(b"missing", 5) == m.entries.contains_key(&b"missing"[..]));
        for n in m.entries.keys().cloned().collect::<Vec<_>>() {
            assert_eq!(d.remove(&n), m.remove(&n));
        }
        same(&d, &m);
        assert!(d.is_empty());
        assert!(
            d.slots.len() < 2 * MIN_TOMBSTONES,
            "an emptied directory kept its slots"
        );
    }

    #[test]
    fn a_large_directory_spans_blocks() {
        let mut d = Dir::new();
        let mut m = Model::new();
        let n = 3 * BLOCK as u64 + 17;
        for k in 0..n {
            let name = format!("file-{k:06}").into_bytes();
            assert_eq!(d.insert(&name, k + 10), m.insert(&name, k + 10));
        }
        assert_eq!(d.slots.blocks.len(), 4);
        same(&d, &m);
        // Every third entry goes: tombstones, then one compaction.
        for k in (0..n).step_by(3) {
            let name = format!("file-{k:06}").into_bytes();
            assert_eq!(d.remove(&name), m.remove(&name));
        }
        same(&d, &m);
        for k in (1..n).step_by(3) {
            let name = format!("file-{k:06}").into_bytes();
            assert_eq!(d.remove(&name), m.remove(&name));
        }
        same(&d, &m);
        assert!(d.slots.len() < 2 * d.len() + MIN_TOMBSTONES);
        // Readdir paging from every cookie in a stretch across a block edge.
        for c in (BLOCK as u64 - 5)..(BLOCK as u64 + 5) {
            let got: Vec<u64> = d.after(c).map(|(c, ..)| c).collect();
            let want: Vec<u64> = m.by_cookie.range(c + 1..).map(|(&c, _)| c).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_snapshot_whose_maps_disagree_is_refused() {
        let mut m = Model {
            next_cookie: 10,
            ..Model::default()
        };
        m.entries.insert(b"a".to_vec(), Entry { ino: 5, cookie: 3 });
        m.by_cookie.insert(4, b"a".to_vec());
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert!(postcard::from_bytes::<Dir>(&bytes).is_err());
    }
}
