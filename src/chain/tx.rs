//! Chain transactions: one serde enum of what can change the ledger, signed by its sender.
//!
//! A transaction names its sender (an Ed25519 public id), a per-account nonce (the sender's
//! previous nonce + 1, so a transaction applies at most once and in order) and its body. The
//! sender signs `TX_DOMAIN || postcard(Tx)`; the transaction id is BLAKE3 of the canonical
//! encoding of the signed transaction. Decoding untrusted bytes refuses oversized input,
//! non-canonical encodings and bad signatures before anything looks at the body.
//!
//! Not for: deciding whether a transaction is allowed (roles, nonces, current state): that is
//! `state::State::apply`, the only code that changes ledger state.

use serde::{Deserialize, Serialize};

use crate::id::DocumentId;
use crate::identity::{Identity, PublicId, SIGNATURE_LEN};

/// Domain separation for transaction signatures.
pub const TX_DOMAIN: &[u8] = b"dangan/tx/v1\0";
/// Largest encoded signed transaction accepted: the wire's limit on a transaction body.
pub const MAX_TX_BYTES: usize = crate::proto::MAX_TX_BODY as usize;
/// Longest zone or address label in a transaction.
pub const MAX_LABEL: usize = 256;

/// What a transaction does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxBody {
    /// A department registers a document it stored (shards durable, manifest written).
    RegisterDocument { document: DocumentId },
    /// A department replaces one of its documents with a new version: a reissue (new
    /// content) or a rekey (the same content under a new data key). The new version's
    /// grants come in the same transaction, each a data key sealed to the grantee for `new`,
    /// so the new version never exists on chain without its readers. A rekey carries only
    /// grants the old version holds, with their expiry unchanged.
    Supersede {
        old: DocumentId,
        new: DocumentId,
        kind: VersionKind,
        grants: Vec<CarriedGrant>,
    },
    /// An operator adds a storage peer (new layout epoch); the node's key becomes a member.
    AddNode {
        node: PublicId,
        addr: String,
        zone: String,
        weight: u32,
    },
    /// An operator drains a storage peer: weight 0 from the next epoch on.
    DrainNode { node: PublicId },
    /// An operator removes a drained storage peer.
    RemoveNode { node: PublicId },
    /// An operator sets capacity weights of existing peers (new layout epoch).
    SetLayout { weights: Vec<(PublicId, u32)> },
    /// A validator admits another validator.
    AddValidator { validator: PublicId },
    /// A validator removes a validator (never the last one).
    RemoveValidator { validator: PublicId },
    /// The owning department lets `grantee` read `document`: its data key sealed to the
    /// grantee (see `crate::grant`), until `expires_ms` (Unix milliseconds) if set. Granting
    /// again to the same grantee replaces the grant (e.g. after a rekey).
    Grant {
        document: DocumentId,
        grantee: PublicId,
        wrapped: crate::grant::WrappedKey,
        expires_ms: Option<u64>,
    },
    /// The owning department withdraws `grantee`'s grant.
    Revoke {
        document: DocumentId,
        grantee: PublicId,
    },
    /// A storage peer commits the Merkle root of its read records `first .. first + count`
    /// (see `crate::audit`). Sent by the peer itself; its ranges follow each other.
    AuditRoot {
        peer: PublicId,
        first: u64,
        count: u64,
        root: [u8; 32],
    },
    /// A validator says which storage peer hosts `validator` (its key `host`, reached at
    /// `addr`), so the other validators reach and trust it without a new cluster file.
    /// Sent before the `AddValidator` of a new validator, or to move one; dropped with
    /// `RemoveValidator`.
    SetValidatorHost {
        validator: PublicId,
        host: PublicId,
        addr: String,
    },
}

/// Why a document got a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionKind {
    /// New content (e.g. a reissued certificate).
    Reissue,
    /// The same content re-encrypted under a fresh data key (`dangan rekey`), so a reader
    /// revoked before it cannot decrypt what is stored from then on.
    Rekey,
}

impl std::fmt::Display for VersionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Reissue => "reissue",
            Self::Rekey => "rekey",
        })
    }
}

/// One grant of a new version, committed with its `Supersede`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedGrant {
    pub grantee: PublicId,
    /// The new version's data key sealed to the grantee for the new document id.
    pub wrapped: crate::grant::WrappedKey,
    /// Unix milliseconds after which the grant no longer counts.
    pub expires_ms: Option<u64>,
}

/// An unsigned transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tx {
    pub sender: PublicId,
    /// The sender's previous nonce + 1.
    pub nonce: u64,
    pub body: TxBody,
}

