//! The manifest: everything needed to rebuild a document from its shards, except the key.
//!
//! A manifest is encoded canonically with postcard; the document id is BLAKE3 of those
//! bytes. Decoding refuses anything that does not re-encode to the same bytes, so one
//! document has exactly one id. Every field that sizes or places data is checked by
//! [`Manifest::validate`] before use, so a hostile manifest gets an error, never a panic or
//! a huge allocation.
//!
//! Stripe geometry is derived, not stored: from the plaintext size, segment size, segments
//! per stripe and k, every stripe's ciphertext length and shard length follow (see
//! [`Manifest::stripe`]). The last stripe shrinks its shard length to fit, so small
//! documents are not padded to a full stripe.
//!
//! Not for: storing the data key (grants carry it), encryption or coding (see `codec`).

use serde::{Deserialize, Serialize};

use crate::crypto::{CipherSuite, NONCE_PREFIX_LEN, TAG_LEN};
use crate::erasure::MAX_TOTAL_SHARDS;
use crate::id::{DocumentId, ShardId};

/// The manifest format this code writes and reads.
pub const MANIFEST_VERSION: u16 = 1;
/// Largest encoded manifest accepted (about 8 TiB of document at the default geometry).
pub const MAX_MANIFEST_BYTES: usize = 64 << 20;
/// Bounds on the plaintext segment size.
pub const MIN_SEGMENT_SIZE: u32 = 1 << 10;
pub const MAX_SEGMENT_SIZE: u32 = 16 << 20;
/// Largest full-stripe shard length accepted.
pub const MAX_SHARD_LEN: u64 = 64 << 20;
/// Longest department or document-type label.
pub const MAX_LABEL_LEN: usize = 256;

/// How a document is cut, sealed and coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodingParams {
    /// Data shards per stripe.
    pub k: u16,
    /// Parity shards per stripe.
    pub m: u16,
    /// Plaintext bytes per sealed segment (the last segment may be shorter).
    pub segment_size: u32,
    /// Whole segments per stripe; a stripe's shards are independent of every other stripe's.
    pub segments_per_stripe: u32,
}

impl Default for CodingParams {
    /// k = 4, m = 2, 64 KiB segments, 64 segments a stripe: shards of 1 MiB + 256 B.
    /// See docs/benchmarks.md for the measurements behind the shard size.
    fn default() -> Self {
        Self {
            k: 4,
            m: 2,
            segment_size: 64 << 10,
            segments_per_stripe: 64,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("k must be at least 1")]
    NoDataShards,
    #[error("k + m must be at most {MAX_TOTAL_SHARDS}, got {k} + {m}")]
    TooManyShards { k: u16, m: u16 },
    #[error("segment size {0} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE} bytes")]
    SegmentSize(u32),
    #[error("segments per stripe must be at least 1")]
    NoSegments,
    #[error("shard length {0} exceeds the limit of {MAX_SHARD_LEN} bytes")]
    ShardTooLarge(u64),
    #[error("document needs {0} segments, more than the STREAM counter allows")]
    TooManySegments(u64),
    #[error("manifest format version {0} is not supported (this build reads {MANIFEST_VERSION})")]
    Version(u16),
    #[error("manifest is {0} bytes, over the limit of {MAX_MANIFEST_BYTES}")]
    TooLarge(usize),
    #[error("manifest bytes do not decode: {0}")]
    Decode(String),
    #[error("manifest bytes are not in canonical form")]
    NotCanonical,
    #[error("manifest lists {got} stripes, its size needs {expected}")]
    StripeCount { expected: u64, got: u64 },
    #[error("stripe {stripe} lists {got} shard ids, k + m is {expected}")]
    ShardCount {
        stripe: u64,
        expected: usize,
        got: usize,
    },
    #[error("recorded shard length {recorded} does not match the {derived} its geometry gives")]
    ShardLen { recorded: u32, derived: u64 },
    #[error("{field} is longer than {MAX_LABEL_LEN} bytes")]
    Label { field: &'static str },
}

impl CodingParams {
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.k == 0 {
            return Err(ManifestError::NoDataShards);
        }
        if usize::from(self.k) + usize::from(self.m) > MAX_TOTAL_SHARDS {
            return Err(ManifestError::TooManyShards {
                k: self.k,
                m: self.m,
            });
        }
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(ManifestError::SegmentSize(self.segment_size));
        }
        if self.segments_per_stripe == 0 {
            return Err(ManifestError::NoSegments);
        }
        let shard = self.full_shard_len();
        if shard > MAX_SHARD_LEN {
            return Err(ManifestError::ShardTooLarge(shard));
        }
        Ok(())
    }

