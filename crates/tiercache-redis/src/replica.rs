//! Replica reads (opt-in, [`read_from_replicas`](crate::RedisSharedTierBuilder::read_from_replicas)):
//! the plain value reads, [`get`](tiercache_core::backend::SharedTier::get)
//! and [`get_many`](tiercache_core::backend::SharedTier::get_many), take
//! their values from replicas; everything else stays on the masters: writes,
//! invalidations, fills (leases and versions), tag versions and clear
//! epochs.
//!
//! # Where reads go
//!
//! - **Sentinel**: a task asks the Sentinels for the master's replicas
//!   (`SENTINEL replicas`) every health interval, keeps one multiplexed
//!   connection to each replica that Sentinel reports up with its link to
//!   the master `ok` and whose own `ROLE` says `connected`, and reads go to
//!   them in turn.
//! - **Cluster**: a second cluster connection, built with redis-rs's
//!   replica read routing (it sends `READONLY` to replicas), sends each
//!   slot's read to that slot's replicas in turn. It is rebuilt whenever the
//!   replicas `CLUSTER SLOTS` lists change (checked every health interval):
//!   redis-rs routes by the slot map it read when it connected.
//!
//! Fail open: when no replica is usable, or a replica read fails or times
//! out, the read is served by the master as if the setting were off (the
//! replica is left out until the next health check finds it well); a
//! replica's failure is never an error to the caller and never counts
//! towards the master's breaker. Replica failures are counted in
//! `tiercache_shared_errors_total` with `op="replica_get"`.
//!
//! # The consistency cost, and how it is paid
//!
//! Replication is asynchronous: a replica can lag behind an invalidation
//! (or stop following its master altogether and go on serving what it has,
//! Redis's `replica-serve-stale-data yes`). A value read there may be one
//! the master already deleted. The engine's own guard does not cover every
//! case: it ignores a shared value written before an invalidation *this
//! instance applied* (`Fence::superseded`), and tag and clear checks read
//! tag versions and clear epochs from the master, but an instance that
//! never heard a key's invalidation (it started after it, or lost bus
//! messages and flushed its local tier on reconnect) has no record to judge
//! by, and neither has one whose records of it were pruned after their
//! retention. Such an instance would put the replica's old value in its
//! local tier, where it would live until its TTL: longer than the
//! staleness bound.
//!
//! So a replica's value is never taken on the replica's word. Each replica
//! read fetches the value *and the key's version* (`{k}` and `{k}:v`, one
//! slot, one `MGET`, so the pair is consistent), while the same keys'
//! versions are read from the master at the same time (one `MGET` per
//! batch: the engine batches concurrent reads). Every invalidation raises
//! the key's version on the master (to at least the server's time in µs)
//! and keeps it for the version retention. The replica's value is used
//! only if both versions are equal; otherwise (the replica has not seen
//! an invalidation that the master has), and also when the replica has no
//! value (it may lag behind a fill the master has), the value is read
//! again from the master. A replica read therefore answers as a master
//! read that happened at the moment of the master's version read:
//! whatever invalidation completed before the read began is seen, whether
//! or not this instance heard of it. What remains is the master read's own
//! race with an invalidation in flight, which the engine's fence and fill
//! tokens already close.
//!
//! The one thing a version cannot tell: a replica more than the version
//! retention (10 min by default) behind, whose key was invalidated and
//! then left alone that long (both versions expired). Such a replica has
//! lost its link to the master, which excludes it on Sentinel (link status
//! and `ROLE` are checked every health interval); on Cluster, redis-rs
//! keeps routing to it, so keep `version_retention` above how long a
//! replica may stay cut off before it is repaired or removed.
//!
//! The price: every replica read costs the master one small `MGET` of
//! versions per batch (instead of one `MGET` of values), and a second round
//! trip for the keys the replica could not answer. Replicas save the
//! master the values' bytes, not its commands: the gain grows with value
//! size and shrinks to nothing for small values.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use redis::cluster::ClusterClient;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ConnectionInfo, RedisConnectionInfo, Value};
use tiercache_core::backend::SharedError;
use tokio::sync::Notify;

