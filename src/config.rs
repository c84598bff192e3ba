//! Configuration files, read in two stages: a documented serde struct as written by an
//! operator, then `validate` into typed values that the rest of the code trusts.
//!
//! Relative paths in a file are resolved against the directory of that file, so a config
//! directory can be moved as a whole.
//!
//! The cluster file lists the storage peers (identity, address, failure zone, capacity
//! weight) and the clients allowed to connect. It is the membership and placement layout
//! until the chain takes that role over; its shape (epoch, nodes) is the chain's.
//!
//! A node's file is read in a third stage too: [`NodeConfig::setup`] loads the keys, the
//! cluster file and the genesis it names into a [`NodeSetup`], what [`crate::node::start`]
//! runs. [`local`] writes a whole cluster's files for one machine. Not here: starting
//! anything (`node`), or what the chain holds (`chain`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::chain::client::ChainLink;
use crate::chain::state::Genesis;
use crate::chain::tx::TxError;
use crate::identity::{Identity, IdentityError, PublicId};
use crate::manifest::CodingParams;
use crate::peer::PeerLimits;
use crate::placement::{Layout, NodeInfo};

pub mod init;
pub mod local;
pub mod profile;

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A key file named by the config does not load.
    #[error(transparent)]
    Key(#[from] IdentityError),
    /// The genesis file named by `[validator]` does not load.
    #[error(transparent)]
    Genesis(TxError),
    #[error("this peer's identity {id} is not in {cluster}")]
    NotInCluster { id: PublicId, cluster: PathBuf },
    /// A client profile named (by `--profile`, `DANGAN_PROFILE` or `default`) that the
    /// client config file does not have.
    #[error("no profile {name:?} (named by {from}): {message}")]
    NoProfile {
        name: String,
        from: String,
        message: String,
    },
    /// A path a client command needs does not exist.
    #[error("{what} {path} (from {from}) does not exist")]
    MissingPath {
        what: &'static str,
        path: PathBuf,
        from: String,
    },
    /// A file written by a newer Dangan: refused rather than misread.
    #[error(
        "{path}: written by a newer Dangan ({what} format {found}; this build reads up to \
         {supported}): upgrade this binary"
    )]
    NewerFormat {
        what: &'static str,
        path: PathBuf,
        found: u64,
        supported: u64,
    },
}

/// `cluster.toml`: who is in the cluster and how documents are coded.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Layout epoch; bump it whenever peers, zones or weights change.
    #[serde(default = "one")]
    pub epoch: u64,
    /// Coding parameters for new documents.
    #[serde(default)]
    pub coding: CodingSection,
    /// Storage peers.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerEntry>,
    /// Clients (departments, operators) allowed to connect.
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientEntry>,
    /// Where the chain is. Without it, documents are not registered on a chain.
    #[serde(default)]
    pub chain: Option<ChainSection>,
}

