//! The department gateway over a real local cluster: `gateway::start` on 127.0.0.1:0 with
//! the department's client, called over HTTP with reqwest. Every endpoint, its token and
//! scope checks, ranges against the plaintext's slices, multipart stores, oversized and
//! interrupted bodies (nothing registered), the transfer limit, and the OpenAPI document
//! checked in as `docs/openapi.json`.

use std::path::PathBuf;

use dangan::client::Client;
use dangan::cluster::LocalCluster;
use dangan::gateway::{self, Gateway, GatewayDb, GatewayLimits, GatewaySetup, Scope};
use dangan::grant::GrantAddress;
use dangan::identity::{Identity, Role};
use dangan::keyring::Keyring;
use dangan::peer::PeerLimits;
use dangan::receipt::Receipt;
use reqwest::StatusCode;
use serde_json::Value;

use crate::common;

pub struct Gw {
    cluster: LocalCluster,
    gateway: Gateway,
    base: String,
    http: reqwest::Client,
    keyring: Keyring,
    /// The department's own client (for checks from outside the gateway).
    dept: Client,
    /// Tokens asked for, in order.
    pub tokens: Vec<String>,
}

/// A 6-peer cluster with the department's gateway, and a token per `(name, scopes)`.
pub async fn start(limits: GatewayLimits, tokens: &[(&str, &[Scope])]) -> Gw {
    start_with(limits, tokens, PeerLimits::default()).await
}

/// Like [`start`], the peers with `peer_limits` (e.g. a short audit interval).
pub async fn start_with(
    limits: GatewayLimits,
    tokens: &[(&str, &[Scope])],
    peer_limits: PeerLimits,
) -> Gw {
    let cluster = LocalCluster::start_with(6, 3, peer_limits).await.unwrap();
    let root = cluster.root().to_path_buf();
    let data_dir = root.join("gateway");
    let db = GatewayDb::open(&data_dir).unwrap();
    let tokens = tokens
        .iter()
        .map(|(name, scopes)| db.add(name, scopes).unwrap())
        .collect();
    drop(db);
    let keyring = Keyring::open(root.join("keyring")).unwrap();
    let gateway = gateway::start(GatewaySetup {
        listen: "127.0.0.1:0".parse().unwrap(),
        s3_listen: None,
        client: common::department(&cluster),
        keyring: keyring.clone(),
        data_dir,
        department: "civil-registry".into(),
        metrics_listen: None,
        limits,
    })
    .await
    .unwrap();
    Gw {
        base: format!("http://{}", gateway.addr()),
        dept: common::department(&cluster),
        cluster,
        gateway,
        http: reqwest::Client::new(),
        keyring,
        tokens,
    }
}

impl Gw {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn req(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(token)
    }

    pub async fn stop(self) {
        self.gateway.stop().await.unwrap();
        self.dept.close().await;
        self.cluster.shutdown().await;
    }
}

/// The JSON error of `res`, checked to have `status` and `code`.
/// A POST written by hand on a plain TCP connection: `head` (request line and headers, the
/// token added), then `body` with write errors ignored (the server may answer and close
/// before reading it all, as it should for a body it refuses), then the whole answer:
/// (status, JSON body).
async fn raw_post(gw: &Gw, head: &str, token: &str, body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.gateway.addr())
        .await
        .unwrap();
    let head = format!(
        "{head}\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(16 << 10) {
        if s.write_all(chunk).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let json = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b.trim()).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

async fn error(res: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(res.status(), status);
    let ct = res.headers()[reqwest::header::CONTENT_TYPE].clone();
    assert_eq!(ct, "application/json; charset=utf-8");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty());
    body
}

async fn json(res: reqwest::Response, status: StatusCode) -> Value {
    let got = res.status();
    let body = res.text().await.unwrap();
    assert_eq!(got, status, "{body}");
    serde_json::from_str(&body).unwrap()
}

