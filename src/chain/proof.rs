//! Chain answers that carry their proof, so that whoever acts on one (a storage peer
//! authorising a read, a client choosing peers, repair walking the documents) trusts the
//! validators' majority, never the one validator host that answered.
//!
//! Every answer is made of a [`ProvenState`]: the signed header of a final block and the
//! state's top after it (`state::StateTop`: chain id, validators, layouts, validator hosts,
//! and the roots of the accounts and the documents), whose root the header commits to. On
//! top of it:
//! - [`ProvenAccount`]: an account (role, nonce) or its absence, by a [`RangeProof`] of its
//!   bucket of the accounts map;
//! - [`ProvenRecord`]: a document record or its absence; a grantee who may see only its own
//!   grant gets that grant with its Merkle path among the record's grants;
//! - [`ProvenDocuments`]: a page of the registered document ids with nothing left out (whole
//!   buckets of the documents map);
//! - [`ProvenProposal`], [`ProvenAwaiting`]: a workflow's proposal with its answers and
//!   outcome, or the proposal a document waits for (`chain::workflow`), or their absence;
//! - [`ProvenType`], [`ProvenRecordEntry`]: a document type's version, a document's record
//!   entry (type, retention, holds: `chain::records`), or their absence;
//! - [`ProvenGranted`]: the documents with a live grant to one grantee found by a scan of the
//!   records, each proven as a [`ProvenRecord`] is (that none was left out is not).
//!
//! `verify` checks each against the validators of the header's height (the caller finds them:
//! `chain::client` proves validator set changes from its trusted set). What a proof cannot
//! show is that no newer block exists: the chain client refuses an answer older than one it
//! has already checked (`ChainError::Stale`), and peers keep what they act on for at most a
//! second (`access::ACCESS_TTL`).
//!
//! Not for: fetching (the chain client), serving (`chain::ledger`, the peer's `chain`
//! handlers), or a block's transactions (`block::TxInclusion`).

use serde::{Deserialize, Serialize};

use super::block::{BlockError, SignedHeader};
use super::merkle::{Hash, MerkleError, Proof};
use super::records::{RecordEntry, TypeKey, TypeRecord};
use super::rooted::RootedMap;
use super::rooted::{RangeError, RangeProof};
use super::state::{
    Account, DocumentRecord, State, StateTop, account_leaf, awaiting_leaf, document_leaf,
    grant_leaf, grants_root, proposal_leaf, record_entry_leaf, type_leaf,
};
use super::workflow::{Awaiting, Proposal, ProposalId};
use crate::id::DocumentId;
use crate::identity::PublicId;

/// Why a chain answer's proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    #[error("the header is not final: {0}")]
    Header(#[from] BlockError),
    #[error("the state sent does not hash to the header's state root")]
    StateRoot,
    #[error("the entry's proof does not check out: {0}")]
    Range(#[from] RangeError),
    #[error("the entry sent is not the one the state holds")]
    Entry,
    #[error("the grant's path does not check out: {0}")]
    Grant(#[from] MerkleError),
    #[error("the answer is about {0}, not what was asked")]
    OtherKey(String),
}

/// The state after a final block: the block's signed header and the state's top.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenState {
    pub header: SignedHeader,
    pub top: StateTop,
}

impl ProvenState {
    /// The top of `state`, the state after the block `header` signs.
    pub fn of(state: &State, header: SignedHeader) -> Self {
        Self {
            top: state.top(),
            header,
        }
    }

    /// Checks that a majority of `validators` (those of the header's height) signed the
    /// header, and that the top hashes to its state root.
    pub fn verify(&self, validators: &[PublicId]) -> Result<(), ProofError> {
        self.header.verify_final(validators)?;
        if self.top.root() != self.header.header.state_root {
            return Err(ProofError::StateRoot);
        }
        Ok(())
    }
}

/// A proven answer: the state it was read from.
pub trait Proven {
    /// The height of the block whose state the answer is from.
    fn height(&self) -> u64;
}

impl Proven for ProvenState {
    fn height(&self) -> u64 {
        self.header.header.height
    }
}

macro_rules! proven_at_its_state {
    ($($t:ty),*) => {$(
        impl Proven for $t {
            fn height(&self) -> u64 {
                self.state.height()
            }
        }
    )*};
}
proven_at_its_state!(
    ProvenAccount,
    ProvenRecord,
    ProvenDocuments,
    ProvenGranted,
    ProvenProposal,
    ProvenAwaiting,
    ProvenType,
    ProvenRecordEntry
);

/// An account, or its absence, with its proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenAccount {
    pub state: ProvenState,
    pub id: PublicId,
    pub account: Option<Account>,
    pub range: RangeProof,
}

