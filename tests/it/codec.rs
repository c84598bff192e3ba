//! Codec properties: round trips at every boundary, loss and corruption patterns, tampering.

use std::io::Cursor;

use bytes::Bytes;
use dangan::codec::{self, CodecError, DocumentInfo, EncodedStripe, StripeCodec};
use dangan::crypto::DataKey;
use dangan::erasure::Erasure;
use dangan::id::ShardId;
use dangan::manifest::{CodingParams, MANIFEST_VERSION_PIECES, Manifest};
use proptest::prelude::*;

/// Small geometry so that boundaries are cheap to hit: 1 KiB segments, 3 a stripe.
fn small(k: u16, m: u16) -> CodingParams {
    CodingParams {
        k,
        m,
        segment_size: 1024,
        segments_per_stripe: 3,
    }
}

fn info() -> DocumentInfo {
    DocumentInfo {
        department: "civil-registry".into(),
        document_type: "birth-certificate".into(),
        created_at_ms: Some(1_700_000_000_000),
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

fn encode(plain: &[u8], params: CodingParams) -> (Manifest, DataKey, Vec<EncodedStripe>) {
    let mut stripes = Vec::new();
    let (manifest, key) = codec::encode(Cursor::new(plain), params, info(), |s| {
        stripes.push(s);
        Ok(())
    })
    .unwrap();
    (manifest, key, stripes)
}

fn all_shards(stripes: &[EncodedStripe]) -> Vec<Vec<Option<Bytes>>> {
    stripes
        .iter()
        .map(|s| s.shards.iter().cloned().map(Some).collect())
        .collect()
}

fn decode(
    manifest: &Manifest,
    key: &DataKey,
    shards: &[Vec<Option<Bytes>>],
) -> Result<(Vec<u8>, codec::DecodeReport), CodecError> {
    let mut out = Vec::new();
    let report = codec::decode(manifest, key, |i| shards[i as usize].clone(), &mut out)?;
    Ok((out, report))
}

/// Sizes at and around segment and stripe boundaries of `small(..)`.
fn boundary_sizes(k: u16) -> Vec<usize> {
    let stripe = 3 * 1024;
    let mut sizes = vec![0, 1, 2];
    for edge in [1024, 2048, stripe, 2 * stripe, 3 * stripe + 1024] {
        sizes.extend([edge - 1, edge, edge + 1]);
    }
    // Ciphertext per stripe is 3 * 1040; shard boundaries of the last stripe move with k.
    let shard = (3 * 1040usize).div_ceil(k.into());
    sizes.extend([shard - 17, shard - 16, shard - 15]);
    sizes
}

#[test]
fn round_trips_at_every_boundary() {
    for (k, m) in [(1, 0), (1, 1), (2, 1), (3, 2), (4, 2)] {
        for size in boundary_sizes(k) {
            let plain = data(size, 3);
            let (manifest, key, stripes) = encode(&plain, small(k, m));
            assert_eq!(manifest.size, size as u64);
            assert_eq!(manifest.stripes.len(), stripes.len());
            let (out, report) = decode(&manifest, &key, &all_shards(&stripes)).unwrap();
            assert_eq!(out, plain, "k={k} m={m} size={size}");
            assert_eq!(report.stripes_rebuilt, 0);
            assert!(report.corrupt.is_empty());
        }
    }
}

#[test]
fn manifest_ids_match_shards_and_survive_decode() {
    let plain = data(10_000, 1);
    let (manifest, _key, stripes) = encode(&plain, small(4, 2));
    for (s, ids) in stripes.iter().zip(&manifest.stripes) {
        assert_eq!(&s.ids, ids);
        for (shard, id) in s.shards.iter().zip(ids) {
            assert_eq!(ShardId::of(shard), *id);
        }
    }
    let bytes = manifest.encode();
    assert_eq!(Manifest::decode(&bytes).unwrap(), manifest);
    // Trailing bytes make a different, non-canonical encoding: refused.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Manifest::decode(&longer).is_err());
}

#[test]
fn every_pattern_of_up_to_m_losses_is_survived() {
    let (k, m) = (3u16, 2u16);
    let width = usize::from(k + m);
    let plain = data(3 * 3 * 1024 + 700, 9);
    let (manifest, key, stripes) = encode(&plain, small(k, m));
    assert_eq!(stripes.len(), 4);
    for mask in 0u32..(1 << width) {
        let lost = mask.count_ones() as usize;
        let mut shards = all_shards(&stripes);
        for slots in &mut shards {
            for (i, slot) in slots.iter_mut().enumerate() {
                if mask & (1 << i) != 0 {
                    *slot = None;
                }
            }
        }
        let result = decode(&manifest, &key, &shards);
        if lost <= usize::from(m) {
            let (out, report) = result.unwrap();
            assert_eq!(out, plain, "mask {mask:b}");
            let data_lost = mask & ((1 << k) - 1) != 0;
            assert_eq!(report.stripes_rebuilt > 0, data_lost);
        } else {
            match result {
                Err(CodecError::StripeUnrecoverable { stripe, intact, .. }) => {
                    assert_eq!(stripe, 0);
                    assert_eq!(intact, width - lost);
                }
                other => panic!("mask {mask:b}: expected unrecoverable, got {other:?}"),
            }
        }
    }
}

#[test]
fn the_error_names_the_stripe_that_lost_too_much() {
    let plain = data(5 * 3 * 1024, 2);
    let (manifest, key, stripes) = encode(&plain, small(2, 1));
    let mut shards = all_shards(&stripes);
    shards[3][0] = None;
    shards[3][2] = None;
    let err = decode(&manifest, &key, &shards).unwrap_err();
    assert!(matches!(
        err,
        CodecError::StripeUnrecoverable { stripe: 3, .. }
    ));
    assert!(err.to_string().contains("stripe 3"), "{err}");
}

#[test]
fn a_flipped_bit_in_any_shard_is_detected_and_survived() {
    let plain = data(2 * 3 * 1024 + 5, 4);
    let (manifest, key, stripes) = encode(&plain, small(3, 2));
    for stripe in 0..stripes.len() {
        for slot in 0..5 {
            let len = stripes[stripe].shards[slot].len();
            for bit in [0, len * 8 / 2 + 3, len * 8 - 1] {
                let mut shards = all_shards(&stripes);
                let mut bad = shards[stripe][slot].as_ref().unwrap().to_vec();
                bad[bit / 8] ^= 1 << (bit % 8);
                shards[stripe][slot] = Some(Bytes::from(bad));
                let (out, report) = decode(&manifest, &key, &shards).unwrap();
                assert_eq!(out, plain);
                assert_eq!(report.corrupt, vec![(stripe as u64, slot)]);
            }
        }
    }
}

#[test]
fn a_short_shard_counts_as_corrupt() {
    let plain = data(4000, 4);
    let (manifest, key, stripes) = encode(&plain, small(3, 2));
    let mut shards = all_shards(&stripes);
    let s = shards[0][1].take().unwrap();
    shards[0][1] = Some(s.slice(..s.len() - 1));
    let (out, report) = decode(&manifest, &key, &shards).unwrap();
    assert_eq!(out, plain);
    assert_eq!(report.corrupt, vec![(0, 1)]);
}

#[test]
fn the_wrong_key_opens_nothing() {
    let plain = data(5000, 5);
    let (manifest, _key, stripes) = encode(&plain, small(3, 2));
    let err = decode(&manifest, &DataKey::generate(), &all_shards(&stripes)).unwrap_err();
    assert!(matches!(err, CodecError::Auth { stripe: 0, .. }), "{err}");
}

/// Rebuilds a stripe's shards and ids from forged ciphertext, as an attacker who can also
/// forge a manifest would; the STREAM construction must still refuse it.
fn forge_stripe(params: CodingParams, cipher: &[u8], index: u64) -> EncodedStripe {
    let k = usize::from(params.k);
    let shard_len = cipher.len().div_ceil(k);
    let mut buf = cipher.to_vec();
    buf.resize(shard_len * k, 0);
    let data: Vec<&[u8]> = buf.chunks(shard_len).collect();
    let parity = Erasure::new(k, params.m.into())
        .unwrap()
        .encode(&data)
        .unwrap();
    let shards: Vec<Bytes> = data
        .iter()
        .map(|d| Bytes::copy_from_slice(d))
        .chain(parity.into_iter().map(Bytes::from))
        .collect();
    let ids = shards.iter().map(|s| ShardId::of(s)).collect();
    EncodedStripe {
        index,
        plain_len: cipher.len() as u64,
        last: false,
        shards,
        ids,
    }
}

fn ciphertext(stripe: &EncodedStripe, k: usize, len: usize) -> Vec<u8> {
    let mut c: Vec<u8> = stripe.shards[..k].iter().flatten().copied().collect();
    c.truncate(len);
    c
}

#[test]
fn truncated_reordered_or_spliced_segments_are_refused() {
    let params = small(2, 1);
    let plain = data(3 * 3 * 1024 + 100, 6);
    let (manifest, key, stripes) = encode(&plain, params);
    let geometry = |m: &Manifest, i| m.stripe(i);

    // Truncation: a manifest that stops after stripe 1 (whose final segment was not sealed
    // as the last) must not decode into a shorter document.
    let mut cut = manifest.clone();
    cut.size = 2 * 3 * 1024;
    cut.pieces[0].size = cut.size;
    cut.stripes.truncate(2);
    let err = decode(&cut, &key, &all_shards(&stripes[..2])).unwrap_err();
    assert!(matches!(err, CodecError::Auth { stripe: 1, .. }), "{err}");

    // Reordering whole stripes.
    let mut swapped = manifest.clone();
    swapped.stripes.swap(0, 1);
    let mut shards = all_shards(&stripes);
    shards.swap(0, 1);
    let err = decode(&swapped, &key, &shards).unwrap_err();
    assert!(matches!(err, CodecError::Auth { stripe: 0, .. }), "{err}");

    // Reordering segments inside a stripe.
    let g = geometry(&manifest, 0);
    let mut c = ciphertext(&stripes[0], 2, g.cipher_len as usize);
    let (a, b) = c.split_at_mut(1040);
    a.swap_with_slice(&mut b[..1040]);
    let forged = forge_stripe(params, &c, 0);
    let mut reordered = manifest.clone();
    reordered.stripes[0] = forged.ids.clone();
    let mut shards = all_shards(&stripes);
    shards[0] = forged.shards.iter().cloned().map(Some).collect();
    let err = decode(&reordered, &key, &shards).unwrap_err();
    assert!(matches!(err, CodecError::Auth { stripe: 0, .. }), "{err}");

    // Splicing a segment from another document under the same geometry.
    let (other_manifest, _, other_stripes) = encode(&data(plain.len(), 7), params);
    let og = geometry(&other_manifest, 0);
    let other_c = ciphertext(&other_stripes[0], 2, og.cipher_len as usize);
    let mut c = ciphertext(&stripes[0], 2, g.cipher_len as usize);
    c[1040..2080].copy_from_slice(&other_c[1040..2080]);
    let forged = forge_stripe(params, &c, 0);
    let mut spliced = manifest.clone();
    spliced.stripes[0] = forged.ids.clone();
    let mut shards = all_shards(&stripes);
    shards[0] = forged.shards.iter().cloned().map(Some).collect();
    let err = decode(&spliced, &key, &shards).unwrap_err();
    assert!(matches!(err, CodecError::Auth { stripe: 0, .. }), "{err}");
}

#[test]
fn small_documents_cost_at_most_their_coding_overhead() {
    let plain = data(50 << 10, 8);
    let (manifest, _, _) = encode(&plain, CodingParams::default());
    let stored = manifest.stored_bytes();
    assert!(
        stored <= (50 << 10) * 6 / 4 + 300,
        "50 KiB certificate stored as {stored} bytes"
    );
}

#[test]
fn encoding_is_the_same_on_one_thread_and_many() {
    let plain = data(40_000, 10);
    let key = DataKey::from_bytes([3; 32]);
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            codec::encode_with_key(
                Cursor::new(&plain),
                small(3, 2),
                info(),
                &key,
                [1; 7],
                |_| Ok(()),
            )
            .unwrap()
        })
    };
    assert_eq!(run(1), run(4));
}

