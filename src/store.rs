//! The durable shard store of one storage peer: content-addressed shard bodies, each held
//! by the references of the documents that name it, plus a small table of replicated
//! records (manifests), with redb as the commit point.
//!
//! For: keeping shards a peer has acknowledged, exactly as written, across crashes;
//! answering `get`/`has`/`list` for the peer's request handlers, scrub and rebalance;
//! counting usage without scanning. Every call is synchronous and blocking (disk I/O and
//! fsync); async code calls it through `tokio::task::spawn_blocking`. A [`ShardStore`] is
//! `Send + Sync` and meant to be shared in an `Arc`.
//!
//! Not for: deciding *which* shards belong here (placement), access control (grants are
//! checked before the store is asked), garbage-collection policy (callers decide when to
//! `delete`), or anything on the chain.
//!
//! # References belong to documents
//! A shard body stays while some [`Holder`] references it, and each reference belongs to
//! one holder: a document ([`Holder::Document`]), or, until its document is known, the key
//! that uploaded it ([`Holder::Upload`]). [`ShardStore::delete`] names the document whose
//! reference it drops, and drops only that one, and only once: a document holds at most one
//! reference to a shard (a set, so a retried put adds nothing), and a delete naming a
//! document that holds none changes nothing ([`DeleteOutcome::NotFound`]). So whoever may
//! delete for a document (its owner once superseded, or an operator: `access`) can lower no
//! other document's references, whatever manifest they craft. Two documents that share a
//! shard (the same bytes) hold a reference each; the body goes with the last.
//!
//! Why upload references: a document's id is the hash of its manifest, which lists every
//! shard, so a client streaming a large document knows the id only after its last stripe is
//! out. Its shard puts therefore name no document and are held by the uploading key; once
//! the manifest is built the client binds them ([`ShardStore::bind`], `Request::BindShards`),
//! which turns one of *that key's* upload references per shard into the document's. A bind
//! names shard ids and a document without proving the document lists them: it need not,
//! because adding a reference can only keep a body longer (the same as storing it, which
//! the binder may do anyway), never lower anyone's. Puts that know their document (a
//! one-stripe document's `PutMany`, the operators' copies when they repair or move a shard)
//! name it directly. Operators moving a shard move each document's reference (`ops`).
//! Upload references never bound (a put that failed before its manifest) are orphans, like
//! the shards of any failed put.
//!
//! # Orphans
//! Every reference and record carries the time it was last added ([`ShardStore::stale`]
//! lists those older than a cutoff); [`ShardStore::collect`] drops one if it is still older
//! than the cutoff (a put since then refreshed it: kept). Which of them are orphans (no
//! registered document names them) is not the store's to say: `ops::collect` decides, and
//! the peer checks the chain before it asks (`peer/storage.rs`).
//!
//! # On-disk layout
//! ```text
//! <dir>/shards.redb            redb database, the commit point
//!     table "meta-v1"          &str      -> postcard record: "format" (store format),
//!                                                           "usage" (shard/byte counters)
//!     table "shards-v1"        [u8; 32]  -> postcard ShardRecord {format, refcount, len, body}
//!     table "refs-v1"          [u8; 65]  -> u64: shard id ‖ holder tag (0 document,
//!                                           1 upload) ‖ document id or uploader key ->
//!                                           references (always 1 for a document)
//!     table "inline-v1"        [u8; 32]  -> raw body bytes of shards <= INLINE_MAX
//!     table "blobs-v1"         [u8; 32]  -> raw bytes of small replicated records (manifests)
//!     table "ref-times-v1"     [u8; 65]  -> u64: when that reference was last added (ms)
//!     table "record-times-v1"  [u8; 32]  -> u64: when that record was last stored (ms)
//! <dir>/blobs/<64-hex id>      bodies larger than INLINE_MAX, one file per shard
//! <dir>/blobs/tmp/             bodies being written (never trusted; removed on open)
//! ```
//! `refcount` is the sum of the shard's rows in `refs-v1`, kept in the same transactions.
//! Table names carry their format version; `meta-v1/"format"` holds the store format,
//! checked on open (format 3 added `refs-v1`; a store of format 2, with anonymous
//! refcounts, is refused: there is no migration; format 4 added the two time tables, and a
//! store of format 3 is migrated on open, each reference and record stamped with the time
//! of the migration). A file holding tables of another version (`shards-v2`, ...) or an
//! unknown format number is refused with [`StoreError::UnsupportedFormat`]. Every postcard
//! record starts with a one-byte record format, checked before the rest is decoded.
//!
//! # The commit-point invariant
//! A shard exists if and only if its row in `shards-v1` is committed. A large body is
//! written to `blobs/tmp` (past the page cache where the file system allows, see
//! `body_io`), `fdatasync`'d and renamed to `blobs/<id>` ([`ShardStore::prepare`],
//! in parallel across requests); the commit that records it first `fsync`s `blobs/` once for
//! its whole batch, and only *then* is the row committed (redb commits are durable, i.e.
//! fsync'd, before they return). So a committed row always has a durable body; a body file without a
//! committed row is an orphan (a crash or failure between rename and commit) and `open`
//! removes it, as well as anything left in `blobs/tmp`. Deleting commits the row's removal
//! first and unlinks the file afterwards, so a crash in between leaves only an orphan.
//! Operations on the same id are serialised by a small array of striped locks, so a delete
//! racing a put of the same id can never unlink a body a freshly committed row relies on.
//! The body file is always written outside the redb write transaction.
//!
//! Reads re-hash every body with BLAKE3 and never return bytes that do not match their id:
//! a mismatch, a missing body file or a missing inline row is [`StoreError::Corrupt`]
//! (logged with `tracing::warn!`), which callers treat as "repair from other peers" (see
//! [`ShardStore::repair`]). Nothing on disk can make this module panic: undecodable rows
//! are [`StoreError::Record`] errors.
//!
//! # Why bodies above 16 KiB live in files (measured)
//! `measure_inline_vs_file_1mib` (an `#[ignore]`d test; run it with
//! `cargo test --lib store::tests::measure -- --ignored --nocapture`) stores 128 distinct
//! 1 MiB shards each way (2-core VM, virtio disk, test profile, four runs, other builds
//! sharing the machine, so read the ranges, not the digits):
//!
//! | 128 × 1 MiB shards                 | inline in redb  | file + redb row |
//! |------------------------------------|----------------:|----------------:|
//! | `put`, one durable commit each     |   94–150 MB/s   |  320–380 MB/s   |
//! | `put_batch` of 16, one commit each |   80–120 MB/s   |  290–535 MB/s   |
//! | `get` (BLAKE3 re-hash included)    |  1.8–3.1 GB/s   |  2.2–2.9 GB/s   |
//! | space on disk                      |    260 MiB      |    128 MiB      |
//!
//! A fifth run under heavy load from parallel builds fell to 43 vs 84 MB/s per put; the
//! ordering and the 2× space never changed.
//!
//! Inline storage doubles the space (redb's copy-on-write pages, as CRATES.md found) and
//! puts are 2–4× slower, batched or not, so bodies above [`INLINE_MAX`] go to files. Small
//! bodies stay inline, where a file per shard would cost an inode and two extra fsyncs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::id::{DocumentId, ShardId};
use crate::identity::PublicId;

mod body_io;

/// Bodies up to this many bytes are stored inline in redb; larger ones as files.
pub const INLINE_MAX: usize = 16 * 1024;

/// The store format this code reads and writes (`meta-v1/"format"`).
pub const STORE_FORMAT: u32 = 4;

/// redb's in-process page cache per store.
pub const REDB_CACHE_BYTES: usize = 16 << 20;

/// Format byte that starts every postcard record this module writes.
const RECORD_FORMAT: u8 = 1;

/// Version suffix of every table name; a table of the same family with another suffix means
/// the file was written by a different store format.
const TABLE_VERSION: &str = "1";
const TABLE_FAMILIES: [&str; 7] = [
    "shards-v",
    "inline-v",
    "meta-v",
    "blobs-v",
    "refs-v",
    "ref-times-v",
    "record-times-v",
];

const SHARDS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("shards-v1");
const INLINE: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("inline-v1");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-v1");
const BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs-v1");
const REFS: TableDefinition<&[u8; 65], u64> = TableDefinition::new("refs-v1");
/// When each reference of `refs-v1` (same key) was last added, in ms since the epoch.
const REF_TIMES: TableDefinition<&[u8; 65], u64> = TableDefinition::new("ref-times-v1");
/// When each record of `blobs-v1` (same key) was last stored, in ms since the epoch.
const RECORD_TIMES: TableDefinition<&[u8; 32], u64> = TableDefinition::new("record-times-v1");

const META_FORMAT: &str = "format";
const META_USAGE: &str = "usage";

const DB_FILE: &str = "shards.redb";
/// Directory (inside the store's directory) of the body files of large shards.
pub const BODY_DIR: &str = "blobs";
const TMP_DIR: &str = "tmp";

