//! The browser side (`web/`) against real artefacts of a real cluster: the JavaScript library
//! run by node decrypts what the Rust side sealed, verifies its receipts and signs
//! delegations the Rust side accepts; the committed bundle is a fresh build of `web/`; and,
//! in headless Chromium driven over WebDriver, the pages do what a citizen or a third party
//! expects.
//!
//! What these tests need beyond Rust (node, npm packages, Chromium, chromedriver, a CJK font)
//! is installed by `scripts/test-deps.sh`, which the first test to need it runs; a missing
//! tool is a failure with the reason, never a skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use dangan::crypto::SegmentCipher;
use dangan::grant::GrantAddress;
use dangan::identity::{Identity, PublicId, Role};
use dangan::receipt::Receipt;

use crate::common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `scripts/test-deps.sh` once per test binary; panics with its output if it fails.
pub fn ensure_test_deps() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = DONE.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join("scripts/test-deps.sh"))
            .output()
            .map_err(|e| format!("could not run scripts/test-deps.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/test-deps.sh failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("the browser tests' dependencies are missing: {e}");
    }
}

/// A document stored through a real cluster, granted to a citizen, and everything the
/// browser gets for it, written to `dir`: the receipt, the citizen's (and a stranger's) key
/// file, the sealed response body of the contract (`DGNSEAL1` ‖ receipt ‖ wrapped key ‖
/// sealed segments), the plaintext, and `context.json` (validators, chain key, grant address,
/// document id).
pub struct Artefacts {
    pub dir: tempfile::TempDir,
    pub citizen: Identity,
    pub chain: [u8; 32],
    pub document: dangan::id::DocumentId,
    pub receipt: Vec<u8>,
    pub validators: Vec<PublicId>,
}

pub async fn make_artefacts(len: usize) -> Artefacts {
    let (cluster, dept) = common::start_cluster(6, 3).await;
    let citizen = Identity::generate(Role::Citizen);
    let stranger = Identity::generate(Role::Citizen);
    let plain = common::data(len, 19);
    let put = common::put(&dept, &plain).await.unwrap();
    common::grant(&dept, &put, &citizen, None).await;
    let receipt = dept.receipt(&put.id).await.unwrap();
    let record = cluster.ledger().record(&put.id).unwrap();
    let wrapped = record
        .live_grant(&citizen.public(), dangan::now_ms())
        .unwrap()
        .wrapped
        .clone();
    let chain = cluster.ledger().chain_key();
    let validators = cluster.chain().validators.clone();
    dept.close().await;
    cluster.shutdown().await;

    // The sealed segments, exactly as `codec` sealed them before coding (STREAM is
    // deterministic for a key, nonce prefix and position).
    let m = &put.manifest;
    let cipher = SegmentCipher::new(&put.key, &m.nonce_prefix);
    let receipt_bytes = receipt.encode();
    let mut sealed = b"DGNSEAL1".to_vec();
    sealed.extend((receipt_bytes.len() as u32).to_be_bytes());
    sealed.extend(&receipt_bytes);
    sealed.extend(wrapped.enc);
    sealed.extend(&wrapped.sealed);
    let segments = m.params.segment_count(m.size);
    let seg = m.params.segment_size as usize;
    for i in 0..segments as usize {
        let part = &plain[(i * seg).min(plain.len())..((i + 1) * seg).min(plain.len())];
        let mut buf = part.to_vec();
        buf.resize(part.len() + 16, 0);
        cipher.seal_in_place(i as u32, i as u64 + 1 == segments, &mut buf, part.len());
        sealed.extend(buf);
    }

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("receipt.bin"), &receipt_bytes).unwrap();
    std::fs::write(p.join("sealed.bin"), &sealed).unwrap();
    std::fs::write(p.join("plain.bin"), &plain).unwrap();
    citizen.save(p.join("citizen.key")).unwrap();
    stranger.save(p.join("stranger.key")).unwrap();
    let context = serde_json::json!({
        "document": put.id.to_string(),
        "chain": chain.to_string(),
        "validators": validators.iter().map(|v| hex::encode(v.as_bytes())).collect::<Vec<_>>(),
        "citizen": citizen.public().to_string(),
        "grant_address": GrantAddress::of(&citizen).to_string(),
        "department": m.department,
        "document_type": m.document_type,
        "size": m.size,
    });
    std::fs::write(p.join("context.json"), context.to_string()).unwrap();
    Artefacts {
        dir,
        citizen,
        chain: chain.0,
        document: put.id,
        receipt: receipt_bytes,
        validators,
    }
}

