//! The S3 face of the gateway, on its own listener (`s3_listen`): a documented subset of
//! Amazon S3 ([docs/s3.md](../../docs/s3.md)) over the same cluster, built on the `s3s`
//! crate (HTTP, XML, SigV4 in header and presigned forms, S3's errors); this module is the
//! [`S3`] implementation and the key lookup behind `s3s`'s auth hook.
//!
//! Buckets and object names live on chain (`chain::names`): every gateway of the department
//! sees the same, and losing one loses none. An object is an ordinary Dangan document stored
//! with `Client::store` and registered *with* its name (one `PutName` transaction); a new PUT
//! of a name supersedes the previous version (the version id is the document id; an older
//! version's metadata is read back from the `PutName` in its block); a DELETE unbinds the
//! name (no delete marker: the documents stay registered, readable by id with `dangan get`).
//!
//! Object metadata (ETag = MD5 of the bytes, Content-Type, `x-amz-meta-*`, time of the PUT)
//! travels on chain sealed with a key derived from the document's data key: only holders of
//! that key read it. The size is in the clear (the manifest says it to peers anyway).
//!
//! Access keys: `dgn…` ids kept in the gateway's redb (`s3-keys-0`), each mapped to the
//! department this gateway acts for; their secrets are never stored: each is derived from
//! the department's key and the id ([`secret_key`]), so a copy of the gateway's disk yields
//! none. Every request is signed (no anonymous access: `set_auth` is always set).
//!
//! Not for: the department REST API (`api`), the token store (`gateway`).

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use md5::Digest;
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, Bucket, CommonPrefix,
    CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput,
    CopyObjectResult, CopySource, CreateBucketInput, CreateBucketOutput,
    CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteBucketInput, DeleteBucketOutput,
    DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput, DeletedObject,
    ETag, GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput,
    HeadObjectOutput, ListBucketsInput, ListBucketsOutput, ListMultipartUploadsInput,
    ListMultipartUploadsOutput, ListObjectVersionsInput, ListObjectVersionsOutput,
    ListObjectsV2Input, ListObjectsV2Output, ListPartsInput, ListPartsOutput, Metadata,
    MetadataDirective, MultipartUpload, Object, ObjectVersion, Part, PutObjectInput,
    PutObjectOutput, StreamingBlob, Timestamp, UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use serde::{Deserialize, Serialize};
use tokio_util::io::{ReaderStream, StreamReader};

use super::uploads::{self, PartRecord, UploadRecord};
use super::{AppState, GatewayError};
use crate::chain::client::ChainError;
use crate::chain::names::{MAX_NAME_META, NameRecord, after_prefix};
use crate::chain::tx::TxBody;
use crate::client::ClientError;
use crate::codec::DocumentInfo;
use crate::crypto::{self, DataKey};
use crate::id::DocumentId;
use crate::identity::Identity;
use crate::keyring::KeyringError;

/// How an access key id starts.
pub const ACCESS_KEY_PREFIX: &str = "DGN";
/// Context of the derivation of every S3 secret from the department's key.
const SECRETS_CONTEXT: &str = "dangan 2026 s3 secret keys v1";
/// Format of sealed [`ObjectMeta`] (1: without `parts`, still read).
const META_FORMAT: u8 = 2;
/// Smallest part but the last of a multipart upload (S3's).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// Highest part number (S3's).
pub const MAX_PART_NUMBER: i32 = 10_000;
/// Chunks between a PUT's body and the codec.
const UPLOAD_CHUNKS: usize = 8;

/// The secret of access key `access_key` for the department `identity`: 40 hex digits,
/// derived (never stored), so the gateway's disk holds no secret.
/// None for a department whose key is in a token.
pub fn secret_key(
    identity: &Identity,
    access_key: &str,
) -> Result<String, crate::identity::IdentityError> {
    Ok(secret_from(
        &identity.derive_secret(SECRETS_CONTEXT)?,
        access_key,
    ))
}

fn secret_from(root: &[u8; 32], access_key: &str) -> String {
    let h = blake3::keyed_hash(root, access_key.as_bytes());
    hex::encode(&h.as_bytes()[..20])
}

/// A new access key id: `DGN` and 17 random upper-case hex digits (20 characters, as AWS's).
pub fn new_access_key() -> String {
    let bytes: [u8; 9] = rand::random();
    let hex = hex::encode_upper(bytes);
    format!("{ACCESS_KEY_PREFIX}{}", &hex[..17])
}

/// What a PUT said about an object, sealed with the document's key on chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub format: u8,
    /// MD5 of the bytes: the object's ETag.
    pub md5: [u8; 16],
    pub content_type: Option<String>,
    /// `x-amz-meta-*` (names without the prefix), in name order.
    pub user: Vec<(String, String)>,
    /// When the PUT was made, Unix milliseconds.
    pub modified_ms: u64,
    /// Parts of a multipart upload (`md5` is then the MD5 of the parts' MD5s, and the ETag
    /// `md5-parts`, as S3's); 0 for a single PUT.
    pub parts: u32,
}

/// [`ObjectMeta`] as format 1 sealed it (no `parts`).
#[derive(Deserialize)]
struct ObjectMetaV1 {
    format: u8,
    md5: [u8; 16],
    content_type: Option<String>,
    user: Vec<(String, String)>,
    modified_ms: u64,
}

