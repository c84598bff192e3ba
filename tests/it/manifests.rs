//! Manifests survive m losses: a put returns only with m + 1 durable copies on distinct
//! peers whatever its write quorum, and repair and rebalance keep a good copy on every
//! placed replica. Real peers on 127.0.0.1, real QUIC with mutual TLS, real redb.

use std::collections::BTreeSet;

use crate::common;
use dangan::chain::tx::TxBody;
use dangan::client::{ClientError, ClientOptions, MANIFEST_REPLICAS};
use dangan::cluster::LocalCluster;
use dangan::id::DocumentId;
use dangan::identity::PublicId;
use dangan::manifest::CodingParams;
use dangan::ops::{self, Journal, OpsOptions};
use dangan::placement::Layout;

/// Options with the lowest write quorum `params` allow (k of k + m).
fn low_quorum(params: CodingParams) -> ClientOptions {
    ClientOptions {
        params,
        write_quorum: Some(usize::from(params.k)),
        ..common::options()
    }
}

fn params(k: u16, m: u16) -> CodingParams {
    CodingParams {
        k,
        m,
        ..common::small_params()
    }
}

/// The running peers holding a copy of `id`'s manifest that hashes to it.
fn good_copies(cluster: &LocalCluster, id: &DocumentId) -> BTreeSet<PublicId> {
    (0..cluster.len())
        .filter_map(|i| cluster.peer(i))
        .filter(|p| matches!(p.store().get_blob(id.as_bytes()), Ok(Some(_))))
        .map(|p| p.id())
        .collect()
}

/// The running peers holding any copy of `id`'s manifest, good or not.
fn any_copies(cluster: &LocalCluster, id: &DocumentId) -> BTreeSet<PublicId> {
    (0..cluster.len())
        .filter_map(|i| cluster.peer(i))
        .filter(|p| p.store().has_blob(id.as_bytes()).unwrap())
        .map(|p| p.id())
        .collect()
}

/// The peers `layout` places `id`'s manifest on, with the tests' m = 2: max(3, m + 1) of
/// its live peers.
fn placed(layout: &Layout, id: &DocumentId) -> BTreeSet<PublicId> {
    let m = usize::from(common::small_params().m);
    let live = layout.nodes.iter().filter(|n| n.weight > 0).count();
    let replicas = (m + 1).max(MANIFEST_REPLICAS).min(live);
    layout
        .place(id.as_bytes(), replicas)
        .unwrap()
        .into_iter()
        .map(|n| n.key)
        .collect()
}

