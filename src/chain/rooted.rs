//! [`RootedMap`]: an ordered map that keeps its Merkle root up to date incrementally, so a
//! block that changes a few entries of a large state pays for those entries, not for the
//! whole map.
//!
//! Keys are 32-byte ids (document ids, account keys), which are uniform. The key space is cut
//! into [`BUCKETS`] buckets by the first 12 bits of the key; the map's root is
//! `merkle::root` over [`GROUPS`] group roots, each `merkle::root` over its 64 bucket roots,
//! each `merkle::root` over the leaf hashes of the bucket's entries in key order. Changing an
//! entry forgets its bucket's and group's roots; [`RootedMap::root`] rehashes only those.
//! The result depends only on the map's contents, never on the order of changes, so
//! validators that applied the same transactions agree on it byte for byte.
//!
//! Buckets are shared between copies (copy on write): a copy of the map costs a reference
//! count per bucket, and a change copies the one bucket it touches. So a block applied to a
//! copy of the state costs what it changed, not the size of the state, twice over.
//!
//! Reading and writing go through this type's methods only, which keeps the roots honest.
//!
//! [`RangeProof`] proves the complete contents of a run of buckets against the map's root:
//! the entries of those buckets (key and leaf hash) and just the roots needed to recompute
//! the rest. It proves an entry's value, an entry's absence (its bucket is complete), and a
//! page of a listing with nothing left out (the pages are whole buckets).
//!
//! Not for: what an entry's leaf hash covers (the owner of the map, `chain::state`, says).

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::merkle::{self, Hash};

/// Number of buckets the key space is cut into (first 12 bits of the key).
pub const BUCKETS: usize = 1 << 12;
/// Buckets per group.
const GROUP: usize = 64;
/// Number of groups.
pub const GROUPS: usize = BUCKETS / GROUP;

/// A key made of 32 uniform bytes.
pub trait RootedKey: Ord + Clone {
    fn bytes(&self) -> &[u8; 32];
    fn from_bytes(bytes: [u8; 32]) -> Self;
}

impl RootedKey for crate::id::DocumentId {
    fn bytes(&self) -> &[u8; 32] {
        self.as_bytes()
    }
    fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl RootedKey for crate::identity::PublicId {
    fn bytes(&self) -> &[u8; 32] {
        self.as_bytes()
    }
    /// Only used to build range bounds, which need not be valid Ed25519 points.
    fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::from_raw(bytes)
    }
}

/// The root of an empty bucket.
static EMPTY: std::sync::LazyLock<Hash> = std::sync::LazyLock::new(|| merkle::root(&[]));

fn bucket_of(key: &[u8; 32]) -> usize {
    (usize::from(key[0]) << 4) | usize::from(key[1] >> 4)
}

/// The smallest key of `bucket`.
pub fn bucket_start(bucket: usize) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0] = (bucket >> 4) as u8;
    b[1] = ((bucket & 0xf) << 4) as u8;
    b
}

/// One bucket: its entries and, once computed, their root. Shared between the states that
/// have not changed it since (copy on write).
#[derive(Clone)]
struct Bucket<K, V> {
    map: BTreeMap<K, V>,
    root: OnceLock<Hash>,
}

impl<K, V> Default for Bucket<K, V> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            root: OnceLock::new(),
        }
    }
}

/// An ordered map of 32-byte keys with an incrementally maintained Merkle root. Cloning it
/// costs [`BUCKETS`] reference counts, not a copy of its entries: a block applied to a copy
/// of a large state copies only the buckets it changes.
pub struct RootedMap<K, V> {
    buckets: Vec<Arc<Bucket<K, V>>>,
    /// Group roots, forgotten when one of the group's buckets changes.
    groups: Vec<OnceLock<Hash>>,
    len: usize,
}

impl<K: RootedKey, V: Clone> RootedMap<K, V> {
    pub fn new() -> Self {
        let empty = Arc::new(Bucket::default());
        Self {
            buckets: vec![empty; BUCKETS],
            groups: vec![OnceLock::new(); GROUPS],
            len: 0,
        }
    }

