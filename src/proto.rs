//! The one wire protocol between clients and storage peers (and, later, peer to peer).
//!
//! Goals: be paranoid about untrusted bytes; keep every limit in one place; never let a
//! frame make the receiver allocate more than the limit says.
//!
//! Transport: QUIC with mutual TLS (`tls`), ALPN [`crate::tls::ALPN`] (`dangan/1`), one
//! bidirectional stream per request. Each side writes one header frame — a 4-byte
//! little-endian length, then a postcard-encoded [`Request`] or [`Response`] — followed, for
//! requests and responses that carry a body, by exactly the announced number of raw body
//! bytes, then finishes its send side. Header frames are at most [`MAX_FRAME`] bytes; shard
//! bodies at most [`MAX_SHARD_BODY`], manifest bodies at most [`MAX_MANIFEST_BODY`], checked
//! before anything is allocated.
//!
//! Non-goals: request pipelining on one stream, compression (shards are ciphertext).

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::id::{DocumentId, ShardId};
use crate::manifest::{MAX_MANIFEST_BYTES, MAX_SHARD_LEN};

/// Largest header frame, in bytes (a list of 1,000 shard ids fits easily).
pub const MAX_FRAME: usize = 64 << 10;
/// Largest shard body accepted.
pub const MAX_SHARD_BODY: u64 = MAX_SHARD_LEN;
/// Largest chain transaction body accepted, and so the largest encoded transaction the
/// chain takes (`chain::tx::MAX_TX_BYTES` is this number).
pub const MAX_TX_BODY: u64 = 64 << 10;
/// Largest chain record (block, proof, status) accepted by a client.
pub const MAX_CHAIN_BODY: u64 = 64 << 20;
/// Largest manifest body accepted.
pub const MAX_MANIFEST_BODY: u64 = MAX_MANIFEST_BYTES as u64;
/// Most ids one `ListShards` answer carries.
pub const MAX_LIST: u32 = 1000;
/// Most shards one `Scrub` request re-hashes (each up to [`MAX_SHARD_BODY`]).
pub const MAX_SCRUB: u32 = 64;

