//! Connections: one multiplexed connection (standalone or the Sentinel-resolved
//! master) kept alive by a supervisor task, or a Redis Cluster connection
//! watched by a monitor task. Both report connection events.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline,
    RedisConnectionInfo, RedisFuture, RedisResult, Value,
};
use tiercache_core::backend::SharedEvent;
use tokio::sync::{Notify, broadcast};

use crate::breaker::Breaker;
use crate::error::BuildError;
use crate::report::Reporter;

/// Where the CA certificates a TLS connection trusts come from (instead of
/// the system's roots).
#[derive(Clone)]
pub(crate) enum TlsCa {
    /// A PEM file, read at build time.
    Path(std::path::PathBuf),
    /// PEM bytes.
    Pem(Vec<u8>),
}

impl std::fmt::Debug for TlsCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsCa::Path(p) => f.debug_tuple("Path").field(p).finish(),
            TlsCa::Pem(b) => write!(f, "Pem({} bytes)", b.len()),
        }
    }
}

/// The name of the builder setting for a trusted CA.
pub(crate) const TLS_CA_FIELD: &str = "tls_ca_cert";

/// Reads and sanity-checks the CA certificate(s): PEM bytes.
pub(crate) fn load_ca(ca: &TlsCa) -> Result<Vec<u8>, BuildError> {
    if !cfg!(feature = "tls") {
        return Err(BuildError::config(
            TLS_CA_FIELD,
            "this build of tiercache-redis lacks the `tls` feature",
        ));
    }
    let (pem, from) = match ca {
        TlsCa::Path(path) => (
            std::fs::read(path).map_err(|e| {
                BuildError::config(
                    TLS_CA_FIELD,
                    format!("cannot read `{}`: {e}", path.display()),
                )
            })?,
            format!("`{}`", path.display()),
        ),
        TlsCa::Pem(pem) => (pem.clone(), "the PEM given".to_owned()),
    };
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(BuildError::config(
            TLS_CA_FIELD,
            format!("{from} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)"),
        ));
    }
    Ok(pem)
}

/// A client for `info`, trusting `tls_ca` (PEM) instead of the system's
/// roots when the address is TLS (`rediss://`).
pub(crate) fn make_client(info: ConnectionInfo, tls_ca: Option<&[u8]>) -> RedisResult<Client> {
    #[cfg(feature = "tls")]
    if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        ensure_crypto_provider();
    }
    #[cfg(feature = "tls")]
    if let Some(pem) = tls_ca
        && matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. })
    {
        return Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        );
    }
    #[cfg(not(feature = "tls"))]
    let _ = tls_ca;
    Client::open(info)
}

/// rustls needs a process-wide crypto provider; install ring's unless the
/// application installed one (a lost race with another installer is fine).
#[cfg(feature = "tls")]
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Turns a failed first connection into an error naming the setting at
/// fault when the server refused the TLS handshake or the credentials.
pub(crate) fn connect_error(e: redis::RedisError, tls_ca_set: bool) -> BuildError {
    let text = format!("{e:?} {e}");
    let lower = text.to_ascii_lowercase();
    // Credentials sent and refused. (`NOAUTH`, none sent, stays a
    // `Connect` error: the server's message says what is missing.)
    if !text.contains("NOAUTH")
        && (e.kind() == redis::ErrorKind::AuthenticationFailed
            || text.contains("WRONGPASS")
            || lower.contains("invalid password")
            || lower.contains("invalid username-password"))
    {
        return BuildError::config_from(
            "password",
            "the server refused the credentials (check `username`/`password`)",
            e,
        );
    }
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("notvalidforname")
    {
        let (field, hint) = if tls_ca_set {
            (TLS_CA_FIELD, "the server's certificate is not trusted")
        } else {
            (
                TLS_CA_FIELD,
                "the server's certificate is not trusted by the system's roots; set `tls_ca_cert`",
            )
        };
        return BuildError::config_from(field, hint, e);
    }
    if lower.contains("handshake") {
        return BuildError::config_from("tls", "the TLS handshake failed", e);
    }
    BuildError::Connect(e)
}

/// A connection a call runs on: cheap to clone, shared by concurrent calls.
#[derive(Clone)]
pub(crate) enum Conn {
    /// Standalone or Sentinel-resolved master.
    Single(MultiplexedConnection),
    /// Redis Cluster (routes by slot, follows MOVED/ASK and failovers).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Where to connect.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    Standalone(ConnectionInfo),
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master_name: String,
        /// Credentials and database for the master.
        redis: RedisConnectionInfo,
        tls: bool,
    },
    Cluster(Box<ClusterClient>),
}

