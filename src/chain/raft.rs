//! Consensus among validators: openraft, with its log in redb, its state machine the chain
//! itself ([`ChainStore`]), and its messages carried over the project's QUIC transport.
//!
//! A raft log entry carries one *final* block (signed by a majority of validators before it
//! is proposed to raft, see `ledger`). Every validator applies committed entries in log
//! order with the same deterministic rule: a block that does not extend the applied tip
//! (height, link), is not final for the validators of that tip, or does not reproduce its
//! state root is skipped, identically everywhere. So every stored block is final, and no
//! two different blocks ever sit at one height.
//!
//! Files: the raft log, vote and committed/purged ids in their own redb file next to the
//! chain database; the applied log id and membership are written in the same transaction as
//! the blocks they produced (`ChainStore::append_blocks`). A snapshot is the chain's blocks
//! up to the applied tip: a validator that lags past the purged log rebuilds from it,
//! re-verifying every block.
//!
//! Not for: batching transactions or collecting endorsements (`ledger`), serving requests
//! (`peer`).

// openraft's storage error is what its traits return; boxing it here would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftNetwork,
    RaftNetworkFactory, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::block::{Block, BlockHeader};
use super::merkle::Hash;
use super::state::State;
use super::store::ChainStore;
use crate::identity::{Identity, PublicId};
use crate::net::Net;
use crate::placement::NodeInfo;
use crate::proto::{MAX_CHAIN_BODY, RaftKind, Request};
use crate::tls::{Membership, TrustPolicy};

/// What a committed log entry did to the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// Not a block (a leader's blank entry, a membership change).
    Nothing,
    /// The block is now the chain's block at this height.
    Block { height: u64 },
    /// The block did not extend the tip it met (another leader's block got there first, or
    /// it was not final); nothing changed. Its transactions may be proposed again.
    Skipped(String),
}

openraft::declare_raft_types!(
    /// The chain's raft: log entries carry final blocks.
    pub ChainRaft:
        D = Block,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<ChainRaft>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<ChainRaft>;
/// The last snapshot built or installed: its meta and bytes.
type CurrentSnapshot = Arc<Mutex<Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>>>;
type SErr = StorageError<u64>;

pub use super::state::node_id;

/// The chain as applied here, shared by the state machine, the ledger and its queries.
pub(crate) struct Tip {
    /// Shared with the states prepared on it; a block applies to a copy.
    pub state: Arc<State>,
    pub header: BlockHeader,
}

/// State shared by the state machine, the endorser and the ledger.
pub(crate) struct Shared {
    pub store: ChainStore,
    pub tip: Mutex<Tip>,
    /// The applied height, for waiters.
    pub applied: watch::Sender<u64>,
    /// States after blocks this validator proposed or endorsed but has not applied yet,
    /// by header hash, so applying them costs no second pass over their transactions.
    pub prepared: Mutex<HashMap<Hash, (BlockHeader, Arc<State>)>>,
    pub validator: Identity,
    /// Snapshots from a leader installed here since the process started.
    pub snapshots_installed: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub fn new(store: ChainStore, state: State, header: BlockHeader, validator: Identity) -> Self {
        let (applied, _) = watch::channel(header.height);
        Self {
            store,
            tip: Mutex::new(Tip {
                state: Arc::new(state),
                header,
            }),
            applied,
            prepared: Mutex::new(HashMap::new()),
            validator,
            snapshots_installed: Default::default(),
        }
    }

    /// Records durably that this validator signs `block` (see
    /// `ChainStore::lock_endorsement`): `None` if it may, else the other block it signed at
    /// that height. A recorded block whose parent lost to the applied tip no longer binds.
    pub fn lock(&self, block: &Block) -> Result<Option<Block>, super::store::ChainStoreError> {
        let (height, tip) = {
            let tip = self.tip.lock().expect("tip lock");
            (tip.header.height, tip.header.hash())
        };
        self.store.lock_endorsement(block, |earlier| {
            let h = &earlier.header.header;
            h.height == height + 1 && h.prev != tip
        })
    }

    /// The block this validator signed at `height`, if it still binds (see [`Self::lock`]).
    pub fn locked(&self, height: u64) -> Result<Option<Block>, super::store::ChainStoreError> {
        let tip = {
            let tip = self.tip.lock().expect("tip lock");
            (tip.header.height, tip.header.hash())
        };
        Ok(self.store.endorsed(height)?.filter(|b| {
            let h = &b.header.header;
            !(h.height == tip.0 + 1 && h.prev != tip.1) && h.height > tip.0
        }))
    }

    /// The state after the block with header hash `hash`, if known here (the tip, or a
    /// block proposed or endorsed here), with that header.
    pub fn state_after(&self, hash: &Hash) -> Option<(BlockHeader, Arc<State>)> {
        {
            let tip = self.tip.lock().expect("tip lock");
            if tip.header.hash() == *hash {
                return Some((tip.header.clone(), tip.state.clone()));
            }
        }
        self.prepared
            .lock()
            .expect("prepared lock")
            .get(hash)
            .cloned()
    }
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn write_err(e: impl std::fmt::Display) -> SErr {
    StorageIOError::write(&io_err(e)).into()
}

fn read_err(e: impl std::fmt::Display) -> SErr {
    StorageIOError::read(&io_err(e)).into()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("encoding into memory cannot fail")
}

// ---------------------------------------------------------------------------------------------
// The log

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft-log-v1");
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft-meta-v1");
/// The raft log's format, in `raft-meta-v1` "format" (u64 little-endian; a log written
/// before it was recorded has none and is format 1).
pub const RAFT_LOG_FORMAT: u64 = 1;
const LOG_FORMAT_KEY: &str = "format";

/// Why the raft log did not open.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogOpenError {
    #[error("raft log database: {0}")]
    Db(#[from] redb::Error),
    #[error(
        "the raft log at {path} was written by a newer Dangan (raft log format {found}; this \
         build reads up to {RAFT_LOG_FORMAT}): upgrade this binary"
    )]
    Newer { path: PathBuf, found: u64 },
}

