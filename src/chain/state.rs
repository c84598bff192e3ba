//! Ledger state: accounts and roles, validators, registered documents, and the cluster
//! layout; and [`State::apply`], the only code that changes it.
//!
//! `apply` checks everything first — signature, sender account, nonce, the sender's role,
//! and the transaction's own conditions — and only then changes anything, so a refused
//! transaction leaves the state exactly as it was. The state root is a Merkle root over the
//! canonical encoding of every entry in key order, so two validators that applied the same
//! transactions agree on it byte for byte.
//!
//! **Governance.** Changes to the chain's own rules take effect only with approvals of a
//! majority of the validators in force where they apply: `AddValidator`, `RemoveValidator`,
//! and `SetValidatorHost` for any validator but the sender itself (a validator moves its
//! own host alone; a validator not yet admitted gets its host in its `AddValidator`). The
//! approvals travel in the transaction (`tx::Approval`, checked by `Tx::check_majority`):
//! validators sign the transaction (sender, nonce, change, chain key) off chain and one of
//! them submits it. One transaction rather than a proposal and votes on chain, because a
//! reader proves the validator set from set-change inclusions alone
//! (`chain::validators::ValidatorHistory`, receipts): each carries its own majority, checked
//! offline, and the chain keeps no pending proposals. An approval is spent with the
//! sender's nonce, so it cannot be replayed, and an approval by a validator removed since
//! no longer counts. The chain has no transaction that creates operator or department
//! accounts or changes genesis settings (chain id, the genesis set itself): those exist
//! only in the genesis file. Storage peers' `AddNode` stays an operator's power (layout
//! work); a node key gets only the `Node` role.
//!
//! Raft node ids are the first 8 bytes of a validator's key ([`node_id`]): a key whose node
//! id is that of another validator (sitting, or named in the genesis) is refused
//! (`TxError::NodeIdTaken`), so nobody takes over another validator's host entry.
//!
//! **Nonces never go back.** A removed account (`RemoveNode`, `RemoveValidator`) leaves its
//! last nonce in `retired`, and the same key admitted again continues from it, so its old
//! transactions stay spent. Every signature covers the chain key (`tx::ChainKey`, BLAKE3 of
//! the genesis file's content, [`Genesis::key`]), so a transaction of another chain never
//! applies here.
//!
//! Not for: ordering transactions (consensus), persistence (the ledger store), or reading
//! shards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::merkle::{self, Hash};
use super::names::{self, BucketRecord, NameId, NameRecord, Names};
use super::records::{Hold, RecordEntry, Records, TypeKey, TypeRecord, Why};
use super::rooted::RootedMap;
use super::tx::{CarriedGrant, ChainKey, MAX_LABEL, SignedTx, Tx, TxBody, TxError, VersionKind};
use super::workflow::{Answer, Awaiting, Effect, Outcome, Proposal, ProposalId, Workflows};
use crate::grant::{SEALED_LEN, WrappedKey};
use crate::id::DocumentId;
use crate::identity::{PublicId, Role};
use crate::placement::{Layout, NodeInfo};

/// An account: its role and the nonce of its last applied transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub role: Role,
    pub nonce: u64,
}

/// A registered document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentRecord {
    /// The department that registered it.
    pub owner: PublicId,
    /// Height of the block that registered it.
    pub height: u64,
    /// The newer version, once superseded.
    pub superseded_by: Option<DocumentId>,
    /// The version this one replaced, and why (`None` for a first registration).
    pub supersedes: Option<PreviousVersion>,
    /// Who else may read it, and with which wrapped data key.
    pub grants: BTreeMap<PublicId, GrantRecord>,
}

/// The version a document replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousVersion {
    pub document: DocumentId,
    pub kind: VersionKind,
}

/// A reader's grant on a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    /// The document's data key sealed to the grantee.
    pub wrapped: WrappedKey,
    /// Unix milliseconds after which the grant no longer counts.
    pub expires_ms: Option<u64>,
    /// Height of the block that granted it.
    pub height: u64,
}

/// Most grants one document may hold.
pub const MAX_GRANTS: usize = 4096;

impl DocumentRecord {
    fn new(owner: PublicId, height: u64) -> Self {
        Self {
            owner,
            height,
            superseded_by: None,
            supersedes: None,
            grants: BTreeMap::new(),
        }
    }

    /// Whether `reader` may read this document at `now_ms`: the owning department, or a
    /// grantee whose grant has not expired.
    pub fn may_read(&self, reader: &PublicId, now_ms: u64) -> bool {
        *reader == self.owner || self.live_grant(reader, now_ms).is_some()
    }

    /// `reader`'s grant, if it has one that has not expired at `now_ms`.
    pub fn live_grant(&self, reader: &PublicId, now_ms: u64) -> Option<&GrantRecord> {
        self.grants
            .get(reader)
            .filter(|g| g.expires_ms.is_none_or(|e| now_ms < e))
    }
}

/// The genesis file: the chain's first validators, accounts and storage peers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    pub chain_id: String,
    #[serde(rename = "validator")]
    pub validators: Vec<GenesisAccount>,
    #[serde(default, rename = "account")]
    pub accounts: Vec<GenesisAccount>,
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisAccount {
    pub id: PublicId,
    /// Role of an `[[account]]` (validators are always `validator`).
    #[serde(default = "validator_role")]
    pub role: Role,
    /// Who this is, for people reading the file.
    #[serde(default)]
    pub name: String,
}

impl GenesisAccount {
    /// The genesis entry of `identity` with `role` (and no name).
    pub fn of(identity: &crate::identity::Identity, role: Role) -> Self {
        Self {
            id: identity.public(),
            role,
            name: String::new(),
        }
    }
}

fn validator_role() -> Role {
    Role::Validator
}

/// Binary decoding keeps a key's 32 bytes unchecked (cheap, and most keys only sign); a
/// transaction that admits a new identity checks it is a real Ed25519 point, so no node,
/// validator or grantee that can never authenticate gets into the state.
fn valid_key(id: &PublicId) -> Result<(), TxError> {
    PublicId::from_bytes(id.to_bytes())
        .map(drop)
        .map_err(|e| TxError::Invalid(e.to_string()))
}

/// The raft node id of a validator: the first 8 bytes of its public key. Two validators
/// never share one: the state refuses a key whose node id is taken (`TxError::NodeIdTaken`).
pub fn node_id(validator: &PublicId) -> u64 {
    let b = validator.as_bytes();
    u64::from_le_bytes(b[..8].try_into().expect("a public key has 8 bytes"))
}

/// Domain of [`Genesis::key`].
const CHAIN_KEY_CONTEXT: &str = "dangan 2026 chain key v1";

impl Genesis {
    /// The chain key: BLAKE3 (derive-key mode) of the canonical encoding of everything the
    /// genesis file says (chain id, validators, accounts, storage peers). Two chains differ
    /// in it unless their genesis files say exactly the same.
    pub fn key(&self) -> ChainKey {
        let bytes = postcard::to_allocvec(self).expect("encoding into memory cannot fail");
        ChainKey(blake3::derive_key(CHAIN_KEY_CONTEXT, &bytes))
    }

    pub fn load(path: &Path) -> Result<Self, TxError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TxError::Invalid(format!("reading {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| TxError::Invalid(format!("{}: {e}", path.display())))
    }
}

/// A transaction `State::apply` handed to a check that is not its own (never happens: the
/// dispatch names each kind once), refused rather than panicking.
fn misrouted(body: &TxBody) -> TxError {
    TxError::Invalid(format!(
        "{body:?} reached the check of another kind of transaction"
    ))
}

/// A change to the state, computed by `State::apply` once every check passed.
type Change = Box<dyn FnOnce(&mut State)>;

/// Who sent a transaction: its key and its role on chain.
#[derive(Clone, Copy)]
struct Caller {
    id: PublicId,
    role: Role,
}

impl Caller {
    /// Refused unless the sender has role `wanted`.
    fn require(self, wanted: Role, action: &'static str) -> Result<(), TxError> {
        if self.role == wanted {
            Ok(())
        } else {
            Err(TxError::Forbidden {
                sender: self.id,
                role: self.role.to_string(),
                action,
            })
        }
    }
}

/// Everything the chain knows. Built by [`State::genesis`], changed only by
/// [`State::apply`], read through the accessors below: the fields are private, so no other
/// code can change the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    chain_id: String,
    /// BLAKE3 of the genesis ([`Genesis::key`]): what every signature here is bound to.
    chain_key: ChainKey,
    /// The maps keep their root caches in step with every change.
    accounts: RootedMap<PublicId, Account>,
    validators: BTreeSet<PublicId>,
    documents: RootedMap<DocumentId, DocumentRecord>,
    layout: Layout,
    /// The layout before the last change: readers fall back to it while the rebalance to
    /// `layout` is under way.
    previous_layout: Option<Layout>,
    /// Per storage peer, the first read record its next `AuditRoot` must start at (the
    /// records before it are covered by committed roots).
    audits: BTreeMap<PublicId, u64>,
    /// The peer hosting each validator, where a `SetValidatorHost` said (validators not
    /// in it are reached as their cluster files say).
    validator_hosts: BTreeMap<PublicId, NodeInfo>,
    /// The last nonce of every removed account, so the same key admitted again continues
    /// from it and its old transactions stay spent.
    retired: BTreeMap<PublicId, u64>,
    /// Buckets and object names (`chain::names`).
    names: Names,
    /// Proposals between departments and the documents awaiting them (`chain::workflow`).
    workflows: Workflows,
    /// Document types, typed documents' retention, legal holds (`chain::records`).
    records: Records,
}

/// Most read records one `AuditRoot` covers.
pub const MAX_AUDIT_COUNT: u64 = 1 << 20;

/// The current and the previous layout, as the chain serves them to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLayouts {
    pub current: Layout,
    pub previous: Option<Layout>,
}

