//! The embedded default: a whole cluster in one process, on 127.0.0.1 with temporary redb
//! files, and the `dangan demo` story told on it.
//!
//! [`LocalCluster`] is also what the integration tests and `dangan bench cluster` run on:
//! real peers, real QUIC with mutual TLS, real redb files, nothing faked.

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::sample_data;
use crate::chain::ledger::{Ledger, LedgerError};
use crate::chain::state::{Genesis, GenesisAccount};
use crate::client::{ChainLink, Client, ClientError, ClientOptions, GetReport, PutReceipt};
use crate::codec::DocumentInfo;
use crate::crypto::DataKey;
use crate::id::DocumentId;
use crate::identity::{Identity, Role};
use crate::manifest::CodingParams;
use crate::peer::{self, PeerError, PeerHandle, PeerLimits};
use crate::placement::{Layout, NodeInfo, PlacementError};
use crate::tls::Membership;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error("embedded validator: {0}")]
    Ledger(#[from] LedgerError),
    #[error("temporary directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer {0} is not running")]
    PeerStopped(usize),
    #[error("check failed: {0}")]
    Check(String),
}

struct Slot {
    identity: Identity,
    zone: String,
    addr: SocketAddr,
    dir: PathBuf,
    handle: Option<PeerHandle>,
}

/// Peers on 127.0.0.1 in this process, each with its own redb store in a temp directory.
pub struct LocalCluster {
    _tmp: Option<tempfile::TempDir>,
    slots: Vec<Slot>,
    /// The embedded validator: a peer outside the layout that serves the chain.
    validator: Option<PeerHandle>,
    ledger: Arc<Ledger>,
    chain: ChainLink,
    membership: Membership,
    layout: Layout,
    client_identity: Identity,
    limits: PeerLimits,
}

impl LocalCluster {
    /// Starts `peers` peers spread round-robin over `zones` failure zones, with data in a
    /// fresh temporary directory removed when the cluster is dropped.
    pub async fn start(peers: usize, zones: usize) -> Result<Self, DemoError> {
        let tmp = tempfile::Builder::new().prefix("dangan-").tempdir()?;
        let root = tmp.path().to_path_buf();
        let mut cluster = Self::start_in(&root, peers, zones, PeerLimits::default()).await?;
        cluster._tmp = Some(tmp);
        Ok(cluster)
    }

