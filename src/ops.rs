//! Operations workers: repair, rebalance and scrub, run by an operator against a live cluster.
//!
//! One procedure, [`converge`], serves both repair and rebalance. For every registered
//! document (listed from the chain) it reads the manifest and, for every stripe, makes each
//! shard sit on the peer the client's *current* layout places it on:
//!
//! 1. The placed peer already has the shard: nothing to write.
//! 2. Otherwise the bytes come from the shard's peer under the *previous* layout (a move), or
//!    are rebuilt from any k shards of the stripe that can be fetched (a repair): data
//!    shards by Reed-Solomon, parity by encoding again, every rebuilt shard checked against
//!    its BLAKE3 id. The write is acknowledged only once the destination has checked the
//!    hash and committed it (`PutShard` → `Stored`).
//! 3. Then, with a previous layout, the old copy is deleted, and the step is recorded.
//!
//! Manifests follow the same rule (their `max(3, m + 1)` placed peers). A rebalance is
//! `converge` with the previous layout set and a [`Journal`] (redb in the operator's data
//! directory) keyed by the epoch pair, so a rebalance killed midway resumes where it was and
//! never writes a shard twice: a slot is `copied` once the destination acknowledged it and
//! `done` once the old copy is gone; a slot found already present at its destination is not
//! written again. A repair is `converge` without a previous layout: it only writes what is
//! missing. [`scrub`] asks every peer to re-hash its shards a page at a time; a peer
//! quarantines (removes) corrupt copies, and the following repair writes them again.
//!
//! Every worker is throttled in bytes per second ([`OpsOptions::rate`]) and reports progress
//! through a callback.
//!
//! Not for: deciding the layout (the chain), reading documents (operators hold no keys:
//! repair works on ciphertext shards only), garbage-collecting orphan shards.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tracing::{debug, info, warn};

use crate::client::{Client, ClientError, MANIFEST_REPLICAS, stripe_key};
use crate::erasure::{Erasure, ErasureError};
use crate::id::{DocumentId, ShardId};
use crate::identity::PublicId;
use crate::manifest::{Manifest, ManifestError};
use crate::placement::{Layout, NodeInfo, PlacementError};
use crate::proto::DeleteOutcome;
use crate::proto::MAX_LIST;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct OpsOptions {
    /// Bytes per second written (converge) or re-hashed (scrub); `None` for no limit.
    pub rate: Option<f64>,
    /// Stripes (converge) or peers (scrub) worked on at once.
    pub parallel: usize,
    /// Only count what is missing or misplaced; change nothing.
    pub dry_run: bool,
}

