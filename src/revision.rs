//! New versions of a document: [`supersede`] (new content, e.g. a reissued certificate) and
//! [`rekey`] (the same content re-encrypted under a fresh data key), and [`collect`], which
//! removes a rekeyed document's old shards and manifest from the peers.
//!
//! Both go one way: the owning department stores the new version's shards and manifest
//! (unregistered, `Client::store`), saves its data key in the keyring, then commits one
//! `Supersede` transaction that registers the new id, marks the old one superseded, and
//! carries the new version's grants: every grant live on the old version at that moment,
//! its data key re-sealed to the same reader for the new id ([`WrappedKey::rewrap`]), with
//! its expiry unchanged; revoked and expired grants are not carried. A supersede may grant
//! more readers (`extra`). So the new version never exists on chain without its readers,
//! and a crash before the commit leaves only unregistered shards.
//!
//! A rekey then collects the old version: one `DeleteShard` naming the old version per
//! (stripe, slot) to the peer the slot is placed on (the previous layout's peer if the
//! current one has none), which drops exactly that document's reference (references belong
//! to documents, `store`: an identical shard of another document stays), then the manifest
//! from every peer. Each slot deleted is
//! recorded in a [`Journal`] (`collect.redb` in the department's keyring directory), so a
//! collect interrupted midway is resumed by running `rekey` on the old id again, and never
//! drops a reference twice. A reissue keeps its old version stored (a receipt of it still
//! verifies; its grants stay until revoked).
//!
//! Readers find the current version through the chain: the old record's `superseded_by`,
//! the new record's `supersedes` (id and [`VersionKind`]); [`latest`] follows the chain.
//!
//! Not for: deciding who may read (the chain), garbage-collecting orphans of failed puts.

use tracing::{debug, warn};

use crate::chain::client::ChainError;
use crate::chain::state::DocumentRecord;
use crate::chain::tx::{CarriedGrant, MAX_TX_BYTES, TxBody, VersionKind};
use crate::client::{Client, ClientError, Progress, stripe_key};
use crate::codec::DocumentInfo;
use crate::crypto::DataKey;
use crate::grant::{GrantAddress, GrantError, WrappedKey};
use crate::id::DocumentId;
use crate::identity::PublicId;
use crate::keyring::{Keyring, KeyringError};
use crate::manifest::Manifest;
use crate::net::NetError;
use crate::ops::{Journal, OpsError, document_stripe_key};
use crate::proto::DeleteOutcome;

/// File of the collect journal, in the department's keyring directory.
pub const COLLECT_JOURNAL: &str = "collect.redb";
const COLLECT_TABLE: &str = "collected-v1";
/// Slot number that stands for a document's manifest in the collect journal.
const MANIFEST_SLOT: usize = u16::MAX as usize;
/// Longest chain of versions [`latest`] follows.
pub const MAX_VERSIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RevisionError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("chain: {0}")]
    Chain(#[from] ChainError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Ops(#[from] OpsError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error("document {id} belongs to {owner}, not to this department ({me})")]
    NotOwner {
        id: DocumentId,
        owner: PublicId,
        me: PublicId,
    },
    #[error("document {id} was already superseded by {by}; give the newest version")]
    AlreadySuperseded { id: DocumentId, by: DocumentId },
    #[error(
        "{grants} grants do not fit in one transaction ({bytes} bytes, the limit is \
         {MAX_TX_BYTES}); revoke some first"
    )]
    TooManyGrants { grants: usize, bytes: usize },
    #[error(
        "reading the old version failed, so no new version was committed \
         (its stored shards were removed): {0}"
    )]
    Read(#[source] ClientError),
    #[error("the re-encrypted copy holds {got} bytes, the document {want}; nothing committed")]
    ShortCopy { got: u64, want: u64 },
    #[error("more than {MAX_VERSIONS} versions after {0}")]
    TooManyVersions(DocumentId),
    #[error("{at} names {next} as its newer version, which does not name it back")]
    BrokenChain { at: DocumentId, next: DocumentId },
}

