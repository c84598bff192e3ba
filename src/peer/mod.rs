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
//! handshake) and the chain state now: reads by the owner, a live grantee or an operator;
//! writes and maintenance by the roles that need them (a storage node's key by none:
//! `access`); a shard delete drops only the reference of the document it names (`store`); chain records by
//! `access::ChainScope`; read audits by the document's owner and operators. Every read
//! served with document bytes is recorded in the peer's `audit::AuditLog` before its bytes
//! are sent; a read that cannot be recorded (the log's bounded buffer full, or its disk
//! failing) is answered `ErrorCode::Unavailable` and sends nothing. A refusal is
//! `ErrorCode::Refused` with the reason, before any body is read or any document byte sent.
//! Authorisation runs within [`AUTHORISE_TIMEOUT`]; when the chain cannot say (unreachable,
//! this peer's validator behind and no other answering, or too slow) the answer is
//! `ErrorCode::Unavailable` instead, equally before any body or byte: the reader asks again
//! shortly or asks another peer.
//!
//! Nobody starved (`limits`): a request takes a slot only once its whole header arrived
//! within `PeerLimits::header_timeout`; callers are sorted into validator hosts, members
//! (an account on chain) and strangers, each with its own pool of slots, and one connection
//! and one key hold bounded shares; refusals are rate-limited per key.
//!
//! Layout: this module starts the peer, accepts connections and streams, and authorises each
//! request and routes it to its concern (the budgets in `limits`): `storage` (shards, manifests, the group committer,
//! scrub, usage, lists), `chain` (chain queries, submissions, validator-to-validator
//! consensus, records as the caller may see them), `audit` (this peer's read records) and
//! `status` (requests counted once here, by kind and outcome; the figures the node's
//! metrics and `NodeStatus` both read; readiness).
//!
//! Not for: deciding placement, or deciding who may read (that is the chain's and
//! `access`'s).

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::registry::Registry;
use quinn::{RecvStream, SendStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::access::{AccessError, ChainView, OpenDocuments};
use crate::audit::{AuditError, AuditLog, ReadKind};
use crate::chain::ledger::Ledger;
use crate::chain::workflow::ProposalId;
use crate::id::DocumentId;
use crate::identity::{Identity, PublicId, Role};
use crate::proto::{self, ErrorCode, ProtoError, Request, Response};
use crate::store::{ShardStore, StoreError};
use crate::tls::{self, TrustPolicy};

mod audit;
mod chain;
mod limits;
mod status;
mod storage;

use limits::{Class, Gate};

/// Longest a request waits for its authorisation (`access`) before it is answered
/// `Unavailable`: well within a reader's time limit, so it asks again or elsewhere.
pub const AUTHORISE_TIMEOUT: Duration = Duration::from_secs(2);

/// Limits that keep one slow or hostile client from exhausting a peer, and strangers (keys
/// with no account on chain) from starving its members (`limits`).
#[derive(Debug, Clone)]
pub struct PeerLimits {
    /// Open connections at once; more are refused during the handshake.
    pub max_connections: usize,
    /// Requests of members (keys with an account on chain) being served at once across all
    /// connections.
    pub max_concurrent_requests: usize,
    /// How long a request waits for a slot before it is answered `Busy`.
    pub queue_timeout: Duration,
    /// Time for a whole request, from its header to the last byte of the answer.
    pub request_timeout: Duration,
    /// Most shards gathered into one durable commit.
    pub commit_batch: usize,
    /// How often the peer commits the Merkle root of its new read records (`audit`).
    pub audit_interval: Duration,
    /// Most read records waiting in memory for their write to the audit log; while it is
    /// full (or the last write failed) reads are refused `Unavailable` (`audit`: fail
    /// closed). 0: this peer records, and so serves, no read.
    pub audit_buffer: usize,
    /// Time for a request's whole header to arrive once its stream opened; a stream still
    /// waiting then is reset. No slot is taken before the header is whole.
    pub header_timeout: Duration,
    /// Requests open at once on one connection (slot or not); more are answered `Busy`.
    pub streams_per_connection: usize,
    /// Connections one key holds at once; more are closed after the handshake.
    pub connections_per_identity: usize,
    /// Request slots one key holds at once; more are answered `Busy`.
    pub requests_per_identity: usize,
    /// Connections all keys without an account hold together.
    pub stranger_connections: usize,
    /// Request slots all keys without an account share (apart from the members').
    pub stranger_requests: usize,
    /// Request slots for the hosts of the chain's validators (consensus), apart from
    /// everyone else's.
    pub consensus_requests: usize,
    /// Refusals a second one key may cost before its requests are answered `Busy` without
    /// asking the chain.
    pub refusals_per_second: u32,
    /// The same, for all keys without an account together.
    pub stranger_refusals_per_second: u32,
    /// Keys not met before looked up on chain per second (to sort them into members and
    /// strangers); past it, they count as strangers until a lookup says otherwise.
    pub lookups_per_second: u32,
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
            audit_buffer: crate::audit::DEFAULT_BUFFER,
            header_timeout: Duration::from_secs(2),
            streams_per_connection: 128,
            connections_per_identity: 16,
            requests_per_identity: 128,
            stranger_connections: 64,
            stranger_requests: 32,
            consensus_requests: 64,
            refusals_per_second: 20,
            stranger_refusals_per_second: 200,
            lookups_per_second: 200,
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

/// What every request handler shares.
struct State {
    store: Arc<ShardStore>,
    committer: mpsc::UnboundedSender<storage::CommitJob>,
    gate: Arc<Gate>,
    ledger: Option<Arc<Ledger>>,
    access: Arc<ChainView>,
    audit: Arc<AuditLog>,
    limits: PeerLimits,
    stats: Arc<PeerStats>,
    metrics: status::RequestMetrics,
    sources: status::Sources,
}

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
    sources: status::Sources,
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

    /// Whether the peer serves now (`/readyz`): its store reads and the chain it authorises
    /// by is current; `Err` says why not.
    pub async fn readiness(&self) -> Result<(), String> {
        status::readiness(&self.sources).await
    }

    /// [`PeerHandle::readiness`] as the metrics listener's `/readyz` asks it.
    pub fn ready_probe(&self) -> crate::metrics::Ready {
        let sources = self.sources.clone();
        Arc::new(move || {
            let sources = sources.clone();
            Box::pin(async move { status::readiness(&sources).await })
        })
    }

    /// The peer's figures and readiness now: what `NodeStatus` answers and its metrics show.
    pub async fn status(&self) -> proto::NodeStatus {
        node_status(&self.sources).await
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
/// Its request counters and figures are registered in `registry` (`status`).
pub async fn start(
    identity: &Identity,
    trust: Arc<dyn TrustPolicy>,
    listen: SocketAddr,
    data_dir: &Path,
    limits: PeerLimits,
    ledger: Option<Arc<Ledger>>,
    registry: &mut Registry,
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
        let bound = limits.audit_buffer;
        Arc::new(blocking(move || AuditLog::open(&dir, bound)).await?)
    };
    let endpoint = tls::endpoint(listen, identity, trust)?;
    let addr = endpoint.local_addr().map_err(PeerError::Addr)?;
    let stats = Arc::new(PeerStats::default());
    let access = Arc::new(match &ledger {
        Some(ledger) => ChainView::of_ledger(ledger.clone()),
        None => ChainView::unlinked(),
    });
    let sources = status::Sources {
        store: store.clone(),
        audit: audit.clone(),
        ledger: ledger.clone(),
        access: access.clone(),
        stats: stats.clone(),
    };
    status::register(registry, sources.clone());
    let state = Arc::new(State {
        metrics: status::RequestMetrics::new(registry),
        sources: sources.clone(),
        store: store.clone(),
        committer: storage::spawn_committer(store.clone(), limits.commit_batch, stats.clone()),
        gate: Gate::new(&limits),
        ledger: ledger.clone(),
        access: access.clone(),
        audit: audit.clone(),
        limits: limits.clone(),
        stats: stats.clone(),
    });
    let accept = tokio::spawn(accept_loop(endpoint.clone(), state));
    let auditor = crate::audit::spawn_auditor(
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
        sources,
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
            let class = state
                .gate
                .classify(
                    &who,
                    state.ledger.as_ref(),
                    &state.access,
                    AUTHORISE_TIMEOUT,
                )
                .await;
            let pass = match state.gate.connect(&who, class) {
                Ok(pass) => pass,
                Err(refusal) => {
                    state.stats.refused.fetch_add(1, Ordering::Relaxed);
                    debug!(%remote, client = %who.short(), reason = %refusal.0, "connection refused");
                    conn.close(ErrorCode::Busy.as_u32().into(), refusal.0.as_bytes());
                    return;
                }
            };
            debug!(%remote, client = %who.short(), ?class, "connection accepted");
            serve_connection(conn, who, class, state).await;
            drop((pass, permit));
        });
    }
}

