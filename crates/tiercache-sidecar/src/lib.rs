//! tiercache-sidecar: turns Postgres row changes into shared-tier
//! invalidations and bus messages that every tiercache instance applies.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tiercache_core::backend::{InProcessBus, InProcessSharedTier, MessageCodec};
//! use tiercache_sidecar::{Config, Shutdown, Sidecar, sink::Sinks};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::parse(r#"
//!     [source]
//!     kind = "logical"                       # or "notify"
//!     database_url = "postgres://postgres@127.0.0.1:5432/app"
//!
//!     [bus]
//!     kind = "redis"
//!     url = "redis://127.0.0.1:6379"
//!
//!     [[rules]]
//!     table = "products"
//!     namespace = "products"
//!     keys = ["{id}"]
//!     tags = ["products", "category:{category}"]
//! "#)?;
//!
//! // The SQL that sets the source up (slot + REPLICA IDENTITY FULL here;
//! // trigger functions and triggers for `notify`).
//! println!("{}", tiercache_sidecar::setup_sql(&config)?);
//!
//! // Sinks from the config (Redis, NATS) ...
//! let sidecar = Sidecar::from_config(config.clone()).await?;
//! // ... or any `SharedTier` / `Bus`, e.g. the in-process ones in tests.
//! let sinks = Sinks::new(
//!     Some(Arc::new(InProcessSharedTier::default())),
//!     Some(Arc::new(InProcessBus::new())),
//!     MessageCodec::unsigned(),
//!     config.retry.clone(),
//! );
//! let sidecar = Sidecar::new(config, sinks)?;
//!
//! let (trigger, shutdown) = Shutdown::new();
//! let task = tokio::spawn(async move { sidecar.run(shutdown).await });
//! // ... later: finish the current batch and stop.
//! trigger.trigger();
//! task.await??;
//! # Ok(()) }
//! ```
//!
//! # Sources
//!
//! - **`notify`** ([`source::notify`]): per-table triggers call
//!   `pg_notify(channel, json)` with the operation and the rule columns of the
//!   old and new rows; the sidecar `LISTEN`s. Lowest latency, but at most
//!   once: nothing committed while the sidecar is down (or disconnected) is
//!   delivered, and a payload must stay under Postgres's 8000-byte limit
//!   (larger ones are cut to the table and operation, which invalidates only
//!   the rules' static tags).
//! - **`logical`** ([`source::logical`]): a logical replication slot with the
//!   built-in `test_decoding` plugin, read with
//!   `pg_logical_slot_peek_changes` and advanced with
//!   `pg_replication_slot_advance` only after the shared tier and the bus
//!   accepted every change of the batch: at least once across crashes,
//!   restarts and outages. Transactional `pg_logical_emit_message(true,
//!   'tiercache', json)` messages are explicit invalidations ([`emit`]).
//!
//! # Rules
//!
//! See [`rules`]: `{column}` templates filled from the old and new rows.
//! The shared-tier key is `KeyFormat::new(namespace, max_key_len)
//! .storage_key(key)`, so `max_key_len` must equal the application's
//! setting for that namespace (default 250).
//!
//! # Delivery
//!
//! See [`sink`]: per message, shared-tier key deletes, tag bumps, then a
//! (signed, if configured) [`tiercache_core::backend::Invalidation`] on the bus, each
//! retried with backoff; applying a change twice is harmless.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]
#![deny(unreachable_pub)]

pub mod cli;
pub mod config;
pub mod emit;
pub mod http;
pub mod rules;
pub mod sink;
pub mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

pub use config::{BusConfig, BusKind, Config, ConfigError, RedisConfig, SourceKind};
pub use rules::{RuleSet, TemplateError};
pub use sink::Sinks;

