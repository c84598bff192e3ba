//! Chain transactions: one serde enum of what can change the ledger, signed by its sender.
//!
//! A transaction names its sender (an Ed25519 public id), a per-account nonce (the sender's
//! previous nonce + 1, so a transaction applies at most once and in order) and its body. The
//! sender signs `TX_DOMAIN || chain key || postcard(Tx)`: the [`ChainKey`] (BLAKE3 of the
//! chain's genesis) binds it to one chain, so it never applies on another chain where the
//! same key has an account. The transaction id is BLAKE3 of the canonical encoding of the
//! signed transaction. Decoding untrusted bytes refuses oversized input and non-canonical
//! encodings; the signature is checked against the chain key before anything looks at the
//! body ([`SignedTx::verify_signature`], called by `State::apply` and by every proof check).
//!
//! A change to the chain's own rules (the validator set, where another validator is hosted)
//! also carries [`Approval`]s: signatures of validators over `APPROVAL_DOMAIN || chain key ||
//! postcard(Tx without its approvals)`, so an approval is for one sender, one nonce and one
//! change on one chain ([`Tx::check_majority`]).
//!
//! Not for: deciding whether a transaction is allowed (roles, nonces, current state): that is
//! `state::State::apply`, the only code that changes ledger state.

use serde::{Deserialize, Serialize};

use crate::id::DocumentId;
use crate::identity::{Identity, PublicId, SIGNATURE_LEN};

/// Domain separation for transaction signatures (v2: the chain key follows it).
pub const TX_DOMAIN: &[u8] = b"dangan/tx/v2\0";
/// Domain separation for validators' approvals of a governance transaction.
pub const APPROVAL_DOMAIN: &[u8] = b"dangan/approval/v1\0";
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
    /// A validator admits another validator, approved by a majority of the current
    /// validators. With `host`, the chain also says which storage peer hosts it (its key and
    /// ip:port), so the running validators reach and trust it without a new cluster file.
    AddValidator {
        validator: PublicId,
        host: Option<(PublicId, String)>,
        approvals: Vec<Approval>,
    },
    /// A validator removes a validator (never the last one), approved by a majority of the
    /// current validators.
    RemoveValidator {
        validator: PublicId,
        approvals: Vec<Approval>,
    },
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
    /// A sitting validator moves to another storage peer (its key `host`, reached at
    /// `addr`): sent by the validator itself with no approvals, or by another validator
    /// with approvals of a majority. Dropped with `RemoveValidator`.
    SetValidatorHost {
        validator: PublicId,
        host: PublicId,
        addr: String,
        approvals: Vec<Approval>,
    },
    /// A department creates a bucket: a named collection of names of its documents (the S3
    /// gateway's buckets). Bucket names are unique on the chain.
    CreateBucket { bucket: String },
    /// The owning department deletes one of its buckets; refused while it holds a name.
    DeleteBucket { bucket: String },
    /// The owning department stores `document` under `key` in `bucket`, registering it in
    /// the same step (no window where a stored object has no name): a first registration if
    /// the name is free, else a new version (`Reissue`) that supersedes the document the name
    /// points at (its grants are not carried). `size` is the plaintext size the manifest
    /// says; `meta` is the object's metadata sealed with the document's data key (opaque to
    /// the chain, at most `MAX_NAME_META` bytes).
    PutName {
        bucket: String,
        key: String,
        document: DocumentId,
        size: u64,
        meta: Vec<u8>,
    },
    /// The owning department unbinds a name: the entry goes, the documents it named stay
    /// registered (every version readable by its id).
    DeleteName { bucket: String, key: String },
    /// A workflow between departments (`chain::workflow`): `action`, carried out by the
    /// chain as if the sender had sent it, once `required` of `approvers` (named accounts:
    /// departments or operators) approved it, each in its own `Approve`, before height
    /// `expires_at`. Its id is derived from the sender and this transaction's nonce
    /// (`workflow::ProposalId::of`).
    Propose {
        action: crate::chain::workflow::Action,
        approvers: Vec<PublicId>,
        required: u32,
        expires_at: u64,
    },
    /// A named approver approves an open proposal; the `required`-th approval carries out
    /// its action in the same transaction.
    Approve {
        proposal: crate::chain::workflow::ProposalId,
    },
    /// A named approver refuses an open proposal, saying why.
    Refuse {
        proposal: crate::chain::workflow::ProposalId,
        reason: String,
    },
    /// A validator or an operator defines a document type, or changes it (`version`: 1 for a
    /// new type, the current version + 1 for a change), approved by a majority of the
    /// current validators (`chain::records`).
    DefineType {
        def: super::records::TypeDef,
        version: u32,
        approvals: Vec<Approval>,
    },
    /// A department registers `document` as a record of type `type_name` at its current
    /// version `type_version` (the one its metadata was checked against), with the
    /// metadata sealed with the document's data key (opaque to the chain, at most
    /// `records::MAX_RECORD_META` bytes). The chain computes the retention end.
    RegisterRecord {
        document: DocumentId,
        type_name: String,
        type_version: u32,
        meta: Vec<u8>,
    },
    /// An archives authority sets a legal hold named `hold` (e.g. a case reference) on a
    /// registered document, with its reason: the document may not be destroyed while it
    /// stands, whatever its retention says.
    SetHold {
        document: DocumentId,
        hold: String,
        reason: String,
    },
    /// An archives authority lifts a hold, saying why.
    LiftHold {
        document: DocumentId,
        hold: String,
        reason: String,
    },
}

