//! The builder of [`RedisSharedTier`](crate::RedisSharedTier).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::{ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};

use crate::breaker::Breaker;
use crate::conn::{self, Connector, Link, Target, TlsCa};
use crate::error::BuildError;
use crate::replica::{self, ReplicaTarget, Replicas};
use crate::report::Reporter;
use crate::tier::{Inner, RedisSharedTier, Settings};

#[derive(Clone, Debug)]
enum Topology {
    Url(String),
    Sentinel {
        urls: Vec<String>,
        master_name: String,
    },
    Cluster(Vec<String>),
}

/// Builds a [`RedisSharedTier`]: choose exactly one of [`url`](Self::url),
/// [`sentinel`](Self::sentinel) or [`cluster`](Self::cluster), then tune.
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisSharedTierBuilder {
    topologies: Vec<(&'static str, Topology)>,
    username: Option<String>,
    password: Option<String>,
    tls: bool,
    tls_ca: Option<TlsCa>,
    call_timeout: Duration,
    connect_timeout: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    health_interval: Duration,
    reconnect_backoff: (Duration, Duration),
    version_retention: Duration,
    log_interval: Duration,
    lazy: bool,
    read_from_replicas: bool,
}

impl Default for RedisSharedTierBuilder {
    fn default() -> Self {
        Self {
            topologies: Vec::new(),
            username: None,
            password: None,
            tls: false,
            tls_ca: None,
            call_timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(1),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(1),
            health_interval: Duration::from_secs(1),
            reconnect_backoff: (Duration::from_millis(50), Duration::from_millis(500)),
            version_retention: Duration::from_secs(600),
            log_interval: Duration::from_secs(10),
            lazy: false,
            read_from_replicas: false,
        }
    }
}

impl RedisSharedTierBuilder {
    /// A standalone server: `redis://[user:password@]host:port[/db]`
    /// (`rediss://` with the `tls` feature).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.topologies.push(("url", Topology::Url(url.into())));
        self
    }

    /// A master found through Sentinels (`redis://host:port` each, credentials
    /// for the Sentinels themselves in their URLs). The master is re-resolved
    /// on every reconnect and checked with `ROLE`.
    pub fn sentinel<I, S>(mut self, sentinel_urls: I, master_name: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topologies.push((
            "sentinel",
            Topology::Sentinel {
                urls: sentinel_urls.into_iter().map(Into::into).collect(),
                master_name: master_name.into(),
            },
        ));
        self
    }

    /// A Redis Cluster, from one or more of its nodes' URLs.
    pub fn cluster<I, S>(mut self, node_urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.topologies.push((
            "cluster",
            Topology::Cluster(node_urls.into_iter().map(Into::into).collect()),
        ));
        self
    }

    /// The ACL user name for the data nodes (overrides one in the URL).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password for the data nodes (overrides one in the URL).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Use TLS to Sentinel-discovered masters and Cluster nodes (needs the
    /// `tls` feature; for a standalone server use a `rediss://` URL).
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = enabled;
        self
    }

    /// Trust the CA certificate(s) in this PEM file for TLS connections
    /// (`rediss://`, or [`tls`](Self::tls) for Sentinel and Cluster) instead
    /// of the system's roots. Needs the `tls` feature. The file is read by
    /// [`build`](Self::build); a server whose certificate the CA did not
    /// sign fails the first connection with an error naming `tls_ca_cert`.
    pub fn tls_ca_cert(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(TlsCa::Path(pem_file.into()));
        self
    }

    /// As [`tls_ca_cert`](Self::tls_ca_cert), from PEM bytes.
    pub fn tls_ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca = Some(TlsCa::Pem(pem.into()));
        self
    }

    /// The time budget of one call (default 50 ms). A call that takes longer
    /// fails with `SharedError::Timeout` and counts towards the breaker.
    pub fn call_timeout(mut self, budget: Duration) -> Self {
        self.call_timeout = budget;
        self
    }

    /// The time budget for establishing a connection, and for the periodic
    /// health check (default 1 s).
    pub fn connect_timeout(mut self, budget: Duration) -> Self {
        self.connect_timeout = budget;
        self
    }

    /// The breaker opens after `threshold` consecutive failed calls (default
    /// 5); while open, calls fail at once with `SharedError::BreakerOpen`;
    /// after `cooldown` (default 1 s) one probe call is let through, and its
    /// success closes it. A reconnect closes it too.
    pub fn breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cooldown = cooldown;
        self
    }

    /// How often the connection is health-checked (default 1 s): `PING`, or
    /// `ROLE` on a Sentinel-resolved master.
    pub fn health_interval(mut self, interval: Duration) -> Self {
        self.health_interval = interval;
        self
    }

    /// The reconnect backoff: starts at `min`, doubles up to `max` (default
    /// 50 ms to 500 ms). Reconnection never gives up.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_backoff = (min, max);
        self
    }

    /// How long a key's version is kept after an invalidation (default 10
    /// minutes). A fill ticket older than this is refused or (if taken before
    /// the key was ever invalidated) may land: keep it above the longest load.
    pub fn version_retention(mut self, retention: Duration) -> Self {
        self.version_retention = retention;
        self
    }

    /// Errors are counted always but logged at most once per this interval
    /// (default 10 s).
    pub fn log_interval(mut self, interval: Duration) -> Self {
        self.log_interval = interval;
        self
    }

    /// Do not fail [`build`](Self::build) when Redis cannot be reached: start
    /// disconnected (calls fail fast) and keep connecting in the background.
    pub fn connect_lazily(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// Send the plain value reads ([`get`](tiercache_core::backend::SharedTier::get),
    /// [`get_many`](tiercache_core::backend::SharedTier::get_many)) to
    /// replicas (default off): on Sentinel to the replicas Sentinel reports
    /// up (in turn), on Cluster to a random replica of each slot
    /// (`READONLY`). Writes, invalidations, fills (leases and versions), tag
    /// versions and clear epochs stay on the masters.
    ///
    /// Each replica value is checked against the key's version read from
    /// the master in the same batch, and read again from the master when
    /// they differ or the replica has none, so a lagging replica never
    /// hands out a value the master already invalidated; the master still
    /// answers one small `MGET` per batch. When no replica is usable, or a
    /// replica read fails, the master serves the read (never an error the
    /// master could have avoided). See [`RedisSharedTier::replica_stats`].
    ///
    /// # Errors
    ///
    /// [`build`](Self::build) fails with a config error naming
    /// `read_from_replicas` for a standalone [`url`](Self::url): it names no
    /// replicas.
    pub fn read_from_replicas(mut self, on: bool) -> Self {
        self.read_from_replicas = on;
        self
    }

    fn redis_settings(&self, base: &RedisConnectionInfo) -> RedisConnectionInfo {
        let mut r = base.clone();
        if let Some(u) = &self.username {
            r = r.set_username(u);
        }
        if let Some(p) = &self.password {
            r = r.set_password(p);
        }
        r
    }

    fn parse(field: &'static str, url: &str) -> Result<ConnectionInfo, BuildError> {
        url.into_connection_info()
            .map_err(|e| BuildError::config_from(field, format_args!("`{url}`"), e))
    }

    fn validate(&self) -> Result<(Target, Option<Vec<u8>>), BuildError> {
        let tls_ca = self.tls_ca.as_ref().map(conn::load_ca).transpose()?;
        let target = self.validate_target(tls_ca.as_deref())?;
        if tls_ca.is_some() {
            let uses_tls = match &target {
                Target::Standalone(info) => {
                    matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. })
                }
                Target::Sentinel { tls, .. } => *tls,
                Target::Cluster(_) => self.tls,
            };
            if !uses_tls {
                return Err(BuildError::config(
                    conn::TLS_CA_FIELD,
                    "set, but the connection is not TLS: use a `rediss://` URL (or `tls(true)` for Sentinel and Cluster)",
                ));
            }
        }
        Ok((target, tls_ca))
    }

    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    fn validate_target(&self, tls_ca: Option<&[u8]>) -> Result<Target, BuildError> {
        let (field, topology) = match self.topologies.as_slice() {
            [] => {
                return Err(BuildError::config(
                    "url",
                    "set one of `url`, `sentinel` or `cluster`",
                ));
            }
            [one] => one.clone(),
            [_, (field, _), ..] => {
                return Err(BuildError::config(
                    field,
                    "only one of `url`, `sentinel` or `cluster` may be set",
                ));
            }
        };
        if self.call_timeout.is_zero() {
            return Err(BuildError::config("call_timeout", "must be more than zero"));
        }
        if self.connect_timeout.is_zero() {
            return Err(BuildError::config(
                "connect_timeout",
                "must be more than zero",
            ));
        }
        if self.breaker_threshold == 0 {
            return Err(BuildError::config(
                "breaker",
                "threshold must be at least 1",
            ));
        }
        if self.health_interval.is_zero() {
            return Err(BuildError::config(
                "health_interval",
                "must be more than zero",
            ));
        }
        let (min, max) = self.reconnect_backoff;
        if min.is_zero() || max < min {
            return Err(BuildError::config(
                "reconnect_backoff",
                "min must be more than zero and max at least min",
            ));
        }
        if self.version_retention < Duration::from_secs(1) {
            return Err(BuildError::config(
                "version_retention",
                "must be at least 1 s",
            ));
        }
        if self.tls && !cfg!(feature = "tls") {
            return Err(BuildError::config(
                "tls",
                "this build of tiercache-redis lacks the `tls` feature",
            ));
        }
        match topology {
            Topology::Url(url) => {
                let info = Self::parse(field, &url)?;
                let redis = self.redis_settings(info.redis_settings());
                Ok(Target::Standalone(info.set_redis_settings(redis)))
            }
            Topology::Sentinel { urls, master_name } => {
                if urls.is_empty() {
                    return Err(BuildError::config(field, "needs at least one sentinel URL"));
                }
                if master_name.is_empty() {
                    return Err(BuildError::config(field, "the master name is empty"));
                }
                let sentinels = urls
                    .iter()
                    .map(|u| Self::parse(field, u))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Target::Sentinel {
                    sentinels,
                    master_name,
                    redis: self.redis_settings(&RedisConnectionInfo::default()),
                    tls: self.tls,
                })
            }
            Topology::Cluster(urls) => {
                if urls.is_empty() {
                    return Err(BuildError::config(field, "needs at least one node URL"));
                }
                let nodes = urls
                    .iter()
                    .map(|u| Self::parse(field, u))
                    .collect::<Result<Vec<_>, _>>()?;
                let client = self.cluster_client(field, nodes.clone(), false, tls_ca)?;
                Ok(Target::Cluster(Box::new(client)))
            }
        }
    }

    /// A cluster client for `nodes`; with `replicas`, one whose read-only
    /// commands go to a random replica of the slot (`READONLY`).
    #[cfg_attr(not(feature = "tls"), allow(unused_variables))]
    fn cluster_client(
        &self,
        field: &'static str,
        nodes: Vec<ConnectionInfo>,
        replicas: bool,
        tls_ca: Option<&[u8]>,
    ) -> Result<ClusterClient, BuildError> {
        let mut b = ClusterClient::builder(nodes)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.connect_timeout.max(Duration::from_secs(1)))
            .retries(if replicas { 1 } else { 3 })
            .min_retry_wait(10)
            .max_retry_wait(200);
        if replicas {
            // Each shard's reads rotate over its replicas.
            b = b.read_routing_strategy(
                redis::cluster_read_routing::RoundRobinReplicaStrategy::default(),
            );
        }
        if let Some(u) = &self.username {
            b = b.username(u);
        }
        if let Some(p) = &self.password {
            b = b.password(p);
        }
        #[cfg(feature = "tls")]
        if self.tls {
            conn::ensure_crypto_provider();
            b = b.tls(redis::cluster::TlsMode::Secure);
            if let Some(pem) = tls_ca {
                b = b.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                });
            }
        }
        b.build()
            .map_err(|e| BuildError::config_from(field, "cannot build the cluster client", e))
    }

    /// Where replica reads go, when they are on.
    fn replica_target(
        &self,
        target: &Target,
        tls_ca: Option<&[u8]>,
    ) -> Result<Option<ReplicaTarget>, BuildError> {
        if !self.read_from_replicas {
            return Ok(None);
        }
        match target {
            Target::Standalone(_) => Err(BuildError::config(
                "read_from_replicas",
                "needs `sentinel` or `cluster`: a standalone `url` names no replicas",
            )),
            Target::Sentinel {
                sentinels,
                master_name,
                redis,
                tls,
            } => Ok(Some(ReplicaTarget::Sentinel {
                sentinels: sentinels.clone(),
                master_name: master_name.clone(),
                redis: redis.clone(),
                tls: *tls,
            })),
            Target::Cluster(_) => {
                let Some((field, Topology::Cluster(urls))) = self.topologies.first() else {
                    return Ok(None);
                };
                let nodes = urls
                    .iter()
                    .map(|u| Self::parse(field, u))
                    .collect::<Result<Vec<_>, _>>()?;
                let client = self.cluster_client(field, nodes, true, tls_ca)?;
                Ok(Some(ReplicaTarget::Cluster(Box::new(client))))
            }
        }
    }

    /// Checks the configuration, connects (unless
    /// [`connect_lazily`](Self::connect_lazily)) and starts the background
    /// task that keeps the connection. Must be called within a Tokio runtime.
    pub async fn build(self) -> Result<RedisSharedTier, BuildError> {
        let (target, tls_ca) = self.validate()?;
        let replica_target = self.replica_target(&target, tls_ca.as_deref())?;
        let tls_ca_set = tls_ca.is_some();
        let cluster = matches!(target, Target::Cluster(_));
        let connector = Connector {
            target,
            connect_timeout: self.connect_timeout,
            health_interval: self.health_interval,
            min_backoff: self.reconnect_backoff.0,
            max_backoff: self.reconnect_backoff.1,
            tls_ca,
        };
        let first = match connector.connect().await {
            Ok(c) => Some(c),
            Err(e) if self.lazy => {
                tracing::warn!("redis shared tier starts disconnected: {e}");
                None
            }
            Err(e) => return Err(conn::connect_error(e, tls_ca_set)),
        };
        let inner = Arc::new(Inner {
            link: Link::new(
                Breaker::new(self.breaker_threshold, self.breaker_cooldown),
                Reporter::new("shared", self.log_interval),
                cluster,
            ),
            settings: Settings {
                call_timeout: self.call_timeout,
                version_retention: self.version_retention,
                cluster,
            },
            replicas: replica_target.as_ref().map(|_| Replicas::new()),
        });
        conn::start(&inner, connector.clone(), first);
        let tier = RedisSharedTier { inner };
        if let Some(target) = replica_target {
            replica::start(&tier, target, connector, self.health_interval).await;
        }
        Ok(tier)
    }
}
