//! Counters and histograms for every outcome.
//!
//! Each counter exists twice: as an atomic in [`CacheStats`] (read by tests,
//! the quickstart, health pages) and as a `metrics` handle registered once
//! when the cache is built, labelled with the namespace, so any `metrics`
//! recorder (Prometheus in the example and the sidecar) exports it. The hot
//! path touches only pre-registered handles: no allocation, no lookup.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use thread_local::ThreadLocal;

/// A counter bumped on slow paths: one atomic.
#[derive(Default)]
pub(crate) struct Plain(AtomicU64);

impl Plain {
    #[inline]
    fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A counter bumped on every local hit: one cell per thread, written only
/// by its thread with a plain load and store (no locked instruction, no
/// line shared between cores), read by summing the cells.
#[derive(Default)]
pub(crate) struct PerThread(ThreadLocal<AtomicU64>);

impl PerThread {
    #[inline]
    fn add(&self, n: u64) {
        let cell = self.0.get_or_default();
        // Only this thread writes `cell`: no increment is lost.
        cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }
}

macro_rules! counters {
    ($( $field:ident : $cell:ident => $metric:literal $(, $lk:literal = $lv:literal)? ; $doc:literal )*) => {
        /// A snapshot of a cache's counters.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct CacheStats {
            $( #[doc = $doc] pub $field: u64, )*
            /// Shared-tier calls that failed (the cache failed open).
            pub shared_errors: u64,
        }

        pub(crate) struct Stats {
            $( $field: ($cell, metrics::Counter), )*
            pub(crate) load_seconds: metrics::Histogram,
            pub(crate) evict_lag_seconds: metrics::Histogram,
            shared_errors: (Plain, [metrics::Counter; SharedErrorKind::ALL.len()]),
            bus_state: [metrics::Gauge; BusState::ALL.len()],
            local_entries: metrics::Gauge,
            local_bytes: metrics::Gauge,
            outbox_queued: metrics::Gauge,
            outbox_oldest_seconds: metrics::Gauge,
        }

        impl Stats {
            pub(crate) fn new(ns: &str) -> Self {
                Self {
                    $( $field: (
                        $cell::default(),
                        metrics::counter!($metric, "namespace" => ns.to_owned() $(, $lk => $lv)?),
                    ), )*
                    load_seconds: metrics::histogram!("tiercache_load_duration_seconds", "namespace" => ns.to_owned()),
                    evict_lag_seconds: metrics::histogram!("tiercache_commit_to_evict_seconds", "namespace" => ns.to_owned()),
                    shared_errors: (
                        Plain::default(),
                        SharedErrorKind::ALL.map(|k| metrics::counter!("tiercache_shared_errors_total", "namespace" => ns.to_owned(), "kind" => k.as_str())),
                    ),
                    bus_state: BusState::ALL.map(|b| metrics::gauge!("tiercache_bus_state", "namespace" => ns.to_owned(), "state" => b.as_str())),
                    local_entries: metrics::gauge!("tiercache_local_entries", "namespace" => ns.to_owned()),
                    local_bytes: metrics::gauge!("tiercache_local_bytes", "namespace" => ns.to_owned()),
                    outbox_queued: metrics::gauge!("tiercache_outbox_queued", "namespace" => ns.to_owned()),
                    outbox_oldest_seconds: metrics::gauge!("tiercache_outbox_oldest_seconds", "namespace" => ns.to_owned()),
                }
            }

            $(
                #[inline]
                pub(crate) fn $field(&self, n: u64) {
                    self.$field.0.add(n);
                    self.$field.1.increment(n);
                }
            )*

            pub(crate) fn snapshot(&self) -> CacheStats {
                CacheStats {
                    $( $field: self.$field.0.get(), )*
                    shared_errors: self.shared_errors.0.get(),
                }
            }
        }
    };
}

counters! {
    local_hits: PerThread => "tiercache_hits_total", "tier" = "local"; "Lookups answered by the local tier (values and negatives)."
    shared_hits: Plain => "tiercache_hits_total", "tier" = "shared"; "Lookups answered by the shared tier."
    misses: Plain => "tiercache_misses_total"; "Lookups neither tier could answer."
    negative_hits: PerThread => "tiercache_negative_hits_total"; "Hits on a cached \"origin has no such item\"."
    bloom_rejections: Plain => "tiercache_bloom_rejections_total"; "Lookups the Bloom guard answered \"absent\" without the origin."
    loads: Plain => "tiercache_loads_total"; "Origin loads started (one per key per process at a time)."
    load_errors: Plain => "tiercache_load_errors_total"; "Loads that failed (error, panic, timeout)."
    not_stored: Plain => "tiercache_not_stored_total"; "Loads whose answer the loader marked not to be stored or shared ([`NotStored`](crate::NotStored))."
    load_timeouts: Plain => "tiercache_load_timeouts_total"; "Loads cut off by the hard timeout."
    collapsed: Plain => "tiercache_collapsed_waiters_total"; "Callers that waited for a load already in flight instead of starting one."
    lease_waits: Plain => "tiercache_lease_waits_total"; "Loads that found another instance holding the key's lease."
    lease_wait_hits: Plain => "tiercache_lease_wait_hits_total"; "Lease waits answered by the other instance's fill."
    stale_served: Plain => "tiercache_stale_served_total"; "Stale values served (origin failed or slow, within grace)."
    refreshes: Plain => "tiercache_refreshes_total"; "Background refreshes started by refresh-ahead."
    fills_revoked: Plain => "tiercache_fills_revoked_total"; "Loaded values not stored because an invalidation overtook the load."
    oversized: Plain => "tiercache_oversized_total"; "Values served but not cached because they exceed the size limit."
    unrecordable_tags: Plain => "tiercache_unrecordable_tags_total"; "Values served but not cached because their tags cannot be recorded exactly (too many, or too long)."
    corrupt_values: Plain => "tiercache_corrupt_values_total"; "Shared-tier values that failed to decode (deleted)."
    shared_superseded: Plain => "tiercache_shared_superseded_total"; "Shared-tier values ignored because they were written before an invalidation applied here (their delete failed in the shared tier)."
    foreign_versions: Plain => "tiercache_foreign_versions_total"; "Shared-tier values written by a newer format version (left alone)."
    evictions: Plain => "tiercache_local_evictions_total"; "Local entries evicted for size."
    invalidations_sent: Plain => "tiercache_invalidations_sent_total"; "Invalidations published by this instance."
    invalidations_unsent: Plain => "tiercache_invalidations_unsent_total"; "Invalidations the bus failed to publish."
    invalidations_received: Plain => "tiercache_invalidations_received_total"; "Invalidations from other instances applied here."
    messages_malformed: Plain => "tiercache_messages_malformed_total"; "Bus payloads dropped as malformed, foreign or badly signed."
    messages_lost: Plain => "tiercache_messages_lost_total"; "Bus messages lost or presumed lost (gaps, slow-consumer drops)."
    bus_disconnects: Plain => "tiercache_bus_disconnects_total"; "Times the bus connection was lost."
    bus_silences: Plain => "tiercache_bus_silences_total"; "Times the bus went quiet past the liveness bound."
    local_flushes: Plain => "tiercache_local_flushes_total"; "Whole-local-tier flushes (bus reconnect, loss, shared failover)."
    local_parks: Plain => "tiercache_local_parks_total"; "Bus disconnects that kept the local tier (stale, not flushed) until the bus replays what it missed."
    local_revivals: Plain => "tiercache_local_revivals_total"; "Kept local tiers made fresh again: the bus resumed and replayed everything it had missed."
}

/// What kind of shared-tier failure (the `kind` label of
/// `tiercache_shared_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SharedErrorKind {
    Timeout,
    BreakerOpen,
    Unavailable,
    Server,
}

