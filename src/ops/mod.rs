//! Operations: repair, rebalance and scrub, run by an operator against a live cluster.
//!
//! - [`Operator`] (here): the operator's view of a cluster (the layout from the chain, the
//!   data directory with the rebalance journal) and its commands; the command line is a thin
//!   shell over it. [`OpsOptions`] and [`OpsError`] are shared by every worker.
//! - `worker`: the one shape of a worker (plan the units, step one, record its outcome)
//!   and the one runner that owns parallelism, the byte-rate [`Throttle`], [`Progress`] and
//!   timing.
//! - `converge`: repair and rebalance ([`converge()`]), one worker whose unit is a stripe.
//! - `documents`: the documents converge walks, listed from the chain a page at a time with
//!   their manifests (whose copies it converges), so memory is bounded by a page.
//! - `scrub`: every peer re-hashes its shards ([`scrub()`]), one worker whose unit is a peer.
//! - `collect`: the shards and manifests of puts that never registered, after a grace
//!   period ([`collect()`]), one worker whose unit is a peer.
//! - `journal`: the rebalance [`Journal`] in redb, and the settled layout.
//! - `maintain`: the maintenance service (scrub, repair, collect every period) and its
//!   metrics, among them the stripes below k + m that only a walk can count.
//!
//! Every worker is throttled in bytes per second ([`OpsOptions::rate`]) and reports progress
//! through a callback.
//!
//! Not for: deciding the layout (the chain), reading documents (operators hold no keys:
//! repair works on ciphertext shards only).

use std::path::Path;
use std::sync::Arc;

use crate::chain::client::ChainError;
use crate::client::{Client, ClientError};
use crate::erasure::ErasureError;
use crate::manifest::ManifestError;
use crate::net::NetError;
use crate::placement::{Layout, NodeInfo, PlacementError};

mod collect;
mod converge;
mod documents;
mod journal;
mod maintain;
mod scrub;
mod worker;

pub use collect::{CollectOptions, CollectReport, DEFAULT_GRACE, collect, collect_before};
pub use converge::{ConvergeReport, converge, document_stripe_key};
pub use documents::documents;
pub use journal::Journal;
pub use maintain::{Job, Jobs, MaintainMetrics, Round};
pub use scrub::{ScrubReport, scrub};
pub use worker::{OnProgress, Progress, Throttle};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct OpsOptions {
    /// Bytes per second written (converge) or re-hashed (scrub); `None` for no limit.
    pub rate: Option<f64>,
    /// Stripes (converge) or peers (scrub) worked on at once.
    pub parallel: usize,
    /// Only count what is missing or misplaced; change nothing.
    pub dry_run: bool,
    /// Documents listed from the chain at a time (converge), their manifests held together:
    /// what bounds a converge's memory. At most `proto::MAX_LIST`.
    pub page: u32,
}