/// Pins the manifest bytes and document id of a fixed input: a format change must be a
/// deliberate, visible change to this test (and a new manifest version).
#[test]
fn golden_manifest_bytes_and_document_id() {
    let plain = b"Certificate of birth: example only.".repeat(100);
    let key = DataKey::from_bytes([0x42; 32]);
    let params = CodingParams {
        k: 2,
        m: 1,
        segment_size: 1024,
        segments_per_stripe: 2,
    };
    let manifest = codec::encode_with_key(
        Cursor::new(&plain),
        params,
        info(),
        &key,
        [7; 7],
        |_| Ok(()),
    )
    .unwrap();
    let bytes = manifest.encode();
    assert_eq!(hex::encode(&bytes), GOLDEN_MANIFEST_HEX);
    assert_eq!(manifest.id().to_string(), GOLDEN_DOCUMENT_ID);
}

const GOLDEN_MANIFEST_HEX: &str = "01000707070707070702018008029008ac1b0e636976696c2d72656769737472791162697274682d636572746966696361746580d095ffbc31020370c55e16e8cc04bcff4248745d7195f585e37ebad2de2c3bf5a30997749130de2603f61990862ed30e8069dfa25024048775a45394774bf89cf923a4a399af1616ef0a32339da8ee6fc61fdb73cf3880292ea9aee9b4f900629d8faf2d5070a603c0be03e77f33f60d1176eb5995c66b0d1385d38f65e35ca9a43b4f6a5b40908dad96175f5e9dbe945137bd454db2226b1d827fa9bf6b56d9fac1a0b0bbc8d4e313e52687dd27d962b1f642cab71d9a602e4ea61d9808b0928e6312e5471eea02";
const GOLDEN_DOCUMENT_ID: &str = "6cd747f00a1dc5efe868f8e14086ad1da368fa516494cb3edac9f5716600f761";

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_document_round_trips(
        size in prop_oneof![0usize..16, 1000usize..1100, 3000usize..3200, 0usize..40_000],
        seed in any::<u8>(),
        k in 1u16..6,
        m in 0u16..4,
    ) {
        let plain = data(size, seed);
        let (manifest, key, stripes) = encode(&plain, small(k, m));
        let (out, _) = decode(&manifest, &key, &all_shards(&stripes)).unwrap();
        prop_assert_eq!(out, plain);
    }

    #[test]
    fn any_m_losses_per_stripe_round_trip(
        size in 1usize..20_000,
        k in 1u16..5,
        m in 1u16..4,
        picks in proptest::collection::vec(any::<proptest::sample::Index>(), 8),
    ) {
        let plain = data(size, 1);
        let (manifest, key, stripes) = encode(&plain, small(k, m));
        let width = usize::from(k + m);
        let mut shards = all_shards(&stripes);
        for (n, slots) in shards.iter_mut().enumerate() {
            for p in picks.iter().skip(n % 2).take(usize::from(m)) {
                slots[p.index(width)] = None;
            }
        }
        let (out, _) = decode(&manifest, &key, &shards).unwrap();
        prop_assert_eq!(out, plain);
    }

    #[test]
    fn manifest_decoding_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Manifest::decode(&bytes);
    }

    /// A document of separately sealed pieces (manifest version 2, an S3 multipart
    /// upload) reads back whole and by any range, with m shards lost per stripe.
    #[test]
    fn any_pieces_round_trip(
        sizes in proptest::collection::vec(prop_oneof![0usize..16, 1000usize..1100, 0usize..12_000], 1..5),
        k in 1u16..5,
        m in 0u16..3,
        lose in any::<proptest::sample::Index>(),
        range in (any::<proptest::sample::Index>(), any::<proptest::sample::Index>()),
    ) {
        let params = small(k, m);
        let (manifest, key, plain, stripes) = encode_pieces(&sizes, params);
        prop_assert_eq!(manifest.version, MANIFEST_VERSION_PIECES);
        prop_assert_eq!(Manifest::decode(&manifest.encode()).unwrap(), manifest.clone());
        let mut shards = all_shards(&stripes);
        let width = usize::from(k + m);
        for slots in shards.iter_mut() {
            for j in 0..usize::from(m) {
                slots[(lose.index(width) + j) % width] = None;
            }
        }
        let (out, _) = decode(&manifest, &key, &shards).unwrap();
        prop_assert_eq!(&out, &plain);
        // A range: the stripes it touches, opened, cut at the range's ends.
        let (a, b) = (range.0.index(plain.len() + 1), range.1.index(plain.len() + 1));
        let (start, end) = (a.min(b) as u64, a.max(b) as u64);
        let codec = StripeCodec::for_manifest(&manifest, &key).unwrap();
        let mut got = Vec::new();
        for i in 0..manifest.stripe_count() {
            let g = manifest.stripe(i);
            if g.plain_offset + g.plain_len <= start || g.plain_offset >= end {
                continue;
            }
            let opened = codec.open(&manifest, i, shards[i as usize].clone()).unwrap();
            let from = start.saturating_sub(g.plain_offset) as usize;
            let to = ((end - g.plain_offset) as usize).min(opened.plaintext.len());
            got.extend_from_slice(&opened.plaintext[from..to]);
        }
        prop_assert_eq!(&got[..], &plain[start as usize..end as usize]);
    }
}

