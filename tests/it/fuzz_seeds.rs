//! Writes the seed corpora of the fuzz targets (`fuzz/seeds/<target>/`) from real encodings:
//! frames as clients and peers write them, manifests from the codec, transactions and a
//! block signed by the keys of the fuzz world (`fuzz/src/lib.rs`, shared here so the seeds
//! verify against what the targets check), and config and key files. The `config` seeds
//! named `local_*` come from `dangan local-config DIR --peers 3` and are kept as they are.
//!
//! Not part of the suite: `cargo test --test it fuzz_seeds -- --ignored` rewrites the seeds.

use std::path::Path;

use crate::common::chain::{approved, tx};
use dangan::chain::block::Block;
use dangan::chain::ledger::ChainStatus;
use dangan::chain::merkle;
use dangan::chain::state::{DocumentRecord, Genesis, GenesisAccount};
use dangan::chain::tx::{SignedTx, TxBody, VersionKind};
use dangan::codec::{self, DocumentInfo};
use dangan::crypto::DataKey;
use dangan::id::{DocumentId, ShardId};
use dangan::identity::{Identity, Role};
use dangan::manifest::CodingParams;
use dangan::proto::PutOutcome;
use dangan::proto::{ErrorCode, Request, Response, encode_frame};
use dangan::receipt::Receipt;

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz_world;

use fuzz_world::{
    CITIZEN, DEPARTMENT, DEPARTMENT_2, FIRST_NODE, OPERATOR, VALIDATOR, VALIDATOR_2, world,
};

fn put(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(bytes);
    out
}

#[test]
#[ignore = "writes fuzz/seeds; run by hand when a format changes"]
fn write_fuzz_seeds() {
    wire_frames();
    let manifest = manifests();
    let block = transactions_and_block();
    blocks(&block);
    receipts(&manifest);
    configs();
}

/// A receipt that verifies against the fuzz world: `manifest` registered in a block signed
/// by both validators.
fn receipts(manifest: &[u8]) {
    let w = world();
    let document = DocumentId::of(manifest);
    let register = tx(
        &w.state.chain_key(),
        &w.identities[DEPARTMENT],
        1,
        TxBody::RegisterDocument { document },
    );
    let mut state = w.state.clone();
    let (mut block, outcomes) = Block::propose(
        &mut state,
        &w.genesis,
        vec![register],
        &w.identities[VALIDATOR],
        1_700_000_000_000,
    );
    assert!(outcomes[0].is_ok());
    block.header.sign(&w.identities[VALIDATOR_2]);
    let receipt = Receipt {
        document,
        manifest: manifest.to_vec(),
        registration: block.inclusion(0).unwrap(),
        validator_changes: Vec::new(),
        checkpoint: None,
    };
    receipt.verify(&w.validators).unwrap();
    put("receipt", "receipt", &receipt.encode());
}

fn wire_frames() {
    let id = ShardId([7; 32]);
    let doc = DocumentId::of(b"seed");
    let with_body = |req: Request, body: &[u8]| {
        let mut out = encode_frame(&req);
        out.extend_from_slice(body);
        out
    };
    put(
        "wire_frame",
        "put_shard",
        &with_body(
            Request::PutShard {
                id,
                len: 5,
                document: None,
            },
            b"hello",
        ),
    );
    put(
        "wire_frame",
        "put_manifest",
        &with_body(Request::PutManifest { id: doc, len: 3 }, b"abc"),
    );
    put(
        "wire_frame",
        "submit_tx",
        &with_body(Request::SubmitTx { len: 2 }, b"tx"),
    );
    put(
        "wire_frame",
        "open_document",
        &with_body(
            Request::OpenDocument {
                document: doc,
                len: 3,
            },
            b"abc",
        ),
    );
    let requests = [
        ("get_shard", Request::GetShard { id }),
        ("has_shard", Request::HasShard { id, document: None }),
        ("delete_shard", Request::DeleteShard { id, document: doc }),
        (
            "list",
            Request::ListShards {
                after: Some(id),
                limit: 1000,
            },
        ),
        ("usage", Request::Usage),
        ("get_manifest", Request::GetManifest { id: doc }),
        ("ping", Request::Ping),
        ("get_document", Request::GetDocument { id: doc }),
        ("get_block", Request::GetBlock { height: 300 }),
        ("chain_status", Request::ChainStatus),
        (
            "get_account",
            Request::GetAccount {
                id: world().validators[0],
            },
        ),
        ("get_tx", Request::GetTx { id: [9; 32] }),
        (
            "get_audit",
            Request::GetAudit {
                document: doc,
                after: Some(3),
            },
        ),
    ];
    for (name, req) in requests {
        put("wire_frame", name, &encode_frame(&req));
    }
    let mut shard = encode_frame(&Response::Shard { len: 4 });
    shard.extend_from_slice(b"body");
    put("wire_frame", "resp_shard", &shard);
    let responses = [
        ("resp_stored", Response::Stored(PutOutcome::Stored)),
        ("resp_manifest", Response::Manifest { len: 70_000 }),
        ("resp_not_found", Response::NotFound),
        ("resp_has", Response::Has(true)),
        ("resp_list", Response::List(vec![id, ShardId([8; 32])])),
        ("resp_pong", Response::Pong),
        (
            "resp_error",
            Response::Error {
                code: ErrorCode::Refused,
                message: "nonce".into(),
            },
        ),
        (
            "resp_committed",
            Response::Committed {
                height: 3,
                index: 1,
            },
        ),
        ("resp_chain_body", Response::ChainBody { len: 1 << 20 }),
    ];
    for (name, resp) in responses {
        put("wire_frame", name, &encode_frame(&resp));
    }
}

