//! A NATS cluster: `n` `nats-server`s routed to each other, with clustered
//! JetStream (a Raft meta group across the nodes, so streams can be
//! replicated).
//!
//! Each node has its own temp dir (log, config, JetStream store) under the
//! cluster's, a `server_name` (`n0`, `n1`, ...), a client port, a route port
//! and a monitoring (HTTP) port, all free loopback ports. The cluster's
//! state is read from the nodes' monitoring endpoints (`/routez`, `/jsz`,
//! `/connz`) with a plain HTTP/1.0 GET; no `nats` CLI is needed.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::binaries;
use crate::error::{Result, TestkitError};
use crate::nats::{MARKER, NatsOptions, greets, quote, write_config};
use crate::port::free_port;
use crate::process::{Outcome, Proc, READY_TIMEOUT, START_ATTEMPTS, STOP_TIMEOUT};
use crate::tls::TlsCerts;

/// The `cluster { name }` every node shares.
const CLUSTER_NAME: &str = "tiercache-test";
const POLL: Duration = Duration::from_millis(100);
/// How long one monitoring request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// One node of a [`NatsCluster`].
#[derive(Debug)]
struct Node {
    proc: Proc,
    name: String,
    port: u16,
    cluster_port: u16,
    http_port: u16,
    dir: PathBuf,
}

/// `n` `nats-server`s on 127.0.0.1, each with a `cluster { ... }` block
/// routing to every other node, a `server_name` (`n0`, `n1`, ...) and a
/// monitoring port; with JetStream ([`NatsCluster::start_jetstream`]), each
/// has its own store dir and the nodes form one JetStream cluster, so a
/// stream may be replicated (`num_replicas` up to `n`).
///
/// [`start_with`](Self::start_with) returns once every node is ready, every
/// node has a route to every other and (with JetStream) a meta leader is
/// elected. Clients connect with [`url_list`](Self::url_list) (every node as
/// a seed) and also learn the other nodes from the servers' `INFO`.
///
/// Nodes are addressed by index (`0..len()`). [`kill`](Self::kill) is a
/// crash (SIGKILL); [`restart`](Self::restart) brings a node back on the same
/// ports with the same store dir. Dropping the cluster kills every node and
/// removes the temp dirs.
///
/// ```no_run
/// use std::time::Duration;
/// use tiercache_testkit::NatsCluster;
///
/// # fn main() -> tiercache_testkit::Result<()> {
/// let mut cluster = NatsCluster::start_jetstream(3)?;
/// let seeds = cluster.url_list(); // nats://127.0.0.1:A,nats://127.0.0.1:B,...
/// # let _ = seeds;
/// // ... a client named "app-1" connects with the seeds ...
/// let node = cluster.wait_for_client("app-1", Duration::from_secs(10))?;
/// cluster.kill(node);
/// let other = cluster.wait_for_client("app-1", Duration::from_secs(30))?;
/// assert_ne!(node, other);
/// cluster.restart(node)?;
/// cluster.wait_for_routes(Duration::from_secs(20))?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsCluster {
    // Field order matters: the processes are killed before the dir is removed.
    nodes: Vec<Node>,
    jetstream: bool,
    tls: bool,
    dir: TempDir,
}

impl NatsCluster {
    /// Starts `n` core nodes (no JetStream) routed to each other and waits
    /// until the cluster is formed.
    pub fn start(n: usize) -> Result<Self> {
        Self::start_with(n, NatsOptions::new())
    }

    /// Starts `n` nodes with clustered JetStream and waits until the cluster
    /// is formed and has a JetStream meta leader.
    pub fn start_jetstream(n: usize) -> Result<Self> {
        Self::start_with(n, NatsOptions::new().jetstream(true))
    }

