//! The read audit a peer answers: its own records of reads of a document, each with its
//! Merkle proof against the `AuditRoot` committed on chain that covers it (`audit`).
//!
//! Not for: recording reads (the storage handlers do, once a read is served), or deciding
//! who may see them (`access::ChainView::may_audit`, in the parent module's `authorise`).

use quinn::SendStream;
use tracing::warn;

use super::{State, answer, blocking, chain::chain_answer, error};
use crate::id::DocumentId;
use crate::proto::{ErrorCode, MAX_AUDIT_PAGE, ProtoError};

/// One page of this peer's read records of `document`, after record `after`.
pub(super) async fn get_audit(
    send: &mut SendStream,
    state: &State,
    document: DocumentId,
    after: Option<u64>,
) -> Result<(), ProtoError> {
    let audit = state.audit.clone();
    match blocking(move || audit.page(&document, after, MAX_AUDIT_PAGE as usize)).await {
        Ok(page) => chain_answer(send, Ok(Some(page))).await,
        Err(e) => {
            warn!(error = %e, "audit query failed");
            answer(send, &error(ErrorCode::Internal, e.to_string()), None).await
        }
    }
}
