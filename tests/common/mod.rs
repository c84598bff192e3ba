//! Shared helpers for integration tests: real peers on 127.0.0.1, real redb, real QUIC.
#![allow(dead_code)]

pub mod process;

use dangan::client::{Client, ClientError, ClientOptions, GetReport, PutReceipt};
use dangan::codec::DocumentInfo;
use dangan::crypto::DataKey;
use dangan::id::DocumentId;
use dangan::manifest::CodingParams;

/// Small stripes so multi-stripe documents stay small: 64 KiB segments, 4 a stripe.
pub fn small_params() -> CodingParams {
    CodingParams {
        k: 4,
        m: 2,
        segment_size: 64 << 10,
        segments_per_stripe: 4,
    }
}

pub fn options() -> ClientOptions {
    ClientOptions {
        params: small_params(),
        connect_timeout: std::time::Duration::from_secs(1),
        ..ClientOptions::default()
    }
}

pub fn data(len: usize, seed: u64) -> Vec<u8> {
    dangan::cluster::sample_data(len, seed)
}

pub fn info() -> DocumentInfo {
    DocumentInfo {
        department: "civil-registry".into(),
        document_type: "test".into(),
        created_at_ms: None,
    }
}

pub async fn put(client: &Client, bytes: &[u8]) -> Result<PutReceipt, ClientError> {
    dangan::cluster::put_bytes(client, bytes.to_vec(), "test").await
}

pub async fn get(
    client: &Client,
    id: &DocumentId,
    key: &DataKey,
) -> Result<(Vec<u8>, GetReport), ClientError> {
    dangan::cluster::get_bytes(client, id, key).await
}
