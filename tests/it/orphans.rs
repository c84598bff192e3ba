//! Orphan collection: the shards and manifests of puts that never registered go once older
//! than the grace period, on every peer; a registered document, a put still inside the
//! grace period and shards shared with a registered document stay as they were. Real peers
//! on 127.0.0.1 (QUIC, mutual TLS, redb in temp dirs) and the embedded chain.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use crate::common;
use dangan::access::ACCESS_TTL;
use dangan::client::{Client, PutReceipt};
use dangan::cluster::LocalCluster;
use dangan::id::{DocumentId, ShardId};
use dangan::identity::PublicId;
use dangan::ops::{self, OpsOptions};
use dangan::placement::NodeInfo;
use dangan::proto::{ErrorCode, PutOutcome, Request, StaleEntry, StaleHolder};
use dangan::store::Holder;

/// A document stored (shards, manifest, references bound) but never registered, as a put
/// killed before its registration leaves it.
async fn store_only(client: &Client, len: usize, seed: u64) -> PutReceipt {
    let bytes = common::data(len, seed);
    client
        .store(
            std::io::Cursor::new(bytes),
            Some(len as u64),
            common::info(),
            &|_, _| {},
        )
        .await
        .unwrap()
}

/// A shard put naming no document (held by the uploading key until a bind), as a put's
/// stripes go out before the document id is known.
async fn put_unbound(client: &Client, node: &NodeInfo, id: &ShardId, body: &Bytes) {
    let req = Request::PutShard {
        id: *id,
        len: body.len() as u64,
        document: None,
    };
    client
        .net()
        .call::<PutOutcome>(node, &req, Some(body))
        .await
        .unwrap();
}

type Holdings = BTreeMap<(PublicId, ShardId), Vec<(Holder, u64)>>;

/// Every running peer's holders of each of `ids` that it holds.
fn holdings(cluster: &LocalCluster, ids: &[ShardId]) -> Holdings {
    let mut out = BTreeMap::new();
    for i in 0..cluster.len() {
        let Some(peer) = cluster.peer(i) else {
            continue;
        };
        for id in ids {
            let holders = peer.store().holders(id).unwrap();
            if !holders.is_empty() {
                assert!(peer.store().get(id).unwrap().is_some());
                out.insert((peer.id(), *id), holders);
            }
        }
    }
    out
}

/// Peers holding the manifest of `id`.
fn manifest_copies(cluster: &LocalCluster, id: &DocumentId) -> usize {
    (0..cluster.len())
        .filter_map(|i| cluster.peer(i))
        .filter(|p| p.store().get_blob(&id.0).unwrap().is_some())
        .count()
}

