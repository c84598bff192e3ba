//! The department REST API under `/api/v1`: store, list, fetch (with HTTP ranges), grant,
//! revoke, supersede, rekey, receipt, verify, audit and the cluster's status, each behind
//! an API token with the operation's scope. Every error is JSON ([`super::ErrorBody`]).
//!
//! Bodies stream: a store reads the request body (raw, or the `file` part of a
//! `multipart/form-data` form) through a small channel into `Client::store`, so memory is
//! bounded by the codec's stripes in flight whatever the size; a fetch streams the
//! plaintext out of `Client::read_range` through an in-memory pipe, fetching only the
//! stripes a range touches. A body larger than the limit is refused (413) before anything
//! is registered; a fetch that fails after its first byte aborts the response, so a client
//! never takes a truncated body for a whole one.
//!
//! Not for: the console's pages (`assets`), tokens and errors (`gateway`).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio_util::io::StreamReader;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AppState, GatewayError, Scope};
use crate::audit::Verdict;
use crate::codec::DocumentInfo;
use crate::crypto::DataKey;
use crate::grant::GrantAddress;
use crate::id::DocumentId;
use crate::identity::PublicId;
use crate::keyring::KeyringError;
use crate::receipt::{MAX_RECEIPT_BYTES, Receipt};

/// Most documents one page of the list holds.
pub const MAX_PAGE: usize = 100;
/// Chunks between an upload's body and the codec (each what the HTTP layer delivers).
const UPLOAD_CHUNKS: usize = 8;

type St = State<Arc<AppState>>;

/// The API's routes and their OpenAPI description.
pub fn router() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(base_doc())
        .routes(routes!(store, list))
        .routes(routes!(fetch))
        .routes(routes!(grant))
        .routes(routes!(revoke))
        .routes(routes!(supersede))
        .routes(routes!(rekey))
        .routes(routes!(receipt))
        .routes(routes!(verify))
        .routes(routes!(verify_receipt))
        .routes(routes!(audit))
        .routes(routes!(status))
        .fallback(|uri: axum::http::Uri| async move {
            GatewayError::NoSuchEndpoint(uri.path().chars().take(200).collect())
        })
}

fn base_doc() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    let mut doc = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("Dangan department gateway")
                .version("1")
                .description(Some(
                    "A department's REST API over a Dangan cluster. Every call takes \
                     `Authorization: Bearer dgt1…` (a token from `dangan gateway token add`) \
                     with the operation's scope; every error is JSON {code, message}.",
                ))
                .build(),
        )
        .build();
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    doc
}

fn parse_id(text: &str) -> Result<DocumentId, GatewayError> {
    text.parse().map_err(|e| GatewayError::BadRequest {
        code: "bad_id",
        message: format!("{text:?} is not a document id: {e}"),
    })
}

fn bad(code: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::BadRequest {
        code,
        message: message.into(),
    }
}

/// A JSON body of at most the gateway's limit.
async fn json_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Body,
) -> Result<T, GatewayError> {
    let limit = state.limits.max_json;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| GatewayError::TooLarge {
            limit: limit as u64,
        })?;
    serde_json::from_slice(&bytes).map_err(|e| bad("bad_json", format!("the JSON body: {e}")))
}

/// The data key of one of this department's documents: 404 if it is not registered, 403
/// if it is someone else's (no key here).
async fn own_key(state: &AppState, id: &DocumentId) -> Result<DataKey, GatewayError> {
    match state.keyring.load(id) {
        Err(missing @ KeyringError::Missing { .. }) => {
            state.client.chain()?.check_registered(id).await?;
            Err(missing.into())
        }
        other => Ok(other?),
    }
}

/// What an upload says about itself.
struct Meta {
    document_type: Option<String>,
    file_name: Option<String>,
    size: Option<u64>,
}

type UploadReader = StreamReader<BoxStream<'static, io::Result<Bytes>>, Bytes>;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The document type recorded in the manifest (or header `X-Dangan-Document-Type`;
    /// a multipart form's `type` field).
    #[serde(rename = "type")]
    pub document_type: Option<String>,
    /// The file name kept by this gateway for downloads (or header `X-Dangan-File-Name`;
    /// a multipart file's own name).
    pub name: Option<String>,
}

