//! Warnings rate-limited to one per interval, however many requests hit
//! the same cause.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The interval between two warnings of one cause.
const EVERY_MS: u64 = 10_000;

/// When a warning was last logged; clones share it.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogEvery(Arc<AtomicU64>);

impl LogEvery {
    /// Whether the warning is due now (and, if so, marks it logged).
    pub(crate) fn due(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let seen = self.0.load(Ordering::Relaxed);
        now.saturating_sub(seen) >= EVERY_MS
            && self
                .0
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_interval() {
        let log = LogEvery::default();
        assert!(log.due());
        assert!(!log.due());
        assert!(!log.clone().due(), "clones share the mark");
    }
}
