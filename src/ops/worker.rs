//! The one shape of an operations worker, and the one runner that drives it.
//!
//! A [`Worker`] (in the spirit of Garage's) says what its job is made of and nothing about
//! how it is run: [`Worker::plan`] gives the units (a stripe, a peer) as a stream, read only
//! as fast as they are worked on (so a worker over many documents holds a page of them, not
//! all), with the total that progress counts to, which outcomes may raise as they find more
//! units; [`Worker::step`] does one unit (throttled, resumable through the
//! journal where the worker has one) and hands what it found to [`Run::record`], and
//! [`Worker::record`] folds such an outcome into the report. [`run`] owns the rest: the
//! parallelism (`OpsOptions::parallel` units at a time), the shared byte-rate
//! [`Throttle`], the [`Progress`] callback after each recorded outcome, and the timing.
//!
//! Not for: what a unit does (`converge`, `scrub`), nor where progress is shown (the
//! callback's owner: a progress bar, a demo's story, a test).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, StreamExt};

use super::{OpsError, OpsOptions};

/// Where a long job is: `done` of `total` units (stripes, or shards for a scrub), `bytes`
/// moved, rebuilt or re-hashed so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub bytes: u64,
}

/// Progress callback.
pub type OnProgress<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// A byte-rate limit shared by concurrent tasks.
pub struct Throttle {
    rate: Option<f64>,
    state: Mutex<(Instant, u64)>,
}

impl Throttle {
    pub fn new(rate: Option<f64>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0.0),
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Accounts for `bytes` and waits until the rate allows them.
    pub async fn take(&self, bytes: u64) {
        let Some(rate) = self.rate else { return };
        let due = {
            let mut state = self.state.lock().expect("throttle lock");
            state.1 += bytes;
            state.0 + Duration::from_secs_f64(state.1 as f64 / rate)
        };
        tokio::time::sleep_until(due.into()).await;
    }
}

/// What a worker's plan found: the units to work on (a stream, pulled `parallel` at a
/// time), the total progress counts to as far as known, and the report as planning left it
/// (what it counted, what already failed).
pub(crate) struct Plan<'a, U, R> {
    pub units: BoxStream<'a, U>,
    pub total: u64,
    pub report: R,
}

/// How far one recorded outcome moves progress: `done` units (a stripe, a page's shards),
/// `bytes` (written, or re-hashed), and `found`: units it discovered, which raise the total
/// (a streamed plan's total grows as it is read).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Advance {
    pub done: u64,
    pub bytes: u64,
    pub found: u64,
}

/// An operations worker: see the module doc.
pub(crate) trait Worker: Sized + Sync {
    /// One piece of work: done by one [`Worker::step`], `parallel` of them at a time.
    type Unit: Send;
    /// What a step found and did, for [`Worker::record`].
    type Outcome;
    /// What the whole run found and did.
    type Report;

    /// The units (a stream, read as they are worked on), the total progress counts to as
    /// far as known, and the report to start from.
    async fn plan(&self) -> Result<Plan<'_, Self::Unit, Self::Report>, OpsError>;

    /// Does one unit, throttled through `run.throttle()`, handing each outcome to
    /// `run.record` as soon as it is known: once for a unit, or once per part of a unit
    /// that progress should see (a scrub's pages of one peer).
    async fn step(&self, unit: Self::Unit, run: &Run<'_, Self>);

    /// Folds one outcome into the report; how far it moves progress, or `None` if it is
    /// not progress (a unit that failed before doing anything), which then is not reported.
    fn record(&self, report: &mut Self::Report, outcome: Self::Outcome) -> Option<Advance>;

    /// Stamps the time the whole run took into the report, and logs its summary.
    fn finish(&self, report: &mut Self::Report, elapsed: Duration);
}

/// One run of a worker, as its steps see it: the shared throttle, and where outcomes go.
pub(crate) struct Run<'a, W: Worker> {
    worker: &'a W,
    throttle: Throttle,
    progress: OnProgress<'a>,
    /// The report and the progress so far, changed together (progress is reported in order).
    state: Mutex<(W::Report, Progress)>,
}

impl<W: Worker> Run<'_, W> {
    /// The byte-rate limit every step of this run shares.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Folds `outcome` into the report and, if it is progress, reports it.
    pub fn record(&self, outcome: W::Outcome) {
        let mut state = self.state.lock().expect("report lock");
        let (report, progress) = &mut *state;
        if let Some(advance) = self.worker.record(report, outcome) {
            progress.done += advance.done;
            progress.bytes += advance.bytes;
            progress.total = (progress.total + advance.found).max(progress.done);
            (self.progress)(*progress);
        }
    }
}