/// Runs `work` on the request's document body (raw, or the `file` part of a multipart
/// form) as it arrives, in bounded memory; a body over the limit fails with 413 whatever
/// `work` made of it.
async fn with_upload<T, F, Fut>(
    state: &Arc<AppState>,
    query: UploadQuery,
    req: Request,
    work: F,
) -> Result<T, GatewayError>
where
    F: FnOnce(Meta, UploadReader) -> Fut,
    Fut: Future<Output = Result<T, GatewayError>>,
{
    let limit = state.limits.max_upload;
    let headers = req.headers().clone();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_some_and(|l| l > limit) {
        return Err(GatewayError::TooLarge { limit });
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let multipart =
        text(header::CONTENT_TYPE.as_str()).is_some_and(|t| t.starts_with("multipart/form-data"));
    let over = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(UPLOAD_CHUNKS);
    let (meta_tx, meta_rx) = tokio::sync::oneshot::channel::<Result<Meta, GatewayError>>();
    let counted = {
        let over = over.clone();
        let mut seen = 0u64;
        move |chunk: Bytes| {
            seen += chunk.len() as u64;
            if seen > limit {
                over.store(true, Ordering::SeqCst);
                return Err(io::Error::other("the body is over the gateway's limit"));
            }
            Ok(chunk)
        }
    };
    let pump: BoxFuture<'static, ()> = if multipart {
        let form = axum::extract::Multipart::from_request(req, &()).await;
        Box::pin(pump_multipart(form, query, tx, meta_tx, counted))
    } else {
        let meta = Meta {
            document_type: query
                .document_type
                .or_else(|| text("x-dangan-document-type")),
            file_name: query.name.or_else(|| text("x-dangan-file-name")),
            size: length,
        };
        let _ = meta_tx.send(Ok(meta));
        let mut body = req.into_body().into_data_stream();
        let mut counted = counted;
        Box::pin(async move {
            while let Some(chunk) = body.next().await {
                let item = chunk.map_err(io::Error::other).and_then(&mut counted);
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        })
    };
    let chunks = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
    let reader = StreamReader::new(chunks);
    let run = async move {
        let meta = meta_rx
            .await
            .map_err(|_| bad("no_file", "the form has no `file` part"))??;
        work(meta, reader).await
    };
    let ((), result) = tokio::join!(pump, run);
    if over.load(Ordering::SeqCst) {
        return Err(GatewayError::TooLarge { limit });
    }
    result
}

/// Reads a multipart form's fields up to its `file` part, says what they were, then sends
/// the file's chunks on.
async fn pump_multipart(
    form: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
    query: UploadQuery,
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    meta_tx: tokio::sync::oneshot::Sender<Result<Meta, GatewayError>>,
    mut counted: impl FnMut(Bytes) -> io::Result<Bytes>,
) {
    let mut form = match form {
        Ok(f) => f,
        Err(e) => {
            let _ = meta_tx.send(Err(bad("bad_form", e.body_text())));
            return;
        }
    };
    let mut document_type = query.document_type;
    let mut file_name = query.name;
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                let _ = meta_tx.send(Err(bad("bad_form", e.body_text())));
                return;
            }
        };
        match field.name() {
            Some("type") | Some("name") => {
                let is_type = field.name() == Some("type");
                // A form's text fields are small; a huge one is refused.
                let value = match field.text().await {
                    Ok(v) if v.len() <= crate::manifest::MAX_LABEL_LEN => v,
                    _ => {
                        let _ = meta_tx.send(Err(bad("bad_form", "a text field is too long")));
                        return;
                    }
                };
                if is_type {
                    document_type = Some(value);
                } else {
                    file_name = Some(value);
                }
            }
            Some("file") => {
                let file_name = file_name.or_else(|| field.file_name().map(str::to_string));
                let meta = Meta {
                    document_type,
                    file_name,
                    size: None,
                };
                if meta_tx.send(Ok(meta)).is_err() {
                    return;
                }
                loop {
                    let item = match field.chunk().await {
                        Ok(Some(chunk)) => counted(chunk),
                        Ok(None) => return,
                        Err(e) => Err(io::Error::other(e.body_text())),
                    };
                    let stop = item.is_err();
                    if tx.send(item).await.is_err() || stop {
                        return;
                    }
                }
            }
            _ => {}
        }
    }
}

