//! Writes go on while peers are down: a shard whose placed peer fails goes to a stand-in
//! (`Layout::standins`), so a put returns with every stripe at k + m shards; a get finds a
//! shard on its stand-in when the placed peers cannot serve enough; repair brings every
//! shard home and deletes the stand-in copies. With fewer than k + m live peers a peer may
//! hold two shards of a stripe, never on fewer than k + 1 distinct peers. Real peers on
//! 127.0.0.1, stopped and restarted with their redb stores; real QUIC with mutual TLS.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common;
use dangan::client::{Client, ClientError, ClientOptions, PutReceipt, stripe_key};
use dangan::cluster::LocalCluster;
use dangan::id::ShardId;
use dangan::identity::PublicId;
use dangan::ops::{self, OpsOptions};
use dangan::store::Holder;

const K: usize = 4;
const WIDTH: usize = 6;

/// A stopped peer costs a put one connection attempt: keep it short (a live peer that is
/// slow to answer only gets a stand-in, which the checks allow).
fn options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_millis(500),
        ..common::options()
    }
}

/// For each stripe of `put`, for each slot: the running peers where the document holds a
/// reference to the shard, each copy read back (the store re-hashes it).
fn copies(cluster: &LocalCluster, put: &PutReceipt) -> Vec<Vec<Vec<PublicId>>> {
    put.manifest
        .stripes
        .iter()
        .map(|ids| {
            ids.iter()
                .map(|id| {
                    (0..cluster.len())
                        .filter_map(|i| cluster.peer(i))
                        .filter(|peer| {
                            let store = peer.store();
                            store.has_ref(id, &put.id).unwrap()
                                && store.get(id).unwrap().is_some_and(|b| id.verifies(&b))
                        })
                        .map(|peer| peer.id())
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// The put returned at full redundancy: every shard of every stripe held by the document,
/// verified, on at least `peers` distinct running peers per stripe; the receipt names the
/// stand-ins.
fn assert_full(cluster: &LocalCluster, put: &PutReceipt, peers: usize) {
    assert!(put.shards_missing.is_empty(), "{:?}", put.shards_missing);
    let shards: usize = put.manifest.stripes.iter().map(Vec::len).sum();
    assert_eq!(put.shards_stored, shards as u64);
    let found = copies(cluster, put);
    for (s, slots) in found.iter().enumerate() {
        let ids = &put.manifest.stripes[s];
        let placed = cluster.layout().place(&stripe_key(ids), WIDTH).unwrap();
        let mut distinct = BTreeSet::new();
        for (slot, holders) in slots.iter().enumerate() {
            assert!(!holders.is_empty(), "stripe {s} shard {slot} is nowhere");
            distinct.extend(holders.iter().copied());
            let home = placed[slot].key;
            let standin = put
                .shards_standing_in
                .iter()
                .find(|(st, sl, _)| *st == s as u64 && *sl == slot);
            match standin {
                Some((_, _, peer)) => {
                    assert_ne!(*peer, home);
                    assert!(holders.contains(peer), "the receipt names its stand-in");
                }
                None => assert_eq!(holders, &vec![home], "stripe {s} shard {slot} at home"),
            }
        }
        assert!(
            distinct.len() >= peers,
            "stripe {s} on {} peers, {peers} needed",
            distinct.len()
        );
    }
}

/// Every shard of `puts` is held by its document on its placed peer alone, once, and
/// reads back; with `exact`, no peer holds any other shard at all.
fn assert_home(cluster: &LocalCluster, puts: &[PutReceipt], exact: bool) {
    let mut want: BTreeMap<PublicId, BTreeSet<ShardId>> = BTreeMap::new();
    for put in puts {
        for (s, slots) in copies(cluster, put).iter().enumerate() {
            let ids = &put.manifest.stripes[s];
            let placed = cluster.layout().place(&stripe_key(ids), WIDTH).unwrap();
            for (slot, holders) in slots.iter().enumerate() {
                assert_eq!(
                    holders,
                    &vec![placed[slot].key],
                    "document {} stripe {s} shard {slot}: on its placed peer only",
                    put.id
                );
                let store = cluster
                    .peer(cluster.index_of(&placed[slot].key).unwrap())
                    .unwrap()
                    .store();
                assert_eq!(
                    store.holders(&ids[slot]).unwrap(),
                    vec![(Holder::Document(put.id), 1)]
                );
                want.entry(placed[slot].key).or_default().insert(ids[slot]);
            }
        }
    }
    if exact {
        for i in 0..cluster.len() {
            let peer = cluster.peer(i).unwrap();
            let held: BTreeSet<ShardId> = peer.store().list().unwrap().into_iter().collect();
            assert_eq!(
                held,
                want.remove(&peer.id()).unwrap_or_default(),
                "peer {i} holds exactly what its placement says"
            );
        }
    }
}

/// A certificate (one stripe, the `PutMany` path) and a three-stripe document.
async fn put_two(client: &Client, seed: u64) -> Vec<PutReceipt> {
    let mut puts = Vec::new();
    for (len, seed) in [(50 << 10, seed), (600 << 10, seed + 1000)] {
        match common::put(client, &common::data(len, seed)).await {
            Ok(put) => puts.push(put),
            Err(e) => panic!("put of {len} bytes failed: {e}"),
        }
    }
    puts
}

/// Repair as the operator; nothing may fail. Returns its report.
async fn repair(cluster: &LocalCluster) -> ops::ConvergeReport {
    let op = common::operator(cluster, cluster.layout(), None);
    let report = ops::converge(&op, None, &OpsOptions::default(), &|_| {})
        .await
        .unwrap();
    op.close().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    report
}

/// For each set of peers in `down`: stop them, put a certificate and a larger document
/// (each must return at full redundancy on WIDTH distinct peers), start them again. Then
/// repair, and every shard is on its placed peer alone; everything reads back.
async fn puts_with_peers_down(down: &[&[usize]]) {
    let mut cluster = LocalCluster::start(8, 4).await.unwrap();
    let mut puts: Vec<PutReceipt> = Vec::new();
    let mut contents: Vec<Vec<u8>> = Vec::new();
    let mut standing_in = 0;
    for (round, peers) in down.iter().enumerate() {
        for &i in *peers {
            cluster.stop_peer(i).await.unwrap();
        }
        let client = cluster.client(options()).unwrap();
        for put in put_two(&client, round as u64).await {
            // Eight peers, two down at most: every shard on a peer of its own.
            assert_full(&cluster, &put, WIDTH);
            standing_in += put.shards_standing_in.len();
            contents.push(common::read(&client, &put.id, &put.key).await);
            puts.push(put);
        }
        client.close().await;
        for &i in *peers {
            cluster.restart_peer(i).await.unwrap();
        }
    }
    assert!(standing_in > 0, "some shard's placed peer was down");

    let report = repair(&cluster).await;
    println!("{report:?}");
    assert_eq!(
        report.shards_moved as usize, standing_in,
        "each brought home"
    );
    assert_eq!(
        report.shards_deleted as usize, standing_in,
        "and its copy deleted"
    );
    assert_eq!(report.shards_rebuilt, 0);
    assert_home(&cluster, &puts, true);
    // A second look finds every stripe complete.
    assert_eq!(repair(&cluster).await.stripes_below, 0);
    let client = common::department(&cluster);
    for (put, bytes) in puts.iter().zip(&contents) {
        assert!(&common::read(&client, &put.id, &put.key).await == bytes);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn puts_while_any_one_peer_is_down_succeed_at_full_redundancy_and_repair_brings_every_shard_home()
 {
    let down: Vec<[usize; 1]> = (0..8).map(|i| [i]).collect();
    let down: Vec<&[usize]> = down.iter().map(|d| &d[..]).collect();
    puts_with_peers_down(&down).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn puts_while_any_two_peers_are_down_succeed_at_full_redundancy_and_repair_brings_every_shard_home()
 {
    // Every peer down once, with a partner in its zone (4 zones of 2) or in another.
    puts_with_peers_down(&[&[0, 4], &[1, 2], &[3, 7], &[5, 6], &[2, 5]]).await;
}

/// A shard on a stand-in is found by a get when the placed peers hold fewer than k.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_get_reads_shards_from_their_stand_ins_when_placed_peers_hold_fewer_than_k() {
    let mut cluster = LocalCluster::start(8, 4).await.unwrap();
    cluster.stop_peer(0).await.unwrap();
    cluster.stop_peer(1).await.unwrap();
    let client = cluster.client(options()).unwrap();
    // A certificate whose stripe places peer 0 or 1 (27 in 28 do).
    let (put, bytes) = 'found: {
        for seed in 0..10 {
            let bytes = common::data(50 << 10, seed);
            let put = common::put(&client, &bytes).await.unwrap();
            if !put.shards_standing_in.is_empty() {
                break 'found (put, bytes);
            }
        }
        panic!("no certificate was placed on peer 0 or 1");
    };
    client.close().await;
    cluster.restart_peer(0).await.unwrap();
    cluster.restart_peer(1).await.unwrap();

    // Stop placed peers holding their own shard until the placed peers hold k - 1.
    let ids = &put.manifest.stripes[0];
    let placed: Vec<PublicId> = cluster
        .layout()
        .place(&stripe_key(ids), WIDTH)
        .unwrap()
        .iter()
        .map(|n| n.key)
        .collect();
    let standins: Vec<PublicId> = put.shards_standing_in.iter().map(|s| s.2).collect();
    let at_home = WIDTH - standins.len();
    let mut stopped = Vec::new();
    for key in &placed {
        if at_home - stopped.len() < K {
            break;
        }
        let i = cluster.index_of(key).unwrap();
        if i > 1 && !standins.contains(key) {
            cluster.stop_peer(i).await.unwrap();
            stopped.push(i);
        }
    }
    assert_eq!(at_home - stopped.len(), K - 1);
    let reader = cluster.client(options()).unwrap();
    let (got, _) = common::get(&reader, &put.id, &put.key).await.unwrap();
    assert!(
        got == bytes,
        "the certificate reads back from its stand-ins"
    );
    reader.close().await;
    cluster.shutdown().await;
}

/// Six peers for k + m = 6 (the cluster of issue 18): with one down, every stripe goes on
/// the five others, one of them holding two of its shards (k + 1 distinct peers: one more
/// loss loses nothing); with two down, four peers are too few and the put is refused, named.
/// Once both are back, repair brings every shard home.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_six_peers_one_down_a_put_doubles_up_on_k_plus_one_peers_and_two_down_are_refused() {
    let mut cluster = LocalCluster::start(6, 3).await.unwrap();
    cluster.stop_peer(0).await.unwrap();
    let client = cluster.client(options()).unwrap();
    let puts = put_two(&client, 7).await;
    for put in &puts {
        assert_full(&cluster, put, K + 1);
        // Peer 0 is in every stripe: each has one shard on a stand-in.
        assert_eq!(put.shards_standing_in.len(), put.manifest.stripes.len());
    }
    client.close().await;

    cluster.stop_peer(1).await.unwrap();
    let client = cluster.client(options()).unwrap();
    for len in [50 << 10, 600 << 10] {
        let err = common::put(&client, &common::data(len, 99))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::TooFewPeers {
                    peers: 4,
                    needed: 5,
                    ..
                }
            ),
            "{err}"
        );
    }
    client.close().await;
    cluster.restart_peer(0).await.unwrap();
    cluster.restart_peer(1).await.unwrap();

    let report = repair(&cluster).await;
    let standing_in: usize = puts.iter().map(|p| p.shards_standing_in.len()).sum();
    assert_eq!(report.shards_moved as usize, standing_in);
    assert_eq!(report.shards_deleted as usize, standing_in);
    // The refused puts left unregistered shards (garbage collection's); the documents'
    // shards are home, each on its placed peer alone.
    assert_home(&cluster, &puts, false);
    let client = common::department(&cluster);
    for (put, seed) in puts.iter().zip([7, 1007]) {
        let len = if put.manifest.stripes.len() == 1 {
            50 << 10
        } else {
            600 << 10
        };
        assert_eq!(
            common::read(&client, &put.id, &put.key).await,
            common::data(len, seed)
        );
    }
    cluster.shutdown().await;
}
