//! A six-node Redis Cluster: three masters, three replicas.

use std::collections::HashSet;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::binaries;
use crate::error::{Result, TestkitError};
use crate::process::{READY_TIMEOUT, run_command};
use crate::redis::{RedisServer, Spec};
use crate::resp::{Resp, info_field, redis_command, text_command};

const NODES: usize = 6;
const SLOTS: usize = 16384;
const POLL: Duration = Duration::from_millis(100);

/// Six `redis-server --cluster-enabled yes` nodes on 127.0.0.1 (each in its
/// own temp dir, with free client and cluster-bus ports), joined with
/// `redis-cli --cluster create ... --cluster-replicas 1`.
///
/// `cluster-node-timeout` is 2000 ms, so a killed master's replica is
/// promoted within a few seconds. Dropping the cluster kills every node.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeLine {
    id: String,
    /// The master's id for a replica, `-` for a master.
    master: String,
    port: u16,
    flags: Vec<String>,
    slots: usize,
}

impl NodeLine {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn failing(&self) -> bool {
        self.has_flag("fail") || self.has_flag("fail?") || self.has_flag("noaddr")
    }
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster and waits until every node
    /// reports `cluster_state:ok` with all 16384 slots served and every
    /// replica is in sync (see [`RedisCluster::wait_for_state_ok`]).
    pub fn start() -> Result<Self> {
        let redis_cli = binaries::redis_cli()?;
        let mut nodes = Vec::with_capacity(NODES);
        for _ in 0..NODES {
            nodes.push(RedisServer::launch(node_spec())?);
        }
        let cluster = RedisCluster { nodes };
        let mut command = Command::new(redis_cli);
        command.args(["--cluster", "create"]);
        command.args(
            cluster
                .nodes
                .iter()
                .map(|n| format!("127.0.0.1:{}", n.port())),
        );
        command.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let output = run_command(&mut command, Duration::from_secs(60))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !stdout.contains("All 16384 slots covered") {
            return Err(TestkitError::Command(format!(
                "redis-cli --cluster create failed ({}):\n{stdout}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        cluster.wait_for_state_ok(READY_TIMEOUT)?;
        Ok(cluster)
    }

    /// Starts one more node and joins it as a master that serves no slot
    /// yet (`redis-cli --cluster add-node`); returns its port once every
    /// node knows it. Move slots to it with [`move_slots`](Self::move_slots).
    pub fn add_master(&mut self) -> Result<u16> {
        let redis_cli = binaries::redis_cli()?;
        let node = RedisServer::launch(node_spec())?;
        let port = node.port();
        let existing = self
            .nodes
            .iter()
            .find(|n| n.started())
            .map(RedisServer::port)
            .ok_or_else(|| TestkitError::Command("no cluster node is running".to_owned()))?;
        let mut command = Command::new(redis_cli);
        command.args([
            "--cluster".to_owned(),
            "add-node".to_owned(),
            format!("127.0.0.1:{port}"),
            format!("127.0.0.1:{existing}"),
        ]);
        let output = run_command(&mut command, Duration::from_secs(60))?;
        if !output.status.success() {
            return Err(TestkitError::Command(format!(
                "redis-cli --cluster add-node failed ({}):\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        self.nodes.push(node);
        self.wait_for_state_ok(READY_TIMEOUT)?;
        self.wait_for_agreement(READY_TIMEOUT)?;
        Ok(port)
    }

    /// Waits until `redis-cli --cluster check` passes: every node agrees on
    /// the slot map and no slot is left open (after a node joins or slots
    /// move, the new configuration takes a moment to reach every node).
    pub fn wait_for_agreement(&self, timeout: Duration) -> Result<()> {
        let redis_cli = binaries::redis_cli()?;
        let deadline = Instant::now() + timeout;
        let node = self
            .nodes
            .iter()
            .find(|n| n.started())
            .map(RedisServer::port)
            .ok_or_else(|| TestkitError::Command("no cluster node is running".to_owned()))?;
        loop {
            let mut command = Command::new(&redis_cli);
            command.args([
                "--cluster".to_owned(),
                "check".to_owned(),
                format!("127.0.0.1:{node}"),
            ]);
            let output = run_command(&mut command, Duration::from_secs(30))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            if output.status.success() && !stdout.contains("[ERR]") && !stdout.contains("[WARNING]")
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::Command(format!(
                    "redis-cli --cluster check did not pass within {timeout:?}:\n{stdout}"
                )));
            }
            thread::sleep(POLL);
        }
    }

    /// Moves `slots` hash slots, keys included, to the master on `to`: from
    /// the master on `from`, or from every other master (`None`), with
    /// `redis-cli --cluster reshard` (slot by slot: MIGRATING / IMPORTING,
    /// MIGRATE, SETSLOT NODE), while clients go on. Returns once the
    /// cluster is healthy again.
    pub fn move_slots(&self, from: Option<u16>, to: u16, slots: usize) -> Result<()> {
        self.wait_for_agreement(READY_TIMEOUT)?;
        let redis_cli = binaries::redis_cli()?;
        let to_id = text_command(to, &["CLUSTER", "MYID"])?;
        let from_id = match from {
            Some(p) => text_command(p, &["CLUSTER", "MYID"])?,
            None => "all".to_owned(),
        };
        let mut command = Command::new(redis_cli);
        command.args([
            "--cluster".to_owned(),
            "reshard".to_owned(),
            format!("127.0.0.1:{to}"),
            "--cluster-from".to_owned(),
            from_id.trim().to_owned(),
            "--cluster-to".to_owned(),
            to_id.trim().to_owned(),
            "--cluster-slots".to_owned(),
            slots.to_string(),
            "--cluster-yes".to_owned(),
        ]);
        let output = run_command(&mut command, Duration::from_secs(300))?;
        if !output.status.success() {
            return Err(TestkitError::Command(format!(
                "redis-cli --cluster reshard failed ({}):\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        self.wait_for_state_ok(READY_TIMEOUT)?;
        self.wait_for_agreement(READY_TIMEOUT)
    }

    /// How many slots the master on `port` serves, as it reports itself.
    pub fn slots_of(&self, port: u16) -> Result<usize> {
        Ok(cluster_nodes(port)?
            .iter()
            .find(|l| l.has_flag("myself"))
            .map_or(0, |l| l.slots))
    }

    /// `redis://127.0.0.1:PORT` of every node (killed ones included).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The client ports of every node.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// The ports of the masters that serve slots and are not failing, as a
    /// running node's `CLUSTER NODES` reports them, sorted.
    pub fn master_ports(&self) -> Result<Vec<u16>> {
        let mut last_error = None;
        for node in self.nodes.iter().filter(|n| n.started()) {
            match cluster_nodes(node.port()) {
                Ok(lines) => {
                    let mut ports: Vec<u16> = lines
                        .iter()
                        .filter(|l| l.has_flag("master") && l.slots > 0 && !l.failing())
                        .map(|l| l.port)
                        .collect();
                    ports.sort_unstable();
                    return Ok(ports);
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| TestkitError::Command("no cluster node is running".to_owned())))
    }

    /// The ports of the running replicas, as a running node's `CLUSTER
    /// NODES` reports them, sorted.
    pub fn replica_ports(&self) -> Result<Vec<u16>> {
        let node = self.running_node()?;
        let mut ports: Vec<u16> = cluster_nodes(node)?
            .iter()
            .filter(|l| l.has_flag("slave") && !l.failing())
            .map(|l| l.port)
            .collect();
        ports.sort_unstable();
        Ok(ports)
    }

    /// Makes the replica on `port` stop following its master while it goes
    /// on answering reads (`READONLY`) with what it has: replication lag on
    /// demand (the replica fails to authenticate to its master until
    /// [`resume_replication`](Self::resume_replication)).
    pub fn pause_replication(&self, port: u16) -> Result<()> {
        crate::sentinel::pause_replication(port)
    }

    /// Lets the replica on `port` follow its master again and waits until
    /// it is back in sync (`master_link_status:up`).
    pub fn resume_replication(&self, port: u16, timeout: Duration) -> Result<()> {
        crate::sentinel::resume_replication(port, timeout)
    }

    /// Removes the master on `port` from the cluster: moves its slots, keys
    /// included, to the other masters (in equal shares, with
    /// [`move_slots`](Self::move_slots)), points its replicas at another
    /// master, stops it, has every other node `CLUSTER FORGET` it, and waits
    /// until the cluster is healthy and agrees without it. The node is
    /// dropped from this cluster (its port is no longer in
    /// [`ports`](Self::ports)).
    pub fn remove_master(&mut self, port: u16) -> Result<()> {
        let masters = self.master_ports()?;
        if !masters.contains(&port) {
            return Err(TestkitError::Command(format!(
                "port {port} is not a master serving slots (masters: {masters:?})"
            )));
        }
        let others: Vec<u16> = masters.into_iter().filter(|p| *p != port).collect();
        if others.is_empty() {
            return Err(TestkitError::Command(format!(
                "the master on port {port} is the only one: its slots have nowhere to go"
            )));
        }
        let id = text_command(port, &["CLUSTER", "MYID"])?.trim().to_owned();
        let slots = self.slots_of(port)?;
        let share = slots / others.len();
        for (i, to) in others.iter().enumerate() {
            let count = if i + 1 == others.len() {
                slots - share * i
            } else {
                share
            };
            if count > 0 {
                self.move_slots(Some(port), *to, count)?;
            }
        }
        if self.slots_of(port)? != 0 {
            return Err(TestkitError::Command(format!(
                "the master on port {port} still serves slots after the moves"
            )));
        }
        // Its replicas (and itself, which Redis may have made a replica of
        // the node that took its last slot) follow another master.
        let lines = cluster_nodes(others[0])?;
        let heir = lines
            .iter()
            .find(|l| l.port == others[0])
            .map(|l| l.id.clone())
            .ok_or_else(|| {
                TestkitError::Command(format!("node {} does not list itself", others[0]))
            })?;
        for line in lines {
            if line.master == id && line.port != port {
                let reply = redis_command(line.port, &["CLUSTER", "REPLICATE", &heir])?;
                if reply.is_error() {
                    return Err(TestkitError::Command(format!(
                        "CLUSTER REPLICATE on replica {}: {reply:?}",
                        line.port
                    )));
                }
            }
        }
        if let Some(node) = self.node_mut(port) {
            node.stop();
        }
        self.nodes.retain(|n| n.port() != port);
        // FORGET bans the id for 60 s on each node: done on all of them well
        // within that, gossip cannot bring it back.
        for node in self.nodes.iter().filter(|n| n.started()) {
            let reply = redis_command(node.port(), &["CLUSTER", "FORGET", &id])?;
            if reply.is_error() && !matches!(&reply, Resp::Error(e) if e.contains("Unknown node")) {
                return Err(TestkitError::Command(format!(
                    "CLUSTER FORGET on node {}: {reply:?}",
                    node.port()
                )));
            }
        }
        self.wait_for_state_ok(READY_TIMEOUT)?;
        self.wait_for_agreement(READY_TIMEOUT)
    }

    fn running_node(&self) -> Result<u16> {
        self.nodes
            .iter()
            .find(|n| n.started())
            .map(RedisServer::port)
            .ok_or_else(|| TestkitError::Command("no cluster node is running".to_owned()))
    }

    /// Kills (SIGKILL) the node on `port`; does nothing for an unknown port.
    pub fn kill_node(&mut self, port: u16) {
        if let Some(node) = self.node_mut(port) {
            node.kill();
        }
    }

    /// Restarts the node on `port` with its dir and `nodes.conf` (same node
    /// id, same ports), so it rejoins the cluster; a former master comes back
    /// as a replica of whoever took over its slots.
    pub fn restart_node(&mut self, port: u16) -> Result<()> {
        self.node_mut(port)
            .ok_or_else(|| TestkitError::Command(format!("no cluster node on port {port}")))?
            .restart()
    }

    /// The node on `port`.
    pub fn node_mut(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes.iter_mut().find(|n| n.port() == port)
    }

    /// Waits until, on every running node, `cluster_state:ok`, all 16384
    /// slots are served by running, non-failing masters, no running node is
    /// flagged as failing, and every running replica is in sync
    /// (`master_link_status:up`). After killing a master this waits for its
    /// replica's promotion; after a restart, for the node to be re-accepted.
    pub fn wait_for_state_ok(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let problem = match self.state_problem() {
                None => return Ok(()),
                Some(problem) => problem,
            };
            if Instant::now() >= deadline {
                let view = self
                    .nodes
                    .iter()
                    .find(|n| n.started())
                    .and_then(|n| text_command(n.port(), &["CLUSTER", "NODES"]).ok())
                    .unwrap_or_default();
                return Err(TestkitError::NotReady {
                    server: format!("redis cluster ({problem}) after {timeout:?}"),
                    log: view,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// What keeps the cluster from being healthy, if anything.
    fn state_problem(&self) -> Option<String> {
        let live: HashSet<u16> = self
            .nodes
            .iter()
            .filter(|n| n.started())
            .map(RedisServer::port)
            .collect();
        if live.is_empty() {
            return Some("no node is running".to_owned());
        }
        for &port in &live {
            let info = match text_command(port, &["CLUSTER", "INFO"]) {
                Ok(info) => info,
                Err(e) => return Some(format!("node {port}: {e}")),
            };
            let state = info_field(&info, "cluster_state");
            if state.as_deref() != Some("ok") {
                return Some(format!("node {port}: cluster_state {state:?}"));
            }
            let lines = match cluster_nodes(port) {
                Ok(lines) => lines,
                Err(e) => return Some(format!("node {port}: {e}")),
            };
            let mut served = 0;
            for line in &lines {
                if line.has_flag("master") && line.slots > 0 {
                    if line.failing() || !live.contains(&line.port) {
                        return Some(format!(
                            "node {port} sees slots on unavailable master {}",
                            line.port
                        ));
                    }
                    served += line.slots;
                }
                if live.contains(&line.port) && line.failing() {
                    return Some(format!(
                        "node {port} flags running node {} as failing",
                        line.port
                    ));
                }
            }
            if served != SLOTS {
                return Some(format!("node {port} sees {served}/{SLOTS} slots served"));
            }
            if lines
                .iter()
                .any(|l| l.has_flag("myself") && l.has_flag("slave"))
            {
                let link = text_command(port, &["INFO", "replication"])
                    .ok()
                    .and_then(|info| info_field(&info, "master_link_status"));
                if link.as_deref() != Some("up") {
                    return Some(format!("replica {port}: master_link_status {link:?}"));
                }
            }
            let known: HashSet<u16> = lines.iter().map(|l| l.port).collect();
            if let Some(missing) = live.iter().find(|p| !known.contains(p)) {
                return Some(format!("node {port} does not know node {missing}"));
            }
        }
        None
    }
}

/// A cluster node: cluster mode, its own bus port, a 2 s node timeout.
fn node_spec() -> Spec {
    let mut spec = Spec::server();
    spec.cluster_bus = true;
    spec.conf.extend([
        "cluster-enabled yes".to_owned(),
        "cluster-config-file nodes.conf".to_owned(),
        "cluster-node-timeout 2000".to_owned(),
    ]);
    spec
}

/// Parses `CLUSTER NODES` of the node on `port`.
fn cluster_nodes(port: u16) -> Result<Vec<NodeLine>> {
    let text = text_command(port, &["CLUSTER", "NODES"])?;
    Ok(text.lines().filter_map(parse_node_line).collect())
}

/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`
fn parse_node_line(line: &str) -> Option<NodeLine> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let address = fields.get(1)?.split(['@', ',']).next()?;
    let port = address.rsplit(':').next()?.parse::<u16>().ok()?;
    let id = (*fields.first()?).to_owned();
    let master = (*fields.get(3)?).to_owned();
    let flags = fields.get(2)?.split(',').map(str::to_owned).collect();
    let slots = fields
        .iter()
        .skip(8)
        .filter(|s| !s.starts_with('['))
        .map(|range| match range.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(range.parse::<usize>().is_ok()),
        })
        .sum();
    Some(NodeLine {
        id,
        master,
        port,
        flags,
        slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes_lines() {
        let line = "d428 127.0.0.1:41001@42001 myself,master - 0 1795 2 connected 0-5460 5462 [5463->-abc]";
        let node = parse_node_line(line).expect("parse");
        assert_eq!(node.port, 41001);
        assert!(node.has_flag("master") && node.has_flag("myself"));
        assert_eq!(node.slots, 5462);
        let failed = parse_node_line("f04d 127.0.0.1:41003@42003 master,fail - 0 1 1 disconnected")
            .expect("parse");
        assert!(failed.failing());
        assert_eq!(failed.slots, 0);
    }
}