/// `[chain]`: the validators (as in the genesis file), each with the `[[peer]]` whose node
/// hosts it (that node's `node.toml` has the `[validator]` section). Their signatures make
/// a block final; clients and validators reach them at their peers' addresses.
///
/// ```toml
/// [[chain.validator]]
/// id = "dgn1…"    # the validator's key (dangan keys new --role validator)
/// peer = "dgn1…"  # the node key of the [[peer]] that hosts it
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSection {
    #[serde(rename = "validator")]
    pub validators: Vec<ValidatorEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorEntry {
    /// The validator's id, as in the genesis file.
    pub id: PublicId,
    /// The id of the `[[peer]]` that hosts it.
    pub peer: PublicId,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodingSection {
    /// Data shards per stripe.
    pub k: u16,
    /// Parity shards per stripe: any m peers of a stripe may be lost.
    pub m: u16,
    /// Target shard size in KiB.
    pub shard_kib: u64,
    /// Durable acknowledgements needed per stripe (default: all k + m).
    #[serde(default)]
    pub write_quorum: Option<usize>,
}

impl Default for CodingSection {
    fn default() -> Self {
        let p = CodingParams::default();
        Self {
            k: p.k,
            m: p.m,
            shard_kib: p.full_shard_len() >> 10,
            write_quorum: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// Public identity (`dgn1…`), from `dangan keys new --role node`.
    pub id: PublicId,
    /// `host:port` the peer listens on (UDP).
    pub addr: SocketAddr,
    /// Failure zone (rack, room, site): shards of a stripe spread over zones first.
    pub zone: String,
    /// Relative capacity; 0 takes no new shards.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    100
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub id: PublicId,
    /// Who this is, for operators reading logs.
    pub name: String,
}

/// A validated cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub layout: Layout,
    pub params: CodingParams,
    pub write_quorum: Option<usize>,
    /// Every identity allowed to connect: peers and clients.
    pub members: Vec<PublicId>,
    /// Where the chain is, if the cluster has one.
    pub chain: Option<ChainLink>,
}

impl Cluster {
    /// A document client of this cluster as `identity`: trusting its members, placing by
    /// the chain's layout (this file's while the chain has none; reads fall back to it).
    /// What `dangan put`/`get` and the gateway connect with.
    pub async fn connect(
        &self,
        identity: &Identity,
    ) -> Result<crate::client::Client, crate::client::ClientError> {
        crate::client::Client::with_chain_layout(
            identity,
            self.trust(),
            self.layout.clone(),
            self.options(),
        )
        .await
    }

    /// The peers and clients this cluster trusts, as a TLS trust policy.
    pub fn trust(&self) -> std::sync::Arc<crate::tls::Membership> {
        let membership = crate::tls::Membership::new();
        membership.replace(self.members.iter().copied());
        std::sync::Arc::new(membership)
    }

    /// Client options with this cluster's coding, write quorum and chain.
    pub fn options(&self) -> crate::client::ClientOptions {
        crate::client::ClientOptions {
            params: self.params,
            write_quorum: self.write_quorum,
            chain: self.chain.clone(),
            ..crate::client::ClientOptions::default()
        }
    }
}

impl ClusterFile {
    pub fn load(path: &Path) -> Result<Cluster, ConfigError> {
        let file: ClusterFile = read_toml(path)?;
        file.validate(path)
    }

    pub fn validate(self, path: &Path) -> Result<Cluster, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        if self.peers.is_empty() {
            return Err(invalid("no [[peer]] entries".into()));
        }
        let params = CodingParams::with_shard_len(
            self.coding.k,
            self.coding.m,
            CodingParams::default().segment_size,
            self.coding.shard_kib.saturating_mul(1024),
        );
        params
            .validate()
            .map_err(|e| invalid(format!("[coding]: {e}")))?;
        if let Some(q) = self.coding.write_quorum
            && (q < usize::from(params.k) || q > params.width())
        {
            return Err(invalid(format!(
                "[coding] write_quorum {q} must be between k = {} and k + m = {}",
                params.k,
                params.width()
            )));
        }
        let nodes = self
            .peers
            .iter()
            .map(|p| NodeInfo {
                key: p.id,
                zone: p.zone.clone(),
                weight: p.weight,
                addr: p.addr.to_string(),
            })
            .collect();
        let layout = Layout::new(self.epoch, nodes).map_err(|e| invalid(e.to_string()))?;
        let active = layout.nodes.iter().filter(|n| n.weight > 0).count();
        if active < params.width() {
            return Err(invalid(format!(
                "k + m = {} needs at least that many peers with weight > 0, found {active}",
                params.width()
            )));
        }
        let mut members: Vec<PublicId> = self.peers.iter().map(|p| p.id).collect();
        members.extend(self.clients.iter().map(|c| c.id));
        let chain = match &self.chain {
            None => None,
            Some(c) => {
                if c.validators.is_empty() {
                    return Err(invalid("[chain] names no validator".into()));
                }
                let mut hosts = Vec::new();
                for v in &c.validators {
                    let host = self.peers.iter().find(|p| p.id == v.peer).ok_or_else(|| {
                        invalid(format!(
                            "[[chain.validator]] {}: its peer {} is not a [[peer]]",
                            v.id, v.peer
                        ))
                    })?;
                    hosts.push(NodeInfo {
                        key: host.id,
                        zone: host.zone.clone(),
                        weight: host.weight,
                        addr: host.addr.to_string(),
                    });
                }
                Some(ChainLink {
                    hosts,
                    validators: c.validators.iter().map(|v| v.id).collect(),
                })
            }
        };
        Ok(Cluster {
            layout,
            params,
            write_quorum: self.coding.write_quorum,
            members,
            chain,
        })
    }
}

/// `node.toml`: one storage peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Where the shard store lives.
    pub data_dir: PathBuf,
    /// This peer's key file (`dangan keys new --role node`).
    pub key: PathBuf,
    /// The cluster file.
    pub cluster: PathBuf,
    #[serde(default)]
    pub limits: LimitsSection,
    /// Present on the node that runs the chain's validator.
    #[serde(default)]
    pub validator: Option<ValidatorSection>,
    /// TCP address of the plain-HTTP metrics and health listener (`/metrics`, `/healthz`,
    /// `/readyz`); absent: none.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

/// `[validator]`: this node also runs the chain's validator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorSection {
    /// The validator's key file (`dangan keys new --role validator`), listed in the genesis.
    pub key: PathBuf,
    /// The genesis file: chain id, validators, accounts.
    pub genesis: PathBuf,
    /// The chain database (redb).
    pub chain: PathBuf,
    /// Make a signed checkpoint every this many blocks (`chain::checkpoint`); 0, the
    /// default: none. A validator setting, not a genesis one: validators sign any final
    /// height asked of them, so they need not agree on it.
    #[serde(default)]
    pub checkpoint_every: u64,
    /// An append-only file each new checkpoint's digest is anchored in (`chain::anchor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_connections: usize,
    pub max_concurrent_requests: usize,
    pub queue_timeout_ms: u64,
    pub request_timeout_secs: u64,
    /// How often the peer commits the Merkle root of its new read records to the chain.
    pub audit_interval_ms: u64,
    /// Most read records waiting in memory for their write; while full, reads are refused.
    pub audit_buffer: usize,
    /// Time for a request's whole header, from its stream's first byte.
    pub header_timeout_ms: u64,
    pub streams_per_connection: usize,
    pub connections_per_identity: usize,
    pub requests_per_identity: usize,
    /// Connections and request slots all keys without an account share.
    pub stranger_connections: usize,
    pub stranger_requests: usize,
    /// Request slots kept for the hosts of the chain's validators.
    pub consensus_requests: usize,
    pub refusals_per_second: u32,
    pub stranger_refusals_per_second: u32,
    pub lookups_per_second: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let d = PeerLimits::default();
        Self {
            max_connections: d.max_connections,
            max_concurrent_requests: d.max_concurrent_requests,
            queue_timeout_ms: d.queue_timeout.as_millis() as u64,
            request_timeout_secs: d.request_timeout.as_secs(),
            audit_interval_ms: d.audit_interval.as_millis() as u64,
            audit_buffer: d.audit_buffer,
            header_timeout_ms: d.header_timeout.as_millis() as u64,
            streams_per_connection: d.streams_per_connection,
            connections_per_identity: d.connections_per_identity,
            requests_per_identity: d.requests_per_identity,
            stranger_connections: d.stranger_connections,
            stranger_requests: d.stranger_requests,
            consensus_requests: d.consensus_requests,
            refusals_per_second: d.refusals_per_second,
            stranger_refusals_per_second: d.stranger_refusals_per_second,
            lookups_per_second: d.lookups_per_second,
        }
    }
}

