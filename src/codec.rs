//! The document codec: plaintext stream → sealed segments → stripes of k data + m parity
//! shards with BLAKE3 ids, and back.
//!
//! Encoding reads any `Read` (or `AsyncRead`, through [`encode_async`]) one stripe at a time,
//! never holding more than a few stripes, and hands each [`EncodedStripe`] to a sink as soon
//! as it is ready. A stripe holds whole segments, so every stripe is sealed, coded and hashed
//! independently: stripes of one batch run on all rayon threads while the next batch is read.
//!
//! Decoding takes, per stripe, whatever shards could be fetched. A shard that does not hash
//! to its id counts as missing (and is reported); data shards are rebuilt only when one is
//! missing; fewer than k intact shards is an error naming the stripe, never wrong bytes.
//!
//! ```
//! use dangan::codec::{self, DocumentInfo};
//! use dangan::manifest::CodingParams;
//!
//! let plain = b"Certificate of birth".repeat(1000);
//! let mut stripes = Vec::new();
//! let (manifest, key) = codec::encode(&plain[..], CodingParams::default(), DocumentInfo::default(), |s| {
//!     stripes.push(s);
//!     Ok(())
//! })?;
//! let mut out = Vec::new();
//! let fetch = |i: u64| stripes[i as usize].shards.iter().cloned().map(Some).collect();
//! codec::decode(&manifest, &key, fetch, &mut out)?;
//! assert_eq!(out, plain);
//! # Ok::<(), dangan::codec::CodecError>(())
//! ```
//!
//! Architecture invariant: the codec never does network or disk I/O of its own and never
//! panics on untrusted input (manifests and shards); it only reads the plaintext it is given.

use std::io::{self, Read, Write};

use bytes::Bytes;
use rayon::prelude::*;

use crate::crypto::{
    CipherSuite, DataKey, NONCE_PREFIX_LEN, SegmentAuthError, SegmentCipher, TAG_LEN,
};
use crate::erasure::{Erasure, ErasureError};
use crate::id::ShardId;
use crate::manifest::{
    CodingParams, MANIFEST_VERSION, MANIFEST_VERSION_PIECES, Manifest, ManifestError, Piece,
    StripeGeometry,
};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("invalid coding parameters or manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Erasure(#[from] ErasureError),
    #[error("reading the document failed: {0}")]
    Read(#[source] io::Error),
    #[error("writing the document failed: {0}")]
    Write(#[source] io::Error),
    #[error(
        "stripe {stripe} cannot be rebuilt: only {intact} intact shards, {k} needed \
         ({missing} missing, {corrupt} corrupt)"
    )]
    StripeUnrecoverable {
        stripe: u64,
        intact: usize,
        k: usize,
        missing: usize,
        corrupt: usize,
    },
    #[error("stripe {stripe}: {source}")]
    Auth {
        stripe: u64,
        #[source]
        source: SegmentAuthError,
    },
    #[error("stripe {stripe}: got {got} shard slots, expected k + m = {expected}")]
    ShardSlots {
        stripe: u64,
        expected: usize,
        got: usize,
    },
    #[error("stripe {stripe} does not exist (the document has {count})")]
    NoSuchStripe { stripe: u64, count: u64 },
    #[error("the document is too large: {0} segments exceed the STREAM counter")]
    TooLarge(u64),
    #[error("the receiver of encoded stripes went away")]
    Cancelled,
    #[error("encoding task failed: {0}")]
    Task(String),
}

/// Labels recorded in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentInfo {
    pub department: String,
    pub document_type: String,
    /// Milliseconds since the Unix epoch; `None` means now.
    pub created_at_ms: Option<u64>,
}

/// One coded stripe: k data shards then m parity shards, with their ids.
#[derive(Debug, Clone)]
pub struct EncodedStripe {
    pub index: u64,
    /// Plaintext bytes this stripe carries.
    pub plain_len: u64,
    /// Whether this is the document's last stripe.
    pub last: bool,
    pub shards: Vec<Bytes>,
    pub ids: Vec<ShardId>,
}

