//! Read delegations on a real local cluster (QUIC, redb, the chain): a citizen's browser
//! signs a delegation, the gateway (the department's client) fetches the document sealed
//! through the portal's HTTP endpoints and relays ciphertext only; the citizen decrypts with
//! its own key. Every bad delegation is refused by the peers themselves, and the audit
//! records the citizen's read via the gateway.

use std::sync::Arc;

use dangan::audit::{self, ReadKind};
use dangan::client::{Client, ClientError, SEALED_MAGIC};
use dangan::crypto::SegmentCipher;
use dangan::delegation::{
    Delegation, DelegationJson, ListingJson, ListingRequest, MAX_DELEGATION_MS,
};
use dangan::gateway::portal::{self, Portal};
use dangan::grant::WrappedKey;
use dangan::id::DocumentId;
use dangan::identity::{Identity, PublicId, Role};
use dangan::manifest::Manifest;
use dangan::net::NetError;
use dangan::proto::{self, ErrorCode, Opened, Request};
use dangan::receipt::Receipt;

use crate::common;

/// Serves the portal of `gateway` on 127.0.0.1 (an ephemeral port): its base URL.
async fn serve_portal(gateway: &Client) -> (String, tokio::task::JoinHandle<()>) {
    let portal = Portal::new(gateway.clone(), "civil-registry".into())
        .await
        .unwrap();
    let app = portal::router(Arc::new(portal));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), server)
}

fn in_minutes(m: u64) -> u64 {
    dangan::now_ms() + m * 60_000
}

