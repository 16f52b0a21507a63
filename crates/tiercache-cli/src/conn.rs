//! Connection settings: resolved from [`ConnArgs`] (flags and environment)
//! over the sidecar's TOML file, then connected. Each resolved value keeps
//! the name of the setting it came from, so an error names it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use serde::Deserialize;
use tiercache_core::backend::{Bus, BusEvent, MessageCodec};
use tiercache_nats::NatsBus;
use tiercache_redis::{BuildError, RedisBus, RedisSharedTier};
use tiercache_sidecar::{BusConfig, BusKind, RedisConfig};

use crate::args::ConnArgs;
use crate::error::Error;

/// The shortest signing key the engine accepts (`CacheBuilder::signing_key`).
pub const MIN_SIGNING_KEY_LEN: usize = 16;

/// A value and the setting it came from (`--redis-url`, `redis.url in
/// FILE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named<T> {
    /// The value.
    pub value: T,
    /// Where it came from, for error messages.
    pub setting: String,
}

impl<T> Named<T> {
    fn new(value: T, setting: impl Into<String>) -> Self {
        Self {
            value,
            setting: setting.into(),
        }
    }
}

/// Which Redis the shared tier is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// A standalone server.
    Standalone(String),
    /// Cluster nodes.
    Cluster(Vec<String>),
    /// Sentinels and the master's name.
    Sentinel {
        /// Sentinel URLs.
        sentinels: Vec<String>,
        /// The master name.
        master: String,
    },
}

impl RedisTarget {
    /// The target for messages, without passwords.
    pub fn shown(&self) -> String {
        match self {
            RedisTarget::Standalone(u) => redact(u),
            RedisTarget::Cluster(us) => us.iter().map(|u| redact(u)).collect::<Vec<_>>().join(","),
            RedisTarget::Sentinel { sentinels, master } => format!(
                "{} (master {master})",
                sentinels
                    .iter()
                    .map(|u| redact(u))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// Which bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusTarget {
    /// NATS (core subjects, or a JetStream stream).
    Nats {
        /// The server(s).
        url: String,
        /// The JetStream stream, if any.
        stream: Option<String>,
    },
    /// Redis pub/sub.
    Redis {
        /// The server.
        url: String,
    },
}

impl BusTarget {
    fn url(&self) -> &str {
        match self {
            BusTarget::Nats { url, .. } | BusTarget::Redis { url } => url,
        }
    }
}

/// The resolved connection settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The shared tier, if configured.
    pub redis: Option<Named<RedisTarget>>,
    /// Redis ACL user.
    pub redis_username: Option<String>,
    /// Redis password.
    pub redis_password: Option<String>,
    /// The CA(s) trusted for Redis TLS, with the setting that named it.
    pub redis_tls_ca: Option<Named<PathBuf>>,
    /// TLS to Sentinel-found masters / Cluster nodes (`redis.tls` in the file).
    pub redis_tls: bool,
    /// NATS TLS and credentials.
    pub nats_auth: NatsAuthSettings,
    /// The bus, if configured.
    pub bus: Option<Named<BusTarget>>,
    /// The bus's subject / channel prefix.
    pub bus_prefix: Option<String>,
    /// The signing key, if any.
    pub signing_key: Option<Named<String>>,
    /// The time budget of connections and calls.
    pub timeout: Duration,
}

/// NATS TLS and credentials, from flags or the file's `[bus]`.
#[derive(Clone, Debug, Default)]
pub struct NatsAuthSettings {
    /// The CA(s) trusted for TLS, with the setting that named it.
    pub tls_ca: Option<Named<PathBuf>>,
    /// Refuse a server without TLS.
    pub require_tls: bool,
    /// An auth token.
    pub token: Option<String>,
    /// A user and password.
    pub user_password: Option<(String, String)>,
    /// A `.creds` file.
    pub credentials_file: Option<PathBuf>,
}

/// The `[redis]` and `[bus]` sections of the sidecar's file; the rest of
/// the file (source, rules) is not needed here and not checked.
#[derive(Debug, Default, Deserialize)]
struct ConnFile {
    #[serde(default)]
    redis: Option<RedisConfig>,
    #[serde(default)]
    bus: Option<BusConfig>,
}

fn read_file(path: &Path) -> Result<ConnFile, Error> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
        path: shown.clone(),
        reason: format!("cannot read it: {e}"),
        source: e.into(),
    })?;
    toml::from_str(&text).map_err(|e| Error::ConfigFile {
        path: shown,
        reason: e.to_string().trim_end().to_owned(),
        source: e.into(),
    })
}