/// How connections are made and watched.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    pub(crate) target: Target,
    pub(crate) connect_timeout: Duration,
    pub(crate) health_interval: Duration,
    pub(crate) min_backoff: Duration,
    pub(crate) max_backoff: Duration,
    /// PEM of the CA certificates TLS connections trust (default: the
    /// system's roots).
    pub(crate) tls_ca: Option<Vec<u8>>,
}

/// The current connection and what is known about it.
struct CurrentConn {
    generation: u64,
    conn: Option<Conn>,
    /// The server address behind a single connection (the Sentinel master).
    addr: Option<String>,
}

/// State shared between calls and the supervisor.
pub(crate) struct Link {
    current: Mutex<CurrentConn>,
    wake: Arc<Notify>,
    pub(crate) events: broadcast::Sender<SharedEvent>,
    pub(crate) breaker: Breaker,
    pub(crate) reporter: Reporter,
    cluster: bool,
}

impl Link {
    pub(crate) fn new(breaker: Breaker, reporter: Reporter, cluster: bool) -> Self {
        Self {
            current: Mutex::new(CurrentConn {
                generation: 0,
                conn: None,
                addr: None,
            }),
            wake: Arc::new(Notify::new()),
            events: broadcast::channel(64).0,
            breaker,
            reporter,
            cluster,
        }
    }

    fn lock(&self) -> MutexGuard<'_, CurrentConn> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection to use now and its generation, if connected.
    pub(crate) fn current(&self) -> Option<(u64, Conn)> {
        let s = self.lock();
        s.conn.clone().map(|c| (s.generation, c))
    }

    fn install(&self, conn: Conn, addr: Option<String>) -> Option<String> {
        let mut s = self.lock();
        s.generation += 1;
        s.conn = Some(conn);
        std::mem::replace(&mut s.addr, addr)
    }

    /// A call on generation `generation` found the connection broken (or the
    /// server no longer a master): drop it and have the supervisor reconnect.
    /// On Cluster, where redis-rs reconnects by itself, it only asks the
    /// monitor to check now.
    pub(crate) fn broken(&self, generation: u64) {
        if !self.cluster {
            let mut s = self.lock();
            if s.generation != generation || s.conn.is_none() {
                return;
            }
            s.conn = None;
        }
        self.wake.notify_one();
    }

    fn emit(&self, event: SharedEvent) {
        // No receiver is fine: nobody is listening for events.
        let _ = self.events.send(event);
    }
}

/// Something that owns a [`Link`]; the supervisor holds it weakly so that it
/// ends when the last handle is dropped.
pub(crate) trait HasLink: Send + Sync + 'static {
    fn link(&self) -> &Link;
}

pub(crate) fn tcp_info(
    host: &str,
    port: u16,
    tls: bool,
    redis: &RedisConnectionInfo,
) -> RedisResult<ConnectionInfo> {
    let scheme = if tls { "rediss" } else { "redis" };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let info = format!("{scheme}://{host}:{port}").into_connection_info()?;
    Ok(info.set_redis_settings(redis.clone()))
}

pub(crate) fn io_error(msg: String) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, msg))
}

impl Connector {
    fn conn_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout.max(Duration::from_secs(1))))
    }

    pub(crate) async fn open_single(
        &self,
        info: ConnectionInfo,
    ) -> RedisResult<MultiplexedConnection> {
        let client = make_client(info, self.tls_ca.as_deref())?;
        let config = self.conn_config();
        let fut = client.get_multiplexed_async_connection_with_config(&config);
        match tokio::time::timeout(self.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(io_error("connect timed out".into())),
        }
    }

    /// Asks the Sentinels, in turn, for the master's address.
    async fn resolve_master(
        &self,
        sentinels: &[ConnectionInfo],
        master_name: &str,
    ) -> RedisResult<(String, u16)> {
        let mut last = io_error("no sentinel answered".into());
        for sentinel in sentinels {
            let asked = async {
                let mut c = self.open_single(sentinel.clone()).await?;
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(master_name)
                    .query_async::<Option<(String, u16)>>(&mut c)
                    .await
            };
            match tokio::time::timeout(self.connect_timeout, asked).await {
                Ok(Ok(Some(addr))) => return Ok(addr),
                Ok(Ok(None)) => {
                    last = io_error(format!("sentinel does not know master `{master_name}`"));
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = io_error("sentinel did not answer in time".into()),
            }
        }
        Err(last)
    }

    /// Connects once: returns the connection and, for a single server, its address.
    pub(crate) async fn connect(&self) -> RedisResult<(Conn, Option<String>)> {
        match &self.target {
            Target::Standalone(info) => {
                let addr = info.addr().to_string();
                let mut c = self.open_single(info.clone()).await?;
                // Proves the credentials too: a connection without AUTH opens fine.
                match tokio::time::timeout(
                    self.connect_timeout,
                    redis::cmd("PING").query_async::<Value>(&mut c),
                )
                .await
                {
                    Ok(r) => r?,
                    Err(_) => return Err(io_error("PING timed out".into())),
                };
                Ok((Conn::Single(c), Some(addr)))
            }
            Target::Sentinel {
                sentinels,
                master_name,
                redis,
                tls,
            } => {
                let (host, port) = self.resolve_master(sentinels, master_name).await?;
                let mut c = self
                    .open_single(tcp_info(&host, port, *tls, redis)?)
                    .await?;
                check_master(&mut c, self.connect_timeout).await?;
                Ok((Conn::Single(c), Some(format!("{host}:{port}"))))
            }
            Target::Cluster(client) => {
                match tokio::time::timeout(self.connect_timeout, client.get_async_connection())
                    .await
                {
                    Ok(r) => Ok((Conn::Cluster(r?), None)),
                    Err(_) => Err(io_error("cluster connect timed out".into())),
                }
            }
        }
    }

    fn is_sentinel(&self) -> bool {
        matches!(self.target, Target::Sentinel { .. })
    }
}