/// A validator's approval of a governance transaction (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub validator: PublicId,
    pub signature: Signature,
}

/// The chain a transaction is for: BLAKE3 of the chain's genesis (`Genesis::key`), in
/// every transaction's signed bytes and every block header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChainKey(pub [u8; 32]);

impl std::fmt::Display for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for ChainKey {
    type Err = TxError;

    fn from_str(s: &str) -> Result<Self, TxError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| TxError::Invalid(format!("chain key {s:?}: {e}")))?;
        Ok(Self(out))
    }
}

impl TxBody {
    /// The validators' approvals this transaction carries (none for most kinds).
    pub fn approvals(&self) -> &[Approval] {
        match self {
            TxBody::AddValidator { approvals, .. }
            | TxBody::RemoveValidator { approvals, .. }
            | TxBody::SetValidatorHost { approvals, .. }
            | TxBody::DefineType { approvals, .. } => approvals,
            _ => &[],
        }
    }

    /// The approvals, for a kind that carries them.
    pub fn approvals_mut(&mut self) -> Option<&mut Vec<Approval>> {
        match self {
            TxBody::AddValidator { approvals, .. }
            | TxBody::RemoveValidator { approvals, .. }
            | TxBody::SetValidatorHost { approvals, .. }
            | TxBody::DefineType { approvals, .. } => Some(approvals),
            _ => None,
        }
    }
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
    #[error(
        "the signature does not verify for sender {0} on this chain (forged, altered, or signed for another chain)"
    )]
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
    #[error(
        "{action} needs approvals of a majority of the {validators} validators ({needed}); it carries {approved}"
    )]
    NoMajority {
        action: &'static str,
        approved: usize,
        needed: usize,
        validators: usize,
    },
    #[error("the approval of {approver} is refused: {reason}")]
    BadApproval {
        approver: PublicId,
        reason: &'static str,
    },
    #[error(
        "the raft node id of {key} (the first 8 bytes of the key) is already that of validator {holder}: use another key"
    )]
    NodeIdTaken { key: PublicId, holder: PublicId },
    #[error("bucket {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("bucket {0:?} already exists")]
    BucketExists(String),
    #[error("bucket {bucket:?} belongs to another department ({owner})")]
    NotBucketOwner { bucket: String, owner: PublicId },
    #[error("bucket {0:?} still holds names")]
    BucketNotEmpty(String),
    #[error("bucket {bucket:?} holds no name {key:?}")]
    NoSuchName { bucket: String, key: String },
    #[error("{0} already has the most buckets a department may have")]
    TooManyBuckets(PublicId),
    #[error("no proposal {0} on this chain")]
    NoSuchProposal(crate::chain::workflow::ProposalId),
    #[error("proposal {id} expired at height {expires_at}: it accepts nothing more")]
    ProposalExpired {
        id: crate::chain::workflow::ProposalId,
        expires_at: u64,
    },
    #[error("proposal {id} is closed ({outcome}): it accepts nothing more")]
    ProposalClosed {
        id: crate::chain::workflow::ProposalId,
        outcome: String,
    },
    #[error("{who} is not one of the approvers proposal {id} names")]
    NotAnApprover {
        id: crate::chain::workflow::ProposalId,
        who: PublicId,
    },
    #[error("the sender already {done} proposal {id}: each approver answers once")]
    AlreadyAnswered {
        id: crate::chain::workflow::ProposalId,
        done: &'static str,
    },
    #[error("{0} already has the most open proposals a sender may have")]
    TooManyProposals(PublicId),
    #[error("there is no document type {0:?}")]
    NoSuchType(String),
    #[error("type {name:?}: version {got} is not the one expected ({expected})")]
    TypeVersion {
        name: String,
        expected: u32,
        got: u32,
    },
    #[error(
        "type {name:?} may be stored only by the departments it names, and {department} is not one"
    )]
    TypeNotForDepartment { name: String, department: PublicId },
    #[error("document {document} already has a hold named {hold:?}")]
    HoldExists { document: DocumentId, hold: String },
    #[error("document {document} has no hold named {hold:?}")]
    NoSuchHold { document: DocumentId, hold: String },
}

