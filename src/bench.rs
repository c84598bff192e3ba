//! Benchmarks a user runs from the CLI (`dangan bench ...`) to see what this machine does.
//!
//! Each benchmark measures the floors it is judged against in the same run, so its figures
//! can be compared across machines and releases. Not for: regression gating (criterion
//! benches in `benches/` do that), and never used by tests as timing assertions.

pub mod gateway;
pub mod placement;
pub mod s3;

use std::fmt;
use std::io::{Cursor, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::cluster::sample_data;
use crate::codec::{self, CodecError, DocumentInfo};
use crate::crypto::{DataKey, SegmentCipher, TAG_LEN};
use crate::erasure::Erasure;
use crate::manifest::CodingParams;

/// What `dangan bench codec` measures.
#[derive(Debug, Clone)]
pub struct CodecBenchOptions {
    pub size: usize,
    pub repetitions: usize,
    pub params: CodingParams,
}

impl Default for CodecBenchOptions {
    fn default() -> Self {
        Self {
            size: 64 << 20,
            repetitions: 5,
            params: CodingParams::default(),
        }
    }
}

/// One measured figure: bytes of document per second (decimal MB/s).
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub bytes: u64,
    pub time: Duration,
}

impl Figure {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.time.as_secs_f64() / 1e6
    }
}

#[derive(Debug, Clone)]
pub struct CodecBenchReport {
    pub options: CodecBenchOptions,
    pub threads: usize,
    pub blake3: Figure,
    pub chacha: Figure,
    pub rs: Figure,
    /// Sum of the single-stage times for the bytes each stage must process in an encode.
    pub serial_floor: Figure,
    pub encode_1: Figure,
    pub encode_n: Figure,
    pub decode_1: Figure,
    pub decode_n: Figure,
    pub decode_degraded_n: Figure,
}

impl CodecBenchReport {
    pub fn encode_vs_floor(&self) -> f64 {
        self.encode_1.mb_per_s() / self.serial_floor.mb_per_s()
    }

    pub fn encode_scaling(&self) -> f64 {
        self.encode_n.mb_per_s() / self.encode_1.mb_per_s()
    }
}

impl fmt::Display for CodecBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.options.params;
        writeln!(
            f,
            "codec benchmark: {} MiB document, k={} m={}, {} KiB segments, {} KiB shards, \
             median of {}",
            self.options.size >> 20,
            p.k,
            p.m,
            p.segment_size >> 10,
            p.full_shard_len() >> 10,
            self.options.repetitions
        )?;
        writeln!(f, "{:<44} {:>10}", "stage", "MB/s")?;
        let row = |f: &mut fmt::Formatter<'_>, fig: &Figure| {
            writeln!(f, "{:<44} {:>10.0}", fig.name, fig.mb_per_s())
        };
        for fig in [
            &self.blake3,
            &self.chacha,
            &self.rs,
            &self.serial_floor,
            &self.encode_1,
            &self.encode_n,
            &self.decode_1,
            &self.decode_n,
            &self.decode_degraded_n,
        ] {
            row(f, fig)?;
        }
        writeln!(
            f,
            "encode on 1 thread / serial floor: {:.2} (target >= 0.90)",
            self.encode_vs_floor()
        )?;
        write!(
            f,
            "encode on {} threads / 1 thread: {:.2}x (target >= 1.60x)",
            self.threads,
            self.encode_scaling()
        )
    }
}

fn median_time(repetitions: usize, mut run: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..repetitions.max(1))
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn figure(name: impl Into<String>, bytes: usize, time: Duration) -> Figure {
    Figure {
        name: name.into(),
        bytes: bytes as u64,
        time,
    }
}

struct Discard;
impl Write for Discard {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs the codec benchmark: each stage alone on one core, then the whole pipeline.
pub fn codec(options: CodecBenchOptions) -> Result<CodecBenchReport, CodecError> {
    let p = options.params;
    p.validate()?;
    let size = options.size;
    let reps = options.repetitions;
    let data = sample_data(size, 1);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| CodecError::Task(e.to_string()))?;
    let threads = rayon::current_num_threads();
    let k = usize::from(p.k);
    let width = p.width();

    // Each stage alone, on the calling thread.
    let blake3_time = median_time(reps, || {
        std::hint::black_box(blake3::hash(&data));
    });
    let cipher = SegmentCipher::new(&DataKey::generate(), &[0; 7]);
    let seg = p.segment_size as usize;
    let mut sealed = vec![0u8; seg + TAG_LEN];
    let chacha_time = median_time(reps, || {
        for (i, chunk) in data.chunks(seg).enumerate() {
            sealed[..chunk.len()].copy_from_slice(chunk);
            cipher.seal_in_place(i as u32, false, &mut sealed, chunk.len());
        }
        std::hint::black_box(&sealed);
    });
    let erasure = Erasure::new(k, p.m.into())?;
    let shard_len = p.full_shard_len() as usize;
    let rs_time = median_time(reps, || {
        for stripe in data.chunks(k * shard_len) {
            let shards: Vec<&[u8]> = stripe.chunks(stripe.len().div_ceil(k)).collect();
            if shards.len() == k {
                std::hint::black_box(erasure.encode(&shards).expect("equal shards"));
            }
        }
    });
    let hashed = size * width / k;
    let floor = chacha_time + rs_time + blake3_time.mul_f64(hashed as f64 / size as f64);

    let encode_once = || {
        codec::encode(Cursor::new(&data), p, DocumentInfo::default(), |s| {
            std::hint::black_box(s);
            Ok(())
        })
        .expect("encoding from memory cannot fail")
    };
    let encode_1 = one.install(|| median_time(reps, || drop(encode_once())));
    let encode_n = median_time(reps, || drop(encode_once()));

    let mut stripes = Vec::new();
    let (manifest, key) = codec::encode(Cursor::new(&data), p, DocumentInfo::default(), |s| {
        stripes.push(s);
        Ok(())
    })?;
    let full = |i: u64| -> Vec<Option<Bytes>> {
        stripes[i as usize]
            .shards
            .iter()
            .cloned()
            .map(Some)
            .collect()
    };
    let degraded = |i: u64| -> Vec<Option<Bytes>> {
        let mut s = full(i);
        for slot in s.iter_mut().take(usize::from(p.m)) {
            *slot = None;
        }
        s
    };
    let decode = |fetch: &(dyn Fn(u64) -> Vec<Option<Bytes>> + Sync)| {
        codec::decode(&manifest, &key, fetch, Discard).expect("all stripes decode")
    };
    let decode_1 = one.install(|| median_time(reps, || drop(decode(&full))));
    let decode_n = median_time(reps, || drop(decode(&full)));
    let decode_degraded_n = median_time(reps, || drop(decode(&degraded)));

    Ok(CodecBenchReport {
        threads,
        blake3: figure("BLAKE3, 1 core", size, blake3_time),
        chacha: figure("ChaCha20-Poly1305 seal, 1 core", size, chacha_time),
        rs: figure(format!("RS {}+{} encode, 1 core", p.k, p.m), size, rs_time),
        serial_floor: figure("serial floor (sum of stages)", size, floor),
        encode_1: figure("encode, 1 thread", size, encode_1),
        encode_n: figure(format!("encode, {threads} threads"), size, encode_n),
        decode_1: figure("decode, 1 thread", size, decode_1),
        decode_n: figure(format!("decode, {threads} threads"), size, decode_n),
        decode_degraded_n: figure(
            format!("decode, {} data shards lost, {threads} threads", p.m),
            size,
            decode_degraded_n,
        ),
        options,
    })
}

/// A deterministic document of any size generated on the fly (never held in memory): a
/// random 1 MiB block with the block number written into its first 8 bytes.
pub struct SampleStream {
    block: Vec<u8>,
    size: u64,
    pos: u64,
}

impl SampleStream {
    pub fn new(size: u64, seed: u64) -> Self {
        Self {
            block: sample_data(1 << 20, seed),
            size,
            pos: 0,
        }
    }

    /// Fills `out` with the bytes at the current position and advances.
    fn fill(&mut self, out: &mut [u8]) -> usize {
        let n = (out.len() as u64).min(self.size - self.pos) as usize;
        let mut done = 0;
        while done < n {
            let pos = self.pos + done as u64;
            let block_no = pos >> 20;
            let off = (pos & ((1 << 20) - 1)) as usize;
            let take = (n - done).min((1 << 20) - off);
            let dst = &mut out[done..done + take];
            dst.copy_from_slice(&self.block[off..off + take]);
            // Stamp the block number over bytes 0..8 of each block.
            let stamp = block_no.to_le_bytes();
            for (i, b) in dst.iter_mut().enumerate().take(8usize.saturating_sub(off)) {
                *b ^= stamp[off + i];
            }
            done += take;
        }
        self.pos += n as u64;
        n
    }
}

impl tokio::io::AsyncRead for SampleStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.fill(buf.initialize_unfilled());
        buf.advance(n);
        std::task::Poll::Ready(Ok(()))
    }
}

