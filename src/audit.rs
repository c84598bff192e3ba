//! Read audit: every read a storage peer serves is recorded by that peer, the records are
//! committed to the chain as Merkle roots, and the owner of a document checks who read it
//! against those roots without trusting the peer.
//!
//! On a peer, [`AuditLog`] keeps one [`AuditRecord`] per served read that names a document
//! (a `GetManifest` answered with the manifest, a `GetShard` answered with a shard of a
//! document opened on the connection): reader, document, time, what was read, and a
//! sequence number. A gateway's read under a citizen's read delegation (`delegation`) is
//! recorded as the citizen's, naming the gateway ([`ReadKind::ManifestVia`],
//! [`ReadKind::ShardVia`]; variants appended, so older records decode as before). Records are buffered in memory and written to `<data dir>/audit.redb`
//! in one durable transaction every [`FLUSH_EVERY`] or [`FLUSH_AT`] records, so a read does
//! not pay an fsync (a crash loses at most the records of that last second).
//!
//! Fail closed: a read is recorded *before* its bytes are sent, and a read that cannot be
//! recorded is not served ([`AuditLog::record`] refuses; the peer answers `Unavailable`,
//! no document byte sent). It cannot be recorded while the buffer holds its bound of
//! records (`PeerLimits::audit_buffer`, default [`DEFAULT_BUFFER`]: about 2 MiB), until a
//! flush drains it, or while the log's last write to disk failed, until one succeeds. So
//! memory stays bounded, and a peer whose disk refuses its records stops serving reads
//! instead of serving them unrecorded. Every
//! `PeerLimits::audit_interval` the peer's auditor task flushes, builds a BLAKE3 Merkle tree
//! (`chain::merkle`) over the records since its last root (at most [`MAX_ROOT_RECORDS`]
//! per root) and commits a signed `AuditRoot { peer, first, count, root }`; the chain takes
//! it only from that storage node, for itself, continuing where its last root ended
//! (`chain::state`). The root is stored in the log before it is submitted, so a crash or an
//! unreachable chain resubmits the same transaction next time. A peer with no new reads
//! sends nothing.
//!
//! `GetAudit` (the owner of the document and operators only: who read a citizen's
//! certificate is itself sensitive) answers a page of the document's records, each with the
//! inclusion proof against its committed root. [`audit`] asks every peer of the layout,
//! fetches each root's transaction with its proof from the chain (checked against the
//! validators' signatures), and checks every record's proof: a record is
//! [`Verdict::Verified`], [`Verdict::Pending`] (no committed root covers it yet: unverified)
//! or [`Verdict::Failed`] (altered, or a proof that does not hold: reported, never shown
//! as fine).
//!
//! Not for: proving that a peer recorded every read. A peer that drops a record before its
//! root is committed is not caught (only the reader knows the read happened); what it
//! committed it can neither alter nor deny. Maintainers' reads of raw shards (repair,
//! rebalance) name no document and are not recorded; their manifest reads are.
//!
//! On-disk layout (`audit.redb`): `audit-records-v1` seq → postcard [`AuditRecord`];
//! `audit-by-document-v1` (document ‖ seq big-endian) → (); `audit-roots-v1` first seq →
//! postcard root entry (count, root, signed transaction, committed); `audit-meta-v1`
//! "format" → [`AUDIT_FORMAT`] (a log written before it was recorded has none: format 1).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::access::{AccessError, ChainView};
use crate::chain::block::TxInclusion;
use crate::chain::client::{ChainClient, ChainError};
use crate::chain::merkle::{self, Hash, Proof};
use crate::chain::tx::{ChainKey, SignedTx, Tx, TxBody};
use crate::id::{DocumentId, ShardId};
use crate::identity::{Identity, PublicId};
use crate::net::{Net, NetError};
use crate::placement::NodeInfo;
use crate::proto::{MAX_CHAIN_BODY, Request, Response};

/// The audit database in a peer's data directory.
pub const AUDIT_FILE: &str = "audit.redb";
/// Longest a served read waits in memory before its record is durable.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Buffered records that trigger a flush before [`FLUSH_EVERY`].
pub const FLUSH_AT: usize = 256;
/// Default bound on records waiting in memory for their write (`PeerLimits::audit_buffer`):
/// 16 Ki records of about 130 bytes, some 2 MiB, sixty-four flushes' worth at [`FLUSH_AT`].
pub const DEFAULT_BUFFER: usize = 16 << 10;
/// Most records one `AuditRoot` covers (more wait for the next root, in the same round).
pub const MAX_ROOT_RECORDS: u64 = 4096;
/// Most roots one round of the auditor commits.
const MAX_ROOTS_PER_ROUND: usize = 16;