impl ObjectMeta {
    fn etag(&self) -> ETag {
        if self.parts == 0 {
            ETag::Strong(hex::encode(self.md5))
        } else {
            ETag::Strong(format!("{}-{}", hex::encode(self.md5), self.parts))
        }
    }

    fn metadata(&self) -> Option<Metadata> {
        (!self.user.is_empty()).then(|| self.user.iter().cloned().collect())
    }

    fn modified(&self) -> Timestamp {
        Timestamp::from(SystemTime::UNIX_EPOCH + Duration::from_millis(self.modified_ms))
    }

    /// Sealed with a key derived from `key` (`crypto::seal_meta`).
    pub fn seal(&self, key: &DataKey) -> Vec<u8> {
        let plain = postcard::to_allocvec(self).expect("encoding into memory cannot fail");
        crypto::seal_meta(key, &plain)
    }

    /// Opens what [`ObjectMeta::seal`] sealed with `key`; `None` if it does not open.
    pub fn open(sealed: &[u8], key: &DataKey) -> Option<Self> {
        let plain = &crypto::open_meta(key, sealed)?;
        postcard::from_bytes::<ObjectMeta>(plain)
            .ok()
            .filter(|m| m.format == META_FORMAT)
            .or_else(|| {
                let m = postcard::from_bytes::<ObjectMetaV1>(plain).ok()?;
                (m.format == 1).then_some(ObjectMeta {
                    format: m.format,
                    md5: m.md5,
                    content_type: m.content_type,
                    user: m.user,
                    modified_ms: m.modified_ms,
                    parts: 0,
                })
            })
    }
}

/// The access keys `s3s` asks about: known ids get their derived secret.
pub struct S3Keys {
    state: Arc<AppState>,
    root: [u8; 32],
}

#[async_trait::async_trait]
impl S3Auth for S3Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.state.db.s3_key(access_key) {
            Ok(Some(_)) => Ok(SecretKey::from(secret_from(&self.root, access_key))),
            Ok(None) => Err(s3_error!(InvalidAccessKeyId)),
            Err(e) => Err(internal(e)),
        }
    }
}

/// The S3 service of a gateway over `state`; refused for a department whose key is in a
/// token (the S3 secrets are derived from the key).
pub fn service(
    state: Arc<AppState>,
) -> Result<s3s::service::S3Service, crate::identity::IdentityError> {
    let root = state.client.derive_secret(SECRETS_CONTEXT)?;
    let mut builder = s3s::service::S3ServiceBuilder::new(DanganS3 {
        state: state.clone(),
    });
    // Never without: s3s serves anonymous requests when no auth is set.
    builder.set_auth(S3Keys { state, root });
    Ok(builder.build())
}

/// The [`S3`] implementation.
pub struct DanganS3 {
    state: Arc<AppState>,
}

fn internal(e: impl std::fmt::Display) -> S3Error {
    tracing::warn!(error = %e, "S3 request failed");
    S3Error::with_message(S3ErrorCode::InternalError, e.to_string())
}

/// An error of the layers below as S3 says it.
fn s3(e: impl Into<GatewayError>) -> S3Error {
    let e: GatewayError = e.into();
    let unavailable = |e: &dyn std::fmt::Display| {
        S3Error::with_message(S3ErrorCode::ServiceUnavailable, e.to_string())
    };
    match &e {
        GatewayError::TooLarge { .. } => {
            S3Error::with_message(S3ErrorCode::EntityTooLarge, e.to_string())
        }
        GatewayError::Busy(_) => S3Error::with_message(S3ErrorCode::SlowDown, e.to_string()),
        GatewayError::Chain(ChainError::NotRegistered(_))
        | GatewayError::Client(ClientError::Chain(ChainError::NotRegistered(_))) => {
            S3Error::with_message(S3ErrorCode::NoSuchKey, e.to_string())
        }
        GatewayError::Chain(ChainError::Refused(_))
        | GatewayError::Client(ClientError::Chain(ChainError::Refused(_))) => {
            S3Error::with_message(S3ErrorCode::AccessDenied, e.to_string())
        }
        GatewayError::Client(ClientError::Codec(crate::codec::CodecError::Read(_))) => {
            S3Error::with_message(S3ErrorCode::IncompleteBody, e.to_string())
        }
        GatewayError::Keyring(KeyringError::Missing { .. }) => {
            S3Error::with_message(S3ErrorCode::AccessDenied, e.to_string())
        }
        GatewayError::Chain(_) | GatewayError::Client(_) => unavailable(&e),
        _ => internal(&e),
    }
}

impl DanganS3 {
    fn chain(&self) -> S3Result<&crate::chain::client::ChainClient> {
        self.state.client.chain().map_err(s3)
    }