impl ProvenAccount {
    pub fn of(state: &State, header: SignedHeader, id: &PublicId) -> Self {
        Self {
            range: state
                .account_map()
                .prove_range(id.as_bytes(), 0, account_leaf),
            account: state.account(id).cloned(),
            id: *id,
            state: ProvenState::of(state, header),
        }
    }

    /// Checks the whole answer (see [`ProvenState::verify`]) and that it is about `id`.
    pub fn verify(&self, id: &PublicId, validators: &[PublicId]) -> Result<(), ProofError> {
        if self.id != *id {
            return Err(ProofError::OtherKey(self.id.to_string()));
        }
        self.state.verify(validators)?;
        self.range.verify(&self.state.top.accounts)?;
        let held = self.range.lookup(id.as_bytes())?;
        if held != self.account.as_ref().map(|a| account_leaf(id, a)) {
            return Err(ProofError::Entry);
        }
        Ok(())
    }
}

/// A document record, or its absence, with its proof. A reader that may see only its own
/// grant gets the record with that grant alone and the grant's path among all the record's
/// grants (`grant`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenRecord {
    pub state: ProvenState,
    pub id: DocumentId,
    pub record: Option<DocumentRecord>,
    /// Set when `record` holds one grant out of more: its path to the grants' root.
    pub grant: Option<Proof>,
    pub range: RangeProof,
}

impl ProvenRecord {
    /// `id`'s record in `state` whole, with its proof.
    pub fn of(state: &State, header: SignedHeader, id: &DocumentId) -> Self {
        let record = state.document(id).cloned();
        Self {
            range: state.document_map().prove_range(id.as_bytes(), 0, |k, d| {
                document_leaf(k, d, grants_root(&d.grants))
            }),
            record,
            grant: None,
            id: *id,
            state: ProvenState::of(state, header),
        }
    }

    /// Keeps only `grantee`'s grant in the record, with its path: what a grantee may see.
    /// Returns `None` if the record has no grant for `grantee`.
    pub fn only_grant_of(mut self, grantee: &PublicId) -> Option<Self> {
        self.grant = Some(keep_one_grant(self.record.as_mut()?, grantee)?);
        Some(self)
    }

    /// Checks the whole answer (see [`ProvenState::verify`]) and that it is about `id`.
    pub fn verify(&self, id: &DocumentId, validators: &[PublicId]) -> Result<(), ProofError> {
        if self.id != *id {
            return Err(ProofError::OtherKey(self.id.to_string()));
        }
        self.state.verify(validators)?;
        check_record(
            &self.state.top,
            id,
            self.record.as_ref(),
            self.grant.as_ref(),
            &self.range,
        )
    }
}

/// Keeps only `grantee`'s grant in `record` and returns its path among all the record's
/// grants; `None` (and `record` unchanged) if it has none.
fn keep_one_grant(record: &mut DocumentRecord, grantee: &PublicId) -> Option<Proof> {
    let index = record.grants.keys().position(|g| g == grantee)?;
    let leaves: Vec<_> = record
        .grants
        .iter()
        .map(|(g, r)| grant_leaf(g, r))
        .collect();
    let path = super::merkle::prove(&leaves, index).ok()?;
    record.grants.retain(|g, _| g == grantee);
    Some(path)
}

/// Checks that `record` (whole, or one grant of it with that grant's `path`; `None`: not
/// registered) is what the documents map of `top` holds for `id`.
fn check_record(
    top: &StateTop,
    id: &DocumentId,
    record: Option<&DocumentRecord>,
    path: Option<&Proof>,
    range: &RangeProof,
) -> Result<(), ProofError> {
    range.verify(&top.documents)?;
    let held = range.lookup(id.as_bytes())?;
    let sent = match (record, path) {
        (None, _) => None,
        (Some(record), None) => Some(document_leaf(id, record, grants_root(&record.grants))),
        (Some(record), Some(path)) => {
            let mut grants = record.grants.iter();
            let (Some((grantee, grant)), None) = (grants.next(), grants.next()) else {
                return Err(ProofError::Entry);
            };
            let root = path.root_from(&grant_leaf(grantee, grant))?;
            Some(document_leaf(id, record, root))
        }
    };
    if held != sent {
        return Err(ProofError::Entry);
    }
    Ok(())
}

