//! Nobody starved: keys with no account on chain (strangers) share small budgets on every
//! peer, a request takes its slot only once its whole header arrived, refusals are
//! rate-limited per key and cost at most one chain query, and the leader's submit queue is
//! bounded. Each test counts answers and chain queries, never time (the figures under
//! abuse are `dangan bench abuse`'s).

use std::sync::Arc;
use std::time::Duration;

use crate::common;
use crate::common::wire::Raw;
use dangan::cluster::LocalCluster;
use dangan::id::DocumentId;
use dangan::identity::{Identity, Role};
use dangan::peer::PeerLimits;
use dangan::proto::{self, ErrorCode, Request, Response};
use dangan::tls::AllowAny;

fn is_error(resp: &Response, code: ErrorCode) -> bool {
    matches!(resp, Response::Error { code: c, .. } if *c == code)
}

/// A connection to `addr` as `who` (the peers accept any key and authorise per request).
async fn connect(who: &Identity, addr: std::net::SocketAddr) -> Raw {
    Raw::connect(who, addr, Arc::new(AllowAny)).await.0
}

/// A stream that sent one byte of a header and nothing more.
async fn half_open(raw: &Raw) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = raw.conn.open_bi().await.unwrap();
    send.write_all(&[7]).await.unwrap();
    (send, recv)
}

