//! The maintenance service: scrub, repair and collect again every period, as one owner of
//! the walks (`dangan maintain`; `dangan collect --every-hours` is the same loop with only
//! collect), and what the walks find as Prometheus metrics.
//!
//! A round runs its jobs in order: **scrub** (every peer re-hashes its shards and
//! quarantines a corrupt copy), then **repair** (every document's stripes are brought back
//! to k + m shards on their placed peers, which rebuilds what scrub quarantined and what a
//! lost peer held), then **collect** (the bytes of puts that never registered, after the
//! grace period). Each job runs with the chain's layout of the moment. A job that fails (the
//! chain or a peer unreachable) is reported in the round and the next job and round run as
//! planned; a round cut short by the shutdown is finished by the next run, because every
//! job is idempotent.
//!
//! Only a walk over every document can count the stripes below k + m (a peer sees its own
//! shards, not the stripes they belong to), so these figures live here, in the process
//! that walks, and not on the peers: [`MaintainMetrics`] (names in `docs/operations.md`).
//!
//! Not for: what a job does (`scrub`, `converge`, `collect`), scheduling across operators
//! (run one maintenance service per cluster; two would do the same work twice, harmlessly).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{CollectOptions, CollectReport, ConvergeReport, Operator, OpsError, OpsOptions};
use super::{Progress, ScrubReport};

/// The jobs a round runs, in this order.
#[derive(Debug, Clone)]
pub struct Jobs {
    pub scrub: bool,
    pub repair: bool,
    /// Collect, with its grace period; `None` to skip it.
    pub collect: Option<CollectOptions>,
}

/// The three maintenance jobs, as a metric label says them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    Scrub,
    Repair,
    Collect,
}

impl Job {
    pub fn as_str(self) -> &'static str {
        match self {
            Job::Scrub => "scrub",
            Job::Repair => "repair",
            Job::Collect => "collect",
        }
    }
}

/// What one round did: each job's report, or why it failed; `None` for a job not run.
#[derive(Debug)]
pub struct Round {
    /// 1 for the first round of this run.
    pub number: u64,
    pub scrub: Option<Result<ScrubReport, OpsError>>,
    pub repair: Option<Result<ConvergeReport, OpsError>>,
    pub collect: Option<Result<CollectReport, OpsError>>,
}

impl Round {
    /// What went wrong in this round, one line per failed job or unfixed finding; empty when
    /// every job ran clean.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        note(&mut out, "scrub", self.scrub.as_ref(), |r| &r.failures);
        note(&mut out, "repair", self.repair.as_ref(), |r| &r.failures);
        note(&mut out, "collect", self.collect.as_ref(), |r| &r.failures);
        out
    }
}