/// Checks written bytes against a [`SampleStream`] as they arrive, holding nothing.
pub struct SampleCheck {
    expected: SampleStream,
    scratch: Vec<u8>,
    mismatch: bool,
}

impl SampleCheck {
    pub fn new(size: u64, seed: u64) -> Self {
        Self {
            expected: SampleStream::new(size, seed),
            scratch: Vec::new(),
            mismatch: false,
        }
    }

    /// Whether exactly the expected bytes were written.
    pub fn matched(&self) -> bool {
        !self.mismatch && self.expected.pos == self.expected.size
    }
}

impl tokio::io::AsyncWrite for SampleCheck {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        this.scratch.resize(buf.len(), 0);
        let n = this.expected.fill(&mut this.scratch);
        if n != buf.len() || this.scratch[..] != *buf {
            this.mismatch = true;
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// CPU time (user + system) this process has used so far, where the OS reports it.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports in clock ticks of 1/100 s on every platform Rust supports.
    Some(Duration::from_millis(ticks * 10))
}

/// Cores busy on average between two [`cpu_time`] readings `wall` apart.
fn cores(before: Option<Duration>, after: Option<Duration>, wall: Duration) -> Option<f64> {
    Some((after?.saturating_sub(before?)).as_secs_f64() / wall.as_secs_f64())
}

/// Peak resident memory of this process so far (VmHWM), in bytes, where the OS reports it.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What `dangan bench cluster` measures.
#[derive(Debug, Clone)]
pub struct ClusterBenchOptions {
    pub peers: usize,
    pub document: u64,
    pub certificates: usize,
    pub certificate_size: usize,
    pub in_flight: usize,
}

impl Default for ClusterBenchOptions {
    fn default() -> Self {
        Self {
            peers: 6,
            document: 256 << 20,
            certificates: 500,
            certificate_size: 50 << 10,
            in_flight: 16,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Latency {
    pub p50: Duration,
    pub p99: Duration,
    pub per_second: f64,
}

fn latency(mut times: Vec<Duration>, wall: Duration) -> Latency {
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    Latency {
        p50: at(0.50),
        p99: at(0.99),
        per_second: times.len() as f64 / wall.as_secs_f64(),
    }
}

#[derive(Debug, Clone)]
pub struct ClusterBenchReport {
    pub options: ClusterBenchOptions,
    pub transport_floor_mb_s: f64,
    pub put: Figure,
    pub get: Figure,
    /// Cores busy on average during the put and the get (client and peers together).
    pub put_cores: Option<f64>,
    pub get_cores: Option<f64>,
    pub cert_put: Latency,
    /// The certificate puts' two phases: shards and manifest durable, then registration.
    pub cert_put_stored: Latency,
    pub cert_put_registered: Latency,
    /// CPU time (client, peers and validator together) per certificate put and get.
    pub cert_put_cpu: Option<Duration>,
    pub cert_get_cpu: Option<Duration>,
    pub cert_get: Latency,
    /// Peak resident memory once the large document was put and read back.
    pub peak_rss_document: Option<u64>,
    /// Peak resident memory of the whole run.
    pub peak_rss: Option<u64>,
}

impl fmt::Display for ClusterBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            f,
            "cluster benchmark: {} peers on 127.0.0.1 in this process (QUIC + mutual TLS, redb)",
            o.peers
        )?;
        writeln!(
            f,
            "transport floor (one quinn connection, same settings, median of 3): {:>6.0} MB/s",
            self.transport_floor_mb_s
        )?;
        for (name, fig, cores) in [
            ("put", &self.put, self.put_cores),
            ("get", &self.get, self.get_cores),
        ] {
            writeln!(
                f,
                "{name} {:>5} MiB document: {:>8.0} MB/s = {:.2} of the transport floor (target >= {}), {} cores busy",
                o.document >> 20,
                fig.mb_per_s(),
                fig.mb_per_s() / self.transport_floor_mb_s,
                if name == "put" { "0.30" } else { "0.40" },
                cores.map_or("?".into(), |c| format!("{c:.2}")),
            )?;
        }
        for (name, l, cpu) in [
            ("put", &self.cert_put, self.cert_put_cpu),
            ("get", &self.cert_get, self.cert_get_cpu),
        ] {
            writeln!(
                f,
                "{name} {} KiB certificates, {} in flight: p50 {:.2} ms, p99 {:.2} ms, {:.0} documents/s, {} ms of CPU each{}",
                o.certificate_size >> 10,
                o.in_flight,
                ms(l.p50),
                ms(l.p99),
                l.per_second,
                cpu.map_or("?".into(), |c| format!("{:.2}", ms(c))),
                if name == "put" {
                    " (target p99 < 10 ms)"
                } else {
                    ""
                }
            )?;
            if name == "put" {
                writeln!(
                    f,
                    "  of which shards and manifest durable: p50 {:.2} ms, p99 {:.2} ms; then registration on chain: p50 {:.2} ms, p99 {:.2} ms",
                    ms(self.cert_put_stored.p50),
                    ms(self.cert_put_stored.p99),
                    ms(self.cert_put_registered.p50),
                    ms(self.cert_put_registered.p99),
                )?;
            }
        }
        let mib = |r: Option<u64>| {
            r.map_or("not reported by this OS".into(), |r| {
                format!("{} MiB", r >> 20)
            })
        };
        write!(
            f,
            "peak RSS of the process: {} after the large document (target < 256 MiB), {} at the end",
            mib(self.peak_rss_document),
            mib(self.peak_rss)
        )
    }
}

/// Runs the cluster benchmark on a [`crate::cluster::LocalCluster`].
pub async fn cluster(
    options: ClusterBenchOptions,
) -> Result<ClusterBenchReport, crate::cluster::ClusterError> {
    use crate::client::ClientOptions;
    use crate::cluster::{ClusterError, LocalCluster};

    let floor = median_transport_floor().await?;
    let cluster = LocalCluster::start(options.peers, 3).await?;
    let client = cluster.client(ClientOptions::default())?;

    let size = options.document;
    let (start, cpu) = (Instant::now(), cpu_time());
    let receipt = client
        .put(
            SampleStream::new(size, 3),
            Some(size),
            bench_info(),
            &|_, _| {},
        )
        .await?;
    let put = figure("put", size as usize, start.elapsed());
    let put_cores = cores(cpu, cpu_time(), put.time);
    let mut check = SampleCheck::new(size, 3);
    let (start, cpu) = (Instant::now(), cpu_time());
    client
        .get(&receipt.id, &receipt.key, &mut check, &|_, _| {})
        .await?;
    let get = figure("get", size as usize, start.elapsed());
    let get_cores = cores(cpu, cpu_time(), get.time);
    let peak_rss_document = peak_rss();
    if !check.matched() {
        return Err(ClusterError::Check("the document read back differs".into()));
    }

    // Certificates: `in_flight` workers, each putting then getting its share.
    let cert = Arc::new(sample_data(options.certificate_size, 9));
    let workers = options.in_flight.max(1);
    let per_worker = options.certificates.div_ceil(workers);
    let round = |phase_get: bool, ids: Arc<Vec<(crate::id::DocumentId, DataKey)>>| {
        certificate_round(&client, &cert, workers, per_worker, phase_get, ids)
    };
    let per_cert = |before: Option<Duration>, n: usize| {
        Some(cpu_time()?.saturating_sub(before?) / n.max(1) as u32)
    };
    let (start, cpu) = (Instant::now(), cpu_time());
    let (times, phases, made) = round(false, Arc::new(Vec::new())).await?;
    let wall = start.elapsed();
    let cert_put_cpu = per_cert(cpu, times.len());
    let cert_put = latency(times, wall);
    let cert_put_stored = latency(phases.iter().map(|p| p.stored).collect(), wall);
    let cert_put_registered = latency(phases.iter().map(|p| p.registered).collect(), wall);
    let (start, cpu) = (Instant::now(), cpu_time());
    let (times, _, _) = round(true, Arc::new(made)).await?;
    let cert_get_cpu = per_cert(cpu, times.len());
    let cert_get = latency(times, start.elapsed());

    client.close().await;
    cluster.shutdown().await;
    Ok(ClusterBenchReport {
        options,
        transport_floor_mb_s: floor,
        put,
        get,
        put_cores,
        get_cores,
        cert_put,
        cert_put_stored,
        cert_put_registered,
        cert_put_cpu,
        cert_get_cpu,
        cert_get,
        peak_rss_document,
        peak_rss: peak_rss(),
    })
}

/// The transport floor, MB/s: the median of three measurements, as the floor swings with
/// scheduling on a small machine.
async fn median_transport_floor() -> Result<f64, crate::cluster::ClusterError> {
    let mut floors = Vec::new();
    for _ in 0..3 {
        floors.push(
            crate::tls::measure_transport_floor(128 << 20)
                .await
                .map_err(|e| {
                    crate::cluster::ClusterError::Check(format!("transport floor: {e}"))
                })?,
        );
    }
    floors.sort_by(f64::total_cmp);
    Ok(floors[1])
}

/// What the cluster benchmark's documents say about themselves.
fn bench_info() -> DocumentInfo {
    DocumentInfo {
        department: "bench".into(),
        document_type: "bench".into(),
        created_at_ms: None,
    }
}

/// The documents one certificate round made: (id, data key) of each put.
type Made = Vec<(crate::id::DocumentId, DataKey)>;

/// One round of certificates: `workers` tasks at once, each putting `per_worker` copies of
/// `cert` one after the other, or (`phase_get`) reading back its share of `ids`; returns
/// every operation's time, the puts' phase timings and the documents put.
async fn certificate_round(
    client: &crate::client::Client,
    cert: &Arc<Vec<u8>>,
    workers: usize,
    per_worker: usize,
    phase_get: bool,
    ids: Arc<Made>,
) -> Result<(Vec<Duration>, Vec<crate::client::PutTimings>, Made), crate::cluster::ClusterError> {
    use crate::cluster::ClusterError;

    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let (client, cert, ids) = (client.clone(), cert.clone(), ids.clone());
        tasks.spawn(async move {
            let mut times = Vec::new();
            let mut phases = Vec::new();
            let mut made = Vec::new();
            for i in 0..per_worker {
                let t = Instant::now();
                if phase_get {
                    let Some((id, key)) = ids.get(w * per_worker + i) else {
                        break;
                    };
                    let mut out = Vec::new();
                    client.get(id, key, &mut out, &|_, _| {}).await?;
                    if out != *cert {
                        return Err(ClusterError::Check("certificate differs".into()));
                    }
                } else {
                    let r = client
                        .put(
                            std::io::Cursor::new(cert.as_ref().clone()),
                            None,
                            bench_info(),
                            &|_, _| {},
                        )
                        .await?;
                    phases.push(r.timings);
                    made.push((r.id, r.key));
                }
                times.push(t.elapsed());
            }
            Ok::<_, ClusterError>((times, phases, made))
        });
    }
    let mut times = Vec::new();
    let mut phases = Vec::new();
    let mut made = Vec::new();
    while let Some(res) = tasks.join_next().await {
        let (t, p, m) = res.map_err(|e| ClusterError::Check(e.to_string()))??;
        times.extend(t);
        phases.extend(p);
        made.extend(m);
    }
    Ok((times, phases, made))
}