fn label(value: Option<String>, default: &str) -> Result<String, GatewayError> {
    let v = value.unwrap_or_else(|| default.to_string());
    let v = v.trim();
    if v.is_empty() || v.len() > crate::manifest::MAX_LABEL_LEN {
        return Err(bad(
            "bad_document_type",
            "a document type is 1 to 256 bytes",
        ));
    }
    Ok(v.to_string())
}

fn file_name(name: Option<String>) -> Option<String> {
    // Only the last path component, printable, bounded: it ends up in a header.
    let name = name?;
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base.chars().filter(|c| !c.is_control()).take(200).collect();
    (!clean.trim().is_empty()).then_some(clean)
}

/// A document this gateway stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Stored {
    /// The document id (64 hex digits).
    pub id: String,
    pub size: u64,
    pub document_type: String,
    pub department: String,
    pub file_name: Option<String>,
    /// Block height of its registration.
    pub height: Option<u64>,
}

/// Stores a document: the raw body (any `Content-Type`), or the `file` part of a
/// `multipart/form-data` form. Streamed; registered on the chain only once every shard
/// and the manifest are durable and the data key is saved. A failed store registers
/// nothing.
#[utoipa::path(
    post, path = "/api/v1/documents", tag = "documents",
    params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = Stored),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 413, body = super::ErrorBody),
        (status = 429, body = super::ErrorBody), (status = 503, body = super::ErrorBody),
    ),
    security(("token" = ["store"]))
)]
async fn store(
    State(state): St,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<(StatusCode, Json<Stored>), GatewayError> {
    state.authorize(req.headers(), Scope::Store)?;
    let Query(query) = query.map_err(|e| bad("bad_query", e.body_text()))?;
    let _slot = state.transfer()?;
    let s = state.clone();
    let stored = with_upload(&state, query, req, |meta, reader| async move {
        let info = DocumentInfo {
            department: s.department.clone(),
            document_type: label(meta.document_type, "document")?,
            created_at_ms: None,
        };
        let c = &s.client;
        let stored = c.store(reader, meta.size, info, &|_, _| {}).await?;
        Ok((stored, file_name(meta.file_name)))
    })
    .await?;
    let (stored, name) = stored;
    // The key is durable before the registration is submitted, as with `dangan put`.
    state.keyring.save(&stored.id, &stored.key)?;
    if let Some(name) = &name {
        state.db.set_file_name(&stored.id, name)?;
    }
    let receipt = state.client.register(stored).await?;
    Ok((
        StatusCode::CREATED,
        Json(Stored {
            id: receipt.id.to_string(),
            size: receipt.manifest.size,
            document_type: receipt.manifest.document_type.clone(),
            department: receipt.manifest.department.clone(),
            file_name: name,
            height: receipt.registered.map(|(h, _)| h),
        }),
    ))
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// At most this many (default 20, at most 100).
    pub limit: Option<usize>,
}

/// A reader's grant.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GrantInfo {
    /// The reader's public id (`dgn1…`).
    pub reader: String,
    pub expires_ms: Option<u64>,
}

/// One of this department's documents.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DocumentSummary {
    pub id: String,
    pub size: u64,
    pub document_type: String,
    pub department: String,
    pub created_at_ms: u64,
    pub file_name: Option<String>,
    /// Block height of its registration.
    pub height: u64,
    pub superseded_by: Option<String>,
    pub grants: Vec<GrantInfo>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DocumentPage {
    pub documents: Vec<DocumentSummary>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<String>,
}

