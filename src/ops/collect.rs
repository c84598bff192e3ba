//! Orphan collection: the shards and manifests of puts that never registered (a put killed
//! or refused before its `RegisterDocument` committed), run as a [`Worker`] whose unit is a
//! peer.
//!
//! Every reference a peer holds (a document's, or an uploader's until it binds) and every
//! manifest carries the time it was last added (`store`). Once that is older than the grace
//! period ([`CollectOptions::grace`], 24 hours unless set), the entry is an orphan when no
//! registered document names it:
//!
//! 1. Planning lists every registered document from the chain (proven pages) and reads its
//!    manifest, for the set of shard ids registered documents name. If a manifest cannot be
//!    read (and its document was not rekeyed away), that set is not known, and no shard
//!    reference is collected in this run (fail closed); manifests still are.
//! 2. Each peer lists its entries older than the cutoff (`ListStale`, page by page). A
//!    reference to a shard some registered document names is kept whoever holds it (even
//!    an upload reference: its document's bind may have failed here, and repair gives it
//!    the document); so is a registered document's reference or manifest.
//! 3. The rest are sent back (`CollectStale`); the peer drops one only if it is still older
//!    than the cutoff (a put since then keeps it) and, when it names a document, only once
//!    the chain proves that document is not registered. When the peer cannot tell, it keeps
//!    the bytes.
//!
//! The cutoff is taken once, when the run starts. A run killed midway is resumed by running
//! it again: what was collected is gone, the rest is found again. The throttle paces the
//! drops: each counts as [`DROP_COST`] bytes against [`OpsOptions::rate`], so a peer is not
//! flooded with deletes.
//!
//! Not for: deciding what a registered document needs (its manifest says), collecting a
//! superseded version (`revision` does, with its own journal), or how the work is run
//! ([`super::worker`]).

use std::collections::HashSet;
use std::time::Duration;

use tracing::{debug, info};

use futures::StreamExt;

use super::documents::{documents, rekeyed_away};
use super::worker::{self, Advance, OnProgress, Plan, Run, Worker};
use super::{OpsError, OpsOptions};
use crate::client::Client;
use crate::id::{DocumentId, ShardId};
use crate::placement::NodeInfo;
use crate::proto::{DeleteOutcome, MAX_LIST, StaleEntry, StaleHolder};

/// The grace period unless set: a put must register within it, or its bytes may go.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What a collect keeps and how long it waits.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Entries added less than this long ago are never collected.
    pub grace: Duration,
}

impl Default for CollectOptions {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
        }
    }
}

/// What a [`collect`] found and did.
#[derive(Debug, Clone, Default)]
pub struct CollectReport {
    pub peers: u64,
    /// Registered documents whose shards were kept.
    pub documents: u64,
    /// Entries older than the grace period that were looked at.
    pub stale: u64,
    /// Shard references dropped (bodies went with their last reference).
    pub references_collected: u64,
    pub manifests_collected: u64,
    /// Old entries kept because a registered document names them (or the peer could not
    /// tell whether it does).
    pub kept: u64,
    /// Whether shard references were considered at all (`false`: a registered document's
    /// manifest could not be read, so what registered documents name was not known).
    pub shards_considered: bool,
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

/// Collects orphans older than `collect.grace` on every peer of the client's layouts (see
/// the module doc). With `options.dry_run`, only counts them.
pub async fn collect(
    client: &Client,
    options: &OpsOptions,
    collect: &CollectOptions,
    progress: OnProgress<'_>,
) -> Result<CollectReport, OpsError> {
    let before_ms = crate::now_ms().saturating_sub(collect.grace.as_millis() as u64);
    collect_before(client, options, before_ms, progress).await
}

/// [`collect`] with the cutoff given: entries last added before `before_ms` (ms since the
/// epoch) may go.
pub async fn collect_before(
    client: &Client,
    options: &OpsOptions,
    before_ms: u64,
    progress: OnProgress<'_>,
) -> Result<CollectReport, OpsError> {
    let worker = Collect {
        client,
        before_ms,
        dry_run: options.dry_run,
        named: Default::default(),
    };
    worker::run(&worker, options, progress).await
}

/// What one drop counts as against the byte-rate throttle (a redb page).
pub const DROP_COST: u64 = 4096;

/// Rows a peer looks at per `ListStale`.
const PAGE: u32 = MAX_LIST;

/// What registered documents name, once planning found it.
#[derive(Default)]
struct Named {
    documents: HashSet<DocumentId>,
    /// `None` when a manifest could not be read: shards are then left alone.
    shards: Option<HashSet<ShardId>>,
}

struct Collect<'a> {
    client: &'a Client,
    before_ms: u64,
    dry_run: bool,
    named: std::sync::OnceLock<Named>,
}

