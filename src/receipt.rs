//! Receipts: everything needed to show, with no network, that a document is the registered
//! one — its manifest (whose BLAKE3 hash is the document id) and the proof that the chain
//! registered that id (transaction, Merkle path, header signed by a majority of validators).
//!
//! File format: the 8 bytes [`MAGIC`], then the postcard encoding of (document, manifest,
//! registration); or, for a document registered after the validator set changed, the 8
//! bytes [`MAGIC_WITH_CHANGES`] and the same followed by the set changes before its block.
//! Canonical (decoding refuses any other encoding of the same receipt), at most
//! [`MAX_RECEIPT_BYTES`]. A verifier needs only the validator set it trusts (the genesis
//! validators of its cluster file): the changes carry their own proofs
//! (`chain::validators`). Every header in a receipt carries the chain key (BLAKE3 of the
//! chain's genesis) and every transaction's signature is checked against it, so a receipt
//! names its chain ([`Receipt::chain`]) and [`Receipt::verify_on`] refuses one of another
//! chain whose validators the verifier also trusts.
//!
//! Not for: the document's bytes or key; a receipt proves what was registered, not who may
//! read it.

use crate::chain::block::{BlockError, TxInclusion};
use crate::chain::tx::ChainKey;
use crate::chain::validators::{HistoryError, ValidatorHistory};
use crate::id::DocumentId;
use crate::identity::PublicId;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError};

/// First bytes of a receipt file.
pub const MAGIC: &[u8; 8] = b"DGNRCPT1";
/// First bytes of a receipt file that carries validator set changes.
pub const MAGIC_WITH_CHANGES: &[u8; 8] = b"DGNRCPT2";
/// Largest receipt accepted: a manifest at its limit plus a generous proof.
pub const MAX_RECEIPT_BYTES: usize = MAX_MANIFEST_BYTES + (1 << 20);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub document: DocumentId,
    /// The manifest's canonical bytes.
    pub manifest: Vec<u8>,
    /// The transaction that registered the document, with its proof.
    pub registration: TxInclusion,
    /// The validator set changes before the registration's block, in chain order, each
    /// with its proof; empty while the set is the genesis one.
    pub validator_changes: Vec<TxInclusion>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptError {
    #[error("receipt is {0} bytes, over the limit of {MAX_RECEIPT_BYTES}")]
    TooLarge(usize),
    #[error("not a Dangan receipt (bad magic)")]
    BadMagic,
    #[error("receipt does not decode: {0}")]
    Malformed(String),
    #[error("receipt bytes are not in canonical form")]
    NotCanonical,
    #[error("the manifest's hash is not the document id {0}")]
    ManifestMismatch(DocumentId),
    #[error("the manifest is invalid: {0}")]
    Manifest(#[from] ManifestError),
    #[error("the registration proof does not hold: {0}")]
    Registration(#[from] BlockError),
    #[error("the validator set changes do not hold: {0}")]
    Validators(#[from] HistoryError),
    #[error("the receipt is of chain {found}, not of chain {expected}")]
    OtherChain { found: ChainKey, expected: ChainKey },
}

impl Receipt {
    pub fn encode(&self) -> Vec<u8> {
        let head = (&self.document, &self.manifest, &self.registration);
        let (mut out, body) = if self.validator_changes.is_empty() {
            (MAGIC.to_vec(), postcard::to_allocvec(&head))
        } else {
            (
                MAGIC_WITH_CHANGES.to_vec(),
                postcard::to_allocvec(&(head, &self.validator_changes)),
            )
        };
        out.extend(body.expect("encoding into memory cannot fail"));
        out
    }

    /// Decodes untrusted bytes (size, magic and canonical form checked; nothing verified).
    pub fn decode(bytes: &[u8]) -> Result<Self, ReceiptError> {
        if bytes.len() > MAX_RECEIPT_BYTES {
            return Err(ReceiptError::TooLarge(bytes.len()));
        }
        let malformed = |e: postcard::Error| ReceiptError::Malformed(e.to_string());
        let ((document, manifest, registration), validator_changes) =
            if let Some(body) = bytes.strip_prefix(MAGIC) {
                (postcard::from_bytes(body).map_err(malformed)?, Vec::new())
            } else if let Some(body) = bytes.strip_prefix(MAGIC_WITH_CHANGES) {
                postcard::from_bytes(body).map_err(malformed)?
            } else {
                return Err(ReceiptError::BadMagic);
            };
        let receipt = Receipt {
            document,
            manifest,
            registration,
            validator_changes,
        };
        if receipt.encode() != bytes {
            return Err(ReceiptError::NotCanonical);
        }
        Ok(receipt)
    }

    /// The chain the document was registered on (the key in its block's header).
    pub fn chain(&self) -> ChainKey {
        self.registration.header.header.chain
    }

    /// [`Self::verify`], and that the receipt is of chain `chain`.
    pub fn verify_on(
        &self,
        chain: &ChainKey,
        validators: &[PublicId],
    ) -> Result<Manifest, ReceiptError> {
        if self.chain() != *chain {
            return Err(ReceiptError::OtherChain {
                found: self.chain(),
                expected: *chain,
            });
        }
        self.verify(validators)
    }

    /// Checks, with no network, that the manifest hashes to the document id and that a
    /// majority of the validators of its block signed the block that registered it: those
    /// that `validator_changes` prove from `validators`. Returns the manifest.
    pub fn verify(&self, validators: &[PublicId]) -> Result<Manifest, ReceiptError> {
        if !self.document.verifies(&self.manifest) {
            return Err(ReceiptError::ManifestMismatch(self.document));
        }
        let manifest = Manifest::decode(&self.manifest)?;
        // The set changes and the registration all belong to one chain.
        if let Some(other) = self
            .validator_changes
            .iter()
            .map(|c| c.header.header.chain)
            .find(|c| *c != self.chain())
        {
            return Err(ReceiptError::OtherChain {
                found: other,
                expected: self.chain(),
            });
        }
        let history = ValidatorHistory::prove(validators, &self.validator_changes)?;
        let height = self.registration.header.header.height;
        self.registration
            .verify_registration(&self.document, history.at(height))?;
        Ok(manifest)
    }
}
