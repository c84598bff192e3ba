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
//! Two versions are read. Version 1 (what `Client::put` writes) is one STREAM over the
//! whole document: one nonce prefix, segment counters from 0, the last segment flagged.
//! Version 2 is a list of [`Piece`]s (an S3 multipart upload's parts, sealed in parallel
//! without knowing where they would end up): each piece is its own STREAM under the
//! document's one data key, with its own nonce prefix, counters from 0 and last segment
//! flagged, and its own stripes; the stripes of all pieces follow each other in
//! [`Manifest::stripes`], so code that walks stripes does not care about pieces, and
//! [`Manifest::stripe`] says which piece a stripe belongs to. The piece list is authenticated
//! as the rest is: the document id is the hash of the manifest. In memory a version 1
//! manifest is one piece.
//!
//! Not for: storing the data key (grants carry it), encryption or coding (see `codec`).

use serde::{Deserialize, Serialize};

use crate::crypto::{CipherSuite, NONCE_PREFIX_LEN, TAG_LEN};
use crate::erasure::MAX_TOTAL_SHARDS;
use crate::id::{DocumentId, ShardId};

/// The manifest format of a document sealed as one STREAM (what `Client::put` writes).
pub const MANIFEST_VERSION: u16 = 1;
/// The manifest format of a document made of separately sealed pieces.
pub const MANIFEST_VERSION_PIECES: u16 = 2;
/// Most pieces in a version 2 manifest (S3's limit of parts).
pub const MAX_PIECES: usize = 10_000;
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
    #[error(
        "manifest format version {0} is not supported (this build reads {MANIFEST_VERSION} and {MANIFEST_VERSION_PIECES})"
    )]
    Version(u16),
    #[error("manifest has {0} pieces: version 1 has exactly one, version 2 1..={MAX_PIECES}")]
    PieceCount(usize),
    #[error("the pieces' sizes add up to {pieces} bytes, the manifest says {size}")]
    PieceSizes { pieces: u64, size: u64 },
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
            piece: 0,
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
    /// The stripe's index in the document (over all pieces).
    pub index: u64,
    /// The piece (its own STREAM) this stripe belongs to: 0 in a version 1 document.
    pub piece: usize,
    /// The STREAM counter of the stripe's first segment, within its piece.
    pub first_segment: u64,
    pub segments: u64,
    /// Where the stripe's plaintext starts in the document (over all pieces).
    pub plain_offset: u64,
    pub plain_len: u64,
    /// Ciphertext bytes in this stripe (the data shards hold these, then zero padding).
    pub cipher_len: u64,
    pub shard_len: u64,
    /// Whether this stripe holds its piece's final segment (sealed with the last flag).
    pub last: bool,
}

/// One separately sealed STREAM of a document: its nonce prefix and plaintext size (its
/// stripe count follows from the size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    pub size: u64,
}

/// Everything needed to rebuild a document except its data key.
///
/// Encoded (postcard, fields in this order) as version 1: `version, suite, nonce_prefix,
/// params, shard_len, size, department, document_type, created_at_ms, stripes`; version 2:
/// `version, suite, params, shard_len, size, department, document_type, created_at_ms,
/// pieces, stripes` (docs/formats.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub version: u16,
    pub suite: CipherSuite,
    pub params: CodingParams,
    /// Length of every full stripe's shards (derived; recorded for readers and checked).
    pub shard_len: u32,
    /// Plaintext length of the document (all pieces).
    pub size: u64,
    /// Owning department, as a label (its key comes with the chain).
    pub department: String,
    pub document_type: String,
    /// Milliseconds since the Unix epoch, UTC.
    pub created_at_ms: u64,
    /// The document's STREAMs in order: exactly one in version 1.
    pub pieces: Vec<Piece>,
    /// Shard ids of every stripe, piece after piece: k data shards then m parity shards.
    pub stripes: Vec<Vec<ShardId>>,
}