pub const ADMIN: &[(&str, &[Scope])] = &[("admin", &[Scope::Admin])];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_department_stores_fetches_ranges_grants_and_audits_over_http() {
    use reqwest::Method as M;
    let gw = start(GatewayLimits::default(), ADMIN).await;
    let admin = gw.tokens[0].clone();
    // Several stripes (small test coding: 256 KiB of plaintext a stripe), not aligned.
    let bytes = common::data((1 << 20) + 12_345, 3);
    let res = gw
        .req(
            M::POST,
            "/api/v1/documents?type=certificate&name=birth.pdf",
            &admin,
        )
        .header("content-type", "application/pdf")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let stored = json(res, StatusCode::CREATED).await;
    let id = stored["id"].as_str().unwrap().to_string();
    assert_eq!(stored["size"], bytes.len() as u64);
    assert_eq!(stored["document_type"], "certificate");
    assert_eq!(stored["department"], "civil-registry");
    assert!(stored["height"].as_u64().unwrap() > 0);
    // Durable like `dangan put`: the key is in the keyring.
    assert!(gw.keyring.load(&id.parse().unwrap()).is_ok());

    // Whole, then ranges, each byte-identical to the slice.
    let doc = format!("/api/v1/documents/{id}");
    let res = gw.req(M::GET, &doc, &admin).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["accept-ranges"], "bytes");
    assert!(
        res.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("birth.pdf")
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), bytes.as_slice());
    let n = bytes.len();
    for (range, from, to) in [
        ("bytes=0-9", 0, 10),
        ("bytes=262000-600000", 262_000, 600_001),
        (&format!("bytes={}-", n - 100) as &str, n - 100, n),
        ("bytes=-5000", n - 5000, n),
        (&format!("bytes=1000-{}", n + 50), 1000, n),
    ] {
        let res = gw
            .req(M::GET, &doc, &admin)
            .header("range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            res.headers()["content-range"],
            format!("bytes {from}-{}/{n}", to - 1).as_str()
        );
        assert_eq!(
            res.bytes().await.unwrap().as_ref(),
            &bytes[from..to],
            "{range}"
        );
    }
    for range in ["bytes=5-1", "bytes=x-", "pages=1-2", "bytes=0-1,5-6"] {
        let res = gw.req(M::GET, &doc, &admin).header("range", range).send();
        error(res.await.unwrap(), StatusCode::BAD_REQUEST, "bad_range").await;
    }
    let res = gw
        .req(M::GET, &doc, &admin)
        .header("range", format!("bytes={n}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["content-range"],
        format!("bytes */{n}").as_str()
    );
    error(
        res,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range_not_satisfiable",
    )
    .await;

    // Unknown and malformed ids.
    let unknown = format!("/api/v1/documents/{}", "ab".repeat(32));
    let res = gw.req(M::GET, &unknown, &admin).send().await.unwrap();
    error(res, StatusCode::NOT_FOUND, "unknown_document").await;
    let res = gw.req(M::GET, "/api/v1/documents/nope", &admin).send();
    error(res.await.unwrap(), StatusCode::BAD_REQUEST, "bad_id").await;
    let res = gw
        .req(M::GET, "/api/v1/nothing", &admin)
        .send()
        .await
        .unwrap();
    error(res, StatusCode::NOT_FOUND, "no_such_endpoint").await;

    // The list shows it with its name.
    let list = json(
        gw.req(M::GET, "/api/v1/documents", &admin)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["documents"].as_array().unwrap().len(), 1);
    assert_eq!(list["documents"][0]["id"], id.as_str());
    assert_eq!(list["documents"][0]["file_name"], "birth.pdf");
    assert_eq!(list["next"], Value::Null);

    // Grant to a citizen, who then reads it with their own key; revoke; a bad address.
    let citizen = Identity::generate(Role::Citizen);
    let as_citizen = common::client_as(&gw.cluster, &citizen);
    let grants = format!("/api/v1/documents/{id}/grants");
    let body = serde_json::json!({ "address": GrantAddress::of(&citizen).unwrap().to_string() });
    let res = gw
        .req(M::POST, &grants, &admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    let granted = json(res, StatusCode::OK).await;
    assert_eq!(granted["reader"], citizen.public().to_string().as_str());
    let key = as_citizen.granted_key(&id.parse().unwrap()).await.unwrap();
    assert_eq!(
        common::read(&as_citizen, &id.parse().unwrap(), &key).await,
        bytes
    );
    let bad = serde_json::json!({ "address": "dga1nothex" });
    let res = gw
        .req(M::POST, &grants, &admin)
        .json(&bad)
        .send()
        .await
        .unwrap();
    error(res, StatusCode::BAD_REQUEST, "bad_grant_address").await;
    let res = gw
        .req(M::POST, &grants, &admin)
        .body("{not json")
        .send()
        .await
        .unwrap();
    error(res, StatusCode::BAD_REQUEST, "bad_json").await;
    let revoke = format!("{grants}/{}", citizen.public());
    let res = gw.req(M::DELETE, &revoke, &admin).send().await.unwrap();
    json(res, StatusCode::OK).await;
    assert!(as_citizen.granted_key(&id.parse().unwrap()).await.is_err());
    as_citizen.close().await;

    // The receipt file verifies offline; the server-side check says so, and refuses a
    // flipped byte.
    let res = gw
        .req(M::GET, &format!("{doc}/receipt"), &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["content-type"],
        "application/vnd.dangan.receipt"
    );
    let receipt = res.bytes().await.unwrap().to_vec();
    let decoded = Receipt::decode(&receipt).unwrap();
    decoded
        .verify(&gw.cluster.chain().validators)
        .expect("a genuine receipt");
    let check = |body: Vec<u8>| {
        gw.req(M::POST, "/api/v1/receipts/verify", &admin)
            .body(body)
            .send()
    };
    let ok = json(check(receipt.clone()).await.unwrap(), StatusCode::OK).await;
    assert_eq!(ok["valid"], true, "{ok}");
    assert_eq!(ok["document_type"], "certificate");
    let mut flipped = receipt.clone();
    let at = flipped.len() - 10;
    flipped[at] ^= 1;
    let res = check(flipped).await.unwrap();
    if res.status() == StatusCode::OK {
        assert_eq!(res.json::<Value>().await.unwrap()["valid"], false);
    } else {
        error(res, StatusCode::BAD_REQUEST, "bad_receipt").await;
    }
    let v = json(
        gw.req(M::GET, &format!("{doc}/verify"), &admin)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        v["owner"],
        gw.cluster.department().public().to_string().as_str()
    );

    // The read audit lists the reads, each with its verification state.
    let a = json(
        gw.req(M::GET, &format!("{doc}/audit"), &admin)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let reads = a["reads"].as_array().unwrap();
    assert!(reads.iter().any(|r| r["role"] == "owner"), "{a}");
    // The citizen's reads are there (no longer a grantee: the grant was revoked).
    let citizen_id = citizen.public().to_string();
    assert!(reads.iter().any(|r| r["reader"] == citizen_id.as_str()));
    assert!(
        reads
            .iter()
            .all(|r| ["verified", "pending"].contains(&r["state"].as_str().unwrap()))
    );
    assert_eq!(a["failed"], 0);

    // Cluster health.
    let s = json(
        gw.req(M::GET, "/api/v1/status", &admin)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(s["reachable"], 6);
    assert_eq!(s["width"], 6);
    assert!(s["documents"].as_u64().unwrap() >= 1);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes_are_enforced_on_every_endpoint() {
    use reqwest::Method as M;
    let gw = start(
        GatewayLimits::default(),
        &[("reader", &[Scope::Fetch]), ("admin", &[Scope::Admin])],
    )
    .await;
    let (reader, admin) = (gw.tokens[0].clone(), gw.tokens[1].clone());
    let put = common::put(&gw.dept, b"a certificate").await.unwrap();
    gw.keyring.save(&put.id, &put.key).unwrap();
    let id = put.id.to_string();
    let reader_id = Identity::generate(Role::Citizen).public();
    let endpoints: Vec<(M, String, Scope)> = vec![
        (M::POST, "/api/v1/documents".into(), Scope::Store),
        (M::GET, "/api/v1/documents".into(), Scope::Fetch),
        (M::GET, format!("/api/v1/documents/{id}"), Scope::Fetch),
        (
            M::POST,
            format!("/api/v1/documents/{id}/grants"),
            Scope::Grant,
        ),
        (
            M::DELETE,
            format!("/api/v1/documents/{id}/grants/{reader_id}"),
            Scope::Revoke,
        ),
        (
            M::POST,
            format!("/api/v1/documents/{id}/supersede"),
            Scope::Supersede,
        ),
        (
            M::POST,
            format!("/api/v1/documents/{id}/rekey"),
            Scope::Supersede,
        ),
        (
            M::GET,
            format!("/api/v1/documents/{id}/receipt"),
            Scope::Verify,
        ),
        (
            M::GET,
            format!("/api/v1/documents/{id}/verify"),
            Scope::Verify,
        ),
        (M::POST, "/api/v1/receipts/verify".into(), Scope::Verify),
        (
            M::GET,
            format!("/api/v1/documents/{id}/audit"),
            Scope::Audit,
        ),
        (M::GET, "/api/v1/status".into(), Scope::Status),
    ];
    let unknown = format!("{}{}", gateway::TOKEN_PREFIX, "00".repeat(32));
    for (method, path, scope) in &endpoints {
        let none = gw.http.request(method.clone(), gw.url(path)).send();
        error(
            none.await.unwrap(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
        for bad in [unknown.as_str(), "dgt1", "Basic abc"] {
            let res = gw.req(method.clone(), path, bad).send().await.unwrap();
            error(res, StatusCode::UNAUTHORIZED, "unauthorized").await;
        }
        if *scope != Scope::Fetch {
            let res = gw.req(method.clone(), path, &reader).send().await.unwrap();
            error(res, StatusCode::FORBIDDEN, "missing_scope").await;
        }
    }
    // The reader's token reads; the admin's does everything.
    let res = gw
        .req(M::GET, &format!("/api/v1/documents/{id}"), &reader)
        .send();
    assert_eq!(
        res.await.unwrap().bytes().await.unwrap().as_ref(),
        b"a certificate"
    );
    let res = gw
        .req(M::GET, "/api/v1/status", &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);

    // Another department's document: the chain knows it, this gateway has no key.
    let other = common::client_as(&gw.cluster, gw.cluster.other_department());
    let theirs = common::put(&other, b"not yours").await.unwrap();
    other.close().await;
    let res = gw
        .req(M::GET, &format!("/api/v1/documents/{}", theirs.id), &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // The OpenAPI document served is the one checked in (DANGAN_WRITE_OPENAPI=1 rewrites it).
    let served: Value = gw
        .http
        .get(gw.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let generated = serde_json::to_string_pretty(&gateway::openapi()).unwrap() + "\n";
    assert_eq!(served, serde_json::from_str::<Value>(&generated).unwrap());
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("DANGAN_WRITE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json differs from the code's; regenerate it with \
         DANGAN_WRITE_OPENAPI=1 cargo test --test it gateway::tokens"
    );
    for path in [
        "/api/v1/documents",
        "/api/v1/documents/{id}",
        "/api/v1/status",
    ] {
        assert!(served["paths"][path].is_object(), "{path}");
    }

    // The console: UTF-8 declared, zh-CN by default.
    let res = gw.http.get(gw.url("/console/")).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    assert!(res.text().await.unwrap().contains("lang=\"zh-CN\""));
    let res = gw
        .http
        .get(gw.url("/console/console.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_store_then_supersede_and_rekey() {
    use reqwest::Method as M;
    let gw = start(GatewayLimits::default(), ADMIN).await;
    let admin = gw.tokens[0].clone();
    let first = common::data(300_000, 5);
    let form = reqwest::multipart::Form::new()
        .text("type", "出生证明")
        .part(
            "file",
            reqwest::multipart::Part::bytes(first.clone()).file_name("证明.pdf"),
        );
    let res = gw
        .req(M::POST, "/api/v1/documents", &admin)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let stored = json(res, StatusCode::CREATED).await;
    assert_eq!(stored["document_type"], "出生证明");
    assert_eq!(stored["file_name"], "证明.pdf");
    let id = stored["id"].as_str().unwrap().to_string();
    let fetch = |id: String| {
        let req = gw.req(M::GET, &format!("/api/v1/documents/{id}"), &admin);
        async move { req.send().await.unwrap().bytes().await.unwrap().to_vec() }
    };
    assert_eq!(fetch(id.clone()).await, first);
    // A form without a file part.
    let form = reqwest::multipart::Form::new().text("type", "x");
    let res = gw
        .req(M::POST, "/api/v1/documents", &admin)
        .multipart(form)
        .send()
        .await
        .unwrap();
    error(res, StatusCode::BAD_REQUEST, "no_file").await;

    let second = common::data(70_000, 6);
    let res = gw
        .req(
            M::POST,
            &format!("/api/v1/documents/{id}/supersede"),
            &admin,
        )
        .body(second.clone())
        .send()
        .await
        .unwrap();
    let revised = json(res, StatusCode::CREATED).await;
    let new = revised["new"].as_str().unwrap().to_string();
    assert_eq!(revised["kind"], "reissue");
    assert_eq!(fetch(new.clone()).await, second);
    // The old version is superseded: a second supersede of it is a conflict.
    let res = gw
        .req(
            M::POST,
            &format!("/api/v1/documents/{id}/supersede"),
            &admin,
        )
        .body(second.clone())
        .send()
        .await
        .unwrap();
    error(res, StatusCode::CONFLICT, "already_superseded").await;

    let res = gw
        .req(M::POST, &format!("/api/v1/documents/{new}/rekey"), &admin)
        .send()
        .await
        .unwrap();
    let rekeyed = json(res, StatusCode::CREATED).await;
    assert_eq!(rekeyed["kind"], "rekey");
    assert_eq!(rekeyed["old_collected"], true);
    let newest = rekeyed["new"].as_str().unwrap().to_string();
    assert_eq!(fetch(newest.clone()).await, second);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_interrupted_and_excess_requests_change_nothing() {
    use reqwest::Method as M;
    let limits = GatewayLimits {
        max_upload: 1 << 20,
        max_json: 1024,
        max_transfers: 1,
    };
    let gw = start(limits, ADMIN).await;
    let admin = gw.tokens[0].clone();
    let documents = || async { gw.dept.chain().unwrap().status().await.unwrap().documents };
    let before = documents().await;

    // Declared too large: refused before reading (the server may close before the body
    // is written, so the request is written by hand and the answer read whatever the
    // writes did).
    let (status, body) = raw_post(
        &gw,
        &format!(
            "POST /api/v1/documents HTTP/1.1\r\nContent-Length: {}",
            (1 << 20) + 1
        ),
        &admin,
        &vec![0u8; (1 << 20) + 1],
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    // Streamed without a length, too large: refused once past the limit.
    let mut chunked = Vec::new();
    for i in 0..20 {
        let chunk = common::data(64 << 10, i);
        chunked.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend(&chunk);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let (status, body) = raw_post(
        &gw,
        "POST /api/v1/documents HTTP/1.1\r\nTransfer-Encoding: chunked",
        &admin,
        &chunked,
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    // A JSON body over its limit.
    let res = gw
        .req(
            M::POST,
            &format!("/api/v1/documents/{}/grants", "ab".repeat(32)),
            &admin,
        )
        .body(vec![b' '; 2048])
        .send()
        .await
        .unwrap();
    error(res, StatusCode::PAYLOAD_TOO_LARGE, "too_large").await;
    // The client goes away midway.
    let chunks = (0..4)
        .map(|i| Ok(common::data(64 << 10, i)))
        .chain(std::iter::once(Err(std::io::Error::other("client gone"))));
    let res = gw
        .req(M::POST, "/api/v1/documents", &admin)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    if let Ok(res) = res {
        assert!(!res.status().is_success());
    }

    // One transfer at a time: a fetch whose body is not read holds the slot.
    let big = common::data(16 << 20, 9);
    let put = common::put(&gw.dept, &big).await.unwrap();
    gw.keyring.save(&put.id, &put.key).unwrap();
    let doc = format!("/api/v1/documents/{}", put.id);
    // (The interrupted store may still be letting go of its slot: wait for it.)
    let held = loop {
        let res = gw.req(M::GET, &doc, &admin).send().await.unwrap();
        if res.status() != StatusCode::TOO_MANY_REQUESTS {
            break res;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(held.status(), StatusCode::OK);
    let res = gw.req(M::GET, &doc, &admin).send().await.unwrap();
    error(res, StatusCode::TOO_MANY_REQUESTS, "busy").await;
    assert_eq!(held.bytes().await.unwrap().len(), big.len());

    // Nothing the refused or interrupted stores sent was registered or kept.
    let gateway_ids = gw.keyring.ids(None, 100).unwrap();
    assert_eq!(gateway_ids, vec![put.id]);
    assert_eq!(documents().await, before + 1);
    gw.stop().await;
}

/// `dangan bench gateway` at a tiny size, so it keeps working: the gateway as its own
/// process over a local cluster, every byte it moves checked by the bench (a mismatch is an
/// error), the CLI's get and the in-process get of the same document alongside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_gateway_runs_and_checks_every_byte() {
    use dangan::bench::gateway::{self as bench, GatewayBenchOptions};
    let options = GatewayBenchOptions {
        fetch: (5 << 20) + 12_345,
        repetitions: 1,
        small: 6 << 10,
        small_count: 12,
        in_flight: 4,
        large: (9 << 20) + 1,
        ..GatewayBenchOptions::new(common::process::BIN.into())
    };
    let report = bench::run(options.clone()).await.unwrap();
    assert_eq!(report.store.bytes, options.fetch);
    for runs in [
        &report.fetch_gateway,
        &report.fetch_cli,
        &report.fetch_in_process,
    ] {
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].bytes, options.fetch);
    }
    let (upload, download) = (
        report.upload.clone().unwrap(),
        report.download.clone().unwrap(),
    );
    assert_eq!(
        (upload.0.bytes, download.0.bytes),
        (options.large, options.large)
    );
    // The gateway process's own memory, read from /proc while it ran.
    assert!(upload.1.is_some_and(|b| b > 0) && report.idle_rss.is_some());
    assert!(report.small_fetch.p99 >= report.small_fetch.p50);
    let text = report.to_string();
    assert!(text.contains("gateway / `dangan get`"), "{text}");
}