/// What decoding one stripe found.
#[derive(Debug, Clone)]
pub struct OpenedStripe {
    pub index: u64,
    pub plaintext: Vec<u8>,
    /// Slots whose shard was offered but did not match its id (to be reported for repair).
    pub corrupt: Vec<usize>,
    /// Whether data shards had to be rebuilt from parity.
    pub rebuilt: bool,
}

/// Seals, codes and opens the stripes of one document. Shared by all threads working on it.
pub struct StripeCodec {
    params: CodingParams,
    /// One STREAM per piece of the document (one for a codec that seals).
    ciphers: Vec<SegmentCipher>,
    erasure: Erasure,
}

impl StripeCodec {
    pub fn new(
        params: CodingParams,
        key: &DataKey,
        nonce_prefix: &[u8; NONCE_PREFIX_LEN],
    ) -> Result<Self, CodecError> {
        params.validate()?;
        Ok(Self {
            params,
            ciphers: vec![SegmentCipher::new(key, nonce_prefix)],
            erasure: Erasure::new(params.k.into(), params.m.into())?,
        })
    }

    /// The codec that opens `manifest`'s stripes: one STREAM per piece, all under `key`.
    pub fn for_manifest(manifest: &Manifest, key: &DataKey) -> Result<Self, CodecError> {
        manifest.validate()?;
        let params = manifest.params;
        Ok(Self {
            params,
            ciphers: manifest
                .pieces
                .iter()
                .map(|p| SegmentCipher::new(key, &p.nonce_prefix))
                .collect(),
            erasure: Erasure::new(params.k.into(), params.m.into())?,
        })
    }

    fn cipher(&self, g: &StripeGeometry) -> Result<&SegmentCipher, CodecError> {
        self.ciphers.get(g.piece).ok_or(CodecError::NoSuchStripe {
            stripe: g.index,
            count: 0,
        })
    }

    pub fn params(&self) -> &CodingParams {
        &self.params
    }

    /// Seals and codes one stripe read by [`StripeReader`].
    pub fn seal(&self, chunk: PlainStripe) -> Result<EncodedStripe, CodecError> {
        let g = chunk.geometry;
        let sealed_len = self.params.sealed_segment_len() as usize;
        let seg_len = self.params.segment_size as usize;
        let k = usize::from(self.params.k);
        let shard_len = g.shard_len as usize;
        if g.first_segment + g.segments > u64::from(u32::MAX) + 1 {
            return Err(CodecError::TooLarge(g.first_segment + g.segments));
        }
        let mut buf = chunk.buf;
        // Room for the tags and zero padding up to k whole shards.
        buf.resize(k * shard_len, 0);
        let plain_len = g.plain_len as usize;
        let last_segment = g.segments as usize - 1;
        let cipher = self.cipher(&g)?;
        let seal_segment = |(j, seg): (usize, &mut [u8])| {
            let len = if j == last_segment {
                plain_len - j * seg_len
            } else {
                seg_len
            };
            let position = (g.first_segment + j as u64) as u32;
            cipher.seal_in_place(position, g.last && j == last_segment, seg, len);
        };
        let cipher = &mut buf[..g.cipher_len as usize];
        if cipher.len() < PARALLEL_MIN {
            cipher
                .chunks_mut(sealed_len)
                .enumerate()
                .for_each(seal_segment);
        } else {
            cipher
                .par_chunks_mut(sealed_len)
                .enumerate()
                .for_each(seal_segment);
        }
        let data: Vec<&[u8]> = buf.chunks(shard_len).collect();
        let parity = self.erasure.encode(&data)?;
        let data = Bytes::from(buf);
        let mut shards: Vec<Bytes> = (0..k)
            .map(|i| data.slice(i * shard_len..(i + 1) * shard_len))
            .collect();
        shards.extend(parity.into_iter().map(Bytes::from));
        let ids = if g.cipher_len < PARALLEL_MIN as u64 {
            shards.iter().map(|s| ShardId::of(s)).collect()
        } else {
            shards.par_iter().map(|s| ShardId::of(s)).collect()
        };
        Ok(EncodedStripe {
            index: g.index,
            plain_len: g.plain_len,
            last: g.last,
            shards,
            ids,
        })
    }

