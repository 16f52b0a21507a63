//! [`RedisBus`]: the core's `Bus` on Redis pub/sub.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, Value};
use tiercache_core::backend::{Bus, BusError, BusEvent};
use tokio::sync::mpsc;

use crate::conn::{TLS_CA_FIELD, TlsCa, connect_error, load_ca, make_client};
use crate::error::BuildError;
use crate::report::Reporter;

/// Builds a [`RedisBus`].
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisBusBuilder {
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    tls_ca: Option<TlsCa>,
    channel_prefix: String,
    heartbeat: Duration,
    publish_timeout: Duration,
    connect_timeout: Duration,
    reconnect_backoff: (Duration, Duration),
    log_interval: Duration,
}

impl Default for RedisBusBuilder {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            tls_ca: None,
            channel_prefix: "tiercache:inv:".into(),
            heartbeat: Duration::from_secs(1),
            publish_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
            reconnect_backoff: (Duration::from_millis(50), Duration::from_secs(2)),
            log_interval: Duration::from_secs(10),
        }
    }
}

impl RedisBusBuilder {
    /// The server: `redis://[user:password@]host:port`. A standalone server,
    /// a Sentinel-managed master or any node of a Cluster (classic `PUBLISH`
    /// reaches every node's subscribers on a Cluster).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// The ACL user name (overrides one in the URL).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Trust the CA certificate(s) in this PEM file for a `rediss://` URL
    /// instead of the system's roots. Needs the `tls` feature.
    pub fn tls_ca_cert(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(TlsCa::Path(pem_file.into()));
        self
    }

    /// As [`tls_ca_cert`](Self::tls_ca_cert), from PEM bytes.
    pub fn tls_ca_cert_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_ca = Some(TlsCa::Pem(pem.into()));
        self
    }

    /// The password (overrides one in the URL).
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The channel of namespace `ns` is `<prefix><ns>` (default prefix
    /// `tiercache:inv:`).
    pub fn channel_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.channel_prefix = prefix.into();
        self
    }

    /// How often a subscription pings its connection and reports
    /// [`BusEvent::Heartbeat`] on the answer (default 1 s). A ping unanswered
    /// within this interval counts as a lost connection.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// The time budget of one publish (default 500 ms).
    pub fn publish_timeout(mut self, budget: Duration) -> Self {
        self.publish_timeout = budget;
        self
    }

    /// The time budget for establishing a connection (default 1 s).
    pub fn connect_timeout(mut self, budget: Duration) -> Self {
        self.connect_timeout = budget;
        self
    }

    /// The resubscribe backoff: from `min`, doubling up to `max` (default
    /// 50 ms to 2 s). Subscriptions never give up while their stream is alive.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_backoff = (min, max);
        self
    }

    /// Errors are counted always but logged at most once per this interval
    /// (default 10 s).
    pub fn log_interval(mut self, interval: Duration) -> Self {
        self.log_interval = interval;
        self
    }

    /// Checks the configuration and creates the bus. Connections are made
    /// lazily: building succeeds while Redis is down (or does not answer
    /// within the connect timeout). A server that answers but refuses the
    /// TLS handshake (an untrusted certificate: `tls_ca_cert`) or the
    /// credentials (`password`) fails the build with an error naming the
    /// setting. Must be called within a Tokio runtime.
    pub async fn build(self) -> Result<RedisBus, BuildError> {
        let url = self
            .url
            .as_deref()
            .ok_or_else(|| BuildError::config("url", "the bus needs a redis URL"))?;
        let mut info = url
            .into_connection_info()
            .map_err(|e| BuildError::config_from("url", format_args!("`{url}`"), e))?;
        let mut redis = info.redis_settings().clone();
        if let Some(u) = &self.username {
            redis = redis.set_username(u);
        }
        if let Some(p) = &self.password {
            redis = redis.set_password(p);
        }
        info = info.set_redis_settings(redis);
        for (field, d) in [
            ("heartbeat", self.heartbeat),
            ("publish_timeout", self.publish_timeout),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_backoff", self.reconnect_backoff.0),
        ] {
            if d.is_zero() {
                return Err(BuildError::config(field, "must be more than zero"));
            }
        }
        if self.reconnect_backoff.1 < self.reconnect_backoff.0 {
            return Err(BuildError::config(
                "reconnect_backoff",
                "max must be at least min",
            ));
        }
        let tls_ca = self.tls_ca.as_ref().map(load_ca).transpose()?;
        if tls_ca.is_some() && !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
            return Err(BuildError::config(
                TLS_CA_FIELD,
                "set, but the URL is not `rediss://`",
            ));
        }
        let client = make_client(info, tls_ca.as_deref()).map_err(|e| {
            let field = if tls_ca.is_some() {
                TLS_CA_FIELD
            } else {
                "url"
            };
            BuildError::config_from(field, "cannot open a client", e)
        })?;
        probe(&client, self.connect_timeout, tls_ca.is_some()).await?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.publish_timeout))
            .set_number_of_retries(1)
            .set_min_delay(self.reconnect_backoff.0)
            .set_max_delay(self.reconnect_backoff.1);
        let publisher = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| BuildError::config_from("url", "cannot set up the publisher", e))?;
        Ok(RedisBus {
            inner: Arc::new(BusInner {
                client,
                publisher,
                reporter: Reporter::new("bus", self.log_interval),
                channel_prefix: self.channel_prefix,
                heartbeat: self.heartbeat,
                asked_heartbeat_us: AtomicU64::new(0),
                publish_timeout: self.publish_timeout,
                connect_timeout: self.connect_timeout,
                backoff: self.reconnect_backoff,
            }),
        })
    }
}

