//! The storage requests of a peer: shards, manifests and small documents' batches, the
//! group committer that makes them durable, reading shards of opened documents, scrub,
//! usage and lists; and the store's answers as the wire carries them.
//!
//! Not for: authorising a request (done before a handler runs, in the parent module), or
//! anything on the chain.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{PeerStats, State, answer, blocking, error};
use crate::access::{AccessError, OpenDocuments};
use crate::audit::ReadKind;
use crate::id::{DocumentId, ShardId};
use crate::identity::PublicId;
use crate::proto::{
    self, DeleteOutcome, ErrorCode, MAX_BIND, MAX_LIST, MAX_MANIFEST_BODY, MAX_PUT_MANY,
    MAX_PUT_MANY_BODY, MAX_SCRUB, MAX_SHARD_BODY, ProtoError, Response,
};
use crate::store::{self, Holder, INLINE_MAX, Prepared, ShardStore, StoreError};

/// One durable write waiting for the committer: a prepared shard or a manifest record.
pub(super) enum Pending {
    Shard(Prepared),
    Record([u8; 32], Bytes),
}

pub(super) type CommitJob = (Pending, oneshot::Sender<Result<store::PutOutcome, String>>);

/// Group commit: one thread drains every durable write waiting (shards already prepared,
/// their large bodies on disk; manifest records) and commits them in one transaction.
pub(super) fn spawn_committer(
    store: Arc<ShardStore>,
    batch: usize,
    stats: Arc<PeerStats>,
) -> mpsc::UnboundedSender<CommitJob> {
    let (tx, mut rx) = mpsc::unbounded_channel::<CommitJob>();
    std::thread::Builder::new()
        .name("dangan-commit".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut jobs = vec![first];
                while jobs.len() < batch.max(1) {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let mut shards = Vec::new();
                let mut records = Vec::new();
                let mut shard_replies = Vec::new();
                let mut record_replies = Vec::new();
                for (pending, reply) in jobs {
                    match pending {
                        Pending::Shard(p) => {
                            shards.push(p);
                            shard_replies.push(reply);
                        }
                        Pending::Record(key, bytes) => {
                            records.push((key, bytes));
                            record_replies.push(reply);
                        }
                    }
                }
                let record_refs: Vec<([u8; 32], &[u8])> =
                    records.iter().map(|(k, b)| (*k, b.as_ref())).collect();
                match store.commit(&shards, &record_refs) {
                    Ok((shard_outcomes, record_outcomes)) => {
                        stats
                            .shards_stored
                            .fetch_add(shards.len() as u64, Ordering::Relaxed);
                        for (reply, outcome) in shard_replies
                            .into_iter()
                            .zip(shard_outcomes)
                            .chain(record_replies.into_iter().zip(record_outcomes))
                        {
                            let _ = reply.send(Ok(outcome));
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, writes = shards.len() + records.len(), "durable commit failed");
                        let msg = e.to_string();
                        for reply in shard_replies.into_iter().chain(record_replies) {
                            let _ = reply.send(Err(msg.clone()));
                        }
                    }
                }
            }
        })
        .expect("spawning the commit thread");
    tx
}

/// Queues a durable write and waits for its group commit.
async fn commit(state: &State, pending: Pending) -> Response {
    wait(queue(state, pending)).await
}

type CommitReply = oneshot::Receiver<Result<store::PutOutcome, String>>;

/// Hands a durable write to the committer; [`wait`] for its answer.
fn queue(state: &State, pending: Pending) -> CommitReply {
    let (tx, rx) = oneshot::channel();
    // A stopped committer drops `tx`, which `wait` reports.
    let _ = state.committer.send((pending, tx));
    rx
}

/// `Stored` once the commit holding the write is durable, else the error.
async fn wait(rx: CommitReply) -> Response {
    match rx.await {
        Ok(Ok(outcome)) => Response::Stored(outcome.into()),
        Ok(Err(msg)) => error(ErrorCode::Internal, msg),
        Err(_) => error(ErrorCode::Internal, "commit thread stopped"),
    }
}