/// What a client asks of a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Store a shard; `len` body bytes follow. Answered `Stored` once durable. The reference
    /// it adds belongs to `document`, or, with `None` (a document whose id is not known yet),
    /// to the sending key until a [`Request::BindShards`] gives it to the document
    /// (`store`: references belong to documents).
    PutShard {
        id: ShardId,
        len: u64,
        document: Option<DocumentId>,
    },
    /// Fetch a shard: answered `Shard { len }` and the body, or `NotFound`.
    GetShard {
        id: ShardId,
    },
    /// Whether the peer holds the shard: with `document`, whether that document holds a
    /// reference to it here.
    HasShard {
        id: ShardId,
        document: Option<DocumentId>,
    },
    /// Drop `document`'s reference to a shard (the body goes with its last reference);
    /// `Deleted(NotFound)` if that document holds none here.
    DeleteShard {
        id: ShardId,
        document: DocumentId,
    },
    /// Shard ids in order, after `after`, at most `limit` (capped at [`MAX_LIST`]).
    ListShards {
        after: Option<ShardId>,
        limit: u32,
    },
    Usage,
    /// Store a document's manifest; `len` body bytes follow.
    PutManifest {
        id: DocumentId,
        len: u64,
    },
    /// Fetch a manifest: answered `Manifest { len }` and the body, or `NotFound`.
    GetManifest {
        id: DocumentId,
    },
    Ping,
    /// Submit a signed chain transaction (`len` body bytes follow) to a validator; answered
    /// `Committed` once its block is durable, or `Error { Refused, reason }`.
    SubmitTx {
        len: u64,
    },
    /// A registered document's record and inclusion proof: `ChainBody` with the postcard
    /// bytes of `(DocumentRecord, TxInclusion)`, or `NotFound`.
    GetDocument {
        id: DocumentId,
    },
    /// A block by height: `ChainBody` with the postcard bytes of the `Block`, or `NotFound`.
    GetBlock {
        height: u64,
    },
    /// The chain's status: `ChainBody` with the postcard bytes of `ChainStatus`.
    ChainStatus,
    /// An account (role, last nonce): `ChainBody` with the postcard bytes of `Account`, or
    /// `NotFound`.
    GetAccount {
        id: crate::identity::PublicId,
    },
    /// A committed transaction with its proof: `ChainBody` with the postcard bytes of a
    /// `TxInclusion`, or `NotFound`.
    GetTx {
        id: [u8; 32],
    },
    /// Remove a stored manifest (rebalance moves manifests too): `Deleted`.
    DeleteManifest {
        id: DocumentId,
    },
    /// Re-hash up to `limit` (capped at [`MAX_SCRUB`]) stored shards after `after`,
    /// quarantining corrupt ones for repair: `Scrubbed`.
    Scrub {
        after: Option<ShardId>,
        limit: u32,
    },
    /// The chain's current and previous cluster layouts: `ChainBody` with the postcard
    /// bytes of a `ChainLayouts`.
    GetLayout,
    /// Registered document ids after `after`, at most `limit` (capped at [`MAX_LIST`]):
    /// `ChainBody` with the postcard bytes of a `Vec<DocumentId>`.
    ListDocuments {
        after: Option<DocumentId>,
        limit: u32,
    },
    /// Validator to validator: a consensus message (`len` body bytes of its postcard
    /// encoding follow); answered `ChainBody` with the postcard bytes of the result.
    /// Refused unless the caller hosts a validator.
    Raft {
        kind: RaftKind,
        len: u64,
    },
    /// Validator to validator: the leader's proposed block (`len` body bytes, postcard
    /// `Block`); answered `ChainBody` with the postcard bytes of the endorser's
    /// `Result<(PublicId, Signature), String>`: its header signature once it applied the
    /// block on its own state and reached the same state root.
    Endorse {
        len: u64,
    },
    /// Opens a document for reading its shards on this connection: `len` body bytes of its
    /// canonical manifest follow (at most [`MAX_MANIFEST_BODY`]). The peer checks that the
    /// caller may read `document` now (`access`), that the bytes hash to it and decode, and
    /// answers `Opened`; `GetShard` on this connection then serves that manifest's shards
    /// (to a reader who is not an operator, nothing else). A connection
    /// keeps at most [`MAX_OPEN_DOCUMENTS`] documents open (the oldest is closed first).
    OpenDocument {
        document: DocumentId,
        len: u64,
    },
    /// A registered document's record alone (owner, grants), without the proof that
    /// `GetDocument` computes: `ChainBody` with the postcard bytes of a `DocumentRecord`, or
    /// `NotFound`. What peers ask to authorise reads.
    GetRecord {
        id: DocumentId,
    },
    /// This peer's records of reads of `document` after record `after` (at most
    /// [`MAX_AUDIT_PAGE`]), each with its Merkle proof against the `AuditRoot` committed on
    /// chain that covers it (none yet: pending): `ChainBody` with the postcard bytes of an
    /// `audit::AuditPage`. Only for the document's owner and operators.
    GetAudit {
        document: DocumentId,
        after: Option<u64>,
    },
    /// Store a small document's pieces held by this peer in one request: each of `shards`
    /// (id, body length), then the `manifest` if set (document id, body length); the bodies
    /// follow in that order, at most [`MAX_PUT_MANY`] shards and [`MAX_PUT_MANY_BODY`]
    /// bytes in all. Every body is checked against its id before anything is kept; answered
    /// `StoredMany` (one outcome per shard, then the manifest's) once all are durable.
    /// Every shard's reference belongs to `document`.
    PutMany {
        shards: Vec<(ShardId, u64)>,
        manifest: Option<(DocumentId, u64)>,
        document: DocumentId,
    },
    /// Every validator set change of the chain, in order: `ChainBody` with the postcard
    /// bytes of a `Vec<TxInclusion>` (see `chain::validators`).
    GetValidatorChanges,
    /// Gives `document` the references the sending key's `PutShard`s without a document
    /// hold to `shards` here (at most [`MAX_BIND`]): one upload reference per shard becomes
    /// the document's, once. Answered `Bound` with how many were bound.
    BindShards {
        document: DocumentId,
        shards: Vec<ShardId>,
    },
    /// Whether `document` holds a reference to shard `id` here AND its stored body re-hashes
    /// to `id`: `Has(true)`; `Has(false)` without the reference; `Error { Corrupt }` when the
    /// body is corrupt or missing. What a rebalance asks before deleting the old copy
    /// (`HasShard` only looks at the rows).
    VerifyShard {
        id: ShardId,
        document: DocumentId,
    },
    /// References and manifests this peer last added before `before_ms` (ms since the
    /// epoch), after `after`, looking at `limit` (capped at [`MAX_LIST`]) rows at most:
    /// `StalePage`. For operators (`ops::collect`).
    ListStale {
        after: Option<StaleEntry>,
        before_ms: u64,
        limit: u32,
    },
    /// Drop `entry` if it is still older than `before_ms` and, when it names a document (a
    /// document's reference, a manifest), the chain proves that document is not registered:
    /// `Deleted`. A peer that cannot get that proof keeps it (`Unavailable`); a registered
    /// document's is kept (`Refused`). For operators (`ops::collect`).
    CollectStale {
        entry: StaleEntry,
        before_ms: u64,
    },
    /// A gateway opens a document for reading its shards on behalf of a citizen, under the
    /// citizen's signed `delegation` (`delegation`): `len` body bytes of the canonical
    /// manifest of `delegation.document` follow (at most [`MAX_MANIFEST_BODY`]). The peer
    /// checks the delegation (signed for this chain, not expired, naming the caller's TLS
    /// identity as the gateway) and that the citizen holds a live grant now (`access`), then
    /// answers `Opened`; `GetDelegatedShard` naming that citizen then serves the manifest's
    /// shards on this connection, each read recorded as the citizen's via the gateway.
    OpenDelegated {
        delegation: crate::delegation::Delegation,
        len: u64,
    },
    /// A shard of `document`, opened on this connection with `OpenDelegated` for `citizen`:
    /// `Shard { len }` and the body, or `NotFound`; refused once the delegation expired or
    /// the grant is no longer live.
    GetDelegatedShard {
        id: ShardId,
        document: DocumentId,
        citizen: crate::identity::PublicId,
    },
    /// The manifest of `delegation.document` under the delegation (checked as for
    /// `OpenDelegated`): `Manifest { len }` and the body, or `NotFound`.
    GetDelegatedManifest {
        delegation: crate::delegation::Delegation,
    },
    /// As `GetDocument` for `delegation.document`, under the delegation (checked as for
    /// `OpenDelegated`), the record showing the citizen's grant alone: what a gateway needs
    /// to hand the citizen its wrapped key and receipt.
    GetDelegatedDocument {
        delegation: crate::delegation::Delegation,
    },
    /// Documents with a live grant to `grantee` after `after`, found by a scan of the
    /// records: `ChainBody` with the postcard bytes of a `chain::proof::ProvenGranted`. The
    /// caller sees the records it may (`access::ChainScope`): its own whole, the grant to
    /// itself alone, nothing of others. For departments, operators, validators and the
    /// grantee itself.
    ListGranted {
        grantee: crate::identity::PublicId,
        after: Option<DocumentId>,
    },
    /// A bucket's record (`chain::names`): `ChainBody` with the postcard bytes of a
    /// `BucketRecord`, or `NotFound`. For the consortium's members.
    GetBucket {
        bucket: String,
    },
    /// The caller's own buckets: `ChainBody` with the postcard bytes of a
    /// `Vec<BucketRecord>`. For departments.
    ListBuckets,
    /// A name bound in a bucket: `ChainBody` with the postcard bytes of a `NameRecord`, or
    /// `NotFound`. Only for the bucket's owner (and validator hosts).
    GetName {
        bucket: String,
        key: String,
    },
    /// A page of a bucket's names (`Names::list`: prefix, delimiter, from `from` on, at
    /// most `limit`, capped at `MAX_NAME_PAGE`): `ChainBody` with the postcard bytes of a
    /// `NamePage`, or `NotFound` without the bucket. Only for the bucket's owner.
    ListNames {
        bucket: String,
        prefix: String,
        delimiter: Option<String>,
        from: Vec<u8>,
        limit: u32,
    },
    /// This node's figures, the same its metrics expose (`peer::status`): answered
    /// `NodeStatus`. For operators (`dangan cluster status`).
    NodeStatus,
    /// A workflow's proposal (`chain::workflow`, by its id's bytes) with its answers and outcome:
    /// `ChainBody` with the postcard bytes of a `chain::proof::ProvenProposal` (its absence
    /// proven too). For the consortium's members.
    GetProposal {
        id: [u8; 32],
    },
    /// The proposals open now that name the caller as an approver and that it has not
    /// answered, after `after` (at most `workflow::MAX_PROPOSAL_PAGE`): `ChainBody` with
    /// the postcard bytes of a `Vec<ProposalId>` (no proof: each is proven by
    /// `GetProposal`). For departments and operators.
    ListProposals {
        after: Option<[u8; 32]>,
    },
    /// The proposal `document` waits for, to be registered: `ChainBody` with the postcard
    /// bytes of a `chain::proof::ProvenAwaiting` (its absence proven too). What a peer asks
    /// before collecting an unregistered document's bytes. Open to every key (as
    /// `GetRecord`).
    GetAwaiting {
        document: DocumentId,
    },
    /// Validator to validator: the hosted validator's signature of the checkpoint of block
    /// `height` (`chain::checkpoint`), which it builds from its own store: `ChainBody` with
    /// the postcard bytes of a `CheckpointSignature`, or `NotFound` before it applied the
    /// block. Refused unless the caller hosts a validator.
    SignCheckpoint {
        height: u64,
    },
    /// The signed checkpoint kept at `height` (with `None`, the latest; with `covering`, the
    /// first at or above `height`): `ChainBody` with the postcard bytes of a
    /// `StoredCheckpoint` (note, anchor answers, timestamp token), or `NotFound`.
    GetCheckpoint {
        height: Option<u64>,
        covering: bool,
    },
    /// A document type's version (the current one without `version`): `ChainBody` with the
    /// postcard bytes of a `chain::proof::ProvenType` (its absence proven too). Types are
    /// public: for every authenticated key.
    GetType {
        name: String,
        version: Option<u32>,
    },
    /// The current version of every document type: `ChainBody` with the postcard bytes of
    /// a `Vec<chain::records::TypeRecord>` (no proof: each is proven with `GetType`).
    ListTypes,
    /// A document's record entry (type, retention, holds; `chain::records`):
    /// `ChainBody` with the postcard bytes of a `chain::proof::ProvenRecordEntry`. Public,
    /// as the type and retention are; the metadata in it is sealed.
    GetRecordEntry {
        id: DocumentId,
    },
}

