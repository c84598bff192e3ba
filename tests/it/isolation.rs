//! Tenant isolation and least privilege on peers. A shard reference belongs to a document
//! (`store`), so a department that knows another department's shard ids (it was once a
//! grantee) and registers, supersedes and opens a crafted manifest naming them lowers none
//! of their references however often it deletes; two documents that share shards each keep
//! their own; a stolen peer (`Node`) key reads no unopened shard and deletes nothing on
//! another peer, while operators still can. Real peers, real QUIC, real redb, real chain.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::common;
use crate::common::wire::Raw;
use dangan::chain::tx::{TxBody, VersionKind};
use dangan::client::{Client, PutReceipt, stripe_key};
use dangan::cluster::LocalCluster;
use dangan::id::{DocumentId, ShardId};
use dangan::identity::{Identity, PublicId};
use dangan::manifest::Manifest;
use dangan::ops::{self, Journal, OpsOptions};
use dangan::placement::NodeInfo;
use dangan::proto::{DeleteOutcome, ErrorCode, PutOutcome, Request, Response};
use dangan::revision;
use dangan::store::Holder;
use dangan::tls::AllowAny;

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

/// Every stripe of document `id` has its k + m shards on the peers the layout places them
/// on, each held there by `id`'s own reference and reading back intact.
fn assert_whole(cluster: &LocalCluster, id: &DocumentId, manifest: &Manifest) {
    let width = manifest.params.width();
    for (index, ids) in manifest.stripes.iter().enumerate() {
        let placed = cluster.layout().place(&stripe_key(ids), ids.len()).unwrap();
        let mut held = 0;
        for (node, shard) in placed.iter().zip(ids) {
            let store = cluster
                .peer(cluster.index_of(&node.key).unwrap())
                .unwrap()
                .store();
            if store.has_ref(shard, id).unwrap() && store.get(shard).unwrap().is_some() {
                held += 1;
            }
        }
        assert_eq!(
            held, width,
            "document {id} stripe {index}: {held} of its k + m = {width} shards are held"
        );
    }
}

/// Every reference and every manifest on every running peer.
type Snapshot = BTreeMap<(PublicId, ShardId), Vec<(Holder, u64)>>;

fn snapshot(cluster: &LocalCluster) -> (Snapshot, Vec<(PublicId, [u8; 32])>) {
    let mut refs = BTreeMap::new();
    let mut manifests = Vec::new();
    for i in 0..cluster.len() {
        let peer = cluster.peer(i).unwrap();
        let store = peer.store();
        for shard in store.list().unwrap() {
            refs.insert((peer.id(), shard), store.holders(&shard).unwrap());
        }
        for key in store.list_blobs_from(None, usize::MAX).unwrap() {
            manifests.push((peer.id(), key));
        }
    }
    (refs, manifests)
}

/// Registers `manifest` as `owner`'s document (stored on its replicas first); its id.
async fn register(owner: &Client, manifest: &Manifest) -> DocumentId {
    let bytes = Bytes::from(manifest.encode());
    let id = DocumentId::of(&bytes);
    for node in owner.manifest_nodes(&id).unwrap() {
        owner.net().manifest_put(&node, &id, &bytes).await.unwrap();
    }
    owner
        .chain()
        .unwrap()
        .submit(TxBody::RegisterDocument { document: id })
        .await
        .unwrap();
    id
}

