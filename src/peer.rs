//! A storage peer: serves the wire protocol (`proto`) over QUIC from its `ShardStore`.
//!
//! Goals: acknowledge a shard only once it is durable; never serve bytes that do not match
//! their id; keep serving everyone else whatever one client sends; bound what any client can
//! make it hold (connections, requests in flight, frame and body sizes, time per request).
//!
//! Durable writes go through one committer thread per peer that gathers concurrent puts into
//! one redb transaction (group commit), so many small shards share one fsync. A body is
//! checked against its id before it joins a batch, so a bad shard never fails other
//! clients' puts.
//!
//! Every request is authorised by `access` from the caller's key (authenticated by the TLS
//! handshake) and the chain state now: reads by the owner, a live grantee, an operator or a
//! storage node; writes and maintenance by the roles that need them; chain records by
//! `access::ChainScope`; read audits by the document's owner and operators. Every read
//! served with document bytes is recorded in the peer's `audit::AuditLog`. A refusal is
//! `ErrorCode::Refused` with the reason, before any body is read or any document byte sent.
//! Authorisation runs within [`AUTHORISE_TIMEOUT`]; when the chain cannot say (unreachable,
//! this peer's validator behind and no other answering, or too slow) the answer is
//! `ErrorCode::Unavailable` instead, equally before any body or byte: the reader asks again
//! shortly or asks another peer.
//!
//! Not for: deciding placement, or deciding who may read (that is the chain's and
//! `access`'s).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quinn::{RecvStream, SendStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::access::{AccessError, ChainScope, ChainView, OpenDocuments};
use crate::audit::{self, AuditError, AuditLog, ReadKind};
use crate::chain::ledger::{Ledger, LedgerError};
use crate::chain::state::DocumentRecord;
use crate::chain::tx::SignedTx;
use crate::id::{DocumentId, ShardId};
use crate::identity::{Identity, PublicId, Role};
use crate::proto::{
    self, DeleteOutcome, ErrorCode, MAX_AUDIT_PAGE, MAX_CHAIN_BODY, MAX_LIST, MAX_MANIFEST_BODY,
    MAX_PUT_MANY, MAX_PUT_MANY_BODY, MAX_SCRUB, MAX_SHARD_BODY, MAX_TX_BODY, ProtoError, Request,
    Response,
};
use crate::store::{self, INLINE_MAX, Prepared, ShardStore, StoreError};
use crate::tls::{self, TrustPolicy};

/// Longest a request waits for its authorisation (`access`) before it is answered
/// `Unavailable`: well within a reader's time limit, so it asks again or elsewhere.
pub const AUTHORISE_TIMEOUT: Duration = Duration::from_secs(2);

/// Limits that keep one slow or hostile client from exhausting a peer.
#[derive(Debug, Clone)]
pub struct PeerLimits {
    /// Open connections at once; more are refused during the handshake.
    pub max_connections: usize,
    /// Requests being served at once across all connections.
    pub max_concurrent_requests: usize,
    /// How long a request waits for a slot before it is answered `Busy`.
    pub queue_timeout: Duration,
    /// Time for a whole request, from its first byte to the last byte of the answer.
    pub request_timeout: Duration,
    /// Most shards gathered into one durable commit.
    pub commit_batch: usize,
    /// How often the peer commits the Merkle root of its new read records (`audit`).
    pub audit_interval: Duration,
}