/// Most document records one [`ProvenGranted`] answer looks at.
pub const MAX_GRANTED_SCAN: usize = 20_000;

/// Most documents one [`ProvenGranted`] answer lists.
pub const MAX_GRANTED: usize = 64;

/// Documents with a live grant to `grantee`, as the asker may see them, found by a scan of
/// the document records from the first after `after` on: each entry is proven as a
/// [`ProvenRecord`] is; that the scan left none out is not (a lying host may hide one, never
/// invent one). `next` is where the next scan starts; `None` once the scan reached the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenGranted {
    pub state: ProvenState,
    pub grantee: PublicId,
    pub entries: Vec<GrantedEntry>,
    pub next: Option<DocumentId>,
}

/// One document of a [`ProvenGranted`] answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedEntry {
    pub id: DocumentId,
    /// Whole for its owner and readers of every record, else with the grantee's grant alone
    /// (and `grant` set to its path among all the record's grants).
    pub record: DocumentRecord,
    pub grant: Option<Proof>,
    pub range: RangeProof,
}

/// How much of a record the asker of a [`ProvenGranted`] may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sight {
    Whole,
    /// The grantee's grant alone.
    OneGrant,
    /// Nothing: the record is not listed.
    Nothing,
}

impl ProvenGranted {
    /// Scans at most [`MAX_GRANTED_SCAN`] records after `after` for a grant to `grantee`
    /// live at `now_ms`, listing at most [`MAX_GRANTED`] of them as `sight` allows.
    pub fn of(
        state: &State,
        header: SignedHeader,
        grantee: &PublicId,
        after: Option<&DocumentId>,
        now_ms: u64,
        sight: impl Fn(&DocumentRecord) -> Sight,
    ) -> Self {
        let map = state.document_map();
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(*a),
            None => std::ops::Bound::Unbounded,
        };
        let mut entries = Vec::new();
        let mut last = None;
        let records = map.range((from, std::ops::Bound::Unbounded));
        for (scanned, (id, record)) in records.enumerate() {
            if scanned == MAX_GRANTED_SCAN || entries.len() == MAX_GRANTED {
                return Self {
                    state: ProvenState::of(state, header),
                    grantee: *grantee,
                    entries,
                    next: last,
                };
            }
            last = Some(*id);
            if record.live_grant(grantee, now_ms).is_none() {
                continue;
            }
            let (record, grant) = match sight(record) {
                Sight::Whole => (record.clone(), None),
                Sight::OneGrant => {
                    let mut record = record.clone();
                    match keep_one_grant(&mut record, grantee) {
                        Some(path) => (record, Some(path)),
                        None => continue,
                    }
                }
                Sight::Nothing => continue,
            };
            entries.push(GrantedEntry {
                id: *id,
                record,
                grant,
                range: map.prove_range(id.as_bytes(), 0, |k, d| {
                    document_leaf(k, d, grants_root(&d.grants))
                }),
            });
        }
        Self {
            state: ProvenState::of(state, header),
            grantee: *grantee,
            entries,
            next: None,
        }
    }

    /// Checks the answer against the header (see [`ProvenState::verify`]) as the answer to
    /// "documents granted to `grantee` after `after`": every entry is in the state, after the
    /// cursor, in order, before `next`, and holds a grant to `grantee`.
    pub fn verify(
        &self,
        grantee: &PublicId,
        after: Option<&DocumentId>,
        validators: &[PublicId],
    ) -> Result<(), ProofError> {
        if self.grantee != *grantee {
            return Err(ProofError::OtherKey(self.grantee.to_string()));
        }
        self.state.verify(validators)?;
        let mut previous = after.copied();
        for entry in &self.entries {
            if previous.is_some_and(|p| entry.id <= p) || self.next.is_some_and(|n| entry.id > n) {
                return Err(ProofError::Entry);
            }
            if !entry.record.grants.contains_key(grantee) {
                return Err(ProofError::Entry);
            }
            check_record(
                &self.state.top,
                &entry.id,
                Some(&entry.record),
                entry.grant.as_ref(),
                &entry.range,
            )?;
            previous = Some(entry.id);
        }
        if let (Some(next), Some(after)) = (self.next, after)
            && next <= *after
        {
            return Err(ProofError::Entry); // a scan that does not move on
        }
        Ok(())
    }
}

