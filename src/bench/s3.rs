//! `dangan bench s3`: the gateway's S3 service driven by boto3 (from the venv
//! `scripts/test-deps.sh s3` makes), against `dangan put` and `dangan get` run as processes
//! on the same cluster, so both sides pay process start, key loading and connection setup.
//!
//! Measured, alternated and repeated (medians compared): a PUT of one large file with
//! boto3's `upload_file` as one request, and (where multipart is served) in 8 MiB parts, 4
//! at once, against `dangan put` of the same file; a GET of the object streamed through
//! boto3 and hashed there, against `dangan get` into a file; then small PUTs (50 KiB) from
//! 16 threads (per second, p50, p99); the `dangan gateway` process's peak resident memory
//! for each phase. The bytes read back are checked (MD5 through S3, the file after `dangan
//! get`); a mismatch is an error.
//!
//! The boto3 side is `s3_client.py`, embedded in this binary and written next to the run.
//! Not for: timing assertions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::Digest;

use super::gateway::{FETCHED, GatewayProcess, check, cli, cli_get, median};
use super::{Figure, Latency, SampleStream, figure, latency};
use crate::cluster::{ClusterError, LocalCluster};

/// The client script, as shipped.
const CLIENT: &str = include_str!("s3_client.py");

/// What `dangan bench s3` measures.
#[derive(Debug, Clone)]
pub struct S3BenchOptions {
    /// The `dangan` executable the gateway, `dangan put` and `dangan get` run as.
    pub exe: PathBuf,
    /// A Python with boto3.
    pub python: PathBuf,
    pub peers: usize,
    /// Size of the large object, bytes.
    pub large: u64,
    /// Times each large PUT and GET runs (alternated; medians reported).
    pub repetitions: usize,
    /// Small objects PUT, their size, and the threads putting them.
    pub small_count: usize,
    pub small: usize,
    pub threads: usize,
}

impl S3BenchOptions {
    /// The defaults: 256 MiB, 3 runs, 1,000 objects of 50 KiB from 16 threads, 6 peers.
    pub fn new(exe: PathBuf, python: PathBuf) -> Self {
        Self {
            exe,
            python,
            peers: 6,
            large: 256 << 20,
            repetitions: 3,
            small_count: 1000,
            small: 50 << 10,
            threads: 16,
        }
    }
}

/// The Python of the venv `scripts/test-deps.sh s3` makes, if it is there.
pub fn default_python() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let python = Path::new(&home).join(".cache/dangan/s3-venv/bin/python");
    python.exists().then_some(python)
}

/// What `dangan bench s3` measured.
#[derive(Debug, Clone)]
pub struct S3BenchReport {
    pub options: S3BenchOptions,
    pub put_s3: Vec<Figure>,
    /// `None`: the gateway does not serve multipart uploads.
    pub put_s3_multipart: Option<Vec<Figure>>,
    pub put_cli: Vec<Figure>,
    pub get_s3: Vec<Figure>,
    pub get_cli: Vec<Figure>,
    pub small: Latency,
    /// The gateway's peak resident bytes during the large PUTs, the GETs and the small PUTs.
    pub peak_put: Option<u64>,
    pub peak_get: Option<u64>,
    pub peak_small: Option<u64>,
}

impl S3BenchReport {
    /// Median MB/s of the S3 PUT over `dangan put`'s, and of the GET over `dangan get`'s.
    pub fn ratios(&self) -> (f64, f64) {
        (
            median(&self.put_s3) / median(&self.put_cli).max(1e-9),
            median(&self.get_s3) / median(&self.get_cli).max(1e-9),
        )
    }
}