impl Request {
    /// The request's kind, snake case (a metrics label: never anything it carries).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::PutShard { .. } => "put_shard",
            Request::GetShard { .. } => "get_shard",
            Request::HasShard { .. } => "has_shard",
            Request::DeleteShard { .. } => "delete_shard",
            Request::ListShards { .. } => "list_shards",
            Request::Usage => "usage",
            Request::PutManifest { .. } => "put_manifest",
            Request::GetManifest { .. } => "get_manifest",
            Request::Ping => "ping",
            Request::SubmitTx { .. } => "submit_tx",
            Request::GetDocument { .. } => "get_document",
            Request::GetBlock { .. } => "get_block",
            Request::ChainStatus => "chain_status",
            Request::GetAccount { .. } => "get_account",
            Request::GetTx { .. } => "get_tx",
            Request::DeleteManifest { .. } => "delete_manifest",
            Request::Scrub { .. } => "scrub",
            Request::GetLayout => "get_layout",
            Request::ListDocuments { .. } => "list_documents",
            Request::Raft { .. } => "raft",
            Request::Endorse { .. } => "endorse",
            Request::OpenDocument { .. } => "open_document",
            Request::GetRecord { .. } => "get_record",
            Request::GetAudit { .. } => "get_audit",
            Request::PutMany { .. } => "put_many",
            Request::GetValidatorChanges => "get_validator_changes",
            Request::BindShards { .. } => "bind_shards",
            Request::VerifyShard { .. } => "verify_shard",
            Request::ListStale { .. } => "list_stale",
            Request::CollectStale { .. } => "collect_stale",
            Request::OpenDelegated { .. } => "open_delegated",
            Request::GetDelegatedShard { .. } => "get_delegated_shard",
            Request::GetDelegatedManifest { .. } => "get_delegated_manifest",
            Request::GetDelegatedDocument { .. } => "get_delegated_document",
            Request::ListGranted { .. } => "list_granted",
            Request::GetBucket { .. } => "get_bucket",
            Request::ListBuckets => "list_buckets",
            Request::GetName { .. } => "get_name",
            Request::ListNames { .. } => "list_names",
            Request::NodeStatus => "node_status",
            Request::GetProposal { .. } => "get_proposal",
            Request::ListProposals { .. } => "list_proposals",
            Request::GetAwaiting { .. } => "get_awaiting",
            Request::SignCheckpoint { .. } => "sign_checkpoint",
            Request::GetCheckpoint { .. } => "get_checkpoint",
            Request::GetType { .. } => "get_type",
            Request::ListTypes => "list_types",
            Request::GetRecordEntry { .. } => "get_record_entry",
        }
    }
}