/// `ROLE` must say `master`: Sentinel may still name a demoted server.
async fn check_master(c: &mut MultiplexedConnection, within: Duration) -> RedisResult<()> {
    let role = tokio::time::timeout(within, redis::cmd("ROLE").query_async::<Value>(c)).await;
    let role = match role {
        Ok(r) => r?,
        Err(_) => return Err(io_error("ROLE timed out".into())),
    };
    let first = match &role {
        Value::Array(items) => items.first(),
        _ => None,
    };
    let is_master = match first {
        Some(Value::BulkString(b)) => b.as_slice() == b"master",
        Some(Value::SimpleString(s)) => s == "master",
        _ => false,
    };
    if is_master {
        Ok(())
    } else {
        Err(io_error(
            "server is not a master (failover in progress?)".into(),
        ))
    }
}

/// Installs the first connection (when given one) and spawns the task that
/// keeps the link alive.
pub(crate) fn start<H: HasLink>(
    owner: &Arc<H>,
    connector: Connector,
    first: Option<(Conn, Option<String>)>,
) {
    let link = owner.link();
    let cluster = matches!(connector.target, Target::Cluster(_));
    let connected = first.is_some();
    if let Some((conn, addr)) = first {
        link.install(conn, addr);
    }
    let weak = Arc::downgrade(owner);
    let wake = link.wake.clone();
    if cluster {
        tokio::spawn(monitor_cluster(weak, wake, connector, connected));
    } else {
        tokio::spawn(supervise(weak, wake, connector, connected));
    }
}

/// Keeps a single connection: reconnects (re-resolving the master through the
/// Sentinels every time) and health-checks it.
async fn supervise<H: HasLink>(
    weak: Weak<H>,
    wake: Arc<Notify>,
    connector: Connector,
    mut ever_connected: bool,
) {
    let mut tick = tokio::time::interval(connector.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let current = match weak.upgrade() {
            Some(owner) => owner.link().current(),
            None => return,
        };
        match current {
            Some((generation, conn)) => {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tick.tick() => {
                        if let Err(e) = health_check(conn, &connector).await {
                            let Some(owner) = weak.upgrade() else { return };
                            owner.link().reporter.error("health", "unavailable", &e);
                            owner.link().broken(generation);
                        }
                    }
                }
            }
            None => {
                if ever_connected && let Some(owner) = weak.upgrade() {
                    owner.link().reporter.state("disconnected", &"");
                    owner.link().emit(SharedEvent::Disconnected);
                }
                // Returns only once connected again (or when the owner is gone).
                if !reconnect(&weak, &connector, ever_connected).await {
                    return;
                }
                ever_connected = true;
            }
        }
    }
}

async fn health_check(mut conn: Conn, connector: &Connector) -> RedisResult<()> {
    let within = connector.connect_timeout;
    match &mut conn {
        Conn::Single(c) if connector.is_sentinel() => check_master(c, within).await,
        _ => match tokio::time::timeout(within, redis::cmd("PING").query_async::<Value>(&mut conn))
            .await
        {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(io_error("PING timed out".into())),
        },
    }
}

