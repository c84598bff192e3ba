//! Read delegations: a citizen lets one gateway fetch one document's ciphertext for it,
//! for a few minutes, without handing the gateway any secret.
//!
//! The citizen's browser signs a [`Delegation`] (Ed25519, the citizen's own key) naming the
//! chain, the gateway's key (the TLS identity it dials peers with), the document and an
//! expiry. Peers serve that document's manifest and shards to the gateway under it only
//! while the citizen holds a live grant (`access`), and record the read as the citizen's via
//! the gateway (`audit`). A [`ListingRequest`] is the same without a document: it lets the
//! gateway list the citizen's grants.
//!
//! Signed bytes (fixed layout, see `docs/formats.md`): [`DELEGATION_DOMAIN`] ‖ chain key
//! (32) ‖ gateway (32) ‖ document id (32) ‖ citizen (32) ‖ `expires_ms` (u64 big-endian);
//! a listing request has [`LISTING_DOMAIN`] and no document. A delegation counts only
//! before its expiry and when it expires at most [`MAX_DELEGATION_MS`] from now, so a
//! leaked one is useless within ten minutes.
//!
//! Encodings: postcard on the wire between gateway and peers (`proto`), and the JSON form
//! of the portal's HTTP API ([`DelegationJson`], [`ListingJson`]).
//!
//! Not for: deciding whether the citizen may read (the chain's grants, checked by
//! `access`), or checking that the gateway is the one presenting it (the peer compares
//! `gateway` with the connection's TLS identity).

use serde::{Deserialize, Serialize};

use crate::id::DocumentId;
use crate::identity::{Identity, PUBLIC_ID_LEN, PublicId, SIGNATURE_LEN};

/// Signature domain of a read delegation.
pub const DELEGATION_DOMAIN: &[u8] = b"dangan-read-delegation-v1\0";
/// Signature domain of a listing request.
pub const LISTING_DOMAIN: &[u8] = b"dangan-list-delegation-v1\0";
/// Longest a delegation may still live when it is checked: ten minutes.
pub const MAX_DELEGATION_MS: u64 = 10 * 60 * 1000;

/// Why a delegation or listing request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DelegationError {
    #[error("the delegation expired at {expires_ms} (now {now_ms}); sign a new one")]
    Expired { expires_ms: u64, now_ms: u64 },
    #[error(
        "the delegation lives until {expires_ms}, more than {MAX_DELEGATION_MS} ms from now ({now_ms})"
    )]
    TooLong { expires_ms: u64, now_ms: u64 },
    #[error(
        "the delegation's signature does not verify for {0} (altered, or signed for another chain, gateway or document)"
    )]
    BadSignature(PublicId),
    #[error("malformed delegation: {0}")]
    Malformed(String),
}

/// A citizen's permission for `gateway` to fetch `document`'s ciphertext until `expires_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    pub citizen: PublicId,
    pub gateway: PublicId,
    pub document: DocumentId,
    /// Milliseconds since the Unix epoch after which it no longer counts.
    pub expires_ms: u64,
    #[serde(with = "signature")]
    pub signature: [u8; SIGNATURE_LEN],
}

/// A citizen's permission for `gateway` to list the documents granted to it until
/// `expires_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingRequest {
    pub citizen: PublicId,
    pub gateway: PublicId,
    pub expires_ms: u64,
    #[serde(with = "signature")]
    pub signature: [u8; SIGNATURE_LEN],
}

fn message(
    domain: &[u8],
    chain: &[u8; 32],
    gateway: &PublicId,
    document: Option<&DocumentId>,
    citizen: &PublicId,
    expires_ms: u64,
) -> Vec<u8> {
    let mut msg = Vec::with_capacity(domain.len() + 32 * 4 + 8);
    msg.extend_from_slice(domain);
    msg.extend_from_slice(chain);
    msg.extend_from_slice(gateway.as_bytes());
    if let Some(document) = document {
        msg.extend_from_slice(document.as_bytes());
    }
    msg.extend_from_slice(citizen.as_bytes());
    msg.extend_from_slice(&expires_ms.to_be_bytes());
    msg
}

/// Expiry checks shared by both kinds.
fn check_time(expires_ms: u64, now_ms: u64) -> Result<(), DelegationError> {
    if expires_ms <= now_ms {
        return Err(DelegationError::Expired { expires_ms, now_ms });
    }
    if expires_ms - now_ms > MAX_DELEGATION_MS {
        return Err(DelegationError::TooLong { expires_ms, now_ms });
    }
    Ok(())
}