/// Seals each of `sizes` as a piece (in parallel threads, as S3 parts arrive) under one key,
/// and puts them together in order: (manifest, key, the whole plaintext, every stripe).
fn encode_pieces(
    sizes: &[usize],
    params: CodingParams,
) -> (Manifest, DataKey, Vec<u8>, Vec<EncodedStripe>) {
    let key = DataKey::generate();
    let parts: Vec<(codec::SealedPiece, Vec<EncodedStripe>)> = std::thread::scope(|s| {
        let handles: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(n, &size)| {
                let key = &key;
                s.spawn(move || {
                    let mut stripes = Vec::new();
                    let plain = data(size, n as u8);
                    let piece = codec::encode_piece(Cursor::new(plain), params, key, |st| {
                        stripes.push(st);
                        Ok(())
                    })
                    .unwrap();
                    (piece, stripes)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let plain: Vec<u8> = sizes
        .iter()
        .enumerate()
        .flat_map(|(n, &size)| data(size, n as u8))
        .collect();
    let mut stripes = Vec::new();
    let mut pieces = Vec::new();
    for (piece, s) in parts {
        pieces.push(piece);
        stripes.extend(s);
    }
    let manifest = codec::pieces_manifest(params, info(), pieces).unwrap();
    (manifest, key, plain, stripes)
}

/// Pieces are authenticated by the manifest: a piece's stripes moved, dropped or swapped
/// with another piece's, or a piece's nonce prefix or size changed, never reads as
/// plaintext: the manifest refuses it, or the AEAD does.
#[test]
fn pieces_cannot_be_reordered_truncated_or_spliced() {
    let params = small(2, 1);
    let (manifest, key, plain, stripes) = encode_pieces(&[5000, 3072, 3072], params);
    assert_eq!(manifest.pieces.len(), 3);
    let shards = all_shards(&stripes);
    assert_eq!(decode(&manifest, &key, &shards).unwrap().0, plain);
    // Stripe counts 2, 1, 1: piece 1's only stripe at piece 2's place and back (the same
    // length, so only the AEAD can tell).
    assert_eq!(manifest.stripes.len(), 4);
    let mut swapped = manifest.clone();
    swapped.stripes.swap(2, 3);
    let mut swapped_shards = shards.clone();
    swapped_shards.swap(2, 3);
    assert!(matches!(
        decode(&swapped, &key, &swapped_shards),
        Err(CodecError::Auth { .. })
    ));
    // The pieces listed in another order, the stripes left: nothing reads.
    let mut reordered = manifest.clone();
    reordered.pieces.swap(0, 2);
    assert!(decode(&reordered, &key, &shards).is_err());
    // A piece's prefix changed: its segments do not open.
    let mut prefix = manifest.clone();
    prefix.pieces[1].nonce_prefix[0] ^= 1;
    assert!(matches!(
        decode(&prefix, &key, &shards),
        Err(CodecError::Auth { stripe: 2, .. })
    ));
    // A piece cut short (its size and its last stripe): its last segment is no longer the
    // one sealed as last.
    let mut cut = manifest.clone();
    cut.pieces[0].size = 3 * 1024;
    cut.size -= 5000 - 3 * 1024;
    cut.stripes.remove(1);
    let mut cut_shards = shards.clone();
    cut_shards.remove(1);
    assert!(matches!(
        decode(&cut, &key, &cut_shards),
        Err(CodecError::Auth { stripe: 0, .. })
    ));
    // Every byte of the encoded manifest flipped, and every length cut: an error or a
    // different valid manifest, never a panic.
    let bytes = manifest.encode();
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x41;
        let _ = Manifest::decode(&b);
        let _ = Manifest::decode(&bytes[..i]);
    }
}

#[tokio::test]
async fn async_encoding_streams_stripes_with_backpressure() {
    let plain = data(7 * 3 * 1024 + 11, 12);
    let (mut rx, task) = codec::encode_async(Cursor::new(plain.clone()), small(3, 2), info(), 1);
    let mut stripes = Vec::new();
    while let Some(s) = rx.recv().await {
        assert_eq!(s.index, stripes.len() as u64);
        stripes.push(s);
    }
    let (manifest, key) = task.await.unwrap().unwrap();
    assert_eq!(stripes.len(), 8);
    let (out, _) = decode(&manifest, &key, &all_shards(&stripes)).unwrap();
    assert_eq!(out, plain);
}

#[tokio::test]
async fn dropping_the_receiver_cancels_encoding() {
    let plain = data(7 * 3 * 1024, 12);
    let (rx, task) = codec::encode_async(Cursor::new(plain), small(3, 2), info(), 1);
    drop(rx);
    assert!(matches!(task.await.unwrap(), Err(CodecError::Cancelled)));
}
