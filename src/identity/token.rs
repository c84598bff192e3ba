//! Ed25519 keys held in a PKCS#11 token (a hardware security module, or SoftHSM2 in tests):
//! the second kind of [`Identity`](super::Identity) key, next to the key file.
//!
//! A token key signs inside the token with `CKM_EDDSA` (pure Ed25519, no context), so the
//! private key never leaves it; this side only ever holds the public key, read from the
//! token's public key object (`CKA_EC_POINT`, a DER OCTET STRING around the 32 key bytes,
//! with `CKA_EC_PARAMS` naming the curve either by the OID 1.3.101.112 or by the printable
//! string `edwards25519`, which OpenSC's `pkcs11-tool` writes). Every signature the token
//! returns is verified against that public key before it is used, and opening a key signs
//! and verifies once, so a label that names the wrong key pair is refused at load.
//!
//! The token is named by its label, the key by the label of its private and public key
//! objects (`pkcs11-tool --keypairgen --label`). The user PIN comes from a file readable by
//! its owner only or from an environment variable, never from the config itself.
//!
//! One PKCS#11 module is initialised once per process and stays so (`C_Initialize` may not
//! be called twice); each opened key has its own session. Login is per token and process:
//! once one key of a token has logged in, further keys of that token in the same process
//! use that login.
//!
//! Not for: secrets derived from the identity's key (the X25519 grant key, S3 secrets):
//! a token key has no secret this side can derive from, see
//! [`IdentityError::SecretInToken`](super::IdentityError::SecretInToken).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use serde::{Deserialize, Serialize};

use super::{IdentityError, PUBLIC_ID_LEN, PublicId, SIGNATURE_LEN};

/// DER of the OID 1.3.101.112 (id-Ed25519, RFC 8410) as `CKA_EC_PARAMS`.
pub const EC_PARAMS_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER of the PrintableString `edwards25519` as `CKA_EC_PARAMS` (what OpenSC writes).
pub const EC_PARAMS_NAME: [u8; 14] = [
    0x13, 0x0c, b'e', b'd', b'w', b'a', b'r', b'd', b's', b'2', b'5', b'5', b'1', b'9',
];
/// A message signed and verified when a key is opened.
const PROBE: &[u8] = b"dangan/pkcs11-probe/v1\0";

/// `[pkcs11]` of a key file: where the key is. Paths are resolved against the key file's
/// directory by [`Pkcs11Key::resolve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Key {
    /// The PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// The label of the key pair's objects.
    pub key_label: String,
    /// A file holding the user PIN (mode 0600); or use `pin_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
    /// An environment variable holding the user PIN; or use `pin_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_env: Option<String>,
}

impl Pkcs11Key {
    /// Resolves relative paths against `base` (the key file's directory).
    pub fn resolve(mut self, base: &Path) -> Self {
        self.module = base.join(&self.module);
        self.pin_file = self.pin_file.map(|p| base.join(p));
        self
    }

    fn what(&self) -> String {
        format!(
            "PKCS#11 token {:?} key {:?} ({})",
            self.token,
            self.key_label,
            self.module.display()
        )
    }

    fn error(&self, message: impl Into<String>) -> IdentityError {
        IdentityError::Token {
            what: self.what(),
            message: message.into(),
        }
    }

    /// The user PIN, from `pin_file` or `pin_env` (exactly one must be set).
    fn pin(&self) -> Result<AuthPin, IdentityError> {
        let text = match (&self.pin_file, &self.pin_env) {
            (Some(path), None) => {
                super::check_private(path)?;
                let mut text = super::read_small(path)?;
                let pin = text.trim_end_matches(['\n', '\r']).to_owned();
                super::wipe_string(&mut text);
                pin
            }
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| self.error(format!("the PIN variable {var} is not set")))?,
            _ => return Err(self.error("set exactly one of pin_file and pin_env")),
        };
        if text.is_empty() {
            return Err(self.error("the PIN is empty"));
        }
        Ok(AuthPin::from(text))
    }
}

/// An open token key: a logged-in session and the private key's handle.
pub(crate) struct TokenKey {
    spec: Pkcs11Key,
    session: Mutex<Session>,
    key: ObjectHandle,
    public: PublicId,
}

