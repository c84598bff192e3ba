//! Receipts: everything needed to show, with no network, that a document is the registered
//! one — its manifest (whose BLAKE3 hash is the document id) and the proof that the chain
//! registered that id (transaction, Merkle path, header signed by a majority of validators).
//!
//! File format: the 8 bytes [`MAGIC`], then the postcard encoding of [`Receipt`], canonical
//! (decoding refuses any other encoding of the same receipt), at most [`MAX_RECEIPT_BYTES`].
//! A verifier needs only the validator set it trusts (from its cluster file).
//!
//! Not for: the document's bytes or key; a receipt proves what was registered, not who may
//! read it.

use serde::{Deserialize, Serialize};

use crate::chain::block::{BlockError, TxInclusion};
use crate::id::DocumentId;
use crate::identity::PublicId;
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest, ManifestError};

/// First bytes of a receipt file.
pub const MAGIC: &[u8; 8] = b"DGNRCPT1";
/// Largest receipt accepted: a manifest at its limit plus a generous proof.
pub const MAX_RECEIPT_BYTES: usize = MAX_MANIFEST_BYTES + (1 << 20);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub document: DocumentId,
    /// The manifest's canonical bytes.
    pub manifest: Vec<u8>,
    /// The transaction that registered the document, with its proof.
    pub registration: TxInclusion,
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
}

impl Receipt {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend(postcard::to_allocvec(self).expect("encoding into memory cannot fail"));
        out
    }

    /// Decodes untrusted bytes (size, magic and canonical form checked; nothing verified).
    pub fn decode(bytes: &[u8]) -> Result<Self, ReceiptError> {
        if bytes.len() > MAX_RECEIPT_BYTES {
            return Err(ReceiptError::TooLarge(bytes.len()));
        }
        let body = bytes.strip_prefix(MAGIC).ok_or(ReceiptError::BadMagic)?;
        let receipt: Receipt =
            postcard::from_bytes(body).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        if receipt.encode() != bytes {
            return Err(ReceiptError::NotCanonical);
        }
        Ok(receipt)
    }

    /// Checks, with no network, that the manifest hashes to the document id and that a
    /// majority of `validators` signed the block that registered it. Returns the manifest.
    pub fn verify(&self, validators: &[PublicId]) -> Result<Manifest, ReceiptError> {
        if !self.document.verifies(&self.manifest) {
            return Err(ReceiptError::ManifestMismatch(self.document));
        }
        let manifest = Manifest::decode(&self.manifest)?;
        self.registration
            .verify_registration(&self.document, validators)?;
        Ok(manifest)
    }
}