impl std::fmt::Display for S3BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        let mib = |b: Option<u64>| b.map_or("?".to_string(), |b| format!("{} MiB", b >> 20));
        let runs = |v: &[Figure]| {
            let each: Vec<String> = v.iter().map(|f| format!("{:.0}", f.mb_per_s())).collect();
            format!("{:>6.0} MB/s ({})", median(v), each.join(", "))
        };
        writeln!(
            f,
            "S3 benchmark: boto3 against `dangan gateway` (its own process) over {} peers on \
             127.0.0.1 (peers and validator in this process); {} MiB, median of {} alternated runs",
            o.peers,
            o.large >> 20,
            self.put_s3.len()
        )?;
        writeln!(
            f,
            "  PUT, boto3 upload_file, one request:  {}",
            runs(&self.put_s3)
        )?;
        match &self.put_s3_multipart {
            Some(v) => writeln!(f, "  PUT, boto3 upload_file, 8 MiB parts:  {}", runs(v))?,
            None => writeln!(f, "  PUT in parts: not served by this gateway")?,
        }
        writeln!(
            f,
            "  `dangan put` as a process:            {}",
            runs(&self.put_cli)
        )?;
        writeln!(
            f,
            "  GET, boto3 get_object, streamed:      {}",
            runs(&self.get_s3)
        )?;
        writeln!(
            f,
            "  `dangan get` as a process (to a file): {}",
            runs(&self.get_cli)
        )?;
        let (put, get) = self.ratios();
        writeln!(
            f,
            "  S3 / CLI: PUT {put:.2}, GET {get:.2} (target >= 0.70){}",
            self.put_s3_multipart
                .as_ref()
                .map_or(String::new(), |v| format!(
                    "; PUT in parts / CLI {:.2}",
                    median(v) / median(&self.put_cli).max(1e-9)
                ))
        )?;
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            f,
            "PUT {} objects of {} KiB, {} threads: {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
            o.small_count,
            o.small >> 10,
            o.threads,
            self.small.per_second,
            ms(self.small.p50),
            ms(self.small.p99)
        )?;
        write!(
            f,
            "gateway peak resident: large PUTs {}, GETs {}, small PUTs {}",
            mib(self.peak_put),
            mib(self.peak_get),
            mib(self.peak_small)
        )
    }
}