use crate::conn::{Conn, Connector, io_error, tcp_info};
use crate::report::Reporter;
use crate::tier::{Inner, Mapped, RedisSharedTier};

/// Where replica reads go, as configured.
#[derive(Clone, Debug)]
pub(crate) enum ReplicaTarget {
    /// The replicas of a Sentinel-monitored master.
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master_name: String,
        /// Credentials and database for the data nodes.
        redis: RedisConnectionInfo,
        tls: bool,
    },
    /// A cluster client built with `read_from_replicas`.
    Cluster(Box<ClusterClient>),
}

/// One replica connection in use.
#[derive(Clone)]
struct ReplicaConn {
    /// `host:port`; for the Cluster read connection, the replicas of the
    /// slot map it was built on (see [`cluster_replicas`]).
    addr: String,
    conn: Conn,
}

/// How replica reads went, counted per key since the tier was built (see
/// [`RedisSharedTier::replica_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStats {
    /// Values answered by a replica, its version equal to the master's.
    pub served: u64,
    /// Values a replica held under another version than the master's (it
    /// lags behind an invalidation): read again from the master.
    pub stale: u64,
    /// Keys a replica had no value for: read again from the master (it may
    /// lag behind a fill).
    pub absent: u64,
    /// Keys read from the master because no replica was usable or the
    /// replica read failed.
    pub fallback: u64,
}

/// The replica side of a tier: the connections in use and the counters.
pub(crate) struct Replicas {
    pool: Mutex<Vec<ReplicaConn>>,
    next: AtomicUsize,
    wake: Arc<Notify>,
    served: AtomicU64,
    stale: AtomicU64,
    absent: AtomicU64,
    fallback: AtomicU64,
}

#[derive(Clone, Copy)]
enum Outcome {
    Served,
    Stale,
    Absent,
    Fallback,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Stale => "stale",
            Outcome::Absent => "absent",
            Outcome::Fallback => "fallback",
        }
    }
}

impl Replicas {
    pub(crate) fn new() -> Self {
        Self {
            pool: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            wake: Arc::new(Notify::new()),
            served: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            absent: AtomicU64::new(0),
            fallback: AtomicU64::new(0),
        }
    }

    fn pool(&self) -> MutexGuard<'_, Vec<ReplicaConn>> {
        // Every holder leaves the pool consistent (a read or a replace).
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next replica connection in turn, if any is usable.
    fn pick(&self) -> Option<ReplicaConn> {
        let pool = self.pool();
        if pool.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        pool.get(i).cloned()
    }

    /// Leaves the replica at `addr` out until a health check finds it well.
    fn failed(&self, addr: &str) {
        self.pool().retain(|r| r.addr != addr);
        self.wake.notify_one();
    }

    /// The addresses of the replicas in use.
    pub(crate) fn addrs(&self) -> Vec<String> {
        self.pool().iter().map(|r| r.addr.clone()).collect()
    }

    fn count(&self, outcome: Outcome, n: usize) {
        if n == 0 {
            return;
        }
        let n = n as u64;
        let c = match outcome {
            Outcome::Served => &self.served,
            Outcome::Stale => &self.stale,
            Outcome::Absent => &self.absent,
            Outcome::Fallback => &self.fallback,
        };
        c.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(
            "tiercache_replica_reads_total",
            "backend" => "redis",
            "outcome" => outcome.label()
        )
        .increment(n);
    }

    pub(crate) fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            served: self.served.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            absent: self.absent.load(Ordering::Relaxed),
            fallback: self.fallback.load(Ordering::Relaxed),
        }
    }
}