impl Serialize for Manifest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(10)?;
        t.serialize_element(&self.version)?;
        t.serialize_element(&self.suite)?;
        if self.version == MANIFEST_VERSION {
            let prefix = self
                .pieces
                .first()
                .map(|p| p.nonce_prefix)
                .unwrap_or_default();
            t.serialize_element(&prefix)?;
        }
        t.serialize_element(&self.params)?;
        t.serialize_element(&self.shard_len)?;
        t.serialize_element(&self.size)?;
        t.serialize_element(&self.department)?;
        t.serialize_element(&self.document_type)?;
        t.serialize_element(&self.created_at_ms)?;
        if self.version != MANIFEST_VERSION {
            t.serialize_element(&self.pieces)?;
        }
        t.serialize_element(&self.stripes)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for Manifest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Manifest;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a manifest")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Manifest, A::Error> {
                use serde::de::Error;
                fn next<'de, T: Deserialize<'de>, A: serde::de::SeqAccess<'de>>(
                    seq: &mut A,
                ) -> Result<T, A::Error> {
                    seq.next_element()?
                        .ok_or_else(|| A::Error::custom("manifest ends early"))
                }
                let version: u16 = next(&mut seq)?;
                if version != MANIFEST_VERSION && version != MANIFEST_VERSION_PIECES {
                    return Err(A::Error::custom(ManifestError::Version(version)));
                }
                let suite = next(&mut seq)?;
                let prefix: Option<[u8; NONCE_PREFIX_LEN]> = if version == MANIFEST_VERSION {
                    Some(next(&mut seq)?)
                } else {
                    None
                };
                let params = next(&mut seq)?;
                let shard_len = next(&mut seq)?;
                let size = next(&mut seq)?;
                let department = next(&mut seq)?;
                let document_type = next(&mut seq)?;
                let created_at_ms = next(&mut seq)?;
                let pieces = match prefix {
                    Some(nonce_prefix) => vec![Piece { nonce_prefix, size }],
                    None => next(&mut seq)?,
                };
                let stripes = next(&mut seq)?;
                Ok(Manifest {
                    version,
                    suite,
                    params,
                    shard_len,
                    size,
                    department,
                    document_type,
                    created_at_ms,
                    pieces,
                    stripes,
                })
            }
        }
        d.deserialize_tuple(10, Fields)
    }
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
        let (version, _) = postcard::take_from_bytes::<u16>(bytes)
            .map_err(|e| ManifestError::Decode(e.to_string()))?;
        if version != MANIFEST_VERSION && version != MANIFEST_VERSION_PIECES {
            return Err(ManifestError::Version(version));
        }
        let manifest: Manifest =
            postcard::from_bytes(bytes).map_err(|e| ManifestError::Decode(e.to_string()))?;
        manifest.validate()?;
        if manifest.encode() != bytes {
            return Err(ManifestError::NotCanonical);
        }
        Ok(manifest)
    }

    /// Checks every field that sizes or places data.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.version != MANIFEST_VERSION && self.version != MANIFEST_VERSION_PIECES {
            return Err(ManifestError::Version(self.version));
        }
        let pieces = self.pieces.len();
        if pieces == 0 || pieces > MAX_PIECES || (self.version == MANIFEST_VERSION && pieces != 1) {
            return Err(ManifestError::PieceCount(pieces));
        }
        self.params.validate()?;
        let derived = self.params.full_shard_len();
        if u64::from(self.shard_len) != derived {
            return Err(ManifestError::ShardLen {
                recorded: self.shard_len,
                derived,
            });
        }
        let mut total = 0u64;
        let mut expected = 0u64;
        for piece in &self.pieces {
            // Each piece is its own STREAM: its counter must not wrap.
            let segments = self.params.segment_count(piece.size);
            if segments > u64::from(u32::MAX) {
                return Err(ManifestError::TooManySegments(segments));
            }
            total = total.saturating_add(piece.size);
            expected += self.params.stripe_count(piece.size);
        }
        if total != self.size {
            return Err(ManifestError::PieceSizes {
                pieces: total,
                size: self.size,
            });
        }
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

    /// Geometry of stripe `index` (over all pieces): its piece, its segments' STREAM
    /// counters within that piece, its plaintext offset in the document. An index past the
    /// last stripe gives an empty stripe past the end.
    pub fn stripe(&self, index: u64) -> StripeGeometry {
        let mut first = 0u64;
        let mut offset = 0u64;
        for (piece, p) in self.pieces.iter().enumerate() {
            let count = self.params.stripe_count(p.size);
            if index < first + count || piece + 1 == self.pieces.len() {
                let mut g = self.params.stripe(p.size, index - first.min(index));
                g.index = index;
                g.piece = piece;
                g.plain_offset += offset;
                return g;
            }
            first += count;
            offset += p.size;
        }
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

    /// The version 1 layout as it was before pieces: its bytes must not change.
    #[derive(Serialize)]
    struct V1 {
        version: u16,
        suite: CipherSuite,
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
        params: CodingParams,
        shard_len: u32,
        size: u64,
        department: String,
        document_type: String,
        created_at_ms: u64,
        stripes: Vec<Vec<ShardId>>,
    }

    fn manifest(version: u16, sizes: &[u64]) -> Manifest {
        let p = params();
        let size = sizes.iter().sum();
        let pieces: Vec<Piece> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Piece {
                nonce_prefix: [i as u8; NONCE_PREFIX_LEN],
                size,
            })
            .collect();
        let stripes = sizes
            .iter()
            .flat_map(|&s| 0..p.stripe_count(s))
            .enumerate()
            .map(|(i, _)| (0..6).map(|j| ShardId::of(&[i as u8, j])).collect())
            .collect();
        Manifest {
            version,
            suite: CipherSuite::ChaCha20Poly1305StreamBe32Blake3,
            params: p,
            shard_len: p.full_shard_len() as u32,
            size,
            department: "civil-registry".into(),
            document_type: "s3-object".into(),
            created_at_ms: 7,
            pieces,
            stripes,
        }
    }

    #[test]
    fn version_1_keeps_its_bytes_and_reads_as_one_piece() {
        let m = manifest(MANIFEST_VERSION, &[10_000]);
        let old = V1 {
            version: 1,
            suite: m.suite,
            nonce_prefix: m.pieces[0].nonce_prefix,
            params: m.params,
            shard_len: m.shard_len,
            size: m.size,
            department: m.department.clone(),
            document_type: m.document_type.clone(),
            created_at_ms: m.created_at_ms,
            stripes: m.stripes.clone(),
        };
        let bytes = postcard::to_allocvec(&old).unwrap();
        assert_eq!(m.encode(), bytes);
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        for i in 0..m.stripe_count() {
            assert_eq!(m.stripe(i), m.params.stripe(m.size, i));
        }
        // Version 1 is one piece, exactly.
        let mut two = manifest(MANIFEST_VERSION, &[4096, 10]);
        assert_eq!(two.validate(), Err(ManifestError::PieceCount(2)));
        two.pieces.clear();
        assert_eq!(two.validate(), Err(ManifestError::PieceCount(0)));
    }

    #[test]
    fn version_2_round_trips_and_maps_stripes_to_their_pieces() {
        let m = manifest(MANIFEST_VERSION_PIECES, &[5000, 0, 4096, 10]);
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(m.id(), DocumentId::of(&bytes));
        // Stripes: 5000 → 2 (3 KiB + 904), 0 → 1 empty, 4096 → 1, 10 → 1.
        assert_eq!(m.stripe_count(), 5);
        let expect = [
            (0, 0, 0, 4096, false),
            (0, 4, 4096, 904, true),
            (1, 0, 5000, 0, true),
            (2, 0, 5000, 4096, true),
            (3, 0, 9096, 10, true),
        ];
        for (i, (piece, first, offset, len, last)) in expect.into_iter().enumerate() {
            let g = m.stripe(i as u64);
            assert_eq!(
                (
                    g.piece,
                    g.first_segment,
                    g.plain_offset,
                    g.plain_len,
                    g.last
                ),
                (piece, first, offset, len, last),
                "stripe {i}"
            );
            assert_eq!(g.index, i as u64);
        }
        // The same bytes as version 1 would have been, plus the piece list: a one-piece
        // version 2 document is another document.
        let one = manifest(MANIFEST_VERSION_PIECES, &[10_000]);
        let mut v1 = one.clone();
        v1.version = MANIFEST_VERSION;
        assert_ne!(one.id(), v1.id());
        assert_eq!(Manifest::decode(&one.encode()).unwrap(), one);
    }

    #[test]
    fn version_2_refuses_inconsistent_pieces() {
        let good = manifest(MANIFEST_VERSION_PIECES, &[5000, 10]);
        let mut sizes = good.clone();
        sizes.size += 1;
        assert!(matches!(
            sizes.validate(),
            Err(ManifestError::PieceSizes { .. })
        ));
        let mut stripes = good.clone();
        stripes.stripes.pop();
        assert!(matches!(
            stripes.validate(),
            Err(ManifestError::StripeCount { .. })
        ));
        let mut none = good.clone();
        none.pieces.clear();
        none.size = 0;
        assert_eq!(none.validate(), Err(ManifestError::PieceCount(0)));
        let mut many = manifest(MANIFEST_VERSION_PIECES, &[0]);
        many.pieces = vec![many.pieces[0]; MAX_PIECES + 1];
        many.stripes = vec![many.stripes[0].clone(); MAX_PIECES + 1];
        assert_eq!(
            many.validate(),
            Err(ManifestError::PieceCount(MAX_PIECES + 1))
        );
        // Sizes that overflow when added are refused, not wrapped.
        let mut huge = good.clone();
        huge.pieces[0].size = u64::MAX;
        assert!(huge.validate().is_err());
        // Each refused manifest's bytes are refused by decode too, and never panic cut short.
        for bad in [sizes, stripes, none, huge] {
            assert!(Manifest::decode(&bad.encode()).is_err());
        }
        let bytes = good.encode();
        for n in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..n]).is_err());
        }
        let mut v3 = bytes.clone();
        v3[0] = 3;
        assert_eq!(Manifest::decode(&v3), Err(ManifestError::Version(3)));
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
