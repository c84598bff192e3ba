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

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::chain::client::{CHAIN_QUERY_TIMEOUT, ChainClient, ChainError, ChainLink};
use crate::chain::tx::TxBody;
use crate::codec::{self, CodecError, DocumentInfo, EncodedStripe, StripeCodec};
use crate::crypto::DataKey;
use crate::grant::{GrantAddress, WrappedKey};
use crate::id::{DocumentId, ShardId};
use crate::identity::{Identity, PublicId};
use crate::manifest::{CodingParams, Manifest, ManifestError};
use crate::net::{Net, NetError, NetOptions};
use crate::placement::{Layout, NodeInfo, PlacementError};
use crate::proto::{self, ErrorCode, Opened, PutOutcome, Request, Response};
use crate::receipt::Receipt;
use crate::tls::TrustPolicy;

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
        let net = NetOptions::default();
        Self {
            bind: net.bind,
            params: CodingParams::default(),
            write_quorum: None,
            stripes_in_flight: 2,
            connect_timeout: net.connect_timeout,
            request_timeout: net.request_timeout,
            hedge_after: net.hedge_after,
            down_for: net.down_for,
            chain: None,
            chain_query_timeout: CHAIN_QUERY_TIMEOUT,
            unavailable_retry: net.unavailable_retry,
        }
    }
}

