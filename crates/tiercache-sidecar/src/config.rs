//! The sidecar's configuration: a TOML file, environment overrides for URLs
//! and secrets, and validation that names the field at fault.
//!
//! ```toml
//! [source]
//! kind = "logical"                 # or "notify"
//! database_url = "postgres://tiercache@db/app"   # env TIERCACHE_DATABASE_URL
//! slot = "tiercache"               # logical: the replication slot
//! channel = "tiercache"            # notify: the LISTEN channel
//! poll_interval_ms = 50            # logical: idle poll interval
//! tls_ca_cert = "/etc/tiercache/pg-ca.pem"     # TLS to Postgres trusting this CA (env TIERCACHE_DATABASE_TLS_CA_CERT)
//!
//! [redis]                          # optional: the shared tier
//! url = "redis://cache:6379"       # env TIERCACHE_REDIS_URL
//! # or: sentinels = ["redis://s1:26379", ...] + master = "mymaster"
//! # or: cluster = ["redis://n1:6379", ...]
//! password = "..."                 # env TIERCACHE_REDIS_PASSWORD
//! tls_ca_cert = "/etc/tiercache/redis-ca.pem"  # trust this CA for rediss:// (env TIERCACHE_REDIS_TLS_CA_CERT)
//! tls = false                      # TLS to Sentinel-found masters / Cluster nodes
//!
//! [bus]
//! kind = "nats"                    # "nats", "redis" or "none"
//! url = "nats://bus:4222"          # env TIERCACHE_NATS_URL (nats) / TIERCACHE_BUS_URL
//! signing_key = "..."              # env TIERCACHE_SIGNING_KEY
//! tls_ca_cert = "/etc/tiercache/nats-ca.pem"   # env TIERCACHE_BUS_TLS_CA_CERT (redis bus: defaults to redis.tls_ca_cert)
//! require_tls = true               # NATS: refuse a server without TLS
//! token = "..."                    # NATS: env TIERCACHE_NATS_TOKEN
//! # or: user = "sidecar" + password = "..." (env TIERCACHE_NATS_USER / TIERCACHE_NATS_PASSWORD)
//! # or: credentials_file = "/etc/tiercache/sidecar.creds"
//!
//! [http]
//! listen = "127.0.0.1:9187"        # env TIERCACHE_HTTP_LISTEN
//!
//! [[rules]]
//! table = "products"
//! schema = "public"
//! namespace = "products"
//! keys = ["{id}"]
//! tags = ["products", "category:{category}"]
//! max_key_len = 250                # must match the application's cache setting
//! ```
//!
//! Environment overrides (applied after the file is read, before validation):
//!
//! | variable | sets |
//! |---|---|
//! | `TIERCACHE_DATABASE_URL` | `source.database_url` |
//! | `TIERCACHE_REDIS_URL` | `redis.url` (creating `[redis]`), and `bus.url` when `bus.kind = "redis"` has none |
//! | `TIERCACHE_REDIS_PASSWORD` | `redis.password` (and the Redis bus's password) |
//! | `TIERCACHE_NATS_URL` | `bus.url` when `bus.kind = "nats"` |
//! | `TIERCACHE_BUS_URL` | `bus.url` whatever the kind |
//! | `TIERCACHE_SIGNING_KEY` | `bus.signing_key` |
//! | `TIERCACHE_DATABASE_TLS_CA_CERT` | `source.tls_ca_cert` |
//! | `TIERCACHE_REDIS_TLS_CA_CERT` | `redis.tls_ca_cert` (creating `[redis]`) |
//! | `TIERCACHE_BUS_TLS_CA_CERT` | `bus.tls_ca_cert` |
//! | `TIERCACHE_NATS_TOKEN` | `bus.token` |
//! | `TIERCACHE_NATS_USER` | `bus.user` |
//! | `TIERCACHE_NATS_PASSWORD` | `bus.password` |
//! | `TIERCACHE_HTTP_LISTEN` | `http.listen` |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::rules::Template;

