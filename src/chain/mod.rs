//! The consortium chain: transactions, ledger state and Merkle proofs.
//!
//! Today: signed transactions (`tx`), the state they change and its root (`state`), and
//! BLAKE3 Merkle trees with inclusion proofs (`merkle`). Blocks, their store and consensus
//! among department validators come next (see ARCHITECTURE.md, "Not built yet").

pub mod block;
pub mod client;
pub mod ledger;
pub mod merkle;
pub mod proof;
pub mod raft;
pub mod rooted;
pub mod state;
pub mod store;
pub mod tx;
pub mod validators;