/// Checks a shard body against its id and, for a large one, writes it durably (on the
/// blocking pool, in parallel with other requests; only the small redb commit is shared).
/// A small body is only hashed (microseconds): no thread hop for it. The error is the
/// answer to send.
async fn prepare(
    state: &State,
    id: ShardId,
    body: Bytes,
    holder: Holder,
) -> Result<Prepared, Response> {
    let store = state.store.clone();
    let prepared = if body.len() <= INLINE_MAX {
        store.prepare(&id, body, holder)
    } else {
        blocking(move || store.prepare(&id, body, holder)).await
    };
    prepared.map_err(|e| {
        state.stats.refused.fetch_add(1, Ordering::Relaxed);
        store_error(state, e)
    })
}

/// Stores a shard, its reference held by `document`, or by `who` until it binds it.
pub(super) async fn put_shard(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    who: PublicId,
    (id, len, document): (ShardId, u64, Option<DocumentId>),
) -> Result<(), ProtoError> {
    if let Err(e) = proto::check_body_len("shard", len, MAX_SHARD_BODY) {
        let _ = recv.stop(ErrorCode::TooLarge.as_u32().into());
        return answer(send, &error(ErrorCode::TooLarge, e.to_string()), None).await;
    }
    let body = Bytes::from(proto::read_body(recv, len).await?);
    let holder = document.map_or(Holder::Upload(who), Holder::Document);
    let resp = match prepare(state, id, body, holder).await {
        Ok(prepared) => commit(state, Pending::Shard(prepared)).await,
        Err(resp) => resp,
    };
    answer(send, &resp, None).await
}

pub(super) async fn put_many(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    shards: Vec<(ShardId, u64)>,
    manifest: Option<(DocumentId, u64)>,
    document: DocumentId,
) -> Result<(), ProtoError> {
    let total = shards
        .iter()
        .map(|(_, len)| *len)
        .chain(manifest.map(|(_, len)| len))
        .fold(0u64, u64::saturating_add);
    let too_many = shards.len() > MAX_PUT_MANY;
    let checked =
        proto::check_body_len("batch", total, MAX_PUT_MANY_BODY).and_then(|()| match manifest {
            Some((_, len)) => proto::check_body_len("manifest", len, MAX_MANIFEST_BODY),
            None => Ok(()),
        });
    if let Err(e) = checked {
        let _ = recv.stop(ErrorCode::TooLarge.as_u32().into());
        return answer(send, &error(ErrorCode::TooLarge, e.to_string()), None).await;
    }
    if too_many {
        let _ = recv.stop(ErrorCode::TooLarge.as_u32().into());
        let msg = format!(
            "{} shards in one batch, at most {MAX_PUT_MANY}",
            shards.len()
        );
        return answer(send, &error(ErrorCode::TooLarge, msg), None).await;
    }
    // Every body is read and checked before any is queued: a bad one keeps nothing.
    let mut pending = Vec::with_capacity(shards.len() + 1);
    for (id, len) in shards {
        let body = Bytes::from(proto::read_body(recv, len).await?);
        match prepare(state, id, body, Holder::Document(document)).await {
            Ok(prepared) => pending.push(Pending::Shard(prepared)),
            Err(resp) => return answer(send, &resp, None).await,
        }
    }
    if let Some((id, len)) = manifest {
        let body = proto::read_body(recv, len).await?;
        if !id.verifies(&body) {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            let msg = format!("manifest body does not hash to {id}");
            return answer(send, &error(ErrorCode::HashMismatch, msg), None).await;
        }
        pending.push(Pending::Record(id.0, Bytes::from(body)));
    }
    // Queued together, so the committer nearly always puts them in one transaction;
    // each is acknowledged by its own commit either way.
    let queued: Vec<_> = pending.into_iter().map(|p| queue(state, p)).collect();
    let mut outcomes = Vec::with_capacity(queued.len());
    let mut failed = None;
    for rx in queued {
        match wait(rx).await {
            Response::Stored(outcome) => outcomes.push(outcome),
            other => failed = Some(other),
        }
    }
    let resp = failed.unwrap_or(Response::StoredMany(outcomes));
    answer(send, &resp, None).await
}

