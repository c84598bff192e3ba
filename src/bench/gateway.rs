//! `dangan bench gateway`: the department gateway as its own `dangan gateway` process over
//! a local cluster (peers and validator in this process), called over HTTP/1.1 as a
//! department's system would call it, against `dangan get` run as a process on the same
//! cluster, so both sides pay process start, key loading and connection setup.
//!
//! Measured: a large fetch through the gateway against `dangan get` of the same document
//! (and the in-process `Client::get`), repeated and alternated, medians compared; small
//! stores and fetches at a number in flight (p50, p99, per second); a very large upload and
//! download through the gateway, streamed from a generator and checked as they arrive
//! (never held here), with the gateway process's peak resident memory (its `VmHWM`, the
//! window reset before each by writing to its `clear_refs`, read before the phase ends).
//! Every byte read back is checked against what was stored; a mismatch is an error, so a
//! run that prints figures moved the right bytes.
//!
//! Not for: timing assertions (tests run it tiny to keep it working, nothing more).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::{Figure, Latency, SampleCheck, SampleStream, figure, latency};
use crate::cluster::{ClusterError, LocalCluster, sample_data};
use crate::gateway::api::Stored;
use crate::gateway::{GatewayDb, Scope};

/// What `dangan bench gateway` measures.
#[derive(Debug, Clone)]
pub struct GatewayBenchOptions {
    /// The `dangan` executable the gateway and `dangan get` run as.
    pub exe: PathBuf,
    pub peers: usize,
    /// Size of the document fetched through the gateway and with `dangan get`, bytes.
    pub fetch: u64,
    /// Times each of the three large fetches runs (alternated; medians reported).
    pub repetitions: usize,
    /// Size of each small document, bytes.
    pub small: usize,
    /// Small documents stored then fetched.
    pub small_count: usize,
    /// Small stores or fetches in flight at once (each on its own HTTP connection).
    pub in_flight: usize,
    /// Size of the document uploaded then downloaded for the gateway's peak memory, bytes
    /// (0: skipped).
    pub large: u64,
}

impl GatewayBenchOptions {
    /// The defaults of `dangan bench gateway`, with `exe` as the gateway and CLI.
    pub fn new(exe: PathBuf) -> Self {
        Self {
            exe,
            peers: 6,
            fetch: 256 << 20,
            repetitions: 3,
            small: 50 << 10,
            small_count: 500,
            in_flight: 16,
            large: 4 << 30,
        }
    }
}

impl GatewayBenchOptions {
    /// The sizes `dangan bench all` runs it with: a 1 GiB upload and download instead of
    /// 4 GiB (the peak memory does not depend on the size; `bench gateway` shows it), and
    /// `quick` smaller still.
    pub fn in_all(exe: PathBuf, quick: bool) -> Self {
        let mut o = Self::new(exe);
        o.large = 1 << 30;
        if quick {
            o.fetch = 32 << 20;
            o.repetitions = 1;
            o.small_count = 64;
            o.large = 64 << 20;
        }
        o
    }
}

/// What `dangan bench gateway` found.
#[derive(Debug, Clone)]
pub struct GatewayBenchReport {
    pub options: GatewayBenchOptions,
    /// Storing the fetched document through the gateway (raw body, streamed).
    pub store: Figure,
    /// Each repetition's fetch through the gateway, `dangan get` process, `Client::get`.
    pub fetch_gateway: Vec<Figure>,
    pub fetch_cli: Vec<Figure>,
    pub fetch_in_process: Vec<Figure>,
    pub small_store: Latency,
    pub small_fetch: Latency,
    /// The gateway process's resident memory once started, before any transfer.
    pub idle_rss: Option<u64>,
    /// The large upload and download, each with the gateway's peak resident memory.
    pub upload: Option<(Figure, Option<u64>)>,
    pub download: Option<(Figure, Option<u64>)>,
    /// Whether the gateway's peak window could be reset before each phase (otherwise each
    /// peak covers the whole run before it too).
    pub reset: bool,
}

