//! Repair and rebalance: one procedure, [`converge`], run as a [`Worker`] whose unit is a
//! stripe.
//!
//! For every registered document (listed from the chain) it reads the manifest and, for
//! every stripe, makes each shard sit on the peer the client's *current* layout places it on,
//! held there by that document's reference (`store`: references belong to documents; a
//! shard two documents share is converged once for each, so every document's reference
//! moves with it):
//!
//! 1. The placed peer already holds the document's reference (for a slot whose old copy is
//!    deleted in step 3, it also re-hashed its body, `VerifyShard`): nothing to write.
//! 2. Otherwise the bytes come from the shard's peer under the *previous* layout (a move),
//!    from the placed peer itself (the body is there for another holder), or are rebuilt
//!    from any k shards of the stripe that can be fetched (a repair): data shards by
//!    Reed-Solomon, parity by encoding again, every rebuilt shard checked against its
//!    BLAKE3 id. The write names the document, and is acknowledged only once the
//!    destination has checked the hash and committed it (`PutShard` → `Stored`).
//! 3. Then, with a previous layout, the document's reference on the old peer is dropped
//!    (the body goes with its last reference), and the step is recorded.
//!
//! Manifests follow the same rule (their `max(3, m + 1)` placed peers); they are converged
//! while planning, before the stripes. A rebalance is `converge` with the previous layout
//! set and a [`Journal`] keyed by the epoch pair, so a rebalance killed midway resumes where
//! it was and never writes a shard twice: a slot is `copied` once the destination
//! acknowledged it and `done` once the old copy is gone; a slot found already present at
//! its destination is not written again. A repair is `converge` without a previous layout:
//! it only writes what is missing.
//!
//! Not for: deciding the layout (the chain), reading documents (operators hold no keys:
//! repair works on ciphertext shards only), garbage-collecting orphan shards, or how the
//! work is run (parallelism, throttle, progress, timing: [`super::worker`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::StreamExt;
use tracing::{debug, info, warn};

use super::journal::{COPIED, DONE};
use super::worker::{self, Advance, OnProgress, Plan, Run, Throttle, Worker};
use super::{Journal, OpsError, OpsOptions};
use crate::client::{Client, MANIFEST_REPLICAS, stripe_key};
use crate::erasure::Erasure;
use crate::id::DocumentId;
use crate::manifest::Manifest;
use crate::placement::{Layout, NodeInfo};
use crate::proto::DeleteOutcome;
use crate::proto::MAX_LIST;

/// What a [`converge`] run found and did.
#[derive(Debug, Clone, Default)]
pub struct ConvergeReport {
    pub documents: u64,
    pub stripes: u64,
    /// Stripes that had fewer than k + m shards on their placed peers when looked at.
    pub stripes_below: u64,
    /// Shards copied from their peer under the previous layout.
    pub shards_moved: u64,
    /// Shards rebuilt from k others of their stripe.
    pub shards_rebuilt: u64,
    /// Old copies deleted after their move.
    pub shards_deleted: u64,
    /// Slots skipped because the journal says they are done.
    pub shards_resumed: u64,
    pub manifests_written: u64,
    pub manifests_deleted: u64,
    /// Bytes written to peers.
    pub bytes: u64,
    /// What could not be fixed (a peer down, fewer than k shards reachable).
    pub failures: Vec<String>,
    pub elapsed: Duration,
}

impl ConvergeReport {
    /// Bytes written per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Repair (no previous layout on `client`) or rebalance (with one): see the module doc.
/// `journal` makes a rebalance resumable. Progress counts stripes, with the bytes written.
pub async fn converge(
    client: &Client,
    journal: Option<&Journal>,
    options: &OpsOptions,
    progress: OnProgress<'_>,
) -> Result<ConvergeReport, OpsError> {
    let worker = Converge {
        client,
        journal,
        options,
    };
    worker::run(&worker, options, progress).await
}

/// The converge worker: one unit per stripe of every readable manifest.
struct Converge<'a> {
    client: &'a Client,
    journal: Option<&'a Journal>,
    options: &'a OpsOptions,
}

/// One stripe: stripe `index` of document `id`'s manifest.
struct Stripe {
    id: DocumentId,
    manifest: Arc<Manifest>,
    index: usize,
}