/// `user:password@` in a URL becomes `user:***@`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{hidden}{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

fn non_empty(setting: &str, v: &Option<String>) -> Result<Option<String>, Error> {
    match v {
        Some(s) if s.trim().is_empty() => Err(Error::setting(setting, "is empty")),
        Some(s) => Ok(Some(s.trim().to_owned())),
        None => Ok(None),
    }
}

impl Settings {
    /// Resolves `args` over the `--config` file, if any: each flag (or its
    /// environment variable) wins over the file's field.
    ///
    /// # Errors
    ///
    /// The file cannot be read or parsed, or settings contradict each
    /// other (two shared tiers, two buses, an empty value).
    pub fn resolve(args: &ConnArgs) -> Result<Self, Error> {
        let (file, fname) = match &args.config {
            Some(p) => (read_file(p)?, p.display().to_string()),
            None => (ConnFile::default(), String::new()),
        };
        let in_file = |field: &str| format!("{field} in {fname}");

        let redis_url = non_empty("--redis-url", &args.redis_url)?;
        let cluster: Vec<String> = args
            .redis_cluster
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let redis = match (redis_url, cluster.is_empty()) {
            (Some(_), false) => {
                return Err(Error::setting(
                    "--redis-url / --redis-cluster",
                    "give one shared tier, not both",
                ));
            }
            (Some(u), true) => Some(Named::new(RedisTarget::Standalone(u), "--redis-url")),
            (None, false) => Some(Named::new(RedisTarget::Cluster(cluster), "--redis-cluster")),
            (None, true) => match &file.redis {
                None => None,
                Some(r) => Some(if let Some(u) = &r.url {
                    Named::new(RedisTarget::Standalone(u.clone()), in_file("redis.url"))
                } else if !r.cluster.is_empty() {
                    Named::new(
                        RedisTarget::Cluster(r.cluster.clone()),
                        in_file("redis.cluster"),
                    )
                } else if let (false, Some(m)) = (r.sentinels.is_empty(), &r.master) {
                    Named::new(
                        RedisTarget::Sentinel {
                            sentinels: r.sentinels.clone(),
                            master: m.clone(),
                        },
                        in_file("redis.sentinels"),
                    )
                } else {
                    return Err(Error::setting(
                        in_file("redis"),
                        "set one of `url`, `cluster`, `sentinels` + `master`",
                    ));
                }),
            },
        };
        let redis_username = non_empty("--redis-username", &args.redis_username)?
            .or_else(|| file.redis.as_ref().and_then(|r| r.username.clone()));
        let redis_password = non_empty("--redis-password", &args.redis_password)?
            .or_else(|| file.redis.as_ref().and_then(|r| r.password.clone()));

        let redis_tls_ca = match &args.redis_tls_ca {
            Some(p) => Some(Named::new(p.clone(), "--redis-tls-ca")),
            None => file
                .redis
                .as_ref()
                .and_then(|r| r.tls_ca_cert.clone())
                .map(|p| Named::new(p, in_file("redis.tls_ca_cert"))),
        };
        let redis_tls = file.redis.as_ref().is_some_and(|r| r.tls);

        let nats_url = non_empty("--nats-url", &args.nats_url)?;
        let redis_bus_url = non_empty("--redis-bus-url", &args.redis_bus_url)?;
        let file_bus = file.bus.unwrap_or_default();
        let stream = non_empty("--nats-stream", &args.nats_stream)?;
        let bus = match (nats_url, redis_bus_url) {
            (Some(_), Some(_)) => {
                return Err(Error::setting(
                    "--nats-url / --redis-bus-url",
                    "give one bus, not both",
                ));
            }
            (Some(url), None) => Some(Named::new(
                BusTarget::Nats {
                    url,
                    stream: stream.clone().or_else(|| file_bus.jetstream.clone()),
                },
                "--nats-url",
            )),
            (None, Some(url)) => Some(Named::new(BusTarget::Redis { url }, "--redis-bus-url")),
            (None, None) => match file_bus.kind {
                BusKind::None => None,
                BusKind::Nats => match &file_bus.url {
                    Some(url) => Some(Named::new(
                        BusTarget::Nats {
                            url: url.clone(),
                            stream: stream.clone().or_else(|| file_bus.jetstream.clone()),
                        },
                        in_file("bus.url"),
                    )),
                    None => {
                        return Err(Error::setting(
                            in_file("bus.url"),
                            "missing for kind = \"nats\" (or pass --nats-url)",
                        ));
                    }
                },
                BusKind::Redis => match (&file_bus.url, &redis) {
                    (Some(url), _) => Some(Named::new(
                        BusTarget::Redis { url: url.clone() },
                        in_file("bus.url"),
                    )),
                    (None, Some(r)) => match &r.value {
                        RedisTarget::Standalone(url) => Some(Named::new(
                            BusTarget::Redis { url: url.clone() },
                            r.setting.clone(),
                        )),
                        _ => {
                            return Err(Error::setting(
                                in_file("bus.url"),
                                "missing for kind = \"redis\" with a Cluster or Sentinel shared tier (or pass --redis-bus-url)",
                            ));
                        }
                    },
                    (None, None) => {
                        return Err(Error::setting(
                            in_file("bus.url"),
                            "missing for kind = \"redis\" (or pass --redis-bus-url)",
                        ));
                    }
                },
            },
        };
        if stream.is_some()
            && !matches!(bus.as_ref().map(|b| &b.value), Some(BusTarget::Nats { .. }))
        {
            return Err(Error::setting(
                "--nats-stream",
                "needs a NATS bus (--nats-url)",
            ));
        }
        let nats_auth = NatsAuthSettings {
            tls_ca: match &args.nats_tls_ca {
                Some(p) => Some(Named::new(p.clone(), "--nats-tls-ca")),
                None if file_bus.kind == BusKind::Nats => file_bus
                    .tls_ca_cert
                    .clone()
                    .map(|p| Named::new(p, in_file("bus.tls_ca_cert"))),
                None => None,
            },
            require_tls: file_bus.require_tls,
            token: non_empty("--nats-token", &args.nats_token)?.or_else(|| file_bus.token.clone()),
            user_password: match (
                non_empty("--nats-user", &args.nats_user)?,
                non_empty("--nats-password", &args.nats_password)?,
            ) {
                (Some(u), Some(p)) => Some((u, p)),
                (Some(_), None) => {
                    return Err(Error::setting("--nats-password", "needed with --nats-user"));
                }
                (None, Some(_)) => {
                    return Err(Error::setting("--nats-user", "needed with --nats-password"));
                }
                (None, None) => match (&file_bus.user, &file_bus.password) {
                    (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                    _ => None,
                },
            },
            credentials_file: file_bus.credentials_file.clone(),
        };
        if nats_auth.token.is_some() && nats_auth.user_password.is_some() {
            return Err(Error::setting(
                "--nats-token / --nats-user",
                "give one way to authenticate to NATS",
            ));
        }
        let bus_prefix = non_empty("--bus-prefix", &args.bus_prefix)?
            .or_else(|| file_bus.subject_prefix.clone());
        let signing_key = match &args.signing_key {
            Some(k) if k.is_empty() => return Err(Error::setting("--signing-key", "is empty")),
            Some(k) => Some(Named::new(k.clone(), "--signing-key")),
            None => match &file_bus.signing_key {
                Some(k) if k.is_empty() => {
                    return Err(Error::setting(in_file("bus.signing_key"), "is empty"));
                }
                Some(k) => Some(Named::new(k.clone(), in_file("bus.signing_key"))),
                None => None,
            },
        };
        if let Some(k) = &signing_key
            && k.value.len() < MIN_SIGNING_KEY_LEN
        {
            // The engine refuses shorter keys: no instance can be using it.
            return Err(Error::setting(
                k.setting.clone(),
                format!("must be at least {MIN_SIGNING_KEY_LEN} bytes, as the applications' key"),
            ));
        }
        if args.timeout_ms == 0 {
            return Err(Error::setting("--timeout-ms", "must be at least 1"));
        }
        Ok(Self {
            redis,
            redis_username,
            redis_password,
            redis_tls_ca,
            redis_tls,
            nats_auth,
            bus,
            bus_prefix,
            signing_key,
            timeout: Duration::from_millis(args.timeout_ms),
        })
    }

    /// The flag (or file field) a Redis build error is about: the CA or the
    /// password when the library names them, else `fallback`.
    fn redis_setting_at_fault(&self, e: &BuildError, fallback: &str) -> String {
        match e {
            BuildError::Config {
                field: "tls_ca_cert",
                ..
            } => self
                .redis_tls_ca
                .as_ref()
                .map_or_else(|| "--redis-tls-ca".to_owned(), |ca| ca.setting.clone()),
            BuildError::Config {
                field: "password", ..
            } => "--redis-password".to_owned(),
            _ => fallback.to_owned(),
        }
    }

    /// The codec bus messages are signed (and checked) with.
    pub fn codec(&self) -> MessageCodec {
        match &self.signing_key {
            Some(k) => MessageCodec::signed(k.value.as_bytes()),
            None => MessageCodec::unsigned(),
        }
    }

    /// Connects the shared tier, which `verb` needs.
    ///
    /// # Errors
    ///
    /// None is configured, or it cannot be reached.
    pub async fn connect_shared(&self, verb: &str) -> Result<Shared, Error> {
        let Some(target) = &self.redis else {
            return Err(Error::setting(
                "--redis-url",
                format!(
                    "{verb} needs the shared tier: pass --redis-url or --redis-cluster, or --config with a [redis] section"
                ),
            ));
        };
        let mut b = RedisSharedTier::builder()
            .call_timeout(self.timeout)
            .connect_timeout(self.timeout)
            .connect_lazily(false);
        b = match &target.value {
            RedisTarget::Standalone(u) => b.url(u.clone()),
            RedisTarget::Cluster(us) => b.cluster(us.clone()),
            RedisTarget::Sentinel { sentinels, master } => {
                b.sentinel(sentinels.clone(), master.clone())
            }
        };
        if let Some(u) = &self.redis_username {
            b = b.username(u.clone());
        }
        if let Some(p) = &self.redis_password {
            b = b.password(p.clone());
        }
        if self.redis_tls {
            b = b.tls(true);
        }
        if let Some(ca) = &self.redis_tls_ca {
            b = b.tls_ca_cert(ca.value.clone());
        }
        let url = target.value.shown();
        let tier = b.build().await.map_err(|e| match e {
            BuildError::Connect(source) => Error::Connect {
                setting: target.setting.clone(),
                url: url.clone(),
                source: source.into(),
            },
            other => Error::Invalid {
                setting: self.redis_setting_at_fault(&other, &target.setting),
                source: other.into(),
            },
        })?;
        Ok(Shared {
            tier,
            setting: target.setting.clone(),
            url,
        })
    }

    /// Connects the bus, if one is configured.
    ///
    /// # Errors
    ///
    /// It cannot be set up or (NATS) reached.
    pub async fn connect_bus(&self) -> Result<Option<BusConn>, Error> {
        let Some(target) = &self.bus else {
            return Ok(None);
        };
        let setting = target.setting.clone();
        let url = redact(target.value.url());
        let kind = match &target.value {
            BusTarget::Nats { url: u, stream } => {
                let mut b = NatsBus::builder()
                    .url(u.clone())
                    .name("tiercache-cli")
                    .connect_timeout(self.timeout)
                    .publish_timeout(self.timeout)
                    .retry_on_initial_connect(false);
                if let Some(p) = &self.bus_prefix {
                    b = b.subject_prefix(p.clone());
                }
                if let Some(s) = stream {
                    b = b.jetstream(s.clone());
                }
                let auth = &self.nats_auth;
                if let Some(ca) = &auth.tls_ca {
                    b = b.tls_ca_cert(ca.value.clone());
                }
                if auth.require_tls {
                    b = b.require_tls(true);
                }
                if let Some(t) = &auth.token {
                    b = b.token(t.clone());
                }
                if let Some((u, p)) = &auth.user_password {
                    b = b.user_password(u.clone(), p.clone());
                }
                if let Some(c) = &auth.credentials_file {
                    b = b.credentials_file(c.clone());
                }
                let bus = b.build().await.map_err(|e| match e {
                    tiercache_nats::NatsBusError::Connect(source) => Error::Connect {
                        setting: setting.clone(),
                        url: url.clone(),
                        source: source.into(),
                    },
                    tiercache_nats::NatsBusError::JetStream { .. } => Error::Invalid {
                        setting: "--nats-stream".to_owned(),
                        source: e.into(),
                    },
                    tiercache_nats::NatsBusError::Rejected { field, .. } => Error::Invalid {
                        setting: match (field, &auth.tls_ca) {
                            ("tls_ca_cert", Some(ca)) => ca.setting.clone(),
                            ("tls_ca_cert", None) => "--nats-tls-ca".to_owned(),
                            ("token", _) => "--nats-token".to_owned(),
                            ("user_password", _) => "--nats-user / --nats-password".to_owned(),
                            _ => setting.clone(),
                        },
                        source: e.into(),
                    },
                    other => Error::Invalid {
                        setting: setting.clone(),
                        source: other.into(),
                    },
                })?;
                BusKind_::Nats(bus)
            }
            BusTarget::Redis { url: u } => {
                let mut b = RedisBus::builder()
                    .url(u.clone())
                    .connect_timeout(self.timeout)
                    .publish_timeout(self.timeout);
                if let Some(p) = &self.bus_prefix {
                    b = b.channel_prefix(p.clone());
                }
                if let Some(n) = &self.redis_username {
                    b = b.username(n.clone());
                }
                if let Some(p) = &self.redis_password {
                    b = b.password(p.clone());
                }
                if let Some(ca) = &self.redis_tls_ca {
                    b = b.tls_ca_cert(ca.value.clone());
                }
                let bus = b.build().await.map_err(|e| Error::Invalid {
                    setting: self.redis_setting_at_fault(&e, &setting),
                    source: e.into(),
                })?;
                BusKind_::Redis(bus)
            }
        };
        Ok(Some(BusConn { kind, setting, url }))
    }
}

/// The connected shared tier, with the setting that named it.
pub struct Shared {
    /// The Redis shared tier.
    pub tier: RedisSharedTier,
    /// The setting that named it.
    pub setting: String,
    /// Its address (passwords hidden).
    pub url: String,
}

impl Shared {
    /// Wraps a failed call of `operation` into [`Error::Shared`].
    pub fn err(
        &self,
        operation: &'static str,
    ) -> impl FnOnce(tiercache_core::backend::SharedError) -> Error + '_ {
        move |source| Error::Shared {
            setting: self.setting.clone(),
            url: self.url.clone(),
            operation,
            source,
        }
    }
}