/// What `dangan bench chain` measured: `validators` validators, each hosted by a peer on
/// 127.0.0.1 with its chain in a temporary redb file, and `departments` departments
/// submitting `RegisterDocument` over QUIC (`SubmitTx`), each in sequence.
#[derive(Debug, Clone)]
pub struct ChainBenchReport {
    pub validators: usize,
    pub departments: usize,
    /// Offered load, registrations per second in all (`None`: as fast as answered).
    pub rate: Option<f64>,
    pub registrations: usize,
    pub blocks: u64,
    pub commit: Latency,
}

impl fmt::Display for ChainBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let load = match self.rate {
            Some(r) => format!("offered {r:.0} registrations/s"),
            None => "each as fast as answered".to_string(),
        };
        writeln!(
            f,
            "chain benchmark: {} validator(s) on loopback QUIC (raft), {} departments submitting at once, {load}",
            self.validators, self.departments
        )?;
        write!(
            f,
            "{} registrations in {} blocks: {:.0} registrations/s, commit latency p50 {:.2} ms, p99 {:.2} ms",
            self.registrations,
            self.blocks,
            self.commit.per_second,
            self.commit.p50.as_secs_f64() * 1e3,
            self.commit.p99.as_secs_f64() * 1e3
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainBenchError {
    #[error("validator: {0}")]
    Ledger(#[from] crate::chain::ledger::LedgerError),
    #[error("peer: {0}")]
    Peer(#[from] crate::peer::PeerError),
    #[error("client: {0}")]
    Client(#[from] crate::client::ClientError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("a submitting task failed: {0}")]
    Task(String),
}

/// Registers `per_department` documents from each of `departments` departments at once,
/// through `validators` validators over loopback QUIC; with `rate`, the departments
/// together offer that many registrations per second (each on a fixed schedule) instead
/// of submitting as fast as they are answered.
pub async fn chain(
    validators: usize,
    departments: usize,
    per_department: usize,
    rate: Option<f64>,
) -> Result<ChainBenchReport, ChainBenchError> {
    let validators = validators.max(1);
    let dir = tempfile::tempdir()?;
    let setup = ChainBenchSetup::new(validators, departments)?;
    let running = start_validators(&setup, dir.path()).await?;
    let clients = chain_clients(&setup)?;
    let department_count = setup.depts.len();
    let (times, wall) = register_all(setup.depts, &clients, per_department, rate).await?;
    let blocks = running[0].0.status().height;
    for c in &clients {
        c.close().await;
    }
    // Every validator's raft stops at once (before any of their peers), so none of them
    // times out on the others and calls an election while the rest shut down.
    futures::future::join_all(running.iter().map(|(ledger, _)| ledger.shutdown())).await;
    for (_, peer) in running {
        peer.shutdown().await;
    }
    Ok(ChainBenchReport {
        validators,
        departments: department_count,
        rate,
        registrations: times.len(),
        blocks,
        commit: latency(times, wall),
    })
}

/// Who takes part in a chain benchmark: the validators, the peers hosting them (on
/// addresses picked now), the departments, and the few client endpoints that carry every
/// department's (already signed) transactions.
struct ChainBenchSetup {
    keys: Vec<crate::identity::Identity>,
    hosts: Vec<crate::identity::Identity>,
    depts: Vec<crate::identity::Identity>,
    senders: Vec<crate::identity::Identity>,
    membership: crate::tls::Membership,
    genesis: crate::chain::state::Genesis,
    addrs: Vec<std::net::SocketAddr>,
    nodes: Vec<crate::placement::NodeInfo>,
}

impl ChainBenchSetup {
    fn new(validators: usize, departments: usize) -> Result<Self, ChainBenchError> {
        use crate::chain::state::{Genesis, GenesisAccount};
        use crate::identity::{Identity, Role};
        use crate::placement::NodeInfo;
        use crate::tls::Membership;

        let keys: Vec<Identity> = (0..validators)
            .map(|_| Identity::generate(Role::Validator))
            .collect();
        let hosts: Vec<Identity> = (0..validators)
            .map(|_| Identity::generate(Role::Node))
            .collect();
        let depts: Vec<Identity> = (0..departments.max(1))
            .map(|_| Identity::generate(Role::Department))
            .collect();
        // A few client endpoints carry every department's (already signed) transactions.
        let senders: Vec<Identity> = (0..8)
            .map(|_| Identity::generate(Role::Department))
            .collect();
        let membership = Membership::new();
        for id in hosts.iter().chain(&senders) {
            membership.add(id.public());
        }
        let genesis = Genesis {
            chain_id: "bench".into(),
            validators: keys
                .iter()
                .map(|v| GenesisAccount::of(v, Role::Validator))
                .collect(),
            accounts: depts
                .iter()
                .map(|d| GenesisAccount::of(d, Role::Department))
                .collect(),
            nodes: Vec::new(),
        };
        let mut addrs = Vec::new();
        for _ in 0..validators {
            addrs.push(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?);
        }
        let nodes: Vec<NodeInfo> = (0..validators)
            .map(|i| NodeInfo {
                key: hosts[i].public(),
                zone: "validators".into(),
                weight: 0,
                addr: addrs[i].to_string(),
            })
            .collect();
        Ok(Self {
            keys,
            hosts,
            depts,
            senders,
            membership,
            genesis,
            addrs,
            nodes,
        })
    }
}

/// Opens each validator's ledger under `dir` and starts the peer hosting it; returns once
/// the chain is up (or after 10 s).
async fn start_validators(
    setup: &ChainBenchSetup,
    dir: &std::path::Path,
) -> Result<Vec<(Arc<crate::chain::ledger::Ledger>, crate::peer::PeerHandle)>, ChainBenchError> {
    use crate::chain::ledger::{Ledger, ValidatorNet};

    let ChainBenchSetup {
        keys,
        hosts,
        membership,
        genesis,
        addrs,
        nodes,
        ..
    } = setup;
    let validators = keys.len();
    let mut running = Vec::new();
    for i in 0..validators {
        let net = (validators > 1).then(|| ValidatorNet {
            host_identity: hosts[i].clone(),
            trust: Arc::new(membership.clone()),
            hosts: keys.iter().map(|k| k.public()).zip(nodes.clone()).collect(),
        });
        let vdir = dir.join(format!("v{i}"));
        std::fs::create_dir_all(&vdir)?;
        let ledger =
            Arc::new(Ledger::open(&vdir.join("chain.redb"), genesis, keys[i].clone(), net).await?);
        let peer = crate::peer::start(
            &hosts[i],
            Arc::new(membership.clone()),
            addrs[i],
            &vdir.join("store"),
            crate::peer::PeerLimits {
                max_concurrent_requests: 4096,
                ..Default::default()
            },
            Some(ledger.clone()),
            &mut Default::default(),
        )
        .await?;
        running.push((ledger, peer));
    }
    // Wait until the chain is up: a leader that a quorum answered, and every follower
    // hearing from it (so validator-to-validator connections exist before 256 departments
    // dial in at once; measured without this, a follower whose first handshake queued
    // behind theirs missed the leader for longer than the election timeout and called an
    // election, a 1 s stall in about one run in four).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !running.iter().all(|(l, _)| l.is_current()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(running)
}

/// One client per sender endpoint, each sending to the validators' chain.
fn chain_clients(setup: &ChainBenchSetup) -> Result<Vec<crate::client::Client>, ChainBenchError> {
    use crate::chain::client::ChainLink;
    use crate::client::{Client, ClientOptions};
    use crate::placement::Layout;

    let link = ChainLink {
        hosts: setup.nodes.clone(),
        validators: setup.keys.iter().map(|k| k.public()).collect(),
    };
    let mut clients = Vec::new();
    for sender in &setup.senders {
        clients.push(Client::new(
            sender,
            Arc::new(setup.membership.clone()),
            Layout::new(0, Vec::new()).map_err(crate::client::ClientError::from)?,
            ClientOptions {
                bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                chain: Some(link.clone()),
                ..ClientOptions::default()
            },
        )?);
    }
    Ok(clients)
}

/// Every department registers `per_department` documents at once, spread over `clients`;
/// returns every registration's commit latency and the wall time of them all.
async fn register_all(
    depts: Vec<crate::identity::Identity>,
    clients: &[crate::client::Client],
    per_department: usize,
    rate: Option<f64>,
) -> Result<(Vec<Duration>, Duration), ChainBenchError> {
    let interval = rate.map(|r| Duration::from_secs_f64(depts.len() as f64 / r.max(1.0)));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let department_count = depts.len();
    for (n, dept) in depts.into_iter().enumerate() {
        let client = clients[n % clients.len()].clone();
        // Spread the departments' schedules over one interval.
        let offset = interval.map(|i| i.mul_f64(n as f64 / department_count as f64));
        tasks.spawn(register_as(
            dept,
            client,
            per_department,
            start,
            interval,
            offset,
        ));
    }
    let mut times = Vec::new();
    while let Some(r) = tasks.join_next().await {
        times.extend(r.map_err(|e| ChainBenchError::Task(e.to_string()))??);
    }
    Ok((times, start.elapsed()))
}

/// One department's registrations, one after the other, or with `interval` each due at
/// `start + offset + interval * (nonce - 1)`; returns their commit latencies.
async fn register_as(
    dept: crate::identity::Identity,
    client: crate::client::Client,
    per_department: usize,
    start: Instant,
    interval: Option<Duration>,
    offset: Option<Duration>,
) -> Result<Vec<Duration>, crate::client::ClientError> {
    use crate::chain::tx::{Tx, TxBody};

    let mut times = Vec::with_capacity(per_department);
    let chain = client.chain()?.chain_key().await?;
    for nonce in 1..=per_department as u64 {
        if let (Some(i), Some(o)) = (interval, offset) {
            let due = start + o + i * (nonce as u32 - 1);
            tokio::time::sleep_until(due.into()).await;
        }
        let mut seed = dept.public().as_bytes().to_vec();
        seed.extend(nonce.to_le_bytes());
        let tx = Tx {
            sender: dept.public(),
            nonce,
            body: TxBody::RegisterDocument {
                document: crate::id::DocumentId::of(&seed),
            },
        }
        .sign(&dept, &chain);
        // On a schedule, latency counts from when the registration was due, so a
        // slow answer that delays the next one is not hidden (coordinated omission).
        let submitted = match (interval, offset) {
            (Some(i), Some(o)) => start + o + i * (nonce as u32 - 1),
            _ => Instant::now(),
        };
        client.chain()?.submit_tx(&tx).await?;
        times.push(submitted.elapsed());
    }
    Ok(times)
}

/// Half the registrations per second a saturated run reached: the load at which the commit
/// latency target (p99) is measured.
pub fn half_load(saturated: &ChainBenchReport) -> f64 {
    (saturated.commit.per_second / 2.0).max(1.0)
}

/// What `dangan bench ops` measures.
#[derive(Debug, Clone)]
pub struct OpsBenchOptions {
    /// Documents stored before the layout changes.
    pub documents: usize,
    /// Size of each, bytes.
    pub document: u64,
    /// Peers at the start, all in one zone (the case where slots matter most).
    pub peers: usize,
}

impl Default for OpsBenchOptions {
    fn default() -> Self {
        Self {
            documents: 8,
            document: 32 << 20,
            peers: 6,
        }
    }
}

/// One operation measured.
#[derive(Debug, Clone, Default)]
pub struct OpsPhase {
    /// Shards the layout change forces to move (the floor), 0 for repair and scrub.
    pub floor: u64,
    /// Shards moved (or rebuilt, for repair; checked, for scrub).
    pub shards: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl OpsPhase {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

#[derive(Debug, Clone, Default)]
pub struct OpsBenchReport {
    pub options: Option<OpsBenchOptions>,
    pub total_shards: u64,
    pub add: OpsPhase,
    pub drain: OpsPhase,
    pub repair: OpsPhase,
    pub scrub: OpsPhase,
}

impl fmt::Display for OpsBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(o) = &self.options {
            writeln!(
                f,
                "ops bench: {} peers in one zone, {} documents of {} MiB, {} shards (k + m = 4 + 2)",
                o.peers,
                o.documents,
                o.document >> 20,
                self.total_shards
            )?;
        }
        let n = self.options.as_ref().map_or(6, |o| o.peers) as f64;
        let line = |f: &mut fmt::Formatter<'_>, name: &str, p: &OpsPhase, ideal: f64| {
            writeln!(
                f,
                "{name:<22} moved {:>5} shards; floor {:>5} ({:.2}x); 1/{} of all = {:.1}; {:>7.1} MB in {:>6.2} s = {:>6.0} MB/s",
                p.shards,
                p.floor,
                p.shards as f64 / p.floor.max(1) as f64,
                ideal,
                self.total_shards as f64 / ideal,
                p.bytes as f64 / 1e6,
                p.elapsed.as_secs_f64(),
                p.mb_per_s()
            )
        };
        line(f, "add a peer (rebalance)", &self.add, n + 1.0)?;
        line(f, "drain a peer (rebalance)", &self.drain, n + 1.0)?;
        writeln!(
            f,
            "{:<22} rebuilt {:>5} shards of a lost peer; {:>7.1} MB in {:>6.2} s = {:>6.0} MB/s",
            "lose a peer (repair)",
            self.repair.shards,
            self.repair.bytes as f64 / 1e6,
            self.repair.elapsed.as_secs_f64(),
            self.repair.mb_per_s()
        )?;
        write!(
            f,
            "{:<22} re-hashed {:>5} shards on every peer; {:>7.1} MB in {:>6.2} s = {:>6.0} MB/s",
            "scrub",
            self.scrub.shards,
            self.scrub.bytes as f64 / 1e6,
            self.scrub.elapsed.as_secs_f64(),
            self.scrub.mb_per_s()
        )
    }
}

/// Adds a peer, drains one, loses one and scrubs, on a local cluster; see [`OpsBenchReport`].
pub async fn ops(options: OpsBenchOptions) -> Result<OpsBenchReport, crate::cluster::ClusterError> {
    use crate::chain::tx::TxBody;
    use crate::client::{ClientOptions, stripe_key};
    use crate::cluster::{ClusterError, LocalCluster};
    use crate::ops::{self, Journal, OpsOptions};

    let mut cluster = LocalCluster::start(options.peers, 1).await?;
    let client = cluster.client(ClientOptions::default())?;
    let mut stripes = Vec::new();
    for i in 0..options.documents {
        let bytes = sample_data(options.document as usize, 100 + i as u64);
        let receipt = crate::cluster::put_bytes(&client, bytes, "bench").await?;
        stripes.extend(receipt.manifest.stripes.iter().map(|ids| stripe_key(ids)));
    }
    client.close().await;
    let width = crate::manifest::CodingParams::default().width();
    let mut report = OpsBenchReport {
        options: Some(options.clone()),
        total_shards: (stripes.len() * width) as u64,
        ..OpsBenchReport::default()
    };
    let journal_dir = tempfile::tempdir()?;

    // A lost peer costs one connection attempt: keep it short so it does not skew the rates.
    let fast = || ClientOptions {
        connect_timeout: Duration::from_millis(300),
        ..ClientOptions::default()
    };
    let run = |cluster: &LocalCluster, old, new: crate::placement::Layout, journal: bool| {
        let op = cluster.operator_client(new.clone(), old, fast());
        let dir = journal_dir.path().to_path_buf();
        async move {
            let op = op?;
            let journal = match (journal, op.previous_layout()) {
                (true, Some(p)) => Some(Journal::open(&dir, p.epoch, new.epoch)?),
                _ => None,
            };
            let r = ops::converge(&op, journal.as_ref(), &OpsOptions::default(), &|_| {}).await;
            op.close().await;
            let r = r?;
            if !r.failures.is_empty() {
                return Err(ClusterError::Check(r.failures.join("; ")));
            }
            Ok::<_, ClusterError>(r)
        }
    };

    // Add a peer.
    let (_, added) = cluster.add_peer("zone-0").await?;
    let (old, new) = cluster
        .change_layout(TxBody::AddNode {
            node: added.key,
            addr: added.addr.clone(),
            zone: added.zone.clone(),
            weight: added.weight,
        })
        .await?;
    let floor = stripes
        .iter()
        .map(|s| {
            new.place(s, width)
                .map(|p| p.iter().filter(|n| n.key == added.key).count() as u64)
        })
        .sum::<Result<u64, _>>()?;
    let r = run(&cluster, Some(old), new, true).await?;
    report.add = OpsPhase {
        floor,
        shards: r.shards_moved + r.shards_rebuilt,
        bytes: r.bytes,
        elapsed: r.elapsed,
    };

    // Drain the first peer.
    let drained = cluster.peer(0).ok_or(ClusterError::PeerStopped(0))?.id();
    let floor = cluster.shards_held(0)?;
    let (old, new) = cluster
        .change_layout(TxBody::DrainNode { node: drained })
        .await?;
    let r = run(&cluster, Some(old), new, true).await?;
    report.drain = OpsPhase {
        floor,
        shards: r.shards_moved + r.shards_rebuilt,
        bytes: r.bytes,
        elapsed: r.elapsed,
    };

    // Lose a peer for good: stop it, take it out of placement, repair. (First one more
    // peer, so that k + m peers stay live.)
    let (_, spare) = cluster.add_peer("zone-0").await?;
    let (old, new) = cluster
        .change_layout(TxBody::AddNode {
            node: spare.key,
            addr: spare.addr.clone(),
            zone: spare.zone.clone(),
            weight: spare.weight,
        })
        .await?;
    run(&cluster, Some(old), new, true).await?;
    let lost = cluster.peer(1).ok_or(ClusterError::PeerStopped(1))?.id();
    cluster.stop_peer(1).await?;
    let (_, new) = cluster
        .change_layout(TxBody::DrainNode { node: lost })
        .await?;
    let r = run(&cluster, None, new.clone(), false).await?;
    report.repair = OpsPhase {
        floor: 0,
        shards: r.shards_rebuilt,
        bytes: r.bytes,
        elapsed: r.elapsed,
    };

    // Scrub every live peer.
    let op = cluster.operator_client(new, None, fast())?;
    let s = ops::scrub(&op, &OpsOptions::default(), &|_| {}).await;
    op.close().await;
    let s = s?;
    report.scrub = OpsPhase {
        floor: 0,
        shards: s.shards_checked,
        bytes: s.bytes,
        elapsed: s.elapsed,
    };
    cluster.shutdown().await;
    Ok(report)
}

/// What `dangan bench ops-scale` measures: the memory a repair needs over many small
/// documents (each a one-stripe certificate).
#[derive(Debug, Clone)]
pub struct OpsScaleOptions {
    /// Documents stored and registered before the repair.
    pub documents: usize,
    /// Size of each, bytes.
    pub document: usize,
    /// Puts in flight at once while storing them.
    pub in_flight: usize,
    /// Peers, all in one zone.
    pub peers: usize,
    /// The `dangan` executable to run the repair again with, in a process of its own, so
    /// that its peak memory is the worker's alone (the in-process figure includes the peers
    /// and the validator).
    pub repair_process: Option<std::path::PathBuf>,
}

impl Default for OpsScaleOptions {
    fn default() -> Self {
        Self {
            documents: 10_000,
            document: 256,
            in_flight: 32,
            peers: 6,
            repair_process: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct OpsScaleReport {
    pub options: OpsScaleOptions,
    /// Putting and registering every document.
    pub stored: Duration,
    /// Resident memory of the whole process (peers, validator, client) before the repair.
    pub rss_before: Option<u64>,
    /// Peak resident memory during the repair (the window reset just before it, where the
    /// OS allows: `reset`).
    pub peak_rss: Option<u64>,
    pub reset: bool,
    pub documents: u64,
    pub stripes: u64,
    pub failures: usize,
    pub repair: Duration,
    /// `dangan repair` run as its own process over the same cluster: its time and peak
    /// resident memory (`ru_maxrss`).
    pub process: Option<(Duration, u64)>,
}

impl fmt::Display for OpsScaleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        let mib = |b: Option<u64>| b.map_or("?".to_string(), |b| format!("{} MiB", b >> 20));
        writeln!(
            f,
            "ops scale bench: {} peers in one zone, {} documents of {} bytes stored and registered in {:.1} s ({:.0}/s, {} in flight)",
            o.peers,
            o.documents,
            o.document,
            self.stored.as_secs_f64(),
            o.documents as f64 / self.stored.as_secs_f64().max(1e-9),
            o.in_flight
        )?;
        write!(
            f,
            "repair over {} documents, {} stripes ({} failures) in {:.1} s: resident before {}, peak during the repair {}{}",
            self.documents,
            self.stripes,
            self.failures,
            self.repair.as_secs_f64(),
            mib(self.rss_before),
            mib(self.peak_rss),
            if self.reset {
                ""
            } else {
                " (peak since the start: the OS did not allow a reset)"
            }
        )?;
        if let Some((took, peak)) = self.process {
            write!(
                f,
                "\n`dangan repair` in its own process over the same cluster: {:.1} s, peak resident {}",
                took.as_secs_f64(),
                mib(Some(peak))
            )?;
        }
        Ok(())
    }
}

/// Runs `exe repair` over `cluster` as the operator, in a process of its own: its time and
/// peak resident memory (its `VmHWM`, read every 100 ms while it runs; `ru_maxrss` of a
/// child would count the pages it shared with this process before its exec).
async fn repair_in_process(
    exe: &std::path::Path,
    cluster: &crate::cluster::LocalCluster,
) -> Result<(Duration, u64), crate::cluster::ClusterError> {
    use crate::cluster::ClusterError;
    let dir = cluster.root().join("operator-files");
    let (file, key) = cluster.write_operator_files(&dir)?;
    let errors = dir.join("repair.stderr");
    let started = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .arg("repair")
        .arg("--cluster")
        .arg(&file)
        .arg("--key")
        .arg(&key)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&errors)?)
        .spawn()?;
    let status_file = child.id().map(|pid| format!("/proc/{pid}/status"));
    let hwm = || -> Option<u64> {
        let status = std::fs::read_to_string(status_file.as_ref()?).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    let mut peak = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = tick.tick() => peak = peak.max(hwm().unwrap_or(0)),
        }
    };
    let took = started.elapsed();
    if !status.success() {
        return Err(ClusterError::Check(format!(
            "`dangan repair` failed ({status}): {}",
            std::fs::read_to_string(&errors).unwrap_or_default().trim()
        )));
    }
    Ok((took, peak))
}

/// Resident memory of this process now (VmRSS), in bytes, where the OS reports it.
pub fn current_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Stores `documents` small documents on a local cluster (`in_flight` puts at once, each
/// registered on its chain), then measures a repair over all of them: its time and the
/// process's peak resident memory while it runs. Nothing needs repairing; the repair still
/// lists every document, reads every manifest and checks every shard.
pub async fn ops_scale(
    options: OpsScaleOptions,
) -> Result<OpsScaleReport, crate::cluster::ClusterError> {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::client::ClientOptions;
    use crate::cluster::{ClusterError, LocalCluster};
    use crate::ops::{self, OpsOptions};

    let cluster = LocalCluster::start(options.peers, 1).await?;
    let client = cluster.client(ClientOptions::default())?;
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut puts = tokio::task::JoinSet::new();
    for _ in 0..options.in_flight.max(1) {
        let (client, next, options) = (client.clone(), next.clone(), options.clone());
        puts.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= options.documents {
                    return Ok::<(), crate::client::ClientError>(());
                }
                let bytes = sample_data(options.document, i as u64);
                crate::cluster::put_bytes(&client, bytes, "bench").await?;
            }
        });
    }
    while let Some(r) = puts.join_next().await {
        r.map_err(|e| ClusterError::Check(format!("a put task failed: {e}")))??;
    }
    let stored = started.elapsed();
    client.close().await;

    let op = cluster.operator_client(cluster.layout().clone(), None, ClientOptions::default())?;
    let rss_before = current_rss();
    let reset = reset_peak_rss();
    let r = ops::converge(&op, None, &OpsOptions::default(), &|_| {}).await;
    let peak_rss = peak_rss();
    op.close().await;
    let r = r?;
    let process = match &options.repair_process {
        Some(exe) => Some(repair_in_process(exe, &cluster).await?),
        None => None,
    };
    cluster.shutdown().await;
    Ok(OpsScaleReport {
        options,
        stored,
        rss_before,
        peak_rss,
        reset,
        documents: r.documents,
        stripes: r.stripes,
        failures: r.failures.len(),
        repair: r.elapsed,
        process,
    })
}