impl Default for PeerLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_concurrent_requests: 256,
            queue_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            commit_batch: 64,
            audit_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    #[error("opening the shard store: {0}")]
    Store(#[from] StoreError),
    #[error("starting the QUIC endpoint: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("the peer's local address is unknown: {0}")]
    Addr(#[source] std::io::Error),
    #[error("opening the audit log: {0}")]
    Audit(#[from] AuditError),
}

/// Counters a peer keeps about what it served and refused.
#[derive(Debug, Default)]
pub struct PeerStats {
    pub requests: AtomicU64,
    pub shards_stored: AtomicU64,
    pub shards_served: AtomicU64,
    pub corrupt_detected: AtomicU64,
    pub refused: AtomicU64,
}

struct State {
    store: Arc<ShardStore>,
    committer: mpsc::UnboundedSender<CommitJob>,
    slots: Semaphore,
    ledger: Option<Arc<Ledger>>,
    access: Arc<ChainView>,
    audit: Arc<AuditLog>,
    limits: PeerLimits,
    stats: Arc<PeerStats>,
}

/// One durable write waiting for the committer: a prepared shard or a manifest record.
enum Pending {
    Shard(Prepared),
    Record([u8; 32], Bytes),
}

type CommitJob = (Pending, oneshot::Sender<Result<store::PutOutcome, String>>);

/// A running peer. Dropping the handle does not stop it; call [`PeerHandle::shutdown`].
pub struct PeerHandle {
    id: PublicId,
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    accept: JoinHandle<()>,
    store: Arc<ShardStore>,
    stats: Arc<PeerStats>,
    access: Arc<ChainView>,
    audit: Arc<AuditLog>,
    auditor: JoinHandle<()>,
    ledger: Option<Arc<Ledger>>,
}

impl PeerHandle {
    pub fn id(&self) -> PublicId {
        self.id
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store(&self) -> &Arc<ShardStore> {
        &self.store
    }

    pub fn stats(&self) -> &Arc<PeerStats> {
        &self.stats
    }

    /// The chain view requests are authorised by: the ledger on a validator's peer while it
    /// is current; otherwise the validator hosts (the other ones, on a validator's peer)
    /// once [`ChainView::link`]ed; unlinked and with no ledger, it refuses everything.
    pub fn access(&self) -> &Arc<ChainView> {
        &self.access
    }

    /// The peer's read records (`audit`).
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.audit
    }

    /// Stops accepting, closes every connection, stops the validator this peer hosts (if
    /// any), writes the buffered read records, and releases the port ([`crate::tls::close`]:
    /// connections still draining after half a second drain on a throwaway socket).
    ///
    /// The hosted validator is only reachable through this peer, so it stops with it: a
    /// leader whose raft outlived its peer would keep heartbeating, and its followers would
    /// keep sending clients to an address that refuses them instead of electing a new one.
    /// [`Ledger::shutdown`] may be called again afterwards.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"peer shutting down");
        self.accept.abort();
        let _ = self.accept.await;
        if let Some(ledger) = &self.ledger {
            ledger.shutdown().await;
        }
        self.auditor.abort();
        let _ = self.auditor.await;
        let audit = self.audit.clone();
        if let Err(e) = blocking(move || audit.flush()).await {
            warn!(error = %e, "writing the last read records failed");
        }
        crate::tls::close(&self.endpoint, b"peer shutting down").await;
        self.access.close().await;
        info!(peer = %self.id.short(), "peer stopped");
    }
}

/// Opens the store in `data_dir` and serves on `listen` until shut down; with a `ledger`,
/// the peer is also a validator and answers chain requests, and authorises requests by it.
/// `trust` decides which keys complete the handshake: a storage peer that serves citizens
/// passes [`crate::tls::AllowAny`] and relies on per-request authorisation (`access`).
pub async fn start(
    identity: &Identity,
    trust: Arc<dyn TrustPolicy>,
    listen: SocketAddr,
    data_dir: &Path,
    limits: PeerLimits,
    ledger: Option<Arc<Ledger>>,
) -> Result<PeerHandle, PeerError> {
    let store = {
        let dir = data_dir.to_path_buf();
        tokio::task::spawn_blocking(move || ShardStore::open(&dir))
            .await
            .expect("opening the store does not panic")?
    };
    let store = Arc::new(store);
    let audit = {
        let dir = data_dir.to_path_buf();
        Arc::new(blocking(move || AuditLog::open(&dir)).await?)
    };
    let endpoint = tls::endpoint(listen, identity, trust)?;
    let addr = endpoint.local_addr().map_err(PeerError::Addr)?;
    let stats = Arc::new(PeerStats::default());
    let access = Arc::new(match &ledger {
        Some(ledger) => ChainView::of_ledger(ledger.clone()),
        None => ChainView::unlinked(),
    });
    let state = Arc::new(State {
        store: store.clone(),
        committer: spawn_committer(store.clone(), limits.commit_batch, stats.clone()),
        slots: Semaphore::new(limits.max_concurrent_requests),
        ledger: ledger.clone(),
        access: access.clone(),
        audit: audit.clone(),
        limits: limits.clone(),
        stats: stats.clone(),
    });
    let accept = tokio::spawn(accept_loop(endpoint.clone(), state));
    let auditor = audit::spawn_auditor(
        audit.clone(),
        access.clone(),
        identity.clone(),
        limits.audit_interval,
    );
    let id = identity.public();
    info!(peer = %id.short(), %addr, dir = %data_dir.display(), "peer serving");
    Ok(PeerHandle {
        id,
        addr,
        endpoint,
        accept,
        store,
        stats,
        access,
        audit,
        auditor,
        ledger,
    })
}

/// Group commit: one thread drains every durable write waiting (shards already prepared,
/// their large bodies on disk; manifest records) and commits them in one transaction.
fn spawn_committer(
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
async fn prepare(state: &State, id: ShardId, body: Bytes) -> Result<Prepared, Response> {
    let store = state.store.clone();
    let prepared = if body.len() <= INLINE_MAX {
        store.prepare(&id, body)
    } else {
        blocking(move || store.prepare(&id, body)).await
    };
    prepared.map_err(|e| {
        state.stats.refused.fetch_add(1, Ordering::Relaxed);
        store_error(state, e)
    })
}

async fn accept_loop(endpoint: quinn::Endpoint, state: Arc<State>) {
    let connections = Arc::new(Semaphore::new(state.limits.max_connections));
    while let Some(incoming) = endpoint.accept().await {
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(conn) => conn,
                // The dialer gave up (a request's time limit ran out) or vanished: not
                // a refusal, and routine while a cluster starts.
                Err(
                    e @ (quinn::ConnectionError::ConnectionClosed(_)
                    | quinn::ConnectionError::ApplicationClosed(_)
                    | quinn::ConnectionError::Reset
                    | quinn::ConnectionError::TimedOut),
                ) => {
                    debug!(%remote, error = %e, "handshake abandoned by the other end");
                    return;
                }
                Err(e) => {
                    state.stats.refused.fetch_add(1, Ordering::Relaxed);
                    warn!(%remote, error = %e, "connection refused during the handshake");
                    return;
                }
            };
            let Some(who) = tls::peer_identity(&conn) else {
                conn.close(1u32.into(), b"no identity");
                return;
            };
            debug!(%remote, client = %who.short(), "connection accepted");
            serve_connection(conn, who, state).await;
            drop(permit);
        });
    }
}

