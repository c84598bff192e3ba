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
//!    from the placed peer itself (the body is there for another holder), from a stand-in
//!    (`Layout::standins`: a put wrote it there while its peer was down), or are rebuilt
//!    from any k shards of the stripe that can be fetched (a repair): data shards by
//!    Reed-Solomon, parity by encoding again, every rebuilt shard checked against its
//!    BLAKE3 id. The write names the document, and is acknowledged only once the
//!    destination has checked the hash and committed it (`PutShard` → `Stored`).
//! 3. Then the document's reference on every stand-in that holds one is dropped, and, with
//!    a previous layout, on the old peer (the body goes with its last reference), and the
//!    step is recorded.
//!
//! Documents come from `documents`, a page at a time with their manifests (whose copies it
//! converges first, by the same rule), so memory stays bounded by a page whatever the number
//! of documents; each page's stripes are units here. A rebalance is `converge` with the
//! previous layout set and a [`Journal`] keyed by the epoch pair, so a rebalance killed
//! midway resumes where it was and never writes a shard twice: a slot is `copied` once the
//! destination acknowledged it and `done` once the old copy is gone; a slot found already
//! present at its destination is not written again. A repair is `converge` without a
//! previous layout: it only writes what is missing. Progress counts stripes against those
//! found so far (the total grows page by page).
//!
//! Not for: deciding the layout (the chain), listing documents and their manifests
//! (`documents`), reading documents (operators hold no keys: repair works on ciphertext
//! shards only), garbage-collecting orphan shards, or how the work is run (parallelism,
//! throttle, progress, timing: [`super::worker`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use tracing::{debug, info, warn};

use super::documents::{self, Found};
use super::journal::{COPIED, DONE};
use super::worker::{self, Advance, OnProgress, Plan, Run, Throttle, Worker};
use super::{Journal, OpsError, OpsOptions};
use crate::client::{Client, stripe_key};
use crate::erasure::Erasure;
use crate::id::{DocumentId, ShardId};
use crate::manifest::Manifest;
use crate::placement::NodeInfo;

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

/// The converge worker: one unit per document found (recorded before its page's stripes)
/// and one per stripe of every readable manifest.
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

enum Unit {
    /// What listing found for one document and did to its manifest's copies.
    Document(Found),
    Stripe(Stripe),
}

enum Outcome {
    /// A document found, with its stripe count.
    Document(Found, u64),
    Stripe(DocumentId, usize, StripeOutcome),
}

/// A page of documents as units: each document first (so progress knows the page's
/// stripes), then every stripe of the page.
fn units(page: Vec<Found>) -> Vec<Unit> {
    let stripes: Vec<Unit> = page
        .iter()
        .filter_map(|f| f.manifest.clone().map(|m| (f.id, m)))
        .flat_map(|(id, manifest)| {
            (0..manifest.stripes.len()).map(move |index| {
                Unit::Stripe(Stripe {
                    id,
                    manifest: manifest.clone(),
                    index,
                })
            })
        })
        .collect();
    page.into_iter()
        .map(Unit::Document)
        .chain(stripes)
        .collect()
}