/// One connection and a `PING`, to catch a refused certificate or password
/// at build time. An unreachable or silent server is not an error here: the
/// bus connects lazily.
async fn probe(client: &Client, within: Duration, tls_ca_set: bool) -> Result<(), BuildError> {
    let attempt = async {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(within))
            .set_response_timeout(Some(within));
        let mut c = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING").query_async::<Value>(&mut c).await
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(Err(e)) => match connect_error(e, tls_ca_set) {
            BuildError::Connect(e) => {
                tracing::debug!("redis bus: server not reachable yet at build: {e}");
                Ok(())
            }
            refused => Err(refused),
        },
        Ok(Ok(_)) | Err(_) => Ok(()),
    }
}

struct BusInner {
    client: Client,
    publisher: ConnectionManager,
    reporter: Reporter,
    channel_prefix: String,
    heartbeat: Duration,
    /// The fastest heartbeat a subscriber asked for, in µs (0: none).
    asked_heartbeat_us: AtomicU64,
    publish_timeout: Duration,
    connect_timeout: Duration,
    backoff: (Duration, Duration),
}

impl BusInner {
    /// The ping pace of a subscription: the configured heartbeat, or faster
    /// when a subscriber asked for it.
    fn pace(&self) -> Duration {
        match self.asked_heartbeat_us.load(Ordering::Relaxed) {
            0 => self.heartbeat,
            us => self.heartbeat.min(Duration::from_micros(us)),
        }
    }
}

/// An invalidation bus on Redis pub/sub: namespace `ns` is the channel
/// `tiercache:inv:<ns>`. Classic pub/sub keeps no history, so a subscription
/// reports `Connected { resumed: false }` after every (re)subscribe, and the
/// engine flushes its local tier then.
///
/// Publishing goes through an auto-reconnecting multiplexed connection; each
/// subscription has its own connection and task, which pings every heartbeat
/// interval and resubscribes forever with backoff until the stream is dropped.
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<BusInner>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("channel_prefix", &self.inner.channel_prefix)
            .finish()
    }
}

impl RedisBus {
    /// A builder; [`url`](RedisBusBuilder::url) is required.
    pub fn builder() -> RedisBusBuilder {
        RedisBusBuilder::default()
    }

    /// A bus on `url` with default settings.
    pub async fn connect(url: impl Into<String>) -> Result<Self, BuildError> {
        Self::builder().url(url).build().await
    }