/// An Ed25519 signature, encoded as two 32-byte halves (serde has no 64-byte arrays).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature([u8; 32], [u8; 32]);

impl Signature {
    pub fn from_bytes(bytes: [u8; SIGNATURE_LEN]) -> Self {
        let mut r = [0u8; 32];
        let mut s = [0u8; 32];
        r.copy_from_slice(&bytes[..32]);
        s.copy_from_slice(&bytes[32..]);
        Self(r, s)
    }

    pub fn to_bytes(self) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out[..32].copy_from_slice(&self.0);
        out[32..].copy_from_slice(&self.1);
        out
    }
}

/// A transaction with its sender's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTx {
    pub tx: Tx,
    pub signature: Signature,
    /// What a successful verification of this value covered, so a node checks each
    /// transaction's signature once (on arrival, then not again when it proposes or applies
    /// it). Never encoded: a transaction that came over the wire or from disk is unchecked.
    #[serde(skip)]
    checked: Checked,
}

/// The digest of (sender, signature, signed bytes) a verification succeeded for. A copy of
/// the transaction keeps it; one whose sender, body or signature was changed afterwards no
/// longer matches it and is verified again.
#[derive(Debug, Clone, Default)]
struct Checked(std::sync::OnceLock<[u8; 32]>);

/// Whether a value was checked is not part of what it is.
impl PartialEq for Checked {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Checked {}

/// Why a transaction was refused. Every refusal leaves the ledger unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxError {
    #[error("transaction is {0} bytes, over the limit of {MAX_TX_BYTES}")]
    TooLarge(usize),
    #[error("transaction bytes do not decode: {0}")]
    Malformed(String),
    #[error("transaction bytes are not in canonical form")]
    NotCanonical,
    #[error("the signature does not verify for sender {0}")]
    BadSignature(PublicId),
    #[error("sender {0} has no account on this chain")]
    UnknownSender(PublicId),
    #[error(
        "nonce {got} is not the next for {sender} (expected {expected}): replayed or out of order"
    )]
    BadNonce {
        sender: PublicId,
        expected: u64,
        got: u64,
    },
    #[error("{sender} has role {role}, which may not {action}")]
    Forbidden {
        sender: PublicId,
        role: String,
        action: &'static str,
    },
    #[error("document {0} is already registered")]
    AlreadyRegistered(DocumentId),
    #[error("document {0} is not registered")]
    NotRegistered(DocumentId),
    #[error("document {document} belongs to another department ({owner})")]
    NotOwner {
        document: DocumentId,
        owner: PublicId,
    },
    #[error("document {0} was already superseded")]
    AlreadySuperseded(DocumentId),
    #[error("node {0} is already in the layout")]
    NodeExists(PublicId),
    #[error("node {0} is not in the layout")]
    NoSuchNode(PublicId),
    #[error("node {0} must be drained (weight 0) before it is removed")]
    NotDrained(PublicId),
    #[error("{0} is already a validator")]
    ValidatorExists(PublicId),
    #[error("{0} is not a validator")]
    NoSuchValidator(PublicId),
    #[error("the last validator cannot be removed")]
    LastValidator,
    #[error("{0} already has an account with another role")]
    AccountExists(PublicId),
    #[error("invalid field: {0}")]
    Invalid(String),
    #[error("document {0} was superseded; grant its newer version")]
    Superseded(DocumentId),
    #[error("{grantee} holds no grant on document {document}")]
    NoSuchGrant {
        document: DocumentId,
        grantee: PublicId,
    },
    #[error("document {0} already has the most grants a document may have")]
    TooManyGrants(DocumentId),
    #[error("audit roots of {peer} must continue at record {expected}, not {got}")]
    AuditGap {
        peer: PublicId,
        expected: u64,
        got: u64,
    },
    #[error(
        "a rekey of {document} may only carry over its grants unchanged, and {grantee} holds none there, or one with another expiry or recipient key"
    )]
    NotCarried {
        document: DocumentId,
        grantee: PublicId,
    },
    #[error("only sitting validator {validator} itself may move its host, not {sender}")]
    NotOwnHost {
        sender: PublicId,
        validator: PublicId,
    },
}

