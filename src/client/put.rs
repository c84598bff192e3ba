//! The put pipeline: a document read as a stream, sealed and coded by the codec, its stripes
//! uploaded to their placed peers (a shard whose peer fails to the next stand-in) under a
//! write policy (`Written::upload`), the manifest to its replicas, the
//! shards' references bound to the document on each peer (`Request::BindShards`: the id is
//! known only once the manifest is; a one-stripe document's `PutMany` names it directly),
//! then (in `put`) registered on the chain.
//!
//! A document of separately sealed pieces (an S3 multipart upload, manifest version 2):
//! `store_piece` streams each piece through the codec and uploads its stripes as `store`
//! does, held by the uploading key, in any order and in parallel; `store_pieces` then writes
//! the manifest of the pieces in order and binds their shards to it. Nothing is sealed twice.

use super::*;

impl Client {
    /// Stores a document read from `reader` (`size` bytes if known, for progress) and, with
    /// a chain linked, registers it.
    pub async fn put<R>(
        &self,
        reader: R,
        size: Option<u64>,
        info: DocumentInfo,
        progress: Progress<'_>,
    ) -> Result<PutReceipt, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let receipt = self.store(reader, size, info, progress).await?;
        self.register(receipt).await
    }

    /// Registers a document [`Client::store`] stored (with a chain linked; without one the
    /// receipt comes back as it was). Only now, with every shard durable and the manifest
    /// written, does the document come into existence. A caller that keeps the data key
    /// itself (`dangan put`: the keyring) saves it durably *before* this: a registration
    /// that times out here may still commit later, and its document must not be left
    /// without a key.
    pub async fn register(&self, mut receipt: PutReceipt) -> Result<PutReceipt, ClientError> {
        if let Some(chain) = &self.inner.chain {
            let start = Instant::now();
            let id = receipt.id;
            let registered = chain
                .submit(TxBody::RegisterDocument { document: id })
                .await;
            receipt.registered = Some(registered.map_err(|e| ClientError::Register {
                id,
                source: Box::new(e),
            })?);
            receipt.timings.registered = start.elapsed();
        }
        Ok(receipt)
    }

    /// Stores a document's shards and manifest, durably, without registering it (a new
    /// version is registered by its `Supersede`, see `version`).
    pub async fn store<R>(
        &self,
        reader: R,
        size: Option<u64>,
        info: DocumentInfo,
        progress: Progress<'_>,
    ) -> Result<PutReceipt, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let started = Instant::now();
        let opts = &self.inner.options;
        let width = opts.params.width();
        let quorum = opts.write_quorum.unwrap_or(width);
        let in_flight = opts.stripes_in_flight.max(1);
        let (mut stripes, encoder) = codec::encode_async(reader, opts.params, info, in_flight);
        let mut uploads: JoinSet<Result<StripeUpload, ClientError>> = JoinSet::new();
        let mut done = 0u64;
        let mut shards_stored = 0u64;
        let mut shards_missing = Vec::new();
        let mut shards_standing_in = Vec::new();
        // The shards each peer acknowledged without a document: bound to it at the end.
        let mut unbound: Vec<(u64, usize, NodeInfo, ShardId)> = Vec::new();
        let total = size.unwrap_or(0);
        let mut finish = |up: StripeUpload| {
            done += up.plain_len;
            shards_stored += up.stored as u64;
            shards_missing.extend(up.missing);
            shards_standing_in.extend(up.standing_in);
            unbound.extend(up.unbound);
            progress(done, total.max(done));
        };
        let (id, manifest, key) = 'stored: {
            let mut failure = None;
            loop {
                // Keep at most `in_flight` stripes uploading; take the next when one finishes.
                if uploads.len() >= in_flight {
                    match join(uploads.join_next().await) {
                        Ok(up) => finish(up),
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    }
                    continue;
                }
                let Some(stripe) = stripes.recv().await else {
                    break;
                };
                if stripe.index == 0 && stripe.last {
                    // A one-stripe document (a certificate): its manifest is ready with it.
                    let (manifest, key) = encoder
                        .await
                        .map_err(|e| ClientError::Task(e.to_string()))??;
                    let (id, up) = self.store_one_stripe(stripe, &manifest, quorum).await?;
                    finish(up);
                    break 'stored (id, manifest, key);
                }
                let client = self.clone();
                uploads.spawn(async move { client.upload_stripe(stripe, quorum).await });
            }
            if let Some(e) = failure {
                uploads.abort_all();
                drop(stripes);
                let _ = encoder.await;
                return Err(e);
            }
            // Every stripe has left the encoder, so the manifest is ready: it is written while
            // the last stripes finish (for a one-stripe certificate, that saves a round trip).
            let (manifest, key) = encoder
                .await
                .map_err(|e| ClientError::Task(e.to_string()))??;
            let drain = async {
                while let Some(res) = uploads.join_next().await {
                    finish(join(Some(res))?);
                }
                Ok::<(), ClientError>(())
            };
            let (drained, stored) = tokio::join!(drain, self.store_manifest(&manifest, quorum));
            if let Err(e) = drained {
                uploads.abort_all();
                return Err(e);
            }
            (stored?, manifest, key)
        };
        // The stripes' shards went out before the id existed: each peer now gives the
        // document the references this key's puts hold there (`store`: references belong to
        // documents). A peer that cannot is reported like a missing shard; repair adds the
        // document's reference.
        shards_missing.extend(self.bind(&id, unbound).await);
        Ok(PutReceipt {
            id,
            manifest,
            key,
            shards_stored,
            shards_missing,
            shards_standing_in,
            registered: None,
            timings: PutTimings {
                stored: started.elapsed(),
                registered: Duration::ZERO,
            },
        })
    }

    async fn upload_stripe(
        &self,
        stripe: EncodedStripe,
        quorum: usize,
    ) -> Result<StripeUpload, ClientError> {
        let (nodes, standins) = self.stripe_peers(&stripe.ids)?;
        // The document id is not known yet: each shard's reference is held by this key
        // until `bind` gives it to the document.
        let write = |slot: usize, node: NodeInfo| {
            let (id, body) = (stripe.ids[slot], stripe.shards[slot].clone());
            async move {
                let req = Request::PutShard {
                    id,
                    len: body.len() as u64,
                    document: None,
                };
                self.inner
                    .net
                    .call::<PutOutcome>(&node, &req, Some(&body))
                    .await
                    .map(|_| ())
            }
        };
        let mut written = Written::new(stripe.ids.len());
        let mut first: FuturesUnordered<_> = nodes
            .iter()
            .enumerate()
            .map(|(slot, node)| {
                let fut = write(slot, node.clone());
                async move { (slot, node, fut.await) }
            })
            .collect();
        while let Some((slot, node, res)) = first.next().await {
            written.record(stripe.index, slot, node, res);
        }
        drop(first);
        self.stand_in(stripe.index, &mut written, &standins, write)
            .await;
        written.upload(self, &stripe, &nodes, quorum, true)
    }

    /// A stripe's placed peers (shard `i` goes to the `i`th) and its stand-ins in the order
    /// they are tried (`Layout::standins`).
    fn stripe_peers(&self, ids: &[ShardId]) -> Result<(Vec<NodeInfo>, Vec<NodeInfo>), ClientError> {
        let key = stripe_key(ids);
        let layout = &self.inner.layout;
        let nodes = layout
            .place(&key, ids.len())?
            .into_iter()
            .cloned()
            .collect();
        let standins = layout
            .standins(&key, ids.len())?
            .into_iter()
            .cloned()
            .collect();
        Ok((nodes, standins))
    }

    /// Writes every shard whose placed peer failed to the next stand-in that has not failed
    /// and holds none of this stripe's shards yet (`write(slot, node)`), again on the next
    /// one while a write fails, until every shard is written or the stand-ins run out.
    async fn stand_in<F, Fut>(
        &self,
        stripe: u64,
        written: &mut Written,
        standins: &[NodeInfo],
        write: F,
    ) where
        F: Fn(usize, NodeInfo) -> Fut,
        Fut: std::future::Future<Output = Result<(), NetError>>,
    {
        let mut candidates = standins.iter();
        loop {
            let mut round = FuturesUnordered::new();
            for slot in written.unwritten() {
                let Some(node) = candidates.by_ref().find(|n| written.may_stand_in(n)) else {
                    break;
                };
                let fut = write(slot, node.clone());
                round.push(async move { (slot, node, fut.await) });
            }
            if round.is_empty() {
                return;
            }
            while let Some((slot, node, res)) = round.next().await {
                written.record(stripe, slot, node, res);
            }
        }
    }

    /// Binds the shards each peer acknowledged without a document to `document`, every
    /// peer at once. Returns the (stripe, slot, peer) of those whose peer could not.
    async fn bind(
        &self,
        document: &DocumentId,
        unbound: Vec<(u64, usize, NodeInfo, ShardId)>,
    ) -> Vec<(u64, usize, PublicId)> {
        type Slots = Vec<(u64, usize, ShardId)>;
        let mut by_peer: Vec<(NodeInfo, Slots)> = Vec::new();
        for (stripe, slot, node, id) in unbound {
            match by_peer.iter_mut().find(|(n, _)| n.key == node.key) {
                Some((_, shards)) => shards.push((stripe, slot, id)),
                None => by_peer.push((node, vec![(stripe, slot, id)])),
            }
        }
        let net = &self.inner.net;
        let binds = by_peer.into_iter().map(|(node, shards)| async move {
            let ids: Vec<ShardId> = shards.iter().map(|(_, _, id)| *id).collect();
            match net.shards_bind(&node, document, &ids).await {
                Ok(_) => Vec::new(),
                Err(e) => {
                    warn!(peer = %node.key.short(), %document, error = %e, "shards not bound to their document; repair adds its references");
                    shards
                        .into_iter()
                        .map(|(stripe, slot, _)| (stripe, slot, node.key))
                        .collect()
                }
            }
        });
        futures::future::join_all(binds)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Stores a one-stripe document with one request per peer (`PutMany`): each placed peer
    /// gets its shard and, if it is one of the manifest's replicas, the manifest too, all
    /// made durable in one commit there. Replicas holding no shard get the manifest alone;
    /// if too few copies of the manifest were acknowledged, it is written again the usual
    /// way ([`Client::store_manifest`], which replaces failed replicas).
    async fn store_one_stripe(
        &self,
        stripe: EncodedStripe,
        manifest: &Manifest,
        quorum: usize,
    ) -> Result<(DocumentId, StripeUpload), ClientError> {
        let manifest_bytes = Bytes::from(manifest.encode());
        let id = DocumentId::of(&manifest_bytes);
        let (nodes, standins) = self.stripe_peers(&stripe.ids)?;
        let replicas = self.manifest_nodes(&id)?;
        let holds_manifest = |node: &NodeInfo| replicas.iter().any(|r| r.key == node.key);
        let manifest_len = manifest_bytes.len() as u64;
        // (slot of the shard it holds, if any; whether it holds the manifest; the peer).
        let mut targets: Vec<(Option<usize>, bool, NodeInfo)> = nodes
            .iter()
            .enumerate()
            .map(|(slot, node)| (Some(slot), holds_manifest(node), node.clone()))
            .collect();
        for node in &replicas {
            if !nodes.iter().any(|n| n.key == node.key) {
                targets.push((None, true, node.clone()));
            }
        }
        let mut writes = FuturesUnordered::new();
        for (slot, with_manifest, node) in targets {
            let shard = slot.map(|s| (stripe.ids[s], stripe.shards[s].clone()));
            let req = Request::PutMany {
                shards: shard.iter().map(|(i, b)| (*i, b.len() as u64)).collect(),
                manifest: with_manifest.then_some((id, manifest_len)),
                document: id,
            };
            let body = match (shard, with_manifest) {
                (Some((_, b)), false) => b,
                (None, _) => manifest_bytes.clone(),
                (Some((_, b)), true) => {
                    let mut joined = Vec::with_capacity(b.len() + manifest_bytes.len());
                    joined.extend_from_slice(&b);
                    joined.extend_from_slice(&manifest_bytes);
                    Bytes::from(joined)
                }
            };
            writes.push(async move {
                let res = self
                    .inner
                    .net
                    .call::<Vec<PutOutcome>>(&node, &req, Some(&body))
                    .await;
                (slot, with_manifest, node, res)
            });
        }
        let mut manifests = 0;
        let mut written = Written::new(stripe.ids.len());
        while let Some((slot, with_manifest, node, res)) = writes.next().await {
            match (res, slot) {
                (res, Some(slot)) => {
                    manifests += usize::from(with_manifest && res.is_ok());
                    written.record(0, slot, &node, res.map(|_| ()));
                }
                (Ok(_), None) => manifests += 1,
                (Err(e), None) => written.errors.push(e.to_string()),
            }
        }
        drop(writes);
        // A shard whose peer failed goes to a stand-in, named for the document at once.
        let write = |slot: usize, node: NodeInfo| {
            let body = stripe.shards[slot].clone();
            let req = Request::PutMany {
                shards: vec![(stripe.ids[slot], body.len() as u64)],
                manifest: None,
                document: id,
            };
            async move {
                self.inner
                    .net
                    .call::<Vec<PutOutcome>>(&node, &req, Some(&body))
                    .await
                    .map(|_| ())
            }
        };
        self.stand_in(0, &mut written, &standins, write).await;
        let up = written.upload(self, &stripe, &nodes, quorum, false)?;
        if manifests < replicas.len() {
            self.store_manifest(manifest, quorum).await?;
        }
        Ok((id, up))
    }

    /// The peers a document's manifest is written to: `max(3, m + 1)` of them (capped at the
    /// live peers), so that losing any m peers loses no manifest.
    pub fn manifest_nodes(&self, id: &DocumentId) -> Result<Vec<NodeInfo>, ClientError> {
        let live = self.live_nodes();
        let replicas = (usize::from(self.inner.options.params.m) + 1)
            .max(MANIFEST_REPLICAS)
            .min(live);
        Ok(self
            .inner
            .layout
            .place(id.as_bytes(), replicas)?
            .into_iter()
            .cloned()
            .collect())
    }

    fn live_nodes(&self) -> usize {
        self.inner
            .layout
            .nodes
            .iter()
            .filter(|n| n.weight > 0)
            .count()
    }

    /// Writes the manifest to its placed replicas; a replica that fails is replaced by the
    /// next peer of the layout (readers ask every peer in that same order). It needs as many
    /// copies as the write quorum allows (all replicas, less the shards a stripe may lack),
    /// and never fewer than m + 1 on distinct peers, whatever the quorum: losing any m peers
    /// right after the put must leave a copy.
    async fn store_manifest(
        &self,
        manifest: &Manifest,
        quorum: usize,
    ) -> Result<DocumentId, ClientError> {
        let bytes = Bytes::from(manifest.encode());
        let id = DocumentId::of(&bytes);
        let nodes = self.manifest_candidates(&id)?;
        let replicas = self.manifest_nodes(&id)?.len();
        let params = self.inner.options.params;
        let slack = params.width() - quorum;
        let needed = replicas
            .saturating_sub(slack)
            .max(usize::from(params.m) + 1);
        let order = (0..nodes.len()).collect();
        let net = &self.inner.net;
        let hedged = net
            .hedged(&nodes, order, replicas, |node, _| {
                let bytes = bytes.clone();
                async move { net.manifest_put(&node, &id, &bytes).await }
            })
            .await;
        let stored = hedged.results.iter().flatten().count();
        if stored < needed {
            return Err(ClientError::ManifestNotStored {
                id,
                stored,
                needed,
                errors: hedged.errors(),
            });
        }
        Ok(id)
    }
}

