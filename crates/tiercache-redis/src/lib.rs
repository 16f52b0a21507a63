//! tiercache-redis: tiercache's shared tier on Redis (standalone, Sentinel and
//! Cluster) and an invalidation bus on Redis pub/sub.
//!
//! ```no_run
//! use std::time::Duration;
//! use tiercache_core::backend::{Bus, SharedTier};
//! use tiercache_redis::{RedisBus, RedisSharedTier};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // The shared tier: one of .url(..), .sentinel(urls, master) or .cluster(urls).
//! let tier = RedisSharedTier::builder()
//!     .url("redis://127.0.0.1:6380")
//!     .password("secret")
//!     .call_timeout(Duration::from_millis(50))
//!     .breaker(5, Duration::from_secs(1))
//!     .build()
//!     .await?;
//! tier.set("products:1", "bytes".into(), Duration::from_secs(60)).await?;
//!
//! // The bus: namespace `products` is the channel `tiercache:inv:products`.
//! let bus = RedisBus::connect("redis://127.0.0.1:6380").await?;
//! bus.publish("products", "payload".into()).await?;
//! # Ok(()) }
//! ```
//!
//! # Key layout
//!
//! Every key of one entry shares the slot of the storage key's hash tag, so a
//! single Lua script can update them atomically, on Cluster too:
//!
//! | key                       | holds                                              |
//! |---------------------------|----------------------------------------------------|
//! | `{<storage key>}`         | the value (the engine's envelope), with `PX` ttl   |
//! | `{<storage key>}:v`       | the key's version, kept 10 min after its last invalidation |
//! | `{<storage key>}:l`       | the lease: a random u64 token, with `PX` lease ttl |
//! | `{tc:<ns>}:clock`         | the namespace's tag clock                          |
//! | `{tc:<ns>}:t:<tag>`       | a tag's version (kept forever: one small key per tag) |
//!
//! (A storage key that starts with `}` is wrapped as `{~<key>}` so its hash
//! tag is never empty.)
//!
//! - `begin_fill` reads the tag clock (`GET`) and runs one script on the
//!   key's slot: read the version (0 if absent) and, when asked,
//!   `SET lease token NX PX ttl`.
//! - `commit_fill` is one script: release the lease if it holds our token;
//!   store the value with `PX ttl` only if the version is still the ticket's.
//! - `invalidate` is one script per key (per call on a single server): `DEL`
//!   value and lease, version = `max(INCR, TIME in µs)` with a `PEXPIRE`.
//!   A forgotten (expired) version reads 0, which refuses any ticket taken
//!   after an invalidation; a version never returns to an earlier value.
//!   On Cluster the keys of one call are invalidated by one script per key,
//!   all in flight together (their slots differ).
//! - `invalidate_tags` is one script on the namespace's slot: for each tag,
//!   `v = max(clock + 1, TIME in µs)`, then `SET clock v` and `SET tag v`.
//! - `get_many` and `tag_versions` are `MGET` (split by slot on Cluster).
//!
//! A value that is not a tiercache envelope is returned as bytes (the engine
//! decides it is corrupt); a key of another type or garbage in a version key
//! is a `SharedError::Server`. Nothing here panics on any reply.
//!
//! # Topologies
//!
//! - **Standalone**: one multiplexed connection, health-checked with `PING`
//!   every second and re-established with backoff (50 ms doubling to 500 ms)
//!   when lost; `SharedEvent::Disconnected` and `SharedEvent::Reconnected`
//!   are emitted through [`SharedTier::events`](tiercache_core::backend::SharedTier::events).
//! - **Sentinel**: redis-rs resolves a Sentinel master only when it connects
//!   and does not follow `+switch-master`, so every (re)connect asks the
//!   Sentinels for the master and checks `ROLE` is `master`; the health check
//!   runs `ROLE` too, and a `READONLY` reply drops the connection, so a
//!   demoted master is left. When the master's address changed,
//!   `SharedEvent::FailedOver` is emitted.
//! - **Cluster**: redis-rs's cluster connection routes by slot, follows
//!   `MOVED`/`ASK` and refreshes slots after a failover. A monitor pings every
//!   master each second: `Disconnected` when one stops answering,
//!   `FailedOver` when all answer again.
//! - **Replica reads** (Sentinel and Cluster, opt-in with
//!   [`read_from_replicas`](RedisSharedTierBuilder::read_from_replicas)):
//!   `get`/`get_many` take values from replicas, each checked against the
//!   key's version read from the master in the same batch; everything else
//!   stays on the masters, and the master serves any read no replica can.
//!   Counted in [`RedisSharedTier::replica_stats`] and
//!   `tiercache_replica_reads_total`.
//!
//! # Failure behaviour
//!
//! Each call has a time budget ([`call_timeout`](RedisSharedTierBuilder::call_timeout),
//! 50 ms by default; connecting has its own, 1 s). After
//! [`breaker`](RedisSharedTierBuilder::breaker) threshold consecutive failures
//! (5) the breaker opens: calls fail at once with `SharedError::BreakerOpen`;
//! after the cool-down (1 s) one probe goes through and closes it on success;
//! a reconnect closes it at once. Replies that are server errors (`WRONGTYPE`,
//! a bad script result) do not count: the server is alive. Errors are counted
//! in the `tiercache_shared_errors_total` counter (labels `backend`, `op`,
//! `kind`) and logged with `tracing` at most once per
//! [`log_interval`](RedisSharedTierBuilder::log_interval) (10 s), with the
//! number of errors not logged.
//!
//! # Bus
//!
//! [`RedisBus`] publishes with `PUBLISH` on `tiercache:inv:<ns>` and gives each
//! subscription its own connection and task: `Connected { resumed: false }`
//! after every (re)subscribe (pub/sub keeps no history), `Disconnected` as soon
//! as the connection ends or a ping goes unanswered, `Heartbeat` on each
//! answered `PING` (every second), and resubscribes forever with backoff while
//! the stream is alive. Point it at a standalone server, the Sentinel master
//! or any Cluster node (classic pub/sub is broadcast to every node of a
//! Cluster). Bus errors are counted in `tiercache_bus_errors_total`.
//!
//! # TLS and authentication
//!
//! Username and password (ACL) go to every data connection; Sentinels take
//! credentials in their own URLs. With the `tls` feature, `rediss://` URLs
//! work, and [`tls(true)`](RedisSharedTierBuilder::tls) makes connections to
//! Sentinel-resolved masters and Cluster nodes use TLS.
#![deny(unreachable_pub)]

mod breaker;
mod bus;
mod config;
mod conn;
mod error;
mod inspect;
mod keys;
mod replica;
mod report;
mod scripts;
mod tier;

pub use bus::{RedisBus, RedisBusBuilder};
pub use config::RedisSharedTierBuilder;
pub use error::BuildError;
#[allow(deprecated)]
pub use error::RedisError;
pub use inspect::KeyInspection;
pub use replica::ReplicaStats;
pub use tier::RedisSharedTier;