/// A validated node config with resolved paths.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub key: PathBuf,
    pub cluster: PathBuf,
    pub limits: PeerLimits,
    /// The validator section with its paths resolved.
    pub validator: Option<ValidatorSection>,
    pub metrics_listen: Option<SocketAddr>,
}

impl NodeFile {
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let file: NodeFile = read_toml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let invalid = |message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            message: message.to_owned(),
        };
        let l = file.limits;
        if [
            l.max_connections,
            l.max_concurrent_requests,
            l.audit_buffer,
            l.streams_per_connection,
            l.connections_per_identity,
            l.requests_per_identity,
            l.stranger_connections,
            l.stranger_requests,
            l.consensus_requests,
        ]
        .contains(&0)
            || [
                l.refusals_per_second,
                l.stranger_refusals_per_second,
                l.lookups_per_second,
            ]
            .contains(&0)
            || l.header_timeout_ms == 0
        {
            return Err(invalid("[limits] values must be at least 1"));
        }
        if l.audit_interval_ms < 100 {
            return Err(invalid("[limits] audit_interval_ms must be at least 100"));
        }
        if l.request_timeout_secs == 0 {
            return Err(invalid("[limits] request_timeout_secs must be at least 1"));
        }
        Ok(NodeConfig {
            listen: file.listen,
            data_dir: base.join(file.data_dir),
            key: base.join(file.key),
            cluster: base.join(file.cluster),
            limits: PeerLimits {
                max_connections: l.max_connections,
                max_concurrent_requests: l.max_concurrent_requests,
                queue_timeout: Duration::from_millis(l.queue_timeout_ms),
                request_timeout: Duration::from_secs(l.request_timeout_secs),
                audit_interval: Duration::from_millis(l.audit_interval_ms),
                audit_buffer: l.audit_buffer,
                header_timeout: Duration::from_millis(l.header_timeout_ms),
                streams_per_connection: l.streams_per_connection,
                connections_per_identity: l.connections_per_identity,
                requests_per_identity: l.requests_per_identity,
                stranger_connections: l.stranger_connections,
                stranger_requests: l.stranger_requests,
                consensus_requests: l.consensus_requests,
                refusals_per_second: l.refusals_per_second,
                stranger_refusals_per_second: l.stranger_refusals_per_second,
                lookups_per_second: l.lookups_per_second,
                ..PeerLimits::default()
            },
            validator: file.validator.map(|v| ValidatorSection {
                key: base.join(v.key),
                genesis: base.join(v.genesis),
                chain: base.join(v.chain),
                checkpoint_every: v.checkpoint_every,
                anchor_file: v.anchor_file.map(|a| base.join(a)),
            }),
            metrics_listen: file.metrics_listen,
        })
    }
}