async fn serve_connection(conn: quinn::Connection, who: PublicId, state: Arc<State>) {
    let opened = Arc::new(OpenDocuments::default());
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                debug!(client = %who.short(), reason = %e, "connection ended");
                return;
            }
        };
        let (state, opened) = (state.clone(), opened.clone());
        tokio::spawn(async move {
            serve_stream(send, recv, who, state, opened).await;
        });
    }
}

async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    who: PublicId,
    state: Arc<State>,
    opened: Arc<OpenDocuments>,
) {
    state.stats.requests.fetch_add(1, Ordering::Relaxed);
    let permit = match tokio::time::timeout(state.limits.queue_timeout, state.slots.acquire()).await
    {
        Ok(Ok(p)) => p,
        _ => {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            let _ = recv.stop(ErrorCode::Busy.as_u32().into());
            let _ = answer(&mut send, &error(ErrorCode::Busy, "peer is busy"), None).await;
            return;
        }
    };
    let timeout = state.limits.request_timeout;
    match tokio::time::timeout(timeout, handle(&mut send, &mut recv, &state, who, &opened)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(client = %who.short(), error = %e, "request failed"),
        Err(_) => {
            warn!(client = %who.short(), ?timeout, "request timed out");
            let _ = recv.stop(ErrorCode::Timeout.as_u32().into());
            let _ = send.reset(ErrorCode::Timeout.as_u32().into());
        }
    }
    drop(permit);
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

async fn answer(
    send: &mut SendStream,
    resp: &Response,
    body: Option<Bytes>,
) -> Result<(), ProtoError> {
    proto::write_frame(send, resp).await?;
    if let Some(body) = body {
        send.write_chunk(body).await.map_err(std::io::Error::from)?;
    }
    send.finish()
        .map_err(|e| ProtoError::Io(std::io::Error::other(e)))?;
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("store calls do not panic")
}

/// The current ledger from [`query_ledger`], or the handler answers its refusal and returns.
macro_rules! current_ledger {
    ($state:expr, $send:expr) => {
        match query_ledger($state) {
            Ok(ledger) => ledger,
            Err(resp) => return answer($send, &resp, None).await,
        }
    };
}

async fn handle(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &Arc<State>,
    who: PublicId,
    opened: &OpenDocuments,
) -> Result<(), ProtoError> {
    let req: Request = match proto::read_frame(recv).await {
        Ok(req) => req,
        Err(e @ (ProtoError::Malformed(_) | ProtoError::TooLarge { .. })) => {
            let code = if matches!(e, ProtoError::TooLarge { .. }) {
                ErrorCode::TooLarge
            } else {
                ErrorCode::Malformed
            };
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            let _ = recv.stop(code.as_u32().into());
            return answer(send, &error(code, e.to_string()), None).await;
        }
        Err(e) => return Err(e),
    };
    let store = state.store.clone();
    let authorised = tokio::time::timeout(AUTHORISE_TIMEOUT, authorise(state, &who, &req, opened))
        .await
        .unwrap_or(Err(AccessError::TimedOut(AUTHORISE_TIMEOUT)));
    let read_of = match authorised {
        Ok(document) => document,
        Err(e) => return refuse(send, recv, state, &who, e).await,
    };
    match req {
        Request::PutShard { id, len } => {
            if let Err(e) = proto::check_body_len("shard", len, MAX_SHARD_BODY) {
                let _ = recv.stop(ErrorCode::TooLarge.as_u32().into());
                return answer(send, &error(ErrorCode::TooLarge, e.to_string()), None).await;
            }
            let body = Bytes::from(proto::read_body(recv, len).await?);
            let resp = match prepare(state, id, body).await {
                Ok(prepared) => commit(state, Pending::Shard(prepared)).await,
                Err(resp) => resp,
            };
            answer(send, &resp, None).await
        }
        Request::PutMany { shards, manifest } => {
            let total = shards
                .iter()
                .map(|(_, len)| *len)
                .chain(manifest.map(|(_, len)| len))
                .fold(0u64, u64::saturating_add);
            let too_many = shards.len() > MAX_PUT_MANY;
            let checked = proto::check_body_len("batch", total, MAX_PUT_MANY_BODY).and_then(|()| {
                match manifest {
                    Some((_, len)) => proto::check_body_len("manifest", len, MAX_MANIFEST_BODY),
                    None => Ok(()),
                }
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
                match prepare(state, id, body).await {
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
        Request::GetShard { id } => match blocking(move || store.get(&id)).await {
            Ok(Some(bytes)) => {
                state.stats.shards_served.fetch_add(1, Ordering::Relaxed);
                if let Some(document) = read_of {
                    state.audit.record(who, document, ReadKind::Shard(id));
                }
                let resp = Response::Shard {
                    len: bytes.len() as u64,
                };
                answer(send, &resp, Some(Bytes::from(bytes))).await
            }
            Ok(None) => answer(send, &Response::NotFound, None).await,
            Err(e) => answer(send, &store_error(state, e), None).await,
        },
        Request::HasShard { id } => {
            let resp = match blocking(move || store.has(&id)).await {
                Ok(has) => Response::Has(has),
                Err(e) => store_error(state, e),
            };
            answer(send, &resp, None).await
        }
        Request::DeleteShard { id } => {
            let resp = match blocking(move || store.delete(&id)).await {
                Ok(outcome) => Response::Deleted(outcome.into()),
                Err(e) => store_error(state, e),
            };
            answer(send, &resp, None).await
        }
        Request::ListShards { after, limit } => {
            let limit = limit.min(MAX_LIST) as usize;
            let resp = match blocking(move || store.list_from(after, limit)).await {
                Ok(ids) => Response::List(ids),
                Err(e) => store_error(state, e),
            };
            answer(send, &resp, None).await
        }
        Request::Usage => {
            let resp = match blocking(move || store.usage()).await {
                Ok(u) => Response::Usage(u.into()),
                Err(e) => store_error(state, e),
            };
            answer(send, &resp, None).await
        }
        Request::PutManifest { id, len } => {
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
        Request::GetManifest { id } => match blocking(move || store.get_blob(&id.0)).await {
            Ok(Some(bytes)) => {
                state.audit.record(who, id, ReadKind::Manifest);
                let resp = Response::Manifest {
                    len: bytes.len() as u64,
                };
                answer(send, &resp, Some(Bytes::from(bytes))).await
            }
            Ok(None) => answer(send, &Response::NotFound, None).await,
            Err(e) => answer(send, &store_error(state, e), None).await,
        },
        Request::OpenDocument { document, len } => {
            if let Err(e) = proto::check_body_len("manifest", len, MAX_MANIFEST_BODY) {
                let _ = recv.stop(ErrorCode::TooLarge.as_u32().into());
                return answer(send, &error(ErrorCode::TooLarge, e.to_string()), None).await;
            }
            let body = proto::read_body(recv, len).await?;
            let resp = match opened.open(document, &body) {
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
        Request::Ping => answer(send, &Response::Pong, None).await,
        Request::SubmitTx { len } => {
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
                    Err(e) => error(ErrorCode::Refused, e.to_string()),
                },
            };
            answer(send, &resp, None).await
        }
        Request::Raft { kind, len } => {
            let Some(body) = validator_body(send, recv, state, &who, len).await? else {
                return Ok(());
            };
            let ledger = state.ledger.clone().expect("checked by validator_body");
            match ledger.raft_message(kind, &body).await {
                Ok(bytes) => {
                    let resp = Response::ChainBody {
                        len: bytes.len() as u64,
                    };
                    proto_answer(send, &resp, Some(Bytes::from(bytes))).await
                }
                Err(e) => {
                    state.stats.refused.fetch_add(1, Ordering::Relaxed);
                    answer(send, &error(ErrorCode::Malformed, e.to_string()), None).await
                }
            }
        }
        Request::Endorse { len } => {
            let Some(body) = validator_body(send, recv, state, &who, len).await? else {
                return Ok(());
            };
            let ledger = state.ledger.clone().expect("checked by validator_body");
            let answer = ledger.endorse(&body).await;
            let resp = Response::ChainBody {
                len: answer.len() as u64,
            };
            proto_answer(send, &resp, Some(Bytes::from(answer))).await
        }
        Request::GetDocument { id } => {
            let ledger = current_ledger!(state, send);
            let found = blocking(move || ledger.document(&id)).await;
            let found = match found {
                Ok(Some((record, proof))) => match redact(state, &who, &id, record).await {
                    Ok(record) => Ok(Some((record, proof))),
                    Err(e) => return refuse(send, recv, state, &who, e).await,
                },
                other => other,
            };
            chain_answer(send, found).await
        }
        Request::GetBlock { height } => {
            let ledger = current_ledger!(state, send);
            let found = blocking(move || ledger.block(height)).await;
            chain_answer(send, found).await
        }
        Request::GetTx { id } => {
            let ledger = current_ledger!(state, send);
            let found = blocking(move || ledger.transaction(&id)).await;
            chain_answer(send, found).await
        }
        Request::GetValidatorChanges => {
            let ledger = current_ledger!(state, send);
            let found = blocking(move || ledger.validator_changes().map(Some)).await;
            chain_answer(send, found).await
        }
        Request::GetRecord { id } => {
            let ledger = current_ledger!(state, send);
            let found = match ledger.record(&id) {
                Some(record) => match redact(state, &who, &id, record).await {
                    Ok(record) => Some(record),
                    Err(e) => return refuse(send, recv, state, &who, e).await,
                },
                None => None,
            };
            chain_answer(send, Ok(found)).await
        }
        Request::GetAccount { id } => {
            let ledger = current_ledger!(state, send);
            chain_answer(send, Ok(ledger.account(&id))).await
        }
        Request::ChainStatus => {
            let ledger = current_ledger!(state, send);
            chain_answer(send, Ok(Some(ledger.status()))).await
        }
        Request::DeleteManifest { id } => {
            let resp = match blocking(move || store.delete_blob(&id.0)).await {
                Ok(true) => Response::Deleted(DeleteOutcome::Removed),
                Ok(false) => Response::Deleted(DeleteOutcome::NotFound),
                Err(e) => store_error(state, e),
            };
            answer(send, &resp, None).await
        }
        Request::Scrub { after, limit } => {
            let limit = limit.clamp(1, MAX_SCRUB) as usize;
            let resp = match blocking(move || store.scrub(after, limit)).await {
                Ok(page) => {
                    state
                        .stats
                        .corrupt_detected
                        .fetch_add(page.corrupt.len() as u64, Ordering::Relaxed);
                    Response::Scrubbed(page.into())
                }
                Err(e) => store_error(state, e),
            };
            answer(send, &resp, None).await
        }
        Request::GetLayout => {
            let ledger = current_ledger!(state, send);
            chain_answer(send, Ok(Some(ledger.state().layouts()))).await
        }
        Request::GetAudit { document, after } => {
            let audit = state.audit.clone();
            match blocking(move || audit.page(&document, after, MAX_AUDIT_PAGE as usize)).await {
                Ok(page) => chain_answer(send, Ok(Some(page))).await,
                Err(e) => {
                    warn!(error = %e, "audit query failed");
                    answer(send, &error(ErrorCode::Internal, e.to_string()), None).await
                }
            }
        }
        Request::ListDocuments { after, limit } => {
            let ledger = current_ledger!(state, send);
            let limit = limit.min(MAX_LIST) as usize;
            let ids = blocking(move || ledger.state().documents_after(after, limit)).await;
            chain_answer(send, Ok(Some(ids))).await
        }
    }
}

/// Answers a refusal: nothing changed and no document byte was sent. `Refused` when the
/// chain said no; `Unavailable` when it could not say now (`AccessError::is_retryable`).
async fn refuse(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &State,
    who: &PublicId,
    e: AccessError,
) -> Result<(), ProtoError> {
    state.stats.refused.fetch_add(1, Ordering::Relaxed);
    let code = if e.is_retryable() {
        debug!(client = %who.short(), error = %e, "request not served: access cannot be checked now");
        ErrorCode::Unavailable
    } else {
        debug!(client = %who.short(), error = %e, "request refused");
        ErrorCode::Refused
    };
    let _ = recv.stop(code.as_u32().into());
    answer(send, &error(code, e.to_string()), None).await
}

/// `record` of `document` as `who` may see it from this validator (`access::ChainScope`).
async fn redact(
    state: &State,
    who: &PublicId,
    document: &DocumentId,
    record: DocumentRecord,
) -> Result<DocumentRecord, AccessError> {
    let scope = if state
        .ledger
        .as_ref()
        .is_some_and(|l| l.is_validator_host(who))
    {
        ChainScope::Everything
    } else {
        state.access.chain_scope(who).await?
    };
    scope.redact(who, document, record, crate::now_ms())
}

/// On a validator's peer: allowed when `who` hosts a validator or has one of `roles`.
async fn may_query_chain(
    state: &State,
    who: &PublicId,
    roles: &[Role],
    action: &'static str,
) -> Result<(), AccessError> {
    match &state.ledger {
        // No ledger: the request is answered `NotValidator`.
        None => Ok(()),
        Some(ledger) if ledger.is_validator_host(who) => Ok(()),
        Some(_) => state.access.require(who, roles, action).await,
    }
}

/// Whether `who` may make `req` now (see `access`); allowed, the document a read is of
/// (recorded in the audit log once served). Submissions, the chain's status, layout,
/// validator set changes and accounts are open to every authenticated key (a transaction
/// is checked by the chain itself); blocks and transactions are for the consortium's
/// members, the document list for operators and nodes; a document's record is shown as
/// `access::ChainScope` says (in the handler); consensus messages are checked where they
/// are read (`validator_body`).
async fn authorise(
    state: &State,
    who: &PublicId,
    req: &Request,
    opened: &OpenDocuments,
) -> Result<Option<DocumentId>, AccessError> {
    let access = &state.access;
    match req {
        Request::GetShard { id } => return access.may_read_shard(who, id, opened).await,
        Request::GetManifest { id } => return access.may_read(who, id).await.map(|()| Some(*id)),
        Request::OpenDocument { document: id, .. } => access.may_read(who, id).await,
        Request::GetAudit { document, .. } => access.may_audit(who, document).await,
        // Blocks and transactions carry every grant: for the consortium's members only.
        Request::GetBlock { .. } | Request::GetTx { .. } => {
            may_query_chain(
                state,
                who,
                &[
                    Role::Department,
                    Role::Operator,
                    Role::Node,
                    Role::Validator,
                ],
                "read blocks and transactions",
            )
            .await
        }
        Request::ListDocuments { .. } => {
            may_query_chain(
                state,
                who,
                &[Role::Operator, Role::Node, Role::Validator],
                "list every document",
            )
            .await
        }
        Request::PutShard { .. }
        | Request::PutManifest { .. }
        | Request::PutMany { .. }
        | Request::HasShard { .. } => access.may_store(who).await,
        Request::DeleteShard { id } => access.may_delete_shard(who, id, opened).await,
        Request::DeleteManifest { id } => access.may_delete_manifest(who, id).await,
        Request::ListShards { .. } => access.may_maintain(who, "list shards").await,
        Request::Usage => access.may_maintain(who, "see the store's usage").await,
        Request::Scrub { .. } => access.may_maintain(who, "scrub").await,
        Request::Ping
        | Request::SubmitTx { .. }
        | Request::GetDocument { .. }
        | Request::ChainStatus
        | Request::GetAccount { .. }
        | Request::GetRecord { .. }
        | Request::GetLayout
        // Only the set changes and their headers: what any reader needs to check a proof.
        | Request::GetValidatorChanges
        | Request::Raft { .. }
        | Request::Endorse { .. } => Ok(()),
    }
    .map(|()| None)
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

async fn proto_answer(
    send: &mut SendStream,
    resp: &Response,
    body: Option<Bytes>,
) -> Result<(), ProtoError> {
    answer(send, resp, body).await
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
async fn chain_answer<T: serde::Serialize>(
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
        Err(e) => {
            warn!(error = %e, "chain query failed");
            answer(send, &error(ErrorCode::Internal, e.to_string()), None).await
        }
    }
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