/// Number of striped locks serialising operations on the same id.
const LOCK_STRIPES: usize = 256;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("shard database error: {0}")]
    Database(#[source] Box<redb::Error>),
    #[error("refused shard: its bytes do not hash to the id {id}")]
    HashMismatch { id: ShardId },
    #[error(
        "stored shard {id} is corrupt on disk (bytes fail their BLAKE3 check, or the body is \
         missing); it must be repaired from other peers"
    )]
    Corrupt { id: ShardId },
    #[error(
        "refused record: its bytes do not hash to the key {}",
        hex::encode(key)
    )]
    BlobHashMismatch { key: [u8; 32] },
    #[error(
        "stored record {} is corrupt on disk (bytes fail their BLAKE3 check)",
        hex::encode(key)
    )]
    CorruptBlob { key: [u8; 32] },
    #[error(
        "the shard store at {} has format {found}; this build reads format {supported} only",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: String,
        supported: u32,
    },
    #[error("stored {what} record is unreadable: {detail}")]
    Record { what: &'static str, detail: String },
    /// A store written by a newer Dangan: refused, never misread or migrated down.
    #[error(
        "the shard store at {} was written by a newer Dangan (store format {found}; this \
         build reads up to {supported}): upgrade this binary",
        path.display()
    )]
    Newer {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
}

macro_rules! from_redb {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Database(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
);

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who holds a reference to a shard (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    /// The document whose manifest names the shard.
    Document(DocumentId),
    /// The key that uploaded the shard before its document was known; bound to the document
    /// by [`ShardStore::bind`].
    Upload(PublicId),
}

impl Holder {
    fn key(&self, shard: &ShardId) -> [u8; 65] {
        let mut key = [0u8; 65];
        key[..32].copy_from_slice(&shard.0);
        let (tag, id) = match self {
            Holder::Document(d) => (0, d.as_bytes()),
            Holder::Upload(k) => (1, k.as_bytes()),
        };
        key[32] = tag;
        key[33..].copy_from_slice(id);
        key
    }

    fn from_key(key: &[u8; 65]) -> Result<Self, StoreError> {
        let mut id = [0u8; 32];
        id.copy_from_slice(&key[33..]);
        match key[32] {
            0 => Ok(Holder::Document(DocumentId(id))),
            1 => PublicId::from_bytes(id)
                .map(Holder::Upload)
                .map_err(|e| StoreError::Record {
                    what: "reference",
                    detail: e.to_string(),
                }),
            tag => Err(StoreError::Record {
                what: "reference",
                detail: format!("unknown holder tag {tag}"),
            }),
        }
    }
}

/// The key range of every reference to `shard`.
fn ref_range(shard: &ShardId) -> ([u8; 65], [u8; 65]) {
    let mut low = [0u8; 65];
    low[..32].copy_from_slice(&shard.0);
    let mut high = [0xffu8; 65];
    high[..32].copy_from_slice(&shard.0);
    (low, high)
}

/// A shard checked and, if large, durably written, waiting for [`ShardStore::commit`],
/// with the holder its reference will belong to.
#[derive(Debug, Clone)]
pub struct Prepared {
    id: ShardId,
    bytes: Bytes,
    holder: Holder,
}

impl Prepared {
    pub fn id(&self) -> &ShardId {
        &self.id
    }
}

/// What a put did. (The wire's copy is `proto::PutOutcome`; the peer converts.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The bytes were not here before and are now durable.
    Stored,
    /// The body was already here; the holder's reference was added if it had none
    /// (shards), or nothing changed (records).
    AlreadyPresent,
}

/// What a delete did. (The wire's copy is `proto::DeleteOutcome`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The document's reference was the last; row and body are gone.
    Removed,
    /// The document's reference went; other holders keep the shard.
    Decremented,
    /// The document holds no reference to this shard (or there is no such shard): nothing
    /// changed.
    NotFound,
}

/// A reference or a record that may be an orphan, as [`ShardStore::stale`] lists it (the
/// wire's copy is `proto::StaleEntry`). Ordered as listed: references by key, then records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stale {
    /// `holder`'s reference to `shard`.
    Reference { shard: ShardId, holder: Holder },
    /// The record (manifest) stored under this key.
    Record([u8; 32]),
}

/// What one page of a scrub found. (The wire's copy is `proto::ScrubPage`.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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

/// Unique shards held and their logical size (each body counted once, whatever its refcount).
/// (The wire's copy is `proto::Usage`.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub shards: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum BodyLocation {
    /// In `inline-v1` under the same key.
    Inline,
    /// In `blobs/<hex id>`.
    File,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ShardRecord {
    format: u8,
    refcount: u64,
    len: u64,
    body: BodyLocation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UsageRecord {
    format: u8,
    shards: u64,
    bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FormatRecord {
    format: u8,
    store_format: u32,
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Record {
        what,
        detail: format!("cannot encode: {e}"),
    })
}

/// Decodes a record after checking its leading format byte.
fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    let (format, _) = postcard::take_from_bytes::<u8>(bytes).map_err(|e| StoreError::Record {
        what,
        detail: e.to_string(),
    })?;
    if format != RECORD_FORMAT {
        return Err(StoreError::Record {
            what,
            detail: format!("record format {format}, this build reads {RECORD_FORMAT}"),
        });
    }
    postcard::from_bytes(bytes).map_err(|e| StoreError::Record {
        what,
        detail: e.to_string(),
    })
}

fn decode_shard(bytes: &[u8]) -> Result<ShardRecord, StoreError> {
    let rec: ShardRecord = decode("shard", bytes)?;
    if rec.refcount == 0 {
        return Err(StoreError::Record {
            what: "shard",
            detail: "refcount 0 on a live row".into(),
        });
    }
    Ok(rec)
}

type WTable<'t, K> = Table<'t, K, &'static [u8]>;

/// Adds `holder`'s reference to `shard`: one more for an upload, the one for a document
/// if it has none. Returns how many references were added (0 or 1).
fn add_ref(
    refs: &mut Table<'_, &'static [u8; 65], u64>,
    shard: &ShardId,
    holder: &Holder,
) -> Result<u64, StoreError> {
    let key = holder.key(shard);
    let have = refs.get(&key)?.map_or(0, |v| v.value());
    match holder {
        Holder::Document(_) if have > 0 => Ok(0),
        _ => {
            refs.insert(&key, have.saturating_add(1))?;
            Ok(1)
        }
    }
}

fn read_usage(meta: &WTable<'_, &'static str>) -> Result<UsageRecord, StoreError> {
    match meta.get(META_USAGE)? {
        Some(v) => decode("usage", v.value()),
        None => Err(StoreError::Record {
            what: "usage",
            detail: "the usage row is missing".into(),
        }),
    }
}

fn write_usage(meta: &mut WTable<'_, &'static str>, u: &UsageRecord) -> Result<(), StoreError> {
    meta.insert(META_USAGE, encode("usage", u)?.as_slice())?;
    Ok(())
}

/// The durable shard store of one storage peer. See the module docs.
#[derive(Debug)]
pub struct ShardStore {
    dir: PathBuf,
    body_dir: PathBuf,
    tmp_dir: PathBuf,
    db: Database,
    inline_max: usize,
    locks: Box<[Mutex<()>]>,
    tmp_seq: AtomicU64,
}