/// Most shard ids one [`Request::BindShards`] carries (a frame holds them easily).
pub const MAX_BIND: usize = 1000;

/// Most read records one `GetAudit` answer carries.
pub const MAX_AUDIT_PAGE: u32 = 1024;

/// Most shards one [`Request::PutMany`] carries.
pub const MAX_PUT_MANY: usize = 16;
/// Most body bytes one [`Request::PutMany`] carries (a certificate's are tens of KiB).
pub const MAX_PUT_MANY_BODY: u64 = 1 << 20;

/// Documents one connection keeps open for reading at once (see [`Request::OpenDocument`]).
pub const MAX_OPEN_DOCUMENTS: usize = 16;

/// Which consensus message a [`Request::Raft`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// What a peer answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Stored(PutOutcome),
    /// `len` body bytes follow.
    Shard {
        len: u64,
    },
    /// `len` body bytes follow.
    Manifest {
        len: u64,
    },
    NotFound,
    Has(bool),
    Deleted(DeleteOutcome),
    List(Vec<ShardId>),
    Usage(Usage),
    Pong,
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The transaction is in block `height` at `index`, durably.
    Committed {
        height: u64,
        index: u32,
    },
    /// `len` body bytes of a chain record follow (see the request).
    ChainBody {
        len: u64,
    },
    /// One page of a scrub.
    Scrubbed(ScrubPage),
    /// The document is open for reading on this connection: its `shards` distinct shard ids.
    Opened {
        shards: u32,
    },
    /// Every piece of a `PutMany` is durable: one outcome per shard, then the manifest's.
    StoredMany(Vec<PutOutcome>),
    /// This validator is not the chain's leader: submit to the leader's host instead (one
    /// hop less than being forwarded, and the leader checks the transaction once).
    Leader(crate::placement::NodeInfo),
    /// The answer to `BindShards`: how many upload references became the document's.
    Bound(u32),
    /// The answer to `ListStale`.
    StalePage(StalePage),
    /// The answer to `NodeStatus`.
    NodeStatus(NodeStatus),
}

