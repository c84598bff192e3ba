//! A validator host that lies: a test server speaking the real protocol (its own node
//! identity, a QUIC endpoint from `dangan::tls`, frames from `dangan::proto`) that forwards
//! every request to the cluster's real validator host and tampers with the answers it
//! returns. It claims a stranger is an operator, hides a document from the document list,
//! and replays a layout from before a later block. Every peer refuses the stranger, repair
//! still finds the hidden document, and a client that has seen newer state notices the
//! replay; the honest answers the liar forwards untouched still work. Real peers, real
//! QUIC, real redb, the real validator; only the liar is the test's.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::common;
use crate::common::wire::Raw;
use dangan::chain::block::SignedHeader;
use dangan::chain::client::{ChainClient, ChainError, ChainLink};
use dangan::chain::proof::{Proven, ProvenAccount, ProvenState};
use dangan::chain::state::{Account, Genesis, GenesisAccount, State};
use dangan::chain::store::genesis_header;
use dangan::chain::tx::TxBody;
use dangan::client::{Client, ClientOptions, stripe_key};
use dangan::cluster::LocalCluster;
use dangan::id::{DocumentId, ShardId};
use dangan::identity::{Identity, PublicId, Role};
use dangan::net::{Net, NetOptions};
use dangan::ops::{self, OpsError, OpsOptions};
use dangan::placement::NodeInfo;
use dangan::proto::{self, ErrorCode, MAX_LIST, Request, Response};
use dangan::tls::{self, AllowAny, Membership};

/// How the liar claims that a key is an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Claim {
    /// The real validator's answer, its account entry changed to an operator's.
    EditedEntry,
    /// A whole state of its own making, self-consistent, whose header only the liar's own
    /// validator key signed, at a height far above the chain's.
    OwnChain,
}

/// What the liar tampers with.
#[derive(Default)]
struct Lies {
    /// This key is claimed to be an operator.
    operator: Option<(PublicId, Claim)>,
    /// This document is left out of every document list.
    hide: Option<DocumentId>,
    /// This `GetLayout` answer (a genuine, older one) is sent instead of the current one.
    layout: Option<Vec<u8>>,
}

/// What the liar needs to serve: where the truth is, and what to make of it.
struct Upstream {
    net: Net,
    honest: NodeInfo,
    lies: Mutex<Lies>,
    /// The liar's own validator key (in no genesis), for [`Claim::OwnChain`].
    signer: Identity,
}

/// The lying validator host: it accepts any key, forwards each request to the real
/// validator host (as the operator, so it sees what a validator host sees) and returns
/// the answer as its [`Lies`] say.
struct Liar {
    info: NodeInfo,
    endpoint: quinn::Endpoint,
    upstream: Arc<Upstream>,
    task: tokio::task::JoinHandle<()>,
}

impl Liar {
    async fn start(cluster: &LocalCluster) -> Liar {
        let identity = Identity::generate(Role::Node);
        let endpoint = tls::endpoint(loopback(), &identity, Arc::new(AllowAny)).unwrap();
        let honest = cluster.chain().hosts[0].clone();
        let net = Net::new(
            cluster.operator(),
            Arc::new(Membership::from_iter([honest.key])),
            NetOptions {
                bind: loopback(),
                ..NetOptions::default()
            },
        )
        .unwrap();
        let upstream = Arc::new(Upstream {
            net,
            honest,
            lies: Mutex::new(Lies::default()),
            signer: Identity::generate(Role::Validator),
        });
        let task = tokio::spawn(accept(endpoint.clone(), upstream.clone()));
        Liar {
            info: NodeInfo {
                key: identity.public(),
                zone: "validator".into(),
                weight: 0,
                addr: endpoint.local_addr().unwrap().to_string(),
            },
            endpoint,
            upstream,
            task,
        }
    }

    fn lie(&self, f: impl FnOnce(&mut Lies)) {
        f(&mut self.upstream.lies.lock().unwrap());
    }

