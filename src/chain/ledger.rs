//! A validator's ledger: accepts signed transactions, batches whatever is waiting into the
//! next block (group commit: one block, one durable write, however many transactions), and
//! answers queries with inclusion proofs.
//!
//! This is the one-validator form, where the validator's own signature is the majority; the
//! same block and store code will sit behind consensus among several validators.
//!
//! Not for: the network service in front of it, or consensus.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::block::{Block, BlockHeader, TxInclusion};
use super::state::{DocumentRecord, Genesis, State};
use super::store::{ChainStore, ChainStoreError};
use super::tx::{SignedTx, TxError};
use crate::id::DocumentId;
use crate::identity::{Identity, PublicId};

/// Most transactions gathered into one block.
pub const MAX_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error(transparent)]
    Store(#[from] ChainStoreError),
    #[error("transaction refused: {0}")]
    Refused(#[from] TxError),
    #[error("the ledger stopped")]
    Stopped,
    #[error("{0} is not a validator of this chain")]
    NotValidator(PublicId),
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
}

struct Tip {
    state: State,
    header: BlockHeader,
}

type Job = (
    SignedTx,
    Instant,
    oneshot::Sender<Result<TxReceipt, TxError>>,
);

pub struct Ledger {
    store: Arc<ChainStore>,
    tip: Arc<Mutex<Tip>>,
    submit: Option<std::sync::mpsc::Sender<Job>>,
    committer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Ledger {
    /// Stops the commit thread after the block in progress, so the chain file is closed
    /// when the ledger is gone.
    fn drop(&mut self) {
        self.submit.take();
        if let Some(t) = self.committer.take() {
            let _ = t.join();
        }
    }
}

impl Ledger {
    /// Opens the chain in `path` (verifying it) and starts committing blocks signed by
    /// `validator`. Must be called within a tokio runtime.
    pub fn open(path: &Path, genesis: &Genesis, validator: Identity) -> Result<Self, LedgerError> {
        let (store, state, header) = ChainStore::open(path, genesis)?;
        if !state.validators.contains(&validator.public()) {
            return Err(LedgerError::NotValidator(validator.public()));
        }
        let store = Arc::new(store);
        let tip = Arc::new(Mutex::new(Tip { state, header }));
        let (submit, rx) = std::sync::mpsc::channel();
        let (s, t) = (store.clone(), tip.clone());
        let committer = std::thread::Builder::new()
            .name("dangan-ledger".into())
            .spawn(move || commit_loop(rx, s, t, validator))
            .expect("spawning the ledger thread");
        Ok(Self {
            store,
            tip,
            submit: Some(submit),
            committer: Some(committer),
        })
    }

    /// Submits a transaction and waits until the block holding it is durable.
    pub async fn submit(&self, tx: SignedTx) -> Result<TxReceipt, LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.submit
            .as_ref()
            .ok_or(LedgerError::Stopped)?
            .send((tx, Instant::now(), reply))
            .map_err(|_| LedgerError::Stopped)?;
        Ok(rx.await.map_err(|_| LedgerError::Stopped)??)
    }

    pub fn status(&self) -> ChainStatus {
        let tip = self.tip.lock().expect("ledger lock");
        ChainStatus {
            chain_id: tip.state.chain_id.clone(),
            height: tip.header.height,
            tip_hash: tip.header.hash(),
            state_root: tip.state.root(),
            validators: tip.state.validators.iter().copied().collect(),
            documents: tip.state.documents.len(),
            layout_epoch: tip.state.layout.epoch,
        }
    }

    /// An account as of the last block.
    pub fn account(&self, id: &PublicId) -> Option<super::state::Account> {
        self.tip
            .lock()
            .expect("ledger lock")
            .state
            .accounts
            .get(id)
            .cloned()
    }

    /// A copy of the current state.
    pub fn state(&self) -> State {
        self.tip.lock().expect("ledger lock").state.clone()
    }

    pub fn block(&self, height: u64) -> Result<Option<Block>, LedgerError> {
        Ok(self.store.block(height)?)
    }

    /// A committed transaction and its proof, by transaction id.
    pub fn transaction(&self, id: &[u8; 32]) -> Result<Option<TxInclusion>, LedgerError> {
        match self.store.tx_location(id)? {
            Some((height, index)) => self.proof_at(height, index),
            None => Ok(None),
        }
    }

    /// The inclusion proof of transaction `index` of block `height`.
    fn proof_at(&self, height: u64, index: u32) -> Result<Option<TxInclusion>, LedgerError> {
        let Some(block) = self.store.block(height)? else {
            return Ok(None);
        };
        let proof = block
            .inclusion(index as usize)
            .map_err(|e| ChainStoreError::Tampered { height, source: e })?;
        Ok(Some(proof))
    }

    /// A registered document's record and the proof of the transaction that registered it.
    pub fn document(
        &self,
        id: &DocumentId,
    ) -> Result<Option<(DocumentRecord, TxInclusion)>, LedgerError> {
        let Some(record) = self
            .tip
            .lock()
            .expect("ledger lock")
            .state
            .documents
            .get(id)
            .cloned()
        else {
            return Ok(None);
        };
        let Some((height, index)) = self.store.document_location(id)? else {
            return Ok(None);
        };
        Ok(self.proof_at(height, index)?.map(|proof| (record, proof)))
    }
}

/// How long a transaction whose nonce is ahead of its sender's waits for the ones before it.
pub const NONCE_GAP_WAIT: Duration = Duration::from_secs(2);

/// Takes whatever is waiting, makes one block of it, stores it, answers everyone.
///
/// Transactions of one sender are applied in nonce order, whatever order they arrived in;
/// one whose nonce is ahead waits up to [`NONCE_GAP_WAIT`] for the missing ones, so a
/// client may have several transactions in flight at once.
fn commit_loop(
    rx: std::sync::mpsc::Receiver<Job>,
    store: Arc<ChainStore>,
    tip: Arc<Mutex<Tip>>,
    validator: Identity,
) {
    let mut waiting: Vec<(Job, Instant)> = Vec::new();
    loop {
        let first = match waiting.iter().map(|(_, until)| *until).min() {
            None => match rx.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            },
            Some(until) => match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(job) => Some(job),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        let now = Instant::now();
        let mut jobs: Vec<(Job, Instant)> = std::mem::take(&mut waiting);
        if let Some(job) = first {
            jobs.push((job, now + NONCE_GAP_WAIT));
        }
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push((job, now + NONCE_GAP_WAIT)),
                Err(_) => break,
            }
        }
        jobs.sort_by_key(|((tx, _, _), _)| (tx.tx.sender, tx.tx.nonce));
        let (mut state, prev) = {
            let t = tip.lock().expect("ledger lock");
            (t.state.clone(), t.header.clone())
        };
        let candidates: Vec<SignedTx> = jobs.iter().map(|((tx, _, _), _)| tx.clone()).collect();
        let (block, outcomes) =
            Block::propose(&mut state, &prev, candidates, &validator, crate::now_ms());
        let failed = |e: &ChainStoreError| TxError::Invalid(format!("block not stored: {e}"));
        let stored = if block.txs.is_empty() {
            Ok(())
        } else {
            store.append(&block)
        };
        if let Err(e) = &stored {
            warn!(error = %e, "storing a block failed; its transactions are refused");
        } else if !block.txs.is_empty() {
            debug!(
                height = block.header.header.height,
                txs = block.txs.len(),
                "block committed"
            );
            let mut t = tip.lock().expect("ledger lock");
            t.state = state;
            t.header = block.header.header.clone();
        }
        for (((tx, submitted, reply), until), outcome) in jobs.into_iter().zip(outcomes) {
            let answer = match (outcome, &stored) {
                (Err(TxError::BadNonce { expected, got, .. }), _)
                    if got > expected && Instant::now() < until =>
                {
                    waiting.push(((tx, submitted, reply), until));
                    continue;
                }
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(failed(e)),
                (Ok(index), Ok(())) => Ok(TxReceipt {
                    height: block.header.header.height,
                    index,
                    tx_id: tx.id(),
                    latency: submitted.elapsed(),
                }),
            };
            let _ = reply.send(answer);
        }
    }
}