/// What the browser does with a sealed stream (`docs/formats.md`): the receipt checked
/// against the validators, the wrapped key unwrapped with the citizen's key, every segment
/// opened in order with the last-segment flag on the last one.
fn open_sealed(
    stream: &[u8],
    id: &DocumentId,
    citizen: &Identity,
    validators: &[PublicId],
) -> Vec<u8> {
    assert_eq!(&stream[..8], SEALED_MAGIC);
    let len = u32::from_be_bytes(stream[8..12].try_into().unwrap()) as usize;
    let receipt = Receipt::decode(&stream[12..12 + len]).unwrap();
    assert_eq!(receipt.document, *id);
    let manifest: Manifest = receipt.verify(validators).unwrap();
    let mut at = 12 + len;
    let wrapped = WrappedKey {
        recipient: [0; 32], // not sent: unwrapping does not need it
        enc: stream[at..at + 32].try_into().unwrap(),
        sealed: stream[at + 32..at + 80].to_vec(),
    };
    at += 80;
    let key = wrapped.unwrap(id, citizen).unwrap();
    let cipher = SegmentCipher::new(&key, &manifest.pieces[0].nonce_prefix);
    let sealed_len = manifest.params.sealed_segment_len() as usize;
    let segments = manifest.params.segment_count(manifest.size) as usize;
    let mut plain = Vec::new();
    for j in 0..segments {
        let seg_plain = if j + 1 == segments {
            manifest.size as usize - j * manifest.params.segment_size as usize
        } else {
            manifest.params.segment_size as usize
        };
        let seg_len = seg_plain + 16;
        assert!(seg_len <= sealed_len);
        let mut seg = stream[at..at + seg_len].to_vec();
        let n = cipher
            .open_in_place(j as u32, j + 1 == segments, &mut seg)
            .unwrap();
        plain.extend_from_slice(&seg[..n]);
        at += seg_len;
    }
    assert_eq!(at, stream.len(), "nothing follows the last segment");
    plain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citizen_reads_through_the_portal_and_the_gateway_relays_ciphertext_only() {
    let (cluster, gateway) = common::start_cluster(6, 3).await;
    let citizen = Identity::generate(Role::Citizen);
    let stranger = Identity::generate(Role::Citizen);
    let bytes = common::data(600 << 10, 21); // three stripes of the small parameters
    let put = common::put(&gateway, &bytes).await.unwrap();
    let id = put.id;
    common::grant(&gateway, &put, &citizen, Some(in_minutes(60))).await;
    let (base, server) = serve_portal(&gateway).await;
    let http = reqwest::Client::new();
    let chain = gateway.chain().unwrap().chain_key().await.unwrap();
    let me = gateway.public();

    let info: serde_json::Value = http
        .get(format!("{base}/portal/v1/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["gateway"], me.to_string());
    assert_eq!(info["chain"], chain.to_string());
    assert_eq!(
        info["validators"][0],
        cluster.chain().validators[0].to_string()
    );

    // The citizen's documents.
    let listing = ListingRequest::sign(&citizen, &chain.0, me, in_minutes(5));
    let resp = http
        .post(format!("{base}/portal/v1/granted"))
        .json(&ListingJson::from(&listing))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("charset=utf-8")
    );
    let granted: serde_json::Value = resp.json().await.unwrap();
    let docs = granted["documents"].as_array().unwrap();
    assert_eq!(docs.len(), 1, "{granted}");
    assert_eq!(docs[0]["document"], id.to_string());
    assert_eq!(docs[0]["size"], bytes.len() as u64);
    let stranger_listing = ListingRequest::sign(&stranger, &chain.0, me, in_minutes(5));
    let none: serde_json::Value = http
        .post(format!("{base}/portal/v1/granted"))
        .json(&ListingJson::from(&stranger_listing))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(none["documents"].as_array().unwrap().len(), 0);

    // The sealed fetch: the citizen decrypts it to the original bytes.
    let delegation = Delegation::sign(&citizen, &chain.0, me, id, in_minutes(5));
    let url = format!("{base}/portal/v1/documents/{id}/sealed");
    let resp = http
        .post(&url)
        .json(&DelegationJson::from(&delegation))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], portal::SEALED_CONTENT_TYPE);
    let sealed = resp.bytes().await.unwrap();
    let validators = cluster.chain().validators.clone();
    assert_eq!(open_sealed(&sealed, &id, &citizen, &validators), bytes);
    // No plaintext crossed the gateway: no 32-byte run of the document is in what it sent.
    for at in (0..bytes.len() - 32).step_by(4096) {
        let run = &bytes[at..at + 32];
        assert!(
            !sealed.windows(32).any(|w| w == run),
            "plaintext at offset {at} is in the gateway's answer"
        );
    }
    // A stranger's key opens nothing of it.
    let mut tampered_key = WrappedKey {
        recipient: [0; 32],
        enc: [0; 32],
        sealed: Vec::new(),
    };
    let receipt_len = u32::from_be_bytes(sealed[8..12].try_into().unwrap()) as usize;
    tampered_key.enc = sealed[12 + receipt_len..12 + receipt_len + 32]
        .try_into()
        .unwrap();
    tampered_key.sealed = sealed[12 + receipt_len + 32..12 + receipt_len + 80].to_vec();
    assert!(tampered_key.unwrap(&id, &stranger).is_err());

    // Refused with a clear answer: a second citizen without a grant, a malformed body, a
    // delegation for another document, an unknown document.
    let theirs = Delegation::sign(&stranger, &chain.0, me, id, in_minutes(5));
    let resp = http
        .post(&url)
        .json(&DelegationJson::from(&theirs))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("charset=utf-8")
    );
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["code"], "delegation_refused", "{err}");
    assert!(err["message"].as_str().unwrap().contains("grant"), "{err}");
    let resp = http
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"citizen\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["code"],
        "malformed"
    );
    let unknown = DocumentId::of(b"never registered");
    let resp = http
        .post(format!("{base}/portal/v1/documents/{unknown}/sealed"))
        .json(&DelegationJson::from(&delegation))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "a delegation for another document");
    let for_unknown = Delegation::sign(&citizen, &chain.0, me, unknown, in_minutes(5));
    let resp = http
        .post(format!("{base}/portal/v1/documents/{unknown}/sealed"))
        .json(&DelegationJson::from(&for_unknown))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["code"],
        "unknown_document"
    );

    // The audit shows the citizen's reads via the gateway, and no read by the gateway itself
    // of shards.
    let owner = common::department(&cluster);
    let report = audit::audit(owner.chain().unwrap(), &owner.all_nodes(), &id)
        .await
        .unwrap();
    let via: Vec<_> = report
        .lines
        .iter()
        .filter(|l| l.record.reader == citizen.public() && l.record.read.gateway() == Some(me))
        .collect();
    assert!(
        via.iter()
            .any(|l| matches!(l.record.read, ReadKind::ManifestVia { .. })),
        "the manifest read is recorded as the citizen's via the gateway"
    );
    let stripes = put.manifest.stripe_count() as usize;
    let k = usize::from(put.manifest.params.k);
    assert!(
        via.iter()
            .filter(|l| matches!(l.record.read, ReadKind::ShardVia { .. }))
            .count()
            >= stripes * k
    );
    assert!(
        !report
            .lines
            .iter()
            .any(|l| l.record.reader == stranger.public()),
        "the refused citizen read nothing"
    );
    assert!(via[0].record.read.to_string().contains("via gateway"));

    server.abort();
    for c in [gateway, owner] {
        c.close().await;
    }
    cluster.shutdown().await;
}