    /// From now on, answers `GetLayout` with the real validator's answer of now.
    async fn freeze_layout(&self) -> u64 {
        let body = self
            .upstream
            .net
            .fetch(
                &self.upstream.honest,
                &Request::GetLayout,
                None,
                proto::MAX_CHAIN_BODY,
            )
            .await
            .unwrap()
            .unwrap();
        let state: ProvenState = postcard::from_bytes(&body).unwrap();
        self.lie(|l| l.layout = Some(body));
        state.height()
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        tls::close(&self.endpoint, b"done").await;
        self.upstream.net.close().await;
    }
}

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn accept(endpoint: quinn::Endpoint, upstream: Arc<Upstream>) {
    while let Some(incoming) = endpoint.accept().await {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(serve(send, recv, upstream.clone()));
            }
        });
    }
}

/// Body bytes that follow a request frame.
fn body_len(req: &Request) -> u64 {
    match req {
        Request::PutShard { len, .. }
        | Request::PutManifest { len, .. }
        | Request::SubmitTx { len }
        | Request::Raft { len, .. }
        | Request::Endorse { len }
        | Request::OpenDocument { len, .. } => *len,
        Request::PutMany {
            shards, manifest, ..
        } => shards.iter().map(|(_, l)| l).sum::<u64>() + manifest.map_or(0, |(_, l)| l),
        _ => 0,
    }
}

/// One request: forwarded to the real validator host, its answer tampered with.
async fn serve(mut send: quinn::SendStream, mut recv: quinn::RecvStream, up: Arc<Upstream>) {
    let Ok(req) = proto::read_frame::<_, Request>(&mut recv).await else {
        return;
    };
    let Ok(body) = proto::read_body(&mut recv, body_len(&req)).await else {
        return;
    };
    let body = (!body.is_empty()).then(|| Bytes::from(body));
    let (resp, answer) = match up.net.exchange(&up.honest, &req, body.as_ref()).await {
        Ok((resp, mut stream)) => {
            let len = match &resp {
                Response::ChainBody { len }
                | Response::Shard { len }
                | Response::Manifest { len } => *len,
                _ => 0,
            };
            match proto::read_body(&mut stream, len).await {
                Ok(answer) => (resp, answer),
                Err(e) => (unavailable(e.to_string()), Vec::new()),
            }
        }
        Err(e) => {
            let code = e.remote_code().unwrap_or(ErrorCode::Unavailable);
            let resp = Response::Error {
                code,
                message: e.to_string(),
            };
            (resp, Vec::new())
        }
    };
    let answer = match (&req, &resp) {
        (_, Response::ChainBody { .. }) => tamper(&up, &req, answer),
        _ => answer,
    };
    let resp = match resp {
        Response::ChainBody { .. } => Response::ChainBody {
            len: answer.len() as u64,
        },
        other => other,
    };
    if proto::write_frame(&mut send, &resp).await.is_err() {
        return;
    }
    let _ = send.write_all(&answer).await;
    let _ = send.finish();
}

fn unavailable(message: String) -> Response {
    Response::Error {
        code: ErrorCode::Unavailable,
        message,
    }
}

/// The answer to `req` as the liar's [`Lies`] say.
fn tamper(up: &Upstream, req: &Request, answer: Vec<u8>) -> Vec<u8> {
    let lies = up.lies.lock().unwrap();
    match req {
        Request::GetAccount { id } => match lies.operator {
            Some((who, claim)) if who == *id => {
                let real: ProvenAccount = postcard::from_bytes(&answer).unwrap();
                let forged = match claim {
                    Claim::EditedEntry => ProvenAccount {
                        account: Some(Account {
                            role: Role::Operator,
                            nonce: 0,
                        }),
                        ..real
                    },
                    Claim::OwnChain => own_chain(&up.signer, id, real.state.height() + 1000),
                };
                postcard::to_allocvec(&forged).unwrap()
            }
            _ => answer,
        },
        Request::ListDocuments { .. } => match lies.hide {
            Some(hidden) => {
                let mut page: DocumentsPage = postcard::from_bytes(&answer).unwrap();
                for bucket in &mut page.range.buckets {
                    bucket.retain(|(k, _)| k != hidden.as_bytes());
                }
                postcard::to_allocvec(&page).unwrap()
            }
            None => answer,
        },
        Request::GetLayout => lies.layout.clone().unwrap_or(answer),
        _ => answer,
    }
}