/// Writes the manifest seeds; returns the default-coding one.
fn manifests() -> Vec<u8> {
    let mut last = Vec::new();
    let params = |k, m, segments_per_stripe| CodingParams {
        k,
        m,
        segment_size: 1024,
        segments_per_stripe,
    };
    let cases = [
        ("empty", 0usize, params(1, 1, 2)),
        ("small", 3000, params(2, 1, 2)),
        ("stripes", 9000, params(4, 2, 3)),
        ("no_parity", 2500, params(3, 0, 1)),
        ("default", 5000, CodingParams::default()),
    ];
    for (name, size, params) in cases {
        let data: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
        let info = DocumentInfo {
            department: "records".into(),
            document_type: "certificate".into(),
            created_at_ms: Some(1_700_000_000_000),
        };
        let key = DataKey::from_bytes([5; 32]);
        let manifest = codec::encode_with_key(
            &data[..],
            params,
            info,
            &key,
            Default::default(),
            |_| Ok(()),
        )
        .unwrap();
        put("manifest", name, &manifest.encode());
        last = manifest.encode();
    }
    // Version 2: three pieces (an S3 multipart upload's parts), each sealed on its own.
    let params = params(2, 1, 2);
    let pieces = [3000usize, 0, 700]
        .iter()
        .enumerate()
        .map(|(n, &size)| {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + n) as u8).collect();
            let info = DocumentInfo::default();
            let key = DataKey::from_bytes([5; 32]);
            let m = codec::encode_with_key(&data[..], params, info, &key, [n as u8; 7], |_| Ok(()))
                .unwrap();
            codec::SealedPiece {
                piece: m.pieces[0],
                stripes: m.stripes,
            }
        })
        .collect();
    let info = DocumentInfo {
        department: "records".into(),
        document_type: "s3-object".into(),
        created_at_ms: Some(1_700_000_000_000),
    };
    let pieces = codec::pieces_manifest(params, info, pieces).unwrap();
    put("manifest", "pieces", &pieces.encode());
    last
}

