//! A circuit breaker: opens after a run of failures, half-opens after a
//! cool-down to let one probe through, closes when the probe succeeds.
//!
//! Its state is the gauge [`OPEN_GAUGE`] (`backend="redis"`): 1 while the
//! breaker refuses calls (open or half-open), 0 while it is closed.
//! Registered when the breaker is built, so a scrape shows it before the
//! first failure. Each breaker adds its own state to the gauge: with several
//! Redis shared tiers in one process, it counts those whose breaker is open.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Gauge: 1 while a shared tier's circuit breaker is open (calls refused),
/// 0 otherwise. Label `backend` (`redis`).
pub(crate) const OPEN_GAUGE: &str = "tiercache_shared_breaker_open";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

impl State {
    /// Whether calls are refused (a half-open breaker lets one probe through
    /// and refuses the rest).
    fn refuses(self) -> bool {
        !matches!(self, State::Closed { .. })
    }
}

/// Breaker state shared by every call of one tier.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
    /// [`OPEN_GAUGE`]: this breaker adds 1 while it refuses calls.
    open_gauge: metrics::Gauge,
}

/// Moves `s` to `next`, keeping the gauge in step (under the state lock).
fn transition(s: &mut State, next: State, gauge: &metrics::Gauge) {
    match (s.refuses(), next.refuses()) {
        (false, true) => gauge.increment(1.0),
        (true, false) => gauge.decrement(1.0),
        _ => {}
    }
    *s = next;
}

/// Permission to make one call. Must be resolved with [`Permit::success`] or
/// [`Permit::failure`]; a permit dropped unresolved (the caller gave up) counts
/// as a failure if it was the half-open probe, so the breaker cannot stick.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    resolved: bool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        let open_gauge = metrics::gauge!(OPEN_GAUGE, "backend" => "redis");
        // Registers the gauge (at 0 for this closed breaker) so that it is
        // exported before the first failure.
        open_gauge.increment(0.0);
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
            open_gauge,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single assignment: a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A permit to call, or `None` while open (or while a probe is out).
    pub(crate) fn admit(&self) -> Option<Permit<'_>> {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Some(Permit {
                breaker: self,
                probe: false,
                resolved: false,
            }),
            State::Open { until } if Instant::now() >= until => {
                transition(&mut s, State::HalfOpen, &self.open_gauge);
                Some(Permit {
                    breaker: self,
                    probe: true,
                    resolved: false,
                })
            }
            State::Open { .. } | State::HalfOpen => None,
        }
    }

    /// Whether the breaker is open (calls are refused).
    pub(crate) fn is_open(&self) -> bool {
        self.lock().refuses()
    }

    /// Closes the breaker: the connection was re-established, which is as good
    /// as a successful probe.
    pub(crate) fn reset(&self) {
        self.close();
    }

    fn succeeded(&self) {
        self.close();
    }

    fn close(&self) {
        let mut s = self.lock();
        transition(&mut s, State::Closed { failures: 0 }, &self.open_gauge);
    }

    /// Returns true when this failure opened the breaker.
    fn failed(&self, probe: bool) -> bool {
        let mut s = self.lock();
        let open = State::Open {
            until: Instant::now() + self.cooldown,
        };
        match *s {
            State::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if failures >= self.threshold {
                    transition(&mut s, open, &self.open_gauge);
                    true
                } else {
                    *s = State::Closed { failures };
                    false
                }
            }
            State::HalfOpen if probe => {
                transition(&mut s, open, &self.open_gauge);
                true
            }
            // A call admitted before the breaker opened failing late changes nothing.
            _ => false,
        }
    }
}

impl Drop for Breaker {
    fn drop(&mut self) {
        // A tier dropped while its breaker is open takes its 1 with it.
        let s = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        if s.refuses() {
            self.open_gauge.decrement(1.0);
        }
    }
}

impl Permit<'_> {
    /// The call succeeded (or the server answered, even with an error).
    pub(crate) fn success(mut self) {
        self.resolved = true;
        self.breaker.succeeded();
    }

    /// The call failed for want of a working server. Returns true when this
    /// failure opened the breaker.
    pub(crate) fn failure(mut self) -> bool {
        self.resolved = true;
        self.breaker.failed(self.probe)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.resolved && self.probe {
            self.breaker.failed(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_half_opens_and_closes() {
        let b = Breaker::new(3, Duration::from_millis(30));
        for _ in 0..2 {
            assert!(!b.admit().map(Permit::failure).unwrap_or(true));
        }
        assert_eq!(
            b.admit().map(Permit::failure),
            Some(true),
            "third failure opens"
        );
        assert!(b.admit().is_none(), "open refuses");
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.admit();
        assert!(probe.is_some(), "half-open lets a probe through");
        assert!(b.admit().is_none(), "only one probe at a time");
        drop(probe);
        assert!(b.admit().is_none(), "an abandoned probe re-opens");
        std::thread::sleep(Duration::from_millis(40));
        if let Some(p) = b.admit() {
            p.success();
        }
        assert!(!b.is_open(), "a successful probe closes");
        assert!(b.admit().is_some());
    }

    /// A recorder whose every gauge is one shared cell.
    struct OneGauge(std::sync::Arc<std::sync::atomic::AtomicU64>);

    impl metrics::Recorder for OneGauge {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            assert_eq!(key.name(), OPEN_GAUGE);
            metrics::Gauge::from_arc(std::sync::Arc::clone(&self.0))
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn the_gauge_follows_the_state() {
        let cell = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0f64.to_bits()));
        let value = || f64::from_bits(cell.load(std::sync::atomic::Ordering::Relaxed));
        let recorder = OneGauge(std::sync::Arc::clone(&cell));
        let (a, b) = metrics::with_local_recorder(&recorder, || {
            (
                Breaker::new(1, Duration::from_millis(30)),
                Breaker::new(1, Duration::from_secs(60)),
            )
        });
        assert_eq!(value(), 0.0, "registered closed");
        assert_eq!(a.admit().map(Permit::failure), Some(true));
        assert_eq!(value(), 1.0, "open");
        assert_eq!(b.admit().map(Permit::failure), Some(true));
        assert_eq!(value(), 2.0, "two tiers open");
        drop(b);
        assert_eq!(value(), 1.0, "a dropped open breaker takes its 1 with it");
        std::thread::sleep(Duration::from_millis(40));
        let probe = a.admit();
        assert!(probe.is_some());
        assert_eq!(value(), 1.0, "half-open still refuses");
        if let Some(p) = probe {
            p.success();
        }
        assert_eq!(value(), 0.0, "closed");
        a.reset();
        assert_eq!(value(), 0.0, "closing a closed breaker changes nothing");
    }

    #[test]
    fn success_resets_the_run() {
        let b = Breaker::new(2, Duration::from_secs(60));
        assert_eq!(b.admit().map(Permit::failure), Some(false));
        if let Some(p) = b.admit() {
            p.success();
        }
        assert_eq!(b.admit().map(Permit::failure), Some(false));
        assert!(!b.is_open());
        b.reset();
        assert!(b.admit().is_some());
    }
}
