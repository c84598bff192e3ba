//! Signed checkpoints: the chain's tip every N blocks, in the C2SP formats
//! (<https://c2sp.org/tlog-checkpoint> inside a <https://c2sp.org/signed-note>), signed by a
//! majority of the validators in force at its height, so anyone outside the cluster can keep,
//! anchor and timestamp it, and check it later with the genesis validators alone.
//!
//! The text: the origin `dangan.chain/<chain key in hex>` (the chain key is BLAKE3 of the
//! genesis, so the origin names one chain), the height as the tree size, the block's header
//! hash (base64) as the root hash, and one extension line `state <base64 state root>`. Each
//! validator signs the text with its Ed25519 key as an ordinary signed-note signature: key
//! name `dangan.validator/<key in hex>`, key id as C2SP recommends (SHA-256 of the name, a
//! newline, 0x01 and the key), so `note` verifiers of other projects check them as they are
//! ([`verifier_key`]). The header hash commits to every earlier header, hence to every
//! block's transactions and state root before it.
//!
//! Gathering (why this way): a validator that applied a block signs that block's checkpoint
//! for any other validator host that asks (`Request::SignCheckpoint`); it builds the text
//! from its own store, so it never signs what it did not apply, and the asking validator
//! cannot make it sign anything else. Every validator whose node config sets
//! `checkpoint_every` gathers the signatures itself over the validators' existing mutual-TLS
//! links and keeps the checkpoint in its chain store once a majority of the set in force at
//! the height ([`ValidatorHistory::at`]) signed: no transaction, no consensus round and no
//! change to the block format, so checkpoints cost nothing when off and a slow signer never
//! holds up blocks. N is a validator setting, not a genesis one, for the same reason: a
//! signer signs any final height, so validators need not agree on N, and changing it needs
//! no new chain.
//!
//! A checkpoint counts only with signatures of a majority of the set in force at its height
//! (proven from the genesis set by `chain::validators`); a signature of a key outside it is
//! ignored as unknown, a bad signature of a key in it refuses the whole note.
//!
//! Not for: choosing what to anchor it in (`chain::anchor`) or timestamping it
//! (`chain::timestamp`); proving a document (a receipt does that, and may carry its
//! checkpoint: `receipt`).

use std::sync::Weak;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tracing::{debug, info, warn};

use super::block::BlockHeader;
use super::merkle::Hash;
use super::tx::{ChainKey, Signature};
use super::validators::ValidatorHistory;
use crate::identity::{Identity, PublicId};

/// First part of a checkpoint's origin line; the chain key in hex follows.
pub const ORIGIN_PREFIX: &str = "dangan.chain/";
/// First part of a validator's signed-note key name; its key in hex follows.
pub const KEY_NAME_PREFIX: &str = "dangan.validator/";
/// Largest signed checkpoint accepted (a few hundred validators' signatures fit).
pub const MAX_NOTE_BYTES: usize = 64 << 10;
/// How long a gathering validator waits for another's signature.
pub const SIGN_TIMEOUT: Duration = Duration::from_secs(2);
/// signed-note's algorithm byte for Ed25519.
const ALG_ED25519: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("not a Dangan checkpoint: {0}")]
    Malformed(String),
    #[error("the checkpoint is of chain {found}, not of chain {expected}")]
    OtherChain { found: ChainKey, expected: ChainKey },
    #[error("checkpoint {height}: a validator's signature does not verify ({name})")]
    BadSignature { height: u64, name: String },
    #[error(
        "checkpoint {height}: signed by {signed} of the {validators} validators in force at \
         that height, a majority is needed"
    )]
    Minority {
        height: u64,
        signed: usize,
        validators: usize,
    },
}

/// What a checkpoint says: the chain, a height, its block's header hash and state root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub chain: ChainKey,
    pub height: u64,
    pub block_hash: Hash,
    pub state_root: Hash,
}

impl Checkpoint {
    /// The checkpoint of a block.
    pub fn of(header: &BlockHeader) -> Self {
        Self {
            chain: header.chain,
            height: header.height,
            block_hash: header.hash(),
            state_root: header.state_root,
        }
    }

    /// The origin line of a chain's checkpoints.
    pub fn origin(chain: &ChainKey) -> String {
        format!("{ORIGIN_PREFIX}{chain}")
    }

