//! Ed25519 identities: who a department, citizen, operator, storage node or validator is.
//!
//! Every actor in Dangan holds one [`Identity`] (an Ed25519 signing key plus the [`Role`] it
//! was made for) and is known to everyone else by its [`PublicId`] (the 32-byte Ed25519
//! verifying key). The same key signs chain transactions and, through [`crate::tls`], is the
//! key inside the actor's TLS certificate, so "who is on the other end of this QUIC
//! connection" and "who signed this" are the same question.
//!
//! # Text form of a [`PublicId`]
//!
//! `dgn1` followed by the 64 lowercase hex digits of the 32-byte key, 68 characters in all,
//! for example `dgn1` + `3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c`.
//! The prefix keeps public ids apart from content ids (plain 64 hex) in logs, CLI arguments
//! and config files. Parsing trims surrounding whitespace, requires the lowercase `dgn1`
//! prefix, accepts hex digits in either case and refuses anything that is not a valid
//! Ed25519 point.
//!
//! # Key files
//!
//! [`Identity::save`] writes a small TOML file, created with mode `0600` on unix and never
//! overwriting an existing file; [`Identity::load`] refuses a key file that group or others
//! may access, and says how to fix it (`chmod 600 PATH`):
//!
//! ```toml
//! # Dangan identity key. Secret: anyone holding this file can act as this identity.
//! version = 1
//! role = "node"
//! public = "dgn1…"
//! secret = "…64 hex digits: the Ed25519 secret key (seed)…"
//! ```
//!
//! `version` is the file format version ([`KEY_FILE_VERSION`]); `role` is one of
//! `department`, `citizen`, `operator`, `node`, `validator`; `public` is optional on load
//! and, when present, must match the key derived from `secret`. Next to it `save` writes
//! `<file name>.pub` (e.g. `node.key` → `node.key.pub`) holding just the public id text and
//! a newline. [`PublicId::load`] reads either file.
//!
//! # Keys in a token
//!
//! The key may instead live in a PKCS#11 token (an HSM): the same file then holds, instead
//! of `secret`, a `[pkcs11]` table naming the module, the token, the key's label and where
//! the PIN is ([`token::Pkcs11Key`]); `public`, when present, must match the token's key.
//! An [`Identity`] is one of the two kinds, the rest of the code does not see which:
//! [`Identity::sign`] signs in the token, and so does the TLS handshake (see [`crate::tls`]).
//! What needs the secret itself cannot move into a token:
//! [`Identity::derive_secret`] (the X25519 key that opens grants, the gateway's S3
//! secrets) fails with [`IdentityError::SecretInToken`], and a citizen, who reads only
//! through grants, is refused a token key at load.
//!
//! ```toml
//! version = 1
//! role = "department"
//! public = "dgn1…"
//! [pkcs11]
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token = "dangan"
//! key_label = "dept-a"
//! pin_file = "dept-a.pin"   # mode 0600; or pin_env = "DANGAN_PIN"
//! ```
//!
//! Not for: encrypted key files (the key file is plaintext, protected only by file
//! permissions), key rotation, or authorisation decisions (what a role may do is decided by
//! the chain, not here).

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

pub mod token;

use token::{Pkcs11Key, SharedTokenKey, TokenKey};

/// Length in bytes of a [`PublicId`].
pub const PUBLIC_ID_LEN: usize = 32;
/// Length in bytes of a signature made by [`Identity::sign`].
pub const SIGNATURE_LEN: usize = 64;
/// Prefix of the text form of a [`PublicId`].
pub const PUBLIC_ID_PREFIX: &str = "dgn1";
/// The key file format version written by [`Identity::save`] and accepted by [`Identity::load`].
pub const KEY_FILE_VERSION: u32 = 1;