    /// `bucket` if this department owns it: `NoSuchBucket`, or `AccessDenied` when it is
    /// another department's.
    async fn own_bucket(&self, bucket: &str) -> S3Result<crate::chain::names::BucketRecord> {
        let record = self.chain()?.bucket(bucket).await.map_err(s3)?;
        match record {
            None => Err(s3_error!(NoSuchBucket)),
            Some(b) if b.owner != self.state.client.public() => Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                format!("bucket {bucket:?} belongs to another department"),
            )),
            Some(b) => Ok(b),
        }
    }

    /// The name `key` in one of this department's buckets, or `NoSuchKey`.
    async fn own_name(&self, bucket: &str, key: &str) -> S3Result<NameRecord> {
        self.own_bucket(bucket).await?;
        match self.chain()?.name(bucket, key).await.map_err(s3)? {
            Some(n) => Ok(n),
            None => Err(s3_error!(NoSuchKey)),
        }
    }

    /// The data key of a named document and its opened metadata.
    fn key_and_meta(&self, name: &NameRecord) -> S3Result<(DataKey, ObjectMeta)> {
        let key = self.state.keyring.load(&name.document).map_err(s3)?;
        let meta = ObjectMeta::open(&name.meta, &key).ok_or_else(|| {
            internal(format!(
                "the metadata of {}/{} does not open with its document's key",
                name.bucket, name.key
            ))
        })?;
        Ok((key, meta))
    }

    /// Stores `body` as a new document (not registered yet), counting its size and MD5 as
    /// the bytes go by, in bounded memory; refused past the size limit or with a
    /// `Content-MD5` that does not match (nothing registered: the bytes are an orphan
    /// `collect` removes).
    async fn store_object<S, E>(
        &self,
        key: &str,
        body: S,
        declared: Option<u64>,
        expected: Option<[u8; 16]>,
    ) -> S3Result<StoredObject>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        crate::chain::names::check_key(key)
            .map_err(|e| S3Error::with_message(S3ErrorCode::KeyTooLongError, e.to_string()))?;
        let limit = self.state.limits.max_upload;
        if declared.is_some_and(|l| l > limit) {
            return Err(s3(GatewayError::TooLarge { limit }));
        }
        let (pump, reader, seen) = counted(body, limit);
        let info = DocumentInfo {
            department: self.state.department.clone(),
            document_type: "s3-object".to_string(),
            created_at_ms: None,
        };
        let client = &self.state.client;
        let ((), stored) = tokio::join!(pump, client.store(reader, declared, info, &|_, _| {}));
        let (md5, size) = seen.finish(limit, expected)?;
        let stored = stored.map_err(s3)?;
        Ok(StoredObject {
            id: stored.id,
            key: stored.key,
            md5,
            size,
            parts: 0,
        })
    }

    /// Saves a stored object's key durably, then registers it under `bucket`/`key` with its
    /// sealed metadata in one `PutName` (superseding what the name held).
    async fn register_object(
        &self,
        bucket: String,
        key: String,
        stored: StoredObject,
        content_type: Option<String>,
        user: Vec<(String, String)>,
    ) -> S3Result<(DocumentId, ObjectMeta)> {
        let meta = ObjectMeta {
            format: META_FORMAT,
            md5: stored.md5,
            content_type,
            user,
            modified_ms: crate::now_ms(),
            parts: stored.parts,
        };
        let sealed = meta.seal(&stored.key);
        if sealed.len() > MAX_NAME_META {
            return Err(s3_error!(MetadataTooLarge));
        }
        // The key is durable before the registration is submitted, as with `dangan put`.
        self.state
            .keyring
            .save(&stored.id, &stored.key)
            .map_err(s3)?;
        self.submit(TxBody::PutName {
            bucket,
            key,
            document: stored.id,
            size: stored.size,
            meta: sealed,
        })
        .await?;
        Ok((stored.id, meta))
    }

    /// Unbinds `key` if bound (S3 answers a delete of a missing key as done).
    async fn unbind(&self, bucket: &str, key: &str) -> S3Result<()> {
        if self.chain()?.name(bucket, key).await.map_err(s3)?.is_some() {
            self.submit(TxBody::DeleteName {
                bucket: bucket.to_string(),
                key: key.to_string(),
            })
            .await?;
        }
        Ok(())
    }

    /// Version `version_id` of `name` (its current one without): one of the documents its
    /// current version supersedes, each step proven on chain; `NoSuchVersion` otherwise.
    async fn version(&self, name: &NameRecord, version_id: Option<&str>) -> S3Result<Version> {
        let Some(wanted) = version_id.filter(|v| *v != "null") else {
            return self.describe(name, name.document, name.height).await;
        };
        let wanted: DocumentId = wanted.parse().map_err(|_| s3_error!(NoSuchVersion))?;
        let chain = self.chain()?;
        let mut at = name.document;
        for _ in 0..=name.versions {
            let record = chain.check_registered(&at).await.map_err(s3)?;
            if at == wanted {
                return self.describe(name, at, record.height).await;
            }
            match record.supersedes {
                Some(previous) => at = previous.document,
                None => break,
            }
        }
        Err(s3_error!(NoSuchVersion))
    }

    /// Every version of `name`, newest first (the documents its current version
    /// supersedes, back to the one that bound it afresh), each step proven on chain.
    async fn versions(&self, name: &NameRecord) -> S3Result<Vec<Version>> {
        let chain = self.chain()?;
        let mut out = vec![self.describe(name, name.document, name.height).await?];
        let limit = name.versions.max(1) as usize;
        // Each version's registration, asked once: its height and the one it replaced.
        let mut previous = match limit {
            1 => None,
            _ => {
                let current = chain.check_registered(&name.document).await;
                current.map_err(s3)?.supersedes
            }
        };
        while out.len() < limit {
            let Some(p) = previous else { break };
            let record = chain.check_registered(&p.document).await.map_err(s3)?;
            out.push(self.describe(name, p.document, record.height).await?);
            previous = record.supersedes;
        }
        Ok(out)
    }

    /// The size and metadata `document`, a version of `name` registered in block
    /// `height`, was bound with: the current version's from the name record; an older
    /// one's from the `PutName` that bound it, in that block (checked against its signed
    /// header). A version stored otherwise (`dangan supersede`) has no metadata; its size
    /// comes from its manifest.
    async fn describe(
        &self,
        name: &NameRecord,
        document: DocumentId,
        height: u64,
    ) -> S3Result<Version> {
        let key = self.state.keyring.load(&document).ok();
        let open = |sealed: &[u8]| key.as_ref().and_then(|k| ObjectMeta::open(sealed, k));
        if document == name.document {
            return Ok(Version {
                document,
                size: name.size,
                meta: open(&name.meta),
            });
        }
        let block = self.chain()?.block(height).await.map_err(s3)?;
        let bound = block
            .iter()
            .flat_map(|b| &b.txs)
            .find_map(|tx| match &tx.tx.body {
                TxBody::PutName {
                    document: d,
                    size,
                    meta,
                    ..
                } if *d == document => Some((*size, meta.clone())),
                _ => None,
            });
        match bound {
            Some((size, sealed)) => Ok(Version {
                document,
                size,
                meta: open(&sealed),
            }),
            None => {
                let manifest = self.state.client.manifest(&document).await.map_err(s3)?;
                Ok(Version {
                    document,
                    size: manifest.size,
                    meta: None,
                })
            }
        }
    }

    /// The upload `upload_id` of `bucket`/`key` in progress on this gateway, or
    /// `NoSuchUpload` (unknown, aborted, completed, or of another name or department).
    fn own_upload(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<UploadRecord> {
        match self.state.db.upload(upload_id).map_err(s3)? {
            Some(u)
                if u.bucket == bucket && u.key == key && u.owner == self.state.client.public() =>
            {
                Ok(u)
            }
            _ => Err(s3_error!(NoSuchUpload)),
        }
    }

    /// Submits a name transaction; a refusal of the chain is S3's `InvalidRequest` with
    /// the chain's reason.
    async fn submit(&self, body: TxBody) -> S3Result<(u64, u32)> {
        self.chain()?.submit(body).await.map_err(|e| match e {
            ChainError::Refused(reason) => {
                S3Error::with_message(S3ErrorCode::InvalidRequest, reason)
            }
            other => s3(other),
        })
    }
}