/// This department's documents (those whose keys this gateway's keyring holds and the
/// chain has registered), a page at a time in id order.
#[utoipa::path(
    get, path = "/api/v1/documents", tag = "documents",
    params(ListQuery),
    responses((status = 200, body = DocumentPage), (status = 401, body = super::ErrorBody)),
    security(("token" = ["fetch"]))
)]
async fn list(
    State(state): St,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DocumentPage>, GatewayError> {
    state.authorize(&headers, Scope::Fetch)?;
    let Query(q) = query.map_err(|e| bad("bad_query", e.body_text()))?;
    let after = q.after.as_deref().map(parse_id).transpose()?;
    let limit = q.limit.unwrap_or(20).clamp(1, MAX_PAGE);
    let ids = state.keyring.ids(after.as_ref(), limit)?;
    let next = (ids.len() == limit)
        .then(|| ids.last().map(|i| i.to_string()))
        .flatten();
    let me = state.client.public();
    let found: Vec<Result<Option<DocumentSummary>, GatewayError>> = futures::stream::iter(ids)
        .map(|id| {
            let state = state.clone();
            async move {
                let record = match state.client.chain()?.check_registered(&id).await {
                    Err(crate::chain::client::ChainError::NotRegistered(_)) => return Ok(None),
                    other => other?,
                };
                if record.owner != me {
                    return Ok(None);
                }
                let m = state.client.manifest(&id).await?;
                Ok(Some(DocumentSummary {
                    id: id.to_string(),
                    size: m.size,
                    document_type: m.document_type,
                    department: m.department,
                    created_at_ms: m.created_at_ms,
                    file_name: state.db.file_name(&id)?,
                    height: record.height,
                    superseded_by: record.superseded_by.map(|s| s.to_string()),
                    grants: record
                        .grants
                        .iter()
                        .map(|(r, g)| GrantInfo {
                            reader: r.to_string(),
                            expires_ms: g.expires_ms,
                        })
                        .collect(),
                }))
            }
        })
        .buffered(8)
        .collect()
        .await;
    let mut documents = Vec::new();
    for f in found {
        documents.extend(f?);
    }
    Ok(Json(DocumentPage { documents, next }))
}

/// `Range: bytes=…` against `size`: `Ok(None)` for no header; 400 when malformed (or
/// several ranges), 416 when it cannot be satisfied.
fn parse_range(value: &HeaderValue, size: u64) -> Result<(u64, u64), GatewayError> {
    let text = value.to_str().unwrap_or_default().trim();
    let malformed = || bad("bad_range", format!("malformed Range header {text:?}"));
    let unsatisfiable = || GatewayError::RangeNotSatisfiable {
        range: text.to_string(),
        size,
    };
    let spec = text.strip_prefix("bytes=").ok_or_else(malformed)?.trim();
    if spec.contains(',') {
        return Err(bad("bad_range", "only one range per request is served"));
    }
    let (a, b) = spec.split_once('-').ok_or_else(malformed)?;
    let num = |s: &str| -> Result<u64, GatewayError> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(malformed());
        }
        s.parse().map_err(|_| malformed())
    };
    match (a.trim(), b.trim()) {
        ("", n) => {
            let n = num(n)?;
            if n == 0 || size == 0 {
                return Err(unsatisfiable());
            }
            Ok((size.saturating_sub(n), size))
        }
        (a, "") => {
            let a = num(a)?;
            if a >= size {
                return Err(unsatisfiable());
            }
            Ok((a, size))
        }
        (a, b) => {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(malformed());
            }
            if a >= size {
                return Err(unsatisfiable());
            }
            Ok((a, b.saturating_add(1).min(size)))
        }
    }
}

