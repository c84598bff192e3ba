//! BLAKE3 Merkle trees over a block's transactions, with inclusion proofs that anyone
//! holding the block headers can check.
//!
//! # Construction
//!
//! Every hash below is BLAKE3 in keyed mode, with the key
//! `K = blake3::derive_key("dangan chain merkle v1", b"")`, so no Merkle hash can ever equal
//! a plain BLAKE3 content address (`crate::id`) or any other hash Dangan computes. Within
//! the tree, a one-byte prefix separates the three kinds of hash:
//!
//! | hash | input |
//! |------|-------|
//! | leaf | `0x00 ‖ canonical item bytes` ([`leaf_hash`]) |
//! | interior node | `0x01 ‖ left ‖ right` |
//! | root | `0x02 ‖ LE64(leaf count) ‖ top` (for an empty list: `0x02 ‖ LE64(0)`) |
//!
//! Because leaves and interior nodes are hashed differently, an interior node can never be
//! passed off as a leaf (or the other way round).
//!
//! The tree is built bottom-up, pairing neighbours left to right. When a level has an odd
//! number of nodes, **the last node is promoted unchanged** to the next level: it is never
//! paired with a copy of itself, so (unlike Bitcoin's tree, CVE-2012-2459) the lists
//! `[a, b, c]` and `[a, b, c, c]` have different roots. `top` is the single node left at
//! the end; for one leaf it is that leaf's hash. (This shape is the same as RFC 6962's:
//! the left subtree holds the largest power of two strictly below the leaf count.)
//!
//! The root commits to the number of leaves as well as to the tree, so a proof's
//! `leaf_count` is authenticated too: a verified proof says "this leaf is item `index` of
//! a list of exactly `leaf_count` items". Without this, a proof for leaf 0 of 5 would also
//! verify as leaf 0 of 6. The empty list has the fixed root `H(0x02 ‖ LE64(0))`
//! ([`empty_root`]), which no non-empty list can have (its input is shorter).
//!
//! # Proofs
//!
//! A [`Proof`] holds the leaf's `index`, the tree's `leaf_count` and the `path`: the
//! sibling hashes from the leaf up to the root, **only at the levels where the node has a
//! sibling** (a promoted node has none). From `index` and `leaf_count` alone the verifier
//! knows, level by level, whether there is a sibling and on which side, so the path carries
//! no direction bits and its length is fixed: a path of any other length is refused before
//! any hashing. Paths are at most 40 hashes long, because trees are limited to
//! [`MAX_LEAVES`] = 2^40 leaves.
//!
//! # Untrusted input
//!
//! [`Proof::verify`] never panics and does bounded work, whatever the proof holds: a zero
//! or oversized `leaf_count`, an `index` outside the tree or a path of the wrong length
//! each give their own [`MerkleError`], and a well-formed proof that does not lead to the
//! expected root gives [`MerkleError::Mismatch`].

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

/// A BLAKE3 hash: a leaf, an interior node or a root.
pub type Hash = [u8; 32];

/// The largest number of leaves a proof may claim (2^40), which bounds a path to 40 hashes.
pub const MAX_LEAVES: u64 = 1 << 40;

/// Context string for the BLAKE3 key that every Merkle hash uses.
const KEY_CONTEXT: &str = "dangan chain merkle v1";

const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;
const ROOT_PREFIX: u8 = 0x02;

static KEY: LazyLock<[u8; 32]> = LazyLock::new(|| blake3::derive_key(KEY_CONTEXT, b""));

fn hasher(prefix: u8) -> blake3::Hasher {
    let mut h = blake3::Hasher::new_keyed(&KEY);
    h.update(&[prefix]);
    h
}

/// Why a proof was refused (or could not be made).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MerkleError {
    #[error("leaf index {index} is out of range for a tree of {count} leaves")]
    IndexOutOfRange { index: u64, count: u64 },
    #[error("a proof claims an empty tree, which has no leaves to prove")]
    EmptyTree,
    #[error("a tree of {count} leaves is larger than the limit of {max}")]
    TooManyLeaves { count: u64, max: u64 },
    #[error("proof path has {got} hashes, expected {expected} for this index and leaf count")]
    BadPathLength { expected: usize, got: usize },
    #[error("proof does not lead to the expected root")]
    Mismatch,
}