/// A node's figures (the answer to `NodeStatus`): what its metrics expose as gauges, read
/// from the same source (`peer::status`), so the two cannot disagree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Unique shards held and their bytes (`Usage`).
    pub shards: u64,
    pub bytes: u64,
    /// Read records not yet covered by a root committed on chain (`audit`).
    pub audit_pending: u64,
    /// Why the node does not serve now (`/readyz`'s reason); `None`: ready.
    pub not_ready: Option<String>,
    /// The validator this node hosts, if any.
    pub validator: Option<ValidatorStatus>,
}

/// A hosted validator's place in the chain (from its ledger and openraft's metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorStatus {
    /// Height of the last block applied here.
    pub height: u64,
    pub role: RaftRole,
    /// Raft's current term.
    pub term: u64,
}

/// A validator's raft role (openraft's `ServerState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftRole {
    Learner,
    Follower,
    Candidate,
    Leader,
    Shutdown,
}

impl RaftRole {
    /// Every role, in the order of the variants.
    pub const ALL: [RaftRole; 5] = [
        RaftRole::Learner,
        RaftRole::Follower,
        RaftRole::Candidate,
        RaftRole::Leader,
        RaftRole::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RaftRole::Learner => "learner",
            RaftRole::Follower => "follower",
            RaftRole::Candidate => "candidate",
            RaftRole::Leader => "leader",
            RaftRole::Shutdown => "shutdown",
        }
    }
}