impl Worker for Converge<'_> {
    type Unit = Stripe;
    type Outcome = (DocumentId, usize, StripeOutcome);
    type Report = ConvergeReport;

    /// Lists the documents, reads their manifests, converges the manifests themselves, and
    /// returns every stripe.
    async fn plan(&self) -> Result<Plan<Stripe, ConvergeReport>, OpsError> {
        let client = self.client;
        let ids = documents(client).await?;
        let mut report = ConvergeReport {
            documents: ids.len() as u64,
            ..ConvergeReport::default()
        };
        let mut manifests = Vec::with_capacity(ids.len());
        for id in &ids {
            match client.manifest(id).await {
                Ok(manifest) => manifests.push((*id, Arc::new(manifest))),
                // A version its department rekeyed is collected, manifest last: nothing to keep.
                Err(_) if rekeyed_away(client, id).await => report.documents -= 1,
                Err(e) => report.failures.push(format!("manifest of {id}: {e}")),
            }
        }
        for (id, manifest) in &manifests {
            if let Err(e) = converge_manifest(client, id, manifest, self.options, &mut report).await
            {
                report.failures.push(format!("manifest of {id}: {e}"));
            }
        }
        let units: Vec<Stripe> = manifests
            .iter()
            .flat_map(|(id, m)| {
                (0..m.stripes.len()).map(move |index| Stripe {
                    id: *id,
                    manifest: m.clone(),
                    index,
                })
            })
            .collect();
        report.stripes = units.len() as u64;
        Ok(Plan {
            total: units.len() as u64,
            units,
            report,
        })
    }

    async fn step(&self, unit: Stripe, run: &Run<'_, Self>) {
        let Stripe {
            id,
            manifest,
            index,
        } = unit;
        let outcome = converge_stripe(
            self.client,
            self.journal,
            self.options,
            run.throttle(),
            (&id, &manifest),
            index,
        )
        .await
        .unwrap_or_else(|e| StripeOutcome {
            failures: vec![e.to_string()],
            ..StripeOutcome::default()
        });
        run.record((id, index, outcome));
    }

    fn record(
        &self,
        r: &mut ConvergeReport,
        (id, s, outcome): (DocumentId, usize, StripeOutcome),
    ) -> Option<Advance> {
        r.stripes_below += u64::from(outcome.below);
        r.shards_moved += outcome.moved;
        r.shards_rebuilt += outcome.rebuilt;
        r.shards_deleted += outcome.deleted;
        r.shards_resumed += outcome.resumed;
        r.bytes += outcome.bytes;
        r.failures.extend(
            outcome
                .failures
                .into_iter()
                .map(|f| format!("document {id} stripe {s}: {f}")),
        );
        Some(Advance {
            done: 1,
            bytes: outcome.bytes,
        })
    }

    fn finish(&self, report: &mut ConvergeReport, elapsed: Duration) {
        report.elapsed = elapsed;
        info!(
            documents = report.documents,
            stripes = report.stripes,
            below = report.stripes_below,
            moved = report.shards_moved,
            rebuilt = report.shards_rebuilt,
            deleted = report.shards_deleted,
            failures = report.failures.len(),
            "converge finished"
        );
    }
}

/// Every registered document id, from the chain.
pub async fn documents(client: &Client) -> Result<Vec<DocumentId>, OpsError> {
    let mut all = Vec::new();
    loop {
        let page = client
            .chain()?
            .documents(all.last().copied(), MAX_LIST)
            .await?;
        let more = page.len() == MAX_LIST as usize;
        all.extend(page);
        if !more {
            return Ok(all);
        }
    }
}

/// Whether document `id` was replaced by a rekey (`revision::rekey`), whose collect
/// removes its shards and then its manifest.
pub(super) async fn rekeyed_away(client: &Client, id: &DocumentId) -> bool {
    let Ok(chain) = client.chain() else {
        return false;
    };
    let Ok(Some(record)) = chain.record(id).await else {
        return false;
    };
    let Some(new) = record.superseded_by else {
        return false;
    };
    matches!(
        chain.record(&new).await,
        Ok(Some(newer)) if newer.supersedes.is_some_and(|p| p.document == *id
            && p.kind == crate::chain::tx::VersionKind::Rekey)
    )
}

/// The peers a manifest is placed on under `layout` (as `Client::manifest_nodes`).
fn manifest_places(layout: &Layout, id: &DocumentId, m: u16) -> Result<Vec<NodeInfo>, OpsError> {
    let live = layout.nodes.iter().filter(|n| n.weight > 0).count();
    let replicas = (usize::from(m) + 1).max(MANIFEST_REPLICAS).min(live);
    Ok(layout
        .place(id.as_bytes(), replicas)?
        .into_iter()
        .cloned()
        .collect())
}