/// The default maximum storage key length (`KeyFormat`), tiercache's default.
pub const DEFAULT_MAX_KEY_LEN: usize = 250;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or does not fit the schema (serde's message,
    /// with the line, column and field path).
    #[error("config file {path}: {source}")]
    Parse {
        /// The file (or `<string>`).
        path: String,
        /// TOML/serde's error.
        #[source]
        source: toml::de::Error,
    },
    /// A key or tag template cannot be parsed.
    #[error("{field}: {source}")]
    Template {
        /// The template at fault, e.g. `rules[1].keys[0]`.
        field: String,
        /// What is wrong with it.
        #[source]
        source: crate::rules::TemplateError,
    },
    /// A value is out of range or inconsistent with others.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field at fault, e.g. `rules[1].keys[0]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    /// A validation error on `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where changes come from.
    pub source: SourceConfig,
    /// The shared tier to invalidate (optional).
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    /// The bus to publish on.
    #[serde(default)]
    pub bus: BusConfig,
    /// The health and metrics endpoint.
    #[serde(default)]
    pub http: HttpConfig,
    /// Retry backoff of the sinks and of reconnects.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Which tables map to which keys and tags.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// The kind of change source.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Triggers call `pg_notify`; the sidecar LISTENs. Lowest latency; nothing
    /// is delivered while the sidecar is down.
    Notify,
    /// A logical replication slot (`test_decoding`) read through the SQL
    /// functions. At-least-once across sidecar restarts.
    Logical,
}

/// `[source]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `notify` or `logical`.
    pub kind: SourceKind,
    /// `postgres://user:password@host:port/db` (env `TIERCACHE_DATABASE_URL`).
    #[serde(default)]
    pub database_url: Option<String>,
    /// The NOTIFY channel (`notify`).
    #[serde(default = "default_name")]
    pub channel: String,
    /// The replication slot (`logical`).
    #[serde(default = "default_name")]
    pub slot: String,
    /// Create the slot when it does not exist (`logical`, default true).
    #[serde(default = "default_true")]
    pub create_slot: bool,
    /// How long to wait between polls of an idle slot, in ms (`logical`).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// How many changes to read per poll, at most (whole transactions are
    /// always read, so a batch may be larger) (`logical`).
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// After this long without changes, if the slot lags the WAL by more than
    /// `heartbeat_min_lag_bytes`, emit a non-transactional heartbeat message
    /// so the slot can advance over WAL that has nothing for it (other
    /// databases, checkpoints) (`logical`; 0 disables).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// See `heartbeat_ms`.
    #[serde(default = "default_heartbeat_min_lag_bytes")]
    pub heartbeat_min_lag_bytes: u64,
    /// How often to check that an idle connection is alive, in ms.
    #[serde(default = "default_keepalive_ms")]
    pub keepalive_ms: u64,
    /// Connect timeout, in ms.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A PEM file of the CA(s) to trust for TLS to Postgres (env
    /// `TIERCACHE_DATABASE_TLS_CA_CERT`). Set, the connection uses TLS
    /// (`sslmode=require` unless the URL says otherwise) and the server's
    /// certificate must be signed by it. Unset, TLS is used only when the
    /// URL asks for it (`sslmode=require`, trusting the system's roots).
    #[serde(default)]
    pub tls_ca_cert: Option<PathBuf>,
}

/// `[redis]`: the shared tier. Exactly one of `url`, `sentinels` + `master`,
/// `cluster`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// A standalone server (env `TIERCACHE_REDIS_URL`).
    #[serde(default)]
    pub url: Option<String>,
    /// Sentinel URLs.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The Sentinel master name.
    #[serde(default)]
    pub master: Option<String>,
    /// Cluster node URLs.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// ACL user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (env `TIERCACHE_REDIS_PASSWORD`).
    #[serde(default)]
    pub password: Option<String>,
    /// Per-call time budget, in ms.
    #[serde(default = "default_redis_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// A PEM file of the CA(s) to trust for TLS (`rediss://`, or `tls`)
    /// instead of the system's roots (env `TIERCACHE_REDIS_TLS_CA_CERT`).
    #[serde(default)]
    pub tls_ca_cert: Option<PathBuf>,
    /// TLS to Sentinel-discovered masters and Cluster nodes (a standalone
    /// server takes a `rediss://` URL).
    #[serde(default)]
    pub tls: bool,
}

