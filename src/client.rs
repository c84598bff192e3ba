//! The client side of the store: put a document into the cluster, get it back by id.
//!
//! put: the plaintext streams through the codec on the blocking pool; each coded stripe is
//! placed on k + m distinct peers (`placement`) and its shards upload in parallel, with at
//! most `stripes_in_flight` stripes between the encoder and the peers (backpressure, bounded
//! memory). A stripe counts as stored once `write_quorum` peers have acknowledged a durable
//! write; the manifest goes, while the last stripes finish, to the peers its document id
//! places it on. A put that fails midway is never registered, so no partial document can be
//! fetched (an unreferenced manifest or shards may stay behind). A one-stripe document (a
//! certificate) sends each placed peer one `PutMany` carrying its shard and, on the
//! manifest's replicas, the manifest: one request per peer, its pieces in one group commit.
//!
//! get: the manifest comes from the first placed peer that returns bytes hashing to the id;
//! for each stripe the client asks for the k data shards, asks for a parity shard whenever
//! one fails, and hedges with one more after `hedge_after` if any is slow; peers that fail
//! to connect are marked down and skipped for `down_for` (one connection attempt per period). Stripes are opened on the blocking
//! pool, `stripes_in_flight` at a time, and written in order.
//!
//! A reader opens the document on each peer it asks for shards (`OpenDocument` with the
//! manifest, once per connection): peers serve a reader only the shards of documents it
//! opened and may read (`access`).
//!
//! Not for: serving (`peer`), deciding who may read (`access`, on the peers), keeping keys
//! (see `keyring`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use quinn::RecvStream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::chain::block::{Block, TxInclusion};
use crate::chain::ledger::ChainStatus;
use crate::chain::state::{Account, ChainLayouts, DocumentRecord};
use crate::chain::tx::{SignedTx, Tx, TxBody};
use crate::chain::validators::{self, ValidatorHistory};
use crate::codec::{self, CodecError, DocumentInfo, EncodedStripe, StripeCodec};
use crate::crypto::DataKey;
use crate::grant::{GrantAddress, WrappedKey};
use crate::id::{DocumentId, ShardId};
use crate::identity::{Identity, PublicId};
use crate::manifest::{CodingParams, Manifest, ManifestError};
use crate::placement::{Layout, NodeInfo, PlacementError};
use crate::proto::{self, ProtoError, Request, Response};
use crate::proto::{DeleteOutcome, PutOutcome, ScrubPage, Usage};
use crate::receipt::Receipt;
use crate::tls::{self, TrustPolicy};

/// Fewest peers a manifest is written to (more when m + 1 is larger).
pub const MANIFEST_REPLICAS: usize = 3;

