//! The manifest decoder (`Manifest::decode`), as a client runs it on a manifest any peer
//! served, then the geometry the client derives from it.
//!
//! Properties: decoding never panics; what decodes re-encodes to the identical bytes (the
//! encoding is canonical: one document, one id); every stripe's geometry adds up to the
//! document size and fits the recorded shard length; each piece's stripes follow each other,
//! its last one flagged last.
#![no_main]

use dangan::id::DocumentId;
use dangan::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::decode(data) else {
        return;
    };
    assert_eq!(
        m.encode(),
        data,
        "a decoded manifest re-encodes to its bytes"
    );
    assert_eq!(m.id(), DocumentId::of(data));
    m.validate().expect("a decoded manifest is valid");

    let n = m.stripe_count();
    let mut plain = 0u64;
    for i in 0..n {
        let g = m.stripe(i);
        assert_eq!(g.index, i);
        assert_eq!(g.plain_offset, plain);
        assert!(g.segments >= 1);
        assert!(
            g.shard_len <= u64::from(m.shard_len),
            "stripe {i} over the shard length"
        );
        assert!(g.shard_len * u64::from(m.params.k) >= g.cipher_len);
        let next_piece = i + 1 == n || m.stripe(i + 1).piece != g.piece;
        assert_eq!(g.last, next_piece, "stripe {i}: last of its piece");
        assert!(g.piece < m.pieces.len());
        plain += g.plain_len;
    }
    assert_eq!(plain, m.size, "stripes cover the document exactly");
    let _ = m.stored_bytes();
});