/// A page of registered document ids, with nothing left out: the ids of whole buckets of
/// the documents map, from the one holding the cursor on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenDocuments {
    pub state: ProvenState,
    pub range: RangeProof,
}

impl ProvenDocuments {
    /// A page of at least `limit` ids after `after` (or up to the last), with its proof.
    pub fn of(
        state: &State,
        header: SignedHeader,
        after: Option<&DocumentId>,
        limit: usize,
    ) -> Self {
        let from = after.map_or([0; 32], |a| *a.as_bytes());
        Self {
            range: state
                .document_map()
                .prove_range_after(&from, after.is_some(), limit, |k, d| {
                    document_leaf(k, d, grants_root(&d.grants))
                }),
            state: ProvenState::of(state, header),
        }
    }

    /// Checks the page against the header (see [`ProvenState::verify`]) as the answer to
    /// "up to `limit` ids after `after`": it starts at the cursor's bucket, and a page that
    /// holds no id after it yet stops short of the end is refused.
    pub fn verify(
        &self,
        after: Option<&DocumentId>,
        limit: usize,
        validators: &[PublicId],
    ) -> Result<(), ProofError> {
        self.state.verify(validators)?;
        self.range.verify(&self.state.top.documents)?;
        let from = after.map_or([0; 32], |a| *a.as_bytes());
        self.range.lookup(&from)?; // the page starts at the cursor's bucket
        if self.ids(after, limit).is_empty() && !self.range.reaches_end() {
            return Err(ProofError::Range(RangeError::NotCovered));
        }
        Ok(())
    }

    /// Up to `limit` ids after `after` in the page, in order; of a verified page, every one
    /// there is (none means there are no more).
    pub fn ids(&self, after: Option<&DocumentId>, limit: usize) -> Vec<DocumentId> {
        self.range
            .entries()
            .map(|(k, _)| DocumentId(*k))
            .filter(|id| after.is_none_or(|a| id > a))
            .take(limit)
            .collect()
    }
}

/// A document type's version (the current one when `version` is `None`), or its absence,
/// with its proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenType {
    pub state: ProvenState,
    pub name: String,
    pub version: Option<u32>,
    pub record: Option<TypeRecord>,
    pub range: RangeProof,
}

impl ProvenType {
    pub fn of(state: &State, header: SignedHeader, name: &str, version: Option<u32>) -> Self {
        let key = TypeKey::of(name, version.unwrap_or(0));
        Self {
            range: state.records().type_map().prove_range(&key.0, 0, type_leaf),
            record: state.records().type_version(name, version).cloned(),
            name: name.to_string(),
            version,
            state: ProvenState::of(state, header),
        }
    }

    /// Checks the whole answer and that it is about `name` at `version`.
    pub fn verify(
        &self,
        name: &str,
        version: Option<u32>,
        validators: &[PublicId],
    ) -> Result<(), ProofError> {
        if self.name != name || self.version != version {
            return Err(ProofError::OtherKey(format!(
                "{} {:?}",
                self.name, self.version
            )));
        }
        if let Some(r) = &self.record
            && (r.def.name != name || version.is_some_and(|v| v != r.version))
        {
            return Err(ProofError::Entry);
        }
        self.state.verify(validators)?;
        let root = self.state.top.records.map_or_else(
            || RootedMap::<TypeKey, TypeRecord>::new().root(type_leaf),
            |(types, _)| types,
        );
        self.range.verify(&root)?;
        let key = TypeKey::of(name, version.unwrap_or(0));
        let held = self.range.lookup(&key.0)?;
        if held != self.record.as_ref().map(|r| type_leaf(&key, r)) {
            return Err(ProofError::Entry);
        }
        Ok(())
    }
}

/// A document's record entry (type, retention, holds), or its absence (an untyped document
/// with no hold), with its proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenRecordEntry {
    pub state: ProvenState,
    pub id: DocumentId,
    pub entry: Option<RecordEntry>,
    pub range: RangeProof,
}