async fn serve_connection(conn: quinn::Connection, who: PublicId, class: Class, state: Arc<State>) {
    let opened = Arc::new(OpenDocuments::default());
    let streams = Arc::new(Semaphore::new(state.limits.streams_per_connection));
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                debug!(client = %who.short(), reason = %e, "connection ended");
                return;
            }
        };
        state.stats.requests.fetch_add(1, Ordering::Relaxed);
        let Ok(open) = streams.clone().try_acquire_owned() else {
            // Over the connection's share: answered at once, nothing read (its kind unknown).
            let state = state.clone();
            tokio::spawn(counted(state.clone(), async move {
                busy(
                    send,
                    recv,
                    state,
                    "too many requests open on this connection",
                )
                .await;
                Some("unknown")
            }));
            continue;
        };
        let (state, opened) = (state.clone(), opened.clone());
        tokio::spawn(async move {
            let served = serve_stream(send, recv, who, class, state.clone(), opened);
            counted(state, served).await;
            drop(open);
        });
    }
}

/// Serves one request and counts it once (`status`): its kind, as `serve` returns it, and
/// its outcome, as its answer said (none sent: `failed`), with the time it took.
async fn counted(state: Arc<State>, serve: impl Future<Output = Option<&'static str>>) {
    let started = Instant::now();
    let (kind, outcome) = status::OUTCOME
        .scope(std::cell::Cell::new(status::Outcome::Failed), async {
            let kind = serve.await;
            (kind, status::OUTCOME.with(std::cell::Cell::get))
        })
        .await;
    if let Some(kind) = kind {
        state.metrics.record(kind, outcome, started.elapsed());
    }
}

