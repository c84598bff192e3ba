//! Criterion benches of the codec: encode and decode of a 64 MiB document at the defaults,
//! and decode with m data shards missing.

use std::io::Cursor;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dangan::cluster::sample_data;
use dangan::codec::{self, DocumentInfo, EncodedStripe};
use dangan::manifest::CodingParams;

const SIZE: usize = 64 << 20;

fn codec_benches(c: &mut Criterion) {
    let data = sample_data(SIZE, 7);
    let params = CodingParams::default();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Bytes(SIZE as u64));
    group.sample_size(10);

    group.bench_function("encode_64MiB", |b| {
        b.iter(|| {
            codec::encode(Cursor::new(&data), params, DocumentInfo::default(), |s| {
                std::hint::black_box(s);
                Ok(())
            })
            .unwrap()
        })
    });

    let mut stripes: Vec<EncodedStripe> = Vec::new();
    let (manifest, key) = codec::encode(Cursor::new(&data), params, DocumentInfo::default(), |s| {
        stripes.push(s);
        Ok(())
    })
    .unwrap();
    let fetch = |lost: usize| {
        let stripes = &stripes;
        move |i: u64| -> Vec<Option<Bytes>> {
            stripes[i as usize]
                .shards
                .iter()
                .enumerate()
                .map(|(slot, s)| (slot >= lost).then(|| s.clone()))
                .collect()
        }
    };
    group.bench_function("decode_64MiB", |b| {
        b.iter(|| codec::decode(&manifest, &key, fetch(0), std::io::sink()).unwrap())
    });
    group.bench_function("decode_64MiB_m_data_shards_lost", |b| {
        b.iter(|| {
            codec::decode(
                &manifest,
                &key,
                fetch(usize::from(params.m)),
                std::io::sink(),
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, codec_benches);
criterion_main!(benches);
