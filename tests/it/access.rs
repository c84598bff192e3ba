//! Enforcement on peers: a peer serves a document's manifest and shards only to its owning
//! department, a live grantee or an operator, as the chain says now; anyone
//! else is refused and gets no bytes. Real peers, real QUIC, real redb; readers that are in
//! no one's membership.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common;
use crate::common::wire::Raw;
use dangan::access::ACCESS_TTL;
use dangan::chain::client::ChainError;
use dangan::client::{ClientError, PutReceipt, stripe_key};
use dangan::cluster::LocalCluster;
use dangan::id::{DocumentId, ShardId};
use dangan::identity::{Identity, Role};
use dangan::placement::NodeInfo;
use dangan::proto::{ErrorCode, Request, Response};
use dangan::tls::AllowAny;

/// One connection to `node`, as `identity` (in no one's membership), speaking the wire
/// protocol directly (so the per-connection `OpenDocument` state is under the test's
/// control).
async fn connect(identity: &Identity, node: &NodeInfo) -> Raw {
    let (raw, who) = Raw::connect(identity, node.addr.parse().unwrap(), Arc::new(AllowAny)).await;
    assert_eq!(who, node.key, "the peer is who the layout says");
    raw
}

fn refused(resp: &Response) -> bool {
    matches!(
        resp,
        Response::Error {
            code: ErrorCode::Refused,
            ..
        }
    )
}

fn unavailable(resp: &Response) -> bool {
    matches!(
        resp,
        Response::Error {
            code: ErrorCode::Unavailable,
            ..
        }
    )
}

/// The peer holding slot 0 of stripe 0 of `put`, and that shard's id.
fn first_shard(cluster: &LocalCluster, put: &PutReceipt) -> (NodeInfo, ShardId) {
    let ids = &put.manifest.stripes[0];
    let node = cluster.layout().place(&stripe_key(ids), ids.len()).unwrap()[0].clone();
    (node, ids[0])
}

/// The shard of `put`'s stripe 0 that sits on `node`.
fn shard_on(cluster: &LocalCluster, put: &PutReceipt, node: &NodeInfo) -> ShardId {
    let ids = &put.manifest.stripes[0];
    let placed = cluster.layout().place(&stripe_key(ids), ids.len()).unwrap();
    let slot = placed.iter().position(|n| n.key == node.key).unwrap();
    ids[slot]
}

fn is_refusal(e: &ClientError) -> bool {
    matches!(e, ClientError::Chain(ChainError::Refused(_))) || e.to_string().contains("Refused")
}

fn is_chain_refusal(e: &ChainError) -> bool {
    matches!(e, ChainError::Refused(_))
}

fn open(document: DocumentId, manifest: &[u8]) -> Request {
    Request::OpenDocument {
        document,
        len: manifest.len() as u64,
    }
}