/// Answers `Busy` without reading the request.
async fn busy(mut send: SendStream, mut recv: RecvStream, state: Arc<State>, why: &str) {
    state.stats.refused.fetch_add(1, Ordering::Relaxed);
    let _ = recv.stop(ErrorCode::Busy.as_u32().into());
    let _ = answer(&mut send, &error(ErrorCode::Busy, why), None).await;
}

/// Serves one request: its header within `header_timeout` (no slot held meanwhile), then a
/// slot of the caller's class, its authorisation and its handler within `request_timeout`.
/// Returns the request's kind (`unknown` when its header did not decode or came too slowly;
/// `None` when the caller gave up before sending one: not a request).
async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    who: PublicId,
    class: Class,
    state: Arc<State>,
    opened: Arc<OpenDocuments>,
) -> Option<&'static str> {
    let header = tokio::time::timeout(state.limits.header_timeout, proto::read_frame(&mut recv));
    let req: Request = match header.await {
        Ok(Ok(req)) => req,
        Ok(Err(e @ (ProtoError::Malformed(_) | ProtoError::TooLarge { .. }))) => {
            let code = if matches!(e, ProtoError::TooLarge { .. }) {
                ErrorCode::TooLarge
            } else {
                ErrorCode::Malformed
            };
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            let _ = recv.stop(code.as_u32().into());
            let _ = answer(&mut send, &error(code, e.to_string()), None).await;
            return Some("unknown");
        }
        Ok(Err(e)) => {
            debug!(client = %who.short(), error = %e, "request header not read");
            return None;
        }
        Err(_) => {
            state.stats.refused.fetch_add(1, Ordering::Relaxed);
            status::note(status::Outcome::Refused);
            debug!(client = %who.short(), "request header incomplete within its time; stream reset");
            let _ = recv.stop(ErrorCode::Timeout.as_u32().into());
            let _ = send.reset(ErrorCode::Timeout.as_u32().into());
            return Some("unknown");
        }
    };
    let kind = req.kind();
    // A connection sorted as a stranger's may belong to a key that has an account since.
    // Asked briefly (a quarter of the authorisation time), so that with the chain slow or
    // unreachable a request is still answered within about `AUTHORISE_TIMEOUT` in all.
    let class = match class {
        Class::Stranger => {
            state
                .gate
                .classify(
                    &who,
                    state.ledger.as_ref(),
                    &state.access,
                    AUTHORISE_TIMEOUT / 4,
                )
                .await
        }
        known => known,
    };
    if !state.gate.may_be_refused(&who, class) {
        let why = "too many refused requests from this key; slow down";
        busy(send, recv, state, why).await;
        return Some(kind);
    }
    let slot = match state.gate.slot(&who, class).await {
        Ok(slot) => slot,
        Err(refusal) => {
            busy(send, recv, state, &refusal.0).await;
            return Some(kind);
        }
    };
    let timeout = state.limits.request_timeout;
    let handled = handle(&mut send, &mut recv, &state, who, class, req, &opened);
    match tokio::time::timeout(timeout, handled).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(client = %who.short(), error = %e, "request failed"),
        Err(_) => {
            status::note(status::Outcome::Failed);
            warn!(client = %who.short(), ?timeout, "request timed out");
            let _ = recv.stop(ErrorCode::Timeout.as_u32().into());
            let _ = send.reset(ErrorCode::Timeout.as_u32().into());
        }
    }
    drop(slot);
    Some(kind)
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
    status::note(status::Outcome::of(resp));
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