/// One entry of the state, as hashed into the state root.
#[derive(Serialize)]
enum Entry<'a> {
    ChainId(&'a str),
    Account(&'a PublicId, &'a Account),
    Validator(&'a PublicId),
    Document(&'a DocumentId, RecordDigest<'a>),
    Layout(&'a Layout),
    PreviousLayout(&'a Option<Layout>),
    Audits(&'a BTreeMap<PublicId, u64>),
    ValidatorHosts(&'a BTreeMap<PublicId, NodeInfo>),
    ChainKey(&'a ChainKey),
    Retired(&'a BTreeMap<PublicId, u64>),
    Bucket(&'a NameId, &'a BucketRecord),
    Name(&'a NameId, &'a NameRecord),
    /// The roots of the buckets' and the names' maps.
    Names(&'a Hash, &'a Hash),
    Proposal(&'a ProposalId, &'a Proposal),
    Awaiting(&'a DocumentId, &'a Awaiting),
    /// The roots of the proposals' and the awaiting documents' maps.
    Workflows(&'a Hash, &'a Hash),
    Type(&'a TypeKey, &'a TypeRecord),
    Record(&'a DocumentId, &'a RecordEntry),
    /// The roots of the types' and the record entries' maps.
    Records(&'a Hash, &'a Hash),
}

/// A document record as hashed into the state: its grants by their Merkle root, so a
/// grantee can be shown its own grant with a proof and not the others (`chain::proof`).
#[derive(Serialize)]
struct RecordDigest<'a> {
    owner: &'a PublicId,
    height: u64,
    superseded_by: &'a Option<DocumentId>,
    supersedes: &'a Option<PreviousVersion>,
    grants: Hash,
}

fn entry_leaf(e: Entry<'_>) -> Hash {
    merkle::leaf_hash(&postcard::to_allocvec(&e).expect("encoding into memory cannot fail"))
}

/// The leaf hash of one grant among a record's grants.
pub fn grant_leaf(grantee: &PublicId, grant: &GrantRecord) -> Hash {
    merkle::leaf_hash(
        &postcard::to_allocvec(&(grantee, grant)).expect("encoding into memory cannot fail"),
    )
}

/// The Merkle root of a record's grants (leaves in grantee order).
pub fn grants_root(grants: &BTreeMap<PublicId, GrantRecord>) -> Hash {
    let leaves: Vec<Hash> = grants.iter().map(|(g, r)| grant_leaf(g, r)).collect();
    merkle::root(&leaves)
}

/// The leaf hash of a bucket in the buckets' map.
pub fn bucket_leaf(id: &NameId, record: &BucketRecord) -> Hash {
    entry_leaf(Entry::Bucket(id, record))
}

/// The leaf hash of a name in the names' map.
pub fn name_leaf(id: &NameId, record: &NameRecord) -> Hash {
    entry_leaf(Entry::Name(id, record))
}

/// The leaf hash of a proposal in the proposals' map.
pub fn proposal_leaf(id: &ProposalId, proposal: &Proposal) -> Hash {
    entry_leaf(Entry::Proposal(id, proposal))
}

/// The leaf hash of a document awaiting a proposal, in the awaiting documents' map.
pub fn awaiting_leaf(id: &DocumentId, awaiting: &Awaiting) -> Hash {
    entry_leaf(Entry::Awaiting(id, awaiting))
}

/// The leaf hash of a type version in the types map (`chain::records`).
pub fn type_leaf(key: &TypeKey, record: &TypeRecord) -> Hash {
    entry_leaf(Entry::Type(key, record))
}

/// The leaf hash of a document's record entry (type, retention, holds).
pub fn record_entry_leaf(id: &DocumentId, entry: &RecordEntry) -> Hash {
    entry_leaf(Entry::Record(id, entry))
}

/// The leaf hash of an account in the accounts map.
pub fn account_leaf(id: &PublicId, account: &Account) -> Hash {
    entry_leaf(Entry::Account(id, account))
}

/// The leaf hash of a document record whose grants have the Merkle root `grants`.
pub fn document_leaf(id: &DocumentId, record: &DocumentRecord, grants: Hash) -> Hash {
    entry_leaf(Entry::Document(
        id,
        RecordDigest {
            owner: &record.owner,
            height: record.height,
            superseded_by: &record.superseded_by,
            supersedes: &record.supersedes,
            grants,
        },
    ))
}

/// The part of the state that every proof carries whole (`chain::proof`): the chain id,
/// the validators, the layouts, the audit cursors and validator hosts, and the roots of the
/// two large maps (accounts, documents). Its root is the state root, so a reader holding a
/// final header checks all of it at once, and any entry of the maps against their roots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateTop {
    pub chain_id: String,
    pub accounts: Hash,
    pub validators: BTreeSet<PublicId>,
    pub documents: Hash,
    pub layout: Layout,
    pub previous_layout: Option<Layout>,
    pub audits: BTreeMap<PublicId, u64>,
    pub validator_hosts: BTreeMap<PublicId, NodeInfo>,
    pub chain_key: ChainKey,
    pub retired: BTreeMap<PublicId, u64>,
    /// The roots of the buckets' and the names' maps, once there is a bucket.
    pub names: Option<(Hash, Hash)>,
    /// The roots of the proposals' and the awaiting documents' maps, once there is a
    /// proposal (`chain::workflow`).
    pub workflows: Option<(Hash, Hash)>,
    /// The roots of the types' and the record entries' maps, once there is a type or a hold.
    pub records: Option<(Hash, Hash)>,
}

impl StateTop {
    /// The state root: a Merkle root over the chain id, the accounts' root, every
    /// validator, the documents' root, the layouts, the audit cursors and validator hosts
    /// once there are any, the chain key, and the retired nonces once there are any.
    pub fn root(&self) -> Hash {
        let mut leaves = Vec::with_capacity(6 + self.validators.len());
        leaves.push(entry_leaf(Entry::ChainId(&self.chain_id)));
        leaves.push(self.accounts);
        leaves.extend(
            self.validators
                .iter()
                .map(|id| entry_leaf(Entry::Validator(id))),
        );
        leaves.push(self.documents);
        leaves.push(entry_leaf(Entry::Layout(&self.layout)));
        leaves.push(entry_leaf(Entry::PreviousLayout(&self.previous_layout)));
        // Only once a peer committed an audit root, so chains without one keep their roots.
        if !self.audits.is_empty() {
            leaves.push(entry_leaf(Entry::Audits(&self.audits)));
        }
        // Likewise only once a validator host was set on chain.
        if !self.validator_hosts.is_empty() {
            leaves.push(entry_leaf(Entry::ValidatorHosts(&self.validator_hosts)));
        }
        // The chain key is always set: the root commits to which chain this is.
        leaves.push(entry_leaf(Entry::ChainKey(&self.chain_key)));
        // Only once an account was removed.
        if !self.retired.is_empty() {
            leaves.push(entry_leaf(Entry::Retired(&self.retired)));
        }
        // Only once a bucket was created.
        if let Some((buckets, names)) = &self.names {
            leaves.push(entry_leaf(Entry::Names(buckets, names)));
        }
        // Only once a proposal was made.
        if let Some((proposals, awaiting)) = &self.workflows {
            leaves.push(entry_leaf(Entry::Workflows(proposals, awaiting)));
        }
        // Only once a type was defined or a hold set.
        if let Some((types, entries)) = &self.records {
            leaves.push(entry_leaf(Entry::Records(types, entries)));
        }
        merkle::root(&leaves)
    }

    /// The current layout and the one before the last change.
    pub fn layouts(&self) -> ChainLayouts {
        ChainLayouts {
            current: self.layout.clone(),
            previous: self.previous_layout.clone(),
        }
    }
}

impl State {
    /// The state a genesis file describes.
    pub fn genesis(genesis: &Genesis) -> Result<Self, TxError> {
        if genesis.validators.is_empty() {
            return Err(TxError::Invalid("genesis names no validator".into()));
        }
        let mut accounts = RootedMap::new();
        let mut add =
            |id: PublicId, role: Role| match accounts.insert(id, Account { role, nonce: 0 }) {
                Some(_) => Err(TxError::AccountExists(id)),
                None => Ok(()),
            };
        for v in &genesis.validators {
            add(v.id, Role::Validator)?;
        }
        for a in &genesis.accounts {
            add(a.id, a.role)?;
        }
        for n in &genesis.nodes {
            add(n.key, Role::Node)?;
        }
        let layout = Layout::new(1, genesis.nodes.clone())
            .map_err(|e| TxError::Invalid(format!("genesis layout: {e}")))?;
        let mut ids: BTreeMap<u64, PublicId> = BTreeMap::new();
        for v in &genesis.validators {
            if let Some(holder) = ids.insert(node_id(&v.id), v.id)
                && holder != v.id
            {
                return Err(TxError::NodeIdTaken { key: v.id, holder });
            }
        }
        Ok(Self {
            chain_id: genesis.chain_id.clone(),
            chain_key: genesis.key(),
            accounts,
            validators: genesis.validators.iter().map(|v| v.id).collect(),
            documents: RootedMap::new(),
            layout,
            previous_layout: None,
            audits: BTreeMap::new(),
            validator_hosts: BTreeMap::new(),
            retired: BTreeMap::new(),
            names: Names::default(),
            workflows: Workflows::default(),
            records: Records::default(),
        })
    }

    /// The state root ([`StateTop::root`]). Accounts and documents are [`RootedMap`]s, so
    /// a block pays for the entries it changed, not for the whole state.
    pub fn root(&self) -> Hash {
        self.top().root()
    }

    /// The state's top: everything but the two large maps, which it holds by their roots.
    pub fn top(&self) -> StateTop {
        StateTop {
            chain_id: self.chain_id.clone(),
            accounts: self.accounts.root(account_leaf),
            validators: self.validators.clone(),
            documents: self
                .documents
                .root(|id, d| document_leaf(id, d, grants_root(&d.grants))),
            layout: self.layout.clone(),
            previous_layout: self.previous_layout.clone(),
            audits: self.audits.clone(),
            validator_hosts: self.validator_hosts.clone(),
            chain_key: self.chain_key,
            retired: self.retired.clone(),
            names: (!self.names.is_empty()).then(|| self.names.roots(bucket_leaf, name_leaf)),
            workflows: (!self.workflows.is_empty())
                .then(|| self.workflows.roots(proposal_leaf, awaiting_leaf)),
            records: (!self.records.is_empty())
                .then(|| self.records.roots(type_leaf, record_entry_leaf)),
        }
    }

    /// The accounts, read-only (for proofs: `chain::proof`).
    pub(super) fn account_map(&self) -> &RootedMap<PublicId, Account> {
        &self.accounts
    }

    /// The document records, read-only (for proofs: `chain::proof`).
    pub(super) fn document_map(&self) -> &RootedMap<DocumentId, DocumentRecord> {
        &self.documents
    }

    /// Checks `stx` against the current state and, only if every check passes, applies it,
    /// in the block of height `height` and time `time_ms` (its header's).
    pub fn apply(&mut self, stx: &SignedTx, height: u64, time_ms: u64) -> Result<(), TxError> {
        stx.verify_signature(&self.chain_key)?;
        let tx = &stx.tx;
        let sender = tx.sender;
        let account = self
            .accounts
            .get(&sender)
            .ok_or(TxError::UnknownSender(sender))?;
        let expected = account.nonce + 1;
        if tx.nonce != expected {
            return Err(TxError::BadNonce {
                sender,
                expected,
                got: tx.nonce,
            });
        }
        let caller = Caller {
            id: sender,
            role: account.role,
        };
        // Each check returns the change; nothing is mutated until all pass.
        let change = match &tx.body {
            TxBody::RegisterDocument { .. } | TxBody::Grant { .. } | TxBody::Revoke { .. } => {
                self.document_change(caller, &tx.body, height)?
            }
            TxBody::Supersede { .. } => self.supersede_change(caller, &tx.body, height)?,
            TxBody::AddNode { .. }
            | TxBody::DrainNode { .. }
            | TxBody::RemoveNode { .. }
            | TxBody::SetLayout { .. } => self.layout_change(caller, &tx.body)?,
            TxBody::AddValidator { .. }
            | TxBody::RemoveValidator { .. }
            | TxBody::SetValidatorHost { .. } => self.validator_change(caller, tx)?,
            TxBody::AuditRoot { .. } => self.audit_change(caller, &tx.body)?,
            TxBody::CreateBucket { .. }
            | TxBody::DeleteBucket { .. }
            | TxBody::PutName { .. }
            | TxBody::DeleteName { .. } => self.name_change(caller, &tx.body, height)?,
            TxBody::Propose { .. } | TxBody::Approve { .. } | TxBody::Refuse { .. } => {
                self.workflow_change(caller, tx, height)?
            }
            TxBody::DefineType { .. }
            | TxBody::RegisterRecord { .. }
            | TxBody::SetHold { .. }
            | TxBody::LiftHold { .. } => self.records_change(caller, tx, height, time_ms)?,
        };
        change(self);
        if let Some(account) = self.accounts.get_mut(&sender) {
            account.nonce = expected;
        }
        Ok(())
    }

    /// What a `RegisterDocument`, `Grant` or `Revoke` changes, once all its checks passed.
    fn document_change(
        &self,
        caller: Caller,
        body: &TxBody,
        height: u64,
    ) -> Result<Change, TxError> {
        let sender = caller.id;
        let require = |wanted: Role, action: &'static str| caller.require(wanted, action);
        Ok(match body {
            TxBody::RegisterDocument { document } => {
                require(Role::Department, "register documents")?;
                if self.documents.contains_key(document) {
                    return Err(TxError::AlreadyRegistered(*document));
                }
                let document = *document;
                Box::new(move |s| {
                    s.documents
                        .insert(document, DocumentRecord::new(sender, height));
                })
            }
            TxBody::Grant {
                document,
                grantee,
                wrapped,
                expires_ms,
            } => {
                require(Role::Department, "grant access")?;
                valid_key(grantee)?;
                let record = self.owned(document, sender)?;
                if record.superseded_by.is_some() {
                    return Err(TxError::Superseded(*document));
                }
                check_grant(sender, grantee, wrapped)?;
                if record.grants.len() >= MAX_GRANTS && !record.grants.contains_key(grantee) {
                    return Err(TxError::TooManyGrants(*document));
                }
                let (document, grantee) = (*document, *grantee);
                let grant = GrantRecord {
                    wrapped: wrapped.clone(),
                    expires_ms: *expires_ms,
                    height,
                };
                Box::new(move |s| {
                    if let Some(r) = s.documents.get_mut(&document) {
                        r.grants.insert(grantee, grant);
                    }
                })
            }
            TxBody::Revoke { document, grantee } => {
                require(Role::Department, "revoke access")?;
                let record = self.owned(document, sender)?;
                if !record.grants.contains_key(grantee) {
                    return Err(TxError::NoSuchGrant {
                        document: *document,
                        grantee: *grantee,
                    });
                }
                let (document, grantee) = (*document, *grantee);
                Box::new(move |s| {
                    if let Some(r) = s.documents.get_mut(&document) {
                        r.grants.remove(&grantee);
                    }
                })
            }
            other => return Err(misrouted(other)),
        })
    }

    /// What a `Supersede` (a new version of a document) changes, once all its checks passed.
    fn supersede_change(
        &self,
        caller: Caller,
        body: &TxBody,
        height: u64,
    ) -> Result<Change, TxError> {
        let sender = caller.id;
        let require = |wanted: Role, action: &'static str| caller.require(wanted, action);
        Ok(match body {
            TxBody::Supersede {
                old,
                new,
                kind,
                grants,
            } => {
                require(Role::Department, "supersede documents")?;
                let record = self.owned(old, sender)?;
                if record.superseded_by.is_some() {
                    return Err(TxError::AlreadySuperseded(*old));
                }
                if self.documents.contains_key(new) {
                    return Err(TxError::AlreadyRegistered(*new));
                }
                if grants.len() > MAX_GRANTS {
                    return Err(TxError::TooManyGrants(*new));
                }
                let mut carried = BTreeMap::new();
                for g in grants {
                    check_grant(sender, &g.grantee, &g.wrapped)?;
                    // A rekey re-seals to the very key each reader was granted under, with
                    // the same expiry: it cannot add a reader, extend a grant, or (through a
                    // forged record served to the owner) redirect a key to someone else.
                    if *kind == VersionKind::Rekey
                        && record
                            .grants
                            .get(&g.grantee)
                            .map(|o| (o.expires_ms, o.wrapped.recipient))
                            != Some((g.expires_ms, g.wrapped.recipient))
                    {
                        return Err(TxError::NotCarried {
                            document: *old,
                            grantee: g.grantee,
                        });
                    }
                    let CarriedGrant {
                        grantee,
                        wrapped,
                        expires_ms,
                    } = g.clone();
                    let grant = GrantRecord {
                        wrapped,
                        expires_ms,
                        height,
                    };
                    if carried.insert(grantee, grant).is_some() {
                        return Err(TxError::Invalid(format!(
                            "{grantee} is granted twice in one supersede"
                        )));
                    }
                }
                let (old, new) = (*old, *new);
                let mut record = DocumentRecord::new(sender, height);
                record.supersedes = Some(PreviousVersion {
                    document: old,
                    kind: *kind,
                });
                record.grants = carried;
                Box::new(move |s| {
                    if let Some(r) = s.documents.get_mut(&old) {
                        r.superseded_by = Some(new);
                    }
                    s.documents.insert(new, record);
                })
            }
            other => return Err(misrouted(other)),
        })
    }

    /// What an `AddNode`, `DrainNode`, `RemoveNode` or `SetLayout` changes, once checked.
    fn layout_change(&self, caller: Caller, body: &TxBody) -> Result<Change, TxError> {
        let require = |wanted: Role, action: &'static str| caller.require(wanted, action);
        Ok(match body {
            TxBody::AddNode {
                node,
                addr,
                zone,
                weight,
            } => {
                require(Role::Operator, "change the cluster layout")?;
                valid_key(node)?;
                if addr.len() > MAX_LABEL || zone.len() > MAX_LABEL {
                    return Err(TxError::Invalid("address or zone too long".into()));
                }
                if self.layout.nodes.iter().any(|n| n.key == *node) {
                    return Err(TxError::NodeExists(*node));
                }
                if self.accounts.contains_key(node) {
                    return Err(TxError::AccountExists(*node));
                }
                let mut nodes = self.layout.nodes.clone();
                nodes.push(NodeInfo {
                    key: *node,
                    zone: zone.clone(),
                    weight: *weight,
                    addr: addr.clone(),
                });
                let layout = self.next_layout(nodes)?;
                let node = *node;
                Box::new(move |s| {
                    s.open_account(node, Role::Node);
                    s.set_layout(layout);
                })
            }
            TxBody::DrainNode { node } => {
                require(Role::Operator, "change the cluster layout")?;
                let nodes = self.with_weights(&[(*node, 0)])?;
                let layout = self.next_layout(nodes)?;
                Box::new(move |s| s.set_layout(layout))
            }
            TxBody::RemoveNode { node } => {
                require(Role::Operator, "change the cluster layout")?;
                let current = self
                    .layout
                    .nodes
                    .iter()
                    .find(|n| n.key == *node)
                    .ok_or(TxError::NoSuchNode(*node))?;
                if current.weight != 0 {
                    return Err(TxError::NotDrained(*node));
                }
                let nodes = self
                    .layout
                    .nodes
                    .iter()
                    .filter(|n| n.key != *node)
                    .cloned()
                    .collect();
                let layout = self.next_layout(nodes)?;
                let node = *node;
                Box::new(move |s| {
                    s.close_account(&node);
                    s.set_layout(layout);
                })
            }
            TxBody::SetLayout { weights } => {
                require(Role::Operator, "change the cluster layout")?;
                let nodes = self.with_weights(weights)?;
                let layout = self.next_layout(nodes)?;
                Box::new(move |s| s.set_layout(layout))
            }
            other => return Err(misrouted(other)),
        })
    }

    /// What an `AddValidator`, `RemoveValidator` or `SetValidatorHost` changes, once checked
    /// (approvals of a majority of the current validators, see the module docs).
    fn validator_change(&self, caller: Caller, tx: &Tx) -> Result<Change, TxError> {
        let sender = caller.id;
        let require = |wanted: Role, action: &'static str| caller.require(wanted, action);
        let validators: Vec<PublicId> = self.validators.iter().copied().collect();
        let majority = |action| tx.check_majority(&self.chain_key, &validators, action);
        Ok(match &tx.body {
            TxBody::AddValidator {
                validator,
                host,
                approvals: _,
            } => {
                require(Role::Validator, "change the validator set")?;
                majority("admitting a validator")?;
                valid_key(validator)?;
                if self.validators.contains(validator) {
                    return Err(TxError::ValidatorExists(*validator));
                }
                if self.accounts.contains_key(validator) {
                    return Err(TxError::AccountExists(*validator));
                }
                self.node_id_free(validator)?;
                let host = match host {
                    Some((key, addr)) => Some(host_entry(key, addr)?),
                    None => None,
                };
                let v = *validator;
                Box::new(move |s| {
                    s.validators.insert(v);
                    s.open_account(v, Role::Validator);
                    if let Some(node) = host {
                        s.validator_hosts.insert(v, node);
                    }
                })
            }
            TxBody::RemoveValidator {
                validator,
                approvals: _,
            } => {
                require(Role::Validator, "change the validator set")?;
                majority("removing a validator")?;
                if !self.validators.contains(validator) {
                    return Err(TxError::NoSuchValidator(*validator));
                }
                if self.validators.len() == 1 {
                    return Err(TxError::LastValidator);
                }
                let v = *validator;
                Box::new(move |s| {
                    s.validators.remove(&v);
                    s.close_account(&v);
                    s.validator_hosts.remove(&v);
                })
            }
            TxBody::SetValidatorHost {
                validator,
                host,
                addr,
                approvals,
            } => {
                require(Role::Validator, "say where a validator is hosted")?;
                if !self.validators.contains(validator) {
                    return Err(TxError::NoSuchValidator(*validator));
                }
                // A validator moves its own host alone; anyone else's needs a majority.
                if sender != *validator || !approvals.is_empty() {
                    majority("moving another validator's host")?;
                }
                let (v, node) = (*validator, host_entry(host, addr)?);
                Box::new(move |s| {
                    s.validator_hosts.insert(v, node);
                })
            }
            other => return Err(misrouted(other)),
        })
    }

    /// Refused if `key`'s raft node id is that of another validator (sitting, or hosted on
    /// chain): it would take over that validator's raft identity and host entry.
    fn node_id_free(&self, key: &PublicId) -> Result<(), TxError> {
        let node = node_id(key);
        match self
            .validators
            .iter()
            .chain(self.validator_hosts.keys())
            .find(|v| *v != key && node_id(v) == node)
        {
            Some(holder) => Err(TxError::NodeIdTaken {
                key: *key,
                holder: *holder,
            }),
            None => Ok(()),
        }
    }

    /// A new account for `id`, continuing from its retired nonce if it had one before.
    fn open_account(&mut self, id: PublicId, role: Role) {
        let nonce = self.retired.remove(&id).unwrap_or(0);
        self.accounts.insert(id, Account { role, nonce });
    }

    /// Removes `id`'s account, keeping its last nonce.
    fn close_account(&mut self, id: &PublicId) {
        if let Some(account) = self.accounts.remove(id) {
            self.retired.insert(*id, account.nonce);
        }
    }

    /// What an `AuditRoot` changes, once all its checks passed.
    fn audit_change(&self, caller: Caller, body: &TxBody) -> Result<Change, TxError> {
        let sender = caller.id;
        let require = |wanted: Role, action: &'static str| caller.require(wanted, action);
        Ok(match body {
            TxBody::AuditRoot {
                peer,
                first,
                count,
                root: _,
            } => {
                require(Role::Node, "commit audit roots")?;
                if *peer != sender {
                    return Err(TxError::Invalid(format!(
                        "{sender} may commit audit roots only for itself, not for {peer}"
                    )));
                }
                if *count == 0 || *count > MAX_AUDIT_COUNT {
                    return Err(TxError::Invalid(format!(
                        "an audit root covers 1 to {MAX_AUDIT_COUNT} records, not {count}"
                    )));
                }
                let expected = self.audits.get(&sender).copied().unwrap_or(0);
                if *first != expected {
                    return Err(TxError::AuditGap {
                        peer: sender,
                        expected,
                        got: *first,
                    });
                }
                let next = first.saturating_add(*count);
                Box::new(move |s| {
                    s.audits.insert(sender, next);
                })
            }
            other => return Err(misrouted(other)),
        })
    }

    /// What a `CreateBucket`, `DeleteBucket`, `PutName` or `DeleteName` changes, once all
    /// its checks passed (`chain::names`: only the bucket's owner writes it).
    fn name_change(&self, caller: Caller, body: &TxBody, height: u64) -> Result<Change, TxError> {
        let sender = caller.id;
        caller.require(Role::Department, "keep buckets and names")?;
        Ok(match body {
            TxBody::CreateBucket { bucket } => {
                self.names.check_create(bucket, &sender)?;
                let record = BucketRecord {
                    name: bucket.clone(),
                    owner: sender,
                    height,
                };
                Box::new(move |s| s.names.insert_bucket(record))
            }
            TxBody::DeleteBucket { bucket } => {
                self.names.owned_bucket(bucket, &sender)?;
                if self.names.holds_names(bucket) {
                    return Err(TxError::BucketNotEmpty(bucket.clone()));
                }
                let bucket = bucket.clone();
                Box::new(move |s| s.names.remove_bucket(&bucket))
            }
            TxBody::PutName {
                bucket,
                key,
                document,
                size,
                meta,
            } => {
                self.names.owned_bucket(bucket, &sender)?;
                names::check_key(key)?;
                if meta.len() > names::MAX_NAME_META {
                    return Err(TxError::Invalid(format!(
                        "an object's metadata is at most {} bytes",
                        names::MAX_NAME_META
                    )));
                }
                if self.documents.contains_key(document) {
                    return Err(TxError::AlreadyRegistered(*document));
                }
                let mut record = DocumentRecord::new(sender, height);
                let mut versions = 1;
                let old = match self.names.name(bucket, key) {
                    Some(bound) => {
                        let previous = self.owned(&bound.document, sender)?;
                        if previous.superseded_by.is_some() {
                            return Err(TxError::AlreadySuperseded(bound.document));
                        }
                        record.supersedes = Some(PreviousVersion {
                            document: bound.document,
                            kind: VersionKind::Reissue,
                        });
                        versions = bound.versions.saturating_add(1);
                        Some(bound.document)
                    }
                    None => None,
                };
                let (new, name) = (
                    *document,
                    NameRecord {
                        bucket: bucket.clone(),
                        key: key.clone(),
                        document: *document,
                        size: *size,
                        meta: meta.clone(),
                        height,
                        versions,
                    },
                );
                Box::new(move |s| {
                    if let Some(old) = old
                        && let Some(r) = s.documents.get_mut(&old)
                    {
                        r.superseded_by = Some(new);
                    }
                    s.documents.insert(new, record);
                    s.names.bind(name);
                })
            }
            TxBody::DeleteName { bucket, key } => {
                self.names.owned_bucket(bucket, &sender)?;
                if self.names.name(bucket, key).is_none() {
                    return Err(TxError::NoSuchName {
                        bucket: bucket.clone(),
                        key: key.clone(),
                    });
                }
                let (bucket, key) = (bucket.clone(), key.clone());
                Box::new(move |s| s.names.unbind(&bucket, &key))
            }
            other => return Err(misrouted(other)),
        })
    }

    /// What a `Propose`, `Approve` or `Refuse` changes, once all its checks passed
    /// (`chain::workflow`). The approval that reaches the number required also carries out
    /// the action, checked now by the action's own code path as if its proposer sent it.
    fn workflow_change(&self, caller: Caller, tx: &Tx, height: u64) -> Result<Change, TxError> {
        let sender = caller.id;
        Ok(match &tx.body {
            TxBody::Propose {
                action,
                approvers,
                required,
                expires_at,
            } => {
                let proposal = self.workflows.check_propose(
                    sender,
                    height,
                    action,
                    approvers,
                    *required,
                    *expires_at,
                    |id| self.accounts.get(id).map(|a| a.role),
                )?;
                // The action must be one the proposer may carry out now (checked again
                // on the last approval); its change is dropped.
                drop(self.action_change(sender, &action.body(), height)?);
                let id = ProposalId::of(&sender, tx.nonce);
                Box::new(move |s| s.workflows.insert(id, proposal))
            }
            TxBody::Approve { proposal } => {
                let id = *proposal;
                let answer = Answer {
                    approver: sender,
                    height,
                    reason: String::new(),
                };
                match self.workflows.check_answer(&id, &sender, height, None)? {
                    Effect::Reached => {
                        let p = self
                            .workflows
                            .proposal(&id)
                            .ok_or(TxError::NoSuchProposal(id))?;
                        match self.action_change(p.proposer, &p.action.body(), height) {
                            Ok(action) => Box::new(move |s| {
                                s.workflows.answer(&id, answer, true);
                                s.workflows.close(&id, Outcome::Carried { height });
                                action(s);
                            }),
                            Err(e) => {
                                let reason = e.to_string();
                                Box::new(move |s| {
                                    s.workflows.answer(&id, answer, true);
                                    s.workflows.close(&id, Outcome::Failed { height, reason });
                                })
                            }
                        }
                    }
                    _ => Box::new(move |s| s.workflows.answer(&id, answer, true)),
                }
            }
            TxBody::Refuse { proposal, reason } => {
                let id = *proposal;
                let effect = self
                    .workflows
                    .check_answer(&id, &sender, height, Some(reason))?;
                let answer = Answer {
                    approver: sender,
                    height,
                    reason: reason.clone(),
                };
                Box::new(move |s| {
                    s.workflows.answer(&id, answer, false);
                    if effect == Effect::Unreachable {
                        s.workflows.close(&id, Outcome::Refused { height });
                    }
                })
            }
            other => return Err(misrouted(other)),
        })
    }

    /// What a `DefineType`, `RegisterRecord`, `SetHold` or `LiftHold` changes, once all its
    /// checks passed (`chain::records`): a type needs a majority of the validators' approvals
    /// and is sent by a validator or an operator; a record is registered by a department the
    /// type allows; holds are set and lifted by an archives authority alone.
    fn records_change(
        &self,
        caller: Caller,
        tx: &Tx,
        height: u64,
        time_ms: u64,
    ) -> Result<Change, TxError> {
        let sender = caller.id;
        Ok(match &tx.body {
            TxBody::DefineType {
                def,
                version,
                approvals: _,
            } => {
                if caller.role != Role::Operator {
                    caller.require(Role::Validator, "define document types")?;
                }
                let validators: Vec<PublicId> = self.validators.iter().copied().collect();
                tx.check_majority(&self.chain_key, &validators, "defining a document type")?;
                self.records.check_define(def, *version)?;
                let record = TypeRecord {
                    def: def.clone(),
                    version: *version,
                    height,
                    time_ms,
                };
                Box::new(move |s| s.records.define(record))
            }
            TxBody::RegisterRecord {
                document,
                type_name,
                type_version,
                meta,
            } => {
                caller.require(Role::Department, "register documents")?;
                if self.documents.contains_key(document) {
                    return Err(TxError::AlreadyRegistered(*document));
                }
                let entry = self.records.check_register(
                    &sender,
                    type_name,
                    *type_version,
                    meta,
                    time_ms,
                )?;
                let document = *document;
                Box::new(move |s| {
                    s.documents
                        .insert(document, DocumentRecord::new(sender, height));
                    s.records.insert_entry(document, entry);
                })
            }
            TxBody::SetHold {
                document,
                hold,
                reason,
            } => {
                caller.require(Role::Archives, "set legal holds")?;
                if !self.documents.contains_key(document) {
                    return Err(TxError::NotRegistered(*document));
                }
                self.records.check_set_hold(document, hold, reason)?;
                let (document, name) = (*document, hold.clone());
                let hold = Hold {
                    reason: reason.clone(),
                    by: sender,
                    height,
                    time_ms,
                };
                Box::new(move |s| s.records.set_hold(document, name, hold))
            }
            TxBody::LiftHold {
                document,
                hold,
                reason,
            } => {
                caller.require(Role::Archives, "lift legal holds")?;
                self.records.check_lift_hold(document, hold, reason)?;
                let (document, hold) = (*document, hold.clone());
                Box::new(move |s| s.records.lift_hold(&document, &hold))
            }
            other => return Err(misrouted(other)),
        })
    }

    /// What a proposal's action changes when carried out for `proposer` at `height`, by
    /// the action's own transaction's checks and code path.
    fn action_change(
        &self,
        proposer: PublicId,
        body: &TxBody,
        height: u64,
    ) -> Result<Change, TxError> {
        let role = self
            .accounts
            .get(&proposer)
            .map(|a| a.role)
            .ok_or(TxError::UnknownSender(proposer))?;
        let caller = Caller { id: proposer, role };
        match body {
            TxBody::RegisterDocument { .. } | TxBody::Grant { .. } => {
                self.document_change(caller, body, height)
            }
            other => Err(misrouted(other)),
        }
    }

    /// Proposals between departments (`chain::workflow`), read-only.
    pub fn workflows(&self) -> &Workflows {
        &self.workflows
    }

    /// Document types, typed documents and holds (`chain::records`), read-only.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// Why `document` may not be destroyed at `now_ms` (its retention has not ended, a hold
    /// stands, or it is not registered), or `None`: the check destruction makes
    /// (`Records::destruction_blocked`).
    pub fn destruction_blocked(&self, document: &DocumentId, now_ms: u64) -> Option<Why> {
        self.records
            .destruction_blocked(document, self.documents.contains_key(document), now_ms)
    }

    /// Buckets and object names (`chain::names`), read-only.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// Starts a new layout epoch; the current layout becomes the previous one.
    fn set_layout(&mut self, layout: Layout) {
        self.previous_layout = Some(std::mem::replace(&mut self.layout, layout));
    }

    /// The chain's id, from its genesis.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// The chain key every signature here is bound to ([`Genesis::key`]).
    pub fn chain_key(&self) -> ChainKey {
        self.chain_key
    }

    /// The last nonce of a removed account (`None` if `id` was never removed, or is back).
    pub fn retired_nonce(&self, id: &PublicId) -> Option<u64> {
        self.retired.get(id).copied()
    }

    /// An account's role and last nonce, if the chain knows it.
    pub fn account(&self, id: &PublicId) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// Every account, in key order.
    pub fn accounts(&self) -> impl Iterator<Item = (&PublicId, &Account)> {
        self.accounts.iter()
    }

    /// The validator set.
    pub fn validators(&self) -> &BTreeSet<PublicId> {
        &self.validators
    }

    /// A registered document's record.
    pub fn document(&self, id: &DocumentId) -> Option<&DocumentRecord> {
        self.documents.get(id)
    }

    /// How many documents are registered (superseded versions included).
    pub fn document_count(&self) -> usize {
        self.documents.len()
    }

    /// The current cluster layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The layout before the last change, while readers may still need it.
    pub fn previous_layout(&self) -> Option<&Layout> {
        self.previous_layout.as_ref()
    }

    /// Per storage peer, the first read record its next `AuditRoot` must start at.
    pub fn audits(&self) -> &BTreeMap<PublicId, u64> {
        &self.audits
    }

    /// The peer hosting each validator, where a `SetValidatorHost` said.
    pub fn validator_hosts(&self) -> &BTreeMap<PublicId, NodeInfo> {
        &self.validator_hosts
    }

    /// `document`'s record, if it is registered and `sender` owns it.
    fn owned(&self, document: &DocumentId, sender: PublicId) -> Result<&DocumentRecord, TxError> {
        let record = self
            .documents
            .get(document)
            .ok_or(TxError::NotRegistered(*document))?;
        if record.owner != sender {
            return Err(TxError::NotOwner {
                document: *document,
                owner: record.owner,
            });
        }
        Ok(record)
    }

    /// The layout's nodes with some weights changed; every named node must exist.
    fn with_weights(&self, weights: &[(PublicId, u32)]) -> Result<Vec<NodeInfo>, TxError> {
        let mut nodes = self.layout.nodes.clone();
        for (key, weight) in weights {
            let node = nodes
                .iter_mut()
                .find(|n| n.key == *key)
                .ok_or(TxError::NoSuchNode(*key))?;
            node.weight = *weight;
        }
        Ok(nodes)
    }

    fn next_layout(&self, nodes: Vec<NodeInfo>) -> Result<Layout, TxError> {
        Layout::new(self.layout.epoch + 1, nodes).map_err(|e| TxError::Invalid(e.to_string()))
    }
}

/// A validator host entry, checked: a real key and an ip:port.
fn host_entry(host: &PublicId, addr: &str) -> Result<NodeInfo, TxError> {
    valid_key(host)?;
    if addr.len() > MAX_LABEL || addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(TxError::Invalid(format!(
            "validator host address {addr:?} is not an ip:port"
        )));
    }
    Ok(NodeInfo {
        key: *host,
        zone: "validators".into(),
        weight: 0,
        addr: addr.to_owned(),
    })
}

/// The checks every new grant passes, alone or carried by a `Supersede`.
fn check_grant(sender: PublicId, grantee: &PublicId, wrapped: &WrappedKey) -> Result<(), TxError> {
    if wrapped.sealed.len() != SEALED_LEN {
        return Err(TxError::Invalid(format!(
            "a wrapped key is {SEALED_LEN} bytes, not {}",
            wrapped.sealed.len()
        )));
    }
    if *grantee == sender {
        return Err(TxError::Invalid(
            "a department always reads its own documents".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tx::Tx;
    use crate::identity::Identity;

    struct World {
        validator: Identity,
        dept: Identity,
        other_dept: Identity,
        operator: Identity,
        citizen: Identity,
        state: State,
    }

    fn world() -> World {
        let validator = Identity::generate(Role::Validator);
        let dept = Identity::generate(Role::Department);
        let other_dept = Identity::generate(Role::Department);
        let operator = Identity::generate(Role::Operator);
        let citizen = Identity::generate(Role::Citizen);
        let nodes = (0..3)
            .map(|i| NodeInfo {
                key: Identity::generate(Role::Node).public(),
                zone: format!("z{i}"),
                weight: 100,
                addr: format!("127.0.0.1:{}", 7000 + i),
            })
            .collect();
        let genesis = Genesis {
            chain_id: "test".into(),
            validators: vec![GenesisAccount::of(&validator, Role::Validator)],
            accounts: vec![
                GenesisAccount::of(&dept, Role::Department),
                GenesisAccount::of(&other_dept, Role::Department),
                GenesisAccount::of(&operator, Role::Operator),
                GenesisAccount::of(&citizen, Role::Citizen),
            ],
            nodes,
        };
        let state = State::genesis(&genesis).unwrap();
        sign_for(&state);
        World {
            validator,
            dept,
            other_dept,
            operator,
            citizen,
            state,
        }
    }

    thread_local! {
        /// The chain the tests' transactions are signed for (the last world made).
        static CHAIN: std::cell::Cell<ChainKey> = const { std::cell::Cell::new(ChainKey([0; 32])) };
    }

    /// Signs the transactions of this thread's tests for `state`'s chain.
    fn sign_for(state: &State) {
        CHAIN.with(|c| c.set(state.chain_key()));
    }

    fn tx(who: &Identity, nonce: u64, body: TxBody) -> SignedTx {
        Tx {
            sender: who.public(),
            nonce,
            body,
        }
        .sign(who, &CHAIN.with(|c| c.get()))
    }

    /// `body` sent by `approvers[0]` with `nonce`, approved by every one of `approvers`.
    fn approved(state: &State, approvers: &[&Identity], nonce: u64, body: TxBody) -> SignedTx {
        let mut t = Tx {
            sender: approvers[0].public(),
            nonce,
            body,
        };
        let approvals = approvers
            .iter()
            .map(|v| t.approve(v, &state.chain_key()))
            .collect();
        *t.body.approvals_mut().expect("a governance transaction") = approvals;
        t.sign(approvers[0], &state.chain_key())
    }

    fn doc(n: u8) -> DocumentId {
        DocumentId::of(&[n])
    }

    /// Applies and asserts that a refusal changed nothing.
    fn refused(state: &mut State, stx: &SignedTx) -> TxError {
        let before = state.clone();
        let root = state.root();
        let err = state.apply(stx, 9, 0).unwrap_err();
        assert_eq!(*state, before);
        assert_eq!(state.root(), root);
        err
    }

    fn put_name(bucket: &str, key: &str, n: u8) -> TxBody {
        TxBody::PutName {
            bucket: bucket.into(),
            key: key.into(),
            document: doc(n),
            size: u64::from(n),
            meta: vec![n; 4],
        }
    }

    #[test]
    fn names_register_supersede_and_unbind_only_in_the_owners_bucket() {
        let mut w = world();
        let root0 = w.state.root();
        let create = |b: &str| TxBody::CreateBucket { bucket: b.into() };
        // Only departments keep buckets; names need a bucket.
        assert!(matches!(
            refused(&mut w.state, &tx(&w.operator, 1, create("photos"))),
            TxError::Forbidden { .. }
        ));
        assert!(matches!(
            refused(&mut w.state, &tx(&w.dept, 1, put_name("photos", "a", 1))),
            TxError::NoSuchBucket(_)
        ));
        assert!(matches!(
            refused(&mut w.state, &tx(&w.dept, 1, create("No_Such"))),
            TxError::Invalid(_)
        ));
        w.state
            .apply(&tx(&w.dept, 1, create("photos")), 1, 0)
            .unwrap();
        assert_ne!(w.state.root(), root0, "a bucket changes the state root");
        assert!(matches!(
            refused(&mut w.state, &tx(&w.other_dept, 1, create("photos"))),
            TxError::BucketExists(_)
        ));
        // A name registers its document in the same transaction.
        w.state
            .apply(&tx(&w.dept, 2, put_name("photos", "a/1", 1)), 2, 0)
            .unwrap();
        assert_eq!(w.state.document(&doc(1)).unwrap().owner, w.dept.public());
        let bound = w.state.names().name("photos", "a/1").unwrap();
        assert_eq!((bound.document, bound.versions, bound.size), (doc(1), 1, 1));
        // Another department may neither write nor delete in it, nor delete the bucket.
        for body in [
            put_name("photos", "a/1", 9),
            TxBody::DeleteName {
                bucket: "photos".into(),
                key: "a/1".into(),
            },
            TxBody::DeleteBucket {
                bucket: "photos".into(),
            },
        ] {
            assert!(matches!(
                refused(&mut w.state, &tx(&w.other_dept, 1, body)),
                TxError::NotBucketOwner { .. }
            ));
        }
        // A document registered already cannot be named.
        assert!(matches!(
            refused(&mut w.state, &tx(&w.dept, 3, put_name("photos", "b", 1))),
            TxError::AlreadyRegistered(_)
        ));
        // A new PUT of the name supersedes the previous version.
        w.state
            .apply(&tx(&w.dept, 3, put_name("photos", "a/1", 2)), 3, 0)
            .unwrap();
        assert_eq!(
            w.state.document(&doc(1)).unwrap().superseded_by,
            Some(doc(2))
        );
        assert_eq!(
            w.state.document(&doc(2)).unwrap().supersedes,
            Some(PreviousVersion {
                document: doc(1),
                kind: VersionKind::Reissue
            })
        );
        assert_eq!(w.state.names().name("photos", "a/1").unwrap().versions, 2);
        // A bucket that holds names is not deleted; a delete unbinds, the documents stay.
        let delete_bucket = TxBody::DeleteBucket {
            bucket: "photos".into(),
        };
        assert!(matches!(
            refused(&mut w.state, &tx(&w.dept, 4, delete_bucket.clone())),
            TxError::BucketNotEmpty(_)
        ));
        let unbind = TxBody::DeleteName {
            bucket: "photos".into(),
            key: "a/1".into(),
        };
        w.state
            .apply(&tx(&w.dept, 4, unbind.clone()), 4, 0)
            .unwrap();
        assert!(w.state.names().name("photos", "a/1").is_none());
        assert!(w.state.document(&doc(2)).is_some());
        assert!(matches!(
            refused(&mut w.state, &tx(&w.dept, 5, unbind)),
            TxError::NoSuchName { .. }
        ));
        // Replayed: refused by its nonce.
        assert!(matches!(
            refused(&mut w.state, &tx(&w.dept, 3, put_name("photos", "c", 7))),
            TxError::BadNonce { .. }
        ));
        w.state.apply(&tx(&w.dept, 5, delete_bucket), 5, 0).unwrap();
        assert!(w.state.names().bucket("photos").is_none());
        assert!(w.state.names().buckets_of(&w.dept.public()).is_empty());
    }

    #[test]
    fn the_names_root_depends_only_on_the_names() {
        let mut a = world();
        let mut b = State::clone(&a.state);
        let dept = &a.dept;
        let create = |x: &str| TxBody::CreateBucket { bucket: x.into() };
        a.state.apply(&tx(dept, 1, create("one")), 1, 0).unwrap();
        a.state
            .apply(&tx(dept, 2, put_name("one", "k", 1)), 1, 0)
            .unwrap();
        b.apply(&tx(dept, 1, create("one")), 1, 0).unwrap();
        b.apply(&tx(dept, 2, put_name("one", "k", 1)), 1, 0)
            .unwrap();
        assert_eq!(a.state.root(), b.root());
        let decoded: State =
            postcard::from_bytes(&postcard::to_allocvec(&a.state).unwrap()).unwrap();
        assert_eq!(decoded.root(), a.state.root());
        assert_eq!(
            decoded.names().list("one", "", None, b"", 10).names.len(),
            1
        );
        b.apply(&tx(dept, 3, put_name("one", "l", 2)), 1, 0)
            .unwrap();
        assert_ne!(a.state.root(), b.root());
    }

    #[test]
    fn departments_register_and_supersede_their_documents() {
        let mut w = world();
        let root0 = w.state.root();
        w.state
            .apply(
                &tx(&w.dept, 1, TxBody::RegisterDocument { document: doc(1) }),
                1,
                0,
            )
            .unwrap();
        assert_ne!(w.state.root(), root0);
        assert_eq!(w.state.documents[&doc(1)].owner, w.dept.public());
        w.state
            .apply(
                &tx(
                    &w.dept,
                    2,
                    TxBody::Supersede {
                        old: doc(1),
                        new: doc(2),
                        kind: VersionKind::Reissue,
                        grants: vec![],
                    },
                ),
                2,
                0,
            )
            .unwrap();
        assert_eq!(w.state.documents[&doc(1)].superseded_by, Some(doc(2)));
        assert_eq!(w.state.accounts[&w.dept.public()].nonce, 2);
    }

    #[test]
    fn replayed_forged_wrong_role_and_invalid_transactions_change_nothing() {
        let mut w = world();
        let first = tx(&w.dept, 1, TxBody::RegisterDocument { document: doc(1) });
        w.state.apply(&first, 1, 0).unwrap();
        // Replay.
        assert!(matches!(
            refused(&mut w.state, &first),
            TxError::BadNonce { .. }
        ));
        // Skipped nonce.
        let skip = tx(&w.dept, 5, TxBody::RegisterDocument { document: doc(3) });
        assert!(matches!(
            refused(&mut w.state, &skip),
            TxError::BadNonce { .. }
        ));
        // Forged: signed by someone else.
        let mut forged = tx(&w.dept, 2, TxBody::RegisterDocument { document: doc(4) });
        forged.signature = crate::chain::tx::Signature::from_bytes(
            w.citizen
                .sign(&forged.tx.signing_bytes(&w.state.chain_key())),
        );
        assert!(matches!(
            refused(&mut w.state, &forged),
            TxError::BadSignature(_)
        ));
        // Unknown sender.
        let stranger = Identity::generate(Role::Department);
        let t = tx(&stranger, 1, TxBody::RegisterDocument { document: doc(5) });
        assert!(matches!(
            refused(&mut w.state, &t),
            TxError::UnknownSender(_)
        ));
        // Wrong roles.
        let t = tx(&w.citizen, 1, TxBody::RegisterDocument { document: doc(6) });
        assert!(matches!(
            refused(&mut w.state, &t),
            TxError::Forbidden { .. }
        ));
        let node = w.state.layout.nodes[0].key;
        let t = tx(&w.dept, 2, TxBody::DrainNode { node });
        assert!(matches!(
            refused(&mut w.state, &t),
            TxError::Forbidden { .. }
        ));
        let t = tx(
            &w.operator,
            1,
            TxBody::AddValidator {
                validator: w.citizen.public(),
                host: None,
                approvals: vec![],
            },
        );
        assert!(matches!(
            refused(&mut w.state, &t),
            TxError::Forbidden { .. }
        ));
        // Another department's document.
        let t = tx(
            &w.other_dept,
            1,
            TxBody::Supersede {
                old: doc(1),
                new: doc(7),
                kind: VersionKind::Reissue,
                grants: vec![],
            },
        );
        assert!(matches!(
            refused(&mut w.state, &t),
            TxError::NotOwner { .. }
        ));
        // Duplicate registration.
        let t = tx(
            &w.other_dept,
            1,
            TxBody::RegisterDocument { document: doc(1) },
        );
        assert!(matches!(
            refused(&mut w.state, &t),
            TxError::AlreadyRegistered(_)
        ));
        // Removing a node that is not drained; the last validator.
        let t = tx(&w.operator, 1, TxBody::RemoveNode { node });
        assert!(matches!(refused(&mut w.state, &t), TxError::NotDrained(_)));
        let t = approved(
            &w.state,
            &[&w.validator],
            1,
            TxBody::RemoveValidator {
                validator: w.validator.public(),
                approvals: vec![],
            },
        );
        assert_eq!(refused(&mut w.state, &t), TxError::LastValidator);
    }

    #[test]
    fn keys_that_are_not_ed25519_points_are_refused() {
        let mut w = world();
        // Find 32 bytes that do not decompress to a curve point.
        let bad = (0u8..=255)
            .map(|b| [b; 32])
            .find(|b| PublicId::from_bytes(*b).is_err())
            .map(PublicId::from_raw)
            .expect("some repeated byte is not a point");
        let before = w.state.root();
        let add = TxBody::AddNode {
            node: bad,
            addr: "127.0.0.1:7100".into(),
            zone: "z0".into(),
            weight: 100,
        };
        let t = tx(&w.operator, 1, add);
        assert!(matches!(refused(&mut w.state, &t), TxError::Invalid(_)));
        let add = TxBody::AddValidator {
            validator: bad,
            host: None,
            approvals: vec![],
        };
        let t = approved(&w.state, &[&w.validator], 1, add);
        assert!(matches!(refused(&mut w.state, &t), TxError::Invalid(_)));
        assert_eq!(w.state.root(), before);
    }

    #[test]
    fn operators_change_the_layout_in_epochs() {
        let mut w = world();
        let new_node = Identity::generate(Role::Node).public();
        let add = TxBody::AddNode {
            node: new_node,
            addr: "127.0.0.1:7100".into(),
            zone: "z0".into(),
            weight: 100,
        };
        w.state.apply(&tx(&w.operator, 1, add), 1, 0).unwrap();
        assert_eq!(w.state.layout.epoch, 2);
        assert_eq!(w.state.previous_layout.as_ref().unwrap().epoch, 1);
        assert_eq!(w.state.accounts[&new_node].role, Role::Node);
        w.state
            .apply(
                &tx(&w.operator, 2, TxBody::DrainNode { node: new_node }),
                2,
                0,
            )
            .unwrap();
        assert_eq!(w.state.layout.epoch, 3);
        w.state
            .apply(
                &tx(&w.operator, 3, TxBody::RemoveNode { node: new_node }),
                3,
                0,
            )
            .unwrap();
        assert_eq!(w.state.layout.epoch, 4);
        assert!(!w.state.accounts.contains_key(&new_node));
        assert_eq!(w.state.layout.nodes.len(), 3);
    }

    #[test]
    fn owners_grant_and_revoke_and_grants_expire() {
        let mut w = world();
        let (d, c) = (doc(1), w.citizen.public());
        w.state
            .apply(
                &tx(&w.dept, 1, TxBody::RegisterDocument { document: d }),
                1,
                0,
            )
            .unwrap();
        let address = crate::grant::GrantAddress::of(&w.citizen).unwrap();
        let key = crate::crypto::DataKey::generate();
        let wrapped = WrappedKey::wrap(&key, &d, &address).unwrap();
        let grant = |expires_ms| TxBody::Grant {
            document: d,
            grantee: c,
            wrapped: wrapped.clone(),
            expires_ms,
        };
        // Another department may not grant what it does not own; a citizen may not grant.
        assert!(matches!(
            refused(&mut w.state, &tx(&w.other_dept, 1, grant(None))),
            TxError::NotOwner { .. }
        ));
        assert!(matches!(
            refused(&mut w.state, &tx(&w.citizen, 1, grant(None))),
            TxError::Forbidden { .. }
        ));
        let mut short = wrapped.clone();
        short.sealed.pop();
        let bad = TxBody::Grant {
            document: d,
            grantee: c,
            wrapped: short,
            expires_ms: None,
        };
        assert!(matches!(
            refused(&mut w.state, &tx(&w.dept, 2, bad)),
            TxError::Invalid(_)
        ));
        let record = &w.state.documents[&d];
        assert!(record.may_read(&w.dept.public(), 0));
        assert!(!record.may_read(&c, 0));
        w.state
            .apply(&tx(&w.dept, 2, grant(Some(1_000))), 2, 0)
            .unwrap();
        let record = &w.state.documents[&d];
        assert!(record.may_read(&c, 999));
        assert!(!record.may_read(&c, 1_000), "expired");
        assert!(!record.may_read(&w.other_dept.public(), 0));
        assert_eq!(
            record
                .live_grant(&c, 0)
                .unwrap()
                .wrapped
                .unwrap(&d, &w.citizen)
                .unwrap()
                .as_bytes(),
            key.as_bytes()
        );
        w.state
            .apply(
                &tx(
                    &w.dept,
                    3,
                    TxBody::Revoke {
                        document: d,
                        grantee: c,
                    },
                ),
                3,
                0,
            )
            .unwrap();
        assert!(!w.state.documents[&d].may_read(&c, 0));
        assert!(matches!(
            refused(
                &mut w.state,
                &tx(
                    &w.dept,
                    4,
                    TxBody::Revoke {
                        document: d,
                        grantee: c
                    }
                )
            ),
            TxError::NoSuchGrant { .. }
        ));
        // A superseded document takes no new grants.
        let sup = TxBody::Supersede {
            old: d,
            new: doc(2),
            kind: VersionKind::Reissue,
            grants: vec![],
        };
        w.state.apply(&tx(&w.dept, 4, sup), 4, 0).unwrap();
        assert_eq!(
            refused(&mut w.state, &tx(&w.dept, 5, grant(None))),
            TxError::Superseded(d)
        );
    }

    #[test]
    fn a_supersede_carries_grants_in_one_transaction_and_a_rekey_only_carries_existing_ones() {
        let mut w = world();
        let (d1, d2, d3) = (doc(1), doc(2), doc(3));
        let (c, dept) = (w.citizen.public(), w.dept.public());
        let other = Identity::generate(Role::Citizen);
        let address = crate::grant::GrantAddress::of(&w.citizen).unwrap();
        let key = crate::crypto::DataKey::generate();
        let wrap = |d: &DocumentId| WrappedKey::wrap(&key, d, &address).unwrap();
        w.state
            .apply(
                &tx(&w.dept, 1, TxBody::RegisterDocument { document: d1 }),
                1,
                0,
            )
            .unwrap();
        let grant = TxBody::Grant {
            document: d1,
            grantee: c,
            wrapped: wrap(&d1),
            expires_ms: Some(5_000),
        };
        w.state.apply(&tx(&w.dept, 2, grant), 2, 0).unwrap();
        let carried = |grantee, d: &DocumentId, expires_ms| CarriedGrant {
            grantee,
            wrapped: wrap(d),
            expires_ms,
        };
        let sup = |kind, grants| TxBody::Supersede {
            old: d1,
            new: d2,
            kind,
            grants,
        };
        // Refused, each for its reason, and nothing changes.
        let cases = [
            (
                tx(&w.other_dept, 1, sup(VersionKind::Rekey, vec![])),
                "not owner",
            ),
            (tx(&w.citizen, 1, sup(VersionKind::Rekey, vec![])), "role"),
            (
                tx(
                    &w.dept,
                    3,
                    sup(VersionKind::Rekey, vec![carried(c, &d2, None)]),
                ),
                "rekey changing the expiry",
            ),
            (
                tx(
                    &w.dept,
                    3,
                    sup(VersionKind::Rekey, vec![carried(other.public(), &d2, None)]),
                ),
                "rekey adding a reader",
            ),
            (
                tx(
                    &w.dept,
                    3,
                    sup(VersionKind::Reissue, vec![carried(dept, &d2, None)]),
                ),
                "grant to the owner",
            ),
            (
                tx(
                    &w.dept,
                    3,
                    sup(
                        VersionKind::Reissue,
                        vec![carried(c, &d2, None), carried(c, &d2, None)],
                    ),
                ),
                "twice",
            ),
            (
                tx(
                    &w.dept,
                    3,
                    TxBody::Supersede {
                        old: d1,
                        new: d1,
                        kind: VersionKind::Rekey,
                        grants: vec![],
                    },
                ),
                "new id already registered",
            ),
            (
                tx(
                    &w.dept,
                    3,
                    TxBody::Supersede {
                        old: d3,
                        new: d2,
                        kind: VersionKind::Rekey,
                        grants: vec![],
                    },
                ),
                "unknown id",
            ),
        ];
        for (t, why) in &cases {
            let err = refused(&mut w.state, t);
            assert!(!err.to_string().is_empty(), "{why}");
        }
        let mut redirected = carried(c, &d2, Some(5_000));
        redirected.wrapped = WrappedKey::wrap(
            &key,
            &d2,
            &crate::grant::GrantAddress::of(&Identity::generate(Role::Citizen)).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            refused(
                &mut w.state,
                &tx(&w.dept, 3, sup(VersionKind::Rekey, vec![redirected]))
            ),
            TxError::NotCarried { .. }
        ));
        let mut short = carried(c, &d2, Some(5_000));
        short.wrapped.sealed.truncate(10);
        assert!(matches!(
            refused(
                &mut w.state,
                &tx(&w.dept, 3, sup(VersionKind::Rekey, vec![short]))
            ),
            TxError::Invalid(_)
        ));

        // The rekey carries the citizen's grant, expiry unchanged, in the same block.
        let rekey = tx(
            &w.dept,
            3,
            sup(VersionKind::Rekey, vec![carried(c, &d2, Some(5_000))]),
        );
        w.state.apply(&rekey, 3, 0).unwrap();
        assert_eq!(w.state.documents[&d1].superseded_by, Some(d2));
        let new = &w.state.documents[&d2];
        assert_eq!(
            new.supersedes,
            Some(PreviousVersion {
                document: d1,
                kind: VersionKind::Rekey
            })
        );
        assert_eq!(new.owner, dept);
        assert_eq!(new.height, 3);
        let g = new.live_grant(&c, 0).unwrap();
        assert_eq!((g.expires_ms, g.height), (Some(5_000), 3));
        assert_eq!(
            g.wrapped.unwrap(&d2, &w.citizen).unwrap().as_bytes(),
            key.as_bytes()
        );
        // Replayed, or superseding an old version again: refused.
        assert!(matches!(
            refused(&mut w.state, &rekey),
            TxError::BadNonce { .. }
        ));
        assert_eq!(
            refused(
                &mut w.state,
                &tx(&w.dept, 4, sup(VersionKind::Reissue, vec![]))
            ),
            TxError::AlreadySuperseded(d1)
        );
        // A reissue may grant new readers.
        let reissue = TxBody::Supersede {
            old: d2,
            new: d3,
            kind: VersionKind::Reissue,
            grants: vec![carried(c, &d3, None), carried(other.public(), &d3, None)],
        };
        w.state.apply(&tx(&w.dept, 4, reissue), 4, 0).unwrap();
        assert_eq!(w.state.documents[&d3].grants.len(), 2);
        assert_eq!(
            w.state.documents[&d3].supersedes.unwrap().kind,
            VersionKind::Reissue
        );
    }

    #[test]
    fn only_a_storage_node_commits_audit_roots_for_itself_in_sequence() {
        let mut w = world();
        let node = Identity::generate(Role::Node);
        let other = Identity::generate(Role::Node);
        let mut genesis_state = State::genesis(&Genesis {
            chain_id: "test".into(),
            validators: vec![GenesisAccount::of(&w.validator, Role::Validator)],
            accounts: vec![
                GenesisAccount::of(&node, Role::Node),
                GenesisAccount::of(&other, Role::Node),
                GenesisAccount::of(&w.dept, Role::Department),
                GenesisAccount::of(&w.operator, Role::Operator),
            ],
            nodes: vec![],
        })
        .unwrap();
        std::mem::swap(&mut w.state, &mut genesis_state);
        sign_for(&w.state);
        let root_before = w.state.root();
        let audit = |peer: &Identity, first, count| TxBody::AuditRoot {
            peer: peer.public(),
            first,
            count,
            root: [7; 32],
        };
        // Another role, another peer's roots, an empty range, a gap: refused, nothing changes.
        assert!(matches!(
            refused(&mut w.state, &tx(&w.dept, 1, audit(&w.dept, 0, 3))),
            TxError::Forbidden { .. }
        ));
        assert!(matches!(
            refused(&mut w.state, &tx(&w.operator, 1, audit(&node, 0, 3))),
            TxError::Forbidden { .. }
        ));
        let err = refused(&mut w.state, &tx(&other, 1, audit(&node, 0, 3)));
        assert!(err.to_string().contains("only for itself"), "{err}");
        assert!(matches!(
            refused(&mut w.state, &tx(&node, 1, audit(&node, 0, 0))),
            TxError::Invalid(_)
        ));
        assert!(matches!(
            refused(&mut w.state, &tx(&node, 1, audit(&node, 1, 3))),
            TxError::AuditGap { expected: 0, .. }
        ));
        assert_eq!(w.state.root(), root_before);
        w.state
            .apply(&tx(&node, 1, audit(&node, 0, 3)), 1, 0)
            .unwrap();
        assert_eq!(w.state.audits[&node.public()], 3);
        assert_ne!(w.state.root(), root_before);
        // The same range again (a second root for records already covered): refused.
        assert!(matches!(
            refused(&mut w.state, &tx(&node, 2, audit(&node, 0, 3))),
            TxError::AuditGap { expected: 3, .. }
        ));
        w.state
            .apply(&tx(&node, 2, audit(&node, 3, 1)), 2, 0)
            .unwrap();
        w.state
            .apply(&tx(&other, 1, audit(&other, 0, 5)), 2, 0)
            .unwrap();
        assert_eq!(w.state.audits[&node.public()], 4);
        assert_eq!(w.state.audits[&other.public()], 5);
    }

    /// A chain of three validators and a department, and its state (signing set up).
    fn three_validators() -> (Vec<Identity>, State) {
        let v: Vec<Identity> = (0..3)
            .map(|_| Identity::generate(Role::Validator))
            .collect();
        let genesis = Genesis {
            chain_id: "gov".into(),
            validators: v
                .iter()
                .map(|i| GenesisAccount::of(i, Role::Validator))
                .collect(),
            accounts: vec![],
            nodes: vec![],
        };
        let state = State::genesis(&genesis).unwrap();
        sign_for(&state);
        (v, state)
    }

    #[test]
    fn validator_set_changes_need_a_majority_and_node_ids_never_collide() {
        let (v, mut state) = three_validators();
        let newcomer = Identity::generate(Role::Validator);
        let add = |who: &PublicId| TxBody::AddValidator {
            validator: *who,
            host: Some((
                Identity::generate(Role::Node).public(),
                "127.0.0.1:7000".into(),
            )),
            approvals: vec![],
        };
        // One validator alone cannot seat another, nor with an outsider's approval.
        let alone = approved(&state, &[&v[0]], 1, add(&newcomer.public()));
        assert!(matches!(
            refused(&mut state, &alone),
            TxError::NoMajority {
                approved: 1,
                needed: 2,
                validators: 3,
                ..
            }
        ));
        let with_outsider = approved(&state, &[&v[0], &newcomer], 1, add(&newcomer.public()));
        assert!(matches!(
            refused(&mut state, &with_outsider),
            TxError::BadApproval { .. }
        ));
        // Approvals of another transaction (another nonce) do not carry over.
        let mut stale = approved(&state, &[&v[0], &v[1]], 2, add(&newcomer.public()));
        stale.tx.nonce = 1;
        let stale = stale.tx.sign(&v[0], &state.chain_key());
        assert!(matches!(
            refused(&mut state, &stale),
            TxError::BadApproval { .. }
        ));
        // A key whose raft node id is a sitting validator's: refused even with a majority.
        let mut bytes = v[1].public().to_bytes();
        let twin = (0u8..=255)
            .find_map(|b| {
                bytes[31] = b;
                PublicId::from_bytes(bytes)
                    .ok()
                    .filter(|k| *k != v[1].public())
            })
            .expect("some last byte gives a curve point");
        assert_eq!(node_id(&twin), node_id(&v[1].public()));
        let t = approved(&state, &[&v[0], &v[2]], 1, add(&twin));
        assert!(matches!(
            refused(&mut state, &t),
            TxError::NodeIdTaken { holder, .. } if holder == v[1].public()
        ));
        // With a majority: seated, its host named.
        let t = approved(&state, &[&v[0], &v[2]], 1, add(&newcomer.public()));
        state.apply(&t, 1, 0).unwrap();
        assert!(state.validators.contains(&newcomer.public()));
        assert!(state.validator_hosts.contains_key(&newcomer.public()));
        // Now four: two approvals are not a majority to remove one.
        let remove = TxBody::RemoveValidator {
            validator: v[2].public(),
            approvals: vec![],
        };
        let t = approved(&state, &[&v[0], &v[1]], 2, remove.clone());
        assert!(matches!(
            refused(&mut state, &t),
            TxError::NoMajority { needed: 3, .. }
        ));
        // Moving another validator's host alone: refused; its own: allowed alone.
        let host = |validator: &Identity| TxBody::SetValidatorHost {
            validator: validator.public(),
            host: Identity::generate(Role::Node).public(),
            addr: "127.0.0.1:7001".into(),
            approvals: vec![],
        };
        let t = tx(&v[0], 2, host(&v[1]));
        assert!(matches!(
            refused(&mut state, &t),
            TxError::NoMajority { .. }
        ));
        state.apply(&tx(&v[1], 1, host(&v[1])), 2, 0).unwrap();
        let t = approved(&state, &[&v[0], &v[2], &newcomer], 2, host(&v[1]));
        state.apply(&t, 3, 0).unwrap();
        // A validator not admitted gets its host in its AddValidator only.
        let stranger = Identity::generate(Role::Validator);
        let t = approved(&state, &[&v[0], &v[1], &v[2]], 3, host(&stranger));
        assert!(matches!(
            refused(&mut state, &t),
            TxError::NoSuchValidator(_)
        ));
        let t = approved(&state, &[&v[0], &v[1], &newcomer], 3, remove);
        state.apply(&t, 4, 0).unwrap();
        assert!(!state.validators.contains(&v[2].public()));
    }

    #[test]
    fn a_removed_account_keeps_its_nonce_and_its_old_transactions_stay_spent() {
        let (v, mut state) = three_validators();
        let leaving = &v[2];
        // The validator leaving has sent two transactions (nonce 2).
        let moves: Vec<SignedTx> = (1..=2)
            .map(|n| {
                let body = TxBody::SetValidatorHost {
                    validator: leaving.public(),
                    host: Identity::generate(Role::Node).public(),
                    addr: format!("127.0.0.1:{}", 7000 + n),
                    approvals: vec![],
                };
                tx(leaving, n, body)
            })
            .collect();
        for (h, t) in moves.iter().enumerate() {
            state.apply(t, h as u64 + 1, 0).unwrap();
        }
        let remove = TxBody::RemoveValidator {
            validator: leaving.public(),
            approvals: vec![],
        };
        let before = state.root();
        state
            .apply(&approved(&state, &[&v[0], &v[1]], 1, remove), 3, 0)
            .unwrap();
        assert_eq!(state.retired_nonce(&leaving.public()), Some(2));
        assert_ne!(state.root(), before);
        let add = TxBody::AddValidator {
            validator: leaving.public(),
            host: None,
            approvals: vec![],
        };
        state
            .apply(&approved(&state, &[&v[0], &v[1]], 2, add), 4, 0)
            .unwrap();
        // Back, it continues from nonce 2: its old transactions are replays.
        assert_eq!(state.accounts[&leaving.public()].nonce, 2);
        assert_eq!(state.retired_nonce(&leaving.public()), None);
        for t in &moves {
            assert!(matches!(
                refused(&mut state, t),
                TxError::BadNonce { expected: 3, .. }
            ));
        }
        // A storage peer removed and added again likewise.
        let mut w = world();
        let node = Identity::generate(Role::Node);
        let add = TxBody::AddNode {
            node: node.public(),
            addr: "127.0.0.1:7100".into(),
            zone: "z0".into(),
            weight: 100,
        };
        w.state
            .apply(&tx(&w.operator, 1, add.clone()), 1, 0)
            .unwrap();
        let audit = tx(
            &node,
            1,
            TxBody::AuditRoot {
                peer: node.public(),
                first: 0,
                count: 1,
                root: [1; 32],
            },
        );
        w.state.apply(&audit, 2, 0).unwrap();
        for (n, body) in [
            TxBody::DrainNode {
                node: node.public(),
            },
            TxBody::RemoveNode {
                node: node.public(),
            },
            add,
        ]
        .into_iter()
        .enumerate()
        {
            w.state
                .apply(&tx(&w.operator, n as u64 + 2, body), 3, 0)
                .unwrap();
        }
        assert_eq!(w.state.accounts[&node.public()].nonce, 1);
        assert!(matches!(
            refused(&mut w.state, &audit),
            TxError::BadNonce { .. }
        ));
    }

    #[test]
    fn a_transaction_of_another_chain_is_refused() {
        let mut a = world();
        let mut other = a.state.clone();
        other.chain_key = ChainKey([9; 32]);
        let t = tx(&a.dept, 1, TxBody::RegisterDocument { document: doc(1) });
        a.state.apply(&t, 1, 0).unwrap();
        let before = other.clone();
        assert!(matches!(
            other.apply(&t, 1, 0),
            Err(TxError::BadSignature(_))
        ));
        assert_eq!(other, before);
    }

    #[test]
    fn the_same_transactions_give_the_same_root() {
        let mut a = world();
        let mut b = State { ..a.state.clone() };
        let txs = [
            tx(&a.dept, 1, TxBody::RegisterDocument { document: doc(1) }),
            tx(&a.dept, 2, TxBody::RegisterDocument { document: doc(2) }),
        ];
        for (h, t) in txs.iter().enumerate() {
            a.state.apply(t, h as u64, 0).unwrap();
            b.apply(t, h as u64, 0).unwrap();
        }
        assert_eq!(a.state.root(), b.root());
    }
}
