//! The command line: [`Cli`], its verbs and the connection settings every
//! verb that talks to Redis or the bus shares ([`ConnArgs`]).

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};
use tiercache_sidecar::cli::SidecarCommand;

/// The engine's default maximum storage key length (`CacheBuilder::max_key_len`).
pub const DEFAULT_MAX_KEY_LEN: usize = 250;

/// tiercache's operator tool: invalidate, clear, inspect, watch the bus,
/// read an instance's metrics, and run the sidecar.
#[derive(Debug, Parser)]
#[command(name = "tiercache", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The sidecar: Postgres changes -> invalidations (`run`, `check`, `sql`).
    Sidecar {
        /// The sidecar command.
        #[command(subcommand)]
        command: SidecarCommand,
    },
    /// Invalidate keys and tags of a namespace: in Redis, then on the bus.
    Invalidate(InvalidateArgs),
    /// Clear a whole namespace (hard: gone; --soft: stale, served within grace).
    Clear(ClearArgs),
    /// Show what Redis holds for a key: TTL, version, lease, envelope, tags.
    Inspect(InspectArgs),
    /// Print the bus messages of a namespace as they arrive, one line each.
    Watch(WatchArgs),
    /// Scrape a /metrics endpoint and print a table per namespace.
    Stats(StatsArgs),
}

/// Where Redis and the bus are: flags, their environment variables, or the
/// sidecar's TOML file (`--config`; its `[redis]` and `[bus]` sections).
/// A flag (or its variable) wins over the file.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnArgs {
    /// The sidecar's TOML file: its [redis] and [bus] sections are used.
    #[arg(long, env = "TIERCACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A standalone Redis server (the shared tier).
    #[arg(long, env = "TIERCACHE_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Redis Cluster node URLs (the shared tier), comma-separated.
    #[arg(
        long,
        env = "TIERCACHE_REDIS_CLUSTER",
        value_name = "URL,...",
        value_delimiter = ','
    )]
    pub redis_cluster: Vec<String>,
    /// Redis ACL user name (shared tier and Redis bus).
    #[arg(long, env = "TIERCACHE_REDIS_USERNAME", value_name = "NAME")]
    pub redis_username: Option<String>,
    /// Redis password (shared tier and Redis bus).
    #[arg(
        long,
        env = "TIERCACHE_REDIS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub redis_password: Option<String>,
    /// A PEM file of the CA(s) to trust for Redis TLS (`rediss://`; shared
    /// tier and Redis bus) instead of the system's roots.
    #[arg(long, env = "TIERCACHE_REDIS_TLS_CA_CERT", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,
    /// A PEM file of the CA(s) to trust for NATS TLS (`tls://`).
    #[arg(long, env = "TIERCACHE_NATS_TLS_CA_CERT", value_name = "FILE")]
    pub nats_tls_ca: Option<PathBuf>,
    /// The NATS auth token.
    #[arg(
        long,
        env = "TIERCACHE_NATS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub nats_token: Option<String>,
    /// The NATS user (with --nats-password).
    #[arg(long, env = "TIERCACHE_NATS_USER", value_name = "NAME")]
    pub nats_user: Option<String>,
    /// The NATS password (with --nats-user).
    #[arg(
        long,
        env = "TIERCACHE_NATS_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// The bus on NATS.
    #[arg(long, env = "TIERCACHE_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,
    /// The bus on Redis pub/sub.
    #[arg(long, env = "TIERCACHE_REDIS_BUS_URL", value_name = "URL")]
    pub redis_bus_url: Option<String>,
    /// NATS only: the JetStream stream the applications use.
    #[arg(long, env = "TIERCACHE_NATS_STREAM", value_name = "NAME")]
    pub nats_stream: Option<String>,
    /// The bus's subject (NATS) or channel (Redis) prefix, when the
    /// applications set one.
    #[arg(long, env = "TIERCACHE_BUS_PREFIX", value_name = "PREFIX")]
    pub bus_prefix: Option<String>,
    /// The HMAC key bus messages are signed with (the applications').
    #[arg(
        long,
        env = "TIERCACHE_SIGNING_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub signing_key: Option<String>,
    /// Time budget of each connection and call, in milliseconds.
    #[arg(
        long,
        env = "TIERCACHE_TIMEOUT_MS",
        value_name = "MS",
        default_value_t = 3000
    )]
    pub timeout_ms: u64,
}

/// `tiercache invalidate`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("what").required(true).multiple(true).args(["keys", "tags"])))]
pub struct InvalidateArgs {
    /// Where Redis and the bus are.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The cache namespace (`Cache::builder(namespace)`).
    #[arg(long, short)]
    pub namespace: String,
    /// A key, as the application renders it (repeatable).
    #[arg(long = "key", short = 'k', value_name = "KEY")]
    pub keys: Vec<String>,
    /// A tag (repeatable).
    #[arg(long = "tag", short = 't', value_name = "TAG")]
    pub tags: Vec<String>,
    /// The application's maximum storage key length for the namespace.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_KEY_LEN)]
    pub max_key_len: usize,
}

/// `tiercache clear`.
#[derive(Debug, Clone, Args)]
pub struct ClearArgs {
    /// Where Redis and the bus are.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The cache namespace.
    #[arg(long, short)]
    pub namespace: String,
    /// Soft: entries become stale (served within grace while reloading)
    /// instead of gone.
    #[arg(long)]
    pub soft: bool,
}

/// `tiercache inspect`.
#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Where Redis is.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The cache namespace.
    #[arg(long, short)]
    pub namespace: String,
    /// The key, as the application renders it.
    #[arg(long, short)]
    pub key: String,
    /// The application's maximum storage key length for the namespace.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_KEY_LEN)]
    pub max_key_len: usize,
}

/// `tiercache watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Where the bus is.
    #[command(flatten)]
    pub conn: ConnArgs,
    /// The cache namespace.
    #[arg(long, short)]
    pub namespace: String,
    /// Also print heartbeats and farewells.
    #[arg(long, short)]
    pub verbose: bool,
    /// Stop after printing this many lines.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

/// `tiercache stats`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// The Prometheus endpoint, e.g. http://127.0.0.1:9187/metrics.
    #[arg(long, env = "TIERCACHE_METRICS_URL", value_name = "URL")]
    pub url: String,
    /// Only this namespace.
    #[arg(long, short)]
    pub namespace: Option<String>,
    /// Time budget of the scrape, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub timeout_ms: u64,
}
