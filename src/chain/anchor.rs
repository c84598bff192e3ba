//! Anchoring checkpoints outside the cluster: a checkpoint's digest handed to an external
//! anchor (a public chain, a transparency log, a notary) whose answer is kept beside the
//! checkpoint, so that a later reader can show the checkpoint existed when the anchor took it.
//!
//! [`Anchor`] is the whole interface; [`FileAnchor`] is the one this project ships: an
//! append-only text file, one line per digest, `<position> <digest hex> <link hex>`, where
//! `link` is BLAKE3 of the previous line's link (zeros for the first), the position and the
//! digest. Its answer is the position and the link, which [`FileAnchor::check`] verifies
//! against the file: rewriting or dropping an earlier line breaks every later link.
//!
//! Not for: deciding what is anchored or when (`chain::checkpoint`); a file on the
//! validator's own disk is evidence against mistakes, not against its owner (SECURITY.md).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::SignedCheckpoint;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    #[error("anchor file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("anchor file {path}, line {line}: {why}")]
    Corrupt {
        path: PathBuf,
        line: u64,
        why: String,
    },
    #[error("the anchor's answer does not decode: {0}")]
    Answer(String),
    #[error("the anchor holds no such entry: {0}")]
    Missing(String),
}

/// An anchor's answer about one digest: which anchor, and what it said (its own encoding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorAnswer {
    /// The anchor's name ([`Anchor::name`]).
    pub anchor: String,
    pub answer: Vec<u8>,
}

/// Somewhere outside the cluster that records a checkpoint digest and answers with
/// something that later shows it did. Called on the blocking pool.
pub trait Anchor: Send + Sync {
    fn name(&self) -> String;
    fn anchor(
        &self,
        digest: &[u8; 32],
        note: &SignedCheckpoint,
    ) -> Result<AnchorAnswer, AnchorError>;
}

/// An append-only file as an anchor (tests, and a file a department copies elsewhere).
#[derive(Debug, Clone)]
pub struct FileAnchor {
    path: PathBuf,
}

/// What a [`FileAnchor`] answers: the line's position and its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAnchorAnswer {
    pub position: u64,
    pub link: [u8; 32],
}

fn link(prev: &[u8; 32], position: u64, digest: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(prev);
    h.update(&position.to_be_bytes());
    h.update(digest);
    *h.finalize().as_bytes()
}

/// One line of a file anchor: (checkpoint digest, link to the line before).
pub type AnchorEntry = ([u8; 32], [u8; 32]);

impl FileAnchor {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn io(&self) -> impl Fn(std::io::Error) -> AnchorError + '_ {
        |source| AnchorError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Every entry of the file, each link checked: (digest, link) by position.
    pub fn entries(path: &Path) -> Result<Vec<AnchorEntry>, AnchorError> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(AnchorError::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut out: Vec<([u8; 32], [u8; 32])> = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let corrupt = |why: &str| AnchorError::Corrupt {
                path: path.to_owned(),
                line: n as u64 + 1,
                why: why.into(),
            };
            let line = line.map_err(|source| AnchorError::Io {
                path: path.to_owned(),
                source,
            })?;
            let parts: Vec<&str> = line.split(' ').collect();
            let hash = |s: &str| -> Result<[u8; 32], AnchorError> {
                hex::decode(s)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| corrupt("not a 32-byte hex hash"))
            };
            let [position, digest, found] = parts[..] else {
                return Err(corrupt("not three fields"));
            };
            if position != n.to_string() {
                return Err(corrupt("out of order"));
            }
            let (digest, found) = (hash(digest)?, hash(found)?);
            let prev = out.last().map_or([0; 32], |(_, l)| *l);
            if link(&prev, n as u64, &digest) != found {
                return Err(corrupt("the link does not follow from the lines before"));
            }
            out.push((digest, found));
        }
        Ok(out)
    }

    /// Checks `answer` (of an anchor named `anchor.name()`) for `digest` against the file.
    pub fn check(&self, digest: &[u8; 32], answer: &AnchorAnswer) -> Result<u64, AnchorError> {
        if answer.anchor != self.name() {
            return Err(AnchorError::Missing(format!(
                "the answer is of anchor {}",
                answer.anchor
            )));
        }
        let found: FileAnchorAnswer =
            postcard::from_bytes(&answer.answer).map_err(|e| AnchorError::Answer(e.to_string()))?;
        let entries = Self::entries(&self.path)?;
        match entries.get(found.position as usize) {
            Some((d, l)) if d == digest && *l == found.link => Ok(found.position),
            _ => Err(AnchorError::Missing(format!(
                "no line {} with that digest and link",
                found.position
            ))),
        }
    }
}

impl Anchor for FileAnchor {
    fn name(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn anchor(
        &self,
        digest: &[u8; 32],
        _note: &SignedCheckpoint,
    ) -> Result<AnchorAnswer, AnchorError> {
        use std::os::fd::AsRawFd;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(self.io())?;
        // One writer at a time, across processes: the last link is read under the lock.
        // SAFETY: flock on a descriptor this function owns; released when it closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(self.io()(std::io::Error::last_os_error()));
        }
        let entries = Self::entries(&self.path)?;
        let position = entries.len() as u64;
        let prev = entries.last().map_or([0; 32], |(_, l)| *l);
        let found = link(&prev, position, digest);
        writeln!(
            file,
            "{position} {} {}",
            hex::encode(digest),
            hex::encode(found)
        )
        .map_err(self.io())?;
        file.sync_data().map_err(self.io())?;
        let answer = FileAnchorAnswer {
            position,
            link: found,
        };
        Ok(AnchorAnswer {
            anchor: self.name(),
            answer: postcard::to_allocvec(&answer).expect("encoding into memory cannot fail"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::checkpoint::{Checkpoint, SignedCheckpoint};
    use crate::chain::tx::ChainKey;

    #[test]
    fn the_file_anchor_answers_positions_that_check_and_notices_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anchor.log");
        let anchor = FileAnchor::new(&path);
        let note = SignedCheckpoint::assemble(
            &Checkpoint {
                chain: ChainKey([1; 32]),
                height: 1,
                block_hash: [0; 32],
                state_root: [0; 32],
            },
            &[],
        );
        let answers: Vec<_> = (0..3u8)
            .map(|i| anchor.anchor(&[i; 32], &note).unwrap())
            .collect();
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(anchor.check(&[i as u8; 32], a).unwrap(), i as u64);
        }
        assert!(anchor.check(&[9; 32], &answers[1]).is_err());
        // Rewriting an earlier digest breaks the chain of links.
        let text = std::fs::read_to_string(&path).unwrap();
        let rewritten = text.replacen(&hex::encode([1u8; 32]), &hex::encode([7u8; 32]), 1);
        std::fs::write(&path, rewritten).unwrap();
        assert!(matches!(
            anchor.check(&[2; 32], &answers[2]),
            Err(AnchorError::Corrupt { line: 2, .. })
        ));
    }
}
