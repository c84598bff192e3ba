//! What a peer says about itself, to Prometheus (`metrics`) and to operators
//! (`Request::NodeStatus`, `dangan cluster status`).
//!
//! Requests are counted once, where `serve_stream` dispatches them: by kind and by the
//! outcome their answer said (`answer` notes it in [`OUTCOME`]), with a latency histogram
//! per kind. The figures (shards and bytes stored, audit records pending, the hosted
//! validator's height, role and term) are read when asked, by [`figures`], for both the
//! metrics collector and `NodeStatus`, so the two cannot disagree. [`readiness`] is what
//! `/readyz` and `NodeStatus` say about serving.
//!
//! Not for: deciding anything; these are observations.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::access::{AccessError, ChainView};
use crate::audit::AuditLog;
use crate::chain::ledger::Ledger;
use crate::metrics::{KindLabel, READY_TIMEOUT, RequestLabels, latency_histogram};
use crate::proto::{ErrorCode, NodeStatus, RaftRole, Response, ValidatorStatus};
use crate::store::ShardStore;

use super::PeerStats;

/// What became of a request, as its answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Answered with what was asked (or `NotFound`).
    Served,
    /// Refused: no right, a malformed or oversized request, bytes that do not hash.
    Refused,
    /// Over a limit: ask again later or elsewhere.
    Busy,
    /// The chain or the audit log could not say now, or no validator here.
    Unavailable,
    /// The peer failed (disk, corrupt copy) or the request ran out of time.
    Failed,
}

impl Outcome {
    pub(super) fn of(resp: &Response) -> Self {
        match resp {
            Response::Error { code, .. } => match code {
                ErrorCode::Malformed
                | ErrorCode::TooLarge
                | ErrorCode::HashMismatch
                | ErrorCode::Refused => Outcome::Refused,
                ErrorCode::Busy => Outcome::Busy,
                ErrorCode::Unavailable | ErrorCode::NotValidator => Outcome::Unavailable,
                ErrorCode::Corrupt | ErrorCode::Timeout | ErrorCode::Internal => Outcome::Failed,
            },
            _ => Outcome::Served,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Refused => "refused",
            Outcome::Busy => "busy",
            Outcome::Unavailable => "unavailable",
            Outcome::Failed => "failed",
        }
    }
}

tokio::task_local! {
    /// The outcome of the request the current task serves: set by `answer` from what it
    /// sends, read once by `serve_stream` when the request is done.
    pub(super) static OUTCOME: Cell<Outcome>;
}

/// Notes `outcome` for the request this task serves (outside one, nothing happens).
pub(super) fn note(outcome: Outcome) {
    let _ = OUTCOME.try_with(|o| o.set(outcome));
}

/// The request counters and latencies of one peer, registered in its node's registry.
pub(super) struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<KindLabel, Histogram, fn() -> Histogram>,
    scrub_checked: Counter,
    scrub_corrupt: Counter,
}

impl RequestMetrics {
    pub(super) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            scrub_checked: Counter::default(),
            scrub_corrupt: Counter::default(),
        };
        registry.register(
            "peer_requests",
            "Requests a peer answered, by kind and outcome (served, refused, busy, unavailable, failed)",
            m.requests.clone(),
        );
        registry.register(
            "peer_request_duration_seconds",
            "Time from a request's header to its last answer byte, by kind",
            m.latency.clone(),
        );
        registry.register(
            "scrub_shards_checked",
            "Shards re-hashed by scrub requests on this peer",
            m.scrub_checked.clone(),
        );
        registry.register(
            "scrub_corrupt_shards",
            "Shards scrub found corrupt and quarantined here (each leaves its stripe below k + m until repaired)",
            m.scrub_corrupt.clone(),
        );
        m
    }

    pub(super) fn record(&self, kind: &'static str, outcome: Outcome, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                kind,
                outcome: outcome.as_str(),
            })
            .inc();
        self.latency
            .get_or_create(&KindLabel { kind })
            .observe(took.as_secs_f64());
    }

    pub(super) fn scrubbed(&self, checked: u32, corrupt: usize) {
        self.scrub_checked.inc_by(u64::from(checked));
        self.scrub_corrupt.inc_by(corrupt as u64);
    }
}

/// Where a peer's figures come from.
#[derive(Clone)]
pub(super) struct Sources {
    pub store: Arc<ShardStore>,
    pub audit: Arc<AuditLog>,
    pub ledger: Option<Arc<Ledger>>,
    pub access: Arc<ChainView>,
    pub stats: Arc<PeerStats>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("validator", &self.ledger.is_some())
            .finish_non_exhaustive()
    }
}

/// The peer's figures now (`not_ready` left `None`: see [`readiness`]). Blocks briefly
/// (one redb read of the store, one of the audit log). A figure that cannot be read is
/// left at 0 and logged: the store's own failure shows in [`readiness`].
pub(super) fn figures(s: &Sources) -> NodeStatus {
    let usage = s.store.usage().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading the store's usage for the metrics failed");
        Default::default()
    });
    let audit_pending = s.audit.pending().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "reading the audit log for the metrics failed");
        0
    });
    NodeStatus {
        shards: usage.shards,
        bytes: usage.bytes,
        audit_pending,
        not_ready: None,
        validator: s.ledger.as_ref().map(|l| validator_status(l)),
    }
}