/// The machine a benchmark ran on, as `/proc` and the standard library report it.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    /// Total memory, bytes (`MemTotal`), where the OS reports it.
    pub memory: Option<u64>,
    /// `model name` of the first CPU in `/proc/cpuinfo`, where the OS reports it.
    pub cpu_model: Option<String>,
}

impl Machine {
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory: parse_mem_total(&meminfo),
            cpu_model: parse_cpu_model(&cpuinfo),
        }
    }
}

fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|v| !v.is_empty())
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cores, {}, {}",
            self.cores,
            self.memory
                .map_or("memory not reported".into(), |m| format!(
                    "{:.1} GiB",
                    m as f64 / (1u64 << 30) as f64
                )),
            self.cpu_model
                .as_deref()
                .unwrap_or("CPU model not reported")
        )
    }
}

/// Starts a new peak-RSS window (Linux: writing 5 to `/proc/self/clear_refs` resets
/// VmHWM), so each benchmark of [`all`] reports its own peak. False where the OS does not
/// allow it; the peak then covers everything run before too.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// What `dangan bench all` runs: every benchmark, with its own options.
#[derive(Debug, Clone)]
pub struct AllBenchOptions {
    pub codec: CodecBenchOptions,
    pub cluster: ClusterBenchOptions,
    /// Validator counts to run the chain benchmark with (each a separate run).
    pub chain_validators: Vec<usize>,
    pub chain_departments: usize,
    pub chain_per_department: usize,
    pub ops: OpsBenchOptions,
    /// The gateway benchmark (it needs the `dangan` executable); `None`: not run.
    pub gateway: Option<gateway::GatewayBenchOptions>,
}

