//! Document encryption: ChaCha20-Poly1305 in the STREAM construction (`aead-stream`'s
//! `StreamBE32`: 7-byte nonce prefix, 32-bit big-endian segment counter, last-segment flag).
//!
//! A document is a sequence of plaintext segments of a fixed size (the last one may be
//! shorter, and may be empty for an empty document). Segment `i` is sealed with counter `i`
//! and the last one with the last-segment flag set, so truncating, reordering or splicing
//! segments fails authentication. The stateless `StreamPrimitive` API lets segments of one
//! stripe be sealed in parallel without any nonce scheme of our own.
//!
//! Not for: key wrapping for grants (that is `access`), hashing (that is `id`).

use aead_stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// Bytes the AEAD tag adds to every segment.
pub const TAG_LEN: usize = 16;
/// Length of the random per-document nonce prefix used by `StreamBE32`.
pub const NONCE_PREFIX_LEN: usize = 7;

/// The cipher suites a manifest can name. Stored as a small integer on the wire so that a
/// national-standard suite (e.g. SM4-GCM with SM3) can be added without a new format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CipherSuite {
    /// ChaCha20-Poly1305, STREAM (BE32 counter), BLAKE3 content addresses.
    ChaCha20Poly1305StreamBe32Blake3,
}

/// A document's 256-bit data key. Fresh and random for every document; zeroed on drop;
/// never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn generate() -> Self {
        Self(rand::random())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// A segment failed to authenticate: wrong key, corrupted, truncated, reordered or spliced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("segment {segment} failed authentication (wrong key, or the ciphertext was altered)")]
pub struct SegmentAuthError {
    pub segment: u64,
}

/// Seals and opens the segments of one document. Cheap to share between threads.
pub struct SegmentCipher {
    stream: StreamBE32<ChaCha20Poly1305>,
}

impl SegmentCipher {
    pub fn new(key: &DataKey, nonce_prefix: &[u8; NONCE_PREFIX_LEN]) -> Self {
        let aead = ChaCha20Poly1305::new(&chacha20poly1305::Key::from(key.0));
        Self {
            stream: StreamBE32::from_aead(aead, &(*nonce_prefix).into()),
        }
    }

    /// Seals `buf[..plain_len]` in place; the tag is written to `buf[plain_len..plain_len + 16]`.
    /// `buf` must be at least `plain_len + TAG_LEN` long.
    pub fn seal_in_place(&self, segment: u32, last: bool, buf: &mut [u8], plain_len: usize) {
        let mut out = SliceBuffer {
            buf,
            len: plain_len,
        };
        self.stream
            .encrypt_in_place(segment, last, &[], &mut out)
            .expect("the slice has room for the tag and STREAM never refuses to encrypt");
    }

    /// Opens a sealed segment in place and returns the plaintext length.
    pub fn open_in_place(
        &self,
        segment: u32,
        last: bool,
        buf: &mut [u8],
    ) -> Result<usize, SegmentAuthError> {
        let len = buf.len();
        let mut inout = SliceBuffer { buf, len };
        self.stream
            .decrypt_in_place(segment, last, &[], &mut inout)
            .map_err(|_| SegmentAuthError {
                segment: segment.into(),
            })?;
        Ok(inout.len)
    }
}