fn shard_ids(receipt: &PutReceipt) -> Vec<ShardId> {
    receipt.manifest.stripes.iter().flatten().copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bytes_of_puts_that_never_registered_go_after_the_grace_period_and_nothing_else() {
    let (cluster, client) = common::start_cluster(6, 3).await;
    let layout = cluster.layout().clone();

    // A registered document of four stripes.
    let registered = common::put(&client, &common::data(1 << 20, 1))
        .await
        .unwrap();
    // Puts that never registered: a document of four stripes (shards bound to it, manifest
    // written), a certificate (one `PutMany` per peer naming it), and a put that died
    // before its manifest (shards held by the uploading key only). The last one also
    // uploaded a shard of the registered document again: shared, it must stay.
    let failed = store_only(&client, 1 << 20, 2).await;
    let failed_cert = store_only(&client, 40 << 10, 3).await;
    let mut uploads = Vec::new();
    for seed in 0..3u64 {
        let body = Bytes::from(common::data(70 << 10, 100 + seed));
        let id = ShardId::of(&body);
        let node = &layout.nodes[seed as usize];
        put_unbound(&client, node, &id, &body).await;
        uploads.push(id);
    }
    let shared = registered.manifest.stripes[0][0];
    let shared_peer = layout
        .place(
            &dangan::client::stripe_key(&registered.manifest.stripes[0]),
            6,
        )
        .unwrap()[0]
        .clone();
    let shared_body = cluster
        .peer(cluster.index_of(&shared_peer.key).unwrap())
        .unwrap()
        .store()
        .get(&shared)
        .unwrap()
        .unwrap();
    put_unbound(&client, &shared_peer, &shared, &Bytes::from(shared_body)).await;

    // The cutoff: everything above is older than the grace period; a put under way now is
    // inside it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = dangan::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid_put = store_only(&client, 1 << 20, 4).await;

    let orphans: Vec<ShardId> = shard_ids(&failed)
        .into_iter()
        .chain(shard_ids(&failed_cert))
        .chain(uploads.iter().copied())
        .collect();
    assert!(!holdings(&cluster, &orphans).is_empty());
    assert!(manifest_copies(&cluster, &failed.id) >= 3);
    assert!(manifest_copies(&cluster, &failed_cert.id) >= 3);
    let orphan_manifests =
        manifest_copies(&cluster, &failed.id) + manifest_copies(&cluster, &failed_cert.id);
    let kept_ids: Vec<ShardId> = shard_ids(&registered)
        .into_iter()
        .chain(shard_ids(&mid_put))
        .collect();
    let kept_before = holdings(&cluster, &kept_ids);
    let shared_holders = &kept_before[&(shared_peer.key, shared)];
    assert_eq!(shared_holders.len(), 2, "{shared_holders:?}");

    let op = common::operator(&cluster, &layout, None);
    let report = ops::collect_before(&op, &OpsOptions::default(), cutoff, &|_| {})
        .await
        .unwrap();
    println!("{report:?}");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.shards_considered);
    assert_eq!(report.manifests_collected as usize, orphan_manifests);

    // Every byte of the failed puts is gone, from every peer.
    assert_eq!(holdings(&cluster, &orphans), Holdings::new());
    assert_eq!(manifest_copies(&cluster, &failed.id), 0);
    assert_eq!(manifest_copies(&cluster, &failed_cert.id), 0);
    // Nothing else changed: the registered document (and its shard another upload shared),
    // the put inside the grace period.
    assert_eq!(holdings(&cluster, &kept_ids), kept_before);
    assert!(manifest_copies(&cluster, &registered.id) >= 3);
    assert!(manifest_copies(&cluster, &mid_put.id) >= 3);
    let (bytes, report_get) = common::get(&client, &registered.id, &registered.key)
        .await
        .unwrap();
    assert!(bytes == common::data(1 << 20, 1) && report_get.corrupt.is_empty());
    // The put under way registers and reads back whole.
    let mid_put = client.register(mid_put).await.unwrap();
    assert!(common::read(&client, &mid_put.id, &mid_put.key).await == common::data(1 << 20, 4));

    // A second run finds nothing more to remove.
    let again = ops::collect_before(&op, &OpsOptions::default(), cutoff, &|_| {})
        .await
        .unwrap();
    assert_eq!(again.references_collected + again.manifests_collected, 0);
    // The peer checks on its own: asked straight to drop a registered document's reference
    // or manifest, however old the cutoff says they are, it refuses.
    let later = dangan::now_ms() + 3_600_000;
    for entry in [
        StaleEntry::Reference {
            shard: shared,
            holder: StaleHolder::Document(registered.id),
        },
        StaleEntry::Manifest(registered.id),
    ] {
        let err = op
            .net()
            .stale_collect(&shared_peer, entry, later)
            .await
            .unwrap_err();
        assert_eq!(err.remote_code(), Some(ErrorCode::Refused), "{err}");
    }
    assert_eq!(holdings(&cluster, &kept_ids), kept_before);
    op.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_that_cannot_ask_the_chain_keeps_the_bytes() {
    let (mut cluster, client) = common::start_cluster(6, 3).await;
    let layout = cluster.layout().clone();
    let failed = store_only(&client, 40 << 10, 5).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = dangan::now_ms();
    let op = common::operator(&cluster, &layout, None);
    let ids = shard_ids(&failed);
    let before = holdings(&cluster, &ids);
    let ((peer, shard), _) = before.iter().next().unwrap();
    let node = layout
        .nodes
        .iter()
        .find(|n| n.key == *peer)
        .unwrap()
        .clone();
    let entry = StaleEntry::Reference {
        shard: *shard,
        holder: StaleHolder::Document(failed.id),
    };
    // With the validator gone, and the peers' cached answers expired, no peer can tell
    // whether the document is registered (nor who the operator is): it keeps the bytes.
    cluster.stop_validator().await;
    tokio::time::sleep(ACCESS_TTL + Duration::from_millis(200)).await;
    let err = op
        .net()
        .stale_collect(&node, entry, cutoff)
        .await
        .unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::Unavailable), "{err}");
    let err = op
        .net()
        .stale_collect(&node, StaleEntry::Manifest(failed.id), cutoff)
        .await
        .unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::Unavailable), "{err}");
    assert_eq!(holdings(&cluster, &ids), before);
    assert!(manifest_copies(&cluster, &failed.id) >= 3);
    cluster.shutdown().await;
}

