//! `ThinMap`: a `BTreeMap` that costs one pointer while it is empty.
//!
//! Every inode has extended attributes and chunk allocations, and almost
//! every small file has neither: two empty `BTreeMap`s are 48 bytes of an
//! inode of about 180. A `ThinMap` is 8 bytes, boxing the map only while it
//! holds something. It behaves, compares and serializes as the `BTreeMap`
//! it wraps (an empty map and no map are the same thing).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::btree_map::{self, BTreeMap};
use std::fmt;

// The box is the point: 8 bytes while empty instead of a map's 24.
#[allow(clippy::box_collection)]
#[derive(Clone)]
pub struct ThinMap<K, V>(Option<Box<BTreeMap<K, V>>>);

impl<K, V> Default for ThinMap<K, V> {
    fn default() -> Self {
        ThinMap(None)
    }
}

impl<K: Ord, V> ThinMap<K, V> {
    pub fn new() -> Self {
        ThinMap(None)
    }

    pub fn get<Q: Ord + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.0.as_ref()?.get(k)
    }

    pub fn get_mut<Q: Ord + ?Sized>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
    {
        self.0.as_mut()?.get_mut(k)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, k: &Q) -> bool
    where
        K: std::borrow::Borrow<Q>,
    {
        self.get(k).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.0.iter().flat_map(|m| m.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.0.get_or_insert_with(Box::default).insert(k, v)
    }

    pub fn entry(&mut self, k: K) -> btree_map::Entry<'_, K, V> {
        self.0.get_or_insert_with(Box::default).entry(k)
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
    {
        let v = self.0.as_mut()?.remove(k);
        self.drop_if_empty();
        v
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }

    /// Keeps the entries below `k`; returns the rest.
    pub fn split_off(&mut self, k: &K) -> BTreeMap<K, V> {
        let rest = match self.0.as_mut() {
            Some(m) => m.split_off(k),
            None => BTreeMap::new(),
        };
        self.drop_if_empty();
        rest
    }

    /// The map itself, None while empty (for callers that need a `&BTreeMap`).
    pub fn as_map(&self) -> Option<&BTreeMap<K, V>> {
        self.0.as_deref()
    }

    fn drop_if_empty(&mut self) {
        if self.0.as_ref().is_some_and(|m| m.is_empty()) {
            self.0 = None;
        }
    }
}

impl<K: Ord, V> From<BTreeMap<K, V>> for ThinMap<K, V> {
    fn from(m: BTreeMap<K, V>) -> Self {
        if m.is_empty() {
            ThinMap(None)
        } else {
            ThinMap(Some(Box::new(m)))
        }
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a ThinMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = std::iter::Flatten<std::option::IntoIter<&'a BTreeMap<K, V>>>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.as_deref().into_iter().flatten()
    }
}

impl<K: Ord, V: PartialEq> PartialEq for ThinMap<K, V> {
    fn eq(&self, o: &Self) -> bool {
        self.len() == o.len() && self.iter().zip(o.iter()).all(|(a, b)| a == b)
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for ThinMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().flat_map(|m| m.iter()))
            .finish()
    }
}

impl<K: Serialize, V: Serialize> Serialize for ThinMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // With its length up front, as postcard needs.
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.as_ref().map_or(0, |m| m.len())))?;
        for (k, v) in self.0.iter().flat_map(|m| m.iter()) {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for ThinMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BTreeMap::deserialize(d).map(ThinMap::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_a_pointer_and_behaves_and_serializes_as_its_map() {
        assert_eq!(std::mem::size_of::<ThinMap<Vec<u8>, Vec<u8>>>(), 8);
        let mut t: ThinMap<u64, u64> = ThinMap::new();
        let mut m = BTreeMap::new();
        assert_eq!(
            postcard::to_allocvec(&t).unwrap(),
            postcard::to_allocvec(&m).unwrap()
        );
        for k in [5, 1, 9, 3] {
            assert_eq!(t.insert(k, k * 10), m.insert(k, k * 10));
        }
        *t.entry(7).or_insert(0) += 1;
        *m.entry(7).or_insert(0) += 1;
        assert_eq!(t.remove(&1), m.remove(&1));
        assert_eq!(t.split_off(&8), m.split_off(&8));
        assert_eq!(t.as_map(), Some(&m));
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(postcard::to_allocvec(&t).unwrap(), bytes);
        assert_eq!(
            postcard::from_bytes::<ThinMap<u64, u64>>(&bytes).unwrap(),
            t
        );
        for k in [3, 5, 7] {
            t.remove(&k);
        }
        assert!(
            t.is_empty() && t.0.is_none(),
            "an emptied map keeps its box"
        );
        assert_eq!(t, ThinMap::from(BTreeMap::new()));
        assert!(t.as_map().is_none());
    }
}
