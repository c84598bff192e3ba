//! The integration tests, as one test binary (the crate is linked once for all of them, not
//! once per file): one module per area, the shared helpers in `common`. Not for unit tests
//! of one module (those sit beside their code in `src/`).
//!
//! Run one area with a filter on the module path, e.g. `cargo test --test it raft::`; the
//! ignored tests are run by name (docs/faults.md, docs/fuzzing.md).

mod common;

mod access;
mod approvals;
mod audit;
mod browser;
mod chain;
mod cli;
mod cluster;
mod codec;
mod delegation;
mod deploy;
mod docs;
mod durability;
mod evidence;
mod faults;
mod fuzz_regressions;
mod fuzz_seeds;
mod gateway;
mod grants;
mod hsm;
mod isolation;
mod layering;
mod liar;
mod manifests;
mod metrics;
mod ops;
mod orphans;
mod raft;
mod records;
mod rekey;
mod s3;
mod scripting;
mod standins;
mod starve;