/// The background collector (`dangan collect --every-hours`): round after round, the bytes
/// of puts that never registered go once older than the grace period, those of a put made
/// while it runs included, and the registered document stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_background_collector_removes_orphans_round_after_round_and_keeps_the_registered() {
    let (cluster, client) = common::start_cluster(6, 3).await;
    let registered = common::put(&client, &common::data(300 << 10, 7))
        .await
        .unwrap();
    let kept_ids = shard_ids(&registered);
    let kept_before = holdings(&cluster, &kept_ids);
    let first = store_only(&client, 40 << 10, 8).await;

    let dir = tempfile::tempdir().unwrap();
    let op = cluster.operator_ops(dir.path());
    let (rounds_tx, mut rounds_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let collector = tokio::spawn(async move {
        let jobs = ops::Jobs {
            scrub: false,
            repair: false,
            collect: Some(ops::CollectOptions {
                grace: Duration::from_secs(2),
            }),
        };
        op.maintain_every(
            &OpsOptions::default(),
            &jobs,
            Duration::from_millis(100),
            None,
            async {
                let _ = stop_rx.await;
            },
            &move |round| {
                let report = match round.collect.as_ref().expect("collect ran") {
                    Ok(r) => Ok(r.clone()),
                    Err(e) => Err(e.to_string()),
                };
                let _ = rounds_tx.send((round.number, report));
            },
        )
        .await
    });
    // Rounds until `receipt`'s bytes are gone from every peer (each round looked at).
    async fn until_collected(
        cluster: &LocalCluster,
        rounds: &mut tokio::sync::mpsc::UnboundedReceiver<(
            u64,
            Result<ops::CollectReport, String>,
        )>,
        receipt: &PutReceipt,
    ) -> u64 {
        loop {
            let (round, report) = rounds.recv().await.expect("the collector stopped");
            let report = report.expect("a round failed");
            assert!(report.failures.is_empty(), "{:?}", report.failures);
            if holdings(cluster, &shard_ids(receipt)).is_empty()
                && manifest_copies(cluster, &receipt.id) == 0
            {
                return round;
            }
            assert!(
                round < 200,
                "the orphan was still there after {round} rounds"
            );
        }
    }
    let gone_first = until_collected(&cluster, &mut rounds_rx, &first).await;
    // A put that fails while the collector runs goes too, in a later round.
    let second = store_only(&client, 40 << 10, 9).await;
    assert!(!holdings(&cluster, &shard_ids(&second)).is_empty());
    let gone_second = until_collected(&cluster, &mut rounds_rx, &second).await;
    assert!(gone_second > gone_first);

    stop_tx.send(()).unwrap();
    let rounds = collector.await.unwrap();
    assert!(rounds >= gone_second, "{rounds} rounds");
    assert_eq!(holdings(&cluster, &kept_ids), kept_before);
    let (bytes, _) = common::get(&client, &registered.id, &registered.key)
        .await
        .unwrap();
    assert!(bytes == common::data(300 << 10, 7));
    client.close().await;
    cluster.shutdown().await;
}

/// The pieces of a multipart upload (`Client::store_piece`, as S3's UploadPart stores a
/// part) are held by the uploading key: the pieces of an upload that never completes (aborted
/// or abandoned) go after the grace period; those of a completed one (`store_pieces`,
/// registered), and a piece stored after the cutoff, stay, and the document reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pieces_of_an_upload_never_completed_go_after_the_grace_period() {
    let (cluster, client) = common::start_cluster(6, 3).await;
    let layout = cluster.layout().clone();
    let key = dangan::crypto::DataKey::generate();
    let piece = |seed: u64, len: usize| {
        let (client, key) = (client.clone(), key.clone());
        async move {
            let bytes = common::data(len, seed);
            client
                .store_piece(std::io::Cursor::new(bytes), &key)
                .await
                .unwrap()
        }
    };
    let (done_a, done_b, abandoned) =
        tokio::join!(piece(1, 5 << 20), piece(2, 300 << 10), piece(3, 1 << 20));
    let completed = client
        .store_pieces(vec![done_a, done_b], common::info(), key.clone())
        .await
        .unwrap();
    let completed = client.register(completed).await.unwrap();
    assert_eq!(completed.manifest.pieces.len(), 2);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = dangan::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let late = piece(4, 200 << 10).await;

    let ids = |p: &dangan::client::StoredPiece| -> Vec<ShardId> {
        p.sealed.stripes.iter().flatten().copied().collect()
    };
    let orphans = ids(&abandoned);
    let late_ids = ids(&late);
    assert!(!holdings(&cluster, &orphans).is_empty());
    let kept_before = holdings(&cluster, &shard_ids(&completed));
    let late_before = holdings(&cluster, &late_ids);
    assert!(!late_before.is_empty());

    let op = common::operator(&cluster, &layout, None);
    let report = ops::collect_before(&op, &OpsOptions::default(), cutoff, &|_| {})
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(holdings(&cluster, &orphans), Holdings::new());
    assert_eq!(holdings(&cluster, &shard_ids(&completed)), kept_before);
    assert_eq!(holdings(&cluster, &late_ids), late_before);
    let mut want = common::data(5 << 20, 1);
    want.extend(common::data(300 << 10, 2));
    assert!(common::read(&client, &completed.id, &key).await == want);
    op.close().await;
    cluster.shutdown().await;
}