/// Answers a read that the audit log cannot record: `Unavailable`, no document byte (fail
/// closed, `audit`).
async fn unrecorded(
    send: &mut SendStream,
    state: &State,
    e: crate::audit::AuditError,
) -> Result<(), ProtoError> {
    state.stats.refused.fetch_add(1, Ordering::Relaxed);
    warn!(error = %e, "read refused: it cannot be recorded");
    answer(send, &error(ErrorCode::Unavailable, e.to_string()), None).await
}

/// Serves a shard; a read of document `read_of` (see `authorise`) is recorded before its
/// bytes are sent, or refused if it cannot be.
/// Serves shard `id`; `record` is the read to record first (reader, document, kind), if
/// it names a document.
pub(super) async fn get_shard(
    send: &mut SendStream,
    state: &State,
    record: Option<(PublicId, DocumentId, ReadKind)>,
    id: ShardId,
) -> Result<(), ProtoError> {
    let store = state.store.clone();
    match blocking(move || store.get(&id)).await {
        Ok(Some(bytes)) => {
            if let Some((reader, document, read)) = record
                && let Err(e) = state.audit.record(reader, document, read)
            {
                return unrecorded(send, state, e).await;
            }
            state.stats.shards_served.fetch_add(1, Ordering::Relaxed);
            let resp = Response::Shard {
                len: bytes.len() as u64,
            };
            answer(send, &resp, Some(Bytes::from(bytes))).await
        }
        Ok(None) => answer(send, &Response::NotFound, None).await,
        Err(e) => answer(send, &store_error(state, e), None).await,
    }
}

pub(super) async fn has_shard(
    send: &mut SendStream,
    state: &State,
    id: ShardId,
    document: Option<DocumentId>,
) -> Result<(), ProtoError> {
    let store = state.store.clone();
    let resp = match blocking(move || match document {
        Some(document) => store.has_ref(&id, &document),
        None => store.has(&id),
    })
    .await
    {
        Ok(has) => Response::Has(has),
        Err(e) => store_error(state, e),
    };
    answer(send, &resp, None).await
}

/// Whether `document` holds a reference to shard `id` and the body re-hashes to it: the
/// answer a rebalance needs before it deletes the old copy. A corrupt or missing body is
/// answered `Corrupt` (and counted), so the caller writes the shard again (a put onto a
/// corrupt body rewrites it, `store`).
pub(super) async fn verify_shard(
    send: &mut SendStream,
    state: &State,
    id: ShardId,
    document: DocumentId,
) -> Result<(), ProtoError> {
    let store = state.store.clone();
    let checked = blocking(move || {
        if !store.has_ref(&id, &document)? {
            return Ok(false);
        }
        store.get(&id).map(|body| body.is_some())
    })
    .await;
    let resp = match checked {
        Ok(good) => Response::Has(good),
        Err(e) => store_error(state, e),
    };
    answer(send, &resp, None).await
}

/// Drops `document`'s reference to a shard, and no other (`store`).
pub(super) async fn delete_shard(
    send: &mut SendStream,
    state: &State,
    id: ShardId,
    document: DocumentId,
) -> Result<(), ProtoError> {
    let store = state.store.clone();
    let resp = match blocking(move || store.delete(&id, &document)).await {
        Ok(outcome) => Response::Deleted(outcome.into()),
        Err(e) => store_error(state, e),
    };
    answer(send, &resp, None).await
}

/// Gives `document` the references `who` holds by upload to `shards` (`store::bind`).
pub(super) async fn bind_shards(
    send: &mut SendStream,
    state: &State,
    who: PublicId,
    document: DocumentId,
    shards: Vec<ShardId>,
) -> Result<(), ProtoError> {
    if shards.len() > MAX_BIND {
        state.stats.refused.fetch_add(1, Ordering::Relaxed);
        let msg = format!("{} shards in one bind, at most {MAX_BIND}", shards.len());
        return answer(send, &error(ErrorCode::TooLarge, msg), None).await;
    }
    let store = state.store.clone();
    let resp = match blocking(move || store.bind(&who, &document, &shards)).await {
        Ok(bound) => Response::Bound(bound as u32),
        Err(e) => store_error(state, e),
    };
    answer(send, &resp, None).await
}