/// Fetches a document's plaintext, streamed; `Range: bytes=a-b`, `a-` or `-n` gives 206
/// with only the stripes the range touches read.
#[utoipa::path(
    get, path = "/api/v1/documents/{id}", tag = "documents",
    params(("id" = String, Path, description = "document id"),
           ("Range" = Option<String>, Header, description = "bytes=a-b, a- or -n")),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 416, body = super::ErrorBody),
    ),
    security(("token" = ["fetch"]))
)]
async fn fetch(
    State(state): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    state.authorize(&headers, Scope::Fetch)?;
    let id = parse_id(&id)?;
    let slot = state.transfer()?;
    let c = &state.client;
    c.chain()?.check_registered(&id).await?;
    let key = own_key(&state, &id).await?;
    let manifest = c.manifest(&id).await?;
    let size = manifest.size;
    let range = headers
        .get(header::RANGE)
        .map(|v| parse_range(v, size))
        .transpose()?;
    let (start, end) = range.unwrap_or((0, size));
    let want = end - start;
    let body = Body::from_stream(super::fetch_stream(
        c.clone(),
        manifest,
        key,
        start..end,
        slot,
    ));
    let mut response = Response::new(body);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(want));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(name) = state.db.file_name(&id)? {
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename*=UTF-8''{encoded}")) {
            h.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    if range.is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        let v = format!("bytes {start}-{}/{size}", end - 1);
        if let Ok(v) = HeaderValue::from_str(&v) {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(response)
}

/// A grant to a citizen.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GrantRequest {
    /// The reader's grant address (`dga1…`, from `dangan keys address`).
    pub address: String,
    /// When the grant lapses, Unix milliseconds (default: never).
    pub expires_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Committed {
    /// Block height of the transaction.
    pub height: u64,
    /// The reader it concerns (`dgn1…`), where there is one.
    pub reader: Option<String>,
}

/// Lets the holder of a grant address read one of this department's documents.
#[utoipa::path(
    post, path = "/api/v1/documents/{id}/grants", tag = "grants",
    params(("id" = String, Path, description = "document id")),
    request_body = GrantRequest,
    responses((status = 200, body = Committed), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)),
    security(("token" = ["grant"]))
)]
async fn grant(
    State(state): St,
    Path(id): Path<String>,
    req: Request,
) -> Result<Json<Committed>, GatewayError> {
    state.authorize(req.headers(), Scope::Grant)?;
    let id = parse_id(&id)?;
    let body: GrantRequest = json_body(&state, req.into_body()).await?;
    let address: GrantAddress = body
        .address
        .trim()
        .parse()
        .map_err(|e| bad("bad_grant_address", format!("{e}")))?;
    if body.expires_ms.is_some_and(|e| e <= crate::now_ms()) {
        return Err(bad("bad_expiry", "the expiry is in the past"));
    }
    let key = own_key(&state, &id).await?;
    let (height, _) = state
        .client
        .grant(id, &key, &address, body.expires_ms)
        .await?;
    Ok(Json(Committed {
        height,
        reader: Some(address.id.to_string()),
    }))
}

/// Withdraws a reader's grant.
#[utoipa::path(
    delete, path = "/api/v1/documents/{id}/grants/{reader}", tag = "grants",
    params(("id" = String, Path, description = "document id"),
           ("reader" = String, Path, description = "the reader's public id, dgn1…")),
    responses((status = 200, body = Committed), (status = 400, body = super::ErrorBody),
              (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)),
    security(("token" = ["revoke"]))
)]
async fn revoke(
    State(state): St,
    Path((id, reader)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Committed>, GatewayError> {
    state.authorize(&headers, Scope::Revoke)?;
    let id = parse_id(&id)?;
    let reader: PublicId = reader
        .parse()
        .map_err(|e| bad("bad_reader", format!("{e}")))?;
    own_key(&state, &id).await?;
    let (height, _) = state.client.revoke(id, reader).await?;
    Ok(Json(Committed {
        height,
        reader: Some(reader.to_string()),
    }))
}

/// A new version.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Revised {
    pub old: String,
    pub new: String,
    /// `reissue` (supersede) or `rekey`.
    pub kind: String,
    pub height: u64,
    /// Readers whose grants were carried to the new version.
    pub carried: Vec<String>,
    /// Whether the old version's bytes are all gone (a rekey; run it again if not).
    pub old_collected: Option<bool>,
}

fn revised(r: &crate::revision::RevisionReport) -> Revised {
    Revised {
        old: r.old.to_string(),
        new: r.new.to_string(),
        kind: r.kind.to_string(),
        height: r.height,
        carried: r.carried.iter().map(|p| p.to_string()).collect(),
        old_collected: r.collect.as_ref().map(|c| c.complete()),
    }
}

/// Stores a new version of a document (body as for a store), carrying its live grants.
#[utoipa::path(
    post, path = "/api/v1/documents/{id}/supersede", tag = "documents",
    params(("id" = String, Path, description = "the current version's id"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Revised), (status = 404, body = super::ErrorBody),
              (status = 409, body = super::ErrorBody), (status = 413, body = super::ErrorBody)),
    security(("token" = ["supersede"]))
)]
async fn supersede(
    State(state): St,
    Path(id): Path<String>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Result<(StatusCode, Json<Revised>), GatewayError> {
    state.authorize(req.headers(), Scope::Supersede)?;
    let Query(query) = query.map_err(|e| bad("bad_query", e.body_text()))?;
    let id = parse_id(&id)?;
    let _slot = state.transfer()?;
    own_key(&state, &id).await?;
    let old = state.client.manifest(&id).await?;
    let s = state.clone();
    let (report, name) = with_upload(&state, query, req, |meta, reader| async move {
        let info = DocumentInfo {
            department: old.department,
            document_type: label(meta.document_type, &old.document_type)?,
            created_at_ms: None,
        };
        let report = crate::revision::supersede(
            &s.client,
            &id,
            reader,
            meta.size,
            info,
            &[],
            &s.keyring,
            &|_, _| {},
        )
        .await?;
        Ok((report, file_name(meta.file_name)))
    })
    .await?;
    let name = name.or(state.db.file_name(&id)?);
    if let Some(name) = name {
        state.db.set_file_name(&report.new, &name)?;
    }
    Ok((StatusCode::CREATED, Json(revised(&report))))
}

/// Re-encrypts a document under a new data key (the old key becomes useless), carrying
/// its live grants.
#[utoipa::path(
    post, path = "/api/v1/documents/{id}/rekey", tag = "documents",
    params(("id" = String, Path, description = "document id")),
    responses((status = 201, body = Revised), (status = 404, body = super::ErrorBody),
              (status = 409, body = super::ErrorBody)),
    security(("token" = ["supersede"]))
)]
async fn rekey(
    State(state): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Revised>), GatewayError> {
    state.authorize(&headers, Scope::Supersede)?;
    let id = parse_id(&id)?;
    let _slot = state.transfer()?;
    own_key(&state, &id).await?;
    let report = crate::revision::rekey(&state.client, &id, &state.keyring, &|_, _| {}).await?;
    if let Some(name) = state.db.file_name(&id)? {
        state.db.set_file_name(&report.new, &name)?;
    }
    Ok((StatusCode::CREATED, Json(revised(&report))))
}