/// The signed bytes of a read delegation (the contract's fixed layout).
fn delegation_bytes(
    chain: &[u8; 32],
    gateway: &PublicId,
    document: Option<&dangan::id::DocumentId>,
    citizen: &PublicId,
    expires_ms: u64,
) -> Vec<u8> {
    let mut out = match document {
        Some(_) => b"dangan-read-delegation-v1\0".to_vec(),
        None => b"dangan-list-delegation-v1\0".to_vec(),
    };
    out.extend(chain);
    out.extend(gateway.as_bytes());
    if let Some(d) = document {
        out.extend(d.as_bytes());
    }
    out.extend(citizen.as_bytes());
    out.extend(expires_ms.to_be_bytes());
    out
}

fn check_delegation(a: &Artefacts, file: &Path, gateway: &PublicId, read: bool) {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let citizen: PublicId = v["citizen"].as_str().unwrap().parse().unwrap();
    assert_eq!(citizen, a.citizen.public());
    let named: PublicId = v["gateway"].as_str().unwrap().parse().unwrap();
    assert_eq!(named, *gateway);
    let document = if read {
        let d: dangan::id::DocumentId = v["document"].as_str().unwrap().parse().unwrap();
        assert_eq!(d, a.document);
        Some(d)
    } else {
        assert!(v.get("document").is_none());
        None
    };
    let expires = v["expires_ms"].as_u64().unwrap();
    let now = dangan::now_ms();
    assert!(expires > now && expires <= now + 10 * 60 * 1000);
    let mut sig = [0u8; 64];
    hex::decode_to_slice(v["signature"].as_str().unwrap(), &mut sig).unwrap();
    let msg = delegation_bytes(&a.chain, gateway, document.as_ref(), &citizen, expires);
    citizen.verify(&msg, &sig).unwrap();
    // The signature covers every field: another expiry does not verify.
    let other = delegation_bytes(&a.chain, gateway, document.as_ref(), &citizen, expires + 1);
    assert!(citizen.verify(&other, &sig).is_err());
}

/// `node --test web/test/` with the artefacts: byte-identical decryption, flipped bytes
/// refused, receipts verified (and refused when altered), the grant address the Rust side
/// derives; then the delegation and listing request node signed verify here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_library_reads_what_the_cluster_wrote() {
    ensure_test_deps();
    // Five 64 KiB segments over two stripes, the last one short.
    let a = make_artefacts(300_000).await;
    let gateway = Identity::generate(Role::Node).public();
    let out = Command::new("node")
        .args(["--test", "--test-reporter=tap"])
        .arg("test/")
        .current_dir(root().join("web"))
        .env("DANGAN_ARTEFACTS", a.dir.path())
        .env("DANGAN_GATEWAY", gateway.to_string())
        .output()
        .expect("node runs (scripts/test-deps.sh installs it)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "node --test failed:\n{report}");
    assert!(
        report.contains("fail 0") && report.contains("skipped 0"),
        "{report}"
    );
    check_delegation(&a, &a.dir.path().join("delegation.json"), &gateway, true);
    check_delegation(&a, &a.dir.path().join("listing.json"), &gateway, false);
    // What node verified is what the Rust side verifies.
    Receipt::decode(&a.receipt)
        .unwrap()
        .verify_on(&dangan::chain::tx::ChainKey(a.chain), &a.validators)
        .unwrap();
}

// ---------- the pages in headless Chromium ----------

/// A small W3C WebDriver client over plain HTTP (reqwest) for Debian's chromedriver: the
/// handful of commands these tests use.
pub struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    _driver: Driver,
    _profile: tempfile::TempDir,
    pub downloads: tempfile::TempDir,
}