/// Who holds a reference, as the wire carries it (`store::Holder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StaleHolder {
    Document(DocumentId),
    Upload(crate::identity::PublicId),
}

/// A reference or manifest that may be an orphan (`store::Stale`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StaleEntry {
    Reference { shard: ShardId, holder: StaleHolder },
    Manifest(DocumentId),
}

/// One page of `ListStale`: the entries older than the cutoff, and the last row looked at
/// (pass it as `after` for the next page; `None` at the end).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StalePage {
    pub stale: Vec<StaleEntry>,
    pub last: Option<StaleEntry>,
}

/// What a put did (the answer to `PutShard`, `PutManifest` and each piece of `PutMany`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutOutcome {
    /// The bytes were not here before and are now durable.
    Stored,
    /// The bytes were already here; the put's reference was added if it was not there
    /// (shards), or nothing changed (records).
    AlreadyPresent,
}

/// What a delete did (the answer to `DeleteShard` and `DeleteManifest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteOutcome {
    /// The last reference went away; row and body are gone.
    Removed,
    /// The document's reference went; other documents keep the shard.
    Decremented,
    /// No such shard, or (a shard) no reference of the document named.
    NotFound,
}

/// What one page of a scrub found (the answer to `Scrub`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubPage {
    /// Shards re-hashed.
    pub checked: u32,
    /// Bytes of the shards that verified.
    pub bytes: u64,
    /// Shards that did not verify; they were quarantined (removed) for repair.
    pub corrupt: Vec<ShardId>,
    /// The last id of the page: pass it as `after` for the next page; `None` at the end.
    pub last: Option<ShardId>,
}

/// Unique shards a peer holds and their logical size (each body counted once, whatever its
/// refcount): the answer to `Usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub shards: u64,
    pub bytes: u64,
}

/// Why a peer refused a request. Also used as the QUIC application close/stop code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u32)]
pub enum ErrorCode {
    /// The request frame did not decode (unknown request, garbage, wrong version).
    Malformed = 1,
    /// A frame or body over its limit.
    TooLarge = 2,
    /// The body does not hash to the id it was sent under.
    HashMismatch = 3,
    /// The stored copy is corrupt; it was not served and is reported for repair.
    Corrupt = 4,
    /// The peer is at its concurrency limit; try another peer or later.
    Busy = 5,
    /// The request took longer than the peer allows.
    Timeout = 6,
    /// The peer failed internally (disk error); its log says why.
    Internal = 7,
    /// A chain transaction was refused, or the caller may not do what it asked (no role,
    /// no live grant): the message says why. Nothing changed and no document bytes were
    /// sent.
    Refused = 8,
    /// This peer runs no validator.
    NotValidator = 9,
    /// The chain has no leader at the moment (an election is under way), or this validator
    /// cannot reach it or is behind it; or a storage peer cannot check access now (the
    /// chain unreachable or too slow to answer), or cannot record a read in its audit log
    /// (`audit`: fail closed): ask another, or again shortly. Nothing changed and no
    /// document bytes were sent.
    Unavailable = 10,
}