    /// Verifies, rebuilds if needed, and opens stripe `index` of `manifest` from the shards
    /// that could be fetched (`None` for a missing one), one slot per shard id.
    pub fn open(
        &self,
        manifest: &Manifest,
        index: u64,
        shards: Vec<Option<Bytes>>,
    ) -> Result<OpenedStripe, CodecError> {
        let SealedStripe {
            sealed: mut buf,
            corrupt,
            rebuilt,
            ..
        } = rebuild_sealed(manifest, &self.erasure, index, shards)?;
        let g = manifest.stripe(index);
        let small = (g.cipher_len as usize) < PARALLEL_MIN;
        let sealed_len = self.params.sealed_segment_len() as usize;
        let seg_len = self.params.segment_size as usize;
        let last_segment = g.segments as usize - 1;
        let cipher = self.cipher(&g)?;
        let open_segment = |(j, seg): (usize, &mut [u8])| {
            let position = (g.first_segment + j as u64) as u32;
            cipher
                .open_in_place(position, g.last && j == last_segment, seg)
                .map_err(|source| CodecError::Auth {
                    stripe: index,
                    source,
                })
        };
        let opened: Vec<usize> = if small {
            buf.chunks_mut(sealed_len)
                .enumerate()
                .map(open_segment)
                .collect::<Result<_, _>>()?
        } else {
            buf.par_chunks_mut(sealed_len)
                .enumerate()
                .map(open_segment)
                .collect::<Result<_, _>>()?
        };
        // Segments lie at the sealed stride; close the gaps the tags leave.
        let mut plain_len = 0;
        for (j, len) in opened.into_iter().enumerate() {
            buf.copy_within(j * sealed_len..j * sealed_len + len, plain_len);
            plain_len += len;
        }
        debug_assert!(seg_len > 0);
        buf.truncate(plain_len);
        Ok(OpenedStripe {
            index,
            plaintext: buf,
            corrupt,
            rebuilt,
        })
    }
}

/// One stripe's sealed segments, rebuilt from its shards without the data key.
#[derive(Debug, Clone)]
pub struct SealedStripe {
    pub index: u64,
    /// The stripe's STREAM segments in order, each sealed (ciphertext then its 16-byte
    /// tag), exactly as `StripeCodec::seal` sealed them: the stripe's `cipher_len` bytes.
    pub sealed: Vec<u8>,
    /// Slots whose shard was offered but did not match its id (to be reported for repair).
    pub corrupt: Vec<usize>,
    /// Whether data shards had to be rebuilt from parity.
    pub rebuilt: bool,
}