    /// The checkpoint text (C2SP tlog-checkpoint), what validators sign.
    pub fn text(&self) -> Vec<u8> {
        let extension = format!("state {}\n", BASE64.encode(self.state_root));
        tlog_tiles::Checkpoint::new(
            &Self::origin(&self.chain),
            self.height,
            tlog_tiles::Hash(self.block_hash),
            &extension,
        )
        .expect("origin and extension are well-formed")
        .to_bytes()
    }

    /// Parses a checkpoint text; only the exact text [`Self::text`] writes is accepted.
    pub fn parse(text: &[u8]) -> Result<Self, CheckpointError> {
        let bad = |why: &str| CheckpointError::Malformed(why.to_string());
        let parsed = tlog_tiles::Checkpoint::from_bytes(text).map_err(|e| bad(&e.to_string()))?;
        let chain = parsed
            .origin()
            .strip_prefix(ORIGIN_PREFIX)
            .ok_or_else(|| bad("the origin is not a Dangan chain's"))?
            .parse::<ChainKey>()
            .map_err(|_| bad("the origin does not name a chain key"))?;
        let state = parsed
            .extension()
            .strip_prefix("state ")
            .and_then(|s| s.strip_suffix('\n'))
            .ok_or_else(|| bad("no state root line"))?;
        let state_root: Hash = BASE64
            .decode(state)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("the state root is not 32 bytes of base64"))?;
        let checkpoint = Self {
            chain,
            height: parsed.size(),
            block_hash: parsed.hash().0,
            state_root,
        };
        if checkpoint.text() != text {
            return Err(bad("not in canonical form"));
        }
        Ok(checkpoint)
    }

    /// SHA-256 of the checkpoint text: what an anchor or a timestamp authority is handed
    /// (the signatures are left out: they only vouch for the text, and more may be added).
    pub fn digest(&self) -> [u8; 32] {
        sha2::Sha256::digest(self.text()).into()
    }
}

/// A validator's signed-note key name.
pub fn key_name(validator: &PublicId) -> String {
    format!("{KEY_NAME_PREFIX}{}", hex::encode(validator.to_bytes()))
}

fn key_bytes(validator: &PublicId) -> Vec<u8> {
    let mut key = vec![ALG_ED25519];
    key.extend_from_slice(&validator.to_bytes());
    key
}

/// A validator's signed-note key id.
pub fn key_id(validator: &PublicId) -> u32 {
    signed_note::key_id(&key_name(validator), &key_bytes(validator))
}

/// A validator's verifier key in signed-note's text form (`name+id+base64 key`), for
/// verifying checkpoints with other C2SP tools.
pub fn verifier_key(validator: &PublicId) -> String {
    format!(
        "{}+{:08x}+{}",
        key_name(validator),
        key_id(validator),
        BASE64.encode(key_bytes(validator))
    )
}

/// One validator's signature of a checkpoint text (what `SignCheckpoint` answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSignature {
    pub validator: PublicId,
    pub signature: Signature,
}

impl CheckpointSignature {
    pub fn sign(checkpoint: &Checkpoint, identity: &Identity) -> Self {
        Self {
            validator: identity.public(),
            signature: Signature::from_bytes(identity.sign(&checkpoint.text())),
        }
    }

    pub fn verify(&self, checkpoint: &Checkpoint) -> bool {
        self.validator
            .verify(&checkpoint.text(), &self.signature.to_bytes())
            .is_ok()
    }
}

struct NoteKey {
    name: String,
    id: u32,
    key: PublicId,
}

impl signed_note::Verifier for NoteKey {
    fn name(&self) -> &str {
        &self.name
    }
    fn key_id(&self) -> u32 {
        self.id
    }
    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        <[u8; 64]>::try_from(sig).is_ok_and(|sig| self.key.verify(msg, &sig).is_ok())
    }
}

/// A checkpoint with its validators' signatures: the bytes of a C2SP signed note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCheckpoint(Vec<u8>);

impl SignedCheckpoint {
    /// The signed note of `checkpoint` with `signatures` (in the order given).
    pub fn assemble(checkpoint: &Checkpoint, signatures: &[CheckpointSignature]) -> Self {
        let sigs: Vec<signed_note::Signature> = signatures
            .iter()
            .map(|s| {
                signed_note::Signature::new(
                    key_name(&s.validator),
                    key_id(&s.validator),
                    s.signature.to_bytes().to_vec(),
                )
                .expect("key names are valid")
            })
            .collect();
        let note = signed_note::Note::new(&checkpoint.text(), &sigs).expect("the text is valid");
        Self(note.to_bytes())
    }

