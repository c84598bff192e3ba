//! Blocks: a batch of transactions, the header that commits to them and to the state they
//! produce, and the validators' signatures that make a header final.
//!
//! A header holds the height, the previous header's hash, the Merkle root of the block's
//! transactions, the state root after applying them, the time, the proposer and the chain
//! key (so a header, its signatures and the transactions under it belong to one chain: a
//! transaction's signature is checked against its header's chain key). Every
//! validator that applied the block and reached the same state root signs the header hash;
//! a header is final once a majority of the current validators has signed it, so no single
//! department can rewrite history alone. [`TxInclusion`] lets anyone holding a final header
//! check that a transaction is in its block without trusting whoever served it.
//!
//! Not for: ordering blocks among validators (consensus) or storing them.

use serde::{Deserialize, Serialize};

use super::merkle::{self, Hash, MerkleError, Proof};
use super::state::State;
use super::tx::{ChainKey, Signature, SignedTx, TxError};
use crate::identity::{Identity, PublicId};

/// Domain separation for header signatures.
pub const HEADER_DOMAIN: &[u8] = b"dangan/header/v1\0";
/// Most transactions in one block.
pub const MAX_BLOCK_TXS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHeader {
    pub height: u64,
    /// Hash of the previous header; all zeros for the first block.
    pub prev: Hash,
    /// Merkle root of the transactions (leaf = BLAKE3 leaf hash of each encoded SignedTx).
    pub tx_root: Hash,
    /// State root after applying the block.
    pub state_root: Hash,
    /// Milliseconds since the Unix epoch, as the proposer saw it.
    pub time_ms: u64,
    pub proposer: PublicId,
    /// The chain this block belongs to (`State::chain_key`).
    pub chain: ChainKey,
}

impl BlockHeader {
    pub fn hash(&self) -> Hash {
        *blake3::hash(&postcard::to_allocvec(self).expect("encoding into memory cannot fail"))
            .as_bytes()
    }

    fn signing_bytes(&self) -> Vec<u8> {
        let mut out = HEADER_DOMAIN.to_vec();
        out.extend_from_slice(&self.hash());
        out
    }
}

