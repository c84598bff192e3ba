//! The documents a converge walks, in bounded memory: registered ids listed from the chain a
//! page at a time (`ChainClient::documents`, each page proven complete), each page's
//! manifests fetched `parallel` at a time and their copies converged, the next page asked
//! for only once the walk has taken this one. Memory holds about two pages of ids and one
//! page of manifests ([`OpsOptions::page`]), whatever the number of documents.
//!
//! A manifest's copies follow the same rule as shards: each of its `max(3, m + 1)` placed
//! replicas under the current layout ends holding a copy that hashes to the document id
//! (a missing or corrupt one is written again from a good copy), and only then are the
//! copies on peers no longer placed (the previous layout's replicas, draining peers)
//! deleted.
//!
//! Not for: what happens to a document's stripes (`converge`), or how the work is run
//! (`worker`).

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use tracing::debug;

use super::{OpsError, OpsOptions};
use crate::client::{Client, MANIFEST_REPLICAS};
use crate::id::DocumentId;
use crate::manifest::Manifest;
use crate::placement::{Layout, NodeInfo};
use crate::proto::{DeleteOutcome, MAX_LIST};

/// One registered document as the walk found it.
pub(super) struct Found {
    pub id: DocumentId,
    /// Its manifest; `None` if it could not be read (see `failures`) or was collected by a
    /// rekey.
    pub manifest: Option<Arc<Manifest>>,
    /// Whether it counts as a document: a version its department rekeyed away does not.
    pub counted: bool,
    pub manifests_written: u64,
    pub manifests_deleted: u64,
    pub failures: Vec<String>,
}

/// Every registered document id, from the chain (held all at once: for checks and tests;
/// the workers walk [`pages`]).
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

/// The registered documents, a page at a time, each with its manifest read and its copies
/// converged (counted, not changed, on a dry run). The first page is asked for here, so a
/// chain that cannot list is an error; a later page that cannot be listed ends the walk
/// with that failure on the last document found.
pub(super) async fn pages<'a>(
    client: &'a Client,
    options: &'a OpsOptions,
) -> Result<BoxStream<'a, Vec<Found>>, OpsError> {
    let limit = options.page.clamp(1, MAX_LIST);
    let first = client.chain()?.documents(None, limit).await?;
    let walk = stream::unfold(Some(first), move |ids| async move {
        let ids = ids?;
        let after = ids.last().copied();
        let more = ids.len() == limit as usize;
        let mut found: Vec<Found> = stream::iter(ids)
            .map(|id| find(client, options, id))
            .buffered(options.parallel.max(1))
            .collect()
            .await;
        let next = if more {
            match next_page(client, after, limit).await {
                Ok(ids) => Some(ids),
                Err(e) => {
                    if let Some(last) = found.last_mut() {
                        last.failures
                            .push(format!("listing the documents after {}: {e}", last.id));
                    }
                    None
                }
            }
        } else {
            None
        };
        Some((found, next))
    });
    Ok(walk.boxed())
}

async fn next_page(
    client: &Client,
    after: Option<DocumentId>,
    limit: u32,
) -> Result<Vec<DocumentId>, OpsError> {
    Ok(client.chain()?.documents(after, limit).await?)
}

/// Document `id`: its manifest, read from the first peer whose copy hashes to the id, and
/// its copies converged.
async fn find(client: &Client, options: &OpsOptions, id: DocumentId) -> Found {
    let mut found = Found {
        id,
        manifest: None,
        counted: true,
        manifests_written: 0,
        manifests_deleted: 0,
        failures: Vec::new(),
    };
    match client.manifest(&id).await {
        Ok(manifest) => {
            if let Err(e) = converge_manifest(client, &id, &manifest, options, &mut found).await {
                found.failures.push(format!("manifest of {id}: {e}"));
            }
            found.manifest = Some(Arc::new(manifest));
        }
        // A version its department rekeyed is collected, manifest last: nothing to keep.
        Err(_) if rekeyed_away(client, &id).await => found.counted = false,
        Err(e) => found.failures.push(format!("manifest of {id}: {e}")),
    }
    found
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

/// Every placed replica gets a good copy; then the copies on peers no longer placed go.
async fn converge_manifest(
    client: &Client,
    id: &DocumentId,
    manifest: &Manifest,
    options: &OpsOptions,
    found: &mut Found,
) -> Result<(), OpsError> {
    let m = manifest.params.m;
    let targets = manifest_places(client.layout(), id, m)?;
    let bytes = Bytes::from(manifest.encode());
    for node in &targets {
        let intact = match client.net().manifest_get(node, id).await {
            Ok(copy) => copy.is_some(),
            // A copy that fails its hash (`Corrupt`) is written again, the good bytes
            // replacing it; an unreachable peer fails the write below.
            Err(e) => {
                debug!(document = %id, peer = %node.key.short(), error = %e, "manifest copy not readable");
                false
            }
        };
        if !intact {
            if !options.dry_run {
                client.net().manifest_put(node, id, &bytes).await?;
            }
            found.manifests_written += 1;
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
            Ok(DeleteOutcome::Removed) => found.manifests_deleted += 1,
            Ok(_) => {}
            // A peer that is gone for good holds nothing to delete.
            Err(e) => debug!(document = %id, error = %e, "stale manifest copy not deleted"),
        }
    }
    Ok(())
}