/// A state of the liar's own making in which `who` is an operator, after a block at
/// `height` that the liar's own validator key alone signed: self-consistent, but not the
/// chain's.
fn own_chain(signer: &Identity, who: &PublicId, height: u64) -> ProvenAccount {
    let genesis = Genesis {
        chain_id: "local".into(),
        validators: vec![GenesisAccount::of(signer, Role::Validator)],
        accounts: vec![GenesisAccount {
            id: *who,
            ..GenesisAccount::of(signer, Role::Operator)
        }],
        nodes: vec![],
    };
    let state = State::genesis(&genesis).unwrap();
    let mut header = SignedHeader {
        header: genesis_header(&state),
        signatures: vec![],
    };
    header.header.height = height;
    header.sign(signer);
    ProvenAccount::of(&state, header, who)
}

/// `proof::ProvenDocuments` with its `RangeProof` spelled out: the same serde shape, so
/// the liar can edit the page's entries.
#[derive(Serialize, Deserialize)]
struct DocumentsPage {
    state: ProvenState,
    range: RangeMirror,
}

#[derive(Serialize, Deserialize)]
struct RangeMirror {
    first: u16,
    buckets: Vec<Vec<([u8; 32], [u8; 32])>>,
    bucket_roots: Vec<[u8; 32]>,
    group_roots: Vec<[u8; 32]>,
}

impl DocumentsPage {
    fn ids(&self) -> Vec<DocumentId> {
        self.range
            .buckets
            .iter()
            .flatten()
            .map(|(k, _)| DocumentId(*k))
            .collect()
    }
}

/// A chain link to `hosts`, with the cluster's validator set.
fn link(cluster: &LocalCluster, hosts: &[&NodeInfo]) -> ChainLink {
    ChainLink {
        hosts: hosts.iter().map(|h| (*h).clone()).collect(),
        validators: cluster.chain().validators.clone(),
    }
}

/// A chain client of `who` over `hosts` alone.
fn chain_client(cluster: &LocalCluster, who: &Identity, hosts: &[&NodeInfo]) -> ChainClient {
    let trust: Membership = hosts.iter().map(|h| h.key).collect();
    let net = Net::new(
        who,
        Arc::new(trust),
        NetOptions {
            bind: loopback(),
            ..NetOptions::default()
        },
    )
    .unwrap();
    ChainClient::new(net, who, link(cluster, hosts), Duration::from_secs(5))
}

/// The operator's client of the cluster, asking the chain at `hosts` (in that order).
fn operator_via(cluster: &LocalCluster, hosts: &[&NodeInfo]) -> Client {
    let trust: Membership = cluster
        .membership()
        .members()
        .into_iter()
        .chain(hosts.iter().map(|h| h.key))
        .collect();
    Client::with_layouts(
        cluster.operator(),
        Arc::new(trust),
        cluster.layout().clone(),
        None,
        ClientOptions {
            bind: loopback(),
            chain: Some(link(cluster, hosts)),
            ..common::options()
        },
    )
    .unwrap()
}

fn quiet() -> &'static (dyn Fn(ops::Progress) + Send + Sync) {
    &|_| {}
}

/// Not served: refused, or access could not be checked (`Unavailable`), because the
/// liar's answer did not prove itself, and the message says so.
fn not_served(resp: &Response) -> bool {
    matches!(
        resp,
        Response::Error {
            code: ErrorCode::Refused | ErrorCode::Unavailable,
            message,
        } if message.contains("from validator host")
            && message.contains("was refused")
            && message.contains("faulty or lying")
    )
}

