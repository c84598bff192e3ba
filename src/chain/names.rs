//! Buckets and object names: the part of the chain state that maps a department's named
//! collections (S3 buckets) and the names in them (S3 object keys) to document ids, so every
//! gateway sees the same names and losing one loses none.
//!
//! A bucket belongs to the department that created it; only that department binds, rebinds
//! or unbinds names in it (`TxBody::PutName`, `TxBody::DeleteName`), registering the
//! document in the same transaction: a name never points at an unregistered document, and a
//! stored object is never without its name. A new document under a bound name supersedes
//! the previous one (Dangan's own versions). A delete unbinds the name (no delete marker):
//! the documents stay registered, each readable by its id.
//!
//! Both maps are [`RootedMap`]s keyed by a [`NameId`] (BLAKE3 of the bucket, and of the
//! bucket and the key), so the state root commits to every entry and a block pays only for
//! what it changed. An ordered index of (bucket, key bytes) serves listings by prefix, with
//! a delimiter and a continuation, a page at a time ([`Names::list`]): never a walk of all
//! documents. The index holds nothing the maps do not: it is rebuilt from them on decode.
//!
//! Not for: checking who sent a transaction or its nonce (`state::State::apply`), or the
//! objects' bytes and metadata (sealed by the gateway with each document's key).

use std::collections::BTreeSet;
use std::ops::Bound;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::merkle::Hash;
use super::rooted::{RootedKey, RootedMap};
use super::tx::TxError;
use crate::id::DocumentId;
use crate::identity::PublicId;

/// Longest object key, in bytes (S3's limit).
pub const MAX_KEY: usize = 1024;
/// Most bytes of sealed metadata a name carries.
pub const MAX_NAME_META: usize = 8 << 10;
/// Most buckets one department may hold.
pub const MAX_BUCKETS: usize = 1000;
/// Most entries (names and common prefixes) one listing page holds.
pub const MAX_NAME_PAGE: usize = 1000;

/// The address of a bucket or a name in its map: BLAKE3 in derive-key mode of its
/// canonical encoding, so keys are uniform whatever the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NameId(pub [u8; 32]);

const BUCKET_CONTEXT: &str = "dangan 2026 bucket id v1";
const NAME_CONTEXT: &str = "dangan 2026 name id v1";

impl NameId {
    pub fn bucket(bucket: &str) -> Self {
        Self(blake3::derive_key(BUCKET_CONTEXT, bucket.as_bytes()))
    }

    pub fn name(bucket: &str, key: &str) -> Self {
        let bytes =
            postcard::to_allocvec(&(bucket, key)).expect("encoding into memory cannot fail");
        Self(blake3::derive_key(NAME_CONTEXT, &bytes))
    }
}

impl RootedKey for NameId {
    fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
    fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// A bucket: who owns it and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    pub name: String,
    pub owner: PublicId,
    /// Height of the block that created it.
    pub height: u64,
}

/// A bound name: the current document and what the owner said about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord {
    pub bucket: String,
    pub key: String,
    /// The current version; older ones are reached through its `supersedes` chain.
    pub document: DocumentId,
    /// The plaintext size the owner declared (the manifest's).
    pub size: u64,
    /// The object's metadata sealed with the document's data key (opaque here).
    pub meta: Vec<u8>,
    /// Height of the block that bound the current version.
    pub height: u64,
    /// How many versions this name has had since it was last bound afresh.
    pub versions: u32,
}

/// One page of a listing: names, the common prefixes rolled up by a delimiter, and where
/// the next page starts (`None`: this was the last).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamePage {
    pub names: Vec<NameRecord>,
    pub prefixes: Vec<String>,
    /// The smallest key (bytes) the next page may hold.
    pub next: Option<Vec<u8>>,
}