/// Everything that can stop the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (including rules that do not fit the
    /// database's tables).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A sink could not be built.
    #[error(transparent)]
    Sink(#[from] sink::SinkError),
    /// A Postgres query or the connection failed (in a `check`, or in a way
    /// that retrying cannot fix, such as a slot that cannot be created);
    /// `context` says what was being done, `source` is tokio-postgres's
    /// error (with the server's message as its own source, for an error the
    /// server sent).
    #[error("postgres: {context}: {}", PgMessage(.source))]
    Postgres {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database is not as the source needs it (`wal_level`, a slot of
    /// another plugin or database, a missing slot): retrying cannot fix it.
    #[error("postgres: {0}")]
    Unsuitable(String),
    /// The HTTP endpoint could not be served: its address cannot be bound.
    #[error("http: {context}: {source}")]
    Http {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Prometheus recorder could not be installed (shared: every call
    /// of [`http::install_recorder`] after a failed one returns it).
    #[error("metrics: {0}")]
    Metrics(#[source] Arc<metrics_exporter_prometheus::BuildError>),
}

impl Error {
    /// Wraps a tokio-postgres error into [`Error::Postgres`], saying what was
    /// being done.
    pub(crate) fn postgres(
        context: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| Error::Postgres { context, source }
    }
}

/// A tokio-postgres error with its cause: its own `Display` says only
/// `db error` for an error the server sent, and keeps the message in its
/// source.
pub(crate) struct PgMessage<'a>(pub(crate) &'a tokio_postgres::Error);

impl std::fmt::Display for PgMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        if let Some(cause) = std::error::Error::source(self.0) {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

/// Tells running tasks to stop. Made by [`Shutdown::new`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl ShutdownTrigger {
    /// Asks every [`Shutdown`] holder to stop.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

/// A shutdown signal that tasks watch; cloneable. Dropping the
/// [`ShutdownTrigger`] without triggering never fires it.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// A trigger and its signal.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// Whether shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when shutdown is asked for.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|v| *v).await.is_err() {
            futures::future::pending::<()>().await;
        }
    }

    /// Sleeps for `d`; `false` if shutdown was asked for first.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !self.is_triggered(),
            _ = self.wait() => false,
        }
    }
}

/// What the sidecar is doing, for `/healthz` and tests.
#[derive(Debug)]
pub struct Status {
    source: SourceKind,
    connected: AtomicBool,
    connections: AtomicU64,
    changes_read: AtomicU64,
    batches_applied: AtomicU64,
    last_applied_ms: AtomicI64,
    slot_lag_bytes: AtomicI64,
    notify: tokio::sync::Notify,
}

impl Status {
    fn new(source: SourceKind) -> Self {
        Self {
            source,
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            changes_read: AtomicU64::new(0),
            batches_applied: AtomicU64::new(0),
            last_applied_ms: AtomicI64::new(0),
            slot_lag_bytes: AtomicI64::new(-1),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// The source kind.
    pub fn source(&self) -> SourceKind {
        self.source
    }

    /// Whether the source connection is up (and, for `notify`, listening).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// How many times the source connected (1 after the first connection).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    /// Changes read from the source so far.
    pub fn changes_read(&self) -> u64 {
        self.changes_read.load(Ordering::Relaxed)
    }

    /// Batches fully applied so far.
    pub fn batches_applied(&self) -> u64 {
        self.batches_applied.load(Ordering::Relaxed)
    }

    /// When the last batch was applied (ms since the epoch; 0: never).
    pub fn last_applied_ms(&self) -> i64 {
        self.last_applied_ms.load(Ordering::Relaxed)
    }

    /// The slot's lag behind the WAL in bytes (`logical`; -1 when unknown).
    pub fn slot_lag_bytes(&self) -> i64 {
        self.slot_lag_bytes.load(Ordering::Relaxed)
    }

    /// Waits until the source has connected at least `n` times and is
    /// connected; `false` on timeout.
    pub async fn wait_connected(&self, n: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if self.is_connected() && self.connections() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_connected() && self.connections() >= n;
            }
        }
    }

    pub(crate) fn set_connected(&self, up: bool) {
        if up {
            self.connections.fetch_add(1, Ordering::AcqRel);
        }
        self.connected.store(up, Ordering::Release);
        metrics::gauge!("tiercache_sidecar_source_connected").set(if up { 1.0 } else { 0.0 });
        self.notify.notify_waiters();
    }

    pub(crate) fn add_changes(&self, n: u64) {
        self.changes_read.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn applied(&self) {
        self.batches_applied.fetch_add(1, Ordering::Relaxed);
        self.last_applied_ms
            .store(sink::now_us() / 1000, Ordering::Relaxed);
    }

    pub(crate) fn set_slot_lag(&self, bytes: i64) {
        self.slot_lag_bytes.store(bytes, Ordering::Relaxed);
        metrics::gauge!("tiercache_sidecar_slot_lag_bytes").set(bytes as f64);
    }
}

/// A configured sidecar: a source, the rules and the sinks.
#[derive(Debug, Clone)]
pub struct Sidecar {
    config: Arc<Config>,
    rules: Arc<RuleSet>,
    sinks: Arc<Sinks>,
    status: Arc<Status>,
}

impl Sidecar {
    /// A sidecar over `config` (validated again here) writing to `sinks`.
    pub fn new(config: Config, sinks: Sinks) -> Result<Self, Error> {
        config.validate()?;
        let rules = RuleSet::from_config(&config)?;
        Ok(Self {
            status: Arc::new(Status::new(config.source.kind)),
            config: Arc::new(config),
            rules: Arc::new(rules),
            sinks: Arc::new(sinks),
        })
    }