impl Default for AllBenchOptions {
    fn default() -> Self {
        Self {
            codec: CodecBenchOptions::default(),
            cluster: ClusterBenchOptions::default(),
            chain_validators: vec![1, 3],
            chain_departments: 256,
            chain_per_department: 100,
            ops: OpsBenchOptions::default(),
            gateway: None,
        }
    }
}

impl AllBenchOptions {
    /// Smaller sizes everywhere: a smoke run in well under a minute, not for comparing.
    pub fn quick() -> Self {
        let mut options = Self::default();
        options.codec.size = 16 << 20;
        options.codec.repetitions = 3;
        options.cluster.document = 32 << 20;
        options.cluster.certificates = 64;
        options.chain_departments = 32;
        options.chain_per_department = 20;
        options.ops.documents = 2;
        options.ops.document = 8 << 20;
        options
    }
}

/// One benchmark's peak resident memory: its own window where [`reset_peak_rss`] works.
#[derive(Debug, Clone)]
pub struct PeakRss {
    pub bytes: Option<u64>,
    /// False: the window could not be reset, the figure includes what ran before.
    pub own: bool,
}

/// Every benchmark in one run, for comparing releases: see [`all`].
#[derive(Debug, Clone)]
pub struct AllBenchReport {
    pub machine: Machine,
    /// The package version and the commit it was built from (as the caller knows it).
    pub version: String,
    pub codec: CodecBenchReport,
    pub codec_rss: PeakRss,
    pub cluster: ClusterBenchReport,
    pub cluster_rss: PeakRss,
    pub chain: Vec<(ChainBenchReport, PeakRss)>,
    pub ops: OpsBenchReport,
    pub ops_rss: PeakRss,
    pub gateway: Option<gateway::GatewayBenchReport>,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error("codec benchmark: {0}")]
    Codec(#[from] CodecError),
    #[error("cluster or ops benchmark: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("chain benchmark: {0}")]
    Chain(#[from] ChainBenchError),
    #[error("codec benchmark task: {0}")]
    Task(String),
}

/// Runs the cluster, ops, chain and codec benchmarks one after the other (the cluster first,
/// so its peak RSS is not raised by what ran before where the window cannot be reset).
pub async fn all(options: AllBenchOptions, version: String) -> Result<AllBenchReport, BenchError> {
    let start = Instant::now();
    let machine = Machine::this();
    let own = reset_peak_rss();
    let cluster = self::cluster(options.cluster.clone()).await?;
    let cluster_rss = PeakRss {
        bytes: peak_rss(),
        own,
    };
    let own = reset_peak_rss();
    let ops = self::ops(options.ops.clone()).await?;
    let ops_rss = PeakRss {
        bytes: peak_rss(),
        own,
    };
    let gateway = match options.gateway.clone() {
        Some(o) => Some(self::gateway::run(o).await?),
        None => None,
    };
    let mut chain = Vec::new();
    for &v in &options.chain_validators {
        // As fast as answered, then at half the rate reached (the latency target's load).
        let mut rate = None;
        for _ in 0..2 {
            let own = reset_peak_rss();
            let report = self::chain(
                v,
                options.chain_departments,
                options.chain_per_department,
                rate,
            )
            .await?;
            rate = Some(half_load(&report));
            chain.push((
                report,
                PeakRss {
                    bytes: peak_rss(),
                    own,
                },
            ));
        }
    }
    let own = reset_peak_rss();
    let codec_options = options.codec.clone();
    let codec = tokio::task::spawn_blocking(move || self::codec(codec_options))
        .await
        .map_err(|e| BenchError::Task(e.to_string()))??;
    let codec_rss = PeakRss {
        bytes: peak_rss(),
        own,
    };
    Ok(AllBenchReport {
        machine,
        version,
        codec,
        codec_rss,
        cluster,
        cluster_rss,
        chain,
        ops,
        ops_rss,
        gateway,
        elapsed: start.elapsed(),
    })
}

/// One row of the `bench all` table; empty cells are figures the row does not have.
#[derive(Default)]
struct Row {
    bench: &'static str,
    what: String,
    mb_s: Option<f64>,
    docs_s: Option<f64>,
    p50: Option<Duration>,
    p99: Option<Duration>,
    moved: Option<(u64, u64)>,
    rss: Option<String>,
}

impl AllBenchReport {
    fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        self.codec_rows(&mut rows);
        self.cluster_rows(&mut rows);
        self.chain_rows(&mut rows);
        self.ops_rows(&mut rows);
        self.gateway_rows(&mut rows);
        rows
    }

    /// The large fetch three ways, the small documents, and the large upload and download
    /// with the gateway process's own peak RSS.
    fn gateway_rows(&self, rows: &mut Vec<Row>) {
        let Some(g) = &self.gateway else { return };
        let o = &g.options;
        let (gw, cli, inproc) = g.fetch_medians();
        let mib = o.fetch >> 20;
        for (what, mb_s) in [
            (
                format!(
                    "fetch {mib} MiB over HTTP ({:.2} of `dangan get`)",
                    g.ratio()
                ),
                gw,
            ),
            (format!("`dangan get` {mib} MiB, its own process"), cli),
            (format!("`Client::get` {mib} MiB, in process"), inproc),
        ] {
            rows.push(Row {
                bench: "gateway",
                what,
                mb_s: Some(mb_s),
                ..Row::default()
            });
        }
        for (name, l) in [("store", &g.small_store), ("fetch", &g.small_fetch)] {
            rows.push(Row {
                bench: "gateway",
                what: format!("{name} {} KiB, {} in flight", o.small >> 10, o.in_flight),
                docs_s: Some(l.per_second),
                p50: Some(l.p50),
                p99: Some(l.p99),
                ..Row::default()
            });
        }
        for (name, phase) in [("upload", &g.upload), ("download", &g.download)] {
            if let Some((fig, peak)) = phase {
                rows.push(Row {
                    bench: "gateway",
                    what: format!(
                        "{name} {} MiB (peak RSS: the gateway process)",
                        fig.bytes >> 20
                    ),
                    mb_s: Some(fig.mb_per_s()),
                    rss: peak.map(|b| {
                        format!("{}{}", b >> 20, if g.reset { "" } else { " (since start)" })
                    }),
                    ..Row::default()
                });
            }
        }
    }

    /// One row per codec figure; the last one carries the codec's peak RSS.
    fn codec_rows(&self, rows: &mut Vec<Row>) {
        let c = &self.codec;
        let p = &c.options.params;
        for fig in [
            &c.blake3,
            &c.chacha,
            &c.rs,
            &c.serial_floor,
            &c.encode_1,
            &c.encode_n,
            &c.decode_1,
            &c.decode_n,
            &c.decode_degraded_n,
        ] {
            rows.push(Row {
                bench: "codec",
                what: format!(
                    "{} ({} MiB, {}+{})",
                    fig.name,
                    c.options.size >> 20,
                    p.k,
                    p.m
                ),
                mb_s: Some(fig.mb_per_s()),
                ..Row::default()
            });
        }
        rows.last_mut().expect("codec rows").rss = rss_cell(&self.codec_rss);
    }

    /// The transport floor, the large document's put and get, and the certificates' put
    /// (with its two phases) and get.
    fn cluster_rows(&self, rows: &mut Vec<Row>) {
        let cl = &self.cluster;
        let o = &cl.options;
        rows.push(Row {
            bench: "cluster",
            what: "QUIC transport floor, one connection".into(),
            mb_s: Some(cl.transport_floor_mb_s),
            ..Row::default()
        });
        for (name, fig) in [("put", &cl.put), ("get", &cl.get)] {
            rows.push(Row {
                bench: "cluster",
                what: format!(
                    "{name} {} MiB, {} peers ({:.2} of the floor)",
                    o.document >> 20,
                    o.peers,
                    fig.mb_per_s() / cl.transport_floor_mb_s
                ),
                mb_s: Some(fig.mb_per_s()),
                rss: (name == "get")
                    .then(|| cl.peak_rss_document.map(|b| format!("{}", b >> 20)))
                    .flatten(),
                ..Row::default()
            });
        }
        for (name, l) in [("put", &cl.cert_put), ("get", &cl.cert_get)] {
            rows.push(Row {
                bench: "cluster",
                what: format!(
                    "certificate {name}, {} KiB, {} in flight",
                    o.certificate_size >> 10,
                    o.in_flight
                ),
                docs_s: Some(l.per_second),
                p50: Some(l.p50),
                p99: Some(l.p99),
                rss: (name == "get")
                    .then(|| rss_cell(&self.cluster_rss))
                    .flatten(),
                ..Row::default()
            });
            if name == "put" {
                // The headline row above is the whole put; these are its two phases.
                for (phase, l) in [
                    ("shards and manifest durable", &cl.cert_put_stored),
                    ("then registered on chain", &cl.cert_put_registered),
                ] {
                    rows.push(Row {
                        bench: "cluster",
                        what: format!("certificate put, of which: {phase}"),
                        p50: Some(l.p50),
                        p99: Some(l.p99),
                        ..Row::default()
                    });
                }
            }
        }
    }

    /// One row per chain run.
    fn chain_rows(&self, rows: &mut Vec<Row>) {
        for (r, peak) in &self.chain {
            rows.push(Row {
                bench: "chain",
                what: match r.rate {
                    None => format!(
                        "{} validator(s), {} departments, {} blocks",
                        r.validators, r.departments, r.blocks
                    ),
                    Some(rate) => format!(
                        "{} validator(s), offered {rate:.0}/s (half load), {} blocks",
                        r.validators, r.blocks
                    ),
                },
                docs_s: Some(r.commit.per_second),
                p50: Some(r.commit.p50),
                p99: Some(r.commit.p99),
                rss: rss_cell(peak),
                ..Row::default()
            });
        }
    }

    /// One row per layout operation; the last one carries the ops' peak RSS.
    fn ops_rows(&self, rows: &mut Vec<Row>) {
        let ops = &self.ops;
        let shape = ops.options.as_ref().map_or(String::new(), |o| {
            format!(", {} x {} MiB", o.documents, o.document >> 20)
        });
        for (what, phase, moved) in [
            ("add a peer, rebalance", &ops.add, true),
            ("drain a peer, rebalance", &ops.drain, true),
            ("lose a peer, repair", &ops.repair, false),
            ("scrub every peer", &ops.scrub, false),
        ] {
            rows.push(Row {
                bench: "ops",
                what: format!("{what}{shape}"),
                mb_s: Some(phase.mb_per_s()),
                moved: moved.then_some((phase.shards, phase.floor)),
                ..Row::default()
            });
        }
        rows.last_mut().expect("ops rows").rss = rss_cell(&self.ops_rss);
    }
}