    /// The bucket of `key`, to change: copied first if another map shares it, its root and
    /// its group's root forgotten.
    fn bucket_mut(&mut self, key: &K) -> &mut BTreeMap<K, V> {
        let b = bucket_of(key.bytes());
        self.groups[b / GROUP] = OnceLock::new();
        let bucket = Arc::make_mut(&mut self.buckets[b]);
        bucket.root = OnceLock::new();
        &mut bucket.map
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.bucket_mut(&key).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        if !self.contains_key(key) {
            return None;
        }
        self.len -= 1;
        self.bucket_mut(key).remove(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if !self.contains_key(key) {
            return None;
        }
        self.bucket_mut(key).get_mut(key)
    }
}

impl<K: RootedKey, V> RootedMap<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.buckets[bucket_of(key.bytes())].map.get(key)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.buckets.iter().flat_map(|b| b.map.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    /// The entries within `range`, in key order.
    pub fn range<R: RangeBounds<K> + Clone>(&self, range: R) -> impl Iterator<Item = (&K, &V)> {
        let first = match range.start_bound() {
            Bound::Included(k) | Bound::Excluded(k) => bucket_of(k.bytes()),
            Bound::Unbounded => 0,
        };
        self.buckets[first..]
            .iter()
            .flat_map(move |b| b.map.range(range.clone()))
    }

    /// The map's root, with `leaf` giving each entry's leaf hash (always the same function
    /// for one map).
    pub fn root(&self, leaf: impl Fn(&K, &V) -> Hash) -> Hash {
        let groups: Vec<Hash> = (0..GROUPS)
            .map(|g| {
                *self.groups[g].get_or_init(|| {
                    let roots: Vec<Hash> = self.buckets[g * GROUP..(g + 1) * GROUP]
                        .iter()
                        .map(|b| {
                            *b.root.get_or_init(|| {
                                if b.map.is_empty() {
                                    return *EMPTY;
                                }
                                let leaves: Vec<Hash> =
                                    b.map.iter().map(|(k, v)| leaf(k, v)).collect();
                                merkle::root(&leaves)
                            })
                        })
                        .collect();
                    merkle::root(&roots)
                })
            })
            .collect();
        merkle::root(&groups)
    }
}

impl<K: RootedKey, V> RootedMap<K, V> {
    /// A proof of the complete contents of the buckets from `bucket_of(from)` on, as many
    /// whole buckets as it takes to hold at least `entries` entries (at least one bucket),
    /// against [`RootedMap::root`] with the same `leaf`.
    pub fn prove_range(
        &self,
        from: &[u8; 32],
        entries: usize,
        leaf: impl Fn(&K, &V) -> Hash,
    ) -> RangeProof {
        self.prove_range_after(from, false, entries, leaf)
    }

    /// [`RootedMap::prove_range`], counting only the entries after `from` if `exclusive`
    /// (the next page of a listing whose last key was `from`).
    pub fn prove_range_after(
        &self,
        from: &[u8; 32],
        exclusive: bool,
        entries: usize,
        leaf: impl Fn(&K, &V) -> Hash,
    ) -> RangeProof {
        self.root(&leaf);
        let first = bucket_of(from);
        let mut buckets = Vec::new();
        let mut held = 0;
        for bucket in &self.buckets[first..] {
            let rows: Vec<([u8; 32], Hash)> = bucket
                .map
                .iter()
                .map(|(k, v)| (*k.bytes(), leaf(k, v)))
                .collect();
            held += rows
                .iter()
                .filter(|(k, _)| if exclusive { k > from } else { k >= from })
                .count();
            buckets.push(rows);
            if held >= entries {
                break;
            }
        }
        let end = first + buckets.len();
        let (mut bucket_roots, mut group_roots) = (Vec::new(), Vec::new());
        for g in 0..GROUPS {
            let span = g * GROUP..(g + 1) * GROUP;
            if span.end <= first || span.start >= end {
                group_roots.push(*self.groups[g].get().expect("computed by root above"));
                continue;
            }
            for b in span.filter(|b| *b < first || *b >= end) {
                bucket_roots.push(*self.buckets[b].root.get().expect("computed by root above"));
            }
        }
        RangeProof {
            first: first as u16,
            buckets,
            bucket_roots,
            group_roots,
        }
    }
}

/// Why a [`RangeProof`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    #[error("the proof covers no bucket or runs past the last one")]
    BadRange,
    #[error("the proof's entries are out of order or outside their bucket")]
    Misplaced,
    #[error("the proof holds the wrong number of roots")]
    WrongRootCount,
    #[error("the proof does not lead to the expected root")]
    Mismatch,
    #[error("the proof does not cover the entry asked about")]
    NotCovered,
}