impl ClientOptions {
    /// The transport's part of these options.
    pub fn net(&self) -> NetOptions {
        NetOptions {
            bind: self.bind,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            hedge_after: self.hedge_after,
            down_for: self.down_for,
            unavailable_retry: self.unavailable_retry,
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
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
    #[error("registering {id}: {source}")]
    Register {
        id: DocumentId,
        #[source]
        source: Box<ChainError>,
    },
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
    #[error("{reader} holds no live grant on document {id}")]
    NotGranted { id: DocumentId, reader: PublicId },
    #[error(transparent)]
    Grant(#[from] crate::grant::GrantError),
    #[error("receipt: {0}")]
    Receipt(#[from] crate::receipt::ReceiptError),
    #[error("writing the document: {0}")]
    Write(#[source] std::io::Error),
    #[error("a background task failed: {0}")]
    Task(String),
}

impl ClientError {
    /// Whether the chain says `id` is not registered.
    pub fn is_not_registered(&self) -> bool {
        matches!(self, ClientError::Chain(ChainError::NotRegistered(_)))
    }
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

/// A document client of one cluster.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    net: Net,
    /// The chain documents are registered on and checked against, when linked.
    chain: Option<ChainClient>,
    layout: Layout,
    /// The layout before the current one while a rebalance runs: reads fall back to it.
    previous: Option<Layout>,
    options: ClientOptions,
    /// (connection, document) pairs opened for reading (`OpenDocument`).
    opened: Mutex<HashSet<(usize, DocumentId)>>,
}

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
        check_options(&options)?;
        let net = Net::new(identity, trust, options.net())?;
        Ok(Self::assemble(identity, net, layout, previous, options))
    }

    fn assemble(
        identity: &Identity,
        net: Net,
        layout: Layout,
        previous: Option<Layout>,
        options: ClientOptions,
    ) -> Self {
        let chain = options
            .chain
            .clone()
            .map(|link| ChainClient::new(net.clone(), identity, link, options.chain_query_timeout));
        Self {
            inner: Arc::new(Inner {
                identity: identity.clone(),
                net,
                chain,
                layout,
                previous,
                options,
                opened: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The transport this client's requests go over (for one-request calls: `net::storage`).
    pub fn net(&self) -> &Net {
        &self.inner.net
    }

    /// The chain this client registers on and checks against.
    pub fn chain(&self) -> Result<&ChainClient, ClientError> {
        self.inner
            .chain
            .as_ref()
            .ok_or(ClientError::Chain(ChainError::NoChain))
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
        check_options(&options)?;
        let net = Net::new(identity, trust, options.net())?;
        let Some(link) = options.chain.clone() else {
            return Ok(Self::assemble(identity, net, file_layout, None, options));
        };
        let chain = ChainClient::new(net.clone(), identity, link, options.chain_query_timeout);
        let (layout, previous) = match chain.layouts().await {
            Ok(l) if !l.current.nodes.is_empty() => (l.current, l.previous),
            Ok(_) => return Ok(Self::assemble(identity, net, file_layout, None, options)),
            // The chain will be needed again (registration, proofs) and say why then.
            Err(e) => {
                warn!(error = %e, "no layout from the chain; placing by the cluster file");
                return Ok(Self::assemble(identity, net, file_layout, None, options));
            }
        };
        // Reads fall back to the chain's previous layout during a change, or else to the
        // cluster file's, whichever differs from the current one.
        let previous = previous
            .filter(|p| *p != layout)
            .or(Some(file_layout).filter(|f| *f != layout));
        debug!(epoch = layout.epoch, "placing by the chain's layout");
        Ok(Self::assemble(identity, net, layout, previous, options))
    }

    /// Every peer of the current and the previous layout, each once (current first).
    pub fn all_nodes(&self) -> Vec<NodeInfo> {
        let mut nodes = self.inner.layout.nodes.clone();
        for n in self.inner.previous.iter().flat_map(|l| &l.nodes) {
            if !nodes.iter().any(|m| m.key == n.key) {
                nodes.push(n.clone());
            }
        }
        nodes
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
        self.inner.net.close().await;
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
        if let Some(chain) = &self.inner.chain {
            let start = Instant::now();
            let id = receipt.id;
            let registered = chain
                .submit(TxBody::RegisterDocument { document: id })
                .await;
            receipt.registered = Some(registered.map_err(|e| ClientError::Register {
                id,
                source: Box::new(e),
            })?);
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
        Ok(self.chain()?.submit(body).await?)
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
        Ok(self.chain()?.submit(body).await?)
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
        let record = match self.chain()?.check_registered(id).await {
            Err(ChainError::Refused(_)) => return Err(not_granted),
            other => other?,
        };
        let grant = record.live_grant(&me, crate::now_ms()).ok_or(not_granted)?;
        Ok(grant.wrapped.unwrap(id, &self.inner.identity)?)
    }

    /// An offline-verifiable receipt for `id`: its manifest and the proof of its
    /// registration, both checked here first.
    pub async fn receipt(&self, id: &DocumentId) -> Result<Receipt, ClientError> {
        let chain = self.chain()?;
        let validators = &chain.link().validators;
        let (_, registration) = chain.registration(id).await?;
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
        if receipt.verify(validators).is_err() {
            receipt.validator_changes = chain.validator_changes().await?;
            receipt
                .validator_changes
                .retain(|c| c.header.header.height < height);
            receipt.verify(validators)?;
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
                    .inner
                    .net
                    .call::<PutOutcome>(&node, &req, Some(&body))
                    .await;
                (slot, node, res)
            });
        }
        let mut stored = 0;
        let mut missing = Vec::new();
        let mut errors = Vec::new();
        while let Some((slot, node, res)) = writes.next().await {
            match res {
                Ok(_) => stored += 1,
                Err(e) => {
                    debug!(stripe = stripe.index, slot, error = %e, "shard write failed");
                    errors.push(e.to_string());
                    missing.push((stripe.index, slot, node.key));
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
                let res = self
                    .inner
                    .net
                    .call::<Vec<PutOutcome>>(&node, &req, Some(&body))
                    .await;
                (slot, with_manifest, node, res)
            });
        }
        let (mut stored, mut manifests) = (0, 0);
        let mut missing = Vec::new();
        let mut errors = Vec::new();
        while let Some((slot, with_manifest, node, res)) = writes.next().await {
            match (res, slot) {
                (Ok(_), slot) => {
                    stored += usize::from(slot.is_some());
                    manifests += usize::from(with_manifest);
                }
                (Err(e), Some(slot)) => {
                    debug!(stripe = 0, slot, error = %e, "shard write failed");
                    errors.push(e.to_string());
                    missing.push((0, slot, node.key));
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
        let net = &self.inner.net;
        let hedged = net
            .hedged(&nodes, order, replicas, |node, _| {
                let bytes = bytes.clone();
                async move { net.manifest_put(&node, &id, &bytes).await }
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
        let net = &self.inner.net;
        let hedged = net
            .hedged_retrying(&nodes, order, 1, |node, _| async move {
                net.manifest_get(&node, id)
                    .await?
                    .ok_or_else(|| net.unexpected(&node, Response::NotFound))
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
        if let Some(chain) = &self.inner.chain {
            chain.check_registered(id).await?;
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
                    corrupt.extend(stripe.corrupt.iter().map(|&s| (index, s, nodes[s].key)));
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
        let net = &self.inner.net;
        let hedged = net
            .hedged_retrying(nodes, order, want, |node, slot| {
                let req = Request::GetShard { id: ids[slot] };
                async move {
                    self.open_document(&node, reading).await?;
                    match net.fetch(&node, &req, None, proto::MAX_SHARD_BODY).await? {
                        Some(body) => Ok(Bytes::from(body)),
                        None => Err(net.unexpected(&node, Response::NotFound)),
                    }
                }
            })
            .await;
        let mut corrupt = Vec::new();
        let mut errors = Vec::new();
        for (slot, e) in hedged.failures {
            if e.remote_code() == Some(ErrorCode::Corrupt) {
                corrupt.push((index, slot, nodes[slot].key));
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
    ) -> Result<(), NetError> {
        self.open_document(node, &Reading { id, manifest }).await
    }

    /// Opens `reading` on the connection to `node`, unless it already is.
    async fn open_document(&self, node: &NodeInfo, reading: &Reading) -> Result<(), NetError> {
        let conn = self.inner.net.connection(node).await?;
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
        let net = &self.inner.net;
        net.call::<Opened>(node, &req, Some(&reading.manifest))
            .await?;
        let mut opened = self.inner.opened.lock().expect("opened lock");
        if opened.len() >= MAX_OPENED {
            opened.clear();
        }
        opened.insert(key);
        Ok(())
    }
}

struct StripeUpload {
    plain_len: u64,
    stored: usize,
    missing: Vec<(u64, usize, PublicId)>,
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

/// Checks what [`ClientOptions`] alone can be wrong about.
fn check_options(options: &ClientOptions) -> Result<(), ClientError> {
    options.params.validate()?;
    let width = options.params.width();
    match options.write_quorum {
        Some(q) if q < usize::from(options.params.k) || q > width => {
            Err(ClientError::Quorum { quorum: q, width })
        }
        _ => Ok(()),
    }
}