impl Default for OpsOptions {
    fn default() -> Self {
        Self {
            rate: None,
            parallel: 8,
            dry_run: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("placement: {0}")]
    Placement(#[from] PlacementError),
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("erasure coding: {0}")]
    Erasure(#[from] ErasureError),
    #[error("journal: {0}")]
    Journal(String),
}

/// Where a long job is: `done` of `total` units (stripes, or shards for a scrub), `bytes`
/// moved, rebuilt or re-hashed so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub bytes: u64,
}

/// Progress callback.
pub type OnProgress<'a> = &'a (dyn Fn(Progress) + Send + Sync);

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

/// A byte-rate limit shared by concurrent tasks.
pub struct Throttle {
    rate: Option<f64>,
    state: Mutex<(Instant, u64)>,
}

impl Throttle {
    pub fn new(rate: Option<f64>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0.0),
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Accounts for `bytes` and waits until the rate allows them.
    pub async fn take(&self, bytes: u64) {
        let Some(rate) = self.rate else { return };
        let due = {
            let mut state = self.state.lock().expect("throttle lock");
            state.1 += bytes;
            state.0 + Duration::from_secs_f64(state.1 as f64 / rate)
        };
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Progress of one layout change, durable in redb: which (stripe, slot) moves are done.
pub struct Journal {
    db: redb::Database,
    table: String,
}

const COPIED: u8 = 1;
const DONE: u8 = 2;

impl Journal {
    /// Opens (or creates) `dir/rebalance.redb`, for the change from epoch `from` to `to`.
    pub fn open(dir: &Path, from: u64, to: u64) -> Result<Self, OpsError> {
        Self::open_table(dir, "rebalance.redb", format!("moves-{from}-{to}-v1"))
    }

    /// Opens (or creates) table `table` of `dir/file`: a journal of other stripe-slot walks
    /// (the collect of a rekeyed document's old shards, see `version`).
    pub fn open_table(dir: &Path, file: &str, table: String) -> Result<Self, OpsError> {
        let err = |e: &dyn std::fmt::Display| OpsError::Journal(e.to_string());
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let db = redb::Database::create(dir.join(file)).map_err(|e| err(&e))?;
        let journal = Self { db, table };
        let txn = journal.db.begin_write().map_err(|e| err(&e))?;
        txn.open_table(journal.def()).map_err(|e| err(&e))?;
        txn.commit().map_err(|e| err(&e))?;
        Ok(journal)
    }

    fn def(&self) -> TableDefinition<'_, &'static [u8], u8> {
        TableDefinition::new(&self.table)
    }

    fn key(stripe: &[u8; 32], slot: usize) -> [u8; 34] {
        let mut key = [0u8; 34];
        key[..32].copy_from_slice(stripe);
        key[32..].copy_from_slice(&(slot as u16).to_be_bytes());
        key
    }

    /// Whether (stripe, slot) is recorded as done.
    pub fn is_done(&self, stripe: &[u8; 32], slot: usize) -> Result<bool, OpsError> {
        Ok(self.get(stripe, slot)? == DONE)
    }

    /// Records (stripe, slot) as done, durably.
    pub fn set_done(&self, stripe: &[u8; 32], slot: usize) -> Result<(), OpsError> {
        self.set(stripe, slot, DONE)
    }

    fn get(&self, stripe: &[u8; 32], slot: usize) -> Result<u8, OpsError> {
        let err = |e: &dyn std::fmt::Display| OpsError::Journal(e.to_string());
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(self.def()).map_err(|e| err(&e))?;
        let key = Self::key(stripe, slot);
        Ok(table
            .get(key.as_slice())
            .map_err(|e| err(&e))?
            .map_or(0, |v| v.value()))
    }

    fn set(&self, stripe: &[u8; 32], slot: usize, state: u8) -> Result<(), OpsError> {
        let err = |e: &dyn std::fmt::Display| OpsError::Journal(e.to_string());
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = txn.open_table(self.def()).map_err(|e| err(&e))?;
            let key = Self::key(stripe, slot);
            table.insert(key.as_slice(), state).map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))
    }