    /// Like [`LocalCluster::start`], in `root` (kept).
    pub async fn start_in(
        root: &Path,
        peers: usize,
        zones: usize,
        limits: PeerLimits,
    ) -> Result<Self, DemoError> {
        let membership = Membership::new();
        let client_identity = Identity::generate(Role::Department);
        membership.add(client_identity.public());
        let identities: Vec<Identity> =
            (0..peers).map(|_| Identity::generate(Role::Node)).collect();
        for id in &identities {
            membership.add(id.public());
        }
        let mut slots = Vec::with_capacity(peers);
        for (i, identity) in identities.into_iter().enumerate() {
            let dir = root.join(format!("peer-{i}"));
            let handle = peer::start(
                &identity,
                Arc::new(membership.clone()),
                SocketAddr::from(([127, 0, 0, 1], 0)),
                &dir,
                limits.clone(),
                None,
            )
            .await?;
            slots.push(Slot {
                zone: format!("zone-{}", i % zones.max(1)),
                addr: handle.addr(),
                identity,
                dir,
                handle: Some(handle),
            });
        }
        let nodes = slots
            .iter()
            .map(|s| NodeInfo {
                key: s.identity.public(),
                zone: s.zone.clone(),
                weight: 100,
                addr: s.addr.to_string(),
            })
            .collect();

        // One validator in this process, the embedded default; the department has an account.
        let signer = Identity::generate(Role::Validator);
        let genesis = Genesis {
            chain_id: "local".into(),
            validators: vec![GenesisAccount::of(&signer, Role::Validator)],
            accounts: vec![GenesisAccount::of(&client_identity, Role::Department)],
            nodes: Vec::new(),
        };
        let chain_dir = root.join("validator");
        std::fs::create_dir_all(&chain_dir)?;
        let validators = vec![signer.public()];
        let ledger =
            Arc::new(Ledger::open_single(&chain_dir.join("chain.redb"), &genesis, signer).await?);
        let host = Identity::generate(Role::Node);
        membership.add(host.public());
        let validator = peer::start(
            &host,
            Arc::new(membership.clone()),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &chain_dir.join("store"),
            limits.clone(),
            Some(ledger.clone()),
        )
        .await?;
        let chain = ChainLink {
            hosts: vec![NodeInfo {
                key: host.public(),
                zone: "validator".into(),
                weight: 0,
                addr: validator.addr().to_string(),
            }],
            validators,
        };
        Ok(Self {
            _tmp: None,
            layout: Layout::new(1, nodes)?,
            validator: Some(validator),
            ledger,
            chain,
            slots,
            membership,
            client_identity,
            limits,
        })
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The trust set every peer checks: add an identity here to let it connect.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn peer(&self, i: usize) -> Option<&PeerHandle> {
        self.slots.get(i).and_then(|s| s.handle.as_ref())
    }

    /// Index of the peer with this identity.
    pub fn index_of(&self, id: &crate::identity::PublicId) -> Option<usize> {
        self.slots.iter().position(|s| s.identity.public() == *id)
    }

    /// A client with the cluster's department identity.
    pub fn client(&self, options: ClientOptions) -> Result<Client, ClientError> {
        self.client_as(&self.client_identity, options)
    }

    /// A client with any identity (trusted only if it is in [`LocalCluster::membership`]).
    pub fn client_as(
        &self,
        identity: &Identity,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        Client::new(
            identity,
            Arc::new(self.membership.clone()),
            self.layout.clone(),
            ClientOptions {
                bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                chain: Some(self.chain.clone()),
                ..options
            },
        )
    }

    /// Stops peer `i` (closes its connections and its store).
    pub async fn stop_peer(&mut self, i: usize) -> Result<(), DemoError> {
        let handle = self
            .slots
            .get_mut(i)
            .and_then(|s| s.handle.take())
            .ok_or(DemoError::PeerStopped(i))?;
        handle.shutdown().await;
        Ok(())
    }

    /// Starts a stopped peer again on its old address with its old store.
    pub async fn restart_peer(&mut self, i: usize) -> Result<(), DemoError> {
        let membership = self.membership.clone();
        let limits = self.limits.clone();
        let slot = self.slots.get_mut(i).ok_or(DemoError::PeerStopped(i))?;
        if slot.handle.is_none() {
            let handle = peer::start(
                &slot.identity,
                Arc::new(membership),
                slot.addr,
                &slot.dir,
                limits,
                None,
            )
            .await?;
            slot.handle = Some(handle);
        }
        Ok(())
    }

    /// Where the embedded chain is, for clients.
    pub fn chain(&self) -> &ChainLink {
        &self.chain
    }

    /// The embedded validator's ledger.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    pub async fn shutdown(mut self) {
        for slot in &mut self.slots {
            if let Some(h) = slot.handle.take() {
                h.shutdown().await;
            }
        }
        if let Some(v) = self.validator.take() {
            v.shutdown().await;
        }
        self.ledger.shutdown().await;
    }
}

/// One line of the demo's story.
pub type Step<'a> = &'a mut (dyn FnMut(&str) + Send);

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mbps(bytes: u64, d: Duration) -> String {
    format!("{:.0} MB/s", bytes as f64 / d.as_secs_f64() / 1e6)
}

fn block_of(receipt: &PutReceipt) -> String {
    receipt
        .registered
        .map_or("(none)".into(), |(height, _)| height.to_string())
}

/// A sample birth certificate of about 50 KiB (text plus an embedded "scan").
pub fn sample_certificate() -> Vec<u8> {
    let mut doc = b"CERTIFICATE OF BIRTH (sample, not a real record)\n\
        Registry: Civil Registry Office, District 7\n\
        Name: Example Citizen\nDate of birth: 2001-02-03\nPlace: Example City\n\
        Registered by: Civil Registry Office\n\n"
        .to_vec();
    doc.extend(sample_data(50 << 10, 42));
    doc
}

/// Stores `data` from memory as a document of the civil registry.
pub async fn put_bytes(
    client: &Client,
    data: Vec<u8>,
    document_type: &str,
) -> Result<PutReceipt, ClientError> {
    let size = data.len() as u64;
    client
        .put(
            Cursor::new(data),
            Some(size),
            DocumentInfo {
                department: "civil-registry".into(),
                document_type: document_type.into(),
                created_at_ms: None,
            },
            &|_, _| {},
        )
        .await
}