enum PeerOutcome {
    Page {
        stale: u64,
        references: u64,
        manifests: u64,
        kept: u64,
    },
    /// The peer's last page is done.
    Done,
    Failed(String),
}

impl Collect<'_> {
    fn named(&self) -> &Named {
        self.named.get_or_init(Named::default)
    }

    /// Whether `entry` must be kept without asking the peer.
    fn keep(&self, entry: &StaleEntry) -> bool {
        let named = self.named();
        match entry {
            StaleEntry::Manifest(d) => named.documents.contains(d),
            StaleEntry::Reference { shard, holder } => {
                let registered =
                    matches!(holder, StaleHolder::Document(d) if named.documents.contains(d));
                registered
                    || named
                        .shards
                        .as_ref()
                        .is_none_or(|shards| shards.contains(shard))
            }
        }
    }
}

impl Worker for Collect<'_> {
    type Unit = NodeInfo;
    type Outcome = PeerOutcome;
    type Report = CollectReport;

    /// What registered documents name, and every peer of the current and previous layouts.
    async fn plan(&self) -> Result<Plan<'_, NodeInfo, CollectReport>, OpsError> {
        let client = self.client;
        let ids = documents(client).await?;
        let mut report = CollectReport {
            documents: ids.len() as u64,
            ..CollectReport::default()
        };
        let mut shards = Some(HashSet::new());
        for id in &ids {
            match client.manifest(id).await {
                Ok(manifest) => {
                    if let Some(set) = shards.as_mut() {
                        set.extend(manifest.stripes.iter().flatten().copied());
                    }
                }
                Err(_) if rekeyed_away(client, id).await => {}
                Err(e) => {
                    report.failures.push(format!(
                        "manifest of {id}: {e}; no shard is collected in this run"
                    ));
                    shards = None;
                }
            }
        }
        report.shards_considered = shards.is_some();
        let _ = self.named.set(Named {
            documents: ids.into_iter().collect(),
            shards,
        });
        let mut nodes: Vec<NodeInfo> = client.layout().nodes.clone();
        if let Some(previous) = client.previous_layout() {
            for n in &previous.nodes {
                if !nodes.iter().any(|x| x.key == n.key) {
                    nodes.push(n.clone());
                }
            }
        }
        report.peers = nodes.len() as u64;
        Ok(Plan {
            total: nodes.len() as u64,
            units: futures::stream::iter(nodes).boxed(),
            report,
        })
    }

    async fn step(&self, node: NodeInfo, run: &Run<'_, Self>) {
        let net = self.client.net();
        let peer = node.key.short();
        let mut after = None;
        loop {
            let page = match net.stale_page(&node, after, self.before_ms, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    run.record(PeerOutcome::Failed(format!("peer {peer}: {e}")));
                    return;
                }
            };
            let (mut references, mut manifests, mut kept) = (0, 0, 0);
            for entry in &page.stale {
                if self.keep(entry) {
                    kept += 1;
                    continue;
                }
                run.throttle().take(DROP_COST).await;
                if self.dry_run {
                    continue;
                }
                match net.stale_collect(&node, *entry, self.before_ms).await {
                    Ok(DeleteOutcome::NotFound) => {}
                    Ok(_) => match entry {
                        StaleEntry::Manifest(_) => manifests += 1,
                        StaleEntry::Reference { .. } => references += 1,
                    },
                    // Refused (registered) or not known now: kept, the peer said why.
                    Err(e) => {
                        debug!(peer = %peer, ?entry, error = %e, "kept");
                        kept += 1;
                    }
                }
            }
            run.record(PeerOutcome::Page {
                stale: page.stale.len() as u64,
                references,
                manifests,
                kept,
            });
            match page.last {
                Some(last) => after = Some(last),
                None => break,
            }
        }
        run.record(PeerOutcome::Done);
    }

    fn record(&self, r: &mut CollectReport, outcome: PeerOutcome) -> Option<Advance> {
        match outcome {
            PeerOutcome::Done => Some(Advance {
                done: 1,
                ..Advance::default()
            }),
            PeerOutcome::Page {
                stale,
                references,
                manifests,
                kept,
            } => {
                r.stale += stale;
                r.references_collected += references;
                r.manifests_collected += manifests;
                r.kept += kept;
                Some(Advance::default())
            }
            PeerOutcome::Failed(f) => {
                r.failures.push(f);
                None
            }
        }
    }

    fn finish(&self, report: &mut CollectReport, elapsed: Duration) {
        report.elapsed = elapsed;
        info!(
            peers = report.peers,
            stale = report.stale,
            references = report.references_collected,
            manifests = report.manifests_collected,
            kept = report.kept,
            failures = report.failures.len(),
            "collect finished"
        );
    }
}
