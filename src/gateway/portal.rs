//! The citizen portal's HTTP endpoints (`/portal/v1/...`): the gateway as an untrusted
//! relay between a citizen's browser and the cluster.
//!
//! No token: every request that names a citizen carries the citizen's own signature (a
//! [`ListingRequest`] to list its documents, a [`Delegation`] to fetch one), checked here
//! for a clear answer and again by every peer, which alone decides (`access`). The gateway
//! never holds a citizen's secret and never sees a citizen's plaintext: a fetch streams the
//! document sealed (`client::SealedDocument`, the `DGNSEAL1` stream of `docs/formats.md`)
//! and the browser unwraps the key and decrypts.
//!
//! - `GET /portal/v1/info`: this gateway's key, the chain key, the genesis validators (what
//!   the browser signs for and checks receipts against) and the department's label.
//! - `POST /portal/v1/granted` (a listing request): this department's documents with a
//!   live grant to the citizen.
//! - `POST /portal/v1/documents/{id}/sealed` (a delegation for `id`): the sealed stream,
//!   `application/vnd.dangan.sealed`.
//!
//! Errors before the first byte are the gateway's JSON errors ([`GatewayError`]: 400
//! `malformed`, 403 `delegation_refused` or `not_granted`, 404 `unknown_document`, 503
//! `cluster_unavailable`); an error after streaming began aborts the response.
//!
//! Not for: the department's REST API, tokens or the console (the rest of `gateway`), or
//! deciding who may read (the peers do).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Serialize;
use tracing::{debug, warn};

use super::{GatewayError, json_response};
use crate::chain::tx::ChainKey;
use crate::client::{Client, ClientError};
use crate::delegation::{Delegation, DelegationJson, ListingJson, ListingRequest};
use crate::id::DocumentId;
use crate::identity::PublicId;

/// Content type of the sealed stream.
pub const SEALED_CONTENT_TYPE: &str = "application/vnd.dangan.sealed";
/// Most documents one `granted` answer lists.
pub const MAX_LISTED: usize = 1000;
/// Bytes buffered between the sealed fetch and the HTTP response.
const STREAM_BUFFER: usize = 256 << 10;

/// What the portal's endpoints share: the gateway's client of the cluster (its key is the
/// gateway's identity, named in delegations), the chain it serves and its department.
pub struct Portal {
    client: Client,
    chain: ChainKey,
    validators: Vec<PublicId>,
    department: String,
}

impl std::fmt::Debug for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portal")
            .field("gateway", &self.client.public())
            .field("department", &self.department)
            .finish_non_exhaustive()
    }
}

impl Portal {
    /// The portal of `client` (linked to a chain, whose key is proven here) for the
    /// department labelled `department`.
    pub async fn new(client: Client, department: String) -> Result<Self, ClientError> {
        let chain = client.chain()?;
        let key = chain.chain_key().await?;
        let validators = chain.link().validators.clone();
        Ok(Self {
            client,
            chain: key,
            validators,
            department,
        })
    }

    /// The gateway's key: what a delegation must name.
    pub fn gateway(&self) -> PublicId {
        self.client.public()
    }

    pub fn chain_key(&self) -> ChainKey {
        self.chain
    }
}

/// The portal's routes (merged into the gateway's router by `gateway::run`).
pub fn router(portal: Arc<Portal>) -> Router {
    Router::new()
        .route("/portal/v1/info", get(info))
        .route("/portal/v1/granted", post(granted))
        .route("/portal/v1/documents/{id}/sealed", post(sealed))
        .with_state(portal)
}

fn malformed(message: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest {
        code: "malformed",
        message: message.into(),
    }
}

/// A cluster error met serving a citizen: a peer's refusal is a refusal of the citizen's
/// delegation; the rest as for any gateway request.
fn citizen_error(e: ClientError) -> GatewayError {
    match e {
        ClientError::Refused { .. } => GatewayError::DelegationRefused(e.to_string()),
        e => e.into(),
    }
}

#[derive(Serialize)]
struct Info {
    gateway: String,
    chain: String,
    validators: Vec<String>,
    department: String,
}

async fn info(State(portal): State<Arc<Portal>>) -> Response {
    let info = Info {
        gateway: portal.gateway().to_string(),
        chain: portal.chain.to_string(),
        validators: portal.validators.iter().map(|v| v.to_string()).collect(),
        department: portal.department.clone(),
    };
    json_response(StatusCode::OK, &info)
}

