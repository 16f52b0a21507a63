//! The metrics an operator alerts on, as a `metrics` recorder sees them:
//! the bus state, the local tier's size, clears, and shared-tier errors by
//! kind. (Its own test binary: it installs a global recorder.)
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tiercache_core::backend::{ClearEpochs, FillTicket, InProcessBus, SharedError, SharedTier};
use tiercache_core::{Cache, ClearMode};

/// One snapshot of every metric. (The debugging recorder drains on each
/// snapshot: read everything a check needs from one.)
struct Snap(Vec<Series>);

/// A metric's name, labels and value.
type Series = (String, Vec<(String, String)>, f64);

impl Snap {
    fn take(snap: &Snapshotter) -> Self {
        Snap(
            snap.snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, v)| {
                    let k = key.key();
                    let labels = k
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    let v = match v {
                        DebugValue::Counter(c) => c as f64,
                        DebugValue::Gauge(g) => g.into_inner(),
                        DebugValue::Histogram(h) => h.len() as f64,
                    };
                    (k.name().to_owned(), labels, v)
                })
                .collect(),
        )
    }

    /// The value of `name` whose labels include all of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.iter().find_map(|(n, ls, v)| {
            let all = labels
                .iter()
                .all(|(k, val)| ls.iter().any(|(lk, lv)| lk == k && lv == val));
            (n == name && all).then_some(*v)
        })
    }
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A shared tier whose every call times out.
struct TimingOut;

#[async_trait]
impl SharedTier for TimingOut {
    async fn get(&self, _: &str) -> Result<Option<Bytes>, SharedError> {
        Err(SharedError::Timeout)
    }
    async fn get_many(&self, _: &[String]) -> Result<Vec<Option<Bytes>>, SharedError> {
        Err(SharedError::Timeout)
    }
    async fn set(&self, _: &str, _: Bytes, _: Duration) -> Result<(), SharedError> {
        Err(SharedError::Timeout)
    }
    async fn delete(&self, _: &str) -> Result<(), SharedError> {
        Err(SharedError::Timeout)
    }
    async fn begin_fill(
        &self,
        _: &str,
        _: &str,
        _: Option<Duration>,
    ) -> Result<FillTicket, SharedError> {
        Err(SharedError::Timeout)
    }
    async fn commit_fill(
        &self,
        _: &str,
        _: &FillTicket,
        _: Bytes,
        _: Duration,
    ) -> Result<bool, SharedError> {
        Err(SharedError::Timeout)
    }
    async fn abort_fill(&self, _: &str, _: &FillTicket) -> Result<(), SharedError> {
        Err(SharedError::Timeout)
    }
    async fn invalidate(&self, _: &[String]) -> Result<(), SharedError> {
        Err(SharedError::Timeout)
    }
    async fn tag_versions(&self, _: &str, _: &[String]) -> Result<Vec<u64>, SharedError> {
        Err(SharedError::Timeout)
    }
    async fn invalidate_tags(&self, _: &str, _: &[String]) -> Result<(), SharedError> {
        Err(SharedError::Timeout)
    }
    async fn clear_epochs(&self, _: &str) -> Result<ClearEpochs, SharedError> {
        Err(SharedError::Timeout)
    }
    async fn clear(&self, _: &str, _: bool, _: u64) -> Result<ClearEpochs, SharedError> {
        Err(SharedError::Timeout)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_metrics_are_exported() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    recorder.install().unwrap();

    let ns = format!("m{:x}", rand::random::<u32>());
    let bus = InProcessBus::new();
    let c: Cache<u64, String> = Cache::builder(ns.as_str())
        .bus(bus.clone())
        .build()
        .unwrap();
    let state = |m: &Snap, s| m.value("tiercache_bus_state", &[("namespace", &ns), ("state", s)]);
    until("the bus reported live", || {
        let m = Snap::take(&snap);
        state(&m, "live") == Some(1.0)
            && state(&m, "disconnected") == Some(0.0)
            && state(&m, "silent") == Some(0.0)
    })
    .await;

    for k in 0..100 {
        c.insert(&k, "v".repeat(100)).await;
    }
    until("the local tier's size reported", || {
        let m = Snap::take(&snap);
        m.value("tiercache_local_entries", &[("namespace", &ns)]) == Some(100.0)
            && m.value("tiercache_local_bytes", &[("namespace", &ns)])
                .is_some_and(|b| b >= 100.0 * 100.0)
    })
    .await;

    c.clear(ClearMode::Soft).await;
    c.clear(ClearMode::Hard).await;
    c.clear(ClearMode::Hard).await;
    let m = Snap::take(&snap);
    let clears = |mode| {
        m.value(
            "tiercache_clears_total",
            &[("namespace", &ns), ("mode", mode)],
        )
    };
    assert_eq!((clears("soft"), clears("hard")), (Some(1.0), Some(2.0)));

    // Shared-tier errors, by kind.
    let failing_ns = format!("{ns}-failing");
    let failing: Cache<u64, String> = Cache::builder(failing_ns.as_str())
        .shared_tier(TimingOut)
        .no_bus()
        .build()
        .unwrap();
    let v = failing
        .get_or_load(&1, || async { Some("v".to_string()) })
        .await;
    assert!(v.is_ok(), "fails open");
    let m = Snap::take(&snap);
    let errors = |k| {
        m.value(
            "tiercache_shared_errors_total",
            &[("namespace", &failing_ns), ("kind", k)],
        )
    };
    assert!(errors("timeout").unwrap() >= 1.0, "{:?}", errors("timeout"));
    assert_eq!(errors("server"), Some(0.0), "registered, and zero");
    assert_eq!(failing.stats().shared_errors as f64, {
        ["timeout", "breaker_open", "unavailable", "server"]
            .iter()
            .map(|k| errors(k).unwrap())
            .sum::<f64>()
    });
}
