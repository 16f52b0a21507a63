//! The one clock the engine reads time through, as moka reads its own
//! through `common/time/clock.rs`.
//!
//! Two kinds of time are read, both through a [`Clock`]:
//!
//! - monotonic ([`Clock::now`], a `quanta::Instant`): the local tier's
//!   deadlines, checked on every local hit; the fence's records; load and
//!   retry timings; when each origin on the bus was last heard;
//! - wall ([`Clock::wall_ms`], ms since the Unix epoch): the times a stored
//!   envelope carries, which every instance reads, and the times of
//!   invalidations, compared with them.
//!
//! The system clock reads quanta (a TSC read, no system call) and
//! `SystemTime`. A local hit costs what it cost before the clock existed:
//! without the `test-util` feature [`Clock`] has that one variant, holds
//! nothing, and [`Clock::now`] compiles to `quanta::Instant::now()`.
//!
//! Timers are not the clock's: sleeps, timeouts and intervals are tokio's,
//! and so are the deadlines compared only with them (the outbox's
//! heartbeat window).
//!
//! With the `test-util` feature (this crate's tests turn it on through
//! their dev-dependency on it), a cache can be given a [`MockClock`]: the
//! time tokio's clock tells, plus what the test adds with
//! [`MockClock::advance`], with wall time moving along. Under
//! `#[tokio::test(start_paused = true)]` a sleep past a TTL takes no time,
//! and the engine's timers and its clock keep agreeing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) use quanta::Instant;

/// Where the engine reads the time.
#[derive(Clone, Debug, Default)]
pub(crate) enum Clock {
    /// quanta for monotonic time, `SystemTime` for wall time.
    #[default]
    System,
    /// A test's clock.
    #[cfg(feature = "test-util")]
    Mock(MockClock),
}