async fn wait_for_the_peers_to_see_the_chain() {
    tokio::time::sleep(ACCESS_TTL + Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_owner_grantees_and_operators_are_served() {
    let (cluster, dept) = common::start_cluster(6, 3).await;
    let alice = Identity::generate(Role::Citizen);
    let bob = Identity::generate(Role::Citizen);
    let carol = Identity::generate(Role::Citizen);
    for who in [&alice, &bob, &carol] {
        assert!(!cluster.membership().contains(&who.public()));
    }
    let doc_a = common::put(&dept, &common::data(300 << 10, 1))
        .await
        .unwrap();
    let doc_b = common::put(&dept, &common::data(300 << 10, 2))
        .await
        .unwrap();
    common::grant(&dept, &doc_a, &alice, None).await;
    common::grant(&dept, &doc_b, &bob, None).await;

    // The owner and a live grantee read.
    let got = common::read(&dept, &doc_a.id, &doc_a.key).await;
    assert_eq!(got, common::data(300 << 10, 1));
    let as_alice = common::client_as(&cluster, &alice);
    let before = common::shards_served(&cluster);
    let key = as_alice.granted_key(&doc_a.id).await.unwrap();
    let got = common::read(&as_alice, &doc_a.id, &key).await;
    assert_eq!(got, common::data(300 << 10, 1));
    assert!(
        common::shards_served(&cluster) > before,
        "the grantee was served shards"
    );

    // Everyone else, even holding the data key: no manifest, no shard.
    let before = common::shards_served(&cluster);
    let as_carol = common::client_as(&cluster, &carol);
    let err = common::get(&as_carol, &doc_a.id, &doc_a.key)
        .await
        .unwrap_err();
    assert!(is_refusal(&err), "no grant: {err}");
    let err = common::get(&as_alice, &doc_b.id, &doc_b.key)
        .await
        .unwrap_err();
    assert!(is_refusal(&err), "another citizen's document: {err}");
    let other = cluster.other_department();
    let as_other = common::client_as(&cluster, other);
    let err = common::get(&as_other, &doc_a.id, &doc_a.key)
        .await
        .unwrap_err();
    assert!(is_refusal(&err), "a department that does not own it: {err}");
    assert_eq!(
        common::shards_served(&cluster),
        before,
        "not one shard was served to them"
    );

    // A grant counts as soon as it is committed, even where the peers have just cached the
    // document's record without it (a refusal is always checked again on the chain).
    let got = common::read(&dept, &doc_b.id, &doc_b.key).await;
    assert_eq!(got, common::data(300 << 10, 2));
    common::grant(&dept, &doc_b, &carol, None).await;
    let carol_key = as_carol.granted_key(&doc_b.id).await.unwrap();
    let got = common::read(&as_carol, &doc_b.id, &carol_key).await;
    assert_eq!(got, common::data(300 << 10, 2));

    // Raw requests on one connection: a known shard id alone opens nothing, opening another
    // document does not open this one, and a manifest must hash to the id it is sent as.
    let (node, shard_b) = first_shard(&cluster, &doc_b);
    let shard_a = shard_on(&cluster, &doc_a, &node);
    let peer = cluster.index_of(&node.key).unwrap();
    let peer_served = || {
        cluster
            .peer(peer)
            .unwrap()
            .stats()
            .shards_served
            .load(Ordering::Relaxed)
    };
    let manifest_a = doc_a.manifest.encode();
    let manifest_b = doc_b.manifest.encode();
    let raw = connect(&alice, &node).await;
    let start = peer_served();
    let (resp, body) = raw.ask(&Request::GetShard { id: shard_b }, None).await;
    assert!(refused(&resp) && body.is_empty(), "{resp:?}");
    let (resp, _) = raw
        .ask(&open(doc_b.id, &manifest_b), Some(&manifest_b))
        .await;
    assert!(refused(&resp), "{resp:?}");
    let (resp, _) = raw.ask(&Request::GetManifest { id: doc_b.id }, None).await;
    assert!(refused(&resp), "{resp:?}");
    let (resp, _) = raw
        .ask(&open(doc_a.id, &manifest_b), Some(&manifest_b))
        .await;
    assert!(
        matches!(
            resp,
            Response::Error {
                code: ErrorCode::HashMismatch,
                ..
            }
        ),
        "{resp:?}"
    );
    let (resp, _) = raw.ask(&Request::GetShard { id: shard_a }, None).await;
    assert!(refused(&resp), "not opened yet: {resp:?}");
    let (resp, _) = raw
        .ask(&open(doc_a.id, &manifest_a), Some(&manifest_a))
        .await;
    assert!(
        matches!(resp, Response::Opened { shards } if shards >= 6),
        "{resp:?}"
    );
    let (resp, body) = raw.ask(&Request::GetShard { id: shard_a }, None).await;
    assert!(matches!(resp, Response::Shard { .. }), "{resp:?}");
    assert!(shard_a.verifies(&body));
    let (resp, body) = raw.ask(&Request::GetShard { id: shard_b }, None).await;
    assert!(refused(&resp) && body.is_empty(), "{resp:?}");
    assert_eq!(peer_served(), start + 1, "exactly the one granted shard");

    // A citizen can write, delete, list and inspect nothing.
    let shards_before = cluster.peer(peer).unwrap().store().usage().unwrap().shards;
    let junk = b"a citizen's shard";
    let put = Request::PutShard {
        id: ShardId::of(junk),
        len: junk.len() as u64,
        document: None,
    };
    for (req, body) in [
        (put, Some(&junk[..])),
        (
            Request::DeleteShard {
                id: shard_a,
                document: doc_a.id,
            },
            None,
        ),
        (
            Request::PutManifest {
                id: DocumentId::of(junk),
                len: junk.len() as u64,
            },
            Some(&junk[..]),
        ),
        (Request::DeleteManifest { id: doc_a.id }, None),
        (
            Request::ListShards {
                after: None,
                limit: 10,
            },
            None,
        ),
        (Request::Usage, None),
        (
            Request::Scrub {
                after: None,
                limit: 10,
            },
            None,
        ),
    ] {
        let (resp, _) = raw.ask(&req, body).await;
        assert!(refused(&resp), "{req:?} → {resp:?}");
    }
    let store = cluster.peer(peer).unwrap().store();
    assert_eq!(store.usage().unwrap().shards, shards_before);
    assert!(store.has(&shard_a).unwrap());

    // The operator (repair, rebalance, scrub) reads any shard without opening anything.
    let operator = common::operator(&cluster, cluster.layout(), None);
    let got = operator.net().shard_get(&node, &shard_b).await.unwrap();
    assert_eq!(got.map(|b| ShardId::of(&b)), Some(shard_b));

    // Revocation reaches an open connection within the bound.
    dept.revoke(doc_a.id, alice.public()).await.unwrap();
    wait_for_the_peers_to_see_the_chain().await;
    let (resp, body) = raw.ask(&Request::GetShard { id: shard_a }, None).await;
    assert!(refused(&resp) && body.is_empty(), "revoked: {resp:?}");
    let err = common::get(&as_alice, &doc_a.id, &key).await.unwrap_err();
    assert!(is_refusal(&err), "revoked: {err}");

    // An expired grant counts for nothing.
    common::grant(&dept, &doc_a, &alice, Some(1)).await;
    wait_for_the_peers_to_see_the_chain().await;
    let (resp, _) = raw
        .ask(&open(doc_a.id, &manifest_a), Some(&manifest_a))
        .await;
    assert!(refused(&resp), "expired: {resp:?}");
    let (resp, _) = raw.ask(&Request::GetShard { id: shard_a }, None).await;
    assert!(refused(&resp), "expired: {resp:?}");
    assert_eq!(
        peer_served(),
        start + 2,
        "alice's one shard and the operator's"
    );

    raw.close().await;
    for c in [dept, as_alice, as_carol, as_other, operator] {
        c.close().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_serve_nothing_when_the_chain_is_unreachable() {
    let (mut cluster, dept) = common::start_cluster(6, 3).await;
    let put = common::put(&dept, &common::data(50 << 10, 3))
        .await
        .unwrap();
    dept.close().await;
    let (node, shard) = first_shard(&cluster, &put);
    // With the validator gone, a peer can check nothing once its answers are older than
    // the bound, so it serves nothing, not even to the owner or an operator (fail closed):
    // `Unavailable` (ask again later), not `Refused` (the chain did not say no).
    cluster.stop_validator().await;
    wait_for_the_peers_to_see_the_chain().await;
    let before = common::shards_served(&cluster);
    for who in [cluster.department().clone(), cluster.operator().clone()] {
        let raw = connect(&who, &node).await;
        let (resp, body) = raw.ask(&Request::GetShard { id: shard }, None).await;
        assert!(unavailable(&resp) && body.is_empty(), "{resp:?}");
        let Response::Error { message, .. } = resp else {
            unreachable!()
        };
        assert!(message.contains("unreachable"), "a clear reason: {message}");
        let (resp, body) = raw.ask(&Request::GetManifest { id: put.id }, None).await;
        assert!(unavailable(&resp) && body.is_empty(), "{resp:?}");
        raw.close().await;
    }
    assert_eq!(common::shards_served(&cluster), before);
    cluster.shutdown().await;
}

/// The validator answers a document's record (grantees, wrapped keys) by the caller's
/// identity: whole to its owner and to operators and nodes, with their own grant alone to a
/// live grantee, to nobody else; blocks and transactions only to the consortium's members,
/// the list of documents only to operators and validators. A grantee's own `get` and
/// receipt work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_records_are_answered_by_who_asks() {
    let (cluster, dept) = common::start_cluster(6, 3).await;
    let (alice, bob, carol) = (
        Identity::generate(Role::Citizen),
        Identity::generate(Role::Citizen),
        Identity::generate(Role::Citizen),
    );
    let bytes = common::data(20 << 10, 5);
    let doc = common::put(&dept, &bytes).await.unwrap();
    for who in [&alice, &bob] {
        common::grant(&dept, &doc, who, None).await;
    }
    let as_alice = common::client_as(&cluster, &alice);
    let as_carol = common::client_as(&cluster, &carol);
    let as_other = common::client_as(&cluster, cluster.other_department());
    let operator = common::operator(&cluster, cluster.layout(), None);
    let chain = dept.chain().unwrap().link().clone();

    // Owner and operator: the whole record, both grantees.
    for c in [&dept, &operator] {
        let record = c.chain().unwrap().record(&doc.id).await.unwrap().unwrap();
        assert_eq!(record.grants.len(), 2);
        assert_eq!(
            c.chain().unwrap().check_registered(&doc.id).await.unwrap(),
            record
        );
    }
    // A grantee: the record with its own grant alone; its get and receipt work.
    let record = as_alice
        .chain()
        .unwrap()
        .record(&doc.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.grants.keys().copied().collect::<Vec<_>>(),
        vec![alice.public()]
    );
    let proved = as_alice
        .chain()
        .unwrap()
        .check_registered(&doc.id)
        .await
        .unwrap();
    assert_eq!(proved.grants.len(), 1, "bob's grant is not shown to alice");
    let key = as_alice.granted_key(&doc.id).await.unwrap();
    assert_eq!(common::read(&as_alice, &doc.id, &key).await, bytes);
    let receipt = as_alice.receipt(&doc.id).await.unwrap().encode();
    dangan::receipt::Receipt::decode(&receipt)
        .unwrap()
        .verify(&chain.validators)
        .unwrap();

    // No grant: no record, no proof, no key; another department neither.
    for c in [&as_carol, &as_other] {
        assert!(is_chain_refusal(
            &c.chain().unwrap().record(&doc.id).await.unwrap_err()
        ));
        assert!(is_chain_refusal(
            &c.chain()
                .unwrap()
                .check_registered(&doc.id)
                .await
                .unwrap_err()
        ));
        assert!(c.granted_key(&doc.id).await.is_err());
    }
    // Blocks and transactions: members of the consortium only; the document list:
    // operators, validators and departments (who read every block anyway: a gateway lists
    // its department's documents with it), never a citizen.
    let err = as_carol.chain().unwrap().block(1).await.unwrap_err();
    assert!(is_chain_refusal(&err), "{err}");
    assert!(is_chain_refusal(
        &as_carol.chain().unwrap().tx([0; 32]).await.unwrap_err()
    ));
    assert!(as_other.chain().unwrap().block(1).await.unwrap().is_some());
    let err = as_alice
        .chain()
        .unwrap()
        .documents(None, 10)
        .await
        .unwrap_err();
    assert!(is_chain_refusal(&err), "{err}");
    for c in [&as_other, &dept] {
        assert_eq!(
            c.chain().unwrap().documents(None, 10).await.unwrap(),
            vec![doc.id]
        );
    }
    assert_eq!(
        operator.chain().unwrap().documents(None, 10).await.unwrap(),
        vec![doc.id]
    );

    // Revoked: nothing any more.
    dept.revoke(doc.id, alice.public()).await.unwrap();
    assert!(is_chain_refusal(
        &as_alice.chain().unwrap().record(&doc.id).await.unwrap_err()
    ));
    for c in [as_alice, as_carol, as_other, operator, dept] {
        c.close().await;
    }
    cluster.shutdown().await;
}