/// Seeds of the `tx` target; returns a block of them, proposed and signed by both validators
/// of the fuzz world.
fn transactions_and_block() -> Block {
    let w = world();
    let id = |i: usize| &w.identities[i];
    let new_node = Identity::from_seed([99; 32], Role::Node).public();
    let new_validator = Identity::from_seed([98; 32], Role::Validator).public();
    let doc = |n: u8| DocumentId::of(&[n]);
    let node = w.identities[FIRST_NODE].public();
    let txs = [
        (
            "register",
            tx(
                &w.state.chain_key(),
                id(DEPARTMENT),
                1,
                TxBody::RegisterDocument { document: doc(1) },
            ),
        ),
        (
            "register_2",
            tx(
                &w.state.chain_key(),
                id(DEPARTMENT_2),
                1,
                TxBody::RegisterDocument { document: doc(2) },
            ),
        ),
        (
            "supersede",
            tx(
                &w.state.chain_key(),
                id(DEPARTMENT),
                2,
                TxBody::Supersede {
                    old: doc(1),
                    new: doc(3),
                    kind: VersionKind::Reissue,
                    grants: vec![],
                },
            ),
        ),
        (
            "add_node",
            tx(
                &w.state.chain_key(),
                id(OPERATOR),
                1,
                TxBody::AddNode {
                    node: new_node,
                    addr: "127.0.0.1:7200".into(),
                    zone: "z9".into(),
                    weight: 50,
                },
            ),
        ),
        (
            "drain_node",
            tx(
                &w.state.chain_key(),
                id(OPERATOR),
                2,
                TxBody::DrainNode { node },
            ),
        ),
        (
            "remove_node",
            tx(
                &w.state.chain_key(),
                id(OPERATOR),
                3,
                TxBody::RemoveNode { node },
            ),
        ),
        (
            "set_layout",
            tx(
                &w.state.chain_key(),
                id(OPERATOR),
                4,
                TxBody::SetLayout {
                    weights: vec![(new_node, 7)],
                },
            ),
        ),
        (
            "add_validator",
            approved(
                &w.state.chain_key(),
                &[id(VALIDATOR), id(VALIDATOR_2)],
                1,
                TxBody::AddValidator {
                    validator: new_validator,
                    host: None,
                    approvals: vec![],
                },
            ),
        ),
        (
            "remove_validator",
            approved(
                &w.state.chain_key(),
                &[id(VALIDATOR_2), id(VALIDATOR)],
                1,
                TxBody::RemoveValidator {
                    validator: new_validator,
                    approvals: vec![],
                },
            ),
        ),
        (
            "citizen_refused",
            tx(
                &w.state.chain_key(),
                id(CITIZEN),
                1,
                TxBody::RegisterDocument { document: doc(4) },
            ),
        ),
    ];
    for (name, stx) in &txs {
        put("tx", name, &with_mode(0, &stx.encode()));
    }
    // The signed mode: (signer index, Tx) pairs; the target fills in sender and nonce.
    let mut seq = Vec::new();
    for (_, stx) in &txs {
        let signer = w
            .identities
            .iter()
            .position(|i| i.public() == stx.tx.sender)
            .unwrap();
        seq.extend(postcard::to_allocvec(&(signer as u8, stx.tx.clone())).unwrap());
    }
    put("tx", "sequence_all", &with_mode(1, &seq));
    let one = postcard::to_allocvec(&(OPERATOR as u8, txs[3].1.tx.clone())).unwrap();
    put("tx", "sequence_add_node", &with_mode(1, &one));

    let mut state = w.state.clone();
    let candidates: Vec<SignedTx> = txs.iter().map(|(_, t)| t.clone()).collect();
    let (mut block, outcomes) = Block::propose(
        &mut state,
        &w.genesis,
        candidates,
        id(VALIDATOR),
        1_700_000_000_000,
    );
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        9,
        "{outcomes:?}"
    );
    block.header.sign(id(VALIDATOR_2));
    block.header.verify_final(&w.validators).unwrap();
    block
}

fn blocks(block: &Block) {
    let w = world();
    put("block", "block", &with_mode(0, &encoded(block)));
    let mut s = w.state.clone();
    let (empty, _) = Block::propose(&mut s, &w.genesis, vec![], &w.identities[VALIDATOR], 1);
    put("block", "block_empty", &with_mode(0, &encoded(&empty)));
    let inclusion = block.inclusion(1).unwrap();
    inclusion.verify(&w.validators).unwrap();
    put("block", "inclusion", &with_mode(1, &encoded(&inclusion)));
    let record = DocumentRecord {
        owner: block.txs[1].tx.sender,
        height: 1,
        superseded_by: None,
        supersedes: None,
        grants: Default::default(),
    };
    put(
        "block",
        "document",
        &with_mode(2, &encoded(&(record, inclusion.clone()))),
    );
    let leaf = merkle::leaf_hash(&inclusion.tx.encode());
    let proof = (inclusion.proof.clone(), leaf, block.header.header.tx_root);
    put("block", "proof", &with_mode(3, &encoded(&proof)));
    let (_, account) = w.state.accounts().next().unwrap();
    put("block", "account", &with_mode(4, &encoded(account)));
    let status = ChainStatus {
        chain_id: w.state.chain_id().to_owned(),
        height: 1,
        tip_hash: block.header.header.hash(),
        state_root: block.header.header.state_root,
        validators: w.validators.clone(),
        documents: 3,
        layout_epoch: 4,
        chain_key: w.state.chain_key(),
    };
    put("block", "chain_status", &with_mode(5, &encoded(&status)));
}

fn encoded<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap()
}

fn configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let file = |p: &Path| std::fs::read(p).unwrap();
    put(
        "config",
        "example_cluster",
        &with_mode(0, &file(&root.join("config/cluster.toml"))),
    );
    put(
        "config",
        "example_node",
        &with_mode(1, &file(&root.join("config/node.toml"))),
    );
    let w = world();
    let genesis = Genesis {
        chain_id: "fuzz".into(),
        validators: vec![GenesisAccount::of(
            &w.identities[VALIDATOR],
            Role::Validator,
        )],
        accounts: vec![GenesisAccount::of(
            &w.identities[DEPARTMENT],
            Role::Department,
        )],
        nodes: w.state.layout().nodes.clone(),
    };
    put(
        "config",
        "genesis",
        &with_mode(2, toml::to_string(&genesis).unwrap().as_bytes()),
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    Identity::from_seed([42; 32], Role::Node)
        .save(&key)
        .unwrap();
    put("config", "key", &with_mode(3, &file(&key)));
    put(
        "config",
        "pub",
        &with_mode(4, &file(&Identity::pub_path(&key))),
    );
}