/// One document in a `granted` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct GrantedDocument {
    pub document: String,
    pub department: String,
    pub document_type: String,
    pub size: u64,
    pub created_at_ms: u64,
    /// The grant's expiry, if it has one.
    pub expires_ms: Option<u64>,
}

#[derive(Serialize)]
struct Granted {
    documents: Vec<GrantedDocument>,
}

async fn granted(
    State(portal): State<Arc<Portal>>,
    body: Result<Json<ListingJson>, JsonRejection>,
) -> Result<Response, GatewayError> {
    let Json(json) = body.map_err(|e| malformed(e.body_text()))?;
    let listing = ListingRequest::try_from(json).map_err(|e| malformed(e.to_string()))?;
    check_gateway(&portal, &listing.gateway)?;
    listing
        .verify(&portal.chain.0, crate::now_ms())
        .map_err(|e| GatewayError::DelegationRefused(e.to_string()))?;
    let documents = list_granted(&portal, &listing.citizen)
        .await
        .map_err(citizen_error)?;
    Ok(json_response(StatusCode::OK, &Granted { documents }))
}

/// This department's documents with a live grant to `citizen`: the chain scans the
/// records for grants to the citizen a page at a time (`ChainClient::granted`, each record
/// proven; this gateway sees its own department's), the labels from the manifest.
async fn list_granted(
    portal: &Portal,
    citizen: &PublicId,
) -> Result<Vec<GrantedDocument>, ClientError> {
    let chain = portal.client.chain()?;
    let me = portal.gateway();
    let now = crate::now_ms();
    let mut found = Vec::new();
    let mut after = None;
    loop {
        let (page, next) = chain.granted(citizen, after).await?;
        for (id, record) in page {
            if record.owner != me {
                continue; // another department's, listed to an operator key
            }
            let Some(grant) = record.live_grant(citizen, now) else {
                continue;
            };
            let expires_ms = grant.expires_ms;
            let manifest = portal.client.manifest(&id).await?;
            found.push(GrantedDocument {
                document: id.to_string(),
                department: manifest.department,
                document_type: manifest.document_type,
                size: manifest.size,
                created_at_ms: manifest.created_at_ms,
                expires_ms,
            });
            if found.len() >= MAX_LISTED {
                return Ok(found);
            }
        }
        match next {
            Some(next) => after = Some(next),
            None => return Ok(found),
        }
    }
}

fn check_gateway(portal: &Portal, named: &PublicId) -> Result<(), GatewayError> {
    if *named != portal.gateway() {
        return Err(GatewayError::DelegationRefused(format!(
            "the request names gateway {named}, this gateway is {}",
            portal.gateway()
        )));
    }
    Ok(())
}

async fn sealed(
    State(portal): State<Arc<Portal>>,
    Path(id): Path<String>,
    body: Result<Json<DelegationJson>, JsonRejection>,
) -> Result<Response, GatewayError> {
    let id: DocumentId = id
        .parse()
        .map_err(|e| malformed(format!("document id: {e}")))?;
    let Json(json) = body.map_err(|e| malformed(e.body_text()))?;
    let delegation = Delegation::try_from(json).map_err(|e| malformed(e.to_string()))?;
    if delegation.document != id {
        return Err(GatewayError::DelegationRefused(format!(
            "the delegation is for document {}, not {id}",
            delegation.document
        )));
    }
    check_gateway(&portal, &delegation.gateway)?;
    delegation
        .verify(&portal.chain.0, crate::now_ms())
        .map_err(|e| GatewayError::DelegationRefused(e.to_string()))?;
    let doc = portal
        .client
        .prepare_sealed(&delegation)
        .await
        .map_err(citizen_error)?;
    let len = doc.len();
    let (writer, reader) = tokio::io::duplex(STREAM_BUFFER);
    let client = portal.client.clone();
    let task = tokio::spawn(async move { client.stream_sealed(&doc, writer).await });
    // The bytes as they come; a fetch that fails midway ends the body with an error, so the
    // response is aborted rather than ended short as if complete.
    let tail = futures::stream::once(async move {
        match task.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                warn!(document = %id, error = %e, "sealed fetch failed midway; response aborted");
                Some(Err(std::io::Error::other(e.to_string())))
            }
            Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
        }
    })
    .filter_map(|end| async move { end });
    let stream = tokio_util::io::ReaderStream::new(reader).chain(tail);
    debug!(document = %id, citizen = %delegation.citizen.short(), len, "streaming sealed");
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, SEALED_CONTENT_TYPE.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