/// The stranger's requests that only operators and storage nodes may make, on a peer
/// holding `shard`.
fn maintenance(shard: ShardId, document: DocumentId) -> Vec<Request> {
    vec![
        Request::ListShards {
            after: None,
            limit: 100,
        },
        Request::Usage,
        Request::Scrub {
            after: None,
            limit: 100,
        },
        Request::DeleteShard {
            id: shard,
            document,
        },
        Request::GetShard { id: shard },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranger_a_lying_validator_host_calls_an_operator_is_refused_by_every_peer() {
    let (cluster, dept) = common::start_cluster(6, 3).await;
    let document = common::put(&dept, &common::data(300 << 10, 1))
        .await
        .unwrap()
        .id;
    dept.close().await;
    let stranger = Identity::generate(Role::Citizen);
    let liar = Liar::start(&cluster).await;
    liar.lie(|l| l.operator = Some((stranger.public(), Claim::EditedEntry)));
    for i in 0..cluster.len() {
        cluster.link_peer(i, link(&cluster, &[&liar.info])).unwrap();
    }

    // The liar does claim it, and the chain says the stranger has no account.
    let (raw, who) = Raw::connect(
        &stranger,
        liar.info.addr.parse().unwrap(),
        Arc::new(AllowAny),
    )
    .await;
    assert_eq!(who, liar.info.key);
    let (resp, body) = raw
        .ask(
            &Request::GetAccount {
                id: stranger.public(),
            },
            None,
        )
        .await;
    assert!(matches!(resp, Response::ChainBody { .. }), "{resp:?}");
    let claimed: ProvenAccount = postcard::from_bytes(&body).unwrap();
    assert_eq!(
        claimed.account.as_ref().map(|a| a.role),
        Some(Role::Operator)
    );
    raw.close().await;
    let honest = chain_client(&cluster, &stranger, &[&cluster.chain().hosts[0]]);
    assert_eq!(honest.account(&stranger.public()).await.unwrap(), None);
    honest.net().close().await;

    for claim in [Claim::EditedEntry, Claim::OwnChain] {
        liar.lie(|l| l.operator = Some((stranger.public(), claim)));
        if claim == Claim::OwnChain {
            // A whole state in which the stranger is an operator, newer than the chain's,
            // signed by the liar's own validator key alone.
            let (raw, _) = Raw::connect(
                &stranger,
                liar.info.addr.parse().unwrap(),
                Arc::new(AllowAny),
            )
            .await;
            let (_, body) = raw
                .ask(
                    &Request::GetAccount {
                        id: stranger.public(),
                    },
                    None,
                )
                .await;
            raw.close().await;
            let own: ProvenAccount = postcard::from_bytes(&body).unwrap();
            assert_eq!(own.account.map(|a| a.role), Some(Role::Operator));
            assert!(own.state.height() > claimed.state.height());
            let signers: Vec<PublicId> = own.state.header.signatures.iter().map(|s| s.0).collect();
            assert_eq!(signers, vec![liar.upstream.signer.public()]);
            assert_eq!(own.state.top.root(), own.state.header.header.state_root);
        }
        for i in 0..cluster.len() {
            let peer = cluster.peer(i).unwrap();
            let held = peer.store().list().unwrap();
            let shard = held[0];
            let refs = peer.store().refcount(&shard).unwrap();
            let addr = peer.addr();
            let (raw, _) = Raw::connect(&stranger, addr, Arc::new(AllowAny)).await;
            for req in maintenance(shard, document) {
                let (resp, body) = raw.ask(&req, None).await;
                assert!(
                    not_served(&resp) && body.is_empty(),
                    "peer {i} served the stranger ({claim:?}) {req:?}: {resp:?}"
                );
            }
            raw.close().await;
            // Nothing changed.
            assert_eq!(peer.store().list().unwrap(), held);
            assert_eq!(peer.store().refcount(&shard).unwrap(), refs);

            // The operator, whose account the liar passes on untouched, is served.
            let (raw, _) = Raw::connect(cluster.operator(), addr, Arc::new(AllowAny)).await;
            let (resp, _) = raw
                .ask(
                    &Request::ListShards {
                        after: None,
                        limit: MAX_LIST,
                    },
                    None,
                )
                .await;
            assert_eq!(resp, Response::List(held.clone()), "peer {i}");
            let (resp, _) = raw.ask(&Request::Usage, None).await;
            assert!(matches!(resp, Response::Usage(u) if u.shards == held.len() as u64));
            raw.close().await;
        }
    }
    liar.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_finds_the_document_a_lying_validator_host_hides() {
    let (cluster, dept) = common::start_cluster(6, 3).await;
    let mut docs = Vec::new();
    for seed in 0..3 {
        let bytes = common::data(200 << 10, seed);
        docs.push((common::put(&dept, &bytes).await.unwrap(), bytes));
    }
    let (hidden, hidden_bytes) = &docs[1];
    let liar = Liar::start(&cluster).await;
    liar.lie(|l| l.hide = Some(hidden.id));
    let honest = &cluster.chain().hosts[0];

    // One shard of the hidden document is lost.
    let ids = &hidden.manifest.stripes[0];
    let placed = cluster.layout().place(&stripe_key(ids), ids.len()).unwrap();
    let store = cluster
        .peer(cluster.index_of(&placed[0].key).unwrap())
        .unwrap()
        .store();
    store.delete(&ids[0], &hidden.id).unwrap();
    assert!(!store.has(&ids[0]).unwrap());

    // The liar's page leaves the hidden document out; the chain holds it.
    let (raw, _) = Raw::connect(
        cluster.operator(),
        liar.info.addr.parse().unwrap(),
        Arc::new(AllowAny),
    )
    .await;
    let list = Request::ListDocuments {
        after: None,
        limit: MAX_LIST,
    };
    let (_, body) = raw.ask(&list, None).await;
    let page: DocumentsPage = postcard::from_bytes(&body).unwrap();
    raw.close().await;
    let mut all: Vec<DocumentId> = docs.iter().map(|(p, _)| p.id).collect();
    all.sort();
    let shown: Vec<DocumentId> = all.iter().copied().filter(|d| *d != hidden.id).collect();
    assert_eq!(page.ids(), shown);
    let op = operator_via(&cluster, &[honest]);
    assert_eq!(ops::documents(&op).await.unwrap(), all);
    op.close().await;

    // With the liar alone, no list is acted on: repair stops, nothing is written.
    let op = operator_via(&cluster, &[&liar.info]);
    let err = ops::documents(&op).await.unwrap_err();
    assert!(
        matches!(err, OpsError::Chain(ChainError::Unproven { .. })),
        "{err}"
    );
    let err = ops::converge(&op, None, &OpsOptions::default(), quiet())
        .await
        .unwrap_err();
    assert!(
        matches!(err, OpsError::Chain(ChainError::Unproven { .. })),
        "{err}"
    );
    assert!(!store.has(&ids[0]).unwrap());
    op.close().await;

    // Asked first, the liar is refused and the honest host's list taken: repair rebuilds
    // the hidden document's shard.
    let op = operator_via(&cluster, &[&liar.info, honest]);
    assert_eq!(ops::documents(&op).await.unwrap(), all);
    let report = ops::converge(&op, None, &OpsOptions::default(), quiet())
        .await
        .unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.documents, 3);
    assert_eq!(report.shards_rebuilt, 1);
    assert!(store.has(&ids[0]).unwrap());
    op.close().await;
    assert_eq!(
        &common::read(&dept, &hidden.id, &hidden.key).await,
        hidden_bytes
    );
    dept.close().await;
    liar.stop().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_saw_newer_state_refuses_a_replayed_layout() {
    let (mut cluster, dept) = common::start_cluster(6, 3).await;
    dept.close().await;
    let liar = Liar::start(&cluster).await;
    let old = cluster.layout().clone();
    let frozen = liar.freeze_layout().await;
    // A later block: the operator drains a peer, a new layout.
    let drained = cluster.peer(0).unwrap().id();
    let (_, new) = cluster
        .change_layout(TxBody::DrainNode { node: drained })
        .await
        .unwrap();
    assert_ne!(new, old);
    let honest = cluster.chain().hosts[0].clone();
    let who = Identity::generate(Role::Citizen);

    // The replay is genuine: a client that has seen nothing newer takes it.
    let fresh = chain_client(&cluster, &who, &[&liar.info]);
    assert_eq!(fresh.layouts().await.unwrap().current, old);
    fresh.net().close().await;

    // A client that has seen newer state (an account, passed on untouched) refuses it.
    let client = chain_client(&cluster, &who, &[&liar.info]);
    client.account(&cluster.operator().public()).await.unwrap();
    match client.layouts().await {
        Err(ChainError::Stale { got, seen, .. }) => {
            assert_eq!(got, frozen);
            assert!(seen > got, "seen {seen}, got {got}");
        }
        other => panic!("the replayed layout was not refused: {other:?}"),
    }
    client.net().close().await;

    // With the honest host second, it gets the current layout.
    let client = chain_client(&cluster, &who, &[&liar.info, &honest]);
    client.account(&cluster.operator().public()).await.unwrap();
    assert_eq!(client.layouts().await.unwrap().current, new);
    client.net().close().await;
    liar.stop().await;
    cluster.shutdown().await;
}
