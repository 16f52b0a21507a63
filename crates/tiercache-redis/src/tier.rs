//! [`RedisSharedTier`]: the core's `SharedTier` on Redis.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use redis::{ErrorKind, RedisResult, ServerErrorKind, Value};
use tiercache_core::backend::{ClearEpochs, FillTicket, SharedError, SharedEvent, SharedTier};
use tokio::sync::broadcast;

use crate::config::RedisSharedTierBuilder;
use crate::conn::{Conn, HasLink, Link};
use crate::keys::{EntryKeys, clear_key, tag_clock_key, tag_key, value_key};
use crate::replica::{self, ReplicaStats, Replicas};
use crate::scripts::{ABORT_FILL, BEGIN_FILL, CLEAR, COMMIT_FILL, INVALIDATE, INVALIDATE_TAGS};

/// Fixed settings of one tier.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) call_timeout: Duration,
    pub(crate) version_retention: Duration,
    pub(crate) cluster: bool,
}

pub(crate) struct Inner {
    pub(crate) link: Link,
    pub(crate) settings: Settings,
    /// The replica side, when [`read_from_replicas`](RedisSharedTierBuilder::read_from_replicas) is on.
    pub(crate) replicas: Option<Replicas>,
}

impl HasLink for Inner {
    fn link(&self) -> &Link {
        &self.link
    }
}

/// The shared tier on Redis: standalone, Sentinel or Cluster. Build it with
/// [`RedisSharedTier::builder`]. Clones share one connection, breaker and
/// background task; the task ends when the last clone is dropped.
///
/// See the [crate docs](crate) for the key layout, the scripts and the
/// failure behaviour.
#[derive(Clone)]
pub struct RedisSharedTier {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisSharedTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSharedTier")
            .field("cluster", &self.inner.settings.cluster)
            .field("connected", &self.is_connected())
            .field("breaker_open", &self.breaker_open())
            .field(
                "replicas",
                &self.inner.replicas.as_ref().map(Replicas::addrs),
            )
            .finish()
    }
}

/// Milliseconds for `PX`, at least 1 (Redis refuses 0).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A reply that breaks the protocol: what was wrong, and the error that
/// found it (kept as the source).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
struct BadReply {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl BadReply {
    fn shared(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> SharedError {
        SharedError::server(BadReply {
            what: what.into(),
            source: Box::new(source),
        })
    }
}

pub(crate) fn parse_u64(what: &str, s: &str) -> Result<u64, SharedError> {
    s.parse::<u64>()
        .map_err(|e| BadReply::shared(format!("{what} is not a number: {s:?}"), e))
}

/// Whether `e` means the server could not be used (as opposed to a server
/// that answered with an error).
fn is_unavailable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::BusyLoading
            ) | ErrorKind::ClusterConnectionNotFound
        )
}

impl RedisSharedTier {
    /// A builder; choose one of `url`, `sentinel` or `cluster`.
    pub fn builder() -> RedisSharedTierBuilder {
        RedisSharedTierBuilder::default()
    }

    /// Whether a connection is up right now (always true on Cluster once
    /// connected: redis-rs reconnects to nodes by itself).
    pub fn is_connected(&self) -> bool {
        self.inner.link.current().is_some()
    }

    /// Whether the circuit breaker is refusing calls (open or half-open).
    pub fn breaker_open(&self) -> bool {
        self.inner.link.breaker.is_open()
    }

    /// How replica reads went so far (counted per key), or `None` when
    /// [`read_from_replicas`](RedisSharedTierBuilder::read_from_replicas)
    /// is off. The same counts go to the `tiercache_replica_reads_total`
    /// counter (labels `backend`, `outcome`).
    pub fn replica_stats(&self) -> Option<ReplicaStats> {
        self.inner.replicas.as_ref().map(Replicas::stats)
    }

    /// The replicas value reads go to now: `host:port` of each on Sentinel;
    /// on Cluster, one entry listing every replica of the slot map the read
    /// connection routes by (comma-separated), while that connection is up.
    /// Empty when the setting is off or no replica is usable (reads then
    /// go to the master).
    pub fn replicas_in_use(&self) -> Vec<String> {
        self.inner
            .replicas
            .as_ref()
            .map(Replicas::addrs)
            .unwrap_or_default()
    }