impl TokenKey {
    /// Logs in to the token and finds the key pair; signs and verifies once.
    pub(crate) fn open(spec: &Pkcs11Key) -> Result<Self, IdentityError> {
        let pin = spec.pin()?;
        let (session, public) = session_and_public(spec)?;
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(spec.error("the token refused the PIN: it is incorrect"));
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(spec.error("the token's user PIN is locked"));
            }
            Err(e) => return Err(spec.error(format!("login failed: {e}"))),
        }
        let keys = session
            .find_objects(&[
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::KeyType(KeyType::EC_EDWARDS),
                Attribute::Label(spec.key_label.as_bytes().to_vec()),
            ])
            .map_err(|e| spec.error(format!("finding the private key: {e}")))?;
        let key = match keys.as_slice() {
            [key] => *key,
            [] => return Err(spec.error("no Ed25519 private key with this label")),
            _ => return Err(spec.error("more than one private key with this label")),
        };
        let opened = Self {
            spec: spec.clone(),
            session: Mutex::new(session),
            key,
            public,
        };
        opened.sign(PROBE)?;
        Ok(opened)
    }

    pub(crate) fn public(&self) -> PublicId {
        self.public
    }

    /// Signs `msg` inside the token; the signature is verified before it is returned.
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<[u8; SIGNATURE_LEN], IdentityError> {
        let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let sig = {
            let session = self.session.lock().expect("token session lock");
            session
                .sign(&mechanism, self.key, msg)
                .map_err(|e| self.spec.error(format!("signing failed: {e}")))?
        };
        let sig: [u8; SIGNATURE_LEN] = sig.as_slice().try_into().map_err(|_| {
            self.spec
                .error(format!("the token returned a {}-byte signature", sig.len()))
        })?;
        self.public.verify(msg, &sig).map_err(|_| {
            self.spec.error(
                "the token's signature does not verify with its public key \
                 (the private and public objects with this label are not one key pair)",
            )
        })?;
        Ok(sig)
    }
}

/// The identity id of the key `spec` names, read from its public key object (no PIN
/// needed): what `dangan keys pkcs11-id` prints.
pub fn public_id(spec: &Pkcs11Key) -> Result<PublicId, IdentityError> {
    Ok(session_and_public(spec)?.1)
}

/// A read-only session on the token and the key's public id.
fn session_and_public(spec: &Pkcs11Key) -> Result<(Session, PublicId), IdentityError> {
    let ctx = context(spec)?;
    let slot = find_slot(&ctx, spec)?;
    let session = ctx
        .open_ro_session(slot)
        .map_err(|e| spec.error(format!("opening a session: {e}")))?;
    let objects = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(spec.key_label.as_bytes().to_vec()),
        ])
        .map_err(|e| spec.error(format!("finding the public key: {e}")))?;
    let object = match objects.as_slice() {
        [object] => *object,
        [] => return Err(spec.error("no public key object with this label")),
        _ => return Err(spec.error("more than one public key object with this label")),
    };
    let attrs = session
        .get_attributes(
            object,
            &[
                AttributeType::KeyType,
                AttributeType::EcParams,
                AttributeType::EcPoint,
            ],
        )
        .map_err(|e| spec.error(format!("reading the public key: {e}")))?;
    let (mut key_type, mut params, mut point) = (None, None, None);
    for attr in attrs {
        match attr {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    if key_type != Some(KeyType::EC_EDWARDS) {
        return Err(spec.error("the key is not an Edwards-curve (Ed25519) key"));
    }
    let params = params.ok_or_else(|| spec.error("the public key has no CKA_EC_PARAMS"))?;
    check_ec_params(&params).map_err(|e| spec.error(e))?;
    let point = point.ok_or_else(|| spec.error("the public key has no CKA_EC_POINT"))?;
    let bytes = parse_ec_point(&point).map_err(|e| spec.error(e))?;
    let public = PublicId::from_bytes(bytes)
        .map_err(|_| spec.error("CKA_EC_POINT is not a valid Ed25519 public key"))?;
    Ok((session, public))
}

/// The module at `spec.module`, loaded and initialised once per process.
fn context(spec: &Pkcs11Key) -> Result<Pkcs11, IdentityError> {
    static MODULES: std::sync::LazyLock<Mutex<HashMap<PathBuf, Pkcs11>>> =
        std::sync::LazyLock::new(Default::default);
    let mut modules = MODULES.lock().expect("pkcs11 modules lock");
    if let Some(ctx) = modules.get(&spec.module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(&spec.module)
        .map_err(|e| spec.error(format!("loading the PKCS#11 module: {e}")))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(spec.error(format!("initialising the PKCS#11 module: {e}"))),
    }
    modules.insert(spec.module.clone(), ctx.clone());
    Ok(ctx)
}

fn find_slot(ctx: &Pkcs11, spec: &Pkcs11Key) -> Result<Slot, IdentityError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| spec.error(format!("listing slots: {e}")))?;
    let mut found = Vec::new();
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| spec.error(format!("reading token info: {e}")))?;
        if info.label().trim_end() == spec.token {
            found.push(slot);
        }
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(spec.error("no token with this label")),
        _ => Err(spec.error("more than one token with this label")),
    }
}

/// Checks that `CKA_EC_PARAMS` names Ed25519: the DER OID 1.3.101.112 or the DER
/// PrintableString `edwards25519`.
pub fn check_ec_params(der: &[u8]) -> Result<(), String> {
    if der == EC_PARAMS_OID || der == EC_PARAMS_NAME {
        Ok(())
    } else {
        Err(format!(
            "CKA_EC_PARAMS {} names no curve this build signs with (expected Ed25519: the OID \
             1.3.101.112 or the name \"edwards25519\")",
            hex::encode(&der[..der.len().min(32)])
        ))
    }
}

