//! The validator set at every height, proven from a set the reader already trusts.
//!
//! A block is final once a majority of the validators in force at its height signed it:
//! the set left by every `AddValidator` and `RemoveValidator` in the blocks before it
//! (block `h` is endorsed by the set after block `h - 1`). A reader trusts one set, the
//! genesis validators of its cluster file. To check a block signed by a later set it takes
//! the chain's set changes in order (`GetValidatorChanges`), each a [`TxInclusion`] that
//! must be final under the set in force at its own height, and applies them: a
//! [`ValidatorHistory`]. Each change must also carry approvals of a majority of the set in
//! force where it applied (`Tx::check_majority`, the rule `State::apply` enforces), and all
//! of them belong to one chain (the chain key in their headers). So adding or removing a
//! validator never breaks a client's checks, and a client never has to trust the server
//! that sent the changes, nor the signers of one block alone.
//!
//! Not caught: a server that leaves out changes. Left-out additions only make later
//! blocks fail to verify (the signers are unknown); a left-out removal keeps a removed
//! validator counted, so blocks need one more signature from the old set, as with a
//! cluster file that was never updated.

use serde::{Deserialize, Serialize};

use super::block::{BlockError, TxInclusion};
use super::tx::{ChainKey, TxBody, TxError};
use crate::identity::PublicId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    #[error("validator set change at block {height}: {source}")]
    Proof {
        height: u64,
        #[source]
        source: BlockError,
    },
    #[error("transaction {index} of block {height} does not change the validator set")]
    NotASetChange { height: u64, index: u64 },
    #[error("validator set changes out of chain order at block {height}")]
    Order { height: u64 },
    #[error("block {height} adds {validator}, already a validator")]
    AlreadyValidator { height: u64, validator: PublicId },
    #[error("block {height} removes {validator}, not a validator")]
    NotValidator { height: u64, validator: PublicId },
    #[error("block {height} leaves no validator")]
    Empty { height: u64 },
    #[error("the validator set change at block {height} lacks a majority's approval: {source}")]
    Approvals {
        height: u64,
        #[source]
        source: TxError,
    },
    #[error("the validator set change at block {height} belongs to another chain ({found})")]
    OtherChain { height: u64, found: ChainKey },
}

/// The sets in force, each from the first height it signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorHistory {
    /// (first height, sorted set), by ascending height; the first entry starts at 0.
    sets: Vec<(u64, Vec<PublicId>)>,
}

impl ValidatorHistory {
    /// `trusted` for every height: no change known.
    pub fn trusted(trusted: &[PublicId]) -> Self {
        let mut set = trusted.to_vec();
        set.sort();
        set.dedup();
        Self {
            sets: vec![(0, set)],
        }
    }

    /// The history that `changes` (every set change of the chain, in chain order) prove
    /// from `trusted`: each change must be final under the set in force at its height.
    pub fn prove(trusted: &[PublicId], changes: &[TxInclusion]) -> Result<Self, HistoryError> {
        let mut history = Self::trusted(trusted);
        let mut last: Option<(u64, u64)> = None;
        let chain = changes.first().map(|c| c.header.header.chain);
        for change in changes {
            let height = change.header.header.height;
            let found = change.header.header.chain;
            if Some(found) != chain {
                return Err(HistoryError::OtherChain { height, found });
            }
            let at = (height, change.proof.index);
            if last.is_some_and(|l| at <= l) || height == 0 {
                return Err(HistoryError::Order { height });
            }
            let signers = history.at(height).to_vec();
            change
                .verify(&signers)
                .map_err(|source| HistoryError::Proof { height, source })?;
            // The set after this block: the one already started by an earlier change of
            // the same block, else the one in force at it.
            let open = history
                .sets
                .last()
                .is_some_and(|(from, _)| *from == height + 1);
            if !open {
                history.sets.push((height + 1, signers));
            }
            let set = &mut history.sets.last_mut().expect("never empty").1;
            if matches!(
                change.tx.tx.body,
                TxBody::AddValidator { .. } | TxBody::RemoveValidator { .. }
            ) {
                change
                    .tx
                    .tx
                    .check_majority(&found, set, "a validator set change")
                    .map_err(|source| HistoryError::Approvals { height, source })?;
            }
            match &change.tx.tx.body {
                TxBody::AddValidator { validator, .. } => match set.binary_search(validator) {
                    Ok(_) => {
                        return Err(HistoryError::AlreadyValidator {
                            height,
                            validator: *validator,
                        });
                    }
                    Err(i) => set.insert(i, *validator),
                },
                TxBody::RemoveValidator { validator, .. } => match set.binary_search(validator) {
                    Ok(i) => {
                        set.remove(i);
                        if set.is_empty() {
                            return Err(HistoryError::Empty { height });
                        }
                    }
                    Err(_) => {
                        return Err(HistoryError::NotValidator {
                            height,
                            validator: *validator,
                        });
                    }
                },
                _ => {
                    return Err(HistoryError::NotASetChange {
                        height,
                        index: change.proof.index,
                    });
                }
            }
            last = Some(at);
        }
        Ok(history)
    }