impl ShardStore {
    /// Opens (creating if needed) the store in `dir`: checks the format, then removes body
    /// files without a committed row and leftover temp files, logging how many.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with_inline_max(dir, INLINE_MAX)
    }

    fn open_with_inline_max(dir: &Path, inline_max: usize) -> Result<Self, StoreError> {
        let body_dir = dir.join(BODY_DIR);
        let tmp_dir = body_dir.join(TMP_DIR);
        fs::create_dir_all(&tmp_dir).map_err(io_err(&tmp_dir))?;
        // The 256 sub-directories of `blobs/` are made on first use (see write_body_file).
        sync_dir(&body_dir)?;
        sync_dir(dir)?;

        let db_path = dir.join(DB_FILE);
        // redb's page cache lives in the process; the index is small and bodies above
        // INLINE_MAX live in files (the OS caches those), so a small cache suffices and
        // keeps many peers in one process within their memory budget.
        let db = Database::builder()
            .set_cache_size(REDB_CACHE_BYTES)
            .create(&db_path)?;
        init_tables(&db, &db_path)?;

        let store = ShardStore {
            dir: dir.to_path_buf(),
            body_dir,
            tmp_dir,
            db,
            inline_max,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            tmp_seq: AtomicU64::new(0),
        };
        store.remove_orphans()?;
        Ok(store)
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores `bytes` under `id`, durably, held by `holder`; if the body is already here,
    /// adds `holder`'s reference (a document's only if it has none). Refuses bytes that do
    /// not hash to `id` ([`StoreError::HashMismatch`], nothing changes).
    pub fn put(
        &self,
        id: &ShardId,
        bytes: &[u8],
        holder: Holder,
    ) -> Result<PutOutcome, StoreError> {
        let mut out = self.put_batch(&[(*id, bytes)], holder)?;
        Ok(out.pop().unwrap_or(PutOutcome::AlreadyPresent))
    }

    /// Like [`put`](Self::put) for many shards with ONE durable redb commit (group commit).
    /// All hashes are checked first: one mismatch refuses the whole batch and changes nothing.
    /// The same id may appear twice: the first is `Stored`, the second `AlreadyPresent`.
    pub fn put_batch(
        &self,
        items: &[(ShardId, &[u8])],
        holder: Holder,
    ) -> Result<Vec<PutOutcome>, StoreError> {
        for (id, bytes) in items {
            if !id.verifies(bytes) {
                return Err(StoreError::HashMismatch { id: *id });
            }
        }
        let prepared = items
            .iter()
            .map(|(id, bytes)| self.prepare(id, Bytes::copy_from_slice(bytes), holder))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.commit(&prepared, &[])?.0)
    }

    /// First half of a put, safe to run on many threads at once: checks the hash and, for a
    /// large body not stored yet, writes its file durably. Nothing is visible until
    /// [`commit`](Self::commit); a prepared body that is never committed is an orphan that
    /// the next `open` removes.
    pub fn prepare(
        &self,
        id: &ShardId,
        bytes: Bytes,
        holder: Holder,
    ) -> Result<Prepared, StoreError> {
        if !id.verifies(&bytes) {
            return Err(StoreError::HashMismatch { id: *id });
        }
        // A body file already here is re-hashed first: a put onto an id this peer holds is
        // acknowledged only with a good body behind it, so a corrupt or missing one is
        // replaced by the incoming verified bytes (atomically: temp file, then rename).
        if bytes.len() > self.inline_max && !self.body_file_verifies(id) {
            self.write_body_file(id, &bytes)?;
        }
        Ok(Prepared {
            id: *id,
            bytes,
            holder,
        })
    }

    /// Second half of a put: ONE durable redb transaction for all `shards` (each from
    /// [`prepare`](Self::prepare)) and all `blobs` (replicated records keyed by their BLAKE3
    /// hash; idempotent). Returns the outcome of each shard and each blob, in order.
    pub fn commit(
        &self,
        shards: &[Prepared],
        blobs: &[([u8; 32], &[u8])],
    ) -> Result<(Vec<PutOutcome>, Vec<PutOutcome>), StoreError> {
        for (key, bytes) in blobs {
            if !ShardId(*key).verifies(bytes) {
                return Err(StoreError::BlobHashMismatch { key: *key });
            }
        }
        if shards.is_empty() && blobs.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let _guards = self.lock_ids(shards.iter().map(|p| &p.id));
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut outcomes = Vec::with_capacity(shards.len());
        let mut blob_outcomes = Vec::with_capacity(blobs.len());
        let mut new_files = false;
        {
            let mut table = txn.open_table(SHARDS)?;
            let mut inline = txn.open_table(INLINE)?;
            let mut refs = txn.open_table(REFS)?;
            let mut times = txn.open_table(REF_TIMES)?;
            let mut meta = txn.open_table(META)?;
            let mut usage = read_usage(&meta)?;
            let now = crate::now_ms();
            for Prepared { id, bytes, holder } in shards {
                let existing = match table.get(&id.0)? {
                    Some(v) => Some(decode_shard(v.value())?),
                    None => None,
                };
                let added = add_ref(&mut refs, id, holder)?;
                times.insert(&holder.key(id), now)?;
                let (rec, outcome) = match existing {
                    Some(mut rec) => {
                        // The stored body must be good before this put is acknowledged:
                        // an inline one is checked here, a file one was by `prepare` (its
                        // file may only have gone since, by a quarantine racing this put).
                        match rec.body {
                            BodyLocation::Inline => {
                                let good =
                                    inline.get(&id.0)?.is_some_and(|v| id.verifies(v.value()));
                                if !good {
                                    warn!(shard = %id, "stored inline body was corrupt or missing; rewritten with the incoming verified bytes");
                                    inline.insert(&id.0, bytes.as_ref())?;
                                }
                            }
                            BodyLocation::File => {
                                if !self.body_path(id).exists() {
                                    self.write_body_file(id, bytes)?;
                                    new_files = true;
                                }
                            }
                        }
                        rec.refcount = rec.refcount.saturating_add(added);
                        (rec, PutOutcome::AlreadyPresent)
                    }
                    None => {
                        let body = if bytes.len() > self.inline_max {
                            // A delete racing between prepare and this commit may have
                            // unlinked the file (same content, same name): write it again.
                            // The stripe locks hold off further deletes until commit.
                            if !self.body_path(id).exists() {
                                self.write_body_file(id, bytes)?;
                            }
                            new_files = true;
                            BodyLocation::File
                        } else {
                            inline.insert(&id.0, bytes.as_ref())?;
                            BodyLocation::Inline
                        };
                        usage.shards += 1;
                        usage.bytes += bytes.len() as u64;
                        let rec = ShardRecord {
                            format: RECORD_FORMAT,
                            refcount: 1,
                            len: bytes.len() as u64,
                            body,
                        };
                        (rec, PutOutcome::Stored)
                    }
                };
                table.insert(&id.0, encode("shard", &rec)?.as_slice())?;
                outcomes.push(outcome);
            }
            write_usage(&mut meta, &usage)?;
            let mut records = txn.open_table(BLOBS)?;
            let mut record_times = txn.open_table(RECORD_TIMES)?;
            for (key, bytes) in blobs {
                // Stored again (a put retried, a replica rewritten): its time starts again.
                record_times.insert(key, now)?;
                // A record that no longer hashes to its key is replaced by the good bytes.
                let intact = records
                    .get(key)?
                    .is_some_and(|v| ShardId(*key).verifies(v.value()));
                if intact {
                    blob_outcomes.push(PutOutcome::AlreadyPresent);
                } else {
                    records.insert(key, *bytes)?;
                    blob_outcomes.push(PutOutcome::Stored);
                }
            }
        }
        // Bodies were fdatasync'd by `prepare`; one directory fsync makes their renames
        // durable before the rows that point at them commit.
        if new_files {
            sync_dir(&self.body_dir)?;
        }
        // If the commit fails, body files written above stay as orphans; the next `open`
        // removes them. Unlinking them here could race an ambiguous (durable) commit.
        txn.commit()?;
        Ok((outcomes, blob_outcomes))
    }

    /// The bytes of `id`, re-hashed: `Ok(None)` if absent, [`StoreError::Corrupt`] if the
    /// stored bytes (or body file) are damaged or missing. Never returns bad bytes.
    pub fn get(&self, id: &ShardId) -> Result<Option<Vec<u8>>, StoreError> {
        for attempt in 0..2 {
            let (rec, inline_bytes) = {
                let txn = self.db.begin_read()?;
                let shards = txn.open_table(SHARDS)?;
                let rec = match shards.get(&id.0)? {
                    Some(v) => decode_shard(v.value())?,
                    None => return Ok(None),
                };
                let inline_bytes = match rec.body {
                    BodyLocation::Inline => {
                        let inline = txn.open_table(INLINE)?;
                        inline.get(&id.0)?.map(|v| v.value().to_vec())
                    }
                    BodyLocation::File => None,
                };
                (rec, inline_bytes)
            };
            let bytes = match rec.body {
                BodyLocation::Inline => match inline_bytes {
                    Some(b) => b,
                    None => {
                        warn!(shard = %id, "shard row has no inline body");
                        return Err(StoreError::Corrupt { id: *id });
                    }
                },
                BodyLocation::File => {
                    let path = self.body_path(id);
                    match fs::read(&path) {
                        Ok(b) => b,
                        // A concurrent delete may have removed row and file after our read
                        // transaction: look at the row again before calling it corrupt.
                        Err(e) if e.kind() == io::ErrorKind::NotFound && attempt == 0 => continue,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            warn!(shard = %id, path = %path.display(), "shard body file is missing");
                            return Err(StoreError::Corrupt { id: *id });
                        }
                        Err(e) => return Err(io_err(&path)(e)),
                    }
                }
            };
            if bytes.len() as u64 != rec.len || !id.verifies(&bytes) {
                warn!(
                    shard = %id,
                    location = ?rec.body,
                    "stored shard failed its BLAKE3 check"
                );
                return Err(StoreError::Corrupt { id: *id });
            }
            return Ok(Some(bytes));
        }
        Err(StoreError::Corrupt { id: *id })
    }

    /// Whether a row for `id` is committed (does not read or verify the body).
    pub fn has(&self, id: &ShardId) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let shards = txn.open_table(SHARDS)?;
        Ok(shards.get(&id.0)?.is_some())
    }

    /// The refcount of `id`, `None` if absent.
    pub fn refcount(&self, id: &ShardId) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let shards = txn.open_table(SHARDS)?;
        match shards.get(&id.0)? {
            Some(v) => Ok(Some(decode_shard(v.value())?.refcount)),
            None => Ok(None),
        }
    }

    /// Drops `document`'s reference to `id`, if it holds one (else `NotFound`, nothing
    /// changes); with no reference left, removes the row (committed first) and then the body.
    pub fn delete(&self, id: &ShardId, document: &DocumentId) -> Result<DeleteOutcome, StoreError> {
        self.drop_refs(id, Some(Holder::Document(*document)), None)
    }

    /// Removes a shard and every reference to it (a corrupt copy found by
    /// [`ShardStore::scrub`]), so that repair writes it again, for each document that names
    /// it, from the other shards of its stripe.
    pub fn quarantine(&self, id: &ShardId) -> Result<DeleteOutcome, StoreError> {
        self.drop_refs(id, None, None)
    }

    /// References and records last added before `before_ms`, in order (references by key,
    /// then records) after `after`, looking at `scan` rows at most: the stale ones, and the
    /// last row looked at (pass it as `after` for the next page; `None` at the end).
    pub fn stale(
        &self,
        after: Option<Stale>,
        before_ms: u64,
        scan: usize,
    ) -> Result<(Vec<Stale>, Option<Stale>), StoreError> {
        let txn = self.db.begin_read()?;
        let mut found = Vec::new();
        let mut scanned = 0;
        let mut last = None;
        if !matches!(after, Some(Stale::Record(_))) {
            let times = txn.open_table(REF_TIMES)?;
            let from = match &after {
                Some(Stale::Reference { shard, holder }) => Bound::Excluded(holder.key(shard)),
                _ => Bound::Unbounded,
            };
            let range = match &from {
                Bound::Excluded(k) => {
                    times.range::<&[u8; 65]>((Bound::Excluded(k), Bound::Unbounded))?
                }
                _ => times.range::<&[u8; 65]>(..)?,
            };
            for entry in range {
                if scanned >= scan {
                    return Ok((found, last));
                }
                let (k, v) = entry?;
                let key = k.value();
                let mut shard = [0u8; 32];
                shard.copy_from_slice(&key[..32]);
                let stale = Stale::Reference {
                    shard: ShardId(shard),
                    holder: Holder::from_key(key)?,
                };
                if v.value() < before_ms {
                    found.push(stale);
                }
                last = Some(stale);
                scanned += 1;
            }
        }
        let times = txn.open_table(RECORD_TIMES)?;
        let after_record = match after {
            Some(Stale::Record(k)) => Some(k),
            _ => None,
        };
        let range = match &after_record {
            Some(k) => times.range::<&[u8; 32]>((Bound::Excluded(k), Bound::Unbounded))?,
            None => times.range::<&[u8; 32]>(..)?,
        };
        for entry in range {
            if scanned >= scan {
                return Ok((found, last));
            }
            let (k, v) = entry?;
            let stale = Stale::Record(*k.value());
            if v.value() < before_ms {
                found.push(stale);
            }
            last = Some(stale);
            scanned += 1;
        }
        Ok((found, None))
    }

    /// Drops `stale` if it is still older than `before_ms` (a put since then made it new
    /// again: kept, `NotFound`). A reference goes whole (an uploader's every upload of the
    /// shard), the body with the last reference; a record goes with its time.
    pub fn collect(&self, stale: &Stale, before_ms: u64) -> Result<DeleteOutcome, StoreError> {
        match stale {
            Stale::Reference { shard, holder } => {
                self.drop_refs(shard, Some(*holder), Some(before_ms))
            }
            Stale::Record(key) => {
                let mut txn = self.db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                let removed = {
                    let mut times = txn.open_table(RECORD_TIMES)?;
                    let old = times.get(key)?.is_some_and(|t| t.value() < before_ms);
                    if old {
                        times.remove(key)?;
                        txn.open_table(BLOBS)?.remove(key)?;
                    }
                    old
                };
                if removed {
                    txn.commit()?;
                    Ok(DeleteOutcome::Removed)
                } else {
                    txn.abort()?;
                    Ok(DeleteOutcome::NotFound)
                }
            }
        }
    }

    /// Turns one of `uploader`'s upload references to each of `shards` into `document`'s
    /// reference, in one durable transaction; a shard `document` already holds, or that
    /// `uploader` holds no upload reference to, is left as it is. Returns how many were
    /// bound. See the module docs for why this needs no proof that `document` lists them.
    pub fn bind(
        &self,
        uploader: &PublicId,
        document: &DocumentId,
        shards: &[ShardId],
    ) -> Result<u64, StoreError> {
        let _guards = self.lock_ids(shards.iter());
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let mut bound = 0;
        {
            let mut refs = txn.open_table(REFS)?;
            let mut times = txn.open_table(REF_TIMES)?;
            let now = crate::now_ms();
            let upload = Holder::Upload(*uploader);
            let doc = Holder::Document(*document);
            for shard in shards {
                let up_key = upload.key(shard);
                let uploads = refs.get(&up_key)?.map_or(0, |v| v.value());
                if uploads == 0 || refs.get(&doc.key(shard))?.is_some() {
                    continue;
                }
                if uploads > 1 {
                    refs.insert(&up_key, uploads - 1)?;
                } else {
                    refs.remove(&up_key)?;
                    times.remove(&up_key)?;
                }
                refs.insert(&doc.key(shard), 1)?;
                times.insert(&doc.key(shard), now)?;
                bound += 1;
            }
        }
        if bound > 0 {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(bound)
    }

    /// Whether `document` holds a reference to `id` here (the body's row is there too).
    pub fn has_ref(&self, id: &ShardId, document: &DocumentId) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let refs = txn.open_table(REFS)?;
        Ok(refs.get(&Holder::Document(*document).key(id))?.is_some())
    }

    /// Every holder of a reference to `id`, with its count (1 for a document).
    pub fn holders(&self, id: &ShardId) -> Result<Vec<(Holder, u64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let refs = txn.open_table(REFS)?;
        let (low, high) = ref_range(id);
        let mut out = Vec::new();
        for entry in refs.range::<&[u8; 65]>(&low..=&high)? {
            let (k, v) = entry?;
            out.push((Holder::from_key(k.value())?, v.value()));
        }
        Ok(out)
    }

    /// Re-hashes up to `limit` shards after `after` (in id order, as `list_from`), and
    /// quarantines every one that does not verify. The page ends at `last`.
    pub fn scrub(&self, after: Option<ShardId>, limit: usize) -> Result<ScrubPage, StoreError> {
        let ids = self.list_from(after, limit)?;
        let mut page = ScrubPage {
            last: ids.last().copied(),
            ..ScrubPage::default()
        };
        for id in ids {
            page.checked += 1;
            match self.get(&id) {
                Ok(Some(bytes)) => page.bytes += bytes.len() as u64,
                Ok(None) => {}
                Err(StoreError::Corrupt { .. }) => {
                    warn!(shard = %id, "scrub: corrupt shard quarantined for repair");
                    self.quarantine(&id)?;
                    page.corrupt.push(id);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(page)
    }

    /// Drops `holder`'s reference (`None`: every reference, a quarantine); with
    /// `older_than`, only if it was last added before that time (ms).
    fn drop_refs(
        &self,
        id: &ShardId,
        holder: Option<Holder>,
        older_than: Option<u64>,
    ) -> Result<DeleteOutcome, StoreError> {
        let _guards = self.lock_ids(std::iter::once(id));
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let (outcome, had_file) = {
            let mut shards = txn.open_table(SHARDS)?;
            let mut rec = match shards.get(&id.0)? {
                Some(v) => decode_shard(v.value())?,
                None => return Ok(DeleteOutcome::NotFound),
            };
            let mut refs = txn.open_table(REFS)?;
            let mut times = txn.open_table(REF_TIMES)?;
            let mut dropped = rec.refcount;
            if let Some(holder) = holder {
                let key = holder.key(id);
                if let Some(before) = older_than {
                    let old = times.get(&key)?.is_some_and(|t| t.value() < before);
                    if !old {
                        return Ok(DeleteOutcome::NotFound);
                    }
                }
                match refs.remove(&key)? {
                    Some(count) => dropped = count.value(),
                    None => return Ok(DeleteOutcome::NotFound),
                }
                times.remove(&key)?;
            } else {
                let (low, high) = ref_range(id);
                refs.retain_in::<&[u8; 65], _>(&low..=&high, |_, _| false)?;
                times.retain_in::<&[u8; 65], _>(&low..=&high, |_, _| false)?;
            }
            if rec.refcount > dropped && holder.is_some() {
                rec.refcount -= dropped;
                shards.insert(&id.0, encode("shard", &rec)?.as_slice())?;
                (DeleteOutcome::Decremented, false)
            } else {
                shards.remove(&id.0)?;
                if rec.body == BodyLocation::Inline {
                    txn.open_table(INLINE)?.remove(&id.0)?;
                }
                let mut meta = txn.open_table(META)?;
                let mut usage = read_usage(&meta)?;
                usage.shards = usage.shards.saturating_sub(1);
                usage.bytes = usage.bytes.saturating_sub(rec.len);
                write_usage(&mut meta, &usage)?;
                (DeleteOutcome::Removed, rec.body == BodyLocation::File)
            }
        };
        txn.commit()?;
        if had_file {
            let path = self.body_path(id);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // The row is gone, so the delete happened; the file is an orphan that the
                // next `open` removes.
                Err(e) => {
                    warn!(shard = %id, path = %path.display(), error = %e, "cannot remove body file")
                }
            }
        }
        Ok(outcome)
    }

    /// Every stored shard id, in id order.
    pub fn list(&self) -> Result<Vec<ShardId>, StoreError> {
        self.list_from(None, usize::MAX)
    }

    /// Up to `limit` shard ids strictly after `after` (from the start if `None`), in id
    /// order. Page through everything by passing the last id of one page to the next call.
    pub fn list_from(
        &self,
        after: Option<ShardId>,
        limit: usize,
    ) -> Result<Vec<ShardId>, StoreError> {
        let txn = self.db.begin_read()?;
        let shards = txn.open_table(SHARDS)?;
        keys_after(&shards, after.map(|a| a.0), limit).map(|v| v.into_iter().map(ShardId).collect())
    }

    /// Unique shards and their logical bytes, from the counter row kept in every commit.
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        match meta.get(META_USAGE)? {
            Some(v) => {
                let u: UsageRecord = decode("usage", v.value())?;
                Ok(Usage {
                    shards: u.shards,
                    bytes: u.bytes,
                })
            }
            None => Err(StoreError::Record {
                what: "usage",
                detail: "the usage row is missing".into(),
            }),
        }
    }

    /// Rewrites the body of a shard that is present (e.g. after `get` said
    /// [`StoreError::Corrupt`] and the bytes were rebuilt elsewhere), keeping its refcount.
    /// Returns `false` and changes nothing if the shard is not present.
    pub fn repair(&self, id: &ShardId, bytes: &[u8]) -> Result<bool, StoreError> {
        if !id.verifies(bytes) {
            return Err(StoreError::HashMismatch { id: *id });
        }
        let _guards = self.lock_ids(std::iter::once(id));
        let Some(rec) = self.record(id)? else {
            return Ok(false);
        };
        match rec.body {
            BodyLocation::File => self.write_body_file(id, bytes)?,
            BodyLocation::Inline => {
                let mut txn = self.db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                txn.open_table(INLINE)?.insert(&id.0, bytes)?;
                txn.commit()?;
            }
        }
        info!(shard = %id, "repaired shard body");
        Ok(true)
    }

    /// Stores a small record (a manifest) under `key` = BLAKE3(bytes), durably. Idempotent:
    /// storing it again is `AlreadyPresent`; records have no refcount. A stored record that
    /// no longer hashes to its key (a flipped bit) is replaced: `Stored`.
    pub fn put_blob(&self, key: &[u8; 32], bytes: &[u8]) -> Result<PutOutcome, StoreError> {
        let (_, mut outcomes) = self.commit(&[], &[(*key, bytes)])?;
        Ok(outcomes.pop().unwrap_or(PutOutcome::AlreadyPresent))
    }

    /// The record under `key`, re-hashed ([`StoreError::CorruptBlob`] on mismatch).
    pub fn get_blob(&self, key: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        let bytes = {
            let txn = self.db.begin_read()?;
            let blobs = txn.open_table(BLOBS)?;
            match blobs.get(key)? {
                Some(v) => v.value().to_vec(),
                None => return Ok(None),
            }
        };
        if !ShardId(*key).verifies(&bytes) {
            warn!(record = %hex::encode(key), "stored record failed its BLAKE3 check");
            return Err(StoreError::CorruptBlob { key: *key });
        }
        Ok(Some(bytes))
    }

    /// Whether a record is stored under `key`.
    pub fn has_blob(&self, key: &[u8; 32]) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let blobs = txn.open_table(BLOBS)?;
        Ok(blobs.get(key)?.is_some())
    }

    /// Removes the record under `key`; `false` if there was none.
    pub fn delete_blob(&self, key: &[u8; 32]) -> Result<bool, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let removed = txn.open_table(BLOBS)?.remove(key)?.is_some();
        txn.open_table(RECORD_TIMES)?.remove(key)?;
        if removed {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok(removed)
    }

    /// Up to `limit` record keys strictly after `after`, in key order.
    pub fn list_blobs_from(
        &self,
        after: Option<[u8; 32]>,
        limit: usize,
    ) -> Result<Vec<[u8; 32]>, StoreError> {
        let txn = self.db.begin_read()?;
        let blobs = txn.open_table(BLOBS)?;
        keys_after(&blobs, after, limit)
    }

    /// TEST AID, not for production use: flips the lowest bit of the first byte of the
    /// record under `key`, bypassing every check. Returns `false` if there is none.
    #[doc(hidden)]
    pub fn corrupt_blob_for_test(&self, key: &[u8; 32]) -> Result<bool, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut blobs = txn.open_table(BLOBS)?;
            let mut bytes = match blobs.get(key)? {
                Some(v) if !v.value().is_empty() => v.value().to_vec(),
                _ => return Ok(false),
            };
            bytes[0] ^= 1;
            blobs.insert(key, bytes.as_slice())?;
        }
        txn.commit()?;
        Ok(true)
    }

    /// The committed record of `id`, if any.
    fn record(&self, id: &ShardId) -> Result<Option<ShardRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let shards = txn.open_table(SHARDS)?;
        match shards.get(&id.0)? {
            Some(v) => Ok(Some(decode_shard(v.value())?)),
            None => Ok(None),
        }
    }

    /// TEST AID, not for production use: flips the lowest bit of byte
    /// `byte_index % len` of the stored body of `id` in place (the inline row or the body
    /// file), bypassing every check, to simulate disk corruption in tests of other modules.
    /// Returns `false` if the shard is not present.
    #[doc(hidden)]
    pub fn corrupt_for_test(&self, id: &ShardId, byte_index: usize) -> Result<bool, StoreError> {
        let _guards = self.lock_ids(std::iter::once(id));
        let Some(rec) = self.record(id)? else {
            return Ok(false);
        };
        if rec.len == 0 {
            return Ok(false);
        }
        let index = (byte_index as u64) % rec.len;
        match rec.body {
            BodyLocation::Inline => {
                let mut txn = self.db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                {
                    let mut inline = txn.open_table(INLINE)?;
                    let mut body = match inline.get(&id.0)? {
                        Some(v) => v.value().to_vec(),
                        None => return Ok(false),
                    };
                    if let Some(b) = body.get_mut(index as usize) {
                        *b ^= 1;
                    }
                    inline.insert(&id.0, body.as_slice())?;
                }
                txn.commit()?;
            }
            BodyLocation::File => {
                let path = self.body_path(id);
                let e = io_err(&path);
                let mut f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(e)?;
                let mut byte = [0u8; 1];
                f.seek(SeekFrom::Start(index)).map_err(io_err(&path))?;
                f.read_exact(&mut byte).map_err(io_err(&path))?;
                byte[0] ^= 1;
                f.seek(SeekFrom::Start(index)).map_err(io_err(&path))?;
                f.write_all(&byte).map_err(io_err(&path))?;
                f.sync_data().map_err(io_err(&path))?;
            }
        }
        Ok(true)
    }

    /// Whether the body file of `id` is there and hashes to `id`; a file that does not is
    /// logged (a put then writes the incoming verified bytes over it).
    fn body_file_verifies(&self, id: &ShardId) -> bool {
        let path = self.body_path(id);
        match fs::read(&path) {
            Ok(bytes) if id.verifies(&bytes) => true,
            Ok(_) => {
                warn!(shard = %id, path = %path.display(), "stored body file is corrupt; rewritten with the incoming verified bytes");
                false
            }
            Err(_) => false,
        }
    }

    fn body_path(&self, id: &ShardId) -> PathBuf {
        self.body_dir.join(id.to_string())
    }

    /// Takes the stripe locks of `ids` in ascending order (no deadlock between batches).
    fn lock_ids<'a>(&self, ids: impl Iterator<Item = &'a ShardId>) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = ids.map(|id| usize::from(id.0[0]) % LOCK_STRIPES).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes
            .into_iter()
            .map(|s| self.locks[s].lock().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }

    /// Temp file (written past the page cache, see `body_io`), fdatasync, rename into
    /// place; the directory fsync is the commit's.
    fn write_body_file(&self, id: &ShardId, bytes: &[u8]) -> Result<(), StoreError> {
        let seq = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp_dir.join(format!("{id}.{seq}.tmp"));
        let result = (|| {
            body_io::write_new(&tmp, bytes).map_err(io_err(&tmp))?;
            let path = self.body_path(id);
            // The rename is made durable by the one directory fsync of the commit that
            // records this body (see `commit`), not here: one fsync per batch, not per shard.
            fs::rename(&tmp, &path).map_err(io_err(&path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes temp files and body files that have no committed `File` row.
    fn remove_orphans(&self) -> Result<(), StoreError> {
        let mut temps = 0u64;
        for entry in fs::read_dir(&self.tmp_dir).map_err(io_err(&self.tmp_dir))? {
            let path = entry.map_err(io_err(&self.tmp_dir))?.path();
            remove_quietly(&path);
            temps += 1;
        }

        let txn = self.db.begin_read()?;
        let shards = txn.open_table(SHARDS)?;
        let mut orphans = 0u64;
        let mut unknown = 0u64;
        for entry in fs::read_dir(&self.body_dir).map_err(io_err(&self.body_dir))? {
            let entry = entry.map_err(io_err(&self.body_dir))?;
            let path = entry.path();
            if path == self.tmp_dir {
                continue;
            }
            let id = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<ShardId>().ok())
                .filter(|_| path.is_file());
            let Some(id) = id else {
                unknown += 1;
                warn!(path = %path.display(), "unexpected entry in the shard body directory; left alone");
                continue;
            };
            let live = match shards.get(&id.0)? {
                Some(v) => decode_shard(v.value())?.body == BodyLocation::File,
                None => false,
            };
            if !live {
                remove_quietly(&path);
                orphans += 1;
            }
        }
        if temps + orphans + unknown > 0 {
            info!(
                dir = %self.dir.display(),
                orphans, temps, unknown, "shard store opened; removed orphan body files and temp files"
            );
        }
        Ok(())
    }
}

fn remove_quietly(path: &Path) {
    let r = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    if let Err(e) = r {
        warn!(path = %path.display(), error = %e, "cannot remove leftover file");
    }
}

fn keys_after(
    table: &impl ReadableTable<&'static [u8; 32], &'static [u8]>,
    after: Option<[u8; 32]>,
    limit: usize,
) -> Result<Vec<[u8; 32]>, StoreError> {
    let lower = match &after {
        Some(a) => Bound::Excluded(a),
        None => Bound::Unbounded,
    };
    let mut out = Vec::new();
    for entry in table.range::<&[u8; 32]>((lower, Bound::Unbounded))? {
        if out.len() >= limit {
            break;
        }
        let (k, _) = entry?;
        out.push(*k.value());
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Creates the tables and meta rows of a new store, or checks the format of an existing one.
fn init_tables(db: &Database, db_path: &Path) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    for t in txn.list_tables()? {
        let name = t.name();
        for family in TABLE_FAMILIES {
            if let Some(version) = name.strip_prefix(family)
                && version != TABLE_VERSION
            {
                return Err(StoreError::UnsupportedFormat {
                    path: db_path.to_path_buf(),
                    found: format!("table {name}"),
                    supported: STORE_FORMAT,
                });
            }
        }
    }
    {
        txn.open_table(SHARDS)?;
        txn.open_table(INLINE)?;
        txn.open_table(BLOBS)?;
        txn.open_table(REFS)?;
        txn.open_table(REF_TIMES)?;
        txn.open_table(RECORD_TIMES)?;
        let mut meta = txn.open_table(META)?;
        let existing = meta.get(META_FORMAT)?.map(|v| v.value().to_vec());
        match existing {
            Some(bytes) => {
                let found = decode::<FormatRecord>("format", &bytes)
                    .map(|f| f.store_format)
                    .map_err(|_| StoreError::UnsupportedFormat {
                        path: db_path.to_path_buf(),
                        found: "an unreadable format row".into(),
                        supported: STORE_FORMAT,
                    })?;
                if found == 3 {
                    // Format 3 had no times: every reference and record starts its grace
                    // period now (`ops::collect` waits that long before it looks at them).
                    let now = crate::now_ms();
                    let refs = txn.open_table(REFS)?;
                    let mut times = txn.open_table(REF_TIMES)?;
                    for entry in refs.iter()? {
                        times.insert(entry?.0.value(), now)?;
                    }
                    let blobs = txn.open_table(BLOBS)?;
                    let mut record_times = txn.open_table(RECORD_TIMES)?;
                    for entry in blobs.iter()? {
                        record_times.insert(entry?.0.value(), now)?;
                    }
                    let f = FormatRecord {
                        format: RECORD_FORMAT,
                        store_format: STORE_FORMAT,
                    };
                    meta.insert(META_FORMAT, encode("format", &f)?.as_slice())?;
                    info!(path = %db_path.display(), "shard store migrated from format 3 to 4");
                } else if found > STORE_FORMAT {
                    return Err(StoreError::Newer {
                        path: db_path.to_path_buf(),
                        found,
                        supported: STORE_FORMAT,
                    });
                } else if found != STORE_FORMAT {
                    return Err(StoreError::UnsupportedFormat {
                        path: db_path.to_path_buf(),
                        found: found.to_string(),
                        supported: STORE_FORMAT,
                    });
                }
            }
            None => {
                let f = FormatRecord {
                    format: RECORD_FORMAT,
                    store_format: STORE_FORMAT,
                };
                meta.insert(META_FORMAT, encode("format", &f)?.as_slice())?;
            }
        }
        if meta.get(META_USAGE)?.is_none() {
            let u = UsageRecord {
                format: RECORD_FORMAT,
                shards: 0,
                bytes: 0,
            };
            write_usage(&mut meta, &u)?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seed: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof()
            .fill(&mut out);
        out
    }

    fn open_tmp() -> (tempfile::TempDir, ShardStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn did(n: u8) -> DocumentId {
        DocumentId([n; 32])
    }

    fn doc(n: u8) -> Holder {
        Holder::Document(did(n))
    }

    fn upload() -> Holder {
        Holder::Upload(
            crate::identity::Identity::from_seed([9; 32], crate::identity::Role::Department)
                .public(),
        )
    }

    const SMALL: usize = 1000;
    const LARGE: usize = INLINE_MAX + 1;

    #[test]
    fn store_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<ShardStore>();
    }

    #[test]
    fn round_trip_small_and_large() {
        let (_d, s) = open_tmp();
        for (seed, len) in [
            (1, 0),
            (2, SMALL),
            (3, INLINE_MAX),
            (4, LARGE),
            (5, 300_000),
        ] {
            let b = data(seed, len);
            let id = ShardId::of(&b);
            assert!(!s.has(&id).unwrap());
            assert_eq!(s.get(&id).unwrap(), None);
            assert_eq!(s.put(&id, &b, doc(1)).unwrap(), PutOutcome::Stored);
            assert!(s.has(&id).unwrap());
            assert_eq!(s.get(&id).unwrap().as_deref(), Some(&b[..]));
            assert_eq!(s.body_path(&id).exists(), len > INLINE_MAX, "len {len}");
        }
    }

    #[test]
    fn references_belong_to_documents_and_go_once() {
        let (_d, s) = open_tmp();
        for len in [SMALL, LARGE] {
            let b = data(len as u64, len);
            let id = ShardId::of(&b);
            assert_eq!(s.put(&id, &b, doc(1)).unwrap(), PutOutcome::Stored);
            // A retried put of the same document adds nothing.
            assert_eq!(s.put(&id, &b, doc(1)).unwrap(), PutOutcome::AlreadyPresent);
            assert_eq!(s.refcount(&id).unwrap(), Some(1));
            // Another document sharing the bytes holds its own reference.
            assert_eq!(s.put(&id, &b, doc(2)).unwrap(), PutOutcome::AlreadyPresent);
            assert_eq!(s.refcount(&id).unwrap(), Some(2));
            // A document that holds none drops nothing, however often it asks.
            for _ in 0..3 {
                assert_eq!(s.delete(&id, &did(3)).unwrap(), DeleteOutcome::NotFound);
            }
            assert_eq!(s.refcount(&id).unwrap(), Some(2));
            assert_eq!(s.delete(&id, &did(1)).unwrap(), DeleteOutcome::Decremented);
            // Only once: document 1's second delete does not take document 2's reference.
            assert_eq!(s.delete(&id, &did(1)).unwrap(), DeleteOutcome::NotFound);
            assert!(s.has_ref(&id, &did(2)).unwrap());
            assert!(!s.has_ref(&id, &did(1)).unwrap());
            assert_eq!(s.get(&id).unwrap().as_deref(), Some(&b[..]));
            assert_eq!(s.holders(&id).unwrap(), vec![(doc(2), 1)]);
            assert_eq!(s.delete(&id, &did(2)).unwrap(), DeleteOutcome::Removed);
            assert_eq!(s.get(&id).unwrap(), None);
            assert!(!s.has(&id).unwrap());
            assert!(!s.body_path(&id).exists());
            assert!(s.holders(&id).unwrap().is_empty());
            assert_eq!(s.delete(&id, &did(2)).unwrap(), DeleteOutcome::NotFound);
        }
        assert_eq!(s.usage().unwrap(), Usage::default());
    }

    #[test]
    fn upload_references_bind_to_a_document_once_and_only_the_uploaders() {
        let (_d, s) = open_tmp();
        let other = Holder::Upload(
            crate::identity::Identity::from_seed([8; 32], crate::identity::Role::Department)
                .public(),
        );
        let Holder::Upload(me) = upload() else {
            unreachable!()
        };
        let Holder::Upload(them) = other else {
            unreachable!()
        };
        let b = data(90, LARGE);
        let id = ShardId::of(&b);
        // Two puts by the same key (two documents with the same bytes, ids not known yet).
        s.put(&id, &b, upload()).unwrap();
        s.put(&id, &b, upload()).unwrap();
        s.put(&id, &b, other).unwrap();
        assert_eq!(s.refcount(&id).unwrap(), Some(3));
        assert_eq!(s.bind(&me, &did(1), &[id]).unwrap(), 1);
        // Binding the same document again takes no second upload reference.
        assert_eq!(s.bind(&me, &did(1), &[id]).unwrap(), 0);
        assert_eq!(s.bind(&me, &did(2), &[id]).unwrap(), 1);
        // Nothing of mine is left to bind: another key's upload is not mine to take.
        assert_eq!(s.bind(&me, &did(3), &[id]).unwrap(), 0);
        assert_eq!(s.refcount(&id).unwrap(), Some(3));
        let mut holders = s.holders(&id).unwrap();
        holders.sort_by_key(|(h, _)| format!("{h:?}"));
        assert_eq!(holders.len(), 3, "{holders:?}");
        assert!(holders.contains(&(doc(1), 1)) && holders.contains(&(doc(2), 1)));
        assert!(holders.contains(&(other, 1)));
        assert_eq!(s.bind(&them, &did(4), &[id]).unwrap(), 1);
        for d in [1, 2] {
            assert_eq!(s.delete(&id, &did(d)).unwrap(), DeleteOutcome::Decremented);
        }
        assert_eq!(s.delete(&id, &did(4)).unwrap(), DeleteOutcome::Removed);
        assert!(!s.has(&id).unwrap());
        // A quarantine drops every reference with the body.
        s.put(&id, &b, doc(1)).unwrap();
        s.put(&id, &b, upload()).unwrap();
        assert_eq!(s.quarantine(&id).unwrap(), DeleteOutcome::Removed);
        assert!(s.holders(&id).unwrap().is_empty());
        assert_eq!(s.usage().unwrap(), Usage::default());
    }

    #[test]
    fn hash_mismatch_changes_nothing() {
        let (_d, s) = open_tmp();
        for len in [SMALL, LARGE] {
            let b = data(7, len);
            let wrong = ShardId::of(b"something else");
            let err = s.put(&wrong, &b, doc(1)).unwrap_err();
            assert!(matches!(err, StoreError::HashMismatch { id } if id == wrong));
            assert!(!s.has(&wrong).unwrap());
            assert!(!s.body_path(&wrong).exists());
        }
        // A batch with one bad item stores nothing.
        let good = data(8, SMALL);
        let bad = data(9, SMALL);
        let items = [
            (ShardId::of(&good), &good[..]),
            (ShardId::of(b"x"), &bad[..]),
        ];
        assert!(matches!(
            s.put_batch(&items, upload()),
            Err(StoreError::HashMismatch { .. })
        ));
        assert!(s.list().unwrap().is_empty());
        assert_eq!(s.usage().unwrap(), Usage::default());
        assert_eq!(fs::read_dir(&s.tmp_dir).unwrap().count(), 0);
    }

    #[test]
    fn corruption_is_detected_never_returned() {
        let (_d, s) = open_tmp();
        for len in [SMALL, LARGE] {
            let b = data(10 + len as u64, len);
            let id = ShardId::of(&b);
            s.put(&id, &b, doc(1)).unwrap();
            assert!(s.corrupt_for_test(&id, 123).unwrap());
            assert!(matches!(s.get(&id), Err(StoreError::Corrupt { id: c }) if c == id));
            // repair puts the right bytes back, keeping the refcount.
            assert!(s.repair(&id, &b).unwrap());
            assert_eq!(s.get(&id).unwrap().as_deref(), Some(&b[..]));
            assert_eq!(s.refcount(&id).unwrap(), Some(1));
        }
        assert!(!s.corrupt_for_test(&ShardId::of(b"absent"), 0).unwrap());
    }

    #[test]
    fn a_put_onto_a_corrupt_or_missing_body_rewrites_it_before_acknowledging() {
        let (_d, s) = open_tmp();
        for (n, len) in [SMALL, LARGE].into_iter().enumerate() {
            let b = data(20 + len as u64, len);
            let id = ShardId::of(&b);
            s.put(&id, &b, doc(1)).unwrap();
            assert!(s.corrupt_for_test(&id, 77).unwrap());
            // Another holder's put, and a retried put of the same holder: both rewrite.
            assert_eq!(s.put(&id, &b, doc(2)).unwrap(), PutOutcome::AlreadyPresent);
            assert_eq!(s.get(&id).unwrap().as_deref(), Some(&b[..]));
            assert_eq!(s.refcount(&id).unwrap(), Some(2));
            assert!(s.corrupt_for_test(&id, 78).unwrap());
            s.put(&id, &b, doc(2)).unwrap();
            assert_eq!(s.get(&id).unwrap().as_deref(), Some(&b[..]), "len {len}");
            assert_eq!(s.refcount(&id).unwrap(), Some(2));
            if n == 1 {
                fs::remove_file(s.body_path(&id)).unwrap();
                s.put(&id, &b, upload()).unwrap();
                assert_eq!(s.get(&id).unwrap().as_deref(), Some(&b[..]));
            }
        }
    }

    #[test]
    fn missing_body_file_reads_as_corrupt() {
        let (_d, s) = open_tmp();
        let b = data(11, LARGE);
        let id = ShardId::of(&b);
        s.put(&id, &b, doc(1)).unwrap();
        fs::remove_file(s.body_path(&id)).unwrap();
        assert!(matches!(s.get(&id), Err(StoreError::Corrupt { .. })));
        // A truncated file is caught too.
        s.repair(&id, &b).unwrap();
        fs::write(s.body_path(&id), &b[..100]).unwrap();
        assert!(matches!(s.get(&id), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn reopen_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let small = data(20, SMALL);
        let large = data(21, LARGE);
        let manifest = b"a manifest".to_vec();
        let key = *blake3::hash(&manifest).as_bytes();
        {
            let s = ShardStore::open(dir.path()).unwrap();
            s.put(&ShardId::of(&small), &small, doc(1)).unwrap();
            s.put(&ShardId::of(&large), &large, doc(1)).unwrap();
            s.put(&ShardId::of(&large), &large, doc(2)).unwrap();
            s.put_blob(&key, &manifest).unwrap();
        }
        let s = ShardStore::open(dir.path()).unwrap();
        assert_eq!(s.get(&ShardId::of(&small)).unwrap().unwrap(), small);
        assert_eq!(s.get(&ShardId::of(&large)).unwrap().unwrap(), large);
        assert_eq!(s.refcount(&ShardId::of(&large)).unwrap(), Some(2));
        assert_eq!(s.get_blob(&key).unwrap().unwrap(), manifest);
        assert_eq!(
            s.usage().unwrap(),
            Usage {
                shards: 2,
                bytes: (SMALL + LARGE) as u64
            }
        );
    }

    #[test]
    fn orphans_and_temps_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let kept = data(30, LARGE);
        let orphan = data(31, LARGE);
        let (kept_id, orphan_id) = (ShardId::of(&kept), ShardId::of(&orphan));
        let (orphan_path, tmp_path, stray_path) = {
            let s = ShardStore::open(dir.path()).unwrap();
            s.put(&kept_id, &kept, doc(1)).unwrap();
            let orphan_path = s.body_path(&orphan_id);
            fs::write(&orphan_path, &orphan).unwrap();
            let tmp_path = s.tmp_dir.join("half-written.tmp");
            fs::write(&tmp_path, b"junk").unwrap();
            let stray_path = s.body_dir.join("README");
            fs::write(&stray_path, b"not ours").unwrap();
            (orphan_path, tmp_path, stray_path)
        };
        let s = ShardStore::open(dir.path()).unwrap();
        assert!(!orphan_path.exists());
        assert!(!tmp_path.exists());
        assert!(stray_path.exists(), "unknown files are left alone");
        assert!(s.body_path(&kept_id).exists());
        assert_eq!(s.get(&kept_id).unwrap().unwrap(), kept);
        assert!(!s.has(&orphan_id).unwrap());
    }

    #[test]
    fn usage_counts_unique_bytes() {
        let (_d, s) = open_tmp();
        let a = data(40, SMALL);
        let b = data(41, LARGE);
        let (ia, ib) = (ShardId::of(&a), ShardId::of(&b));
        s.put(&ia, &a, doc(1)).unwrap();
        s.put(&ia, &a, doc(2)).unwrap();
        s.put(&ib, &b, doc(1)).unwrap();
        let total = (SMALL + LARGE) as u64;
        assert_eq!(
            s.usage().unwrap(),
            Usage {
                shards: 2,
                bytes: total
            }
        );
        s.delete(&ia, &did(1)).unwrap();
        assert_eq!(s.usage().unwrap().bytes, total);
        s.delete(&ia, &did(2)).unwrap();
        assert_eq!(
            s.usage().unwrap(),
            Usage {
                shards: 1,
                bytes: LARGE as u64
            }
        );
        s.delete(&ib, &did(1)).unwrap();
        assert_eq!(s.usage().unwrap(), Usage::default());
    }

    #[test]
    fn put_batch_group_commit() {
        let (_d, s) = open_tmp();
        let bodies: Vec<Vec<u8>> = (0..6)
            .map(|i| data(50 + i, if i % 2 == 0 { SMALL } else { LARGE }))
            .collect();
        let mut items: Vec<(ShardId, &[u8])> =
            bodies.iter().map(|b| (ShardId::of(b), &b[..])).collect();
        items.push(items[1]); // the same id twice in one batch
        let out = s.put_batch(&items, upload()).unwrap();
        let mut expected = vec![PutOutcome::Stored; 6];
        expected.push(PutOutcome::AlreadyPresent);
        assert_eq!(out, expected);
        assert_eq!(s.refcount(&items[1].0).unwrap(), Some(2));
        for (id, b) in &items {
            assert_eq!(s.get(id).unwrap().as_deref(), Some(*b));
        }
        let again = s.put_batch(&items[..2], upload()).unwrap();
        assert_eq!(again, vec![PutOutcome::AlreadyPresent; 2]);
        assert_eq!(s.usage().unwrap().shards, 6);
        assert_eq!(s.put_batch(&[], upload()).unwrap(), vec![]);
    }

    #[test]
    fn list_and_pages() {
        let (_d, s) = open_tmp();
        let mut ids: Vec<ShardId> = (0..25)
            .map(|i| {
                let b = data(60 + i, 10);
                let id = ShardId::of(&b);
                s.put(&id, &b, doc(1)).unwrap();
                id
            })
            .collect();
        ids.sort();
        assert_eq!(s.list().unwrap(), ids);
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = s.list_from(after, 7).unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().copied();
            paged.extend(page);
        }
        assert_eq!(paged, ids);
    }

    #[test]
    fn a_corrupt_record_is_never_served_and_a_put_of_the_good_bytes_replaces_it() {
        let (_d, s) = open_tmp();
        let m = b"manifest bytes".to_vec();
        let key = *blake3::hash(&m).as_bytes();
        assert!(!s.corrupt_blob_for_test(&key).unwrap());
        s.put_blob(&key, &m).unwrap();
        assert!(s.corrupt_blob_for_test(&key).unwrap());
        assert!(matches!(
            s.get_blob(&key),
            Err(StoreError::CorruptBlob { .. })
        ));
        assert_eq!(s.put_blob(&key, &m).unwrap(), PutOutcome::Stored);
        assert_eq!(s.get_blob(&key).unwrap().unwrap(), m);
        assert_eq!(s.put_blob(&key, &m).unwrap(), PutOutcome::AlreadyPresent);
    }

    #[test]
    fn blob_round_trip() {
        let (_d, s) = open_tmp();
        let m = b"manifest bytes".to_vec();
        let key = *blake3::hash(&m).as_bytes();
        assert_eq!(s.get_blob(&key).unwrap(), None);
        assert_eq!(s.put_blob(&key, &m).unwrap(), PutOutcome::Stored);
        assert_eq!(s.put_blob(&key, &m).unwrap(), PutOutcome::AlreadyPresent);
        assert!(s.has_blob(&key).unwrap());
        assert_eq!(s.get_blob(&key).unwrap().unwrap(), m);
        assert_eq!(s.list_blobs_from(None, 10).unwrap(), vec![key]);
        assert!(matches!(
            s.put_blob(&[0; 32], &m),
            Err(StoreError::BlobHashMismatch { .. })
        ));
        assert!(s.delete_blob(&key).unwrap());
        assert!(!s.delete_blob(&key).unwrap());
        assert_eq!(s.get_blob(&key).unwrap(), None);
        // Shards and records are separate namespaces.
        assert_eq!(s.usage().unwrap(), Usage::default());
    }

    #[test]
    fn concurrent_puts_and_deletes_stay_consistent() {
        let (_d, s) = open_tmp();
        let s = std::sync::Arc::new(s);
        let bodies: Vec<Vec<u8>> = (0..4).map(|i| data(70 + i, LARGE)).collect();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                let bodies = bodies.clone();
                std::thread::spawn(move || {
                    for round in 0..5 {
                        let b = &bodies[(t + round) % bodies.len()];
                        let id = ShardId::of(b);
                        s.put(&id, b, doc(1)).unwrap();
                        assert_eq!(s.get(&id).unwrap().as_deref(), Some(&b[..]));
                        s.delete(&id, &did(1)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(s.list().unwrap().is_empty());
        assert_eq!(s.usage().unwrap(), Usage::default());
        for b in &bodies {
            assert!(!s.body_path(&ShardId::of(b)).exists());
        }
    }

    #[test]
    fn unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(ShardStore::open(dir.path()).unwrap());
        {
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                let f = FormatRecord {
                    format: RECORD_FORMAT,
                    store_format: 99,
                };
                meta.insert(META_FORMAT, encode("format", &f).unwrap().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let err = ShardStore::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Newer { found: 99, .. }), "{err}");
        assert!(
            err.to_string()
                .contains("newer Dangan (store format 99; this build reads up to 4)"),
            "{err}"
        );

        // A file with tables of a future version is refused too.
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(TableDefinition::<&[u8; 32], &[u8]>::new("shards-v2"))
                .unwrap();
            txn.commit().unwrap();
        }
        let err = ShardStore::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("shards-v2"), "{err}");
    }

    #[test]
    fn stale_references_and_records_are_listed_and_collected_only_while_still_old() {
        let (_d, s) = open_tmp();
        let (a, b) = (data(30, SMALL), data(31, LARGE));
        let (ia, ib) = (ShardId::of(&a), ShardId::of(&b));
        s.put(&ia, &a, upload()).unwrap();
        s.put(&ia, &a, upload()).unwrap();
        s.put(&ib, &b, doc(1)).unwrap();
        s.put(&ib, &b, doc(2)).unwrap();
        let manifest = b"manifest bytes";
        let mkey = *blake3::hash(manifest).as_bytes();
        s.put_blob(&mkey, manifest).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let cutoff = crate::now_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        // Nothing is older than a cutoff before it was written.
        assert!(s.stale(None, cutoff - 1000, 100).unwrap().0.is_empty());
        // Pages of two rows walk the four references and the record, in order.
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (found, last) = s.stale(after, cutoff, 2).unwrap();
            all.extend(found);
            match last {
                Some(l) => after = Some(l),
                None => break,
            }
        }
        assert_eq!(all.len(), 4, "{all:?}");
        assert_eq!(all[3], Stale::Record(mkey));
        // Refreshed since the cutoff (a put of doc 2 again): kept.
        s.put(&ib, &b, doc(2)).unwrap();
        let doc2 = Stale::Reference {
            shard: ib,
            holder: doc(2),
        };
        assert_eq!(s.collect(&doc2, cutoff).unwrap(), DeleteOutcome::NotFound);
        // The uploader's two uploads go at once; the body with them.
        let up = Stale::Reference {
            shard: ia,
            holder: upload(),
        };
        assert_eq!(s.collect(&up, cutoff).unwrap(), DeleteOutcome::Removed);
        assert_eq!(s.get(&ia).unwrap(), None);
        assert_eq!(s.collect(&up, cutoff).unwrap(), DeleteOutcome::NotFound);
        let doc1 = Stale::Reference {
            shard: ib,
            holder: doc(1),
        };
        assert_eq!(
            s.collect(&doc1, cutoff).unwrap(),
            DeleteOutcome::Decremented
        );
        assert_eq!(s.holders(&ib).unwrap(), vec![(doc(2), 1)]);
        assert_eq!(s.get(&ib).unwrap().as_deref(), Some(&b[..]));
        let record = Stale::Record(mkey);
        assert_eq!(s.collect(&record, cutoff).unwrap(), DeleteOutcome::Removed);
        assert_eq!(s.get_blob(&mkey).unwrap(), None);
        assert_eq!(s.usage().unwrap().shards, 1);
    }

    #[test]
    fn a_format_3_store_is_migrated_with_every_reference_and_record_timed() {
        let dir = tempfile::tempdir().unwrap();
        let b = data(40, LARGE);
        let id = ShardId::of(&b);
        let manifest = b"manifest";
        let mkey = *blake3::hash(manifest).as_bytes();
        {
            let s = ShardStore::open(dir.path()).unwrap();
            s.put(&id, &b, doc(1)).unwrap();
            s.put_blob(&mkey, manifest).unwrap();
        }
        // Back to format 3: no time tables.
        {
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(REF_TIMES).unwrap();
            txn.delete_table(RECORD_TIMES).unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                let f = FormatRecord {
                    format: RECORD_FORMAT,
                    store_format: 3,
                };
                meta.insert(META_FORMAT, encode("format", &f).unwrap().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let before = crate::now_ms();
        let s = ShardStore::open(dir.path()).unwrap();
        assert_eq!(s.get(&id).unwrap().as_deref(), Some(&b[..]));
        assert!(s.stale(None, before, 10).unwrap().0.is_empty());
        let (stale, _) = s.stale(None, crate::now_ms() + 1, 10).unwrap();
        assert_eq!(stale.len(), 2, "{stale:?}");
    }

    #[test]
    fn undecodable_row_is_an_error_not_a_panic() {
        let (_d, s) = open_tmp();
        let id = ShardId::of(b"row");
        {
            let txn = s.db.begin_write().unwrap();
            txn.open_table(SHARDS)
                .unwrap()
                .insert(&id.0, &[9u8, 1, 2][..])
                .unwrap();
            txn.commit().unwrap();
        }
        assert!(matches!(s.get(&id), Err(StoreError::Record { .. })));
        assert!(matches!(
            s.delete(&id, &did(1)),
            Err(StoreError::Record { .. })
        ));
        assert!(s.has(&id).unwrap());
    }

    /// Inline vs file bodies for 1 MiB shards. Run with
    /// `cargo test --lib store::tests::measure -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_inline_vs_file_1mib() {
        const N: usize = 128;
        const MIB: usize = 1 << 20;
        let bodies: Vec<Vec<u8>> = (0..N as u64).map(|i| data(1000 + i, MIB)).collect();
        let ids: Vec<ShardId> = bodies.iter().map(|b| ShardId::of(b)).collect();
        let mb = (N * MIB) as f64 / 1e6;
        for (label, inline_max) in [("inline", usize::MAX), ("file", INLINE_MAX)] {
            let dir = tempfile::tempdir().unwrap();
            let s = ShardStore::open_with_inline_max(dir.path(), inline_max).unwrap();
            let t = std::time::Instant::now();
            for (id, b) in ids.iter().zip(&bodies) {
                s.put(id, b, doc(1)).unwrap();
            }
            let put_each = mb / t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            for id in &ids {
                assert!(s.get(id).unwrap().is_some());
            }
            let get = mb / t.elapsed().as_secs_f64();
            let space = dir_size(dir.path()) as f64 / MIB as f64;
            drop(s);

            let dir = tempfile::tempdir().unwrap();
            let s = ShardStore::open_with_inline_max(dir.path(), inline_max).unwrap();
            let items: Vec<(ShardId, &[u8])> =
                ids.iter().zip(&bodies).map(|(i, b)| (*i, &b[..])).collect();
            let t = std::time::Instant::now();
            for chunk in items.chunks(16) {
                s.put_batch(chunk, doc(1)).unwrap();
            }
            let put_batch = mb / t.elapsed().as_secs_f64();
            println!(
                "{label:>6}: put each {put_each:.0} MB/s, put_batch(16) {put_batch:.0} MB/s, \
                 get {get:.0} MB/s, space {space:.0} MiB for {} MiB",
                N
            );
        }
    }

    fn dir_size(p: &Path) -> u64 {
        let mut total = 0;
        for e in fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            total += if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            };
        }
        total
    }
}