    /// Picks segments per stripe so that full shards come as close as possible to `target`.
    pub fn with_shard_len(k: u16, m: u16, segment_size: u32, target: u64) -> Self {
        let sealed = u64::from(segment_size) + TAG_LEN as u64;
        // Saturating: a huge target must give a shard `validate` refuses, not wrap around.
        let segs = (u64::from(k.max(1))
            .saturating_mul(target)
            .saturating_add(sealed / 2)
            / sealed)
            .max(1);
        Self {
            k,
            m,
            segment_size,
            segments_per_stripe: segs.min(u64::from(u32::MAX)) as u32,
        }
    }

    /// Ciphertext bytes of one sealed full segment.
    pub fn sealed_segment_len(&self) -> u64 {
        u64::from(self.segment_size) + TAG_LEN as u64
    }

    /// Shard length of every stripe but (possibly) the last.
    pub fn full_shard_len(&self) -> u64 {
        (u64::from(self.segments_per_stripe) * self.sealed_segment_len()).div_ceil(self.k.into())
    }

    pub fn width(&self) -> usize {
        usize::from(self.k) + usize::from(self.m)
    }

    /// Number of sealed segments of a document of `size` bytes (an empty one has one, empty).
    pub fn segment_count(&self, size: u64) -> u64 {
        size.div_ceil(self.segment_size.into()).max(1)
    }

    pub fn stripe_count(&self, size: u64) -> u64 {
        self.segment_count(size)
            .div_ceil(self.segments_per_stripe.into())
    }

    /// Geometry of stripe `index` of a document of `size` bytes.
    pub fn stripe(&self, size: u64, index: u64) -> StripeGeometry {
        let segments = self.segment_count(size);
        let per = u64::from(self.segments_per_stripe);
        let first_segment = index * per;
        let count = per.min(segments.saturating_sub(first_segment));
        let plain_start = (first_segment * u64::from(self.segment_size)).min(size);
        let plain_end = ((first_segment + count) * u64::from(self.segment_size)).min(size);
        let plain_len = plain_end - plain_start;
        let cipher_len = plain_len + count * TAG_LEN as u64;
        StripeGeometry {
            index,
            first_segment,
            segments: count,
            plain_offset: plain_start,
            plain_len,
            cipher_len,
            shard_len: cipher_len.div_ceil(self.k.into()),
            last: first_segment + count == segments,
        }
    }
}

/// Where one stripe sits in the document and how long its pieces are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripeGeometry {
    pub index: u64,
    pub first_segment: u64,
    pub segments: u64,
    pub plain_offset: u64,
    pub plain_len: u64,
    /// Ciphertext bytes in this stripe (the data shards hold these, then zero padding).
    pub cipher_len: u64,
    pub shard_len: u64,
    /// Whether this stripe holds the document's final segment.
    pub last: bool,
}

/// Everything needed to rebuild a document except its data key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u16,
    pub suite: CipherSuite,
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    pub params: CodingParams,
    /// Length of every full stripe's shards (derived; recorded for readers and checked).
    pub shard_len: u32,
    /// Plaintext length of the document.
    pub size: u64,
    /// Owning department, as a label (its key comes with the chain).
    pub department: String,
    pub document_type: String,
    /// Milliseconds since the Unix epoch, UTC.
    pub created_at_ms: u64,
    /// Shard ids of every stripe: k data shards then m parity shards.
    pub stripes: Vec<Vec<ShardId>>,
}

