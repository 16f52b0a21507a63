//! The cache builder and its validated configuration.

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::bloom::BloomGuardConfig;
use crate::bus::{Bus, InProcessBus};
use crate::clock::Clock;
use crate::error::ConfigError;
use crate::shared::{InProcessSharedTier, SharedTier};

/// The longest any duration may be: an entry's life, its grace, a timeout.
///
/// 2^31 seconds (about 68 years), the value RFC 9111 section 1.2.2 tells
/// caches to use for any larger delta-seconds. Every duration from outside
/// (a config value, an entry's TTL, an origin's header, a stored envelope's
/// times) is clamped to it before any clock arithmetic, so none can
/// overflow an `Instant` or a millisecond count.
pub(crate) const MAX_LIFE: Duration = Duration::from_secs(1 << 31);

/// The default [staleness bound](CacheBuilder::staleness_bound).
pub const DEFAULT_STALENESS_BOUND: Duration = Duration::from_millis(500);

/// The smallest staleness bound: its heartbeat (a fifth of it) must stay
/// at least 10 ms.
pub const MIN_STALENESS_BOUND: Duration = Duration::from_millis(50);

/// Validated settings of one cache.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) namespace: String,
    pub(crate) local_capacity: u64,
    pub(crate) local_ttl: Option<Duration>,
    pub(crate) ttl: Duration,
    pub(crate) ttl_jitter: f64,
    pub(crate) negative_ttl: Duration,
    pub(crate) negative_jitter: f64,
    pub(crate) soft_ttl: Option<Duration>,
    pub(crate) grace: Duration,
    pub(crate) max_key_len: usize,
    pub(crate) max_value_size: usize,
    pub(crate) compress_at: usize,
    pub(crate) batch_shared_reads: bool,
    pub(crate) lease_ttl: Option<Duration>,
    pub(crate) lease_wait: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Duration,
    pub(crate) staleness_bound: Duration,
    /// Overrides of what the bound derives (tests, special transports).
    pub(crate) unsynced_local_ttl: Option<Duration>,
    pub(crate) bus_liveness: Option<Duration>,
    /// Where the engine reads the time (the system's but in tests).
    pub(crate) clock: Clock,
}

impl Config {
    /// Silence on the bus longer than this bypasses the local tier: four
    /// fifths of the staleness bound, the rest left for the timer and the
    /// shared-tier read that follows.
    pub(crate) fn liveness(&self) -> Duration {
        self.bus_liveness
            .unwrap_or_else(|| self.staleness_bound.mul_f64(0.8))
    }

    /// The heartbeat pace asked of the bus: four proofs of life per
    /// liveness window, so one late or lost heartbeat does not trip it.
    pub(crate) fn heartbeat(&self) -> Duration {
        self.liveness() / 4
    }

    /// The cap on local life while the bus is down: the staleness bound.
    pub(crate) fn unsynced_ttl(&self) -> Duration {
        self.unsynced_local_ttl.unwrap_or(self.staleness_bound)
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: String::new(),
            local_capacity: 64 * 1024 * 1024,
            local_ttl: None,
            ttl: Duration::from_secs(300),
            ttl_jitter: 0.1,
            negative_ttl: Duration::from_secs(30),
            negative_jitter: 0.1,
            soft_ttl: None,
            grace: Duration::ZERO,
            max_key_len: 250,
            max_value_size: 1024 * 1024,
            compress_at: 1024,
            batch_shared_reads: true,
            lease_ttl: Some(Duration::from_secs(5)),
            lease_wait: Duration::from_millis(200),
            soft_timeout: None,
            hard_timeout: Duration::from_secs(30),
            staleness_bound: DEFAULT_STALENESS_BOUND,
            unsynced_local_ttl: None,
            bus_liveness: None,
            clock: Clock::default(),
        }
    }
}

/// Where the shared tier and bus come from.
pub(crate) enum Backend<T: ?Sized> {
    /// The process-wide in-process default.
    Embedded,
    /// None at all.
    Off,
    /// Given by the user.
    Given(Arc<T>),
}