/// Adds a job's problems to `out`: that it failed, or each failure its report lists.
fn note<R>(
    out: &mut Vec<String>,
    name: &str,
    result: Option<&Result<R, OpsError>>,
    failures: impl Fn(&R) -> &[String],
) {
    match result {
        None => {}
        Some(Err(e)) => out.push(format!("{name} failed: {e}")),
        Some(Ok(r)) => out.extend(failures(r).iter().map(|f| format!("{name}: {f}"))),
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobOutcome {
    job: &'static str,
    outcome: &'static str,
}

/// The maintenance service's figures, registered in its process's registry.
#[derive(Clone, Default)]
pub struct MaintainMetrics {
    runs: Family<JobOutcome, Counter>,
    running: Family<JobLabel, Gauge>,
    done: Family<JobLabel, Gauge>,
    planned: Family<JobLabel, Gauge>,
    bytes: Family<JobLabel, Counter>,
    last_success: Family<JobLabel, Gauge<f64, AtomicU64>>,
    documents: Gauge,
    stripes: Gauge,
    stripes_below: Gauge,
    stripes_unrepaired: Gauge,
    rebuilt: Counter,
    moved: Counter,
    corrupt: Counter,
    /// What the last round left wrong (`/readyz`'s reason), `None` when it ran clean.
    last_problem: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for MaintainMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaintainMetrics").finish_non_exhaustive()
    }
}

impl MaintainMetrics {
    /// Registers the figures in `registry` (made `with_prefix("dangan")` by the caller).
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "maintenance_runs",
            "Maintenance job runs finished, by job (scrub, repair, collect) and outcome (ok: \
             ran and fixed all it found; incomplete: ran, something is left; failed: could not run)",
            m.runs.clone(),
        );
        registry.register(
            "maintenance_running",
            "1 while the job runs",
            m.running.clone(),
        );
        registry.register(
            "maintenance_units_done",
            "Progress of the job's current (or last) run: units done (repair: stripes; scrub: \
             shards; collect: peers)",
            m.done.clone(),
        );
        registry.register(
            "maintenance_units_planned",
            "Units the job's current (or last) run has to do, as far as known (it grows while \
             a repair lists documents)",
            m.planned.clone(),
        );
        registry.register(
            "maintenance_bytes",
            "Bytes the job wrote (repair) or re-hashed (scrub)",
            m.bytes.clone(),
        );
        registry.register(
            "maintenance_last_success_timestamp_seconds",
            "When the job last finished with nothing left to fix (Unix time)",
            m.last_success.clone(),
        );
        registry.register(
            "documents",
            "Registered documents the last repair walked",
            m.documents.clone(),
        );
        registry.register(
            "stripes",
            "Stripes the last repair walked",
            m.stripes.clone(),
        );
        registry.register(
            "stripes_below_redundancy",
            "Stripes the last repair found with fewer than k + m shards on their placed peers \
             (before it rebuilt them)",
            m.stripes_below.clone(),
        );
        registry.register(
            "stripes_unrepaired",
            "Stripes or documents the last repair could not bring back to k + m (a peer down, \
             fewer than k shards reachable): what needs an operator",
            m.stripes_unrepaired.clone(),
        );
        registry.register(
            "repair_shards_rebuilt",
            "Shards repair rebuilt from k others of their stripe",
            m.rebuilt.clone(),
        );
        registry.register(
            "repair_shards_moved",
            "Shards repair copied to their placed peer from a previous layout's",
            m.moved.clone(),
        );
        registry.register(
            "scrub_corrupt_shards_found",
            "Corrupt shard copies scrub found (each quarantined by its peer, then rebuilt by repair)",
            m.corrupt.clone(),
        );
        m
    }

    /// The reason `/readyz` gives while the last round left something wrong.
    pub fn last_problem(&self) -> Option<String> {
        self.last_problem.lock().expect("metrics lock").clone()
    }

    fn started(&self, job: Job) {
        let label = JobLabel { job: job.as_str() };
        self.running.get_or_create(&label).set(1);
        self.done.get_or_create(&label).set(0);
        self.planned.get_or_create(&label).set(0);
    }

    /// A progress callback's step: the gauges follow, the bytes counter adds what is new
    /// since `*seen` (progress bytes count from the start of the run).
    fn progress(&self, job: Job, p: Progress, seen: &Mutex<u64>) {
        let label = JobLabel { job: job.as_str() };
        self.done.get_or_create(&label).set(gauge(p.done));
        self.planned.get_or_create(&label).set(gauge(p.total));
        let mut seen = seen.lock().expect("progress lock");
        if p.bytes > *seen {
            self.bytes.get_or_create(&label).inc_by(p.bytes - *seen);
            *seen = p.bytes;
        }
    }

    fn finished(&self, job: Job, outcome: &'static str) {
        let label = JobLabel { job: job.as_str() };
        self.running.get_or_create(&label).set(0);
        self.runs
            .get_or_create(&JobOutcome {
                job: job.as_str(),
                outcome,
            })
            .inc();
        if outcome == "ok" {
            self.last_success
                .get_or_create(&label)
                .set(crate::now_ms() as f64 / 1000.0);
        }
    }

    fn scrubbed(&self, r: &ScrubReport) {
        self.corrupt.inc_by(r.corrupt.len() as u64);
    }

    fn repaired(&self, r: &ConvergeReport) {
        self.documents.set(gauge(r.documents));
        self.stripes.set(gauge(r.stripes));
        self.stripes_below.set(gauge(r.stripes_below));
        self.stripes_unrepaired.set(gauge(r.failures.len() as u64));
        self.rebuilt.inc_by(r.shards_rebuilt);
        self.moved.inc_by(r.shards_moved);
    }

    fn round_done(&self, round: &Round) {
        let problems = round.problems();
        *self.last_problem.lock().expect("metrics lock") = (!problems.is_empty())
            .then(|| format!("the last maintenance round: {}", problems.join("; ")));
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The outcome label of a job's result: failed to run, ran but left something, or ok.
fn outcome<R>(result: &Result<R, OpsError>, failures: impl Fn(&R) -> usize) -> &'static str {
    match result {
        Err(_) => "failed",
        Ok(r) if failures(r) > 0 => "incomplete",
        Ok(_) => "ok",
    }
}