/// The kind of bus.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// NATS core subjects.
    Nats,
    /// Redis pub/sub.
    Redis,
    /// No bus: only the shared tier is invalidated.
    #[default]
    None,
}

/// `[bus]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// `nats`, `redis` or `none`.
    #[serde(default)]
    pub kind: BusKind,
    /// The server (env `TIERCACHE_NATS_URL`, `TIERCACHE_BUS_URL`; for `redis`
    /// defaults to `redis.url`).
    #[serde(default)]
    pub url: Option<String>,
    /// NATS subject prefix / Redis channel prefix (each bus's default when
    /// absent); must match the applications'.
    #[serde(default)]
    pub subject_prefix: Option<String>,
    /// The shared HMAC key messages are signed with (env
    /// `TIERCACHE_SIGNING_KEY`); must match the applications'.
    #[serde(default)]
    pub signing_key: Option<String>,
    /// NATS only: publish into this JetStream stream (created when missing)
    /// and wait for its ack, instead of a core publish. A core publish counts
    /// as done once the client has buffered it, so a message published in
    /// the instant before the client notices a dead server can be lost;
    /// with JetStream the sidecar retries until the server has stored it.
    #[serde(default)]
    pub jetstream: Option<String>,
    /// A PEM file of the CA(s) to trust for the bus's TLS (env
    /// `TIERCACHE_BUS_TLS_CA_CERT`); a Redis bus defaults to
    /// `redis.tls_ca_cert`.
    #[serde(default)]
    pub tls_ca_cert: Option<PathBuf>,
    /// NATS only: refuse a server that does not speak TLS.
    #[serde(default)]
    pub require_tls: bool,
    /// NATS only: an auth token (env `TIERCACHE_NATS_TOKEN`).
    #[serde(default)]
    pub token: Option<String>,
    /// NATS only: a user name, with `password` (env `TIERCACHE_NATS_USER`).
    #[serde(default)]
    pub user: Option<String>,
    /// NATS only: the password of `user` (env `TIERCACHE_NATS_PASSWORD`).
    #[serde(default)]
    pub password: Option<String>,
    /// NATS only: a `.creds` file (JWT and NKey seed).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
}

/// `[http]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where `/healthz` and `/metrics` are served (env `TIERCACHE_HTTP_LISTEN`);
    /// an empty string disables the endpoint.
    #[serde(default = "default_listen")]
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

/// `[retry]`: exponential backoff.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// The first delay, in ms.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_ms: u64,
    /// The largest delay, in ms.
    #[serde(default = "default_max_backoff_ms")]
    pub max_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial_ms: default_initial_backoff_ms(),
            max_ms: default_max_backoff_ms(),
        }
    }
}

impl RetryConfig {
    /// The first delay.
    pub fn initial(&self) -> Duration {
        Duration::from_millis(self.initial_ms)
    }
    /// The largest delay.
    pub fn max(&self) -> Duration {
        Duration::from_millis(self.max_ms)
    }
}

/// `[[rules]]`: how one table's rows map to keys and tags of a namespace.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The table.
    pub table: String,
    /// Its schema.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The cache namespace (the `Cache::builder(namespace)` of the app).
    pub namespace: String,
    /// Key templates: the application's rendered keys, without namespace,
    /// with `{column}` placeholders (`{{` and `}}` for literal braces).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Tag templates, like keys.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The application's maximum storage key length for this namespace
    /// (storage keys longer than this are hashed); default 250.
    #[serde(default = "default_max_key_len")]
    pub max_key_len: usize,
}

