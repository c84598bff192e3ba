//! A cluster of real peers in one process: round trips, lost peers, corruption, hostile
//! clients, a peer killed mid-put.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::wire::Raw;
use crate::common::*;
use dangan::chain::client::ChainError;
use dangan::client::{ClientError, stripe_key};
use dangan::cluster::LocalCluster;
use dangan::id::ShardId;
use dangan::identity::{Identity, Role};
use dangan::proto::{self, ErrorCode, Request, Response};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_of_several_sizes_round_trip() {
    let (cluster, client) = start_cluster(6, 3).await;
    for size in [0usize, 1, 50 << 10, (1 << 20) + 17, 3 << 20] {
        let bytes = data(size, size as u64);
        let receipt = put(&client, &bytes).await.unwrap();
        assert_eq!(receipt.manifest.size, size as u64);
        assert!(receipt.shards_missing.is_empty());
        let (out, report) = get(&client, &receipt.id, &receipt.key).await.unwrap();
        assert_eq!(out, bytes, "size {size}");
        assert_eq!(report.stripes_rebuilt, 0);
    }
    // Every shard of every stripe is on its placed peer, and on no other.
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_land_on_their_placed_peers() {
    let (cluster, client) = start_cluster(7, 3).await;
    let receipt = put(&client, &data(2 << 20, 5)).await.unwrap();
    for ids in &receipt.manifest.stripes {
        let placed = cluster.layout().place(&stripe_key(ids), ids.len()).unwrap();
        for (id, node) in ids.iter().zip(placed) {
            let i = cluster.index_of(&node.key).unwrap();
            assert!(cluster.peer(i).unwrap().store().has(id).unwrap());
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m_stopped_peers_lose_nothing_and_m_plus_one_names_the_stripes() {
    let (mut cluster, client) = start_cluster(6, 3).await;
    let bytes = data(2 << 20, 9);
    let receipt = put(&client, &bytes).await.unwrap();
    cluster.stop_peer(0).await.unwrap();
    cluster.stop_peer(3).await.unwrap();
    let (out, report) = get(&client, &receipt.id, &receipt.key).await.unwrap();
    assert_eq!(out, bytes);
    assert!(report.stripes_rebuilt > 0);

    cluster.stop_peer(1).await.unwrap();
    let fresh = department(&cluster);
    let t = std::time::Instant::now();
    let res = get(&fresh, &receipt.id, &receipt.key).await;
    eprintln!("get with m+1 down took {:?}", t.elapsed());
    match res {
        Err(ClientError::StripeUnavailable { stripe, k, .. }) => {
            assert_eq!(k, 4);
            assert!(stripe < receipt.manifest.stripe_count());
        }
        Err(ClientError::NotFound { .. }) => {
            panic!("the manifest is on all six peers; three are up")
        }
        other => panic!("expected an unavailable stripe, got {other:?}"),
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_shard_in_a_peer_store_is_survived_and_reported() {
    let (cluster, client) = start_cluster(6, 3).await;
    let bytes = data(600 << 10, 11);
    let receipt = put(&client, &bytes).await.unwrap();
    let ids = &receipt.manifest.stripes[0];
    let first = cluster.layout().place(&stripe_key(ids), ids.len()).unwrap()[0].key;
    let victim = cluster.index_of(&first).unwrap();
    let store = cluster.peer(victim).unwrap().store().clone();
    assert!(store.corrupt_for_test(&ids[0], 1000).unwrap());

    let (out, report) = get(&client, &receipt.id, &receipt.key).await.unwrap();
    assert_eq!(out, bytes);
    assert_eq!(report.corrupt, vec![(0, 0, first)]);
    assert_eq!(report.stripes_rebuilt, 1);
    let stats = cluster.peer(victim).unwrap().stats();
    assert_eq!(stats.corrupt_detected.load(Ordering::Relaxed), 1);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_no_account_on_chain_stores_nothing() {
    let cluster = LocalCluster::start(6, 3).await.unwrap();
    // It completes the handshake (peers admit any key) but holds no role on the chain.
    let stranger = Identity::generate(Role::Department);
    let client = client_as(&cluster, &stranger);
    let err = put(&client, &data(1000, 1)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::StripeNotStored { stored: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no account"), "{err}");
    let mut refused = 0;
    for i in 0..cluster.len() {
        let peer = cluster.peer(i).unwrap();
        assert_eq!(peer.store().usage().unwrap().shards, 0);
        refused += peer.stats().refused.load(Ordering::Relaxed);
    }
    assert!(refused >= 6, "every shard write was refused ({refused})");
    cluster.shutdown().await;
}

fn expect_error(resp: &Response, code: ErrorCode) {
    assert!(
        matches!(resp, Response::Error { code: c, .. } if *c == code),
        "expected {code:?}, got {resp:?}"
    );
}

/// A connection to peer 0 as a trusted client, for whole requests ([`Raw::ask`]).
async fn connect(cluster: &LocalCluster, identity: &Identity) -> Raw {
    let trust = Arc::new(cluster.membership().clone());
    let (raw, _) = Raw::connect(identity, cluster.peer(0).unwrap().addr(), trust).await;
    raw
}

/// A raw stream to peer 0 as a trusted client, for requests written byte by byte.
async fn raw_stream(
    cluster: &LocalCluster,
    identity: &Identity,
) -> (Raw, quinn::SendStream, quinn::RecvStream) {
    let raw = connect(cluster, identity).await;
    let (send, recv) = raw.conn.open_bi().await.unwrap();
    (raw, send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversized_and_abandoned_requests_leave_the_peer_healthy() {
    let cluster = LocalCluster::start(6, 3).await.unwrap();
    // The operator may store and delete: only the request's shape is refused here.
    let me = cluster.operator().clone();

    // Garbage header.
    let (_raw, mut send, mut recv) = raw_stream(&cluster, &me).await;
    send.write_all(&[5, 0, 0, 0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb])
        .await
        .unwrap();
    send.finish().unwrap();
    let resp: Response = proto::read_frame(&mut recv).await.unwrap();
    expect_error(&resp, ErrorCode::Malformed);

    // A frame length over the limit.
    let (_raw, mut send, mut recv) = raw_stream(&cluster, &me).await;
    send.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    let resp: Response = proto::read_frame(&mut recv).await.unwrap();
    expect_error(&resp, ErrorCode::TooLarge);

    // A shard body over the limit.
    let (_raw, mut send, mut recv) = raw_stream(&cluster, &me).await;
    let id = ShardId::of(b"x");
    proto::write_frame(
        &mut send,
        &Request::PutShard {
            id,
            len: u64::MAX,
            document: None,
        },
    )
    .await
    .unwrap();
    let resp: Response = proto::read_frame(&mut recv).await.unwrap();
    expect_error(&resp, ErrorCode::TooLarge);

    // A body that does not match its id.
    let raw = connect(&cluster, &me).await;
    let (resp, _) = raw
        .ask(
            &Request::PutShard {
                id,
                len: 3,
                document: None,
            },
            Some(b"abc"),
        )
        .await;
    expect_error(&resp, ErrorCode::HashMismatch);

    // Chain requests to a peer that runs no validator.
    let raw = connect(&cluster, &me).await;
    let (resp, _) = raw.ask(&Request::ChainStatus, None).await;
    expect_error(&resp, ErrorCode::NotValidator);

    // A client that vanishes halfway through a body.
    let body = data(100_000, 3);
    let (raw, mut send, _recv) = raw_stream(&cluster, &me).await;
    proto::write_frame(
        &mut send,
        &Request::PutShard {
            id: ShardId::of(&body),
            len: body.len() as u64,
            document: None,
        },
    )
    .await
    .unwrap();
    send.write_all(&body[..50_000]).await.unwrap();
    raw.endpoint.close(0u32.into(), b"gone");
    drop(raw);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let store = cluster.peer(0).unwrap().store();
    assert_eq!(store.usage().unwrap().shards, 0, "nothing was stored");
    assert!(!store.has(&ShardId::of(&body)).unwrap());

    // The peer still serves everyone else.
    let client = department(&cluster);
    let bytes = data(300 << 10, 4);
    let receipt = put(&client, &bytes).await.unwrap();
    assert_eq!(read(&client, &receipt.id, &receipt.key).await, bytes);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_killed_mid_put_never_leaves_an_unreadable_document() {
    for quorum in [None, Some(5)] {
        let mut cluster = LocalCluster::start(6, 3).await.unwrap();
        let client = cluster
            .client(dangan::client::ClientOptions {
                write_quorum: quorum,
                stripes_in_flight: 1,
                ..options()
            })
            .unwrap();
        let bytes = data(8 << 20, 21);
        let first_stripe = Arc::new(tokio::sync::Notify::new());
        let put_task = {
            let client = client.clone();
            let bytes = bytes.clone();
            let first_stripe = first_stripe.clone();
            tokio::spawn(async move {
                let notify = move |_done: u64, _total: u64| first_stripe.notify_one();
                client
                    .put(
                        std::io::Cursor::new(bytes.clone()),
                        Some(bytes.len() as u64),
                        info(),
                        &notify,
                    )
                    .await
            })
        };
        // Kill a peer once the first stripe is stored, while the rest is in flight.
        first_stripe.notified().await;
        assert!(!put_task.is_finished(), "the put must still be running");
        cluster.stop_peer(2).await.unwrap();
        match put_task.await.unwrap() {
            Ok(receipt) => {
                let (out, _) = get(&client, &receipt.id, &receipt.key).await.unwrap();
                assert_eq!(out, bytes, "quorum {quorum:?}");
            }
            Err(e) => {
                assert!(
                    quorum.is_none(),
                    "with quorum 5 of 6 the put must succeed: {e}"
                );
                assert!(
                    matches!(e, ClientError::StripeNotStored { .. }),
                    "a clean, named failure: {e}"
                );
            }
        }
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_cannot_hold_a_peer_hostage() {
    let tmp = tempfile::tempdir().unwrap();
    let limits = dangan::peer::PeerLimits {
        max_concurrent_requests: 2,
        queue_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let cluster = LocalCluster::start_in(tmp.path(), 6, 3, limits)
        .await
        .unwrap();
    // The operator may store and delete: only the request's shape is refused here.
    let me = cluster.operator().clone();

    // Two requests that announce a body and never send it take both request slots.
    let mut hung = Vec::new();
    for _ in 0..2 {
        let (raw, mut send, recv) = raw_stream(&cluster, &me).await;
        let req = Request::PutShard {
            id: ShardId::of(b"never sent"),
            len: 100_000,
            document: None,
        };
        proto::write_frame(&mut send, &req).await.unwrap();
        hung.push((raw, send, recv));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A third request waits at most the queue timeout, then is told the peer is busy.
    let raw = connect(&cluster, &me).await;
    let (resp, _) = raw.ask(&Request::Ping, None).await;
    expect_error(&resp, ErrorCode::Busy);

    // Once the request time limit passes, the hung requests are cut off and the slots free.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for (_raw, _send, recv) in &mut hung {
        assert!(
            proto::read_frame::<_, Response>(recv).await.is_err(),
            "the hung stream was reset"
        );
    }
    let raw = connect(&cluster, &me).await;
    let (resp, _) = raw.ask(&Request::Ping, None).await;
    assert_eq!(resp, Response::Pong);
    assert_eq!(cluster.peer(0).unwrap().store().usage().unwrap().shards, 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_registers_on_chain_and_a_get_refuses_what_is_not_registered() {
    let (cluster, client) = start_cluster(6, 3).await;
    let bytes = data(300 << 10, 31);
    let receipt = put(&client, &bytes).await.unwrap();
    let (height, _) = receipt
        .registered
        .expect("the embedded cluster has a chain");
    assert!(height >= 1);
    let state = cluster.ledger().state();
    assert!(state.document(&receipt.id).is_some());
    let record = client
        .chain()
        .unwrap()
        .check_registered(&receipt.id)
        .await
        .unwrap();
    assert_eq!(record.height, height);

    // Shards and manifest written without a registration: readable bytes on the peers, but
    // not a document.
    // The department itself, with no chain linked: the bytes go out, nothing registers.
    let unlinked = dangan::client::Client::new(
        cluster.department(),
        Arc::new(cluster.membership().clone()),
        cluster.layout().clone(),
        dangan::client::ClientOptions {
            bind: "127.0.0.1:0".parse().unwrap(),
            chain: None,
            ..options()
        },
    )
    .unwrap();
    let orphan = put(&unlinked, &bytes).await.unwrap();
    assert!(orphan.registered.is_none());
    match get(&client, &orphan.id, &orphan.key).await {
        Err(ClientError::Chain(ChainError::NotRegistered(id))) => assert_eq!(id, orphan.id),
        other => panic!("expected NotRegistered, got {other:?}"),
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_put_is_bounded_and_checked_whole() {
    let cluster = LocalCluster::start(6, 3).await.unwrap();
    let me = cluster.operator().clone();
    let store = cluster.peer(0).unwrap().store().clone();
    let shard = data(12 << 10, 31);
    let shard_id = ShardId::of(&shard);
    let manifest = b"not really a manifest".to_vec();
    let manifest_id = dangan::id::DocumentId::of(&manifest);

    // More shards than a batch may carry, and more bytes: refused before any body is read.
    let (_raw, mut send, mut recv) = raw_stream(&cluster, &me).await;
    let many = vec![(shard_id, 1); proto::MAX_PUT_MANY + 1];
    let req = Request::PutMany {
        shards: many,
        manifest: None,
        document: manifest_id,
    };
    proto::write_frame(&mut send, &req).await.unwrap();
    let resp: Response = proto::read_frame(&mut recv).await.unwrap();
    expect_error(&resp, ErrorCode::TooLarge);
    let (_raw, mut send, mut recv) = raw_stream(&cluster, &me).await;
    let req = Request::PutMany {
        shards: vec![(shard_id, proto::MAX_PUT_MANY_BODY), (shard_id, u64::MAX)],
        manifest: None,
        document: manifest_id,
    };
    proto::write_frame(&mut send, &req).await.unwrap();
    let resp: Response = proto::read_frame(&mut recv).await.unwrap();
    expect_error(&resp, ErrorCode::TooLarge);

    // A good shard with a manifest that does not hash to its id: neither is kept.
    let raw = connect(&cluster, &me).await;
    let req = Request::PutMany {
        shards: vec![(shard_id, shard.len() as u64)],
        manifest: Some((dangan::id::DocumentId([7; 32]), manifest.len() as u64)),
        document: manifest_id,
    };
    let (resp, _) = raw.ask(&req, Some(&[&shard[..], &manifest].concat())).await;
    expect_error(&resp, ErrorCode::HashMismatch);
    assert!(!store.has(&shard_id).unwrap());

    // Both good: both durable, one outcome each.
    let raw = connect(&cluster, &me).await;
    let req = Request::PutMany {
        shards: vec![(shard_id, shard.len() as u64)],
        manifest: Some((manifest_id, manifest.len() as u64)),
        document: manifest_id,
    };
    let (resp, _) = raw.ask(&req, Some(&[&shard[..], &manifest].concat())).await;
    assert!(
        matches!(&resp, Response::StoredMany(o) if o.len() == 2),
        "got {resp:?}"
    );
    assert!(store.has(&shard_id).unwrap());
    assert_eq!(store.get_blob(&manifest_id.0).unwrap(), Some(manifest));
    cluster.shutdown().await;
}

/// A certificate (one stripe) goes out as one `PutMany` per peer; when a peer that should
/// hold a copy of its manifest is down, the manifest still reaches as many live peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_put_with_a_manifest_replica_down_still_reads() {
    let mut cluster = LocalCluster::start(6, 3).await.unwrap();
    let down = cluster.peer(0).unwrap().id();
    cluster.stop_peer(0).await.unwrap();
    let client = cluster
        .client(dangan::client::ClientOptions {
            write_quorum: Some(5),
            ..options()
        })
        .unwrap();
    // Manifests are placed by the document id (random key): put until one is placed on the
    // stopped peer (half of them are).
    for attempt in 0.. {
        assert!(attempt < 40, "no manifest was ever placed on peer 0");
        let bytes = data(50 << 10, attempt);
        let receipt = put(&client, &bytes).await.unwrap();
        // Peer 0's shard went to a stand-in (a peer of the stripe: six peers, six shards).
        assert_eq!(receipt.shards_stored, 6);
        assert!(receipt.shards_missing.is_empty());
        assert_eq!(receipt.shards_standing_in.len(), 1);
        let replicas = client.manifest_nodes(&receipt.id).unwrap();
        if !replicas.iter().any(|n| n.key == down) {
            continue;
        }
        let copies = (1..6)
            .filter(|&i| {
                let store = cluster.peer(i).unwrap().store();
                store.get_blob(&receipt.id.0).unwrap().is_some()
            })
            .count();
        assert_eq!(
            copies,
            replicas.len(),
            "a live peer replaces the stopped one"
        );
        let (out, _) = get(&client, &receipt.id, &receipt.key).await.unwrap();
        assert_eq!(out, bytes);
        break;
    }
    cluster.shutdown().await;
}

/// A peer keeps only the last `MAX_OPEN_DOCUMENTS` documents open on a connection; a client
/// that read more than that on one connection reads the first one again (it opens it anew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_read_again_after_more_than_a_connection_keeps_open_still_reads() {
    let (cluster, client) = start_cluster(6, 3).await;
    let count = dangan::proto::MAX_OPEN_DOCUMENTS + 2;
    let mut docs = Vec::new();
    for i in 0..count {
        let bytes = data(20 << 10, 500 + i as u64);
        let receipt = put(&client, &bytes).await.unwrap();
        docs.push((receipt, bytes));
    }
    for (receipt, bytes) in docs.iter().chain(docs.iter().take(3)) {
        let got = read(&client, &receipt.id, &receipt.key).await;
        assert_eq!(&got, bytes, "document {} read back differs", receipt.id);
    }
    cluster.shutdown().await;
}
