//! The gateway: a department's own HTTP service over the cluster. It holds the department's
//! key and keyring, and answers its systems' REST calls (`api`, under `/api/v1`, callers
//! authenticated by API tokens), its staff's console pages (`assets`, under `/console/`),
//! and the OpenAPI document (`/openapi.json`). It is a client of the cluster like `dangan
//! put`: a store has the same durability (the data key saved durably in the keyring before
//! the registration is submitted), and a failed store registers nothing.
//!
//! API tokens: 32 random bytes, shown once as `dgt1…` (hex), kept only as BLAKE3 of the
//! bytes in the gateway's redb (`gateway.redb`, table `tokens-0`), each with a name and
//! scopes. A request's token is hashed and looked up; there is no secret comparison to time
//! (the lookup is by a hash of the secret, so timing reveals nothing of a stored token).
//!
//! Not for: the citizen portal's endpoints (`portal`, merged in by the integrator), or
//! anything a citizen's secret would be needed for (the gateway never holds one).

pub mod api;
pub mod assets;
pub mod observe;
pub mod portal;
pub mod s3;
pub mod uploads;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::client::{Client, ClientError};
use crate::config::{ClusterFile, ConfigError, MAX_CONFIG_BYTES};
use crate::identity::{Identity, IdentityError};
use crate::keyring::{Keyring, KeyringError};