/// A header with the signatures gathered so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHeader {
    pub header: BlockHeader,
    pub signatures: Vec<(PublicId, Signature)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub header: SignedHeader,
    pub txs: Vec<SignedTx>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockError {
    #[error("block {height} does not follow height {expected}")]
    Height { height: u64, expected: u64 },
    #[error("block {0} does not link to the previous header")]
    Link(u64),
    #[error("block {0}: its transactions do not match the header's transaction root")]
    TxRoot(u64),
    #[error("block {height}: transaction {index} is invalid: {source}")]
    Tx {
        height: u64,
        index: usize,
        #[source]
        source: TxError,
    },
    #[error("block {0}: applying it gives another state root than the header says")]
    StateRoot(u64),
    #[error("block {0} has more than {MAX_BLOCK_TXS} transactions")]
    TooManyTxs(u64),
    #[error("block {height}: {signer} is not a validator")]
    NotValidator { height: u64, signer: PublicId },
    #[error("block {height}: the signature of {signer} does not verify")]
    BadSignature { height: u64, signer: PublicId },
    #[error("block {height}: signed by {signed} of {validators} validators, a majority is needed")]
    NotFinal {
        height: u64,
        signed: usize,
        validators: usize,
    },
    #[error("block {height} belongs to chain {found}, not to this chain ({expected})")]
    OtherChain {
        height: u64,
        found: ChainKey,
        expected: ChainKey,
    },
    #[error("block {height}: the proposer {proposer} did not sign it")]
    NoProposerSignature { height: u64, proposer: PublicId },
    #[error("inclusion proof: {0}")]
    Proof(#[from] MerkleError),
    #[error("the proven transaction does not register document {0}")]
    NotRegistration(crate::id::DocumentId),
}

fn tx_leaves(txs: &[SignedTx]) -> Vec<Hash> {
    txs.iter().map(|t| merkle::leaf_hash(&t.encode())).collect()
}

impl SignedHeader {
    /// Adds `identity`'s signature (a validator that applied the block).
    pub fn sign(&mut self, identity: &Identity) {
        let me = identity.public();
        if self.signatures.iter().all(|(who, _)| *who != me) {
            let sig = Signature::from_bytes(identity.sign(&self.header.signing_bytes()));
            self.signatures.push((me, sig));
        }
    }

    /// Checks that `signer` signed this header (among the signatures gathered so far).
    pub fn verify_signer(&self, signer: &PublicId) -> Result<(), BlockError> {
        let height = self.header.height;
        let (_, sig) = self
            .signatures
            .iter()
            .find(|(who, _)| who == signer)
            .ok_or(BlockError::NoProposerSignature {
                height,
                proposer: *signer,
            })?;
        signer
            .verify(&self.header.signing_bytes(), &sig.to_bytes())
            .map_err(|_| BlockError::BadSignature {
                height,
                signer: *signer,
            })
    }

    /// Checks that a majority of `validators` signed this header, and every signature.
    pub fn verify_final(&self, validators: &[PublicId]) -> Result<(), BlockError> {
        let height = self.header.height;
        let msg = self.header.signing_bytes();
        let mut signed: Vec<PublicId> = Vec::new();
        for (signer, sig) in &self.signatures {
            if !validators.contains(signer) {
                return Err(BlockError::NotValidator {
                    height,
                    signer: *signer,
                });
            }
            signer
                .verify(&msg, &sig.to_bytes())
                .map_err(|_| BlockError::BadSignature {
                    height,
                    signer: *signer,
                })?;
            if !signed.contains(signer) {
                signed.push(*signer);
            }
        }
        if signed.len() * 2 <= validators.len() {
            return Err(BlockError::NotFinal {
                height,
                signed: signed.len(),
                validators: validators.len(),
            });
        }
        Ok(())
    }
}

impl Block {
    /// Builds the next block on `state` from `candidates`, in order: transactions that do
    /// not apply are left out. Returns the block and, for each candidate in order, its index
    /// in the block or why it was refused. `state` becomes the state after the block; the
    /// header carries the proposer's signature.
    pub fn propose(
        state: &mut State,
        prev: &BlockHeader,
        candidates: Vec<SignedTx>,
        proposer: &Identity,
        time_ms: u64,
    ) -> (Block, Vec<Result<u32, TxError>>) {
        let height = prev.height + 1;
        let mut txs = Vec::new();
        let mut outcomes = Vec::with_capacity(candidates.len());
        for (n, tx) in candidates.into_iter().enumerate() {
            if n >= MAX_BLOCK_TXS {
                outcomes.push(Err(TxError::Invalid("block full; submit again".into())));
                continue;
            }
            match state.apply(&tx, height, time_ms) {
                Ok(()) => {
                    outcomes.push(Ok(txs.len() as u32));
                    txs.push(tx);
                }
                Err(e) => outcomes.push(Err(e)),
            }
        }
        let header = BlockHeader {
            height,
            prev: prev.hash(),
            tx_root: merkle::root(&tx_leaves(&txs)),
            state_root: state.root(),
            time_ms,
            proposer: proposer.public(),
            chain: state.chain_key(),
        };
        let mut header = SignedHeader {
            header,
            signatures: Vec::new(),
        };
        header.sign(proposer);
        (Block { header, txs }, outcomes)
    }

    /// Checks this block against the previous header and applies it to `state`. On any
    /// error `state` is unchanged.
    pub fn apply(&self, state: &mut State, prev: &BlockHeader) -> Result<(), BlockError> {
        *state = self.apply_to(state.clone(), prev)?;
        Ok(())
    }

    /// Checks that the transactions are those the header's transaction root commits to.
    pub fn check_tx_root(&self) -> Result<(), BlockError> {
        let h = &self.header.header;
        if merkle::root(&tx_leaves(&self.txs)) != h.tx_root {
            return Err(BlockError::TxRoot(h.height));
        }
        Ok(())
    }

    /// Checks this block against the previous header and returns `state` after it (for a
    /// caller that owns a copy already: no second copy is made).
    pub fn apply_to(&self, mut next: State, prev: &BlockHeader) -> Result<State, BlockError> {
        let h = &self.header.header;
        if h.chain != next.chain_key() {
            return Err(BlockError::OtherChain {
                height: h.height,
                found: h.chain,
                expected: next.chain_key(),
            });
        }
        if h.height != prev.height + 1 {
            return Err(BlockError::Height {
                height: h.height,
                expected: prev.height + 1,
            });
        }
        if h.prev != prev.hash() {
            return Err(BlockError::Link(h.height));
        }
        if self.txs.len() > MAX_BLOCK_TXS {
            return Err(BlockError::TooManyTxs(h.height));
        }
        self.check_tx_root()?;
        for (index, tx) in self.txs.iter().enumerate() {
            next.apply(tx, h.height, h.time_ms)
                .map_err(|source| BlockError::Tx {
                    height: h.height,
                    index,
                    source,
                })?;
        }
        if next.root() != h.state_root {
            return Err(BlockError::StateRoot(h.height));
        }
        Ok(next)
    }

    /// The signature `identity` gives this block's header (an endorsement).
    pub fn endorsement(&self, identity: &Identity) -> (PublicId, Signature) {
        let sig = Signature::from_bytes(identity.sign(&self.header.header.signing_bytes()));
        (identity.public(), sig)
    }

    /// Proof that transaction `index` of this block is in it.
    pub fn inclusion(&self, index: usize) -> Result<TxInclusion, BlockError> {
        let proof = merkle::prove(&tx_leaves(&self.txs), index)?;
        Ok(TxInclusion {
            tx: self.txs[index].clone(),
            proof,
            header: self.header.clone(),
        })
    }
}

/// A transaction, its Merkle path and the signed header it is under: checkable offline by
/// anyone who knows the validator set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxInclusion {
    pub tx: SignedTx,
    pub proof: Proof,
    pub header: SignedHeader,
}

