//! The chain on disk: blocks by height in redb, with indexes from transaction id and from
//! document id to where the transaction sits. One redb transaction per batch of blocks,
//! durable at once (`append_blocks`) or at the next durable commit (`append_blocks_lazily`,
//! for a caller whose own log is durable, i.e. raft).
//!
//! Opening replays every stored block on the genesis state and checks each link, transaction
//! root, state root and signature, so bytes altered on disk are found before the chain is
//! used (cost: one pass over the chain at start; state snapshots can shorten it later).
//!
//! Tables (format version in the name): `blocks-v1` height → postcard `Block`;
//! `txs-v1` transaction id → (height, index); `docs-v1` document id → (height, index) of the
//! transaction that registered it; `validator-changes-v1` (height, index) of every
//! validator set change (filled in on open for a chain stored before it existed);
//! `endorsed-v1` height → postcard `Block`: the one block this validator signed (proposed or
//! endorsed) at each height not applied yet, written durably before the signature leaves,
//! so it never signs two blocks at one height, across restarts too (rows at applied heights
//! are dropped with the blocks that pass them); `meta-v1` "format" and "tip".
//!
//! Format 2: transactions are signed for the chain key and headers carry it; a format 1
//! chain is refused with [`ChainStoreError::Format`] ([`ChainStoreError::Newer`] when a
//! newer Dangan wrote it).

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::block::{Block, BlockError, BlockHeader};
use super::merkle;
use super::state::{Genesis, State};
use super::tx::{TxBody, TxError};
use crate::id::DocumentId;
use crate::identity::PublicId;