pub(super) fn median(figures: &[Figure]) -> f64 {
    let mut v: Vec<f64> = figures.iter().map(Figure::mb_per_s).collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

impl GatewayBenchReport {
    /// Median MB/s of the gateway's fetches, `dangan get`'s and `Client::get`'s.
    pub fn fetch_medians(&self) -> (f64, f64, f64) {
        (
            median(&self.fetch_gateway),
            median(&self.fetch_cli),
            median(&self.fetch_in_process),
        )
    }

    /// The gateway's fetch throughput over `dangan get`'s (medians).
    pub fn ratio(&self) -> f64 {
        let (gw, cli, _) = self.fetch_medians();
        gw / cli.max(1e-9)
    }
}

impl std::fmt::Display for GatewayBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let mib = |b: Option<u64>| b.map_or("?".to_string(), |b| format!("{} MiB", b >> 20));
        let runs = |v: &[Figure]| {
            v.iter()
                .map(|f| format!("{:.0}", f.mb_per_s()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            f,
            "gateway benchmark: `dangan gateway` as its own process over {} peers on 127.0.0.1 \
             (peers and validator in this process), HTTP/1.1 on loopback",
            o.peers
        )?;
        writeln!(
            f,
            "store {} MiB through the gateway: {:.0} MB/s",
            o.fetch >> 20,
            self.store.mb_per_s()
        )?;
        let (gw, cli, inproc) = self.fetch_medians();
        writeln!(
            f,
            "fetch {} MiB, median of {} alternated runs (MB/s of each run):",
            o.fetch >> 20,
            self.fetch_gateway.len()
        )?;
        writeln!(
            f,
            "  through the gateway (HTTP, checked here):   {gw:>6.0} MB/s ({})",
            runs(&self.fetch_gateway)
        )?;
        writeln!(
            f,
            "  `dangan get` as a process (to a file):      {cli:>6.0} MB/s ({})",
            runs(&self.fetch_cli)
        )?;
        writeln!(
            f,
            "  `Client::get` in this process:              {inproc:>6.0} MB/s ({})",
            runs(&self.fetch_in_process)
        )?;
        writeln!(
            f,
            "  gateway / `dangan get`: {:.2} (target >= 0.80)",
            self.ratio()
        )?;
        for (name, l) in [("store", &self.small_store), ("fetch", &self.small_fetch)] {
            writeln!(
                f,
                "{name} {} KiB documents through the gateway, {} in flight: p50 {:.2} ms, p99 {:.2} ms, {:.0}/s",
                o.small >> 10,
                o.in_flight,
                ms(l.p50),
                ms(l.p99),
                l.per_second
            )?;
        }
        write!(
            f,
            "gateway process resident once started: {}",
            mib(self.idle_rss)
        )?;
        for (name, phase) in [("upload", &self.upload), ("download", &self.download)] {
            if let Some((fig, peak)) = phase {
                write!(
                    f,
                    "\n{name} {} MiB through the gateway: {:.0} MB/s, gateway peak resident {}{}",
                    fig.bytes >> 20,
                    fig.mb_per_s(),
                    mib(*peak),
                    if self.reset {
                        ""
                    } else {
                        " (since it started: the OS did not allow a reset)"
                    }
                )?;
            }
        }
        Ok(())
    }
}

pub(super) fn check(message: impl Into<String>) -> ClusterError {
    ClusterError::Check(message.into())
}

/// A field of `/proc/<pid>/status` in bytes (`VmHWM`, `VmRSS`), where the OS reports it.
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The `dangan gateway` child process.
pub(super) struct GatewayProcess {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    /// Where its S3 service listens, when started with one.
    pub(super) s3_addr: Option<SocketAddr>,
    /// Its S3 access key id, when started with an S3 service.
    pub(super) s3_key: Option<String>,
    stderr: PathBuf,
}

impl GatewayProcess {
    /// Writes the cluster's files, the department's key and a `gateway.toml` in `dir`,
    /// adds a store and fetch token, starts `exe gateway` on a free port and waits for it
    /// to say where it listens (with an S3 service on a free port too when `s3`).
    pub(super) async fn start(
        exe: &Path,
        cluster: &LocalCluster,
        dir: &Path,
        in_flight: usize,
        s3: bool,
    ) -> Result<(Self, String), ClusterError> {
        let (cluster_file, _) = cluster.write_operator_files(dir)?;
        let key = dir.join("department.key");
        cluster
            .department()
            .save(&key)
            .map_err(|e| check(format!("department key: {e}")))?;
        let data_dir = dir.join("gateway");
        let db = GatewayDb::open(&data_dir).map_err(|e| check(format!("gateway db: {e}")))?;
        let token = db
            .add("bench", &[Scope::Store, Scope::Fetch])
            .map_err(|e| check(format!("gateway token: {e}")))?;
        let s3_key = match s3 {
            true => Some(
                db.s3_key_add("bench")
                    .map_err(|e| check(format!("an S3 key: {e}")))?
                    .access_key,
            ),
            false => None,
        };
        drop(db);
        let config = dir.join("gateway.toml");
        let text = format!(
            "listen = \"127.0.0.1:0\"\ncluster = {:?}\nkey = {:?}\nkeyring = {:?}\n\
             data_dir = {:?}\ndepartment = \"bench\"\n\n[limits]\nmax_transfers = {}\n",
            cluster_file,
            key,
            dir.join("keyring"),
            data_dir,
            // Room above the bench's own transfers: a fetch's slot is let go just after
            // its last byte, which the bench may have read already.
            4 * in_flight.max(1),
        );
        let text = if s3 {
            format!("s3_listen = \"127.0.0.1:0\"\n{text}")
        } else {
            text
        };
        std::fs::write(&config, text)?;
        let stderr = dir.join("gateway.stderr");
        let mut child = tokio::process::Command::new(exe)
            .arg("gateway")
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| check("the gateway exited at once"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut s3_addr = None;
        let said = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("S3 listening on http://") {
                    s3_addr = url.parse::<SocketAddr>().ok();
                }
                if let Some(url) = line.strip_prefix("gateway listening on http://") {
                    return Ok(url.parse::<SocketAddr>().ok());
                }
            }
            Ok::<_, std::io::Error>(None)
        })
        .await;
        let failed = |why: &str| {
            check(format!(
                "`dangan gateway` {why}: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default().trim()
            ))
        };
        let addr = match said {
            Ok(Ok(Some(addr))) => addr,
            Ok(Ok(None)) => return Err(failed("exited without listening")),
            Ok(Err(e)) => return Err(failed(&format!("output unreadable ({e})"))),
            Err(_) => return Err(failed("did not listen within 60 s")),
        };
        // Keep draining its standard output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((
            Self {
                child,
                pid,
                addr,
                s3_addr,
                s3_key,
                stderr,
            },
            token,
        ))
    }

    /// Starts a new peak window; false where the OS does not allow it.
    pub(super) fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), b"5").is_ok()
    }

    pub(super) fn peak(&self) -> Option<u64> {
        proc_kib(self.pid, "VmHWM:")
    }

    fn rss(&self) -> Option<u64> {
        proc_kib(self.pid, "VmRSS:")
    }

    /// An error if the gateway has exited (with what it wrote).
    pub(super) fn alive(&mut self) -> Result<(), ClusterError> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(check(format!(
                "`dangan gateway` exited ({status}): {}",
                std::fs::read_to_string(&self.stderr)
                    .unwrap_or_default()
                    .trim()
            ))),
        }
    }

    pub(super) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// One HTTP/1.1 connection to the gateway, kept alive across requests.
