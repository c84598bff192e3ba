//! The get pipeline: the registration proven, the manifest from the first peer whose bytes
//! hash to the id, then each stripe's shards fetched with hedging (the document opened on
//! each connection first), opened by the codec and written in order.

use super::*;

/// A document being read: its id and canonical manifest, sent once per connection to each
/// peer asked for its shards (`Request::OpenDocument`), which serves a reader only the
/// shards of documents opened so; with a citizen's read delegation, opened and read under
/// it (`Request::OpenDelegated`, `Request::GetDelegatedShard`).
pub(super) struct Reading {
    pub(super) id: DocumentId,
    pub(super) manifest: Bytes,
    pub(super) delegation: Option<Delegation>,
}

impl Reading {
    /// The citizen this document is read for under a delegation.
    fn citizen(&self) -> Option<PublicId> {
        self.delegation.map(|d| d.citizen)
    }

    /// The request for shard `id` of this document.
    fn shard_request(&self, id: ShardId) -> Request {
        match &self.delegation {
            None => Request::GetShard { id },
            Some(d) => Request::GetDelegatedShard {
                id,
                document: d.document,
                citizen: d.citizen,
            },
        }
    }
}

/// Decodes one stripe from the shards fetched (one slot per shard id), on the blocking
/// pool: the decoded stripe and the slots whose shard was corrupt.
pub(super) type Decode<T> = Arc<
    dyn Fn(&Manifest, u64, Vec<Option<Bytes>>) -> Result<(T, Vec<usize>), CodecError> + Send + Sync,
>;

impl Client {
    /// Every live peer in the order a manifest is written and read: its placed replicas,
    /// then the rest of the layout.
    pub(super) fn manifest_candidates(
        &self,
        id: &DocumentId,
    ) -> Result<Vec<NodeInfo>, ClientError> {
        let mut nodes = self.manifest_nodes(id)?;
        let previous = self.inner.previous.iter().flat_map(|l| &l.nodes);
        for node in self.inner.layout.nodes.iter().chain(previous) {
            if node.weight > 0 && !nodes.iter().any(|n| n.key == node.key) {
                nodes.push(node.clone());
            }
        }
        // A draining peer (weight 0) may still hold copies until the rebalance ends.
        let draining = self.inner.layout.nodes.iter().filter(|n| n.weight == 0);
        for node in draining {
            if !nodes.iter().any(|n| n.key == node.key) {
                nodes.push(node.clone());
            }
        }
        Ok(nodes)
    }

    /// Fetches and checks a document's manifest from the first peer that has it, asking in
    /// [`Client::manifest_candidates`] order.
    pub async fn manifest(&self, id: &DocumentId) -> Result<Manifest, ClientError> {
        let nodes = self.manifest_candidates(id)?;
        let order = (0..nodes.len()).collect();
        let net = &self.inner.net;
        let hedged = net
            .hedged_retrying(&nodes, order, 1, |node, _| async move {
                net.manifest_get(&node, id)
                    .await?
                    .ok_or_else(|| net.unexpected(&node, Response::NotFound))
            })
            .await;
        match hedged.results.iter().flatten().next() {
            Some(body) => Ok(Manifest::decode(body)?),
            None => Err(ClientError::NotFound {
                id: *id,
                errors: hedged.errors(),
            }),
        }
    }