impl Tx {
    /// The bytes the sender signs for chain `chain`.
    pub fn signing_bytes(&self, chain: &ChainKey) -> Vec<u8> {
        let mut out = TX_DOMAIN.to_vec();
        out.extend_from_slice(&chain.0);
        out.extend(postcard::to_allocvec(self).expect("encoding into memory cannot fail"));
        out
    }

    /// Signs with `identity`, which must be the sender, for chain `chain`.
    pub fn sign(self, identity: &Identity, chain: &ChainKey) -> SignedTx {
        debug_assert_eq!(identity.public(), self.sender);
        let signature = Signature::from_bytes(identity.sign(&self.signing_bytes(chain)));
        SignedTx {
            tx: self,
            signature,
            checked: Checked::default(),
        }
    }

    /// The bytes a validator signs to approve this transaction on `chain`: the transaction
    /// (sender, nonce, body) with its approvals left out.
    pub fn approval_bytes(&self, chain: &ChainKey) -> Vec<u8> {
        let mut bare = self.clone();
        if let Some(approvals) = bare.body.approvals_mut() {
            approvals.clear();
        }
        let mut out = APPROVAL_DOMAIN.to_vec();
        out.extend_from_slice(&chain.0);
        out.extend(postcard::to_allocvec(&bare).expect("encoding into memory cannot fail"));
        out
    }

    /// `validator`'s approval of this transaction on `chain`.
    pub fn approve(&self, validator: &Identity, chain: &ChainKey) -> Approval {
        Approval {
            validator: validator.public(),
            signature: Signature::from_bytes(validator.sign(&self.approval_bytes(chain))),
        }
    }