/// The values of `value_keys` (Redis keys `{<storage key>}`), read from a
/// replica and checked against the master's versions (see the module docs).
pub(crate) async fn read(
    tier: &RedisSharedTier,
    replicas: &Replicas,
    op: &'static str,
    value_keys: Vec<String>,
) -> Result<Vec<Option<Bytes>>, SharedError> {
    let n = value_keys.len();
    let Some(replica) = replicas.pick() else {
        replicas.count(Outcome::Fallback, n);
        return tier.master_values(op, value_keys).await;
    };
    let version_keys: Vec<String> = value_keys.iter().map(|k| format!("{k}:v")).collect();
    let mut pairs = redis::cmd("MGET");
    for (v, ver) in value_keys.iter().zip(&version_keys) {
        pairs.arg(v).arg(ver);
    }
    let budget = tier.call_timeout();
    let mut rc = replica.conn.clone();
    let from_replica = async move {
        match tokio::time::timeout(budget, pairs.query_async::<Vec<Option<Bytes>>>(&mut rc)).await {
            Ok(r) => r.mapped(),
            Err(_) => Err(SharedError::Timeout),
        }
    };
    let from_master = tier.call("get_versions", |mut c| async move {
        redis::cmd("MGET")
            .arg(&version_keys)
            .query_async::<Vec<Option<Bytes>>>(&mut c)
            .await
            .mapped()
    });
    let (on_replica, on_master) = futures::join!(from_replica, from_master);
    // Without the master's versions nothing can be checked; a master-only
    // read would have failed the same way.
    let versions = on_master?;
    let on_replica = match on_replica {
        Ok(v) if v.len() == 2 * n && versions.len() == n => v,
        Ok(v) => {
            tier.report().error(
                "replica_get",
                "server",
                &format_args!("MGET answered {} values for {} keys", v.len(), 2 * n),
            );
            replicas.failed(&replica.addr);
            replicas.count(Outcome::Fallback, n);
            return tier.master_values(op, value_keys).await;
        }
        Err(e) => {
            let kind = match e {
                SharedError::Timeout => "timeout",
                SharedError::Unavailable(_) => "unavailable",
                _ => "server",
            };
            tier.report().error("replica_get", kind, &e);
            replicas.failed(&replica.addr);
            replicas.count(Outcome::Fallback, n);
            return tier.master_values(op, value_keys).await;
        }
    };
    let mut out = Vec::with_capacity(n);
    let mut again = Vec::new();
    let (mut stale, mut absent) = (0, 0);
    let mut it = on_replica.into_iter();
    for (i, master_version) in versions.into_iter().enumerate() {
        let (value, version) = (it.next().flatten(), it.next().flatten());
        if version != master_version {
            stale += 1;
            again.push(i);
            out.push(None);
        } else if value.is_none() {
            absent += 1;
            again.push(i);
            out.push(None);
        } else {
            out.push(value);
        }
    }
    replicas.count(Outcome::Served, n - again.len());
    replicas.count(Outcome::Stale, stale);
    replicas.count(Outcome::Absent, absent);
    if again.is_empty() {
        return Ok(out);
    }
    let keys: Vec<String> = again.iter().map(|&i| value_keys[i].clone()).collect();
    let values = tier.master_values(op, keys).await?;
    for (i, v) in again.into_iter().zip(values) {
        out[i] = v;
    }
    Ok(out)
}

/// Finds the replicas once (so reads use them from the start), then spawns
/// the task that keeps them: on Sentinel it re-reads and re-checks the
/// replicas every `interval` (and soon after a replica read failed); on
/// Cluster it reconnects the read connection when a failure dropped it.
pub(crate) async fn start(
    tier: &RedisSharedTier,
    target: ReplicaTarget,
    connector: Connector,
    interval: Duration,
) {
    let Some(replicas) = tier.inner.replicas.as_ref() else {
        return;
    };
    let wake = Arc::clone(&replicas.wake);
    let mut last = None;
    round(&tier.inner, &target, &connector, &mut last).await;
    let weak = Arc::downgrade(&tier.inner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = wake.notified() => {
                    // Paced: a replica that keeps failing is re-checked a
                    // few times per interval at most.
                    tokio::time::sleep(interval / 4).await;
                }
            }
            let Some(inner) = weak.upgrade() else { return };
            round(&inner, &target, &connector, &mut last).await;
        }
    });
}