/// Refused unless `bucket` is a valid S3 bucket name: 3 to 63 lower-case letters, digits,
/// hyphens and dots, starting and ending with a letter or digit.
pub fn check_bucket_name(bucket: &str) -> Result<(), TxError> {
    let b = bucket.as_bytes();
    let ok = (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !bucket.contains("..");
    if ok {
        Ok(())
    } else {
        Err(TxError::Invalid(format!(
            "bucket name {bucket:?}: 3 to 63 lower-case letters, digits, '-' and '.'"
        )))
    }
}

/// Refused unless `key` is 1 to [`MAX_KEY`] bytes with no NUL.
pub fn check_key(key: &str) -> Result<(), TxError> {
    if key.is_empty() || key.len() > MAX_KEY || key.contains('\0') {
        return Err(TxError::Invalid(format!(
            "an object key is 1 to {MAX_KEY} bytes with no NUL"
        )));
    }
    Ok(())
}

/// The smallest byte string greater than every string starting with `prefix` (`None`: there
/// is none, the prefix being all 0xFF, which UTF-8 never is).
pub fn after_prefix(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xFF {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// The buckets and names of the state (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    buckets: RootedMap<NameId, BucketRecord>,
    names: RootedMap<NameId, NameRecord>,
    /// (bucket, key bytes) of every name, in order: what listings page through.
    order: BTreeSet<(String, Vec<u8>)>,
}

impl Serialize for Names {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.buckets, &self.names).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (buckets, names): (
            RootedMap<NameId, BucketRecord>,
            RootedMap<NameId, NameRecord>,
        ) = Deserialize::deserialize(d)?;
        let order = names
            .values()
            .map(|n| (n.bucket.clone(), n.key.as_bytes().to_vec()))
            .collect();
        Ok(Self {
            buckets,
            names,
            order,
        })
    }
}

