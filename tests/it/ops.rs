//! Operations on a live cluster: adding, draining and losing peers, rebalance, repair and
//! scrub. Real peers on 127.0.0.1, real QUIC with mutual TLS, real redb in temp dirs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::common;
use dangan::chain::tx::TxBody;
use dangan::client::{Client, stripe_key};
use dangan::cluster::LocalCluster;
use dangan::crypto::DataKey;
use dangan::id::{DocumentId, ShardId};
use dangan::identity::PublicId;
use dangan::manifest::Manifest;
use dangan::ops::{self, Journal, OpsOptions};
use dangan::placement::Layout;

struct Doc {
    id: DocumentId,
    key: DataKey,
    bytes: Vec<u8>,
    manifest: Manifest,
}

/// `n` documents of 4 stripes each (small params: 256 KiB of plaintext a stripe).
async fn store_docs(client: &Client, n: u64) -> Vec<Doc> {
    let mut docs = Vec::new();
    for seed in 0..n {
        let bytes = common::data((1 << 20) - 1000 * seed as usize, seed);
        let receipt = common::put(client, &bytes).await.unwrap();
        docs.push(Doc {
            id: receipt.id,
            key: receipt.key,
            bytes,
            manifest: receipt.manifest,
        });
    }
    docs
}

async fn read_all(client: &Client, docs: &[Doc]) {
    for doc in docs {
        let got = common::read(client, &doc.id, &doc.key).await;
        assert!(got == doc.bytes, "document {} differs", doc.id);
    }
}

/// Which shard ids each peer should hold under `layout`.
fn expected(layout: &Layout, docs: &[Doc]) -> BTreeMap<PublicId, BTreeSet<ShardId>> {
    let mut out: BTreeMap<PublicId, BTreeSet<ShardId>> = BTreeMap::new();
    for doc in docs {
        for ids in &doc.manifest.stripes {
            let placed = layout.place(&stripe_key(ids), ids.len()).unwrap();
            for (node, id) in placed.iter().zip(ids) {
                out.entry(node.key).or_default().insert(*id);
            }
        }
    }
    out
}

/// What each running peer holds, with refcounts.
fn holdings(cluster: &LocalCluster) -> BTreeMap<PublicId, BTreeMap<ShardId, u64>> {
    let mut out = BTreeMap::new();
    for i in 0..cluster.len() {
        let Some(peer) = cluster.peer(i) else {
            continue;
        };
        let store = peer.store();
        let held = store
            .list()
            .unwrap()
            .into_iter()
            .map(|id| (id, store.refcount(&id).unwrap().unwrap()))
            .collect();
        out.insert(peer.id(), held);
    }
    out
}

/// Every peer holds exactly the shards `layout` places on it, once each, and every copy
/// verifies.
fn assert_exactly_placed(cluster: &LocalCluster, layout: &Layout, docs: &[Doc]) {
    let want = expected(layout, docs);
    for (peer, held) in holdings(cluster) {
        let want = want.get(&peer).cloned().unwrap_or_default();
        let got: BTreeSet<ShardId> = held.keys().copied().collect();
        assert_eq!(
            got.len(),
            want.len(),
            "peer {} holds {} shards, its placement says {}",
            peer.short(),
            got.len(),
            want.len()
        );
        assert_eq!(got, want, "peer {} holds other shards", peer.short());
        assert!(held.values().all(|&r| r == 1), "a shard was written twice");
        let store = cluster
            .peer(cluster.index_of(&peer).unwrap())
            .unwrap()
            .store();
        for id in &got {
            assert!(store.get(id).unwrap().is_some());
        }
        // Each copy is held by its document's reference, moved with it: none is left to the
        // key that uploaded it, none to another document.
        for doc in docs {
            for ids in &doc.manifest.stripes {
                let placed = layout.place(&stripe_key(ids), ids.len()).unwrap();
                for (node, id) in placed.iter().zip(ids) {
                    if node.key == peer {
                        assert_eq!(
                            store.holders(id).unwrap(),
                            vec![(dangan::store::Holder::Document(doc.id), 1)],
                            "peer {} shard {id}",
                            peer.short()
                        );
                    }
                }
            }
        }
    }
}

/// Adds a new peer in `zone` to the layout on chain; returns (old layout, new layout).
async fn drain_node(cluster: &mut LocalCluster, node: PublicId) -> (Layout, Layout) {
    let old = cluster.layout().clone();
    let op = common::operator(cluster, &old, None);
    op.chain()
        .unwrap()
        .submit(TxBody::DrainNode { node })
        .await
        .unwrap();
    op.close().await;
    let new = cluster.sync_layout().clone();
    (old, new)
}

