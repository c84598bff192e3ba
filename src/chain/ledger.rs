//! A validator's ledger: accepts signed transactions, batches whatever is waiting into the
//! next block (group commit: one block, one consensus round, however many transactions),
//! and answers queries with inclusion proofs.
//!
//! Blocks are ordered by raft (`raft`). Only the leader's committer makes blocks: it
//! proposes one on its applied tip, sends it to the other validators, each of which applies
//! it to its own state and returns its header signature if it reaches the same state root
//! (an endorsement); once a majority signed, the now final block goes through raft and every
//! validator applies it. A transaction submitted to a follower is forwarded to the leader.
//! One validator is the same code with a one-member raft and no endorsements to gather.
//!
//! A validator signs at most one block per height (the proposer's own included), recorded
//! durably in the chain store before the signature leaves (`ChainStore::lock_endorsement`),
//! and endorses only a block whose proposer's signature verifies, at most
//! [`MAX_AHEAD`] heights past its applied tip (so the states it keeps for blocks not applied
//! yet stay bounded). A leader whose block cannot get a majority because validators signed
//! another block at that height adopts that block when the signatures they return make it
//! final, and re-proposes its own recorded block rather than a new one, so a leader change
//! mid-endorsement does not stall the chain in the common cases.
//!
//! Limits: two majorities of an odd-sized set may share a single validator, so a faulty
//! proposer that sends one block to some endorsers and another block to the others still
//! gets both final (refusing that needs quorums that always share an honest validator:
//! more than two thirds, at the cost of stopping with one of three validators down). A
//! recorded block whose parent lost to another block at the applied tip no longer binds (it
//! can never be applied). Records split across several blocks at one height among the live
//! validators stall that height until enough validators are back.
//!
//! Not for: the network service in front of it (`peer`), the raft log and state machine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use openraft::BasicNode;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::block::{Block, SignedHeader, TxInclusion};
use super::checkpoint::{Checkpoint, CheckpointConfig, CheckpointSignature, StoredCheckpoint};
use super::proof::{
    ProvenAccount, ProvenAwaiting, ProvenDocuments, ProvenGranted, ProvenProposal, ProvenRecord,
    ProvenRecordEntry, ProvenState, ProvenType, Sight,
};
use super::raft::{self, Applied, ChainMachine, Links, LinksFactory, LogStore, Raft, Shared};
use super::state::{DocumentRecord, Genesis, State};
use super::store::{ChainStore, ChainStoreError};
use super::tx::{ChainKey, Signature, SignedTx, TxError};
use super::validators::ValidatorHistory;
use super::workflow::ProposalId;
use crate::id::DocumentId;
use crate::identity::{Identity, PublicId};
use crate::net::{Net, NetOptions};
use crate::placement::NodeInfo;
use crate::proto::{RaftKind, Request, Response};
use crate::tls::TrustPolicy;

/// Most transactions gathered into one block.
pub const MAX_BATCH: usize = 4096;
/// Transactions the leader holds at once between their submission and their answer (in a
/// block or refused) by default; past it a submission is answered `Busy` at once
/// ([`Ledger::set_submit_queue`]).
pub const SUBMIT_QUEUE: usize = 2 * MAX_BATCH;
/// How long the leader waits for endorsements of a block.
pub const ENDORSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How far past its applied tip a validator endorses: twice the blocks a leader has in
/// consensus at once. Further blocks wait (up to [`ENDORSE_TIMEOUT`]) or are refused.
pub const MAX_AHEAD: u64 = 2 * BLOCKS_IN_FLIGHT as u64;

/// A validator's answer to a block it was asked to endorse (postcard, validator to validator).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Endorsement {
    /// Its signature of the block's header.
    Signed(PublicId, Signature),
    /// It signed another block at that height: that block, with the signatures it holds.
    SignedOther(Box<Block>),
    /// Why it does not endorse the block.
    Refused(String),
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] ChainStoreError),
    #[error("transaction refused: {0}")]
    Refused(#[from] TxError),
    #[error("transaction refused by the leader: {0}")]
    RefusedByLeader(String),
    #[error("the ledger stopped")]
    Stopped,
    #[error("the chain's leader is busy: {0}; try again shortly")]
    Busy(String),
    #[error("{0} is not a validator of this chain")]
    NotValidator(PublicId),
    #[error("the chain is unavailable: {0}")]
    Unavailable(String),
    #[error("consensus log: {0}")]
    Log(String),
    #[error("validator {0} has no host in the chain's configuration")]
    NoHost(PublicId),
    #[error("malformed consensus message: {0}")]
    Malformed(String),
    #[error("validators {0} and {1} have the same raft node id: one of them needs another key")]
    NodeIdCollision(PublicId, PublicId),
}

/// How a validator reaches the others: the identity and trust of the node that hosts it
/// (its QUIC connections), and the peer hosting each validator of the chain.
pub struct ValidatorNet {
    pub host_identity: Identity,
    pub trust: Arc<dyn TrustPolicy>,
    /// (validator id, the peer hosting it), one per validator.
    pub hosts: Vec<(PublicId, NodeInfo)>,
}

/// Raft's log and snapshot thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTuning {
    /// Applied log entries between two snapshots.
    pub snapshot_every: u64,
    /// Log entries kept once a snapshot covers them (so a briefly lagging validator catches
    /// up from the log rather than a snapshot).
    pub keep_after_snapshot: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            snapshot_every: 2000,
            keep_after_snapshot: 1000,
        }
    }
}

/// Where a committed transaction sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxReceipt {
    pub height: u64,
    pub index: u32,
    pub tx_id: [u8; 32],
    /// From submission to the durable block.
    pub latency: Duration,
}

/// A summary of the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainStatus {
    pub chain_id: String,
    pub height: u64,
    pub tip_hash: [u8; 32],
    pub state_root: [u8; 32],
    pub validators: Vec<PublicId>,
    pub documents: usize,
    pub layout_epoch: u64,
    /// What every transaction of this chain is signed for (`Genesis::key`).
    pub chain_key: ChainKey,
}

type Job = (
    SignedTx,
    Instant,
    oneshot::Sender<Result<TxReceipt, LedgerError>>,
);