/// Whether the peer answers a ping on this connection (Busy and resets are a no).
async fn pong(raw: &Raw) -> Result<(), String> {
    let (mut send, mut recv) = raw.conn.open_bi().await.map_err(|e| e.to_string())?;
    proto::write_frame(&mut send, &Request::Ping)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    match proto::read_frame::<_, Response>(&mut recv).await {
        Ok(Response::Pong) => Ok(()),
        Ok(other) => Err(format!("{other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_streams_take_no_slot_and_strangers_past_their_budget_are_refused() {
    let limits = PeerLimits {
        // Four member slots: six streams holding one each would leave none.
        max_concurrent_requests: 4,
        streams_per_connection: 8,
        stranger_connections: 2,
        header_timeout: Duration::from_millis(500),
        ..PeerLimits::default()
    };
    let (cluster, department) = {
        let cluster = LocalCluster::start_with(6, 3, limits).await.unwrap();
        let department = common::department(&cluster);
        (cluster, department)
    };
    let put = common::put(&department, &common::data(100_000, 1))
        .await
        .unwrap();
    let addr = cluster.peer(0).unwrap().addr();

    // A stranger fills its connection's share with half-open streams: the next stream is
    // answered Busy at once, and a third connection of strangers is closed.
    let stranger = Identity::generate(Role::Citizen);
    let raw = connect(&stranger, addr).await;
    let mut hung = Vec::new();
    for _ in 0..8 {
        hung.push(half_open(&raw).await);
    }
    let over = pong(&raw).await.unwrap_err();
    assert!(over.contains("Busy"), "{over}");
    // One after the other: the peer admits connections in the order their handshakes
    // finish, which two made at once need not keep.
    let second = connect(&Identity::generate(Role::Citizen), addr).await;
    assert!(pong(&second).await.is_ok(), "a second stranger connection");
    let third = connect(&Identity::generate(Role::Citizen), addr).await;
    assert!(
        pong(&third).await.is_err(),
        "past the strangers' connections"
    );

    // An operator's own half-open streams take none of the four member slots either.
    let operator = connect(cluster.operator(), addr).await;
    let mut own = Vec::new();
    for _ in 0..6 {
        own.push(half_open(&operator).await);
    }
    assert_eq!(pong(&operator).await, Ok(()));

    // Meanwhile the department is served whole documents by every peer.
    let (bytes, _) = common::get(&department, &put.id, &put.key).await.unwrap();
    assert_eq!(bytes, common::data(100_000, 1));

    // A header not whole within its time is reset, and frees its place on the connection.
    for (_send, recv) in hung.iter_mut().chain(own.iter_mut()) {
        assert!(proto::read_frame::<_, Response>(recv).await.is_err());
    }
    assert_eq!(pong(&raw).await, Ok(()), "the stranger's share freed");

    department.close().await;
    for raw in [raw, second, third, operator] {
        raw.close().await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_cost_one_chain_query_each_and_none_past_their_rate() {
    let limits = PeerLimits {
        refusals_per_second: 1,
        // No read records to root on chain while chain queries are counted.
        audit_interval: Duration::from_secs(3600),
        ..PeerLimits::default()
    };
    let cluster = LocalCluster::start_with(6, 3, limits).await.unwrap();
    let department = common::department(&cluster);
    let put = common::put(&department, &common::data(10_000, 2))
        .await
        .unwrap();
    // A peer that holds the document's manifest, and the department reading it there.
    let mut holder = None;
    for i in 0..cluster.len() {
        let peer = cluster.peer(i).unwrap();
        let own = connect(cluster.department(), peer.addr()).await;
        let (resp, _) = own.ask(&Request::GetManifest { id: put.id }, None).await;
        if matches!(resp, Response::Manifest { .. }) {
            holder = Some((peer, own));
            break;
        }
        own.close().await;
    }
    let (peer, own) = holder.expect("a peer holds the manifest");

    // Another department asks for manifests nobody registered, one after the other.
    let flooder = connect(cluster.other_department(), peer.addr()).await;
    // Served once the connection is sorted (a member): its lookup is not counted below.
    assert_eq!(pong(&flooder).await, Ok(()));
    let before = peer.access().queries();
    let (mut refused, mut busy) = (0u64, 0u64);
    for i in 0u32..200 {
        let id = DocumentId::of(&i.to_le_bytes());
        match flooder.ask(&Request::GetManifest { id }, None).await.0 {
            r if is_error(&r, ErrorCode::Refused) => refused += 1,
            r if is_error(&r, ErrorCode::Busy) => busy += 1,
            other => panic!("{other:?}"),
        }
    }
    let queries = peer.access().queries() - before;
    assert!(refused >= 1 && busy >= 1, "refused {refused}, busy {busy}");
    assert!(
        queries <= refused,
        "{queries} chain queries for {refused} refusals and {busy} answered Busy"
    );

    // The department's own reads are served as before.
    let (resp, _) = own.ask(&Request::GetManifest { id: put.id }, None).await;
    assert!(matches!(resp, Response::Manifest { .. }), "{resp:?}");
    department.close().await;
    own.close().await;
    flooder.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_submit_queue_answers_busy_and_a_stranger_takes_no_place_in_it() {
    let cluster = LocalCluster::start(3, 3).await.unwrap();
    let ledger = cluster.ledger().clone();
    let chain = ledger.chain_key();
    ledger.set_submit_queue(1);
    let host: std::net::SocketAddr = cluster.chain().hosts[0].addr.parse().unwrap();
    let dept = cluster.department().clone();
    let nonce = ledger.account(&dept.public()).unwrap().nonce;
    let submit = |tx: dangan::chain::tx::SignedTx, who: Identity| async move {
        let raw = connect(&who, host).await;
        let body = tx.encode();
        let req = Request::SubmitTx {
            len: body.len() as u64,
        };
        let (resp, _) = raw.ask(&req, Some(&body)).await;
        raw.close().await;
        resp
    };

    // A stranger's transaction is refused before it is queued.
    let stranger = Identity::generate(Role::Department);
    let resp = submit(
        common::chain::register(&chain, &stranger, 1),
        stranger.clone(),
    )
    .await;
    assert!(is_error(&resp, ErrorCode::Refused), "{resp:?}");
    assert_eq!(ledger.queued(), 0);

    // A transaction whose nonce is ahead waits for the missing one: the queue is full.
    let ahead = common::chain::register(&chain, &dept, nonce + 2);
    let waiting = tokio::spawn(submit(ahead, dept.clone()));
    while ledger.queued() == 0 && !waiting.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ledger.queued(), 1);
    let next = common::chain::register(&chain, &dept, nonce + 1);
    let resp = submit(next.clone(), dept.clone()).await;
    assert!(is_error(&resp, ErrorCode::Busy), "{resp:?}");

    // Once the waiting one is answered (its gap never filled), the queue takes more.
    let resp = waiting.await.unwrap();
    assert!(is_error(&resp, ErrorCode::Refused), "{resp:?}");
    let resp = submit(next, dept).await;
    assert!(matches!(resp, Response::Committed { .. }), "{resp:?}");
    cluster.shutdown().await;
}