    /// Untrusted bytes (a file, an answer): size and note syntax checked, nothing verified.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CheckpointError> {
        if bytes.len() > MAX_NOTE_BYTES {
            return Err(CheckpointError::Malformed(format!(
                "{} bytes, over the limit of {MAX_NOTE_BYTES}",
                bytes.len()
            )));
        }
        let note = signed_note::Note::from_bytes(bytes)
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        Checkpoint::parse(note.text())?;
        Ok(Self(bytes.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// What the note says, unverified.
    pub fn checkpoint(&self) -> Result<Checkpoint, CheckpointError> {
        let note = signed_note::Note::from_bytes(&self.0)
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        Checkpoint::parse(note.text())
    }

    /// Checks, with no network, that the checkpoint is of `chain` and that a majority of
    /// the validators `history` proves for its height signed it (every signature of one of
    /// them must verify; others' are ignored). Returns the checkpoint and its signers.
    pub fn verify(
        &self,
        chain: &ChainKey,
        history: &ValidatorHistory,
    ) -> Result<(Checkpoint, Vec<PublicId>), CheckpointError> {
        let note = signed_note::Note::from_bytes(&self.0)
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        let checkpoint = Checkpoint::parse(note.text())?;
        if checkpoint.chain != *chain {
            return Err(CheckpointError::OtherChain {
                found: checkpoint.chain,
                expected: *chain,
            });
        }
        let height = checkpoint.height;
        let validators = history.at(height);
        let known = signed_note::VerifierList::new(
            validators
                .iter()
                .map(|v| {
                    Box::new(NoteKey {
                        name: key_name(v),
                        id: key_id(v),
                        key: *v,
                    }) as Box<dyn signed_note::Verifier>
                })
                .collect(),
        );
        let minority = |signed| CheckpointError::Minority {
            height,
            signed,
            validators: validators.len(),
        };
        let verified = match note.verify(&known) {
            Ok((verified, _unknown)) => verified,
            Err(signed_note::NoteError::UnverifiedNote) => return Err(minority(0)),
            Err(signed_note::NoteError::InvalidSignature { name, .. }) => {
                return Err(CheckpointError::BadSignature { height, name });
            }
            Err(e) => return Err(CheckpointError::Malformed(e.to_string())),
        };
        let mut signers: Vec<PublicId> = validators
            .iter()
            .filter(|v| verified.iter().any(|s| s.name() == key_name(v)))
            .copied()
            .collect();
        signers.dedup();
        if signers.len() * 2 <= validators.len() {
            return Err(minority(signers.len()));
        }
        Ok((checkpoint, signers))
    }
}

/// What a validator keeps of a checkpoint (`ChainStore`'s `checkpoints-v1`) and serves
/// (`GetCheckpoint`): the signed note and the evidence gathered about it since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCheckpoint {
    pub note: SignedCheckpoint,
    /// The answers of the anchors it was handed to (`chain::anchor`).
    pub anchors: Vec<super::anchor::AnchorAnswer>,
    /// An RFC 3161 timestamp token (DER) over [`Checkpoint::digest`], if a timestamp
    /// authority is configured (`chain::timestamp`).
    pub token: Option<Vec<u8>>,
}

/// How a validator makes checkpoints (its node config's `[validator]` section).
#[derive(Clone, Default)]
pub struct CheckpointConfig {
    /// A checkpoint every this many blocks; 0: none.
    pub every: u64,
    /// Anchors each new checkpoint's digest is handed to.
    pub anchors: Vec<std::sync::Arc<dyn super::anchor::Anchor>>,
}

/// Gathers a checkpoint every `config.every` blocks for as long as the ledger lives: signs
/// it, asks the other validators of its height for theirs, keeps it once a majority signed,
/// hands it to the anchors. A height that cannot get a majority yet is tried again.
pub(crate) async fn gather(ledger: Weak<super::ledger::Ledger>, config: CheckpointConfig) {
    let every = config.every;
    if every == 0 {
        return;
    }
    let (mut applied, mut next) = {
        let Some(l) = ledger.upgrade() else { return };
        let last = match l.checkpoint(None) {
            Ok(found) => found
                .and_then(|c| c.note.checkpoint().ok())
                .map(|c| c.height),
            Err(e) => {
                warn!(error = %e, "checkpoints: cannot read the chain store");
                None
            }
        };
        (
            l.applied_heights(),
            last.map_or(every, |h| (h / every + 1) * every),
        )
    };
    loop {
        if applied.wait_for(|h| *h >= next).await.is_err() {
            return;
        }
        let Some(l) = ledger.upgrade() else { return };
        match make(&l, next).await {
            Ok(stored) => {
                info!(
                    height = next,
                    "checkpoint signed by a majority of validators"
                );
                if let Err(e) = anchor(&l, next, stored, &config).await {
                    warn!(height = next, error = %e, "checkpoint kept, anchoring failed");
                }
                next += every;
            }
            Err(e) => {
                debug!(height = next, error = %e, "checkpoint not signed by a majority yet");
                drop(l);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// Signs the checkpoint of block `height`, gathers the others' signatures and keeps it.
async fn make(
    ledger: &super::ledger::Ledger,
    height: u64,
) -> Result<StoredCheckpoint, super::ledger::LedgerError> {
    use super::ledger::LedgerError;
    use futures::StreamExt as _;

    if let Some(found) = ledger.checkpoint(Some(height))? {
        return Ok(found);
    }
    let mine = ledger
        .checkpoint_signature(height)?
        .ok_or_else(|| LedgerError::Unavailable(format!("block {height} not applied")))?;
    let checkpoint = Checkpoint::of(
        &ledger
            .block(height)?
            .ok_or_else(|| LedgerError::Unavailable(format!("block {height} not stored")))?
            .header
            .header,
    );
    let history = ledger.validator_history()?;
    let set = history.at(height).to_vec();
    let mut signatures = Vec::new();
    if set.contains(&mine.validator) {
        signatures.push(mine);
    }
    let me = super::raft::node_id(&mine.validator);
    let req = crate::proto::Request::SignCheckpoint { height };
    let mut asks: futures::stream::FuturesUnordered<_> = set
        .iter()
        .map(super::raft::node_id)
        .filter(|id| *id != me)
        .map(|id| ledger.ask_validator(id, req.clone(), SIGN_TIMEOUT))
        .collect();
    while let Some(answer) = asks.next().await {
        let signature = answer.and_then(|bytes| {
            postcard::from_bytes::<CheckpointSignature>(&bytes).map_err(|e| e.to_string())
        });
        match signature {
            Ok(s) if set.contains(&s.validator) && s.verify(&checkpoint) => {
                if signatures.iter().all(|t| t.validator != s.validator) {
                    signatures.push(s);
                }
            }
            Ok(s) => warn!(validator = %s.validator, "checkpoint signature ignored"),
            Err(e) => debug!(height, error = %e, "no checkpoint signature"),
        }
    }
    signatures.sort_by_key(|s| s.validator);
    let note = SignedCheckpoint::assemble(&checkpoint, &signatures);
    note.verify(&checkpoint.chain, &history)
        .map_err(|e| LedgerError::Unavailable(e.to_string()))?;
    let stored = StoredCheckpoint {
        note,
        anchors: Vec::new(),
        token: None,
    };
    ledger.keep_checkpoint(height, &stored).await?;
    Ok(stored)
}

/// Hands a kept checkpoint to each anchor and keeps their answers beside it.
async fn anchor(
    ledger: &super::ledger::Ledger,
    height: u64,
    mut stored: StoredCheckpoint,
    config: &CheckpointConfig,
) -> Result<(), super::ledger::LedgerError> {
    if config.anchors.is_empty() {
        return Ok(());
    }
    let checkpoint = stored
        .note
        .checkpoint()
        .map_err(|e| super::ledger::LedgerError::Unavailable(e.to_string()))?;
    for anchor in &config.anchors {
        let (anchor, note) = (anchor.clone(), stored.note.clone());
        let digest = checkpoint.digest();
        let answer = tokio::task::spawn_blocking(move || anchor.anchor(&digest, &note))
            .await
            .map_err(|e| super::ledger::LedgerError::Unavailable(e.to_string()))?;
        match answer {
            Ok(answer) => stored.anchors.push(answer),
            Err(e) => warn!(height, error = %e, "an anchor refused the checkpoint"),
        }
    }
    ledger.keep_checkpoint(height, &stored).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    fn ids(n: usize) -> Vec<Identity> {
        (0..n)
            .map(|_| Identity::generate(Role::Validator))
            .collect()
    }

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            chain: ChainKey([7; 32]),
            height: 40,
            block_hash: [1; 32],
            state_root: [2; 32],
        }
    }

    #[test]
    fn the_text_is_a_c2sp_checkpoint_and_parses_back_only_canonical() {
        let c = checkpoint();
        let text = String::from_utf8(c.text()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], format!("dangan.chain/{}", "07".repeat(32)));
        assert_eq!(lines[1], "40");
        assert_eq!(lines[2], BASE64.encode([1u8; 32]));
        assert_eq!(lines[3], format!("state {}", BASE64.encode([2u8; 32])));
        assert_eq!(lines.len(), 4);
        assert_eq!(Checkpoint::parse(text.as_bytes()).unwrap(), c);
        for bad in [
            text.replace("dangan.chain/", "other/"),
            text.replace("\n40\n", "\n040\n"),
            text.replace("state ", "root "),
            format!("{text}extra\n"),
            text.trim_end().to_string(),
        ] {
            assert!(Checkpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_majority_of_the_set_at_the_height_makes_a_checkpoint_count() {
        let v = ids(3);
        let set: Vec<PublicId> = v.iter().map(|i| i.public()).collect();
        let history = ValidatorHistory::trusted(&set);
        let c = checkpoint();
        let sign = |i: &Identity| CheckpointSignature::sign(&c, i);

        let two = SignedCheckpoint::assemble(&c, &[sign(&v[0]), sign(&v[2])]);
        let (found, signers) = two.verify(&c.chain, &history).unwrap();
        assert_eq!(found, c);
        assert_eq!(signers.len(), 2);
        // It is a signed note other tools read: text, blank line, one line a signature.
        let text = String::from_utf8(two.as_bytes().to_vec()).unwrap();
        assert!(text.contains(&format!("\n\n— {} ", key_name(&set[0]))));
        assert_eq!(
            SignedCheckpoint::from_bytes(two.as_bytes()).unwrap(),
            two.clone()
        );

        // One of three, or one twice, is a minority.
        let one = SignedCheckpoint::assemble(&c, &[sign(&v[1])]);
        assert!(matches!(
            one.verify(&c.chain, &history),
            Err(CheckpointError::Minority { signed: 1, .. })
        ));
        let twice = SignedCheckpoint::assemble(&c, &[sign(&v[1]), sign(&v[1])]);
        assert!(matches!(
            twice.verify(&c.chain, &history),
            Err(CheckpointError::Minority { signed: 1, .. })
        ));
        // Outsiders do not count.
        let outsiders = ids(2);
        let padded = SignedCheckpoint::assemble(
            &c,
            &[sign(&v[1]), sign(&outsiders[0]), sign(&outsiders[1])],
        );
        assert!(matches!(
            padded.verify(&c.chain, &history),
            Err(CheckpointError::Minority { signed: 1, .. })
        ));
        // A signature made over another checkpoint, under a validator's name: refused.
        let mut other = c.clone();
        other.height += 1;
        let forged = CheckpointSignature {
            validator: set[1],
            signature: CheckpointSignature::sign(&other, &v[1]).signature,
        };
        let bad = SignedCheckpoint::assemble(&c, &[sign(&v[0]), sign(&v[2]), forged]);
        assert!(matches!(
            bad.verify(&c.chain, &history),
            Err(CheckpointError::BadSignature { height: 40, .. })
        ));
        // Another chain's checkpoint.
        assert!(matches!(
            two.verify(&ChainKey([8; 32]), &history),
            Err(CheckpointError::OtherChain { .. })
        ));
        // Any flipped byte: refused when parsing or verifying.
        let bytes = two.as_bytes();
        for i in 0..bytes.len() {
            let mut flipped = bytes.to_vec();
            flipped[i] ^= 0x01;
            assert!(
                SignedCheckpoint::from_bytes(&flipped)
                    .and_then(|s| s.verify(&c.chain, &history))
                    .is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn the_verifier_key_is_signed_notes_standard_form() {
        let v = ids(1);
        let key = verifier_key(&v[0].public());
        let (name, rest) = key.split_once('+').unwrap();
        assert_eq!(name, key_name(&v[0].public()));
        let (id, b64) = rest.split_once('+').unwrap();
        assert_eq!(u32::from_str_radix(id, 16).unwrap(), key_id(&v[0].public()));
        let raw = BASE64.decode(b64).unwrap();
        assert_eq!(raw[0], 1);
        assert_eq!(&raw[1..], &v[0].public().to_bytes());
    }
}