/// A piece of a document stored by [`Client::store_piece`]: its shards durable on the
/// peers but held by the uploading key (no document yet), nothing registered. An upload
/// that never completes leaves them to `collect` after its grace period.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredPiece {
    pub params: CodingParams,
    pub sealed: SealedPiece,
    /// (stripe within the piece, slot, peer, shard) of every acknowledged shard, to bind.
    pub held: Vec<(u64, usize, PublicId, ShardId)>,
}

impl Client {
    /// Stores one piece of a multipart document read from `reader`, sealed under the
    /// document's `key` as its own STREAM (`codec::encode_piece`); memory bounded as for
    /// [`Client::store`]. Pieces of one document may be stored concurrently.
    pub async fn store_piece<R>(&self, reader: R, key: &DataKey) -> Result<StoredPiece, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let opts = &self.inner.options;
        let quorum = opts.write_quorum.unwrap_or(opts.params.width());
        let in_flight = opts.stripes_in_flight.max(1);
        let (mut stripes, encoder) =
            codec::encode_piece_async(reader, opts.params, key.clone(), in_flight);
        let mut uploads: JoinSet<Result<StripeUpload, ClientError>> = JoinSet::new();
        let mut held = Vec::new();
        let mut keep = |up: StripeUpload| {
            held.extend(
                up.unbound
                    .into_iter()
                    .map(|(i, s, n, id)| (i, s, n.key, id)),
            );
        };
        let failed = loop {
            if uploads.len() >= in_flight {
                match join(uploads.join_next().await) {
                    Ok(up) => keep(up),
                    Err(e) => break Some(e),
                }
                continue;
            }
            let Some(stripe) = stripes.recv().await else {
                break None;
            };
            let client = self.clone();
            uploads.spawn(async move { client.upload_stripe(stripe, quorum).await });
        };
        let failed = match failed {
            Some(e) => Some(e),
            None => loop {
                match uploads.join_next().await {
                    None => break None,
                    Some(res) => match join(Some(res)) {
                        Ok(up) => keep(up),
                        Err(e) => break Some(e),
                    },
                }
            },
        };
        if let Some(e) = failed {
            uploads.abort_all();
            drop(stripes);
            let _ = encoder.await;
            return Err(e);
        }
        let sealed = encoder
            .await
            .map_err(|e| ClientError::Task(e.to_string()))??;
        Ok(StoredPiece {
            params: opts.params,
            sealed,
            held,
        })
    }

    /// Puts stored `pieces` together, in this order, into one document (manifest version 2,
    /// labelled with `info`): its manifest written durably to its replicas, then every
    /// piece's shards bound to it. Not registered: the caller registers it (with its name,
    /// for S3) after saving `key`. No byte is sealed again.
    pub async fn store_pieces(
        &self,
        pieces: Vec<StoredPiece>,
        info: DocumentInfo,
        key: DataKey,
    ) -> Result<PutReceipt, ClientError> {
        let started = Instant::now();
        let opts = &self.inner.options;
        let quorum = opts.write_quorum.unwrap_or(opts.params.width());
        let mut held = Vec::new();
        let mut sealed = Vec::with_capacity(pieces.len());
        let mut first = 0u64;
        for p in pieces {
            if p.params != opts.params {
                return Err(ClientError::PieceParams {
                    piece: p.params,
                    client: opts.params,
                });
            }
            held.extend(
                p.held
                    .into_iter()
                    .map(|(i, s, n, id)| (first + i, s, n, id)),
            );
            first += p.sealed.stripes.len() as u64;
            sealed.push(p.sealed);
        }
        let manifest = codec::pieces_manifest(opts.params, info, sealed)?;
        let id = self.store_manifest(&manifest, quorum).await?;
        let nodes = &self.inner.layout.nodes;
        let mut shards_missing = Vec::new();
        let mut unbound = Vec::with_capacity(held.len());
        for (stripe, slot, peer, shard) in held {
            match nodes.iter().find(|n| n.key == peer) {
                Some(node) => unbound.push((stripe, slot, node.clone(), shard)),
                // Left the layout since: repair gives the document its shard.
                None => shards_missing.push((stripe, slot, peer)),
            }
        }
        let shards_stored = unbound.len() as u64;
        shards_missing.extend(self.bind(&id, unbound).await);
        Ok(PutReceipt {
            id,
            manifest,
            key,
            shards_stored,
            shards_missing,
            shards_standing_in: Vec::new(),
            registered: None,
            timings: PutTimings {
                stored: started.elapsed(),
                registered: Duration::ZERO,
            },
        })
    }
}