/// Reconnects with backoff until it succeeds (true) or the owner is gone (false).
async fn reconnect<H: HasLink>(weak: &Weak<H>, connector: &Connector, announce: bool) -> bool {
    let mut backoff = connector.min_backoff;
    loop {
        match connector.connect().await {
            Ok((conn, addr)) => {
                let Some(owner) = weak.upgrade() else {
                    return false;
                };
                let link = owner.link();
                let previous = link.install(conn, addr.clone());
                link.breaker.reset();
                if announce {
                    let moved = connector.is_sentinel() && previous.is_some() && previous != addr;
                    if moved {
                        link.reporter
                            .state("failed over to", &addr.as_deref().unwrap_or("?"));
                        link.emit(SharedEvent::FailedOver);
                    } else {
                        link.reporter
                            .state("reconnected to", &addr.as_deref().unwrap_or("?"));
                        link.emit(SharedEvent::Reconnected);
                    }
                } else {
                    link.reporter
                        .state("connected to", &addr.as_deref().unwrap_or("?"));
                }
                return true;
            }
            Err(e) => {
                let Some(owner) = weak.upgrade() else {
                    return false;
                };
                owner.link().reporter.error("connect", "unavailable", &e);
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(connector.max_backoff);
    }
}

/// The masters serving each slot range, from `CLUSTER SLOTS`: sorted
/// `(first slot, last slot, "host:port")`.
fn parse_slots(v: &Value) -> Option<Vec<(i64, i64, String)>> {
    let Value::Array(ranges) = v else { return None };
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let Value::Array(items) = r else { return None };
        let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
            (items.first(), items.get(1), items.get(2))
        else {
            return None;
        };
        let host = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => return None,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            return None;
        };
        out.push((*first, *last, format!("{host}:{port}")));
    }
    out.sort();
    Some(out)
}

/// Watches a cluster connection: redis-rs reconnects and refreshes slots by
/// itself; this pings every master and reads the slot map each interval (and
/// at once when a call failed), reporting `Disconnected` when a master stops
/// answering and `FailedOver` when the masters of the slot map change (or
/// all answer again after an outage; replication is asynchronous).
async fn monitor_cluster<H: HasLink>(
    weak: Weak<H>,
    wake: Arc<Notify>,
    connector: Connector,
    mut connected: bool,
) {
    let mut tick = tokio::time::interval(connector.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = connected;
    let mut backoff = connector.min_backoff;
    let mut known_slots: Option<Vec<(i64, i64, String)>> = None;
    loop {
        if !connected {
            match connector.connect().await {
                Ok((conn, _)) => {
                    let Some(owner) = weak.upgrade() else { return };
                    owner.link().install(conn, None);
                    owner.link().breaker.reset();
                    owner.link().reporter.state("connected to", &"cluster");
                    connected = true;
                    healthy = true;
                    continue;
                }
                Err(e) => {
                    let Some(owner) = weak.upgrade() else { return };
                    owner.link().reporter.error("connect", "unavailable", &e);
                    drop(owner);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(connector.max_backoff);
                    continue;
                }
            }
        }
        let Some((_, conn)) = (match weak.upgrade() {
            Some(owner) => owner.link().current(),
            None => return,
        }) else {
            continue;
        };
        let Conn::Cluster(mut c) = conn else { continue };
        let ping = c.route_command(
            redis::cmd("PING"),
            RoutingInfo::MultiNode((
                MultipleNodeRoutingInfo::AllMasters,
                Some(ResponsePolicy::AllSucceeded),
            )),
        );
        let ok = matches!(
            tokio::time::timeout(connector.connect_timeout, ping).await,
            Ok(Ok(_))
        );
        let slots = c.route_command(
            redis::cmd("CLUSTER").arg("SLOTS").to_owned(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        );
        let slots = match tokio::time::timeout(connector.connect_timeout, slots).await {
            Ok(Ok(v)) => parse_slots(&v).filter(|s| !s.is_empty()),
            _ => None,
        };
        let Some(owner) = weak.upgrade() else { return };
        let link = owner.link();
        let mut failed_over = false;
        if let Some(slots) = slots {
            if known_slots.as_ref().is_some_and(|k| *k != slots) {
                failed_over = true;
            }
            known_slots = Some(slots);
        }
        if ok && !healthy {
            healthy = true;
            failed_over = true;
            link.breaker.reset();
        } else if !ok && healthy {
            healthy = false;
            link.reporter.state("cluster master unreachable", &"");
            link.emit(SharedEvent::Disconnected);
        }
        if failed_over {
            link.reporter
                .state("cluster topology changed", &"(failed over)");
            link.emit(SharedEvent::FailedOver);
        }
        drop(owner);
        tokio::select! {
            _ = wake.notified() => {}
            _ = tick.tick() => {}
        }
    }
}