impl Delegation {
    /// `citizen` lets `gateway` fetch `document` of chain `chain` until `expires_ms` (what
    /// the browser does; here for tests and tools).
    pub fn sign(
        citizen: &Identity,
        chain: &[u8; 32],
        gateway: PublicId,
        document: DocumentId,
        expires_ms: u64,
    ) -> Self {
        let mut delegation = Self {
            citizen: citizen.public(),
            gateway,
            document,
            expires_ms,
            signature: [0; SIGNATURE_LEN],
        };
        delegation.signature = citizen.sign(&delegation.signed_bytes(chain));
        delegation
    }

    /// The bytes the citizen signs for chain `chain`.
    pub fn signed_bytes(&self, chain: &[u8; 32]) -> Vec<u8> {
        message(
            DELEGATION_DOMAIN,
            chain,
            &self.gateway,
            Some(&self.document),
            &self.citizen,
            self.expires_ms,
        )
    }

    /// Checks the expiry against `now_ms` and the citizen's signature (strict Ed25519) over
    /// the bytes for chain `chain`. Who presents it and whether the citizen may read are the
    /// caller's to check.
    pub fn verify(&self, chain: &[u8; 32], now_ms: u64) -> Result<(), DelegationError> {
        verify_signed(
            &self.citizen,
            &self.signature,
            self.expires_ms,
            &self.signed_bytes(chain),
            now_ms,
        )
    }
}

/// What both signed forms check: the expiry against `now_ms`, then `citizen`'s signature
/// (strict Ed25519) over `bytes`.
fn verify_signed(
    citizen: &PublicId,
    signature: &[u8; SIGNATURE_LEN],
    expires_ms: u64,
    bytes: &[u8],
    now_ms: u64,
) -> Result<(), DelegationError> {
    check_time(expires_ms, now_ms)?;
    citizen
        .verify(bytes, signature)
        .map_err(|_| DelegationError::BadSignature(*citizen))
}

impl ListingRequest {
    /// `citizen` lets `gateway` list its granted documents on chain `chain` until
    /// `expires_ms`.
    pub fn sign(citizen: &Identity, chain: &[u8; 32], gateway: PublicId, expires_ms: u64) -> Self {
        let mut request = Self {
            citizen: citizen.public(),
            gateway,
            expires_ms,
            signature: [0; SIGNATURE_LEN],
        };
        request.signature = citizen.sign(&request.signed_bytes(chain));
        request
    }

    pub fn signed_bytes(&self, chain: &[u8; 32]) -> Vec<u8> {
        message(
            LISTING_DOMAIN,
            chain,
            &self.gateway,
            None,
            &self.citizen,
            self.expires_ms,
        )
    }

    /// As [`Delegation::verify`].
    pub fn verify(&self, chain: &[u8; 32], now_ms: u64) -> Result<(), DelegationError> {
        verify_signed(
            &self.citizen,
            &self.signature,
            self.expires_ms,
            &self.signed_bytes(chain),
            now_ms,
        )
    }
}

/// The JSON form of a [`Delegation`] (the portal's HTTP API): `citizen` and `gateway` in
/// `PublicId`'s text form (`dgn1` + 64 hex digits; 64 hex digits alone are accepted too),
/// `document` as 64 hex digits, `signature` as 128 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationJson {
    pub citizen: String,
    pub gateway: String,
    pub document: String,
    pub expires_ms: u64,
    pub signature: String,
}

/// The JSON form of a [`ListingRequest`]: as [`DelegationJson`] without `document`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListingJson {
    pub citizen: String,
    pub gateway: String,
    pub expires_ms: u64,
    pub signature: String,
}

/// A public id in its text form, or as 64 bare hex digits.
pub fn parse_public_id(field: &str, text: &str) -> Result<PublicId, DelegationError> {
    let t = text.trim();
    let parsed = if t.starts_with(crate::identity::PUBLIC_ID_PREFIX) {
        t.parse::<PublicId>().map_err(|e| e.to_string())
    } else {
        let mut bytes = [0u8; PUBLIC_ID_LEN];
        hex::decode_to_slice(t, &mut bytes)
            .map_err(|e| e.to_string())
            .and_then(|()| PublicId::from_bytes(bytes).map_err(|e| e.to_string()))
    };
    parsed.map_err(|e| DelegationError::Malformed(format!("{field}: {e}")))
}

fn parse_signature(text: &str) -> Result<[u8; SIGNATURE_LEN], DelegationError> {
    let mut sig = [0u8; SIGNATURE_LEN];
    hex::decode_to_slice(text.trim(), &mut sig).map_err(|e| {
        DelegationError::Malformed(format!("signature: {e} (expected 128 hex digits)"))
    })?;
    Ok(sig)
}

impl TryFrom<DelegationJson> for Delegation {
    type Error = DelegationError;