/// Verifies the shards of stripe `index` of `manifest` (`None` for a missing one, one slot
/// per shard id), rebuilds missing data shards with `erasure` (the manifest's k + m) if
/// needed, and returns the stripe's sealed segments, not opened: what a relay that must not
/// hold the data key (a gateway serving a citizen's browser) forwards.
pub fn rebuild_sealed(
    manifest: &Manifest,
    erasure: &Erasure,
    index: u64,
    shards: Vec<Option<Bytes>>,
) -> Result<SealedStripe, CodecError> {
    let count = manifest.stripe_count();
    let ids = manifest
        .stripes
        .get(index as usize)
        .ok_or(CodecError::NoSuchStripe {
            stripe: index,
            count,
        })?;
    let k = usize::from(manifest.params.k);
    if shards.len() != ids.len() {
        return Err(CodecError::ShardSlots {
            stripe: index,
            expected: ids.len(),
            got: shards.len(),
        });
    }
    let g = manifest.stripe(index);
    let shard_len = g.shard_len as usize;
    let small = (g.cipher_len as usize) < PARALLEL_MIN;
    let verify = |(shard, id): (Option<Bytes>, &ShardId)| match shard {
        Some(s) if s.len() == shard_len && id.verifies(&s) => (Some(s), false),
        Some(_) => (None, true),
        None => (None, false),
    };
    let verified: Vec<(Option<Bytes>, bool)> = if small {
        shards.into_iter().zip(ids.iter()).map(verify).collect()
    } else {
        shards
            .into_par_iter()
            .zip(ids.par_iter())
            .map(verify)
            .collect()
    };
    let corrupt: Vec<usize> = verified
        .iter()
        .enumerate()
        .filter_map(|(i, (_, bad))| bad.then_some(i))
        .collect();
    let intact = verified.iter().filter(|(s, _)| s.is_some()).count();
    let rebuilt = verified[..k].iter().any(|(s, _)| s.is_none());
    let mut buf = Vec::with_capacity(k * shard_len);
    if !rebuilt {
        for (s, _) in &verified[..k] {
            buf.extend_from_slice(s.as_ref().expect("checked present"));
        }
    } else {
        let mut slots: Vec<Option<Vec<u8>>> = verified
            .into_iter()
            .map(|(s, _)| s.map(Vec::from))
            .collect();
        erasure.reconstruct_data(&mut slots).map_err(|e| match e {
            ErasureError::TooFewShards { .. } => CodecError::StripeUnrecoverable {
                stripe: index,
                intact,
                k,
                missing: ids.len() - intact - corrupt.len(),
                corrupt: corrupt.len(),
            },
            other => CodecError::Erasure(other),
        })?;
        for s in &slots[..k] {
            buf.extend_from_slice(s.as_ref().expect("reconstructed"));
        }
    }
    buf.truncate(g.cipher_len as usize);
    Ok(SealedStripe {
        index,
        sealed: buf,
        corrupt,
        rebuilt,
    })
}

/// Stripes with less ciphertext than this are sealed, hashed and opened on the calling
/// thread: for a certificate, handing microseconds of work to the rayon pool costs more in
/// thread wake-ups than it saves.
const PARALLEL_MIN: usize = 256 << 10;

/// One stripe's plaintext, laid out at the sealed-segment stride, ready for [`StripeCodec::seal`].
pub struct PlainStripe {
    pub geometry: StripeGeometry,
    buf: Vec<u8>,
}

/// Reads a plaintext stream one stripe at a time, looking one stripe ahead so it knows which
/// stripe holds the final segment.
pub struct StripeReader<R> {
    reader: R,
    params: CodingParams,
    next_index: u64,
    offset: u64,
    ahead: Option<(Vec<u8>, usize)>,
    done: bool,
}

impl<R: Read> StripeReader<R> {
    pub fn new(reader: R, params: CodingParams) -> Self {
        Self {
            reader,
            params,
            next_index: 0,
            offset: 0,
            ahead: None,
            done: false,
        }
    }

    /// Plaintext bytes read so far (of the stripes already returned).
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// Reads one stripe's worth of plaintext into a fresh buffer at the sealed stride. The
    /// buffer grows segment by segment, so a small document costs only its own size.
    fn fill(&mut self) -> Result<(Vec<u8>, usize), CodecError> {
        let k = usize::from(self.params.k);
        let full = k * self.params.full_shard_len() as usize;
        let seg = self.params.segment_size as usize;
        let sealed = self.params.sealed_segment_len() as usize;
        let mut buf = Vec::with_capacity(sealed);
        let mut total = 0;
        for j in 0..self.params.segments_per_stripe as usize {
            if j == 1 {
                // More than one segment: room for the whole stripe at once.
                buf.reserve_exact(full - buf.len());
            }
            buf.resize(j * sealed + seg, 0);
            let n = read_full(&mut self.reader, &mut buf[j * sealed..j * sealed + seg])
                .map_err(CodecError::Read)?;
            total += n;
            if n < seg {
                break;
            }
        }
        Ok((buf, total))
    }

