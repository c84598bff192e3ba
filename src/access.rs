//! Read authorisation on peers: who may do what, as the chain says now.
//!
//! A peer's listener authenticates every key that proves possession of it (citizens are
//! known only by their public key), so each request is authorised here instead:
//! - reading a document (`GetManifest`, `OpenDocument`, then `GetShard` on the shards of an
//!   open manifest) is for its owning department, a live grantee
//!   ([`DocumentRecord::may_read`]: not revoked, not expired) and operators (repair,
//!   rebalance and scrub run as one, and read shards no open document names);
//! - a gateway reads a document for a citizen (`OpenDelegated`, `GetDelegatedManifest`,
//!   `GetDelegatedShard`) only under the citizen's read delegation (`delegation`) naming the
//!   gateway's key, this chain and this document, unexpired, and only while the citizen
//!   holds a live grant ([`ChainView::may_read_delegated`]); what the gateway's own key may
//!   do counts for nothing there;
//! - storing shards and manifests is for departments and operators;
//! - deleting, listing, usage and scrub are for operators; the owning department may also
//!   delete the manifest, and its document's references to shards, of its own document once
//!   a newer version superseded it (`revision::collect` after a rekey). A shard delete drops
//!   the reference of the document it names and no other (`store`), so what a department
//!   may delete is its own documents' references, whatever manifest it shows.
//!
//! Least privilege: a storage node's key (`Role::Node`) is what a peer uses to ask the chain
//! (records and accounts to authorise requests, transactions to settle its audit roots) and
//! to commit its audit roots; no code path sends storage requests with it, so it may not
//! read, store or delete documents' shards or manifests, list, scrub or see usage on any
//! peer: a stolen peer key reads and destroys nothing elsewhere. Operators run the
//! operations (`ops`).
//!
//! [`ChainView`] is the peer's view of the chain: on a validator's peer its own ledger while
//! that is current (`Ledger::is_current`), and otherwise, as on every other peer, the
//! chain's validator hosts asked over QUIC (their keys checked; a validator's peer asks the
//! other hosts, each within [`ACCESS_QUERY_TIMEOUT`]). A ledger that is behind the chain
//! (restarted, cut off, catching up) is never asked: its "not registered" or "no grant"
//! would be stale. An answer that allows is cached for at most [`ACCESS_TTL`] (1 s), so a
//! revocation, an expiry or a role withdrawn takes effect on every peer within that bound,
//! open connections included (each `GetShard` re-checks the grant). An answer that refuses
//! is always checked against a chain answer fetched for that request before the refusal is
//! sent, so a grant counts as soon as it is committed (the price: each refused request
//! costs the peer one chain query; `peer` rate-limits refusals per key). What exists on
//! chain and what does not are cached apart: ids and keys made up by strangers fill only
//! the second, and never push a member's answer out. If the chain cannot be asked, nothing is served (fail closed): the error is
//! [`AccessError::is_retryable`], and the peer answers it `Unavailable`, not `Refused`.
//!
//! Not for: authenticating keys (`tls`), deciding what a transaction may change
//! (`chain::state`), or unwrapping data keys (`grant`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::chain::client::{ChainClient, ChainError, ChainLink};
use crate::chain::ledger::Ledger;
use crate::chain::state::DocumentRecord;
use crate::delegation::Delegation;
use crate::id::{DocumentId, ShardId};
use crate::identity::{Identity, PublicId, Role};
use crate::manifest::Manifest;
use crate::net::{Net, NetError, NetOptions};
use crate::proto::MAX_OPEN_DOCUMENTS;
use crate::tls::Membership;

/// Longest a peer acts on a chain answer (a document's grants, an account's role).
pub const ACCESS_TTL: Duration = Duration::from_secs(1);

/// Time limit of one authorisation query to one validator host: past it the next host is
/// asked (a host killed mid-election must not hold a reader's request for long).
pub const ACCESS_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// Most cached answers of each kind; the cache is emptied when it fills.
const MAX_CACHED: usize = 16 << 10;

