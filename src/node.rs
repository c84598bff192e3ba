//! A node: one storage peer, the chain validator it may host, and the peer's link to the
//! chain's validators, wired from a [`NodeSetup`] and stopped in the right order.
//!
//! [`run`] is what `dangan node` does (load, start, serve until told to stop, stop);
//! [`start`] gives the running [`Node`] to callers that need it, such as the embedded
//! cluster (`cluster`), so there is one way to wire a node. Each node has its own metrics
//! registry (the peer's requests and figures, the validator's commit latency), served with
//! its health probes on `metrics_listen` when set (`metrics`). Not here: reading config files
//! (`config`), serving requests (`peer`), ordering blocks (`chain`), authorising requests
//! (`access`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::chain::client::ChainLink;
use crate::chain::ledger::{Ledger, LedgerError, ValidatorNet};
use crate::config::{ConfigError, NodeConfig, NodeSetup};
use crate::identity::{Identity, PublicId};
use crate::metrics::{MetricsError, MetricsServer};
use crate::net::NetError;
use crate::peer::{self, PeerError, PeerHandle};
use crate::tls::{AllowAny, Membership};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("opening the chain {}", path.display())]
    Ledger {
        path: PathBuf,
        #[source]
        source: LedgerError,
    },
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("linking the peer to the chain's validators")]
    Link(#[source] NetError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// A running node: its peer and, on a validator's node, the ledger. Dropping it does not
/// stop it; call [`Node::shutdown`].
pub struct Node {
    identity: Identity,
    /// Where the peer's queries to the chain's validators bind: the listen IP, any port.
    bind: SocketAddr,
    peer: PeerHandle,
    ledger: Option<Arc<Ledger>>,
    metrics: Option<MetricsServer>,
}

impl Node {
    pub fn id(&self) -> PublicId {
        self.peer.id()
    }

    pub fn addr(&self) -> SocketAddr {
        self.peer.addr()
    }

    pub fn peer(&self) -> &PeerHandle {
        &self.peer
    }

    /// Where its metrics and health probes are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::addr)
    }

    /// The ledger of the validator this node hosts, if any.
    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.ledger.as_ref()
    }

    /// Links the peer to the chain's validators (the other ones, on a validator's node): it
    /// asks them to authorise requests. [`start`] does it when the setup names the chain;
    /// a node started before its chain existed is linked with this once it does.
    pub fn link(&self, chain: ChainLink) -> Result<(), NodeError> {
        self.peer
            .access()
            .link(&self.identity, chain, self.bind)
            .map_err(NodeError::Link)
    }

    /// Stops the metrics listener, the peer (and with it the validator it hosts), then the
    /// ledger for good.
    pub async fn shutdown(self) {
        if let Some(metrics) = self.metrics {
            metrics.stop().await;
        }
        self.peer.shutdown().await;
        if let Some(ledger) = &self.ledger {
            ledger.shutdown().await;
        }
    }
}

/// Starts a node: opens the validator's ledger (joining the other validators named by the
/// chain), starts the peer, which any key may reach (citizens are known only by key) and
/// which authorises each request by the chain, and links it to the chain's validators.
/// Must be called within a tokio runtime.
pub async fn start(setup: NodeSetup) -> Result<Node, NodeError> {
    let NodeSetup {
        identity,
        listen,
        data_dir,
        limits,
        chain,
        members,
        validator,
        metrics_listen,
    } = setup;
    let mut registry = prometheus_client::registry::Registry::with_prefix("dangan");
    let ledger = match validator {
        None => None,
        Some(v) => {
            let net = chain.as_ref().map(|c| ValidatorNet {
                host_identity: identity.clone(),
                trust: Arc::new(members.iter().copied().collect::<Membership>()),
                hosts: c.validators.iter().copied().zip(c.hosts.clone()).collect(),
            });
            let ledger = Ledger::open(&v.chain, &v.genesis, v.signer, net)
                .await
                .map_err(|source| NodeError::Ledger {
                    path: v.chain.clone(),
                    source,
                })?;
            let ledger = Arc::new(ledger);
            ledger.start_checkpoints(crate::chain::checkpoint::CheckpointConfig {
                every: v.checkpoint_every,
                anchors: v
                    .anchor_file
                    .iter()
                    .map(|f| {
                        Arc::new(crate::chain::anchor::FileAnchor::new(f))
                            as Arc<dyn crate::chain::anchor::Anchor>
                    })
                    .collect(),
            });
            registry.register(
                "chain_commit_duration_seconds",
                "Seconds from proposing a block to its commit and apply, on this validator as leader",
                ledger.commit_latency(),
            );
            Some(ledger)
        }
    };
    // Any key may connect; each request is authorised by the chain: the ledger here while
    // it is current, else the validators.
    let peer = match peer::start(
        &identity,
        Arc::new(AllowAny),
        listen,
        &data_dir,
        limits,
        ledger.clone(),
        &mut registry,
    )
    .await
    {
        Ok(peer) => peer,
        Err(e) => {
            if let Some(ledger) = &ledger {
                ledger.shutdown().await;
            }
            return Err(e.into());
        }
    };
    let metrics = match metrics_listen {
        None => None,
        Some(addr) => {
            let probe = peer.ready_probe();
            match crate::metrics::serve(addr, Arc::new(registry), probe).await {
                Ok(server) => Some(server),
                Err(e) => {
                    peer.shutdown().await;
                    if let Some(ledger) = &ledger {
                        ledger.shutdown().await;
                    }
                    return Err(e.into());
                }
            }
        }
    };
    let node = Node {
        identity,
        bind: SocketAddr::new(listen.ip(), 0),
        peer,
        ledger,
        metrics,
    };
    // A peer hosting a validator is linked to the other validators too (`link` leaves this
    // host out): its own ledger answers only while it is current, and after a restart,
    // until it has caught up, the others are asked.
    if let Some(chain) = chain
        && let Err(e) = node.link(chain)
    {
        node.shutdown().await;
        return Err(e);
    }
    Ok(node)
}

/// `dangan node`: starts the node `config` describes, prints what it serves on stdout,
/// serves until `shutdown` resolves (its output is ignored), then stops it.
pub async fn run(config: NodeConfig, shutdown: impl Future) -> Result<(), NodeError> {
    let setup = config.setup()?;
    let unlinked = setup.chain.is_none() && setup.validator.is_none();
    let node = start(setup).await?;
    if let Some(ledger) = node.ledger() {
        let status = ledger.status();
        println!(
            "validator of chain {:?}: height {}, {} documents",
            status.chain_id, status.height, status.documents
        );
    }
    if unlinked {
        eprintln!(
            "warning: {} has no [chain]: this peer refuses every read and write",
            config.cluster.display()
        );
    }
    println!("peer {} serving on {}", node.id(), node.addr());
    if let Some(addr) = node.metrics_addr() {
        println!("metrics and health probes on http://{addr}/metrics (plain HTTP)");
    }
    shutdown.await;
    let id = node.id();
    node.shutdown().await;
    println!("peer {id} stopped cleanly");
    Ok(())
}
