//! Error accounting: every error is counted; at most one log line per
//! interval says what happened and how many were not logged.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Counts errors into metrics and logs them at most once per interval.
#[derive(Debug)]
pub(crate) struct Reporter {
    component: &'static str,
    interval: Duration,
    last_log: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Reporter {
    pub(crate) fn new(component: &'static str, interval: Duration) -> Self {
        Self {
            component,
            interval,
            last_log: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Counts one error of `kind` during `op`, and logs it unless something
    /// was logged less than an interval ago.
    pub(crate) fn error(
        &self,
        op: &'static str,
        kind: &'static str,
        detail: &dyn std::fmt::Display,
    ) {
        let counter = match self.component {
            "bus" => "tiercache_bus_errors_total",
            _ => "tiercache_shared_errors_total",
        };
        metrics::counter!(counter, "backend" => "redis", "op" => op, "kind" => kind).increment(1);
        let now = Instant::now();
        let due = {
            let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
            match *last {
                Some(at) if now.duration_since(at) < self.interval => false,
                _ => {
                    *last = Some(now);
                    true
                }
            }
        };
        if due {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                component = self.component,
                op,
                kind,
                suppressed,
                "redis {} error: {detail}",
                self.component
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Logs a connection state change (these are rare, so always logged).
    pub(crate) fn state(&self, what: &str, detail: &dyn std::fmt::Display) {
        tracing::info!(
            component = self.component,
            "redis {}: {what} {detail}",
            self.component
        );
    }
}