impl Names {
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty() && self.names.is_empty()
    }

    /// The roots of the buckets' and the names' maps, with the leaf functions given.
    pub fn roots(
        &self,
        bucket_leaf: impl Fn(&NameId, &BucketRecord) -> Hash,
        name_leaf: impl Fn(&NameId, &NameRecord) -> Hash,
    ) -> (Hash, Hash) {
        (self.buckets.root(bucket_leaf), self.names.root(name_leaf))
    }

    pub fn bucket(&self, bucket: &str) -> Option<&BucketRecord> {
        self.buckets.get(&NameId::bucket(bucket))
    }

    /// `owner`'s buckets, by name.
    pub fn buckets_of(&self, owner: &PublicId) -> Vec<BucketRecord> {
        let mut out: Vec<BucketRecord> = self
            .buckets
            .values()
            .filter(|b| b.owner == *owner)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn name(&self, bucket: &str, key: &str) -> Option<&NameRecord> {
        self.names.get(&NameId::name(bucket, key))
    }

    /// Whether `bucket` holds any name.
    pub fn holds_names(&self, bucket: &str) -> bool {
        self.order
            .range((bucket.to_string(), Vec::new())..)
            .next()
            .is_some_and(|(b, _)| b == bucket)
    }

    /// The bucket `sender` may write: refused if it does not exist or is another's.
    pub fn owned_bucket(&self, bucket: &str, sender: &PublicId) -> Result<&BucketRecord, TxError> {
        let record = self
            .bucket(bucket)
            .ok_or_else(|| TxError::NoSuchBucket(bucket.to_string()))?;
        if record.owner != *sender {
            return Err(TxError::NotBucketOwner {
                bucket: bucket.to_string(),
                owner: record.owner,
            });
        }
        Ok(record)
    }

    /// Refused unless `owner` may create `bucket` now.
    pub fn check_create(&self, bucket: &str, owner: &PublicId) -> Result<(), TxError> {
        check_bucket_name(bucket)?;
        if self.bucket(bucket).is_some() {
            return Err(TxError::BucketExists(bucket.to_string()));
        }
        if self.buckets.values().filter(|b| b.owner == *owner).count() >= MAX_BUCKETS {
            return Err(TxError::TooManyBuckets(*owner));
        }
        Ok(())
    }

    pub(super) fn insert_bucket(&mut self, record: BucketRecord) {
        self.buckets.insert(NameId::bucket(&record.name), record);
    }

    pub(super) fn remove_bucket(&mut self, bucket: &str) {
        self.buckets.remove(&NameId::bucket(bucket));
    }

    pub(super) fn bind(&mut self, record: NameRecord) {
        self.order
            .insert((record.bucket.clone(), record.key.as_bytes().to_vec()));
        self.names
            .insert(NameId::name(&record.bucket, &record.key), record);
    }

    pub(super) fn unbind(&mut self, bucket: &str, key: &str) {
        self.order
            .remove(&(bucket.to_string(), key.as_bytes().to_vec()));
        self.names.remove(&NameId::name(bucket, key));
    }

    /// Up to `limit` (at most [`MAX_NAME_PAGE`]) names of `bucket` starting with `prefix`,
    /// from key `from` on (bytes, inclusive), in key order. With a `delimiter`, the names
    /// whose rest after the prefix holds it are rolled up into one common prefix each (up to
    /// and including the delimiter), counted as one entry, as S3's ListObjectsV2 does.
    pub fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        from: &[u8],
        limit: usize,
    ) -> NamePage {
        let limit = limit.clamp(1, MAX_NAME_PAGE);
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let mut start = from.max(prefix.as_bytes()).to_vec();
        let mut page = NamePage::default();
        'pages: loop {
            let range = (
                Bound::Included((bucket.to_string(), start.clone())),
                Bound::Unbounded,
            );
            for (b, key) in self.order.range(range) {
                if b != bucket || !key.starts_with(prefix.as_bytes()) {
                    break 'pages;
                }
                if page.names.len() + page.prefixes.len() == limit {
                    page.next = Some(key.clone());
                    break 'pages;
                }
                let text = String::from_utf8_lossy(key);
                let rest = &text[prefix.len()..];
                if let Some(d) = delimiter
                    && let Some(at) = rest.find(d)
                {
                    let common = format!("{prefix}{}", &rest[..at + d.len()]);
                    match after_prefix(common.as_bytes()) {
                        Some(next) => start = next,
                        None => {
                            page.prefixes.push(common);
                            break 'pages;
                        }
                    }
                    page.prefixes.push(common);
                    continue 'pages;
                }
                if let Some(n) = self.names.get(&NameId::name(bucket, &text)) {
                    page.names.push(n.clone());
                }
            }
            break;
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, Role};

    fn names(keys: &[&str]) -> Names {
        let owner = Identity::generate(Role::Department).public();
        let mut n = Names::default();
        n.insert_bucket(BucketRecord {
            name: "b".into(),
            owner,
            height: 1,
        });
        for k in keys {
            n.bind(NameRecord {
                bucket: "b".into(),
                key: k.to_string(),
                document: DocumentId::of(k.as_bytes()),
                size: 1,
                meta: vec![],
                height: 1,
                versions: 1,
            });
        }
        n
    }

    fn keys(p: &NamePage) -> Vec<&str> {
        p.names.iter().map(|n| n.key.as_str()).collect()
    }

    #[test]
    fn listings_page_by_prefix_and_roll_up_common_prefixes() {
        let n = names(&["a/1", "a/2", "a/b/3", "b", "c/1", "c0", "d"]);
        let all = n.list("b", "", None, b"", 1000);
        assert_eq!(keys(&all).len(), 7);
        assert_eq!(all.next, None);
        let top = n.list("b", "", Some("/"), b"", 1000);
        assert_eq!(keys(&top), vec!["b", "c0", "d"]);
        assert_eq!(top.prefixes, vec!["a/", "c/"]);
        let a = n.list("b", "a/", Some("/"), b"", 1000);
        assert_eq!(keys(&a), vec!["a/1", "a/2"]);
        assert_eq!(a.prefixes, vec!["a/b/"]);
        // Pages of two, following `next`, see everything once.
        let mut seen = Vec::new();
        let mut from = Vec::new();
        loop {
            let p = n.list("b", "", Some("/"), &from, 2);
            assert!(p.names.len() + p.prefixes.len() <= 2);
            seen.extend(p.prefixes.clone());
            seen.extend(p.names.iter().map(|r| r.key.clone()));
            match p.next {
                Some(next) => from = next,
                None => break,
            }
        }
        seen.sort();
        assert_eq!(seen, vec!["a/", "b", "c/", "c0", "d"]);
        // Another bucket's names never show.
        assert!(n.list("a", "", None, b"", 10).names.is_empty());
        assert!(n.holds_names("b") && !n.holds_names("a") && !n.holds_names("bb"));
    }

    #[test]
    fn the_index_is_rebuilt_from_the_maps_on_decode() {
        let n = names(&["x", "y/z"]);
        let back: Names = postcard::from_bytes(&postcard::to_allocvec(&n).unwrap()).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn bucket_names_and_keys_are_checked() {
        for good in ["abc", "my-bucket.1", "a23"] {
            check_bucket_name(good).unwrap();
        }
        for bad in ["ab", "Abc", "-abc", "abc-", "a..b", "a_b", &"a".repeat(64)] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
        check_key("a/b c").unwrap();
        assert!(check_key("").is_err() && check_key("a\0").is_err());
        assert!(check_key(&"k".repeat(MAX_KEY + 1)).is_err());
    }
}