    /// The values under the Redis keys `value_keys`, read from the master
    /// (`GET` for one, `MGET` for more).
    pub(crate) async fn master_values(
        &self,
        op: &'static str,
        value_keys: Vec<String>,
    ) -> Result<Vec<Option<Bytes>>, SharedError> {
        let n = value_keys.len();
        let got = self
            .call(op, |mut c| async move {
                if let [one] = value_keys.as_slice() {
                    redis::cmd("GET")
                        .arg(one)
                        .query_async::<Option<Bytes>>(&mut c)
                        .await
                        .mapped()
                        .map(|v| vec![v])
                } else {
                    // MGET: on Cluster, redis-rs splits it by slot and reassembles.
                    redis::cmd("MGET")
                        .arg(&value_keys)
                        .query_async::<Vec<Option<Bytes>>>(&mut c)
                        .await
                        .mapped()
                }
            })
            .await?;
        if got.len() != n {
            return Err(SharedError::server(format!(
                "MGET answered {} values for {n} keys",
                got.len()
            )));
        }
        Ok(got)
    }

    /// The values under `value_keys`: from a replica (checked against the
    /// master's versions) when replica reads are on, else from the master.
    async fn values(
        &self,
        op: &'static str,
        value_keys: Vec<String>,
    ) -> Result<Vec<Option<Bytes>>, SharedError> {
        match &self.inner.replicas {
            Some(r) => replica::read(self, r, op, value_keys).await,
            None => self.master_values(op, value_keys).await,
        }
    }

    /// Runs one Redis interaction under the breaker and the time budget,
    /// counting and (rate-limited) logging its failure.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, SharedError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, SharedError>>,
    {
        let link = &self.inner.link;
        let Some(permit) = link.breaker.admit() else {
            link.reporter
                .error(op, "breaker_open", &"breaker open; call refused");
            return Err(SharedError::BreakerOpen);
        };
        let Some((generation, conn)) = link.current() else {
            permit.failure();
            link.reporter.error(op, "unavailable", &"not connected");
            return Err(SharedError::unavailable("not connected to redis"));
        };
        match tokio::time::timeout(self.inner.settings.call_timeout, f(conn)).await {
            Ok(Ok(v)) => {
                permit.success();
                Ok(v)
            }
            Ok(Err(e)) => {
                match &e {
                    SharedError::Unavailable(_) | SharedError::Timeout => {
                        permit.failure();
                        link.broken(generation);
                        link.reporter.error(op, "unavailable", &e);
                    }
                    _ => {
                        // The server answered: it is alive.
                        permit.success();
                        link.reporter.error(op, "server", &e);
                    }
                }
                Err(e)
            }
            Err(_) => {
                permit.failure();
                link.reporter
                    .error(op, "timeout", &"call exceeded its time budget");
                Err(SharedError::Timeout)
            }
        }
    }
}

/// Maps a redis-rs error into the core's.
fn map_err(e: redis::RedisError) -> SharedError {
    if is_unavailable(&e) {
        SharedError::unavailable(e)
    } else {
        SharedError::server(e)
    }
}

pub(crate) trait Mapped<T> {
    fn mapped(self) -> Result<T, SharedError>;
}

impl<T> Mapped<T> for RedisResult<T> {
    fn mapped(self) -> Result<T, SharedError> {
        self.map_err(map_err)
    }
}

/// The largest integer a Lua number (a double) holds exactly.
const MAX_LUA_INT: u64 = 1 << 53;

/// Reads the clear key's `epoch:floor` (absent: never cleared).
fn parse_epochs(s: Option<&str>) -> Result<ClearEpochs, SharedError> {
    let Some(s) = s else {
        return Ok(ClearEpochs::default());
    };
    let bad = || SharedError::server(format!("clear epochs are not `epoch:floor`: {s:?}"));
    let (e, f) = s.split_once(':').ok_or_else(bad)?;
    let epochs = ClearEpochs {
        epoch: parse_u64("clear epoch", e)?,
        floor: parse_u64("clear floor", f)?,
    };
    if epochs.floor > epochs.epoch {
        return Err(bad());
    }
    Ok(epochs)
}

/// Reads a script's `{version, got, held}` reply.
fn begin_reply(v: Value) -> Result<(u64, bool, bool), SharedError> {
    let (version, got, held): (String, i64, i64) = redis::from_redis_value(v)
        .map_err(|e| BadReply::shared("unexpected begin_fill reply", e))?;
    Ok((parse_u64("key version", &version)?, got == 1, held == 1))
}