/// The process-wide embedded shared tier: every cache built without
/// [`CacheBuilder::shared_tier`] in this process shares it.
pub fn embedded_shared_tier() -> &'static InProcessSharedTier {
    static TIER: OnceLock<InProcessSharedTier> = OnceLock::new();
    TIER.get_or_init(InProcessSharedTier::default)
}

/// The process-wide embedded bus: every cache built without
/// [`CacheBuilder::bus`] in this process shares it.
pub fn embedded_bus() -> &'static InProcessBus {
    static BUS: OnceLock<InProcessBus> = OnceLock::new();
    BUS.get_or_init(InProcessBus::new)
}

/// Builds a [`Cache`](crate::Cache). Start with
/// [`Cache::builder`](crate::Cache::builder); every setting has a default
/// suited to a web service, and [`build`](Self::build) checks them all,
/// naming the field at fault.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tiercache_core::Cache;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // The embedded default: a local tier plus the process-wide in-process
/// // shared tier and bus. `.shared_tier(..)` and `.bus(..)` take Redis or
/// // NATS instead; `.local_only()` keeps to the local tier.
/// let users: Cache<u64, String> = Cache::builder("doc-builder")
///     .ttl(Duration::from_secs(300))
///     .negative_ttl(Duration::from_secs(30))
///     .grace(Duration::from_secs(60))
///     .local_capacity(16 * 1024 * 1024)
///     .build()?;
/// assert_eq!(users.namespace(), "doc-builder");
/// # Ok(()) }
/// ```
#[must_use]
pub struct CacheBuilder<K, V> {
    pub(crate) config: Config,
    pub(crate) shared: Backend<dyn SharedTier>,
    pub(crate) bus: Backend<dyn Bus>,
    pub(crate) bloom: Option<BloomGuardConfig>,
    pub(crate) signing_key: Option<Vec<u8>>,
    pub(crate) _types: PhantomData<fn(K) -> V>,
}

impl<T: ?Sized> Backend<T> {
    fn describe(&self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Off => "off",
            Backend::Given(_) => "given",
        }
    }
}

impl<K, V> std::fmt::Debug for CacheBuilder<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("config", &self.config)
            .field("shared", &self.shared.describe())
            .field("bus", &self.bus.describe())
            .field("bloom_guard", &self.bloom.is_some())
            .field("signed", &self.signing_key.is_some())
            .finish()
    }
}

impl<K, V> CacheBuilder<K, V> {
    pub(crate) fn new(namespace: impl Into<String>) -> Self {
        Self {
            config: Config {
                namespace: namespace.into(),
                ..Config::default()
            },
            shared: Backend::Embedded,
            bus: Backend::Embedded,
            bloom: None,
            signing_key: None,
            _types: PhantomData,
        }
    }

    /// Bytes the local tier may hold. An entry weighs its value's encoded
    /// size (before compression) plus a fixed 512 bytes, what moka and the
    /// engine keep per entry as measured by `benches/memory.rs`, so the
    /// tier's resident memory stays near this bound (within 1.5x of it,
    /// plus a fixed base) whatever the values' sizes. 0 turns the local
    /// tier off. Default 64 MiB.
    pub fn local_capacity(mut self, local_capacity: u64) -> Self {
        self.config.local_capacity = local_capacity;
        self
    }

    /// The longest an entry lives in the local tier (at most its TTL).
    /// Default: the TTL.
    pub fn local_ttl(mut self, local_ttl: Duration) -> Self {
        self.config.local_ttl = Some(local_ttl);
        self
    }

    /// How long a value is fresh. Default 5 minutes.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// Spread of TTLs, as a fraction in [0, 1): each entry lives between
    /// `ttl * (1 - jitter)` and `ttl`, so a batch filled together does not
    /// expire together. Default 0.1.
    pub fn ttl_jitter(mut self, ttl_jitter: f64) -> Self {
        self.config.ttl_jitter = ttl_jitter;
        self
    }

    /// How long "the origin has no such item" is cached. Default 30 s.
    pub fn negative_ttl(mut self, negative_ttl: Duration) -> Self {
        self.config.negative_ttl = negative_ttl;
        self
    }