    /// The channel that carries `namespace`.
    pub fn channel(&self, namespace: &str) -> String {
        format!("{}{namespace}", self.inner.channel_prefix)
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn heartbeat_at_least(&self, every: Duration) {
        let us = u64::try_from(every.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self.inner.asked_heartbeat_us.fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |cur| (cur == 0 || us < cur).then_some(us),
        );
    }

    async fn publish(&self, namespace: &str, payload: Bytes) -> Result<(), BusError> {
        let channel = self.channel(namespace);
        let mut c = self.inner.publisher.clone();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&channel).arg(payload.as_ref());
        let sent = cmd.query_async::<Value>(&mut c);
        match tokio::time::timeout(self.inner.publish_timeout, sent).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.inner.reporter.error("publish", "unavailable", &e);
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                {
                    Err(BusError::unavailable(e))
                } else {
                    Err(BusError::server(e))
                }
            }
            Err(_) => {
                self.inner.reporter.error(
                    "publish",
                    "timeout",
                    &"publish exceeded its time budget",
                );
                Err(BusError::Timeout)
            }
        }
    }

    async fn subscribe(&self, namespace: &str) -> Result<BoxStream<'static, BusEvent>, BusError> {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run_subscription(
            self.inner.clone(),
            self.channel(namespace),
            tx,
        ));
        Ok(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|ev| (ev, rx)) },
        )
        .boxed())
    }
}

/// Why a subscribed connection ended.
enum End {
    /// The subscriber dropped its stream.
    Dropped,
    /// The connection was lost (or stopped answering pings).
    Lost,
}

/// Subscribes, forwards, heartbeats; on loss reports `Disconnected` and
/// resubscribes with backoff, until the stream is dropped.
async fn run_subscription(inner: Arc<BusInner>, channel: String, tx: mpsc::Sender<BusEvent>) {
    let mut backoff = inner.backoff.0;
    // Report Disconnected once per outage, including one at start.
    let mut announced_down = false;
    loop {
        if tx.is_closed() {
            return;
        }
        let attempt = async {
            let pubsub = inner.client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>((sink, stream))
        };
        match tokio::time::timeout(inner.connect_timeout, attempt).await {
            Ok(Ok((mut sink, mut stream))) => {
                backoff = inner.backoff.0;
                if tx
                    .send(BusEvent::Connected { resumed: false })
                    .await
                    .is_err()
                {
                    return;
                }
                // Pings at the asked pace; each may take up to the
                // configured heartbeat before the link counts as lost (a
                // late answer is silence to the cache meanwhile).
                let mut tick = tokio::time::interval(inner.pace());
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let end = loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(m) => {
                                let ev = BusEvent::Message(Bytes::copy_from_slice(m.get_payload_bytes()));
                                if tx.send(ev).await.is_err() {
                                    break End::Dropped;
                                }
                            }
                            None => break End::Lost,
                        },
                        _ = tick.tick() => {
                            let ping = tokio::time::timeout(inner.heartbeat, sink.ping::<Value>()).await;
                            match ping {
                                Ok(Ok(_)) => {
                                    if tx.send(BusEvent::Heartbeat).await.is_err() {
                                        break End::Dropped;
                                    }
                                }
                                Ok(Err(e)) => {
                                    inner.reporter.error("heartbeat", "unavailable", &e);
                                    break End::Lost;
                                }
                                Err(_) => {
                                    inner.reporter.error("heartbeat", "timeout", &"ping unanswered");
                                    break End::Lost;
                                }
                            }
                        }
                        _ = tx.closed() => break End::Dropped,
                    }
                };
                match end {
                    End::Dropped => return,
                    End::Lost => {
                        inner.reporter.state("subscription lost on", &channel);
                        if tx.send(BusEvent::Disconnected).await.is_err() {
                            return;
                        }
                        announced_down = true;
                        // Retry at once: the server may have only dropped us.
                        continue;
                    }
                }
            }
            Ok(Err(e)) => inner.reporter.error("subscribe", "unavailable", &e),
            Err(_) => inner
                .reporter
                .error("subscribe", "timeout", &"subscribe timed out"),
        }
        if !announced_down {
            if tx.send(BusEvent::Disconnected).await.is_err() {
                return;
            }
            announced_down = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(inner.backoff.1);
    }
}