fn default_name() -> String {
    "tiercache".into()
}
fn default_true() -> bool {
    true
}
fn default_poll_interval_ms() -> u64 {
    50
}
fn default_batch_size() -> u32 {
    1000
}
fn default_heartbeat_ms() -> u64 {
    10_000
}
fn default_heartbeat_min_lag_bytes() -> u64 {
    64 * 1024
}
fn default_keepalive_ms() -> u64 {
    5_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_redis_call_timeout_ms() -> u64 {
    1_000
}
fn default_listen() -> String {
    "127.0.0.1:9187".into()
}
fn default_initial_backoff_ms() -> u64 {
    50
}
fn default_max_backoff_ms() -> u64 {
    5_000
}
fn default_schema() -> String {
    "public".into()
}
fn default_max_key_len() -> usize {
    DEFAULT_MAX_KEY_LEN
}

impl Config {
    /// Reads `path`, applies the process environment's overrides and
    /// validates.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse_named(&text, &path.display().to_string(), |k| {
            std::env::var(k).ok().filter(|v| !v.is_empty())
        })
    }

    /// Parses and validates `text` with no environment overrides.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_named(text, "<string>", |_| None)
    }

    /// Parses `text` (named `name` in errors), applies overrides looked up
    /// with `env`, and validates.
    pub fn parse_named(
        text: &str,
        name: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: name.to_owned(),
            source,
        })?;
        config.apply_env(env);
        config.validate()?;
        Ok(config)
    }

    /// Applies the environment overrides (see the module docs).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(v) = env("TIERCACHE_DATABASE_URL") {
            self.source.database_url = Some(v);
        }
        if let Some(v) = env("TIERCACHE_REDIS_URL") {
            let redis = self.redis.get_or_insert_with(RedisConfig::default);
            redis.url = Some(v.clone());
            if self.bus.kind == BusKind::Redis && self.bus.url.is_none() {
                self.bus.url = Some(v);
            }
        }
        if let Some(v) = env("TIERCACHE_REDIS_PASSWORD") {
            self.redis.get_or_insert_with(RedisConfig::default).password = Some(v);
        }
        if self.bus.kind == BusKind::Nats
            && let Some(v) = env("TIERCACHE_NATS_URL")
        {
            self.bus.url = Some(v);
        }
        if let Some(v) = env("TIERCACHE_BUS_URL") {
            self.bus.url = Some(v);
        }
        if let Some(v) = env("TIERCACHE_SIGNING_KEY") {
            self.bus.signing_key = Some(v);
        }
        if let Some(v) = env("TIERCACHE_DATABASE_TLS_CA_CERT") {
            self.source.tls_ca_cert = Some(v.into());
        }
        if let Some(v) = env("TIERCACHE_REDIS_TLS_CA_CERT") {
            self.redis
                .get_or_insert_with(RedisConfig::default)
                .tls_ca_cert = Some(v.into());
        }
        if let Some(v) = env("TIERCACHE_BUS_TLS_CA_CERT") {
            self.bus.tls_ca_cert = Some(v.into());
        }
        if let Some(v) = env("TIERCACHE_NATS_TOKEN") {
            self.bus.token = Some(v);
        }
        if let Some(v) = env("TIERCACHE_NATS_USER") {
            self.bus.user = Some(v);
        }
        if let Some(v) = env("TIERCACHE_NATS_PASSWORD") {
            self.bus.password = Some(v);
        }
        if let Some(v) = env("TIERCACHE_HTTP_LISTEN") {
            self.http.listen = v;
        }
    }

    /// The database URL (validated to be present).
    pub fn database_url(&self) -> &str {
        self.source.database_url.as_deref().unwrap_or_default()
    }

    /// The bus URL: `bus.url`, or for a Redis bus `redis.url`.
    pub fn bus_url(&self) -> Option<&str> {
        self.bus.url.as_deref().or_else(|| match self.bus.kind {
            BusKind::Redis => self.redis.as_ref().and_then(|r| r.url.as_deref()),
            _ => None,
        })
    }

    /// The HTTP listen address, if the endpoint is enabled.
    pub fn http_listen(&self) -> Option<SocketAddr> {
        self.http.listen.parse().ok()
    }

    /// The TLS and credential fields of `[bus]`.
    fn validate_bus_auth(&self) -> Result<(), ConfigError> {
        let b = &self.bus;
        if let Some(ca) = &b.tls_ca_cert {
            check_ca_cert("bus.tls_ca_cert", ca)?;
        }
        if b.kind != BusKind::Nats {
            for (field, set) in [
                ("bus.require_tls", b.require_tls),
                ("bus.token", b.token.is_some()),
                ("bus.user", b.user.is_some()),
                ("bus.password", b.password.is_some()),
                ("bus.credentials_file", b.credentials_file.is_some()),
            ] {
                if set {
                    return Err(ConfigError::invalid(
                        field,
                        "only for kind = \"nats\" (a Redis bus uses redis.username / redis.password)",
                    ));
                }
            }
            return Ok(());
        }
        if b.token.as_deref() == Some("") {
            return Err(ConfigError::invalid("bus.token", "is empty"));
        }
        match (&b.user, &b.password) {
            (Some(u), Some(_)) if u.is_empty() => {
                return Err(ConfigError::invalid("bus.user", "is empty"));
            }
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "bus.password",
                    "required with bus.user (or TIERCACHE_NATS_PASSWORD)",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "bus.user",
                    "required with bus.password (or TIERCACHE_NATS_USER)",
                ));
            }
            _ => {}
        }
        let ways = [
            b.token.is_some().then_some("bus.token"),
            b.user.is_some().then_some("bus.user"),
            b.credentials_file
                .is_some()
                .then_some("bus.credentials_file"),
        ];
        let mut given = ways.iter().flatten();
        if let (Some(first), Some(second)) = (given.next(), given.next()) {
            return Err(ConfigError::invalid(
                *second,
                format!("conflicts with {first}: give one way to authenticate"),
            ));
        }
        if let Some(creds) = &b.credentials_file {
            check_readable("bus.credentials_file", creds)?;
        }
        Ok(())
    }

    /// Checks every value; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.source;
        match s.database_url.as_deref() {
            None | Some("") => {
                return Err(ConfigError::invalid(
                    "source.database_url",
                    "missing (set it in the file or in TIERCACHE_DATABASE_URL)",
                ));
            }
            Some(url) => {
                if let Err(e) = url.parse::<tokio_postgres::Config>() {
                    return Err(ConfigError::invalid(
                        "source.database_url",
                        format!("not a valid Postgres URL: {e}"),
                    ));
                }
            }
        }
        match s.kind {
            SourceKind::Notify => check_identifier("source.channel", &s.channel)?,
            SourceKind::Logical => {
                check_identifier("source.slot", &s.slot)?;
                if !s
                    .slot
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    return Err(ConfigError::invalid(
                        "source.slot",
                        "a replication slot name may contain only lower-case letters, digits and underscores",
                    ));
                }
            }
        }
        if s.poll_interval_ms == 0 || s.poll_interval_ms > 60_000 {
            return Err(ConfigError::invalid(
                "source.poll_interval_ms",
                "must be between 1 and 60000",
            ));
        }
        if s.batch_size == 0 || s.batch_size > i32::MAX as u32 {
            return Err(ConfigError::invalid(
                "source.batch_size",
                "must be at least 1",
            ));
        }
        if s.keepalive_ms == 0 {
            return Err(ConfigError::invalid(
                "source.keepalive_ms",
                "must be at least 1",
            ));
        }
        if s.connect_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "source.connect_timeout_ms",
                "must be at least 1",
            ));
        }
        if let Some(ca) = &s.tls_ca_cert {
            check_ca_cert("source.tls_ca_cert", ca)?;
        }

        if let Some(r) = &self.redis {
            let chosen = [
                r.url.is_some(),
                !r.sentinels.is_empty() || r.master.is_some(),
                !r.cluster.is_empty(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if chosen != 1 {
                return Err(ConfigError::invalid(
                    "redis",
                    "set exactly one of `url`, `sentinels` + `master`, `cluster`",
                ));
            }
            if let Some(u) = &r.url {
                check_url("redis.url", u, &["redis", "rediss", "unix", "redis+unix"])?;
            }
            if !r.sentinels.is_empty() && r.master.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::invalid(
                    "redis.master",
                    "required with `sentinels`",
                ));
            }
            if r.master.is_some() && r.sentinels.is_empty() {
                return Err(ConfigError::invalid(
                    "redis.sentinels",
                    "required with `master`",
                ));
            }
            for (i, u) in r.sentinels.iter().enumerate() {
                check_url(&format!("redis.sentinels[{i}]"), u, &["redis", "rediss"])?;
            }
            for (i, u) in r.cluster.iter().enumerate() {
                check_url(&format!("redis.cluster[{i}]"), u, &["redis", "rediss"])?;
            }
            if r.call_timeout_ms == 0 {
                return Err(ConfigError::invalid(
                    "redis.call_timeout_ms",
                    "must be at least 1",
                ));
            }
            if let Some(ca) = &r.tls_ca_cert {
                check_ca_cert("redis.tls_ca_cert", ca)?;
            }
        }

        match self.bus.kind {
            BusKind::None => {}
            BusKind::Nats => match self.bus_url() {
                None => {
                    return Err(ConfigError::invalid(
                        "bus.url",
                        "required for a NATS bus (or TIERCACHE_NATS_URL)",
                    ));
                }
                Some(u) => {
                    for part in u.split(',') {
                        check_url("bus.url", part.trim(), &["nats", "tls", "ws", "wss"])?;
                    }
                }
            },
            BusKind::Redis => match self.bus_url() {
                None => {
                    return Err(ConfigError::invalid(
                        "bus.url",
                        "required for a Redis bus (or set redis.url / TIERCACHE_REDIS_URL)",
                    ));
                }
                Some(u) => check_url("bus.url", u, &["redis", "rediss", "unix", "redis+unix"])?,
            },
        }
        if let Some(p) = &self.bus.subject_prefix
            && (p.is_empty() || p.contains(char::is_whitespace))
        {
            return Err(ConfigError::invalid(
                "bus.subject_prefix",
                "must be non-empty and contain no whitespace",
            ));
        }
        if self.bus.jetstream.is_some() && self.bus.kind != BusKind::Nats {
            return Err(ConfigError::invalid(
                "bus.jetstream",
                "only for kind = \"nats\"",
            ));
        }
        self.validate_bus_auth()?;
        if self.bus.signing_key.as_deref() == Some("") {
            return Err(ConfigError::invalid(
                "bus.signing_key",
                "is empty (remove it to publish unsigned messages)",
            ));
        }
        if self.redis.is_none() && self.bus.kind == BusKind::None {
            return Err(ConfigError::invalid(
                "bus.kind",
                "nothing to do: configure [redis] and/or a bus",
            ));
        }

        if !self.http.listen.is_empty() && self.http.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "http.listen",
                format!("not a socket address: {:?}", self.http.listen),
            ));
        }
        if self.retry.initial_ms == 0 || self.retry.max_ms < self.retry.initial_ms {
            return Err(ConfigError::invalid(
                "retry",
                "need 0 < initial_ms <= max_ms",
            ));
        }

        if self.rules.is_empty() {
            return Err(ConfigError::invalid(
                "rules",
                "no [[rules]]: every change would be ignored",
            ));
        }
        let mut seen: HashMap<(&str, &str, &str), usize> = HashMap::new();
        let mut key_lens: HashMap<&str, (usize, usize)> = HashMap::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let f = |name: &str| format!("rules[{i}].{name}");
            if rule.table.is_empty() {
                return Err(ConfigError::invalid(f("table"), "is empty"));
            }
            if rule.schema.is_empty() {
                return Err(ConfigError::invalid(f("schema"), "is empty"));
            }
            if rule.namespace.is_empty() {
                return Err(ConfigError::invalid(f("namespace"), "is empty"));
            }
            if rule.keys.is_empty() && rule.tags.is_empty() {
                return Err(ConfigError::invalid(
                    f("keys"),
                    "a rule needs at least one key or tag template",
                ));
            }
            if rule.max_key_len < rule.namespace.len() + 2 {
                return Err(ConfigError::invalid(
                    f("max_key_len"),
                    "too small for the namespace",
                ));
            }
            if let Some(&(j, len)) = key_lens.get(rule.namespace.as_str())
                && len != rule.max_key_len
            {
                return Err(ConfigError::invalid(
                    f("max_key_len"),
                    format!(
                        "{} differs from rules[{j}].max_key_len = {len} for the same namespace",
                        rule.max_key_len
                    ),
                ));
            }
            key_lens.insert(&rule.namespace, (i, rule.max_key_len));
            if let Some(j) = seen.insert((&rule.schema, &rule.table, &rule.namespace), i) {
                return Err(ConfigError::invalid(
                    f("table"),
                    format!(
                        "rules[{j}] already maps {}.{} to namespace {:?}; merge them",
                        rule.schema, rule.table, rule.namespace
                    ),
                ));
            }
            for (list, name) in [(&rule.keys, "keys"), (&rule.tags, "tags")] {
                for (k, t) in list.iter().enumerate() {
                    Template::parse(t).map_err(|source| ConfigError::Template {
                        field: format!("rules[{i}].{name}[{k}]"),
                        source,
                    })?;
                }
            }
        }
        Ok(())
    }
}

