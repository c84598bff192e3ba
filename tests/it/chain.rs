//! The one-validator ledger on real redb files: group commit, replay protection, restart,
//! tampering on disk, inclusion proofs.

use std::sync::Arc;
use std::time::Duration;

use crate::common::chain::{approved, register, registered_document, tx};
use crate::common::wire::Raw;
use dangan::chain::ledger::{Ledger, LedgerError};
use dangan::chain::proof::ProvenRecord;
use dangan::chain::state::{Genesis, GenesisAccount};
use dangan::chain::store::{ChainStore, ChainStoreError};
use dangan::chain::tx::{TxBody, TxError};
use dangan::chain::validators::ValidatorHistory;
use dangan::id::DocumentId;
use dangan::identity::{Identity, PublicId, Role};

struct Setup {
    genesis: Genesis,
    validator: Identity,
    departments: Vec<Identity>,
}

fn setup(departments: usize) -> Setup {
    let validator = Identity::generate(Role::Validator);
    let departments: Vec<Identity> = (0..departments)
        .map(|_| Identity::generate(Role::Department))
        .collect();
    Setup {
        genesis: Genesis {
            chain_id: "test".into(),
            validators: vec![GenesisAccount::of(&validator, Role::Validator)],
            accounts: departments
                .iter()
                .map(|d| GenesisAccount::of(d, Role::Department))
                .collect(),
            nodes: Vec::new(),
        },
        validator,
        departments,
    }
}

/// The single validator's ledger at `path`, with the first department's registrations 1 to
/// `n` committed on it (none when `n` is 0).
async fn open_ledger(path: &std::path::Path, s: &Setup, n: u64) -> Ledger {
    let ledger = Ledger::open_single(path, &s.genesis, s.validator.clone())
        .await
        .unwrap();
    // The first block seals the genesis state; the registrations follow.
    ledger.sealed(Duration::from_secs(10)).await.unwrap();
    for nonce in 1..=n {
        ledger
            .submit(register(&s.genesis.key(), &s.departments[0], nonce))
            .await
            .unwrap();
    }
    ledger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_group_committed_proved_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.redb");
    let s = setup(8);
    let ledger = Arc::new(open_ledger(&path, &s, 0).await);

    // 8 departments × 100 registrations each, all in flight at once.
    let mut tasks = tokio::task::JoinSet::new();
    for dept in &s.departments {
        let (ledger, dept, chain) = (ledger.clone(), dept.clone(), s.genesis.key());
        tasks.spawn(async move {
            let mut receipts = Vec::new();
            // Each department's nonces must arrive in order: submit them in sequence.
            for nonce in 1..=100 {
                receipts.push(ledger.submit(register(&chain, &dept, nonce)).await.unwrap());
            }
            receipts
        });
    }
    let mut receipts = Vec::new();
    while let Some(r) = tasks.join_next().await {
        receipts.extend(r.unwrap());
    }
    assert_eq!(receipts.len(), 800);
    let status = ledger.status();
    assert_eq!(status.documents, 800);
    assert!(
        status.height < 800,
        "group commit: {} blocks for 800 transactions",
        status.height
    );

    // A replay is refused with its reason and changes nothing.
    let replay = register(&s.genesis.key(), &s.departments[0], 5);
    assert!(matches!(
        ledger.submit(replay).await,
        Err(LedgerError::Refused(TxError::BadNonce { .. }))
    ));
    assert_eq!(ledger.status().state_root, status.state_root);

    // Every registration has a proof that checks against the validator set alone.
    let validators: Vec<PublicId> = vec![s.validator.public()];
    let doc = registered_document(&register(&s.genesis.key(), &s.departments[3], 42));
    let (record, proof) = ledger.document(&doc).unwrap().unwrap();
    assert_eq!(record.record.unwrap().owner, s.departments[3].public());
    proof.verify(&validators).unwrap();
    assert!(
        ledger
            .document(&DocumentId::of(b"never"))
            .unwrap()
            .is_none()
    );

    // Restart from disk: same height, same state root.
    ledger.shutdown().await;
    drop(ledger);
    let reopened = open_ledger(&path, &s, 0).await;
    let again = reopened.status();
    assert_eq!(again.height, status.height);
    assert_eq!(again.state_root, status.state_root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_block_on_disk_is_detected_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.redb");
    let s = setup(1);
    {
        let ledger = open_ledger(&path, &s, 3).await;
        ledger.shutdown().await;
    }
    let (store, _, tip) = ChainStore::open(&path, &s.genesis).unwrap();
    assert_eq!(tip.height, 4, "the seal and three registrations");
    let original = store.block_bytes_for_test(2).unwrap().unwrap();
    drop(store);
    let mut detected = 0;
    for i in (0..original.len()).step_by(7) {
        let mut bad = original.clone();
        bad[i] ^= 0x20;
        overwrite(&path, &s.genesis, &bad);
        store_reopen_err(&path, &s.genesis);
        detected += 1;
    }
    assert!(detected > 10);
    overwrite(&path, &s.genesis, &original);
    ChainStore::open(&path, &s.genesis).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validator_set_changes_are_indexed_and_proven_from_genesis() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.redb");
    let s = setup(1);
    let genesis_set = vec![s.validator.public()];
    let newcomer = Identity::generate(Role::Validator).public();
    let changes = {
        let ledger = open_ledger(&path, &s, 3).await;
        assert!(ledger.validator_changes().unwrap().is_empty());
        // The last block this lone validator can make final alone: it adds a second one.
        let add = approved(
            &s.genesis.key(),
            &[&s.validator],
            1,
            TxBody::AddValidator {
                validator: newcomer,
                host: None,
                approvals: vec![],
            },
        );
        let at = ledger.submit(add).await.unwrap();
        let changes = ledger.validator_changes().unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].header.header.height, at.height);
        ledger.shutdown().await;
        changes
    };
    let history = ValidatorHistory::prove(&genesis_set, &changes).unwrap();
    let tip = changes[0].header.header.height;
    assert_eq!(history.at(tip), genesis_set.as_slice());
    let mut both = vec![s.validator.public(), newcomer];
    both.sort();
    assert_eq!(history.at(tip + 1), both.as_slice());

    // A chain stored before the index existed gets it on open.
    let (store, _, _) = ChainStore::open(&path, &s.genesis).unwrap();
    assert_eq!(store.validator_changes().unwrap(), vec![(tip, 0)]);
    store.forget_validator_changes_for_test().unwrap();
    assert!(store.validator_changes().unwrap().is_empty());
    drop(store);
    let (store, _, _) = ChainStore::open(&path, &s.genesis).unwrap();
    assert_eq!(store.validator_changes().unwrap(), vec![(tip, 0)]);
}

