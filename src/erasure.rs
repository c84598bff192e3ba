//! Reed-Solomon coding of one stripe: k data shards plus m parity shards of equal length
//! (GF(2^8), `reed-solomon-erasure` with SIMD).
//!
//! Not for: choosing shard sizes or verifying shard ids (that is `codec`); this module only
//! computes parity and rebuilds missing data shards.

use reed_solomon_erasure::galois_8::ReedSolomon;

/// Largest k + m that GF(2^8) Reed-Solomon supports.
pub const MAX_TOTAL_SHARDS: usize = 256;

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
            rs.encode_sep(data, &mut parity)
                .map_err(|e| ErasureError::Coding(format!("{e:?}")))?;
        }
        Ok(parity)
    }

    /// Fills in every missing data shard from any k present shards. Parity shards that are
    /// missing stay missing. `shards` holds k + m entries.
    pub fn reconstruct_data(&self, shards: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError> {
        let present = shards.iter().filter(|s| s.is_some()).count();
        if shards[..self.k].iter().all(Option::is_some) {
            return Ok(());
        }
        if present < self.k {
            return Err(ErasureError::TooFewShards { present, k: self.k });
        }
        let rs = self
            .rs
            .as_ref()
            .ok_or(ErasureError::TooFewShards { present, k: self.k })?;
        rs.reconstruct_data(shards)
            .map_err(|e| ErasureError::Coding(format!("{e:?}")))
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