impl ProvenRecordEntry {
    pub fn of(state: &State, header: SignedHeader, id: &DocumentId) -> Self {
        Self {
            range: state
                .records()
                .entry_map()
                .prove_range(id.as_bytes(), 0, record_entry_leaf),
            entry: state.records().entry(id).cloned(),
            id: *id,
            state: ProvenState::of(state, header),
        }
    }

    /// Checks the whole answer and that it is about `id`.
    pub fn verify(&self, id: &DocumentId, validators: &[PublicId]) -> Result<(), ProofError> {
        if self.id != *id {
            return Err(ProofError::OtherKey(self.id.to_string()));
        }
        self.state.verify(validators)?;
        let root = self.state.top.records.map_or_else(
            || RootedMap::<DocumentId, RecordEntry>::new().root(record_entry_leaf),
            |(_, entries)| entries,
        );
        self.range.verify(&root)?;
        let held = self.range.lookup(id.as_bytes())?;
        if held != self.entry.as_ref().map(|e| record_entry_leaf(id, e)) {
            return Err(ProofError::Entry);
        }
        Ok(())
    }
}

/// A proposal (`chain::workflow`), or its absence, with its proof.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenProposal {
    pub state: ProvenState,
    pub id: ProposalId,
    pub proposal: Option<Proposal>,
    pub range: RangeProof,
}

impl ProvenProposal {
    pub fn of(state: &State, header: SignedHeader, id: &ProposalId) -> Self {
        Self {
            range: state
                .workflows()
                .proposal_map()
                .prove_range(&id.0, 0, proposal_leaf),
            proposal: state.workflows().proposal(id).cloned(),
            id: *id,
            state: ProvenState::of(state, header),
        }
    }

    /// Checks the whole answer (see [`ProvenState::verify`]) and that it is about `id`.
    pub fn verify(&self, id: &ProposalId, validators: &[PublicId]) -> Result<(), ProofError> {
        if self.id != *id {
            return Err(ProofError::OtherKey(self.id.to_string()));
        }
        self.state.verify(validators)?;
        let root = self.state.top.workflows.map(|(proposals, _)| proposals);
        let sent = self.proposal.as_ref().map(|p| proposal_leaf(id, p));
        check_entry(root, &id.0, sent, &self.range)
    }
}

/// The proposal a document waits for (`chain::workflow::Awaiting`), or none, with its
/// proof: what a peer asks before collecting the bytes of an unregistered document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenAwaiting {
    pub state: ProvenState,
    pub document: DocumentId,
    pub awaiting: Option<Awaiting>,
    pub range: RangeProof,
}

impl ProvenAwaiting {
    pub fn of(state: &State, header: SignedHeader, document: &DocumentId) -> Self {
        Self {
            range: state.workflows().awaiting_map().prove_range(
                document.as_bytes(),
                0,
                awaiting_leaf,
            ),
            awaiting: state.workflows().awaiting(document).copied(),
            document: *document,
            state: ProvenState::of(state, header),
        }
    }

    /// Checks the whole answer (see [`ProvenState::verify`]) and that it is about
    /// `document`.
    pub fn verify(&self, document: &DocumentId, validators: &[PublicId]) -> Result<(), ProofError> {
        if self.document != *document {
            return Err(ProofError::OtherKey(self.document.to_string()));
        }
        self.state.verify(validators)?;
        let root = self.state.top.workflows.map(|(_, awaiting)| awaiting);
        let sent = self.awaiting.as_ref().map(|a| awaiting_leaf(document, a));
        check_entry(root, document.as_bytes(), sent, &self.range)
    }

    /// Whether the document waits, at the proven height, for a proposal not expired.
    pub fn waits(&self) -> bool {
        self.awaiting
            .is_some_and(|a| self.state.header.header.height < a.expires_at)
    }
}