/// The table of API tokens: BLAKE3 of the token's 32 bytes -> a postcard [`TokenRecord`].
const TOKENS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tokens-0");
/// File names given at upload, for downloads and the console: document id -> UTF-8 name.
/// A convenience of this gateway only; the chain and the manifest do not hold names.
const FILE_NAMES: TableDefinition<&[u8; 32], &str> = TableDefinition::new("file-names-0");
/// S3 access key ids -> a postcard [`S3KeyRecord`]. Never a secret: each is derived from
/// the department's key (`s3::secret_key`).
const S3_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("s3-keys-0");
/// `gateway-meta-0` "format": the database's format (absent in one written before it was
/// recorded: format 1). A database of a newer format is refused on open.
const META: TableDefinition<&str, u64> = TableDefinition::new("gateway-meta-0");
pub const GATEWAY_DB_FORMAT: u64 = 1;
/// Format of a stored [`S3KeyRecord`].
const S3_KEY_FORMAT: u8 = 1;
/// How a token is written: this prefix and 64 hex digits.
pub const TOKEN_PREFIX: &str = "dgt1";
/// Format of a stored [`TokenRecord`].
const TOKEN_FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error("token store {path}: {reason}")]
    GatewayDb { path: PathBuf, reason: String },
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server stopped: {0}")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// No token, or one the gateway does not know.
    #[error("a valid API token is needed (Authorization: Bearer dgt1…)")]
    Unauthorized,
    /// The token lacks the scope the operation needs.
    #[error("this token may not {0}: it lacks that scope")]
    Forbidden(Scope),
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("document {0} is not known here")]
    UnknownDocument(String),
    #[error("the body is larger than this gateway's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the range {range} does not fit the document's {size} bytes")]
    RangeNotSatisfiable { range: String, size: u64 },
    #[error("the gateway is at its limit of {0} transfers at once; try again shortly")]
    Busy(usize),
    #[error("{0}")]
    Conflict(String),
    #[error("no such endpoint ({0}); see /openapi.json")]
    NoSuchEndpoint(String),
    /// A citizen's signed request (delegation or listing) refused: by this gateway's
    /// checks or by the peers'.
    #[error("{0}")]
    DelegationRefused(String),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Chain(#[from] crate::chain::client::ChainError),
    #[error(transparent)]
    Revision(#[from] crate::revision::RevisionError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("{0}")]
    Internal(String),
}

impl GatewayError {
    /// The HTTP status and the stable code a caller sees.
    pub fn status(&self) -> (StatusCode, &'static str) {
        use crate::chain::client::ChainError;
        use crate::revision::RevisionError as R;
        let chain = |e: &ChainError| match e {
            ChainError::NotRegistered(_) => (StatusCode::NOT_FOUND, "unknown_document"),
            ChainError::Refused(_) | ChainError::NoAccount(_) => (StatusCode::FORBIDDEN, "refused"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "chain_unavailable"),
        };
        let client = |e: &ClientError| match e {
            ClientError::Chain(c) => chain(c),
            ClientError::NotFound { .. } => (StatusCode::NOT_FOUND, "unknown_document"),
            ClientError::NotGranted { .. } => (StatusCode::FORBIDDEN, "not_granted"),
            ClientError::Grant(_) => (StatusCode::BAD_REQUEST, "bad_grant_address"),
            ClientError::Codec(crate::codec::CodecError::Read(_)) => {
                (StatusCode::BAD_REQUEST, "body_interrupted")
            }
            _ => (StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable"),
        };
        match self {
            GatewayError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            GatewayError::Forbidden(_) => (StatusCode::FORBIDDEN, "missing_scope"),
            GatewayError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            GatewayError::UnknownDocument(_) => (StatusCode::NOT_FOUND, "unknown_document"),
            GatewayError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            GatewayError::RangeNotSatisfiable { .. } => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            GatewayError::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, "busy"),
            GatewayError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            GatewayError::NoSuchEndpoint(_) => (StatusCode::NOT_FOUND, "no_such_endpoint"),
            GatewayError::DelegationRefused(_) => (StatusCode::FORBIDDEN, "delegation_refused"),
            GatewayError::Client(e) => client(e),
            GatewayError::Chain(e) => chain(e),
            GatewayError::Revision(e) => match e {
                R::Client(e) | R::Read(e) => client(e),
                R::Chain(e) => chain(e),
                R::NotOwner { .. } => (StatusCode::FORBIDDEN, "not_owner"),
                R::AlreadySuperseded { .. } => (StatusCode::CONFLICT, "already_superseded"),
                R::Grant(_) => (StatusCode::BAD_REQUEST, "bad_grant_address"),
                R::TooManyGrants { .. } => (StatusCode::CONFLICT, "too_many_grants"),
                R::Keyring(KeyringError::Missing { .. }) => {
                    (StatusCode::FORBIDDEN, "not_this_department")
                }
                _ => (StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable"),
            },
            GatewayError::Audit(e) => match e {
                crate::audit::AuditError::Refused(_) => (StatusCode::FORBIDDEN, "refused"),
                crate::audit::AuditError::Chain(c) => chain(c),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable"),
            },
            GatewayError::Keyring(KeyringError::Missing { .. }) => {
                (StatusCode::FORBIDDEN, "not_this_department")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// A JSON error as every endpoint returns it (the department API's and the portal's).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, snake_case: what a program matches on.
    pub code: String,
    /// A sentence for a person.
    pub message: String,
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, code, "gateway request failed");
        }
        let body = ErrorBody {
            code: code.to_string(),
            message: self.to_string(),
        };
        let mut response = json_response(status, &body);
        if let GatewayError::RangeNotSatisfiable { size, .. } = &self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        response
    }
}

/// `value` as JSON, its charset declared (also where a router is served without
/// [`router`]'s layers, as the portal's alone in tests).
pub(crate) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let bytes = serde_json::to_vec(value).expect("encoding JSON into memory cannot fail");
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        bytes,
    )
        .into_response()
}

/// What an API token may do. `admin` may do everything.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Store,
    Fetch,
    Grant,
    Revoke,
    Supersede,
    Verify,
    Audit,
    Status,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::Store,
        Scope::Fetch,
        Scope::Grant,
        Scope::Revoke,
        Scope::Supersede,
        Scope::Verify,
        Scope::Audit,
        Scope::Status,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Store => "store",
            Scope::Fetch => "fetch",
            Scope::Grant => "grant",
            Scope::Revoke => "revoke",
            Scope::Supersede => "supersede",
            Scope::Verify => "verify",
            Scope::Audit => "audit",
            Scope::Status => "status",
            Scope::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = Scope::ALL.iter().map(|c| c.as_str()).collect();
                format!("unknown scope {s:?} (one of {})", all.join(", "))
            })
    }
}

/// A stored API token: never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub format: u8,
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_ms: u64,
}