/// The chromedriver process, ended when dropped (also when a test fails half-way).
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium with a fresh profile and a
    /// viewport of `width` × `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        ensure_test_deps();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Driver(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("chromedriver runs (scripts/test-deps.sh installs chromium-driver)"),
        );
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let mut ready = false;
        for _ in 0..200 {
            if let Ok(r) = http.get(format!("{base}/status")).send().await
                && r.status().is_success()
            {
                ready = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(ready, "chromedriver did not answer on port {port}");
        let profile = tempfile::tempdir().unwrap();
        let downloads = tempfile::tempdir().unwrap();
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ],
                "prefs": {
                    "download.default_directory": downloads.path(),
                    "download.prompt_for_download": false,
                },
            },
        }}});
        let r: serde_json::Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_string();
        let b = Browser {
            http,
            base,
            session,
            _driver: driver,
            _profile: profile,
            downloads,
        };
        // The viewport, not the window, is what a page sees: make it exactly width × height.
        let inner: (u64, u64) = serde_json::from_value(
            b.script("return [window.innerWidth, window.innerHeight]", &[])
                .await,
        )
        .unwrap();
        let (dw, dh) = (
            u64::from(width).saturating_sub(inner.0),
            u64::from(height).saturating_sub(inner.1),
        );
        if dw > 0 || dh > 0 {
            b.cmd(
                "POST",
                "window/rect",
                serde_json::json!({"width": u64::from(width) + dw, "height": u64::from(height) + dh}),
            )
            .await;
        }
        b
    }

    async fn cmd(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).json(&body),
        };
        let r: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(e) = r["value"].get("error") {
            panic!("WebDriver {method} {path}: {e}: {}", r["value"]["message"]);
        }
        r["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "url", serde_json::json!({ "url": url }))
            .await;
    }

    pub async fn script(&self, js: &str, args: &[serde_json::Value]) -> serde_json::Value {
        self.cmd(
            "POST",
            "execute/sync",
            serde_json::json!({"script": js, "args": args}),
        )
        .await
    }

    /// Polls `js` (an expression) until it gives something other than null, false or "".
    pub async fn wait_for(&self, js: &str) -> serde_json::Value {
        for _ in 0..400 {
            let v = self.script(&format!("return {js}"), &[]).await;
            if !(v.is_null() || v == false || v == "") {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the page never gave `{js}`");
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd(
                "POST",
                "element",
                serde_json::json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|id| id.as_str())
            .unwrap()
            .to_string()
    }

    /// Gives the file input `css` the file at `path` (as a citizen choosing it).
    pub async fn upload(&self, css: &str, path: &Path) {
        let el = self.element(css).await;
        self.cmd(
            "POST",
            &format!("element/{el}/value"),
            serde_json::json!({"text": path.display().to_string()}),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let el = self.element(css).await;
        self.cmd(
            "POST",
            &format!("element/{el}/click"),
            serde_json::json!({}),
        )
        .await;
    }

    pub async fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", "screenshot", serde_json::Value::Null).await;
        let png = base64_decode(v.as_str().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Ends the browser session (closing Chromium), then chromedriver.
    pub async fn quit(self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
    }
}

/// Where screenshots go: `$DANGAN_SCREENSHOTS` (e.g. `docs/screenshots`, to refresh the
/// committed ones), else a temp dir that goes with the test.
fn screenshot_path(tmp: &Path, name: &str) -> PathBuf {
    match std::env::var_os("DANGAN_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => tmp.join(name),
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64url without padding (the verify link's form).
fn base64url(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            let c = B64[(n >> (18 - 6 * i) & 63) as usize];
            out.push(match c {
                b'+' => '-',
                b'/' => '_',
                c => c as char,
            });
        }
    }
    out
}

/// Standard base64 (WebDriver's screenshots).
fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = B64.iter().position(|x| *x == c).expect("base64 digit") as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A stand-in for the gateway until `gateway::run` is merged: web/dist at `/portal/`,
/// `/verify/` and `/assets/`, and the portal endpoints of the contract answered from the
/// artefacts of a real cluster, each signed request checked (a delegation that does not
/// verify, or names another citizen, gets 403 as the contract says).
async fn serve_stand_in(a: &Artefacts, gateway: PublicId) -> String {
    use axum::body::Body;
    use axum::http::{StatusCode, Uri, header};
    use axum::response::Response;

    #[derive(Clone)]
    struct State {
        chain: [u8; 32],
        gateway: PublicId,
        citizen: PublicId,
        document: dangan::id::DocumentId,
        info: serde_json::Value,
        granted: serde_json::Value,
        sealed: std::sync::Arc<Vec<u8>>,
    }

    fn json(status: StatusCode, v: serde_json::Value) -> Response {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(Body::from(v.to_string()))
            .unwrap()
    }

    fn refused(code: &str, message: &str) -> Response {
        json(
            StatusCode::FORBIDDEN,
            serde_json::json!({"code": code, "message": message}),
        )
    }

    /// Checks a signed request of the contract; the citizen it is from, if it verifies.
    fn check(
        s: &State,
        body: &[u8],
        document: Option<&dangan::id::DocumentId>,
    ) -> Option<PublicId> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let citizen: PublicId = v["citizen"].as_str()?.parse().ok()?;
        let gateway: PublicId = v["gateway"].as_str()?.parse().ok()?;
        let expires = v["expires_ms"].as_u64()?;
        let mut sig = [0u8; 64];
        hex::decode_to_slice(v["signature"].as_str()?, &mut sig).ok()?;
        let now = dangan::now_ms();
        if gateway != s.gateway || expires <= now || expires > now + 10 * 60 * 1000 {
            return None;
        }
        let msg = delegation_bytes(&s.chain, &gateway, document, &citizen, expires);
        citizen.verify(&msg, &sig).ok()?;
        Some(citizen)
    }

    let state = State {
        chain: a.chain,
        gateway,
        citizen: a.citizen.public(),
        document: a.document,
        info: serde_json::json!({
            "gateway": hex::encode(gateway.as_bytes()),
            "chain": hex::encode(a.chain),
            "validators": a.validators.iter().map(|v| hex::encode(v.as_bytes())).collect::<Vec<_>>(),
            "department": "civil-registry",
        }),
        granted: {
            let m =
                dangan::manifest::Manifest::decode(&Receipt::decode(&a.receipt).unwrap().manifest)
                    .unwrap();
            serde_json::json!({"documents": [{
                "document": a.document.to_string(),
                "department": m.department,
                "document_type": m.document_type,
                "size": m.size,
                "created_at_ms": m.created_at_ms,
                "expires_ms": null,
            }]})
        },
        sealed: std::sync::Arc::new(std::fs::read(a.dir.path().join("sealed.bin")).unwrap()),
    };
    let dist = root().join("web/dist");
    let app = axum::Router::new()
        .route(
            "/portal/v1/info",
            axum::routing::get(|axum::extract::State(s): axum::extract::State<State>| async move {
                json(StatusCode::OK, s.info.clone())
            }),
        )
        .route(
            "/portal/v1/granted",
            axum::routing::post(
                |axum::extract::State(s): axum::extract::State<State>, body: axum::body::Bytes| async move {
                    match check(&s, &body, None) {
                        Some(c) if c == s.citizen => json(StatusCode::OK, s.granted.clone()),
                        Some(_) => json(StatusCode::OK, serde_json::json!({"documents": []})),
                        None => refused("bad_delegation", "the listing request does not verify"),
                    }
                },
            ),
        )
        .route(
            "/portal/v1/documents/{id}/sealed",
            axum::routing::post(
                |axum::extract::State(s): axum::extract::State<State>,
                 axum::extract::Path(id): axum::extract::Path<String>,
                 body: axum::body::Bytes| async move {
                    let Ok(id) = id.parse::<dangan::id::DocumentId>() else {
                        return json(StatusCode::BAD_REQUEST, serde_json::json!({"code": "bad_id", "message": "not a document id"}));
                    };
                    if id != s.document {
                        return json(StatusCode::NOT_FOUND, serde_json::json!({"code": "unknown_document", "message": "no such document"}));
                    }
                    match check(&s, &body, Some(&id)) {
                        Some(c) if c == s.citizen => Response::builder()
                            .header(header::CONTENT_TYPE, "application/vnd.dangan.sealed")
                            .body(Body::from(s.sealed.to_vec()))
                            .unwrap(),
                        Some(_) => refused("not_granted", "this document is not granted to this citizen"),
                        None => refused("bad_delegation", "the delegation does not verify"),
                    }
                },
            ),
        )
        .fallback(move |uri: Uri| {
            let dist = dist.clone();
            async move {
                let path = uri.path();
                let file = match path {
                    "/portal/" => "portal/index.html".to_string(),
                    "/verify/" => "verify/index.html".to_string(),
                    p if p.starts_with("/assets/") && !p.contains("..") => p[1..].to_string(),
                    _ => return Response::builder().status(404).body(Body::empty()).unwrap(),
                };
                match std::fs::read(dist.join(&file)) {
                    Ok(bytes) => Response::builder()
                        .header(header::CONTENT_TYPE, content_type(&file))
                        .body(Body::from(bytes))
                        .unwrap(),
                    Err(_) => Response::builder().status(404).body(Body::empty()).unwrap(),
                }
            }
        })
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The verify page, at a phone's width: the real receipt (from the link a certificate
/// carries) is genuine and shows who issued what when; the same receipt with one flipped
/// byte (dropped in as a file) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_page_accepts_a_real_receipt_and_refuses_a_flipped_byte() {
    let a = make_artefacts(50 << 10).await;
    let url = serve_stand_in(&a, Identity::generate(Role::Node).public()).await;
    let browser = Browser::start(390, 844).await;

    let link = base64url(&a.receipt);
    browser.goto(&format!("{url}/verify/#{link}")).await;
    let verdict = browser
        .wait_for("document.getElementById('result').dataset.verdict")
        .await;
    assert_eq!(verdict, "genuine");
    let shown = browser
        .script("return document.getElementById('fields').innerText", &[])
        .await;
    let shown = shown.as_str().unwrap();
    assert!(
        shown.contains("civil-registry") && shown.contains("test"),
        "{shown}"
    );
    assert!(shown.contains(&a.document.to_string()), "{shown}");
    let lang = browser
        .script("return document.documentElement.lang", &[])
        .await;
    assert_eq!(lang, "zh-CN");
    let overflow = browser
        .script(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth",
            &[],
        )
        .await;
    assert_eq!(overflow, false, "the verify page is wider than a phone");
    browser
        .screenshot(&screenshot_path(a.dir.path(), "verify.png"))
        .await;

    // One flipped byte in the middle of the proof, given as a file.
    let mut bad = a.receipt.clone();
    let at = bad.len() - 40;
    bad[at] ^= 0x01;
    let bad_path = a.dir.path().join("flipped.receipt");
    std::fs::write(&bad_path, &bad).unwrap();
    browser.goto(&format!("{url}/verify/")).await;
    browser.wait_for("document.body.dataset.ready").await;
    browser.upload("#receipt-file", &bad_path).await;
    let verdict = browser
        .wait_for("document.getElementById('result').dataset.verdict")
        .await;
    assert_eq!(verdict, "invalid");
    let overflow = browser
        .script(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth",
            &[],
        )
        .await;
    assert_eq!(overflow, false, "the refusal is wider than a phone");
    browser
        .screenshot(&screenshot_path(a.dir.path(), "verify-refused.png"))
        .await;
    browser.quit().await;
}

/// The portal, at a phone's width: the citizen's key file loads (kept in the page), the
/// grant address shows as text and QR code, the granted document is listed and downloads
/// through the sealed path byte-identical; another citizen's key is refused with a clear
/// message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_downloads_a_granted_document_and_refuses_another_citizen() {
    let a = make_artefacts(300_000).await;
    let url = serve_stand_in(&a, Identity::generate(Role::Node).public()).await;
    let browser = Browser::start(390, 844).await;

    browser.goto(&format!("{url}/portal/?blob")).await;
    browser.wait_for("document.body.dataset.ready").await;
    browser
        .upload("#key-file", &a.dir.path().join("citizen.key"))
        .await;
    let address = browser
        .wait_for("document.getElementById('key-address').textContent")
        .await;
    assert_eq!(address, GrantAddress::of(&a.citizen).to_string());
    browser
        .wait_for("document.querySelector('#docs tbody button')")
        .await;
    let overflow = browser
        .script(
            "return document.documentElement.scrollWidth > document.documentElement.clientWidth",
            &[],
        )
        .await;
    assert_eq!(overflow, false, "the portal is wider than a phone");
    browser
        .screenshot(&screenshot_path(a.dir.path(), "portal.png"))
        .await;

    browser.click("#docs tbody button").await;
    let kind = browser
        .wait_for("document.getElementById('status').dataset.blake3 && document.getElementById('status').dataset.kind")
        .await;
    assert_eq!(kind, "ok");
    let digest = browser
        .script(
            "return document.getElementById('status').dataset.blake3",
            &[],
        )
        .await;
    let plain = std::fs::read(a.dir.path().join("plain.bin")).unwrap();
    assert_eq!(digest, blake3::hash(&plain).to_hex().as_str());
    // The file the browser saved is the document.
    let mut saved = None;
    for _ in 0..200 {
        saved = std::fs::read_dir(browser.downloads.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "bin"));
        if saved.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let saved = saved.expect("the browser saved the document");
    assert_eq!(std::fs::read(saved).unwrap(), plain);
    browser
        .screenshot(&screenshot_path(a.dir.path(), "portal-downloaded.png"))
        .await;

    // Another citizen: nothing listed, and asking by id is refused in words.
    browser.goto(&format!("{url}/portal/?blob")).await;
    browser.wait_for("document.body.dataset.ready").await;
    browser
        .upload("#key-file", &a.dir.path().join("stranger.key"))
        .await;
    browser
        .wait_for("!document.getElementById('docs-none').classList.contains('hidden')")
        .await;
    browser
        .script(
            "document.getElementById('doc-id').value = arguments[0]",
            &[serde_json::json!(a.document.to_string())],
        )
        .await;
    browser.click("#download-id").await;
    let message = browser
        .wait_for("document.getElementById('status').dataset.kind === 'bad' && document.getElementById('status').textContent")
        .await;
    assert!(
        message.as_str().unwrap().contains("此文件未授权给您"),
        "{message}"
    );
    browser.quit().await;
}

/// Every file under `dir`, relative to it, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// `web/dist` (committed, embedded by the gateway) is exactly what `web/build.sh` builds from
/// `web/` and the pinned packages: no stale or hand-edited bundle ships.
#[test]
fn the_committed_bundle_is_a_fresh_build() {
    ensure_test_deps();
    let fresh = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root().join("web/build.sh"))
        .arg(fresh.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "web/build.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = root().join("web/dist");
    let files = files_under(fresh.path());
    assert_eq!(
        files,
        files_under(&committed),
        "web/dist lists other files than a fresh build: run web/build.sh and commit web/dist"
    );
    for f in &files {
        assert!(
            std::fs::read(fresh.path().join(f)).unwrap()
                == std::fs::read(committed.join(f)).unwrap(),
            "web/dist/{} differs from a fresh build: run web/build.sh and commit web/dist",
            f.display()
        );
    }
}

/// End to end through the real gateway (`gateway::start` over a real cluster): the
/// department stores a certificate and grants it to a citizen over its REST API; the
/// citizen, in headless Chromium, loads their key on the gateway's portal and downloads it,
/// byte-identical (that the gateway relays ciphertext only: `it::delegation`); a second
/// citizen is refused in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_citizen_downloads_through_the_real_gateway_what_the_department_granted() {
    use reqwest::Method as M;
    ensure_test_deps();
    let gw = crate::gateway::start(Default::default(), crate::gateway::ADMIN).await;
    let admin = gw.tokens[0].clone();
    let plain = common::data(200_000, 41);
    let res = gw
        .req(
            M::POST,
            "/api/v1/documents?type=certificate&name=birth.bin",
            &admin,
        )
        .body(plain.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let stored: serde_json::Value = res.json().await.unwrap();
    let id = stored["id"].as_str().unwrap().to_string();
    let citizen = Identity::generate(Role::Citizen);
    let stranger = Identity::generate(Role::Citizen);
    let res = gw
        .req(M::POST, &format!("/api/v1/documents/{id}/grants"), &admin)
        .json(&serde_json::json!({ "address": GrantAddress::of(&citizen).to_string() }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let keys = tempfile::tempdir().unwrap();
    citizen.save(keys.path().join("citizen.key")).unwrap();
    stranger.save(keys.path().join("stranger.key")).unwrap();

    let browser = Browser::start(390, 844).await;
    browser.goto(&gw.url("/portal/?blob")).await;
    browser.wait_for("document.body.dataset.ready").await;
    browser
        .upload("#key-file", &keys.path().join("citizen.key"))
        .await;
    browser
        .wait_for("document.querySelector('#docs tbody button')")
        .await;
    browser.click("#docs tbody button").await;
    let kind = browser
        .wait_for("document.getElementById('status').dataset.blake3 && document.getElementById('status').dataset.kind")
        .await;
    assert_eq!(kind, "ok");
    let digest = browser
        .script(
            "return document.getElementById('status').dataset.blake3",
            &[],
        )
        .await;
    assert_eq!(digest, blake3::hash(&plain).to_hex().as_str());
    let mut saved = None;
    for _ in 0..200 {
        saved = std::fs::read_dir(browser.downloads.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "bin"));
        if saved.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(std::fs::read(saved.expect("saved")).unwrap(), plain);

    // The second citizen: refused in words.
    browser.goto(&gw.url("/portal/?blob")).await;
    browser.wait_for("document.body.dataset.ready").await;
    browser
        .upload("#key-file", &keys.path().join("stranger.key"))
        .await;
    browser
        .wait_for("!document.getElementById('docs-none').classList.contains('hidden')")
        .await;
    browser
        .script(
            "document.getElementById('doc-id').value = arguments[0]",
            &[serde_json::json!(id)],
        )
        .await;
    browser.click("#download-id").await;
    let message = browser
        .wait_for("document.getElementById('status').dataset.kind === 'bad' && document.getElementById('status').textContent")
        .await;
    assert!(
        message.as_str().unwrap().contains("此文件未授权给您"),
        "{message}"
    );
    browser.quit().await;
    gw.stop().await;
}