/// What `store_object` (or a completed multipart upload) stored: not registered yet.
struct StoredObject {
    id: DocumentId,
    key: DataKey,
    md5: [u8; 16],
    size: u64,
    /// Parts of a multipart upload (`md5` is the MD5 of theirs), 0 for a PUT.
    parts: u32,
}

/// The MD5 and size of a body as it went by, and whether it went past the limit.
struct Seen(Arc<Mutex<(md5::Md5, u64, bool)>>);

impl Seen {
    /// (MD5, size) once the body was read: `EntityTooLarge` past `limit`, `BadDigest` if a
    /// `Content-MD5` was `expected` and does not match.
    fn finish(&self, limit: u64, expected: Option<[u8; 16]>) -> S3Result<([u8; 16], u64)> {
        let (md5, size, over) = {
            let s = self.0.lock().expect("md5 lock");
            (s.0.clone().finalize(), s.1, s.2)
        };
        if over {
            return Err(s3(GatewayError::TooLarge { limit }));
        }
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&md5);
        if expected.is_some_and(|e| e != digest) {
            return Err(s3_error!(BadDigest));
        }
        Ok((digest, size))
    }
}

/// A request body as a reader for the codec, its MD5 and size counted as the bytes go by
/// (refused past `limit`), through a channel of `UPLOAD_CHUNKS` (bounded memory): the pump
/// to run alongside the reader's consumer, the reader, what was seen.
fn counted<S, E>(
    body: S,
    limit: u64,
) -> (
    impl std::future::Future<Output = ()>,
    impl tokio::io::AsyncRead + Unpin + Send + 'static,
    Seen,
)
where
    S: futures::Stream<Item = Result<Bytes, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    let seen = Arc::new(Mutex::new((md5::Md5::new(), 0u64, false)));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(UPLOAD_CHUNKS);
    let pump = {
        let seen = seen.clone();
        async move {
            let mut body = body;
            while let Some(chunk) = body.next().await {
                let item = match chunk {
                    Ok(bytes) => {
                        let mut s = seen.lock().expect("md5 lock");
                        s.0.update(&bytes);
                        s.1 += bytes.len() as u64;
                        if s.1 > limit {
                            s.2 = true;
                            Err(io::Error::other("the body is over the gateway's limit"))
                        } else {
                            Ok(bytes)
                        }
                    }
                    Err(e) => Err(io::Error::other(e.to_string())),
                };
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    return;
                }
            }
        }
    };
    let reader = StreamReader::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    (pump, reader, Seen(seen))
}

/// One version of a name, as a versioned GET or HEAD and ListObjectVersions show it.
struct Version {
    document: DocumentId,
    size: u64,
    /// `None` when it does not open here (stored otherwise, or the key is not in this
    /// gateway's keyring).
    meta: Option<ObjectMeta>,
}

/// `x-amz-meta-*` in name order.
fn user_metadata(metadata: Option<Metadata>) -> Vec<(String, String)> {
    let sorted: std::collections::BTreeMap<String, String> =
        metadata.unwrap_or_default().into_iter().collect();
    sorted.into_iter().collect()
}

