//! The chain client: how document clients, storage peers (`access`) and command-line tools
//! ask the chain and submit to it, over the transport (`net`).
//!
//! One entry, [`ChainClient::call`]: the request goes to the validator host that answered
//! last, then to each other host in turn while they are unreachable or answer
//! `Unavailable` (no leader yet, or behind), three rounds half a second apart. Everything
//! else is built on it: typed queries ([`ChainClient::query`]), submissions that follow
//! the leader ([`ChainClient::submit_tx`]), and proofs checked here against the validator
//! set, never trusted ([`ChainClient::registration`], [`ChainClient::block`],
//! [`ChainClient::tx`]): a block is final only with a majority of the validators of its
//! height, whose changes since genesis are themselves proven ([`ValidatorHistory`]).
//!
//! Not for: validator-to-validator traffic (raft, endorsements: `chain::raft` and
//! `chain::ledger` send those with `net` directly), or documents (the document client).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::RecvStream;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use super::block::{Block, BlockError, TxInclusion};
use super::checkpoint::{Checkpoint, StoredCheckpoint};
use super::ledger::ChainStatus;
use super::names::{BucketRecord, NamePage, NameRecord};
use super::proof::{
    ProofError, Proven, ProvenAccount, ProvenAwaiting, ProvenDocuments, ProvenGranted,
    ProvenProposal, ProvenRecord, ProvenRecordEntry, ProvenState, ProvenType,
};
use super::records::{RecordEntry, TypeRecord};
use super::state::{Account, ChainLayouts, DocumentRecord};
use super::tx::{ChainKey, SignedTx, Tx, TxBody};
use super::validators::{self, HistoryError, ValidatorHistory};
use super::workflow::{Proposal, ProposalId};
use crate::id::DocumentId;
use crate::identity::{Identity, PublicId};
use crate::net::{Net, NetError};
use crate::placement::{Layout, NodeInfo};
use crate::proto::{self, Request, Response};

/// Time limit of one chain query to one validator host (the default query timeout), and
/// of one submission (which waits for its block): past it the next host is asked.
pub const CHAIN_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
pub const CHAIN_SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How a refusal for a nonce that is not the next ends (`TxError::BadNonce`, as the
/// validators send it).
const NONCE_REFUSAL: &str = "replayed or out of order";
/// Times a submission signs again after its nonce was taken by another client.
const NONCE_RETRIES: u32 = 8;

/// Where the chain is: the peers that host validators (asked in turn: one that is down or
/// answers `Unavailable` is skipped), and the validator set whose signatures make a block
/// final (from the genesis file).
#[derive(Debug, Clone)]
pub struct ChainLink {
    pub hosts: Vec<NodeInfo>,
    pub validators: Vec<PublicId>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error("this cluster has no [chain] section")]
    NoChain,
    #[error("no validator hosts configured")]
    NoHosts,
    /// The chain (a validator) said no: the transaction or the query is not allowed.
    /// Nothing changed.
    #[error("the chain refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Net(NetError),
    #[error("this client ({0}) has no account on the chain")]
    NoAccount(PublicId),
    #[error("document {0} was not found on the chain: it is not registered")]
    NotRegistered(DocumentId),
    #[error(
        "no leader took the transaction within {CHAIN_SUBMIT_TIMEOUT:?}: the validators kept \
         naming other leaders (last {last})"
    )]
    NoLeader { last: String },
    #[error("the validator has no {0}")]
    Missing(&'static str),
    #[error("{what} from the chain does not decode: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("{what}: {source}")]
    Proof {
        what: String,
        #[source]
        source: BlockError,
    },
    /// A chain answer whose proof does not check out: the validator host that sent it is
    /// faulty or lying, and nothing was acted on.
    #[error("{what} from validator host {host} was refused: {source}")]
    Unproven {
        what: &'static str,
        host: String,
        #[source]
        source: Box<ProofError>,
    },
    /// Every validator host answered from an older block than one this client already
    /// checked: a host kept back (or replayed) newer state; nothing was acted on.
    #[error(
        "{what} from the chain is as of block {got}, older than block {seen} already seen here; no validator host answered newer state"
    )]
    Stale {
        what: &'static str,
        got: u64,
        seen: u64,
    },
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("the validator answered with another transaction")]
    OtherTransaction,
    #[error("the chain answered with a proof of another department's transaction for {0}")]
    OtherSender(DocumentId),
    #[error(transparent)]
    Checkpoint(#[from] super::checkpoint::CheckpointError),
}