impl ErrorCode {
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    #[error("connection or stream failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the other side closed the stream early")]
    Closed,
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("peer refused the request ({code:?}): {message}")]
    Remote { code: ErrorCode, message: String },
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

impl ProtoError {
    /// Whether this error means the request could not be delivered or answered (as opposed
    /// to a definite answer from the peer).
    pub fn is_transport(&self) -> bool {
        matches!(self, ProtoError::Io(_) | ProtoError::Closed)
    }
}

/// Encodes a header frame: length prefix and postcard bytes.
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = postcard::to_allocvec(msg).expect("encoding a frame into memory cannot fail");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    w.write_all(&encode_frame(msg)).await?;
    Ok(())
}

fn map_eof(e: std::io::Error) -> ProtoError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProtoError::Closed
    } else {
        ProtoError::Io(e)
    }
}

/// Reads one header frame, refusing lengths over [`MAX_FRAME`] before allocating.
pub async fn read_frame<R, T>(r: &mut R) -> Result<T, ProtoError>
where
    R: AsyncRead + Unpin,
    T: for<'de> Deserialize<'de>,
{
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(map_eof)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge {
            what: "frame",
            len: len as u64,
            max: MAX_FRAME as u64,
        });
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await.map_err(map_eof)?;
    decode_frame(&buf)
}

/// Decodes a header frame's body; trailing bytes are refused.
pub fn decode_frame<T: for<'de> Deserialize<'de>>(buf: &[u8]) -> Result<T, ProtoError> {
    let (msg, rest) =
        postcard::take_from_bytes(buf).map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtoError::Malformed(format!(
            "{} trailing bytes after the frame",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Checks an announced body length against its limit.
pub fn check_body_len(what: &'static str, len: u64, max: u64) -> Result<(), ProtoError> {
    if len > max {
        return Err(ProtoError::TooLarge { what, len, max });
    }
    Ok(())
}

/// Reads exactly `len` body bytes (already checked against its limit). The buffer grows as
/// bytes arrive: a body announced and never sent costs the reader [`BODY_START`] bytes,
/// not its announced length.
pub async fn read_body<R>(r: &mut R, len: u64) -> Result<Vec<u8>, ProtoError>
where
    R: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(len.min(BODY_START) as usize);
    let read = r.take(len).read_to_end(&mut buf).await.map_err(map_eof)?;
    if (read as u64) < len {
        return Err(ProtoError::Closed);
    }
    Ok(buf)
}

/// What a body's buffer starts with before its bytes arrive.
pub const BODY_START: u64 = 64 << 10;

/// Turns an error answer into an error, passing anything else through.
pub fn expect_ok(resp: Response) -> Result<Response, ProtoError> {
    match resp {
        Response::Error { code, message } => Err(ProtoError::Remote { code, message }),
        other => Ok(other),
    }
}

/// The response payload a request names (garage's `Rpc::Response`): `Net::call` takes it
/// out of the peer's [`Response`], and any other answer is one error path (`Unexpected`, or
/// the peer's `Error`), so no caller matches responses by hand.
pub trait Expect: Sized {
    /// `Err(resp)` when `resp` is not this payload.
    fn take(resp: Response) -> Result<Self, Response>;
}

macro_rules! expect {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl Expect for $ty {
            fn take(resp: Response) -> Result<Self, Response> {
                match resp {
                    Response::$variant(v) => Ok(v),
                    other => Err(other),
                }
            }
        }
    )*};
}