/// Why a request was refused. Every variant leaves the store unchanged and sends no bytes
/// of any document.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error("{who} ({role}) may not {action}")]
    Forbidden {
        who: PublicId,
        role: String,
        action: &'static str,
    },
    #[error("document {0} is not registered on the chain")]
    NotRegistered(DocumentId),
    #[error("{who} is neither the owner of document {document} nor holds a live grant on it")]
    NotGranted { who: PublicId, document: DocumentId },
    #[error(
        "shard {shard} belongs to no document {who} has opened and may read on this connection"
    )]
    NotOpened { who: PublicId, shard: ShardId },
    #[error(
        "{who} may not delete what document {document} holds: only its owner, once a newer version superseded it, or an operator may"
    )]
    NotCollectable { who: PublicId, document: DocumentId },
    #[error("{who} may not read the names of bucket {bucket:?}: only its owner may")]
    NotBucketOwner { who: PublicId, bucket: String },
    #[error("{who} may not see who read document {document}: only its owner and operators may")]
    NotAuditor { who: PublicId, document: DocumentId },
    #[error("the manifest sent does not hash to document {0}")]
    ManifestMismatch(DocumentId),
    #[error("the manifest of {document} does not decode: {reason}")]
    BadManifest {
        document: DocumentId,
        reason: String,
    },
    #[error(
        "access cannot be checked now, so nothing is served: the chain is unreachable ({0}); try again shortly"
    )]
    ChainUnreachable(String),
    #[error(
        "access cannot be checked now, so nothing is served: this validator host's ledger is behind the chain and no other validator answered ({0}); try again shortly"
    )]
    Behind(String),
    #[error(
        "access cannot be checked, so nothing is served: no validator host gave a chain answer that proves out ({0}); a validator host is faulty or lying"
    )]
    Unproven(String),
    #[error(
        "access could not be checked within {0:?} (the chain is unreachable or slow), so nothing is served; try again shortly"
    )]
    TimedOut(Duration),
    #[error("access cannot be checked, so it is refused: this peer is linked to no chain")]
    NoChain,
    #[error("read delegation refused: {0}")]
    BadDelegation(String),
}

impl AccessError {
    /// Whether the chain could not say (unreachable, behind, too slow), as opposed to a
    /// definite refusal: asked again shortly, the same request may be allowed. A peer answers
    /// these `Unavailable` (nothing served), a definite refusal `Refused`.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::ChainUnreachable(_) | Self::Behind(_) | Self::TimedOut(_) | Self::Unproven(_)
        )
    }
}

/// How much of the chain's document records a caller may see from a validator
/// (`GetDocument`, `GetRecord`): a record carries the grantee list and the wrapped keys,
/// and who may read a citizen's document is itself private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainScope {
    /// Operators, storage nodes, validators and the peers hosting validators (repair,
    /// authorisation of reads by every peer, consensus): every record whole.
    Everything,
    /// Anyone else: the records it owns whole, a record it holds a live grant on with that
    /// grant alone, and nothing of any other document.
    Own,
}

impl ChainScope {
    /// `record` (of `document`) as `who` may see it at `now_ms`, or the refusal.
    pub fn redact(
        self,
        who: &PublicId,
        document: &DocumentId,
        mut record: DocumentRecord,
        now_ms: u64,
    ) -> Result<DocumentRecord, AccessError> {
        if self == Self::Everything || record.owner == *who {
            return Ok(record);
        }
        match record.live_grant(who, now_ms).cloned() {
            Some(grant) => {
                record.grants = [(*who, grant)].into_iter().collect();
                Ok(record)
            }
            None => Err(AccessError::NotGranted {
                who: *who,
                document: *document,
            }),
        }
    }
}

struct Cached<T> {
    at: Instant,
    value: T,
}

/// Answers cached by kind. What the chain has (an account, a registered document) is kept
/// apart from what it has not (no account, not registered): the first only holds what
/// exists on chain, so keys and ids made up by strangers, however many, land in the second
/// and never push a member's answer out.
#[derive(Default)]
struct Cache {
    documents: Answers<DocumentId, Arc<DocumentRecord>>,
    roles: Answers<PublicId, Role>,
}

struct Answers<K, V> {
    found: HashMap<K, Cached<V>>,
    absent: HashMap<K, Instant>,
}