struct Http {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    authorization: String,
    host: String,
}

impl Http {
    async fn connect(addr: SocketAddr, token: &str) -> Result<Self, ClusterError> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| check(format!("HTTP connection to the gateway: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "gateway bench connection ended");
            }
        });
        Ok(Self {
            sender,
            authorization: format!("Bearer {token}"),
            host: addr.to_string(),
        })
    }

    /// Sends `method path` with `body` (its length if known) and returns the response once
    /// its status is `want`; otherwise an error with the gateway's JSON message.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Body,
        length: Option<u64>,
        want: StatusCode,
    ) -> Result<axum::body::BodyDataStream, ClusterError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host)
            .header(header::AUTHORIZATION, &self.authorization);
        if let Some(n) = length {
            req = req.header(header::CONTENT_LENGTH, n);
        }
        let req = req
            .body(body)
            .map_err(|e| check(format!("an HTTP request: {e}")))?;
        self.sender
            .ready()
            .await
            .map_err(|e| check(format!("the gateway's connection: {e}")))?;
        let res = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| check(format!("{path}: {e}")))?;
        let status = res.status();
        let body = Body::new(res.into_body()).into_data_stream();
        if status != want {
            let text = collect(body, 64 << 10).await.unwrap_or_default();
            return Err(check(format!(
                "{path}: {status} (expected {want}): {}",
                String::from_utf8_lossy(&text)
            )));
        }
        Ok(body)
    }

    /// Stores `body` (`length` bytes): its id.
    async fn store(
        &mut self,
        body: Body,
        length: u64,
    ) -> Result<crate::id::DocumentId, ClusterError> {
        let res = self
            .call(
                Method::POST,
                "/api/v1/documents?type=bench",
                body,
                Some(length),
                StatusCode::CREATED,
            )
            .await?;
        let json = collect(res, 64 << 10).await?;
        let stored: Stored = serde_json::from_slice(&json)
            .map_err(|e| check(format!("the gateway's answer to a store: {e}")))?;
        if stored.size != length {
            return Err(check(format!(
                "the gateway stored {} bytes of {length}",
                stored.size
            )));
        }
        stored
            .id
            .parse()
            .map_err(|e| check(format!("the gateway's document id: {e}")))
    }

    /// Fetches document `id` into `out`: the bytes written.
    async fn fetch(
        &mut self,
        id: &crate::id::DocumentId,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<u64, ClusterError> {
        let path = format!("/api/v1/documents/{id}");
        let mut body = self
            .call(Method::GET, &path, Body::empty(), None, StatusCode::OK)
            .await?;
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| check(format!("{path}: the body broke off: {e}")))?;
            n += chunk.len() as u64;
            out.write_all(&chunk).await?;
        }
        Ok(n)
    }
}