const RECORD_FORMAT: u8 = 1;
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit-records-v1");
const BY_DOCUMENT: TableDefinition<&[u8], ()> = TableDefinition::new("audit-by-document-v1");
const ROOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit-roots-v1");
const META: TableDefinition<&str, u64> = TableDefinition::new("audit-meta-v1");
/// The audit log's format; a log of a newer one is refused on open.
pub const AUDIT_FORMAT: u64 = 1;

/// What a read served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadKind {
    Manifest,
    Shard(ShardId),
    /// The manifest, fetched by `gateway` under the reader's read delegation
    /// (`delegation`): the record's reader is the citizen who signed it.
    ManifestVia {
        gateway: PublicId,
    },
    /// A shard, fetched by `gateway` under the reader's read delegation.
    ShardVia {
        shard: ShardId,
        gateway: PublicId,
    },
}

impl ReadKind {
    /// The gateway a delegated read went through (`None`: the reader read directly).
    pub fn gateway(&self) -> Option<PublicId> {
        match self {
            Self::Manifest | Self::Shard(_) => None,
            Self::ManifestVia { gateway } | Self::ShardVia { gateway, .. } => Some(*gateway),
        }
    }
}

impl std::fmt::Display for ReadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Manifest => f.write_str("manifest"),
            Self::Shard(id) => write!(f, "shard {}", &id.to_string()[..12]),
            Self::ManifestVia { gateway } => write!(f, "manifest via gateway {gateway}"),
            Self::ShardVia { shard, gateway } => {
                write!(
                    f,
                    "shard {} via gateway {gateway}",
                    &shard.to_string()[..12]
                )
            }
        }
    }
}

/// One served read, as the serving peer recorded it. Its Merkle leaf is the hash of its
/// canonical postcard encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub format: u8,
    /// Position in this peer's log: consecutive from 0.
    pub seq: u64,
    pub reader: PublicId,
    pub document: DocumentId,
    /// When the read was served (the peer's clock, Unix milliseconds).
    pub at_ms: u64,
    pub read: ReadKind,
}

impl AuditRecord {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding into memory cannot fail")
    }

    pub fn leaf(&self) -> Hash {
        merkle::leaf_hash(&self.encode())
    }
}

/// Where a record sits under a committed root: the root's transaction id and the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditProof {
    /// The id of the `AuditRoot` transaction on chain.
    pub tx: [u8; 32],
    pub path: Proof,
}

/// One record in a `GetAudit` answer; `proof` is `None` while no committed root covers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub record: AuditRecord,
    pub proof: Option<AuditProof>,
}

/// A `GetAudit` answer: records in sequence order; `next` is the `after` of the next page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next: Option<u64>,
}

/// A root as the peer keeps it: committed once the chain took its transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RootEntry {
    format: u8,
    count: u64,
    root: Hash,
    /// The signed `AuditRoot` transaction.
    tx: Vec<u8>,
    committed: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit log database: {0}")]
    Db(String),
    #[error("audit log record {what}: {reason}")]
    Record { what: String, reason: String },
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("{0}")]
    Refused(String),
    #[error(
        "this peer cannot record the read in its audit log ({0}), so it does not serve it; \
         ask another peer or again shortly"
    )]
    CannotRecord(String),
    #[error(
        "the audit log was written by a newer Dangan (audit format {found}; this build reads \
         up to {AUDIT_FORMAT}): upgrade this binary"
    )]
    Newer { found: u64 },
}

fn dberr<E: std::fmt::Display>(e: E) -> AuditError {
    AuditError::Db(e.to_string())
}

fn decode<T: for<'de> Deserialize<'de>>(what: String, bytes: &[u8]) -> Result<T, AuditError> {
    if bytes.first() != Some(&RECORD_FORMAT) {
        return Err(AuditError::Record {
            what,
            reason: "unknown record format".into(),
        });
    }
    postcard::from_bytes(bytes).map_err(|e| AuditError::Record {
        what,
        reason: e.to_string(),
    })
}

fn document_key(document: &DocumentId, seq: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(&document.0);
    key[32..].copy_from_slice(&seq.to_be_bytes());
    key
}

