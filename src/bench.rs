//! Benchmarks a user runs from the CLI (`dangan bench ...`) to see what this machine does.
//!
//! Each benchmark measures the floors it is judged against in the same run, so its figures
//! can be compared across machines and releases. Not for: regression gating (criterion
//! benches in `benches/` do that), and never used by tests as timing assertions.

use std::fmt;
use std::io::{Cursor, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;

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

/// Deterministic, incompressible-looking test data.
pub fn sample_data(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut reader = blake3::Hasher::new_keyed(&[seed as u8; 32]).finalize_xof();
    reader.fill(&mut out);
    out
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
