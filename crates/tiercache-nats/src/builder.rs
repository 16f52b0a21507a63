//! [`NatsBusBuilder`]: configuration, validation and connecting.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{ConnectOptions, ServerAddr};
use tiercache_core::ConfigError;
use tokio::sync::watch;

use crate::bus::{Inner, JetStreamMode, NatsBus, Shared, ensure_stream};
use crate::error::NatsBusError;
use crate::signals::{Signals, heartbeat_task};
use crate::subject::{DEFAULT_SUBJECT_PREFIX, check_prefix, check_stream_name};

/// The heartbeat interval used when none is configured.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a JetStream stream created by the bus keeps messages, unless
/// configured otherwise.
pub const DEFAULT_JETSTREAM_MAX_AGE: Duration = Duration::from_secs(3600);

/// Configures and connects a [`NatsBus`]. Made by [`NatsBus::builder`].
///
/// Only [`url`](Self::url) is required. Every problem with a value is reported
/// by [`build`](Self::build) as [`NatsBusError::Config`] naming the
/// builder method at fault.
#[derive(Clone)]
#[must_use]
pub struct NatsBusBuilder {
    url: Option<String>,
    credentials_file: Option<PathBuf>,
    token: Option<String>,
    user_password: Option<(String, String)>,
    require_tls: bool,
    tls_ca_cert: Option<PathBuf>,
    subject_prefix: String,
    heartbeat: Duration,
    jetstream: Option<String>,
    jetstream_max_age: Duration,
    jetstream_replicas: usize,
    publish_timeout: Duration,
    connect_timeout: Duration,
    subscription_capacity: Option<usize>,
    retry_on_initial_connect: bool,
    name: Option<String>,
}

impl std::fmt::Debug for NatsBusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are never printed.
        f.debug_struct("NatsBusBuilder")
            .field("url", &self.url)
            .field("credentials_file", &self.credentials_file)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("user", &self.user_password.as_ref().map(|(u, _)| u))
            .field("require_tls", &self.require_tls)
            .field("tls_ca_cert", &self.tls_ca_cert)
            .field("subject_prefix", &self.subject_prefix)
            .field("heartbeat", &self.heartbeat)
            .field("jetstream", &self.jetstream)
            .field("jetstream_max_age", &self.jetstream_max_age)
            .field("jetstream_replicas", &self.jetstream_replicas)
            .field("publish_timeout", &self.publish_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("retry_on_initial_connect", &self.retry_on_initial_connect)
            .field("name", &self.name)
            .finish()
    }
}

impl Default for NatsBusBuilder {
    fn default() -> Self {
        Self {
            url: None,
            credentials_file: None,
            token: None,
            user_password: None,
            require_tls: false,
            tls_ca_cert: None,
            subject_prefix: DEFAULT_SUBJECT_PREFIX.to_owned(),
            heartbeat: DEFAULT_HEARTBEAT,
            jetstream: None,
            jetstream_max_age: DEFAULT_JETSTREAM_MAX_AGE,
            jetstream_replicas: 1,
            publish_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            subscription_capacity: None,
            retry_on_initial_connect: false,
            name: None,
        }
    }
}