/// One health round: finds, connects and checks the replicas, installs
/// those usable, and logs when that set changed.
async fn round(
    inner: &Inner,
    target: &ReplicaTarget,
    connector: &Connector,
    last: &mut Option<Vec<String>>,
) {
    let Some(replicas) = inner.replicas.as_ref() else {
        return;
    };
    let current = replicas.pool().clone();
    let found = match target {
        ReplicaTarget::Sentinel {
            sentinels,
            master_name,
            redis,
            tls,
        } => sentinel_replicas(connector, sentinels, master_name, redis, *tls, current).await,
        ReplicaTarget::Cluster(client) => cluster_replicas(inner, client, connector, current).await,
    };
    let report = &inner.link.reporter;
    match found {
        Ok(found) => {
            let addrs: Vec<String> = found.iter().map(|r| r.addr.clone()).collect();
            *replicas.pool() = found;
            if last.as_ref() != Some(&addrs) {
                if addrs.is_empty() {
                    report.state("no replica usable; reads go to the master", &"");
                } else {
                    report.state("reading from replicas", &addrs.join(", "));
                }
                *last = Some(addrs);
            }
        }
        Err(e) => report.error("replicas", "unavailable", &e),
    }
}

/// The Cluster read connection, rebuilt whenever the replicas that
/// `CLUSTER SLOTS` lists change: redis-rs routes by the slot map it read
/// when it connected, and a node lists a replica only once it is usable
/// (in a fresh cluster, not before the first replication offset is
/// gossiped; never once it is flagged failing), so a connection made too
/// early would send every read to the masters. No replica listed: no
/// connection, reads go to the masters.
async fn cluster_replicas(
    inner: &Inner,
    client: &ClusterClient,
    connector: &Connector,
    current: Vec<ReplicaConn>,
) -> redis::RedisResult<Vec<ReplicaConn>> {
    let Some((_, Conn::Cluster(mut master))) = inner.link.current() else {
        return Err(io_error("not connected to the cluster".into()));
    };
    let slots = master.route_command(
        redis::cmd("CLUSTER").arg("SLOTS").to_owned(),
        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
    );
    let listed = match tokio::time::timeout(connector.connect_timeout, slots).await {
        Ok(r) => slot_replicas(&r?),
        Err(_) => return Err(io_error("CLUSTER SLOTS timed out".into())),
    };
    if listed.is_empty() {
        return Ok(Vec::new());
    }
    let signature = listed.join(",");
    if current.first().is_some_and(|r| r.addr == signature) {
        return Ok(current);
    }
    match tokio::time::timeout(connector.connect_timeout, client.get_async_connection()).await {
        Ok(Ok(c)) => Ok(vec![ReplicaConn {
            addr: signature,
            conn: Conn::Cluster(c),
        }]),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io_error("cluster connect timed out".into())),
    }
}