/// Sends `delegation` straight to peer `node` (as the gateway would, skipping every check
/// of its own): `OpenDelegated` with the manifest, and `GetDelegatedManifest`. Both must be
/// refused `Refused`.
async fn peer_refuses(
    client: &Client,
    node: &dangan::placement::NodeInfo,
    d: &Delegation,
    manifest: &bytes::Bytes,
) {
    let net = client.net();
    let open = Request::OpenDelegated {
        delegation: *d,
        len: manifest.len() as u64,
    };
    let e: NetError = net
        .call::<Opened>(node, &open, Some(manifest))
        .await
        .unwrap_err();
    // Refused before the body is read: the answer, or the peer stopping the body's stream
    // with the same code, whichever reaches the sender first.
    let stopped = format!("stopped by peer: error {}", ErrorCode::Refused.as_u32());
    assert!(
        e.remote_code() == Some(ErrorCode::Refused) || e.to_string().contains(&stopped),
        "{e}"
    );
    let get = Request::GetDelegatedManifest { delegation: *d };
    let e = net
        .fetch(node, &get, None, proto::MAX_MANIFEST_BODY)
        .await
        .unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::Refused), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_refuse_every_bad_delegation_and_serve_a_good_one() {
    let (cluster, gateway) = common::start_cluster(6, 3).await;
    let citizen = Identity::generate(Role::Citizen);
    let stranger = Identity::generate(Role::Citizen);
    let chain = gateway.chain().unwrap().chain_key().await.unwrap().0;
    let me = gateway.public();
    let put = common::put(&gateway, &common::data(300 << 10, 5))
        .await
        .unwrap();
    let other = common::put(&gateway, &common::data(300 << 10, 6))
        .await
        .unwrap();
    let (a, b) = (put.id, other.id);
    let manifest = bytes::Bytes::from(put.manifest.encode());
    common::grant(&gateway, &put, &citizen, None).await;
    let nodes = cluster.layout().nodes.clone();
    let served = common::shards_served(&cluster);
    let mut turn = 0usize;
    // Each case on another peer, so no peer's refusal budget for this key runs out.
    let mut next_node = || {
        turn += 1;
        nodes[turn % nodes.len()].clone()
    };

    let good = Delegation::sign(&citizen, &chain, me, a, in_minutes(5));
    let mut cases: Vec<(&str, Delegation)> = vec![
        (
            "a second citizen without a grant",
            Delegation::sign(&stranger, &chain, me, a, in_minutes(5)),
        ),
        (
            "an expired delegation",
            Delegation::sign(&citizen, &chain, me, a, dangan::now_ms() - 1),
        ),
        (
            "a delegation living too long",
            Delegation::sign(
                &citizen,
                &chain,
                me,
                a,
                dangan::now_ms() + MAX_DELEGATION_MS + 60_000,
            ),
        ),
        (
            "another chain's key",
            Delegation::sign(&citizen, &[0x42; 32], me, a, in_minutes(5)),
        ),
    ];
    let mut flipped = good;
    flipped.signature[17] ^= 1;
    cases.push(("a flipped signature byte", flipped));
    let mut moved = Delegation::sign(&citizen, &chain, me, b, in_minutes(5));
    moved.document = a;
    cases.push(("a delegation for document B used for document A", moved));
    for (what, d) in &cases {
        let node = next_node();
        let refused = gateway.fetch_sealed(d, Vec::new()).await;
        assert!(
            matches!(refused, Err(ClientError::Refused { .. })),
            "{what}: {refused:?}"
        );
        peer_refuses(&gateway, &node, d, &manifest).await;
    }

    // Replayed by another identity than the gateway it names.
    let thief = common::client_as(&cluster, &Identity::generate(Role::Citizen));
    assert!(matches!(
        thief.fetch_sealed(&good, Vec::new()).await,
        Err(ClientError::Refused { .. })
    ));
    peer_refuses(&thief, &next_node(), &good, &manifest).await;
    let other_department = common::client_as(&cluster, cluster.other_department());
    peer_refuses(&other_department, &next_node(), &good, &manifest).await;
    assert_eq!(
        common::shards_served(&cluster),
        served,
        "no shard served yet"
    );

    // The good one is served; shards of another document on that opening are not.
    let mut out = Vec::new();
    gateway.fetch_sealed(&good, &mut out).await.unwrap();
    assert!(common::shards_served(&cluster) > served);
    let node = next_node();
    let net = gateway.net();
    net.call::<Opened>(
        &node,
        &Request::OpenDelegated {
            delegation: good,
            len: manifest.len() as u64,
        },
        Some(&manifest),
    )
    .await
    .unwrap();
    for (document, shard) in [
        (b, other.manifest.stripes[0][0]),
        (a, other.manifest.stripes[0][0]),
    ] {
        let req = Request::GetDelegatedShard {
            id: shard,
            document,
            citizen: citizen.public(),
        };
        let e = net
            .fetch(&node, &req, None, proto::MAX_SHARD_BODY)
            .await
            .unwrap_err();
        assert_eq!(e.remote_code(), Some(ErrorCode::Refused), "{e}");
    }

    // A revoked grant, then an expired one, count for nothing.
    gateway.revoke(a, citizen.public()).await.unwrap();
    // Peers act on an answer that allowed for at most `ACCESS_TTL` (open connections too).
    tokio::time::sleep(dangan::access::ACCESS_TTL + std::time::Duration::from_millis(100)).await;
    let again = Delegation::sign(&citizen, &chain, me, a, in_minutes(5));
    assert!(matches!(
        gateway.fetch_sealed(&again, Vec::new()).await,
        Err(ClientError::Refused { .. })
    ));
    peer_refuses(&gateway, &next_node(), &again, &manifest).await;
    common::grant(&gateway, &put, &citizen, Some(dangan::now_ms() + 1)).await;
    assert!(matches!(
        gateway.fetch_sealed(&again, Vec::new()).await,
        Err(ClientError::Refused { .. })
    ));
    peer_refuses(&gateway, &next_node(), &again, &manifest).await;

    // The gateway's key alone reads nothing of another department's document.
    let theirs = common::put(&other_department, &common::data(100 << 10, 8))
        .await
        .unwrap();
    let served = common::shards_served(&cluster);
    assert!(gateway.manifest(&theirs.id).await.is_err());
    let mut sink = Vec::new();
    let read = gateway
        .get(&theirs.id, &theirs.key, &mut sink, &|_, _| {})
        .await;
    assert!(
        read.is_err(),
        "the gateway's key read another department's document"
    );
    assert!(sink.is_empty());
    let node = next_node();
    let their_manifest = bytes::Bytes::from(theirs.manifest.encode());
    let e = gateway
        .open_on(&node, theirs.id, their_manifest)
        .await
        .unwrap_err();
    let stopped = format!("stopped by peer: error {}", ErrorCode::Refused.as_u32());
    assert!(
        e.remote_code() == Some(ErrorCode::Refused) || e.to_string().contains(&stopped),
        "{e}"
    );
    let raw = Request::GetShard {
        id: theirs.manifest.stripes[0][0],
    };
    let e = net
        .fetch(&node, &raw, None, proto::MAX_SHARD_BODY)
        .await
        .unwrap_err();
    assert_eq!(e.remote_code(), Some(ErrorCode::Refused), "{e}");
    assert_eq!(common::shards_served(&cluster), served);

    for c in [gateway, thief, other_department] {
        c.close().await;
    }
    cluster.shutdown().await;
}
