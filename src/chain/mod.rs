//! The consortium chain: transactions, ledger state and its proofs, blocks, consensus.
//!
//! `tx` (signed transactions), `state` (the state and the only code that changes it),
//! `names` (buckets and object names, part of the state), `workflow` (proposals between
//! departments that collect approvals, part of the state),
//! `rooted` and `merkle` (Merkle trees and range proofs), `proof` (chain answers that carry
//! their proof against a header a majority signed), `block` (headers, final signatures,
//! inclusion proofs), `validators` (the validator set at any height, proven), `store`
//! (blocks in redb), `raft` and `ledger` (a validator: consensus among the departments'
//! validators over QUIC), `client` (asking the chain from outside, every answer checked),
//! `checkpoint` and `anchor` (signed checkpoints for evidence outside the cluster, and
//! where they are anchored).
//! See ARCHITECTURE.md, room `chain`.

pub mod anchor;
pub mod block;
pub mod checkpoint;
pub mod client;
pub mod ledger;
pub mod merkle;
pub mod names;
pub mod proof;
pub mod raft;
pub mod records;
pub mod rooted;
pub mod state;
pub mod store;
pub mod tx;
pub mod validators;
pub mod workflow;
