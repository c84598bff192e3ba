//! A department's local keyring: the data key of every document it stored, by document id.
//!
//! Until grants carry wrapped keys on chain, this is where `dangan put` keeps the key that
//! `dangan get` needs. One file per document, `<dir>/<document id>.key`, holding the key as
//! 64 hex digits, created with mode 0600 and never overwritten. `dangan put` saves the key
//! durably (file and directory fsync'd) *before* it submits the document's registration, so
//! every registered document's key is here whatever moment the put was killed at; a key
//! whose document never registered (the put died or was refused before the commit) stays
//! here, harmless: `dangan get` of that id answers that the document is not registered.
//!
//! Not for: sharing keys with anyone (that is what grants are for).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::crypto::DataKey;
use crate::id::DocumentId;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no key for document {id} in {dir} (was it stored from this keyring?)")]
    Missing { id: DocumentId, dir: PathBuf },
    #[error("{path} does not hold a 32-byte hex key")]
    Malformed { path: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Keyring {
    dir: PathBuf,
}

impl Keyring {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, KeyringError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| KeyringError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &DocumentId) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }

    /// Saves the key of document `id`, durably: the key is written to a temporary file and
    /// fsync'd, linked under its name (so a crash never leaves a partial key file, and a key
    /// already saved for `id` is kept), and the directory fsync'd, all before this returns.
    /// `dangan put` calls it before it submits the registration.
    pub fn save(&self, id: &DocumentId, key: &DataKey) -> Result<(), KeyringError> {
        let path = self.path(id);
        let tmp = self
            .dir
            .join(format!(".{id}.key.{}.tmp", std::process::id()));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| KeyringError::Io { path: p, source }
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let written = (|| {
            let mut file = opts.open(&tmp)?;
            file.write_all(hex::encode(key.as_bytes()).as_bytes())?;
            file.sync_all()
        })();
        let linked = written.and_then(|()| match std::fs::hard_link(&tmp, &path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        });
        let _ = std::fs::remove_file(&tmp);
        linked.map_err(io(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }

    /// Up to `limit` ids of the documents this keyring holds keys for, in id order, after
    /// `after` (a page of a department's documents). The directory is read whole: one name
    /// per key, so memory grows with the number of keys, not with their documents.
    pub fn ids(
        &self,
        after: Option<&DocumentId>,
        limit: usize,
    ) -> Result<Vec<DocumentId>, KeyringError> {
        let io = |source| KeyringError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let parsed = name
                .to_str()
                .and_then(|n| n.strip_suffix(".key"))
                .and_then(|n| n.parse::<DocumentId>().ok());
            if let Some(id) = parsed
                && after.is_none_or(|a| id > *a)
            {
                ids.push(id);
            }
        }
        ids.sort();
        ids.truncate(limit);
        Ok(ids)
    }

    pub fn load(&self, id: &DocumentId) -> Result<DataKey, KeyringError> {
        let path = self.path(id);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KeyringError::Missing {
                    id: *id,
                    dir: self.dir.clone(),
                });
            }
            Err(source) => return Err(KeyringError::Io { path, source }),
        };
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key)
            .map_err(|_| KeyringError::Malformed { path })?;
        Ok(DataKey::from_bytes(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_missing_is_clear() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path().join("ring")).unwrap();
        let id = DocumentId::of(b"doc");
        let key = DataKey::generate();
        ring.save(&id, &key).unwrap();
        assert_eq!(ring.load(&id).unwrap(), key);
        ring.save(&id, &DataKey::generate()).unwrap();
        assert_eq!(
            ring.load(&id).unwrap(),
            key,
            "an existing key is never replaced"
        );
        let other = DocumentId::of(b"other");
        assert!(matches!(
            ring.load(&other),
            Err(KeyringError::Missing { .. })
        ));
    }
}