impl Operator {
    /// One maintenance round: `jobs` in order (see the module doc), each reported to
    /// `metrics` as it goes.
    pub async fn maintain_once(
        &self,
        options: &OpsOptions,
        jobs: &Jobs,
        metrics: Option<&MaintainMetrics>,
        number: u64,
    ) -> Round {
        let mut round = Round {
            number,
            scrub: None,
            repair: None,
            collect: None,
        };
        // Progress bytes count from the start of each job's run.
        let seen = Mutex::new(0u64);
        let begin = |job| {
            *seen.lock().expect("progress lock") = 0;
            if let Some(m) = metrics {
                m.started(job);
            }
        };
        let on = |job| {
            let seen = &seen;
            move |p: Progress| {
                if let Some(m) = metrics {
                    m.progress(job, p, seen);
                }
            }
        };
        if jobs.scrub {
            begin(Job::Scrub);
            let r = self.scrub(options, &on(Job::Scrub)).await;
            if let Some(m) = metrics {
                if let Ok(r) = &r {
                    m.scrubbed(r);
                }
                m.finished(Job::Scrub, outcome(&r, |r| r.failures.len()));
            }
            round.scrub = Some(r);
        }
        if jobs.repair {
            begin(Job::Repair);
            let r = self.repair(options, &on(Job::Repair)).await;
            if let Some(m) = metrics {
                if let Ok(r) = &r {
                    m.repaired(r);
                }
                m.finished(Job::Repair, outcome(&r, |r| r.failures.len()));
            }
            round.repair = Some(r);
        }
        if let Some(collect) = &jobs.collect {
            begin(Job::Collect);
            let r = self.collect(options, collect, &on(Job::Collect)).await;
            if let Some(m) = metrics {
                m.finished(Job::Collect, outcome(&r, |r| r.failures.len()));
            }
            round.collect = Some(r);
        }
        if let Some(m) = metrics {
            m.round_done(&round);
        }
        let problems = round.problems();
        if problems.is_empty() {
            tracing::info!(round = number, "maintenance round done");
        } else {
            tracing::warn!(round = number, problems = %problems.join("; "), "maintenance round left problems");
        }
        round
    }

    /// The maintenance service: [`Self::maintain_once`] again every `every` (each round
    /// with the chain's layout of the moment) until `shutdown` resolves; each round is
    /// handed to `on_round`. Returns the number of rounds finished.
    pub async fn maintain_every(
        &self,
        options: &OpsOptions,
        jobs: &Jobs,
        every: Duration,
        metrics: Option<&MaintainMetrics>,
        shutdown: impl std::future::Future<Output = ()>,
        on_round: &(dyn Fn(&Round) + Send + Sync),
    ) -> u64 {
        tokio::pin!(shutdown);
        let mut rounds = 0u64;
        loop {
            let round = tokio::select! {
                round = self.maintain_once(options, jobs, metrics, rounds + 1) => round,
                () = &mut shutdown => return rounds,
            };
            rounds += 1;
            on_round(&round);
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = &mut shutdown => return rounds,
            }
        }
    }
}