/// Runs `worker`: plans it, steps its units `options.parallel` at a time under one
/// throttle of `options.rate` bytes per second, reports progress from `done: 0` on, and
/// returns the report with the elapsed time.
pub(crate) async fn run<W: Worker>(
    worker: &W,
    options: &OpsOptions,
    progress: OnProgress<'_>,
) -> Result<W::Report, OpsError> {
    let started = Instant::now();
    let throttle = Throttle::new(options.rate);
    let Plan {
        units,
        total,
        report,
    } = worker.plan().await?;
    let start = Progress {
        done: 0,
        total,
        bytes: 0,
    };
    let run = Run {
        worker,
        throttle,
        progress,
        state: Mutex::new((report, start)),
    };
    progress(start);
    units
        .map(|unit| worker.step(unit, &run))
        .buffer_unordered(options.parallel.max(1))
        .collect::<()>()
        .await;
    let (mut report, _) = run.state.into_inner().expect("report lock");
    worker.finish(&mut report, started.elapsed());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn throttle_holds_the_rate() {
        let throttle = Throttle::new(Some(10e6));
        let start = Instant::now();
        for _ in 0..3 {
            throttle.take(1_000_000).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((0.29..1.0).contains(&elapsed), "{elapsed}");
        let free = Throttle::new(None);
        let start = Instant::now();
        free.take(u64::MAX / 2).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }

    /// Units 0..n; unit `u` "writes" `10 * u` bytes, except unit 3, which fails.
    struct Counting {
        units: u64,
        in_flight: AtomicUsize,
        most: AtomicUsize,
    }

    #[derive(Default)]
    struct Tally {
        units: u64,
        bytes: u64,
        failures: Vec<String>,
        elapsed: Duration,
    }

    impl Worker for Counting {
        type Unit = u64;
        type Outcome = Result<u64, String>;
        type Report = Tally;

        async fn plan(&self) -> Result<Plan<'_, u64, Tally>, OpsError> {
            Ok(Plan {
                units: futures::stream::iter(0..self.units).boxed(),
                total: self.units,
                report: Tally::default(),
            })
        }

        async fn step(&self, unit: u64, run: &Run<'_, Self>) {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            run.throttle().take(10 * unit).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            run.record(if unit == 3 {
                Err(format!("unit {unit} failed"))
            } else {
                Ok(10 * unit)
            });
        }

        fn record(&self, report: &mut Tally, outcome: Result<u64, String>) -> Option<Advance> {
            match outcome {
                Ok(bytes) => {
                    report.units += 1;
                    report.bytes += bytes;
                    Some(Advance {
                        done: 1,
                        bytes,
                        found: 0,
                    })
                }
                Err(e) => {
                    report.failures.push(e);
                    None
                }
            }
        }

        fn finish(&self, report: &mut Tally, elapsed: Duration) {
            report.elapsed = elapsed;
        }
    }

    #[tokio::test]
    async fn the_runner_bounds_parallelism_reports_each_outcome_in_order_and_folds_the_report() {
        let worker = Counting {
            units: 20,
            in_flight: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
        };
        let seen = Mutex::new(Vec::new());
        let progress = |p: Progress| seen.lock().unwrap().push(p);
        let options = OpsOptions {
            parallel: 4,
            ..OpsOptions::default()
        };
        let report = run(&worker, &options, &progress).await.unwrap();

        // At most `parallel` units at once, and the bound is used.
        assert_eq!(worker.most.load(Ordering::SeqCst), 4);
        assert_eq!(worker.in_flight.load(Ordering::SeqCst), 0);
        // The report: every outcome folded once; the elapsed time stamped.
        let bytes: u64 = (0..20).filter(|&u| u != 3).map(|u| 10 * u).sum();
        assert_eq!(report.units, 19);
        assert_eq!(report.bytes, bytes);
        assert_eq!(report.failures, vec!["unit 3 failed".to_string()]);
        assert!(
            report.elapsed >= Duration::from_millis(25),
            "{:?}",
            report.elapsed
        );
        // Progress: `done: 0` first, then once per outcome that is progress, in order.
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), 1 + 19);
        for (i, p) in seen.iter().enumerate() {
            assert_eq!(p.done, i as u64);
            assert_eq!(p.total, 20);
        }
        assert_eq!(seen[0].bytes, 0);
        assert!(seen.windows(2).all(|w| w[0].bytes <= w[1].bytes));
        assert_eq!(seen.last().unwrap().bytes, bytes);
    }
}