impl TxInclusion {
    /// Checks the transaction's signature (for the header's chain), its path to the
    /// header's transaction root, and that a majority of `validators` signed the header.
    pub fn verify(&self, validators: &[PublicId]) -> Result<(), BlockError> {
        let height = self.header.header.height;
        self.tx
            .verify_signature(&self.header.header.chain)
            .map_err(|source| BlockError::Tx {
                height,
                index: self.proof.index as usize,
                source,
            })?;
        self.proof.verify(
            &merkle::leaf_hash(&self.tx.encode()),
            &self.header.header.tx_root,
        )?;
        self.header.verify_final(validators)
    }

    /// [`verify`](Self::verify), and that the transaction is the one that registered
    /// `document` (a `RegisterDocument`, `PutName` or `RegisterRecord`, or the `Supersede` that
    /// introduced it).
    pub fn verify_registration(
        &self,
        document: &crate::id::DocumentId,
        validators: &[PublicId],
    ) -> Result<(), BlockError> {
        use super::tx::TxBody;
        let registers = match &self.tx.tx.body {
            TxBody::RegisterDocument { document: d } => d == document,
            TxBody::Supersede { new, .. } => new == document,
            TxBody::PutName { document: d, .. } => d == document,
            TxBody::RegisterRecord { document: d, .. } => d == document,
            _ => false,
        };
        if !registers {
            return Err(BlockError::NotRegistration(*document));
        }
        self.verify(validators)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::state::{Genesis, GenesisAccount};
    use crate::chain::store::genesis_header;
    use crate::chain::tx::{Tx, TxBody};
    use crate::id::DocumentId;
    use crate::identity::Role;

    struct Chain {
        validators: Vec<Identity>,
        dept: Identity,
        state: State,
    }

    fn chain(n_validators: usize) -> Chain {
        let validators: Vec<Identity> = (0..n_validators)
            .map(|_| Identity::generate(Role::Validator))
            .collect();
        let dept = Identity::generate(Role::Department);
        let genesis = Genesis {
            chain_id: "test".into(),
            validators: validators
                .iter()
                .map(|v| GenesisAccount::of(v, Role::Validator))
                .collect(),
            accounts: vec![GenesisAccount::of(&dept, Role::Department)],
            nodes: Vec::new(),
        };
        Chain {
            state: State::genesis(&genesis).unwrap(),
            validators,
            dept,
        }
    }

    fn register(c: &Chain, nonce: u64) -> SignedTx {
        Tx {
            sender: c.dept.public(),
            nonce,
            body: TxBody::RegisterDocument {
                document: DocumentId::of(&nonce.to_le_bytes()),
            },
        }
        .sign(&c.dept, &c.state.chain_key())
    }

    #[test]
    fn proposed_blocks_apply_on_other_validators_and_become_final() {
        let mut c = chain(3);
        let genesis = genesis_header(&c.state);
        let mut follower = c.state.clone();
        let txs: Vec<SignedTx> = (1..=5).map(|n| register(&c, n)).collect();
        let mut replay = txs.clone();
        replay.push(register(&c, 3)); // a replay inside the batch is left out
        let (mut block, outcomes) =
            Block::propose(&mut c.state, &genesis, replay, &c.validators[0], 1000);
        assert_eq!(block.txs, txs);
        assert_eq!(outcomes[..5], [Ok(0), Ok(1), Ok(2), Ok(3), Ok(4)]);
        assert!(matches!(outcomes[5], Err(TxError::BadNonce { .. })));
        block.apply(&mut follower, &genesis).unwrap();
        assert_eq!(follower.root(), c.state.root());

        let ids: Vec<PublicId> = c.validators.iter().map(|v| v.public()).collect();
        assert!(matches!(
            block.header.verify_final(&ids),
            Err(BlockError::NotFinal { signed: 1, .. })
        ));
        block.header.sign(&c.validators[1]);
        block.header.verify_final(&ids).unwrap();

        let proof = block.inclusion(2).unwrap();
        proof.verify(&ids).unwrap();
        let bytes = postcard::to_allocvec(&proof).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let Ok(bad) = postcard::from_bytes::<TxInclusion>(&bad) else {
                continue;
            };
            assert!(bad.verify(&ids).is_err(), "flipped byte {i} still verifies");
        }
    }

