//! Content addresses: every shard and every document is named by the BLAKE3 hash of its bytes.
//!
//! The one text form of an id, used in the CLI, in logs and on chain, is 64 lowercase hex
//! digits of the 32-byte BLAKE3 hash. Parsing accepts upper case too and rejects anything
//! else with a clear error.
//!
//! ```
//! use dangan::id::DocumentId;
//!
//! let id = DocumentId::of(b"canonical manifest bytes");
//! let text = id.to_string();
//! assert_eq!(text.len(), 64);
//! assert_eq!(text.parse::<DocumentId>().unwrap(), id);
//! assert!("not an id".parse::<DocumentId>().is_err());
//! ```
//!
//! Not for: keyed hashing or Merkle trees (those live with the chain).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Length in bytes of every content address.
pub const ID_LEN: usize = 32;

/// Why a text id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdParseError {
    #[error("an id is {expected} hex digits, got {got} characters")]
    Length { expected: usize, got: usize },
    #[error("an id is hex digits only: {0}")]
    NotHex(String),
}

macro_rules! content_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; ID_LEN]);

        impl $name {
            /// The id of `bytes`: their BLAKE3 hash.
            pub fn of(bytes: &[u8]) -> Self {
                Self(*blake3::hash(bytes).as_bytes())
            }

            /// Whether `bytes` are the content this id names.
            pub fn verifies(&self, bytes: &[u8]) -> bool {
                // blake3::Hash compares in constant time.
                blake3::Hash::from_bytes(self.0) == blake3::hash(bytes)
            }

            pub fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }

            /// The first 8 hex digits, for humans skimming logs.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex_id(s).map(Self)
            }
        }
    };
}

content_id!(
    /// Address of one shard: BLAKE3 of the shard's bytes.
    ShardId
);
content_id!(
    /// Address of one document: BLAKE3 of its canonically encoded manifest.
    DocumentId
);

fn parse_hex_id(s: &str) -> Result<[u8; ID_LEN], IdParseError> {
    let s = s.trim();
    if s.len() != ID_LEN * 2 {
        return Err(IdParseError::Length {
            expected: ID_LEN * 2,
            got: s.chars().count(),
        });
    }
    let mut out = [0u8; ID_LEN];
    hex::decode_to_slice(s, &mut out).map_err(|_| IdParseError::NotHex(s.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        let id = ShardId::of(b"hello");
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(text.parse::<ShardId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<ShardId>().unwrap(), id);
    }

    #[test]
    fn bad_text_is_refused() {
        assert!(matches!(
            "abc".parse::<DocumentId>(),
            Err(IdParseError::Length { .. })
        ));
        let bad = "g".repeat(64);
        assert!(matches!(
            bad.parse::<DocumentId>(),
            Err(IdParseError::NotHex(_))
        ));
    }

    #[test]
    fn verifies_detects_a_flipped_bit() {
        let mut data = vec![7u8; 1000];
        let id = ShardId::of(&data);
        assert!(id.verifies(&data));
        data[500] ^= 1;
        assert!(!id.verifies(&data));
    }
}