/// The boto3 side: runs `s3_client.py args` and parses its JSON line.
struct Boto {
    python: PathBuf,
    script: PathBuf,
    env: Vec<(&'static str, String)>,
}

#[derive(serde::Deserialize)]
struct Answer {
    seconds: f64,
    #[serde(default)]
    bytes: u64,
    #[serde(default)]
    md5: Option<String>,
    #[serde(default)]
    latencies: Vec<f64>,
}

impl Boto {
    /// `Ok(None)` when the gateway answered `NotImplemented`.
    async fn run(&self, args: &[&str]) -> Result<Option<Answer>, ClusterError> {
        let out = tokio::process::Command::new(&self.python)
            .arg(&self.script)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The last lines: the exception, not the whole traceback.
        let lines: Vec<&str> = stderr.trim().lines().collect();
        let stderr = lines[lines.len().saturating_sub(3)..].join("\n");
        if !out.status.success() {
            if stderr.contains("NotImplemented") {
                return Ok(None);
            }
            return Err(check(format!(
                "boto3 {} failed ({}): {}",
                args.join(" "),
                out.status,
                stderr.trim()
            )));
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| check(format!("boto3 {}: its answer: {e}", args.join(" "))))
    }
}

/// Runs `dangan put file` on the cluster files in `dir`: its time and the id it printed.
async fn cli_put(
    exe: &Path,
    dir: &Path,
    file: &Path,
) -> Result<(Duration, crate::id::DocumentId), ClusterError> {
    let (took, stdout) = cli(exe, dir, &["put".as_ref(), file.as_os_str()]).await?;
    let id = String::from_utf8_lossy(&stdout)
        .trim()
        .parse()
        .map_err(|e| check(format!("`dangan put` printed no document id: {e}")))?;
    Ok((took, id))
}

/// Runs the S3 benchmark (see the module's documentation).
pub async fn run(options: S3BenchOptions) -> Result<S3BenchReport, ClusterError> {
    let cluster = LocalCluster::start(options.peers, 3).await?;
    let dir = cluster.root().join("s3-bench");
    let started =
        GatewayProcess::start(&options.exe, &cluster, &dir, options.threads.max(4), true).await;
    let result = match started {
        Ok((mut gw, _)) => {
            let r = measure(&options, &cluster, &dir, &mut gw).await;
            gw.stop().await;
            r
        }
        Err(e) => Err(e),
    };
    cluster.shutdown().await;
    result
}

async fn measure(
    options: &S3BenchOptions,
    cluster: &LocalCluster,
    dir: &Path,
    gw: &mut GatewayProcess,
) -> Result<S3BenchReport, ClusterError> {
    let s3_addr = gw
        .s3_addr
        .ok_or_else(|| check("the gateway did not say where S3 listens"))?;
    let access_key = gw
        .s3_key
        .clone()
        .ok_or_else(|| check("the gateway has no S3 key"))?;
    let secret = crate::gateway::s3::secret_key(cluster.department(), &access_key)
        .map_err(|e| check(format!("the S3 secret: {e}")))?;
    let script = dir.join("s3_client.py");
    std::fs::write(&script, CLIENT)?;
    let boto = Boto {
        python: options.python.clone(),
        script,
        env: vec![
            ("S3_ENDPOINT", format!("http://{s3_addr}")),
            ("S3_BUCKET", "bench".to_string()),
            ("AWS_ACCESS_KEY_ID", access_key),
            ("AWS_SECRET_ACCESS_KEY", secret),
        ],
    };
    boto.run(&["bucket"])
        .await?
        .ok_or_else(|| check("the gateway refused CreateBucket as not implemented"))?;

    // The large file, written once; its MD5 is what every S3 GET must hash to.
    let size = options.large;
    let file = dir.join("large.bin");
    let mut md5 = md5::Md5::new();
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sample = SampleStream::new(size, FETCHED);
        let mut out = tokio::fs::File::create(&file).await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = sample.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            md5.update(&buf[..n]);
            out.write_all(&buf[..n]).await?;
        }
        out.flush().await?;
    }
    let md5 = hex::encode(md5.finalize());
    let path = file.to_string_lossy().into_owned();
    let size_arg = size.to_string();

    let (mut put_s3, mut put_parts, mut put_cli) = (Vec::new(), Some(Vec::new()), Vec::new());
    let (mut get_s3, mut get_cli) = (Vec::new(), Vec::new());
    let mut cli_id = None;
    let mut reset = gw.reset_peak();
    for round in 0..options.repetitions.max(1) {
        gw.alive()?;
        let key = format!("large/{round}");
        let a = boto
            .run(&["put", &path, &key, "single"])
            .await?
            .ok_or_else(|| check("the gateway refused a PUT as not implemented"))?;
        put_s3.push(figure("S3 PUT", a.bytes as usize, secs(a.seconds)));
        if put_parts.is_some() {
            match boto
                .run(&["put", &path, &format!("parts/{round}"), "multipart"])
                .await?
            {
                Some(a) => put_parts.as_mut().expect("checked").push(figure(
                    "S3 PUT in parts",
                    a.bytes as usize,
                    secs(a.seconds),
                )),
                None => put_parts = None,
            }
        }
        let (took, id) = cli_put(&options.exe, dir, &file).await?;
        put_cli.push(figure("dangan put", size as usize, took));
        cli_id = Some(id);
    }
    gw.alive()?;
    let peak_put = gw.peak();
    reset &= gw.reset_peak();
    // `dangan get` reads back what `dangan put` stored (the same bytes as the object).
    let id = cli_id.ok_or_else(|| check("`dangan put` printed no document id"))?;
    for _ in 0..options.repetitions.max(1) {
        gw.alive()?;
        let a = boto
            .run(&["get", "large/0", &size_arg])
            .await?
            .ok_or_else(|| check("the gateway refused a GET as not implemented"))?;
        if a.md5.as_deref() != Some(md5.as_str()) {
            return Err(check("an S3 GET read other bytes than were stored"));
        }
        get_s3.push(figure("S3 GET", a.bytes as usize, secs(a.seconds)));
        let took = cli_get(&options.exe, dir, &id, size).await?;
        get_cli.push(figure("dangan get", size as usize, took));
    }
    gw.alive()?;
    let peak_get = gw.peak();
    reset &= gw.reset_peak();
    let a = boto
        .run(&[
            "small",
            &options.small_count.to_string(),
            &options.small.to_string(),
            &options.threads.to_string(),
        ])
        .await?
        .ok_or_else(|| check("the gateway refused a small PUT as not implemented"))?;
    gw.alive()?;
    let peak_small = gw.peak();
    let times = a.latencies.iter().map(|s| secs(*s)).collect();
    let small = latency(times, secs(a.seconds));
    let peak = |p: Option<u64>| p.filter(|_| reset);
    Ok(S3BenchReport {
        options: options.clone(),
        put_s3,
        put_s3_multipart: put_parts,
        put_cli,
        get_s3,
        get_cli,
        small,
        peak_put: peak(peak_put),
        peak_get: peak(peak_get),
        peak_small: peak(peak_small),
    })
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}