struct Buffer {
    next_seq: u64,
    records: Vec<AuditRecord>,
    /// Most records held; a record past it is refused.
    bound: usize,
    /// Why the last write to disk failed, until one succeeds.
    failing: Option<String>,
}

/// A peer's read records (see the module docs). Calls that touch the database block.
pub struct AuditLog {
    db: Database,
    buffer: Mutex<Buffer>,
    /// Serialises flushes and root building, so records reach the database in order.
    writing: Mutex<()>,
    wake: Notify,
    recorded: AtomicU64,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("recorded", &self.recorded())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating if needed) the log in `dir`, holding at most `bound` records in
    /// memory (see the module docs).
    pub fn open(dir: &Path, bound: usize) -> Result<Self, AuditError> {
        std::fs::create_dir_all(dir).map_err(dberr)?;
        let db = Database::builder()
            .set_cache_size(4 << 20)
            .create(dir.join(AUDIT_FILE))
            .map_err(dberr)?;
        let txn = db.begin_write().map_err(dberr)?;
        txn.open_table(RECORDS).map_err(dberr)?;
        txn.open_table(BY_DOCUMENT).map_err(dberr)?;
        txn.open_table(ROOTS).map_err(dberr)?;
        {
            let mut meta = txn.open_table(META).map_err(dberr)?;
            let found = meta.get("format").map_err(dberr)?.map(|v| v.value());
            match found {
                Some(found) if found > AUDIT_FORMAT => return Err(AuditError::Newer { found }),
                Some(_) => {}
                None => {
                    meta.insert("format", AUDIT_FORMAT).map_err(dberr)?;
                }
            }
        }
        txn.commit().map_err(dberr)?;
        let next_seq = {
            let txn = db.begin_read().map_err(dberr)?;
            let records = txn.open_table(RECORDS).map_err(dberr)?;
            records
                .last()
                .map_err(dberr)?
                .map_or(0, |(k, _)| k.value() + 1)
        };
        Ok(Self {
            db,
            buffer: Mutex::new(Buffer {
                next_seq,
                records: Vec::new(),
                bound,
                failing: None,
            }),
            writing: Mutex::new(()),
            wake: Notify::new(),
            recorded: AtomicU64::new(0),
        })
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that `reader` is served `read` of `document` now, before it is sent; refused
    /// ([`AuditError::CannotRecord`]) while the buffer is full or the last write to disk
    /// failed: the read must then not be served. Never blocks on disk.
    pub fn record(
        &self,
        reader: PublicId,
        document: DocumentId,
        read: ReadKind,
    ) -> Result<(), AuditError> {
        let mut buffer = self.buffer();
        if let Some(reason) = &buffer.failing {
            return Err(AuditError::CannotRecord(format!(
                "its last write to disk failed: {reason}"
            )));
        }
        if buffer.records.len() >= buffer.bound {
            let held = buffer.records.len();
            drop(buffer);
            self.wake.notify_one();
            return Err(AuditError::CannotRecord(format!(
                "{held} records wait for their write, its bound"
            )));
        }
        let seq = buffer.next_seq;
        buffer.next_seq += 1;
        buffer.records.push(AuditRecord {
            format: RECORD_FORMAT,
            seq,
            reader,
            document,
            at_ms: crate::now_ms(),
            read,
        });
        let full = buffer.records.len() >= FLUSH_AT.min(buffer.bound);
        drop(buffer);
        self.recorded.fetch_add(1, Ordering::Relaxed);
        if full {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Reads recorded since this log was opened.
    pub fn recorded(&self) -> u64 {
        self.recorded.load(Ordering::Relaxed)
    }

    /// Writes the buffered records in one durable transaction; returns how many.
    pub fn flush(&self) -> Result<usize, AuditError> {
        let _writing = self.writing();
        self.flush_locked()
    }

    fn flush_locked(&self) -> Result<usize, AuditError> {
        let records = std::mem::take(&mut self.buffer().records);
        if records.is_empty() {
            return Ok(0);
        }
        let written = (|| {
            let txn = self.db.begin_write().map_err(dberr)?;
            {
                let mut table = txn.open_table(RECORDS).map_err(dberr)?;
                let mut index = txn.open_table(BY_DOCUMENT).map_err(dberr)?;
                for r in &records {
                    table.insert(r.seq, r.encode().as_slice()).map_err(dberr)?;
                    index
                        .insert(document_key(&r.document, r.seq).as_slice(), ())
                        .map_err(dberr)?;
                }
            }
            txn.commit().map_err(dberr)
        })();
        match written {
            Ok(()) => {
                self.buffer().failing = None;
                Ok(records.len())
            }
            Err(e) => {
                // Put them back in front, in order: the next flush tries again. Until one
                // succeeds, no read is recorded, so none is served.
                let mut buffer = self.buffer();
                let later = std::mem::replace(&mut buffer.records, records);
                buffer.records.extend(later);
                buffer.failing = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Records not yet covered by a root committed on chain (buffered ones included):
    /// what `dangan_audit_pending_records` shows. One read of the roots table.
    pub fn pending(&self) -> Result<u64, AuditError> {
        let next = self.buffer().next_seq;
        let txn = self.db.begin_read().map_err(dberr)?;
        let roots = txn.open_table(ROOTS).map_err(dberr)?;
        let mut rooted = 0;
        for item in roots.iter().map_err(dberr)?.rev() {
            let (first, bytes) = item.map_err(dberr)?;
            let first = first.value();
            let entry: RootEntry = decode(format!("root {first}"), bytes.value())?;
            if entry.committed {
                rooted = first + entry.count;
                break;
            }
        }
        Ok(next.saturating_sub(rooted))
    }

    /// The root stored but not known to be committed, if any: (first seq, entry).
    fn uncommitted(&self) -> Result<Option<(u64, RootEntry)>, AuditError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let roots = txn.open_table(ROOTS).map_err(dberr)?;
        let Some((first, bytes)) = roots.last().map_err(dberr)? else {
            return Ok(None);
        };
        let first = first.value();
        let entry: RootEntry = decode(format!("root {first}"), bytes.value())?;
        Ok((!entry.committed).then_some((first, entry)))
    }

    /// Flushes, then builds and stores (uncommitted) the root of the records after the last
    /// root, signed by `identity` with `nonce` for `chain`: (first seq, entry), or `None` if
    /// there are no such records.
    fn build_root(
        &self,
        identity: &Identity,
        chain: &ChainKey,
        nonce: u64,
    ) -> Result<Option<(u64, RootEntry)>, AuditError> {
        let _writing = self.writing();
        self.flush_locked()?;
        let txn = self.db.begin_write().map_err(dberr)?;
        let built = {
            let mut roots = txn.open_table(ROOTS).map_err(dberr)?;
            let first = match roots.last().map_err(dberr)? {
                Some((k, v)) => {
                    let first = k.value();
                    let entry: RootEntry = decode(format!("root {first}"), v.value())?;
                    first + entry.count
                }
                None => 0,
            };
            let records = txn.open_table(RECORDS).map_err(dberr)?;
            let mut leaves = Vec::new();
            for item in records.range(first..).map_err(dberr)? {
                let (k, v) = item.map_err(dberr)?;
                if k.value() != first + leaves.len() as u64
                    || leaves.len() as u64 >= MAX_ROOT_RECORDS
                {
                    break;
                }
                leaves.push(merkle::leaf_hash(v.value()));
            }
            if leaves.is_empty() {
                None
            } else {
                let root = merkle::root(&leaves);
                let tx = Tx {
                    sender: identity.public(),
                    nonce,
                    body: TxBody::AuditRoot {
                        peer: identity.public(),
                        first,
                        count: leaves.len() as u64,
                        root,
                    },
                }
                .sign(identity, chain);
                let entry = RootEntry {
                    format: RECORD_FORMAT,
                    count: leaves.len() as u64,
                    root,
                    tx: tx.encode(),
                    committed: false,
                };
                let bytes = postcard::to_allocvec(&entry).expect("encoding cannot fail");
                roots.insert(first, bytes.as_slice()).map_err(dberr)?;
                Some((first, entry))
            }
        };
        if built.is_some() {
            txn.commit().map_err(dberr)?;
        } else {
            txn.abort().map_err(dberr)?;
        }
        Ok(built)
    }

    /// Marks the root at `first` committed (`true`) or forgets it (`false`: the chain
    /// refused it; its records go into the next root).
    fn settle(&self, first: u64, committed: bool) -> Result<(), AuditError> {
        let _writing = self.writing();
        let txn = self.db.begin_write().map_err(dberr)?;
        {
            let mut roots = txn.open_table(ROOTS).map_err(dberr)?;
            if committed {
                let entry = match roots.get(first).map_err(dberr)? {
                    Some(v) => {
                        let mut e: RootEntry = decode(format!("root {first}"), v.value())?;
                        e.committed = true;
                        e
                    }
                    None => return Ok(()),
                };
                let bytes = postcard::to_allocvec(&entry).expect("encoding cannot fail");
                roots.insert(first, bytes.as_slice()).map_err(dberr)?;
            } else {
                roots.remove(first).map_err(dberr)?;
            }
        }
        txn.commit().map_err(dberr)
    }

    /// Up to `limit` records of `document` after record `after`, each with its proof
    /// against the committed root that covers it. Flushes first, so every read served
    /// before the call is listed.
    pub fn page(
        &self,
        document: &DocumentId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<AuditPage, AuditError> {
        self.flush()?;
        let txn = self.db.begin_read().map_err(dberr)?;
        let index = txn.open_table(BY_DOCUMENT).map_err(dberr)?;
        let records = txn.open_table(RECORDS).map_err(dberr)?;
        let roots = txn.open_table(ROOTS).map_err(dberr)?;
        let from = after.map_or(Some(0), |a| a.checked_add(1));
        let Some(from) = from else {
            return Ok(AuditPage {
                entries: Vec::new(),
                next: None,
            });
        };
        let start = document_key(document, from);
        let end = document_key(document, u64::MAX);
        let mut seqs = Vec::new();
        for item in index
            .range(start.as_slice()..=end.as_slice())
            .map_err(dberr)?
        {
            let (k, _) = item.map_err(dberr)?;
            let key = k.value();
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&key[32..40]);
            seqs.push(u64::from_be_bytes(seq));
            if seqs.len() > limit {
                break;
            }
        }
        let more = seqs.len() > limit;
        seqs.truncate(limit);
        // Leaves of each committed root used, computed once per page.
        let mut batches: HashMap<u64, (RootEntry, Vec<Hash>)> = HashMap::new();
        let mut entries = Vec::with_capacity(seqs.len());
        for seq in &seqs {
            let Some(bytes) = records.get(*seq).map_err(dberr)? else {
                continue;
            };
            let record: AuditRecord = decode(format!("record {seq}"), bytes.value())?;
            let covering = match roots.range(..=*seq).map_err(dberr)?.next_back() {
                Some(item) => {
                    let (k, v) = item.map_err(dberr)?;
                    let first = k.value();
                    let entry: RootEntry = decode(format!("root {first}"), v.value())?;
                    (entry.committed && *seq < first + entry.count).then_some((first, entry))
                }
                None => None,
            };
            let proof = match covering {
                None => None,
                Some((first, entry)) => {
                    let (entry, leaves) = match batches.entry(first) {
                        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                        std::collections::hash_map::Entry::Vacant(v) => {
                            let mut leaves = Vec::with_capacity(entry.count as usize);
                            let range = first..first + entry.count;
                            for item in records.range(range).map_err(dberr)? {
                                leaves.push(merkle::leaf_hash(item.map_err(dberr)?.1.value()));
                            }
                            v.insert((entry, leaves))
                        }
                    };
                    let path = merkle::prove(leaves, (seq - first) as usize).map_err(|e| {
                        AuditError::Record {
                            what: format!("root {first}"),
                            reason: e.to_string(),
                        }
                    })?;
                    Some(AuditProof {
                        tx: *blake3::hash(&entry.tx).as_bytes(),
                        path,
                    })
                }
            };
            entries.push(AuditEntry { record, proof });
        }
        Ok(AuditPage {
            entries,
            next: if more { seqs.last().copied() } else { None },
        })
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("audit log calls do not panic")
}

/// Starts a peer's auditor: flushes the log every [`FLUSH_EVERY`] (or when [`FLUSH_AT`]
/// records wait) and commits a root of the new records every `interval`.
pub fn spawn_auditor(
    log: Arc<AuditLog>,
    chain: Arc<ChainView>,
    identity: Identity,
    interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let tick = interval.min(FLUSH_EVERY);
        let mut last_round = Instant::now();
        loop {
            tokio::select! {
                () = tokio::time::sleep(tick) => {}
                () = log.wake.notified() => {}
            }
            let flushed = {
                let log = log.clone();
                blocking(move || log.flush()).await
            };
            if let Err(e) = flushed {
                warn!(error = %e, "writing audit records failed; retrying");
            }
            if last_round.elapsed() < interval {
                continue;
            }
            last_round = Instant::now();
            match commit_roots(&log, &chain, &identity).await {
                Ok(0) => {}
                Ok(n) => debug!(roots = n, "audit roots committed"),
                Err(AuditError::Access(AccessError::NoChain)) => {}
                Err(e) => warn!(error = %e, "committing an audit root failed; retrying"),
            }
        }
    })
}

/// One round of the auditor: settles a root left uncommitted, then commits roots of the
/// records after the last one. Returns how many roots the chain took.
pub async fn commit_roots(
    log: &Arc<AuditLog>,
    chain: &ChainView,
    identity: &Identity,
) -> Result<usize, AuditError> {
    let mut committed = 0;
    for _ in 0..MAX_ROOTS_PER_ROUND {
        let pending = {
            let log = log.clone();
            blocking(move || log.uncommitted()).await?
        };
        let (first, entry, retried) = match pending {
            Some((first, entry)) => (first, entry, true),
            None => {
                let me = identity.public();
                let Some(nonce) = chain.nonce(&me).await? else {
                    // No account (a validator's host outside the layout): nothing to root.
                    return Ok(committed);
                };
                let chain_key = chain.chain_key().await?;
                let (log, identity) = (log.clone(), identity.clone());
                match blocking(move || log.build_root(&identity, &chain_key, nonce + 1)).await? {
                    Some((first, entry)) => (first, entry, false),
                    None => return Ok(committed),
                }
            }
        };
        let tx = SignedTx::decode(&entry.tx).map_err(|e| AuditError::Record {
            what: format!("root {first}"),
            reason: e.to_string(),
        })?;
        let on_chain = retried && chain.has_transaction(tx.id()).await?;
        let took = on_chain
            || match chain.submit(tx).await? {
                Ok(height) => {
                    info!(first, count = entry.count, height, "audit root committed");
                    true
                }
                Err(reason) => {
                    warn!(first, count = entry.count, %reason, "the chain refused an audit root");
                    false
                }
            };
        {
            let log = log.clone();
            blocking(move || log.settle(first, took)).await?;
        }
        if !took {
            return Ok(committed);
        }
        committed += 1;
    }
    Ok(committed)
}

/// How a record checked out against the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its proof holds against the peer's `AuditRoot` committed in block `height`.
    Verified { height: u64 },
    /// No committed root covers it yet: the peer's word alone.
    Pending,
    /// Altered, or a proof that does not hold: why.
    Failed(String),
}

/// One read of a document, as one peer reported it, and the check.
#[derive(Debug, Clone)]
pub struct AuditLine {
    pub peer: PublicId,
    pub record: AuditRecord,
    pub verdict: Verdict,
}

/// What [`audit`] found: every record from every peer that answered, oldest first, and the
/// peers that could not be asked.
#[derive(Debug, Clone, Default)]
pub struct AuditReport {
    pub lines: Vec<AuditLine>,
    pub unreachable: Vec<(PublicId, String)>,
}

/// One page of `node`'s records of `document` (undecoded trust: check them with [`check`]).
pub async fn fetch_page(
    net: &Net,
    node: &NodeInfo,
    document: &DocumentId,
    after: Option<u64>,
) -> Result<AuditPage, AuditError> {
    let req = Request::GetAudit {
        document: *document,
        after,
    };
    match net.fetch(node, &req, None, MAX_CHAIN_BODY).await {
        Ok(Some(body)) => postcard::from_bytes(&body).map_err(|e| AuditError::Record {
            what: format!("page from {}", node.key.short()),
            reason: e.to_string(),
        }),
        Ok(None) => Err(AuditError::Refused(format!(
            "{} answered {:?}",
            node.key.short(),
            Response::NotFound
        ))),
        Err(e) => match e.refusal() {
            Some(reason) => Err(AuditError::Refused(reason.to_string())),
            None => Err(e.into()),
        },
    }
}

/// Checks one entry `peer` answered for `document` against the root transaction its
/// proof names (`root`: that transaction with its chain proof, already verified against
/// the validators by `Client::chain_tx`; `None` if the chain does not have it).
pub fn check(
    peer: &PublicId,
    document: &DocumentId,
    entry: &AuditEntry,
    root: Option<&TxInclusion>,
) -> Verdict {
    let record = &entry.record;
    if record.document != *document {
        return Verdict::Failed(format!(
            "the record is of another document ({})",
            record.document
        ));
    }
    let Some(proof) = &entry.proof else {
        return Verdict::Pending;
    };
    let Some(inclusion) = root else {
        return Verdict::Failed("the root it names is not on the chain".into());
    };
    if inclusion.tx.id() != proof.tx {
        return Verdict::Failed("the chain answered another transaction".into());
    }
    let TxBody::AuditRoot {
        peer: by,
        first,
        count,
        root,
    } = &inclusion.tx.tx.body
    else {
        return Verdict::Failed("the transaction it names is not an audit root".into());
    };
    if by != peer || inclusion.tx.tx.sender != *peer {
        return Verdict::Failed("the root it names is another peer's".into());
    }
    let covered = record.seq >= *first && record.seq - first < *count;
    if !covered || proof.path.index != record.seq - first || proof.path.leaf_count != *count {
        return Verdict::Failed(format!(
            "record {} is not where the proof puts it under the root of {first}..{}",
            record.seq,
            first + count
        ));
    }
    match proof.path.verify(&record.leaf(), root) {
        Ok(()) => Verdict::Verified {
            height: inclusion.header.header.height,
        },
        Err(e) => Verdict::Failed(format!("its Merkle proof does not hold: {e}")),
    }
}

/// Who read `document`: every peer of `nodes` (a client's layouts, current and previous)
/// asked for its records, each record checked against the chain (see [`check`]). A refusal
/// (the caller is neither the owner nor an operator) is an error.
pub async fn audit(
    chain: &ChainClient,
    nodes: &[NodeInfo],
    document: &DocumentId,
) -> Result<AuditReport, AuditError> {
    let pages = futures::future::join_all(nodes.iter().map(|node| async move {
        let mut entries = Vec::new();
        let mut after = None;
        loop {
            let page = fetch_page(chain.net(), node, document, after).await?;
            let empty = page.entries.is_empty();
            entries.extend(page.entries);
            match page.next {
                // A page must move forward, or a peer could keep the client asking.
                Some(next) if !empty && after.is_none_or(|a| next > a) => after = Some(next),
                Some(_) => {
                    return Err(AuditError::Record {
                        what: format!("pages from {}", node.key.short()),
                        reason: "the next page does not move forward".into(),
                    });
                }
                None => return Ok::<_, AuditError>(entries),
            }
        }
    }))
    .await;
    let mut report = AuditReport::default();
    let mut roots: HashMap<[u8; 32], Option<TxInclusion>> = HashMap::new();
    for (node, page) in nodes.iter().zip(pages) {
        let entries = match page {
            Ok(entries) => entries,
            Err(AuditError::Refused(reason)) => return Err(AuditError::Refused(reason)),
            Err(e) => {
                report.unreachable.push((node.key, e.to_string()));
                continue;
            }
        };
        for entry in entries {
            if let Some(proof) = &entry.proof
                && !roots.contains_key(&proof.tx)
            {
                let found = chain.tx(proof.tx).await?;
                roots.insert(proof.tx, found);
            }
            let root = entry
                .proof
                .as_ref()
                .and_then(|p| roots.get(&p.tx))
                .and_then(Option::as_ref);
            let verdict = check(&node.key, document, &entry, root);
            report.lines.push(AuditLine {
                peer: node.key,
                record: entry.record,
                verdict,
            });
        }
    }
    report
        .lines
        .sort_by_key(|l| (l.record.at_ms, l.peer, l.record.seq));
    Ok(report)
}

/// `ms` (Unix milliseconds) as `YYYY-MM-DD hh:mm:ss.mmm UTC`.
pub fn utc(ms: u64) -> String {
    let (days, rem) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03} UTC",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Verified { height } => write!(f, "verified (root in block {height})"),
            Self::Pending => f.write_str("PENDING (no committed root covers it yet: unverified)"),
            Self::Failed(why) => write!(f, "FAILED: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    #[test]
    fn a_log_written_by_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(AuditLog::open(dir.path(), DEFAULT_BUFFER).unwrap());
        {
            let db = Database::create(dir.path().join(AUDIT_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                assert_eq!(meta.get("format").unwrap().unwrap().value(), AUDIT_FORMAT);
                meta.insert("format", AUDIT_FORMAT + 1).unwrap();
            }
            txn.commit().unwrap();
        }
        let err = AuditLog::open(dir.path(), DEFAULT_BUFFER).expect_err("a newer log is refused");
        assert!(
            err.to_string()
                .contains("newer Dangan (audit format 2; this build reads up to 1)"),
            "{err}"
        );
    }

    #[test]
    fn times_print_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc(951_782_400_000 + 1_234), "2000-02-29 00:00:01.234 UTC");
        assert_eq!(utc(1_795_826_096_789), "2026-11-28 00:34:56.789 UTC");
    }

    #[test]
    fn records_are_durable_paged_and_proved_against_their_root() {
        let dir = tempfile::tempdir().unwrap();
        let peer = Identity::generate(Role::Node);
        let reader = Identity::generate(Role::Citizen).public();
        let (a, b) = (DocumentId::of(b"a"), DocumentId::of(b"b"));
        {
            let log = AuditLog::open(dir.path(), DEFAULT_BUFFER).unwrap();
            for i in 0..10u8 {
                let doc = if i % 3 == 0 { a } else { b };
                log.record(reader, doc, ReadKind::Shard(ShardId::of(&[i])))
                    .unwrap();
            }
            assert_eq!(log.flush().unwrap(), 10);
            let (first, entry) = log
                .build_root(&peer, &ChainKey([1; 32]), 1)
                .unwrap()
                .unwrap();
            assert_eq!((first, entry.count), (0, 10));
            // Not yet committed: pending.
            let page = log.page(&a, None, 100).unwrap();
            assert_eq!(page.entries.len(), 4);
            assert!(page.entries.iter().all(|e| e.proof.is_none()));
            log.settle(first, true).unwrap();
            log.record(reader, a, ReadKind::Manifest).unwrap();
        }
        // Reopened: the flushed records, the root and the sequence survive.
        let log = AuditLog::open(dir.path(), DEFAULT_BUFFER).unwrap();
        log.record(reader, a, ReadKind::Manifest).unwrap();
        let page = log.page(&a, None, 100).unwrap();
        let seqs: Vec<u64> = page.entries.iter().map(|e| e.record.seq).collect();
        assert_eq!(seqs, vec![0, 3, 6, 9, 10]);
        let tx = SignedTx::decode(&log.uncommitted_or_last_tx()).unwrap();
        let TxBody::AuditRoot { root, count, .. } = tx.tx.body else {
            panic!("not an audit root")
        };
        assert_eq!(count, 10);
        for e in &page.entries[..4] {
            let proof = e.proof.as_ref().unwrap();
            assert_eq!(proof.tx, tx.id());
            proof.path.verify(&e.record.leaf(), &root).unwrap();
        }
        assert!(page.entries[4].proof.is_none(), "after the root: pending");
        // Paging.
        let first = log.page(&a, None, 2).unwrap();
        assert_eq!(first.entries.len(), 2);
        let rest = log.page(&a, first.next, 2).unwrap();
        assert_eq!(rest.entries[0].record.seq, 6);
        // The next root starts where the last ended.
        let (next, entry) = log
            .build_root(&peer, &ChainKey([1; 32]), 2)
            .unwrap()
            .unwrap();
        assert_eq!((next, entry.count), (10, 1));
    }

    #[test]
    fn a_full_buffer_refuses_records_until_a_flush_drains_it() {
        let dir = tempfile::tempdir().unwrap();
        let reader = Identity::generate(Role::Citizen).public();
        let doc = DocumentId::of(b"a");
        let log = AuditLog::open(dir.path(), 2).unwrap();
        log.record(reader, doc, ReadKind::Manifest).unwrap();
        log.record(reader, doc, ReadKind::Manifest).unwrap();
        for _ in 0..3 {
            let err = log.record(reader, doc, ReadKind::Manifest).unwrap_err();
            assert!(matches!(err, AuditError::CannotRecord(_)), "{err}");
            assert!(err.to_string().contains("does not serve it"), "{err}");
        }
        assert_eq!(log.recorded(), 2, "a refused read is not counted");
        assert_eq!(log.flush().unwrap(), 2);
        log.record(reader, doc, ReadKind::Manifest).unwrap();
        let page = log.page(&doc, None, 10).unwrap();
        let seqs: Vec<u64> = page.entries.iter().map(|e| e.record.seq).collect();
        assert_eq!(seqs, vec![0, 1, 2], "the refused reads left no gap");
        // A log that may hold nothing records nothing: its peer serves no read.
        let dir = tempfile::tempdir().unwrap();
        let none = AuditLog::open(dir.path(), 0).unwrap();
        assert!(none.record(reader, doc, ReadKind::Manifest).is_err());
    }

    impl AuditLog {
        fn uncommitted_or_last_tx(&self) -> Vec<u8> {
            let txn = self.db.begin_read().unwrap();
            let roots = txn.open_table(ROOTS).unwrap();
            let (_, v) = roots.last().unwrap().unwrap();
            let entry: RootEntry = postcard::from_bytes(v.value()).unwrap();
            entry.tx
        }
    }
}
