//! S3 multipart uploads in progress, in the gateway's redb: an upload id → its bucket, key,
//! the department it uploads for, where its data key is in the keyring, and its parts (part
//! number → the stored piece, its size and MD5).
//!
//! An upload in progress lives on the gateway it was created on (its state here, its data
//! key in that gateway's keyring); the finished object is on chain like every other. Each
//! part is a piece of the future document, sealed under the upload's data key and stored on
//! the peers unbound (`Client::store_piece`); complete puts them together without sealing
//! anything again (`Client::store_pieces`), then registers and names the document.
//!
//! Not for: the S3 protocol (`s3`), the pieces' format (`manifest`).

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{GatewayDb, GatewayError};
use crate::client::StoredPiece;
use crate::id::DocumentId;
use crate::identity::PublicId;

/// Upload id → [`UploadRecord`].
pub(super) const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("s3-uploads-0");
/// (upload id, part number) → [`PartRecord`].
pub(super) const PARTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("s3-parts-0");
/// Format of both records.
const UPLOAD_FORMAT: u8 = 1;

/// One multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub format: u8,
    pub bucket: String,
    pub key: String,
    /// The department the upload is for (the gateway's).
    pub owner: PublicId,
    /// The keyring entry holding the upload's data key until its document has an id
    /// ([`key_slot`]).
    pub key_slot: DocumentId,
    pub content_type: Option<String>,
    pub user: Vec<(String, String)>,
    pub created_ms: u64,
}

/// One uploaded part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    pub format: u8,
    /// MD5 of the part's bytes: its ETag.
    pub md5: [u8; 16],
    pub size: u64,
    pub modified_ms: u64,
    pub piece: StoredPiece,
}

/// Where the data key of upload `upload_id` is kept in the keyring: not a document id (no
/// manifest hashes to it), a name derived from the upload id.
pub fn key_slot(upload_id: &str) -> DocumentId {
    DocumentId::of(format!("dangan s3 upload key {upload_id}").as_bytes())
}

/// A new upload id: 32 random hex digits.
pub fn new_upload_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl GatewayDb {
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, GatewayError> {
        postcard::to_allocvec(value).map_err(|e| self.err(e))
    }

    /// Records a new upload under `id`.
    pub fn upload_create(&self, id: &str, record: &UploadRecord) -> Result<(), GatewayError> {
        let bytes = self.encode(record)?;
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = tx.open_table(UPLOADS).map_err(|e| self.err(e))?;
            t.insert(id, bytes.as_slice()).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The upload `id`, if it is in progress.
    pub fn upload(&self, id: &str) -> Result<Option<UploadRecord>, GatewayError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(UPLOADS).map_err(|e| self.err(e))?;
        match t.get(id).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every upload in progress, by id.
    pub fn uploads(&self) -> Result<Vec<(String, UploadRecord)>, GatewayError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(UPLOADS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push((k.value().to_string(), self.decode(v.value())?));
        }
        Ok(out)
    }

    /// Records part `number` of upload `id` (replacing an earlier upload of that number, as
    /// S3 does); `false` if the upload is no longer in progress (aborted or completed
    /// meanwhile: nothing recorded).
    pub fn part_put(&self, id: &str, number: u32, part: &PartRecord) -> Result<bool, GatewayError> {
        let bytes = self.encode(part)?;
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let uploads = tx.open_table(UPLOADS).map_err(|e| self.err(e))?;
            if uploads.get(id).map_err(|e| self.err(e))?.is_none() {
                return Ok(false);
            }
            let mut t = tx.open_table(PARTS).map_err(|e| self.err(e))?;
            t.insert((id, number), bytes.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// The parts of upload `id` in part-number order.
    pub fn parts(&self, id: &str) -> Result<Vec<(u32, PartRecord)>, GatewayError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(PARTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in t.range((id, 0)..=(id, u32::MAX)).map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push((k.value().1, self.decode(v.value())?));
        }
        Ok(out)
    }

    /// Forgets upload `id` and its parts; whether it was in progress.
    pub fn upload_remove(&self, id: &str) -> Result<bool, GatewayError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let found = {
            let mut uploads = tx.open_table(UPLOADS).map_err(|e| self.err(e))?;
            let found = uploads.remove(id).map_err(|e| self.err(e))?.is_some();
            let mut t = tx.open_table(PARTS).map_err(|e| self.err(e))?;
            t.retain_in((id, 0)..=(id, u32::MAX), |_, _| false)
                .map_err(|e| self.err(e))?;
            found
        };
        tx.commit().map_err(|e| self.err(e))?;
        Ok(found)
    }

    fn decode<T: for<'de> Deserialize<'de> + Format>(
        &self,
        bytes: &[u8],
    ) -> Result<T, GatewayError> {
        let value: T = postcard::from_bytes(bytes).map_err(|e| self.err(e))?;
        if value.format() != UPLOAD_FORMAT {
            return Err(self.err(format!("upload record format {} unknown", value.format())));
        }
        Ok(value)
    }
}

