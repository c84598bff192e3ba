//! Grants: a document's data key wrapped to one reader with HPKE (RFC 9180), and the
//! printable grant address a reader hands to a department so it can grant to them.
//!
//! Every identity has, besides its Ed25519 signing key, an X25519 key for receiving data
//! keys, derived from the same secret (BLAKE3 key derivation, context
//! [`X25519_CONTEXT`]), so a key file holds both. The **grant address** (`dga1` + hex of
//! Ed25519 id ‖ X25519 public key ‖ Ed25519 signature over the X25519 key) ties the two
//! together: a department granting to an address knows the X25519 key belongs to that id.
//!
//! A [`WrappedKey`] is HPKE base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
//! ChaCha20-Poly1305, with `info = GRANT_DOMAIN ‖ document id ‖ grantee id`, so a wrapped key
//! opens only for that document and that reader: copied into another grant, it fails. It
//! also records the recipient's X25519 key, so the owner can seal a new version's data key
//! to the same reader ([`WrappedKey::rewrap`], used by rekey and supersede).
//!
//! Not for: deciding who may read (the chain state does, see `chain::state`).

use std::fmt;
use std::str::FromStr;

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

use crate::crypto::DataKey;
use crate::id::DocumentId;
use crate::identity::{Identity, PublicId, SIGNATURE_LEN};

type Kem = X25519HkdfSha256;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;

/// Key-derivation context of an identity's X25519 key.
pub const X25519_CONTEXT: &str = "dangan 2026-11 identity x25519 key v1";
/// HPKE `info` prefix of a wrapped data key.
pub const GRANT_DOMAIN: &[u8] = b"dangan/grant/v1\0";
/// Signature domain of a grant address.
pub const ADDRESS_DOMAIN: &[u8] = b"dangan/grant-address/v1\0";
/// Text prefix of a grant address.
pub const ADDRESS_PREFIX: &str = "dga1";
/// Length of an HPKE-sealed data key: 32 bytes of key and a 16-byte tag.
pub const SEALED_LEN: usize = 32 + 16;
const ADDRESS_LEN: usize = 32 + 32 + SIGNATURE_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    #[error("bad grant address: {0}")]
    BadAddress(String),
    #[error("the grant address's X25519 key is not signed by {0}")]
    AddressNotSigned(PublicId),
    #[error("wrapping the data key failed: {0}")]
    Wrap(String),
    #[error(
        "the wrapped key does not open for this reader and document (not granted to this key, or altered)"
    )]
    Unwrap,
    /// The identity's X25519 key cannot be derived: its key is in a token.
    #[error("no grant key: {0}")]
    NoX25519Key(String),
}

/// Where a department sends a reader's data keys: the reader's id and X25519 key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GrantAddress {
    pub id: PublicId,
    pub x25519: [u8; 32],
    signature: [u8; SIGNATURE_LEN],
}

impl GrantAddress {
    /// `identity`'s grant address; none for a key in a token (its X25519 key is derived
    /// from the secret).
    pub fn of(identity: &Identity) -> Result<Self, GrantError> {
        let x25519 = x25519_keypair(identity)?.1;
        let signature = identity.sign(&address_message(&x25519));
        Ok(Self {
            id: identity.public(),
            x25519,
            signature,
        })
    }

    /// Checks that the X25519 key is signed by the id.
    pub fn verify(&self) -> Result<(), GrantError> {
        self.id
            .verify(&address_message(&self.x25519), &self.signature)
            .map_err(|_| GrantError::AddressNotSigned(self.id))
    }
}

fn address_message(x25519: &[u8; 32]) -> Vec<u8> {
    let mut msg = ADDRESS_DOMAIN.to_vec();
    msg.extend_from_slice(x25519);
    msg
}

impl fmt::Display for GrantAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = Vec::with_capacity(ADDRESS_LEN);
        bytes.extend_from_slice(self.id.as_bytes());
        bytes.extend_from_slice(&self.x25519);
        bytes.extend_from_slice(&self.signature);
        write!(f, "{ADDRESS_PREFIX}{}", hex::encode(bytes))
    }
}

impl fmt::Debug for GrantAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GrantAddress({})", self.id)
    }
}

impl FromStr for GrantAddress {
    type Err = GrantError;