impl Default for OpsOptions {
    fn default() -> Self {
        Self {
            rate: None,
            parallel: 8,
            dry_run: false,
            page: crate::proto::MAX_LIST,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
    #[error("placement: {0}")]
    Placement(#[from] PlacementError),
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("erasure coding: {0}")]
    Erasure(#[from] ErasureError),
    #[error("journal: {0}")]
    Journal(String),
}

/// One peer as `dangan cluster status` shows it.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub node: NodeInfo,
    /// Its figures (`Request::NodeStatus`: the ones its metrics expose), or why it did not
    /// answer.
    pub status: Result<crate::proto::NodeStatus, String>,
}

/// The cluster as an operator sees it.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub layout: Layout,
    /// The layout a rebalance still has to move shards from, if any.
    pub moving_from: Option<Layout>,
    pub peers: Vec<PeerStatus>,
    pub documents: u64,
    pub stripes: u64,
    /// Stripes with fewer than k + m shards on their placed peers.
    pub stripes_below: u64,
}

impl ClusterStatus {
    /// The table `dangan cluster status` prints: one line per peer (its figures as its
    /// metrics show them), then the stripes found below k + m.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(out, "layout epoch {}", self.layout.epoch);
        if let Some(from) = &self.moving_from {
            let _ = writeln!(out, "rebalance pending from epoch {}", from.epoch);
        }
        let _ = writeln!(
            out,
            "{:<14} {:<10} {:>6} {:<9} {:>8} {:>12} {:>7} {:<9} {:>6} {:>13}",
            "peer",
            "zone",
            "weight",
            "up",
            "shards",
            "bytes",
            "height",
            "raft",
            "term",
            "audit pending"
        );
        for p in &self.peers {
            let up = match (&p.status, p.node.weight) {
                (Err(_), _) => "DOWN",
                (Ok(s), _) if s.not_ready.is_some() => "not ready",
                (Ok(_), 0) => "draining",
                (Ok(_), _) => "up",
            };
            let dash = || "-".to_string();
            let (shards, bytes, height, role, term, audit) = match &p.status {
                Ok(s) => (
                    s.shards.to_string(),
                    s.bytes.to_string(),
                    s.validator.map_or_else(dash, |v| v.height.to_string()),
                    s.validator
                        .map_or_else(dash, |v| v.role.as_str().to_string()),
                    s.validator.map_or_else(dash, |v| v.term.to_string()),
                    s.audit_pending.to_string(),
                ),
                Err(_) => (dash(), dash(), dash(), dash(), dash(), dash()),
            };
            let _ = writeln!(
                out,
                "{:<14} {:<10} {:>6} {:<9} {:>8} {:>12} {:>7} {:<9} {:>6} {:>13}",
                p.node.key.short(),
                p.node.zone,
                p.node.weight,
                up,
                shards,
                bytes,
                height,
                role,
                term,
                audit
            );
            match &p.status {
                Err(e) => {
                    let _ = writeln!(out, "  {}: {e}", p.node.key.short());
                }
                Ok(s) => {
                    if let Some(why) = &s.not_ready {
                        let _ = writeln!(out, "  {}: {why}", p.node.key.short());
                    }
                }
            }
        }
        let _ = writeln!(
            out,
            "{} documents, {} stripes, {} below full redundancy",
            self.documents, self.stripes, self.stripes_below
        );
        out
    }
}

/// An operator's view of a cluster: the layout from the chain (the cluster file's when the
/// chain has none), the operator's data directory (rebalance journal, settled layout), and
/// the workers. The command line is a thin shell over this.
pub struct Operator {
    identity: crate::identity::Identity,
    trust: Arc<dyn crate::tls::TrustPolicy>,
    options: crate::client::ClientOptions,
    file_layout: Layout,
    dir: std::path::PathBuf,
}

impl Operator {
    pub fn new(
        identity: &crate::identity::Identity,
        trust: Arc<dyn crate::tls::TrustPolicy>,
        file_layout: Layout,
        options: crate::client::ClientOptions,
        dir: &Path,
    ) -> Self {
        Self {
            identity: identity.clone(),
            trust,
            options,
            file_layout,
            dir: dir.to_path_buf(),
        }
    }

    fn client(&self, layout: Layout, previous: Option<Layout>) -> Result<Client, OpsError> {
        Ok(Client::with_layouts(
            &self.identity,
            self.trust.clone(),
            layout,
            previous,
            self.options.clone(),
        )?)
    }

    /// The current layout: the chain's when it has one with nodes, else the cluster file's.
    pub async fn layout(&self) -> Result<Layout, OpsError> {
        if self.options.chain.is_none() {
            return Ok(self.file_layout.clone());
        }
        let client = self.client(self.file_layout.clone(), None)?;
        let layout = async { Ok::<_, OpsError>(client.chain()?.layout().await?) }.await;
        client.close().await;
        let layout = layout?;
        Ok(if layout.nodes.is_empty() {
            self.file_layout.clone()
        } else {
            layout
        })
    }

    /// (current layout, the settled layout it differs from, if any).
    async fn layouts(&self) -> Result<(Layout, Option<Layout>), OpsError> {
        let current = self.layout().await?;
        let settled = Journal::open(&self.dir, 0, 0)?.settled()?;
        let previous = settled.filter(|s| s.epoch < current.epoch && *s != current);
        Ok((current, previous))
    }

