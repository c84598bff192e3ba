//! Chain transactions (`dangan::chain::tx`) and `State::apply`, as a validator runs them on
//! a `SubmitTx` body.
//!
//! The first byte picks the mode:
//! - even: the rest is untrusted bytes for `SignedTx::decode`. Whatever decodes re-encodes
//!   to the identical bytes, its id is BLAKE3 of them, and applying it to the fuzz world's
//!   state (which checks its signature for the world's chain key) never panics; a refused
//!   transaction changes nothing.
//! - odd: the rest is a sequence of `(signer, Tx)` in postcard. Each is sent by one of the
//!   fuzz world's keys (the fuzzed sender is replaced, and unless the signer byte has its
//!   top bit set the nonce too, so bodies reach their checks), signed, and must round-trip
//!   through `SignedTx::decode`; then applied in order, with the same refusal property.
#![no_main]

use dangan::chain::tx::{MAX_TX_BYTES, SignedTx, Tx};
use dangan_fuzz::world;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        untrusted(rest);
    } else {
        signed_sequence(rest);
    }
});

fn untrusted(bytes: &[u8]) {
    let Ok(tx) = SignedTx::decode(bytes) else {
        return;
    };
    assert_eq!(
        tx.encode(),
        bytes,
        "a decoded transaction re-encodes to its bytes"
    );
    assert_eq!(tx.id(), *blake3::hash(bytes).as_bytes());
    let mut state = world().state.clone();
    if state.apply(&tx, 1, 0).is_err() {
        assert_eq!(
            state,
            world().state,
            "a refused transaction changed the state"
        );
    }
    let _ = state.root();
}

fn signed_sequence(mut rest: &[u8]) {
    let w = world();
    let mut state = w.state.clone();
    for height in 1..=16 {
        let Ok(((who, mut tx), tail)) = postcard::take_from_bytes::<(u8, Tx)>(rest) else {
            break;
        };
        rest = tail;
        let signer = w.signer(who);
        tx.sender = signer.public();
        if who & 0x80 == 0 {
            tx.nonce = state.account(&tx.sender).map_or(1, |a| a.nonce + 1);
        }
        let stx = tx.sign(signer, &state.chain_key());
        let bytes = stx.encode();
        if bytes.len() <= MAX_TX_BYTES {
            let back = SignedTx::decode(&bytes).expect("a transaction we signed decodes");
            assert_eq!(back, stx);
        }
        let before = state.clone();
        match state.apply(&stx, height, 0) {
            Err(_) => assert_eq!(state, before, "a refused transaction changed the state"),
            Ok(()) => {
                state
                    .layout()
                    .validate()
                    .expect("apply keeps the layout valid");
                assert!(
                    !state.validators().is_empty(),
                    "apply removed the last validator"
                );
            }
        }
    }
    let _ = state.root();
}
