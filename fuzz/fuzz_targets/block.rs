//! Blocks and inclusion proofs (`dangan::chain::block`), decoded from postcard the way a
//! client decodes `GetBlock` / `GetTx` / `GetDocument` answers and the chain store decodes
//! the blocks it replays, then verified against the fuzz world's validators and applied to
//! its genesis state.
//!
//! The first byte picks what the rest is: a `Block`, a `TxInclusion`, a
//! `(DocumentRecord, TxInclusion)`, a raw Merkle `(Proof, leaf, root)`, or the other chain
//! records a client decodes (`Account`, `ChainStatus`).
//!
//! Properties: nothing panics; whatever decodes re-encodes to bytes that decode to the same
//! value; a block that does not apply leaves the state unchanged; a block that applies has
//! inclusion proofs that verify against its transaction root.
#![no_main]

use dangan::chain::block::{Block, TxInclusion};
use dangan::chain::ledger::ChainStatus;
use dangan::chain::merkle::{self, Hash, Proof};
use dangan::chain::state::{Account, DocumentRecord};
use dangan_fuzz::world;
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

fn decode<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    bytes: &[u8],
) -> Option<T> {
    let value: T = postcard::from_bytes(bytes).ok()?;
    let again = postcard::to_allocvec(&value).expect("encoding into memory cannot fail");
    assert_eq!(
        postcard::from_bytes::<T>(&again).ok().as_ref(),
        Some(&value)
    );
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let w = world();
    match mode % 6 {
        0 => {
            let Some(block) = decode::<Block>(rest) else {
                return;
            };
            let _ = block.header.verify_final(&w.validators);
            let mut state = w.state.clone();
            match block.apply(&mut state, &w.genesis) {
                Err(_) => assert_eq!(state, w.state, "a refused block changed the state"),
                Ok(()) => {
                    assert_eq!(state.root(), block.header.header.state_root);
                    for index in 0..block.txs.len().min(8) {
                        let inclusion = block.inclusion(index).expect("index in range");
                        inclusion
                            .proof
                            .verify(
                                &merkle::leaf_hash(&inclusion.tx.encode()),
                                &block.header.header.tx_root,
                            )
                            .expect("an applied block's inclusion proofs verify");
                    }
                }
            }
        }
        1 => {
            if let Some(inclusion) = decode::<TxInclusion>(rest) {
                let _ = inclusion.verify(&w.validators);
            }
        }
        2 => {
            if let Some((_record, inclusion)) = decode::<(DocumentRecord, TxInclusion)>(rest) {
                let _ = inclusion.verify(&w.validators);
            }
        }
        3 => {
            if let Some((proof, leaf, root)) = decode::<(Proof, Hash, Hash)>(rest) {
                let _ = proof.verify(&leaf, &root);
            }
        }
        4 => {
            let _ = decode::<Account>(rest);
        }
        _ => {
            let _ = decode::<ChainStatus>(rest);
        }
    }
});