    /// A sidecar with the sinks the config names (Redis shared tier, NATS or
    /// Redis bus), connecting lazily: servers that are down are retried.
    pub async fn from_config(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let sinks = Sinks::from_config(&config, true).await?;
        Self::new(config, sinks)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The compiled rules.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// The sinks.
    pub fn sinks(&self) -> &Arc<Sinks> {
        &self.sinks
    }

    /// The live status.
    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    /// Reads the source and applies its changes until `shutdown` fires
    /// (finishing the batch at hand, never advancing past unapplied changes)
    /// or a fatal error. Connection trouble is retried with backoff.
    pub async fn run(&self, shutdown: Shutdown) -> Result<(), Error> {
        tracing::info!(
            source = ?self.config.source.kind,
            origin = self.sinks.instance_id(),
            rules = self.config.rules.len(),
            "tiercache-sidecar running"
        );
        let result = match self.config.source.kind {
            SourceKind::Notify => source::notify::run(self, &shutdown).await,
            SourceKind::Logical => source::logical::run(self, &shutdown).await,
        };
        // Stopping is not a crash: tell the instances, so that they do not
        // take this origin's silence for a stuck outbox.
        self.sinks.farewell().await;
        self.status.set_connected(false);
        result
    }
}

/// The SQL that sets up the configured source: trigger functions and
/// triggers (`notify`), or the slot and `REPLICA IDENTITY FULL` (`logical`).
pub fn setup_sql(config: &Config) -> Result<String, Error> {
    let rules = RuleSet::from_config(config)?;
    Ok(match config.source.kind {
        SourceKind::Notify => source::notify::setup_sql(config, &rules),
        SourceKind::Logical => source::logical::setup_sql(config, &rules),
    })
}

/// Validates the configuration against the database and connects to every
/// sink (the `check` command). Returns a human-readable report.
pub async fn check(config: &Config) -> Result<Vec<String>, Error> {
    let mut report = Vec::new();
    let rules = RuleSet::from_config(config)?;
    let context = if config.source.tls_ca_cert.is_some() {
        "cannot connect to source.database_url over TLS trusting source.tls_ca_cert"
    } else {
        "cannot connect to source.database_url"
    };
    let (client, task) = source::connect(&config.source)
        .await
        .map_err(Error::postgres(context))?;
    let result = async {
        let version: String = client
            .query_one("SHOW server_version", &[])
            .await
            .map_err(Error::postgres("SHOW server_version"))?
            .get(0);
        report.push(format!("postgres: connected (server {version})"));
        let warnings = source::validate_catalog(&client, &rules, config.source.kind).await?;
        report.push(format!(
            "rules: {} rule(s) over {} table(s) match the database",
            config.rules.len(),
            rules.tables().len()
        ));
        report.extend(warnings.into_iter().map(|w| format!("warning: {w}")));
        match config.source.kind {
            SourceKind::Notify => {
                report.extend(source::notify::check(&client, config, &rules).await?);
            }
            SourceKind::Logical => {
                report.extend(source::logical::check(&client, config).await?);
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    task.abort();
    result?;
    let sinks = Sinks::from_config(config, false).await?;
    if let Some(shared) = sinks.shared() {
        shared
            .tag_versions("tiercache-sidecar-check", &["check".to_owned()])
            .await
            .map_err(|e| Error::Sink(sink::SinkError::Redis(e.into())))?;
        report.push("redis: shared tier reachable".to_owned());
    }
    if let Some(bus) = sinks.bus() {
        // Subscribing proves the connection without publishing anything.
        let _subscription =
            bus.subscribe("tiercache-sidecar-check")
                .await
                .map_err(|e| match config.bus.kind {
                    config::BusKind::Nats => sink::SinkError::Nats(e.into()),
                    _ => sink::SinkError::Redis(e.into()),
                })?;
        report.push(format!("bus: {:?} reachable", config.bus.kind).to_lowercase());
    }
    Ok(report)
}