/// What a supersede or rekey did.
#[derive(Debug)]
pub struct RevisionReport {
    pub old: DocumentId,
    pub new: DocumentId,
    pub kind: VersionKind,
    /// The new version's data key (also saved in the keyring before the commit).
    pub key: DataKey,
    /// Height of the block holding the `Supersede` transaction.
    pub height: u64,
    /// Readers whose grants were carried to the new version.
    pub carried: Vec<PublicId>,
    /// Grants on the old version not carried: revoked ones are already gone; these expired.
    pub expired: Vec<PublicId>,
    /// Readers granted by `extra`.
    pub granted: Vec<PublicId>,
    pub bytes: u64,
    /// The collect of the old version (a rekey only).
    pub collect: Option<CollectReport>,
}

/// What a collect removed, and what it could not.
#[derive(Debug, Default)]
pub struct CollectReport {
    /// Shard references dropped now (removed, or decremented where another document
    /// shares the shard).
    pub shards_deleted: u64,
    /// Slots whose shard no peer had (never written, or already gone).
    pub shards_absent: u64,
    /// Slots done by an earlier run (from the journal).
    pub shards_resumed: u64,
    pub manifests_deleted: u64,
    /// (stripe, slot, shard, reason) of old shards still on a peer: run `rekey` again.
    pub remaining: Vec<(u64, usize, String, String)>,
    /// Whether the old manifest is gone from every reachable peer.
    pub manifest_done: bool,
}

impl CollectReport {
    pub fn complete(&self) -> bool {
        self.remaining.is_empty() && self.manifest_done
    }
}

/// Re-encrypts document `old` under a fresh data key: see the module doc. If `old` was
/// already rekeyed by this department (an earlier run whose collect did not finish), only
/// the collect runs, and the report's `new` is the rekeyed version.
pub async fn rekey(
    client: &Client,
    old: &DocumentId,
    keyring: &Keyring,
    progress: Progress<'_>,
) -> Result<RevisionReport, RevisionError> {
    let chain = client.chain()?;
    let record = chain.check_registered(old).await?;
    check_owner(client, old, &record)?;
    if let Some(by) = record.superseded_by {
        let newer = chain.check_registered(&by).await?;
        let rekeyed = newer
            .supersedes
            .is_some_and(|p| p.document == *old && p.kind == VersionKind::Rekey);
        if !rekeyed {
            return Err(RevisionError::AlreadySuperseded { id: *old, by });
        }
        debug!(%old, new = %by, "already rekeyed; resuming the collect");
        let journal = journal(keyring)?;
        let gone = CollectReport {
            manifest_done: true,
            ..CollectReport::default()
        };
        let collect = if journal.is_done(old.as_bytes(), MANIFEST_SLOT)? {
            gone
        } else {
            match client.manifest(old).await {
                Ok(manifest) => collect(client, old, &manifest, &journal).await?,
                // The manifest goes last: without it, every shard went before it.
                Err(ClientError::NotFound { .. }) => gone,
                Err(e) => return Err(e.into()),
            }
        };
        return Ok(RevisionReport {
            old: *old,
            new: by,
            kind: VersionKind::Rekey,
            key: keyring.load(&by)?,
            height: newer.height,
            carried: newer.grants.keys().copied().collect(),
            expired: Vec::new(),
            granted: Vec::new(),
            bytes: 0,
            collect: Some(collect),
        });
    }
    let old_key = keyring.load(old)?;
    let manifest = client.manifest(old).await?;
    let info = DocumentInfo {
        department: manifest.department.clone(),
        document_type: manifest.document_type.clone(),
        created_at_ms: Some(manifest.created_at_ms),
    };
    let grants = Grants::plan(&record, &[], old)?;
    // The old plaintext streams from the get into the put through a small pipe: memory
    // stays bounded by the stripes in flight on each side.
    let (write, read) = tokio::io::duplex(1 << 20);
    let (got, stored) = tokio::join!(
        // The pipe's writer is dropped when the get ends, ending the put's input.
        async move { client.get(old, &old_key, write, &|_, _| {}).await },
        client.store(read, Some(manifest.size), info, progress)
    );
    let stored = match (stored, &got) {
        (Ok(s), _) => s,
        (Err(_), Err(_)) => return Err(RevisionError::Read(got.unwrap_err())),
        (Err(e), Ok(_)) => return Err(e.into()),
    };
    let failure = match got {
        Err(e) => Some(RevisionError::Read(e)),
        Ok(r) if r.bytes != manifest.size || stored.manifest.size != manifest.size => {
            Some(RevisionError::ShortCopy {
                got: stored.manifest.size,
                want: manifest.size,
            })
        }
        Ok(_) => None,
    };
    if let Some(e) = failure {
        discard(client, &stored.id, &stored.manifest, keyring).await;
        return Err(e);
    }
    let mut report = commit(
        client,
        old,
        VersionKind::Rekey,
        stored.id,
        &stored.manifest,
        stored.key,
        grants,
        keyring,
    )
    .await?;
    let journal = journal(keyring)?;
    report.collect = Some(collect(client, old, &manifest, &journal).await?);
    Ok(report)
}

