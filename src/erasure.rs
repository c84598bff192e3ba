//! Reed-Solomon coding of one stripe: k data shards plus m parity shards of equal length
//! (GF(2^8), `reed-solomon-erasure` with SIMD).
//!
//! Not for: choosing shard sizes or verifying shard ids (that is `codec`); this module only
//! computes parity and rebuilds missing data shards.

use reed_solomon_erasure::galois_8::ReedSolomon;

/// Largest k + m that GF(2^8) Reed-Solomon supports.
pub const MAX_TOTAL_SHARDS: usize = 256;

/// Bytes of each shard coded at a time, so that k + m column slices stay in L2 cache.
/// Coding whole 1 MiB shards at once streams through memory and runs at a fifth the speed.
const COLUMN_CHUNK: usize = 32 << 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErasureError {
    #[error("k (data shards) must be at least 1")]
    NoDataShards,
    #[error("k + m must be at most {MAX_TOTAL_SHARDS}, got {k} + {m} = {}", k + m)]
    TooManyShards { k: usize, m: usize },
    #[error("only {present} of the {k} shards needed are present")]
    TooFewShards { present: usize, k: usize },
    #[error("erasure coding failed: {0}")]
    Coding(String),
}

/// The erasure code for one (k, m); cheap to share between threads.
pub struct Erasure {
    k: usize,
    m: usize,
    rs: Option<ReedSolomon>,
}

impl Erasure {
    pub fn new(k: usize, m: usize) -> Result<Self, ErasureError> {
        if k == 0 {
            return Err(ErasureError::NoDataShards);
        }
        if k + m > MAX_TOTAL_SHARDS {
            return Err(ErasureError::TooManyShards { k, m });
        }
        // With m = 0 there is no parity to compute; the library refuses that case.
        let rs = if m == 0 {
            None
        } else {
            Some(ReedSolomon::new(k, m).map_err(|e| ErasureError::Coding(format!("{e:?}")))?)
        };
        Ok(Self { k, m, rs })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn m(&self) -> usize {
        self.m
    }

    /// Computes the m parity shards for `data` (k shards of one length).
    pub fn encode(&self, data: &[&[u8]]) -> Result<Vec<Vec<u8>>, ErasureError> {
        let len = data.first().map_or(0, |d| d.len());
        let mut parity = vec![vec![0u8; len]; self.m];
        if let Some(rs) = &self.rs {
            // Code column slices that stay in cache instead of whole shards: the bytes at one
            // offset of every shard form one independent codeword.
            for start in (0..len).step_by(COLUMN_CHUNK) {
                let end = (start + COLUMN_CHUNK).min(len);
                let d: Vec<&[u8]> = data.iter().map(|s| &s[start..end]).collect();
                let mut p: Vec<&mut [u8]> = parity.iter_mut().map(|s| &mut s[start..end]).collect();
                rs.encode_sep(&d, &mut p)
                    .map_err(|e| ErasureError::Coding(format!("{e:?}")))?;
            }
        }
        Ok(parity)
    }

    /// Fills in every missing data shard from any k present shards. Parity shards that are
    /// missing stay missing. `shards` holds k + m entries of one length.
    pub fn reconstruct_data(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError> {
        let present: Vec<bool> = shards.iter().map(Option::is_some).collect();
        let count = present.iter().filter(|p| **p).count();
        if present[..self.k].iter().all(|p| *p) {
            return Ok(());
        }
        if count < self.k {
            return Err(ErasureError::TooFewShards {
                present: count,
                k: self.k,
            });
        }
        let rs = self.rs.as_ref().ok_or(ErasureError::TooFewShards {
            present: count,
            k: self.k,
        })?;
        let len = shards.iter().flatten().map(Vec::len).next().unwrap_or(0);
        if shards.iter().flatten().any(|s| s.len() != len) {
            return Err(ErasureError::Coding("shards differ in length".into()));
        }
        let mut bufs: Vec<Vec<u8>> = shards
            .iter_mut()
            .map(|s| s.take().unwrap_or_else(|| vec![0u8; len]))
            .collect();
        for start in (0..len).step_by(COLUMN_CHUNK) {
            let end = (start + COLUMN_CHUNK).min(len);
            let mut cols: Vec<(&mut [u8], bool)> = bufs
                .iter_mut()
                .zip(&present)
                .map(|(b, p)| (&mut b[start..end], *p))
                .collect();
            rs.reconstruct_data(&mut cols)
                .map_err(|e| ErasureError::Coding(format!("{e:?}")))?;
        }
        for (i, (slot, buf)) in shards.iter_mut().zip(bufs).enumerate() {
            // Data shards are all rebuilt now; parity that was missing stays missing.
            if i < self.k || present[i] {
                *slot = Some(buf);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_any_m_missing() {
        let e = Erasure::new(4, 2).unwrap();
        let data: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i * 7 + 1; 100]).collect();
        let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
        let parity = e.encode(&refs).unwrap();
        for a in 0..6 {
            for b in a + 1..6 {
                let mut shards: Vec<Option<Vec<u8>>> = data
                    .iter()
                    .chain(parity.iter())
                    .cloned()
                    .map(Some)
                    .collect();
                shards[a] = None;
                shards[b] = None;
                e.reconstruct_data(&mut shards).unwrap();
                for i in 0..4 {
                    assert_eq!(shards[i].as_ref().unwrap(), &data[i]);
                }
            }
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        assert_eq!(Erasure::new(0, 2).err(), Some(ErasureError::NoDataShards));
        assert!(matches!(
            Erasure::new(200, 57),
            Err(ErasureError::TooManyShards { .. })
        ));
        assert!(Erasure::new(1, 0).is_ok());
        assert!(Erasure::new(128, 128).is_ok());
    }
}
