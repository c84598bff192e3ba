//! The chain requests a validator's peer answers: queries of the ledger (documents'
//! records as the caller may see them, blocks, transactions, accounts, status, layouts,
//! the document list), transaction submissions, and validator-to-validator consensus
//! (`Raft`, `Endorse`).
//!
//! Not for: the ledger itself (`chain::ledger`), or deciding who may ask (the parent
//! module's `authorise`, and `access::ChainScope` for records).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tracing::warn;

use super::{State, answer, blocking, error, refuse};
use crate::access::{AccessError, ChainScope};
use crate::chain::ledger::{Ledger, LedgerError};
use crate::chain::proof::{ProvenRecord, Sight};
use crate::chain::state::DocumentRecord;
use crate::chain::tx::SignedTx;
use crate::chain::workflow::ProposalId;
use crate::id::DocumentId;
use crate::identity::PublicId;
use crate::proto::{
    self, ErrorCode, MAX_CHAIN_BODY, MAX_LIST, MAX_TX_BODY, ProtoError, RaftKind, Response,
};

/// The current ledger from [`query_ledger`], or the handler answers its refusal and returns.
macro_rules! current_ledger {
    ($state:expr, $send:expr) => {
        match query_ledger($state) {
            Ok(ledger) => ledger,
            Err(resp) => return answer($send, &resp, None).await,
        }
    };
}

/// A transaction to commit: the leader takes it; a follower that knows the leader sends
/// the client there.
pub(super) async fn submit_tx(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    len: u64,
) -> Result<(), ProtoError> {
    if let Err(e) = proto::check_body_len("transaction", len, MAX_TX_BODY) {
        let _ = recv.stop(ErrorCode::TooLarge.as_u32().into());
        return answer(send, &error(ErrorCode::TooLarge, e.to_string()), None).await;
    }
    let body = proto::read_body(recv, len).await?;
    let Some(ledger) = &state.ledger else {
        return answer(send, &not_validator(), None).await;
    };
    // A follower that knows the leader sends the client there; during an election
    // it takes the transaction and forwards it once a leader is known.
    if let Some(leader) = ledger.leader_host() {
        return answer(send, &Response::Leader(leader), None).await;
    }
    let resp = match SignedTx::decode(&body) {
        Err(e) => error(ErrorCode::Refused, e.to_string()),
        Ok(tx) => match ledger.submit(tx).await {
            Ok(r) => Response::Committed {
                height: r.height,
                index: r.index,
            },
            Err(e @ (LedgerError::Unavailable(_) | LedgerError::Stopped)) => {
                error(ErrorCode::Unavailable, e.to_string())
            }
            Err(e @ LedgerError::Busy(_)) => error(ErrorCode::Busy, e.to_string()),
            Err(e) => error(ErrorCode::Refused, e.to_string()),
        },
    };
    answer(send, &resp, None).await
}

/// A consensus message from another validator's host.
pub(super) async fn raft(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    who: &PublicId,
    kind: RaftKind,
    len: u64,
) -> Result<(), ProtoError> {
    let Some(body) = validator_body(send, recv, state, who, len).await? else {
        return Ok(());
    };
    let ledger = state.ledger.clone().expect("checked by validator_body");
    match ledger.raft_message(kind, &body).await {
        Ok(bytes) => {
            let resp = Response::ChainBody {
                len: bytes.len() as u64,
            };
            answer(send, &resp, Some(Bytes::from(bytes))).await
        }
        Err(e) => {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            answer(send, &error(ErrorCode::Malformed, e.to_string()), None).await
        }
    }
}

/// The leader's proposed block, from another validator's host: this validator's
/// endorsement or why not.
pub(super) async fn endorse(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    who: &PublicId,
    len: u64,
) -> Result<(), ProtoError> {
    let Some(body) = validator_body(send, recv, state, who, len).await? else {
        return Ok(());
    };
    let ledger = state.ledger.clone().expect("checked by validator_body");
    let endorsement = ledger.endorse(&body).await;
    let resp = Response::ChainBody {
        len: endorsement.len() as u64,
    };
    answer(send, &resp, Some(Bytes::from(endorsement))).await
}

/// A document's record (as `who` may see it) with its proof, and the proof of its
/// registration.
pub(super) async fn get_document(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    who: &PublicId,
    id: DocumentId,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    let found = blocking(move || ledger.document(&id)).await;
    let found = match found {
        Ok(Some((record, proof))) => match redact(state, who, &id, record).await {
            Ok(record) => Ok(Some((record, proof))),
            Err(e) => return refuse(send, recv, state, who, e).await,
        },
        other => other,
    };
    chain_answer(send, found).await
}