impl TokenRecord {
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

/// An S3 access key as the gateway keeps it: its id and a name, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3KeyRecord {
    pub format: u8,
    pub access_key: String,
    pub name: String,
    pub created_ms: u64,
}

/// The gateway's own redb: its API tokens (hashed) and the file names given at upload.
pub struct GatewayDb {
    db: redb::Database,
    path: PathBuf,
}

impl GatewayDb {
    /// Opens (or creates) `gateway.redb` in `dir`. One process at a time: a running gateway
    /// holds it, so tokens are managed with the gateway stopped.
    pub fn open(dir: &Path) -> Result<Self, GatewayError> {
        let path = dir.join("gateway.redb");
        let err = |e: &dyn std::fmt::Display| GatewayError::GatewayDb {
            path: path.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let db = redb::Database::create(&path).map_err(|e| err(&e))?;
        let tx = db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(TOKENS).map_err(|e| err(&e))?;
        tx.open_table(FILE_NAMES).map_err(|e| err(&e))?;
        tx.open_table(S3_KEYS).map_err(|e| err(&e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| err(&e))?;
            let found = meta.get("format").map_err(|e| err(&e))?.map(|v| v.value());
            match found {
                Some(found) if found > GATEWAY_DB_FORMAT => {
                    return Err(err(&format!(
                        "written by a newer Dangan (gateway database format {found}; this \
                         build reads up to {GATEWAY_DB_FORMAT}): upgrade this binary"
                    )));
                }
                Some(_) => {}
                None => {
                    meta.insert("format", GATEWAY_DB_FORMAT)
                        .map_err(|e| err(&e))?;
                }
            }
        }
        tx.open_table(uploads::UPLOADS).map_err(|e| err(&e))?;
        tx.open_table(uploads::PARTS).map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))?;
        // Only the gateway's own user reads it (it holds no secret, but names and hashes).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| err(&e))?;
        }
        Ok(Self { db, path })
    }

    fn err(&self, e: impl std::fmt::Display) -> GatewayError {
        GatewayError::GatewayDb {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Adds a token named `name` with `scopes`; returns the token (shown once, stored only
    /// hashed). Names are unique.
    pub fn add(&self, name: &str, scopes: &[Scope]) -> Result<String, GatewayError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 128 || scopes.is_empty() {
            return Err(GatewayError::BadRequest {
                code: "bad_token",
                message: "a token needs a name (1 to 128 bytes) and at least one scope".into(),
            });
        }
        if self.list()?.iter().any(|t| t.name == name) {
            return Err(GatewayError::Conflict(format!(
                "a token named {name:?} exists; revoke it first"
            )));
        }
        let secret: [u8; 32] = rand::random();
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let record = TokenRecord {
            format: TOKEN_FORMAT,
            name: name.to_string(),
            scopes,
            created_ms: crate::now_ms(),
        };
        let bytes = postcard::to_allocvec(&record).map_err(|e| self.err(e))?;
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(TOKENS).map_err(|e| self.err(e))?;
            t.insert(blake3::hash(&secret).as_bytes(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(format!("{TOKEN_PREFIX}{}", hex::encode(secret)))
    }

    /// Every token's record, by name.
    pub fn list(&self) -> Result<Vec<TokenRecord>, GatewayError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(TOKENS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = row.map_err(|e| self.err(e))?;
            out.push(postcard::from_bytes::<TokenRecord>(v.value()).map_err(|e| self.err(e))?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes the token named `name`; whether there was one.
    pub fn revoke(&self, name: &str) -> Result<bool, GatewayError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut found = None;
        {
            let mut t = tx.open_table(TOKENS).map_err(|e| self.err(e))?;
            for row in t.iter().map_err(|e| self.err(e))? {
                let (k, v) = row.map_err(|e| self.err(e))?;
                let r: TokenRecord = postcard::from_bytes(v.value()).map_err(|e| self.err(e))?;
                if r.name == name {
                    found = Some(*k.value());
                }
            }
            if let Some(k) = &found {
                t.remove(k).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(found.is_some())
    }

    /// Adds an S3 access key named `name`; returns its record (the id: its secret is
    /// `s3::secret_key` of the department's key and the id). Names are unique.
    pub fn s3_key_add(&self, name: &str) -> Result<S3KeyRecord, GatewayError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 128 {
            return Err(GatewayError::BadRequest {
                code: "bad_key",
                message: "an S3 key needs a name of 1 to 128 bytes".into(),
            });
        }
        if self.s3_keys()?.iter().any(|k| k.name == name) {
            return Err(GatewayError::Conflict(format!(
                "an S3 key named {name:?} exists; revoke it first"
            )));
        }
        let record = S3KeyRecord {
            format: S3_KEY_FORMAT,
            access_key: s3::new_access_key(),
            name: name.to_string(),
            created_ms: crate::now_ms(),
        };
        let bytes = postcard::to_allocvec(&record).map_err(|e| self.err(e))?;
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(S3_KEYS).map_err(|e| self.err(e))?;
            t.insert(record.access_key.as_str(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(record)
    }

    /// Every S3 key, by name.
    pub fn s3_keys(&self) -> Result<Vec<S3KeyRecord>, GatewayError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(S3_KEYS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = row.map_err(|e| self.err(e))?;
            out.push(postcard::from_bytes::<S3KeyRecord>(v.value()).map_err(|e| self.err(e))?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The S3 key with id `access_key`, if it is one of these.
    pub fn s3_key(&self, access_key: &str) -> Result<Option<S3KeyRecord>, GatewayError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(S3_KEYS).map_err(|e| self.err(e))?;
        match t.get(access_key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(
                postcard::from_bytes(v.value()).map_err(|e| self.err(e))?,
            )),
            None => Ok(None),
        }
    }

    /// Removes the S3 key named (or with id) `name`; whether there was one.
    pub fn s3_key_revoke(&self, name: &str) -> Result<bool, GatewayError> {
        let found = self
            .s3_keys()?
            .into_iter()
            .find(|k| k.name == name || k.access_key == name);
        let Some(found) = found else {
            return Ok(false);
        };
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(S3_KEYS).map_err(|e| self.err(e))?;
            t.remove(found.access_key.as_str())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// Remembers `name` as the file name of `id` (durably).
    pub fn set_file_name(
        &self,
        id: &crate::id::DocumentId,
        name: &str,
    ) -> Result<(), GatewayError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(FILE_NAMES).map_err(|e| self.err(e))?;
            t.insert(id.as_bytes(), name).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The file name given when `id` was stored here, if any.
    pub fn file_name(&self, id: &crate::id::DocumentId) -> Result<Option<String>, GatewayError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(FILE_NAMES).map_err(|e| self.err(e))?;
        let found = t.get(id.as_bytes()).map_err(|e| self.err(e))?;
        Ok(found.map(|v| v.value().to_string()))
    }

    /// The record of `token` (as a caller sent it), if it is one of these.
    pub fn check(&self, token: &str) -> Result<Option<TokenRecord>, GatewayError> {
        let mut secret = [0u8; 32];
        let parsed = token
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .is_some_and(|h| hex::decode_to_slice(h, &mut secret).is_ok());
        if !parsed {
            return Ok(None);
        }
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(TOKENS).map_err(|e| self.err(e))?;
        let found = t
            .get(blake3::hash(&secret).as_bytes())
            .map_err(|e| self.err(e))?;
        match found {
            Some(v) => Ok(Some(
                postcard::from_bytes(v.value()).map_err(|e| self.err(e))?,
            )),
            None => Ok(None),
        }
    }
}

/// `gateway.toml` as written by an operator. Relative paths are resolved against its
/// directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// TCP address the HTTP server listens on.
    pub listen: SocketAddr,
    /// TCP address the S3 service listens on (none: no S3).
    #[serde(default)]
    pub s3_listen: Option<SocketAddr>,
    /// The cluster file.
    pub cluster: PathBuf,
    /// The department's key file.
    pub key: PathBuf,
    /// The department's keyring (document keys), shared with `dangan put` if wanted.
    pub keyring: PathBuf,
    /// The gateway's own data (its token store).
    pub data_dir: PathBuf,
    /// The department label recorded in the manifests of documents stored here.
    pub department: String,
    #[serde(default)]
    pub limits: LimitsSection,
    /// TCP address of the plain-HTTP metrics and health listener (none: not served).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest document body accepted by a store or supersede, in MiB.
    pub max_upload_mib: u64,
    /// Largest JSON request body, in KiB.
    pub max_json_kib: u64,
    /// Stores and fetches served at once; more are answered 429.
    pub max_transfers: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_upload_mib: 64 << 10,
            max_json_kib: 64,
            max_transfers: 16,
        }
    }
}

/// The gateway's limits, validated.
#[derive(Debug, Clone, Copy)]
pub struct GatewayLimits {
    pub max_upload: u64,
    pub max_json: usize,
    pub max_transfers: usize,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        let d = LimitsSection::default();
        Self {
            max_upload: d.max_upload_mib << 20,
            max_json: (d.max_json_kib << 10) as usize,
            max_transfers: d.max_transfers,
        }
    }
}

/// A validated gateway config with resolved paths.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub s3_listen: Option<SocketAddr>,
    pub cluster: PathBuf,
    pub key: PathBuf,
    pub keyring: PathBuf,
    pub data_dir: PathBuf,
    pub department: String,
    pub limits: GatewayLimits,
    pub metrics_listen: Option<SocketAddr>,
}

impl GatewayFile {
    pub fn load(path: &Path) -> Result<GatewayConfig, GatewayError> {
        let read = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
            }
            .into());
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let file: GatewayFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        file.validate(path)
    }

    pub fn validate(self, path: &Path) -> Result<GatewayConfig, GatewayError> {
        let invalid = |message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            message: message.to_owned(),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let l = &self.limits;
        if l.max_upload_mib == 0 || l.max_json_kib == 0 || l.max_transfers == 0 {
            return Err(invalid("[limits] values must be at least 1").into());
        }
        if l.max_upload_mib > 1 << 30 || l.max_json_kib > 1 << 20 {
            return Err(
                invalid("[limits] max_upload_mib or max_json_kib is absurdly large").into(),
            );
        }
        let department = self.department.trim();
        if department.is_empty() || department.len() > crate::manifest::MAX_LABEL_LEN {
            return Err(invalid("department must be 1 to 256 bytes").into());
        }
        Ok(GatewayConfig {
            listen: self.listen,
            s3_listen: self.s3_listen,
            cluster: base.join(self.cluster),
            key: base.join(self.key),
            keyring: base.join(self.keyring),
            data_dir: base.join(self.data_dir),
            department: department.to_string(),
            limits: GatewayLimits {
                max_upload: l.max_upload_mib << 20,
                max_json: (l.max_json_kib << 10) as usize,
                max_transfers: l.max_transfers,
            },
            metrics_listen: self.metrics_listen,
        })
    }
}