pub struct Ledger {
    shared: Arc<Shared>,
    raft: Raft,
    links: Arc<Links>,
    /// A handle on the raft log, to know when raft has let go of it.
    log: LogStore,
    me: u64,
    /// When the leader's last `AppendEntries` was accepted here, and its commit index then.
    contact: Mutex<Option<(Instant, Option<u64>)>>,
    submit: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    /// Transactions submitted here and not answered yet, and the most allowed.
    queued: Arc<AtomicUsize>,
    max_queued: AtomicUsize,
    committer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    members: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Held through [`Ledger::shutdown`]; true once it has run.
    stopped: tokio::sync::Mutex<bool>,
    /// The tip's signed header, once a proof needed it (`chain::proof`).
    signed_tip: Mutex<Option<SignedHeader>>,
    /// Seconds from proposing a block to its commit and apply, led here
    /// (`dangan_chain_commit_duration_seconds`).
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
    /// The genesis validators, from which the set at any height is proven.
    genesis_validators: Vec<PublicId>,
    /// The task gathering checkpoints (`chain::checkpoint`), once started.
    checkpointer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Ledger {
    /// A one-validator chain in `path` (the embedded default): a one-member raft.
    pub async fn open_single(
        path: &Path,
        genesis: &Genesis,
        validator: Identity,
    ) -> Result<Self, LedgerError> {
        Self::open(path, genesis, validator, None).await
    }

    /// Opens the chain in `path` (verifying it) and its raft log next to it
    /// (`<path>.raft`), joins the validators named by `net` (alone without one), and starts
    /// committing blocks signed by `validator`. Must be called within a tokio runtime.
    ///
    /// A validator not (yet) in the chain's validator set may open with a network that names
    /// its host: it waits, as a raft learner, until an `AddValidator` for it commits and the
    /// leader adds it, then catches up from the log or a snapshot.
    pub async fn open(
        path: &Path,
        genesis: &Genesis,
        validator: Identity,
        net: Option<ValidatorNet>,
    ) -> Result<Self, LedgerError> {
        Self::open_tuned(path, genesis, validator, net, RaftTuning::default()).await
    }

    /// [`Ledger::open`] with raft's snapshot and log thresholds chosen.
    pub async fn open_tuned(
        path: &Path,
        genesis: &Genesis,
        validator: Identity,
        net: Option<ValidatorNet>,
        tuning: RaftTuning,
    ) -> Result<Self, LedgerError> {
        let (store, state, header) = {
            let (path, genesis) = (path.to_owned(), genesis.clone());
            tokio::task::spawn_blocking(move || ChainStore::open(&path, &genesis))
                .await
                .map_err(|e| LedgerError::Log(e.to_string()))??
        };
        let me_id = validator.public();
        let genesis_validators: Vec<PublicId> = genesis.validators.iter().map(|v| v.id).collect();
        let member = state.validators().contains(&me_id);
        let joining = !member
            && net
                .as_ref()
                .is_some_and(|n| n.hosts.iter().any(|(v, _)| *v == me_id));
        if !member && !joining {
            return Err(LedgerError::NotValidator(me_id));
        }
        let me = raft::node_id(&me_id);
        let mut hosts = BTreeMap::new();
        for (v, node) in net.iter().flat_map(|n| &n.hosts) {
            if let Some((other, _)) = hosts.insert(raft::node_id(v), (*v, node.clone()))
                && other != *v
            {
                return Err(LedgerError::NodeIdCollision(other, *v));
            }
        }
        let mut links = Links::new(hosts);
        if let Some(net) = net {
            let options = NetOptions {
                connect_timeout: Duration::from_secs(1),
                request_timeout: Duration::from_secs(10),
                down_for: Duration::from_millis(200),
                ..NetOptions::default()
            };
            let trust = links.trust(net.trust);
            links.net = Some(
                Net::new(&net.host_identity, trust, options)
                    .map_err(|e| LedgerError::Unavailable(e.to_string()))?,
            );
        }
        let net = links;
        // Hosts the chain names take precedence over the cluster file's.
        net.learn(state.validator_hosts());
        let members: BTreeMap<u64, BasicNode> = state
            .validators()
            .iter()
            .map(|v| {
                let id = raft::node_id(v);
                let addr = net.host(id).map(|(_, n)| n.addr);
                match addr {
                    Some(addr) => Ok((id, BasicNode { addr })),
                    None if id == me => Ok((id, BasicNode::default())),
                    None => Err(LedgerError::NoHost(*v)),
                }
            })
            .collect::<Result<_, _>>()?;
        let net = Arc::new(net);
        let shared = Arc::new(Shared::new(store, state, header, validator));
        let machine = ChainMachine::new(shared.clone())?;
        let log_path = path.with_extension("raft");
        let log = tokio::task::spawn_blocking(move || LogStore::open(&log_path))
            .await
            .map_err(|e| LedgerError::Log(e.to_string()))?
            .map_err(|e| LedgerError::Log(e.to_string()))?;
        let config = openraft::Config {
            cluster_name: "dangan-chain".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            max_payload_entries: 16,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(tuning.snapshot_every),
            max_in_snapshot_log_to_keep: tuning.keep_after_snapshot,
            // A lagging validator gets a snapshot once it is further behind than what the
            // log keeps.
            replication_lag_threshold: tuning.snapshot_every + tuning.keep_after_snapshot,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| LedgerError::Log(e.to_string()))?;
        let raft = Raft::new(
            me,
            Arc::new(config),
            LinksFactory(net.clone()),
            log.clone(),
            machine,
        )
        .await
        .map_err(|e| LedgerError::Log(e.to_string()))?;
        // A joining validator waits to be added by the leader.
        if member
            && !raft
                .is_initialized()
                .await
                .map_err(|e| LedgerError::Log(e.to_string()))?
        {
            // Every validator initializes with the same members: allowed, and whichever
            // starts first does not have to wait for the others' configs.
            if let Err(e) = raft.initialize(members).await {
                debug!(error = %e, "raft already initialized");
            }
        }
        let (submit, rx) = mpsc::unbounded_channel();
        let seal = Arc::new(tokio::sync::Notify::new());
        let commit_seconds = crate::metrics::latency_histogram();
        let committer = tokio::spawn(commit_loop(
            rx,
            shared.clone(),
            raft.clone(),
            net.clone(),
            me,
            seal.clone(),
            commit_seconds.clone(),
        ));
        tokio::spawn(seal_genesis(
            Arc::downgrade(&shared),
            raft.metrics(),
            me,
            seal,
        ));
        let members = tokio::spawn(follow_validator_set(
            shared.clone(),
            raft.clone(),
            net.clone(),
            me,
        ));
        info!(validator = %me_id.short(), node = me, joining, "validator started");
        Ok(Self {
            shared,
            raft,
            links: net,
            log,
            me,
            contact: Mutex::new(None),
            submit: Mutex::new(Some(submit)),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued: AtomicUsize::new(SUBMIT_QUEUE),
            committer: Mutex::new(Some(committer)),
            members: Mutex::new(Some(members)),
            stopped: tokio::sync::Mutex::new(false),
            signed_tip: Mutex::new(None),
            commit_seconds,
            genesis_validators,
            checkpointer: Mutex::new(None),
        })
    }

    /// Stops committing and consensus, and closes the validator's connections; the chain
    /// and log files are closed once the ledger is dropped. Calling it again (the hosting
    /// peer stops it, then its owner) waits for the first call and does nothing more.
    pub async fn shutdown(&self) {
        let mut stopped = self.stopped.lock().await;
        if std::mem::replace(&mut *stopped, true) {
            return;
        }
        self.submit.lock().expect("submit lock").take();
        let committer = self.committer.lock().expect("committer lock").take();
        let members = self.members.lock().expect("members lock").take();
        let checkpointer = self.checkpointer.lock().expect("checkpointer lock").take();
        for task in [committer, members, checkpointer].into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
        let _ = self.raft.shutdown().await;
        if let Some(net) = &self.links.net {
            net.close().await;
        }
        // Raft's storage tasks end shortly after its core: wait until they let go of the
        // chain and log files, so they can be opened again at once.
        let deadline = Instant::now() + Duration::from_secs(5);
        while (Arc::strong_count(&self.shared) > 1 || self.log.refs() > 1)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The log's writer thread writes what is queued and stops.
        let log = self.log.clone();
        let _ = tokio::task::spawn_blocking(move || log.close()).await;
        // Blocks are applied without an fsync of their own (the raft log holds them): a
        // clean stop makes them durable, so a restart opens at the same tip at once.
        let store = self.shared.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || store.store.sync())
            .await
            .unwrap_or(Ok(()))
        {
            warn!(error = %e, "making the chain durable at shutdown failed");
        }
    }