pub(super) async fn list_shards(
    send: &mut SendStream,
    state: &State,
    after: Option<ShardId>,
    limit: u32,
) -> Result<(), ProtoError> {
    let store = state.store.clone();
    let limit = limit.min(MAX_LIST) as usize;
    let resp = match blocking(move || store.list_from(after, limit)).await {
        Ok(ids) => Response::List(ids),
        Err(e) => store_error(state, e),
    };
    answer(send, &resp, None).await
}

pub(super) async fn usage(send: &mut SendStream, state: &State) -> Result<(), ProtoError> {
    let store = state.store.clone();
    let resp = match blocking(move || store.usage()).await {
        Ok(u) => Response::Usage(u.into()),
        Err(e) => store_error(state, e),
    };
    answer(send, &resp, None).await
}

pub(super) async fn put_manifest(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    id: DocumentId,
    len: u64,
) -> Result<(), ProtoError> {
    if let Err(e) = proto::check_body_len("manifest", len, MAX_MANIFEST_BODY) {
        let _ = recv.stop(ErrorCode::TooLarge.as_u32().into());
        return answer(send, &error(ErrorCode::TooLarge, e.to_string()), None).await;
    }
    let body = proto::read_body(recv, len).await?;
    let resp = if id.verifies(&body) {
        commit(state, Pending::Record(id.0, Bytes::from(body))).await
    } else {
        state.stats.refused.fetch_add(1, Ordering::Relaxed);
        error(
            ErrorCode::HashMismatch,
            format!("manifest body does not hash to {id}"),
        )
    };
    answer(send, &resp, None).await
}

/// Serves a manifest; the read is recorded before its bytes are sent, or refused if it
/// cannot be.
/// Serves document `id`'s manifest, recorded first as `reader`'s read `read`.
pub(super) async fn get_manifest(
    send: &mut SendStream,
    state: &State,
    reader: PublicId,
    read: ReadKind,
    id: DocumentId,
) -> Result<(), ProtoError> {
    let store = state.store.clone();
    match blocking(move || store.get_blob(&id.0)).await {
        Ok(Some(bytes)) => {
            if let Err(e) = state.audit.record(reader, id, read) {
                return unrecorded(send, state, e).await;
            }
            let resp = Response::Manifest {
                len: bytes.len() as u64,
            };
            answer(send, &resp, Some(Bytes::from(bytes))).await
        }
        Ok(None) => answer(send, &Response::NotFound, None).await,
        Err(e) => answer(send, &store_error(state, e), None).await,
    }
}

/// Opens `document` for reading its shards on this connection (`access::OpenDocuments`).
pub(super) async fn open_document(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    opened: &OpenDocuments,
    document: DocumentId,
    len: u64,
) -> Result<(), ProtoError> {
    open_with(send, recv, state, len, |body| opened.open(document, body)).await
}

/// Opens `delegation.document` on this connection for the citizen who signed it (the
/// delegation already checked by `authorise`).
pub(super) async fn open_delegated(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    opened: &OpenDocuments,
    delegation: &crate::delegation::Delegation,
    len: u64,
) -> Result<(), ProtoError> {
    open_with(send, recv, state, len, |body| {
        opened.open_delegated(delegation, body)
    })
    .await
}

/// Reads a manifest body of `len` bytes and opens it with `open`.
async fn open_with(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    len: u64,
    open: impl FnOnce(&[u8]) -> Result<usize, AccessError>,
) -> Result<(), ProtoError> {
    if let Err(e) = proto::check_body_len("manifest", len, MAX_MANIFEST_BODY) {
        let _ = recv.stop(ErrorCode::TooLarge.as_u32().into());
        return answer(send, &error(ErrorCode::TooLarge, e.to_string()), None).await;
    }
    let body = proto::read_body(recv, len).await?;
    let resp = match open(&body) {
        Ok(shards) => Response::Opened {
            shards: shards as u32,
        },
        Err(e) => {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            let code = match e {
                AccessError::ManifestMismatch(_) => ErrorCode::HashMismatch,
                _ => ErrorCode::Malformed,
            };
            error(code, e.to_string())
        }
    };
    answer(send, &resp, None).await
}