    pub fn next_stripe(&mut self) -> Result<Option<PlainStripe>, CodecError> {
        if self.done {
            return Ok(None);
        }
        let full_plain =
            self.params.segments_per_stripe as usize * self.params.segment_size as usize;
        let (buf, len) = match self.ahead.take() {
            Some(a) => a,
            None => self.fill()?,
        };
        let last = if len < full_plain {
            true
        } else {
            let next = self.fill()?;
            let eof = next.1 == 0;
            if !eof {
                self.ahead = Some(next);
            }
            eof
        };
        self.done = last;
        let segments = if last {
            (len as u64)
                .div_ceil(self.params.segment_size.into())
                .max(1)
        } else {
            self.params.segments_per_stripe.into()
        };
        let index = self.next_index;
        let first_segment = index * u64::from(self.params.segments_per_stripe);
        let cipher_len = len as u64 + segments * TAG_LEN as u64;
        let geometry = StripeGeometry {
            index,
            piece: 0,
            first_segment,
            segments,
            plain_offset: self.offset,
            plain_len: len as u64,
            cipher_len,
            shard_len: cipher_len.div_ceil(self.params.k.into()),
            last,
        };
        self.next_index += 1;
        self.offset += len as u64;
        Ok(Some(PlainStripe { geometry, buf }))
    }
}

fn read_full(reader: &mut impl Read, mut buf: &mut [u8]) -> io::Result<usize> {
    let want = buf.len();
    while !buf.is_empty() {
        match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(want - buf.len())
}

/// Encodes a document under a fresh random data key. Each stripe goes to `sink` as soon as
/// it is coded, in order; the manifest and key come back at the end.
///
/// Runs on the current rayon pool: `pool.install(|| encode(..))` picks the thread count.
pub fn encode<R, F>(
    reader: R,
    params: CodingParams,
    info: DocumentInfo,
    sink: F,
) -> Result<(Manifest, DataKey), CodecError>
where
    R: Read + Send,
    F: FnMut(EncodedStripe) -> Result<(), CodecError>,
{
    let key = DataKey::generate();
    let manifest = encode_with_key(reader, params, info, &key, rand::random(), sink)?;
    Ok((manifest, key))
}

/// [`encode`] with a caller-chosen key and nonce prefix (for `rekey` and for pinned test
/// vectors). Never reuse a key for two documents.
pub fn encode_with_key<R, F>(
    reader: R,
    params: CodingParams,
    info: DocumentInfo,
    key: &DataKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    sink: F,
) -> Result<Manifest, CodecError>
where
    R: Read + Send,
    F: FnMut(EncodedStripe) -> Result<(), CodecError>,
{
    let (size, stripes) = seal_stream(reader, params, key, nonce_prefix, sink)?;
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        suite: CipherSuite::ChaCha20Poly1305StreamBe32Blake3,
        params,
        shard_len: params.full_shard_len() as u32,
        size,
        pieces: vec![Piece { nonce_prefix, size }],
        department: info.department,
        document_type: info.document_type,
        created_at_ms: info.created_at_ms.unwrap_or_else(crate::now_ms),
        stripes,
    };
    manifest.validate()?;
    Ok(manifest)
}