/// The document's receipt file: its manifest and registration proof, verifiable offline
/// against the validator set (`dangan verify --receipt`, the verify page).
#[utoipa::path(
    get, path = "/api/v1/documents/{id}/receipt", tag = "verify",
    params(("id" = String, Path, description = "document id")),
    responses((status = 200, content_type = "application/vnd.dangan.receipt", body = Vec<u8>),
              (status = 404, body = super::ErrorBody)),
    security(("token" = ["verify"]))
)]
async fn receipt(
    State(state): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    state.authorize(&headers, Scope::Verify)?;
    let id = parse_id(&id)?;
    let r = state.client.receipt(&id).await?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/vnd.dangan.receipt"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&format!("attachment; filename=\"{id}.receipt\""))
                    .map_err(|e| GatewayError::Internal(e.to_string()))?,
            ),
        ],
        r.encode(),
    )
        .into_response())
}

/// A registration as the chain proves it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Registration {
    pub document: String,
    /// Block height of the registration.
    pub height: u64,
    /// The registering department (`dgn1…`).
    pub owner: String,
    pub superseded_by: Option<String>,
    pub supersedes: Option<String>,
    /// Validators whose majority signed the proof.
    pub validators: usize,
}

/// Checks on the chain that a document is registered: its inclusion proof and a majority
/// of validator signatures, verified by the gateway.
#[utoipa::path(
    get, path = "/api/v1/documents/{id}/verify", tag = "verify",
    params(("id" = String, Path, description = "document id")),
    responses((status = 200, body = Registration), (status = 404, body = super::ErrorBody)),
    security(("token" = ["verify"]))
)]
async fn verify(
    State(state): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Registration>, GatewayError> {
    state.authorize(&headers, Scope::Verify)?;
    let id = parse_id(&id)?;
    let chain = state.client.chain()?;
    let record = chain.check_registered(&id).await?;
    Ok(Json(Registration {
        document: id.to_string(),
        height: record.height,
        owner: record.owner.to_string(),
        superseded_by: record.superseded_by.map(|s| s.to_string()),
        supersedes: record
            .supersedes
            .map(|p| format!("{} ({})", p.document, p.kind)),
        validators: chain.link().validators.len(),
    }))
}

/// What a receipt check found.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReceiptCheck {
    pub valid: bool,
    /// Why not, when not valid.
    pub reason: Option<String>,
    pub document: String,
    pub size: Option<u64>,
    pub document_type: Option<String>,
    pub department: Option<String>,
    pub created_at_ms: Option<u64>,
    pub height: u64,
    /// The registering department (`dgn1…`).
    pub registered_by: String,
    pub signatures: usize,
    pub validators: usize,
    /// The chain key (hex) the receipt is of.
    pub chain: String,
}