impl From<NetError> for ChainError {
    /// A validator's `Refused` is the chain's answer, not a transport failure.
    fn from(e: NetError) -> Self {
        match e.refusal() {
            Some(reason) => ChainError::Refused(reason.to_string()),
            None => ChainError::Net(e),
        }
    }
}

impl ChainError {
    /// The chain could not be asked now (no host answered, no leader): asking again
    /// later may succeed. A refusal or a bad proof is final.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            ChainError::Net(_) | ChainError::NoLeader { .. } | ChainError::Stale { .. }
        )
    }
}

/// A client of the chain, as one identity (the signer of its transactions). Cheap to clone.
#[derive(Clone)]
pub struct ChainClient {
    inner: Arc<Inner>,
}

struct Inner {
    net: Net,
    identity: Identity,
    link: ChainLink,
    /// Time limit of one query to one validator host.
    query_timeout: Duration,
    /// Index in `ChainLink::hosts` of the validator host that answered last.
    host: AtomicUsize,
    /// The next nonce for this identity's transactions, once known.
    nonce: tokio::sync::Mutex<Option<u64>>,
    /// The chain key transactions are signed for, once proven (`ChainClient::chain_key`).
    chain_key: tokio::sync::OnceCell<ChainKey>,
    /// The validator set changes proven so far from `ChainLink::validators` (none until a
    /// check needs them).
    validators: Mutex<Option<Arc<ValidatorHistory>>>,
    /// The height of the newest state proven to this client: an answer from an older
    /// block is stale (`chain::proof`).
    newest: AtomicU64,
}