/// Called once an append is durable (or failed): raft's `LogFlushed`, or a test's probe.
type Done = Box<dyn FnOnce(Result<(), std::io::Error>) + Send>;
/// Answers a caller that waits for its write.
type Reply = tokio::sync::oneshot::Sender<Result<(), String>>;
/// Entries handed to `append` and not yet written, by index: what readers see first.
type Pending = Arc<Mutex<BTreeMap<u64, Arc<Entry<ChainRaft>>>>>;

/// Work for the log's writer thread, done in the order queued.
enum Op {
    Append(Vec<Arc<Entry<ChainRaft>>>, Done),
    /// The committed id (postcard); written without an fsync of its own.
    Committed(Vec<u8>),
    Vote(Vec<u8>, Reply),
    Truncate(u64, Reply),
    Purge(LogId<u64>, Reply),
    /// Makes everything queued before it durable.
    Flush(Reply),
}

/// The raft log, vote and committed/purged ids in redb.
///
/// Writes go through one writer thread (`write_log`) in queue order: it takes everything
/// queued, writes it in ONE durable redb transaction, then calls each append's callback. So
/// `append` returns at once (openraft's storage-v2 contract: the callback says when the
/// entries are durable), no runtime thread waits on an fsync, and appends queued together
/// share one. Entries queued and not yet written are kept in memory (`pending`) and readers
/// look there first. `truncate`, `purge` and `save_vote` queue behind the appends and wait
/// for their own write, so the order is kept. The thread stops, after writing what is
/// queued, at [`LogStore::close`] or when the last handle is dropped.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<LogInner>,
}

