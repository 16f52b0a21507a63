//! Real servers for tiercache's tests: `redis-server` (standalone, Sentinel,
//! Cluster), `nats-server` (core and JetStream) and Postgres, each started on
//! 127.0.0.1 and a free port in its own temp dir, and killed (SIGKILL) and
//! cleaned up on drop.
//!
//! ```no_run
//! use std::time::Duration;
//! use tiercache_testkit::{NatsServer, Postgres, RedisCluster, RedisSentinelSet, RedisServer};
//!
//! # fn main() -> tiercache_testkit::Result<()> {
//! // Standalone Redis: crash it, bring it back on the same port.
//! let mut redis = RedisServer::start()?;
//! let url = redis.url(); // redis://127.0.0.1:PORT
//! redis.kill();
//! redis.restart()?;
//! assert_eq!(redis.url(), url);
//!
//! // Sentinel: kill the master, wait for a replica to take over.
//! let mut sentinels = RedisSentinelSet::start(2)?;
//! let old = sentinels.kill_master()?;
//! let new = sentinels.wait_for_failover(old, Duration::from_secs(30))?;
//! assert_ne!(old, new);
//!
//! // Cluster: kill a master, wait for its replica's promotion.
//! let mut cluster = RedisCluster::start()?;
//! let master = cluster.master_ports()?[0];
//! cluster.kill_node(master);
//! cluster.wait_for_state_ok(Duration::from_secs(30))?;
//!
//! // NATS with JetStream, Postgres with logical decoding.
//! let nats = NatsServer::start_jetstream()?;
//! let pg = Postgres::start()?;
//! assert_eq!(pg.psql("show wal_level")?, "logical");
//! # drop((nats, pg));
//! # Ok(()) }
//! ```
//!
//! Everything is synchronous (`std::process`); use it from async tests
//! before entering the runtime or via `spawn_blocking`.
//!
//! Readiness is polled for up to 20 s: the server's own "ready" log line
//! (so a server that lost its port to another process is never mistaken for
//! ours) plus a protocol probe (Redis `PING`, the NATS `INFO` greeting,
//! Postgres `select 1`). A server that does not become ready yields
//! [`TestkitError::NotReady`] with the last 40 lines of its log. A first
//! start that loses its port to another process ("address already in use")
//! is retried on a new port; a restart keeps its port and retries until the
//! port is free again.
//!
//! Missing binaries yield [`TestkitError::MissingBinary`] naming the Debian
//! package (`redis-server`, `redis-tools`, `nats-server`, `postgresql`).
#![deny(unreachable_pub)]

mod binaries;
mod cluster;
mod error;
mod nats;
mod port;
mod postgres;
mod process;
mod redis;
mod resp;
mod sentinel;

pub use cluster::RedisCluster;
pub use error::{Result, TestkitError};
pub use nats::NatsServer;
pub use port::free_port;
pub use postgres::Postgres;
pub use redis::RedisServer;
pub use resp::{Resp, redis_command, redis_pipeline};
pub use sentinel::RedisSentinelSet;