/// Everything a gateway runs with: what [`GatewayConfig::setup`] loads, or what a test or
/// the demo assembles on an embedded cluster.
pub struct GatewaySetup {
    pub listen: SocketAddr,
    /// Where the S3 service listens (none: no S3).
    pub s3_listen: Option<SocketAddr>,
    /// The department's client of the cluster.
    pub client: Client,
    pub keyring: Keyring,
    pub data_dir: PathBuf,
    pub department: String,
    pub limits: GatewayLimits,
    /// Where its metrics and health probes are served over plain HTTP (none: not served).
    pub metrics_listen: Option<SocketAddr>,
}

impl GatewayConfig {
    /// Loads the key, the cluster file and the keyring, and connects to the cluster.
    pub async fn setup(&self) -> Result<GatewaySetup, GatewayError> {
        let identity = Identity::load(&self.key)?;
        let cluster = ClusterFile::load(&self.cluster)?;
        Ok(GatewaySetup {
            listen: self.listen,
            s3_listen: self.s3_listen,
            client: cluster.connect(&identity).await?,
            keyring: Keyring::open(&self.keyring)?,
            data_dir: self.data_dir.clone(),
            department: self.department.clone(),
            limits: self.limits,
            metrics_listen: self.metrics_listen,
        })
    }

