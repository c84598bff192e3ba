//! Shared helpers for integration tests: real peers on 127.0.0.1, real redb, real QUIC.
//!
//! This file holds the steps of tests on an embedded cluster ([`LocalCluster`]): start one
//! and connect as the department, a reader or the operator, put and read documents, grant
//! them. Separate processes are in [`process`] (in network namespaces of their own, cut
//! and healed, with [`netns`]), the `dangan` commands their users run in [`cli`], signed
//! transactions in [`chain`], raw wire requests in [`wire`]. Not for assertions a test
//! makes: those stay in the test, where a reader looks for them.
#![allow(dead_code)]

pub mod chain;
pub mod cli;
pub mod netns;
pub mod process;
pub mod wire;

use std::sync::atomic::Ordering;

use dangan::client::{Client, ClientError, ClientOptions, GetReport, PutReceipt};
use dangan::cluster::LocalCluster;
use dangan::codec::DocumentInfo;
use dangan::crypto::DataKey;
use dangan::grant::GrantAddress;
use dangan::id::DocumentId;
use dangan::identity::Identity;
use dangan::manifest::CodingParams;
use dangan::placement::Layout;

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

/// An embedded cluster of `peers` peers in `zones` zones (with its validator), and its
/// department's client with [`options`].
pub async fn start_cluster(peers: usize, zones: usize) -> (LocalCluster, Client) {
    let cluster = LocalCluster::start(peers, zones).await.unwrap();
    let department = department(&cluster);
    (cluster, department)
}

/// A new client of the cluster's department, with [`options`].
pub fn department(cluster: &LocalCluster) -> Client {
    cluster.client(options()).unwrap()
}

/// A client of `who` (in no one's membership unless the test adds it), with [`options`].
pub fn client_as(cluster: &LocalCluster, who: &Identity) -> Client {
    cluster.client_as(who, options()).unwrap()
}

/// A client of the cluster's operator placing by `layout` (and reading from `previous`
/// too, during a layout change), with [`options`].
pub fn operator(cluster: &LocalCluster, layout: &Layout, previous: Option<&Layout>) -> Client {
    cluster
        .operator_client(layout.clone(), previous.cloned(), options())
        .unwrap()
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

/// The bytes of document `id`, read with `key`; the read must succeed.
pub async fn read(client: &Client, id: &DocumentId, key: &DataKey) -> Vec<u8> {
    match get(client, id, key).await {
        Ok((bytes, _)) => bytes,
        Err(e) => panic!("get of {id} failed: {e}"),
    }
}

/// The owner grants the document `put` stored to `who` (until `expires_ms`, if given); the
/// grant must commit.
pub async fn grant(owner: &Client, put: &PutReceipt, who: &Identity, expires_ms: Option<u64>) {
    owner
        .grant(
            put.id,
            &put.key,
            &GrantAddress::of(who).unwrap(),
            expires_ms,
        )
        .await
        .unwrap();
}

/// Shards served so far by the cluster's running peers, all together.
pub fn shards_served(cluster: &LocalCluster) -> u64 {
    (0..cluster.len())
        .filter_map(|i| cluster.peer(i))
        .map(|p| p.stats().shards_served.load(Ordering::Relaxed))
        .sum()
}

/// Adds a peer in `zone` to the running cluster and commits its `AddNode` as the operator:
/// the layouts before and after (one epoch on), and the new peer.
pub async fn add_node(
    cluster: &mut LocalCluster,
    zone: &str,
) -> (Layout, Layout, dangan::placement::NodeInfo) {
    let (_, info) = cluster.add_peer(zone).await.unwrap();
    let (old, new) = cluster
        .change_layout(dangan::chain::tx::TxBody::AddNode {
            node: info.key,
            addr: info.addr.clone(),
            zone: info.zone.clone(),
            weight: info.weight,
        })
        .await
        .unwrap();
    assert_eq!(new.epoch, old.epoch + 1);
    (old, new, info)
}

/// Runs `scripts/test-deps.sh PART` (with `None`, the browser tests' part) once per test
/// binary and part, and panics with its output and `needed_for` if it failed. The
/// parts run one at a time (they share apt and pip).
pub fn test_deps(part: Option<&'static str>, needed_for: &str) {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static DONE: Mutex<BTreeMap<Option<&'static str>, Result<(), String>>> =
        Mutex::new(BTreeMap::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    let result = done.entry(part).or_insert_with(|| {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-deps.sh");
        let mut command = std::process::Command::new("bash");
        command.arg(script).args(part);
        let out = command
            .output()
            .map_err(|e| format!("could not run scripts/test-deps.sh: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/test-deps.sh {} failed ({}):\n{}{}",
                part.unwrap_or_default(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    });
    if let Err(e) = result {
        panic!("{needed_for}: {e}");
    }
}