impl ChainClient {
    /// Asks the chain at `link` over `net`, signing as `identity`; each query to one host
    /// within `query_timeout` (and the transport's request timeout).
    pub fn new(net: Net, identity: &Identity, link: ChainLink, query_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                net,
                identity: identity.clone(),
                link,
                query_timeout,
                host: AtomicUsize::new(0),
                nonce: tokio::sync::Mutex::new(None),
                chain_key: tokio::sync::OnceCell::new(),
                validators: Mutex::new(None),
                newest: AtomicU64::new(0),
            }),
        }
    }

    pub fn link(&self) -> &ChainLink {
        &self.inner.link
    }

    pub fn net(&self) -> &Net {
        &self.inner.net
    }

    /// The identity this client signs as.
    pub fn public(&self) -> PublicId {
        self.inner.identity.public()
    }

    /// One request to the chain: to the validator host that answered last, then to each
    /// other host in turn while they are unreachable or answer `Unavailable` (no leader
    /// yet). A definite answer (including a refusal) ends the search.
    pub async fn call(
        &self,
        req: &Request,
        body: Option<&Bytes>,
    ) -> Result<(Response, RecvStream, NodeInfo), ChainError> {
        let hosts = &self.inner.link.hosts;
        let n = hosts.len();
        if n == 0 {
            return Err(ChainError::NoHosts);
        }
        let first = self.inner.host.load(Ordering::Relaxed) % n;
        let limit = match req {
            Request::SubmitTx { .. } => CHAIN_SUBMIT_TIMEOUT,
            _ => self.inner.query_timeout,
        }
        .min(self.inner.net.options().request_timeout);
        let mut last = None;
        // Three rounds half a second apart: a leader election takes about a second, and
        // meanwhile validators without a leader answer `Unavailable`.
        for attempt in 0..3 * n {
            let i = (first + attempt) % n;
            let node = &hosts[i];
            match self.inner.net.exchange_within(node, req, body, limit).await {
                Ok((resp, recv)) => {
                    self.inner.host.store(i, Ordering::Relaxed);
                    return Ok((resp, recv, node.clone()));
                }
                Err(e) if worth_another_host(&e) => {
                    debug!(host = %node.key.short(), error = %e, "validator host failed; trying the next");
                    // Calls that start from now on begin at the next host, so a host that
                    // stopped answering (cut off, not refusing connections) costs one wait,
                    // not one per call until it is marked down.
                    let _ = self.inner.host.compare_exchange(
                        i,
                        (i + 1) % n,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    last = Some(e);
                    if (attempt + 1) % n == 0 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.expect("at least one host was asked").into())
    }

    /// A chain query: the record's bytes, or `None` if the chain has no such record.
    async fn query_bytes(&self, req: &Request) -> Result<Option<Vec<u8>>, ChainError> {
        let net = &self.inner.net;
        match self.call(req, None).await? {
            (Response::ChainBody { len }, mut recv, node) => read_record(&mut recv, len)
                .await
                .map(Some)
                .map_err(|e| net.peer_error(&node, e).into()),
            (Response::NotFound, _, _) => Ok(None),
            (other, _, node) => Err(net.unexpected(&node, other).into()),
        }
    }

    /// A chain query decoded as `T` (`what` names it in errors); `None` if the chain has
    /// no such record.
    pub async fn query<T: DeserializeOwned>(
        &self,
        req: &Request,
        what: &'static str,
    ) -> Result<Option<T>, ChainError> {
        self.query_bytes(req)
            .await?
            .map(|body| decode(&body, what))
            .transpose()
    }

    /// A query whose record the chain always has.
    async fn query_some<T: DeserializeOwned>(
        &self,
        req: &Request,
        what: &'static str,
    ) -> Result<T, ChainError> {
        self.query(req, what)
            .await?
            .ok_or(ChainError::Missing(what))
    }

    /// Asks every validator host but the one that answered last; the first record found.
    async fn query_others(&self, req: &Request) -> Option<Vec<u8>> {
        let hosts = &self.inner.link.hosts;
        let last = self.inner.host.load(Ordering::Relaxed) % hosts.len().max(1);
        for (i, node) in hosts.iter().enumerate() {
            if i == last {
                continue;
            }
            if let Ok(Some(body)) = self
                .inner
                .net
                .fetch(node, req, None, proto::MAX_CHAIN_BODY)
                .await
            {
                return Some(body);
            }
        }
        None
    }

    /// Signs `body` with this client's key and the next nonce of its account, submits it
    /// and waits until its block is final: (height, index in the block).
    ///
    /// Another client of the same identity (a clerk's `dangan put` beside the department's
    /// gateway) takes nonces this one does not see: a refusal for a nonce that is not the
    /// next makes it learn the account's nonce from the chain and sign again (a refused
    /// transaction was not applied, so nothing is done twice), a few times at most.
    pub async fn submit(&self, body: TxBody) -> Result<(u64, u32), ChainError> {
        self.submit_numbered(body)
            .await
            .map(|(_, height, index)| (height, index))
    }

    /// [`ChainClient::submit`], also saying the nonce the committed transaction carries
    /// (what a proposal's id is derived from, `workflow::ProposalId::of`).
    pub async fn submit_numbered(&self, body: TxBody) -> Result<(u64, u64, u32), ChainError> {
        let mut attempt = 0;
        loop {
            let mut next = self.inner.nonce.lock().await;
            let nonce = match *next {
                Some(n) => n,
                None => match self.own_nonce().await {
                    Ok(n) => n + 1,
                    Err(e) => return Err(e),
                },
            };
            *next = Some(nonce + 1);
            drop(next);
            let chain = match self.chain_key().await {
                Ok(chain) => chain,
                Err(e) => {
                    *self.inner.nonce.lock().await = None;
                    return Err(e);
                }
            };
            let tx = Tx {
                sender: self.inner.identity.public(),
                nonce,
                body: body.clone(),
            }
            .sign(&self.inner.identity, &chain);
            match self.submit_tx(&tx).await {
                Ok((height, index)) => return Ok((nonce, height, index)),
                Err(ChainError::Refused(reason))
                    if reason.contains(NONCE_REFUSAL) && attempt < NONCE_RETRIES =>
                {
                    attempt += 1;
                    tracing::debug!(nonce, attempt, %reason, "nonce taken elsewhere: signing again");
                    *self.inner.nonce.lock().await = None;
                    tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
                }
                Err(e) => {
                    // The nonce may not have been used: ask the chain again next time.
                    *self.inner.nonce.lock().await = None;
                    return Err(e);
                }
            }
        }
    }

    /// Submits a signed transaction (to its validator hosts in turn, see [`ChainLink`])
    /// and waits until its block is committed: (height, index in block).
    pub async fn submit_tx(&self, tx: &SignedTx) -> Result<(u64, u32), ChainError> {
        let net = &self.inner.net;
        let hosts = &self.inner.link.hosts;
        let bytes = Bytes::from(tx.encode());
        let req = Request::SubmitTx {
            len: bytes.len() as u64,
        };
        // To the host that answered last; a follower names the leader, which is asked
        // directly from then on (a few hops at most while leadership moves). Right after a
        // leader dies its followers still name it for up to `LEADER_FRESH`: redirects that
        // go round the hosts pause, longer each time, until an election has had its time.
        let deadline = Instant::now() + CHAIN_SUBMIT_TIMEOUT;
        let mut pause = Duration::from_millis(50);
        let mut hops = 0;
        let mut leader: Option<NodeInfo> = None;
        let mut ambiguous = false;
        loop {
            let answer = match &leader {
                Some(node) => net
                    .exchange_within(node, &req, Some(&bytes), CHAIN_SUBMIT_TIMEOUT)
                    .await
                    .map(|(resp, _)| (resp, node.clone()))
                    .map_err(ChainError::from),
                None => self
                    .call(&req, Some(&bytes))
                    .await
                    .map(|(resp, _, node)| (resp, node)),
            };
            match answer {
                Ok((Response::Committed { height, index }, _)) => return Ok((height, index)),
                Ok((Response::Leader(node), _)) => {
                    if let Some(i) = hosts.iter().position(|h| h.key == node.key) {
                        self.inner.host.store(i, Ordering::Relaxed);
                    }
                    hops += 1;
                    if hops > hosts.len() {
                        if Instant::now() + pause > deadline {
                            return Err(ChainError::NoLeader {
                                last: node.key.short(),
                            });
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(500));
                        hops = 0;
                    }
                    leader = Some(node);
                }
                Ok((other, node)) => return Err(net.unexpected(&node, other).into()),
                Err(ChainError::Net(e)) if leader.is_some() && worth_another_host(&e) => {
                    // The leader may have taken it before it went: ask the others.
                    ambiguous = true;
                    leader = None;
                }
                Err(ChainError::Refused(reason)) if ambiguous && reason.contains(NONCE_REFUSAL) => {
                    // An earlier attempt committed after all.
                    return match self.tx(tx.id()).await? {
                        Some(p) => Ok((p.header.header.height, p.proof.index as u32)),
                        None => Err(ChainError::Refused(reason)),
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The last nonce the chain has applied for this client.
    async fn own_nonce(&self) -> Result<u64, ChainError> {
        let me = self.inner.identity.public();
        match self.account(&me).await? {
            Some(account) => Ok(account.nonce),
            None => Err(ChainError::NoAccount(me)),
        }
    }

    /// `id`'s account on the chain (its role, last nonce), or `None` (a citizen has none),
    /// proven against a final header.
    pub async fn account(&self, id: &PublicId) -> Result<Option<Account>, ChainError> {
        let p: ProvenAccount = self
            .proven(
                &Request::GetAccount { id: *id },
                "account",
                |p: &ProvenAccount, v| p.verify(id, v),
            )
            .await?;
        Ok(p.account)
    }

    /// `id`'s record on the chain (owner, grants; a grantee sees its own grant alone),
    /// proven against a final header; `None` if it is not registered.
    pub async fn record(&self, id: &DocumentId) -> Result<Option<DocumentRecord>, ChainError> {
        let p: ProvenRecord = self
            .proven(
                &Request::GetRecord { id: *id },
                "document record",
                |p: &ProvenRecord, v| p.verify(id, v),
            )
            .await?;
        Ok(p.record)
    }

    /// The state's top (layouts, validators, validator hosts) as of the newest block,
    /// proven against its final header.
    pub async fn state(&self) -> Result<ProvenState, ChainError> {
        self.proven(&Request::GetLayout, "layout", |p: &ProvenState, v| {
            p.verify(v)
        })
        .await
    }

    /// A proven answer: asked (see [`ChainClient::call`]), checked against the validators
    /// of its header's height, and refused if its proof fails or it is older than the
    /// newest state this client had proven when it asked; then each other host is asked in turn, and the
    /// first sound answer is taken (the next requests go to that host). A proof that fails
    /// is never acted on: that host is faulty or lying.
    async fn proven<P: DeserializeOwned + Proven>(
        &self,
        req: &Request,
        what: &'static str,
        check: impl Fn(&P, &[PublicId]) -> Result<(), ProofError>,
    ) -> Result<P, ChainError> {
        let net = &self.inner.net;
        // What was proven before this question was asked: an answer racing a concurrent
        // one that proved a newer block is not stale, one older than this is.
        let seen = self.inner.newest.load(Ordering::Relaxed);
        let (body, host) = match self.call(req, None).await? {
            (Response::ChainBody { len }, mut recv, node) => (
                read_record(&mut recv, len)
                    .await
                    .map_err(|e| ChainError::from(net.peer_error(&node, e)))?,
                node,
            ),
            (Response::NotFound, _, _) => return Err(ChainError::Missing(what)),
            (other, _, node) => return Err(net.unexpected(&node, other).into()),
        };
        let first = self.check_proven(&body, &host, what, &check).await;
        match &first {
            Ok(p) if p.height() >= seen => {
                self.inner.newest.fetch_max(p.height(), Ordering::Relaxed);
                return first;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(host = %host.key.short(), error = %e, "a validator host's answer was refused")
            }
        }
        // Unproven, or older than what this client has seen: a host lagging, faulty or
        // keeping newer state back. Another host may answer soundly.
        let hosts = &self.inner.link.hosts;
        for (i, node) in hosts.iter().enumerate().filter(|(_, h)| h.key != host.key) {
            let Ok(Some(body)) = net.fetch(node, req, None, proto::MAX_CHAIN_BODY).await else {
                continue;
            };
            match self.check_proven(&body, node, what, &check).await {
                Ok(p) if p.height() >= seen => {
                    self.inner.host.store(i, Ordering::Relaxed);
                    self.inner.newest.fetch_max(p.height(), Ordering::Relaxed);
                    return Ok(p);
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(host = %node.key.short(), error = %e, "a validator host's answer was refused")
                }
            }
        }
        match first {
            Ok(p) => Err(ChainError::Stale {
                what,
                got: p.height(),
                seen,
            }),
            Err(e) => Err(e),
        }
    }

    /// Decodes a proven answer from `host` and checks its proof.
    async fn check_proven<P: DeserializeOwned + Proven>(
        &self,
        body: &[u8],
        host: &NodeInfo,
        what: &'static str,
        check: &impl Fn(&P, &[PublicId]) -> Result<(), ProofError>,
    ) -> Result<P, ChainError> {
        let p: P = decode(body, what)?;
        self.check_final(p.height(), |v| check(&p, v))
            .await
            .map_err(|source| ChainError::Unproven {
                what,
                host: host.key.short(),
                source: Box::new(source),
            })?;
        Ok(p)
    }

    /// A block by height (checked: majority-signed by the validators of its height, and its
    /// transactions those its header commits to).
    pub async fn block(&self, height: u64) -> Result<Option<Block>, ChainError> {
        let Some(block) = self
            .query::<Block>(&Request::GetBlock { height }, "block")
            .await?
        else {
            return Ok(None);
        };
        self.check_final(block.header.header.height, |v| {
            block.header.verify_final(v)?;
            block.check_tx_root()
        })
        .await
        .map_err(|source| ChainError::Proof {
            what: format!("block {height}"),
            source,
        })?;
        Ok(Some(block))
    }

    /// A committed transaction by id, with its proof verified here.
    pub async fn tx(&self, id: [u8; 32]) -> Result<Option<TxInclusion>, ChainError> {
        let Some(proof) = self
            .query::<TxInclusion>(&Request::GetTx { id }, "transaction proof")
            .await?
        else {
            return Ok(None);
        };
        self.check_final(proof.header.header.height, |v| proof.verify(v))
            .await
            .map_err(|source| ChainError::Proof {
                what: format!("transaction {}", hex::encode(id)),
                source,
            })?;
        if proof.tx.id() != id {
            return Err(ChainError::OtherTransaction);
        }
        Ok(Some(proof))
    }

    /// The key this chain's transactions are signed for (asked once), proven against a
    /// final header like any other state entry: a lying host cannot make this client sign
    /// for another chain.
    pub async fn chain_key(&self) -> Result<ChainKey, ChainError> {
        self.inner
            .chain_key
            .get_or_try_init(|| async { Ok(self.state().await?.top.chain_key) })
            .await
            .copied()
    }

    /// The chain's status.
    pub async fn status(&self) -> Result<ChainStatus, ChainError> {
        self.query_some(&Request::ChainStatus, "status").await
    }

    /// The chain's current layout and the one before the last change, proven.
    pub async fn layouts(&self) -> Result<ChainLayouts, ChainError> {
        Ok(self.state().await?.top.layouts())
    }

    /// The cluster layout committed on the chain, proven.
    pub async fn layout(&self) -> Result<Layout, ChainError> {
        Ok(self.layouts().await?.current)
    }

    /// Up to `limit` registered document ids after `after`, in id order, proven complete:
    /// fewer than `limit` means there are no more.
    pub async fn documents(
        &self,
        after: Option<DocumentId>,
        limit: u32,
    ) -> Result<Vec<DocumentId>, ChainError> {
        let req = Request::ListDocuments { after, limit };
        let page = self
            .proven(&req, "document list", |p: &ProvenDocuments, v| {
                p.verify(after.as_ref(), limit as usize, v)
            })
            .await?;
        Ok(page.ids(after.as_ref(), limit as usize))
    }

    /// A page of the documents with a live grant to `grantee` (at most
    /// [`proof::MAX_GRANTED`](super::proof::MAX_GRANTED)) from a scan after `after`, each
    /// record as this client may see it, proven; and where the next page's scan starts
    /// (`None`: no more). A page may be empty and still have a next one.
    pub async fn granted(
        &self,
        grantee: &PublicId,
        after: Option<DocumentId>,
    ) -> Result<(Vec<(DocumentId, DocumentRecord)>, Option<DocumentId>), ChainError> {
        let req = Request::ListGranted {
            grantee: *grantee,
            after,
        };
        let page = self
            .proven(&req, "granted documents", |p: &ProvenGranted, v| {
                p.verify(grantee, after.as_ref(), v)
            })
            .await?;
        let found = page.entries.into_iter().map(|e| (e.id, e.record)).collect();
        Ok((found, page.next))
    }

    /// A proposal (`chain::workflow`) with its answers and outcome, and the height of the
    /// block its state is from, proven against a final header; `None` if the chain holds
    /// no such proposal.
    pub async fn proposal(&self, id: &ProposalId) -> Result<Option<(Proposal, u64)>, ChainError> {
        let p: ProvenProposal = self
            .proven(
                &Request::GetProposal { id: id.0 },
                "proposal",
                |p: &ProvenProposal, v| p.verify(id, v),
            )
            .await?;
        let height = p.height();
        Ok(p.proposal.map(|proposal| (proposal, height)))
    }

    /// The proposals open now that name this client as an approver and that it has not
    /// answered, after `after` (a page: see `workflow::MAX_PROPOSAL_PAGE`), as the
    /// validator host answering says: prove each with [`ChainClient::proposal`].
    pub async fn proposals_awaiting_me(
        &self,
        after: Option<ProposalId>,
    ) -> Result<Vec<ProposalId>, ChainError> {
        let req = Request::ListProposals {
            after: after.map(|a| a.0),
        };
        self.query_some(&req, "proposal list").await
    }

    /// Whether `document` waits, as of the newest block, for an open proposal that would
    /// register it, proven against a final header.
    pub async fn awaits_registration(&self, document: &DocumentId) -> Result<bool, ChainError> {
        let p: ProvenAwaiting = self
            .proven(
                &Request::GetAwaiting {
                    document: *document,
                },
                "awaiting document",
                |p: &ProvenAwaiting, v| p.verify(document, v),
            )
            .await?;
        Ok(p.waits())
    }

    /// Document type `name` at `version` (its current version without), proven against a
    /// final header; `None` if there is no such type or version.
    pub async fn doc_type(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> Result<Option<TypeRecord>, ChainError> {
        let req = Request::GetType {
            name: name.to_string(),
            version,
        };
        let p: ProvenType = self
            .proven(&req, "document type", |p: &ProvenType, v| {
                p.verify(name, version, v)
            })
            .await?;
        Ok(p.record)
    }

    /// The current version of every document type, as the validator host answering says
    /// (no proof: [`ChainClient::doc_type`] proves one).
    pub async fn doc_types(&self) -> Result<Vec<TypeRecord>, ChainError> {
        self.query_some(&Request::ListTypes, "document types").await
    }

    /// `id`'s record entry (type, retention, holds; `chain::records`), proven against a
    /// final header; `None` for a document with neither a type nor a hold.
    pub async fn record_entry(&self, id: &DocumentId) -> Result<Option<RecordEntry>, ChainError> {
        let p: ProvenRecordEntry = self
            .proven(
                &Request::GetRecordEntry { id: *id },
                "record entry",
                |p: &ProvenRecordEntry, v| p.verify(id, v),
            )
            .await?;
        Ok(p.entry)
    }

    /// A bucket's record (`chain::names`), as the validator host answering says (no proof:
    /// see SECURITY.md, known limits).
    pub async fn bucket(&self, bucket: &str) -> Result<Option<BucketRecord>, ChainError> {
        let req = Request::GetBucket {
            bucket: bucket.to_string(),
        };
        self.query(&req, "bucket").await
    }

    /// This client's own buckets.
    pub async fn buckets(&self) -> Result<Vec<BucketRecord>, ChainError> {
        self.query_some(&Request::ListBuckets, "bucket list").await
    }

    /// The name `key` in one of this client's buckets.
    pub async fn name(&self, bucket: &str, key: &str) -> Result<Option<NameRecord>, ChainError> {
        let req = Request::GetName {
            bucket: bucket.to_string(),
            key: key.to_string(),
        };
        self.query(&req, "name").await
    }

    /// A page of the names of one of this client's buckets (`Names::list`); `None` if the
    /// bucket does not exist.
    pub async fn names(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        from: &[u8],
        limit: u32,
    ) -> Result<Option<NamePage>, ChainError> {
        let req = Request::ListNames {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            delimiter: delimiter.map(str::to_string),
            from: from.to_vec(),
            limit,
        };
        self.query(&req, "name list").await
    }

    /// Checks on the chain that `id` is registered: the registering transaction, its Merkle
    /// path and a majority of validator signatures, verified here rather than trusted.
    pub async fn check_registered(&self, id: &DocumentId) -> Result<DocumentRecord, ChainError> {
        Ok(self.registration(id).await?.0)
    }

    /// `id`'s record and the verified proof of the transaction that registered it.
    pub async fn registration(
        &self,
        id: &DocumentId,
    ) -> Result<(DocumentRecord, TxInclusion), ChainError> {
        self.registration_by(id, &Request::GetDocument { id: *id })
            .await
    }

    /// As [`ChainClient::registration`] for the document of a citizen's read `delegation`
    /// naming this client as its gateway: the record shows the citizen's grant alone (its
    /// wrapped key), refused (`Refused`) unless that grant is live.
    pub async fn delegated_registration(
        &self,
        delegation: &crate::delegation::Delegation,
    ) -> Result<(DocumentRecord, TxInclusion), ChainError> {
        let req = Request::GetDelegatedDocument {
            delegation: *delegation,
        };
        self.registration_by(&delegation.document, &req).await
    }

    async fn registration_by(
        &self,
        id: &DocumentId,
        req: &Request,
    ) -> Result<(DocumentRecord, TxInclusion), ChainError> {
        let req = req.clone();
        let body = match self.query_bytes(&req).await? {
            Some(body) => body,
            // A validator that lags (just restarted) may not have the block yet: only
            // "not registered" from every reachable validator is an answer.
            None => self
                .query_others(&req)
                .await
                .ok_or(ChainError::NotRegistered(*id))?,
        };
        let (record, proof): (ProvenRecord, TxInclusion) = decode(&body, "registration record")?;
        self.check_final(proof.header.header.height, |v| {
            proof.verify_registration(id, v)
        })
        .await
        .map_err(|source| ChainError::Proof {
            what: format!("registration proof of {id}"),
            source,
        })?;
        self.check_final(record.state.height(), |v| record.verify(id, v))
            .await
            .map_err(|source| ChainError::Unproven {
                what: "document record",
                host: "that answered".into(),
                source: Box::new(source),
            })?;
        let record = record.record.ok_or(ChainError::NotRegistered(*id))?;
        if proof.tx.tx.sender != record.owner {
            return Err(ChainError::OtherSender(*id));
        }
        Ok((record, proof))
    }

    /// Runs `check` with the validators of block `height`: the trusted set
    /// (`ChainLink::validators`) and the set changes proven from it so far. A failure that
    /// may only mean a validator joined or left since (`validators::may_be_stale`) fetches
    /// the chain's set changes, proves them afresh and checks once more; the first error
    /// stands if that changes nothing or cannot be done.
    async fn check_final<T, E: MayBeStale>(
        &self,
        height: u64,
        check: impl Fn(&[PublicId]) -> Result<T, E>,
    ) -> Result<T, E> {
        let known = self
            .inner
            .validators
            .lock()
            .expect("validators lock")
            .clone()
            .unwrap_or_else(|| Arc::new(ValidatorHistory::trusted(&self.inner.link.validators)));
        match check(known.at(height)) {
            Err(e) if e.may_be_stale() => match self.prove_validators().await {
                Ok(fresh) if fresh.at(height) != known.at(height) => check(fresh.at(height)),
                Ok(_) => Err(e),
                Err(why) => {
                    debug!(error = %why, "could not fetch the validator set changes");
                    Err(e)
                }
            },
            other => other,
        }
    }

    /// The chain's validator set changes, proven here from `ChainLink::validators`, and
    /// kept for the next checks.
    pub async fn prove_validators(&self) -> Result<Arc<ValidatorHistory>, ChainError> {
        let changes = self.validator_changes().await?;
        let history = Arc::new(ValidatorHistory::prove(
            &self.inner.link.validators,
            &changes,
        )?);
        *self.inner.validators.lock().expect("validators lock") = Some(history.clone());
        Ok(history)
    }

    /// The signed checkpoint kept at `height` (with `covering`, the first at or above it;
    /// without a height, the latest), checked against the validators proven from the
    /// cluster file's set: the stored record and what its note says.
    pub async fn checkpoint(
        &self,
        height: Option<u64>,
        covering: bool,
    ) -> Result<Option<(StoredCheckpoint, Checkpoint)>, ChainError> {
        let found: Option<StoredCheckpoint> = self
            .query(&Request::GetCheckpoint { height, covering }, "checkpoint")
            .await?;
        let Some(stored) = found else {
            return Ok(None);
        };
        let key = self.chain_key().await?;
        let history = self.prove_validators().await?;
        let (checkpoint, _) = stored.note.verify(&key, &history)?;
        if height.is_some_and(|h| {
            if covering {
                checkpoint.height < h
            } else {
                checkpoint.height != h
            }
        }) {
            return Err(ChainError::Missing("the checkpoint asked for"));
        }
        Ok(Some((stored, checkpoint)))
    }

    /// The chain's validator set changes with their proofs, as a validator sent them
    /// (not checked here: [`ValidatorHistory::prove`] does that).
    pub async fn validator_changes(&self) -> Result<Vec<TxInclusion>, ChainError> {
        Ok(self
            .query(&Request::GetValidatorChanges, "validator set changes")
            .await?
            .unwrap_or_default())
    }
}

/// A failed check that may only mean the validator set changed since the one checked
/// against (`validators::may_be_stale`).
trait MayBeStale {
    fn may_be_stale(&self) -> bool;
}

impl MayBeStale for BlockError {
    fn may_be_stale(&self) -> bool {
        validators::may_be_stale(self)
    }
}

impl MayBeStale for ProofError {
    fn may_be_stale(&self) -> bool {
        matches!(self, ProofError::Header(e) if validators::may_be_stale(e))
    }
}

/// A host failure worth asking the next host about: unreachable, or `Unavailable`/`Busy`.
fn worth_another_host(e: &NetError) -> bool {
    e.is_retryable() || e.is_transport()
}

async fn read_record(recv: &mut RecvStream, len: u64) -> Result<Vec<u8>, proto::ProtoError> {
    proto::check_body_len("body", len, proto::MAX_CHAIN_BODY)?;
    proto::read_body(recv, len).await
}

fn decode<T: DeserializeOwned>(body: &[u8], what: &'static str) -> Result<T, ChainError> {
    postcard::from_bytes(body).map_err(|e| ChainError::Decode {
        what,
        reason: e.to_string(),
    })
}