    /// Parses and verifies an address.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.trim().strip_prefix(ADDRESS_PREFIX).ok_or_else(|| {
            GrantError::BadAddress(format!("does not start with {ADDRESS_PREFIX}"))
        })?;
        let bytes = hex::decode(hex_part).map_err(|e| GrantError::BadAddress(e.to_string()))?;
        if bytes.len() != ADDRESS_LEN {
            return Err(GrantError::BadAddress(format!(
                "{} bytes, expected {ADDRESS_LEN}",
                bytes.len()
            )));
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes[..32]);
        let id = PublicId::from_bytes(id).map_err(|e| GrantError::BadAddress(e.to_string()))?;
        let mut x25519 = [0u8; 32];
        x25519.copy_from_slice(&bytes[32..64]);
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&bytes[64..]);
        let address = Self {
            id,
            x25519,
            signature,
        };
        address.verify()?;
        Ok(address)
    }
}

fn x25519_keypair(
    identity: &Identity,
) -> Result<(<Kem as hpke::Kem>::PrivateKey, [u8; 32]), GrantError> {
    let mut ikm = identity
        .derive_secret(X25519_CONTEXT)
        .map_err(|e| GrantError::NoX25519Key(e.to_string()))?;
    let (secret, public) = Kem::derive_keypair(&ikm);
    zeroize::Zeroize::zeroize(&mut ikm);
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&public.to_bytes());
    Ok((secret, bytes))
}

fn info(document: &DocumentId, grantee: &PublicId) -> Vec<u8> {
    let mut info = GRANT_DOMAIN.to_vec();
    info.extend_from_slice(document.as_bytes());
    info.extend_from_slice(grantee.as_bytes());
    info
}

/// A data key sealed to one reader for one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The X25519 key it is sealed to (from the grantee's verified grant address), kept so
    /// the owner can seal a new data key to the same reader ([`WrappedKey::rewrap`]).
    pub recipient: [u8; 32],
    /// HPKE encapsulated key (the sender's ephemeral X25519 public key).
    pub enc: [u8; 32],
    /// The sealed data key and its tag ([`SEALED_LEN`] bytes).
    pub sealed: Vec<u8>,
}

impl WrappedKey {
    /// Seals `key` of `document` to `to` (whose address is verified first).
    pub fn wrap(
        key: &DataKey,
        document: &DocumentId,
        to: &GrantAddress,
    ) -> Result<Self, GrantError> {
        to.verify()?;
        Self::seal(key, document, &to.id, to.x25519)
    }

    /// Seals `key` of `document` to the same reader as this wrapped key (its grantee and
    /// recipient key): how a new version carries a grant over. The recipient key is the one
    /// the owner itself committed on chain when it granted, from a verified address.
    pub fn rewrap(
        &self,
        key: &DataKey,
        document: &DocumentId,
        grantee: &PublicId,
    ) -> Result<Self, GrantError> {
        Self::seal(key, document, grantee, self.recipient)
    }

