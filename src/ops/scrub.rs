//! Scrub: every peer re-hashes its shards a page at a time, run as a [`Worker`] whose unit
//! is a peer.
//!
//! A peer quarantines (removes) the copies that no longer hash to their id and names them
//! in its page; the following repair ([`super::converge()`]) writes them again. Progress
//! counts shards re-hashed, against the shard counts the peers reported when planning, with
//! the bytes re-hashed; the throttle paces the re-hashing, page by page.
//!
//! Not for: re-hashing itself (the peer's store does it), fixing what it finds (repair), or
//! how the work is run (parallelism, throttle, progress, timing: [`super::worker`]).

use std::collections::HashMap;
use std::time::Duration;

use futures::stream::StreamExt;
use tracing::{info, warn};

use super::worker::{self, Advance, OnProgress, Plan, Run, Worker};
use super::{OpsError, OpsOptions};
use crate::client::Client;
use crate::id::ShardId;
use crate::identity::PublicId;
use crate::placement::NodeInfo;

/// What a [`scrub`] found.
#[derive(Debug, Clone, Default)]
pub struct ScrubReport {
    pub peers: u64,
    pub shards_checked: u64,
    pub bytes: u64,
    /// Corrupt copies found (and quarantined by their peer): (peer, shard).
    pub corrupt: Vec<(PublicId, ShardId)>,
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

impl ScrubReport {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Asks every peer of the client's layouts to re-hash all its shards, `parallel` peers at a
/// time, throttled to `options.rate` bytes per second overall. Corrupt copies are
/// quarantined by their peer; run [`converge`](super::converge()) (repair) afterwards to
/// write them again.
pub async fn scrub(
    client: &Client,
    options: &OpsOptions,
    progress: OnProgress<'_>,
) -> Result<ScrubReport, OpsError> {
    worker::run(&Scrub { client }, options, progress).await
}

/// Shards a peer re-hashes per request.
const PAGE: u32 = 16;

/// The scrub worker: one unit per peer that reported its usage.
struct Scrub<'a> {
    client: &'a Client,
}

/// What one request to a peer found.
enum PeerOutcome {
    /// One page re-hashed: `checked` shards of `bytes`, the `corrupt` ones quarantined.
    Page {
        peer: PublicId,
        checked: u32,
        bytes: u64,
        corrupt: Vec<ShardId>,
    },
    /// The peer did not answer; its scrub stops there.
    Failed(String),
}

impl Worker for Scrub<'_> {
    type Unit = NodeInfo;
    type Outcome = PeerOutcome;
    type Report = ScrubReport;

    /// Every peer of the current and previous layouts, with the shards each holds.
    async fn plan(&self) -> Result<Plan<'_, NodeInfo, ScrubReport>, OpsError> {
        let client = self.client;
        let mut nodes: Vec<NodeInfo> = client.layout().nodes.clone();
        if let Some(previous) = client.previous_layout() {
            for n in &previous.nodes {
                if !nodes.iter().any(|x| x.key == n.key) {
                    nodes.push(n.clone());
                }
            }
        }
        let mut report = ScrubReport {
            peers: nodes.len() as u64,
            ..ScrubReport::default()
        };
        let mut totals = HashMap::new();
        for node in &nodes {
            match client.net().usage(node).await {
                Ok(u) => {
                    totals.insert(node.key, u.shards);
                }
                Err(e) => report
                    .failures
                    .push(format!("peer {}: {e}", node.key.short())),
            }
        }
        Ok(Plan {
            total: totals.values().sum(),
            units: futures::stream::iter(nodes)
                .filter(move |n| std::future::ready(totals.contains_key(&n.key)))
                .boxed(),
            report,
        })
    }

    /// Pages through the peer's shards, each page recorded, then paid for to the throttle.
    async fn step(&self, node: NodeInfo, run: &Run<'_, Self>) {
        let mut after = None;
        loop {
            let page = match self.client.net().scrub_page(&node, after, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    run.record(PeerOutcome::Failed(format!(
                        "peer {}: {e}",
                        node.key.short()
                    )));
                    return;
                }
            };
            let (checked, bytes, last) = (page.checked, page.bytes, page.last);
            run.record(PeerOutcome::Page {
                peer: node.key,
                checked,
                bytes,
                corrupt: page.corrupt,
            });
            run.throttle().take(bytes).await;
            match last {
                Some(last) if checked >= PAGE => after = Some(last),
                _ => return,
            }
        }
    }

    fn record(&self, r: &mut ScrubReport, outcome: PeerOutcome) -> Option<Advance> {
        match outcome {
            PeerOutcome::Page {
                peer,
                checked,
                bytes,
                corrupt,
            } => {
                r.shards_checked += u64::from(checked);
                r.bytes += bytes;
                for id in &corrupt {
                    warn!(peer = %peer.short(), shard = %id, "scrub: corrupt shard");
                    r.corrupt.push((peer, *id));
                }
                Some(Advance {
                    done: u64::from(checked),
                    bytes,
                    found: 0,
                })
            }
            PeerOutcome::Failed(failure) => {
                r.failures.push(failure);
                None
            }
        }
    }

    fn finish(&self, report: &mut ScrubReport, elapsed: Duration) {
        report.elapsed = elapsed;
        info!(
            peers = report.peers,
            checked = report.shards_checked,
            corrupt = report.corrupt.len(),
            "scrub finished"
        );
    }
}
