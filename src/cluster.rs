//! The embedded cluster: storage peers and one validator in this process, on 127.0.0.1
//! with their redb files in a temporary directory, each started as `dangan node` starts
//! one (`node::start`). Also the helpers that run on it: whole documents to and from
//! memory, and deterministic sample data.
//!
//! [`LocalCluster`] is what the integration tests, `dangan bench` and `dangan demo` run on:
//! real peers, real QUIC with mutual TLS, real redb files, nothing faked. Not here: the
//! demo's story (`demo`) or the benchmarks (`bench`).

use std::io::Cursor;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::chain::client::ChainLink;
use crate::chain::ledger::Ledger;
use crate::chain::state::{Genesis, GenesisAccount};
use crate::client::{Client, ClientError, ClientOptions, GetReport, PutReceipt};
use crate::codec::DocumentInfo;
use crate::config::{NodeSetup, ValidatorSetup};
use crate::crypto::DataKey;
use crate::id::DocumentId;
use crate::identity::{Identity, Role};
use crate::node::{self, Node, NodeError};
use crate::peer::{PeerHandle, PeerLimits};
use crate::placement::{Layout, NodeInfo, PlacementError};
use crate::tls::Membership;

/// What can fail on the embedded cluster: starting its nodes, and the clients, operations
/// and checks run on it (tests, `bench`, `demo`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("chain: {0}")]
    Chain(#[from] crate::chain::client::ChainError),
    #[error("validator: {0}")]
    Ledger(#[from] crate::chain::ledger::LedgerError),
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error("temporary directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer {0} is not running")]
    PeerStopped(usize),
    #[error("check failed: {0}")]
    Check(String),
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
    #[error(transparent)]
    Version(#[from] crate::revision::RevisionError),
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
    node: Option<Node>,
}

/// Keys a [`LocalCluster`] uses instead of generating them; `None` generates.
#[derive(Debug, Default)]
pub struct ClusterKeys {
    /// The department (`LocalCluster::department`).
    pub department: Option<Identity>,
    /// The validator, which signs every block header.
    pub validator: Option<Identity>,
    /// The node hosting the validator (its QUIC/TLS key).
    pub validator_host: Option<Identity>,
}

/// Peers on 127.0.0.1 in this process, each with its own redb store in a temp directory.
pub struct LocalCluster {
    _tmp: Option<tempfile::TempDir>,
    slots: Vec<Slot>,
    /// The embedded validator: a node outside the layout that serves the chain.
    validator: Option<Node>,
    ledger: Arc<Ledger>,
    chain: ChainLink,
    membership: Membership,
    layout: Layout,
    client_identity: Identity,
    /// A second department, owning nothing of the first's.
    other_department: Identity,
    /// The operator: may change the layout on chain and run the operations workers.
    operator: Identity,
    /// The archives authority: sets and lifts legal holds (`chain::records`).
    archives: Identity,
    root: PathBuf,
    limits: PeerLimits,
    /// Whether every node serves its metrics and health probes on 127.0.0.1.
    metrics: bool,
}

impl LocalCluster {
    /// Starts `peers` peers spread round-robin over `zones` failure zones, with data in a
    /// fresh temporary directory removed when the cluster is dropped.
    pub async fn start(peers: usize, zones: usize) -> Result<Self, ClusterError> {
        Self::start_with(peers, zones, PeerLimits::default()).await
    }

    /// Like [`LocalCluster::start`], with the peers' `limits`.
    pub async fn start_with(
        peers: usize,
        zones: usize,
        limits: PeerLimits,
    ) -> Result<Self, ClusterError> {
        let tmp = tempfile::Builder::new().prefix("dangan-").tempdir()?;
        let root = tmp.path().to_path_buf();
        let mut cluster = Self::start_in(&root, peers, zones, limits).await?;
        cluster._tmp = Some(tmp);
        Ok(cluster)
    }

    /// Like [`LocalCluster::start`], with every node (the validator's too) serving its
    /// metrics and health probes on 127.0.0.1, any port ([`LocalCluster::metrics_addr`]).
    pub async fn start_observed(peers: usize, zones: usize) -> Result<Self, ClusterError> {
        let tmp = tempfile::Builder::new().prefix("dangan-").tempdir()?;
        let root = tmp.path().to_path_buf();
        let mut cluster = Self::start_keyed(
            &root,
            peers,
            zones,
            PeerLimits::default(),
            ClusterKeys::default(),
            true,
        )
        .await?;
        cluster._tmp = Some(tmp);
        Ok(cluster)
    }

    /// Like [`LocalCluster::start`], in `root` (kept).
    pub async fn start_in(
        root: &Path,
        peers: usize,
        zones: usize,
        limits: PeerLimits,
    ) -> Result<Self, ClusterError> {
        Self::start_keyed(root, peers, zones, limits, ClusterKeys::default(), false).await
    }

    /// Like [`LocalCluster::start`], with the keys `keys` gives (e.g. keys in a PKCS#11
    /// token) instead of fresh ones, with data in a fresh temporary directory.
    pub async fn start_with_keys(
        peers: usize,
        zones: usize,
        keys: ClusterKeys,
    ) -> Result<Self, ClusterError> {
        let tmp = tempfile::Builder::new().prefix("dangan-").tempdir()?;
        let root = tmp.path().to_path_buf();
        let mut cluster =
            Self::start_keyed(&root, peers, zones, PeerLimits::default(), keys, false).await?;
        cluster._tmp = Some(tmp);
        Ok(cluster)
    }

    async fn start_keyed(
        root: &Path,
        peers: usize,
        zones: usize,
        limits: PeerLimits,
        keys: ClusterKeys,
        metrics: bool,
    ) -> Result<Self, ClusterError> {
        let membership = Membership::new();
        let client_identity = keys
            .department
            .unwrap_or_else(|| Identity::generate(Role::Department));
        let other_department = Identity::generate(Role::Department);
        let operator = Identity::generate(Role::Operator);
        let archives = Identity::generate(Role::Archives);
        let identities: Vec<Identity> =
            (0..peers).map(|_| Identity::generate(Role::Node)).collect();
        for id in &identities {
            membership.add(id.public());
        }
        // The peers first (the genesis names their addresses), linked to the chain once its
        // validator runs.
        let mut slots = Vec::with_capacity(peers);
        for (i, identity) in identities.into_iter().enumerate() {
            let dir = root.join(format!("peer-{i}"));
            let setup = peer_setup(&identity, loopback(), &dir, &limits, None, metrics);
            let node = node::start(setup).await?;
            slots.push(Slot {
                zone: format!("zone-{}", i % zones.max(1)),
                addr: node.addr(),
                identity,
                dir,
                node: Some(node),
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
        let signer = keys
            .validator
            .unwrap_or_else(|| Identity::generate(Role::Validator));
        let genesis = Genesis {
            chain_id: "local".into(),
            validators: vec![GenesisAccount::of(&signer, Role::Validator)],
            accounts: vec![
                GenesisAccount::of(&client_identity, Role::Department),
                GenesisAccount::of(&other_department, Role::Department),
                GenesisAccount::of(&operator, Role::Operator),
                GenesisAccount::of(&archives, Role::Archives),
            ],
            nodes: nodes.clone(),
        };
        let chain_dir = root.join("validator");
        std::fs::create_dir_all(&chain_dir)?;
        let validators = vec![signer.public()];
        let host = keys
            .validator_host
            .unwrap_or_else(|| Identity::generate(Role::Node));
        membership.add(host.public());
        let validator = node::start(NodeSetup {
            validator: Some(ValidatorSetup {
                signer,
                genesis,
                chain: chain_dir.join("chain.redb"),
                checkpoint_every: 0,
                anchor_file: None,
            }),
            ..peer_setup(
                &host,
                loopback(),
                &chain_dir.join("store"),
                &limits,
                None,
                metrics,
            )
        })
        .await?;
        let ledger = validator
            .ledger()
            .expect("a node started with a validator has its ledger")
            .clone();
        ledger.sealed(std::time::Duration::from_secs(10)).await?;
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
            if let Some(node) = &slot.node {
                node.link(chain.clone())?;
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
            archives,
            root: root.to_path_buf(),
            limits,
            metrics,
        })
    }

    /// Starts one more peer in `zone` (trusted, but in no layout until an `AddNode`);
    /// returns its index and its layout entry.
    pub async fn add_peer(&mut self, zone: &str) -> Result<(usize, NodeInfo), ClusterError> {
        let identity = Identity::generate(Role::Node);
        self.membership.add(identity.public());
        let i = self.slots.len();
        let dir = self.root.join(format!("peer-{i}"));
        let chain = Some(self.chain.clone());
        let setup = peer_setup(
            &identity,
            loopback(),
            &dir,
            &self.limits,
            chain,
            self.metrics,
        );
        let node = node::start(setup).await?;
        let info = NodeInfo {
            key: identity.public(),
            zone: zone.to_string(),
            weight: 100,
            addr: node.addr().to_string(),
        };
        self.slots.push(Slot {
            zone: zone.to_string(),
            addr: node.addr(),
            identity,
            dir,
            node: Some(node),
        });
        Ok((i, info))
    }

    /// The operator's identity (an `Operator` account on the chain).
    pub fn operator(&self) -> &Identity {
        &self.operator
    }

    /// The archives authority's identity (an `Archives` account: sets and lifts holds).
    pub fn archives(&self) -> &Identity {
        &self.archives
    }

    /// The department's identity (a `Department` account on the chain).
    pub fn department(&self) -> &Identity {
        &self.client_identity
    }

    /// Another department's identity: on the chain, owning nothing unless it stores.
    pub fn other_department(&self) -> &Identity {
        &self.other_department
    }

    /// The operator's [`crate::ops::Operator`] over this cluster, its data directory `dir`
    /// (what `dangan rebalance|repair|collect` run).
    pub fn operator_ops(&self, dir: &Path) -> crate::ops::Operator {
        crate::ops::Operator::new(
            &self.operator,
            Arc::new(self.membership.clone()),
            self.layout().clone(),
            self.local_options(ClientOptions::default()),
            dir,
        )
    }

    /// This cluster as files a `dangan` process can use: `cluster.toml` (its peers, the
    /// validator's host as a peer of weight 0, the departments and the operator as clients)
    /// and the operator's key, written to `dir`. Returns their paths.
    pub fn write_operator_files(&self, dir: &Path) -> Result<(PathBuf, PathBuf), ClusterError> {
        use crate::config::{ChainSection, ClientEntry, ClusterFile, PeerEntry, ValidatorEntry};
        std::fs::create_dir_all(dir)?;
        let addr = |node: &NodeInfo| {
            node.addr
                .parse::<SocketAddr>()
                .map_err(|e| ClusterError::Check(format!("peer address {}: {e}", node.addr)))
        };
        let mut peers = Vec::new();
        for node in self.layout.nodes.iter().chain(&self.chain.hosts) {
            peers.push(PeerEntry {
                id: node.key,
                addr: addr(node)?,
                zone: node.zone.clone(),
                weight: node.weight,
            });
        }
        let clients = [
            (&self.client_identity, "department"),
            (&self.other_department, "other department"),
            (&self.operator, "operator"),
        ]
        .into_iter()
        .map(|(identity, name)| ClientEntry {
            id: identity.public(),
            name: name.into(),
        })
        .collect();
        let file = ClusterFile {
            epoch: self.layout.epoch,
            coding: Default::default(),
            peers,
            clients,
            chain: Some(ChainSection {
                validators: self
                    .chain
                    .validators
                    .iter()
                    .zip(&self.chain.hosts)
                    .map(|(id, host)| ValidatorEntry {
                        id: *id,
                        peer: host.key,
                    })
                    .collect(),
            }),
        };
        let text = toml::to_string(&file)
            .map_err(|e| ClusterError::Check(format!("cluster file: {e}")))?;
        let cluster = dir.join("cluster.toml");
        std::fs::write(&cluster, text)?;
        let key = dir.join("operator.key");
        self.operator
            .save(&key)
            .map_err(|e| ClusterError::Check(format!("operator key: {e}")))?;
        Ok((cluster, key))
    }

    /// A client with the operator's identity, placing by `layout` and falling back to
    /// `previous` (what the operations workers use).
    pub fn operator_client(
        &self,
        layout: Layout,
        previous: Option<Layout>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        self.client_placing(&self.operator, layout, previous, options)
    }

    /// Submits a layout transaction as the operator and takes the chain's new layout as the
    /// cluster's: (old layout, new layout).
    pub async fn change_layout(
        &mut self,
        body: crate::chain::tx::TxBody,
    ) -> Result<(Layout, Layout), ClusterError> {
        let old = self.layout().clone();
        let operator = self.operator_client(old.clone(), None, ClientOptions::default())?;
        let submitted = operator.chain()?.submit(body).await;
        operator.close().await;
        submitted?;
        let new = self.sync_layout().clone();
        Ok((old, new))
    }

    /// Shards stored on running peer `i`.
    pub fn shards_held(&self, i: usize) -> Result<u64, ClusterError> {
        Ok(self
            .peer(i)
            .ok_or(ClusterError::PeerStopped(i))?
            .store()
            .usage()
            .map_err(|e| ClusterError::Check(e.to_string()))?
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
        self.client_placing(&self.client_identity, layout, previous, options)
    }

    /// A client of this cluster as `identity`, placing by `layout` and falling back to
    /// `previous`.
    fn client_placing(
        &self,
        identity: &Identity,
        layout: Layout,
        previous: Option<Layout>,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        Client::with_layouts(
            identity,
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
        self.slots
            .get(i)
            .and_then(|s| s.node.as_ref())
            .map(Node::peer)
    }

    /// The key of peer `i` (its `Node` account): what a peer's process holds, for tests of
    /// what a stolen peer key can do.
    pub fn peer_identity(&self, i: usize) -> Option<&Identity> {
        self.slots.get(i).map(|s| &s.identity)
    }

    /// The failure zone of peer `i`.
    pub fn zone(&self, i: usize) -> Option<&str> {
        self.slots.get(i).map(|s| s.zone.as_str())
    }

    /// The directory the cluster's files are in (peers, validator, and whatever its users
    /// keep next to them).
    pub fn root(&self) -> &Path {
        &self.root
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
        self.client_placing(identity, self.layout.clone(), None, options)
    }

    /// Stops peer `i` (closes its connections and its store).
    pub async fn stop_peer(&mut self, i: usize) -> Result<(), ClusterError> {
        let node = self
            .slots
            .get_mut(i)
            .and_then(|s| s.node.take())
            .ok_or(ClusterError::PeerStopped(i))?;
        node.shutdown().await;
        Ok(())
    }

    /// Starts a stopped peer again on its old address with its old store.
    pub async fn restart_peer(&mut self, i: usize) -> Result<(), ClusterError> {
        let chain = Some(self.chain.clone());
        let slot = self.slots.get_mut(i).ok_or(ClusterError::PeerStopped(i))?;
        if slot.node.is_none() {
            let setup = peer_setup(
                &slot.identity,
                slot.addr,
                &slot.dir,
                &self.limits,
                chain,
                self.metrics,
            );
            slot.node = Some(node::start(setup).await?);
        }
        Ok(())
    }

    /// Links running peer `i` to the validator hosts of `chain` instead of the cluster's
    /// (`Node::link`): from now on it asks them to authorise requests.
    pub fn link_peer(&self, i: usize, chain: ChainLink) -> Result<(), ClusterError> {
        let node = self
            .slots
            .get(i)
            .and_then(|s| s.node.as_ref())
            .ok_or(ClusterError::PeerStopped(i))?;
        Ok(node.link(chain)?)
    }

    /// Where running peer `i` serves its metrics and health probes (a cluster started with
    /// [`LocalCluster::start_observed`]).
    pub fn metrics_addr(&self, i: usize) -> Option<SocketAddr> {
        self.slots.get(i)?.node.as_ref()?.metrics_addr()
    }

    /// Where the validator's node serves its metrics and health probes, while it runs.
    pub fn validator_metrics_addr(&self) -> Option<SocketAddr> {
        self.validator.as_ref()?.metrics_addr()
    }

    /// Where the embedded chain is, for clients.
    pub fn chain(&self) -> &ChainLink {
        &self.chain
    }

    /// The embedded validator's ledger.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// Stops the node that hosts the validator: the chain becomes unreachable.
    pub async fn stop_validator(&mut self) {
        if let Some(v) = self.validator.take() {
            v.shutdown().await;
        }
    }

    pub async fn shutdown(mut self) {
        for slot in &mut self.slots {
            if let Some(node) = slot.node.take() {
                node.shutdown().await;
            }
        }
        if let Some(v) = self.validator.take() {
            v.shutdown().await;
        }
        self.ledger.shutdown().await;
    }
}

/// Loopback, any port: where the embedded nodes listen first.
fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A storage node of the embedded cluster: no validator; linked to `chain` when given;
/// with `metrics`, serving them on 127.0.0.1, any port.
fn peer_setup(
    identity: &Identity,
    listen: SocketAddr,
    dir: &Path,
    limits: &PeerLimits,
    chain: Option<ChainLink>,
    metrics: bool,
) -> NodeSetup {
    NodeSetup {
        identity: identity.clone(),
        listen,
        data_dir: dir.to_path_buf(),
        limits: limits.clone(),
        chain,
        // Trusted keys matter only to a validator that has others to reach.
        members: Vec::new(),
        validator: None,
        metrics_listen: metrics.then(loopback),
    }
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

/// Deterministic, incompressible-looking test data.
pub fn sample_data(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut reader = blake3::Hasher::new_keyed(&[seed as u8; 32]).finalize_xof();
    reader.fill(&mut out);
    out
}