fn quiet() -> &'static (dyn Fn(ops::Progress) + Send + Sync) {
    &|_| {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_low_quorum_put_leaves_m_plus_one_manifest_copies_and_losing_m_of_them_loses_nothing() {
    let (mut cluster, _) = common::start_cluster(7, 3).await;
    // m + 1 = 4 is more than the three copies a manifest gets by default.
    let params = params(3, 3);
    // One stripe (one `PutMany` per peer) and three stripes (shards, then the manifest).
    for (len, seed) in [(20_000, 1), (700_000, 2)] {
        // A new client each time: one that knew the restarted peers would find its old
        // connections to them dead, and a low quorum would let its put lose those shards.
        let client = cluster.client(low_quorum(params)).unwrap();
        let bytes = common::data(len, seed);
        let put = common::put(&client, &bytes).await.unwrap();
        client.close().await;
        let holders = good_copies(&cluster, &put.id);
        assert!(
            holders.len() > usize::from(params.m),
            "{len} bytes: {} manifest copies for m = {}",
            holders.len(),
            params.m
        );
        // Right after the put, the m peers holding copies are lost: the document reads.
        let lost: Vec<usize> = holders
            .iter()
            .take(usize::from(params.m))
            .map(|p| cluster.index_of(p).unwrap())
            .collect();
        for &i in &lost {
            cluster.stop_peer(i).await.unwrap();
        }
        let reader = cluster.client(low_quorum(params)).unwrap();
        assert!(common::read(&reader, &put.id, &put.key).await == bytes);
        reader.close().await;
        for &i in &lost {
            cluster.restart_peer(i).await.unwrap();
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_put_that_cannot_write_m_plus_one_manifest_copies_fails_and_registers_nothing() {
    // k = 2, m = 2 on four peers, two of them down: each stripe still meets the quorum of
    // two, but only two peers can take the manifest and m + 1 = 3 copies are needed.
    let (mut cluster, _) = common::start_cluster(4, 1).await;
    cluster.stop_peer(2).await.unwrap();
    cluster.stop_peer(3).await.unwrap();
    let client = cluster.client(low_quorum(params(2, 2))).unwrap();
    for (len, seed) in [(20_000, 3), (700_000, 4)] {
        let err = common::put(&client, &common::data(len, seed))
            .await
            .unwrap_err();
        let ClientError::ManifestNotStored {
            id, stored, needed, ..
        } = err
        else {
            panic!("{len} bytes: expected ManifestNotStored, got {err}");
        };
        assert_eq!(needed, 3);
        assert!(stored < 3, "{stored}");
        assert!(
            client.chain().unwrap().record(&id).await.unwrap().is_none(),
            "{id} was registered"
        );
    }
    client.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_rewrites_missing_and_corrupt_manifest_copies_on_every_placed_replica() {
    let (cluster, client) = common::start_cluster(7, 3).await;
    let mut docs = Vec::new();
    for (len, seed) in [(20_000, 5), (700_000, 6), (300_000, 7)] {
        let bytes = common::data(len, seed);
        docs.push((common::put(&client, &bytes).await.unwrap(), bytes));
    }
    let layout = cluster.layout().clone();
    let store_of = |peer: &PublicId| cluster.peer(cluster.index_of(peer).unwrap()).unwrap();
    // Document 0 loses a copy, document 1 has one corrupt, document 2 both: m = 2 of its
    // three copies are gone, one good copy is left.
    let mut damaged = 0;
    for (d, (put, _)) in docs.iter().enumerate() {
        let replicas: Vec<PublicId> = placed(&layout, &put.id).into_iter().collect();
        assert_eq!(replicas.len(), 3);
        let key = put.id.as_bytes();
        if d != 1 {
            assert!(store_of(&replicas[0]).store().delete_blob(key).unwrap());
            damaged += 1;
        }
        if d != 0 {
            assert!(
                store_of(&replicas[1])
                    .store()
                    .corrupt_blob_for_test(key)
                    .unwrap()
            );
            damaged += 1;
        }
        assert_eq!(
            good_copies(&cluster, &put.id)
                .intersection(&replicas.iter().copied().collect())
                .count(),
            if d == 2 { 1 } else { 2 }
        );
    }

    let op = common::operator(&cluster, &layout, None);
    let report = ops::converge(&op, None, &OpsOptions::default(), quiet())
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.manifests_written, damaged);
    for (put, bytes) in &docs {
        let replicas = placed(&layout, &put.id);
        let good = good_copies(&cluster, &put.id);
        assert!(
            replicas.is_subset(&good),
            "{}: placed {replicas:?}, good copies on {good:?}",
            put.id
        );
        assert!(common::read(&client, &put.id, &put.key).await == *bytes);
    }
    // Nothing left to do.
    let again = ops::converge(&op, None, &OpsOptions::default(), quiet())
        .await
        .unwrap();
    assert_eq!(again.manifests_written, 0);
    op.close().await;
    cluster.shutdown().await;
}

/// Rebalances from `old` to `new` and checks that the manifests followed: every replica
/// `new` places holds a good copy, the copies `old` placed elsewhere (and any on a draining
/// peer) are gone, and exactly those were written and deleted.
async fn rebalance_and_check(
    cluster: &LocalCluster,
    old: &Layout,
    new: &Layout,
    ids: &[DocumentId],
) -> (u64, u64) {
    let draining: BTreeSet<PublicId> = new
        .nodes
        .iter()
        .filter(|n| n.weight == 0)
        .map(|n| n.key)
        .collect();
    let (mut to_write, mut to_delete) = (0, 0);
    for id in ids {
        let before = any_copies(cluster, id);
        let (was, now) = (placed(old, id), placed(new, id));
        to_write += now.difference(&good_copies(cluster, id)).count() as u64;
        let stale: BTreeSet<PublicId> = was.union(&draining).copied().collect();
        to_delete += stale
            .difference(&now)
            .filter(|p| before.contains(p))
            .count() as u64;
    }
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), old.epoch, new.epoch).unwrap();
    let op = common::operator(cluster, new, Some(old));
    let report = ops::converge(&op, Some(&journal), &OpsOptions::default(), quiet())
        .await
        .unwrap();
    op.close().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.manifests_written, to_write);
    assert_eq!(report.manifests_deleted, to_delete);
    for id in ids {
        let (was, now) = (placed(old, id), placed(new, id));
        let good = good_copies(cluster, id);
        assert!(
            now.is_subset(&good),
            "{id}: placed {now:?}, copies {good:?}"
        );
        let copies = any_copies(cluster, id);
        for peer in was.union(&draining).filter(|p| !now.contains(p)) {
            assert!(
                !copies.contains(peer),
                "{id}: a stale copy on {}",
                peer.short()
            );
        }
    }
    (to_write, to_delete)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manifest_copies_follow_the_layout_when_a_peer_is_added_and_when_one_is_drained() {
    let (mut cluster, client) = common::start_cluster(6, 2).await;
    let mut docs = Vec::new();
    for seed in 0..12u64 {
        let len = if seed == 0 {
            600_000
        } else {
            4_000 + seed as usize
        };
        let bytes = common::data(len, 10 + seed);
        docs.push((common::put(&client, &bytes).await.unwrap(), bytes));
    }
    let ids: Vec<DocumentId> = docs.iter().map(|(p, _)| p.id).collect();

    // A seventh peer joins.
    let (old, new, _) = common::add_node(&mut cluster, "zone-0").await;
    let (written, _) = rebalance_and_check(&cluster, &old, &new, &ids).await;
    assert!(written > 0, "the new peer became no manifest's replica");

    // The peer holding the most copies is drained: it ends holding none.
    let drained = (0..cluster.len())
        .filter_map(|i| cluster.peer(i))
        .max_by_key(|p| p.store().list_blobs_from(None, 100).unwrap().len())
        .unwrap()
        .id();
    let (old, new) = cluster
        .change_layout(TxBody::DrainNode { node: drained })
        .await
        .unwrap();
    let (_, deleted) = rebalance_and_check(&cluster, &old, &new, &ids).await;
    assert!(deleted > 0);
    let store = cluster
        .peer(cluster.index_of(&drained).unwrap())
        .unwrap()
        .store();
    assert!(store.list_blobs_from(None, 100).unwrap().is_empty());

    let reader = common::department(&cluster);
    for (put, bytes) in &docs {
        assert!(common::read(&reader, &put.id, &put.key).await == *bytes);
    }
    client.close().await;
    cluster.shutdown().await;
}