impl Worker for Converge<'_> {
    type Unit = Unit;
    type Outcome = Outcome;
    type Report = ConvergeReport;

    /// The documents, page by page with their manifests' copies converged, as units.
    async fn plan(&self) -> Result<Plan<'_, Unit, ConvergeReport>, OpsError> {
        let pages = documents::pages(self.client, self.options).await?;
        Ok(Plan {
            units: pages.flat_map(|page| stream::iter(units(page))).boxed(),
            total: 0,
            report: ConvergeReport::default(),
        })
    }

    async fn step(&self, unit: Unit, run: &Run<'_, Self>) {
        let Stripe {
            id,
            manifest,
            index,
        } = match unit {
            Unit::Document(mut found) => {
                let stripes = found.manifest.take().map_or(0, |m| m.stripes.len() as u64);
                return run.record(Outcome::Document(found, stripes));
            }
            Unit::Stripe(stripe) => stripe,
        };
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
        run.record(Outcome::Stripe(id, index, outcome));
    }

    fn record(&self, r: &mut ConvergeReport, outcome: Outcome) -> Option<Advance> {
        let (id, s, outcome) = match outcome {
            Outcome::Document(found, stripes) => {
                r.documents += u64::from(found.counted);
                r.stripes += stripes;
                r.manifests_written += found.manifests_written;
                r.manifests_deleted += found.manifests_deleted;
                r.failures.extend(found.failures);
                return (stripes > 0).then_some(Advance {
                    found: stripes,
                    ..Advance::default()
                });
            }
            Outcome::Stripe(id, s, outcome) => (id, s, outcome),
        };
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
            found: 0,
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
    // Where a shard written while its placed peer was down may sit (`Layout::standins`).
    let standins: Vec<NodeInfo> = client
        .layout()
        .standins(&key, width)?
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
            bytes = find_on_standins(client, &standins, &new[slot], id)
                .await
                .map(|b| (b, false));
        }
        if bytes.is_none() {
            if rebuilt.is_none() {
                let sources = (&new[..], old.as_deref(), &standins[..]);
                rebuilt = Some(rebuild(client, manifest, index, sources).await?);
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
                let home = (&new[..], &ids[..], slot);
                match clear_standins(client, &standins, home, document).await {
                    Ok(deleted) => out.deleted += deleted,
                    Err(e) => out.failures.push(e),
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

/// Shard `id` from the first of the stripe's stand-ins (other than its placed peer `home`)
/// that holds it, verified against its id.
async fn find_on_standins(
    client: &Client,
    standins: &[NodeInfo],
    home: &NodeInfo,
    id: &ShardId,
) -> Option<Bytes> {
    for node in standins.iter().filter(|n| n.key != home.key) {
        match client.net().shard_get(node, id).await {
            Ok(Some(bytes)) => return Some(bytes),
            Ok(None) => {}
            Err(e) => debug!(peer = %node.key.short(), error = %e, "stand-in not readable"),
        }
    }
    None
}

/// Once the shard of `slot` is on its placed peer (`new[slot]`, whose write was
/// acknowledged: hash checked there and committed): drops the document's reference to it on
/// every stand-in that holds one (never where the stripe places that same shard), after
/// checking that the placed peer holds it for the document. The number of copies deleted;
/// an error if the home copy is not there or a stand-in could not drop its copy. A
/// stand-in that does not answer keeps what it may hold (logged).
async fn clear_standins(
    client: &Client,
    standins: &[NodeInfo],
    (new, ids, slot): (&[NodeInfo], &[ShardId], usize),
    document: &DocumentId,
) -> Result<u64, String> {
    let id = &ids[slot];
    let placed_here = |node: &NodeInfo| {
        new.iter()
            .zip(ids)
            .any(|(n, other)| n.key == node.key && other == id)
    };
    let mut home_checked = false;
    let mut deleted = 0;
    for node in standins.iter().filter(|n| !placed_here(n)) {
        match client.net().shard_held(node, id, document).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                warn!(slot, peer = %node.key.short(), error = %e, "stand-in unreachable; a copy it may hold stays");
                continue;
            }
        }
        if !home_checked {
            // The stand-in copy goes only once the home copy re-hashed right there.
            match client.net().shard_verified(&new[slot], id, document).await {
                Ok(true) => home_checked = true,
                Ok(false) => {
                    return Err(format!(
                        "shard {slot} ({id}) not held at home after its write"
                    ));
                }
                Err(e) => return Err(format!("shard {slot} ({id}) not checked at home: {e}")),
            }
        }
        match client.net().shard_delete(node, id, document).await {
            Ok(_) => deleted += 1,
            Err(e) => return Err(format!("deleting the stand-in copy of {slot}: {e}")),
        }
    }
    Ok(deleted)
}

/// Every shard of stripe `index`, rebuilt from any k that can be fetched (from the placed
/// peers, then from the previous layout's, then from the stand-ins); each checked against
/// its id.
async fn rebuild(
    client: &Client,
    manifest: &Manifest,
    index: usize,
    (new, old, standins): (&[NodeInfo], Option<&[NodeInfo]>, &[NodeInfo]),
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
        (
            slot,
            find_on_standins(client, standins, &new[slot], &ids[slot]).await,
        )
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