/// Checks that `sent` (a leaf hash; `None`: absent) is what the map whose root is `root`
/// (`None`: the state holds no such map yet, so nothing is in it) holds at `key`.
fn check_entry(
    root: Option<Hash>,
    key: &[u8; 32],
    sent: Option<Hash>,
    range: &RangeProof,
) -> Result<(), ProofError> {
    let Some(root) = root else {
        return match sent {
            None => Ok(()),
            Some(_) => Err(ProofError::Entry),
        };
    };
    range.verify(&root)?;
    if range.lookup(key)? != sent {
        return Err(ProofError::Entry);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::Block;
    use crate::chain::state::{Genesis, GenesisAccount};
    use crate::chain::store::genesis_header;
    use crate::chain::tx::{Tx, TxBody};
    use crate::grant::WrappedKey;
    use crate::identity::{Identity, Role};

    struct World {
        validators: Vec<Identity>,
        department: Identity,
        state: State,
        header: SignedHeader,
    }

    /// A chain of 3 validators with one block registering `docs` documents, granted to
    /// `readers`.
    fn world(docs: u8, readers: &[Identity]) -> World {
        let validators: Vec<Identity> = (0..3)
            .map(|_| Identity::generate(Role::Validator))
            .collect();
        let department = Identity::generate(Role::Department);
        let genesis = Genesis {
            chain_id: "test".into(),
            validators: validators
                .iter()
                .map(|v| GenesisAccount::of(v, Role::Validator))
                .collect(),
            accounts: vec![GenesisAccount::of(&department, Role::Department)],
            nodes: vec![],
        };
        let mut state = State::genesis(&genesis).unwrap();
        let chain = state.chain_key();
        let prev = genesis_header(&state);
        let mut txs = Vec::new();
        let mut nonce = 0;
        for i in 0..docs {
            nonce += 1;
            let document = DocumentId::of(&[i]);
            txs.push(
                Tx {
                    sender: department.public(),
                    nonce,
                    body: TxBody::RegisterDocument { document },
                }
                .sign(&department, &chain),
            );
            for r in readers {
                nonce += 1;
                let wrapped = WrappedKey::wrap(
                    &crate::crypto::DataKey::generate(),
                    &document,
                    &crate::grant::GrantAddress::of(r).unwrap(),
                )
                .unwrap();
                txs.push(
                    Tx {
                        sender: department.public(),
                        nonce,
                        body: TxBody::Grant {
                            document,
                            grantee: r.public(),
                            wrapped,
                            expires_ms: None,
                        },
                    }
                    .sign(&department, &chain),
                );
            }
        }
        let (mut block, outcomes) = Block::propose(&mut state, &prev, txs, &validators[0], 1);
        assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
        block.header.sign(&validators[1]);
        World {
            validators,
            department,
            state,
            header: block.header,
        }
    }

    fn keys(w: &World) -> Vec<PublicId> {
        w.validators.iter().map(|v| v.public()).collect()
    }

    #[test]
    fn an_account_and_its_absence_are_proven_and_a_forged_role_is_refused() {
        let w = world(2, &[]);
        let v = keys(&w);
        let dept = w.department.public();
        let p = ProvenAccount::of(&w.state, w.header.clone(), &dept);
        p.verify(&dept, &v).unwrap();
        assert_eq!(p.account.as_ref().unwrap().role, Role::Department);
        let stranger = Identity::generate(Role::Citizen).public();
        let none = ProvenAccount::of(&w.state, w.header.clone(), &stranger);
        none.verify(&stranger, &v).unwrap();
        assert!(none.account.is_none());
        // A host that claims the stranger is an operator, or answers about someone else.
        let mut forged = none.clone();
        forged.account = Some(Account {
            role: Role::Operator,
            nonce: 0,
        });
        assert_eq!(forged.verify(&stranger, &v), Err(ProofError::Entry));
        assert!(matches!(
            p.verify(&stranger, &v),
            Err(ProofError::OtherKey(_))
        ));
        // A top changed to match a forged entry no longer matches the header.
        let mut top = forged.clone();
        top.state.top.validators.insert(stranger);
        assert_eq!(top.verify(&stranger, &v), Err(ProofError::StateRoot));
        // A header signed by one validator alone is not final.
        let mut lone = p.clone();
        lone.state.header.signatures.truncate(1);
        assert!(matches!(lone.verify(&dept, &v), Err(ProofError::Header(_))));
    }

    #[test]
    fn a_grantee_sees_its_own_grant_proven_and_nothing_else() {
        let readers: Vec<Identity> = (0..3).map(|_| Identity::generate(Role::Citizen)).collect();
        let w = world(1, &readers);
        let v = keys(&w);
        let doc = DocumentId::of(&[0]);
        let whole = ProvenRecord::of(&w.state, w.header.clone(), &doc);
        whole.verify(&doc, &v).unwrap();
        assert_eq!(whole.record.as_ref().unwrap().grants.len(), 3);
        let mine = whole.clone().only_grant_of(&readers[1].public()).unwrap();
        mine.verify(&doc, &v).unwrap();
        let grants = &mine.record.as_ref().unwrap().grants;
        assert_eq!(
            grants.keys().collect::<Vec<_>>(),
            vec![&readers[1].public()]
        );
        // Passing another's grant, or the owner changed, is refused.
        let mut swapped = mine.clone();
        let r = swapped.record.as_mut().unwrap();
        let g = r.grants.remove(&readers[1].public()).unwrap();
        r.grants.insert(readers[2].public(), g);
        assert!(swapped.verify(&doc, &v).is_err());
        let mut owner = whole.clone();
        owner.record.as_mut().unwrap().owner = readers[0].public();
        assert_eq!(owner.verify(&doc, &v), Err(ProofError::Entry));
        assert!(
            whole
                .only_grant_of(&Identity::generate(Role::Citizen).public())
                .is_none()
        );
    }

    #[test]
    fn a_listing_of_documents_leaves_nothing_out() {
        let w = world(60, &[]);
        let v = keys(&w);
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = ProvenDocuments::of(&w.state, w.header.clone(), after.as_ref(), 7);
            page.verify(after.as_ref(), 7, &v).unwrap();
            let ids = page.ids(after.as_ref(), 7);
            if ids.is_empty() {
                break;
            }
            after = ids.last().copied();
            all.extend(ids);
        }
        let expected: Vec<DocumentId> = w.state.document_map().keys().copied().collect();
        assert_eq!(all, expected);
        // A host that hides a document from the page is refused.
        let page = ProvenDocuments::of(&w.state, w.header.clone(), None, 1000);
        let mut hidden = page.clone();
        hidden.range.drop_first_entry_for_test();
        assert!(hidden.verify(None, 1000, &v).is_err());
    }

    #[test]
    fn a_scan_for_a_grantee_lists_every_grant_proven_and_nothing_else() {
        let readers: Vec<Identity> = (0..2).map(|_| Identity::generate(Role::Citizen)).collect();
        let w = world(70, &readers);
        let v = keys(&w);
        let reader = readers[0].public();
        let scan = |after: Option<DocumentId>, sight: Sight| {
            let mut all = Vec::new();
            let mut after = after;
            loop {
                let page = ProvenGranted::of(
                    &w.state,
                    w.header.clone(),
                    &reader,
                    after.as_ref(),
                    0,
                    |_| sight,
                );
                page.verify(&reader, after.as_ref(), &v).unwrap();
                all.extend(page.entries.iter().cloned());
                match page.next {
                    Some(next) => after = Some(next),
                    None => return all,
                }
            }
        };
        // Whole records, across pages (70 > MAX_GRANTED), every document once, in order.
        let whole = scan(None, Sight::Whole);
        let expected: Vec<DocumentId> = w.state.document_map().keys().copied().collect();
        assert_eq!(whole.iter().map(|e| e.id).collect::<Vec<_>>(), expected);
        assert!(whole.iter().all(|e| e.record.grants.len() == 2));
        // The grantee's own view: its grant alone, with its path.
        let own = scan(None, Sight::OneGrant);
        assert_eq!(own.len(), 70);
        assert!(
            own.iter()
                .all(|e| { e.grant.is_some() && e.record.grants.keys().eq([&reader]) })
        );
        assert!(scan(None, Sight::Nothing).is_empty());
        // A key with no grant finds nothing.
        let stranger = Identity::generate(Role::Citizen).public();
        let none = ProvenGranted::of(&w.state, w.header.clone(), &stranger, None, 0, |_| {
            Sight::Whole
        });
        assert!(none.entries.is_empty() && none.next.is_none());

        // Lies are refused: an answer about another key, an entry changed, one made up, one
        // from before the cursor.
        let page = ProvenGranted::of(&w.state, w.header.clone(), &reader, None, 0, |_| {
            Sight::OneGrant
        });
        assert!(page.verify(&readers[1].public(), None, &v).is_err());
        let mut changed = page.clone();
        changed.entries[0].record.owner = reader;
        assert_eq!(changed.verify(&reader, None, &v), Err(ProofError::Entry));
        let mut made_up = page.clone();
        made_up.entries[1].id = DocumentId::of(b"never registered");
        assert!(made_up.verify(&reader, None, &v).is_err());
        let second = page.entries[1].id;
        assert!(page.verify(&reader, Some(&second), &v).is_err());
    }
}