    /// The gateway's database (its tokens).
    pub fn db(&self) -> Result<GatewayDb, GatewayError> {
        GatewayDb::open(&self.data_dir)
    }
}

/// What every handler shares.
pub struct AppState {
    pub client: Client,
    pub keyring: Keyring,
    pub db: GatewayDb,
    pub department: String,
    pub limits: GatewayLimits,
    transfers: Arc<Semaphore>,
}

impl AppState {
    /// The token of `headers` if it has `scope`: 401 without a known token, 403 without
    /// the scope.
    pub fn authorize(
        &self,
        headers: &HeaderMap,
        scope: Scope,
    ) -> Result<TokenRecord, GatewayError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(GatewayError::Unauthorized)?;
        let record = self.db.check(token)?.ok_or(GatewayError::Unauthorized)?;
        if !record.allows(scope) {
            return Err(GatewayError::Forbidden(scope));
        }
        Ok(record)
    }

    /// A transfer slot (store, supersede, rekey, fetch), or 429 when all are taken.
    pub fn transfer(&self) -> Result<tokio::sync::OwnedSemaphorePermit, GatewayError> {
        self.transfers
            .clone()
            .try_acquire_owned()
            .map_err(|_| GatewayError::Busy(self.limits.max_transfers))
    }
}

/// The pipe between a fetch's stripes and the response body.
const FETCH_PIPE: usize = 256 << 10;