    /// The validators whose majority makes block `height` final.
    pub fn at(&self, height: u64) -> &[PublicId] {
        let i = self.sets.partition_point(|(from, _)| *from <= height);
        &self.sets[i.saturating_sub(1)].1
    }

    /// Whether any change is known (beyond the trusted set).
    pub fn changed(&self) -> bool {
        self.sets.len() > 1
    }
}

/// Whether a failed check may only mean that the reader's history lacks a recent change.
pub fn may_be_stale(e: &BlockError) -> bool {
    matches!(
        e,
        BlockError::NotValidator { .. } | BlockError::NotFinal { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::block::{Block, SignedHeader};
    use crate::chain::merkle;
    use crate::chain::tx::Tx;
    use crate::identity::{Identity, Role};

    const CHAIN: ChainKey = ChainKey([3; 32]);

    fn ids(n: usize) -> Vec<Identity> {
        (0..n)
            .map(|_| Identity::generate(Role::Validator))
            .collect()
    }

    /// Transaction `index` of a block at `height` holding `bodies` (sent by `sender`),
    /// signed (and each set change approved) by `signers`.
    fn change(
        height: u64,
        sender: &Identity,
        bodies: &[TxBody],
        signers: &[&Identity],
    ) -> Vec<TxInclusion> {
        let txs: Vec<_> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let mut tx = Tx {
                    sender: sender.public(),
                    nonce: height * 10 + i as u64,
                    body: body.clone(),
                };
                let approvals: Vec<_> = signers.iter().map(|s| tx.approve(s, &CHAIN)).collect();
                if let Some(a) = tx.body.approvals_mut() {
                    *a = approvals;
                }
                tx.sign(sender, &CHAIN)
            })
            .collect();
        let leaves: Vec<_> = txs.iter().map(|t| merkle::leaf_hash(&t.encode())).collect();
        let header = crate::chain::block::BlockHeader {
            height,
            prev: [0; 32],
            tx_root: merkle::root(&leaves),
            state_root: [0; 32],
            time_ms: 0,
            proposer: sender.public(),
            chain: CHAIN,
        };
        let mut signed = SignedHeader {
            header,
            signatures: Vec::new(),
        };
        for s in signers {
            signed.sign(s);
        }
        let block = Block {
            header: signed,
            txs,
        };
        (0..bodies.len())
            .map(|i| block.inclusion(i).unwrap())
            .collect()
    }

    fn public(v: &[&Identity]) -> Vec<PublicId> {
        let mut p: Vec<_> = v.iter().map(|i| i.public()).collect();
        p.sort();
        p
    }

    #[test]
    fn changes_prove_each_later_set_from_the_trusted_one() {
        let v = ids(5);
        let (a, b, c, d, e) = (&v[0], &v[1], &v[2], &v[3], &v[4]);
        let genesis = public(&[a, b, c]);
        // Block 4 adds d (signed by the genesis set); block 9 removes a and c, signed by a
        // majority of {a, b, c, d}; so from block 10 on, {b, d} sign.
        let mut changes = change(
            4,
            a,
            &[TxBody::AddValidator {
                validator: d.public(),
                host: None,
                approvals: vec![],
            }],
            &[a, b],
        );
        changes.extend(change(
            9,
            b,
            &[
                TxBody::RemoveValidator {
                    validator: a.public(),
                    approvals: vec![],
                },
                TxBody::RemoveValidator {
                    validator: c.public(),
                    approvals: vec![],
                },
            ],
            &[b, c, d],
        ));
        let h = ValidatorHistory::prove(&genesis, &changes).unwrap();
        assert!(h.changed());
        assert_eq!(h.at(1), genesis.as_slice());
        assert_eq!(h.at(4), genesis.as_slice());
        assert_eq!(h.at(5), public(&[a, b, c, d]).as_slice());
        assert_eq!(h.at(9), public(&[a, b, c, d]).as_slice());
        assert_eq!(h.at(10), public(&[b, d]).as_slice());
        assert_eq!(h.at(u64::MAX), public(&[b, d]).as_slice());

        // Each change must be final under the set of its own height.
        let forged = change(
            4,
            e,
            &[TxBody::AddValidator {
                validator: e.public(),
                host: None,
                approvals: vec![],
            }],
            &[e, d],
        );
        assert!(matches!(
            ValidatorHistory::prove(&genesis, &forged),
            Err(HistoryError::Proof { height: 4, .. })
        ));
        // Out of order, repeated, or not a set change: refused.
        let reversed: Vec<_> = changes.iter().rev().cloned().collect();
        assert!(matches!(
            ValidatorHistory::prove(&genesis, &reversed),
            Err(HistoryError::Proof { .. } | HistoryError::Order { .. })
        ));
        let twice = [changes[0].clone(), changes[0].clone()];
        assert_eq!(
            ValidatorHistory::prove(&genesis, &twice),
            Err(HistoryError::Order { height: 4 })
        );
        let register = change(
            3,
            a,
            &[TxBody::RegisterDocument {
                document: crate::id::DocumentId::of(b"x"),
            }],
            &[a, b],
        );
        assert_eq!(
            ValidatorHistory::prove(&genesis, &register),
            Err(HistoryError::NotASetChange {
                height: 3,
                index: 0
            })
        );
        // A change approved by one validator alone, even in a block a majority signed.
        let mut unapproved = change(
            4,
            a,
            &[TxBody::AddValidator {
                validator: d.public(),
                host: None,
                approvals: vec![],
            }],
            &[a, b],
        );
        let mut tx = unapproved[0].tx.tx.clone();
        *tx.body.approvals_mut().unwrap() = vec![tx.approve(a, &CHAIN)];
        let block = Block {
            header: SignedHeader {
                header: crate::chain::block::BlockHeader {
                    tx_root: merkle::root(&[merkle::leaf_hash(
                        &tx.clone().sign(a, &CHAIN).encode(),
                    )]),
                    ..unapproved[0].header.header.clone()
                },
                signatures: vec![],
            },
            txs: vec![tx.sign(a, &CHAIN)],
        };
        let mut header = block.header.clone();
        header.sign(a);
        header.sign(b);
        unapproved[0] = Block { header, ..block }.inclusion(0).unwrap();
        assert!(matches!(
            ValidatorHistory::prove(&genesis, &unapproved),
            Err(HistoryError::Approvals { height: 4, .. })
        ));
        // A flipped byte anywhere in a change's proof breaks it.
        let mut bad = changes.clone();
        bad[1].header.header.state_root[0] ^= 1;
        assert!(ValidatorHistory::prove(&genesis, &bad).is_err());
    }

    #[test]
    fn a_receipt_carries_the_set_changes_its_block_needs() {
        use crate::codec::{self, DocumentInfo};
        use crate::manifest::CodingParams;
        use crate::receipt::{MAGIC, MAGIC_WITH_CHANGES, Receipt, ReceiptError};

        let v = ids(3);
        let (a, b, c) = (&v[0], &v[1], &v[2]);
        let dept = Identity::generate(Role::Department);
        let genesis = public(&[a, b]);
        let info = DocumentInfo {
            department: "records".into(),
            document_type: "certificate".into(),
            created_at_ms: Some(1),
        };
        let (manifest, _) =
            codec::encode(&[7u8; 3000][..], CodingParams::default(), info, |_| Ok(())).unwrap();
        let document = manifest.id();
        // Block 2 adds c; block 5, signed by b and c (a majority of {a, b, c}, not of the
        // genesis pair), registers the document.
        let added = change(
            2,
            a,
            &[TxBody::AddValidator {
                validator: c.public(),
                host: None,
                approvals: vec![],
            }],
            &[a, b],
        );
        let registration =
            change(5, &dept, &[TxBody::RegisterDocument { document }], &[b, c]).remove(0);
        let mut receipt = Receipt {
            document,
            manifest: manifest.encode(),
            registration,
            validator_changes: Vec::new(),
            checkpoint: None,
        };
        assert!(matches!(
            receipt.verify(&genesis),
            Err(ReceiptError::Registration(_))
        ));
        let bytes = receipt.encode();
        assert!(bytes.starts_with(MAGIC));
        assert_eq!(Receipt::decode(&bytes).unwrap(), receipt);

        receipt.validator_changes = added;
        receipt.verify(&genesis).unwrap();
        let bytes = receipt.encode();
        assert!(bytes.starts_with(MAGIC_WITH_CHANGES));
        let decoded = Receipt::decode(&bytes).unwrap();
        assert_eq!(decoded, receipt);
        decoded.verify(&genesis).unwrap();
        // Any flipped byte: refused when decoding or verifying.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(
                Receipt::decode(&bad)
                    .and_then(|r| r.verify(&genesis))
                    .is_err(),
                "byte {i} of {}",
                bytes.len()
            );
        }
        // The changes' magic with none of them is not canonical.
        let mut v1 = receipt.clone();
        v1.validator_changes.clear();
        let mut relabelled = MAGIC_WITH_CHANGES.to_vec();
        relabelled.extend_from_slice(&v1.encode()[MAGIC.len()..]);
        relabelled.push(0);
        assert!(matches!(
            Receipt::decode(&relabelled),
            Err(ReceiptError::NotCanonical)
        ));
    }

    /// A manifest and its document id, for receipts.
    fn manifest() -> (crate::id::DocumentId, Vec<u8>) {
        use crate::codec::{self, DocumentInfo};
        use crate::manifest::CodingParams;
        let info = DocumentInfo {
            department: "records".into(),
            document_type: "certificate".into(),
            created_at_ms: Some(1),
        };
        let (manifest, _) =
            codec::encode(&[7u8; 3000][..], CodingParams::default(), info, |_| Ok(())).unwrap();
        (manifest.id(), manifest.encode())
    }

    fn add(v: &Identity) -> TxBody {
        TxBody::AddValidator {
            validator: v.public(),
            host: None,
            approvals: vec![],
        }
    }

    fn remove(v: &Identity) -> TxBody {
        TxBody::RemoveValidator {
            validator: v.public(),
            approvals: vec![],
        }
    }

    #[test]
    fn an_old_receipt_with_its_checkpoint_verifies_after_several_set_changes() {
        use crate::chain::block::BlockHeader;
        use crate::chain::checkpoint::{Checkpoint, CheckpointSignature, SignedCheckpoint};
        use crate::receipt::{MAGIC_WITH_CHECKPOINT, Receipt, ReceiptCheckpoint, ReceiptError};

        let v = ids(5);
        let (a, b, c, d, e) = (&v[0], &v[1], &v[2], &v[3], &v[4]);
        let genesis = public(&[a, b, c]);
        let dept = Identity::generate(Role::Department);
        // Block 2 adds d; block 4 removes a; block 6 adds e: from block 7 on, {b, c, d, e}.
        let mut changes = change(2, a, &[add(d)], &[a, b]);
        changes.extend(change(4, b, &[remove(a)], &[b, c, d]));
        changes.extend(change(6, c, &[add(e)], &[c, d]));
        // Block 8 registers the document; blocks 9 and 10 follow; 10 is checkpointed.
        let (document, manifest) = manifest();
        let registration = change(
            8,
            &dept,
            &[TxBody::RegisterDocument { document }],
            &[c, d, e],
        )
        .remove(0);
        let mut headers: Vec<BlockHeader> = Vec::new();
        let mut prev = registration.header.header.hash();
        for height in 9..=10 {
            let h = BlockHeader {
                height,
                prev,
                tx_root: merkle::root(&[]),
                state_root: [height as u8; 32],
                time_ms: height * 1000,
                proposer: b.public(),
                chain: CHAIN,
            };
            prev = h.hash();
            headers.push(h);
        }
        let checkpoint = Checkpoint::of(headers.last().unwrap());
        let sign = |who: &[&Identity]| {
            let sigs: Vec<_> = who
                .iter()
                .map(|i| CheckpointSignature::sign(&checkpoint, i))
                .collect();
            SignedCheckpoint::assemble(&checkpoint, &sigs)
        };
        // Later the set changes twice more (blocks 12 and 14): the receipt needs none of it.
        let later = change(12, b, &[remove(b)], &[b, c, d]);
        let mut all = changes.clone();
        all.extend(later);
        all.extend(change(14, c, &[remove(c)], &[c, d, e]));
        ValidatorHistory::prove(&genesis, &all).unwrap();

        let receipt = Receipt {
            document,
            manifest,
            registration,
            validator_changes: changes.clone(),
            checkpoint: Some(ReceiptCheckpoint {
                note: sign(&[b, d, e]),
                headers: headers.clone(),
                token: None,
            }),
        };
        let bytes = receipt.encode();
        assert!(bytes.starts_with(MAGIC_WITH_CHECKPOINT));
        let decoded = Receipt::decode(&bytes).unwrap();
        assert_eq!(decoded, receipt);
        decoded.verify(&genesis).unwrap();
        assert_eq!(
            decoded.checkpoint(&genesis).unwrap(),
            Some(checkpoint.clone())
        );

        // Signed by the genesis set, one of which (a) was removed: not a majority at 10.
        let mut old_set = receipt.clone();
        old_set.checkpoint.as_mut().unwrap().note = sign(&[a, b, c]);
        assert!(matches!(
            old_set.verify(&genesis),
            Err(ReceiptError::Checkpoint(_))
        ));
        // A header left out, or another chain of headers: not linked.
        let mut cut = receipt.clone();
        cut.checkpoint.as_mut().unwrap().headers.remove(0);
        assert!(matches!(
            cut.verify(&genesis),
            Err(ReceiptError::Unlinked { from: 8, to: 10 })
        ));
        let mut other = receipt.clone();
        other.checkpoint.as_mut().unwrap().headers[0].time_ms += 1;
        assert!(matches!(
            other.verify(&genesis),
            Err(ReceiptError::Unlinked { .. })
        ));
        // Without the set changes the checkpoint's signers are unknown.
        let mut bare = receipt.clone();
        bare.validator_changes.clear();
        assert!(bare.verify(&genesis).is_err());
        // Flipped bytes: refused when decoding or verifying.
        for i in (0..bytes.len()).step_by(5) {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(
                Receipt::decode(&bad)
                    .and_then(|r| r.verify(&genesis))
                    .is_err(),
                "byte {i} of {}",
                bytes.len()
            );
        }
    }

    /// Receipts of formats 1 and 2 written by an earlier build (`tests/golden/`), with the
    /// genesis validators they verify against: they still decode to the same bytes and
    /// verify. `DANGAN_WRITE_GOLDEN=1` writes new ones (never needed for a format that
    /// exists already).
    #[test]
    fn golden_receipts_of_formats_1_and_2_still_verify() {
        use crate::receipt::{MAGIC, MAGIC_WITH_CHANGES, Receipt};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        if std::env::var_os("DANGAN_WRITE_GOLDEN").is_some() {
            let v = ids(3);
            let (a, b, c) = (&v[0], &v[1], &v[2]);
            let dept = Identity::generate(Role::Department);
            let (document, manifest) = manifest();
            let v1 = Receipt {
                document,
                manifest: manifest.clone(),
                registration: change(3, &dept, &[TxBody::RegisterDocument { document }], &[a, b])
                    .remove(0),
                validator_changes: Vec::new(),
                checkpoint: None,
            };
            let v2 = Receipt {
                registration: change(5, &dept, &[TxBody::RegisterDocument { document }], &[b, c])
                    .remove(0),
                validator_changes: change(2, a, &[add(c)], &[a, b]),
                ..v1.clone()
            };
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("receipt-v1.bin"), v1.encode()).unwrap();
            std::fs::write(dir.join("receipt-v2.bin"), v2.encode()).unwrap();
            let set: Vec<u8> = [a, b].iter().flat_map(|i| i.public().to_bytes()).collect();
            std::fs::write(dir.join("receipt-validators.bin"), set).unwrap();
        }
        let set: Vec<PublicId> = std::fs::read(dir.join("receipt-validators.bin"))
            .unwrap()
            .chunks(32)
            .map(|k| PublicId::from_bytes(k.try_into().unwrap()).unwrap())
            .collect();
        for (file, magic) in [
            ("receipt-v1.bin", MAGIC),
            ("receipt-v2.bin", MAGIC_WITH_CHANGES),
        ] {
            let bytes = std::fs::read(dir.join(file)).unwrap();
            assert!(bytes.starts_with(magic), "{file}");
            let r = Receipt::decode(&bytes).unwrap();
            assert_eq!(r.encode(), bytes, "{file}");
            r.verify(&set).unwrap();
            assert_eq!(r.checkpoint(&set).unwrap(), None);
        }
    }
}