    /// Starts `n` nodes as `options` say (JetStream, client TLS with one CA
    /// for every node, client authentication) and waits until every node is
    /// ready, every node has a route to every other and, with JetStream, a
    /// meta leader is elected.
    ///
    /// # Errors
    ///
    /// [`TestkitError::MissingBinary`] without `nats-server`,
    /// [`TestkitError::NotReady`] when a node does not start or the cluster
    /// does not form within 20 s, [`TestkitError::Command`] for `n == 0`.
    pub fn start_with(n: usize, options: NatsOptions) -> Result<Self> {
        if n == 0 {
            return Err(TestkitError::Command(
                "a NATS cluster needs at least one node".to_owned(),
            ));
        }
        let binary = binaries::nats_server()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::launch(&binary, n, &options)? {
                Ok(cluster) => {
                    cluster.wait_for_routes(READY_TIMEOUT)?;
                    if cluster.jetstream {
                        cluster.wait_for_jetstream_meta_leader(READY_TIMEOUT)?;
                    }
                    return Ok(cluster);
                }
                // A port was taken: start over with new ports for every node
                // (the routes name them all).
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            TestkitError::Command("nats-server cluster: no start attempt made".to_owned())
        }))
    }

    /// One start attempt: `Ok(Err(_))` when a port was taken (retry).
    fn launch(
        binary: &Path,
        n: usize,
        options: &NatsOptions,
    ) -> Result<std::result::Result<Self, TestkitError>> {
        let dir = tempfile::Builder::new()
            .prefix("tiercache-nats-cluster-")
            .tempdir()?;
        let tls = if options.tls {
            Some(TlsCerts::generate_in(dir.path())?)
        } else {
            None
        };
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push((free_port()?, free_port()?, free_port()?));
        }
        let mut nodes = Vec::with_capacity(n);
        for (i, &(port, cluster_port, http_port)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let node_dir = dir.path().join(&name);
            std::fs::create_dir_all(&node_dir)?;
            let conf = write_config(&node_dir, tls.as_ref(), options.auth.as_ref())?;
            let routes: Vec<u16> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| p.1)
                .collect();
            let store = options.jetstream.then(|| node_dir.join("jetstream"));
            append_cluster_config(
                &conf,
                &name,
                (port, cluster_port, http_port),
                &routes,
                store.as_deref(),
            )?;
            let args: Vec<OsString> = vec!["-c".into(), conf.into_os_string()];
            let proc = Proc::new(
                format!("nats-server {name} on 127.0.0.1:{port}"),
                binary,
                args,
                &node_dir,
                node_dir.join("nats.log"),
            );
            nodes.push(Node {
                proc,
                name,
                port,
                cluster_port,
                http_port,
                dir: node_dir,
            });
        }
        let mut cluster = NatsCluster {
            nodes,
            jetstream: options.jetstream,
            tls: tls.is_some(),
            dir,
        };
        for node in &mut cluster.nodes {
            let port = node.port;
            match node
                .proc
                .start_and_wait(MARKER, &mut || greets(port), READY_TIMEOUT)
            {
                Outcome::Ready => {}
                // Dropping `cluster` kills the nodes already started.
                Outcome::Retry(e) => return Ok(Err(e)),
                Outcome::Failed(e) => return Err(e),
            }
        }
        Ok(Ok(cluster))
    }

    fn node(&self, i: usize) -> &Node {
        assert!(
            i < self.nodes.len(),
            "node {i} of a {}-node NATS cluster",
            self.nodes.len()
        );
        &self.nodes[i]
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        assert!(
            i < self.nodes.len(),
            "node {i} of a {}-node NATS cluster",
            self.nodes.len()
        );
        &mut self.nodes[i]
    }

    /// How many nodes the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no node (never: [`start_with`](Self::start_with)
    /// refuses `n == 0`).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s client port on 127.0.0.1.
    ///
    /// # Panics
    ///
    /// When `i >= len()` (as do the other methods taking a node index).
    pub fn port(&self, i: usize) -> u16 {
        self.node(i).port
    }

    /// Node `i`'s route (cluster) port.
    pub fn cluster_port(&self, i: usize) -> u16 {
        self.node(i).cluster_port
    }

    /// Node `i`'s monitoring (HTTP) port: `/varz`, `/connz`, `/routez`, `/jsz`.
    pub fn monitor_port(&self, i: usize) -> u16 {
        self.node(i).http_port
    }

    /// Node `i`'s `server_name` (`n0`, `n1`, ...), as the servers report it
    /// (stream and meta leaders are named so).
    pub fn server_name(&self, i: usize) -> &str {
        &self.node(i).name
    }

    /// The index of the node named `server_name`.
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == server_name)
    }

    /// Node `i`'s client URL: `nats://127.0.0.1:PORT` (`tls://` with TLS).
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.node(i).port)
    }

    /// Every node's client URL, in node order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// Every node's client URL, comma-separated (the seed list a client
    /// takes).
    pub fn url_list(&self) -> String {
        self.urls().join(",")
    }

    /// Whether JetStream is enabled.
    pub fn jetstream(&self) -> bool {
        self.jetstream
    }

    /// The CA certificate (PEM file) clients must trust, with TLS.
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.tls
            .then(|| TlsCerts::at(self.dir.path()).ca_cert_path())
    }

    /// The cluster's temp dir (one subdir per node, named by its
    /// `server_name`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Node `i`'s log file (every run, appended).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.node(i).proc.log_path().to_path_buf()
    }

    /// Node `i`'s temp dir (config, log, JetStream store under `jetstream/`).
    pub fn node_dir(&self, i: usize) -> &Path {
        &self.node(i).dir
    }

    /// Kills node `i` (SIGKILL) and waits for it: a crash. Its clients see
    /// their connection drop and reconnect to another node.
    pub fn kill(&mut self, i: usize) {
        self.node_mut(i).proc.kill();
    }

    /// Stops node `i` gracefully (SIGTERM; SIGKILL after 10 s).
    pub fn stop(&mut self, i: usize) {
        self.node_mut(i).proc.terminate("TERM", STOP_TIMEOUT);
    }

    /// Pauses node `i` (SIGSTOP): alive with its sockets open, answering
    /// nothing (its monitoring endpoint included).
    pub fn pause(&mut self, i: usize) {
        self.node_mut(i).proc.pause();
    }

    /// Resumes a [`pause`](Self::pause)d node (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.node_mut(i).proc.resume();
    }

    /// Starts node `i` again on the same ports with the same store dir
    /// (stopping it first if it still runs) and waits until it is ready. It
    /// routes to the others again by itself; [`wait_for_routes`](Self::wait_for_routes)
    /// waits for that.
    ///
    /// # Errors
    ///
    /// [`TestkitError::NotReady`] when it does not come back within 20 s.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let node = self.node_mut(i);
        if node.proc.started() {
            node.proc.terminate("TERM", STOP_TIMEOUT);
        }
        let port = node.port;
        node.proc
            .restart_and_wait(MARKER, &mut || greets(port), READY_TIMEOUT)
    }

    /// Whether node `i`'s process is alive.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.node_mut(i).proc.is_running()
    }

    /// Nodes started and not killed or stopped since (no syscall).
    fn started(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].proc.started())
    }

    /// GETs `path` from node `i`'s monitoring endpoint and returns the body.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Io`] when the node does not answer (killed, paused),
    /// [`TestkitError::Command`] for an answer other than `200 OK`.
    pub fn monitor(&self, i: usize, path: &str) -> Result<String> {
        http_get(self.node(i).http_port, path)
    }

    fn monitor_json(&self, i: usize, path: &str) -> Result<Json> {
        let body = self.monitor(i, path)?;
        Json::parse(&body).ok_or_else(|| {
            TestkitError::Command(format!(
                "{} {path}: not JSON: {}",
                self.node(i).name,
                body.chars().take(200).collect::<String>()
            ))
        })
    }

    /// The node a client connection named `client_name` (the name it gave in
    /// `CONNECT`) is on, looked up in each running node's `/connz`; `None`
    /// when no running node has it (it is reconnecting).
    ///
    /// # Errors
    ///
    /// When no running node's monitoring endpoint answers.
    pub fn client_node(&self, client_name: &str) -> Result<Option<usize>> {
        let mut last_error = None;
        let mut answered = false;
        for i in self.started() {
            match self.monitor_json(i, "/connz?subs=0&limit=100000") {
                Ok(connz) => {
                    answered = true;
                    let on_it = connz
                        .get("connections")
                        .and_then(Json::as_array)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.get("name").and_then(Json::as_str) == Some(client_name));
                    if on_it {
                        return Ok(Some(i));
                    }
                }
                Err(e) => last_error = Some(e),
            }
        }
        match (answered, last_error) {
            (false, Some(e)) => Err(e),
            _ => Ok(None),
        }
    }

    /// Waits until a client connection named `client_name` is on a running
    /// node, and returns that node.
    ///
    /// # Errors
    ///
    /// [`TestkitError::NotReady`] when none has it within `timeout`.
    pub fn wait_for_client(&self, client_name: &str, timeout: Duration) -> Result<usize> {
        self.wait_until(
            timeout,
            &format!("client {client_name:?} connected"),
            || match self.client_node(client_name) {
                Ok(Some(i)) => Ok(i),
                Ok(None) => Err(format!("no running node has client {client_name:?}")),
                Err(e) => Err(e.to_string()),
            },
        )
    }

    /// Waits until every running node has a route to every other running
    /// node (distinct remote server ids in `/routez`).
    ///
    /// # Errors
    ///
    /// [`TestkitError::NotReady`] with the nodes' route counts after `timeout`
    /// (a paused node never answers).
    pub fn wait_for_routes(&self, timeout: Duration) -> Result<()> {
        self.wait_until(timeout, "routes between every running node", || {
            self.route_problem().map_or(Ok(()), Err)
        })
    }

    fn route_problem(&self) -> Option<String> {
        let running: Vec<usize> = self.started().collect();
        let want = running.len().saturating_sub(1);
        let mut problems = Vec::new();
        for &i in &running {
            match self.monitor_json(i, "/routez") {
                Ok(routez) => {
                    let mut remotes: Vec<&str> = routez
                        .get("routes")
                        .and_then(Json::as_array)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|r| r.get("remote_id").and_then(Json::as_str))
                        .collect();
                    remotes.sort_unstable();
                    remotes.dedup();
                    if remotes.len() < want {
                        problems.push(format!(
                            "{} has {} of {want} routes",
                            self.nodes[i].name,
                            remotes.len()
                        ));
                    }
                }
                Err(e) => problems.push(format!("{}: {e}", self.nodes[i].name)),
            }
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// The JetStream meta leader every running node agrees on, if any.
    ///
    /// # Errors
    ///
    /// When a running node's monitoring endpoint does not answer.
    pub fn jetstream_meta_leader(&self) -> Result<Option<usize>> {
        let mut agreed: Option<usize> = None;
        for i in self.started() {
            let jsz = self.monitor_json(i, "/jsz")?;
            let leader = jsz
                .get("meta_cluster")
                .and_then(|m| m.get("leader"))
                .and_then(Json::as_str)
                .and_then(|name| self.index_of(name));
            match (leader, agreed) {
                (None, _) => return Ok(None),
                (Some(l), Some(a)) if l != a => return Ok(None),
                (Some(l), _) => agreed = Some(l),
            }
        }
        Ok(agreed.filter(|&l| self.nodes[l].proc.started()))
    }

    /// Waits until every running node names the same running node as the
    /// JetStream meta leader, and returns it.
    ///
    /// # Errors
    ///
    /// [`TestkitError::NotReady`] after `timeout`.
    pub fn wait_for_jetstream_meta_leader(&self, timeout: Duration) -> Result<usize> {
        self.wait_until(timeout, "a JetStream meta leader", || {
            match self.jetstream_meta_leader() {
                Ok(Some(i)) => Ok(i),
                Ok(None) => Err("no agreed meta leader among the running nodes".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    /// The leader of JetStream stream `stream` (in the default account) as
    /// the running nodes that host it report it, if one is elected on a
    /// running node.
    ///
    /// # Errors
    ///
    /// When no running node's monitoring endpoint answers.
    pub fn stream_leader(&self, stream: &str) -> Result<Option<usize>> {
        let mut last_error = None;
        let mut answered = false;
        for i in self.started() {
            let jsz = match self.monitor_json(i, "/jsz?accounts=true&streams=true") {
                Ok(jsz) => jsz,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            answered = true;
            let accounts = jsz
                .get("account_details")
                .and_then(Json::as_array)
                .unwrap_or_default();
            for detail in accounts.iter().flat_map(|a| {
                a.get("stream_detail")
                    .and_then(Json::as_array)
                    .unwrap_or_default()
            }) {
                if detail.get("name").and_then(Json::as_str) != Some(stream) {
                    continue;
                }
                let leader = detail
                    .get("cluster")
                    .and_then(|c| c.get("leader"))
                    .and_then(Json::as_str)
                    .and_then(|name| self.index_of(name))
                    .filter(|&l| self.nodes[l].proc.started());
                if leader.is_some() {
                    return Ok(leader);
                }
            }
        }
        match (answered, last_error) {
            (false, Some(e)) => Err(e),
            _ => Ok(None),
        }
    }

    /// Waits until stream `stream` has a leader on a running node, and
    /// returns it.
    ///
    /// # Errors
    ///
    /// [`TestkitError::NotReady`] after `timeout`.
    pub fn wait_for_stream_leader(&self, stream: &str, timeout: Duration) -> Result<usize> {
        self.wait_until(
            timeout,
            &format!("a leader for stream {stream}"),
            || match self.stream_leader(stream) {
                Ok(Some(i)) => Ok(i),
                Ok(None) => Err(format!("stream {stream} has no leader on a running node")),
                Err(e) => Err(e.to_string()),
            },
        )
    }

    /// Polls `check` until it succeeds or `timeout` passes; the error then
    /// says what was awaited and the last problem.
    fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut() -> std::result::Result<T, String>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            let problem = match check() {
                Ok(v) => return Ok(v),
                Err(problem) => problem,
            };
            if Instant::now() >= deadline {
                let logs = self
                    .started()
                    .map(|i| {
                        format!(
                            "--- {} ---\n{}",
                            self.nodes[i].name,
                            crate::process::log_tail(self.nodes[i].proc.log_path())
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(TestkitError::NotReady {
                    server: format!("nats cluster: {what} ({problem}) after {timeout:?}"),
                    log: logs,
                });
            }
            thread::sleep(POLL);
        }
    }
}

/// Appends the node's identity, listen addresses, cluster block and
/// JetStream block to its config file (written by [`write_config`] with the
/// TLS and authorization blocks).
fn append_cluster_config(
    conf: &Path,
    name: &str,
    (port, cluster_port, http_port): (u16, u16, u16),
    routes: &[u16],
    jetstream_store: Option<&Path>,
) -> Result<()> {
    let mut text = format!(
        "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{http_port}\"\n"
    );
    text.push_str(&format!(
        "cluster {{\n  name: \"{CLUSTER_NAME}\"\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [\n"
    ));
    for route in routes {
        text.push_str(&format!("    \"nats-route://127.0.0.1:{route}\"\n"));
    }
    text.push_str("  ]\n}\n");
    if let Some(store) = jetstream_store {
        text.push_str(&format!(
            "jetstream {{\n  store_dir: {}\n  max_memory_store: 268435456\n  max_file_store: 1073741824\n}}\n",
            quote(store)
        ));
    }
    let mut file = OpenOptions::new().append(true).open(conf)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// `GET path` on 127.0.0.1:`port` over HTTP/1.0; the body of a `200`.
fn http_get(port: u16, path: &str) -> Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    stream.write_all(
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        TestkitError::Command(format!("GET {path} on port {port}: no HTTP response"))
    })?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(TestkitError::Command(format!(
            "GET {path} on port {port}: {status}"
        )));
    }
    Ok(body.to_owned())
}

/// Just enough JSON for the monitoring endpoints' answers.
#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Option<Json> {
        let mut p = JsonParser {
            bytes: text.as_bytes(),
            at: 0,
        };
        let value = p.value(0)?;
        p.skip_ws();
        (p.at == p.bytes.len()).then_some(value)
    }

    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(items) => Some(items),
            _ => None,
        }
    }
}

struct JsonParser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl JsonParser<'_> {
    /// Nesting deeper than this is refused (no stack overflow on bad input).
    const MAX_DEPTH: usize = 64;

    fn skip_ws(&mut self) {
        while self
            .bytes
            .get(self.at)
            .is_some_and(|b| b.is_ascii_whitespace())
        {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.skip_ws();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Option<Json> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end) == Some(word.as_bytes())).then(|| {
            self.at = end;
            value
        })
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > Self::MAX_DEPTH {
            return None;
        }
        self.skip_ws();
        match *self.bytes.get(self.at)? {
            b'{' => {
                self.at += 1;
                let mut fields = Vec::new();
                if self.eat(b'}') {
                    return Some(Json::Obj(fields));
                }
                loop {
                    self.skip_ws();
                    let key = self.string()?;
                    if !self.eat(b':') {
                        return None;
                    }
                    fields.push((key, self.value(depth + 1)?));
                    if self.eat(b'}') {
                        return Some(Json::Obj(fields));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'[' => {
                self.at += 1;
                let mut items = Vec::new();
                if self.eat(b']') {
                    return Some(Json::Arr(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat(b']') {
                        return Some(Json::Arr(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                }
            }
            b'"' => self.string().map(Json::Str),
            b't' => self.literal("true", Json::Bool(true)),
            b'f' => self.literal("false", Json::Bool(false)),
            b'n' => self.literal("null", Json::Null),
            _ => {
                let start = self.at;
                while self
                    .bytes
                    .get(self.at)
                    .is_some_and(|b| b.is_ascii_digit() || b"+-.eE".contains(b))
                {
                    self.at += 1;
                }
                std::str::from_utf8(&self.bytes[start..self.at])
                    .ok()?
                    .parse()
                    .ok()
                    .map(Json::Num)
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        if self.bytes.get(self.at) != Some(&b'"') {
            return None;
        }
        self.at += 1;
        let mut out = Vec::new();
        loop {
            let b = *self.bytes.get(self.at)?;
            self.at += 1;
            match b {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let esc = *self.bytes.get(self.at)?;
                    self.at += 1;
                    let c = match esc {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = self.bytes.get(self.at..self.at + 4)?;
                            self.at += 4;
                            let code =
                                u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                            char::from_u32(code).unwrap_or('\u{fffd}')
                        }
                        _ => return None,
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                b => out.push(b),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Json;

    #[test]
    fn parses_monitoring_json() {
        let text = r#"{"server_id": "X", "num_routes": 2, "routes": [
            {"rid": 1, "remote_id": "A", "did_solicit": true, "pending_size": 0},
            {"remote_id": "B\u0041", "rtt": "1.2ms", "x": null, "y": -1.5e3}
        ], "meta_cluster": {"leader": "n1"}}"#;
        let json = Json::parse(text).expect("valid JSON");
        let routes = json.get("routes").and_then(Json::as_array).expect("routes");
        assert_eq!(routes.len(), 2);
        assert_eq!(
            routes[1].get("remote_id").and_then(Json::as_str),
            Some("BA")
        );
        assert_eq!(json.get("num_routes"), Some(&Json::Num(2.0)));
        assert_eq!(
            json.get("meta_cluster")
                .and_then(|m| m.get("leader"))
                .and_then(Json::as_str),
            Some("n1")
        );
        assert_eq!(Json::parse("{"), None);
        assert_eq!(Json::parse("[1,]"), None);
        assert_eq!(Json::parse(&"[".repeat(1000)), None);
    }
}