    fn try_from(j: DelegationJson) -> Result<Self, Self::Error> {
        Ok(Self {
            citizen: parse_public_id("citizen", &j.citizen)?,
            gateway: parse_public_id("gateway", &j.gateway)?,
            document: j
                .document
                .parse()
                .map_err(|e| DelegationError::Malformed(format!("document: {e}")))?,
            expires_ms: j.expires_ms,
            signature: parse_signature(&j.signature)?,
        })
    }
}

impl From<&Delegation> for DelegationJson {
    fn from(d: &Delegation) -> Self {
        Self {
            citizen: d.citizen.to_string(),
            gateway: d.gateway.to_string(),
            document: d.document.to_string(),
            expires_ms: d.expires_ms,
            signature: hex::encode(d.signature),
        }
    }
}

impl TryFrom<ListingJson> for ListingRequest {
    type Error = DelegationError;

    fn try_from(j: ListingJson) -> Result<Self, Self::Error> {
        Ok(Self {
            citizen: parse_public_id("citizen", &j.citizen)?,
            gateway: parse_public_id("gateway", &j.gateway)?,
            expires_ms: j.expires_ms,
            signature: parse_signature(&j.signature)?,
        })
    }
}

impl From<&ListingRequest> for ListingJson {
    fn from(l: &ListingRequest) -> Self {
        Self {
            citizen: l.citizen.to_string(),
            gateway: l.gateway.to_string(),
            expires_ms: l.expires_ms,
            signature: hex::encode(l.signature),
        }
    }
}

/// A 64-byte signature as two 32-byte halves (serde has no 64-byte arrays).
mod signature {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::identity::SIGNATURE_LEN;