/// Fetches a whole document into memory.
pub async fn get_bytes(
    client: &Client,
    id: &DocumentId,
    key: &DataKey,
) -> Result<(Vec<u8>, GetReport), ClientError> {
    let mut out = Vec::new();
    let report = client.get(id, key, &mut out, &|_, _| {}).await?;
    Ok((out, report))
}

/// `dangan demo`: 6 peers, a certificate and a 64 MiB file stored and fetched, 2 peers
/// stopped, both fetched again. Every step goes to `step` with its timing.
pub async fn run(big_mib: usize, step: Step<'_>) -> Result<(), DemoError> {
    let t = Instant::now();
    let mut cluster = LocalCluster::start(6, 3).await?;
    let params = CodingParams::default();
    step(&format!(
        "started 6 storage peers in 3 zones on 127.0.0.1 (QUIC, mutual TLS, redb) in {}",
        ms(t.elapsed())
    ));
    for i in 0..cluster.len() {
        let p = cluster.peer(i).expect("just started");
        step(&format!(
            "  peer {i}: {} at {} ({})",
            p.id(),
            p.addr(),
            cluster.slots[i].zone
        ));
    }
    let client = cluster.client(ClientOptions::default())?;
    step(&format!(
        "coding: k={} data + m={} parity shards per stripe, shards of {} KiB",
        params.k,
        params.m,
        params.full_shard_len() >> 10
    ));

    let cert = sample_certificate();
    let t = Instant::now();
    let cert_put = put_bytes(&client, cert.clone(), "birth-certificate").await?;
    step(&format!(
        "put certificate ({} bytes) -> document {} in {}, registered in block {}",
        cert.len(),
        cert_put.id,
        ms(t.elapsed()),
        block_of(&cert_put)
    ));
    let big = sample_data(big_mib << 20, 7);
    let t = Instant::now();
    let big_put = put_bytes(&client, big.clone(), "archive-scan").await?;
    let d = t.elapsed();
    step(&format!(
        "put {big_mib} MiB file -> document {} in {} ({}, {} shards), registered in block {}",
        big_put.id,
        ms(d),
        mbps(big.len() as u64, d),
        big_put.shards_stored,
        block_of(&big_put)
    ));

    let fetch_both = |label: &'static str| {
        let client = client.clone();
        let (cert, big) = (&cert, &big);
        let (cert_put, big_put) = (&cert_put, &big_put);
        async move {
            let mut lines = Vec::new();
            let t = Instant::now();
            let (out, _) = get_bytes(&client, &cert_put.id, &cert_put.key).await?;
            if &out != cert {
                return Err(DemoError::Check("certificate bytes differ".into()));
            }
            lines.push(format!(
                "get certificate {label}: identical, in {}",
                ms(t.elapsed())
            ));
            let t = Instant::now();
            let (out, report) = get_bytes(&client, &big_put.id, &big_put.key).await?;
            let d = t.elapsed();
            if &out != big {
                return Err(DemoError::Check("large file bytes differ".into()));
            }
            lines.push(format!(
                "get {} MiB file {label}: identical, in {} ({}), {} stripes rebuilt from parity",
                big.len() >> 20,
                ms(d),
                mbps(big.len() as u64, d),
                report.stripes_rebuilt
            ));
            Ok::<_, DemoError>(lines)
        }
    };
    for line in fetch_both("with all peers up").await? {
        step(&line);
    }
    // Stop the two peers holding the first data shards of the large file's first stripe,
    // so the read must rebuild from parity.
    let first = &big_put.manifest.stripes[0];
    let placed = cluster
        .layout()
        .place(&crate::client::stripe_key(first), first.len())?;
    let victims: Vec<usize> = placed
        .iter()
        .take(usize::from(params.m))
        .filter_map(|n| cluster.index_of(&n.key))
        .collect();
    for &v in &victims {
        cluster.stop_peer(v).await?;
        step(&format!("stopped peer {v}"));
    }
    for line in fetch_both("with 2 peers down").await? {
        step(&line);
    }
    let status = cluster.ledger().status();
    step(&format!(
        "chain: {} blocks, {} documents registered, state root {}",
        status.height,
        status.documents,
        hex::encode(&status.state_root[..8])
    ));
    client.close().await;
    cluster.shutdown().await;
    step("all checks passed; cluster stopped and its temporary files removed");
    Ok(())
}