/// A peak RSS cell, MiB, flagged where it covers the whole run so far.
fn rss_cell(r: &PeakRss) -> Option<String> {
    r.bytes.map(|b| {
        format!(
            "{}{}",
            b >> 20,
            if r.own { "" } else { " (whole run so far)" }
        )
    })
}

impl fmt::Display for AllBenchReport {
    /// A Markdown table, so it can go into a release note or the README as printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "dangan {} — bench all", self.version)?;
        writeln!(f, "machine: {}", self.machine)?;
        writeln!(
            f,
            "ran in {:.0} s; peak RSS is per benchmark (the process's VmHWM)",
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| bench | what | MB/s | documents/s | p50 ms | p99 ms | moved / minimum | peak RSS MiB |"
        )?;
        writeln!(f, "|---|---|---:|---:|---:|---:|---:|---:|")?;
        let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.0}"));
        let ms = |v: Option<Duration>| {
            v.map_or(String::new(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
        };
        for r in self.rows() {
            writeln!(
                f,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r.bench,
                r.what,
                num(r.mb_s),
                num(r.docs_s),
                ms(r.p50),
                ms(r.p99),
                r.moved.map_or(String::new(), |(m, floor)| format!(
                    "{m} / {floor} ({:.2}x)",
                    m as f64 / floor.max(1) as f64
                )),
                r.rss.unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_fields_come_from_proc_text() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC  7B13 64-Core Processor\n\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(
            parse_cpu_model(cpuinfo).as_deref(),
            Some("AMD EPYC 7B13 64-Core Processor")
        );
        assert_eq!(parse_cpu_model("processor\t: 0\n"), None);
        assert_eq!(parse_cpu_model("model name\t:   \n"), None);
        let meminfo = "MemTotal:       24598812 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(24_598_812 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
    }
}

/// What `dangan bench abuse` measures: a department's put and get throughput and its
/// certificates' get latency, idle and while keys with no account attack every peer and
/// the validator's host.
#[derive(Debug, Clone)]
pub struct AbuseBenchOptions {
    pub peers: usize,
    pub document: u64,
    pub certificates: usize,
    pub in_flight: usize,
    /// Refused requests a second the attackers offer in case (b), all peers together.
    pub refused_rate: u64,
}

impl Default for AbuseBenchOptions {
    fn default() -> Self {
        Self {
            peers: 6,
            document: 64 << 20,
            certificates: 128,
            in_flight: 8,
            refused_rate: 10_000,
        }
    }
}

/// The abuse of one run of the legitimate workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abuse {
    Idle,
    /// Streams that send one byte of a header and wait, on every peer.
    HalfOpen,
    /// Requests for documents nobody registered, at the offered rate.
    Refused,
    /// New connections as fast as the attackers can open them, a key each.
    Connections,
}

impl fmt::Display for Abuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Abuse::Idle => "idle",
            Abuse::HalfOpen => "(a) half-open streams",
            Abuse::Refused => "(b) refused requests",
            Abuse::Connections => "(c) connection flood",
        })
    }
}