/// What a node starts from: a [`NodeConfig`] with the files it names read and checked.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    /// The peer's identity (its node key).
    pub identity: Identity,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub limits: PeerLimits,
    /// Where the chain's validators are: the peer asks them to authorise requests. Without
    /// it (and without a validator here) the peer refuses every read and write.
    pub chain: Option<ChainLink>,
    /// Every identity of the cluster file (peers and clients): the keys a hosted validator
    /// accepts from the other validators' hosts.
    pub members: Vec<PublicId>,
    /// The validator this node hosts, if any.
    pub validator: Option<ValidatorSetup>,
    /// Where its metrics and health probes are served over plain HTTP (none: not served).
    pub metrics_listen: Option<SocketAddr>,
}

/// The validator a node hosts: `[validator]` with its key and genesis loaded.
#[derive(Debug, Clone)]
pub struct ValidatorSetup {
    /// The validator's signing key, listed in the genesis.
    pub signer: Identity,
    pub genesis: Genesis,
    /// The chain database (redb); its raft log lives next to it.
    pub chain: PathBuf,
    /// A checkpoint every this many blocks (0: none), and the file it is anchored in.
    pub checkpoint_every: u64,
    pub anchor_file: Option<PathBuf>,
}

impl NodeConfig {
    /// Reads what this config names: the node's key, the cluster file (which must list the
    /// node) and, with a `[validator]` section, the validator's key and the genesis.
    pub fn setup(&self) -> Result<NodeSetup, ConfigError> {
        let identity = Identity::load(&self.key)?;
        let cluster = ClusterFile::load(&self.cluster)?;
        if !cluster.members.contains(&identity.public()) {
            return Err(ConfigError::NotInCluster {
                id: identity.public(),
                cluster: self.cluster.clone(),
            });
        }
        let validator = match &self.validator {
            None => None,
            Some(v) => Some(ValidatorSetup {
                signer: Identity::load(&v.key)?,
                genesis: Genesis::load(&v.genesis).map_err(ConfigError::Genesis)?,
                chain: v.chain.clone(),
                checkpoint_every: v.checkpoint_every,
                anchor_file: v.anchor_file.clone(),
            }),
        };
        Ok(NodeSetup {
            identity,
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            limits: self.limits.clone(),
            chain: cluster.chain,
            members: cluster.members,
            validator,
            metrics_listen: self.metrics_listen,
        })
    }
}

fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let read = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}
