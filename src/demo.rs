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
use crate::tls::{AllowAny, Membership};

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
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
    #[error(transparent)]
    Version(#[from] crate::version::VersionError),
    #[error(transparent)]
    Keyring(#[from] crate::keyring::KeyringError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
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
    /// A second department, owning nothing of the first's.
    other_department: Identity,
    /// The operator: may change the layout on chain and run the operations workers.
    operator: Identity,
    root: PathBuf,
    limits: PeerLimits,
}

impl LocalCluster {
    /// Starts `peers` peers spread round-robin over `zones` failure zones, with data in a
    /// fresh temporary directory removed when the cluster is dropped.
    pub async fn start(peers: usize, zones: usize) -> Result<Self, DemoError> {
        Self::start_with(peers, zones, PeerLimits::default()).await
    }

    /// Like [`LocalCluster::start`], with the peers' `limits`.
    pub async fn start_with(
        peers: usize,
        zones: usize,
        limits: PeerLimits,
    ) -> Result<Self, DemoError> {
        let tmp = tempfile::Builder::new().prefix("dangan-").tempdir()?;
        let root = tmp.path().to_path_buf();
        let mut cluster = Self::start_in(&root, peers, zones, limits).await?;
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
        let other_department = Identity::generate(Role::Department);
        let operator = Identity::generate(Role::Operator);
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
                Arc::new(AllowAny),
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
        let nodes: Vec<NodeInfo> = slots
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
            accounts: vec![
                GenesisAccount::of(&client_identity, Role::Department),
                GenesisAccount::of(&other_department, Role::Department),
                GenesisAccount::of(&operator, Role::Operator),
            ],
            nodes: nodes.clone(),
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
            Arc::new(AllowAny),
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
        // Every peer authorises requests by asking the validator (the chain state now).
        for slot in &slots {
            if let Some(h) = &slot.handle {
                h.access().link(&slot.identity, chain.clone(), loopback())?;
            }
        }
        Ok(Self {
            _tmp: None,
            layout: Layout::new(1, nodes)?,
            validator: Some(validator),
            ledger,
            chain,
            slots,
            membership,
            client_identity,
            other_department,
            operator,
            root: root.to_path_buf(),
            limits,
        })
    }

    /// Starts one more peer in `zone` (trusted, but in no layout until an `AddNode`);
    /// returns its index and its layout entry.
    pub async fn add_peer(&mut self, zone: &str) -> Result<(usize, NodeInfo), DemoError> {
        let identity = Identity::generate(Role::Node);
        self.membership.add(identity.public());
        let i = self.slots.len();
        let dir = self.root.join(format!("peer-{i}"));
        let handle = peer::start(
            &identity,
            Arc::new(AllowAny),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &dir,
            self.limits.clone(),
            None,
        )
        .await?;
        handle
            .access()
            .link(&identity, self.chain.clone(), loopback())?;
        let info = NodeInfo {
            key: identity.public(),
            zone: zone.to_string(),
            weight: 100,
            addr: handle.addr().to_string(),
        };
        self.slots.push(Slot {
            zone: zone.to_string(),
            addr: handle.addr(),
            identity,
            dir,
            handle: Some(handle),
        });
        Ok((i, info))
    }

    /// The operator's identity (an `Operator` account on the chain).
    pub fn operator(&self) -> &Identity {
        &self.operator
    }

    /// The department's identity (a `Department` account on the chain).
    pub fn department(&self) -> &Identity {
        &self.client_identity
    }

    /// Another department's identity: on the chain, owning nothing unless it stores.
    pub fn other_department(&self) -> &Identity {
        &self.other_department
    }

    /// A client with the operator's identity, placing by `layout` and falling back to
    /// `previous` (what the operations workers use).
    pub fn operator_client(
        &self,
        layout: Layout,
        previous: Option<Layout>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        Client::with_layouts(
            &self.operator,
            Arc::new(self.membership.clone()),
            layout,
            previous,
            self.local_options(options),
        )
    }

    /// Submits a layout transaction as the operator and takes the chain's new layout as the
    /// cluster's: (old layout, new layout).
    pub async fn change_layout(
        &mut self,
        body: crate::chain::tx::TxBody,
    ) -> Result<(Layout, Layout), DemoError> {
        let old = self.layout().clone();
        let operator = self.operator_client(old.clone(), None, ClientOptions::default())?;
        let submitted = operator.submit(self.chain(), body).await;
        operator.close().await;
        submitted?;
        let new = self.sync_layout().clone();
        Ok((old, new))
    }

    /// Shards stored on running peer `i`.
    pub fn shards_held(&self, i: usize) -> Result<u64, DemoError> {
        Ok(self
            .peer(i)
            .ok_or(DemoError::PeerStopped(i))?
            .store()
            .usage()
            .map_err(|e| DemoError::Check(e.to_string()))?
            .shards)
    }

    /// `options` for a client of this cluster: bound to loopback, linked to its chain.
    fn local_options(&self, options: ClientOptions) -> ClientOptions {
        ClientOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            chain: Some(self.chain.clone()),
            ..options
        }
    }

    /// A department client placing by `layout` and falling back to `previous`.
    pub fn client_with_layouts(
        &self,
        layout: Layout,
        previous: Option<Layout>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        Client::with_layouts(
            &self.client_identity,
            Arc::new(self.membership.clone()),
            layout,
            previous,
            self.local_options(options),
        )
    }

    /// A department client as `dangan put|get` make it: placing by the chain's layout and
    /// falling back to the chain's previous one (or else to `file_layout`).
    pub async fn chain_client(
        &self,
        file_layout: Layout,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        Client::with_chain_layout(
            &self.client_identity,
            Arc::new(self.membership.clone()),
            file_layout,
            self.local_options(options),
        )
        .await
    }

    /// Takes the chain's current layout as the cluster's (after a layout transaction).
    pub fn sync_layout(&mut self) -> &Layout {
        self.layout = self.ledger.state().layout().clone();
        &self.layout
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The keys this cluster's clients accept as servers: the peers and the validator host.
    /// Peers themselves admit any key and authorise each request by the chain (`access`).
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

    /// A client with any identity; what it may do is what its account or grants allow.
    pub fn client_as(
        &self,
        identity: &Identity,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        Client::new(
            identity,
            Arc::new(self.membership.clone()),
            self.layout.clone(),
            self.local_options(options),
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
        let limits = self.limits.clone();
        let chain = self.chain.clone();
        let slot = self.slots.get_mut(i).ok_or(DemoError::PeerStopped(i))?;
        if slot.handle.is_none() {
            let handle = peer::start(
                &slot.identity,
                Arc::new(AllowAny),
                slot.addr,
                &slot.dir,
                limits,
                None,
            )
            .await?;
            handle.access().link(&slot.identity, chain, loopback())?;
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

    /// Stops the peer that hosts the validator: the chain becomes unreachable.
    pub async fn stop_validator(&mut self) {
        if let Some(v) = self.validator.take() {
            v.shutdown().await;
        }
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

/// Where a local peer's chain view binds: loopback, any port.
fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
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
    // Peers commit the roots of their read records every half second, so the audit at the
    // end of the grant story is checked against the chain without a wait.
    let limits = PeerLimits {
        audit_interval: Duration::from_millis(500),
        ..PeerLimits::default()
    };
    let mut cluster = LocalCluster::start_with(6, 3, limits).await?;
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

    // Operations: the stopped peers come back, a seventh peer joins, one peer is drained.
    for &v in &victims {
        cluster.restart_peer(v).await?;
        step(&format!("restarted peer {v}"));
    }
    // Grants: the department lets a citizen read the certificate; the citizen takes the data
    // key from the chain, reads the document and keeps a receipt that verifies offline.
    let citizen = Identity::generate(Role::Citizen);
    let neighbour = Identity::generate(Role::Citizen);
    let (height, _) = client
        .grant(
            cert_put.id,
            &cert_put.key,
            &crate::grant::GrantAddress::of(&citizen),
            None,
        )
        .await?;
    step(&format!(
        "granted the certificate to citizen {} (data key sealed to them with HPKE) in block {height}",
        citizen.public().short()
    ));
    let as_citizen = cluster.client_as(&citizen, ClientOptions::default())?;
    let t = Instant::now();
    let key = as_citizen.granted_key(&cert_put.id).await?;
    let (out, _) = get_bytes(&as_citizen, &cert_put.id, &key).await?;
    if out != cert {
        return Err(DemoError::Check("the citizen's copy differs".into()));
    }
    let receipt = as_citizen.receipt(&cert_put.id).await?.encode();
    step(&format!(
        "citizen fetched the certificate with the key from their grant in {}: identical; receipt of {} bytes",
        ms(t.elapsed()),
        receipt.len()
    ));
    let manifest = crate::receipt::Receipt::decode(&receipt)
        .and_then(|r| r.verify(&cluster.chain().validators))
        .map_err(|e| DemoError::Check(format!("the receipt does not verify: {e}")))?;
    step(&format!(
        "receipt verified offline against the validator set: {} bytes of {}",
        manifest.size, manifest.document_type
    ));
    let as_neighbour = cluster.client_as(&neighbour, ClientOptions::default())?;
    match as_neighbour.granted_key(&cert_put.id).await {
        Err(e) => step(&format!("another citizen asks for the key: refused ({e})")),
        Ok(_) => {
            return Err(DemoError::Check(
                "a citizen without a grant got the data key".into(),
            ));
        }
    }
    // The peers themselves serve the neighbour nothing: no manifest, no shard.
    match as_neighbour.manifest(&cert_put.id).await {
        Err(ClientError::NotFound { errors, .. }) if errors.contains("Refused") => step(
            "the neighbour asks the peers for the certificate itself: every peer refuses (no grant on chain)",
        ),
        Err(e) => return Err(e.into()),
        Ok(_) => {
            return Err(DemoError::Check(
                "a peer served the manifest to a citizen without a grant".into(),
            ));
        }
    }
    as_neighbour.close().await;

    // Revocation for real: the grant is withdrawn and the certificate rekeyed, so the key
    // the citizen unwrapped opens nothing stored from then on.
    // A fresh client: the first one saw peers 3 and 5 down and would skip them a while.
    client.close().await;
    let owner = cluster.client(ClientOptions::default())?;
    let keyring = crate::keyring::Keyring::open(cluster.root.join("keyring"))?;
    keyring.save(&cert_put.id, &cert_put.key)?;
    owner.revoke(cert_put.id, citizen.public()).await?;
    let t = Instant::now();
    let rekeyed = crate::version::rekey(&owner, &cert_put.id, &keyring, &|_, _| {}).await?;
    let collected = rekeyed.collect.as_ref().map_or(0, |c| c.shards_deleted);
    step(&format!(
        "revoked the citizen's grant and rekeyed the certificate -> document {} in {} (block {}): new data key, {collected} old shards collected",
        rekeyed.new,
        ms(t.elapsed()),
        rekeyed.height
    ));
    match get_bytes(&owner, &rekeyed.new, &key).await {
        Err(e) => step(&format!(
            "the citizen's old data key opens nothing of the new version ({e})"
        )),
        Ok(_) => {
            return Err(DemoError::Check(
                "the revoked key opened the rekeyed certificate".into(),
            ));
        }
    }
    if as_citizen.granted_key(&rekeyed.new).await.is_ok() {
        return Err(DemoError::Check(
            "the revoked citizen got the new data key".into(),
        ));
    }
    as_citizen.close().await;
    let (out, _) = get_bytes(&owner, &rekeyed.new, &rekeyed.key).await?;
    if out != cert {
        return Err(DemoError::Check("the rekeyed certificate differs".into()));
    }
    step(
        "the chain holds no key of the new version for the citizen; the department reads it with the new key: identical",
    );

    // The read audit: every peer recorded the reads it served and committed their Merkle
    // root on chain; the department checks each record against those roots.
    let t = Instant::now();
    let report = loop {
        let report = crate::audit::audit(&owner, &cert_put.id).await?;
        let verified = report
            .lines
            .iter()
            .all(|l| matches!(l.verdict, crate::audit::Verdict::Verified { .. }));
        let citizen_read = report
            .lines
            .iter()
            .any(|l| l.record.reader == citizen.public());
        if verified && citizen_read && report.unreachable.is_empty() {
            break report;
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err(DemoError::Check(format!(
                "the audit is not verified against the chain: {:?}",
                report.lines
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    step(&format!(
        "the department's audit of the certificate: {} reads recorded by the peers, every one verified against the peer's AuditRoot on chain ({})",
        report.lines.len(),
        ms(t.elapsed())
    ));
    for (who, reader) in [
        ("citizen", citizen.public()),
        ("department", owner.public()),
    ] {
        let lines: Vec<_> = report
            .lines
            .iter()
            .filter(|l| l.record.reader == reader)
            .collect();
        let manifests = lines
            .iter()
            .filter(|l| l.record.read == crate::audit::ReadKind::Manifest)
            .count();
        let peers: std::collections::BTreeSet<_> = lines.iter().map(|l| l.peer).collect();
        step(&format!(
            "  {who} {}: {manifests} manifest and {} shard reads on {} peers, from {}",
            reader.short(),
            lines.len() - manifests,
            peers.len(),
            lines
                .first()
                .map_or("-".into(), |l| crate::audit::utc(l.record.at_ms))
        ));
    }
    if report
        .lines
        .iter()
        .any(|l| l.record.reader == neighbour.public())
    {
        return Err(DemoError::Check("the audit lists a refused reader".into()));
    }

    let cert_now = PutReceipt {
        id: rekeyed.new,
        manifest: owner.manifest(&rekeyed.new).await?,
        key: rekeyed.key.clone(),
        shards_stored: 0,
        shards_missing: Vec::new(),
        registered: Some((rekeyed.height, 0)),
        timings: Default::default(),
    };
    owner.close().await;

    let docs = [(&cert_now, &cert), (&big_put, &big)];
    let (_, added) = cluster.add_peer("zone-0").await?;
    let change = crate::chain::tx::TxBody::AddNode {
        node: added.key,
        addr: added.addr.clone(),
        zone: added.zone.clone(),
        weight: added.weight,
    };
    let (old, new) = cluster.change_layout(change).await?;
    step(&format!(
        "added a seventh peer {} in zone-0: layout epoch {} on chain; {} shards must move (1/7 of all: {:.1})",
        added.key.short(),
        new.epoch,
        slots_moved(&old, &new, &docs)?,
        docs.iter()
            .map(|(r, _)| r.manifest.stripes.len() * 6)
            .sum::<usize>() as f64
            / 7.0
    ));
    let report = rebalance(&cluster, old, new, step).await?;
    step(&format!(
        "rebalance: {} shards moved, {} old copies deleted, {:.1} MB at {:.0} MB/s",
        report.shards_moved,
        report.shards_deleted,
        report.bytes as f64 / 1e6,
        report.mb_per_s()
    ));
    let drained = cluster.peer(0).ok_or(DemoError::PeerStopped(0))?.id();
    let held = cluster.shards_held(0)?;
    let (old, new) = cluster
        .change_layout(crate::chain::tx::TxBody::DrainNode { node: drained })
        .await?;
    step(&format!(
        "draining peer 0 ({} shards): layout epoch {}; {} shards must move",
        held,
        new.epoch,
        slots_moved(&old, &new, &docs)?
    ));
    let report = rebalance(&cluster, old, new, step).await?;
    let left = cluster.shards_held(0)?;
    step(&format!(
        "rebalance: {} shards moved, {} old copies deleted; peer 0 now holds {} shards",
        report.shards_moved, report.shards_deleted, left
    ));
    if left != 0 {
        return Err(DemoError::Check(
            "the drained peer still holds shards".into(),
        ));
    }
    let operator = cluster.operator_client(
        cluster.layout().clone(),
        None,
        ClientOptions {
            params,
            ..ClientOptions::default()
        },
    )?;
    let check = crate::ops::converge(
        &operator,
        None,
        &crate::ops::OpsOptions {
            dry_run: true,
            ..Default::default()
        },
        &|_| {},
    )
    .await?;
    operator.close().await;
    if check.stripes_below != 0 {
        return Err(DemoError::Check(format!(
            "{} stripes below full redundancy",
            check.stripes_below
        )));
    }
    let client = cluster.client(ClientOptions {
        params,
        ..ClientOptions::default()
    })?;
    for (receipt, bytes) in docs {
        let (out, report) = get_bytes(&client, &receipt.id, &receipt.key).await?;
        if &out != bytes || report.stripes_rebuilt != 0 {
            return Err(DemoError::Check(
                "a document differs after the layout changes".into(),
            ));
        }
    }
    step(&format!(
        "every document reads back identical on the new layout; all {} stripes at full redundancy (k + m = {} shards on placed peers)",
        check.stripes,
        params.width()
    ));
    client.close().await;
    cluster.shutdown().await;
    step("all checks passed; cluster stopped and its temporary files removed");
    Ok(())
}

/// Submits a layout transaction as the operator; returns (old, new) layouts.
fn slots_moved(
    old: &Layout,
    new: &Layout,
    docs: &[(&PutReceipt, &Vec<u8>)],
) -> Result<u64, DemoError> {
    let stripes = docs.iter().flat_map(|(r, _)| {
        r.manifest
            .stripes
            .iter()
            .map(|ids| crate::client::stripe_key(ids))
    });
    Ok(crate::placement::moved(old, new, stripes, 6)?.moved_slots)
}

/// Runs a rebalance from `old` to `new`, telling its progress in quarter steps.
async fn rebalance(
    cluster: &LocalCluster,
    old: Layout,
    new: Layout,
    step: Step<'_>,
) -> Result<crate::ops::ConvergeReport, DemoError> {
    let journal_dir = cluster.root.join("operator");
    let journal = crate::ops::Journal::open(&journal_dir, old.epoch, new.epoch)?;
    let operator = cluster.operator_client(new, Some(old), ClientOptions::default())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = {
        let operator = operator.clone();
        tokio::spawn(async move {
            let quarter = std::sync::atomic::AtomicU64::new(0);
            let progress = move |p: crate::ops::Progress| {
                let q = (p.done * 4).checked_div(p.total).unwrap_or(4);
                if q > quarter.swap(q, std::sync::atomic::Ordering::Relaxed) || p.done == 0 {
                    let _ = tx.send(p);
                }
            };
            crate::ops::converge(
                &operator,
                Some(&journal),
                &crate::ops::OpsOptions::default(),
                &progress,
            )
            .await
        })
    };
    let started = Instant::now();
    while let Some(p) = rx.recv().await {
        let eta = if p.done == 0 {
            "-".to_string()
        } else {
            let left = started.elapsed().as_secs_f64() * (p.total - p.done) as f64 / p.done as f64;
            format!("{left:.1} s")
        };
        step(&format!(
            "  rebalance {}/{} stripes ({:.1} MB), eta {eta}",
            p.done,
            p.total,
            p.bytes as f64 / 1e6
        ));
    }
    let report = task
        .await
        .map_err(|e| DemoError::Check(format!("rebalance task: {e}")))??;
    operator.close().await;
    if !report.failures.is_empty() {
        return Err(DemoError::Check(report.failures.join("; ")));
    }
    Ok(report)
}