/// Stores `reader` as the new version of `old`, carrying its live grants and granting
/// `extra` readers too (an extra address replaces a carried grant: no expiry).
#[allow(clippy::too_many_arguments)]
pub async fn supersede<R>(
    client: &Client,
    old: &DocumentId,
    reader: R,
    size: Option<u64>,
    info: DocumentInfo,
    extra: &[GrantAddress],
    keyring: &Keyring,
    progress: Progress<'_>,
) -> Result<RevisionReport, RevisionError>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let chain = client.chain()?;
    let record = chain.check_registered(old).await?;
    check_owner(client, old, &record)?;
    if let Some(by) = record.superseded_by {
        return Err(RevisionError::AlreadySuperseded { id: *old, by });
    }
    for address in extra {
        address.verify()?;
    }
    let grants = Grants::plan(&record, extra, old)?;
    let stored = client.store(reader, size, info, progress).await?;
    commit(
        client,
        old,
        VersionKind::Reissue,
        stored.id,
        &stored.manifest,
        stored.key,
        grants,
        keyring,
    )
    .await
}

/// The newest version of `id`, following `superseded_by` on the chain (each record
/// verified by its own inclusion proof): the ids after `id`, oldest first, empty if `id`
/// is current.
pub async fn latest(
    client: &Client,
    id: &DocumentId,
) -> Result<Vec<(DocumentId, VersionKind)>, RevisionError> {
    let chain = client.chain()?;
    let mut record = chain.check_registered(id).await?;
    let mut path = Vec::new();
    let mut at = *id;
    while let Some(next) = record.superseded_by {
        if path.len() == MAX_VERSIONS {
            return Err(RevisionError::TooManyVersions(*id));
        }
        record = chain.check_registered(&next).await?;
        let kind = match record.supersedes {
            Some(p) if p.document == at => p.kind,
            _ => {
                return Err(RevisionError::BrokenChain { at, next });
            }
        };
        path.push((next, kind));
        at = next;
    }
    Ok(path)
}

fn check_owner(
    client: &Client,
    id: &DocumentId,
    record: &DocumentRecord,
) -> Result<(), RevisionError> {
    let me = client.public();
    if record.owner != me {
        return Err(RevisionError::NotOwner {
            id: *id,
            owner: record.owner,
            me,
        });
    }
    Ok(())
}