expect! {
    PutOutcome => Stored,
    Vec<PutOutcome> => StoredMany,
    DeleteOutcome => Deleted,
    bool => Has,
    Vec<ShardId> => List,
    Usage => Usage,
    ScrubPage => Scrubbed,
    u32 => Bound,
    StalePage => StalePage,
    NodeStatus => NodeStatus,
}

/// The answer to [`Request::OpenDocument`]: the document's distinct shard count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub shards: u32,
}

impl Expect for Opened {
    fn take(resp: Response) -> Result<Self, Response> {
        match resp {
            Response::Opened { shards } => Ok(Opened { shards }),
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the encoding so the wire format cannot drift silently.
    #[test]
    fn encoded_frames_are_pinned() {
        let id = ShardId([0xab; 32]);
        let put = encode_frame(&Request::PutShard {
            id,
            len: 300,
            document: None,
        });
        assert_eq!(
            hex::encode(&put),
            format!("24000000{}{}ac0200", "00", "ab".repeat(32))
        );
        let delete = encode_frame(&Request::DeleteShard {
            id,
            document: DocumentId([0xcd; 32]),
        });
        assert_eq!(
            hex::encode(&delete),
            format!("41000000{}{}{}", "03", "ab".repeat(32), "cd".repeat(32))
        );
        assert_eq!(hex::encode(encode_frame(&Request::Ping)), "0100000008");
        let verify = encode_frame(&Request::VerifyShard {
            id,
            document: DocumentId([0xcd; 32]),
        });
        assert_eq!(
            hex::encode(&verify),
            format!("41000000{}{}{}", "1b", "ab".repeat(32), "cd".repeat(32))
        );
        let open = encode_frame(&Request::OpenDocument {
            document: DocumentId([0xcd; 32]),
            len: 300,
        });
        assert_eq!(
            hex::encode(&open),
            format!("23000000{}{}ac02", "15", "cd".repeat(32))
        );
        assert_eq!(
            hex::encode(encode_frame(&Response::Opened { shards: 6 })),
            "020000000d06"
        );
        let many = encode_frame(&Request::PutMany {
            shards: vec![(id, 300)],
            manifest: Some((DocumentId([0xcd; 32]), 2)),
            document: DocumentId([0xcd; 32]),
        });
        assert_eq!(
            hex::encode(&many),
            format!(
                "66000000{}{}ac0201{}02{}",
                "1801",
                "ab".repeat(32),
                "cd".repeat(32),
                "cd".repeat(32)
            )
        );
        assert_eq!(
            hex::encode(encode_frame(&Response::StoredMany(vec![
                PutOutcome::Stored
            ]))),
            "030000000e0100"
        );
        let err = encode_frame(&Response::Error {
            code: ErrorCode::Busy,
            message: "x".into(),
        });
        assert_eq!(hex::encode(err), "040000000904".to_string() + "0178");
    }

    #[tokio::test]
    async fn frames_round_trip_and_limits_hold() {
        let req = Request::ListShards {
            after: Some(ShardId([1; 32])),
            limit: 10,
        };
        let bytes = encode_frame(&req);
        let got: Request = read_frame(&mut &bytes[..]).await.unwrap();
        assert_eq!(got, req);

        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        let err = read_frame::<_, Request>(&mut &huge[..]).await.unwrap_err();
        assert!(matches!(err, ProtoError::TooLarge { .. }));

        let truncated = &bytes[..bytes.len() - 1];
        let err = read_frame::<_, Request>(&mut &truncated[..])
            .await
            .unwrap_err();
        assert!(matches!(err, ProtoError::Closed));

        let mut garbage = vec![3, 0, 0, 0];
        garbage.extend([200, 200, 200]);
        let err = read_frame::<_, Request>(&mut &garbage[..])
            .await
            .unwrap_err();
        assert!(matches!(err, ProtoError::Malformed(_)));

        let mut trailing = encode_frame(&Request::Ping);
        trailing[0] += 1;
        trailing.push(0);
        let err = read_frame::<_, Request>(&mut &trailing[..])
            .await
            .unwrap_err();
        assert!(matches!(err, ProtoError::Malformed(_)));
    }
}
