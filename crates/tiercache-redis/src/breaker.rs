//! A circuit breaker: opens after a run of failures, half-opens after a
//! cool-down to let one probe through, closes when the probe succeeds.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// Breaker state shared by every call of one tier.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: Mutex<State>,
    threshold: u32,
    cooldown: Duration,
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
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
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
                *s = State::HalfOpen;
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
        !matches!(*self.lock(), State::Closed { .. })
    }

    /// Closes the breaker: the connection was re-established, which is as good
    /// as a successful probe.
    pub(crate) fn reset(&self) {
        *self.lock() = State::Closed { failures: 0 };
    }

    fn succeeded(&self) {
        *self.lock() = State::Closed { failures: 0 };
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
                    *s = open;
                    true
                } else {
                    *s = State::Closed { failures };
                    false
                }
            }
            State::HalfOpen if probe => {
                *s = open;
                true
            }
            // A call admitted before the breaker opened failing late changes nothing.
            _ => false,
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
