//! Settings: command-line flags, each also read from the environment.

use std::net::SocketAddr;

use clap::Parser;

/// The products example: an HTTP API over Postgres, cached with tiercache.
#[derive(Debug, Parser)]
#[command(name = "products", about)]
pub struct Settings {
    /// Postgres URL, e.g. `postgres://postgres@127.0.0.1:15432/products`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// Redis URL for the shared tier (and the bus when NATS_URL is unset).
    /// Unset: the embedded in-process shared tier and bus (one instance only).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// NATS URL for the invalidation bus. Unset: Redis pub/sub (if REDIS_URL).
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,

    /// Carry invalidations in this JetStream stream (replayed after a NATS
    /// reconnect) instead of core NATS subjects. Empty: core subjects.
    #[arg(long, env = "NATS_STREAM", default_value = "")]
    pub nats_stream: String,

    /// Where the HTTP API listens.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub listen_addr: SocketAddr,

    /// Insert this many random products, then exit (creates the table first).
    #[arg(long, value_name = "N")]
    pub seed: Option<u32>,

    /// Fresh life of a cached product or list, in seconds (jittered by 20%).
    #[arg(long, env = "CACHE_TTL_SECS", default_value_t = 300)]
    pub ttl_secs: u64,

    /// Life of a cached "no such product", in seconds (jittered by 20%).
    #[arg(long, env = "CACHE_NEGATIVE_TTL_SECS", default_value_t = 30)]
    pub negative_ttl_secs: u64,

    /// A TOML file of cache settings: table `[rows]` for the product-row
    /// cache, `[responses]` for the HTTP response cache (see
    /// examples/products/cache.toml). Environment variables
    /// `PRODUCTS_ROWS_<SETTING>` and `PRODUCTS_RESPONSES_<SETTING>` override
    /// it, and both override the flags above.
    #[arg(long, env = "CACHE_CONFIG")]
    pub cache_config: Option<std::path::PathBuf>,

    /// Postgres connection pool size.
    #[arg(long, env = "DATABASE_POOL_SIZE", default_value_t = 16)]
    pub pool_size: u32,
}

impl Settings {
    /// The settings with any password in the URLs hidden, for the start log.
    pub fn redacted(&self) -> String {
        format!(
            "database={} redis={} nats={} listen={}",
            redact(&self.database_url),
            self.redis_url.as_deref().map_or("-".into(), redact),
            self.nats_url.as_deref().map_or("-".into(), redact),
            self.listen_addr
        )
    }
}

/// `scheme://user:secret@host` → `scheme://user:***@host`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}
