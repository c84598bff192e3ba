//! Dangan: a distributed document store for government departments.
//!
//! See `ARCHITECTURE.md` for the code map. Layers, bottom up: `id`; `crypto`, `erasure`,
//! `manifest`, `identity`, `placement`, `store`, `keyring`; `codec`, `tls`, `proto`;
//! `peer`, `client`; `audit` (read records, their roots on chain); `config`; `node` (a peer
//! and the validator it hosts, wired from a config); `ops` (repair, rebalance, scrub),
//! `version` (supersede, rekey); `cluster` (the embedded cluster); `demo`, `bench`.

pub mod access;
pub mod audit;
pub mod bench;
pub mod chain;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod crypto;
pub mod delegation;
pub mod demo;
pub mod erasure;
pub mod gateway;
pub mod grant;
pub mod id;
pub mod identity;
pub mod keyring;
pub mod manifest;
pub mod metrics;
pub mod net;
pub mod node;
pub mod ops;
pub mod peer;
pub mod placement;
pub mod proto;
pub mod receipt;
pub mod revision;
pub mod store;
pub mod tls;

/// Milliseconds since the Unix epoch by this machine's clock (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