struct LogInner {
    db: Arc<Database>,
    pending: Pending,
    /// The last committed id saved, once one was (written lazily).
    committed: Mutex<Option<Option<LogId<u64>>>>,
    queue: Mutex<Option<std::sync::mpsc::Sender<Op>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LogInner {
    fn stop(&self) {
        // Dropping the only sender ends the writer once it has written what is queued; a
        // last flush makes a committed id queued alone (written without an fsync) durable.
        let queue = self.queue.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(queue) = queue {
            let (reply, _) = tokio::sync::oneshot::channel();
            let _ = queue.send(Op::Flush(reply));
        }
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer
            && writer.join().is_err()
        {
            tracing::error!("the raft log writer panicked");
        }
    }
}

impl Drop for LogInner {
    fn drop(&mut self) {
        self.stop();
    }
}

impl LogStore {
    pub fn open(path: &Path) -> Result<Self, LogOpenError> {
        let db = Database::create(path).map_err(redb::Error::from)?;
        let txn = db.begin_write().map_err(redb::Error::from)?;
        txn.open_table(LOG).map_err(redb::Error::from)?;
        {
            let mut meta = txn.open_table(LOG_META).map_err(redb::Error::from)?;
            let found = meta
                .get(LOG_FORMAT_KEY)
                .map_err(redb::Error::from)?
                .and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes));
            match found {
                Some(found) if found > RAFT_LOG_FORMAT => {
                    return Err(LogOpenError::Newer {
                        path: path.to_owned(),
                        found,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert(LOG_FORMAT_KEY, RAFT_LOG_FORMAT.to_le_bytes().as_slice())
                        .map_err(redb::Error::from)?;
                }
            }
        }
        txn.commit().map_err(redb::Error::from)?;
        let db = Arc::new(db);
        let pending: Pending = Arc::default();
        let (queue, rx) = std::sync::mpsc::channel();
        let writer = {
            let (db, pending) = (db.clone(), pending.clone());
            std::thread::Builder::new()
                .name("raft-log".into())
                .spawn(move || write_log(&db, &pending, rx))
                .map_err(redb::Error::from)?
        };
        Ok(Self {
            inner: Arc::new(LogInner {
                db,
                pending,
                committed: Mutex::new(None),
                queue: Mutex::new(Some(queue)),
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// How many handles on the log are alive.
    pub fn refs(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Writes what is queued and stops the writer thread (blocks until it has); later
    /// writes fail. The file closes when the last handle is dropped.
    pub fn close(&self) {
        self.inner.stop();
    }

    /// Waits until everything queued so far is durable.
    pub async fn flush(&self) -> Result<(), SErr> {
        self.request(Op::Flush).await
    }

    fn send(&self, op: Op) -> Result<(), Op> {
        let queue = self.inner.queue.lock().expect("log queue lock");
        match queue.as_ref() {
            Some(q) => q.send(op).map_err(|e| e.0),
            None => Err(op),
        }
    }

    /// Queues an op that answers once written, and waits for the answer.
    async fn request(&self, op: impl FnOnce(Reply) -> Op) -> Result<(), SErr> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(op(tx))
            .map_err(|_| write_err("the raft log is closed"))?;
        rx.await
            .map_err(|_| write_err("the raft log writer stopped"))?
            .map_err(write_err)
    }

    /// Queues `entries` for the writer: readable at once, `done` called once they are
    /// durable (or the write failed).
    fn queue_append(
        &self,
        entries: impl IntoIterator<Item = Entry<ChainRaft>>,
        done: Done,
    ) -> Result<(), SErr> {
        let entries: Vec<Arc<Entry<ChainRaft>>> = entries.into_iter().map(Arc::new).collect();
        {
            let mut pending = self.inner.pending.lock().expect("pending log lock");
            for e in &entries {
                pending.insert(e.log_id.index, e.clone());
            }
        }
        if let Err(op) = self.send(Op::Append(entries, done)) {
            let Op::Append(entries, done) = op else {
                unreachable!("the op sent is the op returned")
            };
            let mut pending = self.inner.pending.lock().expect("pending log lock");
            for e in &entries {
                pending.remove(&e.log_id.index);
            }
            drop(pending);
            done(Err(io_err("the raft log is closed")));
            return Err(write_err("the raft log is closed"));
        }
        Ok(())
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, SErr> {
        let txn = self.inner.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(LOG_META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(v.value()).map(Some).map_err(read_err),
        }
    }
}

/// The log's writer thread: takes everything queued, writes it in one redb transaction
/// (durable unless it holds only a committed id), drops the written entries from `pending`
/// and answers each op. Ends once every sender is gone and the queue is empty.
fn write_log(
    db: &Database,
    pending: &Mutex<BTreeMap<u64, Arc<Entry<ChainRaft>>>>,
    rx: std::sync::mpsc::Receiver<Op>,
) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        ops.extend(rx.try_iter());
        let result = write_ops(db, &ops).map_err(|e| e.to_string());
        {
            // Written (or truncated) entries are read from redb from now on; one queued
            // meanwhile at the same index (after a truncate) stays.
            let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
            for op in &ops {
                match op {
                    Op::Append(entries, _) => {
                        for e in entries {
                            if pending
                                .get(&e.log_id.index)
                                .is_some_and(|p| p.log_id == e.log_id)
                            {
                                pending.remove(&e.log_id.index);
                            }
                        }
                    }
                    Op::Truncate(index, _) if result.is_ok() => {
                        pending.split_off(index);
                    }
                    _ => {}
                }
            }
        }
        for op in ops {
            match op {
                Op::Append(_, done) => done(result.clone().map_err(io_err)),
                Op::Committed(_) => {}
                Op::Vote(_, reply)
                | Op::Truncate(_, reply)
                | Op::Purge(_, reply)
                | Op::Flush(reply) => {
                    let _ = reply.send(result.clone());
                }
            }
        }
    }
}

fn write_ops(db: &Database, ops: &[Op]) -> Result<(), redb::Error> {
    let durable = ops.iter().any(|op| !matches!(op, Op::Committed(_)));
    let mut txn = db.begin_write()?;
    txn.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    })?;
    {
        let mut log = txn.open_table(LOG)?;
        let mut meta = txn.open_table(LOG_META)?;
        for op in ops {
            match op {
                Op::Append(entries, _) => {
                    for e in entries {
                        log.insert(e.log_id.index, encode(&**e).as_slice())?;
                    }
                }
                Op::Committed(bytes) => {
                    meta.insert("committed", bytes.as_slice())?;
                }
                Op::Vote(bytes, _) => {
                    meta.insert("vote", bytes.as_slice())?;
                }
                Op::Truncate(index, _) => {
                    log.retain_in(*index.., |_, _| false)?;
                }
                Op::Purge(id, _) => {
                    log.retain_in(..=id.index, |_, _| false)?;
                    meta.insert("purged", encode(&Some(*id)).as_slice())?;
                }
                Op::Flush(_) => {}
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// The first index a range of log indexes starts at, `None` if none is in it.
fn range_start(range: &impl RangeBounds<u64>) -> Option<u64> {
    match range.start_bound() {
        Bound::Included(s) => Some(*s),
        Bound::Excluded(s) => s.checked_add(1),
        Bound::Unbounded => Some(0),
    }
}

impl RaftLogReader<ChainRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<ChainRaft>>, SErr> {
        let Some(start) = range_start(&range) else {
            return Ok(Vec::new());
        };
        // Queued entries first: one written meanwhile is then in redb.
        let queued: Vec<Arc<Entry<ChainRaft>>> = self
            .inner
            .pending
            .lock()
            .expect("pending log lock")
            .range(start..)
            .take_while(|(i, _)| range.contains(*i))
            .map(|(_, e)| e.clone())
            .collect();
        let mut out = BTreeMap::new();
        // What is queued from the start on needs no read from redb.
        let from_disk = queued.first().is_none_or(|e| e.log_id.index != start);
        if from_disk {
            let txn = self.inner.db.begin_read().map_err(read_err)?;
            let t = txn.open_table(LOG).map_err(read_err)?;
            for row in t.range(range).map_err(read_err)? {
                let (i, v) = row.map_err(read_err)?;
                let i = i.value();
                if queued.first().is_some_and(|e| e.log_id.index <= i) {
                    break;
                }
                let e: Entry<ChainRaft> = postcard::from_bytes(v.value()).map_err(read_err)?;
                out.insert(i, e);
            }
        }
        for e in queued {
            out.insert(e.log_id.index, (*e).clone());
        }
        Ok(out.into_values().collect())
    }
}

impl RaftLogStorage<ChainRaft> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<ChainRaft>, SErr> {
        // Written by `purge` as an `Option`, like "committed".
        let purged = self.meta::<Option<LogId<u64>>>("purged")?.flatten();
        let queued = self
            .inner
            .pending
            .lock()
            .expect("pending log lock")
            .last_key_value()
            .map(|(_, e)| e.log_id);
        let last = match queued {
            Some(last) => Some(last),
            None => {
                let txn = self.inner.db.begin_read().map_err(read_err)?;
                let t = txn.open_table(LOG).map_err(read_err)?;
                match t.last().map_err(read_err)? {
                    None => None,
                    Some((_, v)) => {
                        let e: Entry<ChainRaft> =
                            postcard::from_bytes(v.value()).map_err(read_err)?;
                        Some(e.log_id)
                    }
                }
            }
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        let bytes = encode(vote);
        self.request(|reply| Op::Vote(bytes, reply)).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        self.meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        // Raft does not need the committed id to survive a crash (it is learnt again from
        // the leader), so it costs no fsync and no wait: the next durable write takes it.
        *self.inner.committed.lock().expect("committed lock") = Some(committed);
        self.send(Op::Committed(encode(&committed)))
            .map_err(|_| write_err("the raft log is closed"))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        if let Some(committed) = *self.inner.committed.lock().expect("committed lock") {
            return Ok(committed);
        }
        Ok(self.meta::<Option<LogId<u64>>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<ChainRaft>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<ChainRaft>> + Send,
        I::IntoIter: Send,
    {
        self.queue_append(entries, Box::new(move |r| callback.log_io_completed(r)))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        // Behind every queued append: those entries are written, then removed.
        self.request(|reply| Op::Truncate(log_id.index, reply))
            .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        self.request(|reply| Op::Purge(log_id, reply)).await
    }
}

// ---------------------------------------------------------------------------------------------
// The state machine

/// What the chain database records about the log entries it applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedRecord {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    height: u64,
}

/// A snapshot: every block up to the applied tip.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    record: AppliedRecord,
    blocks: Vec<Block>,
}

/// The chain as raft's state machine.
pub struct ChainMachine {
    shared: Arc<Shared>,
    record: AppliedRecord,
    current: CurrentSnapshot,
}

impl ChainMachine {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<Self, super::store::ChainStoreError> {
        let record = match shared.store.consensus_record()? {
            Some(bytes) => postcard::from_bytes(&bytes).unwrap_or_default(),
            None => AppliedRecord::default(),
        };
        Ok(Self {
            shared,
            record,
            current: Arc::new(Mutex::new(None)),
        })
    }

    /// Checks `block` against the tip `(prev, state)` and returns the state after it.
    fn extend(
        &self,
        block: &Block,
        prev: &BlockHeader,
        state: &State,
    ) -> Result<Arc<State>, String> {
        let h = &block.header.header;
        if h.height != prev.height + 1 || h.prev != prev.hash() {
            return Err(format!(
                "block {} does not extend the tip at height {}",
                h.height, prev.height
            ));
        }
        let validators: Vec<PublicId> = state.validators().iter().copied().collect();
        block
            .header
            .verify_final(&validators)
            .map_err(|e| e.to_string())?;
        let prepared = self
            .shared
            .prepared
            .lock()
            .expect("prepared lock")
            .remove(&h.hash());
        // A prepared state was computed here by `Block::propose` or `Block::apply_to` for
        // the header with this hash, which commits to its state root.
        match prepared {
            Some((_, after)) => Ok(after),
            _ => block
                .apply_to(state.clone(), prev)
                .map(Arc::new)
                .map_err(|e| e.to_string()),
        }
    }

    /// Stores `blocks` and the applied record, and makes `next` the tip. `durable`: made
    /// durable before returning; otherwise durable at the next snapshot (or any durable
    /// commit): until then a crash rolls the chain back to an earlier applied log id and
    /// raft applies the entries after it again from its log, which it keeps until a
    /// snapshot covers them.
    fn commit(
        &mut self,
        blocks: &[Block],
        next: Option<(BlockHeader, Arc<State>)>,
        durable: bool,
    ) -> Result<(), SErr> {
        if let Some((header, _)) = &next {
            self.record.height = header.height;
        }
        let record = encode(&self.record);
        let store = &self.shared.store;
        if durable {
            store.append_blocks(blocks, Some(&record))
        } else {
            store.append_blocks_lazily(blocks, Some(&record))
        }
        .map_err(|e| StorageIOError::write_state_machine(&io_err(e)))?;
        if let Some((header, state)) = next {
            let height = header.height;
            {
                let mut tip = self.shared.tip.lock().expect("tip lock");
                tip.state = state;
                tip.header = header;
            }
            self.shared
                .prepared
                .lock()
                .expect("prepared lock")
                .retain(|_, (h, _)| h.height > height);
            self.shared.applied.send_replace(height);
        }
        Ok(())
    }
}

impl RaftStateMachine<ChainRaft> for ChainMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), SErr> {
        Ok((self.record.last_applied, self.record.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, SErr>
    where
        I: IntoIterator<Item = Entry<ChainRaft>> + Send,
        I::IntoIter: Send,
    {
        let start = std::time::Instant::now();
        let mut out = Vec::new();
        let mut blocks = Vec::new();
        // The tip as of the entries applied so far in this call.
        let mut next: Option<(BlockHeader, Arc<State>)> = None;
        for entry in entries {
            self.record.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => out.push(Applied::Nothing),
                EntryPayload::Membership(m) => {
                    self.record.membership = StoredMembership::new(Some(entry.log_id), m);
                    out.push(Applied::Nothing);
                }
                EntryPayload::Normal(block) => {
                    let result = match &next {
                        Some((prev, state)) => self.extend(&block, prev, state),
                        None => {
                            let tip = self.shared.tip.lock().expect("tip lock");
                            let (prev, state) = (tip.header.clone(), tip.state.clone());
                            // The common case (own or endorsed block) takes the prepared
                            // state and clones nothing.
                            drop(tip);
                            self.extend(&block, &prev, &state)
                        }
                    };
                    match result {
                        Ok(after) => {
                            out.push(Applied::Block {
                                height: block.header.header.height,
                            });
                            next = Some((block.header.header.clone(), after));
                            blocks.push(block);
                        }
                        Err(why) => {
                            tracing::debug!(%why, "skipping a committed block");
                            out.push(Applied::Skipped(why));
                        }
                    }
                }
            }
        }
        // The raft log already holds these entries durably (on a majority).
        let checked = start.elapsed();
        self.commit(&blocks, next, false)?;
        if let Some(last) = blocks.last() {
            tracing::debug!(
                target: "dangan::chain",
                height = last.header.header.height,
                blocks = blocks.len(),
                txs = blocks.iter().map(|b| b.txs.len()).sum::<usize>(),
                check_ms = checked.as_secs_f64() * 1e3,
                apply_ms = start.elapsed().as_secs_f64() * 1e3,
                "blocks applied"
            );
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
            current: self.current.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let bytes = snapshot.into_inner();
        let body: SnapshotBody = postcard::from_bytes(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &io_err(e)))?;
        let bad = |e: String| -> SErr {
            StorageIOError::read_snapshot(Some(meta.signature()), &io_err(e)).into()
        };
        let (mut prev, mut state) = {
            let tip = self.shared.tip.lock().expect("tip lock");
            (tip.header.clone(), tip.state.clone())
        };
        let mut new_blocks = Vec::new();
        for block in body.blocks {
            let height = block.header.header.height;
            if height <= prev.height {
                let ours = self
                    .shared
                    .store
                    .block(height)
                    .map_err(|e| bad(e.to_string()))?;
                if ours.map(|b| b.header.header.hash()) != Some(block.header.header.hash()) {
                    return Err(bad(format!("snapshot block {height} differs from ours")));
                }
                continue;
            }
            state = self.extend(&block, &prev, &state).map_err(bad)?;
            prev = block.header.header.clone();
            new_blocks.push(block);
        }
        self.record.last_applied = meta.last_log_id;
        self.record.membership = meta.last_membership.clone();
        let next = (!new_blocks.is_empty()).then_some((prev, state));
        // Raft purges its log up to the snapshot next: what it covers must be durable here.
        self.commit(&new_blocks, next, true)?;
        *self.current.lock().expect("snapshot lock") = Some((meta.clone(), bytes));
        self.shared
            .snapshots_installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<ChainRaft>>, SErr> {
        Ok(self
            .current
            .lock()
            .expect("snapshot lock")
            .clone()
            .map(|(meta, bytes)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            }))
    }
}

pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    current: CurrentSnapshot,
}

impl RaftSnapshotBuilder<ChainRaft> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ChainRaft>, SErr> {
        // Reading and copying the whole chain is blocking work: off the runtime's threads.
        let shared = self.shared.clone();
        let (meta, bytes) = tokio::task::spawn_blocking(move || build_snapshot(&shared.store))
            .await
            .map_err(|e| write_err(format!("building a snapshot: {e}")))??;
        *self.current.lock().expect("snapshot lock") = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

/// The snapshot of the chain as stored: the postcard encoding of a [`SnapshotBody`], made
/// from the stored bytes of its blocks without decoding them.
fn build_snapshot(store: &ChainStore) -> Result<(SnapshotMeta<u64, BasicNode>, Vec<u8>), SErr> {
    // Raft purges the log entries a snapshot covers: the chain they produced must be
    // durable first (applying commits lazily).
    store.sync().map_err(write_err)?;
    // One read transaction for the record and the blocks: they match.
    let (record, blocks) = store.encoded_blocks().map_err(read_err)?;
    let record: AppliedRecord = match record {
        Some(bytes) => postcard::from_bytes(&bytes).map_err(read_err)?,
        None => AppliedRecord::default(),
    };
    // Every block up to the applied tip the record names.
    let mut blocks = blocks;
    if (blocks.len() as u64) < record.height {
        return Err(read_err(format!(
            "block {} is missing",
            blocks.len() as u64 + 1
        )));
    }
    blocks.truncate(record.height as usize);
    let meta = SnapshotMeta {
        last_log_id: record.last_applied,
        last_membership: record.membership.clone(),
        snapshot_id: format!(
            "{}-{}",
            record.last_applied.map_or(0, |l| l.index),
            record.height
        ),
    };
    // A struct is its fields in order, a sequence its length (varint) then its items.
    let mut bytes = encode(&record);
    bytes.extend(encode(&blocks.len()));
    bytes.reserve(blocks.iter().map(Vec::len).sum());
    for block in &blocks {
        bytes.extend_from_slice(block);
    }
    Ok((meta, bytes))
}

// ---------------------------------------------------------------------------------------------
// The network

/// How validators reach each other: a QUIC client (the host node's identity) and, for each
/// raft node id, the peer that hosts that validator: as the cluster file says, overridden
/// by the chain's `SetValidatorHost` ([`Links::learn`]).
pub struct Links {
    pub net: Option<Net>,
    /// The cluster file's validator hosts, by raft node id.
    configured: BTreeMap<u64, (PublicId, NodeInfo)>,
    /// The hosts in force: the cluster file's, overridden by the chain's.
    hosts: std::sync::RwLock<BTreeMap<u64, (PublicId, NodeInfo)>>,
    /// Host keys the chain names now, which `links` trusts besides the cluster file's.
    learnt: Membership,
}

/// What the validators' links trust: the cluster file's policy, or a host the chain names.
#[derive(Debug)]
pub struct HostTrust {
    base: Arc<dyn TrustPolicy>,
    learnt: Membership,
}

impl TrustPolicy for HostTrust {
    fn is_trusted(&self, id: &PublicId) -> bool {
        self.base.is_trusted(id) || self.learnt.contains(id)
    }
}

impl Links {
    /// The validator hosts `hosts` (by raft node id), not linked yet (see [`Links::trust`]).
    pub fn new(hosts: BTreeMap<u64, (PublicId, NodeInfo)>) -> Self {
        Self {
            net: None,
            configured: hosts.clone(),
            hosts: std::sync::RwLock::new(hosts),
            learnt: Membership::new(),
        }
    }

    /// The trust policy for `links`: `base` (the cluster file's), or a host the chain names.
    pub fn trust(&self, base: Arc<dyn TrustPolicy>) -> Arc<dyn TrustPolicy> {
        Arc::new(HostTrust {
            base,
            learnt: self.learnt.clone(),
        })
    }

    /// The validator of raft node `node` and the peer hosting it.
    pub fn host(&self, node: u64) -> Option<(PublicId, NodeInfo)> {
        self.hosts.read().expect("hosts lock").get(&node).cloned()
    }

    /// Whether `key` is the peer of a validator host.
    pub fn is_host(&self, key: &PublicId) -> bool {
        self.hosts
            .read()
            .expect("hosts lock")
            .values()
            .any(|(_, n)| n.key == *key)
    }

    /// Takes the chain's word for where validators are hosted now (`State::validator_hosts`,
    /// the whole map each time): it overrides the cluster file, and only those hosts' keys
    /// are trusted besides the file's. A host the chain no longer names (its validator was
    /// removed or moved elsewhere) is forgotten: it is neither dialled nor trusted nor
    /// accepted as a validator host any more, unless the cluster file names it.
    pub fn learn(&self, chain: &BTreeMap<PublicId, NodeInfo>) {
        let mut hosts = self.configured.clone();
        for (v, node) in chain {
            // Never in place of another validator with the same node id (the chain refuses
            // such keys; a cluster file may still name one).
            match hosts.get(&node_id(v)) {
                Some((other, _)) if other != v => {
                    tracing::warn!(validator = %v, %other, "a chain host entry with a taken node id ignored");
                }
                _ => {
                    hosts.insert(node_id(v), (*v, node.clone()));
                }
            }
        }
        *self.hosts.write().expect("hosts lock") = hosts;
        self.learnt.replace(chain.values().map(|n| n.key));
    }
    /// Sends a validator-to-validator request and returns the `ChainBody` bytes.
    pub async fn request(
        &self,
        target: u64,
        req: &Request,
        body: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>, String> {
        let net = self
            .net
            .as_ref()
            .ok_or("no network: a one-validator chain")?;
        let (_, node) = self
            .host(target)
            .ok_or_else(|| format!("raft node {target} has no known host"))?;
        let body = Bytes::from(body);
        match net
            .fetch_within(&node, req, Some(&body), MAX_CHAIN_BODY, timeout)
            .await
        {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err("unexpected answer NotFound".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct LinksFactory(pub Arc<Links>);

pub struct LinkTo {
    links: Arc<Links>,
    target: u64,
}

impl RaftNetworkFactory<ChainRaft> for LinksFactory {
    type Network = LinkTo;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> LinkTo {
        LinkTo {
            links: self.0.clone(),
            target,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transport(String);

impl LinkTo {
    async fn rpc<Req, Resp, E>(
        &self,
        kind: RaftKind,
        rpc: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let body = encode(rpc);
        let req = Request::Raft {
            kind,
            len: body.len() as u64,
        };
        let unreachable = |e: String| RPCError::Network(NetworkError::new(&Transport(e)));
        let bytes = self
            .links
            .request(self.target, &req, body, option.hard_ttl())
            .await
            .map_err(unreachable)?;
        let answer: Result<Resp, RaftError<u64, E>> =
            postcard::from_bytes(&bytes).map_err(|e| unreachable(e.to_string()))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<ChainRaft> for LinkTo {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<ChainRaft>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.rpc(RaftKind::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<ChainRaft>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.rpc(RaftKind::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.rpc(RaftKind::Vote, &rpc, &option).await
    }
}

/// Serves one inbound raft message (postcard bytes) and returns the postcard bytes of the
/// result. `Err` means the bytes did not decode. An `AppendEntries` this node accepted (from
/// the leader it follows) is reported to `contact` with the leader's commit index.
pub async fn serve_rpc(
    raft: &Raft,
    kind: RaftKind,
    body: &[u8],
    contact: impl FnOnce(Option<u64>),
) -> Result<Vec<u8>, String> {
    let bad = |e: postcard::Error| format!("malformed raft message: {e}");
    Ok(match kind {
        RaftKind::AppendEntries => {
            let rpc: AppendEntriesRequest<ChainRaft> = postcard::from_bytes(body).map_err(bad)?;
            let commit = rpc.leader_commit.map(|l| l.index);
            let answer = raft.append_entries(rpc).await;
            if answer.as_ref().is_ok_and(|a| a.is_success()) {
                contact(commit);
            }
            encode(&answer)
        }
        RaftKind::Vote => {
            let rpc: VoteRequest<u64> = postcard::from_bytes(body).map_err(bad)?;
            encode(&raft.vote(rpc).await)
        }
        RaftKind::InstallSnapshot => {
            let rpc: InstallSnapshotRequest<ChainRaft> = postcard::from_bytes(body).map_err(bad)?;
            encode(&raft.install_snapshot(rpc).await)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::state::{Genesis, GenesisAccount};
    use crate::chain::tx::{Tx, TxBody};
    use crate::identity::Role;
    use std::time::Duration;

    fn blank(term: u64, index: u64) -> Entry<ChainRaft> {
        openraft::testing::blank_ent::<ChainRaft>(term, 1, index)
    }

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        openraft::testing::log_id(term, 1, index)
    }

    /// The log ids of the entries in `range`, as a reader sees them.
    async fn ids(
        log: &LogStore,
        range: impl RangeBounds<u64> + Clone + Debug + Send,
    ) -> Vec<LogId<u64>> {
        let mut reader = log.clone();
        reader
            .try_get_log_entries(range)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.log_id)
            .collect()
    }

    async fn last(log: &LogStore) -> Option<LogId<u64>> {
        log.clone().get_log_state().await.unwrap().last_log_id
    }

    fn host(zone: &str) -> NodeInfo {
        NodeInfo {
            key: Identity::generate(Role::Node).public(),
            zone: zone.into(),
            weight: 1,
            addr: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn hosts_the_chain_stops_naming_are_forgotten() {
        let (a, b) = (
            Identity::generate(Role::Validator).public(),
            Identity::generate(Role::Validator).public(),
        );
        let (file_host, chain_host, new_host) = (host("a"), host("b"), host("c"));
        let net = Links::new(BTreeMap::from([(node_id(&a), (a, file_host.clone()))]));
        // The cluster file's policy trusts only the file's host.
        let trust = net.trust(Arc::new(Membership::from_iter([file_host.key])));
        let knows = |node: &NodeInfo| (net.is_host(&node.key), trust.is_trusted(&node.key));

        net.learn(&BTreeMap::from([(b, chain_host.clone())]));
        assert_eq!(knows(&chain_host), (true, true));
        assert_eq!(
            net.host(node_id(&b)).map(|(_, n)| n),
            Some(chain_host.clone())
        );

        // b moves: its old host is no longer a validator host, nor trusted.
        net.learn(&BTreeMap::from([(b, new_host.clone())]));
        assert_eq!(knows(&chain_host), (false, false));
        assert_eq!(knows(&new_host), (true, true));

        // b is removed: the chain names no host for it any more.
        net.learn(&BTreeMap::new());
        assert_eq!(knows(&new_host), (false, false));
        assert!(net.host(node_id(&b)).is_none());
        // The cluster file's host stays, whatever the chain says.
        assert_eq!(knows(&file_host), (true, true));
        assert_eq!(net.host(node_id(&a)).map(|(_, n)| n), Some(file_host));
    }

    #[tokio::test]
    async fn the_log_writer_reads_queued_appends_keeps_order_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chain.raft");
        let mut log = LogStore::open(&path).unwrap();
        let (flushed, durable) = std::sync::mpsc::channel();
        // Three appends queued back to back: each readable at once, written or not.
        for (n, chunk) in [1..4u64, 4..6, 6..10].into_iter().enumerate() {
            let flushed = flushed.clone();
            let done: Done = Box::new(move |r| flushed.send((n, r.is_ok())).unwrap());
            log.queue_append(chunk.clone().map(|i| blank(1, i)), done)
                .unwrap();
            let want: Vec<_> = (1..chunk.end).map(|i| log_id(1, i)).collect();
            assert_eq!(ids(&log, 1..).await, want);
            assert_eq!(ids(&log, ..=chunk.end - 1).await, want);
            assert_eq!(last(&log).await, Some(log_id(1, chunk.end - 1)));
        }
        assert_eq!(ids(&log, 3..5).await, vec![log_id(1, 3), log_id(1, 4)]);
        assert_eq!(ids(&log, 10..).await, vec![]);
        // Every callback reports durable, in order.
        for n in 0..3 {
            let got = durable.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(got, (n, true));
        }
        log.flush().await.unwrap();
        assert!(log.inner.pending.lock().unwrap().is_empty());
        let all: Vec<_> = (1..10).map(|i| log_id(1, i)).collect();
        assert_eq!(ids(&log, 1..).await, all);
        assert_eq!(ids(&log, 5..=6).await, vec![log_id(1, 5), log_id(1, 6)]);
        assert_eq!(last(&log).await, Some(log_id(1, 9)));

        // A truncate right behind queued appends waits for them, then removes its part.
        log.queue_append((10..12).map(|i| blank(1, i)), Box::new(|_| {}))
            .unwrap();
        log.truncate(log_id(1, 8)).await.unwrap();
        assert!(log.inner.pending.lock().unwrap().is_empty());
        assert_eq!(ids(&log, 1..).await, all[..7].to_vec());
        assert_eq!(last(&log).await, Some(log_id(1, 7)));
        // A new term's entries in their place; purge and vote behind them.
        log.queue_append((8..11).map(|i| blank(2, i)), Box::new(|_| {}))
            .unwrap();
        assert_eq!(last(&log).await, Some(log_id(2, 10)));
        log.purge(log_id(1, 2)).await.unwrap();
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        log.save_committed(Some(log_id(2, 9))).await.unwrap();
        let kept: Vec<_> = (3..8)
            .map(|i| log_id(1, i))
            .chain((8..11).map(|i| log_id(2, i)))
            .collect();
        assert_eq!(ids(&log, 0..).await, kept);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 9)));

        // Queued and then dropped: written, and the file is free to open again.
        log.queue_append([blank(2, 11)], Box::new(|_| {})).unwrap();
        drop(log);
        let mut log = LogStore::open(&path).unwrap();
        let mut kept = kept;
        kept.push(log_id(2, 11));
        assert_eq!(ids(&log, ..).await, kept);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(2, 11)));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 9)));

        // Closed: writes refused (the callback told too), the file free once dropped.
        log.close();
        let (tx, rx) = std::sync::mpsc::channel();
        let refused = log.queue_append(
            [blank(2, 12)],
            Box::new(move |r| tx.send(r.is_ok()).unwrap()),
        );
        assert!(refused.is_err());
        assert!(!rx.recv().unwrap());
        assert_eq!(last(&log).await, Some(log_id(2, 11)));
        drop(log);
        LogStore::open(&path).unwrap();
    }

    #[test]
    fn a_log_written_by_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chain.raft");
        drop(LogStore::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(LOG_META).unwrap();
                let stored = meta.get(LOG_FORMAT_KEY).unwrap().unwrap().value().to_vec();
                assert_eq!(
                    stored,
                    RAFT_LOG_FORMAT.to_le_bytes(),
                    "a new log says its format"
                );
                meta.insert(LOG_FORMAT_KEY, 2u64.to_le_bytes().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        let err = LogStore::open(&path).err().expect("a newer log is refused");
        assert!(
            err.to_string()
                .contains("newer Dangan (raft log format 2; this build reads up to 1)"),
            "{err}"
        );
    }

    /// What a test does to the log, in order.
    #[derive(Debug, Clone)]
    enum LogOp {
        /// Queue this many entries (a new term if set), without waiting for them.
        Append(u64, bool),
        /// Truncate this far back from the last entry.
        Truncate(u64),
        /// Purge this far from the first entry.
        Purge(u64),
        Flush,
        /// Drop the store (what is queued is written) and open the file again.
        Reopen,
    }

    fn log_op() -> impl proptest::strategy::Strategy<Value = LogOp> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (1u64..5, any::<bool>()).prop_map(|(n, t)| LogOp::Append(n, t)),
            1 => (0u64..4).prop_map(LogOp::Truncate),
            1 => (0u64..4).prop_map(LogOp::Purge),
            1 => Just(LogOp::Flush),
            1 => Just(LogOp::Reopen),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Whatever the order of queued appends, truncates, purges and restarts, readers see
        /// exactly the log a one-at-a-time model holds.
        #[test]
        fn the_log_writer_matches_a_model(ops in proptest::collection::vec(log_op(), 1..24)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("chain.raft");
                let mut log = LogStore::open(&path).unwrap();
                let (mut model, mut purged, mut term) = (Vec::<LogId<u64>>::new(), None, 1);
                for op in ops {
                    let next = model.last().or(purged.as_ref()).map_or(1, |l: &LogId<u64>| l.index + 1);
                    match op {
                        LogOp::Append(n, new_term) => {
                            term += u64::from(new_term);
                            let entries: Vec<_> = (next..next + n).map(|i| blank(term, i)).collect();
                            model.extend(entries.iter().map(|e| e.log_id));
                            log.queue_append(entries, Box::new(|r| assert!(r.is_ok()))).unwrap();
                        }
                        LogOp::Truncate(back) => {
                            if let Some(at) = model.len().checked_sub(1 + back as usize) {
                                log.truncate(model[at]).await.unwrap();
                                model.truncate(at);
                            }
                        }
                        LogOp::Purge(k) => {
                            if let Some(upto) = model.get(k as usize).copied() {
                                log.purge(upto).await.unwrap();
                                model.drain(..=k as usize);
                                purged = Some(upto);
                            }
                        }
                        LogOp::Flush => {
                            log.flush().await.unwrap();
                            assert!(log.inner.pending.lock().unwrap().is_empty());
                        }
                        LogOp::Reopen => {
                            drop(log);
                            log = LogStore::open(&path).unwrap();
                        }
                    }
                    assert_eq!(ids(&log, ..).await, model);
                    let state = log.get_log_state().await.unwrap();
                    assert_eq!(state.last_purged_log_id, purged);
                    assert_eq!(state.last_log_id, model.last().copied().or(purged));
                    if let Some(first) = model.first() {
                        assert_eq!(ids(&log, first.index + 1..).await, model[1..].to_vec());
                    }
                }
            });
        }
    }

    #[test]
    fn a_snapshot_copies_the_stored_blocks_as_one_postcard_body() {
        let dir = tempfile::tempdir().unwrap();
        let validator = Identity::generate(Role::Validator);
        let dept = Identity::generate(Role::Department);
        let genesis = Genesis {
            chain_id: "test".into(),
            validators: vec![GenesisAccount::of(&validator, Role::Validator)],
            accounts: vec![GenesisAccount::of(&dept, Role::Department)],
            nodes: Vec::new(),
        };
        let (store, mut state, mut prev) =
            ChainStore::open(&dir.path().join("chain.redb"), &genesis).unwrap();
        let mut blocks = Vec::new();
        for nonce in 1..=3u64 {
            let tx = Tx {
                sender: dept.public(),
                nonce,
                body: TxBody::RegisterDocument {
                    document: crate::id::DocumentId::of(&nonce.to_le_bytes()),
                },
            }
            .sign(&dept, &state.chain_key());
            let (block, outcomes) = Block::propose(&mut state, &prev, vec![tx], &validator, nonce);
            assert!(outcomes[0].is_ok());
            prev = block.header.header.clone();
            blocks.push(block);
        }
        let record = AppliedRecord {
            last_applied: Some(log_id(1, 7)),
            membership: StoredMembership::default(),
            height: 3,
        };
        store
            .append_blocks(&blocks, Some(&encode(&record)))
            .unwrap();
        let (meta, bytes) = build_snapshot(&store).unwrap();
        assert_eq!(meta.last_log_id, Some(log_id(1, 7)));
        assert_eq!(
            bytes,
            encode(&SnapshotBody {
                record: record.clone(),
                blocks: blocks.clone()
            })
        );
        let body: SnapshotBody = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(body.record.height, 3);
        assert_eq!(body.blocks.len(), 3);
        // A record behind the stored tip: the snapshot stops at the record's height.
        let behind = AppliedRecord {
            height: 2,
            ..record
        };
        store.append_blocks(&[], Some(&encode(&behind))).unwrap();
        let (_, bytes) = build_snapshot(&store).unwrap();
        assert_eq!(
            bytes,
            encode(&SnapshotBody {
                record: behind,
                blocks: blocks[..2].to_vec()
            })
        );
    }

    #[test]
    fn raft_messages_round_trip_in_postcard() {
        let vote = Vote::new(1, 7);
        let resp: Result<VoteResponse<u64>, RaftError<u64>> = Ok(VoteResponse::new(
            vote,
            Some(LogId::new(openraft::CommittedLeaderId::new(1, 7), 3)),
            true,
        ));
        let bytes = encode(&resp);
        let back: Result<Result<VoteResponse<u64>, RaftError<u64>>, _> =
            postcard::from_bytes(&bytes);
        assert!(back.is_ok(), "{back:?}");
    }
}