/// `owner` supersedes its document `old` by a new id, so the owner may collect `old`.
async fn supersede(owner: &Client, old: &DocumentId) {
    let new = DocumentId::of(&[&old.0[..], b"next version"].concat());
    owner
        .chain()
        .unwrap()
        .submit(TxBody::Supersede {
            old: *old,
            new,
            kind: VersionKind::Reissue,
            grants: Vec::new(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_manifest_naming_another_departments_shards_never_lowers_their_references() {
    let (cluster, dept) = common::start_cluster(6, 3).await;
    // The victim's documents: one of three stripes (its shards bound to it after the put)
    // and a one-stripe certificate (its `PutMany` names it).
    let big_bytes = common::data(700 << 10, 1);
    let big = common::put(&dept, &big_bytes).await.unwrap();
    let cert_bytes = common::data(3000, 2);
    let cert = common::put(&dept, &cert_bytes).await.unwrap();
    assert!(big.manifest.stripes.len() >= 3 && cert.manifest.stripes.len() == 1);
    for doc in [&big, &cert] {
        assert_whole(&cluster, &doc.id, &doc.manifest);
    }
    let before = snapshot(&cluster);

    // The attacker, another department, was once a grantee: it read both manifests (so it
    // knows every shard id) and one shard's bytes; then its grants were revoked.
    let attacker_key = cluster.other_department().clone();
    let attacker = common::client_as(&cluster, &attacker_key);
    for doc in [&big, &cert] {
        common::grant(&dept, doc, &attacker_key, None).await;
        assert_eq!(attacker.manifest(&doc.id).await.unwrap(), doc.manifest);
    }
    let stolen = big.manifest.stripes[0][0];
    let stolen_on = cluster
        .layout()
        .place(&stripe_key(&big.manifest.stripes[0]), 6)
        .unwrap()[0]
        .clone();
    attacker
        .open_on(&stolen_on, big.id, Bytes::from(big.manifest.encode()))
        .await
        .unwrap();
    let stolen_bytes = attacker
        .net()
        .shard_get(&stolen_on, &stolen)
        .await
        .unwrap()
        .unwrap();
    for doc in [&big, &cert] {
        dept.revoke(doc.id, attacker_key.public()).await.unwrap();
    }

    for victim in [&big, &cert] {
        // A crafted manifest naming the victim's shards, stored, registered as the
        // attacker's, and superseded: the attacker may now collect it.
        let mut crafted = victim.manifest.clone();
        crafted.document_type = "crafted".into();
        let crafted_bytes = crafted.encode();
        let fake = register(&attacker, &crafted).await;
        supersede(&attacker, &fake).await;

        // On every peer: open it, then delete each of its shards again and again naming the
        // crafted document (allowed: it is the attacker's own, superseded), and naming the
        // victim's (refused).
        for node in &cluster.layout().nodes {
            let raw = connect(&attacker_key, node).await;
            let open = Request::OpenDocument {
                document: fake,
                len: crafted_bytes.len() as u64,
            };
            let (resp, _) = raw.ask(&open, Some(&crafted_bytes)).await;
            assert!(matches!(resp, Response::Opened { .. }), "{resp:?}");
            for shard in crafted.stripes.iter().flatten() {
                for _ in 0..3 {
                    let delete = Request::DeleteShard {
                        id: *shard,
                        document: fake,
                    };
                    let (resp, _) = raw.ask(&delete, None).await;
                    assert_eq!(
                        resp,
                        Response::Deleted(DeleteOutcome::NotFound),
                        "the crafted document holds no reference: nothing is dropped"
                    );
                }
                let delete = Request::DeleteShard {
                    id: *shard,
                    document: victim.id,
                };
                let (resp, _) = raw.ask(&delete, None).await;
                assert!(refused(&resp), "naming the victim's document: {resp:?}");
            }
            let (resp, _) = raw
                .ask(&Request::DeleteManifest { id: victim.id }, None)
                .await;
            assert!(refused(&resp), "{resp:?}");
            raw.close().await;
        }

        // Even a reference of its own to a victim's shard (it stores the bytes it read,
        // naming its crafted document) lets it drop that one reference, once.
        if victim.id == big.id {
            let raw = connect(&attacker_key, &stolen_on).await;
            let put = Request::PutShard {
                id: stolen,
                len: stolen_bytes.len() as u64,
                document: Some(fake),
            };
            let (resp, _) = raw.ask(&put, Some(&stolen_bytes)).await;
            assert_eq!(resp, Response::Stored(PutOutcome::AlreadyPresent));
            let delete = Request::DeleteShard {
                id: stolen,
                document: fake,
            };
            let (resp, _) = raw.ask(&delete, None).await;
            assert_eq!(resp, Response::Deleted(DeleteOutcome::Decremented));
            for _ in 0..3 {
                let (resp, _) = raw.ask(&delete, None).await;
                assert_eq!(resp, Response::Deleted(DeleteOutcome::NotFound));
            }
            raw.close().await;
        }
    }

    // Nothing of the victim's changed: the same references and manifests on every peer,
    // every stripe whole, and both documents read back identical.
    let (refs_after, manifests_after) = snapshot(&cluster);
    assert_eq!(refs_after, before.0, "no reference of the victim's changed");
    for m in &before.1 {
        assert!(manifests_after.contains(m), "a manifest went: {m:?}");
    }
    for (doc, bytes) in [(&big, &big_bytes), (&cert, &cert_bytes)] {
        assert_whole(&cluster, &doc.id, &doc.manifest);
        assert!(common::read(&dept, &doc.id, &doc.key).await == *bytes);
    }
    cluster.shutdown().await;
}

/// A second document with the very same shards (the same ciphertext under another label),
/// its references stored by the department naming it, and registered.
async fn copy_of(cluster: &LocalCluster, dept: &Client, original: &PutReceipt) -> DocumentId {
    let mut copy = original.manifest.clone();
    copy.document_type = "copy".into();
    let id = copy.id();
    let original_bytes = Bytes::from(original.manifest.encode());
    for ids in &copy.stripes {
        let placed = cluster.layout().place(&stripe_key(ids), ids.len()).unwrap();
        for (node, shard) in placed.iter().zip(ids) {
            dept.open_on(node, original.id, original_bytes.clone())
                .await
                .unwrap();
            let bytes = dept.net().shard_get(node, shard).await.unwrap().unwrap();
            let outcome = dept
                .net()
                .shard_put(node, shard, &bytes, &id)
                .await
                .unwrap();
            assert_eq!(outcome, PutOutcome::AlreadyPresent, "the bytes are shared");
        }
    }
    assert_eq!(register(dept, &copy).await, id);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_shared_by_two_documents_survive_collecting_one() {
    let (cluster, dept) = common::start_cluster(6, 3).await;
    let bytes = common::data(700 << 10, 3);
    let original = common::put(&dept, &bytes).await.unwrap();
    let copy = copy_of(&cluster, &dept, &original).await;
    let mut copy_manifest = original.manifest.clone();
    copy_manifest.document_type = "copy".into();
    assert_whole(&cluster, &original.id, &original.manifest);
    assert_whole(&cluster, &copy, &copy_manifest);
    let shard = original.manifest.stripes[0][0];
    let node = &cluster
        .layout()
        .place(&stripe_key(&original.manifest.stripes[0]), 6)
        .unwrap()[0];
    let store = cluster
        .peer(cluster.index_of(&node.key).unwrap())
        .unwrap()
        .store();
    assert_eq!(
        store.refcount(&shard).unwrap(),
        Some(2),
        "one reference each"
    );

    // The original is superseded and collected (as after a rekey), twice over: a rerun
    // without its journal drops nothing more.
    supersede(&dept, &original.id).await;
    let dir = tempfile::tempdir().unwrap();
    for (run, table) in [(0, "first"), (1, "second")] {
        let journal = Journal::open_table(dir.path(), "collect.redb", table.into()).unwrap();
        let report = revision::collect(&dept, &original.id, &original.manifest, &journal)
            .await
            .unwrap();
        assert!(report.complete(), "{report:?}");
        let slots = original.manifest.stripes.len() as u64 * 6;
        if run == 0 {
            assert_eq!(report.shards_deleted, slots, "{report:?}");
        } else {
            assert_eq!(report.shards_absent, slots, "{report:?}");
        }
        assert_whole(&cluster, &copy, &copy_manifest);
    }
    assert_eq!(
        store.holders(&shard).unwrap(),
        vec![(Holder::Document(copy), 1)]
    );
    // The copy reads back with the original's key (the same ciphertext).
    assert!(common::read(&dept, &copy, &original.key).await == bytes);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_peer_key_reads_no_unopened_shard_and_deletes_nothing_elsewhere() {
    let (cluster, dept) = common::start_cluster(6, 3).await;
    let bytes = common::data(300 << 10, 4);
    let doc = common::put(&dept, &bytes).await.unwrap();
    let stolen = cluster.peer_identity(0).unwrap().clone();
    // A peer other than the key's own, holding a shard of the document and its manifest.
    let replicas = dept.manifest_nodes(&doc.id).unwrap();
    let ids = &doc.manifest.stripes[0];
    let placed = cluster.layout().place(&stripe_key(ids), ids.len()).unwrap();
    let (node, shard) = placed
        .iter()
        .zip(ids)
        .find(|(n, _)| n.key != stolen.public() && replicas.iter().any(|r| r.key == n.key))
        .map(|(n, s)| ((*n).clone(), *s))
        .expect("a replica that holds a shard");
    let store = cluster
        .peer(cluster.index_of(&node.key).unwrap())
        .unwrap()
        .store()
        .clone();

    let raw = connect(&stolen, &node).await;
    let junk = b"a peer key's shard";
    let requests = [
        (Request::GetShard { id: shard }, None),
        (Request::GetManifest { id: doc.id }, None),
        (
            Request::DeleteShard {
                id: shard,
                document: doc.id,
            },
            None,
        ),
        (Request::DeleteManifest { id: doc.id }, None),
        (
            Request::PutShard {
                id: ShardId::of(junk),
                len: junk.len() as u64,
                document: Some(doc.id),
            },
            Some(&junk[..]),
        ),
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
    ];
    for (req, body) in &requests {
        let (resp, got) = raw.ask(req, *body).await;
        assert!(
            refused(&resp) && got.is_empty(),
            "a node key: {req:?} → {resp:?}"
        );
    }
    raw.close().await;
    assert!(store.has_ref(&shard, &doc.id).unwrap());
    assert!(store.get_blob(&doc.id.0).unwrap().is_some());
    assert!(!store.has(&ShardId::of(junk)).unwrap());

    // Operators still read any shard and delete; repair puts the reference back.
    let operator = common::operator(&cluster, cluster.layout(), None);
    let got = operator.net().shard_get(&node, &shard).await.unwrap();
    assert_eq!(got.map(|b| ShardId::of(&b)), Some(shard));
    let deleted = operator
        .net()
        .shard_delete(&node, &shard, &doc.id)
        .await
        .unwrap();
    assert_eq!(deleted, DeleteOutcome::Removed);
    assert!(!store.has(&shard).unwrap());
    let report = ops::converge(&operator, None, &OpsOptions::default(), &|_| {})
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.shards_rebuilt, 1);
    assert_whole(&cluster, &doc.id, &doc.manifest);
    assert!(common::read(&dept, &doc.id, &doc.key).await == bytes);
    cluster.shutdown().await;
}