/// The hash of one leaf: keyed BLAKE3 of `0x00 ‖ bytes`, where `bytes` is the item's
/// canonical encoding.
pub fn leaf_hash(bytes: &[u8]) -> Hash {
    let mut h = hasher(LEAF_PREFIX);
    h.update(bytes);
    *h.finalize().as_bytes()
}

/// An interior node: keyed BLAKE3 of `0x01 ‖ left ‖ right`.
fn node_hash(l: &Hash, r: &Hash) -> Hash {
    let mut h = hasher(NODE_PREFIX);
    h.update(l);
    h.update(r);
    *h.finalize().as_bytes()
}

/// The root of a non-empty tree: keyed BLAKE3 of `0x02 ‖ LE64(count) ‖ top`.
fn finish_root(count: u64, top: &Hash) -> Hash {
    let mut h = hasher(ROOT_PREFIX);
    h.update(&count.to_le_bytes());
    h.update(top);
    *h.finalize().as_bytes()
}

/// The root of an empty list: keyed BLAKE3 of `0x02 ‖ LE64(0)`.
pub fn empty_root() -> Hash {
    let mut h = hasher(ROOT_PREFIX);
    h.update(&0u64.to_le_bytes());
    *h.finalize().as_bytes()
}

/// One level up: neighbours paired left to right, an odd last node promoted unchanged.
fn next_level(level: &[Hash]) -> Vec<Hash> {
    level
        .chunks(2)
        .map(|pair| match pair {
            [l, r] => node_hash(l, r),
            [single] => *single,
            _ => unreachable!("chunks(2) yields one or two items"),
        })
        .collect()
}

/// The root of `leaves`, in order (see the module docs for the construction).
pub fn root(leaves: &[Hash]) -> Hash {
    let Some(first) = leaves.first() else {
        return empty_root();
    };
    let count = leaves.len() as u64;
    if leaves.len() == 1 {
        return finish_root(count, first);
    }
    let mut level = next_level(leaves);
    while level.len() > 1 {
        level = next_level(&level);
    }
    finish_root(count, &level[0])
}

/// Which side a node's sibling is on, at one level of the walk from a leaf to the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// The sides of the siblings on the way from leaf `index` to the root of a tree of `count`
/// leaves, bottom-up, skipping levels where the node is promoted. Needs `index < count`.
fn sibling_sides(index: u64, count: u64) -> impl Iterator<Item = Side> {
    let mut pos = index;
    let mut width = count;
    std::iter::from_fn(move || {
        while width > 1 {
            let side = if pos % 2 == 1 {
                Some(Side::Left)
            } else if pos + 1 < width {
                Some(Side::Right)
            } else {
                None
            };
            pos /= 2;
            width = width.div_ceil(2);
            if side.is_some() {
                return side;
            }
        }
        None
    })
}

/// An inclusion proof: leaf `index` of a list of `leaf_count` leaves, with the sibling
/// hashes from the leaf up to the root (only at levels where a sibling exists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub index: u64,
    pub leaf_count: u64,
    pub path: Vec<Hash>,
}

/// A proof that `leaves[index]` is in the tree of `leaves`.
pub fn prove(leaves: &[Hash], index: usize) -> Result<Proof, MerkleError> {
    let count = leaves.len() as u64;
    if count > MAX_LEAVES {
        return Err(MerkleError::TooManyLeaves {
            count,
            max: MAX_LEAVES,
        });
    }
    if index >= leaves.len() {
        return Err(MerkleError::IndexOutOfRange {
            index: index as u64,
            count,
        });
    }
    let mut path = Vec::new();
    let mut pos = index;
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        if let Some(sibling) = level.get(pos ^ 1) {
            path.push(*sibling);
        }
        level = next_level(&level);
        pos /= 2;
    }
    Ok(Proof {
        index: index as u64,
        leaf_count: count,
        path,
    })
}

impl Proof {
    /// Check that `leaf` is leaf `self.index` of a list of `self.leaf_count` leaves whose
    /// root is `root`. Never panics, whatever the proof holds.
    pub fn verify(&self, leaf: &Hash, root: &Hash) -> Result<(), MerkleError> {
        // Roots are public, so a plain comparison is fine.
        if self.root_from(leaf)? == *root {
            Ok(())
        } else {
            Err(MerkleError::Mismatch)
        }
    }