/// The bytes `range` of a document (its `manifest`, opened with `key`) as a response body,
/// read in the background while the transfer `slot` is held: the REST fetch's and S3's GET.
/// After the last byte, a read that failed or came up short ends the stream with an error,
/// so the response is aborted, never silently cut short.
fn fetch_stream(
    client: Client,
    manifest: crate::manifest::Manifest,
    key: crate::crypto::DataKey,
    range: std::ops::Range<u64>,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use futures::StreamExt;
    let want = range.end - range.start;
    let (writer, reader) = tokio::io::duplex(FETCH_PIPE);
    let task = tokio::spawn(async move {
        let _slot = slot;
        client
            .read_range(&manifest, &key, range, writer, &|_, _| {})
            .await
    });
    let outcome = futures::stream::once(async move {
        match task.await {
            Ok(Ok(r)) if r.bytes == want => None,
            Ok(Ok(r)) => Some(Err(std::io::Error::other(format!(
                "short read: {} of {want} bytes",
                r.bytes
            )))),
            Ok(Err(e)) => Some(Err(std::io::Error::other(e))),
            Err(e) => Some(Err(std::io::Error::other(e))),
        }
    })
    .filter_map(futures::future::ready);
    tokio_util::io::ReaderStream::new(reader).chain(outcome)
}

/// The OpenAPI document of the department API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::router().split_for_parts().1
}

/// The gateway's routes over `state`, and the citizens' portal over `portal`.
pub fn router(state: Arc<AppState>, portal: Arc<portal::Portal>) -> axum::Router {
    let (api, doc) = api::router().split_for_parts();
    let doc = Arc::new(doc);
    axum::Router::new()
        .merge(api.with_state(state))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .merge(assets::router())
        .merge(portal::router(portal))
        // Uploads are limited by the gateway's own limits, not axum's default.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::map_response(utf8_json))
        .layer(
            tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        )
}

/// Every request of the S3 listener goes to the S3 service (`s3s` answers S3's XML).
fn s3_router(service: s3s::service::S3Service) -> axum::Router {
    axum::Router::new().fallback(move |req: axum::extract::Request| {
        let service = service.clone();
        async move {
            match service.call(req.map(s3s::Body::http_body_unsync)).await {
                Ok(response) => response.map(axum::body::Body::new),
                Err(e) => {
                    tracing::warn!(error = ?e, "S3 request failed");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            }
        }
    })
}

/// JSON is UTF-8: said so in its content type, as on every text response.
async fn utf8_json(mut response: Response) -> Response {
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/json");
    if json {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
    }
    response
}

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    s3_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    metrics: Option<crate::metrics::MetricsServer>,
}