/// How a client behaves; the defaults suit a LAN cluster.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Where the client's QUIC endpoint binds.
    pub bind: SocketAddr,
    /// How documents are cut and coded.
    pub params: CodingParams,
    /// Durable shard acknowledgements needed per stripe; `None` means all k + m.
    pub write_quorum: Option<usize>,
    /// Stripes between the codec and the peers at once, each way.
    pub stripes_in_flight: usize,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Ask one more peer for a stripe if the ones asked have not all answered by then.
    pub hedge_after: Duration,
    /// The chain to register documents on and check registrations against; `None` until
    /// the command-line path hosts a validator (the embedded cluster always has one).
    pub chain: Option<ChainLink>,
    /// How long a peer that failed to connect (or closed its connection) is skipped.
    pub down_for: Duration,
    /// Time limit of one chain query to one validator host: past it the next host is asked.
    /// A storage peer's own authorisation client uses `access::ACCESS_QUERY_TIMEOUT`.
    pub chain_query_timeout: Duration,
    /// How long a reader keeps asking again the peers that answered `Unavailable` (they
    /// could not check access: the chain is electing a leader, or their validator is
    /// behind) or `Busy`, pausing 0.1 s, doubling up to 1 s, before it gives up on them.
    pub unavailable_retry: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            params: CodingParams::default(),
            write_quorum: None,
            stripes_in_flight: 2,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(60),
            hedge_after: Duration::from_millis(500),
            down_for: Duration::from_secs(5),
            chain: None,
            chain_query_timeout: CHAIN_QUERY_TIMEOUT,
            unavailable_retry: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("placement: {0}")]
    Placement(#[from] PlacementError),
    #[error("starting the client endpoint: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("write quorum {quorum} is impossible with k + m = {width}")]
    Quorum { quorum: usize, width: usize },
    #[error(
        "stripe {stripe}: only {stored} of the {needed} shard writes needed were acknowledged \
         ({errors})"
    )]
    StripeNotStored {
        stripe: u64,
        stored: usize,
        needed: usize,
        errors: String,
    },
    #[error("manifest of {id}: stored on {stored} peers, {needed} needed ({errors})")]
    ManifestNotStored {
        id: DocumentId,
        stored: usize,
        needed: usize,
        errors: String,
    },
    #[error("document {id} was not found on any of the peers it is placed on ({errors})")]
    NotFound { id: DocumentId, errors: String },
    #[error(
        "stripe {stripe}: fewer than {k} intact shards could be fetched; unreachable or \
         failing: {errors}"
    )]
    StripeUnavailable {
        stripe: u64,
        k: usize,
        errors: String,
    },
    #[error("peer {peer} at {addr}: {source}")]
    Peer {
        peer: String,
        addr: String,
        #[source]
        source: ProtoError,
    },
    #[error("document {id} was not found on the chain: it is not registered")]
    NotRegistered { id: DocumentId },
    #[error("chain: {0}")]
    Chain(String),
    #[error("{reader} holds no live grant on document {id}")]
    NotGranted { id: DocumentId, reader: PublicId },
    #[error(transparent)]
    Grant(#[from] crate::grant::GrantError),
    #[error("writing the document: {0}")]
    Write(#[source] std::io::Error),
    #[error("a background task failed: {0}")]
    Task(String),
}

/// What a successful put produced. The key is the only way to read the document back: keep
/// it (`keyring`) or wrap it for readers (grants).
#[derive(Debug)]
pub struct PutReceipt {
    pub id: DocumentId,
    pub manifest: Manifest,
    pub key: DataKey,
    /// Shards written and acknowledged durable.
    pub shards_stored: u64,
    /// (stripe, slot, peer) of shard writes that failed while the stripe still met quorum.
    pub shards_missing: Vec<(u64, usize, PublicId)>,
    /// (block height, index) of the `RegisterDocument` transaction, when a chain is linked.
    pub registered: Option<(u64, u32)>,
    /// Where the put's time went.
    pub timings: PutTimings,
}

/// How long each phase of a put took; the put's latency is their sum.
#[derive(Debug, Clone, Copy, Default)]
pub struct PutTimings {
    /// From the call until every stripe met its write quorum and the manifest was durable.
    pub stored: Duration,
    /// Submitting the registration until its block committed (zero without a chain).
    pub registered: Duration,
}

/// What a get found on the way.
#[derive(Debug, Default)]
pub struct GetReport {
    pub bytes: u64,
    pub stripes_rebuilt: u64,
    /// (stripe, slot, peer) of shards that were corrupt (refused by the peer or by the client).
    pub corrupt: Vec<(u64, usize, PublicId)>,
}

/// Progress of a long transfer: (bytes done, bytes in all).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

/// The id stripes are placed by: BLAKE3 of the stripe's shard ids in order.
pub fn stripe_key(ids: &[ShardId]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for id in ids {
        h.update(id.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// Where the chain is: the peers that host validators (asked in turn: one that is down or
/// answers `Unavailable` is skipped), and the validator set whose signatures make a block
/// final (from the genesis file).
#[derive(Debug, Clone)]
pub struct ChainLink {
    pub hosts: Vec<NodeInfo>,
    pub validators: Vec<PublicId>,
}

/// A client of one cluster.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    /// The next nonce for this client's transactions, once known.
    nonce: tokio::sync::Mutex<Option<u64>>,
    endpoint: quinn::Endpoint,
    layout: Layout,
    /// The layout before the current one while a rebalance runs: reads fall back to it.
    previous: Option<Layout>,
    options: ClientOptions,
    conns: Mutex<HashMap<PublicId, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>>,
    down: Mutex<HashMap<PublicId, Instant>>,
    /// Index in `ChainLink::hosts` of the validator host that answered last.
    chain_host: std::sync::atomic::AtomicUsize,
    /// Per peer, the last connection a request timed out on: its stable id, its datagram
    /// count then, and since when the peer was heard from last (see `Client::call_within`).
    silent: Mutex<HashMap<PublicId, (usize, u64, Instant)>>,
    /// (connection, document) pairs opened for reading (`OpenDocument`).
    opened: Mutex<std::collections::HashSet<(usize, DocumentId)>>,
    /// The validator set changes proven so far from `ChainLink::validators` (none until a
    /// check needs them).
    validators: Mutex<Option<Arc<ValidatorHistory>>>,
}

/// How long a peer with requests waiting may send nothing at all on its connection (not
/// even an acknowledgement) before the connection is taken for dead and dialled again.
const SILENCE: Duration = Duration::from_secs(1);

/// Time limit of one chain query to one validator host (the default of
/// `ClientOptions::chain_query_timeout`), and of one submission (which waits for its block):
/// past it the client asks the next host.
pub const CHAIN_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
pub const CHAIN_SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most (connection, document) pairs a client remembers as opened; past it, it forgets them
/// all and opens again as needed.
const MAX_OPENED: usize = 4096;

/// A document being read: its id and canonical manifest, sent once per connection to each
/// peer asked for its shards (`Request::OpenDocument`), which serves a reader only the
/// shards of documents opened so.
struct Reading {
    id: DocumentId,
    manifest: Bytes,
}

impl Client {
    /// A client with `identity`, trusting peers by `trust`, placing by `layout`.
    /// Must be called within a tokio runtime.
    pub fn new(
        identity: &Identity,
        trust: Arc<dyn TrustPolicy>,
        layout: Layout,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        Self::with_layouts(identity, trust, layout, None, options)
    }

    /// Like [`Client::new`], during a layout change: shards and manifests are looked for
    /// under `layout` first and under `previous` after.
    pub fn with_layouts(
        identity: &Identity,
        trust: Arc<dyn TrustPolicy>,
        layout: Layout,
        previous: Option<Layout>,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        options.params.validate()?;
        let width = options.params.width();
        if let Some(q) = options.write_quorum
            && (q < usize::from(options.params.k) || q > width)
        {
            return Err(ClientError::Quorum { quorum: q, width });
        }
        let endpoint = tls::endpoint(options.bind, identity, trust)?;
        Ok(Self {
            inner: Arc::new(Inner {
                identity: identity.clone(),
                nonce: tokio::sync::Mutex::new(None),
                endpoint,
                layout,
                previous,
                options,
                conns: Mutex::new(HashMap::new()),
                down: Mutex::new(HashMap::new()),
                chain_host: std::sync::atomic::AtomicUsize::new(0),
                silent: Mutex::new(HashMap::new()),
                opened: Mutex::new(std::collections::HashSet::new()),
                validators: Mutex::new(None),
            }),
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// This client's public id (the account its transactions are signed by).
    pub fn public(&self) -> PublicId {
        self.inner.identity.public()
    }

    /// A client placing by the chain's layout when the cluster has a chain whose layout
    /// has nodes, falling back to `file_layout` (the cluster file's) for reads; by
    /// `file_layout` alone otherwise.
    pub async fn with_chain_layout(
        identity: &Identity,
        trust: Arc<dyn TrustPolicy>,
        file_layout: Layout,
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        let client = Self::new(
            identity,
            trust.clone(),
            file_layout.clone(),
            options.clone(),
        )?;
        if options.chain.is_none() {
            return Ok(client);
        }
        let layouts = client.chain_layouts().await;
        client.close().await;
        let (layout, previous) = match layouts {
            Ok(l) if !l.current.nodes.is_empty() => (l.current, l.previous),
            Ok(_) => return Self::new(identity, trust, file_layout, options),
            // The chain will be needed again (registration, proofs) and say why then.
            Err(e) => {
                warn!(error = %e, "no layout from the chain; placing by the cluster file");
                return Self::new(identity, trust, file_layout, options);
            }
        };
        // Reads fall back to the chain's previous layout during a change, or else to the
        // cluster file's, whichever differs from the current one.
        let previous = previous
            .filter(|p| *p != layout)
            .or(Some(file_layout).filter(|f| *f != layout));
        debug!(epoch = layout.epoch, "placing by the chain's layout");
        Self::with_layouts(identity, trust, layout, previous, options)
    }

    /// The layout reads fall back to during a layout change.
    pub fn previous_layout(&self) -> Option<&Layout> {
        self.inner.previous.as_ref()
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// Closes every connection.
    pub async fn close(&self) {
        let slots: Vec<_> = self
            .inner
            .conns
            .lock()
            .expect("connection pool lock")
            .iter()
            .map(|(id, slot)| (*id, slot.clone()))
            .collect();
        for (id, slot) in slots {
            // A slot held by a connection attempt to a dead peer has no statistics to give.
            if let Ok(guard) = slot.try_lock()
                && let Some(conn) = guard.as_ref()
            {
                let stats = conn.stats();
                debug!(
                    peer = %id.short(),
                    sent_packets = stats.path.sent_packets,
                    lost_packets = stats.path.lost_packets,
                    congestion_events = stats.path.congestion_events,
                    rtt = ?stats.path.rtt,
                    "connection statistics"
                );
            }
        }
        crate::tls::close(&self.inner.endpoint, b"client closing").await;
    }

    /// Stores a document read from `reader` (`size` bytes if known, for progress) and, with
    /// a chain linked, registers it.
    pub async fn put<R>(
        &self,
        reader: R,
        size: Option<u64>,
        info: DocumentInfo,
        progress: Progress<'_>,
    ) -> Result<PutReceipt, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let mut receipt = self.store(reader, size, info, progress).await?;
        // Only now, with every shard durable and the manifest written, does the document
        // come into existence: its registration on the chain.
        if let Some(chain) = &self.inner.options.chain {
            let start = Instant::now();
            receipt.registered = Some(self.register(chain, receipt.id).await?);
            receipt.timings.registered = start.elapsed();
        }
        Ok(receipt)
    }

    /// Stores a document's shards and manifest, durably, without registering it (a new
    /// version is registered by its `Supersede`, see `version`).
    pub async fn store<R>(
        &self,
        reader: R,
        size: Option<u64>,
        info: DocumentInfo,
        progress: Progress<'_>,
    ) -> Result<PutReceipt, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let started = Instant::now();
        let opts = &self.inner.options;
        let width = opts.params.width();
        let quorum = opts.write_quorum.unwrap_or(width);
        let in_flight = opts.stripes_in_flight.max(1);
        let (mut stripes, encoder) = codec::encode_async(reader, opts.params, info, in_flight);
        let mut uploads: JoinSet<Result<StripeUpload, ClientError>> = JoinSet::new();
        let mut done = 0u64;
        let mut shards_stored = 0u64;
        let mut shards_missing = Vec::new();
        let total = size.unwrap_or(0);
        let mut finish = |up: StripeUpload| {
            done += up.plain_len;
            shards_stored += up.stored as u64;
            shards_missing.extend(up.missing);
            progress(done, total.max(done));
        };
        let (id, manifest, key) = 'stored: {
            let mut failure = None;
            loop {
                // Keep at most `in_flight` stripes uploading; take the next when one finishes.
                if uploads.len() >= in_flight {
                    match join(uploads.join_next().await) {
                        Ok(up) => finish(up),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                    continue;
                }
                let Some(stripe) = stripes.recv().await else {
                    break;
                };
                if stripe.index == 0 && stripe.last {
                    // A one-stripe document (a certificate): its manifest is ready with it.
                    let (manifest, key) = encoder
                        .await
                        .map_err(|e| ClientError::Task(e.to_string()))??;
                    let (id, up) = self.store_one_stripe(stripe, &manifest, quorum).await?;
                    finish(up);
                    break 'stored (id, manifest, key);
                }
                let client = self.clone();
                uploads.spawn(async move { client.upload_stripe(stripe, quorum).await });
            }
            if let Some(e) = failure {
                uploads.abort_all();
                drop(stripes);
                let _ = encoder.await;
                return Err(e);
            }
            // Every stripe has left the encoder, so the manifest is ready: it is written while
            // the last stripes finish (for a one-stripe certificate, that saves a round trip).
            let (manifest, key) = encoder
                .await
                .map_err(|e| ClientError::Task(e.to_string()))??;
            let drain = async {
                while let Some(res) = uploads.join_next().await {
                    finish(join(Some(res))?);
                }
                Ok::<(), ClientError>(())
            };
            let (drained, stored) = tokio::join!(drain, self.store_manifest(&manifest, quorum));
            if let Err(e) = drained {
                uploads.abort_all();
                return Err(e);
            }
            (stored?, manifest, key)
        };
        Ok(PutReceipt {
            id,
            manifest,
            key,
            shards_stored,
            shards_missing,
            registered: None,
            timings: PutTimings {
                stored: started.elapsed(),
                registered: Duration::ZERO,
            },
        })
    }

    /// Submits `RegisterDocument` for `id`, signed by this client, and waits for its block.
    async fn register(&self, chain: &ChainLink, id: DocumentId) -> Result<(u64, u32), ClientError> {
        self.submit(chain, TxBody::RegisterDocument { document: id })
            .await
            .map_err(|e| ClientError::Chain(format!("registering {id}: {e}")))
    }

    /// Signs `body` with this client's key and the next nonce of its account, submits it
    /// to the validator and waits until its block is final: (height, index in the block).
    pub async fn submit(&self, chain: &ChainLink, body: TxBody) -> Result<(u64, u32), ClientError> {
        let mut next = self.inner.nonce.lock().await;
        let nonce = match *next {
            Some(n) => n,
            None => self.account_nonce(chain).await? + 1,
        };
        *next = Some(nonce + 1);
        drop(next);
        let tx = Tx {
            sender: self.inner.identity.public(),
            nonce,
            body,
        }
        .sign(&self.inner.identity);
        match self.submit_tx(&tx).await {
            Ok(at) => Ok(at),
            Err(e) => {
                // The nonce may not have been used: ask the chain again next time.
                *self.inner.nonce.lock().await = None;
                Err(e)
            }
        }
    }

    /// Lets the holder of `to` read document `id` (this client must own it): its data key
    /// `key`, sealed to them, committed as a `Grant` until `expires_ms` if set.
    pub async fn grant(
        &self,
        id: DocumentId,
        key: &DataKey,
        to: &GrantAddress,
        expires_ms: Option<u64>,
    ) -> Result<(u64, u32), ClientError> {
        let wrapped = WrappedKey::wrap(key, &id, to)?;
        let body = TxBody::Grant {
            document: id,
            grantee: to.id,
            wrapped,
            expires_ms,
        };
        self.submit(self.chain_link()?, body).await
    }

    /// Withdraws `grantee`'s grant on `id`.
    pub async fn revoke(
        &self,
        id: DocumentId,
        grantee: PublicId,
    ) -> Result<(u64, u32), ClientError> {
        let body = TxBody::Revoke {
            document: id,
            grantee,
        };
        self.submit(self.chain_link()?, body).await
    }

    /// The data key of `id` from this client's live grant on the chain, unwrapped with its
    /// own key.
    pub async fn granted_key(&self, id: &DocumentId) -> Result<DataKey, ClientError> {
        let me = self.inner.identity.public();
        let not_granted = ClientError::NotGranted {
            id: *id,
            reader: me,
        };
        // The validator shows a record only to its owner and live grantees.
        let record = match self.check_registered(self.chain_link()?, id).await {
            Err(ClientError::Peer {
                source:
                    ProtoError::Remote {
                        code: proto::ErrorCode::Refused,
                        ..
                    },
                ..
            }) => return Err(not_granted),
            other => other?,
        };
        let grant = record.live_grant(&me, crate::now_ms()).ok_or(not_granted)?;
        Ok(grant.wrapped.unwrap(id, &self.inner.identity)?)
    }

    /// Submits a signed transaction to the chain (its validator hosts in turn, see
    /// [`ChainLink`]) and waits until its block is committed: (height, index in block).
    pub async fn submit_tx(&self, tx: &SignedTx) -> Result<(u64, u32), ClientError> {
        let chain = self.chain_link()?;
        let bytes = Bytes::from(tx.encode());
        let req = Request::SubmitTx {
            len: bytes.len() as u64,
        };
        // To the host that answered last; a follower names the leader, which is asked
        // directly from then on (a few hops at most while leadership moves). Right after a
        // leader dies its followers still name it for up to `LEADER_FRESH`: redirects that
        // go round the hosts pause, longer each time, until an election has had its time.
        let deadline = Instant::now() + CHAIN_SUBMIT_TIMEOUT;
        let mut pause = Duration::from_millis(50);
        let mut hops = 0;
        let mut leader: Option<NodeInfo> = None;
        let mut ambiguous = false;
        loop {
            let answer = match &leader {
                Some(node) => self
                    .call_within(node, &req, Some(&bytes), CHAIN_SUBMIT_TIMEOUT)
                    .await
                    .map(|(resp, _)| (resp, node.clone())),
                None => self
                    .chain_call(chain, &req, Some(&bytes))
                    .await
                    .map(|(resp, _, node)| (resp, node)),
            };
            match answer {
                Ok((Response::Committed { height, index }, _)) => return Ok((height, index)),
                Ok((Response::Leader(node), _)) => {
                    if let Some(i) = chain.hosts.iter().position(|h| h.key == node.key) {
                        self.inner
                            .chain_host
                            .store(i, std::sync::atomic::Ordering::Relaxed);
                    }
                    hops += 1;
                    if hops > chain.hosts.len() {
                        if Instant::now() + pause > deadline {
                            return Err(ClientError::Chain(format!(
                                "no leader took the transaction within {CHAIN_SUBMIT_TIMEOUT:?}: \
                                 the validators kept naming other leaders (last {})",
                                node.key.short()
                            )));
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(500));
                        hops = 0;
                    }
                    leader = Some(node);
                }
                Ok((other, node)) => return Err(self.unexpected(&node, &other)),
                Err(e) if leader.is_some() && Self::worth_another_host(&e) => {
                    // The leader may have taken it before it went: ask the others.
                    ambiguous = true;
                    leader = None;
                }
                Err(e) if ambiguous && e.to_string().contains("replayed or out of order") => {
                    // An earlier attempt committed after all.
                    return match self.chain_tx(tx.id()).await? {
                        Some(p) => Ok((p.header.header.height, p.proof.index as u32)),
                        None => Err(e),
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The last nonce the chain has applied for this client.
    async fn account_nonce(&self, chain: &ChainLink) -> Result<u64, ClientError> {
        let me = self.inner.identity.public();
        match self.account(chain, &me).await? {
            Some(account) => Ok(account.nonce),
            None => Err(ClientError::Chain(format!(
                "this client ({me}) has no account on the chain"
            ))),
        }
    }

    async fn account(
        &self,
        chain: &ChainLink,
        id: &PublicId,
    ) -> Result<Option<Account>, ClientError> {
        match self
            .chain_query(chain, &Request::GetAccount { id: *id })
            .await?
        {
            Some(body) => postcard::from_bytes::<Account>(&body)
                .map(Some)
                .map_err(|e| ClientError::Chain(format!("account record: {e}"))),
            None => Ok(None),
        }
    }

    /// `id`'s account on the chain (its role), or `None` (a citizen has none).
    pub async fn chain_account(&self, id: &PublicId) -> Result<Option<Account>, ClientError> {
        self.account(self.chain_link()?, id).await
    }

    /// `id`'s record on the chain (owner, grants) as the validator host answers it (no
    /// proof: grants are current state, which a registration proof does not cover); `None`
    /// if it is not registered.
    pub async fn chain_record(
        &self,
        id: &DocumentId,
    ) -> Result<Option<DocumentRecord>, ClientError> {
        let req = Request::GetRecord { id: *id };
        match self.chain_query(self.chain_link()?, &req).await? {
            Some(body) => postcard::from_bytes(&body)
                .map(Some)
                .map_err(|e| ClientError::Chain(format!("document record: {e}"))),
            None => Ok(None),
        }
    }

    /// A chain query: the record's bytes, or `None` if the chain has no such record.
    async fn chain_query(
        &self,
        chain: &ChainLink,
        req: &Request,
    ) -> Result<Option<Vec<u8>>, ClientError> {
        match self.chain_call(chain, req, None).await? {
            (Response::ChainBody { len }, mut recv, node) => {
                read_checked_body(&mut recv, len, proto::MAX_CHAIN_BODY)
                    .await
                    .map(Some)
                    .map_err(|e| self.peer_error(&node, e))
            }
            (Response::NotFound, _, _) => Ok(None),
            (other, _, node) => Err(self.unexpected(&node, &other)),
        }
    }

    /// Asks every validator host but the one that answered last; the first record found.
    async fn chain_query_others(&self, chain: &ChainLink, req: &Request) -> Option<Vec<u8>> {
        let n = chain.hosts.len();
        let last = self
            .inner
            .chain_host
            .load(std::sync::atomic::Ordering::Relaxed)
            % n.max(1);
        for (i, node) in chain.hosts.iter().enumerate() {
            if i == last {
                continue;
            }
            if let Ok((Response::ChainBody { len }, mut recv)) = self.call(node, req, None).await
                && let Ok(body) = read_checked_body(&mut recv, len, proto::MAX_CHAIN_BODY).await
            {
                return Some(body);
            }
        }
        None
    }

    /// One request to the chain: to the validator host that answered last, then to each
    /// other host in turn while they are unreachable or answer `Unavailable` (no leader
    /// yet). A definite answer (including a refusal) ends the search.
    async fn chain_call(
        &self,
        chain: &ChainLink,
        req: &Request,
        body: Option<&Bytes>,
    ) -> Result<(Response, RecvStream, NodeInfo), ClientError> {
        let n = chain.hosts.len();
        if n == 0 {
            return Err(ClientError::Chain("no validator hosts configured".into()));
        }
        let first = self
            .inner
            .chain_host
            .load(std::sync::atomic::Ordering::Relaxed)
            % n;
        let mut last = None;
        // Three rounds half a second apart: a leader election takes about a second, and
        // meanwhile validators without a leader answer `Unavailable`.
        for attempt in 0..3 * n {
            let i = (first + attempt) % n;
            let node = &chain.hosts[i];
            let limit = match req {
                Request::SubmitTx { .. } => CHAIN_SUBMIT_TIMEOUT,
                _ => self.inner.options.chain_query_timeout,
            }
            .min(self.inner.options.request_timeout);
            match self.call_within(node, req, body, limit).await {
                Ok((resp, recv)) => {
                    self.inner
                        .chain_host
                        .store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok((resp, recv, node.clone()));
                }
                Err(e) if Self::worth_another_host(&e) => {
                    debug!(host = %node.key.short(), error = %e, "validator host failed; trying the next");
                    last = Some(e);
                    if (attempt + 1) % n == 0 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one host was asked"))
    }

    fn worth_another_host(e: &ClientError) -> bool {
        match e {
            ClientError::Peer { source, .. } => match source {
                ProtoError::Remote { code, .. } => {
                    matches!(code, proto::ErrorCode::Unavailable | proto::ErrorCode::Busy)
                }
                other => other.is_transport(),
            },
            _ => false,
        }
    }

    /// Sends one chain request to `node` (validator to validator): the answer and, for a
    /// `ChainBody`, its bytes (at most [`proto::MAX_CHAIN_BODY`]).
    pub async fn chain_request(
        &self,
        node: &NodeInfo,
        req: &Request,
        body: Option<Bytes>,
    ) -> Result<(Response, Option<Vec<u8>>), ClientError> {
        self.chain_request_within(node, req, body, self.inner.options.request_timeout)
            .await
    }

    /// [`Client::chain_request`] answered within `timeout` (raft's own time limits), the
    /// body included.
    pub async fn chain_request_within(
        &self,
        node: &NodeInfo,
        req: &Request,
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<(Response, Option<Vec<u8>>), ClientError> {
        let (resp, mut recv) = self.call_within(node, req, body.as_ref(), timeout).await?;
        match resp {
            Response::ChainBody { len } => {
                let bytes = read_checked_body(&mut recv, len, proto::MAX_CHAIN_BODY)
                    .await
                    .map_err(|e| self.peer_error(node, e))?;
                Ok((resp, Some(bytes)))
            }
            other => Ok((other, None)),
        }
    }

    /// A block by height, from the validator (checked: majority-signed by the validators).
    pub async fn chain_block(&self, height: u64) -> Result<Option<Block>, ClientError> {
        let chain = self.chain_link()?;
        let Some(body) = self
            .chain_query(chain, &Request::GetBlock { height })
            .await?
        else {
            return Ok(None);
        };
        let block: Block =
            postcard::from_bytes(&body).map_err(|e| ClientError::Chain(format!("block: {e}")))?;
        self.check_final(
            chain,
            block.header.header.height,
            validators::may_be_stale,
            |v| block.header.verify_final(v),
        )
        .await
        .map_err(|e| ClientError::Chain(e.to_string()))?;
        Ok(Some(block))
    }

    /// A committed transaction by id, with its proof verified here.
    pub async fn chain_tx(&self, id: [u8; 32]) -> Result<Option<TxInclusion>, ClientError> {
        let chain = self.chain_link()?;
        let Some(body) = self.chain_query(chain, &Request::GetTx { id }).await? else {
            return Ok(None);
        };
        let proof: TxInclusion = postcard::from_bytes(&body)
            .map_err(|e| ClientError::Chain(format!("transaction proof: {e}")))?;
        self.check_final(
            chain,
            proof.header.header.height,
            validators::may_be_stale,
            |v| proof.verify(v),
        )
        .await
        .map_err(|e| ClientError::Chain(e.to_string()))?;
        if proof.tx.id() != id {
            return Err(ClientError::Chain(
                "the validator answered with another transaction".into(),
            ));
        }
        Ok(Some(proof))
    }

    /// Runs `check` with the validators of block `height`: the trusted set
    /// (`ChainLink::validators`) and the set changes proven from it so far. A failure that
    /// may only mean a validator joined or left since (`stale`) fetches the chain's set
    /// changes, proves them afresh and checks once more; the first error stands if that
    /// changes nothing or cannot be done.
    async fn check_final<T, E>(
        &self,
        chain: &ChainLink,
        height: u64,
        stale: impl Fn(&E) -> bool,
        check: impl Fn(&[PublicId]) -> Result<T, E>,
    ) -> Result<T, E> {
        let known = self
            .inner
            .validators
            .lock()
            .expect("validators lock")
            .clone()
            .unwrap_or_else(|| Arc::new(ValidatorHistory::trusted(&chain.validators)));
        match check(known.at(height)) {
            Err(e) if stale(&e) => match self.prove_validators(chain).await {
                Ok(fresh) if fresh.at(height) != known.at(height) => check(fresh.at(height)),
                Ok(_) => Err(e),
                Err(why) => {
                    debug!(error = %why, "could not fetch the validator set changes");
                    Err(e)
                }
            },
            other => other,
        }
    }

    /// The chain's validator set changes, proven here from `ChainLink::validators`, and
    /// kept for the next checks.
    pub async fn prove_validators(
        &self,
        chain: &ChainLink,
    ) -> Result<Arc<ValidatorHistory>, ClientError> {
        let changes = self.validator_changes(chain).await?;
        let history = Arc::new(
            ValidatorHistory::prove(&chain.validators, &changes)
                .map_err(|e| ClientError::Chain(e.to_string()))?,
        );
        *self.inner.validators.lock().expect("validators lock") = Some(history.clone());
        Ok(history)
    }

    /// The chain's validator set changes with their proofs, as a validator sent them
    /// (not checked here: [`ValidatorHistory::prove`] does that).
    async fn validator_changes(&self, chain: &ChainLink) -> Result<Vec<TxInclusion>, ClientError> {
        match self
            .chain_query(chain, &Request::GetValidatorChanges)
            .await?
        {
            Some(body) => postcard::from_bytes(&body)
                .map_err(|e| ClientError::Chain(format!("validator set changes: {e}"))),
            None => Ok(Vec::new()),
        }
    }

    /// The chain this client registers on.
    pub fn chain_link(&self) -> Result<&ChainLink, ClientError> {
        self.inner
            .options
            .chain
            .as_ref()
            .ok_or_else(|| ClientError::Chain("this cluster has no [chain] section".into()))
    }

    /// The chain's status, from the validator.
    pub async fn chain_status(&self) -> Result<ChainStatus, ClientError> {
        let chain = self.chain_link()?;
        let body = self
            .chain_query(chain, &Request::ChainStatus)
            .await?
            .ok_or_else(|| ClientError::Chain("the validator has no status".into()))?;
        postcard::from_bytes(&body).map_err(|e| ClientError::Chain(format!("status: {e}")))
    }

    /// Checks on the chain that `id` is registered: the registering transaction, its Merkle
    /// path and a majority of validator signatures, verified here rather than trusted.
    pub async fn check_registered(
        &self,
        chain: &ChainLink,
        id: &DocumentId,
    ) -> Result<DocumentRecord, ClientError> {
        Ok(self.registration(chain, id).await?.0)
    }

    /// `id`'s record and the verified proof of the transaction that registered it.
    async fn registration(
        &self,
        chain: &ChainLink,
        id: &DocumentId,
    ) -> Result<(DocumentRecord, TxInclusion), ClientError> {
        let req = Request::GetDocument { id: *id };
        let body = match self.chain_query(chain, &req).await? {
            Some(body) => body,
            // A validator that lags (just restarted) may not have the block yet: only
            // "not registered" from every reachable validator is an answer.
            None => self
                .chain_query_others(chain, &req)
                .await
                .ok_or(ClientError::NotRegistered { id: *id })?,
        };
        let (record, proof): (DocumentRecord, TxInclusion) = postcard::from_bytes(&body)
            .map_err(|e| ClientError::Chain(format!("registration record: {e}")))?;
        self.check_final(
            chain,
            proof.header.header.height,
            validators::may_be_stale,
            |v| proof.verify_registration(id, v),
        )
        .await
        .map_err(|e| ClientError::Chain(format!("registration proof of {id}: {e}")))?;
        if proof.tx.tx.sender != record.owner {
            return Err(ClientError::Chain(format!(
                "the chain answered with a proof of another department's transaction for {id}"
            )));
        }
        Ok((record, proof))
    }

    /// An offline-verifiable receipt for `id`: its manifest and the proof of its
    /// registration, both checked here first.
    pub async fn receipt(&self, id: &DocumentId) -> Result<Receipt, ClientError> {
        let chain = self.chain_link()?;
        let (_, registration) = self.registration(chain, id).await?;
        let manifest = self.manifest(id).await?;
        let height = registration.header.header.height;
        let mut receipt = Receipt {
            document: *id,
            manifest: manifest.encode(),
            registration,
            validator_changes: Vec::new(),
        };
        // Changes are carried only when the set of the registration's block is not the
        // trusted one, so receipts stay as they were while the set never changed.
        if receipt.verify(&chain.validators).is_err() {
            receipt.validator_changes = self.validator_changes(chain).await?;
            receipt
                .validator_changes
                .retain(|c| c.header.header.height < height);
            receipt
                .verify(&chain.validators)
                .map_err(|e| ClientError::Chain(e.to_string()))?;
        }
        Ok(receipt)
    }

    async fn upload_stripe(
        &self,
        stripe: EncodedStripe,
        quorum: usize,
    ) -> Result<StripeUpload, ClientError> {
        let nodes: Vec<NodeInfo> = self
            .inner
            .layout
            .place(&stripe_key(&stripe.ids), stripe.ids.len())?
            .into_iter()
            .cloned()
            .collect();
        let mut writes = FuturesUnordered::new();
        for (slot, ((id, body), node)) in stripe
            .ids
            .iter()
            .zip(stripe.shards.iter())
            .zip(nodes)
            .enumerate()
        {
            let client = self.clone();
            let (id, body) = (*id, body.clone());
            writes.push(async move {
                let req = Request::PutShard {
                    id,
                    len: body.len() as u64,
                };
                let res = client
                    .call(&node, &req, Some(&body))
                    .await
                    .and_then(|r| match r.0 {
                        Response::Stored(_) => Ok(()),
                        other => Err(client.unexpected(&node, &other)),
                    });
                (slot, node, res)
            });
        }
        let mut stored = 0;
        let mut missing = Vec::new();
        let mut errors = Vec::new();
        while let Some((slot, node, res)) = writes.next().await {
            match res {
                Ok(()) => stored += 1,
                Err(e) => {
                    debug!(stripe = stripe.index, slot, error = %e, "shard write failed");
                    errors.push(e.to_string());
                    missing.push((stripe.index, slot, node_id(&node)));
                }
            }
        }
        if stored < quorum {
            return Err(ClientError::StripeNotStored {
                stripe: stripe.index,
                stored,
                needed: quorum,
                errors: errors.join("; "),
            });
        }
        for (stripe, slot, peer) in &missing {
            warn!(stripe, slot, peer = %peer.short(), "shard not written; stripe below full redundancy until repaired");
        }
        Ok(StripeUpload {
            plain_len: stripe.plain_len,
            stored,
            missing,
        })
    }

    /// Stores a one-stripe document with one request per peer (`PutMany`): each placed peer
    /// gets its shard and, if it is one of the manifest's replicas, the manifest too, all
    /// made durable in one commit there. Replicas holding no shard get the manifest alone;
    /// if too few copies of the manifest were acknowledged, it is written again the usual
    /// way ([`Client::store_manifest`], which replaces failed replicas).
    async fn store_one_stripe(
        &self,
        stripe: EncodedStripe,
        manifest: &Manifest,
        quorum: usize,
    ) -> Result<(DocumentId, StripeUpload), ClientError> {
        let manifest_bytes = Bytes::from(manifest.encode());
        let id = DocumentId::of(&manifest_bytes);
        let nodes = self
            .inner
            .layout
            .place(&stripe_key(&stripe.ids), stripe.ids.len())?;
        let replicas = self.manifest_nodes(&id)?;
        let holds_manifest = |node: &NodeInfo| replicas.iter().any(|r| r.key == node.key);
        let manifest_len = manifest_bytes.len() as u64;
        // (slot of the shard it holds, if any; whether it holds the manifest; the peer).
        let mut targets: Vec<(Option<usize>, bool, NodeInfo)> = nodes
            .iter()
            .enumerate()
            .map(|(slot, node)| (Some(slot), holds_manifest(node), (*node).clone()))
            .collect();
        for node in &replicas {
            if !nodes.iter().any(|n| n.key == node.key) {
                targets.push((None, true, node.clone()));
            }
        }
        let mut writes = FuturesUnordered::new();
        for (slot, with_manifest, node) in targets {
            let shard = slot.map(|s| (stripe.ids[s], stripe.shards[s].clone()));
            let req = Request::PutMany {
                shards: shard.iter().map(|(i, b)| (*i, b.len() as u64)).collect(),
                manifest: with_manifest.then_some((id, manifest_len)),
            };
            let body = match (shard, with_manifest) {
                (Some((_, b)), false) => b,
                (None, _) => manifest_bytes.clone(),
                (Some((_, b)), true) => {
                    let mut joined = Vec::with_capacity(b.len() + manifest_bytes.len());
                    joined.extend_from_slice(&b);
                    joined.extend_from_slice(&manifest_bytes);
                    Bytes::from(joined)
                }
            };
            writes.push(async move {
                let res = match self.call(&node, &req, Some(&body)).await {
                    Ok((Response::StoredMany(_), _)) => Ok(()),
                    Ok((other, _)) => Err(self.unexpected(&node, &other)),
                    Err(e) => Err(e),
                };
                (slot, with_manifest, node, res)
            });
        }
        let (mut stored, mut manifests) = (0, 0);
        let mut missing = Vec::new();
        let mut errors = Vec::new();
        while let Some((slot, with_manifest, node, res)) = writes.next().await {
            match (res, slot) {
                (Ok(()), slot) => {
                    stored += usize::from(slot.is_some());
                    manifests += usize::from(with_manifest);
                }
                (Err(e), Some(slot)) => {
                    debug!(stripe = 0, slot, error = %e, "shard write failed");
                    errors.push(e.to_string());
                    missing.push((0, slot, node_id(&node)));
                }
                (Err(e), None) => errors.push(e.to_string()),
            }
        }
        if stored < quorum {
            return Err(ClientError::StripeNotStored {
                stripe: 0,
                stored,
                needed: quorum,
                errors: errors.join("; "),
            });
        }
        for (stripe, slot, peer) in &missing {
            warn!(stripe, slot, peer = %peer.short(), "shard not written; stripe below full redundancy until repaired");
        }
        if manifests < replicas.len() {
            self.store_manifest(manifest, quorum).await?;
        }
        let up = StripeUpload {
            plain_len: stripe.plain_len,
            stored,
            missing,
        };
        Ok((id, up))
    }

    /// The peers a document's manifest is written to: `max(3, m + 1)` of them (capped at the
    /// live peers), so that losing any m peers loses no manifest.
    pub fn manifest_nodes(&self, id: &DocumentId) -> Result<Vec<NodeInfo>, ClientError> {
        let live = self.live_nodes();
        let replicas = (usize::from(self.inner.options.params.m) + 1)
            .max(MANIFEST_REPLICAS)
            .min(live);
        Ok(self
            .inner
            .layout
            .place(id.as_bytes(), replicas)?
            .into_iter()
            .cloned()
            .collect())
    }

    fn live_nodes(&self) -> usize {
        self.inner
            .layout
            .nodes
            .iter()
            .filter(|n| n.weight > 0)
            .count()
    }

    /// Writes the manifest to its placed replicas; a replica that fails is replaced by the
    /// next peer of the layout (readers ask every peer in that same order). It needs as many
    /// copies as the write quorum allows: all replicas, less the shards a stripe may lack.
    async fn store_manifest(
        &self,
        manifest: &Manifest,
        quorum: usize,
    ) -> Result<DocumentId, ClientError> {
        let bytes = Bytes::from(manifest.encode());
        let id = DocumentId::of(&bytes);
        let nodes = self.manifest_candidates(&id)?;
        let replicas = self.manifest_nodes(&id)?.len();
        let slack = self.inner.options.params.width() - quorum;
        let needed = replicas.saturating_sub(slack).max(1);
        let order = (0..nodes.len()).collect();
        let hedged = self
            .hedged(&nodes, order, replicas, |node, _| {
                let bytes = bytes.clone();
                async move {
                    let req = Request::PutManifest {
                        id,
                        len: bytes.len() as u64,
                    };
                    match self.call(&node, &req, Some(&bytes)).await? {
                        (Response::Stored(_), _) => Ok(()),
                        (other, _) => Err(self.unexpected(&node, &other)),
                    }
                }
            })
            .await;
        let stored = hedged.results.iter().flatten().count();
        if stored < needed {
            return Err(ClientError::ManifestNotStored {
                id,
                stored,
                needed,
                errors: hedged.errors(),
            });
        }
        Ok(id)
    }

    /// Every live peer in the order a manifest is written and read: its placed replicas,
    /// then the rest of the layout.
    fn manifest_candidates(&self, id: &DocumentId) -> Result<Vec<NodeInfo>, ClientError> {
        let mut nodes = self.manifest_nodes(id)?;
        let previous = self.inner.previous.iter().flat_map(|l| &l.nodes);
        for node in self.inner.layout.nodes.iter().chain(previous) {
            if node.weight > 0 && !nodes.iter().any(|n| n.key == node.key) {
                nodes.push(node.clone());
            }
        }
        // A draining peer (weight 0) may still hold copies until the rebalance ends.
        let draining = self.inner.layout.nodes.iter().filter(|n| n.weight == 0);
        for node in draining {
            if !nodes.iter().any(|n| n.key == node.key) {
                nodes.push(node.clone());
            }
        }
        Ok(nodes)
    }

    /// Fetches and checks a document's manifest from the first peer that has it, asking in
    /// [`Client::manifest_candidates`] order.
    pub async fn manifest(&self, id: &DocumentId) -> Result<Manifest, ClientError> {
        let nodes = self.manifest_candidates(id)?;
        let order = (0..nodes.len()).collect();
        let hedged = self
            .hedged_retrying(&nodes, order, 1, |node, _| async move {
                let body = match self
                    .call(&node, &Request::GetManifest { id: *id }, None)
                    .await?
                {
                    (Response::Manifest { len }, mut recv) => {
                        read_checked_body(&mut recv, len, proto::MAX_MANIFEST_BODY)
                            .await
                            .map_err(|e| self.peer_error(&node, e))?
                    }
                    (other, _) => return Err(self.unexpected(&node, &other)),
                };
                if !id.verifies(&body) {
                    warn!(peer = %node_id(&node).short(), document = %id, "peer served a manifest that does not match its id");
                    return Err(self.peer_error(
                        &node,
                        ProtoError::Unexpected("manifest does not match its id".into()),
                    ));
                }
                Ok(Bytes::from(body))
            })
            .await;
        match hedged.results.iter().flatten().next() {
            Some(body) => Ok(Manifest::decode(body)?),
            None => Err(ClientError::NotFound {
                id: *id,
                errors: hedged.errors(),
            }),
        }
    }

    /// Fetches document `id`, opens it with `key` and writes the plaintext to `writer`.
    pub async fn get<W>(
        &self,
        id: &DocumentId,
        key: &DataKey,
        mut writer: W,
        progress: Progress<'_>,
    ) -> Result<GetReport, ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        if let Some(chain) = &self.inner.options.chain {
            self.check_registered(chain, id).await?;
        }
        let manifest = Arc::new(self.manifest(id).await?);
        let codec = Arc::new(StripeCodec::for_manifest(&manifest, key)?);
        let reading = Arc::new(Reading {
            id: *id,
            manifest: Bytes::from(manifest.encode()),
        });
        let mut report = GetReport::default();
        let in_flight = self.inner.options.stripes_in_flight.max(1);
        let mut opened = futures::stream::iter(0..manifest.stripe_count())
            .map(|i| {
                let (manifest, codec, reading) = (manifest.clone(), codec.clone(), reading.clone());
                async move { self.fetch_and_open(manifest, codec, &reading, i).await }
            })
            .buffered(in_flight);
        while let Some(res) = opened.next().await {
            let (stripe, corrupt) = res?;
            writer
                .write_all(&stripe.plaintext)
                .await
                .map_err(ClientError::Write)?;
            report.bytes += stripe.plaintext.len() as u64;
            report.stripes_rebuilt += u64::from(stripe.rebuilt);
            report.corrupt.extend(corrupt);
            progress(report.bytes, manifest.size);
        }
        writer.flush().await.map_err(ClientError::Write)?;
        for (stripe, slot, peer) in &report.corrupt {
            warn!(document = %id, stripe, slot, peer = %peer.short(), "corrupt shard reported for repair");
        }
        Ok(report)
    }

    async fn fetch_and_open(
        &self,
        manifest: Arc<Manifest>,
        codec: Arc<StripeCodec>,
        reading: &Reading,
        index: u64,
    ) -> Result<(codec::OpenedStripe, Vec<(u64, usize, PublicId)>), ClientError> {
        let ids = manifest.stripes[index as usize].clone();
        let nodes: Vec<NodeInfo> = self
            .inner
            .layout
            .place(&stripe_key(&ids), ids.len())?
            .into_iter()
            .cloned()
            .collect();
        let k = usize::from(manifest.params.k);
        let mut fetched = self
            .fetch_stripe(reading, index, &ids, &nodes, k, None)
            .await;
        let mut tried_previous = false;
        loop {
            let shards = fetched.shards.clone();
            let (m, c) = (manifest.clone(), codec.clone());
            let opened = tokio::task::spawn_blocking(move || c.open(&m, index, shards))
                .await
                .map_err(|e| ClientError::Task(e.to_string()))?;
            match opened {
                Ok(stripe) => {
                    let mut corrupt = fetched.corrupt.clone();
                    corrupt.extend(
                        stripe
                            .corrupt
                            .iter()
                            .map(|&s| (index, s, node_id(&nodes[s]))),
                    );
                    return Ok((stripe, corrupt));
                }
                // Some fetched shards were bad: ask the slots not yet tried, once.
                Err(CodecError::StripeUnrecoverable { .. }) if !fetched.untried.is_empty() => {
                    let untried = std::mem::take(&mut fetched.untried);
                    let more = self
                        .fetch_stripe(reading, index, &ids, &nodes, untried.len(), Some(untried))
                        .await;
                    for (slot, shard) in more.shards.into_iter().enumerate() {
                        if shard.is_some() {
                            fetched.shards[slot] = shard;
                        }
                    }
                    fetched.corrupt.extend(more.corrupt);
                    fetched.errors.extend(more.errors);
                }
                // During a layout change, shards not yet moved sit on their old peers.
                Err(CodecError::StripeUnrecoverable { .. })
                    if !tried_previous && self.inner.previous.is_some() =>
                {
                    tried_previous = true;
                    let previous = self.inner.previous.as_ref().expect("checked above");
                    let old: Vec<NodeInfo> = previous
                        .place(&stripe_key(&ids), ids.len())?
                        .into_iter()
                        .cloned()
                        .collect();
                    let slots: Vec<usize> = (0..ids.len())
                        .filter(|&s| fetched.shards[s].is_none() && old[s].key != nodes[s].key)
                        .collect();
                    let more = self
                        .fetch_stripe(reading, index, &ids, &old, slots.len(), Some(slots))
                        .await;
                    for (slot, shard) in more.shards.into_iter().enumerate() {
                        if shard.is_some() {
                            fetched.shards[slot] = shard;
                        }
                    }
                    fetched.errors.extend(more.errors);
                }
                Err(CodecError::StripeUnrecoverable { .. }) => {
                    return Err(ClientError::StripeUnavailable {
                        stripe: index,
                        k,
                        errors: fetched.errors.join("; "),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Asks placed peers for a stripe's shards until `want` have arrived: data slots first,
    /// healthy peers first, one more whenever one fails or `hedge_after` passes.
    async fn fetch_stripe(
        &self,
        reading: &Reading,
        index: u64,
        ids: &[ShardId],
        nodes: &[NodeInfo],
        want: usize,
        only: Option<Vec<usize>>,
    ) -> Fetched {
        let order = only.unwrap_or_else(|| (0..ids.len()).collect());
        let hedged = self
            .hedged_retrying(nodes, order, want, |node, slot| {
                let id = ids[slot];
                async move {
                    self.open_document(&node, reading).await?;
                    match self.call(&node, &Request::GetShard { id }, None).await? {
                        (Response::Shard { len }, mut recv) => {
                            read_checked_body(&mut recv, len, proto::MAX_SHARD_BODY)
                                .await
                                .map(Bytes::from)
                                .map_err(|e| self.peer_error(&node, e))
                        }
                        (other, _) => Err(self.unexpected(&node, &other)),
                    }
                }
            })
            .await;
        let mut corrupt = Vec::new();
        let mut errors = Vec::new();
        for (slot, e) in hedged.failures {
            if let ClientError::Peer {
                source:
                    ProtoError::Remote {
                        code: proto::ErrorCode::Corrupt,
                        ..
                    },
                ..
            } = &e
            {
                corrupt.push((index, slot, node_id(&nodes[slot])));
            }
            debug!(stripe = index, slot, error = %e, "shard fetch failed");
            errors.push(e.to_string());
        }
        Fetched {
            shards: hedged.results,
            corrupt,
            errors,
            untried: hedged.untried,
        }
    }

    /// Opens document `id` (its `manifest` bytes) on the connection to `node`, so that the
    /// peer lets this identity fetch (or, as the owner of a superseded version, delete) the
    /// shards the manifest names.
    pub async fn open_on(
        &self,
        node: &NodeInfo,
        id: DocumentId,
        manifest: Bytes,
    ) -> Result<(), ClientError> {
        self.open_document(node, &Reading { id, manifest }).await
    }

    /// Opens `reading` on the connection to `node`, unless it already is.
    async fn open_document(&self, node: &NodeInfo, reading: &Reading) -> Result<(), ClientError> {
        let conn = self.connection(node).await?;
        let key = (conn.stable_id(), reading.id);
        if self
            .inner
            .opened
            .lock()
            .expect("opened lock")
            .contains(&key)
        {
            return Ok(());
        }
        let req = Request::OpenDocument {
            document: reading.id,
            len: reading.manifest.len() as u64,
        };
        match self.call(node, &req, Some(&reading.manifest)).await? {
            (Response::Opened { .. }, _) => {}
            (other, _) => return Err(self.unexpected(node, &other)),
        }
        let mut opened = self.inner.opened.lock().expect("opened lock");
        if opened.len() >= MAX_OPENED {
            opened.clear();
        }
        opened.insert(key);
        Ok(())
    }

    /// Runs `request` against the slots of `order` until `want` succeed: `want` at first
    /// (peers marked down last), one more whenever one fails, and one more each time
    /// `hedge_after` passes without enough answers.
    async fn hedged<T, F, Fut>(
        &self,
        nodes: &[NodeInfo],
        mut order: Vec<usize>,
        want: usize,
        request: F,
    ) -> Hedged<T>
    where
        T: Clone,
        F: Fn(NodeInfo, usize) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        order.sort_by_key(|&slot| self.is_down(&node_id(&nodes[slot])));
        let mut order = order.into_iter();
        let mut results = vec![None; nodes.len()];
        let mut failures = Vec::new();
        let mut pending = FuturesUnordered::new();
        let launch = |slot: usize| {
            let fut = request(nodes[slot].clone(), slot);
            async move { (slot, fut.await) }
        };
        for slot in order.by_ref().take(want) {
            pending.push(launch(slot));
        }
        let mut got = 0;
        let hedge_after = self.inner.options.hedge_after;
        let hedge = tokio::time::sleep(hedge_after);
        tokio::pin!(hedge);
        while got < want && !pending.is_empty() {
            tokio::select! {
                Some((slot, res)) = pending.next() => match res {
                    Ok(value) => {
                        results[slot] = Some(value);
                        got += 1;
                    }
                    Err(e) => {
                        failures.push((slot, e));
                        if let Some(next) = order.next() {
                            pending.push(launch(next));
                        }
                    }
                },
                () = &mut hedge => {
                    if let Some(next) = order.next() {
                        pending.push(launch(next));
                    }
                    hedge.as_mut().reset(tokio::time::Instant::now() + hedge_after);
                }
            }
        }
        Hedged {
            results,
            failures,
            untried: order.collect(),
        }
    }

    /// [`Client::hedged`], then, while fewer than `want` succeeded, the slots that answered
    /// `Unavailable` or `Busy` (the peer could not check access now, or was full) are asked
    /// again after a pause (0.1 s, doubling up to 1 s) until `unavailable_retry` has passed
    /// since the first try; results are merged (the first `want` to arrive count).
    async fn hedged_retrying<T, F, Fut>(
        &self,
        nodes: &[NodeInfo],
        order: Vec<usize>,
        want: usize,
        request: F,
    ) -> Hedged<T>
    where
        T: Clone,
        F: Fn(NodeInfo, usize) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let deadline = Instant::now() + self.inner.options.unavailable_retry;
        let mut all = self.hedged(nodes, order, want, &request).await;
        let mut pause = Duration::from_millis(100);
        loop {
            let got = all.results.iter().filter(|r| r.is_some()).count();
            let again: Vec<usize> = all
                .failures
                .iter()
                .filter(|(_, e)| Self::worth_asking_again(e))
                .map(|(slot, _)| *slot)
                .filter(|slot| all.results[*slot].is_none())
                .collect();
            if got >= want || again.is_empty() || Instant::now() + pause > deadline {
                return all;
            }
            debug!(slots = ?again, ?pause, "peers could not answer now; asking them again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            all.failures.retain(|(slot, _)| !again.contains(slot));
            let more = self.hedged(nodes, again, want - got, &request).await;
            for (slot, value) in more.results.into_iter().enumerate() {
                if value.is_some() && all.results[slot].is_none() {
                    all.results[slot] = value;
                }
            }
            all.failures.extend(more.failures);
            all.untried.extend(more.untried);
        }
    }

    /// A peer's answer that another try may change: `Unavailable` (it could not check
    /// access now) or `Busy`.
    fn worth_asking_again(e: &ClientError) -> bool {
        matches!(
            e,
            ClientError::Peer {
                source: ProtoError::Remote {
                    code: proto::ErrorCode::Unavailable | proto::ErrorCode::Busy,
                    ..
                },
                ..
            }
        )
    }

    fn is_down(&self, peer: &PublicId) -> bool {
        let down = self.inner.down.lock().expect("down map lock");
        down.get(peer).is_some_and(|until| Instant::now() < *until)
    }

    fn mark_down(&self, peer: PublicId) {
        let until = Instant::now() + self.inner.options.down_for;
        self.inner
            .down
            .lock()
            .expect("down map lock")
            .insert(peer, until);
    }

    fn peer_error(&self, node: &NodeInfo, source: ProtoError) -> ClientError {
        ClientError::Peer {
            peer: node_id(node).short(),
            addr: node.addr.clone(),
            source,
        }
    }

    fn unexpected(&self, node: &NodeInfo, resp: &Response) -> ClientError {
        let source = match proto::expect_ok(resp.clone()) {
            Err(e) => e,
            Ok(other) => ProtoError::Unexpected(format!("{other:?}")),
        };
        self.peer_error(node, source)
    }

    /// A live connection to `node`, reusing the pooled one.
    async fn connection(&self, node: &NodeInfo) -> Result<quinn::Connection, ClientError> {
        let peer = node_id(node);
        let slot = self
            .inner
            .conns
            .lock()
            .expect("connection pool lock")
            .entry(peer)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
            // The peer closed the connection (it stopped or restarted): fail fast so the
            // caller asks another peer now, and ask this one last for a while.
            let reason = conn
                .close_reason()
                .map(|r| r.to_string())
                .unwrap_or_default();
            self.mark_down(peer);
            *slot = None;
            return Err(self.peer_error(
                node,
                ProtoError::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    format!("connection closed: {reason}"),
                )),
            ));
        }
        let err = |source: ProtoError| self.peer_error(node, source);
        if self.is_down(&peer) {
            // One failed attempt per `down_for`: callers move on to other peers at once.
            return Err(err(ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "peer is down (a recent connection attempt failed)",
            ))));
        }
        let addr: SocketAddr = node.addr.parse().map_err(|_| {
            err(ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad peer address {:?}", node.addr),
            )))
        })?;
        let connect = tls::connect(&self.inner.endpoint, addr);
        let (conn, who) =
            match tokio::time::timeout(self.inner.options.connect_timeout, connect).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    self.mark_down(peer);
                    return Err(err(ProtoError::Io(std::io::Error::other(e))));
                }
                Err(_) => {
                    self.mark_down(peer);
                    return Err(err(ProtoError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    ))));
                }
            };
        if who != peer {
            conn.close(1u32.into(), b"unexpected identity");
            return Err(err(ProtoError::Unexpected(format!(
                "address {addr} answered as {}, expected {}",
                who.short(),
                peer.short()
            ))));
        }
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends one request (and its body) on a fresh stream and reads the answer's header.
    async fn call(
        &self,
        node: &NodeInfo,
        req: &Request,
        body: Option<&Bytes>,
    ) -> Result<(Response, RecvStream), ClientError> {
        self.call_within(node, req, body, self.inner.options.request_timeout)
            .await
    }

    /// [`Client::call`] with its own time limit. A peer whose process died (kill -9, a
    /// restart) leaves its pooled connection looking open until QUIC's idle timeout: if not
    /// one datagram came back on it while the request waited, the connection is dropped from
    /// the pool (and the peer asked last for a while), so the next request dials afresh.
    async fn call_within(
        &self,
        node: &NodeInfo,
        req: &Request,
        body: Option<&Bytes>,
        timeout: Duration,
    ) -> Result<(Response, RecvStream), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let conn = match tokio::time::timeout_at(deadline, self.connection(node)).await {
            Ok(conn) => conn?,
            Err(_) => return Err(self.timed_out(node, timeout)),
        };
        let heard = conn.stats().udp_rx.datagrams;
        let exchange = async {
            // A stream error says little ("connection lost"); the connection's close reason
            // says why (e.g. the peer refused our identity during the handshake).
            let io = |e: &dyn std::fmt::Display| {
                let why = match conn.close_reason() {
                    Some(reason) => format!("{e}: {reason}"),
                    None => e.to_string(),
                };
                self.peer_error(node, ProtoError::Io(std::io::Error::other(why)))
            };
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| io(&e))?;
            proto::write_frame(&mut send, req)
                .await
                .map_err(|e| io(&e))?;
            if let Some(body) = body {
                // Hands the buffer to quinn without a copy.
                send.write_chunk(body.clone()).await.map_err(|e| io(&e))?;
            }
            let _ = send.finish();
            let resp: Response = match proto::read_frame(&mut recv).await {
                Ok(resp) => resp,
                Err(e) if e.is_transport() => return Err(io(&e)),
                Err(e) => return Err(self.peer_error(node, e)),
            };
            Ok((resp, recv))
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok((Response::Error { code, message }, _))) => {
                Err(self.peer_error(node, ProtoError::Remote { code, message }))
            }
            Ok(res) => res,
            Err(_) => {
                if self.silent_for(node, &conn, heard, deadline - timeout) >= SILENCE {
                    debug!(peer = %node.key.short(), "no datagram from the peer for a while; dropping its connection");
                    self.forget_connection(node, &conn);
                }
                Err(self.timed_out(node, timeout))
            }
        }
    }

    fn timed_out(&self, node: &NodeInfo, timeout: Duration) -> ClientError {
        self.peer_error(
            node,
            ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            )),
        )
    }

    /// After a request on `conn` timed out: how long the peer has sent nothing at all on it
    /// (`heard`: its datagram count when the request started at `started`), as far as the
    /// timed-out requests of the last while tell.
    fn silent_for(
        &self,
        node: &NodeInfo,
        conn: &quinn::Connection,
        heard: u64,
        started: tokio::time::Instant,
    ) -> Duration {
        let now = Instant::now();
        let rx = conn.stats().udp_rx.datagrams;
        let since = if rx == heard {
            now - started.elapsed()
        } else {
            now
        };
        let mut silent = self.inner.silent.lock().expect("silence map lock");
        let entry = silent
            .entry(node_id(node))
            .or_insert((conn.stable_id(), rx, since));
        if entry.0 != conn.stable_id() || entry.1 != rx {
            *entry = (conn.stable_id(), rx, since);
        }
        now.saturating_duration_since(entry.2)
    }

    /// Closes `conn` and takes it out of the pool if it is still `node`'s pooled connection.
    fn forget_connection(&self, node: &NodeInfo, conn: &quinn::Connection) {
        let peer = node_id(node);
        let slot = self
            .inner
            .conns
            .lock()
            .expect("connection pool lock")
            .get(&peer)
            .cloned();
        if let Some(slot) = slot
            && let Ok(mut slot) = slot.try_lock()
            && slot
                .as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            *slot = None;
        }
        conn.close(0u32.into(), b"unresponsive");
        self.mark_down(peer);
    }
}

/// One request to one peer, for the operations workers (`ops`): no hedging, no quorum.
impl Client {
    /// Shard `id` from `node`, verified against its id; `None` if the peer has none.
    pub async fn shard_get(
        &self,
        node: &NodeInfo,
        id: &ShardId,
    ) -> Result<Option<Bytes>, ClientError> {
        match self
            .call(node, &Request::GetShard { id: *id }, None)
            .await?
        {
            (Response::Shard { len }, mut recv) => {
                let body = read_checked_body(&mut recv, len, proto::MAX_SHARD_BODY)
                    .await
                    .map_err(|e| self.peer_error(node, e))?;
                if !id.verifies(&body) {
                    return Err(self.peer_error(
                        node,
                        ProtoError::Unexpected(format!("shard {id} does not match its id")),
                    ));
                }
                Ok(Some(Bytes::from(body)))
            }
            (Response::NotFound, _) => Ok(None),
            (other, _) => Err(self.unexpected(node, &other)),
        }
    }

    /// Stores a shard on `node`; `Ok` once the peer checked its hash and made it durable.
    pub async fn shard_put(
        &self,
        node: &NodeInfo,
        id: &ShardId,
        body: &Bytes,
    ) -> Result<PutOutcome, ClientError> {
        let req = Request::PutShard {
            id: *id,
            len: body.len() as u64,
        };
        match self.call(node, &req, Some(body)).await? {
            (Response::Stored(outcome), _) => Ok(outcome),
            (other, _) => Err(self.unexpected(node, &other)),
        }
    }

    /// Whether `node` has a committed row for shard `id` (not re-hashed; scrub does that).
    pub async fn shard_has(&self, node: &NodeInfo, id: &ShardId) -> Result<bool, ClientError> {
        match self
            .call(node, &Request::HasShard { id: *id }, None)
            .await?
        {
            (Response::Has(has), _) => Ok(has),
            (other, _) => Err(self.unexpected(node, &other)),
        }
    }

    /// Drops one reference to shard `id` on `node`.
    pub async fn shard_delete(
        &self,
        node: &NodeInfo,
        id: &ShardId,
    ) -> Result<DeleteOutcome, ClientError> {
        match self
            .call(node, &Request::DeleteShard { id: *id }, None)
            .await?
        {
            (Response::Deleted(outcome), _) => Ok(outcome),
            (other, _) => Err(self.unexpected(node, &other)),
        }
    }

    /// The manifest of `id` held by `node`, checked against the id; `None` if it has none.
    pub async fn manifest_get(
        &self,
        node: &NodeInfo,
        id: &DocumentId,
    ) -> Result<Option<Bytes>, ClientError> {
        match self
            .call(node, &Request::GetManifest { id: *id }, None)
            .await?
        {
            (Response::Manifest { len }, mut recv) => {
                let body = read_checked_body(&mut recv, len, proto::MAX_MANIFEST_BODY)
                    .await
                    .map_err(|e| self.peer_error(node, e))?;
                if !id.verifies(&body) {
                    return Err(self.peer_error(
                        node,
                        ProtoError::Unexpected("manifest does not match its id".into()),
                    ));
                }
                Ok(Some(Bytes::from(body)))
            }
            (Response::NotFound, _) => Ok(None),
            (other, _) => Err(self.unexpected(node, &other)),
        }
    }

    /// Stores manifest bytes (which hash to `id`) on `node`, durably.
    pub async fn manifest_put(
        &self,
        node: &NodeInfo,
        id: &DocumentId,
        body: &Bytes,
    ) -> Result<(), ClientError> {
        let req = Request::PutManifest {
            id: *id,
            len: body.len() as u64,
        };
        match self.call(node, &req, Some(body)).await? {
            (Response::Stored(_), _) => Ok(()),
            (other, _) => Err(self.unexpected(node, &other)),
        }
    }

    /// Removes the manifest of `id` from `node`.
    pub async fn manifest_delete(
        &self,
        node: &NodeInfo,
        id: &DocumentId,
    ) -> Result<DeleteOutcome, ClientError> {
        match self
            .call(node, &Request::DeleteManifest { id: *id }, None)
            .await?
        {
            (Response::Deleted(outcome), _) => Ok(outcome),
            (other, _) => Err(self.unexpected(node, &other)),
        }
    }

    /// What `node` stores.
    pub async fn usage(&self, node: &NodeInfo) -> Result<Usage, ClientError> {
        match self.call(node, &Request::Usage, None).await? {
            (Response::Usage(usage), _) => Ok(usage),
            (other, _) => Err(self.unexpected(node, &other)),
        }
    }

    /// Asks `node` to re-hash one page of its shards (quarantining corrupt ones).
    pub async fn scrub_page(
        &self,
        node: &NodeInfo,
        after: Option<ShardId>,
        limit: u32,
    ) -> Result<ScrubPage, ClientError> {
        match self
            .call(node, &Request::Scrub { after, limit }, None)
            .await?
        {
            (Response::Scrubbed(page), _) => Ok(page),
            (other, _) => Err(self.unexpected(node, &other)),
        }
    }

    /// The cluster layout committed on the chain.
    pub async fn chain_layout(&self) -> Result<Layout, ClientError> {
        Ok(self.chain_layouts().await?.current)
    }

    /// The chain's current layout and the one before the last change.
    pub async fn chain_layouts(&self) -> Result<ChainLayouts, ClientError> {
        let chain = self.chain_link()?;
        let body = self
            .chain_query(chain, &Request::GetLayout)
            .await?
            .ok_or_else(|| ClientError::Chain("the validator has no layout".into()))?;
        postcard::from_bytes(&body).map_err(|e| ClientError::Chain(format!("layout: {e}")))
    }

    /// Up to `limit` registered document ids after `after`, in id order.
    pub async fn chain_documents(
        &self,
        after: Option<DocumentId>,
        limit: u32,
    ) -> Result<Vec<DocumentId>, ClientError> {
        let chain = self.chain_link()?;
        let body = self
            .chain_query(chain, &Request::ListDocuments { after, limit })
            .await?
            .ok_or_else(|| ClientError::Chain("the validator listed no documents".into()))?;
        postcard::from_bytes(&body).map_err(|e| ClientError::Chain(format!("document list: {e}")))
    }
}

struct StripeUpload {
    plain_len: u64,
    stored: usize,
    missing: Vec<(u64, usize, PublicId)>,
}

struct Hedged<T> {
    results: Vec<Option<T>>,
    failures: Vec<(usize, ClientError)>,
    untried: Vec<usize>,
}

impl<T> Hedged<T> {
    /// Every failure, for an error message.
    fn errors(&self) -> String {
        let all: Vec<String> = self.failures.iter().map(|(_, e)| e.to_string()).collect();
        all.join("; ")
    }
}

struct Fetched {
    shards: Vec<Option<Bytes>>,
    corrupt: Vec<(u64, usize, PublicId)>,
    errors: Vec<String>,
    untried: Vec<usize>,
}

fn join<T>(
    res: Option<Result<Result<T, ClientError>, tokio::task::JoinError>>,
) -> Result<T, ClientError> {
    match res {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(ClientError::Task(e.to_string())),
        None => Err(ClientError::Task("no upload in flight".into())),
    }
}

async fn read_checked_body(
    recv: &mut RecvStream,
    len: u64,
    max: u64,
) -> Result<Vec<u8>, ProtoError> {
    proto::check_body_len("body", len, max)?;
    proto::read_body(recv, len).await
}

fn node_id(node: &NodeInfo) -> PublicId {
    node.key
}
