//! Workflows between departments: proposals that collect approvals over time, each
//! approval its own transaction signed by the approver, and an action the chain itself
//! carries out on the last approval needed.
//!
//! A `Propose` names an [`Action`] (what the proposer could send alone, e.g. a `Grant`),
//! the approvers (named accounts: departments, or an operator such as an archives
//! authority), how many of them must approve (N of M) and the height at which the proposal
//! expires. Its id is derived from the proposer and the nonce of the `Propose`
//! ([`ProposalId::of`]), so it is known before it commits and two proposals never share one.
//! Each named approver answers at most once, `Approve` or `Refuse` (with a reason), sent and
//! signed by itself: a transaction's sender is the approver, so nobody approves in another's
//! name (a signature by another key does not verify, and a sender not named is refused).
//!
//! The outcome is decided by the chain, in the transaction that decides it:
//! - the N-th approval carries out the action in the same transaction, re-checking the
//!   action's conditions then, as if the proposer had sent it (`State::apply` runs the
//!   same checks and code path as the action's own transaction). If they no longer hold
//!   (the document was superseded, registered by someone else, the proposer's account is
//!   gone), the proposal ends [`Outcome::Failed`] with the reason and nothing of the action
//!   is applied;
//! - a refusal that leaves fewer approvers able to approve than needed ends it
//!   [`Outcome::Refused`];
//! - at its expiry height it accepts nothing more, and its action never runs: an expired
//!   proposal is still `Open` in the state (nothing happens on chain without a
//!   transaction), and every reader tells it apart by the height ([`Proposal::status`]).
//!
//! **Why not like governance.** Validator set changes (`state`, "Governance") carry their
//! majority inside one transaction and the chain keeps no proposals: a reader must prove
//! the validator set from set-change inclusions alone, each self-contained. Workflows are
//! the other way round: departments answer at their own pace (days, not one signing round
//! among validators), each answer must be the approver's own signed act on the record, and
//! the action must run at the moment the last approval commits, against the state then.
//! So they live on chain as proposals with their answers, in the state root, provable like
//! a document record (`chain::proof::ProvenProposal`).
//!
//! A proposal to register a document (`Action::Register`) keeps the document's id in
//! [`Workflows::awaiting`] while open, so a storage peer does not collect the bytes of a
//! document waiting for approval as an orphan (`CollectStale`), until the proposal ends or
//! expires.
//!
//! Bounded: at most [`MAX_APPROVERS`] approvers, [`MAX_REASON`] bytes of a reason,
//! [`MAX_OPEN_PER_SENDER`] open proposals per proposer, an expiry at most
//! [`MAX_EXPIRY_BLOCKS`] ahead.
//!
//! Not for: checking a transaction's signature, sender and nonce, or an action's own
//! conditions (`state::State::apply`, which calls the rules here); how blocks are made.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::merkle::Hash;
use super::rooted::{RootedKey, RootedMap};
use super::tx::{TxBody, TxError};
use crate::id::DocumentId;
use crate::identity::{PublicId, Role};

/// Most approvers one proposal names.
pub const MAX_APPROVERS: usize = 16;
/// Longest reason of a refusal, in bytes.
pub const MAX_REASON: usize = 512;
/// Most open (not decided, not expired) proposals one proposer may have.
pub const MAX_OPEN_PER_SENDER: usize = 64;
/// Farthest expiry, in blocks after the proposal.
pub const MAX_EXPIRY_BLOCKS: u64 = 1_000_000;
/// Most proposal ids one `ListProposals` answer carries.
pub const MAX_PROPOSAL_PAGE: usize = 256;

const PROPOSAL_CONTEXT: &str = "dangan 2026 proposal id v1";

/// A proposal's id: BLAKE3 (derive-key mode) of its proposer and the `Propose`'s nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposalId(pub [u8; 32]);

impl ProposalId {
    pub fn of(proposer: &PublicId, nonce: u64) -> Self {
        let bytes =
            postcard::to_allocvec(&(proposer, nonce)).expect("encoding into memory cannot fail");
        Self(blake3::derive_key(PROPOSAL_CONTEXT, &bytes))
    }
}