fn validator_status(ledger: &Ledger) -> ValidatorStatus {
    let raft = ledger.raft_metrics();
    let role = match raft.state {
        openraft::ServerState::Learner => RaftRole::Learner,
        openraft::ServerState::Follower => RaftRole::Follower,
        openraft::ServerState::Candidate => RaftRole::Candidate,
        openraft::ServerState::Leader => RaftRole::Leader,
        openraft::ServerState::Shutdown => RaftRole::Shutdown,
    };
    ValidatorStatus {
        height: ledger.status().height,
        role,
        term: raft.current_term,
    }
}

/// Whether the peer serves: its store reads, and the chain it authorises by is current
/// (a hosted validator caught up with its leader; otherwise the validator hosts answer
/// within [`READY_TIMEOUT`]). `Err` says why not, in a few words.
pub(super) async fn readiness(s: &Sources) -> Result<(), String> {
    let store = s.store.clone();
    tokio::task::spawn_blocking(move || store.usage())
        .await
        .map_err(|_| "the store check failed".to_string())?
        .map_err(|e| format!("store not readable: {e}"))?;
    if let Some(ledger) = &s.ledger {
        return if ledger.is_current() {
            Ok(())
        } else {
            Err("validator not caught up with its leader".into())
        };
    }
    match tokio::time::timeout(READY_TIMEOUT, s.access.chain_height()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(AccessError::NoChain)) => Err("not linked to the chain".into()),
        Ok(Err(e)) => Err(format!("chain unreachable: {e}")),
        Err(_) => Err(format!(
            "chain unreachable: no answer within {READY_TIMEOUT:?}"
        )),
    }
}

/// Registers the peer's figures in `registry`, read at each scrape.
pub(super) fn register(registry: &mut Registry, sources: Sources) {
    registry.register_collector(Box::new(Figures(sources)));
}

#[derive(Debug)]
struct Figures(Sources);

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Figures {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        let f = figures(s);
        gauge(&mut e, "store_shards", "Unique shards held", int(f.shards))?;
        gauge(
            &mut e,
            "store_bytes",
            "Bytes of the unique shards held (each body once)",
            int(f.bytes),
        )?;
        gauge(
            &mut e,
            "audit_pending_records",
            "Read records not yet covered by a root committed on chain",
            int(f.audit_pending),
        )?;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        counter(
            &mut e,
            "peer_shards_stored",
            "Shards made durable here",
            load(&s.stats.shards_stored),
        )?;
        counter(
            &mut e,
            "peer_shards_served",
            "Shards sent to readers",
            load(&s.stats.shards_served),
        )?;
        counter(
            &mut e,
            "peer_corrupt_detected",
            "Stored copies found corrupt when read or verified",
            load(&s.stats.corrupt_detected),
        )?;
        let (hits, misses) = s.access.cache_counts();
        let mut lookups = e.encode_descriptor(
            "access_cache_lookups",
            "Authorisation answers looked up in the peer's cache, by result (hit, miss)",
            None,
            MetricType::Counter,
        )?;
        for (result, v) in [("hit", hits), ("miss", misses)] {
            ConstCounter::new(v).encode(lookups.encode_family(&[("result", result)])?)?;
        }
        if let Some(v) = f.validator {
            gauge(
                &mut e,
                "chain_height",
                "Height of the last block applied by this node's validator",
                int(v.height),
            )?;
            gauge(
                &mut e,
                "raft_term",
                "Raft term of this node's validator",
                int(v.term),
            )?;
            let mut roles = e.encode_descriptor(
                "raft_role",
                "Raft role of this node's validator: 1 for the role it has",
                None,
                MetricType::Gauge,
            )?;
            for role in RaftRole::ALL {
                ConstGauge::new(i64::from(role == v.role))
                    .encode(roles.encode_family(&[("role", role.as_str())])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_the_answer() {
        let err = |code| Response::Error {
            code,
            message: String::new(),
        };
        assert_eq!(Outcome::of(&Response::Pong), Outcome::Served);
        assert_eq!(Outcome::of(&Response::NotFound), Outcome::Served);
        assert_eq!(Outcome::of(&err(ErrorCode::Refused)), Outcome::Refused);
        assert_eq!(Outcome::of(&err(ErrorCode::Malformed)), Outcome::Refused);
        assert_eq!(Outcome::of(&err(ErrorCode::Busy)), Outcome::Busy);
        assert_eq!(
            Outcome::of(&err(ErrorCode::Unavailable)),
            Outcome::Unavailable
        );
        assert_eq!(Outcome::of(&err(ErrorCode::Internal)), Outcome::Failed);
    }

    #[tokio::test]
    async fn the_outcome_is_noted_per_task() {
        let got = OUTCOME
            .scope(Cell::new(Outcome::Failed), async {
                note(Outcome::Busy);
                OUTCOME.with(Cell::get)
            })
            .await;
        assert_eq!(got, Outcome::Busy);
        // Outside a request nothing is noted, and nothing panics.
        note(Outcome::Served);
    }
}