/// The 32 key bytes of an Ed25519 `CKA_EC_POINT`: a DER OCTET STRING of 32 bytes (PKCS#11
/// 3.0), or the 32 bytes bare (what some tokens return).
pub fn parse_ec_point(der: &[u8]) -> Result<[u8; PUBLIC_ID_LEN], String> {
    let bytes = match der {
        [0x04, 0x20, rest @ ..] if rest.len() == PUBLIC_ID_LEN => rest,
        bare if bare.len() == PUBLIC_ID_LEN => bare,
        _ => {
            return Err(format!(
                "CKA_EC_POINT is not a 32-byte Ed25519 point ({} bytes: {}…)",
                der.len(),
                hex::encode(&der[..der.len().min(8)])
            ));
        }
    };
    let mut out = [0u8; PUBLIC_ID_LEN];
    out.copy_from_slice(bytes);
    Ok(out)
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKey({}, {})", self.spec.what(), self.public)
    }
}

/// Shared by every clone of an identity.
pub(crate) type SharedTokenKey = Arc<TokenKey>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_params_accepts_the_oid_and_the_name_only() {
        check_ec_params(&EC_PARAMS_OID).unwrap();
        check_ec_params(&EC_PARAMS_NAME).unwrap();
        // The same as pkcs11-tool prints it.
        assert_eq!(hex::encode(EC_PARAMS_NAME), "130c656477617264733235353139");
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let ed448 = [0x06, 0x03, 0x2b, 0x65, 0x71];
        let x25519 = [0x06, 0x03, 0x2b, 0x65, 0x6e];
        let mut wrong_name = EC_PARAMS_NAME;
        wrong_name[13] = b'8';
        let mut utf8_tag = EC_PARAMS_NAME;
        utf8_tag[0] = 0x0c;
        for bad in [
            &[][..],
            &p256[..],
            &ed448[..],
            &x25519[..],
            &wrong_name[..],
            &utf8_tag[..],
            &EC_PARAMS_OID[..4],
            &[0xff; 300][..],
        ] {
            let err = check_ec_params(bad).unwrap_err();
            assert!(err.contains("Ed25519"), "{err}");
        }
    }

    #[test]
    fn ec_point_accepts_the_octet_string_and_bare_bytes() {
        let key: [u8; 32] = std::array::from_fn(|i| i as u8 + 1);
        let mut der = vec![0x04, 0x20];
        der.extend_from_slice(&key);
        assert_eq!(parse_ec_point(&der).unwrap(), key);
        assert_eq!(parse_ec_point(&key).unwrap(), key);
        let mut long_form = vec![0x04, 0x81, 0x20];
        long_form.extend_from_slice(&key);
        let mut short = der.clone();
        short.pop();
        let mut long = der.clone();
        long.push(0);
        let mut wrong_tag = der.clone();
        wrong_tag[0] = 0x03;
        let mut wrong_len = der.clone();
        wrong_len[1] = 0x21;
        for bad in [
            &[][..],
            &[0x04][..],
            &[0x04, 0x20][..],
            &short[..],
            &long[..],
            &long_form[..],
            &wrong_tag[..],
            &wrong_len[..],
            &key[..31],
            &[0xaa; 4096][..],
        ] {
            let err = parse_ec_point(bad).unwrap_err();
            assert!(err.contains("CKA_EC_POINT"), "{err}");
        }
    }

    #[test]
    fn a_key_spec_needs_exactly_one_pin_source_and_never_a_pin() {
        let base = Pkcs11Key {
            module: "/nonexistent/module.so".into(),
            token: "t".into(),
            key_label: "k".into(),
            pin_file: None,
            pin_env: None,
        };
        let err = base.pin().err().unwrap().to_string();
        assert!(err.contains("exactly one of pin_file and pin_env"), "{err}");
        let both = Pkcs11Key {
            pin_file: Some("pin".into()),
            pin_env: Some("X".into()),
            ..base.clone()
        };
        assert!(both.pin().is_err());
        let unset = Pkcs11Key {
            pin_env: Some("DANGAN_TEST_PIN_THAT_IS_NEVER_SET".into()),
            ..base.clone()
        };
        let err = unset.pin().err().unwrap().to_string();
        assert!(err.contains("DANGAN_TEST_PIN_THAT_IS_NEVER_SET"), "{err}");
        // A PIN written into the key file itself is not a field.
        let text = "module = \"m\"\ntoken = \"t\"\nkey_label = \"k\"\npin = \"1234\"\n";
        let err = toml::from_str::<Pkcs11Key>(text).unwrap_err().to_string();
        assert!(err.contains("pin"), "{err}");
        // A module that does not exist is a clear error, not a panic.
        let missing = Pkcs11Key {
            pin_env: Some("PATH".into()),
            ..base
        };
        let err = public_id(&missing).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/module.so"), "{err}");
    }
}