/// What the attackers did during one case.
#[derive(Debug, Clone, Default)]
pub struct AttackCount {
    /// Streams opened or requests sent, and connections opened.
    pub sent: u64,
    pub connections: u64,
    /// Answers `Busy`, refusals, resets and closed connections they got.
    pub turned_away: u64,
    pub time: Duration,
}

#[derive(Debug, Clone)]
pub struct AbuseCase {
    pub abuse: Abuse,
    pub put: Figure,
    pub get: Figure,
    pub cert_get: Latency,
    pub attack: AttackCount,
}

#[derive(Debug, Clone)]
pub struct AbuseBenchReport {
    pub options: AbuseBenchOptions,
    pub cases: Vec<AbuseCase>,
}

impl fmt::Display for AbuseBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "abuse benchmark: {} peers and a validator on 127.0.0.1 in this process, attackers in it too (they share the cores)",
            o.peers
        )?;
        writeln!(
            f,
            "a department: put and get of a {} MiB document, get of {} certificates of 50 KiB, {} in flight; target: within 2x of idle",
            o.document >> 20,
            o.certificates,
            o.in_flight
        )?;
        let idle = self.cases.first();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        for c in &self.cases {
            let ratio = |x: f64, idle: f64| {
                if c.abuse == Abuse::Idle {
                    String::new()
                } else {
                    format!(" ({:.2}x idle)", x / idle)
                }
            };
            write!(
                f,
                "{:<24} put {:>6.0} MB/s{}, get {:>6.0} MB/s{}, certificate get p50 {:.1} ms, p99 {:.1} ms{}",
                c.abuse.to_string(),
                c.put.mb_per_s(),
                ratio(c.put.mb_per_s(), idle.map_or(1.0, |i| i.put.mb_per_s())),
                c.get.mb_per_s(),
                ratio(c.get.mb_per_s(), idle.map_or(1.0, |i| i.get.mb_per_s())),
                ms(c.cert_get.p50),
                ms(c.cert_get.p99),
                ratio(ms(c.cert_get.p99), idle.map_or(1.0, |i| ms(i.cert_get.p99))),
            )?;
            if c.abuse != Abuse::Idle {
                let secs = c.attack.time.as_secs_f64().max(1e-9);
                write!(
                    f,
                    "; attackers: {:.0} streams or requests/s, {:.0} connections/s, {:.0} turned away/s",
                    c.attack.sent as f64 / secs,
                    c.attack.connections as f64 / secs,
                    c.attack.turned_away as f64 / secs,
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Runs the abuse benchmark: the legitimate workload idle, then under each abuse, on one
/// [`crate::cluster::LocalCluster`] with the default peer limits; fails if a run of the
/// workload fails or the validator falls behind.
pub async fn abuse(
    options: AbuseBenchOptions,
) -> Result<AbuseBenchReport, crate::cluster::ClusterError> {
    use crate::client::ClientOptions;
    use crate::cluster::{ClusterError, LocalCluster};

    let cluster = LocalCluster::start(options.peers, 3).await?;
    let mut targets: Vec<std::net::SocketAddr> = (0..cluster.len())
        .filter_map(|i| cluster.peer(i).map(|p| p.addr()))
        .collect();
    for host in &cluster.chain().hosts {
        if let Ok(addr) = host.addr.parse() {
            targets.push(addr);
        }
    }
    let client = cluster.client(ClientOptions::default())?;
    let cert = Arc::new(sample_data(50 << 10, 9));
    let workers = options.in_flight.max(1);
    let per_worker = options.certificates.div_ceil(workers);
    let (_, _, certs) =
        certificate_round(&client, &cert, workers, per_worker, false, Arc::default()).await?;
    let certs = Arc::new(certs);

    let mut cases = Vec::new();
    for abuse in [
        Abuse::Idle,
        Abuse::HalfOpen,
        Abuse::Refused,
        Abuse::Connections,
    ] {
        let attack = Attack::start(abuse, &targets, options.refused_rate)?;
        let size = options.document;
        let start = Instant::now();
        let receipt = client
            .put(
                SampleStream::new(size, 3),
                Some(size),
                bench_info(),
                &|_, _| {},
            )
            .await?;
        let put = figure("put", size as usize, start.elapsed());
        let mut check = SampleCheck::new(size, 3);
        let start = Instant::now();
        client
            .get(&receipt.id, &receipt.key, &mut check, &|_, _| {})
            .await?;
        let get = figure("get", size as usize, start.elapsed());
        if !check.matched() {
            return Err(ClusterError::Check("the document read back differs".into()));
        }
        let start = Instant::now();
        let (times, _, _) =
            certificate_round(&client, &cert, workers, per_worker, true, certs.clone()).await?;
        let cert_get = latency(times, start.elapsed());
        let attack = attack.stop().await;
        if !cluster.ledger().is_current() {
            return Err(ClusterError::Check(format!(
                "the validator fell behind under {abuse}"
            )));
        }
        cases.push(AbuseCase {
            abuse,
            put,
            get,
            cert_get,
            attack,
        });
    }
    client.close().await;
    cluster.shutdown().await;
    Ok(AbuseBenchReport { options, cases })
}

/// Attackers with keys that hold no account, running until stopped.
struct Attack {
    tasks: tokio::task::JoinSet<()>,
    counts: Arc<AttackCounters>,
    endpoints: Vec<quinn::Endpoint>,
    start: Instant,
}

#[derive(Default)]
struct AttackCounters {
    sent: std::sync::atomic::AtomicU64,
    connections: std::sync::atomic::AtomicU64,
    turned_away: std::sync::atomic::AtomicU64,
}

impl AttackCounters {
    fn add(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A stranger's endpoint: a fresh key that no account holds.
fn stranger() -> Result<quinn::Endpoint, crate::cluster::ClusterError> {
    let key = crate::identity::Identity::generate(crate::identity::Role::Citizen);
    crate::tls::endpoint(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        &key,
        Arc::new(crate::tls::AllowAny),
    )
    .map_err(|e| crate::cluster::ClusterError::Check(format!("attacker endpoint: {e}")))
}

impl Attack {
    fn start(
        abuse: Abuse,
        targets: &[std::net::SocketAddr],
        refused_rate: u64,
    ) -> Result<Self, crate::cluster::ClusterError> {
        let mut attack = Attack {
            tasks: tokio::task::JoinSet::new(),
            counts: Arc::default(),
            endpoints: Vec::new(),
            start: Instant::now(),
        };
        match abuse {
            Abuse::Idle => {}
            Abuse::HalfOpen => {
                // One key, two connections to each peer, 256 streams on each.
                let endpoint = stranger()?;
                for &addr in targets {
                    for _ in 0..2 {
                        let (endpoint, counts) = (endpoint.clone(), attack.counts.clone());
                        attack.tasks.spawn(half_open(endpoint, addr, counts));
                    }
                }
                attack.endpoints.push(endpoint);
            }
            Abuse::Refused => {
                // Four keys, each sending to every peer its share of the rate.
                let per_task = refused_rate as f64 / (4 * targets.len()) as f64;
                for _ in 0..4 {
                    let endpoint = stranger()?;
                    for &addr in targets {
                        let (endpoint, counts) = (endpoint.clone(), attack.counts.clone());
                        attack
                            .tasks
                            .spawn(refused(endpoint, addr, per_task, counts));
                    }
                    attack.endpoints.push(endpoint);
                }
            }
            Abuse::Connections => {
                // Eight dialers, each connection with a key of its own.
                for i in 0..8 {
                    let (targets, counts) = (targets.to_vec(), attack.counts.clone());
                    attack.tasks.spawn(dial(targets, i, counts));
                }
            }
        }
        Ok(attack)
    }

    async fn stop(mut self) -> AttackCount {
        let time = self.start.elapsed();
        self.tasks.shutdown().await;
        for endpoint in self.endpoints {
            endpoint.close(0u32.into(), b"done");
        }
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        AttackCount {
            sent: get(&self.counts.sent),
            connections: get(&self.counts.connections),
            turned_away: get(&self.counts.turned_away),
            time,
        }
    }
}

/// Keeps 256 streams open on one connection to `addr`, each with one byte of a header,
/// opening another whenever the peer resets or refuses one.
async fn half_open(
    endpoint: quinn::Endpoint,
    addr: std::net::SocketAddr,
    counts: Arc<AttackCounters>,
) {
    loop {
        let Ok((conn, _)) = crate::tls::connect(&endpoint, addr).await else {
            AttackCounters::add(&counts.turned_away);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        AttackCounters::add(&counts.connections);
        let mut streams = tokio::task::JoinSet::new();
        for _ in 0..256 {
            let (conn, counts) = (conn.clone(), counts.clone());
            streams.spawn(async move {
                loop {
                    let Ok((mut send, mut recv)) = conn.open_bi().await else {
                        return;
                    };
                    AttackCounters::add(&counts.sent);
                    if send.write_all(&[1]).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 64];
                    while let Ok(Some(_)) = recv.read(&mut buf).await {}
                    AttackCounters::add(&counts.turned_away);
                }
            });
        }
        let _ = conn.closed().await;
        AttackCounters::add(&counts.turned_away);
        streams.shutdown().await;
    }
}

/// Sends `rate` requests a second to `addr` for documents nobody registered.
async fn refused(
    endpoint: quinn::Endpoint,
    addr: std::net::SocketAddr,
    rate: f64,
    counts: Arc<AttackCounters>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1.0)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0u64;
    loop {
        let Ok((conn, _)) = crate::tls::connect(&endpoint, addr).await else {
            AttackCounters::add(&counts.turned_away);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        AttackCounters::add(&counts.connections);
        while conn.close_reason().is_none() {
            tick.tick().await;
            n += 1;
            let id = crate::id::DocumentId::of(
                &[addr.port().to_le_bytes().as_slice(), &n.to_le_bytes()].concat(),
            );
            let (conn, counts) = (conn.clone(), counts.clone());
            tokio::spawn(async move {
                AttackCounters::add(&counts.sent);
                let Ok((mut send, mut recv)) = conn.open_bi().await else {
                    return;
                };
                let req = crate::proto::Request::GetManifest { id };
                if crate::proto::write_frame(&mut send, &req).await.is_err() {
                    return;
                }
                let _ = send.finish();
                if let Ok(crate::proto::Response::Error { .. }) =
                    crate::proto::read_frame::<_, crate::proto::Response>(&mut recv).await
                {
                    AttackCounters::add(&counts.turned_away);
                }
            });
        }
    }
}

/// Opens connections to the targets in turn as fast as it can, each with a fresh key, and
/// sends a ping on each.
async fn dial(targets: Vec<std::net::SocketAddr>, offset: usize, counts: Arc<AttackCounters>) {
    for i in offset.. {
        let addr = targets[i % targets.len()];
        let Ok(endpoint) = stranger() else {
            return;
        };
        AttackCounters::add(&counts.connections);
        let pinged = async {
            let (conn, _) = crate::tls::connect(&endpoint, addr).await.ok()?;
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            crate::proto::write_frame(&mut send, &crate::proto::Request::Ping)
                .await
                .ok()?;
            let _ = send.finish();
            AttackCounters::add(&counts.sent);
            match crate::proto::read_frame::<_, crate::proto::Response>(&mut recv).await {
                Ok(crate::proto::Response::Pong) => Some(()),
                _ => None,
            }
        };
        if tokio::time::timeout(Duration::from_secs(2), pinged)
            .await
            .ok()
            .flatten()
            .is_none()
        {
            AttackCounters::add(&counts.turned_away);
        }
        endpoint.close(0u32.into(), b"next");
    }
}