/// Whom a new version is granted to, decided before anything is stored.
struct Grants {
    /// (grantee, old wrapped key, expiry) of the live grants carried over.
    carried: Vec<(PublicId, WrappedKey, Option<u64>)>,
    expired: Vec<PublicId>,
    extra: Vec<GrantAddress>,
}

impl Grants {
    /// Live grants of `record` at this moment, less those `extra` replaces; refused if the
    /// `Supersede` would not fit in one transaction.
    fn plan(
        record: &DocumentRecord,
        extra: &[GrantAddress],
        old: &DocumentId,
    ) -> Result<Self, RevisionError> {
        let now = crate::now_ms();
        let mut carried = Vec::new();
        let mut expired = Vec::new();
        for (grantee, grant) in &record.grants {
            if extra.iter().any(|a| a.id == *grantee) {
                continue;
            }
            if record.live_grant(grantee, now).is_some() {
                carried.push((*grantee, grant.wrapped.clone(), grant.expires_ms));
            } else {
                expired.push(*grantee);
            }
        }
        let grants = Self {
            carried,
            expired,
            extra: extra.to_vec(),
        };
        // The exact size: the same grants sealed with a throwaway key.
        let body = grants.body(old, old, VersionKind::Reissue, &DataKey::generate())?;
        let bytes = postcard::to_allocvec(&body)
            .expect("encoding into memory cannot fail")
            .len()
            + 256;
        if bytes > MAX_TX_BYTES {
            return Err(RevisionError::TooManyGrants {
                grants: grants.carried.len() + grants.extra.len(),
                bytes,
            });
        }
        Ok(grants)
    }

    /// The `Supersede` of `old` by `new`, every grant sealed to its reader for `new`.
    fn body(
        &self,
        old: &DocumentId,
        new: &DocumentId,
        kind: VersionKind,
        key: &DataKey,
    ) -> Result<TxBody, RevisionError> {
        let mut grants = Vec::with_capacity(self.carried.len() + self.extra.len());
        for (grantee, wrapped, expires_ms) in &self.carried {
            grants.push(CarriedGrant {
                grantee: *grantee,
                wrapped: wrapped.rewrap(key, new, grantee)?,
                expires_ms: *expires_ms,
            });
        }
        for to in &self.extra {
            grants.push(CarriedGrant {
                grantee: to.id,
                wrapped: WrappedKey::wrap(key, new, to)?,
                expires_ms: None,
            });
        }
        Ok(TxBody::Supersede {
            old: *old,
            new: *new,
            kind,
            grants,
        })
    }
}

/// Saves the new key, then commits the `Supersede` with its grants. A refused commit
/// removes the stored new version again.
#[allow(clippy::too_many_arguments)]
async fn commit(
    client: &Client,
    old: &DocumentId,
    kind: VersionKind,
    new: DocumentId,
    manifest: &Manifest,
    key: DataKey,
    grants: Grants,
    keyring: &Keyring,
) -> Result<RevisionReport, RevisionError> {
    // Before the commit: a crash right after it must not lose the only key to the new
    // version.
    keyring.save(&new, &key)?;
    let body = grants.body(old, &new, kind, &key)?;
    let height = match client.chain()?.submit(body).await {
        Ok((height, _)) => height,
        Err(e) => {
            discard(client, &new, manifest, keyring).await;
            return Err(e.into());
        }
    };
    Ok(RevisionReport {
        old: *old,
        new,
        kind,
        key,
        height,
        carried: grants.carried.iter().map(|g| g.0).collect(),
        expired: grants.expired,
        granted: grants.extra.iter().map(|a| a.id).collect(),
        bytes: manifest.size,
        collect: None,
    })
}

/// Best effort: removes a new version that was stored but will not be committed.
async fn discard(client: &Client, id: &DocumentId, manifest: &Manifest, keyring: &Keyring) {
    let res = match journal(keyring) {
        Ok(journal) => collect(client, id, manifest, &journal).await,
        Err(e) => Err(e),
    };
    match res {
        Ok(r) if r.complete() => {}
        Ok(r) => {
            warn!(document = %id, left = r.remaining.len(), "uncommitted version left partly stored")
        }
        Err(e) => warn!(document = %id, error = %e, "uncommitted version left stored"),
    }
}

