//! Signed transactions as tests build them: one signed by its sender, and the registration
//! of a document derived from its department and nonce (so a test can name it again). Not
//! for submitting them: each test submits through the ledger or client it is about.

use dangan::chain::tx::{SignedTx, Tx, TxBody};
use dangan::id::DocumentId;
use dangan::identity::Identity;

/// `body` sent by `sender` with `nonce`, signed by it.
pub fn tx(sender: &Identity, nonce: u64, body: TxBody) -> SignedTx {
    Tx {
        sender: sender.public(),
        nonce,
        body,
    }
    .sign(sender)
}

/// `dept` registers, with `nonce`, a document whose id depends on both alone.
pub fn register(dept: &Identity, nonce: u64) -> SignedTx {
    let mut seed = dept.public().as_bytes().to_vec();
    seed.extend(nonce.to_le_bytes());
    tx(
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
