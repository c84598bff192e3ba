//! Workflows between departments from the client's side (`chain::workflow`): propose an
//! action for other departments to approve, answer a proposal, read one proven.
//!
//! A grant is proposed with its wrapped key prepared here, as `Client::grant` seals it; a
//! registration is proposed for a document stored beforehand (`Client::store`, the
//! caller keeping its key), which the chain registers only on approval.
//!
//! Not for: the rules (`chain::state::State::apply` and `chain::workflow`), printing.

use super::{Client, ClientError};
use crate::chain::tx::TxBody;
use crate::chain::workflow::{Action, Proposal, ProposalId};
use crate::crypto::DataKey;
use crate::grant::{GrantAddress, WrappedKey};
use crate::id::DocumentId;
use crate::identity::PublicId;

/// What a proposal asks of the approvers and how long it waits.
#[derive(Debug, Clone)]
pub struct ProposalTerms {
    pub approvers: Vec<PublicId>,
    pub required: u32,
    /// Blocks after the one that holds the proposal in which answers count (at least 1).
    pub expires_in: u64,
}

/// A proposal committed on chain.
#[derive(Debug, Clone, Copy)]
pub struct Proposed {
    pub id: ProposalId,
    pub height: u64,
    pub expires_at: u64,
}

impl Client {
    /// The action of granting `id` (its data key `key`) to `to`, sealed now.
    pub fn grant_action(
        id: DocumentId,
        key: &DataKey,
        to: &GrantAddress,
        expires_ms: Option<u64>,
    ) -> Result<Action, ClientError> {
        Ok(Action::Grant {
            document: id,
            grantee: to.id,
            wrapped: WrappedKey::wrap(key, &id, to)?,
            expires_ms,
        })
    }

    /// Proposes `action` on `terms`; its expiry height is counted from the chain's height
    /// now: the proposal's block (the next, if nothing else is waiting) and `expires_in`
    /// blocks after it.
    pub async fn propose(
        &self,
        action: Action,
        terms: ProposalTerms,
    ) -> Result<Proposed, ClientError> {
        let chain = self.chain()?;
        let tip = chain.state().await?.header.header.height;
        let expires_at = tip
            .saturating_add(2)
            .saturating_add(terms.expires_in.max(1));
        let body = TxBody::Propose {
            action,
            approvers: terms.approvers,
            required: terms.required,
            expires_at,
        };
        let (nonce, height, _) = chain.submit_numbered(body).await?;
        Ok(Proposed {
            id: ProposalId::of(&self.public(), nonce),
            height,
            expires_at,
        })
    }

    /// Approves proposal `id` as this client's key; the block's height.
    pub async fn approve(&self, id: ProposalId) -> Result<u64, ClientError> {
        let body = TxBody::Approve { proposal: id };
        Ok(self.chain()?.submit(body).await?.0)
    }

    /// Refuses proposal `id` as this client's key, saying why; the block's height.
    pub async fn refuse(&self, id: ProposalId, reason: String) -> Result<u64, ClientError> {
        let body = TxBody::Refuse {
            proposal: id,
            reason,
        };
        Ok(self.chain()?.submit(body).await?.0)
    }

    /// Proposal `id` and the height its state was proven at, or `None`.
    pub async fn proposal(&self, id: &ProposalId) -> Result<Option<(Proposal, u64)>, ClientError> {
        Ok(self.chain()?.proposal(id).await?)
    }

    /// The proposals open now that name this client and that it has not answered, each
    /// proven (a page: at most `workflow::MAX_PROPOSAL_PAGE`).
    pub async fn proposals_awaiting_me(
        &self,
    ) -> Result<Vec<(ProposalId, Proposal, u64)>, ClientError> {
        let chain = self.chain()?;
        let me = self.public();
        let mut out = Vec::new();
        for id in chain.proposals_awaiting_me(None).await? {
            // Listed by one host, proven one by one: a host cannot make one up.
            if let Some((p, height)) = chain.proposal(&id).await?
                && p.awaits(&me, height + 1)
            {
                out.push((id, p, height));
            }
        }
        Ok(out)
    }
}
