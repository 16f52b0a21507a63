//! One Redis master, N replicas and three Sentinels.

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{Result, TestkitError};
use crate::process::{READY_TIMEOUT, log_tail};
use crate::redis::{Mode, RedisServer, Spec};
use crate::resp::{Resp, info_field, redis_command, text_command};

const MASTER_NAME: &str = "mymaster";
const SENTINELS: usize = 3;
const QUORUM: usize = 2;
const POLL: Duration = Duration::from_millis(100);

/// A master, `N` replicas (`replicaof`) and three Sentinels (quorum 2)
/// monitoring it as `mymaster`, all on 127.0.0.1 and free ports.
///
/// Sentinels use `down-after-milliseconds 1000` and `failover-timeout 3000`,
/// so a killed master is replaced within a few seconds. Dropping the set
/// kills every process.
#[derive(Debug)]
pub struct RedisSentinelSet {
    /// Data nodes: the initial master first, then the replicas.
    servers: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinelSet {
    /// Starts the master, `replicas` replicas (waiting until each is in
    /// sync) and three Sentinels, and waits until every Sentinel knows the
    /// master, all replicas and the two other Sentinels.
    pub fn start(replicas: usize) -> Result<Self> {
        let master = RedisServer::launch(Spec::server())?;
        let master_port = master.port();
        let mut servers = vec![master];
        for _ in 0..replicas {
            let mut spec = Spec::server();
            spec.conf.push(format!("replicaof 127.0.0.1 {master_port}"));
            servers.push(RedisServer::launch(spec)?);
        }
        let mut set = RedisSentinelSet {
            servers,
            sentinels: Vec::new(),
        };
        set.wait_for_replication(replicas)?;
        for _ in 0..SENTINELS {
            let spec = Spec {
                mode: Mode::Sentinel,
                conf: vec![
                    "sentinel resolve-hostnames no".to_owned(),
                    format!("sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {QUORUM}"),
                    format!("sentinel down-after-milliseconds {MASTER_NAME} 1000"),
                    format!("sentinel failover-timeout {MASTER_NAME} 3000"),
                    format!("sentinel parallel-syncs {MASTER_NAME} 1"),
                ],
                args: Vec::new(),
                cluster_bus: false,
                tls: false,
            };
            set.sentinels.push(RedisServer::launch(spec)?);
        }
        set.wait_for_sentinels(master_port, replicas)?;
        Ok(set)
    }

    /// The monitored master's name, `mymaster`.
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// `redis://127.0.0.1:PORT` of each Sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The Sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(RedisServer::port).collect()
    }