impl<K, V> Default for Answers<K, V> {
    fn default() -> Self {
        Self {
            found: HashMap::new(),
            absent: HashMap::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Copy, V: Clone> Answers<K, V> {
    /// The cached answer for `key` if it was fetched at `since` or later (`None`: younger
    /// than [`ACCESS_TTL`]).
    fn get(&self, key: &K, since: Option<Instant>) -> Option<Option<V>> {
        let usable = |at: Instant| since.map_or_else(|| fresh(at), |since| at >= since);
        if let Some(hit) = self.found.get(key).filter(|c| usable(c.at)) {
            return Some(Some(hit.value.clone()));
        }
        self.absent.get(key).filter(|at| usable(**at)).map(|_| None)
    }

    /// Caches `value` for `key`, fetched at `at`; a full map of its kind is emptied first.
    fn remember(&mut self, key: K, value: Option<V>, at: Instant) {
        match value {
            Some(value) => {
                self.absent.remove(&key);
                if self.found.len() >= MAX_CACHED && !self.found.contains_key(&key) {
                    self.found.retain(|_, c| fresh(c.at));
                    if self.found.len() >= MAX_CACHED {
                        self.found.clear();
                    }
                }
                self.found.insert(key, Cached { at, value });
            }
            None => {
                self.found.remove(&key);
                if self.absent.len() >= MAX_CACHED {
                    self.absent.clear();
                }
                self.absent.insert(key, at);
            }
        }
    }
}

/// A peer's view of the chain, for authorising requests (see the module docs).
pub struct ChainView {
    /// The validator this peer hosts, if any: asked while it is current.
    ledger: Option<Arc<Ledger>>,
    /// The validator hosts (other than this peer), once linked.
    remote: RwLock<Option<ChainClient>>,
    cache: Mutex<Cache>,
    /// Questions asked of the chain (the own ledger or the validator hosts) so far.
    queries: AtomicU64,
    /// Roles and documents looked up in the cache: found there, and not.
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for ChainView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainView")
            .field("ledger", &self.ledger.is_some())
            .field("validators", &self.remote().is_some())
            .finish_non_exhaustive()
    }
}

impl ChainView {
    /// A view linked to nothing yet: it refuses everything until [`ChainView::link`].
    pub fn unlinked() -> Self {
        Self {
            ledger: None,
            remote: RwLock::new(None),
            cache: Mutex::new(Cache::default()),
            queries: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The view of a validator's peer: its own ledger while that is current; link it
    /// ([`ChainView::link`]) to the other validator hosts for the times it is not.
    pub fn of_ledger(ledger: Arc<Ledger>) -> Self {
        Self {
            ledger: Some(ledger),
            ..Self::unlinked()
        }
    }

    /// Links the view to the chain's validator hosts, asked as `identity` from an endpoint
    /// bound to `bind` (port 0 for any), each within [`ACCESS_QUERY_TIMEOUT`]. Only the
    /// hosts' own keys are accepted. The host that is `identity` (this peer, when it hosts a
    /// validator) is left out: its ledger is asked directly while it is current, and the
    /// others when it is not. Must be called within a tokio runtime.
    pub fn link(
        &self,
        identity: &Identity,
        mut chain: ChainLink,
        bind: SocketAddr,
    ) -> Result<(), NetError> {
        let me = identity.public();
        chain.hosts.retain(|h| h.key != me);
        if chain.hosts.is_empty() {
            // A single validator, hosted here: nobody else to ask.
            return Ok(());
        }
        let hosts: Membership = chain.hosts.iter().map(|h| h.key).collect();
        let net = Net::new(
            identity,
            Arc::new(hosts),
            NetOptions {
                bind,
                connect_timeout: ACCESS_QUERY_TIMEOUT,
                request_timeout: Duration::from_secs(5),
                down_for: Duration::from_millis(500),
                ..NetOptions::default()
            },
        )?;
        let client = ChainClient::new(net, identity, chain, ACCESS_QUERY_TIMEOUT);
        *self.remote.write().unwrap_or_else(|e| e.into_inner()) = Some(client);
        *self.lock() = Cache::default();
        Ok(())
    }

    fn remote(&self) -> Option<ChainClient> {
        self.remote
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs `ask` on where the chain is to be asked now: the own ledger while it is current,
    /// else the (other) validator hosts. `on_ledger` answers from the ledger; `on_remote`
    /// asks the hosts, its error mapped to `ChainUnreachable`, or `Behind` on a validator's
    /// peer whose own ledger lags, or `Unproven` when no host's answer proved out.
    async fn ask<T, L, R, Fut>(&self, on_ledger: L, on_remote: R) -> Result<T, AccessError>
    where
        L: FnOnce(&Ledger) -> Result<T, AccessError>,
        R: FnOnce(ChainClient) -> Fut,
        Fut: Future<Output = Result<T, ChainError>>,
    {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let Some(ledger) = &self.ledger
            && ledger.is_current()
        {
            return on_ledger(ledger);
        }
        let behind = self.ledger.is_some();
        let Some(client) = self.remote() else {
            return Err(if behind {
                AccessError::Behind("no other validator host is linked".into())
            } else {
                AccessError::NoChain
            });
        };
        on_remote(client).await.map_err(|e| match e {
            ChainError::Unproven { .. } | ChainError::Stale { .. } => {
                AccessError::Unproven(e.to_string())
            }
            e if behind => AccessError::Behind(e.to_string()),
            e => AccessError::ChainUnreachable(e.to_string()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the view's connections to the validators.
    pub async fn close(&self) {
        if let Some(client) = self.remote() {
            client.net().close().await;
        }
    }

    /// `who`'s role on the chain; `None` for a key with no account (a citizen). With
    /// `refresh`, asks the chain even if a cached answer is younger than [`ACCESS_TTL`].
    pub async fn role(&self, who: &PublicId, refresh: bool) -> Result<Option<Role>, AccessError> {
        self.role_since(who, refresh.then(Instant::now)).await
    }

    /// `who`'s role: cached if fetched at `since` or later (`None`: within [`ACCESS_TTL`]).
    async fn role_since(
        &self,
        who: &PublicId,
        since: Option<Instant>,
    ) -> Result<Option<Role>, AccessError> {
        if let Some(hit) = self.lock().roles.get(who, since) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let at = Instant::now();
        let role = self
            .ask(
                |ledger| Ok(ledger.account(who).map(|a| a.role)),
                |client| async move { Ok(client.account(who).await?.map(|a| a.role)) },
            )
            .await?;
        self.lock().roles.remember(*who, role, at);
        Ok(role)
    }

    /// Whether `who` was last seen with an account on chain (however long ago): what a peer
    /// sorts callers by for their budgets (`peer`), never what it authorises by.
    pub fn known_member(&self, who: &PublicId) -> bool {
        self.lock().roles.found.contains_key(who)
    }

    /// Whether the chain said within [`ACCESS_TTL`] that `who` has no account.
    pub fn known_stranger(&self, who: &PublicId) -> bool {
        matches!(self.lock().roles.get(who, None), Some(None))
    }

    /// Questions asked of the chain so far (the own ledger's or the validator hosts'):
    /// what refusals and lookups cost.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Roles and documents looked up in the cache so far: (found, not found).
    pub fn cache_counts(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// The chain's height as the chain is asked now (the own ledger while current, else
    /// the validator hosts): whether it answers is what a peer's readiness checks.
    pub async fn chain_height(&self) -> Result<u64, AccessError> {
        self.ask(
            |ledger| Ok(ledger.status().height),
            |client| async move { Ok(client.status().await?.height) },
        )
        .await
    }

    /// Document `id`'s record; `None` if it is not registered. With `refresh`, asks the
    /// chain even if a cached answer is younger than [`ACCESS_TTL`].
    pub async fn document(
        &self,
        id: &DocumentId,
        refresh: bool,
    ) -> Result<Option<Arc<DocumentRecord>>, AccessError> {
        self.document_since(id, refresh.then(Instant::now)).await
    }

    async fn document_since(
        &self,
        id: &DocumentId,
        since: Option<Instant>,
    ) -> Result<Option<Arc<DocumentRecord>>, AccessError> {
        if let Some(hit) = self.lock().documents.get(id, since) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let at = Instant::now();
        let record = self
            .ask(
                |ledger| Ok(ledger.record(id)),
                |client| async move { client.record(id).await },
            )
            .await?
            .map(Arc::new);
        self.lock().documents.remember(*id, record.clone(), at);
        Ok(record)
    }

    /// Whether `document` waits for an open proposal that would register it
    /// (`chain::workflow`), as of the newest block: its stored bytes are not orphans. Not
    /// cached.
    pub async fn awaits_registration(&self, document: &DocumentId) -> Result<bool, AccessError> {
        self.ask(
            |ledger| Ok(ledger.awaits_registration(document)),
            |client| async move { client.awaits_registration(document).await },
        )
        .await
    }

    /// Whether `who` is an operator: operators read, repair and move every shard.
    async fn is_operator(
        &self,
        who: &PublicId,
        since: Option<Instant>,
    ) -> Result<bool, AccessError> {
        Ok(self.role_since(who, since).await? == Some(Role::Operator))
    }

    /// Allowed when `who` has one of `roles`; else refused naming `action`.
    pub async fn require(
        &self,
        who: &PublicId,
        roles: &[Role],
        action: &'static str,
    ) -> Result<(), AccessError> {
        let start = Instant::now();
        let mut since = None;
        loop {
            match self.role_since(who, since).await? {
                Some(role) if roles.contains(&role) => return Ok(()),
                _ if since.is_none() => since = Some(start),
                role => {
                    return Err(AccessError::Forbidden {
                        who: *who,
                        role: role.map_or_else(|| "no account".to_string(), |r| r.to_string()),
                        action,
                    });
                }
            }
        }
    }

    /// How much of the chain's document records `who` may see (see [`ChainScope`]); a
    /// validator's host is `Everything` whatever its account.
    pub async fn chain_scope(&self, who: &PublicId) -> Result<ChainScope, AccessError> {
        Ok(match self.role(who, false).await? {
            Some(Role::Operator | Role::Node | Role::Validator) => ChainScope::Everything,
            _ => ChainScope::Own,
        })
    }

    /// Storing shards and manifests: departments (their puts) and operators (repair and
    /// rebalance copies).
    pub async fn may_store(&self, who: &PublicId) -> Result<(), AccessError> {
        self.require(
            who,
            &[Role::Department, Role::Operator],
            "store shards or manifests",
        )
        .await
    }

    /// Listing, usage, scrub: operators.
    pub async fn may_maintain(
        &self,
        who: &PublicId,
        action: &'static str,
    ) -> Result<(), AccessError> {
        self.require(who, &[Role::Operator], action).await
    }

    /// Whether `who` may read document `id` now: its owner, a live grantee or an operator,
    /// and only while it is registered.
    pub async fn may_read(&self, who: &PublicId, id: &DocumentId) -> Result<(), AccessError> {
        Self::refused_twice(|since| async move {
            let record = self.registered(id, since).await?;
            if record.may_read(who, crate::now_ms()) || self.is_operator(who, since).await? {
                Ok(())
            } else {
                Err(AccessError::NotGranted {
                    who: *who,
                    document: *id,
                })
            }
        })
        .await
    }

    /// Whether the caller `gateway` may read `delegation.document` for the citizen who signed
    /// `delegation` now: the delegation names `gateway` (the caller's TLS identity), is
    /// signed by the citizen for this chain and not expired nor living too long
    /// (`delegation`), and the citizen holds a live grant on the document. Ownership or a
    /// role of the citizen's key count for nothing here, nor does anything the gateway's own
    /// key may do.
    pub async fn may_read_delegated(
        &self,
        gateway: &PublicId,
        delegation: &Delegation,
    ) -> Result<(), AccessError> {
        self.check_delegation(gateway, delegation).await?;
        self.has_live_grant(&delegation.citizen, &delegation.document)
            .await
    }

    /// The part of [`ChainView::may_read_delegated`] that needs no document record: the
    /// delegation names the caller `gateway`, is signed by its citizen for this chain, and
    /// is neither expired nor living too long.
    pub async fn check_delegation(
        &self,
        gateway: &PublicId,
        delegation: &Delegation,
    ) -> Result<(), AccessError> {
        if delegation.gateway != *gateway {
            return Err(AccessError::BadDelegation(format!(
                "it names gateway {}, not the caller {gateway}",
                delegation.gateway
            )));
        }
        let chain = self.chain_key().await?;
        delegation
            .verify(&chain.0, crate::now_ms())
            .map_err(|e| AccessError::BadDelegation(e.to_string()))
    }

    /// Whether the caller `gateway` may fetch `shard` of `document` for `citizen` on a
    /// connection with `opened`: the document opened there under `citizen`'s delegation
    /// (its signature checked then), naming the shard, the delegation not expired, and the
    /// citizen's grant still live.
    pub async fn may_read_delegated_shard(
        &self,
        gateway: &PublicId,
        shard: &ShardId,
        document: &DocumentId,
        citizen: &PublicId,
        opened: &OpenDocuments,
    ) -> Result<(), AccessError> {
        let Some(delegation) = opened.delegation_for(document, citizen, shard) else {
            return Err(AccessError::NotOpened {
                who: *gateway,
                shard: *shard,
            });
        };
        let now = crate::now_ms();
        if delegation.expires_ms <= now {
            return Err(AccessError::BadDelegation(format!(
                "it expired at {} (now {now})",
                delegation.expires_ms
            )));
        }
        self.has_live_grant(citizen, document).await
    }

    /// Whether `who` holds a live grant on `id` (not ownership, not a role).
    async fn has_live_grant(&self, who: &PublicId, id: &DocumentId) -> Result<(), AccessError> {
        Self::refused_twice(|since| async move {
            let record = self.registered(id, since).await?;
            if record.live_grant(who, crate::now_ms()).is_some() {
                Ok(())
            } else {
                Err(AccessError::NotGranted {
                    who: *who,
                    document: *id,
                })
            }
        })
        .await
    }

    /// Whether `who` may see document `id`'s read records (`GetAudit`): its owner and
    /// operators only, since who read a citizen's document is itself sensitive.
    pub async fn may_audit(&self, who: &PublicId, id: &DocumentId) -> Result<(), AccessError> {
        Self::refused_twice(|since| async move {
            let record = self.registered(id, since).await?;
            if record.owner == *who || self.is_operator(who, since).await? {
                Ok(())
            } else {
                Err(AccessError::NotAuditor {
                    who: *who,
                    document: *id,
                })
            }
        })
        .await
    }

    /// The key this chain's transactions are signed for: the own ledger's, else the
    /// validator hosts'.
    pub async fn chain_key(&self) -> Result<crate::chain::tx::ChainKey, AccessError> {
        if let Some(ledger) = &self.ledger {
            return Ok(ledger.chain_key());
        }
        let client = self.remote().ok_or(AccessError::NoChain)?;
        client
            .chain_key()
            .await
            .map_err(|e| AccessError::ChainUnreachable(e.to_string()))
    }

    /// The nonce of `who`'s last applied transaction, asked fresh (`None`: no account).
    pub async fn nonce(&self, who: &PublicId) -> Result<Option<u64>, AccessError> {
        self.ask(
            |ledger| Ok(ledger.account(who).map(|a| a.nonce)),
            |client| async move { Ok(client.account(who).await?.map(|a| a.nonce)) },
        )
        .await
    }

    /// Submits a signed transaction to the chain and waits for its block: `Ok(Err(reason))`
    /// when the chain refused it, `Err` when the chain could not be asked.
    pub async fn submit(
        &self,
        tx: crate::chain::tx::SignedTx,
    ) -> Result<Result<u64, String>, AccessError> {
        // The own ledger forwards to the leader, behind or not.
        if let Some(ledger) = &self.ledger {
            return match ledger.submit(tx).await {
                Ok(r) => Ok(Ok(r.height)),
                Err(
                    e @ (crate::chain::ledger::LedgerError::Unavailable(_)
                    | crate::chain::ledger::LedgerError::Busy(_)
                    | crate::chain::ledger::LedgerError::Stopped),
                ) => Err(AccessError::ChainUnreachable(e.to_string())),
                Err(e) => Ok(Err(e.to_string())),
            };
        }
        let client = self.remote().ok_or(AccessError::NoChain)?;
        match client.submit_tx(&tx).await {
            Ok((height, _)) => Ok(Ok(height)),
            Err(ChainError::Refused(reason)) => Ok(Err(reason)),
            Err(e) => Err(AccessError::ChainUnreachable(e.to_string())),
        }
    }

    /// Whether transaction `id` is on the chain.
    pub async fn has_transaction(&self, id: [u8; 32]) -> Result<bool, AccessError> {
        self.ask(
            |ledger| {
                ledger
                    .transaction(&id)
                    .map(|t| t.is_some())
                    .map_err(|e| AccessError::ChainUnreachable(e.to_string()))
            },
            |client| async move { Ok(client.tx(id).await?.is_some()) },
        )
        .await
    }

    /// Runs `check` on cached answers and, if it refuses for want of a record or a grant,
    /// once more on answers fetched since it started: a refusal is never decided by a stale
    /// cache, and an answer fetched for this very request is not asked twice (a refused
    /// request for an id nobody registered costs one chain query).
    async fn refused_twice<F, Fut>(check: F) -> Result<(), AccessError>
    where
        F: Fn(Option<Instant>) -> Fut,
        Fut: Future<Output = Result<(), AccessError>>,
    {
        let start = Instant::now();
        match check(None).await {
            Err(
                AccessError::NotRegistered(_)
                | AccessError::NotGranted { .. }
                | AccessError::NotAuditor { .. }
                | AccessError::NotCollectable { .. },
            ) => check(Some(start)).await,
            done => done,
        }
    }

    /// Document `id`'s record, refused if it is not registered.
    async fn registered(
        &self,
        id: &DocumentId,
        since: Option<Instant>,
    ) -> Result<Arc<DocumentRecord>, AccessError> {
        self.document_since(id, since)
            .await?
            .ok_or(AccessError::NotRegistered(*id))
    }

    /// Whether `who` may delete document `id`'s manifest: an operator, or the owning
    /// department once a newer version superseded it (`dangan rekey|supersede` collecting
    /// the old version).
    pub async fn may_delete_manifest(
        &self,
        who: &PublicId,
        id: &DocumentId,
    ) -> Result<(), AccessError> {
        if self.is_operator(who, None).await? {
            return Ok(());
        }
        Self::refused_twice(|since| async move {
            let record = self.registered(id, since).await?;
            if record.owner == *who && record.superseded_by.is_some() {
                Ok(())
            } else {
                Err(AccessError::NotCollectable {
                    who: *who,
                    document: *id,
                })
            }
        })
        .await
    }

    /// Whether `who` may drop `document`'s references to shards (`DeleteShard` naming it):
    /// the same rule as its manifest ([`ChainView::may_delete_manifest`]). The delete drops
    /// only that document's reference (`store`), so no shard need be shown: a document that
    /// holds no reference to a shard loses nothing.
    pub async fn may_delete_shard(
        &self,
        who: &PublicId,
        document: &DocumentId,
    ) -> Result<(), AccessError> {
        self.may_delete_manifest(who, document).await
    }

    /// Whether `who` may fetch `shard` on a connection with `opened`: an operator always;
    /// anyone else only for a shard of a document opened on this connection that they may
    /// still read now. Allowed, it names the open document the read is of (`None`: an
    /// operator's read of a shard no open document names).
    pub async fn may_read_shard(
        &self,
        who: &PublicId,
        shard: &ShardId,
        opened: &OpenDocuments,
    ) -> Result<Option<DocumentId>, AccessError> {
        let documents = opened.documents_with(shard);
        let mut refusal = None;
        for document in &documents {
            match self.may_read(who, document).await {
                Ok(()) => return Ok(Some(*document)),
                Err(e) => refusal = Some(e),
            }
        }
        match self
            .require(who, &[Role::Operator], "read unopened shards")
            .await
        {
            Err(AccessError::Forbidden { .. }) => Err(refusal.unwrap_or(AccessError::NotOpened {
                who: *who,
                shard: *shard,
            })),
            done => done.map(|()| None),
        }
    }
}

fn fresh(at: Instant) -> bool {
    at.elapsed() < ACCESS_TTL
}

/// The documents a connection has opened (`Request::OpenDocument`, or
/// `Request::OpenDelegated` for a citizen): the shard ids of each manifest, at most
/// [`MAX_OPEN_DOCUMENTS`] openings (the oldest is dropped first). A delegated opening is
/// kept apart per citizen and serves only `GetDelegatedShard` naming that citizen.
#[derive(Debug, Default)]
pub struct OpenDocuments {
    documents: Mutex<VecDeque<Opening>>,
}

#[derive(Debug)]
struct Opening {
    document: DocumentId,
    shards: HashSet<ShardId>,
    delegation: Option<Delegation>,
}

impl Opening {
    fn citizen(&self) -> Option<PublicId> {
        self.delegation.map(|d| d.citizen)
    }
}

impl OpenDocuments {
    /// Checks that `manifest` (the bytes a reader sent) hashes to `document` and decodes,
    /// and opens it: returns how many distinct shards it names.
    pub fn open(&self, document: DocumentId, manifest: &[u8]) -> Result<usize, AccessError> {
        self.open_as(document, manifest, None)
    }

    /// As [`OpenDocuments::open`], for `delegation.document` on behalf of the citizen who
    /// signed `delegation` (already checked by [`ChainView::may_read_delegated`]).
    pub fn open_delegated(
        &self,
        delegation: &Delegation,
        manifest: &[u8],
    ) -> Result<usize, AccessError> {
        self.open_as(delegation.document, manifest, Some(*delegation))
    }

    fn open_as(
        &self,
        document: DocumentId,
        manifest: &[u8],
        delegation: Option<Delegation>,
    ) -> Result<usize, AccessError> {
        if !document.verifies(manifest) {
            return Err(AccessError::ManifestMismatch(document));
        }
        let decoded = Manifest::decode(manifest).map_err(|e| AccessError::BadManifest {
            document,
            reason: e.to_string(),
        })?;
        let shards: HashSet<ShardId> = decoded.stripes.into_iter().flatten().collect();
        let count = shards.len();
        self.insert(document, shards, delegation);
        Ok(count)
    }

    fn insert(
        &self,
        document: DocumentId,
        shards: HashSet<ShardId>,
        delegation: Option<Delegation>,
    ) {
        let mut open = self.documents.lock().unwrap_or_else(|e| e.into_inner());
        let citizen = delegation.map(|d| d.citizen);
        open.retain(|o| !(o.document == document && o.citizen() == citizen));
        if open.len() >= MAX_OPEN_DOCUMENTS {
            open.pop_front();
        }
        open.push_back(Opening {
            document,
            shards,
            delegation,
        });
    }

    /// The documents opened directly (not under a delegation) that name `shard`.
    pub fn documents_with(&self, shard: &ShardId) -> Vec<DocumentId> {
        self.documents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|o| o.delegation.is_none() && o.shards.contains(shard))
            .map(|o| o.document)
            .collect()
    }

    /// The delegation `document` was opened under for `citizen`, if that opening names
    /// `shard`.
    pub fn delegation_for(
        &self,
        document: &DocumentId,
        citizen: &PublicId,
        shard: &ShardId,
    ) -> Option<Delegation> {
        self.documents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|o| {
                o.document == *document && o.citizen() == Some(*citizen) && o.shards.contains(shard)
            })
            .and_then(|o| o.delegation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{self, DocumentInfo};
    use crate::manifest::CodingParams;

    fn manifest() -> Vec<u8> {
        let params = CodingParams {
            k: 2,
            m: 1,
            segment_size: 1024,
            segments_per_stripe: 1,
        };
        let info = DocumentInfo {
            department: "d".into(),
            document_type: "t".into(),
            created_at_ms: Some(1),
        };
        let (manifest, _) = codec::encode(&vec![7u8; 5000][..], params, info, |_| Ok(())).unwrap();
        manifest.encode()
    }

    #[test]
    fn an_open_manifest_names_its_shards_and_nothing_else() {
        let bytes = manifest();
        let id = DocumentId::of(&bytes);
        let open = OpenDocuments::default();
        let decoded = Manifest::decode(&bytes).unwrap();
        let n = open.open(id, &bytes).unwrap();
        assert!(n >= 3);
        for shard in decoded.stripes.iter().flatten() {
            assert_eq!(open.documents_with(shard), vec![id]);
        }
        assert!(open.documents_with(&ShardId::of(b"other")).is_empty());

        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(matches!(
            open.open(id, &bad),
            Err(AccessError::ManifestMismatch(_))
        ));
        let garbage = b"not a manifest".to_vec();
        assert!(matches!(
            open.open(DocumentId::of(&garbage), &garbage),
            Err(AccessError::BadManifest { .. })
        ));
    }

    #[test]
    fn a_connection_keeps_a_bounded_number_of_documents_open() {
        let bytes = manifest();
        let id = DocumentId::of(&bytes);
        let open = OpenDocuments::default();
        open.open(id, &bytes).unwrap();
        let first = Manifest::decode(&bytes).unwrap().stripes[0][0];
        // Re-opening does not duplicate it.
        open.open(id, &bytes).unwrap();
        assert_eq!(open.documents.lock().unwrap().len(), 1);
        for i in 0..MAX_OPEN_DOCUMENTS - 1 {
            open.insert(DocumentId::of(&[i as u8]), HashSet::new(), None);
        }
        assert_eq!(open.documents_with(&first), vec![id]);
        open.insert(DocumentId::of(b"one more"), HashSet::new(), None);
        assert!(
            open.documents_with(&first).is_empty(),
            "the oldest was closed"
        );
        assert_eq!(open.documents.lock().unwrap().len(), MAX_OPEN_DOCUMENTS);
    }

    #[test]
    fn only_errors_the_chain_could_not_decide_are_retryable() {
        let who = Identity::generate(Role::Citizen).public();
        let document = DocumentId::of(b"x");
        for e in [
            AccessError::ChainUnreachable("down".into()),
            AccessError::Behind("no other validator".into()),
            AccessError::TimedOut(Duration::from_secs(2)),
        ] {
            assert!(e.is_retryable(), "{e}");
        }
        for e in [
            AccessError::NotRegistered(document),
            AccessError::NotGranted { who, document },
            AccessError::NoChain,
        ] {
            assert!(!e.is_retryable(), "{e}");
        }
    }

    #[test]
    fn ids_nobody_registered_never_push_out_an_answer_that_allows() {
        let mut answers: Answers<DocumentId, u32> = Answers::default();
        let mine = DocumentId::of(b"a department's document");
        let at = Instant::now();
        answers.remember(mine, Some(7), at);
        for i in 0..(MAX_CACHED as u32 * 2 + 1) {
            answers.remember(DocumentId::of(&i.to_le_bytes()), None, at);
        }
        assert_eq!(answers.get(&mine, None), Some(Some(7)));
        assert!(answers.absent.len() <= MAX_CACHED);
        // An answer fetched before `since` is not used; one fetched since is.
        let later = Instant::now();
        assert_eq!(answers.get(&mine, Some(later)), None);
        answers.remember(mine, None, later);
        assert_eq!(answers.get(&mine, Some(later)), Some(None));
        assert!(!answers.found.contains_key(&mine), "withdrawn");
    }

    #[tokio::test]
    async fn an_unlinked_view_refuses_everything() {
        let view = ChainView::unlinked();
        let who = Identity::generate(Role::Operator).public();
        assert!(matches!(
            view.may_store(&who).await,
            Err(AccessError::NoChain)
        ));
        assert!(matches!(
            view.may_read(&who, &DocumentId::of(b"x")).await,
            Err(AccessError::NoChain)
        ));
    }
}
