//! Signed transactions as tests build them: one signed by its sender for a chain, one
//! approved by validators (a governance change), and the registration of a document derived
//! from its department and nonce (so a test can name it again). Not for submitting them:
//! each test submits through the ledger or client it is about.

use dangan::chain::tx::{ChainKey, SignedTx, Tx, TxBody};
use dangan::id::DocumentId;
use dangan::identity::Identity;

/// `body` sent by `sender` with `nonce`, signed by it for `chain`.
pub fn tx(chain: &ChainKey, sender: &Identity, nonce: u64, body: TxBody) -> SignedTx {
    Tx {
        sender: sender.public(),
        nonce,
        body,
    }
    .sign(sender, chain)
}

/// `body` (a governance change) sent by `approvers[0]` with `nonce`, approved by each of
/// `approvers`, signed for `chain`.
pub fn approved(chain: &ChainKey, approvers: &[&Identity], nonce: u64, body: TxBody) -> SignedTx {
    let mut t = Tx {
        sender: approvers[0].public(),
        nonce,
        body,
    };
    let approvals = approvers.iter().map(|v| t.approve(v, chain)).collect();
    *t.body
        .approvals_mut()
        .expect("a transaction that carries approvals") = approvals;
    t.sign(approvers[0], chain)
}

/// `dept` registers, with `nonce`, a document whose id depends on both alone.
pub fn register(chain: &ChainKey, dept: &Identity, nonce: u64) -> SignedTx {
    let mut seed = dept.public().as_bytes().to_vec();
    seed.extend(nonce.to_le_bytes());
    tx(
        chain,
        dept,
        nonce,
        TxBody::RegisterDocument {
            document: DocumentId::of(&seed),
        },
    )
}

/// The document a [`register`] transaction registers.
pub fn registered_document(tx: &SignedTx) -> DocumentId {
    match &tx.tx.body {
        TxBody::RegisterDocument { document } => *document,
        other => panic!("not a registration: {other:?}"),
    }
}
