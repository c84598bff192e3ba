//! [`RootedMap`]: an ordered map that keeps its Merkle root up to date incrementally, so a
//! block that changes a few entries of a large state pays for those entries, not for the
//! whole map.
//!
//! Keys are 32-byte ids (document ids, account keys), which are uniform. The key space is cut
//! into [`BUCKETS`] buckets by the first 12 bits of the key; the map's root is
//! `merkle::root` over [`GROUPS`] group roots, each `merkle::root` over its 64 bucket roots,
//! each `merkle::root` over the leaf hashes of the bucket's entries in key order. Changing an
//! entry marks its bucket dirty; [`RootedMap::root`] rehashes only dirty buckets and their
//! groups. The result depends only on the map's contents, never on the order of changes, so
//! validators that applied the same transactions agree on it byte for byte.
//!
//! Reading goes through `Deref` to the `BTreeMap`; writing only through this type's methods,
//! which is what keeps the cache honest.
//!
//! Not for: proofs about single entries (none are served yet).

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Mutex;

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
fn bucket_start(bucket: usize) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0] = (bucket >> 4) as u8;
    b[1] = ((bucket & 0xf) << 4) as u8;
    b
}

#[derive(Clone)]
struct Cache {
    buckets: Vec<Hash>,
    groups: Vec<Hash>,
    dirty: Vec<bool>,
    /// Nothing computed yet: every bucket is dirty.
    cold: bool,
}

impl Default for Cache {
    fn default() -> Self {
        Self {
            buckets: vec![[0; 32]; BUCKETS],
            groups: vec![[0; 32]; GROUPS],
            dirty: vec![false; BUCKETS],
            cold: true,
        }
    }
}

pub struct RootedMap<K, V> {
    map: BTreeMap<K, V>,
    cache: Mutex<Cache>,
}

impl<K: RootedKey, V> RootedMap<K, V> {
    pub fn new() -> Self {
        Self {
            map: BTreeMap::new(),
            cache: Mutex::new(Cache::default()),
        }
    }

    fn touch(&mut self, key: &K) {
        let cache = self.cache.get_mut().expect("root cache lock");
        cache.dirty[bucket_of(key.bytes())] = true;
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.touch(&key);
        self.map.insert(key, value)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.touch(key);
        self.map.remove(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.touch(key);
        self.map.get_mut(key)
    }

    /// The map's root, with `leaf` giving each entry's leaf hash (always the same function
    /// for one map).
    pub fn root(&self, leaf: impl Fn(&K, &V) -> Hash) -> Hash {
        let mut cache = self.cache.lock().expect("root cache lock");
        let cache = &mut *cache;
        let mut dirty_groups = vec![cache.cold; GROUPS];
        for bucket in 0..BUCKETS {
            if !(cache.cold || cache.dirty[bucket]) {
                continue;
            }
            let start = K::from_bytes(bucket_start(bucket));
            let leaves: Vec<Hash> = if bucket + 1 < BUCKETS {
                let end = K::from_bytes(bucket_start(bucket + 1));
                self.map
                    .range(start..end)
                    .map(|(k, v)| leaf(k, v))
                    .collect()
            } else {
                self.map.range(start..).map(|(k, v)| leaf(k, v)).collect()
            };
            cache.buckets[bucket] = if leaves.is_empty() {
                *EMPTY
            } else {
                merkle::root(&leaves)
            };
            cache.dirty[bucket] = false;
            dirty_groups[bucket / GROUP] = true;
        }
        for (g, dirty) in dirty_groups.into_iter().enumerate() {
            if dirty {
                cache.groups[g] = merkle::root(&cache.buckets[g * GROUP..(g + 1) * GROUP]);
            }
        }
        cache.cold = false;
        merkle::root(&cache.groups)
    }
}

impl<K: RootedKey, V> Default for RootedMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: RootedKey, V> FromIterator<(K, V)> for RootedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            map: iter.into_iter().collect(),
            cache: Mutex::new(Cache::default()),
        }
    }
}

impl<K, V> Deref for RootedMap<K, V> {
    type Target = BTreeMap<K, V>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<K: Clone, V: Clone> Clone for RootedMap<K, V> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
            cache: Mutex::new(self.cache.lock().expect("root cache lock").clone()),
        }
    }
}

impl<K: PartialEq, V: PartialEq> PartialEq for RootedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Eq, V: Eq> Eq for RootedMap<K, V> {}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for RootedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.map.fmt(f)
    }
}

impl<K: Serialize, V: Serialize> Serialize for RootedMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.map.serialize(s)
    }
}

impl<'de, K: RootedKey + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de>
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