    /// The root of the tree in which `leaf` is leaf `self.index` of `self.leaf_count`, as
    /// this proof's path leads to it. Never panics, whatever the proof holds.
    pub fn root_from(&self, leaf: &Hash) -> Result<Hash, MerkleError> {
        let (index, count) = (self.index, self.leaf_count);
        if count == 0 {
            return Err(MerkleError::EmptyTree);
        }
        if count > MAX_LEAVES {
            return Err(MerkleError::TooManyLeaves {
                count,
                max: MAX_LEAVES,
            });
        }
        if index >= count {
            return Err(MerkleError::IndexOutOfRange { index, count });
        }
        let expected = sibling_sides(index, count).count();
        if self.path.len() != expected {
            return Err(MerkleError::BadPathLength {
                expected,
                got: self.path.len(),
            });
        }
        let top =
            sibling_sides(index, count)
                .zip(&self.path)
                .fold(*leaf, |acc, (side, sibling)| match side {
                    Side::Left => node_hash(sibling, &acc),
                    Side::Right => node_hash(&acc, sibling),
                });
        Ok(finish_root(count, &top))
    }
}

/// Builds the same root as [`root`] from leaves pushed one at a time, holding only one
/// hash per set bit of the leaf count (at most 64).
#[derive(Debug, Clone, Default)]
pub struct MerkleBuilder {
    count: u64,
    /// Roots of perfect subtrees, largest (leftmost) first; one per set bit of `count`.
    stack: Vec<Hash>,
}

