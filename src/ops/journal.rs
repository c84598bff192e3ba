//! The rebalance journal: durable progress of one stripe-slot walk, in redb.
//!
//! A [`Journal`] records, per (stripe, slot), whether a shard was `copied` to its new peer
//! or is `done` (its old copy gone too), so a rebalance killed midway resumes where it was
//! and never writes a shard twice. The same file keeps the *settled* layout, the last one
//! every shard was moved to, which the [`Operator`](super::Operator) rebalances from.
//! `revision`'s collect of a rekeyed document's old shards uses a journal of its own table.
//!
//! Not for: deciding what to move (the converge worker), or any state a peer needs (peers
//! never read it; it lives in the operator's data directory).

use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::OpsError;
use crate::placement::Layout;

/// Progress of one layout change, durable in redb: which (stripe, slot) moves are done.
pub struct Journal {
    db: redb::Database,
    table: String,
}

pub(super) const COPIED: u8 = 1;
pub(super) const DONE: u8 = 2;

impl Journal {
    /// Opens (or creates) `dir/rebalance.redb`, for the change from epoch `from` to `to`.
    pub fn open(dir: &Path, from: u64, to: u64) -> Result<Self, OpsError> {
        Self::open_table(dir, "rebalance.redb", format!("moves-{from}-{to}-v1"))
    }

    /// Opens (or creates) table `table` of `dir/file`: a journal of other stripe-slot walks
    /// (the collect of a rekeyed document's old shards, see `revision`).
    pub fn open_table(dir: &Path, file: &str, table: String) -> Result<Self, OpsError> {
        let err = |e: &dyn std::fmt::Display| OpsError::Journal(e.to_string());
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let db = redb::Database::create(dir.join(file)).map_err(|e| err(&e))?;
        let journal = Self { db, table };
        let txn = journal.db.begin_write().map_err(|e| err(&e))?;
        txn.open_table(journal.def()).map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))?;
        Ok(journal)
    }

    fn def(&self) -> TableDefinition<'_, &'static [u8], u8> {
        TableDefinition::new(&self.table)
    }

    fn key(stripe: &[u8; 32], slot: usize) -> [u8; 34] {
        let mut key = [0u8; 34];
        key[..32].copy_from_slice(stripe);
        key[32..].copy_from_slice(&(slot as u16).to_be_bytes());
        key
    }

    /// Whether (stripe, slot) is recorded as done.
    pub fn is_done(&self, stripe: &[u8; 32], slot: usize) -> Result<bool, OpsError> {
        Ok(self.get(stripe, slot)? == DONE)
    }

    /// Records (stripe, slot) as done, durably.
    pub fn set_done(&self, stripe: &[u8; 32], slot: usize) -> Result<(), OpsError> {
        self.set(stripe, slot, DONE)
    }

    pub(super) fn get(&self, stripe: &[u8; 32], slot: usize) -> Result<u8, OpsError> {
        let err = |e: &dyn std::fmt::Display| OpsError::Journal(e.to_string());
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(self.def()).map_err(|e| err(&e))?;
        let key = Self::key(stripe, slot);
        Ok(table
            .get(key.as_slice())
            .map_err(|e| err(&e))?
            .map_or(0, |v| v.value()))
    }

    pub(super) fn set(&self, stripe: &[u8; 32], slot: usize, state: u8) -> Result<(), OpsError> {
        let err = |e: &dyn std::fmt::Display| OpsError::Journal(e.to_string());
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = txn.open_table(self.def()).map_err(|e| err(&e))?;
            let key = Self::key(stripe, slot);
            table.insert(key.as_slice(), state).map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))
    }

    /// Slots recorded as done.
    pub fn done(&self) -> Result<u64, OpsError> {
        let err = |e: &dyn std::fmt::Display| OpsError::Journal(e.to_string());
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(self.def()).map_err(|e| err(&e))?;
        let mut n = 0;
        for row in table.iter().map_err(|e| err(&e))? {
            let (_, v) = row.map_err(|e| err(&e))?;
            n += u64::from(v.value() == DONE);
        }
        Ok(n)
    }
}

/// The layout a finished rebalance left in place, kept in `dir/rebalance.redb`.
const SETTLED: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("settled-layout-v1");

impl Journal {
    /// The last layout every shard was moved to (by a finished rebalance), if recorded.
    pub fn settled(&self) -> Result<Option<Layout>, OpsError> {
        let err = |e: &dyn std::fmt::Display| OpsError::Journal(e.to_string());
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = match txn.open_table(SETTLED) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(err(&e)),
        };
        match table.get("layout").map_err(|e| err(&e))? {
            Some(v) => postcard::from_bytes(v.value())
                .map(Some)
                .map_err(|e| err(&e)),
            None => Ok(None),
        }
    }

    /// Records `layout` as settled.
    pub fn set_settled(&self, layout: &Layout) -> Result<(), OpsError> {
        let err = |e: &dyn std::fmt::Display| OpsError::Journal(e.to_string());
        let bytes = postcard::to_allocvec(layout).map_err(|e| err(&e))?;
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = txn.open_table(SETTLED).map_err(|e| err(&e))?;
            table
                .insert("layout", bytes.as_slice())
                .map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_survives_reopening_and_keeps_changes_apart() {
        let dir = tempfile::tempdir().unwrap();
        let stripe = [7u8; 32];
        {
            let j = Journal::open(dir.path(), 1, 2).unwrap();
            assert_eq!(j.get(&stripe, 3).unwrap(), 0);
            j.set(&stripe, 3, COPIED).unwrap();
            j.set(&stripe, 4, DONE).unwrap();
            assert_eq!(j.settled().unwrap(), None);
            let layout = Layout::new(2, Vec::new()).unwrap();
            j.set_settled(&layout).unwrap();
        }
        let j = Journal::open(dir.path(), 1, 2).unwrap();
        assert_eq!(j.get(&stripe, 3).unwrap(), COPIED);
        assert_eq!(j.get(&stripe, 4).unwrap(), DONE);
        assert_eq!(j.done().unwrap(), 1);
        assert_eq!(j.settled().unwrap().unwrap().epoch, 2);
        drop(j);
        let other = Journal::open(dir.path(), 2, 3).unwrap();
        assert_eq!(other.get(&stripe, 4).unwrap(), 0);
        assert_eq!(other.done().unwrap(), 0);
    }
}