    #[test]
    fn tampered_blocks_are_refused_and_change_nothing() {
        let mut c = chain(1);
        let genesis = genesis_header(&c.state);
        let before = c.state.clone();
        let txs: Vec<SignedTx> = (1..=3).map(|n| register(&c, n)).collect();
        let (block, _) = Block::propose(&mut c.state, &genesis, txs, &c.validators[0], 5);
        let mut s = before.clone();

        let mut dropped = block.clone();
        dropped.txs.pop();
        assert_eq!(dropped.apply(&mut s, &genesis), Err(BlockError::TxRoot(1)));
        let mut wrong_root = block.clone();
        wrong_root.header.header.state_root[0] ^= 1;
        assert_eq!(
            wrong_root.apply(&mut s, &genesis),
            Err(BlockError::StateRoot(1))
        );
        let mut unlinked = block.clone();
        unlinked.header.header.prev[0] ^= 1;
        assert_eq!(unlinked.apply(&mut s, &genesis), Err(BlockError::Link(1)));
        assert_eq!(s, before);
        block.apply(&mut s, &genesis).unwrap();
        // The same block again is at the wrong height.
        assert!(matches!(
            block.apply(&mut s, &block.header.header),
            Err(BlockError::Height { .. })
        ));
    }

    #[test]
    fn a_forged_proposer_signature_or_a_block_of_another_chain_is_refused() {
        let mut c = chain(1);
        let genesis = genesis_header(&c.state);
        let before = c.state.clone();
        let txs = vec![register(&c, 1)];
        let (block, _) = Block::propose(&mut c.state, &genesis, txs, &c.validators[0], 5);
        let proposer = c.validators[0].public();
        block.header.verify_signer(&proposer).unwrap();
        let mut forged = block.clone();
        forged.header.header.time_ms += 1;
        assert!(matches!(
            forged.header.verify_signer(&proposer),
            Err(BlockError::BadSignature { .. })
        ));
        let mut unsigned = block.clone();
        unsigned.header.signatures.clear();
        assert!(matches!(
            unsigned.header.verify_signer(&proposer),
            Err(BlockError::NoProposerSignature { .. })
        ));
        let mut elsewhere = block.clone();
        elsewhere.header.header.chain = ChainKey([1; 32]);
        let mut s = before.clone();
        assert!(matches!(
            elsewhere.apply(&mut s, &genesis),
            Err(BlockError::OtherChain { .. })
        ));
        assert_eq!(s, before);
        block.apply(&mut s, &genesis).unwrap();
    }

    #[test]
    fn signatures_from_outsiders_or_forged_are_refused() {
        let mut c = chain(1);
        let genesis = genesis_header(&c.state);
        let (mut block, _) = Block::propose(&mut c.state, &genesis, vec![], &c.validators[0], 5);
        let ids = vec![c.validators[0].public()];
        block.header.verify_final(&ids).unwrap();
        let outsider = Identity::generate(Role::Validator);
        block.header.sign(&outsider);
        assert!(matches!(
            block.header.verify_final(&ids),
            Err(BlockError::NotValidator { .. })
        ));
        block.header.signatures.pop();
        block.header.header.time_ms += 1;
        assert!(matches!(
            block.header.verify_final(&ids),
            Err(BlockError::BadSignature { .. })
        ));
    }
}