    /// Fetches document `id`, opens it with `key` and writes the plaintext to `writer`.
    pub async fn get<W>(
        &self,
        id: &DocumentId,
        key: &DataKey,
        writer: W,
        progress: Progress<'_>,
    ) -> Result<GetReport, ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        if let Some(chain) = &self.inner.chain {
            chain.check_registered(id).await?;
        }
        let manifest = self.manifest(id).await?;
        let size = manifest.size;
        self.read_range(&manifest, key, 0..size, writer, progress)
            .await
    }

    /// Writes bytes `range` of the document whose `manifest` the caller read with
    /// [`Client::manifest`] (after checking its registration, as [`Client::get`] does),
    /// opened with `key`, to `writer`: only the stripes the range touches are fetched. The
    /// range is clamped to the document's size.
    pub async fn read_range<W>(
        &self,
        manifest: &Manifest,
        key: &DataKey,
        range: std::ops::Range<u64>,
        mut writer: W,
        progress: Progress<'_>,
    ) -> Result<GetReport, ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        let id = manifest.id();
        let end = range.end.min(manifest.size);
        let start = range.start.min(end);
        let manifest = Arc::new(manifest.clone());
        let codec = StripeCodec::for_manifest(&manifest, key)?;
        let decode: Decode<codec::OpenedStripe> = Arc::new(move |m, i, shards| {
            let stripe = codec.open(m, i, shards)?;
            let corrupt = stripe.corrupt.clone();
            Ok((stripe, corrupt))
        });
        let reading = Arc::new(Reading {
            id,
            manifest: Bytes::from(manifest.encode()),
            delegation: None,
        });
        let mut report = GetReport::default();
        let in_flight = self.inner.options.stripes_in_flight.max(1);
        let touched = (0..manifest.stripe_count()).filter(|&i| {
            let g = manifest.stripe(i);
            g.plain_offset < end && g.plain_offset + g.plain_len > start
        });
        let mut opened = futures::stream::iter(touched)
            .map(|i| {
                let (manifest, decode, reading) =
                    (manifest.clone(), decode.clone(), reading.clone());
                async move { self.fetch_and_decode(manifest, decode, &reading, i).await }
            })
            .buffered(in_flight);
        while let Some(res) = opened.next().await {
            let (stripe, corrupt) = res?;
            let offset = manifest.stripe(stripe.index).plain_offset;
            let from = start.saturating_sub(offset) as usize;
            let to = ((end - offset) as usize).min(stripe.plaintext.len());
            writer
                .write_all(&stripe.plaintext[from..to])
                .await
                .map_err(ClientError::Write)?;
            report.bytes += (to - from) as u64;
            report.stripes_rebuilt += u64::from(stripe.rebuilt);
            report.corrupt.extend(corrupt);
            progress(report.bytes, end - start);
        }
        writer.flush().await.map_err(ClientError::Write)?;
        for (stripe, slot, peer) in &report.corrupt {
            warn!(document = %id, stripe, slot, peer = %peer.short(), "corrupt shard reported for repair");
        }
        Ok(report)
    }

    /// Fetches stripe `index` (hedged; then untried slots, stand-ins, the previous layout's
    /// peers as needed) and decodes it with `decode`: the decoded stripe and the corrupt
    /// shards found as (stripe, slot, peer).
    pub(super) async fn fetch_and_decode<T: Send + 'static>(
        &self,
        manifest: Arc<Manifest>,
        decode: Decode<T>,
        reading: &Reading,
        index: u64,
    ) -> Result<(T, Vec<(u64, usize, PublicId)>), ClientError> {
        let ids = manifest.stripes[index as usize].clone();
        let nodes: Vec<NodeInfo> = self
            .inner
            .layout
            .place(&stripe_key(&ids), ids.len())?
            .into_iter()
            .cloned()
            .collect();
        let k = usize::from(manifest.params.k);
        let mut fetched = self
            .fetch_stripe(reading, index, &ids, &nodes, k, None)
            .await;
        let mut tried_previous = false;
        let mut tried_standins = false;
        loop {
            let shards = fetched.shards.clone();
            let (m, d) = (manifest.clone(), decode.clone());
            let opened = tokio::task::spawn_blocking(move || d(&m, index, shards))
                .await
                .map_err(|e| ClientError::Task(e.to_string()))?;
            match opened {
                Ok((stripe, bad)) => {
                    let mut corrupt = fetched.corrupt.clone();
                    corrupt.extend(bad.iter().map(|&s| (index, s, nodes[s].key)));
                    return Ok((stripe, corrupt));
                }
                // Some fetched shards were bad: ask the slots not yet tried, once.
                Err(CodecError::StripeUnrecoverable { .. }) if !fetched.untried.is_empty() => {
                    let untried = std::mem::take(&mut fetched.untried);
                    let more = self
                        .fetch_stripe(reading, index, &ids, &nodes, untried.len(), Some(untried))
                        .await;
                    for (slot, shard) in more.shards.into_iter().enumerate() {
                        if shard.is_some() {
                            fetched.shards[slot] = shard;
                        }
                    }
                    fetched.corrupt.extend(more.corrupt);
                    fetched.errors.extend(more.errors);
                }
                // A shard written while its placed peer was down sits on a stand-in.
                Err(CodecError::StripeUnrecoverable { .. }) if !tried_standins => {
                    tried_standins = true;
                    let more = self
                        .fetch_from_standins(reading, index, &ids, &fetched.shards)
                        .await?;
                    for (slot, shard) in more.shards.into_iter().enumerate() {
                        if shard.is_some() {
                            fetched.shards[slot] = shard;
                        }
                    }
                    fetched.errors.extend(more.errors);
                }
                // During a layout change, shards not yet moved sit on their old peers.
                Err(CodecError::StripeUnrecoverable { .. })
                    if !tried_previous && self.inner.previous.is_some() =>
                {
                    tried_previous = true;
                    let previous = self.inner.previous.as_ref().expect("checked above");
                    let old: Vec<NodeInfo> = previous
                        .place(&stripe_key(&ids), ids.len())?
                        .into_iter()
                        .cloned()
                        .collect();
                    let slots: Vec<usize> = (0..ids.len())
                        .filter(|&s| fetched.shards[s].is_none() && old[s].key != nodes[s].key)
                        .collect();
                    let more = self
                        .fetch_stripe(reading, index, &ids, &old, slots.len(), Some(slots))
                        .await;
                    for (slot, shard) in more.shards.into_iter().enumerate() {
                        if shard.is_some() {
                            fetched.shards[slot] = shard;
                        }
                    }
                    fetched.errors.extend(more.errors);
                }
                Err(CodecError::StripeUnrecoverable { corrupt, .. }) => {
                    return Err(ClientError::StripeUnavailable {
                        stripe: index,
                        k,
                        corrupt: corrupt + fetched.corrupt.len(),
                        errors: fetched.errors.join("; "),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Asks placed peers for a stripe's shards until `want` have arrived: data slots first,
    /// healthy peers first, one more whenever one fails or `hedge_after` passes.
    async fn fetch_stripe(
        &self,
        reading: &Reading,
        index: u64,
        ids: &[ShardId],
        nodes: &[NodeInfo],
        want: usize,
        only: Option<Vec<usize>>,
    ) -> Fetched {
        let order = only.unwrap_or_else(|| (0..ids.len()).collect());
        let net = &self.inner.net;
        let hedged = net
            .hedged_retrying(nodes, order, want, |node, slot| {
                let req = reading.shard_request(ids[slot]);
                async move {
                    match self.fetch_shard(&node, reading, &req).await? {
                        Some(body) => Ok(Bytes::from(body)),
                        None => Err(net.unexpected(&node, Response::NotFound)),
                    }
                }
            })
            .await;
        let mut corrupt = Vec::new();
        let mut errors = Vec::new();
        for (slot, e) in hedged.failures {
            if e.remote_code() == Some(ErrorCode::Corrupt) {
                corrupt.push((index, slot, nodes[slot].key));
            }
            debug!(stripe = index, slot, error = %e, "shard fetch failed");
            errors.push(e.to_string());
        }
        Fetched {
            shards: hedged.results,
            corrupt,
            errors,
            untried: hedged.untried,
        }
    }

    /// Looks for the shards of stripe `index` not in `have` on its stand-ins
    /// (`Layout::standins`, which never include a peer twice): each missing shard asked of
    /// the stand-ins in turn, the shards in parallel.
    async fn fetch_from_standins(
        &self,
        reading: &Reading,
        index: u64,
        ids: &[ShardId],
        have: &[Option<Bytes>],
    ) -> Result<Fetched, ClientError> {
        let standins: Vec<NodeInfo> = self
            .inner
            .layout
            .standins(&stripe_key(ids), ids.len())?
            .into_iter()
            .cloned()
            .collect();
        let standins = &standins;
        let lookups = (0..ids.len())
            .filter(|&slot| have[slot].is_none())
            .map(|slot| async move {
                let req = reading.shard_request(ids[slot]);
                let mut errors = Vec::new();
                for node in standins {
                    match self.fetch_shard(node, reading, &req).await {
                        Ok(Some(body)) => return (slot, Some(Bytes::from(body)), errors),
                        Ok(None) => {}
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (slot, None, errors)
            });
        let mut fetched = Fetched {
            shards: vec![None; ids.len()],
            corrupt: Vec::new(),
            errors: Vec::new(),
            untried: Vec::new(),
        };
        for (slot, shard, errors) in futures::future::join_all(lookups).await {
            debug!(
                stripe = index,
                slot,
                found = shard.is_some(),
                "shard looked for on stand-ins"
            );
            fetched.shards[slot] = shard;
            fetched.errors.extend(errors);
        }
        Ok(fetched)
    }

    /// Opens document `id` (its `manifest` bytes) on the connection to `node`, so that the
    /// peer lets this identity fetch (or, as the owner of a superseded version, delete) the
    /// shards the manifest names.
    pub async fn open_on(
        &self,
        node: &NodeInfo,
        id: DocumentId,
        manifest: Bytes,
    ) -> Result<(), NetError> {
        let reading = Reading {
            id,
            manifest,
            delegation: None,
        };
        self.open_document(node, &reading).await
    }

    /// Fetches shard `req` (a `GetShard`) from `node`, with `reading` opened on that
    /// connection first. A peer keeps only the last [`proto::MAX_OPEN_DOCUMENTS`] documents
    /// open on a connection, so a document this client opened there long ago may have been
    /// closed: a refusal is answered by opening it again and asking once more (the open is
    /// itself authorised, so a reader the chain does not allow is refused again).
    async fn fetch_shard(
        &self,
        node: &NodeInfo,
        reading: &Reading,
        req: &Request,
    ) -> Result<Option<Vec<u8>>, NetError> {
        let net = &self.inner.net;
        self.open_document(node, reading).await?;
        match net.fetch(node, req, None, proto::MAX_SHARD_BODY).await {
            Err(e) if e.remote_code() == Some(ErrorCode::Refused) => {
                debug!(peer = %node.key.short(), error = %e, "shard refused; opening the document again");
                self.forget_opened(node, reading).await;
                self.open_document(node, reading).await?;
                net.fetch(node, req, None, proto::MAX_SHARD_BODY).await
            }
            other => other,
        }
    }

    /// Forgets that `reading` is open on the connection to `node`.
    async fn forget_opened(&self, node: &NodeInfo, reading: &Reading) {
        if let Ok(conn) = self.inner.net.connection(node).await {
            let key = (conn.stable_id(), reading.id, reading.citizen());
            self.inner.opened.lock().expect("opened lock").remove(&key);
        }
    }

    /// Opens `reading` on the connection to `node`, unless it already is.
    async fn open_document(&self, node: &NodeInfo, reading: &Reading) -> Result<(), NetError> {
        let conn = self.inner.net.connection(node).await?;
        let key = (conn.stable_id(), reading.id, reading.citizen());
        if self
            .inner
            .opened
            .lock()
            .expect("opened lock")
            .contains(&key)
        {
            return Ok(());
        }
        let len = reading.manifest.len() as u64;
        let req = match reading.delegation {
            None => Request::OpenDocument {
                document: reading.id,
                len,
            },
            Some(delegation) => Request::OpenDelegated { delegation, len },
        };
        let net = &self.inner.net;
        net.call::<Opened>(node, &req, Some(&reading.manifest))
            .await?;
        let mut opened = self.inner.opened.lock().expect("opened lock");
        if opened.len() >= MAX_OPENED {
            opened.clear();
        }
        opened.insert(key);
        Ok(())
    }
}

struct Fetched {
    shards: Vec<Option<Bytes>>,
    corrupt: Vec<(u64, usize, PublicId)>,
    errors: Vec<String>,
    untried: Vec<usize>,
}