/// Seals, codes and hashes one STREAM read from `reader` (a whole version 1 document, or one
/// piece of a version 2 one), handing each stripe to `sink` in order; returns the plaintext
/// size and the stripes' shard ids. Stripe indices count from 0 within the stream.
fn seal_stream<R, F>(
    reader: R,
    params: CodingParams,
    key: &DataKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    mut sink: F,
) -> Result<(u64, Vec<Vec<ShardId>>), CodecError>
where
    R: Read + Send,
    F: FnMut(EncodedStripe) -> Result<(), CodecError>,
{
    let codec = StripeCodec::new(params, key, &nonce_prefix)?;
    let mut reader = StripeReader::new(reader, params);
    let batch = rayon::current_num_threads().max(1);
    let read_batch = |r: &mut StripeReader<R>| -> Result<Vec<PlainStripe>, CodecError> {
        let mut out = Vec::with_capacity(batch);
        while out.len() < batch {
            match r.next_stripe()? {
                Some(s) => out.push(s),
                None => break,
            }
        }
        Ok(out)
    };
    let mut stripes = Vec::new();
    let mut current = read_batch(&mut reader)?;
    // A one-stripe document (a certificate) is sealed on this thread: handing a few
    // microseconds of work to the rayon pool costs more in wake-ups than it saves.
    if let [only] = current.as_slice()
        && only.geometry.last
    {
        let stripe = codec.seal(current.pop().expect("one stripe"))?;
        stripes.push(stripe.ids.clone());
        sink(stripe)?;
        current.clear();
    }
    while !current.is_empty() {
        // Code this batch on every thread while the next one is read.
        let (coded, next) = rayon::join(
            || {
                current
                    .into_par_iter()
                    .map(|s| codec.seal(s))
                    .collect::<Result<Vec<_>, _>>()
            },
            || read_batch(&mut reader),
        );
        for stripe in coded? {
            stripes.push(stripe.ids.clone());
            sink(stripe)?;
        }
        current = next?;
    }
    Ok((reader.bytes_read(), stripes))
}

/// One piece of a version 2 document, sealed by [`encode_piece`]: its [`Piece`] and the
/// shard ids of its stripes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedPiece {
    pub piece: Piece,
    pub stripes: Vec<Vec<ShardId>>,
}

/// Seals one piece of a version 2 document under the document's `key` with a fresh nonce
/// prefix (its own STREAM, its last segment flagged), each stripe to `sink` in order.
/// Pieces of one document may be sealed in any order and in parallel; [`pieces_manifest`]
/// puts them together.
pub fn encode_piece<R, F>(
    reader: R,
    params: CodingParams,
    key: &DataKey,
    sink: F,
) -> Result<SealedPiece, CodecError>
where
    R: Read + Send,
    F: FnMut(EncodedStripe) -> Result<(), CodecError>,
{
    let nonce_prefix = rand::random();
    let (size, stripes) = seal_stream(reader, params, key, nonce_prefix, sink)?;
    Ok(SealedPiece {
        piece: Piece { nonce_prefix, size },
        stripes,
    })
}

/// The version 2 manifest of a document made of `pieces` (in document order).
pub fn pieces_manifest(
    params: CodingParams,
    info: DocumentInfo,
    pieces: Vec<SealedPiece>,
) -> Result<Manifest, CodecError> {
    let size = pieces
        .iter()
        .map(|p| p.piece.size)
        .fold(0u64, u64::saturating_add);
    let mut stripes = Vec::new();
    let mut list = Vec::with_capacity(pieces.len());
    for p in pieces {
        list.push(p.piece);
        stripes.extend(p.stripes);
    }
    let manifest = Manifest {
        version: MANIFEST_VERSION_PIECES,
        suite: CipherSuite::ChaCha20Poly1305StreamBe32Blake3,
        params,
        shard_len: params.full_shard_len() as u32,
        size,
        department: info.department,
        document_type: info.document_type,
        created_at_ms: info.created_at_ms.unwrap_or_else(crate::now_ms),
        pieces: list,
        stripes,
    };
    manifest.validate()?;
    Ok(manifest)
}

/// The blocking task behind [`encode_async`]; it yields the manifest and the data key.
pub type EncodeTask = tokio::task::JoinHandle<Result<(Manifest, DataKey), CodecError>>;