/// Writes `bytes` as block 2, bypassing verification (the store is opened with the check
/// already failing, so go through a fresh handle of the raw table).
fn overwrite(path: &std::path::Path, genesis: &Genesis, bytes: &[u8]) {
    // Opening verifies the chain and may refuse it; the raw writer does not.
    let _ = genesis;
    ChainStore::raw_for_test(path)
        .unwrap()
        .overwrite_block_for_test(2, bytes)
        .unwrap();
}

/// Opening must fail (a changed byte anywhere in a stored block is caught).
fn store_reopen_err(path: &std::path::Path, genesis: &Genesis) -> ChainStoreError {
    match ChainStore::open(path, genesis) {
        Ok(_) => panic!("a tampered block was accepted"),
        Err(e) => {
            assert!(
                matches!(
                    e,
                    ChainStoreError::Tampered { height: 2, .. }
                        | ChainStoreError::Decode { height: 2, .. }
                ),
                "{e}"
            );
            e
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sender_may_have_many_transactions_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(1);
    let ledger = Arc::new(open_ledger(&dir.path().join("chain.redb"), &s, 0).await);
    let dept = &s.departments[0];
    // Submitted all at once, in reverse nonce order: each waits for the ones before it.
    let mut tasks = tokio::task::JoinSet::new();
    for nonce in (1..=50).rev() {
        let (ledger, tx) = (ledger.clone(), register(&s.genesis.key(), dept, nonce));
        tasks.spawn(async move { ledger.submit(tx).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(ledger.status().documents, 50);

    // A gap that never fills is refused once the wait runs out.
    let start = std::time::Instant::now();
    let err = ledger
        .submit(register(&s.genesis.key(), dept, 60))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Refused(TxError::BadNonce { .. })),
        "{err}"
    );
    assert!(start.elapsed() >= dangan::chain::ledger::NONCE_GAP_WAIT);
    assert_eq!(ledger.status().documents, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validator_peer_serves_transactions_proofs_blocks_and_status() {
    use dangan::chain::block::{Block, TxInclusion};
    use dangan::chain::ledger::ChainStatus;
    use dangan::proto::{ErrorCode, Request, Response};
    use dangan::tls::Membership;

    let dir = tempfile::tempdir().unwrap();
    let s = setup(1);
    let dept = s.departments[0].clone();
    let node = Identity::generate(Role::Node);
    let membership = Membership::new();
    membership.add(node.public());
    membership.add(dept.public());
    let ledger = Arc::new(open_ledger(&dir.path().join("chain.redb"), &s, 0).await);
    let peer = dangan::peer::start(
        &node,
        Arc::new(membership.clone()),
        "127.0.0.1:0".parse().unwrap(),
        &dir.path().join("store"),
        Default::default(),
        Some(ledger.clone()),
        &mut Default::default(),
    )
    .await
    .unwrap();
    let (raw, _) = Raw::connect(&dept, peer.addr(), Arc::new(membership)).await;

    let tx = register(&s.genesis.key(), &dept, 1);
    let bytes = tx.encode();
    let (resp, _) = raw
        .ask(
            &Request::SubmitTx {
                len: bytes.len() as u64,
            },
            Some(&bytes),
        )
        .await;
    assert_eq!(
        resp,
        // Block 1 sealed the genesis state.
        Response::Committed {
            height: 2,
            index: 0
        }
    );

    // The same transaction again is refused with the reason.
    let (resp, _) = raw
        .ask(
            &Request::SubmitTx {
                len: bytes.len() as u64,
            },
            Some(&bytes),
        )
        .await;
    match resp {
        Response::Error {
            code: ErrorCode::Refused,
            message,
        } => {
            assert!(message.contains("nonce"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let document = registered_document(&tx);
    let (resp, body) = raw.ask(&Request::GetDocument { id: document }, None).await;
    assert!(matches!(resp, Response::ChainBody { .. }));
    let (record, proof): (ProvenRecord, TxInclusion) = postcard::from_bytes(&body).unwrap();
    record.verify(&document, &[s.validator.public()]).unwrap();
    assert_eq!(record.record.unwrap().owner, dept.public());
    proof.verify(&[s.validator.public()]).unwrap();
    let (resp, _) = raw
        .ask(
            &Request::GetDocument {
                id: DocumentId::of(b"none"),
            },
            None,
        )
        .await;
    assert_eq!(resp, Response::NotFound);

    let (_, body) = raw.ask(&Request::GetBlock { height: 1 }, None).await;
    let seal: Block = postcard::from_bytes(&body).unwrap();
    assert!(seal.txs.is_empty(), "block 1 only seals the genesis state");
    let (_, body) = raw.ask(&Request::GetBlock { height: 2 }, None).await;
    let block: Block = postcard::from_bytes(&body).unwrap();
    assert_eq!(block.txs, vec![tx]);
    let (_, body) = raw.ask(&Request::ChainStatus, None).await;
    let status: ChainStatus = postcard::from_bytes(&body).unwrap();
    assert_eq!((status.height, status.documents), (2, 1));
    peer.shutdown().await;
}

/// Two real chains whose genesis files differ only in the chain id, the same department
/// and validator keys on both: a transaction committed on one is refused on the other (its
/// signature covers the chain key). And a storage peer's key removed and added back
/// continues from its last nonce, so its old transactions stay spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_replayed_on_another_chain_or_after_a_removal_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = setup(1);
    let operator = Identity::generate(Role::Operator);
    s.genesis
        .accounts
        .push(GenesisAccount::of(&operator, Role::Operator));
    let dept = &s.departments[0];
    let a = Ledger::open_single(&dir.path().join("a.redb"), &s.genesis, s.validator.clone())
        .await
        .unwrap();
    let mut other = s.genesis.clone();
    other.chain_id = "another".into();
    let b = Ledger::open_single(&dir.path().join("b.redb"), &other, s.validator.clone())
        .await
        .unwrap();
    assert_ne!(a.chain_key(), b.chain_key());
    assert_eq!(a.status().chain_key, s.genesis.key());
    b.sealed(Duration::from_secs(10)).await.unwrap();
    let sealed = b.status().height;
    let on_a = register(&a.chain_key(), dept, 1);
    a.submit(on_a.clone()).await.unwrap();
    let err = b.submit(on_a.clone()).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Refused(TxError::BadSignature(_))),
        "{err}"
    );
    assert_eq!(b.status().height, sealed, "the replay committed nothing");
    assert_eq!(b.account(&dept.public()).unwrap().nonce, 0);
    b.submit(register(&b.chain_key(), dept, 1)).await.unwrap();

    // A storage peer commits an audit root, is drained, removed and added back.
    let key = a.chain_key();
    let node = Identity::generate(Role::Node);
    let add = TxBody::AddNode {
        node: node.public(),
        addr: "127.0.0.1:7100".into(),
        zone: "z0".into(),
        weight: 100,
    };
    a.submit(tx(&key, &operator, 1, add.clone())).await.unwrap();
    let audit = tx(
        &key,
        &node,
        1,
        TxBody::AuditRoot {
            peer: node.public(),
            first: 0,
            count: 1,
            root: [5; 32],
        },
    );
    a.submit(audit.clone()).await.unwrap();
    for (n, body) in [
        TxBody::DrainNode {
            node: node.public(),
        },
        TxBody::RemoveNode {
            node: node.public(),
        },
    ]
    .into_iter()
    .enumerate()
    {
        a.submit(tx(&key, &operator, n as u64 + 2, body))
            .await
            .unwrap();
    }
    assert!(a.account(&node.public()).is_none());
    assert_eq!(a.state().retired_nonce(&node.public()), Some(1));
    a.submit(tx(&key, &operator, 4, add)).await.unwrap();
    assert_eq!(a.account(&node.public()).unwrap().nonce, 1);
    let err = a.submit(audit).await.unwrap_err();
    assert!(
        matches!(
            err,
            LedgerError::Refused(TxError::BadNonce {
                expected: 2,
                got: 1,
                ..
            })
        ),
        "{err}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A cluster file naming two validators with one raft node id (a key chosen to share a
/// sitting validator's first 8 bytes) is refused at start, naming both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_sharing_a_raft_node_id_are_refused_at_start() {
    use dangan::chain::ledger::ValidatorNet;
    use dangan::placement::NodeInfo;

    let dir = tempfile::tempdir().unwrap();
    let s = setup(1);
    let mut bytes = s.validator.public().to_bytes();
    let twin = (0u8..=255)
        .find_map(|b| {
            bytes[31] = b;
            PublicId::from_bytes(bytes)
                .ok()
                .filter(|k| *k != s.validator.public())
        })
        .unwrap();
    let host = |port: u16| NodeInfo {
        key: Identity::generate(Role::Node).public(),
        zone: "validators".into(),
        weight: 0,
        addr: format!("127.0.0.1:{port}"),
    };
    let net = ValidatorNet {
        host_identity: Identity::generate(Role::Node),
        trust: Arc::new(dangan::tls::Membership::new()),
        hosts: vec![(s.validator.public(), host(1)), (twin, host(2))],
    };
    let err = Ledger::open(
        &dir.path().join("chain.redb"),
        &s.genesis,
        s.validator.clone(),
        Some(net),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(err, LedgerError::NodeIdCollision(a, b) if a == s.validator.public() && b == twin),
        "{err}"
    );
}

/// Two clients of one department (a gateway and a clerk's `dangan put`, say) each keep
/// their own idea of the account's next nonce: each in turn finds its nonce taken by the
/// other, learns the chain's and signs again, and every transaction lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_of_one_department_take_turns_without_refusals() {
    let cluster = dangan::cluster::LocalCluster::start(3, 1).await.unwrap();
    let (a, b) = (
        crate::common::department(&cluster),
        crate::common::department(&cluster),
    );
    for round in 0..3 {
        for (who, client) in [("a", &a), ("b", &b)] {
            let bucket = format!("turns-{who}-{round}");
            client
                .chain()
                .unwrap()
                .submit(TxBody::CreateBucket {
                    bucket: bucket.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("{bucket}: {e}"));
        }
    }
    let buckets = a.chain().unwrap().buckets().await.unwrap();
    assert_eq!(buckets.len(), 6, "{buckets:?}");
    a.close().await;
    b.close().await;
    cluster.shutdown().await;
}
