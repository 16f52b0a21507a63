//! Counters and histograms for every outcome.
//!
//! Each counter exists twice: as an atomic in [`CacheStats`] (read by tests,
//! the quickstart, health pages) and as a `metrics` handle registered once
//! when the cache is built, labelled with the namespace, so any `metrics`
//! recorder (Prometheus in the example and the sidecar) exports it. The hot
//! path touches only pre-registered handles: no allocation, no lookup.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($( $field:ident => $metric:literal $(, $lk:literal = $lv:literal)? ; $doc:literal )*) => {
        /// A snapshot of a cache's counters.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct CacheStats {
            $( #[doc = $doc] pub $field: u64, )*
        }

        pub(crate) struct Stats {
            $( $field: (AtomicU64, metrics::Counter), )*
            pub(crate) load_seconds: metrics::Histogram,
            pub(crate) evict_lag_seconds: metrics::Histogram,
        }

        impl Stats {
            pub(crate) fn new(ns: &str) -> Self {
                Self {
                    $( $field: (
                        AtomicU64::new(0),
                        metrics::counter!($metric, "namespace" => ns.to_owned() $(, $lk => $lv)?),
                    ), )*
                    load_seconds: metrics::histogram!("tiercache_load_duration_seconds", "namespace" => ns.to_owned()),
                    evict_lag_seconds: metrics::histogram!("tiercache_commit_to_evict_seconds", "namespace" => ns.to_owned()),
                }
            }

            $(
                #[inline]
                pub(crate) fn $field(&self, n: u64) {
                    self.$field.0.fetch_add(n, Relaxed);
                    self.$field.1.increment(n);
                }
            )*

            pub(crate) fn snapshot(&self) -> CacheStats {
                CacheStats { $( $field: self.$field.0.load(Relaxed), )* }
            }
        }
    };
}

counters! {
    local_hits => "tiercache_hits_total", "tier" = "local"; "Lookups answered by the local tier (values and negatives)."
    shared_hits => "tiercache_hits_total", "tier" = "shared"; "Lookups answered by the shared tier."
    misses => "tiercache_misses_total"; "Lookups neither tier could answer."
    negative_hits => "tiercache_negative_hits_total"; "Hits on a cached \"origin has no such item\"."
    bloom_rejections => "tiercache_bloom_rejections_total"; "Lookups the Bloom guard answered \"absent\" without the origin."
    loads => "tiercache_loads_total"; "Origin loads started (one per key per process at a time)."
    load_errors => "tiercache_load_errors_total"; "Loads that failed (error, panic, timeout)."
    load_timeouts => "tiercache_load_timeouts_total"; "Loads cut off by the hard timeout."
    collapsed => "tiercache_collapsed_waiters_total"; "Callers that waited for a load already in flight instead of starting one."
    lease_waits => "tiercache_lease_waits_total"; "Loads that found another instance holding the key's lease."
    lease_wait_hits => "tiercache_lease_wait_hits_total"; "Lease waits answered by the other instance's fill."
    stale_served => "tiercache_stale_served_total"; "Stale values served (origin failed or slow, within grace)."
    refreshes => "tiercache_refreshes_total"; "Background refreshes started by refresh-ahead."
    fills_revoked => "tiercache_fills_revoked_total"; "Loaded values not stored because an invalidation overtook the load."
    oversized => "tiercache_oversized_total"; "Values served but not cached because they exceed the size limit."
    corrupt_values => "tiercache_corrupt_values_total"; "Shared-tier values that failed to decode (deleted)."
    foreign_versions => "tiercache_foreign_versions_total"; "Shared-tier values written by a newer format version (left alone)."
    evictions => "tiercache_local_evictions_total"; "Local entries evicted for size."
    invalidations_sent => "tiercache_invalidations_sent_total"; "Invalidations published by this instance."
    invalidations_unsent => "tiercache_invalidations_unsent_total"; "Invalidations the bus failed to publish."
    invalidations_received => "tiercache_invalidations_received_total"; "Invalidations from other instances applied here."
    messages_malformed => "tiercache_messages_malformed_total"; "Bus payloads dropped as malformed, foreign or badly signed."
    messages_lost => "tiercache_messages_lost_total"; "Bus messages lost or presumed lost (gaps, slow-consumer drops)."
    bus_disconnects => "tiercache_bus_disconnects_total"; "Times the bus connection was lost."
    bus_silences => "tiercache_bus_silences_total"; "Times the bus went quiet past the liveness bound."
    local_flushes => "tiercache_local_flushes_total"; "Whole-local-tier flushes (bus reconnect, loss, shared failover)."
    shared_errors => "tiercache_shared_errors_total"; "Shared-tier calls that failed (the cache failed open)."
}