trait Format {
    fn format(&self) -> u8;
}

impl Format for UploadRecord {
    fn format(&self) -> u8 {
        self.format
    }
}

impl Format for PartRecord {
    fn format(&self) -> u8 {
        self.format
    }
}

impl UploadRecord {
    pub fn new(
        bucket: String,
        key: String,
        owner: PublicId,
        key_slot: DocumentId,
        content_type: Option<String>,
        user: Vec<(String, String)>,
    ) -> Self {
        Self {
            format: UPLOAD_FORMAT,
            bucket,
            key,
            owner,
            key_slot,
            content_type,
            user,
            created_ms: crate::now_ms(),
        }
    }
}

impl PartRecord {
    pub fn new(md5: [u8; 16], size: u64, piece: StoredPiece) -> Self {
        Self {
            format: UPLOAD_FORMAT,
            md5,
            size,
            modified_ms: crate::now_ms(),
            piece,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SealedPiece;
    use crate::identity::{Identity, Role};
    use crate::manifest::{CodingParams, Piece};

    #[test]
    fn uploads_and_their_parts_are_kept_and_forgotten_together() {
        let dir = tempfile::tempdir().unwrap();
        let db = GatewayDb::open(dir.path()).unwrap();
        let owner = Identity::generate(Role::Department).public();
        let (a, b) = (new_upload_id(), new_upload_id());
        assert_ne!(a, b);
        let record = |key: &str, id: &str| {
            UploadRecord::new(
                "records".into(),
                key.into(),
                owner,
                key_slot(id),
                None,
                vec![],
            )
        };
        let part = |n: u8| {
            PartRecord::new(
                [n; 16],
                u64::from(n),
                StoredPiece {
                    params: CodingParams::default(),
                    sealed: SealedPiece {
                        piece: Piece {
                            nonce_prefix: [n; 7],
                            size: u64::from(n),
                        },
                        stripes: vec![],
                    },
                    held: vec![],
                },
            )
        };
        // No part of an upload that is not in progress.
        assert!(!db.part_put(&a, 1, &part(1)).unwrap());
        db.upload_create(&a, &record("x", &a)).unwrap();
        db.upload_create(&b, &record("y", &b)).unwrap();
        assert_eq!(
            db.upload(&a).unwrap(),
            Some(record("x", &a)).map(|mut r| {
                r.created_ms = db.upload(&a).unwrap().unwrap().created_ms;
                r
            })
        );
        for n in [3, 1, 2] {
            assert!(db.part_put(&a, n.into(), &part(n)).unwrap());
        }
        assert!(db.part_put(&b, 1, &part(9)).unwrap());
        // A part uploaded again replaces the first.
        assert!(db.part_put(&a, 2, &part(7)).unwrap());
        let parts = db.parts(&a).unwrap();
        let numbers: Vec<u32> = parts.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2, 3]);
        assert_eq!(parts[1].1.md5, [7; 16]);
        assert_eq!(db.uploads().unwrap().len(), 2);
        assert!(db.upload_remove(&a).unwrap());
        assert!(!db.upload_remove(&a).unwrap());
        assert_eq!(db.upload(&a).unwrap(), None);
        assert!(db.parts(&a).unwrap().is_empty());
        assert_eq!(db.parts(&b).unwrap().len(), 1);
        assert_ne!(key_slot(&a), key_slot(&b));
    }
}