impl Manifest {
    /// Canonical bytes; the document id is their BLAKE3 hash.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding a manifest into memory cannot fail")
    }

    pub fn id(&self) -> DocumentId {
        DocumentId::of(&self.encode())
    }

    /// Decodes and validates untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let manifest: Manifest =
            postcard::from_bytes(bytes).map_err(|e| ManifestError::Decode(e.to_string()))?;
        if manifest.version != MANIFEST_VERSION {
            return Err(ManifestError::Version(manifest.version));
        }
        manifest.validate()?;
        if manifest.encode() != bytes {
            return Err(ManifestError::NotCanonical);
        }
        Ok(manifest)
    }

    /// Checks every field that sizes or places data.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::Version(self.version));
        }
        self.params.validate()?;
        let derived = self.params.full_shard_len();
        if u64::from(self.shard_len) != derived {
            return Err(ManifestError::ShardLen {
                recorded: self.shard_len,
                derived,
            });
        }
        let segments = self.params.segment_count(self.size);
        if segments > u64::from(u32::MAX) {
            return Err(ManifestError::TooManySegments(segments));
        }
        let expected = self.params.stripe_count(self.size);
        if self.stripes.len() as u64 != expected {
            return Err(ManifestError::StripeCount {
                expected,
                got: self.stripes.len() as u64,
            });
        }
        let width = self.params.width();
        for (i, ids) in self.stripes.iter().enumerate() {
            if ids.len() != width {
                return Err(ManifestError::ShardCount {
                    stripe: i as u64,
                    expected: width,
                    got: ids.len(),
                });
            }
        }
        if self.department.len() > MAX_LABEL_LEN {
            return Err(ManifestError::Label {
                field: "department",
            });
        }
        if self.document_type.len() > MAX_LABEL_LEN {
            return Err(ManifestError::Label {
                field: "document type",
            });
        }
        Ok(())
    }

    pub fn stripe_count(&self) -> u64 {
        self.stripes.len() as u64
    }

    pub fn stripe(&self, index: u64) -> StripeGeometry {
        self.params.stripe(self.size, index)
    }

    /// Bytes stored across all shards (data + parity, padding included).
    pub fn stored_bytes(&self) -> u64 {
        (0..self.stripe_count())
            .map(|i| self.stripe(i).shard_len * self.params.width() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> CodingParams {
        CodingParams {
            k: 4,
            m: 2,
            segment_size: 1024,
            segments_per_stripe: 4,
        }
    }

    #[test]
    fn geometry_covers_the_document_exactly() {
        let p = params();
        for size in [0u64, 1, 1023, 1024, 1025, 4095, 4096, 4097, 10_000, 40_000] {
            let n = p.stripe_count(size);
            let mut plain = 0;
            let mut segments = 0;
            for i in 0..n {
                let g = p.stripe(size, i);
                assert_eq!(g.plain_offset, plain);
                assert_eq!(g.first_segment, segments);
                assert!(g.segments >= 1);
                assert!(g.shard_len * 4 >= g.cipher_len && g.shard_len * 4 < g.cipher_len + 4);
                assert_eq!(g.last, i + 1 == n);
                plain += g.plain_len;
                segments += g.segments;
            }
            assert_eq!(plain, size);
            assert_eq!(segments, p.segment_count(size));
        }
    }

    #[test]
    fn small_documents_are_not_padded_to_a_full_stripe() {
        let p = CodingParams::default();
        let g = p.stripe(50 << 10, 0);
        assert_eq!(g.cipher_len, (50 << 10) + 16);
        assert!(g.shard_len * 6 <= (50 << 10) * 6 / 4 + 64);
    }

    #[test]
    fn default_shards_are_about_one_mebibyte() {
        let p = CodingParams::default();
        assert_eq!(p.full_shard_len(), (64 * ((64 << 10) + 16)) / 4);
        assert_eq!(CodingParams::with_shard_len(4, 2, 64 << 10, 1 << 20), p);
    }

    /// Found with the `config` fuzz target (`shard_kib = 2^53`): `k * target` overflowed,
    /// a panic in debug builds and, wrapped in release builds, a tiny shard.
    #[test]
    fn a_huge_target_shard_length_is_refused_not_wrapped() {
        for target in [1 << 63, u64::MAX] {
            let p = CodingParams::with_shard_len(2, 1, 64 << 10, target);
            assert!(matches!(p.validate(), Err(ManifestError::ShardTooLarge(_))));
        }
    }

    #[test]
    fn bad_params_are_refused() {
        let mut p = params();
        p.k = 0;
        assert_eq!(p.validate(), Err(ManifestError::NoDataShards));
        p.k = 250;
        p.m = 7;
        assert!(matches!(
            p.validate(),
            Err(ManifestError::TooManyShards { .. })
        ));
        let mut p = params();
        p.segment_size = 10;
        assert!(matches!(p.validate(), Err(ManifestError::SegmentSize(10))));
        let mut p = params();
        p.segments_per_stripe = 0;
        assert_eq!(p.validate(), Err(ManifestError::NoSegments));
    }
}