impl MerkleBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append the next leaf.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        // Each trailing one bit of `count` is a perfect subtree of the same size as
        // `node`, just to its left: merge them, like a carry in binary addition.
        for _ in 0..self.count.trailing_ones() {
            let Some(left) = self.stack.pop() else {
                break; // unreachable: one stack entry per set bit of `count`
            };
            node = node_hash(&left, &node);
        }
        self.stack.push(node);
        self.count += 1;
    }

    /// The number of leaves pushed so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The root of the leaves pushed so far; equal to [`root`] of the same leaves.
    pub fn finish(&self) -> Hash {
        // The perfect subtrees, right to left, each joined under the ones to its left:
        // exactly what promoting odd last nodes produces.
        let mut rest = self.stack.iter().rev();
        let Some(last) = rest.next() else {
            return empty_root();
        };
        let top = rest.fold(*last, |acc, left| node_hash(left, &acc));
        finish_root(self.count, &top)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: usize, seed: u64) -> Vec<Hash> {
        (0..n as u64)
            .map(|i| leaf_hash(&[seed.to_le_bytes(), i.to_le_bytes()].concat()))
            .collect()
    }

    /// Reference: the RFC 6962 recursive shape (split at the largest power of two below
    /// n), which must equal bottom-up pairing with promotion of the odd last node.
    fn naive_top(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => panic!("no top for an empty list"),
            1 => leaves[0],
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&naive_top(&leaves[..k]), &naive_top(&leaves[k..]))
            }
        }
    }

    fn naive_root(leaves: &[Hash]) -> Hash {
        let mut input = vec![ROOT_PREFIX];
        input.extend_from_slice(&(leaves.len() as u64).to_le_bytes());
        if !leaves.is_empty() {
            input.extend_from_slice(&naive_top(leaves));
        }
        *blake3::keyed_hash(&blake3::derive_key(KEY_CONTEXT, b""), &input).as_bytes()
    }

    fn builder_root(leaves: &[Hash]) -> Hash {
        let mut b = MerkleBuilder::new();
        for l in leaves {
            b.push(*l);
        }
        assert_eq!(b.len(), leaves.len() as u64);
        b.finish()
    }

    #[test]
    fn hashes_are_domain_separated() {
        let key = blake3::derive_key(KEY_CONTEXT, b"");
        assert_eq!(
            leaf_hash(b"x"),
            *blake3::keyed_hash(&key, b"\x00x").as_bytes()
        );
        let (l, r) = ([1u8; 32], [2u8; 32]);
        let input = [&[1u8][..], &l, &r].concat();
        assert_eq!(
            node_hash(&l, &r),
            *blake3::keyed_hash(&key, &input).as_bytes()
        );
        assert_ne!(leaf_hash(b"x"), *blake3::hash(b"\x00x").as_bytes());
        assert_eq!(root(&[]), naive_root(&[]));
        assert_eq!(root(&[]), empty_root());
    }

    #[test]
    fn root_matches_reference() {
        for n in [0, 1, 2, 3, 4, 5, 7, 8, 9, 1000] {
            let ls = leaves(n, 7);
            assert_eq!(root(&ls), naive_root(&ls), "n = {n}");
            assert_eq!(builder_root(&ls), naive_root(&ls), "builder, n = {n}");
        }
        for n in 0..=70 {
            let ls = leaves(n, 8);
            assert_eq!(root(&ls), naive_root(&ls), "n = {n}");
            assert_eq!(builder_root(&ls), root(&ls), "builder, n = {n}");
        }
    }

    #[test]
    fn no_duplication_second_preimage() {
        let [a, b, c] = [b"a", b"b", b"c"].map(|x| leaf_hash(x));
        assert_ne!(root(&[a, b, c]), root(&[a, b, c, c]));
        assert_ne!(root(&[a, b]), root(&[node_hash(&a, &b)]));
        // A promoted node is not the same as the node itself one level up.
        assert_ne!(root(&[a]), a);
        assert_ne!(root(&[a]), root(&[a, a]));
    }

    #[test]
    fn golden_root_abc() {
        let ls = [leaf_hash(b"a"), leaf_hash(b"b"), leaf_hash(b"c")];
        assert_eq!(
            hex::encode(root(&ls)),
            "1e57971ae479e889d00c777507dd0b8683555609c7bcfad671c5a49ef7a0cd7c"
        );
    }

    #[test]
    fn every_index_of_small_trees() {
        for n in 1..=33 {
            let ls = leaves(n, n as u64);
            let r = root(&ls);
            for (i, leaf) in ls.iter().enumerate() {
                let p = prove(&ls, i).unwrap();
                assert_eq!((p.index, p.leaf_count), (i as u64, n as u64));
                assert!(p.path.len() <= 6);
                assert_eq!(p.verify(leaf, &r), Ok(()), "n = {n}, i = {i}");
                // The same proof does not verify any other leaf of the tree.
                for (j, other) in ls.iter().enumerate() {
                    if j != i {
                        assert_eq!(p.verify(other, &r), Err(MerkleError::Mismatch));
                    }
                }
            }
            assert_eq!(
                prove(&ls, n),
                Err(MerkleError::IndexOutOfRange {
                    index: n as u64,
                    count: n as u64
                })
            );
        }
        assert!(matches!(
            prove(&[], 0),
            Err(MerkleError::IndexOutOfRange { index: 0, count: 0 })
        ));
    }

    #[test]
    fn path_lengths() {
        // One leaf: no siblings at all.
        let ls = leaves(1, 0);
        assert!(prove(&ls, 0).unwrap().path.is_empty());
        // Five leaves: ((ab)(cd))e; e is promoted twice, so its path is just [abcd].
        let ls = leaves(5, 0);
        assert_eq!(prove(&ls, 4).unwrap().path.len(), 1);
        assert_eq!(prove(&ls, 0).unwrap().path.len(), 3);
        // A full tree of 2^k leaves has paths of length k.
        let ls = leaves(64, 0);
        assert_eq!(prove(&ls, 37).unwrap().path.len(), 6);
        // The longest path allowed.
        assert_eq!(sibling_sides(0, MAX_LEAVES).count(), 40);
        assert_eq!(sibling_sides(MAX_LEAVES - 1, MAX_LEAVES).count(), 40);
    }

    #[test]
    fn clear_errors_on_malformed_proofs() {
        let ls = leaves(10, 1);
        let r = root(&ls);
        let good = prove(&ls, 3).unwrap();
        let with = |f: &dyn Fn(&mut Proof)| {
            let mut p = good.clone();
            f(&mut p);
            p.verify(&ls[3], &r)
        };
        assert_eq!(with(&|_| {}), Ok(()));
        assert_eq!(with(&|p| p.leaf_count = 0), Err(MerkleError::EmptyTree));
        assert_eq!(
            with(&|p| p.leaf_count = MAX_LEAVES + 1),
            Err(MerkleError::TooManyLeaves {
                count: MAX_LEAVES + 1,
                max: MAX_LEAVES
            })
        );
        assert_eq!(
            with(&|p| p.index = 10),
            Err(MerkleError::IndexOutOfRange {
                index: 10,
                count: 10
            })
        );
        assert_eq!(
            with(&|p| {
                p.path.pop();
            }),
            Err(MerkleError::BadPathLength {
                expected: 4,
                got: 3
            })
        );
        assert_eq!(
            with(&|p| p.path.push([0; 32])),
            Err(MerkleError::BadPathLength {
                expected: 4,
                got: 5
            })
        );
        assert_eq!(with(&|p| p.path.swap(0, 1)), Err(MerkleError::Mismatch));
        // Extreme values take the error paths, never panic or loop long.
        for (index, leaf_count) in [(u64::MAX, u64::MAX), (MAX_LEAVES - 1, MAX_LEAVES)] {
            let p = Proof {
                index,
                leaf_count,
                path: vec![[0; 32]; 40],
            };
            assert!(p.verify(&ls[3], &r).is_err());
        }
    }

    #[test]
    fn proof_serde_round_trip() {
        let ls = leaves(13, 2);
        let p = prove(&ls, 11).unwrap();
        let bytes = postcard::to_stdvec(&p).unwrap();
        let back: Proof = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.verify(&ls[11], &root(&ls)), Ok(()));
    }

    fn flip(h: &Hash, bit: usize) -> Hash {
        let mut h = *h;
        h[bit / 8] ^= 1 << (bit % 8);
        h
    }

    fn tree_and_index() -> impl Strategy<Value = (usize, usize, u64)> {
        (1usize..=300, any::<u64>()).prop_flat_map(|(n, seed)| (Just(n), 0..n, Just(seed)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn proofs_verify_and_tampering_fails(
            (n, i, seed) in tree_and_index(),
            bit in 0usize..256,
        ) {
            let ls = leaves(n, seed);
            let r = root(&ls);
            prop_assert_eq!(builder_root(&ls), r);
            let leaf = ls[i];
            let p = prove(&ls, i).unwrap();
            prop_assert_eq!(p.verify(&leaf, &r), Ok(()));

            prop_assert_eq!(p.verify(&flip(&leaf, bit), &r), Err(MerkleError::Mismatch));
            prop_assert_eq!(p.verify(&leaf, &flip(&r, bit)), Err(MerkleError::Mismatch));
            for k in 0..p.path.len() {
                let mut q = p.clone();
                q.path[k] = flip(&q.path[k], bit);
                prop_assert_eq!(q.verify(&leaf, &r), Err(MerkleError::Mismatch));
            }
            for delta in [-1i64, 1] {
                let mut q = p.clone();
                q.index = q.index.wrapping_add_signed(delta);
                prop_assert!(q.verify(&leaf, &r).is_err(), "index {} of {}", q.index, n);
                let mut q = p.clone();
                q.leaf_count = q.leaf_count.wrapping_add_signed(delta);
                prop_assert!(q.verify(&leaf, &r).is_err(), "leaf_count {} at {}", q.leaf_count, i);
            }
            // Proving a different position with the same path fails too.
            if n > 1 {
                let mut q = p.clone();
                q.index = (q.index + 1 + (seed % (n as u64 - 1))) % n as u64;
                prop_assert!(q.verify(&leaf, &r).is_err());
            }
        }

        #[test]
        fn garbage_proofs_never_panic(
            index in prop_oneof![any::<u64>(), 0u64..80, (MAX_LEAVES - 2)..(MAX_LEAVES + 2)],
            leaf_count in prop_oneof![any::<u64>(), 0u64..80, (MAX_LEAVES - 2)..(MAX_LEAVES + 2)],
            path in prop::collection::vec(any::<[u8; 32]>(), 0..64),
            fit_path in any::<bool>(),
            leaf in any::<[u8; 32]>(),
            r in any::<[u8; 32]>(),
        ) {
            let mut p = Proof { index, leaf_count, path };
            if fit_path && leaf_count > 0 && leaf_count <= MAX_LEAVES && index < leaf_count {
                // Make the length right so the hashing walk runs on garbage as well.
                p.path.resize(sibling_sides(index, leaf_count).count(), [7; 32]);
            }
            let got = p.verify(&leaf, &r);
            prop_assert!(got.is_err());
            // And the same against a real root.
            let ls = leaves(5, 0);
            prop_assert!(p.verify(&leaf, &root(&ls)).is_err());
        }
    }
}