    /// Checks that the approvals this transaction carries come from a majority of
    /// `validators` (the set in force where it applies): each from a distinct member, each
    /// verifying for this transaction on `chain`. `action` names the change in the error.
    pub fn check_majority(
        &self,
        chain: &ChainKey,
        validators: &[PublicId],
        action: &'static str,
    ) -> Result<(), TxError> {
        let approvals = self.body.approvals();
        let needed = validators.len() / 2 + 1;
        if approvals.len() > validators.len() {
            return Err(TxError::Invalid(format!(
                "{} approvals for {} validators",
                approvals.len(),
                validators.len()
            )));
        }
        let bytes = self.approval_bytes(chain);
        let mut seen: Vec<PublicId> = Vec::with_capacity(approvals.len());
        for a in approvals {
            let refuse = |reason| TxError::BadApproval {
                approver: a.validator,
                reason,
            };
            if !validators.contains(&a.validator) {
                return Err(refuse("not a validator"));
            }
            if seen.contains(&a.validator) {
                return Err(refuse("given twice"));
            }
            a.validator
                .verify(&bytes, &a.signature.to_bytes())
                .map_err(|_| refuse("the signature does not verify for this transaction"))?;
            seen.push(a.validator);
        }
        if seen.len() < needed {
            return Err(TxError::NoMajority {
                action,
                approved: seen.len(),
                needed,
                validators: validators.len(),
            });
        }
        Ok(())
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

    /// Checks the signature against the sender (strict Ed25519) for chain `chain`. Once it
    /// verified, the same value (and its clones) is not verified again unless it was changed
    /// since: a digest of what was checked costs a hash, a verification about fifty times
    /// as much.
    pub fn verify_signature(&self, chain: &ChainKey) -> Result<(), TxError> {
        let bytes = self.tx.signing_bytes(chain);
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

    /// Decodes untrusted bytes: size and canonical form are checked here, the signature by
    /// [`Self::verify_signature`] with the chain's key (`State::apply` does).
    pub fn decode(bytes: &[u8]) -> Result<Self, TxError> {
        if bytes.len() > MAX_TX_BYTES {
            return Err(TxError::TooLarge(bytes.len()));
        }
        let tx: SignedTx =
            postcard::from_bytes(bytes).map_err(|e| TxError::Malformed(e.to_string()))?;
        if tx.encode() != bytes {
            return Err(TxError::NotCanonical);
        }
        Ok(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    const CHAIN: ChainKey = ChainKey([7; 32]);

    fn register(who: &Identity, nonce: u64) -> SignedTx {
        Tx {
            sender: who.public(),
            nonce,
            body: TxBody::RegisterDocument {
                document: DocumentId::of(b"manifest"),
            },
        }
        .sign(who, &CHAIN)
    }

    #[test]
    fn signed_transactions_round_trip() {
        let dept = Identity::generate(Role::Department);
        let tx = register(&dept, 1);
        let bytes = tx.encode();
        let back = SignedTx::decode(&bytes).unwrap();
        assert_eq!(back, tx);
        back.verify_signature(&CHAIN).unwrap();
        assert_eq!(tx.id(), *blake3::hash(&bytes).as_bytes());
    }

    #[test]
    fn a_transaction_signed_for_another_chain_does_not_verify() {
        let dept = Identity::generate(Role::Department);
        let tx = register(&dept, 1);
        tx.verify_signature(&CHAIN).unwrap();
        let other = ChainKey([8; 32]);
        assert_eq!(
            SignedTx::decode(&tx.encode())
                .unwrap()
                .verify_signature(&other),
            Err(TxError::BadSignature(dept.public()))
        );
        // The cache of a checked signature is per chain too.
        assert!(tx.verify_signature(&other).is_err());
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let dept = Identity::generate(Role::Department);
        let bytes = register(&dept, 7).encode();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = bytes.clone();
                bad[i] ^= bit;
                assert!(
                    SignedTx::decode(&bad)
                        .and_then(|t| t.verify_signature(&CHAIN))
                        .is_err(),
                    "byte {i} bit {bit:#x}"
                );
            }
        }
    }

    #[test]
    fn a_signature_by_someone_else_is_refused() {
        let dept = Identity::generate(Role::Department);
        let thief = Identity::generate(Role::Department);
        let mut tx = register(&dept, 1);
        tx.signature = Signature::from_bytes(thief.sign(&tx.tx.signing_bytes(&CHAIN)));
        assert_eq!(
            SignedTx::decode(&tx.encode())
                .unwrap()
                .verify_signature(&CHAIN),
            Err(TxError::BadSignature(dept.public()))
        );
    }

    #[test]
    fn a_checked_transaction_changed_afterwards_is_checked_again() {
        let dept = Identity::generate(Role::Department);
        let thief = Identity::generate(Role::Department);
        let tx = register(&dept, 1);
        tx.verify_signature(&CHAIN).unwrap();
        let mut replayed = tx.clone();
        replayed.verify_signature(&CHAIN).unwrap();
        replayed.tx.nonce = 2;
        assert_eq!(
            replayed.verify_signature(&CHAIN),
            Err(TxError::BadSignature(dept.public()))
        );
        let mut stolen = tx.clone();
        stolen.tx.sender = thief.public();
        assert!(stolen.verify_signature(&CHAIN).is_err());
        let mut forged = tx;
        forged.signature = Signature::from_bytes(thief.sign(&forged.tx.signing_bytes(&CHAIN)));
        assert!(forged.verify_signature(&CHAIN).is_err());
    }

    #[test]
    fn approvals_count_only_distinct_validators_for_this_very_transaction() {
        let v: Vec<Identity> = (0..3)
            .map(|_| Identity::generate(Role::Validator))
            .collect();
        let set: Vec<PublicId> = v.iter().map(|i| i.public()).collect();
        let newcomer = Identity::generate(Role::Validator).public();
        let mut tx = Tx {
            sender: v[0].public(),
            nonce: 1,
            body: TxBody::AddValidator {
                validator: newcomer,
                host: None,
                approvals: vec![],
            },
        };
        let one = tx.approve(&v[0], &CHAIN);
        let two = tx.approve(&v[1], &CHAIN);
        let set_to = |tx: &mut Tx, a: Vec<Approval>| *tx.body.approvals_mut().unwrap() = a;
        set_to(&mut tx, vec![one.clone()]);
        assert!(matches!(
            tx.check_majority(&CHAIN, &set, "admit"),
            Err(TxError::NoMajority {
                approved: 1,
                needed: 2,
                ..
            })
        ));
        set_to(&mut tx, vec![one.clone(), one.clone()]);
        assert!(matches!(
            tx.check_majority(&CHAIN, &set, "admit"),
            Err(TxError::BadApproval {
                reason: "given twice",
                ..
            })
        ));
        set_to(&mut tx, vec![one.clone(), two.clone()]);
        tx.check_majority(&CHAIN, &set, "admit").unwrap();
        // The same approvals on another chain, for another nonce, or by an outsider: refused.
        assert!(
            tx.check_majority(&ChainKey([1; 32]), &set, "admit")
                .is_err()
        );
        let mut later = tx.clone();
        later.nonce = 2;
        assert!(later.check_majority(&CHAIN, &set, "admit").is_err());
        let outsider = Identity::generate(Role::Validator);
        let theirs = tx.approve(&outsider, &CHAIN);
        set_to(&mut tx, vec![one, theirs]);
        assert!(matches!(
            tx.check_majority(&CHAIN, &set, "admit"),
            Err(TxError::BadApproval {
                reason: "not a validator",
                ..
            })
        ));
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
            let _ = SignedTx::decode(&bytes).map(|t| t.verify_signature(&CHAIN));
        }
    }
}