impl NatsBusBuilder {
    /// The server to connect to, e.g. `nats://127.0.0.1:4222` or
    /// `tls://nats.internal:4222`; several servers of a cluster may be given
    /// separated by commas (see [`urls`](Self::urls)). Required (this or
    /// `urls`).
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Several seed servers of one NATS cluster, e.g. every node's
    /// `nats://host:4222` (the same as [`url`](Self::url) with the URLs
    /// joined by commas; it replaces what `url` set).
    ///
    /// The client connects to one of them (in random order, so a fleet
    /// spreads over the seeds) and also learns the cluster's other servers
    /// from the server's `INFO`. When its server goes away it reconnects to
    /// another seed or learned server; in core mode the subscription then
    /// reports `Connected { resumed: false }`, in JetStream mode it resumes
    /// after its last sequence (`resumed: true`).
    ///
    /// ```
    /// use tiercache_nats::NatsBus;
    /// let builder = NatsBus::builder()
    ///     .urls(["nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://10.0.0.3:4222"])
    ///     .jetstream("TIERCACHE")
    ///     .jetstream_replicas(3);
    /// # drop(builder);
    /// ```
    pub fn urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list: Vec<String> = urls.into_iter().map(Into::into).collect();
        self.url = Some(list.join(","));
        self
    }

    /// Authenticates with a NATS `.creds` file (JWT and NKey seed).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Authenticates with a user name and password.
    pub fn user_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user_password = Some((user.into(), password.into()));
        self
    }

    /// Refuses to talk to a server without TLS (default: whatever the server
    /// and the URL scheme ask for).
    pub fn require_tls(mut self, require: bool) -> Self {
        self.require_tls = require;
        self
    }

    /// Trusts the CA certificate(s) in this PEM file for the server's TLS
    /// certificate, besides the system's roots. The file is checked by
    /// [`build`](Self::build); a server whose certificate no trusted CA
    /// signed fails the first connection with an error naming `tls_ca_cert`.
    pub fn tls_ca_cert(mut self, pem_file: impl Into<PathBuf>) -> Self {
        self.tls_ca_cert = Some(pem_file.into());
        self
    }

    /// The subject prefix: namespace `ns` is carried on `<prefix>.<token(ns)>`
    /// (see [`namespace_token`](crate::namespace_token)). Default
    /// `tiercache.inv`. Every instance sharing invalidations must use the same.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// The longest a live subscription goes without a
    /// [`BusEvent::Heartbeat`](tiercache_core::backend::BusEvent::Heartbeat) (default
    /// 2 s). The bus proves liveness with a round trip through the server every
    /// half interval, and pings the server every interval (three missed pongs
    /// count as a disconnect). At least 10 ms.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// Carries invalidations in the JetStream stream `stream_name` (created
    /// when missing, with subjects `<prefix>.>` and file storage), so a
    /// subscription that reconnects replays what it missed and reports
    /// `Connected { resumed: true }`. Without it, core NATS subjects are used:
    /// the lowest latency, but what is published while a subscriber is cut off
    /// is lost to it (it is told `resumed: false`).
    pub fn jetstream(mut self, stream_name: impl Into<String>) -> Self {
        self.jetstream = Some(stream_name.into());
        self
    }

    /// How long a stream created by [`jetstream`](Self::jetstream) keeps
    /// messages (default 1 h): the longest outage a subscriber can resume
    /// from. An existing stream keeps its own limits.
    pub fn jetstream_max_age(mut self, max_age: Duration) -> Self {
        self.jetstream_max_age = max_age;
        self
    }

    /// How many servers of the cluster hold a copy of a stream created by
    /// [`jetstream`](Self::jetstream) (`num_replicas`; default 1, at most 5,
    /// and no more than the cluster has JetStream servers). With 3 the stream
    /// survives the loss of any one server: a new stream leader is elected
    /// and every acknowledged invalidation is still there to resume from. An
    /// existing stream keeps its own replica count (a difference is logged).
    pub fn jetstream_replicas(mut self, replicas: usize) -> Self {
        self.jetstream_replicas = replicas;
        self
    }

    /// How long a publish may take (default 2 s) before it fails with
    /// [`BusError::Timeout`](tiercache_core::backend::BusError::Timeout). In JetStream
    /// mode this includes the stream's acknowledgement.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// How long one connection attempt may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many received messages the client buffers per subscription before
    /// it drops them and the subscription reports
    /// [`BusEvent::Lost`](tiercache_core::backend::BusEvent::Lost) (default: async-nats'
    /// default, 65 536). In JetStream mode dropped messages are re-fetched, so
    /// nothing is lost.
    pub fn subscription_capacity(mut self, capacity: usize) -> Self {
        self.subscription_capacity = Some(capacity);
        self
    }

    /// When the server cannot be reached, [`build`](Self::build) still
    /// succeeds and the client keeps trying in the background: subscriptions
    /// report `Disconnected` until it connects, and publishes fail with
    /// [`BusError::Unavailable`](tiercache_core::backend::BusError::Unavailable).
    /// Default `false`: `build` fails, so a wrong URL or credentials are
    /// caught at start.
    pub fn retry_on_initial_connect(mut self, retry: bool) -> Self {
        self.retry_on_initial_connect = retry;
        self
    }

    /// The connection name the server shows in its monitoring (default
    /// `tiercache`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    fn check(&self) -> Result<Vec<ServerAddr>, ConfigError> {
        let url = self
            .url
            .as_deref()
            .ok_or_else(|| ConfigError::new("url", "is required"))?;
        let addrs = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|e| ConfigError::new("url", format!("{s:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(ConfigError::new("url", "is empty"));
        }
        let auth = [
            self.credentials_file
                .is_some()
                .then_some("credentials_file"),
            self.token.is_some().then_some("token"),
            self.user_password.is_some().then_some("user_password"),
        ];
        let mut given = auth.iter().flatten();
        if let (Some(first), Some(second)) = (given.next(), given.next()) {
            return Err(ConfigError::new(
                second,
                format!("conflicts with `{first}`: give one way to authenticate"),
            ));
        }
        if let Some(t) = &self.token
            && t.is_empty()
        {
            return Err(ConfigError::new("token", "must not be empty"));
        }
        if let Some((u, _)) = &self.user_password
            && u.is_empty()
        {
            return Err(ConfigError::new(
                "user_password",
                "the user must not be empty",
            ));
        }
        if let Some(path) = &self.tls_ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError::new(
                    "tls_ca_cert",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(ConfigError::new(
                    "tls_ca_cert",
                    format!("{} holds no PEM certificate", path.display()),
                ));
            }
        }
        check_prefix(&self.subject_prefix)?;
        if self.heartbeat < Duration::from_millis(10) {
            return Err(ConfigError::new("heartbeat", "must be at least 10 ms"));
        }
        if let Some(stream) = &self.jetstream {
            check_stream_name(stream)?;
        }
        if self.jetstream_max_age.is_zero() {
            return Err(ConfigError::new(
                "jetstream_max_age",
                "must be positive (a stream that keeps nothing cannot replay)",
            ));
        }
        if !(1..=5).contains(&self.jetstream_replicas) {
            return Err(ConfigError::new(
                "jetstream_replicas",
                format!(
                    "is {}; must be 1 to 5 (NATS keeps at most 5 copies of a stream)",
                    self.jetstream_replicas
                ),
            ));
        }
        if self.publish_timeout.is_zero() {
            return Err(ConfigError::new("publish_timeout", "must be positive"));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::new("connect_timeout", "must be positive"));
        }
        if self.subscription_capacity == Some(0) {
            return Err(ConfigError::new(
                "subscription_capacity",
                "must be at least 1",
            ));
        }
        Ok(addrs)
    }

    /// Checks the configuration, connects, and (in JetStream mode) creates
    /// the stream if it is missing.
    ///
    /// # Errors
    ///
    /// [`NatsBusError::Config`] for a bad value (named), [`NatsBusError::Connect`]
    /// when the server cannot be reached or refuses the credentials (unless
    /// [`retry_on_initial_connect`](Self::retry_on_initial_connect)), and
    /// [`NatsBusError::JetStream`] when the stream cannot be created or found.
    pub async fn build(self) -> Result<NatsBus, NatsBusError> {
        let addrs = self.check()?;
        let signals = Signals::new();

        let mut options = ConnectOptions::new()
            .event_callback({
                let signals = Arc::clone(&signals);
                move |event| {
                    let signals = Arc::clone(&signals);
                    async move { signals.on_event(event) }
                }
            })
            .name(self.name.as_deref().unwrap_or("tiercache"))
            .max_reconnects(None)
            .ping_interval(self.heartbeat)
            .connection_timeout(self.connect_timeout)
            .reconnect_delay_callback(reconnect_delay)
            .require_tls(self.require_tls);
        if let Some(capacity) = self.subscription_capacity {
            options = options.subscription_capacity(capacity);
        }
        if let Some(path) = &self.credentials_file {
            options = options.credentials_file(path).await.map_err(|e| {
                ConfigError::new("credentials_file", format!("{}: {e}", path.display()))
            })?;
        }
        if let Some(path) = &self.tls_ca_cert {
            options = options.add_root_certificates(path.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some((user, password)) = &self.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if self.retry_on_initial_connect {
            options = options.retry_on_initial_connect();
        }

        // Bounded: one attempt per server, each within the connect timeout
        // (async-nats bounds each; this is the backstop against a hang).
        let servers = u32::try_from(addrs.len()).unwrap_or(u32::MAX);
        let bound = self
            .connect_timeout
            .saturating_mul(servers)
            .saturating_add(Duration::from_secs(1));
        let connecting = options.connect(addrs);
        let client = if self.retry_on_initial_connect {
            connecting.await.map_err(|e| self.connect_error(e))?
        } else {
            match tokio::time::timeout(bound, connecting).await {
                Ok(r) => r.map_err(|e| self.connect_error(e))?,
                Err(_) => {
                    return Err(NatsBusError::Connect(async_nats::ConnectError::new(
                        async_nats::ConnectErrorKind::TimedOut,
                    )));
                }
            }
        };
        if !self.retry_on_initial_connect {
            // The callback reports the first connection too; wait for it so a
            // subscription made right away starts out connected.
            let mut conn = signals.conn();
            let _ =
                tokio::time::timeout(self.connect_timeout, conn.wait_for(|s| s.connected)).await;
        }

        let jetstream = match &self.jetstream {
            None => None,
            Some(name) => {
                let mode = JetStreamMode {
                    context: jetstream::new(client.clone()),
                    config: jetstream::stream::Config {
                        name: name.clone(),
                        subjects: vec![format!("{}.>", self.subject_prefix)],
                        max_age: self.jetstream_max_age,
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: self.jetstream_replicas,
                        description: Some("tiercache invalidations".to_owned()),
                        ..Default::default()
                    },
                    wildcard: format!("{}.>", self.subject_prefix),
                };
                if !self.retry_on_initial_connect {
                    ensure_stream(&mode).await.map_err(|reason| match reason {
                        crate::bus::StreamProblem::Config(e) => NatsBusError::Config(e),
                        crate::bus::StreamProblem::Other(source) => NatsBusError::JetStream {
                            stream: name.clone(),
                            source,
                        },
                    })?;
                }
                Some(mode)
            }
        };

        let probe_inbox = client.new_inbox();
        let probes = client.subscribe(probe_inbox.clone()).await.map_err(|e| {
            NatsBusError::Connect(async_nats::ConnectError::with_source(
                async_nats::ConnectErrorKind::Io,
                e,
            ))
        })?;
        let shared = Arc::new(Shared {
            client: client.clone(),
            signals: Arc::clone(&signals),
            prefix: self.subject_prefix.clone(),
            probe_inbox: probe_inbox.clone(),
            heartbeat: self.heartbeat,
            publish_timeout: self.publish_timeout,
            link_timeout: (self.heartbeat * 2).max(Duration::from_secs(2)),
            jetstream,
        });
        let task = tokio::spawn(heartbeat_task(
            signals,
            client,
            probe_inbox,
            probes,
            self.heartbeat / 2,
        ));
        let (shutdown, _) = watch::channel(());
        Ok(NatsBus {
            inner: Arc::new(Inner {
                shared,
                shutdown,
                heartbeat_task: task,
            }),
        })
    }

    /// Names the setting at fault when the server refused the credentials
    /// or the TLS handshake failed.
    fn connect_error(&self, e: async_nats::ConnectError) -> NatsBusError {
        use async_nats::ConnectErrorKind as K;
        let text = e.to_string().to_ascii_lowercase();
        let auth_field = if self.token.is_some() {
            Some("token")
        } else if self.user_password.is_some() {
            Some("user_password")
        } else if self.credentials_file.is_some() {
            Some("credentials_file")
        } else {
            None
        };
        let (field, reason) = match e.kind() {
            K::Authentication | K::AuthorizationViolation => match auth_field {
                Some(field) => (field, "the server refused the credentials"),
                None => (
                    "token",
                    "the server requires authentication: set `token`, `user_password` or `credentials_file`",
                ),
            },
            K::Tls if text.contains("certificate") || text.contains("unknownissuer") => (
                "tls_ca_cert",
                if self.tls_ca_cert.is_some() {
                    "the server's certificate is not trusted"
                } else {
                    "the server's certificate is not trusted by the system's roots; set `tls_ca_cert`"
                },
            ),
            K::Tls => ("require_tls", "the TLS handshake failed"),
            K::Io
                if self.require_tls
                    && (text.contains("invalidcontenttype")
                        || text.contains("corrupt message")) =>
            {
                (
                    "require_tls",
                    "the TLS handshake failed (does the server speak TLS?)",
                )
            }
            _ if text.contains("certificate") => {
                ("tls_ca_cert", "the server's certificate is not trusted")
            }
            _ => return NatsBusError::Connect(e),
        };
        NatsBusError::Rejected {
            field,
            reason: reason.to_owned(),
            source: e,
        }
    }

    /// The former name of [`build`](Self::build).
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    #[deprecated(note = "renamed to `build`")]
    pub async fn connect(self) -> Result<NatsBus, NatsBusError> {
        self.build().await
    }
}

/// Reconnect backoff: at once, then doubling from 50 ms up to 2 s, with
/// jitter so a fleet of instances does not reconnect in lockstep.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(6);
    let base = Duration::from_millis(50u64 << exp).min(Duration::from_secs(2));
    base.mul_f64(rand::random_range(0.5..1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(b: NatsBusBuilder) -> &'static str {
        b.check().unwrap_err().field
    }

    #[test]
    fn config_errors_name_the_field() {
        let ok = || NatsBusBuilder::default().url("nats://127.0.0.1:1");
        assert!(ok().check().is_ok());
        assert_eq!(field(NatsBusBuilder::default()), "url");
        assert_eq!(field(ok().url("")), "url");
        assert_eq!(field(ok().url("nats://host:notaport")), "url");
        assert_eq!(field(ok().subject_prefix("a.>")), "subject_prefix");
        assert_eq!(field(ok().heartbeat(Duration::ZERO)), "heartbeat");
        assert_eq!(field(ok().jetstream("a.b")), "jetstream");
        assert_eq!(
            field(ok().jetstream("S").jetstream_max_age(Duration::ZERO)),
            "jetstream_max_age"
        );
        assert_eq!(
            field(ok().publish_timeout(Duration::ZERO)),
            "publish_timeout"
        );
        assert_eq!(
            field(ok().connect_timeout(Duration::ZERO)),
            "connect_timeout"
        );
        assert_eq!(
            field(ok().subscription_capacity(0)),
            "subscription_capacity"
        );
        assert_eq!(field(ok().token("")), "token");
        assert_eq!(
            field(ok().token("t").user_password("u", "p")),
            "user_password"
        );
        assert_eq!(field(ok().credentials_file("/x").token("t")), "token");
        assert_eq!(
            field(ok().tls_ca_cert("/nonexistent/ca.pem")),
            "tls_ca_cert"
        );
        assert!(ok().url("nats://a:1, nats://b:2").check().is_ok());
        assert_eq!(
            field(ok().jetstream("S").jetstream_replicas(0)),
            "jetstream_replicas"
        );
        assert_eq!(
            field(ok().jetstream("S").jetstream_replicas(6)),
            "jetstream_replicas"
        );
        assert!(ok().jetstream("S").jetstream_replicas(5).check().is_ok());
        assert_eq!(field(ok().urls(Vec::<String>::new())), "url");
    }

    #[test]
    fn urls_are_every_seed() {
        let addrs = NatsBusBuilder::default()
            .urls(["nats://127.0.0.1:1", "nats://127.0.0.1:2", "tls://h:3"])
            .check()
            .unwrap();
        assert_eq!(addrs.len(), 3);
        assert_eq!(addrs[1].port(), 2);
        assert!(addrs[2].tls_required());
    }

    #[test]
    fn debug_hides_secrets() {
        let b = NatsBusBuilder::default()
            .token("s3cret")
            .user_password("u", "hunter2");
        let s = format!("{b:?}");
        assert!(!s.contains("s3cret") && !s.contains("hunter2"), "{s}");
    }

    #[test]
    fn reconnect_delay_is_bounded() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        for a in 2..100 {
            assert!(reconnect_delay(a) <= Duration::from_secs(2));
        }
    }
}
