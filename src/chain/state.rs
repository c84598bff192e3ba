//! Ledger state: accounts and roles, validators, registered documents, and the cluster
//! layout; and [`State::apply`], the only code that changes it.
//!
//! `apply` checks everything first — signature, sender account, nonce, the sender's role,
//! and the transaction's own conditions — and only then changes anything, so a refused
//! transaction leaves the state exactly as it was. The state root is a Merkle root over the
//! canonical encoding of every entry in key order, so two validators that applied the same
//! transactions agree on it byte for byte.
//!
//! Not for: ordering transactions (consensus), persistence (the ledger store), or reading
//! shards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::merkle::{self, Hash};
use super::rooted::RootedMap;
use super::tx::{CarriedGrant, MAX_LABEL, SignedTx, TxBody, TxError, VersionKind};
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

impl Genesis {
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
}

impl StateTop {
    /// The state root: a Merkle root over the chain id, the accounts' root, every
    /// validator, the documents' root, the layouts, and the audit cursors and validator
    /// hosts once there are any.
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
        Ok(Self {
            chain_id: genesis.chain_id.clone(),
            accounts,
            validators: genesis.validators.iter().map(|v| v.id).collect(),
            documents: RootedMap::new(),
            layout,
            previous_layout: None,
            audits: BTreeMap::new(),
            validator_hosts: BTreeMap::new(),
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

    /// Checks `stx` against the current state and, only if every check passes, applies it.
    pub fn apply(&mut self, stx: &SignedTx, height: u64) -> Result<(), TxError> {
        stx.verify_signature()?;
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
            | TxBody::SetValidatorHost { .. } => self.validator_change(caller, &tx.body)?,
            TxBody::AuditRoot { .. } => self.audit_change(caller, &tx.body)?,
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
                    s.accounts.insert(
                        node,
                        Account {
                            role: Role::Node,
                            nonce: 0,
                        },
                    );
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
                    s.accounts.remove(&node);
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

    /// What an `AddValidator`, `RemoveValidator` or `SetValidatorHost` changes, once checked.
    fn validator_change(&self, caller: Caller, body: &TxBody) -> Result<Change, TxError> {
        let sender = caller.id;
        let require = |wanted: Role, action: &'static str| caller.require(wanted, action);
        Ok(match body {
            TxBody::AddValidator { validator } => {
                require(Role::Validator, "change the validator set")?;
                valid_key(validator)?;
                if self.validators.contains(validator) {
                    return Err(TxError::ValidatorExists(*validator));
                }
                if self.accounts.contains_key(validator) {
                    return Err(TxError::AccountExists(*validator));
                }
                let v = *validator;
                Box::new(move |s| {
                    s.validators.insert(v);
                    s.accounts.insert(
                        v,
                        Account {
                            role: Role::Validator,
                            nonce: 0,
                        },
                    );
                })
            }
            TxBody::RemoveValidator { validator } => {
                require(Role::Validator, "change the validator set")?;
                if !self.validators.contains(validator) {
                    return Err(TxError::NoSuchValidator(*validator));
                }
                if self.validators.len() == 1 {
                    return Err(TxError::LastValidator);
                }
                let v = *validator;
                Box::new(move |s| {
                    s.validators.remove(&v);
                    s.accounts.remove(&v);
                    s.validator_hosts.remove(&v);
                })
            }
            TxBody::SetValidatorHost {
                validator,
                host,
                addr,
            } => {
                require(Role::Validator, "say where a validator is hosted")?;
                valid_key(validator)?;
                // A sitting validator's host is its own to move: no other validator may
                // redirect its traffic. A validator not yet admitted has no account, so any
                // validator names its host ahead of its `AddValidator`.
                if self.validators.contains(validator) && sender != *validator {
                    return Err(TxError::NotOwnHost {
                        sender,
                        validator: *validator,
                    });
                }
                valid_key(host)?;
                if addr.len() > MAX_LABEL || addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(TxError::Invalid(format!(
                        "validator host address {addr:?} is not an ip:port"
                    )));
                }
                let (v, node) = (
                    *validator,
                    NodeInfo {
                        key: *host,
                        zone: "validators".into(),
                        weight: 0,
                        addr: addr.clone(),
                    },
                );
                Box::new(move |s| {
                    s.validator_hosts.insert(v, node);
                })
            }
            other => return Err(misrouted(other)),
        })
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

    /// Starts a new layout epoch; the current layout becomes the previous one.
    fn set_layout(&mut self, layout: Layout) {
        self.previous_layout = Some(std::mem::replace(&mut self.layout, layout));
    }

    /// The chain's id, from its genesis.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
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

    /// Registered document ids in order, after `after` (from the first when `None`), at
    /// most `limit`.
    pub fn documents_after(&self, after: Option<DocumentId>, limit: usize) -> Vec<DocumentId> {
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(a),
            None => std::ops::Bound::Unbounded,
        };
        self.documents
            .range((from, std::ops::Bound::Unbounded))
            .take(limit)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The current cluster layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The layout before the last change, while readers may still need it.
    pub fn previous_layout(&self) -> Option<&Layout> {
        self.previous_layout.as_ref()
    }

    /// Both layouts, for clients.
    pub fn layouts(&self) -> ChainLayouts {
        ChainLayouts {
            current: self.layout.clone(),
            previous: self.previous_layout.clone(),
        }
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
        World {
            validator,
            dept,
            other_dept,
            operator,
            citizen,
            state,
        }
    }

    fn tx(who: &Identity, nonce: u64, body: TxBody) -> SignedTx {
        Tx {
            sender: who.public(),
            nonce,
            body,
        }
        .sign(who)
    }

    fn doc(n: u8) -> DocumentId {
        DocumentId::of(&[n])
    }

    /// Applies and asserts that a refusal changed nothing.
    fn refused(state: &mut State, stx: &SignedTx) -> TxError {
        let before = state.clone();
        let root = state.root();
        let err = state.apply(stx, 9).unwrap_err();
        assert_eq!(*state, before);
        assert_eq!(state.root(), root);
        err
    }

    #[test]
    fn departments_register_and_supersede_their_documents() {
        let mut w = world();
        let root0 = w.state.root();
        w.state
            .apply(
                &tx(&w.dept, 1, TxBody::RegisterDocument { document: doc(1) }),
                1,
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
            )
            .unwrap();
        assert_eq!(w.state.documents[&doc(1)].superseded_by, Some(doc(2)));
        assert_eq!(w.state.accounts[&w.dept.public()].nonce, 2);
    }

    #[test]
    fn replayed_forged_wrong_role_and_invalid_transactions_change_nothing() {
        let mut w = world();
        let first = tx(&w.dept, 1, TxBody::RegisterDocument { document: doc(1) });
        w.state.apply(&first, 1).unwrap();
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
        forged.signature =
            crate::chain::tx::Signature::from_bytes(w.citizen.sign(&forged.tx.signing_bytes()));
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
        let t = tx(
            &w.validator,
            1,
            TxBody::RemoveValidator {
                validator: w.validator.public(),
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
        let t = tx(&w.validator, 1, TxBody::AddValidator { validator: bad });
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
        w.state.apply(&tx(&w.operator, 1, add), 1).unwrap();
        assert_eq!(w.state.layout.epoch, 2);
        assert_eq!(w.state.previous_layout.as_ref().unwrap().epoch, 1);
        assert_eq!(w.state.accounts[&new_node].role, Role::Node);
        w.state
            .apply(&tx(&w.operator, 2, TxBody::DrainNode { node: new_node }), 2)
            .unwrap();
        assert_eq!(w.state.layout.epoch, 3);
        w.state
            .apply(
                &tx(&w.operator, 3, TxBody::RemoveNode { node: new_node }),
                3,
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
            .apply(&tx(&w.dept, 1, TxBody::RegisterDocument { document: d }), 1)
            .unwrap();
        let address = crate::grant::GrantAddress::of(&w.citizen);
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
            .apply(&tx(&w.dept, 2, grant(Some(1_000))), 2)
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
        w.state.apply(&tx(&w.dept, 4, sup), 4).unwrap();
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
        let address = crate::grant::GrantAddress::of(&w.citizen);
        let key = crate::crypto::DataKey::generate();
        let wrap = |d: &DocumentId| WrappedKey::wrap(&key, d, &address).unwrap();
        w.state
            .apply(
                &tx(&w.dept, 1, TxBody::RegisterDocument { document: d1 }),
                1,
            )
            .unwrap();
        let grant = TxBody::Grant {
            document: d1,
            grantee: c,
            wrapped: wrap(&d1),
            expires_ms: Some(5_000),
        };
        w.state.apply(&tx(&w.dept, 2, grant), 2).unwrap();
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
            &crate::grant::GrantAddress::of(&Identity::generate(Role::Citizen)),
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
        w.state.apply(&rekey, 3).unwrap();
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
        w.state.apply(&tx(&w.dept, 4, reissue), 4).unwrap();
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
        w.state.apply(&tx(&node, 1, audit(&node, 0, 3)), 1).unwrap();
        assert_eq!(w.state.audits[&node.public()], 3);
        assert_ne!(w.state.root(), root_before);
        // The same range again (a second root for records already covered): refused.
        assert!(matches!(
            refused(&mut w.state, &tx(&node, 2, audit(&node, 0, 3))),
            TxError::AuditGap { expected: 3, .. }
        ));
        w.state.apply(&tx(&node, 2, audit(&node, 3, 1)), 2).unwrap();
        w.state
            .apply(&tx(&other, 1, audit(&other, 0, 5)), 2)
            .unwrap();
        assert_eq!(w.state.audits[&node.public()], 4);
        assert_eq!(w.state.audits[&other.public()], 5);
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
            a.state.apply(t, h as u64).unwrap();
            b.apply(t, h as u64).unwrap();
        }
        assert_eq!(a.state.root(), b.root());
    }
}