impl std::fmt::Display for ProposalId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for ProposalId {
    type Err = TxError;

    fn from_str(s: &str) -> Result<Self, TxError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|e| TxError::Invalid(format!("proposal id {s:?}: {e}")))?;
        Ok(Self(out))
    }
}

impl RootedKey for ProposalId {
    fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
    fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// What a proposal does once approved: a transaction the proposer could send alone,
/// carried out by the chain as if the proposer had sent it. New kinds are appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// The owner grants `document` to `grantee`: the data key sealed to the grantee when
    /// the proposal was made (as `TxBody::Grant`).
    Grant {
        document: DocumentId,
        grantee: PublicId,
        wrapped: crate::grant::WrappedKey,
        expires_ms: Option<u64>,
    },
    /// The proposer registers `document`, stored on the peers beforehand and not
    /// registered (as `TxBody::RegisterDocument`).
    Register { document: DocumentId },
}

impl Action {
    /// The transaction body the proposer would have sent: what the chain checks and applies.
    pub fn body(&self) -> TxBody {
        match self {
            Action::Grant {
                document,
                grantee,
                wrapped,
                expires_ms,
            } => TxBody::Grant {
                document: *document,
                grantee: *grantee,
                wrapped: wrapped.clone(),
                expires_ms: *expires_ms,
            },
            Action::Register { document } => TxBody::RegisterDocument {
                document: *document,
            },
        }
    }

    /// The document this action registers, if it does.
    pub fn registers(&self) -> Option<DocumentId> {
        match self {
            Action::Register { document } => Some(*document),
            Action::Grant { .. } => None,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Grant {
                document, grantee, ..
            } => write!(f, "grant {document} to {grantee}"),
            Action::Register { document } => write!(f, "register {document}"),
        }
    }
}

/// An approver's answer and the height of the block that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub approver: PublicId,
    pub height: u64,
    /// A refusal's reason (empty for an approval).
    pub reason: String,
}

/// How a proposal ended, or that it has not (yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Not decided: approvals accepted until its expiry height.
    Open,
    /// Approved, and its action carried out in block `height`.
    Carried { height: u64 },
    /// Approved in block `height`, but the action's conditions no longer held: nothing of
    /// it was applied.
    Failed { height: u64, reason: String },
    /// Refusals in block `height` left too few approvers to reach the number required.
    Refused { height: u64 },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Open => f.write_str("open"),
            Outcome::Carried { height } => write!(f, "carried out in block {height}"),
            Outcome::Failed { height, reason } => {
                write!(f, "failed in block {height}: {reason}")
            }
            Outcome::Refused { height } => write!(f, "refused in block {height}"),
        }
    }
}

/// A proposal and its answers so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub proposer: PublicId,
    pub action: Action,
    pub approvers: Vec<PublicId>,
    pub required: u32,
    /// The first height at which it accepts nothing more.
    pub expires_at: u64,
    /// Height of the block that holds the `Propose`.
    pub height: u64,
    pub approvals: Vec<Answer>,
    pub refusals: Vec<Answer>,
    pub outcome: Outcome,
}

impl Proposal {
    /// Whether it still accepts answers at `height`.
    pub fn is_open_at(&self, height: u64) -> bool {
        self.outcome == Outcome::Open && height < self.expires_at
    }

    /// Whether it is open at `height` and names `who` as an approver who has not answered.
    pub fn awaits(&self, who: &PublicId, height: u64) -> bool {
        self.is_open_at(height) && self.approvers.contains(who) && self.answer_of(who).is_none()
    }