/// `delegation.document`'s record showing the citizen's grant alone, with its proof and the
/// proof of its registration: what the citizen would see (the delegation checked by
/// `authorise`, the grant live).
pub(super) async fn get_delegated_document(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    delegation: &crate::delegation::Delegation,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    let (id, citizen) = (delegation.document, delegation.citizen);
    let found = blocking(move || ledger.document(&id)).await;
    let found = match found {
        Ok(Some((record, proof))) => {
            let live = record
                .record
                .as_ref()
                .is_some_and(|r| r.live_grant(&citizen, crate::now_ms()).is_some());
            let seen = live.then(|| record.only_grant_of(&citizen)).flatten();
            match seen {
                Some(record) => Ok(Some((record, proof))),
                None => {
                    let e = AccessError::NotGranted {
                        who: citizen,
                        document: id,
                    };
                    return refuse(send, recv, state, &citizen, e).await;
                }
            }
        }
        other => other,
    };
    chain_answer(send, found).await
}

pub(super) async fn get_block(
    send: &mut SendStream,
    state: &State,
    height: u64,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    let found = blocking(move || ledger.block(height)).await;
    chain_answer(send, found).await
}

pub(super) async fn get_tx(
    send: &mut SendStream,
    state: &State,
    id: [u8; 32],
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    let found = blocking(move || ledger.transaction(&id)).await;
    chain_answer(send, found).await
}

pub(super) async fn get_validator_changes(
    send: &mut SendStream,
    state: &State,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    let found = blocking(move || ledger.validator_changes().map(Some)).await;
    chain_answer(send, found).await
}

/// The hosted validator's signature of a checkpoint, for another validator's host.
pub(super) async fn sign_checkpoint(
    send: &mut SendStream,
    state: &State,
    who: &PublicId,
    height: u64,
) -> Result<(), ProtoError> {
    let Some(ledger) = state.ledger.clone() else {
        return answer(send, &not_validator(), None).await;
    };
    if !ledger.is_validator_host(who) {
        state.stats.refused.fetch_add(1, Ordering::Relaxed);
        let msg = format!("{} hosts no validator of this chain", who.short());
        return answer(send, &error(ErrorCode::Refused, msg), None).await;
    }
    let found = blocking(move || ledger.checkpoint_signature(height)).await;
    chain_answer(send, found).await
}

/// A kept checkpoint with its anchor answers and timestamp token.
pub(super) async fn get_checkpoint(
    send: &mut SendStream,
    state: &State,
    height: Option<u64>,
    covering: bool,
) -> Result<(), ProtoError> {
    let Some(ledger) = state.ledger.clone() else {
        return answer(send, &not_validator(), None).await;
    };
    let found = blocking(move || match (height, covering) {
        (Some(h), true) => ledger.checkpoint_covering(h),
        _ => ledger.checkpoint(height),
    })
    .await;
    chain_answer(send, found).await
}

/// A document's record (as `who` may see it) or its absence, with its proof.
pub(super) async fn get_record(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    who: &PublicId,
    id: DocumentId,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    let found = match ledger.proven_record(&id) {
        Ok(proven) => match redact(state, who, &id, proven).await {
            Ok(proven) => Ok(Some(proven)),
            Err(e) => return refuse(send, recv, state, who, e).await,
        },
        Err(e) => Err(e),
    };
    chain_answer(send, found).await
}

/// An account (role, last nonce) or its absence, with its proof.
pub(super) async fn get_account(
    send: &mut SendStream,
    state: &State,
    id: PublicId,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    chain_answer(send, ledger.proven_account(&id).map(Some)).await
}

/// A document type's version (or its absence), with its proof.
pub(super) async fn get_type(
    send: &mut SendStream,
    state: &State,
    name: &str,
    version: Option<u32>,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    chain_answer(send, ledger.proven_type(name, version).map(Some)).await
}

/// The current version of every document type (no proof).
pub(super) async fn list_types(send: &mut SendStream, state: &State) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    let found = ledger.records(|r| r.current_types());
    chain_answer(send, Ok(Some(found))).await
}

/// A document's record entry (type, retention, holds) or its absence, with its proof.
pub(super) async fn get_record_entry(
    send: &mut SendStream,
    state: &State,
    id: DocumentId,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    chain_answer(send, ledger.proven_record_entry(&id).map(Some)).await
}