/// Checks a receipt file (the body) against this cluster's validator set.
#[utoipa::path(
    post, path = "/api/v1/receipts/verify", tag = "verify",
    request_body(content = Vec<u8>, content_type = "application/vnd.dangan.receipt"),
    responses((status = 200, body = ReceiptCheck), (status = 400, body = super::ErrorBody),
              (status = 413, body = super::ErrorBody)),
    security(("token" = ["verify"]))
)]
async fn verify_receipt(
    State(state): St,
    req: Request,
) -> Result<Json<ReceiptCheck>, GatewayError> {
    state.authorize(req.headers(), Scope::Verify)?;
    let bytes = axum::body::to_bytes(req.into_body(), MAX_RECEIPT_BYTES)
        .await
        .map_err(|_| GatewayError::TooLarge {
            limit: MAX_RECEIPT_BYTES as u64,
        })?;
    let r = Receipt::decode(&bytes).map_err(|e| bad("bad_receipt", e.to_string()))?;
    let validators = &state.client.chain()?.link().validators;
    let checked = r.verify(validators);
    let m = checked.as_ref().ok();
    Ok(Json(ReceiptCheck {
        valid: checked.is_ok(),
        reason: checked.as_ref().err().map(|e| e.to_string()),
        document: r.document.to_string(),
        size: m.map(|m| m.size),
        document_type: m.map(|m| m.document_type.clone()),
        department: m.map(|m| m.department.clone()),
        created_at_ms: m.map(|m| m.created_at_ms),
        height: r.registration.header.header.height,
        registered_by: r.registration.tx.tx.sender.to_string(),
        signatures: r.registration.header.signatures.len(),
        validators: validators.len(),
        chain: hex::encode(r.chain().0),
    }))
}

/// One recorded read.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditRead {
    /// The reader (`dgn1…`).
    pub reader: String,
    /// `owner`, `grantee` or `other`.
    pub role: String,
    /// What was read: `manifest` or `shard <id>`.
    pub read: String,
    pub at_ms: u64,
    /// The serving peer (`dgn1…`).
    pub peer: String,
    /// `verified` (against a root on chain), `pending` (no root yet) or `failed`.
    pub state: String,
    /// The block of the root it was verified against.
    pub height: Option<u64>,
    /// Why it failed.
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditResult {
    pub document: String,
    pub reads: Vec<AuditRead>,
    pub verified: usize,
    pub pending: usize,
    pub failed: usize,
    /// Peers that could not be asked, and why.
    pub unreachable: Vec<String>,
}