    /// The ports of the data nodes (master and replicas, in start order).
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(RedisServer::port).collect()
    }

    /// The current master's port, as the first Sentinel that answers reports
    /// it (`SENTINEL get-master-addr-by-name`).
    pub fn master_port(&self) -> Result<u16> {
        let mut last_error = None;
        for sentinel in self.sentinels.iter().filter(|s| s.started()) {
            match sentinel_master_port(sentinel.port()) {
                Ok(port) => return Ok(port),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| TestkitError::Command("no Sentinel is running".to_owned())))
    }

    /// Kills (SIGKILL) the current master and returns its port.
    pub fn kill_master(&mut self) -> Result<u16> {
        let port = self.master_port()?;
        let server = self.server_mut(port).ok_or_else(|| {
            TestkitError::Command(format!(
                "the master port {port} is not one of this set's servers"
            ))
        })?;
        server.kill();
        Ok(port)
    }

    /// Waits until every running Sentinel reports a master other than
    /// `old_port` and that server says `role:master`; returns its port.
    pub fn wait_for_failover(&self, old_port: u16, timeout: Duration) -> Result<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            let reported: Vec<Result<u16>> = self
                .sentinels
                .iter()
                .filter(|s| s.started())
                .map(|s| sentinel_master_port(s.port()))
                .collect();
            if let Some(Ok(first)) = reported.first()
                && *first != old_port
                && reported.iter().all(|r| matches!(r, Ok(p) if p == first))
                && role(*first).as_deref() == Some("master")
            {
                return Ok(*first);
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(&format!(
                    "no failover away from port {old_port} within {timeout:?}; sentinels report {reported:?}"
                )));
            }
            thread::sleep(POLL);
        }
    }

    /// The ports of the replicas: the data nodes that report
    /// `role:slave` (after a failover, the old master among them).
    pub fn replica_ports(&self) -> Vec<u16> {
        self.servers
            .iter()
            .filter(|s| s.started())
            .map(RedisServer::port)
            .filter(|p| role(*p).as_deref() == Some("slave"))
            .collect()
    }

    /// Makes the replica on `port` stop following its master while it goes
    /// on answering reads with what it has: replication lag on demand (see
    /// [`pause_replication`]). Undo with
    /// [`resume_replication`](Self::resume_replication).
    pub fn pause_replication(&self, port: u16) -> Result<()> {
        pause_replication(port)
    }

    /// Lets the replica on `port` follow its master again and waits until
    /// it is back in sync (`master_link_status:up`).
    pub fn resume_replication(&self, port: u16, timeout: Duration) -> Result<()> {
        resume_replication(port, timeout)
    }

    /// The data node or Sentinel listening on `port`.
    pub fn server_mut(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.servers
            .iter_mut()
            .chain(self.sentinels.iter_mut())
            .find(|s| s.port() == port)
    }

    fn not_ready(&self, what: &str) -> TestkitError {
        TestkitError::NotReady {
            server: format!("Sentinel set `{MASTER_NAME}`: {what}"),
            log: self
                .sentinels
                .first()
                .map(|s| log_tail(&s.log_path()))
                .unwrap_or_default(),
        }
    }

    fn wait_for_replication(&self, replicas: usize) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let all_up = self.servers[1..].iter().all(|replica| {
                text_command(replica.port(), &["INFO", "replication"])
                    .map(|info| info_field(&info, "master_link_status").as_deref() == Some("up"))
                    .unwrap_or(false)
            });
            let connected = text_command(self.servers[0].port(), &["INFO", "replication"])
                .ok()
                .and_then(|info| info_field(&info, "connected_slaves"))
                .and_then(|n| n.parse::<usize>().ok());
            if all_up && connected == Some(replicas) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    server: format!(
                        "replicas of 127.0.0.1:{} (connected: {connected:?})",
                        self.servers[0].port()
                    ),
                    log: log_tail(&self.servers[0].log_path()),
                });
            }
            thread::sleep(POLL);
        }
    }

    fn wait_for_sentinels(&self, master_port: u16, replicas: usize) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let problems: Vec<String> = self
                .sentinels
                .iter()
                .filter_map(|s| sentinel_problem(s.port(), master_port, replicas).err())
                .collect();
            if problems.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.not_ready(&problems.join("; ")));
            }
            thread::sleep(POLL);
        }
    }
}

/// The user a paused replica tries to authenticate to its master as.
const NO_SUCH_USER: &str = "tiercache-testkit-replication-paused";

/// Makes the replica on `port` lose its link to its master and fail every
/// reconnect (it authenticates as a user the master does not have), while
/// it goes on serving reads with the data it has (Redis's default
/// `replica-serve-stale-data yes`): a replica lagging behind its master,
/// as far behind as the pause lasts. Its `ROLE` says `connect`/`connecting`
/// and `INFO` `master_link_status:down` meanwhile. Works on Sentinel and
/// Cluster replicas alike.
pub(crate) fn pause_replication(port: u16) -> Result<()> {
    for args in [
        &["CONFIG", "SET", "masteruser", NO_SUCH_USER][..],
        &["CONFIG", "SET", "masterauth", "paused"][..],
        &["CLIENT", "KILL", "TYPE", "master"][..],
    ] {
        let reply = redis_command(port, args)?;
        if reply.is_error() {
            return Err(TestkitError::Command(format!(
                "{args:?} on port {port}: {reply:?}"
            )));
        }
    }
    Ok(())
}

