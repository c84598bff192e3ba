//! The client side of the store: put a document into the cluster, get it back by id.
//!
//! put: the plaintext streams through the codec on the blocking pool; each coded stripe is
//! placed on k + m distinct peers (`placement`) and its shards upload in parallel, with at
//! most `stripes_in_flight` stripes between the encoder and the peers (backpressure, bounded
//! memory). A shard whose placed peer fails goes to a stand-in (`Layout::standins`), so a
//! stripe counts as stored once `write_quorum` shards (all k + m by default) have been
//! acknowledged durable on at least k + 1 distinct peers; the manifest goes, while the last
//! stripes finish, to the peers its document id places it on. A put that fails midway is never registered, so no partial document can be
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

mod approvals;
mod get;
mod put;
mod records;
mod sealed;

pub use approvals::{ProposalTerms, Proposed};
pub use put::StoredPiece;
pub use sealed::{SEALED_MAGIC, SealedDocument};

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
use crate::codec::{self, CodecError, DocumentInfo, EncodedStripe, SealedPiece, StripeCodec};
use crate::crypto::DataKey;
use crate::delegation::Delegation;
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
    /// Durable shard acknowledgements needed per stripe, stand-ins counted; `None` means
    /// all k + m. Never on fewer than `min(k + 1, quorum)` distinct peers.
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
    /// `corrupt`: how many of the shards found failed verification (on the peer or here):
    /// with none, the stripe is only unreachable.
    #[error(
        "stripe {stripe}: fewer than {k} intact shards could be fetched ({corrupt} found \
         corrupt); unreachable or failing: {errors}"
    )]
    StripeUnavailable {
        stripe: u64,
        k: usize,
        corrupt: usize,
        errors: String,
    },
    #[error("{reader} holds no live grant on document {id}")]
    NotGranted { id: DocumentId, reader: PublicId },
    #[error("the read of document {id} was refused: {reason}")]
    Refused { id: DocumentId, reason: String },
    #[error(transparent)]
    Grant(#[from] crate::grant::GrantError),
    #[error("receipt: {0}")]
    Receipt(#[from] crate::receipt::ReceiptError),
    #[error("writing the document: {0}")]
    Write(#[source] std::io::Error),
    #[error("a background task failed: {0}")]
    Task(String),
    #[error(
        "stripe {stripe}: its shards reached only {peers} distinct peers, {needed} needed so \
         that losing one more peer loses nothing ({errors})"
    )]
    TooFewPeers {
        stripe: u64,
        peers: usize,
        needed: usize,
        errors: String,
    },
    #[error("a piece was coded with {piece:?}, this client codes with {client:?}")]
    PieceParams {
        piece: CodingParams,
        client: CodingParams,
    },
    #[error("there is no document type {0:?} on the chain")]
    NoSuchType(String),
    #[error(transparent)]
    Records(#[from] crate::chain::records::RecordsError),
    #[error("the metadata of {0} does not open with this key")]
    MetaSealed(DocumentId),
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
    /// (stripe, slot, stand-in) of shards written to a stand-in because their placed peer
    /// failed (`Layout::standins`); repair brings them home.
    pub shards_standing_in: Vec<(u64, usize, PublicId)>,
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
    /// (connection, document, citizen of a delegated read) opened for reading
    /// (`OpenDocument`, `OpenDelegated`).
    opened: Mutex<HashSet<(usize, DocumentId, Option<PublicId>)>>,
}

/// Most (connection, document) pairs a client remembers as opened; past it, it forgets them
/// all and opens again as needed.
const MAX_OPENED: usize = 4096;

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
        let chain = Self::chain_of(identity, &net, &options);
        Ok(Self::assemble(
            identity,
            net,
            chain,
            (layout, previous),
            options,
        ))
    }

    /// The chain client `options` link to, over `net`, if any.
    fn chain_of(identity: &Identity, net: &Net, options: &ClientOptions) -> Option<ChainClient> {
        options
            .chain
            .clone()
            .map(|link| ChainClient::new(net.clone(), identity, link, options.chain_query_timeout))
    }

    fn assemble(
        identity: &Identity,
        net: Net,
        chain: Option<ChainClient>,
        placing: (Layout, Option<Layout>),
        options: ClientOptions,
    ) -> Self {
        let (layout, previous) = placing;
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
        // One chain client serves both the layout question and the client's later calls.
        let Some(chain) = Self::chain_of(identity, &net, &options) else {
            return Ok(Self::assemble(
                identity,
                net,
                None,
                (file_layout, None),
                options,
            ));
        };
        let (layout, previous) = match chain.layouts().await {
            Ok(l) if !l.current.nodes.is_empty() => (l.current, l.previous),
            Ok(_) => {
                let placing = (file_layout, None);
                return Ok(Self::assemble(identity, net, Some(chain), placing, options));
            }
            // The chain will be needed again (registration, proofs) and say why then.
            Err(e) => {
                warn!(error = %e, "no layout from the chain; placing by the cluster file");
                let placing = (file_layout, None);
                return Ok(Self::assemble(identity, net, Some(chain), placing, options));
            }
        };
        // Reads fall back to the chain's previous layout during a change, or else to the
        // cluster file's, whichever differs from the current one.
        let previous = previous
            .filter(|p| *p != layout)
            .or(Some(file_layout).filter(|f| *f != layout));
        debug!(epoch = layout.epoch, "placing by the chain's layout");
        Ok(Self::assemble(
            identity,
            net,
            Some(chain),
            (layout, previous),
            options,
        ))
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

    /// A secret derived from this client's key for `context` (`Identity::derive_secret`).
    pub(crate) fn derive_secret(
        &self,
        context: &str,
    ) -> Result<[u8; 32], crate::identity::IdentityError> {
        self.inner.identity.derive_secret(context)
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.inner.net.close().await;
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
        let (_, registration) = chain.registration(id).await?;
        let manifest = self.manifest(id).await?;
        self.receipt_of(*id, manifest.encode(), registration).await
    }

    /// The receipt of document `id` from its manifest and verified registration, with the
    /// validator set changes before it if the set changed; checked here.
    async fn receipt_of(
        &self,
        id: DocumentId,
        manifest: Vec<u8>,
        registration: crate::chain::block::TxInclusion,
    ) -> Result<Receipt, ClientError> {
        let chain = self.chain()?;
        let validators = &chain.link().validators;
        let height = registration.header.header.height;
        let mut receipt = Receipt {
            document: id,
            manifest,
            registration,
            validator_changes: Vec::new(),
            checkpoint: None,
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
}

impl Client {
    /// [`Client::receipt`] with the signed checkpoint that covers the registration
    /// (receipt format 3), and the headers and set changes up to it; `None` while no
    /// checkpoint covers it yet. Checked here.
    pub async fn receipt_with_checkpoint(
        &self,
        id: &DocumentId,
    ) -> Result<Option<Receipt>, ClientError> {
        let chain = self.chain()?;
        let mut receipt = self.receipt(id).await?;
        let height = receipt.registration.header.header.height;
        let Some((stored, checkpoint)) = chain.checkpoint(Some(height), true).await? else {
            return Ok(None);
        };
        let mut headers = Vec::new();
        for h in height + 1..=checkpoint.height {
            let block = chain
                .block(h)
                .await?
                .ok_or(ChainError::Missing("a block under a checkpoint"))?;
            headers.push(block.header.header);
        }
        receipt.validator_changes = chain.validator_changes().await?;
        receipt
            .validator_changes
            .retain(|c| c.header.header.height < checkpoint.height);
        receipt.checkpoint = Some(crate::receipt::ReceiptCheckpoint {
            note: stored.note,
            headers,
            token: stored.token,
        });
        receipt.verify(&chain.link().validators)?;
        Ok(Some(receipt))
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
