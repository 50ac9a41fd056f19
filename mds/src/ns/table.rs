//! The inode table: inode number → `Inode`, in pages of consecutive numbers.
//!
//! Inode numbers are handed out in order and never reused, so a tree holds
//! long runs of consecutive numbers. A `BTreeMap` filled in key order keeps
//! its nodes about 6/11 full (each split leaves the left node half full),
//! so every inode would cost nearly twice its size; a page of `PAGE`
//! consecutive slots costs one slot per number, and a page is freed when its
//! last inode goes. Iteration is in inode order, and the serialized form is
//! exactly a `BTreeMap<u64, Inode>`'s (a map in key order), so snapshots
//! written before this table existed load unchanged.
//!
//! Invariant: `len` is the number of occupied slots; no page is empty.

use super::inode::Inode;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

const PAGE_BITS: u32 = 6;
/// Slots per page: 64 inodes of about 200 bytes, a few pages per directory
/// of small files.
const PAGE: usize = 1 << PAGE_BITS;

#[derive(Clone, PartialEq)]
struct Page {
    slots: [Option<Inode>; PAGE],
    used: u32,
}

impl Page {
    fn empty() -> Box<Page> {
        Box::new(Page {
            slots: std::array::from_fn(|_| None),
            used: 0,
        })
    }
}

#[derive(Clone, Default, PartialEq)]
pub struct InodeTable {
    /// page number (ino >> PAGE_BITS) → its slots.
    pages: BTreeMap<u64, Box<Page>>,
    len: usize,
}

fn split(ino: u64) -> (u64, usize) {
    (ino >> PAGE_BITS, (ino & (PAGE as u64 - 1)) as usize)
}

impl InodeTable {
    pub fn new() -> InodeTable {
        InodeTable::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, ino: &u64) -> Option<&Inode> {
        let (page, slot) = split(*ino);
        self.pages.get(&page)?.slots[slot].as_ref()
    }

    pub fn get_mut(&mut self, ino: &u64) -> Option<&mut Inode> {
        let (page, slot) = split(*ino);
        self.pages.get_mut(&page)?.slots[slot].as_mut()
    }

    pub fn contains_key(&self, ino: &u64) -> bool {
        self.get(ino).is_some()
    }

    /// Puts `inode` at `ino`, returning what was there.
    pub fn insert(&mut self, ino: u64, inode: Inode) -> Option<Inode> {
        let (page, slot) = split(ino);
        let p = self.pages.entry(page).or_insert_with(Page::empty);
        let old = p.slots[slot].replace(inode);
        if old.is_none() {
            p.used += 1;
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, ino: &u64) -> Option<Inode> {
        let (page, slot) = split(*ino);
        let p = self.pages.get_mut(&page)?;
        let old = p.slots[slot].take()?;
        p.used -= 1;
        self.len -= 1;
        if p.used == 0 {
            self.pages.remove(&page);
        }
        Some(old)
    }

    /// Every inode numbered `start` or above, in inode order.
    pub fn range_from(&self, start: u64) -> impl Iterator<Item = (u64, &Inode)> + '_ {
        let (first_page, first_slot) = split(start);
        self.pages.range(first_page..).flat_map(move |(&page, p)| {
            let from = if page == first_page { first_slot } else { 0 };
            p.slots[from..]
                .iter()
                .enumerate()
                .filter_map(move |(k, s)| {
                    let ino = (page << PAGE_BITS) | (from + k) as u64;
                    s.as_ref().map(|i| (ino, i))
                })
        })
    }

    /// Every (ino, inode), in inode order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Inode)> + '_ {
        self.range_from(0)
    }

    #[cfg(test)]
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.iter().map(|(ino, _)| ino)
    }

    pub fn values(&self) -> impl Iterator<Item = &Inode> + '_ {
        self.pages
            .values()
            .flat_map(|p| p.slots.iter().filter_map(Option::as_ref))
    }
}

impl FromIterator<(u64, Inode)> for InodeTable {
    fn from_iter<T: IntoIterator<Item = (u64, Inode)>>(iter: T) -> Self {
        let mut t = InodeTable::new();
        for (ino, i) in iter {
            t.insert(ino, i);
        }
        t
    }
}

impl std::ops::Index<&u64> for InodeTable {
    type Output = Inode;
    /// Panics if there is no such inode, as `BTreeMap`'s does.
    fn index(&self, ino: &u64) -> &Inode {
        self.get(ino).expect("no such inode in the table")
    }
}

impl fmt::Debug for InodeTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for InodeTable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len))?;
        for (ino, i) in self.iter() {
            m.serialize_entry(&ino, i)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for InodeTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = InodeTable;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of inode number to inode")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<InodeTable, A::Error> {
                let mut t = InodeTable::new();
                while let Some((ino, i)) = m.next_entry::<u64, Inode>()? {
                    t.insert(ino, i);
                }
                Ok(t)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::inode::{Kind, Time};

    fn inode(ino: u64) -> Inode {
        Inode::new(ino, Kind::Regular, 0o644, 0, 0, Time::default())
    }

    #[test]
    fn behaves_as_a_btreemap_of_the_same_entries() {
        let mut t = InodeTable::new();
        let mut m = BTreeMap::new();
        // Spread over pages, with gaps, removals and a page emptied.
        let inos: Vec<u64> = (1..300)
            .chain([1_000, 64, 65, 127, 128, u64::MAX - 1])
            .collect();
        for &ino in &inos {
            assert_eq!(
                t.insert(ino, inode(ino)).is_some(),
                m.insert(ino, inode(ino)).is_some()
            );
        }
        for ino in (1..300).filter(|i| i % 3 == 0).chain(64..128) {
            assert_eq!(t.remove(&ino), m.remove(&ino));
        }
        assert_eq!(t.remove(&5_000), None);
        assert_eq!(t.len(), m.len());
        assert!(
            t.pages.values().all(|p| p.used > 0),
            "an empty page was kept"
        );
        assert!(
            t.pages.keys().all(|&p| p != 1),
            "page 1 (64..128) emptied but kept"
        );
        let got: Vec<u64> = t.keys().collect();
        let want: Vec<u64> = m.keys().copied().collect();
        assert_eq!(got, want);
        assert_eq!(t.values().count(), m.len());
        for start in [0, 1, 63, 64, 100, 129, 299, 1_000, 1_001, u64::MAX] {
            let got: Vec<u64> = t.range_from(start).map(|(i, _)| i).collect();
            let want: Vec<u64> = m.range(start..).map(|(&i, _)| i).collect();
            assert_eq!(got, want, "from {start}");
        }
        for ino in [0, 1, 3, 4, 64, 299, 1_000, u64::MAX - 1, u64::MAX] {
            assert_eq!(t.get(&ino), m.get(&ino));
            assert_eq!(t.contains_key(&ino), m.contains_key(&ino));
        }
        t.get_mut(&4).unwrap().size = 77;
        assert_eq!(t.get(&4).unwrap().size, 77);
    }

    #[test]
    fn serializes_exactly_as_a_btreemap() {
        let m: BTreeMap<u64, Inode> = [1, 2, 70, 9_000]
            .into_iter()
            .map(|i| (i, inode(i)))
            .collect();
        let t: InodeTable = m.clone().into_iter().collect();
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(postcard::to_allocvec(&t).unwrap(), bytes);
        let back: InodeTable = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, t);
    }
}