/// Authorises one request and routes it to the handler of its concern.
async fn handle(
    send: &mut SendStream,
    recv: &mut RecvStream,
    state: &Arc<State>,
    who: PublicId,
    class: Class,
    req: Request,
    opened: &OpenDocuments,
) -> Result<(), ProtoError> {
    let authorised = tokio::time::timeout(AUTHORISE_TIMEOUT, authorise(state, &who, &req, opened))
        .await
        .unwrap_or(Err(AccessError::TimedOut(AUTHORISE_TIMEOUT)));
    let read_of = match authorised {
        Ok(document) => document,
        Err(e) => {
            if !e.is_retryable() {
                state.gate.refused(&who, class);
            }
            return refuse(send, recv, state, &who, e).await;
        }
    };
    match req {
        Request::PutShard { id, len, document } => {
            storage::put_shard(send, recv, state, who, (id, len, document)).await
        }
        Request::PutMany {
            shards,
            manifest,
            document,
        } => storage::put_many(send, recv, state, shards, manifest, document).await,
        Request::GetShard { id } => {
            let record = read_of.map(|d| (who, d, ReadKind::Shard(id)));
            storage::get_shard(send, state, record, id).await
        }
        Request::GetDelegatedShard {
            id,
            document,
            citizen,
        } => {
            let read = ReadKind::ShardVia {
                shard: id,
                gateway: who,
            };
            storage::get_shard(send, state, Some((citizen, document, read)), id).await
        }
        Request::GetDelegatedManifest { delegation } => {
            let read = ReadKind::ManifestVia { gateway: who };
            storage::get_manifest(send, state, delegation.citizen, read, delegation.document).await
        }
        Request::OpenDelegated { delegation, len } => {
            storage::open_delegated(send, recv, state, opened, &delegation, len).await
        }
        Request::GetDelegatedDocument { delegation } => {
            chain::get_delegated_document(send, recv, state, &delegation).await
        }
        Request::HasShard { id, document } => storage::has_shard(send, state, id, document).await,
        Request::VerifyShard { id, document } => {
            storage::verify_shard(send, state, id, document).await
        }
        Request::ListStale {
            after,
            before_ms,
            limit,
        } => storage::list_stale(send, state, after, before_ms, limit).await,
        Request::CollectStale { entry, before_ms } => {
            storage::collect_stale(send, state, entry, before_ms).await
        }
        Request::DeleteShard { id, document } => {
            storage::delete_shard(send, state, id, document).await
        }
        Request::BindShards { document, shards } => {
            storage::bind_shards(send, state, who, document, shards).await
        }
        Request::ListShards { after, limit } => {
            storage::list_shards(send, state, after, limit).await
        }
        Request::Usage => storage::usage(send, state).await,
        Request::PutManifest { id, len } => storage::put_manifest(send, recv, state, id, len).await,
        Request::GetManifest { id } => {
            storage::get_manifest(send, state, who, ReadKind::Manifest, id).await
        }
        Request::OpenDocument { document, len } => {
            storage::open_document(send, recv, state, opened, document, len).await
        }
        Request::Ping => answer(send, &Response::Pong, None).await,
        Request::SubmitTx { len } => chain::submit_tx(send, recv, state, len).await,
        Request::Raft { kind, len } => chain::raft(send, recv, state, &who, kind, len).await,
        Request::Endorse { len } => chain::endorse(send, recv, state, &who, len).await,
        Request::GetDocument { id } => chain::get_document(send, recv, state, &who, id).await,
        Request::GetBlock { height } => chain::get_block(send, state, height).await,
        Request::GetTx { id } => chain::get_tx(send, state, id).await,
        Request::GetValidatorChanges => chain::get_validator_changes(send, state).await,
        Request::SignCheckpoint { height } => {
            chain::sign_checkpoint(send, state, &who, height).await
        }
        Request::GetCheckpoint { height, covering } => {
            chain::get_checkpoint(send, state, height, covering).await
        }
        Request::GetRecord { id } => chain::get_record(send, recv, state, &who, id).await,
        Request::GetAccount { id } => chain::get_account(send, state, id).await,
        Request::GetType { name, version } => chain::get_type(send, state, &name, version).await,
        Request::ListTypes => chain::list_types(send, state).await,
        Request::GetRecordEntry { id } => chain::get_record_entry(send, state, id).await,
        Request::ChainStatus => chain::status(send, state).await,
        Request::NodeStatus => {
            let resp = Response::NodeStatus(node_status(&state.sources).await);
            answer(send, &resp, None).await
        }
        Request::DeleteManifest { id } => storage::delete_manifest(send, state, id).await,
        Request::Scrub { after, limit } => storage::scrub(send, state, after, limit).await,
        Request::GetLayout => chain::get_layout(send, state).await,
        Request::GetAudit { document, after } => {
            audit::get_audit(send, state, document, after).await
        }
        Request::ListDocuments { after, limit } => {
            chain::list_documents(send, state, after, limit).await
        }
        Request::ListGranted { grantee, after } => {
            chain::list_granted(send, recv, state, &who, grantee, after).await
        }
        Request::GetBucket { bucket } => chain::get_bucket(send, state, &bucket).await,
        Request::ListBuckets => chain::list_buckets(send, state, &who).await,
        Request::GetName { bucket, key } => {
            chain::get_name(send, recv, state, &who, &bucket, &key).await
        }
        Request::ListNames {
            bucket,
            prefix,
            delimiter,
            from,
            limit,
        } => {
            let query = chain::NameQuery {
                bucket,
                prefix,
                delimiter,
                from,
                limit,
            };
            chain::list_names(send, recv, state, &who, query).await
        }
        Request::GetProposal { id } => chain::get_proposal(send, state, ProposalId(id)).await,
        Request::ListProposals { after } => {
            chain::list_proposals(send, state, &who, after.map(ProposalId)).await
        }
        Request::GetAwaiting { document } => chain::get_awaiting(send, state, document).await,
    }
}