/// Key files larger than this are refused without being read in full.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} already exists; refusing to overwrite an identity file")]
    AlreadyExists { path: PathBuf },
    #[error("{path}: not a valid Dangan key file: {reason}")]
    MalformedKeyFile { path: PathBuf, reason: String },
    #[error(
        "{path}: key file format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: i64,
        supported: u32,
    },
    #[error("{path}: the public id in the file does not match its secret key")]
    PublicKeyMismatch { path: PathBuf },
    #[error("{path}: {reason}")]
    BadPublicIdFile { path: PathBuf, reason: String },
    #[error("bad public id {text:?}: {reason}")]
    BadPublicId { text: String, reason: String },
    #[error("unknown role {0:?} (expected department, citizen, operator, node or validator)")]
    UnknownRole(String),
    #[error("signature does not verify for {0}")]
    BadSignature(PublicId),
    #[error(
        "{path}: refusing to use a key file that group or others may access (mode {mode:o}); \
         its secret must be readable by its owner only: run `chmod 600 {path}`"
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },
    /// A PKCS#11 token could not be used: the module, token, key, PIN or a signature.
    #[error("{what}: {message}")]
    Token { what: String, message: String },
    /// The key of `id` is in a token, and `purpose` needs the secret key itself.
    #[error(
        "{id}'s key is in a PKCS#11 token, and {purpose} needs a secret derived from the key \
         itself, which never leaves the token: use a key file for this identity"
    )]
    SecretInToken { id: PublicId, purpose: String },
}

/// What an identity was made for. Serialized lowercase (`"node"`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Department,
    Citizen,
    Operator,
    Node,
    Validator,
    /// An archives authority: sets and lifts legal holds on documents (`chain::records`).
    Archives,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Department,
        Role::Citizen,
        Role::Operator,
        Role::Node,
        Role::Validator,
        Role::Archives,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Department => "department",
            Role::Citizen => "citizen",
            Role::Operator => "operator",
            Role::Node => "node",
            Role::Validator => "validator",
            Role::Archives => "archives",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole(truncate(s)))
    }
}

/// An Ed25519 public key: how everyone else names an identity.
///
/// Serde: the text form (`dgn1…`) in human-readable formats (TOML, JSON), the 32 raw bytes
/// in binary formats (postcard).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicId([u8; PUBLIC_ID_LEN]);

impl PublicId {
    /// The id for `bytes`, refused if they are not a valid Ed25519 point.
    pub fn from_bytes(bytes: [u8; PUBLIC_ID_LEN]) -> Result<Self, IdentityError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| IdentityError::BadPublicId {
            text: hex::encode(bytes),
            reason: "not a valid Ed25519 public key".into(),
        })?;
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; PUBLIC_ID_LEN] {
        &self.0
    }

    /// Any 32 bytes, unchecked: only for bounds and lookups, never for verifying.
    pub(crate) fn from_raw(bytes: [u8; PUBLIC_ID_LEN]) -> Self {
        Self(bytes)
    }

    pub fn to_bytes(self) -> [u8; PUBLIC_ID_LEN] {
        self.0
    }

    /// The first 8 hex digits of the key, for humans skimming logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Checks that `sig` is this identity's signature over `msg` (strict Ed25519: rejects
    /// malleable signatures and small-order keys).
    pub fn verify(&self, msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> Result<(), IdentityError> {
        let key = self.verifying_key()?;
        key.verify_strict(msg, &Signature::from_bytes(sig))
            .map_err(|_| IdentityError::BadSignature(*self))
    }

    /// The decompressed key. Decompressing costs about a fifth of a verification, and the
    /// chain verifies the same few accounts' signatures over and over, so decompressed keys
    /// are remembered (a pure function of the bytes; forgotten wholesale past a bound).
    fn verifying_key(&self) -> Result<VerifyingKey, IdentityError> {
        const REMEMBERED: usize = 1 << 16;
        static KEYS: std::sync::LazyLock<
            std::sync::Mutex<std::collections::HashMap<[u8; PUBLIC_ID_LEN], VerifyingKey>>,
        > = std::sync::LazyLock::new(Default::default);
        if let Some(key) = KEYS.lock().expect("key cache lock").get(&self.0) {
            return Ok(*key);
        }
        let key =
            VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::BadSignature(*self))?;
        let mut keys = KEYS.lock().expect("key cache lock");
        if keys.len() >= REMEMBERED {
            keys.clear();
        }
        keys.insert(self.0, key);
        Ok(key)
    }

    /// Reads a public id from a `.pub` file (the text form) or from a key file written by
    /// [`Identity::save`] (the id is derived from its secret key).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let path = path.as_ref();
        let text = read_small(path)?;
        let trimmed = text.trim();
        // Key files are TOML and always contain `=`; anything else is a `.pub` file.
        if !trimmed.contains('=') {
            return trimmed
                .parse()
                .map_err(|e: IdentityError| IdentityError::BadPublicIdFile {
                    path: path.to_owned(),
                    reason: e.to_string(),
                });
        }
        let mut text = text;
        let parsed = parse_key_file(path, &text);
        wipe_string(&mut text);
        match parsed? {
            Parsed::Seed(id) => Ok(id.public()),
            // The token's public key object, no PIN needed.
            Parsed::Token { spec, public, .. } => {
                let id = token::public_id(&spec)?;
                check_stated(path, public, id)?;
                Ok(id)
            }
        }
    }
}