    pub fn serialize<S: Serializer>(sig: &[u8; SIGNATURE_LEN], s: S) -> Result<S::Ok, S::Error> {
        let mut r = [0u8; 32];
        let mut t = [0u8; 32];
        r.copy_from_slice(&sig[..32]);
        t.copy_from_slice(&sig[32..]);
        (r, t).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; SIGNATURE_LEN], D::Error> {
        let (r, t) = <([u8; 32], [u8; 32])>::deserialize(d)?;
        let mut sig = [0u8; SIGNATURE_LEN];
        sig[..32].copy_from_slice(&r);
        sig[32..].copy_from_slice(&t);
        Ok(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    const CHAIN: [u8; 32] = [0x11; 32];
    const NOW: u64 = 1_800_000_000_000;

    fn citizen() -> Identity {
        Identity::from_seed([7u8; 32], Role::Citizen)
    }

    fn gateway() -> PublicId {
        Identity::from_seed([9u8; 32], Role::Department).public()
    }

    /// The vector in `docs/formats.md` ("Read delegation"), which the browser's code checks
    /// against too: Ed25519 is deterministic, so the signature is fixed.
    #[test]
    fn the_documented_test_vector_holds() {
        let d = Delegation::sign(
            &citizen(),
            &CHAIN,
            gateway(),
            DocumentId([0x22; 32]),
            NOW + 300_000,
        );
        let signed = hex::encode(d.signed_bytes(&CHAIN));
        assert_eq!(signed, VECTOR_SIGNED);
        assert_eq!(hex::encode(d.signature), VECTOR_SIGNATURE);
        assert_eq!(hex::encode(d.citizen.as_bytes()), VECTOR_CITIZEN);
        assert_eq!(hex::encode(d.gateway.as_bytes()), VECTOR_GATEWAY);
        d.verify(&CHAIN, NOW).unwrap();
        let l = ListingRequest::sign(&citizen(), &CHAIN, gateway(), NOW + 300_000);
        assert_eq!(hex::encode(l.signed_bytes(&CHAIN)), VECTOR_LIST_SIGNED);
        assert_eq!(hex::encode(l.signature), VECTOR_LIST_SIGNATURE);
        l.verify(&CHAIN, NOW).unwrap();
    }

    const VECTOR_CITIZEN: &str = "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c";
    const VECTOR_GATEWAY: &str = "fd1724385aa0c75b64fb78cd602fa1d991fdebf76b13c58ed702eac835e9f618";
    const VECTOR_SIGNED: &str = "64616e67616e2d726561642d64656c65676174696f6e2d7631001111111111111111111111111111111111111111111111111111111111111111fd1724385aa0c75b64fb78cd602fa1d991fdebf76b13c58ed702eac835e9f6182222222222222222222222222222222222222222222222222222222222222222ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c000001a31860e3e0";
    const VECTOR_SIGNATURE: &str = "1c81ed53e98488514c19813dda567b8587d0834a004c0c902351e3caba2bb15a87bb979ed85b86318dbe75b2acbadede52087496d027c17827ebf5946bca5e04";
    const VECTOR_LIST_SIGNED: &str = "64616e67616e2d6c6973742d64656c65676174696f6e2d7631001111111111111111111111111111111111111111111111111111111111111111fd1724385aa0c75b64fb78cd602fa1d991fdebf76b13c58ed702eac835e9f618ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c000001a31860e3e0";
    const VECTOR_LIST_SIGNATURE: &str = "a2dea79f156c68462107fddc21ffee85c6b468a8e9076752c66e609af46fe905b659bab8b100ec5dcc897c85d1fefae4f6dabd7241281de223fe118f47926c07";

    #[test]
    fn expired_too_long_altered_or_misdirected_delegations_are_refused() {
        let doc = DocumentId([0x22; 32]);
        let d = Delegation::sign(&citizen(), &CHAIN, gateway(), doc, NOW + 60_000);
        d.verify(&CHAIN, NOW).unwrap();
        assert!(matches!(
            d.verify(&CHAIN, NOW + 60_000),
            Err(DelegationError::Expired { .. })
        ));
        let long = Delegation::sign(
            &citizen(),
            &CHAIN,
            gateway(),
            doc,
            NOW + MAX_DELEGATION_MS + 1,
        );
        assert!(matches!(
            long.verify(&CHAIN, NOW),
            Err(DelegationError::TooLong { .. })
        ));
        // Exactly the maximum is accepted.
        Delegation::sign(&citizen(), &CHAIN, gateway(), doc, NOW + MAX_DELEGATION_MS)
            .verify(&CHAIN, NOW)
            .unwrap();
        assert!(matches!(
            d.verify(&[0x12; 32], NOW),
            Err(DelegationError::BadSignature(_))
        ));
        for i in 0..SIGNATURE_LEN {
            let mut bad = d;
            bad.signature[i] ^= 1;
            assert!(bad.verify(&CHAIN, NOW).is_err(), "byte {i}");
        }
        let mut other_doc = d;
        other_doc.document = DocumentId([0x23; 32]);
        assert!(other_doc.verify(&CHAIN, NOW).is_err());
        let mut other_gateway = d;
        other_gateway.gateway = citizen().public();
        assert!(other_gateway.verify(&CHAIN, NOW).is_err());
        let mut later = d;
        later.expires_ms += 1;
        assert!(later.verify(&CHAIN, NOW).is_err());
        // A listing request's signature is no delegation's, and the other way round.
        let l = ListingRequest::sign(&citizen(), &CHAIN, gateway(), NOW + 60_000);
        let mut forged = d;
        forged.signature = l.signature;
        assert!(forged.verify(&CHAIN, NOW).is_err());
    }

    #[test]
    fn the_json_and_wire_forms_round_trip_and_garbage_is_refused() {
        let d = Delegation::sign(
            &citizen(),
            &CHAIN,
            gateway(),
            DocumentId([0x22; 32]),
            NOW + 1,
        );
        let json = serde_json::to_string(&DelegationJson::from(&d)).unwrap();
        let back: DelegationJson = serde_json::from_str(&json).unwrap();
        assert_eq!(Delegation::try_from(back.clone()).unwrap(), d);
        assert!(back.citizen.starts_with("dgn1"));
        // Bare hex ids are accepted too.
        let mut bare = back.clone();
        bare.citizen = hex::encode(d.citizen.as_bytes());
        assert_eq!(Delegation::try_from(bare).unwrap(), d);
        let wire = postcard::to_allocvec(&d).unwrap();
        assert_eq!(postcard::from_bytes::<Delegation>(&wire).unwrap(), d);
        for bad in [
            DelegationJson {
                signature: "zz".into(),
                ..back.clone()
            },
            DelegationJson {
                document: "abc".into(),
                ..back.clone()
            },
            DelegationJson {
                gateway: "dgn1xyz".into(),
                ..back.clone()
            },
            DelegationJson {
                citizen: "00".repeat(31) + "zz",
                ..back.clone()
            },
        ] {
            assert!(matches!(
                Delegation::try_from(bad),
                Err(DelegationError::Malformed(_))
            ));
        }
        let l = ListingRequest::sign(&citizen(), &CHAIN, gateway(), NOW + 1);
        let lj: ListingJson =
            serde_json::from_str(&serde_json::to_string(&ListingJson::from(&l)).unwrap()).unwrap();
        assert_eq!(ListingRequest::try_from(lj).unwrap(), l);
        assert!(
            serde_json::from_str::<ListingJson>(&json).is_err(),
            "a delegation is not a listing request"
        );
    }
}