/// The complete contents of buckets `first ..` of a [`RootedMap`] (each entry's key and
/// leaf hash, in key order), with the roots of the other buckets of the groups the run
/// touches and of the other groups: enough to recompute the map's root, so nothing in the
/// run can be added, changed or left out. Made by [`RootedMap::prove_range`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeProof {
    first: u16,
    buckets: Vec<Vec<([u8; 32], Hash)>>,
    /// Roots of the buckets outside the run in the groups it touches, in bucket order.
    bucket_roots: Vec<Hash>,
    /// Roots of the groups the run does not touch, in group order.
    group_roots: Vec<Hash>,
}

impl RangeProof {
    /// Checks the proof against the map's `root`. Never panics, and does bounded work
    /// (a few hashes per entry and per root it holds), whatever the proof holds.
    pub fn verify(&self, root: &Hash) -> Result<(), RangeError> {
        let first = usize::from(self.first);
        let end = first + self.buckets.len();
        if self.buckets.is_empty() || end > BUCKETS {
            return Err(RangeError::BadRange);
        }
        for (i, rows) in self.buckets.iter().enumerate() {
            let ordered = rows.windows(2).all(|w| w[0].0 < w[1].0);
            if !ordered || rows.iter().any(|(k, _)| bucket_of(k) != first + i) {
                return Err(RangeError::Misplaced);
            }
        }
        let mut bucket_roots = self.bucket_roots.iter();
        let mut group_roots = self.group_roots.iter();
        let mut groups = Vec::with_capacity(GROUPS);
        for g in 0..GROUPS {
            let span = g * GROUP..(g + 1) * GROUP;
            if span.end <= first || span.start >= end {
                groups.push(*group_roots.next().ok_or(RangeError::WrongRootCount)?);
                continue;
            }
            let mut roots = Vec::with_capacity(GROUP);
            for b in span {
                if (first..end).contains(&b) {
                    let rows = &self.buckets[b - first];
                    roots.push(if rows.is_empty() {
                        *EMPTY
                    } else {
                        let leaves: Vec<Hash> = rows.iter().map(|(_, h)| *h).collect();
                        merkle::root(&leaves)
                    });
                } else {
                    roots.push(*bucket_roots.next().ok_or(RangeError::WrongRootCount)?);
                }
            }
            groups.push(merkle::root(&roots));
        }
        if bucket_roots.next().is_some() || group_roots.next().is_some() {
            return Err(RangeError::WrongRootCount);
        }
        if merkle::root(&groups) == *root {
            Ok(())
        } else {
            Err(RangeError::Mismatch)
        }
    }

    /// The leaf hash of `key` in a verified proof, or `None` if the map has no such key;
    /// an error if the proof does not cover `key`'s bucket.
    pub fn lookup(&self, key: &[u8; 32]) -> Result<Option<Hash>, RangeError> {
        let b = bucket_of(key);
        let rows = b
            .checked_sub(usize::from(self.first))
            .and_then(|i| self.buckets.get(i))
            .ok_or(RangeError::NotCovered)?;
        Ok(rows.iter().find(|(k, _)| k == key).map(|(_, h)| *h))
    }

    /// Every entry of the run: key and leaf hash, in key order.
    pub fn entries(&self) -> impl Iterator<Item = &([u8; 32], Hash)> {
        self.buckets.iter().flatten()
    }