impl Gateway {
    /// Where it listens (the bound port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the S3 service listens, if it runs.
    pub fn s3_addr(&self) -> Option<SocketAddr> {
        self.s3_addr
    }

    /// Where its metrics and health probes are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .map(crate::metrics::MetricsServer::addr)
    }

    /// Stops accepting, lets requests in progress finish, and closes the cluster client.
    pub async fn stop(mut self) -> Result<(), GatewayError> {
        if let Some(metrics) = self.metrics.take() {
            metrics.stop().await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        match (&mut self.task).await {
            Ok(r) => r.map_err(GatewayError::Serve),
            Err(e) => Err(GatewayError::Internal(e.to_string())),
        }
    }
}

/// Binds `setup.listen`, opens the token store and serves until [`Gateway::stop`].
pub async fn start(setup: GatewaySetup) -> Result<Gateway, GatewayError> {
    let tokens = GatewayDb::open(&setup.data_dir)?;
    let listener = tokio::net::TcpListener::bind(setup.listen)
        .await
        .map_err(|source| GatewayError::Listen {
            addr: setup.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| GatewayError::Listen {
            addr: setup.listen,
            source,
        })?;
    let client = setup.client.clone();
    let mut registry = prometheus_client::registry::Registry::with_prefix("dangan");
    let metrics = observe::GatewayMetrics::new(&mut registry);
    let counting = |route: Option<&'static str>| {
        axum::middleware::from_fn_with_state((metrics.clone(), route), observe::count)
    };
    let metrics_server = match setup.metrics_listen {
        Some(at) => {
            let probe = observe::ready_probe(client.clone());
            Some(crate::metrics::serve(at, Arc::new(registry), probe).await?)
        }
        None => None,
    };
    let portal = Arc::new(portal::Portal::new(client.clone(), setup.department.clone()).await?);
    let state = Arc::new(AppState {
        client: setup.client,
        keyring: setup.keyring,
        db: tokens,
        department: setup.department,
        limits: setup.limits,
        transfers: Arc::new(Semaphore::new(setup.limits.max_transfers)),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let s3 = match setup.s3_listen {
        Some(s3_listen) => {
            let listener = tokio::net::TcpListener::bind(s3_listen)
                .await
                .map_err(|source| GatewayError::Listen {
                    addr: s3_listen,
                    source,
                })?;
            let s3_addr = listener
                .local_addr()
                .map_err(|source| GatewayError::Listen {
                    addr: s3_listen,
                    source,
                })?;
            let app =
                s3_router(s3::service(state.clone())?).layer(counting(Some(observe::S3_ROUTE)));
            let stopped = until_stopped(stopped.clone());
            let task = tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            });
            tracing::info!(addr = %s3_addr, "gateway S3 service listening");
            Some((s3_addr, task))
        }
        None => None,
    };
    let app = router(state, portal).layer(counting(None));
    let (s3_addr, s3_task) = match s3 {
        Some((a, t)) => (Some(a), Some(t)),
        None => (None, None),
    };
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(until_stopped(stopped))
            .await;
        let s3_served = match s3_task {
            Some(t) => t.await.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            None => Ok(()),
        };
        client.close().await;
        served.and(s3_served)
    });
    tracing::info!(%addr, "gateway listening");
    Ok(Gateway {
        addr,
        s3_addr,
        stop: Some(stop),
        task,
        metrics: metrics_server,
    })
}