/// The whole of a (small) body, at most `limit` bytes.
async fn collect(
    mut body: axum::body::BodyDataStream,
    limit: usize,
) -> Result<Vec<u8>, ClusterError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| check(format!("an HTTP body broke off: {e}")))?;
        if out.len() + chunk.len() > limit {
            return Err(check("an HTTP answer larger than expected"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A generated document of `size` bytes as a request body, never held in memory.
fn generated(size: u64, seed: u64) -> Body {
    Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        SampleStream::new(size, seed),
        256 << 10,
    ))
}

/// Seeds of the generated documents.
pub(super) const FETCHED: u64 = 21;
const LARGE: u64 = 22;

/// Runs `dangan ARGS` as the department, on the cluster files in `dir`: its time and its
/// standard output, or an error with what it wrote on standard error.
pub(super) async fn cli(
    exe: &Path,
    dir: &Path,
    args: &[&std::ffi::OsStr],
) -> Result<(Duration, Vec<u8>), ClusterError> {
    let what = args
        .first()
        .map_or(String::new(), |a| a.to_string_lossy().into_owned());
    let errors = dir.join(format!("{what}.stderr"));
    let started = Instant::now();
    let out = tokio::process::Command::new(exe)
        .args(args)
        .arg("--key")
        .arg(dir.join("department.key"))
        .arg("--cluster")
        .arg(dir.join("cluster.toml"))
        .arg("--keyring")
        .arg(dir.join("keyring"))
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&errors)?)
        .output()
        .await?;
    let took = started.elapsed();
    if !out.status.success() {
        return Err(check(format!(
            "`dangan {what}` failed ({}): {}",
            out.status,
            std::fs::read_to_string(&errors).unwrap_or_default().trim()
        )));
    }
    Ok((took, out.stdout))
}

/// Runs `dangan get` of `id` on the cluster files in `dir` into a file there: its time,
/// then the file checked against the document and removed.
pub(super) async fn cli_get(
    exe: &Path,
    dir: &Path,
    id: &crate::id::DocumentId,
    size: u64,
) -> Result<Duration, ClusterError> {
    let out = dir.join("fetched.bin");
    let id = id.to_string();
    let (took, _) = cli(
        exe,
        dir,
        &[
            "get".as_ref(),
            id.as_ref(),
            "--output".as_ref(),
            out.as_os_str(),
        ],
    )
    .await?;
    let mut written = SampleCheck::new(size, FETCHED);
    let mut file = tokio::fs::File::open(&out).await?;
    tokio::io::copy(&mut file, &mut written).await?;
    tokio::fs::remove_file(&out).await?;
    if !written.matched() {
        return Err(check("`dangan get` wrote other bytes than were stored"));
    }
    Ok(took)
}

/// Small documents through the gateway, `in_flight` connections at once, each storing (or,
/// with `ids`, fetching and comparing) its share one after the other: each request's time,
/// and the ids stored.
async fn small_round(
    addr: SocketAddr,
    token: &str,
    options: &GatewayBenchOptions,
    doc: &Bytes,
    ids: Option<Arc<Vec<crate::id::DocumentId>>>,
) -> Result<(Vec<Duration>, Vec<crate::id::DocumentId>), ClusterError> {
    let workers = options.in_flight.max(1);
    let count = options.small_count.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (doc, ids, token) = (doc.clone(), ids.clone(), token.to_string());
        tasks.spawn(async move {
            let mut http = Http::connect(addr, &token).await?;
            let (mut times, mut made) = (Vec::new(), Vec::new());
            for i in (w..count).step_by(workers) {
                let started = Instant::now();
                match &ids {
                    None => {
                        let body = Body::from(doc.clone());
                        made.push(http.store(body, doc.len() as u64).await?);
                    }
                    Some(ids) => {
                        let mut got = Vec::with_capacity(doc.len());
                        http.fetch(&ids[i], &mut got).await?;
                        if got != doc {
                            return Err(check("a small document came back different"));
                        }
                    }
                }
                times.push(started.elapsed());
            }
            Ok::<_, ClusterError>((times, made))
        });
    }
    let (mut times, mut made) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (t, m) = r.map_err(|e| check(format!("a small-document task failed: {e}")))??;
        times.extend(t);
        made.extend(m);
    }
    Ok((times, made))
}