fn journal(keyring: &Keyring) -> Result<Journal, RevisionError> {
    Ok(Journal::open_table(
        keyring.dir(),
        COLLECT_JOURNAL,
        COLLECT_TABLE.into(),
    )?)
}

/// Drops the references document `id`'s shards hold on the peers, then its manifest from
/// every peer; resumable through `journal` (see the module doc).
pub async fn collect(
    client: &Client,
    id: &DocumentId,
    manifest: &Manifest,
    journal: &Journal,
) -> Result<CollectReport, RevisionError> {
    let mut report = CollectReport::default();
    // Each delete names this document: a peer drops its reference and no other document's
    // (`store`), and lets the owner do so once a newer version superseded it (`access`).
    for (index, ids) in manifest.stripes.iter().enumerate() {
        let stripe = stripe_key(ids);
        let step = document_stripe_key(id, &stripe);
        let placed = client.layout().place(&stripe, ids.len());
        let before = client
            .previous_layout()
            .map(|l| l.place(&stripe, ids.len()));
        for (slot, shard) in ids.iter().enumerate() {
            if journal.is_done(&step, slot)? {
                report.shards_resumed += 1;
                continue;
            }
            let mut nodes = Vec::new();
            if let Ok(p) = &placed {
                nodes.push(p[slot].clone());
            }
            if let Some(Ok(p)) = &before
                && !nodes.iter().any(|n| n.key == p[slot].key)
            {
                nodes.push(p[slot].clone());
            }
            // The first peer holding the slot's copy drops one reference.
            let mut outcome = if nodes.is_empty() {
                Err("no peer is placed for it".to_string())
            } else {
                Ok(false)
            };
            for node in &nodes {
                let deleted = client.net().shard_delete(node, shard, id).await;
                match deleted {
                    Ok(DeleteOutcome::NotFound) => continue,
                    Ok(_) => {
                        outcome = Ok(true);
                        break;
                    }
                    Err(e) => {
                        outcome = Err(format!("peer {}: {e}", node.key.short()));
                        break;
                    }
                }
            }
            match outcome {
                Ok(deleted) => {
                    journal.set_done(&step, slot)?;
                    if deleted {
                        report.shards_deleted += 1;
                    } else {
                        report.shards_absent += 1;
                    }
                }
                Err(reason) => {
                    report
                        .remaining
                        .push((index as u64, slot, shard.to_string(), reason))
                }
            }
        }
    }
    if !report.remaining.is_empty() {
        // The manifest goes last: a rerun needs it to find the shards left.
        return Ok(report);
    }
    let key = *id.as_bytes();
    if journal.is_done(&key, MANIFEST_SLOT)? {
        report.manifest_done = true;
        return Ok(report);
    }
    let nodes = client
        .layout()
        .nodes
        .iter()
        .chain(client.previous_layout().into_iter().flat_map(|l| &l.nodes));
    let mut failed = false;
    let mut seen = Vec::new();
    for node in nodes {
        if seen.contains(&node.key) {
            continue;
        }
        seen.push(node.key);
        match client.net().manifest_delete(node, id).await {
            Ok(DeleteOutcome::NotFound) => {}
            Ok(_) => report.manifests_deleted += 1,
            Err(e) => {
                failed = true;
                report.remaining.push((
                    u64::MAX,
                    MANIFEST_SLOT,
                    format!("manifest {id}"),
                    format!("peer {}: {e}", node.key.short()),
                ));
            }
        }
    }
    if !failed {
        journal.set_done(&key, MANIFEST_SLOT)?;
        report.manifest_done = true;
    }
    Ok(report)
}