impl fmt::Display for PublicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PUBLIC_ID_PREFIX)?;
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicId({self})")
    }
}

impl FromStr for PublicId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| IdentityError::BadPublicId {
            text: truncate(s),
            reason,
        };
        let t = s.trim();
        let digits = t.strip_prefix(PUBLIC_ID_PREFIX).ok_or_else(|| {
            bad(format!(
                "a public id starts with {PUBLIC_ID_PREFIX:?} followed by {} hex digits",
                PUBLIC_ID_LEN * 2
            ))
        })?;
        if digits.len() != PUBLIC_ID_LEN * 2 {
            return Err(bad(format!(
                "expected {} hex digits after {PUBLIC_ID_PREFIX:?}, got {} characters",
                PUBLIC_ID_LEN * 2,
                digits.chars().count()
            )));
        }
        let mut bytes = [0u8; PUBLIC_ID_LEN];
        hex::decode_to_slice(digits, &mut bytes)
            .map_err(|e| bad(format!("not hex digits: {e}")))?;
        Self::from_bytes(bytes).map_err(|_| bad("not a valid Ed25519 public key".into()))
    }
}

impl Serialize for PublicId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            self.0.serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for PublicId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let s = String::deserialize(deserializer)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let bytes = <[u8; PUBLIC_ID_LEN]>::deserialize(deserializer)?;
            Ok(Self(bytes))
        }
    }
}

/// An Ed25519 signing key and the role it was made for. `Debug` shows only the public id.
#[derive(Clone)]
pub struct Identity {
    key: Key,
    role: Role,
}

/// The two kinds of key an identity can have. The file kind is the common one and stays
/// inline (no allocation per identity), hence the size difference.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)]
enum Key {
    /// From a key file (or generated): the secret is in this process.
    File(SigningKey),
    /// In a PKCS#11 token: only the public key is here.
    Token(SharedTokenKey),
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public())
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The on-disk key file; see the module docs.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    role: Role,
    #[serde(default)]
    public: Option<String>,
    /// The secret key (seed) in hex; exactly one of `secret` and `pkcs11`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    /// Where the key is when it is in a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pkcs11: Option<Pkcs11Key>,
}

impl Identity {
    /// A fresh key from the operating system's random source.
    pub fn generate(role: Role) -> Self {
        use rand::TryRngCore;
        let mut seed = [0u8; 32];
        // The OS random source failing is not something a key generator can recover from.
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .expect("operating system random source failed");
        let id = Self::from_seed(seed, role);
        wipe(&mut seed);
        id
    }

    /// The identity whose Ed25519 secret key (seed) is `seed`. Deterministic: for tests,
    /// simulations and key import.
    pub fn from_seed(seed: [u8; 32], role: Role) -> Self {
        Self {
            key: Key::File(SigningKey::from_bytes(&seed)),
            role,
        }
    }

    /// The identity whose key is the one `spec` names in a PKCS#11 token: logs in and
    /// checks the key signs. A citizen is refused (it reads only through grants, which need
    /// the secret).
    pub fn from_token(spec: &Pkcs11Key, role: Role) -> Result<Self, IdentityError> {
        if role == Role::Citizen {
            return Err(IdentityError::Token {
                what: format!("PKCS#11 token {:?} key {:?}", spec.token, spec.key_label),
                message: "a citizen reads only through grants, whose X25519 key is derived \
                          from the identity's secret: a citizen's key must be a key file"
                    .into(),
            });
        }
        Ok(Self {
            key: Key::Token(std::sync::Arc::new(TokenKey::open(spec)?)),
            role,
        })
    }

    /// Whether the key is in a PKCS#11 token.
    pub fn in_token(&self) -> bool {
        matches!(self.key, Key::Token(_))
    }