/// Encodes an async stream on the blocking pool. Stripes arrive on the returned channel,
/// which holds at most `in_flight` of them (backpressure keeps memory bounded); the task
/// yields the manifest and key once the last stripe has been sent.
pub fn encode_async<R>(
    reader: R,
    params: CodingParams,
    info: DocumentInfo,
    in_flight: usize,
) -> (tokio::sync::mpsc::Receiver<EncodedStripe>, EncodeTask)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(in_flight.max(1));
    let bridge = tokio_util::io::SyncIoBridge::new(reader);
    let task = tokio::task::spawn_blocking(move || {
        encode(bridge, params, info, |stripe| {
            tx.blocking_send(stripe).map_err(|_| CodecError::Cancelled)
        })
    });
    (rx, task)
}

/// [`encode_piece`] of an async stream on the blocking pool, as [`encode_async`] does for a
/// whole document: stripes on the returned channel (at most `in_flight` held), the sealed
/// piece from the task.
pub fn encode_piece_async<R>(
    reader: R,
    params: CodingParams,
    key: DataKey,
    in_flight: usize,
) -> (
    tokio::sync::mpsc::Receiver<EncodedStripe>,
    tokio::task::JoinHandle<Result<SealedPiece, CodecError>>,
)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(in_flight.max(1));
    let bridge = tokio_util::io::SyncIoBridge::new(reader);
    let task = tokio::task::spawn_blocking(move || {
        encode_piece(bridge, params, &key, |stripe| {
            tx.blocking_send(stripe).map_err(|_| CodecError::Cancelled)
        })
    });
    (rx, task)
}

/// Summary of a decode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeReport {
    pub bytes: u64,
    pub stripes_rebuilt: u64,
    /// (stripe, slot) of every shard that did not match its id.
    pub corrupt: Vec<(u64, usize)>,
}

/// Decodes a whole document, fetching each stripe's shards with `fetch` (one slot per shard
/// id, `None` where missing) and writing the plaintext in order. Stripes of a batch are
/// opened on all rayon threads while the previous batch is written.
pub fn decode<W, F>(
    manifest: &Manifest,
    key: &DataKey,
    fetch: F,
    mut writer: W,
) -> Result<DecodeReport, CodecError>
where
    W: Write + Send,
    F: Fn(u64) -> Vec<Option<Bytes>> + Sync,
{
    let codec = StripeCodec::for_manifest(manifest, key)?;
    let batch = rayon::current_num_threads().max(1) as u64;
    let count = manifest.stripe_count();
    let mut report = DecodeReport::default();
    let open_batch = |start: u64| -> Result<Vec<OpenedStripe>, CodecError> {
        // Collect every result first so that an error names the lowest failing stripe.
        let results: Vec<Result<OpenedStripe, CodecError>> = (start..(start + batch).min(count))
            .into_par_iter()
            .map(|i| codec.open(manifest, i, fetch(i)))
            .collect();
        results.into_iter().collect()
    };
    let write_batch = |w: &mut W, opened: &[OpenedStripe]| -> Result<(), CodecError> {
        for s in opened {
            w.write_all(&s.plaintext).map_err(CodecError::Write)?;
        }
        Ok(())
    };
    let mut pending: Vec<OpenedStripe> = Vec::new();
    let mut start = 0;
    while start < count {
        let (opened, written) =
            rayon::join(|| open_batch(start), || write_batch(&mut writer, &pending));
        written?;
        pending = opened?;
        for s in &pending {
            report.bytes += s.plaintext.len() as u64;
            report.stripes_rebuilt += u64::from(s.rebuilt);
            report
                .corrupt
                .extend(s.corrupt.iter().map(|&c| (s.index, c)));
        }
        start += batch;
    }
    write_batch(&mut writer, &pending)?;
    writer.flush().map_err(CodecError::Write)?;
    Ok(report)
}