pub(super) async fn status(send: &mut SendStream, state: &State) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    chain_answer(send, Ok(Some(ledger.status()))).await
}

/// The state's top (layouts, validators, validator hosts) with its proof.
pub(super) async fn get_layout(send: &mut SendStream, state: &State) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    chain_answer(send, ledger.proven_state().map(Some)).await
}

/// A page of registered document ids with its proof that none is left out.
pub(super) async fn list_documents(
    send: &mut SendStream,
    state: &State,
    after: Option<DocumentId>,
    limit: u32,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    let limit = limit.clamp(1, MAX_LIST) as usize;
    let page = blocking(move || ledger.proven_documents(after.as_ref(), limit).map(Some)).await;
    chain_answer(send, page).await
}

/// The documents with a live grant to `grantee` after `after`, each record as `who` may
/// see it (`access::ChainScope`): whole if `who` may see every record or owns it, the grant
/// alone if `who` is the grantee, else left out.
pub(super) async fn list_granted(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    who: &PublicId,
    grantee: PublicId,
    after: Option<DocumentId>,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    let everything = ledger.is_validator_host(who)
        || match state.access.chain_scope(who).await {
            Ok(scope) => scope == ChainScope::Everything,
            Err(e) => return refuse(send, recv, state, who, e).await,
        };
    let who = *who;
    let sight = move |record: &DocumentRecord| {
        if everything || record.owner == who {
            Sight::Whole
        } else if grantee == who {
            Sight::OneGrant
        } else {
            Sight::Nothing
        }
    };
    let page = blocking(move || {
        ledger
            .proven_granted(&grantee, after.as_ref(), sight)
            .map(Some)
    })
    .await;
    chain_answer(send, page).await
}

/// A bucket's record.
pub(super) async fn get_bucket(
    send: &mut SendStream,
    state: &State,
    bucket: &str,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    let found = ledger.names(|n| n.bucket(bucket).cloned());
    chain_answer(send, Ok(found)).await
}

/// A proposal (`chain::workflow`) with its proof.
pub(super) async fn get_proposal(
    send: &mut SendStream,
    state: &State,
    id: ProposalId,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    chain_answer(send, ledger.proven_proposal(&id).map(Some)).await
}

/// The proposals open now that name the caller and that it has not answered.
pub(super) async fn list_proposals(
    send: &mut SendStream,
    state: &State,
    who: &PublicId,
    after: Option<ProposalId>,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    let who = *who;
    let found = blocking(move || ledger.proposals_awaiting(&who, after)).await;
    chain_answer(send, Ok(Some(found))).await
}

/// The proposal a document waits for, with its proof.
pub(super) async fn get_awaiting(
    send: &mut SendStream,
    state: &State,
    document: DocumentId,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    chain_answer(send, ledger.proven_awaiting(&document).map(Some)).await
}

/// The caller's own buckets.
pub(super) async fn list_buckets(
    send: &mut SendStream,
    state: &State,
    who: &PublicId,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    let found = ledger.names(|n| n.buckets_of(who));
    chain_answer(send, Ok(Some(found))).await
}

