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
use std::ops::RangeBounds;
use std::path::Path;
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
use crate::client::Client;
use crate::identity::{Identity, PublicId};
use crate::placement::NodeInfo;
use crate::proto::{RaftKind, Request, Response};

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

/// The raft node id of a validator: the first 8 bytes of its public key.
pub fn node_id(validator: &PublicId) -> u64 {
    let b = validator.as_bytes();
    u64::from_le_bytes(b[..8].try_into().expect("a public key has 8 bytes"))
}

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

/// The raft log, vote and committed/purged ids in redb; one durable transaction per append.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn open(path: &Path) -> Result<Self, redb::Error> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(LOG_META)?;
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// How many handles on the database are alive.
    pub fn refs(&self) -> usize {
        Arc::strong_count(&self.db)
    }

    fn meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> Result<Option<T>, SErr> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(LOG_META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            None => Ok(None),
            Some(v) => postcard::from_bytes(v.value()).map(Some).map_err(read_err),
        }
    }

    fn set_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), SErr> {
        let mut txn = self.db.begin_write().map_err(write_err)?;
        txn.set_durability(durability).map_err(write_err)?;
        txn.open_table(LOG_META)
            .map_err(write_err)?
            .insert(key, encode(value).as_slice())
            .map_err(write_err)?;
        txn.commit().map_err(write_err)
    }
}

impl RaftLogReader<ChainRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<ChainRaft>>, SErr> {
        let txn = self.db.begin_read().map_err(read_err)?;
        let t = txn.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for row in t.range(range).map_err(read_err)? {
            let (_, v) = row.map_err(read_err)?;
            out.push(postcard::from_bytes(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<ChainRaft> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<ChainRaft>, SErr> {
        // Written by `purge` as an `Option`, like "committed".
        let purged = self.meta::<Option<LogId<u64>>>("purged")?.flatten();
        let last = {
            let txn = self.db.begin_read().map_err(read_err)?;
            let t = txn.open_table(LOG).map_err(read_err)?;
            match t.last().map_err(read_err)? {
                None => None,
                Some((_, v)) => {
                    let e: Entry<ChainRaft> = postcard::from_bytes(v.value()).map_err(read_err)?;
                    Some(e.log_id)
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
        self.set_meta("vote", vote, Durability::Immediate)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        self.meta("vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        // Raft does not need the committed id to survive a crash (it is learnt again from
        // the leader), so it costs no fsync: the next append makes it durable.
        self.set_meta("committed", &committed, Durability::None)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        Ok(self.meta::<Option<LogId<u64>>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<ChainRaft>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<ChainRaft>> + Send,
        I::IntoIter: Send,
    {
        let result = (|| {
            let mut txn = self.db.begin_write().map_err(write_err)?;
            txn.set_durability(Durability::Immediate)
                .map_err(write_err)?;
            {
                let mut t = txn.open_table(LOG).map_err(write_err)?;
                for e in entries {
                    t.insert(e.log_id.index, encode(&e).as_slice())
                        .map_err(write_err)?;
                }
            }
            txn.commit().map_err(write_err)
        })();
        callback.log_io_completed(result.as_ref().map(|_| ()).map_err(io_err));
        result
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut t = txn.open_table(LOG).map_err(write_err)?;
            t.retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let txn = self.db.begin_write().map_err(write_err)?;
        {
            let mut t = txn.open_table(LOG).map_err(write_err)?;
            t.retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
            txn.open_table(LOG_META)
                .map_err(write_err)?
                .insert("purged", encode(&Some(log_id)).as_slice())
                .map_err(write_err)?;
        }
        txn.commit().map_err(write_err)
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
        let validators: Vec<PublicId> = state.validators.iter().copied().collect();
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
        self.commit(&blocks, next, false)?;
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
        let store = &self.shared.store;
        // Raft purges the log entries a snapshot covers: the chain they produced must be
        // durable first (applying commits lazily).
        store.sync().map_err(write_err)?;
        let record: AppliedRecord = match store.consensus_record().map_err(read_err)? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(read_err)?,
            None => AppliedRecord::default(),
        };
        let mut blocks = Vec::new();
        for height in 1..=record.height {
            blocks.push(
                store
                    .block(height)
                    .map_err(read_err)?
                    .ok_or_else(|| read_err(format!("block {height} is missing")))?,
            );
        }
        let meta = SnapshotMeta {
            last_log_id: record.last_applied,
            last_membership: record.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                record.last_applied.map_or(0, |l| l.index),
                record.height
            ),
        };
        let bytes = encode(&SnapshotBody { record, blocks });
        *self.current.lock().expect("snapshot lock") = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The network

/// How validators reach each other: a QUIC client (the host node's identity) and, for each
/// raft node id, the peer that hosts that validator.
pub struct Net {
    pub links: Option<Client>,
    pub hosts: BTreeMap<u64, (PublicId, NodeInfo)>,
}

impl Net {
    /// Sends a validator-to-validator request and returns the `ChainBody` bytes.
    pub async fn request(
        &self,
        target: u64,
        req: &Request,
        body: Vec<u8>,
        timeout: std::time::Duration,
    ) -> Result<Vec<u8>, String> {
        let links = self
            .links
            .as_ref()
            .ok_or("no network: a one-validator chain")?;
        let (_, node) = self
            .hosts
            .get(&target)
            .ok_or_else(|| format!("raft node {target} has no known host"))?;
        match links
            .chain_request_within(node, req, Some(Bytes::from(body)), timeout)
            .await
        {
            Ok((Response::ChainBody { .. }, Some(bytes))) => Ok(bytes),
            Ok((other, _)) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct NetFactory(pub Arc<Net>);

pub struct NetClient {
    net: Arc<Net>,
    target: u64,
}

impl RaftNetworkFactory<ChainRaft> for NetFactory {
    type Network = NetClient;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> NetClient {
        NetClient {
            net: self.0.clone(),
            target,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transport(String);

impl NetClient {
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
            .net
            .request(self.target, &req, body, option.hard_ttl())
            .await
            .map_err(unreachable)?;
        let answer: Result<Resp, RaftError<u64, E>> =
            postcard::from_bytes(&bytes).map_err(|e| unreachable(e.to_string()))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<ChainRaft> for NetClient {
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