    fn seal(
        key: &DataKey,
        document: &DocumentId,
        grantee: &PublicId,
        recipient: [u8; 32],
    ) -> Result<Self, GrantError> {
        let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&recipient)
            .map_err(|e| GrantError::Wrap(e.to_string()))?;
        let (enc, sealed) = hpke::single_shot_seal::<Aead, Kdf, Kem>(
            &OpModeS::Base,
            &pk,
            &info(document, grantee),
            key.as_bytes(),
            &[],
        )
        .map_err(|e| GrantError::Wrap(e.to_string()))?;
        let mut enc_bytes = [0u8; 32];
        enc_bytes.copy_from_slice(&enc.to_bytes());
        Ok(Self {
            recipient,
            enc: enc_bytes,
            sealed,
        })
    }

    /// Opens the data key of `document` with `me`'s X25519 key.
    pub fn unwrap(&self, document: &DocumentId, me: &Identity) -> Result<DataKey, GrantError> {
        if self.sealed.len() != SEALED_LEN {
            return Err(GrantError::Unwrap);
        }
        let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&self.enc)
            .map_err(|_| GrantError::Unwrap)?;
        let (secret, _) = x25519_keypair(me)?;
        let mut plain = hpke::single_shot_open::<Aead, Kdf, Kem>(
            &OpModeR::Base,
            &secret,
            &enc,
            &info(document, &me.public()),
            &self.sealed,
            &[],
        )
        .map_err(|_| GrantError::Unwrap)?;
        let mut key = [0u8; 32];
        key.copy_from_slice(&plain);
        zeroize::Zeroize::zeroize(&mut plain);
        Ok(DataKey::from_bytes(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    #[test]
    fn a_wrapped_key_opens_only_for_its_reader_and_document() {
        let citizen = Identity::generate(Role::Citizen);
        let other = Identity::generate(Role::Citizen);
        let doc = DocumentId::of(b"certificate");
        let key = DataKey::generate();
        let address: GrantAddress = GrantAddress::of(&citizen)
            .unwrap()
            .to_string()
            .parse()
            .unwrap();
        assert_eq!(address, GrantAddress::of(&citizen).unwrap());
        let wrapped = WrappedKey::wrap(&key, &doc, &address).unwrap();
        assert_eq!(wrapped.sealed.len(), SEALED_LEN);
        assert_eq!(
            wrapped.unwrap(&doc, &citizen).unwrap().as_bytes(),
            key.as_bytes()
        );
        assert_eq!(
            wrapped.unwrap(&doc, &other).unwrap_err(),
            GrantError::Unwrap
        );
        let elsewhere = DocumentId::of(b"another document");
        assert_eq!(
            wrapped.unwrap(&elsewhere, &citizen).unwrap_err(),
            GrantError::Unwrap
        );
        for i in 0..32 {
            let mut bad = wrapped.clone();
            bad.enc[i] ^= 1;
            assert!(bad.unwrap(&doc, &citizen).is_err());
        }
        for i in 0..SEALED_LEN {
            let mut bad = wrapped.clone();
            bad.sealed[i] ^= 0x80;
            assert_eq!(bad.unwrap(&doc, &citizen).unwrap_err(), GrantError::Unwrap);
        }
        let mut short = wrapped.clone();
        short.sealed.pop();
        assert_eq!(
            short.unwrap(&doc, &citizen).unwrap_err(),
            GrantError::Unwrap
        );
    }

    #[test]
    fn a_rewrapped_key_opens_for_the_same_reader_and_the_new_document_only() {
        let citizen = Identity::generate(Role::Citizen);
        let (old, new) = (DocumentId::of(b"v1"), DocumentId::of(b"v2"));
        let (old_key, new_key) = (DataKey::generate(), DataKey::generate());
        let wrapped =
            WrappedKey::wrap(&old_key, &old, &GrantAddress::of(&citizen).unwrap()).unwrap();
        assert_eq!(
            wrapped.recipient,
            GrantAddress::of(&citizen).unwrap().x25519
        );
        let carried = wrapped.rewrap(&new_key, &new, &citizen.public()).unwrap();
        assert_eq!(carried.recipient, wrapped.recipient);
        assert_eq!(
            carried.unwrap(&new, &citizen).unwrap().as_bytes(),
            new_key.as_bytes()
        );
        assert!(carried.unwrap(&old, &citizen).is_err());
        let other = Identity::generate(Role::Citizen);
        assert!(carried.unwrap(&new, &other).is_err());
        // Named for another grantee, it opens for nobody.
        let misnamed = wrapped.rewrap(&new_key, &new, &other.public()).unwrap();
        assert!(misnamed.unwrap(&new, &citizen).is_err());
        assert!(misnamed.unwrap(&new, &other).is_err());
    }

    #[test]
    fn an_address_whose_x25519_key_is_swapped_is_refused() {
        let citizen = Identity::generate(Role::Citizen);
        let mallory = Identity::generate(Role::Citizen);
        let mut forged = GrantAddress::of(&citizen).unwrap();
        forged.x25519 = GrantAddress::of(&mallory).unwrap().x25519;
        assert_eq!(
            forged.verify().unwrap_err(),
            GrantError::AddressNotSigned(citizen.public())
        );
        assert!(forged.to_string().parse::<GrantAddress>().is_err());
        let key = DataKey::generate();
        assert!(WrappedKey::wrap(&key, &DocumentId::of(b"x"), &forged).is_err());
        for bad in ["", "dga1", "dga1zz", "dgn1abcd"] {
            assert!(bad.parse::<GrantAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_x25519_key_is_stable_for_an_identity() {
        let seed = [7u8; 32];
        let a = Identity::from_seed(seed, Role::Citizen);
        let b = Identity::from_seed(seed, Role::Citizen);
        assert_eq!(
            GrantAddress::of(&a).unwrap().x25519,
            GrantAddress::of(&b).unwrap().x25519
        );
    }
}