impl Clock {
    /// Monotonic now.
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            #[cfg(feature = "test-util")]
            Clock::Mock(m) => m.now(),
        }
    }

    /// Monotonic now as a `std::time::Instant`, for what the public API
    /// hands out ([`Applied::at`](crate::Applied::at)).
    pub(crate) fn std_now(&self) -> std::time::Instant {
        match self {
            Clock::System => std::time::Instant::now(),
            #[cfg(feature = "test-util")]
            Clock::Mock(m) => m.std_now(),
        }
    }

    /// Wall-clock time since the Unix epoch (zero for a clock set before it).
    pub(crate) fn since_epoch(&self) -> Duration {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO),
            #[cfg(feature = "test-util")]
            Clock::Mock(m) => m.since_epoch(),
        }
    }

    /// Wall-clock ms since the Unix epoch.
    #[inline]
    pub(crate) fn wall_ms(&self) -> u64 {
        u64::try_from(self.since_epoch().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(feature = "test-util")]
pub use mock::MockClock;

#[cfg(feature = "test-util")]
mod mock {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, OnceLock};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::Instant;

    /// Where the mocks' timeline meets quanta's and the wall clock: taken
    /// once per process, so every mock reads the same time (unless a test
    /// advances one), as instances on synchronized machines would.
    struct Anchors {
        std: std::time::Instant,
        quanta: Instant,
        wall: Duration,
    }

    fn anchors() -> &'static Anchors {
        static ANCHORS: OnceLock<Anchors> = OnceLock::new();
        ANCHORS.get_or_init(|| Anchors {
            std: std::time::Instant::now(),
            quanta: Instant::now(),
            wall: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO),
        })
    }

    /// A clock tests drive (the `test-util` feature; not an API): the time
    /// tokio's clock tells, plus everything [`advance`](Self::advance)d.
    ///
    /// Give it to a cache with `CacheBuilder::clock` (and to an
    /// `InProcessSharedTier` with `with_clock`, for its leases). In a test
    /// with tokio's time paused (`#[tokio::test(start_paused = true)]`),
    /// `tokio::time::sleep` and `tokio::time::advance` move it, and the
    /// engine's timers (load timeouts, bus liveness) move with it. Unpaused,
    /// it follows real time. Its wall time moves with its monotonic time.
    /// Clones share the time added.
    ///
    /// With tokio's time paused, read it from that runtime's threads only: a
    /// thread outside the runtime sees real time, not the paused clock.
    /// Moka's own clock (the expiry of an `InProcessSharedTier`'s values, how
    /// long an expired local entry lingers) is not this one; the engine
    /// decides freshness from its own deadlines.
    #[derive(Clone, Debug, Default)]
    pub struct MockClock {
        added_ns: Arc<AtomicU64>,
    }

    impl MockClock {
        /// A clock at tokio's time, nothing added.
        pub fn new() -> Self {
            Self::default()
        }

        /// Moves this clock (and its clones) forward by `by`, without
        /// moving tokio's timers.
        pub fn advance(&self, by: Duration) {
            let ns = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            let _ = self
                .added_ns
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_add(ns))
                });
        }

        /// The wall-clock ms since the Unix epoch that caches given this
        /// clock read now.
        pub fn now_ms(&self) -> u64 {
            u64::try_from(self.since_epoch().as_millis()).unwrap_or(u64::MAX)
        }

        pub(crate) fn std_now(&self) -> std::time::Instant {
            let t = tokio::time::Instant::now().into_std();
            let added = Duration::from_nanos(self.added_ns.load(Ordering::Relaxed));
            t.checked_add(added).unwrap_or(t)
        }

        /// How far this clock is from the anchors: (ahead, behind), one of
        /// them zero.
        fn offset(&self) -> (Duration, Duration) {
            let a = anchors();
            let t = self.std_now();
            match t.checked_duration_since(a.std) {
                Some(ahead) => (ahead, Duration::ZERO),
                None => (Duration::ZERO, a.std.saturating_duration_since(t)),
            }
        }

        pub(crate) fn now(&self) -> Instant {
            let a = anchors();
            match self.offset() {
                (ahead, Duration::ZERO) => a.quanta.checked_add(ahead).unwrap_or(a.quanta),
                (_, behind) => a.quanta.checked_sub(behind).unwrap_or(a.quanta),
            }
        }

        pub(crate) fn since_epoch(&self) -> Duration {
            let a = anchors();
            let (ahead, behind) = self.offset();
            (a.wall + ahead).saturating_sub(behind)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_reads_real_time() {
        let c = Clock::System;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(c.wall_ms().abs_diff(wall) < 60_000);
        let (a, b) = (c.now(), c.now());
        assert!(b >= a, "monotonic");
    }

    #[test]
    fn a_mock_moves_when_advanced_and_its_wall_time_with_it() {
        let m = MockClock::new();
        let c = Clock::Mock(m.clone());
        let (t0, w0) = (c.now(), c.wall_ms());
        m.advance(Duration::from_secs(3600));
        let (t1, w1) = (c.now(), c.wall_ms());
        // Outside a paused runtime the mock also follows real time, which
        // moves a little between the reads.
        let moved = t1.duration_since(t0);
        assert!(moved >= Duration::from_secs(3600) && moved < Duration::from_secs(3660));
        assert!((3_600_000..3_660_000).contains(&(w1 - w0)), "{}", w1 - w0);
    }

    #[test]
    fn mocks_agree_until_one_is_advanced() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, b) = (MockClock::new(), MockClock::new());
            assert_eq!(
                a.now_ms(),
                b.now_ms(),
                "paused: no time passes between the reads"
            );
            tokio::time::sleep(Duration::from_secs(10)).await;
            assert_eq!(a.now_ms(), b.now_ms());
            let before = Clock::Mock(a.clone()).now();
            a.advance(Duration::from_millis(1500));
            assert_eq!(a.now_ms() - b.now_ms(), 1500);
            assert_eq!(
                Clock::Mock(a).now().duration_since(before),
                Duration::from_millis(1500)
            );
        });
    }

    #[tokio::test(start_paused = true)]
    async fn paused_tokio_time_drives_a_mock() {
        let c = Clock::Mock(MockClock::new());
        let (t0, w0, s0) = (c.now(), c.wall_ms(), c.std_now());
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(c.now().duration_since(t0), Duration::from_secs(30));
        assert_eq!(c.wall_ms() - w0, 30_000);
        assert_eq!(c.std_now() - s0, Duration::from_secs(30));
    }
}