pub(super) async fn delete_manifest(
    send: &mut SendStream,
    state: &State,
    id: DocumentId,
) -> Result<(), ProtoError> {
    let store = state.store.clone();
    let resp = match blocking(move || store.delete_blob(&id.0)).await {
        Ok(true) => Response::Deleted(DeleteOutcome::Removed),
        Ok(false) => Response::Deleted(DeleteOutcome::NotFound),
        Err(e) => store_error(state, e),
    };
    answer(send, &resp, None).await
}

pub(super) async fn scrub(
    send: &mut SendStream,
    state: &State,
    after: Option<ShardId>,
    limit: u32,
) -> Result<(), ProtoError> {
    let store = state.store.clone();
    let limit = limit.clamp(1, MAX_SCRUB) as usize;
    let resp = match blocking(move || store.scrub(after, limit)).await {
        Ok(page) => {
            state
                .stats
                .corrupt_detected
                .fetch_add(page.corrupt.len() as u64, Ordering::Relaxed);
            state.metrics.scrubbed(page.checked, page.corrupt.len());
            Response::Scrubbed(page.into())
        }
        Err(e) => store_error(state, e),
    };
    answer(send, &resp, None).await
}

/// One page of stale references and manifests (`store::stale`).
pub(super) async fn list_stale(
    send: &mut SendStream,
    state: &State,
    after: Option<proto::StaleEntry>,
    before_ms: u64,
    limit: u32,
) -> Result<(), ProtoError> {
    let store = state.store.clone();
    let limit = limit.clamp(1, MAX_LIST) as usize;
    let after = after.map(store::Stale::from);
    let resp = match blocking(move || store.stale(after, before_ms, limit)).await {
        Ok((stale, last)) => Response::StalePage(proto::StalePage {
            stale: stale.into_iter().map(Into::into).collect(),
            last: last.map(Into::into),
        }),
        Err(e) => store_error(state, e),
    };
    answer(send, &resp, None).await
}

/// Drops a stale reference or manifest. One that names a document goes only once the chain
/// proves that document is not registered (a proven answer, asked afresh); when the peer
/// cannot tell, it keeps the bytes (`Unavailable`). The store drops it only if it is still
/// older than `before_ms`.
pub(super) async fn collect_stale(
    send: &mut SendStream,
    state: &State,
    entry: proto::StaleEntry,
    before_ms: u64,
) -> Result<(), ProtoError> {
    let named = match entry {
        proto::StaleEntry::Reference {
            holder: proto::StaleHolder::Document(d),
            ..
        }
        | proto::StaleEntry::Manifest(d) => Some(d),
        proto::StaleEntry::Reference { .. } => None,
    };
    if let Some(document) = named {
        let refusal = match state.access.document(&document, true).await {
            Ok(None) => match state.access.awaits_registration(&document).await {
                Ok(false) => None,
                Ok(true) => Some(error(
                    ErrorCode::Refused,
                    format!(
                        "document {document} waits for a proposal that registers it; its bytes are kept"
                    ),
                )),
                Err(e) => Some(error(
                    ErrorCode::Unavailable,
                    format!(
                        "cannot tell whether document {document} waits for a proposal ({e}); kept"
                    ),
                )),
            },
            Ok(Some(_)) => Some(error(
                ErrorCode::Refused,
                format!("document {document} is registered; its bytes are kept"),
            )),
            Err(e) => Some(error(
                ErrorCode::Unavailable,
                format!("cannot tell whether document {document} is registered ({e}); kept"),
            )),
        };
        if let Some(resp) = refusal {
            return answer(send, &resp, None).await;
        }
    }
    let store = state.store.clone();
    let stale = store::Stale::from(entry);
    let resp = match blocking(move || store.collect(&stale, before_ms)).await {
        Ok(outcome) => {
            if outcome != store::DeleteOutcome::NotFound {
                info!(?entry, "orphan collected");
            }
            Response::Deleted(outcome.into())
        }
        Err(e) => store_error(state, e),
    };
    answer(send, &resp, None).await
}