    /// `who`'s answer, if it gave one: "approved" or "refused".
    pub fn answer_of(&self, who: &PublicId) -> Option<&'static str> {
        if self.approvals.iter().any(|a| a.approver == *who) {
            Some("approved")
        } else if self.refusals.iter().any(|a| a.approver == *who) {
            Some("refused")
        } else {
            None
        }
    }

    /// Its status at `height`: the outcome, or "expired" for an open one past its expiry.
    pub fn status(&self, height: u64) -> String {
        if self.outcome == Outcome::Open && height >= self.expires_at {
            format!(
                "expired at height {} (nothing was carried out)",
                self.expires_at
            )
        } else {
            self.outcome.to_string()
        }
    }
}

/// A document waiting for a proposal that registers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Awaiting {
    pub proposal: ProposalId,
    pub expires_at: u64,
}

/// What an answer does to its proposal (decided by [`Workflows::check_answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Recorded; the proposal stays open.
    Recorded,
    /// The approval that reaches the number required: the action runs now.
    Reached,
    /// The refusal that makes the number required unreachable.
    Unreachable,
}

/// The proposals of the state and the documents awaiting registration (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workflows {
    proposals: RootedMap<ProposalId, Proposal>,
    awaiting: RootedMap<DocumentId, Awaiting>,
    /// Per proposer, (expiry, id) of its proposals not decided: what the bound on open
    /// proposals counts (those not expired). Rebuilt from `proposals` on decode.
    open: BTreeMap<PublicId, BTreeSet<(u64, ProposalId)>>,
}

impl Serialize for Workflows {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.proposals, &self.awaiting).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Workflows {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (proposals, awaiting): (
            RootedMap<ProposalId, Proposal>,
            RootedMap<DocumentId, Awaiting>,
        ) = Deserialize::deserialize(d)?;
        let mut open: BTreeMap<PublicId, BTreeSet<(u64, ProposalId)>> = BTreeMap::new();
        for (id, p) in proposals.iter() {
            if p.outcome == Outcome::Open {
                open.entry(p.proposer)
                    .or_default()
                    .insert((p.expires_at, *id));
            }
        }
        Ok(Self {
            proposals,
            awaiting,
            open,
        })
    }
}

/// Whether an account of `role` may be named an approver.
fn may_approve(role: Role) -> bool {
    matches!(role, Role::Department | Role::Operator)
}

impl Workflows {
    pub fn is_empty(&self) -> bool {
        self.proposals.is_empty() && self.awaiting.is_empty()
    }

    /// The roots of the proposals' and the awaiting documents' maps.
    pub fn roots(
        &self,
        proposal_leaf: impl Fn(&ProposalId, &Proposal) -> Hash,
        awaiting_leaf: impl Fn(&DocumentId, &Awaiting) -> Hash,
    ) -> (Hash, Hash) {
        (
            self.proposals.root(proposal_leaf),
            self.awaiting.root(awaiting_leaf),
        )
    }

    pub fn proposal(&self, id: &ProposalId) -> Option<&Proposal> {
        self.proposals.get(id)
    }

    /// The proposal registering `document`, if one was made and not decided.
    pub fn awaiting(&self, document: &DocumentId) -> Option<&Awaiting> {
        self.awaiting.get(document)
    }

    pub(super) fn proposal_map(&self) -> &RootedMap<ProposalId, Proposal> {
        &self.proposals
    }

    pub(super) fn awaiting_map(&self) -> &RootedMap<DocumentId, Awaiting> {
        &self.awaiting
    }