struct StripeUpload {
    plain_len: u64,
    stored: usize,
    missing: Vec<(u64, usize, PublicId)>,
    /// (stripe, slot, stand-in) of shards written to a stand-in.
    standing_in: Vec<(u64, usize, PublicId)>,
    /// (stripe, slot, peer, shard) acknowledged without a document, to bind.
    unbound: Vec<(u64, usize, NodeInfo, ShardId)>,
}

/// Where a stripe's shards were acknowledged, while they are written.
struct Written {
    /// The peer that acknowledged each slot's shard.
    holders: Vec<Option<NodeInfo>>,
    /// Peers whose write failed: never asked again for this stripe.
    failed: Vec<PublicId>,
    errors: Vec<String>,
}

impl Written {
    fn new(width: usize) -> Self {
        Self {
            holders: vec![None; width],
            failed: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn record(&mut self, stripe: u64, slot: usize, node: &NodeInfo, res: Result<(), NetError>) {
        match res {
            Ok(()) => self.holders[slot] = Some(node.clone()),
            Err(e) => {
                debug!(stripe, slot, peer = %node.key.short(), error = %e, "shard write failed");
                self.errors.push(e.to_string());
                self.failed.push(node.key);
            }
        }
    }

    fn unwritten(&self) -> Vec<usize> {
        (0..self.holders.len())
            .filter(|&s| self.holders[s].is_none())
            .collect()
    }

    /// Whether `node` may take one more shard of the stripe: it has not failed, and holds
    /// at most its own placed shard (stand-ins are tried before placed peers, so a peer
    /// holds two shards of a stripe only when the layout has no other live peer).
    fn may_stand_in(&self, node: &NodeInfo) -> bool {
        !self.failed.contains(&node.key)
            && self
                .holders
                .iter()
                .flatten()
                .filter(|h| h.key == node.key)
                .count()
                <= 1
    }

    /// The stripe's outcome under the write policy: at least `quorum` shards acknowledged
    /// (all k + m by default, stand-ins counted) on at least k + 1 distinct peers (fewer
    /// only if `quorum` is lower), so losing any one more peer loses nothing. `unbind`:
    /// the writes held the shards for the uploading key, to bind to the document later.
    fn upload(
        self,
        client: &Client,
        stripe: &EncodedStripe,
        nodes: &[NodeInfo],
        quorum: usize,
        unbind: bool,
    ) -> Result<StripeUpload, ClientError> {
        let index = stripe.index;
        let stored = self.holders.iter().flatten().count();
        let mut peers: Vec<PublicId> = self.holders.iter().flatten().map(|n| n.key).collect();
        peers.sort_unstable();
        peers.dedup();
        let needed_peers = (usize::from(client.inner.options.params.k) + 1).min(quorum);
        if stored < quorum {
            return Err(ClientError::StripeNotStored {
                stripe: index,
                stored,
                needed: quorum,
                errors: self.errors.join("; "),
            });
        }
        if peers.len() < needed_peers {
            return Err(ClientError::TooFewPeers {
                stripe: index,
                peers: peers.len(),
                needed: needed_peers,
                errors: self.errors.join("; "),
            });
        }
        let mut up = StripeUpload {
            plain_len: stripe.plain_len,
            stored,
            missing: Vec::new(),
            standing_in: Vec::new(),
            unbound: Vec::new(),
        };
        for (slot, holder) in self.holders.into_iter().enumerate() {
            let Some(holder) = holder else {
                warn!(stripe = index, slot, peer = %nodes[slot].key.short(), "shard not written; stripe below full redundancy until repaired");
                up.missing.push((index, slot, nodes[slot].key));
                continue;
            };
            if holder.key != nodes[slot].key {
                warn!(stripe = index, slot, peer = %nodes[slot].key.short(), standin = %holder.key.short(), "shard written to a stand-in; repair brings it home");
                up.standing_in.push((index, slot, holder.key));
            }
            if unbind {
                up.unbound.push((index, slot, holder, stripe.ids[slot]));
            }
        }
        Ok(up)
    }
}

fn join<T>(
    res: Option<Result<Result<T, ClientError>, tokio::task::JoinError>>,
) -> Result<T, ClientError> {
    match res {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(ClientError::Task(e.to_string())),
        None => Err(ClientError::Task("no upload in flight".into())),
    }
}