fn store_error(state: &State, e: StoreError) -> Response {
    match e {
        StoreError::Corrupt { id } => {
            state.stats.corrupt_detected.fetch_add(1, Ordering::Relaxed);
            warn!(shard = %id, "corrupt shard found on read; not served, needs repair");
            error(
                ErrorCode::Corrupt,
                format!("stored copy of {id} is corrupt"),
            )
        }
        StoreError::CorruptBlob { key } => {
            state.stats.corrupt_detected.fetch_add(1, Ordering::Relaxed);
            let id = hex::encode(key);
            warn!(manifest = %id, "corrupt manifest found on read; not served");
            error(
                ErrorCode::Corrupt,
                format!("stored manifest {id} is corrupt"),
            )
        }
        StoreError::HashMismatch { id } => error(
            ErrorCode::HashMismatch,
            format!("body does not hash to {id}"),
        ),
        StoreError::BlobHashMismatch { key } => error(
            ErrorCode::HashMismatch,
            format!("body does not hash to {}", hex::encode(key)),
        ),
        other => {
            warn!(error = %other, "store failure");
            error(ErrorCode::Internal, other.to_string())
        }
    }
}

// The store's answers as the wire carries them: the wire types are `proto`'s, so a change
// to the store never changes the wire format.

impl From<store::PutOutcome> for proto::PutOutcome {
    fn from(o: store::PutOutcome) -> Self {
        match o {
            store::PutOutcome::Stored => Self::Stored,
            store::PutOutcome::AlreadyPresent => Self::AlreadyPresent,
        }
    }
}

impl From<store::DeleteOutcome> for proto::DeleteOutcome {
    fn from(o: store::DeleteOutcome) -> Self {
        match o {
            store::DeleteOutcome::Removed => Self::Removed,
            store::DeleteOutcome::Decremented => Self::Decremented,
            store::DeleteOutcome::NotFound => Self::NotFound,
        }
    }
}

impl From<store::ScrubPage> for proto::ScrubPage {
    fn from(p: store::ScrubPage) -> Self {
        let store::ScrubPage {
            checked,
            bytes,
            corrupt,
            last,
        } = p;
        Self {
            checked,
            bytes,
            corrupt,
            last,
        }
    }
}

impl From<store::Usage> for proto::Usage {
    fn from(u: store::Usage) -> Self {
        let store::Usage { shards, bytes } = u;
        Self { shards, bytes }
    }
}

impl From<store::Holder> for proto::StaleHolder {
    fn from(h: store::Holder) -> Self {
        match h {
            store::Holder::Document(d) => Self::Document(d),
            store::Holder::Upload(k) => Self::Upload(k),
        }
    }
}

impl From<proto::StaleHolder> for store::Holder {
    fn from(h: proto::StaleHolder) -> Self {
        match h {
            proto::StaleHolder::Document(d) => Self::Document(d),
            proto::StaleHolder::Upload(k) => Self::Upload(k),
        }
    }
}

impl From<store::Stale> for proto::StaleEntry {
    fn from(s: store::Stale) -> Self {
        match s {
            store::Stale::Reference { shard, holder } => Self::Reference {
                shard,
                holder: holder.into(),
            },
            store::Stale::Record(key) => Self::Manifest(DocumentId(key)),
        }
    }
}

impl From<proto::StaleEntry> for store::Stale {
    fn from(e: proto::StaleEntry) -> Self {
        match e {
            proto::StaleEntry::Reference { shard, holder } => Self::Reference {
                shard,
                holder: holder.into(),
            },
            proto::StaleEntry::Manifest(d) => Self::Record(d.0),
        }
    }
}