    /// Spread of negative TTLs, as [`ttl_jitter`](Self::ttl_jitter). Default 0.1.
    pub fn negative_jitter(mut self, negative_jitter: f64) -> Self {
        self.config.negative_jitter = negative_jitter;
        self
    }

    /// Refresh-ahead: an entry older than this (and still fresh) is served
    /// and refreshed in the background, once. Must be below the TTL.
    pub fn soft_ttl(mut self, soft_ttl: Duration) -> Self {
        self.config.soft_ttl = Some(soft_ttl);
        self
    }

    /// How long past its TTL a value may be served when the origin fails
    /// or is slow. Default 0 (never stale).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.config.grace = grace;
        self
    }

    /// Storage keys longer than this are hashed. Default 250 bytes.
    pub fn max_key_len(mut self, max_key_len: usize) -> Self {
        self.config.max_key_len = max_key_len;
        self
    }

    /// Encoded values larger than this are served but not cached. Default 1 MiB.
    pub fn max_value_size(mut self, max_value_size: usize) -> Self {
        self.config.max_value_size = max_value_size;
        self
    }

    /// Encoded values at least this large are lz4-compressed in the
    /// shared tier. Default 1 KiB.
    pub fn compress_at(mut self, compress_at: usize) -> Self {
        self.config.compress_at = compress_at;
        self
    }

    /// Whether shared-tier reads that arrive while another is in flight are
    /// sent together, as one `get_many` (`MGET` on Redis). A read with
    /// none in flight goes out alone at once; a batch waits on no timer,
    /// only for the tasks already runnable to join it. Under many
    /// concurrent local misses (a fresh instance under load) this costs the
    /// shared tier one command per batch instead of one per key; see
    /// `benches/shared_hit.rs`. Default on.
    pub fn batch_shared_reads(mut self, on: bool) -> Self {
        self.config.batch_shared_reads = on;
        self
    }

    /// How long a caller waits for another instance holding a key's lease
    /// before loading itself (or serving stale). Default 200 ms.
    pub fn lease_wait(mut self, lease_wait: Duration) -> Self {
        self.config.lease_wait = lease_wait;
        self
    }

    /// After this long, a load with a stale value at hand (within grace)
    /// answers with it while the load goes on. Default: off.
    pub fn soft_timeout(mut self, soft_timeout: Duration) -> Self {
        self.config.soft_timeout = Some(soft_timeout);
        self
    }

    /// After this long a load is abandoned and its waiters get
    /// [`Error::Timeout`](crate::Error::Timeout). Default 30 s.
    pub fn hard_timeout(mut self, hard_timeout: Duration) -> Self {
        self.config.hard_timeout = hard_timeout;
        self
    }

    /// The promise, in one number: no read serves a value older than a
    /// committed change for longer than this after the change reached
    /// the sidecar (or the writer invalidated), whatever the bus does.
    /// Default 500 ms, at least 50 ms.
    ///
    /// The rest follows from it: the bus is asked for a heartbeat every
    /// fifth of it; silence for four fifths of it bypasses the local
    /// tier (reads go through the shared tier) until the bus is heard
    /// again; while the bus is down, local entries live at most the
    /// bound. A smaller bound costs more heartbeats (one message per
    /// heartbeat per instance and transport connection) and more
    /// shared-tier reads during a hiccup.
    pub fn staleness_bound(mut self, staleness_bound: Duration) -> Self {
        self.config.staleness_bound = staleness_bound;
        self
    }

    /// Overrides the cap on local life while the bus is down. Default:
    /// the [staleness bound](Self::staleness_bound); longer breaks it.
    pub fn unsynced_local_ttl(mut self, unsynced_local_ttl: Duration) -> Self {
        self.config.unsynced_local_ttl = Some(unsynced_local_ttl);
        self
    }

    /// Overrides the silence on the bus (no message, no heartbeat)
    /// after which the local tier is bypassed until the bus is heard
    /// again. Default: four fifths of the
    /// [staleness bound](Self::staleness_bound); at most the bound.
    pub fn bus_liveness(mut self, bus_liveness: Duration) -> Self {
        self.config.bus_liveness = Some(bus_liveness);
        self
    }

    /// Cross-instance leases: one instance loads a missing key while others
    /// wait up to [`lease_wait`](Self::lease_wait); a lease lapses after
    /// `lease_ttl` if its holder never finishes. Default: leases of 5 s
    /// ([`no_leases`](Self::no_leases) turns them off).
    pub fn lease_ttl(mut self, lease_ttl: Duration) -> Self {
        self.config.lease_ttl = Some(lease_ttl);
        self
    }

    /// No cross-instance leases: every instance that misses a key loads it
    /// (one load per key per process still).
    pub fn no_leases(mut self) -> Self {
        self.config.lease_ttl = None;
        self
    }

    /// The shared tier (Redis, from `tiercache-redis`). Default: the
    /// process-wide in-process tier ([`embedded_shared_tier`]).
    pub fn shared_tier<S: SharedTier>(mut self, tier: S) -> Self {
        self.shared = Backend::Given(Arc::new(tier));
        self
    }

    /// [`shared_tier`](Self::shared_tier) from an `Arc`, possibly shared.
    pub fn shared_tier_arc(mut self, tier: Arc<dyn SharedTier>) -> Self {
        self.shared = Backend::Given(tier);
        self
    }

    /// No shared tier: local tier and origin only.
    pub fn no_shared_tier(mut self) -> Self {
        self.shared = Backend::Off;
        self
    }

    /// The invalidation bus (NATS from `tiercache-nats`, Redis pub/sub from
    /// `tiercache-redis`). Default: the process-wide in-process bus
    /// ([`embedded_bus`]).
    pub fn bus<B: Bus>(mut self, bus: B) -> Self {
        self.bus = Backend::Given(Arc::new(bus));
        self
    }

    /// [`bus`](Self::bus) from an `Arc`, possibly shared.
    pub fn bus_arc(mut self, bus: Arc<dyn Bus>) -> Self {
        self.bus = Backend::Given(bus);
        self
    }

    /// No bus: invalidations stay in this process.
    pub fn no_bus(mut self) -> Self {
        self.bus = Backend::Off;
        self
    }

    /// Local tier only: no shared tier and no bus.
    pub fn local_only(self) -> Self {
        self.no_shared_tier().no_bus()
    }

    /// Sign bus messages with this shared key and accept only messages signed
    /// with it.
    pub fn signing_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.signing_key = Some(key.into());
        self
    }

    /// Reads the time from `clock` instead of the system's: for tests that
    /// advance time (the `test-util` feature; not an API).
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn clock(mut self, clock: crate::MockClock) -> Self {
        self.config.clock = Clock::Mock(clock);
        self
    }

    /// Turns on the Bloom guard.
    pub fn bloom_guard(mut self, config: BloomGuardConfig) -> Self {
        self.bloom = Some(config);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let ns = &c.namespace;
        if ns.is_empty() {
            return Err(ConfigError::new("namespace", "must not be empty"));
        }
        if ns.len() > 64
            || ns
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control() || "{}:*>".contains(ch))
        {
            return Err(ConfigError::new(
                "namespace",
                "at most 64 characters, without whitespace, control characters or any of { } : * >",
            ));
        }
        if c.ttl.is_zero() {
            return Err(ConfigError::new("ttl", "must be greater than zero"));
        }
        for (field, d) in [
            ("ttl", Some(c.ttl)),
            ("negative_ttl", Some(c.negative_ttl)),
            ("local_ttl", c.local_ttl),
            ("soft_ttl", c.soft_ttl),
            ("grace", Some(c.grace)),
            ("lease_ttl", c.lease_ttl),
            ("lease_wait", Some(c.lease_wait)),
            ("soft_timeout", c.soft_timeout),
            ("hard_timeout", Some(c.hard_timeout)),
            ("staleness_bound", Some(c.staleness_bound)),
            ("unsynced_local_ttl", c.unsynced_local_ttl),
            ("bus_liveness", c.bus_liveness),
        ] {
            if d.is_some_and(|d| d > MAX_LIFE) {
                return Err(ConfigError::new(
                    field,
                    format!("must be at most {} s (about 68 years)", MAX_LIFE.as_secs()),
                ));
            }
        }
        for (field, j) in [
            ("ttl_jitter", c.ttl_jitter),
            ("negative_jitter", c.negative_jitter),
        ] {
            if !(0.0..1.0).contains(&j) {
                return Err(ConfigError::new(
                    field,
                    format!("must be in [0, 1), got {j}"),
                ));
            }
        }
        if let Some(soft) = c.soft_ttl
            && (soft.is_zero() || soft >= c.ttl)
        {
            return Err(ConfigError::new(
                "soft_ttl",
                "must be above zero and below ttl",
            ));
        }
        if c.max_key_len < 48 {
            return Err(ConfigError::new(
                "max_key_len",
                "must be at least 48 (a hashed key's length)",
            ));
        }
        if c.max_value_size == 0 {
            return Err(ConfigError::new(
                "max_value_size",
                "must be greater than zero",
            ));
        }
        if c.hard_timeout.is_zero() {
            return Err(ConfigError::new(
                "hard_timeout",
                "must be greater than zero",
            ));
        }
        if let Some(soft) = c.soft_timeout
            && soft >= c.hard_timeout
        {
            return Err(ConfigError::new(
                "soft_timeout",
                "must be below hard_timeout",
            ));
        }
        if let Some(lease) = c.lease_ttl
            && lease.is_zero()
        {
            return Err(ConfigError::new(
                "lease_ttl",
                "must be greater than zero (no_leases() turns leases off)",
            ));
        }
        if c.staleness_bound < MIN_STALENESS_BOUND {
            return Err(ConfigError::new(
                "staleness_bound",
                format!("must be at least {} ms", MIN_STALENESS_BOUND.as_millis()),
            ));
        }
        if let Some(l) = c.bus_liveness
            && (l.is_zero() || l > c.staleness_bound)
        {
            return Err(ConfigError::new(
                "bus_liveness",
                "must be above zero and at most staleness_bound",
            ));
        }
        if let Some(t) = c.unsynced_local_ttl
            && t > c.staleness_bound
        {
            return Err(ConfigError::new(
                "unsynced_local_ttl",
                "must be at most staleness_bound",
            ));
        }
        if let Some(b) = &self.bloom {
            if !(b.false_positive_rate > 0.0 && b.false_positive_rate < 1.0) {
                return Err(ConfigError::new(
                    "bloom_guard.false_positive_rate",
                    "must be in (0, 1)",
                ));
            }
            if b.rebuild_every.is_zero() {
                return Err(ConfigError::new(
                    "bloom_guard.rebuild_every",
                    "must be greater than zero",
                ));
            }
        }
        if self.signing_key.as_ref().is_some_and(|k| k.len() < 16) {
            return Err(ConfigError::new("signing_key", "must be at least 16 bytes"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Builder = CacheBuilder<u64, String>;
    /// A builder's duration setter.
    type SetDuration = fn(Builder, Duration) -> Builder;

    fn builder() -> Builder {
        CacheBuilder::new("ok")
    }

    /// The field `b` is refused for, checking the message names it too.
    fn refused(b: Builder) -> &'static str {
        let e = b.validate().expect_err("refused");
        assert!(
            e.to_string().contains(&format!("`{}`", e.field)),
            "the message names the field: {e}"
        );
        e.field
    }

    fn bloom() -> BloomGuardConfig {
        BloomGuardConfig::new(|| async { Ok::<Vec<String>, std::convert::Infallible>(vec![]) })
    }

    #[test]
    fn the_defaults_are_valid_and_as_documented() {
        let b = builder();
        assert_eq!(b.validate(), Ok(()));
        let c = &b.config;
        assert_eq!(c.namespace, "ok");
        assert_eq!(c.local_capacity, 64 * 1024 * 1024);
        assert_eq!(c.local_ttl, None);
        assert_eq!(c.ttl, Duration::from_secs(300));
        assert_eq!((c.ttl_jitter, c.negative_jitter), (0.1, 0.1));
        assert_eq!(c.negative_ttl, Duration::from_secs(30));
        assert_eq!((c.soft_ttl, c.grace), (None, Duration::ZERO));
        assert_eq!(c.max_key_len, 250);
        assert_eq!(c.max_value_size, 1024 * 1024);
        assert_eq!(c.compress_at, 1024);
        assert_eq!(c.lease_ttl, Some(Duration::from_secs(5)));
        assert_eq!(c.lease_wait, Duration::from_millis(200));
        assert_eq!(c.soft_timeout, None);
        assert_eq!(c.hard_timeout, Duration::from_secs(30));
        assert_eq!(c.staleness_bound, DEFAULT_STALENESS_BOUND);
        assert!(matches!(c.clock, Clock::System));
        assert!(matches!(b.shared, Backend::Embedded));
        assert!(matches!(b.bus, Backend::Embedded));
        assert!(b.bloom.is_none() && b.signing_key.is_none());
    }

    #[test]
    fn the_bus_windows_follow_from_the_staleness_bound() {
        let c = builder().config;
        assert_eq!(c.liveness(), Duration::from_millis(400), "four fifths");
        assert_eq!(
            c.heartbeat(),
            Duration::from_millis(100),
            "a quarter of that"
        );
        assert_eq!(
            c.unsynced_ttl(),
            DEFAULT_STALENESS_BOUND,
            "the bound itself"
        );
        let c = builder().staleness_bound(Duration::from_secs(2)).config;
        assert_eq!(
            (c.liveness(), c.heartbeat(), c.unsynced_ttl()),
            (
                Duration::from_millis(1600),
                Duration::from_millis(400),
                Duration::from_secs(2)
            )
        );
        let c = builder()
            .bus_liveness(Duration::from_millis(200))
            .unsynced_local_ttl(Duration::from_millis(300))
            .config;
        assert_eq!(c.liveness(), Duration::from_millis(200), "overridden");
        assert_eq!(c.heartbeat(), Duration::from_millis(50));
        assert_eq!(c.unsynced_ttl(), Duration::from_millis(300), "overridden");
    }

    #[test]
    fn namespaces_are_checked() {
        assert_eq!(refused(CacheBuilder::new("")), "namespace");
        assert_eq!(refused(CacheBuilder::new("a".repeat(65))), "namespace");
        assert_eq!(
            CacheBuilder::<u64, String>::new("a".repeat(64)).validate(),
            Ok(())
        );
        for bad in [
            "has space",
            "tab\t",
            "nl\n",
            "ctl\u{7}",
            "{",
            "}",
            "a:b",
            "*",
            ">",
        ] {
            assert_eq!(refused(CacheBuilder::new(bad)), "namespace", "{bad:?}");
        }
        for good in ["orders", "app.users-v2", "UPPER_lower", "café"] {
            assert_eq!(
                CacheBuilder::<u64, String>::new(good).validate(),
                Ok(()),
                "{good}"
            );
        }
    }

    #[test]
    fn every_duration_is_bounded_by_max_life() {
        let over = MAX_LIFE + Duration::from_secs(1);
        let cases: [(&str, SetDuration); 12] = [
            ("ttl", Builder::ttl),
            ("negative_ttl", Builder::negative_ttl),
            ("local_ttl", Builder::local_ttl),
            ("soft_ttl", Builder::soft_ttl),
            ("grace", Builder::grace),
            ("lease_ttl", Builder::lease_ttl),
            ("lease_wait", Builder::lease_wait),
            ("soft_timeout", Builder::soft_timeout),
            ("hard_timeout", Builder::hard_timeout),
            ("staleness_bound", Builder::staleness_bound),
            ("unsynced_local_ttl", Builder::unsynced_local_ttl),
            ("bus_liveness", Builder::bus_liveness),
        ];
        for (field, set) in cases {
            assert_eq!(refused(set(builder(), over)), field);
            assert_eq!(refused(set(builder(), Duration::MAX)), field);
        }
        // MAX_LIFE itself is allowed.
        let b = builder()
            .ttl(MAX_LIFE)
            .negative_ttl(MAX_LIFE)
            .grace(MAX_LIFE)
            .local_ttl(MAX_LIFE)
            .hard_timeout(MAX_LIFE)
            .lease_ttl(MAX_LIFE)
            .lease_wait(MAX_LIFE)
            .staleness_bound(MAX_LIFE);
        assert_eq!(b.validate(), Ok(()));
    }

    #[test]
    fn jitters_are_fractions_below_one() {
        for j in [0.0, 0.5, 0.999] {
            assert_eq!(
                builder().ttl_jitter(j).negative_jitter(j).validate(),
                Ok(())
            );
        }
        for j in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
            assert_eq!(refused(builder().ttl_jitter(j)), "ttl_jitter", "{j}");
            assert_eq!(
                refused(builder().negative_jitter(j)),
                "negative_jitter",
                "{j}"
            );
        }
    }

    #[test]
    fn each_rule_names_its_field() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let cases: Vec<(&str, Builder)> = vec![
            ("ttl", builder().ttl(Duration::ZERO)),
            ("soft_ttl", builder().soft_ttl(Duration::ZERO)),
            ("soft_ttl", builder().ttl(s(60)).soft_ttl(s(60))),
            ("max_key_len", builder().max_key_len(47)),
            ("max_value_size", builder().max_value_size(0)),
            ("hard_timeout", builder().hard_timeout(Duration::ZERO)),
            (
                "soft_timeout",
                builder().soft_timeout(s(30)).hard_timeout(s(30)),
            ),
            ("lease_ttl", builder().lease_ttl(Duration::ZERO)),
            ("staleness_bound", builder().staleness_bound(ms(49))),
            ("bus_liveness", builder().bus_liveness(Duration::ZERO)),
            (
                "bus_liveness",
                builder().staleness_bound(ms(100)).bus_liveness(ms(101)),
            ),
            (
                "unsynced_local_ttl",
                builder()
                    .staleness_bound(ms(100))
                    .unsynced_local_ttl(ms(101)),
            ),
            (
                "bloom_guard.false_positive_rate",
                builder().bloom_guard(bloom().false_positive_rate(0.0)),
            ),
            (
                "bloom_guard.false_positive_rate",
                builder().bloom_guard(bloom().false_positive_rate(1.0)),
            ),
            (
                "bloom_guard.false_positive_rate",
                builder().bloom_guard(bloom().false_positive_rate(f64::NAN)),
            ),
            (
                "bloom_guard.rebuild_every",
                builder().bloom_guard(bloom().rebuild_every(Duration::ZERO)),
            ),
            ("signing_key", builder().signing_key(vec![0u8; 15])),
        ];
        for (field, b) in cases {
            assert_eq!(refused(b), field);
        }
    }

    #[test]
    fn values_at_each_limit_are_accepted() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let b = builder()
            .ttl(s(60))
            .soft_ttl(s(59))
            .max_key_len(48)
            .max_value_size(1)
            .soft_timeout(ms(999))
            .hard_timeout(s(1))
            .staleness_bound(MIN_STALENESS_BOUND)
            .bus_liveness(MIN_STALENESS_BOUND)
            .unsynced_local_ttl(MIN_STALENESS_BOUND)
            .bloom_guard(bloom().false_positive_rate(0.5).rebuild_every(ms(1)))
            .signing_key(vec![0u8; 16]);
        assert_eq!(b.validate(), Ok(()));
        // A zero local capacity turns the local tier off; no leases at all
        // is not a zero lease.
        assert_eq!(builder().local_capacity(0).no_leases().validate(), Ok(()));
        assert_eq!(builder().no_leases().config.lease_ttl, None);
    }

    #[test]
    fn local_only_turns_off_both_backends() {
        let b = builder().local_only();
        assert!(matches!(b.shared, Backend::Off) && matches!(b.bus, Backend::Off));
        let shown = format!("{b:?}");
        assert!(
            shown.contains("shared: \"off\"") && shown.contains("bus: \"off\""),
            "{shown}"
        );
        let b = builder()
            .no_bus()
            .shared_tier(InProcessSharedTier::default())
            .signing_key(vec![7u8; 32]);
        assert!(matches!(b.shared, Backend::Given(_)) && matches!(b.bus, Backend::Off));
        let shown = format!("{b:?}");
        assert!(
            shown.contains("shared: \"given\"") && shown.contains("signed: true"),
            "{shown}"
        );
        assert!(
            !shown.contains("7, 7"),
            "the key itself is not shown: {shown}"
        );
    }
}