    /// Up to [`MAX_PROPOSAL_PAGE`] proposals open at `height` that name `approver` and
    /// that it has not answered, in id order after `after`. A scan of the open proposals.
    pub fn awaiting_answer(
        &self,
        approver: &PublicId,
        height: u64,
        after: Option<ProposalId>,
    ) -> Vec<ProposalId> {
        self.open
            .values()
            .flatten()
            .filter(|(expires_at, id)| *expires_at > height && after.is_none_or(|a| *id > a))
            .map(|(_, id)| *id)
            .filter(|id| {
                self.proposals
                    .get(id)
                    .is_some_and(|p| p.awaits(approver, height))
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .take(MAX_PROPOSAL_PAGE)
            .collect()
    }

    /// Checks a `Propose` by `proposer` with `nonce` at `height` (its action's own
    /// conditions are the state's to check); `role` is an account's role on chain. Returns
    /// the proposal to store under [`ProposalId::of`]`(proposer, nonce)`.
    #[allow(clippy::too_many_arguments)]
    pub fn check_propose(
        &self,
        proposer: PublicId,
        height: u64,
        action: &Action,
        approvers: &[PublicId],
        required: u32,
        expires_at: u64,
        role: impl Fn(&PublicId) -> Option<Role>,
    ) -> Result<Proposal, TxError> {
        if approvers.is_empty() || approvers.len() > MAX_APPROVERS {
            return Err(TxError::Invalid(format!(
                "a proposal names 1 to {MAX_APPROVERS} approvers, not {}",
                approvers.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for a in approvers {
            if !seen.insert(*a) {
                return Err(TxError::Invalid(format!("approver {a} is named twice")));
            }
            match role(a) {
                Some(r) if may_approve(r) => {}
                Some(r) => {
                    return Err(TxError::Invalid(format!(
                        "approver {a} has role {r}: approvers are departments or operators"
                    )));
                }
                None => {
                    return Err(TxError::Invalid(format!(
                        "approver {a} has no account on this chain"
                    )));
                }
            }
        }
        if required == 0 || required as usize > approvers.len() {
            return Err(TxError::Invalid(format!(
                "a proposal requires 1 to {} approvals (its approvers), not {required}",
                approvers.len()
            )));
        }
        if expires_at <= height || expires_at - height > MAX_EXPIRY_BLOCKS {
            return Err(TxError::Invalid(format!(
                "a proposal at height {height} expires 1 to {MAX_EXPIRY_BLOCKS} blocks later, not at {expires_at}"
            )));
        }
        let open_now = self
            .open
            .get(&proposer)
            .map_or(0, |s| s.range((height + 1, ProposalId([0; 32]))..).count());
        if open_now >= MAX_OPEN_PER_SENDER {
            return Err(TxError::TooManyProposals(proposer));
        }
        if let Some(document) = action.registers()
            && let Some(w) = self.awaiting.get(&document)
            && height < w.expires_at
        {
            return Err(TxError::Invalid(format!(
                "document {document} already waits for proposal {}",
                w.proposal
            )));
        }
        Ok(Proposal {
            proposer,
            action: action.clone(),
            approvers: approvers.to_vec(),
            required,
            expires_at,
            height,
            approvals: Vec::new(),
            refusals: Vec::new(),
            outcome: Outcome::Open,
        })
    }

    /// Checks `who`'s answer (an approval, or a refusal with `reason`) to proposal `id` at
    /// `height`, and says what it does.
    pub fn check_answer(
        &self,
        id: &ProposalId,
        who: &PublicId,
        height: u64,
        refusal: Option<&str>,
    ) -> Result<Effect, TxError> {
        let p = self.proposals.get(id).ok_or(TxError::NoSuchProposal(*id))?;
        if p.outcome != Outcome::Open {
            return Err(TxError::ProposalClosed {
                id: *id,
                outcome: p.outcome.to_string(),
            });
        }
        if height >= p.expires_at {
            return Err(TxError::ProposalExpired {
                id: *id,
                expires_at: p.expires_at,
            });
        }
        if !p.approvers.contains(who) {
            return Err(TxError::NotAnApprover { id: *id, who: *who });
        }
        if let Some(done) = p.answer_of(who) {
            return Err(TxError::AlreadyAnswered { id: *id, done });
        }
        let required = p.required as usize;
        Ok(match refusal {
            None if p.approvals.len() + 1 >= required => Effect::Reached,
            None => Effect::Recorded,
            Some(reason) => {
                if reason.len() > MAX_REASON {
                    return Err(TxError::Invalid(format!(
                        "a refusal's reason is at most {MAX_REASON} bytes"
                    )));
                }
                let still_possible = p.approvers.len() - p.refusals.len() - 1;
                if still_possible < required {
                    Effect::Unreachable
                } else {
                    Effect::Recorded
                }
            }
        })
    }

    /// Stores a new proposal (checked by [`Self::check_propose`]).
    pub(super) fn insert(&mut self, id: ProposalId, proposal: Proposal) {
        if let Some(document) = proposal.action.registers() {
            self.awaiting.insert(
                document,
                Awaiting {
                    proposal: id,
                    expires_at: proposal.expires_at,
                },
            );
        }
        self.open
            .entry(proposal.proposer)
            .or_default()
            .insert((proposal.expires_at, id));
        self.proposals.insert(id, proposal);
    }

    /// Records an answer (checked by [`Self::check_answer`]).
    pub(super) fn answer(&mut self, id: &ProposalId, answer: Answer, approve: bool) {
        if let Some(p) = self.proposals.get_mut(id) {
            if approve {
                p.approvals.push(answer);
            } else {
                p.refusals.push(answer);
            }
        }
    }

    /// Ends a proposal with `outcome`.
    pub(super) fn close(&mut self, id: &ProposalId, outcome: Outcome) {
        let Some(p) = self.proposals.get_mut(id) else {
            return;
        };
        p.outcome = outcome;
        let (proposer, expires_at, registers) = (p.proposer, p.expires_at, p.action.registers());
        if let Some(document) = registers
            && self
                .awaiting
                .get(&document)
                .is_some_and(|w| w.proposal == *id)
        {
            self.awaiting.remove(&document);
        }
        if let Some(set) = self.open.get_mut(&proposer) {
            set.remove(&(expires_at, *id));
            if set.is_empty() {
                self.open.remove(&proposer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::state::{Genesis, GenesisAccount, State};
    use crate::chain::tx::{SignedTx, Tx};
    use crate::crypto::DataKey;
    use crate::grant::{GrantAddress, WrappedKey};
    use crate::identity::Identity;

    /// A chain with three departments (a owns the documents), one more department not
    /// named in proposals, an operator, a citizen; `nonces` counts each sender's.
    struct World {
        state: State,
        a: Identity,
        b: Identity,
        c: Identity,
        outsider: Identity,
        citizen: Identity,
        nonces: BTreeMap<PublicId, u64>,
        height: u64,
    }

    fn world() -> World {
        let validator = Identity::generate(Role::Validator);
        let dept = || Identity::generate(Role::Department);
        let (a, b, c, outsider) = (dept(), dept(), dept(), dept());
        let citizen = Identity::generate(Role::Citizen);
        let genesis = Genesis {
            chain_id: "workflows".into(),
            validators: vec![GenesisAccount::of(&validator, Role::Validator)],
            accounts: vec![
                GenesisAccount::of(&a, Role::Department),
                GenesisAccount::of(&b, Role::Department),
                GenesisAccount::of(&c, Role::Department),
                GenesisAccount::of(&outsider, Role::Department),
                GenesisAccount::of(&citizen, Role::Citizen),
            ],
            nodes: vec![],
        };
        World {
            state: State::genesis(&genesis).unwrap(),
            a,
            b,
            c,
            outsider,
            citizen,
            nonces: BTreeMap::new(),
            height: 0,
        }
    }

    impl World {
        /// `body` signed by `who` with its next nonce (not spent until it applies).
        fn tx(&self, who: &Identity, body: TxBody) -> SignedTx {
            let nonce = self.nonces.get(&who.public()).copied().unwrap_or(0) + 1;
            Tx {
                sender: who.public(),
                nonce,
                body,
            }
            .sign(who, &self.state.chain_key())
        }

        /// Applies `body` from `who` in the next block.
        fn apply(&mut self, who: &Identity, body: TxBody) -> Result<(), TxError> {
            let t = self.tx(who, body);
            self.height += 1;
            let before = (self.state.clone(), self.state.root());
            let result = self.state.apply(&t, self.height, 0);
            match &result {
                Ok(()) => *self.nonces.entry(who.public()).or_default() += 1,
                // A refusal changes nothing.
                Err(_) => assert_eq!((self.state.clone(), self.state.root()), before),
            }
            result
        }

        /// `who` proposes; the proposal's id.
        fn propose(
            &mut self,
            who: &Identity,
            action: Action,
            approvers: &[&Identity],
            required: u32,
            expires_in: u64,
        ) -> Result<ProposalId, TxError> {
            let nonce = self.nonces.get(&who.public()).copied().unwrap_or(0) + 1;
            let body = TxBody::Propose {
                action,
                approvers: approvers.iter().map(|i| i.public()).collect(),
                required,
                expires_at: self.height + 1 + expires_in,
            };
            self.apply(who, body)?;
            Ok(ProposalId::of(&who.public(), nonce))
        }

        fn approve(&mut self, who: &Identity, id: ProposalId) -> Result<(), TxError> {
            self.apply(who, TxBody::Approve { proposal: id })
        }

        fn refuse(&mut self, who: &Identity, id: ProposalId) -> Result<(), TxError> {
            let reason = "not in our remit".to_string();
            self.apply(
                who,
                TxBody::Refuse {
                    proposal: id,
                    reason,
                },
            )
        }

        fn proposal(&self, id: ProposalId) -> &Proposal {
            self.state.workflows().proposal(&id).unwrap()
        }

        /// A document registered by `a`, and a grant of it to the citizen.
        fn registered_grant(&mut self, n: u8) -> Action {
            let document = DocumentId::of(&[n]);
            let a = self.a.clone();
            self.apply(&a, TxBody::RegisterDocument { document })
                .unwrap();
            let address = GrantAddress::of(&self.citizen).unwrap();
            Action::Grant {
                document,
                grantee: self.citizen.public(),
                wrapped: WrappedKey::wrap(&DataKey::generate(), &document, &address).unwrap(),
                expires_ms: None,
            }
        }
    }

    #[test]
    fn the_nth_approval_carries_out_the_action_in_the_same_transaction() {
        let mut w = world();
        let grant = w.registered_grant(1);
        let document = DocumentId::of(&[1]);
        let (a, b, c) = (w.a.clone(), w.b.clone(), w.c.clone());
        let root = w.state.root();
        let id = w.propose(&a, grant, &[&a, &b, &c], 2, 100).unwrap();
        assert_ne!(w.state.root(), root, "a proposal is in the state root");
        w.approve(&b, id).unwrap();
        assert!(w.state.document(&document).unwrap().grants.is_empty());
        assert_eq!(w.proposal(id).outcome, Outcome::Open);
        w.approve(&c, id).unwrap();
        let height = w.height;
        assert_eq!(w.proposal(id).outcome, Outcome::Carried { height });
        let record = w.state.document(&document).unwrap();
        assert_eq!(record.grants[&w.citizen.public()].height, height);
        // Decided: nothing more is accepted, not even from the approver who did not answer.
        assert!(matches!(
            w.approve(&a, id),
            Err(TxError::ProposalClosed { .. })
        ));
    }

    #[test]
    fn only_a_named_approver_answers_and_only_once() {
        let mut w = world();
        let grant = w.registered_grant(1);
        let (a, b, c, outsider) = (w.a.clone(), w.b.clone(), w.c.clone(), w.outsider.clone());
        let id = w.propose(&a, grant, &[&b, &c], 2, 100).unwrap();
        assert!(matches!(
            w.approve(&outsider, id),
            Err(TxError::NotAnApprover { .. })
        ));
        // The proposer is not named here: it cannot approve its own proposal either.
        assert!(matches!(
            w.approve(&a, id),
            Err(TxError::NotAnApprover { .. })
        ));
        w.approve(&b, id).unwrap();
        assert!(matches!(
            w.approve(&b, id),
            Err(TxError::AlreadyAnswered {
                done: "approved",
                ..
            })
        ));
        assert!(matches!(
            w.refuse(&b, id),
            Err(TxError::AlreadyAnswered { .. })
        ));
        // An approval in c's name signed by b's key does not verify.
        let mut forged = w.tx(&c, TxBody::Approve { proposal: id });
        forged.signature = w.tx(&b, TxBody::Approve { proposal: id }).signature;
        let forged = SignedTx::decode(&forged.encode()).unwrap();
        assert!(matches!(
            w.state.apply(&forged, w.height + 1, 0),
            Err(TxError::BadSignature(_))
        ));
        assert_eq!(w.proposal(id).approvals.len(), 1);
        // An unknown proposal.
        assert!(matches!(
            w.approve(&b, ProposalId([9; 32])),
            Err(TxError::NoSuchProposal(_))
        ));
    }

    #[test]
    fn an_expired_proposal_accepts_nothing_and_never_runs() {
        let mut w = world();
        let grant = w.registered_grant(1);
        let document = DocumentId::of(&[1]);
        let (a, b, c) = (w.a.clone(), w.b.clone(), w.c.clone());
        let id = w.propose(&a, grant, &[&b, &c], 2, 2).unwrap();
        w.approve(&b, id).unwrap();
        // Height moves past the expiry (other transactions).
        w.apply(
            &a,
            TxBody::RegisterDocument {
                document: DocumentId::of(&[2]),
            },
        )
        .unwrap();
        assert!(w.height >= w.proposal(id).expires_at);
        assert!(matches!(
            w.approve(&c, id),
            Err(TxError::ProposalExpired { .. })
        ));
        assert!(w.state.document(&document).unwrap().grants.is_empty());
        assert!(w.proposal(id).status(w.height).starts_with("expired"));
    }

    #[test]
    fn refusals_that_make_the_number_unreachable_end_it() {
        let mut w = world();
        let grant = w.registered_grant(1);
        let (a, b, c) = (w.a.clone(), w.b.clone(), w.c.clone());
        let id = w.propose(&a, grant, &[&a, &b, &c], 2, 100).unwrap();
        w.refuse(&b, id).unwrap();
        assert_eq!(
            w.proposal(id).outcome,
            Outcome::Open,
            "2 of a, c still possible"
        );
        w.refuse(&c, id).unwrap();
        let height = w.height;
        assert_eq!(w.proposal(id).outcome, Outcome::Refused { height });
        assert_eq!(w.proposal(id).refusals[0].reason, "not in our remit");
        assert!(matches!(
            w.approve(&a, id),
            Err(TxError::ProposalClosed { .. })
        ));
        let long = TxBody::Refuse {
            proposal: id,
            reason: "x".repeat(MAX_REASON + 1),
        };
        assert!(w.apply(&a, long).is_err());
    }

    #[test]
    fn an_action_whose_conditions_no_longer_hold_fails_and_applies_nothing() {
        let mut w = world();
        let document = DocumentId::of(&[7]);
        let (a, b) = (w.a.clone(), w.b.clone());
        let id = w
            .propose(&a, Action::Register { document }, &[&b], 1, 100)
            .unwrap();
        assert_eq!(
            w.state.workflows().awaiting(&document).unwrap().proposal,
            id
        );
        assert!(w.state.document(&document).is_none());
        // A second proposal for the same document while the first is open: refused.
        assert!(
            w.propose(&a, Action::Register { document }, &[&b], 1, 100)
                .is_err()
        );
        // The proposer registers it meanwhile: the approval finds it registered.
        w.apply(&a, TxBody::RegisterDocument { document }).unwrap();
        w.approve(&b, id).unwrap();
        match &w.proposal(id).outcome {
            Outcome::Failed { reason, .. } => assert!(reason.contains("already registered")),
            other => panic!("{other:?}"),
        }
        assert!(w.state.workflows().awaiting(&document).is_none());
        assert_eq!(w.state.document(&document).unwrap().height, w.height - 1);
    }

    #[test]
    fn a_registration_happens_only_on_approval_and_for_the_proposer() {
        let mut w = world();
        let document = DocumentId::of(&[8]);
        let (a, b, c) = (w.a.clone(), w.b.clone(), w.c.clone());
        let id = w
            .propose(&a, Action::Register { document }, &[&b, &c], 2, 100)
            .unwrap();
        w.approve(&c, id).unwrap();
        assert!(w.state.document(&document).is_none());
        w.approve(&b, id).unwrap();
        let record = w.state.document(&document).unwrap();
        assert_eq!((record.owner, record.height), (a.public(), w.height));
        assert!(w.state.workflows().awaiting(&document).is_none());
    }

    #[test]
    fn proposals_are_checked_and_bounded() {
        let mut w = world();
        let grant = w.registered_grant(1);
        let (a, b, c, citizen) = (w.a.clone(), w.b.clone(), w.c.clone(), w.citizen.clone());
        // Another department's document cannot be proposed for a grant.
        assert!(matches!(
            w.propose(&b, grant.clone(), &[&a, &c], 1, 10),
            Err(TxError::NotOwner { .. })
        ));
        // A citizen cannot be an approver, nor propose a registration.
        assert!(w.propose(&a, grant.clone(), &[&citizen], 1, 10).is_err());
        let register = Action::Register {
            document: DocumentId::of(&[3]),
        };
        assert!(matches!(
            w.propose(&citizen, register, &[&a], 1, 10),
            Err(TxError::Forbidden { .. })
        ));
        // N out of range, approvers twice, none, an expiry in the past or too far.
        for (approvers, required) in [
            (vec![&b, &c], 0),
            (vec![&b, &c], 3),
            (vec![&b, &b], 1),
            (vec![], 1),
        ] {
            assert!(
                w.propose(&a, grant.clone(), &approvers, required, 10)
                    .is_err()
            );
        }
        let too_many: Vec<Identity> = (0..=MAX_APPROVERS)
            .map(|_| Identity::generate(Role::Department))
            .collect();
        let refs: Vec<&Identity> = too_many.iter().collect();
        assert!(w.propose(&a, grant.clone(), &refs, 1, 10).is_err());
        let past = TxBody::Propose {
            action: grant.clone(),
            approvers: vec![b.public()],
            required: 1,
            expires_at: w.height,
        };
        assert!(w.apply(&a, past).is_err());
        assert!(
            w.propose(&a, grant.clone(), &[&b], 1, MAX_EXPIRY_BLOCKS + 1)
                .is_err()
        );
        // At most MAX_OPEN_PER_SENDER open at once; an expired one no longer counts.
        for _ in 0..MAX_OPEN_PER_SENDER - 1 {
            w.propose(&a, grant.clone(), &[&b], 1, 1000).unwrap();
        }
        let short = w.propose(&a, grant.clone(), &[&b], 1, 2).unwrap();
        assert!(matches!(
            w.propose(&a, grant.clone(), &[&b], 1, 1000),
            Err(TxError::TooManyProposals(_))
        ));
        assert!(w.height + 1 >= w.proposal(short).expires_at);
        w.propose(&a, grant, &[&b], 1, 1000).unwrap();
        // What awaits b: every open proposal naming it, not the expired one.
        let waiting = w
            .state
            .workflows()
            .awaiting_answer(&b.public(), w.height + 1, None);
        assert_eq!(waiting.len(), MAX_OPEN_PER_SENDER);
        assert!(!waiting.contains(&short));
        assert!(
            w.state
                .workflows()
                .awaiting_answer(&c.public(), w.height + 1, None)
                .is_empty()
        );
    }

    #[test]
    fn workflows_decode_to_the_same_state() {
        let mut w = world();
        let grant = w.registered_grant(1);
        let (a, b) = (w.a.clone(), w.b.clone());
        w.propose(&a, grant, &[&b], 1, 10).unwrap();
        w.propose(
            &a,
            Action::Register {
                document: DocumentId::of(&[5]),
            },
            &[&b],
            1,
            10,
        )
        .unwrap();
        let bytes = postcard::to_allocvec(w.state.workflows()).unwrap();
        let back: Workflows = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&back, w.state.workflows());
    }
}