    pub fn public(&self) -> PublicId {
        match &self.key {
            Key::File(key) => PublicId(key.verifying_key().to_bytes()),
            Key::Token(key) => key.public(),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Ed25519 signature over `msg`, made in the token for a token key.
    ///
    /// Fail-stop: a token that cannot sign any more (unplugged, session lost, a signature
    /// that does not verify) ends the process after logging why, rather than let a node go
    /// on without its signatures; a service manager restarts it, and opening the key again
    /// says what is wrong. Where a failure can be reported instead, use
    /// [`try_sign`](Self::try_sign).
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        match self.try_sign(msg) {
            Ok(sig) => sig,
            Err(e) => {
                tracing::error!(id = %self.public(), "cannot sign, stopping: {e}");
                eprintln!("dangan: {} cannot sign, stopping: {e}", self.public());
                std::process::abort()
            }
        }
    }

    /// Ed25519 signature over `msg`, or why the token could not make it (a key file
    /// always can).
    pub fn try_sign(&self, msg: &[u8]) -> Result<[u8; SIGNATURE_LEN], IdentityError> {
        match &self.key {
            Key::File(key) => Ok(key.sign(msg).to_bytes()),
            Key::Token(key) => key.sign(msg),
        }
    }

    /// A 32-byte secret for `context`, derived from this identity's secret key (BLAKE3
    /// key derivation), so one key file holds every key the identity needs. Secret material.
    /// A token key has no secret here: [`IdentityError::SecretInToken`], naming `context`.
    pub(crate) fn derive_secret(&self, context: &str) -> Result<[u8; 32], IdentityError> {
        match &self.key {
            Key::File(key) => Ok(blake3::derive_key(context, key.as_bytes())),
            Key::Token(_) => Err(IdentityError::SecretInToken {
                id: self.public(),
                purpose: format!("{context:?}"),
            }),
        }
    }

    /// The key as PKCS#8 v1 DER (RFC 8410: the 16-byte fixed header, then the 32-byte
    /// seed), for tests that build TLS configurations by hand. Secret material.
    #[cfg(test)]
    pub(crate) fn pkcs8_der(&self) -> Vec<u8> {
        let Key::File(key) = &self.key else {
            panic!("a token key has no PKCS#8 form");
        };
        const HEADER: [u8; 16] = [
            0x30, 0x2e, // SEQUENCE, 46 bytes
            0x02, 0x01, 0x00, // INTEGER 0 (version v1)
            0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, // AlgorithmIdentifier id-Ed25519
            0x04, 0x22, 0x04, 0x20, // OCTET STRING { OCTET STRING (32 bytes) }
        ];
        let mut der = Vec::with_capacity(HEADER.len() + 32);
        der.extend_from_slice(&HEADER);
        der.extend_from_slice(key.as_bytes());
        der
    }

    /// The sibling file [`save`](Self::save) writes the public id to: `path` with `.pub`
    /// appended to its file name.
    pub fn pub_path(path: impl AsRef<Path>) -> PathBuf {
        let mut p = path.as_ref().as_os_str().to_owned();
        p.push(".pub");
        PathBuf::from(p)
    }

    /// Writes the key file at `path` (mode 0600 on unix) and the public id at
    /// [`pub_path`](Self::pub_path)`(path)`. Refuses if either file already exists.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), IdentityError> {
        let path = path.as_ref();
        let pub_path = Self::pub_path(path);
        for p in [path, pub_path.as_path()] {
            if p.symlink_metadata().is_ok() {
                return Err(IdentityError::AlreadyExists { path: p.to_owned() });
            }
        }
        let Key::File(key) = &self.key else {
            return Err(IdentityError::MalformedKeyFile {
                path: path.to_owned(),
                reason: "the key is in a token: write its [pkcs11] key file by hand".into(),
            });
        };
        let mut secret_hex = hex::encode(key.as_bytes());
        let body = format!(
            "# Dangan identity key. Secret: anyone holding this file can act as this identity.\n{}",
            toml::to_string(&KeyFile {
                version: KEY_FILE_VERSION,
                role: self.role,
                public: Some(self.public().to_string()),
                secret: Some(secret_hex.clone()),
                pkcs11: None,
            })
            .map_err(|e| IdentityError::MalformedKeyFile {
                path: path.to_owned(),
                reason: format!("could not encode: {e}"),
            })?
        );
        wipe_string(&mut secret_hex);
        let result = write_new(path, body.as_bytes(), true);
        let mut body = body;
        wipe_string(&mut body);
        result?;
        write_new(&pub_path, format!("{}\n", self.public()).as_bytes(), false)
    }