/// The replicas (`host:port`, sorted) in a `CLUSTER SLOTS` reply.
fn slot_replicas(v: &Value) -> Vec<String> {
    let Value::Array(ranges) = v else {
        return Vec::new();
    };
    let mut out: Vec<String> = ranges
        .iter()
        .filter_map(|r| match r {
            Value::Array(items) => Some(items.iter().skip(3)),
            _ => None,
        })
        .flatten()
        .filter_map(|node| match node {
            Value::Array(n) => Some(format!("{}:{}", text(n.first()?)?, text(n.get(1)?)?)),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The replicas Sentinel reports up, each connected (the connections in
/// `current` reused) and checked with `ROLE`.
async fn sentinel_replicas(
    connector: &Connector,
    sentinels: &[ConnectionInfo],
    master_name: &str,
    redis: &RedisConnectionInfo,
    tls: bool,
    current: Vec<ReplicaConn>,
) -> redis::RedisResult<Vec<ReplicaConn>> {
    let addrs = ask_sentinels(connector, sentinels, master_name).await?;
    let mut out = Vec::with_capacity(addrs.len());
    for (host, port) in addrs {
        let addr = format!("{host}:{port}");
        let conn = match current.iter().find(|r| r.addr == addr) {
            Some(r) => r.conn.clone(),
            None => match connector
                .open_single(tcp_info(&host, port, tls, redis)?)
                .await
            {
                Ok(c) => Conn::Single(c),
                Err(_) => continue,
            },
        };
        let mut check = conn.clone();
        if replica_in_sync(&mut check, connector.connect_timeout).await {
            out.push(ReplicaConn { addr, conn });
        }
    }
    out.sort_by(|a, b| a.addr.cmp(&b.addr));
    Ok(out)
}

/// Asks the Sentinels, in turn, for the master's replicas that are up and
/// linked to it.
async fn ask_sentinels(
    connector: &Connector,
    sentinels: &[ConnectionInfo],
    master_name: &str,
) -> redis::RedisResult<Vec<(String, u16)>> {
    let mut last = io_error("no sentinel answered".into());
    for sentinel in sentinels {
        let asked = async {
            let mut c = connector.open_single(sentinel.clone()).await?;
            redis::cmd("SENTINEL")
                .arg("replicas")
                .arg(master_name)
                .query_async::<Value>(&mut c)
                .await
        };
        match tokio::time::timeout(connector.connect_timeout, asked).await {
            Ok(Ok(v)) => return Ok(healthy_replicas(&v)),
            Ok(Err(e)) => last = e,
            Err(_) => last = io_error("sentinel did not answer in time".into()),
        }
    }
    Err(last)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The `(ip, port)` of each replica in a `SENTINEL replicas` reply that
/// Sentinel considers up and linked to its master.
fn healthy_replicas(v: &Value) -> Vec<(String, u16)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let fields: Vec<(String, String)> = match item {
            Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?)))
                .collect(),
            Value::Map(pairs) => pairs
                .iter()
                .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
                .collect(),
            _ => continue,
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let down = get("flags").is_none_or(|f| {
            f.split(',')
                .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
        });
        let linked = get("master-link-status").is_none_or(|s| s == "ok");
        if let (false, true, Some(ip), Some(port)) = (
            down,
            linked,
            get("ip"),
            get("port").and_then(|p| p.parse::<u16>().ok()),
        ) {
            out.push((ip.to_owned(), port));
        }
    }
    out
}

/// `ROLE` says `slave` with the link to its master `connected`.
async fn replica_in_sync(c: &mut Conn, within: Duration) -> bool {
    let role = tokio::time::timeout(within, redis::cmd("ROLE").query_async::<Value>(c)).await;
    let Ok(Ok(Value::Array(items))) = role else {
        return false;
    };
    items.first().and_then(text).as_deref() == Some("slave")
        && items.get(3).and_then(text).as_deref() == Some("connected")
}

/// The reporter of the tier's errors (replica errors are counted there).
impl RedisSharedTier {
    pub(crate) fn report(&self) -> &Reporter {
        &self.inner.link.reporter
    }

    pub(crate) fn call_timeout(&self) -> Duration {
        self.inner.settings.call_timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn replica(fields: &[(&str, &str)]) -> Value {
        Value::Array(
            fields
                .iter()
                .flat_map(|(k, v)| [bulk(k), bulk(v)])
                .collect(),
        )
    }

    #[test]
    fn cluster_slots_name_their_replicas() {
        let node = |port: i64| Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")]);
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node(7000),
                node(7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(9000), node(7001)]),
            Value::Array(vec![
                Value::Int(9001),
                Value::Int(16383),
                node(7002),
                node(7005),
                node(7004),
            ]),
        ]);
        assert_eq!(
            slot_replicas(&reply),
            vec!["127.0.0.1:7003", "127.0.0.1:7004", "127.0.0.1:7005"]
        );
        assert!(slot_replicas(&Value::Nil).is_empty());
    }

    #[test]
    fn only_replicas_up_and_linked_are_used() {
        let reply = Value::Array(vec![
            replica(&[
                ("ip", "127.0.0.1"),
                ("port", "7001"),
                ("flags", "slave"),
                ("master-link-status", "ok"),
            ]),
            replica(&[
                ("ip", "127.0.0.1"),
                ("port", "7002"),
                ("flags", "s_down,slave"),
                ("master-link-status", "ok"),
            ]),
            replica(&[
                ("ip", "127.0.0.1"),
                ("port", "7003"),
                ("flags", "slave"),
                ("master-link-status", "err"),
            ]),
            replica(&[("ip", "127.0.0.1"), ("port", "x"), ("flags", "slave")]),
            replica(&[("ip", "127.0.0.1"), ("port", "7004")]),
            bulk("garbage"),
        ]);
        assert_eq!(
            healthy_replicas(&reply),
            vec![("127.0.0.1".to_owned(), 7001)]
        );
        assert!(healthy_replicas(&Value::Nil).is_empty());
    }
}