/// Refused unless `who` owns `bucket` or hosts a validator: a bucket's names are its
/// owner's. An unknown bucket is no secret.
fn may_read_names(ledger: &Ledger, who: &PublicId, bucket: &str) -> Result<(), AccessError> {
    let owner = ledger.names(|n| n.bucket(bucket).map(|b| b.owner));
    match owner {
        Some(owner) if owner != *who && !ledger.is_validator_host(who) => {
            Err(AccessError::NotBucketOwner {
                who: *who,
                bucket: bucket.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// A name bound in a bucket, for the bucket's owner.
pub(super) async fn get_name(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    who: &PublicId,
    bucket: &str,
    key: &str,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    if let Err(e) = may_read_names(&ledger, who, bucket) {
        return refuse(send, recv, state, who, e).await;
    }
    let found = ledger.names(|n| n.name(bucket, key).cloned());
    chain_answer(send, Ok(found)).await
}

/// What a `ListNames` asks.
pub(super) struct NameQuery {
    pub bucket: String,
    pub prefix: String,
    pub delimiter: Option<String>,
    pub from: Vec<u8>,
    pub limit: u32,
}

/// A page of a bucket's names, for the bucket's owner.
pub(super) async fn list_names(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    who: &PublicId,
    q: NameQuery,
) -> Result<(), ProtoError> {
    let ledger = current_ledger!(state, send);
    if let Err(e) = may_read_names(&ledger, who, &q.bucket) {
        return refuse(send, recv, state, who, e).await;
    }
    let limit = (q.limit as usize).clamp(1, crate::chain::names::MAX_NAME_PAGE);
    let page = blocking(move || {
        Ok(ledger.names(|n| {
            n.bucket(&q.bucket)
                .is_some()
                .then(|| n.list(&q.bucket, &q.prefix, q.delimiter.as_deref(), &q.from, limit))
        }))
    })
    .await;
    chain_answer(send, page).await
}

/// `proven` (the record of `document`, whole) as `who` may see it from this validator
/// (`access::ChainScope`): whole, its own grant alone with that grant's path, or refused.
async fn redact(
    state: &State,
    who: &PublicId,
    document: &DocumentId,
    proven: ProvenRecord,
) -> Result<ProvenRecord, AccessError> {
    let Some(record) = proven.record.clone() else {
        return Ok(proven); // "not registered" is no secret
    };
    let scope = if state
        .ledger
        .as_ref()
        .is_some_and(|l| l.is_validator_host(who))
    {
        ChainScope::Everything
    } else {
        state.access.chain_scope(who).await?
    };
    let whole = record.grants.len();
    let seen = scope.redact(who, document, record, crate::now_ms())?;
    if seen.grants.len() == whole {
        return Ok(proven);
    }
    proven.only_grant_of(who).ok_or(AccessError::NotGranted {
        who: *who,
        document: *document,
    })
}

/// Reads the body of a validator-to-validator request, or answers the refusal (`None`):
/// only a peer hosting a validator of this chain may send one.
async fn validator_body(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    who: &PublicId,
    len: u64,
) -> Result<Option<Vec<u8>>, ProtoError> {
    if let Err(e) = proto::check_body_len("consensus message", len, MAX_CHAIN_BODY) {
        let _ = recv.stop(ErrorCode::TooLarge.as_u32().into());
        answer(send, &error(ErrorCode::TooLarge, e.to_string()), None).await?;
        return Ok(None);
    }
    let Some(ledger) = &state.ledger else {
        let _ = recv.stop(ErrorCode::NotValidator.as_u32().into());
        answer(send, &not_validator(), None).await?;
        return Ok(None);
    };
    if !ledger.is_validator_host(who) {
        state.stats.refused.fetch_add(1, Ordering::Relaxed);
        let _ = recv.stop(ErrorCode::Refused.as_u32().into());
        let msg = format!("{} hosts no validator of this chain", who.short());
        answer(send, &error(ErrorCode::Refused, msg), None).await?;
        return Ok(None);
    }
    Ok(Some(proto::read_body(recv, len).await?))
}

/// The ledger to answer a chain query from: none on a peer without a validator, and not
/// one that is behind the chain (`Ledger::is_current`: restarted, cut off or catching up),
/// which answers `Unavailable` so the client asks another validator rather than read older
/// state than it may already have seen.
fn query_ledger(state: &State) -> Result<Arc<Ledger>, Response> {
    let ledger = state.ledger.clone().ok_or_else(not_validator)?;
    if !ledger.is_current() {
        return Err(error(
            ErrorCode::Unavailable,
            "this validator is behind the chain; ask another",
        ));
    }
    Ok(ledger)
}

fn not_validator() -> Response {
    error(ErrorCode::NotValidator, "this peer runs no validator")
}

/// Answers a chain query: the record's postcard bytes, `NotFound`, or the error.
pub(super) async fn chain_answer<T: serde::Serialize>(
    send: &mut SendStream,
    found: Result<Option<T>, LedgerError>,
) -> Result<(), ProtoError> {
    match found {
        Ok(Some(record)) => {
            let body = postcard::to_allocvec(&record).expect("encoding into memory cannot fail");
            let resp = Response::ChainBody {
                len: body.len() as u64,
            };
            answer(send, &resp, Some(Bytes::from(body))).await
        }
        Ok(None) => answer(send, &Response::NotFound, None).await,
        Err(e @ (LedgerError::Unavailable(_) | LedgerError::Stopped)) => {
            answer(send, &error(ErrorCode::Unavailable, e.to_string()), None).await
        }
        Err(e) => {
            warn!(error = %e, "chain query failed");
            answer(send, &error(ErrorCode::Internal, e.to_string()), None).await
        }
    }
}