impl SharedErrorKind {
    const ALL: [Self; 4] = [
        Self::Timeout,
        Self::BreakerOpen,
        Self::Unavailable,
        Self::Server,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::BreakerOpen => "breaker_open",
            Self::Unavailable => "unavailable",
            Self::Server => "server",
        }
    }
}

/// What the bus looks like from here (the `state` label of the
/// `tiercache_bus_state` gauge: 1 for the current state, 0 for the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BusState {
    /// Heard within the liveness window: the local tier is trusted.
    Live,
    /// Not connected: local life is capped.
    Disconnected,
    /// Connected but not heard (or an origin went silent): the local tier
    /// is bypassed.
    Silent,
}

impl BusState {
    const ALL: [Self; 3] = [Self::Live, Self::Disconnected, Self::Silent];

    fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Disconnected => "disconnected",
            Self::Silent => "silent",
        }
    }
}

impl Stats {
    /// Counts a failed shared-tier call of `kind`.
    pub(crate) fn shared_errors(&self, kind: SharedErrorKind, n: u64) {
        self.shared_errors.0.add(n);
        if let Some(c) = SharedErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.shared_errors.1.get(i))
        {
            c.increment(n);
        }
    }

    /// Sets the bus-state gauge to `state`.
    pub(crate) fn bus_state(&self, state: BusState) {
        for (s, g) in BusState::ALL.iter().zip(&self.bus_state) {
            g.set(if *s == state { 1.0 } else { 0.0 });
        }
    }

    /// Sets the outbox gauges: invalidations not yet on the bus, and the
    /// age of the oldest.
    pub(crate) fn outbox(&self, queued: usize, oldest: Option<std::time::Duration>) {
        self.outbox_queued.set(queued as f64);
        self.outbox_oldest_seconds
            .set(oldest.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// Sets the local-tier gauges: entries and their weighted bytes.
    pub(crate) fn local_size(&self, entries: u64, bytes: u64) {
        self.local_entries.set(entries as f64);
        self.local_bytes.set(bytes as f64);
    }
}