    /// Slots recorded as done.
    pub fn done(&self) -> Result<u64, OpsError> {
        let err = |e: &dyn std::fmt::Display| OpsError::Journal(e.to_string());
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = txn.open_table(self.def()).map_err(|e| err(&e))?;
        let mut n = 0;
        for row in table.iter().map_err(|e| err(&e))? {
            let (_, v) = row.map_err(|e| err(&e))?;
            n += u64::from(v.value() == DONE);
        }
        Ok(n)
    }
}

/// Every registered document id, from the chain.
pub async fn documents(client: &Client) -> Result<Vec<DocumentId>, OpsError> {
    let mut all = Vec::new();
    loop {
        let page = client
            .chain_documents(all.last().copied(), MAX_LIST)
            .await?;
        let more = page.len() == MAX_LIST as usize;
        all.extend(page);
        if !more {
            return Ok(all);
        }
    }
}

/// Whether document `id` was replaced by a rekey (`version::rekey`), whose collect
/// removes its shards and then its manifest.
async fn rekeyed_away(client: &Client, id: &DocumentId) -> bool {
    let Ok(Some(record)) = client.chain_record(id).await else {
        return false;
    };
    let Some(new) = record.superseded_by else {
        return false;
    };
    matches!(
        client.chain_record(&new).await,
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

/// Repair (no previous layout on `client`) or rebalance (with one): see the module doc.
/// `journal` makes a rebalance resumable.
pub async fn converge(
    client: &Client,
    journal: Option<&Journal>,
    options: &OpsOptions,
    progress: OnProgress<'_>,
) -> Result<ConvergeReport, OpsError> {
    let started = Instant::now();
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
    let throttle = Throttle::new(options.rate);
    for (id, manifest) in &manifests {
        if let Err(e) = converge_manifest(client, id, manifest, options, &mut report).await {
            report.failures.push(format!("manifest of {id}: {e}"));
        }
    }
    let work: Vec<(DocumentId, Arc<Manifest>, usize)> = manifests
        .iter()
        .flat_map(|(id, m)| (0..m.stripes.len()).map(move |s| (*id, m.clone(), s)))
        .collect();
    report.stripes = work.len() as u64;
    let shared = Mutex::new(report);
    let total = work.len() as u64;
    let done = std::sync::atomic::AtomicU64::new(0);
    progress(Progress {
        done: 0,
        total,
        bytes: 0,
    });
    stream::iter(work)
        .map(|(id, manifest, s)| {
            let (throttle, shared, done) = (&throttle, &shared, &done);
            async move {
                let outcome = converge_stripe(client, journal, options, throttle, &manifest, s)
                    .await
                    .unwrap_or_else(|e| StripeOutcome {
                        failures: vec![e.to_string()],
                        ..StripeOutcome::default()
                    });
                let mut r = shared.lock().expect("report lock");
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
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress(Progress {
                    done: n,
                    total,
                    bytes: r.bytes,
                });
            }
        })
        .buffer_unordered(options.parallel.max(1))
        .collect::<()>()
        .await;
    let mut report = shared.into_inner().expect("report lock");
    report.elapsed = started.elapsed();
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
    Ok(report)
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
        if client.manifest_get(node, id).await?.is_none() {
            if !options.dry_run {
                client.manifest_put(node, id, &bytes).await?;
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
        match client.manifest_delete(node, id).await {
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

async fn converge_stripe(
    client: &Client,
    journal: Option<&Journal>,
    options: &OpsOptions,
    throttle: &Throttle,
    manifest: &Manifest,
    index: usize,
) -> Result<StripeOutcome, OpsError> {
    let ids = &manifest.stripes[index];
    let width = ids.len();
    let key = stripe_key(ids);
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
            *s = j.get(&key, slot)?;
        }
    }
    out.resumed = state.iter().filter(|&&s| s == DONE).count() as u64;
    let checks = (0..width).map(|slot| {
        let (node, id, done) = (&new[slot], &ids[slot], state[slot] == DONE);
        async move {
            if done {
                return true;
            }
            client.shard_has(node, id).await.unwrap_or_else(|e| {
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
            match client.shard_get(&old[slot], id).await {
                Ok(Some(b)) => bytes = Some((b, false)),
                Ok(None) => {}
                Err(e) => debug!(slot, error = %e, "old copy not readable"),
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
        match client.shard_put(&new[slot], id, &bytes).await {
            Ok(_) => {
                present[slot] = true;
                out.bytes += bytes.len() as u64;
                if was_rebuilt {
                    out.rebuilt += 1;
                } else {
                    out.moved += 1;
                }
                if let Some(j) = journal {
                    j.set(&key, slot, COPIED)?;
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
                match client.shard_has(from, id).await {
                    Ok(true) => match client.shard_delete(from, id).await {
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
                j.set(&key, slot, DONE)?;
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
            if let Ok(Some(b)) = client.shard_get(node, &ids[slot]).await {
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

/// Asks every peer of the client's layouts to re-hash all its shards, `parallel` peers at a
/// time, throttled to `options.rate` bytes per second overall. Corrupt copies are
/// quarantined by their peer; run [`converge`] (repair) afterwards to write them again.
pub async fn scrub(
    client: &Client,
    options: &OpsOptions,
    progress: OnProgress<'_>,
) -> Result<ScrubReport, OpsError> {
    const PAGE: u32 = 16;
    let started = Instant::now();
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
        match client.usage(node).await {
            Ok(u) => {
                totals.insert(node.key, u.shards);
            }
            Err(e) => report
                .failures
                .push(format!("peer {}: {e}", node.key.short())),
        }
    }
    let total: u64 = totals.values().sum();
    let throttle = Throttle::new(options.rate);
    let shared = Mutex::new(report);
    progress(Progress {
        done: 0,
        total,
        bytes: 0,
    });
    stream::iter(nodes.iter().filter(|n| totals.contains_key(&n.key)))
        .map(|node| {
            let (throttle, shared) = (&throttle, &shared);
            async move {
                let mut after = None;
                loop {
                    let page = match client.scrub_page(node, after, PAGE).await {
                        Ok(p) => p,
                        Err(e) => {
                            let mut r = shared.lock().expect("report lock");
                            r.failures.push(format!("peer {}: {e}", node.key.short()));
                            return;
                        }
                    };
                    {
                        let mut r = shared.lock().expect("report lock");
                        r.shards_checked += u64::from(page.checked);
                        r.bytes += page.bytes;
                        for id in &page.corrupt {
                            warn!(peer = %node.key.short(), shard = %id, "scrub: corrupt shard");
                            r.corrupt.push((node.key, *id));
                        }
                        progress(Progress {
                            done: r.shards_checked,
                            total: total.max(r.shards_checked),
                            bytes: r.bytes,
                        });
                    }
                    throttle.take(page.bytes).await;
                    match page.last {
                        Some(last) if page.checked >= PAGE => after = Some(last),
                        _ => return,
                    }
                }
            }
        })
        .buffer_unordered(options.parallel.max(1))
        .collect::<()>()
        .await;
    let mut report = shared.into_inner().expect("report lock");
    report.elapsed = started.elapsed();
    info!(
        peers = report.peers,
        checked = report.shards_checked,
        corrupt = report.corrupt.len(),
        "scrub finished"
    );
    Ok(report)
}

/// The layout a finished rebalance left in place, kept in `dir/rebalance.redb`.
const SETTLED: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("settled-layout-v1");

impl Journal {
    /// The last layout every shard was moved to (by a finished rebalance), if recorded.
    pub fn settled(&self) -> Result<Option<Layout>, OpsError> {
        let err = |e: &dyn std::fmt::Display| OpsError::Journal(e.to_string());
        let txn = self.db.begin_read().map_err(|e| err(&e))?;
        let table = match txn.open_table(SETTLED) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(err(&e)),
        };
        match table.get("layout").map_err(|e| err(&e))? {
            Some(v) => postcard::from_bytes(v.value())
                .map(Some)
                .map_err(|e| err(&e)),
            None => Ok(None),
        }
    }

    /// Records `layout` as settled.
    pub fn set_settled(&self, layout: &Layout) -> Result<(), OpsError> {
        let err = |e: &dyn std::fmt::Display| OpsError::Journal(e.to_string());
        let bytes = postcard::to_allocvec(layout).map_err(|e| err(&e))?;
        let txn = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut table = txn.open_table(SETTLED).map_err(|e| err(&e))?;
            table
                .insert("layout", bytes.as_slice())
                .map_err(|e| err(&e))?;
        }
        txn.commit().map_err(|e| err(&e))
    }
}

/// One peer as `dangan cluster status` shows it.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub node: NodeInfo,
    /// What it stores, or why it did not answer.
    pub usage: Result<crate::proto::Usage, String>,
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
        let layout = client.chain_layout().await;
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
            let chain = client.chain_link()?.clone();
            client.submit(&chain, body).await?;
            client.chain_layout().await
        }
        .await;
        client.close().await;
        Ok(result?)
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

    /// Peers with their usage, and how many stripes are below full redundancy.
    pub async fn status(&self, progress: OnProgress<'_>) -> Result<ClusterStatus, OpsError> {
        let (current, previous) = self.layouts().await?;
        let client = self.client(current.clone(), previous.clone())?;
        let mut peers = Vec::new();
        for node in &current.nodes {
            let usage = client.usage(node).await.map_err(|e| e.to_string());
            peers.push(PeerStatus {
                node: node.clone(),
                usage,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn throttle_holds_the_rate() {
        let throttle = Throttle::new(Some(10e6));
        let start = Instant::now();
        for _ in 0..3 {
            throttle.take(1_000_000).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((0.29..1.0).contains(&elapsed), "{elapsed}");
        let free = Throttle::new(None);
        let start = Instant::now();
        free.take(u64::MAX / 2).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }

    #[test]
    fn journal_survives_reopening_and_keeps_changes_apart() {
        let dir = tempfile::tempdir().unwrap();
        let stripe = [7u8; 32];
        {
            let j = Journal::open(dir.path(), 1, 2).unwrap();
            assert_eq!(j.get(&stripe, 3).unwrap(), 0);
            j.set(&stripe, 3, COPIED).unwrap();
            j.set(&stripe, 4, DONE).unwrap();
            assert_eq!(j.settled().unwrap(), None);
            let layout = Layout::new(2, Vec::new()).unwrap();
            j.set_settled(&layout).unwrap();
        }
        let j = Journal::open(dir.path(), 1, 2).unwrap();
        assert_eq!(j.get(&stripe, 3).unwrap(), COPIED);
        assert_eq!(j.get(&stripe, 4).unwrap(), DONE);
        assert_eq!(j.done().unwrap(), 1);
        assert_eq!(j.settled().unwrap().unwrap().epoch, 2);
        drop(j);
        let other = Journal::open(dir.path(), 2, 3).unwrap();
        assert_eq!(other.get(&stripe, 4).unwrap(), 0);
        assert_eq!(other.done().unwrap(), 0);
    }
}