#[allow(non_camel_case_types)]
enum BusKind_ {
    Nats(NatsBus),
    Redis(RedisBus),
}

/// The connected bus, with the setting that named it.
pub struct BusConn {
    kind: BusKind_,
    /// The setting that named it.
    pub setting: String,
    /// Its address (passwords hidden).
    pub url: String,
}

impl BusConn {
    fn bus(&self) -> &dyn Bus {
        match &self.kind {
            BusKind_::Nats(b) => b,
            BusKind_::Redis(b) => b,
        }
    }

    fn err(
        &self,
        operation: &'static str,
    ) -> impl FnOnce(tiercache_core::backend::BusError) -> Error + '_ {
        move |source| Error::Bus {
            setting: self.setting.clone(),
            url: self.url.clone(),
            operation,
            source,
        }
    }

    /// Publishes `payload` on `namespace`.
    ///
    /// # Errors
    ///
    /// The bus refused it or timed out.
    pub async fn publish(&self, namespace: &str, payload: Bytes) -> Result<(), Error> {
        self.bus()
            .publish(namespace, payload)
            .await
            .map_err(self.err("publish"))
    }

    /// Waits until what was published has left this process (NATS core
    /// publishes are buffered by the client; a process that exits right
    /// after would lose them).
    ///
    /// # Errors
    ///
    /// The flush failed or timed out.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        if let BusKind_::Nats(b) = &self.kind {
            let flushed = tokio::time::timeout(timeout, b.client().flush()).await;
            let e = match flushed {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => tiercache_core::backend::BusError::unavailable(e),
                Err(_) => tiercache_core::backend::BusError::Timeout,
            };
            return Err(self.err("flush")(e));
        }
        Ok(())
    }

    /// Subscribes to `namespace`.
    ///
    /// # Errors
    ///
    /// The subscription could not be made.
    pub async fn subscribe(&self, namespace: &str) -> Result<BoxStream<'static, BusEvent>, Error> {
        self.bus()
            .subscribe(namespace)
            .await
            .map_err(self.err("subscribe"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:p@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redact("redis://:p@h:1"), "redis://:***@h:1");
        assert_eq!(redact("nats://tok@h:1"), "nats://***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("nonsense"), "nonsense");
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sidecar.toml");
        std::fs::write(
            &path,
            "[source]\nkind = \"notify\"\n[redis]\nurl = \"redis://file:1\"\n[bus]\nkind = \"redis\"\nsigning_key = \"0123456789abcdef\"\n",
        )
        .unwrap();
        let args = ConnArgs {
            config: Some(path.clone()),
            timeout_ms: 1000,
            ..ConnArgs::default()
        };
        let s = Settings::resolve(&args).unwrap();
        let r = s.redis.unwrap();
        assert_eq!(r.value, RedisTarget::Standalone("redis://file:1".into()));
        assert!(r.setting.starts_with("redis.url in "), "{}", r.setting);
        assert_eq!(
            s.bus.unwrap().value,
            BusTarget::Redis {
                url: "redis://file:1".into()
            }
        );
        assert_eq!(s.signing_key.unwrap().value, "0123456789abcdef");

        let args = ConnArgs {
            redis_url: Some("redis://flag:2".into()),
            nats_url: Some("nats://flag:3".into()),
            ..args
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.redis.unwrap().setting, "--redis-url");
        assert_eq!(s.bus.unwrap().setting, "--nats-url");
    }

    #[test]
    fn contradictions_are_named() {
        let args = ConnArgs {
            nats_url: Some("nats://a:1".into()),
            redis_bus_url: Some("redis://b:1".into()),
            timeout_ms: 1000,
            ..ConnArgs::default()
        };
        let e = Settings::resolve(&args).unwrap_err().to_string();
        assert!(e.starts_with("--nats-url / --redis-bus-url:"), "{e}");
        let args = ConnArgs {
            signing_key: Some(String::new()),
            timeout_ms: 1000,
            ..ConnArgs::default()
        };
        let e = Settings::resolve(&args).unwrap_err().to_string();
        assert_eq!(e, "--signing-key: is empty");
        let args = ConnArgs {
            config: Some("/nonexistent/x.toml".into()),
            timeout_ms: 1000,
            ..ConnArgs::default()
        };
        let e = Settings::resolve(&args).unwrap_err().to_string();
        assert!(
            e.starts_with("--config /nonexistent/x.toml: cannot read it"),
            "{e}"
        );
    }
}