async fn converge_manifest(
    client: &Client,
    id: &DocumentId,
    manifest: &Manifest,
    options: &OpsOptions,
    report: &mut ConvergeReport,
) -> Result<(), OpsError> {
    let m = manifest.params.m;
    let targets = manifest_places(client.layout(), id, m)?;
    let bytes = Bytes::from(manifest.encode());
    for node in &targets {
        if client.net().manifest_get(node, id).await?.is_none() {
            if !options.dry_run {
                client.net().manifest_put(node, id, &bytes).await?;
            }
            report.manifests_written += 1;
        }
    }
    // Copies on peers that no longer place it: under the previous layout, and on peers
    // draining now (weight 0).
    let mut stale: Vec<NodeInfo> = match client.previous_layout() {
        Some(previous) => manifest_places(previous, id, m)?,
        None => Vec::new(),
    };
    stale.extend(
        client
            .layout()
            .nodes
            .iter()
            .filter(|n| n.weight == 0)
            .cloned(),
    );
    stale.retain(|n| !targets.iter().any(|t| t.key == n.key));
    stale.dedup_by(|a, b| a.key == b.key);
    for node in &stale {
        if options.dry_run {
            continue;
        }
        match client.net().manifest_delete(node, id).await {
            Ok(DeleteOutcome::Removed) => report.manifests_deleted += 1,
            Ok(_) => {}
            // A peer that is gone for good holds nothing to delete.
            Err(e) => debug!(document = %id, error = %e, "stale manifest copy not deleted"),
        }
    }
    Ok(())
}

#[derive(Default)]
struct StripeOutcome {
    below: bool,
    moved: u64,
    rebuilt: u64,
    deleted: u64,
    resumed: u64,
    bytes: u64,
    failures: Vec<String>,
}

/// The journal key of stripe `stripe` (its placement key) of `document`: two documents
/// with the same stripe (shared shards) each move their own references.
pub fn document_stripe_key(document: &DocumentId, stripe: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(document.as_bytes());
    h.update(stripe);
    *h.finalize().as_bytes()
}

async fn converge_stripe(
    client: &Client,
    journal: Option<&Journal>,
    options: &OpsOptions,
    throttle: &Throttle,
    (document, manifest): (&DocumentId, &Manifest),
    index: usize,
) -> Result<StripeOutcome, OpsError> {
    let ids = &manifest.stripes[index];
    let width = ids.len();
    let key = stripe_key(ids);
    let step_key = document_stripe_key(document, &key);
    let new: Vec<NodeInfo> = client
        .layout()
        .place(&key, width)?
        .into_iter()
        .cloned()
        .collect();
    let old: Option<Vec<NodeInfo>> = match client.previous_layout() {
        Some(previous) => Some(previous.place(&key, width)?.into_iter().cloned().collect()),
        None => None,
    };
    let mut out = StripeOutcome::default();

    // Which slots are already in place: journal first, then ask the placed peer.
    let mut state = vec![0u8; width];
    if let Some(j) = journal {
        for (slot, s) in state.iter_mut().enumerate() {
            *s = j.get(&step_key, slot)?;
        }
    }
    out.resumed = state.iter().filter(|&&s| s == DONE).count() as u64;
    let checks = (0..width).map(|slot| {
        let (node, id, done) = (&new[slot], &ids[slot], state[slot] == DONE);
        // A slot whose old copy is deleted after: the placed peer re-hashes its copy, so a
        // corrupt or missing body is written again before the old copy goes.
        let moving = old.as_ref().is_some_and(|old| old[slot].key != node.key);
        async move {
            if done {
                return true;
            }
            let net = client.net();
            let held = if moving {
                net.shard_verified(node, id, document).await
            } else {
                net.shard_held(node, id, document).await
            };
            held.unwrap_or_else(|e| {
                debug!(slot, error = %e, "placed peer unreachable");
                false
            })
        }
    });
    let mut present: Vec<bool> = futures::future::join_all(checks).await;
    out.below = present.iter().any(|p| !p);
    if options.dry_run {
        return Ok(out);
    }

    // Write what is missing: moved from the old peer, else rebuilt from the stripe.
    let mut rebuilt: Option<Vec<Option<Bytes>>> = None;
    for slot in 0..width {
        if present[slot] {
            continue;
        }
        let id = &ids[slot];
        let mut bytes = None;
        if let Some(old) = &old
            && old[slot].key != new[slot].key
        {
            match client.net().shard_get(&old[slot], id).await {
                Ok(Some(b)) => bytes = Some((b, false)),
                Ok(None) => {}
                Err(e) => debug!(slot, error = %e, "old copy not readable"),
            }
        }
        if bytes.is_none() {
            // The placed peer may hold the body for another holder (a shared shard, or a
            // put whose bind failed): only the document's reference is missing.
            if let Ok(Some(b)) = client.net().shard_get(&new[slot], id).await {
                bytes = Some((b, false));
            }
        }
        if bytes.is_none() {
            if rebuilt.is_none() {
                rebuilt = Some(rebuild(client, manifest, index, &new, old.as_deref()).await?);
            }
            bytes = rebuilt
                .as_ref()
                .and_then(|r| r[slot].clone())
                .map(|b| (b, true));
        }
        let Some((bytes, was_rebuilt)) = bytes else {
            out.failures
                .push(format!("shard {slot} ({id}) could not be rebuilt"));
            continue;
        };
        throttle.take(bytes.len() as u64).await;
        match client
            .net()
            .shard_put(&new[slot], id, &bytes, document)
            .await
        {
            Ok(_) => {
                present[slot] = true;
                out.bytes += bytes.len() as u64;
                if was_rebuilt {
                    out.rebuilt += 1;
                } else {
                    out.moved += 1;
                }
                if let Some(j) = journal {
                    j.set(&step_key, slot, COPIED)?;
                }
            }
            Err(e) => out
                .failures
                .push(format!("writing shard {slot} to its placed peer: {e}")),
        }
    }

    // With every shard in place, delete the copies the previous layout put elsewhere.
    if let Some(old) = &old {
        for slot in 0..width {
            if !present[slot] || state[slot] == DONE {
                continue;
            }
            let (id, from) = (&ids[slot], &old[slot]);
            if from.key == new[slot].key {
                continue;
            }
            // Never delete a copy that is also this stripe's copy under the new layout.
            let still_placed = new
                .iter()
                .zip(ids)
                .any(|(n, other)| n.key == from.key && other == id);
            if !still_placed {
                match client.net().shard_held(from, id, document).await {
                    Ok(true) => match client.net().shard_delete(from, id, document).await {
                        Ok(_) => out.deleted += 1,
                        Err(e) => {
                            out.failures
                                .push(format!("deleting old copy of {slot}: {e}"));
                            continue;
                        }
                    },
                    Ok(false) => {}
                    // A peer gone for good holds nothing to delete; a peer that is only
                    // down keeps an orphan copy (garbage collection's business).
                    Err(e) => debug!(slot, error = %e, "old peer unreachable; copy left"),
                }
            }
            if let Some(j) = journal {
                j.set(&step_key, slot, DONE)?;
            }
        }
    }
    Ok(out)
}