    /// Reads a key file written by [`save`](Self::save). On unix a key file that group or
    /// others may read or write (any of mode `0o077`) is refused
    /// ([`IdentityError::InsecureKeyFile`], naming the `chmod` that fixes it): a secret
    /// others can read is no longer this identity's alone.
    ///
    /// A key file with a `[pkcs11]` table opens the key in its token (PIN and all, see the
    /// module docs); the same mode rule holds for it and for its PIN file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let path = path.as_ref();
        check_private(path)?;
        let mut text = read_small(path)?;
        let result = Self::from_key_file_text(path, &text);
        wipe_string(&mut text);
        result
    }

    fn from_key_file_text(path: &Path, text: &str) -> Result<Self, IdentityError> {
        match parse_key_file(path, text)? {
            Parsed::Seed(id) => Ok(id),
            Parsed::Token { spec, role, public } => {
                let id = Self::from_token(&spec, role)?;
                check_stated(path, public, id.public())?;
                Ok(id)
            }
        }
    }
}

/// A key file, read: a key file's identity, or where a token key is.
enum Parsed {
    Seed(Identity),
    Token {
        spec: Pkcs11Key,
        role: Role,
        public: Option<PublicId>,
    },
}

/// `public` as stated in a key file must be the key's.
fn check_stated(
    path: &Path,
    stated: Option<PublicId>,
    actual: PublicId,
) -> Result<(), IdentityError> {
    match stated {
        Some(stated) if stated != actual => Err(IdentityError::PublicKeyMismatch {
            path: path.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// Refuses (on unix) a file that group or others may read or write.
fn check_private(path: &Path) -> Result<(), IdentityError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = fs::metadata(path).map_err(io_err(path))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::InsecureKeyFile {
                path: path.to_owned(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn parse_key_file(path: &Path, text: &str) -> Result<Parsed, IdentityError> {
    let malformed = |reason: String| IdentityError::MalformedKeyFile {
        path: path.to_owned(),
        reason,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| malformed(e.message().to_owned()))?;
    match table.get("version") {
        None => return Err(malformed("missing `version`".into())),
        Some(toml::Value::Integer(v)) if *v == i64::from(KEY_FILE_VERSION) => {}
        Some(toml::Value::Integer(v)) => {
            return Err(IdentityError::UnsupportedVersion {
                path: path.to_owned(),
                found: *v,
                supported: KEY_FILE_VERSION,
            });
        }
        Some(_) => return Err(malformed("`version` must be an integer".into())),
    }
    let file: KeyFile = table
        .try_into()
        .map_err(|e: toml::de::Error| malformed(e.message().to_owned()))?;
    let public = file
        .public
        .map(|p| p.parse::<PublicId>())
        .transpose()
        .map_err(|e| malformed(format!("`public`: {e}")))?;
    let secret = match (file.secret, file.pkcs11) {
        (Some(secret), None) => secret,
        (None, Some(spec)) => {
            return Ok(Parsed::Token {
                spec: spec.resolve(path.parent().unwrap_or(Path::new("."))),
                role: file.role,
                public,
            });
        }
        (None, None) => {
            return Err(malformed(
                "missing `secret` (or a [pkcs11] table for a key in a token)".into(),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(malformed(
                "both `secret` and [pkcs11]: a key is in a file or in a token".into(),
            ));
        }
    };
    let mut seed = [0u8; 32];
    if secret.len() != 64 {
        return Err(malformed(format!(
            "`secret` must be 64 hex digits, got {} characters",
            secret.chars().count()
        )));
    }
    hex::decode_to_slice(&secret, &mut seed)
        .map_err(|_| malformed("`secret` must be 64 hex digits".into()))?;
    let mut secret = secret;
    wipe_string(&mut secret);
    let id = Identity::from_seed(seed, file.role);
    wipe(&mut seed);
    check_stated(path, public, id.public())?;
    Ok(Parsed::Seed(id))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads a small UTF-8 text file, refusing large or binary ones with a clear error.
fn read_small(path: &Path) -> Result<String, IdentityError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(IdentityError::MalformedKeyFile {
            path: path.to_owned(),
            reason: format!("larger than {MAX_KEY_FILE_LEN} bytes"),
        });
    }
    String::from_utf8(buf).map_err(|e| {
        let mut bytes = e.into_bytes();
        wipe(&mut bytes);
        IdentityError::MalformedKeyFile {
            path: path.to_owned(),
            reason: "not UTF-8 text".into(),
        }
    })
}

/// Creates `path` (failing if it exists), writes `bytes` and syncs; removes the file again
/// if writing fails.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), IdentityError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = opts.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            IdentityError::AlreadyExists {
                path: path.to_owned(),
            }
        } else {
            io_err(path)(e)
        }
    })?;
    let result = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = result {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(io_err(path)(e));
    }
    Ok(())
}

/// Best-effort overwrite of secret bytes before they are freed.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

fn wipe_string(s: &mut String) {
    let mut bytes = std::mem::take(s).into_bytes();
    wipe(&mut bytes);
}

/// User text quoted in error messages, cut short so a huge argument cannot flood a log.
fn truncate(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tmp();
        let path = dir.path().join("node.key");
        let id = Identity::generate(Role::Validator);
        id.save(&path).unwrap();
        let back = Identity::load(&path).unwrap();
        assert_eq!(back.public(), id.public());
        assert_eq!(back.role(), Role::Validator);
        assert_eq!(back.sign(b"x"), id.sign(b"x"));

        let pub_path = Identity::pub_path(&path);
        assert_eq!(pub_path, dir.path().join("node.key.pub"));
        assert_eq!(PublicId::load(&pub_path).unwrap(), id.public());
        assert_eq!(PublicId::load(&path).unwrap(), id.public());

        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("version = 1"), "{text}");
        assert!(text.contains("role = \"validator\""), "{text}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn refuses_overwrite() {
        let dir = tmp();
        let path = dir.path().join("a.key");
        let first = Identity::generate(Role::Node);
        first.save(&path).unwrap();
        let err = Identity::generate(Role::Node).save(&path).unwrap_err();
        assert!(matches!(err, IdentityError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("a.key"), "{err}");
        assert_eq!(Identity::load(&path).unwrap().public(), first.public());

        // A stale .pub alone also blocks saving, and nothing is written.
        let path2 = dir.path().join("b.key");
        fs::write(Identity::pub_path(&path2), "x").unwrap();
        let err = Identity::generate(Role::Node).save(&path2).unwrap_err();
        assert!(matches!(err, IdentityError::AlreadyExists { .. }), "{err}");
        assert!(!path2.exists());
    }

    #[test]
    fn malformed_files_error_not_panic() {
        let dir = tmp();
        let good = Identity::from_seed([7; 32], Role::Citizen);
        let secret = hex::encode([7u8; 32]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", b"".to_vec()),
            ("binary", vec![0xff, 0xfe, 0, 1, 2]),
            ("not toml", b"this is = = not toml".to_vec()),
            (
                "no version",
                format!("role = \"node\"\nsecret = \"{secret}\"\n").into(),
            ),
            (
                "version 2",
                format!("version = 2\nrole = \"node\"\nsecret = \"{secret}\"\n").into(),
            ),
            (
                "version str",
                format!("version = \"1\"\nrole = \"node\"\nsecret = \"{secret}\"\n").into(),
            ),
            (
                "bad role",
                format!("version = 1\nrole = \"king\"\nsecret = \"{secret}\"\n").into(),
            ),
            (
                "short secret",
                b"version = 1\nrole = \"node\"\nsecret = \"abcd\"\n".to_vec(),
            ),
            (
                "non-hex secret",
                format!(
                    "version = 1\nrole = \"node\"\nsecret = \"{}\"\n",
                    "zz".repeat(32)
                )
                .into(),
            ),
            (
                "multibyte secret",
                format!(
                    "version = 1\nrole = \"node\"\nsecret = \"{}\"\n",
                    "é".repeat(32)
                )
                .into(),
            ),
            ("no secret", b"version = 1\nrole = \"node\"\n".to_vec()),
            (
                "unknown field",
                format!("version = 1\nrole = \"node\"\nsecret = \"{secret}\"\nextra = 1\n").into(),
            ),
            (
                "wrong public",
                format!(
                    "version = 1\nrole = \"node\"\npublic = \"{}\"\nsecret = \"{secret}\"\n",
                    Identity::from_seed([8; 32], Role::Node).public()
                )
                .into(),
            ),
            (
                "bad public",
                format!(
                    "version = 1\nrole = \"node\"\npublic = \"dgn1zz\"\nsecret = \"{secret}\"\n"
                )
                .into(),
            ),
            ("huge", vec![b'#'; 100_000]),
        ];
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            write_private(&path, &bytes);
            let err = Identity::load(&path).expect_err(name);
            let msg = err.to_string();
            assert!(msg.contains(name), "{name}: message lacks the path: {msg}");
            assert!(PublicId::load(&path).is_err(), "{name}");
        }
        let bad_pub = dir.path().join("bad.pub");
        fs::write(&bad_pub, "dgn1abc\n").unwrap();
        let err = PublicId::load(&bad_pub).unwrap_err();
        assert!(
            matches!(err, IdentityError::BadPublicIdFile { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("bad.pub"), "{err}");

        let missing = Identity::load(dir.path().join("missing")).unwrap_err();
        assert!(matches!(missing, IdentityError::Io { .. }), "{missing}");

        // Sanity: the same text with everything right loads.
        let path = dir.path().join("ok");
        write_private(
            &path,
            format!("version = 1\nrole = \"citizen\"\nsecret = \"{secret}\"\n").as_bytes(),
        );
        assert_eq!(Identity::load(&path).unwrap().public(), good.public());
    }

    /// Writes a file readable by its owner only, as a key file must be.
    fn write_private(path: &Path, bytes: &[u8]) {
        fs::write(path, bytes).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn key_files_open_to_group_or_others_are_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp();
        let path = dir.path().join("dept.key");
        let id = Identity::generate(Role::Department);
        id.save(&path).unwrap();
        for mode in [
            0o640,
            0o604,
            0o660,
            0o644,
            0o666,
            0o620,
            0o602,
            0o700 | 0o010,
        ] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = Identity::load(&path).expect_err("an open key file is refused");
            assert!(
                matches!(err, IdentityError::InsecureKeyFile { mode: m, .. } if m == mode),
                "{mode:o}: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "the message names the fix: {msg}"
            );
            assert!(msg.contains(&format!("{mode:o}")), "{msg}");
        }
        // Owner-only modes load; the fix in the message works.
        for mode in [0o600, 0o400, 0o700] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(
                Identity::load(&path).unwrap().public(),
                id.public(),
                "{mode:o}"
            );
        }
        // The public id file stays world-readable and loads.
        assert_eq!(
            PublicId::load(Identity::pub_path(&path)).unwrap(),
            id.public()
        );
    }

    #[test]
    fn token_key_files_are_parsed_and_refused_clearly() {
        let dir = tmp();
        let secret = hex::encode([7u8; 32]);
        let table = "[pkcs11]\nmodule = \"/nonexistent/libpkcs11.so\"\ntoken = \"t\"\n\
                     key_label = \"k\"\npin_env = \"PATH\"\n";
        let both = dir.path().join("both");
        write_private(
            &both,
            format!("version = 1\nrole = \"node\"\nsecret = \"{secret}\"\n{table}").as_bytes(),
        );
        let err = Identity::load(&both).unwrap_err().to_string();
        assert!(err.contains("both `secret` and [pkcs11]"), "{err}");
        let neither = dir.path().join("neither");
        write_private(&neither, b"version = 1\nrole = \"node\"\n");
        let err = Identity::load(&neither).unwrap_err().to_string();
        assert!(err.contains("missing `secret`"), "{err}");
        // A PIN in the key file itself is refused: it is not a field.
        let pin = dir.path().join("pin");
        write_private(
            &pin,
            format!("version = 1\nrole = \"node\"\n{table}pin = \"1234\"\n").as_bytes(),
        );
        let err = Identity::load(&pin).unwrap_err().to_string();
        assert!(err.contains("pin"), "{err}");
        // A token key file whose module is missing: a clear error naming it, from both loads.
        let token = dir.path().join("token");
        write_private(
            &token,
            format!("version = 1\nrole = \"department\"\n{table}").as_bytes(),
        );
        for err in [
            Identity::load(&token).unwrap_err(),
            PublicId::load(&token).unwrap_err(),
        ] {
            assert!(matches!(err, IdentityError::Token { .. }), "{err}");
            assert!(
                err.to_string().contains("/nonexistent/libpkcs11.so"),
                "{err}"
            );
        }
        // A citizen reads through grants: never a token key, refused before the token.
        let citizen = dir.path().join("citizen");
        write_private(
            &citizen,
            format!("version = 1\nrole = \"citizen\"\n{table}").as_bytes(),
        );
        let err = Identity::load(&citizen).unwrap_err().to_string();
        assert!(err.contains("a citizen's key must be a key file"), "{err}");
    }

    #[test]
    fn public_id_text_round_trip_and_errors() {
        let id = Identity::generate(Role::Node).public();
        let text = id.to_string();
        assert_eq!(text.len(), 68);
        assert!(text.starts_with("dgn1"));
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<PublicId>().unwrap(), id);
        assert_eq!(format!("  {text}\n").parse::<PublicId>().unwrap(), id);
        assert_eq!(
            format!("dgn1{}", text[4..].to_uppercase())
                .parse::<PublicId>()
                .unwrap(),
            id
        );

        let bad = [
            ("", "starts with"),
            (&text[4..], "starts with"),
            ("DGN1", "starts with"),
            (&text[..67], "expected 64 hex digits"),
            (&format!("{text}0"), "expected 64 hex digits"),
            (&format!("dgn1{}", "g".repeat(64)), "not hex"),
            (&format!("dgn1{}", "é".repeat(32)), "not hex"),
            (
                &format!("dgn1{}", hex::encode(off_curve())),
                "not a valid Ed25519",
            ),
        ];
        for (input, want) in bad {
            let err = input.parse::<PublicId>().unwrap_err();
            assert!(err.to_string().contains(want), "{input:?}: {err}");
        }

        // Serde: text in TOML/JSON-like formats, raw bytes in postcard.
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct W {
            id: PublicId,
        }
        let t = toml::to_string(&W { id }).unwrap();
        assert!(t.contains(&text), "{t}");
        assert_eq!(toml::from_str::<W>(&t).unwrap(), W { id });
        let bin = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bin.len(), 32);
        assert_eq!(postcard::from_bytes::<PublicId>(&bin).unwrap(), id);
    }

    /// 32 bytes that do not decode to an Ed25519 point.
    fn off_curve() -> [u8; 32] {
        (0u8..=255)
            .map(|y| {
                let mut b = [0u8; 32];
                b[0] = y;
                b
            })
            .find(|b| VerifyingKey::from_bytes(b).is_err())
            .unwrap()
    }

    #[test]
    fn sign_verify_and_tamper() {
        let id = Identity::generate(Role::Department);
        let msg = b"transfer shard 42";
        let sig = id.sign(msg);
        id.public().verify(msg, &sig).unwrap();
        let mut bad_sig = sig;
        bad_sig[10] ^= 1;
        assert!(id.public().verify(msg, &bad_sig).is_err());
        let mut bad_msg = *msg;
        bad_msg[0] ^= 0x80;
        assert!(id.public().verify(&bad_msg, &sig).is_err());
        let other = Identity::generate(Role::Department).public();
        let err = other.verify(msg, &sig).unwrap_err();
        assert!(err.to_string().contains(&other.to_string()), "{err}");
    }

    #[test]
    fn debug_hides_secret() {
        let id = Identity::from_seed([0xab; 32], Role::Operator);
        let dbg = format!("{id:?}");
        assert!(!dbg.contains(&hex::encode([0xab_u8; 32])), "{dbg}");
        assert!(!dbg.contains("171, 171"), "{dbg}");
        assert!(dbg.contains(&id.public().to_string()), "{dbg}");
    }

    #[test]
    fn pkcs8_encoding_matches_dalek_decoder() {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let id = Identity::generate(Role::Node);
        let back = SigningKey::from_pkcs8_der(&id.pkcs8_der()).unwrap();
        assert_eq!(back.verifying_key().to_bytes(), *id.public().as_bytes());
    }

    #[test]
    fn roles_text() {
        for r in Role::ALL {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
        }
        assert!("King".parse::<Role>().is_err());
    }
}
