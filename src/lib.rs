//! Dangan: a distributed document store for government departments.
//!
//! See `ARCHITECTURE.md` for the code map. Layers, bottom up: `id`; `crypto`, `erasure`,
//! `manifest`; `codec`; `bench`.

pub mod bench;
pub mod codec;
pub mod crypto;
pub mod erasure;
pub mod id;
pub mod manifest;
pub mod store;