impl Tx {
    /// The bytes the sender signs.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = TX_DOMAIN.to_vec();
        out.extend(postcard::to_allocvec(self).expect("encoding into memory cannot fail"));
        out
    }

    /// Signs with `identity`, which must be the sender.
    pub fn sign(self, identity: &Identity) -> SignedTx {
        debug_assert_eq!(identity.public(), self.sender);
        let signature = Signature::from_bytes(identity.sign(&self.signing_bytes()));
        SignedTx {
            tx: self,
            signature,
            checked: Checked::default(),
        }
    }
}

impl SignedTx {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding into memory cannot fail")
    }

    /// The transaction id: BLAKE3 of the canonical encoding.
    pub fn id(&self) -> [u8; 32] {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// Checks the signature against the sender (strict Ed25519). Once it verified, the same
    /// value (and its clones) is not verified again unless it was changed since: a digest
    /// of what was checked costs a hash, a verification about fifty times as much.
    pub fn verify_signature(&self) -> Result<(), TxError> {
        let bytes = self.tx.signing_bytes();
        let digest = {
            let mut h = blake3::Hasher::new();
            h.update(self.tx.sender.as_bytes());
            h.update(&self.signature.to_bytes());
            h.update(&bytes);
            *h.finalize().as_bytes()
        };
        if self.checked.0.get() == Some(&digest) {
            return Ok(());
        }
        self.tx
            .sender
            .verify(&bytes, &self.signature.to_bytes())
            .map_err(|_| TxError::BadSignature(self.tx.sender))?;
        let _ = self.checked.0.set(digest);
        Ok(())
    }

    /// Decodes untrusted bytes: size, canonical form and signature are checked here.
    pub fn decode(bytes: &[u8]) -> Result<Self, TxError> {
        if bytes.len() > MAX_TX_BYTES {
            return Err(TxError::TooLarge(bytes.len()));
        }
        let tx: SignedTx =
            postcard::from_bytes(bytes).map_err(|e| TxError::Malformed(e.to_string()))?;
        if tx.encode() != bytes {
            return Err(TxError::NotCanonical);
        }
        tx.verify_signature()?;
        Ok(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    fn register(who: &Identity, nonce: u64) -> SignedTx {
        Tx {
            sender: who.public(),
            nonce,
            body: TxBody::RegisterDocument {
                document: DocumentId::of(b"manifest"),
            },
        }
        .sign(who)
    }

    #[test]
    fn signed_transactions_round_trip() {
        let dept = Identity::generate(Role::Department);
        let tx = register(&dept, 1);
        let bytes = tx.encode();
        assert_eq!(SignedTx::decode(&bytes).unwrap(), tx);
        assert_eq!(tx.id(), *blake3::hash(&bytes).as_bytes());
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let dept = Identity::generate(Role::Department);
        let bytes = register(&dept, 7).encode();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                assert!(SignedTx::decode(&bad).is_err(), "byte {i} bit {bit:#x}");
            }
        }
    }

    #[test]
    fn a_signature_by_someone_else_is_refused() {
        let dept = Identity::generate(Role::Department);
        let thief = Identity::generate(Role::Department);
        let mut tx = register(&dept, 1);
        tx.signature = Signature::from_bytes(thief.sign(&tx.tx.signing_bytes()));
        assert_eq!(
            SignedTx::decode(&tx.encode()),
            Err(TxError::BadSignature(dept.public()))
        );
    }

    #[test]
    fn a_checked_transaction_changed_afterwards_is_checked_again() {
        let dept = Identity::generate(Role::Department);
        let thief = Identity::generate(Role::Department);
        let tx = register(&dept, 1);
        tx.verify_signature().unwrap();
        let mut replayed = tx.clone();
        replayed.verify_signature().unwrap();
        replayed.tx.nonce = 2;
        assert_eq!(
            replayed.verify_signature(),
            Err(TxError::BadSignature(dept.public()))
        );
        let mut stolen = tx.clone();
        stolen.tx.sender = thief.public();
        assert!(stolen.verify_signature().is_err());
        let mut forged = tx;
        forged.signature = Signature::from_bytes(thief.sign(&forged.tx.signing_bytes()));
        assert!(forged.verify_signature().is_err());
    }

    #[test]
    fn oversized_and_trailing_bytes_are_refused() {
        let dept = Identity::generate(Role::Department);
        let mut bytes = register(&dept, 1).encode();
        bytes.push(0);
        assert!(SignedTx::decode(&bytes).is_err());
        assert_eq!(
            SignedTx::decode(&vec![0u8; MAX_TX_BYTES + 1]),
            Err(TxError::TooLarge(MAX_TX_BYTES + 1))
        );
    }

    proptest::proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = SignedTx::decode(&bytes);
        }
    }
}