/// Undoes [`pause_replication`]: the replica reconnects (Redis retries
/// every second), catches up, and this returns once `master_link_status`
/// is `up`.
pub(crate) fn resume_replication(port: u16, timeout: Duration) -> Result<()> {
    for args in [
        &["CONFIG", "SET", "masteruser", ""][..],
        &["CONFIG", "SET", "masterauth", ""][..],
    ] {
        let reply = redis_command(port, args)?;
        if reply.is_error() {
            return Err(TestkitError::Command(format!(
                "{args:?} on port {port}: {reply:?}"
            )));
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let link = text_command(port, &["INFO", "replication"])
            .ok()
            .and_then(|info| info_field(&info, "master_link_status"));
        if link.as_deref() == Some("up") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TestkitError::Command(format!(
                "replica on port {port} not back in sync within {timeout:?} (master_link_status {link:?})"
            )));
        }
        thread::sleep(POLL);
    }
}

/// `SENTINEL get-master-addr-by-name mymaster` → port.
fn sentinel_master_port(sentinel: u16) -> Result<u16> {
    let reply = redis_command(
        sentinel,
        &["SENTINEL", "get-master-addr-by-name", MASTER_NAME],
    )?;
    reply
        .as_array()
        .and_then(|items| items.get(1))
        .and_then(Resp::as_text)
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| {
            TestkitError::Command(format!(
                "Sentinel on port {sentinel}: unexpected get-master-addr-by-name reply {reply:?}"
            ))
        })
}

/// `role:` from `INFO replication`.
fn role(port: u16) -> Option<String> {
    text_command(port, &["INFO", "replication"])
        .ok()
        .and_then(|info| info_field(&info, "role"))
}

/// A flat `[k, v, k, v, ...]` reply as a map.
fn to_map(reply: &Resp) -> HashMap<String, String> {
    let items = reply.as_array().unwrap_or_default();
    items
        .chunks(2)
        .filter_map(|kv| Some((kv.first()?.as_text()?, kv.get(1)?.as_text()?)))
        .collect()
}

/// Ok when this Sentinel sees the master, all replicas (in sync) and the
/// other two Sentinels; otherwise what is still missing.
fn sentinel_problem(
    sentinel: u16,
    master_port: u16,
    replicas: usize,
) -> std::result::Result<(), String> {
    let port = sentinel_master_port(sentinel).map_err(|e| e.to_string())?;
    if port != master_port {
        return Err(format!("sentinel {sentinel} reports master {port}"));
    }
    let reply = redis_command(sentinel, &["SENTINEL", "replicas", MASTER_NAME])
        .map_err(|e| e.to_string())?;
    let healthy = reply
        .as_array()
        .unwrap_or_default()
        .iter()
        .map(to_map)
        .filter(|r| {
            r.get("flags").map(String::as_str) == Some("slave")
                && r.get("master-link-status").map(String::as_str) == Some("ok")
        })
        .count();
    if healthy != replicas {
        return Err(format!(
            "sentinel {sentinel} sees {healthy}/{replicas} replicas"
        ));
    }
    let reply = redis_command(sentinel, &["SENTINEL", "sentinels", MASTER_NAME])
        .map_err(|e| e.to_string())?;
    let others = reply
        .as_array()
        .unwrap_or_default()
        .iter()
        .map(to_map)
        .filter(|s| s.get("flags").map(String::as_str) == Some("sentinel"))
        .count();
    if others != SENTINELS - 1 {
        return Err(format!(
            "sentinel {sentinel} sees {others}/{} other sentinels",
            SENTINELS - 1
        ));
    }
    Ok(())
}
