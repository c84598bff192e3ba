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

use dangan::chain::tx::TxBody;
use dangan::crypto::SegmentCipher;
use dangan::grant::GrantAddress;
use dangan::identity::{Identity, PublicId, Role};
use dangan::receipt::Receipt;

use crate::common;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Chromium, chromedriver and the npm packages, installed by `scripts/test-deps.sh`.
pub fn ensure_test_deps() {
    common::test_deps(None, "the browser tests' dependencies are missing");
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
    // An object stored with its name (the S3 gateway's `PutName`): its receipt too.
    let chain_client = dept.chain().unwrap();
    chain_client
        .submit(TxBody::CreateBucket {
            bucket: "records".into(),
        })
        .await
        .unwrap();
    let named = dept
        .store(
            std::io::Cursor::new(common::data(5_000, 23)),
            Some(5_000),
            common::info(),
            &|_, _| {},
        )
        .await
        .unwrap();
    chain_client
        .submit(TxBody::PutName {
            bucket: "records".into(),
            key: "2026/certificate.pdf".into(),
            document: named.id,
            size: 5_000,
            meta: vec![],
        })
        .await
        .unwrap();
    let named_receipt = dept.receipt(&named.id).await.unwrap();
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
    let cipher = SegmentCipher::new(&put.key, &m.pieces[0].nonce_prefix);
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
    std::fs::write(p.join("receipt-named.bin"), named_receipt.encode()).unwrap();
    std::fs::write(p.join("sealed.bin"), &sealed).unwrap();
    std::fs::write(p.join("plain.bin"), &plain).unwrap();
    citizen.save(p.join("citizen.key")).unwrap();
    stranger.save(p.join("stranger.key")).unwrap();
    let context = serde_json::json!({
        "document": put.id.to_string(),
        "named_document": named.id.to_string(),
        "chain": chain.to_string(),
        "validators": validators.iter().map(|v| hex::encode(v.as_bytes())).collect::<Vec<_>>(),
        "citizen": citizen.public().to_string(),
        "grant_address": GrantAddress::of(&citizen).unwrap().to_string(),
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
        Self::start_with(width, height, &[]).await
    }

    /// Like [`Browser::start`], with more Chromium switches (`--name=value`).
    pub async fn start_with(width: u32, height: u32, switches: &[String]) -> Browser {
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
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ]
        .map(String::from)
        .to_vec();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push(format!("--window-size={width},{height}"));
        args.extend(switches.iter().cloned());
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": args,
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

    async fn try_cmd(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).json(&body),
        };
        let r: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
        if let Some(e) = r["value"].get("error") {
            return Err(format!(
                "WebDriver {method} {path}: {e}: {}",
                r["value"]["message"]
            ));
        }
        Ok(r["value"].clone())
    }

    async fn cmd(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        self.try_cmd(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
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
        self.send_keys(css, &path.display().to_string()).await;
    }

    /// Types `text` into the field `css`, as a person typing or pasting it.
    pub async fn send_keys(&self, css: &str, text: &str) {
        let el = self.element(css).await;
        self.cmd(
            "POST",
            &format!("element/{el}/value"),
            serde_json::json!({ "text": text }),
        )
        .await;
    }

    /// Presses OK on the page's `confirm()`, which may open a moment after the click.
    pub async fn accept_prompt(&self) {
        let mut last = String::new();
        for _ in 0..100 {
            match self
                .try_cmd("POST", "alert/accept", serde_json::json!({}))
                .await
            {
                Ok(_) => return,
                Err(e) => last = e,
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("no prompt to accept: {last}");
    }

    /// A PNG of the element `css` alone, as it is drawn.
    pub async fn element_screenshot(&self, css: &str) -> Vec<u8> {
        let el = self.element(css).await;
        let v = self
            .cmd(
                "GET",
                &format!("element/{el}/screenshot"),
                serde_json::Value::Null,
            )
            .await;
        base64_decode(v.as_str().unwrap())
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

// ---------- the citizen in the gateway's portal (shared by the tests below) ----------

/// The citizen opens the portal at `url` and loads their key file.
pub async fn portal_load_key(browser: &Browser, url: &str, key: &Path) {
    browser.goto(url).await;
    browser.wait_for("document.body.dataset.ready").await;
    browser.upload("#key-file", key).await;
    browser
        .wait_for("document.getElementById('key-address').textContent")
        .await;
}

/// The files the browser has saved so far.
fn saved_files(browser: &Browser) -> Vec<PathBuf> {
    std::fs::read_dir(browser.downloads.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect()
}

/// The citizen (key loaded) downloads the first document the portal lists: the page's checks
/// pass (its BLAKE3 of what it wrote is given back), and the bytes the browser saved are
/// returned.
pub async fn portal_download_first(browser: &Browser) -> Vec<u8> {
    browser
        .wait_for("document.querySelector('#docs tbody button')")
        .await;
    let before = saved_files(browser);
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
    for _ in 0..200 {
        if let Some(new) = saved_files(browser)
            .into_iter()
            .find(|p| !before.contains(p))
        {
            let bytes = std::fs::read(new).unwrap();
            assert_eq!(digest, blake3::hash(&bytes).to_hex().as_str());
            return bytes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the browser saved no new file");
}

/// The citizen with `key` asks the portal at `url` for document `id` by its id (it is not
/// listed): the refusal the page shows.
pub async fn portal_refused(browser: &Browser, url: &str, key: &Path, id: &str) -> String {
    portal_load_key(browser, url, key).await;
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
    message.as_str().unwrap().to_string()
}

fn overflows(v: serde_json::Value) -> bool {
    v != false
}

const OVERFLOW: &str =
    "return document.documentElement.scrollWidth > document.documentElement.clientWidth";

/// A document stored over the gateway's REST API with `admin`: its id.
async fn store(gw: &crate::gateway::Gw, admin: &str, query: &str, plain: &[u8]) -> String {
    let res = gw
        .req(
            reqwest::Method::POST,
            &format!("/api/v1/documents?{query}"),
            admin,
        )
        .body(plain.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let stored: serde_json::Value = res.json().await.unwrap();
    stored["id"].as_str().unwrap().to_string()
}

/// What the gateway gives back for document `id` (the department's own fetch).
async fn fetched(gw: &crate::gateway::Gw, admin: &str, id: &str) -> Vec<u8> {
    let res = gw
        .req(
            reqwest::Method::GET,
            &format!("/api/v1/documents/{id}"),
            admin,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap().to_vec()
}

/// The verify page of the real gateway, at a phone's width: the document's real receipt
/// (from the link a certificate carries) is genuine and shows what was issued; the same
/// receipt with one flipped byte (dropped in as a file) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_verify_page_accepts_a_real_receipt_and_refuses_a_flipped_byte() {
    ensure_test_deps();
    let gw = crate::gateway::start(Default::default(), crate::gateway::ADMIN).await;
    let admin = gw.tokens[0].clone();
    let id = store(&gw, &admin, "type=certificate", &common::data(50 << 10, 7)).await;
    let res = gw
        .req(
            reqwest::Method::GET,
            &format!("/api/v1/documents/{id}/receipt"),
            &admin,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let receipt = res.bytes().await.unwrap().to_vec();
    let tmp = tempfile::tempdir().unwrap();
    let browser = Browser::start(390, 844).await;

    browser
        .goto(&gw.url(&format!("/verify/#{}", base64url(&receipt))))
        .await;
    let verdict = browser
        .wait_for("document.getElementById('result').dataset.verdict")
        .await;
    assert_eq!(verdict, "genuine");
    let shown = browser
        .script("return document.getElementById('fields').innerText", &[])
        .await;
    let shown = shown.as_str().unwrap();
    assert!(
        shown.contains("certificate") && shown.contains(&id),
        "{shown}"
    );
    let lang = browser
        .script("return document.documentElement.lang", &[])
        .await;
    assert_eq!(lang, "zh-CN");
    assert!(
        !overflows(browser.script(OVERFLOW, &[]).await),
        "the verify page is wider than a phone"
    );
    browser
        .screenshot(&screenshot_path(tmp.path(), "verify.png"))
        .await;

    // One flipped byte in the middle of the proof, given as a file.
    let mut bad = receipt.clone();
    let at = bad.len() - 40;
    bad[at] ^= 0x01;
    let bad_path = tmp.path().join("flipped.receipt");
    std::fs::write(&bad_path, &bad).unwrap();
    browser.goto(&gw.url("/verify/")).await;
    browser.wait_for("document.body.dataset.ready").await;
    browser.upload("#receipt-file", &bad_path).await;
    let verdict = browser
        .wait_for("document.getElementById('result').dataset.verdict")
        .await;
    assert_eq!(verdict, "invalid");
    assert!(
        !overflows(browser.script(OVERFLOW, &[]).await),
        "the refusal is wider than a phone"
    );
    browser
        .screenshot(&screenshot_path(tmp.path(), "verify-refused.png"))
        .await;
    browser.quit().await;
    gw.stop().await;
}

/// End to end through the real gateway (`gateway::start` over a real cluster), at a phone's
/// width: the department stores a certificate and grants it to a citizen over its REST API;
/// the citizen loads their key on the gateway's portal (the grant address shown as text and
/// QR code), sees the document listed and downloads it, byte-identical (that the gateway
/// relays ciphertext only: `it::delegation`); a second citizen is refused in words.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_citizen_downloads_through_the_real_gateway_what_the_department_granted() {
    ensure_test_deps();
    let gw = crate::gateway::start(Default::default(), crate::gateway::ADMIN).await;
    let admin = gw.tokens[0].clone();
    let plain = common::data(200_000, 41);
    let id = store(&gw, &admin, "type=certificate&name=birth.bin", &plain).await;
    let citizen = Identity::generate(Role::Citizen);
    let stranger = Identity::generate(Role::Citizen);
    let res = gw
        .req(
            reqwest::Method::POST,
            &format!("/api/v1/documents/{id}/grants"),
            &admin,
        )
        .json(&serde_json::json!({ "address": GrantAddress::of(&citizen).unwrap().to_string() }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let keys = tempfile::tempdir().unwrap();
    citizen.save(keys.path().join("citizen.key")).unwrap();
    stranger.save(keys.path().join("stranger.key")).unwrap();

    let browser = Browser::start(390, 844).await;
    portal_load_key(
        &browser,
        &gw.url("/portal/?blob"),
        &keys.path().join("citizen.key"),
    )
    .await;
    let address = browser
        .script(
            "return document.getElementById('key-address').textContent",
            &[],
        )
        .await;
    assert_eq!(address, GrantAddress::of(&citizen).unwrap().to_string());
    browser
        .wait_for(
            "document.querySelector('#key-qr svg') && document.querySelector('#docs tbody button')",
        )
        .await;
    assert!(
        !overflows(browser.script(OVERFLOW, &[]).await),
        "the portal is wider than a phone"
    );
    browser
        .screenshot(&screenshot_path(keys.path(), "portal.png"))
        .await;
    assert_eq!(portal_download_first(&browser).await, plain);
    browser
        .screenshot(&screenshot_path(keys.path(), "portal-downloaded.png"))
        .await;

    // The second citizen: nothing listed, and asking by id is refused in words.
    let message = portal_refused(
        &browser,
        &gw.url("/portal/?blob"),
        &keys.path().join("stranger.key"),
        &id,
    )
    .await;
    assert!(message.contains("此文件未授权给您"), "{message}");
    browser.quit().await;
    gw.stop().await;
}

/// A video for Chromium's fake camera (`--use-file-for-fake-video-capture`): the QR code of
/// `text`, as the `qr` package encodes it (run by node), drawn black on white in Y4M frames
/// of 640 × 480.
fn qr_video(text: &str, path: &Path) {
    let out = Command::new("node")
        .current_dir(root().join("web"))
        .args([
            "--input-type=module",
            "-e",
            "import encodeQR from 'qr'; \
             console.log(JSON.stringify(encodeQR(process.argv[1], 'raw', { border: 4 })))",
            text,
        ])
        .output()
        .expect("node runs (scripts/test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let modules: Vec<Vec<bool>> = serde_json::from_slice(&out.stdout).unwrap();
    let (w, h) = (640usize, 480usize);
    let scale = 440 / modules.len();
    let (x0, y0) = (
        (w - modules.len() * scale) / 2,
        (h - modules.len() * scale) / 2,
    );
    let mut luma = vec![255u8; w * h];
    for (y, row) in modules.iter().enumerate() {
        for (x, dark) in row.iter().enumerate() {
            if *dark {
                for dy in 0..scale {
                    let at = (y0 + y * scale + dy) * w + x0 + x * scale;
                    luma[at..at + scale].fill(0);
                }
            }
        }
    }
    let mut video = format!("YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n").into_bytes();
    for _ in 0..2 {
        video.extend(b"FRAME\n");
        video.extend(&luma);
        video.extend(vec![128u8; w * h / 2]);
    }
    std::fs::write(path, video).unwrap();
}

/// The console's `#message` once shown: its class (`ok` or `error`) and text.
const MESSAGE: &str = "(() => { const m = document.getElementById('message'); \
    return !m.hidden && m.textContent && [m.className, m.textContent]; })()";

async fn message(browser: &Browser) -> (String, String) {
    let v = browser.wait_for(MESSAGE).await;
    (
        v[0].as_str().unwrap().to_string(),
        v[1].as_str().unwrap().to_string(),
    )
}

/// Clears the console's message, so the next one is the answer to what follows.
async fn clear_message(browser: &Browser) {
    browser
        .script(
            "const m = document.getElementById('message'); m.hidden = true; m.textContent = ''",
            &[],
        )
        .await;
}

/// Opens document `id` in the console's list (the Documents view shown).
async fn open_in_console(browser: &Browser, id: &str) {
    browser
        .wait_for(&format!(
            "[...document.querySelectorAll('#doc-rows tr')].some(r => r.cells[0].title === '{id}')"
        ))
        .await;
    browser
        .script(
            "[...document.querySelectorAll('#doc-rows tr')].find(r => r.cells[0].title === arguments[0]).querySelector('button').click()",
            &[serde_json::json!(id)],
        )
        .await;
    browser
        .wait_for(&format!(
            "!document.getElementById('detail').hidden && document.getElementById('detail-id').textContent === '{id}'"
        ))
        .await;
}

/// The department console at work in Chromium, through the real gateway: a clerk signs in
/// with a token (a wrong one refused in words), uploads a certificate by choosing the file
/// and another document by dropping it (a real `drop` event carrying a `File` made in the
/// page), sees the progress and each new id; reads the citizen's grant address from the
/// camera (Chromium's fake camera playing a video of the QR code) and from a picture of the
/// portal's QR code, and grants; the citizen downloads the certificate in the
/// portal, byte-identical; the clerk revokes and the citizen is refused in words; the read
/// audit shows the citizen's reads via the gateway, verified against the chain; the health
/// view shows every peer up; the English toggle redraws what is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clerk_stores_grants_and_revokes_in_the_console_and_the_citizen_reads_in_the_portal() {
    ensure_test_deps();
    let peers = dangan::peer::PeerLimits {
        audit_interval: std::time::Duration::from_millis(300),
        ..Default::default()
    };
    let gw = crate::gateway::start_with(Default::default(), crate::gateway::ADMIN, peers).await;
    let admin = gw.tokens[0].clone();
    let citizen = Identity::generate(Role::Citizen);
    let address = GrantAddress::of(&citizen).unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("citizen.key");
    citizen.save(&key).unwrap();
    let certificate = dangan::cluster::sample_certificate();
    let cert_path = tmp.path().join("出生证明.txt");
    std::fs::write(&cert_path, &certificate).unwrap();
    let shot = |name: &str| screenshot_path(tmp.path(), name);

    // The computer's camera, as Chromium fakes it, films the citizen's QR code.
    let video = tmp.path().join("grant-address.y4m");
    qr_video(&address, &video);
    let camera = [
        "--use-fake-device-for-media-stream".to_string(),
        "--use-fake-ui-for-media-stream".to_string(),
        format!("--use-file-for-fake-video-capture={}", video.display()),
    ];
    let browser = Browser::start_with(1280, 900, &camera).await;
    // The citizen shows their grant address as the portal draws it; the clerk gets a picture
    // of that QR code (as from a phone's screen).
    portal_load_key(&browser, &gw.url("/portal/"), &key).await;
    let qr_path = tmp.path().join("grant-address.png");
    std::fs::write(&qr_path, browser.element_screenshot("#key-qr svg").await).unwrap();

    // Sign in: a wrong token is refused in words, the right one opens the console.
    browser.goto(&gw.url("/console/")).await;
    browser
        .wait_for("!document.getElementById('login-view').hidden")
        .await;
    let lang = browser
        .script("return document.documentElement.lang", &[])
        .await;
    assert_eq!(lang, "zh-CN");
    browser.screenshot(&shot("console-login.png")).await;
    browser
        .send_keys("#token", &format!("dgt1{}", "0".repeat(64)))
        .await;
    browser.click("#login-form button[type=submit]").await;
    let (kind, text) = message(&browser).await;
    assert_eq!(kind, "error");
    assert!(text.contains("令牌无效"), "{text}");
    browser.send_keys("#token", &admin).await;
    browser.click("#login-form button[type=submit]").await;
    browser
        .wait_for("!document.getElementById('app-view').hidden")
        .await;

    // Upload by choosing the file: progress to 100 %, the new id shown.
    browser.click("nav button[data-view=upload]").await;
    browser.upload("#file", &cert_path).await;
    browser
        .wait_for("document.getElementById('chosen').textContent.includes('出生证明.txt')")
        .await;
    clear_message(&browser).await;
    browser.click("#upload-submit").await;
    let stored = "(() => { const m = document.getElementById('message'); \
        const c = m.querySelector('code'); return m.className === 'ok' && c && c.textContent; })()";
    let cert_id = browser.wait_for(stored).await.as_str().unwrap().to_string();
    let progress = browser
        .script(
            "return [document.getElementById('progress-row').hidden, \
             document.getElementById('progress').value, \
             document.getElementById('progress-text').textContent]",
            &[],
        )
        .await;
    assert_eq!(progress, serde_json::json!([false, 100, "100%"]));
    browser.screenshot(&shot("console-upload.png")).await;
    assert_eq!(fetched(&gw, &admin, &cert_id).await, certificate);

    // Upload by dropping a file on the drop zone.
    let dropped: Vec<u8> = (0..70_000u32).map(|i| (i * 131 + 7) as u8).collect();
    browser
        .script(
            "const bytes = new Uint8Array(arguments[0]); \
             for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 131 + 7) & 255; \
             const dt = new DataTransfer(); \
             dt.items.add(new File([bytes], '扫描件.bin', { type: 'application/octet-stream' })); \
             const drop = document.getElementById('drop'); \
             for (const type of ['dragenter', 'dragover', 'drop']) \
               drop.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: dt }));",
            &[serde_json::json!(dropped.len())],
        )
        .await;
    browser
        .wait_for("document.getElementById('chosen').textContent.includes('扫描件.bin')")
        .await;
    clear_message(&browser).await;
    browser.click("#upload-submit").await;
    let dropped_id = browser.wait_for(stored).await.as_str().unwrap().to_string();
    assert_ne!(dropped_id, cert_id);
    assert_eq!(fetched(&gw, &admin, &dropped_id).await, dropped);

    // Both listed under their names; the certificate opened, the grant address read from
    // the picture of the QR code, the grant committed.
    browser.click("nav button[data-view=documents]").await;
    open_in_console(&browser, &cert_id).await;
    let names = browser
        .script(
            "return [...document.querySelectorAll('#doc-rows tr')].map(r => r.cells[0].textContent)",
            &[],
        )
        .await;
    let names: Vec<String> = serde_json::from_value(names).unwrap();
    assert!(
        names.contains(&"出生证明.txt".to_string()) && names.contains(&"扫描件.bin".to_string()),
        "{names:?}"
    );
    // From the camera: the address lands in the field, the camera is let go.
    browser.click("#scan").await;
    browser
        .wait_for("!document.getElementById('scanner').hidden && !document.getElementById('scan-camera').hidden")
        .await;
    browser.click("#scan-camera").await;
    let scanned = browser
        .wait_for("document.getElementById('grant-address').value")
        .await;
    assert_eq!(scanned, address.as_str());
    browser
        .wait_for("document.getElementById('scanner').hidden && document.getElementById('scan-video').hidden")
        .await;
    browser
        .script("document.getElementById('grant-address').value = ''", &[])
        .await;
    // From a picture of the portal's QR code.
    browser.click("#scan").await;
    browser
        .wait_for("!document.getElementById('scanner').hidden")
        .await;
    browser.upload("#scan-file", &qr_path).await;
    let scanned = browser
        .wait_for("document.getElementById('grant-address').value")
        .await;
    assert_eq!(scanned, address.as_str());
    clear_message(&browser).await;
    browser.click("#grant-form button[type=submit]").await;
    let granted = "(() => { const m = document.getElementById('message'); \
        return !m.hidden && m.textContent.startsWith('已授权') && [m.className, m.textContent]; })()";
    let (kind, text) = {
        let v = browser.wait_for(granted).await;
        (v[0].clone(), v[1].clone())
    };
    assert_eq!(kind, "ok", "{text}");
    let reader = citizen.public().to_string();
    browser
        .wait_for(&format!(
            "document.getElementById('grant-list').textContent.includes('{reader}')"
        ))
        .await;
    browser.screenshot(&shot("console-grant.png")).await;

    // The citizen downloads the certificate in the portal, byte-identical.
    portal_load_key(&browser, &gw.url("/portal/?blob"), &key).await;
    assert_eq!(portal_download_first(&browser).await, certificate);

    // The clerk revokes (confirming); the citizen is refused in words.
    browser.goto(&gw.url("/console/")).await;
    open_in_console(&browser, &cert_id).await;
    clear_message(&browser).await;
    browser.click("#grant-list button").await;
    browser.accept_prompt().await;
    let (kind, text) = message(&browser).await;
    assert_eq!((kind.as_str(), text.as_str()), ("ok", "已撤销授权。"));
    let refused = portal_refused(&browser, &gw.url("/portal/?blob"), &key, &cert_id).await;
    assert!(refused.contains("此文件未授权给您"), "{refused}");

    // The read audit: the citizen's reads via the gateway, each verified against a root on
    // chain once the peers have committed theirs.
    browser.goto(&gw.url("/console/")).await;
    open_in_console(&browser, &cert_id).await;
    let citizen_rows = format!(
        "[...document.querySelectorAll('#audit-rows tr')].filter(r => r.cells[1].title === '{reader}')"
    );
    let mut all_verified = false;
    for _ in 0..50 {
        browser
            .script(
                "document.getElementById('audit-rows').textContent = ''; \
                 document.getElementById('show-audit').click()",
                &[],
            )
            .await;
        browser
            .wait_for("document.querySelectorAll('#audit-rows tr').length > 0")
            .await;
        let states = browser
            .script(
                &format!(
                    "return {citizen_rows}.map(r => [r.cells[2].textContent, r.cells[3].className])"
                ),
                &[],
            )
            .await;
        let states: Vec<(String, String)> = serde_json::from_value(states).unwrap();
        assert!(!states.is_empty(), "the citizen's reads are in the audit");
        assert!(
            states.iter().all(|(what, _)| what.contains("经网关")),
            "{states:?}"
        );
        assert!(
            states.iter().all(|(_, s)| s != "state-failed"),
            "{states:?}"
        );
        if states.iter().all(|(_, s)| s == "state-verified") {
            all_verified = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert!(all_verified, "the citizen's reads stayed pending");
    browser
        .script("document.getElementById('audit').scrollIntoView()", &[])
        .await;
    browser.screenshot(&shot("console-audit.png")).await;

    // The cluster's health: every peer up.
    browser.click("nav button[data-view=health]").await;
    let summary = browser
        .wait_for("document.getElementById('health-summary').textContent")
        .await;
    assert!(
        summary.as_str().unwrap().contains("节点 6/6 在线"),
        "{summary}"
    );
    let states = browser
        .script(
            "return [...document.querySelectorAll('#peer-rows tr')].map(r => r.cells[3].textContent)",
            &[],
        )
        .await;
    assert_eq!(states, serde_json::json!(vec!["在线"; 6]));
    browser.screenshot(&shot("console-health.png")).await;

    // The English toggle redraws the view shown.
    browser.click("#lang").await;
    let summary = browser
        .wait_for("document.documentElement.lang === 'en' && document.getElementById('health-summary').textContent.includes('peers up') && document.getElementById('health-summary').textContent")
        .await;
    assert!(
        summary.as_str().unwrap().contains("6 of 6 peers up"),
        "{summary}"
    );
    browser.screenshot(&shot("console-health-en.png")).await;
    browser.quit().await;
    gw.stop().await;
}
