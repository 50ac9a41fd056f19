//! Directory contents with stable readdir cookies.
//!
//! Every entry gets a cookie from the directory's own counter when it is
//! inserted; cookies are never reused and never change while the entry lives,
//! so a reader paging with "entries after cookie C" sees every entry that
//! existed throughout exactly once, however many others come and go between
//! pages. "." and ".." are not stored: `read()` synthesizes them as cookies 1
//! and 2, so stored cookies start at 3.
//!
//! Invariant: `by_cookie` is exactly the inverse of `entries`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The first cookie a stored entry can get ("." is 1, ".." is 2).
pub const FIRST_COOKIE: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub ino: u64,
    pub cookie: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Dir {
    entries: BTreeMap<Vec<u8>, Entry>,
    by_cookie: BTreeMap<u64, Vec<u8>>,
    next_cookie: u64,
}

impl Default for Dir {
    fn default() -> Self {
        Dir::new()
    }
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            entries: BTreeMap::new(),
            by_cookie: BTreeMap::new(),
            next_cookie: FIRST_COOKIE,
        }
    }

    pub fn get(&self, name: &[u8]) -> Option<Entry> {
        self.entries.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds `name → ino` with a fresh cookie; an existing entry of that name is
    /// replaced (and returned) — callers remove targets explicitly first, this
    /// only keeps the two maps consistent if they don't.
    pub fn insert(&mut self, name: &[u8], ino: u64) -> Option<Entry> {
        let old = self.remove(name);
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        self.entries.insert(name.to_vec(), Entry { ino, cookie });
        self.by_cookie.insert(cookie, name.to_vec());
        old
    }

    pub fn remove(&mut self, name: &[u8]) -> Option<Entry> {
        let e = self.entries.remove(name)?;
        self.by_cookie.remove(&e.cookie);
        Some(e)
    }

    /// Renames an entry within this directory keeping its cookie (an entry
    /// already called `to` is dropped). A reader paging through the directory
    /// then sees the entry once, under the old or the new name, rather than
    /// again under a fresh cookie after the ones it has read: a program that
    /// renames what it lists (xfstests generic/736) would otherwise never end.
    pub fn rename_entry(&mut self, from: &[u8], to: &[u8]) -> bool {
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

    /// Points an existing entry at another inode, keeping its cookie
    /// (RENAME_EXCHANGE swaps inodes, not names).
    pub fn set_ino(&mut self, name: &[u8], ino: u64) -> bool {
        match self.entries.get_mut(name) {
            Some(e) => {
                e.ino = ino;
                true
            }
            None => false,
        }
    }

    /// Entries whose cookie is greater than `cookie`, in cookie order.
    pub fn after(&self, cookie: u64) -> impl Iterator<Item = (u64, &[u8], u64)> + '_ {
        self.by_cookie
            .range(cookie.saturating_add(1)..)
            .map(move |(&c, name)| (c, name.as_slice(), self.entries[name].ino))
    }

    /// Entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Entry)> + '_ {
        self.entries.iter().map(|(n, e)| (n.as_slice(), *e))
    }

    /// Checks the two maps agree (tests and debug assertions).
    pub fn consistent(&self) -> bool {
        self.entries.len() == self.by_cookie.len()
            && self.entries.iter().all(|(n, e)| {
                e.cookie < self.next_cookie && self.by_cookie.get(&e.cookie) == Some(n)
            })
    }
}