/// A file the sidecar reads at start (a CA certificate, a creds file).
fn check_readable(field: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map_err(|e| ConfigError::invalid(field, format!("cannot read {}: {e}", path.display())))
        .and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(ConfigError::invalid(
                    field,
                    format!("{} is not a file", path.display()),
                ))
            }
        })
}

/// A PEM file of CA certificates.
fn check_ca_cert(field: &str, path: &Path) -> Result<(), ConfigError> {
    check_readable(field, path)?;
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::invalid(field, format!("cannot read {}: {e}", path.display())))?;
    if String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("{} holds no PEM certificate", path.display()),
        ))
    }
}

fn check_identifier(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::invalid(field, "is empty"));
    }
    if value.len() > 63 {
        return Err(ConfigError::invalid(
            field,
            "longer than Postgres's 63-byte identifier limit",
        ));
    }
    if value.contains('\0') {
        return Err(ConfigError::invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

fn check_url(field: &str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some(s) if schemes.contains(&s) => Ok(()),
        _ => Err(ConfigError::invalid(
            field,
            format!(
                "{url:?} is not a URL with scheme {}",
                schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [source]
        kind = "logical"
        database_url = "postgres://postgres@127.0.0.1:1/postgres"

        [redis]
        url = "redis://127.0.0.1:1"

        [bus]
        kind = "nats"
        url = "nats://127.0.0.1:1"

        [[rules]]
        table = "products"
        namespace = "products"
        keys = ["{id}"]
        tags = ["products", "category:{category}"]
    "#;

    fn err(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("config accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parse_and_template_errors_keep_their_sources() {
        use std::error::Error as _;

        let e = Config::parse("[source\n").expect_err("malformed TOML");
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        assert!(
            e.source()
                .and_then(|s| s.downcast_ref::<toml::de::Error>())
                .is_some()
        );

        let e = Config::parse(&GOOD.replace(r#"keys = ["{id}"]"#, r#"keys = ["{id"]"#))
            .expect_err("unclosed placeholder");
        assert!(
            e.to_string()
                .starts_with("rules[0].keys[0]: unclosed column placeholder {id in"),
            "{e}"
        );
        let template = e
            .source()
            .and_then(|s| s.downcast_ref::<crate::rules::TemplateError>())
            .expect("the template error");
        assert!(matches!(
            template,
            crate::rules::TemplateError::Unclosed { .. }
        ));
    }

    #[test]
    fn parses_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.source.kind, SourceKind::Logical);
        assert_eq!(c.source.slot, "tiercache");
        assert_eq!(c.source.poll_interval_ms, 50);
        assert_eq!(c.rules[0].schema, "public");
        assert_eq!(c.rules[0].max_key_len, 250);
        assert_eq!(c.http.listen, "127.0.0.1:9187");
        assert_eq!(c.bus.kind, BusKind::Nats);
    }

    #[test]
    fn example_config_parses() {
        let c = Config::parse(include_str!("../sidecar.example.toml")).unwrap();
        assert_eq!(c.rules[0].keys, vec!["{id}"]);
        assert_eq!(c.retry.max(), Duration::from_secs(5));
    }

    #[test]
    fn bad_placeholder_names_the_field() {
        let text = GOOD.replace(
            "keys = [\"{id}\"]",
            "keys = [\"{id}\"]\n[[rules]]\ntable = \"t\"\nnamespace = \"n\"\nkeys = [\"{idd\"]",
        );
        let e = err(&text);
        assert!(e.starts_with("rules[1].keys[0]: "), "{e}");
        assert!(e.contains("{idd"), "{e}");
    }

    #[test]
    fn unknown_field_is_reported_with_its_line() {
        let e = err(&GOOD.replace("namespace = \"products\"", "namespase = \"products\""));
        assert!(e.contains("namespase"), "{e}");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn wrong_kind_is_reported() {
        let e = err(&GOOD.replace("kind = \"logical\"", "kind = \"wal2json\""));
        assert!(e.contains("wal2json") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn missing_database_url_is_named() {
        let e = err(&GOOD.replace(
            "database_url = \"postgres://postgres@127.0.0.1:1/postgres\"",
            "",
        ));
        assert!(e.starts_with("source.database_url: missing"), "{e}");
    }

    #[test]
    fn env_overrides_urls_and_secrets() {
        let text = GOOD.replace(
            "database_url = \"postgres://postgres@127.0.0.1:1/postgres\"",
            "",
        );
        let c = Config::parse_named(&text, "x", |k| match k {
            "TIERCACHE_DATABASE_URL" => Some("postgres://u@h:2/db".into()),
            "TIERCACHE_NATS_URL" => Some("nats://h:3".into()),
            "TIERCACHE_SIGNING_KEY" => Some("s3cret".into()),
            "TIERCACHE_REDIS_URL" => Some("redis://h:4".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.database_url(), "postgres://u@h:2/db");
        assert_eq!(c.bus_url(), Some("nats://h:3"));
        assert_eq!(c.bus.signing_key.as_deref(), Some("s3cret"));
        assert_eq!(
            c.redis.as_ref().and_then(|r| r.url.as_deref()),
            Some("redis://h:4")
        );
    }

    #[test]
    fn env_sets_tls_and_nats_credentials() {
        let c = Config::parse_named(GOOD, "x", |k| match k {
            "TIERCACHE_NATS_TOKEN" => Some("t0k".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.bus.token.as_deref(), Some("t0k"));
        let mut c = Config::parse(GOOD).unwrap();
        c.apply_env(|k| match k {
            "TIERCACHE_DATABASE_TLS_CA_CERT" => Some("/pg.pem".into()),
            "TIERCACHE_REDIS_TLS_CA_CERT" => Some("/redis.pem".into()),
            "TIERCACHE_BUS_TLS_CA_CERT" => Some("/bus.pem".into()),
            "TIERCACHE_NATS_USER" => Some("u".into()),
            "TIERCACHE_NATS_PASSWORD" => Some("p".into()),
            _ => None,
        });
        assert_eq!(c.source.tls_ca_cert, Some(PathBuf::from("/pg.pem")));
        assert_eq!(
            c.redis.as_ref().and_then(|r| r.tls_ca_cert.clone()),
            Some(PathBuf::from("/redis.pem"))
        );
        assert_eq!(c.bus.tls_ca_cert, Some(PathBuf::from("/bus.pem")));
        assert_eq!(c.bus.user.as_deref(), Some("u"));
        assert_eq!(c.bus.password.as_deref(), Some("p"));
        // The CA files do not exist: named at validation.
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("source.tls_ca_cert"), "{e}");
    }

    #[test]
    fn redis_bus_defaults_to_redis_url() {
        let c = Config::parse(&GOOD.replace(
            "kind = \"nats\"\n        url = \"nats://127.0.0.1:1\"",
            "kind = \"redis\"",
        ))
        .unwrap();
        assert_eq!(c.bus_url(), Some("redis://127.0.0.1:1"));
    }

    #[test]
    fn inconsistent_values_are_named() {
        assert!(
            err(&GOOD.replace("url = \"nats://127.0.0.1:1\"", "url = \"http://x\""))
                .starts_with("bus.url:")
        );
        assert!(
            err(&GOOD.replace("[[rules]]", "[http]\nlisten = \"nope\"\n[[rules]]"))
                .starts_with("http.listen:")
        );
        assert!(
            err(&GOOD.replace("keys = [\"{id}\"]", "keys = []").replace(
                "tags = [\"products\", \"category:{category}\"]",
                "tags = []"
            ))
            .starts_with("rules[0].keys:")
        );
        let e = err(&format!(
            "{GOOD}\n[[rules]]\ntable = \"products\"\nnamespace = \"products\"\nkeys = [\"x\"]"
        ));
        assert!(e.starts_with("rules[1].table:"), "{e}");
    }
}
