//! One request to one storage peer: no hedging, no quorum. For the operations workers
//! (`ops`) and revisions (`revision`); the document client's pipeline has its own
//! (hedged, batched) requests. Bodies that come back are checked against their ids here.

use bytes::Bytes;
use tracing::warn;

use super::{Net, NetError};
use crate::id::{DocumentId, ShardId};
use crate::placement::NodeInfo;
use crate::proto::{
    self, DeleteOutcome, NodeStatus, ProtoError, PutOutcome, Request, ScrubPage, Usage,
};

impl Net {
    /// Shard `id` from `node`, verified against its id; `None` if the peer has none.
    pub async fn shard_get(
        &self,
        node: &NodeInfo,
        id: &ShardId,
    ) -> Result<Option<Bytes>, NetError> {
        let req = Request::GetShard { id: *id };
        match self.fetch(node, &req, None, proto::MAX_SHARD_BODY).await? {
            Some(body) if !id.verifies(&body) => Err(self.peer_error(
                node,
                ProtoError::Unexpected(format!("shard {id} does not match its id")),
            )),
            found => Ok(found.map(Bytes::from)),
        }
    }

    /// Stores a shard on `node`, its reference held by `document`; `Ok` once the peer
    /// checked its hash and made it durable.
    pub async fn shard_put(
        &self,
        node: &NodeInfo,
        id: &ShardId,
        body: &Bytes,
        document: &DocumentId,
    ) -> Result<PutOutcome, NetError> {
        let req = Request::PutShard {
            id: *id,
            len: body.len() as u64,
            document: Some(*document),
        };
        self.call(node, &req, Some(body)).await
    }

    /// Whether `node` has a committed row for shard `id` (not re-hashed; scrub does that).
    pub async fn shard_has(&self, node: &NodeInfo, id: &ShardId) -> Result<bool, NetError> {
        let req = Request::HasShard {
            id: *id,
            document: None,
        };
        self.call(node, &req, None).await
    }

    /// Whether `document` holds a reference to shard `id` on `node`.
    pub async fn shard_held(
        &self,
        node: &NodeInfo,
        id: &ShardId,
        document: &DocumentId,
    ) -> Result<bool, NetError> {
        let req = Request::HasShard {
            id: *id,
            document: Some(*document),
        };
        self.call(node, &req, None).await
    }

    /// Whether `document` holds a reference to shard `id` on `node` and the peer re-hashed
    /// its stored body and found it good (`Request::VerifyShard`); a corrupt or missing body
    /// is an error (`remote_code()` `Corrupt`).
    pub async fn shard_verified(
        &self,
        node: &NodeInfo,
        id: &ShardId,
        document: &DocumentId,
    ) -> Result<bool, NetError> {
        let req = Request::VerifyShard {
            id: *id,
            document: *document,
        };
        self.call(node, &req, None).await
    }

    /// One page of `node`'s references and manifests last added before `before_ms`.
    pub async fn stale_page(
        &self,
        node: &NodeInfo,
        after: Option<proto::StaleEntry>,
        before_ms: u64,
        limit: u32,
    ) -> Result<proto::StalePage, NetError> {
        let req = Request::ListStale {
            after,
            before_ms,
            limit,
        };
        self.call(node, &req, None).await
    }

    /// Asks `node` to drop `entry` if it is still older than `before_ms` and names no
    /// registered document (the peer checks the chain).
    pub async fn stale_collect(
        &self,
        node: &NodeInfo,
        entry: proto::StaleEntry,
        before_ms: u64,
    ) -> Result<DeleteOutcome, NetError> {
        let req = Request::CollectStale { entry, before_ms };
        self.call(node, &req, None).await
    }

    /// Drops `document`'s reference to shard `id` on `node`.
    pub async fn shard_delete(
        &self,
        node: &NodeInfo,
        id: &ShardId,
        document: &DocumentId,
    ) -> Result<DeleteOutcome, NetError> {
        let req = Request::DeleteShard {
            id: *id,
            document: *document,
        };
        self.call(node, &req, None).await
    }

    /// Gives `document` this key's upload references to `shards` on `node` (in requests of
    /// at most [`proto::MAX_BIND`] ids); how many were bound.
    pub async fn shards_bind(
        &self,
        node: &NodeInfo,
        document: &DocumentId,
        shards: &[ShardId],
    ) -> Result<u64, NetError> {
        let mut bound = 0;
        for chunk in shards.chunks(proto::MAX_BIND) {
            let req = Request::BindShards {
                document: *document,
                shards: chunk.to_vec(),
            };
            bound += u64::from(self.call::<u32>(node, &req, None).await?);
        }
        Ok(bound)
    }

    /// The manifest of `id` held by `node`, checked against the id; `None` if it has none.
    pub async fn manifest_get(
        &self,
        node: &NodeInfo,
        id: &DocumentId,
    ) -> Result<Option<Bytes>, NetError> {
        let req = Request::GetManifest { id: *id };
        match self
            .fetch(node, &req, None, proto::MAX_MANIFEST_BODY)
            .await?
        {
            Some(body) if !id.verifies(&body) => {
                warn!(peer = %node.key.short(), document = %id, "peer served a manifest that does not match its id");
                Err(self.peer_error(
                    node,
                    ProtoError::Unexpected("manifest does not match its id".into()),
                ))
            }
            found => Ok(found.map(Bytes::from)),
        }
    }

    /// Stores manifest bytes (which hash to `id`) on `node`, durably.
    pub async fn manifest_put(
        &self,
        node: &NodeInfo,
        id: &DocumentId,
        body: &Bytes,
    ) -> Result<PutOutcome, NetError> {
        let req = Request::PutManifest {
            id: *id,
            len: body.len() as u64,
        };
        self.call(node, &req, Some(body)).await
    }

    /// Removes the manifest of `id` from `node`.
    pub async fn manifest_delete(
        &self,
        node: &NodeInfo,
        id: &DocumentId,
    ) -> Result<DeleteOutcome, NetError> {
        self.call(node, &Request::DeleteManifest { id: *id }, None)
            .await
    }

    /// What `node` stores.
    pub async fn usage(&self, node: &NodeInfo) -> Result<Usage, NetError> {
        self.call(node, &Request::Usage, None).await
    }

    /// `node`'s figures and readiness (what its metrics expose): for operators.
    pub async fn node_status(&self, node: &NodeInfo) -> Result<NodeStatus, NetError> {
        self.call(node, &Request::NodeStatus, None).await
    }

    /// Asks `node` to re-hash one page of its shards (quarantining corrupt ones).
    pub async fn scrub_page(
        &self,
        node: &NodeInfo,
        after: Option<ShardId>,
        limit: u32,
    ) -> Result<ScrubPage, NetError> {
        self.call(node, &Request::Scrub { after, limit }, None)
            .await
    }
}