/// Slots whose peer differs between the layouts: the minimum a rebalance must move.
fn slots_moved(old: &Layout, new: &Layout, docs: &[Doc]) -> u64 {
    let stripes = docs
        .iter()
        .flat_map(|d| d.manifest.stripes.iter().map(|ids| stripe_key(ids)));
    dangan::placement::moved(old, new, stripes, 6)
        .unwrap()
        .moved_slots
}

fn quiet() -> &'static (dyn Fn(ops::Progress) + Send + Sync) {
    &|_| {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adding_a_seventh_peer_in_one_zone_moves_the_minimum_and_every_document_stays_readable() {
    let (mut cluster, client) = common::start_cluster(6, 1).await;
    let docs = store_docs(&client, 12).await;
    let (old, new, added) = common::add_node(&mut cluster, "zone-0").await;

    // The floor: the shards the new peer receives. The placement moves no other.
    let floor: u64 = expected(&new, &docs)[&added.key].len() as u64;
    let total_slots: u64 = docs
        .iter()
        .map(|d| d.manifest.stripes.len() as u64 * 6)
        .sum();
    assert_eq!(slots_moved(&old, &new, &docs), floor);
    let share = floor as f64 / (total_slots as f64 / 7.0);
    println!(
        "6 -> 7: {floor} of {total_slots} shards move; 1/7 of all is {:.1} ({share:.2}x)",
        total_slots as f64 / 7.0
    );
    assert!((0.6..=1.4).contains(&share), "new peer's share {share}");

    // Rebalance (throttled so reads overlap it) while a reader that knows both layouts
    // reads every document again and again.
    let journal_dir = tempfile::tempdir().unwrap();
    let op = common::operator(&cluster, &new, Some(&old));
    // The reader is built as `dangan get` builds it: both layouts come from the chain (its
    // cluster file already names the new layout, so the fallback can only be the chain's).
    let reader = cluster
        .chain_client(new.clone(), common::options())
        .await
        .unwrap();
    assert_eq!(reader.layout(), &new);
    assert_eq!(reader.previous_layout(), Some(&old));
    let docs = Arc::new(docs);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = {
        let (docs, stop, reader) = (docs.clone(), stop.clone(), reader.clone());
        tokio::spawn(async move {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) || rounds == 0 {
                read_all(&reader, &docs).await;
                rounds += 1;
            }
            rounds
        })
    };
    let journal = Journal::open(journal_dir.path(), old.epoch, new.epoch).unwrap();
    let options = OpsOptions {
        rate: Some(4e6),
        ..OpsOptions::default()
    };
    let report = ops::converge(&op, Some(&journal), &options, quiet())
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let rounds = reads.await.unwrap();
    println!("{report:?}; {rounds} read rounds during the rebalance");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.shards_moved, floor);
    assert_eq!(report.shards_deleted, floor);
    assert_eq!(report.shards_rebuilt, 0);
    assert_exactly_placed(&cluster, &new, &docs);

    // After: a client that knows only the new layout reads everything.
    let after = common::department(&cluster);
    read_all(&after, &docs).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_peer_ends_holding_nothing_and_redundancy_stays_full() {
    let (mut cluster, client) = common::start_cluster(7, 3).await;
    let docs = store_docs(&client, 6).await;
    let drained = cluster.peer(0).unwrap().id();
    let held_before = cluster.peer(0).unwrap().store().list().unwrap().len() as u64;
    assert!(held_before > 0);
    let (old, new) = drain_node(&mut cluster, drained).await;
    let floor = slots_moved(&old, &new, &docs);
    println!("drain: {floor} slots move; the drained peer held {held_before}");
    assert_eq!(floor, held_before, "only the drained peer's shards move");

    let journal_dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(journal_dir.path(), old.epoch, new.epoch).unwrap();
    let op = common::operator(&cluster, &new, Some(&old));
    let report = ops::converge(&op, Some(&journal), &OpsOptions::default(), quiet())
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.shards_moved, held_before);

    let store = cluster.peer(0).unwrap().store();
    assert!(
        store.list().unwrap().is_empty(),
        "drained peer still holds shards"
    );
    assert!(
        store.list_blobs_from(None, 10).unwrap().is_empty(),
        "drained peer still holds manifests"
    );
    assert_exactly_placed(&cluster, &new, &docs);
    // A repair finds nothing below full redundancy.
    let check = ops::converge(
        &op,
        None,
        &OpsOptions {
            dry_run: true,
            ..OpsOptions::default()
        },
        quiet(),
    )
    .await
    .unwrap();
    assert_eq!(check.stripes_below, 0);
    read_all(&common::department(&cluster), &docs).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_peer_is_lost_repair_restores_full_redundancy_and_m_more_losses_lose_nothing() {
    let (mut cluster, client) = common::start_cluster(7, 1).await;
    let docs = store_docs(&client, 6).await;
    client.close().await;

    // Peer 3 is lost for good: stopped, and the operator takes it out of placement.
    let lost = cluster.peer(3).unwrap().id();
    cluster.stop_peer(3).await.unwrap();
    let (_, new) = drain_node(&mut cluster, lost).await;
    // Repair: no previous layout, the lost peer's shards are rebuilt from the others.
    let op = common::operator(&cluster, &new, None);
    let report = ops::converge(&op, None, &OpsOptions::default(), quiet())
        .await
        .unwrap();
    println!("{report:?}");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.stripes_below > 0);
    assert!(report.shards_rebuilt > 0);
    assert_eq!(report.shards_moved, 0);
    assert_exactly_placed(&cluster, &new, &docs);

    // Every stripe has k + m shards on distinct live peers: any m = 2 more peers may fail.
    let live: Vec<usize> = (0..7).filter(|&i| i != 3).collect();
    let held = holdings(&cluster);
    for (a, &x) in live.iter().enumerate() {
        for &y in &live[a + 1..] {
            let gone = [cluster.peer(x).unwrap().id(), cluster.peer(y).unwrap().id()];
            for doc in &docs {
                for ids in &doc.manifest.stripes {
                    let left = ids
                        .iter()
                        .filter(|id| {
                            held.iter()
                                .any(|(p, h)| !gone.contains(p) && h.contains_key(id))
                        })
                        .count();
                    assert!(left >= 4, "losing peers {x} and {y} would lose a stripe");
                }
            }
        }
    }
    // And for real: stop two more and read everything.
    cluster.stop_peer(live[0]).await.unwrap();
    cluster.stop_peer(live[1]).await.unwrap();
    read_all(&common::department(&cluster), &docs).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_finds_every_flipped_bit_and_repair_rewrites_them() {
    let (cluster, client) = common::start_cluster(6, 3).await;
    let docs = store_docs(&client, 4).await;
    // Flip one bit in 9 shards on every peer: in 9 stripes, one or two (m) each.
    let layout = cluster.layout().clone();
    let mut flipped = BTreeSet::new();
    let stripes: Vec<&Vec<ShardId>> = docs.iter().flat_map(|d| &d.manifest.stripes).collect();
    for (i, ids) in stripes.iter().take(9).enumerate() {
        for slot in [i % 6, (i + 3) % 6].into_iter().take(1 + i % 2) {
            let node = layout.place(&stripe_key(ids), 6).unwrap()[slot].key;
            let peer = cluster.peer(cluster.index_of(&node).unwrap()).unwrap();
            assert!(peer.store().corrupt_for_test(&ids[slot], 1000 + i).unwrap());
            flipped.insert((node, ids[slot]));
        }
    }
    let corrupted = flipped.len() as u64;
    let op = common::operator(&cluster, &layout, None);
    let options = OpsOptions {
        rate: Some(200e6),
        ..OpsOptions::default()
    };
    let report = ops::scrub(&op, &options, quiet()).await.unwrap();
    println!(
        "scrub: {} shards, {} bytes, {:.0} MB/s",
        report.shards_checked,
        report.bytes,
        report.mb_per_s()
    );
    let found: BTreeSet<(PublicId, ShardId)> = report.corrupt.iter().copied().collect();
    assert_eq!(found, flipped);
    let total: u64 = holdings(&cluster)
        .values()
        .map(|h| h.len() as u64)
        .sum::<u64>()
        + corrupted;
    assert_eq!(report.shards_checked, total);

    let repair = ops::converge(&op, None, &OpsOptions::default(), quiet())
        .await
        .unwrap();
    assert!(repair.failures.is_empty(), "{:?}", repair.failures);
    assert_eq!(repair.shards_rebuilt, corrupted);
    assert_exactly_placed(&cluster, &layout, &docs);
    let again = ops::scrub(&op, &options, quiet()).await.unwrap();
    assert!(again.corrupt.is_empty());
    read_all(&client, &docs).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_killed_midway_resumes_and_finishes_with_nothing_lost_or_duplicated() {
    let (mut cluster, client) = common::start_cluster(6, 1).await;
    let docs = store_docs(&client, 8).await;
    let (old, new, added) = common::add_node(&mut cluster, "zone-0").await;
    let floor = expected(&new, &docs)[&added.key].len() as u64;
    let journal_dir = tempfile::tempdir().unwrap();

    // First run: killed (its task aborted) once half the stripes are done.
    let op = common::operator(&cluster, &new, Some(&old));
    let journal = Arc::new(Journal::open(journal_dir.path(), old.epoch, new.epoch).unwrap());
    let done = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = {
        let (op, journal, done) = (op.clone(), journal.clone(), done.clone());
        tokio::spawn(async move {
            let progress = move |p: ops::Progress| {
                done.store(p.done, Ordering::Relaxed);
                if p.total > 0 && p.done * 2 >= p.total {
                    let _ = tx.send(());
                }
            };
            let options = OpsOptions {
                rate: Some(2e6),
                ..OpsOptions::default()
            };
            ops::converge(&op, Some(&journal), &options, &progress).await
        })
    };
    rx.recv().await.unwrap();
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let first = journal.done().unwrap();
    println!(
        "killed after {} stripes; {first} moves recorded done",
        done.load(Ordering::Relaxed)
    );
    assert!(
        first > 0 && first < floor,
        "first run did {first} of {floor}"
    );
    drop(journal);

    // Second run: resumes from the journal and finishes.
    let journal = Journal::open(journal_dir.path(), old.epoch, new.epoch).unwrap();
    let report = ops::converge(&op, Some(&journal), &OpsOptions::default(), quiet())
        .await
        .unwrap();
    println!("{report:?}");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(report.shards_resumed >= first);
    assert!(report.shards_moved < floor);
    assert_eq!(journal.done().unwrap(), floor);
    assert_exactly_placed(&cluster, &new, &docs);
    read_all(&common::department(&cluster), &docs).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn converge_walks_the_documents_a_page_at_a_time() {
    let (mut cluster, client) = common::start_cluster(7, 1).await;
    // Seven documents of one and two stripes.
    let mut docs = Vec::new();
    for seed in 0..7u64 {
        let len = if seed % 2 == 0 { 20_000 } else { 300_000 };
        let bytes = common::data(len, 30 + seed);
        let receipt = common::put(&client, &bytes).await.unwrap();
        docs.push(Doc {
            id: receipt.id,
            key: receipt.key,
            bytes,
            manifest: receipt.manifest,
        });
    }
    client.close().await;
    let stripes: u64 = docs.iter().map(|d| d.manifest.stripes.len() as u64).sum();

    // A peer is lost for good; repair walks the documents two at a time.
    let lost = cluster.peer(3).unwrap().id();
    cluster.stop_peer(3).await.unwrap();
    let (_, new) = drain_node(&mut cluster, lost).await;
    let op = common::operator(&cluster, &new, None);
    let paged = OpsOptions {
        page: 2,
        parallel: 3,
        ..OpsOptions::default()
    };
    let seen = std::sync::Mutex::new(Vec::new());
    let progress = |p: ops::Progress| seen.lock().unwrap().push(p);
    let report = ops::converge(&op, None, &paged, &progress).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!((report.documents, report.stripes), (7, stripes));
    assert!(report.shards_rebuilt > 0);
    // Progress: the total grew as pages were found, up to every stripe, all done.
    let seen = seen.into_inner().unwrap();
    let last = seen.last().unwrap();
    assert_eq!((last.done, last.total), (stripes, stripes));
    assert!(
        seen.windows(2)
            .all(|w| w[0].total <= w[1].total && w[0].done <= w[1].done)
    );

    // Walked again one document a page, every stripe is whole.
    let one = OpsOptions {
        page: 1,
        dry_run: true,
        ..OpsOptions::default()
    };
    let check = ops::converge(&op, None, &one, quiet()).await.unwrap();
    assert_eq!(
        (check.documents, check.stripes, check.stripes_below),
        (7, stripes, 0)
    );
    op.close().await;
    read_all(&common::department(&cluster), &docs).await;
    cluster.shutdown().await;
}