/// The figures and readiness of a peer now (`status`).
async fn node_status(sources: &status::Sources) -> proto::NodeStatus {
    let ready = status::readiness(sources).await;
    let s = sources.clone();
    let mut figures = blocking(move || status::figures(&s)).await;
    figures.not_ready = ready.err();
    figures
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
/// members, the document list for operators, validators and departments (who read every
/// block anyway); a document's record is shown as `access::ChainScope` says (in the
/// handler); consensus messages are checked where they are read (`validator_body`).
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
        Request::OpenDelegated { delegation, .. } | Request::GetDelegatedManifest { delegation } => {
            access.may_read_delegated(who, delegation).await
        }
        // The citizen's live grant is checked by the handler, from the ledger's record.
        Request::GetDelegatedDocument { delegation } => {
            access.check_delegation(who, delegation).await
        }
        Request::GetDelegatedShard {
            id,
            document,
            citizen,
        } => {
            access
                .may_read_delegated_shard(who, id, document, citizen, opened)
                .await
        }
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
        // Departments may read every block already; a gateway lists its department's
        // documents with it (the portal).
        Request::ListDocuments { .. } => {
            may_query_chain(
                state,
                who,
                &[Role::Operator, Role::Validator, Role::Department],
                "list every document",
            )
            .await
        }
        // The grantee asks for its own; the members of the consortium for anyone's (each
        // sees of a record what `access::ChainScope` lets it, in the handler).
        Request::ListGranted { grantee, .. } if grantee == who => Ok(()),
        Request::ListGranted { .. } => {
            may_query_chain(
                state,
                who,
                &[Role::Operator, Role::Validator, Role::Department],
                "list the documents granted to a key",
            )
            .await
        }
        // Buckets and names: the members; a bucket's names only its owner (in the handler).
        Request::GetBucket { .. } | Request::GetName { .. } | Request::ListNames { .. } => {
            may_query_chain(
                state,
                who,
                &[Role::Operator, Role::Validator, Role::Department],
                "read buckets and names",
            )
            .await
        }
        Request::ListBuckets => {
            may_query_chain(state, who, &[Role::Department], "list its buckets").await
        }
        // Workflows: the members read any proposal; an approver lists what awaits it.
        Request::GetProposal { .. } => {
            may_query_chain(
                state,
                who,
                &[Role::Operator, Role::Validator, Role::Department],
                "read proposals",
            )
            .await
        }
        Request::ListProposals { .. } => {
            may_query_chain(
                state,
                who,
                &[Role::Operator, Role::Department],
                "list the proposals awaiting it",
            )
            .await
        }
        Request::PutShard { .. }
        | Request::PutManifest { .. }
        | Request::PutMany { .. }
        | Request::BindShards { .. }
        | Request::HasShard { .. }
        | Request::VerifyShard { .. } => access.may_store(who).await,
        Request::DeleteShard { document, .. } => access.may_delete_shard(who, document).await,
        Request::DeleteManifest { id } => access.may_delete_manifest(who, id).await,
        Request::ListShards { .. } => access.may_maintain(who, "list shards").await,
        Request::Usage => access.may_maintain(who, "see the store's usage").await,
        Request::Scrub { .. } => access.may_maintain(who, "scrub").await,
        Request::NodeStatus => access.may_maintain(who, "see the node's status").await,
        Request::ListStale { .. } | Request::CollectStale { .. } => {
            access.may_maintain(who, "collect orphans").await
        }
        Request::Ping
        | Request::SubmitTx { .. }
        | Request::GetDocument { .. }
        | Request::ChainStatus
        | Request::GetAccount { .. }
        | Request::GetRecord { .. }
        // Only whether a document id (unguessable) waits for a proposal, and until when.
        | Request::GetAwaiting { .. }
        // Document types and records' type, retention and holds are public chain state.
        | Request::GetType { .. }
        | Request::ListTypes
        | Request::GetRecordEntry { .. }
        | Request::GetLayout
        // Only the set changes and their headers: what any reader needs to check a proof.
        | Request::GetValidatorChanges
        // Checkpoints are evidence for anyone; signing one is for validator hosts (checked
        // by its handler, as consensus messages are).
        | Request::GetCheckpoint { .. }
        | Request::SignCheckpoint { .. }
        | Request::Raft { .. }
        | Request::Endorse { .. } => Ok(()),
    }
    .map(|()| None)
}
