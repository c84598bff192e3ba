//! Receipts (`Receipt::decode`, then `Receipt::verify` against the fuzz world's validators),
//! as `dangan verify --receipt` runs them on a file anyone may hand over.
//!
//! Properties: neither ever panics; what decodes re-encodes to the identical bytes; a
//! receipt that verifies names the document its manifest hashes to, and its manifest is
//! valid.
#![no_main]

use dangan::id::DocumentId;
use dangan::receipt::Receipt;
use dangan_fuzz::world;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(receipt) = Receipt::decode(data) else {
        return;
    };
    assert_eq!(receipt.encode(), data, "a decoded receipt re-encodes to its bytes");
    if let Ok(manifest) = receipt.verify(&world().validators) {
        assert_eq!(DocumentId::of(&receipt.manifest), receipt.document);
        manifest.validate().expect("a verified receipt's manifest is valid");
    }
});