#[async_trait]
impl SharedTier for RedisSharedTier {
    async fn get(&self, key: &str) -> Result<Option<Bytes>, SharedError> {
        let got = self.values("get", vec![value_key(key)]).await?;
        Ok(got.into_iter().next().flatten())
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, SharedError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.values("get_many", keys.iter().map(|k| value_key(k)).collect())
            .await
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<(), SharedError> {
        let k = value_key(key);
        let ms = millis(ttl);
        self.call("set", |mut c| async move {
            redis::cmd("SET")
                .arg(&k)
                .arg(value.as_ref())
                .arg("PX")
                .arg(ms)
                .query_async::<Value>(&mut c)
                .await
                .mapped()
                .map(drop)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), SharedError> {
        let k = value_key(key);
        self.call("delete", |mut c| async move {
            redis::cmd("DEL")
                .arg(&k)
                .query_async::<Value>(&mut c)
                .await
                .mapped()
                .map(drop)
        })
        .await
    }

    async fn begin_fill(
        &self,
        namespace: &str,
        key: &str,
        lease_ttl: Option<Duration>,
    ) -> Result<FillTicket, SharedError> {
        let keys = EntryKeys::of(key);
        let clock_keys = [tag_clock_key(namespace), clear_key(namespace)];
        let token = rand::random::<u64>();
        let lease_ms = lease_ttl.map(|d| millis(d).to_string()).unwrap_or_default();
        self.call("begin_fill", |c| async move {
            let mut c2 = c.clone();
            let mut c1 = c;
            // The tag clock and the clear epochs live in another slot than
            // the key, so two calls (sent together). Both complete before
            // the load starts.
            let clock = async {
                redis::cmd("MGET")
                    .arg(&clock_keys)
                    .query_async::<Vec<Option<String>>>(&mut c1)
                    .await
                    .mapped()
            };
            let entry = async {
                let mut inv = BEGIN_FILL.prepare_invoke();
                inv.key(&keys.version)
                    .key(&keys.lease)
                    .arg(token)
                    .arg(&lease_ms);
                inv.invoke_async::<Value>(&mut c2).await.mapped()
            };
            let (clock, entry) = futures::try_join!(clock, entry)?;
            let (tag_clock, epochs) = match clock.as_slice() {
                [clock, epochs] => (
                    match clock {
                        Some(s) => parse_u64("tag clock", s)?,
                        None => 0,
                    },
                    parse_epochs(epochs.as_deref())?,
                ),
                _ => {
                    return Err(SharedError::server(format!(
                        "MGET answered {} values for 2 keys",
                        clock.len()
                    )));
                }
            };
            let (version, got, held) = begin_reply(entry)?;
            Ok(FillTicket {
                version,
                tag_clock,
                lease: got.then_some(token),
                lease_held_elsewhere: held,
                epochs,
            })
        })
        .await
    }

    async fn commit_fill(
        &self,
        key: &str,
        ticket: &FillTicket,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, SharedError> {
        let keys = EntryKeys::of(key);
        let version = ticket.version.to_string();
        let token = ticket.lease.map(|t| t.to_string()).unwrap_or_default();
        let ms = millis(ttl);
        self.call("commit_fill", |mut c| async move {
            let mut inv = COMMIT_FILL.prepare_invoke();
            inv.key(&keys.value)
                .key(&keys.version)
                .key(&keys.lease)
                .arg(&version)
                .arg(value.as_ref())
                .arg(ms)
                .arg(&token);
            inv.invoke_async::<i64>(&mut c)
                .await
                .mapped()
                .map(|n| n == 1)
        })
        .await
    }

    async fn abort_fill(&self, key: &str, ticket: &FillTicket) -> Result<(), SharedError> {
        let Some(token) = ticket.lease else {
            return Ok(());
        };
        let lease = EntryKeys::of(key).lease;
        self.call("abort_fill", |mut c| async move {
            let mut inv = ABORT_FILL.prepare_invoke();
            inv.key(&lease).arg(token);
            inv.invoke_async::<Value>(&mut c).await.mapped().map(drop)
        })
        .await
    }

    async fn invalidate(&self, keys: &[String]) -> Result<(), SharedError> {
        if keys.is_empty() {
            return Ok(());
        }
        let entries: Vec<EntryKeys> = keys.iter().map(|k| EntryKeys::of(k)).collect();
        let retention = millis(self.inner.settings.version_retention);
        let cluster = self.inner.settings.cluster;
        self.call("invalidate", |c| async move {
            let run = |batch: &[EntryKeys], mut c: Conn| {
                let mut inv = INVALIDATE.prepare_invoke();
                for e in batch {
                    inv.key(&e.value).key(&e.version).key(&e.lease);
                }
                inv.arg(retention);
                async move { inv.invoke_async::<Value>(&mut c).await.mapped().map(drop) }
            };
            if cluster {
                // Keys of different slots cannot share a script: one per key,
                // all in flight together.
                futures::future::try_join_all(entries.chunks(1).map(|b| run(b, c.clone())))
                    .await
                    .map(drop)
            } else {
                run(&entries, c).await
            }
        })
        .await
    }

    async fn tag_versions(
        &self,
        namespace: &str,
        tags: &[String],
    ) -> Result<Vec<u64>, SharedError> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let ks: Vec<String> = tags.iter().map(|t| tag_key(namespace, t)).collect();
        let n = ks.len();
        let got = self
            .call("tag_versions", |mut c| async move {
                redis::cmd("MGET")
                    .arg(&ks)
                    .query_async::<Vec<Option<String>>>(&mut c)
                    .await
                    .mapped()
            })
            .await?;
        if got.len() != n {
            return Err(SharedError::server(format!(
                "MGET answered {} tag versions for {n} tags",
                got.len()
            )));
        }
        got.into_iter()
            .map(|v| v.map_or(Ok(0), |s| parse_u64("tag version", &s)))
            .collect()
    }

    async fn invalidate_tags(&self, namespace: &str, tags: &[String]) -> Result<(), SharedError> {
        if tags.is_empty() {
            return Ok(());
        }
        let clock = tag_clock_key(namespace);
        let ks: Vec<String> = tags.iter().map(|t| tag_key(namespace, t)).collect();
        self.call("invalidate_tags", |mut c| async move {
            let mut inv = INVALIDATE_TAGS.prepare_invoke();
            inv.key(&clock);
            for k in &ks {
                inv.key(k);
            }
            inv.invoke_async::<Value>(&mut c).await.mapped().map(drop)
        })
        .await
    }

    async fn clear_epochs(&self, namespace: &str) -> Result<ClearEpochs, SharedError> {
        let k = clear_key(namespace);
        let got = self
            .call("clear_epochs", |mut c| async move {
                redis::cmd("GET")
                    .arg(&k)
                    .query_async::<Option<String>>(&mut c)
                    .await
                    .mapped()
            })
            .await?;
        parse_epochs(got.as_deref())
    }

    async fn clear(
        &self,
        namespace: &str,
        hard: bool,
        after: u64,
    ) -> Result<ClearEpochs, SharedError> {
        let k = clear_key(namespace);
        // Lua numbers are doubles: exact below 2^53, which no real count of
        // clears reaches.
        let after = after.min(MAX_LUA_INT).to_string();
        let got = self
            .call("clear", |mut c| async move {
                let mut inv = CLEAR.prepare_invoke();
                inv.key(&k).arg(if hard { "1" } else { "0" }).arg(&after);
                inv.invoke_async::<String>(&mut c).await.mapped()
            })
            .await?;
        parse_epochs(Some(&got))
    }

    fn events(&self) -> Option<BoxStream<'static, SharedEvent>> {
        let rx = self.inner.link.events.subscribe();
        Some(
            futures::stream::unfold(rx, |mut rx| async move {
                match rx.recv().await {
                    Ok(ev) => Some((ev, rx)),
                    // Missed events: a flush is what each would cause anyway.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        Some((SharedEvent::Reconnected, rx))
                    }
                    Err(broadcast::error::RecvError::Closed) => None,
                }
            })
            .boxed(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn redis_errors_are_kept_as_the_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = map_err(redis::RedisError::from(io));
        assert!(matches!(e, SharedError::Unavailable(_)), "{e}");
        let source = e.source().expect("a source");
        let redis = source
            .downcast_ref::<redis::RedisError>()
            .expect("the redis error");
        assert!(redis.is_io_error());
    }

    #[test]
    fn clear_epochs_parse_or_fail_clearly() {
        assert_eq!(parse_epochs(None).expect("absent"), ClearEpochs::default());
        assert_eq!(
            parse_epochs(Some("7:3")).expect("valid"),
            ClearEpochs { epoch: 7, floor: 3 }
        );
        for bad in [
            "",
            "7",
            "7:",
            ":3",
            "3:7",
            "x:1",
            "1:1:1",
            "-1:0",
            "99999999999999999999:0",
        ] {
            let e = parse_epochs(Some(bad)).expect_err(bad);
            assert!(matches!(e, SharedError::Server(_)), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn clear_epochs_never_panic(s in ".{0,40}") {
            let _ = parse_epochs(Some(&s));
        }

        #[test]
        fn clear_epochs_round_trip(epoch: u64, floor: u64) {
            let (epoch, floor) = (epoch.max(floor), epoch.min(floor));
            let text = format!("{epoch}:{floor}");
            proptest::prop_assert_eq!(
                parse_epochs(Some(&text)).expect("valid"),
                ClearEpochs { epoch, floor }
            );
        }
    }

    #[test]
    fn bad_replies_keep_what_found_them() {
        let e = parse_u64("key version", "x1").expect_err("not a number");
        assert!(matches!(e, SharedError::Server(_)), "{e}");
        assert!(
            e.to_string()
                .starts_with("shared tier error: key version is not a number: \"x1\": "),
            "{e}"
        );
        let bad = e.source().expect("the bad reply");
        let parse = bad.source().expect("the parse error");
        assert!(parse.downcast_ref::<std::num::ParseIntError>().is_some());
    }
}
