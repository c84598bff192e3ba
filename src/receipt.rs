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
//! Format 3 ([`MAGIC_WITH_CHECKPOINT`]): the same followed by the signed checkpoint that
//! covers the registration (`chain::checkpoint`), the headers from the registration's block
//! to the checkpoint's (each linking to the one before), and the checkpoint's RFC 3161
//! timestamp token if it has one. The validator set changes then run up to the checkpoint's
//! height. So the receipt shows, offline, that the registration is in the chain a majority
//! of validators signed at that height, which was anchored and timestamped outside the
//! cluster; formats 1 and 2 decode and verify as before.
//!
//! Not for: the document's bytes or key; a receipt proves what was registered, not who may
//! read it.

use crate::chain::block::{BlockError, BlockHeader, TxInclusion};
use crate::chain::checkpoint::{Checkpoint, CheckpointError, SignedCheckpoint};
use crate::chain::tx::ChainKey;
use crate::chain::validators::{HistoryError, ValidatorHistory};
use crate::id::DocumentId;
use crate::identity::PublicId;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError};

/// First bytes of a receipt file.
pub const MAGIC: &[u8; 8] = b"DGNRCPT1";
/// First bytes of a receipt file that carries validator set changes.
pub const MAGIC_WITH_CHANGES: &[u8; 8] = b"DGNRCPT2";
/// First bytes of a receipt file that carries the checkpoint covering its registration.
pub const MAGIC_WITH_CHECKPOINT: &[u8; 8] = b"DGNRCPT3";
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
    /// The checkpoint that covers the registration, if the receipt carries one (format 3).
    pub checkpoint: Option<ReceiptCheckpoint>,
}

/// A signed checkpoint at or above a registration's block, and what links the two.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReceiptCheckpoint {
    pub note: SignedCheckpoint,
    /// The headers after the registration's block up to the checkpoint's, in order.
    pub headers: Vec<BlockHeader>,
    /// The checkpoint's RFC 3161 timestamp token (DER), if it has one.
    pub token: Option<Vec<u8>>,
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
    #[error("the receipt's checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the receipt's headers do not link its block {from} to its checkpoint at {to}")]
    Unlinked { from: u64, to: u64 },
}

impl Receipt {
    pub fn encode(&self) -> Vec<u8> {
        let head = (&self.document, &self.manifest, &self.registration);
        let (mut out, body) = if let Some(checkpoint) = &self.checkpoint {
            (
                MAGIC_WITH_CHECKPOINT.to_vec(),
                postcard::to_allocvec(&(head, &self.validator_changes, checkpoint)),
            )
        } else if self.validator_changes.is_empty() {
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
        let ((document, manifest, registration), validator_changes, checkpoint) =
            if let Some(body) = bytes.strip_prefix(MAGIC) {
                (
                    postcard::from_bytes(body).map_err(malformed)?,
                    Vec::new(),
                    None,
                )
            } else if let Some(body) = bytes.strip_prefix(MAGIC_WITH_CHANGES) {
                let (head, changes) = postcard::from_bytes(body).map_err(malformed)?;
                (head, changes, None)
            } else if let Some(body) = bytes.strip_prefix(MAGIC_WITH_CHECKPOINT) {
                let (head, changes, checkpoint) = postcard::from_bytes(body).map_err(malformed)?;
                (head, changes, Some(checkpoint))
            } else {
                return Err(ReceiptError::BadMagic);
            };
        let receipt = Receipt {
            document,
            manifest,
            registration,
            validator_changes,
            checkpoint,
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
        if let Some(c) = &self.checkpoint {
            self.verify_checkpoint(c, &history)?;
        }
        Ok(manifest)
    }

    /// The checkpoint this receipt carries, verified offline from `validators` (with the
    /// receipt's set changes), and that it covers the registration.
    pub fn checkpoint(&self, validators: &[PublicId]) -> Result<Option<Checkpoint>, ReceiptError> {
        let Some(c) = &self.checkpoint else {
            return Ok(None);
        };
        let history = ValidatorHistory::prove(validators, &self.validator_changes)?;
        self.verify_checkpoint(c, &history).map(Some)
    }

    fn verify_checkpoint(
        &self,
        c: &ReceiptCheckpoint,
        history: &ValidatorHistory,
    ) -> Result<Checkpoint, ReceiptError> {
        let (checkpoint, _) = c.note.verify(&self.chain(), history)?;
        let from = self.registration.header.header.height;
        let unlinked = ReceiptError::Unlinked {
            from,
            to: checkpoint.height,
        };
        let mut hash = self.registration.header.header.hash();
        let mut at = from;
        for header in &c.headers {
            if header.prev != hash || header.height != at + 1 {
                return Err(unlinked);
            }
            hash = header.hash();
            at = header.height;
        }
        if at != checkpoint.height || hash != checkpoint.block_hash {
            return Err(unlinked);
        }
        Ok(checkpoint)
    }
}