/// The `Content-MD5` header's 16 bytes; `InvalidDigest` if it is not base64 of 16 bytes.
fn content_md5(header: Option<&str>) -> S3Result<Option<[u8; 16]>> {
    let Some(text) = header else {
        return Ok(None);
    };
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        .map(Some)
        .ok_or_else(|| s3_error!(InvalidDigest))
}

#[async_trait::async_trait]
impl S3 for DanganS3 {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket;
        if let Some(b) = self.chain()?.bucket(&bucket).await.map_err(s3)? {
            return Err(if b.owner == self.state.client.public() {
                s3_error!(BucketAlreadyOwnedByYou)
            } else {
                s3_error!(BucketAlreadyExists)
            });
        }
        crate::chain::names::check_bucket_name(&bucket)
            .map_err(|e| S3Error::with_message(S3ErrorCode::InvalidBucketName, e.to_string()))?;
        self.submit(TxBody::CreateBucket {
            bucket: bucket.clone(),
        })
        .await?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.own_bucket(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets = self.chain()?.buckets().await.map_err(s3)?;
        let buckets = buckets
            .into_iter()
            .map(|b| Bucket {
                name: Some(b.name),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        self.own_bucket(&bucket).await?;
        let page = self.chain()?.names(&bucket, "", None, b"", 1).await;
        if page.map_err(s3)?.is_some_and(|p| !p.names.is_empty()) {
            return Err(s3_error!(BucketNotEmpty));
        }
        self.submit(TxBody::DeleteBucket { bucket }).await?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        self.own_bucket(&input.bucket).await?;
        let expected = content_md5(input.content_md5.as_deref())?;
        let declared = input.content_length.and_then(|l| u64::try_from(l).ok());
        let user = user_metadata(input.metadata);
        let _slot = self.state.transfer().map_err(s3)?;
        let body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let stored = self
            .store_object(&input.key, body, declared, expected)
            .await?;
        let (id, meta) = self
            .register_object(input.bucket, input.key, stored, input.content_type, user)
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(meta.etag()),
            version_id: Some(id.to_string()),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let CopySource::Bucket {
            bucket: from_bucket,
            key: from_key,
            version_id,
        } = &input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "copies from access points"));
        };
        self.own_bucket(&input.bucket).await?;
        let source = self.own_name(from_bucket, from_key).await?;
        let Version { document, meta, .. } = self.version(&source, version_id.as_deref()).await?;
        let key = self.state.keyring.load(&document).map_err(s3)?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let (content_type, user) = match (&meta, replace) {
            (Some(m), false) => (m.content_type.clone(), m.user.clone()),
            _ => (input.content_type, user_metadata(input.metadata)),
        };
        let slot = self.state.transfer().map_err(s3)?;
        let client = self.state.client.clone();
        let manifest = client.manifest(&document).await.map_err(s3)?;
        let size = manifest.size;
        let (writer, reader) = tokio::io::duplex(super::FETCH_PIPE);
        let read = tokio::spawn(async move {
            let _slot = slot;
            client
                .read_range(&manifest, &key, 0..size, writer, &|_, _| {})
                .await
        });
        let stored = self
            .store_object(&input.key, ReaderStream::new(reader), Some(size), None)
            .await?;
        // Registered only once the whole source was read: a failed read stores nothing.
        match read.await {
            Ok(Ok(r)) if r.bytes == size && stored.size == size => {}
            Ok(Ok(r)) => return Err(internal(format!("short copy: {} of {size} bytes", r.bytes))),
            Ok(Err(e)) => return Err(s3(e)),
            Err(e) => return Err(internal(e)),
        }
        let (id, meta) = self
            .register_object(input.bucket, input.key, stored, content_type, user)
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(meta.etag()),
                last_modified: Some(meta.modified()),
                ..Default::default()
            }),
            copy_source_version_id: Some(document.to_string()),
            version_id: Some(id.to_string()),
            ..Default::default()
        }))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.own_bucket(&input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for object in input.delete.objects {
            match self.unbind(&input.bucket, &object.key).await {
                Ok(()) if quiet => {}
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(object.key),
                    ..Default::default()
                }),
                Err(e) => errors.push(s3s::dto::Error {
                    code: Some(e.code().as_str().to_string()),
                    message: e.message().map(str::to_string),
                    key: Some(object.key),
                    version_id: object.version_id,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let name = self.own_name(&input.bucket, &input.key).await?;
        let Version { document, meta, .. } =
            self.version(&name, input.version_id.as_deref()).await?;
        let key = self.state.keyring.load(&document).map_err(s3)?;
        let slot = self.state.transfer().map_err(s3)?;
        let client = &self.state.client;
        // The registration proven (and this department's), then the manifest.
        let record = self
            .chain()?
            .check_registered(&document)
            .await
            .map_err(s3)?;
        if record.owner != client.public() {
            return Err(s3_error!(AccessDenied));
        }
        let manifest = client.manifest(&document).await.map_err(s3)?;
        let size = manifest.size;
        let range = match input.range {
            Some(r) => Some(r.check(size).map_err(|_| s3_error!(InvalidRange))?),
            None => None,
        };
        let (start, end) = range.clone().map_or((0, size), |r| (r.start, r.end));
        let want = end - start;
        let body = StreamingBlob::wrap(super::fetch_stream(
            client.clone(),
            manifest,
            key,
            start..end,
            slot,
        ));
        Ok(S3Response::new(GetObjectOutput {
            body: Some(body),
            content_length: Some(want as i64),
            content_range: range.map(|r| format!("bytes {}-{}/{size}", r.start, r.end - 1)),
            accept_ranges: Some("bytes".to_string()),
            content_type: meta.as_ref().and_then(|m| m.content_type.clone()),
            e_tag: meta.as_ref().map(ObjectMeta::etag),
            last_modified: meta.as_ref().map(ObjectMeta::modified),
            metadata: meta.as_ref().and_then(ObjectMeta::metadata),
            version_id: Some(document.to_string()),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let name = self.own_name(&input.bucket, &input.key).await?;
        let version = self.version(&name, input.version_id.as_deref()).await?;
        // Refused like a GET when this gateway does not hold the document's key.
        self.state.keyring.load(&version.document).map_err(s3)?;
        let meta = version.meta.as_ref();
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(version.size as i64),
            accept_ranges: Some("bytes".to_string()),
            content_type: meta.and_then(|m| m.content_type.clone()),
            e_tag: meta.map(ObjectMeta::etag),
            last_modified: meta.map(ObjectMeta::modified),
            metadata: meta.and_then(ObjectMeta::metadata),
            version_id: Some(version.document.to_string()),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.own_bucket(&input.bucket).await?;
        self.unbind(&input.bucket, &input.key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        self.own_bucket(&input.bucket).await?;
        crate::chain::names::check_key(&input.key)
            .map_err(|e| S3Error::with_message(S3ErrorCode::KeyTooLongError, e.to_string()))?;
        let upload_id = uploads::new_upload_id();
        let slot = uploads::key_slot(&upload_id);
        // The data key is durable before any part is sealed with it.
        let key = DataKey::generate();
        self.state.keyring.save(&slot, &key).map_err(s3)?;
        let record = UploadRecord::new(
            input.bucket.clone(),
            input.key.clone(),
            self.state.client.public(),
            slot,
            input.content_type,
            user_metadata(input.metadata),
        );
        self.state
            .db
            .upload_create(&upload_id, &record)
            .map_err(s3)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        if !(1..=MAX_PART_NUMBER).contains(&input.part_number) {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                format!("part numbers are 1 to {MAX_PART_NUMBER}"),
            ));
        }
        let upload = self.own_upload(&input.bucket, &input.key, &input.upload_id)?;
        let expected = content_md5(input.content_md5.as_deref())?;
        let limit = self.state.limits.max_upload;
        let declared = input.content_length.and_then(|l| u64::try_from(l).ok());
        if declared.is_some_and(|l| l > limit) {
            return Err(s3(GatewayError::TooLarge { limit }));
        }
        let key = self.state.keyring.load(&upload.key_slot).map_err(s3)?;
        let _slot = self.state.transfer().map_err(s3)?;
        let body = input.body.ok_or_else(|| s3_error!(IncompleteBody))?;
        let (pump, reader, seen) = counted(body, limit);
        let client = &self.state.client;
        let ((), stored) = tokio::join!(pump, client.store_piece(reader, &key));
        let (md5, size) = seen.finish(limit, expected)?;
        let piece = stored.map_err(s3)?;
        let part = PartRecord::new(md5, size, piece);
        let number = input.part_number as u32;
        if !self
            .state
            .db
            .part_put(&input.upload_id, number, &part)
            .map_err(s3)?
        {
            // Aborted or completed meanwhile: the piece is an orphan `collect` removes.
            return Err(s3_error!(NoSuchUpload));
        }
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(ETag::Strong(hex::encode(md5))),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        self.own_upload(&input.bucket, &input.key, &input.upload_id)?;
        let max = input.max_parts.unwrap_or(1000).clamp(1, 1000) as usize;
        let after = input.part_number_marker.unwrap_or(0).max(0) as u32;
        let parts = self.state.db.parts(&input.upload_id).map_err(s3)?;
        let mut page: Vec<(u32, PartRecord)> =
            parts.into_iter().filter(|(n, _)| *n > after).collect();
        let truncated = page.len() > max;
        page.truncate(max);
        let next = page.last().map(|(n, _)| *n as i32);
        let parts = page
            .into_iter()
            .map(|(n, p)| Part {
                part_number: Some(n as i32),
                e_tag: Some(ETag::Strong(hex::encode(p.md5))),
                size: Some(p.size as i64),
                last_modified: Some(Timestamp::from(
                    SystemTime::UNIX_EPOCH + Duration::from_millis(p.modified_ms),
                )),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            part_number_marker: input.part_number_marker,
            is_truncated: Some(truncated),
            next_part_number_marker: if truncated { next } else { None },
            parts: Some(parts),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let upload = self.own_upload(&input.bucket, &input.key, &input.upload_id)?;
        let listed = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if listed.is_empty() {
            return Err(s3_error!(MalformedXML, "the upload lists no part"));
        }
        let mut stored: std::collections::BTreeMap<u32, PartRecord> = self
            .state
            .db
            .parts(&input.upload_id)
            .map_err(s3)?
            .into_iter()
            .collect();
        // The listed parts, in strictly ascending order, each uploaded with the ETag given,
        // each but the last at least `MIN_PART_SIZE`.
        let mut chosen: Vec<PartRecord> = Vec::with_capacity(listed.len());
        let mut previous = 0;
        for part in &listed {
            let number = part.part_number.unwrap_or(0);
            if number <= previous {
                return Err(s3_error!(InvalidPartOrder));
            }
            previous = number;
            let record = u32::try_from(number)
                .ok()
                .and_then(|n| stored.remove(&n))
                .ok_or_else(|| {
                    S3Error::with_message(
                        S3ErrorCode::InvalidPart,
                        format!("part {number} was not uploaded"),
                    )
                })?;
            let etag = part
                .e_tag
                .as_ref()
                .map(|e| e.value().trim_matches('"').to_string());
            if etag.is_some_and(|e| e != hex::encode(record.md5)) {
                return Err(S3Error::with_message(
                    S3ErrorCode::InvalidPart,
                    format!("part {number}'s ETag does not match"),
                ));
            }
            chosen.push(record);
        }
        if let Some(small) = chosen[..chosen.len() - 1]
            .iter()
            .position(|p| p.size < MIN_PART_SIZE)
        {
            return Err(S3Error::with_message(
                S3ErrorCode::EntityTooSmall,
                format!(
                    "part {} is {} bytes; every part but the last needs {MIN_PART_SIZE}",
                    listed[small].part_number.unwrap_or(0),
                    chosen[small].size
                ),
            ));
        }
        let mut md5s = md5::Md5::new();
        for p in &chosen {
            md5s.update(p.md5);
        }
        let mut md5 = [0u8; 16];
        md5.copy_from_slice(&md5s.finalize());
        let size: u64 = chosen.iter().map(|p| p.size).sum();
        let limit = self.state.limits.max_upload;
        if size > limit {
            return Err(s3(GatewayError::TooLarge { limit }));
        }
        let parts = chosen.len() as u32;
        let key = self.state.keyring.load(&upload.key_slot).map_err(s3)?;
        let info = DocumentInfo {
            department: self.state.department.clone(),
            document_type: "s3-object".to_string(),
            created_at_ms: None,
        };
        // The pieces as they were sealed: only the manifest is new.
        let pieces = chosen.into_iter().map(|p| p.piece).collect();
        let receipt = self
            .state
            .client
            .store_pieces(pieces, info, key)
            .await
            .map_err(s3)?;
        let object = StoredObject {
            id: receipt.id,
            key: receipt.key,
            md5,
            size,
            parts,
        };
        let (id, meta) = self
            .register_object(
                input.bucket.clone(),
                input.key.clone(),
                object,
                upload.content_type,
                upload.user,
            )
            .await?;
        self.state.db.upload_remove(&input.upload_id).map_err(s3)?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(meta.etag()),
            version_id: Some(id.to_string()),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.own_upload(&input.bucket, &input.key, &input.upload_id)?;
        // The parts' shards were never bound to a document: `collect` removes them after
        // its grace period.
        self.state.db.upload_remove(&input.upload_id).map_err(s3)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        self.own_bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut uploads: Vec<(String, UploadRecord)> = self
            .state
            .db
            .uploads()
            .map_err(s3)?
            .into_iter()
            .filter(|(_, u)| u.bucket == input.bucket && u.key.starts_with(&prefix))
            .collect();
        uploads.sort_by(|a, b| (&a.1.key, &a.0).cmp(&(&b.1.key, &b.0)));
        let uploads = uploads
            .into_iter()
            .map(|(id, u)| MultipartUpload {
                key: Some(u.key),
                upload_id: Some(id),
                initiated: Some(Timestamp::from(
                    SystemTime::UNIX_EPOCH + Duration::from_millis(u.created_ms),
                )),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            uploads: Some(uploads),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        self.own_bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000);
        // The continuation token is the hex of the key the next page starts at.
        let from = match (&input.continuation_token, &input.start_after) {
            (Some(token), _) => hex::decode(token).map_err(|_| {
                S3Error::with_message(S3ErrorCode::InvalidArgument, "bad continuation token")
            })?,
            (None, Some(after)) => {
                let mut from = after.as_bytes().to_vec();
                from.push(0);
                from
            }
            (None, None) => Vec::new(),
        };
        let page = if max_keys == 0 {
            Default::default()
        } else {
            self.chain()?
                .names(
                    &input.bucket,
                    &prefix,
                    input.delimiter.as_deref(),
                    &from,
                    max_keys as u32,
                )
                .await
                .map_err(s3)?
                .ok_or_else(|| s3_error!(NoSuchBucket))?
        };
        let mut contents = Vec::with_capacity(page.names.len());
        for name in &page.names {
            let meta = self.key_and_meta(name).ok().map(|(_, m)| m);
            contents.push(Object {
                key: Some(name.key.clone()),
                size: Some(name.size as i64),
                e_tag: meta.as_ref().map(ObjectMeta::etag),
                last_modified: meta.as_ref().map(ObjectMeta::modified),
                ..Default::default()
            });
        }
        let prefixes: Vec<CommonPrefix> = page
            .prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(p.clone()),
            })
            .collect();
        let count = contents.len() + prefixes.len();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter: input.delimiter,
            max_keys: Some(max_keys),
            key_count: Some(count as i32),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(page.next.is_some()),
            next_continuation_token: page.next.map(hex::encode),
            contents: Some(contents),
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            ..Default::default()
        }))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let input = req.input;
        self.own_bucket(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        // Where to start: at the marker's key when a version marker goes with it (the rest
        // of its versions follow), after it otherwise; after a whole common prefix when the
        // marker is one.
        let marker = input.key_marker.clone().filter(|k| !k.is_empty());
        let version_marker = input.version_id_marker.clone().filter(|_| marker.is_some());
        let mut from = match (&marker, &delimiter) {
            (Some(k), Some(d)) if k.ends_with(d.as_str()) && k.starts_with(&prefix) => {
                after_prefix(k.as_bytes()).unwrap_or_else(|| k.as_bytes().to_vec())
            }
            (Some(k), _) if version_marker.is_some() => k.as_bytes().to_vec(),
            (Some(k), _) => [k.as_bytes(), &[0]].concat(),
            (None, _) => Vec::new(),
        };
        let mut versions: Vec<ObjectVersion> = Vec::new();
        let mut prefixes: Vec<CommonPrefix> = Vec::new();
        // The last entry listed, as a (key marker, version marker) pair; and the markers
        // of the next page, set once an entry is left over.
        let mut last: Option<(String, Option<String>)> = None;
        let mut next: Option<(String, Option<String>)> = None;
        let mut skipping = version_marker.clone();
        'pages: loop {
            if max_keys == 0 {
                break;
            }
            let page = self
                .chain()?
                .names(
                    &input.bucket,
                    &prefix,
                    delimiter.as_deref(),
                    &from,
                    max_keys as u32,
                )
                .await
                .map_err(s3)?
                .ok_or_else(|| s3_error!(NoSuchBucket))?;
            // Names and common prefixes, merged back into key order.
            let mut entries: Vec<(&str, Option<&NameRecord>)> = page
                .names
                .iter()
                .map(|n| (n.key.as_str(), Some(n)))
                .chain(page.prefixes.iter().map(|p| (p.as_str(), None)))
                .collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            for (key, name) in entries {
                let Some(name) = name else {
                    if versions.len() + prefixes.len() == max_keys {
                        next = last;
                        break 'pages;
                    }
                    prefixes.push(CommonPrefix {
                        prefix: Some(key.to_string()),
                    });
                    last = Some((key.to_string(), None));
                    continue;
                };
                let mut all = self.versions(name).await?;
                if marker.as_deref() == Some(key)
                    && let Some(skip) = skipping.take()
                {
                    // Only the versions after the marker's (none if it is not one of them).
                    let at = all.iter().position(|v| v.document.to_string() == skip);
                    all.drain(..at.map_or(all.len(), |i| i + 1));
                }
                for v in &all {
                    if versions.len() + prefixes.len() == max_keys {
                        next = last;
                        break 'pages;
                    }
                    let id = v.document.to_string();
                    versions.push(ObjectVersion {
                        key: Some(key.to_string()),
                        version_id: Some(id.clone()),
                        is_latest: Some(v.document == name.document),
                        size: Some(v.size as i64),
                        e_tag: v.meta.as_ref().map(ObjectMeta::etag),
                        last_modified: v.meta.as_ref().map(ObjectMeta::modified),
                        ..Default::default()
                    });
                    last = Some((key.to_string(), Some(id)));
                }
            }
            match page.next {
                None => break,
                Some(_) if versions.len() + prefixes.len() == max_keys => {
                    next = last;
                    break;
                }
                Some(n) => from = n,
            }
        }
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter,
            max_keys: Some(max_keys as i32),
            key_marker: input.key_marker,
            version_id_marker: input.version_id_marker,
            is_truncated: Some(next.is_some()),
            next_key_marker: next.as_ref().map(|(k, _)| k.clone()),
            next_version_id_marker: next.and_then(|(_, v)| v),
            versions: Some(versions),
            common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    #[test]
    fn secrets_are_derived_per_key_and_department() {
        let dept = Identity::generate(Role::Department);
        let other = Identity::generate(Role::Department);
        let id = new_access_key();
        assert!(id.starts_with(ACCESS_KEY_PREFIX) && id.len() == 20);
        let s = secret_key(&dept, &id).unwrap();
        assert_eq!(s.len(), 40);
        assert_eq!(s, secret_key(&dept, &id).unwrap());
        assert_ne!(s, secret_key(&other, &id).unwrap());
        assert_ne!(s, secret_key(&dept, &new_access_key()).unwrap());
    }

    #[test]
    fn metadata_opens_only_with_its_documents_key() {
        let key = DataKey::generate();
        let meta = ObjectMeta {
            format: META_FORMAT,
            md5: [7; 16],
            content_type: Some("text/plain".into()),
            user: vec![("a".into(), "b".into())],
            modified_ms: 5,
            parts: 0,
        };
        let sealed = meta.seal(&key);
        assert_eq!(ObjectMeta::open(&sealed, &key), Some(meta.clone()));
        assert_eq!(ObjectMeta::open(&sealed, &DataKey::generate()), None);
        let mut flipped = sealed.clone();
        flipped[crate::crypto::NONCE_PREFIX_LEN + 1] ^= 1;
        assert_eq!(ObjectMeta::open(&flipped, &key), None);
        assert_eq!(ObjectMeta::open(&sealed[..3], &key), None);
        assert_eq!(meta.etag(), ETag::Strong("07".repeat(16)));
        let multipart = ObjectMeta { parts: 3, ..meta };
        assert_eq!(
            multipart.etag(),
            ETag::Strong(format!("{}-3", "07".repeat(16)))
        );
        assert_eq!(
            ObjectMeta::open(&multipart.seal(&key), &key),
            Some(multipart)
        );
    }
}