/// Runs the gateway `config` describes until `shutdown` completes.
pub async fn run(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let gateway = start(config.setup().await?).await?;
    // The bound address (the port chosen when `listen` asks for port 0), as `node::run`
    // prints its own: what a supervisor or the gateway benchmark waits for.
    if let Some(s3) = gateway.s3_addr() {
        println!("S3 listening on http://{s3}");
    }
    println!("gateway listening on http://{}", gateway.addr());
    if let Some(addr) = gateway.metrics_addr() {
        println!("metrics and health probes on http://{addr}/metrics (plain HTTP)");
    }
    shutdown.await;
    gateway.stop().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_written_by_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(GatewayDb::open(dir.path()).unwrap());
        {
            let db = redb::Database::create(dir.path().join("gateway.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut meta = tx.open_table(META).unwrap();
                assert_eq!(
                    meta.get("format").unwrap().unwrap().value(),
                    GATEWAY_DB_FORMAT
                );
                meta.insert("format", GATEWAY_DB_FORMAT + 1).unwrap();
            }
            tx.commit().unwrap();
        }
        let err = GatewayDb::open(dir.path())
            .err()
            .expect("a newer database is refused");
        assert!(
            err.to_string()
                .contains("newer Dangan (gateway database format 2; this build reads up to 1)"),
            "{err}"
        );
    }

    #[test]
    fn tokens_are_stored_hashed_scoped_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = GatewayDb::open(dir.path()).unwrap();
        let t = tokens.add("billing", &[Scope::Fetch]).unwrap();
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() == TOKEN_PREFIX.len() + 64);
        let r = tokens.check(&t).unwrap().unwrap();
        assert!(r.allows(Scope::Fetch) && !r.allows(Scope::Store));
        assert!(matches!(
            tokens.add("billing", &[Scope::Store]),
            Err(GatewayError::Conflict(_))
        ));
        // The secret is nowhere in the file.
        drop(tokens);
        let raw = std::fs::read(dir.path().join("gateway.redb")).unwrap();
        let secret = hex::decode(&t[TOKEN_PREFIX.len()..]).unwrap();
        assert!(!raw.windows(32).any(|w| w == secret.as_slice()));
        let tokens = GatewayDb::open(dir.path()).unwrap();
        assert!(tokens.check("dgt1zz").unwrap().is_none());
        let other = format!("{TOKEN_PREFIX}{}", "00".repeat(32));
        assert!(tokens.check(&other).unwrap().is_none());
        assert!(tokens.revoke("billing").unwrap());
        assert!(tokens.check(&t).unwrap().is_none());
        assert!(!tokens.revoke("billing").unwrap());
    }

    #[test]
    fn s3_keys_are_kept_without_secrets_in_a_private_file_and_revocable() {
        let dir = tempfile::tempdir().unwrap();
        let db = GatewayDb::open(dir.path()).unwrap();
        let dept = Identity::generate(crate::identity::Role::Department);
        let k = db.s3_key_add("backup").unwrap();
        assert!(k.access_key.starts_with(s3::ACCESS_KEY_PREFIX));
        assert_eq!(db.s3_key(&k.access_key).unwrap(), Some(k.clone()));
        assert!(matches!(
            db.s3_key_add("backup"),
            Err(GatewayError::Conflict(_))
        ));
        let secret = s3::secret_key(&dept, &k.access_key).unwrap();
        drop(db);
        let path = dir.path().join("gateway.redb");
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
        let db = GatewayDb::open(dir.path()).unwrap();
        assert_eq!(db.s3_keys().unwrap().len(), 1);
        assert!(db.s3_key_revoke("backup").unwrap());
        assert_eq!(db.s3_key(&k.access_key).unwrap(), None);
        assert!(!db.s3_key_revoke("backup").unwrap());
    }

    #[test]
    fn config_is_validated_and_paths_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        let text = "listen = \"127.0.0.1:8080\"\ncluster = \"cluster.toml\"\nkey = \"k.key\"\n\
                    keyring = \"ring\"\ndata_dir = \"gw\"\ndepartment = \"civil-registry\"\n";
        std::fs::write(&path, text).unwrap();
        let c = GatewayFile::load(&path).unwrap();
        assert_eq!(c.cluster, dir.path().join("cluster.toml"));
        assert_eq!(c.limits.max_transfers, 16);
        std::fs::write(&path, format!("{text}surprise = 1\n")).unwrap();
        assert!(matches!(
            GatewayFile::load(&path),
            Err(GatewayError::Config(ConfigError::Parse { .. }))
        ));
        std::fs::write(&path, format!("{text}[limits]\nmax_transfers = 0\n")).unwrap();
        assert!(matches!(
            GatewayFile::load(&path),
            Err(GatewayError::Config(ConfigError::Invalid { .. }))
        ));
    }
}