    /// Removes the first entry of the run (a host hiding it), for tests.
    #[cfg(test)]
    pub fn drop_first_entry_for_test(&mut self) {
        if let Some(rows) = self.buckets.iter_mut().find(|r| !r.is_empty()) {
            rows.remove(0);
        }
    }

    /// Whether the run reaches the end of the key space (no entry after it).
    pub fn reaches_end(&self) -> bool {
        usize::from(self.first) + self.buckets.len() >= BUCKETS
    }
}

impl<K: RootedKey, V: Clone> Default for RootedMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: RootedKey, V: Clone> FromIterator<(K, V)> for RootedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = Self::new();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl<K: RootedKey, V> std::ops::Index<&K> for RootedMap<K, V> {
    type Output = V;
    fn index(&self, key: &K) -> &V {
        self.get(key).expect("no entry for the key")
    }
}

impl<K, V> Clone for RootedMap<K, V> {
    fn clone(&self) -> Self {
        Self {
            buckets: self.buckets.clone(),
            groups: self.groups.clone(),
            len: self.len,
        }
    }
}

impl<K: RootedKey, V: PartialEq> PartialEq for RootedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl<K: RootedKey, V: Eq> Eq for RootedMap<K, V> {}

impl<K: RootedKey + std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for RootedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Encoded as the plain ordered map it holds.
impl<K: RootedKey + Serialize, V: Serialize> Serialize for RootedMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.len))?;
        for (k, v) in self.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, K: RootedKey + Deserialize<'de>, V: Clone + Deserialize<'de>> Deserialize<'de>
    for RootedMap<K, V>
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::DocumentId;
    use proptest::prelude::*;

    fn leaf(k: &DocumentId, v: &u32) -> Hash {
        let mut bytes = k.as_bytes().to_vec();
        bytes.extend_from_slice(&v.to_le_bytes());
        merkle::leaf_hash(&bytes)
    }

    fn fresh(map: &RootedMap<DocumentId, u32>) -> Hash {
        map.iter()
            .map(|(k, v)| (*k, *v))
            .collect::<RootedMap<_, _>>()
            .root(leaf)
    }

    #[test]
    fn bucket_bounds_cover_the_key_space_in_order() {
        assert_eq!(bucket_of(&bucket_start(0)), 0);
        for b in [1, 15, 16, 17, 255, 4094, BUCKETS - 1] {
            assert_eq!(bucket_of(&bucket_start(b)), b);
            assert!(bucket_start(b - 1) < bucket_start(b));
            let mut last = bucket_start(b);
            last[1] |= 0x0f;
            last[2..].fill(0xff);
            assert_eq!(bucket_of(&last), b);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the order of changes, the cached root equals the root of a map built
        /// from scratch with the same contents.
        #[test]
        fn the_incremental_root_equals_a_fresh_one(
            ops in proptest::collection::vec((any::<u8>(), any::<u8>(), any::<u32>(), 0..3u8), 1..60)
        ) {
            let mut map = RootedMap::new();
            for (a, b, v, op) in ops {
                let mut key = [0u8; 32];
                key[0] = a;
                key[1] = b;
                let key = DocumentId(key);
                match op {
                    0 => { map.insert(key, v); }
                    1 => { map.remove(&key); }
                    _ => { if let Some(x) = map.get_mut(&key) { *x = v; } }
                }
                if v % 3 == 0 {
                    map.root(leaf);
                }
                let copy = map.clone();
                prop_assert_eq!(copy.root(leaf), fresh(&map));
            }
            prop_assert_eq!(map.root(leaf), fresh(&map));
        }
    }

    #[test]
    fn a_copy_shares_buckets_until_either_side_changes() {
        let mut map: RootedMap<DocumentId, u32> =
            (0..200u8).map(|i| (DocumentId::of(&[i]), 1)).collect();
        let r0 = map.root(leaf);
        let mut copy = map.clone();
        *copy.get_mut(&DocumentId::of(&[7])).unwrap() = 2;
        copy.insert(DocumentId::of(b"new"), 3);
        copy.remove(&DocumentId::of(&[9]));
        assert_eq!(map.root(leaf), r0);
        assert_eq!(map.root(leaf), fresh(&map));
        assert_eq!(copy.root(leaf), fresh(&copy));
        assert_eq!((map.len(), copy.len()), (200, 200));
        assert_eq!(map[&DocumentId::of(&[7])], 1);
        map.insert(DocumentId::of(&[9]), 5);
        assert_eq!(copy.get(&DocumentId::of(&[9])), None);
        let from = DocumentId::of(&[3]);
        let after: Vec<_> = copy
            .range((std::ops::Bound::Excluded(from), std::ops::Bound::Unbounded))
            .map(|(k, _)| *k)
            .collect();
        let expected: Vec<_> = copy.keys().filter(|k| **k > from).copied().collect();
        assert_eq!(after, expected);
    }

    #[test]
    fn a_range_proof_proves_entries_absence_and_whole_pages() {
        let map: RootedMap<DocumentId, u32> = (0..300u16)
            .map(|i| (DocumentId::of(&i.to_le_bytes()), 1))
            .collect();
        let root = map.root(leaf);
        // One key: its value, and a key that is not there.
        let key = DocumentId::of(&7u16.to_le_bytes());
        let p = map.prove_range(key.as_bytes(), 0, leaf);
        p.verify(&root).unwrap();
        assert_eq!(p.lookup(key.as_bytes()), Ok(Some(leaf(&key, &1))));
        let mut absent = *key.as_bytes();
        absent[31] ^= 1;
        assert_eq!(p.lookup(&absent), Ok(None));
        // A listing in pages: every key once, in order.
        let mut seen = Vec::new();
        let mut from = [0u8; 32];
        loop {
            let page = map.prove_range(&from, 40, leaf);
            page.verify(&root).unwrap();
            seen.extend(page.entries().map(|(k, _)| *k));
            if page.reaches_end() {
                break;
            }
            from = bucket_start(usize::from(page.first) + page.buckets.len());
        }
        let all: Vec<[u8; 32]> = map.keys().map(|k| *k.as_bytes()).collect();
        assert_eq!(seen, all);
        // Leaving an entry out, changing one, or adding one is refused.
        let mut p = map.prove_range(&[0; 32], 20, leaf);
        let (b, _) = p
            .buckets
            .iter()
            .enumerate()
            .find(|(_, r)| !r.is_empty())
            .unwrap();
        let hidden = p.buckets[b].remove(0);
        assert_eq!(p.verify(&root), Err(RangeError::Mismatch));
        p.buckets[b].insert(0, (hidden.0, [9; 32]));
        assert_eq!(p.verify(&root), Err(RangeError::Mismatch));
        p.buckets[b][0] = hidden;
        p.verify(&root).unwrap();
        p.bucket_roots.push([0; 32]);
        assert_eq!(p.verify(&root), Err(RangeError::WrongRootCount));
        p.bucket_roots.pop();
        p.buckets[b].push(([0xff; 32], [1; 32]));
        assert_eq!(p.verify(&root), Err(RangeError::Misplaced));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever a proof holds, checking it never panics.
        #[test]
        fn checking_any_proof_never_panics(
            first in any::<u16>(),
            rows in proptest::collection::vec(proptest::collection::vec((any::<[u8; 32]>(), any::<[u8; 32]>()), 0..3), 0..5),
            roots in proptest::collection::vec(any::<[u8; 32]>(), 0..130),
        ) {
            let p = RangeProof { first, buckets: rows, bucket_roots: roots.clone(), group_roots: roots };
            let _ = p.verify(&[0; 32]);
            let _ = p.lookup(&[0; 32]);
        }
    }

    #[test]
    fn any_change_changes_the_root() {
        let mut map: RootedMap<DocumentId, u32> =
            (0..100u8).map(|i| (DocumentId::of(&[i]), 1)).collect();
        let r0 = map.root(leaf);
        *map.get_mut(&DocumentId::of(&[7])).unwrap() = 2;
        let r1 = map.root(leaf);
        assert_ne!(r0, r1);
        map.remove(&DocumentId::of(&[8]));
        assert_ne!(map.root(leaf), r1);
    }
}