/// An `aead::Buffer` over a borrowed slice, so segments are sealed where they lie in a stripe
/// buffer instead of in a separate allocation.
struct SliceBuffer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl AsRef<[u8]> for SliceBuffer<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl AsMut<[u8]> for SliceBuffer<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl aead_stream::aead::Buffer for SliceBuffer<'_> {
    fn extend_from_slice(&mut self, other: &[u8]) -> aead_stream::aead::Result<()> {
        let end = self.len + other.len();
        let dst = self
            .buf
            .get_mut(self.len..end)
            .ok_or(aead_stream::aead::Error)?;
        dst.copy_from_slice(other);
        self.len = end;
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// Context of the key that seals a document's small metadata from its data key (an S3
/// object's, a typed record's). The label names S3, where it was first used: kept, so what
/// was sealed stays readable.
const META_CONTEXT: &str = "dangan 2026 s3 object metadata v1";

/// The key [`seal_meta`] seals with: derived from the document's data key, never the key itself.
fn meta_key(key: &DataKey) -> DataKey {
    DataKey::from_bytes(blake3::derive_key(META_CONTEXT, key.as_bytes()))
}

/// A document's small metadata sealed with a key derived from its data key: a random STREAM
/// nonce prefix, then the plaintext as one sealed (last) segment. Whoever can read the
/// document (its data key) can open it; nobody else learns more than its length.
pub fn seal_meta(key: &DataKey, plain: &[u8]) -> Vec<u8> {
    let prefix: [u8; NONCE_PREFIX_LEN] = rand::random();
    let cipher = SegmentCipher::new(&meta_key(key), &prefix);
    let mut out = prefix.to_vec();
    let at = out.len();
    out.extend_from_slice(plain);
    out.resize(at + plain.len() + TAG_LEN, 0);
    cipher.seal_in_place(0, true, &mut out[at..], plain.len());
    out
}

/// Opens what [`seal_meta`] sealed with `key`; `None` if it does not open (another key,
/// altered or cut bytes).
pub fn open_meta(key: &DataKey, sealed: &[u8]) -> Option<Vec<u8>> {
    let prefix: [u8; NONCE_PREFIX_LEN] = sealed.get(..NONCE_PREFIX_LEN)?.try_into().ok()?;
    let mut buf = sealed[NONCE_PREFIX_LEN..].to_vec();
    let cipher = SegmentCipher::new(&meta_key(key), &prefix);
    let len = cipher.open_in_place(0, true, &mut buf).ok()?;
    buf.truncate(len);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(c: &SegmentCipher, seg: u32, last: bool, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + TAG_LEN, 0);
        c.seal_in_place(seg, last, &mut buf, plain.len());
        buf
    }

    #[test]
    fn seal_open_round_trip() {
        let key = DataKey::generate();
        let c = SegmentCipher::new(&key, &[1; 7]);
        let mut sealed = seal(&c, 3, true, b"certificate");
        let n = c.open_in_place(3, true, &mut sealed).unwrap();
        assert_eq!(&sealed[..n], b"certificate");
    }

    #[test]
    fn wrong_position_flag_or_key_fails() {
        let key = DataKey::generate();
        let c = SegmentCipher::new(&key, &[0; 7]);
        let sealed = seal(&c, 5, false, b"abc");
        assert!(c.open_in_place(6, false, &mut sealed.clone()).is_err());
        assert!(c.open_in_place(5, true, &mut sealed.clone()).is_err());
        let other = SegmentCipher::new(&DataKey::generate(), &[0; 7]);
        assert!(other.open_in_place(5, false, &mut sealed.clone()).is_err());
        let mut flipped = sealed.clone();
        flipped[1] ^= 0x40;
        assert!(c.open_in_place(5, false, &mut flipped).is_err());
    }

    #[test]
    fn matches_the_stateful_stream_encryptor() {
        // Our position-based sealing must be exactly aead-stream's EncryptorBE32.
        let key = DataKey::from_bytes([9; 32]);
        let prefix = [4u8; 7];
        let aead = ChaCha20Poly1305::new(&chacha20poly1305::Key::from([9; 32]));
        let mut enc = aead_stream::EncryptorBE32::from_aead(aead, &prefix.into());
        let a = enc.encrypt_next(&b"first"[..]).unwrap();
        let b = enc.encrypt_last(&b"second"[..]).unwrap();
        let c = SegmentCipher::new(&key, &prefix);
        assert_eq!(seal(&c, 0, false, b"first"), a);
        assert_eq!(seal(&c, 1, true, b"second"), b);
    }

    #[test]
    fn sealed_metadata_opens_only_with_its_key_and_unaltered() {
        let key = DataKey::generate();
        let sealed = seal_meta(&key, b"{\"child\":\"Li Wei\"}");
        assert_eq!(open_meta(&key, &sealed).unwrap(), b"{\"child\":\"Li Wei\"}");
        assert!(open_meta(&DataKey::generate(), &sealed).is_none());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open_meta(&key, &bad).is_none(), "byte {i}");
        }
        assert!(open_meta(&key, &sealed[..sealed.len() - 1]).is_none());
        assert!(open_meta(&key, &[]).is_none());
    }
}