/// Who read a document: every peer's records, each checked against its root on chain.
#[utoipa::path(
    get, path = "/api/v1/documents/{id}/audit", tag = "verify",
    params(("id" = String, Path, description = "document id")),
    responses((status = 200, body = AuditResult), (status = 403, body = super::ErrorBody),
              (status = 404, body = super::ErrorBody)),
    security(("token" = ["audit"]))
)]
async fn audit(
    State(state): St,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<AuditResult>, GatewayError> {
    state.authorize(&headers, Scope::Audit)?;
    let id = parse_id(&id)?;
    let c = &state.client;
    let record = c.chain()?.check_registered(&id).await?;
    let report = crate::audit::audit(c.chain()?, &c.all_nodes(), &id).await?;
    let mut out = AuditResult {
        document: id.to_string(),
        reads: Vec::new(),
        verified: 0,
        pending: 0,
        failed: 0,
        unreachable: report
            .unreachable
            .iter()
            .map(|(p, e)| format!("{p}: {e}"))
            .collect(),
    };
    for l in &report.lines {
        let (st, height, reason) = match &l.verdict {
            Verdict::Verified { height } => {
                out.verified += 1;
                ("verified", Some(*height), None)
            }
            Verdict::Pending => {
                out.pending += 1;
                ("pending", None, None)
            }
            Verdict::Failed(why) => {
                out.failed += 1;
                ("failed", None, Some(why.clone()))
            }
        };
        let role = if l.record.reader == record.owner {
            "owner"
        } else if record.grants.contains_key(&l.record.reader) {
            "grantee"
        } else {
            "other"
        };
        out.reads.push(AuditRead {
            reader: l.record.reader.to_string(),
            role: role.into(),
            read: l.record.read.to_string(),
            at_ms: l.record.at_ms,
            peer: l.peer.to_string(),
            state: st.into(),
            height,
            reason,
        });
    }
    Ok(Json(out))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PeerHealth {
    pub id: String,
    pub addr: String,
    pub zone: String,
    pub weight: u32,
    pub reachable: bool,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterHealth {
    pub chain_id: String,
    pub height: u64,
    pub documents: usize,
    pub validators: usize,
    pub layout_epoch: u64,
    pub peers: Vec<PeerHealth>,
    /// Peers of the layout that answered.
    pub reachable: usize,
    /// k + m: a stripe's width.
    pub width: usize,
    /// Peers that may be lost per stripe without losing a document.
    pub parity: usize,
}

/// The chain's height and the layout's peers, each asked whether it answers.
#[utoipa::path(
    get, path = "/api/v1/status", tag = "cluster",
    responses((status = 200, body = ClusterHealth), (status = 503, body = super::ErrorBody)),
    security(("token" = ["status"]))
)]
async fn status(State(state): St, headers: HeaderMap) -> Result<Json<ClusterHealth>, GatewayError> {
    state.authorize(&headers, Scope::Status)?;
    let c = &state.client;
    let chain = c
        .chain()?
        .status()
        .await
        .map_err(crate::client::ClientError::from)?;
    let nodes = c.layout().nodes.clone();
    let pings = futures::future::join_all(nodes.iter().map(|n| async move {
        c.net()
            .exchange(n, &crate::proto::Request::Ping, None)
            .await
            .map(|_| ())
    }))
    .await;
    let peers: Vec<PeerHealth> = nodes
        .iter()
        .zip(pings)
        .map(|(n, p)| PeerHealth {
            id: n.key.to_string(),
            addr: n.addr.clone(),
            zone: n.zone.clone(),
            weight: n.weight,
            reachable: p.is_ok(),
            error: p.err().map(|e| e.to_string()),
        })
        .collect();
    let params = c.options().params;
    Ok(Json(ClusterHealth {
        chain_id: chain.chain_id,
        height: chain.height,
        documents: chain.documents,
        validators: chain.validators.len(),
        layout_epoch: chain.layout_epoch,
        reachable: peers.iter().filter(|p| p.reachable).count(),
        peers,
        width: params.width(),
        parity: usize::from(params.m),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_or_refuse() {
        let r = |s: &str, size| parse_range(&HeaderValue::from_str(s).unwrap(), size);
        assert_eq!(r("bytes=0-9", 100).unwrap(), (0, 10));
        assert_eq!(r("bytes=90-200", 100).unwrap(), (90, 100));
        assert_eq!(r("bytes=95-", 100).unwrap(), (95, 100));
        assert_eq!(r("bytes=-10", 100).unwrap(), (90, 100));
        assert_eq!(r("bytes=-1000", 100).unwrap(), (0, 100));
        for bad in [
            "bytes=",
            "bytes=a-b",
            "items=0-1",
            "bytes=5-1",
            "bytes=0-1,3-4",
            "bytes=--1",
        ] {
            assert!(
                matches!(r(bad, 100), Err(GatewayError::BadRequest { .. })),
                "{bad}"
            );
        }
        for unsat in ["bytes=100-", "bytes=100-200", "bytes=-0"] {
            assert!(
                matches!(r(unsat, 100), Err(GatewayError::RangeNotSatisfiable { .. })),
                "{unsat}"
            );
        }
        assert!(matches!(
            r("bytes=-5", 0),
            Err(GatewayError::RangeNotSatisfiable { .. })
        ));
    }

    #[test]
    fn file_names_keep_only_the_base_name() {
        assert_eq!(
            file_name(Some("../../etc/passwd".into())).as_deref(),
            Some("passwd")
        );
        assert_eq!(
            file_name(Some("C:\\x\\出生证明.pdf".into())).as_deref(),
            Some("出生证明.pdf")
        );
        assert_eq!(file_name(Some("a\r\nb".into())).as_deref(), Some("ab"));
        assert_eq!(file_name(Some("/".into())), None);
    }
}