const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks-v1");
const TXS: TableDefinition<&[u8; 32], (u64, u32)> = TableDefinition::new("txs-v1");
const DOCS: TableDefinition<&[u8; 32], (u64, u32)> = TableDefinition::new("docs-v1");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta-v1");
/// Where each `AddValidator` / `RemoveValidator` sits: (height, index) → ().
const SET_CHANGES: TableDefinition<(u64, u32), ()> = TableDefinition::new("validator-changes-v1");
/// Consensus bookkeeping written in the same transaction as the blocks it applied.
const RAFT_SM: TableDefinition<&str, &[u8]> = TableDefinition::new("raft-sm-v1");
/// The block this validator signed at each height above the applied tip.
const ENDORSED: TableDefinition<u64, &[u8]> = TableDefinition::new("endorsed-v1");
/// Signed checkpoints (`chain::checkpoint`): height → postcard `StoredCheckpoint` (the
/// signed note, its anchor answers and timestamp token). Added beside format 2: a store
/// without it has none yet.
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints-v1");
/// The on-disk format this code reads and writes.
pub const CHAIN_FORMAT: u64 = 2;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainStoreError {
    #[error("chain database: {0}")]
    Database(#[from] Box<redb::Error>),
    #[error("chain database format {found} is not supported (this build reads {CHAIN_FORMAT})")]
    Format { found: u64 },
    /// A chain written by a newer Dangan: refused, never misread.
    #[error(
        "the chain database was written by a newer Dangan (chain format {found}; this build \
         reads up to {CHAIN_FORMAT}): upgrade this binary"
    )]
    Newer { found: u64 },
    #[error("stored block {height} does not decode: {reason}")]
    Decode { height: u64, reason: String },
    #[error("stored block {height} failed verification: {source}")]
    Tampered {
        height: u64,
        #[source]
        source: BlockError,
    },
    #[error("genesis: {0}")]
    Genesis(#[from] TxError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ChainStoreError {
            fn from(e: $t) -> Self {
                ChainStoreError::Database(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The header every chain starts from: height 0, committing to the genesis state.
pub fn genesis_header(state: &State) -> BlockHeader {
    BlockHeader {
        height: 0,
        prev: [0; 32],
        tx_root: merkle::root(&[]),
        state_root: state.root(),
        time_ms: 0,
        proposer: *state
            .validators()
            .iter()
            .next()
            .expect("genesis validates that it names a validator"),
        chain: state.chain_key(),
    }
}

pub struct ChainStore {
    db: Database,
}

/// (height, index) of each validator set change in `block`.
fn set_changes(block: &Block) -> impl Iterator<Item = (u64, u32)> + '_ {
    let height = block.header.header.height;
    block.txs.iter().enumerate().filter_map(move |(i, tx)| {
        matches!(
            tx.tx.body,
            TxBody::AddValidator { .. } | TxBody::RemoveValidator { .. }
        )
        .then_some((height, i as u32))
    })
}

impl ChainStore {
    /// Opens (or creates) the chain at `path`, verifies every stored block from `genesis`,
    /// and returns the store, the state at the tip and the tip header.
    pub fn open(
        path: &Path,
        genesis: &Genesis,
    ) -> Result<(Self, State, BlockHeader), ChainStoreError> {
        // A first start: the directory may not exist yet (as the shard store's may not).
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| ChainStoreError::Database(Box::new(redb::Error::Io(e))))?;
        }
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        let format = {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("format")?.map(|v| v.value());
            match found {
                Some(f) => f,
                None => {
                    meta.insert("format", CHAIN_FORMAT)?;
                    meta.insert("tip", 0)?;
                    CHAIN_FORMAT
                }
            }
        };
        txn.open_table(BLOCKS)?;
        txn.open_table(TXS)?;
        txn.open_table(DOCS)?;
        txn.open_table(RAFT_SM)?;
        txn.open_table(SET_CHANGES)?;
        txn.open_table(ENDORSED)?;
        txn.commit()?;
        if format > CHAIN_FORMAT {
            return Err(ChainStoreError::Newer { found: format });
        }
        if format != CHAIN_FORMAT {
            return Err(ChainStoreError::Format { found: format });
        }
        let store = Self { db };
        let mut state = State::genesis(genesis)?;
        let mut tip = genesis_header(&state);
        let mut validators: Vec<PublicId> = state.validators().iter().copied().collect();
        let mut changes = Vec::new();
        for height in 1..=store.tip_height()? {
            let block = store
                .block(height)?
                .ok_or_else(|| ChainStoreError::Decode {
                    height,
                    reason: "missing".into(),
                })?;
            let tampered = |source| ChainStoreError::Tampered { height, source };
            block.header.verify_final(&validators).map_err(tampered)?;
            block.apply(&mut state, &tip).map_err(tampered)?;
            validators = state.validators().iter().copied().collect();
            tip = block.header.header.clone();
            changes.extend(set_changes(&block));
        }
        if store.validator_changes()? != changes {
            let txn = store.db.begin_write()?;
            {
                let mut table = txn.open_table(SET_CHANGES)?;
                table.retain(|_, _| false)?;
                for at in &changes {
                    table.insert(at, ())?;
                }
            }
            txn.commit()?;
        }
        Ok((store, state, tip))
    }

    /// Where every validator set change of the chain sits, in chain order.
    pub fn validator_changes(&self) -> Result<Vec<(u64, u32)>, ChainStoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SET_CHANGES)?;
        table
            .iter()?
            .map(|row| Ok(row?.0.value()))
            .collect::<Result<_, redb::StorageError>>()
            .map_err(Into::into)
    }

    /// Keeps `bytes` (a postcard `StoredCheckpoint`) as the checkpoint of `height`, durably.
    pub fn put_checkpoint(&self, height: u64, bytes: &[u8]) -> Result<(), ChainStoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(CHECKPOINTS)?.insert(height, bytes)?;
        txn.commit()?;
        Ok(())
    }

    /// The stored checkpoint at `height`, or (with `None`) the highest one: (height, bytes).
    pub fn checkpoint(
        &self,
        height: Option<u64>,
    ) -> Result<Option<(u64, Vec<u8>)>, ChainStoreError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(CHECKPOINTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let found = match height {
            Some(h) => table.get(h)?.map(|v| (h, v.value().to_vec())),
            None => table.last()?.map(|(k, v)| (k.value(), v.value().to_vec())),
        };
        Ok(found)
    }

    /// The height of the first stored checkpoint at or above `height`.
    pub fn checkpoint_covering(&self, height: u64) -> Result<Option<u64>, ChainStoreError> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(CHECKPOINTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut range = table.range(height..)?;
        Ok(range.next().transpose()?.map(|(k, _)| k.value()))
    }

    pub fn tip_height(&self) -> Result<u64, ChainStoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("tip")?.map_or(0, |v| v.value()))
    }

    pub fn block(&self, height: u64) -> Result<Option<Block>, ChainStoreError> {
        let txn = self.db.begin_read()?;
        let blocks = txn.open_table(BLOCKS)?;
        let Some(bytes) = blocks.get(height)? else {
            return Ok(None);
        };
        postcard::from_bytes(bytes.value())
            .map(Some)
            .map_err(|e| ChainStoreError::Decode {
                height,
                reason: e.to_string(),
            })
    }

    /// The consensus record (see [`Self::append_blocks`]) and the stored (postcard) bytes of
    /// every block from height 1 to the tip, read in one transaction so they match, and not
    /// decoded (a snapshot copies them as they are).
    #[allow(clippy::type_complexity)]
    pub fn encoded_blocks(&self) -> Result<(Option<Vec<u8>>, Vec<Vec<u8>>), ChainStoreError> {
        let txn = self.db.begin_read()?;
        let record = txn
            .open_table(RAFT_SM)?
            .get("applied")?
            .map(|v| v.value().to_vec());
        let tip = txn.open_table(META)?.get("tip")?.map_or(0, |v| v.value());
        let blocks = txn.open_table(BLOCKS)?;
        let mut out = Vec::with_capacity(tip as usize);
        for row in blocks.range(1..=tip)? {
            let (height, bytes) = row?;
            if height.value() != out.len() as u64 + 1 {
                break;
            }
            out.push(bytes.value().to_vec());
        }
        // A gap stops the copy short of the tip.
        if out.len() as u64 != tip {
            return Err(ChainStoreError::Decode {
                height: out.len() as u64 + 1,
                reason: "missing".into(),
            });
        }
        Ok((record, out))
    }

    /// Where transaction `id` was committed: (height, index in block).
    pub fn tx_location(&self, id: &[u8; 32]) -> Result<Option<(u64, u32)>, ChainStoreError> {
        let txn = self.db.begin_read()?;
        let txs = txn.open_table(TXS)?;
        Ok(txs.get(id)?.map(|v| v.value()))
    }

    /// Where the transaction that registered `document` was committed.
    pub fn document_location(
        &self,
        document: &DocumentId,
    ) -> Result<Option<(u64, u32)>, ChainStoreError> {
        let txn = self.db.begin_read()?;
        let docs = txn.open_table(DOCS)?;
        Ok(docs.get(document.as_bytes())?.map(|v| v.value()))
    }

    /// Records, durably, that this validator signs `block` at its height, unless it signed
    /// another block there: `None` once recorded (or when it is the block already recorded),
    /// else the block it signed before (with the signatures recorded then). A caller signs
    /// only after `None`. A block recorded before that `dead` says can never be applied
    /// (its parent lost to another block at the applied tip) is replaced.
    pub fn lock_endorsement(
        &self,
        block: &Block,
        dead: impl Fn(&Block) -> bool,
    ) -> Result<Option<Block>, ChainStoreError> {
        let height = block.header.header.height;
        let txn = self.db.begin_write()?;
        let earlier = {
            let mut table = txn.open_table(ENDORSED)?;
            let earlier = table
                .get(height)?
                .map(|v| postcard::from_bytes::<Block>(v.value()));
            match earlier {
                Some(Ok(b))
                    if b.header.header.hash() != block.header.header.hash() && !dead(&b) =>
                {
                    Some(b)
                }
                Some(Ok(b)) if b.header.header.hash() == block.header.header.hash() => None,
                // An unreadable row still says a block was signed here: refuse anything else.
                Some(Err(e)) => {
                    return Err(ChainStoreError::Decode {
                        height,
                        reason: format!("endorsement record: {e}"),
                    });
                }
                Some(Ok(_)) | None => {
                    let bytes =
                        postcard::to_allocvec(block).expect("encoding into memory cannot fail");
                    table.insert(height, bytes.as_slice())?;
                    None
                }
            }
        };
        txn.commit()?;
        Ok(earlier)
    }

    /// The block this validator signed at `height`, if that height is not applied yet.
    pub fn endorsed(&self, height: u64) -> Result<Option<Block>, ChainStoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ENDORSED)?;
        let Some(bytes) = table.get(height)? else {
            return Ok(None);
        };
        postcard::from_bytes(bytes.value())
            .map(Some)
            .map_err(|e| ChainStoreError::Decode {
                height,
                reason: format!("endorsement record: {e}"),
            })
    }

    /// Appends the next block durably, with its indexes.
    pub fn append(&self, block: &Block) -> Result<(), ChainStoreError> {
        self.append_blocks(std::slice::from_ref(block), None)
    }

    /// The consensus record stored with the last applied blocks (see [`Self::append_blocks`]).
    pub fn consensus_record(&self) -> Result<Option<Vec<u8>>, ChainStoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RAFT_SM)?;
        Ok(t.get("applied")?.map(|v| v.value().to_vec()))
    }

    /// Appends the next blocks (in height order) and, if given, the consensus record that
    /// says which log entries they came from, in one durable transaction.
    pub fn append_blocks(
        &self,
        blocks: &[Block],
        record: Option<&[u8]>,
    ) -> Result<(), ChainStoreError> {
        self.write_blocks(blocks, record, Durability::Immediate)
    }

    /// [`Self::append_blocks`] in one transaction that is atomic and visible at once but not
    /// made durable: a crash may roll the store back to an earlier commit (blocks and record
    /// together), for the caller to apply again from its own durable log. The next durable
    /// commit, or [`Self::sync`], makes it durable.
    pub fn append_blocks_lazily(
        &self,
        blocks: &[Block],
        record: Option<&[u8]>,
    ) -> Result<(), ChainStoreError> {
        self.write_blocks(blocks, record, Durability::None)
    }

    /// Makes every commit so far durable.
    pub fn sync(&self) -> Result<(), ChainStoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        Ok(())
    }

    fn write_blocks(
        &self,
        blocks: &[Block],
        record: Option<&[u8]>,
        durability: Durability,
    ) -> Result<(), ChainStoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        for block in blocks {
            Self::write_block(&txn, block)?;
        }
        if let Some(last) = blocks.last() {
            // Signatures at applied heights can no longer make another block final here.
            let height = last.header.header.height;
            txn.open_table(ENDORSED)?
                .retain_in(..=height, |_, _| false)?;
        }
        if let Some(record) = record {
            txn.open_table(RAFT_SM)?.insert("applied", record)?;
        }
        txn.commit()?;
        Ok(())
    }

    fn write_block(txn: &redb::WriteTransaction, block: &Block) -> Result<(), ChainStoreError> {
        let height = block.header.header.height;
        {
            let mut blocks = txn.open_table(BLOCKS)?;
            let bytes = postcard::to_allocvec(block).expect("encoding into memory cannot fail");
            blocks.insert(height, bytes.as_slice())?;
            let mut txs = txn.open_table(TXS)?;
            let mut docs = txn.open_table(DOCS)?;
            let mut set_changes_table = txn.open_table(SET_CHANGES)?;
            for at in set_changes(block) {
                set_changes_table.insert(at, ())?;
            }
            for (index, tx) in block.txs.iter().enumerate() {
                let at = (height, index as u32);
                txs.insert(&tx.id(), at)?;
                match &tx.tx.body {
                    TxBody::RegisterDocument { document } => {
                        docs.insert(document.as_bytes(), at)?;
                    }
                    TxBody::Supersede { new, .. } => {
                        docs.insert(new.as_bytes(), at)?;
                    }
                    TxBody::PutName { document, .. } => {
                        docs.insert(document.as_bytes(), at)?;
                    }
                    TxBody::RegisterRecord { document, .. } => {
                        docs.insert(document.as_bytes(), at)?;
                    }
                    _ => {}
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert("tip", height)?;
        }
        Ok(())
    }

    /// Test aid: empties the index of validator set changes, as in a chain stored before
    /// it existed (`open` fills it in again).
    #[doc(hidden)]
    pub fn forget_validator_changes_for_test(&self) -> Result<(), ChainStoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(SET_CHANGES)?.retain(|_, _| false)?;
        txn.commit()?;
        Ok(())
    }

    /// Test aid: opens the database without verifying the chain (to tamper with it).
    #[doc(hidden)]
    pub fn raw_for_test(path: &Path) -> Result<Self, ChainStoreError> {
        Ok(Self {
            db: Database::create(path)?,
        })
    }

    /// Test aid: overwrites the stored bytes of block `height` (to simulate tampering).
    #[doc(hidden)]
    pub fn overwrite_block_for_test(
        &self,
        height: u64,
        bytes: &[u8],
    ) -> Result<(), ChainStoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(BLOCKS)?.insert(height, bytes)?;
        txn.commit()?;
        Ok(())
    }

    /// Test aid: the stored bytes of block `height`.
    #[doc(hidden)]
    pub fn block_bytes_for_test(&self, height: u64) -> Result<Option<Vec<u8>>, ChainStoreError> {
        let txn = self.db.begin_read()?;
        let blocks = txn.open_table(BLOCKS)?;
        Ok(blocks.get(height)?.map(|v| v.value().to_vec()))
    }
}