    /// Submits a layout transaction (AddNode, DrainNode, RemoveNode, SetLayout) and returns
    /// the new layout. The layout before it is remembered as settled if nothing is yet, so
    /// that `rebalance` knows where shards are.
    pub async fn change_layout(&self, body: crate::chain::tx::TxBody) -> Result<Layout, OpsError> {
        let current = self.layout().await?;
        {
            let journal = Journal::open(&self.dir, 0, 0)?;
            if journal.settled()?.is_none() {
                journal.set_settled(&current)?;
            }
        }
        let client = self.client(current, None)?;
        let result = async {
            let chain = client.chain()?;
            chain.submit(body).await?;
            Ok::<_, OpsError>(chain.layout().await?)
        }
        .await;
        client.close().await;
        result
    }

    /// Moves every shard to its place under the current layout, from the settled one;
    /// resumable (journal in the data directory). Records the layout as settled when
    /// nothing failed.
    pub async fn rebalance(
        &self,
        options: &OpsOptions,
        progress: OnProgress<'_>,
    ) -> Result<ConvergeReport, OpsError> {
        let (current, previous) = self.layouts().await?;
        let from = previous.as_ref().map_or(current.epoch, |p| p.epoch);
        let client = self.client(current.clone(), previous)?;
        let journal = Journal::open(&self.dir, from, current.epoch)?;
        let report = converge(&client, Some(&journal), options, progress).await;
        client.close().await;
        let report = report?;
        if report.failures.is_empty() && !options.dry_run {
            journal.set_settled(&current)?;
        }
        Ok(report)
    }

    /// Rebuilds what is missing or corrupt under the current layout.
    pub async fn repair(
        &self,
        options: &OpsOptions,
        progress: OnProgress<'_>,
    ) -> Result<ConvergeReport, OpsError> {
        let (current, previous) = self.layouts().await?;
        let client = self.client(current, previous)?;
        let report = converge(&client, None, options, progress).await;
        client.close().await;
        report
    }

    /// Re-hashes every shard on every peer; corrupt copies are quarantined by their peer.
    pub async fn scrub(
        &self,
        options: &OpsOptions,
        progress: OnProgress<'_>,
    ) -> Result<ScrubReport, OpsError> {
        let (current, previous) = self.layouts().await?;
        let client = self.client(current, previous)?;
        let report = scrub(&client, options, progress).await;
        client.close().await;
        report
    }

    /// Collects the shards and manifests of puts that never registered, older than
    /// `collect.grace`, on every peer (`collect`).
    pub async fn collect(
        &self,
        options: &OpsOptions,
        collect_options: &CollectOptions,
        progress: OnProgress<'_>,
    ) -> Result<CollectReport, OpsError> {
        let (current, previous) = self.layouts().await?;
        let client = self.client(current, previous)?;
        let report = collect(&client, options, collect_options, progress).await;
        client.close().await;
        report
    }

    /// Peers with their usage, and how many stripes are below full redundancy.
    pub async fn status(&self, progress: OnProgress<'_>) -> Result<ClusterStatus, OpsError> {
        let (current, previous) = self.layouts().await?;
        let client = self.client(current.clone(), previous.clone())?;
        let mut peers = Vec::new();
        for node in &current.nodes {
            let status = client
                .net()
                .node_status(node)
                .await
                .map_err(|e| e.to_string());
            peers.push(PeerStatus {
                node: node.clone(),
                status,
            });
        }
        let check = OpsOptions {
            dry_run: true,
            parallel: 8,
            ..OpsOptions::default()
        };
        let report = converge(&client, None, &check, progress).await;
        client.close().await;
        let report = report?;
        Ok(ClusterStatus {
            layout: current,
            moving_from: previous,
            peers,
            documents: report.documents,
            stripes: report.stripes,
            stripes_below: report.stripes_below,
        })
    }
}