    /// The raft node id of the current leader, if one is known.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// The peer hosting the leader, when the leader is another validator this one heard
    /// from within [`LEADER_FRESH`] (so a client is not sent to a leader that just died).
    pub fn leader_host(&self) -> Option<NodeInfo> {
        match self.leader() {
            Some(l) if l != self.me && self.fresh_contact().is_some() => {
                self.links.host(l).map(|(_, node)| node)
            }
            _ => None,
        }
    }

    /// Raft's view of this validator: role, log, snapshot, membership.
    pub fn raft_metrics(&self) -> openraft::RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The raft voters as this validator knows them.
    pub fn raft_voters(&self) -> std::collections::BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// How many snapshots from a leader this validator installed since it started.
    pub fn snapshots_installed(&self) -> u64 {
        self.shared
            .snapshots_installed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This validator's raft node id.
    pub fn node_id(&self) -> u64 {
        self.me
    }

    /// The key every transaction of this chain is signed for.
    pub fn chain_key(&self) -> ChainKey {
        self.shared
            .tip
            .lock()
            .expect("ledger lock")
            .state
            .chain_key()
    }

    /// Whether `who` is the node identity of a peer hosting one of the validators.
    pub fn is_validator_host(&self, who: &PublicId) -> bool {
        self.links.is_host(who)
    }

    /// Submits a transaction and waits until the block holding it is durable on a majority
    /// of validators and applied here or on the leader. On a follower it is forwarded to
    /// the leader; during an election it waits for one (a few seconds at most).
    pub async fn submit(&self, tx: SignedTx) -> Result<TxReceipt, LedgerError> {
        let start = Instant::now();
        let mut last = LedgerError::Unavailable("no leader elected".into());
        // Whether an earlier attempt may have committed the transaction after all.
        let mut ambiguous = false;
        for _ in 0..30 {
            let result = match self.leader() {
                Some(l) if l == self.me => self.submit_here(tx.clone(), start).await,
                Some(l) => self.forward(l, &tx, start).await,
                None => Err(LedgerError::Unavailable("no leader elected".into())),
            };
            match result {
                Err(e @ LedgerError::Unavailable(_)) => {
                    ambiguous = true;
                    last = e;
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                Err(LedgerError::Refused(TxError::BadNonce { expected, got, .. }))
                    if got < expected && ambiguous =>
                {
                    // Possibly our own earlier attempt, committed after all.
                    return match self.committed_receipt(&tx, start) {
                        Some(r) => Ok(r),
                        None => Err(LedgerError::Refused(TxError::BadNonce {
                            expected,
                            got,
                            sender: tx.tx.sender,
                        })),
                    };
                }
                other => return other,
            }
        }
        Err(last)
    }

    fn committed_receipt(&self, tx: &SignedTx, start: Instant) -> Option<TxReceipt> {
        let id = tx.id();
        let (height, index) = self.shared.store.tx_location(&id).ok()??;
        Some(TxReceipt {
            height,
            index,
            tx_id: id,
            latency: start.elapsed(),
        })
    }

    /// Bounds the transactions this validator holds, as leader, between their submission
    /// and their answer: past `max`, submissions are answered [`LedgerError::Busy`].
    pub fn set_submit_queue(&self, max: usize) {
        self.max_queued.store(max, Ordering::Relaxed);
    }

    /// The histogram of block commit times on this validator as leader (from proposing a
    /// block to its commit and apply): the node registers it with its metrics.
    pub fn commit_latency(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.commit_seconds.clone()
    }

    /// Transactions submitted to this validator, as leader, not answered yet.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    async fn submit_here(&self, tx: SignedTx, start: Instant) -> Result<TxReceipt, LedgerError> {
        // A sender with no account is refused by the state anyway: it takes no place in
        // the queue (strangers cannot fill it).
        if self.account(&tx.tx.sender).is_none() {
            return Err(LedgerError::Refused(TxError::UnknownSender(tx.tx.sender)));
        }
        let max = self.max_queued.load(Ordering::Relaxed);
        if self.queued.fetch_add(1, Ordering::AcqRel) >= max {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(LedgerError::Busy(format!(
                "{max} transactions are waiting for a block"
            )));
        }
        let _held = Held(self.queued.clone());
        let (reply, rx) = oneshot::channel();
        self.submit
            .lock()
            .expect("submit lock")
            .as_ref()
            .ok_or(LedgerError::Stopped)?
            .send((tx, start, reply))
            .map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }

    async fn forward(
        &self,
        leader: u64,
        tx: &SignedTx,
        start: Instant,
    ) -> Result<TxReceipt, LedgerError> {
        let Some(net) = &self.links.net else {
            return Err(LedgerError::Unavailable("no network".into()));
        };
        let Some((_, node)) = self.links.host(leader) else {
            return Err(LedgerError::Unavailable(format!(
                "leader {leader} has no host"
            )));
        };
        let bytes = Bytes::from(tx.encode());
        let req = Request::SubmitTx {
            len: bytes.len() as u64,
        };
        match net.exchange(&node, &req, Some(&bytes)).await {
            Ok((Response::Committed { height, index }, _)) => Ok(TxReceipt {
                height,
                index,
                tx_id: tx.id(),
                latency: start.elapsed(),
            }),
            Ok((other, _)) => Err(LedgerError::Unavailable(format!(
                "the leader answered {other:?}"
            ))),
            Err(e) if e.remote_code() == Some(crate::proto::ErrorCode::Busy) => {
                Err(LedgerError::Busy(format!("the leader answered: {e}")))
            }
            Err(e) => match e.refusal() {
                Some(reason) => Err(LedgerError::RefusedByLeader(reason.to_string())),
                None => Err(LedgerError::Unavailable(format!(
                    "forwarding to the leader: {e}"
                ))),
            },
        }
    }

    /// Serves a consensus message from another validator (postcard bytes in and out).
    pub async fn raft_message(&self, kind: RaftKind, body: &[u8]) -> Result<Vec<u8>, LedgerError> {
        raft::serve_rpc(&self.raft, kind, body, |commit| {
            *self.contact.lock().expect("contact lock") = Some((Instant::now(), commit));
        })
        .await
        .map_err(LedgerError::Malformed)
    }

    /// Whether this validator heard from its leader within [`LEADER_FRESH`]: the leader's
    /// commit index then, if so.
    fn fresh_contact(&self) -> Option<Option<u64>> {
        let contact = *self.contact.lock().expect("contact lock");
        contact
            .filter(|(at, _)| at.elapsed() < LEADER_FRESH)
            .map(|(_, commit)| commit)
    }

    /// Whether this validator's answers are as new as the chain: it is the leader, or it
    /// heard from the leader within [`LEADER_FRESH`] and has applied everything the leader
    /// had committed then. A validator that was stopped, cut off or is catching up is not
    /// current, and answers queries `Unavailable` so the client asks another one rather than
    /// read state older than what it may already have seen.
    pub fn is_current(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader == Some(self.me) {
            // A leader restored from its own vote on disk is not one until a quorum answers.
            let voters = metrics.membership_config.membership().voter_ids().count();
            return voters <= 1
                || metrics
                    .millis_since_quorum_ack
                    .is_some_and(|ms| u128::from(ms) < LEADER_FRESH.as_millis());
        }
        let Some(commit) = self.fresh_contact() else {
            return false;
        };
        let applied = metrics.last_applied.map(|l| l.index);
        commit.is_none_or(|c| applied.is_some_and(|a| a >= c))
    }

    /// Endorses a block proposed by the leader: checks the proposer's signature, applies
    /// the block on this validator's own state (the tip, or a block it signed just before)
    /// and, if that reaches the header's state root and it signed no other block at that
    /// height, records the block durably and returns this validator's header signature.
    /// Answer: postcard bytes of an [`Endorsement`].
    pub async fn endorse(&self, body: &[u8]) -> Vec<u8> {
        let answer = match self.endorse_block(body).await {
            Ok(answer) => answer,
            Err(why) => Endorsement::Refused(why),
        };
        postcard::to_allocvec(&answer).expect("encoding into memory cannot fail")
    }

    async fn endorse_block(&self, body: &[u8]) -> Result<Endorsement, String> {
        let block: Block =
            postcard::from_bytes(body).map_err(|e| format!("malformed block: {e}"))?;
        let h = block.header.header.clone();
        block
            .header
            .verify_signer(&h.proposer)
            .map_err(|e| format!("refused: {e}"))?;
        let mut applied = self.shared.applied.subscribe();
        let deadline = Instant::now() + ENDORSE_TIMEOUT;
        let (prev, state) = loop {
            let done = *applied.borrow();
            if done >= h.height {
                return Err(format!("height {} is already applied here", h.height));
            }
            if h.height <= done + MAX_AHEAD
                && let Some(found) = self.shared.state_after(&h.prev)
            {
                break found;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(wait, applied.changed()).await.is_err() || wait.is_zero() {
                return Err(if h.height > done + MAX_AHEAD {
                    format!(
                        "block {} is more than {MAX_AHEAD} heights past the applied tip {done}",
                        h.height
                    )
                } else {
                    format!("the parent of block {} is unknown here", h.height)
                });
            }
        };
        let validators: Vec<PublicId> = state.validators().iter().copied().collect();
        if !validators.contains(&h.proposer) {
            return Err(format!("proposer {} is not a validator", h.proposer));
        }
        let shared = self.shared.clone();
        let start = Instant::now();
        tokio::task::spawn_blocking(move || {
            let after = block
                .apply_to(State::clone(&state), &prev)
                .map(Arc::new)
                .map_err(|e| e.to_string())?;
            let mut signed = block;
            signed.header.sign(&shared.validator);
            // Recorded durably before the signature leaves: one block per height.
            if let Some(other) = shared.lock(&signed).map_err(|e| e.to_string())? {
                debug!(
                    height = h.height,
                    "refusing a second block at a height this validator signed"
                );
                return Ok(Endorsement::SignedOther(Box::new(other)));
            }
            let (who, sig) = signed.endorsement(&shared.validator);
            shared
                .prepared
                .lock()
                .expect("prepared lock")
                .insert(h.hash(), (h.clone(), after));
            debug!(
                target: "dangan::chain",
                height = h.height,
                txs = signed.txs.len(),
                endorse_ms = ms(start.elapsed()),
                "block endorsed"
            );
            Ok(Endorsement::Signed(who, sig))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    pub fn status(&self) -> ChainStatus {
        let tip = self.shared.tip.lock().expect("ledger lock");
        ChainStatus {
            chain_id: tip.state.chain_id().to_owned(),
            height: tip.header.height,
            tip_hash: tip.header.hash(),
            state_root: tip.state.root(),
            validators: tip.state.validators().iter().copied().collect(),
            documents: tip.state.document_count(),
            layout_epoch: tip.state.layout().epoch,
            chain_key: tip.state.chain_key(),
        }
    }

    /// An account as of the last block.
    pub fn account(&self, id: &PublicId) -> Option<super::state::Account> {
        self.shared
            .tip
            .lock()
            .expect("ledger lock")
            .state
            .account(id)
            .cloned()
    }

    /// A registered document's record as of the last block (no proof: see `document`).
    pub fn record(&self, id: &DocumentId) -> Option<DocumentRecord> {
        self.shared
            .tip
            .lock()
            .expect("ledger lock")
            .state
            .document(id)
            .cloned()
    }

    /// The state as of the last block and that block's signed header, which proofs are
    /// made against (`chain::proof`). Unavailable while the chain is at its genesis, which
    /// no block has sealed yet (the leader seals it at once).
    fn proven_tip(&self) -> Result<(Arc<State>, SignedHeader), LedgerError> {
        let (state, header) = {
            let tip = self.shared.tip.lock().expect("ledger lock");
            (tip.state.clone(), tip.header.clone())
        };
        if header.height == 0 {
            return Err(LedgerError::Unavailable(
                "the chain's genesis is not sealed by a block yet; ask again shortly".into(),
            ));
        }
        let mut cached = self.signed_tip.lock().expect("signed tip lock");
        if let Some(signed) = cached.as_ref().filter(|s| s.header == header) {
            return Ok((state, signed.clone()));
        }
        // The tip's block is stored before it becomes the tip.
        let block = self
            .shared
            .store
            .block(header.height)?
            .filter(|b| b.header.header == header)
            .ok_or_else(|| ChainStoreError::Decode {
                height: header.height,
                reason: "the tip's block is not stored".into(),
            })?;
        *cached = Some(block.header.clone());
        Ok((state, block.header))
    }

    /// Waits until the chain is past its genesis (sealed by a block: see `seal_genesis`),
    /// at most `within`; from then on this validator answers proven queries.
    pub async fn sealed(&self, within: Duration) -> Result<(), LedgerError> {
        let mut applied = self.shared.applied.subscribe();
        tokio::time::timeout(within, applied.wait_for(|h| *h > 0))
            .await
            .map_err(|_| {
                LedgerError::Unavailable(format!(
                    "no leader sealed the chain's genesis within {within:?}"
                ))
            })?
            .map(drop)
            .map_err(|_| LedgerError::Stopped)
    }

    /// The state's top as of the last block, with that block's signed header.
    pub fn proven_state(&self) -> Result<ProvenState, LedgerError> {
        let (state, header) = self.proven_tip()?;
        Ok(ProvenState::of(&state, header))
    }

    /// An account (or its absence) as of the last block, with its proof.
    pub fn proven_account(&self, id: &PublicId) -> Result<ProvenAccount, LedgerError> {
        let (state, header) = self.proven_tip()?;
        Ok(ProvenAccount::of(&state, header, id))
    }

    /// A document record (or its absence) as of the last block, whole, with its proof.
    pub fn proven_record(&self, id: &DocumentId) -> Result<ProvenRecord, LedgerError> {
        let (state, header) = self.proven_tip()?;
        Ok(ProvenRecord::of(&state, header, id))
    }

    /// A proposal (or its absence) as of the last block, with its proof.
    pub fn proven_proposal(&self, id: &ProposalId) -> Result<ProvenProposal, LedgerError> {
        let (state, header) = self.proven_tip()?;
        Ok(ProvenProposal::of(&state, header, id))
    }

    /// The proposal `document` waits for (or none) as of the last block, with its proof.
    pub fn proven_awaiting(&self, document: &DocumentId) -> Result<ProvenAwaiting, LedgerError> {
        let (state, header) = self.proven_tip()?;
        Ok(ProvenAwaiting::of(&state, header, document))
    }

    /// Whether `document` waits, as of the last block, for an open proposal that would
    /// register it (`chain::workflow`).
    pub fn awaits_registration(&self, document: &DocumentId) -> bool {
        let tip = self.shared.tip.lock().expect("ledger lock");
        tip.state
            .workflows()
            .awaiting(document)
            .is_some_and(|a| tip.header.height < a.expires_at)
    }

    /// The proposals open now that name `approver` and that it has not answered, after
    /// `after` (`Workflows::awaiting_answer`, no proof).
    pub fn proposals_awaiting(
        &self,
        approver: &PublicId,
        after: Option<ProposalId>,
    ) -> Vec<ProposalId> {
        let tip = self.shared.tip.lock().expect("ledger lock");
        // The next block is the first that could apply an answer.
        let next = tip.header.height.saturating_add(1);
        tip.state.workflows().awaiting_answer(approver, next, after)
    }

    /// A page of at least `limit` registered document ids after `after` (or up to the
    /// last), as of the last block, with its proof that none is left out.
    pub fn proven_documents(
        &self,
        after: Option<&DocumentId>,
        limit: usize,
    ) -> Result<ProvenDocuments, LedgerError> {
        let (state, header) = self.proven_tip()?;
        Ok(ProvenDocuments::of(&state, header, after, limit))
    }

    /// Documents with a live grant to `grantee` after `after`, as `sight` lets the asker see
    /// them (see [`ProvenGranted`]).
    pub fn proven_granted(
        &self,
        grantee: &PublicId,
        after: Option<&DocumentId>,
        sight: impl Fn(&DocumentRecord) -> Sight,
    ) -> Result<ProvenGranted, LedgerError> {
        let (state, header) = self.proven_tip()?;
        Ok(ProvenGranted::of(
            &state,
            header,
            grantee,
            after,
            crate::now_ms(),
            sight,
        ))
    }

    /// A document type's version (the current one without `version`), or its absence, as
    /// of the last block, with its proof.
    pub fn proven_type(&self, name: &str, version: Option<u32>) -> Result<ProvenType, LedgerError> {
        let (state, header) = self.proven_tip()?;
        Ok(ProvenType::of(&state, header, name, version))
    }

    /// A document's record entry (type, retention, holds), or its absence, as of the last
    /// block, with its proof.
    pub fn proven_record_entry(&self, id: &DocumentId) -> Result<ProvenRecordEntry, LedgerError> {
        let (state, header) = self.proven_tip()?;
        Ok(ProvenRecordEntry::of(&state, header, id))
    }

    /// `f` over the document types and record entries as of the last block (no proof).
    pub fn records<T>(&self, f: impl FnOnce(&super::records::Records) -> T) -> T {
        f(self.shared.tip.lock().expect("ledger lock").state.records())
    }

    /// `f` over the buckets and names as of the last block (no proof).
    pub fn names<T>(&self, f: impl FnOnce(&super::names::Names) -> T) -> T {
        f(self.shared.tip.lock().expect("ledger lock").state.names())
    }

    /// A copy of the current state.
    pub fn state(&self) -> State {
        State::clone(&self.shared.tip.lock().expect("ledger lock").state)
    }

    pub fn block(&self, height: u64) -> Result<Option<Block>, LedgerError> {
        Ok(self.shared.store.block(height)?)
    }

    /// A committed transaction and its proof, by transaction id.
    pub fn transaction(&self, id: &[u8; 32]) -> Result<Option<TxInclusion>, LedgerError> {
        match self.shared.store.tx_location(id)? {
            Some((height, index)) => self.proof_at(height, index),
            None => Ok(None),
        }
    }

    /// Every validator set change of the chain, in order, each with its proof: what a
    /// reader needs to know the validators of any height (`chain::validators`).
    pub fn validator_changes(&self) -> Result<Vec<TxInclusion>, LedgerError> {
        let mut out = Vec::new();
        for (height, index) in self.shared.store.validator_changes()? {
            // A change the store indexes is in a stored block.
            let proof = self
                .proof_at(height, index)?
                .ok_or(ChainStoreError::Decode {
                    height,
                    reason: "missing".into(),
                })?;
            out.push(proof);
        }
        Ok(out)
    }

    /// The validator set at every height, proven from the genesis set.
    pub fn validator_history(&self) -> Result<ValidatorHistory, LedgerError> {
        ValidatorHistory::prove(&self.genesis_validators, &self.validator_changes()?)
            .map_err(|e| LedgerError::Log(format!("the stored validator set changes: {e}")))
    }

    /// Starts making a signed checkpoint every `config.every` blocks (`chain::checkpoint`);
    /// stopped by [`Ledger::shutdown`].
    pub fn start_checkpoints(self: &Arc<Self>, config: CheckpointConfig) {
        let task = tokio::spawn(super::checkpoint::gather(Arc::downgrade(self), config));
        if let Some(old) = self
            .checkpointer
            .lock()
            .expect("checkpointer lock")
            .replace(task)
        {
            old.abort();
        }
    }

    /// This validator's signature of the checkpoint of block `height`, once it applied it.
    pub fn checkpoint_signature(
        &self,
        height: u64,
    ) -> Result<Option<CheckpointSignature>, LedgerError> {
        if height == 0 || height > *self.shared.applied.borrow() {
            return Ok(None);
        }
        Ok(self.shared.store.block(height)?.map(|b| {
            CheckpointSignature::sign(&Checkpoint::of(&b.header.header), &self.shared.validator)
        }))
    }

    /// The checkpoint kept at `height`, or the latest one.
    pub fn checkpoint(&self, height: Option<u64>) -> Result<Option<StoredCheckpoint>, LedgerError> {
        match self.shared.store.checkpoint(height)? {
            None => Ok(None),
            Some((h, bytes)) => postcard::from_bytes(&bytes).map(Some).map_err(|e| {
                ChainStoreError::Decode {
                    height: h,
                    reason: format!("stored checkpoint: {e}"),
                }
                .into()
            }),
        }
    }

    /// The first checkpoint kept at or above `height` (the one that covers a block).
    pub fn checkpoint_covering(
        &self,
        height: u64,
    ) -> Result<Option<StoredCheckpoint>, LedgerError> {
        match self.shared.store.checkpoint_covering(height)? {
            None => Ok(None),
            Some(h) => self.checkpoint(Some(h)),
        }
    }

    /// Keeps `stored` as the checkpoint of `height`, durably.
    pub(crate) async fn keep_checkpoint(
        &self,
        height: u64,
        stored: &StoredCheckpoint,
    ) -> Result<(), LedgerError> {
        let shared = self.shared.clone();
        let bytes = postcard::to_allocvec(stored).expect("encoding into memory cannot fail");
        tokio::task::spawn_blocking(move || shared.store.put_checkpoint(height, &bytes))
            .await
            .map_err(|e| LedgerError::Unavailable(e.to_string()))??;
        Ok(())
    }

    /// The applied height, for waiters.
    pub(crate) fn applied_heights(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.applied.subscribe()
    }

    /// Asks the validator of raft node `node` (over the validators' links).
    pub(crate) fn ask_validator(
        &self,
        node: u64,
        req: Request,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, String>> + Send + 'static {
        let links = self.links.clone();
        async move { links.request(node, &req, Vec::new(), timeout).await }
    }

    /// The inclusion proof of transaction `index` of block `height`.
    fn proof_at(&self, height: u64, index: u32) -> Result<Option<TxInclusion>, LedgerError> {
        let Some(block) = self.shared.store.block(height)? else {
            return Ok(None);
        };
        let proof = block
            .inclusion(index as usize)
            .map_err(|e| ChainStoreError::Tampered { height, source: e })?;
        Ok(Some(proof))
    }

    /// A registered document's record with its proof, and the proof of the transaction
    /// that registered it; `None` if it is not registered.
    pub fn document(
        &self,
        id: &DocumentId,
    ) -> Result<Option<(ProvenRecord, TxInclusion)>, LedgerError> {
        let record = self.proven_record(id)?;
        if record.record.is_none() {
            return Ok(None);
        }
        let Some((height, index)) = self.shared.store.document_location(id)? else {
            return Ok(None);
        };
        Ok(self.proof_at(height, index)?.map(|proof| (record, proof)))
    }
}

/// How recently a follower must have heard from the leader (which sends something every
/// heartbeat, 100 ms) to send clients there, or to answer queries as current.
pub const LEADER_FRESH: Duration = Duration::from_secs(1);

/// How long a transaction whose nonce is ahead of its sender's waits for the ones before it.
pub const NONCE_GAP_WAIT: Duration = Duration::from_secs(2);

/// Blocks the leader has in consensus at once: each next block is proposed on the state
/// after the previous one, before that one is committed.
pub const BLOCKS_IN_FLIGHT: usize = 4;

/// The leader's block maker: takes whatever is waiting, makes one block of it, gathers a
/// majority of endorsements, hands it to raft and goes on with the next batch (up to
/// [`BLOCKS_IN_FLIGHT`] blocks in consensus at once); each block's transactions are
/// answered once it is committed and applied. Raft keeps the blocks in the order they were
/// handed over; if one of them is skipped (a leader change), the ones after it are too, and
/// their transactions are proposed again on the applied tip.
///
/// Transactions of one sender are applied in nonce order, whatever order they arrived in;
/// one whose nonce is ahead waits up to [`NONCE_GAP_WAIT`] for the missing ones, so a
/// client may have several transactions in flight at once.
async fn commit_loop(
    mut rx: mpsc::UnboundedReceiver<Job>,
    shared: Arc<Shared>,
    raft: Raft,
    net: Arc<Links>,
    me: u64,
    seal: Arc<tokio::sync::Notify>,
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
) {
    let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<Queued>();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(BLOCKS_IN_FLIGHT));
    let reset = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The last block handed to raft and the state after it, while it may not be applied.
    let mut spec: Option<(super::block::BlockHeader, Arc<State>)> = None;
    let mut waiting: Vec<Queued> = Vec::new();
    loop {
        let Some((jobs, permit)) =
            gather_batch(&mut rx, &mut retry_rx, &mut waiting, &in_flight, &seal).await
        else {
            return;
        };
        // An empty block only to seal the genesis state (see `seal_genesis`).
        let sealing = jobs.is_empty() && spec.is_none() && *shared.applied.borrow() == 0;
        if jobs.is_empty() && !sealing {
            continue;
        }
        if reset.swap(false, std::sync::atomic::Ordering::SeqCst) {
            spec = None;
        }
        let Some(Proposal {
            block,
            after,
            prev,
            base,
            validators,
            mut included,
            waited,
            proposed,
        }) = propose_batch(&shared, &spec, jobs, &mut waiting, sealing).await
        else {
            continue;
        };
        let height = block.header.header.height;
        let mut header = block.header.header.clone();
        let mut after = after;
        let endorsing = Instant::now();
        let mut endorsed = endorse(&net, me, block, &validators).await;
        if let Ok(adopted) = &endorsed
            && adopted.header.header.hash() != header.hash()
        {
            // Another block signed at this height got a majority: it goes to raft, and this
            // block's transactions are proposed again after it.
            info!(
                height,
                "adopting the block the other validators signed at this height"
            );
            let (x, prev) = (adopted.clone(), prev.clone());
            let applied =
                tokio::task::spawn_blocking(move || x.apply_to(State::clone(&base), &prev))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
            match applied {
                Ok(state) => {
                    header = adopted.header.header.clone();
                    after = Arc::new(state);
                    for (job, _) in std::mem::take(&mut included) {
                        let _ = retry_tx.send(job);
                    }
                }
                Err(e) => endorsed = Err(LedgerError::Unavailable(format!("adopted block: {e}"))),
            }
        }
        let endorse_time = endorsing.elapsed();
        let committing = Instant::now();
        let pending = match hand_to_raft(&shared, &raft, endorsed, &header, &after).await {
            Ok(pending) => {
                spec = Some((header, after));
                pending
            }
            Err(e) => {
                warn!(error = %e, height, "block not committed; its transactions are refused");
                let msg = e.to_string();
                for ((_, _, reply), _) in included.into_iter().map(|(job, _)| job) {
                    let _ = reply.send(Err(LedgerError::Unavailable(msg.clone())));
                }
                continue;
            }
        };
        let times = BlockTimes {
            waited,
            proposed,
            endorse: endorse_time,
            committing,
        };
        let (raft, retry_tx, reset) = (raft.clone(), retry_tx.clone(), reset.clone());
        let commit_seconds = commit_seconds.clone();
        tokio::spawn(async move {
            let outcome = match pending.await {
                Ok(Ok(resp)) => Ok(resp.data),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("raft stopped".to_string()),
            };
            drop(permit);
            let done = (&raft, &retry_tx, &*reset, &commit_seconds);
            answer_block(outcome, height, included, times, done).await;
        });
    }
}

/// A transaction waiting for a block, with how long it may wait for a missing nonce.
type Queued = (Job, Instant);

/// One transaction counted in [`Ledger::queued`] until it is answered (or its submitter
/// gives up waiting).
struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How raft answers a block handed to it.
type WriteResponder = <super::raft::ChainRaft as openraft::RaftTypeConfig>::Responder;
/// Raft's answer to a block handed to it: once committed and applied, what applying said.
type Written =
    <WriteResponder as openraft::raft::responder::Responder<super::raft::ChainRaft>>::Receiver;

/// A block proposed on the newest state, not yet endorsed.
struct Proposal {
    block: Block,
    /// The state after the block.
    after: Arc<State>,
    /// The header and the state it extends.
    prev: super::block::BlockHeader,
    base: Arc<State>,
    /// The validators whose endorsements the block needs (a majority of them).
    validators: Vec<PublicId>,
    /// The transactions in the block, each with its index there.
    included: Vec<(Queued, u32)>,
    /// How long the oldest transaction waited for a block slot.
    waited: Duration,
    /// How long proposing took.
    proposed: Duration,
}

/// Where a block's time went (`RUST_LOG=dangan::chain=debug`): how long the oldest
/// transaction waited for a block slot, then propose, endorse, raft commit + apply.
struct BlockTimes {
    waited: Duration,
    proposed: Duration,
    endorse: Duration,
    /// When the block was handed to raft.
    committing: Instant,
}

/// Waits for a transaction (or a retry, or the end of a nonce-gap wait), then for room for
/// one more block in consensus, and takes whatever is waiting by then; returns the batch
/// sorted by sender and nonce (possibly empty) with its block slot, or `None` once the
/// ledger stops submitting.
async fn gather_batch(
    rx: &mut mpsc::UnboundedReceiver<Job>,
    retry_rx: &mut mpsc::UnboundedReceiver<Queued>,
    waiting: &mut Vec<Queued>,
    in_flight: &Arc<tokio::sync::Semaphore>,
    seal: &tokio::sync::Notify,
) -> Option<(Vec<Queued>, tokio::sync::OwnedSemaphorePermit)> {
    let deadline = waiting.iter().map(|(_, until)| *until).min();
    let sleep = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    let mut jobs: Vec<Queued> = Vec::new();
    tokio::select! {
        job = rx.recv() => match job {
            Some(job) => jobs.push((job, Instant::now() + NONCE_GAP_WAIT)),
            None => return None,
        },
        Some(job) = retry_rx.recv() => jobs.push(job),
        _ = sleep => {}
        _ = seal.notified() => {}
    }
    // One more block in consensus: wait for room before proposing on the newest state,
    // and only then take what is waiting, so that what arrived meanwhile goes into this
    // block (under load blocks grow instead of queueing behind the ones in flight).
    let permit = in_flight
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let now = Instant::now();
    jobs.append(waiting);
    while let Ok(job) = retry_rx.try_recv() {
        jobs.push(job);
    }
    while jobs.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => jobs.push((job, now + NONCE_GAP_WAIT)),
            Err(_) => break,
        }
    }
    jobs.sort_by_key(|((tx, _, _), _)| (tx.tx.sender, tx.tx.nonce));
    Some((jobs, permit))
}

/// Proposes one block of `jobs` on the newest state: the state after the last block handed
/// to raft (`spec`) while that one is not applied yet, else the applied tip. Transactions
/// refused are answered; one whose nonce is ahead goes back to `waiting` until its wait is
/// over. `None` when the block includes nothing, unless `empty` allows that (the seal of
/// the genesis state). The block is recorded as the one this validator signs at its height
/// before it goes out; if it already signed one there (its own earlier proposal, or another
/// leader's block it endorsed), that block is proposed again instead and `jobs` wait for
/// the next round.
async fn propose_batch(
    shared: &Arc<Shared>,
    spec: &Option<(super::block::BlockHeader, Arc<State>)>,
    jobs: Vec<Queued>,
    waiting: &mut Vec<Queued>,
    empty: bool,
) -> Option<Proposal> {
    let applied_height = *shared.applied.borrow();
    let (state, prev) = match spec {
        Some((h, st)) if h.height > applied_height => (st.clone(), h.clone()),
        _ => {
            let t = shared.tip.lock().expect("ledger lock");
            (t.state.clone(), t.header.clone())
        }
    };
    let validators: Vec<PublicId> = state.validators().iter().copied().collect();
    let refuse_all = |jobs: Vec<Queued>, why: String| {
        for ((_, _, reply), _) in jobs {
            let _ = reply.send(Err(LedgerError::Unavailable(why.clone())));
        }
    };
    let height = prev.height + 1;
    match shared.locked(height) {
        Ok(None) => {}
        Ok(Some(locked)) if locked.header.header.prev == prev.hash() => {
            debug!(
                height,
                "proposing again the block this validator signed here"
            );
            let (x, base, p) = (locked.clone(), state.clone(), prev.clone());
            let after = tokio::task::spawn_blocking(move || x.apply_to(State::clone(&base), &p))
                .await
                .expect("applying does not panic");
            return match after {
                Ok(after) => {
                    waiting.extend(jobs);
                    Some(Proposal {
                        block: locked,
                        after: Arc::new(after),
                        prev,
                        base: state,
                        validators,
                        included: Vec::new(),
                        waited: Duration::ZERO,
                        proposed: Duration::ZERO,
                    })
                }
                Err(e) => {
                    refuse_all(jobs, format!("the block signed at height {height}: {e}"));
                    None
                }
            };
        }
        Ok(Some(_)) => {
            refuse_all(
                jobs,
                format!("this validator signed another block at height {height}; try again"),
            );
            return None;
        }
        Err(e) => {
            refuse_all(jobs, e.to_string());
            return None;
        }
    }
    let candidates: Vec<SignedTx> = jobs.iter().map(|((tx, _, _), _)| tx.clone()).collect();
    let proposer = shared.validator.clone();
    let waited = jobs
        .iter()
        .map(|((_, submitted, _), _)| *submitted)
        .min()
        .map_or(Duration::ZERO, |t| t.elapsed());
    let proposing = Instant::now();
    let (base, p, owner) = (state.clone(), prev.clone(), shared.clone());
    let validators_alone = validators.len() == 1;
    let (block, after, outcomes, lock) = tokio::task::spawn_blocking(move || {
        let mut state = State::clone(&base);
        let (block, outcomes) =
            Block::propose(&mut state, &p, candidates, &proposer, crate::now_ms());
        // A lone validator signs alone: there is no one to equivocate to.
        let lock = if (block.txs.is_empty() && !empty) || validators_alone {
            Ok(None)
        } else {
            owner.lock(&block)
        };
        (block, Arc::new(state), outcomes, lock)
    })
    .await
    .expect("proposing does not panic");
    match lock {
        Ok(None) => {}
        Ok(Some(_)) => {
            refuse_all(
                jobs,
                format!("this validator signed another block at height {height}; try again"),
            );
            return None;
        }
        Err(e) => {
            refuse_all(jobs, e.to_string());
            return None;
        }
    }
    let mut included = Vec::new();
    for (((tx, submitted, reply), until), outcome) in jobs.into_iter().zip(outcomes) {
        match outcome {
            Err(TxError::BadNonce { expected, got, .. })
                if got > expected && Instant::now() < until =>
            {
                waiting.push(((tx, submitted, reply), until));
            }
            Err(e) => {
                let _ = reply.send(Err(LedgerError::Refused(e)));
            }
            Ok(index) => included.push((((tx, submitted, reply), until), index)),
        }
    }
    let proposed = proposing.elapsed();
    if included.is_empty() && !empty {
        return None;
    }
    Some(Proposal {
        block,
        after,
        prev,
        base: state,
        validators,
        included,
        waited,
        proposed,
    })
}

/// Hands an endorsed block to raft, after keeping the state it leads to for the apply;
/// returns raft's answer to come, or why the block goes no further.
async fn hand_to_raft(
    shared: &Shared,
    raft: &Raft,
    endorsed: Result<Block, LedgerError>,
    header: &super::block::BlockHeader,
    after: &Arc<State>,
) -> Result<Written, LedgerError> {
    match endorsed {
        Ok(block) => {
            shared
                .prepared
                .lock()
                .expect("prepared lock")
                .insert(header.hash(), (header.clone(), after.clone()));
            raft.client_write_ff(block)
                .await
                .map_err(|e| LedgerError::Unavailable(e.to_string()))
        }
        Err(e) => Err(e),
    }
}

/// Answers a block's transactions once raft has its outcome: receipts if the block was
/// applied at `height`; proposed again on the tip if another block took that height;
/// refused if raft failed.
async fn answer_block(
    outcome: Result<Applied, String>,
    height: u64,
    included: Vec<(Queued, u32)>,
    times: BlockTimes,
    (raft, retry_tx, reset, commit_seconds): (
        &Raft,
        &mpsc::UnboundedSender<Queued>,
        &std::sync::atomic::AtomicBool,
        &prometheus_client::metrics::histogram::Histogram,
    ),
) {
    match outcome {
        Ok(Applied::Block { height: h }) if h == height => {
            let took = times.proposed + times.endorse + times.committing.elapsed();
            commit_seconds.observe(took.as_secs_f64());
            debug!(
                target: "dangan::chain",
                height,
                txs = included.len(),
                waited_ms = ms(times.waited),
                propose_ms = ms(times.proposed),
                endorse_ms = ms(times.endorse),
                commit_ms = ms(times.committing.elapsed()),
                "block committed and applied"
            );
            // Followers learn the new commit index at once.
            let _ = raft.trigger().heartbeat().await;
            for (((tx, submitted, reply), _), index) in included {
                let _ = reply.send(Ok(TxReceipt {
                    height,
                    index,
                    tx_id: tx.id(),
                    latency: submitted.elapsed(),
                }));
            }
        }
        Ok(other) => {
            // Another block took this height: propose these again on the tip.
            debug!(
                ?other,
                height, "block not applied; proposing its transactions again"
            );
            reset.store(true, std::sync::atomic::Ordering::SeqCst);
            for (job, _) in included {
                let _ = retry_tx.send(job);
            }
        }
        Err(e) => {
            reset.store(true, std::sync::atomic::Ordering::SeqCst);
            warn!(error = %e, height, "block not committed; its transactions are refused");
            for ((_, _, reply), _) in included.into_iter().map(|(job, _)| job) {
                let _ = reply.send(Err(LedgerError::Unavailable(e.clone())));
            }
        }
    }
}

/// A duration in milliseconds, for the timing events.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// How often a validator looks whether the genesis state still waits for its seal.
const SEAL_CHECK: Duration = Duration::from_millis(100);

/// Seals the genesis state: while the chain is at height 0, its leader commits one empty
/// block, so that from then on every state a validator answers about is the state after a
/// block a majority signed (`chain::proof`); the genesis header itself carries no
/// signature. Returns once the chain is past height 0.
async fn seal_genesis(
    shared: std::sync::Weak<Shared>,
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>>,
    me: u64,
    seal: Arc<tokio::sync::Notify>,
) {
    // Holds neither the ledger nor raft: ends once either is gone.
    loop {
        match shared.upgrade() {
            Some(shared) if *shared.applied.borrow() == 0 => {}
            _ => return,
        }
        if metrics.borrow().current_leader == Some(me) {
            seal.notify_one();
        }
        tokio::time::sleep(SEAL_CHECK).await;
        if metrics.has_changed().is_err() {
            return;
        }
    }
}

/// How often the leader compares the raft voters with the chain's validator set.
const MEMBERSHIP_CHECK: Duration = Duration::from_millis(300);
/// How long the leader waits for a new validator to catch up before it looks again.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(10);

/// On the leader, makes the raft voters follow the chain's validator set: once a block that
/// adds a validator is applied, the new one is added as a learner, caught up (from the log
/// or a snapshot) and promoted to voter; a removed one is dropped from the voters. Whose
/// signatures make a block final is decided by the chain state alone (the validators after
/// the block before it), never by raft's membership, so this may lag without harm: it only
/// decides who replicates the log and elects leaders.
async fn follow_validator_set(shared: Arc<Shared>, raft: Raft, net: Arc<Links>, me: u64) {
    let mut applied = shared.applied.subscribe();
    loop {
        let _ = tokio::time::timeout(MEMBERSHIP_CHECK, applied.changed()).await;
        // Every validator takes the chain's word for where validators are hosted.
        let chain_hosts = shared
            .tip
            .lock()
            .expect("ledger lock")
            .state
            .validator_hosts()
            .clone();
        net.learn(&chain_hosts);
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader != Some(me) {
            continue;
        }
        let membership = metrics.membership_config.membership().clone();
        if membership.get_joint_config().len() > 1 {
            continue; // a change is under way
        }
        let wanted: std::collections::BTreeSet<u64> = {
            let tip = shared.tip.lock().expect("ledger lock");
            tip.state.validators().iter().map(raft::node_id).collect()
        };
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        if wanted == voters {
            continue;
        }
        let mut ready = true;
        for id in wanted.difference(&voters) {
            let Some((v, node)) = net.host(*id) else {
                warn!(
                    node = id,
                    "a validator added on chain has no configured host"
                );
                ready = false;
                continue;
            };
            info!(validator = %v.short(), node = id, "adding a validator to raft");
            let node = BasicNode {
                addr: node.addr.clone(),
            };
            // Waits until the learner has caught up; one that is not running yet is tried
            // again on a later round (adding a learner again is allowed), so a removal
            // waiting behind it is not held up for ever.
            match tokio::time::timeout(LEARNER_CATCH_UP, raft.add_learner(*id, node, true)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(node = id, error = %e, "adding a learner failed");
                    ready = false;
                }
                Err(_) => {
                    warn!(node = id, "a new validator has not caught up yet");
                    ready = false;
                }
            }
        }
        if !ready {
            continue;
        }
        info!(?wanted, "raft voters follow the chain's validator set");
        if let Err(e) = raft.change_membership(wanted, false).await {
            warn!(error = %e, "changing the raft membership failed");
        }
    }
}

/// Gathers a majority of endorsements for `block` (the leader's own signature included).
/// Validators that signed another block at this height on the same parent return it with
/// the signatures they hold; if those make that block final, it is returned instead.
async fn endorse(
    net: &Arc<Links>,
    me: u64,
    mut block: Block,
    validators: &[PublicId],
) -> Result<Block, LedgerError> {
    let needed = validators.len() / 2 + 1;
    let mut other: Option<Block> = None;
    if block.header.signatures.len() < needed {
        let body = postcard::to_allocvec(&block).expect("encoding into memory cannot fail");
        let req = Request::Endorse {
            len: body.len() as u64,
        };
        let mut asks: futures::stream::FuturesUnordered<_> = validators
            .iter()
            .map(raft::node_id)
            .filter(|id| *id != me)
            .map(|id| {
                let (net, req, body) = (net.clone(), req.clone(), body.clone());
                async move { (id, net.request(id, &req, body, ENDORSE_TIMEOUT).await) }
            })
            .collect();
        let deadline = tokio::time::Instant::now() + ENDORSE_TIMEOUT;
        while block.header.signatures.len() < needed {
            let next = tokio::time::timeout_at(deadline, asks.next()).await;
            let Ok(Some((id, answer))) = next else {
                break;
            };
            let endorsement = answer.and_then(|bytes| {
                postcard::from_bytes::<Endorsement>(&bytes).map_err(|e| e.to_string())
            });
            match endorsement {
                Ok(Endorsement::Signed(who, sig)) if validators.contains(&who) => {
                    if block.header.signatures.iter().all(|(w, _)| *w != who) {
                        block.header.signatures.push((who, sig));
                    }
                }
                Ok(Endorsement::Signed(who, _)) => {
                    warn!(%who, "endorsement from a non-validator ignored")
                }
                Ok(Endorsement::SignedOther(x)) => {
                    let (mine, theirs) = (&block.header.header, &x.header.header);
                    if theirs.height == mine.height && theirs.prev == mine.prev {
                        let merged = other.get_or_insert_with(|| Block {
                            header: super::block::SignedHeader {
                                header: x.header.header.clone(),
                                signatures: Vec::new(),
                            },
                            txs: x.txs.clone(),
                        });
                        if merged.header.header == x.header.header {
                            merge_signatures(merged, &x, validators);
                            if merged.header.verify_final(validators).is_ok() {
                                return Ok(merged.clone());
                            }
                        }
                    }
                    debug!(
                        node = id,
                        "the validator signed another block at this height"
                    );
                }
                Ok(Endorsement::Refused(e)) | Err(e) => {
                    debug!(node = id, error = %e, "no endorsement")
                }
            }
        }
    }
    block
        .header
        .verify_final(validators)
        .map_err(|e| LedgerError::Unavailable(format!("block not final: {e}")))?;
    Ok(block)
}

/// Adds to `into` each signature of `from` (same header) that verifies and is a validator's.
fn merge_signatures(into: &mut Block, from: &Block, validators: &[PublicId]) {
    for (who, sig) in &from.header.signatures {
        if !validators.contains(who) || into.header.signatures.iter().any(|(w, _)| w == who) {
            continue;
        }
        let one = super::block::SignedHeader {
            header: from.header.header.clone(),
            signatures: vec![(*who, *sig)],
        };
        if one.verify_signer(who).is_ok() {
            into.header.signatures.push((*who, *sig));
        }
    }
}