/// Runs the gateway benchmark (see the module's documentation).
pub async fn run(options: GatewayBenchOptions) -> Result<GatewayBenchReport, ClusterError> {
    let cluster = LocalCluster::start(options.peers, 3).await?;
    let dir = cluster.root().join("gateway-bench");
    let started =
        GatewayProcess::start(&options.exe, &cluster, &dir, options.in_flight, false).await;
    let result = match started {
        Ok((mut gw, token)) => {
            let r = measure(&options, &cluster, &dir, &mut gw, &token).await;
            gw.stop().await;
            r
        }
        Err(e) => Err(e),
    };
    cluster.shutdown().await;
    result
}

async fn measure(
    options: &GatewayBenchOptions,
    cluster: &LocalCluster,
    dir: &Path,
    gw: &mut GatewayProcess,
    token: &str,
) -> Result<GatewayBenchReport, ClusterError> {
    use crate::client::ClientOptions;

    let idle_rss = gw.rss();
    let size = options.fetch;
    let mut http = Http::connect(gw.addr, token).await?;
    let started = Instant::now();
    let id = http.store(generated(size, FETCHED), size).await?;
    let store = figure("store", size as usize, started.elapsed());

    // The large fetch three ways, alternated so that a slow spell of the machine falls on
    // all of them alike.
    let client = cluster.client(ClientOptions::default())?;
    let key = crate::keyring::Keyring::open(dir.join("keyring"))?.load(&id)?;
    let (mut fetch_gateway, mut fetch_cli, mut fetch_in_process) =
        (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..options.repetitions.max(1) {
        gw.alive()?;
        let mut got = SampleCheck::new(size, FETCHED);
        let started = Instant::now();
        let n = http.fetch(&id, &mut got).await?;
        fetch_gateway.push(figure("gateway", n as usize, started.elapsed()));
        if !got.matched() {
            return Err(check("the gateway served other bytes than were stored"));
        }
        let took = cli_get(&options.exe, dir, &id, size).await?;
        fetch_cli.push(figure("dangan get", size as usize, took));
        let mut got = SampleCheck::new(size, FETCHED);
        let started = Instant::now();
        client.get(&id, &key, &mut got, &|_, _| {}).await?;
        fetch_in_process.push(figure("Client::get", size as usize, started.elapsed()));
        if !got.matched() {
            return Err(check("`Client::get` read other bytes than were stored"));
        }
    }
    client.close().await;

    let doc = Bytes::from(sample_data(options.small, 23));
    let started = Instant::now();
    let (times, ids) = small_round(gw.addr, token, options, &doc, None).await?;
    let small_store = latency(times, started.elapsed());
    let started = Instant::now();
    let (times, _) = small_round(gw.addr, token, options, &doc, Some(Arc::new(ids))).await?;
    let small_fetch = latency(times, started.elapsed());

    let mut reset = true;
    let (mut upload, mut download) = (None, None);
    if options.large > 0 {
        let large = options.large;
        gw.alive()?;
        reset &= gw.reset_peak();
        let started = Instant::now();
        let id = http.store(generated(large, LARGE), large).await?;
        let took = started.elapsed();
        gw.alive()?;
        upload = Some((figure("upload", large as usize, took), gw.peak()));
        reset &= gw.reset_peak();
        let mut got = SampleCheck::new(large, LARGE);
        let started = Instant::now();
        let n = http.fetch(&id, &mut got).await?;
        let took = started.elapsed();
        gw.alive()?;
        download = Some((figure("download", n as usize, took), gw.peak()));
        if !got.matched() {
            return Err(check("the large download differs from what was uploaded"));
        }
    }
    Ok(GatewayBenchReport {
        options: options.clone(),
        store,
        fetch_gateway,
        fetch_cli,
        fetch_in_process,
        small_store,
        small_fetch,
        idle_rss,
        upload,
        download,
        reset,
    })
}
