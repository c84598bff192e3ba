//! The put pipeline: a document read as a stream, sealed and coded by the codec, its stripes
//! uploaded to their placed peers under a write quorum, the manifest to its replicas, the
//! shards' references bound to the document on each peer (`Request::BindShards`: the id is
//! known only once the manifest is; a one-stripe document's `PutMany` names it directly),
//! then (in `put`) registered on the chain.

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
        // The shards each peer acknowledged without a document: bound to it at the end.
        let mut unbound: Vec<(u64, usize, NodeInfo, ShardId)> = Vec::new();
        let total = size.unwrap_or(0);
        let mut finish = |up: StripeUpload| {
            done += up.plain_len;
            shards_stored += up.stored as u64;
            shards_missing.extend(up.missing);
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
        let nodes: Vec<NodeInfo> = self
            .inner
            .layout
            .place(&stripe_key(&stripe.ids), stripe.ids.len())?
            .into_iter()
            .cloned()
            .collect();
        let mut writes = FuturesUnordered::new();
        // The document id is not known yet: each shard's reference is held by this key
        // until `bind` gives it to the document.
        for (slot, ((id, body), node)) in stripe
            .ids
            .iter()
            .zip(stripe.shards.iter())
            .zip(nodes)
            .enumerate()
        {
            let client = self.clone();
            let (id, body) = (*id, body.clone());
            writes.push(async move {
                let req = Request::PutShard {
                    id,
                    len: body.len() as u64,
                    document: None,
                };
                let res = client
                    .inner
                    .net
                    .call::<PutOutcome>(&node, &req, Some(&body))
                    .await;
                (slot, node, res)
            });
        }
        let mut stored = 0;
        let mut missing = Vec::new();
        let mut unbound = Vec::new();
        let mut errors = Vec::new();
        while let Some((slot, node, res)) = writes.next().await {
            match res {
                Ok(_) => {
                    stored += 1;
                    unbound.push((stripe.index, slot, node, stripe.ids[slot]));
                }
                Err(e) => {
                    debug!(stripe = stripe.index, slot, error = %e, "shard write failed");
                    errors.push(e.to_string());
                    missing.push((stripe.index, slot, node.key));
                }
            }
        }
        if stored < quorum {
            return Err(ClientError::StripeNotStored {
                stripe: stripe.index,
                stored,
                needed: quorum,
                errors: errors.join("; "),
            });
        }
        for (stripe, slot, peer) in &missing {
            warn!(stripe, slot, peer = %peer.short(), "shard not written; stripe below full redundancy until repaired");
        }
        Ok(StripeUpload {
            plain_len: stripe.plain_len,
            stored,
            missing,
            unbound,
        })
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
        let nodes = self
            .inner
            .layout
            .place(&stripe_key(&stripe.ids), stripe.ids.len())?;
        let replicas = self.manifest_nodes(&id)?;
        let holds_manifest = |node: &NodeInfo| replicas.iter().any(|r| r.key == node.key);
        let manifest_len = manifest_bytes.len() as u64;
        // (slot of the shard it holds, if any; whether it holds the manifest; the peer).
        let mut targets: Vec<(Option<usize>, bool, NodeInfo)> = nodes
            .iter()
            .enumerate()
            .map(|(slot, node)| (Some(slot), holds_manifest(node), (*node).clone()))
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
        let (mut stored, mut manifests) = (0, 0);
        let mut missing = Vec::new();
        let mut errors = Vec::new();
        while let Some((slot, with_manifest, node, res)) = writes.next().await {
            match (res, slot) {
                (Ok(_), slot) => {
                    stored += usize::from(slot.is_some());
                    manifests += usize::from(with_manifest);
                }
                (Err(e), Some(slot)) => {
                    debug!(stripe = 0, slot, error = %e, "shard write failed");
                    errors.push(e.to_string());
                    missing.push((0, slot, node.key));
                }
                (Err(e), None) => errors.push(e.to_string()),
            }
        }
        if stored < quorum {
            return Err(ClientError::StripeNotStored {
                stripe: 0,
                stored,
                needed: quorum,
                errors: errors.join("; "),
            });
        }
        for (stripe, slot, peer) in &missing {
            warn!(stripe, slot, peer = %peer.short(), "shard not written; stripe below full redundancy until repaired");
        }
        if manifests < replicas.len() {
            self.store_manifest(manifest, quorum).await?;
        }
        let up = StripeUpload {
            plain_len: stripe.plain_len,
            stored,
            missing,
            unbound: Vec::new(),
        };
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
    /// copies as the write quorum allows: all replicas, less the shards a stripe may lack.
    async fn store_manifest(
        &self,
        manifest: &Manifest,
        quorum: usize,
    ) -> Result<DocumentId, ClientError> {
        let bytes = Bytes::from(manifest.encode());
        let id = DocumentId::of(&bytes);
        let nodes = self.manifest_candidates(&id)?;
        let replicas = self.manifest_nodes(&id)?.len();
        let slack = self.inner.options.params.width() - quorum;
        let needed = replicas.saturating_sub(slack).max(1);
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

struct StripeUpload {
    plain_len: u64,
    stored: usize,
    missing: Vec<(u64, usize, PublicId)>,
    /// (stripe, slot, peer, shard) acknowledged without a document, to bind.
    unbound: Vec<(u64, usize, NodeInfo, ShardId)>,
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