/// Every shard of stripe `index`, rebuilt from any k that can be fetched (from the placed
/// peers, then from the previous layout's); each checked against its id.
async fn rebuild(
    client: &Client,
    manifest: &Manifest,
    index: usize,
    new: &[NodeInfo],
    old: Option<&[NodeInfo]>,
) -> Result<Vec<Option<Bytes>>, OpsError> {
    let ids = &manifest.stripes[index];
    let k = usize::from(manifest.params.k);
    let m = usize::from(manifest.params.m);
    // Data slots first (no decoding needed if all k arrive), then parity as needed.
    let mut fetched: Vec<Option<Bytes>> = vec![None; ids.len()];
    let fetch = |slot: usize| async move {
        let mut sources = vec![&new[slot]];
        if let Some(old) = old
            && old[slot].key != new[slot].key
        {
            sources.push(&old[slot]);
        }
        for node in sources {
            if let Ok(Some(b)) = client.net().shard_get(node, &ids[slot]).await {
                return (slot, Some(b));
            }
        }
        (slot, None)
    };
    let mut pending = futures::stream::FuturesUnordered::new();
    let mut next = 0;
    while next < k {
        pending.push(fetch(next));
        next += 1;
    }
    let mut found = 0;
    while let Some((slot, shard)) = pending.next().await {
        if shard.is_some() {
            found += 1;
            fetched[slot] = shard;
        } else if next < ids.len() {
            pending.push(fetch(next));
            next += 1;
        }
        if found == k {
            break;
        }
    }
    drop(pending);
    if found < k {
        warn!(
            stripe = index,
            found, k, "stripe has fewer than k reachable shards"
        );
        return Ok(vec![None; ids.len()]);
    }
    let ids = ids.clone();
    let shards = tokio::task::spawn_blocking(move || -> Result<Vec<Option<Bytes>>, OpsError> {
        let erasure = Erasure::new(k, m)?;
        let mut all: Vec<Option<Vec<u8>>> = fetched
            .iter()
            .map(|s| s.as_ref().map(|b| b.to_vec()))
            .collect();
        erasure.reconstruct_data(&mut all)?;
        let data: Vec<&[u8]> = all[..k]
            .iter()
            .map(|s| {
                s.as_deref()
                    .expect("reconstruct_data fills every data shard")
            })
            .collect();
        let parity = erasure.encode(&data)?;
        let mut out = Vec::with_capacity(k + m);
        for (slot, id) in ids.iter().enumerate() {
            let bytes = if slot < k {
                all[slot].take().expect("data shard present")
            } else {
                parity[slot - k].clone()
            };
            // A shard that does not hash to its id is never written.
            out.push(id.verifies(&bytes).then(|| Bytes::from(bytes)));
        }
        Ok(out)
    })
    .await
    .map_err(|e| OpsError::Journal(format!("rebuild task: {e}")))??;
    Ok(shards)
}
